//! Dedicated model threads fed by bounded queues.
//!
//! ONNX Runtime calls block for milliseconds to seconds, so they never run on tokio's
//! workers. Each model has an encoder thread and one or more decoder threads, each owning
//! its own session. Jobs carry a oneshot reply; a job whose requester has gone (client
//! disconnected, deadline passed) is dropped before it costs compute. A full queue is an
//! immediate 429, not an unbounded wait.

use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use prometheus::IntGauge;
use tokio::sync::oneshot;

use crate::error::ApiError;

/// A unit of work with a reply channel.
pub struct Job<I, O> {
    /// What to compute.
    pub input: I,
    /// Where the answer goes.
    pub reply: oneshot::Sender<anyhow::Result<O>>,
}

/// The submitting side of a worker pool.
pub struct WorkerQueue<I, O> {
    tx: Sender<Job<I, O>>,
    depth: IntGauge,
    name: &'static str,
}

impl<I, O> Clone for WorkerQueue<I, O> {
    fn clone(&self) -> Self {
        WorkerQueue {
            tx: self.tx.clone(),
            depth: self.depth.clone(),
            name: self.name,
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> WorkerQueue<I, O> {
    /// Starts one OS thread per state value; each runs `work` on the jobs it takes.
    pub fn spawn<S, F>(
        name: &'static str,
        states: Vec<S>,
        capacity: usize,
        depth: IntGauge,
        work: F,
    ) -> std::io::Result<Self>
    where
        S: Send + 'static,
        F: Fn(&mut S, I) -> anyhow::Result<O> + Send + Sync + 'static,
    {
        let (tx, rx) = bounded::<Job<I, O>>(capacity.max(1));
        let work = Arc::new(work);
        for (i, mut state) in states.into_iter().enumerate() {
            let rx: Receiver<Job<I, O>> = rx.clone();
            let work = work.clone();
            let depth = depth.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        depth.set(rx.len() as i64);
                        if job.reply.is_closed() {
                            continue;
                        }
                        // A panic in model code fails this job, not the thread.
                        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            work(&mut state, job.input)
                        }))
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")));
                        let _ = job.reply.send(out);
                    }
                })?;
        }
        Ok(WorkerQueue { tx, depth, name })
    }

    /// Queues a job and waits for its answer; fails fast with 429 when the queue is full.
    pub async fn call(&self, input: I) -> Result<O, ApiError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { input, reply }) {
            Ok(()) => self.depth.set(self.tx.len() as i64),
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::Overloaded {
                    reason: self.name,
                    retry_after_secs: 1,
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::Internal(format!("{} workers stopped", self.name)))
            }
        }
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(ApiError::Internal(format!("{}: {e:#}", self.name))),
            Err(_) => Err(ApiError::Internal(format!(
                "{} worker dropped the job",
                self.name
            ))),
        }
    }

    /// Jobs waiting in the queue.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Whether no job is waiting.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}
