//! Reading request bodies: size limits, content types, multipart and base64 JSON.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// What a body turned out to be.
pub enum Payload {
    /// Raw image bytes (`image/*`, `application/octet-stream`, curl's default form type, or
    /// no content type); the format is sniffed from the bytes.
    Image(Bytes),
    /// A JSON document.
    Json(Bytes),
    /// Multipart form: the image part and an optional `request` JSON part.
    Multipart {
        image: Bytes,
        request: Option<Bytes>,
    },
}

fn media_type(req: &Request) -> Result<Option<String>, ApiError> {
    match req.headers().get(CONTENT_TYPE) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("invalid Content-Type header".into()))?;
            Ok(Some(
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase(),
            ))
        }
    }
}

/// Reads the whole body under `limit`, mapping an overflow to 413.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_big = std::error::Error::source(&e)
            .map(|s| s.is::<http_body_util::LengthLimitError>())
            .unwrap_or(false)
            || e.to_string().contains("length limit");
        if too_big {
            ApiError::PayloadTooLarge(format!("request body is over the limit of {limit} bytes"))
        } else {
            ApiError::BadRequest(format!("reading request body: {e}"))
        }
    })
}

/// Reads the body of a JSON-only route: the content type must be `application/json` (or a
/// `+json` type). Anything else is 415, so that a web page cannot send such a request as
/// `text/plain` or a form, which browsers send cross-origin without a CORS preflight.
pub async fn read_json_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    match media_type(&req)?.as_deref() {
        Some(m)
            if m == "application/json"
                || (m.starts_with("application/") && m.ends_with("+json")) =>
        {
            read_limited(req.into_body(), limit).await
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "this route takes Content-Type application/json, not {}",
            other.map_or("none".to_string(), |m| format!("'{m}'"))
        ))),
    }
}

/// Classifies and reads a request body.
pub async fn read_payload(req: Request, limit: usize) -> Result<Payload, ApiError> {
    let mt = media_type(&req)?;
    match mt.as_deref() {
        Some("multipart/form-data") => read_multipart(req).await,
        Some("application/json") => Ok(Payload::Json(read_limited(req.into_body(), limit).await?)),
        // curl's --data-binary labels bodies as form data; the bytes are still sniffed.
        None | Some("application/octet-stream") | Some("application/x-www-form-urlencoded") => {
            Ok(Payload::Image(read_limited(req.into_body(), limit).await?))
        }
        Some(m) if m.starts_with("image/") => {
            Ok(Payload::Image(read_limited(req.into_body(), limit).await?))
        }
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type '{other}' is not accepted; send image bytes (image/* or \
             application/octet-stream), multipart/form-data, or application/json"
        ))),
    }
}

async fn read_multipart(req: Request) -> Result<Payload, ApiError> {
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
    let mut image = None;
    let mut request = None;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        let name = field.name().unwrap_or("").to_string();
        let data = field.bytes().await.map_err(multipart_error)?;
        match name.as_str() {
            "image" | "file" => image = Some(data),
            // An empty `request` part is no request (form encoders send empty fields).
            "request" => request = (!data.trim_ascii().is_empty()).then_some(data),
            other => {
                return Err(ApiError::BadRequest(format!(
                "unexpected multipart field '{other}' (expected 'image' and optionally 'request')"
            )))
            }
        }
    }
    let image = image
        .ok_or_else(|| ApiError::BadRequest("multipart body has no 'image' field".to_string()))?;
    Ok(Payload::Multipart { image, request })
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!(
            "multipart body is over the limit: {}",
            e.body_text()
        ))
    } else {
        ApiError::BadRequest(format!("invalid multipart body: {}", e.body_text()))
    }
}

/// Parses JSON, turning bare `NaN`/`Infinity` (which some encoders emit) into a precise 422
/// instead of a generic parse error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if has_non_finite_literal(bytes) {
            ApiError::InvalidPrompt(
                "request contains a non-finite number (NaN or Infinity); coordinates must be \
                 finite numbers"
                    .into(),
            )
        } else {
            ApiError::BadRequest(format!("invalid JSON body: {e}"))
        }
    })
}

/// Whether the text has `NaN` or `Infinity` outside of strings.
fn has_non_finite_literal(bytes: &[u8]) -> bool {
    let mut in_str = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if b == b'"' {
            in_str = true;
        } else if bytes[i..].starts_with(b"NaN") || bytes[i..].starts_with(b"Infinity") {
            return true;
        }
    }
    false
}

/// Decodes the base64 image of a JSON body (standard or URL-safe alphabet; a
/// `data:...;base64,` prefix is accepted).
pub fn decode_base64_image(s: &str) -> Result<Bytes, ApiError> {
    let s = match s.find(";base64,") {
        Some(i) if s.starts_with("data:") => &s[i + 8..],
        _ => s,
    };
    let s = s.trim();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .map(Bytes::from)
        .map_err(|e| ApiError::BadRequest(format!("field 'image' is not valid base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nan_outside_strings_only() {
        assert!(has_non_finite_literal(br#"{"x": NaN}"#));
        assert!(has_non_finite_literal(br#"{"x": -Infinity}"#));
        assert!(!has_non_finite_literal(br#"{"x": "NaN"}"#));
        assert!(!has_non_finite_literal(br#"{"x": "a\"NaN"}"#));
    }
}
