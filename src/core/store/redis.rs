//! The Redis backend of the shared store: one auto-reconnecting multiplexed connection
//! (`redis::aio::ConnectionManager`), created lazily so a server starts while Redis is down.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Fetched, StoreBackend};

/// Deletes the lock only when it still holds our token (another replica may own it now).
const UNLOCK_SCRIPT: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Reads a value only when it is a string of at most ARGV[1] bytes: a missing key is nil,
/// a key of another type -1, a longer value its length (never transferred).
const BOUNDED_GET_SCRIPT: &str = "local t = redis.call('type', KEYS[1])['ok'] \
if t == 'none' then return false end \
if t ~= 'string' then return -1 end \
local n = redis.call('strlen', KEYS[1]) \
if n > tonumber(ARGV[1]) then return n end \
return redis.call('get', KEYS[1])";

/// A Redis connection used as [`StoreBackend`].
pub struct RedisBackend {
    conn: ConnectionManager,
}

impl RedisBackend {
    /// Prepares a connection to `url` (`redis://HOST:PORT/DB`); nothing is sent yet.
    /// Each connect attempt and each command is bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("invalid embedding store URL: {}", e.kind_str()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Few quick retries: requests must not wait on a dead Redis; the store's own
            // back-off decides when to try again.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisBackend { conn })
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    // The error's display can echo the URL (and its password); keep only the category.
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

impl StoreBackend for RedisBackend {
    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> BoxFuture<'a, anyhow::Result<Fetched>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let v: redis::Value = redis::cmd("EVAL")
                .arg(BOUNDED_GET_SCRIPT)
                .arg(1)
                .arg(key)
                .arg(max_len)
                .query_async(&mut c)
                .await?;
            Ok(match v {
                redis::Value::Nil => Fetched::Missing,
                redis::Value::BulkString(b) => Fetched::Value(b),
                redis::Value::Int(-1) => Fetched::Unusable("a key of another type".into()),
                redis::Value::Int(n) => {
                    Fetched::Unusable(format!("{n} bytes, over the {max_len} of a value"))
                }
                other => anyhow::bail!("unexpected reply to the bounded read: {other:?}"),
            })
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value);
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
            }
            cmd.query_async::<()>(&mut c).await?;
            Ok(())
        })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async(&mut c)
                .await?;
            Ok(set.is_some())
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            redis::cmd("EVAL")
                .arg(UNLOCK_SCRIPT)
                .arg(1)
                .arg(key)
                .arg(token)
                .query_async::<i64>(&mut c)
                .await?;
            Ok(())
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let n: i64 = redis::cmd("EXISTS").arg(key).query_async(&mut c).await?;
            Ok(n > 0)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let n: i64 = redis::cmd("DEL").arg(key).query_async(&mut c).await?;
            Ok(n > 0)
        })
    }
}
