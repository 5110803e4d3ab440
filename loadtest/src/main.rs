//! `samserve-loadtest`: closed-loop load generator for samserve, an in-process decoder
//! baseline, and `bench`, which runs both and reports how close the server gets.

mod baseline;
mod bench;
mod capacity;
mod gen;
mod load;
mod promscrape;
mod rng;
mod scenario;
mod soak;
mod stats;
mod textbench;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "samserve-loadtest",
    version,
    about = "Load tests and benchmarks for samserve"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed-loop load of one scenario against a running server.
    Run(load::RunArgs),
    /// In-process decoder throughput (no HTTP): the ceiling the server is compared to.
    Baseline(baseline::BaselineArgs),
    /// Baseline + every scenario against freshly started servers; Markdown + JSON report.
    Bench(bench::BenchArgs),
    /// Text-prompt latency against a running server (the text run of `bench`).
    Text(textbench::TextArgs),
    /// Long mixed traffic (uploads forcing eviction, clicks, boxes, everything, refinement,
    /// abandoned requests) against a fresh server with a small cache; RSS and cache sampled.
    Soak(soak::SoakArgs),
}

fn write_json<T: serde::Serialize>(path: &std::path::Path, v: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", path.display()))
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(a) => {
            let r = load::run_scenario(&a).await?;
            load::print_run(&r);
            if let Some(p) = &a.json {
                write_json(p, &r)?;
            }
        }
        Cmd::Baseline(a) => {
            let r = tokio::task::spawn_blocking({
                let a = a.clone();
                move || baseline::run(&a)
            })
            .await??;
            baseline::print(&r);
            if let Some(p) = &a.json {
                write_json(p, &r)?;
            }
        }
        Cmd::Bench(a) => {
            bench::run(a).await?;
        }
        Cmd::Text(a) => {
            let r = textbench::run(&a.url, a.images, a.repeats, a.image_size, a.seed).await?;
            print!("{}", textbench::markdown(&r));
            if let Some(p) = &a.json {
                write_json(p, &r)?;
            }
        }
        Cmd::Soak(a) => {
            let r = soak::run(a).await?;
            soak::print(&r)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // ^C drops the running command's future, which stops any server `bench` started.
    let result = rt.block_on(async {
        tokio::select! {
            r = dispatch(cli.cmd) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Do not wait for a baseline thread still timing after ^C.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}
