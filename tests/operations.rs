//! What an operator reads: the metrics (streamed requests timed to their last byte, build,
//! model and process metrics, buckets long enough for slow uploads) and the log (no colour
//! codes when it is not a terminal). All against the real binary or the real router.

mod common;

use std::time::Instant;

use common::child::ChildServer;
use futures::StreamExt;
use serde_json::json;

/// Metric lines of a scrape, as (name with labels, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (head, v) = l.rsplit_once(' ')?;
            Some((head.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn a_streamed_request_is_timed_to_its_last_byte() {
    let s = common::TestServer::default().await;
    let bytes =
        std::fs::read(common::repo().join("tests/fixtures/amg/images/scene_512x384.png")).unwrap();
    let id = s.upload(&bytes).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let route = "route=\"/v1/images/{image_id}/everything\"";
    let before = s
        .metric("samserve_http_request_duration_seconds_sum", route)
        .await;
    // A run of seconds: 16x16 points with one crop layer (5 crops, 4 of them encoded).
    let start = Instant::now();
    let r = s
        .client
        .post(s.url(&format!("/v1/images/{id}/everything")))
        .header("accept", "application/x-ndjson")
        .json(
            &json!({"points_per_side": 16, "crop_n_layers": 1, "output": "none",
                      "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let head = start.elapsed().as_secs_f64();
    let mut stream = r.bytes_stream();
    let mut last = Vec::new();
    while let Some(chunk) = stream.next().await {
        last = chunk.unwrap().to_vec();
    }
    let client = start.elapsed().as_secs_f64();
    assert!(
        String::from_utf8_lossy(&last).contains("summary"),
        "the stream ends with its summary"
    );
    // The body's end is recorded when the server drops the body, right after the last
    // frame: allow the scrape a moment.
    let mut server = 0.0;
    for _ in 0..50 {
        server = s
            .metric("samserve_http_request_duration_seconds_sum", route)
            .await
            - before;
        if server > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eprintln!("client {client:.3} s (head after {head:.3} s), histogram {server:.3} s");
    assert!(
        client > 5.0 * head,
        "the run must stream well past its head for this test to mean anything"
    );
    assert!(
        (server - client).abs() <= 0.10 * client,
        "histogram {server:.3} s vs client {client:.3} s"
    );
    // In flight until the last byte, then not.
    assert_eq!(s.metric("samserve_in_flight_requests", "").await, 1.0);
}

#[tokio::test]
async fn build_model_and_process_metrics_are_scraped() {
    let s = ChildServer::start(&[], &[]).await;
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let all = samples(&text);
    let get = |prefix: &str| -> Vec<&(String, f64)> {
        all.iter().filter(|(n, _)| n.starts_with(prefix)).collect()
    };
    let build = get("samserve_build_info{");
    assert_eq!(build.len(), 1, "{build:?}");
    assert!(
        build[0]
            .0
            .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build:?}"
    );
    assert_eq!(build[0].1, 1.0);
    let model = get("samserve_model_info{");
    assert_eq!(model.len(), 1, "{model:?}");
    for label in [
        "model=\"sam-tiny\"",
        "family=\"sam\"",
        "precision=\"fp32\"",
        "default=\"true\"",
    ] {
        assert!(model[0].0.contains(label), "{label} in {model:?}");
    }
    // The process collector: the child's own RSS, CPU and descriptors.
    let value = |name: &str| -> f64 {
        all.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not scraped"))
            .1
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let rss = value("process_resident_memory_bytes");
    assert!(
        (rss - rss_kb * 1024.0).abs() < 0.5 * rss_kb * 1024.0,
        "process_resident_memory_bytes {rss} vs /proc VmRSS {rss_kb} kB"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .unwrap()
        .count() as f64;
    let open = value("process_open_fds");
    assert!(open >= 3.0 && (open - fds).abs() <= 8.0, "{open} vs {fds}");
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_start_time_seconds") > 1.6e9);
    // Latency buckets reach minutes (a ViT-L upload on a CPU takes about 90 s).
    let r = s
        .client
        .get(s.url("/healthz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(r, 200);
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for le in ["le=\"30\"", "le=\"120\"", "le=\"600\""] {
        assert!(
            text.lines().any(
                |l| l.starts_with("samserve_http_request_duration_seconds_bucket")
                    && l.contains("route=\"/healthz\"")
                    && l.contains(le)
            ),
            "no {le} bucket"
        );
    }
}

#[tokio::test]
async fn the_log_has_no_colour_codes_when_it_is_not_a_terminal() {
    // stdout and stderr are pipes here, as with a log file or a collector.
    let s = ChildServer::start(&["--log-format", "text"], &[]).await;
    let _ = s.client.get(s.url("/healthz")).send().await.unwrap();
    let _ = s.client.get(s.url("/v1/images/nope")).send().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = s.log_text();
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains("samserve::access"), "access lines logged");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a piped log:\n{}",
        &log[..log.len().min(2000)]
    );
}
