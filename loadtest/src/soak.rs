//! `soak`: a long run of mixed traffic against a server with a small cache, sampling the
//! server's resident memory and its cache gauge, to show that memory stays bounded and that
//! nothing answers 5xx while images are uploaded, evicted, clicked, boxed, segmented
//! everything, refined and abandoned mid-request.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;

use crate::bench::Server;
use crate::promscrape::Scrape;
use crate::rng::{mix, Rng};
use crate::{gen, load};

/// Flags of `samserve-loadtest soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Server binary to start (its log goes to `<out>/server.log`).
    #[arg(long, default_value = "target/release/samserve")]
    pub server_bin: PathBuf,
    /// Path to libonnxruntime.so for the server.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Concurrent client loops.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// The server's `--cache-bytes` (small, so that uploads keep evicting).
    #[arg(long, default_value_t = 16 << 20)]
    pub cache_bytes: u64,
    /// The server's `--image-store-bytes`.
    #[arg(long, default_value_t = 16 << 20)]
    pub image_store_bytes: u64,
    /// The server's `--mask-store-bytes`.
    #[arg(long, default_value_t = 16 << 20)]
    pub mask_store_bytes: u64,
    /// The documented constant of the memory bound, MiB: resident memory must stay within
    /// the three budgets above plus this (model weights, ONNX Runtime's arenas, the
    /// allocator's retained pages, request buffers).
    #[arg(long, default_value_t = 768)]
    pub rss_constant_mib: u64,
    /// Size of the uploaded images, WxH.
    #[arg(long, default_value = "320x240", value_parser = crate::scenario::parse_size)]
    pub image_size: (u32, u32),
    /// Seed of images and choices.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Report directory (`soak.json`, `server.log`).
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
}

/// One memory and cache sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_bytes: u64,
    pub cache_bytes: f64,
}

/// What the soak saw.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub duration_s: f64,
    pub clients: usize,
    pub cache_budget_bytes: u64,
    pub image_store_budget_bytes: u64,
    pub mask_store_budget_bytes: u64,
    pub rss_constant_bytes: u64,
    /// `cache + image store + mask store + constant`.
    pub rss_bound_bytes: u64,
    /// Requests per `action status` (`status` is `abandoned` for deliberate disconnects,
    /// `transport` for unexpected client-side failures).
    pub outcomes: BTreeMap<String, u64>,
    pub requests: u64,
    pub server_errors: u64,
    pub first_server_errors: Vec<String>,
    pub transport_errors: u64,
    pub rss_idle_bytes: u64,
    pub rss_min_bytes: u64,
    pub rss_max_bytes: u64,
    pub rss_last_bytes: u64,
    pub cache_bytes_max: f64,
    pub cache_misses: f64,
    pub samples: Vec<Sample>,
    pub passed: bool,
}

fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[derive(Clone)]
struct Image {
    id: String,
    w: u32,
    h: u32,
}

/// State shared by the client loops.
struct Shared {
    base: String,
    client: reqwest::Client,
    images: Mutex<VecDeque<Image>>,
    handles: Mutex<VecDeque<(String, String)>>,
    outcomes: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
    size: (u32, u32),
}

impl Shared {
    fn count(&self, action: &str, outcome: &str) {
        *self
            .outcomes
            .lock()
            .unwrap()
            .entry(format!("{action} {outcome}"))
            .or_default() += 1;
    }

    fn pick(&self, rng: &mut Rng) -> Option<Image> {
        let images = self.images.lock().unwrap();
        (!images.is_empty()).then(|| images[rng.below(images.len() as u64) as usize].clone())
    }

    /// Records the answer; returns its JSON body on success.
    async fn finish(
        &self,
        action: &str,
        r: reqwest::Result<reqwest::Response>,
    ) -> Option<serde_json::Value> {
        match r {
            Ok(resp) => {
                let status = resp.status().as_u16();
                self.count(action, &status.to_string());
                let body = resp.text().await.unwrap_or_default();
                if status >= 500 {
                    let mut e = self.errors.lock().unwrap();
                    if e.len() < 20 {
                        e.push(format!("{action}: {status} {body}"));
                    }
                }
                if status == 200 {
                    serde_json::from_str(&body).ok()
                } else {
                    None
                }
            }
            Err(e) => {
                self.count(action, "transport");
                let mut errs = self.errors.lock().unwrap();
                if errs.len() < 20 {
                    errs.push(format!("{action}: transport: {e}"));
                }
                None
            }
        }
    }
}

async fn upload(s: &Shared, rng: &mut Rng) {
    let png = gen::png(&gen::scene(s.size.0, s.size.1, rng.next_u64()));
    let r = s
        .client
        .post(format!("{}/v1/images", s.base))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await;
    if let Some(v) = s.finish("upload", r).await {
        let img = Image {
            id: v["image_id"].as_str().unwrap_or_default().to_string(),
            w: v["width"].as_u64().unwrap_or(1) as u32,
            h: v["height"].as_u64().unwrap_or(1) as u32,
        };
        let mut images = s.images.lock().unwrap();
        images.push_back(img);
        if images.len() > 48 {
            images.pop_front();
        }
    }
}

async fn segment(s: &Shared, action: &str, body: serde_json::Value, img: &Image) {
    let r = s
        .client
        .post(format!("{}/v1/images/{}/segment", s.base, img.id))
        .json(&body)
        .send()
        .await;
    if let Some(v) = s.finish(action, r).await {
        if let Some(h) = v
            .pointer("/results/0/masks/0/logits_handle")
            .and_then(|h| h.as_str())
        {
            let mut handles = s.handles.lock().unwrap();
            handles.push_back((img.id.clone(), h.to_string()));
            if handles.len() > 32 {
                handles.pop_front();
            }
        }
    }
}

/// One request of the mix.
async fn step(s: &Shared, rng: &mut Rng) {
    let roll = rng.below(100);
    let Some(img) = s.pick(rng).filter(|_| roll >= 15) else {
        return upload(s, rng).await;
    };
    let pt = |rng: &mut Rng| json!({"x": rng.below(img.w as u64), "y": rng.below(img.h as u64)});
    match roll {
        15..=49 => {
            let points: Vec<_> = (0..1 + rng.below(3)).map(|_| pt(rng)).collect();
            let body = json!({"prompts": [{"points": points}], "return_logits": true});
            segment(s, "click", body, &img).await;
        }
        50..=64 => {
            let boxes: Vec<_> = (0..1 + rng.below(8))
                .map(|_| {
                    let (x0, y0) = (rng.below(img.w as u64 / 2), rng.below(img.h as u64 / 2));
                    let (x1, y1) = (
                        x0 + 1 + rng.below(img.w as u64 / 2),
                        y0 + 1 + rng.below(img.h as u64 / 2),
                    );
                    json!({"box": [x0, y0, x1, y1]})
                })
                .collect();
            segment(
                s,
                "boxes",
                json!({"prompts": boxes, "output": "polygon"}),
                &img,
            )
            .await;
        }
        65..=71 => {
            let handle = {
                let h = s.handles.lock().unwrap();
                h.iter()
                    .rev()
                    .find(|(id, _)| *id == img.id)
                    .map(|(_, h)| h.clone())
            };
            let Some(handle) = handle else {
                return segment(
                    s,
                    "click",
                    json!({"prompts": [{"points": [pt(rng)]}]}),
                    &img,
                )
                .await;
            };
            let body = json!({"prompts": [{"points": [pt(rng)], "mask_input": handle}]});
            segment(s, "refine", body, &img).await;
        }
        72..=77 => {
            let body = json!({"points_per_side": 4 + rng.below(5), "output": "rle"});
            let r = s
                .client
                .post(format!("{}/v1/images/{}/everything", s.base, img.id))
                .json(&body)
                .send()
                .await;
            s.finish("everything", r).await;
        }
        78..=81 => {
            let png = gen::png(&gen::scene(s.size.0, s.size.1, rng.next_u64()));
            let b64 = base64::engine::general_purpose::STANDARD.encode(png);
            let body = json!({"image": b64, "prompts": [{"points": [pt(rng)]}]});
            let r = s
                .client
                .post(format!("{}/v1/segment", s.base))
                .json(&body)
                .send()
                .await;
            s.finish("oneshot", r).await;
        }
        _ => abandon(s, rng, &img).await,
    }
}

/// A request the client gives up on: a new upload cut off by a short client timeout, a body
/// that stops half way and a closed socket, or a streamed segment-everything dropped after
/// its first line.
async fn abandon(s: &Shared, rng: &mut Rng, img: &Image) {
    match rng.below(3) {
        0 => {
            let png = gen::png(&gen::scene(s.size.0, s.size.1, rng.next_u64()));
            let r = s
                .client
                .post(format!("{}/v1/images", s.base))
                .header("content-type", "image/png")
                .timeout(Duration::from_millis(5 + rng.below(60)))
                .body(png)
                .send()
                .await;
            match r {
                Ok(resp) => {
                    s.finish("abandon-upload", Ok(resp)).await;
                }
                Err(_) => s.count("abandon-upload", "abandoned"),
            }
        }
        1 => {
            let addr = s.base.trim_start_matches("http://").to_string();
            let body = gen::png(&gen::scene(64, 48, rng.next_u64()));
            let pause = Duration::from_millis(rng.below(200));
            // A blocking socket on a blocking thread: the loop only needs to write and drop.
            let half = tokio::task::spawn_blocking(move || {
                use std::io::Write as _;
                let mut c = std::net::TcpStream::connect(&addr)?;
                let head = "POST /v1/images HTTP/1.1\r\nHost: soak\r\nContent-Type: image/png\r\n\
                            Content-Length: 200000\r\n\r\n";
                c.write_all(head.as_bytes())?;
                c.write_all(&body)?;
                std::thread::sleep(pause);
                std::io::Result::Ok(())
            });
            match half.await {
                Ok(Ok(())) => s.count("abandon-half-body", "abandoned"),
                _ => s.count("abandon-half-body", "transport"),
            }
        }
        _ => {
            let r = s
                .client
                .post(format!("{}/v1/images/{}/everything", s.base, img.id))
                .header("accept", "application/x-ndjson")
                .json(&json!({"points_per_side": 8}))
                .send()
                .await;
            match r {
                Ok(mut resp) if resp.status() == 200 => {
                    let _ = resp.chunk().await;
                    s.count("abandon-stream", "abandoned");
                }
                other => {
                    s.finish("abandon-stream", other).await;
                }
            }
        }
    }
}

/// Runs the soak and writes `<out>/soak.json`; fails on any 5xx, a cache gauge above its
/// budget or resident memory above the bound.
pub async fn run(a: SoakArgs) -> anyhow::Result<SoakReport> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let args: Vec<String> = [
        ("--cache-bytes", a.cache_bytes),
        ("--image-store-bytes", a.image_store_bytes),
        ("--mask-store-bytes", a.mask_store_bytes),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .chain(["--log-format".into(), "json".into()])
    .collect();
    let mut server = Server::start(
        &a.server_bin,
        &args,
        a.ort_lib.as_deref(),
        a.out.join("server.log"),
        "soak",
    )?;
    server.wait_ready().await?;
    let pid = server.pid().context("server pid")?;
    let base = server.base().to_string();
    let client = load::http_client(180.0)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_of(pid).unwrap_or(0);

    let shared = Arc::new(Shared {
        base: base.clone(),
        client: client.clone(),
        images: Mutex::new(VecDeque::new()),
        handles: Mutex::new(VecDeque::new()),
        outcomes: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        size: a.image_size,
    });
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..a.clients {
        let s = shared.clone();
        let seed = mix(a.seed, i as u64);
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            while !s.stop.load(Ordering::Relaxed) {
                step(&s, &mut rng).await;
            }
        }));
    }
    let mut samples = Vec::new();
    let until = started + Duration::from_secs_f64(a.duration);
    let mut last_print = Instant::now();
    while Instant::now() < until {
        let rss = rss_of(pid).context("the server exited during the soak")?;
        let cache = Scrape::fetch(&client, &base)
            .await
            .and_then(|m| m.sum("samserve_cache_bytes", ""))
            .unwrap_or(f64::NAN);
        samples.push(Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_bytes: rss,
            cache_bytes: cache,
        });
        if last_print.elapsed() > Duration::from_secs(30) {
            last_print = Instant::now();
            let n: u64 = shared.outcomes.lock().unwrap().values().sum();
            eprintln!(
                "[soak] {:.0} s: {n} requests, RSS {:.0} MiB, cache {:.1} MiB",
                started.elapsed().as_secs_f64(),
                rss as f64 / 1048576.0,
                cache / 1048576.0
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(180), w).await;
    }
    let duration_s = started.elapsed().as_secs_f64();
    let end = Scrape::fetch(&client, &base).await;
    let rss_last = rss_of(pid).unwrap_or(0);
    server.stop();

    let outcomes = shared.outcomes.lock().unwrap().clone();
    let server_errors = outcomes
        .iter()
        .filter(|(k, _)| k.rsplit(' ').next().is_some_and(|s| s.starts_with('5')))
        .map(|(_, v)| v)
        .sum();
    let transport_errors = outcomes
        .iter()
        .filter(|(k, _)| k.ends_with(" transport"))
        .map(|(_, v)| v)
        .sum();
    let rss = samples.iter().map(|s| s.rss_bytes);
    let (rss_min, rss_max) = (rss.clone().min().unwrap_or(0), rss.max().unwrap_or(0));
    let cache_max = samples
        .iter()
        .map(|s| s.cache_bytes)
        .filter(|c| c.is_finite())
        .fold(0.0, f64::max);
    let bound =
        a.cache_bytes + a.image_store_bytes + a.mask_store_bytes + (a.rss_constant_mib << 20);
    let passed = server_errors == 0 && cache_max <= a.cache_bytes as f64 && rss_max <= bound;
    let report = SoakReport {
        duration_s,
        clients: a.clients,
        cache_budget_bytes: a.cache_bytes,
        image_store_budget_bytes: a.image_store_bytes,
        mask_store_budget_bytes: a.mask_store_bytes,
        rss_constant_bytes: a.rss_constant_mib << 20,
        rss_bound_bytes: bound,
        requests: outcomes.values().sum(),
        outcomes,
        server_errors,
        first_server_errors: shared.errors.lock().unwrap().clone(),
        transport_errors,
        rss_idle_bytes: rss_idle,
        rss_min_bytes: rss_min,
        rss_max_bytes: rss_max,
        rss_last_bytes: rss_last,
        cache_bytes_max: cache_max,
        cache_misses: end
            .and_then(|m| m.sum("samserve_cache_misses_total", ""))
            .unwrap_or(f64::NAN),
        samples,
        passed,
    };
    crate::write_json(&a.out.join("soak.json"), &report)?;
    Ok(report)
}

/// Prints the summary and turns a failed soak into an error.
pub fn print(r: &SoakReport) -> anyhow::Result<()> {
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "soak: {:.0} s, {} clients, {} requests",
        r.duration_s, r.clients, r.requests
    );
    for (k, v) in &r.outcomes {
        println!("  {k}: {v}");
    }
    println!(
        "5xx: {}; unexpected transport errors: {}",
        r.server_errors, r.transport_errors
    );
    for e in &r.first_server_errors {
        println!("  {e}");
    }
    println!(
        "RSS: idle {:.0} MiB, min {:.0} MiB, max {:.0} MiB, last {:.0} MiB; bound {:.0} MiB \
         (cache {:.0} + image store {:.0} + mask store {:.0} + constant {:.0})",
        mib(r.rss_idle_bytes),
        mib(r.rss_min_bytes),
        mib(r.rss_max_bytes),
        mib(r.rss_last_bytes),
        mib(r.rss_bound_bytes),
        mib(r.cache_budget_bytes),
        mib(r.image_store_budget_bytes),
        mib(r.mask_store_budget_bytes),
        mib(r.rss_constant_bytes)
    );
    println!(
        "cache bytes: max {:.1} MiB of a {:.1} MiB budget; {} cache misses (encodes)",
        r.cache_bytes_max / 1048576.0,
        mib(r.cache_budget_bytes),
        r.cache_misses
    );
    if !r.passed {
        bail!("soak failed: 5xx, cache above its budget, or RSS above the bound (see above)");
    }
    println!("soak passed");
    Ok(())
}
