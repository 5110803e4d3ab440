//! `bench`: the whole measurement in one command — decoder baseline, then the scenarios
//! against freshly started servers — with a Markdown table and a JSON file as output.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::baseline::{self, BaselineArgs, BaselineReport};
use crate::load::{self, RunArgs, RunReport};
use crate::scenario::{Scenario, WorkloadArgs, ONE_CLICK};
use crate::stats::Summary;

/// `bench` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The samserve binary to start.
    #[arg(long, default_value = "target/release/samserve")]
    pub server_bin: PathBuf,
    /// Model folder, served (--model) and timed in-process by the baseline.
    #[arg(long, default_value = "models/sam-tiny")]
    pub model: PathBuf,
    /// Smoke-test durations (3 s windows, 1 s warm-ups, 1 s per baseline batch size).
    #[arg(long)]
    pub quick: bool,
    /// Where bench.json, bench.md and the server logs go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Measured window of each scenario, seconds [default: 10, --quick 3].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Warm-up before each window, seconds [default: 2, --quick 1].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seconds per baseline batch size [default: 3, --quick 1].
    #[arg(long)]
    pub baseline_duration: Option<f64>,
    /// Baseline batch sizes.
    #[arg(long, default_value = "1,8,32,64", value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Decoder workers: passed to the server (--decoder-workers) and used as the
    /// baseline's parallel sessions [default: the server's own default; baseline 1].
    #[arg(long)]
    pub decoder_workers: Option<usize>,
    /// Intra-op threads per decoder session, server (--decoder-threads) and baseline
    /// [default: the server's own default; baseline 1].
    #[arg(long)]
    pub decoder_threads: Option<usize>,
    /// Skip the second server with the defaults before work-conserving decoding
    /// (--decoder-workers cores/2 --decoder-lone-threads 1).
    #[arg(long)]
    pub no_previous_defaults: bool,
    /// Extra argument for every server start (repeatable), e.g. --server-arg=--cache-bytes=1000000000.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Extra argument only for the server of the overload run (repeatable), e.g.
    /// --overload-server-arg=--max-queued-prompts=256.
    #[arg(long = "overload-server-arg", allow_hyphen_values = true)]
    pub overload_server_args: Vec<String>,
    /// Clients the overload run treats as capacity; it runs 4x as many.
    #[arg(long, default_value_t = 16)]
    pub overload_capacity: usize,
    /// Images of the text-prompt latency run (first query per image; 0 skips it).
    #[arg(long, default_value_t = 5)]
    pub text_images: usize,
    /// New phrases per image after the first (repeated-query latency).
    #[arg(long, default_value_t = 9)]
    pub text_repeats: usize,
    /// Admission bound of the overload server, in seconds of work: --max-queued-prompts
    /// = baseline best prompts/s x this (at least 100), --max-queued-images = cold
    /// images/s x this (at least 2). 0 keeps the server's defaults.
    #[arg(long, default_value_t = 2.0)]
    pub overload_queue_secs: f64,
    /// Path to libonnxruntime.so for the baseline and the server.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// A server process started by the bench; killed when dropped (also on errors and ^C).
pub(crate) struct Server {
    child: Option<Child>,
    base: String,
    log: PathBuf,
    label: String,
}

impl Server {
    pub(crate) fn start(
        bin: &Path,
        args: &[String],
        ort_lib: Option<&Path>,
        log: PathBuf,
        label: &str,
    ) -> anyhow::Result<Server> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
            l.local_addr()?.port()
        };
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(p) = ort_lib {
            cmd.env("ORT_DYLIB_PATH", p);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        eprintln!(
            "[bench] started server '{label}' (pid {}) on port {port}: {} {}",
            child.id(),
            bin.display(),
            args.join(" ")
        );
        Ok(Server {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
            label: label.to_string(),
        })
    }

    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = load::http_client(2.0)?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "server '{}' exited ({status}) before it was ready; log tail:\n{}",
                        self.label,
                        tail(&self.log)
                    );
                }
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "server '{}' not ready after 180 s; log tail:\n{}",
                    self.label,
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The server's process id while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM (graceful), then SIGKILL after 5 s.
    pub(crate) fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                eprintln!("[bench] stopped server '{}'", self.label);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        eprintln!("[bench] killed server '{}'", self.label);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(p) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Which optional server flags the binary knows (read from `--help`).
#[derive(Debug, Clone, Serialize)]
pub struct ServerFlags {
    pub max_batch_prompts: bool,
    pub max_batch_wait: bool,
    pub decoder_workers: bool,
    pub decoder_threads: bool,
    pub decoder_lone_threads: bool,
    pub max_queued_prompts: bool,
    pub max_queued_images: bool,
}

/// One scenario run inside the bench.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    /// e.g. `interactive@32`.
    pub label: String,
    /// Server configuration it ran against.
    pub server: String,
    pub report: RunReport,
}

/// The headline ratios.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// detector prompts/s ÷ baseline best prompts/s.
    pub detector_vs_baseline: Option<f64>,
    /// interactive@32 prompts/s ÷ baseline best prompts/s.
    pub interactive_vs_baseline: Option<f64>,
    /// interactive@32 prompts/s ÷ interactive@32 prompts/s with --max-batch-prompts 1.
    pub batching_gain: Option<f64>,
    /// interactive@1 single-click p50 − baseline B=1 decoder p50, ms.
    pub unloaded_overhead_ms: Option<f64>,
    /// The numbers the ratios come from.
    pub baseline_best_prompts_per_s: f64,
    pub baseline_best_batch: usize,
    pub baseline_b1_p50_ms: Option<f64>,
    pub unloaded_1click_p50_ms: Option<f64>,
}

/// Everything `bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub quick: bool,
    pub cpus: usize,
    pub server_bin: String,
    pub model: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub server_flags: ServerFlags,
    pub baseline: BaselineReport,
    /// What the cores can decode, and the server's clicks as fractions of it.
    pub capacity: crate::capacity::Capacity,
    pub clicks: Vec<crate::capacity::ClickFractions>,
    pub runs: Vec<BenchRun>,
    pub ratios: Ratios,
    /// Text-prompt latency (absent when the model takes no text or the run was skipped).
    pub text: Option<crate::textbench::TextLatency>,
    pub notes: Vec<String>,
    pub wall_s: f64,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Server label of the comparison run with the defaults before work-conserving decoding.
const PREVIOUS: &str = "previous defaults";

/// One-click throughput and latency of one server's interactive runs, and its click p99
/// in the mixed run (uploads and detector requests beside the clicks).
fn click_fractions(runs: &[BenchRun], server: &str) -> crate::capacity::ClickFractions {
    let run = |label: &str| {
        runs.iter()
            .find(|r| r.label == label && r.server == server)
            .map(|r| r.report.main())
    };
    let one_click =
        |label: &str| run(label).map(|m| m.by_kind.get(ONE_CLICK).unwrap_or(&m.total).clone());
    let at1 = one_click("interactive@1");
    let at32 = run("interactive@32").map(|m| m.total.clone());
    crate::capacity::ClickFractions {
        server: server.to_string(),
        clicks_per_s_at_1: at1.as_ref().and_then(|s| finite(s.prompts_per_s)),
        p50_ms_at_1: at1.as_ref().and_then(|s| finite(s.p50_ms)),
        clicks_per_s_at_32: at32.as_ref().and_then(|s| finite(s.prompts_per_s)),
        p50_ms_at_32: at32.as_ref().and_then(|s| finite(s.p50_ms)),
        mixed_click_p99_ms: run("mixed@16")
            .and_then(|m| m.by_kind.get("interactive"))
            .and_then(|s| finite(s.p99_ms)),
    }
}

/// Runs the bench, prints the Markdown report and writes bench.json / bench.md.
pub async fn run(a: BenchArgs) -> anyhow::Result<BenchReport> {
    let t_start = Instant::now();
    let (def_dur, def_warm, def_base) = if a.quick {
        (3.0, 1.0, 1.0)
    } else {
        (10.0, 2.0, 3.0)
    };
    let duration = a.duration.unwrap_or(def_dur);
    let warmup = a.warmup.unwrap_or(def_warm);
    let base_dur = a.baseline_duration.unwrap_or(def_base);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    if !a.server_bin.is_file() {
        bail!(
            "server binary {} not found (build it with `cargo build --release`)",
            a.server_bin.display()
        );
    }
    let ort_lib = baseline::ort_candidates(a.ort_lib.as_deref())
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p));

    let help = Command::new(&a.server_bin)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", a.server_bin.display()))?;
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let flags = ServerFlags {
        max_batch_prompts: help.contains("--max-batch-prompts"),
        max_batch_wait: help.contains("--max-batch-wait"),
        decoder_workers: help.contains("--decoder-workers"),
        decoder_threads: help.contains("--decoder-threads"),
        decoder_lone_threads: help.contains("--decoder-lone-threads"),
        max_queued_prompts: help.contains("--max-queued-prompts"),
        max_queued_images: help.contains("--max-queued-images"),
    };
    let mut notes = Vec::new();

    // 1. In-process decoder baseline, before any server competes for the cores.
    eprintln!("[bench] decoder baseline ({base_dur} s per batch size)");
    let bargs = BaselineArgs {
        model: a.model.clone(),
        batch_sizes: a.batch_sizes.clone(),
        duration: base_dur,
        threads: a.decoder_threads.unwrap_or(1),
        sessions: a.decoder_workers.unwrap_or(1),
        encoder_threads: 0,
        image_size: a.workload.image_size,
        seed: a.workload.seed,
        ort_lib: ort_lib.clone(),
        json: None,
    };
    let cap_args = bargs.clone();
    let base = tokio::task::spawn_blocking(move || baseline::run(&bargs)).await??;
    baseline::print(&base);
    let sizes = a.batch_sizes.clone();
    let capacity =
        tokio::task::spawn_blocking(move || crate::capacity::measure(&cap_args, &sizes)).await??;

    let mut common: Vec<String> = vec!["--model".into(), a.model.display().to_string()];
    match a.decoder_workers {
        Some(n) if flags.decoder_workers => {
            common.extend(["--decoder-workers".into(), n.to_string()])
        }
        Some(_) => notes.push("server has no --decoder-workers flag; ran with its default".into()),
        None => {}
    }
    if let (Some(n), true) = (a.decoder_threads, flags.decoder_threads) {
        common.extend(["--decoder-threads".into(), n.to_string()]);
    }
    common.extend(a.server_args.iter().cloned());

    let run_args = |scenario: Scenario, concurrency: usize, url: &str| RunArgs {
        url: url.to_string(),
        scenario,
        concurrency,
        duration,
        warmup,
        json: None,
        overload_factor: 4.0,
        recovery_concurrency: 1,
        recovery_duration: if a.quick { 3.0 } else { 5.0 },
        workload: a.workload.clone(),
    };
    let mut runs: Vec<BenchRun> = Vec::new();
    let mut text = None;
    fn one(runs: &mut Vec<BenchRun>, label: String, server: &str, r: RunReport) {
        load::print_run(&r);
        runs.push(BenchRun {
            label,
            server: server.to_string(),
            report: r,
        });
    }

    // 2. Default server: the main scenarios.
    {
        let mut s = Server::start(
            &a.server_bin,
            &common,
            ort_lib.as_deref(),
            a.out.join("server-default.log"),
            "default",
        )?;
        s.wait_ready().await?;
        for (scenario, c) in [
            (Scenario::Interactive, 1),
            (Scenario::Interactive, 32),
            (Scenario::Detector, 8),
            (Scenario::Cold, 4),
            (Scenario::Mixed, 16),
        ] {
            eprintln!("[bench] {scenario} at concurrency {c}");
            let r = load::run_scenario(&run_args(scenario, c, &s.base)).await?;
            one(&mut runs, format!("{scenario}@{c}"), "default", r);
        }
        if a.text_images > 0 && crate::textbench::supported(&s.base).await? {
            let (n, k) = if a.quick {
                (a.text_images.min(2), a.text_repeats.min(4))
            } else {
                (a.text_images, a.text_repeats)
            };
            eprintln!("[bench] text prompts: {n} images, 1 + {k} phrases each");
            let t = crate::textbench::run(&s.base, n, k, a.workload.image_size, a.workload.seed)
                .await?;
            eprint!("{}", crate::textbench::markdown(&t));
            text = Some(t);
        } else if a.text_images > 0 {
            notes.push("the model takes no text prompts: the text latency run was skipped".into());
        }
        s.stop();
    }

    // 2b. The defaults before work-conserving decoding, in the same run: one decoder worker
    //     per two cores, no wide session.
    if flags.decoder_lone_threads && !a.no_previous_defaults {
        let mut args = common.clone();
        args.extend([
            "--decoder-workers".into(),
            (capacity.cores / 2).max(1).to_string(),
            "--decoder-lone-threads".into(),
            "1".into(),
        ]);
        let mut s = Server::start(
            &a.server_bin,
            &args,
            ort_lib.as_deref(),
            a.out.join("server-previous.log"),
            PREVIOUS,
        )?;
        s.wait_ready().await?;
        for (scenario, c) in [
            (Scenario::Interactive, 1),
            (Scenario::Interactive, 32),
            (Scenario::Mixed, 16),
        ] {
            eprintln!("[bench] {scenario} at concurrency {c} ({PREVIOUS})");
            let r = load::run_scenario(&run_args(scenario, c, &s.base)).await?;
            one(&mut runs, format!("{scenario}@{c}"), PREVIOUS, r);
        }
        s.stop();
    }

    // 3. No cross-request batching: --max-batch-prompts 1.
    if flags.max_batch_prompts {
        let mut args = common.clone();
        args.extend(["--max-batch-prompts".into(), "1".into()]);
        let mut s = Server::start(
            &a.server_bin,
            &args,
            ort_lib.as_deref(),
            a.out.join("server-nobatch.log"),
            "max-batch-prompts=1",
        )?;
        s.wait_ready().await?;
        eprintln!("[bench] interactive at concurrency 32, --max-batch-prompts 1");
        let r = load::run_scenario(&run_args(Scenario::Interactive, 32, &s.base)).await?;
        one(&mut runs, "interactive@32".into(), "max-batch-prompts=1", r);
        s.stop();
    } else {
        notes.push(
            "server has no --max-batch-prompts flag: the batching-gain run was skipped".into(),
        );
    }

    // 4. Overload, on a fresh server whose queues hold about --overload-queue-secs of
    //    work, so that admission control (429) is what gets exercised.
    {
        let mut args = common.clone();
        let mut extra: Vec<String> = Vec::new();
        if a.overload_queue_secs > 0.0 {
            if flags.max_queued_prompts {
                let n = (base.best_prompts_per_s * a.overload_queue_secs)
                    .round()
                    .max(100.0);
                extra.extend(["--max-queued-prompts".into(), format!("{n:.0}")]);
            }
            let cold_rate = runs
                .iter()
                .find(|r| r.report.scenario == Scenario::Cold)
                .map(|r| r.report.main().total.images_per_s)
                .unwrap_or(0.0);
            if flags.max_queued_images {
                let n = (cold_rate * a.overload_queue_secs).round().max(2.0);
                extra.extend(["--max-queued-images".into(), format!("{n:.0}")]);
            }
            if extra.is_empty() {
                notes.push("server has no --max-queued-* flags: overload ran with its default queue bounds".into());
            }
        }
        extra.extend(a.overload_server_args.iter().cloned());
        args.extend(extra.iter().cloned());
        let label = if extra.is_empty() {
            "default".to_string()
        } else {
            extra.join(" ")
        };
        let mut s = Server::start(
            &a.server_bin,
            &args,
            ort_lib.as_deref(),
            a.out.join("server-overload.log"),
            "overload",
        )?;
        s.wait_ready().await?;
        eprintln!(
            "[bench] overload: {} clients (4 x {}), then recovery at 1",
            a.overload_capacity * 4,
            a.overload_capacity
        );
        let r =
            load::run_scenario(&run_args(Scenario::Overload, a.overload_capacity, &s.base)).await?;
        one(
            &mut runs,
            format!("overload@{}", a.overload_capacity * 4),
            &label,
            r,
        );
        s.stop();
    }

    // 5. Ratios.
    let find = |label: &str, server: &str| {
        runs.iter()
            .find(|r| r.label == label && r.server == server)
            .map(|r| &r.report.main().total)
    };
    let best = base.best_prompts_per_s;
    let per_best = |s: Option<&Summary>| s.and_then(|s| finite(s.prompts_per_s / best));
    let inter32 = find("interactive@32", "default");
    let clicks: Vec<crate::capacity::ClickFractions> = ["default", PREVIOUS]
        .iter()
        .filter(|server| runs.iter().any(|r| r.server == **server))
        .map(|server| click_fractions(&runs, server))
        .collect();
    let unloaded = runs
        .iter()
        .find(|r| r.label == "interactive@1")
        .map(|r| {
            let m = r.report.main();
            m.by_kind
                .get(ONE_CLICK)
                .map(|s| s.p50_ms)
                .unwrap_or(m.total.p50_ms)
        })
        .and_then(finite);
    let ratios = Ratios {
        detector_vs_baseline: per_best(find("detector@8", "default")),
        interactive_vs_baseline: per_best(inter32),
        batching_gain: match (inter32, find("interactive@32", "max-batch-prompts=1")) {
            (Some(x), Some(y)) if y.prompts_per_s > 0.0 => {
                finite(x.prompts_per_s / y.prompts_per_s)
            }
            _ => None,
        },
        unloaded_overhead_ms: match (unloaded, base.b1_p50_ms) {
            (Some(u), Some(b)) => Some(u - b),
            _ => None,
        },
        baseline_best_prompts_per_s: best,
        baseline_best_batch: base.best_batch,
        baseline_b1_p50_ms: base.b1_p50_ms,
        unloaded_1click_p50_ms: unloaded,
    };
    for r in &runs {
        let t = &r.report.main().total;
        if t.errors > 0 && r.report.scenario != Scenario::Overload {
            notes.push(format!(
                "{} ({}): {} errors, status counts {:?}",
                r.label, r.server, t.errors, t.status_counts
            ));
        }
        if t.ok < 20 && r.report.scenario != Scenario::Overload {
            notes.push(format!(
                "{} ({}): only {} requests completed in the window; its rates are coarse (see decoded prompts/s, or lengthen --duration)",
                r.label, r.server, t.ok
            ));
        }
        if t.cache_hits > 0 {
            notes.push(format!(
                "{}: {} cold uploads were already cached",
                r.label, t.cache_hits
            ));
        }
    }
    let report = BenchReport {
        quick: a.quick,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        server_bin: a.server_bin.display().to_string(),
        model: a.model.display().to_string(),
        duration_s: duration,
        warmup_s: warmup,
        server_flags: flags,
        baseline: base,
        capacity,
        clicks,
        runs,
        ratios,
        text,
        notes,
        wall_s: t_start.elapsed().as_secs_f64(),
    };
    let md = markdown(&report);
    println!("\n{md}");
    let json_path = a.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(a.out.join("bench.md"), &md)?;
    eprintln!("[bench] wrote {} and bench.md", json_path.display());
    Ok(report)
}

fn f1(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

fn opt(v: Option<f64>, digits: usize, suffix: &str) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}{suffix}"),
        _ => "n/a".into(),
    }
}

/// The Markdown report.
pub fn markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    let b = &r.baseline;
    let _ = writeln!(
        s,
        "## samserve bench{} — model `{}`, {} CPUs, {:.0} s windows after {:.0} s warm-up",
        if r.quick { " (quick)" } else { "" },
        b.model,
        r.cpus,
        r.duration_s,
        r.warmup_s
    );
    let _ = writeln!(
        s,
        "\n### Decoder baseline (in-process ONNX Runtime, {} session(s) x {} thread(s), {}x{} image, 1 click + padding point per prompt)\n",
        b.sessions, b.intra_threads, b.image.0, b.image.1
    );
    let _ = writeln!(
        s,
        "| B | prompts/s | call p50 ms | call p99 ms | µs/prompt |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
    for x in &b.results {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} | {:.2} | {:.0} |",
            x.batch, x.prompts_per_s, x.call_p50_ms, x.call_p99_ms, x.us_per_prompt
        );
    }
    let _ = writeln!(s, "\n### Scenarios (closed loop, HTTP on 127.0.0.1)\n");
    let _ = writeln!(
        s,
        "| scenario | server | clients | req/s | prompts/s | images/s | p50 ms | p95 ms | p99 ms | ok | 429 | errors | decoded prompts/s | decoder batch |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in &r.runs {
        for p in &run.report.phases {
            let t = &p.total;
            let label = if run.report.phases.len() > 1 {
                format!("{} ({})", run.label, p.name)
            } else {
                run.label.clone()
            };
            let batch = p
                .server
                .as_ref()
                .and_then(|d| d.decoder_mean_batch)
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "-".into());
            let decoded = p
                .server
                .as_ref()
                .and_then(|d| d.decoder_prompts)
                .map(|n| format!("{:.1}", n / p.duration_s))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {} | {decoded} | {batch} |",
                run.server,
                p.concurrency,
                t.requests_per_s,
                t.prompts_per_s,
                t.images_per_s,
                f1(t.p50_ms),
                f1(t.p95_ms),
                f1(t.p99_ms),
                t.ok,
                t.rejected_429,
                t.errors
            );
        }
    }
    if let Some(o) = r
        .runs
        .iter()
        .find(|x| x.report.scenario == Scenario::Overload)
    {
        let _ = writeln!(s, "\n### Overload ({})\n", o.label);
        let _ = writeln!(
            s,
            "| phase | clients | status counts | accepted p50 ms | accepted p99 ms | 429 p50 ms | first success after | unanswered at end (oldest) |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|");
        for p in &o.report.phases {
            let t = &p.total;
            let counts: Vec<String> = t
                .status_counts
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                p.name,
                p.concurrency,
                counts.join(", "),
                f1(t.p50_ms),
                f1(t.p99_ms),
                f1(t.rejected_p50_ms),
                opt(t.first_ok_after_ms, 0, " ms"),
                match p.cut_off_oldest_ms {
                    Some(o) => format!("{} ({o:.0} ms)", p.cut_off_in_flight),
                    None => "0".into(),
                }
            );
        }
    }
    s.push_str(&crate::capacity::markdown(&r.capacity, &r.clicks));
    let q = &r.ratios;
    let _ = writeln!(s, "\n### Ratios\n");
    let _ = writeln!(s, "| ratio | value | meaning |");
    let _ = writeln!(s, "|---|---:|---|");
    let _ = writeln!(
        s,
        "| detector ÷ baseline | {} | detector@8 prompts/s over the best in-process decoder rate ({:.0} prompts/s at B={}) |",
        opt(q.detector_vs_baseline, 2, ""),
        q.baseline_best_prompts_per_s,
        q.baseline_best_batch
    );
    let _ = writeln!(
        s,
        "| interactive ÷ baseline | {} | interactive@32 prompts/s over the same best rate |",
        opt(q.interactive_vs_baseline, 2, "")
    );
    let _ = writeln!(
        s,
        "| batching gain | {} | interactive@32 prompts/s, default server ÷ --max-batch-prompts 1 |",
        opt(q.batching_gain, 2, "x")
    );
    let _ = writeln!(
        s,
        "| unloaded overhead | {} | interactive@1 one-click p50 ({}) − baseline B=1 decoder p50 ({}) |",
        opt(q.unloaded_overhead_ms, 2, " ms"),
        opt(q.unloaded_1click_p50_ms, 2, " ms"),
        opt(q.baseline_b1_p50_ms, 2, " ms")
    );
    if let Some(t) = &r.text {
        s.push_str(&crate::textbench::markdown(t));
    }
    if !r.notes.is_empty() || !b.notes.is_empty() {
        let _ = writeln!(s, "\nNotes:");
        for n in r.notes.iter().chain(&b.notes) {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}
