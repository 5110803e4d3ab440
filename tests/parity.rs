//! Parity with the reference SAM pipeline.
//!
//! `tools/parity.py` ran the segment-anything package's preprocessing and prompt transforms
//! with onnxruntime in Python on the same ONNX model and wrote golden masks and scores to
//! `tests/fixtures/parity/cases.json`. Every server mask must match its golden with
//! IoU >= 0.99 and a predicted IoU within 0.01.

mod common;

use std::collections::HashMap;

use common::TestServer;
use samserve::core::masks::rle::{self, CocoRle};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    image: String,
    width: u32,
    height: u32,
    prompt: CasePrompt,
    refine_from: Option<RefineFrom>,
    expected: Vec<Expected>,
}

#[derive(Deserialize)]
struct CasePrompt {
    #[serde(default)]
    points: Vec<[f64; 3]>,
    #[serde(default)]
    r#box: Option<[f64; 4]>,
    #[serde(default)]
    multimask_output: Option<bool>,
}

#[derive(Deserialize)]
struct RefineFrom {
    case: String,
    mask_index: usize,
}

#[derive(Deserialize)]
struct Expected {
    score: f64,
    area: u64,
    rle: CocoRle,
}

#[tokio::test]
async fn server_matches_reference_pipeline() {
    let dir = common::repo().join("tests/fixtures/parity");
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert!(fixture.cases.len() >= 20, "need at least 20 parity cases");
    let non_empty = fixture
        .cases
        .iter()
        .filter(|c| c.expected.iter().any(|e| e.area > 0))
        .count();
    assert!(
        non_empty >= 15,
        "only {non_empty} cases have non-empty golden masks"
    );

    let s = TestServer::default().await;
    // Logits handles of every case's masks, for refinement cases.
    let mut handles: HashMap<String, Vec<String>> = HashMap::new();
    let mut failures = Vec::new();
    let mut worst_iou = (1.0f64, String::new());
    let mut worst_score = 0.0f64;
    for case in &fixture.cases {
        let bytes = std::fs::read(dir.join(&case.image)).unwrap();
        let up = s.upload(&bytes).await;
        assert_eq!(
            (
                up["width"].as_u64().unwrap(),
                up["height"].as_u64().unwrap()
            ),
            (case.width as u64, case.height as u64),
            "{}: upright size",
            case.name
        );
        let mut prompt = json!({
            "points": case.prompt.points.iter()
                .map(|p| json!({"x": p[0], "y": p[1], "label": p[2] as i64}))
                .collect::<Vec<_>>(),
        });
        if let Some(b) = case.prompt.r#box {
            prompt["box"] = json!(b);
        }
        if let Some(m) = case.prompt.multimask_output {
            prompt["multimask_output"] = json!(m);
        }
        if let Some(r) = &case.refine_from {
            let h = &handles[&r.case][r.mask_index];
            prompt["mask_input"] = json!(h);
        }
        let (st, body) = s
            .segment(
                up["image_id"].as_str().unwrap(),
                &json!({"prompts": [prompt], "return_logits": true}),
            )
            .await;
        assert_eq!(st, 200, "{}: {body}", case.name);
        let masks = body["results"][0]["masks"].as_array().unwrap();
        assert_eq!(
            masks.len(),
            case.expected.len(),
            "{}: mask count",
            case.name
        );
        handles.insert(
            case.name.clone(),
            masks
                .iter()
                .map(|m| m["logits_handle"].as_str().unwrap().to_string())
                .collect(),
        );
        for (i, (got, want)) in masks.iter().zip(&case.expected).enumerate() {
            let got_mask = common::rle_mask(got);
            let want_mask = rle::decode(&want.rle).unwrap();
            let iou = got_mask.iou(&want_mask);
            let dscore = (got["score"].as_f64().unwrap() - want.score).abs();
            if iou < worst_iou.0 {
                worst_iou = (iou, format!("{} mask {i}", case.name));
            }
            worst_score = worst_score.max(dscore);
            if iou < 0.99 || dscore > 0.01 {
                failures.push(format!(
                    "{} mask {i}: IoU {iou:.4}, score {} vs golden {}",
                    case.name, got["score"], want.score
                ));
            }
        }
    }
    eprintln!(
        "parity: {} cases, worst IoU {:.5} ({}), worst score diff {worst_score:.5}",
        fixture.cases.len(),
        worst_iou.0,
        worst_iou.1
    );
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
