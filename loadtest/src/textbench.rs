//! Text-prompt latency: on images whose embedding is already cached, the first text query
//! (which builds the image's candidate masks and their region vectors) and repeated
//! queries with new phrases (text encoder + scoring only), one request at a time.
//! Skipped, with a note, when the server's model takes no text.

use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::gen;
use crate::stats::percentile;

const COLOURS: &[&str] = &[
    "red", "blue", "green", "yellow", "purple", "orange", "pink", "cyan", "dark", "pale",
];
const SHAPES: &[&str] = &[
    "rectangle",
    "ellipse",
    "square",
    "circle",
    "disc",
    "box",
    "oval",
    "block",
];
const PLACES: &[&str] = &[
    "on the left",
    "on the right",
    "at the top",
    "at the bottom",
    "in the middle",
    "",
];

/// The n-th phrase: distinct for n < 480, so every query in a run sends a phrase the
/// server has not seen (the phrase cache is keyed by text, not by image).
fn phrase(n: usize) -> String {
    let c = COLOURS[n % COLOURS.len()];
    let s = SHAPES[(n / COLOURS.len()) % SHAPES.len()];
    let p = PLACES[(n / (COLOURS.len() * SHAPES.len())) % PLACES.len()];
    format!("the {c} {s} {p}").trim_end().to_string()
}

/// `samserve-loadtest text`: the text run of `bench` against a running server.
#[derive(Debug, Clone, clap::Args)]
pub struct TextArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Images (each gets a first query, then the repeated ones).
    #[arg(long, default_value_t = 5)]
    pub images: usize,
    /// New phrases per image after the first.
    #[arg(long, default_value_t = 9)]
    pub repeats: usize,
    /// Image size, WxH.
    #[arg(long, default_value = "640x480", value_parser = crate::scenario::parse_size)]
    pub image_size: (u32, u32),
    /// Seed of the images (the clock is mixed in, so candidates are never cached yet).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also write the measurements here as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What the text bench measured.
#[derive(Debug, Clone, Serialize)]
pub struct TextLatency {
    /// Images measured.
    pub images: usize,
    /// Size of each image, WxH.
    pub image_size: (u32, u32),
    /// First text query per image, ms (sorted).
    pub first_ms: Vec<f64>,
    /// Later queries with a phrase new to that image, ms (sorted).
    pub repeated_ms: Vec<f64>,
    /// The run's first phrase again on each image after its other queries (phrase and
    /// candidates cached): the floor of the text path, ms (sorted).
    pub cached_phrase_ms: Vec<f64>,
    pub first_p50_ms: f64,
    pub repeated_p50_ms: f64,
    pub repeated_p90_ms: f64,
    pub cached_phrase_p50_ms: f64,
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let r = c.post(url).json(body).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// Whether the server's model declares a text model (`GET /v1/models`; the bench starts
/// the server with one model).
pub async fn supported(base: &str) -> anyhow::Result<bool> {
    let v: Value = reqwest::get(format!("{base}/v1/models"))
        .await?
        .json()
        .await?;
    Ok(v["models"].as_array().is_some_and(|ms| {
        ms.iter()
            .any(|m| m.get("text").is_some_and(|t| !t.is_null()))
    }))
}

/// Measures `images` scenes of `size`, `repeats` new phrases each after the first.
pub async fn run(
    base: &str,
    images: usize,
    repeats: usize,
    size: (u32, u32),
    seed: u64,
) -> anyhow::Result<TextLatency> {
    let c = reqwest::Client::new();
    let repeats = repeats.min((470 / images.max(1)).saturating_sub(1));
    let mut next = 0usize;
    let (mut first, mut repeated, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..images {
        // Fresh pixels per run (the clock in the seed), so no candidates are cached yet.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let png = gen::png(&gen::scene(size.0, size.1, seed ^ clock ^ i as u64));
        let up: Value = c
            .post(format!("{base}/v1/images"))
            .header("content-type", "image/png")
            .body(png)
            .send()
            .await?
            .error_for_status()
            .context("uploading a text-bench image")?
            .json()
            .await?;
        let id = up["image_id"]
            .as_str()
            .context("upload answer has no image_id")?;
        let url = format!("{base}/v1/images/{id}/segment");
        let timed = |p: &str| {
            let (c, url) = (c.clone(), url.clone());
            let body = json!({"prompts": [{"text": p}]});
            async move {
                let t = Instant::now();
                let (status, v) = post(&c, &url, &body).await?;
                if status != 200 {
                    bail!("text query answered {status}: {v}");
                }
                Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1e3)
            }
        };
        let mut fresh = || {
            next += 1;
            phrase(next - 1)
        };
        first.push(timed(&fresh()).await?);
        for _ in 0..repeats {
            repeated.push(timed(&fresh()).await?);
        }
        // The very first phrase of the run again: phrase and candidates both cached.
        cached.push(timed(&phrase(0)).await?);
    }
    for v in [&mut first, &mut repeated, &mut cached] {
        v.sort_by(f64::total_cmp);
    }
    Ok(TextLatency {
        images,
        image_size: size,
        first_p50_ms: percentile(&first, 50.0),
        repeated_p50_ms: percentile(&repeated, 50.0),
        repeated_p90_ms: percentile(&repeated, 90.0),
        cached_phrase_p50_ms: percentile(&cached, 50.0),
        first_ms: first,
        repeated_ms: repeated,
        cached_phrase_ms: cached,
    })
}

/// One Markdown table row set for bench.md.
pub fn markdown(t: &TextLatency) -> String {
    format!(
        "\n## Text prompts (cached image, one request at a time)\n\n\
         | query | n | p50 ms | p90 ms |\n|---|---:|---:|---:|\n\
         | first on an image (candidates built) | {} | {:.1} | {:.1} |\n\
         | repeated, new phrase | {} | {:.1} | {:.1} |\n\
         | repeated, phrase seen before | {} | {:.1} | {:.1} |\n\n\
         {} images of {}x{}; target: repeated p50 <= 30 ms on 2 cores with the default model.\n",
        t.first_ms.len(),
        t.first_p50_ms,
        percentile(&t.first_ms, 90.0),
        t.repeated_ms.len(),
        t.repeated_p50_ms,
        t.repeated_p90_ms,
        t.cached_phrase_ms.len(),
        t.cached_phrase_p50_ms,
        percentile(&t.cached_phrase_ms, 90.0),
        t.images,
        t.image_size.0,
        t.image_size.1,
    )
}
