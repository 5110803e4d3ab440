//! Request and response bodies of the REST API.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::core::engine::{EncodedMask, ImageInfo, MaskResult, OutputFormat};
use crate::core::masks::polygon::Polygon;
use crate::core::masks::rle::CocoRle;
use crate::core::prompts::Prompt;

/// `?model=` query parameter accepted by the image routes; any other parameter is a 400
/// (a misspelt `?modle=` would otherwise silently use the default model).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ModelQuery {
    /// Model name; the server's default model when omitted.
    pub model: Option<String>,
}

/// Raw image bytes (any supported format, sniffed from the bytes).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ImageBytes(pub Vec<u8>);

/// Multipart upload: the image file as the `image` part.
#[derive(ToSchema)]
pub struct ImageForm {
    /// The image file.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
}

/// JSON upload: the image file, base64-encoded.
#[derive(ToSchema)]
pub struct ImageJson {
    /// The image file, base64 (a `data:...;base64,` prefix is accepted).
    pub image: String,
}

/// Multipart one-shot segmentation: the image and the request as JSON text.
#[derive(ToSchema)]
pub struct SegmentForm {
    /// The image file.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
    /// The segment request: a JSON part (`Content-Type: application/json`, or none).
    pub request: SegmentRequest,
}

/// Answer to an image upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageResponse {
    /// blake3 hex hash of the uploaded bytes; the image's id from now on.
    pub image_id: String,
    /// Width after EXIF orientation.
    pub width: u32,
    /// Height after EXIF orientation.
    pub height: u32,
    /// True when the embedding was already cached (no encoder run).
    pub cached: bool,
    /// Model that encoded the image.
    pub model: String,
}

impl From<ImageInfo> for ImageResponse {
    fn from(i: ImageInfo) -> Self {
        ImageResponse {
            image_id: i.image_id,
            width: i.width,
            height: i.height,
            cached: i.cached,
            model: i.model,
        }
    }
}

/// Body of `POST /v1/images/{image_id}/segment`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentRequest {
    /// The prompts; each one yields its own list of masks (1 to `--max-prompts`, 256 by
    /// default).
    #[schema(min_items = 1, max_items = 256)]
    pub prompts: Vec<Prompt>,
    /// Overrides the per-prompt multimask default for every prompt that does not set it.
    #[serde(default)]
    pub multimask_output: Option<bool>,
    /// Mask encoding: `rle` (default), `png`, `polygon` or `none`.
    #[serde(default)]
    pub output: OutputFormat,
    /// Return a `logits_handle` per mask, usable as `mask_input` in a later call.
    #[serde(default)]
    pub return_logits: bool,
}

/// Body of the one-shot `POST /v1/segment` as JSON: the segment request plus the image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineSegmentRequest {
    /// The image file (any supported format), base64-encoded.
    pub image: String,
    /// The prompts (1 to `--max-prompts`, 256 by default).
    #[schema(min_items = 1, max_items = 256)]
    pub prompts: Vec<Prompt>,
    /// See [`SegmentRequest::multimask_output`].
    #[serde(default)]
    pub multimask_output: Option<bool>,
    /// See [`SegmentRequest::output`].
    #[serde(default)]
    pub output: OutputFormat,
    /// See [`SegmentRequest::return_logits`].
    #[serde(default)]
    pub return_logits: bool,
}

/// One predicted mask.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MaskOut {
    /// Predicted IoU of the mask.
    pub score: f32,
    /// Number of foreground pixels.
    pub area: u64,
    /// Bounding box `[x, y, width, height]`.
    pub bbox: [u32; 4],
    /// Decoder mask token (0 = the single-mask token, 1-3 = ambiguity masks). A SAM 2
    /// single-mask answer may be one of 1-3: the reference falls back to the best ambiguity
    /// mask when token 0's mask is unstable.
    pub token: usize,
    /// COCO compressed RLE, when `output` is `rle`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rle: Option<CocoRle>,
    /// Base64 1-bit PNG, when `output` is `png`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub png: Option<String>,
    /// Polygons (outer ring + holes), when `output` is `polygon`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub polygons: Option<Vec<Polygon>>,
    /// Handle of this mask's low-res logits, when `return_logits` is true.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub logits_handle: Option<String>,
    /// Cosine similarity of the mask to the phrase (text prompts only; masks are sorted by it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text_score: Option<f32>,
}

impl From<MaskResult> for MaskOut {
    fn from(m: MaskResult) -> Self {
        use base64::Engine as _;
        let mut out = MaskOut {
            score: m.score,
            area: m.area,
            bbox: m.bbox,
            token: m.token,
            rle: None,
            png: None,
            polygons: None,
            logits_handle: m.logits_handle,
            text_score: m.text_score,
        };
        match m.mask {
            EncodedMask::Rle(r) => out.rle = Some(r),
            EncodedMask::Png(p) => {
                out.png = Some(base64::engine::general_purpose::STANDARD.encode(p))
            }
            EncodedMask::Polygons(p) => out.polygons = Some(p),
            EncodedMask::None => {}
        }
        out
    }
}

/// The masks of one prompt, best first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromptResult {
    /// Masks sorted by predicted IoU, descending.
    pub masks: Vec<MaskOut>,
}

/// Answer to a segment call.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SegmentResponse {
    /// The image's id.
    pub image_id: String,
    /// Model used.
    pub model: String,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// True when the embedding came from the cache (always true for the two-step form).
    pub cached: bool,
    /// One entry per prompt, in request order.
    pub results: Vec<PromptResult>,
}

/// A loaded model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    /// Name to pass as `?model=`.
    pub name: String,
    /// Model family.
    pub family: String,
    /// Description.
    pub description: String,
    /// Weight precision: `fp32`, or `int8` for a quantized variant (tools/quantize.py).
    pub precision: String,
    /// Whether this is the default model.
    pub default: bool,
    /// Encoder long-side input length.
    pub input_size: usize,
    /// Shape `[1, C, h, w]` of the embedding's first tensor (SAM's only one).
    pub embedding_shape: [usize; 4],
    /// The embedding's tensors: SAM's `image_embeddings`, SAM 2's `image_embed`,
    /// `high_res_feats_0` and `high_res_feats_1`. A downloaded embedding is a `.npy` of the
    /// one tensor, or an `.npz` of these names.
    pub tensors: Vec<TensorDescription>,
    /// Bytes of one image's embedding in float32 (all tensors).
    pub embedding_bytes: u64,
    /// Bytes one cached image takes in this server's embedding cache (`--cache-dtype`).
    pub cache_bytes_per_image: u64,
    /// Low-res mask size `[h, w]`.
    pub low_res_size: [usize; 2],
    /// Whether the decoder takes a batch of prompts per call.
    pub batched_decoder: bool,
    /// Encoder input layout: `nchw_normalized` or `hwc_raw`.
    pub encoder_input: String,
    /// Where the encoder runs (`cpu`, `cuda:N`), after any fallback.
    pub encoder_device: String,
    /// Where the decoder runs (`cpu`, `cuda:N`), after any fallback.
    pub decoder_device: String,
    /// The text model behind text prompts; absent when the model takes none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<TextModelInfo>,
}

/// One tensor of a model's embedding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TensorDescription {
    /// Name (the key in a downloaded `.npz`).
    pub name: String,
    /// Shape `[1, C, h, w]`.
    pub shape: Vec<usize>,
}

/// A segmentation model's text model (`GET /v1/models`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TextModelInfo {
    /// Text model name.
    pub name: String,
    /// Kind (`minilm-region` or `clip`).
    pub kind: String,
    /// Longest accepted phrase in characters.
    pub max_text_chars: usize,
    /// Description.
    pub description: String,
}

/// `GET /v1/models` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Loaded models.
    pub models: Vec<ModelInfo>,
}

/// Health answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not_ready`.
    pub status: String,
}
