//! Text models: what turns a phrase and a candidate mask into comparable vectors.
//!
//! A text model lives in its own folder with a `text.json` manifest; a segmentation
//! model's manifest points at it with `"text": "<folder, relative to the manifest>"`.
//! Kind `minilm-region`: a sentence-transformers text tower (MiniLM, exported by
//! tools/export_text.py) and a small region tower trained by tools/train_text.py that maps
//! a mask's region features (see [`features`]) into the same space.

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
}

impl TextKind {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TextKind::MinilmRegion => "minilm-region",
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
}

impl TextFiles {
    /// Parses and checks a text manifest.
    pub fn parse_manifest(text: &str) -> anyhow::Result<TextManifest> {
        let m: TextManifest = serde_json::from_str(text).context("invalid text manifest")?;
        if m.kind == TextKind::MinilmRegion && m.region_encoder.is_none() {
            bail!("a minilm-region text model needs region_encoder");
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

fn cpu_session(
    env: &ort::environment::Environment,
    bytes: &[u8],
) -> anyhow::Result<ort::session::Session> {
    use anyhow::anyhow;
    use ort::session::builder::GraphOptimizationLevel;
    ort::session::Session::builder(env)
        .map_err(|e| anyhow!("{e}"))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow!("{e}"))?
        .with_intra_threads(1)
        .map_err(|e| anyhow!("{e}"))?
        // The text tower stores int8 weights behind DequantizeLinear (tools/export_text.py);
        // this lets constant folding dequantize them once at load instead of on every run.
        .with_config_entry("session.disable_quant_qdq", "1")
        .map_err(|e| anyhow!("{e}"))?
        .commit_from_memory(bytes)
        .map_err(|e| anyhow!("creating text session: {e}"))
}
