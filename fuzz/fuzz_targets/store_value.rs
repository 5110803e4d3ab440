//! Embedding values read back from the shared store (written by another replica, or by
//! anyone with write access to Redis): any bytes give an embedding that passes every check
//! or an error, never a panic or an allocation past the value's own size.
//!
//! Random bytes rarely get past the checksum, so besides the raw input the target patches
//! a valid value with the input at an offset it chooses and reseals it (recomputes the
//! checksum, as a forger would): that reaches the binding, geometry, shape and finiteness
//! checks. Whatever decodes must be consistent and re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samserve::core::store::codec::{
    check_geometry, decode, decode_tensors, encode, encode_tensors, Geometry, ModelTag,
    TensorSpec, ValueRules, CHECKSUM_LEN,
};
use samserve::core::store::Seal;
use samserve::runtime::embedding::{Embedding, EmbeddingData, EmbeddingTensor};
use samserve::runtime::family::Resize;
use samserve::runtime::image_limits::DecodeLimits;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn rules() -> ValueRules {
    ValueRules {
        seal: Seal::Checksum,
        limits: DecodeLimits {
            max_pixels: 16_000_000,
            max_decoded_bytes: u64::MAX,
            max_aspect_ratio: 100,
        },
    }
}

fn one() -> ModelTag {
    ModelTag {
        name: "sam".into(),
        fingerprint: [7; 16],
        input_size: 64,
        resize: Resize::LongSidePad,
        tensors: vec![TensorSpec {
            name: "image_embeddings".into(),
            shape: vec![1, 2, 2, 2],
        }],
    }
}

fn two() -> ModelTag {
    ModelTag {
        name: "sam2".into(),
        fingerprint: [9; 16],
        input_size: 64,
        resize: Resize::Stretch,
        tensors: vec![
            TensorSpec {
                name: "image_embed".into(),
                shape: vec![1, 2, 2, 2],
            },
            TensorSpec {
                name: "high_res_feats_0".into(),
                shape: vec![1, 1, 3, 3],
            },
        ],
    }
}

fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= CHECKSUM_LEN {
        let n = bytes.len() - CHECKSUM_LEN;
        let sum = blake3::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(sum.as_bytes());
    }
}

fn check_one(bytes: &[u8]) {
    let (tag, rules) = (one(), rules());
    if let Ok(e) = decode(&tag, ID, bytes, &rules) {
        assert_eq!(e.tensors[0].shape, [1, 2, 2, 2]);
        assert_eq!(e.tensors[0].data.len(), 8);
        assert!(e.tensors[0].data.to_f32().iter().all(|v| v.is_finite()));
        let g = Geometry {
            width: e.width,
            height: e.height,
            resized_width: e.resized_width,
            resized_height: e.resized_height,
        };
        check_geometry(&g, tag.input_size, tag.resize, &rules.limits)
            .expect("decoded geometry is valid");
        assert_eq!(encode(&tag, ID, &e, &Seal::Checksum).unwrap(), bytes);
    }
}

fn check_two(bytes: &[u8]) {
    let tag = two();
    if let Ok((g, t)) = decode_tensors(&tag, ID, bytes, &rules()) {
        assert_eq!((t[0].len(), t[1].len()), (8, 9));
        let views: Vec<&[f32]> = t.iter().map(Vec::as_slice).collect();
        assert_eq!(
            encode_tensors(&tag, ID, g, &views, &Seal::Checksum).unwrap(),
            bytes
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check_one(data);
    check_two(data);
    let valid_one = encode(
        &one(),
        ID,
        &Embedding {
            tensors: vec![EmbeddingTensor {
                name: "image_embeddings".into(),
                shape: vec![1, 2, 2, 2],
                data: EmbeddingData::F32((0..8).map(|v| v as f32 * 0.5).collect()),
            }],
            width: 40,
            height: 30,
            resized_width: 64,
            resized_height: 48,
        },
        &Seal::Checksum,
    )
    .unwrap();
    // SAM 2 stretches every image to the whole frame.
    let g = Geometry {
        width: 30,
        height: 40,
        resized_width: 64,
        resized_height: 64,
    };
    let a: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let b: Vec<f32> = (0..9).map(|v| -(v as f32)).collect();
    let valid_two = encode_tensors(&two(), ID, g, &[&a, &b], &Seal::Checksum).unwrap();
    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    for (valid, check) in [
        (&valid_one, check_one as fn(&[u8])),
        (&valid_two, check_two as fn(&[u8])),
    ] {
        // Overwrite from the chosen offset (same length), resealed.
        let at = at as usize % valid.len();
        let mut patched = valid.clone();
        for (b, r) in patched[at..].iter_mut().zip(rest) {
            *b = *r;
        }
        reseal(&mut patched);
        check(&patched);
        // Splice (any length), resealed and not.
        let mut spliced = valid[..at].to_vec();
        spliced.extend_from_slice(rest);
        check(&spliced);
        reseal(&mut spliced);
        check(&spliced);
    }
});
