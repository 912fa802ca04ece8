//! Writes small valid seed files for the `sstable`, `wal` and `manifest` fuzz targets into
//! `corpus/<target>/` (relative to the current directory, or the directory given as the first
//! argument). Each file comes from a real `Db` on a `SimDisk`, so the seeds are exactly what the
//! engine writes.
//!
//!     cargo run --example make_seeds -- corpus

use std::path::{Path, PathBuf};

use corecache_core::{Disk, Options, SimDisk, SyncMode, WriteBatch};
use corecache_fuzz::{manual_options, open, write};

/// One scenario: its writes, whether to flush at the end, and its option tweaks.
struct Scenario {
    name: &'static str,
    opts: Options,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    flush: bool,
}

fn kv(n: usize, vlen: usize) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..n)
        .map(|i| {
            (
                format!("key{i:03}").into_bytes(),
                Some((0..vlen).map(|j| (i + j) as u8).collect()),
            )
        })
        .collect()
}

fn scenarios() -> Vec<Scenario> {
    let base = manual_options(SyncMode::Always);
    let mut with_deletes = kv(12, 5);
    for i in (0..12).step_by(3) {
        with_deletes.push((format!("key{i:03}").into_bytes(), None));
    }
    let mut big_blocks = base.clone();
    big_blocks.block_bytes = 1024;
    let mut few_bloom = base.clone();
    few_bloom.bloom_bits_per_key = 1;
    vec![
        Scenario {
            name: "one",
            opts: base.clone(),
            writes: kv(1, 3),
            flush: true,
        },
        Scenario {
            name: "small",
            opts: base.clone(),
            writes: kv(8, 4),
            flush: true,
        },
        Scenario {
            name: "deletes",
            opts: base.clone(),
            writes: with_deletes,
            flush: true,
        },
        Scenario {
            name: "bigblocks",
            opts: big_blocks,
            writes: kv(20, 16),
            flush: true,
        },
        Scenario {
            name: "bloom1",
            opts: few_bloom,
            writes: kv(10, 2),
            flush: true,
        },
        Scenario {
            name: "odd",
            opts: base.clone(),
            writes: vec![
                (Vec::new(), Some(b"empty key".to_vec())),
                (vec![0xff; 9], Some(Vec::new())),
                (b"\0\x01".to_vec(), None),
            ],
            flush: true,
        },
        // Left in the WAL (no flush): the WAL seeds.
        Scenario {
            name: "unflushed",
            opts: base.clone(),
            writes: kv(6, 8),
            flush: false,
        },
        Scenario {
            name: "unflushed_dels",
            opts: base,
            writes: kv(3, 1)
                .into_iter()
                .chain([(b"key001".to_vec(), None)])
                .collect(),
            flush: false,
        },
    ]
}

fn sorted(disk: &SimDisk) -> Vec<String> {
    let mut names = disk.list().unwrap();
    names.sort();
    names
}

fn save(dir: &Path, name: &str, bytes: &[u8]) {
    // Rewriting the checksums of a valid file must change nothing (tests `fixcrc`).
    let mut fixed = bytes.to_vec();
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("sstable") => corecache_fuzz::fixcrc::sstable(&mut fixed),
        Some("wal") => corecache_fuzz::fixcrc::wal(&mut fixed),
        Some("manifest") => corecache_fuzz::fixcrc::manifest(&mut fixed),
        _ => unreachable!(),
    }
    assert!(fixed == bytes, "fixcrc changed the valid file {name}");
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    println!("{} ({} bytes)", path.display(), bytes.len());
}

fn main() {
    let root: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus".into())
        .into();
    for s in scenarios() {
        let disk = SimDisk::new();
        let db = open(&disk, &s.opts);
        for chunk in s.writes.chunks(3) {
            let mut b = WriteBatch::new();
            for (k, v) in chunk {
                match v {
                    Some(v) => b.put(k.clone(), v.clone()),
                    None => b.delete(k.clone()),
                };
            }
            write(&db, &b);
        }
        // The logs before the flush (which retires them), while the Db is open.
        let mut wal_n = 0;
        for name in sorted(&disk) {
            let bytes = disk.read_file(&name).unwrap();
            if name.ends_with(".wal") && !bytes.is_empty() && wal_n < 2 {
                wal_n += 1;
                assert!(corecache_core::engine::decode::wal(&bytes).unwrap() > 0);
                save(&root.join("wal"), &format!("{}-{name}", s.name), &bytes);
            }
        }
        if s.flush {
            db.flush().unwrap();
        }
        let mut sst_n = 0;
        for name in sorted(&disk) {
            let bytes = disk.read_file(&name).unwrap();
            if name.ends_with(".sst") && sst_n < 2 && bytes.len() <= 4096 {
                sst_n += 1;
                corecache_core::engine::decode::sstable(&bytes).unwrap();
                save(&root.join("sstable"), &format!("{}-{name}", s.name), &bytes);
            } else if name == "MANIFEST" && s.flush {
                corecache_core::engine::decode::manifest(&bytes).unwrap();
                save(
                    &root.join("manifest"),
                    &format!("{}-{name}", s.name),
                    &bytes,
                );
            }
        }
        drop(db);
    }
    peer_seeds(&root.join("peer_frame"));
}

/// One payload per peer message kind (the target also reads them as frame streams), and one
/// stream of whole frames.
fn peer_seeds(dir: &Path) {
    use corecache_core::proto::peer::{encode_frame, PeerMessage, PROTOCOL_VERSION};
    use corecache_core::proto::{BatchOp, Condition, Request, Response};
    let msgs = vec![
        PeerMessage::Hello {
            version: PROTOCOL_VERSION,
            from: "n1".into(),
            cluster: "c".into(),
        },
        PeerMessage::Forward {
            id: 1,
            map_version: 2,
            request: Request::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: Condition::IfMatch(3),
            },
        },
        PeerMessage::Forward {
            id: 2,
            map_version: 2,
            request: Request::Batch {
                ops: vec![
                    BatchOp::Put(b"a".to_vec(), b"1".to_vec()),
                    BatchOp::Delete(b"b".to_vec()),
                ],
            },
        },
        PeerMessage::Reply {
            id: 1,
            response: Response::Written { version: 9 },
        },
        PeerMessage::ScanParts {
            id: 3,
            map_version: 2,
            partitions: vec![0, 5],
            start: b"a".to_vec(),
            end: None,
            after: Some(b"b".to_vec()),
            limit: 10,
        },
        PeerMessage::PartPage {
            id: 4,
            partition: 5,
            items: vec![(b"k".to_vec(), vec![1; 17])],
            done: false,
        },
        PeerMessage::PartTail {
            id: 5,
            partition: 5,
            items: vec![(b"k".to_vec(), None)],
        },
        PeerMessage::Replicate {
            partition: 5,
            epoch: 2,
            commit: 3,
            prev_lsn: 3,
            prev_epoch: 1,
            sent_at: 1_000,
            entries: vec![corecache_core::proto::replog::LogEntry {
                lsn: 4,
                epoch: 2,
                ops: vec![(b"\x00\x05k".to_vec(), Some(vec![2; 25])), (b"\x00\x05j".to_vec(), None)],
            }],
        },
        PeerMessage::ReplicaAck {
            partition: 5,
            epoch: 2,
            applied: 4,
            gap: false,
            lease_from: 1_000,
        },
        PeerMessage::Positions {
            id: 6,
            items: vec![(5, 2, 4, 2)],
        },
        PeerMessage::CopyPage {
            partition: 5,
            epoch: 3,
            base: 4,
            base_epoch: 2,
            after: Some(b"j".to_vec()),
            items: vec![(b"k".to_vec(), vec![2; 25])],
            done: true,
            sent_at: 1_000,
        },
        PeerMessage::CopyAck {
            partition: 5,
            epoch: 3,
            base: 4,
            last: Some(b"k".to_vec()),
        },
    ];
    std::fs::create_dir_all(dir).unwrap();
    let mut stream = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let mut frame = Vec::new();
        encode_frame(m, &mut frame);
        let path = dir.join(format!("payload-{i}"));
        std::fs::write(&path, &frame[8..]).unwrap();
        println!("{} ({} bytes)", path.display(), frame.len() - 8);
        stream.extend_from_slice(&frame);
    }
    let path = dir.join("frames");
    std::fs::write(&path, &stream).unwrap();
    println!("{} ({} bytes)", path.display(), stream.len());
}
