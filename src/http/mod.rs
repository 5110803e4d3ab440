//! HTTP layer: routes, request/response types, OpenAPI. Handlers are thin wrappers over
//! [`crate::core::engine::Engine`].

pub mod access;
pub mod address_slots;
pub mod body;
pub mod conn_timers;
pub mod cors;
pub mod downloads;
pub mod everything;
pub mod guard;
pub mod images;
pub mod openapi;
pub mod openapi_rules;
pub mod page;
pub mod serve;
pub mod system;
pub mod timing;
pub mod types;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::core::engine::Engine;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// State shared by handlers.
///
/// The engine slot starts empty so the server can listen (and answer `/healthz`, and 503
/// elsewhere) while models load.
#[derive(Clone)]
pub struct AppState {
    engine: Arc<OnceLock<Arc<Engine>>>,
    /// Metrics registry (shared with the engine once it exists).
    pub metrics: Arc<Metrics>,
    /// Body size limit in bytes.
    pub max_body_bytes: usize,
    /// Deadline of one request; 504 when exceeded.
    pub request_timeout: Option<std::time::Duration>,
    /// API keys and per-client limits (open by default).
    pub guard: Arc<guard::Guard>,
    /// Origins allowed by CORS (none: no CORS headers).
    pub cors: Arc<cors::CorsPolicy>,
}

impl AppState {
    /// A state whose engine is still loading.
    pub fn loading(metrics: Arc<Metrics>, max_body_bytes: usize) -> Self {
        AppState {
            engine: Arc::new(OnceLock::new()),
            metrics,
            max_body_bytes,
            request_timeout: None,
            guard: Arc::new(guard::Guard::open()),
            cors: Arc::new(cors::CorsPolicy::default()),
        }
    }

    /// A state with a ready engine.
    pub fn ready(engine: Arc<Engine>, max_body_bytes: usize) -> Self {
        let state = Self::loading(engine.metrics.clone(), max_body_bytes);
        state.set_engine(engine);
        state
    }

    /// Sets the per-request deadline (`None` or zero: no deadline).
    pub fn with_request_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.request_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Applies the exposure flags: API keys, per-client cap, CORS origins. Fails when the
    /// keys file cannot be read or the CORS origins are contradictory.
    pub fn with_exposure(
        mut self,
        config: &crate::config::exposure::ExposureConfig,
    ) -> anyhow::Result<Self> {
        self.guard = Arc::new(guard::Guard::from_config(config)?);
        self.cors = Arc::new(cors::CorsPolicy::new(&config.cors_allow_origins)?);
        Ok(self)
    }

    /// Installs the engine once loading finished.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or 503 while models load.
    pub fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.get().ok_or(ApiError::NotReady)
    }
}

/// Builds the application router.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/images", post(images::upload))
        .route(
            "/v1/images/{image_id}",
            put(images::put_image)
                .get(images::get_image)
                .head(images::head_image)
                .delete(images::delete_image),
        )
        .route("/v1/images/{image_id}/segment", post(images::segment))
        .route("/v1/segment", post(images::segment_inline))
        .route(
            "/v1/images/{image_id}/everything",
            post(everything::everything),
        )
        .route("/v1/everything", post(everything::everything_inline))
        .route("/v1/models", get(system::models))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi_json))
        .route("/docs", get(system::docs))
        .route("/docs/assets/{file}", get(system::docs_asset))
        .route("/favicon.ico", get(system::favicon))
        .route("/v1/images/{image_id}/embedding", get(downloads::embedding))
        .route(
            "/v1/models/{name}/decoder.onnx",
            get(downloads::decoder_onnx),
        )
        .merge(page::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(json_rejections))
        .layer(middleware::from_fn_with_state(state.clone(), track_metrics))
        // Outermost last: access log and request id around everything, CORS around the key
        // check (preflights carry no key, and a 401 must be readable cross-origin).
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(cors::layer(&state.cors))
        .layer(middleware::from_fn_with_state(
            state.cors.clone(),
            cors::only_allowed,
        ))
        .layer(middleware::from_fn(access::access))
        .with_state(state)
}

/// axum's extractors answer a malformed query string or path (`?dtype=a&dtype=b`, bad
/// percent-encoding) with a plain-text 400; every error of this API is the JSON error body,
/// so such an answer is rewritten as 400 `bad_request` with the extractor's message.
async fn json_rejections(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let plain = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if resp.status() != axum::http::StatusCode::BAD_REQUEST || !plain {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    ApiError::BadRequest(text).into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound {
        what: "route",
        id: req.uri().path().to_string(),
    }
}

async fn method_not_allowed(req: Request) -> Response {
    let msg = format!(
        "method {} is not allowed on {}",
        req.method(),
        req.uri().path()
    );
    let body = crate::error::ErrorBody {
        error: crate::error::ErrorDetail {
            code: "method_not_allowed".into(),
            message: msg,
            request_id: None,
        },
    };
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// Counts requests and records latency (to the response's last byte) by matched route,
/// method and status; applies the request deadline. A request past its deadline is answered 504 and its future dropped,
/// which also drops its queued model jobs before they run.
async fn track_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(req.method());
    let start = Instant::now();
    let m = &state.metrics;
    // A guard, because a client that disconnects drops this future midway; it moves into
    // the response body, which holds it until the last byte.
    let in_flight = timing::InFlight::enter(&m.in_flight_requests);
    let resp = match state.request_timeout {
        Some(limit) => match tokio::time::timeout(limit, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => {
                m.rejected_total.with_label_values(&["deadline"]).inc();
                ApiError::Timeout.into_response()
            }
        },
        None => next.run(req).await,
    };
    m.http_requests_total
        .with_label_values(&[&route, method, resp.status().as_str()])
        .inc();
    // Streamed bodies end long after the head: time the request to its last byte.
    timing::observe_at_last_byte(
        resp,
        m.http_request_duration_seconds
            .with_label_values(&[&route, method]),
        start,
        in_flight,
    )
}

/// The `method` label of the HTTP metrics: the standard methods by name, anything else
/// (a client may send any token as a method) as `other`, so the label stays bounded.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}
