//! Flags for serving beyond localhost: input limits that bound memory, connection and
//! per-client limits, API keys, CORS. Kept apart from the model and queue flags.

use std::path::PathBuf;

use clap::Args;

/// Limits and access control for a server reachable by untrusted clients.
#[derive(Debug, Clone, Args)]
pub struct ExposureConfig {
    /// Largest `long side / short side` of an image (413 above it), checked from the header.
    /// Bounds the per-sample tables of resizing and mask upscaling, which grow with the
    /// long side (see README, "Memory").
    #[arg(long, env = "SAMSERVE_MAX_ASPECT_RATIO", default_value_t = 100)]
    pub max_aspect_ratio: u64,

    /// Largest decoder output in bytes (width x height x channels x bytes per channel,
    /// before conversion to 8-bit RGB; 413 above it), checked from the header.
    #[arg(long, env = "SAMSERVE_MAX_DECODED_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_decoded_bytes: u64,

    /// Most images decoded at once (0 = the number of cores); further uploads wait.
    #[arg(long, env = "SAMSERVE_MAX_CONCURRENT_DECODES", default_value_t = 0)]
    pub max_concurrent_decodes: usize,

    /// Milliseconds a client has to send a request's headers, from the connection's start or,
    /// on a keep-alive connection, from the request's first byte; the connection is closed
    /// after it (0 = none).
    #[arg(long, env = "SAMSERVE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Milliseconds a keep-alive connection may wait, after a response, for the first byte of
    /// its next request; it is closed after it (0 = none). Stalled bodies are closed by
    /// --request-timeout-ms.
    #[arg(long, env = "SAMSERVE_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Most open connections; further connections wait in the listen backlog (0 = no cap).
    #[arg(long, env = "SAMSERVE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Most open connections of one client address (an IPv4 address or an IPv6 /64); a
    /// connection past it is answered 429 at once and closed, so no one client holds every
    /// slot of --max-connections (0 = no cap). Behind a reverse proxy every connection
    /// comes from the proxy's address: raise it above the proxy's upstream connections, or
    /// set 0 and cap clients at the proxy.
    #[arg(
        long,
        env = "SAMSERVE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_connections_per_address: usize,

    /// Most requests one client (API key, or address when keys are off) has in progress;
    /// 429 `too_many_requests` above it (0 = no cap).
    #[arg(long, env = "SAMSERVE_MAX_REQUESTS_PER_CLIENT", default_value_t = 0)]
    pub max_requests_per_client: usize,

    /// File of API keys, one per line (`key`, `id:key` or `id:blake3:HEX`; `#` comments).
    /// When set, every route except /healthz, /readyz, /openapi.json, /docs (and /metrics
    /// unless --metrics-require-key) needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    /// Reloaded on SIGHUP.
    #[arg(long, env = "SAMSERVE_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Require an API key on /metrics too.
    #[arg(long, env = "SAMSERVE_METRICS_REQUIRE_KEY", default_value_t = false)]
    pub metrics_require_key: bool,

    /// Origins allowed by CORS (repeatable; `*` for any). None: no CORS headers.
    #[arg(
        long = "cors-allow-origin",
        env = "SAMSERVE_CORS_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allow_origins: Vec<String>,
}
