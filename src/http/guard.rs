//! Who may call, and how much at once: API keys and the per-client cap on requests in
//! progress. Both are middleware over the routes; handlers never see keys.
//!
//! Keys are stored as blake3 hashes and a presented key is hashed and compared with
//! `blake3::Hash`'s constant-time equality, so neither the comparison's timing nor a memory
//! dump gives a key away; logs carry only the key's id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::config::exposure::ExposureConfig;
use crate::error::ApiError;

/// One accepted key: its id (safe to log) and the blake3 hash of the key.
#[derive(Clone)]
struct KeyEntry {
    id: String,
    hash: blake3::Hash,
}

/// The identity a request was admitted under, attached to the request and its response.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Id of the API key used, when keys are on.
    pub key_id: Option<String>,
    /// The peer address, when known.
    pub addr: Option<SocketAddr>,
}

impl ClientIdentity {
    /// The name per-client limits count under: the key id, else the peer IP.
    fn limit_key(&self) -> String {
        match (&self.key_id, &self.addr) {
            (Some(k), _) => format!("key:{k}"),
            (None, Some(a)) => format!("ip:{}", a.ip()),
            (None, None) => "unknown".into(),
        }
    }
}

/// API keys, the per-client cap and the routes left open.
pub struct Guard {
    keys_file: Option<PathBuf>,
    keys: RwLock<Option<Arc<Vec<KeyEntry>>>>,
    metrics_require_key: bool,
    max_per_client: usize,
    in_progress: Mutex<HashMap<String, usize>>,
}

/// Parses a keys file: one key per line, `key`, `id:key`, or `id:blake3:HEX` (the hash of
/// the key instead of the key); blank lines and `#` comments are skipped. A line with an
/// empty id or an empty key, an id used twice and a key listed twice are errors (an empty
/// key would admit a request with an empty key header; a repeated id or key makes the
/// identity in the log and the per-client cap ambiguous).
fn parse_keys(text: &str) -> anyhow::Result<Vec<KeyEntry>> {
    let mut keys: Vec<KeyEntry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = match line.split_once(':') {
            Some((id, rest)) => match rest.strip_prefix("blake3:") {
                Some(hex) => KeyEntry {
                    id: id.to_string(),
                    hash: blake3::Hash::from_hex(hex.trim()).map_err(|_| {
                        anyhow::anyhow!("line {}: 'blake3:' needs 64 hex digits", n + 1)
                    })?,
                },
                None => {
                    let key = rest.trim();
                    if key.is_empty() {
                        anyhow::bail!("line {}: the key of '{id}' is empty", n + 1);
                    }
                    KeyEntry {
                        id: id.to_string(),
                        hash: blake3::hash(key.as_bytes()),
                    }
                }
            },
            None => KeyEntry {
                // An id derived from the hash: stable, and says nothing about the key.
                id: format!("key-{}", &blake3::hash(line.as_bytes()).to_hex()[..8]),
                hash: blake3::hash(line.as_bytes()),
            },
        };
        if entry.id.is_empty() || entry.id.chars().any(|c| c.is_whitespace()) {
            anyhow::bail!(
                "line {}: the key id must be non-empty without spaces",
                n + 1
            );
        }
        if keys.iter().any(|k| k.id == entry.id) {
            anyhow::bail!("line {}: the key id '{}' is used twice", n + 1, entry.id);
        }
        if let Some(k) = keys.iter().find(|k| k.hash == entry.hash) {
            anyhow::bail!(
                "line {}: the same key as '{}' (each key once, under one id)",
                n + 1,
                k.id
            );
        }
        keys.push(entry);
    }
    if keys.is_empty() {
        anyhow::bail!("no keys in the file");
    }
    Ok(keys)
}

fn read_keys(path: &Path) -> anyhow::Result<Vec<KeyEntry>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    parse_keys(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl Guard {
    /// No keys, no per-client cap.
    pub fn open() -> Self {
        Guard {
            keys_file: None,
            keys: RwLock::new(None),
            metrics_require_key: false,
            max_per_client: 0,
            in_progress: Mutex::new(HashMap::new()),
        }
    }

    /// The guard `config` asks for; fails when the keys file cannot be read or is empty.
    pub fn from_config(config: &ExposureConfig) -> anyhow::Result<Self> {
        let keys = match &config.api_keys_file {
            Some(p) => Some(Arc::new(read_keys(p)?)),
            None => None,
        };
        Ok(Guard {
            keys_file: config.api_keys_file.clone(),
            keys: RwLock::new(keys),
            metrics_require_key: config.metrics_require_key,
            max_per_client: config.max_requests_per_client,
            in_progress: Mutex::new(HashMap::new()),
        })
    }

    /// Re-reads the keys file (SIGHUP). On error the old keys stay and the error is returned.
    /// Requests in progress are not affected; each request is checked once, on arrival.
    pub fn reload_keys(&self) -> anyhow::Result<usize> {
        let Some(path) = &self.keys_file else {
            return Ok(0);
        };
        let keys = read_keys(path)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
        Ok(n)
    }

    /// Whether API keys are required (`--api-keys-file`).
    pub fn keys_on(&self) -> bool {
        self.keys_file.is_some()
    }

    /// Whether /metrics needs a key too.
    pub fn metrics_require_key(&self) -> bool {
        self.metrics_require_key
    }

    fn keys(&self) -> Option<Arc<Vec<KeyEntry>>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `route` (a route template) is served without a key.
    fn is_open_route(&self, route: &str) -> bool {
        super::openapi::OPEN_ROUTES.contains(&route)
            || (route == "/metrics" && !self.metrics_require_key)
    }

    /// The key id of a valid presented key; `Err` is the 401 to answer.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let Some(keys) = self.keys() else {
            return Ok(None);
        };
        let presented = presented_key(headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
                    .into(),
            )
        })?;
        let hash = blake3::hash(presented.as_bytes());
        // Every entry is compared (no early exit), each comparison in constant time.
        let mut found = None;
        for k in keys.iter() {
            if k.hash == hash {
                found = Some(k.id.clone());
            }
        }
        found
            .map(Some)
            .ok_or_else(|| ApiError::Unauthorized("the API key is not valid".into()))
    }

    /// Counts a request of `client` in; `None` when the client is at its cap.
    fn admit(self: &Arc<Self>, client: String) -> Option<ClientSlot> {
        if self.max_per_client == 0 {
            return Some(ClientSlot(None));
        }
        let mut map = self.in_progress.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(client.clone()).or_insert(0);
        if *n >= self.max_per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot(Some((self.clone(), client))))
    }
}

/// A request counted against its client's cap; released on drop (also when the client
/// disconnects and the request's future is dropped).
struct ClientSlot(Option<(Arc<Guard>, String)>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((guard, client)) = self.0.take() {
            let mut map = guard.in_progress.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&client);
                }
            }
        }
    }
}

/// The key from `Authorization: Bearer KEY` or `X-API-Key: KEY`; an empty key is no key.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let key = if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())?
    } else {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())?
    };
    (!key.is_empty()).then_some(key)
}

/// Middleware: API key check (401), then the per-client cap (429). The identity goes on the
/// request (for handlers) and on the response (for the access log).
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let guard = state.guard.clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let open = guard.is_open_route(&route);
    let key_id = if open {
        None
    } else {
        match guard.authenticate(req.headers()) {
            Ok(k) => k,
            Err(e) => {
                state
                    .metrics
                    .rejected_total
                    .with_label_values(&["unauthorized"])
                    .inc();
                return e.into_response();
            }
        }
    };
    let identity = ClientIdentity { key_id, addr };
    // Open routes are never capped: an orchestrator must see a busy server as alive.
    let slot = if open {
        ClientSlot(None)
    } else {
        match guard.admit(identity.limit_key()) {
            Some(slot) => slot,
            None => {
                state
                    .metrics
                    .rejected_total
                    .with_label_values(&["client_limit"])
                    .inc();
                let mut resp = ApiError::TooManyRequests {
                    message: format!(
                        "this client already has {} requests in progress (--max-requests-per-client)",
                        guard.max_per_client
                    ),
                    retry_after_secs: 1,
                }
                .into_response();
                resp.extensions_mut().insert(identity);
                return resp;
            }
        }
    };
    req.extensions_mut().insert(identity.clone());
    let mut resp = next.run(req).await;
    drop(slot);
    resp.extensions_mut().insert(identity);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_named_and_hashed_keys() {
        let hashed = blake3::hash(b"s3cret").to_hex();
        let keys = parse_keys(&format!(
            "# comment\n\nplainkey\nalice:alicekey\nbob:blake3:{hashed}\n"
        ))
        .unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys[0].id.starts_with("key-") && !keys[0].id.contains("plainkey"));
        assert_eq!(keys[1].id, "alice");
        assert_eq!(keys[1].hash, blake3::hash(b"alicekey"));
        assert_eq!(keys[2].hash, blake3::hash(b"s3cret"));
        assert!(parse_keys("# nothing\n").is_err());
        assert!(parse_keys("bob:blake3:zz\n").is_err());
    }

    #[test]
    fn refuses_empty_keys_and_repeats() {
        let err = |text: &str| parse_keys(text).err().map(|e| e.to_string());
        for text in ["alice:\n", "alice:   \n", "alice:\t\n", "ok:k\nalice:\n"] {
            let e = err(text).unwrap_or_else(|| panic!("{text:?} loaded"));
            assert!(e.contains("empty"), "{e}");
        }
        assert!(err(":key\n").unwrap().contains("id"));
        let e = err("alice:k1\nalice:k2\n").unwrap();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
        let e = err("alice:same\nbob:same\n").unwrap();
        assert!(e.contains("same key") && !e.contains("same\n"), "{e}");
        let hashed = blake3::hash(b"k").to_hex();
        assert!(err(&format!("a:k\nb:blake3:{hashed}\n")).is_some());
        // A key with spaces around it is the key without them (as presented keys are).
        let keys = parse_keys("alice:  k1  \n").unwrap();
        assert_eq!(keys[0].hash, blake3::hash(b"k1"));
    }

    #[test]
    fn reads_bearer_and_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(presented_key(&h).as_deref(), Some("k1"));
        h.insert("authorization", "bearer k2".parse().unwrap());
        assert_eq!(presented_key(&h).as_deref(), Some("k2"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        // Empty keys are no keys.
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", "  ".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", "Bearer  ".parse().unwrap());
        assert_eq!(presented_key(&h), None);
    }
}
