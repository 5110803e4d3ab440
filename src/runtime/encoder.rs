//! The image encoder session: a prepared image in, the embedding's named tensors out.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use super::embedding::{Embedding, EmbeddingData, EmbeddingTensor};
use super::model::ModelSpec;
use super::preprocess::PreparedImage;

/// The image encoder session of one model. Not shared: it lives on the encoder thread.
pub struct EncoderSession {
    pub(super) session: Session,
    pub(super) spec: Arc<ModelSpec>,
}

/// One output of a run: its dims and values.
type Output = (Vec<usize>, Vec<f32>);

impl EncoderSession {
    /// Whether several images go through one call.
    pub fn batched(&self) -> bool {
        self.spec.encoder_batched
    }

    /// Encodes several images: in one call when the encoder's batch axis is dynamic (all
    /// NCHW inputs share the `[3, L, L]` shape), else one by one.
    pub fn encode_many(&mut self, imgs: &[PreparedImage]) -> Vec<anyhow::Result<Embedding>> {
        if imgs.len() < 2 || !self.spec.encoder_batched {
            return imgs.iter().map(|i| self.encode(i)).collect();
        }
        match self.encode_stacked(imgs) {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => imgs
                .iter()
                .map(|_| Err(anyhow!("batched encode failed: {e:#}")))
                .collect(),
        }
    }

    /// Runs the encoder graph on one input tensor; returns each of the family's tensors
    /// (dims and values), fetched by the output names the export uses.
    fn run(&mut self, shape: Vec<usize>, data: &[f32]) -> anyhow::Result<Vec<Output>> {
        let input = TensorRef::from_array_view((shape, data)).map_err(|e| anyhow!("{e}"))?;
        let outputs = self
            .session
            .run(vec![(
                Cow::Borrowed(self.spec.encoder_input_name.as_str()),
                SessionInputValue::from(input),
            )])
            .map_err(|e| anyhow!("encoder run: {e}"))?;
        self.spec
            .encoder_output_names
            .iter()
            .map(|name| {
                let (shape, values) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| anyhow!("encoder output {name}: {e}"))?;
                Ok((shape.iter().map(|d| *d as usize).collect(), values.to_vec()))
            })
            .collect()
    }

    fn encode_stacked(&mut self, imgs: &[PreparedImage]) -> anyhow::Result<Vec<Embedding>> {
        let mut shape = imgs[0].shape.clone();
        shape[0] = imgs.len();
        let data: Vec<f32> = imgs.iter().flat_map(|i| i.tensor.iter().copied()).collect();
        let outs = self.run(shape, &data)?;
        let mut per_image: Vec<Vec<EmbeddingTensor>> = imgs.iter().map(|_| Vec::new()).collect();
        for ((dims, values), name) in outs.into_iter().zip(&self.spec.tensor_names) {
            let [b, c, h, w] = dims[..] else {
                bail!("batched encoder output {name} has shape {dims:?}");
            };
            if b != imgs.len() {
                bail!(
                    "batched encoder returned {b} embeddings for {} images",
                    imgs.len()
                );
            }
            let per = c * h * w;
            for (k, tensors) in per_image.iter_mut().enumerate() {
                tensors.push(EmbeddingTensor {
                    name: name.clone(),
                    shape: vec![1, c, h, w],
                    data: EmbeddingData::F32(values[k * per..(k + 1) * per].to_vec()),
                });
            }
        }
        Ok(imgs
            .iter()
            .zip(per_image)
            .map(|(img, tensors)| embedding_of(img, tensors))
            .collect())
    }

    /// Runs the encoder on a prepared image.
    pub fn encode(&mut self, img: &PreparedImage) -> anyhow::Result<Embedding> {
        let outs = self.run(img.shape.clone(), &img.tensor)?;
        let mut tensors = Vec::with_capacity(outs.len());
        for ((dims, values), name) in outs.into_iter().zip(&self.spec.tensor_names) {
            let shape = match dims.as_slice() {
                [1, c, h, w] => vec![1, *c, *h, *w],
                [c, h, w] => vec![1, *c, *h, *w],
                other => bail!("encoder output {name} has shape {other:?}, expected [1, C, h, w]"),
            };
            tensors.push(EmbeddingTensor {
                name: name.clone(),
                shape,
                data: EmbeddingData::F32(values),
            });
        }
        Ok(embedding_of(img, tensors))
    }
}

fn embedding_of(img: &PreparedImage, tensors: Vec<EmbeddingTensor>) -> Embedding {
    Embedding {
        tensors,
        width: img.width,
        height: img.height,
        resized_width: img.resized_width,
        resized_height: img.resized_height,
    }
}
