//! The machine's decoder capacity, measured in-process (no HTTP), so that `bench` can state
//! the server's click throughput and lone-click latency as fractions of what the cores can
//! do: one decoder session on one thread at B = 1 (a core's rate, and the raw one-thread
//! call time), the same on every core at once (sessions = cores, best batch size), and one
//! session using every core for a single prompt (the floor of a lone click).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::baseline::{self, BaselineArgs, BaselineReport};

/// What the cores can decode.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    pub cores: usize,
    /// One session, one thread, B = 1: prompts/s.
    pub one_thread_b1_prompts_per_s: f64,
    /// One session, one thread, B = 1: median call, ms (the raw one-thread decoder call).
    pub one_thread_b1_p50_ms: Option<f64>,
    /// `one_thread_b1_prompts_per_s` x cores: every core decoding single prompts.
    pub b1_times_cores_prompts_per_s: f64,
    /// `cores` sessions of one thread running at once, best batch size: prompts/s.
    pub all_core_best_prompts_per_s: f64,
    pub all_core_best_batch: usize,
    /// One session with `cores` intra-op threads, B = 1: median call, ms.
    pub wide_b1_p50_ms: Option<f64>,
}

/// The three in-process measurements, `duration` seconds per batch size.
pub fn measure(template: &BaselineArgs, batch_sizes: &[usize]) -> anyhow::Result<Capacity> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let run =
        |sessions: usize, threads: usize, batches: Vec<usize>| -> anyhow::Result<BaselineReport> {
            let a = BaselineArgs {
                sessions,
                threads,
                batch_sizes: batches,
                json: None::<PathBuf>,
                ..template.clone()
            };
            eprintln!("[bench] capacity: {sessions} session(s) x {threads} thread(s)");
            baseline::run(&a)
        };
    let one = run(1, 1, vec![1])?;
    let all = run(cores, 1, batch_sizes.to_vec())?;
    let wide = if cores > 1 {
        run(1, cores, vec![1])?.b1_p50_ms
    } else {
        one.b1_p50_ms
    };
    let b1 = one
        .results
        .first()
        .map(|r| r.prompts_per_s)
        .unwrap_or(f64::NAN);
    Ok(Capacity {
        cores,
        one_thread_b1_prompts_per_s: b1,
        one_thread_b1_p50_ms: one.b1_p50_ms,
        b1_times_cores_prompts_per_s: b1 * cores as f64,
        all_core_best_prompts_per_s: all.best_prompts_per_s,
        all_core_best_batch: all.best_batch,
        wide_b1_p50_ms: wide,
    })
}

/// The server's clicks measured against the capacity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClickFractions {
    /// Server label (e.g. `default`, `previous defaults`).
    pub server: String,
    pub clicks_per_s_at_1: Option<f64>,
    pub p50_ms_at_1: Option<f64>,
    pub clicks_per_s_at_32: Option<f64>,
    pub p50_ms_at_32: Option<f64>,
    /// Click p99 while uploads run (the mixed scenario's interactive requests).
    pub mixed_click_p99_ms: Option<f64>,
}

fn ratio(a: Option<f64>, b: f64) -> Option<f64> {
    a.filter(|_| b > 0.0 && b.is_finite()).map(|a| a / b)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "n/a".into(),
    }
}

/// The "Decoder capacity" section of the bench report.
pub fn markdown(c: &Capacity, servers: &[ClickFractions]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Decoder capacity ({} cores, in-process)\n",
        c.cores
    );
    let _ = writeln!(s, "| measure | value |");
    let _ = writeln!(s, "|---|---:|");
    let _ = writeln!(
        s,
        "| one thread, B=1: prompts/s (raw call p50 ms) | {:.0} ({}) |",
        c.one_thread_b1_prompts_per_s,
        fmt(c.one_thread_b1_p50_ms, 2)
    );
    let _ = writeln!(
        s,
        "| capacity = one-thread B=1 rate x {} cores | {:.0} prompts/s |",
        c.cores, c.b1_times_cores_prompts_per_s
    );
    let _ = writeln!(
        s,
        "| best all-core figure ({} sessions x 1 thread, B={}) | {:.0} prompts/s |",
        c.cores, c.all_core_best_batch, c.all_core_best_prompts_per_s
    );
    let _ = writeln!(
        s,
        "| one session on {} threads, B=1: call p50 | {} ms |",
        c.cores,
        fmt(c.wide_b1_p50_ms, 2)
    );
    let _ = writeln!(
        s,
        "\n| server | clicks/s @32 | ÷ capacity | ÷ best all-core | p50 ms @1 | ÷ raw one-thread call | clicks/s @1 | click p99 ms during uploads (mixed@16) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in servers {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            f.server,
            fmt(f.clicks_per_s_at_32, 0),
            fmt(
                ratio(f.clicks_per_s_at_32, c.b1_times_cores_prompts_per_s),
                2
            ),
            fmt(
                ratio(f.clicks_per_s_at_32, c.all_core_best_prompts_per_s),
                2
            ),
            fmt(f.p50_ms_at_1, 2),
            fmt(
                ratio(f.p50_ms_at_1, c.one_thread_b1_p50_ms.unwrap_or(f64::NAN)),
                2
            ),
            fmt(f.clicks_per_s_at_1, 0),
            fmt(f.mixed_click_p99_ms, 1),
        );
    }
    s
}
