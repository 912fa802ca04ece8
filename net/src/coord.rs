//! Coordinators: what holds the cluster's shared state and runs the election.
//!
//! A [`Coordinator`] turns its store's happenings into [`CoordEvent`]s for the node and carries
//! out the node's [`CoordCommand`]s; both are plain data from `corecache-core`, so the same node
//! runs over ZooKeeper ([`crate::zk::ZkCoordinator`]), over the in-process [`LocalCoordinator`]
//! of the embedded default, and over the simulation's fake.

use corecache_core::cluster::{ClusterState, CoordCommand, CoordEvent, Member, StateStore};
use tokio::sync::mpsc;

/// Starts a coordinator for member `me`. Events go to `events`; commands come from the
/// returned sender. The coordinator runs until `events` is closed.
pub trait Coordinator: Send + 'static {
    fn start(
        self: Box<Self>,
        me: Member,
        events: mpsc::UnboundedSender<CoordEvent>,
    ) -> mpsc::UnboundedSender<CoordCommand>;
}

/// The embedded default: a cluster of one with its state in memory. This node is its only
/// member and always elected; conditional writes behave as ZooKeeper's do.
#[derive(Default)]
pub struct LocalCoordinator;

impl Coordinator for LocalCoordinator {
    fn start(
        self: Box<Self>,
        me: Member,
        events: mpsc::UnboundedSender<CoordEvent>,
    ) -> mpsc::UnboundedSender<CoordCommand> {
        let (tx, mut rx) = mpsc::unbounded_channel::<CoordCommand>();
        let _ = events.send(CoordEvent::Connected);
        let _ = events.send(CoordEvent::Members(vec![me]));
        let _ = events.send(CoordEvent::State {
            state: None,
            stamp: -1,
        });
        let _ = events.send(CoordEvent::Elected);
        tokio::spawn(async move {
            let mut store: StateStore<ClusterState> = StateStore::new();
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    CoordCommand::WriteState { state, expected } => {
                        let ok = store.write(state, expected);
                        if events
                            .send(StateStore::<ClusterState>::write_done(ok))
                            .is_err()
                        {
                            return;
                        }
                        if ok && events.send(store.state_event()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        tx
    }
}
