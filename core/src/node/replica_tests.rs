//! Replication in small clusters in one thread (the harness of `harness.rs`): what a primary
//! waits for before it answers, what readers see meanwhile, and how a replica that missed an
//! entry or hears an old epoch is dealt with.

use super::harness::{Net, Work};
use super::*;
use crate::proto::peer::PeerMessage;
use crate::proto::replog::LogEntry;
use crate::proto::Condition;

fn put(key: &str, value: &str) -> Request {
    Request::Put {
        key: key.into(),
        value: value.into(),
        cond: Condition::None,
    }
}

fn get(key: &str) -> Request {
    Request::Get { key: key.into() }
}

/// Three nodes, eight partitions, three copies of each; `a` leads; the first lease has
/// run out (a node that starts leading waits one out before it answers).
fn three_copies() -> Net {
    let mut net = Net::replicated(&["a", "b", "c"], 8, 3, 2);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    assert_eq!(net.nodes[0].cluster().role, Role::Leader);
    pass(&mut net, replica::LEASE_MS);
    net
}

/// `ms` pass in steps of 100, every live node woken at each.
fn pass(net: &mut Net, ms: u64) {
    for _ in 0..ms.div_ceil(100) {
        net.now += 100;
        for i in 0..net.len() {
            if !net.down.contains(&i) {
                net.input(i, Input::Timeout);
            }
        }
    }
}

/// The node index of the primary of `key`'s partition, and of its two backups.
fn copies_of(net: &Net, key: &str) -> (usize, Vec<usize>) {
    let p = net.nodes[0].partition_of(key.as_bytes());
    let view = net.nodes[0].cluster();
    let primary = net.index(&view.owners[usize::from(p)]);
    let backups = view.replicas[usize::from(p)]
        .backups
        .iter()
        .map(|b| net.index(b))
        .collect();
    (primary, backups)
}

fn holds(net: &Net, i: usize, key: &str, value: &str) -> bool {
    net.visible_keys(i)
        .iter()
        .any(|(_, k, v)| k == key.as_bytes() && v.ends_with(value.as_bytes()))
}

#[test]
fn every_partition_gets_three_copies_and_a_write_reaches_all_of_them() {
    let mut net = three_copies();
    let view = net.nodes[1].cluster();
    assert_eq!(view.replicas.len(), 8);
    for (p, r) in view.replicas.iter().enumerate() {
        assert_eq!(r.backups.len(), 2, "partition {p}");
        assert!(!r.backups.contains(&view.owners[p]), "partition {p}");
        assert_eq!(r.epoch, 1);
    }
    assert_eq!(view.under_replicated, 0);
    for k in 0..24 {
        let key = format!("k{k}");
        let via = k % 3;
        let r = net.call(via, k as u64, put(&key, "v1"));
        assert!(matches!(r, Response::Written { .. }), "{key}: {r:?}");
        for i in 0..3 {
            assert!(holds(&net, i, &key, "v1"), "{key} not on node {i}");
        }
        assert!(matches!(
            net.call((via + 1) % 3, 1000 + k as u64, get(&key)),
            Response::Value { .. }
        ));
    }
}

#[test]
fn the_reply_waits_for_every_backup_to_persist_and_readers_see_the_old_value_meanwhile() {
    let mut net = three_copies();
    assert!(matches!(
        net.call(0, 1, put("k", "old")),
        Response::Written { .. }
    ));
    let (primary, backups) = copies_of(&net, "k");
    net.deliver(
        primary,
        Input::Client {
            id: 2,
            request: put("k", "new"),
        },
    );
    // Everything happens except the backups' persists.
    loop {
        let next = net
            .queue
            .iter()
            .position(|w| !matches!(w, Work::Persist { node } if backups.contains(node)));
        let Some(at) = next else { break };
        let w = net.queue.remove(at).expect("an item just found");
        net.process(w);
    }
    assert!(
        !net.replies.iter().any(|(_, id, _)| *id == 2),
        "answered before the backups' fsyncs"
    );
    // The primary's engine holds the new value, durable; its readers still see the old one.
    assert!(holds(&net, primary, "k", "new"));
    match net.nodes[primary].reader().read(net.now, get("k")) {
        Response::Value { value, .. } => assert_eq!(value, b"old"),
        other => panic!("{other:?}"),
    }
    // One backup persisting is not enough either.
    let one = net
        .take(|w| matches!(w, Work::Persist { node } if *node == backups[0]))
        .expect("a pending persist of the first backup");
    net.process(one);
    assert!(!net.replies.iter().any(|(_, id, _)| *id == 2));
    net.run();
    let (_, _, reply) = net
        .replies
        .iter()
        .find(|(_, id, _)| *id == 2)
        .expect("answered once every copy is durable");
    assert!(matches!(reply, Response::Written { .. }), "{reply:?}");
    match net.nodes[primary].reader().read(net.now, get("k")) {
        Response::Value { value, .. } => assert_eq!(value, b"new"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_condition_waits_for_the_write_it_was_decided_on() {
    let mut net = three_copies();
    let (primary, backups) = copies_of(&net, "c");
    net.deliver(
        primary,
        Input::Client {
            id: 1,
            request: put("c", "1"),
        },
    );
    net.deliver(
        primary,
        Input::Client {
            id: 2,
            request: Request::Put {
                key: b"c".to_vec(),
                value: b"2".to_vec(),
                cond: Condition::IfAbsent,
            },
        },
    );
    while let Some(at) = net
        .queue
        .iter()
        .position(|w| !matches!(w, Work::Persist { node } if backups.contains(node)))
    {
        let w = net.queue.remove(at).expect("an item just found");
        net.process(w);
    }
    assert!(
        !net.replies.iter().any(|(_, id, _)| *id == 2),
        "the 412 would reveal a write that is not committed"
    );
    net.run();
    let answers: Vec<&Response> = net.replies.iter().map(|(_, _, r)| r).collect();
    assert!(
        matches!(
            answers[..],
            [
                Response::Written { .. },
                Response::PreconditionFailed { .. }
            ]
        ),
        "{answers:?}"
    );
}

#[test]
fn a_lost_entry_is_sent_again_from_the_log() {
    let mut net = three_copies();
    let (primary, backups) = copies_of(&net, "g");
    net.deliver(
        primary,
        Input::Client {
            id: 1,
            request: put("g", "1"),
        },
    );
    // The entry to the second backup is lost on the wire.
    let lost = net.take(|w| {
        matches!(w, Work::Peer { to, message: PeerMessage::Replicate { .. }, .. } if *to == backups[1])
    });
    assert!(lost.is_some(), "the entry was sent to the second backup");
    net.run();
    assert!(
        !net.replies.iter().any(|(_, id, _)| *id == 1),
        "answered without one backup"
    );
    // The next write reaches it, it says what it lacks, and the primary sends both.
    net.deliver(
        primary,
        Input::Client {
            id: 2,
            request: put("g", "2"),
        },
    );
    net.run();
    let ids: Vec<u64> = net.replies.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids, vec![1, 2]);
    assert!(holds(&net, backups[1], "g", "2"));
    // Lost again, and no further write: the resend timer brings it.
    net.deliver(
        primary,
        Input::Client {
            id: 3,
            request: put("g", "3"),
        },
    );
    let lost = net.take(|w| {
        matches!(w, Work::Peer { to, message: PeerMessage::Replicate { .. }, .. } if *to == backups[1])
    });
    assert!(lost.is_some());
    net.run();
    assert!(!net.replies.iter().any(|(_, id, _)| *id == 3));
    net.now += replica::RESEND_MS;
    net.input(primary, Input::Timeout);
    assert!(
        net.replies.iter().any(|(_, id, _)| *id == 3),
        "resent after the timer"
    );
    assert!(holds(&net, backups[1], "g", "3"));
}

#[test]
fn a_replica_refuses_an_older_epoch_and_entries_outside_the_partition() {
    let mut net = three_copies();
    let (primary, backups) = copies_of(&net, "e");
    let p = net.nodes[0].partition_of(b"e");
    let b = backups[0];
    let stale = PeerMessage::Replicate {
        partition: p,
        epoch: 0,
        commit: 0,
        prev_lsn: 0,
        prev_epoch: 0,
        sent_at: 0,
        entries: vec![LogEntry {
            lsn: 1,
            epoch: 0,
            ops: vec![(
                crate::proto::envelope::internal_key(p, b"e"),
                Some(b"x".to_vec()),
            )],
        }],
    };
    let from = net.name(primary);
    net.deliver(
        b,
        Input::Peer {
            from,
            message: stale,
        },
    );
    let answer = net.queue.iter().find_map(|w| match w {
        Work::Peer {
            message: PeerMessage::ReplicaAck { epoch, applied, .. },
            ..
        } => Some((*epoch, *applied)),
        _ => None,
    });
    assert_eq!(
        answer,
        Some((1, 0)),
        "refused, naming the epoch that replaced it"
    );
    net.run();
    assert!(net.visible_keys(b).is_empty(), "nothing applied");
    // An entry of the right epoch whose key is in another partition is dropped whole.
    let other = (p + 1) % 8;
    let foreign = PeerMessage::Replicate {
        partition: p,
        epoch: 1,
        commit: 0,
        prev_lsn: 0,
        prev_epoch: 0,
        sent_at: 0,
        entries: vec![LogEntry {
            lsn: 1,
            epoch: 1,
            ops: vec![(
                crate::proto::envelope::internal_key(other, b"z"),
                Some(b"x".to_vec()),
            )],
        }],
    };
    let from = net.name(primary);
    net.input(
        b,
        Input::Peer {
            from,
            message: foreign,
        },
    );
    assert!(net.visible_keys(b).is_empty(), "nothing applied");
}

#[test]
fn too_few_copies_in_sync_refuse_writes_and_keep_serving_reads() {
    // Two nodes for three copies: under-replicated, two in sync: writes go on.
    let mut net = Net::replicated(&["a", "b"], 4, 3, 2);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    pass(&mut net, replica::LEASE_MS);
    assert_eq!(net.nodes[0].cluster().under_replicated, 4);
    assert!(matches!(
        net.call(1, 1, put("k", "v")),
        Response::Written { .. }
    ));
    // One node, a minimum of two: reads only.
    let mut net = Net::replicated(&["a"], 4, 3, 2);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    pass(&mut net, replica::LEASE_MS);
    match net.call(0, 1, put("k", "v")) {
        Response::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Unavailable);
            assert!(message.contains("min_insync_replicas"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(net.call(0, 2, get("k")), Response::NotFound);
}

#[test]
fn a_batch_across_partitions_is_refused_with_replicas() {
    let mut net = three_copies();
    let keys: Vec<String> = (0..40).map(|i| format!("b{i}")).collect();
    let p0 = net.nodes[0].partition_of(keys[0].as_bytes());
    let owner = net.nodes[0].cluster().owners[usize::from(p0)].clone();
    let other = keys
        .iter()
        .find(|k| {
            let p = net.nodes[0].partition_of(k.as_bytes());
            p != p0 && net.nodes[0].cluster().owners[usize::from(p)] == owner
        })
        .expect("two partitions with one primary")
        .clone();
    let batch = Request::Batch {
        ops: vec![
            crate::proto::BatchOp::Put(keys[0].clone().into(), b"1".to_vec()),
            crate::proto::BatchOp::Put(other.into(), b"2".to_vec()),
        ],
    };
    match net.call(0, 1, batch) {
        Response::Error { kind, .. } => assert_eq!(kind, ErrorKind::SpansNodes),
        other => panic!("{other:?}"),
    }
    for i in 0..3 {
        assert!(net.visible_keys(i).is_empty());
    }
}

/// Writes `state` as the coordinator's new state (as a leader would) and tells every node.
fn impose(net: &mut Net, state: crate::cluster::ClusterState) {
    let stamp = net.store.stamp();
    assert!(net.store.write(state, stamp));
    for i in 0..net.len() {
        let ev = net.store.state_event();
        net.input(i, Input::Coordinator(ev));
    }
}

#[test]
fn a_new_primary_makes_a_replica_undo_what_only_the_old_primary_sent_and_no_more() {
    let mut net = three_copies();
    let (primary, backups) = copies_of(&net, "x");
    let p = net.nodes[0].partition_of(b"x");
    // A second key of the same partition.
    let other = (0..1000)
        .map(|i| format!("y{i}"))
        .find(|k| net.nodes[0].partition_of(k.as_bytes()) == p)
        .expect("another key of the partition");
    assert!(matches!(
        net.call(0, 1, put("x", "committed")),
        Response::Written { .. }
    ));
    // The old primary writes `other`, which reaches only the first backup; then it is gone.
    net.deliver(
        primary,
        Input::Client {
            id: 2,
            request: put(&other, "lost"),
        },
    );
    let _ = net.take(|w| {
        matches!(w, Work::Peer { to, message: PeerMessage::Replicate { .. }, .. } if *to == backups[1])
    });
    while let Some(at) = net.queue.iter().position(|w| match w {
        Work::Peer { from, to, .. } => *from == primary && *to == backups[0],
        Work::Persist { node } => *node == backups[0],
        _ => false,
    }) {
        let w = net.queue.remove(at).expect("an item just found");
        net.process(w);
    }
    net.queue.clear();
    assert!(holds(&net, backups[0], &other, "lost"));
    // The leader promotes the second backup under epoch 2, without the old primary.
    let mut st = net.store.value().expect("a state").clone();
    let (new_primary, keeps) = (backups[1], backups[0]);
    st.owners[usize::from(p)] = net.name(new_primary);
    st.replicas[usize::from(p)].backups = vec![net.name(keeps)];
    st.replicas[usize::from(p)].epoch = 2;
    st.version += 1;
    impose(&mut net, st);
    pass(&mut net, replica::LEASE_MS);
    // Its first write follows entry 1; the remaining backup's entry 2 (epoch 1) differs.
    let r = net.call(new_primary, 3, put("x", "new"));
    assert!(matches!(r, Response::Written { .. }), "{r:?}");
    assert!(holds(&net, keeps, "x", "new"));
    assert!(
        !net.visible_keys(keeps)
            .iter()
            .any(|(_, k, _)| k == other.as_bytes()),
        "the entry only the old primary had is undone"
    );
    assert_eq!(net.nodes[keeps].repl.truncations, 1);
    // And the committed write before the divergence is still there, on both copies, after
    // one more write that overwrites nothing.
    assert!(matches!(
        net.call(keeps, 4, put(&other, "again")),
        Response::Written { .. }
    ));
    for i in [new_primary, keeps] {
        assert!(holds(&net, i, &other, "again"));
    }
    match net.call(keeps, 5, get("x")) {
        Response::Value { value, .. } => assert_eq!(value, b"new"),
        other => panic!("{other:?}"),
    }
}

/// A key whose partition's primary is not node 0 (the leader), and that primary.
fn key_not_led_by_the_leader(net: &Net) -> (String, usize, Vec<usize>) {
    (0..1000)
        .map(|i| format!("f{i}"))
        .find_map(|k| {
            let (primary, backups) = copies_of(net, &k);
            (primary != 0).then_some((k, primary, backups))
        })
        .expect("a partition some other node leads")
}

/// Node `i` is gone: its messages are dropped and the others see it leave the members.
fn lose(net: &mut Net, i: usize) {
    net.down.insert(i);
    let members: Vec<_> = net
        .members()
        .into_iter()
        .filter(|m| m.id != net.name(i))
        .collect();
    for j in 0..net.len() {
        if j != i {
            net.input(j, Input::Coordinator(CoordEvent::Members(members.clone())));
        }
    }
}

#[test]
fn when_a_primary_is_gone_the_leader_promotes_a_backup_and_no_acknowledged_write_is_lost() {
    let mut net = three_copies();
    let (key, primary, backups) = key_not_led_by_the_leader(&net);
    let p = net.nodes[0].partition_of(key.as_bytes());
    for (i, v) in ["1", "2", "3"].iter().enumerate() {
        let r = net.call(i % 3, 10 + i as u64, put(&key, v));
        assert!(matches!(r, Response::Written { .. }), "{r:?}");
    }
    lose(&mut net, primary);
    let view = net.nodes[0].cluster();
    pass(&mut net, replica::LEASE_MS);
    let new_primary = view.owners[usize::from(p)].clone();
    assert!(
        backups.iter().any(|b| net.name(*b) == new_primary),
        "{new_primary}"
    );
    let r = &view.replicas[usize::from(p)];
    assert_eq!(r.epoch, 2, "a new epoch for the new primary");
    assert_eq!(
        r.backups.len(),
        1,
        "the other backup stays, the lost node leaves"
    );
    assert_eq!(
        view.under_replicated, 8,
        "every partition is short of the lost copy"
    );
    // Every acknowledged write is there, through either live node; writes go on.
    for via in backups.iter().copied() {
        match net.call(via, 20 + via as u64, get(&key)) {
            Response::Value { value, .. } => assert_eq!(value, b"3"),
            other => panic!("{other:?}"),
        }
    }
    let r = net.call(backups[0], 30, put(&key, "4"));
    assert!(matches!(r, Response::Written { .. }), "{r:?}");
    for via in backups.iter().copied() {
        assert!(holds(&net, via, &key, "4"));
    }
}

#[test]
fn a_backup_that_stops_answering_is_removed_before_writes_go_on_without_it() {
    let mut net = three_copies();
    let (key, primary, backups) = key_not_led_by_the_leader(&net);
    let p = net.nodes[0].partition_of(key.as_bytes());
    // The backup that is not the leader stops answering but stays a member.
    let Some(&silent) = backups.iter().find(|b| **b != 0) else {
        panic!("a backup other than the leader");
    };
    net.down.insert(silent);
    net.deliver(
        primary,
        Input::Client {
            id: 1,
            request: put(&key, "v"),
        },
    );
    net.run();
    assert!(
        !net.replies.iter().any(|(_, id, _)| *id == 1),
        "answered without the backup"
    );
    let epoch = net.nodes[0].cluster().replicas[usize::from(p)].epoch;
    // Time passes: the primary reports it, the leader removes it, the write is answered.
    pass(&mut net, 4_000);
    let (_, _, reply) = net
        .replies
        .iter()
        .find(|(_, id, _)| *id == 1)
        .expect("answered once the backup left the configuration");
    assert!(matches!(reply, Response::Written { .. }), "{reply:?}");
    let view = net.nodes[primary].cluster();
    let r = &view.replicas[usize::from(p)];
    assert!(!r.backups.contains(&net.name(silent)), "{r:?}");
    assert_eq!(r.epoch, epoch + 1);
    // It is live, so it is taken back as a learner.
    assert!(r.learners.contains(&net.name(silent)), "{r:?}");
}

#[test]
fn a_cut_off_primary_stops_serving_reads_before_its_successor_starts() {
    let mut net = three_copies();
    let (key, primary, backups) = key_not_led_by_the_leader(&net);
    assert!(matches!(
        net.call(primary, 1, put(&key, "1")),
        Response::Written { .. }
    ));
    let read = |net: &Net, i: usize, at: u64| net.nodes[i].reader().read(at, get(&key));
    assert!(matches!(
        read(&net, primary, net.now),
        Response::Value { .. }
    ));
    // Cut off from everyone: the others see it leave and promote a backup at once.
    let cut_at = net.now;
    lose(&mut net, primary);
    let p = net.nodes[0].partition_of(key.as_bytes());
    let successor = net.index(&net.nodes[0].cluster().owners[usize::from(p)]);
    assert!(backups.contains(&successor));
    // The successor waits out the promise it gave; the old primary's lease runs out first.
    assert!(matches!(
        read(&net, successor, net.now),
        Response::Error { .. }
    ));
    let expired = cut_at + replica::LEASE_MS;
    match read(&net, primary, expired) {
        Response::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Unavailable);
            assert!(message.contains("lease"), "{message}");
        }
        other => panic!("the old primary still serves: {other:?}"),
    }
    pass(&mut net, replica::LEASE_MS + 200);
    match read(&net, successor, net.now) {
        Response::Value { value, .. } => assert_eq!(value, b"1"),
        other => panic!("{other:?}"),
    }
}

/// A node whose disk is lost comes back empty under its old id: it offers none of its
/// (empty) copies for promotion, the leader takes it back as a learner, each primary, whose
/// log no longer reaches back to the start, sends it a copy of the partition, and it is a
/// backup again with every acknowledged write, and takes part in writes from then on.
#[test]
fn a_node_back_on_an_empty_disk_gets_a_copy_of_each_partition_and_every_write() {
    let mut net = Net::replicated_retaining(&["a", "b", "c"], 8, 3, 2, 4);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    pass(&mut net, replica::LEASE_MS);
    // Written while every copy is up: c holds them too.
    let mut written = Vec::new();
    for i in 0..40u64 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        let r = net.call((i % 2) as usize, 100 + i, put(&k, &v));
        assert!(matches!(r, Response::Written { .. }), "{r:?}");
        written.push((k, v));
    }
    // c is gone, and written more while it is (deletes and overwrites among them).
    lose(&mut net, 2);
    pass(&mut net, replica::LEASE_MS);
    for i in 0..40u64 {
        let k = format!("k{i}");
        let r = if i % 5 == 0 {
            net.call(
                (i % 2) as usize,
                200 + i,
                Request::Delete {
                    key: k.clone().into(),
                    cond: Condition::None,
                },
            )
        } else {
            net.call((i % 2) as usize, 200 + i, put(&k, &format!("w{i}")))
        };
        assert!(!matches!(r, Response::Error { .. }), "{r:?}");
        written[i as usize].1 = if i % 5 == 0 {
            String::new()
        } else {
            format!("w{i}")
        };
    }
    // Back, on an empty disk.
    net.wipe(2);
    assert!(net.nodes[2].repl.wiped);
    pass(&mut net, 6_000);
    assert!(net.nodes[2].repl.copies_received > 0, "no copy was sent");
    let view = net.nodes[0].cluster();
    for (p, r) in view.replicas.iter().enumerate() {
        let held = std::iter::once(&view.owners[p]).chain(&r.backups).count();
        assert_eq!(held, 3, "partition {p} is not back to three copies: {r:?}");
    }
    assert_eq!(view.under_replicated, 0);
    for (k, v) in &written {
        if v.is_empty() {
            assert!(
                !net.visible_keys(2)
                    .iter()
                    .any(|(_, key, _)| key == k.as_bytes()),
                "{k} was deleted while c was gone"
            );
        } else {
            assert!(holds(&net, 2, k, v), "c lacks {k}={v}");
        }
    }
    // And it takes the next write like any backup.
    let r = net.call(0, 900, put("k1", "after"));
    assert!(matches!(r, Response::Written { .. }), "{r:?}");
    assert!(holds(&net, 2, "k1", "after"));
    assert!(
        !net.nodes[2].positions_of(&[0, 1, 2]).is_empty(),
        "caught up, it offers its copies again"
    );
}

/// A fourth node joins a cluster with three copies of everything: it is given copies by
/// configuration changes (learner, then backup; an extra copy dropped) and then primaries,
/// until each node holds its share; every acknowledged write is on it where it holds a copy.
#[test]
fn a_node_joining_a_replicated_cluster_gets_its_share_by_configuration_changes() {
    let mut net = three_copies();
    let mut written = Vec::new();
    for i in 0..40u64 {
        let (k, v) = (format!("j{i}"), format!("v{i}"));
        let r = net.call((i % 3) as usize, 100 + i, put(&k, &v));
        assert!(matches!(r, Response::Written { .. }), "{r:?}");
        written.push((k, v));
    }
    net.join("d");
    pass(&mut net, 10_000);
    let view = net.nodes[0].cluster();
    let d = net.index("d");
    let held = |id: &str| {
        (0..8)
            .filter(|&p| view.owners[p] == id || view.replicas[p].backups.iter().any(|b| b == id))
            .count()
    };
    assert_eq!(held("d"), 6, "d's share of 24 copies: {:?}", view.replicas);
    for id in ["a", "b", "c"] {
        assert_eq!(held(id), 6, "{id}");
    }
    assert!(
        view.owners.iter().filter(|o| *o == "d").count() >= 1,
        "{:?}",
        view.owners
    );
    assert!(view.replicas.iter().all(|r| r.learners.is_empty()));
    for (k, v) in &written {
        let p = usize::from(net.nodes[0].partition_of(k.as_bytes()));
        let on_d = view.owners[p] == "d" || view.replicas[p].backups.iter().any(|b| b == "d");
        assert_eq!(holds(&net, d, k, v), on_d, "{k} on d");
        match net.call(d, 500, get(k)) {
            Response::Value { value, .. } => assert_eq!(value, v.as_bytes()),
            other => panic!("{k}: {other:?}"),
        }
    }
    let r = net.call(d, 900, put("j1", "after"));
    assert!(matches!(r, Response::Written { .. }), "{r:?}");
}

/// A primary whose backups (the leader among them) all fall silent cannot commit, and no one
/// can drop them: the client is told "outcome unknown" after `COMMIT_WAIT_MS`, naming the
/// copies it waited for, rather than waiting for ever.
#[test]
fn a_primary_that_cannot_commit_answers_outcome_unknown_in_bounded_time() {
    let mut net = three_copies();
    let (key, primary, backups) = key_not_led_by_the_leader(&net);
    for b in &backups {
        net.down.insert(*b);
    }
    net.deliver(
        primary,
        Input::Client {
            id: 1,
            request: put(&key, "v"),
        },
    );
    net.run();
    pass(&mut net, replica::COMMIT_WAIT_MS - 500);
    assert!(
        !net.replies.iter().any(|(_, id, _)| *id == 1),
        "answered before the commit wait ran out"
    );
    pass(&mut net, 1_000);
    let Some((_, _, reply)) = net.replies.iter().find(|(_, id, _)| *id == 1) else {
        panic!("no answer after the commit wait");
    };
    match reply {
        Response::Error { kind, message } => {
            assert_eq!(*kind, ErrorKind::OutcomeUnknown, "{message}");
            for b in &backups {
                assert!(message.contains(&net.name(*b)), "{message}");
            }
        }
        other => panic!("{other:?}"),
    }
}

/// A primary whose backups are both gone serves reads alone (a partition below
/// `min_insync_replicas` keeps serving reads), but only while it holds its coordinator
/// session: once it is cut off, the leader may promote one of the dropped backups, which are
/// eligible, and nothing else would stop it serving stale values.
#[test]
fn a_primary_left_alone_serves_reads_only_while_it_reaches_the_coordinator() {
    let mut net = three_copies();
    // A key the leader (node 0) leads.
    let key = (0..1000)
        .map(|i| format!("l{i}"))
        .find(|k| copies_of(&net, k).0 == 0)
        .expect("a key the leader leads");
    assert!(matches!(
        net.call(0, 1, put(&key, "1")),
        Response::Written { .. }
    ));
    lose(&mut net, 1);
    lose(&mut net, 2);
    pass(&mut net, 500);
    let p = usize::from(net.nodes[0].partition_of(key.as_bytes()));
    let r = net.nodes[0].cluster().replicas[p].clone();
    assert!(r.backups.is_empty(), "{r:?}");
    let read = |net: &Net| net.nodes[0].reader().read(net.now, get(&key));
    assert!(
        matches!(read(&net), Response::Value { .. }),
        "alone, and connected: it serves reads"
    );
    net.input(0, Input::Coordinator(CoordEvent::Disconnected));
    assert!(
        matches!(read(&net), Response::Error { .. }),
        "cut off from the coordinator: no reads"
    );
    #[cfg(feature = "bugs")]
    {
        crate::bugs::enable(crate::bugs::Bug::LoneLeaseWithoutCoordinator);
        net.input(0, Input::Timeout);
        pass(&mut net, 200);
        let served = matches!(read(&net), Response::Value { .. });
        crate::bugs::clear();
        assert!(served, "the test sees the bug");
    }
    net.input(0, Input::Coordinator(CoordEvent::Connected));
    pass(&mut net, 200);
    assert!(
        matches!(read(&net), Response::Value { .. }),
        "connected again (the same session): reads again"
    );
    // A session that expired: no reads until the state is seen again.
    net.input(0, Input::Coordinator(CoordEvent::Expired));
    net.input(0, Input::Coordinator(CoordEvent::Connected));
    pass(&mut net, 200);
    assert!(matches!(read(&net), Response::Error { .. }));
}

/// The log keeps every entry after the commit point, however few entries it keeps otherwise:
/// a replica may have to undo them, and a learner's copy (based at the commit point) needs
/// them. Trimming by count alone left a primary held below `min_insync_replicas` without the
/// entries after its commit point, and no learner could ever be copied its partition
/// (replicated seed 610).
#[test]
fn the_log_keeps_every_entry_after_the_commit_point() {
    let mut net = Net::replicated_retaining(&["a", "b", "c"], 8, 3, 2, 2);
    net.input(0, Input::Coordinator(CoordEvent::Elected));
    pass(&mut net, replica::LEASE_MS);
    let (key, primary, backups) = key_not_led_by_the_leader(&net);
    let p = net.nodes[0].partition_of(key.as_bytes());
    let entry = |net: &Net, lsn: u64| {
        net.node(primary)
            .db()
            .get_latest(&crate::proto::replog::log_key(p, lsn))
            .ok()
            .flatten()
            .is_some()
    };
    for b in &backups {
        net.down.insert(*b);
    }
    for id in 1..=5 {
        net.deliver(
            primary,
            Input::Client {
                id,
                request: put(&key, &format!("v{id}")),
            },
        );
        net.run();
    }
    pass(&mut net, 300);
    let last = net.node(primary).repl.position(p).lsn;
    assert!(last >= 5, "five entries written, the log ends at {last}");
    assert!(
        !net.replies.iter().any(|(_, id, _)| (1..=5).contains(id)),
        "nothing can commit with both backups gone"
    );
    for lsn in 1..=last {
        assert!(
            entry(&net, lsn),
            "entry {lsn} of {last} (none committed) was trimmed"
        );
    }
    // Back in touch: everything commits, and trimming by count goes on.
    net.down.clear();
    pass(&mut net, 2 * replica::RESEND_MS);
    for id in 6..=8 {
        net.deliver(
            primary,
            Input::Client {
                id,
                request: put(&key, &format!("v{id}")),
            },
        );
        net.run();
        pass(&mut net, 200);
    }
    assert!(
        net.replies.iter().any(|(_, id, _)| *id == 8),
        "the last write was answered"
    );
    let last = net.node(primary).repl.position(p).lsn;
    assert!(
        !entry(&net, 1),
        "entry 1 is still there after the commit point passed it"
    );
    assert!(entry(&net, last) && entry(&net, last - 1));
}
