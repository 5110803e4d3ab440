//! What clients download to decode on their side (hybrid decoding): a cached image
//! embedding as a `.npy` file (one tensor, SAM) or a `.npz` of named `.npy` arrays (SAM 2's
//! three tensors, as `numpy.savez` writes them: an uncompressed zip), and a model's decoder
//! ONNX file.
//!
//! The `.npy` layout is NumPy's format version 1.0: the magic `\x93NUMPY`, version 1.0, a
//! little-endian u16 header length, a Python-dict header padded with spaces to a multiple
//! of 64 bytes and ending in `\n`, then the C-order data. The dict may only hold `descr`,
//! `fortran_order` and `shape` (NumPy refuses other keys), so the geometry a client needs
//! to map prompts (original size, resized size, input length) travels in HTTP headers.

use bytes::Bytes;

use crate::error::{ApiError, ApiResult};
use crate::runtime::embedding::{Embedding, EmbeddingData, EmbeddingTensor};

/// Element type of a downloaded embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingDtype {
    /// IEEE-754 binary32, little-endian (`<f4`); the values the decoder sees.
    Float32,
    /// IEEE-754 binary16, little-endian (`<f2`), rounded to nearest even: half the bytes.
    Float16,
}

impl EmbeddingDtype {
    /// Parses the `dtype` query value; `None` means float32.
    pub fn parse(value: Option<&str>) -> ApiResult<Self> {
        match value {
            None | Some("float32") => Ok(EmbeddingDtype::Float32),
            Some("float16") => Ok(EmbeddingDtype::Float16),
            Some(other) => Err(ApiError::BadRequest(format!(
                "dtype '{}' is not supported (float32 or float16)",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// Name used in the query string and the `X-Samserve-Dtype` header.
    pub fn name(self) -> &'static str {
        match self {
            EmbeddingDtype::Float32 => "float32",
            EmbeddingDtype::Float16 => "float16",
        }
    }

    /// NumPy `descr` of the type.
    fn descr(self) -> &'static str {
        match self {
            EmbeddingDtype::Float32 => "<f4",
            EmbeddingDtype::Float16 => "<f2",
        }
    }
}

/// An embedding as a file: its tensor as `.npy` when it has one, else a `.npz` of all.
/// Returns the bytes and whether they are an `.npz`.
pub fn embedding_file(emb: &Embedding, dtype: EmbeddingDtype) -> (Vec<u8>, bool) {
    match &emb.tensors[..] {
        [one] => (tensor_npy(one, dtype), false),
        all => (
            zip_stored(
                &all.iter()
                    .map(|t| (format!("{}.npy", t.name), tensor_npy(t, dtype)))
                    .collect::<Vec<_>>(),
            ),
            true,
        ),
    }
}

/// An uncompressed zip archive of `files` (what `numpy.savez` writes, and `numpy.load`
/// reads as an `.npz`). Entries stay below 4 GiB, so no zip64 records are needed.
pub fn zip_stored(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    // 1980-01-01 00:00, the zip epoch: the archive's bytes depend only on its contents.
    const DOS_DATE: u16 = (1 << 5) | 1;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        let size = data.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // method: stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&DOS_DATE.to_le_bytes());
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes()); // compressed
            v.extend_from_slice(&size.to_le_bytes()); // uncompressed
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk number
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let (cd_offset, cd_size) = (out.len() as u32, central.len() as u32);
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // this disk
    out.extend_from_slice(&0u16.to_le_bytes()); // disk of the central directory
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out
}

/// Serializes one tensor as a `.npy` file of its shape.
pub fn tensor_npy(emb: &EmbeddingTensor, dtype: EmbeddingDtype) -> Vec<u8> {
    let shape = emb
        .shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({shape}), }}",
        dtype.descr()
    );
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let elem = match dtype {
        EmbeddingDtype::Float32 => 4,
        EmbeddingDtype::Float16 => 2,
    };
    let mut out = Vec::with_capacity(10 + header.len() + emb.data.len() * elem);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match dtype {
        EmbeddingDtype::Float32 => emb
            .data
            .to_f32()
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        // A float16 cache hands out its own bits: no second rounding.
        EmbeddingDtype::Float16 => match &emb.data {
            EmbeddingData::F16(bits) => bits
                .iter()
                .for_each(|b| out.extend_from_slice(&b.to_le_bytes())),
            EmbeddingData::F32(v) => v
                .iter()
                .for_each(|v| out.extend_from_slice(&f32_to_f16_bits(*v).to_le_bytes())),
        },
    }
    out
}

pub use crate::runtime::embedding::f32_to_f16_bits;

/// A file served as is, with a strong validator.
#[derive(Debug, Clone)]
pub struct ServedFile {
    /// The file's bytes.
    pub bytes: Bytes,
    /// Quoted strong ETag: the blake3 hex of the bytes.
    pub etag: String,
}

impl ServedFile {
    /// Wraps bytes and computes their ETag.
    pub fn new(bytes: Bytes) -> Self {
        let etag = format!("\"{}\"", blake3::hash(&bytes).to_hex());
        ServedFile { bytes, etag }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        // Reference bit patterns from the IEEE-754 binary16 definition.
        let cases: &[(f32, u16)] = &[
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.5, 0x3800),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00), // rounds up past the largest finite half
            (1.0e6, 0x7c00),
            (f32::INFINITY, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
            (6.103_515_6e-5, 0x0400),     // smallest normal half
            (5.960_464_5e-8, 0x0001),     // smallest subnormal half
            (2.980_232_2e-8, 0x0000),     // half of it: tie, rounds to even (zero)
            (4.470_348_4e-8, 0x0001),     // 0.75 of it rounds up
            (1.0 + 1.0 / 2048.0, 0x3c00), // tie between 1 and the next half: even
            (1.0 + 3.0 / 2048.0, 0x3c02), // tie: rounds to even upward
            (0.333_333_34, 0x3555),
        ];
        for &(v, bits) in cases {
            assert_eq!(f32_to_f16_bits(v), bits, "{v}");
        }
        assert_eq!(f32_to_f16_bits(f32::NAN) & 0x7c00, 0x7c00);
        assert_ne!(f32_to_f16_bits(f32::NAN) & 0x03ff, 0);
    }

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let emb = EmbeddingTensor {
            name: "image_embeddings".into(),
            data: EmbeddingData::F32((0..2 * 3 * 4).map(|i| i as f32).collect()),
            shape: vec![1, 2, 3, 4],
        };
        for dtype in [EmbeddingDtype::Float32, EmbeddingDtype::Float16] {
            let npy = tensor_npy(&emb, dtype);
            assert_eq!(&npy[..8], b"\x93NUMPY\x01\x00");
            let hlen = u16::from_le_bytes([npy[8], npy[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0);
            let header = std::str::from_utf8(&npy[10..10 + hlen]).unwrap();
            assert!(header.ends_with('\n'));
            assert!(header.contains("'shape': (1, 2, 3, 4)"), "{header}");
            let elem = if dtype == EmbeddingDtype::Float32 {
                4
            } else {
                2
            };
            assert_eq!(npy.len(), 10 + hlen + 24 * elem);
            let last = &npy[npy.len() - elem..];
            if elem == 4 {
                assert_eq!(last, 23.0f32.to_le_bytes());
            } else {
                assert_eq!(u16::from_le_bytes([last[0], last[1]]), 0x4dc0); // 23.0
            }
        }
    }

    #[test]
    fn one_tensor_is_npy_several_are_a_zip() {
        let t = |name: &str, n: usize| EmbeddingTensor {
            name: name.into(),
            shape: vec![1, n, 1, 1],
            data: EmbeddingData::F32(vec![1.5; n]),
        };
        let emb = |tensors| Embedding {
            tensors,
            width: 1,
            height: 1,
            resized_width: 1,
            resized_height: 1,
        };
        let (one, npz) = embedding_file(&emb(vec![t("a", 2)]), EmbeddingDtype::Float32);
        assert!(!npz && one.starts_with(b"\x93NUMPY"));
        let (zip, npz) = embedding_file(&emb(vec![t("a", 2), t("b", 3)]), EmbeddingDtype::Float32);
        assert!(npz && zip.starts_with(b"PK\x03\x04"));
        // The end record lists two entries; the first local header names "a.npy" and
        // carries the CRC-32 of its data.
        let end = &zip[zip.len() - 22..];
        assert_eq!(&end[..4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2);
        assert_eq!(&zip[30..35], b"a.npy");
        let data = tensor_npy(&t("a", 2), EmbeddingDtype::Float32);
        assert_eq!(&zip[14..18], &crc32fast::hash(&data).to_le_bytes());
        assert_eq!(&zip[35..35 + data.len()], &data[..]);
    }

    #[test]
    fn dtype_parse() {
        assert_eq!(
            EmbeddingDtype::parse(None).unwrap(),
            EmbeddingDtype::Float32
        );
        assert_eq!(
            EmbeddingDtype::parse(Some("float16")).unwrap(),
            EmbeddingDtype::Float16
        );
        assert!(EmbeddingDtype::parse(Some("int8")).is_err());
    }
}
