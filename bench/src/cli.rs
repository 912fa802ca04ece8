//! Command-line flags, shared by the parent run and the child processes it starts.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use crate::engine::EngineKind;
use crate::workload::Bench;

pub const USAGE: &str = "\
usage: corecache-bench [flags]

  --num N               keys per workload (default 1000000)
  --value-size BYTES    value size (default 100)
  --engines LIST        comma list of corecache, fjall, rocksdb (default corecache,fjall)
  --benchmarks LIST     comma list, run in the order given (default: all, in this order)
                        fillseq, fillrandom, overwrite, readrandom, readmissing, scan,
                        durable64, durable1
  --memtable-mb MB      memtable budget for every engine (default 64)
  --cache-mb MB         block cache budget for every engine (default 64)
  --durable-ops N       fsync'd puts per thread in durable64 (default 1000)
  --dir PATH            where the databases go (default: a fresh directory under /tmp,
                        removed at the end)
";

#[derive(Clone, Debug)]
pub struct Args {
    pub num: u64,
    pub value_size: usize,
    pub engines: Vec<EngineKind>,
    pub benchmarks: Vec<Bench>,
    pub memtable_mb: usize,
    pub cache_mb: usize,
    pub durable_ops: u64,
    pub dir: Option<PathBuf>,
    /// Set in a child process: run `benchmarks` (one) on this engine and print a result line.
    pub child: Option<EngineKind>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            num: 1_000_000,
            value_size: 100,
            engines: vec![EngineKind::CoreCache, EngineKind::Fjall],
            benchmarks: Bench::ALL.to_vec(),
            memtable_mb: 64,
            cache_mb: 64,
            durable_ops: 1000,
            dir: None,
            child: None,
        }
    }
}

impl Args {
    /// Parses flags (without the program name). `Ok(None)` means help was asked for.
    pub fn parse(mut flags: impl Iterator<Item = String>) -> Result<Option<Args>> {
        let mut args = Args::default();
        while let Some(flag) = flags.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            let value = flags
                .next()
                .ok_or_else(|| anyhow!("{flag} needs a value"))?;
            let bad = || format!("bad value {value:?} for {flag}");
            match flag.as_str() {
                "--num" => args.num = value.parse().with_context(bad)?,
                "--value-size" => args.value_size = value.parse().with_context(bad)?,
                "--engines" => args.engines = parse_list(&value, EngineKind::parse)?,
                "--benchmarks" => args.benchmarks = parse_list(&value, Bench::parse)?,
                "--memtable-mb" => args.memtable_mb = value.parse().with_context(bad)?,
                "--cache-mb" => args.cache_mb = value.parse().with_context(bad)?,
                "--durable-ops" => args.durable_ops = value.parse().with_context(bad)?,
                "--dir" => args.dir = Some(PathBuf::from(value)),
                "--child" => args.child = Some(EngineKind::parse(&value)?),
                _ => bail!("unknown flag {flag}\n\n{USAGE}"),
            }
        }
        if args.num < 1000 {
            bail!("--num must be at least 1000");
        }
        if args.value_size == 0 {
            bail!("--value-size must be at least 1");
        }
        if args.engines.is_empty() || args.benchmarks.is_empty() {
            bail!("--engines and --benchmarks must not be empty");
        }
        if args.child.is_some() && args.benchmarks.len() != 1 {
            bail!("a child runs exactly one benchmark");
        }
        Ok(Some(args))
    }

    /// The flags that make a child run `bench` on `engine` with this run's settings.
    pub fn child_flags(
        &self,
        engine: EngineKind,
        bench: Bench,
        dir: &std::path::Path,
    ) -> Vec<String> {
        let flags = [
            ("--child", engine.name().to_string()),
            ("--benchmarks", bench.name().to_string()),
            ("--num", self.num.to_string()),
            ("--value-size", self.value_size.to_string()),
            ("--memtable-mb", self.memtable_mb.to_string()),
            ("--cache-mb", self.cache_mb.to_string()),
            ("--durable-ops", self.durable_ops.to_string()),
            ("--dir", dir.display().to_string()),
        ];
        flags
            .into_iter()
            .flat_map(|(flag, value)| [flag.to_string(), value])
            .collect()
    }
}

fn parse_list<T: PartialEq>(list: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let mut items = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let item = parse(name)?;
        if items.contains(&item) {
            bail!("{name} is listed twice");
        }
        items.push(item);
    }
    Ok(items)
}
