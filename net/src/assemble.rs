//! The one assembly of a node and its front-ends, used by `serve` (real sockets, real disk,
//! ZooKeeper or the embedded coordinator) and by the simulation (turmoil's sockets, a simulated
//! disk, the fake coordinator). What differs between them is passed in: listeners, the disk,
//! the coordinator and the environment (clock, blocking work); everything else is built here.

use std::sync::{Arc, OnceLock};

use corecache_core::node::{Node, NodeConfig};
use corecache_core::{Db, Options, StallPolicy};
use tokio::sync::watch;

use crate::driver::{self, ClusterIo, Env, NodeHandle};
use crate::metrics::Metrics;
use crate::{http, resp};

/// What the front-ends enforce (the node enforces its own limits too).
#[derive(Clone, Debug)]
pub struct FrontEndConfig {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_body_bytes: usize,
    /// RESP `FLUSHDB` allowed.
    pub resp_flushdb: bool,
    /// The `sync` setting's name, for RESP `INFO`.
    pub sync: String,
    /// The RESP port, for `INFO`.
    pub resp_port: u16,
}

/// A node's front-ends, and the cell they find the node in once it runs. Until then HTTP
/// answers 503 and RESP `-LOADING`.
pub struct Assembly {
    pub node: Arc<OnceLock<NodeHandle>>,
    pub metrics: Arc<Metrics>,
    pub http: axum::Router,
    pub resp: Arc<resp::RespState>,
}

/// The engine settings a node's engine must have on top of `opts`: the node's door never
/// waits, so a write that would stall is refused at once (the client retries) and the next log
/// file is made by background work, never on the node's task.
pub fn node_engine_options(opts: Options) -> Options {
    Options {
        stall: StallPolicy::Refuse,
        inline_log_files: false,
        ..opts
    }
}

impl Assembly {
    /// The front-ends, serving "not ready" until [`start`](Self::start).
    pub fn new(fe: &FrontEndConfig, metrics: Arc<Metrics>) -> Assembly {
        let node: Arc<OnceLock<NodeHandle>> = Arc::new(OnceLock::new());
        let http = http::router(http::AppState {
            node: node.clone(),
            metrics: metrics.clone(),
            max_key_bytes: fe.max_key_bytes,
            max_body_bytes: fe.max_body_bytes,
        });
        let resp = Arc::new(resp::RespState::new(
            node.clone(),
            resp::limits_for(fe.max_key_bytes, fe.max_value_bytes, fe.max_body_bytes),
            fe.resp_flushdb,
            fe.sync.clone(),
            fe.resp_port,
        ));
        Assembly {
            node,
            metrics,
            http,
            resp,
        }
    }

    /// Starts the node over the open engine `db` and hands it to the front-ends.
    pub fn start(
        &self,
        db: Arc<Db>,
        cfg: NodeConfig,
        io: ClusterIo,
        stop: watch::Receiver<bool>,
        env: Env,
    ) {
        let node = Node::new_clustered(db, cfg);
        let handle = driver::spawn_with(node, self.metrics.clone(), stop, io, env);
        let _ = self.node.set(handle);
    }
}
