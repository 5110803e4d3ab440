//! Request latency measured to the last byte of the response.
//!
//! A handler returns as soon as the response head is ready; a streamed body (NDJSON segment
//! everything) is produced long after. The route histogram and the in-flight gauge therefore
//! follow the body: the duration is observed, and the request leaves the in-flight count,
//! when the body has sent its last frame, failed, or was dropped (the client went away).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus::{Histogram, IntGauge};

/// Counts a request as in flight until dropped.
pub struct InFlight(IntGauge);

impl InFlight {
    /// Increments the gauge; the matching decrement happens on drop.
    pub fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What is recorded once the body ends.
struct Finish {
    histogram: Histogram,
    start: Instant,
    _in_flight: InFlight,
}

impl Finish {
    fn record(self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// A response body that records its request's latency when it ends.
struct TimedBody {
    inner: Body,
    finish: Option<Finish>,
}

impl TimedBody {
    fn done(&mut self) {
        if let Some(f) = self.finish.take() {
            f.record();
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.done();
    }
}

/// Wraps the response body so that `histogram` observes the time from `start` to the
/// body's end, and `in_flight` is held until then.
pub fn observe_at_last_byte(
    resp: Response,
    histogram: Histogram,
    start: Instant,
    in_flight: InFlight,
) -> Response {
    let (parts, body) = resp.into_parts();
    let body = TimedBody {
        inner: body,
        finish: Some(Finish {
            histogram,
            start,
            _in_flight: in_flight,
        }),
    };
    Response::from_parts(parts, Body::new(body))
}
