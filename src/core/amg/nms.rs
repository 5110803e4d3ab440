//! Greedy box non-maximum suppression with torchvision's semantics.

use std::cmp::Ordering;

/// Non-maximum suppression of XYXY boxes, as `torchvision.ops.batched_nms` with a single
/// category (the reference puts every mask in category 0).
///
/// Boxes are visited by score, highest first, ties in index order (torchvision's `nms` uses a
/// stable sort); a box is kept unless a kept box overlaps it with IoU strictly above
/// `iou_threshold`. Returns the kept indices in that visiting order.
///
/// The IoU is computed in `f32` the way torchvision's CPU kernel does, treating coordinates as
/// continuous (`area = (x1 - x0) * (y1 - y0)`, so an inclusive-max mask box loses a pixel per
/// side), and compared with the `f64` threshold. Degenerate boxes have area 0 and two of them
/// give 0/0 = NaN, which suppresses nothing.
///
/// torchvision switches to another code path above 1000 boxes on CPU which orders kept boxes
/// of EQUAL score arbitrarily (an unstable sort); the set kept is the same, and this function
/// keeps the stable order.
pub fn batched_nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "one score per box");
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // total_cmp makes NaN the largest score, where torch's descending sort also puts it.
    order.sort_by(|&a, &b| match scores[b].total_cmp(&scores[a]) {
        Ordering::Equal => a.cmp(&b),
        o => o,
    });
    let areas: Vec<f32> = boxes
        .iter()
        .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
        .collect();
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = boxes[i];
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = boxes[j];
            let xx1 = max(bi[0], bj[0]);
            let yy1 = max(bi[1], bj[1]);
            let xx2 = min(bi[2], bj[2]);
            let yy2 = min(bi[3], bj[3]);
            let w = max(0.0, xx2 - xx1);
            let h = max(0.0, yy2 - yy1);
            let inter = w * h;
            let ovr = inter / (areas[i] + areas[j] - inter);
            if ovr as f64 > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

// std::max / std::min of the C++ kernel: the first argument wins unless the second compares
// strictly greater (less), which is what decides NaN handling.
#[inline]
fn max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

#[inline]
fn min(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_overlaps_by_score() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 10.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
        ];
        assert_eq!(batched_nms(&boxes, &[0.5, 0.9, 0.1], 0.7), vec![1, 2]);
        assert_eq!(batched_nms(&boxes, &[0.5, 0.9, 0.1], 0.9), vec![1, 0, 2]);
        assert!(batched_nms(&[], &[], 0.5).is_empty());
    }
}
