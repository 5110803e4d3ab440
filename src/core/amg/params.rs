//! Request parameters of the automatic mask generator and their validation.

use serde::{Deserialize, Serialize};

/// Largest `points_per_side`: 256² = 65 536 prompts per crop is already far beyond what is
/// useful and bounds the work one request can ask for.
pub const MAX_POINTS_PER_SIDE: i64 = 256;
/// Most points an explicit grid layer may hold (the same bound as `MAX_POINTS_PER_SIDE`²).
pub const MAX_GRID_POINTS: usize = (MAX_POINTS_PER_SIDE * MAX_POINTS_PER_SIDE) as usize;
/// Largest `crop_n_layers`: layer 4 already means 1 + 4 + 16 + 64 + 256 = 341 encoder runs.
pub const MAX_CROP_LAYERS: i64 = 4;
/// Largest `points_per_batch`; every prompt of a batch holds three full-crop logit planes.
pub const MAX_POINTS_PER_BATCH: i64 = 1024;

/// Named parameter sets that explicit fields are applied on top of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AmgPreset {
    /// The defaults of the reference `SamAutomaticMaskGenerator`.
    Default,
    /// The settings of the SA-1B data engine's fully automatic stage (SAM paper, appendix B):
    /// a 32×32 grid on the whole image plus 2×2 and 4×4 crops with 16×16 and 8×8 grids
    /// (`crop_n_layers` 2, `crop_n_points_downscale_factor` 2, i.e. "20 additional zoomed-in
    /// crops"), predicted IoU > 0.88, stability (±1 logit) ≥ 0.95, NMS 0.7 within and across
    /// crops, and removal of holes and islands under 100 pixels. The paper's extra filter of
    /// masks covering ≥ 95 % of the image is not part of the reference generator and not
    /// applied.
    Sa1b,
}

/// Parameters of one automatic mask generation request, as sent by clients.
///
/// Every field is optional; missing fields take the preset's value, and the preset defaults to
/// the reference generator's defaults. Integer fields are signed so that a negative value gets
/// a clear message from [`AmgParams::validate`] instead of a generic JSON error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AmgParams {
    /// Base parameter set (`default` or `sa1b`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<AmgPreset>,
    /// Points sampled along each side of the image (and of each crop of layer 0); 32 by default.
    /// Mutually exclusive with `point_grids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 256)]
    #[serde(deserialize_with = "crate::core::lenient::opt_i64")]
    pub points_per_side: Option<i64>,
    /// Explicit point grids normalized to [0, 1], `[x, y]`, one per crop layer (layer 0 is the
    /// whole image). Mutually exclusive with `points_per_side`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point_grids: Option<Vec<Vec<[f64; 2]>>>,
    /// Prompts decoded per decoder call (64).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1024)]
    #[serde(deserialize_with = "crate::core::lenient::opt_i64")]
    pub points_per_batch: Option<i64>,
    /// Keep masks whose predicted IoU is strictly above this (0.88; 0.8 on SAM 2 models, as
    /// `SAM2AutomaticMaskGenerator`); 0 disables the filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub pred_iou_thresh: Option<f64>,
    /// Keep masks whose stability score is at least this (0.95); 0 disables the filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub stability_score_thresh: Option<f64>,
    /// Logit offset of the stability score's two thresholds (1.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0)]
    pub stability_score_offset: Option<f64>,
    /// Box IoU above which NMS drops a mask within a crop (0.7).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub box_nms_thresh: Option<f64>,
    /// Number of crop layers after the whole image; layer i has 2^i × 2^i crops (0).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4)]
    #[serde(deserialize_with = "crate::core::lenient::opt_i64")]
    pub crop_n_layers: Option<i64>,
    /// Box IoU above which NMS drops a mask across crops (0.7).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub crop_nms_thresh: Option<f64>,
    /// Overlap of neighbouring first-layer crops as a fraction of the short side (512/1500).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub crop_overlap_ratio: Option<f64>,
    /// Points per side in crop layer i are `points_per_side / factor^i` (1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 256)]
    #[serde(deserialize_with = "crate::core::lenient::opt_i64")]
    pub crop_n_points_downscale_factor: Option<i64>,
    /// If positive, fill holes and remove islands smaller than this many pixels (0).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "crate::core::lenient::opt_i64")]
    pub min_mask_region_area: Option<i64>,
    /// Keep at most this many masks, those with the highest predicted IoU (unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "crate::core::lenient::opt_i64")]
    pub max_masks: Option<i64>,
    /// Keep masks, highest predicted IoU first, while the sum of their areas stays within this
    /// many pixels (unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "crate::core::lenient::opt_i64")]
    pub max_total_pixels: Option<i64>,
    /// Fast mode (not in the reference generator; false): decode the grid coarse to fine
    /// (every 4th point, then every 2nd, then the rest) and skip points that fall inside a
    /// mask already kept in the same crop (masks covering over half the crop excepted). Fewer
    /// decoder calls, slightly different masks; see docs/performance.md for its speed and
    /// recall.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_covered_points: Option<bool>,
}

/// Validated, concrete generator settings, derived from [`AmgParams`] by
/// [`AmgParams::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct AmgSettings {
    /// Normalized `[x, y]` prompt grid per crop layer (at least `crop_n_layers + 1` layers).
    pub point_grids: Vec<Vec<[f64; 2]>>,
    pub points_per_batch: usize,
    pub pred_iou_thresh: f64,
    pub stability_score_thresh: f64,
    pub stability_score_offset: f64,
    pub box_nms_thresh: f64,
    pub crop_n_layers: u32,
    pub crop_nms_thresh: f64,
    pub crop_overlap_ratio: f64,
    pub min_mask_region_area: u64,
    pub max_masks: Option<usize>,
    pub max_total_pixels: Option<u64>,
    /// Fast mode: coarse-to-fine order, points inside kept masks skipped.
    pub skip_covered_points: bool,
}

impl AmgSettings {
    /// Total number of prompts for one crop of each layer.
    pub fn points_in_layer(&self, layer: usize) -> usize {
        self.point_grids.get(layer).map_or(0, Vec::len)
    }

    /// Crops the run encodes: layer i has 2^i x 2^i of them (1 + 4 + 16 + ...).
    pub fn crops(&self) -> u64 {
        (0..=self.crop_n_layers).map(|i| 1u64 << (2 * i)).sum()
    }

    /// Prompts the run decodes: every crop of layer i decodes that layer's grid.
    pub fn total_points(&self) -> u64 {
        (0..=self.crop_n_layers as usize)
            .map(|i| self.points_in_layer(i) as u64 * (1u64 << (2 * i)))
            .sum()
    }

    /// Checks the work of one run against the server's caps (`--everything-max-points`,
    /// `--everything-max-crops`); the message names the numbers and the flag.
    pub fn check_work(&self, max_points: u64, max_crops: u64) -> Result<(), String> {
        let (points, crops) = (self.total_points(), self.crops());
        if points > max_points {
            return Err(format!(
                "segment everything would decode {points} points ({} crop layer(s)), more than \
                 this server's limit of {max_points} per request (--everything-max-points); \
                 lower points_per_side or crop_n_layers",
                self.crop_n_layers
            ));
        }
        if crops > max_crops {
            return Err(format!(
                "segment everything would encode {crops} crops (crop_n_layers {}), more than \
                 this server's limit of {max_crops} per request (--everything-max-crops)",
                self.crop_n_layers
            ));
        }
        Ok(())
    }
}

/// The concrete values a preset stands for, before explicit fields are applied.
struct Base {
    points_per_side: i64,
    points_per_batch: i64,
    pred_iou_thresh: f64,
    stability_score_thresh: f64,
    stability_score_offset: f64,
    box_nms_thresh: f64,
    crop_n_layers: i64,
    crop_nms_thresh: f64,
    crop_overlap_ratio: f64,
    crop_n_points_downscale_factor: i64,
    min_mask_region_area: i64,
}

impl AmgPreset {
    fn base(self) -> Base {
        let default = Base {
            points_per_side: 32,
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            min_mask_region_area: 0,
        };
        match self {
            AmgPreset::Default => default,
            AmgPreset::Sa1b => Base {
                crop_n_layers: 2,
                crop_n_points_downscale_factor: 2,
                min_mask_region_area: 100,
                ..default
            },
        }
    }
}

fn unit_interval(name: &str, v: f64) -> Result<f64, String> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{name} must be between 0 and 1, got {v}"))
    }
}

impl AmgParams {
    /// The request with the model family's reference default filled in where it differs
    /// from `SamAutomaticMaskGenerator`'s: `pred_iou_thresh` (0.8 for SAM 2's generator),
    /// when the request leaves it and the default preset open.
    pub fn with_family_defaults(mut self, pred_iou_thresh: f64) -> Self {
        if self.pred_iou_thresh.is_none() && matches!(self.preset, None | Some(AmgPreset::Default))
        {
            self.pred_iou_thresh = Some(pred_iou_thresh);
        }
        self
    }

    /// Checks every field; the error names the offending field and its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        self.resolve().map(|_| ())
    }

    /// Applies the preset and the explicit fields, validates the result and builds the point
    /// grids.
    pub fn resolve(&self) -> Result<AmgSettings, String> {
        let base = self.preset.unwrap_or(AmgPreset::Default).base();

        let crop_n_layers = self.crop_n_layers.unwrap_or(base.crop_n_layers);
        if !(0..=MAX_CROP_LAYERS).contains(&crop_n_layers) {
            return Err(format!(
                "crop_n_layers must be between 0 and {MAX_CROP_LAYERS}, got {crop_n_layers}"
            ));
        }
        let layers = crop_n_layers as usize + 1;

        let point_grids = match (&self.point_grids, self.points_per_side) {
            (Some(_), Some(_)) => {
                return Err("give either points_per_side or point_grids, not both".into());
            }
            (Some(grids), None) => {
                if grids.len() < layers {
                    return Err(format!(
                        "point_grids has {} grid(s) but crop_n_layers = {crop_n_layers} needs {layers}",
                        grids.len()
                    ));
                }
                for (i, g) in grids.iter().enumerate() {
                    if g.is_empty() || g.len() > MAX_GRID_POINTS {
                        return Err(format!(
                            "point_grids[{i}] must hold between 1 and {MAX_GRID_POINTS} points, got {}",
                            g.len()
                        ));
                    }
                    if let Some(p) = g
                        .iter()
                        .find(|p| !p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)))
                    {
                        return Err(format!(
                            "point_grids[{i}] coordinates must be within [0, 1], got [{}, {}]",
                            p[0], p[1]
                        ));
                    }
                }
                // Layers beyond crop_n_layers are never used, as in the reference.
                grids[..layers].to_vec()
            }
            (None, explicit) => {
                let n = explicit.unwrap_or(base.points_per_side);
                if !(1..=MAX_POINTS_PER_SIDE).contains(&n) {
                    return Err(format!(
                        "points_per_side must be between 1 and {MAX_POINTS_PER_SIDE}, got {n}"
                    ));
                }
                let factor = self
                    .crop_n_points_downscale_factor
                    .unwrap_or(base.crop_n_points_downscale_factor);
                if !(1..=MAX_POINTS_PER_SIDE).contains(&factor) {
                    return Err(format!(
                        "crop_n_points_downscale_factor must be between 1 and {MAX_POINTS_PER_SIDE}, got {factor}"
                    ));
                }
                let sizes =
                    super::grid::layer_points_per_side(n as usize, crop_n_layers, factor as u32);
                // The reference divides by zero building an empty grid; refuse instead.
                if sizes.contains(&0) {
                    return Err(format!(
                        "points_per_side {n} / crop_n_points_downscale_factor {factor}^{crop_n_layers} leaves no points in the last crop layer"
                    ));
                }
                sizes
                    .into_iter()
                    .map(super::grid::build_point_grid)
                    .collect()
            }
        };

        let points_per_batch = self.points_per_batch.unwrap_or(base.points_per_batch);
        if !(1..=MAX_POINTS_PER_BATCH).contains(&points_per_batch) {
            return Err(format!(
                "points_per_batch must be between 1 and {MAX_POINTS_PER_BATCH}, got {points_per_batch}"
            ));
        }
        let stability_score_offset = self
            .stability_score_offset
            .unwrap_or(base.stability_score_offset);
        if !(stability_score_offset.is_finite() && stability_score_offset >= 0.0) {
            return Err(format!(
                "stability_score_offset must be a finite number >= 0, got {stability_score_offset}"
            ));
        }
        let crop_overlap_ratio = self.crop_overlap_ratio.unwrap_or(base.crop_overlap_ratio);
        if !(crop_overlap_ratio.is_finite() && (0.0..1.0).contains(&crop_overlap_ratio)) {
            return Err(format!(
                "crop_overlap_ratio must be >= 0 and < 1, got {crop_overlap_ratio}"
            ));
        }
        let min_mask_region_area = self
            .min_mask_region_area
            .unwrap_or(base.min_mask_region_area);
        if min_mask_region_area < 0 {
            return Err(format!(
                "min_mask_region_area must be >= 0, got {min_mask_region_area}"
            ));
        }
        let max_masks = match self.max_masks {
            Some(m) if m < 1 => return Err(format!("max_masks must be >= 1, got {m}")),
            m => m.map(|m| m as usize),
        };
        let max_total_pixels = match self.max_total_pixels {
            Some(m) if m < 0 => return Err(format!("max_total_pixels must be >= 0, got {m}")),
            m => m.map(|m| m as u64),
        };

        Ok(AmgSettings {
            point_grids,
            points_per_batch: points_per_batch as usize,
            pred_iou_thresh: unit_interval(
                "pred_iou_thresh",
                self.pred_iou_thresh.unwrap_or(base.pred_iou_thresh),
            )?,
            stability_score_thresh: unit_interval(
                "stability_score_thresh",
                self.stability_score_thresh
                    .unwrap_or(base.stability_score_thresh),
            )?,
            stability_score_offset,
            box_nms_thresh: unit_interval(
                "box_nms_thresh",
                self.box_nms_thresh.unwrap_or(base.box_nms_thresh),
            )?,
            crop_n_layers: crop_n_layers as u32,
            crop_nms_thresh: unit_interval(
                "crop_nms_thresh",
                self.crop_nms_thresh.unwrap_or(base.crop_nms_thresh),
            )?,
            crop_overlap_ratio,
            min_mask_region_area: min_mask_region_area as u64,
            max_masks,
            max_total_pixels,
            skip_covered_points: self.skip_covered_points.unwrap_or(false),
        })
    }

    /// Lowers the caps to server-side limits: a client may ask for fewer masks or pixels than
    /// the server allows, never more.
    pub fn clamp_caps(&mut self, max_masks: Option<u64>, max_total_pixels: Option<u64>) {
        fn clamp(field: &mut Option<i64>, limit: Option<u64>) {
            if let Some(limit) = limit {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                *field = Some(field.map_or(limit, |v| v.min(limit)));
            }
        }
        clamp(&mut self.max_masks, max_masks);
        clamp(&mut self.max_total_pixels, max_total_pixels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> AmgParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn family_defaults_fill_only_what_the_request_leaves_open() {
        // SAM2AutomaticMaskGenerator: pred_iou_thresh 0.8 (SamAutomaticMaskGenerator: 0.88).
        let s = parse("{}").with_family_defaults(0.8).resolve().unwrap();
        assert_eq!(s.pred_iou_thresh, 0.8);
        let s = parse(r#"{"pred_iou_thresh": 0.5}"#)
            .with_family_defaults(0.8)
            .resolve()
            .unwrap();
        assert_eq!(s.pred_iou_thresh, 0.5);
        // A named preset keeps its own value.
        let s = parse(r#"{"preset": "sa1b"}"#)
            .with_family_defaults(0.8)
            .resolve()
            .unwrap();
        assert_eq!(s.pred_iou_thresh, 0.88);
    }

    #[test]
    fn work_counts_points_over_every_crop() {
        // Reference defaults: one 32x32 grid on the whole image.
        let s = parse("{}").resolve().unwrap();
        assert_eq!((s.total_points(), s.crops()), (1024, 1));
        // SA-1B: 32² + 4 crops x 16² + 16 crops x 8².
        let s = parse(r#"{"preset": "sa1b"}"#).resolve().unwrap();
        assert_eq!(
            (s.total_points(), s.crops()),
            (1024 + 4 * 256 + 16 * 64, 21)
        );
        // Both presets fit the server's default caps (4,096 points, 21 crops).
        assert!(s.check_work(4096, 21).is_ok());
        let s = parse(r#"{"points_per_side": 65}"#).resolve().unwrap();
        assert!(s.check_work(4096, 21).unwrap_err().contains("4225 points"));
        let s = parse(r#"{"points_per_side": 1, "crop_n_layers": 3}"#)
            .resolve()
            .unwrap();
        assert!(s.check_work(4096, 21).unwrap_err().contains("85 crops"));
    }

    #[test]
    fn empty_object_gives_reference_defaults() {
        let s = parse("{}").resolve().unwrap();
        assert_eq!(s.point_grids.len(), 1);
        assert_eq!(s.point_grids[0].len(), 32 * 32);
        assert_eq!(s.points_per_batch, 64);
        assert_eq!(s.pred_iou_thresh, 0.88);
        assert_eq!(s.stability_score_thresh, 0.95);
        assert_eq!(s.stability_score_offset, 1.0);
        assert_eq!(s.box_nms_thresh, 0.7);
        assert_eq!(s.crop_n_layers, 0);
        assert_eq!(s.crop_nms_thresh, 0.7);
        assert_eq!(s.crop_overlap_ratio, 512.0 / 1500.0);
        assert_eq!(s.min_mask_region_area, 0);
        assert_eq!((s.max_masks, s.max_total_pixels), (None, None));
    }

    #[test]
    fn sa1b_preset_and_overrides() {
        let s = parse(r#"{"preset": "sa1b"}"#).resolve().unwrap();
        assert_eq!(s.crop_n_layers, 2);
        let sizes: Vec<usize> = s.point_grids.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![32 * 32, 16 * 16, 8 * 8]);
        assert_eq!(s.min_mask_region_area, 100);
        assert_eq!(s.pred_iou_thresh, 0.88);
        assert_eq!(s.stability_score_thresh, 0.95);

        let s = parse(r#"{"preset": "sa1b", "crop_n_layers": 1, "points_per_side": 16, "min_mask_region_area": 0}"#)
            .resolve()
            .unwrap();
        let sizes: Vec<usize> = s.point_grids.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![16 * 16, 8 * 8]);
        assert_eq!(s.min_mask_region_area, 0);

        // An explicit grid replaces the preset's points_per_side.
        let s = parse(r#"{"preset": "sa1b", "crop_n_layers": 0, "point_grids": [[[0.5, 0.5]]]}"#)
            .resolve()
            .unwrap();
        assert_eq!(s.point_grids, vec![vec![[0.5, 0.5]]]);
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (r#"{"points_per_side": 0}"#, "points_per_side"),
            (r#"{"points_per_side": 257}"#, "points_per_side"),
            (r#"{"points_per_batch": 0}"#, "points_per_batch"),
            (r#"{"pred_iou_thresh": 1.5}"#, "pred_iou_thresh"),
            (
                r#"{"stability_score_thresh": -0.1}"#,
                "stability_score_thresh",
            ),
            (
                r#"{"stability_score_offset": -1}"#,
                "stability_score_offset",
            ),
            (r#"{"box_nms_thresh": 2}"#, "box_nms_thresh"),
            (r#"{"crop_nms_thresh": -2}"#, "crop_nms_thresh"),
            (r#"{"crop_n_layers": 5}"#, "crop_n_layers"),
            (r#"{"crop_n_layers": -1}"#, "crop_n_layers"),
            (r#"{"crop_overlap_ratio": 1.0}"#, "crop_overlap_ratio"),
            (
                r#"{"crop_n_points_downscale_factor": 0}"#,
                "crop_n_points_downscale_factor",
            ),
            (
                r#"{"points_per_side": 7, "crop_n_layers": 3, "crop_n_points_downscale_factor": 2}"#,
                "no points",
            ),
            (r#"{"min_mask_region_area": -5}"#, "min_mask_region_area"),
            (r#"{"max_masks": 0}"#, "max_masks"),
            (r#"{"max_total_pixels": -1}"#, "max_total_pixels"),
            (
                r#"{"points_per_side": 8, "point_grids": [[[0.5, 0.5]]]}"#,
                "not both",
            ),
            (r#"{"point_grids": [[[0.5, 1.5]]]}"#, "within [0, 1]"),
            (r#"{"point_grids": [[]]}"#, "point_grids[0]"),
            (
                r#"{"point_grids": [[[0.5, 0.5]]], "crop_n_layers": 1}"#,
                "needs 2",
            ),
        ];
        for (json, needle) in cases {
            let err = parse(json).validate().unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn caps_are_clamped_to_server_limits() {
        let mut p = parse(r#"{"max_masks": 500}"#);
        p.clamp_caps(Some(100), Some(1 << 20));
        assert_eq!(p.max_masks, Some(100));
        assert_eq!(p.max_total_pixels, Some(1 << 20));
        let mut p = parse(r#"{"max_masks": 5}"#);
        p.clamp_caps(Some(100), None);
        assert_eq!((p.max_masks, p.max_total_pixels), (Some(5), None));
    }

    #[test]
    fn serializes_only_given_fields() {
        let p = parse(r#"{"preset": "sa1b", "points_per_side": 16}"#);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"preset":"sa1b","points_per_side":16}"#
        );
    }
}
