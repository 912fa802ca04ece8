//! Helpers for end-to-end tests (the real `corecache` binary on real sockets).
//!
//! - [`Server`]: one `corecache serve` process on `127.0.0.1:0` with its own temporary data
//!   directory; it is killed when dropped, and its stderr is printed if the test panicked.
//! - [`Response`] and [`http`]: a small HTTP/1.1 client over `TcpStream`, so that tests control
//!   the request target byte for byte (percent-encoding, bad encodings) and every header.
//! - [`run_cli`]: runs the binary as a client command with a time limit.
//! - [`pct`], [`b64`], [`unb64`], [`parse_http_date`]: encodings the contract uses.

pub mod cluster;
pub mod release;

pub mod zk;

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one HTTP exchange may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// Path of the `corecache` binary built by this workspace.
pub fn corecache_bin() -> PathBuf {
    let mut p = std::env::current_exe().expect("test executable path");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("corecache")
}

/// The binary's path; panics with build instructions when it is missing.
pub fn require_bin() -> PathBuf {
    let bin = corecache_bin();
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p corecache` \
         (with the same CARGO_TARGET_DIR and profile as the tests)",
        bin.display()
    );
    bin
}

// ---------------------------------------------------------------------------------------------
// Encodings

/// Percent-encodes every byte except the RFC 3986 unreserved characters.
pub fn pct(bytes: impl AsRef<[u8]>) -> String {
    let mut out = String::new();
    for &b in bytes.as_ref() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 with padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64 with padding; panics with the offending text.
pub fn unb64(text: &str) -> Vec<u8> {
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(v) => v,
        Err(e) => panic!("not standard base64 ({e}): {text:?}"),
    }
}

/// Parses an IMF-fixdate HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let s = s.trim();
    let (dow, rest) = s.split_once(", ")?;
    if !["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&dow) {
        return None;
    }
    let parts: Vec<&str> = rest.split(' ').collect();
    if parts.len() != 5 || parts[4] != "GMT" || parts[0].len() != 2 || parts[3].len() != 8 {
        return None;
    }
    let day: u64 = parts[0].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[1])? as u64 + 1;
    let year: u64 = parts[2].parse().ok()?;
    let hms: Vec<u64> = parts[3]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) || year < 1970 || hms[0] > 23 || hms[1] > 59 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), years >= 1970 only.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let dow_index = (days + 4) % 7; // 1970-01-01 was a Thursday
    if ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][dow_index as usize] != dow {
        return None;
    }
    Some(days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One HTTP response, whatever its status.
#[derive(Clone)]
pub struct Response {
    /// What was sent, for failure messages (`METHOD target`).
    pub request: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the whole response when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!("response body is not JSON ({e}): {self:?}"),
        }
    }

    /// The version in the `ETag` header (`"N"`, or `W/"N"`); panics when missing or malformed.
    pub fn etag_version(&self) -> u64 {
        let Some(tag) = self.header("etag") else {
            panic!("no ETag header: {self:?}")
        };
        let t = tag.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        match t
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            Some(v) => v,
            None => panic!("ETag {tag:?} is not \"<integer>\": {self:?}"),
        }
    }

    /// Asserts the status, printing the whole response otherwise.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status: {self:?}");
        self
    }

    /// Asserts a JSON error body `{"error": "...", "code": CODE}` (and the status).
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: Option<&str>) -> &Self {
        assert_eq!(self.status, status, "unexpected status: {self:?}");
        let j: serde_json::Value = match serde_json::from_slice(&self.body) {
            Ok(j) => j,
            Err(e) => panic!("error body is not JSON ({e}): {self:?}"),
        };
        assert!(
            j.get("error").and_then(|e| e.as_str()).is_some(),
            "error body has no string \"error\": {self:?}"
        );
        let got = j.get("code").and_then(|c| c.as_str());
        assert!(got.is_some(), "error body has no string \"code\": {self:?}");
        if let Some(code) = code {
            assert_eq!(got, Some(code), "wrong error code: {self:?}");
        }
        self
    }

    /// The `version` number of a JSON write reply.
    #[track_caller]
    pub fn json_version(&self) -> u64 {
        match self.json().get("version").and_then(|v| v.as_u64()) {
            Some(v) => v,
            None => panic!("no integer \"version\" in the body: {self:?}"),
        }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n  request: {}", self.request)?;
        writeln!(f, "  status: {}", self.status)?;
        for (n, v) in &self.headers {
            writeln!(f, "  {n}: {v}")?;
        }
        let text = self.text();
        let shown: String = text.chars().take(1500).collect();
        let more = if text.chars().count() > 1500 {
            format!("… ({} bytes in all)", self.body.len())
        } else {
            String::new()
        };
        write!(f, "  body: {shown:?}{more}")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn io_err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

/// One request on a fresh connection (`Connection: close`). `target` is sent exactly as given.
/// A `Content-Length` is added for every method but GET and HEAD unless `headers` has one
/// (or a `Transfer-Encoding`, in which case `body` must be encoded accordingly).
/// If the server stops reading the body early (a rejected upload), the response is still read.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let has_len = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_len && (!body.is_empty() || !matches!(method, "GET" | "HEAD")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let write_result = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .and_then(|_| stream.flush());

    let request = format!("{method} {target}");
    let request_shown = if request.len() > 300 {
        let cut: String = request.chars().take(300).collect();
        format!("{cut}… ({} bytes)", request.len())
    } else {
        request
    };
    let parsed = read_response(&mut stream, method == "HEAD");
    match (parsed, write_result) {
        (Ok((status, headers, rbody)), _) => Ok(Response {
            request: format!("{request_shown} (request body {} bytes)", body.len()),
            status,
            headers,
            body: rbody,
        }),
        (Err(e), Ok(())) => Err(io_err(format!(
            "{request_shown}: reading the response: {e}"
        ))),
        (Err(e), Err(w)) => Err(io_err(format!(
            "{request_shown}: writing the request failed ({w}), and then reading the response: {e}"
        ))),
    }
}

type Parsed = (u16, Vec<(String, String)>, Vec<u8>);

/// `read`, retried when a signal interrupts it.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn read_response(stream: &mut TcpStream, head_only: bool) -> std::io::Result<Parsed> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = read_some(stream, &mut chunk)?;
        if n == 0 {
            return Err(io_err(format!(
                "connection closed before the end of the headers (got {:?})",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut rest = buf[header_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut sp = status_line.splitn(3, ' ');
    let proto = sp.next().unwrap_or_default();
    let status: u16 = match sp.next().and_then(|s| s.parse().ok()) {
        Some(s) if proto.starts_with("HTTP/1.") => s,
        _ => return Err(io_err(format!("bad status line {status_line:?}"))),
    };
    let mut headers = Vec::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((status, headers, Vec::new()));
    }
    let chunked =
        get("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    if chunked {
        // Read to EOF (we asked for Connection: close), then decode.
        stream.read_to_end(&mut rest)?;
        let body = dechunk(&rest)?;
        return Ok((status, headers, body));
    }
    if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io_err(format!("bad Content-Length {len:?}")))?;
        while rest.len() < len {
            let n = read_some(stream, &mut chunk)?;
            if n == 0 {
                return Err(io_err(format!(
                    "connection closed after {} of {len} body bytes",
                    rest.len()
                )));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        return Ok((status, headers, rest));
    }
    stream.read_to_end(&mut rest)?;
    Ok((status, headers, rest))
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(i) = find(data, b"\r\n") else {
            return Err(io_err("truncated chunked body"));
        };
        let size_text = String::from_utf8_lossy(&data[..i]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io_err(format!("bad chunk size {size_text:?}")))?;
        data = &data[i + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(io_err("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// A running `corecache serve`, on a fresh temporary directory, killed on drop.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    /// The Redis protocol address (from the second stdout line), unless turned off.
    resp: Option<SocketAddr>,
    dir: tempfile::TempDir,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Server {
    /// `corecache serve --listen 127.0.0.1:0 --data-dir <tmp>/data`.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// As [`Server::start`], with extra arguments after the standard ones.
    pub fn start_with(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// As [`Server::start_with`], with extra environment variables.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let dir = match tempfile::Builder::new().prefix("corecache-e2e-").tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temporary directory: {e}"),
        };
        if let Err(e) = std::fs::create_dir_all(dir.path().join("data")) {
            panic!("cannot create the data directory: {e}");
        }
        let mut s = Server {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            resp: None,
            dir,
            args: args.iter().map(OsString::from).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
        };
        s.spawn();
        s
    }

    /// The temporary directory (holds `data/` and `stderr.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Everything the server wrote to stderr so far (all runs).
    pub fn stderr_log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn tail_log(&self) -> String {
        let log = self.stderr_log();
        let chars: Vec<char> = log.chars().collect();
        let from = chars.len().saturating_sub(6000);
        chars[from..].iter().collect()
    }

    fn spawn(&mut self) {
        let bin = require_bin();
        let log = match OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
        {
            Ok(f) => f,
            Err(e) => panic!("cannot open the stderr log: {e}"),
        };
        // The RESP front-end listens by default on 127.0.0.1:7379; tests in parallel must not
        // share it, so it gets port 0 unless the test sets it.
        let resp_set = self.args.iter().any(|a| a == "--resp-listen");
        let resp_off = self
            .args
            .windows(2)
            .any(|w| w[0] == "--resp-listen" && w[1] == "off");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(if resp_set {
                &[][..]
            } else {
                &["--resp-listen", "127.0.0.1:0"][..]
            })
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot run {}: {e}", bin.display()),
        };
        let Some(stdout) = child.stdout.take() else {
            panic!("no stdout pipe")
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            if !resp_off {
                let _ = tx.send(lines.next()); // `resp listening on ADDR`
            }
            // Keep draining so that later output never blocks the server.
            for _ in lines {}
        });
        let first = rx.recv_timeout(START_TIMEOUT);
        let line = match first {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the server did not print its listening line within {START_TIMEOUT:?} \
                     (got {other:?}; process status {status:?}); args {:?}\nstderr:\n{}",
                    self.args,
                    self.tail_log()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok());
        match addr {
            Some(a) if a.port() != 0 => self.addr = a,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "first stdout line is not `listening on http://127.0.0.1:PORT`: {line:?}\n\
                     stderr:\n{}",
                    self.tail_log()
                );
            }
        }
        self.resp = None;
        if !resp_off {
            let line = rx.recv_timeout(START_TIMEOUT);
            let resp = match &line {
                Ok(Some(Ok(l))) => l
                    .strip_prefix("resp listening on ")
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok()),
                _ => None,
            };
            match resp {
                Some(a) if a.port() != 0 => self.resp = Some(a),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "second stdout line is not `resp listening on 127.0.0.1:PORT`: {line:?}\n\
                         stderr:\n{}",
                        self.tail_log()
                    );
                }
            }
        }
        self.child = Some(child);
        self.wait_ready();
    }

    /// The listening line comes once the socket is bound; the node may still be replaying its
    /// log (503 `not_ready`). Waits for `GET /readyz` → 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            match http(self.addr, "GET", "/readyz", &[], b"") {
                Ok(r) if r.status == 200 => return,
                other => last = Some(other),
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "the server exited ({status}) before /readyz said 200\nstderr:\n{}",
                    self.tail_log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
        panic!(
            "GET /readyz was not 200 within {START_TIMEOUT:?} of the listening line; last: \
             {last:?}\nstderr:\n{}",
            self.tail_log()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Redis protocol address (panics if the test turned it off).
    pub fn resp_addr(&self) -> SocketAddr {
        match self.resp {
            Some(a) => a,
            None => panic!("this server has no RESP listener"),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// Any request; panics (with the server's stderr) on a transport error.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        match http(self.addr, method, target, headers, body) {
            Ok(r) => r,
            Err(e) => panic!(
                "HTTP exchange failed: {e}\nserver stderr:\n{}",
                self.tail_log()
            ),
        }
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    pub fn put(&self, target: &str, body: &[u8]) -> Response {
        self.request("PUT", target, &[], body)
    }

    pub fn delete(&self, target: &str) -> Response {
        self.request("DELETE", target, &[], b"")
    }

    pub fn post(&self, target: &str, body: &[u8]) -> Response {
        self.request(
            "POST",
            target,
            &[("Content-Type", "application/json")],
            body,
        )
    }

    /// `PUT /v1/kv/{key}`; asserts 200 and returns the version.
    #[track_caller]
    pub fn put_kv(&self, key: &[u8], value: &[u8]) -> u64 {
        let r = self.put(&kv_path(key), value);
        r.expect(200);
        r.etag_version()
    }

    /// `GET /v1/kv/{key}`.
    pub fn get_kv(&self, key: &[u8]) -> Response {
        self.get(&kv_path(key))
    }

    /// SIGKILL, and wait for the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait (at most 20 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let Some(mut c) = self.child.take() else {
            panic!("terminate: the server is not running")
        };
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                other => {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!(
                        "the server did not exit within 20 s of SIGTERM ({other:?})\nstderr:\n{}",
                        self.tail_log()
                    );
                }
            }
        }
    }

    /// Starts again on the same data directory (killing the running process first, if any).
    /// The port changes.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!(
                "---- corecache stderr ({}) ----\n{}\n---- end of stderr ----",
                self.log_path().display(),
                self.tail_log()
            );
        }
    }
}

/// `/v1/kv/{percent-encoded key}`
pub fn kv_path(key: &[u8]) -> String {
    format!("/v1/kv/{}", pct(key))
}

// ---------------------------------------------------------------------------------------------
// CLI

/// What a finished (or timed-out) command left.
pub struct CliOutput {
    pub args: Vec<String>,
    /// `None` when killed by a signal or by the time limit.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CliOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl fmt::Debug for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n  command: corecache {:?}\n  exit code: {:?}{}\n  stdout: {:?}\n  stderr: {:?}",
            self.args,
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout_text(),
            self.stderr_text()
        )
    }
}

/// Runs `corecache ARGS` with `stdin` as its input, killing it after `timeout`.
pub fn run_cli(
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> CliOutput {
    let bin = require_bin();
    let mut cmd = Command::new(&bin);
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run {}: {e}", bin.display()),
    };
    let writer = match (child.stdin.take(), stdin) {
        (Some(mut w), Some(data)) => {
            let data = data.to_vec();
            Some(thread::spawn(move || {
                let _ = w.write_all(&data);
            }))
        }
        _ => None,
    };
    let out_reader = child.stdout.take().map(drain);
    let err_reader = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Err(e) => panic!("waiting for corecache: {e}"),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let join =
        |h: Option<thread::JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    CliOutput {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        timed_out,
        stdout: join(out_reader),
        stderr: join(err_reader),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// A `127.0.0.1` port that nothing listens on (bound, then released).
pub fn dead_endpoint() -> String {
    let l = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let port = l.local_addr().map(|a| a.port()).unwrap_or(1);
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let r = File::create(&p).and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = r {
        panic!("writing {}: {e}", p.display());
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Scan pages and batches

/// One item of a scan page, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub version: u64,
}

/// Checks a 200 scan page `{"items": [...], "continuation": token-or-null}` and decodes it.
#[track_caller]
pub fn parse_page(r: &Response) -> (Vec<Item>, Option<String>) {
    r.expect(200);
    let j = r.json();
    let Some(items) = j.get("items").and_then(|i| i.as_array()) else {
        panic!("no \"items\" array: {r:?}")
    };
    let mut out = Vec::new();
    for it in items {
        let field = |name: &str| match it.get(name).and_then(|k| k.as_str()) {
            Some(s) => unb64(s),
            None => panic!("item without a string {name:?}: {it}\n{r:?}"),
        };
        let Some(version) = it.get("version").and_then(|v| v.as_u64()) else {
            panic!("item without an integer \"version\": {it}\n{r:?}")
        };
        out.push(Item {
            key: field("key"),
            value: field("value"),
            version,
        });
    }
    let cont = match j.get("continuation") {
        Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(t)) => Some(t.clone()),
        other => panic!("\"continuation\" must be a string or null, got {other:?}: {r:?}"),
    };
    (out, cont)
}

/// Follows continuations from `GET /v1/kv?{query}` (at most `max_pages` pages); returns the
/// pages' items, one vector per page.
#[track_caller]
pub fn scan_all(s: &Server, query: &str, max_pages: usize) -> Vec<Vec<Item>> {
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let target = match &token {
            None => format!("/v1/kv?{query}"),
            Some(t) => format!("/v1/kv?{query}&continuation={}", pct(t)),
        };
        let r = s.get(&target);
        let (items, next) = parse_page(&r);
        pages.push(items);
        match next {
            None => return pages,
            Some(t) => {
                assert!(
                    pages.len() < max_pages,
                    "more than {max_pages} pages; pages so far: {pages:?}; last: {r:?}"
                );
                assert!(
                    token.as_ref() != Some(&t),
                    "the continuation did not move: {r:?}"
                );
                token = Some(t);
            }
        }
    }
}

/// `{"op": "put", "key": b64, "value": b64}`
pub fn op_put(key: &[u8], value: &[u8]) -> serde_json::Value {
    serde_json::json!({"op": "put", "key": b64(key), "value": b64(value)})
}

/// `{"op": "delete", "key": b64}`
pub fn op_delete(key: &[u8]) -> serde_json::Value {
    serde_json::json!({"op": "delete", "key": b64(key)})
}

/// `POST /v1/batch` with `{"ops": ops}`.
pub fn batch(s: &Server, ops: Vec<serde_json::Value>) -> Response {
    let body = serde_json::json!({ "ops": ops }).to_string();
    s.post("/v1/batch", body.as_bytes())
}
