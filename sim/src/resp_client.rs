//! Clients that speak the Redis protocol to the real RESP front-end: pipelines of SET, GET,
//! DEL, INCR and MSETNX, every command recorded for the checker like an HTTP operation.
//!
//! How a reply becomes an outcome: a reply that says what happened is known; `-ERR` (a wrong
//! type, a batch spanning nodes, a value over a limit) and `-TRYAGAIN` (refused: no leader, a
//! stall, a moving partition) say nothing was done, so the command is left out of the check;
//! `-UNCERTAIN`, an internal error, a timeout or a broken connection may or may not have taken
//! effect, so the command's outcome is unknown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::history::{Op, OpKind, Outcome};
use crate::workload::Recorder;
use crate::{node_name, Config, Rng, REQUEST_TIMEOUT, RESP_PORT};

/// One reply, as far as these commands need.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

/// Parses one reply from the front of `buf`: `None` until it is whole.
fn parse(buf: &[u8]) -> Option<(Reply, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..end]).ok()?;
    let head = end + 2;
    match buf.first()? {
        b'+' => Some((Reply::Simple(line.to_string()), head)),
        b'-' => Some((Reply::Error(line.to_string()), head)),
        b':' => Some((Reply::Int(line.parse().ok()?), head)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Reply::Bulk(None), head));
            }
            let n = n as usize;
            let body = buf.get(head..head + n)?;
            buf.get(head + n..head + n + 2)?;
            Some((Reply::Bulk(Some(body.to_vec())), head + n + 2))
        }
        // Anything else is a protocol error: stop reading (the rest are unknown).
        _ => None,
    }
}

fn encode(args: &[Vec<u8>], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One command of a pipeline, and the per-key operations it stands for.
struct Command {
    args: Vec<Vec<u8>>,
    /// (key, kind) per key it touches.
    keys: Vec<(String, OpKind)>,
}

/// The outcome of `kind` on one key, from the command's reply.
fn outcome(kind: &OpKind, reply: Option<&Reply>) -> Outcome {
    match (kind, reply) {
        (OpKind::Get, Some(Reply::Bulk(v))) => {
            Outcome::Read(v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
        }
        (OpKind::Put(_), Some(Reply::Simple(s))) if s == "OK" => Outcome::Ok,
        (OpKind::Delete, Some(Reply::Int(1))) => Outcome::Ok,
        (OpKind::Delete, Some(Reply::Int(0))) => Outcome::NotFound,
        (OpKind::Incr(_), Some(Reply::Int(n))) => Outcome::Counted(*n),
        // MSETNX: 1, every key was absent and is set; 0, none was set.
        (OpKind::Cas { .. }, Some(Reply::Int(1))) => Outcome::Ok,
        (OpKind::Cas { .. }, Some(Reply::Int(0))) => Outcome::Failed,
        (_, Some(Reply::Error(e)))
            if e.starts_with("TRYAGAIN ")
                || (e.starts_with("ERR ") && !e.starts_with("ERR internal error")) =>
        {
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    }
}

/// Sends one pipeline to `node` and reads the replies in order (as many as arrive in time).
async fn exchange(node: &str, commands: &[Command], rec: &Recorder) -> Vec<(Option<Reply>, u64)> {
    let mut wire = Vec::new();
    for c in commands {
        encode(&c.args, &mut wire);
    }
    let mut got: Vec<(Option<Reply>, u64)> = Vec::new();
    let go = async {
        let mut s = turmoil::net::TcpStream::connect((node, RESP_PORT))
            .await
            .ok()?;
        s.write_all(&wire).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 8192];
        while got.len() < commands.len() {
            while let Some((r, used)) = parse(&buf) {
                buf.drain(..used);
                got.push((Some(r), rec.tick()));
                if got.len() == commands.len() {
                    return Some(());
                }
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, go).await;
    got
}

/// A random command on random keys (`n` makes its values unique).
fn command(rng: &mut Rng, cfg: &Config, client: usize, n: u64) -> Command {
    let key = |rng: &mut Rng| format!("k{}", rng.below(cfg.keys as u64));
    // Integers (so INCR works on them), unique per client and command.
    let value = |i: u64| ((client as u64 + 1) * 10_000_000 + n * 4 + i).to_string();
    let k = key(rng);
    match rng.below(100) {
        0..=24 => Command {
            args: vec![
                b"SET".to_vec(),
                k.clone().into_bytes(),
                value(0).into_bytes(),
            ],
            keys: vec![(k, OpKind::Put(value(0)))],
        },
        25..=49 => Command {
            args: vec![b"GET".to_vec(), k.clone().into_bytes()],
            keys: vec![(k, OpKind::Get)],
        },
        50..=59 => Command {
            args: vec![b"DEL".to_vec(), k.clone().into_bytes()],
            keys: vec![(k, OpKind::Delete)],
        },
        60..=89 => Command {
            args: vec![b"INCR".to_vec(), k.clone().into_bytes()],
            keys: vec![(k, OpKind::Incr(1))],
        },
        _ => {
            // One key or two (two often live on different nodes: refused, nothing written).
            let mut args = vec![b"MSETNX".to_vec()];
            let mut keys = Vec::new();
            let mut seen = BTreeMap::new();
            for i in 0..1 + rng.below(2) {
                let k = if i == 0 { k.clone() } else { key(rng) };
                if seen.insert(k.clone(), ()).is_some() {
                    continue;
                }
                args.push(k.clone().into_bytes());
                args.push(value(i + 1).into_bytes());
                keys.push((
                    k,
                    OpKind::Cas {
                        expect: None,
                        new: value(i + 1),
                    },
                ));
            }
            Command { args, keys }
        }
    }
}

/// What the RESP clients did, for the sweep's counters.
#[derive(Default)]
pub(crate) struct RespTally {
    pub(crate) pipelines: usize,
    pub(crate) commands: usize,
}

/// One RESP client: pipelines of one to four commands through random nodes until `until`.
pub(crate) async fn client_loop(
    rec: Arc<Recorder>,
    cfg: Config,
    client: usize,
    until: Duration,
    tally: Arc<parking_lot::Mutex<RespTally>>,
) {
    let mut rng = Rng::new(cfg.seed ^ (0x8E59_0000 + client as u64).wrapping_mul(0x9E37_79B9));
    let mut n = 0u64;
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        let up = cfg.nodes_up_at(turmoil::sim_elapsed().unwrap_or_default());
        let node = node_name(rng.below(up as u64) as usize);
        let commands: Vec<Command> = (0..1 + rng.below(4))
            .map(|_| {
                n += 1;
                command(&mut rng, &cfg, client, n)
            })
            .collect();
        *rec.in_flight.lock().entry(node.clone()).or_default() += 1;
        let calls: Vec<u64> = commands.iter().map(|_| rec.tick()).collect();
        let replies = exchange(&node, &commands, &rec).await;
        if let Some(c) = rec.in_flight.lock().get_mut(&node) {
            *c -= 1;
        }
        {
            let mut t = tally.lock();
            t.pipelines += 1;
            t.commands += commands.len();
        }
        for (i, c) in commands.into_iter().enumerate() {
            let (reply, ret) = match replies.get(i) {
                Some((r, at)) => (r.clone(), Some(*at)),
                None => (None, None),
            };
            for (key, kind) in c.keys {
                let outcome = outcome(&kind, reply.as_ref());
                let known = !matches!(outcome, Outcome::Unknown | Outcome::Failed);
                rec.ops.lock().push(Op {
                    client,
                    node: node.clone(),
                    key,
                    kind,
                    call: calls[i],
                    ret: if known { ret } else { None },
                    outcome,
                    detail: format!("{reply:?}").chars().take(200).collect(),
                    resp: true,
                });
            }
        }
        tokio::time::sleep(rng.ms(0, 40)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        assert_eq!(parse(b"+OK\r\n"), Some((Reply::Simple("OK".into()), 5)));
        assert_eq!(parse(b":-3\r\n:1"), Some((Reply::Int(-3), 5)));
        assert_eq!(parse(b"$-1\r\n"), Some((Reply::Bulk(None), 5)));
        assert_eq!(
            parse(b"$3\r\nabc\r\n"),
            Some((Reply::Bulk(Some(b"abc".to_vec())), 9))
        );
        assert_eq!(parse(b"$3\r\nab"), None);
        assert_eq!(parse(b"-TRYAGAIN x\r\n").map(|r| r.1), Some(13));
        assert_eq!(parse(b"+OK"), None);
        assert_eq!(parse(b"*1\r\n"), None);
    }

    #[test]
    fn errors_tell_nothing_done_from_unknown() {
        let put = OpKind::Put("1".into());
        let err = |s: &str| Reply::Error(s.into());
        assert_eq!(
            outcome(&put, Some(&err("ERR syntax error"))),
            Outcome::Failed
        );
        assert_eq!(outcome(&put, Some(&err("TRYAGAIN later"))), Outcome::Failed);
        assert_eq!(
            outcome(&put, Some(&err("UNCERTAIN lost"))),
            Outcome::Unknown
        );
        assert_eq!(
            outcome(&put, Some(&err("ERR internal error: x"))),
            Outcome::Unknown
        );
        assert_eq!(outcome(&put, None), Outcome::Unknown);
        assert_eq!(
            outcome(&OpKind::Incr(1), Some(&Reply::Int(4))),
            Outcome::Counted(4)
        );
    }
}
