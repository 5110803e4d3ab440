//! One regression test per finding of the second outside probe (main a5fb3e0) that is not
//! about memory (`tests/memory.rs`) or the shared store (`tests/cluster.rs`): an empty API
//! key, metric label values chosen by clients, one address holding every connection slot,
//! CORS answers to refused origins and `*` beside origins, and what the served OpenAPI
//! document says about keys and query parameters. Real servers on loopback ports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::{synthetic_png, TestServer};

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("samserve-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary with `args` and expects it to exit with an error before serving; returns
/// its output.
fn refuses_to_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_samserve"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("samserve {args:?} started instead of refusing the configuration");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!status.success(), "{out}");
    out
}

#[tokio::test]
async fn empty_or_repeated_api_keys_are_refused_at_start_and_on_reload() {
    let dir = tempdir("emptykeys");
    let file = dir.join("keys.txt");
    let path = file.to_str().unwrap().to_string();
    for (text, why) in [
        ("alice:\n", "empty"),
        ("alice:   \n", "empty"),
        ("bob:bob-key-0123456789\nalice:\n", "empty"),
        ("alice:key-0123456789\nalice:key-9876543210\n", "twice"),
        ("alice:key-0123456789\nbob:key-0123456789\n", "same key"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = refuses_to_start(&["--api-keys-file", &path]);
        assert!(out.contains(why), "{text:?}: {out}");
        assert!(
            !out.contains("key-0123456789"),
            "a key reached the output: {out}"
        );
    }

    // A good file, then a bad one on SIGHUP: the old keys stay, and an empty presented key
    // is no key (401) however it is sent.
    let bob = "bob-key-0123456789";
    std::fs::write(&file, format!("bob:{bob}\n")).unwrap();
    let s = ChildServer::start(&["--api-keys-file", &path], &[]).await;
    std::fs::write(&file, format!("bob:{bob}\nalice:\n")).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    while !s.log_text().contains("API keys not reloaded") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = s.base.trim_start_matches("http://").to_string();
    let raw_statuses = tokio::task::spawn_blocking(move || {
        // Raw requests: an empty X-API-Key header and an empty bearer token.
        [
            "X-API-Key:\r\n",
            "X-API-Key:   \r\n",
            "Authorization: Bearer \r\n",
        ]
        .iter()
        .map(|h| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                c,
                "GET /v1/models HTTP/1.1\r\nHost: x\r\n{h}Connection: close\r\n\r\n"
            )
            .unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).unwrap();
            answer.lines().next().unwrap_or_default().to_string()
        })
        .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for line in &raw_statuses {
        assert!(line.starts_with("HTTP/1.1 401"), "{raw_statuses:?}");
    }
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("x-api-key", bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every series of /metrics: (name, labels).
async fn series(s: &TestServer) -> BTreeSet<(String, BTreeMap<String, String>)> {
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let head = l.rsplit_once(' ').map(|(h, _)| h).unwrap_or(l);
            let (name, labels) = head.split_once('{').unwrap_or((head, "}"));
            let labels = labels
                .trim_end_matches('}')
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            (name.to_string(), labels)
        })
        .collect()
}

/// Requests whose every client-chosen part (method, path, model, query, headers) is new
/// each time, over every route; statuses are the same for every `tag`.
async fn junk_burst(s: &TestServer, tag: &str, id: &str) {
    let c = &s.client;
    for i in 0..40 {
        let t = format!("{tag}{i}");
        let method =
            reqwest::Method::from_bytes(format!("X{}", t.to_uppercase()).as_bytes()).unwrap();
        for path in [
            "/healthz".to_string(),
            format!("/v1/images/{id}"),
            format!("/nope/{t}"),
        ] {
            let r = c
                .request(method.clone(), s.url(&path))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_client_error(), "{path}: {}", r.status());
        }
        let _ = c
            .get(s.url(&format!("/v1/models/{t}/decoder.onnx")))
            .header("x-request-id", &t)
            .send()
            .await
            .unwrap();
        let _ = c
            .get(s.url(&format!("/v1/images/{id}?model={t}")))
            .send()
            .await
            .unwrap();
        let _ = c
            .get(s.url(&format!("/v1/images/{id}?{t}=1")))
            .send()
            .await
            .unwrap();
        let _ = c
            .post(s.url(&format!("/v1/images?model={t}")))
            .header("content-type", format!("image/{t}"))
            .body(vec![1, 2, 3])
            .send()
            .await
            .unwrap();
        let _ = c
            .post(s.url(&format!("/v1/images/{id}/segment?model={t}")))
            .json(&serde_json::json!({"prompts": [{"points": [{"x": 1, "y": 1, "label": 1}]}]}))
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn client_chosen_methods_paths_and_names_add_no_metric_series() {
    let s = TestServer::default().await;
    let id = s.upload(&synthetic_png(64, 48, 5)).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let _ = series(&s).await; // the scrape's own series
    junk_burst(&s, "first", &id).await;
    let after_first = series(&s).await;
    junk_burst(&s, "second", &id).await;
    let after_second = series(&s).await;
    let new: Vec<_> = after_second.difference(&after_first).collect();
    assert!(
        new.is_empty(),
        "a second burst of new client-chosen values added series: {new:?}"
    );
    // Unknown methods are one label value; no client-chosen token reached any label.
    let methods: BTreeSet<&str> = after_second
        .iter()
        .filter_map(|(_, l)| l.get("method").map(String::as_str))
        .collect();
    assert!(methods.contains("other"), "{methods:?}");
    for (name, labels) in &after_second {
        for v in labels.values() {
            assert!(
                !v.contains("first") && !v.contains("FIRST") && !v.contains("second"),
                "{name} {labels:?}"
            );
        }
    }
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection_slot() {
    let mut cfg = common::config();
    cfg.exposure.max_connections = 40;
    cfg.exposure.max_connections_per_address = 10;
    // No header timeout: held connections stay open for as long as the client wants.
    cfg.exposure.header_timeout_ms = 0;
    let s = TestServer::start(cfg).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    // One client (127.0.0.1) opens 40 keep-alive connections, one request each, and keeps
    // them all open.
    let (held, statuses) = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..40 {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            statuses.push(head.lines().next().unwrap_or("closed").to_string());
            held.push((c, head));
        }
        (held, statuses)
    })
    .await
    .unwrap();
    let served = statuses.iter().filter(|l| l.contains(" 200")).count();
    let refused: Vec<&(std::net::TcpStream, String)> =
        held.iter().filter(|(_, h)| h.contains(" 429")).collect();
    assert_eq!(served, 10, "{statuses:?}");
    assert_eq!(refused.len(), 30, "{statuses:?}");
    let (_, answer) = refused[0];
    assert!(answer.contains("too_many_requests"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Another client (127.0.0.2, also loopback) is served at once, while the first one's
    // ten connections stay open.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = other.get(s.url("/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let refusals = common::metric_at(
        &other,
        &s.base,
        "samserve_rejected_requests_total",
        "reason=\"connection_limit\"",
    )
    .await;
    assert_eq!(refusals, 30.0);
    // Closing the first client's connections frees its slots.
    drop(held);
    let started = Instant::now();
    loop {
        let r = s.client.get(s.url("/healthz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cors_refuses_wildcard_beside_origins_and_tells_refused_origins_nothing() {
    let out = refuses_to_start(&[
        "--cors-allow-origin",
        "https://app.example",
        "--cors-allow-origin",
        "*",
    ]);
    assert!(out.contains("alone"), "{out}");

    let mut cfg = common::config();
    cfg.exposure.cors_allow_origins = vec!["https://app.example".into()];
    let s = TestServer::start(cfg).await;
    let cors_headers = |r: &reqwest::Response| -> Vec<String> {
        r.headers()
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|k| k.starts_with("access-control-"))
            .collect()
    };
    // The allowed origin gets the whole answer.
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("/v1/images"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    let allowed = cors_headers(&r);
    assert!(
        allowed.contains(&"access-control-allow-methods".to_string()),
        "{allowed:?}"
    );
    // A refused origin gets no CORS header at all, preflight or not.
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("/v1/images"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    // And without any --cors-allow-origin, none either.
    let s = TestServer::default().await;
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("/v1/images"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(cors_headers(&r), Vec::<String>::new());
}

#[tokio::test]
async fn the_served_document_says_when_keys_are_required() {
    let requirements = |doc: &serde_json::Value, path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no security"))
            .iter()
            .map(|r| r.to_string())
            .collect()
    };
    // Keys off: a key is optional ({} is listed).
    let open = TestServer::default().await;
    let doc = open.get_json("/openapi.json").await;
    assert!(requirements(&doc, "/v1/images", "post").contains(&"{}".to_string()));
    // Keys on: every guarded operation requires one; /metrics stays open unless
    // --metrics-require-key.
    let dir = tempdir("docs-keys");
    let file = dir.join("keys.txt");
    std::fs::write(&file, "alice:alice-key-0123456789\n").unwrap();
    let mut cfg = common::config();
    cfg.exposure.api_keys_file = Some(file.clone());
    let s = TestServer::start(cfg.clone()).await;
    let doc = s.get_json("/openapi.json").await;
    for (path, method) in [
        ("/v1/images", "post"),
        ("/v1/images/{image_id}", "get"),
        ("/v1/images/{image_id}/segment", "post"),
        ("/v1/models", "get"),
    ] {
        let reqs = requirements(&doc, path, method);
        assert!(
            !reqs.contains(&"{}".to_string()),
            "{method} {path}: {reqs:?}"
        );
        assert_eq!(reqs.len(), 2, "{method} {path}: {reqs:?}");
    }
    assert!(requirements(&doc, "/metrics", "get").contains(&"{}".to_string()));
    cfg.exposure.metrics_require_key = true;
    let s = TestServer::start(cfg).await;
    let doc = s.get_json("/openapi.json").await;
    assert!(!requirements(&doc, "/metrics", "get").contains(&"{}".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unknown_query_parameters_are_400_and_the_aspect_limit_is_documented() {
    let s = TestServer::default().await;
    let id = s.upload(&synthetic_png(64, 48, 6)).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (method, path) in [
        (
            reqwest::Method::GET,
            format!("/v1/images/{id}?modle=sam-tiny"),
        ),
        (reqwest::Method::HEAD, format!("/v1/images/{id}?x=1")),
        (
            reqwest::Method::GET,
            format!("/v1/images/{id}/embedding?dtpye=float16"),
        ),
        (reqwest::Method::DELETE, format!("/v1/images/{id}?x=1")),
    ] {
        let r = s
            .client
            .request(method.clone(), s.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{method} {path}");
        if method != reqwest::Method::HEAD {
            let b: serde_json::Value = r.json().await.unwrap();
            assert_eq!(b["error"]["code"], "bad_request", "{b}");
        }
    }
    // The image is still there (the refused DELETE did nothing), and known parameters work.
    for path in [
        format!("/v1/images/{id}?model=sam-tiny"),
        format!("/v1/images/{id}/embedding?dtype=float16"),
    ] {
        let r = s.client.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let doc = s.get_json("/openapi.json").await;
    for (path, method) in [
        ("/v1/images", "post"),
        ("/v1/images/{image_id}", "put"),
        ("/v1/segment", "post"),
        ("/v1/everything", "post"),
    ] {
        let what = doc["paths"][path][method]["responses"]["413"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(what.contains("aspect ratio"), "{method} {path}: {what}");
    }
}
