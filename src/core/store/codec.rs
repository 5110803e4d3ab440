//! The binary value of an embedding in the shared store.
//!
//! Layout (little-endian): magic `SAME`, format version (u16), dtype (u16, 0 = f32),
//! model fingerprint (16 bytes), original width and height, resized width and height
//! (u32 each), shape (4 x u32), model name length (u16) and UTF-8 name, then the values.
//! The header lets a replica refuse a value written by another model, another weights
//! file or another format instead of decoding garbage; raw f32 keeps masks bit-identical
//! across replicas.

use std::sync::Arc;

use crate::runtime::embedding::{Embedding, EmbeddingData, EmbeddingTensor};

const MAGIC: &[u8; 4] = b"SAME";
/// Bump when the layout changes; older values then read as misses.
pub const FORMAT_VERSION: u16 = 1;
const DTYPE_F32: u16 = 0;

/// What a value must match to be used: the model's name, fingerprint and embedding shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTag {
    /// Model name.
    pub name: String,
    /// blake3 of the encoder weights and preprocessing (first 16 bytes).
    pub fingerprint: [u8; 16],
    /// Embedding shape `[1, C, gh, gw]`.
    pub shape: [usize; 4],
    /// Name of the embedding's tensor.
    pub tensor: Arc<str>,
    /// Number of tensors of the model's embeddings. This format version holds one; the
    /// store skips models with more (SAM 2) until the multi-tensor version.
    pub tensors: usize,
}

impl ModelTag {
    /// Hex of the fingerprint, used in store keys.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Serializes an embedding with its header; `None` for an embedding of several tensors,
/// which this format version cannot hold.
pub fn encode(tag: &ModelTag, e: &Embedding) -> Option<Vec<u8>> {
    let [t] = &e.tensors[..] else {
        return None;
    };
    let name = tag.name.as_bytes();
    let mut out = Vec::with_capacity(64 + name.len() + t.data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&DTYPE_F32.to_le_bytes());
    out.extend_from_slice(&tag.fingerprint);
    for v in [e.width, e.height, e.resized_width, e.resized_height] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for d in &t.shape {
        out.extend_from_slice(&(*d as u32).to_le_bytes());
    }
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    // Always float32 on the wire: replicas with float32 and float16 caches share a store
    // (a float16 cache writes its rounded values widened, exactly).
    for v in t.data.to_f32().iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("value is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

/// Parses a value, checking it against the model it is read for.
pub fn decode(tag: &ModelTag, bytes: &[u8]) -> Result<Embedding, String> {
    if tag.tensors != 1 {
        return Err(format!(
            "format version {FORMAT_VERSION} holds one tensor, the model has {}",
            tag.tensors
        ));
    }
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC {
        return Err("bad magic".into());
    }
    let version = r.u16()?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, expected {FORMAT_VERSION}"
        ));
    }
    if r.u16()? != DTYPE_F32 {
        return Err("unknown dtype".into());
    }
    if r.take(16)? != tag.fingerprint {
        return Err("written by another model build (fingerprint differs)".into());
    }
    let (width, height, resized_width, resized_height) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
    let mut shape = [0usize; 4];
    for d in &mut shape {
        *d = r.u32()? as usize;
    }
    if shape != tag.shape {
        return Err(format!("shape {shape:?}, expected {:?}", tag.shape));
    }
    let name_len = r.u16()? as usize;
    if r.take(name_len)? != tag.name.as_bytes() {
        return Err("written for another model name".into());
    }
    let n: usize = shape.iter().product();
    if r.0.len() != n * 4 {
        return Err(format!("{} value bytes, expected {}", r.0.len(), n * 4));
    }
    let data =
        r.0.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
    Ok(Embedding {
        tensors: vec![EmbeddingTensor {
            name: tag.tensor.clone(),
            shape: shape.to_vec(),
            data: EmbeddingData::F32(data),
        }],
        width,
        height,
        resized_width,
        resized_height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> ModelTag {
        ModelTag {
            name: "m".into(),
            fingerprint: [7; 16],
            shape: [1, 2, 3, 4],
            tensor: "image_embeddings".into(),
            tensors: 1,
        }
    }

    fn emb() -> Embedding {
        Embedding {
            tensors: vec![EmbeddingTensor {
                name: "image_embeddings".into(),
                shape: vec![1, 2, 3, 4],
                data: EmbeddingData::F32((0..24).map(|i| i as f32 * 0.37 - 3.0).collect()),
            }],
            width: 640,
            height: 480,
            resized_width: 1024,
            resized_height: 768,
        }
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let mut e = emb();
        let EmbeddingData::F32(v) = &mut e.tensors[0].data else {
            unreachable!()
        };
        v[5] = f32::from_bits(0x0000_0001); // a subnormal survives too
        let bytes = encode(&tag(), &e).unwrap();
        assert_eq!(bytes.len(), 4 + 2 + 2 + 16 + 16 + 16 + 2 + 1 + 24 * 4);
        let back = decode(&tag(), &bytes).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&back.tensors[0].data.to_f32()),
            bits(&e.tensors[0].data.to_f32())
        );
        assert_eq!((back.width, back.height), (640, 480));
        assert_eq!((back.resized_width, back.resized_height), (1024, 768));
    }

    #[test]
    fn refuses_foreign_or_damaged_values() {
        let bytes = encode(&tag(), &emb()).unwrap();
        let mut other = tag();
        other.fingerprint[0] = 8;
        assert!(decode(&other, &bytes).unwrap_err().contains("fingerprint"));
        let mut other = tag();
        other.name = "n".into();
        assert!(decode(&other, &bytes).is_err());
        let mut other = tag();
        other.shape = [1, 2, 4, 3];
        assert!(decode(&other, &bytes).unwrap_err().contains("shape"));
        assert!(decode(&tag(), &bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&tag(), &bytes[..10]).is_err());
        let mut bad = bytes.clone();
        bad[4] = 9;
        assert!(decode(&tag(), &bad).unwrap_err().contains("version"));
        assert!(decode(&tag(), b"[0.1, 0.2]").is_err());
    }
}
