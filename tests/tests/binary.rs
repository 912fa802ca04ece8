//! The binary starts and answers.

use std::process::Command;

#[test]
fn version_prints_the_crate_version() {
    let bin = corecache_e2e::corecache_bin();
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p corecache`",
        bin.display()
    );
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .expect("run corecache");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("corecache "), "unexpected output: {text}");
}

#[test]
fn unknown_command_exits_2_with_usage() {
    let out = Command::new(corecache_e2e::corecache_bin())
        .arg("frobnicate")
        .output()
        .expect("run corecache");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .to_lowercase()
        .contains("usage"));
}
