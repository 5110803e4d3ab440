//! A model whose encoder keeps its weights in ONNX external data (how exports past 2 GB are
//! written) loads and answers exactly as the same weights inside the `.onnx`.
//!
//! The external-data copy of the default model's encoder is made here: every initializer's
//! `raw_data` moves to `encoder.onnx.data` and the tensor gets `external_data` entries
//! (location, offset, length) and `data_location = EXTERNAL`, per onnx.proto3. The ViT-L
//! version of this path is `make external-data-check` (too big for the test suite).

mod common;

use common::{synthetic_png, TestServer};
use serde_json::json;

// Field numbers from onnx.proto3.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;

fn varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0;
    for shift in (0..64).step_by(7) {
        let b = buf[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// One field: its number, its whole encoding, the payload of a length-delimited field.
type Field<'a> = (u64, &'a [u8], Option<&'a [u8]>);

fn fields(buf: &[u8]) -> Vec<Field<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = varint(buf, &mut pos);
        let payload = match key & 7 {
            0 => {
                varint(buf, &mut pos);
                None
            }
            1 => {
                pos += 8;
                None
            }
            5 => {
                pos += 4;
                None
            }
            2 => {
                let len = varint(buf, &mut pos) as usize;
                pos += len;
                Some(&buf[pos - len..pos])
            }
            w => panic!("wire type {w}"),
        };
        out.push((key >> 3, &buf[start..pos], payload));
    }
    out
}

/// Rewrites each listed sub-message of `msg` with `f`, copying every other field.
fn rewrite(msg: &[u8], number: u64, mut f: impl FnMut(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, raw, payload) in fields(msg) {
        match payload {
            Some(p) if n == number => put_len(&mut out, number, &f(p)),
            _ => out.extend_from_slice(raw),
        }
    }
    out
}

/// The model with its initializers' bytes moved into `data` (offsets 4 KiB aligned).
fn externalize(model: &[u8], data: &mut Vec<u8>, location: &str) -> (Vec<u8>, usize) {
    let mut moved = 0;
    let out = rewrite(model, MODEL_GRAPH, |graph| {
        rewrite(graph, GRAPH_INITIALIZER, |tensor| {
            let Some(raw) = fields(tensor)
                .into_iter()
                .find(|(n, _, p)| *n == TENSOR_RAW_DATA && p.is_some())
                .and_then(|(_, _, p)| p)
            else {
                return tensor.to_vec();
            };
            data.resize(data.len().div_ceil(4096) * 4096, 0);
            let offset = data.len();
            data.extend_from_slice(raw);
            moved += 1;
            let mut t: Vec<u8> = fields(tensor)
                .into_iter()
                .filter(|(n, _, _)| *n != TENSOR_RAW_DATA)
                .flat_map(|(_, raw, _)| raw.to_vec())
                .collect();
            for (k, v) in [
                ("location", location.to_string()),
                ("offset", offset.to_string()),
                ("length", raw.len().to_string()),
            ] {
                let mut entry = Vec::new();
                put_len(&mut entry, 1, k.as_bytes());
                put_len(&mut entry, 2, v.as_bytes());
                put_len(&mut t, TENSOR_EXTERNAL_DATA, &entry);
            }
            put_varint(&mut t, TENSOR_DATA_LOCATION << 3);
            put_varint(&mut t, 1); // EXTERNAL
            t
        })
    });
    (out, moved)
}

#[tokio::test]
async fn encoder_with_external_data_serves_the_same_masks() {
    let tiny = common::repo().join("models/sam-tiny");
    let dir = std::env::temp_dir().join(format!("samserve-extdata-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let encoder = std::fs::read(tiny.join("encoder.onnx")).unwrap();
    let mut data = Vec::new();
    let (graph, moved) = externalize(&encoder, &mut data, "encoder.onnx.data");
    assert!(moved > 10, "only {moved} initializers had raw data");
    assert!(
        graph.len() < encoder.len() / 10,
        "the weights left the .onnx: {} -> {} bytes",
        encoder.len(),
        graph.len()
    );
    std::fs::write(dir.join("encoder.onnx"), &graph).unwrap();
    std::fs::write(dir.join("encoder.onnx.data"), &data).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        json!({"name": "tiny-ext", "encoder": "encoder.onnx",
               "decoder": tiny.join("decoder.onnx"), "input_size": 512})
        .to_string(),
    )
    .unwrap();

    let mut cfg = common::config();
    cfg.models = vec![tiny.clone(), dir.clone()];
    let s = TestServer::start(cfg.clone()).await;
    let png = synthetic_png(320, 240, 5);
    let body = json!({"prompts": [{"points": [{"x": 160, "y": 120}]}, {"box": [20, 30, 200, 180]}],
                      "output": "rle"});
    let mut answers = Vec::new();
    for model in ["sam-tiny", "tiny-ext"] {
        let r = s
            .client
            .post(s.url(&format!("/v1/images?model={model}")))
            .header("content-type", "application/octet-stream")
            .body(png.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.json::<serde_json::Value>().await.unwrap()["image_id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = s
            .client
            .post(s.url(&format!("/v1/images/{id}/segment?model={model}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        answers.push(r.json::<serde_json::Value>().await.unwrap()["results"].clone());
    }
    assert_eq!(
        answers[0], answers[1],
        "same weights, same masks and scores"
    );

    // Without its data file the model is refused at start, naming the file.
    std::fs::remove_file(dir.join("encoder.onnx.data")).unwrap();
    let err = samserve::core::engine::Engine::start(
        &cfg,
        std::sync::Arc::new(samserve::metrics::Metrics::new()),
    )
    .err()
    .expect("a missing external data file must be refused");
    assert!(format!("{err:#}").contains("encoder.onnx.data"), "{err:#}");
    std::fs::remove_dir_all(&dir).ok();
}
