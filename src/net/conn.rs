//! One plain HTTP connection: where it is between requests (which decides
//! its read deadline), the reader that enforces that deadline, and the
//! service that hands each request to the router with the peer's address
//! and a deadline on its body.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// What a connection is doing, shared by its reader ([`Watched`]) and its
/// service ([`ConnService`]). Both run in the connection's task until an
/// upgrade, so the lock is never contended.
pub(super) struct Phase {
    header_timeout: Duration,
    idle_timeout: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    /// The task last parked on a read. Going idle must wake it: hyper only
    /// polls the socket again when woken, and the idle deadline is armed by
    /// that poll (hyper does the same for its own timer, see `notify_read`
    /// in hyper's `State::idle`).
    reader: Option<Waker>,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Waiting for (the rest of) a request head since `since`: accepted
    /// then, or the first byte after an idle wait arrived then.
    Head { since: Instant },
    /// Keep-alive: hyper has the whole of the last response (its tail may
    /// still be flushing), nothing of the next request has arrived.
    Idle { since: Instant },
    /// A request's head is in and its response is not yet written. Reads
    /// now are its body (bounded by `DeadlineBody`) or hyper watching for
    /// the client to hang up: no deadline.
    Busy,
    /// Answered with 101: the socket belongs to the upgrade's owner now.
    Upgraded,
}

impl Phase {
    pub(super) fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Phase {
            header_timeout,
            idle_timeout,
            inner: Mutex::new(Inner {
                state: State::Head {
                    since: Instant::now(),
                },
                reader: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deadline(&self) -> Option<Instant> {
        match self.lock().state {
            State::Head { since } => Some(since + self.header_timeout),
            State::Idle { since } => Some(since + self.idle_timeout),
            State::Busy | State::Upgraded => None,
        }
    }

    fn reader_parked(&self, waker: &Waker) {
        let mut inner = self.lock();
        if matches!(inner.state, State::Upgraded) {
            return;
        }
        if !inner.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            inner.reader = Some(waker.clone());
        }
    }

    fn bytes_arrived(&self) {
        let mut inner = self.lock();
        if let State::Idle { .. } = inner.state {
            inner.state = State::Head {
                since: Instant::now(),
            };
        }
    }

    fn request_started(&self) {
        let mut inner = self.lock();
        if !matches!(inner.state, State::Upgraded) {
            inner.state = State::Busy;
        }
    }

    fn response_written(&self) {
        let reader = {
            let mut inner = self.lock();
            if !matches!(inner.state, State::Busy) {
                return;
            }
            inner.state = State::Idle {
                since: Instant::now(),
            };
            inner.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    fn upgraded(&self) {
        let mut inner = self.lock();
        inner.state = State::Upgraded;
        inner.reader = None;
    }
}

/// The connection's socket. While hyper waits for a request head (the only
/// time the phase has a deadline) a read past the deadline fails with
/// `TimedOut`, and hyper closes the connection.
pub(super) struct Watched<T> {
    io: T,
    phase: Arc<Phase>,
    /// Created on the first wait; reset only when the deadline changes.
    timer: Option<Pin<Box<Sleep>>>,
    armed_for: Option<Instant>,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, phase: Arc<Phase>) -> Self {
        Watched {
            io,
            phase,
            timer: None,
            armed_for: None,
        }
    }

    /// The socket, once hyper has handed the connection over (101).
    pub(super) fn into_inner(self) -> T {
        self.io
    }

    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.phase.deadline() else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if self.armed_for != Some(deadline) {
            timer.as_mut().reset(deadline);
            self.armed_for = Some(deadline);
        }
        timer.as_mut().poll(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.phase.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.phase.reader_parked(cx.waker());
                ready!(this.poll_deadline(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete request head within the header or idle timeout",
                )))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The per-connection service hyper calls for each request head.
pub(super) struct ConnService {
    app: Router,
    peer: SocketAddr,
    phase: Arc<Phase>,
    body_timeout: Duration,
}

impl ConnService {
    pub(super) fn new(
        app: Router,
        peer: SocketAddr,
        phase: Arc<Phase>,
        body_timeout: Duration,
    ) -> Self {
        ConnService {
            app,
            peer,
            phase,
            body_timeout,
        }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // hyper calls this as soon as the head is parsed.
        self.phase.request_started();
        let timed_out = Arc::new(AtomicBool::new(false));
        let mut req = req.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                timeout: self.body_timeout,
                timer: None,
                timed_out: Arc::clone(&timed_out),
            })
        });
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let app = self.app.clone();
        let phase = Arc::clone(&self.phase);
        Box::pin(async move {
            let Ok(res) = app.oneshot(req).await;
            // Whatever the handler made of a truncated body, the truth is
            // that the body did not arrive.
            let res = if timed_out.load(Ordering::Relaxed) {
                body_timed_out()
            } else {
                res
            };
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                phase.upgraded();
            }
            Ok(res.map(|body| {
                Body::new(Tracked {
                    inner: body,
                    _written: Written(phase),
                })
            }))
        })
    }
}

/// `{"code":2012,...}`. `Connection: close`: the rest of the body is still
/// on its way and would be read as the next request.
fn body_timed_out() -> Response<Body> {
    let mut res = Response::new(Body::from(r#"{"code":2012,"msg":"请求超时","data":null}"#));
    *res.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// A request body that must arrive whole within `timeout` of its first
/// read. Past that it yields [`BodyTimedOut`] and marks the request, and
/// [`ConnService`] answers 408 whatever the handler returned.
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    /// Started by the first read, never reset: a trickle does not extend it.
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

/// The error a handler sees when the body deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body timeout")]
struct BodyTimedOut;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let timeout = this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        // What has arrived is taken; only a wait can run out of time.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(timer.as_mut().poll(cx));
        this.timed_out.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the phase when hyper is done with it: hyper
/// drops the body once its last frame is written (or at once when it has
/// none), and that is when the keep-alive wait begins.
struct Tracked {
    inner: Body,
    _written: Written,
}

struct Written(Arc<Phase>);

impl Drop for Written {
    fn drop(&mut self) {
        self.0.response_written();
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
