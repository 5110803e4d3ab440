//! The accept loop: HTTP/1.1 connections with a header timeout (slowloris) and an idle
//! timeout, a cap on open connections, the client address on every request, and graceful
//! shutdown.
//!
//! `axum::serve` sets no timer on hyper, so a client that sends half a request head, or
//! keeps a connection open without sending anything, holds it forever. Here each socket
//! carries its connection's timers ([`super::conn_timers`]): a request head must arrive
//! within `--header-timeout-ms` of the connection's start (or of its first byte, on a
//! keep-alive connection), and a keep-alive connection may wait `--idle-timeout-ms` after a
//! response for its next request. Stalled bodies are covered by the request deadline
//! (`--request-timeout-ms`), which wraps reading the body too.
//!
//! Only HTTP/1.1 is served: sniffing for an HTTP/2 preface would itself wait on the client
//! before any timer runs.
//!
//! One client address holds at most `--max-connections-per-address` of the connection
//! slots ([`super::address_slots`]); its further connections are answered 429 at once and
//! closed, so the other slots stay free for other clients.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::address_slots::AddressSlots;
use super::conn_timers::{ConnPhase, GuardedBody, TimedIo, Timeouts};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time allowed for a request head, from the connection's start or (keep-alive) the
    /// head's first byte; `None` = none.
    pub header_timeout: Option<Duration>,
    /// Time a keep-alive connection may wait after a response for its next request's first
    /// byte; `None` = none.
    pub idle_timeout: Option<Duration>,
    /// Most open connections; 0 = no cap.
    pub max_connections: usize,
    /// Most open connections of one client address; 0 = no cap.
    pub max_connections_per_address: usize,
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
            idle_timeout: (e.idle_timeout_ms > 0).then(|| Duration::from_millis(e.idle_timeout_ms)),
            max_connections: e.max_connections,
            max_connections_per_address: e.max_connections_per_address,
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
    // The connection timers are kept by the socket wrapper (hyper's own header timer would
    // also run while a keep-alive connection is idle).
    builder.header_read_timeout(None);
    let timeouts = Timeouts {
        header: opts.header_timeout,
        idle: opts.idle_timeout,
    };
    let per_address = AddressSlots::new(opts.max_connections_per_address);
    let refusal = refusal_bytes(opts.max_connections_per_address).await;
    let refusing = Arc::new(AtomicUsize::new(0));
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
        let Some(address_slot) = per_address.take(remote.ip()) else {
            metrics
                .rejected_total
                .with_label_values(&["connection_limit"])
                .inc();
            drop(permit);
            refuse(stream, refusal.clone(), refusing.clone());
            continue;
        };
        let phase = ConnPhase::new(timeouts);
        let svc = hyper::service::service_fn({
            let app = app.clone();
            let phase = phase.clone();
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                let done = phase.request_started();
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                let resp = app.clone().oneshot(req.map(axum::body::Body::new));
                async move {
                    let resp = resp.await?;
                    Ok::<_, std::convert::Infallible>(
                        resp.map(|b| axum::body::Body::new(GuardedBody::new(b, done))),
                    )
                }
            }
        });
        let io = TokioIo::new(TimedIo::new(stream, phase.clone()));
        let conn = builder.serve_connection(io, svc);
        let conn = graceful.watch(conn);
        let open = metrics.open_connections.clone();
        let timed_out = metrics.connections_timed_out_total.clone();
        tokio::spawn(async move {
            open.inc();
            if let Err(e) = conn.await {
                tracing::debug!(client = %remote, error = %e, "connection closed");
            }
            if let Some(which) = phase.expired() {
                timed_out.with_label_values(&[which.label()]).inc();
            }
            open.dec();
            drop(address_slot);
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

/// Most refused connections being closed at once; past it they are dropped without an
/// answer.
const MAX_REFUSING: usize = 256;

/// The answer to a connection over the per-address cap: a whole HTTP/1.1 429 response with
/// the API's JSON error body, then the connection closes.
async fn refusal_bytes(max: usize) -> Arc<[u8]> {
    let resp = ApiError::TooManyRequests {
        message: format!(
            "this address already has {max} open connections (--max-connections-per-address)"
        ),
        retry_after_secs: 1,
    }
    .into_response();
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out.into()
}

/// Answers a refused connection and closes it: the response, then (for at most a second)
/// whatever the client still sends is read and dropped, so that the close does not reset
/// the connection before the client has read the answer.
fn refuse(mut stream: TcpStream, answer: Arc<[u8]>, refusing: Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut left: usize = 64 * 1024;
            while left > 0 {
                let n = stream.read(&mut sink).await?;
                if n == 0 {
                    break;
                }
                left = left.saturating_sub(n);
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        refusing.fetch_sub(1, Ordering::Relaxed);
    });
}
