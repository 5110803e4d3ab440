//! Model loading: export families, several models at once, refusal of unknown signatures.

mod common;

use std::sync::Arc;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn samexporter_style_encoder_matches_the_official_layout() {
    let mut cfg = common::config();
    cfg.models = vec![
        common::repo().join("models/sam-tiny"),
        common::repo().join("tests/fixtures/models/sam-tiny-hwc"),
    ];
    let s = TestServer::start(cfg).await;
    let models = s.get_json("/v1/models").await;
    let layouts: Vec<(String, String)> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["encoder_input"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(layouts.contains(&("sam-tiny".into(), "nchw_normalized".into())));
    assert!(layouts.contains(&("sam-tiny-hwc".into(), "hwc_raw".into())));

    let bytes =
        std::fs::read(common::repo().join("tests/fixtures/parity/images/shapes_333x517.png"))
            .unwrap();
    let prompts = json!({"prompts": [
        {"points": [{"x": 118, "y": 245, "label": 1}]},
        {"box": [39, 166, 206, 362]},
    ]});
    let mut answers = Vec::new();
    for model in ["sam-tiny", "sam-tiny-hwc"] {
        let r = s
            .client
            .post(s.url(&format!("/v1/images?model={model}")))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let up: serde_json::Value = r.json().await.unwrap();
        assert_eq!(up["model"], model);
        let r = s
            .client
            .post(s.url(&format!(
                "/v1/images/{}/segment?model={model}",
                up["image_id"].as_str().unwrap()
            )))
            .json(&prompts)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        answers.push(r.json::<serde_json::Value>().await.unwrap());
    }
    // Each model has its own cache entry for the same bytes.
    assert_eq!(s.metric("samserve_encoder_runs_total", "").await, 2.0);
    for (p, (ra, rb)) in answers[0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(answers[1]["results"].as_array().unwrap())
        .enumerate()
    {
        let a = ra["masks"].as_array().unwrap();
        let b = rb["masks"].as_array().unwrap();
        assert_eq!(a.len(), b.len());
        for (ma, mb) in a.iter().zip(b) {
            let iou = common::rle_mask(ma).iou(&common::rle_mask(mb));
            assert!(iou >= 0.99, "prompt {p}: IoU {iou}");
            let ds = (ma["score"].as_f64().unwrap() - mb["score"].as_f64().unwrap()).abs();
            assert!(ds < 0.01, "prompt {p}: score diff {ds}");
        }
    }
}

#[test]
fn unknown_signatures_are_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("samserve-badmodel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = common::repo().join("models/sam-tiny");
    // The encoder file given as the decoder: its inputs are not the SAM decoder's.
    std::fs::write(
        dir.join("manifest.json"),
        json!({
            "name": "broken",
            "encoder": tiny.join("encoder.onnx"),
            "decoder": tiny.join("encoder.onnx"),
            "input_size": 512
        })
        .to_string(),
    )
    .unwrap();
    let mut cfg = common::config();
    cfg.models = vec![dir.clone()];
    let err =
        samserve::core::engine::Engine::start(&cfg, Arc::new(samserve::metrics::Metrics::new()))
            .err()
            .expect("a model with an encoder as decoder must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("unsupported decoder signature"), "{msg}");
    assert!(
        msg.contains("image"),
        "the message lists what was found: {msg}"
    );

    // Declaring the wrong input size is caught against the encoder's static shape.
    std::fs::write(
        dir.join("manifest.json"),
        json!({
            "name": "wrong-size",
            "encoder": tiny.join("encoder.onnx"),
            "decoder": tiny.join("decoder.onnx"),
            "input_size": 1024
        })
        .to_string(),
    )
    .unwrap();
    let err =
        samserve::core::engine::Engine::start(&cfg, Arc::new(samserve::metrics::Metrics::new()))
            .err()
            .expect("a wrong input_size must be refused");
    assert!(
        format!("{err:#}").contains("unsupported encoder input"),
        "{err:#}"
    );

    // A missing folder names the path.
    cfg.models = vec![dir.join("nope")];
    let err =
        samserve::core::engine::Engine::start(&cfg, Arc::new(samserve::metrics::Metrics::new()))
            .err()
            .unwrap();
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn precision_from_the_manifest_is_listed() {
    let dir = std::env::temp_dir().join(format!("samserve-int8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = common::repo().join("models/sam-tiny");
    std::fs::write(
        dir.join("manifest.json"),
        json!({
            "name": "tiny-int8",
            "encoder": tiny.join("encoder.onnx"),
            "decoder": tiny.join("decoder.onnx"),
            "input_size": 512,
            "precision": "int8"
        })
        .to_string(),
    )
    .unwrap();
    let mut cfg = common::config();
    cfg.models = vec![tiny, dir.clone()];
    let s = TestServer::start(cfg).await;
    let list = s.get_json("/v1/models").await;
    let precision = |name: &str| {
        list["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {list}"))["precision"]
            .clone()
    };
    assert_eq!(
        precision("sam-tiny"),
        "fp32",
        "no precision in a manifest means fp32"
    );
    assert_eq!(precision("tiny-int8"), "int8");
    std::fs::remove_dir_all(&dir).ok();
}
