//! ONNX sessions of a text model: the text tower (token ids -> unit sentence vector) and
//! the region tower (region features -> unit vector in the same space).

use std::borrow::Cow;

use anyhow::{anyhow, bail};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use super::features::N_FEATURES;

/// The text tower: `input_ids`, `attention_mask` (int64 `[1, T]`) -> `[1, D]`.
pub struct TextTower {
    session: Session,
    output: String,
}

impl TextTower {
    /// Wraps a session, checking its signature.
    pub fn new(session: Session) -> anyhow::Result<Self> {
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for want in ["input_ids", "attention_mask"] {
            if !names.contains(&want) {
                bail!("text encoder has inputs {names:?}, expected input_ids and attention_mask");
            }
        }
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| anyhow!("text encoder has no output"))?;
        Ok(TextTower { session, output })
    }

    /// The L2-normalized embedding of one tokenized phrase.
    pub fn embed(&mut self, ids: &[i64]) -> anyhow::Result<Vec<f32>> {
        let mask = vec![1i64; ids.len()];
        let shape = vec![1usize, ids.len()];
        let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                TensorRef::from_array_view((shape.clone(), ids))
                    .map_err(|e| anyhow!("{e}"))?
                    .into(),
            ),
            (
                "attention_mask".into(),
                TensorRef::from_array_view((shape, mask.as_slice()))
                    .map_err(|e| anyhow!("{e}"))?
                    .into(),
            ),
        ];
        let out = self
            .session
            .run(inputs)
            .map_err(|e| anyhow!("text encoder run: {e}"))?;
        let (_, v) = out[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("text encoder output: {e}"))?;
        Ok(normalized(v.to_vec()))
    }
}

/// The region tower: `features` float32 `[N, N_FEATURES]` -> `[N, D]`.
pub struct RegionTower {
    session: Session,
    input: String,
    output: String,
}

impl RegionTower {
    /// Wraps a session.
    pub fn new(session: Session) -> anyhow::Result<Self> {
        let input = session
            .inputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| anyhow!("region encoder has no input"))?;
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| anyhow!("region encoder has no output"))?;
        Ok(RegionTower {
            session,
            input,
            output,
        })
    }

    /// Unit embeddings of a batch of region feature vectors.
    pub fn embed(&mut self, features: &[[f32; N_FEATURES]]) -> anyhow::Result<Vec<Vec<f32>>> {
        if features.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<f32> = features.iter().flatten().copied().collect();
        let shape = vec![features.len(), N_FEATURES];
        let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![(
            Cow::Owned(self.input.clone()),
            TensorRef::from_array_view((shape, flat.as_slice()))
                .map_err(|e| anyhow!("{e}"))?
                .into(),
        )];
        let out = self
            .session
            .run(inputs)
            .map_err(|e| anyhow!("region encoder run: {e}"))?;
        let (shape, v) = out[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("region encoder output: {e}"))?;
        let d = *shape.last().unwrap_or(&0) as usize;
        if d == 0 || v.len() != d * features.len() {
            bail!("region encoder output shape {shape:?}");
        }
        Ok(v.chunks(d).map(|c| normalized(c.to_vec())).collect())
    }
}

pub(crate) fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Cosine of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
