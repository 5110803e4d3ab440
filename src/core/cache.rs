//! The image-embedding cache: moka, keyed by (model, image hash), weighted by bytes.
//!
//! Concurrent requests for the same uncached image share one encoder run (moka's
//! `entry().or_try_insert_with` is single-flight per key). Hits never touch the encoder.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use crate::error::ApiError;
use crate::runtime::model::Embedding;

/// Cache key: model name and image id (blake3 hex of the uploaded bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageKey {
    /// Model name.
    pub model: Arc<str>,
    /// Image id.
    pub image_id: Arc<str>,
}

/// Result of a lookup-or-compute.
pub struct Lookup {
    /// The embedding.
    pub embedding: Arc<Embedding>,
    /// True when it was already cached (or computed by a concurrent request).
    pub cached: bool,
}

/// The embedding cache.
#[derive(Clone)]
pub struct EmbeddingCache {
    inner: Cache<ImageKey, Arc<Embedding>>,
    /// Keep values as float16 (`--cache-dtype float16`): half the bytes per image.
    float16: bool,
}

impl EmbeddingCache {
    /// A cache holding at most `max_bytes` of embeddings; entries unused for `idle` go.
    /// With `float16`, embeddings are rounded to float16 as they enter it.
    pub fn new(max_bytes: u64, idle: Option<Duration>, float16: bool) -> Self {
        let mut builder = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &ImageKey, v: &Arc<Embedding>| {
                u32::try_from(v.weight_bytes()).unwrap_or(u32::MAX)
            })
            // LRU, not moka's default TinyLFU admission: a full cache must take the image
            // just uploaded (the one about to be clicked) and drop the least recently used.
            // Under TinyLFU the soak saw 91 % of one-shot segment calls answer 404 for the
            // image they had just uploaded: the new entry was never admitted.
            .eviction_policy(moka::policy::EvictionPolicy::lru());
        if let Some(idle) = idle {
            builder = builder.time_to_idle(idle);
        }
        EmbeddingCache {
            inner: builder.build(),
            float16,
        }
    }

    /// Returns the cached embedding, or runs `compute` once for all concurrent callers.
    pub async fn get_or_compute<F>(&self, key: ImageKey, compute: F) -> Result<Lookup, ApiError>
    where
        F: Future<Output = Result<Embedding, ApiError>>,
    {
        if let Some(embedding) = self.inner.get(&key).await {
            return Ok(Lookup {
                embedding,
                cached: true,
            });
        }
        let entry = self
            .inner
            .entry(key)
            .or_try_insert_with(async { compute.await.map(|e| self.admit(e)) })
            .await
            .map_err(|e: Arc<ApiError>| (*e).clone())?;
        let cached = !entry.is_fresh();
        Ok(Lookup {
            embedding: entry.into_value(),
            cached,
        })
    }

    /// The cached embedding, or the one `fetch` finds (then cached), once for all
    /// concurrent callers of the same key.
    pub async fn get_or_fetch<F>(&self, key: ImageKey, fetch: F) -> Option<Arc<Embedding>>
    where
        F: Future<Output = Option<Embedding>>,
    {
        if let Some(embedding) = self.inner.get(&key).await {
            return Some(embedding);
        }
        self.inner
            .entry(key)
            .or_optionally_insert_with(async { fetch.await.map(|e| self.admit(e)) })
            .await
            .map(|e| e.into_value())
    }

    /// Bytes of the cache's budget one image of `spec`'s model takes.
    pub fn bytes_per_image(&self, spec: &crate::runtime::model::ModelSpec) -> u64 {
        let data = spec.embedding_bytes() / if self.float16 { 2 } else { 1 };
        crate::runtime::embedding::weight_for(data, spec.tensors.len()) as u64
    }

    /// An embedding in the form this cache keeps.
    fn admit(&self, e: Embedding) -> Arc<Embedding> {
        Arc::new(if self.float16 { e.into_f16() } else { e })
    }

    /// The cached embedding, if any.
    pub async fn get(&self, key: &ImageKey) -> Option<Arc<Embedding>> {
        self.inner.get(key).await
    }

    /// Removes an entry; returns whether it was present.
    pub async fn remove(&self, key: &ImageKey) -> bool {
        self.inner.remove(key).await.is_some()
    }

    /// (entries, weighted bytes) after pending maintenance.
    pub async fn usage(&self) -> (u64, u64) {
        self.inner.run_pending_tasks().await;
        (self.inner.entry_count(), self.inner.weighted_size())
    }
}
