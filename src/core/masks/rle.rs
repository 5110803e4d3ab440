//! COCO run-length encoding, byte-compatible with pycocotools.
//!
//! A mask is flattened in column-major (Fortran) order, i.e. down each column from the left,
//! and described by the lengths of its alternating runs, starting with a (possibly empty) run
//! of background. The compressed `counts` string stores each run length as a little-endian
//! sequence of 5-bit groups, one printable character per group: the value plus 48, with bit
//! `0x20` set on every group but the last and bit `0x10` of the last group carrying the sign.
//! From the fourth run on, the value written is the difference from the run two places back
//! (same colour), which keeps most values short.

use serde::{Deserialize, Serialize};

use super::BinaryMask;

/// Largest mask [`decode`] will allocate, in pixels: a few characters of RLE can claim a
/// huge mask, so untrusted input must not choose the allocation size freely.
pub const DEFAULT_MAX_DECODE_PIXELS: u64 = 1 << 28;

/// A mask in COCO's compressed RLE form, as pycocotools' `mask.encode` returns it (with
/// `counts` decoded from bytes to a string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CocoRle {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// Run lengths in pycocotools' compressed string encoding.
    pub counts: String,
}

/// Why a [`CocoRle`] could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    /// A `counts` byte outside the 64 characters `'0'..='o'` the encoding uses.
    #[error("invalid RLE character {byte:#04x} at offset {offset}")]
    InvalidChar { offset: usize, byte: u8 },
    /// `counts` ends in the middle of a value.
    #[error("RLE counts end in the middle of a value")]
    Truncated,
    /// A value is encoded with more groups than any valid count needs.
    #[error("RLE value at offset {offset} is too long")]
    ValueTooLong { offset: usize },
    /// A run length decodes to a negative number or one beyond `u32`.
    #[error("RLE run {index} has invalid length {value}")]
    InvalidRun { index: usize, value: i64 },
    /// The runs do not cover the mask exactly.
    #[error("RLE runs cover {actual} pixels but the mask has {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    /// The mask is larger than the decoder accepts.
    #[error("RLE mask of {pixels} pixels exceeds the limit of {max}")]
    TooLarge { pixels: u64, max: u64 },
}

/// Uncompressed COCO run lengths of `mask`: alternating background/foreground runs in
/// column-major order, starting with background (so the first count is 0 when the top-left
/// pixel is foreground). A mask without pixels gives `[0]`, as pycocotools does.
///
/// # Panics
///
/// Panics if the mask has `2^32` pixels or more (a run length would not fit in `u32`).
pub fn encode_counts(mask: &BinaryMask) -> Vec<u32> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    assert!(
        (w as u64 * h as u64) < (1u64 << 32),
        "mask too large for u32 run lengths"
    );
    let mut counts = Vec::new();
    let mut current = false;
    let mut run = 0u32;
    // Walking the row-major mask down each column would touch a new cache line per pixel.
    // Instead, take the columns eight at a time: one 8-byte load per row gives all eight
    // columns' pixels, and XOR-ing consecutive rows yields every column's value changes at
    // once, so rows without a change cost a single comparison.
    let mut changes: [Vec<u32>; 8] = Default::default();
    for x0 in (0..w).step_by(8) {
        let n = (w - x0).min(8);
        for c in &mut changes {
            c.clear();
        }
        let mut previous = 0u64;
        for y in 0..h {
            let word = load_flags(&mask.data[y * w + x0..y * w + x0 + n]);
            let mut diff = word ^ previous;
            previous = word;
            while diff != 0 {
                let c = diff.trailing_zeros() as usize / 8;
                changes[c].push(y as u32);
                diff &= !(0xff << (8 * c));
            }
        }
        for column_changes in &changes[..n] {
            // A change at row 0 is relative to an imaginary background row above the column,
            // so it only says that the column starts with foreground.
            let starts_with_fg = column_changes.first() == Some(&0);
            if starts_with_fg != current {
                counts.push(run);
                run = 0;
                current = starts_with_fg;
            }
            let mut last = 0;
            for &y in column_changes.iter().skip(starts_with_fg as usize) {
                counts.push(run + (y - last));
                run = 0;
                current = !current;
                last = y;
            }
            run += h as u32 - last;
        }
    }
    counts.push(run);
    counts
}

/// Packs up to eight mask bytes into a word holding 1 in each byte whose pixel is foreground.
#[inline]
fn load_flags(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    let word = u64::from_le_bytes(buf);
    // Sets the high bit of every non-zero byte without carries between bytes.
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    ((((word & LOW7) + LOW7) | word) >> 7) & 0x0101_0101_0101_0101
}

/// Writes run lengths as pycocotools' compressed counts string.
pub fn counts_to_string(counts: &[u32]) -> String {
    let mut out = Vec::with_capacity(counts.len() * 2);
    for (i, &count) in counts.iter().enumerate() {
        let mut x = count as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            // Stop once the remaining bits are pure sign extension of the group just written.
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            out.push(c + 48);
            if !more {
                break;
            }
        }
    }
    String::from_utf8(out).expect("RLE characters are ASCII")
}

/// Parses pycocotools' compressed counts string into run lengths.
pub fn counts_from_string(s: &str) -> Result<Vec<u32>, RleError> {
    // 7 groups hold 35 bits, enough for any difference of two u32 counts with its sign.
    const MAX_GROUPS: u32 = 7;
    let bytes = s.as_bytes();
    let mut counts: Vec<u32> = Vec::with_capacity(bytes.len() / 2 + 1);
    let mut p = 0;
    while p < bytes.len() {
        let start = p;
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&byte) = bytes.get(p) else {
                return Err(RleError::Truncated);
            };
            if !(48..48 + 64).contains(&byte) {
                return Err(RleError::InvalidChar { offset: p, byte });
            }
            if k == MAX_GROUPS {
                return Err(RleError::ValueTooLong { offset: start });
            }
            let c = (byte - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let index = counts.len();
        if index > 2 {
            x += counts[index - 2] as i64;
        }
        let count = u32::try_from(x).map_err(|_| RleError::InvalidRun { index, value: x })?;
        counts.push(count);
    }
    Ok(counts)
}

/// Encodes `mask` exactly as `pycocotools.mask.encode(np.asfortranarray(mask))` does.
///
/// # Panics
///
/// Panics if the mask has `2^32` pixels or more.
pub fn encode(mask: &BinaryMask) -> CocoRle {
    CocoRle {
        size: [mask.height, mask.width],
        counts: counts_to_string(&encode_counts(mask)),
    }
}

/// Decodes a compressed RLE, rejecting malformed input instead of guessing, and refusing
/// masks over [`DEFAULT_MAX_DECODE_PIXELS`].
pub fn decode(rle: &CocoRle) -> Result<BinaryMask, RleError> {
    decode_with_limit(rle, DEFAULT_MAX_DECODE_PIXELS)
}

/// [`decode`] with a caller-chosen size limit in pixels.
pub fn decode_with_limit(rle: &CocoRle, max_pixels: u64) -> Result<BinaryMask, RleError> {
    let [h, w] = rle.size;
    check_size(h, w, max_pixels)?;
    let counts = counts_from_string(&rle.counts)?;
    decode_counts_unchecked(h, w, &counts)
}

/// Builds a mask of `size = [height, width]` from uncompressed run lengths, requiring them to
/// cover the mask exactly. Subject to [`DEFAULT_MAX_DECODE_PIXELS`].
pub fn decode_counts(size: [u32; 2], counts: &[u32]) -> Result<BinaryMask, RleError> {
    let [h, w] = size;
    check_size(h, w, DEFAULT_MAX_DECODE_PIXELS)?;
    decode_counts_unchecked(h, w, counts)
}

fn check_size(h: u32, w: u32, max_pixels: u64) -> Result<(), RleError> {
    let pixels = h as u64 * w as u64;
    if pixels > max_pixels {
        return Err(RleError::TooLarge {
            pixels,
            max: max_pixels,
        });
    }
    Ok(())
}

fn decode_counts_unchecked(h: u32, w: u32, counts: &[u32]) -> Result<BinaryMask, RleError> {
    let expected = h as u64 * w as u64;
    let actual: u64 = counts.iter().map(|&c| c as u64).sum();
    if actual != expected {
        return Err(RleError::SizeMismatch { expected, actual });
    }
    let mut mask = BinaryMask::new(w, h);
    let (w, h) = (w as usize, h as usize);
    // The mirror image of `encode_counts`: paint eight columns at a time into a column-major
    // tile of one word per row (cache-resident), then store each row's eight bytes at once,
    // instead of writing the row-major mask one strided byte at a time.
    let mut tile = vec![0u64; h];
    // Walk the runs in step with the groups: `index` is the current run, `remaining` how much
    // of it is left, and (`column`, `y`) where it continues.
    let mut index = 0;
    let mut remaining = counts.first().copied().unwrap_or(0) as usize;
    let (mut column, mut y) = (0usize, 0usize);
    for x0 in (0..w).step_by(8) {
        let n = (w - x0).min(8);
        tile.fill(0);
        while column < x0 + n {
            if remaining == 0 {
                index += 1;
                // Cannot run out: the counts were checked to cover every pixel.
                let Some(&next) = counts.get(index) else {
                    break;
                };
                remaining = next as usize;
                continue;
            }
            let len = remaining.min(h - y);
            if index % 2 == 1 {
                let bit = 1u64 << (8 * (column - x0));
                for t in &mut tile[y..y + len] {
                    *t |= bit;
                }
            }
            remaining -= len;
            y += len;
            if y == h {
                y = 0;
                column += 1;
            }
        }
        for (y, t) in tile.iter().enumerate() {
            mask.data[y * w + x0..y * w + x0 + n].copy_from_slice(&t.to_le_bytes()[..n]);
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::masks::test_masks::{mask, random_mask};

    #[test]
    fn counts_are_column_major_starting_with_background() {
        // Columns: "01", "11", "00" -> 0 1 1 1 0 0
        let m = mask(&["010", "110"]);
        assert_eq!(encode_counts(&m), vec![1, 3, 2]);
        let starts_with_one = mask(&["1", "0"]);
        assert_eq!(encode_counts(&starts_with_one), vec![0, 1, 1]);
        assert_eq!(encode_counts(&BinaryMask::new(0, 0)), vec![0]);
    }

    #[test]
    fn known_pycocotools_strings() {
        // pycocotools.mask.encode(np.asfortranarray(np.array([[0,1,0],[1,1,0]], np.uint8)))
        assert_eq!(encode(&mask(&["010", "110"])).counts, "132");
        // A 3x3 all-ones mask: counts [0, 9].
        assert_eq!(encode(&mask(&["111", "111", "111"])).counts, "09");
        // Large values take several characters (a 1000x2 mask whose only foreground pixel is
        // the last one: counts [1999, 1]).
        let mut tall = BinaryMask::new(2, 1000);
        tall.set(1, 999, true);
        assert_eq!(encode(&tall).counts, "_n11");
        // Deltas apply from the fourth run on: pycocotools.mask.frPyObjects({"size": [1, 4000],
        // "counts": [5, 100, 3, 90, 400, 2, 3400]}, 1, 4000).
        let counts = [5, 100, 3, 90, 400, 2, 3400];
        assert_eq!(counts_to_string(&counts), "5T33F]<XMhm2");
        assert_eq!(counts_from_string("5T33F]<XMhm2").unwrap(), counts);
    }

    #[test]
    fn round_trips_random_masks() {
        for seed in 0..200u64 {
            let w = (seed % 17) as u32 + 1;
            let h = (seed * 7 % 13) as u32 + 1;
            let m = random_mask(seed, w, h, seed % 101);
            let rle = encode(&m);
            assert_eq!(rle.size, [h, w]);
            assert_eq!(decode(&rle).unwrap(), m, "seed {seed}");
            assert_eq!(decode_counts(rle.size, &encode_counts(&m)).unwrap(), m);
        }
    }

    #[test]
    fn serde_shape() {
        let rle = encode(&mask(&["010", "110"]));
        let json = serde_json::to_string(&rle).unwrap();
        assert_eq!(json, r#"{"size":[2,3],"counts":"132"}"#);
        assert_eq!(serde_json::from_str::<CocoRle>(&json).unwrap(), rle);
    }

    #[test]
    fn rejects_malformed_input() {
        let bad = |size: [u32; 2], counts: &str| {
            decode(&CocoRle {
                size,
                counts: counts.to_string(),
            })
            .unwrap_err()
        };
        assert!(matches!(bad([2, 3], "13 "), RleError::InvalidChar { .. }));
        assert!(matches!(
            bad([2, 3], "1\u{e9}"),
            RleError::InvalidChar { .. }
        ));
        assert!(matches!(bad([2, 3], "1p"), RleError::InvalidChar { .. }));
        // 'P' is 0x20 + 48: a continuation group with nothing after it.
        assert!(matches!(bad([2, 3], "1P"), RleError::Truncated));
        assert!(matches!(bad([2, 3], "13"), RleError::SizeMismatch { .. }));
        assert!(matches!(bad([2, 3], "1321"), RleError::SizeMismatch { .. }));
        assert!(matches!(bad([2, 3], ""), RleError::SizeMismatch { .. }));
        // 'O' is a lone group 0x1f with the sign bit set: -1.
        assert!(matches!(bad([2, 3], "O"), RleError::InvalidRun { .. }));
        assert!(matches!(
            bad([2, 3], "PPPPPPPP0"),
            RleError::ValueTooLong { .. }
        ));
        assert!(matches!(
            bad([100_000, 100_000], "0"),
            RleError::TooLarge { .. }
        ));
        // 'N' is a delta of -2 against the count two back (1), giving -1.
        assert!(matches!(
            counts_from_string("111N"),
            Err(RleError::InvalidRun { index: 3, .. })
        ));
        assert_eq!(
            decode(&CocoRle {
                size: [0, 0],
                counts: String::new()
            })
            .unwrap(),
            BinaryMask::new(0, 0)
        );
    }

    #[test]
    fn matches_pycocotools_fixtures() {
        // Generated by tools/parity.py with pycocotools: the mask, its compressed counts,
        // area and bbox.
        let fixtures: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/rle/cases.json"))
                .expect("fixture is valid JSON");
        let cases = fixtures["cases"].as_array().expect("cases array");
        assert!(!cases.is_empty());
        for case in cases {
            let name = case["name"].as_str().unwrap_or("?");
            let rows: Vec<&str> = case["mask"]
                .as_array()
                .expect("mask rows")
                .iter()
                .map(|r| r.as_str().expect("mask row string"))
                .collect();
            let m = mask(&rows);
            assert_eq!(m.height as u64, case["height"].as_u64().unwrap(), "{name}");
            assert_eq!(m.width as u64, case["width"].as_u64().unwrap(), "{name}");
            let counts = case["counts"].as_str().expect("counts string");

            let encoded = encode(&m);
            assert_eq!(encoded.counts, counts, "{name}: encode");
            assert_eq!(encoded.size, [m.height, m.width], "{name}: size");
            let decoded = decode(&CocoRle {
                size: [m.height, m.width],
                counts: counts.to_string(),
            })
            .expect("fixture RLE decodes");
            assert_eq!(decoded, m, "{name}: decode");
            assert_eq!(m.area(), case["area"].as_u64().unwrap(), "{name}: area");
            let bbox: Vec<u32> = case["bbox"]
                .as_array()
                .expect("bbox array")
                .iter()
                .map(|v| v.as_f64().expect("bbox number") as u32)
                .collect();
            assert_eq!(m.bbox_xywh().to_vec(), bbox, "{name}: bbox");
        }
    }

    #[test]
    fn large_mask_round_trip() {
        let m = random_mask(42, 640, 480, 3);
        assert_eq!(decode(&encode(&m)).unwrap(), m);
    }
}
