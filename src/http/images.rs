//! Image and segment routes. Handlers only translate HTTP to engine calls.

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;

use super::body::{decode_base64_image, parse_json, read_payload, Payload};
use super::types::*;
use super::AppState;
use crate::core::engine::SegmentOptions;
use crate::error::{ApiError, ApiResult, ErrorBody};

/// A 32x24 PNG (blue with a red rectangle), the OpenAPI examples' image.
pub const EXAMPLE_PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAACAAAAAYCAIAAAAUMWhjAAAAN0lEQVR42mPUqDjBQEvAxEBjMGrBwFvAgkti37Iwkgxyilo1GgejFoxaMGoBuYBxtEYbtYBiAADRAgYBYIMQTAAAAABJRU5ErkJggg==";

/// The image id of [`EXAMPLE_PNG_BASE64`] (blake3 of its bytes; a unit test checks it), the
/// OpenAPI examples' image id: an example upload followed by example calls on it succeeds.
pub const EXAMPLE_PNG_ID: &str = "8f737f170fa0bb8346369ccff44ad284f3fe4958c5054f145b660000162af455";

/// Takes the image bytes out of a payload of an upload route.
fn upload_bytes(p: Payload) -> ApiResult<Bytes> {
    match p {
        Payload::Image(b) => Ok(b),
        Payload::Multipart { image, .. } => Ok(image),
        Payload::Json(j) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Upload {
                image: String,
            }
            let u: Upload = parse_json(&j)?;
            decode_base64_image(&u.image)
        }
    }
}

/// Upload an image; its embedding is computed (or found) and cached.
#[utoipa::path(
    post, path = "/v1/images", tag = "images",
    params(ModelQuery),
    request_body(description = "Image bytes (image/*, application/octet-stream), multipart with an \
        `image` part, or JSON `{\"image\": \"<base64>\"}`", content(
        (ImageBytes = "application/octet-stream"), (ImageForm = "multipart/form-data"),
        (ImageJson = "application/json", example = json!({"image": EXAMPLE_PNG_BASE64})))),
    responses(
        (status = 200, description = "Image embedded (or already cached)", body = ImageResponse,
            links(
                ("segment" = (operation_id = "segment", parameters(("image_id" = "$response.body#/image_id")))),
                ("everything" = (operation_id = "everything", parameters(("image_id" = "$response.body#/image_id")))),
                ("get_image" = (operation_id = "get_image", parameters(("image_id" = "$response.body#/image_id")))),
                ("delete_image" = (operation_id = "delete_image", parameters(("image_id" = "$response.body#/image_id")))),
            )),
        (status = 400, description = "Corrupt image, malformed body or unknown query parameter", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 413, description = "Over a limit: body (--max-body-bytes), pixels (--max-image-pixels), aspect ratio (--max-aspect-ratio) or decoded size (--max-decoded-bytes)", body = ErrorBody),
        (status = 415, description = "Unsupported content or image type", body = ErrorBody),
        (status = 429, description = "Overloaded, retry later", body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    Query(q): Query<ModelQuery>,
    req: Request,
) -> ApiResult<Json<ImageResponse>> {
    let bytes = upload_bytes(read_payload(req, state.max_body_bytes).await?)?;
    let info = state
        .engine()?
        .ingest(q.model.as_deref(), bytes, None)
        .await?;
    Ok(Json(info.into()))
}

/// Upload an image under a client-computed id (blake3 hex of the bytes); rejected when the
/// id does not match.
#[utoipa::path(
    put, path = "/v1/images/{image_id}", tag = "images",
    params(("image_id" = String, Path, description = "blake3 hex of the image bytes", pattern = "^[0-9a-f]{64}$", example = json!(EXAMPLE_PNG_ID)), ModelQuery),
    request_body(description = "Image bytes, multipart or base64 JSON, as for POST /v1/images",
        content((ImageBytes = "application/octet-stream"), (ImageForm = "multipart/form-data"),
            (ImageJson = "application/json", example = json!({"image": EXAMPLE_PNG_BASE64})))),
    responses(
        (status = 200, description = "Image embedded (or already cached)", body = ImageResponse),
        (status = 400, description = "Hash mismatch, corrupt image, malformed body or unknown query parameter", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 413, description = "Over a limit: body (--max-body-bytes), pixels (--max-image-pixels), aspect ratio (--max-aspect-ratio) or decoded size (--max-decoded-bytes)", body = ErrorBody),
        (status = 415, description = "Unsupported type", body = ErrorBody),
    )
)]
pub async fn put_image(
    State(state): State<AppState>,
    Path(image_id): Path<String>,
    Query(q): Query<ModelQuery>,
    req: Request,
) -> ApiResult<Json<ImageResponse>> {
    let bytes = upload_bytes(read_payload(req, state.max_body_bytes).await?)?;
    let info = state
        .engine()?
        .ingest(q.model.as_deref(), bytes, Some(&image_id))
        .await?;
    Ok(Json(info.into()))
}

/// Describe a cached image.
#[utoipa::path(
    get, path = "/v1/images/{image_id}", tag = "images",
    params(("image_id" = String, Path, description = "Image id", pattern = "^[0-9a-f]{64}$", example = json!(EXAMPLE_PNG_ID)), ModelQuery),
    responses(
        (status = 200, description = "The image is cached", body = ImageResponse),
        (status = 400, description = "Malformed image id or unknown query parameter", body = ErrorBody),
        (status = 404, description = "Unknown image (or evicted) or model", body = ErrorBody),
    )
)]
pub async fn get_image(
    State(state): State<AppState>,
    Path(image_id): Path<String>,
    Query(q): Query<ModelQuery>,
) -> ApiResult<Json<ImageResponse>> {
    let emb = state
        .engine()?
        .embedding(q.model.as_deref(), &image_id)
        .await?;
    let model = state.engine()?.model(q.model.as_deref())?.spec.name.clone();
    Ok(Json(ImageResponse {
        image_id,
        width: emb.width,
        height: emb.height,
        cached: true,
        model,
    }))
}

/// Whether an image's embedding is cached (200) or not (404); no body.
#[utoipa::path(
    head, path = "/v1/images/{image_id}", tag = "images",
    params(("image_id" = String, Path, description = "Image id", pattern = "^[0-9a-f]{64}$", example = json!(EXAMPLE_PNG_ID)), ModelQuery),
    responses((status = 200, description = "Cached"), (status = 400, description = "Malformed image id or unknown query parameter"),
        (status = 404, description = "Not cached, or unknown model"))
)]
pub async fn head_image(
    State(state): State<AppState>,
    Path(image_id): Path<String>,
    Query(q): Query<ModelQuery>,
) -> StatusCode {
    let found = match state.engine() {
        Ok(engine) => engine
            .embedding(q.model.as_deref(), &image_id)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match found {
        Ok(()) => StatusCode::OK,
        Err(e) => e.kind().status_and_code().0,
    }
}

/// Drop an image's embedding from the cache.
#[utoipa::path(
    delete, path = "/v1/images/{image_id}", tag = "images",
    params(("image_id" = String, Path, description = "Image id", pattern = "^[0-9a-f]{64}$", example = json!(EXAMPLE_PNG_ID)), ModelQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Malformed image id or unknown query parameter", body = ErrorBody),
        (status = 404, description = "Not cached", body = ErrorBody),
    )
)]
pub async fn delete_image(
    State(state): State<AppState>,
    Path(image_id): Path<String>,
    Query(q): Query<ModelQuery>,
) -> ApiResult<StatusCode> {
    state
        .engine()?
        .remove(q.model.as_deref(), &image_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run point, box and mask prompts against a cached image.
#[utoipa::path(
    post, path = "/v1/images/{image_id}/segment", tag = "segment",
    params(("image_id" = String, Path, description = "Image id from POST /v1/images", pattern = "^[0-9a-f]{64}$", example = json!(EXAMPLE_PNG_ID)), ModelQuery),
    request_body(content((SegmentRequest = "application/json",
        example = json!({"prompts": [{"points": [{"x": 16, "y": 12, "label": 1}]}]})))),
    responses(
        (status = 200, description = "Masks per prompt", body = SegmentResponse),
        (status = 400, description = "Malformed body, image id or unknown query parameter", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 404, description = "Unknown image or model", body = ErrorBody),
        (status = 422, description = "Invalid prompt", body = ErrorBody),
        (status = 429, description = "Overloaded", body = ErrorBody),
    )
)]
pub async fn segment(
    State(state): State<AppState>,
    Path(image_id): Path<String>,
    Query(q): Query<ModelQuery>,
    req: Request,
) -> ApiResult<Json<SegmentResponse>> {
    let body = super::body::read_json_body(req, state.max_body_bytes).await?;
    let r: SegmentRequest = parse_json(&body)?;
    run_segment(&state, q.model.as_deref(), image_id, true, r).await
}

async fn run_segment(
    state: &AppState,
    model: Option<&str>,
    image_id: String,
    cached: bool,
    r: SegmentRequest,
) -> ApiResult<Json<SegmentResponse>> {
    let engine = state.engine()?;
    let opts = SegmentOptions {
        multimask_output: r.multimask_output,
        output: r.output,
        return_logits: r.return_logits,
    };
    let out = engine.segment(model, &image_id, &r.prompts, opts).await?;
    Ok(Json(SegmentResponse {
        image_id,
        model: out.model,
        width: out.width,
        height: out.height,
        cached,
        results: out
            .masks
            .into_iter()
            .map(|masks| PromptResult {
                masks: masks.into_iter().map(MaskOut::from).collect(),
            })
            .collect(),
    }))
}

/// One-shot segmentation with the image inline (base64 JSON, or multipart with `image` and
/// `request` parts). Goes through the same embedding cache as the two-step form.
#[utoipa::path(
    post, path = "/v1/segment", tag = "segment",
    params(ModelQuery),
    request_body(content(
        (InlineSegmentRequest = "application/json", example = json!({"image": EXAMPLE_PNG_BASE64,
            "prompts": [{"box": [8, 6, 24, 18]}]})),
        (SegmentForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "Masks per prompt", body = SegmentResponse),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 400, description = "Malformed body, corrupt image or unknown query parameter", body = ErrorBody),
        (status = 413, description = "Over a limit: body (--max-body-bytes), pixels (--max-image-pixels), aspect ratio (--max-aspect-ratio) or decoded size (--max-decoded-bytes)", body = ErrorBody),
        (status = 415, description = "Unsupported type", body = ErrorBody),
        (status = 422, description = "Invalid prompt", body = ErrorBody),
    )
)]
pub async fn segment_inline(
    State(state): State<AppState>,
    Query(q): Query<ModelQuery>,
    req: Request,
) -> ApiResult<Json<SegmentResponse>> {
    let (image, request) = match read_payload(req, state.max_body_bytes).await? {
        Payload::Json(j) => {
            let r: InlineSegmentRequest = parse_json(&j)?;
            let image = decode_base64_image(&r.image)?;
            (
                image,
                SegmentRequest {
                    prompts: r.prompts,
                    multimask_output: r.multimask_output,
                    output: r.output,
                    return_logits: r.return_logits,
                },
            )
        }
        Payload::Multipart { image, request } => {
            // Without a request there is nothing to segment: the same 422 as `prompts: []`.
            let request = request.ok_or_else(|| {
                ApiError::prompt(
                    "no prompts given: the multipart body has no (or an empty) 'request' part",
                )
            })?;
            (image, parse_json::<SegmentRequest>(&request)?)
        }
        Payload::Image(_) => {
            return Err(ApiError::UnsupportedMediaType(
                "POST /v1/segment takes application/json or multipart/form-data".into(),
            ))
        }
    };
    // Validate the prompt list before paying for an encode.
    if request.prompts.is_empty() {
        return Err(ApiError::prompt("no prompts given"));
    }
    let info = state
        .engine()?
        .ingest(q.model.as_deref(), image, None)
        .await?;
    run_segment(
        &state,
        q.model.as_deref(),
        info.image_id,
        info.cached,
        request,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_id_is_the_hash_of_the_example_image() {
        let bytes = decode_base64_image(EXAMPLE_PNG_BASE64).unwrap();
        assert_eq!(crate::core::engine::image_id_of(&bytes), EXAMPLE_PNG_ID);
    }
}
