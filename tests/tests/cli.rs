//! The client commands: put, get, delete, scan, status. Exit codes: 0 ok, 1 not found, 2 error.

use std::time::Duration;

use corecache_e2e::{dead_endpoint, run_cli, CliOutput, Server};

const T: Duration = Duration::from_secs(15);

fn cli(args: &[&str]) -> CliOutput {
    run_cli(args, &[], None, T)
}

#[track_caller]
fn expect_code(out: &CliOutput, code: i32) {
    assert_eq!(out.code, Some(code), "wrong exit code: {out:?}");
}

#[test]
fn put_get_delete_roundtrip() {
    let s = Server::start();
    let ep = s.endpoint();
    let out = cli(&["put", "greeting", "hello world", "--endpoint", &ep]);
    expect_code(&out, 0);

    // The server sees exactly what the CLI stored.
    let r = s.get("/v1/kv/greeting");
    r.expect(200);
    assert_eq!(r.body, b"hello world", "{r:?}");

    let out = cli(&["get", "greeting", "--endpoint", &ep]);
    expect_code(&out, 0);
    assert_eq!(
        out.stdout, b"hello world",
        "get must print the raw value: {out:?}"
    );

    let out = cli(&["delete", "greeting", "--endpoint", &ep]);
    expect_code(&out, 0);
    s.get("/v1/kv/greeting").expect(404);

    let out = cli(&["get", "greeting", "--endpoint", &ep]);
    expect_code(&out, 1);
    assert!(
        out.stdout.is_empty(),
        "a missing key prints no value: {out:?}"
    );
}

#[test]
fn key_with_spaces_colons_and_slashes_is_sent_as_its_bytes() {
    let s = Server::start();
    let ep = s.endpoint();
    let key = "user:42/profile name?x=1#frag%20";
    expect_code(&cli(&["put", key, "v1", "--endpoint", &ep]), 0);
    let r = s.get_kv(key.as_bytes());
    r.expect(200);
    assert_eq!(
        r.body, b"v1",
        "the CLI stored the key under other bytes: {r:?}"
    );
    let out = cli(&["get", key, "--endpoint", &ep]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, b"v1", "{out:?}");
}

#[test]
fn put_reads_the_value_from_stdin() {
    let s = Server::start();
    let ep = s.endpoint();
    let value: Vec<u8> = b"line one\nline two\n\x00\xFF\xFE binary tail"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(100_000))
        .collect();
    let out = run_cli(
        &["put", "from-stdin", "--endpoint", &ep],
        &[],
        Some(&value),
        T,
    );
    expect_code(&out, 0);
    let r = s.get("/v1/kv/from-stdin");
    r.expect(200);
    assert!(
        r.body == value,
        "stdin value stored as {} bytes, expected {} (first bytes {:?})",
        r.body.len(),
        value.len(),
        String::from_utf8_lossy(&r.body[..r.body.len().min(40)])
    );
    let out = cli(&["get", "from-stdin", "--endpoint", &ep]);
    expect_code(&out, 0);
    assert!(
        out.stdout == value,
        "get printed {} bytes, expected {}",
        out.stdout.len(),
        value.len()
    );
}

#[test]
fn delete_of_a_missing_key_exits_1() {
    let s = Server::start();
    let out = cli(&["delete", "never-there", "--endpoint", &s.endpoint()]);
    expect_code(&out, 1);
}

#[test]
fn scan_prints_one_line_per_key_in_order() {
    let s = Server::start();
    for k in ["scan/b", "scan/a", "scan/c", "scanner", "other"] {
        s.put_kv(k.as_bytes(), format!("val-{k}").as_bytes());
    }
    let out = cli(&["scan", "--prefix", "scan/", "--endpoint", &s.endpoint()]);
    expect_code(&out, 0);
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "one line per key under scan/: {out:?}");
    for (line, key) in lines.iter().zip(["scan/a", "scan/b", "scan/c"]) {
        assert!(
            line.contains(key),
            "line {line:?} should show {key}: {out:?}"
        );
    }
    // More keys than any one page would hold by default still come out whole.
    for i in 0..250 {
        s.put_kv(format!("many/{i:03}").as_bytes(), b"v");
    }
    let out = cli(&["scan", "--prefix", "many/", "--endpoint", &s.endpoint()]);
    expect_code(&out, 0);
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 250, "{out:?}");
    assert!(
        lines[0].contains("many/000") && lines[249].contains("many/249"),
        "{out:?}"
    );

    let out = cli(&[
        "scan",
        "--prefix",
        "nothing-here/",
        "--endpoint",
        &s.endpoint(),
    ]);
    expect_code(&out, 0);
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn status_prints_the_status_json() {
    let s = Server::start_with(&["--node-id", "cli-node"]);
    let out = cli(&["status", "--endpoint", &s.endpoint()]);
    expect_code(&out, 0);
    let j: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(j) => j,
        Err(e) => panic!("status output is not JSON ({e}): {out:?}"),
    };
    assert_eq!(j["node_id"].as_str(), Some("cli-node"), "{out:?}");
    assert_eq!(j["role"].as_str(), Some("leader"), "{out:?}");
}

#[test]
fn unreachable_endpoint_exits_2_for_every_command() {
    let ep = dead_endpoint();
    for args in [
        vec!["get", "k", "--endpoint", &ep],
        vec!["put", "k", "v", "--endpoint", &ep],
        vec!["delete", "k", "--endpoint", &ep],
        vec!["scan", "--prefix", "p", "--endpoint", &ep],
        vec!["status", "--endpoint", &ep],
    ] {
        let out = cli(&args);
        expect_code(&out, 2);
        assert!(
            !out.stderr.is_empty(),
            "an error must be explained on stderr: {out:?}"
        );
    }
}

#[test]
fn bad_usage_exits_2() {
    let s = Server::start();
    let ep = s.endpoint();
    for args in [
        vec!["get", "--endpoint", &ep],                // no key
        vec!["put", "a", "b", "c", "--endpoint", &ep], // one argument too many
        vec!["get", "k", "--endpoint", "not a url"],
    ] {
        let out = cli(&args);
        expect_code(&out, 2);
    }
}
