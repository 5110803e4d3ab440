//! The OpenAPI document, generated from the handlers and types by utoipa.

use utoipa::OpenApi;

use super::{downloads, everything, images, system, types};
use crate::core::amg::{AmgParams, AmgPreset};
use crate::core::engine::OutputFormat;
use crate::core::masks::polygon::Polygon;
use crate::core::masks::rle::CocoRle;
use crate::core::prompts::{Point, Prompt};
use crate::error::{ErrorBody, ErrorDetail};
use utoipa::openapi::{self as oa, security as sec};

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
        downloads::embedding, downloads::decoder_onnx,
        system::models, system::healthz, system::readyz, system::metrics, system::openapi_json,
    ),
    components(schemas(
        types::ImageResponse, types::SegmentRequest, types::InlineSegmentRequest,
        types::SegmentResponse, types::PromptResult, types::MaskOut, types::ModelInfo, types::TextModelInfo,
        types::ModelList, types::Health, Prompt, Point, OutputFormat, CocoRle, Polygon,
        ErrorBody, ErrorDetail, types::ImageBytes, types::ImageForm, types::ImageJson,
        types::SegmentForm, everything::EverythingRequest, everything::EverythingResponse,
        everything::EverythingMask, everything::Segmentation, AmgParams, AmgPreset,
        everything::InlineEverythingRequest, everything::EverythingForm,
    )),
    modifiers(&Hardening),
    tags(
        (name = "images", description = "Upload images and manage their cached embeddings"),
        (name = "segment", description = "Promptable segmentation"),
        (name = "system", description = "Health, models, metrics and API description"),
    )
)]
pub struct ApiDoc;

/// Routes served without an API key (see `guard::Guard::is_open_route`). The page and its
/// assets are open too: the page itself sends the key its user types in with every API call.
pub const OPEN_ROUTES: [&str; 8] = [
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/docs",
    "/",
    "/page/app.js",
    "/page/style.css",
    "/page/demo/{name}",
];

/// What every guarded operation can answer besides its own statuses, and the two ways to
/// present an API key (optional: keys are off unless `--api-keys-file` is given).
struct Hardening;

impl utoipa::Modify for Hardening {
    fn modify(&self, doc: &mut oa::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            sec::SecurityScheme::Http(sec::Http::new(sec::HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "api_key",
            sec::SecurityScheme::ApiKey(sec::ApiKey::Header(sec::ApiKeyValue::new("X-API-Key"))),
        );
        let error = |what: &str| {
            oa::ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    oa::ContentBuilder::new()
                        .schema(Some(oa::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let common = [
            ("401", "No valid API key (only when the server has --api-keys-file)"),
            ("429", "Overloaded (`overloaded`) or this client's cap on requests in progress reached (`too_many_requests`); see Retry-After"),
            ("503", "Models still loading"),
            ("504", "Request deadline exceeded"),
        ];
        for (path, item) in doc.paths.paths.iter_mut() {
            if OPEN_ROUTES.contains(&path.as_str()) {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.head,
            ];
            for op in ops.into_iter().flatten() {
                for (status, what) in common {
                    // /metrics needs no engine, so it never answers 503 or 504.
                    if path == "/metrics" && status != "401" {
                        continue;
                    }
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(what).into());
                }
                op.security = Some(vec![
                    sec::SecurityRequirement::default(),
                    sec::SecurityRequirement::new("bearer", Vec::<String>::new()),
                    sec::SecurityRequirement::new("api_key", Vec::<String>::new()),
                ]);
            }
        }
    }
}

/// The document as pretty JSON, exactly as committed in `openapi/openapi.json`: keys are
/// optional (each guarded operation lists the anonymous requirement `{}` beside the two
/// key schemes), as on a server without `--api-keys-file`.
pub fn openapi_json() -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("OpenAPI serializes");
    super::openapi_rules::apply(&mut doc);
    to_text(&doc)
}

/// The document a server serves at `/openapi.json`: with API keys on, the guarded operations
/// require a key (no anonymous `{}` alternative), so a client can tell from the document;
/// `/metrics` keeps `{}` unless `--metrics-require-key`. Built once per variant.
pub fn served_openapi_json(keys_on: bool, metrics_require_key: bool) -> &'static str {
    static DOCS: [std::sync::OnceLock<String>; 3] = [const { std::sync::OnceLock::new() }; 3];
    let variant = match (keys_on, metrics_require_key) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    };
    DOCS[variant].get_or_init(|| {
        let mut doc: serde_json::Value =
            serde_json::from_str(&openapi_json()).expect("our document parses");
        if keys_on {
            require_keys(&mut doc, metrics_require_key);
        }
        to_text(&doc)
    })
}

/// Drops the anonymous `{}` requirement from every guarded operation (and from /metrics
/// when it is guarded too).
fn require_keys(doc: &mut serde_json::Value, metrics_require_key: bool) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        if path == "/metrics" && !metrics_require_key {
            continue;
        }
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            if let Some(reqs) = op.get_mut("security").and_then(|s| s.as_array_mut()) {
                reqs.retain(|r| r.as_object().is_some_and(|o| !o.is_empty()));
            }
        }
    }
}

fn to_text(doc: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(doc)
        .expect("OpenAPI serializes")
        // utoipa 5 writes a Link's operation id in snake case; OpenAPI spells it operationId
        // (operations' own ids are already `operationId`, so only links match).
        .replace("\"operation_id\":", "\"operationId\":");
    s.push('\n');
    s
}
