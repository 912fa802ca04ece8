//! The release build of the binary, for tests that measure it under load or crash it in a loop.
//!
//! `scripts/test.sh` builds it (`cargo build --release --locked -p corecache`) next to the debug
//! one; a test that needs it fails with build instructions when it is missing, never skips.

use std::path::PathBuf;

/// `<target>/release/corecache`, derived from the test executable's path
/// (`<target>/<profile>/deps/<test>`), whatever profile the tests themselves were built with.
pub fn release_bin() -> PathBuf {
    let mut p = std::env::current_exe().expect("test executable path");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    // Now `<target>/<profile>`.
    p.pop();
    p.join("release").join("corecache")
}

/// The release binary's path; panics with build instructions when it is missing.
pub fn require_release_bin() -> PathBuf {
    let bin = release_bin();
    assert!(
        bin.exists(),
        "{} is missing: this test runs the RELEASE binary; build it first with \
         `cargo build --release -p corecache` (with the same CARGO_TARGET_DIR as the tests; \
         scripts/test.sh does this)",
        bin.display()
    );
    bin
}
