//! The `samserve` binary: parse configuration, load models, serve HTTP.

use std::sync::Arc;

use clap::Parser;
use samserve::config::embed::EmbedArgs;
use samserve::config::Config;
use samserve::core::engine::Engine;
use samserve::http::serve::{serve, ServeOptions};
use samserve::http::{router, AppState};
use samserve::metrics::Metrics;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `samserve embed ...`: prewarm a shared embedding store instead of serving.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "embed") {
        return embed(EmbedArgs::parse_from(&args[1..])).await;
    }
    let config = Config::parse();
    init_tracing(&config.log_format);
    tracing::info!(?config, "starting samserve");
    let metrics = Arc::new(Metrics::new());
    let state = AppState::loading(metrics.clone(), config.max_body_bytes)
        .with_request_timeout(Some(std::time::Duration::from_millis(
            config.request_timeout_ms,
        )))
        .with_exposure(&config.exposure)?;
    reload_keys_on_sighup(state.guard.clone());
    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // The bound address (the port may have been 0).
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening; /readyz answers 503 until the models are loaded");
    let server = tokio::spawn(serve(
        listener,
        router(state.clone()),
        ServeOptions::from_config(&config),
        metrics.clone(),
        shutdown_signal(),
    ));
    // A model that fails to load stops the process: serving without it would hide the
    // misconfiguration behind 503s.
    let engine = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Engine::start(&config, metrics)).await??
    };
    state.set_engine(engine);
    tracing::info!("ready");
    server.await??;
    Ok(())
}

/// `samserve embed`: progress on stderr, the summary on stdout; exit status 1 when an image
/// failed.
async fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    // Warnings only unless RUST_LOG says otherwise, on stderr beside the progress line;
    // stdout carries the summary alone.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ort=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let summary = samserve::core::prewarm::run(args).await?;
    print!("{}", summary.report());
    if !summary.failed.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    // Colour codes only when a person reads the log on a terminal: a log file or a
    // collector gets plain text. NO_COLOR (https://no-color.org) turns them off anyway.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Re-reads the API keys file on SIGHUP; requests in flight are not disturbed, and a file that
/// fails to parse keeps the old keys.
fn reload_keys_on_sighup(guard: std::sync::Arc<samserve::http::guard::Guard>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match guard.reload_keys() {
                Ok(n) => tracing::info!(keys = n, "API keys reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "API keys not reloaded; keeping the old ones")
                }
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
