//! An image embedding as the cache keeps it: float32 as the encoder returns it, or
//! float16 (`--cache-dtype float16`) for half the bytes per cached image.
//!
//! The decoder graph takes float32, so a float16 embedding is widened for each decoder
//! call (a few ms per million values); the cache then holds twice the images per budget.

use std::borrow::Cow;

/// Values of an embedding.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingData {
    /// As the encoder returned them.
    F32(Vec<f32>),
    /// IEEE binary16 bits, rounded to nearest (ties to even) from the encoder's float32.
    F16(Vec<u16>),
}

impl EmbeddingData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingData::F32(v) => v.len(),
            EmbeddingData::F16(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the values take in memory.
    pub fn bytes(&self) -> usize {
        match self {
            EmbeddingData::F32(v) => v.len() * 4,
            EmbeddingData::F16(v) => v.len() * 2,
        }
    }

    /// The values as float32 (borrowed when they already are).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            EmbeddingData::F32(v) => Cow::Borrowed(v),
            EmbeddingData::F16(v) => Cow::Owned(v.iter().map(|b| f16_bits_to_f32(*b)).collect()),
        }
    }

    /// The values rounded to float16 (unchanged when they already are).
    pub fn into_f16(self) -> Self {
        match self {
            EmbeddingData::F32(v) => {
                EmbeddingData::F16(v.iter().map(|x| f32_to_f16_bits(*x)).collect())
            }
            f16 => f16,
        }
    }
}

/// One named tensor of an embedding: SAM's `image_embeddings`, or SAM 2's `image_embed`,
/// `high_res_feats_0` and `high_res_feats_1`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingTensor {
    /// Canonical name (the family's, whatever the exporter called it).
    pub name: std::sync::Arc<str>,
    /// Row-major shape of `data`, `[1, C, h, w]`.
    pub shape: Vec<usize>,
    /// The values.
    pub data: EmbeddingData,
}

impl EmbeddingTensor {
    /// Number of values the shape holds.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A computed image embedding (one or more named tensors) plus the geometry needed to map
/// prompts and masks.
#[derive(Debug)]
pub struct Embedding {
    /// The tensors, in the model's order (see `ModelSpec::tensors`).
    pub tensors: Vec<EmbeddingTensor>,
    /// Original (upright) image width.
    pub width: u32,
    /// Original (upright) image height.
    pub height: u32,
    /// Width of the image in the encoder's frame (after the resize).
    pub resized_width: u32,
    /// Height of the image in the encoder's frame.
    pub resized_height: u32,
}

impl Embedding {
    /// Bytes the values take in memory (all tensors).
    pub fn data_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.data.bytes()).sum()
    }

    /// Approximate heap size, for the cache's byte budget.
    pub fn weight_bytes(&self) -> usize {
        weight_for(self.data_bytes(), self.tensors.len())
    }

    /// The same embedding with float16 values.
    pub fn into_f16(self) -> Self {
        Embedding {
            tensors: self
                .tensors
                .into_iter()
                .map(|t| EmbeddingTensor {
                    data: t.data.into_f16(),
                    ..t
                })
                .collect(),
            ..self
        }
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&EmbeddingTensor> {
        self.tensors.iter().find(|t| &*t.name == name)
    }

    /// The first tensor (SAM's only one; SAM 2's `image_embed`).
    pub fn primary(&self) -> &EmbeddingTensor {
        &self.tensors[0]
    }
}

/// The cache weight of an embedding of `tensors` tensors holding `data_bytes` of values:
/// the values plus the struct and per-tensor bookkeeping.
pub fn weight_for(data_bytes: usize, tensors: usize) -> usize {
    data_bytes + 128 + tensors * 96
}

/// Widens IEEE binary16 bits to f32 (exact: every half is a float).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x03ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        // Subnormal half: value = man * 2^-24, a normal float.
        (0, _) => {
            let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Converts an f32 to IEEE binary16 bits, rounding to nearest, ties to even (what NumPy's
/// `astype(np.float16)` does); overflow gives infinity, NaN stays NaN.
pub fn f32_to_f16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let man = x & 0x007f_ffff;
    if exp == 0xff {
        // Infinity, or NaN with a quiet bit kept so it stays NaN.
        return sign
            | 0x7c00
            | if man != 0 {
                0x0200 | (man >> 13) as u16
            } else {
                0
            };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal half (or zero): shift the full significand, rounding half to even.
        if e < -10 {
            return sign;
        }
        let m = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = rem > mid || (rem == mid && (half & 1) == 1);
        return sign | (half + round as u32) as u16;
    }
    let half = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    let round = rem > 0x1000 || (rem == 0x1000 && (half & 1) == 1);
    // A carry out of the significand correctly bumps the exponent (up to infinity).
    sign | (half + round as u32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_half_round_trips() {
        for h in 0..=u16::MAX {
            if (h >> 10) & 0x1f == 0x1f {
                continue; // infinities and NaNs are checked below
            }
            let f = f16_bits_to_f32(h);
            assert_eq!(f32_to_f16_bits(f), h, "{h:#06x} -> {f}");
        }
        assert_eq!(f16_bits_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_bits_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_bits_to_f32(0x7e00).is_nan());
        assert_eq!(f16_bits_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_bits_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_bits_to_f32(0x3c00), 1.0);
        assert_eq!(f16_bits_to_f32(0xc000), -2.0);
    }

    #[test]
    fn float16_halves_every_tensor() {
        let e = Embedding {
            tensors: vec![
                EmbeddingTensor {
                    name: "a".into(),
                    shape: vec![1, 10, 10, 10],
                    data: EmbeddingData::F32(vec![0.5; 1000]),
                },
                EmbeddingTensor {
                    name: "b".into(),
                    shape: vec![1, 2, 10, 10],
                    data: EmbeddingData::F32(vec![-2.0; 200]),
                },
            ],
            width: 1,
            height: 1,
            resized_width: 1,
            resized_height: 1,
        };
        assert_eq!(e.data_bytes(), 4800);
        let h = e.into_f16();
        assert_eq!(h.data_bytes(), 2400);
        assert_eq!(h.tensors[0].data.to_f32().as_ref(), &[0.5; 1000][..]);
        assert_eq!(
            h.tensor("b").unwrap().data.to_f32().as_ref(),
            &[-2.0; 200][..]
        );
    }
}
