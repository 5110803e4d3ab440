//! Run-length storage of candidate masks between decoding and the final records.
//!
//! A grid prompt yields up to three masks and thousands can survive the filters before NMS,
//! so holding them as full-size bytes would cost gigabytes on large images. Runs over the
//! mask's bounding box cost memory in proportion to its outline instead.

use crate::core::masks::BinaryMask;

/// A binary mask stored as row-major runs over its bounding box, positioned in image
/// coordinates: the form masks take inside the generator, and a cheap one to hand out when
/// masks are encoded one at a time (expand with [`CompactMask::to_mask`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactMask {
    /// Top-left corner of the bounding box in image pixels.
    x0: u32,
    y0: u32,
    /// Bounding box size; 0 × 0 for an empty mask.
    w: u32,
    h: u32,
    /// Alternating background / foreground run lengths, starting with background, row-major
    /// over the box.
    runs: Vec<u32>,
    area: u64,
}

impl CompactMask {
    /// The foreground `is_fg(i)` of a `plane_w`-wide plane restricted to `bbox` (XYXY,
    /// inclusive max, plane coordinates), placed at `bbox + offset` in the image. An empty
    /// mask is signalled by `None`.
    pub(crate) fn from_plane(
        plane_w: usize,
        bbox: Option<[u32; 4]>,
        offset: [u32; 2],
        is_fg: impl Fn(usize) -> bool,
    ) -> Self {
        let Some([bx0, by0, bx1, by1]) = bbox else {
            return Self::empty();
        };
        let mut runs = Vec::new();
        let mut current = false;
        let mut len = 0u32;
        let mut area = 0u64;
        for y in by0 as usize..=by1 as usize {
            let row = y * plane_w;
            for x in bx0 as usize..=bx1 as usize {
                let v = is_fg(row + x);
                area += v as u64;
                if v != current {
                    runs.push(len);
                    len = 0;
                    current = v;
                }
                len += 1;
            }
        }
        runs.push(len);
        Self {
            x0: bx0 + offset[0],
            y0: by0 + offset[1],
            w: bx1 - bx0 + 1,
            h: by1 - by0 + 1,
            runs,
            area,
        }
    }

    /// A full-size mask, cropped to its foreground's bounding box.
    pub fn from_mask(mask: &BinaryMask) -> Self {
        let fg = |i: usize| mask.data[i] != 0;
        let (w, h) = (mask.width as usize, mask.height as usize);
        Self::from_plane(w, super::grid::box_of(w, h, fg), [0, 0], fg)
    }

    fn empty() -> Self {
        Self {
            x0: 0,
            y0: 0,
            w: 0,
            h: 0,
            runs: Vec::new(),
            area: 0,
        }
    }

    /// Number of foreground pixels.
    pub fn area(&self) -> u64 {
        self.area
    }

    /// Whether image pixel `(x, y)` is foreground.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        if x < self.x0 || y < self.y0 || x - self.x0 >= self.w || y - self.y0 >= self.h {
            return false;
        }
        let target = (y - self.y0) as u64 * self.w as u64 + (x - self.x0) as u64;
        let mut pos = 0u64;
        let mut fg = false;
        for &run in &self.runs {
            pos += run as u64;
            if target < pos {
                return fg;
            }
            fg = !fg;
        }
        false
    }

    /// Expands into a `width × height` mask (the image size it was generated for).
    ///
    /// # Panics
    ///
    /// Panics if the mask's bounding box does not fit in `width × height`.
    pub fn to_mask(&self, width: u32, height: u32) -> BinaryMask {
        let mut out = BinaryMask::new(width, height);
        let (bw, w) = (self.w as usize, width as usize);
        let (x0, y0) = (self.x0 as usize, self.y0 as usize);
        let mut pos = 0usize;
        let mut fg = false;
        for &run in &self.runs {
            if fg {
                for p in pos..pos + run as usize {
                    let (y, x) = (p / bw, p % bw);
                    out.data[(y0 + y) * w + x0 + x] = 1;
                }
            }
            pos += run as usize;
            fg = !fg;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = BinaryMask::from_data(4, 3, vec![0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0]).unwrap();
        let c = CompactMask::from_mask(&m);
        assert_eq!(c.area(), 4);
        assert_eq!(c.to_mask(4, 3), m);
        let e = BinaryMask::new(3, 2);
        assert_eq!(CompactMask::from_mask(&e).to_mask(3, 2), e);
        let one = BinaryMask::from_data(2, 1, vec![1, 0]).unwrap();
        assert_eq!(CompactMask::from_mask(&one).to_mask(2, 1), one);
    }

    #[test]
    fn contains_matches_the_expanded_mask() {
        let data = vec![0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1];
        let m = BinaryMask::from_data(4, 4, data.clone()).unwrap();
        let c = CompactMask::from_mask(&m);
        for y in 0..5u32 {
            for x in 0..5u32 {
                let expected = x < 4 && y < 4 && data[(y * 4 + x) as usize] == 1;
                assert_eq!(c.contains(x, y), expected, "({x}, {y})");
            }
        }
        assert!(!CompactMask::from_mask(&BinaryMask::new(3, 3)).contains(1, 1));
    }
}
