//! Operational routes: models, health, readiness, metrics, OpenAPI and the docs page.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
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

/// A self-contained API reference page rendered from `/openapi.json` (no external assets).
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
