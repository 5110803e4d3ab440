//! SAM 2.1 models as a served family.
//!
//! tests/fixtures/models/sam2-mini is SAM 2.1's architecture at reduced widths (made by
//! `make sam2-fixtures`: tools/sam2_export.py, our export with all four mask tokens), and
//! tests/fixtures/models/sam2-mini-samexporter the same weights exported by samexporter
//! 0.5.0's own modules: its two files and no manifest. tests/fixtures/sam2/cases.json holds
//! what the official `SAM2ImagePredictor` answers on those weights.

mod common;

use std::sync::Arc;

use common::sam2_cases;
use common::TestServer;
use serde_json::json;

fn fixture(name: &str) -> std::path::PathBuf {
    common::repo().join("tests/fixtures/models").join(name)
}

async fn server(models: &[&str]) -> TestServer {
    let mut cfg = common::config();
    cfg.models = models.iter().map(|m| fixture(m)).collect();
    TestServer::start(cfg).await
}

#[tokio::test]
async fn our_export_matches_the_official_predictor() {
    let fx = sam2_cases::load();
    assert!(fx.cases.len() >= 20);
    let s = server(&["sam2-mini"]).await;
    let c = sam2_cases::replay(&s, &fx.cases, |_| true).await;
    let (worst, which) = c.worst();
    let ds = c.score_diffs.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "sam2 parity: {} masks, mean IoU {:.5}, worst {worst:.5} ({which}), worst score diff {ds:.2e}",
        c.ious.len(),
        c.mean_iou()
    );
    assert!(c.ious.len() >= 50, "{} masks", c.ious.len());
    assert!(c.mean_iou() >= 0.99, "mean IoU {}", c.mean_iou());
    assert!(worst >= 0.97, "worst IoU {worst} ({which})");
    // structure_mini makes a half-pixel move of a click change the predicted IoU by ~5e-4.
    assert!(ds < 2e-5, "predicted IoU differs by {ds}");
    // Single-mask answers take the token the reference's stability rule takes.
    assert!(
        c.token_mismatches.is_empty(),
        "{}",
        c.token_mismatches.join("\n")
    );
    // The goldens exercise both outcomes of that rule.
    let singles: Vec<usize> = fx
        .cases
        .iter()
        .flat_map(|c| &c.expected)
        .filter(|e| e.len() == 1)
        .map(|e| e[0].token)
        .collect();
    assert!(
        singles.contains(&0) && singles.iter().any(|&t| t > 0),
        "{singles:?}"
    );
}

#[tokio::test]
async fn samexporter_files_without_a_manifest_load_and_agree() {
    let dir = fixture("sam2-mini-samexporter");
    assert!(!dir.join("manifest.json").exists());
    let s = server(&["sam2-mini-samexporter"]).await;
    let models = s.get_json("/v1/models").await;
    let m = &models["models"][0];
    assert_eq!(m["family"], "sam2", "{m}");
    let names: Vec<&str> = m["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    );
    // samexporter's decoder returns tokens 1-3 only: the multimask answers match exactly.
    let fx = sam2_cases::load();
    let c = sam2_cases::replay(&s, &fx.cases, |c| c.prompts.iter().all(|p| p.multimask())).await;
    let (worst, which) = c.worst();
    eprintln!(
        "samexporter layout: {} masks, mean IoU {:.5}, worst {worst:.5} ({which})",
        c.ious.len(),
        c.mean_iou()
    );
    assert!(c.ious.len() >= 30, "{} masks", c.ious.len());
    assert!(c.mean_iou() >= 0.99 && worst >= 0.97);
    assert!(c.token_mismatches.is_empty(), "{:?}", c.token_mismatches);
}

/// sam2-onnx's signature (`high_res_feat_N`, int64 labels, a `[1, 1]` flag, one prompt per
/// call, tokens 1-3 as `low_res_masks`): the same weights answer the same multimask masks,
/// requests of several prompts and refinements included.
#[tokio::test]
async fn the_sam2_onnx_signature_is_bound_by_name_and_agrees() {
    let s = server(&["sam2-mini-sam2onnx"]).await;
    let m = &s.get_json("/v1/models").await["models"][0];
    assert_eq!(m["batched_decoder"], false, "{m}");
    let fx = sam2_cases::load();
    let c = sam2_cases::replay(&s, &fx.cases, |c| c.prompts.iter().all(|p| p.multimask())).await;
    let (worst, which) = c.worst();
    eprintln!(
        "sam2-onnx signature: {} masks, mean IoU {:.5}, worst {worst:.5} ({which})",
        c.ious.len(),
        c.mean_iou()
    );
    assert!(c.ious.len() >= 30 && c.mean_iou() >= 0.99 && worst >= 0.97);
    assert!(c.token_mismatches.is_empty(), "{:?}", c.token_mismatches);
}

/// samexporter's graph multiplies a `[L]` has_mask_input against the `[L, C, h, w]` mask
/// embedding, which broadcasts only for one row: a request mixing prompts with and without
/// a mask input must still answer each as when it is sent alone.
#[tokio::test]
async fn a_one_flag_decoder_batches_mixed_refinements_correctly() {
    let s = server(&["sam2-mini-samexporter"]).await;
    let png = common::synthetic_png(320, 240, 3);
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let click = |x: f64, y: f64| json!({"points": [{"x": x, "y": y, "label": 1}], "multimask_output": true});
    let (st, first) = s
        .segment(
            &id,
            &json!({"prompts": [click(160.0, 120.0)], "return_logits": true}),
        )
        .await;
    assert_eq!(st, 200, "{first}");
    let handle = first["results"][0]["masks"][0]["logits_handle"].clone();
    let mut refined = click(150.0, 110.0);
    refined["mask_input"] = handle;
    let prompts = vec![
        click(40.0, 30.0),
        refined.clone(),
        click(250.0, 200.0),
        refined,
    ];
    let (st, together) = s.segment(&id, &json!({"prompts": prompts.clone()})).await;
    assert_eq!(st, 200, "{together}");
    for (i, p) in prompts.iter().enumerate() {
        let (st, alone) = s.segment(&id, &json!({"prompts": [p]})).await;
        assert_eq!(st, 200);
        for (a, b) in alone["results"][0]["masks"]
            .as_array()
            .unwrap()
            .iter()
            .zip(together["results"][i]["masks"].as_array().unwrap())
        {
            let iou = common::rle_mask(a).iou(&common::rle_mask(b));
            assert!(iou > 0.999, "prompt {i}: IoU {iou} alone vs in one request");
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4);
        }
    }
    // One-prompt-per-flag batches still batch: the decoder saw calls of more than one.
    let calls = s
        .metric("samserve_batch_size_count", "queue=\"decoder\"")
        .await;
    let prompts_sum = s
        .metric("samserve_batch_size_sum", "queue=\"decoder\"")
        .await;
    assert!(
        prompts_sum > calls,
        "{prompts_sum} prompts in {calls} calls"
    );
}

#[tokio::test]
async fn models_lists_the_tensors_and_bytes_per_image_and_downloads_are_npz() {
    let mut cfg = common::config();
    cfg.models = vec![fixture("sam2-mini")];
    cfg.cache_dtype = samserve::config::CacheDtype::Float16;
    let s = TestServer::start(cfg).await;
    let m = &s.get_json("/v1/models").await["models"][0];
    let tensors = m["tensors"].as_array().unwrap();
    let shapes: Vec<Vec<u64>> = tensors
        .iter()
        .map(|t| {
            t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect()
        })
        .collect();
    // The mini architecture: hidden 32, so 32 x 64 x 64, 4 x 256 x 256, 8 x 128 x 128.
    assert_eq!(
        shapes,
        [
            vec![1, 32, 64, 64],
            vec![1, 4, 256, 256],
            vec![1, 8, 128, 128]
        ]
    );
    let values: u64 = shapes.iter().map(|s| s.iter().product::<u64>()).sum();
    assert_eq!(m["embedding_bytes"].as_u64(), Some(values * 4));
    let per_image = m["cache_bytes_per_image"].as_u64().unwrap();
    assert!(
        per_image >= values * 2 && per_image < values * 2 + 1024,
        "{per_image}"
    );
    let gauge = s
        .metric("samserve_cache_bytes_per_image", "model=\"sam2-mini\"")
        .await;
    assert_eq!(gauge as u64, per_image);

    let png = common::synthetic_png(200, 150, 1);
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cached = s.metric("samserve_cache_bytes", "").await as u64;
    assert_eq!(
        cached, per_image,
        "the cache holds all three tensors in float16"
    );
    for dtype in ["float32", "float16"] {
        let r = s
            .client
            .get(s.url(&format!("/v1/images/{id}/embedding?dtype={dtype}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/zip");
        let listed = r.headers()["x-samserve-embedding-tensors"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(
            listed,
            "image_embed:1,32,64,64;high_res_feats_0:1,4,256,256;high_res_feats_1:1,8,128,128"
        );
        let zip = r.bytes().await.unwrap();
        let entries = read_zip(&zip);
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "image_embed.npy",
                "high_res_feats_0.npy",
                "high_res_feats_1.npy"
            ]
        );
        let elem = if dtype == "float32" { 4 } else { 2 };
        for ((_, npy), shape) in entries.iter().zip(&shapes) {
            let hlen = u16::from_le_bytes([npy[8], npy[9]]) as usize;
            let header = std::str::from_utf8(&npy[10..10 + hlen]).unwrap();
            let dims = shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            assert!(header.contains(&format!("'shape': ({dims})")), "{header}");
            assert_eq!(
                npy.len() - 10 - hlen,
                shape.iter().product::<u64>() as usize * elem
            );
        }
    }
}

/// The entries of an uncompressed zip, read from its central directory, CRC-checked.
fn read_zip(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u16_at = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as usize;
    let u32_at = |i: usize| u32::from_le_bytes(zip[i..i + 4].try_into().unwrap()) as usize;
    let end = zip.len() - 22;
    assert_eq!(u32_at(end), 0x0605_4b50, "end of central directory");
    let (count, mut at) = (u16_at(end + 10), u32_at(end + 16));
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(u32_at(at), 0x0201_4b50);
        let (method, crc, size) = (u16_at(at + 10), u32_at(at + 16), u32_at(at + 20));
        let (name_len, offset) = (u16_at(at + 28), u32_at(at + 42));
        let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
        assert_eq!(method, 0, "stored");
        let data_at = offset + 30 + u16_at(offset + 26) + u16_at(offset + 28);
        let data = zip[data_at..data_at + size].to_vec();
        assert_eq!(crc32(&data), crc as u32, "{name}");
        out.push((name, data));
        at += 46 + name_len + u16_at(at + 30) + u16_at(at + 32);
    }
    out
}

/// CRC-32 (IEEE, reflected), bit by bit: independent of the server's crc32fast.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
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

#[test]
fn folders_that_are_not_an_exporters_pair_are_refused_with_what_was_found() {
    let base = std::env::temp_dir().join(format!("samserve-sam2-refuse-{}", std::process::id()));
    let start = |dir: &std::path::Path| {
        let mut cfg = common::config();
        cfg.models = vec![dir.to_path_buf()];
        samserve::core::engine::Engine::start(&cfg, Arc::new(samserve::metrics::Metrics::new()))
            .err()
            .map(|e| format!("{e:#}"))
            .expect("refused")
    };
    let src = fixture("sam2-mini-samexporter");
    let enc = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("encoder"))
        .unwrap();
    // Only an encoder.
    let only = base.join("only-encoder");
    std::fs::create_dir_all(&only).unwrap();
    std::fs::copy(&enc, only.join("m.encoder.onnx")).unwrap();
    let msg = start(&only);
    assert!(
        msg.contains("m.encoder.onnx") && msg.contains("*decoder*.onnx"),
        "{msg}"
    );
    // Two files, but the "decoder" is another encoder: its inputs are listed.
    let pair = base.join("two-encoders");
    std::fs::create_dir_all(&pair).unwrap();
    std::fs::copy(&enc, pair.join("m.encoder.onnx")).unwrap();
    std::fs::copy(&enc, pair.join("m.decoder.onnx")).unwrap();
    let msg = start(&pair);
    assert!(
        msg.contains("unsupported decoder signature") && msg.contains("image f32[1,3,1024,1024]"),
        "{msg}"
    );
    std::fs::remove_dir_all(&base).ok();
}

#[tokio::test]
async fn the_inferred_manifest_is_written_with_the_flag_and_loads() {
    let dir = std::env::temp_dir().join(format!("samserve-sam2-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture("sam2-mini-samexporter")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let mut cfg = common::config();
    cfg.models = vec![dir.clone()];
    cfg.write_manifest = true;
    let _s = TestServer::start(cfg.clone()).await;
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(written["family"], "sam2");
    assert_eq!(written["input_size"], 1024);
    assert!(written["encoder"].as_str().unwrap().contains("encoder"));
    // The written manifest is a manifest like any other.
    cfg.write_manifest = false;
    let s = TestServer::start(cfg).await;
    assert_eq!(
        s.get_json("/v1/models").await["models"][0]["family"],
        "sam2"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[derive(serde::Deserialize)]
struct AmgGoldens {
    cases: Vec<AmgCase>,
}

#[derive(serde::Deserialize)]
struct AmgCase {
    image: String,
    params: serde_json::Value,
    records: Vec<AmgRecord>,
}

#[derive(serde::Deserialize)]
struct AmgRecord {
    segmentation: samserve::core::masks::rle::CocoRle,
    predicted_iou: f64,
}

/// Segment everything on a SAM 2 model against `SAM2AutomaticMaskGenerator` on the same
/// weights (tests/fixtures/sam2/everything.json): the grid's points in SAM 2's frame, the
/// direct upscaling, the filters. Masks are matched one to one, best IoU first.
#[tokio::test]
async fn everything_matches_sam2s_generator() {
    let dir = common::repo().join("tests/fixtures");
    let goldens: AmgGoldens =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sam2/everything.json")).unwrap())
            .unwrap();
    let s = server(&["sam2-mini"]).await;
    for case in &goldens.cases {
        let id = s
            .upload(&std::fs::read(dir.join(&case.image)).unwrap())
            .await["image_id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = s
            .client
            .post(s.url(&format!("/v1/images/{id}/everything")))
            .json(&case.params)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        let got: Vec<_> = body["masks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let rle = serde_json::from_value(m["segmentation"].clone()).unwrap();
                (
                    samserve::core::masks::rle::decode(&rle).unwrap(),
                    m["predicted_iou"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got.len(), case.records.len(), "{}", case.image);
        let mut used = vec![false; got.len()];
        let mut ious = Vec::new();
        for w in &case.records {
            let want = samserve::core::masks::rle::decode(&w.segmentation).unwrap();
            let (j, iou) = (0..got.len())
                .filter(|&j| !used[j])
                .map(|j| (j, got[j].0.iou(&want)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            used[j] = true;
            ious.push(iou);
            assert!(
                (got[j].1 - w.predicted_iou).abs() < 1e-4,
                "{}: predicted_iou {} vs {}",
                case.image,
                got[j].1,
                w.predicted_iou
            );
        }
        let mean = ious.iter().sum::<f64>() / ious.len() as f64;
        let worst = ious.iter().cloned().fold(1.0, f64::min);
        eprintln!(
            "everything {}: {} masks, mean IoU {mean:.5}, worst {worst:.5}",
            case.image,
            ious.len()
        );
        assert!(
            mean >= 0.99 && worst >= 0.97,
            "{}: {mean} {worst}",
            case.image
        );
    }
}

/// Prompts from concurrent requests on one image share decoder calls on a SAM 2 model too,
/// and each answer is what the prompt gets alone.
#[tokio::test]
async fn concurrent_requests_batch_and_answer_as_alone() {
    let mut cfg = common::config();
    cfg.models = vec![fixture("sam2-mini")];
    cfg.decoder_workers = 1;
    cfg.max_batch_wait = 20_000;
    let s = Arc::new(TestServer::start(cfg).await);
    let png = common::synthetic_png(300, 200, 5);
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = |i: usize| {
        json!({"prompts": [{"points": [{"x": 20.0 + 25.0 * i as f64, "y": 30.0 + 15.0 * i as f64,
            "label": 1}], "multimask_output": i.is_multiple_of(2)}]})
    };
    let mut alone = Vec::new();
    for i in 0..8 {
        let (st, b) = s.segment(&id, &body(i)).await;
        assert_eq!(st, 200);
        alone.push(b);
    }
    let calls_before = s
        .metric("samserve_batch_size_count", "queue=\"decoder\"")
        .await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (s, id, b) = (s.clone(), id.clone(), body(i));
            tokio::spawn(async move { s.segment(&id, &b).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (st, b) = t.await.unwrap();
        assert_eq!(st, 200);
        for (x, y) in b["results"][0]["masks"]
            .as_array()
            .unwrap()
            .iter()
            .zip(alone[i]["results"][0]["masks"].as_array().unwrap())
        {
            assert_eq!(x["token"], y["token"]);
            assert!(common::rle_mask(x).iou(&common::rle_mask(y)) > 0.999);
        }
    }
    let calls = s
        .metric("samserve_batch_size_count", "queue=\"decoder\"")
        .await
        - calls_before;
    assert!(
        calls < 8.0,
        "8 concurrent requests took {calls} decoder calls"
    );
}

/// Text prompts search the candidates segment everything finds; on a SAM 2 model with a
/// text model they answer like on SAM.
#[tokio::test]
async fn text_prompts_work_on_a_sam2_model() {
    let dir = std::env::temp_dir().join(format!("samserve-sam2-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mini = fixture("sam2-mini");
    std::fs::write(
        dir.join("manifest.json"),
        json!({
            "name": "sam2-text",
            "family": "sam2",
            "encoder": mini.join("encoder.onnx"),
            "decoder": mini.join("decoder.onnx"),
            "input_size": 1024,
            "text": common::repo().join("models/text-minilm"),
        })
        .to_string(),
    )
    .unwrap();
    let mut cfg = common::config();
    cfg.models = vec![dir.clone()];
    // The candidate search decodes a 16 x 16 grid: minutes on busy shared cores.
    cfg.request_timeout_ms = 0;
    let s = TestServer::start(cfg).await;
    let png = std::fs::read(common::repo().join("tests/fixtures/text/scene_1700000.png")).unwrap();
    let id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = std::time::Instant::now();
    let (st, body) = s
        .segment(
            &id,
            &json!({"prompts": [{"text": "the blue star", "max_masks": 3}]}),
        )
        .await;
    eprintln!("sam2 text prompt: {} ms", t.elapsed().as_millis());
    assert_eq!(st, 200, "{body}");
    let masks = body["results"][0]["masks"].as_array().unwrap();
    assert!(!masks.is_empty());
    assert!(masks.iter().all(|m| m["text_score"].is_f64()), "{body}");
    std::fs::remove_dir_all(&dir).ok();
}
