//! The closed-loop driver: N clients, each sending its next request as soon as the
//! previous one is answered, for a warm-up and then a measured window.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::promscrape::{Scrape, ServerDelta};
use crate::rng::{mix, Rng};
use crate::scenario::{Kind, Request, Scenario, Workload, WorkloadArgs};
use crate::stats::{Status, Summary, Tally};

/// `run` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Server base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Traffic pattern.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Closed-loop clients. For `overload`: the capacity being overloaded (the overload
    /// phase runs `--overload-factor` times as many clients).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Unmeasured warm-up before the window, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// `overload`: clients = concurrency x this.
    #[arg(long, default_value_t = 4.0)]
    pub overload_factor: f64,
    /// `overload`: clients of the recovery phase.
    #[arg(long, default_value_t = 1)]
    pub recovery_concurrency: usize,
    /// `overload`: length of the recovery phase, seconds (it starts right after the burst).
    #[arg(long, default_value_t = 5.0)]
    pub recovery_duration: f64,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// One measured phase (a plain scenario has one; `overload` has two).
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// After the window, wait until the server has no queued work and no open requests
    /// (off between overload and recovery: recovery starts right after the burst).
    pub drain: bool,
}

/// Results of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub concurrency: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Every request of the window.
    pub total: Summary,
    /// Per request kind (`interactive`, `detector`, `cold`) and tag (`interactive_1click`).
    pub by_kind: BTreeMap<String, Summary>,
    /// What the server's /metrics says happened in the window (when it exposes it).
    pub server: Option<ServerDelta>,
    /// Requests still unanswered when the window closed (dropped by the client).
    pub cut_off_in_flight: usize,
    /// How long the oldest of those had been waiting (a lower bound on its latency).
    pub cut_off_oldest_ms: Option<f64>,
    /// Seconds the server took to become idle after the window (when drained).
    pub drain_s: Option<f64>,
}

/// Results of a `run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: Scenario,
    pub url: String,
    pub concurrency: usize,
    pub cached_images: usize,
    pub phases: Vec<PhaseReport>,
}

impl RunReport {
    /// The main (first) phase.
    pub fn main(&self) -> &PhaseReport {
        &self.phases[0]
    }
}

/// Refuses anything but a loopback URL: this tool only ever loads the local machine.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let u = reqwest::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    let host = u.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok || u.scheme() != "http" {
        bail!("only http:// loopback URLs (127.0.0.1, ::1, localhost) are allowed, got {url}");
    }
    Ok(())
}

/// An HTTP client for the load: pooled keep-alive connections, no proxies.
pub fn http_client(timeout_s: f64) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs_f64(timeout_s.max(0.001)))
        .build()
        .context("building the HTTP client")
}

/// Waits until `/readyz` answers 200.
pub async fn wait_ready(
    client: &reqwest::Client,
    base: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let r = client
            .get(format!("{}/readyz", base.trim_end_matches('/')))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("{base}/readyz did not answer 200 within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?;
    v.trim().parse::<f64>().ok().map(Duration::from_secs_f64)
}

#[derive(serde::Deserialize)]
struct Uploaded {
    cached: bool,
}

/// Sends one request and reads the whole answer: (outcome, Retry-After, upload was cached).
async fn send(client: &reqwest::Client, req: Request) -> (Status, Option<Duration>, bool) {
    let resp = match client
        .post(&req.url)
        .header("content-type", req.content_type)
        .body(req.body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => return (Status::Transport, None, false),
    };
    let code = resp.status().as_u16();
    let wait = retry_after(&resp);
    match resp.bytes().await {
        Ok(body) if (200..300).contains(&code) => {
            let cached = req.kind == Kind::Cold
                && serde_json::from_slice::<Uploaded>(&body).is_ok_and(|u| u.cached);
            (Status::Ok(code), wait, cached)
        }
        Ok(_) if code == 429 => (Status::Rejected, wait, false),
        Ok(_) => (Status::Http(code), wait, false),
        Err(_) => (Status::Transport, wait, false),
    }
}

/// Waits (up to `limit`) until the server's queues are empty and no request but the
/// metrics scrape itself is open, so one phase's backlog does not leak into the next.
/// Returns at once when the server exposes no such metrics.
pub async fn wait_idle(client: &reqwest::Client, base: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let Some(s) = Scrape::fetch(client, base).await else {
            return;
        };
        let depth = s.sum("samserve_queue_depth", "");
        let open = s.sum("samserve_in_flight_requests", "");
        if depth.is_none() && open.is_none() {
            return;
        }
        if depth.unwrap_or(0.0) <= 0.0 && open.unwrap_or(0.0) <= 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one phase of closed-loop load and summarizes it.
pub async fn run_phase(
    client: &reqwest::Client,
    base: &str,
    workload: &Arc<Workload>,
    phase: &Phase,
    args: &WorkloadArgs,
) -> PhaseReport {
    let start = Instant::now();
    let measure_start = start + phase.warmup;
    let end = measure_start + phase.duration;
    let cap = Duration::from_millis(args.retry_after_cap_ms);
    let mut set = JoinSet::new();
    for c in 0..phase.concurrency.max(1) {
        let client = client.clone();
        let workload = workload.clone();
        let seed = mix(
            args.seed,
            0xC11E_0000 + c as u64 + ((phase.concurrency as u64) << 20),
        );
        set.spawn(async move {
            let mut rng = Rng::new(seed);
            let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
            let mut cut_off = None;
            while Instant::now() < end {
                let req = workload.next(&mut rng);
                let (kind, tag, prompts) = (req.kind, req.tag, req.prompts);
                let t0 = Instant::now();
                // The window's end drops an unanswered request (it would not count).
                let (status, wait, cached) = tokio::select! {
                    r = send(&client, req) => r,
                    _ = tokio::time::sleep_until(end.into()) => {
                        cut_off = Some(end.saturating_duration_since(t0));
                        break;
                    }
                };
                let done = Instant::now();
                if done >= measure_start && done <= end {
                    let images = u64::from(kind == Kind::Cold && !cached);
                    for key in [Some("all"), Some(kind.name()), tag].into_iter().flatten() {
                        let t = tallies.entry(key).or_default();
                        t.record(status, done - t0, prompts, images, done);
                        if cached && matches!(status, Status::Ok(_)) {
                            t.cache_hits += 1;
                        }
                    }
                }
                let pause = match status {
                    Status::Rejected => wait.unwrap_or(Duration::from_secs(1)).min(cap),
                    // Do not spin on a refused connection or a request the server rejects.
                    Status::Transport | Status::Http(_) => Duration::from_millis(10),
                    Status::Ok(_) => Duration::ZERO,
                };
                if !pause.is_zero() {
                    let until = (Instant::now() + pause).min(end);
                    tokio::time::sleep_until(until.into()).await;
                }
            }
            (tallies, cut_off)
        });
    }
    tokio::time::sleep_until(measure_start.into()).await;
    let before = Scrape::fetch(client, base).await;
    tokio::time::sleep_until(end.into()).await;
    let after = Scrape::fetch(client, base).await;
    let server = match (before, after) {
        (Some(b), Some(a)) => Some(ServerDelta::between(&b, &a)),
        _ => None,
    };
    let mut merged: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut cut_off = 0;
    let mut oldest = Duration::ZERO;
    while let Some(r) = set.join_next().await {
        if let Ok((t, c)) = r {
            if let Some(age) = c {
                cut_off += 1;
                oldest = oldest.max(age);
            }
            for (k, v) in t {
                merged.entry(k).or_default().merge(v);
            }
        }
    }
    let drain_s = if phase.drain {
        let t = Instant::now();
        wait_idle(client, base, Duration::from_secs(60)).await;
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    let secs = phase.duration.as_secs_f64();
    let total = merged
        .remove("all")
        .unwrap_or_default()
        .summarize(secs, measure_start);
    let by_kind = merged
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.summarize(secs, measure_start)))
        .collect();
    PhaseReport {
        name: phase.name.clone(),
        concurrency: phase.concurrency,
        warmup_s: phase.warmup.as_secs_f64(),
        duration_s: secs,
        total,
        by_kind,
        server,
        cut_off_in_flight: cut_off,
        cut_off_oldest_ms: (cut_off > 0).then_some(oldest.as_secs_f64() * 1e3),
        drain_s,
    }
}

/// Sets up a scenario and runs its phases.
pub async fn run_scenario(a: &RunArgs) -> anyhow::Result<RunReport> {
    check_loopback(&a.url)?;
    if a.concurrency == 0 || a.duration <= 0.0 || a.warmup < 0.0 {
        bail!("need --concurrency >= 1, --duration > 0 and --warmup >= 0");
    }
    let client = http_client(a.workload.timeout)?;
    let base = a.url.trim_end_matches('/').to_string();
    wait_ready(&client, &base, Duration::from_secs(60)).await?;
    let workload = Arc::new(Workload::setup(&client, &base, a.scenario, &a.workload).await?);
    let secs = Duration::from_secs_f64;
    let phases = if a.scenario == Scenario::Overload {
        vec![
            Phase {
                name: "overload".into(),
                concurrency: ((a.concurrency as f64) * a.overload_factor).ceil().max(1.0) as usize,
                warmup: secs(a.warmup),
                duration: secs(a.duration),
                drain: false,
            },
            Phase {
                name: "recovery".into(),
                concurrency: a.recovery_concurrency.max(1),
                warmup: Duration::ZERO,
                duration: secs(a.recovery_duration.max(0.1)),
                drain: true,
            },
        ]
    } else {
        vec![Phase {
            name: "main".into(),
            concurrency: a.concurrency,
            warmup: secs(a.warmup),
            duration: secs(a.duration),
            drain: true,
        }]
    };
    let mut reports = Vec::new();
    for p in &phases {
        reports.push(run_phase(&client, &base, &workload, p, &a.workload).await);
    }
    Ok(RunReport {
        scenario: a.scenario,
        url: base,
        concurrency: a.concurrency,
        cached_images: workload.cached_images(),
        phases: reports,
    })
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

/// Human-readable report of a run.
pub fn print_run(r: &RunReport) {
    println!(
        "scenario {} against {} ({} cached images)",
        r.scenario, r.url, r.cached_images
    );
    for p in &r.phases {
        let t = &p.total;
        println!(
            "  phase {}: {} clients, {:.1} s measured after {:.1} s warm-up",
            p.name, p.concurrency, p.duration_s, p.warmup_s
        );
        println!(
            "    ok {}  429 {}  errors {}  status {:?}{}",
            t.ok,
            t.rejected_429,
            t.errors,
            t.status_counts,
            if p.cut_off_in_flight > 0 {
                format!(
                    "  unanswered at the end {} (oldest waiting {} ms)",
                    p.cut_off_in_flight,
                    ms(p.cut_off_oldest_ms.unwrap_or(f64::NAN))
                )
            } else {
                String::new()
            }
        );
        println!(
            "    {:.1} req/s  {:.1} prompts/s  {:.2} images/s",
            t.requests_per_s, t.prompts_per_s, t.images_per_s
        );
        println!(
            "    latency ms (ok): p50 {}  p95 {}  p99 {}  mean {}  max {}{}",
            ms(t.p50_ms),
            ms(t.p95_ms),
            ms(t.p99_ms),
            ms(t.mean_ms),
            ms(t.max_ms),
            if t.rejected_429 > 0 {
                format!(
                    "  | 429 p50 {} p99 {}",
                    ms(t.rejected_p50_ms),
                    ms(t.rejected_p99_ms)
                )
            } else {
                String::new()
            }
        );
        if t.ok < 20 && p.name != "recovery" {
            println!(
                "    note: only {} requests completed in the window; rates are coarse (lengthen --duration)",
                t.ok
            );
        }
        if let Some(d) = p.drain_s.filter(|d| *d >= 0.5) {
            println!("    server took {d:.1} s to go idle after the window");
        }
        if let Some(f) = t.first_ok_after_ms {
            if p.name == "recovery" {
                println!("    first success {f:.0} ms after the phase started");
            }
        }
        if p.by_kind.len() > 1 {
            for (k, s) in &p.by_kind {
                println!(
                    "    {k:<20} ok {:>6}  429 {:>5}  err {:>4}  {:>8.1} req/s  p50 {:>7}  p99 {:>7}",
                    s.ok,
                    s.rejected_429,
                    s.errors,
                    s.requests_per_s,
                    ms(s.p50_ms),
                    ms(s.p99_ms)
                );
            }
        }
        if let Some(s) = &p.server {
            let mut parts = Vec::new();
            if let (Some(b), Some(m)) = (s.decoder_batches, s.decoder_mean_batch) {
                parts.push(format!("decoder calls {b:.0} (mean batch {m:.1} prompts)"));
            }
            if let Some(e) = s.encoder_runs {
                parts.push(format!("encoder runs {e:.0}"));
            }
            if !s.rejected.is_empty() {
                parts.push(format!("rejected {:?}", s.rejected));
            }
            if let Some(a) = s.abandoned.filter(|a| *a > 0.0) {
                parts.push(format!("abandoned jobs {a:.0}"));
            }
            if !parts.is_empty() {
                println!("    server: {}", parts.join(", "));
            }
        }
    }
}
