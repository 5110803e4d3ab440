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
            let m = m.to_string();
            let bytes = read_limited(req.into_body(), limit).await?;
            check_declared_image(&m, "the body", &bytes)?;
            Ok(Payload::Image(bytes))
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
        let part_type = field.content_type().map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let data = field.bytes().await.map_err(multipart_error)?;
        match name.as_str() {
            "image" | "file" => {
                if let Some(t) = &part_type {
                    check_declared_image(t, &format!("multipart part '{name}'"), &data)?;
                }
                image = Some(data)
            }
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

/// Checks image bytes against the media type they were sent as. Bytes declared as a
/// supported image type (`image/png`, ...) that are not such an image are a corrupt image
/// (400 `invalid_image`); bytes of another declared type that are no image either (a text
/// file picked by mistake) get a 415 that names the type. Bytes that are an image pass
/// whatever they were labelled; the format is always sniffed from the bytes.
fn check_declared_image(media_type: &str, what: &str, bytes: &[u8]) -> Result<(), ApiError> {
    use crate::runtime::preprocess::{is_supported_image, is_supported_image_type};
    if bytes.is_empty() || is_supported_image(bytes) {
        // Empty bodies get their own message from the decoder.
        return Ok(());
    }
    if is_supported_image_type(media_type) {
        Err(ApiError::InvalidImage(format!(
            "{what} is declared {media_type} but is not a readable image: its first bytes \
             match no supported format (the file is corrupt or not an image)"
        )))
    } else if media_type.starts_with("image/")
        || media_type == "application/octet-stream"
        || media_type == "application/x-www-form-urlencoded"
    {
        // Sniffed later, with the list of supported formats in the message.
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "{what} is {media_type}, not an image (supported: {})",
            crate::runtime::preprocess::SUPPORTED_FORMATS
        )))
    }
}

/// Parses JSON, turning bare `NaN`/`Infinity` (which some encoders emit) into a precise 422
/// instead of a generic parse error.
///
/// Other errors name where in the document they are (`at prompts[0].points[0]`) and never
/// the server's Rust type names.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| (e.path().to_string(), e.into_inner()))
        // Trailing characters after the document.
        .and_then(|v| de.end().map(|()| v).map_err(|e| (String::new(), e)));
    parsed.map_err(|(path, e)| {
        if has_non_finite_literal(bytes) {
            ApiError::InvalidPrompt(
                "request contains a non-finite number (NaN or Infinity); coordinates must be \
                 finite numbers"
                    .into(),
            )
        } else {
            let message = public_serde_message(&e.to_string());
            if path.is_empty() || path == "." {
                ApiError::BadRequest(format!("invalid JSON body: {message}"))
            } else {
                ApiError::BadRequest(format!("invalid JSON body at {path}: {message}"))
            }
        }
    })
}

/// A serde message without the server's type names: `struct Prompt` and `struct Point with
/// 3 elements` become `an object`, `enum X` becomes `one of the documented values`.
fn public_serde_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    loop {
        let next = ["struct ", "enum "]
            .iter()
            .filter_map(|w| rest.find(w).map(|i| (i, *w)))
            .min();
        let Some((i, word)) = next else {
            out.push_str(rest);
            return out;
        };
        let name_start = i + word.len();
        let name_len = rest[name_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - name_start);
        let is_type = rest[name_start..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase());
        if !is_type {
            out.push_str(&rest[..name_start]);
            rest = &rest[name_start..];
            continue;
        }
        out.push_str(&rest[..i]);
        let mut after = &rest[name_start + name_len..];
        if word == "struct " {
            out.push_str("an object");
            // serde's "with N elements" describes the array form of a struct.
            if let Some(tail) = after.strip_prefix(" with ") {
                let digits = tail
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(tail.len());
                if digits > 0 {
                    if let Some(t) = tail[digits..]
                        .strip_prefix(" elements")
                        .or_else(|| tail[digits..].strip_prefix(" element"))
                    {
                        after = t;
                    }
                }
            }
        } else {
            out.push_str("one of the documented values");
        }
        rest = after;
    }
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
    fn serde_messages_lose_type_names() {
        assert_eq!(
            public_serde_message(
                "invalid length 1, expected struct Point with 3 elements at line 1"
            ),
            "invalid length 1, expected an object at line 1"
        );
        assert_eq!(
            public_serde_message("invalid type: integer `1`, expected struct Prompt"),
            "invalid type: integer `1`, expected an object"
        );
        assert_eq!(
            public_serde_message("expected enum OutputFormat"),
            "expected one of the documented values"
        );
        assert_eq!(
            public_serde_message("unknown field `structure`, expected `x`"),
            "unknown field `structure`, expected `x`"
        );
    }

    #[test]
    fn json_errors_say_where() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Body {
            prompts: Vec<crate::core::prompts::Prompt>,
        }
        let e = parse_json::<Body>(br#"{"prompts": [{"points": [[230]]}]}"#).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("at prompts[0].points[0]"), "{m}");
        assert!(m.contains(r#"{"x": 230, "y": 256, "label": 1}"#), "{m}");
        assert!(!m.contains("struct") && !m.contains("Point"), "{m}");
        // The array form is refused too, not read silently.
        assert!(parse_json::<Body>(br#"{"prompts": [{"points": [[230, 256]]}]}"#).is_err());
        let ok = parse_json::<Body>(br#"{"prompts": [{"points": [{"x": 1, "y": 2.5}]}]}"#).unwrap();
        assert_eq!(
            (ok.prompts[0].points[0].y, ok.prompts[0].points[0].label),
            (2.5, 1)
        );
        let e = parse_json::<Body>(br#"{"prompts": [{"points": [{"x": 1, "y": 2, "z": 3}]}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `z`"), "{e}");
        assert!(parse_json::<Body>(br#"{"prompts": []} x"#).is_err());
    }

    #[test]
    fn finds_nan_outside_strings_only() {
        assert!(has_non_finite_literal(br#"{"x": NaN}"#));
        assert!(has_non_finite_literal(br#"{"x": -Infinity}"#));
        assert!(!has_non_finite_literal(br#"{"x": "NaN"}"#));
        assert!(!has_non_finite_literal(br#"{"x": "a\"NaN"}"#));
    }
}
