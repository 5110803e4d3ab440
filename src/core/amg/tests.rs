//! Parity tests against fixtures written by the reference implementation
//! (`tools/amg_parity.py units` and `e2e`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use super::*;
use crate::core::masks::rle::{self, CocoRle};
use crate::core::masks::BinaryMask;
use crate::error::ApiError;
use crate::runtime::model::TokenOutput;

fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/amg/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn mask_from_rows(rows: &[String], width: u32, height: u32) -> BinaryMask {
    let data: Vec<u8> = rows
        .iter()
        .flat_map(|r| r.bytes().map(|b| (b == b'1') as u8))
        .collect();
    BinaryMask::from_data(width, height, data).unwrap()
}

#[derive(Deserialize)]
struct Units {
    point_grids: Vec<GridCase>,
    layer_grids: Vec<LayerGridCase>,
    crop_boxes: Vec<CropCase>,
    stability: Vec<StabilityCase>,
    mask_to_box: Vec<BoxCase>,
    near_crop_edge: Vec<EdgeCase>,
    nms: Vec<NmsCase>,
    remove_small_regions: Vec<RegionsCase>,
}

#[derive(Deserialize)]
struct GridCase {
    n: usize,
    /// repr() strings: Rust's `str::parse` is correctly rounded, serde_json's default
    /// float parser is not (it can be one ulp off).
    points: Vec<[String; 2]>,
}

fn parse_f64(s: &str) -> f64 {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn parse_points(points: &[[String; 2]]) -> Vec<[f64; 2]> {
    points
        .iter()
        .map(|p| [parse_f64(&p[0]), parse_f64(&p[1])])
        .collect()
}

#[derive(Deserialize)]
struct LayerGridCase {
    n: usize,
    n_layers: u32,
    scale: u32,
    sizes: Vec<usize>,
}

#[derive(Deserialize)]
struct CropCase {
    height: u32,
    width: u32,
    n_layers: u32,
    overlap_ratio: f64,
    boxes: Vec<[u32; 4]>,
    layers: Vec<usize>,
}

#[derive(Deserialize)]
struct StabilityCase {
    height: usize,
    width: usize,
    logits: Vec<f64>,
    results: Vec<StabilityResult>,
}

#[derive(Deserialize)]
struct StabilityResult {
    offset: f64,
    score: Option<f64>,
}

#[derive(Deserialize)]
struct BoxCase {
    mask: Vec<String>,
    width: u32,
    height: u32,
    #[serde(rename = "box")]
    bbox: [u32; 4],
}

#[derive(Deserialize)]
struct EdgeCase {
    #[serde(rename = "box")]
    bbox: [u32; 4],
    crop_box: [u32; 4],
    orig_box: [u32; 4],
    near: bool,
}

#[derive(Deserialize)]
struct NmsCase {
    boxes: Vec<[f64; 4]>,
    scores: Vec<f64>,
    results: Vec<NmsResult>,
}

#[derive(Deserialize)]
struct NmsResult {
    iou_threshold: f64,
    keep: Vec<usize>,
}

#[derive(Deserialize)]
struct RegionsCase {
    mask: Vec<String>,
    width: u32,
    height: u32,
    results: Vec<RegionsResult>,
}

#[derive(Deserialize)]
struct RegionsResult {
    mode: String,
    area_thresh: u64,
    changed: bool,
    result: Option<Vec<String>>,
}

#[test]
fn units_match_reference() {
    let u: Units = fixture("units.json");

    for c in &u.point_grids {
        assert_eq!(
            build_point_grid(c.n),
            parse_points(&c.points),
            "point grid n={}",
            c.n
        );
    }
    for c in &u.layer_grids {
        let got: Vec<usize> = build_all_layer_point_grids(c.n, c.n_layers, c.scale)
            .iter()
            .map(|g| (g.len() as f64).sqrt().round() as usize)
            .collect();
        assert_eq!(
            got, c.sizes,
            "layer grids {} {} {}",
            c.n, c.n_layers, c.scale
        );
        assert_eq!(
            layer_points_per_side(c.n, c.n_layers as i64, c.scale),
            c.sizes
        );
    }

    for c in &u.crop_boxes {
        let got = generate_crop_boxes(c.width, c.height, c.n_layers, c.overlap_ratio);
        let boxes: Vec<[u32; 4]> = got.iter().map(|b| b.xyxy).collect();
        let layers: Vec<usize> = got.iter().map(|b| b.layer).collect();
        let what = format!(
            "{}x{} layers {} ratio {}",
            c.width, c.height, c.n_layers, c.overlap_ratio
        );
        assert_eq!(boxes, c.boxes, "crop boxes {what}");
        assert_eq!(layers, c.layers, "crop layers {what}");
    }

    for c in &u.stability {
        let logits: Vec<f32> = c.logits.iter().map(|&v| v as f32).collect();
        assert_eq!(logits.len(), c.width * c.height);
        for r in &c.results {
            let got = stability_score(&logits, 0.0, r.offset);
            match r.score {
                None => assert!(got.is_nan(), "expected NaN, got {got}"),
                Some(want) => assert_eq!(got, want as f32, "stability offset {}", r.offset),
            }
        }
    }

    for c in &u.mask_to_box {
        let m = mask_from_rows(&c.mask, c.width, c.height);
        assert_eq!(mask_to_box(&m), c.bbox, "mask {:?}", c.mask);
    }

    for c in &u.near_crop_edge {
        assert_eq!(
            is_box_near_crop_edge(c.bbox, c.crop_box, c.orig_box, 20.0),
            c.near,
            "box {:?} crop {:?} orig {:?}",
            c.bbox,
            c.crop_box,
            c.orig_box
        );
    }

    for c in &u.nms {
        let boxes: Vec<[f32; 4]> = c.boxes.iter().map(|b| b.map(|v| v as f32)).collect();
        let scores: Vec<f32> = c.scores.iter().map(|&v| v as f32).collect();
        for r in &c.results {
            assert_eq!(
                batched_nms(&boxes, &scores, r.iou_threshold),
                r.keep,
                "nms of {} boxes at {}",
                boxes.len(),
                r.iou_threshold
            );
        }
    }

    let mut checked = 0;
    for c in &u.remove_small_regions {
        let m = mask_from_rows(&c.mask, c.width, c.height);
        for r in &c.results {
            let mode = match r.mode.as_str() {
                "holes" => RegionMode::Holes,
                "islands" => RegionMode::Islands,
                other => panic!("mode {other}"),
            };
            let (got, changed) = remove_small_regions(&m, r.area_thresh, mode);
            let want = match &r.result {
                Some(rows) => mask_from_rows(rows, c.width, c.height),
                None => m.clone(),
            };
            assert_eq!(
                changed, r.changed,
                "{} {} on {:?}",
                r.mode, r.area_thresh, c.mask
            );
            assert_eq!(got, want, "{} {} on {:?}", r.mode, r.area_thresh, c.mask);
            checked += 1;
        }
    }
    assert!(checked > 100);
}

// ---------------------------------------------------------------------------
// The closed-form fake model of tools/amg_parity.py (see fake_logits there).
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
struct Ellipse {
    cx: f64,
    cy: f64,
    a: f64,
    b: f64,
    steep: f64,
    hole: [f64; 3],
    sat: [f64; 3],
}

struct FakeBackend {
    scene: Vec<Ellipse>,
    calls: AtomicUsize,
    encodes: AtomicUsize,
}

impl FakeBackend {
    fn new(scene: Vec<Ellipse>) -> Self {
        Self {
            scene,
            calls: AtomicUsize::new(0),
            encodes: AtomicUsize::new(0),
        }
    }

    fn outputs(&self, crop: [u32; 4], p: [f64; 2]) -> Vec<TokenOutput> {
        let (w, h) = ((crop[2] - crop[0]) as usize, (crop[3] - crop[1]) as usize);
        let (x0, y0) = (crop[0] as f64, crop[1] as f64);
        let px = p[0] + x0;
        let py = p[1] + y0;
        let obj = self.scene.iter().find(|o| {
            let u = (px - o.cx) / o.a;
            let v = (py - o.cy) / o.b;
            u * u + v * v <= 1.0
        });
        let disc = |cx: f64, cy: f64, r: f64, s: f64, x: f64, y: f64| {
            let dx = x - cx;
            let dy = y - cy;
            s * (1.0 - (dx * dx + dy * dy) / (r * r))
        };
        let ell = |o: &Ellipse, x: f64, y: f64| {
            let u = (x - o.cx) / o.a;
            let v = (y - o.cy) / o.b;
            o.steep * (1.0 - (u * u + v * v))
        };
        let plane = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f32> {
            let mut out = Vec::with_capacity(w * h);
            for y in 0..h {
                for x in 0..w {
                    out.push(f(x as f64 + x0, y as f64 + y0) as f32);
                }
            }
            out
        };
        let t0 = plane(&|x, y| disc(px, py, 5.0, 40.0, x, y));
        let (t1, t2) = match obj {
            None => {
                let v = if (px.floor() as i64 + py.floor() as i64) % 2 == 0 {
                    2.0f32
                } else {
                    -2.0
                };
                (plane(&|x, y| disc(px, py, 12.0, 3.0, x, y)), vec![v; w * h])
            }
            Some(o) => {
                let sat = |x, y| disc(o.sat[0], o.sat[1], o.sat[2], o.steep, x, y);
                (
                    plane(&|x, y| ell(o, x, y).max(sat(x, y))),
                    plane(&|x, y| {
                        let hole = -disc(o.hole[0], o.hole[1], o.hole[2], o.steep, x, y);
                        ell(o, x, y).min(hole).max(sat(x, y))
                    }),
                )
            }
        };
        let base = 3 * px.floor() as i64 + 5 * py.floor() as i64;
        [t0, t1, t2]
            .into_iter()
            .enumerate()
            .map(|(k, logits)| TokenOutput {
                token: k + 1,
                score: (0.70 + 0.01 * ((base + 7 * k as i64) % 29) as f64) as f32,
                low_res: logits,
            })
            .collect()
    }
}

impl AmgBackend for FakeBackend {
    type Crop = [u32; 4];

    fn encode_crop(
        &self,
        crop: [u32; 4],
    ) -> impl Future<Output = Result<Self::Crop, ApiError>> + Send {
        self.encodes.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(crop))
    }

    fn decode_points(
        &self,
        crop: &Self::Crop,
        points: &[[f64; 2]],
    ) -> impl Future<Output = Result<Vec<Vec<TokenOutput>>, ApiError>> + Send {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let out = points.iter().map(|&p| self.outputs(*crop, p)).collect();
        std::future::ready(Ok(out))
    }

    /// The fake decoder answers at full resolution already.
    fn upscaler(&self, _: &Self::Crop) -> Upscaler {
        Arc::new(|logits: &[f32]| logits.to_vec())
    }
}

#[derive(Deserialize)]
struct E2e {
    cases: Vec<E2eCase>,
}

#[derive(Deserialize)]
struct E2eCase {
    name: String,
    width: u32,
    height: u32,
    scene: Vec<Ellipse>,
    params: AmgParams,
    decoder_calls: usize,
    records: Vec<Record>,
}

#[derive(Debug, Deserialize)]
struct Record {
    segmentation: CocoRle,
    area: u64,
    bbox: [u32; 4],
    predicted_iou: f64,
    point_coords_repr: Vec<[String; 2]>,
    /// null for NaN.
    stability_score: Option<f64>,
    crop_box: [u32; 4],
}

fn check_records(name: &str, got: &[AmgMask], want: &[Record]) {
    assert_eq!(got.len(), want.len(), "{name}: number of masks");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ctx = format!("{name} record {i}");
        // The expected f32 values went through serde_json's f64 parser, which can be an ulp
        // off; rounding back to f32 recovers them exactly.
        assert_eq!(
            g.predicted_iou, w.predicted_iou as f32,
            "{ctx} predicted_iou"
        );
        assert_eq!(
            vec![g.point_coords],
            parse_points(&w.point_coords_repr),
            "{ctx} point_coords"
        );
        match w.stability_score {
            None => assert!(g.stability_score.is_nan(), "{ctx} stability should be NaN"),
            Some(want) => assert_eq!(g.stability_score, want as f32, "{ctx} stability"),
        }
        assert_eq!(g.crop_box, w.crop_box, "{ctx} crop_box");
        assert_eq!(g.bbox, w.bbox, "{ctx} bbox");
        assert_eq!(g.area, w.area, "{ctx} area");
        assert_eq!(g.segmentation.area(), g.area, "{ctx} area vs mask");
        assert_eq!(
            rle::encode(&g.segmentation),
            w.segmentation,
            "{ctx} segmentation"
        );
    }
}

#[test]
fn fake_model_end_to_end_matches_reference() {
    let e2e: E2e = fixture("fake_e2e.json");
    assert!(e2e.cases.len() >= 5);
    for case in &e2e.cases {
        let backend = FakeBackend::new(case.scene.clone());
        let mut last = None;
        let mut updates = 0;
        let out = futures::executor::block_on(generate(
            &backend,
            case.width,
            case.height,
            &case.params,
            |p| {
                if let Some(prev) = last {
                    let prev: AmgProgress = prev;
                    assert!(p.points_done >= prev.points_done && p.crops_done >= prev.crops_done);
                }
                last = Some(p);
                updates += 1;
            },
        ))
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        check_records(&case.name, &out.masks, &case.records);
        assert_eq!(
            backend.calls.load(Ordering::Relaxed),
            case.decoder_calls,
            "{}: decoder calls",
            case.name
        );
        let last = last.expect("progress was reported");
        assert_eq!(last.crops_done, last.crops_total);
        assert_eq!(last.points_done, last.points_total);
        assert_eq!(last.crops_total, backend.encodes.load(Ordering::Relaxed));
        assert_eq!(updates, case.decoder_calls + last.crops_total);
        assert!(!out.summary.truncated);
        assert_eq!(out.summary.masks_before_caps, out.masks.len());
        assert!(out.summary.candidates >= out.masks.len());
    }
}

#[test]
fn records_expand_to_the_same_masks() {
    let e2e: E2e = fixture("fake_e2e.json");
    let case = &e2e.cases[0];
    let backend = FakeBackend::new(case.scene.clone());
    let settings = case.params.resolve().unwrap();
    let records = futures::executor::block_on(generate_records(
        &backend,
        case.width,
        case.height,
        &settings,
        |_| {},
    ))
    .unwrap();
    let one = records.mask(3);
    let all = records.into_output();
    assert_eq!(all.masks[3], one);
    check_records(&case.name, &all.masks, &case.records);
}

#[test]
fn runs_on_a_tokio_runtime() {
    let e2e: E2e = fixture("fake_e2e.json");
    let case = e2e
        .cases
        .iter()
        .find(|c| {
            c.params.min_mask_region_area.unwrap_or(0) > 0
                && c.params.crop_n_layers.unwrap_or(0) > 0
        })
        .expect("a case with crops and postprocessing");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let backend = FakeBackend::new(case.scene.clone());
    let out = rt
        .block_on(generate(
            &backend,
            case.width,
            case.height,
            &case.params,
            |_| {},
        ))
        .unwrap();
    check_records(&case.name, &out.masks, &case.records);
}

#[test]
fn caps_keep_the_highest_predicted_iou_in_reference_order() {
    let e2e: E2e = fixture("fake_e2e.json");
    let case = &e2e.cases[0];
    let backend = FakeBackend::new(case.scene.clone());
    let run = |params: &AmgParams| {
        futures::executor::block_on(generate(&backend, case.width, case.height, params, |_| {}))
            .unwrap()
    };
    let full = run(&case.params).masks;
    assert!(full.len() > 10);

    let mut by_iou: Vec<usize> = (0..full.len()).collect();
    by_iou.sort_by(|&a, &b| {
        full[b]
            .predicted_iou
            .total_cmp(&full[a].predicted_iou)
            .then(a.cmp(&b))
    });
    let expect = |n: usize| -> Vec<AmgMask> {
        let mut idx = by_iou[..n].to_vec();
        idx.sort_unstable();
        idx.into_iter().map(|i| full[i].clone()).collect()
    };

    let mut p = case.params.clone();
    p.max_masks = Some(7);
    let out = run(&p);
    assert!(out.summary.truncated);
    assert_eq!(out.summary.masks_before_caps, full.len());
    assert_eq!(out.masks, expect(7));

    let mut p = case.params.clone();
    let budget: u64 = by_iou[..4].iter().map(|&i| full[i].area).sum();
    p.max_total_pixels = Some(budget as i64);
    let out = run(&p);
    assert!(out.summary.truncated);
    assert_eq!(out.masks, expect(4));

    let mut p = case.params.clone();
    p.max_masks = Some(full.len() as i64);
    p.max_total_pixels = Some(i64::MAX);
    let out = run(&p);
    assert!(!out.summary.truncated);
    assert_eq!(out.masks, full);
}

#[test]
fn refuses_bad_params_and_tiny_images() {
    let backend = FakeBackend::new(Vec::new());
    let run = |w, h, json: &str| {
        let params: AmgParams = serde_json::from_str(json).unwrap();
        futures::executor::block_on(generate(&backend, w, h, &params, |_| {}))
    };
    assert!(matches!(
        run(64, 64, r#"{"points_per_side": 0}"#),
        Err(ApiError::InvalidPrompt(_))
    ));
    assert!(matches!(
        run(3, 3, r#"{"crop_n_layers": 4, "points_per_side": 16}"#),
        Err(ApiError::InvalidPrompt(_))
    ));
    assert!(matches!(run(0, 5, "{}"), Err(ApiError::InvalidPrompt(_))));
    // No mask survives: the reference fails on the cross-crop NMS here; an empty result is
    // the sensible answer.
    let out = run(
        64,
        48,
        r#"{"points_per_side": 4, "crop_n_layers": 1, "pred_iou_thresh": 0.999}"#,
    )
    .unwrap();
    assert!(out.masks.is_empty());
    assert_eq!(out.summary.crops, 5);
    assert_eq!(out.summary.points, 5 * 16);
    assert_eq!(backend.encodes.load(Ordering::Relaxed), 5);
}

struct BrokenBackend;

impl AmgBackend for BrokenBackend {
    type Crop = ();

    fn encode_crop(&self, _: [u32; 4]) -> impl Future<Output = Result<(), ApiError>> + Send {
        std::future::ready(Ok(()))
    }

    fn decode_points(
        &self,
        _: &(),
        points: &[[f64; 2]],
    ) -> impl Future<Output = Result<Vec<Vec<TokenOutput>>, ApiError>> + Send {
        let out = points
            .iter()
            .map(|_| {
                vec![TokenOutput {
                    token: 1,
                    score: 1.0,
                    low_res: vec![1.0; 3],
                }]
            })
            .collect();
        std::future::ready(Ok(out))
    }

    fn upscaler(&self, _: &()) -> Upscaler {
        Arc::new(|logits: &[f32]| logits.to_vec())
    }
}

#[test]
fn wrong_logit_sizes_are_internal_errors() {
    let params: AmgParams = serde_json::from_str(r#"{"points_per_side": 2}"#).unwrap();
    let err =
        futures::executor::block_on(generate(&BrokenBackend, 10, 10, &params, |_| {})).unwrap_err();
    assert!(matches!(err, ApiError::Internal(_)), "{err}");
}

/// `generate`'s future must be `Send` for axum handlers and `tokio::spawn`.
#[allow(dead_code)]
fn generate_future_is_send(backend: &FakeBackend, params: &AmgParams) {
    fn assert_send<T: Send>(_: &T) {}
    let fut = generate(backend, 1, 1, params, |_| {});
    assert_send(&fut);
}
