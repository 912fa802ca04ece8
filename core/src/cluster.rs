//! The cluster's shared state as plain data, and the events and commands that pass between the
//! node and its coordinator (ZooKeeper in `net`, an in-process one for the embedded default, a
//! fake in the simulation).
//!
//! The coordinator does the mechanics (sessions, ephemeral member entries, the election recipe,
//! watches, conditional writes); the node makes every decision (whether it leads, what the
//! partition map becomes) from these events, as a pure function of them.

/// A live member of the cluster, as registered with the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub id: String,
    /// Where its HTTP API listens (`host:port`).
    pub http: String,
    /// Where its peer transport listens (`host:port`).
    pub peer: String,
}

/// What the leader keeps in the coordinator: who leads in which epoch, and who owns each
/// partition. `version` goes up by one with every write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    pub epoch: u64,
    pub version: u64,
    pub leader: String,
    /// Owner of each partition, indexed by partition number.
    pub owners: Vec<String>,
}

impl ClusterState {
    /// The state a new cluster starts with: partitions dealt round-robin over the members the
    /// first leader sees (in id order), so a cluster created with several nodes up is balanced.
    pub fn initial(leader: &str, members: &[Member], partitions: u16) -> ClusterState {
        let mut ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        if !ids.contains(&leader) {
            ids.push(leader);
        }
        ids.sort_unstable();
        ids.dedup();
        let owners = (0..usize::from(partitions.max(1)))
            .map(|p| ids[p % ids.len()].to_string())
            .collect();
        ClusterState {
            epoch: 1,
            version: 1,
            leader: leader.to_string(),
            owners,
        }
    }

    /// The state after `leader` wins an election: a new epoch, the same owners.
    pub fn next_epoch(&self, leader: &str) -> ClusterState {
        ClusterState {
            epoch: self.epoch + 1,
            version: self.version + 1,
            leader: leader.to_string(),
            owners: self.owners.clone(),
        }
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
            id: id.into(),
            http: String::new(),
            peer: String::new(),
        }
    }

    #[test]
    fn initial_assignment_covers_every_partition_once_balanced() {
        let s = ClusterState::initial("b", &[m("c"), m("a"), m("b")], 64);
        assert_eq!(s.owners.len(), 64);
        for id in ["a", "b", "c"] {
            let n = s.owners.iter().filter(|o| *o == id).count();
            assert!((21..=22).contains(&n), "{id} owns {n}");
        }
        let alone = ClusterState::initial("x", &[], 8);
        assert!(alone.owners.iter().all(|o| o == "x"));
        let next = s.next_epoch("a");
        assert_eq!((next.epoch, next.version), (2, 2));
        assert_eq!(next.owners, s.owners);
    }
}
