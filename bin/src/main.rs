//! `corecache`: the one binary. `serve` runs a node; `get`, `put`, `delete`, `scan` and
//! `status` talk to one over HTTP. Client exit codes: 0 found / done, 1 not found, 2 error.

mod client;

/// mimalloc: the node allocates and frees small buffers from many threads; glibc's arenas showed
/// as lock waits and ~20% of CPU under HTTP load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use corecache_net::Config;

#[derive(Parser)]
#[command(
    name = "corecache",
    version,
    about = "CoreCache: a distributed key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no ZooKeeper configured: a one-node cluster, data in ./corecache-data,
    /// HTTP on 127.0.0.1:7070.
    Serve(Box<ServeArgs>),
    /// Print a key's value (exit 1 if it has none).
    Get {
        key: String,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Set a key; the value comes from the argument or, without one, from stdin.
    Put {
        key: String,
        value: Option<String>,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Delete a key (exit 1 if it did not exist).
    Delete {
        key: String,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// List keys in order, one per line (`--values` adds a tab and the value).
    Scan {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        values: bool,
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Print the node's status JSON.
    Status {
        #[command(flatten)]
        ep: Endpoint,
    },
    /// Move every partition off a node (default: the one at --endpoint) so it can be stopped;
    /// waits until it owns none (at most --timeout-secs).
    Decommission {
        /// The node id to empty (default: the node at --endpoint).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        #[command(flatten)]
        ep: Endpoint,
    },
}

#[derive(Args)]
struct Endpoint {
    /// The node to talk to.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7070",
        env = "CORECACHE_ENDPOINT"
    )]
    endpoint: String,
}

/// Flags override the config file and the environment (see `corecache_net::config`).
#[derive(Args)]
struct ServeArgs {
    /// TOML file with settings (keys as in the flags, with `_` for `-`).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    data_dir: Option<String>,
    /// always | interval | none
    #[arg(long)]
    sync: Option<String>,
    #[arg(long)]
    sync_interval_ms: Option<String>,
    #[arg(long)]
    node_id: Option<String>,
    /// HOST:PORT[,...]: join (or create) a cluster through ZooKeeper.
    #[arg(long)]
    zookeeper: Option<String>,
    /// The cluster's name under the root znode.
    #[arg(long)]
    cluster: Option<String>,
    /// Parent znode of every cluster (default /corecache).
    #[arg(long)]
    zk_root: Option<String>,
    /// ZooKeeper session timeout in milliseconds.
    #[arg(long)]
    session_timeout_ms: Option<String>,
    /// Where the peer transport listens (cluster mode; default: the HTTP port + 10000, or a port
    /// the OS picks when --listen has port 0).
    #[arg(long)]
    peer_listen: Option<String>,
    /// Creating a cluster: wait for this many nodes before dealing out partitions.
    #[arg(long)]
    initial_nodes: Option<String>,
    #[arg(long)]
    partitions: Option<String>,
    /// Copies of every partition a new cluster places, primary included (default 1).
    #[arg(long)]
    replication_factor: Option<String>,
    /// Fewer copies in sync than this: the partition refuses writes (default 2, at most the
    /// replication factor).
    #[arg(long)]
    min_insync_replicas: Option<String>,
    /// A replica gone this long is replaced by a copy elsewhere (default 60000).
    #[arg(long)]
    replica_timeout_ms: Option<String>,
    #[arg(long)]
    memtable_mb: Option<String>,
    #[arg(long)]
    block_cache_mb: Option<String>,
    #[arg(long)]
    max_key_bytes: Option<String>,
    #[arg(long)]
    max_value_bytes: Option<String>,
    #[arg(long)]
    max_body_bytes: Option<String>,
    /// human | json
    #[arg(long)]
    log_format: Option<String>,
    /// Redis protocol address (HOST:PORT or off; default 127.0.0.1:7379 without --zookeeper).
    #[arg(long)]
    resp_listen: Option<String>,
    /// true: RESP FLUSHDB may delete every key (default false).
    #[arg(long)]
    resp_flushdb: Option<String>,
}

fn load_config(a: &ServeArgs) -> Result<Config, String> {
    let mut cfg = Config::default();
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        cfg.merge_toml(&text, &path.display().to_string())?;
    }
    cfg.merge_env(std::env::vars())?;
    let flags = [
        ("listen", &a.listen),
        ("data_dir", &a.data_dir),
        ("sync", &a.sync),
        ("sync_interval_ms", &a.sync_interval_ms),
        ("node_id", &a.node_id),
        ("zookeeper", &a.zookeeper),
        ("cluster", &a.cluster),
        ("zk_root", &a.zk_root),
        ("session_timeout_ms", &a.session_timeout_ms),
        ("peer_listen", &a.peer_listen),
        ("initial_nodes", &a.initial_nodes),
        ("partitions", &a.partitions),
        ("replication_factor", &a.replication_factor),
        ("min_insync_replicas", &a.min_insync_replicas),
        ("replica_timeout_ms", &a.replica_timeout_ms),
        ("memtable_mb", &a.memtable_mb),
        ("block_cache_mb", &a.block_cache_mb),
        ("max_key_bytes", &a.max_key_bytes),
        ("max_value_bytes", &a.max_value_bytes),
        ("max_body_bytes", &a.max_body_bytes),
        ("log_format", &a.log_format),
        ("resp_listen", &a.resp_listen),
        ("resp_flushdb", &a.resp_flushdb),
    ];
    for (name, value) in flags {
        if let Some(v) = value {
            cfg.set(name, v)
                .map_err(|e| format!("flag --{}: {e}", name.replace('_', "-")))?;
        }
    }
    Ok(cfg)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORECACHE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corecache serve: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corecache serve: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        let data_dir = cfg.data_dir.clone();
        let sync = cfg.sync.clone();
        let running = corecache_net::serve(cfg, |addr, resp| {
            // The first line on stdout: scripts and tests read the address from it. The RESP
            // line follows in the same write, so a reader that takes only the first line and
            // closes the pipe cannot make a second write fail.
            let mut text = format!("listening on http://{addr}\n");
            if let Some(resp) = resp {
                text.push_str(&format!("resp listening on {resp}\n"));
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        })
        .await;
        let running = match running {
            Ok(r) => r,
            Err(e) => {
                eprintln!("corecache serve: {e}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(data_dir = %data_dir.display(), sync = %sync, "serving");
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests, syncing the log");
        match running.stop().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corecache serve: {e}");
                ExitCode::from(2)
            }
        }
    })
}

/// Runs a client command: Ok(true) found/done, Ok(false) not found.
fn client_cmd(cmd: Command) -> Result<bool, String> {
    match cmd {
        Command::Get { key, ep } => get_cmd(&key, &ep),
        Command::Put { key, value, ep } => put_cmd(&key, value, &ep),
        Command::Delete { key, ep } => delete_cmd(&key, &ep),
        Command::Scan {
            prefix,
            start,
            end,
            limit,
            values,
            ep,
        } => {
            let query = scan_query(&prefix, &start, &end, limit);
            scan_cmd(&query, limit, values, &ep)
        }
        Command::Status { ep } => status_cmd(&ep),
        Command::Decommission {
            node,
            timeout_secs,
            ep,
        } => decommission_cmd(node, timeout_secs, &ep),
        Command::Serve(_) => unreachable!("handled in main"),
    }
}

/// The error for a reply the command did not expect: the status and the node's own message,
/// which says more than any text of ours could.
fn fail(r: &client::Reply) -> String {
    format!(
        "HTTP {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body).trim()
    )
}

/// A key's path in the HTTP API: percent-encoded, since a key may hold any byte.
fn kv_path(key: &str) -> String {
    format!("/v1/kv/{}", client::encode(key.as_bytes()))
}

fn get_cmd(key: &str, ep: &Endpoint) -> Result<bool, String> {
    let r = client::request(&ep.endpoint, "GET", &kv_path(key), b"")?;
    match r.status {
        200 => {
            std::io::stdout()
                .write_all(&r.body)
                .map_err(|e| e.to_string())?;
            Ok(true)
        }
        404 => Ok(false),
        _ => Err(fail(&r)),
    }
}

/// Without a value argument the value is read from stdin, so that it may hold any byte.
fn put_cmd(key: &str, value: Option<String>, ep: &Endpoint) -> Result<bool, String> {
    let value = match value {
        Some(v) => v.into_bytes(),
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map_err(|e| format!("reading the value from stdin: {e}"))?;
            v
        }
    };
    let r = client::request(&ep.endpoint, "PUT", &kv_path(key), &value)?;
    match r.status {
        200 => Ok(true),
        _ => Err(fail(&r)),
    }
}

fn delete_cmd(key: &str, ep: &Endpoint) -> Result<bool, String> {
    let r = client::request(&ep.endpoint, "DELETE", &kv_path(key), b"")?;
    match r.status {
        200 | 204 => Ok(true),
        404 => Ok(false),
        _ => Err(fail(&r)),
    }
}

/// The query every page of a scan repeats: only the continuation changes from page to page.
fn scan_query(
    prefix: &Option<String>,
    start: &Option<String>,
    end: &Option<String>,
    limit: usize,
) -> String {
    let mut query = format!("limit={}", limit.clamp(1, 1000));
    for (name, v) in [("prefix", prefix), ("start", start), ("end", end)] {
        if let Some(v) = v {
            query.push_str(&format!("&{name}={}", client::encode(v.as_bytes())));
        }
    }
    query
}

/// Follows the continuation from page to page until the node has no more or `limit` keys are
/// printed, so that a scan of any length needs no more memory than one page.
fn scan_cmd(query: &str, limit: usize, values: bool, ep: &Endpoint) -> Result<bool, String> {
    let mut printed = 0usize;
    let mut continuation: Option<String> = None;
    let mut out = std::io::stdout().lock();
    loop {
        let mut q = query.to_string();
        if let Some(c) = &continuation {
            q.push_str(&format!("&continuation={c}"));
        }
        let r = client::request(&ep.endpoint, "GET", &format!("/v1/kv?{q}"), b"")?;
        if r.status != 200 {
            return Err(fail(&r));
        }
        let page: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| format!("bad scan reply: {e}"))?;
        printed += print_scan_page(&page, values, &mut out)?;
        match page["continuation"].as_str() {
            Some(c) if printed < limit => continuation = Some(c.to_string()),
            _ => break,
        }
    }
    Ok(true)
}

/// Prints one page's keys (and values), decoded from the base64 that JSON needs for arbitrary
/// bytes. Returns how many it printed, for `scan_cmd` to count against its limit.
fn print_scan_page(
    page: &serde_json::Value,
    values: bool,
    out: &mut impl Write,
) -> Result<usize, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut printed = 0usize;
    for item in page["items"].as_array().into_iter().flatten() {
        let key = b64
            .decode(item["key"].as_str().unwrap_or(""))
            .map_err(|e| format!("bad key in reply: {e}"))?;
        let _ = out.write_all(&key);
        if values {
            let v = b64
                .decode(item["value"].as_str().unwrap_or(""))
                .map_err(|e| format!("bad value in reply: {e}"))?;
            let _ = out.write_all(b"\t");
            let _ = out.write_all(&v);
        }
        let _ = out.write_all(b"\n");
        printed += 1;
    }
    Ok(printed)
}

fn status_cmd(ep: &Endpoint) -> Result<bool, String> {
    let r = client::request(&ep.endpoint, "GET", "/v1/status", b"")?;
    if r.status != 200 {
        return Err(fail(&r));
    }
    std::io::stdout()
        .write_all(&r.body)
        .and_then(|()| std::io::stdout().write_all(b"\n"))
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// The node's status, parsed: decommissioning reads the node id and the partition map from it.
fn fetch_status(endpoint: &str) -> Result<serde_json::Value, String> {
    let r = client::request(endpoint, "GET", "/v1/status", b"")?;
    if r.status != 200 {
        return Err(fail(&r));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("bad status reply: {e}"))
}

/// Asks the leader (through the node at `ep`) to move every partition off `node`, then waits:
/// the command succeeds only once the node can be stopped without losing a partition.
fn decommission_cmd(
    node: Option<String>,
    timeout_secs: u64,
    ep: &Endpoint,
) -> Result<bool, String> {
    let node = match node {
        Some(n) => n,
        None => fetch_status(&ep.endpoint)?["node_id"]
            .as_str()
            .ok_or("the status has no node_id")?
            .to_string(),
    };
    let r = client::request(
        &ep.endpoint,
        "POST",
        &format!(
            "/v1/admin/decommission?node={}",
            client::encode(node.as_bytes())
        ),
        b"",
    )?;
    if r.status != 202 {
        return Err(fail(&r));
    }
    wait_until_empty(&node, timeout_secs, ep)
}

/// Polls the status until `node` owns no partition, none is moving, and (with replicas) it
/// holds no copy of any partition, or `timeout_secs` pass.
fn wait_until_empty(node: &str, timeout_secs: u64, ep: &Endpoint) -> Result<bool, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
    loop {
        let st = fetch_status(&ep.endpoint)?;
        let owned = st["partitions"].as_object().map_or(0, |m| {
            m.values().filter(|o| o.as_str() == Some(node)).count()
        });
        let moving = st["moving"].as_object().map_or(0, |m| m.len());
        let copies = st["replicas"].as_object().map_or(0, |m| {
            m.values()
                .filter(|r| {
                    ["configuration", "learners"].iter().any(|f| {
                        r[*f]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|n| n.as_str() == Some(node)))
                    })
                })
                .count()
        });
        let owned = owned + copies;
        if owned == 0 && moving == 0 {
            eprintln!("{node} owns no partitions; it can be stopped");
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{node} still owns {owned} partitions ({moving} moving) after {timeout_secs} s"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        cmd => match client_cmd(cmd) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("corecache: {e}");
                ExitCode::from(2)
            }
        },
    }
}
