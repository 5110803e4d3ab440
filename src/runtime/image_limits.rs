//! Limits checked on an image's header before any pixel is decoded, and the structural check
//! that a JPEG is complete.
//!
//! Why each limit exists (measured on the server before they did):
//! - pixels: decoding and the encoder's resize cost memory per pixel;
//! - decoded bytes: a 512 KB 8000x8000 RGBA 16-bit PNG decodes to 512 MB before it is
//!   converted to 8-bit RGB, so a pixel limit alone does not bound memory;
//! - aspect ratio: the antialiased resize to the encoder frame keeps a filter window per
//!   output sample whose length grows with the downscale factor, and the mask upscale keeps
//!   per-sample tables along the long side, so a 64000000x1 image (62 KB as PNG) cost
//!   +3.5 GB where a square image of the same pixel count cost +130 MB. Below the aspect
//!   limit every such table is at most `max(width, height) <= sqrt(pixels * ratio)` long.

use crate::error::ApiError;

/// Header limits of one decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Most pixels (width x height).
    pub max_pixels: u64,
    /// Most bytes of the decoder's own output (width x height x channels x bytes per
    /// channel, before conversion to 8-bit RGB).
    pub max_decoded_bytes: u64,
    /// Most `long side / short side`.
    pub max_aspect_ratio: u64,
}

impl DecodeLimits {
    /// Only a pixel limit (the other limits off).
    pub fn pixels_only(max_pixels: u64) -> Self {
        DecodeLimits {
            max_pixels,
            max_decoded_bytes: u64::MAX,
            max_aspect_ratio: u64::MAX,
        }
    }

    /// Checks the size read from the header (before the decoder's own byte count is known).
    pub fn check_size(&self, format: &str, w: u32, h: u32) -> Result<(), ApiError> {
        let pixels = w as u64 * h as u64;
        if pixels == 0 {
            return Err(ApiError::InvalidImage(format!(
                "{format} image has zero size"
            )));
        }
        if pixels > self.max_pixels {
            return Err(ApiError::PayloadTooLarge(format!(
                "image is {w}x{h} = {pixels} pixels, over the limit of {}",
                self.max_pixels
            )));
        }
        let (long, short) = (w.max(h) as u64, w.min(h) as u64);
        // long / short > ratio, without rounding: long > ratio * short.
        if long > self.max_aspect_ratio.saturating_mul(short) {
            return Err(ApiError::PayloadTooLarge(format!(
                "image is {w}x{h}, an aspect ratio over the limit of {}:1",
                self.max_aspect_ratio
            )));
        }
        Ok(())
    }

    /// Checks the decoder's output size in bytes.
    pub fn check_decoded_bytes(
        &self,
        format: &str,
        w: u32,
        h: u32,
        bytes: u64,
    ) -> Result<(), ApiError> {
        if bytes > self.max_decoded_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "{format} image {w}x{h} decodes to {bytes} bytes, over the limit of {}",
                self.max_decoded_bytes
            )));
        }
        Ok(())
    }
}

/// Whether a JPEG's byte stream reaches its end-of-image marker after the first scan.
///
/// libjpeg pads a stream that ends early with a fake end marker and only warns (the missing
/// part decodes grey), so a JPEG cut at 40% decodes "successfully". PIL refuses such files
/// ("image file is truncated"), and so do we. The walk skips the header segments by their
/// lengths (an EXIF thumbnail's own markers are inside them), then looks for `FF D9` in the
/// entropy-coded data, where a literal `FF` byte is always stuffed as `FF 00`.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if bytes.len() < 4 || bytes[0] != 0xff || bytes[1] != 0xd8 {
        return false;
    }
    let mut i = 2;
    // Header segments up to the first start-of-scan.
    loop {
        if bytes.get(i) != Some(&0xff) {
            return false;
        }
        // A marker may be preceded by any number of fill bytes (FF).
        while i < bytes.len() && bytes[i] == 0xff {
            i += 1;
        }
        if i >= bytes.len() {
            return false;
        }
        let marker = bytes[i];
        i += 1;
        match marker {
            // Standalone markers without a length.
            0x01 | 0xd0..=0xd7 => continue,
            0xd9 => return false, // end of image before any scan
            _ => {}
        }
        if i + 2 > bytes.len() {
            return false;
        }
        let len = u16::from_be_bytes([bytes[i], bytes[i + 1]]) as usize;
        if len < 2 {
            return false;
        }
        i += len;
        if i > bytes.len() {
            return false;
        }
        if marker == 0xda {
            break;
        }
    }
    // After the first scan header: entropy-coded data, restart markers, further scans
    // (progressive) and tables; the image ends at FF D9.
    bytes[i..].windows(2).any(|w| w == [0xff, 0xd9])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/parity/images/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn complete_jpegs_pass_and_truncated_ones_fail() {
        for name in [
            "scene_640x480.jpg",
            "large_1200x777.jpg",
            "exif6_300x450.jpg",
        ] {
            let bytes = fixture(name);
            assert!(jpeg_is_complete(&bytes), "{name}");
            // Trailing bytes after the end marker (some cameras append data) are fine.
            let mut padded = bytes.clone();
            padded.extend_from_slice(b"trailer");
            assert!(jpeg_is_complete(&padded), "{name} + trailer");
            for pct in [5, 20, 40, 60, 80, 99] {
                let cut = bytes.len() * pct / 100;
                assert!(!jpeg_is_complete(&bytes[..cut]), "{name} cut at {pct}%");
            }
            assert!(
                !jpeg_is_complete(&bytes[..bytes.len() - 2]),
                "{name} without EOI"
            );
        }
        assert!(!jpeg_is_complete(b""));
        assert!(!jpeg_is_complete(&[0xff, 0xd8, 0xff, 0xd9]));
    }

    #[test]
    fn size_limits() {
        let l = DecodeLimits {
            max_pixels: 1500,
            max_decoded_bytes: 3000,
            max_aspect_ratio: 10,
        };
        assert!(l.check_size("png", 10, 100).is_ok());
        assert!(l.check_size("png", 100, 10).is_ok());
        let e = l.check_size("png", 101, 10).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::PayloadTooLarge);
        assert!(e.to_string().contains("aspect ratio"), "{e}");
        let e = l.check_size("png", 1000, 1).unwrap_err();
        assert!(e.to_string().contains("aspect ratio"), "{e}");
        let e = l.check_size("png", 40, 40).unwrap_err();
        assert!(e.to_string().contains("pixels"), "{e}");
        assert_eq!(
            l.check_size("png", 0, 5).unwrap_err().kind(),
            crate::error::ErrorKind::InvalidImage
        );
        assert!(l.check_decoded_bytes("png", 10, 100, 3000).is_ok());
        assert!(l.check_decoded_bytes("png", 10, 100, 3001).is_err());
        assert!(DecodeLimits::pixels_only(10)
            .check_size("png", 10, 1)
            .is_ok());
    }
}
