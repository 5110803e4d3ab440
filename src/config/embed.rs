//! Flags of `samserve embed`: prewarm a shared embedding store with a dataset.

use std::path::PathBuf;

use clap::Parser;

use super::{Config, StoreUrl};

/// `samserve embed [--model DIR]... --store redis://... FILES|DIRS...`
#[derive(Debug, Clone, Parser)]
#[command(
    name = "samserve embed",
    version,
    about = "Prewarm a shared embedding store: encode every image of FILES and DIRS (searched \
             recursively for .jpg .jpeg .png .webp .bmp .tif .tiff .gif) with each model and \
             write the embeddings to the Redis store that the servers read \
             (--embedding-store). Images the store already holds are skipped, so an \
             interrupted run resumes where it stopped. Exit status 1 when an image failed.",
    after_help = "Example: samserve embed --model models/sam-vit-b --store redis://redis:6379/0 \
                  /data/images"
)]
pub struct EmbedArgs {
    /// Model folders (each with a manifest.json); repeatable, or comma-separated in the
    /// env var. Every image is embedded with every model. Default: the embedded default
    /// model. Use the same folders as the servers: the store key includes a fingerprint
    /// of the encoder file, so another build of a model is not shared.
    #[arg(long = "model", env = "SAMSERVE_MODELS", value_delimiter = ',')]
    pub models: Vec<PathBuf>,

    /// The shared store, as the servers' --embedding-store, e.g. `redis://HOST:6379/0`.
    #[arg(long, env = "SAMSERVE_EMBEDDING_STORE")]
    pub store: StoreUrl,

    /// Seconds the written embeddings live in the store (0 = no expiry); the servers'
    /// --embedding-store-ttl-secs by default.
    #[arg(
        long,
        env = "SAMSERVE_EMBEDDING_STORE_TTL_SECS",
        default_value_t = 86_400
    )]
    pub ttl_secs: u64,

    /// Per-operation timeout of the store in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub store_timeout_ms: u64,

    /// Images in flight at once (decoding overlaps encoding; the encoder runs one call at a
    /// time and batches when its model allows).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,

    /// ONNX Runtime intra-op threads of the encoder (0 = all cores).
    #[arg(long, env = "SAMSERVE_ENCODER_THREADS", default_value_t = 0)]
    pub encoder_threads: usize,

    /// Execution provider of the encoder: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, env = "SAMSERVE_ENCODER_DEVICE", default_value = "cpu")]
    pub encoder_device: String,

    /// Path to libonnxruntime.so (as the server's --ort-lib).
    #[arg(long, env = "SAMSERVE_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// Largest accepted image in pixels (as the server's --max-image-pixels).
    #[arg(long, env = "SAMSERVE_MAX_IMAGE_PIXELS", default_value_t = 64_000_000)]
    pub max_image_pixels: u64,

    /// One line per image instead of a progress line, also on a terminal.
    #[arg(long)]
    pub no_progress_bar: bool,

    /// Image files and folders.
    #[arg(required = true, value_name = "FILES|DIRS")]
    pub paths: Vec<PathBuf>,
}

impl EmbedArgs {
    /// The server configuration that loads the models and the store as a server would:
    /// defaults for everything else, small local caches (nothing is served).
    pub fn server_config(&self) -> Config {
        let mut c = Config::defaults();
        c.models = self.models.clone();
        c.embedding_store = Some(self.store.clone());
        c.embedding_store_ttl_secs = self.ttl_secs;
        c.embedding_store_timeout_ms = self.store_timeout_ms;
        c.encoder_threads = self.encoder_threads;
        c.encoder_device = self.encoder_device.clone();
        c.ort_lib = self.ort_lib.clone();
        c.max_image_pixels = self.max_image_pixels;
        c.cache_bytes = 256 << 20;
        c.image_store_bytes = 0;
        c.mask_store_bytes = 1 << 20;
        c.decoder_workers = 1;
        c.max_queued_images = self.jobs.max(1) * 2;
        c
    }
}
