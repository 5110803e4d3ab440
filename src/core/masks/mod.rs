//! Binary masks and their wire formats (COCO RLE, 1-bit PNG, polygons).

pub mod png;
pub mod polygon;
pub mod rle;

/// Errors from building a [`BinaryMask`] out of caller-supplied data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The data does not hold exactly `width * height` pixels.
    #[error("mask data has {actual} bytes, expected {expected} for {width}x{height}")]
    LengthMismatch {
        width: u32,
        height: u32,
        expected: u64,
        actual: u64,
    },
}

/// A binary segmentation mask: `height` rows of `width` pixels, row-major, one byte per pixel
/// holding 0 (background) or 1 (foreground).
///
/// Code that reads `data` treats any non-zero byte as foreground, so a mask built by hand with
/// 255s still behaves, but the constructors here only ever produce 0 and 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BinaryMask {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl BinaryMask {
    /// An all-background mask.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }

    /// Wraps row-major pixel data, normalizing every non-zero byte to 1.
    pub fn from_data(width: u32, height: u32, mut data: Vec<u8>) -> Result<Self, MaskError> {
        let expected = width as u64 * height as u64;
        if data.len() as u64 != expected {
            return Err(MaskError::LengthMismatch {
                width,
                height,
                expected,
                actual: data.len() as u64,
            });
        }
        for v in &mut data {
            *v = (*v != 0) as u8;
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Wraps row-major pixel data that is already 0 or 1 (as from
    /// [`crate::runtime::model::MaskGeometry::upscale_mask`]).
    ///
    /// # Panics
    ///
    /// Panics if `data.len() != width * height`.
    pub fn from_binary(width: u32, height: u32, data: Vec<u8>) -> Self {
        assert_eq!(
            data.len(),
            width as usize * height as usize,
            "mask length does not match {width}x{height}"
        );
        debug_assert!(data.iter().all(|&v| v <= 1));
        Self {
            width,
            height,
            data,
        }
    }

    /// Thresholds a row-major plane of logits: a pixel is foreground when its logit is strictly
    /// greater than `threshold` (SAM uses 0.0). NaN logits become background.
    ///
    /// # Panics
    ///
    /// Panics if `logits.len() != width * height`.
    pub fn from_logits(logits: &[f32], width: u32, height: u32, threshold: f32) -> Self {
        assert_eq!(
            logits.len(),
            width as usize * height as usize,
            "logit plane length does not match {width}x{height}"
        );
        Self {
            width,
            height,
            data: logits.iter().map(|&v| (v > threshold) as u8).collect(),
        }
    }

    /// Whether the pixel at column `x`, row `y` is foreground; pixels outside the mask are
    /// background.
    #[inline]
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.width && y < self.height && self.data[self.index(x, y)] != 0
    }

    /// Sets the pixel at column `x`, row `y`.
    ///
    /// # Panics
    ///
    /// Panics if the pixel is outside the mask.
    #[inline]
    pub fn set(&mut self, x: u32, y: u32, value: bool) {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside {}x{} mask",
            self.width,
            self.height
        );
        let i = self.index(x, y);
        self.data[i] = value as u8;
    }

    #[inline]
    fn index(&self, x: u32, y: u32) -> usize {
        y as usize * self.width as usize + x as usize
    }

    /// Number of foreground pixels (pycocotools' `area`).
    pub fn area(&self) -> u64 {
        // Eight pixels per step: each byte becomes 1 if non-zero (without carries between
        // bytes), and multiplying by 0x0101..01 gathers the eight flags' sum in the top byte.
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        const ONES: u64 = 0x0101_0101_0101_0101;
        let mut words = self.data.chunks_exact(8);
        let mut total: u64 = 0;
        for w in words.by_ref() {
            let word = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            let flags = ((((word & LOW7) + LOW7) | word) >> 7) & ONES;
            total += flags.wrapping_mul(ONES) >> 56;
        }
        total
            + words
                .remainder()
                .iter()
                .map(|&v| (v != 0) as u64)
                .sum::<u64>()
    }

    /// Tight bounding box of the foreground as `[x, y, width, height]` in pixels, the same
    /// numbers as pycocotools' `toBbox`; `[0, 0, 0, 0]` for an empty mask.
    pub fn bbox_xywh(&self) -> [u32; 4] {
        let w = self.width as usize;
        if w == 0 {
            return [0; 4];
        }
        let mut x_min = usize::MAX;
        let mut x_max = 0;
        let mut y_min = usize::MAX;
        let mut y_max = 0;
        for (y, row) in self.data.chunks_exact(w).enumerate() {
            let Some(first) = first_set(row) else {
                continue;
            };
            let last = last_set(row).unwrap_or(first);
            y_min = y_min.min(y);
            y_max = y;
            x_min = x_min.min(first);
            x_max = x_max.max(last);
        }
        if y_min == usize::MAX {
            return [0; 4];
        }
        [
            x_min as u32,
            y_min as u32,
            (x_max - x_min + 1) as u32,
            (y_max - y_min + 1) as u32,
        ]
    }

    /// Intersection over union with `other`.
    ///
    /// Two empty masks are defined to have IoU 1.0 (they agree everywhere), unlike
    /// pycocotools, which reports 0. Masks of different dimensions have IoU 0.0.
    pub fn iou(&self, other: &BinaryMask) -> f64 {
        if self.width != other.width || self.height != other.height {
            return 0.0;
        }
        let (mut inter, mut union) = (0u64, 0u64);
        for (&a, &b) in self.data.iter().zip(&other.data) {
            let (a, b) = (a != 0, b != 0);
            inter += (a & b) as u64;
            union += (a | b) as u64;
        }
        if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        }
    }
}

/// Index of the first non-zero byte, scanning eight bytes per step.
fn first_set(row: &[u8]) -> Option<usize> {
    let mut words = row.chunks_exact(8);
    for (i, w) in words.by_ref().enumerate() {
        let word = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if word != 0 {
            return Some(i * 8 + word.trailing_zeros() as usize / 8);
        }
    }
    let tail = row.len() - words.remainder().len();
    words
        .remainder()
        .iter()
        .position(|&v| v != 0)
        .map(|p| tail + p)
}

/// Index of the last non-zero byte, scanning eight bytes per step from the end.
fn last_set(row: &[u8]) -> Option<usize> {
    let mut words = row.rchunks_exact(8);
    for (i, w) in words.by_ref().enumerate() {
        let word = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if word != 0 {
            return Some(row.len() - 8 * (i + 1) + 7 - word.leading_zeros() as usize / 8);
        }
    }
    words.remainder().iter().rposition(|&v| v != 0)
}

/// Masks for the unit tests of this module and its children.
#[cfg(test)]
pub(crate) mod test_masks {
    use super::BinaryMask;

    /// A mask from rows of '0' and '1'.
    pub fn mask(rows: &[&str]) -> BinaryMask {
        let h = rows.len() as u32;
        let w = rows.first().map_or(0, |r| r.len()) as u32;
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| (b == b'1') as u8))
            .collect();
        BinaryMask::from_data(w, h, data).unwrap()
    }

    /// A w x h mask with about `density` % of its pixels set, from a small deterministic
    /// xorshift generator (no extra crates).
    pub fn random_mask(seed: u64, w: u32, h: u32, density: u64) -> BinaryMask {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data = (0..w as usize * h as usize)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 100 < density) as u8
            })
            .collect();
        BinaryMask::from_data(w, h, data).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_masks::mask;
    use super::*;

    #[test]
    fn from_logits_is_strict() {
        let m = BinaryMask::from_logits(&[-1.0, 0.0, 0.5, f32::NAN], 2, 2, 0.0);
        assert_eq!(m.data, vec![0, 0, 1, 0]);
    }

    #[test]
    fn from_data_checks_length_and_normalizes() {
        assert!(BinaryMask::from_data(2, 2, vec![0; 3]).is_err());
        assert_eq!(
            BinaryMask::from_data(2, 1, vec![0, 255]).unwrap().data,
            vec![0, 1]
        );
    }

    #[test]
    fn get_and_set() {
        let mut m = BinaryMask::new(3, 2);
        m.set(2, 1, true);
        assert!(m.get(2, 1));
        assert!(!m.get(1, 2));
        assert!(!m.get(3, 1));
        assert_eq!(m.data, vec![0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn area_and_bbox() {
        let m = mask(&["00000", "00100", "01100", "00000"]);
        assert_eq!(m.area(), 3);
        assert_eq!(m.bbox_xywh(), [1, 1, 2, 2]);
        assert_eq!(BinaryMask::new(4, 3).bbox_xywh(), [0, 0, 0, 0]);
        assert_eq!(BinaryMask::new(0, 0).bbox_xywh(), [0, 0, 0, 0]);
        let full = mask(&["11", "11"]);
        assert_eq!(full.bbox_xywh(), [0, 0, 2, 2]);
    }

    #[test]
    fn word_scans_match_pixel_scans() {
        let mut seed = 7u32;
        for (w, h) in [(1, 1), (7, 3), (8, 2), (13, 5), (64, 9), (67, 4)] {
            for density in [0u32, 2, 50, 100] {
                let data: Vec<u8> = (0..w * h)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        if (seed >> 16) % 100 < density {
                            [1, 255, 128][(seed >> 8) as usize % 3]
                        } else {
                            0
                        }
                    })
                    .collect();
                let m = BinaryMask {
                    width: w as u32,
                    height: h as u32,
                    data: data.clone(),
                };
                let area = data.iter().filter(|&&v| v != 0).count() as u64;
                assert_eq!(m.area(), area, "{w}x{h} density {density}");
                let fg: Vec<(usize, usize)> = (0..w * h)
                    .filter(|&i| data[i] != 0)
                    .map(|i| (i % w, i / w))
                    .collect();
                let expected = if fg.is_empty() {
                    [0; 4]
                } else {
                    let x0 = fg.iter().map(|p| p.0).min().unwrap();
                    let x1 = fg.iter().map(|p| p.0).max().unwrap();
                    let y0 = fg.iter().map(|p| p.1).min().unwrap();
                    let y1 = fg.iter().map(|p| p.1).max().unwrap();
                    [
                        x0 as u32,
                        y0 as u32,
                        (x1 - x0 + 1) as u32,
                        (y1 - y0 + 1) as u32,
                    ]
                };
                assert_eq!(m.bbox_xywh(), expected, "{w}x{h} density {density}");
            }
        }
    }

    #[test]
    fn iou_cases() {
        let a = mask(&["110", "000"]);
        let b = mask(&["011", "000"]);
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(BinaryMask::new(2, 2).iou(&BinaryMask::new(2, 2)), 1.0);
        assert_eq!(a.iou(&BinaryMask::new(2, 3)), 0.0);
    }
}
