//! Operational routes: models, health, readiness, metrics, OpenAPI and the docs page.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use super::types::{Health, ModelInfo, ModelList, TensorDescription, TextModelInfo};
use super::AppState;
use crate::error::ApiError;

/// List loaded models.
#[utoipa::path(get, path = "/v1/models", tag = "system",
    responses((status = 200, description = "Loaded models", body = ModelList),
              (status = 503, description = "Models still loading", body = crate::error::ErrorBody)))]
pub async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let engine = state.engine()?;
    let default = engine.default_model().to_string();
    Ok(Json(ModelList {
        models: engine
            .models()
            .map(|m| {
                let s = &m.spec;
                ModelInfo {
                    name: s.name.clone(),
                    family: s.family.clone(),
                    description: s.description.clone(),
                    precision: s.precision.clone(),
                    default: s.name == default,
                    input_size: s.input_size,
                    embedding_shape: s.embedding_shape,
                    tensors: s
                        .tensors
                        .iter()
                        .map(|t| TensorDescription {
                            name: t.name.clone(),
                            shape: t.shape.clone(),
                        })
                        .collect(),
                    embedding_bytes: s.embedding_bytes() as u64,
                    cache_bytes_per_image: engine.cache.bytes_per_image(s),
                    low_res_size: s.low_res_size,
                    batched_decoder: s.decoder_batched,
                    encoder_input: serde_json::to_value(s.encoder_input)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    encoder_device: s.encoder_device.clone(),
                    decoder_device: s.decoder_device.clone(),
                    text: m.text_manifest().map(|t| TextModelInfo {
                        name: t.name.clone(),
                        kind: t.kind.as_str().to_string(),
                        max_text_chars: t.max_text_chars,
                        description: t.description.clone(),
                    }),
                }
            })
            .collect(),
    }))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: models are loaded and workers run.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "Not ready", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.engine().map(|e| e.is_ready()).unwrap_or(false) {
        (
            StatusCode::OK,
            Json(Health {
                status: "ready".into(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not_ready".into(),
            }),
        )
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The OpenAPI document of this server.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::served_openapi_json(
            state.guard.keys_on(),
            state.guard.metrics_require_key(),
        ),
    )
}

/// The interactive API reference (Swagger UI on `/openapi.json`, with try-it-out). Its
/// assets come from the `swagger-ui-dist` crate, compiled into the binary: no network at
/// run time.
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs/index.html"))
}

/// The Swagger UI assets of [`docs`] and its start script.
pub async fn docs_asset(Path(file): Path<String>) -> Response {
    use std::sync::LazyLock;
    use tower::ServiceExt;
    static UI: LazyLock<axum::Router> = LazyLock::new(|| {
        swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
            uri_prefix: "/ui",
            api_definition: swagger_ui_dist::OpenApiSource::Uri("/openapi.json"),
            title: Some("samserve API"),
        })
    });
    let cached = |content_type: &'static str, body: Body| {
        (
            [
                (header::CONTENT_TYPE, content_type),
                // The assets change only with the binary.
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response()
    };
    match file.as_str() {
        "init.js" => cached(
            "text/javascript; charset=utf-8",
            Body::from(include_str!("docs/init.js")),
        ),
        "swagger-ui.css" | "swagger-ui-bundle.js" => {
            let req = axum::http::Request::get(format!("/ui/{file}"))
                .body(Body::empty())
                .expect("valid request");
            match UI.clone().oneshot(req).await {
                Ok(r) if r.status().is_success() => {
                    let ct = if file.ends_with(".css") {
                        "text/css; charset=utf-8"
                    } else {
                        "text/javascript; charset=utf-8"
                    };
                    cached(ct, r.into_body())
                }
                _ => ApiError::internal(format!("swagger-ui asset {file} missing")).into_response(),
            }
        }
        _ => ApiError::NotFound {
            what: "docs asset",
            id: file,
        }
        .into_response(),
    }
}

/// The site icon (also linked by the page and the docs).
pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/x-icon"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        &include_bytes!("page/favicon.ico")[..],
    )
        .into_response()
}
