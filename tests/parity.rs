//! Parity with the reference SAM pipeline.
//!
//! `tools/parity.py` ran the segment-anything package's preprocessing and prompt transforms
//! with onnxruntime in Python on the same ONNX model and wrote golden masks and scores to
//! `tests/fixtures/parity/cases.json`. Every server mask must match its golden with
//! IoU >= 0.99 and a predicted IoU within 0.01.

mod common;

use std::collections::HashMap;

use common::parity_cases;
use common::TestServer;
use samserve::core::masks::rle;

#[tokio::test]
async fn server_matches_reference_pipeline() {
    let (dir, fixture) = parity_cases::load();
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
        let masks =
            parity_cases::ask(&s, up["image_id"].as_str().unwrap(), case, &mut handles).await;
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
