//! Dedicated model threads fed by bounded, batching queues.
//!
//! ONNX Runtime calls block for milliseconds to seconds, so they never run on tokio's
//! workers. Each model has encoder and decoder threads, each owning its own session. A
//! worker takes the oldest job, then gathers further compatible jobs (same image embedding
//! for the decoder) that are already queued, or that arrive within the batch wait, up to
//! the batch size, and runs them in one model call. Jobs carry a oneshot reply; a job whose
//! requester has gone (client disconnected, deadline passed) is dropped before it costs
//! compute. Admission is bounded in work units (prompts or images): a full queue is an
//! immediate 429, not an unbounded wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;

use crate::error::ApiError;

/// A unit of work with a reply channel.
pub struct Job<I, O> {
    /// What to compute.
    pub input: I,
    /// Where the answer goes.
    pub reply: oneshot::Sender<anyhow::Result<O>>,
    /// Work units (prompts, images) this job counts for.
    pub units: usize,
    enqueued: Instant,
}

impl<I, O> Job<I, O> {
    /// Whether the requester stopped waiting.
    pub fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// How a queue forms batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most work units in one batch (1 = no batching).
    pub max_units: usize,
    /// How long a worker waits for more compatible jobs once it holds one. Zero means it
    /// takes only what is already queued, so an idle server adds no latency.
    pub max_wait: Duration,
    /// Most work units admitted (queued, not yet running) before 429.
    pub max_queued_units: usize,
}

/// Metric handles a queue updates.
#[derive(Clone)]
pub struct QueueMetrics {
    /// Work units waiting.
    pub depth: IntGauge,
    /// Seconds from enqueue to the start of the batch.
    pub queue_wait: Histogram,
    /// Jobs refused because the queue was full.
    pub rejected: IntCounter,
    /// Jobs dropped because their requester had gone.
    pub abandoned: IntCounter,
}

/// What a pool's other workers are doing when a worker starts a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// Workers running a batch, this one included.
    pub busy: usize,
    /// Work units admitted and still waiting for a worker.
    pub queued_units: usize,
}

impl Occupancy {
    /// The batch runs alone: no other worker busy and nothing waiting, so the cores the
    /// other workers would use are idle (a work-conserving worker may take them).
    pub fn alone(&self) -> bool {
        self.busy == 1 && self.queued_units == 0
    }
}

/// The submitting side of a worker pool.
pub struct WorkerQueue<I, O> {
    tx: Sender<Job<I, O>>,
    queued: Arc<AtomicUsize>,
    policy: BatchPolicy,
    metrics: QueueMetrics,
    name: &'static str,
}

impl<I, O> Clone for WorkerQueue<I, O> {
    fn clone(&self) -> Self {
        WorkerQueue {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
            policy: self.policy,
            metrics: self.metrics.clone(),
            name: self.name,
        }
    }
}

/// Worker-side view of the queue while it assembles a batch.
struct Assembler<I, O> {
    rx: Receiver<Job<I, O>>,
    /// Jobs taken from the channel that did not fit the current batch.
    held: VecDeque<Job<I, O>>,
    queued: Arc<AtomicUsize>,
    metrics: QueueMetrics,
}

impl<I, O> Assembler<I, O> {
    fn release(&self, job: &Job<I, O>) {
        self.queued.fetch_sub(job.units, Ordering::AcqRel);
        self.metrics
            .depth
            .set(self.queued.load(Ordering::Acquire) as i64);
    }

    fn live(&self, job: Job<I, O>) -> Option<Job<I, O>> {
        if job.abandoned() {
            self.release(&job);
            self.metrics.abandoned.inc();
            None
        } else {
            Some(job)
        }
    }

    /// Blocks for the next batch; `None` when the queue is closed and drained.
    fn next_batch<C>(&mut self, policy: BatchPolicy, compatible: &C) -> Option<Vec<Job<I, O>>>
    where
        C: Fn(&I, &I) -> bool,
    {
        let first = loop {
            let job = match self.held.pop_front() {
                Some(j) => j,
                None => self.rx.recv().ok()?,
            };
            if let Some(j) = self.live(job) {
                break j;
            }
        };
        let mut units = first.units;
        let mut batch = vec![first];
        let mut i = 0;
        while i < self.held.len() && units < policy.max_units {
            let fits = compatible(&batch[0].input, &self.held[i].input)
                && units + self.held[i].units <= policy.max_units;
            if fits {
                let job = self.held.remove(i).expect("index checked");
                if let Some(j) = self.live(job) {
                    units += j.units;
                    batch.push(j);
                }
            } else {
                i += 1;
            }
        }
        let deadline = Instant::now() + policy.max_wait;
        while units < policy.max_units {
            let job = if policy.max_wait.is_zero() {
                match self.rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            } else {
                match self.rx.recv_deadline(deadline) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let Some(job) = self.live(job) else { continue };
            if compatible(&batch[0].input, &job.input) && units + job.units <= policy.max_units {
                units += job.units;
                batch.push(job);
            } else {
                self.held.push_back(job);
                if self.held.len() >= 64 {
                    break;
                }
            }
        }
        let now = Instant::now();
        for j in &batch {
            self.release(j);
            self.metrics
                .queue_wait
                .observe(now.duration_since(j.enqueued).as_secs_f64());
        }
        Some(batch)
    }
}

impl<I: Send + 'static, O: Send + 'static> WorkerQueue<I, O> {
    /// Starts one OS thread per state value. Each thread assembles batches of jobs whose
    /// inputs are `compatible` with the first one, and runs `work` on the inputs, telling it
    /// the pool's [`Occupancy`] at the start of the batch; `work` returns one result per
    /// input, in order.
    pub fn spawn<S, C, F>(
        name: &'static str,
        states: Vec<S>,
        policy: BatchPolicy,
        metrics: QueueMetrics,
        compatible: C,
        work: F,
    ) -> std::io::Result<Self>
    where
        S: Send + 'static,
        C: Fn(&I, &I) -> bool + Send + Sync + 'static,
        F: Fn(&mut S, Vec<I>, Occupancy) -> Vec<anyhow::Result<O>> + Send + Sync + 'static,
    {
        // The channel only needs to hold what admission lets in; units bound the rest.
        let (tx, rx) = bounded::<Job<I, O>>(policy.max_queued_units.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let work = Arc::new(work);
        let compatible = Arc::new(compatible);
        for (i, mut state) in states.into_iter().enumerate() {
            let mut asm = Assembler {
                rx: rx.clone(),
                held: VecDeque::new(),
                queued: queued.clone(),
                metrics: metrics.clone(),
            };
            let work = work.clone();
            let compatible = compatible.clone();
            let busy = busy.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Some(batch) = asm.next_batch(policy, &*compatible) {
                        let (inputs, replies): (Vec<I>, Vec<_>) =
                            batch.into_iter().map(|j| (j.input, j.reply)).unzip();
                        let n = inputs.len();
                        let occupancy = Occupancy {
                            busy: busy.fetch_add(1, Ordering::AcqRel) + 1,
                            queued_units: asm.queued.load(Ordering::Acquire),
                        };
                        // A panic in model code fails this batch, not the thread.
                        let outs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            work(&mut state, inputs, occupancy)
                        }));
                        busy.fetch_sub(1, Ordering::AcqRel);
                        match outs {
                            Ok(outs) if outs.len() == n => {
                                for (reply, out) in replies.into_iter().zip(outs) {
                                    let _ = reply.send(out);
                                }
                            }
                            Ok(_) | Err(_) => {
                                for reply in replies {
                                    let _ =
                                        reply.send(Err(anyhow::anyhow!("{name} worker failed")));
                                }
                            }
                        }
                    }
                })?;
        }
        Ok(WorkerQueue {
            tx,
            queued,
            policy,
            metrics,
            name,
        })
    }

    /// Queues a job of `units` work units and waits for its answer; fails fast with 429
    /// when admitting it would exceed the queue bound.
    pub async fn call(&self, input: I, units: usize) -> Result<O, ApiError> {
        let mut out = self.call_many(vec![(input, units)]).await?;
        out.pop()
            .ok_or_else(|| ApiError::Internal(format!("{} returned no answer", self.name)))
    }

    /// Queues several jobs, admitted together (all or none), so that idle workers can run
    /// them in parallel; waits for every answer and returns them in order.
    pub async fn call_many(&self, jobs: Vec<(I, usize)>) -> Result<Vec<O>, ApiError> {
        let units: usize = jobs.iter().map(|j| j.1).sum();
        let before = self.queued.fetch_add(units, Ordering::AcqRel);
        // One oversized request is admitted into an empty queue, or it could never run.
        if before > 0 && before + units > self.policy.max_queued_units {
            self.queued.fetch_sub(units, Ordering::AcqRel);
            self.metrics.rejected.inc();
            return Err(ApiError::Overloaded {
                reason: self.name,
                retry_after_secs: 1,
            });
        }
        self.metrics.depth.set((before + units) as i64);
        let mut replies = Vec::with_capacity(jobs.len());
        let mut unsent = units;
        for (input, job_units) in jobs {
            let (reply, rx) = oneshot::channel();
            let job = Job {
                input,
                reply,
                units: job_units,
                enqueued: Instant::now(),
            };
            let refused = match self.tx.try_send(job) {
                Ok(()) => None,
                Err(TrySendError::Full(_)) => {
                    self.metrics.rejected.inc();
                    Some(ApiError::Overloaded {
                        reason: self.name,
                        retry_after_secs: 1,
                    })
                }
                Err(TrySendError::Disconnected(_)) => {
                    Some(ApiError::Internal(format!("{} workers stopped", self.name)))
                }
            };
            if let Some(err) = refused {
                // Jobs already sent see their requester gone and release their own units.
                self.queued.fetch_sub(unsent, Ordering::AcqRel);
                return Err(err);
            }
            unsent -= job_units;
            replies.push(rx);
        }
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            match rx.await {
                Ok(Ok(o)) => out.push(o),
                Ok(Err(e)) => return Err(ApiError::Internal(format!("{}: {e:#}", self.name))),
                Err(_) => {
                    return Err(ApiError::Internal(format!(
                        "{} worker dropped the job",
                        self.name
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Work units admitted and not yet running.
    pub fn queued_units(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Splits `items` into owned runs of at most `size` (at least one item each), in order.
pub fn chunks_owned<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let size = size.max(1);
    let mut out = Vec::with_capacity(items.len().div_ceil(size));
    let mut rest = items.into_iter().peekable();
    while rest.peek().is_some() {
        out.push(rest.by_ref().take(size).collect());
    }
    out
}

#[cfg(test)]
mod chunk_tests {
    use super::chunks_owned;

    #[test]
    fn chunks_keep_order_and_bound_sizes() {
        assert_eq!(
            chunks_owned((0..7).collect(), 3),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]
        );
        assert_eq!(chunks_owned(vec![1, 2], 0), vec![vec![1], vec![2]]);
        assert!(chunks_owned(Vec::<u8>::new(), 4).is_empty());
    }
}
