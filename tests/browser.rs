//! The page at `/` in a real browser: Debian's Chromium driven by playwright-core
//! (tests/browser/page.test.mjs) against the real server on a loopback port. Then the COCO
//! file the page exported is decoded with the Rust RLE decoder and compared with what the
//! API returns for the same prompts.
//!
//! Needs `node`, `/usr/bin/chromium` (or `SAMSERVE_CHROMIUM`) and tests/browser/node_modules:
//! `make browser-deps` installs them (`make test` runs it first). Without them the test
//! fails with that hint; `SAMSERVE_SKIP_BROWSER_TESTS=1` skips it explicitly.

mod common;

use std::path::PathBuf;
use std::process::Command;

use samserve::core::masks::rle::{decode, CocoRle};
use serde_json::{json, Value};

fn chromium() -> PathBuf {
    std::env::var_os("SAMSERVE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Whether the browser toolchain is there; panics with the fix when it is not (unless the
/// skip is asked for explicitly).
fn toolchain_ready() -> bool {
    let skip = std::env::var("SAMSERVE_SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1");
    let node = Command::new("node").arg("--version").output().is_ok();
    let pw = common::repo()
        .join("tests/browser/node_modules/playwright-core/package.json")
        .exists();
    let missing: Vec<&str> = [
        (!node).then_some("node"),
        (!chromium().exists()).then_some("chromium"),
        (!pw).then_some("tests/browser/node_modules (npm ci)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return true;
    }
    if skip {
        eprintln!("browser test skipped (SAMSERVE_SKIP_BROWSER_TESTS=1); missing: {missing:?}");
        return false;
    }
    panic!(
        "browser test prerequisites missing: {missing:?}; run `make browser-deps` \
         (or set SAMSERVE_SKIP_BROWSER_TESTS=1 to skip explicitly)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_works_in_chromium() {
    if !toolchain_ready() {
        return;
    }
    let s = common::TestServer::default().await;
    run_page(&s, "browser", false).await;
}

/// The same page session on a SAM 2 model (the test model of tests/sam2.rs with the text
/// model): its three-tensor embeddings, stretched frame and single-mask rule behind the
/// same API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_works_on_a_sam2_model() {
    if !toolchain_ready() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("samserve-page-sam2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mini = common::repo().join("tests/fixtures/models/sam2-mini");
    std::fs::write(
        dir.join("manifest.json"),
        json!({
            "name": "sam2-mini-text",
            "family": "sam2",
            "encoder": mini.join("encoder.onnx"),
            "decoder": mini.join("decoder.onnx"),
            "input_size": 1024,
            "description": "SAM 2.1 test model with random weights (not a segmentation model)",
            "text": common::repo().join("models/text-minilm"),
        })
        .to_string(),
    )
    .unwrap();
    let mut cfg = common::config();
    cfg.models = vec![dir.clone()];
    cfg.request_timeout_ms = 0;
    let s = common::TestServer::start(cfg).await;
    run_page(&s, "browser-sam2", true).await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs tests/browser/page.test.mjs against `s`; `untrained`: the model has random weights
/// (no checks of mask quality against the scenes' ground truth).
async fn run_page(s: &common::TestServer, name: &str, untrained: bool) {
    let out = common::repo().join("target").join(name);
    let _ = std::fs::remove_file(out.join("coco.json"));
    let script = common::repo().join("tests/browser/page.test.mjs");
    let base = s.base.clone();
    let out2 = out.clone();
    let result = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(["--base", &base])
            .arg("--out")
            .arg(&out2)
            .args(["--untrained", if untrained { "1" } else { "0" }])
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        result.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );

    // The exported COCO file: each annotation's RLE equals the mask the API returns for the
    // annotation's prompt (same image, model and mask token), pixel for pixel.
    let coco: Value =
        serde_json::from_slice(&std::fs::read(out.join("coco.json")).unwrap()).unwrap();
    let image = &coco["images"][0];
    let image_id = image["samserve_image_id"].as_str().unwrap();
    let (w, h) = (
        image["width"].as_u64().unwrap(),
        image["height"].as_u64().unwrap(),
    );
    let anns = coco["annotations"].as_array().unwrap();
    assert!(!anns.is_empty());
    for a in anns {
        let exported: CocoRle = serde_json::from_value(a["segmentation"].clone()).unwrap();
        assert_eq!(exported.size, [h as u32, w as u32]);
        let exported = decode(&exported).unwrap();
        let prompt = &a["samserve"]["prompt"];
        let token = a["samserve"]["token"].as_u64().unwrap();
        let (status, body) = s.segment(image_id, &json!({ "prompts": [prompt] })).await;
        assert_eq!(status, 200, "{body}");
        let mask = body["results"][0]["masks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["token"].as_u64() == Some(token))
            .unwrap_or_else(|| panic!("no mask with token {token} in {body}"));
        let api = common::rle_mask(mask);
        assert!(
            api.width == exported.width
                && api.height == exported.height
                && api.data == exported.data,
            "annotation {} differs from the API",
            a["id"]
        );
        assert_eq!(a["area"], mask["area"]);
        assert_eq!(a["bbox"], mask["bbox"]);
    }
    eprintln!(
        "COCO export: {} annotations equal the API's masks",
        anns.len()
    );
    assert!(out.join("page.png").exists(), "no screenshot");
}

/// `/docs` in Chromium with every request outside the server blocked: Swagger UI renders the
/// document, and try-it-out calls the running server (a plain GET and one with a path
/// parameter). tests/browser/docs.test.mjs does the clicking; it saves target/browser/docs.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_work_offline_with_try_it_out_in_chromium() {
    if !toolchain_ready() {
        return;
    }
    let s = common::TestServer::default().await;
    let png = common::synthetic_png(96, 64, 4);
    let image_id = s.upload(&png).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = common::repo().join("target/browser");
    let _ = std::fs::remove_file(out.join("docs.png"));
    let script = common::repo().join("tests/browser/docs.test.mjs");
    let base = s.base.clone();
    let out2 = out.clone();
    let result = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(["--base", &base, "--image-id", &image_id])
            .arg("--out")
            .arg(&out2)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        result.status.success(),
        "docs browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(out.join("docs.png").exists(), "no screenshot");
    // Try-it-out reached the server: the calls are in its own request counter.
    assert!(
        s.metric(
            "samserve_http_requests_total",
            "method=\"GET\",route=\"/v1/images/{image_id}\",status=\"200\""
        )
        .await
            >= 1.0
    );
}
