//! Every Prometheus metric of the server, defined in one place.
//!
//! Each server instance owns its own [`Registry`], so several servers in one process (the
//! integration tests) do not mix their counts.
//!
//! Every label value comes from a fixed or configured set, never from a client (a client
//! that could choose a label value could grow /metrics without bound: 25,000 made-up HTTP
//! methods once took it from 32 KB to 471 MB). The audit, label by label:
//! - `route`: the matched route template, or `unmatched` (never the request path);
//! - `method`: the nine standard methods by name, anything else `other`
//!   ([`crate::http::method_label`]);
//! - `status`: the status the server answered (its own, finite set);
//! - `model`, `text_model`: names of the models loaded at start (a request naming another
//!   model is a 404 before any per-model metric);
//! - `format`: the decoder's format name (`png`, `jpeg`, ...; a fixed list);
//! - `queue`: `encoder`, `decoder`, `text`; `reason`: `unauthorized`, `client_limit`,
//!   `connection_limit`, `deadline`, `<queue>_queue_full`;
//! - `op`, `direction`, `outcome`, `cache`, `result`: literals in the code.
//!
//! `tests/probe_findings.rs` sends two bursts of requests whose every client-chosen part is
//! new and checks that the second adds no series.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 100 µs to 10 min: a ViT-L/H upload on a CPU or a streamed
/// segment-everything run takes minutes, and a top bucket below them would hide them all
/// in `+Inf`.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The commit the binary was built from, when the build set `SAMSERVE_GIT_COMMIT` (the
/// Dockerfiles pass it as a build argument); `unknown` otherwise.
pub const GIT_COMMIT: &str = match option_env!("SAMSERVE_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The metrics registry and handles.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route, method and status.
    pub http_requests_total: IntCounterVec,
    /// HTTP request latency by route and method.
    pub http_request_duration_seconds: HistogramVec,
    /// Image decode latency (bytes to RGB pixels).
    pub image_decode_seconds: HistogramVec,
    /// Resize, normalize and pad latency.
    pub preprocess_seconds: HistogramVec,
    /// Encoder run time, by model.
    pub encoder_seconds: HistogramVec,
    /// Encoder runs, by model.
    pub encoder_runs_total: IntCounterVec,
    /// Decoder run time per call, by model.
    pub decoder_seconds: HistogramVec,
    /// Prompts decoded, by model.
    pub decoder_prompts_total: IntCounterVec,
    /// Decoder batches, by model and lane (`narrow`: beside other work, `wide`: alone,
    /// on every core).
    pub decoder_batches_total: IntCounterVec,
    /// Turning one segment request's decoder outputs into the answer's masks (upscaling,
    /// thresholding, encoding), by model.
    pub mask_postprocess_seconds: HistogramVec,
    /// Embedding-cache hits, by model.
    pub cache_hits_total: IntCounterVec,
    /// Embedding-cache misses, by model.
    pub cache_misses_total: IntCounterVec,
    /// Entries in the embedding cache.
    pub cache_entries: IntGauge,
    /// Weighted size of the embedding cache in bytes.
    pub cache_bytes: IntGauge,
    /// Bytes one cached image of a model takes (all its embedding tensors, at the cache's
    /// number type), by model.
    pub cache_bytes_per_image: IntGaugeVec,
    /// Work units (prompts, images) waiting in each worker queue.
    pub queue_depth: IntGaugeVec,
    /// Requests refused by admission control, by reason.
    pub rejected_total: IntCounterVec,
    /// Jobs dropped before running because the requester had gone.
    pub abandoned_total: IntCounterVec,
    /// Work units per executed batch, by queue.
    pub batch_size: HistogramVec,
    /// Time from enqueue to batch start, by queue.
    pub queue_wait_seconds: HistogramVec,
    /// HTTP requests being served.
    pub in_flight_requests: IntGauge,
    /// Open client connections.
    pub open_connections: IntGauge,
    /// Connections closed by a connection timer, by timer (`header`, `idle`).
    pub connections_timed_out_total: IntCounterVec,
    /// Segment-everything point prompts decoded, by model (progress of long runs).
    pub everything_points_total: IntCounterVec,
    /// Segment-everything runs in progress.
    pub everything_running: IntGauge,
    /// Text prompts: phrase encoding (text tower) latency, by text model.
    pub text_encode_seconds: HistogramVec,
    /// Text prompts: lookups of the phrase-embedding and candidate caches, by cache and result.
    pub text_cache_total: IntCounterVec,
    /// Text prompts: time to build an image's candidate masks and their region vectors.
    pub text_candidates_seconds: HistogramVec,
    /// Shared embedding store (`--embedding-store`) handles.
    pub store: StoreMetrics,
    /// One sample per loaded model (value 1) naming its family and precision.
    pub model_info: IntGaugeVec,
}

/// Metrics of the shared embedding store.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Embeddings found in the store after a local-cache miss, by model.
    pub hits_total: IntCounterVec,
    /// Store lookups that found nothing, by model.
    pub misses_total: IntCounterVec,
    /// Failed or skipped store operations (timeouts, connection errors, bad values), by op.
    pub errors_total: IntCounterVec,
    /// Bytes read from and written to the store, by direction (`read`, `write`).
    pub bytes_total: IntCounterVec,
    /// Store operation latency, by op.
    pub seconds: HistogramVec,
    /// Waits on another replica's encode lock, by outcome (`hit`, `holder_gone`, `timeout`).
    pub lock_waits_total: IntCounterVec,
    /// Images whose value the store has not taken yet (written once it is back).
    pub pending: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        // The process itself: CPU seconds, resident and virtual memory, open and maximum
        // file descriptors, threads, start time (the standard `process_*` names).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        gauge_vec(
            "samserve_build_info",
            "The running build (value 1): version, git commit, cargo features.",
            &["version", "commit", "features"],
        )
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            GIT_COMMIT,
            if cfg!(feature = "cuda") { "cuda" } else { "" },
        ])
        .set(1);
        Metrics {
            model_info: gauge_vec(
                "samserve_model_info",
                "Loaded models (value 1): name, family, weight precision, and whether it is the default.",
                &["model", "family", "precision", "default"],
            ),
            http_requests_total: counter(
                "samserve_http_requests_total",
                "HTTP requests by route, method and status code.",
                &["route", "method", "status"],
            ),
            http_request_duration_seconds: histogram(
                "samserve_http_request_duration_seconds",
                "HTTP request latency.",
                &["route", "method"],
            ),
            image_decode_seconds: histogram(
                "samserve_image_decode_seconds",
                "Time to decode image bytes into RGB pixels.",
                &["format"],
            ),
            preprocess_seconds: histogram(
                "samserve_preprocess_seconds",
                "Time to resize, normalize and pad an image for the encoder.",
                &["model"],
            ),
            encoder_seconds: histogram(
                "samserve_encoder_seconds",
                "Image encoder run time.",
                &["model"],
            ),
            encoder_runs_total: counter(
                "samserve_encoder_runs_total",
                "Image encoder runs.",
                &["model"],
            ),
            decoder_seconds: histogram(
                "samserve_decoder_seconds",
                "Mask decoder run time per call.",
                &["model"],
            ),
            decoder_prompts_total: counter(
                "samserve_decoder_prompts_total",
                "Prompts run through the mask decoder.",
                &["model"],
            ),
            decoder_batches_total: counter(
                "samserve_decoder_batches_total",
                "Decoder batches by lane: narrow (beside other work) or wide (alone, every core).",
                &["model", "lane"],
            ),
            mask_postprocess_seconds: histogram(
                "samserve_mask_postprocess_seconds",
                "Upscaling, thresholding and encoding the masks of one segment request.",
                &["model"],
            ),
            cache_hits_total: counter(
                "samserve_cache_hits_total",
                "Embedding cache hits.",
                &["model"],
            ),
            cache_misses_total: counter(
                "samserve_cache_misses_total",
                "Local embedding-cache misses (each one costs a shared-store read or an encoder run).",
                &["model"],
            ),
            cache_entries: gauge(
                "samserve_cache_entries",
                "Image embeddings held in the cache.",
            ),
            cache_bytes: gauge("samserve_cache_bytes", "Bytes held by the embedding cache."),
            cache_bytes_per_image: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "samserve_cache_bytes_per_image",
                        "Bytes one cached image of a model takes (all its embedding tensors).",
                    ),
                    &["model"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            queue_depth: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "samserve_queue_depth",
                        "Work units (prompts or images) waiting in a worker queue.",
                    ),
                    &["queue"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            rejected_total: counter(
                "samserve_rejected_requests_total",
                "Requests refused by admission control or deadline, by reason.",
                &["reason"],
            ),
            connections_timed_out_total: counter(
                "samserve_connections_timed_out_total",
                "Connections closed by --header-timeout-ms or --idle-timeout-ms, by timer.",
                &["timer"],
            ),
            abandoned_total: counter(
                "samserve_abandoned_jobs_total",
                "Queued jobs dropped unrun because their client had gone, by queue.",
                &["queue"],
            ),
            batch_size: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "samserve_batch_size",
                        "Prompts or images per model call, by queue.",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                    &["queue"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            queue_wait_seconds: histogram(
                "samserve_queue_wait_seconds",
                "Time a job waited in its queue before its batch started, by queue.",
                &["queue"],
            ),
            in_flight_requests: gauge("samserve_in_flight_requests", "HTTP requests being served."),
            open_connections: gauge("samserve_open_connections", "Open client connections."),
            everything_points_total: counter(
                "samserve_everything_points_total",
                "Segment-everything point prompts decoded (progress of long runs).",
                &["model"],
            ),
            everything_running: gauge(
                "samserve_everything_running",
                "Segment-everything runs in progress.",
            ),
            store: StoreMetrics {
                hits_total: counter(
                    "samserve_embedding_store_hits_total",
                    "Embeddings read from the shared store after a local-cache miss.",
                    &["model"],
                ),
                misses_total: counter(
                    "samserve_embedding_store_misses_total",
                    "Shared-store lookups that found no embedding.",
                    &["model"],
                ),
                errors_total: counter(
                    "samserve_embedding_store_errors_total",
                    "Shared-store operations that failed, timed out or were skipped while the store was down, by op.",
                    &["op"],
                ),
                bytes_total: counter(
                    "samserve_embedding_store_bytes_total",
                    "Bytes read from or written to the shared store.",
                    &["direction"],
                ),
                seconds: histogram(
                    "samserve_embedding_store_seconds",
                    "Shared-store operation latency, by op.",
                    &["op"],
                ),
                lock_waits_total: counter(
                    "samserve_embedding_store_lock_waits_total",
                    "Waits on another replica encoding the same image, by outcome.",
                    &["outcome"],
                ),
                pending: gauge(
                    "samserve_embedding_store_pending",
                    "Images encoded while the store was down, to be written once it is back.",
                ),
            },
            text_encode_seconds: histogram(
                "samserve_text_encode_seconds",
                "Text prompts: time to run the text tower on one phrase.",
                &["text_model"],
            ),
            text_cache_total: counter(
                "samserve_text_cache_total",
                "Text prompts: cache lookups by cache (phrase, candidates) and result (hit, miss).",
                &["cache", "result"],
            ),
            text_candidates_seconds: histogram(
                "samserve_text_candidates_seconds",
                "Text prompts: time to build an image's candidate masks and region vectors.",
                &["model"],
            ),
            registry,
        }
    }

    /// Handles for one worker queue.
    pub fn queue(&self, queue: &str) -> crate::core::workers::QueueMetrics {
        crate::core::workers::QueueMetrics {
            depth: self.queue_depth.with_label_values(&[queue]),
            queue_wait: self.queue_wait_seconds.with_label_values(&[queue]),
            rejected: self
                .rejected_total
                .with_label_values(&[&format!("{queue}_queue_full")]),
            abandoned: self.abandoned_total.with_label_values(&[queue]),
        }
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
