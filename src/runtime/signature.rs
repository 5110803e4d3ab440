//! Recognizes an encoder/decoder pair by the names of its inputs and outputs and binds each
//! tensor the server feeds or reads to the name this export gives it. Nothing is taken by
//! position: exporters order (and name) SAM 2's three embedding tensors differently.
//!
//! Supported: the official SAM decoder signature (segment-anything's `SamOnnxModel`, our
//! exports, samexporter's SAM 1), and SAM 2 exports with the embedding split in
//! `image_embed` + two high-resolution feature maps (ours, samexporter's, sam2-onnx's).
//! Everything else is refused with what was found.

use super::family::{find_alias, Family};
use super::onnx_io::{GraphIo, ELEM_INT64};

/// How the encoder wants its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderInput {
    /// `[1, 3, L, L]` float32, normalized by the server (SAM: zero-padded bottom-right; SAM 2:
    /// stretched).
    NchwNormalized,
    /// `[h, w, 3]` float32 0-255, resized to the long side; the graph normalizes and pads
    /// (samexporter's SAM 1 encoder).
    HwcRaw,
}

/// The encoder's names.
#[derive(Debug, Clone)]
pub struct EncoderBinding {
    /// The image input.
    pub input: String,
    /// Its layout.
    pub layout: EncoderInput,
    /// Its declared dimensions (-1 where dynamic).
    pub input_dims: Vec<i64>,
    /// The output holding each of the family's tensors, in the family's order.
    pub outputs: Vec<String>,
}

/// The decoder's names.
#[derive(Debug, Clone)]
pub struct DecoderBinding {
    /// The input fed with each of the family's tensors, in the family's order.
    pub embeddings: Vec<String>,
    /// `point_coords`.
    pub point_coords: String,
    /// `point_labels`.
    pub point_labels: String,
    /// Whether the labels are int64 (sam2-onnx) rather than float32.
    pub labels_int64: bool,
    /// `mask_input`.
    pub mask_input: String,
    /// `has_mask_input`.
    pub has_mask_input: String,
    /// Rank of `has_mask_input`: 1 (`[B]`) or 2 (`[B, 1]`, sam2-onnx).
    pub has_mask_rank: usize,
    /// `orig_im_size`, when the graph has it (official SAM decoder).
    pub orig_im_size: Option<String>,
    /// Predicted IoU output `[B, T]`.
    pub iou: String,
    /// Low-resolution logits output `[B, T, h, w]`.
    pub masks: String,
    /// The outputs the server reads (for pruning and output selection).
    pub read: [String; 2],
}

impl DecoderBinding {
    /// The official SAM decoder's names.
    pub fn sam() -> Self {
        DecoderBinding {
            embeddings: vec!["image_embeddings".into()],
            point_coords: "point_coords".into(),
            point_labels: "point_labels".into(),
            labels_int64: false,
            mask_input: "mask_input".into(),
            has_mask_input: "has_mask_input".into(),
            has_mask_rank: 1,
            orig_im_size: Some("orig_im_size".into()),
            iou: "iou_predictions".into(),
            masks: "low_res_masks".into(),
            read: ["iou_predictions".into(), "low_res_masks".into()],
        }
    }
}

/// A recognized pair.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The family the names say.
    pub family: Family,
    /// Encoder names.
    pub encoder: EncoderBinding,
    /// Decoder names.
    pub decoder: DecoderBinding,
}

const PROMPT_INPUTS: [&str; 4] = [
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
];

/// Formats recognized only to be refused, by a name their graphs carry.
fn known_unsupported(enc: &GraphIo, dec: &GraphIo) -> Option<&'static str> {
    let names: Vec<&str> = enc
        .input_names()
        .into_iter()
        .chain(enc.output_names())
        .chain(dec.input_names())
        .chain(dec.output_names())
        .collect();
    let has = |n: &str| names.contains(&n);
    if has("batched_point_coords") || has("batched_images") {
        Some("EfficientSAM (batched_point_coords / batched_images)")
    } else if has("language_features") || has("language_mask") || has("box_coords") {
        Some("SAM 3 (language / box_coords inputs; a detector, not a promptable SAM decoder)")
    } else if has("image_embeddings") && !has("mask_input") && has("scores") {
        Some("EdgeSAM (decoder without mask_input, output 'scores')")
    } else {
        None
    }
}

/// Recognizes the pair `enc` / `dec`; the error says what was found and what is expected.
pub fn detect(enc: &GraphIo, dec: &GraphIo) -> Result<Signature, String> {
    let found = || {
        format!(
            "found: encoder {}; decoder {}",
            enc.describe(),
            dec.describe()
        )
    };
    let refuse = |why: String| Err(format!("unsupported decoder signature: {why}; {}", found()));
    if let Some(what) = known_unsupported(enc, dec) {
        return Err(format!(
            "{what} is not supported (docs/serving-sam2.md lists the formats); {}",
            found()
        ));
    }
    let dec_in = dec.input_names();
    let dec_out = dec.output_names();
    let family = if find_alias(&dec_in, "high_res_feats_0").is_some()
        || find_alias(&dec_in, "high_res_feats_1").is_some()
    {
        Family::Sam2
    } else if dec_in.contains(&"image_embeddings") {
        Family::Sam
    } else {
        return refuse(
            "no 'image_embeddings' input (SAM) and no 'high_res_feats_0' / 'high_res_feat_0' \
             input (SAM 2)"
                .into(),
        );
    };

    // Decoder.
    let mut embeddings = Vec::new();
    for t in family.tensor_names() {
        match find_alias(&dec_in, t) {
            Some(n) => embeddings.push(n.to_string()),
            None => {
                return refuse(format!(
                    "{} decoder without an input for '{t}'",
                    family.as_str()
                ))
            }
        }
    }
    let missing: Vec<&str> = PROMPT_INPUTS
        .iter()
        .copied()
        .filter(|n| !dec_in.contains(n))
        .collect();
    if !missing.is_empty() {
        return refuse(format!("no prompt inputs {missing:?}"));
    }
    let known: Vec<&str> = embeddings
        .iter()
        .map(String::as_str)
        .chain(PROMPT_INPUTS)
        .chain(["orig_im_size"])
        .collect();
    if let Some(extra) = dec_in.iter().find(|n| !known.contains(n)) {
        return refuse(format!("input '{extra}' is not one the server can feed"));
    }
    let masks = if dec_out.contains(&"low_res_masks") {
        "low_res_masks"
    } else if family == Family::Sam2 && dec_out.contains(&"masks") {
        // samexporter's SAM 2 decoder: 'masks' are the low-resolution logits.
        "masks"
    } else {
        return refuse(format!(
            "no low-resolution mask output ('low_res_masks'{})",
            if family == Family::Sam2 {
                " or 'masks'"
            } else {
                ""
            }
        ));
    };
    if !dec_out.contains(&"iou_predictions") {
        return refuse("no 'iou_predictions' output".into());
    }
    let input = |n: &str| dec.inputs.iter().find(|i| i.name == n).expect("checked");
    let decoder = DecoderBinding {
        embeddings,
        point_coords: "point_coords".into(),
        point_labels: "point_labels".into(),
        labels_int64: input("point_labels").elem_type == ELEM_INT64,
        mask_input: "mask_input".into(),
        has_mask_input: "has_mask_input".into(),
        has_mask_rank: input("has_mask_input").dims.len().clamp(1, 2),
        orig_im_size: dec_in
            .contains(&"orig_im_size")
            .then(|| "orig_im_size".to_string()),
        iou: "iou_predictions".into(),
        masks: masks.into(),
        read: ["iou_predictions".into(), masks.into()],
    };

    // Encoder.
    if enc.inputs.len() != 1 || enc.outputs.is_empty() {
        return Err(format!(
            "unsupported encoder: expected one image input and at least one output; {}",
            found()
        ));
    }
    let image = &enc.inputs[0];
    let layout = match image.dims.as_slice() {
        [_, 3, _, _] => EncoderInput::NchwNormalized,
        [_, _, 3] if family == Family::Sam => EncoderInput::HwcRaw,
        _ => {
            return Err(format!(
                "unsupported encoder input {image} (expected [1, 3, L, L] NCHW{}); {}",
                if family == Family::Sam {
                    " or [h, w, 3] HWC"
                } else {
                    ""
                },
                found()
            ))
        }
    };
    let enc_out = enc.output_names();
    let mut outputs = Vec::new();
    for t in family.tensor_names() {
        let name = match (find_alias(&enc_out, t), family) {
            (Some(n), _) => n,
            // A SAM encoder's only output, whatever its name.
            (None, Family::Sam) => enc_out[0],
            (None, Family::Sam2) => {
                return Err(format!(
                    "SAM 2 encoder without an output for '{t}'; {}",
                    found()
                ))
            }
        };
        outputs.push(name.to_string());
    }
    Ok(Signature {
        family,
        encoder: EncoderBinding {
            input: image.name.clone(),
            layout,
            input_dims: image.dims.clone(),
            outputs,
        },
        decoder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::onnx_io::{Io, ELEM_FLOAT};

    fn io(specs: &[(&str, i32, &[i64])]) -> Vec<Io> {
        specs
            .iter()
            .map(|(n, t, d)| Io {
                name: n.to_string(),
                elem_type: *t,
                dims: d.to_vec(),
            })
            .collect()
    }

    const F: i32 = ELEM_FLOAT;

    fn sam2_onnx_pair() -> (GraphIo, GraphIo) {
        // sam2-onnx 0.3.12: other names and order, int64 labels, [1, 1] flag.
        let enc = GraphIo {
            inputs: io(&[("image", F, &[1, 3, 1024, 1024])]),
            outputs: io(&[
                ("image_embed", F, &[1, 256, 64, 64]),
                ("high_res_feat_0", F, &[1, 32, 256, 256]),
                ("high_res_feat_1", F, &[1, 64, 128, 128]),
            ]),
        };
        let dec = GraphIo {
            inputs: io(&[
                ("image_embed", F, &[1, 256, 64, 64]),
                ("high_res_feat_0", F, &[1, 32, 256, 256]),
                ("high_res_feat_1", F, &[1, 64, 128, 128]),
                ("point_coords", F, &[1, -1, 2]),
                ("point_labels", ELEM_INT64, &[1, -1]),
                ("mask_input", F, &[1, 1, 256, 256]),
                ("has_mask_input", F, &[1, 1]),
            ]),
            outputs: io(&[
                ("low_res_masks", F, &[1, 3, 256, 256]),
                ("iou_predictions", F, &[1, 3]),
            ]),
        };
        (enc, dec)
    }

    #[test]
    fn binds_sam2_onnx_names() {
        let (enc, dec) = sam2_onnx_pair();
        let s = detect(&enc, &dec).unwrap();
        assert_eq!(s.family, Family::Sam2);
        assert_eq!(
            s.encoder.outputs,
            ["image_embed", "high_res_feat_0", "high_res_feat_1"]
        );
        assert_eq!(s.decoder.embeddings, s.encoder.outputs);
        assert!(s.decoder.labels_int64);
        assert_eq!(s.decoder.has_mask_rank, 2);
        assert_eq!(s.decoder.masks, "low_res_masks");
    }

    #[test]
    fn refuses_what_it_cannot_feed() {
        let (enc, mut dec) = sam2_onnx_pair();
        dec.inputs
            .push(io(&[("language_features", F, &[1])]).remove(0));
        let e = detect(&enc, &dec).unwrap_err();
        assert!(
            e.contains("SAM 3") && e.contains("language_features"),
            "{e}"
        );
        let (enc, mut dec) = sam2_onnx_pair();
        dec.inputs.retain(|i| i.name != "high_res_feat_1");
        let e = detect(&enc, &dec).unwrap_err();
        assert!(e.contains("high_res_feats_1") && e.contains("found"), "{e}");
        let (mut enc, dec) = sam2_onnx_pair();
        enc.outputs.remove(2);
        assert!(detect(&enc, &dec).unwrap_err().contains("encoder"));
        let (enc, mut dec) = sam2_onnx_pair();
        dec.inputs[0].name = "features".into();
        dec.inputs[1].name = "hr0".into();
        dec.inputs[2].name = "hr1".into();
        let e = detect(&enc, &dec).unwrap_err();
        assert!(e.contains("no 'image_embeddings'"), "{e}");
    }
}
