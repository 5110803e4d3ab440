//! A PNG without the metadata chunks the server never uses, as a reader over the original
//! bytes (no copy).
//!
//! The PNG decoder inflates an `iCCP` chunk (a zlib-compressed ICC profile) while it reads
//! the header, before any size check can run: a 1 MB PNG carried a profile that inflates to
//! 1 GB, and each upload of it cost +511 MB. PIL's `convert("RGB")`, the reference
//! preprocessing, ignores ICC profiles and text, so the decoder is given the file without
//! `iCCP`, `tEXt`, `zTXt` and `iTXt` chunks: the pixels are the same, and no metadata is
//! inflated or held. (`eXIf`, which carries the orientation, stays.)

use std::io::{BufRead, Read, Seek, SeekFrom};
use std::ops::Range;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// Chunks left out: ICC profile and the three text chunk types.
const DROPPED: [&[u8; 4]; 4] = [b"iCCP", b"tEXt", b"zTXt", b"iTXt"];

/// Width and height from a PNG's `IHDR` (the first chunk), read without a decoder: the
/// size limits are checked before a decoder allocates anything for the file (the PNG
/// decoder sizes its row buffers from the width while it reads the header).
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(SIGNATURE) || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    Some((be(16)?, be(20)?))
}

/// The byte ranges of `bytes` to keep: everything but the dropped chunks. A file that is
/// not a PNG, or whose chunk walk breaks (truncated, bad length), is kept whole past that
/// point: the decoder reports the damage.
pub fn kept_ranges(bytes: &[u8]) -> Vec<Range<usize>> {
    if !bytes.starts_with(SIGNATURE) {
        return std::iter::once(0..bytes.len()).collect();
    }
    let mut kept: Vec<Range<usize>> = Vec::new();
    let mut keep = |r: Range<usize>| match kept.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => kept.push(r),
    };
    keep(0..SIGNATURE.len());
    let mut at = SIGNATURE.len();
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 8) else {
            break;
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(end) = at.checked_add(12).and_then(|e| e.checked_add(len)) else {
            break;
        };
        if end > bytes.len() {
            break;
        }
        if !DROPPED.iter().any(|t| head[4..8] == t[..]) {
            keep(at..end);
        }
        at = end;
    }
    if at < bytes.len() {
        keep(at..bytes.len());
    }
    kept
}

/// `bytes` restricted to `ranges`, read as one stream.
pub struct RangesReader<'a> {
    bytes: &'a [u8],
    ranges: Vec<Range<usize>>,
    /// Position in the virtual stream.
    pos: usize,
    len: usize,
}

impl<'a> RangesReader<'a> {
    /// A reader over `bytes` without the metadata chunks of a PNG (any other file whole).
    pub fn png_without_metadata(bytes: &'a [u8]) -> Self {
        Self::new(bytes, kept_ranges(bytes))
    }

    /// A reader over all of `bytes`.
    pub fn whole(bytes: &'a [u8]) -> Self {
        Self::new(bytes, std::iter::once(0..bytes.len()).collect())
    }

    /// A reader over the given ranges of `bytes`, in order.
    pub fn new(bytes: &'a [u8], ranges: Vec<Range<usize>>) -> Self {
        let len = ranges.iter().map(|r| r.len()).sum();
        RangesReader {
            bytes,
            ranges,
            pos: 0,
            len,
        }
    }

    /// Length of the virtual stream.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contiguous bytes from the current position to the end of its range.
    fn current(&self) -> &'a [u8] {
        let mut start = 0;
        for r in &self.ranges {
            if self.pos < start + r.len() {
                return &self.bytes[r.start + (self.pos - start)..r.end];
            }
            start += r.len();
        }
        &[]
    }
}

impl Read for RangesReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let src = self.current();
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl BufRead for RangesReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(self.current())
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.len);
    }
}

impl Seek for RangesReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        // Past the end stays at the end (reads then return 0).
        self.pos = target.min(self.len as i128) as usize;
        Ok(self.pos as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&[0, 0, 0, 0]); // CRC (not checked here)
        c
    }

    #[test]
    fn drops_only_icc_and_text_chunks() {
        let mut png = SIGNATURE.to_vec();
        let ihdr = chunk(b"IHDR", &[0; 13]);
        let iccp = chunk(b"iCCP", b"profile\0\0zlib...");
        let text = chunk(b"tEXt", b"k\0v");
        let exif = chunk(b"eXIf", b"MM\0*");
        let idat = chunk(b"IDAT", &[1, 2, 3]);
        let iend = chunk(b"IEND", &[]);
        for c in [&ihdr, &iccp, &text, &exif, &idat, &iend] {
            png.extend_from_slice(c);
        }
        let mut r = RangesReader::png_without_metadata(&png);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let mut want = SIGNATURE.to_vec();
        for c in [&ihdr, &exif, &idat, &iend] {
            want.extend_from_slice(c);
        }
        assert_eq!(out, want);
        assert_eq!(r.len(), want.len());
        // Seeking lands in the virtual stream.
        r.seek(SeekFrom::Start(8 + ihdr.len() as u64)).unwrap();
        let mut four = [0u8; 8];
        r.read_exact(&mut four).unwrap();
        assert_eq!(&four[4..], b"eXIf");
        assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), want.len() as u64);
        assert_eq!(r.read(&mut four).unwrap(), 0);
        assert!(r.seek(SeekFrom::Current(-(want.len() as i64) - 1)).is_err());
    }

    #[test]
    fn reads_the_size_from_ihdr() {
        let mut png = SIGNATURE.to_vec();
        let mut ihdr = 640u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&480u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png.extend_from_slice(&chunk(b"IHDR", &ihdr));
        assert_eq!(png_size(&png), Some((640, 480)));
        assert_eq!(png_size(&png[..20]), None);
        assert_eq!(png_size(b"GIF89a"), None);
    }

    #[test]
    fn damaged_or_foreign_files_pass_whole_past_the_damage() {
        assert_eq!(kept_ranges(b"GIF89a...."), vec![0..10]);
        let mut png = SIGNATURE.to_vec();
        png.extend_from_slice(&chunk(b"iCCP", b"x"));
        png.extend_from_slice(&[0xff, 0xff, 0xff, 0xf0, b'I', b'D', b'A', b'T', 1, 2]);
        let kept = kept_ranges(&png);
        assert_eq!(kept, vec![0..8, 21..png.len()]);
        assert_eq!(kept_ranges(&[]), vec![0..0]);
    }
}
