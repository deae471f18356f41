//! The operator listeners (admin API, `/metrics`): hyper HTTP/1.1 with a
//! request-head timeout, an idle timeout, a connection cap, and a backoff
//! after accept errors whose log is rate-limited. A flood on one of these
//! ports holds at most its cap of descriptors, never the proxy's.
//!
//! The request body timeout is the handler's: it reads the body itself
//! (see [`read_body`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

use crate::config::Listening;

/// What a listener serves: one request in, one whole response out.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request<Incoming>) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Longest pause after an accept error (the first is [`FIRST_BACKOFF`],
/// doubling while errors continue).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// At most one log line per this interval per listener and kind of event.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The answer to a connection over the cap, written without reading the request.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 146\r\n\r\n{\"type\":\"tag:tenantgate,2026:busy\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"too many connections to this listener; retry in a moment\"}";

/// Serves `handler` on `listener` until `shutdown`.
pub async fn serve<H: Handler>(
    name: &'static str,
    listener: tokio::net::TcpListener,
    limits: Listening,
    handler: Arc<H>,
    mut shutdown: ShutdownWatch,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = FIRST_BACKOFF;
    let mut accept_errors = LogLimit::default();
    let mut over_cap = LogLimit::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                backoff = FIRST_BACKOFF;
                s
            }
            Err(e) => {
                // EMFILE and friends: retrying at once would spin; wait,
                // longer each time, and log once in a while.
                if let Some(suppressed) = accept_errors.due() {
                    tracing::warn!(listener = name, error = %e, suppressed, pause_ms = backoff.as_millis() as u64, "accept failed; pausing this listener");
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(suppressed) = over_cap.due() {
                tracing::warn!(
                    listener = name,
                    max_connections = limits.max_connections,
                    suppressed,
                    "connection refused: the listener is at its connection cap"
                );
            }
            // One non-blocking write; the socket closes when dropped.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            connection(stream, limits, handler).await;
            drop(slot);
        });
    }
}

/// One connection: closed when no request is in progress and no byte has
/// moved for `idle_timeout` (an idle keep-alive connection, a client that
/// stopped reading), or when its request head takes over `header_timeout`.
async fn connection<H: Handler>(stream: tokio::net::TcpStream, limits: Listening, handler: Arc<H>) {
    let activity = Arc::new(Activity::new());
    let io = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    let in_service = activity.clone();
    let svc = service_fn(move |req| {
        let busy = Busy::new(in_service.clone());
        let handler = handler.clone();
        async move {
            let resp = handler.handle(req).await;
            drop(busy);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "operator connection ended");
            }
        }
        _ = activity.idle(limits.idle_timeout) => {
            tracing::debug!("operator connection closed: idle");
        }
    }
}

/// A connection's last progress (bytes read or written) and its requests
/// being handled.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last progress.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Returns once the connection has been idle for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            if self.busy.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A request being handled; the connection is not idle meanwhile.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::AcqRel);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, noting progress in [`Activity`].
struct Tracked {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Lets one log line through per [`LOG_EVERY`], counting the others.
#[derive(Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(lines suppressed since the last one)` when a line may be logged.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body was not received within {0:?}")]
    Timeout(Duration),
    #[error("the body could not be read: {0}")]
    Read(#[from] hyper::Error),
}

/// Reads a whole request body of at most `limit` bytes within `timeout`,
/// into one buffer sized from `Content-Length` when the client sent one
/// (so the bytes are copied once, and never held twice).
pub async fn read_body(mut body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Err(BodyError::TooLarge(limit));
    }
    let read = async move {
        let exact = hint.exact().and_then(|n| usize::try_from(n).ok());
        let mut buf = BytesMut::with_capacity(exact.unwrap_or(0).min(limit));
        let mut first: Option<Bytes> = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            if buf.len() + first.as_ref().map_or(0, Bytes::len) + data.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            // A body of one frame is kept as it came, without a copy.
            if buf.is_empty() && first.is_none() && exact.is_none_or(|n| n == data.len()) {
                first = Some(data);
                continue;
            }
            if let Some(f) = first.take() {
                buf.extend_from_slice(&f);
            }
            buf.extend_from_slice(&data);
        }
        Ok(match first {
            Some(f) => f,
            None => buf.freeze(),
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::Timeout(timeout))?
}

/// Binds a non-blocking listener for [`serve`]. With `SO_REUSEPORT`, so
/// that the new process of a graceful binary upgrade (`serve --upgrade`)
/// can listen while the old one still drains; both accept until the old
/// one exits.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The listener handed over at start (bound in `server::serve`, so that a
/// taken port fails the start), as a tokio listener.
pub fn take(slot: &std::sync::Mutex<Option<std::net::TcpListener>>) -> Option<tokio::net::TcpListener> {
    let std = slot.lock().ok().and_then(|mut l| l.take())?;
    tokio::net::TcpListener::from_std(std).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut l = LogLimit::default();
        assert_eq!(l.due(), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.due(), None);
        }
        l.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(l.due(), Some(1000));
    }

    #[test]
    fn busy_answer_is_a_whole_response() {
        let text = std::str::from_utf8(BUSY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["status"], 503);
    }
}
