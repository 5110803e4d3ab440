//! `--cache-dtype float16`: masks agree with the float32 cache, and a byte budget holds about
//! twice the images. Two real servers (default model), the same prompts on the held-out
//! scenes of tests/fixtures/heldout (object centres and the boxes of their ground-truth
//! masks, decoded from the fixture's RLE).

mod common;

use common::{rle_mask, synthetic_png, TestServer};
use samserve::config::CacheDtype;
use serde_json::{json, Value};

async fn server(dtype: CacheDtype, cache_bytes: u64) -> TestServer {
    let mut c = common::config();
    c.cache_dtype = dtype;
    c.cache_bytes = cache_bytes;
    TestServer::start(c).await
}

fn iou(a: &[u8], b: &[u8]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (x, y) in a.iter().zip(b) {
        inter += (*x != 0 && *y != 0) as u64;
        union += (*x != 0 || *y != 0) as u64;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// One click at each object's centre and one box around it, single-mask answers.
fn prompts(objects: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for o in objects {
        let c = &o["centre"];
        out.push(json!({"points": [{"x": c[0].as_f64().unwrap() + 0.5, "y": c[1].as_f64().unwrap() + 0.5}]}));
        let m = rle_mask(o);
        let w = m.width as usize;
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for (i, v) in m.data.iter().enumerate() {
            if *v != 0 {
                let (x, y) = (i % w, i / w);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            }
        }
        out.push(json!({"box": [x0, y0, x1, y1]}));
    }
    out
}

#[tokio::test]
async fn float16_cache_masks_agree_with_float32() {
    let dir = common::repo().join("tests/fixtures/heldout");
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("objects.json")).unwrap()).unwrap();
    let big = 1 << 30;
    let (f32s, f16s) = (
        server(CacheDtype::Float32, big).await,
        server(CacheDtype::Float16, big).await,
    );
    let (mut ious, mut score_delta) = (Vec::new(), 0f64);
    for scene in index["scenes"].as_array().unwrap() {
        let png = std::fs::read(dir.join(scene["image"].as_str().unwrap())).unwrap();
        let prompts = prompts(scene["objects"].as_array().unwrap());
        let body = json!({"prompts": prompts, "multimask_output": false, "output": "rle"});
        let mut answers = Vec::new();
        for s in [&f32s, &f16s] {
            let id = s.upload(&png).await["image_id"]
                .as_str()
                .unwrap()
                .to_string();
            let (st, res) = s.segment(&id, &body).await;
            assert_eq!(st, 200, "{res}");
            answers.push(res["results"].as_array().unwrap().clone());
        }
        assert_eq!(answers[0].len(), prompts.len());
        for (a, b) in answers[0].iter().zip(&answers[1]) {
            let (ma, mb) = (&a["masks"][0], &b["masks"][0]);
            ious.push(iou(&rle_mask(ma).data, &rle_mask(mb).data));
            score_delta = score_delta
                .max((ma["score"].as_f64().unwrap() - mb["score"].as_f64().unwrap()).abs());
        }
    }
    let mean = ious.iter().sum::<f64>() / ious.len() as f64;
    let min = ious.iter().cloned().fold(1.0, f64::min);
    eprintln!(
        "float16 vs float32 cache: mean mask IoU {mean:.5} (min {min:.4}) over {} masks; \
         largest predicted-IoU difference {score_delta:.5}",
        ious.len()
    );
    assert!(ious.len() >= 20, "only {} prompts", ious.len());
    assert!(mean >= 0.99, "mean IoU {mean}");
}

#[tokio::test]
async fn float16_cache_holds_about_twice_the_images() {
    // A budget of 4.5 float32 embeddings of the default model: the float32 cache keeps 4
    // of 12 uploads, a float16 cache should keep 9 (each image weighs half, plus a small
    // fixed part).
    let probe = server(CacheDtype::Float32, 1 << 30).await;
    let shape: Vec<u64> = probe.get_json("/v1/models").await["models"][0]["embedding_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let f32_bytes = shape.iter().product::<u64>() * 4;
    let budget = f32_bytes * 9 / 2;
    let mut kept = Vec::new();
    for dtype in [CacheDtype::Float32, CacheDtype::Float16] {
        let s = server(dtype, budget).await;
        for seed in 0..12 {
            s.upload(&synthetic_png(96, 64, 1000 + seed)).await;
        }
        // Re-upload every image: a cache hit means it was kept.
        let mut hits = 0;
        for seed in 0..12 {
            hits += s.upload(&synthetic_png(96, 64, 1000 + seed)).await["cached"]
                .as_bool()
                .unwrap() as u32;
        }
        let bytes = s.metric("samserve_cache_bytes", "").await;
        let entries = s.metric("samserve_cache_entries", "").await;
        eprintln!("{dtype:?}: budget {budget} B, {entries} entries, {bytes} B, {hits} of 12 re-uploads hit");
        assert!(bytes <= budget as f64, "{bytes} > {budget}");
        kept.push(entries);
    }
    assert!(kept[0] >= 3.0, "float32 cache keeps {}", kept[0]);
    assert!(
        kept[1] >= 2.0 * kept[0] - 1.0,
        "float16 keeps {} entries where float32 keeps {}",
        kept[1],
        kept[0]
    );
}
