//! The interactive segmentation page at `/`: static assets compiled into the binary (no CDN,
//! no build step), talking to the public API like any other client.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::error::ApiError;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// Bundled demo scenes (data-engine images from seeds used nowhere else).
const DEMOS: &[(&str, &[u8])] = &[
    ("scene1.jpg", include_bytes!("page/demo/scene1.jpg")),
    ("scene2.jpg", include_bytes!("page/demo/scene2.jpg")),
];

/// Routes of the page and its assets.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/page/app.js", get(app_js))
        .route("/page/style.css", get(style_css))
        .route("/page/demo/{name}", get(demo))
}

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Assets change only with the binary; revalidation would not save much.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn demo(Path(name): Path<String>) -> Result<Response, ApiError> {
    DEMOS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| asset("image/jpeg", *bytes))
        .ok_or(ApiError::NotFound {
            what: "demo image",
            id: name,
        })
}
