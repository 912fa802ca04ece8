//! One workload on one engine, in a process of its own so that its peak RSS is its own.
//!
//! The child prints one line on stdout for the parent: `result key=value ...` on success,
//! `error MESSAGE` on failure.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::Args;
use crate::engine::{self, EngineConfig, EngineKind};
use crate::workload::{Values, Workload};

/// What a child reports back.
#[derive(Clone, Debug, Default)]
pub struct ChildResult {
    pub ops: u64,
    pub items: u64,
    pub secs: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// VmHWM at the end of the child, in KiB.
    pub peak_rss_kb: u64,
    /// The child had to load the database (untimed) before running the workload.
    pub prepared: bool,
}

impl ChildResult {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    pub fn items_per_sec(&self) -> f64 {
        self.items as f64 / self.secs
    }

    fn to_line(&self) -> String {
        format!(
            "result ops={} items={} secs={} p50_us={} p99_us={} peak_rss_kb={} prepared={}",
            self.ops,
            self.items,
            self.secs,
            self.p50_us,
            self.p99_us,
            self.peak_rss_kb,
            u8::from(self.prepared)
        )
    }

    /// Parses the child's stdout: its `result` line, or its `error` line as the error.
    pub fn from_output(stdout: &str) -> Result<ChildResult, String> {
        for line in stdout.lines() {
            if let Some(message) = line.strip_prefix("error ") {
                return Err(message.to_string());
            }
            if let Some(fields) = line.strip_prefix("result ") {
                return Self::parse_fields(fields);
            }
        }
        Err("no result line from the child".to_string())
    }

    fn parse_fields(fields: &str) -> Result<ChildResult, String> {
        let mut r = ChildResult::default();
        for field in fields.split_whitespace() {
            let (name, value) = field
                .split_once('=')
                .ok_or_else(|| format!("bad result field {field:?}"))?;
            match name {
                "ops" => r.ops = parse_field(field, value)?,
                "items" => r.items = parse_field(field, value)?,
                "secs" => r.secs = parse_field(field, value)?,
                "p50_us" => r.p50_us = parse_field(field, value)?,
                "p99_us" => r.p99_us = parse_field(field, value)?,
                "peak_rss_kb" => r.peak_rss_kb = parse_field(field, value)?,
                "prepared" => r.prepared = value == "1",
                _ => return Err(format!("unknown result field {name:?}")),
            }
        }
        Ok(r)
    }
}

fn parse_field<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("bad value in result field {field:?}"))
}

/// Runs the child's one workload and prints its result line; on failure prints an error line
/// and returns the error.
pub fn run(args: &Args, engine: EngineKind) -> Result<()> {
    match run_workload(args, engine) {
        Ok(result) => {
            println!("{}", result.to_line());
            Ok(())
        }
        Err(e) => {
            println!("error {}", format!("{e:#}").replace('\n', " "));
            Err(e)
        }
    }
}

fn run_workload(args: &Args, kind: EngineKind) -> Result<ChildResult> {
    let bench = args.benchmarks[0];
    let dir = args.dir.as_ref().context("a child needs --dir")?;
    let db_dir = dir.join(format!("{}-{}", kind.name(), bench.slot().name()));
    // Written once the slot's database holds a full load of this size.
    let marker = dir.join(format!("{}-{}.loaded", kind.name(), bench.slot().name()));
    let stamp = format!("num={} value_size={}", args.num, args.value_size);
    let values = Values::new(args.value_size);
    let workload = Workload {
        num: args.num,
        values: &values,
        durable_ops: args.durable_ops,
    };
    let config = EngineConfig {
        dir: db_dir.clone(),
        memtable_bytes: args.memtable_mb << 20,
        cache_bytes: args.cache_mb << 20,
        durable: bench.durable(),
    };
    let tag = format!("[{} {}]", kind.name(), bench.name());

    let mut prepared = false;
    match bench.needs() {
        None => remove_db(&db_dir, &marker)?,
        Some(load) if fs::read_to_string(&marker).ok().as_deref() != Some(stamp.as_str()) => {
            eprintln!(
                "{tag} loading the database first with {} (untimed)",
                load.name()
            );
            remove_db(&db_dir, &marker)?;
            let started = Instant::now();
            let db = engine::open(kind, &config)?;
            workload.run(load, db.as_ref())?;
            db.close()?;
            fs::write(&marker, &stamp)?;
            eprintln!("{tag} loaded in {:.1?}", started.elapsed());
            prepared = true;
        }
        Some(_) => {}
    }

    let opened = Instant::now();
    let db = engine::open(kind, &config)?;
    eprintln!("{tag} opened in {:.1?}", opened.elapsed());
    let outcome = workload.run(bench, db.as_ref())?;
    eprintln!(
        "{tag} {} ops in {:.2?}; engine: {}",
        outcome.ops,
        outcome.elapsed,
        db.stats()
    );
    let closing = Instant::now();
    db.close()?;
    eprintln!("{tag} closed in {:.1?}", closing.elapsed());
    if bench.needs().is_none() && !bench.durable() {
        // This was a full load: later workloads may build on it.
        fs::write(&marker, &stamp)?;
    }

    let us = |q: f64| outcome.latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(ChildResult {
        ops: outcome.ops,
        items: outcome.items,
        secs: outcome.elapsed.as_secs_f64(),
        p50_us: us(0.50),
        p99_us: us(0.99),
        peak_rss_kb: peak_rss_kb()?,
        prepared,
    })
}

fn remove_db(db_dir: &Path, marker: &Path) -> Result<()> {
    if marker.exists() {
        fs::remove_file(marker)?;
    }
    if db_dir.exists() {
        fs::remove_dir_all(db_dir).with_context(|| format!("removing {}", db_dir.display()))?;
    }
    Ok(())
}

/// This process's peak resident set size (VmHWM), in KiB.
fn peak_rss_kb() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    let kb = line.trim().trim_end_matches("kB").trim();
    Ok(kb.parse()?)
}
