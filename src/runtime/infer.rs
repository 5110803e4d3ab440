//! The manifest of a folder that has none: an exporter's two files (samexporter writes
//! `<model>.encoder.onnx` and `<model>.decoder.onnx`, sam2-onnx `encoder.onnx` and
//! `decoder.onnx`) recognized from their input and output names.

use std::path::Path;

use anyhow::{bail, Context};

use super::manifest::{Manifest, MANIFEST_FILE};
use super::onnx_io::graph_io;
use super::signature::{detect, EncoderInput};

/// Which ONNX file of `names` plays `role` (`encoder` or `decoder`): the one whose name
/// contains the word, case-insensitively; `Err` lists the candidates when there is not
/// exactly one.
fn pick<'a>(names: &'a [String], role: &str) -> Result<&'a String, Vec<&'a String>> {
    let found: Vec<&String> = names
        .iter()
        .filter(|n| n.to_ascii_lowercase().contains(role))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => Err(found),
    }
}

/// Infers the manifest of `dir` from its ONNX files; logs it, and writes it as
/// `manifest.json` when `write` is set. Refuses anything but one recognized encoder and one
/// decoder, saying what was found.
pub fn infer_manifest(dir: &Path, write: bool) -> anyhow::Result<Manifest> {
    let mut onnx: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.to_ascii_lowercase().ends_with(".onnx"))
        .collect();
    onnx.sort();
    let (encoder, decoder) = match (pick(&onnx, "encoder"), pick(&onnx, "decoder")) {
        (Ok(e), Ok(d)) if e != d => (e.clone(), d.clone()),
        _ => bail!(
            "{} has no {MANIFEST_FILE}, and its ONNX files {onnx:?} are not one \
             *encoder*.onnx and one *decoder*.onnx (an exporter's pair); add a manifest.json \
             naming the files",
            dir.display()
        ),
    };
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let enc_io = graph_io(&read(&encoder)?).with_context(|| format!("{encoder}: not ONNX"))?;
    let dec_io = graph_io(&read(&decoder)?).with_context(|| format!("{decoder}: not ONNX"))?;
    let sig = detect(&enc_io, &dec_io).map_err(|e| {
        anyhow::anyhow!(
            "{} (no {MANIFEST_FILE}): {encoder} + {decoder} are not a supported pair: {e}",
            dir.display()
        )
    })?;
    let input_size = match (sig.encoder.layout, sig.encoder.input_dims.as_slice()) {
        (EncoderInput::NchwNormalized, [_, _, h, w]) if *h > 0 && h == w => *h as u32,
        // A dynamic or HWC input says nothing; every SAM and SAM 2 release uses 1024.
        _ => 1024,
    };
    let name: String = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into())
        .replace('/', "_");
    let text = serde_json::json!({
        "name": name,
        "family": sig.family.as_str(),
        "encoder": encoder,
        "decoder": decoder,
        "input_size": input_size,
        "description": format!(
            "{} model inferred from {encoder} + {decoder} (no {MANIFEST_FILE})",
            sig.family.as_str()
        ),
    });
    let pretty = serde_json::to_string_pretty(&text).expect("json");
    let manifest = Manifest::parse(&pretty).context("inferred manifest")?;
    tracing::info!(
        dir = %dir.display(),
        manifest = %text,
        "no {MANIFEST_FILE}: inferred one from the ONNX files (--write-manifest saves it)"
    );
    if write {
        let p = dir.join(MANIFEST_FILE);
        std::fs::write(&p, pretty + "\n").with_context(|| format!("writing {}", p.display()))?;
        tracing::info!(path = %p.display(), "inferred manifest written");
    }
    Ok(manifest)
}
