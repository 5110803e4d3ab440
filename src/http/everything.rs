//! Segment-everything routes: one JSON document, or NDJSON lines streamed as work proceeds.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::body::{decode_base64_image, parse_json, read_json_body, read_payload, Payload};
use super::types::ModelQuery;
use super::AppState;
use crate::core::amg::{AmgMask, AmgParams, AmgProgress, AmgSummary};
use crate::core::engine::{Engine, OutputFormat};
use crate::core::masks::polygon::{mask_to_polygons, Polygon};
use crate::core::masks::rle::{encode, CocoRle};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorDetail};

/// Body of a segment-everything call: the generator's parameters (all optional, reference
/// defaults) plus the mask encoding. The one-shot form adds `image` (base64).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct EverythingRequest {
    /// Generator parameters, given at the top level of the body.
    #[serde(flatten)]
    pub params: AmgParams,
    /// Mask encoding: `rle` (default), `png`, `polygon` or `none`.
    #[serde(default)]
    pub output: OutputFormat,
    /// A phrase: keep only masks whose `text_score` is at least `text_threshold`, sorted
    /// by it (models with a text model only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Lowest `text_score` kept when `text` is given (default 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_threshold: Option<f32>,
}

/// Body of the one-shot `POST /v1/everything` as JSON: the request's fields plus the image
/// (the schema of what [`parse_request`] reads).
#[derive(Debug, Deserialize, ToSchema)]
pub struct InlineEverythingRequest {
    /// The image file (any supported format), base64-encoded.
    pub image: String,
    /// The generator's parameters and the mask encoding, at the top level of the body.
    #[serde(flatten)]
    pub request: EverythingRequest,
}

/// Multipart one-shot segment everything: the image and an optional JSON `request` part
/// (documentation only).
#[derive(ToSchema)]
pub struct EverythingForm {
    /// The image file.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
    /// The generator's parameters: a JSON part (`Content-Type: application/json`, or none);
    /// reference defaults when absent.
    pub request: Option<EverythingRequest>,
}

/// Default `text_threshold` of segment everything with `text`.
pub const DEFAULT_TEXT_THRESHOLD: f32 = 0.3;

/// A mask as encoded on the wire.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Segmentation {
    /// COCO compressed RLE.
    Rle(CocoRle),
    /// Base64 1-bit PNG.
    Png(String),
    /// Polygons with holes.
    Polygons(Vec<Polygon>),
}

/// One generated mask: the reference generator's output record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EverythingMask {
    /// The mask (absent with `output: none`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub segmentation: Option<Segmentation>,
    /// Foreground pixels.
    pub area: u64,
    /// `[x, y, w, h]` from the inclusive-max box, as the reference reports it.
    pub bbox: [u32; 4],
    /// Predicted IoU.
    pub predicted_iou: f32,
    /// The prompt point, `[[x, y]]`.
    pub point_coords: Vec<[f64; 2]>,
    /// Stability score (null for an empty mask when the stability filter is off).
    pub stability_score: Option<f32>,
    /// Crop the mask came from, `[x, y, w, h]`.
    pub crop_box: [u32; 4],
    /// Cosine similarity to the request's `text`, when one was given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text_score: Option<f32>,
}

/// Answer of a segment-everything call (non-streaming).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EverythingResponse {
    /// Image id.
    pub image_id: String,
    /// Model used.
    pub model: String,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Masks in the reference generator's order.
    pub masks: Vec<EverythingMask>,
    /// How the run went; `truncated` tells whether the caps dropped masks.
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
}

fn encode_record(m: AmgMask, output: OutputFormat) -> EverythingMask {
    let segmentation = match output {
        OutputFormat::Rle => Some(Segmentation::Rle(encode(&m.segmentation))),
        OutputFormat::Png => Some(Segmentation::Png(
            base64::engine::general_purpose::STANDARD
                .encode(crate::core::masks::png::encode_png_1bit(&m.segmentation)),
        )),
        OutputFormat::Polygon => Some(Segmentation::Polygons(mask_to_polygons(&m.segmentation))),
        OutputFormat::None => None,
    };
    EverythingMask {
        segmentation,
        area: m.area,
        bbox: m.bbox,
        predicted_iou: m.predicted_iou,
        point_coords: vec![m.point_coords],
        stability_score: m.stability_score.is_finite().then_some(m.stability_score),
        crop_box: m.crop_box,
        text_score: None,
    }
}

fn summary_json(
    s: &AmgSummary,
    model: &str,
    width: u32,
    height: u32,
    image_id: &str,
) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("image_id".into(), image_id.into());
        o.insert("model".into(), model.into());
        o.insert("width".into(), width.into());
        o.insert("height".into(), height.into());
    }
    v
}

/// Splits a JSON body into the request and an optional inline image (`image`, base64).
pub fn parse_request(
    body: &[u8],
    allow_image: bool,
) -> ApiResult<(EverythingRequest, Option<Bytes>)> {
    let mut v: serde_json::Value = parse_json(body)?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("body must be a JSON object".into()))?;
    let image = match obj.remove("image") {
        Some(serde_json::Value::String(s)) if allow_image => Some(decode_base64_image(&s)?),
        Some(_) if allow_image => {
            return Err(ApiError::BadRequest(
                "field 'image' must be a base64 string".into(),
            ))
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "unknown field 'image' (use POST /v1/everything for inline images)".into(),
            ))
        }
        None => None,
    };
    let text = match obj.remove("text") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::BadRequest("field 'text' must be a string".into())),
    };
    let text_threshold = match obj.remove("text_threshold") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if t.is_finite() => Some(t as f32),
            _ => {
                return Err(ApiError::BadRequest(
                    "field 'text_threshold' must be a number".into(),
                ))
            }
        },
    };
    if text_threshold.is_some() && text.is_none() {
        return Err(ApiError::InvalidPrompt("text_threshold needs text".into()));
    }
    let output: OutputFormat = match obj.remove("output") {
        Some(o) => serde_json::from_value(o)
            .map_err(|e| ApiError::BadRequest(format!("invalid 'output': {e}")))?,
        None => OutputFormat::default(),
    };
    let params: AmgParams = serde_json::from_value(v)
        .map_err(|e| ApiError::BadRequest(format!("invalid parameters: {e}")))?;
    params.validate().map_err(ApiError::InvalidPrompt)?;
    Ok((
        EverythingRequest {
            params,
            output,
            text,
            text_threshold,
        },
        image,
    ))
}

/// One NDJSON line: the value's JSON object with a `type` field added.
fn ndjson_line(kind: &str, value: impl Serialize) -> Bytes {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), kind.into());
    }
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.contains("application/x-ndjson"))
        .unwrap_or(false)
}

/// Run SAM's automatic mask generator on a cached image.
///
/// With `Accept: application/x-ndjson` the answer streams one JSON object per line:
/// `{"type": "progress", ...}` while points are decoded, then `{"type": "mask", ...}` per
/// mask, then `{"type": "summary", ...}` (or `{"type": "error", "error": {...}}`).
#[utoipa::path(
    post, path = "/v1/images/{image_id}/everything", tag = "segment",
    params(("image_id" = String, Path, description = "Image id from POST /v1/images", pattern = "^[0-9a-f]{64}$", example = json!(super::images::EXAMPLE_PNG_ID)), ModelQuery),
    request_body(content((EverythingRequest = "application/json",
        example = json!({"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})))),
    responses(
        (status = 200, description = "Generated masks (JSON, or NDJSON lines when asked)", body = EverythingResponse),
        (status = 400, description = "Malformed body, image id or unknown query parameter", body = ErrorBody),
        (status = 413, description = "Body over the limit, or the grid asks for more points or crops than --everything-max-points / --everything-max-crops allow", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 404, description = "Unknown image or model", body = ErrorBody),
        (status = 422, description = "Invalid parameters", body = ErrorBody),
        (status = 429, description = "Overloaded", body = ErrorBody),
    )
)]
pub async fn everything(
    State(state): State<AppState>,
    Path(image_id): Path<String>,
    Query(q): Query<ModelQuery>,
    req: Request,
) -> ApiResult<Response> {
    let ndjson = wants_ndjson(req.headers());
    let body = read_json_body(req, state.max_body_bytes).await?;
    let (request, _) = parse_request(&body, false)?;
    run(state, q.model, image_id, request, ndjson).await
}

/// One-shot segment everything with the image inline (JSON with base64 `image`, or
/// multipart with `image` and an optional `request` JSON part). Uses the same cache.
#[utoipa::path(
    post, path = "/v1/everything", tag = "segment",
    params(ModelQuery),
    request_body(content(
        (InlineEverythingRequest = "application/json", example = json!({"image": super::images::EXAMPLE_PNG_BASE64,
            "points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})),
        (EverythingForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "Generated masks", body = EverythingResponse),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 400, description = "Malformed body, corrupt image or unknown query parameter", body = ErrorBody),
        (status = 413, description = "Over a limit: body (--max-body-bytes), pixels (--max-image-pixels), aspect ratio (--max-aspect-ratio) or decoded size (--max-decoded-bytes), or the grid's points or crops (--everything-max-points / --everything-max-crops)", body = ErrorBody),
        (status = 415, description = "Unsupported type", body = ErrorBody),
        (status = 422, description = "Invalid parameters", body = ErrorBody),
    )
)]
pub async fn everything_inline(
    State(state): State<AppState>,
    Query(q): Query<ModelQuery>,
    req: Request,
) -> ApiResult<Response> {
    let ndjson = wants_ndjson(req.headers());
    let (request, image) = match read_payload(req, state.max_body_bytes).await? {
        Payload::Json(j) => {
            let (r, image) = parse_request(&j, true)?;
            let image = image
                .ok_or_else(|| ApiError::BadRequest("missing field 'image' (base64)".into()))?;
            (r, image)
        }
        Payload::Multipart { image, request } => {
            let r = match request {
                Some(r) => parse_request(&r, false)?.0,
                None => EverythingRequest::default(),
            };
            (r, image)
        }
        Payload::Image(_) => {
            return Err(ApiError::UnsupportedMediaType(
                "POST /v1/everything takes application/json or multipart/form-data".into(),
            ))
        }
    };
    // Refuse an over-limit grid before paying for the upload's encode.
    state.engine()?.check_everything_work(&request.params)?;
    let info = state
        .engine()?
        .ingest(q.model.as_deref(), image, None)
        .await?;
    run(state, q.model, info.image_id, request, ndjson).await
}

async fn run(
    state: AppState,
    model: Option<String>,
    image_id: String,
    request: EverythingRequest,
    ndjson: bool,
) -> ApiResult<Response> {
    let engine = state.engine()?.clone();
    // Fail fast on unknown model or image before starting a stream.
    engine.embedding(model.as_deref(), &image_id).await?;
    let output = request.output;
    let text = request
        .text
        .map(|t| (t, request.text_threshold.unwrap_or(DEFAULT_TEXT_THRESHOLD)));
    if let Some((t, _)) = &text {
        engine.validate_text(model.as_deref(), t)?;
    }
    if !ndjson {
        let never = || false;
        let (out, w, h) = engine
            .everything(model.as_deref(), &image_id, request.params, |_| {}, &never)
            .await?;
        let model_name = engine.model(model.as_deref())?.spec.name.clone();
        let summary = summary_json(&out.summary, &model_name, w, h, &image_id);
        let scored = score(&engine, model.as_deref(), &image_id, text, out.masks).await?;
        let masks = tokio::task::spawn_blocking(move || {
            scored
                .into_iter()
                .map(|(m, s)| {
                    let mut r = encode_record(m, output);
                    r.text_score = s;
                    r
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(ApiError::internal)?;
        return Ok(Json(EverythingResponse {
            image_id,
            model: model_name,
            width: w,
            height: h,
            masks,
            summary,
        })
        .into_response());
    }

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let cancel_tx = tx.clone();
        let cancelled = move || cancel_tx.is_closed();
        let result = engine
            .everything(
                model.as_deref(),
                &image_id,
                request.params,
                move |p: AmgProgress| {
                    // Progress lines are advisory: skip one rather than wait for the client.
                    let _ = progress_tx.try_send(ndjson_line("progress", p));
                },
                &cancelled,
            )
            .await;
        match result {
            Ok((out, w, h)) => {
                let model_name = engine
                    .model(model.as_deref())
                    .map(|m| m.spec.name.clone())
                    .unwrap_or_default();
                let summary = summary_json(&out.summary, &model_name, w, h, &image_id);
                let scored =
                    match score(&engine, model.as_deref(), &image_id, text, out.masks).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(error_line(&e)).await;
                            return;
                        }
                    };
                for (m, s) in scored {
                    let rec = tokio::task::spawn_blocking(move || {
                        let mut r = encode_record(m, output);
                        r.text_score = s;
                        r
                    })
                    .await;
                    let Ok(rec) = rec else { return };
                    if tx.send(ndjson_line("mask", rec)).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(ndjson_line("summary", summary)).await;
            }
            Err(e) => {
                let _ = tx.send(error_line(&e)).await;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn error_line(e: &ApiError) -> Bytes {
    let (_, code) = e.kind().status_and_code();
    ndjson_line(
        "error",
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: e.public_message(),
                request_id: None,
            },
        },
    )
}

/// With a phrase: the masks whose text score passes the threshold, best first; without:
/// all masks in the generator's order.
async fn score(
    engine: &Engine,
    model: Option<&str>,
    image_id: &str,
    text: Option<(String, f32)>,
    masks: Vec<AmgMask>,
) -> ApiResult<Vec<(AmgMask, Option<f32>)>> {
    let Some((text, threshold)) = text else {
        return Ok(masks.into_iter().map(|m| (m, None)).collect());
    };
    let segs: Vec<_> = masks.iter().map(|m| m.segmentation.clone()).collect();
    let scores = engine.score_masks(model, image_id, &text, &segs).await?;
    let mut kept: Vec<(AmgMask, Option<f32>)> = masks
        .into_iter()
        .zip(scores)
        .filter(|(_, s)| *s >= threshold)
        .map(|(m, s)| (m, Some(s)))
        .collect();
    kept.sort_by(|a, b| b.1.unwrap_or(0.0).total_cmp(&a.1.unwrap_or(0.0)));
    Ok(kept)
}
