//! Quality of the embedded default model on held-out synthetic scenes.
//!
//! The fixtures (tests/fixtures/heldout/) come from tools/data_engine (seeds the
//! training never saw): PNG scenes plus, per object, its ground-truth visible mask
//! as COCO RLE and its centre click (max of the distance transform). Regenerate with
//! `cd tools && .venv/bin/python -m data_engine.fixtures --out ../tests/fixtures/heldout`.

mod common;

use serde_json::json;

/// (IoU of the top-ranked mask, object area) for one centre click per object.
async fn centre_click_ious() -> Vec<(f64, u64)> {
    let s = common::TestServer::default().await;
    let dir = common::repo().join("tests/fixtures/heldout");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("objects.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for scene in doc["scenes"].as_array().unwrap() {
        let bytes = std::fs::read(dir.join(scene["image"].as_str().unwrap())).unwrap();
        let up = s.upload(&bytes).await;
        let id = up["image_id"].as_str().unwrap();
        let objects = scene["objects"].as_array().unwrap();
        // One request, one single-click prompt per object: the batch path serves it.
        let prompts: Vec<_> = objects
            .iter()
            .map(|o| json!({"points": [{"x": o["centre"][0], "y": o["centre"][1], "label": 1}]}))
            .collect();
        let (status, body) = s.segment(id, &json!({ "prompts": prompts })).await;
        assert_eq!(status, 200, "{body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), objects.len());
        for (o, r) in objects.iter().zip(results) {
            let rle: samserve::core::masks::rle::CocoRle =
                serde_json::from_value(o["rle"].clone()).unwrap();
            let truth = samserve::core::masks::rle::decode(&rle).unwrap();
            let top = common::rle_mask(&r["masks"][0]);
            out.push((top.iou(&truth), o["area"].as_u64().unwrap()));
        }
    }
    out
}

fn summary(ious: &[(f64, u64)]) -> (f64, f64) {
    let n = ious.len() as f64;
    let mean = ious.iter().map(|v| v.0).sum::<f64>() / n;
    let good = ious.iter().filter(|v| v.0 >= 0.8).count() as f64 / n;
    eprintln!(
        "default model, centre click, top mask: {} objects, mIoU {mean:.3}, IoU >= 0.8 for {:.1} %",
        ious.len(),
        100.0 * good
    );
    (mean, good)
}

/// Floor under what the current default model reaches (see models/sam-tiny/MODEL_CARD.md),
/// so that a broken pipeline (resize, prompt scaling, mask order) is caught.
#[tokio::test]
async fn default_model_finds_heldout_objects_from_one_click() {
    let ious = centre_click_ious().await;
    assert!(ious.len() >= 20, "too few fixture objects: {}", ious.len());
    let (mean, _) = summary(&ious);
    assert!(mean >= 0.40, "centre-click mIoU {mean:.3} below the floor");
}

/// The quality target of issue 3: IoU >= 0.8 for at least 80 % of objects.
/// Ignored until a default model trained longer reaches it (the current one does not).
#[tokio::test]
#[ignore = "target of issue 3, not yet reached by the default model; see MODEL_CARD.md"]
async fn default_model_meets_the_one_click_target() {
    let ious = centre_click_ious().await;
    let (_, good) = summary(&ious);
    assert!(
        good >= 0.8,
        "only {:.1} % of objects at IoU >= 0.8",
        100.0 * good
    );
}
