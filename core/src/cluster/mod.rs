//! The cluster's shared state as plain data, and the events and commands that pass between the
//! node and its coordinator (ZooKeeper in `net`, an in-process one for the embedded default, a
//! fake in the simulation).
//!
//! The coordinator does the mechanics (sessions, ephemeral member entries, the election recipe,
//! watches, conditional writes); the node makes every decision (whether it leads, what the
//! partition map becomes) from these events, as a pure function of them. [`store`] is the
//! conditional store every coordinator that is not ZooKeeper keeps the state in.

pub mod store;

pub use store::StateStore;

/// A live member of the cluster, as registered with the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub id: String,
    /// Where its HTTP API listens (`host:port`).
    pub http: String,
    /// Where its peer transport listens (`host:port`).
    pub peer: String,
    /// Its data directory's identity (made when the node first ran on it; 0: unknown). A
    /// node back under the same id with another disk lost what it held.
    pub disk: u64,
}

use std::collections::BTreeMap;

/// Partition moves in flight at once.
pub const MAX_MOVES: usize = 4;

/// What the leader keeps in the coordinator: who leads in which epoch, who owns each partition,
/// which partitions are moving where, and which nodes are leaving. `version` goes up by one
/// with every write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    pub epoch: u64,
    pub version: u64,
    pub leader: String,
    /// Owner of each partition, indexed by partition number.
    pub owners: Vec<String>,
    /// Partition → the node it is being handed to. The owner keeps serving it until the map
    /// flips.
    pub moving: BTreeMap<u16, String>,
    /// Nodes being decommissioned: their partitions move away, and they get none.
    pub leaving: Vec<String>,
    /// Each partition's replica set besides its primary (`owners[p]`), indexed by partition
    /// number; empty in a cluster without replicas (`replication_factor = 1`), and then every
    /// partition is its owner alone at epoch 0.
    pub replicas: Vec<PartReplicas>,
    /// With replicas: each node's disk identity when it was last given a copy. A member whose
    /// disk is another (it came back on an empty one) holds none of its old copies: it leaves
    /// every configuration, as a gone node does, and starts again as a learner.
    pub disks: BTreeMap<String, u64>,
    /// The `min_insync_replicas` of the leader that last claimed an epoch (0: unknown). A
    /// primary commits only with at least this many copies in sync (and its own setting), so
    /// the leader knows that backups it drops below it miss no acknowledged write.
    pub min_insync: usize,
}

/// One partition's configuration besides its primary (PacificA's term): the backups every
/// write must reach before it is acknowledged, the learners being built, and the epoch that
/// fences out every older primary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartReplicas {
    /// Goes up by one with every change of the partition's primary or configuration. A
    /// replica refuses every message of an older epoch.
    pub epoch: u64,
    /// In the configuration with the primary (in sync): a write is acknowledged only once each
    /// of them has it durable, and a new primary is chosen only among them.
    pub backups: Vec<String>,
    /// Being built: sent every write, never waited for, never promoted.
    pub learners: Vec<String>,
    /// Eligible (Kafka's KIP-966): backups dropped while the partition had fewer copies in
    /// sync than [`ClusterState::insync_floor`]. Nothing is committed below that floor, so each
    /// holds every acknowledged write: promotable, never waited for; cleared once the floor is
    /// met again.
    pub eligible: Vec<String>,
}

impl ClusterState {
    /// The state a new cluster starts with: partitions dealt round-robin over the members the
    /// first leader sees (in id order), so a cluster created with several nodes up is balanced.
    /// With `replication_factor` above one, partition `p`'s backups are the members after its
    /// primary in that order (as many as there are: a cluster of fewer members than the factor
    /// starts under-replicated).
    pub fn initial(
        leader: &str,
        members: &[Member],
        partitions: u16,
        replication_factor: usize,
    ) -> ClusterState {
        let mut ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        if !ids.contains(&leader) {
            ids.push(leader);
        }
        ids.sort_unstable();
        ids.dedup();
        let n = usize::from(partitions.max(1));
        let owners = (0..n).map(|p| ids[p % ids.len()].to_string()).collect();
        let copies = replication_factor.clamp(1, ids.len());
        let replicas = if replication_factor > 1 {
            (0..n)
                .map(|p| PartReplicas {
                    epoch: 1,
                    backups: (1..copies)
                        .map(|i| ids[(p + i) % ids.len()].to_string())
                        .collect(),
                    learners: Vec::new(),
                    eligible: Vec::new(),
                })
                .collect()
        } else {
            Vec::new()
        };
        ClusterState {
            epoch: 1,
            version: 1,
            leader: leader.to_string(),
            owners,
            moving: BTreeMap::new(),
            leaving: Vec::new(),
            disks: if replication_factor > 1 {
                members
                    .iter()
                    .filter(|m| m.disk != 0)
                    .map(|m| (m.id.clone(), m.disk))
                    .collect()
            } else {
                BTreeMap::new()
            },
            replicas,
            min_insync: 0,
        }
    }

    /// The copies in sync (primary and backups) a partition needs to commit: the larger of
    /// `configured` and the state's `min_insync`, but never more than the nodes the cluster has
    /// given copies to (a cluster of one node commits alone). The leader asks with 0.
    pub fn insync_floor(&self, configured: usize) -> usize {
        let want = configured.max(self.min_insync);
        match self.disks.len() {
            0 => want,
            n => want.min(n),
        }
    }

    /// Whether member `m` came back on another disk than the one its copies were on.
    pub fn replaced(&self, m: &Member) -> bool {
        m.disk != 0 && self.disks.get(&m.id).is_some_and(|d| *d != m.disk)
    }

    /// Partition `p`'s replica set besides its primary (empty without replicas).
    pub fn part(&self, p: u16) -> Option<&PartReplicas> {
        self.replicas.get(usize::from(p))
    }

    /// Partition `p`'s epoch (0 in a cluster without replicas).
    pub fn part_epoch(&self, p: u16) -> u64 {
        self.part(p).map_or(0, |r| r.epoch)
    }

    /// Partition `p`'s backups (in sync with the primary).
    pub fn backups(&self, p: u16) -> &[String] {
        self.part(p).map_or(&[], |r| r.backups.as_slice())
    }

    /// Whether any partition has a replica besides its primary.
    pub fn replicated(&self) -> bool {
        self.replicas
            .iter()
            .any(|r| !r.backups.is_empty() || !r.learners.is_empty())
    }

    /// Partitions with fewer copies in sync (primary and backups) than `replication_factor`.
    pub fn under_replicated(&self, replication_factor: usize) -> usize {
        (0..self.owners.len())
            .filter(|&p| 1 + self.backups(p as u16).len() < replication_factor)
            .count()
    }

    /// The same state, one version later.
    pub fn bumped(&self) -> ClusterState {
        let mut s = self.clone();
        s.version += 1;
        s
    }

    /// The leader's rebalancing decision, a pure function of the state and the live members:
    /// abort moves whose source or target is gone, then start moves (at most [`MAX_MOVES`] in
    /// flight) that take partitions off leaving nodes first, then from the most loaded live node
    /// to the least loaded, until loads differ by at most one. A dead node keeps its partitions
    /// (there are no replicas to move them from). `None` if nothing changes.
    ///
    /// A cluster with replicas moves nothing yet: a move there is a change of configuration
    /// (copy to a learner, then promote it), which the plan does not make so far.
    pub fn plan(&self, live: &[String]) -> Option<ClusterState> {
        if self.replicated() && self.moving.is_empty() {
            return None;
        }
        let mut next = self.clone();
        let alive = |id: &str| live.iter().any(|m| m == id);
        next.moving.retain(|p, to| {
            alive(to)
                && self
                    .owners
                    .get(usize::from(*p))
                    .is_some_and(|o| alive(o) && o != to)
        });
        let targets: Vec<&String> = live.iter().filter(|m| !self.leaving.contains(m)).collect();
        if !targets.is_empty() {
            // Loads as they will be once the moves in flight finish.
            let mut load: BTreeMap<String, usize> =
                targets.iter().map(|t| (t.to_string(), 0usize)).collect();
            let mut future_owner: Vec<String> = next.owners.clone();
            for (p, to) in &next.moving {
                future_owner[usize::from(*p)] = to.clone();
            }
            for o in &future_owner {
                if let Some(n) = load.get_mut(o) {
                    *n += 1;
                }
            }
            while next.moving.len() < MAX_MOVES {
                let Some((min_node, min_load)) = load
                    .iter()
                    .min_by_key(|(id, n)| (**n, (*id).clone()))
                    .map(|(id, n)| (id.clone(), *n))
                else {
                    break;
                };
                // A partition to move: first any on a live leaving node, else one from the most
                // loaded target if that is more than one above the least loaded.
                let from_leaving = (0..next.owners.len()).find(|&p| {
                    let o = future_owner[p].as_str();
                    self.leaving.iter().any(|l| l == o)
                        && alive(o)
                        && !next.moving.contains_key(&(p as u16))
                });
                let pick = match from_leaving {
                    Some(p) => Some(p),
                    None => {
                        let Some((max_node, max_load)) = load
                            .iter()
                            .max_by_key(|(id, n)| (**n, std::cmp::Reverse((*id).clone())))
                            .map(|(id, n)| (id.clone(), *n))
                        else {
                            break;
                        };
                        if max_load <= min_load + 1 {
                            None
                        } else {
                            (0..next.owners.len()).rev().find(|&p| {
                                future_owner[p] == max_node
                                    && next.owners[p] == max_node
                                    && !next.moving.contains_key(&(p as u16))
                            })
                        }
                    }
                };
                let Some(p) = pick else { break };
                if let Some(n) = load.get_mut(&future_owner[p]) {
                    *n -= 1;
                }
                if let Some(n) = load.get_mut(&min_node) {
                    *n += 1;
                }
                future_owner[p] = min_node.clone();
                next.moving.insert(p as u16, min_node);
            }
        }
        if next == *self {
            None
        } else {
            next.version += 1;
            Some(next)
        }
    }

    /// Partitions whose primary is not live but which have a live backup to promote (the
    /// leader asks those backups where their logs end before it decides).
    pub fn orphaned(&self, live: &[String]) -> Vec<(u16, Vec<String>)> {
        let alive = |id: &String| live.contains(id);
        (0..self.replicas.len())
            .filter(|&p| !alive(&self.owners[p]))
            .filter_map(|p| {
                let r = &self.replicas[p];
                let outside: &[String] = if crate::bugs::on(crate::bugs::Bug::PromoteOutsideConfig)
                {
                    &r.learners
                } else {
                    &[]
                };
                let cands: Vec<String> = r
                    .backups
                    .iter()
                    .chain(&r.eligible)
                    .chain(outside)
                    .filter(|b| alive(b))
                    .cloned()
                    .collect();
                (!cands.is_empty()).then_some((p as u16, cands))
            })
            .collect()
    }

    /// The leader's replica decisions, a pure function of the state, the live members and
    /// what it has heard; `None` if nothing changes. In order:
    ///
    /// 1. A partition whose primary is gone gets as primary the live backup of its current
    ///    configuration with the most writes (`positions`: node and partition → the epoch and
    ///    number of its last entry; a backup not in it is not promoted); the others stay
    ///    backups. None answered: the partition waits (it is never given to a copy that may
    ///    lack acknowledged writes).
    /// 2. Backups and learners that are not live, or that their primary reported `lagging`
    ///    in the current epoch, leave the configuration (unless the primary is gone too, and
    ///    was not replaced: then nothing changes until a backup is back).
    /// 3. Learners their primary reported `ready` in the current epoch become backups.
    /// 4. A partition with fewer copies than `replication_factor` gets live nodes that hold
    ///    none as learners (the least loaded first, never a leaving node).
    ///
    /// Every change of a partition's primary or backups raises its epoch, and so does a
    /// `lagging` report in which the primary names itself (it restarted, see
    /// `Replication::fences` in `node::replica`).
    pub fn reconfigure(
        &self,
        live: &[String],
        positions: &BTreeMap<(u16, String), (u64, u64)>,
        lagging: &[(u16, u64, String)],
        ready: &[(u16, u64, String)],
        replication_factor: usize,
    ) -> Option<ClusterState> {
        self.reconfigure_reserving(live, &[], positions, lagging, ready, replication_factor)
    }

    /// [`reconfigure`](Self::reconfigure), keeping a place for the nodes in `reserved`: gone,
    /// but for less than `replica_timeout_ms`. Such a node leaves the backups (writes do not
    /// wait for it) but stays a learner, so no other node is given a copy in its place; if it
    /// comes back in time it catches up from the log and is a backup again.
    pub fn reconfigure_reserving(
        &self,
        live: &[String],
        reserved: &[String],
        positions: &BTreeMap<(u16, String), (u64, u64)>,
        lagging: &[(u16, u64, String)],
        ready: &[(u16, u64, String)],
        replication_factor: usize,
    ) -> Option<ClusterState> {
        let mut next = self.clone();
        let alive = |id: &String| live.contains(id);
        let kept = |id: &String| reserved.contains(id) && !live.contains(id);
        let floor = self.insync_floor(0);
        for p in 0..next.replicas.len() {
            let pu = p as u16;
            let old = &self.replicas[p];
            let mut primary = next.owners[p].clone();
            let mut backups: Vec<String> = old.backups.clone();
            if !alive(&primary) {
                let outside: &[String] = if crate::bugs::on(crate::bugs::Bug::PromoteOutsideConfig)
                {
                    &old.learners
                } else {
                    &[]
                };
                // (The bug: a learner that answered is taken first, whatever it holds.)
                let best = outside
                    .iter()
                    .find(|b| alive(b) && positions.contains_key(&(pu, (*b).clone())))
                    .cloned()
                    .or_else(|| {
                        backups
                            .iter()
                            .chain(&old.eligible)
                            .filter(|b| alive(b))
                            .filter_map(|b| positions.get(&(pu, b.clone())).map(|pos| (*pos, b)))
                            .max_by(|(a, x), (b, y)| a.cmp(b).then(y.cmp(x)))
                            .map(|(_, b)| b.clone())
                    });
                match best {
                    Some(b) => {
                        backups.retain(|x| *x != b);
                        primary = b;
                    }
                    // No copy to promote: the configuration stays as it is, gone backups
                    // included: they may be the only ones left with every acknowledged write,
                    // and the first to come back is promoted.
                    None => continue,
                }
            }
            // Gone within the timeout: from the backups (and the old primary) to the learners.
            let mut places: Vec<String> = backups.iter().filter(|b| kept(b)).cloned().collect();
            if primary != self.owners[p] && kept(&self.owners[p]) {
                places.push(self.owners[p].clone());
            }
            backups.retain(|b| {
                alive(b)
                    && !lagging
                        .iter()
                        .any(|(q, e, n)| *q == pu && *e == old.epoch && n == b)
            });
            let mut learners: Vec<String> = old
                .learners
                .iter()
                .filter(|l| (alive(l) || kept(l)) && **l != primary)
                .cloned()
                .collect();
            for n in places {
                if !learners.contains(&n) {
                    learners.push(n);
                }
            }
            for (q, e, n) in ready {
                if *q == pu && *e == old.epoch && learners.contains(n) && *n != primary && alive(n)
                {
                    learners.retain(|l| l != n);
                    backups.push(n.clone());
                }
            }
            // Backups dropped while too few copies are in sync stay promotable: nothing can
            // commit until the floor is met again, so they miss no acknowledged write.
            let mut eligible: Vec<String> = old
                .eligible
                .iter()
                .filter(|e| **e != primary)
                .cloned()
                .collect();
            if 1 + backups.len() < floor {
                for b in &old.backups {
                    if !backups.contains(b) && *b != primary && !eligible.contains(b) {
                        eligible.push(b.clone());
                    }
                }
            }
            let r = &mut next.replicas[p];
            r.backups = backups;
            r.learners = learners;
            r.eligible = eligible;
            next.owners[p] = primary;
        }
        let targets: Vec<&String> = live.iter().filter(|m| !self.leaving.contains(m)).collect();
        next.hand_over_from_leaving(targets.len(), replication_factor);
        // Learners for partitions short of copies (not counting a leaving node's): load is
        // copies held, primary included.
        let mut load: BTreeMap<&String, usize> = targets.iter().map(|t| (*t, 0)).collect();
        for p in 0..next.replicas.len() {
            let r = &next.replicas[p];
            for n in std::iter::once(&next.owners[p])
                .chain(&r.backups)
                .chain(&r.learners)
            {
                if let Some(c) = load.get_mut(n) {
                    *c += 1;
                }
            }
        }
        for p in 0..next.replicas.len() {
            loop {
                let r = &next.replicas[p];
                let held: Vec<&String> = std::iter::once(&next.owners[p])
                    .chain(&r.backups)
                    .chain(&r.learners)
                    .collect();
                let staying = held.iter().filter(|n| !self.leaving.contains(n)).count();
                if staying >= replication_factor {
                    break;
                }
                let Some(pick) = load
                    .iter()
                    .filter(|(n, _)| !held.contains(n))
                    .min_by_key(|(n, c)| (**c, (**n).clone()))
                    .map(|(n, _)| (*n).clone())
                else {
                    break;
                };
                if let Some(c) = load.get_mut(&pick) {
                    *c += 1;
                }
                next.replicas[p].learners.push(pick);
            }
        }
        next.balance_replicas(&targets, replication_factor);
        // Enough copies in sync again: from now on writes commit without the eligible ones.
        for r in &mut next.replicas {
            let clear = !crate::bugs::on(crate::bugs::Bug::KeepEligible);
            if clear && 1 + r.backups.len() >= floor {
                r.eligible.clear();
            }
        }
        // Every change of a partition's primary or backups raises its epoch, once; so does a
        // primary's report naming itself (it restarted, and may have lost entries it sent in
        // this epoch: its next ones must not share their numbers and epoch).
        for p in 0..next.replicas.len() {
            let old = &self.replicas[p];
            let refence = lagging
                .iter()
                .any(|(q, e, n)| usize::from(*q) == p && *e == old.epoch && *n == self.owners[p]);
            if next.owners[p] != self.owners[p]
                || next.replicas[p].backups != old.backups
                || refence
            {
                next.replicas[p].epoch = self.replicas[p].epoch + 1;
            }
        }
        if next == *self {
            None
        } else {
            next.version += 1;
            Some(next)
        }
    }

    /// Decommissions with replicas: a leaving node's learners go; a partition it leads is
    /// handed to a backup that stays (the old primary becomes a backup: every backup has every
    /// acknowledged write, so nothing is lost, and the new primary waits out the old one's
    /// lease); a leaving backup goes once the partition has its copies (the replication factor,
    /// or every staying node) in sync without it. `staying` is the count of live nodes that
    /// are not leaving.
    fn hand_over_from_leaving(&mut self, staying: usize, replication_factor: usize) {
        if self.leaving.is_empty() {
            return;
        }
        let want = replication_factor.min(staying).max(1);
        for p in 0..self.replicas.len() {
            let leaving = &self.leaving;
            let r = &mut self.replicas[p];
            r.learners.retain(|l| !leaving.contains(l));
            if leaving.contains(&self.owners[p]) {
                if let Some(i) = r.backups.iter().position(|b| !leaving.contains(b)) {
                    let b = r.backups.remove(i);
                    let old = std::mem::replace(&mut self.owners[p], b);
                    r.backups.push(old);
                }
                continue; // its backup leaves in a later round, under the new primary
            }
            loop {
                let in_sync = 1 + r.backups.iter().filter(|b| !leaving.contains(b)).count();
                let Some(i) = r.backups.iter().position(|b| leaving.contains(b)) else {
                    break;
                };
                if in_sync < want {
                    break;
                }
                r.backups.remove(i);
            }
        }
    }

    /// Joins with replicas: copies and then primaries are spread evenly over `targets` (live
    /// nodes that are not leaving) by configuration changes, never by a hand-off.
    ///
    /// 1. A partition with more copies in sync than `replication_factor` (a learner that
    ///    became a backup) drops the copy on the most loaded node (a primary's, after handing
    ///    the partition to its least loaded backup: every backup has every acknowledged
    ///    write).
    /// 2. While some node holds two copies more than another, a partition with a copy on
    ///    the first and nothing on the second gets the second as a learner (at most
    ///    [`MAX_MOVES`] such partitions at once); it becomes a backup when ready, and 1 drops
    ///    a copy.
    /// 3. With no copy moving, while some node leads two partitions more than another that
    ///    backs one of them, that partition's primary and that backup swap roles (one a round).
    fn balance_replicas(&mut self, targets: &[&String], replication_factor: usize) {
        if targets.is_empty() || !self.leaving.is_empty() {
            return;
        }
        let load = |s: &ClusterState| -> BTreeMap<String, usize> {
            let mut l: BTreeMap<String, usize> =
                targets.iter().map(|t| ((*t).clone(), 0)).collect();
            for p in 0..s.replicas.len() {
                let r = &s.replicas[p];
                for n in std::iter::once(&s.owners[p])
                    .chain(&r.backups)
                    .chain(&r.learners)
                {
                    if let Some(c) = l.get_mut(n) {
                        *c += 1;
                    }
                }
            }
            l
        };
        // 1. Shrink partitions that have a copy too many: the copy on the most loaded node
        //    goes (if that is the primary's, the least loaded backup takes over first).
        for p in 0..self.replicas.len() {
            while 1 + self.replicas[p].backups.len() > replication_factor {
                let l = load(self);
                let weight = |n: &String| (l.get(n).copied().unwrap_or(usize::MAX), n.clone());
                let r = &self.replicas[p];
                let heaviest = std::iter::once(&self.owners[p])
                    .chain(&r.backups)
                    .max_by_key(|n| weight(n))
                    .cloned();
                let Some(h) = heaviest else { break };
                if h == self.owners[p] {
                    let Some(i) = (0..r.backups.len()).min_by_key(|&i| weight(&r.backups[i]))
                    else {
                        break;
                    };
                    let b = self.replicas[p].backups.remove(i);
                    self.owners[p] = b;
                } else {
                    self.replicas[p].backups.retain(|b| *b != h);
                }
            }
        }
        // 2. Move copies towards the least loaded nodes.
        let mut in_flight = self
            .replicas
            .iter()
            .filter(|r| !r.learners.is_empty())
            .count();
        while in_flight < MAX_MOVES {
            let l = load(self);
            let (Some((min, lo)), Some((max, hi))) = (
                l.iter().min_by_key(|(n, c)| (**c, (*n).clone())),
                l.iter()
                    .max_by_key(|(n, c)| (**c, std::cmp::Reverse((*n).clone()))),
            ) else {
                break;
            };
            if *hi < lo + 2 {
                break;
            }
            let (min, max) = (min.clone(), max.clone());
            let pick = (0..self.replicas.len()).find(|&p| {
                let r = &self.replicas[p];
                r.learners.is_empty()
                    && 1 + r.backups.len() == replication_factor
                    && (r.backups.contains(&max) || self.owners[p] == max)
                    && self.owners[p] != min
                    && !r.backups.contains(&min)
            });
            let Some(p) = pick else { break };
            self.replicas[p].learners.push(min);
            in_flight += 1;
        }
        if in_flight > 0 {
            return;
        }
        // 3. Spread the primaries.
        let mut led: BTreeMap<String, usize> = targets.iter().map(|t| ((*t).clone(), 0)).collect();
        for o in &self.owners {
            if let Some(c) = led.get_mut(o) {
                *c += 1;
            }
        }
        let mut best: Option<(usize, usize, usize)> = None; // (gap, partition, backup index)
        for p in 0..self.replicas.len() {
            let Some(&mine) = led.get(&self.owners[p]) else {
                continue;
            };
            for (i, b) in self.replicas[p].backups.iter().enumerate() {
                let Some(&theirs) = led.get(b) else { continue };
                if mine >= theirs + 2 && best.is_none_or(|(g, _, _)| mine - theirs > g) {
                    best = Some((mine - theirs, p, i));
                }
            }
        }
        if let Some((_, p, i)) = best {
            let b = self.replicas[p].backups.remove(i);
            let old = std::mem::replace(&mut self.owners[p], b);
            self.replicas[p].backups.push(old);
        }
    }

    /// Members that hold their copies: live, and on the disk they had when given them.
    pub fn holding(&self, members: &[Member]) -> Vec<String> {
        members
            .iter()
            .filter(|m| !self.replaced(m))
            .map(|m| m.id.clone())
            .collect()
    }

    /// [`reconfigure`](Self::reconfigure) over `members`: a member back on another disk
    /// counts as gone for the copies it held (a primary's partition is promoted away from
    /// it, it leaves every configuration), and once it holds none its new disk is recorded,
    /// so that it is taken back as a learner like a new node. A member never recorded is
    /// recorded at once.
    #[allow(clippy::too_many_arguments)]
    pub fn reconfigure_members(
        &self,
        members: &[Member],
        reserved: &[String],
        positions: &BTreeMap<(u16, String), (u64, u64)>,
        lagging: &[(u16, u64, String)],
        ready: &[(u16, u64, String)],
        replication_factor: usize,
    ) -> Option<ClusterState> {
        let holding = self.holding(members);
        let next = self.reconfigure_reserving(
            &holding,
            reserved,
            positions,
            lagging,
            ready,
            replication_factor,
        );
        let mut changed = next.is_some();
        let mut next = next.unwrap_or_else(|| self.clone());
        // A member back on another disk lost the writes that made it eligible.
        for m in members.iter().filter(|m| self.replaced(m)) {
            for r in &mut next.replicas {
                if r.eligible.contains(&m.id) {
                    r.eligible.retain(|e| *e != m.id);
                    if !changed {
                        next.version += 1;
                        changed = true;
                    }
                }
            }
        }
        let mut recorded = false;
        for m in members.iter().filter(|m| m.disk != 0) {
            let holds = (0..next.replicas.len()).any(|p| {
                next.owners[p] == m.id
                    || next.replicas[p].backups.contains(&m.id)
                    || next.replicas[p].learners.contains(&m.id)
                    || next.replicas[p].eligible.contains(&m.id)
            });
            match next.disks.get(&m.id) {
                None => {}
                Some(d) if *d == m.disk || holds => continue,
                Some(_) => {}
            }
            next.disks.insert(m.id.clone(), m.disk);
            recorded = true;
        }
        // A decommissioned node that holds nothing any more is forgotten (it no longer counts
        // towards the copies the cluster can place).
        let gone: Vec<String> = next
            .disks
            .keys()
            .filter(|n| next.leaving.contains(n))
            .filter(|n| {
                (0..next.replicas.len()).all(|p| {
                    next.owners[p] != **n
                        && !next.replicas[p].backups.contains(n)
                        && !next.replicas[p].learners.contains(n)
                })
            })
            .cloned()
            .collect();
        for n in gone {
            next.disks.remove(&n);
            recorded = true;
        }
        match (changed, recorded) {
            (false, false) => None,
            (false, true) => {
                next.version += 1;
                Some(next)
            }
            (true, _) => Some(next),
        }
    }

    /// The state after `leader` wins an election: a new epoch, the same owners.
    pub fn next_epoch(&self, leader: &str) -> ClusterState {
        let mut s = self.clone();
        s.epoch += 1;
        s.version += 1;
        s.leader = leader.to_string();
        s
    }
}

/// What the coordinator tells the node. Events about one thing arrive in order; a node must
/// assume any of them may come late.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordEvent {
    /// The session is (again) connected.
    Connected,
    /// The connection is lost. The session may still be alive, but a leader must step down now:
    /// it cannot know whether another has been elected.
    Disconnected,
    /// The session is gone: its ephemeral entries (membership, candidacy) are deleted.
    Expired,
    /// This node's candidacy is the lowest: it may lead (after writing a new epoch).
    Elected,
    /// The live members, in id order.
    Members(Vec<Member>),
    /// The shared state (`None` before any leader created it) and the coordinator's version
    /// stamp of it, to make the next write conditional on.
    State {
        state: Option<ClusterState>,
        stamp: i64,
    },
    /// The outcome of a `WriteState`.
    WriteDone { ok: bool, message: String },
}

/// What the node asks of the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordCommand {
    /// Write `state` if the stored stamp is still `expected` (`-1`: if none exists yet).
    WriteState { state: ClusterState, expected: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> Member {
        Member {
            disk: 0,
            id: id.into(),
            http: String::new(),
            peer: String::new(),
        }
    }

    #[test]
    fn initial_assignment_covers_every_partition_once_balanced() {
        let s = ClusterState::initial("b", &[m("c"), m("a"), m("b")], 64, 1);
        assert_eq!(s.owners.len(), 64);
        for id in ["a", "b", "c"] {
            let n = s.owners.iter().filter(|o| *o == id).count();
            assert!((21..=22).contains(&n), "{id} owns {n}");
        }
        let alone = ClusterState::initial("x", &[], 8, 1);
        assert!(alone.owners.iter().all(|o| o == "x"));
        let next = s.next_epoch("a");
        assert_eq!((next.epoch, next.version), (2, 2));
        assert_eq!(next.owners, s.owners);
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Runs the plan to its end, finishing every move at once, and returns the final state.
    fn settle(mut s: ClusterState, live: &[String]) -> (ClusterState, usize) {
        let mut moved = 0;
        for _ in 0..1000 {
            match s.plan(live) {
                Some(n) => s = n,
                None => {
                    if s.moving.is_empty() {
                        return (s, moved);
                    }
                }
            }
            assert!(s.moving.len() <= MAX_MOVES);
            let moves = std::mem::take(&mut s.moving);
            for (p, to) in moves {
                s.owners[usize::from(p)] = to;
                moved += 1;
            }
        }
        panic!("the plan never settled")
    }

    #[test]
    fn a_joining_node_gets_its_share_and_only_that_moves() {
        let s = ClusterState::initial("a", &[m("a"), m("b"), m("c")], 64, 1);
        assert_eq!(
            s.plan(&ids(&["a", "b", "c"])),
            None,
            "balanced: nothing to do"
        );
        let (done, moved) = settle(s, &ids(&["a", "b", "c", "d"]));
        for id in ["a", "b", "c", "d"] {
            assert_eq!(done.owners.iter().filter(|o| *o == id).count(), 16, "{id}");
        }
        assert_eq!(moved, 16, "only the new node's share moved");
    }

    #[test]
    fn a_leaving_node_is_emptied_and_a_dead_node_keeps_its_partitions() {
        let mut s = ClusterState::initial("a", &[m("a"), m("b"), m("c")], 64, 1);
        s.leaving = ids(&["c"]);
        let (done, _) = settle(s.clone(), &ids(&["a", "b", "c"]));
        assert!(done.owners.iter().all(|o| o != "c"));
        let a = done.owners.iter().filter(|o| *o == "a").count();
        assert!((31..=33).contains(&a), "{a}");
        // c dead: nothing can move off it; the move in flight to or from it is aborted.
        let mut s2 = s.plan(&ids(&["a", "b", "c"])).unwrap();
        assert!(!s2.moving.is_empty());
        s2 = s2.plan(&ids(&["a", "b"])).unwrap();
        assert!(s2.moving.values().all(|to| to != "c"));
        assert!(s2.moving.keys().all(|p| s2.owners[usize::from(*p)] != "c"));
    }

    #[test]
    fn replicas_are_the_members_after_the_primary_and_a_small_cluster_is_under_replicated() {
        let s = ClusterState::initial("a", &[m("a"), m("b"), m("c"), m("d")], 8, 3);
        for p in 0..8u16 {
            let mut copies = vec![s.owners[usize::from(p)].clone()];
            copies.extend(s.backups(p).iter().cloned());
            assert_eq!(copies.len(), 3, "partition {p}");
            copies.sort();
            copies.dedup();
            assert_eq!(copies.len(), 3, "partition {p}: three different nodes");
            assert_eq!(s.part_epoch(p), 1);
        }
        assert_eq!(s.under_replicated(3), 0);
        // Two members for a factor of three: every partition is short of one copy.
        let small = ClusterState::initial("a", &[m("a"), m("b")], 8, 3);
        assert!((0..8).all(|p| small.backups(p).len() == 1));
        assert_eq!(small.under_replicated(3), 8);
        // Without replicas: nothing recorded, epoch 0, nothing under-replicated.
        let one = ClusterState::initial("a", &[m("a"), m("b")], 8, 1);
        assert!(one.replicas.is_empty() && !one.replicated());
        assert_eq!((one.part_epoch(3), one.under_replicated(1)), (0, 0));
        // A replicated cluster plans no moves (yet) even when a node joins.
        assert_eq!(s.plan(&ids(&["a", "b", "c", "d", "e"])), None);
    }

    /// Runs the leader's replica decisions to their end, every learner catching up at once
    /// (reported ready in the next round); checks after each round that no partition has
    /// fewer than `floor` copies in sync, and returns the final state and the rounds taken.
    fn settle_replicas(
        mut s: ClusterState,
        live: &[String],
        floor: usize,
    ) -> (ClusterState, usize) {
        let none = BTreeMap::new();
        for round in 0..500 {
            let ready: Vec<(u16, u64, String)> = (0..s.replicas.len())
                .flat_map(|p| {
                    let r = &s.replicas[p];
                    r.learners
                        .iter()
                        .map(move |l| (p as u16, r.epoch, l.clone()))
                })
                .collect();
            match s.reconfigure(live, &none, &[], &ready, 3) {
                Some(n) => {
                    for p in 0..n.replicas.len() {
                        let copies = 1 + n.replicas[p].backups.len();
                        assert!(copies >= floor, "round {round}: partition {p} has {copies}");
                        let mut all = n.replicas[p].backups.clone();
                        all.push(n.owners[p].clone());
                        all.sort();
                        all.dedup();
                        assert_eq!(all.len(), copies, "a node twice in partition {p}");
                        if n.owners[p] != s.owners[p]
                            || n.replicas[p].backups != s.replicas[p].backups
                        {
                            assert_eq!(n.replicas[p].epoch, s.replicas[p].epoch + 1);
                        }
                    }
                    s = n;
                }
                None => return (s, round),
            }
        }
        panic!("the replica decisions never settled")
    }

    fn copies_held(s: &ClusterState, id: &str) -> (usize, usize) {
        let led = s.owners.iter().filter(|o| *o == id).count();
        let backs = s
            .replicas
            .iter()
            .filter(|r| r.backups.iter().any(|b| b == id))
            .count();
        (led, led + backs)
    }

    #[test]
    fn a_gone_replica_keeps_its_place_until_its_timeout() {
        let s = ClusterState::initial("a", &[m("a"), m("b"), m("c"), m("d")], 8, 3);
        let none = BTreeMap::new();
        let live = ids(&["a", "b", "d"]);
        let held_by = |s: &ClusterState, n: &str| {
            (0..8)
                .filter(|&p| {
                    s.owners[p] == n
                        || s.replicas[p].backups.iter().any(|b| b == n)
                        || s.replicas[p].learners.iter().any(|b| b == n)
                })
                .count()
        };
        let c_held = held_by(&s, "c");
        let d_held = held_by(&s, "d");
        // c is gone, within its timeout: it leaves the backups, keeps a learner's place, and
        // d is given nothing.
        let kept = s
            .reconfigure_reserving(&live, &ids(&["c"]), &none, &[], &[], 3)
            .expect("c leaves the backups");
        assert!(kept
            .replicas
            .iter()
            .all(|r| !r.backups.contains(&"c".to_string())));
        assert_eq!(held_by(&kept, "c"), c_held, "{kept:?}");
        assert_eq!(held_by(&kept, "d"), d_held);
        assert_eq!(
            kept.reconfigure_reserving(&live, &ids(&["c"]), &none, &[], &[], 3),
            None
        );
        // Past it: c's places go to d.
        let gone = kept
            .reconfigure(&live, &none, &[], &[], 3)
            .expect("c's places go");
        // (A partition c led waits for a promotion, which needs its backups' positions.)
        for p in 0..8 {
            let r = &gone.replicas[p];
            assert!(
                !r.backups.contains(&"c".to_string()) && !r.learners.contains(&"c".to_string())
            );
            if gone.owners[p] != "c" {
                assert_eq!(
                    1 + r.backups.len() + r.learners.len(),
                    3,
                    "partition {p}: {r:?}"
                );
            }
        }
        assert!(held_by(&gone, "d") > d_held);
    }

    #[test]
    fn with_replicas_a_joining_node_gets_its_share_of_copies_and_primaries() {
        let s = ClusterState::initial("a", &[m("a"), m("b"), m("c")], 12, 3);
        let (done, rounds) = settle_replicas(s, &ids(&["a", "b", "c", "d"]), 3);
        assert!(rounds > 0);
        for id in ["a", "b", "c", "d"] {
            assert_eq!(copies_held(&done, id), (3, 9), "{id}: {done:?}");
        }
        assert!(done.replicas.iter().all(|r| r.learners.is_empty()));
    }

    #[test]
    fn with_replicas_a_leaving_node_hands_over_every_copy_first() {
        let s = ClusterState::initial("a", &[m("a"), m("b"), m("c"), m("d")], 12, 3);
        let mut leaving = s.clone();
        leaving.leaving = ids(&["c"]);
        let (done, _) = settle_replicas(leaving, &ids(&["a", "b", "c", "d"]), 3);
        assert_eq!(copies_held(&done, "c"), (0, 0), "{done:?}");
        assert!(done
            .replicas
            .iter()
            .all(|r| !r.learners.contains(&"c".to_string())));
        for id in ["a", "b", "d"] {
            assert_eq!(copies_held(&done, id).1, 12, "{id}");
        }
        // Three nodes, one leaving: the partitions keep what the other two can hold.
        let three = ClusterState::initial("a", &[m("a"), m("b"), m("c")], 6, 3);
        let mut leaving = three.clone();
        leaving.leaving = ids(&["c"]);
        let (done, _) = settle_replicas(leaving, &ids(&["a", "b", "c"]), 2);
        assert_eq!(copies_held(&done, "c"), (0, 0), "{done:?}");
    }

    /// KIP-966's eligible replicas: backups dropped while too few copies are in sync can still
    /// be promoted (nothing committed without them), and stop being eligible once the floor is
    /// met again or they come back on another disk.
    #[test]
    fn backups_dropped_below_the_floor_stay_eligible_until_it_is_met_again() {
        let mut s = ClusterState::initial("a", &[m("a"), m("b"), m("c")], 3, 3);
        s.min_insync = 2;
        let none = BTreeMap::new();
        // Partition 0: primary a, backups b and c. Both go: a alone, below the floor of 2.
        let alone = s.reconfigure(&ids(&["a"]), &none, &[], &[], 3).unwrap();
        let r = &alone.replicas[0];
        assert!(r.backups.is_empty(), "{r:?}");
        assert_eq!(r.eligible, ids(&["b", "c"]));
        // Then a goes too and b comes back: b is asked where its log ends, and promoted.
        assert!(alone.orphaned(&ids(&["b"])).contains(&(0, ids(&["b"]))));
        let pos: BTreeMap<(u16, String), (u64, u64)> = [((0, "b".to_string()), (1, 9))].into();
        let b_leads = alone.reconfigure(&ids(&["b"]), &pos, &[], &[], 3).unwrap();
        assert_eq!(b_leads.owners[0], "b");
        assert_eq!(b_leads.replicas[0].eligible, ids(&["c"]));
        // c comes back: a learner first (still eligible), a backup once ready, and then the
        // floor is met: from then on writes commit without the eligible, so none are left.
        let both = ids(&["b", "c"]);
        let learning = b_leads.reconfigure(&both, &none, &[], &[], 3).unwrap();
        assert!(learning.replicas[0].learners.contains(&"c".to_string()));
        assert_eq!(learning.replicas[0].eligible, ids(&["c"]));
        let ready = [(0u16, learning.part_epoch(0), "c".to_string())];
        let synced = learning.reconfigure(&both, &none, &[], &ready, 3).unwrap();
        assert_eq!(synced.replicas[0].backups, ids(&["c"]));
        assert!(
            synced.replicas[0].eligible.is_empty(),
            "{:?}",
            synced.replicas[0]
        );
        #[cfg(feature = "bugs")]
        {
            crate::bugs::enable(crate::bugs::Bug::KeepEligible);
            let kept = learning.reconfigure(&both, &none, &[], &ready, 3).unwrap();
            crate::bugs::clear();
            assert_eq!(
                kept.replicas[0].eligible,
                ids(&["c"]),
                "the test sees the bug"
            );
        }
        // A member back on another disk is eligible no more.
        let mut back = m("c");
        back.disk = 99;
        let mut recorded = alone.clone();
        recorded.disks.insert("c".into(), 1);
        let next = recorded
            .reconfigure_members(&[m("a"), back], &[], &none, &[], &[], 3)
            .unwrap();
        assert!(
            !next.replicas[0].eligible.contains(&"c".to_string()),
            "{next:?}"
        );
        // Without a floor above one (an old state), nothing is eligible.
        let old = ClusterState::initial("a", &[m("a"), m("b"), m("c")], 3, 3);
        let n = old.reconfigure(&ids(&["a"]), &none, &[], &[], 3).unwrap();
        assert!(n.replicas.iter().all(|r| r.eligible.is_empty()));
    }

    #[test]
    fn reconfiguration_promotes_the_backup_with_most_writes_and_refills_copies() {
        let s = ClusterState::initial("a", &[m("a"), m("b"), m("c")], 3, 3);
        let none = BTreeMap::new();
        let all = ids(&["a", "b", "c"]);
        assert_eq!(
            s.reconfigure(&all, &none, &[], &[], 3),
            None,
            "nothing to do"
        );
        // Partition 0: primary a, backups b, c. a dies.
        let live = ids(&["b", "c"]);
        assert_eq!(s.orphaned(&live).len(), 1);
        assert_eq!(s.orphaned(&live)[0], (0, ids(&["b", "c"])));
        // Nobody answered: partition 0 waits; a leaves the other configurations.
        let n = s.reconfigure(&live, &none, &[], &[], 3).unwrap();
        assert_eq!(n.owners[0], "a");
        assert_eq!(n.part_epoch(0), 1);
        assert!(n
            .replicas
            .iter()
            .all(|r| !r.backups.contains(&"a".to_string())));
        assert_eq!(n.part_epoch(1), 2, "a left partition 1's configuration");
        // c has the most writes (a later epoch beats a higher number).
        let mut pos = BTreeMap::new();
        pos.insert((0, "b".to_string()), (1, 9));
        pos.insert((0, "c".to_string()), (2, 4));
        let n = s.reconfigure(&live, &pos, &[], &[], 3).unwrap();
        assert_eq!(
            (n.owners[0].as_str(), n.backups(0)),
            ("c", &ids(&["b"])[..])
        );
        assert_eq!(n.part_epoch(0), 2);
        assert_eq!(n.under_replicated(3), 3, "two live nodes for three copies");
        // A lagging backup of the current epoch leaves; one of an older epoch does not.
        let n2 = n.reconfigure(&live, &none, &[(0, 1, "b".into())], &[], 3);
        assert!(n2.is_none());
        let n2 = n
            .reconfigure(&live, &none, &[(0, 2, "b".into())], &[], 3)
            .unwrap();
        assert!(n2.backups(0).is_empty());
        // A new node comes: it becomes a learner of every partition short of a copy, and a
        // backup once its primary reports it ready.
        let live = ids(&["b", "c", "d"]);
        let n3 = n.reconfigure(&live, &none, &[], &[], 3).unwrap();
        assert!(n3.replicas.iter().all(|r| r.learners == ids(&["d"])));
        assert_eq!(
            n3.part_epoch(0),
            2,
            "a learner is not a change of configuration"
        );
        let n4 = n3
            .reconfigure(&live, &none, &[], &[(0, 2, "d".into())], 3)
            .unwrap();
        assert_eq!(n4.backups(0), &ids(&["b", "d"])[..]);
        assert_eq!(n4.part_epoch(0), 3);
        assert_eq!(n4.under_replicated(3), 2);
        // A primary naming itself (it restarted) gets a new epoch and nothing else; a report
        // of an older epoch changes nothing.
        let n5 = n4
            .reconfigure(&live, &none, &[(0, 3, "c".into())], &[], 3)
            .unwrap();
        assert_eq!((n5.owners[0].as_str(), n5.part_epoch(0)), ("c", 4));
        assert_eq!(n5.backups(0), n4.backups(0));
        assert_eq!(
            n5.replicas[1], n4.replicas[1],
            "other partitions keep theirs"
        );
        assert!(n5
            .reconfigure(&live, &none, &[(0, 3, "c".into())], &[], 3)
            .is_none());
    }
}
