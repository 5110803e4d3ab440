//! Image decoding with the header checks: any bytes give an image within the limits or an
//! error, never a panic or an allocation past the limits (libFuzzer's -rss_limit_mb).
#![no_main]

use libfuzzer_sys::fuzz_target;
use samserve::runtime::image_limits::DecodeLimits;
use samserve::runtime::preprocess::decode_image_with;

// Small limits keep each run fast; the checks are the same code at any size.
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 1 << 20,
    max_decoded_bytes: 8 << 20,
    max_aspect_ratio: 64,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image_with(data, &LIMITS) {
        let (w, h) = img.rgb.dimensions();
        assert!(w > 0 && h > 0, "decoded an empty {w}x{h} image");
        assert!(
            w as u64 * h as u64 <= LIMITS.max_pixels,
            "{w}x{h} over the pixel limit"
        );
        let (long, short) = (w.max(h) as u64, w.min(h) as u64);
        assert!(
            long <= short * LIMITS.max_aspect_ratio,
            "{w}x{h} over the aspect limit"
        );
    }
});
