//! Node settings: defaults < TOML file < `CORECACHE_*` environment < command-line flags.
//!
//! Every setting goes through [`Config::set`], which parses and checks it and names it in any
//! error, so a bad value is refused at start the same way wherever it came from.

use std::path::PathBuf;

/// All settings of `corecache serve`. Names are the TOML keys; the environment variable is
/// `CORECACHE_` + the name in upper case; the flag is `--` + the name with `-` for `_`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Directory for the node's data (created if missing).
    pub data_dir: PathBuf,
    /// `always` (a reply means the write is on disk), `interval` or `none`.
    pub sync: String,
    /// With `sync = interval`: how often the log is fsynced.
    pub sync_interval_ms: u64,
    /// Stable node id; by default generated once and kept in the data directory.
    pub node_id: Option<String>,
    /// ZooKeeper servers (`HOST:PORT[,...]`); empty runs the embedded one-node cluster.
    pub zookeeper: Option<String>,
    /// Cluster name (the root znode's child) when joining through ZooKeeper.
    pub cluster: String,
    /// Parent znode of every CoreCache cluster in ZooKeeper.
    pub zk_root: String,
    /// ZooKeeper session timeout: a node cut off this long loses its membership (and, if it
    /// led, its leadership, which it gives up at once on losing the connection).
    pub session_timeout_ms: u64,
    /// Address the peer transport listens on (cluster mode only). Empty (the default): the
    /// HTTP address's host with its port + 10,000, as Redis Cluster does, or a port the OS
    /// picks when the HTTP port is 0 or above 55,535 ([`Config::peer_addr`]).
    pub peer_listen: String,
    /// When creating a cluster: how many nodes to wait for before dealing out partitions.
    pub initial_nodes: usize,
    /// Hash partitions, fixed when the data directory is created.
    pub partitions: u16,
    /// Copies of every partition (primary included) a new cluster places; `None` = not set
    /// (see [`Config::replication`]).
    pub replication_factor: Option<usize>,
    /// With fewer copies in sync than this (primary included), a partition refuses writes and
    /// keeps serving reads. Never more than the replication factor in effect.
    pub min_insync_replicas: usize,
    /// A replica gone this long is replaced by a copy on another node.
    pub replica_timeout_ms: u64,
    pub memtable_mb: u64,
    pub block_cache_mb: u64,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_body_bytes: usize,
    /// `human` or `json`.
    pub log_format: String,
    /// Where the Redis protocol front-end listens: `None` = not set (then 127.0.0.1:7379 in the
    /// embedded default, off in cluster mode; see [`Config::resp_addr`]), `off` = never.
    pub resp_listen: Option<String>,
    /// Whether RESP `FLUSHDB` may delete every key.
    pub resp_flushdb: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7070".into(),
            data_dir: PathBuf::from("./corecache-data"),
            sync: "always".into(),
            sync_interval_ms: 100,
            node_id: None,
            zookeeper: None,
            cluster: "default".into(),
            zk_root: "/corecache".into(),
            session_timeout_ms: 6_000,
            peer_listen: String::new(),
            initial_nodes: 1,
            partitions: 64,
            replication_factor: None,
            min_insync_replicas: 2,
            replica_timeout_ms: 60_000,
            memtable_mb: 64,
            block_cache_mb: 64,
            max_key_bytes: 8 << 10,
            max_value_bytes: 1 << 20,
            max_body_bytes: 3 << 19,
            log_format: "human".into(),
            resp_listen: None,
            resp_flushdb: false,
        }
    }
}

/// The names `set` accepts, for help texts and error messages.
pub const SETTINGS: &[&str] = &[
    "listen",
    "data_dir",
    "sync",
    "sync_interval_ms",
    "node_id",
    "zookeeper",
    "cluster",
    "zk_root",
    "session_timeout_ms",
    "peer_listen",
    "initial_nodes",
    "partitions",
    "replication_factor",
    "min_insync_replicas",
    "replica_timeout_ms",
    "memtable_mb",
    "block_cache_mb",
    "max_key_bytes",
    "max_value_bytes",
    "max_body_bytes",
    "log_format",
    "resp_listen",
    "resp_flushdb",
];

/// The most copies of a partition a cluster may keep.
pub const MAX_REPLICATION_FACTOR: usize = 7;

fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("setting `{name}`: `{v}` is not a valid number"))
}

impl Config {
    /// Sets one setting from its text form, checking it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        // Each group checks and sets the names it knows: `Ok(false)` passes `name` on.
        let known = self.set_local(name, value)?
            || self.set_cluster(name, value)?
            || self.set_limits(name, value)?
            || self.set_front_ends(name, value)?;
        if !known {
            return Err(format!(
                "unknown setting `{name}` (known: {})",
                SETTINGS.join(", ")
            ));
        }
        Ok(())
    }

    /// The node's own HTTP address, data directory and log syncing. Like each group below,
    /// answers `Ok(false)` for a name it does not know, so that `set` can try the next group.
    fn set_local(&mut self, name: &str, value: &str) -> Result<bool, String> {
        match name {
            "listen" => {
                value
                    .parse::<std::net::SocketAddr>()
                    .map_err(|_| format!("setting `listen`: `{value}` is not HOST:PORT"))?;
                self.listen = value.into();
            }
            "data_dir" => {
                if value.is_empty() {
                    return Err("setting `data_dir` is empty".into());
                }
                self.data_dir = PathBuf::from(value);
            }
            "sync" => match value {
                "always" | "interval" | "none" => self.sync = value.into(),
                _ => {
                    return Err(format!(
                        "setting `sync`: `{value}` is not one of always, interval, none"
                    ))
                }
            },
            "sync_interval_ms" => {
                let v: u64 = num(name, value)?;
                if v == 0 {
                    return Err("setting `sync_interval_ms` must be at least 1".into());
                }
                self.sync_interval_ms = v;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Identity and membership: who the node is, which cluster it joins and how, and the
    /// partition count fixed when its data directory is created.
    fn set_cluster(&mut self, name: &str, value: &str) -> Result<bool, String> {
        match name {
            "node_id" => {
                if value.is_empty()
                    || value.len() > 64
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(format!(
                        "setting `node_id`: `{value}` must be 1-64 characters of [A-Za-z0-9_-]"
                    ));
                }
                self.node_id = Some(value.into());
            }
            "zookeeper" => {
                self.zookeeper = (!value.is_empty()).then(|| value.to_string());
            }
            "cluster" => {
                if value.is_empty() || value.contains('/') {
                    return Err(format!("setting `cluster`: `{value}` is not a valid name"));
                }
                self.cluster = value.into();
            }
            "zk_root" => {
                if !value.starts_with('/') || value.ends_with('/') && value.len() > 1 {
                    return Err(format!(
                        "setting `zk_root`: `{value}` must be an absolute znode path like /corecache"
                    ));
                }
                self.zk_root = value.into();
            }
            "session_timeout_ms" => {
                let v: u64 = num(name, value)?;
                if !(1_000..=120_000).contains(&v) {
                    return Err(
                        "setting `session_timeout_ms` must be between 1000 and 120000".into(),
                    );
                }
                self.session_timeout_ms = v;
            }
            "peer_listen" => {
                value
                    .parse::<std::net::SocketAddr>()
                    .map_err(|_| format!("setting `peer_listen`: `{value}` is not HOST:PORT"))?;
                self.peer_listen = value.into();
            }
            "initial_nodes" => {
                let v: usize = num(name, value)?;
                if !(1..=1000).contains(&v) {
                    return Err("setting `initial_nodes` must be between 1 and 1000".into());
                }
                self.initial_nodes = v;
            }
            "partitions" => {
                let v: u16 = num(name, value)?;
                if v == 0 || v > 4096 {
                    return Err("setting `partitions` must be between 1 and 4096".into());
                }
                self.partitions = v;
            }
            "replication_factor" => {
                let v: usize = num(name, value)?;
                if !(1..=MAX_REPLICATION_FACTOR).contains(&v) {
                    return Err(format!(
                        "setting `replication_factor` must be between 1 and {MAX_REPLICATION_FACTOR}"
                    ));
                }
                self.replication_factor = Some(v);
            }
            "min_insync_replicas" => {
                let v: usize = num(name, value)?;
                if !(1..=MAX_REPLICATION_FACTOR).contains(&v) {
                    return Err(format!(
                        "setting `min_insync_replicas` must be between 1 and {MAX_REPLICATION_FACTOR}"
                    ));
                }
                self.min_insync_replicas = v;
            }
            "replica_timeout_ms" => {
                let v: u64 = num(name, value)?;
                if !(1_000..=86_400_000).contains(&v) {
                    return Err(
                        "setting `replica_timeout_ms` must be between 1000 and 86400000".into(),
                    );
                }
                self.replica_timeout_ms = v;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Memory budgets and request size limits: numbers, each checked against the range the
    /// node can run with.
    fn set_limits(&mut self, name: &str, value: &str) -> Result<bool, String> {
        match name {
            "memtable_mb" => {
                let v: u64 = num(name, value)?;
                if !(1..=4096).contains(&v) {
                    return Err("setting `memtable_mb` must be between 1 and 4096".into());
                }
                self.memtable_mb = v;
            }
            "block_cache_mb" => {
                let v: u64 = num(name, value)?;
                if v > 1 << 20 {
                    return Err("setting `block_cache_mb` is too large".into());
                }
                self.block_cache_mb = v;
            }
            "max_key_bytes" => {
                let v: usize = num(name, value)?;
                if !(1..=(64 << 10)).contains(&v) {
                    return Err("setting `max_key_bytes` must be between 1 and 65536".into());
                }
                self.max_key_bytes = v;
            }
            "max_value_bytes" => {
                let v: usize = num(name, value)?;
                if v > (64 << 20) {
                    return Err("setting `max_value_bytes` must be at most 64 MiB".into());
                }
                self.max_value_bytes = v;
            }
            "max_body_bytes" => {
                let v: usize = num(name, value)?;
                if !(1024..=(128 << 20)).contains(&v) {
                    return Err("setting `max_body_bytes` must be between 1 KiB and 128 MiB".into());
                }
                self.max_body_bytes = v;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The log format and the RESP front-end: the node's outputs other than its HTTP API.
    fn set_front_ends(&mut self, name: &str, value: &str) -> Result<bool, String> {
        match name {
            "log_format" => match value {
                "human" | "json" => self.log_format = value.into(),
                _ => {
                    return Err(format!(
                        "setting `log_format`: `{value}` is not one of human, json"
                    ))
                }
            },
            "resp_listen" => {
                if value != "off" {
                    value.parse::<std::net::SocketAddr>().map_err(|_| {
                        format!("setting `resp_listen`: `{value}` is not HOST:PORT or off")
                    })?;
                }
                self.resp_listen = Some(value.into());
            }
            "resp_flushdb" => match value {
                "true" => self.resp_flushdb = true,
                "false" => self.resp_flushdb = false,
                _ => {
                    return Err(format!(
                        "setting `resp_flushdb`: `{value}` is not true or false"
                    ))
                }
            },
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The replication factor and the in-sync minimum in effect: `replication_factor` as set,
    /// else 3 with `zookeeper` set and 1 in the embedded default (a cluster of one node has
    /// nowhere to put a second copy); the minimum never above the factor, so a factor of one
    /// still takes writes.
    pub fn replication(&self) -> (usize, usize) {
        let default = if self.zookeeper.is_some() { 3 } else { 1 };
        let rf = self.replication_factor.unwrap_or(default);
        (rf, self.min_insync_replicas.min(rf))
    }

    /// Applies a TOML file's settings.
    pub fn merge_toml(&mut self, text: &str, origin: &str) -> Result<(), String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e| format!("{origin}: not valid TOML: {e}"))?;
        for (name, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{origin}: setting `{name}` has an unsupported type ({})",
                        other.type_str()
                    ))
                }
            };
            self.set(&name, &text)
                .map_err(|e| format!("{origin}: {e}"))?;
        }
        Ok(())
    }

    /// Applies every `CORECACHE_*` variable from `vars`. Unknown names are errors.
    pub fn merge_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), String> {
        for (k, v) in vars {
            let Some(name) = k.strip_prefix("CORECACHE_") else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            // Variables the test harness and tools use, not settings.
            if matches!(
                name.as_str(),
                "model_cases" | "seed" | "seeds" | "bin" | "endpoint" | "log"
            ) || name.starts_with("failpoint_")
            {
                continue;
            }
            self.set(&name, &v)
                .map_err(|e| format!("environment variable {k}: {e}"))?;
        }
        Ok(())
    }

    /// Where the peer transport listens: `peer_listen` if set, else derived from the HTTP
    /// address the node bound (`http`) and the port `listen` asked for, so that nodes started
    /// side by side with only `--listen` set do not collide.
    pub fn peer_addr(&self, http: std::net::SocketAddr) -> String {
        if !self.peer_listen.is_empty() {
            return self.peer_listen.clone();
        }
        let asked = self
            .listen
            .parse::<std::net::SocketAddr>()
            .map_or(0, |a| a.port());
        let port = match asked {
            0 => 0,
            p => p.checked_add(10_000).unwrap_or(0),
        };
        std::net::SocketAddr::new(http.ip(), port).to_string()
    }

    /// Where the RESP front-end listens, if anywhere, and whether that address was set
    /// (`false`: the embedded default's 127.0.0.1:7379).
    pub fn resp_addr(&self) -> Option<(&str, bool)> {
        match self.resp_listen.as_deref() {
            Some("off") => None,
            Some(addr) => Some((addr, true)),
            None if self.zookeeper.is_none() => Some(("127.0.0.1:7379", false)),
            None => None,
        }
    }

    pub fn sync_mode(&self) -> corecache_core::SyncMode {
        match self.sync.as_str() {
            "none" => corecache_core::SyncMode::None,
            "interval" => corecache_core::SyncMode::Interval {
                ms: self.sync_interval_ms,
            },
            _ => corecache_core::SyncMode::Always,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_errors_name_the_setting() {
        let mut c = Config::default();
        c.merge_toml("sync = \"none\"\nmemtable_mb = 8\n", "f.toml")
            .unwrap();
        assert_eq!((c.sync.as_str(), c.memtable_mb), ("none", 8));
        c.merge_env([("CORECACHE_SYNC".to_string(), "interval".to_string())])
            .unwrap();
        assert_eq!(c.sync, "interval");
        c.set("sync", "always").unwrap();
        assert_eq!(c.sync, "always");
        let e = c.merge_toml("bogus_setting = 1", "f.toml").unwrap_err();
        assert!(e.contains("bogus_setting"), "{e}");
        let e = c
            .merge_env([("CORECACHE_SYNC".to_string(), "sometimes".to_string())])
            .unwrap_err();
        assert!(e.contains("CORECACHE_SYNC") && e.contains("sync"), "{e}");
        assert!(c.set("listen", "nope").unwrap_err().contains("listen"));
        assert!(c.set("partitions", "0").is_err());
    }

    #[test]
    fn the_peer_port_follows_the_http_port_unless_set() {
        let mut c = Config::default();
        let bound: std::net::SocketAddr = "127.0.0.1:7072".parse().unwrap();
        c.set("listen", "127.0.0.1:7072").unwrap();
        assert_eq!(c.peer_addr(bound), "127.0.0.1:17072");
        c.set("listen", "127.0.0.1:0").unwrap();
        let os: std::net::SocketAddr = "127.0.0.1:41000".parse().unwrap();
        assert_eq!(
            c.peer_addr(os),
            "127.0.0.1:0",
            "an OS-chosen HTTP port: an OS-chosen peer port"
        );
        c.set("listen", "127.0.0.1:60000").unwrap();
        assert_eq!(
            c.peer_addr("127.0.0.1:60000".parse().unwrap()),
            "127.0.0.1:0"
        );
        c.set("peer_listen", "127.0.0.1:9000").unwrap();
        assert_eq!(c.peer_addr(bound), "127.0.0.1:9000");
    }

    #[test]
    fn resp_listens_by_default_only_in_the_embedded_node() {
        let mut c = Config::default();
        assert_eq!(c.resp_addr(), Some(("127.0.0.1:7379", false)));
        c.set("zookeeper", "127.0.0.1:2181").unwrap();
        assert_eq!(c.resp_addr(), None);
        c.set("resp_listen", "127.0.0.1:0").unwrap();
        assert_eq!(c.resp_addr(), Some(("127.0.0.1:0", true)));
        c.set("resp_listen", "off").unwrap();
        assert_eq!(c.resp_addr(), None);
        assert!(c
            .set("resp_listen", "nope")
            .unwrap_err()
            .contains("resp_listen"));
        assert!(!c.resp_flushdb);
        c.set("resp_flushdb", "true").unwrap();
        assert!(c.resp_flushdb);
        assert!(c.set("resp_flushdb", "yes").is_err());
    }
}
