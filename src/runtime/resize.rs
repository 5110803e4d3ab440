//! Image and mask resampling for pre- and post-processing.
//!
//! Two families live here:
//! - [`resize_rgb8_bilinear`] reproduces Pillow's `Image.resize(..., BILINEAR)` bit for bit,
//!   because SAM's reference preprocessing resizes with Pillow, and an image that differs by
//!   even a few rounding steps gives embeddings (and so masks) that no longer match the
//!   reference implementation exactly.
//! - [`interpolate_bilinear_f32`] and [`upscale_low_res_logits`] reproduce PyTorch's
//!   `F.interpolate(mode="bilinear", align_corners=False)`, used by SAM's `postprocess_masks`.

/// Fixed-point precision of Pillow's 8-bit resampler: leaves 8 bits for the pixel value and
/// 2 bits of headroom for accumulation overshoot in an `i32`.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-sample convolution windows along one axis, in Pillow's fixed-point format.
struct Coeffs {
    /// Maximum window length; `weights` holds `ksize` entries per output sample.
    ksize: usize,
    /// `(first input index, window length)` per output sample.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `ksize` per output sample (unused tail entries are zero).
    weights: Vec<i32>,
}

impl Coeffs {
    #[inline]
    fn window(&self, out_index: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[out_index];
        let base = out_index * self.ksize;
        (start, &self.weights[base..base + len])
    }
}

/// Half-width of Pillow's bilinear ("triangle") filter at scale 1.
const TRIANGLE_SUPPORT: f64 = 1.0;

/// Pillow's bilinear ("triangle") filter.
#[inline]
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Builds the coefficient table for resampling `in_size` samples to `out_size`.
///
/// Every floating-point operation follows Pillow's `precompute_coeffs` in the same order and
/// precision (`f64`), since a one-ulp difference in a weight can flip a rounded output byte.
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    // Downscaling widens the filter so every input sample contributes (antialiasing).
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = TRIANGLE_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;

    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut window = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // `as i64` truncates toward zero exactly like Pillow's C `(int)` cast.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let len = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let mut total = 0.0;
        for (x, w) in window[..len].iter_mut().enumerate() {
            *w = triangle(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
            total += *w;
        }
        let out = &mut weights[xx * ksize..xx * ksize + len];
        for (dst, &w) in out.iter_mut().zip(&window[..len]) {
            let w = if total != 0.0 { w / total } else { w };
            // Round half away from zero, as Pillow's `normalize_coeffs_8bpc` does.
            *dst = if w < 0.0 {
                (-0.5 + w * (1u32 << PRECISION_BITS) as f64) as i32
            } else {
                (0.5 + w * (1u32 << PRECISION_BITS) as f64) as i32
            };
        }
        bounds.push((xmin as usize, len));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// Converts a fixed-point accumulator back to a byte, saturating like Pillow's `clip8`.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding bias added to every accumulator before the final shift.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Which Pillow release's choice of pass order to reproduce.
///
/// Both passes round to 8 bits, so when both axes change, running them in the other order
/// changes some output bytes by one. Pillow has changed the rule twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassOrder {
    /// Pillow 13 and later: vertical first when the height shrinks by more than twice as many
    /// pixels as the width does (`new_h < h && h - new_h > 2 * (w - new_w)`), so in practice
    /// when downscaling images more than twice as tall as they are wide.
    #[default]
    Pillow13,
    /// Pillow 12.2 and 12.3: vertical first only for images more than 100 times taller than
    /// wide whose height shrinks (`h > 100 * w && new_h < h`).
    Pillow12_2,
    /// Pillow 3.4 to 12.1: always horizontal first.
    HorizontalFirst,
}

impl PassOrder {
    fn vertical_first(self, w: usize, h: usize, nw: usize, nh: usize) -> bool {
        let (w, h, nw, nh) = (w as i64, h as i64, nw as i64, nh as i64);
        match self {
            PassOrder::Pillow13 => nh < h && h - nh > 2 * (w - nw),
            PassOrder::Pillow12_2 => nh < h && h > 100 * w,
            PassOrder::HorizontalFirst => false,
        }
    }
}

/// Resizes an interleaved RGB8 image with bilinear filtering, bit-exact with Pillow's
/// `Image.resize((new_width, new_height), Image.BILINEAR)` on an `"RGB"` image (Pillow 13 and
/// later; see [`resize_rgb8_bilinear_with_order`] for older releases).
///
/// Like Pillow, this is a separable convolution with a triangle filter whose support grows
/// with the downscale factor (so downscaling antialiases), with each of the two passes rounding
/// to 8 bits. An axis whose size does not change is not resampled at all.
///
/// Returns `new_width * new_height * 3` bytes. A zero-sized output yields an empty vector and a
/// zero-sized input yields an all-black output.
///
/// # Panics
///
/// Panics if `src.len() != width * height * 3`.
pub fn resize_rgb8_bilinear(
    src: &[u8],
    width: u32,
    height: u32,
    new_width: u32,
    new_height: u32,
) -> Vec<u8> {
    resize_rgb8_bilinear_with_order(
        src,
        width,
        height,
        new_width,
        new_height,
        PassOrder::Pillow13,
    )
}

/// [`resize_rgb8_bilinear`] with an explicit choice of which Pillow release to match.
///
/// The releases differ only when both axes change and the height shrinks; see [`PassOrder`].
///
/// # Panics
///
/// Panics if `src.len() != width * height * 3`.
pub fn resize_rgb8_bilinear_with_order(
    src: &[u8],
    width: u32,
    height: u32,
    new_width: u32,
    new_height: u32,
    order: PassOrder,
) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let (nw, nh) = (new_width as usize, new_height as usize);
    assert_eq!(
        src.len(),
        w * h * 3,
        "RGB buffer length does not match {width}x{height}"
    );
    if nw == 0 || nh == 0 {
        return Vec::new();
    }
    if w == 0 || h == 0 {
        return vec![0; nw * nh * 3];
    }
    if nw == w && nh == h {
        return src.to_vec();
    }

    let horizontal = (nw != w).then(|| precompute_coeffs(w, nw));
    let vertical = (nh != h).then(|| precompute_coeffs(h, nh));
    let (horizontal, vertical) = match (horizontal, vertical) {
        (Some(c), None) => {
            let mut out = vec![0u8; nh * nw * 3];
            resample_rows_horizontal(src, w, 0..h, &c, nw, &mut out);
            return out;
        }
        (None, Some(c)) => {
            let mut out = vec![0u8; nh * nw * 3];
            resample_vertical(src, w, 0, &c, nh, &mut out);
            return out;
        }
        (Some(hc), Some(vc)) => (hc, vc),
        (None, None) => unreachable!("unchanged size returned above"),
    };

    let vertical_first = order.vertical_first(w, h, nw, nh);
    let mut out = vec![0u8; nw * nh * 3];
    if vertical_first {
        let mut temp = vec![0u8; nh * w * 3];
        resample_vertical(src, w, 0, &vertical, nh, &mut temp);
        resample_rows_horizontal(&temp, w, 0..nh, &horizontal, nw, &mut out);
    } else {
        // Only the input rows that the vertical pass reads need horizontal resampling.
        let (first, _) = vertical.bounds[0];
        let (last_start, last_len) = vertical.bounds[nh - 1];
        let rows = first..last_start + last_len;
        let mut temp = vec![0u8; rows.len() * nw * 3];
        resample_rows_horizontal(src, w, rows, &horizontal, nw, &mut temp);
        resample_vertical(&temp, nw, first, &vertical, nh, &mut out);
    }
    out
}

/// Horizontal pass over `rows` of `src` (RGB8, `width` pixels per row) into `out`
/// (`out_width` pixels per row, one output row per input row of the range).
fn resample_rows_horizontal(
    src: &[u8],
    width: usize,
    rows: std::ops::Range<usize>,
    coeffs: &Coeffs,
    out_width: usize,
    out: &mut [u8],
) {
    let in_stride = width * 3;
    let out_stride = out_width * 3;
    // Each 64-bit multiply-add serves two channels, one per 32-bit half: triangle weights are
    // non-negative and sum to about 2^22, so each half stays below 2^31 and never carries into
    // the other. Taking rows in pairs lets the two blue channels share a word too, so two
    // pixels cost three multiplies instead of six.
    const PAIR_HALF: u64 = (HALF as u64) << 32 | HALF as u64;
    let mut y = rows.start;
    let mut out_rows = out.chunks_exact_mut(out_stride);
    while y + 1 < rows.end {
        let (Some(out0), Some(out1)) = (out_rows.next(), out_rows.next()) else {
            break;
        };
        let row0 = &src[y * in_stride..(y + 1) * in_stride];
        let row1 = &src[(y + 1) * in_stride..(y + 2) * in_stride];
        for (xx, (px0, px1)) in out0
            .chunks_exact_mut(3)
            .zip(out1.chunks_exact_mut(3))
            .enumerate()
        {
            let (start, k) = coeffs.window(xx);
            let taps = start * 3..(start + k.len()) * 3;
            let (mut rg0, mut rg1, mut bb) = (PAIR_HALF, PAIR_HALF, PAIR_HALF);
            for ((p0, p1), &kw) in row0[taps.clone()]
                .chunks_exact(3)
                .zip(row1[taps].chunks_exact(3))
                .zip(k)
            {
                let kw = kw as u64;
                rg0 += (p0[0] as u64 | (p0[1] as u64) << 32) * kw;
                rg1 += (p1[0] as u64 | (p1[1] as u64) << 32) * kw;
                bb += (p0[2] as u64 | (p1[2] as u64) << 32) * kw;
            }
            px0[0] = clip8(rg0 as u32 as i32);
            px0[1] = clip8((rg0 >> 32) as u32 as i32);
            px0[2] = clip8(bb as u32 as i32);
            px1[0] = clip8(rg1 as u32 as i32);
            px1[1] = clip8((rg1 >> 32) as u32 as i32);
            px1[2] = clip8((bb >> 32) as u32 as i32);
        }
        y += 2;
    }
    // An odd row left over from the pairs.
    let last = (y < rows.end).then(|| out_rows.next()).flatten();
    if let Some(out_row) = last {
        let row = &src[y * in_stride..(y + 1) * in_stride];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (start, k) = coeffs.window(xx);
            let taps = &row[start * 3..(start + k.len()) * 3];
            let (mut rg, mut b) = (PAIR_HALF, HALF as u32);
            for (p, &kw) in taps.chunks_exact(3).zip(k) {
                rg += (p[0] as u64 | (p[1] as u64) << 32) * kw as u64;
                b += p[2] as u32 * kw as u32;
            }
            px[0] = clip8(rg as u32 as i32);
            px[1] = clip8((rg >> 32) as u32 as i32);
            px[2] = clip8(b as i32);
        }
    }
}

/// Vertical pass: `src` is RGB8 with `width` pixels per row whose row 0 corresponds to input
/// row `row_offset` of the coefficient table.
fn resample_vertical(
    src: &[u8],
    width: usize,
    row_offset: usize,
    coeffs: &Coeffs,
    out_height: usize,
    out: &mut [u8],
) {
    let stride = width * 3;
    // Accumulating whole rows keeps the inner loop a straight multiply-add over contiguous
    // bytes, which the compiler vectorizes; integer sums are order-independent so this matches
    // Pillow's per-pixel loop exactly.
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate().take(out_height) {
        let (start, k) = coeffs.window(yy);
        acc.fill(HALF);
        for (i, &kw) in k.iter().enumerate() {
            let y = start + i - row_offset;
            let row = &src[y * stride..(y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * kw;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// Source sample pairs and blend weights for linear interpolation along one axis.
pub(super) struct LinearAxis {
    pub(super) i0: Vec<usize>,
    pub(super) i1: Vec<usize>,
    pub(super) w0: Vec<f32>,
    pub(super) w1: Vec<f32>,
}

/// Computes PyTorch's `align_corners=False` linear sampling positions for output samples
/// `0..count` of an `in_size -> out_size` resize.
///
/// The arithmetic is in `f32`, as PyTorch does for `float` tensors on the CPU.
pub(super) fn linear_axis(in_size: usize, out_size: usize, count: usize) -> LinearAxis {
    let mut axis = LinearAxis {
        i0: Vec::with_capacity(count),
        i1: Vec::with_capacity(count),
        w0: Vec::with_capacity(count),
        w1: Vec::with_capacity(count),
    };
    let ratio = in_size as f32 / out_size as f32;
    for i in 0..count {
        let (i0, i1, lambda) = if in_size == out_size {
            (i, i, 0.0f32)
        } else {
            let real = (ratio * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(in_size - 1);
            let lambda = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            (i0, i1, lambda)
        };
        axis.i0.push(i0);
        axis.i1.push(i1);
        axis.w0.push(1.0 - lambda);
        axis.w1.push(lambda);
    }
    axis
}

/// Bilinearly resizes a `width x height` plane to `out_width x out_height` and returns only
/// the top-left `crop_width x crop_height` window of the result.
///
/// Computing just the window is exact because each output sample depends only on its own
/// coordinates, and it saves SAM's postprocessing from materializing the padded area.
fn interpolate_window(
    src: &[f32],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
    crop_width: usize,
    crop_height: usize,
) -> Vec<f32> {
    let window = Window {
        width,
        height,
        out_width,
        out_height,
        crop_width,
        crop_height,
    };
    interpolate_window_map(src, window, |v| v)
}

/// One bilinear resize: a `width x height` plane resized to `out_width x out_height`, of
/// which only the top-left `crop_width x crop_height` window is kept (the arguments of
/// [`interpolate_window`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub width: usize,
    pub height: usize,
    pub out_width: usize,
    pub out_height: usize,
    pub crop_width: usize,
    pub crop_height: usize,
}

/// [`interpolate_window`] with `map` applied to every output sample as it is computed, so
/// that a thresholded mask never materializes the float plane.
///
/// On x86-64 CPUs with AVX2 the same code is compiled a second time with AVX2 enabled and
/// chosen at run time; only the vector width differs (no FMA contraction), so both give
/// bit-identical results.
pub(super) fn interpolate_window_map<T: Copy>(
    src: &[f32],
    window: Window,
    map: impl Fn(f32) -> T,
) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { interpolate_window_avx2(src, window, map) };
        }
    }
    interpolate_window_impl(src, window, map)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interpolate_window_avx2<T: Copy>(
    src: &[f32],
    window: Window,
    map: impl Fn(f32) -> T,
) -> Vec<T> {
    interpolate_window_impl(src, window, map)
}

#[inline(always)]
fn interpolate_window_impl<T: Copy>(src: &[f32], window: Window, map: impl Fn(f32) -> T) -> Vec<T> {
    let Window {
        width,
        height,
        out_width,
        out_height,
        crop_width,
        crop_height,
    } = window;
    debug_assert!(crop_width <= out_width && crop_height <= out_height);
    if crop_width == 0 || crop_height == 0 {
        return Vec::new();
    }
    if width == 0 || height == 0 {
        return vec![map(0.0); crop_width * crop_height];
    }
    assert_eq!(src.len(), width * height, "plane length does not match");
    let xs = linear_axis(width, out_width, crop_width);
    let ys = linear_axis(height, out_height, crop_height);
    // Every index is below `width` (see linear_axis); checked once here so the loops below
    // need no bounds checks and can vectorize.
    assert!(xs.i1.iter().all(|&i| i < width) && xs.i0.iter().all(|&i| i < width));

    // Horizontal pass over only the source rows the vertical pass reads (a contiguous range,
    // since the row indices are monotonic). Outputs are written straight into the vectors'
    // capacity: zero-filling them first would cost as much as the pass.
    let row_first = ys.i0[0];
    let row_last = ys.i1[crop_height - 1] + 1;
    let (xi0, xi1) = (&xs.i0[..crop_width], &xs.i1[..crop_width]);
    let (xw0, xw1) = (&xs.w0[..crop_width], &xs.w1[..crop_width]);
    let mut temp: Vec<f32> = Vec::with_capacity((row_last - row_first) * crop_width);
    let spare = &mut temp.spare_capacity_mut()[..(row_last - row_first) * crop_width];
    for (y, dst) in (row_first..row_last).zip(spare.chunks_exact_mut(crop_width)) {
        let row = &src[y * width..(y + 1) * width];
        for x in 0..crop_width {
            // SAFETY: indices are below `width == row.len()` (asserted above).
            let (a, b) = unsafe { (*row.get_unchecked(xi0[x]), *row.get_unchecked(xi1[x])) };
            dst[x].write(xw0[x] * a + xw1[x] * b);
        }
    }
    // SAFETY: every element of the capacity was written by the loop above.
    unsafe { temp.set_len((row_last - row_first) * crop_width) };

    let mut out: Vec<T> = Vec::with_capacity(crop_width * crop_height);
    let spare = &mut out.spare_capacity_mut()[..crop_width * crop_height];
    for (y, dst) in spare.chunks_exact_mut(crop_width).enumerate() {
        let a = &temp[(ys.i0[y] - row_first) * crop_width..][..crop_width];
        let b = &temp[(ys.i1[y] - row_first) * crop_width..][..crop_width];
        let (w0, w1) = (ys.w0[y], ys.w1[y]);
        for x in 0..crop_width {
            dst[x].write(map(w0 * a[x] + w1 * b[x]));
        }
    }
    // SAFETY: every element of the capacity was written by the loop above.
    unsafe { out.set_len(crop_width * crop_height) };
    out
}

/// Resizes a single-channel row-major `f32` plane like PyTorch's
/// `F.interpolate(x, size=(new_height, new_width), mode="bilinear", align_corners=False)`
/// (without antialiasing).
///
/// Source coordinates are `(dst + 0.5) * in / out - 0.5`, clamped at 0, and the upper
/// neighbour is clamped at the last sample, all in `f32` like PyTorch's CPU kernel. Results
/// match PyTorch up to float rounding: PyTorch's compiled kernel sometimes fuses the
/// coordinate computation into an FMA, which moves a blend weight by one ulp of the source
/// coordinate (about `1e-5` relative for sizes in the hundreds), so the output can differ by
/// that fraction of the difference between neighbouring samples.
///
/// # Panics
///
/// Panics if `src.len() != width * height`.
pub fn interpolate_bilinear_f32(
    src: &[f32],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        width * height,
        "plane length does not match {width}x{height}"
    );
    interpolate_window(
        src, width, height, new_width, new_height, new_width, new_height,
    )
}

/// SAM's `postprocess_masks` for one low-resolution logit plane.
///
/// Upscales the `lw x lh` decoder output to the `input_size x input_size` encoder frame, drops
/// the padding by keeping the top-left `resized_w x resized_h` region (the resized image before
/// padding), and resizes that to the original `orig_w x orig_h` image. Both resizes are
/// [`interpolate_bilinear_f32`]. Returns `orig_w * orig_h` logits, row-major.
///
/// # Panics
///
/// Panics if `low_res.len() != lw * lh` or if the resized region does not fit in
/// `input_size x input_size`.
#[allow(clippy::too_many_arguments)]
pub fn upscale_low_res_logits(
    low_res: &[f32],
    lw: usize,
    lh: usize,
    input_size: usize,
    resized_w: usize,
    resized_h: usize,
    orig_w: usize,
    orig_h: usize,
) -> Vec<f32> {
    let geometry = [lw, lh, input_size, resized_w, resized_h, orig_w, orig_h];
    upscale_low_res_map(low_res, geometry, |v| v)
}

/// SAM's `postprocess_masks` with `map` applied to each final sample as it is computed, so
/// that a thresholded mask (`|v| (v > t) as u8`) never materializes the float plane; equal to
/// mapping the output of [`upscale_low_res_logits`] sample by sample. `geometry` is
/// `[lw, lh, input_size, resized_w, resized_h, orig_w, orig_h]` as there.
pub(super) fn upscale_low_res_map<T: Copy>(
    low_res: &[f32],
    geometry: [usize; 7],
    map: impl Fn(f32) -> T,
) -> Vec<T> {
    let [lw, lh, input_size, resized_w, resized_h, orig_w, orig_h] = geometry;
    assert_eq!(
        low_res.len(),
        lw * lh,
        "logit plane length does not match {lw}x{lh}"
    );
    assert!(
        resized_w <= input_size && resized_h <= input_size,
        "resized size {resized_w}x{resized_h} exceeds input size {input_size}"
    );
    let cropped = interpolate_window(
        low_res, lw, lh, input_size, input_size, resized_w, resized_h,
    );
    let window = Window {
        width: resized_w,
        height: resized_h,
        out_width: orig_w,
        out_height: orig_h,
        crop_width: orig_w,
        crop_height: orig_h,
    };
    interpolate_window_map(&cropped, window, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(w: usize, h: usize) -> Vec<u8> {
        (0..w * h * 3)
            .map(|i| ((i * 37 + i / 7 * 11) % 256) as u8)
            .collect()
    }

    #[test]
    fn same_size_returns_input() {
        let src = pattern(7, 5);
        assert_eq!(resize_rgb8_bilinear(&src, 7, 5, 7, 5), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        for &(w, h, nw, nh) in &[
            (10, 10, 3, 3),
            (3, 4, 17, 9),
            (100, 1, 7, 5),
            (1, 1, 5, 5),
            (13, 7, 13, 2),
        ] {
            let src: Vec<u8> = [200u8, 17, 255].repeat(w * h);
            let out = resize_rgb8_bilinear(&src, w as u32, h as u32, nw as u32, nh as u32);
            assert_eq!(out, [200u8, 17, 255].repeat(nw * nh), "{w}x{h}->{nw}x{nh}");
        }
    }

    #[test]
    fn unchanged_axis_is_not_resampled() {
        // With only the width changing, each output row depends only on its own input row.
        let src = pattern(9, 4);
        let out = resize_rgb8_bilinear(&src, 9, 4, 5, 4);
        for y in 0..4 {
            let row = &src[y * 27..(y + 1) * 27];
            assert_eq!(
                &out[y * 15..(y + 1) * 15],
                &resize_rgb8_bilinear(row, 9, 1, 5, 1)[..]
            );
        }
    }

    #[test]
    fn zero_sizes() {
        assert!(resize_rgb8_bilinear(&pattern(3, 3), 3, 3, 0, 4).is_empty());
        assert_eq!(resize_rgb8_bilinear(&[], 0, 3, 2, 2), vec![0; 12]);
    }

    #[test]
    fn halving_averages_pairs() {
        // The widened triangle filter gives both input pixels equal weight here.
        let src = [0u8, 0, 0, 100, 100, 100];
        assert_eq!(resize_rgb8_bilinear(&src, 2, 1, 1, 1), vec![50, 50, 50]);
    }

    /// `(width, height, new_width, new_height)`.
    type Size4 = (u32, u32, u32, u32);

    #[test]
    fn matches_pillow_13_samples() {
        // Expected bytes from Pillow 13.0.0: `Image.fromarray(pattern(w, h)).resize((nw, nh),
        // Image.BILINEAR)` with the same `pattern` generator written in NumPy.
        #[rustfmt::skip]
        let cases: [(Size4, &[u8]); 3] = [
            // Height shrinks far more than width: Pillow 13 runs the vertical pass first.
            ((9, 40, 4, 7), &[
                104, 124, 128, 121, 129, 135, 127, 133, 128, 137, 135, 121, 134, 136, 131, 128,
                125, 125, 132, 125, 121, 118, 125, 114, 141, 115, 117, 126, 122, 125, 128, 124,
                127, 126, 132, 137, 121, 125, 128, 126, 132, 137, 128, 125, 132, 134, 123, 122,
                126, 136, 133, 124, 131, 127, 126, 125, 124, 127, 135, 126, 124, 125, 116, 135,
                134, 124, 132, 128, 123, 138, 139, 121, 127, 126, 129, 140, 120, 116, 132, 138,
                114, 125, 129, 127,
            ]),
            // Width upscaled, height downscaled a little: horizontal first.
            ((7, 5, 11, 3), &[
                18, 55, 92, 68, 105, 142, 129, 154, 191, 130, 69, 106, 121, 72, 109, 106, 143,
                180, 177, 144, 95, 180, 137, 76, 95, 122, 147, 144, 181, 158, 194, 231, 158, 84,
                121, 158, 134, 146, 118, 182, 168, 76, 90, 119, 117, 94, 138, 155, 172, 209, 189,
                116, 117, 140, 102, 97, 127, 143, 175, 161, 101, 138, 118, 61, 98, 78, 150, 187,
                224, 134, 121, 158, 115, 53, 90, 116, 131, 168, 107, 151, 148, 92, 129, 56, 93,
                130, 134, 126, 123, 138, 204, 108, 46, 136, 107, 94, 70, 107, 144,
            ]),
            ((12, 9, 5, 4), &[
                129, 146, 107, 132, 151, 105, 104, 142, 166, 92, 113, 151, 153, 103, 124, 120,
                159, 106, 100, 132, 142, 132, 114, 141, 136, 109, 112, 135, 149, 108, 116, 114,
                151, 126, 99, 126, 146, 147, 104, 119, 154, 98, 98, 130, 150, 164, 119, 115, 138,
                131, 95, 109, 147, 143, 121, 117, 142, 132, 92, 131,
            ]),
        ];
        for ((w, h, nw, nh), expected) in cases {
            let src = pattern(w as usize, h as usize);
            assert_eq!(
                resize_rgb8_bilinear(&src, w, h, nw, nh),
                expected,
                "{w}x{h}->{nw}x{nh}"
            );
        }
    }

    #[test]
    fn pass_order_composes_single_axis_resizes() {
        // A single-axis resize is exactly one pass, so each order equals the composition of
        // two single-axis resizes in that order.
        let (w, h, nw, nh) = (9, 40, 4, 7);
        let src = pattern(w as usize, h as usize);
        let vertical_then_horizontal = {
            let v = resize_rgb8_bilinear(&src, w, h, w, nh);
            resize_rgb8_bilinear(&v, w, nh, nw, nh)
        };
        let horizontal_then_vertical = {
            let t = resize_rgb8_bilinear(&src, w, h, nw, h);
            resize_rgb8_bilinear(&t, nw, h, nw, nh)
        };
        assert_ne!(vertical_then_horizontal, horizontal_then_vertical);
        assert_eq!(
            resize_rgb8_bilinear_with_order(&src, w, h, nw, nh, PassOrder::Pillow13),
            vertical_then_horizontal
        );
        assert_eq!(
            resize_rgb8_bilinear_with_order(&src, w, h, nw, nh, PassOrder::HorizontalFirst),
            horizontal_then_vertical
        );
    }

    #[test]
    fn coefficients_sum_to_one() {
        for &(i, o) in &[(10, 3), (3, 10), (4000, 1024), (1, 7), (7, 1), (1023, 1024)] {
            let c = precompute_coeffs(i, o);
            for xx in 0..o {
                let (_, k) = c.window(xx);
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}"
                );
            }
        }
    }

    #[test]
    fn interpolate_identity_and_constant() {
        let src: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 2.0).collect();
        assert_eq!(interpolate_bilinear_f32(&src, 4, 3, 4, 3), src);
        let c = vec![1.25f32; 20];
        for v in interpolate_bilinear_f32(&c, 5, 4, 13, 7) {
            assert!((v - 1.25).abs() < 1e-6);
        }
    }

    #[test]
    fn interpolate_matches_torch_formula_on_small_case() {
        // torch: F.interpolate(tensor([[[[0., 1.], [2., 3.]]]]), (4, 4), mode="bilinear")
        let out = interpolate_bilinear_f32(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let expected = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn upscale_crops_before_final_resize() {
        let low: Vec<f32> = (0..16 * 16).map(|v| (v % 17) as f32 - 8.0).collect();
        let full = interpolate_bilinear_f32(&low, 16, 16, 64, 64);
        let mut cropped = Vec::new();
        for y in 0..40 {
            cropped.extend_from_slice(&full[y * 64..y * 64 + 64]);
        }
        let expected = interpolate_bilinear_f32(&cropped, 64, 40, 100, 62);
        let got = upscale_low_res_logits(&low, 16, 16, 64, 64, 40, 100, 62);
        assert_eq!(got, expected);
    }

    #[test]
    fn thresholded_upscale_equals_thresholding_the_logits() {
        let mut low: Vec<f32> = (0..16 * 16).map(|v| ((v * 7) % 23) as f32 - 11.0).collect();
        low[5] = f32::NAN;
        let logits = upscale_low_res_logits(&low, 16, 16, 64, 64, 40, 100, 62);
        let mask = upscale_low_res_map(&low, [16, 16, 64, 64, 40, 100, 62], |v| (v > 0.0) as u8);
        let expected: Vec<u8> = logits.iter().map(|&v| (v > 0.0) as u8).collect();
        assert_eq!(mask, expected);
        assert!(mask.contains(&0) && mask.contains(&1));
    }
}
