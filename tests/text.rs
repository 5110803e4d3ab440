//! Text prompts: tokenizer, text-embedding and region-feature parity with the Python tools,
//! the API's errors, and phrases on held-out scenes through the real server.
//!
//! Fixtures come from the tools, not from this code: tests/fixtures/text/minilm.json
//! (tools/export_text.py: Python `tokenizers` ids and onnxruntime embeddings),
//! features.json (tools/train_text.py: tools/text_data.py features and region-tower
//! outputs), queries.json (tools/evaluate_text.py --write-fixtures: data_engine held-out
//! scenes and the ground-truth mask of the object each phrase names).

mod common;

use std::path::PathBuf;

use common::vectors::{cos, floats, ints};
use common::{rle_mask, TestServer};
use samserve::core::masks::rle::{decode, CocoRle};
use samserve::runtime::text::features::region_features;
use samserve::runtime::text::tokenize::PhraseTokenizer;
use samserve::runtime::text::{load_towers, TextFiles};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    common::repo().join("tests/fixtures/text")
}

fn read_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
}

fn text_files() -> TextFiles {
    TextFiles::from_dir(&common::repo().join("models/text-minilm")).expect("text model folder")
}

#[test]
fn token_ids_match_python_tokenizers() {
    let tok = PhraseTokenizer::from_bytes(&text_files().tokenizer).unwrap();
    let doc = read_json("minilm.json");
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut truncated = 0;
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = ints(&c["ids"]);
        let got = tok.ids(text).unwrap();
        assert_eq!(got, want, "token ids of {text:?}");
        if want.len() == doc["max_tokens"].as_u64().unwrap() as usize {
            truncated += 1;
        }
    }
    assert!(
        truncated >= 1,
        "the fixture list must hold a phrase past the maximum length"
    );
}

#[test]
fn text_embeddings_match_python_onnxruntime() {
    let env = samserve::runtime::ort_env::init(None).unwrap();
    let files = text_files();
    let tok = PhraseTokenizer::from_bytes(&files.tokenizer).unwrap();
    let (mut text, _) = load_towers(env, &files).unwrap();
    for c in read_json("minilm.json")["cases"].as_array().unwrap() {
        let s = c["text"].as_str().unwrap();
        let got = text.embed(&tok.ids(s).unwrap()).unwrap();
        let want = floats(&c["embedding"]);
        assert_eq!(got.len(), want.len());
        let c = cos(&got, &want);
        assert!(c >= 0.999, "cosine {c} for {s:?}");
    }
}

#[test]
fn region_features_and_tower_match_python() {
    let env = samserve::runtime::ort_env::init(None).unwrap();
    let (_, mut region) = load_towers(env, &text_files()).unwrap();
    let doc = read_json("features.json");
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for (i, c) in cases.iter().enumerate() {
        let img = image::open(fixtures().join(c["image"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let rle: CocoRle = serde_json::from_value(c["rle"].clone()).unwrap();
        let mask = decode(&rle).unwrap();
        let got = region_features(&img, &mask);
        let want = floats(&c["features"]);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let tol = 1e-4 * w.abs().max(1.0);
            assert!(
                (g - w).abs() <= tol,
                "case {i}: feature {k} ({}) is {g}, Python has {w}",
                doc["feature_names"][k]
            );
        }
        let e = region.embed(&[got]).unwrap().remove(0);
        let c = cos(&e, &floats(&c["embedding"]));
        assert!(c >= 0.999, "case {i}: region embedding cosine {c}");
    }
}

async fn post(s: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = s.client.post(s.url(path)).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn scene_png(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// Uploads a fixture scene of queries.json; returns its image id.
async fn upload_scene(s: &TestServer, scene: &Value) -> String {
    s.upload(&scene_png(scene["image"].as_str().unwrap())).await["image_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_prompt_errors_are_precise() {
    let s = TestServer::default().await;
    let q = read_json("queries.json");
    let scene = &q["scenes"][0];
    let id = upload_scene(&s, scene).await;
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();
    let seg = |p: Value| json!({ "prompts": [p] });
    for (body, want, needle) in [
        (seg(json!({"text": ""})), "invalid_prompt", "empty"),
        (seg(json!({"text": "   "})), "invalid_prompt", "empty"),
        (
            seg(json!({"text": "x".repeat(300)})),
            "invalid_prompt",
            "300 characters",
        ),
        (
            seg(json!({"text": "the red star", "points": [{"x": 5, "y": 5}]})),
            "invalid_prompt",
            "points",
        ),
        (
            seg(json!({"text": "the red star", "max_masks": 0})),
            "invalid_prompt",
            "max_masks",
        ),
        (
            seg(json!({"text": "the red star", "max_masks": 101})),
            "invalid_prompt",
            "max_masks",
        ),
        (
            seg(json!({"points": [{"x": 5, "y": 5}], "max_masks": 2})),
            "invalid_prompt",
            "text prompts only",
        ),
        (
            seg(json!({"text": "the red star", "box": [50, 50, 10, 10]})),
            "invalid_prompt",
            "inverted",
        ),
        (
            json!({"prompts": [{"text": "the red star"}], "return_logits": true}),
            "invalid_prompt",
            "return_logits",
        ),
    ] {
        let (status, v) = s.segment(&id, &body).await;
        assert_eq!(status, 422, "{body}: {v}");
        assert_eq!(code(&v), want, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    // Wrong type: the JSON layer's 400/422, never a crash.
    let (status, _) = s.segment(&id, &json!({"prompts": [{"text": 5}]})).await;
    assert!(status == 400 || status == 422);
    // Everything with text: same text checks.
    let (status, v) = post(
        &s,
        &format!("/v1/images/{id}/everything"),
        &json!({"text": ""}),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    let (status, v) = post(
        &s,
        &format!("/v1/images/{id}/everything"),
        &json!({"text_threshold": 0.2}),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    // The server still answers.
    let models = s.get_json("/v1/models").await;
    assert_eq!(models["models"][0]["text"]["kind"], "minilm-region");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_on_a_model_without_text_is_text_not_supported() {
    let mut config = common::config();
    config.models = vec![common::repo().join("tests/fixtures/models/sam-tiny-hwc")];
    let s = TestServer::start(config).await;
    let models = s.get_json("/v1/models").await;
    assert!(models["models"][0].get("text").is_none(), "{models}");
    let id = s.upload(&common::synthetic_png(64, 48, 1)).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, v) = s
        .segment(&id, &json!({"prompts": [{"text": "the red disc"}]}))
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "text_not_supported");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("none are loaded"),
        "{v}"
    );
    let (status, v) = post(
        &s,
        &format!("/v1/images/{id}/everything"),
        &json!({"text": "a star"}),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "text_not_supported");
}

/// Held-out scenes, one phrase per named object (training vocabulary): how many queries'
/// top mask overlaps the named object (IoU >= 0.5). Returns (hits, total, misses).
async fn heldout_query_hits(s: &TestServer) -> (usize, usize, Vec<String>) {
    let q = read_json("queries.json");
    let (mut hits, mut total) = (0usize, 0usize);
    let mut misses = Vec::new();
    for scene in q["scenes"].as_array().unwrap() {
        let id = upload_scene(s, scene).await;
        for query in scene["queries"].as_array().unwrap() {
            let phrase = query["train"].as_str().unwrap();
            let (status, v) = s
                .segment(&id, &json!({"prompts": [{"text": phrase, "max_masks": 3}]}))
                .await;
            assert_eq!(status, 200, "{v}");
            let masks = v["results"][0]["masks"].as_array().unwrap();
            assert!(!masks.is_empty() && masks.len() <= 3);
            let scores: Vec<f64> = masks
                .iter()
                .map(|m| m["text_score"].as_f64().unwrap())
                .collect();
            assert!(
                scores.windows(2).all(|w| w[0] >= w[1]),
                "sorted by text_score: {scores:?}"
            );
            let truth: CocoRle = serde_json::from_value(query["rle"].clone()).unwrap();
            let iou = rle_mask(&masks[0]).iou(&decode(&truth).unwrap());
            total += 1;
            if iou >= 0.5 {
                hits += 1;
            } else {
                misses.push(format!("{phrase} (IoU {iou:.2})"));
            }
        }
    }
    eprintln!(
        "text queries: {hits}/{total} = {:.3}; misses: {misses:?}",
        hits as f64 / total as f64
    );
    (hits, total, misses)
}

/// Floor under what the current default model + text towers reach through the server
/// (8 of these 20 queries when the tower was trained; a random one of the ~290 candidates
/// finds the object about 1 time in 100), so that a broken text path (tokenizer, towers,
/// features, scoring, sort, candidate parameters) is caught; and a second phrase on a
/// cached image reuses the candidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phrases_find_some_objects_on_heldout_scenes() {
    let s = TestServer::default().await;
    let (hits, total, misses) = heldout_query_hits(&s).await;
    assert!(total >= 10);
    assert!(
        s.metric(
            "samserve_text_cache_total",
            "cache=\"candidates\",result=\"hit\""
        )
        .await
            >= 1.0
    );
    assert!(
        hits >= 5,
        "{hits}/{total} text queries found their object; misses: {misses:?}"
    );
}

/// The target of issue 11: the named object first for >= 80 % of the queries. Ignored
/// until the candidates and the region tower reach it (see the text model card).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "target of issue 11, not yet reached: see models/text-minilm/MODEL_CARD.md"]
async fn phrases_find_their_objects_on_heldout_scenes() {
    let s = TestServer::default().await;
    let (hits, total, misses) = heldout_query_hits(&s).await;
    let frac = hits as f64 / total as f64;
    assert!(
        frac >= 0.8,
        "{hits}/{total} text queries found their object; misses: {misses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_with_a_box_and_in_segment_everything() {
    let s = TestServer::default().await;
    let q = read_json("queries.json");
    let scene = &q["scenes"][0];
    let id = upload_scene(&s, scene).await;
    let query = &scene["queries"][0];
    let phrase = query["train"].as_str().unwrap();
    let truth = decode(&serde_json::from_value::<CocoRle>(query["rle"].clone()).unwrap()).unwrap();
    let [x, y, w, h] = truth.bbox_xywh();
    // A box around the named object: every returned mask lies inside it (with the slack).
    let bx = [x as f64, y as f64, (x + w) as f64, (y + h) as f64];
    let (status, v) = s
        .segment(
            &id,
            &json!({"prompts": [{"text": phrase, "box": bx, "max_masks": 5}]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    for m in v["results"][0]["masks"].as_array().unwrap() {
        let b = m["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect::<Vec<_>>();
        let (sx, sy) = (0.05 * (bx[2] - bx[0]) + 2.0, 0.05 * (bx[3] - bx[1]) + 2.0);
        assert!(b[0] >= bx[0] - sx && b[1] >= bx[1] - sy, "{m}");
        assert!(
            b[0] + b[2] <= bx[2] + sx && b[1] + b[3] <= bx[3] + sy,
            "{m}"
        );
    }
    // Mixed request: a click prompt and a text prompt answer in order.
    let (status, v) = s
        .segment(
            &id,
            &json!({"prompts": [{"points": [{"x": x + w / 2, "y": y + h / 2}]}, {"text": phrase}]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["results"][0]["masks"][0].get("text_score").is_none());
    assert!(v["results"][1]["masks"][0]["text_score"].is_number());
    // Segment everything with text: only masks at or above the threshold, best first.
    let (status, v) = post(
        &s,
        &format!("/v1/images/{id}/everything"),
        &json!({"text": phrase, "text_threshold": 0.2, "points_per_side": 8}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let scores: Vec<f64> = v["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text_score"].as_f64().unwrap())
        .collect();
    assert!(scores.iter().all(|s| *s >= 0.2 - 1e-6), "{scores:?}");
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
}
