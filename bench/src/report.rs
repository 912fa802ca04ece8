//! The markdown the parent prints: the machine and settings first, the results at the end.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::child::ChildResult;
use crate::cli::Args;
use crate::engine::{self, EngineKind};
use crate::workload::{self, Bench};
use crate::Results;

pub fn print_header(args: &Args, dir: &Path) {
    println!("# CoreCache engine benchmark\n");
    println!("Command: `{}`\n", command_line());
    println!("Machine: {}\n", machine());
    println!(
        "Databases in `{}` ({}).\n",
        dir.display(),
        filesystem_of(dir).unwrap_or_else(|| "unknown filesystem".to_string())
    );
    println!(
        "Data: {} keys of 16 bytes (`{{:016}}`), {}-byte incompressible values; every engine gets \
         a {} MiB memtable and a {} MiB block cache.\n",
        group_digits(args.num as f64),
        args.value_size,
        args.memtable_mb,
        args.cache_mb
    );
    for &kind in &args.engines {
        println!("- {}", engine::describe(kind));
    }
    println!(
        "\nWorkloads (each engine, each workload in a process of its own): fillseq and \
         fillrandom start from an empty database; overwrite runs on fillrandom's; readrandom \
         (every key exists), readmissing (absent keys that sort between present ones) and scan \
         ({} scans of {} entries from random starts) run on fillseq's; durable64 is {} threads \
         doing {} fsync'd puts each (stopping at {} s), durable1 one thread doing {} fsync'd \
         puts (stopping at {} s). Latency is per operation (per scan for scan).\n",
        workload::SCANS,
        workload::SCAN_LENGTH,
        workload::DURABLE_THREADS,
        args.durable_ops,
        workload::DURABLE64_TIME_LIMIT.as_secs(),
        workload::DURABLE1_OPS,
        workload::DURABLE1_TIME_LIMIT.as_secs(),
    );
}

pub fn print_results(args: &Args, results: &Results) {
    let engines = &args.engines;
    let ratio = engines.contains(&EngineKind::CoreCache) && engines.len() > 1;
    let names = |suffix: &str| {
        engines
            .iter()
            .map(|e| format!(" {} |", format!("{} {suffix}", e.name()).trim_end()))
            .collect::<String>()
    };

    let mut out = String::new();
    out.push_str("## Results\n\n| workload |");
    out.push_str(&names("ops/s"));
    if ratio {
        out.push_str(" corecache / best peer |");
    }
    out.push_str(&names("p50 / p99 µs"));
    out.push_str("\n|---|");
    let columns = engines.len() * 2 + usize::from(ratio);
    out.push_str(&"---:|".repeat(columns));
    out.push('\n');

    for &bench in &args.benchmarks {
        let row = |rate: fn(&ChildResult) -> f64, with_latency: bool| {
            let mut line = String::new();
            for &e in engines {
                line.push_str(&match results.get(&(bench, e)) {
                    Some(Ok(r)) => format!(" {} |", group_digits(rate(r))),
                    _ => " failed |".to_string(),
                });
            }
            if ratio {
                let _ = write!(line, " {} |", ratio_cell(results, bench, engines, rate));
            }
            for &e in engines {
                line.push_str(&match results.get(&(bench, e)) {
                    Some(Ok(r)) if with_latency => {
                        format!(" {} / {} |", micros(r.p50_us), micros(r.p99_us))
                    }
                    Some(Ok(_)) => " |".to_string(),
                    _ => " - |".to_string(),
                });
            }
            line
        };
        let label = if bench == Bench::Scan {
            "scan (scans/s)"
        } else {
            bench.name()
        };
        let _ = writeln!(out, "| {label} |{}", row(ChildResult::ops_per_sec, true));
        if bench == Bench::Scan {
            let _ = writeln!(
                out,
                "| scan (entries/s) |{}",
                row(ChildResult::items_per_sec, false)
            );
        }
    }
    if args.benchmarks.contains(&Bench::Durable64) && args.benchmarks.contains(&Bench::Durable1) {
        out.push_str("| durable64 / durable1 |");
        for &e in engines {
            let speedup = match (
                results.get(&(Bench::Durable64, e)),
                results.get(&(Bench::Durable1, e)),
            ) {
                (Some(Ok(many)), Some(Ok(one))) => {
                    format!("{:.1}×", many.ops_per_sec() / one.ops_per_sec())
                }
                _ => "-".to_string(),
            };
            let _ = write!(out, " {speedup} |");
        }
        out.push_str(&" |".repeat(columns - engines.len()));
        out.push('\n');
    }

    out.push_str("\n### Peak RSS (VmHWM of the workload's process, MiB)\n\n| workload |");
    out.push_str(&names(""));
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(engines.len()));
    out.push('\n');
    for &bench in &args.benchmarks {
        let _ = write!(out, "| {} |", bench.name());
        for &e in engines {
            let cell = match results.get(&(bench, e)) {
                Some(Ok(r)) => format!("{:.0}", r.peak_rss_kb as f64 / 1024.0),
                _ => "-".to_string(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    if args.benchmarks.contains(&Bench::FillRandom) {
        let _ = writeln!(
            out,
            "\nThe fillrandom row is the peak RSS while loading {} keys into an empty database.",
            group_digits(args.num as f64)
        );
    }

    let notes = notes(args, results);
    if !notes.is_empty() {
        out.push_str("\n### Notes\n\n");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    print!("{out}");
}

/// CoreCache's rate over the best other engine's.
fn ratio_cell(
    results: &Results,
    bench: Bench,
    engines: &[EngineKind],
    rate: fn(&ChildResult) -> f64,
) -> String {
    let Some(Ok(ours)) = results.get(&(bench, EngineKind::CoreCache)) else {
        return "-".to_string();
    };
    let best_peer = engines
        .iter()
        .filter(|&&e| e != EngineKind::CoreCache)
        .filter_map(|&e| match results.get(&(bench, e)) {
            Some(Ok(r)) => Some(rate(r)),
            _ => None,
        })
        .fold(None, |best: Option<f64>, r| {
            Some(best.map_or(r, |b| b.max(r)))
        });
    match best_peer {
        Some(peer) if peer > 0.0 => format!("{:.2}×", rate(ours) / peer),
        _ => "-".to_string(),
    }
}

/// Failures, and figures that do not mean what the table says.
fn notes(args: &Args, results: &Results) -> Vec<String> {
    let mut notes = Vec::new();
    for &bench in &args.benchmarks {
        for &e in &args.engines {
            let who = format!("{} {}", e.name(), bench.name());
            let r = match results.get(&(bench, e)) {
                Some(Ok(r)) => r,
                Some(Err(why)) => {
                    notes.push(format!("{who} FAILED: {why}"));
                    continue;
                }
                None => continue,
            };
            if r.prepared {
                notes.push(format!(
                    "{who}: loaded its database first (untimed, same process), so its peak RSS \
                     includes that load"
                ));
            }
            match bench {
                Bench::ReadRandom if r.items != r.ops => notes.push(format!(
                    "{who}: only {} of {} keys found (all should be)",
                    r.items, r.ops
                )),
                Bench::ReadMissing if r.items != 0 => notes.push(format!(
                    "{who}: {} absent keys were found (none should be)",
                    r.items
                )),
                Bench::Durable64 | Bench::Durable1 => {
                    let planned = workload::planned_ops(bench, args.num, args.durable_ops);
                    if r.ops < planned {
                        notes.push(format!(
                            "{who}: stopped on its time limit after {} of {planned} puts",
                            r.ops
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    notes
}

fn micros(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

/// `1234567.8` as `1,234,568`.
fn group_digits(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn command_line() -> String {
    std::env::args()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, name)| name.trim());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
    format!(
        "{cores} cores (nproc), {cpu}, {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// The filesystem type and device of the mount holding `path`, from /proc/mounts.
fn filesystem_of(path: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, mount, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), format!("{fs_type} on {device}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}
