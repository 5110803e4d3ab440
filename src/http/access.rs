//! Request ids and the access log.
//!
//! Every request gets an id: the client's `X-Request-Id` when it is a short token, else a new
//! one. It is echoed on every response, carried by a tracing span around the request (so
//! every log line the request causes names it) and added to JSON error bodies. When the
//! response head is ready, one access-log line (target `samserve::access`) records method,
//! route template, status, body bytes (when known), duration, client address and API key id.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use tracing::Instrument;

use super::guard::ClientIdentity;

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request, on the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Whether a client-sent id is kept: 1-128 characters of `A-Za-z0-9._:-` (nothing that could
/// forge a log line or a header).
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new id: 16 hex digits, unique in this process and unlikely to repeat across restarts.
fn generate() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&now.to_le_bytes());
    h.update(&n.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// Largest error body rewritten to carry the request id.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Middleware: assigns the id, runs the request inside its span, echoes the id, writes the
/// access-log line.
pub async fn access(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(generate);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let start = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        resp = with_request_id_in_body(resp, &id).await;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    let key_id = resp
        .extensions()
        .get::<ClientIdentity>()
        .and_then(|c| c.key_id.clone());
    let bytes = HttpBody::size_hint(resp.body()).exact();
    span.in_scope(|| {
        tracing::info!(
            target: "samserve::access",
            method = %method,
            route = %route,
            status = resp.status().as_u16(),
            bytes,
            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
            client = %client,
            key_id = key_id.as_deref().unwrap_or("-"),
            "request"
        )
    });
    resp
}

/// Adds `request_id` to a JSON error body (`{"error": {...}}`); other bodies pass unchanged.
async fn with_request_id_in_body(resp: Response, id: &str) -> Response {
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let small = HttpBody::size_hint(resp.body())
        .upper()
        .is_some_and(|n| n as usize <= MAX_ERROR_BODY);
    if !is_json || !small {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await else {
        return Response::from_parts(parts, Body::empty());
    };
    let bytes = collected.to_bytes();
    let rewritten = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|mut v| {
            v.get_mut("error")?
                .as_object_mut()?
                .insert("request_id".into(), id.into());
            serde_json::to_vec(&v).ok()
        });
    let out = rewritten.unwrap_or_else(|| bytes.to_vec());
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_tokens_and_replaces_anything_else() {
        assert!(acceptable("abc-123_x.y:z"));
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable("line\nbreak"));
        assert!(!acceptable(&"x".repeat(129)));
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(acceptable(&a));
    }
}
