//! PyTorch's antialiased bilinear resize of float planes
//! (`F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)`), which
//! SAM 2's preprocessing runs through torchvision's `Resize` on the image scaled to 0-1.
//!
//! Like PyTorch's CPU kernel it is separable: the width is resampled first, then the
//! height, each pass only when that side changes size, with a float32 intermediate. Each
//! output sample is a normalized triangle-filter sum over `center ± support` input samples,
//! where `center = scale * (i + 0.5)`, `scale = in / out` and the support grows with the
//! downscale factor (so downscaling antialiases). The weight arithmetic follows the kernel's
//! C++ types (float, with the `+ 0.5` terms in double), so results agree with PyTorch to
//! float rounding: its compiled kernels may fuse multiply-adds that are separate here.

/// The weights of one axis: for output sample `i`, input samples `start[i]..start[i] +
/// len[i]` with weights `weights[i * taps..][..len[i]]`.
struct AxisWeights {
    start: Vec<usize>,
    len: Vec<usize>,
    taps: usize,
    weights: Vec<f32>,
}

fn triangle(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        (1.0f64 - x as f64) as f32
    } else {
        0.0
    }
}

fn axis_weights(in_size: usize, out_size: usize) -> AxisWeights {
    let scale = in_size as f32 / out_size as f32;
    let support: f32 = if scale >= 1.0 { scale } else { 1.0 };
    let taps = (support.ceil() as usize) * 2 + 1;
    let invscale: f32 = if scale >= 1.0 {
        (1.0f64 / scale as f64) as f32
    } else {
        1.0
    };
    let mut w = AxisWeights {
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        taps,
        weights: vec![0.0; out_size * taps],
    };
    for i in 0..out_size {
        let center = (scale as f64 * (i as f64 + 0.5)) as f32;
        let xmin = (((center - support) as f64 + 0.5) as i64).max(0);
        let xmax = (((center + support) as f64 + 0.5) as i64).min(in_size as i64);
        let xsize = (xmax - xmin).clamp(0, taps as i64) as usize;
        let row = &mut w.weights[i * taps..(i + 1) * taps];
        let mut total = 0.0f32;
        for (j, slot) in row.iter_mut().enumerate().take(xsize) {
            let arg = (((j as i64 + xmin) as f32 - center) as f64 + 0.5) * invscale as f64;
            let v = triangle(arg as f32);
            *slot = v;
            total += v;
        }
        if total != 0.0 {
            row[..xsize].iter_mut().for_each(|v| *v /= total);
        }
        w.start.push(xmin as usize);
        w.len.push(xsize);
    }
    w
}

/// Resizes `planes` planes of `width x height` floats (plane-major, row-major) to
/// `new_width x new_height`, as PyTorch's antialiased bilinear interpolation does.
///
/// # Panics
///
/// Panics if `src.len() != planes * width * height` or a size is zero.
pub fn resize_planes_aa(
    src: &[f32],
    planes: usize,
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
) -> Vec<f32> {
    assert!(width > 0 && height > 0 && new_width > 0 && new_height > 0);
    assert_eq!(
        src.len(),
        planes * width * height,
        "plane sizes do not match"
    );
    let horizontal;
    let (mid, mid_width): (&[f32], usize) = if new_width == width {
        (src, width)
    } else {
        let w = axis_weights(width, new_width);
        let mut out = vec![0f32; planes * height * new_width];
        for (src_row, dst_row) in src.chunks_exact(width).zip(out.chunks_exact_mut(new_width)) {
            for (x, d) in dst_row.iter_mut().enumerate() {
                let taps = &w.weights[x * w.taps..][..w.len[x]];
                let s = &src_row[w.start[x]..][..w.len[x]];
                let mut acc = 0f32;
                for (a, b) in s.iter().zip(taps) {
                    acc += a * b;
                }
                *d = acc;
            }
        }
        horizontal = out;
        (&horizontal, new_width)
    };
    if new_height == height {
        return mid.to_vec();
    }
    let w = axis_weights(height, new_height);
    let mut out = vec![0f32; planes * new_height * mid_width];
    for (src_plane, dst_plane) in mid
        .chunks_exact(height * mid_width)
        .zip(out.chunks_exact_mut(new_height * mid_width))
    {
        for (y, dst_row) in dst_plane.chunks_exact_mut(mid_width).enumerate() {
            let taps = &w.weights[y * w.taps..][..w.len[y]];
            for (k, wt) in taps.iter().enumerate() {
                let src_row = &src_plane[(w.start[y] + k) * mid_width..][..mid_width];
                if k == 0 {
                    for (d, s) in dst_row.iter_mut().zip(src_row) {
                        *d = s * wt;
                    }
                } else {
                    for (d, s) in dst_row.iter_mut().zip(src_row) {
                        *d += s * wt;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_planes_stay_constant() {
        for (w, h, nw, nh) in [(7, 5, 16, 16), (100, 30, 16, 16), (3, 1000, 20, 9)] {
            let src = vec![0.25f32; 2 * w * h];
            let out = resize_planes_aa(&src, 2, w, h, nw, nh);
            assert_eq!(out.len(), 2 * nw * nh);
            assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6), "{w}x{h}");
        }
    }

    #[test]
    fn same_size_is_a_copy_and_halving_averages_pairs() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_planes_aa(&src, 1, 4, 3, 4, 3), src);
        // Downscaling by 2 with support 2: each output averages its two source samples
        // with weights 1/4, 3/4, 3/4, 1/4 (normalized; clipped at the borders).
        let row = [0.0f32, 4.0, 8.0, 12.0];
        let out = resize_planes_aa(&row, 1, 4, 1, 2, 1);
        let w = [1.0f32 / 7.0, 3.0 / 7.0, 3.0 / 7.0];
        assert!((out[0] - (row[0] * 3.0 / 7.0 + row[1] * 3.0 / 7.0 + row[2] / 7.0)).abs() < 1e-5);
        assert!((out[1] - (row[1] * w[0] + row[2] * w[1] + row[3] * w[2])).abs() < 1e-5);
    }
}
