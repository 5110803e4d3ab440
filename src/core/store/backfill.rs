//! Writing values the store missed while it was down.
//!
//! An image encoded while the store could not answer (down, timed out, or skipped during
//! the back-off) lives only in this replica's cache: other replicas answer 404 for it, and
//! a re-upload here is a local hit that never reaches the store. Such images are
//! remembered (at most [`MAX_PENDING`]); each one is written when it is next uploaded
//! here, and a background round writes the others from the local cache once the store
//! answers again. An image that has left the local cache, or was deleted, is forgotten.
//! `samserve_embedding_store_pending` shows how many are owed.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{ModelTag, SharedStore};
use crate::core::cache::{EmbeddingCache, ImageKey};
use crate::runtime::model::Embedding;

/// Most images remembered; past it, further ones are not (logged once).
pub const MAX_PENDING: usize = 100_000;
/// Pause between background rounds.
pub const EVERY: Duration = Duration::from_millis(1000);
/// Most values written by one round.
const ROUND: usize = 256;

/// The (model, image id) pairs whose value the store has not taken.
#[derive(Default)]
pub struct Pending {
    set: Mutex<HashSet<(String, String)>>,
    full_logged: AtomicBool,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers an image; false when the set is full.
    pub(super) fn add(&self, model: &str, image_id: &str) -> bool {
        let mut set = self.lock();
        if set.len() >= MAX_PENDING {
            return false;
        }
        set.insert((model.to_string(), image_id.to_string()));
        true
    }

    /// Forgets an image (written, deleted, or gone from the cache).
    pub(super) fn remove(&self, model: &str, image_id: &str) {
        self.lock()
            .remove(&(model.to_string(), image_id.to_string()));
    }

    fn contains(&self, model: &str, image_id: &str) -> bool {
        self.lock()
            .contains(&(model.to_string(), image_id.to_string()))
    }

    /// How many are owed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is owed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn some(&self, n: usize) -> Vec<(String, String)> {
        self.lock().iter().take(n).cloned().collect()
    }
}

impl SharedStore {
    /// Remembers an image whose value the store did not take.
    pub(super) fn owe(&self, tag: &ModelTag, image_id: &str) {
        if !self.pending.add(&tag.name, image_id)
            && !self.pending.full_logged.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                max = MAX_PENDING,
                "too many embeddings owed to the store; further ones are not back-filled"
            );
        }
        self.metrics.pending.set(self.pending.len() as i64);
    }

    pub(super) fn settle(&self, model: &str, image_id: &str) {
        self.pending.remove(model, image_id);
        self.metrics.pending.set(self.pending.len() as i64);
    }

    /// Images owed to the store.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes an image's value if the store still owes it (an upload that hit the local
    /// cache). Waits at most the store timeout.
    pub async fn backfill_one(&self, tag: &ModelTag, image_id: &str, e: &Embedding) {
        if self.pending.is_empty() || !self.pending.contains(&tag.name, image_id) {
            return;
        }
        if !self.backing_off() && self.write(tag, image_id, e).await {
            self.settle(&tag.name, image_id);
        }
    }

    /// One background round: writes owed values from `cache` while the store takes them.
    pub async fn backfill_round<'t>(
        &self,
        cache: &EmbeddingCache,
        tag_of: impl Fn(&str) -> Option<&'t ModelTag>,
    ) {
        if self.pending.is_empty() || self.backing_off() {
            return;
        }
        for (model, image_id) in self.pending.some(ROUND) {
            let Some(tag) = tag_of(&model) else {
                self.settle(&model, &image_id);
                continue;
            };
            let key = ImageKey {
                model: Arc::from(model.as_str()),
                image_id: Arc::from(image_id.as_str()),
            };
            match cache.get(&key).await {
                None => self.settle(&model, &image_id),
                Some(e) => {
                    if !self.write(tag, &image_id, &e).await {
                        break; // down again: the next round retries
                    }
                    self.settle(&model, &image_id);
                }
            }
        }
    }
}

/// Runs `round` every [`EVERY`] while `owner` lives (needs a tokio runtime).
pub fn spawn_rounds<T, F, Fut>(owner: Weak<T>, round: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let Some(owner) = owner.upgrade() else {
                break;
            };
            round(owner).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_a_bounded_set() {
        let p = Pending::default();
        assert!(p.add("m", "a"));
        assert!(p.add("m", "a"));
        assert!(p.add("n", "a"));
        assert_eq!(p.len(), 2);
        assert!(p.contains("m", "a") && !p.contains("m", "b"));
        p.remove("m", "a");
        assert_eq!(p.some(10), vec![("n".to_string(), "a".to_string())]);
        for i in 0..MAX_PENDING {
            p.add("m", &i.to_string());
        }
        assert_eq!(p.len(), MAX_PENDING);
        assert!(!p.add("m", "one more"));
    }
}
