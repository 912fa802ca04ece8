//! Helpers for end-to-end tests (the real `corecache` binary on real sockets).

use std::path::PathBuf;

/// Path of the `corecache` binary built by this workspace.
pub fn corecache_bin() -> PathBuf {
    let mut p = std::env::current_exe().expect("test executable path");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("corecache")
}
