//! Scenarios: what the images are, and what each request looks like.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::gen;
use crate::rng::{mix, Rng};

/// A named traffic pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// 1-3 click prompts (one prompt) on one of a few cached images; output rle.
    Interactive,
    /// 20-100 random boxes (one request, multimask off) on one cached image; output rle.
    Detector,
    /// Every request uploads a new, never-seen image: encoder-bound.
    Cold,
    /// Requests drawn from `--mix` (default 70% interactive, 20% detector, 10% cold).
    Mixed,
    /// `--mix` traffic at `--overload-factor` x `--concurrency`, then a recovery phase.
    Overload,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Scenario::Interactive => "interactive",
            Scenario::Detector => "detector",
            Scenario::Cold => "cold",
            Scenario::Mixed => "mixed",
            Scenario::Overload => "overload",
        };
        f.write_str(s)
    }
}

/// Knobs shared by every scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct WorkloadArgs {
    /// Seed of images and prompts (cold images also mix in the clock, so they stay new
    /// across runs against a long-lived server).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct cached images the interactive traffic clicks on.
    #[arg(long, default_value_t = 4)]
    pub images: usize,
    /// Size of the cached (interactive / detector) images, WxH.
    #[arg(long, default_value = "640x480", value_parser = parse_size)]
    pub image_size: (u32, u32),
    /// Size of the images uploaded by cold requests, WxH.
    #[arg(long, default_value = "320x240", value_parser = parse_size)]
    pub cold_size: (u32, u32),
    /// Most clicks (points) in an interactive prompt; each request draws 1..=this.
    #[arg(long, default_value_t = 3)]
    pub max_clicks: u64,
    /// Fewest boxes in a detector request.
    #[arg(long, default_value_t = 20)]
    pub min_boxes: u64,
    /// Most boxes in a detector request.
    #[arg(long, default_value_t = 100)]
    pub max_boxes: u64,
    /// Traffic mix of `mixed` and `overload`, as weights.
    #[arg(long, default_value = "interactive=70,detector=20,cold=10", value_parser = parse_mix)]
    pub mix: Mix,
    /// Model name sent as `?model=` (server default when absent).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Client-side timeout of one request, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// On 429 a client sleeps for Retry-After, capped at this many ms (0: retry at once).
    #[arg(long, default_value_t = 1000)]
    pub retry_after_cap_ms: u64,
}

/// Weights of request kinds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mix {
    pub interactive: u32,
    pub detector: u32,
    pub cold: u32,
}

pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or("expected WxH, e.g. 640x480")?;
    let w: u32 = w.trim().parse().map_err(|e| format!("width: {e}"))?;
    let h: u32 = h.trim().parse().map_err(|e| format!("height: {e}"))?;
    if w < 16 || h < 16 || w > 8192 || h > 8192 {
        return Err("sides must be within 16..=8192".into());
    }
    Ok((w, h))
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut m = Mix {
        interactive: 0,
        detector: 0,
        cold: 0,
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or("expected kind=weight,...")?;
        let v: u32 = v.trim().parse().map_err(|e| format!("{k}: {e}"))?;
        match k.trim() {
            "interactive" => m.interactive = v,
            "detector" => m.detector = v,
            "cold" => m.cold = v,
            other => {
                return Err(format!(
                    "unknown kind '{other}' (interactive, detector, cold)"
                ))
            }
        }
    }
    if m.interactive + m.detector + m.cold == 0 {
        return Err("all weights are zero".into());
    }
    Ok(m)
}

/// An image the server holds an embedding for.
#[derive(Debug, Clone, Serialize)]
pub struct CachedImage {
    pub id: String,
    pub width: u32,
    pub height: u32,
}

/// The kind of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Interactive,
    Detector,
    Cold,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Interactive => "interactive",
            Kind::Detector => "detector",
            Kind::Cold => "cold",
        }
    }
}

/// One ready-to-send request.
pub struct Request {
    pub kind: Kind,
    /// Extra class it is also counted under (e.g. single-click interactive requests).
    pub tag: Option<&'static str>,
    pub url: String,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// Prompts it carries (0 for uploads).
    pub prompts: u64,
}

/// Everything the clients of one run share: the cached images and the request recipe.
pub struct Workload {
    base: String,
    query: String,
    args: WorkloadArgs,
    weights: Mix,
    images: Vec<CachedImage>,
    detector_image: Option<CachedImage>,
    cold_seed: u64,
    cold_counter: AtomicU64,
}

/// Tag of interactive requests with a single click (the "1-click latency").
pub const ONE_CLICK: &str = "interactive_1click";

impl Workload {
    /// Uploads what `scenario` needs and returns the recipe. `base` is the server's URL.
    pub async fn setup(
        client: &reqwest::Client,
        base: &str,
        scenario: Scenario,
        args: &WorkloadArgs,
    ) -> anyhow::Result<Workload> {
        let weights = match scenario {
            Scenario::Interactive => Mix {
                interactive: 1,
                detector: 0,
                cold: 0,
            },
            Scenario::Detector => Mix {
                interactive: 0,
                detector: 1,
                cold: 0,
            },
            Scenario::Cold => Mix {
                interactive: 0,
                detector: 0,
                cold: 1,
            },
            Scenario::Mixed | Scenario::Overload => args.mix,
        };
        if args.min_boxes == 0 || args.min_boxes > args.max_boxes {
            bail!("need 1 <= --min-boxes <= --max-boxes");
        }
        if args.max_clicks == 0 {
            bail!("--max-clicks must be at least 1");
        }
        let query = match &args.model_name {
            Some(m) => format!("?model={m}"),
            None => String::new(),
        };
        let base = base.trim_end_matches('/').to_string();
        let (w, h) = args.image_size;
        let mut images = Vec::new();
        if weights.interactive > 0 {
            for i in 0..args.images.max(1) {
                let png = gen::png(&gen::scene(w, h, mix(args.seed, 1000 + i as u64)));
                images.push(upload(client, &base, &query, png).await?);
            }
        }
        let detector_image = if weights.detector > 0 {
            let png = gen::png(&gen::scene(w, h, mix(args.seed, 999)));
            Some(upload(client, &base, &query, png).await?)
        } else {
            None
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Workload {
            base,
            query,
            args: args.clone(),
            weights,
            images,
            detector_image,
            cold_seed: mix(args.seed, clock),
            cold_counter: AtomicU64::new(0),
        })
    }

    /// The images uploaded at setup.
    pub fn cached_images(&self) -> usize {
        self.images.len() + self.detector_image.is_some() as usize
    }

    /// Draws the next request.
    pub fn next(&self, rng: &mut Rng) -> Request {
        let Mix {
            interactive,
            detector,
            cold,
        } = self.weights;
        let pick = rng.below((interactive + detector + cold) as u64) as u32;
        if pick < interactive {
            self.interactive(rng)
        } else if pick < interactive + detector {
            self.detector(rng)
        } else {
            self.cold()
        }
    }

    fn segment_url(&self, img: &CachedImage) -> String {
        format!("{}/v1/images/{}/segment{}", self.base, img.id, self.query)
    }

    fn interactive(&self, rng: &mut Rng) -> Request {
        let img = &self.images[rng.below(self.images.len() as u64) as usize];
        let clicks = rng.between(1, self.args.max_clicks);
        let points: Vec<_> = (0..clicks)
            .map(|i| {
                json!({
                    "x": rng.below(img.width as u64),
                    "y": rng.below(img.height as u64),
                    // The first click is foreground; refinements are either.
                    "label": if i == 0 { 1 } else { rng.below(2) },
                })
            })
            .collect();
        let body = json!({"prompts": [{"points": points}], "output": "rle"});
        Request {
            kind: Kind::Interactive,
            tag: (clicks == 1).then_some(ONE_CLICK),
            url: self.segment_url(img),
            body: serde_json::to_vec(&body).expect("json"),
            content_type: "application/json",
            prompts: 1,
        }
    }

    fn detector(&self, rng: &mut Rng) -> Request {
        let img = self
            .detector_image
            .as_ref()
            .expect("detector image uploaded at setup");
        let n = rng.between(self.args.min_boxes, self.args.max_boxes);
        let (w, h) = (img.width as u64, img.height as u64);
        let prompts: Vec<_> = (0..n)
            .map(|_| {
                let x0 = rng.below(w.saturating_sub(8).max(1));
                let y0 = rng.below(h.saturating_sub(8).max(1));
                let x1 = rng.between((x0 + 4).min(w - 1), w - 1);
                let y1 = rng.between((y0 + 4).min(h - 1), h - 1);
                json!({"box": [x0, y0, x1, y1]})
            })
            .collect();
        let body = json!({"prompts": prompts, "multimask_output": false, "output": "rle"});
        Request {
            kind: Kind::Detector,
            tag: None,
            url: self.segment_url(img),
            body: serde_json::to_vec(&body).expect("json"),
            content_type: "application/json",
            prompts: n,
        }
    }

    fn cold(&self) -> Request {
        let k = self.cold_counter.fetch_add(1, Ordering::Relaxed);
        let (w, h) = self.args.cold_size;
        let png = gen::png(&gen::unique_pattern(w, h, mix(self.cold_seed, k)));
        Request {
            kind: Kind::Cold,
            tag: None,
            url: format!("{}/v1/images{}", self.base, self.query),
            body: png,
            content_type: "image/png",
            prompts: 0,
        }
    }
}

#[derive(Deserialize)]
struct UploadAnswer {
    image_id: String,
    width: u32,
    height: u32,
}

/// Uploads an image, retrying while the server is busy (429) or loading (503), and checks
/// that the id is the blake3 hash of the bytes.
pub async fn upload(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    png: Vec<u8>,
) -> anyhow::Result<CachedImage> {
    let expect = blake3::hash(&png).to_hex().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let resp = client
            .post(format!("{base}/v1/images{query}"))
            .header("content-type", "image/png")
            .body(png.clone())
            .send()
            .await
            .with_context(|| format!("uploading to {base}"))?;
        let status = resp.status();
        if status.is_success() {
            let a: UploadAnswer = resp.json().await.context("upload answer")?;
            if a.image_id != expect {
                bail!(
                    "server returned image_id {} for bytes hashing to {expect}",
                    a.image_id
                );
            }
            return Ok(CachedImage {
                id: a.image_id,
                width: a.width,
                height: a.height,
            });
        }
        if (status.as_u16() == 429 || status.as_u16() == 503) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let text = resp.text().await.unwrap_or_default();
        return Err(anyhow!("setup upload failed: {status}: {text}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_mixes() {
        assert_eq!(parse_size("640x480"), Ok((640, 480)));
        assert!(parse_size("640").is_err());
        let m = parse_mix("interactive=7, cold=3").unwrap();
        assert_eq!((m.interactive, m.detector, m.cold), (7, 0, 3));
        assert!(parse_mix("foo=1").is_err());
        assert!(parse_mix("cold=0").is_err());
    }
}
