//! The mask decoder session: prompts in the encoder's frame and an embedding in, predicted
//! IoUs and low-resolution logits of the requested masks out. Inputs and outputs are fed
//! and read by the names the export uses ([`super::signature::DecoderBinding`]).

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::TensorRef;

use super::embedding::Embedding;
use super::model::{DecoderPrompt, MaskOutput, ModelSpec, TokenOutput};

/// How a batch of prompts may pass `has_mask_input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskFlag {
    /// One flag per prompt (`[B]`, or `[B, 1]`).
    PerRow,
    /// One flag for the whole call (`[1]`): the graph multiplies a `[B]` flag against the
    /// `[B, C, h, w]` mask embedding, which broadcasts only for B = 1 (samexporter's SAM 2
    /// decoder). Prompts with and without a mask input then go in separate calls.
    Uniform,
}

/// A mask decoder session. Each decoder worker owns one.
pub struct DecoderSession {
    pub(super) session: Session,
    pub(super) spec: Arc<ModelSpec>,
    /// Fetches only the IoU and low-res outputs: the official graph's full-resolution
    /// `masks` covers all four tokens, while the server upsamples only the tokens it
    /// returns.
    pub(super) low_res_only: RunOptions<HasSelectedOutputs>,
    /// The same for the warm-up probes, with ONNX Runtime's own logging off: a probe that
    /// the graph refuses (a batch shape it cannot broadcast) is an answer, not an error.
    pub(super) quiet: RunOptions<HasSelectedOutputs>,
    /// Whether a batch without mask inputs may pass one all-zero `mask_input` row for all
    /// its prompts. The official graph computes the mask branch for every row and then
    /// multiplies it by `has_mask_input = 0`; with one row it broadcasts, so the branch runs
    /// once per call instead of once per prompt. Enabled only after the warm-up shows the
    /// graph accepts it and answers identically.
    pub(super) shared_empty_mask: bool,
}

pub(super) fn selected_outputs(
    spec: &ModelSpec,
    quiet: bool,
) -> anyhow::Result<RunOptions<HasSelectedOutputs>> {
    let [a, b] = &spec.decoder.read;
    let mut opts = RunOptions::new()
        .map_err(|e| anyhow!("{e}"))?
        .with_outputs(OutputSelector::no_default().with(a).with(b));
    if quiet {
        opts.set_log_level(ort::logging::LogLevel::Fatal)
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(opts)
}

pub(super) struct RawDecoderOutput {
    pub iou: Vec<f32>,
    pub tokens: usize,
    pub low_res: Vec<f32>,
    pub low_res_hw: [usize; 2],
}

fn tensor_input(shape: Vec<usize>, data: &[f32]) -> anyhow::Result<SessionInputValue<'_>> {
    TensorRef::from_array_view((shape, data))
        .map(SessionInputValue::from)
        .map_err(|e| anyhow!("{e}"))
}

/// A prompt the warm-up probes use: one click (SAM: with the padding point it expects).
pub(super) fn probe_prompt(
    spec: &ModelSpec,
    at: [f32; 2],
    mask: Option<Arc<Vec<f32>>>,
) -> DecoderPrompt {
    let (mut coords, mut labels) = (vec![at], vec![1.0]);
    if !spec.kind.graph_pads_points() {
        coords.push([0.0, 0.0]);
        labels.push(-1.0);
    }
    DecoderPrompt {
        coords,
        labels,
        mask_input: mask,
        output: MaskOutput::Multimask,
    }
}

impl DecoderSession {
    /// The spec this session runs for.
    pub fn spec(&self) -> &Arc<ModelSpec> {
        &self.spec
    }

    pub(super) fn probe(&mut self, emb: &Embedding) -> anyhow::Result<([usize; 2], usize)> {
        let prompt = probe_prompt(&self.spec, [10.0, 20.0], None);
        let raw = self.run_raw(emb, &[prompt], MaskFlag::PerRow)?;
        Ok((raw.low_res_hw, raw.tokens))
    }

    /// How this graph takes `has_mask_input` in a batch: per prompt when a batch mixing a
    /// prompt with and one without a mask input answers each as when it runs alone, one
    /// flag per call when only a uniform batch does; `None` when batches do not work.
    pub(super) fn probe_mask_flag(&mut self, emb: &Embedding) -> Option<MaskFlag> {
        let [mh, mw] = self.spec.low_res_size;
        let mask: Vec<f32> = (0..mh * mw)
            .map(|i| ((i % 97) as f32 - 48.0) / 8.0)
            .collect();
        let prompts = vec![
            probe_prompt(&self.spec, [10.0, 20.0], None),
            probe_prompt(&self.spec, [30.0, 5.0], Some(Arc::new(mask))),
        ];
        let close = |a: &RawDecoderOutput, b: &RawDecoderOutput, row: usize| {
            let t = a.tokens;
            let plane = a.low_res_hw[0] * a.low_res_hw[1];
            b.iou
                .iter()
                .zip(&a.iou[row * t..(row + 1) * t])
                .all(|(x, y)| (x - y).abs() <= 1e-4)
                && b.low_res
                    .iter()
                    .zip(&a.low_res[row * t * plane..(row + 1) * t * plane])
                    .all(|(x, y)| (x - y).abs() <= 1e-3 * (1.0 + y.abs()))
        };
        let alone: Vec<RawDecoderOutput> = prompts
            .iter()
            .filter_map(|p| {
                self.run_quiet(emb, std::slice::from_ref(p), MaskFlag::PerRow)
                    .ok()
            })
            .collect();
        if alone.len() != 2 {
            return None;
        }
        if let Ok(both) = self.run_quiet(emb, &prompts, MaskFlag::PerRow) {
            if close(&both, &alone[0], 0) && close(&both, &alone[1], 1) {
                return Some(MaskFlag::PerRow);
            }
        }
        let plain = [
            prompts[0].clone(),
            probe_prompt(&self.spec, [30.0, 5.0], None),
        ];
        let alone2 = self.run_quiet(emb, &plain[1..], MaskFlag::PerRow).ok()?;
        let both = self.run_quiet(emb, &plain, MaskFlag::Uniform).ok()?;
        (close(&both, &alone[0], 0) && close(&both, &alone2, 1)).then_some(MaskFlag::Uniform)
    }

    /// Tries the one-row empty `mask_input` on a batch of two prompts; enables it when the
    /// graph accepts it and the answers are bit-identical to the full-batch input.
    pub(super) fn probe_shared_empty_mask(&mut self, emb: &Embedding) -> bool {
        if !self.spec.decoder_batched {
            return false;
        }
        let prompts = vec![
            probe_prompt(&self.spec, [10.0, 20.0], None),
            probe_prompt(&self.spec, [30.0, 5.0], None),
        ];
        let flag = self.spec.mask_flag;
        self.shared_empty_mask = false;
        let Ok(full) = self.run_quiet(emb, &prompts, flag) else {
            return false;
        };
        self.shared_empty_mask = true;
        let same = match self.run_quiet(emb, &prompts, flag) {
            Ok(shared) => shared.iou == full.iou && shared.low_res == full.low_res,
            Err(_) => false,
        };
        self.shared_empty_mask = same;
        same
    }

    /// Decodes prompts against one embedding, at most `max_batch` prompts per ONNX call.
    /// Prompts are padded to a common point count with `(0, 0, -1)`; decoders with a fixed
    /// batch of one run one by one; with [`MaskFlag::Uniform`], prompts with and without a
    /// mask input run in separate calls.
    ///
    /// `on_call` is told the batch size of every ONNX call.
    pub fn decode(
        &mut self,
        emb: &Embedding,
        prompts: &[DecoderPrompt],
        max_batch: usize,
        mut on_call: impl FnMut(usize),
    ) -> anyhow::Result<Vec<Vec<TokenOutput>>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let max_batch = if self.spec.decoder_batched {
            max_batch.max(1)
        } else {
            1
        };
        let groups: Vec<Vec<usize>> = if self.spec.mask_flag == MaskFlag::Uniform && max_batch > 1 {
            let (with, without): (Vec<usize>, Vec<usize>) =
                (0..prompts.len()).partition(|&i| prompts[i].mask_input.is_some());
            vec![without, with]
        } else {
            vec![(0..prompts.len()).collect()]
        };
        let mut out: Vec<Option<Vec<TokenOutput>>> = prompts.iter().map(|_| None).collect();
        for group in groups {
            for chunk in group.chunks(max_batch) {
                on_call(chunk.len());
                let batch: Vec<DecoderPrompt> = chunk.iter().map(|&i| prompts[i].clone()).collect();
                for (&i, o) in chunk.iter().zip(self.decode_batch(emb, &batch)?) {
                    out[i] = Some(o);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every prompt decoded"))
            .collect())
    }

    fn decode_batch(
        &mut self,
        emb: &Embedding,
        prompts: &[DecoderPrompt],
    ) -> anyhow::Result<Vec<Vec<TokenOutput>>> {
        let raw = self.run_raw(emb, prompts, self.spec.mask_flag)?;
        let [mh, mw] = raw.low_res_hw;
        if self.spec.low_res_size[0] > 0 && raw.low_res_hw != self.spec.low_res_size {
            bail!(
                "decoder returned {mh}x{mw} low-res masks, {:?} at warm-up",
                self.spec.low_res_size
            );
        }
        let t = raw.tokens;
        if self.spec.mask_tokens > 0 && t != self.spec.mask_tokens {
            bail!(
                "decoder returned {t} masks per prompt, {} at warm-up",
                self.spec.mask_tokens
            );
        }
        let first = self.spec.first_token;
        let plane = mh * mw;
        let mut results = Vec::with_capacity(prompts.len());
        for (b, p) in prompts.iter().enumerate() {
            let scores = &raw.iou[b * t..(b + 1) * t];
            let logits =
                |col: usize| &raw.low_res[(b * t + col) * plane..(b * t + col + 1) * plane];
            let cols: Vec<usize> = match p.output {
                MaskOutput::Multimask if t >= 3 => (t - 3..t).collect(),
                MaskOutput::Multimask => vec![0],
                MaskOutput::Single => {
                    let planes: Vec<&[f32]> = (0..t).map(logits).collect();
                    vec![self.spec.single_mask.pick(first, scores, &planes)]
                }
            };
            results.push(
                cols.into_iter()
                    .map(|c| TokenOutput {
                        token: c + first,
                        score: scores[c],
                        low_res: logits(c).to_vec(),
                    })
                    .collect(),
            );
        }
        Ok(results)
    }

    pub(super) fn run_raw(
        &mut self,
        emb: &Embedding,
        prompts: &[DecoderPrompt],
        flag: MaskFlag,
    ) -> anyhow::Result<RawDecoderOutput> {
        self.run_with(emb, prompts, flag, false)
    }

    fn run_quiet(
        &mut self,
        emb: &Embedding,
        prompts: &[DecoderPrompt],
        flag: MaskFlag,
    ) -> anyhow::Result<RawDecoderOutput> {
        self.run_with(emb, prompts, flag, true)
    }

    fn run_with(
        &mut self,
        emb: &Embedding,
        prompts: &[DecoderPrompt],
        flag: MaskFlag,
        quiet: bool,
    ) -> anyhow::Result<RawDecoderOutput> {
        let spec = self.spec.clone();
        let binding = &spec.decoder;
        let b = prompts.len();
        let n = prompts.iter().map(|p| p.coords.len()).max().unwrap_or(0);
        // The official SAM decoder always gets at least its padding point.
        let n = if spec.kind.graph_pads_points() {
            n
        } else {
            n.max(1)
        };
        let mut coords = vec![0f32; b * n * 2];
        let mut labels = vec![-1f32; b * n];
        for (i, p) in prompts.iter().enumerate() {
            for (j, (c, l)) in p.coords.iter().zip(&p.labels).enumerate() {
                coords[(i * n + j) * 2] = c[0];
                coords[(i * n + j) * 2 + 1] = c[1];
                labels[i * n + j] = *l;
            }
        }
        let [mh, mw] = if spec.low_res_size[0] > 0 {
            spec.low_res_size
        } else {
            // Before the probe we only know SAM's rule: 4x the embedding grid.
            let s = &emb.primary().shape;
            [s[2] * 4, s[3] * 4]
        };
        let any_mask = prompts.iter().any(|p| p.mask_input.is_some());
        if flag == MaskFlag::Uniform && any_mask && prompts.iter().any(|p| p.mask_input.is_none()) {
            bail!("a call mixes prompts with and without mask_input on a one-flag decoder");
        }
        let mask_rows = if self.shared_empty_mask && !any_mask {
            1
        } else {
            b
        };
        let mut mask_input = vec![0f32; mask_rows * mh * mw];
        let mut has_mask = vec![0f32; b];
        for (i, p) in prompts.iter().enumerate() {
            if let Some(m) = &p.mask_input {
                if m.len() != mh * mw {
                    bail!("mask input has {} values, expected {}", m.len(), mh * mw);
                }
                mask_input[i * mh * mw..(i + 1) * mh * mw].copy_from_slice(m);
                has_mask[i] = 1.0;
            }
        }
        let flags = match flag {
            MaskFlag::PerRow => b,
            MaskFlag::Uniform => 1,
        };
        has_mask.truncate(flags);
        let flag_shape = if binding.has_mask_rank == 2 {
            vec![flags, 1]
        } else {
            vec![flags]
        };
        let orig = [emb.height as f32, emb.width as f32];
        let values: Vec<Cow<'_, [f32]>> = emb.tensors.iter().map(|t| t.data.to_f32()).collect();
        let t = tensor_input;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
        for ((name, tensor), v) in binding.embeddings.iter().zip(&emb.tensors).zip(&values) {
            inputs.push((name.as_str().into(), t(tensor.shape.clone(), v)?));
        }
        inputs.push((
            binding.point_coords.as_str().into(),
            t(vec![b, n, 2], &coords)?,
        ));
        let labels_i64: Vec<i64>;
        if binding.labels_int64 {
            labels_i64 = labels.iter().map(|&l| l as i64).collect();
            inputs.push((
                binding.point_labels.as_str().into(),
                TensorRef::from_array_view((vec![b, n], &labels_i64[..]))
                    .map(SessionInputValue::from)
                    .map_err(|e| anyhow!("{e}"))?,
            ));
        } else {
            inputs.push((
                binding.point_labels.as_str().into(),
                t(vec![b, n], &labels)?,
            ));
        }
        inputs.push((
            binding.mask_input.as_str().into(),
            t(vec![mask_rows, 1, mh, mw], &mask_input)?,
        ));
        inputs.push((
            binding.has_mask_input.as_str().into(),
            t(flag_shape, &has_mask)?,
        ));
        if let Some(name) = &binding.orig_im_size {
            inputs.push((name.as_str().into(), t(vec![2], &orig)?));
        }
        let options = if quiet {
            &self.quiet
        } else {
            &self.low_res_only
        };
        let outputs = self
            .session
            .run_with_options(inputs, options)
            .map_err(|e| anyhow!("decoder run: {e}"))?;
        let (iou_shape, iou) = outputs[binding.iou.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{}: {e}", binding.iou))?;
        let tokens = *iou_shape.last().unwrap_or(&0) as usize;
        let (lr_shape, low_res) = outputs[binding.masks.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{}: {e}", binding.masks))?;
        let lr: Vec<usize> = lr_shape.iter().map(|d| *d as usize).collect();
        if lr.len() != 4 || lr[0] != b || lr[1] != tokens || iou.len() != b * tokens {
            bail!(
                "{} has shape {lr:?} and {} {:?}, expected [{b}, {tokens}, h, w] and [{b}, {tokens}]",
                binding.masks,
                binding.iou,
                iou_shape
            );
        }
        Ok(RawDecoderOutput {
            iou: iou.to_vec(),
            tokens,
            low_res: low_res.to_vec(),
            low_res_hw: [lr[2], lr[3]],
        })
    }
}
