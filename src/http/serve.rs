//! The accept loop: HTTP/1.1 connections with a header-read timeout (slowloris), a cap on
//! open connections, the client address on every request, and graceful shutdown.
//!
//! `axum::serve` sets no timer on hyper, so a client that sends half a request head, or
//! keeps a connection open without sending anything, holds it forever. Here hyper's
//! header-read timer runs whenever a connection waits for a request head: from the
//! connection's start and again after each response, so the same limit closes idle
//! keep-alive connections. Stalled bodies are covered by the request deadline
//! (`--request-timeout-ms`), which wraps reading the body too.
//!
//! Only HTTP/1.1 is served: sniffing for an HTTP/2 preface would itself wait on the client
//! before any timer runs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::Config;
use crate::metrics::Metrics;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time allowed for a request head, from the connection's start or the previous
    /// response's end; `None` = none.
    pub header_timeout: Option<Duration>,
    /// Most open connections; 0 = no cap.
    pub max_connections: usize,
    /// After the shutdown signal, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
}

impl ServeOptions {
    /// The options set by `config`.
    pub fn from_config(config: &Config) -> Self {
        let e = &config.exposure;
        ServeOptions {
            header_timeout: (e.header_timeout_ms > 0)
                .then(|| Duration::from_millis(e.header_timeout_ms)),
            max_connections: e.max_connections,
            shutdown_grace: Duration::from_millis(config.request_timeout_ms.max(1000)),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (up to the grace period). Requests carry `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = (opts.max_connections > 0).then(|| Arc::new(Semaphore::new(opts.max_connections)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    builder.header_read_timeout(opts.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Wait for a free connection slot before accepting: excess connections queue in the
        // kernel's backlog instead of holding memory here.
        let permit = match &slots {
            Some(s) => tokio::select! {
                p = s.clone().acquire_owned() => Some(p.expect("semaphore is never closed")),
                _ = &mut shutdown => break,
            },
            None => None,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper::service::service_fn({
            let app = app.clone();
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                app.clone().oneshot(req.map(axum::body::Body::new))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        let open = metrics.open_connections.clone();
        tokio::spawn(async move {
            open.inc();
            if let Err(e) = conn.await {
                tracing::debug!(client = %remote, error = %e, timeout = e.is_timeout(), "connection closed");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
    }
    Ok(())
}
