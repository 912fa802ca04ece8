//! Configuration: a bad setting stops `serve` at start, naming the setting.

use std::time::Duration;

use corecache_e2e::{run_cli, write_file, CliOutput, Server};

/// Runs `serve` expecting it to give up; a server that starts is killed after 20 s.
fn serve_expect_exit(extra: &[&str], envs: &[(&str, &str)]) -> CliOutput {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let data = dir.path().join("data");
    let data = data.to_string_lossy().into_owned();
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &data];
    args.extend_from_slice(extra);
    run_cli(&args, envs, None, Duration::from_secs(20))
}

#[track_caller]
fn expect_start_failure(out: &CliOutput, must_name: &str) {
    assert!(
        !out.timed_out,
        "serve did not exit on a bad setting (still running after 20 s): {out:?}"
    );
    assert!(
        matches!(out.code, Some(c) if c != 0),
        "serve must exit non-zero: {out:?}"
    );
    assert!(
        !out.stdout_text().contains("listening on"),
        "serve started listening despite the bad setting: {out:?}"
    );
    let all = format!("{}{}", out.stderr_text(), out.stdout_text()).to_lowercase();
    assert!(
        all.contains(&must_name.to_lowercase()),
        "the message must name {must_name:?}: {out:?}"
    );
}

#[test]
fn unknown_setting_in_the_config_file_fails_naming_it() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = write_file(dir.path(), "bad.toml", "frobnication_level = 3\n");
    let out = serve_expect_exit(&["--config", &file.to_string_lossy()], &[]);
    expect_start_failure(&out, "frobnication_level");
}

#[test]
fn unknown_table_in_the_config_file_fails_naming_it() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = write_file(dir.path(), "bad.toml", "[warp_drive]\nenabled = true\n");
    let out = serve_expect_exit(&["--config", &file.to_string_lossy()], &[]);
    expect_start_failure(&out, "warp_drive");
}

#[test]
fn malformed_toml_fails() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = write_file(dir.path(), "bad.toml", "this is = = not toml [\n");
    let out = serve_expect_exit(&["--config", &file.to_string_lossy()], &[]);
    expect_start_failure(&out, "");
}

#[test]
fn missing_config_file_fails() {
    let out = serve_expect_exit(&["--config", "/nonexistent/corecache-e2e.toml"], &[]);
    expect_start_failure(&out, "corecache-e2e.toml");
}

#[test]
fn empty_config_file_starts_normally() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = write_file(dir.path(), "empty.toml", "");
    let s = Server::start_with(&["--config", &file.to_string_lossy()]);
    let v = s.put_kv(b"k", b"v");
    assert!(v > 0);
}

#[test]
fn bogus_sync_in_the_environment_fails_naming_it() {
    let out = serve_expect_exit(&[], &[("CORECACHE_SYNC", "bogus")]);
    expect_start_failure(&out, "sync");
}

#[test]
fn bogus_sync_flag_fails() {
    let out = serve_expect_exit(&["--sync", "sometimes"], &[]);
    expect_start_failure(&out, "sync");
}

#[test]
fn every_sync_mode_serves() {
    for mode in ["always", "interval", "none"] {
        let s = Server::start_with(&["--sync", mode]);
        let v = s.put_kv(b"k", mode.as_bytes());
        let r = s.get("/v1/kv/k");
        r.expect(200);
        assert_eq!(r.body, mode.as_bytes(), "--sync {mode}: {r:?}");
        assert_eq!(r.etag_version(), v, "--sync {mode}: {r:?}");
    }
    let s = Server::start_with_env(&[], &[("CORECACHE_SYNC", "none")]);
    s.put_kv(b"k", b"env");
    let r = s.get("/v1/kv/k");
    assert_eq!(r.body, b"env", "CORECACHE_SYNC=none: {r:?}");
}

#[test]
fn file_env_and_flag_precedence_for_node_id() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = write_file(dir.path(), "node.toml", "node_id = \"from-file\"\n");
    let file = file.to_string_lossy().into_owned();
    let node_id = |s: &Server| {
        let r = s.get("/v1/status");
        r.expect(200);
        r.json()["node_id"].as_str().map(str::to_string)
    };
    let s = Server::start_with(&["--config", &file]);
    assert_eq!(node_id(&s).as_deref(), Some("from-file"), "file only");
    let s = Server::start_with_env(&["--config", &file], &[("CORECACHE_NODE_ID", "from-env")]);
    assert_eq!(node_id(&s).as_deref(), Some("from-env"), "env over file");
    let s = Server::start_with_env(
        &["--config", &file, "--node-id", "from-flag"],
        &[("CORECACHE_NODE_ID", "from-env")],
    );
    assert_eq!(node_id(&s).as_deref(), Some("from-flag"), "flag over env");
}

#[test]
fn limits_come_from_the_config_file() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = write_file(dir.path(), "limits.toml", "max_value_bytes = 100\n");
    let s = Server::start_with(&["--config", &file.to_string_lossy()]);
    s.put_kv(b"ok", &[b'v'; 100]);
    s.put("/v1/kv/over", &[b'v'; 101])
        .expect_error(413, Some("too_large"));
}

#[test]
fn invalid_value_for_a_known_setting_fails_naming_it() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = write_file(dir.path(), "bad.toml", "sync = \"sometimes\"\n");
    let out = serve_expect_exit(&["--config", &file.to_string_lossy()], &[]);
    expect_start_failure(&out, "sync");
}
