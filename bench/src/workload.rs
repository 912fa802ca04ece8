//! The workloads: what each one does to an engine, and how it is timed.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::engine::Engine;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bench {
    FillSeq,
    FillRandom,
    Overwrite,
    ReadRandom,
    ReadMissing,
    Scan,
    Durable64,
    Durable1,
}

/// Which database a workload runs on: the same slot is shared by the workloads that build on one
/// another (overwrite runs on fillrandom's database, the reads on fillseq's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Seq,
    Rand,
    Durable64,
    Durable1,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Seq => "seq",
            Slot::Rand => "rand",
            Slot::Durable64 => "durable64",
            Slot::Durable1 => "durable1",
        }
    }
}

/// Entries read by each range scan.
pub const SCAN_LENGTH: usize = 100;
/// Range scans in the scan workload.
pub const SCANS: u64 = 10_000;
pub const DURABLE_THREADS: usize = 64;
/// durable64 stops early past this, counting what was done.
pub const DURABLE64_TIME_LIMIT: Duration = Duration::from_secs(60);
pub const DURABLE1_OPS: u64 = 2000;
/// durable1 stops at `DURABLE1_OPS` or after this, whichever comes first.
pub const DURABLE1_TIME_LIMIT: Duration = Duration::from_secs(2);

impl Bench {
    pub const ALL: [Bench; 8] = [
        Bench::FillSeq,
        Bench::FillRandom,
        Bench::Overwrite,
        Bench::ReadRandom,
        Bench::ReadMissing,
        Bench::Scan,
        Bench::Durable64,
        Bench::Durable1,
    ];

    pub fn parse(name: &str) -> Result<Self> {
        match Bench::ALL.into_iter().find(|b| b.name() == name) {
            Some(b) => Ok(b),
            None => bail!("unknown benchmark {name:?}"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Bench::FillSeq => "fillseq",
            Bench::FillRandom => "fillrandom",
            Bench::Overwrite => "overwrite",
            Bench::ReadRandom => "readrandom",
            Bench::ReadMissing => "readmissing",
            Bench::Scan => "scan",
            Bench::Durable64 => "durable64",
            Bench::Durable1 => "durable1",
        }
    }

    pub fn slot(self) -> Slot {
        match self {
            Bench::FillSeq | Bench::ReadRandom | Bench::ReadMissing | Bench::Scan => Slot::Seq,
            Bench::FillRandom | Bench::Overwrite => Slot::Rand,
            Bench::Durable64 => Slot::Durable64,
            Bench::Durable1 => Slot::Durable1,
        }
    }

    /// The workload that must have filled the slot's database before this one runs, if any.
    /// `None` means this workload starts from an empty database.
    pub fn needs(self) -> Option<Bench> {
        match self {
            Bench::Overwrite => Some(Bench::FillRandom),
            Bench::ReadRandom | Bench::ReadMissing | Bench::Scan => Some(Bench::FillSeq),
            _ => None,
        }
    }

    pub fn durable(self) -> bool {
        matches!(self, Bench::Durable64 | Bench::Durable1)
    }
}

/// The fixed-width decimal key for `i`, so that byte order is numeric order.
pub fn key(i: u64) -> [u8; 16] {
    let mut k = [b'0'; 16];
    let mut n = i;
    for b in k.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

/// A key that sorts between the keys of the data set but is never written: `key(i)` with its
/// last digit replaced by a letter. Reads of it must get past the bloom filters.
pub fn missing_key(i: u64) -> [u8; 16] {
    let mut k = key(i);
    k[15] = b'x';
    k
}

/// Incompressible values, cut from one random buffer at varying offsets.
pub struct Values {
    buf: Vec<u8>,
    size: usize,
}

impl Values {
    const WINDOW: usize = 1 << 20;

    pub fn new(size: usize) -> Self {
        let mut buf = vec![0; Self::WINDOW + size];
        StdRng::seed_from_u64(0x5eed).fill_bytes(&mut buf);
        Values { buf, size }
    }

    pub fn get(&self, i: u64) -> &[u8] {
        let start = (i.wrapping_mul(7919) % Self::WINDOW as u64) as usize;
        &self.buf[start..start + self.size]
    }
}

/// What a timed run measured.
pub struct Outcome {
    pub ops: u64,
    /// Puts done, keys found, or entries scanned.
    pub items: u64,
    pub elapsed: Duration,
    /// Per-op latency in nanoseconds.
    pub latency: Histogram<u64>,
}

/// Latencies in nanoseconds, from 1 ns to 100 s (longer ones count as 100 s), 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs `op(i)` for `i` in `0..ops`, timing each call. `op` returns its item count.
fn timed(ops: u64, mut op: impl FnMut(u64) -> Result<u64>) -> Result<Outcome> {
    let mut latency = new_histogram();
    let mut items = 0;
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        items += op(i)?;
        latency.saturating_record(t.elapsed().as_nanos() as u64);
    }
    Ok(Outcome {
        ops,
        items,
        elapsed: start.elapsed(),
        latency,
    })
}

/// Settings a workload needs besides the engine.
pub struct Workload<'a> {
    pub num: u64,
    pub values: &'a Values,
    pub durable_ops: u64,
}

impl Workload<'_> {
    pub fn run(&self, bench: Bench, engine: &dyn Engine) -> Result<Outcome> {
        let n = self.num;
        let values = self.values;
        let mut rng = StdRng::seed_from_u64(seed(bench));
        match bench {
            Bench::FillSeq => timed(n, |i| engine.put(&key(i), values.get(i)).map(|()| 1)),
            Bench::FillRandom | Bench::Overwrite => timed(n, |i| {
                let k = rng.gen_range(0..n);
                engine.put(&key(k), values.get(i)).map(|()| 1)
            }),
            Bench::ReadRandom => timed(n, |_| {
                let k = rng.gen_range(0..n);
                let found = engine.get(&key(k))?;
                match found {
                    Some(len) if len == values.size => Ok(1),
                    Some(len) => bail!("key {k}: value of {len} bytes, expected {}", values.size),
                    None => Ok(0),
                }
            }),
            Bench::ReadMissing => timed(n, |_| {
                let k = rng.gen_range(0..n);
                Ok(u64::from(engine.get(&missing_key(k))?.is_some()))
            }),
            Bench::Scan => timed(SCANS, |_| {
                let start = rng.gen_range(0..n.saturating_sub(SCAN_LENGTH as u64));
                Ok(engine.scan(&key(start), SCAN_LENGTH)? as u64)
            }),
            Bench::Durable64 => durable(
                engine,
                values,
                DURABLE_THREADS,
                self.durable_ops,
                DURABLE64_TIME_LIMIT,
            ),
            Bench::Durable1 => durable(engine, values, 1, DURABLE1_OPS, DURABLE1_TIME_LIMIT),
        }
    }
}

/// How many operations `bench` does (durable runs may stop early, on their time limit).
pub fn planned_ops(bench: Bench, num: u64, durable_ops: u64) -> u64 {
    match bench {
        Bench::Scan => SCANS,
        Bench::Durable64 => DURABLE_THREADS as u64 * durable_ops,
        Bench::Durable1 => DURABLE1_OPS,
        _ => num,
    }
}

/// Different random streams for the two random fills, so overwrite does not replay fillrandom.
fn seed(bench: Bench) -> u64 {
    0xC0DE_CACE ^ ((bench as u64) << 32)
}

/// `threads` writers, each doing up to `ops_per_thread` puts of its own keys, every put on disk
/// before it returns; all stop once `limit` has passed.
fn durable(
    engine: &dyn Engine,
    values: &Values,
    threads: usize,
    ops_per_thread: u64,
    limit: Duration,
) -> Result<Outcome> {
    let start = Instant::now();
    let per_thread = std::thread::scope(|s| {
        let writers: Vec<_> = (0..threads as u64)
            .map(|t| {
                s.spawn(move || -> Result<(u64, Histogram<u64>)> {
                    let mut latency = new_histogram();
                    let mut done = 0;
                    while done < ops_per_thread && start.elapsed() < limit {
                        let i = t * ops_per_thread + done;
                        let began = Instant::now();
                        engine.put(&key(i), values.get(i))?;
                        latency.saturating_record(began.elapsed().as_nanos() as u64);
                        done += 1;
                    }
                    Ok((done, latency))
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("writer thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    let elapsed = start.elapsed();
    let mut latency = new_histogram();
    let mut ops = 0;
    for (done, h) in per_thread {
        ops += done;
        latency
            .add(h)
            .expect("histograms of the same precision merge");
    }
    Ok(Outcome {
        ops,
        items: ops,
        elapsed,
        latency,
    })
}
