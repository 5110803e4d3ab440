//! Embedding and decoder downloads (hybrid decoding): `.npy` layout and geometry headers,
//! float16, repeatability, validators, and the precise 4xx errors. The numeric check that
//! the downloads reproduce the server's masks in Python onnxruntime is `make hybrid-parity`
//! (tools/hybrid_parity.py), which needs the tools venv.

mod common;

use reqwest::header::{ETAG, IF_NONE_MATCH};

/// Parses a `.npy` v1.0 file: (descr, shape, data offset).
fn parse_npy(b: &[u8]) -> (String, Vec<usize>, usize) {
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "npy magic and version 1.0");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0, "data is 64-byte aligned");
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.ends_with('\n'));
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header
        .split("'descr': '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (descr.to_string(), shape, 10 + hlen)
}

/// IEEE binary16 -> f32, written out from the format's definition.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as f32;
    match exp {
        0 => sign * man * 2f32.powi(-24),
        31 if man == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + man / 1024.0) * 2f32.powi(e - 15),
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn embedding_download_is_a_stable_npy_with_geometry() {
    let s = common::TestServer::default().await;
    let img =
        std::fs::read(common::repo().join("tests/fixtures/heldout/scene_1500000.png")).unwrap();
    let up = s.upload(&img).await;
    let id = up["image_id"].as_str().unwrap();
    let models = s.get_json("/v1/models").await;
    let model = &models["models"][0];
    let shape: Vec<usize> = serde_json::from_value(model["embedding_shape"].clone()).unwrap();
    let input = model["input_size"].as_u64().unwrap();

    let url = s.url(&format!("/v1/images/{id}/embedding"));
    let r1 = s.client.get(&url).send().await.unwrap();
    assert_eq!(r1.status(), 200);
    assert_eq!(header(&r1, "content-type"), "application/x-npy");
    let (w, h) = (
        up["width"].as_u64().unwrap(),
        up["height"].as_u64().unwrap(),
    );
    assert_eq!(header(&r1, "x-samserve-original-width"), w.to_string());
    assert_eq!(header(&r1, "x-samserve-original-height"), h.to_string());
    assert_eq!(header(&r1, "x-samserve-input-size"), input.to_string());
    // segment_anything's ResizeLongestSide.get_preprocess_shape.
    let scale = input as f64 / w.max(h) as f64;
    let rw = (w as f64 * scale + 0.5) as u64;
    let rh = (h as f64 * scale + 0.5) as u64;
    assert_eq!(header(&r1, "x-samserve-resized-width"), rw.to_string());
    assert_eq!(header(&r1, "x-samserve-resized-height"), rh.to_string());
    let shape_s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    assert_eq!(header(&r1, "x-samserve-embedding-shape"), shape_s.join(","));
    assert_eq!(header(&r1, "x-samserve-dtype"), "float32");
    let etag = header(&r1, "etag");
    let b1 = r1.bytes().await.unwrap();

    let (descr, npy_shape, off) = parse_npy(&b1);
    assert_eq!(descr, "<f4");
    assert_eq!(npy_shape, shape);
    let n: usize = shape.iter().product();
    assert_eq!(b1.len(), off + 4 * n);
    let values: Vec<f32> = b1[off..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(values.iter().all(|v| v.is_finite()));
    assert!(values.iter().any(|v| *v != 0.0), "all-zero embedding");

    // A second download is bit for bit the same; its validator gives a 304.
    let b2 = s
        .client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(b1, b2);
    let r304 = s
        .client
        .get(&url)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r304.status(), 304);

    // float16: half the data bytes, each value the nearest half of the float32 one.
    let r16 = s
        .client
        .get(format!("{url}?dtype=float16"))
        .send()
        .await
        .unwrap();
    assert_eq!(r16.status(), 200);
    assert_eq!(header(&r16, "x-samserve-dtype"), "float16");
    assert_ne!(header(&r16, "etag"), etag);
    let b16 = r16.bytes().await.unwrap();
    let (descr16, shape16, off16) = parse_npy(&b16);
    assert_eq!((descr16.as_str(), &shape16), ("<f2", &shape));
    assert_eq!(b16.len(), off16 + 2 * n);
    for (c, v) in b16[off16..].chunks_exact(2).zip(&values) {
        let half = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
        // Round to nearest: within half a unit in the last place (2^-11 relative), or
        // half the smallest subnormal step near zero.
        let tol = v.abs() * 2f32.powi(-11) + 2f32.powi(-25);
        assert!((half - v).abs() <= tol, "{v} -> {half}");
    }

    // HEAD carries the headers without the body.
    let head = s.client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "etag"), etag);
}

#[tokio::test]
async fn decoder_download_is_the_model_file() {
    let s = common::TestServer::default().await;
    let url = s.url("/v1/models/sam-tiny/decoder.onnx");
    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/octet-stream");
    assert!(header(&r, "cache-control").contains("no-cache"));
    let etag = r.headers()[ETAG].to_str().unwrap().to_string();
    let body = r.bytes().await.unwrap();
    // The embedded default model is compiled from these files.
    let on_disk = std::fs::read(common::repo().join("models/sam-tiny/decoder.onnx")).unwrap();
    assert!(
        body[..] == on_disk[..],
        "served decoder differs from models/sam-tiny/decoder.onnx"
    );
    let again = s
        .client
        .get(&url)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    let other = s
        .client
        .get(&url)
        .header(IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn download_errors_are_precise() {
    let s = common::TestServer::default().await;
    let img =
        std::fs::read(common::repo().join("tests/fixtures/heldout/scene_1500001.png")).unwrap();
    let id = s.upload(&img).await["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let unknown = "0".repeat(64);
    let cases = [
        (format!("/v1/images/{unknown}/embedding"), 404, "not_found"),
        (
            "/v1/images/not-a-hash/embedding".to_string(),
            400,
            "bad_request",
        ),
        (
            format!("/v1/images/{id}/embedding?dtype=int8"),
            400,
            "bad_request",
        ),
        (
            format!("/v1/images/{id}/embedding?model=nope"),
            404,
            "not_found",
        ),
        ("/v1/models/nope/decoder.onnx".to_string(), 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let r = s.client.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    let r = s
        .client
        .post(s.url(&format!("/v1/images/{id}/embedding")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}
