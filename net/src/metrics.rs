//! Prometheus metrics, hand-written: counters and fixed-bucket histograms in atomics, rendered
//! as text on scrape together with the engine's figures.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use corecache_core::Stats;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The routes we count separately (a fixed set, so a hostile client cannot grow the label set).
pub const ROUTES: [&str; 10] = [
    "kv_get",
    "kv_put",
    "kv_delete",
    "kv_scan",
    "batch",
    "seed_add",
    "seed_get",
    "seed_delete",
    "admin",
    "other",
];
const CODES: [u16; 12] = [200, 204, 400, 404, 405, 412, 413, 414, 500, 503, 0, 1];

#[derive(Default)]
struct RouteMetrics {
    /// Indexed like `CODES`; the last two slots count any other code.
    by_code: [AtomicU64; CODES.len()],
    latency: Histogram,
}

pub struct Metrics {
    routes: Vec<RouteMetrics>,
    fsync: Histogram,
    flush: Histogram,
    compaction: Histogram,
    /// Start of the running flush / compaction (the engine runs at most one of each at a time).
    flush_started: std::sync::Mutex<Option<std::time::Instant>>,
    compaction_started: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: ROUTES.iter().map(|_| RouteMetrics::default()).collect(),
            fsync: Histogram::default(),
            flush: Histogram::default(),
            compaction: Histogram::default(),
            flush_started: Default::default(),
            compaction_started: Default::default(),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Times the engine's flushes and compactions (the engine itself reads no clock).
impl corecache_core::EventListener for Metrics {
    fn flush_begin(&self) {
        *lock(&self.flush_started) = Some(std::time::Instant::now());
    }
    fn flush_end(&self, _bytes: u64, _ok: bool) {
        if let Some(t) = lock(&self.flush_started).take() {
            self.flush.observe(t.elapsed());
        }
    }
    fn compaction_begin(&self) {
        *lock(&self.compaction_started) = Some(std::time::Instant::now());
    }
    fn compaction_end(&self, _bytes: u64, _ok: bool) {
        if let Some(t) = lock(&self.compaction_started).take() {
            self.compaction.observe(t.elapsed());
        }
    }
}

impl Metrics {
    pub fn observe_request(&self, route: &str, code: u16, d: Duration) {
        let r = ROUTES
            .iter()
            .position(|x| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        let c = CODES
            .iter()
            .position(|x| *x == code)
            .unwrap_or(CODES.len() - 1);
        self.routes[r].by_code[c].fetch_add(1, Ordering::Relaxed);
        self.routes[r].latency.observe(d);
    }

    pub fn observe_fsync(&self, d: Duration) {
        self.fsync.observe(d);
    }

    pub fn render(&self, engine: &Stats, waiting_for_persist: usize) -> String {
        let mut out = String::with_capacity(16 << 10);
        self.render_http(&mut out);
        self.render_timings(&mut out);
        render_engine_totals(&mut out, engine, waiting_for_persist);
        render_levels(&mut out, engine);
        out
    }

    /// Requests by route and code, then latency by route. Labels come only from the fixed
    /// `ROUTES` and `CODES` tables, and a request count of zero is left out.
    fn render_http(&self, out: &mut String) {
        out.push_str(
            "# HELP corecache_http_requests_total HTTP requests by route and status code.\n",
        );
        out.push_str("# TYPE corecache_http_requests_total counter\n");
        for (ri, route) in ROUTES.iter().enumerate() {
            for (ci, code) in CODES.iter().enumerate() {
                let n = self.routes[ri].by_code[ci].load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let code = if *code < 100 {
                    "other".to_string()
                } else {
                    code.to_string()
                };
                let _ = writeln!(
                    out,
                    "corecache_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP corecache_http_request_duration_seconds Time from request to response.\n",
        );
        out.push_str("# TYPE corecache_http_request_duration_seconds histogram\n");
        for (ri, route) in ROUTES.iter().enumerate() {
            self.routes[ri].latency.render(
                out,
                "corecache_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
    }

    /// The durations timed here rather than counted by the engine (which reads no clock).
    fn render_timings(&self, out: &mut String) {
        out.push_str(
            "# HELP corecache_wal_fsync_duration_seconds Time of one group-commit fsync.\n",
        );
        out.push_str("# TYPE corecache_wal_fsync_duration_seconds histogram\n");
        self.fsync
            .render(out, "corecache_wal_fsync_duration_seconds", "");
        out.push_str("# HELP corecache_flush_duration_seconds Time of one memtable flush.\n");
        out.push_str("# TYPE corecache_flush_duration_seconds histogram\n");
        self.flush
            .render(out, "corecache_flush_duration_seconds", "");
        out.push_str("# HELP corecache_compaction_duration_seconds Time of one compaction.\n");
        out.push_str("# TYPE corecache_compaction_duration_seconds histogram\n");
        self.compaction
            .render(out, "corecache_compaction_duration_seconds", "");
    }
}

/// The engine's gauges and counters, with the node's persist backlog among the gauges: all
/// plain numbers that the node reads rather than times.
fn render_engine_totals(out: &mut String, engine: &Stats, waiting_for_persist: usize) {
    let gauges: [(&str, &str, u64); 4] = [
        (
            "corecache_memtable_bytes",
            "Bytes in memtables (active and frozen).",
            engine.memtable_bytes,
        ),
        (
            "corecache_immutable_memtables",
            "Frozen memtables waiting for flush.",
            engine.immutable_memtables as u64,
        ),
        (
            "corecache_disk_table_bytes",
            "Bytes in live SSTables.",
            engine.table_bytes_total,
        ),
        (
            "corecache_writes_waiting_for_fsync",
            "Durable writes applied, not yet acknowledged.",
            waiting_for_persist as u64,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let counters: [(&str, &str, u64); 7] = [
        (
            "corecache_flushes_total",
            "Memtable flushes.",
            engine.flushes,
        ),
        (
            "corecache_compactions_total",
            "Compactions.",
            engine.compactions,
        ),
        (
            "corecache_write_stalls_total",
            "Writes that stalled on background work.",
            engine.write_stalls,
        ),
        ("corecache_wal_syncs_total", "WAL fsyncs.", engine.wal_syncs),
        (
            "corecache_flush_bytes_total",
            "Bytes written by flushes.",
            engine.flush_bytes,
        ),
        (
            "corecache_compaction_bytes_written_total",
            "Bytes written by compactions.",
            engine.compaction_bytes_written,
        ),
        (
            "corecache_background_errors_total",
            "Failed flushes, compactions and syncs.",
            engine.background_errors,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
}

/// Per-level figures: labelled by level, since how many levels there are is the engine's
/// business, not fixed here.
fn render_levels(out: &mut String, engine: &Stats) {
    out.push_str("# HELP corecache_tables Tables per level.\n# TYPE corecache_tables gauge\n");
    for (level, n) in engine.tables_per_level.iter().enumerate() {
        let _ = writeln!(out, "corecache_tables{{level=\"{level}\"}} {n}");
    }
    out.push_str(
        "# HELP corecache_level_bytes Bytes per level.\n# TYPE corecache_level_bytes gauge\n",
    );
    for (level, n) in engine.bytes_per_level.iter().enumerate() {
        let _ = writeln!(out, "corecache_level_bytes{{level=\"{level}\"}} {n}");
    }
}

/// Replication: under-replicated partitions, each led partition's lag, take-overs, copies.
pub fn render_replication(out: &mut String, r: &corecache_core::node::ReplicationStats) {
    let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    gauge(
        out,
        "corecache_under_replicated_partitions",
        "Partitions with fewer copies in sync than the replication factor.",
        "gauge",
        r.under_replicated as u64,
    );
    out.push_str(
        "# HELP corecache_replication_lag_entries Per partition this node leads: log entries its slowest replica (of those writes wait for) is behind.\n# TYPE corecache_replication_lag_entries gauge\n",
    );
    for (p, lag) in &r.lag {
        let _ = writeln!(
            out,
            "corecache_replication_lag_entries{{partition=\"{p}\"}} {lag}"
        );
    }
    gauge(
        out,
        "corecache_replication_failovers_total",
        "Partitions this node took over as primary (failovers and planned hand-overs).",
        "counter",
        r.promotions,
    );
    gauge(
        out,
        "corecache_replication_copies_received_total",
        "Whole copies of a partition this node received as a learner (re-replication).",
        "counter",
        r.copies_received,
    );
    gauge(
        out,
        "corecache_replication_copy_keys_received_total",
        "Keys received in copies of partitions (re-replication progress).",
        "counter",
        r.copy_keys_received,
    );
    gauge(
        out,
        "corecache_replication_copy_pages_sent_total",
        "Pages of partition copies this node sent as primary.",
        "counter",
        r.copy_pages_sent,
    );
    gauge(
        out,
        "corecache_replication_truncations_total",
        "Times this node undid log entries a new primary did not have.",
        "counter",
        r.truncations,
    );
}
