//! Region features of a candidate mask: colour statistics of the pixels under it and
//! descriptors of its shape, position and size. The `minilm-region` tower maps this vector
//! into the text model's sentence space.
//!
//! This is the same computation as `region_features` in tools/text_data.py (the tower was
//! trained on the Python values): same order, same formulas, sums in f64. The parity test
//! (tests/text.rs) compares the two on fixture masks.

use image::RgbImage;

use crate::core::masks::BinaryMask;

/// Length of the feature vector.
pub const N_FEATURES: usize = 67;

/// Angular sectors of the radial profile and the DFT harmonics kept from it
/// (`RADIAL_BINS` / `RADIAL_HARMONICS` in tools/text_data.py).
const RADIAL_BINS: usize = 32;
const RADIAL_HARMONICS: usize = 8;

/// Region features of `mask` over `rgb` (same size). An empty mask gives zeros.
pub fn region_features(rgb: &RgbImage, mask: &BinaryMask) -> [f32; N_FEATURES] {
    let mut f = [0f64; N_FEATURES];
    let (w, h) = (mask.width as usize, mask.height as usize);
    let data = &mask.data;
    let on = |x: usize, y: usize| data[y * w + x] != 0;
    // Bounding box (exclusive maxima).
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0usize, 0usize);
    for y in 0..h {
        let row = &data[y * w..(y + 1) * w];
        if let Some(first) = row.iter().position(|&v| v != 0) {
            let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
            x0 = x0.min(first);
            x1 = x1.max(last + 1);
            y0 = y0.min(y);
            y1 = y + 1;
        }
    }
    if x0 == usize::MAX {
        return [0.0; N_FEATURES];
    }
    let (bw, bh) = (x1 - x0, y1 - y0);

    // Pass 1: colour sums, histogram, first moments.
    let pixels = rgb.as_raw();
    let mut area = 0usize;
    let (mut sum, mut sq) = ([0f64; 3], [0f64; 3]);
    let (mut sat, mut val, mut chroma, mut hx, mut hy) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let mut hist = [0usize; 27];
    let (mut sx, mut sy) = (0f64, 0f64);
    let half_sqrt3 = 3f64.sqrt() / 2.0;
    for y in y0..y1 {
        for x in x0..x1 {
            if !on(x, y) {
                continue;
            }
            area += 1;
            sx += x as f64;
            sy += y as f64;
            let p = &pixels[(y * w + x) * 3..(y * w + x) * 3 + 3];
            let c = [
                p[0] as f64 / 255.0,
                p[1] as f64 / 255.0,
                p[2] as f64 / 255.0,
            ];
            for k in 0..3 {
                sum[k] += c[k];
                sq[k] += c[k] * c[k];
            }
            let mx = c[0].max(c[1]).max(c[2]);
            let mn = c[0].min(c[1]).min(c[2]);
            let ch = mx - mn;
            sat += if mx > 0.0 { ch / mx } else { 0.0 };
            val += mx;
            chroma += ch;
            let ha = c[0] - 0.5 * (c[1] + c[2]);
            let hb = half_sqrt3 * (c[1] - c[2]);
            let hn = (ha * ha + hb * hb).sqrt();
            if hn > 0.02 {
                hx += ha / hn;
                hy += hb / hn;
            }
            let q = |v: u8| ((v as usize * 3) / 256).min(2);
            hist[q(p[0]) * 9 + q(p[1]) * 3 + q(p[2])] += 1;
        }
    }
    let a = area as f64;
    for k in 0..3 {
        let mean = sum[k] / a;
        f[k] = mean;
        f[3 + k] = (sq[k] / a - mean * mean).max(0.0).sqrt();
    }
    f[6] = sat / a;
    f[7] = val / a;
    f[8] = chroma / a;
    f[9] = hx / a;
    f[10] = hy / a;
    for (i, n) in hist.iter().enumerate() {
        f[11 + i] = *n as f64 / a;
    }

    // Pass 2: central moments, perimeter, hull points.
    let (cx, cy) = (sx / a, sy / a);
    let (mut mu20, mut mu02, mut mu11, mut mu30, mut mu03, mut mu21, mut mu12) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    let mut perim = 0usize;
    let mut hull_pts: Vec<(i64, i64)> = Vec::with_capacity(bh * 4);
    let mut rmax = [0f64; RADIAL_BINS];
    let sector = RADIAL_BINS as f64 / (2.0 * std::f64::consts::PI);
    for y in y0..y1 {
        let mut first = None;
        let mut last = 0usize;
        for x in x0..x1 {
            if !on(x, y) {
                continue;
            }
            if first.is_none() {
                first = Some(x);
            }
            last = x;
            let dx = x as f64 - cx;
            let dy = y as f64 - cy;
            mu20 += dx * dx;
            mu02 += dy * dy;
            mu11 += dx * dy;
            mu30 += dx * dx * dx;
            mu03 += dy * dy * dy;
            mu21 += dx * dx * dy;
            mu12 += dx * dy * dy;
            let bin =
                (((dy.atan2(dx) + std::f64::consts::PI) * sector) as usize).min(RADIAL_BINS - 1);
            rmax[bin] = rmax[bin].max((dx * dx + dy * dy).sqrt());
            let inside = x > x0
                && x + 1 < x1
                && y > y0
                && y + 1 < y1
                && on(x - 1, y)
                && on(x + 1, y)
                && on(x, y - 1)
                && on(x, y + 1);
            if !inside {
                perim += 1;
            }
        }
        if let Some(fx) = first {
            let (l, r, yy) = (fx as i64, last as i64 + 1, y as i64);
            hull_pts.extend([(l, yy), (l, yy + 1), (r, yy), (r, yy + 1)]);
        }
    }
    let (c20, c02, c11) = (mu20 / a, mu02 / a, mu11 / a);
    let tr = c20 + c02;
    let disc = ((c20 - c02) * (c20 - c02) + 4.0 * c11 * c11)
        .max(0.0)
        .sqrt();
    let l1 = (tr + disc) / 2.0 + 1.0 / 12.0;
    let l2 = ((tr - disc) / 2.0).max(0.0) + 1.0 / 12.0;
    let holes = count_holes(data, w, x0, y0, bw, bh);
    let hull = hull_area(hull_pts);
    let eta = |mu: f64, order: f64| mu / a.powf(1.0 + order / 2.0);
    let (e20, e02, e11) = (eta(mu20, 2.0), eta(mu02, 2.0), eta(mu11, 2.0));
    let (e30, e03, e21, e12) = (
        eta(mu30, 3.0),
        eta(mu03, 3.0),
        eta(mu21, 3.0),
        eta(mu12, 3.0),
    );
    let hu1 = e20 + e02;
    let hu2 = (e20 - e02).powi(2) + 4.0 * e11 * e11;
    let hu3 = (e30 - 3.0 * e12).powi(2) + (3.0 * e21 - e03).powi(2);
    let hu4 = (e30 + e12).powi(2) + (e21 + e03).powi(2);

    let (wf, hf) = (w as f64, h as f64);
    f[38] = a / (wf * hf);
    f[39] = (a / (wf * hf)).sqrt();
    f[40] = x0 as f64 / wf;
    f[41] = y0 as f64 / hf;
    f[42] = x1 as f64 / wf;
    f[43] = y1 as f64 / hf;
    f[44] = (bw as f64 / bh as f64).ln();
    f[45] = a / (bw as f64 * bh as f64);
    f[46] = (cx + 0.5) / wf;
    f[47] = (cy + 0.5) / hf;
    f[48] = (l2 / l1).sqrt();
    f[49] = a / (4.0 * std::f64::consts::PI * (l1 * l2).sqrt());
    f[50] = perim as f64 / a.sqrt();
    f[51] = holes as f64 / (a + holes as f64);
    f[52] = if hull > 0.0 { a / hull } else { 1.0 };
    f[53] = (hu1 + 1e-9).ln();
    f[54] = (hu2 + 1e-9).ln();
    f[55] = (hu3 + 1e-9).ln();
    f[56] = (hu4 + 1e-9).ln();
    radial_features(&rmax, a, &mut f[57..]);
    let mut out = [0f32; N_FEATURES];
    for (o, v) in out.iter_mut().zip(f) {
        *o = v as f32;
    }
    out
}

/// DFT magnitudes of the radial profile (the farthest mask pixel per angular sector,
/// over its mean), its coefficient of variation and the mask's fill of the profile's
/// disc. The magnitudes do not change when the object rotates and name the shape: a
/// five-pointed star peaks at harmonic 5, a triangle at 3, rectangles at 2 and 4.
fn radial_features(rmax: &[f64; RADIAL_BINS], area: f64, out: &mut [f64]) {
    let n = RADIAL_BINS as f64;
    let m = rmax.iter().sum::<f64>() / n;
    if m <= 0.0 {
        return;
    }
    let r: Vec<f64> = rmax.iter().map(|v| v / m).collect();
    for k in 1..=RADIAL_HARMONICS {
        let (mut re, mut im) = (0f64, 0f64);
        for (j, v) in r.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * k as f64 * j as f64 / n;
            re += v * ph.cos();
            im += v * ph.sin();
        }
        out[k - 1] = re.hypot(im) / n;
    }
    let rm = r.iter().sum::<f64>() / n;
    out[RADIAL_HARMONICS] = (r.iter().map(|v| (v - rm) * (v - rm)).sum::<f64>() / n).sqrt();
    let r2 = rmax.iter().map(|v| v * v).sum::<f64>() / n;
    out[RADIAL_HARMONICS + 1] = area / (std::f64::consts::PI * r2 + 1.0);
}

/// Background pixels of the bbox that are not 4-connected to its outside (holes).
fn count_holes(data: &[u8], w: usize, x0: usize, y0: usize, bw: usize, bh: usize) -> usize {
    // Padded grid: 1 = wall (mask) or reached from outside.
    let (pw, ph) = (bw + 2, bh + 2);
    let mut seen = vec![false; pw * ph];
    for y in 0..bh {
        for x in 0..bw {
            seen[(y + 1) * pw + x + 1] = data[(y0 + y) * w + x0 + x] != 0;
        }
    }
    let mut stack = vec![0usize];
    seen[0] = true;
    while let Some(i) = stack.pop() {
        let (x, y) = (i % pw, i / pw);
        let mut push = |j: usize| {
            if !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        };
        if x > 0 {
            push(i - 1);
        }
        if x + 1 < pw {
            push(i + 1);
        }
        if y > 0 {
            push(i - pw);
        }
        if y + 1 < ph {
            push(i + pw);
        }
    }
    seen.iter().filter(|s| !**s).count()
}

/// Area of the convex hull of integer points (monotone chain + shoelace; exact).
fn hull_area(mut pts: Vec<(i64, i64)>) -> f64 {
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        return 0.0;
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(pts.len() * 2);
    for &p in &pts {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            hull.pop();
        }
        hull.push(p);
    }
    let lower_len = hull.len() + 1;
    for &p in pts.iter().rev().skip(1) {
        while hull.len() >= lower_len && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            hull.pop();
        }
        hull.push(p);
    }
    hull.pop();
    let mut s: i64 = 0;
    for i in 0..hull.len() {
        let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
        s += a.0 * b.1 - b.0 * a.1;
    }
    s.abs() as f64 / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_of_a_square_and_a_triangle() {
        assert_eq!(hull_area(vec![(0, 0), (2, 0), (2, 2), (0, 2), (1, 1)]), 4.0);
        assert_eq!(hull_area(vec![(0, 0), (4, 0), (0, 3)]), 6.0);
    }

    #[test]
    fn a_ring_has_a_hole() {
        // 3x3 ring: the centre is the hole.
        let data = vec![1, 1, 1, 1, 0, 1, 1, 1, 1];
        assert_eq!(count_holes(&data, 3, 0, 0, 3, 3), 1);
        let data = vec![1, 1, 1, 1, 0, 0, 1, 1, 1];
        assert_eq!(count_holes(&data, 3, 0, 0, 3, 3), 0);
    }
}
