//! Removal of small holes and islands, the reference's `remove_small_regions`.

use crate::core::masks::BinaryMask;

/// What [`remove_small_regions`] cleans up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMode {
    /// Fill background components smaller than the threshold (including ones touching the
    /// image border: the reference does not single out enclosed holes).
    Holes,
    /// Drop foreground components smaller than the threshold; if all are smaller, keep only
    /// the largest.
    Islands,
}

/// Removes small 8-connected regions of one kind from `mask`, returning the new mask and
/// whether anything changed (the reference's `(mask, changed)`).
///
/// A component is small when its pixel count is `< area_thresh`. When every island is small,
/// the largest is kept; among equally large ones the reference keeps the one OpenCV labels
/// first, and `cv2.connectedComponentsWithStats` numbers components by the first 2×2 pixel
/// block (blocks in raster order) they touch, not by their first pixel, which is reproduced
/// here.
pub fn remove_small_regions(
    mask: &BinaryMask,
    area_thresh: u64,
    mode: RegionMode,
) -> (BinaryMask, bool) {
    let holes = mode == RegionMode::Holes;
    let comps = Components::label(mask, holes);
    let small: Vec<bool> = comps.sizes.iter().map(|&s| s < area_thresh).collect();
    if !small.contains(&true) {
        return (mask.clone(), false);
    }
    let w = mask.width as usize;
    let mut out = mask.clone();
    if holes {
        for run in &comps.runs {
            if small[run.label as usize] {
                out.data[run.y * w + run.x0..run.y * w + run.x1].fill(1);
            }
        }
    } else {
        let mut keep: Vec<bool> = small.iter().map(|&s| !s).collect();
        if !keep.contains(&true) {
            let largest = (0..comps.sizes.len())
                .max_by(|&a, &b| {
                    comps.sizes[a]
                        .cmp(&comps.sizes[b])
                        .then(comps.first_block[b].cmp(&comps.first_block[a]))
                })
                .expect("a small component exists");
            keep[largest] = true;
        }
        for run in &comps.runs {
            if !keep[run.label as usize] {
                out.data[run.y * w + run.x0..run.y * w + run.x1].fill(0);
            }
        }
    }
    (out, true)
}

/// A horizontal run `[x0, x1)` of row `y` inside one component.
struct Run {
    y: usize,
    x0: usize,
    x1: usize,
    label: u32,
}

/// 8-connected components of the pixels where `mask != invert`, labelled run by run: masks
/// are mostly long runs, so this touches each pixel once and does union-find on runs only.
struct Components {
    runs: Vec<Run>,
    /// Pixel count per component.
    sizes: Vec<u64>,
    /// Smallest 2×2-block index (block row-major) per component, OpenCV's label order.
    first_block: Vec<u64>,
}

impl Components {
    fn label(mask: &BinaryMask, invert: bool) -> Self {
        let (w, h) = (mask.width as usize, mask.height as usize);
        let mut runs: Vec<Run> = Vec::new();
        let mut parent: Vec<u32> = Vec::new();
        fn find(parent: &mut [u32], mut a: u32) -> u32 {
            while parent[a as usize] != a {
                let up = parent[parent[a as usize] as usize];
                parent[a as usize] = up;
                a = up;
            }
            a
        }
        let mut prev_row = 0..0;
        for y in 0..h {
            let row = &mask.data[y * w..(y + 1) * w];
            let row_start = runs.len();
            let mut x = 0;
            while x < w {
                if (row[x] != 0) == invert {
                    x += 1;
                    continue;
                }
                let x0 = x;
                while x < w && (row[x] != 0) != invert {
                    x += 1;
                }
                runs.push(Run {
                    y,
                    x0,
                    x1: x,
                    label: u32::MAX,
                });
            }
            // Runs of consecutive rows touch (8-connectivity) when their extents overlap
            // after widening by one pixel; both lists are sorted, so one sweep finds them all.
            let mut p = prev_row.start;
            for r in row_start..runs.len() {
                let (x0, x1) = (runs[r].x0, runs[r].x1);
                while p < prev_row.end && runs[p].x1 < x0 {
                    p += 1;
                }
                let mut q = p;
                while q < prev_row.end && runs[q].x0 <= x1 {
                    let other = find(&mut parent, runs[q].label);
                    let cur = runs[r].label;
                    if cur == u32::MAX {
                        runs[r].label = other;
                    } else {
                        let cur = find(&mut parent, cur);
                        if cur != other {
                            let (lo, hi) = (cur.min(other), cur.max(other));
                            parent[hi as usize] = lo;
                            runs[r].label = lo;
                        }
                    }
                    q += 1;
                }
                if runs[r].label == u32::MAX {
                    runs[r].label = parent.len() as u32;
                    parent.push(runs[r].label);
                }
            }
            prev_row = row_start..runs.len();
        }
        let mut compact = vec![u32::MAX; parent.len()];
        let mut sizes = Vec::new();
        let mut first_block = Vec::new();
        let blocks_per_row = w.div_ceil(2) as u64;
        for run in &mut runs {
            let root = find(&mut parent, run.label) as usize;
            if compact[root] == u32::MAX {
                compact[root] = sizes.len() as u32;
                sizes.push(0);
                first_block.push(u64::MAX);
            }
            let c = compact[root] as usize;
            run.label = c as u32;
            sizes[c] += (run.x1 - run.x0) as u64;
            let block = (run.y / 2) as u64 * blocks_per_row + (run.x0 / 2) as u64;
            first_block[c] = first_block[c].min(block);
        }
        Self {
            runs,
            sizes,
            first_block,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_pixels_are_connected() {
        let m = BinaryMask::from_data(3, 3, vec![1, 0, 0, 0, 1, 0, 0, 0, 1]).unwrap();
        let (out, changed) = remove_small_regions(&m, 3, RegionMode::Islands);
        assert!(!changed);
        assert_eq!(out, m);
        let (out, changed) = remove_small_regions(&m, 4, RegionMode::Islands);
        assert!(changed);
        assert_eq!(out, m, "all small: the largest (the only) island stays");
    }

    #[test]
    fn fills_small_holes() {
        let m = BinaryMask::from_data(3, 3, vec![1, 1, 1, 1, 0, 1, 1, 1, 1]).unwrap();
        let (out, changed) = remove_small_regions(&m, 2, RegionMode::Holes);
        assert!(changed);
        assert_eq!(out.area(), 9);
    }
}
