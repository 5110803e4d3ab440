//! JSON request parsing and prompt validation: any body of the segment and
//! segment-everything routes parses to a request or a 4xx error, and any parsed prompt list
//! validates against an image (and a store holding refinement handles) or gives a 4xx;
//! never a panic, and every accepted prompt lies inside the image's model frame.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use samserve::core::mask_store::MaskStore;
use samserve::core::prompts::{prepare_prompts, PromptLimits};
use samserve::http::body::parse_json;
use samserve::http::everything::parse_request;
use samserve::http::types::SegmentRequest;
use samserve::runtime::model::{Embedding, EmbeddingData, EmbeddingTensor, ModelSpec};

struct Fixture {
    spec: ModelSpec,
    emb: Embedding,
    model: Arc<str>,
    image: Arc<str>,
    store: MaskStore,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let spec = ModelSpec::geometry_only("fuzz", 128, [32, 32]);
        let emb = Embedding {
            tensors: vec![EmbeddingTensor {
                name: "image_embeddings".into(),
                shape: vec![1, 1, 2, 2],
                data: EmbeddingData::F32(vec![0.0; 4]),
            }],
            width: 320,
            height: 240,
            resized_width: 128,
            resized_height: 96,
        };
        let model: Arc<str> = Arc::from("fuzz");
        let image: Arc<str> = Arc::from("a".repeat(64));
        let store = MaskStore::new(1 << 20, Duration::from_secs(3600));
        // A valid handle, one for another image, and one of the wrong size; their values
        // are printed so that the seed corpus can name them.
        store.insert(&model, &image, vec![0.5; 32 * 32]);
        store.insert(&model, &Arc::from("b".repeat(64)), vec![0.5; 32 * 32]);
        store.insert(&model, &image, vec![0.5; 7]);
        Fixture {
            spec,
            emb,
            model,
            image,
            store,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(r) = parse_json::<SegmentRequest>(data) {
        let limits = PromptLimits {
            max_points: 8,
            max_prompts: 8,
        };
        if let Ok(prompts) = prepare_prompts(
            &r.prompts,
            r.multimask_output,
            limits,
            &f.spec,
            &f.emb,
            &f.model,
            &f.image,
            &f.store,
        ) {
            assert_eq!(prompts.len(), r.prompts.len());
            for p in &prompts {
                assert_eq!(p.coords.len(), p.labels.len());
                for c in &p.coords {
                    assert!(c[0].is_finite() && c[1].is_finite());
                    assert!((0.0..=128.01).contains(&c[0]) && (0.0..=96.01).contains(&c[1]));
                }
            }
        }
    }
    for allow_image in [false, true] {
        if let Ok((r, _)) = parse_request(data, allow_image) {
            // Whatever parses resolves (validation ran) and its work is countable.
            let s = r
                .params
                .resolve()
                .expect("parse_request validated the parameters");
            let _ = s.check_work(4096, 21);
        }
    }
});
