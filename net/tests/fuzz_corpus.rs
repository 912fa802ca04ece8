//! Replays the checked-in inputs of the HTTP fuzz targets (`fuzz/corpus/http_*` and, when
//! present, `fuzz/regressions/http_*`) through the same property checks the targets run
//! (`fuzz/src/http.rs`, included here), so the normal test run keeps them passing without
//! cargo-fuzz.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/http.rs"]
mod http_checks;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
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

fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= 3,
        "expected the checked-in seeds under fuzz/corpus/{target} (found {})",
        files.len()
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("{target}: {} fails its check", f.display());
        }
    }
}

#[test]
fn http_key_inputs_pass() {
    replay("http_key", http_checks::check_key_path);
}

#[test]
fn http_scan_inputs_pass() {
    replay("http_scan", http_checks::check_scan_query);
}

#[test]
fn http_batch_inputs_pass() {
    replay("http_batch", http_checks::check_batch_body);
}

#[test]
fn http_seed_inputs_pass() {
    replay("http_seed", http_checks::check_seed);
}
