//! The opt-in fast mode of segment everything (`skip_covered_points`): the grid is decoded
//! coarse to fine, and a point is skipped when a mask already kept in the same crop covers
//! it, so that a large object is decoded from a few of its points instead of every one.
//! Not part of the reference generator: answers differ from it (fewer duplicate masks that
//! NMS would have dropped, and sometimes a part that only an interior point would have
//! found); docs/performance.md has its speed and recall.

use super::generator::Candidate;

/// The order in which a crop's points are decoded. For a square `n x n` grid in row-major
/// order (as `build_point_grid` makes it): every 4th point of every 4th row first, then
/// every 2nd of every 2nd row, then the rest, each level in row-major order. Any other
/// point list keeps its order.
pub(super) fn coarse_to_fine(len: usize) -> Vec<usize> {
    let n = (len as f64).sqrt().round() as usize;
    if n * n != len || n < 4 {
        return (0..len).collect();
    }
    let level = |i: usize| {
        let (x, y) = (i % n, i / n);
        if x % 4 == 0 && y % 4 == 0 {
            0
        } else if x % 2 == 0 && y % 2 == 0 {
            1
        } else {
            2
        }
    };
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by_key(|&i| (level(i), i));
    order
}

/// Whether `point` (crop pixels) lies inside one of `kept` (masks in image pixels) that
/// covers at most half of the crop: a background-sized mask must not switch off the grid.
pub(super) fn covered(
    kept: &[Candidate],
    point: [f64; 2],
    crop_origin: [u32; 2],
    crop_area: u64,
) -> bool {
    let x = crop_origin[0] as f64 + point[0].max(0.0).floor();
    let y = crop_origin[1] as f64 + point[1].max(0.0).floor();
    let (x, y) = (x as u32, y as u32);
    kept.iter()
        .any(|c| c.mask.area() * 2 <= crop_area && c.mask.contains(x, y))
}

#[cfg(test)]
mod tests {
    use super::coarse_to_fine;

    #[test]
    fn coarse_points_come_first_and_every_point_once() {
        let order = coarse_to_fine(64);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>());
        // 8 x 8 grid: level 0 is (0,0), (4,0), (0,4), (4,4).
        assert_eq!(&order[..4], &[0, 4, 32, 36]);
        assert_eq!(coarse_to_fine(10), (0..10).collect::<Vec<_>>());
    }
}
