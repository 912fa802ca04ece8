//! The ZooKeeper coordinator (`zookeeper-client`).
//!
//! Layout under `{root}/{cluster}`:
//! ```text
//! members/{node id}     ephemeral   {"id","http","peer"}     one per live node
//! election/c-NNNNNNNNNN ephemeral+sequential   node id       candidacies
//! state                 persistent  {"epoch","version","leader","owners":[...],"moving","leaving","disks","min_insync","replicas":[{"epoch","backups","learners","eligible"}]}
//! ```
//! Election is the ZooKeeper recipe: every node creates a sequential candidacy and watches only
//! the candidacy just before its own (no herd when the leader dies); the lowest is elected. The
//! node steps down on `Disconnected`, which the client reports as soon as the connection drops,
//! long before the server's session expiry reaches it. `state` is written only with the version
//! the writer last read, so a deposed leader's write fails.
//!
//! One session at a time: when it expires, the coordinator reports `Expired`, opens a new
//! session, registers again and stands again.

use std::time::Duration;

use corecache_core::cluster::{ClusterState, CoordCommand, CoordEvent, Member, PartReplicas};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use zookeeper_client as zk;

use crate::coord::Coordinator;

/// Where and how to reach ZooKeeper.
#[derive(Clone, Debug)]
pub struct ZkConfig {
    /// `host:port[,host:port...]`
    pub hosts: String,
    /// Parent znode of every cluster (e.g. `/corecache`).
    pub root: String,
    /// The cluster's name: its znodes live under `{root}/{cluster}`.
    pub cluster: String,
    pub session_timeout: Duration,
}

pub struct ZkCoordinator {
    cfg: ZkConfig,
}

impl ZkCoordinator {
    pub fn new(cfg: ZkConfig) -> ZkCoordinator {
        ZkCoordinator { cfg }
    }
}

struct Paths {
    base: String,
    members: String,
    election: String,
    state: String,
}

impl Paths {
    fn new(cfg: &ZkConfig) -> Paths {
        let root = cfg.root.trim_end_matches('/');
        let base = format!("{root}/{}", cfg.cluster);
        Paths {
            members: format!("{base}/members"),
            election: format!("{base}/election"),
            state: format!("{base}/state"),
            base,
        }
    }
}

pub fn state_to_json(s: &ClusterState) -> Vec<u8> {
    json!({
        "epoch": s.epoch,
        "version": s.version,
        "leader": s.leader,
        "owners": s.owners,
        "moving": s.moving.iter().map(|(p, to)| (p.to_string(), json!(to))).collect::<serde_json::Map<_, _>>(),
        "leaving": s.leaving,
        "disks": s.disks,
        "min_insync": s.min_insync,
        "replicas": s.replicas.iter().map(|r| json!({
            "epoch": r.epoch,
            "backups": r.backups,
            "learners": r.learners,
            "eligible": r.eligible,
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

pub fn state_from_json(data: &[u8]) -> Result<ClusterState, String> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("cluster state is not JSON: {e}"))?;
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_u64())
            .ok_or_else(|| format!("cluster state has no number `{k}`"))
    };
    let owners = v
        .get("owners")
        .and_then(|o| o.as_array())
        .ok_or("cluster state has no `owners`")?
        .iter()
        .map(|o| o.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or("cluster state `owners` must be strings")?;
    if owners.is_empty() || owners.len() > usize::from(u16::MAX) {
        return Err(format!("cluster state has {} partitions", owners.len()));
    }
    let mut moving = std::collections::BTreeMap::new();
    if let Some(m) = v.get("moving") {
        let m = m
            .as_object()
            .ok_or("cluster state `moving` must be an object")?;
        for (p, to) in m {
            let p: u16 = p
                .parse()
                .ok()
                .filter(|p| usize::from(*p) < owners.len())
                .ok_or_else(|| format!("cluster state `moving` names partition `{p}`"))?;
            let to = to
                .as_str()
                .ok_or("cluster state `moving` targets must be strings")?;
            moving.insert(p, to.to_string());
        }
    }
    let leaving = match v.get("leaving") {
        None => Vec::new(),
        Some(l) => l
            .as_array()
            .ok_or("cluster state `leaving` must be an array")?
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("cluster state `leaving` must be strings")?,
    };
    let replicas = match v.get("replicas") {
        None => Vec::new(),
        Some(r) => {
            let r = r
                .as_array()
                .ok_or("cluster state `replicas` must be an array")?;
            if !r.is_empty() && r.len() != owners.len() {
                return Err(format!(
                    "cluster state has {} partitions but replicas for {}",
                    owners.len(),
                    r.len()
                ));
            }
            r.iter()
                .map(part_from_json)
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let mut disks = std::collections::BTreeMap::new();
    if let Some(d) = v.get("disks") {
        let d = d
            .as_object()
            .ok_or("cluster state `disks` must be an object")?;
        for (node, id) in d {
            let id = id
                .as_u64()
                .ok_or("cluster state `disks` values must be numbers")?;
            disks.insert(node.clone(), id);
        }
    }
    Ok(ClusterState {
        moving,
        leaving,
        replicas,
        disks,
        min_insync: v.get("min_insync").and_then(|x| x.as_u64()).unwrap_or(0) as usize,
        epoch: num("epoch")?,
        version: num("version")?,
        leader: v
            .get("leader")
            .and_then(|x| x.as_str())
            .ok_or("cluster state has no `leader`")?
            .to_string(),
        owners,
    })
}

/// One partition's entry of `replicas`: `{"epoch", "backups", "learners"}`.
fn part_from_json(v: &serde_json::Value) -> Result<PartReplicas, String> {
    let names = |k: &str| -> Result<Vec<String>, String> {
        match v.get(k) {
            None => Ok(Vec::new()),
            Some(x) => x
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|n| n.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| format!("cluster state replica `{k}` must be strings")),
        }
    };
    Ok(PartReplicas {
        epoch: v
            .get("epoch")
            .and_then(|e| e.as_u64())
            .ok_or("cluster state replica entry has no number `epoch`")?,
        backups: names("backups")?,
        learners: names("learners")?,
        eligible: names("eligible")?,
    })
}

fn member_to_json(m: &Member) -> Vec<u8> {
    json!({"id": m.id, "http": m.http, "peer": m.peer, "disk": m.disk})
        .to_string()
        .into_bytes()
}

fn member_from_json(data: &[u8]) -> Option<Member> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    Some(Member {
        id: v.get("id")?.as_str()?.to_string(),
        http: v.get("http")?.as_str()?.to_string(),
        peer: v.get("peer")?.as_str()?.to_string(),
        // Absent from a node of an older version: unknown.
        disk: v.get("disk").and_then(|d| d.as_u64()).unwrap_or(0),
    })
}

impl Coordinator for ZkCoordinator {
    fn start(
        self: Box<Self>,
        me: Member,
        events: mpsc::UnboundedSender<CoordEvent>,
    ) -> mpsc::UnboundedSender<CoordCommand> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(self.cfg, me, events, rx));
        tx
    }
}

/// Sessions, one after another, until the node goes away.
async fn run(
    cfg: ZkConfig,
    me: Member,
    events: mpsc::UnboundedSender<CoordEvent>,
    mut cmds: mpsc::UnboundedReceiver<CoordCommand>,
) {
    let paths = Paths::new(&cfg);
    let mut backoff = Duration::from_millis(100);
    loop {
        if events.is_closed() {
            return;
        }
        let client = match connect(&cfg, &paths).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, hosts = %cfg.hosts, "cannot reach ZooKeeper; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        match session(&client, &paths, &me, &events, &mut cmds).await {
            SessionEnd::NodeGone => return,
            SessionEnd::Expired(why) => {
                tracing::warn!(reason = %why, "ZooKeeper session ended; starting a new one");
                let _ = events.send(CoordEvent::Expired);
            }
        }
    }
}

async fn connect(cfg: &ZkConfig, paths: &Paths) -> Result<zk::Client, String> {
    let client = zk::Client::connector()
        .with_session_timeout(cfg.session_timeout)
        .with_connection_timeout(cfg.session_timeout / 2)
        .connect(&cfg.hosts)
        .await
        .map_err(|e| e.to_string())?;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for p in [&paths.base, &paths.members, &paths.election] {
        match client.mkdir(p, &persistent).await {
            Ok(()) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(format!("cannot create {p}: {e}")),
        }
    }
    Ok(client)
}

enum SessionEnd {
    NodeGone,
    Expired(String),
}

/// One session: register, stand for election, watch members and state, run commands.
async fn session(
    client: &zk::Client,
    paths: &Paths,
    me: &Member,
    events: &mpsc::UnboundedSender<CoordEvent>,
    cmds: &mut mpsc::UnboundedReceiver<CoordCommand>,
) -> SessionEnd {
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let member_path = format!("{}/{}", paths.members, me.id);
    // A previous process with our id may have left its entry behind (its session has not
    // expired yet): ours replaces it.
    loop {
        match client
            .create(&member_path, &member_to_json(me), &ephemeral)
            .await
        {
            Ok(_) => break,
            Err(zk::Error::NodeExists) => {
                let _ = client.delete(&member_path, None).await;
            }
            Err(e) => return SessionEnd::Expired(format!("cannot register: {e}")),
        }
    }
    let sequential = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let candidacy = match client
        .create(
            &format!("{}/c-", paths.election),
            me.id.as_bytes(),
            &sequential,
        )
        .await
    {
        Ok((_, seq)) => format!("c-{seq}"),
        Err(e) => return SessionEnd::Expired(format!("cannot stand for election: {e}")),
    };
    let _ = events.send(CoordEvent::Connected);

    // Watch loops re-read everything after each reconnection (`epoch` bumps).
    let (epoch_tx, epoch_rx) = watch::channel(0u64);
    let tasks = vec![
        tokio::spawn(members_loop(
            client.clone(),
            paths.members.clone(),
            events.clone(),
            epoch_rx.clone(),
        )),
        tokio::spawn(state_loop(
            client.clone(),
            paths.state.clone(),
            events.clone(),
            epoch_rx.clone(),
        )),
        tokio::spawn(election_loop(
            client.clone(),
            paths.election.clone(),
            candidacy,
            events.clone(),
            epoch_rx,
        )),
    ];
    let mut states = client.state_watcher();
    let mut reconnects = 0u64;
    let end = loop {
        tokio::select! {
            s = states.changed() => match s {
                zk::SessionState::Disconnected => {
                    tracing::warn!("lost the ZooKeeper connection; stepping down");
                    let _ = events.send(CoordEvent::Disconnected);
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    let _ = events.send(CoordEvent::Connected);
                    reconnects += 1;
                    let _ = epoch_tx.send(reconnects);
                }
                other => break SessionEnd::Expired(format!("{other:?}")),
            },
            cmd = cmds.recv() => match cmd {
                None => break SessionEnd::NodeGone,
                Some(CoordCommand::WriteState { state, expected }) => {
                    let data = state_to_json(&state);
                    let r = if expected < 0 {
                        let persistent =
                            zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                        client.create(&paths.state, &data, &persistent).await.map(|_| ())
                    } else {
                        let v = i32::try_from(expected).unwrap_or(i32::MAX);
                        client.set_data(&paths.state, &data, Some(v)).await.map(|_| ())
                    };
                    let (ok, message) = match r {
                        Ok(()) => (true, String::new()),
                        Err(e) => (false, e.to_string()),
                    };
                    if !ok {
                        tracing::info!(error = %message, "a conditional cluster-state write was refused");
                    }
                    let _ = events.send(CoordEvent::WriteDone { ok, message });
                }
            },
        }
    };
    for t in tasks {
        t.abort();
    }
    end
}

/// Waits for a one-shot watch to fire, or for a reconnection (after which the caller re-reads).
async fn fired_or_reconnected(w: zk::OneshotWatcher, epoch: &mut watch::Receiver<u64>) {
    tokio::select! {
        _ = w.changed() => {}
        _ = epoch.changed() => {}
    }
}

/// On a failed read: wait a little, or for a reconnection.
async fn pause(epoch: &mut watch::Receiver<u64>) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        _ = epoch.changed() => {}
    }
}

async fn members_loop(
    client: zk::Client,
    dir: String,
    events: mpsc::UnboundedSender<CoordEvent>,
    mut epoch: watch::Receiver<u64>,
) {
    loop {
        let (children, w) = match client.list_and_watch_children(&dir).await {
            Ok(x) => x,
            Err(_) => {
                pause(&mut epoch).await;
                continue;
            }
        };
        let mut members = Vec::new();
        for c in children {
            if let Ok((data, _)) = client.get_data(&format!("{dir}/{c}")).await {
                if let Some(m) = member_from_json(&data) {
                    members.push(m);
                }
            }
        }
        members.sort();
        if events.send(CoordEvent::Members(members)).is_err() {
            return;
        }
        fired_or_reconnected(w, &mut epoch).await;
    }
}

async fn state_loop(
    client: zk::Client,
    path: String,
    events: mpsc::UnboundedSender<CoordEvent>,
    mut epoch: watch::Receiver<u64>,
) {
    loop {
        let (event, w) = match client.get_and_watch_data(&path).await {
            Ok((data, stat, w)) => match state_from_json(&data) {
                Ok(s) => (
                    CoordEvent::State {
                        state: Some(s),
                        stamp: i64::from(stat.version),
                    },
                    w,
                ),
                Err(e) => {
                    tracing::error!(error = %e, %path, "unreadable cluster state");
                    pause(&mut epoch).await;
                    continue;
                }
            },
            Err(zk::Error::NoNode) => match client.check_and_watch_stat(&path).await {
                // Created between the two calls: read it.
                Ok((Some(_), _)) => continue,
                Ok((None, w)) => (
                    CoordEvent::State {
                        state: None,
                        stamp: -1,
                    },
                    w,
                ),
                Err(_) => {
                    pause(&mut epoch).await;
                    continue;
                }
            },
            Err(_) => {
                pause(&mut epoch).await;
                continue;
            }
        };
        if events.send(event).is_err() {
            return;
        }
        fired_or_reconnected(w, &mut epoch).await;
    }
}

/// The election recipe: elected when our candidacy is the lowest; otherwise watch the one
/// just before ours.
async fn election_loop(
    client: zk::Client,
    dir: String,
    mine: String,
    events: mpsc::UnboundedSender<CoordEvent>,
    mut epoch: watch::Receiver<u64>,
) {
    loop {
        let mut children = match client.list_children(&dir).await {
            Ok(c) => c,
            Err(_) => {
                pause(&mut epoch).await;
                continue;
            }
        };
        // Sequence numbers are fixed-width, so names sort by them.
        children.sort();
        let Some(at) = children.iter().position(|c| *c == mine) else {
            // Our candidacy is gone: only an expired session does that; the session loop
            // will notice and start over.
            pause(&mut epoch).await;
            continue;
        };
        if at == 0 {
            if events.send(CoordEvent::Elected).is_err() {
                return;
            }
            // Stay elected until a reconnection asks us to check again.
            let _ = epoch.changed().await;
            continue;
        }
        let before = format!("{dir}/{}", children[at - 1]);
        match client.check_and_watch_stat(&before).await {
            Ok((Some(_), w)) => fired_or_reconnected(w, &mut epoch).await,
            Ok((None, _)) => continue,
            Err(_) => pause(&mut epoch).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_json_round_trips_and_rejects_junk() {
        let s = ClusterState {
            epoch: 3,
            version: 9,
            leader: "n1".into(),
            owners: vec!["n1".into(), "n2".into()],
            moving: [(1u16, "n3".to_string())].into_iter().collect(),
            leaving: vec!["n2".into()],
            replicas: Vec::new(),
            disks: [("n1".to_string(), 77u64)].into_iter().collect(),
            min_insync: 2,
        };
        assert_eq!(state_from_json(&state_to_json(&s)).unwrap(), s);
        let mut r = s.clone();
        r.replicas = vec![
            PartReplicas {
                epoch: 4,
                backups: vec!["n2".into(), "n3".into()],
                learners: vec![],
                eligible: vec!["n4".into()],
            },
            PartReplicas {
                epoch: 1,
                backups: vec![],
                learners: vec!["n1".into()],
                eligible: vec![],
            },
        ];
        assert_eq!(state_from_json(&state_to_json(&r)).unwrap(), r);
        // A state written before replicas existed reads as a cluster without them.
        let old = br#"{"epoch":1,"version":1,"leader":"a","owners":["a","b"]}"#;
        assert!(state_from_json(old).unwrap().replicas.is_empty());
        let short =
            br#"{"epoch":1,"version":1,"leader":"a","owners":["a","b"],"replicas":[{"epoch":1}]}"#;
        assert!(state_from_json(short).is_err());
        assert!(state_from_json(b"{}").is_err());
        assert!(state_from_json(b"not json").is_err());
        assert!(state_from_json(br#"{"epoch":1,"version":1,"leader":"a","owners":[]}"#).is_err());
        assert!(state_from_json(br#"{"epoch":1,"version":1,"leader":"a","owners":[1]}"#).is_err());
    }
}
