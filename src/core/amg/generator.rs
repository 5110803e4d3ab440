//! The automatic mask generation pipeline, in the reference's order of operations.

use std::future::Future;
use std::sync::Arc;

use futures::future::{Either, FutureExt};

use serde::Serialize;

use super::compact::CompactMask;
use super::grid::{
    box_of, box_xyxy_to_xywh, generate_crop_boxes, is_box_near_crop_edge, mask_to_box, uncrop_box,
    uncrop_point, CropBox,
};
use super::nms::batched_nms;
use super::params::{AmgParams, AmgSettings};
use super::regions::{remove_small_regions, RegionMode};
use super::stability::stability_score;
use crate::core::masks::BinaryMask;
use crate::error::ApiError;
use crate::runtime::model::TokenOutput;

use crate::runtime::model::MASK_THRESHOLD;
/// Distance in pixels within which a box "touches" an inner crop edge.
const CROP_EDGE_ATOL: f32 = 20.0;

/// The model side of automatic mask generation: image encoding per crop and batched
/// single-point decoding.
pub trait AmgBackend {
    /// An encoded crop (image embedding plus whatever the decoder needs to map coordinates).
    type Crop: Send + Sync;

    /// Encode the crop `[x0, y0, x1, y1)` of the image (the whole image for the first box),
    /// exactly as if the cropped pixels were the input image.
    fn encode_crop(
        &self,
        crop: [u32; 4],
    ) -> impl Future<Output = Result<Self::Crop, ApiError>> + Send;

    /// Decode a batch of single foreground points (crop pixel coordinates, `[x, y]`) with
    /// multimask output (tokens 1..=3); returns, per point, its `TokenOutput`s in token order.
    fn decode_points(
        &self,
        crop: &Self::Crop,
        points: &[[f64; 2]],
    ) -> impl Future<Output = Result<Vec<Vec<TokenOutput>>, ApiError>> + Send;

    /// How a token's `low_res` logits become logits of `crop width × crop height`. Called
    /// only for masks whose predicted IoU passes, off the async workers.
    fn upscaler(&self, crop: &Self::Crop) -> Upscaler;
}

/// Maps low-resolution logits to logits at a crop's size (see [`AmgBackend::upscaler`]).
pub type Upscaler = Arc<UpscaleFn>;

/// The function behind an [`Upscaler`].
pub type UpscaleFn = dyn Fn(&[f32]) -> Vec<f32> + Send + Sync;

/// One generated mask, the reference's output record. `S` is the segmentation: a full-size
/// [`BinaryMask`], or a [`CompactMask`] in an [`AmgRecord`].
#[derive(Debug, Clone, PartialEq)]
pub struct AmgMask<S = BinaryMask> {
    /// The mask at the full image size.
    pub segmentation: S,
    /// Foreground pixel count.
    pub area: u64,
    /// `[x, y, w, h]` as the reference reports it: `w = x_max - x_min` with inclusive maxima,
    /// one less than the mask's extent (pycocotools' `toBbox` gives the extent).
    pub bbox: [u32; 4],
    /// The decoder's IoU prediction.
    pub predicted_iou: f32,
    /// The prompt point in image coordinates.
    pub point_coords: [f64; 2],
    /// Stability score (NaN for an empty mask when the stability filter is off).
    pub stability_score: f32,
    /// The crop the mask came from, `[x, y, w, h]`.
    pub crop_box: [u32; 4],
}

/// Progress of a generation, reported after each decoded batch and each finished crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AmgProgress {
    pub crops_done: usize,
    pub crops_total: usize,
    pub points_done: usize,
    pub points_total: usize,
}

/// Facts about a finished generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AmgSummary {
    /// Crops encoded (the whole image included).
    pub crops: usize,
    /// Point prompts decoded over all crops.
    pub points: usize,
    /// Masks that passed the IoU, stability and crop-edge filters, before any NMS.
    pub candidates: usize,
    /// Masks left after NMS and postprocessing, before `max_masks` / `max_total_pixels`.
    pub masks_before_caps: usize,
    /// Whether the caps dropped masks.
    pub truncated: bool,
}

/// The result of [`generate`]: the masks in the reference's order, and a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct AmgOutput {
    pub masks: Vec<AmgMask>,
    pub summary: AmgSummary,
}

impl<S> AmgMask<S> {
    /// The same record with another segmentation.
    fn with_segmentation<T>(&self, segmentation: T) -> AmgMask<T> {
        AmgMask {
            segmentation,
            area: self.area,
            bbox: self.bbox,
            predicted_iou: self.predicted_iou,
            point_coords: self.point_coords,
            stability_score: self.stability_score,
            crop_box: self.crop_box,
        }
    }
}

/// An [`AmgMask`] whose segmentation is still run-length encoded.
pub type AmgRecord = AmgMask<CompactMask>;

/// The result of [`generate_records`]. Full-size masks cost `width × height` bytes each, so a
/// caller that encodes masks one by one should expand them one by one with
/// [`AmgRecords::mask`] rather than through [`AmgRecords::into_output`].
#[derive(Debug, Clone, PartialEq)]
pub struct AmgRecords {
    pub width: u32,
    pub height: u32,
    pub records: Vec<AmgRecord>,
    pub summary: AmgSummary,
}

impl AmgRecords {
    /// The full-size mask record `i`.
    pub fn mask(&self, i: usize) -> AmgMask {
        let r = &self.records[i];
        r.with_segmentation(r.segmentation.to_mask(self.width, self.height))
    }

    /// Expands every record.
    pub fn into_output(self) -> AmgOutput {
        AmgOutput {
            masks: (0..self.records.len()).map(|i| self.mask(i)).collect(),
            summary: self.summary,
        }
    }
}

/// A mask between decoding and the final record.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    /// Always in image coordinates.
    pub(super) mask: CompactMask,
    /// Inclusive XYXY; in crop coordinates until the crop's NMS is done, then image ones.
    bbox: [u32; 4],
    predicted_iou: f32,
    stability: f32,
    /// Crop coordinates until the crop's NMS is done, then image ones.
    point: [f64; 2],
    crop: [u32; 4],
}

/// Per-batch filter settings, owned so the filtering can run on a blocking thread.
#[derive(Debug, Clone, Copy)]
struct BatchFilter {
    crop: [u32; 4],
    crop_w: usize,
    crop_h: usize,
    image: [u32; 2],
    pred_iou_thresh: f64,
    stability_score_thresh: f64,
    stability_score_offset: f64,
}

/// Runs SAM's automatic mask generator on a `width × height` image through `backend`.
///
/// Follows the reference `SamAutomaticMaskGenerator.generate` step for step: for each crop
/// box (the whole image, then the crop layers), the crop is encoded and its layer's point grid
/// decoded in batches of `points_per_batch`; each mask is kept if its predicted IoU is
/// strictly above `pred_iou_thresh`, its stability score at least `stability_score_thresh`
/// (either filter off at 0) and its box not within 20 px of an inner crop edge; NMS by
/// predicted IoU (`box_nms_thresh`) runs within each crop, then, with several crops, NMS
/// across crops preferring smaller crops (`crop_nms_thresh`); finally, with
/// `min_mask_region_area > 0`, small holes and islands are removed and NMS runs again
/// (threshold `max(box_nms_thresh, crop_nms_thresh)`) preferring unchanged masks. The records
/// come out in the reference's order (the last NMS's visiting order).
///
/// Then the caps: masks are taken by predicted IoU, highest first (ties in output order),
/// while there are fewer than `max_masks` and the areas sum to at most `max_total_pixels`;
/// the kept ones stay in reference order and `summary.truncated` tells whether any were
/// dropped.
///
/// Masks are kept as run lengths until the end (see [`generate_records`] to keep them so),
/// and each batch's logits are dropped once filtered. The CPU-heavy steps run on tokio's blocking pool when a tokio runtime is
/// present. `on_progress` is called after each decoded batch and each finished crop.
///
/// Errors: [`ApiError::InvalidPrompt`] for invalid parameters or an image too small for its
/// crop layers, backend errors as they come, [`ApiError::Internal`] when the backend returns
/// the wrong number of points or logit planes of the wrong size.
pub async fn generate<B, P>(
    backend: &B,
    width: u32,
    height: u32,
    params: &AmgParams,
    on_progress: P,
) -> Result<AmgOutput, ApiError>
where
    B: AmgBackend + Sync,
    P: FnMut(AmgProgress) + Send,
{
    let settings = params.resolve().map_err(ApiError::InvalidPrompt)?;
    let records = generate_records(backend, width, height, &settings, on_progress).await?;
    cpu(move || records.into_output()).await
}

/// [`generate`] with already resolved settings, leaving the masks run-length encoded.
pub async fn generate_records<B, P>(
    backend: &B,
    width: u32,
    height: u32,
    settings: &AmgSettings,
    mut on_progress: P,
) -> Result<AmgRecords, ApiError>
where
    B: AmgBackend + Sync,
    P: FnMut(AmgProgress) + Send,
{
    // AmgSettings has public fields; the invariants the loop below indexes by must hold even
    // for settings not made by AmgParams::resolve.
    if settings.point_grids.len() <= settings.crop_n_layers as usize
        || settings.points_per_batch == 0
    {
        return Err(ApiError::InvalidPrompt(
            "settings need a point grid per crop layer and points_per_batch >= 1".into(),
        ));
    }
    if width == 0 || height == 0 {
        return Err(ApiError::InvalidPrompt(format!(
            "cannot generate masks for an empty {width}x{height} image"
        )));
    }
    let crops = generate_crop_boxes(
        width,
        height,
        settings.crop_n_layers,
        settings.crop_overlap_ratio,
    );
    if let Some(bad) = crops.iter().find(|c| c.size().0 == 0 || c.size().1 == 0) {
        // The reference would feed an empty crop to the encoder and fail there.
        return Err(ApiError::InvalidPrompt(format!(
            "a {width}x{height} image is too small for crop_n_layers = {} (crop {:?} is empty)",
            settings.crop_n_layers, bad.xyxy
        )));
    }
    let mut progress = AmgProgress {
        crops_done: 0,
        crops_total: crops.len(),
        points_done: 0,
        points_total: crops
            .iter()
            .map(|c| settings.points_in_layer(c.layer))
            .sum(),
    };

    let mut data: Vec<Candidate> = Vec::new();
    let mut n_candidates = 0;
    for crop in &crops {
        let crop_data = process_crop(
            backend,
            crop,
            [width, height],
            settings,
            &mut progress,
            &mut on_progress,
            &mut n_candidates,
        )
        .await?;
        data.extend(crop_data);
        progress.crops_done += 1;
        on_progress(progress);
    }

    if crops.len() > 1 {
        let thresh = settings.crop_nms_thresh;
        data = cpu(move || {
            let boxes: Vec<[f32; 4]> = data.iter().map(|c| box_f32(c.bbox)).collect();
            let scores: Vec<f32> = data
                .iter()
                .map(|c| {
                    let [x0, y0, x1, y1] = c.crop;
                    1.0 / ((x1 - x0) as u64 * (y1 - y0) as u64) as f32
                })
                .collect();
            let keep = batched_nms(&boxes, &scores, thresh);
            select(data, &keep)
        })
        .await?;
    }

    if settings.min_mask_region_area > 0 {
        let area = settings.min_mask_region_area;
        let thresh = settings.box_nms_thresh.max(settings.crop_nms_thresh);
        data = cpu(move || postprocess_small_regions(data, width, height, area, thresh)).await?;
    }

    let masks_before_caps = data.len();
    let keep = apply_caps(&data, settings.max_masks, settings.max_total_pixels);
    let truncated = keep.len() < data.len();
    let kept: Vec<Candidate> = if truncated { select(data, &keep) } else { data };
    let records = kept
        .into_iter()
        .map(|c| AmgRecord {
            area: c.mask.area(),
            segmentation: c.mask,
            bbox: box_xyxy_to_xywh(c.bbox),
            predicted_iou: c.predicted_iou,
            point_coords: c.point,
            stability_score: c.stability,
            crop_box: box_xyxy_to_xywh(c.crop),
        })
        .collect();

    Ok(AmgRecords {
        width,
        height,
        records,
        summary: AmgSummary {
            crops: crops.len(),
            points: progress.points_total,
            candidates: n_candidates,
            masks_before_caps,
            truncated,
        },
    })
}

/// One crop: encode, decode its grid in batches, filter, NMS by predicted IoU, uncrop.
async fn process_crop<B, P>(
    backend: &B,
    crop: &CropBox,
    image: [u32; 2],
    settings: &AmgSettings,
    progress: &mut AmgProgress,
    on_progress: &mut P,
    n_candidates: &mut usize,
) -> Result<Vec<Candidate>, ApiError>
where
    B: AmgBackend + Sync,
    P: FnMut(AmgProgress) + Send,
{
    let (crop_w, crop_h) = crop.size();
    let encoded = backend.encode_crop(crop.xyxy).await?;
    let points: Vec<[f64; 2]> = settings.point_grids[crop.layer]
        .iter()
        .map(|p| [p[0] * crop_w as f64, p[1] * crop_h as f64])
        .collect();
    let filter = BatchFilter {
        crop: crop.xyxy,
        crop_w: crop_w as usize,
        crop_h: crop_h as usize,
        image,
        pred_iou_thresh: settings.pred_iou_thresh,
        stability_score_thresh: settings.stability_score_thresh,
        stability_score_offset: settings.stability_score_offset,
    };

    let upscale = backend.upscaler(&encoded);
    let mut data: Vec<Candidate> = Vec::new();
    let fast = settings.skip_covered_points;
    let order = if fast {
        super::fast::coarse_to_fine(points.len())
    } else {
        (0..points.len()).collect()
    };
    let crop_area = crop_w as u64 * crop_h as u64;
    let origin = [crop.xyxy[0], crop.xyxy[1]];
    let mut next = 0;
    // Filtering (upscaling included) of one batch overlaps the decoding of the next. In fast
    // mode a batch skips the points covered by the masks kept from the batches filtered so far.
    let mut pending = None;
    loop {
        let mut batch = Vec::with_capacity(settings.points_per_batch);
        let mut skipped = 0;
        while batch.len() < settings.points_per_batch && next < order.len() {
            let p = points[order[next]];
            next += 1;
            if fast && super::fast::covered(&data, p, origin, crop_area) {
                skipped += 1;
            } else {
                batch.push(p);
            }
        }
        progress.points_done += skipped;
        if batch.is_empty() {
            break;
        }
        let outputs = backend.decode_points(&encoded, &batch).await?;
        if outputs.len() != batch.len() {
            return Err(ApiError::Internal(format!(
                "decoder returned {} results for {} points",
                outputs.len(),
                batch.len()
            )));
        }
        let n = batch.len();
        let upscale = upscale.clone();
        let filtering = spawn_cpu(move || filter_batch(&filter, &batch, outputs, &*upscale));
        if let Some((n, previous)) = pending.replace((n, filtering)) {
            data.extend(previous.await??);
            progress.points_done += n;
            on_progress(*progress);
        }
    }
    if let Some((n, last)) = pending {
        data.extend(last.await??);
        progress.points_done += n;
        on_progress(*progress);
    }
    drop(encoded);
    *n_candidates += data.len();

    let thresh = settings.box_nms_thresh;
    let crop_box = crop.xyxy;
    cpu(move || {
        let boxes: Vec<[f32; 4]> = data.iter().map(|c| box_f32(c.bbox)).collect();
        let scores: Vec<f32> = data.iter().map(|c| c.predicted_iou).collect();
        let keep = batched_nms(&boxes, &scores, thresh);
        let mut kept = select(data, &keep);
        for c in &mut kept {
            c.bbox = uncrop_box(c.bbox, crop_box);
            c.point = uncrop_point(c.point, crop_box);
        }
        kept
    })
    .await
}

/// The per-mask filters of the reference's `_process_batch`, applied to one decoded batch.
/// They are element-wise, so applying them mask by mask keeps the reference's order.
fn filter_batch(
    f: &BatchFilter,
    points: &[[f64; 2]],
    outputs: Vec<Vec<TokenOutput>>,
    upscale: &UpscaleFn,
) -> Result<Vec<Candidate>, ApiError> {
    let plane = f.crop_w * f.crop_h;
    let orig_box = [0, 0, f.image[0], f.image[1]];
    // Thresholds compare in f32, as torch compares a float32 tensor with a Python float.
    let iou_thresh = f.pred_iou_thresh as f32;
    let stab_thresh = f.stability_score_thresh as f32;
    let mut kept = Vec::new();
    for (point, tokens) in points.iter().zip(outputs) {
        // Consuming the outputs frees each logit plane as soon as it is filtered.
        for t in tokens {
            // Written as "passes" so that NaN fails, as in the reference.
            let iou_passes = t.score > iou_thresh;
            if f.pred_iou_thresh > 0.0 && !iou_passes {
                continue;
            }
            let logits = upscale(&t.low_res);
            if logits.len() != plane {
                return Err(ApiError::Internal(format!(
                    "decoder returned {} logits for a {}x{} crop",
                    logits.len(),
                    f.crop_w,
                    f.crop_h
                )));
            }
            let stability =
                stability_score(&logits, MASK_THRESHOLD as f64, f.stability_score_offset);
            let stability_passes = stability >= stab_thresh;
            if f.stability_score_thresh > 0.0 && !stability_passes {
                continue;
            }
            let fg = |i: usize| logits[i] > MASK_THRESHOLD;
            let bbox = box_of(f.crop_w, f.crop_h, fg);
            let bbox_or_zero = bbox.unwrap_or([0; 4]);
            if is_box_near_crop_edge(bbox_or_zero, f.crop, orig_box, CROP_EDGE_ATOL) {
                continue;
            }
            kept.push(Candidate {
                mask: CompactMask::from_plane(f.crop_w, bbox, [f.crop[0], f.crop[1]], fg),
                bbox: bbox_or_zero,
                predicted_iou: t.score,
                stability,
                point: *point,
                crop: f.crop,
            });
        }
    }
    Ok(kept)
}

/// The reference's `postprocess_small_regions`: fill small holes, then drop small islands,
/// then NMS on the new boxes scoring unchanged masks 1 and changed ones 0; kept changed masks
/// take their new mask and box.
fn postprocess_small_regions(
    data: Vec<Candidate>,
    width: u32,
    height: u32,
    min_area: u64,
    nms_thresh: f64,
) -> Vec<Candidate> {
    if data.is_empty() {
        return data;
    }
    let mut boxes = Vec::with_capacity(data.len());
    let mut scores = Vec::with_capacity(data.len());
    let mut changed_masks: Vec<Option<CompactMask>> = Vec::with_capacity(data.len());
    for c in &data {
        let mask = c.mask.to_mask(width, height);
        let (mask, holes_changed) = remove_small_regions(&mask, min_area, RegionMode::Holes);
        let (mask, islands_changed) = remove_small_regions(&mask, min_area, RegionMode::Islands);
        let changed = holes_changed || islands_changed;
        // NMS uses boxes recomputed from every mask, unchanged ones included: for an empty
        // mask that is [0, 0, 0, 0], not its uncropped box.
        let bbox = mask_to_box(&mask);
        boxes.push(bbox);
        scores.push(if changed { 0.0 } else { 1.0 });
        changed_masks.push(changed.then(|| CompactMask::from_mask(&mask)));
    }
    let boxes_f: Vec<[f32; 4]> = boxes.iter().map(|&b| box_f32(b)).collect();
    let keep = batched_nms(&boxes_f, &scores, nms_thresh);
    let mut slots: Vec<Option<Candidate>> = data.into_iter().map(Some).collect();
    keep.iter()
        .map(|&i| {
            let mut c = slots[i].take().expect("NMS keeps each index once");
            if let Some(mask) = changed_masks[i].take() {
                c.mask = mask;
                c.bbox = boxes[i];
            }
            c
        })
        .collect()
}

/// Indices (ascending) of the masks kept by the caps: by predicted IoU, highest first, while
/// both caps hold.
fn apply_caps(data: &[Candidate], max_masks: Option<usize>, max_pixels: Option<u64>) -> Vec<usize> {
    if max_masks.is_none() && max_pixels.is_none() {
        return (0..data.len()).collect();
    }
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by(|&a, &b| {
        data[b]
            .predicted_iou
            .total_cmp(&data[a].predicted_iou)
            .then(a.cmp(&b))
    });
    let mut keep = Vec::new();
    let mut pixels = 0u64;
    for i in order {
        if max_masks.is_some_and(|m| keep.len() >= m) {
            break;
        }
        let next = pixels + data[i].mask.area();
        if max_pixels.is_some_and(|m| next > m) {
            break;
        }
        pixels = next;
        keep.push(i);
    }
    keep.sort_unstable();
    keep
}

/// The elements of `data` at `keep`, in `keep`'s order.
fn select(data: Vec<Candidate>, keep: &[usize]) -> Vec<Candidate> {
    let mut slots: Vec<Option<Candidate>> = data.into_iter().map(Some).collect();
    keep.iter()
        .map(|&i| slots[i].take().expect("each index selected once"))
        .collect()
}

fn box_f32(b: [u32; 4]) -> [f32; 4] {
    b.map(|v| v as f32)
}

/// Starts CPU-bound work on tokio's blocking pool at once (inline outside a runtime); the
/// returned future gives its result.
fn spawn_cpu<T, F>(f: F) -> impl Future<Output = Result<T, ApiError>> + Send
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => Either::Left(rt.spawn_blocking(f).map(|r| {
            r.map_err(|e| ApiError::Internal(format!("mask generation task failed: {e}")))
        })),
        Err(_) => Either::Right(std::future::ready(Ok(f()))),
    }
}

/// Runs CPU-bound work off the async workers when inside a tokio runtime.
async fn cpu<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_cpu(f).await
}
