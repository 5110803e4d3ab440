//! Request bodies as the upload and one-shot routes read them: the input's first line is the
//! Content-Type header, the rest the body (multipart, JSON, image bytes). Any request gives
//! a payload or a 4xx error, never a panic, and a multipart payload always has its image.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::Request;
use libfuzzer_sys::fuzz_target;
use samserve::http::body::{read_payload, Payload};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"multipart/form-data; boundary=X"[..], data),
    };
    let mut req = Request::builder().method("POST").uri("/v1/images");
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return; // not a valid header value: hyper would have refused the request
    };
    let limit = 4096;
    match runtime().block_on(read_payload(req, limit)) {
        Ok(Payload::Multipart { image, request }) => {
            assert!(image.len() <= body.len());
            assert!(request.map_or(0, |r| r.len()) <= body.len());
        }
        Ok(Payload::Image(b)) | Ok(Payload::Json(b)) => {
            assert_eq!(&b[..], body, "a plain body is passed on unchanged");
            assert!(b.len() <= limit);
        }
        Err(e) => {
            let status = e.kind().status_and_code().0.as_u16();
            assert!((400..500).contains(&status), "{status} for a client's body");
        }
    }
});
