//! Model families: what differs between SAM and SAM 2 once the ONNX files are loaded.
//!
//! A family decides the embedding's tensors (found in the graphs by name, under every name
//! the known exporters use, never by position), the preprocessing, how prompts map into the
//! encoder's frame, how logits map back to the image, which mask a single-mask request
//! gets, and the defaults of segment everything. Everything else (cache, store, batching,
//! formats) sees an embedding as a set of named tensors and does not care which family
//! made it.
//!
//! | | `sam` (SAM, MobileSAM, ...) | `sam2` (SAM 2 / 2.1 image models) |
//! |---|---|---|
//! | embedding | `image_embeddings` | `image_embed`, `high_res_feats_0`, `high_res_feats_1` |
//! | resize | long side to L, zero-pad bottom/right | stretch to L x L (aspect not kept) |
//! | point in the frame | `x * rw / W` (ResizeLongestSide) | `x / W * L` (SAM2Transforms) |
//! | padding point, +0.5 | added here (official SAM decoder) | added by the decoder graph |
//! | box corners | after the clicks | before the clicks |
//! | logits to image | to L x L, crop, to W x H | to W x H directly |
//! | single mask | token 0 | token 0 unless unstable, then best of 1-3 |
//! | everything `pred_iou_thresh` | 0.88 | 0.8 (SAM2AutomaticMaskGenerator) |

use serde::Serialize;

/// A model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Segment Anything (and same-signature models: MobileSAM, the default model).
    Sam,
    /// SAM 2 / SAM 2.1 image models.
    Sam2,
}

/// Canonical name of each embedding tensor and the names exporters give it, in the encoder's
/// outputs and the decoder's inputs alike.
pub const TENSOR_ALIASES: &[(&str, &[&str])] = &[
    ("image_embeddings", &["image_embeddings"]),
    ("image_embed", &["image_embed"]),
    // samexporter: high_res_feats_N; sam2-onnx: high_res_feat_N.
    ("high_res_feats_0", &["high_res_feats_0", "high_res_feat_0"]),
    ("high_res_feats_1", &["high_res_feats_1", "high_res_feat_1"]),
];

/// The name among `names` that stands for the canonical tensor `canonical`, if any.
pub fn find_alias<'a>(names: &[&'a str], canonical: &str) -> Option<&'a str> {
    let aliases = TENSOR_ALIASES
        .iter()
        .find(|(c, _)| *c == canonical)
        .map(|(_, a)| *a)
        .unwrap_or(&[]);
    aliases
        .iter()
        .find_map(|a| names.iter().copied().find(|n| n == a))
}

/// How a single-mask request picks its mask.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum SingleMask {
    /// The single-mask token 0 (SAM).
    Token0,
    /// SAM 2's `_dynamic_multimask_via_stability`: token 0 when the stability of its
    /// low-res logits (area above `+delta` over area above `-delta`) is at least `thresh`,
    /// else the multimask token (1-3) with the highest predicted IoU.
    Stability {
        /// Logit offset of the two areas.
        delta: f32,
        /// Lowest stability that keeps token 0.
        thresh: f32,
    },
    /// The multimask token with the highest predicted IoU: for decoders that return only
    /// tokens 1-3 (samexporter's SAM 2 export), where token 0 is not available.
    BestMultimask,
}

impl SingleMask {
    /// The index among `scores` (tokens `first_token..`) and `logits` (one low-res plane per
    /// token) that a single-mask request returns.
    pub fn pick(self, first_token: usize, scores: &[f32], logits: &[&[f32]]) -> usize {
        let best_multimask = || {
            // torch.argmax: the first of equal maxima; tokens 1..=3 only.
            let from = 1usize.saturating_sub(first_token);
            let mut best = from;
            for i in from..scores.len() {
                if scores[i] > scores[best] {
                    best = i;
                }
            }
            best
        };
        match self {
            SingleMask::Token0 => 0,
            SingleMask::BestMultimask => best_multimask(),
            SingleMask::Stability { delta, thresh } => {
                if first_token > 0 {
                    return best_multimask();
                }
                if stability(logits[0], delta) >= thresh {
                    0
                } else {
                    best_multimask()
                }
            }
        }
    }
}

/// MaskDecoder._get_stability_scores on one plane: counts in integers, the ratio in f32,
/// 1 for an empty union.
pub fn stability(logits: &[f32], delta: f32) -> f32 {
    let inter = logits.iter().filter(|&&v| v > delta).count();
    let union = logits.iter().filter(|&&v| v > -delta).count();
    if union > 0 {
        inter as f32 / union as f32
    } else {
        1.0
    }
}

/// How the encoder's input is made from the decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// SAM: the long side to L (Pillow bilinear on 8-bit RGB), then (x - mean) / std and
    /// zero padding to L x L.
    LongSidePad,
    /// SAM 2: x / 255, then torchvision's antialiased bilinear resize to L x L (aspect not
    /// kept), then (x - mean) / std.
    Stretch,
}

impl Resize {
    /// The size of a `width x height` image in the encoder's `input_size` frame: SAM's
    /// long-side rule, or the whole `input_size x input_size` square.
    pub fn frame_size(self, width: u32, height: u32, input_size: usize) -> (u32, u32) {
        match self {
            Resize::LongSidePad => super::preprocess::resized_size(width, height, input_size),
            Resize::Stretch => (input_size as u32, input_size as u32),
        }
    }
}

impl Family {
    /// The family a manifest names (`sam2`, `sam2.1` -> SAM 2; anything else is SAM-like).
    pub fn from_manifest(name: &str) -> Family {
        if name.starts_with("sam2") {
            Family::Sam2
        } else {
            Family::Sam
        }
    }

    /// Name in manifests and `/v1/models`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Sam => "sam",
            Family::Sam2 => "sam2",
        }
    }

    /// The canonical names of the embedding's tensors, the primary one first.
    pub fn tensor_names(self) -> &'static [&'static str] {
        match self {
            Family::Sam => &["image_embeddings"],
            Family::Sam2 => &["image_embed", "high_res_feats_0", "high_res_feats_1"],
        }
    }

    /// The preprocessing.
    pub fn resize(self) -> Resize {
        match self {
            Family::Sam => Resize::LongSidePad,
            Family::Sam2 => Resize::Stretch,
        }
    }

    /// Whether the decoder graph adds the padding point itself (SAM 2's exports call the
    /// prompt encoder with `pad=True`); the official SAM decoder expects it in the input.
    pub fn graph_pads_points(self) -> bool {
        self == Family::Sam2
    }

    /// Whether a box's two corners go before the clicks (SAM2ImagePredictor) or after
    /// (SamPredictor). The decoder is invariant to the order; this keeps inputs identical.
    pub fn box_first(self) -> bool {
        self == Family::Sam2
    }

    /// Default `pred_iou_thresh` of segment everything (the reference generators').
    pub fn everything_pred_iou_thresh(self) -> f64 {
        match self {
            Family::Sam => 0.88,
            Family::Sam2 => 0.8,
        }
    }

    /// Default single-mask rule for a decoder with `tokens` outputs (`first_token` the
    /// index of the first) when the manifest does not say.
    pub fn default_single_mask(self, first_token: usize) -> SingleMask {
        match (self, first_token) {
            (_, 1..) => SingleMask::BestMultimask,
            (Family::Sam, _) => SingleMask::Token0,
            // build_sam2's image post-processing settings.
            (Family::Sam2, _) => SingleMask::Stability {
                delta: 0.05,
                thresh: 0.98,
            },
        }
    }

    /// Maps a point in original pixels into the encoder's frame. `resized` is the image's
    /// size in that frame, `input_size` the frame's side.
    pub fn to_frame(
        self,
        x: f64,
        y: f64,
        image: (u32, u32),
        resized: (u32, u32),
        input_size: usize,
    ) -> [f32; 2] {
        match self {
            // ResizeLongestSide.apply_coords: float64, then float32.
            Family::Sam => [
                (x * (resized.0 as f64 / image.0 as f64)) as f32,
                (y * (resized.1 as f64 / image.1 as f64)) as f32,
            ],
            // SAM2Transforms.transform_coords(normalize=True) on a float32 tensor.
            Family::Sam2 => {
                let l = input_size as f32;
                [
                    (x as f32 / image.0 as f32) * l,
                    (y as f32 / image.1 as f32) * l,
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_cover_both_sam2_exporters() {
        let samexporter = ["image_embed", "high_res_feats_0", "high_res_feats_1"];
        let sam2_onnx = ["high_res_feat_1", "image_embed", "high_res_feat_0"];
        for names in [&samexporter[..], &sam2_onnx[..]] {
            for canonical in Family::Sam2.tensor_names() {
                assert!(find_alias(names, canonical).is_some(), "{canonical}");
            }
        }
        assert_eq!(
            find_alias(&sam2_onnx, "high_res_feats_0"),
            Some("high_res_feat_0")
        );
        assert_eq!(find_alias(&samexporter, "image_embeddings"), None);
    }

    #[test]
    fn stability_rule_follows_the_reference() {
        // Token 0 with 3 of 4 pixels above +0.05 and all 4 above -0.05: 0.75 < 0.98.
        let unstable = [1.0f32, 1.0, 1.0, 0.0];
        let stable = [1.0f32, 1.0, -1.0, -1.0];
        let other = [0.0f32; 4];
        let rule = SingleMask::Stability {
            delta: 0.05,
            thresh: 0.98,
        };
        let scores = [0.1f32, 0.5, 0.9, 0.9];
        let planes = [&unstable[..], &other, &other, &other];
        // Ties keep the first maximum (torch.argmax).
        assert_eq!(rule.pick(0, &scores, &planes), 2);
        let planes = [&stable[..], &other, &other, &other];
        assert_eq!(rule.pick(0, &scores, &planes), 0);
        assert_eq!(stability(&[-1.0, -1.0], 0.05), 1.0);
        // A 3-token decoder (tokens 1-3): the best of them.
        assert_eq!(rule.pick(1, &[0.2, 0.7, 0.1], &[&other[..]; 3]), 1);
        assert_eq!(SingleMask::Token0.pick(0, &scores, &planes), 0);
    }

    #[test]
    fn frames() {
        // SAM: 1200x777 -> 1024x663.
        let p = Family::Sam.to_frame(600.0, 388.5, (1200, 777), (1024, 663), 1024);
        assert_eq!(p, [512.0, (388.5f64 * (663.0 / 777.0)) as f32]);
        // SAM 2: x / W * 1024 in float32, whatever the aspect.
        let p = Family::Sam2.to_frame(600.0, 388.5, (1200, 777), (1024, 1024), 1024);
        assert_eq!(p, [512.0, 388.5f32 / 777.0 * 1024.0]);
    }
}
