//! The "HTTP ceiling": the smallest axum server that answers CoreCache's key routes from an
//! in-memory map, with no engine, log or node task behind it. `bench/http/run.sh` measures it
//! beside CoreCache to tell how much of CoreCache's HTTP cost is axum/hyper/tokio itself.
//!
//! `ceiling [--listen ADDR]` (default 127.0.0.1:0) prints `listening on http://ADDR` as its first
//! stdout line, like `corecache serve`, and serves until killed:
//! `PUT /v1/kv/{key}` (raw body = value) → 200, `GET /v1/kv/{key}` → 200 with the value or 404.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Shards of the map, so that two worker threads rarely wait on the same lock.
const SHARDS: usize = 64;

struct Map {
    shards: Vec<RwLock<HashMap<String, Bytes>>>,
}

impl Map {
    fn new() -> Self {
        Map {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<String, Bytes>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }
}

type Shared = Arc<Map>;

async fn get_key(State(map): State<Shared>, Path(key): Path<String>) -> Response {
    let found = map
        .shard(&key)
        .read()
        .expect("a shard lock is never poisoned")
        .get(&key)
        .cloned();
    match found {
        Some(value) => (StatusCode::OK, value).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn put_key(State(map): State<Shared>, Path(key): Path<String>, body: Bytes) -> StatusCode {
    map.shard(&key)
        .write()
        .expect("a shard lock is never poisoned")
        .insert(key, body);
    StatusCode::OK
}

fn parse_listen() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "-h" | "--help" => {
                println!("usage: ceiling [--listen ADDR]   (default 127.0.0.1:0)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(listen)
}

fn main() -> ExitCode {
    let listen = match parse_listen() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ceiling: {e}");
            return ExitCode::from(2);
        }
    };
    // The same runtime as `corecache serve`: multi-threaded, one worker per core.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ceiling: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ceiling: cannot listen on {listen}: {e}");
                return ExitCode::from(2);
            }
        };
        match listener.local_addr() {
            Ok(addr) => println!("listening on http://{addr}"),
            Err(e) => {
                eprintln!("ceiling: {e}");
                return ExitCode::from(2);
            }
        }
        let _ = std::io::stdout().flush();
        let app = Router::new()
            .route("/v1/kv/{key}", get(get_key).put(put_key))
            .with_state(Arc::new(Map::new()));
        match axum::serve(listener, app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ceiling: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
