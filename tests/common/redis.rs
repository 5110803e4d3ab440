//! A throwaway redis-server on a free loopback port, killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server (no persistence).
pub struct Redis {
    pub port: u16,
    child: Child,
}

/// redis-server on PATH or in the sbin folders; `None` when it is missing and
/// `SAMSERVE_SKIP_CLUSTER_TEST=1` asks to skip (missing without it: panics with the fix).
pub fn find_redis() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("SAMSERVE_SKIP_CLUSTER_TEST").is_ok_and(|v| v == "1"),
            "redis-server is missing: `make cluster-deps` installs it (or set \
             SAMSERVE_SKIP_CLUSTER_TEST=1 to skip on purpose)"
        );
    }
    found
}

impl Redis {
    /// Starts redis-server and waits for PING.
    pub fn start(exe: &std::path::Path) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(exe)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let r = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.command(&["PING"]).is_none_or(|a| a != "+PONG\r\n") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One command, its raw RESP answer (enough for PING, DBSIZE, FLUSHALL).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
