//! The SAM 2 parity goldens (tests/fixtures/sam2/cases.json, written by
//! tools/sam2_parity.py from the official SAM2ImagePredictor on the weights of
//! tests/fixtures/models/sam2-mini) and the requests they stand for.

use std::collections::HashMap;

use samserve::core::masks::rle::{self, CocoRle};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct Fixture {
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    pub name: String,
    /// Relative to tests/fixtures.
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub prompts: Vec<CasePrompt>,
    pub refine_from: Option<RefineFrom>,
    /// Per prompt, masks by descending score.
    pub expected: Vec<Vec<Expected>>,
}

#[derive(Deserialize)]
pub struct CasePrompt {
    pub points: Vec<[f64; 3]>,
    pub r#box: Option<[f64; 4]>,
    pub multimask_output: Option<bool>,
}

impl CasePrompt {
    /// The request's multimask choice (samserve's default when the golden leaves it open).
    pub fn multimask(&self) -> bool {
        self.multimask_output
            .unwrap_or(self.r#box.is_none() && self.points.len() == 1)
    }
}

#[derive(Deserialize)]
pub struct RefineFrom {
    pub case: String,
    pub mask_index: usize,
}

#[derive(Deserialize)]
pub struct Expected {
    pub token: usize,
    pub score: f64,
    pub rle: CocoRle,
}

pub fn load() -> Fixture {
    let path = super::repo().join("tests/fixtures/sam2/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The request body of a case; prompt 0 refines the mask `handles` recorded for the case it
/// names.
pub fn request(case: &Case, handles: &HashMap<String, Vec<String>>) -> Value {
    let prompts: Vec<Value> = case
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut v = json!({
                "points": p.points.iter()
                    .map(|q| json!({"x": q[0], "y": q[1], "label": q[2] as i64}))
                    .collect::<Vec<_>>(),
                "multimask_output": p.multimask(),
            });
            if let Some(b) = p.r#box {
                v["box"] = json!(b);
            }
            if let (0, Some(r)) = (i, &case.refine_from) {
                v["mask_input"] = json!(handles[&r.case][r.mask_index]);
            }
            v
        })
        .collect();
    json!({"prompts": prompts, "return_logits": true})
}

/// IoU of every answered mask with its golden, in order; and the answers' tokens with the
/// goldens'.
pub struct Comparison {
    pub ious: Vec<(f64, String)>,
    pub score_diffs: Vec<f64>,
    pub token_mismatches: Vec<String>,
}

/// Replays `cases` (those `keep` accepts) against the server, uploading each image once.
pub async fn replay(
    s: &super::TestServer,
    cases: &[Case],
    keep: impl Fn(&Case) -> bool,
) -> Comparison {
    let dir = super::repo().join("tests/fixtures");
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut handles: HashMap<String, Vec<String>> = HashMap::new();
    let mut out = Comparison {
        ious: Vec::new(),
        score_diffs: Vec::new(),
        token_mismatches: Vec::new(),
    };
    for case in cases.iter().filter(|c| keep(c)) {
        if let Some(r) = &case.refine_from {
            if !handles.contains_key(&r.case) {
                continue;
            }
        }
        if !ids.contains_key(&case.image) {
            let up = s
                .upload(&std::fs::read(dir.join(&case.image)).unwrap())
                .await;
            assert_eq!(
                (up["width"].as_u64(), up["height"].as_u64()),
                (Some(case.width as u64), Some(case.height as u64)),
                "{}",
                case.name
            );
            ids.insert(
                case.image.clone(),
                up["image_id"].as_str().unwrap().to_string(),
            );
        }
        let (st, body) = s.segment(&ids[&case.image], &request(case, &handles)).await;
        assert_eq!(st, 200, "{}: {body}", case.name);
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), case.expected.len(), "{}", case.name);
        handles.insert(
            case.name.clone(),
            results[0]["masks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["logits_handle"].as_str().unwrap().to_string())
                .collect(),
        );
        for (p, (res, exp)) in results.iter().zip(&case.expected).enumerate() {
            let masks = res["masks"].as_array().unwrap();
            assert_eq!(
                masks.len(),
                exp.len(),
                "{} prompt {p}: mask count",
                case.name
            );
            for (i, (m, e)) in masks.iter().zip(exp).enumerate() {
                let got = super::rle_mask(m);
                let want = rle::decode(&e.rle).unwrap();
                out.ious
                    .push((got.iou(&want), format!("{} prompt {p} mask {i}", case.name)));
                out.score_diffs
                    .push((m["score"].as_f64().unwrap() - e.score).abs());
                if m["token"].as_u64() != Some(e.token as u64) {
                    out.token_mismatches.push(format!(
                        "{} prompt {p} mask {i}: token {}, the reference's {}",
                        case.name, m["token"], e.token
                    ));
                }
            }
        }
    }
    out
}

impl Comparison {
    pub fn mean_iou(&self) -> f64 {
        self.ious.iter().map(|(v, _)| v).sum::<f64>() / self.ious.len().max(1) as f64
    }

    pub fn worst(&self) -> (f64, String) {
        self.ious
            .iter()
            .cloned()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((1.0, String::new()))
    }
}
