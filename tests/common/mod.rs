//! Shared helpers for the integration tests: a real server on a loopback port.
#![allow(dead_code)]

pub mod child;
pub mod parity_cases;
pub mod redis;
pub mod sam2_cases;
pub mod vectors;

use std::path::PathBuf;
use std::sync::Arc;

use samserve::config::Config;
use samserve::core::engine::Engine;
use samserve::http::{router, AppState};
use samserve::metrics::Metrics;

/// A running server.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    _task: tokio::task::JoinHandle<()>,
}

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Default test configuration (embedded default model).
pub fn config() -> Config {
    Config::defaults()
}

impl TestServer {
    /// Starts the real router with the real engine on 127.0.0.1 and an ephemeral port.
    pub async fn start(config: Config) -> TestServer {
        let metrics = Arc::new(Metrics::new());
        let engine = {
            let (config, metrics) = (config.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || Engine::start(&config, metrics))
                .await
                .unwrap()
                .expect("engine starts")
        };
        let app = router(
            AppState::ready(engine, config.max_body_bytes)
                .with_request_timeout(Some(std::time::Duration::from_millis(
                    config.request_timeout_ms,
                )))
                .with_exposure(&config.exposure)
                .expect("exposure flags"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = samserve::http::serve::ServeOptions::from_config(&config);
        let task = tokio::spawn(async move {
            samserve::http::serve::serve(listener, app, opts, metrics, std::future::pending())
                .await
                .unwrap();
        });
        TestServer {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _task: task,
        }
    }

    /// Starts with the default configuration.
    pub async fn default() -> TestServer {
        Self::start(config()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GETs a path and parses the JSON body (any status).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Uploads raw image bytes and returns the JSON answer.
    pub async fn upload(&self, bytes: &[u8]) -> serde_json::Value {
        let r = self
            .client
            .post(self.url("/v1/images"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "upload failed: {}",
            r.text().await.unwrap()
        );
        r.json().await.unwrap()
    }

    /// POSTs a segment request and returns (status, JSON body).
    pub async fn segment(
        &self,
        image_id: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.url(&format!("/v1/images/{image_id}/segment")))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Reads one metric sample (sum over matching label sets) from /metrics.
    pub async fn metric(&self, name: &str, label_filter: &str) -> f64 {
        metric_at(&self.client, &self.base, name, label_filter).await
    }
}

/// Sum of the samples of metric `name` whose labels contain `label_filter`, scraped from
/// `{base}/metrics` (any server: a TestServer or a child process).
pub async fn metric_at(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    label_filter: &str,
) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let (head, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let metric = head.split('{').next().unwrap_or("");
            metric == name && head.contains(label_filter)
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A deterministic test image: smooth background with a few filled shapes.
pub fn synthetic_png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let cx = (w / 2) as i64 + (seed as i64 % 7) * 3;
        let cy = (h / 2) as i64;
        let dx = x as i64 - cx;
        let dy = y as i64 - cy;
        let r = (w.min(h) / 4) as i64;
        if dx * dx + dy * dy < r * r {
            image::Rgb([220, 40 + (seed % 50) as u8, 40])
        } else if x < w / 5 && y < h / 3 {
            image::Rgb([30, 200, 60])
        } else {
            image::Rgb([
                (x * 255 / w.max(1)) as u8 / 3 + 60,
                (y * 255 / h.max(1)) as u8 / 3 + 60,
                150,
            ])
        }
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Decodes a response mask in COCO RLE form with our decoder.
pub fn rle_mask(m: &serde_json::Value) -> samserve::core::masks::BinaryMask {
    let rle: samserve::core::masks::rle::CocoRle =
        serde_json::from_value(m["rle"].clone()).expect("rle field");
    samserve::core::masks::rle::decode(&rle).expect("valid rle")
}
