//! Automatic mask generation ("segment everything"), a re-implementation of the reference
//! `SamAutomaticMaskGenerator` (segment_anything/automatic_mask_generator.py and
//! utils/amg.py) that produces the same records for the same decoder outputs.
//!
//! The model is reached through [`AmgBackend`]; everything else (grids, crops, filters, NMS,
//! small-region cleanup) is here and is checked against fixtures written by the reference
//! functions themselves (`tools/amg_parity.py`, `tests/fixtures/amg/`).
//!
//! Reference behaviours reproduced on purpose, because clients compare against it:
//! - boxes are XYXY with an inclusive max, so `bbox` widths and heights are one pixel short of
//!   the mask's extent, and NMS sees them as continuous coordinates;
//! - thresholds are compared in `f32`, the predicted IoU strictly (`>`), the stability score
//!   with `>=`, and a threshold of 0 disables its filter (keeping NaN stability scores of
//!   empty masks);
//! - "holes" are any background components below the area, border-touching ones included.
//!
//! Deliberate differences: invalid settings on which the reference crashes (a crop layer with
//! 0 points per side, an image too small for its crops, no mask at all with several crops)
//! are refused or return no masks; above 1000 boxes torchvision orders equal NMS scores
//! arbitrarily, here they stay in index order.

mod compact;
mod fast;
mod generator;
mod grid;
mod nms;
mod params;
mod regions;
mod stability;

#[cfg(test)]
mod tests;

pub use compact::CompactMask;
pub use generator::{
    generate, generate_records, AmgBackend, AmgMask, AmgOutput, AmgProgress, AmgRecord, AmgRecords,
    AmgSummary, Upscaler,
};
pub use grid::{
    box_xyxy_to_xywh, build_all_layer_point_grids, build_point_grid, generate_crop_boxes,
    is_box_near_crop_edge, layer_points_per_side, mask_to_box, uncrop_box, uncrop_mask,
    uncrop_point, CropBox,
};
pub use nms::batched_nms;
pub use params::{
    AmgParams, AmgPreset, AmgSettings, MAX_CROP_LAYERS, MAX_GRID_POINTS, MAX_POINTS_PER_BATCH,
    MAX_POINTS_PER_SIDE,
};
pub use regions::{remove_small_regions, RegionMode};
pub use stability::stability_score;
