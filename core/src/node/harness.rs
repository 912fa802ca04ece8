//! The one driver loop of the node's test harnesses: a small cluster in one thread.
//!
//! [`Net`] holds the nodes (each on its own [`SimDisk`] engine with `Background::Manual` and
//! `StallPolicy::Refuse`), a FIFO queue of pending [`Work`], and a [`StateStore`] as the
//! coordinator. [`Net::deliver`] hands one input to one node and carries out its outputs the
//! way a driver would, except that every piece of work a driver would start (a persist, a
//! background step, a message on the wire, a state write) is queued rather than done at once;
//! [`Net::process`] does one queued item, and [`Net::run`] does them all, in order, until
//! nothing is pending and no node has a deadline that is due.
//!
//! Two modes. [`Mode::Auto`]: [`Net::input`] delivers and runs until quiet (the unit tests in
//! `tests.rs`). [`Mode::Step`]: [`Net::input`] only delivers, and every output and every item
//! done is printed into [`Net::log`], so a transcript (`transcript.rs`) shows the exact order of
//! events and chooses what happens next.
//!
//! What is printed:
//!
//! | line | meaning |
//! |---|---|
//! | `a reply 7: Written{version=1000.0}` | node `a` answers its client request 7 |
//! | `a -> b: Forward{...}` | node `a` sends a peer message (queued until delivered) |
//! | `a -> coord: WriteState{...}` | node `a` asks the coordinator for a state write (queued) |
//! | `a: Persist`, `a: Background` | node `a` asks for a persist / background work (queued) |
//! | `> ...` | one queued item being done; what the node does in answer is indented below it |
//!
//! Versions print as `ms.counter` (`1000.2` is `(1000 << 10) | 2`): the node's version clock is
//! the wall clock shifted left by ten bits, so versions show the time they were given at.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use super::exec::VERSION_COUNTER_BITS;
use super::{Input, Node, NodeConfig, Output};
use crate::cluster::{ClusterState, CoordCommand, CoordEvent, Member, StateStore};
use crate::proto::envelope;
use crate::proto::peer::PeerMessage;
use crate::proto::{BatchOp, Condition, Request, Response};
use crate::{Background, Db, Options, SimDisk, StallPolicy};

/// Items done in one [`Net::run`] before it gives up on the cluster going quiet.
const MAX_STEPS: usize = 1_000_000;

/// The engine options every harness node uses: no engine threads (the node asks for its
/// background work), stalled writes refused rather than blocked, `sync = always`.
pub(super) fn engine_options() -> Options {
    Options {
        background: Background::Manual,
        stall: StallPolicy::Refuse,
        ..Options::default()
    }
}

/// An engine on a fresh simulated disk.
pub(super) fn open_engine(opts: Options) -> Arc<Db> {
    Arc::new(Db::open(Arc::new(SimDisk::new()), opts).expect("open an engine on a SimDisk"))
}

/// A member entry as the harness's coordinator reports it.
pub(super) fn member(id: &str) -> Member {
    Member {
        disk: 0,
        id: id.to_string(),
        http: String::new(),
        peer: String::new(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// `input` runs until quiet; nothing is printed.
    Auto,
    /// `input` only delivers; everything is printed into `log`.
    Step,
}

/// Something a driver would do, pending.
#[derive(Debug)]
pub(super) enum Work {
    /// A peer message on the wire.
    Peer {
        from: usize,
        to: usize,
        message: PeerMessage,
    },
    /// An event the coordinator is about to tell node `to`.
    Coord { to: usize, event: CoordEvent },
    /// A state write node `from` asked the coordinator for, not carried out yet.
    WriteState {
        from: usize,
        state: ClusterState,
        expected: i64,
    },
    /// A persist node `node` asked for, not run yet.
    Persist { node: usize },
    /// Background work node `node` asked for, not run yet.
    Background { node: usize },
}

impl Work {
    /// Whether this item is coordinator traffic (a state write or an event).
    pub(super) fn is_coord(&self) -> bool {
        matches!(self, Work::Coord { .. } | Work::WriteState { .. })
    }
}

/// A small cluster in one thread. `N` holds the nodes: a `Vec` for a cluster the harness
/// builds, or a borrowed slice for driving a node a test made itself.
pub(super) struct Net<N = Vec<Node>> {
    pub(super) nodes: N,
    pub(super) store: StateStore<ClusterState>,
    pub(super) queue: VecDeque<Work>,
    /// Every client reply, as (node, request id, response).
    pub(super) replies: Vec<(usize, u64, Response)>,
    /// The wall clock every input is handed, in milliseconds.
    pub(super) now: u64,
    pub(super) mode: Mode,
    /// What happened, line by line (`Mode::Step` only).
    pub(super) log: Vec<String>,
    /// Nodes whose coordinator session lags: [`run`](Self::run) leaves the events the
    /// coordinator has for them queued (they can still be delivered one by one).
    pub(super) held: BTreeSet<usize>,
    /// Nodes that are gone (crashed, cut off): messages to and from them are dropped.
    pub(super) down: BTreeSet<usize>,
    /// Printed before each output line: indented under the item being done.
    indent: &'static str,
    /// Partitions of the nodes this net creates.
    partitions: u16,
    /// Copies of each partition a cluster this net creates places (and the in-sync minimum).
    replication: (usize, usize),
    /// Log entries each replicated partition keeps on the nodes this net creates.
    pub(super) log_retain: u64,
}

impl Net {
    /// Nodes `ids`, 16 partitions, each connected with every member and no state yet; run
    /// until quiet. Nobody is elected.
    pub(super) fn new(ids: &[&str]) -> Net {
        Net::with(ids, 16, Mode::Auto)
    }

    /// Like [`Net::new`], with `partitions` partitions, in `mode` (in `Mode::Step`, the setup
    /// is printed and its work left pending).
    pub(super) fn with(ids: &[&str], partitions: u16, mode: Mode) -> Net {
        let mut net = Net::bare(Vec::new(), 1_000, mode);
        net.partitions = partitions;
        for id in ids {
            net.add_node(id);
        }
        let members: Vec<Member> = ids.iter().map(|id| member(id)).collect();
        for i in 0..ids.len() {
            net.announce(i, CoordEvent::Connected);
            net.announce(i, CoordEvent::Members(members.clone()));
            let none = CoordEvent::State {
                state: None,
                stamp: -1,
            };
            net.announce(i, none);
        }
        net
    }

    /// Like [`Net::with`] in `Mode::Auto`, for a cluster that places `replication_factor`
    /// copies of each partition and takes writes with `min_insync` of them in sync.
    pub(super) fn replicated(
        ids: &[&str],
        partitions: u16,
        replication_factor: usize,
        min_insync: usize,
    ) -> Net {
        let retain = crate::proto::replog::LOG_RETAIN;
        Net::replicated_retaining(ids, partitions, replication_factor, min_insync, retain)
    }

    /// Like [`Net::replicated`], each partition's log keeping `log_retain` entries.
    pub(super) fn replicated_retaining(
        ids: &[&str],
        partitions: u16,
        replication_factor: usize,
        min_insync: usize,
        log_retain: u64,
    ) -> Net {
        let mut net = Net::bare(Vec::new(), 1_000, Mode::Auto);
        net.partitions = partitions;
        net.replication = (replication_factor, min_insync);
        net.log_retain = log_retain;
        let members: Vec<Member> = ids.iter().map(|id| member(id)).collect();
        for id in ids {
            net.add_node(id);
        }
        for i in 0..ids.len() {
            net.announce(i, CoordEvent::Connected);
            net.announce(i, CoordEvent::Members(members.clone()));
            let none = CoordEvent::State {
                state: None,
                stamp: -1,
            };
            net.announce(i, none);
        }
        net
    }

    /// One node that is a cluster of one from the start (`Node::new`: no coordinator).
    pub(super) fn single(node: Node, mode: Mode) -> Net {
        let mut net = Net::bare(vec![node], 1_000, mode);
        net.partitions = net.nodes[0].cfg.partitions;
        net
    }

    /// A clustered node (`Node::new_clustered`) on a fresh engine; nothing delivered yet.
    pub(super) fn add_node(&mut self, id: &str) {
        let n = self.fresh_node(id);
        self.nodes.push(n);
    }

    fn fresh_node(&self, id: &str) -> Node {
        Node::new_clustered(
            open_engine(engine_options()),
            NodeConfig {
                node_id: id.to_string(),
                partitions: self.partitions,
                replication_factor: self.replication.0,
                min_insync_replicas: self.replication.1,
                log_retain: self.log_retain,
                ..NodeConfig::default()
            },
        )
    }

    /// Node `i` comes back on an empty disk (its old one lost for good), under the same id:
    /// it connects, sees the state, and every node sees it among the members.
    pub(super) fn wipe(&mut self, i: usize) {
        let id = self.name(i);
        self.nodes[i] = self.fresh_node(&id);
        self.down.remove(&i);
        self.announce(i, CoordEvent::Connected);
        let st = self.store.state_event();
        self.announce(i, st);
        let ms = self.members();
        for j in 0..self.nodes.len() {
            self.announce(j, CoordEvent::Members(ms.clone()));
        }
    }

    /// A new node joins: it connects and sees the state; then every node sees the new
    /// member list.
    pub(super) fn join(&mut self, id: &str) {
        self.add_node(id);
        let i = self.nodes.len() - 1;
        self.announce(i, CoordEvent::Connected);
        let st = self.store.state_event();
        self.announce(i, st);
        let ms = self.members();
        for j in 0..self.nodes.len() {
            self.announce(j, CoordEvent::Members(ms.clone()));
        }
    }
}

impl<'a> Net<&'a mut [Node]> {
    /// Drives nodes a test made itself, in `Mode::Auto`, at wall clock `now`.
    pub(super) fn over(nodes: &'a mut [Node], now: u64) -> Net<&'a mut [Node]> {
        Net::bare(nodes, now, Mode::Auto)
    }
}

impl<N: AsRef<[Node]> + AsMut<[Node]>> Net<N> {
    fn bare(nodes: N, now: u64, mode: Mode) -> Net<N> {
        Net {
            nodes,
            store: StateStore::new(),
            queue: VecDeque::new(),
            replies: Vec::new(),
            now,
            mode,
            log: Vec::new(),
            held: BTreeSet::new(),
            down: BTreeSet::new(),
            indent: "",
            partitions: 16,
            replication: (1, 1),
            log_retain: crate::proto::replog::LOG_RETAIN,
        }
    }

    pub(super) fn node(&self, i: usize) -> &Node {
        &self.nodes.as_ref()[i]
    }

    pub(super) fn len(&self) -> usize {
        self.nodes.as_ref().len()
    }

    /// The node called `id` (a test bug if there is none).
    pub(super) fn index(&self, id: &str) -> usize {
        self.find(id)
            .unwrap_or_else(|| panic!("no node called {id:?} in this net"))
    }

    pub(super) fn find(&self, id: &str) -> Option<usize> {
        self.nodes.as_ref().iter().position(|n| n.cfg.node_id == id)
    }

    pub(super) fn name(&self, i: usize) -> String {
        self.node(i).cfg.node_id.clone()
    }

    /// Every node, as the coordinator lists live members.
    pub(super) fn members(&self) -> Vec<Member> {
        self.nodes
            .as_ref()
            .iter()
            .map(|n| member(&n.cfg.node_id))
            .collect()
    }

    fn printing(&self) -> bool {
        self.mode == Mode::Step
    }

    /// An output line (indented under the item being done, if any).
    fn say(&mut self, line: impl FnOnce(&Self) -> String) {
        if self.printing() {
            let l = format!("{}{}", self.indent, line(self));
            self.log.push(l);
        }
    }

    /// The line that heads an item being done.
    fn head(&mut self, line: impl FnOnce(&Self) -> String) {
        if self.printing() {
            let l = format!("> {}", line(self));
            self.log.push(l);
        }
    }

    /// Takes what was printed since the last call.
    pub(super) fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// Hands `input` to node `i` and carries out its outputs: replies are recorded, all other
    /// work is queued.
    pub(super) fn deliver(&mut self, i: usize, input: Input) {
        let mut out = Vec::new();
        let now = self.now;
        self.nodes.as_mut()[i].handle(now, input, &mut out);
        for o in out {
            self.carry_out(i, o);
        }
    }

    fn carry_out(&mut self, i: usize, o: Output) {
        self.say(|net| show_output(&net.name(i), &o));
        match o {
            Output::Reply { id, response } => self.replies.push((i, id, response)),
            Output::Persist => self.queue.push_back(Work::Persist { node: i }),
            Output::Background => self.queue.push_back(Work::Background { node: i }),
            Output::Send { to, message } => {
                let to = self.index(&to);
                self.queue.push_back(Work::Peer {
                    from: i,
                    to,
                    message,
                });
            }
            Output::Coordinator(CoordCommand::WriteState { state, expected }) => {
                self.queue.push_back(Work::WriteState {
                    from: i,
                    state,
                    expected,
                })
            }
        }
    }

    /// Hands `input` to node `i`; in `Mode::Auto`, then runs until quiet.
    pub(super) fn input(&mut self, i: usize, input: Input) {
        self.deliver(i, input);
        if self.mode == Mode::Auto {
            self.run();
        }
    }

    /// The coordinator tells node `i` something, now (printed as an item of its own).
    pub(super) fn announce(&mut self, i: usize, event: CoordEvent) {
        let head = if self.printing() {
            format!("coord -> {}: {}", self.name(i), show_event(&event))
        } else {
            String::new()
        };
        self.input_headed(i, head, Input::Coordinator(event));
    }

    /// [`input`](Self::input), printed as an item of its own headed by `head`.
    pub(super) fn input_headed(&mut self, i: usize, head: String, input: Input) {
        self.head(|_| head);
        self.indent = "  ";
        self.input(i, input);
        self.indent = "";
    }

    /// Does one queued item: delivers a message or an event, carries out a state write, runs
    /// a persist or background work and reports its end to the node.
    pub(super) fn process(&mut self, w: Work) {
        match w {
            Work::Peer { from, to, .. } if self.down.contains(&from) || self.down.contains(&to) => {
            }
            Work::Peer { from, to, message } => {
                self.head(|net| {
                    format!(
                        "{} -> {}: {}",
                        net.name(from),
                        net.name(to),
                        show_message(&message)
                    )
                });
                self.indent = "  ";
                let from = self.name(from);
                self.deliver(to, Input::Peer { from, message });
            }
            Work::Coord { to, .. } if self.down.contains(&to) => {}
            Work::WriteState { from, .. } if self.down.contains(&from) => {}
            Work::Coord { to, event } => {
                self.head(|net| format!("coord -> {}: {}", net.name(to), show_event(&event)));
                self.indent = "  ";
                self.deliver(to, Input::Coordinator(event));
            }
            Work::WriteState {
                from,
                state,
                expected,
            } => {
                let version = state.version;
                let ok = self.store.write(state, expected);
                let stamp = self.store.stamp();
                self.head(|net| {
                    let outcome = if ok {
                        format!("written, stamp now {stamp}")
                    } else {
                        format!("refused, the stamp is {stamp}")
                    };
                    format!(
                        "coord: WriteState from {} (expected={expected} version={version}): \
                         {outcome}",
                        net.name(from)
                    )
                });
                self.indent = "  ";
                let mut events = vec![(from, StateStore::<ClusterState>::write_done(ok))];
                if ok {
                    for j in 0..self.len() {
                        events.push((j, self.store.state_event()));
                    }
                }
                for (to, event) in events {
                    self.say(|net| format!("coord -> {}: {}", net.name(to), show_event(&event)));
                    self.queue.push_back(Work::Coord { to, event });
                }
            }
            Work::Persist { node } => match self.node(node).db().persist() {
                Ok(upto) => {
                    self.head(|net| format!("{}: persist ok upto={upto}", net.name(node)));
                    self.indent = "  ";
                    self.deliver(node, Input::Persisted { upto });
                }
                Err(e) => {
                    let message = e.to_string();
                    self.head(|net| format!("{}: persist failed: {message}", net.name(node)));
                    self.indent = "  ";
                    self.deliver(node, Input::PersistFailed { message });
                }
            },
            Work::Background { node } => {
                let result = self
                    .node(node)
                    .db()
                    .do_background_work()
                    .map_err(|e| e.to_string());
                self.head(|net| match &result {
                    Ok(units) => format!("{}: background ok units={units}", net.name(node)),
                    Err(e) => format!("{}: background failed: {e}", net.name(node)),
                });
                self.indent = "  ";
                self.deliver(node, Input::BackgroundDone { result });
            }
        }
        self.indent = "";
    }

    /// Removes the first queued item `pick` accepts.
    pub(super) fn take(&mut self, pick: impl Fn(&Work) -> bool) -> Option<Work> {
        let at = self.queue.iter().position(pick)?;
        self.queue.remove(at)
    }

    /// Fails node `i`'s oldest pending persist with `message` instead of running it; `false`
    /// if none is pending.
    pub(super) fn fail_persist(&mut self, i: usize, message: &str) -> bool {
        if self
            .take(|w| matches!(w, Work::Persist { node } if *node == i))
            .is_none()
        {
            return false;
        }
        self.head(|net| format!("{}: persist failed: {message}", net.name(i)));
        self.indent = "  ";
        let message = message.to_string();
        self.deliver(i, Input::PersistFailed { message });
        self.indent = "";
        true
    }

    /// A node whose deadline is due (a driver would wake it with `Timeout`).
    fn due(&self) -> Option<usize> {
        (0..self.len()).find(|&i| {
            !self.down.contains(&i) && self.node(i).next_deadline().is_some_and(|d| d <= self.now)
        })
    }

    /// Gives node `i` a `Timeout` because its deadline is due.
    fn wake(&mut self, i: usize) {
        self.head(|net| format!("{}: Timeout (a deadline is due)", net.name(i)));
        self.indent = "  ";
        self.deliver(i, Input::Timeout);
        self.indent = "";
    }

    /// Does queued items in order, and wakes nodes whose deadline is due, until there is
    /// neither (events for [`held`](Self::held) nodes stay queued). The clock does not move.
    pub(super) fn run(&mut self) {
        for _ in 0..MAX_STEPS {
            let held = |w: &Work| matches!(w, Work::Coord { to, .. } if self.held.contains(to));
            if let Some(at) = self.queue.iter().position(|w| !held(w)) {
                let w = self
                    .queue
                    .remove(at)
                    .expect("an item at a position just found");
                self.process(w);
            } else if let Some(i) = self.due() {
                self.wake(i);
            } else {
                return;
            }
        }
        panic!("the cluster never went quiet");
    }

    /// Time passes: every node gets timeouts until nothing is due.
    pub(super) fn settle(&mut self) {
        for _ in 0..200 {
            self.now += 100;
            for j in 0..self.len() {
                self.input(j, Input::Timeout);
            }
        }
    }

    /// Sends client request `id` to node `i`, runs until quiet (`Mode::Auto`) and returns its
    /// reply.
    pub(super) fn call(&mut self, i: usize, id: u64, request: Request) -> Response {
        assert_eq!(self.mode, Mode::Auto, "call runs until quiet");
        self.input(i, Input::Client { id, request });
        let at = self
            .replies
            .iter()
            .position(|(n, r, _)| *n == i && *r == id)
            .unwrap_or_else(|| panic!("no reply to request {id} at node {i}"));
        self.replies.remove(at).2
    }

    /// Every key node `i` serves reads of right now (durable writes), as
    /// `(partition, user key, value as stored)`.
    pub(super) fn visible_keys(&self, i: usize) -> Vec<(u16, Vec<u8>, Vec<u8>)> {
        let it = self
            .node(i)
            .db()
            .scan(Bound::Unbounded, Bound::Unbounded)
            .expect("scan a SimDisk engine");
        it.map(|kv| {
            let (k, v) = kv.expect("read a SimDisk engine");
            let p = match k.as_slice() {
                [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                _ => u16::MAX,
            };
            (p, envelope::user_key(&k).to_vec(), v)
        })
        // Replication's own keys (positions, logs) live under the reserved partition.
        .filter(|(p, _, _)| *p != u16::MAX)
        .collect()
    }

    /// One queued item, as `pending` prints it.
    pub(super) fn show_work(&self, w: &Work) -> String {
        match w {
            Work::Peer { from, to, message } => format!(
                "{} -> {}: {}",
                self.name(*from),
                self.name(*to),
                show_message(message)
            ),
            Work::Coord { to, event } => {
                format!("coord -> {}: {}", self.name(*to), show_event(event))
            }
            Work::WriteState {
                from,
                state,
                expected,
            } => format!(
                "{} -> coord: WriteState{{expected={expected} {}}}",
                self.name(*from),
                show_state(state)
            ),
            Work::Persist { node } => format!("{}: Persist", self.name(*node)),
            Work::Background { node } => format!("{}: Background", self.name(*node)),
        }
    }
}

// ---- printing

/// Bytes as text when they are plain printable ASCII, else hex.
pub(super) fn show_bytes(b: &[u8]) -> String {
    if b.is_empty() {
        "\"\"".into()
    } else if b.iter().all(|c| c.is_ascii_graphic()) {
        String::from_utf8_lossy(b).into_owned()
    } else {
        let hex: String = b.iter().map(|c| format!("{c:02x}")).collect();
        format!("0x{hex}")
    }
}

fn show_opt_bytes(b: &Option<Vec<u8>>) -> String {
    b.as_deref().map_or_else(|| "-".into(), show_bytes)
}

/// A version as `ms.counter`.
pub(super) fn show_version(v: u64) -> String {
    format!(
        "{}.{}",
        v >> VERSION_COUNTER_BITS,
        v & ((1 << VERSION_COUNTER_BITS) - 1)
    )
}

/// Parses what [`show_version`] prints (or a plain number).
pub(super) fn parse_version(s: &str) -> Option<u64> {
    match s.split_once('.') {
        Some((ms, c)) => {
            let ms: u64 = ms.parse().ok()?;
            let c: u64 = c.parse().ok()?;
            (c < 1 << VERSION_COUNTER_BITS).then_some((ms << VERSION_COUNTER_BITS) | c)
        }
        None => s.parse().ok(),
    }
}

fn show_cond(c: &Condition) -> String {
    match c {
        Condition::None => String::new(),
        Condition::IfMatch(v) => format!(" if-match={}", show_version(*v)),
        Condition::IfAbsent => " if-absent".into(),
        Condition::IfExists => " if-exists".into(),
    }
}

/// A request in the transcripts' own syntax (`put k v if-absent`).
pub(super) fn show_request(r: &Request) -> String {
    match r {
        Request::Get { key } => format!("get {}", show_bytes(key)),
        Request::Put { key, value, cond } => format!(
            "put {} {}{}",
            show_bytes(key),
            show_bytes(value),
            show_cond(cond)
        ),
        Request::Delete { key, cond } => format!("delete {}{}", show_bytes(key), show_cond(cond)),
        Request::Incr { key, by } => format!("incr {} {by}", show_bytes(key)),
        Request::Batch { ops } => {
            let ops: Vec<String> = ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put(k, v) => format!("put:{}={}", show_bytes(k), show_bytes(v)),
                    BatchOp::Delete(k) => format!("delete:{}", show_bytes(k)),
                    BatchOp::PutIfAbsent(k, v) => {
                        format!("put-if-absent:{}={}", show_bytes(k), show_bytes(v))
                    }
                })
                .collect();
            format!("batch {}", ops.join(" "))
        }
        Request::Scan {
            start,
            end,
            after,
            limit,
        } => format!(
            "scan start={} end={} after={} limit={limit}",
            show_bytes(start),
            show_opt_bytes(end),
            show_opt_bytes(after)
        ),
    }
}

pub(super) fn show_response(r: &Response) -> String {
    match r {
        Response::Value {
            value,
            version,
            created_ms,
            modified_ms,
        } => format!(
            "Value{{value={} version={} created={created_ms} modified={modified_ms}}}",
            show_bytes(value),
            show_version(*version)
        ),
        Response::NotFound => "NotFound".into(),
        Response::Written { version } => format!("Written{{version={}}}", show_version(*version)),
        Response::Deleted { version } => format!("Deleted{{version={}}}", show_version(*version)),
        Response::PreconditionFailed { current } => format!(
            "PreconditionFailed{{current={}}}",
            current.map_or_else(|| "-".into(), show_version)
        ),
        Response::Accepted => "Accepted".into(),
        Response::Page { items, next_after } => {
            let items: Vec<String> = items
                .iter()
                .map(|i| {
                    format!(
                        "{}={}@{}",
                        show_bytes(&i.key),
                        show_bytes(&i.value),
                        show_version(i.version)
                    )
                })
                .collect();
            format!(
                "Page{{items=[{}] next_after={}}}",
                items.join(" "),
                show_opt_bytes(next_after)
            )
        }
        Response::Error { kind, message } => format!("Error{{{}: {message}}}", kind.as_str()),
    }
}

/// A stored (enveloped) value as its user value.
fn show_stored(raw: &[u8]) -> String {
    match envelope::decode_value(raw.to_vec()) {
        Ok(s) => format!(
            "{}@{}",
            show_bytes(&s.value),
            s.version.map_or_else(|| "?".into(), show_version)
        ),
        Err(_) => format!("<bad envelope {}>", show_bytes(raw)),
    }
}

/// At most this many items of a page or a tail are listed one by one.
const LIST_ITEMS: usize = 8;

fn show_items(items: Vec<String>) -> String {
    let n = items.len();
    if n <= LIST_ITEMS {
        format!("{n}[{}]", items.join(" "))
    } else {
        format!("{n}[{} .. {}]", items[..3].join(" "), items[n - 1])
    }
}

pub(super) fn show_message(m: &PeerMessage) -> String {
    match m {
        PeerMessage::Hello {
            version,
            from,
            cluster,
        } => format!("Hello{{version={version} from={from} cluster={cluster}}}"),
        PeerMessage::Forward {
            id,
            map_version,
            request,
        } => format!(
            "Forward{{id={id} map={map_version} {}}}",
            show_request(request)
        ),
        PeerMessage::Reply { id, response } => {
            format!("Reply{{id={id} {}}}", show_response(response))
        }
        PeerMessage::NotOwner { id, map_version } => {
            format!("NotOwner{{id={id} map={map_version}}}")
        }
        PeerMessage::ScanParts {
            id,
            map_version,
            partitions,
            start,
            end,
            after,
            limit,
        } => format!(
            "ScanParts{{id={id} map={map_version} parts={partitions:?} start={} end={} after={} \
             limit={limit}}}",
            show_bytes(start),
            show_opt_bytes(end),
            show_opt_bytes(after)
        ),
        PeerMessage::FetchPart {
            id,
            partition,
            after,
            limit,
        } => format!(
            "FetchPart{{id={id} p={partition} after={} limit={limit}}}",
            show_opt_bytes(after)
        ),
        PeerMessage::PartPage {
            id,
            partition,
            items,
            done,
        } => {
            let items = items
                .iter()
                .map(|(k, v)| format!("{}={}", show_bytes(k), show_stored(v)))
                .collect();
            format!(
                "PartPage{{id={id} p={partition} items={} done={done}}}",
                show_items(items)
            )
        }
        PeerMessage::FreezePart { id, partition } => {
            format!("FreezePart{{id={id} p={partition}}}")
        }
        PeerMessage::PartTail {
            id,
            partition,
            items,
        } => {
            let items = items
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{}={}", show_bytes(k), show_stored(v)),
                    None => format!("{}=<deleted>", show_bytes(k)),
                })
                .collect();
            format!(
                "PartTail{{id={id} p={partition} items={}}}",
                show_items(items)
            )
        }
        PeerMessage::PartRefused {
            id,
            partition,
            reason,
        } => format!("PartRefused{{id={id} p={partition} reason={reason:?}}}"),
        PeerMessage::MoveReady { partition } => format!("MoveReady{{p={partition}}}"),
        PeerMessage::Decommission { node } => format!("Decommission{{node={node}}}"),
        PeerMessage::Replicate {
            partition,
            epoch,
            commit,
            prev_lsn,
            prev_epoch,
            sent_at: _,
            entries,
        } => {
            let entries = entries
                .iter()
                .map(|e| {
                    let ops: Vec<String> = e
                        .ops
                        .iter()
                        .map(|(k, v)| match v {
                            Some(v) => format!("{}={}", show_bytes(k), show_stored(v)),
                            None => format!("{}=<deleted>", show_bytes(k)),
                        })
                        .collect();
                    format!("{}@{}({})", e.lsn, e.epoch, ops.join(" "))
                })
                .collect();
            format!(
                "Replicate{{p={partition} epoch={epoch} commit={commit} \
                 prev={prev_lsn}@{prev_epoch} entries={}}}",
                show_items(entries)
            )
        }
        PeerMessage::ReplicaAck {
            partition,
            epoch,
            applied,
            gap,
            lease_from: _,
        } => format!("ReplicaAck{{p={partition} epoch={epoch} applied={applied} gap={gap}}}"),
        PeerMessage::PositionQuery { id, partitions } => {
            format!("PositionQuery{{id={id} parts={partitions:?}}}")
        }
        PeerMessage::Positions { id, items } => format!("Positions{{id={id} {items:?}}}"),
        PeerMessage::ReplicaLagging {
            partition,
            epoch,
            node,
        } => format!("ReplicaLagging{{p={partition} epoch={epoch} node={node}}}"),
        PeerMessage::LearnerReady {
            partition,
            epoch,
            node,
        } => format!("LearnerReady{{p={partition} epoch={epoch} node={node}}}"),
        PeerMessage::CopyPage {
            partition,
            epoch,
            base,
            after,
            items,
            done,
            ..
        } => format!(
            "CopyPage{{p={partition} epoch={epoch} base={base} after={} items={} done={done}}}",
            show_opt_bytes(after),
            items.len()
        ),
        PeerMessage::CopyAck {
            partition,
            epoch,
            base,
            last,
        } => format!(
            "CopyAck{{p={partition} epoch={epoch} base={base} last={}}}",
            show_opt_bytes(last)
        ),
    }
}

/// A partition map in one line.
pub(super) fn show_state(s: &ClusterState) -> String {
    let mut line = format!(
        "epoch={} version={} leader={} owners=[{}]",
        s.epoch,
        s.version,
        s.leader,
        s.owners.join(" ")
    );
    if !s.moving.is_empty() {
        let moving: Vec<String> = s
            .moving
            .iter()
            .map(|(p, to)| format!("{p}->{to}"))
            .collect();
        line.push_str(&format!(" moving={{{}}}", moving.join(" ")));
    }
    if !s.leaving.is_empty() {
        line.push_str(&format!(" leaving=[{}]", s.leaving.join(" ")));
    }
    line
}

pub(super) fn show_event(e: &CoordEvent) -> String {
    match e {
        CoordEvent::Connected => "Connected".into(),
        CoordEvent::Disconnected => "Disconnected".into(),
        CoordEvent::Expired => "Expired".into(),
        CoordEvent::Elected => "Elected".into(),
        CoordEvent::Members(ms) => {
            let ids: Vec<&str> = ms.iter().map(|m| m.id.as_str()).collect();
            format!("Members[{}]", ids.join(" "))
        }
        CoordEvent::State { state: None, stamp } => format!("State{{stamp={stamp} none}}"),
        CoordEvent::State {
            state: Some(s),
            stamp,
        } => format!(
            "State{{stamp={stamp} version={} epoch={} leader={}}}",
            s.version, s.epoch, s.leader
        ),
        CoordEvent::WriteDone { ok: true, .. } => "WriteDone{ok}".into(),
        CoordEvent::WriteDone { ok: false, message } => format!("WriteDone{{refused: {message}}}"),
    }
}

/// One output of node `from`.
pub(super) fn show_output(from: &str, o: &Output) -> String {
    match o {
        Output::Reply { id, response } => format!("{from} reply {id}: {}", show_response(response)),
        Output::Send { to, message } => format!("{from} -> {to}: {}", show_message(message)),
        Output::Coordinator(CoordCommand::WriteState { state, expected }) => format!(
            "{from} -> coord: WriteState{{expected={expected} {}}}",
            show_state(state)
        ),
        Output::Persist => format!("{from}: Persist"),
        Output::Background => format!("{from}: Background"),
    }
}
