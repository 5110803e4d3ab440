//! Per-request outcomes, their aggregation and percentiles (nearest-rank, exact: every
//! latency is kept, which is cheap at the request rates a closed loop reaches).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A 2xx answer, body read in full.
    Ok(u16),
    /// 429 Too Many Requests.
    Rejected,
    /// Any other status code.
    Http(u16),
    /// No answer: connection error, timeout, broken body.
    Transport,
}

impl Status {
    /// Key under which the status is counted.
    pub fn key(self) -> String {
        match self {
            Status::Ok(c) | Status::Http(c) => c.to_string(),
            Status::Rejected => "429".into(),
            Status::Transport => "transport_error".into(),
        }
    }
}

/// Running totals of one class of requests in one phase.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Latencies (ms) of successful requests.
    pub ok_ms: Vec<f64>,
    /// Latencies (ms) of 429 answers.
    pub rejected_ms: Vec<f64>,
    /// Requests answered with another error, or none.
    pub errors: u64,
    /// Prompts in successful requests.
    pub prompts: u64,
    /// Images uploaded by successful requests that were not already cached.
    pub images: u64,
    /// Uploads the server reported as already cached (should stay 0 in `cold`).
    pub cache_hits: u64,
    /// Count per status key.
    pub status: BTreeMap<String, u64>,
    /// When the first success of the phase completed.
    pub first_ok: Option<Instant>,
}

impl Tally {
    /// Records one finished request.
    pub fn record(
        &mut self,
        status: Status,
        latency: Duration,
        prompts: u64,
        images: u64,
        done: Instant,
    ) {
        let ms = latency.as_secs_f64() * 1e3;
        *self.status.entry(status.key()).or_default() += 1;
        match status {
            Status::Ok(_) => {
                self.ok_ms.push(ms);
                self.prompts += prompts;
                self.images += images;
                if self.first_ok.is_none_or(|t| done < t) {
                    self.first_ok = Some(done);
                }
            }
            Status::Rejected => self.rejected_ms.push(ms),
            Status::Http(_) | Status::Transport => self.errors += 1,
        }
    }

    /// Adds another tally into this one.
    pub fn merge(&mut self, o: Tally) {
        self.ok_ms.extend(o.ok_ms);
        self.rejected_ms.extend(o.rejected_ms);
        self.errors += o.errors;
        self.prompts += o.prompts;
        self.images += o.images;
        self.cache_hits += o.cache_hits;
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        self.first_ok = match (self.first_ok, o.first_ok) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Rates and percentiles over a window of `secs` that started at `start`.
    pub fn summarize(mut self, secs: f64, start: Instant) -> Summary {
        self.ok_ms.sort_by(f64::total_cmp);
        self.rejected_ms.sort_by(f64::total_cmp);
        let ok = self.ok_ms.len() as u64;
        let rejected = self.rejected_ms.len() as u64;
        let secs = secs.max(1e-9);
        let mean = if ok > 0 {
            self.ok_ms.iter().sum::<f64>() / ok as f64
        } else {
            f64::NAN
        };
        Summary {
            requests: ok + rejected + self.errors,
            ok,
            rejected_429: rejected,
            errors: self.errors,
            status_counts: self.status,
            window_s: secs,
            requests_per_s: ok as f64 / secs,
            prompts_per_s: self.prompts as f64 / secs,
            images_per_s: self.images as f64 / secs,
            prompts: self.prompts,
            images: self.images,
            cache_hits: self.cache_hits,
            p50_ms: percentile(&self.ok_ms, 50.0),
            p95_ms: percentile(&self.ok_ms, 95.0),
            p99_ms: percentile(&self.ok_ms, 99.0),
            mean_ms: mean,
            max_ms: self.ok_ms.last().copied().unwrap_or(f64::NAN),
            rejected_p50_ms: percentile(&self.rejected_ms, 50.0),
            rejected_p99_ms: percentile(&self.rejected_ms, 99.0),
            first_ok_after_ms: self
                .first_ok
                .map(|t| t.saturating_duration_since(start).as_secs_f64() * 1e3),
        }
    }
}

/// Nearest-rank percentile of sorted values; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Aggregated results of one class of requests over one measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Requests that finished in the window (all outcomes).
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 429 answers.
    pub rejected_429: u64,
    /// Other statuses and transport errors.
    pub errors: u64,
    /// Count per status code (`transport_error` for no answer).
    pub status_counts: BTreeMap<String, u64>,
    /// Length of the measured window in seconds.
    pub window_s: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Prompts of successful requests per second.
    pub prompts_per_s: f64,
    /// Newly encoded images per second (cold uploads).
    pub images_per_s: f64,
    /// Prompts of successful requests.
    pub prompts: u64,
    /// Images of successful uploads.
    pub images: u64,
    /// Uploads answered `cached: true` (a cold upload that was not cold).
    pub cache_hits: u64,
    /// Latency percentiles of successful requests (ms).
    #[serde(with = "nan_as_null")]
    pub p50_ms: f64,
    #[serde(with = "nan_as_null")]
    pub p95_ms: f64,
    #[serde(with = "nan_as_null")]
    pub p99_ms: f64,
    #[serde(with = "nan_as_null")]
    pub mean_ms: f64,
    #[serde(with = "nan_as_null")]
    pub max_ms: f64,
    /// Latency of 429 answers (how fast the server says no).
    #[serde(with = "nan_as_null")]
    pub rejected_p50_ms: f64,
    #[serde(with = "nan_as_null")]
    pub rejected_p99_ms: f64,
    /// Time from the window's start to the first success.
    pub first_ok_after_ms: Option<f64>,
}

/// JSON has no NaN: write null, read null back as NaN.
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 1.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn tally_counts() {
        let now = Instant::now();
        let mut t = Tally::default();
        t.record(Status::Ok(200), Duration::from_millis(10), 3, 0, now);
        t.record(Status::Rejected, Duration::from_millis(1), 3, 0, now);
        t.record(Status::Http(500), Duration::from_millis(1), 3, 0, now);
        let s = t.summarize(2.0, now);
        assert_eq!((s.ok, s.rejected_429, s.errors, s.prompts), (1, 1, 1, 3));
        assert_eq!(s.prompts_per_s, 1.5);
        assert_eq!(s.status_counts["429"], 1);
        let js = serde_json::to_string(&s).unwrap();
        assert!(js.contains("\"rejected_p99_ms\":1.0"), "{js}");
    }
}
