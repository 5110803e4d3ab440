//! Text models: what turns a phrase and a candidate mask into comparable vectors.
//!
//! A text model lives in its own folder with a `text.json` manifest; a segmentation
//! model's manifest points at it with `"text": "<folder, relative to the manifest>"`.
//! Kind `minilm-region`: a sentence-transformers text tower (MiniLM, exported by
//! tools/export_text.py) and a small region tower trained by tools/train_text.py that maps
//! a mask's region features (see [`features`]) into the same space.
//! Kind `clip`: a CLIP text encoder and image encoder (exported by tools/export_clip.py);
//! a candidate's crop (see [`clip`]) is embedded by the image encoder.
//!
//! Both kinds reduce to the same two steps per candidate, which is what the candidate
//! search in `core::text_search` sees: [`RegionPrep::prepare`] (pixels + mask -> encoder
//! input, pure pre-processing that runs on the blocking pool) and [`RegionEncoder::embed`]
//! (a batch of inputs -> vectors, on the text model's worker thread).

pub mod clip;
pub mod features;
pub mod tokenize;
pub mod towers;

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::core::amg::AmgParams;

/// File name of a text model's manifest inside its folder.
pub const TEXT_MANIFEST_FILE: &str = "text.json";

/// Kinds of text model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextKind {
    /// MiniLM sentence embeddings + a region tower over mask features.
    #[serde(rename = "minilm-region")]
    MinilmRegion,
    /// A CLIP text encoder + image encoder over candidate crops.
    #[serde(rename = "clip")]
    Clip,
}

impl TextKind {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TextKind::MinilmRegion => "minilm-region",
            TextKind::Clip => "clip",
        }
    }
}

/// What a text model folder declares (`text.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextManifest {
    /// Name shown by `/v1/models`.
    pub name: String,
    /// Kind of model.
    pub kind: TextKind,
    /// Text tower ONNX (`input_ids`, `attention_mask` -> unit vector).
    pub text_encoder: String,
    /// Hugging Face `tokenizer.json`.
    pub tokenizer: String,
    /// Region tower ONNX (`features` -> unit vector), for `minilm-region`.
    #[serde(default)]
    pub region_encoder: Option<String>,
    /// Image encoder ONNX (`pixel_values` `[N, 3, S, S]` -> `[N, D]`), for `clip`.
    #[serde(default)]
    pub image_encoder: Option<String>,
    /// How candidate crops are cut and normalised, for `clip`.
    #[serde(default)]
    pub crop: Option<clip::CropSpec>,
    /// Longest accepted phrase in characters (longer ones get a 422).
    #[serde(default = "default_max_chars")]
    pub max_text_chars: usize,
    /// Segment-everything parameters of the candidate search (over the text defaults).
    #[serde(default)]
    pub candidates: Option<AmgParams>,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

fn default_max_chars() -> usize {
    256
}

/// A text model's manifest with its files read.
#[derive(Clone)]
pub struct TextFiles {
    /// The manifest.
    pub manifest: TextManifest,
    /// Text tower bytes.
    pub text_encoder: Vec<u8>,
    /// tokenizer.json bytes.
    pub tokenizer: Vec<u8>,
    /// Region tower bytes.
    pub region_encoder: Option<Vec<u8>>,
    /// Image encoder bytes (`clip`).
    pub image_encoder: Option<Vec<u8>>,
}

impl TextFiles {
    /// Parses and checks a text manifest.
    pub fn parse_manifest(text: &str) -> anyhow::Result<TextManifest> {
        let m: TextManifest = serde_json::from_str(text).context("invalid text manifest")?;
        if m.kind == TextKind::MinilmRegion && m.region_encoder.is_none() {
            bail!("a minilm-region text model needs region_encoder");
        }
        if m.kind == TextKind::Clip {
            match (&m.image_encoder, &m.crop) {
                (Some(_), Some(crop)) => crop.check()?,
                _ => bail!("a clip text model needs image_encoder and crop"),
            }
        }
        if m.max_text_chars == 0 {
            bail!("max_text_chars must be positive");
        }
        Ok(m)
    }

    /// Reads a text model folder.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(TEXT_MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let manifest =
            Self::parse_manifest(&text).with_context(|| format!("in {}", path.display()))?;
        let read = |file: &str| {
            let p = dir.join(file);
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(TextFiles {
            text_encoder: read(&manifest.text_encoder)?,
            tokenizer: read(&manifest.tokenizer)?,
            region_encoder: manifest.region_encoder.as_deref().map(read).transpose()?,
            image_encoder: manifest.image_encoder.as_deref().map(read).transpose()?,
            manifest,
        })
    }

    /// The default text model compiled into the binary (models/text-minilm).
    pub fn embedded_default() -> anyhow::Result<Self> {
        let manifest = Self::parse_manifest(include_str!("../../../models/text-minilm/text.json"))
            .context("embedded text manifest")?;
        Ok(TextFiles {
            manifest,
            text_encoder: include_bytes!("../../../models/text-minilm/text.onnx").to_vec(),
            tokenizer: include_bytes!("../../../models/text-minilm/tokenizer.json").to_vec(),
            region_encoder: Some(
                include_bytes!("../../../models/text-minilm/region.onnx").to_vec(),
            ),
            image_encoder: None,
        })
    }
}

/// The towers' CPU sessions (one intra-op thread each: phrases are a few tokens, and
/// candidates are embedded once per image).
pub fn load_towers(
    env: &ort::environment::Environment,
    files: &TextFiles,
) -> anyhow::Result<(towers::TextTower, towers::RegionTower)> {
    let region_bytes = files
        .region_encoder
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("text model has no region encoder"))?;
    Ok((
        towers::TextTower::new(cpu_session(env, &files.text_encoder)?)?,
        towers::RegionTower::new(cpu_session(env, region_bytes)?)?,
    ))
}

/// What turns a candidate mask into region-encoder input; cheap to clone, no sessions.
#[derive(Debug, Clone)]
pub enum RegionPrep {
    /// `minilm-region`: colour and shape features ([`features::region_features`]).
    Features,
    /// `clip`: the normalised crop ([`clip::crop_pixels`]).
    Crop(clip::CropSpec),
}

/// One candidate's region-encoder input.
// Features inline (228 bytes) rather than boxed: they are the default model's case, one
// per candidate, and a Vec of these is what the region tower batch is built from.
#[allow(clippy::large_enum_variant)]
pub enum RegionInput {
    /// Region features.
    Features([f32; features::N_FEATURES]),
    /// A CHW crop tensor.
    Pixels(Vec<f32>),
}

impl RegionPrep {
    /// The encoder input of `mask` over `rgb` (same size).
    pub fn prepare(
        &self,
        rgb: &image::RgbImage,
        mask: &crate::core::masks::BinaryMask,
    ) -> RegionInput {
        match self {
            RegionPrep::Features => RegionInput::Features(features::region_features(rgb, mask)),
            RegionPrep::Crop(spec) => RegionInput::Pixels(clip::crop_pixels(rgb, mask, spec)),
        }
    }

    /// How many candidates to prepare and embed in one go: crops are 600 KB each at CLIP's
    /// 224 px, so they go in groups instead of all of an image's candidates at once.
    pub fn group(&self) -> usize {
        match self {
            RegionPrep::Features => usize::MAX,
            RegionPrep::Crop(_) => 2 * clip::CROP_BATCH,
        }
    }
}

/// The session that embeds region inputs.
pub enum RegionEncoder {
    /// `minilm-region`'s region tower.
    Features(towers::RegionTower),
    /// `clip`'s image encoder.
    Clip(clip::ImageTower),
}

impl RegionEncoder {
    /// Unit vectors of a batch of inputs made by the matching [`RegionPrep`].
    pub fn embed(&mut self, inputs: Vec<RegionInput>) -> anyhow::Result<Vec<Vec<f32>>> {
        let mismatch = || anyhow::anyhow!("region input does not match the text model's kind");
        match self {
            RegionEncoder::Features(t) => {
                let f = inputs
                    .into_iter()
                    .map(|i| match i {
                        RegionInput::Features(f) => Ok(f),
                        RegionInput::Pixels(_) => Err(mismatch()),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                t.embed(&f)
            }
            RegionEncoder::Clip(t) => {
                let crops = inputs
                    .into_iter()
                    .map(|i| match i {
                        RegionInput::Pixels(p) => Ok(p),
                        RegionInput::Features(_) => Err(mismatch()),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(t.embed(&crops)?
                    .into_iter()
                    .map(towers::normalized)
                    .collect())
            }
        }
    }
}

/// A text model's sessions and its candidate pre-processing, whatever its kind.
pub fn load_model(
    env: &ort::environment::Environment,
    files: &TextFiles,
) -> anyhow::Result<(towers::TextTower, RegionEncoder, RegionPrep)> {
    match files.manifest.kind {
        TextKind::MinilmRegion => {
            let (text, region) = load_towers(env, files)?;
            Ok((text, RegionEncoder::Features(region), RegionPrep::Features))
        }
        TextKind::Clip => {
            let (bytes, crop) = files
                .image_encoder
                .as_deref()
                .zip(files.manifest.crop.clone())
                .ok_or_else(|| anyhow::anyhow!("clip text model without image encoder or crop"))?;
            // The image encoder embeds every candidate of a new image (a ViT per crop), the
            // heaviest work on the text path: it gets the machine's cores like the SAM
            // encoder does; the text encoder runs a few tokens and keeps one thread.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let image = clip::ImageTower::new(session(env, bytes, cores)?, crop.size)?;
            Ok((
                towers::TextTower::new(cpu_session(env, &files.text_encoder)?)?,
                RegionEncoder::Clip(image),
                RegionPrep::Crop(crop),
            ))
        }
    }
}

fn cpu_session(
    env: &ort::environment::Environment,
    bytes: &[u8],
) -> anyhow::Result<ort::session::Session> {
    session(env, bytes, 1)
}

fn session(
    env: &ort::environment::Environment,
    bytes: &[u8],
    threads: usize,
) -> anyhow::Result<ort::session::Session> {
    use anyhow::anyhow;
    use ort::session::builder::GraphOptimizationLevel;
    ort::session::Session::builder(env)
        .map_err(|e| anyhow!("{e}"))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow!("{e}"))?
        .with_intra_threads(threads)
        .map_err(|e| anyhow!("{e}"))?
        // The text tower stores int8 weights behind DequantizeLinear (tools/export_text.py);
        // this lets constant folding dequantize them once at load instead of on every run.
        .with_config_entry("session.disable_quant_qdq", "1")
        .map_err(|e| anyhow!("{e}"))?
        .commit_from_memory(bytes)
        .map_err(|e| anyhow!("creating text session: {e}"))
}
