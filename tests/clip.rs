//! The `clip` text kind on a tiny random CLIP (tests/fixtures/models/clip-tiny, paired with
//! the default SAM model in tests/fixtures/models/sam-tiny-clip): tokenizer, text-encoder,
//! crop and image-encoder parity with the Python tool, and text queries through the real
//! server.
//!
//! Fixtures come from tools/export_clip.py (`--random-init tiny --fixtures
//! tests/fixtures/clip`): Python `tokenizers` ids, onnxruntime embeddings of the exported
//! graphs, and the reference crops of its `crop_pixels` (numpy + Pillow).

mod common;

use std::path::PathBuf;

use common::vectors::{cos, floats, ints};
use common::TestServer;
use samserve::core::masks::BinaryMask;
use samserve::runtime::text::clip::crop_pixels;
use samserve::runtime::text::tokenize::PhraseTokenizer;
use samserve::runtime::text::{load_model, RegionPrep, TextFiles};
use serde_json::{json, Value};

const MODEL: &str = "sam-tiny-clip";

fn fixtures() -> PathBuf {
    common::repo().join("tests/fixtures/clip")
}

fn doc() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("clip.json")).unwrap()).unwrap()
}

fn clip_files() -> TextFiles {
    TextFiles::from_dir(&common::repo().join("tests/fixtures/models/clip-tiny")).unwrap()
}

#[test]
fn clip_token_ids_and_text_embeddings_match_python() {
    let files = clip_files();
    assert_eq!(files.manifest.kind.as_str(), "clip");
    let tok = PhraseTokenizer::from_bytes(&files.tokenizer).unwrap();
    let env = samserve::runtime::ort_env::init(None).unwrap();
    let (mut text, _, _) = load_model(env, &files).unwrap();
    let d = doc();
    let max = d["max_tokens"].as_u64().unwrap() as usize;
    let mut truncated = 0;
    for c in d["cases"].as_array().unwrap() {
        let s = c["text"].as_str().unwrap();
        let want = ints(&c["ids"]);
        let ids = tok.ids(s).unwrap();
        assert_eq!(ids, want, "token ids of {s:?}");
        truncated += usize::from(want.len() == max);
        let got = text.embed(&ids).unwrap();
        let c = cos(&got, &floats(&c["embedding"]));
        assert!(c >= 0.999, "text embedding cosine {c} for {s:?}");
    }
    assert!(
        truncated >= 1,
        "no fixture phrase reaches the maximum length"
    );
}

fn mask_png(name: &str) -> BinaryMask {
    let img = image::open(fixtures().join(name)).unwrap().to_luma8();
    BinaryMask {
        width: img.width(),
        height: img.height(),
        data: img.as_raw().iter().map(|&v| u8::from(v > 127)).collect(),
    }
}

#[test]
fn clip_crops_and_image_embeddings_match_python() {
    let files = clip_files();
    let env = samserve::runtime::ort_env::init(None).unwrap();
    let (_, mut image, prep) = load_model(env, &files).unwrap();
    let RegionPrep::Crop(spec) = prep.clone() else {
        panic!("a clip model prepares crops");
    };
    let d = doc();
    let rgb = image::open(fixtures().join(d["image"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let crops = d["crops"].as_array().unwrap();
    assert!(crops.len() >= 3);
    for c in crops {
        let name = c["mask"].as_str().unwrap();
        let mask = mask_png(name);
        let got = crop_pixels(&rgb, &mask, &spec);
        let want = floats(&c["pixels"]);
        assert_eq!(got.len(), want.len(), "{name}");
        // Same bytes after the resize; the tolerance covers the fixture's 6 decimals.
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: crop differs by {worst}");
        let e = image.embed(vec![prep.prepare(&rgb, &mask)]).unwrap();
        let c = cos(&e[0], &floats(&c["embedding"]));
        assert!(c >= 0.999, "{name}: image embedding cosine {c}");
    }
}

async fn post(s: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = s.client.post(s.url(path)).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn upload(s: &TestServer, model: &str, bytes: &[u8]) -> String {
    let r = s
        .client
        .post(s.url(&format!("/v1/images?model={model}")))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["image_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn text_scores(v: &Value) -> Vec<f64> {
    v["results"][0]["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text_score"].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clip_text_queries_through_the_server() {
    let mut config = common::config();
    let hwc = "tests/fixtures/models/sam-tiny-hwc";
    config.models = vec![
        common::repo().join("tests/fixtures/models/sam-tiny-clip"),
        common::repo().join(hwc),
    ];
    let s = TestServer::start(config).await;
    let models = s.get_json("/v1/models").await;
    let listed = models["models"].as_array().unwrap();
    let clip = listed
        .iter()
        .find(|m| m["name"] == MODEL)
        .unwrap_or_else(|| panic!("{models}"));
    assert_eq!(clip["text"]["kind"], "clip", "{models}");
    assert_eq!(clip["text"]["name"], "clip-tiny", "{models}");

    let scene = common::repo().join("tests/fixtures/text/scene_1700000.png");
    let png = std::fs::read(scene).unwrap();
    let id = upload(&s, MODEL, &png).await;
    let seg = format!("/v1/images/{id}/segment?model={MODEL}");
    let candidates = |r: &'static str| {
        let s = &s;
        async move {
            s.metric(
                "samserve_text_cache_total",
                &format!("cache=\"candidates\",result=\"{r}\""),
            )
            .await
        }
    };

    // First phrase: builds the candidates (crops through the image encoder).
    let (status, v) = post(
        &s,
        &seg,
        &json!({"prompts": [{"text": "the blue star", "max_masks": 3}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let scores = text_scores(&v);
    assert!(!scores.is_empty() && scores.len() <= 3, "{v}");
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().all(|s| (-1.0001..=1.0001).contains(s)));
    for m in v["results"][0]["masks"].as_array().unwrap() {
        assert!(m["area"].as_u64().unwrap() > 0, "{m}");
        assert!(m["score"].is_number(), "{m}");
    }
    let misses = candidates("miss").await;
    assert_eq!(misses, 1.0);

    // Second phrase on the same image: the candidates come from the cache.
    let (status, v2) = post(
        &s,
        &seg,
        &json!({"prompts": [{"text": "a small red ring on the left"}]}),
    )
    .await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(text_scores(&v2).len(), 1);
    assert_eq!(candidates("miss").await, 1.0);
    assert!(candidates("hit").await >= 1.0);
    // The first phrase again, one mask: the best of the three above.
    let (_, v3) = post(&s, &seg, &json!({"prompts": [{"text": "the blue star"}]})).await;
    assert_eq!(text_scores(&v3), scores[..1].to_vec());

    // Segment everything with text on the clip model: every mask scored, best first.
    let (status, v) = post(
        &s,
        &format!("/v1/images/{id}/everything?model={MODEL}"),
        &json!({
            "text": "the blue star", "text_threshold": -1.0, "points_per_side": 8,
            // The default model keeps no mask at the reference thresholds (its model card).
            "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let all: Vec<f64> = v["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text_score"].as_f64().unwrap())
        .collect();
    assert!(!all.is_empty(), "{v}");
    assert!(all.windows(2).all(|w| w[0] >= w[1]), "{all:?}");

    // Text on the model without a text section: 422 naming the model that has one.
    let hwc_id = upload(&s, "sam-tiny-hwc", &png).await;
    let (status, v) = post(
        &s,
        &format!("/v1/images/{hwc_id}/segment?model=sam-tiny-hwc"),
        &json!({"prompts": [{"text": "the blue star"}]}),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "text_not_supported", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(MODEL),
        "{v}"
    );
}
