//! Low-resolution mask logits kept for refinement, addressed by opaque handles.
//!
//! A segment call can return a handle per mask; a later call passes it as `mask_input`
//! (SAM's mask prompt). Handles are bound to the model and image they came from.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

/// Stored logits and their provenance.
pub struct StoredLogits {
    /// Model that produced them.
    pub model: Arc<str>,
    /// Image they belong to.
    pub image_id: Arc<str>,
    /// Row-major low-res logits.
    pub data: Arc<Vec<f32>>,
}

/// Byte-bounded store of refinement handles.
#[derive(Clone)]
pub struct MaskStore {
    inner: Cache<String, Arc<StoredLogits>>,
}

impl MaskStore {
    /// A store of at most `max_bytes`; handles unused for `idle` expire.
    pub fn new(max_bytes: u64, idle: Duration) -> Self {
        MaskStore {
            inner: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &String, v: &Arc<StoredLogits>| {
                    u32::try_from(v.data.len() * 4 + k.len() + 64).unwrap_or(u32::MAX)
                })
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Stores logits and returns their handle (a content hash, so equal logits share it).
    pub fn insert(&self, model: &Arc<str>, image_id: &Arc<str>, data: Vec<f32>) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(model.as_bytes());
        hasher.update(&[0]);
        hasher.update(image_id.as_bytes());
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.update(&bytes);
        let handle = format!("lr_{}", &hasher.finalize().to_hex()[..32]);
        self.inner.insert(
            handle.clone(),
            Arc::new(StoredLogits {
                model: model.clone(),
                image_id: image_id.clone(),
                data: Arc::new(data),
            }),
        );
        handle
    }

    /// Looks a handle up.
    pub fn get(&self, handle: &str) -> Option<Arc<StoredLogits>> {
        self.inner.get(handle)
    }
}
