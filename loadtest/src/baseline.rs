//! In-process decoder baseline: the best prompts/s the decoder ONNX graph reaches on this
//! machine with no HTTP, JSON, queueing or mask encoding around it. The server's numbers
//! are compared against it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use crate::gen;
use crate::rng::{mix, Rng};
use crate::stats::{nan_as_null, percentile};

/// `baseline` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    /// Model folder (manifest.json beside encoder and decoder ONNX files).
    #[arg(long, default_value = "models/sam-tiny")]
    pub model: PathBuf,
    /// Prompt batch sizes B to time (each prompt: one click plus the padding point).
    #[arg(long, default_value = "1,8,32,64", value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Seconds timed per batch size.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// ONNX Runtime intra-op threads per decoder session (the server's --decoder-threads).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Parallel decoder sessions, one thread each (the server's --decoder-workers).
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Intra-op threads of the encoder used for the one embedding (0 = ORT default).
    #[arg(long, default_value_t = 0)]
    pub encoder_threads: usize,
    /// Size of the generated image that is encoded, WxH (the scenarios' cached-image size).
    #[arg(long, default_value = "640x480", value_parser = parse_wh)]
    pub image_size: (u32, u32),
    /// Seed of the image and the click positions.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Path to libonnxruntime.so (default: $ORT_DYLIB_PATH, then .ort/lib/ here, then the
    /// repository's .ort/lib/).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_wh(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').ok_or("expected WxH")?;
    Ok((
        w.parse().map_err(|e| format!("{e}"))?,
        h.parse().map_err(|e| format!("{e}"))?,
    ))
}

/// Timing of one batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResult {
    pub batch: usize,
    pub calls: u64,
    pub prompts_per_s: f64,
    /// Latency of one decoder call (ms).
    #[serde(with = "nan_as_null")]
    pub call_p50_ms: f64,
    #[serde(with = "nan_as_null")]
    pub call_p99_ms: f64,
    /// Wall-clock microseconds per prompt (1e6 / prompts_per_s).
    pub us_per_prompt: f64,
}

/// Result of `baseline`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineReport {
    pub model: String,
    pub image: (u32, u32),
    pub input_size: u32,
    pub embedding_shape: Vec<i64>,
    pub encoder_ms: f64,
    pub decoder_batched: bool,
    pub decoder_has_orig_im_size: bool,
    pub intra_threads: usize,
    pub sessions: usize,
    pub points_per_prompt: usize,
    pub results: Vec<BatchResult>,
    pub best_prompts_per_s: f64,
    pub best_batch: usize,
    /// Median latency of a single-prompt (B = 1) decoder call, ms.
    pub b1_p50_ms: Option<f64>,
    pub notes: Vec<String>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    name: Option<String>,
    encoder: String,
    decoder: String,
    input_size: u32,
    #[serde(default = "default_mean")]
    pixel_mean: [f32; 3],
    #[serde(default = "default_std")]
    pixel_std: [f32; 3],
}

fn default_mean() -> [f32; 3] {
    [123.675, 116.28, 103.53]
}

fn default_std() -> [f32; 3] {
    [58.395, 57.12, 57.375]
}

static ENV: OnceLock<Environment> = OnceLock::new();

/// Where libonnxruntime.so is looked for, in order.
pub fn ort_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    v.extend(explicit.map(Path::to_path_buf));
    v.extend(std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
    v.push(PathBuf::from(".ort/lib/libonnxruntime.so"));
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ort/lib/libonnxruntime.so"));
    v
}

fn ort_env(explicit: Option<&Path>) -> anyhow::Result<&'static Environment> {
    if let Some(e) = ENV.get() {
        return Ok(e);
    }
    let tried = ort_candidates(explicit);
    let path = tried
        .iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("libonnxruntime.so not found; tried {tried:?} (run `make ort`)"))?;
    let env = ort::init_from(path)
        .map_err(|e| anyhow!("loading ONNX Runtime from {}: {e}", path.display()))?
        .with_name("samserve-loadtest")
        .build()
        .map_err(|e| anyhow!("creating the ONNX Runtime environment: {e}"))?;
    Ok(ENV.get_or_init(|| env))
}

fn session(env: &Environment, file: &Path, threads: usize) -> anyhow::Result<Session> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    session_from(env, &bytes, threads).map_err(|e| anyhow!("loading {}: {e}", file.display()))
}

fn session_from(env: &Environment, bytes: &[u8], threads: usize) -> anyhow::Result<Session> {
    let mut b = Session::builder(env)
        .map_err(|e| anyhow!("{e}"))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow!("{e}"))?;
    if threads > 0 {
        b = b.with_intra_threads(threads).map_err(|e| anyhow!("{e}"))?;
    }
    b.commit_from_memory(bytes).map_err(|e| anyhow!("{e}"))
}

fn shape(s: &Session, name: &str) -> Option<Vec<i64>> {
    s.inputs()
        .iter()
        .find(|o| o.name() == name)
        .and_then(|o| o.dtype().tensor_shape().map(|sh| sh.to_vec()))
}

fn input<'a>(shape: &[usize], data: &'a [f32]) -> anyhow::Result<SessionInputValue<'a>> {
    TensorRef::from_array_view((shape.to_vec(), data))
        .map(SessionInputValue::from)
        .map_err(|e| anyhow!("{e}"))
}

/// One encoder run on a generated image; returns the embedding and its shape.
fn embed(
    env: &Environment,
    dir: &Path,
    m: &Manifest,
    a: &BaselineArgs,
) -> anyhow::Result<(Vec<f32>, Vec<i64>, f64)> {
    let mut enc = session(env, &dir.join(&m.encoder), a.encoder_threads)?;
    let (w, h) = a.image_size;
    let img = gen::scene(w, h, mix(a.seed, 1000));
    let l = m.input_size;
    let scale = l as f64 / w.max(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let resized = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let in_name = enc.inputs()[0].name().to_string();
    let in_shape = enc.inputs()[0]
        .dtype()
        .tensor_shape()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    let (tensor, dims): (Vec<f32>, Vec<usize>) = if in_shape.len() == 3 {
        // samexporter style: raw HWC 0-255 at the resized size, the graph normalizes/pads.
        let t = resized.as_raw().iter().map(|&v| v as f32).collect();
        (t, vec![nh as usize, nw as usize, 3])
    } else {
        let (l, nw, nh) = (l as usize, nw as usize, nh as usize);
        let mut t = vec![0f32; 3 * l * l];
        for y in 0..nh {
            for x in 0..nw {
                let p = resized.get_pixel(x as u32, y as u32);
                for c in 0..3 {
                    t[c * l * l + y * l + x] = (p[c] as f32 - m.pixel_mean[c]) / m.pixel_std[c];
                }
            }
        }
        (t, vec![1, 3, l, l])
    };
    let t0 = Instant::now();
    let out_name = enc
        .outputs()
        .iter()
        .find(|o| o.name() == "image_embeddings")
        .unwrap_or(&enc.outputs()[0])
        .name()
        .to_string();
    let outputs = enc
        .run(vec![(Cow::Owned(in_name), input(&dims, &tensor)?)])
        .map_err(|e| anyhow!("encoder run: {e}"))?;
    let encoder_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (s, data) = outputs[out_name.as_str()]
        .try_extract_tensor::<f32>()
        .map_err(|e| anyhow!("encoder output: {e}"))?;
    let mut s: Vec<i64> = s.to_vec();
    if s.len() == 3 {
        s.insert(0, 1);
    }
    if s.len() != 4 {
        bail!("encoder output has shape {s:?}, expected [1, C, h, w]");
    }
    Ok((data.to_vec(), s, encoder_ms))
}

/// Prepared decoder inputs for a batch of `b` single-click prompts.
struct Batch {
    b: usize,
    coords: Vec<f32>,
    labels: Vec<f32>,
    mask: Vec<f32>,
    has_mask: Vec<f32>,
}

/// Runs the baseline.
pub fn run(a: &BaselineArgs) -> anyhow::Result<BaselineReport> {
    if a.batch_sizes.is_empty() || a.batch_sizes.contains(&0) {
        bail!("--batch-sizes needs positive sizes");
    }
    let dir = &a.model;
    let m: Manifest = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .with_context(|| format!("reading {}/manifest.json", dir.display()))?,
    )
    .context("parsing manifest.json")?;
    let env = ort_env(a.ort_lib.as_deref())?;
    let (emb, emb_shape, encoder_ms) = embed(env, dir, &m, a)?;
    let emb_dims: Vec<usize> = emb_shape.iter().map(|&d| d as usize).collect();

    let sessions = a.sessions.max(1);
    // The same graph the server runs: ONNX Runtime computes every node whatever is
    // fetched, and both sides read only the IoU and low-res outputs.
    let decoder_file = dir.join(&m.decoder);
    let decoder_bytes = std::fs::read(&decoder_file)
        .with_context(|| format!("reading {}", decoder_file.display()))?;
    let decoder_bytes = samserve::runtime::model::decoder_graph(
        m.name.as_deref().unwrap_or("model"),
        &decoder_bytes,
        &samserve::runtime::model::DECODER_OUTPUTS,
    );
    let mut decoders = (0..sessions)
        .map(|_| session_from(env, &decoder_bytes, a.threads))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let d0 = &decoders[0];
    let batched = shape(d0, "point_coords").and_then(|s| s.first().copied()) == Some(-1);
    let has_orig = shape(d0, "orig_im_size").is_some();
    let (mh, mw) = match shape(d0, "mask_input").as_deref() {
        Some([_, _, h, w]) if *h > 0 && *w > 0 => (*h as usize, *w as usize),
        _ => (emb_dims[2] * 4, emb_dims[3] * 4),
    };
    let (w, h) = a.image_size;
    let scale = m.input_size as f32 / w.max(h) as f32;
    let orig = [h as f32, w as f32];
    let mut notes = Vec::new();
    let mut rng = Rng::new(mix(a.seed, 77));
    let batches: Vec<Batch> = a
        .batch_sizes
        .iter()
        .filter(|&&b| {
            let ok = b == 1 || batched;
            if !ok {
                notes.push(format!(
                    "B={b} skipped: the decoder's prompt batch is fixed to 1"
                ));
            }
            ok
        })
        .map(|&b| {
            let n = 2;
            let mut coords = vec![0f32; b * n * 2];
            let mut labels = vec![-1f32; b * n];
            for i in 0..b {
                // One click in original pixels, mapped to the model frame; the second
                // point stays (0, 0) with label -1 (SAM's padding point).
                coords[i * n * 2] = rng.below(w as u64) as f32 * scale;
                coords[i * n * 2 + 1] = rng.below(h as u64) as f32 * scale;
                labels[i * n] = 1.0;
            }
            Batch {
                b,
                coords,
                labels,
                mask: vec![0f32; b * mh * mw],
                has_mask: vec![0f32; b],
            }
        })
        .collect();

    let call = |s: &mut Session, bt: &Batch| -> anyhow::Result<()> {
        let b = bt.b;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("image_embeddings".into(), input(&emb_dims, &emb)?),
            ("point_coords".into(), input(&[b, 2, 2], &bt.coords)?),
            ("point_labels".into(), input(&[b, 2], &bt.labels)?),
            ("mask_input".into(), input(&[b, 1, mh, mw], &bt.mask)?),
            ("has_mask_input".into(), input(&[b], &bt.has_mask)?),
        ];
        if has_orig {
            inputs.push(("orig_im_size".into(), input(&[2], &orig)?));
        }
        let out = s
            .run(inputs)
            .map_err(|e| anyhow!("decoder run (B={b}): {e}"))?;
        let (_, iou) = out["iou_predictions"]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("iou_predictions: {e}"))?;
        std::hint::black_box(iou.first().copied());
        Ok(())
    };

    let dur = Duration::from_secs_f64(a.duration.max(0.05));
    let mut results = Vec::new();
    for bt in &batches {
        // Warm-up (first calls with a new shape allocate).
        for s in decoders.iter_mut() {
            for _ in 0..3 {
                call(s, bt)?;
            }
        }
        let start = Instant::now();
        let per_thread: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|sc| {
            let handles: Vec<_> = decoders
                .iter_mut()
                .map(|s| {
                    let call = &call;
                    sc.spawn(move || -> anyhow::Result<Vec<f64>> {
                        let mut lat = Vec::new();
                        while start.elapsed() < dur {
                            let t = Instant::now();
                            call(s, bt)?;
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok(lat)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("decoder thread panicked")))
                })
                .collect()
        });
        let elapsed = start.elapsed().as_secs_f64();
        let mut lat = Vec::new();
        for r in per_thread {
            lat.extend(r?);
        }
        lat.sort_by(f64::total_cmp);
        let calls = lat.len() as u64;
        let pps = (calls as f64 * bt.b as f64) / elapsed;
        results.push(BatchResult {
            batch: bt.b,
            calls,
            prompts_per_s: pps,
            call_p50_ms: percentile(&lat, 50.0),
            call_p99_ms: percentile(&lat, 99.0),
            us_per_prompt: if pps > 0.0 { 1e6 / pps } else { f64::INFINITY },
        });
    }
    let best = results
        .iter()
        .max_by(|x, y| x.prompts_per_s.total_cmp(&y.prompts_per_s))
        .cloned()
        .ok_or_else(|| anyhow!("no batch size could run"))?;
    Ok(BaselineReport {
        model: m.name.unwrap_or_else(|| dir.display().to_string()),
        image: a.image_size,
        input_size: m.input_size,
        embedding_shape: emb_shape,
        encoder_ms,
        decoder_batched: batched,
        decoder_has_orig_im_size: has_orig,
        intra_threads: a.threads,
        sessions,
        points_per_prompt: 2,
        b1_p50_ms: results.iter().find(|r| r.batch == 1).map(|r| r.call_p50_ms),
        best_prompts_per_s: best.prompts_per_s,
        best_batch: best.batch,
        results,
        notes,
    })
}

/// Human-readable baseline report.
pub fn print(r: &BaselineReport) {
    println!(
        "decoder baseline: model {} on a {}x{} image (embedding {:?}, encoder {:.1} ms), {} session(s) x {} intra-op thread(s)",
        r.model, r.image.0, r.image.1, r.embedding_shape, r.encoder_ms, r.sessions, r.intra_threads
    );
    println!(
        "  {:>5} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "B", "calls", "prompts/s", "p50 ms", "p99 ms", "us/prompt"
    );
    for x in &r.results {
        println!(
            "  {:>5} {:>8} {:>12.1} {:>10.3} {:>10.3} {:>10.1}",
            x.batch, x.calls, x.prompts_per_s, x.call_p50_ms, x.call_p99_ms, x.us_per_prompt
        );
    }
    println!(
        "  best: {:.1} prompts/s at B={}",
        r.best_prompts_per_s, r.best_batch
    );
    if let Some(p) = r.b1_p50_ms {
        println!("  single-prompt decoder latency p50: {p:.3} ms");
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}
