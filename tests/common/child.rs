//! The real `samserve` binary as a child process, for tests that read its log or its memory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `samserve` process on an ephemeral loopback port; killed on drop.
pub struct ChildServer {
    pub base: String,
    pub client: reqwest::Client,
    pub child: Child,
    /// Every log line so far (stdout and stderr).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `samserve --port 0 ARGS` with extra environment variables, and waits until
    /// /readyz answers 200.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> ChildServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_samserve"));
        cmd.args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("samserve starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("listening") {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("samserve logs its address");
        // The address is logged as addr=127.0.0.1:PORT (text) or "addr":"127.0.0.1:PORT".
        let port: String = line
            .split("127.0.0.1:")
            .nth(1)
            .unwrap_or_else(|| panic!("no address in {line}"))
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let addr = format!("127.0.0.1:{port}");
        let s = ChildServer {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            child,
            log,
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = s.client.get(s.url("/readyz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "samserve never got ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
