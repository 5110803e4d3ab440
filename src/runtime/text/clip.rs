//! The `clip` text kind: a CLIP image encoder embeds a crop around each candidate mask, a
//! CLIP text encoder embeds the phrase, and the cosine of the two scores the candidate
//! (the SAM paper's text-prompt recipe, §7.5, with released CLIP weights instead of a
//! retrained SAM).
//!
//! Crop, as tools/export_clip.py's `crop_pixels` does it (the parity test compares them):
//! the mask's bounding box grown to a square of side `max(w, h) + 2·⌊max(w, h)·margin⌋`
//! centred on the box; pixels outside the mask or outside the image take the fill colour
//! (the encoder's mean colour, so they normalise to about zero: "greyed out" in the
//! encoder's own terms); the square is resized to `size × size` with Pillow-exact bilinear
//! filtering (antialiased when shrinking) and normalised with the encoder's mean and std.
//! CLIP's own processor resizes with bicubic filtering; bilinear is used because the
//! server already reproduces Pillow's bilinear filter bit for bit, which keeps the crop
//! testable against Python, and the difference on an object crop is small.

use std::borrow::Cow;

use anyhow::{anyhow, bail};
use image::RgbImage;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use crate::core::masks::BinaryMask;
use crate::runtime::resize::resize_rgb8_bilinear;

/// How a candidate's crop is cut and normalised (`crop` in a `clip` text manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropSpec {
    /// Side of the square the image encoder takes (`pixel_values` is `[N, 3, size, size]`).
    pub size: u32,
    /// Per-channel mean on the 0..1 scale (CLIP: 0.4815, 0.4578, 0.4082).
    pub mean: [f32; 3],
    /// Per-channel std on the 0..1 scale (CLIP: 0.2686, 0.2613, 0.2758).
    pub std: [f32; 3],
    /// Context around the mask's box, as a fraction of its longer side, on each side.
    #[serde(default = "default_margin")]
    pub margin: f64,
}

fn default_margin() -> f64 {
    0.1
}

impl CropSpec {
    /// Rejects sizes and statistics that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(8..=1024).contains(&self.size) {
            bail!("crop.size must be between 8 and 1024, got {}", self.size);
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            bail!("crop.std must be positive");
        }
        if self.mean.iter().any(|m| !(0.0..=1.0).contains(m)) {
            bail!("crop.mean must be on the 0..1 scale");
        }
        if !(0.0..=2.0).contains(&self.margin) {
            bail!("crop.margin must be between 0 and 2");
        }
        Ok(())
    }

    /// Floats in one crop tensor (`3 · size²`).
    pub fn len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Whether a crop tensor is empty (never, for a checked spec).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The normalised CHW crop of `mask` over `rgb` (same size). An empty mask gives the crop
/// of a blank (all-fill) square.
pub fn crop_pixels(rgb: &RgbImage, mask: &BinaryMask, spec: &CropSpec) -> Vec<f32> {
    let fill = spec
        .mean
        .map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8);
    let [bx, by, bw, bh] = mask.bbox_xywh();
    let square = if bw == 0 || bh == 0 {
        vec![fill; 1]
    } else {
        masked_square(rgb, mask, [bx, by, bw, bh], spec.margin, fill)
    };
    let side = (square.len() as f64).sqrt() as u32;
    let flat: Vec<u8> = square.iter().flatten().copied().collect();
    let small = resize_rgb8_bilinear(&flat, side, side, spec.size, spec.size);
    let n = spec.size as usize * spec.size as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in small.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = (px[c] as f32 / 255.0 - spec.mean[c]) / spec.std[c];
        }
    }
    out
}

/// The square around the box, mask pixels copied, everything else `fill` (row-major RGB).
fn masked_square(
    rgb: &RgbImage,
    mask: &BinaryMask,
    [bx, by, bw, bh]: [u32; 4],
    margin: f64,
    fill: [u8; 3],
) -> Vec<[u8; 3]> {
    let long = bw.max(bh) as i64;
    let side = long + 2 * (long as f64 * margin).floor() as i64;
    let sx = bx as i64 - (side - bw as i64) / 2;
    let sy = by as i64 - (side - bh as i64) / 2;
    let (w, h) = (mask.width as i64, mask.height as i64);
    let s = side as usize;
    let mut square = vec![fill; s * s];
    // Only the box can hold mask pixels; the rest of the square stays fill.
    for y in by as i64..(by + bh) as i64 {
        for x in bx as i64..(bx + bw) as i64 {
            if x < w && y < h && mask.data[(y * w + x) as usize] != 0 {
                let p = rgb.get_pixel(x as u32, y as u32).0;
                square[((y - sy) * side + (x - sx)) as usize] = p;
            }
        }
    }
    square
}

/// The CLIP image encoder: `pixel_values` float32 `[N, 3, S, S]` -> `[N, D]`.
pub struct ImageTower {
    session: Session,
    input: String,
    output: String,
    size: usize,
}

/// Crops per encoder run: bounds the activations of one run, and lets a phrase queued
/// behind an image's candidates wait for one batch, not all of them.
pub const CROP_BATCH: usize = 16;

impl ImageTower {
    /// Wraps a session; `size` is the crop side the manifest declares.
    pub fn new(session: Session, size: u32) -> anyhow::Result<Self> {
        let input = session
            .inputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| anyhow!("image encoder has no input"))?;
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| anyhow!("image encoder has no output"))?;
        Ok(ImageTower {
            session,
            input,
            output,
            size: size as usize,
        })
    }

    /// Raw (not normalised) embeddings of crops made by [`crop_pixels`].
    pub fn embed(&mut self, crops: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let per = 3 * self.size * self.size;
        let mut out = Vec::with_capacity(crops.len());
        for batch in crops.chunks(CROP_BATCH) {
            if batch.iter().any(|c| c.len() != per) {
                bail!("a crop does not hold 3x{0}x{0} values", self.size);
            }
            let flat: Vec<f32> = batch.iter().flatten().copied().collect();
            let shape = vec![batch.len(), 3, self.size, self.size];
            let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![(
                Cow::Owned(self.input.clone()),
                TensorRef::from_array_view((shape, flat.as_slice()))
                    .map_err(|e| anyhow!("{e}"))?
                    .into(),
            )];
            let res = self
                .session
                .run(inputs)
                .map_err(|e| anyhow!("image encoder run: {e}"))?;
            let (shape, v) = res[self.output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| anyhow!("image encoder output: {e}"))?;
            let d = *shape.last().unwrap_or(&0) as usize;
            if d == 0 || v.len() != d * batch.len() {
                bail!("image encoder output shape {shape:?}");
            }
            out.extend(v.chunks(d).map(|c| c.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: u32) -> CropSpec {
        CropSpec {
            size,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.5, 0.5],
            margin: 0.0,
        }
    }

    #[test]
    fn pixels_outside_the_mask_become_the_fill() {
        // A 4x4 red image, mask = the top-left 2x2 square, no margin: the crop is that square,
        // all red; with the mask cut to one pixel, the other three become fill (0 after
        // normalisation).
        let rgb = RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0]));
        let mut mask = BinaryMask::new(4, 4);
        for (x, y) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            mask.data[y * 4 + x] = 1;
        }
        let c = crop_pixels(&rgb, &mask, &spec(8));
        // Red channel is 1.0 everywhere (normalised (1 - .5) / .5), green -1.
        assert!(c[..64].iter().all(|v| (*v - 1.0).abs() < 1e-6));
        assert!(c[64..128].iter().all(|v| (*v + 1.0).abs() < 1e-6));
        mask.data = vec![0; 16];
        mask.data[0] = 1;
        let one = crop_pixels(&rgb, &mask, &spec(8));
        // A 1x1 box: the whole crop is that pixel.
        assert!(one[..64].iter().all(|v| (*v - 1.0).abs() < 1e-6));
        mask.data[1] = 1;
        mask.data[4] = 1;
        // Box 2x2 with pixel (1,1) off: the bottom-right quarter of the crop is fill.
        let three = crop_pixels(&rgb, &mask, &spec(8));
        let fill_red = (128.0 / 255.0 - 0.5) / 0.5;
        assert!((three[7 * 8 + 7] - fill_red).abs() < 1e-6);
        assert!((three[0] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_wide_mask_is_centred_in_a_square() {
        let rgb = RgbImage::from_pixel(10, 10, image::Rgb([0, 255, 0]));
        let mut mask = BinaryMask::new(10, 10);
        for x in 2..8 {
            mask.data[5 * 10 + x] = 1;
            mask.data[4 * 10 + x] = 1;
        }
        // Box 6x2 -> square 6x6 with the two mask rows in its middle (rows 2..4).
        let c = crop_pixels(&rgb, &mask, &spec(6));
        let green = |row: usize| c[36 + row * 6];
        assert!((green(2) - 1.0).abs() < 1e-6 && (green(3) - 1.0).abs() < 1e-6);
        let fill = (128.0 / 255.0 - 0.5) / 0.5;
        assert!((green(0) - fill).abs() < 1e-6 && (green(5) - fill).abs() < 1e-6);
    }
}
