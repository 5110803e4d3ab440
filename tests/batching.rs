//! The decoder pool: batching must not change answers, admission control answers 429 under
//! overload, deadlines answer 504, and GPU routing falls back or refuses clearly.

mod common;

use common::{synthetic_png, TestServer};
use serde_json::json;

fn masks_of(v: &serde_json::Value, prompt: usize) -> Vec<serde_json::Value> {
    v["results"][prompt]["masks"].as_array().unwrap().clone()
}

fn assert_same(a: &[serde_json::Value], b: &[serde_json::Value], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: mask count");
    for (x, y) in a.iter().zip(b) {
        let iou = common::rle_mask(x).iou(&common::rle_mask(y));
        let ds = (x["score"].as_f64().unwrap() - y["score"].as_f64().unwrap()).abs();
        assert!(
            iou >= 0.999 && ds < 1e-4,
            "{what}: IoU {iou}, score diff {ds}"
        );
    }
}

/// Uploads `png` to both servers, sends each the same box prompts in one request, and
/// asserts that every prompt gets the same masks and scores from both.
async fn assert_servers_agree_on_boxes(
    a: &TestServer,
    b: &TestServer,
    png: &[u8],
    boxes: &[[i64; 4]],
) {
    let prompts: Vec<_> = boxes.iter().map(|bx| json!({ "box": bx })).collect();
    let id = a.upload(png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    b.upload(png).await;
    let (_, ra) = a.segment(&id, &json!({ "prompts": prompts })).await;
    let (_, rb) = b.segment(&id, &json!({ "prompts": prompts })).await;
    for i in 0..boxes.len() {
        assert_same(&masks_of(&ra, i), &masks_of(&rb, i), &format!("box {i}"));
    }
}

#[tokio::test]
async fn batched_results_equal_single_calls() {
    let s = TestServer::default().await;
    let png = synthetic_png(400, 300, 11);
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Mixed prompt shapes in one request: boxes, clicks, box + clicks.
    let mut prompts = Vec::new();
    for i in 0..24 {
        let f = i as f64;
        prompts.push(match i % 3 {
            0 => json!({"box": [10.0 + f * 5.0, 20.0, 200.0 + f * 5.0, 250.0]}),
            1 => json!({"points": [{"x": 30.0 + f * 12.0, "y": 40.0 + f * 9.0, "label": 1}]}),
            _ => json!({"points": [{"x": 200, "y": 150, "label": 1}, {"x": f * 10.0, "y": 5, "label": 0}],
                        "box": [50, 50, 350, 280]}),
        });
    }
    let (st, batched) = s.segment(&id, &json!({"prompts": prompts})).await;
    assert_eq!(st, 200);
    // One request of 24 prompts ran as batches of more than one prompt.
    let batches = s
        .metric("samserve_batch_size_count", r#"queue="decoder""#)
        .await;
    let units = s
        .metric("samserve_batch_size_sum", r#"queue="decoder""#)
        .await;
    assert_eq!(units, 24.0);
    assert!(batches < 24.0, "{batches} batches for 24 prompts");
    for (i, p) in prompts.iter().enumerate() {
        let (st, single) = s.segment(&id, &json!({"prompts": [p]})).await;
        assert_eq!(st, 200);
        assert_same(
            &masks_of(&batched, i),
            &masks_of(&single, 0),
            &format!("prompt {i}"),
        );
    }

    // Concurrent single-click requests on one image share decoder calls and still give
    // each client its own answer.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = s.client.clone();
        let url = s.url(&format!("/v1/images/{id}/segment"));
        let body = json!({"prompts": [{"points": [{"x": 20 + i * 20, "y": 150, "label": 1}]}]});
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            (body, r.json::<serde_json::Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (body, concurrent) = t.await.unwrap();
        let (_, single) = s.segment(&id, &body).await;
        assert_same(
            &masks_of(&concurrent, 0),
            &masks_of(&single, 0),
            "concurrent click",
        );
    }
}

#[tokio::test]
async fn unbatched_server_gives_the_same_answers() {
    let mut cfg = common::config();
    cfg.max_batch_prompts = 1;
    let one = TestServer::start(cfg).await;
    let many = TestServer::default().await;
    let boxes: Vec<_> = (0..10).map(|i| [i * 10, 10, 150 + i * 10, 200]).collect();
    assert_servers_agree_on_boxes(&one, &many, &synthetic_png(300, 220, 12), &boxes).await;
    assert_eq!(
        one.metric("samserve_batch_size_count", r#"queue="decoder""#)
            .await,
        10.0,
        "--max-batch-prompts 1 runs one prompt per call"
    );
}

#[tokio::test]
async fn overload_is_429_then_recovers() {
    let mut cfg = common::config();
    cfg.max_queued_prompts = 8;
    let s = TestServer::start(cfg).await;
    // A large image makes each decoder call slow enough for a queue to build up.
    let png = synthetic_png(1600, 1200, 13);
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let boxes: Vec<_> = (0..8)
        .map(|i| json!({"box": [i * 50, 100, 800 + i * 50, 1100]}))
        .collect();
    let body = json!({"prompts": boxes, "output": "none"});
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let client = s.client.clone();
        let url = s.url(&format!("/v1/images/{id}/segment"));
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").is_some();
            let b: serde_json::Value = r.json().await.unwrap();
            (status, retry, b)
        }));
    }
    let (mut ok, mut rejected) = (0, 0);
    for t in tasks {
        let (status, retry, b) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                rejected += 1;
                assert!(retry, "429 carries Retry-After");
                assert_eq!(b["error"]["code"], "overloaded");
            }
            other => panic!("unexpected status {other}: {b}"),
        }
    }
    assert!(ok >= 1, "some requests are served");
    assert!(rejected >= 1, "a full queue answers 429 ({ok} served)");
    assert!(
        s.metric("samserve_rejected_requests_total", "decoder_queue_full")
            .await
            >= 1.0
    );
    // Load gone: the next request is served.
    let (st, _) = s.segment(&id, &body).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn deadline_is_504_and_the_server_stays_healthy() {
    let mut cfg = common::config();
    cfg.request_timeout_ms = 1;
    let s = TestServer::start(cfg).await;
    let r = s
        .client
        .post(s.url("/v1/images"))
        .body(synthetic_png(1200, 900, 14))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "timeout");
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

#[test]
fn gpu_requests_fall_back_or_refuse() {
    use std::sync::Arc;
    let mut cfg = common::config();
    cfg.encoder_device = "cuda:0".into();
    // The PyPI CPU build of ONNX Runtime has no CUDA provider: fall back to CPU...
    let engine =
        samserve::core::engine::Engine::start(&cfg, Arc::new(samserve::metrics::Metrics::new()));
    if let Ok(engine) = engine {
        let m = engine.models().next().unwrap();
        if m.spec.encoder_device == "cpu" {
            // ...or refuse when a GPU is required.
            cfg.require_gpu = true;
            let err = samserve::core::engine::Engine::start(
                &cfg,
                Arc::new(samserve::metrics::Metrics::new()),
            )
            .err()
            .expect("--require-gpu refuses to start without a GPU");
            assert!(format!("{err:#}").contains("require-gpu"), "{err:#}");
        }
    } else {
        panic!(
            "without --require-gpu the server falls back to CPU: {:#}",
            engine.err().unwrap()
        );
    }
    cfg.encoder_device = "tpu".into();
    assert!(samserve::core::engine::Engine::start(
        &cfg,
        Arc::new(samserve::metrics::Metrics::new())
    )
    .is_err());
}

#[test]
fn gpu_decoder_requests_fall_back_or_refuse() {
    use std::sync::Arc;
    let start = |cfg: &samserve::config::Config| {
        samserve::core::engine::Engine::start(cfg, Arc::new(samserve::metrics::Metrics::new()))
    };
    let mut cfg = common::config();
    cfg.decoder_device = "cuda:0".into();
    cfg.decoder_workers = 2;
    let engine = start(&cfg).expect("without --require-gpu the decoder falls back to CPU");
    let m = engine.models().next().unwrap();
    assert_eq!(m.spec.encoder_device, "cpu");
    if m.spec.decoder_device == "cpu" {
        cfg.require_gpu = true;
        let err = start(&cfg)
            .err()
            .expect("--require-gpu refuses to start without a GPU decoder");
        let msg = format!("{err:#}");
        assert!(msg.contains("--decoder-device"), "{msg}");
    } else {
        assert!(
            m.spec.decoder_device.starts_with("cuda"),
            "{}",
            m.spec.decoder_device
        );
    }
    cfg.decoder_device = "npu".into();
    assert!(start(&cfg).is_err());
}

#[tokio::test]
async fn large_requests_are_spread_over_decoder_workers() {
    let mut cfg = common::config();
    cfg.decoder_workers = 2;
    cfg.max_batch_prompts = 4;
    let spread = TestServer::start(cfg).await;
    let mut cfg = common::config();
    cfg.decoder_workers = 1;
    let single = TestServer::start(cfg).await;
    let boxes: Vec<_> = (0..10).map(|i| [i * 12, 8, 140 + i * 12, 200]).collect();
    assert_servers_agree_on_boxes(&spread, &single, &synthetic_png(320, 240, 14), &boxes).await;
    // Ten prompts queued as jobs of at most four (one queue-wait sample per job); the
    // single-worker server queues the request as one job.
    let wait_samples = r#"queue="decoder""#;
    assert_eq!(
        spread
            .metric("samserve_queue_wait_seconds_count", wait_samples)
            .await,
        3.0
    );
    assert_eq!(
        single
            .metric("samserve_queue_wait_seconds_count", wait_samples)
            .await,
        1.0
    );
    assert_eq!(
        spread
            .metric("samserve_decoder_prompts_total", r#"model="sam-tiny""#)
            .await,
        10.0
    );
}

/// Work-conserving decoder: a batch that runs alone (no other worker busy, nothing queued)
/// takes the wide session on every core; batches that run beside queued work stay on their
/// single-thread sessions. Both lanes answer the same.
#[tokio::test]
async fn lone_batches_take_the_wide_lane_and_loaded_ones_the_narrow() {
    let mut cfg = common::config();
    cfg.decoder_workers = 2;
    cfg.decoder_threads = 1;
    cfg.decoder_lone_threads = 2;
    cfg.max_batch_prompts = 4;
    let s = TestServer::start(cfg).await;
    let mut cfg = common::config();
    cfg.decoder_workers = 2;
    cfg.decoder_lone_threads = 1; // no wide sessions
    let narrow_only = TestServer::start(cfg).await;
    let png = synthetic_png(320, 240, 21);
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    narrow_only.upload(&png).await;
    let lane = |lane: &'static str| format!(r#"lane="{lane}",model="sam-tiny""#);

    let click = json!({"prompts": [{"points": [{"x": 120, "y": 90, "label": 1}]}]});
    let (_, wide) = s.segment(&id, &click).await;
    assert_eq!(
        s.metric("samserve_decoder_batches_total", &lane("wide"))
            .await,
        1.0
    );
    assert_eq!(
        s.metric("samserve_decoder_batches_total", &lane("narrow"))
            .await,
        0.0
    );
    let (_, narrow) = narrow_only.segment(&id, &click).await;
    assert_eq!(
        narrow_only
            .metric("samserve_decoder_batches_total", &lane("wide"))
            .await,
        0.0
    );
    assert_same(
        &masks_of(&wide, 0),
        &masks_of(&narrow, 0),
        "lone click, wide vs narrow",
    );

    // Twelve boxes in one request: three jobs of four admitted together. The worker that
    // takes the first still sees eight prompts queued, so it runs narrow.
    let boxes: Vec<_> = (0..12).map(|i| [i * 10, 8, 140 + i * 10, 200]).collect();
    assert_servers_agree_on_boxes(&s, &narrow_only, &png, &boxes).await;
    assert!(
        s.metric("samserve_decoder_batches_total", &lane("narrow"))
            .await
            >= 1.0
    );
}
