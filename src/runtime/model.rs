//! ONNX sessions of a SAM model: signature detection, encoder and decoder runs.
//!
//! Names and shapes are read from the sessions, so SAM variants with other embedding
//! widths, grids or input lengths load without code changes. Signatures that are not
//! understood are refused at start with a message that lists what was found.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::TensorRef;

use super::device::Device;
pub use super::embedding::{Embedding, EmbeddingData};
use super::manifest::{Manifest, ModelFiles};
use super::preprocess::PreparedImage;

/// How the encoder wants its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderInput {
    /// `[1, 3, L, L]` float32, normalized with mean/std, zero-padded bottom-right (official).
    NchwNormalized,
    /// `[h, w, 3]` float32 0-255, resized to the long side; the graph normalizes and pads
    /// (samexporter style).
    HwcRaw,
}

/// Everything the server needs to know about a loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSpec {
    /// Name used in requests.
    pub name: String,
    /// Family from the manifest.
    pub family: String,
    /// Description from the manifest.
    pub description: String,
    /// Weight precision from the manifest (`fp32`, `int8`).
    pub precision: String,
    /// Where the files came from.
    pub source: String,
    /// Long-side length L.
    pub input_size: usize,
    /// RGB mean (0-255 units).
    pub pixel_mean: [f32; 3],
    /// RGB std (0-255 units).
    pub pixel_std: [f32; 3],
    /// Encoder input layout.
    pub encoder_input: EncoderInput,
    #[serde(skip)]
    encoder_input_name: String,
    #[serde(skip)]
    encoder_output_name: String,
    /// Embedding shape `[1, C, gh, gw]`.
    pub embedding_shape: [usize; 4],
    /// Low-resolution mask size `(h, w)` of `mask_input` and `low_res_masks`.
    pub low_res_size: [usize; 2],
    /// Where the encoder runs (`cpu`, `cuda:N`).
    pub encoder_device: String,
    /// Where the decoder runs (`cpu`, `cuda:N`).
    pub decoder_device: String,
    /// Whether the encoder accepts several images per call (axis 0 dynamic).
    pub encoder_batched: bool,
    /// Whether the decoder accepts a batch of prompts per call (axis 0 dynamic).
    pub decoder_batched: bool,
    /// Number of mask tokens the decoder outputs (4 for SAM).
    pub mask_tokens: usize,
}

impl ModelSpec {
    /// A spec with only the geometry that prompt validation and mask mapping read (no
    /// sessions behind it): for the fuzz targets and unit tests, which run without ONNX
    /// Runtime.
    pub fn geometry_only(name: &str, input_size: usize, low_res_size: [usize; 2]) -> Self {
        ModelSpec {
            name: name.to_string(),
            family: "sam".to_string(),
            description: String::new(),
            precision: "fp32".to_string(),
            source: String::new(),
            input_size,
            pixel_mean: [0.0; 3],
            pixel_std: [1.0; 3],
            encoder_input: EncoderInput::NchwNormalized,
            encoder_input_name: String::new(),
            encoder_output_name: String::new(),
            embedding_shape: [1, 1, low_res_size[0] / 4, low_res_size[1] / 4],
            low_res_size,
            encoder_device: "cpu".to_string(),
            decoder_device: "cpu".to_string(),
            encoder_batched: false,
            decoder_batched: true,
            mask_tokens: 4,
        }
    }
}

/// One prompt in model-frame coordinates, ready for the decoder.
#[derive(Debug, Clone)]
pub struct DecoderPrompt {
    /// `(x, y)` pairs in the model frame.
    pub coords: Vec<[f32; 2]>,
    /// Labels: -1 padding, 0 background, 1 foreground, 2 box top-left, 3 box bottom-right.
    pub labels: Vec<f32>,
    /// Optional low-res logits `[mh * mw]` from an earlier call.
    pub mask_input: Option<Arc<Vec<f32>>>,
    /// Mask tokens to return (e.g. `[0]` or `[1, 2, 3]`).
    pub tokens: Vec<usize>,
}

/// One mask token's answer.
#[derive(Debug)]
pub struct TokenOutput {
    /// Token index in the decoder's output.
    pub token: usize,
    /// Predicted IoU.
    pub score: f32,
    /// Low-resolution logits (`low_res_size`, row-major). [`MaskGeometry`] maps them to the
    /// image; they are also the refinement input of a later call.
    pub low_res: Vec<f32>,
}

/// SAM's `mask_threshold`: a pixel is foreground where its upscaled logit is above it.
pub const MASK_THRESHOLD: f32 = 0.0;

/// How one embedding's low-resolution decoder logits map back to its image: SAM's
/// `postprocess_masks`. Upscaling is left to the caller so that the decoder threads only run
/// the model, and so that masks a caller filters out by score are never upscaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskGeometry {
    low_res_width: usize,
    low_res_height: usize,
    input_size: usize,
    resized_width: usize,
    resized_height: usize,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
}

impl MaskGeometry {
    /// The geometry of masks decoded by `spec`'s model from `emb`.
    pub fn new(spec: &ModelSpec, emb: &Embedding) -> Self {
        Self {
            low_res_width: spec.low_res_size[1],
            low_res_height: spec.low_res_size[0],
            input_size: spec.input_size,
            resized_width: emb.resized_width as usize,
            resized_height: emb.resized_height as usize,
            width: emb.width as usize,
            height: emb.height as usize,
        }
    }

    /// Logits at the image size, row-major `height x width`.
    pub fn upscale(&self, low_res: &[f32]) -> Vec<f32> {
        super::resize::upscale_low_res_map(low_res, self.dims(), |v| v)
    }

    /// The mask at the image size: 1 where the upscaled logit is above `threshold`.
    pub fn upscale_mask(&self, low_res: &[f32], threshold: f32) -> Vec<u8> {
        super::resize::upscale_low_res_map(low_res, self.dims(), |v| (v > threshold) as u8)
    }

    fn dims(&self) -> [usize; 7] {
        [
            self.low_res_width,
            self.low_res_height,
            self.input_size,
            self.resized_width,
            self.resized_height,
            self.width,
            self.height,
        ]
    }
}

/// Where a session's graph comes from.
#[derive(Clone, Copy)]
enum GraphSource<'a> {
    Bytes(&'a [u8]),
    /// A file, for graphs with external data (resolved relative to it).
    File(&'a std::path::Path),
}

fn build_session(
    env: &ort::environment::Environment,
    graph: GraphSource<'_>,
    threads: usize,
    device: Device,
    require_gpu: bool,
    role: &str,
) -> anyhow::Result<(Session, Device)> {
    build_session_spinning(env, graph, threads, true, device, require_gpu, role)
}

/// [`build_session`], choosing whether intra-op threads may go on spinning after a run. A
/// session that runs only while the other workers sit idle must stop spinning when its run
/// returns (`session.force_spinning_stop`): its threads would otherwise keep the cores busy
/// for the narrow sessions that run once load returns. It still spins *during* a run: a
/// decoder run is hundreds of small parallel operators, and waking sleeping threads for
/// each of them made the two-thread session slower than one thread (lone click on 2 cores:
/// decoder 6.6 ms with no spinning at all, 5.9 ms on one thread).
fn build_session_spinning(
    env: &ort::environment::Environment,
    graph: GraphSource<'_>,
    threads: usize,
    spin: bool,
    device: Device,
    require_gpu: bool,
    role: &str,
) -> anyhow::Result<(Session, Device)> {
    let mut builder = Session::builder(env)
        .map_err(|e| anyhow!("{e}"))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow!("{e}"))?;
    if threads > 0 {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| anyhow!("{e}"))?;
    }
    if !spin {
        builder = builder
            .with_config_entry("session.force_spinning_stop", "1")
            .map_err(|e| anyhow!("{e}"))?;
    }
    let (mut builder, used) = super::device::apply(builder, device, require_gpu, role)?;
    let session = match graph {
        GraphSource::Bytes(bytes) => builder.commit_from_memory(bytes),
        GraphSource::File(path) => builder.commit_from_file(path),
    }
    .map_err(|e| anyhow!("creating session: {e}"))?;
    Ok((session, used))
}

/// Threads and devices for a model's sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Intra-op threads of the encoder.
    pub encoder_threads: usize,
    /// Intra-op threads of each decoder session.
    pub decoder_threads: usize,
    /// Number of decoder sessions (one per worker thread).
    pub decoder_workers: usize,
    /// Intra-op threads of each worker's second, wide decoder session, used when the
    /// worker runs alone (no other worker busy, nothing queued); at most `decoder_threads`
    /// means no wide session.
    pub decoder_lone_threads: usize,
    /// Device of the encoder.
    pub encoder_device: Device,
    /// Device of the decoder sessions.
    pub decoder_device: Device,
    /// Fail instead of falling back to CPU when a requested GPU is unavailable.
    pub require_gpu: bool,
}

fn describe(outlets: &[ort::value::Outlet]) -> String {
    outlets
        .iter()
        .map(|o| format!("{}: {}", o.name(), o.dtype()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn shape_of(outlet: &ort::value::Outlet) -> Vec<i64> {
    outlet
        .dtype()
        .tensor_shape()
        .map(|s| s.to_vec())
        .unwrap_or_default()
}

const DECODER_INPUTS: [&str; 5] = [
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
];

/// The outputs of the decoder the server reads.
pub const DECODER_OUTPUTS: [&str; 2] = ["iou_predictions", "low_res_masks"];

/// The decoder graph to run: the file without the nodes that only feed outputs the server
/// never reads (see [`super::onnx_prune`]), or the file itself when nothing can be pruned.
pub fn decoder_graph<'a>(model: &str, bytes: &'a [u8]) -> Cow<'a, [u8]> {
    match super::onnx_prune::prune_to_outputs(bytes, &DECODER_OUTPUTS) {
        Ok(Some(p)) => {
            tracing::info!(
                model,
                "decoder: skipping {} of {} graph nodes that only compute outputs the server does not read",
                p.nodes.0 - p.nodes.1,
                p.nodes.0
            );
            Cow::Owned(p.bytes)
        }
        Ok(None) => Cow::Borrowed(bytes),
        Err(e) => {
            // The signature check below reports what is wrong in terms users understand.
            tracing::debug!(model, "decoder graph not pruned: {e:#}");
            Cow::Borrowed(bytes)
        }
    }
}

/// Whether a graph with a dynamic batch axis may run several prompts (or images) per call:
/// not when it quantizes activations per tensor at run time (ONNX Runtime dynamic int8),
/// because a row's answer would then depend on the rows it shares a call with (measured on
/// models/sam-tiny-int8: a prompt decoded alone and in calls of 16 gave masks with mean IoU
/// 0.977, worst 0.76). Such a part runs one row per call, so an answer never depends on load.
fn rows_independent(model: &str, part: &str, bytes: &[u8]) -> bool {
    match super::onnx_ops::quantizes_per_batch(bytes) {
        Ok(false) => true,
        Ok(true) => {
            tracing::info!(
                model,
                "{part}: dynamic int8 (DynamicQuantizeLinear) scales each tensor by its whole \
                 batch, so one {} per call keeps answers independent of what shares the call",
                if part == "decoder" { "prompt" } else { "image" }
            );
            false
        }
        Err(e) => {
            tracing::debug!(model, "{part} graph not inspected: {e:#}");
            true
        }
    }
}

/// The ONNX sessions of one model and what was learned about them.
pub struct ModelSessions {
    /// The inferred spec.
    pub spec: Arc<ModelSpec>,
    /// The encoder session.
    pub encoder: EncoderSession,
    /// One decoder worker's sessions each.
    pub decoders: Vec<DecoderLanes>,
}

/// Loads a model, checks its signatures and runs one warm-up encode + decode to learn the
/// embedding and low-res shapes.
pub fn load_model(
    env: &ort::environment::Environment,
    files: &ModelFiles,
    opts: SessionOptions,
) -> anyhow::Result<ModelSessions> {
    let m: &Manifest = &files.manifest;
    let encoder_graph = match &files.encoder_path {
        Some(p) => GraphSource::File(p),
        None => GraphSource::Bytes(&files.encoder),
    };
    let (encoder, encoder_device) = build_session(
        env,
        encoder_graph,
        opts.encoder_threads,
        opts.encoder_device,
        opts.require_gpu,
        "encoder",
    )
    .with_context(|| format!("model '{}': encoder", m.name))?;
    let enc_inputs = encoder.inputs();
    if enc_inputs.len() != 1 || encoder.outputs().is_empty() {
        bail!(
            "model '{}': unsupported encoder signature (inputs: [{}]); expected one image input",
            m.name,
            describe(enc_inputs)
        );
    }
    let enc_in = &enc_inputs[0];
    let in_shape = shape_of(enc_in);
    let l = m.input_size as i64;
    let encoder_input = match in_shape.as_slice() {
        [_, 3, h, w] if (*h == -1 || *h == l) && (*w == -1 || *w == l) => {
            EncoderInput::NchwNormalized
        }
        [_, _, 3] => EncoderInput::HwcRaw,
        _ => bail!(
            "model '{}': unsupported encoder input {} (expected [1, 3, {l}, {l}] normalized NCHW \
             or [h, w, 3] 0-255 HWC; EfficientSAM/EdgeSAM-style encoders are not supported)",
            m.name,
            describe(enc_inputs)
        ),
    };
    let enc_out = encoder
        .outputs()
        .iter()
        .find(|o| o.name() == "image_embeddings")
        .unwrap_or(&encoder.outputs()[0]);
    let encoder_output_name = enc_out.name().to_string();
    let encoder_input_name = enc_in.name().to_string();

    let decoder_bytes = decoder_graph(&m.name, &files.decoder);
    let (decoder, decoder_device) = build_session(
        env,
        GraphSource::Bytes(&decoder_bytes),
        opts.decoder_threads,
        opts.decoder_device,
        opts.require_gpu,
        "decoder",
    )
    .with_context(|| format!("model '{}': decoder", m.name))?;
    let names: Vec<&str> = decoder.inputs().iter().map(|o| o.name()).collect();
    let missing: Vec<&str> = DECODER_INPUTS
        .iter()
        .copied()
        .filter(|n| !names.contains(n))
        .collect();
    let out_names: Vec<&str> = decoder.outputs().iter().map(|o| o.name()).collect();
    if !missing.is_empty()
        || !out_names.contains(&"iou_predictions")
        || !out_names.contains(&"low_res_masks")
    {
        bail!(
            "model '{}': unsupported decoder signature: inputs [{}], outputs [{}]; expected the \
             official SAM decoder (inputs {:?} and optionally orig_im_size; outputs \
             iou_predictions, low_res_masks and optionally masks)",
            m.name,
            describe(decoder.inputs()),
            describe(decoder.outputs()),
            DECODER_INPUTS
        );
    }
    let coords_in = decoder
        .inputs()
        .iter()
        .find(|o| o.name() == "point_coords")
        .expect("checked above");
    let decoder_batched = shape_of(coords_in).first().copied() == Some(-1)
        && rows_independent(&m.name, "decoder", &decoder_bytes);

    let mut spec = ModelSpec {
        name: m.name.clone(),
        family: m.family.clone(),
        description: m.description.clone(),
        precision: m.precision.clone(),
        source: files.source.clone(),
        input_size: m.input_size as usize,
        pixel_mean: m.pixel_mean,
        pixel_std: m.pixel_std,
        encoder_input,
        encoder_input_name,
        encoder_output_name,
        embedding_shape: [0; 4],
        low_res_size: [0; 2],
        encoder_device: encoder_device.to_string(),
        decoder_device: decoder_device.to_string(),
        encoder_batched: encoder_input == EncoderInput::NchwNormalized
            && in_shape.first().copied() == Some(-1)
            && rows_independent(&m.name, "encoder", &files.encoder),
        decoder_batched,
        mask_tokens: 0,
    };

    // Warm-up: a blank image through both graphs tells the shapes that are dynamic in
    // the file and proves the pair runs before the server reports ready.
    let mut encoder = EncoderSession {
        session: encoder,
        spec: Arc::new(spec.clone()),
    };
    let probe = super::preprocess::prepare(
        &image::RgbImage::new(
            spec.input_size as u32,
            (spec.input_size as u32 * 3 / 4).max(1),
        ),
        &encoder.spec,
    );
    let emb = encoder
        .encode(&probe)
        .with_context(|| format!("model '{}': warm-up encode", m.name))?;
    spec.embedding_shape = emb.shape;
    let mut decoder = DecoderSession {
        session: decoder,
        spec: Arc::new(spec.clone()),
        low_res_only: low_res_only()?,
        shared_empty_mask: false,
    };
    let (low_res, tokens) = decoder
        .probe(&emb)
        .with_context(|| format!("model '{}': warm-up decode", m.name))?;
    spec.low_res_size = low_res;
    spec.mask_tokens = tokens;
    if tokens < 1 {
        bail!("model '{}': decoder returns no masks", m.name);
    }
    let spec = Arc::new(spec);
    encoder.spec = spec.clone();
    decoder.spec = spec.clone();
    let shared_mask = decoder.probe_shared_empty_mask(&emb);
    tracing::debug!(model = %m.name, shared_mask, "decoder: one empty mask_input row per batch");
    let session = |threads: usize, spin: bool| -> anyhow::Result<DecoderSession> {
        Ok(DecoderSession {
            session: build_session_spinning(
                env,
                GraphSource::Bytes(&decoder_bytes),
                threads,
                spin,
                decoder_device,
                opts.require_gpu,
                "decoder",
            )?
            .0,
            spec: spec.clone(),
            low_res_only: low_res_only()?,
            shared_empty_mask: shared_mask,
        })
    };
    let wide = opts.decoder_lone_threads > opts.decoder_threads;
    let mut decoders = Vec::with_capacity(opts.decoder_workers.max(1));
    let mut first = Some(decoder);
    for _ in 0..opts.decoder_workers.max(1) {
        let narrow = match first.take() {
            Some(d) => d,
            None => session(opts.decoder_threads, true)?,
        };
        decoders.push(DecoderLanes {
            narrow,
            wide: if wide {
                Some(session(opts.decoder_lone_threads, false)?)
            } else {
                None
            },
        });
    }
    Ok(ModelSessions {
        spec,
        encoder,
        decoders,
    })
}

/// The image encoder session of one model. Not shared: it lives on the encoder thread.
pub struct EncoderSession {
    session: Session,
    spec: Arc<ModelSpec>,
}

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

    /// Runs the encoder graph on one input tensor; returns the embedding's dims and values.
    fn run(&mut self, shape: Vec<usize>, data: &[f32]) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
        let input = TensorRef::from_array_view((shape, data)).map_err(|e| anyhow!("{e}"))?;
        let outputs = self
            .session
            .run(vec![(
                Cow::Borrowed(self.spec.encoder_input_name.as_str()),
                SessionInputValue::from(input),
            )])
            .map_err(|e| anyhow!("encoder run: {e}"))?;
        let (shape, values) = outputs[self.spec.encoder_output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("encoder output: {e}"))?;
        Ok((shape.iter().map(|d| *d as usize).collect(), values.to_vec()))
    }

    fn encode_stacked(&mut self, imgs: &[PreparedImage]) -> anyhow::Result<Vec<Embedding>> {
        let mut shape = imgs[0].shape.clone();
        shape[0] = imgs.len();
        let data: Vec<f32> = imgs.iter().flat_map(|i| i.tensor.iter().copied()).collect();
        let (dims, values) = self.run(shape, &data)?;
        let [b, c, h, w] = dims[..] else {
            bail!("batched encoder output has shape {dims:?}");
        };
        if b != imgs.len() {
            bail!(
                "batched encoder returned {b} embeddings for {} images",
                imgs.len()
            );
        }
        let per = c * h * w;
        Ok(imgs
            .iter()
            .enumerate()
            .map(|(k, img)| {
                embedding_of(img, values[k * per..(k + 1) * per].to_vec(), [1, c, h, w])
            })
            .collect())
    }

    /// Runs the encoder on a prepared image.
    pub fn encode(&mut self, img: &PreparedImage) -> anyhow::Result<Embedding> {
        let (dims, values) = self.run(img.shape.clone(), &img.tensor)?;
        let shape: [usize; 4] = match dims.as_slice() {
            [1, c, h, w] => [1, *c, *h, *w],
            [c, h, w] => [1, *c, *h, *w],
            other => bail!("encoder output has shape {other:?}, expected [1, C, h, w]"),
        };
        Ok(embedding_of(img, values, shape))
    }
}

fn embedding_of(img: &PreparedImage, data: Vec<f32>, shape: [usize; 4]) -> Embedding {
    Embedding {
        data: EmbeddingData::F32(data),
        shape,
        width: img.width,
        height: img.height,
        resized_width: img.resized_width,
        resized_height: img.resized_height,
    }
}

/// A mask decoder session. Each decoder worker owns one.
pub struct DecoderSession {
    session: Session,
    spec: Arc<ModelSpec>,
    /// Fetches only `iou_predictions` and `low_res_masks`: the official graph's
    /// full-resolution `masks` covers all four tokens, while the server upsamples only the
    /// tokens it returns.
    low_res_only: RunOptions<HasSelectedOutputs>,
    /// Whether a batch without mask inputs may pass one all-zero `mask_input` row for all
    /// its prompts. The official graph computes the mask branch for every row and then
    /// multiplies it by `has_mask_input = 0`; with one row it broadcasts, so the branch runs
    /// once per call instead of once per prompt. Enabled only after the warm-up shows the
    /// graph accepts it and answers identically.
    shared_empty_mask: bool,
}

/// A decoder worker's sessions: `narrow` (`--decoder-threads`) for batches that run beside
/// other work, and optionally `wide` (every core, threads that do not spin) for a batch
/// that runs alone, so that a lone click uses the cores the idle workers would.
pub struct DecoderLanes {
    /// The session used under load.
    pub narrow: DecoderSession,
    /// The session used when the worker runs alone.
    pub wide: Option<DecoderSession>,
}

impl DecoderLanes {
    /// The session for a batch; `alone`: no other worker busy and nothing queued. Returns
    /// the session and whether it is the wide one.
    pub fn pick(&mut self, alone: bool) -> (&mut DecoderSession, bool) {
        match (&mut self.wide, alone) {
            (Some(w), true) => (w, true),
            _ => (&mut self.narrow, false),
        }
    }
}

fn low_res_only() -> anyhow::Result<RunOptions<HasSelectedOutputs>> {
    Ok(RunOptions::new().map_err(|e| anyhow!("{e}"))?.with_outputs(
        OutputSelector::no_default()
            .with("iou_predictions")
            .with("low_res_masks"),
    ))
}

impl DecoderSession {
    /// The spec this session runs for.
    pub fn spec(&self) -> &Arc<ModelSpec> {
        &self.spec
    }

    fn probe(&mut self, emb: &Embedding) -> anyhow::Result<([usize; 2], usize)> {
        let prompt = DecoderPrompt {
            coords: vec![[0.0, 0.0]],
            labels: vec![-1.0],
            mask_input: None,
            tokens: vec![],
        };
        let raw = self.run_raw(emb, &[prompt])?;
        Ok((raw.low_res_hw, raw.tokens))
    }

    /// Tries the one-row empty `mask_input` on a batch of two prompts; enables it when the
    /// graph accepts it and the answers are bit-identical to the full-batch input.
    fn probe_shared_empty_mask(&mut self, emb: &Embedding) -> bool {
        if !self.spec.decoder_batched {
            return false;
        }
        let prompts: Vec<DecoderPrompt> = [[10.0, 20.0], [30.0, 5.0]]
            .into_iter()
            .map(|c| DecoderPrompt {
                coords: vec![c, [0.0, 0.0]],
                labels: vec![1.0, -1.0],
                mask_input: None,
                tokens: vec![],
            })
            .collect();
        self.shared_empty_mask = false;
        let Ok(full) = self.run_raw(emb, &prompts) else {
            return false;
        };
        self.shared_empty_mask = true;
        let same = match self.run_raw(emb, &prompts) {
            Ok(shared) => shared.iou == full.iou && shared.low_res == full.low_res,
            Err(_) => false,
        };
        self.shared_empty_mask = same;
        same
    }

    /// Decodes prompts against one embedding, at most `max_batch` prompts per ONNX call.
    /// Prompts are padded to a common point count with `(0, 0, -1)`; decoders with a fixed
    /// batch of one run one by one.
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
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(max_batch) {
            on_call(chunk.len());
            out.extend(self.decode_batch(emb, chunk)?);
        }
        Ok(out)
    }

    fn decode_batch(
        &mut self,
        emb: &Embedding,
        prompts: &[DecoderPrompt],
    ) -> anyhow::Result<Vec<Vec<TokenOutput>>> {
        let raw = self.run_raw(emb, prompts)?;
        let [mh, mw] = raw.low_res_hw;
        if self.spec.low_res_size[0] > 0 && raw.low_res_hw != self.spec.low_res_size {
            bail!(
                "decoder returned {mh}x{mw} low-res masks, {:?} at warm-up",
                self.spec.low_res_size
            );
        }
        let tokens = raw.tokens;
        let mut results = Vec::with_capacity(prompts.len());
        for (b, p) in prompts.iter().enumerate() {
            let mut outs = Vec::with_capacity(p.tokens.len());
            for &t in &p.tokens {
                if t >= tokens {
                    bail!("mask token {t} requested but the decoder has {tokens}");
                }
                let lo = (b * tokens + t) * mh * mw;
                outs.push(TokenOutput {
                    token: t,
                    score: raw.iou[b * tokens + t],
                    low_res: raw.low_res[lo..lo + mh * mw].to_vec(),
                });
            }
            results.push(outs);
        }
        Ok(results)
    }

    fn run_raw(
        &mut self,
        emb: &Embedding,
        prompts: &[DecoderPrompt],
    ) -> anyhow::Result<RawDecoderOutput> {
        let b = prompts.len();
        let n = prompts
            .iter()
            .map(|p| p.coords.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut coords = vec![0f32; b * n * 2];
        let mut labels = vec![-1f32; b * n];
        for (i, p) in prompts.iter().enumerate() {
            for (j, (c, l)) in p.coords.iter().zip(&p.labels).enumerate() {
                coords[(i * n + j) * 2] = c[0];
                coords[(i * n + j) * 2 + 1] = c[1];
                labels[i * n + j] = *l;
            }
        }
        let [mh, mw] = if self.spec.low_res_size[0] > 0 {
            self.spec.low_res_size
        } else {
            // Before the probe we only know SAM's rule: 4x the embedding grid.
            [emb.shape[2] * 4, emb.shape[3] * 4]
        };
        let mask_rows = if self.shared_empty_mask && prompts.iter().all(|p| p.mask_input.is_none())
        {
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
        let orig = [emb.height as f32, emb.width as f32];
        let values = emb.data.to_f32();
        let t = tensor_input;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("image_embeddings".into(), t(emb.shape.to_vec(), &values)?),
            ("point_coords".into(), t(vec![b, n, 2], &coords)?),
            ("point_labels".into(), t(vec![b, n], &labels)?),
            (
                "mask_input".into(),
                t(vec![mask_rows, 1, mh, mw], &mask_input)?,
            ),
            ("has_mask_input".into(), t(vec![b], &has_mask)?),
        ];
        let has_orig_input = self
            .session
            .inputs()
            .iter()
            .any(|o| o.name() == "orig_im_size");
        if has_orig_input {
            inputs.push(("orig_im_size".into(), t(vec![2], &orig)?));
        }
        let outputs = self
            .session
            .run_with_options(inputs, &self.low_res_only)
            .map_err(|e| anyhow!("decoder run: {e}"))?;
        let (iou_shape, iou) = outputs["iou_predictions"]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("iou_predictions: {e}"))?;
        let tokens = *iou_shape.last().unwrap_or(&0) as usize;
        let (lr_shape, low_res) = outputs["low_res_masks"]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("low_res_masks: {e}"))?;
        let lr: Vec<usize> = lr_shape.iter().map(|d| *d as usize).collect();
        if lr.len() != 4 || lr[0] != b || lr[1] != tokens {
            bail!("low_res_masks has shape {lr:?}, expected [{b}, {tokens}, h, w]");
        }
        Ok(RawDecoderOutput {
            iou: iou.to_vec(),
            tokens,
            low_res: low_res.to_vec(),
            low_res_hw: [lr[2], lr[3]],
        })
    }
}

fn tensor_input(shape: Vec<usize>, data: &[f32]) -> anyhow::Result<SessionInputValue<'_>> {
    TensorRef::from_array_view((shape, data))
        .map(SessionInputValue::from)
        .map_err(|e| anyhow!("{e}"))
}

struct RawDecoderOutput {
    iou: Vec<f32>,
    tokens: usize,
    low_res: Vec<f32>,
    low_res_hw: [usize; 2],
}
