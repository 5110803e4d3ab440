//! The shipped int8 variant of the default model (models/sam-tiny-int8: decoder MatMuls
//! int8 except the two positional-encoding ones, encoder shared with models/sam-tiny),
//! served from its folder, against the reference pipeline's fp32 goldens
//! (tests/fixtures/parity/cases.json, written by tools/parity.py with segment-anything's
//! transforms on the fp32 model). int8 moves masks a little, so this asks for agreement, not
//! parity: the mean IoU over every golden mask, each case's mask count, and the scores.

mod common;

use std::collections::HashMap;

use common::parity_cases;
use common::TestServer;
use samserve::core::masks::rle;
use serde_json::json;

/// A server on models/sam-tiny-int8 only.
async fn int8_server() -> TestServer {
    let mut c = common::config();
    c.models = vec![common::repo().join("models/sam-tiny-int8")];
    TestServer::start(c).await
}

#[tokio::test]
async fn shipped_int8_variant_agrees_with_the_fp32_reference() {
    let s = int8_server().await;

    let models = s.get_json("/v1/models").await;
    let listed = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "sam-tiny-int8")
        .unwrap_or_else(|| panic!("sam-tiny-int8 not listed: {models}"))
        .clone();
    assert_eq!(listed["precision"], "int8", "{listed}");

    let (dir, fixture) = parity_cases::load();
    let mut handles: HashMap<String, Vec<String>> = HashMap::new();
    let (mut ious, mut score_deltas) = (Vec::new(), Vec::new());
    let mut uploaded: HashMap<String, String> = HashMap::new();
    for case in &fixture.cases {
        let id = match uploaded.get(&case.image) {
            Some(id) => id.clone(),
            None => {
                let up = s
                    .upload(&std::fs::read(dir.join(&case.image)).unwrap())
                    .await;
                let id = up["image_id"].as_str().unwrap().to_string();
                uploaded.insert(case.image.clone(), id.clone());
                id
            }
        };
        // A refinement feeds the int8 server's own logits of the earlier case (the golden
        // used fp32 ones).
        let masks = parity_cases::ask(&s, &id, case, &mut handles).await;
        // Masks come sorted by score; int8 may swap two masks whose scores are close, so
        // each golden mask is compared with the answer's mask that overlaps it most.
        let got: Vec<_> = masks.iter().map(common::rle_mask).collect();
        for want in &case.expected {
            let want_mask = rle::decode(&want.rle).unwrap();
            let (best, at) = got
                .iter()
                .enumerate()
                .map(|(i, g)| (g.iou(&want_mask), i))
                .fold((-1.0, 0), |a, b| if b.0 > a.0 { b } else { a });
            ious.push(best);
            score_deltas.push((masks[at]["score"].as_f64().unwrap() - want.score).abs());
        }
    }
    let n = ious.len() as f64;
    let mean = ious.iter().sum::<f64>() / n;
    let min = ious.iter().cloned().fold(1.0, f64::min);
    let mean_dscore = score_deltas.iter().sum::<f64>() / n;
    eprintln!(
        "int8 vs fp32 reference: {} masks, mean IoU {mean:.4}, min {min:.3}, mean |score delta| {mean_dscore:.4}",
        ious.len()
    );
    assert!(ious.len() >= 40, "only {} golden masks", ious.len());
    // Measured here: 0.9835 for the shipped variant; 0.9649 with every MatMul int8 (the
    // positional-encoding ones too), which this bound refuses. (tools/quantize.py compare,
    // 10 held-out scenes: 0.977 vs 0.954.)
    assert!(mean >= 0.975, "mean IoU {mean:.4} against the fp32 goldens");
    assert!(mean_dscore <= 0.02, "mean score delta {mean_dscore:.4}");
}

/// Dynamic int8 scales activations by the whole batch, so the server runs such a decoder one
/// prompt per call: a prompt's masks must not depend on the prompts that came with it.
#[tokio::test]
async fn int8_answers_do_not_depend_on_the_batch() {
    let s = int8_server().await;
    let dir = common::repo().join("tests/fixtures/heldout");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("objects.json")).unwrap()).unwrap();
    let scene = &index["scenes"][0];
    let png = std::fs::read(dir.join(scene["image"].as_str().unwrap())).unwrap();
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let prompts: Vec<serde_json::Value> = scene["objects"]
        .as_array()
        .unwrap()
        .iter()
        .take(12)
        .map(|o| {
            let c = &o["centre"];
            json!({"points": [{"x": c[0].as_f64().unwrap() + 0.5, "y": c[1].as_f64().unwrap() + 0.5}]})
        })
        .collect();
    assert!(prompts.len() >= 8, "scene has {} objects", prompts.len());
    let (st, together) = s
        .segment(&id, &json!({"prompts": prompts, "output": "rle"}))
        .await;
    assert_eq!(st, 200, "{together}");
    let mut differing = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (st, alone) = s
            .segment(&id, &json!({"prompts": [p], "output": "rle"}))
            .await;
        assert_eq!(st, 200, "{alone}");
        let (a, b) = (
            &alone["results"][0]["masks"],
            &together["results"][i]["masks"],
        );
        let same = a.as_array().unwrap().len() == b.as_array().unwrap().len()
            && a.as_array()
                .unwrap()
                .iter()
                .zip(b.as_array().unwrap())
                .all(|(x, y)| x["rle"] == y["rle"] && x["score"] == y["score"]);
        if !same {
            differing.push(i);
        }
    }
    assert!(
        differing.is_empty(),
        "prompts {differing:?} of {} answered differently alone and in one request",
        prompts.len()
    );
}
