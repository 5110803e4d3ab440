//! Prompt types, their validation, and their transformation into decoder inputs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::mask_store::MaskStore;
use crate::error::ApiError;
use crate::runtime::model::{DecoderPrompt, Embedding, MaskOutput, ModelSpec};

/// A click in original-image pixel coordinates: always an object
/// `{"x": 230, "y": 256, "label": 1}` (an array such as `[230, 256]` is refused with a
/// message naming this form).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
// For the schema (the reading is `PointFields`): no other keys, `label` optional.
#[serde(deny_unknown_fields)]
pub struct Point {
    /// X in pixels, `0 <= x <= width`.
    pub x: f64,
    /// Y in pixels, `0 <= y <= height`.
    pub y: f64,
    /// 1 = foreground, 0 = background.
    #[serde(default = "default_label")]
    #[schema(minimum = 0, maximum = 1, default = 1)]
    pub label: i64,
}

/// The fields of a point object, as read from JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointFields {
    x: f64,
    y: f64,
    #[serde(default = "default_label", deserialize_with = "super::lenient::i64")]
    label: i64,
}

fn default_label() -> i64 {
    1
}

/// What a point must look like, for error messages.
pub const POINT_FORM: &str = r#"a point object like {"x": 230, "y": 256, "label": 1}"#;

impl<'de> Deserialize<'de> for Point {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Point;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(POINT_FORM)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Point, A::Error> {
                let p =
                    PointFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Point {
                    x: p.x,
                    y: p.y,
                    label: p.label,
                })
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// One prompt: any combination of clicks, one box and an earlier mask.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    /// Clicks (at most `--max-points`, 64 by default).
    #[serde(default)]
    #[schema(max_items = 64)]
    pub points: Vec<Point>,
    /// Box `[x0, y0, x1, y1]` in pixels.
    #[serde(default)]
    #[schema(min_items = 4, max_items = 4)]
    pub r#box: Option<[f64; 4]>,
    /// Handle of low-res logits returned by an earlier call on the same image (`logits_handle`).
    #[serde(default)]
    pub mask_input: Option<String>,
    /// Return the three ambiguity masks instead of one. Default: true for a single click
    /// without box, else false (as the reference recommends).
    #[serde(default)]
    pub multimask_output: Option<bool>,
    /// A phrase naming what to segment ("the blue star"), for models with a text model.
    /// Cannot be combined with points or `mask_input`; a `box` restricts the search to
    /// masks inside it. Masks come back sorted by `text_score`.
    #[serde(default)]
    pub text: Option<String>,
    /// Masks to return for a text prompt (1 by default, at most 100).
    #[serde(default, deserialize_with = "super::lenient::opt_usize")]
    pub max_masks: Option<usize>,
}

/// Limits applied to prompts.
#[derive(Debug, Clone, Copy)]
pub struct PromptLimits {
    /// Most points per prompt.
    pub max_points: usize,
    /// Most prompts per request.
    pub max_prompts: usize,
}

/// Validates the prompts of one request against the image and converts them to the
/// decoder's frame.
///
/// `default_multimask` is the request-level override of the per-prompt default.
#[allow(clippy::too_many_arguments)]
pub fn prepare_prompts(
    prompts: &[Prompt],
    default_multimask: Option<bool>,
    limits: PromptLimits,
    spec: &ModelSpec,
    emb: &Embedding,
    model: &Arc<str>,
    image_id: &Arc<str>,
    store: &MaskStore,
) -> Result<Vec<DecoderPrompt>, ApiError> {
    if prompts.is_empty() {
        return Err(ApiError::prompt("no prompts given"));
    }
    if prompts.len() > limits.max_prompts {
        return Err(ApiError::prompt(format!(
            "{} prompts given, the limit is {}",
            prompts.len(),
            limits.max_prompts
        )));
    }
    let (w, h) = (emb.width as f64, emb.height as f64);
    let in_range = |what: &str, i: usize, x: f64, y: f64| -> Result<(), ApiError> {
        if !x.is_finite() || !y.is_finite() {
            return Err(ApiError::prompt(format!(
                "prompt {i}: {what} has a non-finite coordinate"
            )));
        }
        if x < 0.0 || y < 0.0 || x > w || y > h {
            return Err(ApiError::prompt(format!(
                "prompt {i}: {what} ({x}, {y}) is outside the {w}x{h} image"
            )));
        }
        Ok(())
    };
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        if p.points.is_empty() && p.r#box.is_none() && p.mask_input.is_none() {
            return Err(ApiError::prompt(format!(
                "prompt {i} is empty: give points, a box or a mask_input"
            )));
        }
        if p.max_masks.is_some() {
            return Err(ApiError::prompt(format!(
                "prompt {i}: max_masks applies to text prompts only"
            )));
        }
        if p.points.len() > limits.max_points {
            return Err(ApiError::prompt(format!(
                "prompt {i}: {} points, the limit is {}",
                p.points.len(),
                limits.max_points
            )));
        }
        let mut points = Vec::with_capacity(p.points.len());
        for (j, pt) in p.points.iter().enumerate() {
            in_range(&format!("point {j}"), i, pt.x, pt.y)?;
            if pt.label != 0 && pt.label != 1 {
                return Err(ApiError::prompt(format!(
                    "prompt {i}: point {j} has label {}, expected 1 (foreground) or 0 (background)",
                    pt.label
                )));
            }
            points.push((pt.x, pt.y, pt.label as f32));
        }
        if let Some([x0, y0, x1, y1]) = p.r#box {
            in_range("box corner", i, x0, y0)?;
            in_range("box corner", i, x1, y1)?;
            if x1 < x0 || y1 < y0 {
                return Err(ApiError::prompt(format!(
                    "prompt {i}: box [{x0}, {y0}, {x1}, {y1}] is inverted (need x0 <= x1, y0 <= y1)"
                )));
            }
        }
        let mask_input = match &p.mask_input {
            None => None,
            Some(handle) => {
                let stored = store.get(handle).ok_or_else(|| {
                    ApiError::prompt(format!(
                        "prompt {i}: mask_input '{handle}' is unknown or expired"
                    ))
                })?;
                if stored.model != *model || stored.image_id != *image_id {
                    return Err(ApiError::prompt(format!(
                        "prompt {i}: mask_input '{handle}' belongs to another image or model"
                    )));
                }
                let [mh, mw] = spec.low_res_size;
                if stored.data.len() != mh * mw {
                    return Err(ApiError::prompt(format!(
                        "prompt {i}: mask_input '{handle}' has the wrong size"
                    )));
                }
                Some(stored.data.clone())
            }
        };
        let multimask = p
            .multimask_output
            .or(default_multimask)
            .unwrap_or(p.points.len() == 1 && p.r#box.is_none());
        let output = if multimask {
            MaskOutput::Multimask
        } else {
            MaskOutput::Single
        };
        out.push(spec.decoder_prompt(emb, &points, p.r#box, mask_input, output));
    }
    Ok(out)
}
