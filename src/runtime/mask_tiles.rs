//! Thresholding upscaled mask logits at 0 without computing most of the upscaled plane.
//!
//! A mask is `upscaled logit > 0`, and the upscaled plane is one or two bilinear resizes of
//! the decoder's low-resolution logits (SAM: to the encoder frame, cropped to the resized
//! image, then to the image; SAM 2: straight to the image). Every output sample is a
//! combination of low-resolution samples with non-negative weights, at least one of them
//! about 1/2 per pass. So when every low-resolution sample that a tile of the output reads
//! is finite and above a tiny positive bound, every sample of the tile is > 0; when they are
//! all finite and <= 0, every sample is <= 0. Such tiles are filled without arithmetic; the
//! others (the tiles along the mask's edge) are computed exactly as the full resize computes
//! them, with the same weights in the same order, so the mask is bit for bit the one of
//! thresholding the full plane (`tests` below check it against
//! [`super::resize`]'s full path). A click's masks are mostly inside or outside: on a
//! 1024x768 image this computes a few percent of the samples.

use super::resize::{linear_axis, LinearAxis, Window};

/// Side of the square output tiles decided at once.
const TILE: usize = 32;

/// Below this, a positive sample could underflow to 0 through the weights (at least 1/16
/// over two resizes of two passes each): such tiles take the exact path.
const POSITIVE_FLOOR: f32 = 1e-30;

struct Axes {
    xs: LinearAxis,
    ys: LinearAxis,
}

/// A half-open rectangle of one plane: columns `x0..x1`, rows `y0..y1`.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
}

impl Rect {
    fn width(&self) -> usize {
        self.x1 - self.x0
    }

    fn height(&self) -> usize {
        self.y1 - self.y0
    }
}

/// `(low_res resized through stages) > 0` as 0/1 bytes, row-major, the last stage's crop
/// size. `stages` must chain (each one's crop size is the next one's source size).
pub(super) fn mask_above_zero(low_res: &[f32], stages: &[Window]) -> Vec<u8> {
    let first = stages[0];
    assert_eq!(
        low_res.len(),
        first.width * first.height,
        "logit plane length does not match"
    );
    let last = stages[stages.len() - 1];
    let (w, h) = (last.crop_width, last.crop_height);
    let mut out = vec![0u8; w * h];
    if w == 0 || h == 0 {
        return out;
    }
    if stages.iter().any(|s| s.width == 0 || s.height == 0) {
        // The full path maps such planes to 0.0 everywhere: not above zero.
        return out;
    }
    let axes: Vec<Axes> = stages
        .iter()
        .map(|s| Axes {
            xs: linear_axis(s.width, s.out_width, s.crop_width),
            ys: linear_axis(s.height, s.out_height, s.crop_height),
        })
        .collect();
    let mut rects = vec![
        Rect {
            x0: 0,
            x1: 0,
            y0: 0,
            y1: 0
        };
        stages.len() + 1
    ];
    let mut scratch = Vec::new();
    for ty in (0..h).step_by(TILE) {
        for tx in (0..w).step_by(TILE) {
            let tile = Rect {
                x0: tx,
                x1: (tx + TILE).min(w),
                y0: ty,
                y1: (ty + TILE).min(h),
            };
            // The rectangle each plane contributes, from the output back to the logits.
            rects[stages.len()] = tile;
            for k in (0..stages.len()).rev() {
                let r = rects[k + 1];
                let a = &axes[k];
                rects[k] = Rect {
                    x0: a.xs.i0[r.x0],
                    x1: a.xs.i1[r.x1 - 1] + 1,
                    y0: a.ys.i0[r.y0],
                    y1: a.ys.i1[r.y1 - 1] + 1,
                };
            }
            match uniform_sign(low_res, first.width, rects[0]) {
                Some(true) => fill(&mut out, w, tile, 1),
                Some(false) => {} // already 0
                None => exact_tile(
                    low_res,
                    first.width,
                    stages,
                    &axes,
                    &rects,
                    &mut out,
                    w,
                    &mut scratch,
                ),
            }
        }
    }
    out
}

/// `Some(true)`: every sample of `r` finite and above the positive floor; `Some(false)`:
/// every sample finite and <= 0; `None`: mixed (or not finite).
fn uniform_sign(plane: &[f32], width: usize, r: Rect) -> Option<bool> {
    let (mut all_pos, mut all_nonpos) = (true, true);
    for y in r.y0..r.y1 {
        for &v in &plane[y * width + r.x0..y * width + r.x1] {
            all_pos &= v > POSITIVE_FLOOR && v < f32::INFINITY;
            all_nonpos &= v <= 0.0 && v > f32::NEG_INFINITY;
        }
        if !all_pos && !all_nonpos {
            return None;
        }
    }
    Some(all_pos)
}

fn fill(out: &mut [u8], width: usize, r: Rect, v: u8) {
    for y in r.y0..r.y1 {
        out[y * width + r.x0..y * width + r.x1].fill(v);
    }
}

/// The tile's samples computed as the full resize computes them: per stage a horizontal
/// pass (`w0 * a + w1 * b` along x) over the source rows the tile reads, then a vertical
/// one (`w0 * a + w1 * b` along y), on just the rectangles the tile depends on. A stage that
/// keeps the size (weights 1 and 0 on the same sample) is `1 * a + 0 * a = a` for finite
/// values and is skipped when the rectangle is finite.
#[allow(clippy::too_many_arguments)]
fn exact_tile(
    low_res: &[f32],
    low_res_width: usize,
    stages: &[Window],
    axes: &[Axes],
    rects: &[Rect],
    out: &mut [u8],
    out_width: usize,
    scratch: &mut Vec<f32>,
) {
    // `cur` holds plane k's values on rects[k], row-major.
    let r0 = rects[0];
    let mut cur: Vec<f32> = Vec::with_capacity(r0.width() * r0.height());
    for y in r0.y0..r0.y1 {
        cur.extend_from_slice(&low_res[y * low_res_width + r0.x0..y * low_res_width + r0.x1]);
    }
    let mut next: Vec<f32> = Vec::new();
    for (k, (stage, a)) in stages.iter().zip(axes).enumerate() {
        let (src, dst) = (rects[k], rects[k + 1]);
        let same_size = stage.width == stage.out_width && stage.height == stage.out_height;
        if same_size && cur.iter().all(|v| v.is_finite()) {
            // rects[k + 1] == rects[k] here: the stage maps every sample to itself.
            continue;
        }
        let (sw, dw) = (src.width(), dst.width());
        // Horizontal pass: every source row of `src`, the destination's columns.
        let xi0: Vec<usize> = a.xs.i0[dst.x0..dst.x1]
            .iter()
            .map(|&i| i - src.x0)
            .collect();
        let xi1: Vec<usize> = a.xs.i1[dst.x0..dst.x1]
            .iter()
            .map(|&i| i - src.x0)
            .collect();
        let (xw0, xw1) = (&a.xs.w0[dst.x0..dst.x1], &a.xs.w1[dst.x0..dst.x1]);
        scratch.clear();
        scratch.reserve(src.height() * dw);
        for row in cur.chunks_exact(sw) {
            for x in 0..dw {
                scratch.push(xw0[x] * row[xi0[x]] + xw1[x] * row[xi1[x]]);
            }
        }
        // Vertical pass.
        next.clear();
        next.reserve(dst.height() * dw);
        for y in dst.y0..dst.y1 {
            let t0 = &scratch[(a.ys.i0[y] - src.y0) * dw..][..dw];
            let t1 = &scratch[(a.ys.i1[y] - src.y0) * dw..][..dw];
            let (w0, w1) = (a.ys.w0[y], a.ys.w1[y]);
            next.extend(t0.iter().zip(t1).map(|(&p, &q)| w0 * p + w1 * q));
        }
        std::mem::swap(&mut cur, &mut next);
    }
    let tile = rects[stages.len()];
    for (y, row) in (tile.y0..tile.y1).zip(cur.chunks_exact(tile.width())) {
        for (o, &v) in out[y * out_width + tile.x0..y * out_width + tile.x1]
            .iter_mut()
            .zip(row)
        {
            *o = (v > 0.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full path: resize every sample, then threshold.
    fn full(low_res: &[f32], stages: &[Window]) -> Vec<u8> {
        let mut plane = low_res.to_vec();
        for s in stages {
            plane = super::super::resize::interpolate_window_map(&plane, *s, |v| v);
        }
        plane.iter().map(|&v| (v > 0.0) as u8).collect()
    }

    /// Deterministic pseudo-random numbers in [0, 1).
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32) / (1u64 << 24) as f32
        }
    }

    /// Logit planes like a decoder's: blobs (smooth, mostly one sign), noise near zero,
    /// constants, tiny values at the positive floor, and non-finite samples.
    fn planes(lw: usize, lh: usize) -> Vec<Vec<f32>> {
        let mut r = rng(lw as u64 * 31 + lh as u64);
        let mut out = Vec::new();
        for b in 0..4 {
            let (cx, cy, rad) = (
                r() * lw as f32,
                r() * lh as f32,
                3.0 + r() * lw as f32 / 2.0,
            );
            out.push(
                (0..lw * lh)
                    .map(|i| {
                        let (x, y) = ((i % lw) as f32, (i / lw) as f32);
                        let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
                        (rad - d) * (1.0 + b as f32) + (r() - 0.5) * 0.2
                    })
                    .collect(),
            );
        }
        out.push((0..lw * lh).map(|_| r() - 0.5).collect());
        out.push(vec![3.0; lw * lh]);
        out.push(vec![-3.0; lw * lh]);
        out.push(vec![0.0; lw * lh]);
        out.push(vec![1e-31; lw * lh]);
        let mut odd: Vec<f32> = (0..lw * lh).map(|_| r() * 4.0 + 1.0).collect();
        odd[lw * lh / 2] = f32::INFINITY;
        odd[lw * lh / 3] = f32::NAN;
        odd[lw * lh / 5] = -0.0;
        out.push(odd);
        let mut neg: Vec<f32> = (0..lw * lh).map(|_| -r() * 4.0 - 1.0).collect();
        neg[lw * lh / 2] = f32::NEG_INFINITY;
        out.push(neg);
        out
    }

    fn sam_stages(
        low: usize,
        input: usize,
        rw: usize,
        rh: usize,
        w: usize,
        h: usize,
    ) -> Vec<Window> {
        vec![
            Window {
                width: low,
                height: low,
                out_width: input,
                out_height: input,
                crop_width: rw,
                crop_height: rh,
            },
            Window {
                width: rw,
                height: rh,
                out_width: w,
                out_height: h,
                crop_width: w,
                crop_height: h,
            },
        ]
    }

    #[test]
    fn tiled_masks_equal_thresholding_the_full_plane() {
        let mut cases = vec![
            // SAM: low-res 256 -> 1024 frame, cropped, -> image (down, same, up, odd sizes).
            sam_stages(256, 1024, 1024, 768, 640, 480),
            sam_stages(256, 1024, 1024, 768, 1024, 768),
            sam_stages(256, 1024, 768, 1024, 1500, 2000),
            sam_stages(128, 512, 512, 384, 641, 479),
            sam_stages(64, 256, 256, 5, 2000, 39),
            sam_stages(32, 128, 128, 128, 33, 33),
        ];
        // SAM 2: one resize straight to the image.
        for (w, h) in [(640, 480), (1024, 1024), (37, 901), (1, 1)] {
            cases.push(vec![Window {
                width: 256,
                height: 256,
                out_width: w,
                out_height: h,
                crop_width: w,
                crop_height: h,
            }]);
        }
        for stages in &cases {
            let (lw, lh) = (stages[0].width, stages[0].height);
            for (i, plane) in planes(lw, lh).iter().enumerate() {
                assert!(
                    mask_above_zero(plane, stages) == full(plane, stages),
                    "plane {i}, stages {stages:?}"
                );
            }
        }
    }
}
