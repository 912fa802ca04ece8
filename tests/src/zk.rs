//! A real ZooKeeper server for end-to-end tests: Debian's `zookeeper` package, started as a
//! standalone server on a free loopback port in a temporary directory, killed on drop.
//!
//! `scripts/test.sh` installs the package when it is missing. A test that needs ZooKeeper fails
//! with instructions when it is not installed; it is never skipped silently.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const JARS: &[&str] = &[
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-simple.jar",
];

/// A standalone ZooKeeper on 127.0.0.1.
pub struct ZooKeeper {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("cannot find a free port: {e}"),
    }
}

/// Sends a four-letter command and returns the answer.
fn four_letters(port: u16, cmd: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(cmd.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

impl ZooKeeper {
    /// Starts a server and waits until it answers `ruok` with `imok`.
    pub fn start() -> ZooKeeper {
        for jar in JARS {
            assert!(
                std::path::Path::new(jar).exists(),
                "{jar} is missing: these tests need a real ZooKeeper. Install it with \
                 `apt-get install -y zookeeper` (scripts/test.sh does this), or run the whole \
                 suite through scripts/test.sh"
            );
        }
        let java = if std::path::Path::new("/usr/bin/java").exists() {
            PathBuf::from("/usr/bin/java")
        } else {
            PathBuf::from("java")
        };
        let dir = match tempfile::Builder::new().prefix("corecache-zk-").tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temporary directory: {e}"),
        };
        let data = dir.path().join("data");
        if let Err(e) = std::fs::create_dir_all(&data) {
            panic!("cannot create {}: {e}", data.display());
        }
        let port = free_port();
        let cfg = format!(
            "tickTime=250\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
             clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,mntr\nminSessionTimeout=500\n\
             maxSessionTimeout=60000\n",
            data.display()
        );
        let cfg_path = dir.path().join("zoo.cfg");
        if let Err(e) = std::fs::write(&cfg_path, cfg) {
            panic!("cannot write {}: {e}", cfg_path.display());
        }
        let log = match std::fs::File::create(dir.path().join("zookeeper.log")) {
            Ok(f) => f,
            Err(e) => panic!("cannot create the ZooKeeper log: {e}"),
        };
        let child = Command::new(&java)
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(JARS.join(":"))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => panic!("cannot run {} (is a JRE installed?): {e}", java.display()),
        };
        let mut zk = ZooKeeper {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if four_letters(port, "ruok").as_deref() == Some("imok") {
                return zk;
            }
            if let Some(Ok(Some(status))) = zk.child.as_mut().map(|c| c.try_wait()) {
                panic!("ZooKeeper exited ({status}):\n{}", zk.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("ZooKeeper did not answer ruok within 30 s:\n{}", zk.log());
    }

    /// `127.0.0.1:PORT`, for `--zookeeper`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default()
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
