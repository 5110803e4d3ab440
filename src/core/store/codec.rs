//! The binary value of an embedding in the shared store (format version 2).
//!
//! Anyone who can write to the store can put any bytes under a key, so a value carries
//! everything needed to refuse it: the model and the image it belongs to, the geometry of
//! that image, and a checksum over all of it. A value is a set of named tensors (SAM has
//! one, `image_embeddings`; SAM 2 three, `image_embed`, `high_res_feats_0` and
//! `high_res_feats_1`, stored side by side):
//!
//! ```text
//! "SAME"  version u16 = 2  reserved u16 = 0
//! model fingerprint [16]  model name (u16 length, UTF-8)  image id (u16 length, ASCII)
//! width u32  height u32  resized width u32  resized height u32
//! tensor count u16, then per tensor: name (u16 length, UTF-8)  dtype u16 (0 = f32)
//!                                    rank u16  dims u32 x rank
//! the tensors' values, in header order
//! checksum [32]: blake3 of every byte before it (keyed with the shared secret when
//!                --embedding-store-secret-file is set)
//! ```
//!
//! Integers and floats are little-endian. A value is used only when every field matches
//! what the reading replica expects (model name, fingerprint, image id, tensor names and
//! shapes), its geometry is one the image limits admit and the resize rule produces, the
//! checksum holds and every value is finite; anything else is refused with a reason and
//! the caller treats it as a miss. Values of other format versions are refused the same
//! way (and live under other keys). Raw f32 keeps masks bit-identical across replicas.

use crate::runtime::embedding::{Embedding, EmbeddingData, EmbeddingTensor};
use crate::runtime::family::Resize;
use crate::runtime::image_limits::DecodeLimits;

const MAGIC: &[u8; 4] = b"SAME";
/// Bump when the layout changes; older values then read as misses.
pub const FORMAT_VERSION: u16 = 2;
/// Bytes of the trailing checksum.
pub const CHECKSUM_LEN: usize = 32;
const DTYPE_F32: u16 = 0;
/// Longest tensor rank a value may declare.
const MAX_RANK: usize = 8;
/// Name of SAM's one embedding tensor.
pub const SAM_EMBEDDING: &str = "image_embeddings";

/// One tensor a value holds: its name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name, e.g. `image_embeddings`.
    pub name: String,
    /// Shape, e.g. `[1, 256, 64, 64]`.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a value must match to be used: the model's name, fingerprint, encoder frame and
/// the tensors it stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTag {
    /// Model name.
    pub name: String,
    /// blake3 of the encoder weights and preprocessing (first 16 bytes).
    pub fingerprint: [u8; 16],
    /// Long side of the encoder frame; a value's resized geometry must follow from its
    /// original geometry by the resize rule for this size.
    pub input_size: usize,
    /// The family's resize rule (SAM: long side to `input_size`; SAM 2: stretched to
    /// `input_size` x `input_size`).
    pub resize: Resize,
    /// The tensors of one value, in stored order.
    pub tensors: Vec<TensorSpec>,
}

impl ModelTag {
    /// Hex of the fingerprint, used in store keys.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Exact byte length of a value of this model for `image_id` (a longer value in the
    /// store is refused without being read).
    pub fn value_len(&self, image_id: &str) -> usize {
        let header: usize = self
            .tensors
            .iter()
            .map(|t| 2 + t.name.len() + 2 + 2 + 4 * t.shape.len())
            .sum();
        let values: usize = self.tensors.iter().map(|t| t.len() * 4).sum();
        4 + 2
            + 2
            + 16
            + 2
            + self.name.len()
            + 2
            + image_id.len()
            + 16
            + 2
            + header
            + values
            + CHECKSUM_LEN
    }
}

/// Geometry of the image a value was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Original (upright) width.
    pub width: u32,
    /// Original (upright) height.
    pub height: u32,
    /// Width after the long-side resize.
    pub resized_width: u32,
    /// Height after the long-side resize.
    pub resized_height: u32,
}

/// How a value's checksum is made: plain blake3 (catches damaged and naively edited
/// values), or blake3 keyed with a secret the replicas share (also refuses values forged
/// by whoever can write to the store but does not hold the secret).
#[derive(Clone, Default)]
pub enum Seal {
    /// blake3 of the value.
    #[default]
    Checksum,
    /// blake3 keyed hash of the value.
    Keyed([u8; 32]),
}

impl Seal {
    /// A keyed seal derived from a shared secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        Seal::Keyed(blake3::derive_key(
            "samserve embedding store value v2",
            secret,
        ))
    }

    fn digest(&self, bytes: &[u8]) -> blake3::Hash {
        match self {
            Seal::Checksum => blake3::hash(bytes),
            Seal::Keyed(k) => blake3::keyed_hash(k, bytes),
        }
    }
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Seal::Checksum => "Checksum",
            Seal::Keyed(_) => "Keyed(***)",
        })
    }
}

/// What a value is checked against besides its tag: the seal and the image limits its
/// geometry must satisfy.
#[derive(Debug, Clone)]
pub struct ValueRules {
    /// Checksum kind.
    pub seal: Seal,
    /// Image limits (pixels, aspect ratio) of this server.
    pub limits: DecodeLimits,
}

impl Default for ValueRules {
    fn default() -> Self {
        ValueRules {
            seal: Seal::Checksum,
            limits: DecodeLimits::pixels_only(u64::MAX),
        }
    }
}

/// Serializes tensors (float32 values, in the tag's order and shapes) with their header
/// and checksum. `Err` when a tensor's length does not match its shape in the tag.
pub fn encode_tensors(
    tag: &ModelTag,
    image_id: &str,
    geometry: Geometry,
    tensors: &[&[f32]],
    seal: &Seal,
) -> Result<Vec<u8>, String> {
    if tensors.len() != tag.tensors.len() {
        return Err(format!(
            "{} tensors, the model stores {}",
            tensors.len(),
            tag.tensors.len()
        ));
    }
    for (t, spec) in tensors.iter().zip(&tag.tensors) {
        if t.len() != spec.len() {
            return Err(format!(
                "tensor {} has {} values, shape {:?} needs {}",
                spec.name,
                t.len(),
                spec.shape,
                spec.len()
            ));
        }
    }
    let mut out = Vec::with_capacity(tag.value_len(image_id));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&tag.fingerprint);
    put_str(&mut out, &tag.name);
    put_str(&mut out, image_id);
    for v in [
        geometry.width,
        geometry.height,
        geometry.resized_width,
        geometry.resized_height,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(tag.tensors.len() as u16).to_le_bytes());
    for spec in &tag.tensors {
        put_str(&mut out, &spec.name);
        out.extend_from_slice(&DTYPE_F32.to_le_bytes());
        out.extend_from_slice(&(spec.shape.len() as u16).to_le_bytes());
        for &d in &spec.shape {
            out.extend_from_slice(&(d as u32).to_le_bytes());
        }
    }
    for t in tensors {
        for v in t.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let sum = seal.digest(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
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
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// Parses and checks a value read for `image_id` of the model `tag`; returns its geometry
/// and its tensors' values in the tag's order.
pub fn decode_tensors(
    tag: &ModelTag,
    image_id: &str,
    bytes: &[u8],
    rules: &ValueRules,
) -> Result<(Geometry, Vec<Vec<f32>>), String> {
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
    if bytes.len() != tag.value_len(image_id) {
        return Err(format!(
            "{} bytes, a value of this model and image has {}",
            bytes.len(),
            tag.value_len(image_id)
        ));
    }
    // The length is exact, so the checksum sits at a known place: verify it before any
    // field is believed.
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let sum: [u8; CHECKSUM_LEN] = sum.try_into().map_err(|_| "value is truncated")?;
    if rules.seal.digest(body) != blake3::Hash::from(sum) {
        return Err(match rules.seal {
            Seal::Checksum => "checksum mismatch".into(),
            Seal::Keyed(_) => "checksum mismatch (or written without this store secret)".into(),
        });
    }
    let mut r = Reader(&body[6..]);
    if r.u16()? != 0 {
        return Err("reserved field is not zero".into());
    }
    if r.take(16)? != tag.fingerprint {
        return Err("written by another model build (fingerprint differs)".into());
    }
    if r.str()? != tag.name.as_bytes() {
        return Err("written for another model name".into());
    }
    if r.str()? != image_id.as_bytes() {
        return Err("written for another image".into());
    }
    let geometry = Geometry {
        width: r.u32()?,
        height: r.u32()?,
        resized_width: r.u32()?,
        resized_height: r.u32()?,
    };
    check_geometry(&geometry, tag.input_size, tag.resize, &rules.limits)?;
    if r.u16()? as usize != tag.tensors.len() {
        return Err("another number of tensors".into());
    }
    for spec in &tag.tensors {
        if r.str()? != spec.name.as_bytes() {
            return Err(format!("tensor {} missing or out of order", spec.name));
        }
        if r.u16()? != DTYPE_F32 {
            return Err(format!("tensor {}: unknown dtype", spec.name));
        }
        let rank = r.u16()? as usize;
        if rank > MAX_RANK || rank != spec.shape.len() {
            return Err(format!("tensor {}: rank {rank}", spec.name));
        }
        for &want in &spec.shape {
            let got = r.u32()?;
            if got as usize != want {
                return Err(format!(
                    "tensor {}: shape differs from {:?}",
                    spec.name, spec.shape
                ));
            }
        }
    }
    let mut tensors = Vec::with_capacity(tag.tensors.len());
    for spec in &tag.tensors {
        let raw = r.take(spec.len() * 4)?;
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!("tensor {}: value {i} is not finite", spec.name));
        }
        tensors.push(values);
    }
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok((geometry, tensors))
}

/// A stored geometry is used only when this server would have admitted the image (pixels,
/// aspect ratio) and the resized size is what the resize rule gives for it: prompts and
/// masks are mapped through these numbers, and mask buffers are sized by them.
pub fn check_geometry(
    g: &Geometry,
    input_size: usize,
    resize: Resize,
    limits: &DecodeLimits,
) -> Result<(), String> {
    limits
        .check_size("stored", g.width, g.height)
        .map_err(|e| format!("geometry {}x{}: {e}", g.width, g.height))?;
    let expected = resize.frame_size(g.width, g.height, input_size);
    if (g.resized_width, g.resized_height) != expected {
        return Err(format!(
            "resized geometry {}x{} does not follow from {}x{} (expected {}x{})",
            g.resized_width, g.resized_height, g.width, g.height, expected.0, expected.1
        ));
    }
    Ok(())
}

/// Serializes an embedding: its tensors in the tag's order (matched by name). Float16
/// caches write their values widened to float32, exactly, so replicas with either cache
/// dtype share a store.
pub fn encode(
    tag: &ModelTag,
    image_id: &str,
    e: &Embedding,
    seal: &Seal,
) -> Result<Vec<u8>, String> {
    let geometry = Geometry {
        width: e.width,
        height: e.height,
        resized_width: e.resized_width,
        resized_height: e.resized_height,
    };
    let values = tag
        .tensors
        .iter()
        .map(|spec| {
            e.tensor(&spec.name)
                .map(|t| t.data.to_f32())
                .ok_or_else(|| format!("the embedding has no tensor {}", spec.name))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let slices: Vec<&[f32]> = values.iter().map(|v| v.as_ref()).collect();
    encode_tensors(tag, image_id, geometry, &slices, seal)
}

/// Parses and checks an embedding value (see [`decode_tensors`]).
pub fn decode(
    tag: &ModelTag,
    image_id: &str,
    bytes: &[u8],
    rules: &ValueRules,
) -> Result<Embedding, String> {
    let (g, tensors) = decode_tensors(tag, image_id, bytes, rules)?;
    Ok(Embedding {
        tensors: tag
            .tensors
            .iter()
            .zip(tensors)
            .map(|(spec, values)| EmbeddingTensor {
                name: spec.name.as_str().into(),
                shape: spec.shape.clone(),
                data: EmbeddingData::F32(values),
            })
            .collect(),
        width: g.width,
        height: g.height,
        resized_width: g.resized_width,
        resized_height: g.resized_height,
    })
}

#[cfg(test)]
mod tests;
