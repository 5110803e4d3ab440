//! Prompts and masks in the decoder's frame: what a prompt becomes for the family's decoder,
//! what one mask token answers, and how its low-resolution logits map back to the image.

use std::sync::Arc;

use super::embedding::Embedding;
use super::family::Family;
use super::model::ModelSpec;
use super::resize::{interpolate_window_map, Window};

impl ModelSpec {
    /// A prompt in the decoder's frame: clicks `(x, y, label)` and an optional box
    /// `[x0, y0, x1, y1]` in original pixels of `emb`'s image, mapped and ordered as the
    /// family's reference predictor does.
    pub fn decoder_prompt(
        &self,
        emb: &Embedding,
        points: &[(f64, f64, f32)],
        bbox: Option<[f64; 4]>,
        mask_input: Option<Arc<Vec<f32>>>,
        output: MaskOutput,
    ) -> DecoderPrompt {
        let frame = |x: f64, y: f64| {
            self.kind.to_frame(
                x,
                y,
                (emb.width, emb.height),
                (emb.resized_width, emb.resized_height),
                self.input_size,
            )
        };
        let mut coords = Vec::with_capacity(points.len() + 2);
        let mut labels = Vec::with_capacity(points.len() + 2);
        let corners = bbox.map(|[x0, y0, x1, y1]| [frame(x0, y0), frame(x1, y1)]);
        if let (Some(c), true) = (corners, self.kind.box_first()) {
            coords.extend(c);
            labels.extend([2.0, 3.0]);
        }
        for &(x, y, l) in points {
            coords.push(frame(x, y));
            labels.push(l);
        }
        match (corners, self.kind.box_first()) {
            (Some(c), false) => {
                coords.extend(c);
                labels.extend([2.0, 3.0]);
            }
            // The official SAM decoder expects the padding point SAM's prompt encoder adds
            // when there is no box; SAM 2's graphs add theirs.
            (None, _) if !self.kind.graph_pads_points() => {
                coords.push([0.0, 0.0]);
                labels.push(-1.0);
            }
            _ => {}
        }
        DecoderPrompt {
            coords,
            labels,
            mask_input,
            output,
        }
    }

    /// The low-resolution logits a later request may feed back as `mask_input`: SAM 2's
    /// predictor hands them out clamped to +-32 (masks are upscaled from the unclamped
    /// ones); SAM's as they are.
    pub fn refinement_logits(&self, mut low_res: Vec<f32>) -> Vec<f32> {
        if self.kind == Family::Sam2 {
            low_res.iter_mut().for_each(|v| *v = v.clamp(-32.0, 32.0));
        }
        low_res
    }
}

/// Which masks a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskOutput {
    /// The three ambiguity masks (tokens 1-3), or token 0 when the decoder has one.
    Multimask,
    /// One mask, chosen by the spec's [`SingleMask`] rule.
    Single,
}

/// One prompt in model-frame coordinates, ready for the decoder.
#[derive(Debug, Clone)]
pub struct DecoderPrompt {
    /// `(x, y)` pairs in the model frame.
    pub coords: Vec<[f32; 2]>,
    /// Labels: -1 padding, 0 background, 1 foreground, 2 box top-left, 3 box bottom-right.
    pub labels: Vec<f32>,
    /// Optional low-res logits `[mh * mw]` from an earlier call.
    pub mask_input: Option<Arc<Vec<f32>>>,
    /// Masks to return.
    pub output: MaskOutput,
}

/// One mask token's answer.
#[derive(Debug)]
pub struct TokenOutput {
    /// Token index (0 single-mask, 1-3 multimask), whatever the export's output order.
    pub token: usize,
    /// Predicted IoU.
    pub score: f32,
    /// Low-resolution logits (`low_res_size`, row-major). [`MaskGeometry`] maps them to the
    /// image; [`ModelSpec::refinement_logits`] of them is the refinement input of a later
    /// call.
    pub low_res: Vec<f32>,
}

/// SAM's `mask_threshold`: a pixel is foreground where its upscaled logit is above it.
pub const MASK_THRESHOLD: f32 = 0.0;

/// How one embedding's low-resolution decoder logits map back to its image: SAM's
/// `postprocess_masks` (to the input frame, crop the padding, to the image), or SAM 2's
/// (straight to the image). Upscaling is left to the caller so that the decoder threads
/// only run the model, and so that masks a caller filters out by score are never upscaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskGeometry {
    low_res_width: usize,
    low_res_height: usize,
    input_size: usize,
    resized_width: usize,
    resized_height: usize,
    /// SAM 2: one bilinear resize from the low-res plane to the image.
    direct: bool,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
}

impl MaskGeometry {
    /// The geometry of masks decoded by `spec`'s model from `emb`.
    pub fn new(spec: &ModelSpec, emb: &Embedding) -> Self {
        Self {
            low_res_width: spec.low_res_size[1],
            low_res_height: spec.low_res_size[0],
            input_size: spec.input_size,
            resized_width: emb.resized_width as usize,
            resized_height: emb.resized_height as usize,
            direct: spec.kind == Family::Sam2,
            width: emb.width as usize,
            height: emb.height as usize,
        }
    }

    /// Logits at the image size, row-major `height x width`.
    pub fn upscale(&self, low_res: &[f32]) -> Vec<f32> {
        self.map(low_res, |v| v)
    }

    /// The mask at the image size: 1 where the upscaled logit is above `threshold`. At the
    /// usual threshold 0 only the tiles along the mask's edge are upscaled (the same bits:
    /// [`super::mask_tiles`]).
    pub fn upscale_mask(&self, low_res: &[f32], threshold: f32) -> Vec<u8> {
        if threshold == 0.0 {
            return super::mask_tiles::mask_above_zero(low_res, &self.stages());
        }
        self.map(low_res, |v| (v > threshold) as u8)
    }

    /// The resizes from the low-res plane to the image: SAM's `postprocess_masks` (to the
    /// encoder frame, cropped to the resized image, then to the image) or SAM 2's (straight
    /// to the image).
    fn stages(&self) -> Vec<Window> {
        let (lw, lh) = (self.low_res_width, self.low_res_height);
        let to_image = |width, height| Window {
            width,
            height,
            out_width: self.width,
            out_height: self.height,
            crop_width: self.width,
            crop_height: self.height,
        };
        if self.direct {
            return vec![to_image(lw, lh)];
        }
        assert!(
            self.resized_width <= self.input_size && self.resized_height <= self.input_size,
            "resized size {}x{} exceeds input size {}",
            self.resized_width,
            self.resized_height,
            self.input_size
        );
        vec![
            Window {
                width: lw,
                height: lh,
                out_width: self.input_size,
                out_height: self.input_size,
                crop_width: self.resized_width,
                crop_height: self.resized_height,
            },
            to_image(self.resized_width, self.resized_height),
        ]
    }

    /// Runs [`Self::stages`], applying `f` to each sample of the last one as it is computed.
    fn map<T: Copy>(&self, low_res: &[f32], f: impl Fn(f32) -> T) -> Vec<T> {
        let stages = self.stages();
        let (last, before) = stages.split_last().expect("at least one resize");
        let mut plane = std::borrow::Cow::Borrowed(low_res);
        for w in before {
            plane = std::borrow::Cow::Owned(interpolate_window_map(&plane, *w, |v| v));
        }
        interpolate_window_map(&plane, *last, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refinement_logits_are_clamped_as_sam2s_predictor_returns_them() {
        // SAM2ImagePredictor._predict: low_res_masks = torch.clamp(low_res_masks, -32.0, 32.0).
        let sam2 = ModelSpec::geometry_only("m", 1024, [256, 256]).with_family(Family::Sam2);
        assert_eq!(
            sam2.refinement_logits(vec![40.0, -50.0, 3.5, 32.0]),
            [32.0, -32.0, 3.5, 32.0]
        );
        let sam = ModelSpec::geometry_only("m", 1024, [256, 256]);
        assert_eq!(sam.refinement_logits(vec![40.0, -50.0]), [40.0, -50.0]);
    }

    #[test]
    fn sam2_prompts_put_the_box_first_and_leave_padding_to_the_graph() {
        let emb = Embedding {
            tensors: Vec::new(),
            width: 640,
            height: 480,
            resized_width: 1024,
            resized_height: 1024,
        };
        let sam2 = ModelSpec::geometry_only("m", 1024, [256, 256]).with_family(Family::Sam2);
        let p = sam2.decoder_prompt(
            &emb,
            &[(320.0, 120.0, 1.0)],
            Some([64.0, 48.0, 640.0, 480.0]),
            None,
            MaskOutput::Single,
        );
        assert_eq!(p.labels, [2.0, 3.0, 1.0]);
        assert_eq!(p.coords, [[102.4, 102.4], [1024.0, 1024.0], [512.0, 256.0]]);
        let p = sam2.decoder_prompt(&emb, &[(0.0, 0.0, 0.0)], None, None, MaskOutput::Multimask);
        assert_eq!(p.labels, [0.0]);
        // SAM: long side 640 -> 1024 (768 x 1024 frame), clicks first, then the padding point.
        let emb = Embedding {
            resized_height: 768,
            ..emb
        };
        let sam = ModelSpec::geometry_only("m", 1024, [256, 256]);
        let p = sam.decoder_prompt(
            &emb,
            &[(320.0, 120.0, 1.0)],
            None,
            None,
            MaskOutput::Multimask,
        );
        assert_eq!(p.labels, [1.0, -1.0]);
        assert_eq!(p.coords, [[512.0, 192.0], [0.0, 0.0]]);
    }
}
