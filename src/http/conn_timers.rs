//! Per-connection timers of an HTTP/1.1 connection, kept by its socket wrapper:
//!
//! * **header timeout** (`--header-timeout-ms`): a new connection must send a whole request
//!   head within it, and so must a keep-alive connection once the first byte of its next
//!   request has arrived (slowloris);
//! * **idle timeout** (`--idle-timeout-ms`): a keep-alive connection may wait this long after
//!   a response for the first byte of its next request.
//!
//! While a request is in progress neither runs: its body and handling are under the request
//! deadline (`--request-timeout-ms`). hyper has one timer for both waits (its header-read
//! timer restarts after each response), so the phases are tracked here: the service marks a
//! request's start ([`ConnPhase::request_started`]) and the end of its response body
//! ([`ResponseDone`], dropped by hyper once the body is written); the socket wrapper
//! ([`TimedIo`]) sees the first byte of the next request. A read that passes its deadline
//! fails with `TimedOut`, and hyper closes the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a connection waits for when no request is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A request head, since `since` (a new connection, or the first byte of a next request).
    Head { since: Instant },
    /// The first byte of a next request, since the previous response ended at `since`.
    Idle { since: Instant },
}

/// Which timer closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// `--header-timeout-ms`.
    Header,
    /// `--idle-timeout-ms`.
    Idle,
}

impl Expired {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
        }
    }
}

/// The two limits; `None` = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Option<Duration>,
    pub idle: Option<Duration>,
}

#[derive(Debug)]
struct State {
    wait: Wait,
    /// Requests in progress (more than one only with pipelining); no timer runs while any is.
    in_progress: usize,
    expired: Option<Expired>,
    /// The waker of a read that went pending while no timer ran: hyper may not read again
    /// by itself once the response is written, so going idle wakes it to start the timer.
    untimed_read: Option<Waker>,
}

/// A connection's phase, shared by its socket wrapper and its service.
#[derive(Debug)]
pub struct ConnPhase {
    state: Mutex<State>,
    timeouts: Timeouts,
}

impl ConnPhase {
    /// A new connection: waiting for its first request head.
    pub fn new(timeouts: Timeouts) -> Arc<Self> {
        Arc::new(ConnPhase {
            state: Mutex::new(State {
                wait: Wait::Head {
                    since: Instant::now(),
                },
                in_progress: 0,
                expired: None,
                untimed_read: None,
            }),
            timeouts,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// A request head has been read: no timer until its response has been written. The
    /// returned guard ends the request when dropped (attach it to the response body).
    pub fn request_started(self: &Arc<Self>) -> ResponseDone {
        self.state().in_progress += 1;
        ResponseDone(self.clone())
    }

    /// Which timer closed the connection, if one did.
    pub fn expired(&self) -> Option<Expired> {
        self.state().expired
    }

    /// Bytes arrived: a waiting keep-alive connection now waits for the rest of a head.
    fn bytes_read(&self) {
        let mut st = self.state();
        if let Wait::Idle { .. } = st.wait {
            st.wait = Wait::Head {
                since: Instant::now(),
            };
        }
    }

    /// The current deadline and the timer it belongs to.
    #[cfg(test)]
    fn deadline(&self) -> Option<(Instant, Expired)> {
        Self::deadline_of(&self.state(), self.timeouts)
    }

    fn deadline_of(st: &State, t: Timeouts) -> Option<(Instant, Expired)> {
        if st.in_progress > 0 {
            return None;
        }
        match st.wait {
            Wait::Head { since } => t.header.map(|d| (since + d, Expired::Header)),
            Wait::Idle { since } => t.idle.map(|d| (since + d, Expired::Idle)),
        }
    }
}

/// Dropped when a response's body has been written (or abandoned): the connection goes idle
/// once no request is in progress.
#[derive(Debug)]
pub struct ResponseDone(Arc<ConnPhase>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.in_progress = st.in_progress.saturating_sub(1);
        if st.in_progress == 0 {
            st.wait = Wait::Idle {
                since: Instant::now(),
            };
            if let Some(w) = st.untimed_read.take() {
                w.wake();
            }
        }
    }
}

/// A socket whose reads fail with `TimedOut` once the connection's current timer passes.
pub struct TimedIo<S> {
    inner: S,
    phase: Arc<ConnPhase>,
    sleep: Pin<Box<Sleep>>,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, phase: Arc<ConnPhase>) -> Self {
        TimedIo {
            inner,
            phase,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

fn timed_out(which: Expired) -> io::Error {
    let what = match which {
        Expired::Header => "request head not received within --header-timeout-ms",
        Expired::Idle => "keep-alive connection idle past --idle-timeout-ms",
    };
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > filled {
                    this.phase.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let (deadline, which) = {
                    let mut st = this.phase.state();
                    match ConnPhase::deadline_of(&st, this.phase.timeouts) {
                        Some(d) => d,
                        None => {
                            st.untimed_read = Some(cx.waker().clone());
                            return Poll::Pending;
                        }
                    }
                };
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.phase.state().expired = Some(which);
                        Poll::Ready(Err(timed_out(which)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that ends its request ([`ResponseDone`]) when hyper drops it.
pub struct GuardedBody {
    inner: axum::body::Body,
    _done: ResponseDone,
}

impl GuardedBody {
    pub fn new(inner: axum::body::Body, done: ResponseDone) -> Self {
        GuardedBody { inner, _done: done }
    }
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(c: &ConnPhase) -> Option<Expired> {
        c.deadline().map(|(_, k)| k)
    }

    #[tokio::test]
    async fn the_phase_picks_the_timer() {
        let t = Timeouts {
            header: Some(Duration::from_secs(10)),
            idle: Some(Duration::from_secs(60)),
        };
        let c = ConnPhase::new(t);
        assert_eq!(
            kind(&c),
            Some(Expired::Header),
            "a new connection waits for a head"
        );
        let done = c.request_started();
        assert_eq!(kind(&c), None);
        let second = c.request_started(); // pipelined
        drop(done);
        assert_eq!(kind(&c), None, "one request still in progress");
        drop(second);
        let (idle_deadline, k) = c.deadline().unwrap();
        assert_eq!(k, Expired::Idle);
        assert!(idle_deadline >= Instant::now() + Duration::from_secs(59));
        c.bytes_read();
        let (head_deadline, k) = c.deadline().unwrap();
        assert_eq!(k, Expired::Header);
        assert!(head_deadline <= Instant::now() + Duration::from_secs(10));
        // More bytes of the same head do not restart the header timer.
        std::thread::sleep(Duration::from_millis(5));
        c.bytes_read();
        assert_eq!(c.deadline(), Some((head_deadline, Expired::Header)));
        // No limit configured: no timer.
        let none = ConnPhase::new(Timeouts {
            header: None,
            idle: None,
        });
        assert_eq!(none.deadline(), None);
        drop(none.request_started());
        assert_eq!(none.deadline(), None);
    }
}
