//! The OpenAPI document, generated from the handlers and types by utoipa.

use utoipa::OpenApi;

use super::{everything, images, system, types};
use crate::core::amg::{AmgParams, AmgPreset};
use crate::core::engine::OutputFormat;
use crate::core::masks::polygon::Polygon;
use crate::core::masks::rle::CocoRle;
use crate::core::prompts::{Point, Prompt};
use crate::error::{ErrorBody, ErrorDetail};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "samserve",
        description = "HTTP inference server for the Segment Anything Model: upload an image once, \
                       then segment it with point, box and mask prompts against its cached embedding."
    ),
    paths(
        images::upload, images::put_image, images::get_image, images::head_image,
        images::delete_image, images::segment, images::segment_inline,
        everything::everything, everything::everything_inline,
        system::models, system::healthz, system::readyz, system::metrics, system::openapi_json,
    ),
    components(schemas(
        types::ImageResponse, types::SegmentRequest, types::InlineSegmentRequest,
        types::SegmentResponse, types::PromptResult, types::MaskOut, types::ModelInfo, types::TextModelInfo,
        types::ModelList, types::Health, Prompt, Point, OutputFormat, CocoRle, Polygon,
        ErrorBody, ErrorDetail, everything::EverythingRequest, everything::EverythingResponse,
        everything::EverythingMask, everything::Segmentation, AmgParams, AmgPreset,
    )),
    tags(
        (name = "images", description = "Upload images and manage their cached embeddings"),
        (name = "segment", description = "Promptable segmentation"),
        (name = "system", description = "Health, models, metrics and API description"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON, exactly as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("OpenAPI serializes");
    s.push('\n');
    s
}
