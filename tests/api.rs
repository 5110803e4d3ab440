//! End-to-end tests of every endpoint and error code, against the real server on a
//! loopback port with the repository's default model.

mod common;

use common::{synthetic_png, TestServer};
use serde_json::json;

fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<missing>")
}

#[tokio::test]
async fn system_endpoints_answer() {
    let s = TestServer::default().await;
    for (path, ctype) in [
        ("/healthz", "application/json"),
        ("/readyz", "application/json"),
        ("/v1/models", "application/json"),
        ("/metrics", "text/plain"),
        ("/openapi.json", "application/json"),
        ("/docs", "text/html"),
    ] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(ctype), "{path}: {ct}");
    }
    let models = s.get_json("/v1/models").await;
    let m = &models["models"][0];
    assert_eq!(m["default"], true);
    assert!(m["embedding_shape"][1].as_u64().unwrap() > 0);
    let ready = s.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready");
    // Unknown route and wrong method get JSON errors too.
    let r = s.client.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "not_found");
    let r = s.client.get(s.url("/v1/segment")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn upload_is_content_addressed_and_cached() {
    let s = TestServer::default().await;
    let png = synthetic_png(333, 517, 1);
    let first = s.upload(&png).await;
    assert_eq!(first["image_id"], blake3::hash(&png).to_hex().as_str());
    assert_eq!(first["width"], 333);
    assert_eq!(first["height"], 517);
    assert_eq!(first["cached"], false);
    let second = s.upload(&png).await;
    assert_eq!(second["cached"], true);
    assert_eq!(s.metric("samserve_encoder_runs_total", "").await, 1.0);
    assert_eq!(s.metric("samserve_cache_hits_total", "").await, 1.0);
    assert_eq!(s.metric("samserve_cache_misses_total", "").await, 1.0);
    assert_eq!(s.metric("samserve_cache_entries", "").await, 1.0);
    assert!(s.metric("samserve_cache_bytes", "").await > 1000.0);
    assert!(
        s.metric(
            "samserve_http_requests_total",
            r#"route="/v1/images",status="200""#
        )
        .await
            >= 2.0
    );
    assert!(s.metric("samserve_image_decode_seconds_count", "png").await >= 1.0);
    assert!(s.metric("samserve_preprocess_seconds_count", "").await >= 1.0);
    assert!(s.metric("samserve_encoder_seconds_count", "").await >= 1.0);

    // GET and HEAD see it; DELETE removes it.
    let id = first["image_id"].as_str().unwrap();
    let r = s
        .client
        .head(s.url(&format!("/v1/images/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .get(s.url(&format!("/v1/images/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: serde_json::Value = r.json().await.unwrap();
    assert_eq!(got["width"], 333);
    let r = s
        .client
        .delete(s.url(&format!("/v1/images/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .client
        .head(s.url(&format!("/v1/images/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = s
        .client
        .delete(s.url(&format!("/v1/images/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "not_found");
}

#[tokio::test]
async fn racing_uploads_encode_once() {
    let s = TestServer::default().await;
    let png = synthetic_png(640, 480, 2);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = s.client.clone();
        let url = s.url("/v1/images");
        let body = png.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "image/png")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        if t.await.unwrap()["cached"] == false {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one upload ran the encoder");
    assert_eq!(s.metric("samserve_encoder_runs_total", "").await, 1.0);
}

#[tokio::test]
async fn put_checks_the_client_hash() {
    let s = TestServer::default().await;
    let png = synthetic_png(97, 211, 3);
    let id = blake3::hash(&png).to_hex().to_string();
    let r = s
        .client
        .put(s.url(&format!("/v1/images/{id}")))
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["image_id"], id.as_str());

    let wrong = blake3::hash(b"something else").to_hex().to_string();
    let r = s
        .client
        .put(s.url(&format!("/v1/images/{wrong}")))
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "hash_mismatch");

    let r = s
        .client
        .put(s.url("/v1/images/not-a-hash"))
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn multipart_and_base64_uploads() {
    let s = TestServer::default().await;
    let png = synthetic_png(120, 90, 4);
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(png.clone()).file_name("a.png"),
    );
    let r = s
        .client
        .post(s.url("/v1/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["image_id"], blake3::hash(&png).to_hex().as_str());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let r = s
        .client
        .post(s.url("/v1/images"))
        .json(&json!({ "image": b64 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["cached"], true);
}

/// A small PNG whose header announces `w x h`: valid IHDR, a short IDAT, IEND. Decoding
/// it would need w*h*3 bytes.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (&b"IHDR"[..], ihdr),
        (&b"IDAT"[..], vec![0x78, 0x9c, 0x63, 0x00, 0x00]),
        (&b"IEND"[..], Vec::new()),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&data);
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn bad_images_get_precise_errors() {
    let mut cfg = common::config();
    cfg.max_body_bytes = 2 * 1024 * 1024;
    let s = TestServer::start(cfg).await;
    let post = |body: Vec<u8>, ctype: &'static str| {
        let c = s.client.clone();
        let url = s.url("/v1/images");
        async move {
            let r = c
                .post(url)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body)
        }
    };
    // Unrecognizable bytes.
    let (st, b) = post(
        b"hello, I am not an image".to_vec(),
        "application/octet-stream",
    )
    .await;
    assert_eq!((st, error_code(&b)), (415, "unsupported_media_type"));
    // Wrong content type.
    let (st, b) = post(synthetic_png(10, 10, 0), "text/plain").await;
    assert_eq!((st, error_code(&b)), (415, "unsupported_media_type"));
    // Empty body.
    let (st, b) = post(Vec::new(), "image/png").await;
    assert_eq!((st, error_code(&b)), (400, "invalid_image"));
    // Truncated PNG.
    let png = synthetic_png(200, 150, 5);
    let (st, b) = post(png[..png.len() / 2].to_vec(), "image/png").await;
    assert_eq!((st, error_code(&b)), (400, "invalid_image"), "{b}");
    // Corrupt data after a valid signature.
    let mut corrupt = png.clone();
    for byte in corrupt.iter_mut().skip(40) {
        *byte = byte.wrapping_mul(31).wrapping_add(7);
    }
    let (st, b) = post(corrupt, "image/png").await;
    assert_eq!((st, error_code(&b)), (400, "invalid_image"), "{b}");
    // Corrupt JPEG: a JPEG signature followed by junk.
    let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0];
    jpeg.extend((0..500u32).map(|i| (i * 37 % 251) as u8));
    let (st, b) = post(jpeg, "image/jpeg").await;
    assert_eq!((st, error_code(&b)), (400, "invalid_image"), "{b}");
    // 100-megapixel header: refused from the header, before any decoding.
    let (st, b) = post(png_header_only(10_000, 10_000), "image/png").await;
    assert_eq!((st, error_code(&b)), (413, "payload_too_large"), "{b}");
    // Body over the byte limit.
    let (st, b) = post(vec![0u8; 3 * 1024 * 1024], "image/png").await;
    assert_eq!((st, error_code(&b)), (413, "payload_too_large"), "{b}");
    // Malformed JSON and base64.
    let (st, b) = post(b"{not json".to_vec(), "application/json").await;
    assert_eq!((st, error_code(&b)), (400, "bad_request"));
    let (st, b) = post(br#"{"image": "@@@"}"#.to_vec(), "application/json").await;
    assert_eq!((st, error_code(&b)), (400, "bad_request"));
    // The server is still healthy after all of that.
    let id = s.upload(&synthetic_png(64, 48, 6)).await;
    assert_eq!(id["width"], 64);
    assert_eq!(s.metric("samserve_encoder_runs_total", "").await, 1.0);
}

#[tokio::test]
async fn invalid_prompts_are_422() {
    let s = TestServer::default().await;
    let up = s.upload(&synthetic_png(300, 200, 7)).await;
    let id = up["image_id"].as_str().unwrap();
    let cases = [
        ("no prompts", json!({"prompts": []})),
        ("empty prompt", json!({"prompts": [{}]})),
        (
            "x out of range",
            json!({"prompts": [{"points": [{"x": 301, "y": 10, "label": 1}]}]}),
        ),
        (
            "negative y",
            json!({"prompts": [{"points": [{"x": 3, "y": -0.5, "label": 1}]}]}),
        ),
        (
            "bad label",
            json!({"prompts": [{"points": [{"x": 3, "y": 5, "label": 7}]}]}),
        ),
        (
            "inverted box",
            json!({"prompts": [{"box": [100, 100, 50, 150]}]}),
        ),
        (
            "box out of range",
            json!({"prompts": [{"box": [0, 0, 500, 150]}]}),
        ),
        (
            "unknown mask handle",
            json!({"prompts": [{"points": [{"x": 3, "y": 5}], "mask_input": "lr_0000"}]}),
        ),
        (
            "too many points",
            json!({"prompts": [{"points": vec![json!({"x": 1, "y": 1}); 65]}]}),
        ),
        (
            "too many prompts",
            json!({"prompts": vec![json!({"points": [{"x": 1, "y": 1}]}); 257]}),
        ),
    ];
    for (what, body) in cases {
        let (st, b) = s.segment(id, &body).await;
        assert_eq!((st, error_code(&b)), (422, "invalid_prompt"), "{what}: {b}");
    }
    // NaN as emitted by Python's json module.
    let r = s
        .client
        .post(s.url(&format!("/v1/images/{id}/segment")))
        .header("content-type", "application/json")
        .body(r#"{"prompts": [{"points": [{"x": NaN, "y": 3, "label": 1}]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let b: serde_json::Value = r.json().await.unwrap();
    assert!(b["error"]["message"].as_str().unwrap().contains("NaN"));
    // Malformed bodies are 400.
    for body in [
        r#"{"prompts": "#,
        r#"{"prompts": [], "bogus": 1}"#,
        r#"[1,2]"#,
    ] {
        let r = s
            .client
            .post(s.url(&format!("/v1/images/{id}/segment")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    // Unknown image and unknown model are 404.
    let unknown = blake3::hash(b"never uploaded").to_hex().to_string();
    let (st, b) = s
        .segment(
            &unknown,
            &json!({"prompts": [{"points": [{"x": 1, "y": 1}]}]}),
        )
        .await;
    assert_eq!((st, error_code(&b)), (404, "not_found"));
    let r = s
        .client
        .post(s.url(&format!("/v1/images/{id}/segment?model=nope")))
        .json(&json!({"prompts": [{"points": [{"x": 1, "y": 1}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn segment_formats_agree_and_refinement_works() {
    let s = TestServer::default().await;
    let png = synthetic_png(320, 240, 8);
    let up = s.upload(&png).await;
    let id = up["image_id"].as_str().unwrap();
    let prompt = json!([{"points": [{"x": 160, "y": 120, "label": 1}]}]);

    let (st, rle) = s
        .segment(id, &json!({"prompts": prompt, "return_logits": true}))
        .await;
    assert_eq!(st, 200, "{rle}");
    let masks = rle["results"][0]["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 3, "a single click defaults to three masks");
    let scores: Vec<f64> = masks.iter().map(|m| m["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "sorted by score: {scores:?}"
    );
    for m in masks {
        let decoded = common::rle_mask(m);
        assert_eq!((decoded.width, decoded.height), (320, 240));
        assert_eq!(decoded.area(), m["area"].as_u64().unwrap());
        let bbox: Vec<u64> = m["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(decoded.bbox_xywh().map(|v| v as u64).to_vec(), bbox);
        assert!(m["logits_handle"].as_str().unwrap().starts_with("lr_"));
    }

    // PNG output decodes to the same pixels as the RLE.
    let (st, png_out) = s
        .segment(id, &json!({"prompts": prompt, "output": "png"}))
        .await;
    assert_eq!(st, 200);
    use base64::Engine as _;
    for (a, b) in masks
        .iter()
        .zip(png_out["results"][0]["masks"].as_array().unwrap())
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b["png"].as_str().unwrap())
            .unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_luma8();
        let want = common::rle_mask(a);
        assert_eq!(img.dimensions(), (320, 240));
        let same = img
            .enumerate_pixels()
            .all(|(x, y, p)| (p.0[0] > 127) == (want.get(x, y)));
        assert!(same, "png and rle masks differ");
        assert!(b.get("rle").is_none());
    }
    // Polygon and none outputs.
    let (st, poly) = s
        .segment(id, &json!({"prompts": prompt, "output": "polygon"}))
        .await;
    assert_eq!(st, 200);
    for m in poly["results"][0]["masks"].as_array().unwrap() {
        if m["area"].as_u64().unwrap() > 0 {
            assert!(!m["polygons"].as_array().unwrap().is_empty());
        }
    }
    let (st, none) = s
        .segment(id, &json!({"prompts": prompt, "output": "none"}))
        .await;
    assert_eq!(st, 200);
    let m0 = &none["results"][0]["masks"][0];
    assert!(m0.get("rle").is_none() && m0.get("png").is_none());
    assert_eq!(m0["area"], masks[0]["area"]);

    // multimask_output=false gives the single-mask token.
    let (_, single) = s
        .segment(id, &json!({"prompts": prompt, "multimask_output": false}))
        .await;
    let sm = single["results"][0]["masks"].as_array().unwrap();
    assert_eq!(sm.len(), 1);
    assert_eq!(sm[0]["token"], 0);

    // Refinement: feed the best mask's logits back with a second click.
    let handle = masks[0]["logits_handle"].as_str().unwrap();
    let (st, refined) = s
        .segment(
            id,
            &json!({"prompts": [{"points": [{"x": 160, "y": 120, "label": 1}, {"x": 20, "y": 20, "label": 0}],
                                 "mask_input": handle}]}),
        )
        .await;
    assert_eq!(st, 200, "{refined}");
    assert_eq!(refined["results"][0]["masks"].as_array().unwrap().len(), 1);

    // A handle is bound to its image.
    let other = s.upload(&synthetic_png(320, 240, 9)).await;
    let (st, b) = s
        .segment(
            other["image_id"].as_str().unwrap(),
            &json!({"prompts": [{"points": [{"x": 1, "y": 1}], "mask_input": handle}]}),
        )
        .await;
    assert_eq!((st, error_code(&b)), (422, "invalid_prompt"));

    // Many prompts in one request (detector boxes) come back index-aligned.
    let boxes: Vec<_> = (0..20)
        .map(|i| json!({"box": [i as f64 * 5.0, 10.0, 100.0 + i as f64 * 5.0, 200.0]}))
        .collect();
    let (st, many) = s.segment(id, &json!({"prompts": boxes})).await;
    assert_eq!(st, 200);
    assert_eq!(many["results"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn one_shot_matches_two_step() {
    let s = TestServer::default().await;
    let png = synthetic_png(256, 200, 10);
    let prompts =
        json!([{"points": [{"x": 128, "y": 100, "label": 1}], "box": [60, 40, 200, 170]}]);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let r = s
        .client
        .post(s.url("/v1/segment"))
        .json(&json!({"image": b64, "prompts": prompts}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inline: serde_json::Value = r.json().await.unwrap();
    assert_eq!(inline["cached"], false);

    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(png.clone()).file_name("x.png"),
        )
        .text("request", json!({"prompts": prompts}).to_string());
    let r = s
        .client
        .post(s.url("/v1/segment"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let multi: serde_json::Value = r.json().await.unwrap();
    assert_eq!(multi["cached"], true, "the one-shot form shares the cache");

    let id = inline["image_id"].as_str().unwrap();
    let (_, two_step) = s.segment(id, &json!({"prompts": prompts})).await;
    for other in [&multi, &two_step] {
        assert_eq!(
            inline["results"][0]["masks"][0]["rle"],
            other["results"][0]["masks"][0]["rle"]
        );
    }
    assert_eq!(s.metric("samserve_encoder_runs_total", "").await, 1.0);
    // A raw image body is not a valid one-shot request.
    let r = s
        .client
        .post(s.url("/v1/segment"))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn unknown_model_on_upload_is_404() {
    let s = TestServer::default().await;
    let r = s
        .client
        .post(s.url("/v1/images?model=does-not-exist"))
        .body(synthetic_png(10, 10, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn not_ready_is_503_until_the_engine_is_installed() {
    use std::sync::Arc;
    let metrics = Arc::new(samserve::metrics::Metrics::new());
    let state = samserve::http::AppState::loading(metrics.clone(), 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = samserve::http::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let get = |p: &str| client.get(format!("http://{addr}{p}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    let r = get("/v1/models").await.unwrap();
    assert_eq!(r.status(), 503);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&b), "not_ready");
    let r = client
        .post(format!("http://{addr}/v1/images"))
        .body(synthetic_png(8, 8, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    let cfg = common::config();
    let engine =
        tokio::task::spawn_blocking(move || samserve::core::engine::Engine::start(&cfg, metrics))
            .await
            .unwrap()
            .unwrap();
    state.set_engine(engine);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get("/v1/models").await.unwrap().status(), 200);
}
