//! Identifiers and stored values that come from outside: image ids in paths, refinement
//! handles (`mask_input`), and embedding values read back from the shared store (another
//! replica, or anyone with write access to Redis). Any bytes give a value or an error.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use samserve::core::engine::validate_image_id;
use samserve::core::mask_store::MaskStore;
use samserve::core::store::codec::{decode, encode};
use samserve::core::store::ModelTag;
use samserve::runtime::model::{Embedding, EmbeddingData, EmbeddingTensor};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if validate_image_id(&text).is_ok() {
        assert_eq!(text.len(), 64);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    // A handle is only ever looked up: an unknown one is a miss, a known one its own value.
    let store = MaskStore::new(1 << 16, Duration::from_secs(60));
    let handle = store.insert(&Arc::from("m"), &Arc::from("i"), vec![1.0; 4]);
    if text != handle {
        assert!(store.get(&text).is_none());
    }

    let tag = ModelTag {
        name: "m".into(),
        fingerprint: [7; 16],
        shape: [1, 2, 2, 2],
        tensor: "image_embeddings".into(),
        tensors: 1,
    };
    // Raw bytes, and a valid value with the input spliced in at an offset it chooses, so
    // that the checks past the magic and fingerprint are reached.
    let check = |bytes: &[u8]| {
        if let Ok(e) = decode(&tag, bytes) {
            assert_eq!(e.tensors[0].shape, tag.shape.to_vec());
            assert_eq!(e.tensors[0].data.len(), 8);
        }
    };
    check(data);
    let valid = encode(
        &tag,
        &Embedding {
            tensors: vec![EmbeddingTensor {
                name: "image_embeddings".into(),
                shape: tag.shape.to_vec(),
                data: EmbeddingData::F32((0..8).map(|v| v as f32).collect()),
            }],
            width: 4,
            height: 3,
            resized_width: 4,
            resized_height: 3,
        },
    )
    .expect("one tensor");
    if let Some((&at, rest)) = data.split_first() {
        let at = at as usize % valid.len();
        let mut spliced = valid[..at].to_vec();
        spliced.extend_from_slice(rest);
        check(&spliced);
        let mut patched = valid.clone();
        for (b, r) in patched[at..].iter_mut().zip(rest) {
            *b = *r;
        }
        check(&patched);
    }
});
