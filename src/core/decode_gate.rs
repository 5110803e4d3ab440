//! Admission for image decoding: the header limits of every decode and a cap on decodes
//! running at once, so that concurrent uploads cannot multiply the per-decode peak memory.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::runtime::image_limits::DecodeLimits;
use crate::runtime::preprocess::{decode_image_with, DecodedImage};

/// Decodes images on the blocking pool under limits, at most `permits` at a time.
pub struct DecodeGate {
    limits: DecodeLimits,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl DecodeGate {
    /// The gate configured by `config` (`cores` when the concurrency flag is 0).
    pub fn new(config: &Config, cores: usize, metrics: Arc<Metrics>) -> Self {
        let e = &config.exposure;
        let n = if e.max_concurrent_decodes == 0 {
            cores.max(1)
        } else {
            e.max_concurrent_decodes
        };
        DecodeGate {
            limits: DecodeLimits {
                max_pixels: config.max_image_pixels,
                max_decoded_bytes: e.max_decoded_bytes,
                max_aspect_ratio: e.max_aspect_ratio.max(1),
            },
            permits: Arc::new(Semaphore::new(n)),
            metrics,
        }
    }

    /// The limits every decode is checked against.
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Decodes `bytes` and runs `then` on the result, both on the blocking pool while holding
    /// a decode permit (the decoded pixels usually live until `then` returns). The permit
    /// is released when the blocking work ends, even if the caller went away.
    pub async fn decode<T: Send + 'static>(
        &self,
        bytes: Bytes,
        then: impl FnOnce(DecodedImage) -> T + Send + 'static,
    ) -> ApiResult<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(ApiError::internal)?;
        let limits = self.limits;
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let t = Instant::now();
            let decoded = decode_image_with(&bytes, &limits)?;
            metrics
                .image_decode_seconds
                .with_label_values(&[decoded.format])
                .observe(t.elapsed().as_secs_f64());
            Ok(then(decoded))
        })
        .await
        .map_err(ApiError::internal)?
    }
}
