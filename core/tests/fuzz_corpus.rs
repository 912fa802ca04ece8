//! Replays every checked-in fuzz input (seed corpora and regressions under `fuzz/`) through the
//! decoders, so a crash a fuzzer once found stays fixed without needing cargo-fuzz to check it.

use std::path::{Path, PathBuf};

fn inputs(kind: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let d = root.join(dir).join(kind);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn replay(kind: &str, decode: impl Fn(&[u8])) -> usize {
    let files = inputs(kind);
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.display().to_string();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(&bytes))).is_err() {
            panic!("decoding {name} panicked");
        }
    }
    files.len()
}

#[test]
fn every_checked_in_fuzz_input_decodes_without_panicking() {
    let n = replay("sstable", |b| {
        let _ = corecache_core::engine::decode::sstable(b);
    }) + replay("wal", |b| {
        let _ = corecache_core::engine::decode::wal(b);
    }) + replay("manifest", |b| {
        let _ = corecache_core::engine::decode::manifest(b);
    }) + replay("peer_frame", |b| {
        let mut rest = b;
        while let Ok(Some((_, used))) = corecache_core::proto::peer::decode_frame(rest) {
            rest = &rest[used..];
        }
        let _ = corecache_core::proto::peer::decode_message(b);
    });
    assert!(
        n >= 3,
        "expected the checked-in seed corpora under fuzz/corpus (found {n} files)"
    );
}

#[test]
fn the_seed_files_are_valid() {
    // The seeds are real files written by the engine: each must decode cleanly, or the fuzzers
    // start from garbage.
    let seeds = |kind: &str| -> Vec<PathBuf> {
        inputs(kind)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/corpus/"))
            .collect()
    };
    let mut n = 0;
    for f in seeds("sstable") {
        let b = std::fs::read(&f).unwrap();
        assert!(
            corecache_core::engine::decode::sstable(&b).is_ok(),
            "{}",
            f.display()
        );
        n += 1;
    }
    for f in seeds("wal") {
        let b = std::fs::read(&f).unwrap();
        assert!(
            corecache_core::engine::decode::wal(&b).is_ok(),
            "{}",
            f.display()
        );
        n += 1;
    }
    for f in seeds("manifest") {
        let b = std::fs::read(&f).unwrap();
        assert!(
            corecache_core::engine::decode::manifest(&b).is_ok(),
            "{}",
            f.display()
        );
        n += 1;
    }
    assert!(n >= 3, "no seed files found under fuzz/corpus");
}

#[test]
fn the_peer_seeds_decode() {
    let files: Vec<PathBuf> = inputs("peer_frame")
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/corpus/"))
        .collect();
    assert!(files.len() >= 2, "peer_frame seeds missing");
    for f in files {
        let b = std::fs::read(&f).unwrap();
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "frames" {
            let mut rest = b.as_slice();
            let mut n = 0;
            while let Some((_, used)) = corecache_core::proto::peer::decode_frame(rest).unwrap() {
                rest = &rest[used..];
                n += 1;
            }
            assert!(n > 1 && rest.is_empty(), "{}", f.display());
        } else {
            assert!(
                corecache_core::proto::peer::decode_message(&b).is_ok(),
                "{}",
                f.display()
            );
        }
    }
}
