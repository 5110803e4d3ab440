//! The one error type of the server, its HTTP status table and its JSON shape.
//!
//! Every failure a client can see goes through [`ApiError`]. The status and the machine
//! readable `code` come from [`ApiError::kind`], so there is exactly one table to read.
//! 5xx bodies carry a generic message; the detail goes to the log only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Errors returned by the API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request body or a parameter is malformed (bad JSON, bad multipart, bad base64).
    #[error("{0}")]
    BadRequest(String),
    /// The image bytes could not be decoded.
    #[error("{0}")]
    InvalidImage(String),
    /// An image id, model or other resource does not exist.
    #[error("{what} '{id}' not found")]
    NotFound { what: &'static str, id: String },
    /// No embedding of this image for this model (never uploaded, evicted or deleted): 404
    /// `not_found`, with the way to recover in the message.
    #[error(
        "image '{id}' is not cached for model '{model}' (never uploaded here, evicted after \
         disuse or by the cache budget, or deleted); upload the same bytes again (POST \
         /v1/images, or PUT /v1/images/{id} to keep the id) and retry"
    )]
    ImageNotCached { id: String, model: String },
    /// A client-computed image id does not match the content hash.
    #[error("{0}")]
    HashMismatch(String),
    /// The body or the image's pixel count exceeds a configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The content type or image format is not supported.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The prompt is well-formed JSON but semantically invalid.
    #[error("{0}")]
    InvalidPrompt(String),
    /// A text prompt for a model without a text model (422 `text_not_supported`).
    #[error("{0}")]
    TextNotSupported(String),
    /// Admission control refused the request; retry after the given seconds.
    #[error("server overloaded: {reason}")]
    Overloaded {
        reason: &'static str,
        retry_after_secs: u64,
    },
    /// No valid API key was presented (401 with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(String),
    /// This client already has its most requests in progress; retry after the given seconds.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// The server has not finished loading its models.
    #[error("server is not ready")]
    NotReady,
    /// The request exceeded its deadline.
    #[error("request deadline exceeded")]
    Timeout,
    /// Anything else. The detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The stable categories clients can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    InvalidImage,
    NotFound,
    HashMismatch,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidPrompt,
    TextNotSupported,
    Overloaded,
    Unauthorized,
    TooManyRequests,
    NotReady,
    Timeout,
    Internal,
}

impl ErrorKind {
    /// The single table from error kind to HTTP status and wire code.
    pub fn status_and_code(self) -> (StatusCode, &'static str) {
        match self {
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ErrorKind::InvalidImage => (StatusCode::BAD_REQUEST, "invalid_image"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::HashMismatch => (StatusCode::BAD_REQUEST, "hash_mismatch"),
            ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ErrorKind::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ErrorKind::InvalidPrompt => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_prompt"),
            ErrorKind::TextNotSupported => (StatusCode::UNPROCESSABLE_ENTITY, "text_not_supported"),
            ErrorKind::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ErrorKind::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ErrorKind::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl ApiError {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::BadRequest(_) => ErrorKind::BadRequest,
            ApiError::InvalidImage(_) => ErrorKind::InvalidImage,
            ApiError::NotFound { .. } | ApiError::ImageNotCached { .. } => ErrorKind::NotFound,
            ApiError::HashMismatch(_) => ErrorKind::HashMismatch,
            ApiError::PayloadTooLarge(_) => ErrorKind::PayloadTooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorKind::UnsupportedMediaType,
            ApiError::InvalidPrompt(_) => ErrorKind::InvalidPrompt,
            ApiError::TextNotSupported(_) => ErrorKind::TextNotSupported,
            ApiError::Overloaded { .. } => ErrorKind::Overloaded,
            ApiError::Unauthorized(_) => ErrorKind::Unauthorized,
            ApiError::TooManyRequests { .. } => ErrorKind::TooManyRequests,
            ApiError::NotReady => ErrorKind::NotReady,
            ApiError::Timeout => ErrorKind::Timeout,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Shorthand for an internal error from anything displayable.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        ApiError::Internal(err.to_string())
    }

    /// Shorthand for an invalid prompt.
    pub fn prompt(msg: impl Into<String>) -> Self {
        ApiError::InvalidPrompt(msg.into())
    }

    /// The message sent to the client: the detail for 4xx, a generic line for 5xx.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal server error".to_string(),
            other => other.to_string(),
        }
    }
}

/// The JSON error body: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Inner part of [`ErrorBody`].
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_prompt`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request's id (the `X-Request-Id` response header), to find its log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.kind().status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.public_message(),
                request_id: None,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        match self {
            ApiError::Overloaded {
                retry_after_secs, ..
            }
            | ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            ApiError::Unauthorized(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"samserve\""),
                );
            }
            _ => {}
        }
        resp
    }
}

/// Result alias used across the crate.
pub type ApiResult<T> = Result<T, ApiError>;
