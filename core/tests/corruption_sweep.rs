//! Corruption sweep over a real database directory (`StdDisk`): every kind of file — the WAL,
//! each SSTable, the MANIFEST — gets single-bit flips at many offsets and truncations at every
//! record or block boundary (and one byte either side). Each case runs on a fresh copy of the
//! directory and must end in exactly one of:
//!
//! - open fails with `Error::Corruption` naming the damaged file, at an offset no later than the
//!   damage;
//! - open succeeds and every read (a `get` of every key ever written, and a full scan) equals
//!   the model — for damage to the WAL, the model after some prefix of the write history that
//!   keeps every write whose WAL record lies wholly before the damage (a damaged last record is
//!   a torn tail: the engine may drop it, and with it every later log);
//! - (tables only) open succeeds, the damage is in a data block, which open does not read, and
//!   the reads that touch it fail with `Error::Corruption` naming the table and the block's
//!   offset — while every read that succeeds still equals the model.
//!
//! Never a panic, never a wrong value, never damage to a table that goes unnoticed (every byte
//! of a table is under a checksum).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use corecache_core::{Background, Db, Error, Options, StallPolicy, StdDisk, SyncMode, WriteBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x5eed_c0de_0006;

fn options() -> Options {
    Options {
        sync: SyncMode::Always,
        background: Background::Manual,
        stall: StallPolicy::Refuse,
        max_immutable_memtables: 64,
        l0_stop_writes: 64,
        ..Options::tiny()
    }
}

// ---------------------------------------------------------------------------------------------
// The model: every batch written, in order, with its sequence numbers.

type Op = (Vec<u8>, Option<Vec<u8>>);

struct Written {
    /// Sequence number of the batch's last operation.
    last_seq: u64,
    ops: Vec<Op>,
}

struct Model {
    history: Vec<Written>,
    keys: BTreeSet<Vec<u8>>,
}

impl Model {
    /// The contents after every batch whose last sequence number is `<= upto`.
    fn state_at(&self, upto: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut m = BTreeMap::new();
        for w in self.history.iter().take_while(|w| w.last_seq <= upto) {
            for (k, v) in &w.ops {
                match v {
                    Some(v) => m.insert(k.clone(), v.clone()),
                    None => m.remove(k),
                };
            }
        }
        m
    }

    fn last_seq(&self) -> u64 {
        self.history.last().map_or(0, |w| w.last_seq)
    }
}

fn write(db: &Db, model: &mut Model, ops: Vec<Op>) {
    let mut b = WriteBatch::new();
    for (k, v) in &ops {
        match v {
            Some(v) => b.put(k.clone(), v.clone()),
            None => b.delete(k.clone()),
        };
        model.keys.insert(k.clone());
    }
    let last_seq = db.write(b).expect("write");
    assert_eq!(
        last_seq,
        model.last_seq() + ops.len() as u64,
        "sequence numbers are not consecutive"
    );
    model.history.push(Written { last_seq, ops });
}

fn random_ops(rng: &mut StdRng, n: usize, key_space: u32, tag: usize) -> Vec<Op> {
    (0..n)
        .map(|j| {
            let k = format!("key{:04}", rng.gen_range(0..key_space)).into_bytes();
            if rng.gen_bool(0.15) {
                (k, None)
            } else {
                let pad = "v".repeat(rng.gen_range(0..40));
                (k, Some(format!("value-{tag}-{j}-{pad}").into_bytes()))
            }
        })
        .collect()
}

fn drain_background(db: &Db) {
    while db.do_background_work().expect("background work") > 0 {}
}

/// Builds the database: tables on several levels (flushed and compacted), then a tail of
/// batches left in two logs (a retired one, not yet flushed, and the active one).
fn build(dir: &Path) -> Model {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut model = Model {
        history: Vec::new(),
        keys: BTreeSet::new(),
    };
    let disk = StdDisk::open(dir).expect("open dir");
    let db = Db::open(Arc::new(disk), options()).expect("open");
    let mut tag = 0;
    for round in 0..8 {
        for _ in 0..30 {
            tag += 1;
            let n = if rng.gen_bool(0.2) {
                rng.gen_range(2..5)
            } else {
                1
            };
            let ops = random_ops(&mut rng, n, 240, tag);
            write(&db, &mut model, ops);
        }
        if round == 4 {
            db.compact().expect("compact");
        } else {
            drain_background(&db);
        }
    }
    // Level-0 tables that no compaction has touched yet.
    for _ in 0..25 {
        tag += 1;
        let ops = random_ops(&mut rng, 1, 240, tag);
        write(&db, &mut model, ops);
    }
    db.flush().expect("flush");
    while db.flush_step().expect("flush step") {}
    // The log tail: enough to switch memtables once, so two logs hold records.
    let first_tail = model.history.len();
    let mut tail = 0;
    while tail < 40 {
        tag += 1;
        let n = if tail % 5 == 4 { 3 } else { 1 };
        let ops = random_ops(&mut rng, n, 240, tag);
        write(&db, &mut model, ops);
        tail += 1;
    }
    assert!(model.history.len() - first_tail >= 40);
    db.close().expect("close");
    model
}

// ---------------------------------------------------------------------------------------------
// Just enough of the formats to find the boundaries worth damaging (see `core::format`).

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

struct ManifestInfo {
    last_seq: u64,
    log_number: u64,
    /// (level, file number)
    tables: Vec<(u8, u64)>,
}

fn parse_manifest(b: &[u8]) -> ManifestInfo {
    let body = &b[20..];
    let mut pos = 24;
    let n = le32(body, pos) as usize;
    pos += 4;
    let mut tables = Vec::new();
    for _ in 0..n {
        let level = body[pos];
        let number = le64(body, pos + 1);
        pos += 1 + 40;
        for _ in 0..2 {
            let len = varint(body, &mut pos) as usize;
            pos += len;
        }
        tables.push((level, number));
    }
    assert_eq!(pos, body.len(), "manifest parse");
    ManifestInfo {
        last_seq: le64(body, 8),
        log_number: le64(body, 16),
        tables,
    }
}

/// One WAL record: where it starts and ends, and the last sequence number of its batch.
struct WalRecord {
    start: usize,
    end: usize,
    last_seq: u64,
}

fn parse_wal(b: &[u8]) -> Vec<WalRecord> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let len = le32(b, pos) as usize;
        let payload = &b[pos + 13..pos + 13 + len];
        let first = le64(payload, 0);
        let count = u64::from(le32(payload, 8));
        out.push(WalRecord {
            start: pos,
            end: pos + 13 + len,
            last_seq: first + count - 1,
        });
        pos += 13 + len;
    }
    out
}

/// A table's blocks: (offset, len) of each data block, then filter, index, properties.
struct TableLayout {
    data: Vec<(u64, u64)>,
    meta: Vec<(u64, u64)>,
    footer_at: u64,
}

fn parse_table(b: &[u8]) -> TableLayout {
    let footer_at = b.len() - 52;
    let f = &b[footer_at..];
    let h = |i: usize| (le64(f, i * 12), u64::from(le32(f, i * 12 + 8)));
    let meta = vec![h(0), h(1), h(2)];
    let (io, il) = h(1);
    let index = &b[io as usize..(io + il) as usize];
    let n = le32(index, 0);
    let mut pos = 4;
    let mut data = Vec::new();
    for _ in 0..n {
        let klen = varint(index, &mut pos) as usize;
        pos += klen + 8;
        let off = varint(index, &mut pos);
        let len = varint(index, &mut pos);
        data.push((off, len));
    }
    TableLayout {
        data,
        meta,
        footer_at: footer_at as u64,
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Wal,
    Table,
    Manifest,
}

#[derive(Clone, Debug)]
enum Damage {
    /// Flip bit `bit` of byte `at`.
    Flip { at: usize, bit: u8 },
    /// Keep only the first `len` bytes.
    Truncate { len: usize },
    /// Keep the first `len` bytes and zero the rest (preallocated space after a crash).
    ZeroTail { len: usize },
}

impl Damage {
    /// The first byte offset the damage touches.
    fn offset(&self) -> usize {
        match *self {
            Damage::Flip { at, .. } => at,
            Damage::Truncate { len } | Damage::ZeroTail { len } => len,
        }
    }
    fn apply(&self, bytes: &mut Vec<u8>) {
        match *self {
            Damage::Flip { at, bit } => bytes[at] ^= 1 << bit,
            Damage::Truncate { len } => bytes.truncate(len),
            Damage::ZeroTail { len } => bytes[len..].iter_mut().for_each(|b| *b = 0),
        }
    }
}

struct Case {
    kind: Kind,
    file: String,
    damage: Damage,
    /// WAL damage: the newest sequence number that must survive (every record wholly before the
    /// damage). Other files: the whole history must survive when open succeeds.
    min_seq: u64,
    /// Damage inside a data block (at this block offset): open must succeed and a read must
    /// report the block.
    data_block: Option<u64>,
    /// Open must fail: the damage is not a torn tail (a flipped bit in a WAL record with more
    /// records after it, or in the last record's header, whose own checksum catches it).
    must_fail: bool,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.file, self.damage)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Outcome {
    /// Open failed with a corruption error naming the file.
    OpenCorruption,
    /// Open succeeded; every read equals the whole model.
    Intact,
    /// Open succeeded after dropping a torn WAL tail; reads equal a prefix of the history that
    /// keeps every write before the damage.
    TornPrefix,
    /// Open succeeded; reads touching the damaged block failed with a corruption error naming
    /// the table and the block; every other read equals the model.
    ReadCorruption,
}

/// Copies the pristine directory (minus the lock file) into a fresh one and damages one file.
fn prepare(pristine: &Path, files: &BTreeMap<String, Vec<u8>>, case: &Case) -> PathBuf {
    // One case at a time, so one scratch directory serves them all.
    let dir = pristine.with_file_name("case");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        let mut b = bytes.clone();
        if *name == case.file {
            case.damage.apply(&mut b);
        }
        std::fs::write(dir.join(name), &b).unwrap();
    }
    dir
}

fn check_error(case: &Case, e: &Error) -> Result<(), String> {
    match e {
        Error::Corruption { file, offset, .. } => {
            if *file != case.file {
                return Err(format!(
                    "corruption reported in {file}, not {}: {e}",
                    case.file
                ));
            }
            if *offset > case.damage.offset() as u64 {
                return Err(format!(
                    "corruption reported at offset {offset}, after the damage at {}: {e}",
                    case.damage.offset()
                ));
            }
            Ok(())
        }
        other => Err(format!("not a corruption error: {other}")),
    }
}

/// Runs one case; `Err` describes a violation.
fn run_case(
    dir: &Path,
    case: &Case,
    model: &Model,
    states: &BTreeMap<u64, BTreeMap<Vec<u8>, Vec<u8>>>,
) -> Result<Outcome, String> {
    let disk = StdDisk::open(dir).map_err(|e| format!("StdDisk::open: {e}"))?;
    let db = match Db::open(Arc::new(disk), options()) {
        Err(e) => {
            check_error(case, &e)?;
            if case.data_block.is_some() {
                return Err(format!(
                    "open read a data block (it should read them lazily): {e}"
                ));
            }
            return Ok(Outcome::OpenCorruption);
        }
        Ok(db) => db,
    };
    if case.must_fail {
        return Err(format!(
            "open succeeded (recovery {:?}): damage before the last record was taken for a torn \
             tail, dropping the records after it",
            db.recovery()
        ));
    }
    // Read everything back: a get of every key ever written, and a full scan.
    let mut read_error: Option<Error> = None;
    let mut got: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for k in &model.keys {
        match db.get(k) {
            Ok(v) => {
                got.insert(k.clone(), v);
            }
            Err(e) => read_error = Some(e),
        }
    }
    let mut scanned = Vec::new();
    match db.scan(Bound::Unbounded, Bound::Unbounded) {
        Err(e) => read_error = Some(e),
        Ok(it) => {
            for item in it {
                match item {
                    Ok(kv) => scanned.push(kv),
                    Err(e) => {
                        read_error = Some(e);
                        break;
                    }
                }
            }
        }
    }
    // Which prefixes of the history agree with every successful read?
    let fits = |want: &BTreeMap<Vec<u8>, Vec<u8>>| {
        got.iter().all(|(k, v)| want.get(k) == v.as_ref())
            && if read_error.is_some() {
                // A scan cut short by an error: what it did return must still be right.
                scanned.iter().all(|(k, v)| want.get(k) == Some(v))
            } else {
                scanned.len() == want.len() && scanned.iter().all(|(k, v)| want.get(k) == Some(v))
            }
    };
    let full = model.last_seq();
    let candidates: Vec<u64> = states
        .keys()
        .copied()
        .filter(|s| *s >= case.min_seq)
        .collect();
    let fitting: Vec<u64> = candidates
        .iter()
        .copied()
        .filter(|s| fits(&states[s]))
        .collect();
    if fitting.is_empty() {
        let want = &states[&full];
        let wrong: Vec<String> = got
            .iter()
            .filter(|(k, v)| want.get(*k) != v.as_ref())
            .take(3)
            .map(|(k, v)| {
                format!(
                    "{}: got {:?}, latest {:?}",
                    String::from_utf8_lossy(k),
                    v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                    want.get(k).map(|v| String::from_utf8_lossy(v).into_owned())
                )
            })
            .collect();
        return Err(format!(
            "reads match no allowed prefix of the history (seq >= {}); recovery {:?}; \
             read error {:?}; e.g. {wrong:?}",
            case.min_seq,
            db.recovery(),
            read_error.as_ref().map(|e| e.to_string())
        ));
    }
    if let Some(e) = read_error {
        check_error(case, &e)?;
        if case.kind != Kind::Table {
            return Err(format!("a read failed after open succeeded: {e}"));
        }
        if let (Some(block), Error::Corruption { offset, .. }) = (case.data_block, &e) {
            if *offset != block {
                return Err(format!(
                    "damage in the data block at {block} reported at offset {offset}: {e}"
                ));
            }
        }
        if !fitting.contains(&full) {
            return Err("reads lost writes while reporting table damage".into());
        }
        return Ok(Outcome::ReadCorruption);
    }
    match case.kind {
        Kind::Table | Kind::Manifest => Err(format!(
            "damage went unnoticed: open and every read succeeded (recovery {:?})",
            db.recovery()
        )),
        Kind::Wal if fitting.contains(&full) => Ok(Outcome::Intact),
        Kind::Wal => Ok(Outcome::TornPrefix),
    }
}

/// Bit to flip at `at`: varies with the offset so every bit position is used.
fn bit(at: usize, salt: usize) -> u8 {
    ((at * 5 + salt) % 8) as u8
}

/// Boundaries and one byte either side, inside `0..len` (and `len` itself excluded: that is
/// no damage).
fn around(points: &[usize], len: usize) -> BTreeSet<usize> {
    points
        .iter()
        .flat_map(|p| [p.wrapping_sub(1), *p, p + 1])
        .filter(|p| *p < len)
        .collect()
}

fn cases(files: &BTreeMap<String, Vec<u8>>, model: &Model) -> Vec<Case> {
    let manifest = parse_manifest(&files["MANIFEST"]);
    let mut out = Vec::new();

    // WAL: every byte of each live log, flipped; truncation and zero fill at every record
    // boundary and one byte either side.
    let mut wals: Vec<&String> = files
        .keys()
        .filter(|n| n.ends_with(".wal"))
        .filter(|n| n[..n.len() - 4].parse::<u64>().unwrap() >= manifest.log_number)
        .collect();
    wals.sort();
    let mut before = manifest.last_seq; // the newest write in earlier files
    for (wi, name) in wals.iter().enumerate() {
        let bytes = &files[*name];
        let recs = parse_wal(bytes);
        // The newest write whose record ends at or before `off`.
        let kept_before = |off: usize| {
            recs.iter()
                .filter(|r| r.end <= off)
                .map(|r| r.last_seq)
                .max()
                .unwrap_or(before)
        };
        for at in 0..bytes.len() {
            let damage = Damage::Flip {
                at,
                bit: bit(at, wi),
            };
            // Only the last record's checksum and payload may be a torn write.
            let last = recs.last().expect("a log with records");
            let torn_tail_possible = at >= last.start + 9;
            out.push(Case {
                kind: Kind::Wal,
                file: (*name).clone(),
                min_seq: kept_before(at),
                damage,
                data_block: None,
                must_fail: !torn_tail_possible,
            });
        }
        let mut points: Vec<usize> = recs.iter().flat_map(|r| [r.start, r.start + 13]).collect();
        points.push(bytes.len());
        for len in around(&points, bytes.len()) {
            for damage in [Damage::Truncate { len }, Damage::ZeroTail { len }] {
                out.push(Case {
                    kind: Kind::Wal,
                    file: (*name).clone(),
                    min_seq: kept_before(len),
                    damage,
                    data_block: None,
                    must_fail: false,
                });
            }
        }
        before = recs.last().map_or(before, |r| r.last_seq);
    }
    assert_eq!(before, model.last_seq(), "the logs end with the last write");

    // Tables: every byte (data blocks with their checksums, filter, index, properties, footer).
    for (ti, (_, number)) in manifest.tables.iter().enumerate() {
        let name = format!("{number:06}.sst");
        let bytes = &files[&name];
        let layout = parse_table(bytes);
        let mut flips: BTreeMap<usize, Option<u64>> = BTreeMap::new();
        for &(off, len) in &layout.data {
            let (s, e) = (off as usize, (off + len) as usize + 4);
            for at in s..e {
                flips.insert(at, Some(off));
            }
        }
        for &(off, len) in &layout.meta {
            for at in off as usize..(off + len) as usize + 4 {
                flips.insert(at, None);
            }
        }
        for at in layout.footer_at as usize..bytes.len() {
            flips.insert(at, None);
        }
        for (at, block) in flips {
            out.push(Case {
                kind: Kind::Table,
                file: name.clone(),
                min_seq: model.last_seq(),
                damage: Damage::Flip {
                    at,
                    bit: bit(at, ti),
                },
                // A flip in a data block's checksum also shows only when the block is read.
                data_block: block,
                must_fail: false,
            });
        }
        let mut points = vec![0, layout.footer_at as usize, bytes.len()];
        for &(off, len) in layout.data.iter().chain(&layout.meta) {
            points.extend([off as usize, (off + len) as usize, (off + len) as usize + 4]);
        }
        for len in around(&points, bytes.len()) {
            out.push(Case {
                kind: Kind::Table,
                file: name.clone(),
                min_seq: model.last_seq(),
                damage: Damage::Truncate { len },
                data_block: None,
                must_fail: false,
            });
        }
    }

    // The manifest: every byte flipped, every length.
    let mbytes = &files["MANIFEST"];
    for at in 0..mbytes.len() {
        out.push(Case {
            kind: Kind::Manifest,
            file: "MANIFEST".into(),
            min_seq: model.last_seq(),
            damage: Damage::Flip {
                at,
                bit: bit(at, 3),
            },
            data_block: None,
            must_fail: false,
        });
    }
    for len in 0..mbytes.len() {
        out.push(Case {
            kind: Kind::Manifest,
            file: "MANIFEST".into(),
            min_seq: model.last_seq(),
            damage: Damage::Truncate { len },
            data_block: None,
            must_fail: false,
        });
    }
    out
}

/// A scratch directory on tmpfs when there is one (the sweep opens the database thousands of
/// times, each open writing and syncing a manifest), else the usual temporary directory.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("corecache-sweep-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("corecache-sweep-")
        .tempdir()
        .expect("tempdir")
}

#[test]
fn every_damaged_file_is_reported_or_recovered_to_a_valid_prefix() {
    let started = Instant::now();
    let root = scratch();
    let pristine = root.path().join("pristine");
    let model = build(&pristine);

    let files: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&pristine)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n != "LOCK")
        .map(|n| {
            let b = std::fs::read(pristine.join(&n)).unwrap();
            (n, b)
        })
        .collect();
    let manifest = parse_manifest(&files["MANIFEST"]);
    let levels: BTreeSet<u8> = manifest.tables.iter().map(|t| t.0).collect();
    let live_wals = files
        .iter()
        .filter(|(n, b)| {
            n.ends_with(".wal")
                && !b.is_empty()
                && n[..n.len() - 4].parse::<u64>().unwrap() >= manifest.log_number
        })
        .count();
    println!(
        "database: {} files, {} tables on levels {levels:?}, {live_wals} logs with records, \
         {} batches written, last seq {}",
        files.len(),
        manifest.tables.len(),
        model.history.len(),
        model.last_seq()
    );
    for (n, b) in &files {
        println!("  {n}: {} bytes", b.len());
    }
    assert!(manifest.tables.len() >= 4, "too few tables to sweep");
    assert!(levels.len() >= 2, "tables on one level only: {levels:?}");
    assert!(levels.contains(&0), "no level-0 table");
    assert!(live_wals >= 2, "expected a retired log and an active one");

    // The model after each batch (the prefixes a torn log tail may leave).
    let mut states = BTreeMap::new();
    for w in &model.history {
        if w.last_seq >= manifest.last_seq {
            states.insert(w.last_seq, model.state_at(w.last_seq));
        }
    }
    states.insert(manifest.last_seq, model.state_at(manifest.last_seq));

    let all = cases(&files, &model);
    let mut tally: BTreeMap<(Kind, Outcome), usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut case_kinds: BTreeMap<Kind, usize> = BTreeMap::new();
    // A panic is caught and reported with its case (the default hook still prints it where it
    // happened; the hook is process-wide, so it is left alone for the other test).
    for case in &all {
        *case_kinds.entry(case.kind).or_default() += 1;
        let dir = prepare(&pristine, &files, case);
        let result = catch_unwind(AssertUnwindSafe(|| run_case(&dir, case, &model, &states)));
        match result {
            Ok(Ok(outcome)) => *tally.entry((case.kind, outcome)).or_default() += 1,
            Ok(Err(why)) => failures.push(format!("{case}: {why}")),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{case}: PANIC {msg}"));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    println!(
        "{} cases in {:.1} s:",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    for (kind, n) in &case_kinds {
        println!("  {kind:?}: {n} cases");
        for ((k, outcome), m) in &tally {
            if k == kind {
                println!("    {outcome:?}: {m}");
            }
        }
    }
    println!("  failures: {}", failures.len());
    for f in failures.iter().take(40) {
        println!("  FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} cases failed (listed above)",
        failures.len()
    );
    // The sweep did exercise each kind of ending.
    for need in [
        (Kind::Wal, Outcome::OpenCorruption),
        (Kind::Wal, Outcome::TornPrefix),
        (Kind::Table, Outcome::OpenCorruption),
        (Kind::Table, Outcome::ReadCorruption),
        (Kind::Manifest, Outcome::OpenCorruption),
    ] {
        assert!(tally.contains_key(&need), "no case ended in {need:?}");
    }
}

/// A flip inside a data block: open succeeds (data blocks are read lazily), and then both a
/// point read of a key in that block and a full scan fail with a corruption error naming the
/// table and the block's offset — never a wrong value.
#[test]
fn a_damaged_data_block_fails_the_reads_that_touch_it() {
    let root = scratch();
    let dir = root.path().join("db");
    {
        let db = Db::open(Arc::new(StdDisk::open(&dir).unwrap()), options()).unwrap();
        for i in 0..200u32 {
            db.put(
                format!("key{i:04}").into_bytes(),
                format!("value-{i}").into_bytes(),
            )
            .unwrap();
        }
        db.compact().unwrap();
        db.close().unwrap();
    }
    let manifest = parse_manifest(&std::fs::read(dir.join("MANIFEST")).unwrap());
    let (_, number) = manifest.tables[0];
    let name = format!("{number:06}.sst");
    let path = dir.join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let layout = parse_table(&bytes);
    let (block, len) = layout.data[1];
    // The first key of that block (its first entry: key_len varint, key).
    let first_key = {
        let mut pos = block as usize;
        let klen = varint(&bytes, &mut pos) as usize;
        bytes[pos..pos + klen].to_vec()
    };
    bytes[(block + len / 2) as usize] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let db = Db::open(Arc::new(StdDisk::open(&dir).unwrap()), options())
        .expect("open does not read data blocks");
    let expect_block_error = |what: &str, r: Result<Option<Vec<u8>>, Error>| match r {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!(file, name, "{what}");
            assert_eq!(offset, block, "{what}: offset of the damaged block");
        }
        other => panic!("{what}: expected a corruption error, got {other:?}"),
    };
    expect_block_error("get", db.get(&first_key));
    // Keys in other blocks still read correctly.
    assert_eq!(db.get(b"key0000").unwrap(), Some(b"value-0".to_vec()));
    let mut it = db.scan(Bound::Unbounded, Bound::Unbounded).unwrap();
    let mut n = 0;
    let err = loop {
        match it.next() {
            Some(Ok((k, v))) => {
                let i: u32 = std::str::from_utf8(&k[3..]).unwrap().parse().unwrap();
                assert_eq!(v, format!("value-{i}").into_bytes(), "scan: wrong value");
                assert!(k < first_key, "scan returned a key from the damaged block");
                n += 1;
            }
            Some(Err(e)) => break e,
            None => panic!("the scan ended without reporting the damaged block ({n} items)"),
        }
    };
    expect_block_error("scan", Err(err));
    assert!(it.next().is_none(), "the scan stops after an error");
}
