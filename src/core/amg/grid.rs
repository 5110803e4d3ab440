//! Prompt grids, crop boxes and box arithmetic, bit-compatible with
//! `segment_anything.utils.amg`.

use crate::core::masks::BinaryMask;

/// Normalized `n × n` grid of `[x, y]` points with x varying fastest: the cell centres
/// `offset + k * step`, `offset = 1 / (2n)`.
///
/// The coordinates are computed the way `numpy.linspace(offset, 1 - offset, n)` does
/// (`k * step + start`, the last one set to `stop` exactly), so they carry the same bits.
pub fn build_point_grid(n_per_side: usize) -> Vec<[f64; 2]> {
    let n = n_per_side;
    if n == 0 {
        return Vec::new();
    }
    let offset = 1.0 / (2 * n) as f64;
    let start = offset;
    let stop = 1.0 - offset;
    let one_side: Vec<f64> = if n == 1 {
        vec![start]
    } else {
        let step = (stop - start) / (n - 1) as f64;
        let mut v: Vec<f64> = (0..n).map(|k| k as f64 * step + start).collect();
        v[n - 1] = stop;
        v
    };
    let mut points = Vec::with_capacity(n * n);
    for &y in &one_side {
        for &x in &one_side {
            points.push([x, y]);
        }
    }
    points
}

/// Points per side of every layer: `int(n / factor^i)` for `i` in `0..=n_layers`.
///
/// Can be 0 for deep layers; the reference then fails dividing by zero, and
/// [`super::AmgParams::resolve`] refuses such settings.
pub fn layer_points_per_side(n_per_side: usize, n_layers: i64, factor: u32) -> Vec<usize> {
    (0..=n_layers.max(0))
        .map(|i| (n_per_side as f64 / (factor as f64).powi(i as i32)) as usize)
        .collect()
}

/// [`build_point_grid`] for every crop layer, with `int(n / factor^i)` points per side in
/// layer `i`.
pub fn build_all_layer_point_grids(
    n_per_side: usize,
    n_layers: u32,
    factor: u32,
) -> Vec<Vec<[f64; 2]>> {
    layer_points_per_side(n_per_side, n_layers as i64, factor)
        .into_iter()
        .map(build_point_grid)
        .collect()
}

/// One region of the image that is encoded and prompted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// `[x0, y0, x1, y1)` in image pixels (exclusive max).
    pub xyxy: [u32; 4],
    /// 0 for the whole image, `i` for the `2^i × 2^i` crops.
    pub layer: usize,
}

impl CropBox {
    /// Width and height in pixels (0 for a degenerate box).
    pub fn size(&self) -> (u32, u32) {
        let [x0, y0, x1, y1] = self.xyxy;
        (x1.saturating_sub(x0), y1.saturating_sub(y0))
    }
}

/// The crop boxes of the reference `generate_crop_boxes`: the whole image, then for each layer
/// `i = 1..=n_layers` a grid of `2^i × 2^i` overlapping crops, listed column by column (x
/// outer, y inner), clipped to the image.
///
/// The arithmetic follows the reference step by step: `overlap = int(ratio * short_side *
/// (2 / n))`, `crop_len = ceil((overlap * (n - 1) + len) / n)`, origins `(crop_len - overlap) *
/// k`. Tiny images can yield degenerate boxes (`x1 <= x0`); they are returned as computed so
/// the caller can refuse them.
pub fn generate_crop_boxes(
    width: u32,
    height: u32,
    n_layers: u32,
    overlap_ratio: f64,
) -> Vec<CropBox> {
    let (w, h) = (width as i64, height as i64);
    let short_side = w.min(h);
    let mut boxes = vec![CropBox {
        xyxy: [0, 0, width, height],
        layer: 0,
    }];
    let crop_len = |orig_len: i64, n_crops: i64, overlap: i64| -> i64 {
        ((overlap * (n_crops - 1) + orig_len) as f64 / n_crops as f64).ceil() as i64
    };
    for i_layer in 0..n_layers {
        let n_crops = 1i64 << (i_layer + 1);
        let overlap = (overlap_ratio * short_side as f64 * (2.0 / n_crops as f64)) as i64;
        let crop_w = crop_len(w, n_crops, overlap);
        let crop_h = crop_len(h, n_crops, overlap);
        let to_u32 = |v: i64| v.clamp(0, u32::MAX as i64) as u32;
        for kx in 0..n_crops {
            let x0 = (crop_w - overlap) * kx;
            for ky in 0..n_crops {
                let y0 = (crop_h - overlap) * ky;
                boxes.push(CropBox {
                    xyxy: [
                        to_u32(x0),
                        to_u32(y0),
                        to_u32((x0 + crop_w).min(w)),
                        to_u32((y0 + crop_h).min(h)),
                    ],
                    layer: i_layer as usize + 1,
                });
            }
        }
    }
    boxes
}

/// Bounding box `[x0, y0, x1, y1]` of the foreground with INCLUSIVE max, as the reference's
/// `batched_mask_to_box`; `[0, 0, 0, 0]` for an empty mask.
pub fn mask_to_box(mask: &BinaryMask) -> [u32; 4] {
    box_of(mask.width as usize, mask.height as usize, |i| {
        mask.data[i] != 0
    })
    .unwrap_or([0; 4])
}

/// Inclusive XYXY box of the foreground `is_fg(row-major index)` of a `width × height` plane,
/// `None` when it is empty.
pub(crate) fn box_of(
    width: usize,
    height: usize,
    is_fg: impl Fn(usize) -> bool,
) -> Option<[u32; 4]> {
    let (mut x_min, mut y_min, mut x_max, mut y_max) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..height {
        let row = y * width;
        let Some(first) = (0..width).find(|&x| is_fg(row + x)) else {
            continue;
        };
        let last = (first..width)
            .rev()
            .find(|&x| is_fg(row + x))
            .unwrap_or(first);
        y_min = y_min.min(y);
        y_max = y;
        x_min = x_min.min(first);
        x_max = x_max.max(last);
    }
    (y_min != usize::MAX).then_some([x_min as u32, y_min as u32, x_max as u32, y_max as u32])
}

/// XYXY to XYWH the reference way (`w = x1 - x0`): with the inclusive-max boxes of
/// [`mask_to_box`] the width and height come out one pixel short of the mask's extent, which
/// is what the reference reports as `bbox`.
pub fn box_xyxy_to_xywh(b: [u32; 4]) -> [u32; 4] {
    [
        b[0],
        b[1],
        b[2].saturating_sub(b[0]),
        b[3].saturating_sub(b[1]),
    ]
}

/// Moves a box from crop to image coordinates.
pub fn uncrop_box(b: [u32; 4], crop: [u32; 4]) -> [u32; 4] {
    [
        b[0] + crop[0],
        b[1] + crop[1],
        b[2] + crop[0],
        b[3] + crop[1],
    ]
}

/// Moves a point from crop to image coordinates.
pub fn uncrop_point(p: [f64; 2], crop: [u32; 4]) -> [f64; 2] {
    [p[0] + crop[0] as f64, p[1] + crop[1] as f64]
}

/// Places a crop-sized mask into an all-background `width × height` mask at the crop's origin.
///
/// # Panics
///
/// Panics if the mask does not fit at that origin.
pub fn uncrop_mask(mask: &BinaryMask, crop: [u32; 4], width: u32, height: u32) -> BinaryMask {
    let (x0, y0) = (crop[0] as usize, crop[1] as usize);
    let (mw, mh) = (mask.width as usize, mask.height as usize);
    assert!(x0 + mw <= width as usize && y0 + mh <= height as usize);
    if mw == width as usize && mh == height as usize {
        return mask.clone();
    }
    let mut out = BinaryMask::new(width, height);
    for y in 0..mh {
        let dst = (y0 + y) * width as usize + x0;
        out.data[dst..dst + mw].copy_from_slice(&mask.data[y * mw..(y + 1) * mw]);
    }
    out
}

/// Whether a box (crop coordinates, inclusive max) lies within `atol` pixels of an edge of
/// its crop that is not also an edge of the image, the reference's `is_box_near_crop_edge`.
///
/// Every coordinate is compared with the same coordinate of the crop box and of `orig_box`
/// (`[0, 0, width, height]`), in `f32` like the reference's `torch.isclose(atol=20, rtol=0)`;
/// the inclusive max is compared with the exclusive crop end as is.
pub fn is_box_near_crop_edge(
    box_xyxy: [u32; 4],
    crop: [u32; 4],
    orig_box: [u32; 4],
    atol: f32,
) -> bool {
    let b = uncrop_box(box_xyxy, crop);
    (0..4).any(|k| {
        let v = b[k] as f32;
        let near_crop = (v - crop[k] as f32).abs() <= atol;
        let near_image = (v - orig_box[k] as f32).abs() <= atol;
        near_crop && !near_image
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_x_fastest() {
        let g = build_point_grid(2);
        assert_eq!(
            g,
            vec![[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
        );
        assert_eq!(build_point_grid(1), vec![[0.5, 0.5]]);
    }

    #[test]
    fn uncrop_mask_pads() {
        let m = BinaryMask::from_data(2, 1, vec![1, 0]).unwrap();
        let u = uncrop_mask(&m, [1, 1, 3, 2], 3, 2);
        assert_eq!(u.data, vec![0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn xywh_of_inclusive_box() {
        assert_eq!(box_xyxy_to_xywh([2, 3, 5, 9]), [2, 3, 3, 6]);
        assert_eq!(box_xyxy_to_xywh([0, 0, 0, 0]), [0, 0, 0, 0]);
    }
}
