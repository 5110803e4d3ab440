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
        // Summing bytes lets the compiler vectorize; normalizing keeps 255s counting once.
        self.data.iter().map(|&v| (v != 0) as u64).sum()
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
            let Some(first) = row.iter().position(|&v| v != 0) else {
                continue;
            };
            let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> BinaryMask {
        let h = rows.len() as u32;
        let w = rows.first().map_or(0, |r| r.len()) as u32;
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| (b == b'1') as u8))
            .collect();
        BinaryMask::from_data(w, h, data).unwrap()
    }

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
    fn iou_cases() {
        let a = mask(&["110", "000"]);
        let b = mask(&["011", "000"]);
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(BinaryMask::new(2, 2).iou(&BinaryMask::new(2, 2)), 1.0);
        assert_eq!(a.iou(&BinaryMask::new(2, 3)), 0.0);
    }
}
