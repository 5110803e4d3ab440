//! What the cluster tests share: child processes (redis-server, samserve replicas, nginx),
//! a minimal Redis client, and request helpers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").id()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds an executable on PATH or in the sbin folders (nginx lives in /usr/sbin, which a
/// non-root PATH may lack).
pub fn find_exe(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .map(|n| &buf[..n] == b"+PONG\r\n")
            .unwrap_or(false)
}

/// Sends one command to Redis and returns its raw RESP answer (enough for SET and KEYS).
pub fn redis_cmd(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

pub fn start_redis(exe: &Path, port: u16, dir: &Path, n: usize) -> Proc {
    let mut p = Proc::spawn(
        "redis-server",
        Command::new(exe).args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ]),
        dir.join(format!("redis-{n}.log")),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis_ping(port) {
        p.assert_alive();
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer PING"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

pub struct Replica {
    pub proc: Proc,
    pub base: String,
}

pub fn start_replica(i: usize, redis_port: u16, dir: &Path) -> Replica {
    start_replica_with(i, redis_port, dir, &[])
}

/// A replica with more flags.
pub fn start_replica_with(i: usize, redis_port: u16, dir: &Path, extra: &[&str]) -> Replica {
    let port = free_port();
    let proc = Proc::spawn(
        &format!("samserve-{i}"),
        Command::new(env!("CARGO_BIN_EXE_samserve"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--encoder-threads",
                "1",
                "--decoder-workers",
                "1",
                "--embedding-store-lock-ms",
                "10000",
            ])
            .args(extra)
            .env(
                "SAMSERVE_EMBEDDING_STORE",
                format!("redis://127.0.0.1:{redis_port}/0"),
            )
            .env("RUST_LOG", "info,ort=warn"),
        dir.join(format!("samserve-{i}.log")),
    );
    Replica {
        proc,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Renders docker/nginx.conf for loopback: the upstream servers between the markers and
/// the listen address; nothing else changes.
pub fn render_nginx(replica_bases: &[String], listen: u16) -> String {
    let conf = std::fs::read_to_string(common::repo().join("docker/nginx.conf")).unwrap();
    let mut out = String::new();
    let mut in_upstreams = false;
    let mut next_is_listen = false;
    let (mut saw_upstreams, mut saw_listen) = (false, false);
    for line in conf.lines() {
        let t = line.trim();
        if t == "# SAMSERVE-UPSTREAMS-BEGIN" {
            in_upstreams = true;
            saw_upstreams = true;
            for b in replica_bases {
                let hostport = b.trim_start_matches("http://");
                out.push_str(&format!(
                    "        server {hostport} max_fails=1 fail_timeout=10s;\n"
                ));
            }
            continue;
        }
        if t == "# SAMSERVE-UPSTREAMS-END" {
            in_upstreams = false;
            continue;
        }
        if in_upstreams {
            continue;
        }
        if t == "# SAMSERVE-LISTEN" {
            next_is_listen = true;
            continue;
        }
        if next_is_listen {
            assert!(t.starts_with("listen "), "a listen line follows the marker");
            out.push_str(&format!("        listen 127.0.0.1:{listen};\n"));
            next_is_listen = false;
            saw_listen = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(
        saw_upstreams && saw_listen,
        "docker/nginx.conf lost its markers"
    );
    out
}

pub fn start_nginx(exe: &Path, conf: &str, dir: &Path) -> Proc {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // Run as root, nginx's workers drop to `nobody`: they must reach the temp folders that
    // the master creates (and chowns) under the prefix.
    use std::os::unix::fs::PermissionsExt;
    for d in [dir, &prefix] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let p = prefix.to_str().unwrap();
    Proc::spawn(
        "nginx",
        Command::new(exe).args([
            "-p",
            &format!("{p}/"),
            "-c",
            conf_path.to_str().unwrap(),
            "-e",
            &format!("{p}/logs/error.log"),
            "-g",
            &format!("daemon off; master_process on; pid {p}/nginx.pid;"),
        ]),
        dir.join("nginx.stdout.log"),
    )
}

/// Temp folder removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SAMSERVE_KEEP_CLUSTER_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub async fn metric_each(
    client: &reqwest::Client,
    bases: &[&str],
    name: &str,
    f: &str,
) -> Vec<f64> {
    let mut out = Vec::new();
    for b in bases {
        out.push(common::metric_at(client, b, name, f).await);
    }
    out
}

pub fn click(i: usize) -> Value {
    json!({"prompts": [{"points": [{"x": 40 + (i % 5) * 30, "y": 50 + (i % 3) * 40, "label": 1}]}]})
}

pub async fn put(client: &reqwest::Client, base: &str, png: &[u8]) -> (u16, Value) {
    let id = samserve::core::engine::image_id_of(png);
    let r = client
        .put(format!("{base}/v1/images/{id}"))
        .header("content-type", "image/png")
        .body(png.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn segment(client: &reqwest::Client, base: &str, id: &str, body: &Value) -> (u16, Value) {
    match client
        .post(format!("{base}/v1/images/{id}/segment"))
        .json(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({"transport_error": e.to_string()})),
    }
}

pub fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

pub fn delta(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Whether the cluster tests run: false (and says so) with SAMSERVE_SKIP_CLUSTER_TEST=1.
pub fn cluster_tests_enabled() -> bool {
    if std::env::var("SAMSERVE_SKIP_CLUSTER_TEST").as_deref() == Ok("1") {
        eprintln!("SKIPPED: SAMSERVE_SKIP_CLUSTER_TEST=1");
        return false;
    }
    true
}

/// redis-server, or a failure saying how to get it.
pub fn redis_exe() -> PathBuf {
    find_exe("redis-server").expect(
        "redis-server is not installed (apt-get install redis-server; .ci/run does it). \
         Set SAMSERVE_SKIP_CLUSTER_TEST=1 to skip this test on purpose.",
    )
}

/// A fresh temp folder (removed on drop unless SAMSERVE_KEEP_CLUSTER_DIR is set).
pub fn temp_dir(name: &str) -> TempDir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("samserve-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Waits until the replica answers /readyz with 200.
pub async fn wait_ready(client: &reqwest::Client, r: &mut Replica) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        r.proc.assert_alive();
        let ok = client
            .get(format!("{}/readyz", r.base))
            .send()
            .await
            .map(|x| x.status() == 200)
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "replica never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One Redis command with binary-safe arguments; the raw RESP reply, read whole.
pub fn redis_raw(port: u16, args: &[&[u8]]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "redis closed the connection");
        out.extend_from_slice(&buf[..n]);
        // Complete when a simple reply's line ends, or a bulk reply has all its bytes.
        if let Some(end) = out.windows(2).position(|w| w == b"\r\n") {
            if out[0] != b'$' {
                return out;
            }
            let len: i64 = std::str::from_utf8(&out[1..end]).unwrap().parse().unwrap();
            if len < 0 || out.len() >= end + 2 + len as usize + 2 {
                return out;
            }
        }
    }
}

/// GET, binary-safe: the value, or None.
pub fn redis_get(port: u16, key: &str) -> Option<Vec<u8>> {
    let r = redis_raw(port, &[b"GET", key.as_bytes()]);
    assert_eq!(r[0], b'$', "{}", String::from_utf8_lossy(&r));
    let end = r.windows(2).position(|w| w == b"\r\n").unwrap();
    let len: i64 = std::str::from_utf8(&r[1..end]).unwrap().parse().unwrap();
    (len >= 0).then(|| r[end + 2..end + 2 + len as usize].to_vec())
}

/// SET, binary-safe.
pub fn redis_set(port: u16, key: &str, value: &[u8]) {
    let r = redis_raw(port, &[b"SET", key.as_bytes(), value]);
    assert!(r.starts_with(b"+OK"), "{}", String::from_utf8_lossy(&r));
}

/// A field of /proc/PID/status in bytes (VmRSS, VmHWM).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
        * 1024
}
