//! `samserve embed`: prewarm the shared embedding store with a dataset.
//!
//! The command loads the models and the store exactly as a server does (the same engine, so
//! the same decoding, preprocessing, encoder and store keys), then for every image and
//! model: skips it when the store already holds its embedding (so a rerun resumes an
//! interrupted one), otherwise encodes it and writes it to the store, and checks that the
//! write landed. A server pointed at the same store then answers those images without an
//! encoder run.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use super::engine::{image_id_of, Engine};
use crate::config::embed::EmbedArgs;
use crate::metrics::Metrics;

/// File name extensions picked up when a folder is searched.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// What happened to one (image, model) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Encoded and written to the store.
    Embedded,
    /// The store already held it.
    Skipped,
    /// Not embedded, with the reason.
    Failed(String),
}

/// Totals of a run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Images found.
    pub images: usize,
    /// (image, model) pairs encoded and stored.
    pub embedded: usize,
    /// Pairs the store already held.
    pub skipped: usize,
    /// Pairs that failed, with file and reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Encoder runs of this process.
    pub encoder_runs: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Image files named by `paths`: files as given, folders searched recursively for image
/// extensions, in a stable (sorted) order without duplicates.
pub fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            let kind = e.file_type()?;
            if kind.is_dir() {
                walk(&p, out)?;
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            anyhow::bail!("{}: no such file or folder", p.display());
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

/// Embeds one file with one model into the store.
async fn embed_one(engine: &Engine, model: &str, bytes: Bytes) -> Outcome {
    let id = image_id_of(&bytes);
    match engine.store_contains(Some(model), &id).await {
        Some(true) => return Outcome::Skipped,
        Some(false) => {}
        None => return Outcome::Failed("the store did not answer".into()),
    }
    if let Err(e) = engine.ingest(Some(model), bytes, None).await {
        return Outcome::Failed(e.public_message());
    }
    match engine.store_contains(Some(model), &id).await {
        Some(true) => Outcome::Embedded,
        _ => Outcome::Failed("encoded, but the store did not keep the embedding".into()),
    }
}

/// Progress shown while the run goes: one rewritten line on a terminal, else one line per
/// image.
struct Progress {
    total: usize,
    done: usize,
    bar: bool,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    fn step(&mut self, path: &Path, results: &[(String, Outcome)], s: &Summary) {
        self.done += 1;
        let mut err = std::io::stderr().lock();
        if self.bar {
            let now = Instant::now();
            let due = self
                .last_draw
                .is_none_or(|t| now - t >= Duration::from_millis(100));
            if !due && self.done < self.total {
                return;
            }
            self.last_draw = Some(now);
            let elapsed = self.started.elapsed().as_secs_f64();
            let rate = self.done as f64 / elapsed.max(1e-9);
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            let width = 24;
            let filled = width * self.done / self.total.max(1);
            let _ = write!(
                err,
                "\r[{}{}] {}/{} images  embedded {}  in store {}  failed {}  {:.1} img/s  ETA {}   ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                self.done,
                self.total,
                s.embedded,
                s.skipped,
                s.failed.len(),
                rate,
                clock(eta),
            );
            if self.done == self.total {
                let _ = writeln!(err);
            }
        } else {
            for (model, o) in results {
                let what = match o {
                    Outcome::Embedded => "embedded".to_string(),
                    Outcome::Skipped => "already in the store".to_string(),
                    Outcome::Failed(why) => format!("FAILED: {why}"),
                };
                let _ = writeln!(
                    err,
                    "[{}/{}] {} ({model}): {what}",
                    self.done,
                    self.total,
                    path.display()
                );
            }
        }
    }
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Runs `samserve embed`: loads the engine, embeds every file with every model, prints the
/// summary. Fails (before any work) when the store cannot be reached.
pub async fn run(args: EmbedArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let files = collect_files(&args.paths)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no image files found (folders are searched for .{})",
        IMAGE_EXTENSIONS.join(" .")
    );
    let config = args.server_config();
    let metrics = Arc::new(Metrics::new());
    let engine = {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || Engine::start(&config, metrics)).await??
    };
    let models: Vec<String> = engine.models().map(|m| m.spec.name.clone()).collect();
    // The store must answer before any work: a run that cannot write would only burn CPU.
    let probe = "0".repeat(64);
    for m in &models {
        anyhow::ensure!(
            engine.store_contains(Some(m), &probe).await.is_some(),
            "the embedding store {} does not answer",
            args.store.redacted()
        );
    }
    tracing::info!(
        images = files.len(),
        models = ?models,
        store = %args.store.redacted(),
        "embedding"
    );
    let mut summary = Summary {
        images: files.len(),
        ..Default::default()
    };
    let mut progress = Progress {
        total: files.len(),
        done: 0,
        bar: std::io::stderr().is_terminal() && !args.no_progress_bar,
        started: Instant::now(),
        last_draw: None,
    };
    let work = futures::stream::iter(files.into_iter().map(|path| {
        let (engine, models) = (engine.clone(), models.clone());
        async move {
            let mut results = Vec::new();
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(path)).await
            };
            match read.map_err(std::io::Error::other).and_then(|r| r) {
                Ok(bytes) => {
                    let bytes = Bytes::from(bytes);
                    for m in &models {
                        results.push((m.clone(), embed_one(&engine, m, bytes.clone()).await));
                    }
                }
                Err(e) => {
                    for m in &models {
                        results.push((m.clone(), Outcome::Failed(format!("reading: {e}"))));
                    }
                }
            }
            (path, results)
        }
    }));
    let mut done = work.buffer_unordered(args.jobs.max(1));
    while let Some((path, results)) = done.next().await {
        for (_, o) in &results {
            match o {
                Outcome::Embedded => summary.embedded += 1,
                Outcome::Skipped => summary.skipped += 1,
                Outcome::Failed(why) => summary.failed.push((path.clone(), why.clone())),
            }
        }
        progress.step(&path, &results, &summary);
    }
    summary.encoder_runs = models
        .iter()
        .map(|m| metrics.encoder_runs_total.with_label_values(&[m]).get())
        .sum();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

impl Summary {
    /// The closing report: totals, then each failure.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{} images: {} embedded, {} already in the store, {} failed; {} encoder runs; {:.1} s\n",
            self.images,
            self.embedded,
            self.skipped,
            self.failed.len(),
            self.encoder_runs,
            self.seconds
        );
        for (p, why) in &self.failed {
            s.push_str(&format!("failed: {}: {why}\n", p.display()));
        }
        s
    }
}
