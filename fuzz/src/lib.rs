//! Helpers shared by the structured fuzz targets and the seed generator; `http` holds the
//! properties the `http_*` targets check.

pub mod http;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use corecache_core::{Background, Db, Error, Options, SimDisk, StallPolicy, SyncMode, WriteBatch};

pub type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// `Options::tiny()` driven by hand: no threads, stalls refused.
pub fn manual_options(sync: SyncMode) -> Options {
    Options {
        sync,
        background: Background::Manual,
        stall: StallPolicy::Refuse,
        ..Options::tiny()
    }
}

pub fn open(disk: &SimDisk, opts: &Options) -> Db {
    match Db::open(Arc::new(disk.clone()), opts.clone()) {
        Ok(db) => db,
        Err(e) => panic!("open failed: {e}"),
    }
}

/// Writes `batch`, running background work whenever the engine refuses for a stall (as a
/// driver would). Any other error is a bug here: the fuzz targets only write valid batches.
pub fn write(db: &Db, batch: &WriteBatch) {
    for _ in 0..100 {
        match db.write(batch.clone()) {
            Ok(_) => return,
            Err(Error::WriteStall(_)) => {
                if let Err(e) = db.do_background_work() {
                    panic!("background work failed: {e}");
                }
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    panic!("write still stalled after 100 rounds of background work");
}

/// Everything a full scan returns.
pub fn contents(db: &Db) -> Model {
    let it = match db.scan(Bound::Unbounded, Bound::Unbounded) {
        Ok(it) => it,
        Err(e) => panic!("scan failed: {e}"),
    };
    let mut out = Model::new();
    let mut last: Option<Vec<u8>> = None;
    for item in it {
        let (k, v) = match item {
            Ok(kv) => kv,
            Err(e) => panic!("scan item failed: {e}"),
        };
        if let Some(prev) = &last {
            assert!(
                prev < &k,
                "scan out of order or repeated: {prev:?} then {k:?}"
            );
        }
        last = Some(k.clone());
        out.insert(k, v);
    }
    out
}

/// Panics unless `db` holds exactly `model`, by full scan and by point lookups (of every model
/// key and of every key in `probe`, which should include deleted ones).
pub fn check(db: &Db, model: &Model, probe: &[Vec<u8>], what: &str) {
    let got = contents(db);
    if &got != model {
        let missing: Vec<_> = model.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !model.contains_key(*k)).collect();
        let differ: Vec<_> = model
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .map(|(k, _)| k)
            .collect();
        panic!(
            "{what}: scan differs from the model: {} keys vs {}; missing {missing:?}, extra \
             {extra:?}, different values {differ:?}",
            got.len(),
            model.len()
        );
    }
    for k in model.keys().chain(probe.iter()) {
        let got = match db.get(k) {
            Ok(v) => v,
            Err(e) => panic!("{what}: get({k:?}) failed: {e}"),
        };
        let want = model.get(k);
        assert_eq!(
            got.as_ref(),
            want,
            "{what}: get({k:?}) returned {} but the model has {}",
            got.as_ref()
                .map_or("nothing".to_string(), |v| format!("{} bytes", v.len())),
            want.map_or("nothing".to_string(), |v| format!("{} bytes", v.len())),
        );
    }
}

/// Rewrites the checksums in (mutated) file bytes so that they match, best effort, so the
/// `*_crc` targets get past the checks and into the decoders behind them. Lengths, offsets and
/// everything else stay as the fuzzer made them.
pub mod fixcrc {
    use corecache_core::engine::format::crc;

    fn put_crc(b: &mut [u8], at: usize, value: u32) {
        b[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Fixes the crc after the block `[off, off + len)` when block and crc fit below `limit`.
    fn fix_block(b: &mut [u8], off: u64, len: u64, limit: usize) {
        let (Ok(off), Ok(len)) = (usize::try_from(off), usize::try_from(len)) else {
            return;
        };
        let Some(end) = off.checked_add(len) else {
            return;
        };
        if end.checked_add(4).is_some_and(|e| e <= limit) {
            let c = crc(&b[off..end]);
            put_crc(b, end, c);
        }
    }

    fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *b.get(*pos)?;
            *pos += 1;
            v |= ((byte & 0x7f) as u64).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// SSTable: data block crcs (handles from the index block), then filter, index and
    /// properties block crcs, then the footer crc.
    pub fn sstable(b: &mut [u8]) {
        const FOOTER: usize = 52;
        if b.len() < FOOTER {
            return;
        }
        let foot = b.len() - FOOTER;
        let handle =
            |b: &[u8], i: usize| (le64(b, foot + 12 * i), le32(b, foot + 12 * i + 8) as u64);
        let (index_off, index_len) = handle(b, 1);
        // Data blocks named by the index: n: u32, n × (klen varint, key, trailer u64, off, len).
        let mut data = Vec::new();
        if let (Ok(off), Ok(len)) = (usize::try_from(index_off), usize::try_from(index_len)) {
            if off.checked_add(len).is_some_and(|e| e <= foot) && len >= 4 {
                let idx = &b[off..off + len];
                let n = le32(idx, 0) as usize;
                let mut pos = 4;
                for _ in 0..n.min(4096) {
                    let Some(klen) = varint(idx, &mut pos) else {
                        break;
                    };
                    let Some(p) = usize::try_from(klen).ok().and_then(|k| pos.checked_add(k))
                    else {
                        break;
                    };
                    // The key length is the fuzzer's: `pos + 8` may overflow.
                    let Some(p) = p.checked_add(8).filter(|e| *e <= idx.len()) else {
                        break;
                    };
                    pos = p;
                    let (Some(doff), Some(dlen)) = (varint(idx, &mut pos), varint(idx, &mut pos))
                    else {
                        break;
                    };
                    data.push((doff, dlen));
                }
            }
        }
        for (off, len) in data {
            fix_block(b, off, len, foot);
        }
        for i in [0, 2, 1] {
            let (off, len) = handle(b, i);
            fix_block(b, off, len, foot);
        }
        let c = crc(&b[foot..foot + 40]);
        put_crc(b, foot + 40, c);
    }

    /// WAL: each record's header crc and, when the payload is all there, its payload crc.
    pub fn wal(b: &mut [u8]) {
        const HEADER: usize = 13;
        let mut pos = 0;
        while pos + HEADER <= b.len() {
            let len = le32(b, pos) as usize;
            let h = crc(&b[pos..pos + 5]);
            put_crc(b, pos + 5, h);
            let start = pos + HEADER;
            let Some(end) = start.checked_add(len).filter(|e| *e <= b.len()) else {
                break;
            };
            let p = crc(&b[start..end]);
            put_crc(b, pos + 9, p);
            pos = end;
        }
    }

    /// Manifest: body length and body crc in the 20-byte header.
    pub fn manifest(b: &mut [u8]) {
        if b.len() < 20 {
            return;
        }
        let len = (b.len() - 20) as u32;
        b[12..16].copy_from_slice(&len.to_le_bytes());
        let c = crc(&b[20..]);
        put_crc(b, 16, c);
    }
}
