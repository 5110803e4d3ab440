//! The engine: loaded models, their worker queues, the caches, and the two operations the
//! API exposes (ingest an image, segment prompts on it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cache::{EmbeddingCache, ImageKey};
use super::decode_gate::DecodeGate;
use super::mask_store::MaskStore;
use super::masks::{self, BinaryMask};
use super::prompts::{prepare_prompts, Prompt, PromptLimits};
use super::store::{Claim, ModelTag, SharedStore};
use super::text_search::{TextCaches, TextHandle};
use super::workers::{chunks_owned, BatchPolicy, Occupancy, WorkerQueue};
use crate::config::{CacheDtype, Config};
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::runtime::device::Device;
use crate::runtime::manifest::ModelFiles;
use crate::runtime::model::{
    load_model, DecoderLanes, DecoderPrompt, DecoderSession, Embedding, EncoderSession,
    MaskGeometry, ModelSpec, SessionOptions, TokenOutput, MASK_THRESHOLD,
};
use crate::runtime::preprocess::{prepare, PreparedImage};

type EncodeQueue = WorkerQueue<PreparedImage, Embedding>;
type DecodeJob = (Arc<Embedding>, Vec<DecoderPrompt>);
type DecodeQueue = WorkerQueue<DecodeJob, Vec<Vec<TokenOutput>>>;

fn spawn_encoder(
    spec: &Arc<ModelSpec>,
    session: EncoderSession,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> std::io::Result<EncodeQueue> {
    let m = metrics.clone();
    let name = spec.name.clone();
    let policy = BatchPolicy {
        max_units: if spec.encoder_batched {
            config.max_encoder_batch.max(1)
        } else {
            1
        },
        max_wait: Duration::ZERO,
        max_queued_units: config.max_queued_images.max(1),
    };
    WorkerQueue::spawn(
        "encoder",
        vec![session],
        policy,
        metrics.queue("encoder"),
        |_, _| true,
        move |s: &mut EncoderSession, imgs: Vec<PreparedImage>, _| {
            let t = Instant::now();
            let out = s.encode_many(&imgs);
            let sizes = m.batch_size.with_label_values(&["encoder"]);
            if s.batched() {
                sizes.observe(imgs.len() as f64);
            } else {
                imgs.iter().for_each(|_| sizes.observe(1.0));
            }
            m.encoder_seconds
                .with_label_values(&[&name])
                .observe(t.elapsed().as_secs_f64());
            m.encoder_runs_total
                .with_label_values(&[&name])
                .inc_by(imgs.len() as u64);
            out
        },
    )
}

fn spawn_decoder(
    spec: &Arc<ModelSpec>,
    sessions: Vec<DecoderLanes>,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> std::io::Result<DecodeQueue> {
    let m = metrics.clone();
    let name = spec.name.clone();
    let max_batch = config.max_batch_prompts.max(1);
    let policy = BatchPolicy {
        max_units: max_batch,
        max_wait: Duration::from_micros(config.max_batch_wait),
        max_queued_units: config.max_queued_prompts.max(1),
    };
    WorkerQueue::spawn(
        "decoder",
        sessions,
        policy,
        metrics.queue("decoder"),
        // Only prompts on the same embedding can share a decoder call.
        |a: &DecodeJob, b: &DecodeJob| Arc::ptr_eq(&a.0, &b.0),
        move |lanes: &mut DecoderLanes, jobs: Vec<DecodeJob>, occupancy: Occupancy| {
            let t = Instant::now();
            let n: usize = jobs.iter().map(|j| j.1.len()).sum();
            let (s, wide) = lanes.pick(occupancy.alone());
            m.decoder_batches_total
                .with_label_values(&[name.as_str(), if wide { "wide" } else { "narrow" }])
                .inc();
            let out = decode_jobs(
                s,
                jobs,
                max_batch,
                &m.batch_size.with_label_values(&["decoder"]),
            );
            m.decoder_seconds
                .with_label_values(&[&name])
                .observe(t.elapsed().as_secs_f64());
            m.decoder_prompts_total
                .with_label_values(&[&name])
                .inc_by(n as u64);
            out
        },
    )
}

/// Runs the prompts of several jobs on one embedding. Prompts are grouped by point count:
/// padding points take part in the decoder's attention, so mixing counts in one call would
/// change the answers; equal counts batch without changing them.
fn decode_jobs(
    s: &mut DecoderSession,
    jobs: Vec<DecodeJob>,
    max_batch: usize,
    batch_sizes: &prometheus::Histogram,
) -> Vec<anyhow::Result<Vec<Vec<TokenOutput>>>> {
    let emb = jobs[0].0.clone();
    let sizes: Vec<usize> = jobs.iter().map(|j| j.1.len()).collect();
    // Point count -> (positions (job, prompt) of the group's prompts, the prompts).
    type Groups = BTreeMap<usize, (Vec<(usize, usize)>, Vec<DecoderPrompt>)>;
    let mut groups: Groups = BTreeMap::new();
    for (ji, (_, prompts)) in jobs.into_iter().enumerate() {
        for (pi, p) in prompts.into_iter().enumerate() {
            let g = groups.entry(p.coords.len()).or_default();
            g.0.push((ji, pi));
            g.1.push(p);
        }
    }
    let mut slots: Vec<Vec<Option<Vec<TokenOutput>>>> = sizes
        .iter()
        .map(|&n| (0..n).map(|_| None).collect())
        .collect();
    for (_, (positions, prompts)) in groups {
        let result = s.decode(&emb, &prompts, max_batch, |n| batch_sizes.observe(n as f64));
        match result {
            Ok(outs) => {
                for ((ji, pi), o) in positions.into_iter().zip(outs) {
                    slots[ji][pi] = Some(o);
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                return sizes
                    .iter()
                    .map(|_| Err(anyhow::anyhow!("decoder: {msg}")))
                    .collect();
            }
        }
    }
    slots
        .into_iter()
        .map(|v| {
            v.into_iter()
                .map(|o| o.ok_or_else(|| anyhow::anyhow!("decoder returned too few results")))
                .collect()
        })
        .collect()
}

/// A model ready to serve: its spec and the queues of its worker threads.
pub struct ModelHandle {
    /// What was learned from the ONNX files.
    pub spec: Arc<ModelSpec>,
    pub(crate) name: Arc<str>,
    pub(crate) encoder: EncodeQueue,
    pub(crate) decoder: DecodeQueue,
    /// The text model, when the manifest declares one (text prompts).
    pub(crate) text: Option<Arc<TextHandle>>,
    /// Prompts per decoder job when a request's prompts are spread over several decoder
    /// workers (`usize::MAX` with one worker: one job per request).
    decoder_split: usize,
    /// Identity of this model's embeddings in the shared store.
    store_tag: ModelTag,
    /// The decoder ONNX file as loaded (before pruning), for clients that decode locally.
    pub decoder_file: super::downloads::ServedFile,
}

impl ModelHandle {
    /// Decodes prompts on one embedding. With several decoder workers the prompts are
    /// queued as jobs of one batch each, admitted together, so idle workers share a large
    /// request (many boxes, a segment-everything batch) instead of one worker running it
    /// alone.
    pub(crate) async fn decode(
        &self,
        emb: &Arc<Embedding>,
        prompts: Vec<DecoderPrompt>,
    ) -> ApiResult<Vec<Vec<TokenOutput>>> {
        if prompts.len() <= self.decoder_split {
            let n = prompts.len();
            return self.decoder.call((emb.clone(), prompts), n).await;
        }
        let jobs = chunks_owned(prompts, self.decoder_split)
            .into_iter()
            .map(|chunk| {
                let n = chunk.len();
                ((emb.clone(), chunk), n)
            })
            .collect();
        let outs = self.decoder.call_many(jobs).await?;
        Ok(outs.into_iter().flatten().collect())
    }
}

/// Mask output encodings.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// COCO compressed RLE (pycocotools-compatible).
    #[default]
    Rle,
    /// Base64 1-bit PNG.
    Png,
    /// Polygons: outer rings and holes.
    Polygon,
    /// Scores, areas and boxes only.
    None,
}

/// An encoded mask in the requested format.
pub enum EncodedMask {
    /// COCO RLE.
    Rle(masks::rle::CocoRle),
    /// PNG bytes.
    Png(Vec<u8>),
    /// Polygons.
    Polygons(Vec<masks::polygon::Polygon>),
    /// Nothing.
    None,
}

/// One predicted mask, ready to serialize.
pub struct MaskResult {
    /// Predicted IoU.
    pub score: f32,
    /// Foreground pixels.
    pub area: u64,
    /// XYWH bounding box.
    pub bbox: [u32; 4],
    /// Which decoder token produced it.
    pub token: usize,
    /// The mask in the requested format.
    pub mask: EncodedMask,
    /// Refinement handle, when requested.
    pub logits_handle: Option<String>,
    /// Cosine of the mask to the phrase, for text prompts.
    pub text_score: Option<f32>,
}

/// Result of ingesting an image.
pub struct ImageInfo {
    /// Content hash.
    pub image_id: String,
    /// Upright width.
    pub width: u32,
    /// Upright height.
    pub height: u32,
    /// Whether the embedding was already cached.
    pub cached: bool,
    /// Model used.
    pub model: String,
}

/// Answer of [`Engine::segment`].
pub struct Segmented {
    /// Model used.
    pub model: String,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Masks per prompt, best first.
    pub masks: Vec<Vec<MaskResult>>,
}

/// Options of a segment call besides the prompts.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOptions {
    /// Request-level multimask override.
    pub multimask_output: Option<bool>,
    /// Output encoding.
    pub output: OutputFormat,
    /// Whether to return refinement handles.
    pub return_logits: bool,
}

/// The serving engine shared by all handlers.
pub struct Engine {
    models: BTreeMap<String, ModelHandle>,
    default_model: String,
    pub(crate) cache: EmbeddingCache,
    /// Second cache level shared by replicas (`--embedding-store`).
    store: Option<Arc<SharedStore>>,
    /// Uploaded files by image id, for work that needs the pixels again (crops).
    originals: moka::future::Cache<Arc<str>, Bytes>,
    mask_store: MaskStore,
    /// Most blocking tasks one segment request's masks are spread over (the core count).
    pub(crate) postprocess_tasks: usize,
    /// Phrase embeddings and per-image candidate masks of text prompts.
    pub(crate) text_caches: TextCaches,
    /// Metrics registry of this server.
    pub metrics: Arc<Metrics>,
    limits: PromptLimits,
    /// Header limits and the cap on concurrent decodes.
    pub(crate) decode_gate: DecodeGate,
    pub(crate) everything_max_masks: u64,
    pub(crate) everything_max_pixels: u64,
    pub(crate) everything_max_points: u64,
    pub(crate) everything_max_crops: u64,
    ready: AtomicBool,
}

/// Hex blake3 of image bytes: the image id.
pub fn image_id_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Checks the form of an image id (64 lowercase hex digits).
pub fn validate_image_id(id: &str) -> ApiResult<()> {
    if id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "image id '{}' is not a 64-digit lowercase hex blake3 hash",
            id.chars().take(80).collect::<String>()
        )))
    }
}

impl Engine {
    /// Loads every configured model (or the embedded default) and starts the workers.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let env = crate::runtime::ort_env::init(config.ort_lib.as_deref())?;
        let mut files = Vec::new();
        if config.models.is_empty() {
            files.push(ModelFiles::embedded_default()?);
        } else {
            for dir in &config.models {
                files.push(ModelFiles::from_dir(dir, config.write_manifest)?);
            }
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let device: Device = config.encoder_device.parse()?;
        let decoder_device: Device = config.decoder_device.parse()?;
        // One single-thread worker per core: under load every core decodes. A worker that
        // runs alone uses its wide session on every core (--decoder-lone-threads).
        let decoder_workers = if config.decoder_workers == 0 {
            cores
        } else {
            config.decoder_workers
        };
        let opts = SessionOptions {
            // All cores by default: an upload is one long encoder run (seconds for ViT-B)
            // during which the decoder is usually idle, and leaving it `cores - decoder
            // threads` gave it one thread on 2 cores. When both run at once they share the
            // cores (the OS interleaves them); --encoder-threads caps the encoder instead.
            encoder_threads: if config.encoder_threads == 0 {
                cores
            } else {
                config.encoder_threads
            },
            decoder_threads: config.decoder_threads.max(1),
            decoder_workers,
            decoder_lone_threads: if config.decoder_lone_threads == 0 {
                cores
            } else {
                config.decoder_lone_threads
            },
            encoder_device: device,
            decoder_device,
            require_gpu: config.require_gpu,
        };
        let mut models = BTreeMap::new();
        for f in &files {
            let started = Instant::now();
            let sessions = load_model(env, f, opts)?;
            let spec = sessions.spec.clone();
            if models.contains_key(&spec.name) {
                anyhow::bail!("two models are named '{}'", spec.name);
            }
            let text = match &f.text {
                Some(t) => Some(Arc::new(TextHandle::start(
                    env,
                    t,
                    config.max_queued_images.max(1),
                    &metrics,
                )?)),
                None => None,
            };
            let encoder = spawn_encoder(&spec, sessions.encoder, config, &metrics)?;
            let decoder = spawn_decoder(&spec, sessions.decoders, config, &metrics)?;
            tracing::info!(
                model = %spec.name,
                source = %spec.source,
                input_size = spec.input_size,
                family = %spec.family,
                tensors = %spec
                    .tensors
                    .iter()
                    .map(|t| format!("{}{:?}", t.name, t.shape))
                    .collect::<Vec<_>>()
                    .join(" "),
                embedding_bytes = spec.embedding_bytes(),
                single_mask = ?spec.single_mask,
                mask_flag = ?spec.mask_flag,
                low_res = ?spec.low_res_size,
                batched_encoder = spec.encoder_batched,
                batched_decoder = spec.decoder_batched,
                encoder_input = ?spec.encoder_input,
                encoder_device = %spec.encoder_device,
                decoder_device = %spec.decoder_device,
                encoder_threads = opts.encoder_threads,
                decoder_threads = opts.decoder_threads,
                decoder_workers = opts.decoder_workers,
                decoder_lone_threads = opts.decoder_lone_threads,
                load_ms = started.elapsed().as_millis() as u64,
                "model loaded"
            );
            let store_tag = super::store::model_tag(&spec, &f.encoder_identity()?);
            models.insert(
                spec.name.clone(),
                ModelHandle {
                    name: Arc::from(spec.name.as_str()),
                    spec,
                    encoder,
                    decoder,
                    text,
                    decoder_split: if opts.decoder_workers > 1 {
                        config.max_batch_prompts.max(1)
                    } else {
                        usize::MAX
                    },
                    store_tag,
                    decoder_file: super::downloads::ServedFile::new(Bytes::from(f.decoder.clone())),
                },
            );
        }
        let cache = EmbeddingCache::new(
            config.cache_bytes,
            (config.cache_idle_secs > 0).then(|| Duration::from_secs(config.cache_idle_secs)),
            config.cache_dtype == CacheDtype::Float16,
        );
        for m in models.values() {
            metrics
                .cache_bytes_per_image
                .with_label_values(&[&m.spec.name])
                .set(cache.bytes_per_image(&m.spec) as i64);
        }
        let default_model = match &config.default_model {
            Some(n) if models.contains_key(n) => n.clone(),
            Some(n) => anyhow::bail!("--default-model '{n}' is not among the loaded models"),
            None => files[0].manifest.name.clone(),
        };
        for m in models.values() {
            metrics
                .model_info
                .with_label_values(&[
                    m.spec.name.as_str(),
                    m.spec.family.as_str(),
                    m.spec.precision.as_str(),
                    if m.spec.name == default_model {
                        "true"
                    } else {
                        "false"
                    },
                ])
                .set(1);
        }
        let idle =
            (config.cache_idle_secs > 0).then(|| Duration::from_secs(config.cache_idle_secs));
        let engine = Engine {
            models,
            default_model,
            cache,
            store: SharedStore::from_config(config, &metrics.store)?.map(Arc::new),
            originals: {
                let mut b = moka::future::Cache::builder()
                    .max_capacity(config.image_store_bytes)
                    .weigher(|_: &Arc<str>, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX));
                if let Some(idle) = idle {
                    b = b.time_to_idle(idle);
                }
                b.build()
            },
            mask_store: MaskStore::new(
                config.mask_store_bytes,
                idle.unwrap_or(Duration::from_secs(3600)),
            ),
            postprocess_tasks: cores,
            text_caches: TextCaches::new(config.cache_bytes / 4, idle),
            metrics: metrics.clone(),
            limits: PromptLimits {
                max_points: config.max_points,
                max_prompts: config.max_prompts,
            },
            decode_gate: DecodeGate::new(config, cores, metrics.clone()),
            everything_max_masks: config.everything_max_masks,
            everything_max_pixels: config.everything_max_pixels,
            everything_max_points: config.everything_max_points,
            everything_max_crops: config.everything_max_crops,
            ready: AtomicBool::new(true),
        };
        let engine = Arc::new(engine);
        // Values the store missed during an outage are written once it is back.
        if engine.store.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            super::store::backfill::spawn_rounds(
                Arc::downgrade(&engine),
                |e: Arc<Engine>| async move {
                    if let Some(store) = &e.store {
                        store
                            .backfill_round(&e.cache, |m| e.models.get(m).map(|h| &h.store_tag))
                            .await;
                    }
                },
            );
        }
        Ok(engine)
    }

    /// Most prompts one request may carry.
    pub(crate) fn limits_max_prompts(&self) -> usize {
        self.limits.max_prompts
    }

    /// Whether models are loaded and workers running.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// All loaded models, by name.
    pub fn models(&self) -> impl Iterator<Item = &ModelHandle> {
        self.models.values()
    }

    /// Name of the default model.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Resolves a model name (None = default) or fails with 404.
    pub fn model(&self, name: Option<&str>) -> ApiResult<&ModelHandle> {
        let name = name.unwrap_or(&self.default_model);
        self.models.get(name).ok_or_else(|| ApiError::NotFound {
            what: "model",
            id: name.to_string(),
        })
    }

    fn key(model: &ModelHandle, image_id: &str) -> ImageKey {
        ImageKey {
            model: model.name.clone(),
            image_id: Arc::from(image_id),
        }
    }

    /// Decodes, preprocesses and encodes an image unless its embedding is cached.
    /// `claimed_id`, when given, must equal the content hash.
    pub async fn ingest(
        &self,
        model: Option<&str>,
        bytes: Bytes,
        claimed_id: Option<&str>,
    ) -> ApiResult<ImageInfo> {
        let handle = self.model(model)?;
        let image_id = image_id_of(&bytes);
        if let Some(claimed) = claimed_id {
            validate_image_id(claimed)?;
            if claimed != image_id {
                return Err(ApiError::HashMismatch(format!(
                    "image id {claimed} does not match the blake3 hash of the body ({image_id})"
                )));
            }
        }
        let key = Self::key(handle, &image_id);
        let original = (key.image_id.clone(), bytes.clone());
        let spec = handle.spec.clone();
        let metrics = self.metrics.clone();
        let encoder = handle.encoder.clone();
        let model_name = handle.name.clone();
        let store = self.store.clone();
        let tag = handle.store_tag.clone();
        let store_id = image_id.clone();
        let from_store = Arc::new(AtomicBool::new(false));
        let found_in_store = from_store.clone();
        let gate = &self.decode_gate;
        let lookup = self
            .cache
            .get_or_compute(key, async move {
                // Local miss: the shared store next, and one encoder run across replicas.
                let lock = match &store {
                    Some(s) => match s.fetch_or_claim(&tag, &store_id).await {
                        Claim::Hit(e) => {
                            found_in_store.store(true, Ordering::Relaxed);
                            return Ok(e);
                        }
                        Claim::Encode(lock) => lock,
                    },
                    None => None,
                };
                let encoded = async {
                    let prepared = gate
                        .decode(bytes, move |decoded| {
                            let t = Instant::now();
                            let prepared = prepare(&decoded.rgb, &spec);
                            metrics
                                .preprocess_seconds
                                .with_label_values(&[&spec.name])
                                .observe(t.elapsed().as_secs_f64());
                            prepared
                        })
                        .await?;
                    encoder.call(prepared, 1).await
                }
                .await;
                if let Some(s) = &store {
                    s.finish(&tag, &store_id, encoded.as_ref().ok(), lock).await;
                }
                encoded
            })
            .await;
        let mut lookup = lookup?;
        let from_store = from_store.load(Ordering::Relaxed);
        if let (Some(store), true, false) = (&self.store, lookup.cached, from_store) {
            // A local hit whose value the store missed while it was down: write it now.
            store
                .backfill_one(&handle.store_tag, &image_id, &lookup.embedding)
                .await;
        }
        lookup.cached |= from_store;
        self.originals.insert(original.0, original.1).await;
        let counter = if lookup.cached {
            &self.metrics.cache_hits_total
        } else {
            &self.metrics.cache_misses_total
        };
        counter.with_label_values(&[&model_name]).inc();
        self.refresh_cache_gauges().await;
        Ok(ImageInfo {
            image_id,
            width: lookup.embedding.width,
            height: lookup.embedding.height,
            cached: lookup.cached,
            model: handle.spec.name.clone(),
        })
    }

    async fn refresh_cache_gauges(&self) {
        let (entries, bytes) = self.cache.usage().await;
        self.metrics.cache_entries.set(entries as i64);
        self.metrics.cache_bytes.set(bytes as i64);
    }

    /// The cached embedding of an image, or 404.
    pub async fn embedding(
        &self,
        model: Option<&str>,
        image_id: &str,
    ) -> ApiResult<Arc<Embedding>> {
        validate_image_id(image_id)?;
        let handle = self.model(model)?;
        let key = Self::key(handle, image_id);
        let found = match &self.store {
            // An image uploaded through another replica: its embedding from the store.
            Some(store) => {
                let (tag, id) = (&handle.store_tag, image_id);
                self.cache
                    .get_or_fetch(key, async move { store.fetch(tag, id).await })
                    .await
            }
            None => self.cache.get(&key).await,
        };
        found.ok_or_else(|| ApiError::ImageNotCached {
            id: image_id.to_string(),
            model: handle.spec.name.clone(),
        })
    }

    /// Whether the shared store holds this image's embedding for `model`: `None` without
    /// a store or when it does not answer.
    pub async fn store_contains(&self, model: Option<&str>, image_id: &str) -> Option<bool> {
        let handle = self.model(model).ok()?;
        self.store
            .as_ref()?
            .contains(&handle.store_tag, image_id)
            .await
    }

    /// The uploaded file of an image, while the image store holds it.
    pub async fn original(&self, image_id: &str) -> Option<Bytes> {
        self.originals.get(image_id).await
    }

    /// Drops an image's embedding; 404 when it was not cached.
    pub async fn remove(&self, model: Option<&str>, image_id: &str) -> ApiResult<()> {
        validate_image_id(image_id)?;
        let handle = self.model(model)?;
        let key = Self::key(handle, image_id);
        let mut removed = self.cache.remove(&key).await;
        self.text_caches.forget(&key).await;
        if let Some(store) = &self.store {
            removed |= store.delete(&handle.store_tag, image_id).await;
        }
        self.refresh_cache_gauges().await;
        if removed {
            Ok(())
        } else {
            Err(ApiError::NotFound {
                what: "image",
                id: image_id.to_string(),
            })
        }
    }

    /// Runs prompts against a cached image. Results are index-aligned with `prompts`;
    /// each prompt's masks are sorted by predicted IoU, best first (text prompts: by text
    /// score, see [`super::text_search`]).
    pub async fn segment(
        &self,
        model: Option<&str>,
        image_id: &str,
        prompts: &[Prompt],
        opts: SegmentOptions,
    ) -> ApiResult<Segmented> {
        if prompts.iter().any(|p| p.text.is_some()) {
            return self.segment_with_text(model, image_id, prompts, opts).await;
        }
        self.segment_prompts(model, image_id, prompts, opts).await
    }

    /// [`Engine::segment`] for prompts without text: the decoder path.
    pub(crate) async fn segment_prompts(
        &self,
        model: Option<&str>,
        image_id: &str,
        prompts: &[Prompt],
        opts: SegmentOptions,
    ) -> ApiResult<Segmented> {
        let handle = self.model(model)?;
        let emb = self.embedding(model, image_id).await?;
        let image_id: Arc<str> = Arc::from(image_id);
        let decoder_prompts = prepare_prompts(
            prompts,
            opts.multimask_output,
            self.limits,
            &handle.spec,
            &emb,
            &handle.name,
            &image_id,
            &self.mask_store,
        )?;
        let outputs = handle.decode(&emb, decoder_prompts).await?;
        let store = self.mask_store.clone();
        let model_name = handle.name.clone();
        let (w, h) = (emb.width, emb.height);
        let geometry = MaskGeometry::new(&handle.spec, &emb);
        let postprocess_seconds = self
            .metrics
            .mask_postprocess_seconds
            .with_label_values(&[&handle.spec.name]);
        let timer = postprocess_seconds.start_timer();
        // Masks are independent: spread them over up to one blocking task per core, so a
        // lone click's three masks (or a detector request's hundred) do not wait on each
        // other while cores are idle. The split is bounded, so load cannot grow the pool.
        let prompt_sizes: Vec<usize> = outputs.iter().map(Vec::len).collect();
        let tokens: Vec<TokenOutput> = outputs.into_iter().flatten().collect();
        let per_task = tokens.len().div_ceil(self.postprocess_tasks.max(1));
        let mut pending = Vec::new();
        for chunk in chunks_owned(tokens, per_task) {
            let (store, model_name, image_id, spec) = (
                store.clone(),
                model_name.clone(),
                image_id.clone(),
                handle.spec.clone(),
            );
            pending.push(tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|t| {
                        let bin = BinaryMask::from_binary(
                            w,
                            h,
                            geometry.upscale_mask(&t.low_res, MASK_THRESHOLD),
                        );
                        let logits_handle = opts.return_logits.then(|| {
                            store.insert(&model_name, &image_id, spec.refinement_logits(t.low_res))
                        });
                        MaskResult {
                            score: t.score,
                            area: bin.area(),
                            bbox: bin.bbox_xywh(),
                            token: t.token,
                            mask: encode_mask(&bin, opts.output),
                            logits_handle,
                            text_score: None,
                        }
                    })
                    .collect::<Vec<MaskResult>>()
            }));
        }
        let mut done = Vec::with_capacity(prompt_sizes.iter().sum());
        for task in pending {
            done.extend(task.await.map_err(ApiError::internal)?);
        }
        timer.observe_duration();
        let mut done = done.into_iter();
        let masks: Vec<Vec<MaskResult>> = prompt_sizes
            .iter()
            .map(|&n| {
                let mut masks: Vec<MaskResult> = done.by_ref().take(n).collect();
                masks.sort_by(|a, b| b.score.total_cmp(&a.score));
                masks
            })
            .collect();
        Ok(Segmented {
            model: handle.spec.name.clone(),
            width: w,
            height: h,
            masks,
        })
    }
}

pub(crate) fn encode_mask(mask: &BinaryMask, format: OutputFormat) -> EncodedMask {
    match format {
        OutputFormat::Rle => EncodedMask::Rle(masks::rle::encode(mask)),
        OutputFormat::Png => EncodedMask::Png(masks::png::encode_png_1bit(mask)),
        OutputFormat::Polygon => EncodedMask::Polygons(masks::polygon::mask_to_polygons(mask)),
        OutputFormat::None => EncodedMask::None,
    }
}
