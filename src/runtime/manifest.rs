//! The model manifest: a small JSON file next to a model's ONNX files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::family::SingleMask;

/// File name of the manifest inside a model folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What a model folder declares about itself. Input/output names and shapes are read from
/// the ONNX sessions, not from here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Name clients use to address the model.
    pub name: String,
    /// Model family, e.g. `sam` or `mobile_sam`.
    #[serde(default = "default_family")]
    pub family: String,
    /// Encoder ONNX file, relative to the manifest's folder.
    pub encoder: String,
    /// Decoder ONNX file, relative to the manifest's folder.
    pub decoder: String,
    /// Length of the longest image side the encoder expects (1024 for SAM).
    pub input_size: u32,
    /// Per-channel RGB mean in 0-255 units.
    #[serde(default = "default_mean")]
    pub pixel_mean: [f32; 3],
    /// Per-channel RGB standard deviation in 0-255 units.
    #[serde(default = "default_std")]
    pub pixel_std: [f32; 3],
    /// Number type of the weights: `fp32`, or `int8` for a quantized variant
    /// (tools/quantize.py; its `quantization` entry says which parts).
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Free-form description shown by `GET /v1/models`.
    #[serde(default)]
    pub description: String,
    /// Folder of the text model for text prompts (holding `text.json`), relative to this
    /// manifest's folder; no text prompts without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What a single-mask request returns (default: the family's rule; see
    /// [`SingleMaskRule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_mask: Option<SingleMaskRule>,
}

/// The manifest's `single_mask`: `{"rule": "token0"}`, `{"rule": "best_multimask"}`, or
/// `{"rule": "stability", "stability_delta": 0.05, "stability_thresh": 0.98}` (SAM 2's
/// `dynamic_multimask_via_stability`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingleMaskRule {
    /// `token0`, `best_multimask` or `stability`.
    pub rule: String,
    /// Logit offset of the stability score (rule `stability`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stability_delta: Option<f32>,
    /// Lowest stability that keeps token 0 (rule `stability`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stability_thresh: Option<f32>,
}

impl SingleMaskRule {
    /// The rule, checked.
    pub fn to_rule(&self) -> anyhow::Result<SingleMask> {
        Ok(match self.rule.as_str() {
            "token0" => SingleMask::Token0,
            "best_multimask" => SingleMask::BestMultimask,
            "stability" => {
                let delta = self.stability_delta.unwrap_or(0.05);
                let thresh = self.stability_thresh.unwrap_or(0.98);
                if !(delta.is_finite() && delta >= 0.0 && (0.0..=1.0).contains(&thresh)) {
                    bail!(
                        "single_mask: stability_delta must be >= 0 and stability_thresh in [0, 1]"
                    );
                }
                SingleMask::Stability { delta, thresh }
            }
            other => {
                bail!("single_mask rule '{other}' is not one of token0, best_multimask, stability")
            }
        })
    }
}

fn default_family() -> String {
    "sam".to_string()
}

fn default_precision() -> String {
    "fp32".to_string()
}

fn default_mean() -> [f32; 3] {
    [123.675, 116.28, 103.53]
}

fn default_std() -> [f32; 3] {
    [58.395, 57.12, 57.375]
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let m: Manifest = serde_json::from_str(text).context("invalid manifest JSON")?;
        if m.name.is_empty() || m.name.contains('/') {
            bail!("manifest name must be non-empty and contain no '/'");
        }
        if m.input_size < 16 {
            bail!("manifest input_size {} is too small", m.input_size);
        }
        if m.pixel_std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            bail!("manifest pixel_std must be positive");
        }
        if let Some(rule) = &m.single_mask {
            rule.to_rule()?;
        }
        Ok(m)
    }
}

/// A model's manifest with its ONNX files resolved to bytes.
pub struct ModelFiles {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Encoder ONNX bytes.
    pub encoder: Vec<u8>,
    /// With external data (weights beside the `.onnx`, for encoders past 2 GB): the
    /// encoder's path, which sessions load from so that ONNX Runtime finds the data files.
    pub encoder_path: Option<PathBuf>,
    /// The external data files of the encoder (empty without external data).
    pub encoder_external: Vec<PathBuf>,
    /// Decoder ONNX bytes.
    pub decoder: Vec<u8>,
    /// Where the model came from, for logs and `/v1/models`.
    pub source: String,
    /// The text model, when the manifest names one.
    pub text: Option<super::text::TextFiles>,
}

impl ModelFiles {
    /// Reads a model folder (or a manifest file path). A folder without `manifest.json`
    /// holding an exporter's two files (`*encoder*.onnx`, `*decoder*.onnx`) gets a manifest
    /// inferred from the graphs ([`super::infer`]), logged, and with `write_inferred`
    /// written to the folder for the user to keep and edit.
    pub fn from_dir(path: &Path, write_inferred: bool) -> anyhow::Result<Self> {
        let manifest_path: PathBuf = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let manifest = if path.is_dir() && !manifest_path.exists() {
            super::infer::infer_manifest(path, write_inferred)?
        } else {
            let text = std::fs::read_to_string(&manifest_path)
                .with_context(|| format!("reading {}", manifest_path.display()))?;
            Manifest::parse(&text).with_context(|| format!("in {}", manifest_path.display()))?
        };
        let read = |file: &str| {
            let p = dir.join(file);
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        };
        let text = match &manifest.text {
            Some(t) => Some(super::text::TextFiles::from_dir(&dir.join(t))?),
            None => None,
        };
        let encoder = read(&manifest.encoder)?;
        let encoder_file = dir.join(&manifest.encoder);
        let encoder_dir = encoder_file.parent().unwrap_or(dir);
        let encoder_external: Vec<PathBuf> = super::onnx_external::external_data_files(&encoder)
            .with_context(|| format!("reading {}", encoder_file.display()))?
            .into_iter()
            .map(|f| encoder_dir.join(f))
            .collect();
        if let Some(missing) = encoder_external.iter().find(|p| !p.is_file()) {
            bail!(
                "{}: its external data file {} is missing (it must sit beside the .onnx)",
                encoder_file.display(),
                missing.display()
            );
        }
        Ok(ModelFiles {
            encoder,
            encoder_path: (!encoder_external.is_empty()).then_some(encoder_file),
            encoder_external,
            decoder: read(&manifest.decoder)?,
            text,
            manifest,
            source: dir.display().to_string(),
        })
    }

    /// The default model compiled into the binary, so `samserve` runs with no files around.
    /// It always carries the default text model (models/text-minilm): its region tower
    /// reads only pixels and mask shapes, so it does not depend on the SAM weights.
    pub fn embedded_default() -> anyhow::Result<Self> {
        let manifest = Manifest::parse(include_str!("../../models/sam-tiny/manifest.json"))
            .context("embedded default manifest")?;
        Ok(ModelFiles {
            manifest,
            encoder: include_bytes!("../../models/sam-tiny/encoder.onnx").to_vec(),
            encoder_path: None,
            encoder_external: Vec::new(),
            decoder: include_bytes!("../../models/sam-tiny/decoder.onnx").to_vec(),
            source: "embedded".to_string(),
            text: Some(super::text::TextFiles::embedded_default()?),
        })
    }

    /// Bytes that identify the encoder's weights: the `.onnx` itself, plus a blake3 hash of
    /// each external data file (the `.onnx` of an external-data model holds only names and
    /// offsets, the same for every checkpoint of an architecture).
    pub fn encoder_identity(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = self.encoder.clone();
        for p in &self.encoder_external {
            let mut h = blake3::Hasher::new();
            let mut f =
                std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
            std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
            out.extend_from_slice(h.finalize().as_bytes());
        }
        Ok(out)
    }
}
