//! Regression tests for what generated-input testing (`make fuzz-api`, schemathesis) found:
//! each request below once got an answer the OpenAPI document did not promise.

mod common;

use base64::Engine as _;
use common::{synthetic_png, TestServer};
use serde_json::json;

fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<missing>")
}

async fn post_json(
    s: &TestServer,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = s.client.post(s.url(path)).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// `points_per_side: 156` (24,336 points) once ran past the 120 s deadline into a 504; a
/// grid over the caps is now refused before any work with a 413 naming the flag.
#[tokio::test]
async fn segment_everything_over_the_work_caps_is_413_before_any_work() {
    let mut cfg = common::config();
    cfg.everything_max_points = 64;
    cfg.everything_max_crops = 5;
    let s = TestServer::start(cfg).await;
    let img = s.upload(&synthetic_png(64, 48, 3)).await;
    let id = img["image_id"].as_str().unwrap();
    let path = format!("/v1/images/{id}/everything");

    for (body, flag) in [
        // 9² = 81 points > 64.
        (json!({"points_per_side": 9}), "--everything-max-points"),
        // The default grid (32² = 1,024 points).
        (json!({}), "--everything-max-points"),
        (json!({"points_per_side": 156}), "--everything-max-points"),
        // 4² + 4 x 4² = 80 points over two layers.
        (
            json!({"points_per_side": 4, "crop_n_layers": 1}),
            "--everything-max-points",
        ),
        // 1 + 4 + 16 = 21 crops > 5 (1 point per crop: 21 points).
        (
            json!({"points_per_side": 1, "crop_n_layers": 2}),
            "--everything-max-crops",
        ),
        // An explicit grid counts the same way: 65 points.
        (
            json!({"point_grids": [vec![[0.5, 0.5]; 65]]}),
            "--everything-max-points",
        ),
    ] {
        let (status, out) = post_json(&s, &path, &body).await;
        assert_eq!(status, 413, "{body}: {out}");
        assert_eq!(error_code(&out), "payload_too_large", "{body}");
        let msg = out["error"]["message"].as_str().unwrap();
        assert!(msg.contains(flag), "{body}: {msg}");
    }
    assert_eq!(s.metric("samserve_everything_points_total", "").await, 0.0);

    // At the caps: 8² = 64 points, and 1 + 4 crops of one point each.
    for body in [
        json!({"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}),
        json!({"points_per_side": 1, "crop_n_layers": 1}),
    ] {
        let (status, out) = post_json(&s, &path, &body).await;
        assert_eq!(status, 200, "{body}: {out}");
    }
    assert_eq!(
        s.metric("samserve_everything_points_total", "").await,
        64.0 + 5.0
    );

    // The one-shot form refuses before it encodes the upload.
    let runs = s.metric("samserve_encoder_runs_total", "").await;
    let fresh = synthetic_png(40, 30, 4);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&fresh);
    let (status, out) = post_json(
        &s,
        "/v1/everything",
        &json!({"image": b64, "points_per_side": 100}),
    )
    .await;
    assert_eq!(status, 413, "{out}");
    assert_eq!(s.metric("samserve_encoder_runs_total", "").await, runs);
}

/// The default caps admit both presets (1,024 and 3,072 points) and refuse the next size up.
#[tokio::test]
async fn default_work_caps_admit_the_presets() {
    let s = TestServer::default().await;
    let img = s.upload(&synthetic_png(32, 24, 5)).await;
    let id = img["image_id"].as_str().unwrap();
    let path = format!("/v1/images/{id}/everything");
    // 65² = 4,225 points > 4,096; three crop layers = 85 crops > 21.
    for body in [
        json!({"points_per_side": 65}),
        json!({"points_per_side": 2, "crop_n_layers": 3}),
    ] {
        let (status, out) = post_json(&s, &path, &body).await;
        assert_eq!(status, 413, "{body}: {out}");
    }
    // The sa1b preset's crop layers (21 crops) pass; a small grid keeps the test short
    // (the presets' full point counts are checked in core::amg::params' unit tests).
    let body = json!({"preset": "sa1b", "points_per_side": 4, "max_masks": 1});
    let (status, out) = post_json(&s, &path, &body).await;
    assert_eq!(status, 200, "{body}: {out}");
}

/// A point with an unknown key (a typo such as `lable`) was silently ignored; the schema
/// now says `additionalProperties: false` for points as for prompts, and the server agrees.
#[tokio::test]
async fn unknown_keys_in_a_point_are_400() {
    let s = TestServer::default().await;
    let img = s.upload(&synthetic_png(32, 24, 6)).await;
    let id = img["image_id"].as_str().unwrap();
    let (status, out) = s
        .segment(
            id,
            &json!({"prompts": [{"points": [{"x": 5, "y": 5, "lable": 0}]}]}),
        )
        .await;
    assert_eq!(status, 400, "{out}");
    assert!(
        out["error"]["message"].as_str().unwrap().contains("lable"),
        "{out}"
    );
    let (status, out) = s
        .segment(
            id,
            &json!({"prompts": [{"points": [{"x": 5, "y": 5, "label": 0}]}]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
}

/// The multipart one-shot forms take their `request` as a JSON part (what the document now
/// declares: an object-typed part, sent as application/json).
#[tokio::test]
async fn multipart_request_parts_are_json_documents() {
    let s = TestServer::default().await;
    let png = synthetic_png(32, 24, 7);
    for (path, request) in [
        ("/v1/segment", json!({"prompts": [{"box": [4, 4, 20, 16]}]})),
        (
            "/v1/everything",
            json!({"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}),
        ),
    ] {
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::bytes(png.clone())
                    .file_name("a.png")
                    .mime_str("image/png")
                    .unwrap(),
            )
            .part(
                "request",
                reqwest::multipart::Part::text(request.to_string())
                    .mime_str("application/json")
                    .unwrap(),
            );
        let r = s
            .client
            .post(s.url(path))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["image_id"], blake3::hash(&png).to_hex().as_str());
    }
}

/// JSON Schema counts `1.0` as an integer: a label or a grid size spelled so was refused
/// with 400; now it is the integer, while `1.5` and values past int64 stay 400.
#[tokio::test]
async fn integral_numbers_are_integers() {
    let s = TestServer::default().await;
    let img = s.upload(&synthetic_png(32, 24, 8)).await;
    let id = img["image_id"].as_str().unwrap();
    let (status, out) = s
        .segment(
            id,
            &json!({"prompts": [{"points": [{"x": 5, "y": 5, "label": 1.0}]}]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    for label in [json!(1.5), json!(18446744073709551615u64)] {
        let (status, out) = s
            .segment(
                id,
                &json!({"prompts": [{"points": [{"x": 5, "y": 5, "label": label}]}]}),
            )
            .await;
        assert_eq!(status, 400, "{label}: {out}");
        assert_eq!(error_code(&out), "bad_request");
    }
    let path = format!("/v1/images/{id}/everything");
    let (status, out) = post_json(
        &s,
        &path,
        &json!({"points_per_side": 2.0, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["summary"]["points"], 4, "{out}");
}

/// A malformed query string (a repeated `dtype`) was answered by axum's extractor in plain
/// text; every error is the JSON error body.
#[tokio::test]
async fn malformed_query_strings_get_the_json_error_body() {
    let s = TestServer::default().await;
    let img = s.upload(&synthetic_png(32, 24, 9)).await;
    let id = img["image_id"].as_str().unwrap();
    for path in [
        format!("/v1/images/{id}/embedding?dtype=float32&dtype=float16"),
        format!("/v1/images/{id}?model=a&model=b"),
    ] {
        let r = s.client.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(error_code(&body), "bad_request", "{path}: {body}");
    }
}

/// An empty multipart `request` part (what form encoders send for an empty field) was a
/// JSON parse error (400); it now counts as no request: for the one-shot segment call that
/// is no prompts (422, as `prompts: []`).
#[tokio::test]
async fn an_empty_request_part_is_no_request() {
    let s = TestServer::default().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(synthetic_png(32, 24, 10)).file_name("a.png"),
        )
        .text("request", "");
    let r = s
        .client
        .post(s.url("/v1/segment"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "invalid_prompt", "{body}");
}

/// The soak (`make soak`) found that a full cache refused new images: moka's default
/// admission policy keeps frequently used entries and rejects a new one, so an upload
/// answered 200 and the click right after it 404 (91 % of one-shot calls). The cache is
/// LRU now: each new image is admitted and the least recently used one leaves.
#[tokio::test]
async fn a_full_cache_admits_every_new_upload() {
    let mut cfg = common::config();
    // Room for about two embeddings of the default model (it measures ~1 MiB each).
    let probe = TestServer::default().await;
    probe.upload(&synthetic_png(64, 48, 100)).await;
    let one = probe.metric("samserve_cache_bytes", "").await as u64;
    assert!(one > 0);
    cfg.cache_bytes = one * 2 + one / 2;
    let s = TestServer::start(cfg).await;
    // Make the first two images "popular", then keep uploading new ones.
    let mut ids = Vec::new();
    for i in 0..12u32 {
        let img = s.upload(&synthetic_png(64, 48, 200 + i)).await;
        let id = img["image_id"].as_str().unwrap().to_string();
        let reps = if i < 2 { 5 } else { 1 };
        for _ in 0..reps {
            let (status, out) = s
                .segment(&id, &json!({"prompts": [{"points": [{"x": 10, "y": 10}]}]}))
                .await;
            assert_eq!(status, 200, "image {i} right after its upload: {out}");
        }
        ids.push(id);
    }
    assert!(s.metric("samserve_cache_bytes", "").await as u64 <= one * 2 + one / 2);
    // The oldest images left, the newest stayed.
    let (status, _) = s
        .segment(&ids[0], &json!({"prompts": [{"box": [1, 1, 9, 9]}]}))
        .await;
    assert_eq!(status, 404);
}
