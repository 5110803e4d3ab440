//! Serving beyond localhost: input hardening found by probing from outside (truncated
//! JPEG, content types, slowloris), API keys, CORS, request ids and the access log, the
//! per-client cap. Real servers on loopback ports; log checks use the real binary.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::{synthetic_png, TestServer};

fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<missing>")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        common::repo()
            .join("tests/fixtures/parity/images")
            .join(name),
    )
    .unwrap()
}

async fn post(
    s: &TestServer,
    path: &str,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut r = s.client.post(s.url(path)).body(body);
    if let Some(c) = ctype {
        r = r.header("content-type", c);
    }
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap())
}

#[tokio::test]
async fn truncated_jpegs_are_400_and_whole_ones_pass() {
    let s = TestServer::default().await;
    let jpeg = fixture("scene_640x480.jpg");
    for pct in [40, 60, 80, 99] {
        let cut = jpeg[..jpeg.len() * pct / 100].to_vec();
        let (st, b) = post(&s, "/v1/images", Some("image/jpeg"), cut).await;
        assert_eq!(
            (st, error_code(&b)),
            (400, "invalid_image"),
            "cut at {pct}%: {b}"
        );
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("truncated"),
            "{b}"
        );
    }
    let (st, b) = post(&s, "/v1/images", Some("image/jpeg"), jpeg).await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn json_routes_refuse_other_content_types_with_415() {
    let s = TestServer::default().await;
    let id = s.upload(&synthetic_png(64, 48, 1)).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = br#"{"prompts": [{"points": [{"x": 5, "y": 5, "label": 1}]}]}"#.to_vec();
    for path in [
        format!("/v1/images/{id}/segment"),
        format!("/v1/images/{id}/everything"),
    ] {
        for ctype in [
            Some("text/plain"),
            None,
            Some("application/x-www-form-urlencoded"),
        ] {
            let (st, b) = post(&s, &path, ctype, body.clone()).await;
            assert_eq!(
                (st, error_code(&b)),
                (415, "unsupported_media_type"),
                "{path} {ctype:?}: {b}"
            );
        }
    }
    // The same body as JSON is served (charset parameters are fine).
    let (st, b) = post(
        &s,
        &format!("/v1/images/{id}/segment"),
        Some("application/json; charset=utf-8"),
        body,
    )
    .await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn header_limits_refuse_thin_and_deep_images_before_decoding() {
    let s = TestServer::default().await;
    // Header-only PNGs: decoding them would need the announced pixels.
    let header = |w: u32, h: u32, depth: u8, color: u8| {
        let mut img = Vec::new();
        let mut enc = png::Encoder::new(&mut img, w, h);
        enc.set_depth(if depth == 16 {
            png::BitDepth::Sixteen
        } else {
            png::BitDepth::Eight
        });
        enc.set_color(if color == 6 {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        let mut wr = enc.write_header().unwrap();
        // An empty IDAT is enough: the limits are checked before the pixel data is read.
        wr.write_chunk(
            png::chunk::IDAT,
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        )
        .unwrap();
        drop(wr);
        img
    };
    // A thin image (aspect ratio) and a 16-bit RGBA one (decoded bytes): 413 from the header.
    for (w, h, depth, colour, why) in [
        (64_000_000, 1, 8, 2, "aspect ratio"),
        (8000, 8000, 16, 6, "decodes to"),
    ] {
        let (st, b) = post(
            &s,
            "/v1/images",
            Some("image/png"),
            header(w, h, depth, colour),
        )
        .await;
        assert_eq!((st, error_code(&b)), (413, "payload_too_large"), "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(why), "{b}");
    }
}

/// Reads until the server closes the connection; returns when, and what it sent.
fn wait_for_close(mut stream: std::net::TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (start.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (start.elapsed(), got)
            }
            Err(e) => panic!("connection still open after {:?}: {e}", start.elapsed()),
        }
    }
}

/// Sends one GET /healthz on `stream` and reads its whole (keep-alive) response.
fn healthz_on(stream: &mut std::net::TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response was whole");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn half_sent_requests_meet_the_header_timeout_and_idle_keep_alives_the_idle_timeout() {
    let mut cfg = common::config();
    cfg.exposure.header_timeout_ms = 1000;
    cfg.exposure.idle_timeout_ms = 3000;
    let s = TestServer::start(cfg).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let (half, idle) = tokio::task::spawn_blocking(move || {
        // Slowloris: half a request head, then nothing.
        let mut a = std::net::TcpStream::connect(&addr).unwrap();
        a.write_all(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Ty")
            .unwrap();
        let half = wait_for_close(a, Duration::from_secs(30));
        // A keep-alive connection after a complete request and its response, then idle.
        let mut b = std::net::TcpStream::connect(&addr).unwrap();
        let first = healthz_on(&mut b);
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let idle = wait_for_close(b, Duration::from_secs(30));
        (half, idle)
    })
    .await
    .unwrap();
    // Each closed by its own timer: not before it (the server cannot know earlier), and the
    // idle connection not by the (shorter) header timer.
    assert!(
        half.0 >= Duration::from_millis(900) && half.0 < Duration::from_millis(2900),
        "half-sent head closed after {:?} (header timeout 1 s)",
        half.0
    );
    assert!(
        idle.0 >= Duration::from_millis(2900),
        "idle keep-alive closed after {:?} (idle timeout 3 s, header timeout 1 s)",
        idle.0
    );
    assert!(
        idle.1.is_empty(),
        "sent on close: {:?}",
        String::from_utf8_lossy(&idle.1)
    );
    assert_eq!(
        s.metric("samserve_connections_timed_out_total", "timer=\"header\"")
            .await,
        1.0
    );
    assert!(
        s.metric("samserve_connections_timed_out_total", "timer=\"idle\"")
            .await
            >= 1.0
    );
    // The server still serves.
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_keep_alive_connection_quieter_than_the_idle_timeout_serves_its_next_request() {
    // A short header timeout must not close a keep-alive connection that waits between
    // requests: that wait is under --idle-timeout-ms. The next request's head, once it has
    // started, is under the header timeout again.
    let mut cfg = common::config();
    cfg.exposure.header_timeout_ms = 300;
    cfg.exposure.idle_timeout_ms = 20_000;
    let s = TestServer::start(cfg).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let (second, stalled) = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        assert!(healthz_on(&mut c).starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(1200));
        let second = healthz_on(&mut c);
        std::thread::sleep(Duration::from_millis(1200));
        c.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
        (second, wait_for_close(c, Duration::from_secs(10)))
    })
    .await
    .unwrap();
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        stalled.0 < Duration::from_secs(5),
        "a stalled head on a kept-alive connection closed after {:?} (header timeout 0.3 s)",
        stalled.0
    );
}

fn keys_file(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("keys.txt");
    std::fs::write(&p, text).unwrap();
    p
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("samserve-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn api_keys_guard_every_route_but_health_and_never_reach_the_log() {
    let dir = tempdir("keys");
    let alice = "alice-0123456789abcdef-secret";
    let bob = "bob-fedcba9876543210-secret";
    let file = keys_file(&dir, &format!("# test keys\nalice:{alice}\n"));
    let s = ChildServer::start(
        &[
            "--api-keys-file",
            file.to_str().unwrap(),
            "--metrics-require-key",
            "--log-format",
            "json",
        ],
        &[],
    )
    .await;
    let png = synthetic_png(64, 48, 3);
    let upload = |auth: Option<(&'static str, String)>| {
        let mut r = s
            .client
            .post(s.url("/v1/images"))
            .header("content-type", "image/png")
            .body(png.clone());
        if let Some((h, v)) = auth {
            r = r.header(h, v);
        }
        r.send()
    };
    // No key, a wrong key: 401 with WWW-Authenticate and a JSON error.
    for auth in [
        None,
        Some(("authorization", format!("Bearer {bob}"))),
        Some(("x-api-key", "nope".to_string())),
    ] {
        let r = upload(auth.clone()).await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let b: serde_json::Value = r.json().await.unwrap();
        assert_eq!(error_code(&b), "unauthorized");
    }
    // The right key, either header.
    let r = upload(Some(("authorization", format!("Bearer {alice}"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = upload(Some(("x-api-key", alice.to_string())))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Health routes stay open; /metrics is protected with --metrics-require-key.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            s.client.get(s.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    // The page and its assets load without a key (the page sends the key its user types in);
    // the API behind it does not answer without one.
    for path in ["/", "/page/app.js", "/page/style.css"] {
        assert_eq!(
            s.client.get(s.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    assert_eq!(
        s.client
            .get(s.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        s.client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let m = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(alice)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("samserve_rejected_requests_total{reason=\"unauthorized\"} 5")),
        "{text}"
    );
    // SIGHUP reloads the file: bob's key works afterwards, alice's no longer.
    keys_file(&dir, &format!("bob:{bob}\n"));
    let st = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let started = Instant::now();
    loop {
        let r = upload(Some(("x-api-key", bob.to_string()))).await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "keys not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = upload(Some(("x-api-key", alice.to_string())))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The log names the key ids, never the keys.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = s.log_text();
    assert!(log.contains("\"key_id\":\"alice\""), "{log}");
    assert!(log.contains("\"key_id\":\"bob\""), "{log}");
    assert!(log.contains("API keys reloaded"), "{log}");
    for secret in [alice, bob, "nope"] {
        assert!(!log.contains(secret), "a key reached the log");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cors_preflight_and_simple_requests() {
    let mut cfg = common::config();
    cfg.exposure.cors_allow_origins = vec!["https://app.example".into()];
    let s = TestServer::start(cfg).await;
    for path in [
        "/v1/images",
        "/v1/images/abc/segment",
        "/v1/models",
        "/v1/everything",
    ] {
        let r = s
            .client
            .request(reqwest::Method::OPTIONS, s.url(path))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let h = r.headers();
        assert_eq!(
            h["access-control-allow-origin"], "https://app.example",
            "{path}"
        );
        let methods = h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .to_ascii_uppercase();
        assert!(
            methods.contains("POST") && methods.contains("DELETE"),
            "{methods}"
        );
        let headers = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "{headers}"
        );
    }
    // A simple request from the allowed origin: the header, and the exposed headers.
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("retry-after") && exposed.contains("x-request-id"),
        "{exposed}"
    );
    // A refused origin gets no CORS headers (the browser then blocks the answer).
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("/v1/images"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn request_ids_are_echoed_generated_and_logged() {
    let s = ChildServer::start(&["--log-format", "json"], &[]).await;
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-42");
    // Generated when absent (or unusable), and in error bodies.
    let r = s
        .client
        .post(s.url("/v1/images/zzz/segment"))
        .header("x-request-id", "bad id with spaces")
        .json(&serde_json::json!({"prompts": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 16, "{generated}");
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["request_id"], generated.as_str(), "{b}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = s.log_text();
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "samserve::access")
        .collect();
    let line = |id: &str| {
        access
            .iter()
            .find(|v| v["span"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {log}"))
            .clone()
    };
    let a = line("client-chosen-42");
    assert_eq!(a["fields"]["route"], "/v1/models");
    assert_eq!(a["fields"]["status"], 200);
    assert_eq!(a["fields"]["method"], "GET");
    assert!(a["fields"]["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let b = line(&generated);
    assert_eq!(b["fields"]["route"], "/v1/images/{image_id}/segment");
    assert_eq!(b["fields"]["status"], 400);
}

#[tokio::test]
async fn a_client_at_its_cap_gets_429_while_another_is_served() {
    let dir = tempdir("cap");
    let file = keys_file(&dir, "alice:alice-key\nbob:bob-key\n");
    let mut cfg = common::config();
    cfg.exposure.api_keys_file = Some(file);
    cfg.exposure.max_requests_per_client = 1;
    let s = TestServer::start(cfg).await;
    // Alice's first request holds her only slot: its body arrives only when we say so.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let png = synthetic_png(64, 48, 9);
    let body = {
        let png = png.clone();
        futures::stream::once(async move {
            let _ = rx.await;
            Ok::<_, std::io::Error>(png)
        })
    };
    let held = tokio::spawn(
        s.client
            .post(s.url("/v1/images"))
            .header("content-type", "image/png")
            .header("x-api-key", "alice-key")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    // Until the server has admitted it, alice's second request may still get through; wait
    // for the 429 (the held request cannot finish before we release it).
    let started = Instant::now();
    let refused = loop {
        let r = s
            .client
            .get(s.url("/v1/models"))
            .header("x-api-key", "alice-key")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(30), "never capped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    let b: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error_code(&b), "too_many_requests");
    // Bob is served meanwhile.
    let r = s
        .client
        .post(s.url("/v1/images"))
        .header("content-type", "image/png")
        .header("x-api-key", "bob-key")
        .body(synthetic_png(64, 48, 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Releasing alice's body completes her request, and frees her slot.
    tx.send(()).unwrap();
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("x-api-key", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        s.metric("samserve_rejected_requests_total", "client_limit")
            .await
            >= 1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
