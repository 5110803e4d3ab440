//! The shared embedding store: a second cache level behind the local moka cache, shared by
//! every replica (`--embedding-store redis://…`).
//!
//! On a local miss the engine asks the store before running the encoder, and writes what it
//! encodes. Replicas that miss the same image at once elect one encoder with a short lock
//! (`SET NX PX`); the others wait for the value, and encode themselves if the holder dies
//! (its lock expires) or the wait runs out. The store is an optimisation, never a
//! dependency: any failure or timeout is logged once per outage, counted, and the request
//! is served from the local cache and encoder; after a failure the store is skipped for a
//! short back-off, then tried again (the connection reconnects by itself).
//!
//! What the store holds is read from outside the process: a value is used only when it
//! passes [`codec::decode`] (bound to its model and image, checksum, geometry, finite
//! values); anything else is a counted error (`op="decode"`) and a miss, and the next
//! encode of the image overwrites it. A value longer than the model's values is not even
//! read. Values that could not be written while the store was down are written once it is
//! back ([`backfill`]).

pub mod backfill;
pub mod codec;
pub mod redis;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

pub use codec::{ModelTag, Seal, TensorSpec, ValueRules};

use crate::config::Config;
use crate::metrics::StoreMetrics;
use crate::runtime::image_limits::DecodeLimits;
use crate::runtime::model::{Embedding, ModelSpec};

/// How long the store is skipped after a failure before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(1000);
/// First and longest pause between looks while another replica encodes.
const POLL_MIN: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);

/// What a bounded read found under a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// No such key.
    Missing,
    /// The value (at most the asked length).
    Value(Vec<u8>),
    /// A value longer than the asked length (its length), or one of another type: not read.
    Unusable(String),
}

/// The operations the store needs from a key-value server. Keys are strings, values bytes.
pub trait StoreBackend: Send + Sync {
    /// The value of `key` when it is at most `max_len` bytes long; a longer one is not
    /// transferred.
    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> BoxFuture<'a, anyhow::Result<Fetched>>;
    /// Sets `key`, expiring after `ttl` when given.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Sets `key` to `token` for `ttl` unless it exists; true when this call set it.
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// Deletes `key` if it still holds `token`.
    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Whether `key` exists.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// Deletes `key`; true when it existed.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<bool>>;
}

/// The identity under which a model's embeddings are shared: name, a fingerprint of the
/// encoder weights and preprocessing, and the embedding shape. Replicas serving another
/// build of a model (a retrained file under the same name) never read each other's values.
pub fn model_tag(spec: &ModelSpec, encoder_onnx: &[u8]) -> ModelTag {
    let mut h = blake3::Hasher::new();
    h.update(encoder_onnx);
    h.update(&(spec.input_size as u64).to_le_bytes());
    for v in spec.pixel_mean.iter().chain(&spec.pixel_std) {
        h.update(&v.to_le_bytes());
    }
    h.update(format!("{:?}", spec.encoder_input).as_bytes());
    h.update(format!("{:?}", spec.kind.resize()).as_bytes());
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&h.finalize().as_bytes()[..16]);
    ModelTag {
        name: spec.name.clone(),
        fingerprint,
        input_size: spec.input_size,
        resize: spec.kind.resize(),
        tensors: spec
            .tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                shape: t.shape.clone(),
            })
            .collect(),
    }
}

/// What [`SharedStore::fetch_or_claim`] found.
pub enum Claim {
    /// The embedding, read from the store.
    Hit(Embedding),
    /// Encode locally; with `Some`, this replica holds the encode lock and must
    /// [`SharedStore::finish`] it.
    Encode(Option<EncodeLock>),
}

/// The store did not answer (down, slow, or skipped during the back-off).
struct Unavailable;

/// The encode lock of one image, held by this replica.
pub struct EncodeLock {
    key: String,
    token: String,
}

/// The shared store with its policy: timeouts, back-off, metrics, lock protocol.
pub struct SharedStore {
    backend: Box<dyn StoreBackend>,
    metrics: StoreMetrics,
    timeout: Duration,
    ttl: Option<Duration>,
    lock_ttl: Duration,
    /// Skip the store until this instant (after a failure).
    down_until: Mutex<Option<Instant>>,
    /// Whether the current outage has been logged.
    outage_logged: AtomicBool,
    lock_counter: AtomicU64,
    where_: String,
    /// What a value read back must satisfy (seal, image limits).
    rules: ValueRules,
    /// Images whose value could not be written (store down): written once it is back.
    pending: backfill::Pending,
}

impl SharedStore {
    /// The store configured by `--embedding-store`, if any.
    pub fn from_config(config: &Config, metrics: &StoreMetrics) -> anyhow::Result<Option<Self>> {
        let Some(url) = &config.embedding_store else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(config.embedding_store_timeout_ms.max(1));
        let backend = redis::RedisBackend::new(&url.0, timeout)?;
        let seal = match &config.embedding_store_secret_file {
            Some(path) => {
                let secret = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                let secret = secret.trim_ascii();
                anyhow::ensure!(
                    secret.len() >= 16,
                    "{}: the embedding store secret must be at least 16 bytes",
                    path.display()
                );
                Seal::from_secret(secret)
            }
            None => Seal::Checksum,
        };
        tracing::info!(
            store = %url.redacted(),
            keyed = matches!(seal, Seal::Keyed(_)),
            "shared embedding store enabled"
        );
        let rules = ValueRules {
            seal,
            limits: DecodeLimits {
                max_pixels: config.max_image_pixels,
                max_decoded_bytes: u64::MAX,
                max_aspect_ratio: config.exposure.max_aspect_ratio.max(1),
            },
        };
        Ok(Some(
            Self::new(
                Box::new(backend),
                metrics.clone(),
                timeout,
                (config.embedding_store_ttl_secs > 0)
                    .then(|| Duration::from_secs(config.embedding_store_ttl_secs)),
                Duration::from_millis(config.embedding_store_lock_ms.max(1)),
                url.redacted(),
            )
            .with_rules(rules),
        ))
    }

    /// A store over any backend.
    pub fn new(
        backend: Box<dyn StoreBackend>,
        metrics: StoreMetrics,
        timeout: Duration,
        ttl: Option<Duration>,
        lock_ttl: Duration,
        where_: String,
    ) -> Self {
        SharedStore {
            backend,
            metrics,
            timeout,
            ttl,
            lock_ttl,
            down_until: Mutex::new(None),
            outage_logged: AtomicBool::new(false),
            lock_counter: AtomicU64::new(0),
            where_,
            rules: ValueRules::default(),
            pending: backfill::Pending::default(),
        }
    }

    /// Sets what values read back must satisfy.
    pub fn with_rules(mut self, rules: ValueRules) -> Self {
        self.rules = rules;
        self
    }

    /// Whether the store is in its back-off after a failure.
    fn backing_off(&self) -> bool {
        self.down_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until)
    }

    fn value_key(tag: &ModelTag, image_id: &str) -> String {
        format!(
            "samserve:emb:v{}:{}:{}:{image_id}",
            codec::FORMAT_VERSION,
            tag.name,
            tag.fingerprint_hex()
        )
    }

    fn lock_key(tag: &ModelTag, image_id: &str) -> String {
        format!(
            "samserve:lock:{}:{}:{image_id}",
            tag.name,
            tag.fingerprint_hex()
        )
    }

    /// Runs one backend call under the timeout, with metrics and the outage policy.
    /// `None` means the store could not answer (down, slow, skipped).
    async fn call<T>(&self, op: &'static str, fut: BoxFuture<'_, anyhow::Result<T>>) -> Option<T> {
        if self.backing_off() {
            self.metrics
                .errors_total
                .with_label_values(&["skipped"])
                .inc();
            return None;
        }
        let t = Instant::now();
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("timed out after {:?}", self.timeout)),
        };
        self.metrics
            .seconds
            .with_label_values(&[op])
            .observe(t.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                if self.outage_logged.swap(false, Ordering::Relaxed) {
                    tracing::info!(store = %self.where_, "embedding store reachable again");
                }
                *self.down_until.lock().unwrap() = None;
                Some(v)
            }
            Err(e) => {
                self.metrics.errors_total.with_label_values(&[op]).inc();
                *self.down_until.lock().unwrap() = Some(Instant::now() + RETRY_AFTER);
                if !self.outage_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        store = %self.where_, op, error = %format!("{e:#}"),
                        "embedding store unavailable; serving from the local cache and encoder"
                    );
                }
                None
            }
        }
    }

    /// `Err` when the store could not answer; `Ok(None)` when it holds no usable value.
    async fn read(
        &self,
        tag: &ModelTag,
        image_id: &str,
        key: &str,
    ) -> Result<Option<Embedding>, Unavailable> {
        let max_len = tag.value_len(image_id);
        let fetched = self
            .call("get", self.backend.get(key, max_len))
            .await
            .ok_or(Unavailable)?;
        let decoded = match fetched {
            Fetched::Missing => return Ok(None),
            Fetched::Unusable(why) => Err(why),
            Fetched::Value(bytes) => {
                self.metrics
                    .bytes_total
                    .with_label_values(&["read"])
                    .inc_by(bytes.len() as u64);
                codec::decode(tag, image_id, &bytes, &self.rules)
            }
        };
        match decoded {
            Ok(e) => Ok(Some(e)),
            Err(why) => {
                // Counted, then treated as absent: the next encode overwrites it.
                self.metrics
                    .errors_total
                    .with_label_values(&["decode"])
                    .inc();
                tracing::warn!(key, why, "ignoring an unusable embedding store value");
                Ok(None)
            }
        }
    }

    fn count(&self, tag: &ModelTag, hit: bool) {
        let c = if hit {
            &self.metrics.hits_total
        } else {
            &self.metrics.misses_total
        };
        c.with_label_values(&[&tag.name]).inc();
    }

    /// Whether the store holds an embedding of the image for this model build; `None` when
    /// the store could not answer. (The value itself is not read or checked: a prewarm run
    /// uses this to skip images, and a bad value is re-encoded on first use anyway.)
    pub async fn contains(&self, tag: &ModelTag, image_id: &str) -> Option<bool> {
        let key = Self::value_key(tag, image_id);
        self.call("exists", self.backend.exists(&key)).await
    }

    /// Reads an embedding (no lock): for prompts on an image this replica has not seen.
    pub async fn fetch(&self, tag: &ModelTag, image_id: &str) -> Option<Embedding> {
        let found = self
            .read(tag, image_id, &Self::value_key(tag, image_id))
            .await
            .ok()?;
        self.count(tag, found.is_some());
        found
    }

    /// Reads an embedding, or elects this replica to encode it. When another replica holds
    /// the encode lock, waits for its value up to the lock's lifetime.
    pub async fn fetch_or_claim(&self, tag: &ModelTag, image_id: &str) -> Claim {
        let key = Self::value_key(tag, image_id);
        match self.read(tag, image_id, &key).await {
            Err(Unavailable) => return Claim::Encode(None),
            Ok(Some(e)) => {
                self.count(tag, true);
                return Claim::Hit(e);
            }
            Ok(None) => self.count(tag, false),
        }
        let lock_key = Self::lock_key(tag, image_id);
        let token = format!(
            "{}-{}-{}",
            std::process::id(),
            self.lock_counter.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let started = Instant::now();
        let mut pause = POLL_MIN;
        loop {
            match self
                .call(
                    "lock",
                    self.backend.try_lock(&lock_key, &token, self.lock_ttl),
                )
                .await
            {
                None => return Claim::Encode(None),
                Some(true) => {
                    // The holder may have written and unlocked between our read and lock.
                    if let Ok(Some(e)) = self.read(tag, image_id, &key).await {
                        self.unlock(&lock_key, &token).await;
                        return Claim::Hit(e);
                    }
                    return Claim::Encode(Some(EncodeLock {
                        key: lock_key,
                        token,
                    }));
                }
                Some(false) => {}
            }
            // Another replica is encoding: wait for its value while its lock lives. A lock
            // that vanishes without a value (holder failed or died and the lock expired)
            // sends us back to take it ourselves.
            loop {
                if started.elapsed() >= self.lock_ttl {
                    self.metrics
                        .lock_waits_total
                        .with_label_values(&["timeout"])
                        .inc();
                    return Claim::Encode(None);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(POLL_MAX);
                match self.read(tag, image_id, &key).await {
                    Err(Unavailable) => return Claim::Encode(None),
                    Ok(Some(e)) => {
                        self.metrics
                            .lock_waits_total
                            .with_label_values(&["hit"])
                            .inc();
                        return Claim::Hit(e);
                    }
                    Ok(None) => {}
                }
                match self.call("exists", self.backend.exists(&lock_key)).await {
                    None => return Claim::Encode(None),
                    Some(true) => continue,
                    Some(false) => {
                        self.metrics
                            .lock_waits_total
                            .with_label_values(&["holder_gone"])
                            .inc();
                        break;
                    }
                }
            }
        }
    }

    async fn unlock(&self, key: &str, token: &str) {
        self.call("unlock", self.backend.unlock(key, token)).await;
    }

    /// Writes a freshly encoded embedding (when given) and releases the lock (when held).
    /// A value the store cannot take now is remembered and written once it is back.
    pub async fn finish(
        &self,
        tag: &ModelTag,
        image_id: &str,
        embedding: Option<&Embedding>,
        lock: Option<EncodeLock>,
    ) {
        if let Some(e) = embedding {
            if !self.write(tag, image_id, e).await {
                self.owe(tag, image_id);
            }
        }
        if let Some(lock) = lock {
            self.unlock(&lock.key, &lock.token).await;
        }
    }

    /// Writes an embedding's value; true when the store took it.
    async fn write(&self, tag: &ModelTag, image_id: &str, e: &Embedding) -> bool {
        let value = match codec::encode(tag, image_id, e, &self.rules.seal) {
            Ok(v) => v,
            Err(why) => {
                tracing::error!(model = %tag.name, why, "embedding does not fit the store format");
                return true; // nothing to retry
            }
        };
        let key = Self::value_key(tag, image_id);
        let written = self
            .call("put", self.backend.put(&key, &value, self.ttl))
            .await
            .is_some();
        if written {
            self.metrics
                .bytes_total
                .with_label_values(&["write"])
                .inc_by(value.len() as u64);
        }
        written
    }

    /// Drops an image's embedding from the store (DELETE of the image); true when the
    /// store held it.
    pub async fn delete(&self, tag: &ModelTag, image_id: &str) -> bool {
        self.settle(&tag.name, image_id);
        let key = Self::value_key(tag, image_id);
        self.call("delete", self.backend.delete(&key))
            .await
            .unwrap_or(false)
    }
}
