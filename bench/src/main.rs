//! db_bench-style benchmark of CoreCache's storage engine against fjall (and, with the `rocksdb`
//! feature, RocksDB).
//!
//! The parent process runs each (workload, engine) pair in a child process of its own (this
//! binary again, with `--child ENGINE`), so that each figure of peak RSS belongs to one engine
//! and one workload, then prints the machine, the command line and a markdown table of results.

mod child;
mod cli;
mod engine;
mod report;
mod workload;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result};

use crate::child::ChildResult;
use crate::cli::{Args, USAGE};
use crate::engine::EngineKind;
use crate::workload::Bench;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let outcome = match args.child {
        Some(engine) => child::run(&args, engine),
        None => run_parent(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Each pair's result, or why it has none.
pub type Results = HashMap<(Bench, EngineKind), Result<ChildResult, String>>;

fn run_parent(args: &Args) -> Result<()> {
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("corecache-bench-{}", std::process::id())),
            true,
        ),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;

    report::print_header(args, &dir);
    let mut results = Results::new();
    for &bench in &args.benchmarks {
        for &engine in &args.engines {
            eprintln!("== {} on {}", bench.name(), engine.name());
            let result = run_child(args, engine, bench, &dir)?;
            if let Err(e) = &result {
                eprintln!("== {} on {} FAILED: {e}", bench.name(), engine.name());
            }
            results.insert((bench, engine), result);
        }
    }
    report::print_results(args, &results);

    if temporary {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Runs one pair in a child process. `Err` only if the child could not be started at all; a
/// child that failed gives `Ok(Err(why))`.
fn run_child(
    args: &Args,
    engine: EngineKind,
    bench: Bench,
    dir: &Path,
) -> Result<Result<ChildResult, String>> {
    let exe: PathBuf = std::env::current_exe()?;
    let output = Command::new(exe)
        .args(args.child_flags(engine, bench, dir))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting a child process")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(match ChildResult::from_output(&stdout) {
        Ok(result) if output.status.success() => Ok(result),
        Ok(_) => Err(format!("child failed after its result ({})", output.status)),
        Err(e) if output.status.success() => Err(e),
        Err(e) => Err(format!("{e} ({})", output.status)),
    })
}
