//! The reference pipeline's golden cases (tests/fixtures/parity/cases.json, written by
//! tools/parity.py) and the segment request each case stands for.

use std::collections::HashMap;

use samserve::core::masks::rle::CocoRle;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct Fixture {
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    pub name: String,
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub prompt: CasePrompt,
    pub refine_from: Option<RefineFrom>,
    pub expected: Vec<Expected>,
}

#[derive(Deserialize)]
pub struct CasePrompt {
    #[serde(default)]
    pub points: Vec<[f64; 3]>,
    #[serde(default)]
    pub r#box: Option<[f64; 4]>,
    #[serde(default)]
    pub multimask_output: Option<bool>,
}

#[derive(Deserialize)]
pub struct RefineFrom {
    pub case: String,
    pub mask_index: usize,
}

#[derive(Deserialize)]
pub struct Expected {
    pub score: f64,
    pub area: u64,
    pub rle: CocoRle,
}

/// The fixture folder and its parsed cases.
pub fn load() -> (std::path::PathBuf, Fixture) {
    let dir = super::repo().join("tests/fixtures/parity");
    let fixture =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    (dir, fixture)
}

/// The request body's prompt for a case. A refinement case feeds the logits handle of the
/// earlier case's mask, looked up in `handles` (case name -> handles of its answer's masks).
pub fn prompt(case: &Case, handles: &HashMap<String, Vec<String>>) -> Value {
    let mut prompt = json!({
        "points": case.prompt.points.iter()
            .map(|p| json!({"x": p[0], "y": p[1], "label": p[2] as i64}))
            .collect::<Vec<_>>(),
    });
    if let Some(b) = case.prompt.r#box {
        prompt["box"] = json!(b);
    }
    if let Some(m) = case.prompt.multimask_output {
        prompt["multimask_output"] = json!(m);
    }
    if let Some(r) = &case.refine_from {
        prompt["mask_input"] = json!(handles[&r.case][r.mask_index]);
    }
    prompt
}

/// The logits handles of an answer's masks (the request asked for `return_logits`).
pub fn handles_of(masks: &[Value]) -> Vec<String> {
    masks
        .iter()
        .map(|m| m["logits_handle"].as_str().unwrap().to_string())
        .collect()
}

/// Sends a case's prompt (with `return_logits`) for an uploaded image, checks the answer is
/// 200 with as many masks as the golden, records their logits handles for later refinement
/// cases, and returns the masks.
pub async fn ask(
    s: &super::TestServer,
    image_id: &str,
    case: &Case,
    handles: &mut HashMap<String, Vec<String>>,
) -> Vec<Value> {
    let prompt = self::prompt(case, handles);
    let (st, body) = s
        .segment(
            image_id,
            &json!({"prompts": [prompt], "return_logits": true}),
        )
        .await;
    assert_eq!(st, 200, "{}: {body}", case.name);
    let masks = body["results"][0]["masks"].as_array().unwrap().clone();
    assert_eq!(
        masks.len(),
        case.expected.len(),
        "{}: mask count",
        case.name
    );
    handles.insert(case.name.clone(), handles_of(&masks));
    masks
}
