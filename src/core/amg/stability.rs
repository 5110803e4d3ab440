//! The stability score of a logit plane.

/// IoU of the masks obtained by thresholding `logits` at `mask_threshold ± offset`:
/// `count(logit > thr + offset) / count(logit > thr - offset)`, the reference's
/// `calculate_stability_score`.
///
/// As in the reference, both thresholds are rounded to `f32` before comparing (torch compares a
/// float32 tensor with a Python scalar in float32) and the ratio is a float32 division. When no
/// logit exceeds the lower threshold the score is 0/0 = NaN, which fails any `>=` filter but
/// is kept (and reported) when the stability filter is disabled.
pub fn stability_score(logits: &[f32], mask_threshold: f64, offset: f64) -> f32 {
    let hi = (mask_threshold + offset) as f32;
    let lo = (mask_threshold - offset) as f32;
    let (mut inter, mut union) = (0u32, 0u32);
    for &v in logits {
        inter += (v > hi) as u32;
        union += (v > lo) as u32;
    }
    inter as f32 / union as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_denominator_is_nan() {
        assert!(stability_score(&[-5.0, -2.0], 0.0, 1.0).is_nan());
        assert_eq!(stability_score(&[5.0, 0.5], 0.0, 1.0), 0.5);
    }
}
