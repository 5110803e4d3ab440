//! Server configuration: one struct, parsed by clap, every flag also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

pub mod embed;
pub mod exposure;

/// Command-line and environment configuration of samserve.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "samserve",
    version,
    about = "HTTP inference server for Segment Anything",
    after_help = "Prewarm a shared embedding store with a folder of images: samserve embed --help"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SAMSERVE_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "SAMSERVE_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Model folders to load (each holds a manifest.json). Repeatable; the env var takes a
    /// comma-separated list. Without any, the default model embedded in the binary is served.
    #[arg(long = "model", env = "SAMSERVE_MODELS", value_delimiter = ',')]
    pub models: Vec<PathBuf>,

    /// For a --model folder without manifest.json (an exporter's *encoder*.onnx and
    /// *decoder*.onnx), write the manifest inferred from the graphs into it (it is always
    /// logged), to keep and edit.
    #[arg(long, env = "SAMSERVE_WRITE_MANIFEST")]
    pub write_manifest: bool,

    /// Name of the model used when a request names none (default: the first loaded).
    #[arg(long, env = "SAMSERVE_DEFAULT_MODEL")]
    pub default_model: Option<String>,

    /// Path to libonnxruntime.so. Falls back to ORT_DYLIB_PATH, then `.ort/lib/` next to the
    /// working directory or the executable.
    #[arg(long, env = "SAMSERVE_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// Byte budget of the image-embedding cache.
    #[arg(long, env = "SAMSERVE_CACHE_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub cache_bytes: u64,

    /// Number type of cached embeddings: `float32` (as the encoder returns them) or
    /// `float16` (half the bytes, so twice the images per --cache-bytes; masks agree with
    /// float32 to >= 0.99 mean IoU, tests/cache_dtype.rs; each decoder call widens the
    /// embedding back to float32, a few ms per million values).
    #[arg(long, env = "SAMSERVE_CACHE_DTYPE", value_enum, default_value_t = CacheDtype::Float32)]
    pub cache_dtype: CacheDtype,

    /// Seconds an embedding may stay unused before it is evicted (0 = never).
    #[arg(long, env = "SAMSERVE_CACHE_IDLE_SECS", default_value_t = 3600)]
    pub cache_idle_secs: u64,

    /// Byte budget of the store of uploaded image files, kept so segment-everything can
    /// encode crops of an image uploaded earlier.
    #[arg(long, env = "SAMSERVE_IMAGE_STORE_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub image_store_bytes: u64,

    /// Byte budget of the store of low-resolution mask logits (refinement handles).
    #[arg(long, env = "SAMSERVE_MASK_STORE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub mask_store_bytes: u64,

    /// Largest accepted request body in bytes.
    #[arg(long, env = "SAMSERVE_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest accepted image, in pixels (width x height), checked before decoding.
    #[arg(long, env = "SAMSERVE_MAX_IMAGE_PIXELS", default_value_t = 64_000_000)]
    pub max_image_pixels: u64,

    /// Most points (clicks) in one prompt.
    #[arg(long, env = "SAMSERVE_MAX_POINTS", default_value_t = 64)]
    pub max_points: usize,

    /// Most prompts in one segment request.
    #[arg(long, env = "SAMSERVE_MAX_PROMPTS", default_value_t = 256)]
    pub max_prompts: usize,

    /// Most masks one segment-everything answer holds; beyond it the highest predicted IoU
    /// masks are kept and the summary says `truncated`.
    #[arg(long, env = "SAMSERVE_EVERYTHING_MAX_MASKS", default_value_t = 1000)]
    pub everything_max_masks: u64,

    /// Most mask pixels (sum of areas) one segment-everything answer holds (same rule).
    #[arg(
        long,
        env = "SAMSERVE_EVERYTHING_MAX_PIXELS",
        default_value_t = 500_000_000
    )]
    pub everything_max_pixels: u64,

    /// Most prompts one segment-everything request may decode: the grid's points summed
    /// over every crop (`points_per_side`² x (1 + 4 + 16 ...) with the default downscale
    /// factor). A request asking for more gets 413 before any work; the default covers
    /// the `default` (1,024) and `sa1b` (3,072) presets.
    #[arg(long, env = "SAMSERVE_EVERYTHING_MAX_POINTS", default_value_t = 4096)]
    pub everything_max_points: u64,

    /// Most crops (encoder runs) one segment-everything request may ask for: 1 + 4 + 16
    /// ... for `crop_n_layers` 0, 1, 2 ...; over it, 413. The default allows 2 layers (21).
    #[arg(long, env = "SAMSERVE_EVERYTHING_MAX_CROPS", default_value_t = 21)]
    pub everything_max_crops: u64,

    /// ONNX Runtime intra-op threads for the encoder (0 = all cores). An upload is one long
    /// encoder run during which the decoder is usually idle, so it gets every core; while
    /// both run they share the cores and clicks wait longer. Set it to the cores minus the
    /// decoder workers x threads to keep cores free for the decoder under mixed load, and to
    /// the cores the server can count on when other processes share the machine (a split
    /// run waits for its slowest thread).
    #[arg(long, env = "SAMSERVE_ENCODER_THREADS", default_value_t = 0)]
    pub encoder_threads: usize,

    /// ONNX Runtime intra-op threads per decoder worker.
    #[arg(long, env = "SAMSERVE_DECODER_THREADS", default_value_t = 1)]
    pub decoder_threads: usize,

    /// Number of decoder worker threads, each with its own session (0 = one per core). A
    /// request with more prompts than `--max-batch-prompts` is spread over them.
    #[arg(long, env = "SAMSERVE_DECODER_WORKERS", default_value_t = 0)]
    pub decoder_workers: usize,

    /// Intra-op threads of the decoder when a worker runs alone (no other worker busy,
    /// nothing queued): each worker keeps a second session with this many threads, so a
    /// lone click uses the cores that idle workers would (0 = all cores; at most
    /// `--decoder-threads` turns it off).
    #[arg(long, env = "SAMSERVE_DECODER_LONE_THREADS", default_value_t = 0)]
    pub decoder_lone_threads: usize,

    /// Most prompts decoded in one ONNX call; prompts of concurrent requests on the same
    /// image (with the same number of points) share a call. The decoder runs on the CPU,
    /// where a call's cost per prompt grows once a batch's activations outgrow the caches
    /// (measured on the default model: lowest at 1-8 prompts, +30% at 64).
    #[arg(long, env = "SAMSERVE_MAX_BATCH_PROMPTS", default_value_t = 8)]
    pub max_batch_prompts: usize,

    /// Microseconds a decoder worker waits for more prompts once it holds some. 0 batches
    /// only what is already queued, so an idle server adds no latency.
    #[arg(long, env = "SAMSERVE_MAX_BATCH_WAIT", default_value_t = 0)]
    pub max_batch_wait: u64,

    /// Most prompts queued for the decoder before new requests get 429.
    #[arg(long, env = "SAMSERVE_MAX_QUEUED_PROMPTS", default_value_t = 256)]
    pub max_queued_prompts: usize,

    /// Most images queued for the encoder before new uploads get 429.
    #[arg(long, env = "SAMSERVE_MAX_QUEUED_IMAGES", default_value_t = 16)]
    pub max_queued_images: usize,

    /// Most images encoded in one call when the encoder's batch axis is dynamic.
    #[arg(long, env = "SAMSERVE_MAX_ENCODER_BATCH", default_value_t = 4)]
    pub max_encoder_batch: usize,

    /// Per-request deadline in milliseconds (504 when exceeded; 0 = none).
    #[arg(long, env = "SAMSERVE_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub request_timeout_ms: u64,

    /// Execution provider of the encoder: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, env = "SAMSERVE_ENCODER_DEVICE", default_value = "cpu")]
    pub encoder_device: String,

    /// Execution provider of the decoder sessions: `cpu`, `cuda` or `cuda:N`. On a GPU,
    /// raise `--max-batch-prompts` (e.g. 64): batching pays there, not on a CPU.
    #[arg(long, env = "SAMSERVE_DECODER_DEVICE", default_value = "cpu")]
    pub decoder_device: String,

    /// Refuse to start when the encoder or decoder device is a GPU that is not available.
    #[arg(long, env = "SAMSERVE_REQUIRE_GPU", default_value_t = false)]
    pub require_gpu: bool,

    /// Shared embedding store behind the local cache, e.g. `redis://HOST:6379/0` (off when
    /// unset). Replicas pointing at one store encode each image once between them.
    #[arg(long, env = "SAMSERVE_EMBEDDING_STORE")]
    pub embedding_store: Option<StoreUrl>,

    /// Seconds an embedding lives in the shared store (0 = no expiry).
    #[arg(
        long,
        env = "SAMSERVE_EMBEDDING_STORE_TTL_SECS",
        default_value_t = 86_400
    )]
    pub embedding_store_ttl_secs: u64,

    /// Per-operation timeout of the shared store in milliseconds (connect included); past
    /// it the store counts as down and requests are served from the local cache and encoder.
    #[arg(
        long,
        env = "SAMSERVE_EMBEDDING_STORE_TIMEOUT_MS",
        default_value_t = 500
    )]
    pub embedding_store_timeout_ms: u64,

    /// Milliseconds a replica holds the store's per-image encode lock; another replica
    /// missing the same image waits at most this long for the embedding, then encodes it.
    #[arg(
        long,
        env = "SAMSERVE_EMBEDDING_STORE_LOCK_MS",
        default_value_t = 15_000
    )]
    pub embedding_store_lock_ms: u64,

    /// File holding a secret shared by the replicas (at least 16 bytes; surrounding
    /// whitespace ignored). With it, store values carry a keyed checksum, so values written
    /// by anyone without the secret (whoever else can write to the store) are refused.
    /// Without it, a plain checksum still refuses damaged or naively edited values.
    #[arg(long, env = "SAMSERVE_EMBEDDING_STORE_SECRET_FILE")]
    pub embedding_store_secret_file: Option<PathBuf>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "SAMSERVE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Limits and access control for exposure beyond localhost.
    #[command(flatten)]
    pub exposure: exposure::ExposureConfig,
}

/// Number type of cached embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheDtype {
    /// 4 bytes per value.
    Float32,
    /// 2 bytes per value (IEEE binary16, rounded to nearest).
    Float16,
}

/// A store URL that never prints its password (the config is logged at start).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(pub String);

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(StoreUrl(s.to_string()))
        } else {
            Err(format!(
                "expected redis://HOST:PORT/DB, got '{}'",
                StoreUrl(s.to_string()).redacted()
            ))
        }
    }
}

impl StoreUrl {
    /// The URL with any `user:password@` part replaced by `***@`.
    pub fn redacted(&self) -> String {
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &self.0[..scheme + 3], &self.0[at..])
            }
            _ => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Config {
    /// The socket address to bind.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        let addr = format!("{}:{}", self.host, self.port);
        addr.parse()
            .or_else(|_| {
                use std::net::ToSocketAddrs;
                addr.to_socket_addrs()?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))
            })
            .map_err(|e| anyhow::anyhow!("invalid listen address {addr}: {e}"))
    }

    /// A configuration with all defaults, for tests and embedding.
    pub fn defaults() -> Self {
        Config::parse_from(["samserve"])
    }
}
