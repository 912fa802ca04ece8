//! Transcript tests, in the style of etcd raft's `testdata/*.txt`: every file in
//! `core/src/node/testdata/` is a script of commands, each followed by `----` and the output it
//! must print, as the harness ([`super::harness`]) prints it in `Mode::Step`:
//!
//! ```text
//! # A comment (kept by the rewrite).
//! client a 1 put k v
//! ----
//! a: Persist
//! ```
//!
//! A block ends at a blank line. A command that prints nothing expects `(no output)`.
//!
//! Run: `cargo test -p corecache-core --lib transcript`. Only some files:
//! `CORECACHE_TRANSCRIPT=forward` (a part of the file name). Accept new output:
//! `CORECACHE_REWRITE=1 cargo test -p corecache-core --lib transcript` rewrites every golden in
//! place (comments and commands stay as they are); read the diff before committing it.
//!
//! # Commands
//!
//! Setting up (each starts a fresh cluster, clock at 1000 ms):
//! - `nodes a b c [partitions=N]`: clustered nodes (`Node::new_clustered`, 16 partitions unless
//!   told), each told `Connected`, the members, and that no state exists yet. Nobody leads.
//! - `node a [partitions=N] [sync=always|none|interval:MS]`: one node that is a cluster of one
//!   (`Node::new`: leader, owner of everything, no coordinator).
//!
//! Inputs handed to a node now (their outputs print unindented; the work they ask for queues):
//! - `client <node> <id> put <key> <value> [if-match=<version>|if-absent|if-exists]`
//! - `client <node> <id> get|delete <key> [condition]`, `client <node> <id> incr <key> <by>`
//! - `client <node> <id> batch put:<k>=<v> delete:<k> put-if-absent:<k>=<v> ...`
//! - `client <node> <id> scan [prefix=P | start=S end=E] [after=K] [limit=N]`
//! - `admin <node> <id> decommission <target>`
//! - `connected|disconnected|expired|elected <node>`; `members <node|all> <id>...`;
//!   `state <node|all>` (the coordinator's current state)
//! - `timeout <node|all> <ms>`: the clock moves on by `ms`, then the node(s) get `Timeout`
//! - `peer-down <node> <peer>`: the connection from `node` to `peer` failed
//! - `join <node>`: a new node connects, sees the state, and every node sees the new members
//!
//! Queued work, done one item at a time (each item prints a `> ` line, what the node does in
//! answer indented below it):
//! - `peer [from=X] [to=Y] [all]`: the next peer message (that matches); `all`: until none
//!   matches any more
//! - `drop [from=X] [to=Y]`: the next matching peer message is lost
//! - `coord [node] [all]`: the next coordinator item (a state write from, or an event to, the
//!   node)
//! - `persist <node>`: the node's oldest pending persist runs (`Db::persist`), then `Persisted`
//! - `persist-fail <node> [message]`: that persist fails instead (`PersistFailed`)
//! - `background <node>`: the node's pending background work runs
//! - `stabilize`: everything queued, in order, and every `Timeout` that is due, until quiet
//! - `hold <node>` / `release <node>`: the node's coordinator session lags: `stabilize` leaves
//!   the events the coordinator has for it queued (`coord <node>` still delivers them)
//!
//! Looking (prints, changes nothing):
//! - `status [node...]`: role, map, hand-offs, waiting replies, forwards, parked requests
//! - `pending`: the queue; `store`: the coordinator's state; `where <key>...`: partition and
//!   owner; `keys <node>`: what the node serves reads of (durable writes only)
//! - `fill <node> <count> <prefix>`: writes `count` keys through `node`, run until quiet
//!   without printing (needs an empty queue), and prints how they were answered

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::harness::{
    engine_options, member, open_engine, parse_version, show_bytes, show_event, show_state, Mode,
    Net, Work,
};
use super::{Input, Node, NodeConfig};
use crate::cluster::CoordEvent;
use crate::proto::{AdminCommand, BatchOp, Condition, Request, Response};
use crate::SyncMode;

/// One command of a script, with the comment and blank lines before it.
struct Block {
    leading: Vec<String>,
    /// 1-based line number of the command.
    line: usize,
    command: String,
    expected: Vec<String>,
}

struct Script {
    blocks: Vec<Block>,
    trailing: Vec<String>,
}

fn parse(text: &str) -> Result<Script, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut leading = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim().is_empty() || l.starts_with('#') {
            leading.push(l.to_string());
            i += 1;
            continue;
        }
        let line = i + 1;
        if lines.get(i + 1).copied() != Some("----") {
            return Err(format!(
                "line {line}: `{l}` is not followed by a `----` line"
            ));
        }
        i += 2;
        let mut expected = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() {
            expected.push(lines[i].to_string());
            i += 1;
        }
        blocks.push(Block {
            leading: std::mem::take(&mut leading),
            line,
            command: l.to_string(),
            expected,
        });
    }
    Ok(Script {
        blocks,
        trailing: leading,
    })
}

fn render(script: &Script, outputs: &[Vec<String>]) -> String {
    let mut s = String::new();
    for (b, out) in script.blocks.iter().zip(outputs) {
        for l in &b.leading {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&b.command);
        s.push_str("\n----\n");
        for l in out {
            s.push_str(l);
            s.push('\n');
        }
    }
    for l in &script.trailing {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// A line diff of `want` and `got` (longest common subsequence): ` ` both, `-` only
/// expected, `+` only got.
fn diff(want: &[String], got: &[String]) -> String {
    let (n, m) = (want.len(), got.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if want[i] == got[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && want[i] == got[j] {
            out.push_str(&format!("  {}\n", want[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", want[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", got[j]));
            j += 1;
        }
    }
    out
}

/// Options of the form `name=value` among `args`, and the other words.
fn split_opts<'a>(args: &[&'a str]) -> (Vec<&'a str>, BTreeMap<&'a str, &'a str>) {
    let mut words = Vec::new();
    let mut opts = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) => {
                opts.insert(k, v);
            }
            None => words.push(*a),
        }
    }
    (words, opts)
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{what}: `{s}` is not a number"))
}

fn cond(words: &[&str]) -> Result<Condition, String> {
    match words {
        [] => Ok(Condition::None),
        ["if-absent"] => Ok(Condition::IfAbsent),
        ["if-exists"] => Ok(Condition::IfExists),
        [w] => match w.strip_prefix("if-match=") {
            Some(v) => parse_version(v)
                .map(Condition::IfMatch)
                .ok_or_else(|| format!("bad version `{v}` (ms.counter or a number)")),
            None => Err(format!("unknown condition `{w}`")),
        },
        _ => Err(format!("one condition at most: {words:?}")),
    }
}

fn request(op: &str, args: &[&str]) -> Result<Request, String> {
    let b = |s: &str| s.as_bytes().to_vec();
    Ok(match (op, args) {
        ("get", [k]) => Request::Get { key: b(k) },
        ("put", [k, v, rest @ ..]) => Request::Put {
            key: b(k),
            value: b(v),
            cond: cond(rest)?,
        },
        ("delete", [k, rest @ ..]) => Request::Delete {
            key: b(k),
            cond: cond(rest)?,
        },
        ("incr", [k, by]) => Request::Incr {
            key: b(k),
            by: num(by, "incr")?,
        },
        ("batch", ops) => {
            let ops = ops
                .iter()
                .map(|op| {
                    let (kind, rest) = op
                        .split_once(':')
                        .ok_or_else(|| format!("batch op `{op}`: kind:key[=value]"))?;
                    let kv = || {
                        rest.split_once('=')
                            .map(|(k, v)| (b(k), b(v)))
                            .ok_or_else(|| format!("batch op `{op}` needs key=value"))
                    };
                    Ok(match kind {
                        "put" => {
                            let (k, v) = kv()?;
                            BatchOp::Put(k, v)
                        }
                        "put-if-absent" => {
                            let (k, v) = kv()?;
                            BatchOp::PutIfAbsent(k, v)
                        }
                        "delete" => BatchOp::Delete(b(rest)),
                        _ => return Err(format!("unknown batch op `{kind}`")),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Request::Batch { ops }
        }
        ("scan", args) => {
            let (words, o) = split_opts(args);
            if !words.is_empty() {
                return Err(format!("scan takes name=value options: {words:?}"));
            }
            let after = o.get("after").map(|a| b(a));
            let limit = match o.get("limit") {
                Some(l) => num(l, "limit")?,
                None => 100,
            };
            match (o.get("prefix"), o.get("start")) {
                (Some(p), None) => Request::scan_prefix(b(p), after, limit),
                (None, start) => Request::Scan {
                    start: start.map(|s| b(s)).unwrap_or_default(),
                    end: o.get("end").map(|e| b(e)),
                    after,
                    limit,
                },
                (Some(_), Some(_)) => return Err("scan: prefix= or start=, not both".into()),
            }
        }
        _ => return Err(format!("cannot read request `{op} {}`", args.join(" "))),
    })
}

/// A script's running state.
#[derive(Default)]
struct Runner {
    net: Option<Net>,
}

/// What a command printed, or why the script is wrong (which fails the test at once).
type Printed = Result<Vec<String>, String>;

impl Runner {
    fn net(&mut self) -> Result<&mut Net, String> {
        self.net
            .as_mut()
            .ok_or_else(|| "no nodes yet: start with `nodes` or `node`".to_string())
    }

    /// Runs one script command. A short dispatcher: each command (or family of commands that
    /// share their shape) has its own method below, so that adding one is a new arm and a new
    /// method rather than growing one long function.
    fn run(&mut self, command: &str) -> Printed {
        let words: Vec<&str> = command.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            return Err("empty command".into());
        };
        match cmd {
            "nodes" => self.cmd_nodes(args),
            "node" => self.cmd_node(args),
            "client" => self.cmd_client(args),
            "admin" => self.cmd_admin(args),
            "connected" | "disconnected" | "expired" | "elected" => self.cmd_coord_event(cmd, args),
            "members" => self.cmd_members(args),
            "state" => self.cmd_state(args),
            "timeout" => self.cmd_timeout(args),
            "peer-down" => self.cmd_peer_down(args),
            "join" => self.cmd_join(args),
            "peer" | "drop" => self.cmd_peer(cmd, args),
            "coord" => self.cmd_coord(args),
            "persist" | "background" => self.cmd_persist_or_background(cmd, args),
            "persist-fail" => self.cmd_persist_fail(args),
            "hold" | "release" => self.cmd_hold(cmd, args),
            "stabilize" => self.cmd_stabilize(args),
            "status" => self.cmd_status(args),
            "pending" => self.cmd_pending(),
            "store" => self.cmd_store(),
            "where" => self.cmd_where(args),
            "keys" => self.cmd_keys(args),
            "fill" => self.cmd_fill(args),
            _ => Err(format!("unknown command `{cmd}`")),
        }
    }

    /// `nodes a b c [partitions=N]`: a fresh clustered net, kept apart from `node` because the
    /// two build a cluster in different ways (and default to different partition counts).
    fn cmd_nodes(&mut self, args: &[&str]) -> Printed {
        let (ids, o) = split_opts(args);
        if ids.is_empty() {
            return Err("nodes: name at least one".into());
        }
        let partitions = o
            .get("partitions")
            .map_or(Ok(16), |p| num(p, "partitions"))?;
        let mut net = Net::with(&ids, partitions, Mode::Step);
        let log = net.take_log();
        self.net = Some(net);
        Ok(log)
    }

    /// `node a [partitions=N] [sync=...]`: a fresh cluster of one; its own method because it is
    /// the only command that chooses engine options (the sync mode).
    fn cmd_node(&mut self, args: &[&str]) -> Printed {
        let (ids, o) = split_opts(args);
        let [id] = ids[..] else {
            return Err("node: exactly one name".into());
        };
        let partitions = o
            .get("partitions")
            .map_or(Ok(8), |p| num(p, "partitions"))?;
        let sync = match o.get("sync").copied() {
            None | Some("always") => SyncMode::Always,
            Some("none") => SyncMode::None,
            Some(s) => match s.strip_prefix("interval:") {
                Some(ms) => SyncMode::Interval {
                    ms: num(ms, "interval")?,
                },
                None => return Err(format!("unknown sync `{s}`")),
            },
        };
        let opts = crate::Options {
            sync,
            ..engine_options()
        };
        let node = Node::new(
            open_engine(opts),
            NodeConfig {
                node_id: id.to_string(),
                partitions,
                ..NodeConfig::default()
            },
        );
        self.net = Some(Net::single(node, Mode::Step));
        Ok(Vec::new())
    }

    /// `client <node> <id> <op> ...`: the request's own syntax is read by [`request`], so this
    /// only picks the node and the client id.
    fn cmd_client(&mut self, args: &[&str]) -> Printed {
        let [node, id, op, rest @ ..] = args else {
            return Err("client <node> <id> <op> ...".into());
        };
        let id = num(id, "client id")?;
        let request = request(op, rest)?;
        self.feed(node, Input::Client { id, request })
    }

    /// `admin <node> <id> decommission <target>`: the one admin command there is.
    fn cmd_admin(&mut self, args: &[&str]) -> Printed {
        let [node, id, "decommission", target] = args else {
            return Err("admin <node> <id> decommission <target>".into());
        };
        let id = num(id, "admin id")?;
        let command = AdminCommand::Decommission {
            node: target.to_string(),
        };
        self.feed(node, Input::Admin { id, command })
    }

    /// `connected|disconnected|expired|elected <node>`: one family, as the four differ only in
    /// the coordinator event they hand over.
    fn cmd_coord_event(&mut self, cmd: &str, args: &[&str]) -> Printed {
        let [node] = args else {
            return Err(format!("{cmd} <node>"));
        };
        let event = match cmd {
            "connected" => CoordEvent::Connected,
            "disconnected" => CoordEvent::Disconnected,
            "expired" => CoordEvent::Expired,
            _ => CoordEvent::Elected,
        };
        self.feed(node, Input::Coordinator(event))
    }

    /// `members <node|all> <id>...`: tells the node(s) the member list, as the coordinator would.
    fn cmd_members(&mut self, args: &[&str]) -> Printed {
        let [to, ids @ ..] = args else {
            return Err("members <node|all> <id>...".into());
        };
        let ms: Vec<_> = ids.iter().map(|id| member(id)).collect();
        self.each(to, |_| Input::Coordinator(CoordEvent::Members(ms.clone())))
    }

    /// `state <node|all>`: hands over the coordinator's current state, read from the store now
    /// (not from any queued write).
    fn cmd_state(&mut self, args: &[&str]) -> Printed {
        let [to] = args else {
            return Err("state <node|all>".into());
        };
        let ev = self.net()?.store.state_event();
        self.each(to, |_| Input::Coordinator(ev.clone()))
    }

    /// `timeout <node|all> <ms>`: the clock moves on before the `Timeout`, so the node sees the
    /// time that passed.
    fn cmd_timeout(&mut self, args: &[&str]) -> Printed {
        let [to, ms] = args else {
            return Err("timeout <node|all> <ms>".into());
        };
        let ms: u64 = num(ms, "timeout")?;
        self.net()?.now += ms;
        self.each(to, |_| Input::Timeout)
    }

    /// `peer-down <node> <peer>`: the connection from `node` to `peer` failed.
    fn cmd_peer_down(&mut self, args: &[&str]) -> Printed {
        let [node, peer] = args else {
            return Err("peer-down <node> <peer>".into());
        };
        let peer = peer.to_string();
        self.feed(node, Input::PeerDown { peer })
    }

    /// `join <node>`: a new node joins the running net (a name already in use is a script
    /// error, not an output).
    fn cmd_join(&mut self, args: &[&str]) -> Printed {
        let [id] = args else {
            return Err("join <node>".into());
        };
        let net = self.net()?;
        if net.find(id).is_some() {
            return Err(format!("{id} is already a node"));
        }
        net.join(id);
        Ok(net.take_log())
    }

    /// `peer [from=X] [to=Y] [all]` and `drop [from=X] [to=Y]`: one family, as both pick the
    /// next matching peer message the same way; `drop` loses it instead of delivering it.
    fn cmd_peer(&mut self, cmd: &str, args: &[&str]) -> Printed {
        let (words, o) = split_opts(args);
        let all = match words[..] {
            [] => false,
            ["all"] if cmd == "peer" => true,
            _ => {
                return Err(format!(
                    "{cmd} [from=X] [to=Y]{}",
                    if cmd == "peer" { " [all]" } else { "" }
                ))
            }
        };
        let net = self.net()?;
        let idx = |name: Option<&&str>| -> Result<Option<usize>, String> {
            name.map(|n| net.find(n).ok_or_else(|| format!("no node {n}")))
                .transpose()
        };
        let (from, to) = (idx(o.get("from"))?, idx(o.get("to"))?);
        let pick = |w: &Work| {
            matches!(w, Work::Peer { from: f, to: t, .. }
                if from.is_none_or(|x| x == *f) && to.is_none_or(|x| x == *t))
        };
        let mut done = 0;
        while let Some(w) = net.take(pick) {
            done += 1;
            if cmd == "drop" {
                let line = format!("dropped {}", net.show_work(&w));
                net.log.push(line);
                break;
            }
            net.process(w);
            if !all || done > 10_000 {
                break;
            }
        }
        if done == 0 {
            net.log.push("error: no such peer message pending".into());
        }
        Ok(net.take_log())
    }

    /// `coord [node] [all]`: delivers the next coordinator item (to or from `node`), or all of
    /// them.
    fn cmd_coord(&mut self, args: &[&str]) -> Printed {
        let (words, _) = split_opts(args);
        let (node, all) = match words[..] {
            [] => (None, false),
            ["all"] => (None, true),
            [n] => (Some(n), false),
            [n, "all"] => (Some(n), true),
            _ => return Err("coord [node] [all]".into()),
        };
        let net = self.net()?;
        let node = node
            .map(|n| net.find(n).ok_or_else(|| format!("no node {n}")))
            .transpose()?;
        let pick = |w: &Work| {
            w.is_coord()
                && match (node, w) {
                    (None, _) => true,
                    (Some(n), Work::Coord { to, .. }) => *to == n,
                    (Some(n), Work::WriteState { from, .. }) => *from == n,
                    _ => false,
                }
        };
        let mut done = 0;
        while let Some(w) = net.take(pick) {
            done += 1;
            net.process(w);
            if !all || done > 10_000 {
                break;
            }
        }
        if done == 0 {
            net.log
                .push("error: no such coordinator item pending".into());
        }
        Ok(net.take_log())
    }

    /// `persist <node>` and `background <node>`: one family, as both run the node's next item
    /// of one kind of local work.
    fn cmd_persist_or_background(&mut self, cmd: &str, args: &[&str]) -> Printed {
        let [node] = args else {
            return Err(format!("{cmd} <node>"));
        };
        let net = self.net()?;
        let i = net.find(node).ok_or_else(|| format!("no node {node}"))?;
        let w = net.take(|w| match w {
            Work::Persist { node } => cmd == "persist" && *node == i,
            Work::Background { node } => cmd == "background" && *node == i,
            _ => false,
        });
        match w {
            Some(w) => net.process(w),
            None => net.log.push(format!("error: no {cmd} pending at {node}")),
        }
        Ok(net.take_log())
    }

    /// `persist-fail <node> [message]`: the oldest pending persist fails with `message`.
    fn cmd_persist_fail(&mut self, args: &[&str]) -> Printed {
        let [node, message @ ..] = args else {
            return Err("persist-fail <node> [message]".into());
        };
        let message = if message.is_empty() {
            "fsync failed".to_string()
        } else {
            message.join(" ")
        };
        let net = self.net()?;
        let i = net.find(node).ok_or_else(|| format!("no node {node}"))?;
        if !net.fail_persist(i, &message) {
            net.log.push(format!("error: no persist pending at {node}"));
        }
        Ok(net.take_log())
    }

    /// `hold <node>` / `release <node>`: one family, as they set and clear the same flag.
    fn cmd_hold(&mut self, cmd: &str, args: &[&str]) -> Printed {
        let [node] = args else {
            return Err(format!("{cmd} <node>"));
        };
        let net = self.net()?;
        let i = net.find(node).ok_or_else(|| format!("no node {node}"))?;
        if cmd == "hold" {
            net.held.insert(i);
        } else {
            net.held.remove(&i);
        }
        Ok(Vec::new())
    }

    /// `stabilize`: runs everything until quiet.
    fn cmd_stabilize(&mut self, args: &[&str]) -> Printed {
        if !args.is_empty() {
            return Err("stabilize takes no arguments".into());
        }
        let net = self.net()?;
        net.run();
        Ok(net.take_log())
    }

    /// `status [node...]`: prints [`status`] of the named nodes, or of all of them.
    fn cmd_status(&mut self, args: &[&str]) -> Printed {
        let net = self.net()?;
        let which: Vec<usize> = if args.is_empty() {
            (0..net.len()).collect()
        } else {
            args.iter()
                .map(|n| net.find(n).ok_or_else(|| format!("no node {n}")))
                .collect::<Result<_, _>>()?
        };
        Ok(which.into_iter().flat_map(|i| status(net, i)).collect())
    }

    /// `pending`: the queue, one line an item.
    fn cmd_pending(&mut self) -> Printed {
        let net = self.net()?;
        Ok(net.queue.iter().map(|w| net.show_work(w)).collect())
    }

    /// `store`: the coordinator's state and its stamp.
    fn cmd_store(&mut self) -> Printed {
        let net = self.net()?;
        let stamp = net.store.stamp();
        Ok(vec![match net.store.value() {
            Some(s) => format!("stamp={stamp} {}", show_state(s)),
            None => format!("stamp={stamp} none"),
        }])
    }

    /// `where <key>...`: each key's partition, and its owner by the coordinator's state (or, if
    /// there is none yet, by the first node's view).
    fn cmd_where(&mut self, args: &[&str]) -> Printed {
        let net = self.net()?;
        Ok(args
            .iter()
            .map(|k| {
                let n = net.node(0);
                let p = n.partition_of(k.as_bytes());
                let owners = match net.store.value() {
                    Some(s) => s.owners.clone(),
                    None => n.cluster().owners,
                };
                let owner = owners.get(usize::from(p)).map_or("-", String::as_str);
                format!("{k}: partition {p}, owner {owner}")
            })
            .collect())
    }

    /// `keys <node>`: the keys the node serves reads of, a line per partition (long lists
    /// shortened so goldens stay readable).
    fn cmd_keys(&mut self, args: &[&str]) -> Printed {
        let [node] = args else {
            return Err("keys <node>".into());
        };
        let net = self.net()?;
        let i = net.find(node).ok_or_else(|| format!("no node {node}"))?;
        let keys = net.visible_keys(i);
        let mut by_part: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for (p, k, _) in keys {
            by_part.entry(p).or_default().push(show_bytes(&k));
        }
        let lines: Vec<String> = by_part
            .into_iter()
            .map(|(p, ks)| {
                let n = ks.len();
                let list = if n <= 8 {
                    ks.join(" ")
                } else {
                    format!("{} .. {}", ks[..3].join(" "), ks[n - 1])
                };
                format!("{node} p{p}: {n} [{list}]")
            })
            .collect();
        if lines.is_empty() {
            Ok(vec![format!("{node}: no keys")])
        } else {
            Ok(lines)
        }
    }

    /// `fill <node> <count> <prefix>`: many writes without a transcript of each; runs in
    /// `Mode::Auto` and prints only how the writes were answered.
    fn cmd_fill(&mut self, args: &[&str]) -> Printed {
        let [node, count, prefix] = args else {
            return Err("fill <node> <count> <prefix>".into());
        };
        let count: u64 = num(count, "count")?;
        let net = self.net()?;
        let i = net.find(node).ok_or_else(|| format!("no node {node}"))?;
        if !net.queue.is_empty() {
            return Ok(vec!["error: fill needs an empty queue".into()]);
        }
        net.mode = Mode::Auto;
        let mut answers: BTreeMap<String, u64> = BTreeMap::new();
        for k in 0..count {
            let key = format!("{prefix}{k:04}");
            let put = Request::Put {
                key: key.clone().into_bytes(),
                value: key.into_bytes(),
                cond: Condition::None,
            };
            let r = net.call(i, u64::MAX - k, put);
            let kind = match r {
                Response::Written { .. } => "Written".to_string(),
                other => format!("{other:?}"),
            };
            *answers.entry(kind).or_default() += 1;
        }
        net.mode = Mode::Step;
        Ok(answers
            .into_iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect())
    }

    /// Hands `input` to the node called `node` now.
    fn feed(&mut self, node: &str, input: Input) -> Printed {
        let net = self.net()?;
        let i = net.find(node).ok_or_else(|| format!("no node {node}"))?;
        net.input(i, input);
        Ok(net.take_log())
    }

    /// Hands an input to `to` (a node, or `all`); with several, each gets a `>` line.
    fn each(&mut self, to: &str, input: impl Fn(usize) -> Input) -> Printed {
        let net = self.net()?;
        if to != "all" {
            let i = net.find(to).ok_or_else(|| format!("no node {to}"))?;
            net.input(i, input(i));
            return Ok(net.take_log());
        }
        for i in 0..net.len() {
            let input = input(i);
            let head = match &input {
                Input::Coordinator(ev) => format!("coord -> {}: {}", net.name(i), show_event(ev)),
                Input::Timeout => format!("{}: Timeout", net.name(i)),
                other => format!("{}: {other:?}", net.name(i)),
            };
            net.input_headed(i, head, input);
        }
        Ok(net.take_log())
    }
}

/// A node's state, as `status` prints it.
fn status(net: &Net, i: usize) -> Vec<String> {
    let n = net.node(i);
    let v = n.cluster();
    let lead = match n.leadership() {
        super::Leadership::Disconnected => "disconnected",
        super::Leadership::Follower { .. } => "follower",
        super::Leadership::Candidate { .. } => "candidate",
        super::Leadership::Leader(_) => "leader",
    };
    let mut lines = vec![format!(
        "{}: {lead} epoch={} map={} leader={} members=[{}]",
        n.cfg.node_id,
        v.epoch,
        v.map_version,
        v.leader.as_deref().unwrap_or("-"),
        v.members.join(" ")
    )];
    if !v.owners.is_empty() {
        let mut l = format!("  owners=[{}]", v.owners.join(" "));
        if !v.moving.is_empty() {
            let m: Vec<String> = v
                .moving
                .iter()
                .map(|(p, to)| format!("{p}->{to}"))
                .collect();
            l.push_str(&format!(" moving={{{}}}", m.join(" ")));
        }
        if !v.leaving.is_empty() {
            l.push_str(&format!(" leaving=[{}]", v.leaving.join(" ")));
        }
        lines.push(l);
    }
    for (p, o) in &n.ho.outgoing {
        let frozen = match o.frozen {
            None => "copying".to_string(),
            Some(f) if f.sent => "frozen, tail sent".to_string(),
            Some(f) => format!("frozen until {} is durable", f.upto),
        };
        lines.push(format!(
            "  outgoing p{p} -> {}: {frozen}, {} keys written since",
            o.to,
            o.written.len()
        ));
    }
    for (p, m) in &n.ho.incoming {
        lines.push(format!(
            "  incoming p{p} <- {}: {:?} (step deadline {})",
            m.from, m.phase, m.deadline
        ));
    }
    if !n.ho.cleanup.is_empty() {
        let ps: Vec<String> = n.ho.cleanup.keys().map(|p| format!("p{p}")).collect();
        lines.push(format!("  cleaning up [{}]", ps.join(" ")));
    }
    let s = n.stats();
    lines.push(format!(
        "  waiting={} forwards={} parked={} deadline={}",
        s.waiting_for_persist,
        s.forwards_in_flight,
        n.fwd.parked.len(),
        n.next_deadline()
            .map_or_else(|| "-".to_string(), |d| d.to_string())
    ));
    lines
}

/// Runs one script: `Ok(())` if every output matched (or was rewritten), else the report of
/// the first mismatch (later commands of that file are not run: they would differ too).
fn run_file(path: &Path, rewrite: bool) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let name = path
        .strip_prefix(root.parent().unwrap_or(root))
        .unwrap_or(path)
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let script = parse(&text).map_err(|e| format!("{name}: {e}"))?;
    let mut runner = Runner::default();
    let mut outputs = Vec::new();
    for b in &script.blocks {
        let mut got = runner
            .run(&b.command)
            .map_err(|e| format!("{name}:{}: `{}`: {e}", b.line, b.command))?;
        if got.is_empty() {
            got.push("(no output)".into());
        }
        if got.iter().any(|l| l.trim().is_empty()) {
            return Err(format!(
                "{name}:{}: `{}` printed a blank line, which would end its block",
                b.line, b.command
            ));
        }
        if !rewrite && got != b.expected {
            return Err(format!(
                "{name}:{}: `{}`: the output differs (-expected +got):\n{}\
                 (CORECACHE_REWRITE=1 rewrites the golden output; read the diff before keeping it)",
                b.line,
                b.command,
                diff(&b.expected, &got)
            ));
        }
        outputs.push(got);
    }
    if rewrite {
        let new = render(&script, &outputs);
        if new != text {
            std::fs::write(path, new).map_err(|e| format!("{name}: {e}"))?;
            eprintln!("rewrote {name}");
        }
    }
    Ok(())
}

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/node/testdata");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read the testdata directory").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

#[test]
fn transcripts() {
    let rewrite = std::env::var("CORECACHE_REWRITE").is_ok_and(|v| v == "1");
    let only = std::env::var("CORECACHE_TRANSCRIPT").ok();
    let files = scripts();
    let mut failures = Vec::new();
    let mut ran = 0;
    for f in &files {
        let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned());
        if let (Some(only), Some(stem)) = (&only, &stem) {
            if !stem.contains(only.as_str()) {
                continue;
            }
        }
        ran += 1;
        if let Err(e) = run_file(f, rewrite) {
            failures.push(e);
        }
    }
    assert!(ran > 0, "no script matched CORECACHE_TRANSCRIPT={only:?}");
    assert!(
        failures.is_empty(),
        "{} of {ran} transcripts failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(files.len() >= 10, "only {} scripts", files.len());
}

#[test]
fn the_diff_names_each_changed_line() {
    let s = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let d = diff(&s(&["a", "b", "c"]), &s(&["a", "x", "c", "d"]));
    assert_eq!(d, "  a\n- b\n+ x\n  c\n+ d\n");
    let script = parse("# hi\n\ncmd one\n----\nout\n\ncmd two\n----\n# trailing\n").unwrap();
    assert_eq!(script.blocks.len(), 2);
    assert_eq!(script.blocks[1].expected, vec!["# trailing".to_string()]);
    let again = render(&script, &[s(&["out"]), s(&["# trailing"])]);
    assert_eq!(
        again,
        "# hi\n\ncmd one\n----\nout\n\ncmd two\n----\n# trailing\n"
    );
}
