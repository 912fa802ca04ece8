//! The node's unit tests: one node, and small clusters in one thread ([`Net`], driven by the
//! harness's one loop in `harness.rs`; the transcripts in `testdata/` use the same loop).

// ---- old 2600-3533
use std::ops::Bound;

use super::exec::VERSION_COUNTER_BITS;
use super::harness::{engine_options, open_engine, Net};
use super::*;
use crate::cluster::StateStore;
use crate::proto::envelope::encode_value;
use crate::proto::{BatchOp, Condition};
use crate::{Background, Options, StallPolicy, WriteBatch};

fn node() -> Node {
    Node::new(
        open_engine(engine_options()),
        NodeConfig {
            partitions: 8,
            ..NodeConfig::default()
        },
    )
}

/// Sends one request; runs persists (and background work) as a driver would, through the
/// harness's one driver loop; returns the reply.
fn call(n: &mut Node, wall_ms: u64, request: Request) -> Response {
    Net::over(std::slice::from_mut(n), wall_ms).call(0, 7, request)
}

fn put(key: &str, value: &str) -> Request {
    Request::Put {
        key: key.into(),
        value: value.into(),
        cond: Condition::None,
    }
}

#[test]
fn a_durable_write_is_answered_only_after_its_persist() {
    let mut n = node();
    let mut out = Vec::new();
    n.handle(
        5,
        Input::Client {
            id: 1,
            request: put("k", "v"),
        },
        &mut out,
    );
    assert_eq!(out, vec![Output::Persist], "no reply before the fsync");
    // A second write while the first persist runs starts a second one; a third, with two
    // running, rides on whichever comes next.
    n.handle(
        6,
        Input::Client {
            id: 2,
            request: put("k2", "v"),
        },
        &mut out,
    );
    assert_eq!(out, vec![Output::Persist, Output::Persist]);
    n.handle(
        6,
        Input::Client {
            id: 4,
            request: put("k3", "v"),
        },
        &mut out,
    );
    assert_eq!(out.len(), 2, "at most two persists at once");
    // Not visible to readers yet.
    let mut r = Vec::new();
    n.handle(
        6,
        Input::Client {
            id: 3,
            request: Request::Get { key: b"k".to_vec() },
        },
        &mut r,
    );
    assert_eq!(
        r,
        vec![Output::Reply {
            id: 3,
            response: Response::NotFound
        }]
    );
    let upto = n.db().persist().unwrap();
    out.clear();
    n.handle(0, Input::Persisted { upto }, &mut out);
    assert!(matches!(out[0], Output::Reply { id: 1, .. }));
    assert!(matches!(out[1], Output::Reply { id: 2, .. }));
    assert!(matches!(out[2], Output::Reply { id: 4, .. }));
    assert_eq!(
        out.len(),
        3,
        "the persist covered every write applied before it: {out:?}"
    );
    // The other persist finishing releases nothing more and asks for nothing.
    out.clear();
    n.handle(0, Input::Persisted { upto }, &mut out);
    assert!(out.is_empty());
}

fn node_with(opts: Options) -> Node {
    Node::new(
        open_engine(opts),
        NodeConfig {
            partitions: 4,
            ..NodeConfig::default()
        },
    )
}

#[test]
fn interval_mode_persists_on_the_nodes_timer() {
    let mut n = node_with(Options {
        background: Background::Manual,
        stall: StallPolicy::Refuse,
        sync: SyncMode::Interval { ms: 100 },
        ..Options::default()
    });
    assert_eq!(n.next_deadline(), None, "nothing written, nothing to sync");
    let mut out = Vec::new();
    n.handle(
        1_000,
        Input::Client {
            id: 1,
            request: put("k", "v"),
        },
        &mut out,
    );
    assert!(
        matches!(out.as_slice(), [Output::Reply { id: 1, .. }]),
        "interval mode answers at once: {out:?}"
    );
    assert_eq!(n.next_deadline(), Some(1_100));
    out.clear();
    n.handle(1_099, Input::Timeout, &mut out);
    assert!(out.is_empty(), "too early: {out:?}");
    n.handle(1_100, Input::Timeout, &mut out);
    assert_eq!(out, vec![Output::Persist]);
    assert_eq!(n.next_deadline(), None, "the persist covers every write");
    let upto = n.db().persist().unwrap();
    out.clear();
    n.handle(1_150, Input::Persisted { upto }, &mut out);
    assert!(out.is_empty());
    assert_eq!(n.next_deadline(), None);
    // A later write starts a new period from its own time.
    n.handle(
        2_000,
        Input::Client {
            id: 2,
            request: put("k", "w"),
        },
        &mut out,
    );
    assert_eq!(n.next_deadline(), Some(2_100));
}

#[test]
fn an_engine_without_threads_gets_its_background_work_from_the_node() {
    let mut n = node_with(Options {
        background: Background::Manual,
        stall: StallPolicy::Refuse,
        sync: SyncMode::None,
        ..Options::tiny()
    });
    let mut out = Vec::new();
    let mut id = 0;
    while !out.contains(&Output::Background) {
        id += 1;
        assert!(id < 1_000, "no background work was ever asked for");
        let request = put(&format!("key{id:04}"), "some value bytes");
        n.handle(5, Input::Client { id, request }, &mut out);
    }
    // One at a time: more writes while it runs ask for nothing more.
    out.clear();
    for extra in 0..50 {
        let request = put(&format!("more{extra:04}"), "some value bytes");
        n.handle(
            6,
            Input::Client {
                id: 5_000 + extra,
                request,
            },
            &mut out,
        );
    }
    assert!(!out.contains(&Output::Background), "{out:?}");
    let result = n.db().do_background_work().map_err(|e| e.to_string());
    assert!(matches!(result, Ok(units) if units > 0));
    out.clear();
    n.handle(7, Input::BackgroundDone { result }, &mut out);
    assert_eq!(n.stats().backgrounds, 1);
    assert!(n.db().stats().flushes > 0, "the flush ran");
    assert_eq!(
        call(
            &mut n,
            8,
            Request::Get {
                key: b"key0001".to_vec()
            }
        ),
        Response::Value {
            value: b"some value bytes".to_vec(),
            // The first version this node gave, at 5 ms.
            version: 5 << VERSION_COUNTER_BITS,
            created_ms: 5,
            modified_ms: 5
        }
    );
}

#[test]
fn incr_adds_in_one_step_with_redis_integer_rules() {
    // Two nodes, and every call through the one that does not own the key half the time:
    // the increment is forwarded like any write.
    let mut net = Net::new(&["a", "b"]);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    let incr = |by| Request::Incr {
        key: b"n".to_vec(),
        by,
    };
    let value = |r: Response| match r {
        Response::Value { value, .. } => String::from_utf8(value).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(value(net.call(0, 1, incr(5))), "5", "absent counts as 0");
    assert_eq!(value(net.call(1, 2, incr(-7))), "-2");
    net.call(0, 3, put("n", &i64::MAX.to_string()));
    let r = net.call(0, 4, incr(1));
    assert!(
        matches!(&r, Response::Error { kind: ErrorKind::BadRequest, message } if message.contains("overflow")),
        "{r:?}"
    );
    for bad in [
        "abc",
        " 1",
        "+1",
        "01",
        "-0",
        "",
        "1.5",
        "99999999999999999999",
    ] {
        net.call(0, 5, put("n", bad));
        let r = net.call(1, 6, incr(1));
        assert!(
            matches!(
                &r,
                Response::Error {
                    kind: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{bad:?}: {r:?}"
        );
    }
}

#[test]
fn versions_go_up_per_key_and_survive_in_the_envelope() {
    let n = Node::new(
        Arc::new(Db::open(Arc::new(crate::SimDisk::new()), Options::tiny()).expect("open")),
        NodeConfig::default(),
    );
    // Above the key's previous version even when the clock is behind it.
    let v1 = n.versions.next(1, None);
    let v2 = n.versions.next(1, Some(v1));
    assert!(v2 > v1);
    let far = n.versions.next(1, Some(u64::from(u32::MAX) << 12));
    assert!(far > u64::from(u32::MAX) << 12);
    // Never back, even when the clock is.
    assert!(n.versions.next(0, None) > far);
}

#[test]
fn any_node_serves_any_key_by_forwarding_to_its_owner() {
    let mut net = Net::new(&["a", "b", "c"]);
    assert!(matches!(
        net.call(1, 1, put("k", "v")),
        Response::Error {
            kind: ErrorKind::NotReady,
            ..
        }
    ));
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    assert_eq!(net.nodes[0].cluster().role, Role::Leader);
    assert_eq!(net.nodes[1].cluster().role, Role::Follower);
    let map = net.nodes[2].cluster();
    assert_eq!((map.epoch, map.leader.as_deref()), (1, Some("a")));
    for id in ["a", "b", "c"] {
        assert!(map.owners.iter().any(|o| o == id), "{id} owns nothing");
    }
    // Written through every node, read through every node.
    for k in 0..60u64 {
        let via = (k % 3) as usize;
        let key = format!("key{k:03}");
        let r = net.call(via, 100 + k, put(&key, &key));
        assert!(matches!(r, Response::Written { .. }), "{key}: {r:?}");
    }
    for k in 0..60u64 {
        let key = format!("key{k:03}");
        for via in 0..3 {
            let r = net.call(
                via,
                1_000 + k,
                Request::Get {
                    key: key.clone().into(),
                },
            );
            let Response::Value { value, .. } = r else {
                panic!("{key} via {via}: {r:?}")
            };
            assert_eq!(value, key.as_bytes());
        }
    }
    // A scan through any node merges every owner's part, in order, across pages.
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let r = net.call(1, 5_000, Request::scan_prefix(b"key".to_vec(), after, 7));
        let Response::Page { items, next_after } = r else {
            panic!("{r:?}")
        };
        got.extend(items.into_iter().map(|i| i.key));
        match next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    let want: Vec<Vec<u8>> = (0..60).map(|k| format!("key{k:03}").into_bytes()).collect();
    assert_eq!(got, want);
    // A batch within one owner's partitions is fine; one spanning owners is refused whole.
    let span = Request::Batch {
        ops: (0..20)
            .map(|k| BatchOp::Put(format!("b{k}").into_bytes(), b"x".to_vec()))
            .collect(),
    };
    assert!(matches!(
        net.call(0, 6_000, span),
        Response::Error {
            kind: ErrorKind::SpansNodes,
            ..
        }
    ));
    assert_eq!(
        net.call(
            2,
            6_001,
            Request::Get {
                key: b"b0".to_vec()
            }
        ),
        Response::NotFound
    );
}

#[test]
fn a_joining_node_gets_partitions_by_hand_off_with_every_key_intact() {
    let mut net = Net::new(&["a", "b"]);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    for k in 0..400u64 {
        let key = format!("key{k:03}");
        let r = net.call((k % 2) as usize, k, put(&key, &format!("v{k}")));
        assert!(matches!(r, Response::Written { .. }), "{r:?}");
    }
    for k in 0..50u64 {
        let key = format!("key{k:03}");
        net.call(
            0,
            10_000 + k,
            Request::Delete {
                key: key.into(),
                cond: Condition::None,
            },
        );
    }
    net.join("c");
    net.settle();
    let view = net.nodes[0].cluster();
    assert!(view.moving.is_empty(), "moves left: {:?}", view.moving);
    for id in ["a", "b", "c"] {
        let n = view.owners.iter().filter(|o| *o == id).count();
        assert!((5..=6).contains(&n), "{id} owns {n} of 16");
    }
    for via in 0..3 {
        for k in 0..400u64 {
            let key = format!("key{k:03}");
            let r = net.call(
                via,
                20_000 + k,
                Request::Get {
                    key: key.clone().into(),
                },
            );
            if k < 50 {
                assert_eq!(r, Response::NotFound, "{key} was deleted (via {via})");
            } else {
                let Response::Value { value, .. } = r else {
                    panic!("{key} via {via}: {r:?}")
                };
                assert_eq!(value, format!("v{k}").as_bytes());
            }
        }
    }
    // The old owners dropped their copies of the moved partitions.
    let c_parts: Vec<u16> = (0..16u16)
        .filter(|p| view.owners[*p as usize] == "c")
        .collect();
    for n in &net.nodes[..2] {
        for p in &c_parts {
            let pre = p.to_be_bytes();
            let left = n.db().scan_prefix(&pre).unwrap().count();
            assert_eq!(left, 0, "{} still holds partition {p}", n.cfg.node_id);
        }
    }
}

#[test]
fn a_decommissioned_node_is_emptied() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    for k in 0..300u64 {
        net.call((k % 3) as usize, k, put(&format!("k{k}"), "v"));
    }
    // Asked through a follower: it goes to the leader.
    net.input(
        2,
        Input::Admin {
            id: 77,
            command: AdminCommand::Decommission { node: "c".into() },
        },
    );
    assert!(net
        .replies
        .iter()
        .any(|(_, id, r)| *id == 77 && *r == Response::Accepted));
    net.settle();
    let view = net.nodes[1].cluster();
    assert!(view.owners.iter().all(|o| o != "c"), "{:?}", view.owners);
    assert!(view.moving.is_empty());
    for k in 0..300u64 {
        let r = net.call(
            1,
            1_000 + k,
            Request::Get {
                key: format!("k{k}").into(),
            },
        );
        assert!(matches!(r, Response::Value { .. }), "k{k}: {r:?}");
    }
    assert_eq!(
        net.nodes[2]
            .db()
            .scan(Bound::Unbounded, Bound::Unbounded)
            .unwrap()
            .count(),
        0
    );
}

/// Keys of partition `p` left after copying a page in (not yet durable) and wiping the
/// partition, as a restarted copy does.
fn left_after_wipe() -> usize {
    let mut net = Net::new(&["a"]);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    let n = &mut net.nodes[0];
    let p = 3u16;
    let mut b = WriteBatch::new();
    for k in 0..5u8 {
        let mut ik = p.to_be_bytes().to_vec();
        ik.extend_from_slice(&[b'k', k]);
        b.put(ik, encode_value(1, 1, 1, b"v"));
    }
    n.db().write_deferred(b).unwrap();
    let mut out = Vec::new();
    n.delete_partition(p, usize::MAX, None, &mut out).unwrap();
    n.db().persist().unwrap();
    let left = n.db().scan_prefix(&p.to_be_bytes()).unwrap().count();
    left
}

#[test]
fn wiping_a_partition_also_deletes_writes_not_yet_durable() {
    assert_eq!(
        left_after_wipe(),
        0,
        "the wipe missed writes that were not durable yet"
    );
    // The test sees the bug it pins.
    #[cfg(feature = "bugs")]
    {
        crate::bugs::enable(crate::bugs::Bug::WipeOnlyDurable);
        let left = left_after_wipe();
        crate::bugs::clear();
        assert_eq!(left, 5);
    }
}

#[test]
fn a_decommission_while_the_leader_writes_waits_for_the_next_write() {
    let mut net = Net::new(&["a", "b", "c", "d"]);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    net.settle();
    let decommission = |node: &str, id| Input::Admin {
        id,
        command: AdminCommand::Decommission { node: node.into() },
    };
    // Two requests before the coordinator answers the first one's write.
    let mut out = Vec::new();
    let now = net.now;
    net.nodes[0].handle(now, decommission("c", 1), &mut out);
    net.nodes[0].handle(now, decommission("d", 2), &mut out);
    let writes: Vec<(ClusterState, i64)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Coordinator(CoordCommand::WriteState { state, expected }) => {
                Some((state.clone(), *expected))
            }
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 1, "one state write at a time: {out:?}");
    // The coordinator carries out that write; the second request follows in the next.
    let (state, expected) = writes[0].clone();
    assert!(net.store.write(state, expected));
    let done = StateStore::<ClusterState>::write_done(true);
    net.input(0, Input::Coordinator(done));
    for j in 0..4 {
        let st = net.store.state_event();
        net.input(j, Input::Coordinator(st));
    }
    net.settle();
    let owners = net.nodes[1].cluster().owners;
    assert!(
        owners.iter().all(|o| o != "c" && o != "d"),
        "both nodes were emptied: {owners:?}"
    );
}

#[test]
fn a_leader_steps_down_on_disconnect_and_a_stale_claim_changes_nothing() {
    let mut net = Net::new(&["a", "b"]);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    assert_eq!(net.nodes[0].cluster().role, Role::Leader);
    net.input(0, Input::Coordinator(CoordEvent::Disconnected));
    assert_eq!(
        net.nodes[0].cluster().role,
        Role::Follower,
        "steps down on the connection loss, before any expiry"
    );
    net.input(1, Input::Coordinator(CoordEvent::Elected));
    let view = net.nodes[1].cluster();
    assert_eq!((view.role, view.epoch), (Role::Leader, 2));
    let before = net.store.value().cloned();
    // The old leader comes back with an old stamp: its write is refused.
    let mut out = Vec::new();
    net.nodes[0].handle(2_000, Input::Coordinator(CoordEvent::Connected), &mut out);
    assert!(
        out.is_empty(),
        "a reconnected ex-leader claims nothing unasked: {out:?}"
    );
    assert_eq!(net.store.value().cloned(), before);
    // The map it sees names b as leader.
    assert_eq!(net.nodes[0].cluster().leader.as_deref(), Some("b"));
}

#[test]
fn a_dead_owners_keys_answer_unavailable_others_keep_serving() {
    let mut net = Net::new(&["a", "b"]);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    // b leaves the member list (its session expired).
    let only_a = vec![Member {
        disk: 0,
        id: "a".into(),
        http: String::new(),
        peer: String::new(),
    }];
    net.input(0, Input::Coordinator(CoordEvent::Members(only_a)));
    let (mut down, mut up) = (0, 0);
    for k in 0..40u64 {
        let key = format!("k{k}");
        match net.call(0, k, put(&key, "v")) {
            Response::Written { .. } => up += 1,
            Response::Error {
                kind: ErrorKind::OwnerDown,
                message,
            } => {
                assert!(message.contains("node b"), "{message}");
                down += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(down > 0 && up > 0, "down {down}, up {up}");
}

#[test]
fn versions_times_and_conditions() {
    let mut n = node();
    let Response::Written { version: v1 } = call(&mut n, 100, put("k", "a")) else {
        panic!()
    };
    let Response::Written { version: v2 } = call(&mut n, 200, put("k", "b")) else {
        panic!()
    };
    assert!(v2 > v1);
    assert_eq!(
        call(&mut n, 300, Request::Get { key: b"k".to_vec() }),
        Response::Value {
            value: b"b".to_vec(),
            version: v2,
            created_ms: 100,
            modified_ms: 200
        }
    );
    let stale = Request::Put {
        key: b"k".to_vec(),
        value: b"c".to_vec(),
        cond: Condition::IfMatch(v1),
    };
    assert_eq!(
        call(&mut n, 300, stale),
        Response::PreconditionFailed { current: Some(v2) }
    );
    let create_only = Request::Put {
        key: b"k".to_vec(),
        value: b"c".to_vec(),
        cond: Condition::IfAbsent,
    };
    assert!(matches!(
        call(&mut n, 300, create_only),
        Response::PreconditionFailed { .. }
    ));
    let del = Request::Delete {
        key: b"k".to_vec(),
        cond: Condition::IfMatch(v2),
    };
    assert!(matches!(call(&mut n, 400, del), Response::Deleted { .. }));
    assert_eq!(
        call(&mut n, 400, Request::Get { key: b"k".to_vec() }),
        Response::NotFound
    );
    let Response::Written { .. } = call(&mut n, 500, put("k", "again")) else {
        panic!()
    };
    let Response::Value { created_ms, .. } = call(&mut n, 600, Request::Get { key: b"k".to_vec() })
    else {
        panic!()
    };
    assert_eq!(
        created_ms, 500,
        "a key created again gets a new creation time"
    );
    assert_eq!(
        call(
            &mut n,
            600,
            Request::Delete {
                key: b"missing".to_vec(),
                cond: Condition::None
            }
        ),
        Response::NotFound
    );
}

#[test]
fn scans_merge_partitions_in_key_order_and_page() {
    let mut n = node();
    let keys: Vec<String> = (0..25).map(|i| format!("user:{i:03}")).collect();
    for k in &keys {
        call(&mut n, 1, put(k, k));
    }
    call(&mut n, 1, put("other", "x"));
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let r = call(
            &mut n,
            1,
            Request::scan_prefix(b"user:".to_vec(), after.clone(), 4),
        );
        let Response::Page { items, next_after } = r else {
            panic!("{r:?}")
        };
        assert!(items.len() <= 4);
        got.extend(items.into_iter().map(|i| String::from_utf8(i.key).unwrap()));
        match next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(got, keys);
}

#[test]
fn limits_are_enforced() {
    let mut n = node();
    let big = Request::Put {
        key: vec![b'k'; 9 << 10],
        value: Vec::new(),
        cond: Condition::None,
    };
    assert!(matches!(
        call(&mut n, 1, big),
        Response::Error {
            kind: ErrorKind::TooLarge,
            ..
        }
    ));
    let big = Request::Put {
        key: b"k".to_vec(),
        value: vec![0; (1 << 20) + 1],
        cond: Condition::None,
    };
    assert!(matches!(
        call(&mut n, 1, big),
        Response::Error {
            kind: ErrorKind::TooLarge,
            ..
        }
    ));
    assert_eq!(
        call(&mut n, 1, Request::Get { key: b"k".to_vec() }),
        Response::NotFound
    );
}
