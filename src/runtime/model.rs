//! ONNX sessions of a SAM-family model: signature detection, warm-up, the spec the rest of
//! the server reads.
//!
//! Names and shapes are read from the files and sessions, so variants with other embedding
//! widths, grids or input lengths load without code changes; the family (SAM, SAM 2) comes
//! from the input/output names ([`super::signature`]). Signatures that are not understood
//! are refused at start with a message that lists what was found.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

pub use super::decoder::{DecoderSession, MaskFlag};
use super::device::Device;
pub use super::embedding::{Embedding, EmbeddingData, EmbeddingTensor};
pub use super::encoder::EncoderSession;
use super::family::{Family, SingleMask};
use super::manifest::{Manifest, ModelFiles};
pub use super::prompt::{DecoderPrompt, MaskGeometry, MaskOutput, TokenOutput, MASK_THRESHOLD};
pub use super::signature::EncoderInput;
use super::signature::{DecoderBinding, Signature};

/// Name and shape of one embedding tensor, as `/v1/models` lists them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    /// Canonical name.
    pub name: String,
    /// Shape `[1, C, h, w]`.
    pub shape: Vec<usize>,
}

/// Everything the server needs to know about a loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSpec {
    /// Name used in requests.
    pub name: String,
    /// Family name (`sam`, `sam2`, or the manifest's more specific SAM-like name).
    pub family: String,
    /// The family's behaviour.
    pub kind: Family,
    /// Description from the manifest.
    pub description: String,
    /// Weight precision from the manifest (`fp32`, `int8`).
    pub precision: String,
    /// Where the files came from.
    pub source: String,
    /// Side L of the encoder's square input frame.
    pub input_size: usize,
    /// RGB mean (0-255 units).
    pub pixel_mean: [f32; 3],
    /// RGB std (0-255 units).
    pub pixel_std: [f32; 3],
    /// Encoder input layout.
    pub encoder_input: EncoderInput,
    #[serde(skip)]
    pub(crate) encoder_input_name: String,
    /// Encoder output read for each tensor, in `tensor_names` order.
    #[serde(skip)]
    pub(crate) encoder_output_names: Vec<String>,
    /// Canonical tensor names, shared by every embedding of this model.
    #[serde(skip)]
    pub(crate) tensor_names: Vec<Arc<str>>,
    /// The embedding's tensors (names and shapes).
    pub tensors: Vec<TensorInfo>,
    /// Shape `[1, C, gh, gw]` of the primary tensor (SAM's only one, SAM 2's `image_embed`).
    pub embedding_shape: [usize; 4],
    /// Low-resolution mask size `(h, w)` of `mask_input` and the low-res logits.
    pub low_res_size: [usize; 2],
    /// Where the encoder runs (`cpu`, `cuda:N`).
    pub encoder_device: String,
    /// Where the decoder runs (`cpu`, `cuda:N`).
    pub decoder_device: String,
    /// Whether the encoder accepts several images per call (axis 0 dynamic).
    pub encoder_batched: bool,
    /// Whether the decoder accepts a batch of prompts per call (axis 0 dynamic).
    pub decoder_batched: bool,
    /// How a batch passes `has_mask_input`.
    pub mask_flag: MaskFlag,
    /// Number of masks the decoder outputs per prompt (4 for SAM; 3 for a multimask-only
    /// export).
    pub mask_tokens: usize,
    /// Token index of the decoder's first output (1 for a multimask-only export).
    pub first_token: usize,
    /// What a single-mask request returns.
    pub single_mask: SingleMask,
    #[serde(skip)]
    pub(crate) decoder: DecoderBinding,
}

impl ModelSpec {
    /// A spec with only the geometry that prompt validation and mask mapping read (no
    /// sessions behind it): for the fuzz targets and unit tests, which run without ONNX
    /// Runtime.
    pub fn geometry_only(name: &str, input_size: usize, low_res_size: [usize; 2]) -> Self {
        let shape = [1, 1, low_res_size[0] / 4, low_res_size[1] / 4];
        ModelSpec {
            name: name.to_string(),
            family: "sam".to_string(),
            kind: Family::Sam,
            description: String::new(),
            precision: "fp32".to_string(),
            source: String::new(),
            input_size,
            pixel_mean: [0.0; 3],
            pixel_std: [1.0; 3],
            encoder_input: EncoderInput::NchwNormalized,
            encoder_input_name: String::new(),
            encoder_output_names: vec![String::new()],
            tensor_names: vec![Arc::from("image_embeddings")],
            tensors: vec![TensorInfo {
                name: "image_embeddings".into(),
                shape: shape.to_vec(),
            }],
            embedding_shape: shape,
            low_res_size,
            encoder_device: "cpu".to_string(),
            decoder_device: "cpu".to_string(),
            encoder_batched: false,
            decoder_batched: true,
            mask_flag: MaskFlag::PerRow,
            mask_tokens: 4,
            first_token: 0,
            single_mask: SingleMask::Token0,
            decoder: DecoderBinding::sam(),
        }
    }

    /// The same geometry for another family (SAM 2: stretched frame, direct upscaling).
    pub fn with_family(mut self, kind: Family) -> Self {
        self.kind = kind;
        self.family = kind.as_str().to_string();
        self.single_mask = kind.default_single_mask(self.first_token);
        self
    }

    /// Bytes of one image's embedding in float32 (all tensors).
    pub fn embedding_bytes(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>() * 4)
            .sum()
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

/// The outputs of the official SAM decoder the server reads.
pub const DECODER_OUTPUTS: [&str; 2] = ["iou_predictions", "low_res_masks"];

/// The decoder graph to run: the file without the nodes that only feed outputs the server
/// never reads (see [`super::onnx_prune`]), or the file itself when nothing can be pruned.
pub fn decoder_graph<'a>(model: &str, bytes: &'a [u8], keep: &[&str]) -> Cow<'a, [u8]> {
    match super::onnx_prune::prune_to_outputs(bytes, keep) {
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

/// The recognized signature of a model's files, checked against its manifest.
pub fn model_signature(files: &ModelFiles) -> anyhow::Result<Signature> {
    let m: &Manifest = &files.manifest;
    let enc = super::onnx_io::graph_io(&files.encoder)
        .with_context(|| format!("model '{}': reading the encoder graph", m.name))?;
    let dec = super::onnx_io::graph_io(&files.decoder)
        .with_context(|| format!("model '{}': reading the decoder graph", m.name))?;
    let sig =
        super::signature::detect(&enc, &dec).map_err(|e| anyhow!("model '{}': {e}", m.name))?;
    if Family::from_manifest(&m.family) == Family::Sam2 && sig.family != Family::Sam2 {
        bail!(
            "model '{}': the manifest says family '{}' but the decoder has the SAM signature \
             (no high-resolution feature inputs)",
            m.name,
            m.family
        );
    }
    let l = m.input_size as i64;
    if let [_, 3, h, w] = sig.encoder.input_dims[..] {
        if (h != -1 && h != l) || (w != -1 && w != l) {
            bail!(
                "model '{}': unsupported encoder input {} [{}] for input_size {l} (expected \
                 [1, 3, {l}, {l}])",
                m.name,
                sig.encoder.input,
                sig.encoder
                    .input_dims
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(sig)
}

/// Loads a model, checks its signatures and runs one warm-up encode + decode to learn the
/// embedding and low-res shapes and how the decoder batches.
pub fn load_model(
    env: &ort::environment::Environment,
    files: &ModelFiles,
    opts: SessionOptions,
) -> anyhow::Result<ModelSessions> {
    let m: &Manifest = &files.manifest;
    let sig = model_signature(files)?;
    let kind = sig.family;
    let family = if kind == Family::from_manifest(&m.family) {
        m.family.clone()
    } else {
        tracing::info!(model = %m.name, manifest = %m.family, "the decoder's inputs are SAM 2's: serving it as family sam2");
        kind.as_str().to_string()
    };
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
    let read: Vec<&str> = sig.decoder.read.iter().map(String::as_str).collect();
    let decoder_bytes = decoder_graph(&m.name, &files.decoder, &read);
    let (decoder, decoder_device) = build_session(
        env,
        GraphSource::Bytes(&decoder_bytes),
        opts.decoder_threads,
        opts.decoder_device,
        opts.require_gpu,
        "decoder",
    )
    .with_context(|| format!("model '{}': decoder", m.name))?;
    let dec_io = super::onnx_io::graph_io(&files.decoder)?;
    let prompt_axis_dynamic = dec_io
        .inputs
        .iter()
        .find(|i| i.name == sig.decoder.point_coords)
        .and_then(|i| i.dims.first().copied())
        == Some(-1);
    let encoder_batched = sig.encoder.layout == EncoderInput::NchwNormalized
        && sig.encoder.input_dims.first().copied() == Some(-1)
        && rows_independent(&m.name, "encoder", &files.encoder);

    let tensor_names: Vec<Arc<str>> = kind.tensor_names().iter().map(|n| Arc::from(*n)).collect();
    let mut spec = ModelSpec {
        name: m.name.clone(),
        family,
        kind,
        description: m.description.clone(),
        precision: m.precision.clone(),
        source: files.source.clone(),
        input_size: m.input_size as usize,
        pixel_mean: m.pixel_mean,
        pixel_std: m.pixel_std,
        encoder_input: sig.encoder.layout,
        encoder_input_name: sig.encoder.input.clone(),
        encoder_output_names: sig.encoder.outputs.clone(),
        tensor_names,
        tensors: Vec::new(),
        embedding_shape: [0; 4],
        low_res_size: [0; 2],
        encoder_device: encoder_device.to_string(),
        decoder_device: decoder_device.to_string(),
        encoder_batched,
        decoder_batched: false,
        mask_flag: MaskFlag::PerRow,
        mask_tokens: 0,
        first_token: 0,
        single_mask: SingleMask::Token0,
        decoder: sig.decoder.clone(),
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
    spec.tensors = emb
        .tensors
        .iter()
        .map(|t| TensorInfo {
            name: t.name.to_string(),
            shape: t.shape.clone(),
        })
        .collect();
    let s = &emb.primary().shape;
    spec.embedding_shape = [s[0], s[1], s[2], s[3]];
    let mut decoder = DecoderSession {
        session: decoder,
        spec: Arc::new(spec.clone()),
        low_res_only: super::decoder::selected_outputs(&spec, false)?,
        quiet: super::decoder::selected_outputs(&spec, true)?,
        shared_empty_mask: false,
    };
    let (low_res, tokens) = decoder
        .probe(&emb)
        .with_context(|| format!("model '{}': warm-up decode", m.name))?;
    if tokens < 1 {
        bail!("model '{}': decoder returns no masks", m.name);
    }
    spec.low_res_size = low_res;
    spec.mask_tokens = tokens;
    spec.first_token = usize::from(tokens == 3);
    spec.single_mask = match &m.single_mask {
        Some(rule) => rule.to_rule()?,
        None => kind.default_single_mask(spec.first_token),
    };
    decoder.spec = Arc::new(spec.clone());
    if prompt_axis_dynamic && rows_independent(&m.name, "decoder", &decoder_bytes) {
        match decoder.probe_mask_flag(&emb) {
            Some(flag) => {
                spec.decoder_batched = true;
                spec.mask_flag = flag;
            }
            None => tracing::info!(
                model = %m.name,
                "decoder: a batch of prompts does not answer as the prompts alone; one prompt per call"
            ),
        }
    }
    if spec.mask_flag == MaskFlag::Uniform {
        tracing::info!(
            model = %m.name,
            "decoder: has_mask_input is one flag per call (it broadcasts only for one row); \
             prompts with and without mask_input run in separate calls"
        );
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
            low_res_only: super::decoder::selected_outputs(&spec, false)?,
            quiet: super::decoder::selected_outputs(&spec, true)?,
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

/// A decoder worker's sessions: `narrow` (`--decoder-threads`) for batches that run beside
/// other work, and optionally `wide` (every core, threads that stop spinning when a run
/// returns) for a batch that runs alone, so that a lone click uses the cores the idle
/// workers would.
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
