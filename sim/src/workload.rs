//! The client host: HTTP clients (and RESP clients, [`crate::resp_client`]) doing random
//! operations on random keys through random nodes, every one recorded for the checker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use crate::history::{Op, OpKind, Outcome};
use crate::resp_client::{self, RespTally};
use crate::{node_name, Config, Rng, HTTP_PORT, REQUEST_TIMEOUT, STARTUP};

/// An HTTP answer as the workload sees it.
struct Answer {
    status: u16,
    body: Vec<u8>,
    etag: Option<u64>,
}

async fn request(
    node: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Option<Answer> {
    let go = async {
        let stream = turmoil::net::TcpStream::connect((node, HTTP_PORT))
            .await
            .ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", node);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b.body(Full::new(hyper::body::Bytes::from(body))).ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim_matches('"').parse().ok());
        let body = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
        Some(Answer { status, body, etag })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, go)
        .await
        .ok()
        .flatten()
}

/// The recorded history, shared by the client tasks.
#[derive(Default)]
pub(crate) struct Recorder {
    clock: AtomicU64,
    pub(crate) ops: Mutex<Vec<Op>>,
    /// Requests in flight per node (for "a crash with writes in flight").
    pub(crate) in_flight: Mutex<BTreeMap<String, usize>>,
}

impl Recorder {
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Runs one operation against `node` and records it.
async fn perform(
    rec: &Recorder,
    client: usize,
    node: &str,
    key: &str,
    kind: OpKind,
    cas_version: Option<u64>,
) -> (Outcome, Option<u64>) {
    let path = format!("/v1/kv/{key}");
    *rec.in_flight.lock().entry(node.to_string()).or_default() += 1;
    let call = rec.tick();
    let answer = match &kind {
        OpKind::Get => request(node, "GET", &path, &[], Vec::new()).await,
        OpKind::Put(v) => request(node, "PUT", &path, &[], v.clone().into_bytes()).await,
        OpKind::Delete => request(node, "DELETE", &path, &[], Vec::new()).await,
        OpKind::Cas { expect, new } => {
            let h = match (expect, cas_version) {
                (None, _) => vec![("if-none-match", "*".to_string())],
                (Some(_), Some(v)) => vec![("if-match", format!("\"{v}\""))],
                (Some(_), None) => vec![("if-match", "\"0\"".to_string())],
            };
            request(node, "PUT", &path, &h, new.clone().into_bytes()).await
        }
        // HTTP has no increment: only the RESP clients send them.
        OpKind::Incr(_) => None,
    };
    let ret = rec.tick();
    if std::env::var("CORECACHE_TRACE_KEY").ok().as_deref() == Some(key) {
        eprintln!(
            "trace {} ms [{call}..{ret}] c{client} via {node} {kind:?} -> {:?}",
            turmoil::sim_elapsed().unwrap_or_default().as_millis(),
            answer.as_ref().map(|a| (
                a.status,
                String::from_utf8_lossy(&a.body)
                    .chars()
                    .take(120)
                    .collect::<String>()
            ))
        );
    }
    if let Some(n) = rec.in_flight.lock().get_mut(node) {
        *n -= 1;
    }
    let (outcome, etag) = match (&kind, &answer) {
        (OpKind::Get, Some(a)) if a.status == 200 => (
            Outcome::Read(Some(String::from_utf8_lossy(&a.body).into_owned())),
            a.etag,
        ),
        (OpKind::Get, Some(a)) if a.status == 404 => (Outcome::Read(None), None),
        (OpKind::Put(_), Some(a)) if a.status == 200 => (Outcome::Ok, a.etag),
        (OpKind::Delete, Some(a)) if a.status == 204 => (Outcome::Ok, None),
        (OpKind::Delete, Some(a)) if a.status == 404 => (Outcome::NotFound, None),
        (OpKind::Cas { .. }, Some(a)) if a.status == 200 => (Outcome::Ok, a.etag),
        (OpKind::Cas { .. }, Some(a)) if a.status == 412 => (Outcome::CasFailed, None),
        // The node says when an outcome is unknown (a forward lost on the way, a failed
        // fsync: `reason` "outcome_unknown"); any other 503 means it was not carried out.
        (_, Some(a))
            if a.status == 503
                && !String::from_utf8_lossy(&a.body).contains(r#""reason":"outcome_unknown""#) =>
        {
            (Outcome::Failed, None)
        }
        _ => (Outcome::Unknown, None),
    };
    let known = !matches!(outcome, Outcome::Unknown | Outcome::Failed);
    let detail = match &answer {
        None => "no answer".to_string(),
        Some(a) if a.status >= 300 => format!(
            "{} {}",
            a.status,
            String::from_utf8_lossy(&a.body[..a.body.len().min(200)])
        ),
        Some(a) => a.status.to_string(),
    };
    rec.ops.lock().push(Op {
        client,
        node: node.to_string(),
        key: key.to_string(),
        kind,
        call,
        ret: known.then_some(ret),
        outcome: outcome.clone(),
        detail,
        resp: false,
    });
    (outcome, etag)
}

/// One client: random operations on random keys through random nodes until `until`.
async fn client_loop(rec: Arc<Recorder>, cfg: Config, client: usize, until: Duration) {
    let mut rng = Rng::new(cfg.seed ^ (0xC11E_0000 + client as u64).wrapping_mul(0x9E37_79B9));
    // The last value (and its version) this client saw or wrote per key, for If-Match.
    let mut known: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut n = 0u64;
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        let up = cfg.nodes_up_at(turmoil::sim_elapsed().unwrap_or_default());
        let node = node_name(rng.below(up as u64) as usize);
        let key = format!("k{}", rng.below(cfg.keys as u64));
        n += 1;
        // Unique, and long enough that a few keys fill several levels of the tree.
        let value = format!("c{client}-{n}-{}", "v".repeat(cfg.value_pad));
        let pick = rng.below(100);
        let (g, p, d) = cfg.mix;
        let (kind, version) = if pick < g {
            (OpKind::Get, None)
        } else if pick < g + p {
            (OpKind::Put(value.clone()), None)
        } else if pick < g + p + d {
            (OpKind::Delete, None)
        } else {
            // If-Match in every run: versions live in the value envelope, so they survive
            // partition moves. (Before they did, this sweep failed on its first run with a
            // late joiner.)
            let if_match = rng.chance(70);
            match known.get(&key) {
                Some((v, ver)) if if_match => (
                    OpKind::Cas {
                        expect: Some(v.clone()),
                        new: value.clone(),
                    },
                    Some(*ver),
                ),
                _ => (
                    OpKind::Cas {
                        expect: None,
                        new: value.clone(),
                    },
                    None,
                ),
            }
        };
        let (outcome, etag) = perform(&rec, client, &node, &key, kind.clone(), version).await;
        match (&kind, outcome, etag) {
            // The checker's compare-and-set compares values, the node's compares versions:
            // they agree only for a value written once. Integers are not (RESP's INCR makes the
            // same number again after a delete), so an If-Match is made only from the unique
            // values HTTP clients write.
            (OpKind::Get, Outcome::Read(Some(v)), Some(e)) if v.parse::<i64>().is_err() => {
                known.insert(key, (v, e));
            }
            (OpKind::Get, Outcome::Read(Some(_)), _) => {
                known.remove(&key);
            }
            (OpKind::Put(v), Outcome::Ok, Some(e)) => {
                known.insert(key, (v.clone(), e));
            }
            (OpKind::Cas { new, .. }, Outcome::Ok, Some(e)) => {
                known.insert(key, (new.clone(), e));
            }
            (OpKind::Delete, Outcome::Ok, _) => {
                known.remove(&key);
            }
            _ => {}
        }
        tokio::time::sleep(rng.ms(0, 40)).await;
    }
}

/// The client host: wait for the cluster, run the clients, then check that every key takes a
/// write again and reads back the same through every node.
pub(crate) async fn workload(
    rec: Arc<Recorder>,
    cfg: Config,
    problems: Arc<Mutex<Vec<String>>>,
    resp: Arc<Mutex<RespTally>>,
) {
    tokio::time::sleep(STARTUP).await;
    let until = STARTUP + cfg.fault_phase + cfg.heal_phase;
    let mut tasks: Vec<_> = (0..cfg.clients)
        .map(|c| tokio::spawn(client_loop(rec.clone(), cfg.clone(), c, until)))
        .collect();
    // RESP clients are numbered after the HTTP ones.
    for c in cfg.clients..cfg.clients + cfg.resp_clients {
        let (rec, cfg, resp) = (rec.clone(), cfg.clone(), resp.clone());
        tasks.push(tokio::spawn(resp_client::client_loop(
            rec, cfg, c, until, resp,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Progress after healing: every key must take a write within the deadline.
    let mut rng = Rng::new(cfg.seed ^ 0xF1AA_1000);
    let deadline = turmoil::sim_elapsed().unwrap_or_default() + Duration::from_secs(30);
    for k in 0..cfg.keys {
        let key = format!("k{k}");
        let mut done = false;
        let mut attempt = 0;
        while !done && turmoil::sim_elapsed().unwrap_or_default() < deadline {
            attempt += 1;
            let node = node_name(rng.below(cfg.total_nodes() as u64) as usize);
            let value = format!("final-{k}-{attempt}");
            let (o, _) = perform(&rec, usize::MAX, &node, &key, OpKind::Put(value), None).await;
            done = o == Outcome::Ok;
            if !done {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        if !done {
            problems.lock().push(format!(
                "no progress after healing: no write to {key} succeeded within 30 s"
            ));
        }
    }
    // Read every key back through every node.
    for k in 0..cfg.keys {
        for i in 0..cfg.total_nodes() {
            let key = format!("k{k}");
            perform(&rec, usize::MAX, &node_name(i), &key, OpKind::Get, None).await;
        }
    }
}
