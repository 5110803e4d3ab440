//! Downloads for hybrid decoding: an image's embedding (`.npy`) and a model's decoder
//! (`decoder.onnx`), so a client can run the decoder itself with no round trip per prompt.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use crate::core::downloads::{embedding_file, EmbeddingDtype, ServedFile};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// Query of `GET /v1/images/{image_id}/embedding`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingQuery {
    /// Model name; the server's default model when omitted.
    pub model: Option<String>,
    /// `float32` (default: the values the decoder sees) or `float16` (half the bytes,
    /// rounded to nearest even).
    #[param(pattern = "^(float32|float16)$")]
    pub dtype: Option<String>,
}

/// True when the request's `If-None-Match` lists `etag` (or `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// A file answer with its validator, or 304 when the client already has it.
fn file_response(
    req_headers: &HeaderMap,
    file: ServedFile,
    content_type: &'static str,
    cache_control: &'static str,
    extra: Vec<(&'static str, String)>,
) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(v) = HeaderValue::from_str(&file.etag) {
        headers.insert(header::ETAG, v);
    }
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    if not_modified(req_headers, &file.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (StatusCode::OK, headers, file.bytes).into_response()
}

/// Download a cached image's embedding: a NumPy `.npy` file (format 1.0, C order, shape
/// `[1, C, h, w]`, little-endian `<f4`, or `<f2` with `?dtype=float16`) for a model whose
/// embedding is one tensor (SAM), or an `.npz` (uncompressed zip of one `.npy` per tensor,
/// `numpy.load` reads it) for a model with several (SAM 2: `image_embed`,
/// `high_res_feats_0`, `high_res_feats_1`; `GET /v1/models` lists each model's tensors).
///
/// The geometry needed to map prompts into the model frame comes in headers: original size
/// (what `orig_im_size` is), the size after the long-side resize, and the encoder's input
/// length. A point `(x, y)` in original pixels maps to `(x * rw / W, y * rh / H)`, as
/// `segment_anything`'s `ResizeLongestSide.apply_coords` does.
#[utoipa::path(
    get, path = "/v1/images/{image_id}/embedding", tag = "images",
    params(("image_id" = String, Path, description = "Image id", pattern = "^[0-9a-f]{64}$",
        example = json!(super::images::EXAMPLE_PNG_ID)), EmbeddingQuery),
    responses(
        (status = 200, description = "The embedding as a .npy file (one tensor) or an .npz archive of named .npy arrays (several tensors)",
            content(("application/x-npy"), ("application/zip")),
            headers(
                ("X-Samserve-Original-Width" = u32, description = "Image width W (after EXIF orientation)"),
                ("X-Samserve-Original-Height" = u32, description = "Image height H"),
                ("X-Samserve-Resized-Width" = u32, description = "Width rw after resizing the long side to the input length"),
                ("X-Samserve-Resized-Height" = u32, description = "Height rh after the resize"),
                ("X-Samserve-Input-Size" = u32, description = "Encoder input length L (the padded square side)"),
                ("X-Samserve-Embedding-Shape" = String, description = "Comma-separated shape of the first tensor, e.g. 1,256,64,64"),
                ("X-Samserve-Embedding-Tensors" = String, description = "Each tensor as name:shape, separated by semicolons, e.g. image_embed:1,256,64,64;high_res_feats_0:1,32,256,256"),
                ("X-Samserve-Dtype" = String, description = "float32 or float16"),
                ("X-Samserve-Model" = String, description = "Model that computed the embedding"),
                ("ETag" = String, description = "blake3 of the body; send If-None-Match for a 304"),
            )),
        (status = 304, description = "Not modified (If-None-Match matched)"),
        (status = 400, description = "Malformed image id, unsupported dtype or unknown query parameter", body = ErrorBody),
        (status = 404, description = "Unknown image (or evicted) or model", body = ErrorBody),
    )
)]
pub async fn embedding(
    State(state): State<AppState>,
    Path(image_id): Path<String>,
    Query(q): Query<EmbeddingQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let dtype = EmbeddingDtype::parse(q.dtype.as_deref())?;
    let engine = state.engine()?;
    let model = engine.model(q.model.as_deref())?;
    let emb = engine.embedding(q.model.as_deref(), &image_id).await?;
    let input_size = model.spec.input_size;
    let model_name = model.spec.name.clone();
    let emb2 = emb.clone();
    let (file, npz) = tokio::task::spawn_blocking(move || {
        let (bytes, npz) = embedding_file(&emb2, dtype);
        (ServedFile::new(bytes.into()), npz)
    })
    .await
    .map_err(ApiError::internal)?;
    let dims = |s: &[usize]| {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let shape = dims(&emb.primary().shape);
    let tensors = emb
        .tensors
        .iter()
        .map(|t| format!("{}:{}", t.name, dims(&t.shape)))
        .collect::<Vec<_>>()
        .join(";");
    let extra = vec![
        ("x-samserve-original-width", emb.width.to_string()),
        ("x-samserve-original-height", emb.height.to_string()),
        ("x-samserve-resized-width", emb.resized_width.to_string()),
        ("x-samserve-resized-height", emb.resized_height.to_string()),
        ("x-samserve-input-size", input_size.to_string()),
        ("x-samserve-embedding-shape", shape),
        ("x-samserve-embedding-tensors", tensors),
        ("x-samserve-dtype", dtype.name().to_string()),
        ("x-samserve-model", model_name),
    ];
    Ok(file_response(
        &headers,
        file,
        if npz {
            "application/zip"
        } else {
            "application/x-npy"
        },
        "private, no-cache",
        extra,
    ))
}

/// Download a model's decoder ONNX file, byte for byte as loaded (the server itself runs a
/// copy pruned of the full-resolution `masks` output; this is the original graph).
#[utoipa::path(
    get, path = "/v1/models/{name}/decoder.onnx", tag = "system",
    params(("name" = String, Path, description = "Model name, as in GET /v1/models")),
    responses(
        (status = 200, description = "The decoder ONNX file", content_type = "application/octet-stream",
            headers(("ETag" = String, description = "blake3 of the file; send If-None-Match for a 304"))),
        (status = 304, description = "Not modified (If-None-Match matched)"),
        (status = 404, description = "Unknown model", body = ErrorBody),
    )
)]
pub async fn decoder_onnx(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let model = state.engine()?.model(Some(&name))?;
    let extra = vec![("x-samserve-model", model.spec.name.clone())];
    Ok(file_response(
        &headers,
        model.decoder_file.clone(),
        "application/octet-stream",
        // The file can change only with a restart on other model files; revalidate (cheap).
        "public, no-cache",
        extra,
    ))
}
