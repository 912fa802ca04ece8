//! Redis commands over `node::Request`, each through [`NodeHandle::call`].
//!
//! Read-modify-write commands (INCR, APPEND, GETSET, GETDEL, SET ... GET) are a conditional-put
//! loop: read the value and its version, write with `IfMatch(version)` (or `IfAbsent`), and on
//! `PreconditionFailed` read again. The owner checks conditions in apply order, so each one is
//! atomic per key, in a cluster too.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use corecache_core::bugs::{self, Bug};
use corecache_core::proto::int::parse_decimal;
use corecache_core::proto::{BatchOp, Condition, ErrorKind, Request, Response};

use super::glob;
use super::reply::Reply;
use super::{Conn, RespState};
use crate::driver::NodeHandle;

/// How long a read-modify-write keeps retrying under contention.
const RMW_DEADLINE: Duration = Duration::from_secs(5);
/// Keys per scan page for KEYS / DBSIZE / FLUSHDB.
const PAGE: usize = 1000;
/// KEYS refuses to return more than this many keys (use SCAN).
const MAX_KEYS_REPLY: usize = 1_000_000;

/// What the connection does after a reply.
pub enum After {
    Continue,
    Close,
}

/// The one mapping from the node's error kinds to RESP error replies.
fn node_error(kind: ErrorKind, message: &str) -> Reply {
    match kind {
        // Refused, nothing done: a client may retry as it is.
        ErrorKind::NotReady
        | ErrorKind::OwnerDown
        | ErrorKind::Moving
        | ErrorKind::Stalled
        | ErrorKind::Unavailable => Reply::Error(format!("TRYAGAIN {message}")),
        // Maybe done: a client must read before it retries a write that is not idempotent
        // (a cluster client's automatic TRYAGAIN retry would apply an INCR twice).
        ErrorKind::OutcomeUnknown => Reply::Error(format!("UNCERTAIN {message}")),
        ErrorKind::TooLarge => Reply::err(format!("too large: {message}")),
        ErrorKind::BadRequest | ErrorKind::SpansNodes => Reply::err(message),
        ErrorKind::Internal => Reply::err(format!("internal error: {message}")),
    }
}

fn unexpected(r: &Response) -> Reply {
    match r {
        Response::Error { kind, message } => node_error(*kind, message),
        other => Reply::err(format!("internal error: unexpected reply {other:?}")),
    }
}

fn wrong_args(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

async fn get(node: &NodeHandle, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, Reply> {
    match node.call(Request::Get { key: key.to_vec() }).await {
        Response::Value { value, version, .. } => Ok(Some((value, version))),
        Response::NotFound => Ok(None),
        other => Err(unexpected(&other)),
    }
}

/// Writes `value` if the key is still at `seen` (`None` = absent). `Ok(false)`: it changed.
async fn put_if(
    node: &NodeHandle,
    key: &[u8],
    value: Vec<u8>,
    seen: Option<u64>,
) -> Result<bool, Reply> {
    let cond = match seen {
        Some(v) => Condition::IfMatch(v),
        None => Condition::IfAbsent,
    };
    match node
        .call(Request::Put {
            key: key.to_vec(),
            value,
            cond,
        })
        .await
    {
        Response::Written { .. } => Ok(true),
        Response::PreconditionFailed { .. } => Ok(false),
        other => Err(unexpected(&other)),
    }
}

/// Runs `step` (read → decide → conditional write) until its write lands or it gives up.
/// A failed condition usually means our read has not seen a write that is still being made
/// durable, so the retry waits a little.
async fn rmw_wait(attempt: &mut u32, started: Instant) -> Result<(), Reply> {
    *attempt += 1;
    if started.elapsed() > RMW_DEADLINE {
        return Err(Reply::Error(
            "TRYAGAIN the key kept changing; try again".into(),
        ));
    }
    if *attempt < 3 {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(Duration::from_micros(200 * u64::from((*attempt).min(10)))).await;
    }
    Ok(())
}

/// INCRBY and friends: one request, done in one step on the key's owner.
async fn incr_by(node: &NodeHandle, key: &[u8], by: i64) -> Reply {
    if bugs::on(Bug::IncrOutsideOwner) {
        return incr_read_then_write(node, key, by).await;
    }
    let request = Request::Incr {
        key: key.to_vec(),
        by,
    };
    incr_reply(node.call(request).await)
}

/// The deliberate bug `IncrOutsideOwner`: a read, then a plain write of the sum.
async fn incr_read_then_write(node: &NodeHandle, key: &[u8], by: i64) -> Reply {
    let old = match get(node, key).await {
        Ok(None) => 0,
        Ok(Some((v, _))) => match parse_decimal(&v) {
            Some(n) => n,
            None => return not_integer(),
        },
        Err(e) => return e,
    };
    let Some(new) = old.checked_add(by) else {
        return Reply::err("increment or decrement would overflow");
    };
    let put = Request::Put {
        key: key.to_vec(),
        value: new.to_string().into_bytes(),
        cond: Condition::None,
    };
    match node.call(put).await {
        Response::Written { .. } => Reply::Int(new),
        other => unexpected(&other),
    }
}

fn incr_reply(r: Response) -> Reply {
    match r {
        Response::Value { value, .. } => match parse_decimal(&value) {
            Some(n) => Reply::Int(n),
            None => Reply::err("internal error: INCR answered a non-number"),
        },
        other => unexpected(&other),
    }
}

#[derive(Default)]
struct SetOpts {
    nx: bool,
    xx: bool,
    get: bool,
}

/// SET with NX / XX / GET: returns the reply.
async fn set(node: &NodeHandle, key: &[u8], value: &[u8], o: SetOpts) -> Reply {
    if !o.get {
        let cond = if o.nx {
            Condition::IfAbsent
        } else if o.xx {
            Condition::IfExists
        } else {
            Condition::None
        };
        return match node
            .call(Request::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                cond,
            })
            .await
        {
            Response::Written { .. } => Reply::ok(),
            Response::PreconditionFailed { .. } => Reply::Nil,
            other => unexpected(&other),
        };
    }
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let cur = match get(node, key).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let old = cur.as_ref().map(|(v, _)| Reply::Bulk(v.clone()));
        if (o.nx && cur.is_some()) || (o.xx && cur.is_none()) {
            return old.unwrap_or(Reply::Nil);
        }
        match put_if(node, key, value.to_vec(), cur.map(|(_, ver)| ver)).await {
            Ok(true) => return old.unwrap_or(Reply::Nil),
            Ok(false) => {}
            Err(e) => return e,
        }
        if let Err(e) = rmw_wait(&mut attempt, started).await {
            return e;
        }
    }
}

async fn getdel(node: &NodeHandle, key: &[u8]) -> Reply {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let (value, ver) = match get(node, key).await {
            Ok(Some(c)) => c,
            Ok(None) => return Reply::Nil,
            Err(e) => return e,
        };
        match node
            .call(Request::Delete {
                key: key.to_vec(),
                cond: Condition::IfMatch(ver),
            })
            .await
        {
            Response::Deleted { .. } => return Reply::Bulk(value),
            Response::PreconditionFailed { .. } | Response::NotFound => {}
            other => return unexpected(&other),
        }
        if let Err(e) = rmw_wait(&mut attempt, started).await {
            return e;
        }
    }
}

async fn append(node: &NodeHandle, key: &[u8], tail: &[u8]) -> Reply {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let cur = match get(node, key).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let (mut value, seen) = match cur {
            Some((v, ver)) => (v, Some(ver)),
            None => (Vec::new(), None),
        };
        value.extend_from_slice(tail);
        let len = value.len() as i64;
        match put_if(node, key, value, seen).await {
            Ok(true) => return Reply::Int(len),
            Ok(false) => {}
            Err(e) => return e,
        }
        if let Err(e) = rmw_wait(&mut attempt, started).await {
            return e;
        }
    }
}

/// One page of the ordered key space after `after`, keys starting with `prefix`.
async fn page(
    node: &NodeHandle,
    prefix: &[u8],
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>), Reply> {
    match node
        .call(Request::scan_prefix(prefix.to_vec(), after, limit))
        .await
    {
        Response::Page { items, next_after } => {
            Ok((items.into_iter().map(|i| i.key).collect(), next_after))
        }
        other => Err(unexpected(&other)),
    }
}

/// Counts every key, a page at a time.
async fn count_keys(node: &NodeHandle) -> Result<i64, Reply> {
    let mut after = None;
    let mut n = 0i64;
    loop {
        let (keys, next) = page(node, b"", after, PAGE * 10).await?;
        n += keys.len() as i64;
        match next {
            Some(k) => after = Some(k),
            None => return Ok(n),
        }
    }
}

/// The command table for COMMAND / COMMAND COUNT: name, arity, flags, first key, last, step.
type CommandSpec = (&'static str, i64, &'static [&'static str], i64, i64, i64);

const COMMANDS: &[CommandSpec] = &[
    ("ping", -1, &["fast"], 0, 0, 0),
    ("echo", 2, &["fast"], 0, 0, 0),
    (
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("client", -2, &["noscript", "loading", "stale"], 0, 0, 0),
    ("select", 2, &["loading", "stale", "fast"], 0, 0, 0),
    (
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("command", -1, &["loading", "stale"], 0, 0, 0),
    ("info", -1, &["loading", "stale"], 0, 0, 0),
    ("config", -2, &["admin", "loading", "stale"], 0, 0, 0),
    ("dbsize", 1, &["readonly"], 0, 0, 0),
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("setnx", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getset", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getdel", 2, &["write", "fast"], 1, 1, 1),
    ("del", -2, &["write"], 1, -1, 1),
    ("unlink", -2, &["write", "fast"], 1, -1, 1),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("mset", -3, &["write", "denyoom"], 1, -1, 2),
    ("msetnx", -3, &["write", "denyoom"], 1, -1, 2),
    ("strlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("append", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("scan", -2, &["readonly"], 0, 0, 0),
    ("keys", 2, &["readonly"], 0, 0, 0),
    ("flushdb", -1, &["write"], 0, 0, 0),
];

fn arity_ok(name: &str, argc: usize) -> bool {
    match COMMANDS.iter().find(|c| c.0 == name) {
        Some(&(_, a, ..)) if a >= 0 => argc as i64 == a,
        Some(&(_, a, ..)) => argc as i64 >= -a,
        None => true,
    }
}

fn command_info(c: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(c.0),
        Reply::Int(c.1),
        Reply::Array(c.2.iter().map(|f| Reply::Simple(f.to_string())).collect()),
        Reply::Int(c.3),
        Reply::Int(c.4),
        Reply::Int(c.5),
    ])
}

fn hello_reply(c: &Conn) -> Reply {
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(super::REDIS_VERSION)),
        (Reply::bulk("proto"), Reply::Int(i64::from(c.proto))),
        (Reply::bulk("id"), Reply::Int(c.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
        (
            Reply::bulk("corecache"),
            Reply::bulk(env!("CARGO_PKG_VERSION")),
        ),
    ])
}

async fn info(st: &RespState, node: Option<&NodeHandle>, section: Option<String>) -> Reply {
    let want = |s: &str| match &section {
        None => true,
        Some(x) => x == "all" || x == "everything" || x == "default" || x == s,
    };
    let mut text = String::new();
    if want("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:{}\r\ncorecache_version:{}\r\nredis_mode:standalone\r\n\
             os:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
             node_id:{}\r\n\r\n",
            super::REDIS_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            st.port,
            st.started.elapsed().as_secs(),
            node.map(|n| n.node_id()).unwrap_or("-"),
        ));
    }
    if want("persistence") {
        text.push_str(&format!(
            "# Persistence\r\nloading:{}\r\naof_enabled:0\r\nrdb_changes_since_last_save:0\r\n\
             corecache_sync:{}\r\n\r\n",
            u8::from(node.is_none()),
            st.sync
        ));
    }
    if want("stats") {
        text.push_str(&format!(
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
             rejected_connections:{}\r\nconnected_clients:{}\r\n\r\n",
            st.stats.connections.load(Ordering::Relaxed),
            st.stats.commands.load(Ordering::Relaxed),
            st.stats.rejected.load(Ordering::Relaxed),
            st.stats.open.load(Ordering::Relaxed),
        ));
    }
    if want("keyspace") {
        text.push_str("# Keyspace\r\n");
        if let Some(n) = node {
            match count_keys(n).await {
                Ok(0) => {}
                Ok(k) => text.push_str(&format!("db0:keys={k},expires=0,avg_ttl=0\r\n")),
                Err(e) => return e,
            }
        }
        text.push_str("\r\n");
    }
    Reply::Bulk(text.into_bytes())
}

/// Runs one command. `args` is non-empty.
pub async fn exec(st: &RespState, c: &mut Conn, args: Vec<Vec<u8>>) -> (Reply, After) {
    st.stats.commands.fetch_add(1, Ordering::Relaxed);
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let known = COMMANDS.iter().any(|k| k.0 == name);
    if !known {
        return (unknown_command(&args), After::Continue);
    }
    if !arity_ok(&name, args.len()) {
        return (wrong_args(&name), After::Continue);
    }
    let a = &args[1..];
    // Commands that need no node.
    let reply = match name.as_str() {
        "ping" => match a {
            [] => Reply::Simple("PONG".into()),
            [m] => Reply::Bulk(m.clone()),
            _ => wrong_args("ping"),
        },
        "echo" => Reply::Bulk(a[0].clone()),
        "quit" => return (Reply::ok(), After::Close),
        "select" => match parse_decimal(&a[0]) {
            Some(0) => Reply::ok(),
            Some(_) => Reply::err("DB index is out of range"),
            None => not_integer(),
        },
        "hello" => hello(c, a),
        "client" => client(c, a),
        "command" => command(a),
        "config" => config(st, a),
        "info" => {
            let section = a
                .first()
                .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
            return (info(st, st.node.get(), section).await, After::Continue);
        }
        _ => {
            let Some(node) = st.node.get() else {
                return (
                    Reply::Error("LOADING CoreCache is opening its data; try again".into()),
                    After::Continue,
                );
            };
            return (data(st, node, &name, a).await, After::Continue);
        }
    };
    (reply, After::Continue)
}

/// The error for a command this front-end does not know, as Redis words it.
fn unknown_command(args: &[Vec<u8>]) -> Reply {
    let mut shown = String::new();
    for a in args.iter().skip(1).take(16) {
        shown.push('\'');
        shown.push_str(&String::from_utf8_lossy(&a[..a.len().min(128)]));
        shown.push_str("' ");
    }
    let name_shown = String::from_utf8_lossy(&args[0][..args[0].len().min(128)]).into_owned();
    Reply::err(format!(
        "unknown command '{name_shown}', with args beginning with: {shown}"
    ))
}

/// HELLO [protover [SETNAME name]]: switches the protocol and answers the server's facts.
fn hello(c: &mut Conn, a: &[Vec<u8>]) -> Reply {
    let mut i = 0;
    if let Some(v) = a.first() {
        match parse_decimal(v) {
            Some(p @ 2..=3) => c.proto = p as u8,
            Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
            None => return Reply::err("Protocol version is not an integer or out of range"),
        }
        i = 1;
    }
    while i < a.len() {
        match upper(&a[i]).as_str() {
            "SETNAME" if i + 1 < a.len() => {
                c.name = Some(a[i + 1].clone());
                i += 2;
            }
            "AUTH" if i + 2 < a.len() => {
                return Reply::err("AUTH is not supported (CoreCache has no passwords)");
            }
            _ => return Reply::err("syntax error in HELLO option"),
        }
    }
    hello_reply(c)
}

/// CLIENT SETNAME / GETNAME / ID / SETINFO.
fn client(c: &mut Conn, a: &[Vec<u8>]) -> Reply {
    match (upper(&a[0]).as_str(), &a[1..]) {
        ("SETNAME", [n]) => {
            if n.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                Reply::err("Client names cannot contain spaces, newlines or special characters.")
            } else {
                c.name = (!n.is_empty()).then(|| n.clone());
                Reply::ok()
            }
        }
        ("GETNAME", []) => c.name.clone().map_or(Reply::Nil, Reply::Bulk),
        ("ID", []) => Reply::Int(c.id as i64),
        ("SETINFO", [_, _]) => Reply::ok(),
        (sub @ ("SETNAME" | "GETNAME" | "ID" | "SETINFO"), _) => Reply::err(format!(
            "wrong number of arguments for 'client|{}' command",
            sub.to_ascii_lowercase()
        )),
        (sub, _) => Reply::err(format!(
            "unknown subcommand '{}'. Try CLIENT HELP.",
            sub.to_ascii_lowercase()
        )),
    }
}

/// COMMAND, COMMAND COUNT / DOCS / INFO.
fn command(a: &[Vec<u8>]) -> Reply {
    match a.first().map(|s| upper(s)).as_deref() {
        None => Reply::Array(COMMANDS.iter().map(command_info).collect()),
        Some("COUNT") => Reply::Int(COMMANDS.len() as i64),
        Some("DOCS") => Reply::Map(Vec::new()),
        Some("INFO") => Reply::Array(
            a[1..]
                .iter()
                .map(|n| {
                    let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                    COMMANDS
                        .iter()
                        .find(|c| c.0 == n)
                        .map_or(Reply::Nil, command_info)
                })
                .collect(),
        ),
        Some(sub) => Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            sub.to_ascii_lowercase()
        )),
    }
}

/// CONFIG GET, for tools that ask.
fn config(st: &RespState, a: &[Vec<u8>]) -> Reply {
    match upper(&a[0]).as_str() {
        // Enough for tools that ask (redis-benchmark reads `save` and `appendonly`): the
        // log is always on; how often it is synced follows `sync`.
        "GET" if a.len() >= 2 => {
            let fsync = match st.sync.as_str() {
                "always" => "always",
                "interval" => "everysec",
                _ => "no",
            };
            let table = [
                ("save", ""),
                ("appendonly", "yes"),
                ("appendfsync", fsync),
                ("databases", "1"),
            ];
            let mut pairs = Vec::new();
            for (k, v) in table {
                if a[1..]
                    .iter()
                    .any(|p| glob::matches(&p.to_ascii_lowercase(), k.as_bytes()))
                {
                    pairs.push((Reply::bulk(k), Reply::bulk(v)));
                }
            }
            Reply::Map(pairs)
        }
        "GET" => wrong_args("config|get"),
        sub => Reply::err(format!(
            "CONFIG {sub} is not supported by CoreCache (its settings are in corecache serve)"
        )),
    }
}

/// A write a pipeline may send ahead without waiting for the one before: a plain
/// `SET key value`, or INCR / DECR / INCRBY / DECRBY (each one request to the owner).
pub fn pipelined_write(args: &[Vec<u8>]) -> bool {
    let is = |name: &[u8], n: usize| args.len() == n && args[0].eq_ignore_ascii_case(name);
    if bugs::on(Bug::IncrOutsideOwner) && !is(b"set", 3) {
        return false;
    }
    is(b"set", 3) || is(b"incr", 2) || is(b"decr", 2) || is(b"incrby", 3) || is(b"decrby", 3)
}

/// The request (or the error reply) of a [`pipelined_write`].
fn write_request(mut a: Vec<Vec<u8>>) -> Result<(Request, bool), Reply> {
    let name = a[0].to_ascii_lowercase();
    let by = match name.as_slice() {
        b"set" => {
            let value = a.pop().unwrap_or_default();
            let key = a.pop().unwrap_or_default();
            let cond = Condition::None;
            return Ok((Request::Put { key, value, cond }, false));
        }
        b"incr" => 1,
        b"decr" => -1,
        _ => {
            let n = parse_decimal(&a[2]).ok_or_else(not_integer)?;
            if name == b"incrby" {
                n
            } else {
                n.checked_neg()
                    .ok_or_else(|| Reply::err("decrement would overflow"))?
            }
        }
    };
    let key = std::mem::take(&mut a[1]);
    Ok((Request::Incr { key, by }, true))
}

/// Runs consecutive [`pipelined_write`]s of one pipeline: every request goes to the node before
/// any answer is awaited, in order (so they apply in order and share the node's group commit),
/// and the replies come back in order. The caller bounds how many are in flight.
pub async fn set_run(st: &RespState, sets: Vec<Vec<Vec<u8>>>) -> Vec<Reply> {
    if sets.is_empty() {
        return Vec::new();
    }
    st.stats
        .commands
        .fetch_add(sets.len() as u64, Ordering::Relaxed);
    let Some(node) = st.node.get() else {
        return sets
            .iter()
            .map(|_| Reply::Error("LOADING CoreCache is opening its data; try again".into()))
            .collect();
    };
    let mut pending = Vec::with_capacity(sets.len());
    for a in sets {
        pending.push(match write_request(a) {
            Ok((request, incr)) => Ok((node.send(request).await, incr)),
            Err(reply) => Err(reply),
        });
    }
    let mut replies = Vec::with_capacity(pending.len());
    for p in pending {
        replies.push(match p {
            Err(reply) => reply,
            Ok((p, true)) => incr_reply(p.reply().await),
            Ok((p, false)) => match p.reply().await {
                Response::Written { .. } => Reply::ok(),
                other => unexpected(&other),
            },
        });
    }
    replies
}

/// Commands on the data.
async fn data(st: &RespState, node: &NodeHandle, name: &str, a: &[Vec<u8>]) -> Reply {
    match name {
        "get" => match get(node, &a[0]).await {
            Ok(Some((v, _))) => Reply::Bulk(v),
            Ok(None) => Reply::Nil,
            Err(e) => e,
        },
        "set" => set_cmd(node, a).await,
        "setnx" => match set(
            node,
            &a[0],
            &a[1],
            SetOpts {
                nx: true,
                ..SetOpts::default()
            },
        )
        .await
        {
            Reply::Simple(_) => Reply::Int(1),
            Reply::Nil => Reply::Int(0),
            e => e,
        },
        "getset" => {
            set(
                node,
                &a[0],
                &a[1],
                SetOpts {
                    get: true,
                    ..SetOpts::default()
                },
            )
            .await
        }
        "getdel" => getdel(node, &a[0]).await,
        "del" | "unlink" => del(node, a).await,
        "exists" => exists(node, a).await,
        "mget" => mget(node, a).await,
        "mset" | "msetnx" => mset(node, name, a).await,
        "strlen" => match get(node, &a[0]).await {
            Ok(Some((v, _))) => Reply::Int(v.len() as i64),
            Ok(None) => Reply::Int(0),
            Err(e) => e,
        },
        "append" => append(node, &a[0], &a[1]).await,
        "incr" => incr_by(node, &a[0], 1).await,
        "decr" => incr_by(node, &a[0], -1).await,
        "incrby" | "decrby" => match parse_decimal(&a[1]) {
            Some(by) if name == "incrby" => incr_by(node, &a[0], by).await,
            Some(by) => match by.checked_neg() {
                Some(by) => incr_by(node, &a[0], by).await,
                None => Reply::err("decrement would overflow"),
            },
            None => not_integer(),
        },
        "dbsize" => match count_keys(node).await {
            Ok(n) => Reply::Int(n),
            Err(e) => e,
        },
        "scan" => scan(st, node, a).await,
        "keys" => keys(node, &a[0]).await,
        "flushdb" => flushdb_cmd(st, node, a).await,
        other => Reply::err(format!("unknown command '{other}'")),
    }
}

/// SET key value [NX | XX] [GET] [KEEPTTL].
async fn set_cmd(node: &NodeHandle, a: &[Vec<u8>]) -> Reply {
    let mut o = SetOpts::default();
    for opt in &a[2..] {
        match upper(opt).as_str() {
            "NX" if !o.xx => o.nx = true,
            "XX" if !o.nx => o.xx = true,
            "GET" => o.get = true,
            "KEEPTTL" => {}
            "EX" | "PX" | "EXAT" | "PXAT" => {
                return Reply::err("expiry not supported by CoreCache")
            }
            _ => return syntax(),
        }
    }
    set(node, &a[0], &a[1], o).await
}

/// DEL / UNLINK: one delete per key; the count of keys that existed.
async fn del(node: &NodeHandle, a: &[Vec<u8>]) -> Reply {
    let mut n = 0;
    for k in a {
        match node
            .call(Request::Delete {
                key: k.clone(),
                cond: Condition::None,
            })
            .await
        {
            Response::Deleted { .. } => n += 1,
            Response::NotFound => {}
            other => return unexpected(&other),
        }
    }
    Reply::Int(n)
}

/// EXISTS: how many of the keys exist (a key named twice counts twice).
async fn exists(node: &NodeHandle, a: &[Vec<u8>]) -> Reply {
    let mut n = 0;
    for k in a {
        match get(node, k).await {
            Ok(Some(_)) => n += 1,
            Ok(None) => {}
            Err(e) => return e,
        }
    }
    Reply::Int(n)
}

/// MGET: each key's value or nil.
async fn mget(node: &NodeHandle, a: &[Vec<u8>]) -> Reply {
    let mut out = Vec::with_capacity(a.len());
    for k in a {
        out.push(match get(node, k).await {
            Ok(Some((v, _))) => Reply::Bulk(v),
            Ok(None) => Reply::Nil,
            Err(e) => return e,
        });
    }
    Reply::Array(out)
}

/// MSET / MSETNX: one batch on the owner.
async fn mset(node: &NodeHandle, name: &str, a: &[Vec<u8>]) -> Reply {
    if !a.len().is_multiple_of(2) {
        return wrong_args(name);
    }
    // One batch, so atomic on the owner; MSETNX's condition is checked inside it, in
    // apply order, for every key at once.
    let ops = a
        .chunks(2)
        .map(|p| {
            if name == "msetnx" {
                BatchOp::PutIfAbsent(p[0].clone(), p[1].clone())
            } else {
                BatchOp::Put(p[0].clone(), p[1].clone())
            }
        })
        .collect();
    match node.call(Request::Batch { ops }).await {
        Response::Written { .. } if name == "msetnx" => Reply::Int(1),
        Response::PreconditionFailed { .. } if name == "msetnx" => Reply::Int(0),
        Response::Written { .. } => Reply::ok(),
        other => unexpected(&other),
    }
}

/// KEYS pattern: every match, page by page (refused past `MAX_KEYS_REPLY`).
async fn keys(node: &NodeHandle, pat: &[u8]) -> Reply {
    let prefix = glob::literal_prefix(pat);
    let mut after = None;
    let mut out = Vec::new();
    loop {
        let (keys, next) = match page(node, &prefix, after, PAGE * 10).await {
            Ok(p) => p,
            Err(e) => return e,
        };
        out.extend(
            keys.into_iter()
                .filter(|k| glob::matches(pat, k))
                .map(Reply::Bulk),
        );
        if out.len() > MAX_KEYS_REPLY {
            return Reply::err(format!("more than {MAX_KEYS_REPLY} keys match; use SCAN"));
        }
        match next {
            Some(k) => after = Some(k),
            None => return Reply::Array(out),
        }
    }
}

/// FLUSHDB [SYNC | ASYNC], when `resp_flushdb` allows it.
async fn flushdb_cmd(st: &RespState, node: &NodeHandle, a: &[Vec<u8>]) -> Reply {
    if a.len() > 1
        || a.first()
            .is_some_and(|m| !matches!(upper(m).as_str(), "SYNC" | "ASYNC"))
    {
        return syntax();
    }
    if !st.flushdb {
        return Reply::err(
            "FLUSHDB is disabled on this node (setting resp_flushdb = true enables it)",
        );
    }
    flushdb(node).await
}

async fn scan(st: &RespState, node: &NodeHandle, a: &[Vec<u8>]) -> Reply {
    let after = match std::str::from_utf8(&a[0])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    {
        Some(0) => None,
        Some(c) => match st.cursors.lock().get(c) {
            Some(k) => Some(k),
            None => return Reply::err("invalid cursor"),
        },
        None => return Reply::err("invalid cursor"),
    };
    let mut pat: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut i = 1;
    while i < a.len() {
        match (upper(&a[i]).as_str(), a.get(i + 1)) {
            ("MATCH", Some(p)) => pat = Some(p),
            ("COUNT", Some(n)) => match parse_decimal(n) {
                Some(n) if n >= 1 => count = (n as usize).min(10_000),
                Some(_) => return syntax(),
                None => return not_integer(),
            },
            ("TYPE", Some(t)) => {
                if upper(t) != "STRING" {
                    // Every key is a string: another type matches nothing.
                    return Reply::Array(vec![Reply::bulk("0"), Reply::Array(Vec::new())]);
                }
            }
            _ => return syntax(),
        }
        i += 2;
    }
    let (keys, next) = match page(node, b"", after, count).await {
        Ok(p) => p,
        Err(e) => return e,
    };
    let keys = keys
        .into_iter()
        .filter(|k| pat.is_none_or(|p| glob::matches(p, k)))
        .map(Reply::Bulk)
        .collect();
    let cursor = next.map_or(0, |k| st.cursors.lock().put(k)).to_string();
    Reply::Array(vec![Reply::bulk(cursor), Reply::Array(keys)])
}

async fn flushdb(node: &NodeHandle) -> Reply {
    loop {
        // Always from the start: the page's keys are gone by the next round.
        let (keys, next) = match page(node, b"", None, PAGE).await {
            Ok(p) => p,
            Err(e) => return e,
        };
        if keys.is_empty() {
            return Reply::ok();
        }
        let ops = keys.iter().map(|k| BatchOp::Delete(k.clone())).collect();
        match node.call(Request::Batch { ops }).await {
            Response::Written { .. } => {}
            // In a cluster a page spans nodes: delete its keys one by one.
            Response::Error {
                kind: ErrorKind::SpansNodes,
                ..
            } => {
                for k in keys {
                    match node
                        .call(Request::Delete {
                            key: k,
                            cond: Condition::None,
                        })
                        .await
                    {
                        Response::Deleted { .. } | Response::NotFound => {}
                        other => return unexpected(&other),
                    }
                }
            }
            other => return unexpected(&other),
        }
        let _ = next;
    }
}
