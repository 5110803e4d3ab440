//! Text prompts: "the blue star" -> the candidate masks that match the phrase best.
//!
//! Candidate masks of an image come from segment everything (with parameters chosen for
//! text search) on the cached embedding, are embedded once by the text model's region
//! tower, and are cached per (model, image); a phrase's embedding is cached per (text
//! model, text). A second phrase on the same image therefore costs one text-tower run
//! (or nothing, when the phrase was seen before) plus a dot product per candidate.
//! The towers run on their own worker thread with a bounded queue (429 when full), like
//! the encoder and decoder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::amg::{AmgParams, CompactMask};
use super::cache::ImageKey;
use super::engine::{encode_mask, Engine, MaskResult, SegmentOptions};
use super::masks::BinaryMask;
use super::prompts::Prompt;
use super::workers::{chunks_owned, BatchPolicy, WorkerQueue};
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::runtime::preprocess::decode_image;
use crate::runtime::text::tokenize::PhraseTokenizer;
use crate::runtime::text::towers::{cosine, TextTower};
use crate::runtime::text::{
    load_model, RegionEncoder, RegionInput, RegionPrep, TextFiles, TextManifest,
};

/// Most masks one text prompt may ask for.
pub const MAX_TEXT_MASKS: usize = 100;

/// Work for the text model thread.
pub enum TextJob {
    /// Token ids of one phrase.
    Phrase(Vec<i64>),
    /// Region-encoder inputs of an image's candidates.
    Regions(Vec<RegionInput>),
}

/// Answers of the text model thread.
pub enum TextOut {
    /// Unit phrase vector.
    Phrase(Vec<f32>),
    /// Unit region vectors, in input order.
    Regions(Vec<Vec<f32>>),
}

struct Towers {
    text: TextTower,
    region: RegionEncoder,
}

/// A loaded text model attached to a segmentation model.
pub struct TextHandle {
    /// Its manifest.
    pub manifest: TextManifest,
    tokenizer: PhraseTokenizer,
    /// Candidate mask -> region-encoder input, by the text model's kind.
    prep: RegionPrep,
    queue: WorkerQueue<TextJob, TextOut>,
    metrics: Arc<Metrics>,
}

impl TextHandle {
    /// Builds the towers' sessions and starts their worker thread.
    pub fn start(
        env: &ort::environment::Environment,
        files: &TextFiles,
        max_queued: usize,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (text, region, prep) = load_model(env, files)?;
        let towers = Towers { text, region };
        let tokenizer = PhraseTokenizer::from_bytes(&files.tokenizer)?;
        let policy = BatchPolicy {
            max_units: 1,
            max_wait: Duration::ZERO,
            max_queued_units: max_queued.max(1),
        };
        let m = metrics.clone();
        let name = files.manifest.name.clone();
        let queue = WorkerQueue::spawn(
            "text",
            vec![towers],
            policy,
            metrics.queue("text"),
            |_, _| false,
            move |t: &mut Towers, jobs: Vec<TextJob>, _| {
                jobs.into_iter()
                    .map(|job| match job {
                        TextJob::Phrase(ids) => {
                            let started = Instant::now();
                            let out = t.text.embed(&ids).map(TextOut::Phrase);
                            m.text_encode_seconds
                                .with_label_values(&[&name])
                                .observe(started.elapsed().as_secs_f64());
                            out
                        }
                        TextJob::Regions(f) => t.region.embed(f).map(TextOut::Regions),
                    })
                    .collect()
            },
        )?;
        Ok(TextHandle {
            manifest: files.manifest.clone(),
            tokenizer,
            prep,
            queue,
            metrics: metrics.clone(),
        })
    }

    async fn phrase(&self, text: &str) -> ApiResult<Vec<f32>> {
        let ids = self
            .tokenizer
            .ids(text)
            .map_err(|e| ApiError::prompt(format!("text could not be tokenized: {e:#}")))?;
        match self.queue.call(TextJob::Phrase(ids), 1).await? {
            TextOut::Phrase(v) => Ok(v),
            TextOut::Regions(_) => Err(ApiError::internal("text worker answered the wrong job")),
        }
    }

    async fn regions(&self, f: Vec<RegionInput>) -> ApiResult<Vec<Vec<f32>>> {
        match self.queue.call(TextJob::Regions(f), 1).await? {
            TextOut::Regions(v) => Ok(v),
            TextOut::Phrase(_) => Err(ApiError::internal("text worker answered the wrong job")),
        }
    }
}

/// One candidate mask of an image with its region vector.
pub struct Candidate {
    mask: CompactMask,
    predicted_iou: f32,
    /// XYXY, exclusive maxima.
    bounds: [u32; 4],
    embedding: Vec<f32>,
}

/// An image's candidates.
pub struct Candidates {
    width: u32,
    height: u32,
    items: Vec<Candidate>,
}

impl Candidates {
    fn weight(&self) -> u32 {
        let per: usize = self
            .items
            .iter()
            .map(|c| c.embedding.len() * 4 + c.mask.area() as usize / 4 + 64)
            .sum();
        u32::try_from(per + 64).unwrap_or(u32::MAX)
    }
}

/// The caches of the text path.
pub struct TextCaches {
    phrases: moka::future::Cache<(String, String), Arc<Vec<f32>>>,
    candidates: moka::future::Cache<ImageKey, Arc<Candidates>>,
}

impl TextCaches {
    /// Caches with room for `candidate_bytes` of candidates and 10 000 phrases.
    pub fn new(candidate_bytes: u64, idle: Option<Duration>) -> Self {
        let mut c = moka::future::Cache::builder()
            .max_capacity(candidate_bytes)
            .weigher(|_: &ImageKey, v: &Arc<Candidates>| v.weight());
        if let Some(idle) = idle {
            c = c.time_to_idle(idle);
        }
        TextCaches {
            phrases: moka::future::Cache::new(10_000),
            candidates: c.build(),
        }
    }

    /// Drops an image's candidates (its embedding was removed).
    pub async fn forget(&self, key: &ImageKey) {
        self.candidates.remove(key).await;
    }
}

/// Segment-everything parameters of the candidate search when the text manifest sets none:
/// a 16×16 grid on the whole image (no crops), permissive filters so that the phrase, not
/// the generator, decides, and a cap on the number of candidates.
pub fn default_candidate_params() -> AmgParams {
    AmgParams {
        points_per_side: Some(16),
        pred_iou_thresh: Some(0.5),
        stability_score_thresh: Some(0.8),
        box_nms_thresh: Some(0.7),
        crop_n_layers: Some(0),
        max_masks: Some(300),
        ..AmgParams::default()
    }
}

/// What a validated text prompt asks for.
struct TextQuery<'a> {
    text: &'a str,
    max_masks: usize,
    /// XYXY search window.
    window: Option<[f64; 4]>,
}

fn validate<'a>(
    i: usize,
    p: &'a Prompt,
    m: &TextManifest,
    w: u32,
    h: u32,
) -> ApiResult<TextQuery<'a>> {
    let text = p.text.as_deref().unwrap_or("");
    if !p.points.is_empty() || p.mask_input.is_some() {
        return Err(ApiError::prompt(format!(
            "prompt {i}: text cannot be combined with points or mask_input (a text prompt may \
             carry a box, which restricts the search to masks inside it)"
        )));
    }
    if p.multimask_output.is_some() {
        return Err(ApiError::prompt(format!(
            "prompt {i}: multimask_output does not apply to text prompts; use max_masks"
        )));
    }
    if text.trim().is_empty() {
        return Err(ApiError::prompt(format!("prompt {i}: text is empty")));
    }
    let chars = text.chars().count();
    if chars > m.max_text_chars {
        return Err(ApiError::prompt(format!(
            "prompt {i}: text has {chars} characters, the limit is {}",
            m.max_text_chars
        )));
    }
    let max_masks = p.max_masks.unwrap_or(1);
    if max_masks == 0 || max_masks > MAX_TEXT_MASKS {
        return Err(ApiError::prompt(format!(
            "prompt {i}: max_masks must be between 1 and {MAX_TEXT_MASKS}, got {max_masks}"
        )));
    }
    let window = match p.r#box {
        None => None,
        Some(b @ [x0, y0, x1, y1]) => {
            if b.iter().any(|v| !v.is_finite()) {
                return Err(ApiError::prompt(format!(
                    "prompt {i}: box has a non-finite coordinate"
                )));
            }
            if x0 < 0.0 || y0 < 0.0 || x1 > w as f64 || y1 > h as f64 {
                return Err(ApiError::prompt(format!(
                    "prompt {i}: box [{x0}, {y0}, {x1}, {y1}] is outside the {w}x{h} image"
                )));
            }
            if x1 <= x0 || y1 <= y0 {
                return Err(ApiError::prompt(format!(
                    "prompt {i}: box [{x0}, {y0}, {x1}, {y1}] is empty or inverted"
                )));
            }
            Some(b)
        }
    };
    Ok(TextQuery {
        text,
        max_masks,
        window,
    })
}

/// Whether a candidate lies inside a search window (its box, with a little slack for
/// a hand-drawn box that cuts the object's edge).
fn inside(c: &Candidate, [x0, y0, x1, y1]: [f64; 4]) -> bool {
    let slack_x = 0.05 * (x1 - x0) + 2.0;
    let slack_y = 0.05 * (y1 - y0) + 2.0;
    let [cx0, cy0, cx1, cy1] = c.bounds.map(f64::from);
    cx0 >= x0 - slack_x && cy0 >= y0 - slack_y && cx1 <= x1 + slack_x && cy1 <= y1 + slack_y
}

impl super::engine::ModelHandle {
    /// The manifest of the model's text model, if it has one.
    pub fn text_manifest(&self) -> Option<&TextManifest> {
        self.text.as_ref().map(|t| &t.manifest)
    }
}

impl Engine {
    /// Names of the loaded models that take text prompts.
    pub fn text_models(&self) -> Vec<String> {
        self.models()
            .filter(|m| m.text.is_some())
            .map(|m| m.spec.name.clone())
            .collect()
    }

    fn text_handle(&self, model: Option<&str>) -> ApiResult<(Arc<TextHandle>, String)> {
        let handle = self.model(model)?;
        match &handle.text {
            Some(t) => Ok((t.clone(), handle.spec.name.clone())),
            None => {
                let with = self.text_models();
                Err(ApiError::TextNotSupported(format!(
                    "model '{}' does not take text prompts; models that do: {}",
                    handle.spec.name,
                    if with.is_empty() {
                        "none are loaded".to_string()
                    } else {
                        with.join(", ")
                    }
                )))
            }
        }
    }

    /// The unit vector of a phrase, from the cache or the text tower.
    pub async fn phrase_embedding(
        &self,
        model: Option<&str>,
        text: &str,
    ) -> ApiResult<Arc<Vec<f32>>> {
        let (t, _) = self.text_handle(model)?;
        let key = (t.manifest.name.clone(), text.to_string());
        let counter = |r: &str| {
            t.metrics
                .text_cache_total
                .with_label_values(&["phrase", r])
                .inc()
        };
        if let Some(v) = self.text_caches.phrases.get(&key).await {
            counter("hit");
            return Ok(v);
        }
        counter("miss");
        let v = Arc::new(t.phrase(text).await?);
        self.text_caches.phrases.insert(key, v.clone()).await;
        Ok(v)
    }

    /// An image's candidate masks with region vectors, computed once per (model, image).
    async fn candidates(&self, model: Option<&str>, image_id: &str) -> ApiResult<Arc<Candidates>> {
        let (t, model_name) = self.text_handle(model)?;
        // 404 for an unknown image before any work.
        self.embedding(model, image_id).await?;
        let key = ImageKey {
            model: Arc::from(model_name.as_str()),
            image_id: Arc::from(image_id),
        };
        let hits = &t.metrics.text_cache_total;
        if let Some(c) = self.text_caches.candidates.get(&key).await {
            hits.with_label_values(&["candidates", "hit"]).inc();
            return Ok(c);
        }
        let entry = self
            .text_caches
            .candidates
            .entry(key)
            .or_try_insert_with(async {
                let started = Instant::now();
                let c = self.build_candidates(model, image_id, &t).await?;
                t.metrics
                    .text_candidates_seconds
                    .with_label_values(&[&model_name])
                    .observe(started.elapsed().as_secs_f64());
                Ok::<_, ApiError>(Arc::new(c))
            })
            .await
            .map_err(|e: Arc<ApiError>| (*e).clone())?;
        hits.with_label_values(&["candidates", if entry.is_fresh() { "miss" } else { "hit" }])
            .inc();
        Ok(entry.into_value())
    }

    async fn build_candidates(
        &self,
        model: Option<&str>,
        image_id: &str,
        t: &TextHandle,
    ) -> ApiResult<Candidates> {
        let original = self
            .original(image_id)
            .await
            .ok_or_else(|| ApiError::NotFound {
                what: "image file (text prompts need the pixels; upload the image again)",
                id: image_id.to_string(),
            })?;
        let pixels = tokio::spawn(async move {
            tokio::task::spawn_blocking(move || decode_image(&original, u64::MAX).map(|d| d.rgb))
                .await
                .map_err(ApiError::internal)?
        });
        let params = t
            .manifest
            .candidates
            .clone()
            .unwrap_or_else(default_candidate_params);
        let (out, width, height) = self
            .everything(model, image_id, params, |_| {}, &|| false)
            .await?;
        let rgb = Arc::new(pixels.await.map_err(ApiError::internal)??);
        if rgb.width() != width || rgb.height() != height {
            return Err(ApiError::internal(
                "decoded image size differs from the embedding's",
            ));
        }
        let masks: Vec<_> = out.masks.into_iter().filter(|m| m.area > 0).collect();
        let mut items = Vec::with_capacity(masks.len());
        // Groups bound the memory of prepared inputs (CLIP crops are large); within a group
        // the preparation is spread over the post-processing tasks.
        for group in chunks_owned(masks, t.prep.group()) {
            let per_task = group.len().div_ceil(self.postprocess_tasks.max(1)).max(1);
            let mut pending = Vec::new();
            for chunk in chunks_owned(group, per_task) {
                let (rgb, prep) = (rgb.clone(), t.prep.clone());
                pending.push(tokio::task::spawn_blocking(move || {
                    chunk
                        .into_iter()
                        .map(|m| {
                            let input = prep.prepare(&rgb, &m.segmentation);
                            let [x, y, w, h] = m.segmentation.bbox_xywh();
                            let c = Candidate {
                                mask: CompactMask::from_mask(&m.segmentation),
                                predicted_iou: m.predicted_iou,
                                bounds: [x, y, x + w, y + h],
                                embedding: Vec::new(),
                            };
                            (c, input)
                        })
                        .collect::<Vec<_>>()
                }));
            }
            let mut group_items = Vec::new();
            let mut inputs = Vec::new();
            for p in pending {
                for (c, input) in p.await.map_err(ApiError::internal)? {
                    group_items.push(c);
                    inputs.push(input);
                }
            }
            let vectors = t.regions(inputs).await?;
            for (c, v) in group_items.iter_mut().zip(vectors) {
                c.embedding = v;
            }
            items.extend(group_items);
        }
        Ok(Candidates {
            width,
            height,
            items,
        })
    }

    /// Answers one text prompt: up to `max_masks` candidates sorted by text score.
    pub(crate) async fn segment_text(
        &self,
        model: Option<&str>,
        image_id: &str,
        index: usize,
        prompt: &Prompt,
        opts: SegmentOptions,
    ) -> ApiResult<Vec<MaskResult>> {
        let (t, _) = self.text_handle(model)?;
        let emb = self.embedding(model, image_id).await?;
        let q = validate(index, prompt, &t.manifest, emb.width, emb.height)?;
        if opts.return_logits {
            return Err(ApiError::prompt(format!(
                "prompt {index}: return_logits is not available for text prompts (their masks \
                 come from segment everything, which keeps no logits)"
            )));
        }
        let (phrase, cands) = tokio::try_join!(
            self.phrase_embedding(model, q.text),
            self.candidates(model, image_id)
        )?;
        let mut scored: Vec<(f32, &Candidate)> = cands
            .items
            .iter()
            .filter(|c| q.window.is_none_or(|w| inside(c, w)))
            .map(|c| (cosine(&phrase, &c.embedding), c))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(q.max_masks);
        let (w, h) = (cands.width, cands.height);
        let chosen: Vec<(f32, f32, CompactMask)> = scored
            .into_iter()
            .map(|(s, c)| (s, c.predicted_iou, c.mask.clone()))
            .collect();
        let output = opts.output;
        tokio::task::spawn_blocking(move || {
            chosen
                .into_iter()
                .map(|(s, iou, m)| {
                    let bin: BinaryMask = m.to_mask(w, h);
                    MaskResult {
                        score: iou,
                        area: bin.area(),
                        bbox: bin.bbox_xywh(),
                        token: 0,
                        mask: encode_mask(&bin, output),
                        logits_handle: None,
                        text_score: Some(s),
                    }
                })
                .collect()
        })
        .await
        .map_err(ApiError::internal)
    }

    /// Fails unless the model takes text and `text` is an acceptable phrase.
    pub fn validate_text(&self, model: Option<&str>, text: &str) -> ApiResult<()> {
        let (t, _) = self.text_handle(model)?;
        if text.trim().is_empty() {
            return Err(ApiError::prompt("text is empty"));
        }
        let chars = text.chars().count();
        if chars > t.manifest.max_text_chars {
            return Err(ApiError::prompt(format!(
                "text has {chars} characters, the limit is {}",
                t.manifest.max_text_chars
            )));
        }
        Ok(())
    }

    /// Text scores of masks produced elsewhere (segment everything with `text`).
    pub async fn score_masks(
        &self,
        model: Option<&str>,
        image_id: &str,
        text: &str,
        masks: &[BinaryMask],
    ) -> ApiResult<Vec<f32>> {
        let (t, _) = self.text_handle(model)?;
        let chars = text.chars().count();
        if text.trim().is_empty() {
            return Err(ApiError::prompt("text is empty"));
        }
        if chars > t.manifest.max_text_chars {
            return Err(ApiError::prompt(format!(
                "text has {chars} characters, the limit is {}",
                t.manifest.max_text_chars
            )));
        }
        let phrase = self.phrase_embedding(model, text).await?;
        let original = self
            .original(image_id)
            .await
            .ok_or_else(|| ApiError::NotFound {
                what: "image file (text scoring needs the pixels; upload the image again)",
                id: image_id.to_string(),
            })?;
        let rgb = tokio::task::spawn_blocking(move || decode_image(&original, u64::MAX))
            .await
            .map_err(ApiError::internal)??
            .rgb;
        let rgb = Arc::new(rgb);
        // In groups, like the candidates: CLIP crops are large.
        let mut scores = Vec::with_capacity(masks.len());
        for group in masks.chunks(t.prep.group().min(masks.len().max(1))) {
            let (owned, prep, rgb) = (group.to_vec(), t.prep.clone(), rgb.clone());
            let inputs = tokio::task::spawn_blocking(move || {
                owned
                    .iter()
                    .map(|m| prep.prepare(&rgb, m))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(ApiError::internal)?;
            let vectors = t.regions(inputs).await?;
            scores.extend(vectors.iter().map(|v| cosine(&phrase, v)));
        }
        Ok(scores)
    }
}

impl Engine {
    /// [`Engine::segment`] for a request with at least one text prompt: text prompts go
    /// through the candidate search, the others through the decoder, answers in order.
    pub(crate) async fn segment_with_text(
        &self,
        model: Option<&str>,
        image_id: &str,
        prompts: &[Prompt],
        opts: SegmentOptions,
    ) -> ApiResult<super::engine::Segmented> {
        let handle = self.model(model)?;
        self.text_handle(model)?;
        let emb = self.embedding(model, image_id).await?;
        if prompts.len() > self.limits_max_prompts() {
            return Err(ApiError::prompt(format!(
                "{} prompts given, the limit is {}",
                prompts.len(),
                self.limits_max_prompts()
            )));
        }
        let others: Vec<Prompt> = prompts
            .iter()
            .filter(|p| p.text.is_none())
            .cloned()
            .collect();
        let mut other_masks = if others.is_empty() {
            Vec::new().into_iter()
        } else {
            self.segment_prompts(model, image_id, &others, opts)
                .await?
                .masks
                .into_iter()
        };
        let mut masks = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            if p.text.is_some() {
                masks.push(self.segment_text(model, image_id, i, p, opts).await?);
            } else {
                masks.push(other_masks.next().unwrap_or_default());
            }
        }
        Ok(super::engine::Segmented {
            model: handle.spec.name.clone(),
            width: emb.width,
            height: emb.height,
            masks,
        })
    }
}
