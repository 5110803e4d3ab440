//! Segment everything against the reference `SamAutomaticMaskGenerator`.
//!
//! `tools/amg_parity.py goldens` ran the Python package's generator on the default model's
//! PyTorch checkpoint and wrote its records to `tests/fixtures/amg/goldens.json`. The server
//! runs the same parameters through the ONNX export; masks are matched one to one (greedy by
//! IoU): at least 95% of golden masks must match at IoU >= 0.95, counts must agree within 5%,
//! and matched predicted_iou and stability_score must agree within 0.01.

mod common;

use std::time::Instant;

use common::TestServer;
use futures::StreamExt;
use samserve::core::masks::rle::{decode, CocoRle};
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;

#[derive(Deserialize)]
struct Goldens {
    checkpoint_sha256: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    image: String,
    width: u32,
    height: u32,
    params: serde_json::Value,
    records: Vec<Record>,
}

#[derive(Deserialize)]
struct Record {
    segmentation: CocoRle,
    predicted_iou: f64,
    stability_score: f64,
}

#[tokio::test]
async fn everything_matches_the_reference_generator() {
    let dir = common::repo().join("tests/fixtures/amg");
    let goldens: Goldens =
        serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap();
    let ckpt = std::fs::read(common::repo().join("models/sam-tiny/checkpoint.pth")).unwrap();
    let sha = format!("{:x}", sha2::Sha256::digest(&ckpt));
    assert_eq!(
        sha, goldens.checkpoint_sha256,
        "the default model changed: run `tools/amg_parity.py goldens`"
    );
    assert!(goldens.cases.len() >= 6);
    let s = TestServer::default().await;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in &goldens.cases {
        let bytes = std::fs::read(dir.join(&case.image)).unwrap();
        let up = s.upload(&bytes).await;
        assert_eq!(
            (up["width"].as_u64(), up["height"].as_u64()),
            (Some(case.width as u64), Some(case.height as u64))
        );
        let id = up["image_id"].as_str().unwrap();
        let r = s
            .client
            .post(s.url(&format!("/v1/images/{id}/everything")))
            .json(&case.params)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", case.image);
        let body: serde_json::Value = r.json().await.unwrap();
        let got: Vec<(samserve::core::masks::BinaryMask, f64, f64)> = body["masks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let rle: CocoRle = serde_json::from_value(m["segmentation"].clone()).unwrap();
                (
                    decode(&rle).unwrap(),
                    m["predicted_iou"].as_f64().unwrap(),
                    m["stability_score"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        let want: Vec<_> = case
            .records
            .iter()
            .map(|r| {
                (
                    decode(&r.segmentation).unwrap(),
                    r.predicted_iou,
                    r.stability_score,
                )
            })
            .collect();
        // Greedy one-to-one matching, best pairs first.
        let mut pairs = Vec::new();
        for (i, w) in want.iter().enumerate() {
            for (j, g) in got.iter().enumerate() {
                let iou = w.0.iou(&g.0);
                if iou >= 0.5 {
                    pairs.push((iou, i, j));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut used_w, mut used_g) = (vec![false; want.len()], vec![false; got.len()]);
        let mut matched = 0;
        for (iou, i, j) in pairs {
            if used_w[i] || used_g[j] || iou < 0.95 {
                continue;
            }
            used_w[i] = true;
            used_g[j] = true;
            matched += 1;
            let dp = (want[i].1 - got[j].1).abs();
            let ds = (want[i].2 - got[j].2).abs();
            if dp > 0.01 || ds > 0.01 {
                failures.push(format!(
                    "{}: golden {i} vs server {j}: predicted_iou diff {dp:.4}, stability diff {ds:.4}",
                    case.image
                ));
            }
        }
        let frac = matched as f64 / want.len().max(1) as f64;
        let count_diff = (got.len() as f64 - want.len() as f64).abs() / want.len().max(1) as f64;
        report.push(format!(
            "{}: golden {} server {} matched {:.1}%",
            case.image,
            want.len(),
            got.len(),
            100.0 * frac
        ));
        if frac < 0.95 || count_diff > 0.05 {
            failures.push(format!(
                "{}: {matched}/{} golden masks matched, {} server masks",
                case.image,
                want.len(),
                got.len()
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn ndjson_streams_progress_before_the_end() {
    let s = TestServer::default().await;
    let bytes =
        std::fs::read(common::repo().join("tests/fixtures/amg/images/scene_512x384.png")).unwrap();
    let id = s.upload(&bytes).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .client
        .post(s.url(&format!("/v1/images/{id}/everything")))
        .header("accept", "application/x-ndjson")
        .json(
            &json!({"points_per_side": 8, "crop_n_layers": 1, "points_per_batch": 16,
                      "pred_iou_thresh": 0.2, "stability_score_thresh": 0.5}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let start = Instant::now();
    let mut stream = r.bytes_stream();
    let mut buf = Vec::new();
    let mut lines: Vec<(f64, serde_json::Value)> = Vec::new();
    let mut running_at_first_line = None;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            lines.push((
                start.elapsed().as_secs_f64(),
                serde_json::from_slice(&line).unwrap(),
            ));
            if running_at_first_line.is_none() {
                // The server's own gauge says whether the generation is still computing.
                running_at_first_line = Some(s.metric("samserve_everything_running", "").await);
            }
        }
    }
    assert_eq!(
        running_at_first_line,
        Some(1.0),
        "the first line must arrive while the masks are still being computed"
    );
    let kinds: Vec<&str> = lines
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"progress"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"summary"), "{kinds:?}");
    assert!(kinds.contains(&"mask"));
    // 5 crops x 64 points in batches of 16: the first line comes well before the last.
    let first = lines.first().unwrap().0;
    let last = lines.last().unwrap().0;
    assert!(first < last, "first line at {first}s, last at {last}s");
    let summary = &lines.last().unwrap().1;
    assert_eq!(summary["crops"], 5);
    assert_eq!(summary["truncated"], false);
    let masks = kinds.iter().filter(|k| **k == "mask").count();
    assert_eq!(
        summary["masks_before_caps"].as_u64().unwrap() as usize,
        masks
    );

    // Caps: ask for at most 3 masks; the summary says the answer was truncated.
    let (st, capped) = {
        let r = s
            .client
            .post(s.url(&format!("/v1/images/{id}/everything")))
            .json(&json!({"points_per_side": 8, "pred_iou_thresh": 0.2,
                          "stability_score_thresh": 0.5, "max_masks": 3, "output": "none"}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(st, 200);
    assert!(capped["masks"].as_array().unwrap().len() <= 3);
    if capped["summary"]["masks_before_caps"].as_u64().unwrap() > 3 {
        assert_eq!(capped["summary"]["truncated"], true);
    }
    // Invalid parameters are 422, unknown ones 400, unknown images 404.
    let post = |body: serde_json::Value, id: String| {
        let c = s.client.clone();
        let url = s.url(&format!("/v1/images/{id}/everything"));
        async move {
            c.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post(json!({"points_per_side": 0}), id.clone()).await, 422);
    assert_eq!(post(json!({"pred_iou_thresh": 1.5}), id.clone()).await, 422);
    assert_eq!(post(json!({"nonsense": 1}), id.clone()).await, 400);
    let unknown = blake3::hash(b"nothing").to_hex().to_string();
    assert_eq!(post(json!({}), unknown).await, 404);
}

/// The opt-in fast mode (`skip_covered_points`) decodes fewer grid points than the full grid
/// on a scene with objects, and still finds most of the full grid's masks.
#[tokio::test]
async fn fast_mode_skips_covered_points_and_keeps_most_masks() {
    let s = TestServer::default().await;
    let bytes =
        std::fs::read(common::repo().join("tests/fixtures/amg/images/scene_640x480.png")).unwrap();
    let id = s.upload(&bytes).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let masks_of = |body: &serde_json::Value| -> Vec<samserve::core::masks::BinaryMask> {
        body["masks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| decode(&serde_json::from_value(m["segmentation"].clone()).unwrap()).unwrap())
            .collect()
    };
    let mut runs = Vec::new();
    for fast in [false, true] {
        let before = s.metric("samserve_decoder_prompts_total", "").await;
        let body = json!({"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8,
                          "skip_covered_points": fast});
        let r = s
            .client
            .post(s.url(&format!("/v1/images/{id}/everything")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let out: serde_json::Value = r.json().await.unwrap();
        let prompts = s.metric("samserve_decoder_prompts_total", "").await - before;
        runs.push((prompts, masks_of(&out)));
    }
    let (full_prompts, full) = &runs[0];
    let (fast_prompts, fast) = &runs[1];
    assert_eq!(
        *full_prompts, 1024.0,
        "the full grid decodes 32 x 32 points"
    );
    let found = full
        .iter()
        .filter(|m| fast.iter().any(|f| f.iou(m) >= 0.75))
        .count();
    eprintln!(
        "full grid: {full_prompts} prompts, {} masks; fast: {fast_prompts} prompts, {} masks; \
         {found} of the full grid's masks found",
        full.len(),
        fast.len()
    );
    assert!(!full.is_empty());
    assert!(fast_prompts < full_prompts, "fast mode skipped no point");
    assert!(found as f64 >= 0.8 * full.len() as f64);
}
