//! Segment everything: the engine's side of automatic mask generation. Crops are encoded
//! through the embedding cache (a crop is cached like an image of its own), point batches
//! go through the decoder pool like any other prompts.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::amg::{generate, AmgBackend, AmgOutput, AmgParams, AmgProgress, Upscaler};
use super::cache::ImageKey;
use super::engine::{Engine, ModelHandle};
use crate::error::{ApiError, ApiResult};
use crate::runtime::model::{DecoderPrompt, Embedding, MaskGeometry, MaskOutput, TokenOutput};
use crate::runtime::preprocess::prepare;

/// The engine as a backend of the generator, for one image and model.
struct EngineBackend<'a> {
    engine: &'a Engine,
    handle: &'a ModelHandle,
    image_id: Arc<str>,
    whole: Arc<Embedding>,
    /// The uploaded file, needed only when crops are encoded.
    original: Option<Bytes>,
    pixels: OnceCell<Arc<image::RgbImage>>,
    /// Stops the work early when the requester is gone.
    cancelled: &'a (dyn Fn() -> bool + Sync),
}

impl EngineBackend<'_> {
    fn check_cancelled(&self) -> ApiResult<()> {
        if (self.cancelled)() {
            Err(ApiError::Timeout)
        } else {
            Ok(())
        }
    }

    async fn pixels(&self) -> ApiResult<Arc<image::RgbImage>> {
        self.pixels
            .get_or_try_init(|| async {
                let bytes = self.original.clone().ok_or_else(|| ApiError::NotFound {
                    what: "image file (crop layers need the pixels; upload the image again)",
                    id: self.image_id.to_string(),
                })?;
                self.engine
                    .decode_gate
                    .decode(bytes, |d| Arc::new(d.rgb))
                    .await
            })
            .await
            .cloned()
    }
}

impl AmgBackend for EngineBackend<'_> {
    type Crop = Arc<Embedding>;

    async fn encode_crop(&self, crop: [u32; 4]) -> ApiResult<Arc<Embedding>> {
        self.check_cancelled()?;
        let [x0, y0, x1, y1] = crop;
        if [x0, y0, x1, y1] == [0, 0, self.whole.width, self.whole.height] {
            return Ok(self.whole.clone());
        }
        let pixels = self.pixels().await?;
        let key = ImageKey {
            model: self.handle.name.clone(),
            image_id: Arc::from(format!("{}#crop={x0},{y0},{x1},{y1}", self.image_id)),
        };
        let spec = self.handle.spec.clone();
        let encoder = self.handle.encoder.clone();
        let lookup = self
            .engine
            .cache
            .get_or_compute(key, async move {
                let prepared = tokio::task::spawn_blocking(move || {
                    let cropped =
                        image::imageops::crop_imm(&*pixels, x0, y0, x1 - x0, y1 - y0).to_image();
                    prepare(&cropped, &spec)
                })
                .await
                .map_err(ApiError::internal)?;
                encoder.call(prepared, 1).await
            })
            .await?;
        Ok(lookup.embedding)
    }

    fn upscaler(&self, crop: &Arc<Embedding>) -> Upscaler {
        let geometry = MaskGeometry::new(&self.handle.spec, crop);
        Arc::new(move |low_res: &[f32]| geometry.upscale(low_res))
    }

    async fn decode_points(
        &self,
        crop: &Arc<Embedding>,
        points: &[[f64; 2]],
    ) -> ApiResult<Vec<Vec<TokenOutput>>> {
        self.check_cancelled()?;
        let spec = &self.handle.spec;
        let prompts: Vec<DecoderPrompt> = points
            .iter()
            .map(|&[x, y]| {
                spec.decoder_prompt(crop, &[(x, y, 1.0)], None, None, MaskOutput::Multimask)
            })
            .collect();
        let n = prompts.len();
        let out = self.handle.decode(crop, prompts).await?;
        self.engine
            .metrics
            .everything_points_total
            .with_label_values(&[&self.handle.spec.name])
            .inc_by(n as u64);
        Ok(out)
    }
}

impl Engine {
    /// Refuses (413) a segment-everything request whose grid asks for more decoded points
    /// or encoded crops than the server allows per request, before any work is done, so
    /// that no request can hold the workers past its deadline by its parameters alone.
    pub fn check_everything_work(&self, params: &AmgParams) -> ApiResult<()> {
        let settings = params.resolve().map_err(ApiError::InvalidPrompt)?;
        settings
            .check_work(self.everything_max_points, self.everything_max_crops)
            .map_err(ApiError::PayloadTooLarge)
    }

    /// Runs the automatic mask generator on a cached image. `on_progress` sees each decoded
    /// batch; `cancelled` is polled before each model call so that a request whose client
    /// has gone stops costing compute.
    pub async fn everything(
        &self,
        model: Option<&str>,
        image_id: &str,
        params: AmgParams,
        mut on_progress: impl FnMut(AmgProgress) + Send,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> ApiResult<(AmgOutput, u32, u32)> {
        let handle = self.model(model)?;
        let mut params = params.with_family_defaults(handle.spec.kind.everything_pred_iou_thresh());
        self.check_everything_work(&params)?;
        let whole = self.embedding(model, image_id).await?;
        params.clamp_caps(
            Some(self.everything_max_masks),
            Some(self.everything_max_pixels),
        );
        let backend = EngineBackend {
            engine: self,
            handle,
            image_id: Arc::from(image_id),
            original: self.original(image_id).await,
            whole: whole.clone(),
            pixels: OnceCell::new(),
            cancelled,
        };
        let running = self.metrics.everything_running.clone();
        running.inc();
        let _guard = scopeguard(move || running.dec());
        let started = std::time::Instant::now();
        let id_short: String = image_id.chars().take(12).collect();
        let mut last_logged = 0usize;
        let out = generate(&backend, whole.width, whole.height, &params, |p| {
            if p.crops_done > last_logged || p.points_done == p.points_total {
                last_logged = p.crops_done;
                tracing::info!(
                    image = %id_short,
                    crops = format!("{}/{}", p.crops_done, p.crops_total),
                    points = format!("{}/{}", p.points_done, p.points_total),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "segment everything progress"
                );
            }
            on_progress(p)
        })
        .await?;
        Ok((out, whole.width, whole.height))
    }
}

/// Runs a closure on drop.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}
