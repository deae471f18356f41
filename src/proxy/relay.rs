//! Forwarding to a backend, for both protocol halves: pick an available
//! upstream of the pool (an idle kept-alive connection, or a new one; none
//! available: 503 at once), run the half's [`Downstream::attempt`] on it,
//! and retry when nothing can have reached the backend's application (a
//! failed connect) or the request may be replayed and no response byte
//! came back (a stale kept-alive connection, a reset): within the pool's
//! `retries` and retry budget. Every outcome feeds the upstream's passive
//! ejection. Backends get HTTP/1.1.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::upstream_tls::{self, Conn, ConnectError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::framing::{self, BadResponse};
use super::policy::{Outcome, Policy};
use super::pool::{Pool, Tried, Upstream};
use crate::registry::{Snapshot, Tenant};

/// A relayed response.
pub struct Done {
    pub upstream: SocketAddr,
    pub status: u16,
    /// The backend connection can carry another request.
    pub reusable: bool,
}

/// Why an exchange failed, the status the client got (0 if none), and the
/// upstream that failed.
pub struct Failed {
    pub error: ExchangeError,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
}

/// What went wrong while proxying (logged; the client sees only a status).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("every upstream of the pool failed to connect (last: {addr}: {source})")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: ConnectError,
    },
    #[error("no healthy upstream in the pool")]
    NoUpstream,
    #[error("upstream {0} did not answer within the read timeout")]
    ReadTimeout(SocketAddr),
    #[error("upstream {addr}: {source}")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("upstream {0} closed the connection before the response ended")]
    Closed(SocketAddr),
    /// An HTTP/2 backend's GOAWAY left the stream out (its id above the
    /// last one processed): by RFC 9113 section 8.7 it was not processed.
    #[error("upstream {addr} is going away and did not process the request ({reason})")]
    Refused { addr: SocketAddr, reason: ::h2::Reason },
    /// An HTTP/2 backend reset the stream before its response head
    /// (`REFUSED_STREAM`: not processed).
    #[error("upstream {addr} reset the stream ({reason})")]
    Reset { addr: SocketAddr, reason: ::h2::Reason },
    #[error("upstream {addr}: {source}")]
    BadResponse {
        addr: SocketAddr,
        #[source]
        source: BadResponse,
    },
    #[error("client: {0}")]
    Client(#[source] io::Error),
    #[error("client sent a malformed chunked body")]
    ClientBody,
    #[error("client sent no body bytes within client_timeout_ms")]
    ClientTimeout,
    #[error("HTTP/2 client: {0}")]
    H2(#[source] ::h2::Error),
}

impl ExchangeError {
    pub fn client_gone(&self) -> bool {
        matches!(self, ExchangeError::Client(_) | ExchangeError::H2(_))
    }

    /// Whether the backend caused it (counted toward its ejection).
    pub fn upstream_fault(&self) -> bool {
        matches!(
            self,
            ExchangeError::Upstream { .. }
                | ExchangeError::Closed(_)
                | ExchangeError::Refused { .. }
                | ExchangeError::Reset { .. }
                | ExchangeError::ReadTimeout(_)
                | ExchangeError::BadResponse { .. }
        )
    }

    /// The status for a failure before any response went out.
    pub fn status(&self) -> u16 {
        match self {
            ExchangeError::NoUpstream => 503,
            ExchangeError::ReadTimeout(_) => 504,
            ExchangeError::ClientBody => 400,
            ExchangeError::ClientTimeout => 408,
            ExchangeError::Client(_) | ExchangeError::H2(_) => 0,
            _ => 502,
        }
    }
}

/// How an attempt on one backend connection failed.
pub enum Attempt {
    /// Nothing came back and the connection broke: maybe a stale one.
    Stale(ExchangeError),
    /// Failed before any response was sent to the client.
    BeforeResponse(ExchangeError),
    /// Failed after the client got the response head with this status.
    AfterHead(ExchangeError, u16),
}

/// A backend connection for one attempt.
struct Backend<'p> {
    index: usize,
    up: std::borrow::Cow<'p, Arc<Upstream>>,
    conn: Conn,
    /// Taken from the idle pool (it may have gone stale).
    reused: bool,
}

/// One request's way through a pool's upstreams, for HTTP/1.1 and HTTP/2
/// backends alike: which upstreams failed for it, the retries it took, and
/// whether its next attempt needs a fresh connection. The one place that
/// decides whether a failed attempt is tried again.
pub struct Retry {
    tried: Tried,
    retries: u32,
    fresh_only: bool,
}

impl Retry {
    /// A new request on `pool` (counted for the pool's retry budget).
    pub fn start(pool: &Pool) -> Retry {
        pool.budget.request();
        Retry {
            tried: Tried::default(),
            retries: 0,
            fresh_only: false,
        }
    }

    /// The next upstream to try (fixed and resolved ones alike).
    pub fn select<'p>(&self, pool: &'p Pool) -> Option<(usize, std::borrow::Cow<'p, Arc<Upstream>>)> {
        pool.select(&self.tried)
    }

    /// Whether the next attempt must not reuse a kept connection.
    pub fn fresh_only(&self) -> bool {
        self.fresh_only
    }

    /// Upstream `index` failed to connect (nothing was sent): it is marked
    /// down for `down`; whether another upstream may be tried.
    pub fn connect_failed(&mut self, pool: &Pool, index: usize, up: &Upstream, down: Duration) -> bool {
        up.mark_down(down);
        self.tried.add(index);
        pool.metrics.connect_errors.inc();
        self.may_retry(pool)
    }

    /// An attempt on upstream `index` broke before any response byte came
    /// back. `reused`: on a kept connection (which may have gone stale);
    /// `safe`: the request may be sent again (replayable, or the backend
    /// said it did not process it). A stale kept connection is replaced
    /// once by a fresh one, outside the budget (the usual race of
    /// keep-alive, not the backend's failure); otherwise the failure counts
    /// toward the upstream's ejection and another upstream is tried within
    /// `retries` and the budget. Whether to try again (on a fresh
    /// connection).
    pub fn broke_before_response(
        &mut self,
        pool: &Pool,
        index: usize,
        up: &Upstream,
        reused: bool,
        safe: bool,
    ) -> bool {
        if reused && !self.fresh_only && safe {
            self.fresh_only = true;
            return true;
        }
        if !reused {
            pool.upstream_failed(up);
        }
        self.tried.add(index);
        if safe && self.may_retry(pool) {
            self.fresh_only = true;
            return true;
        }
        false
    }

    /// Whether a failed request may go to another upstream: one is
    /// available that this request has not tried, `retries` has room, and
    /// the pool's retry budget grants it (counted either way).
    fn may_retry(&mut self, pool: &Pool) -> bool {
        if self.retries >= pool.retries.max || !pool.any_untried(&self.tried) {
            return false;
        }
        if !pool.budget.try_retry(&pool.retries) {
            pool.metrics.retries.refused.inc();
            return false;
        }
        self.retries += 1;
        pool.metrics.retries.sent.inc();
        true
    }
}

/// The next backend connection to try: an idle one (unless the request
/// needs a fresh one) or a new one. An upstream that fails to connect is
/// marked down and the next one tried as [`Retry`] allows. `NoUpstream`
/// when no upstream is available.
async fn open<'p>(
    snap: &Snapshot,
    pool: &'p Pool,
    retry: &mut Retry,
) -> Result<Backend<'p>, (ExchangeError, Option<SocketAddr>)> {
    let gw = &snap.config.gateway;
    loop {
        let Some((index, up)) = retry.select(pool) else {
            return Err((ExchangeError::NoUpstream, None));
        };
        if !retry.fresh_only() {
            if let Some(conn) = up.take_idle(gw.timeouts.idle, gw.work_stealing) {
                return Ok(Backend {
                    index,
                    up,
                    conn,
                    reused: true,
                });
            }
        }
        match upstream_tls::connect(&up, gw.timeouts.connect, false).await {
            Ok(conn) => {
                return Ok(Backend {
                    index,
                    up,
                    conn,
                    reused: false,
                })
            }
            Err(source) => {
                if !retry.connect_failed(pool, index, &up, gw.upstream_down) {
                    return Err((ExchangeError::Connect { addr: up.addr, source }, Some(up.addr)));
                }
            }
        }
    }
}

/// One read from the backend, within the read timeout.
pub async fn read_backend(
    backend: &mut (impl AsyncRead + Unpin),
    addr: SocketAddr,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<usize, ExchangeError> {
    match tokio::time::timeout(timeout, backend.read(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(source)) => Err(ExchangeError::Upstream { addr, source }),
        Err(_) => Err(ExchangeError::ReadTimeout(addr)),
    }
}

pub fn timed_out() -> io::Error {
    io::ErrorKind::TimedOut.into()
}

/// Takes a forwarded request's result into `o`, logs a failure (a client
/// that left is no operator's concern), and records the outcome.
pub fn settle<'a>(
    policy: &Policy,
    snap: &Snapshot,
    o: &mut Outcome<'a>,
    result: &'a Result<Done, Failed>,
    tenant: Option<&Tenant>,
    pool: &Pool,
) {
    match result {
        Ok(done) => {
            o.upstream = Some(done.upstream);
            o.status = done.status;
        }
        Err(f) => {
            o.upstream = f.upstream;
            o.status = f.status;
            o.error = Some(&f.error);
            if f.error.client_gone() {
                tracing::debug!(error = %f.error, "client gone during the exchange");
            } else if matches!(f.error, ExchangeError::NoUpstream) {
                // Said once when each upstream went (health, ejection, mark-down
                // logs); the access log has each 503.
                tracing::debug!(error = %f.error, tenant = tenant.map(|t| &*t.id), pool = &*pool.name, "no upstream available");
            } else {
                tracing::warn!(error = %f.error, tenant = tenant.map(|t| &*t.id), pool = &*pool.name, "proxying failed");
            }
        }
    }
    policy.record(snap, o);
}

/// Largest backend response head.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Room for backend bytes (and HTTP/1.1 request bodies) per connection.
pub const BUF: usize = 16 * 1024;

/// Reads from the backend until `rbuf[..*filled]` starts with a whole
/// response head, and parses it ([`framing::parse`], which hands its lines
/// to `emit`). `received` tracks whether anything came back at all: until
/// then, a broken connection may be a stale kept-alive one.
#[allow(clippy::too_many_arguments)]
pub async fn response_head(
    backend: &mut (impl AsyncRead + Unpin),
    addr: SocketAddr,
    rbuf: &mut Vec<u8>,
    filled: &mut usize,
    received: &mut bool,
    head_request: bool,
    upgrade: bool,
    replaced: &[(&'static str, &http::HeaderValue)],
    timeout: Duration,
    uploading: Option<&std::sync::atomic::AtomicBool>,
    mut emit: impl FnMut(framing::Line<'_>),
) -> Result<framing::Response, Attempt> {
    // The whole head within the timeout: a backend trickling it byte by
    // byte gets no more time than a silent one.
    let mut deadline = tokio::time::Instant::now() + timeout;
    // The deadline was last set while the request body still flowed: once
    // it ends, the head gets a whole timeout more.
    let mut upload_seen = false;
    loop {
        if *filled > 0 {
            match framing::parse(&rbuf[..*filled], head_request, upgrade, replaced, &mut emit) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(source) => return Err(Attempt::BeforeResponse(ExchangeError::BadResponse { addr, source })),
            }
        }
        if *filled == rbuf.len() {
            if rbuf.len() >= MAX_RESPONSE_HEAD {
                let source = BadResponse::TooLarge;
                return Err(Attempt::BeforeResponse(ExchangeError::BadResponse { addr, source }));
            }
            rbuf.resize((rbuf.len() * 2).max(BUF), 0);
        }
        let n = match tokio::time::timeout_at(deadline, backend.read(&mut rbuf[*filled..])).await {
            Ok(Ok(0)) if !*received => return Err(Attempt::Stale(ExchangeError::Closed(addr))),
            Ok(Ok(0)) => return Err(Attempt::BeforeResponse(ExchangeError::Closed(addr))),
            Ok(Ok(n)) => n,
            Ok(Err(source)) if !*received => return Err(Attempt::Stale(ExchangeError::Upstream { addr, source })),
            Ok(Err(source)) => return Err(Attempt::BeforeResponse(ExchangeError::Upstream { addr, source })),
            // The request body is still flowing: the backend may wait for
            // all of it before it answers.
            Err(_) if upload_seen || uploading.is_some_and(|u| u.load(std::sync::atomic::Ordering::Relaxed)) => {
                upload_seen = uploading.is_some_and(|u| u.load(std::sync::atomic::Ordering::Relaxed));
                deadline = tokio::time::Instant::now() + timeout;
                continue;
            }
            Err(_) => return Err(Attempt::BeforeResponse(ExchangeError::ReadTimeout(addr))),
        };
        *filled += n;
        *received = true;
    }
}

/// Writes the backend's request head (and the body bytes already at
/// hand) within the write timeout. A failure may mean a stale connection.
pub async fn send_head(
    backend: &mut (impl AsyncWrite + Unpin),
    addr: SocketAddr,
    head: &[u8],
    body: &[u8],
    timeout: Duration,
) -> Result<(), Attempt> {
    // The head and the body bytes at hand leave in one write.
    use tokio::io::AsyncWriteExt;
    let mut bufs = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
    let write = async {
        match body.is_empty() {
            true => backend.write_all(head).await?,
            false => write_all_vectored(backend, &mut bufs).await?,
        }
        // A TLS connection may hold the last record back until flushed.
        backend.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(Attempt::Stale(ExchangeError::Upstream { addr, source })),
        Err(_) => Err(Attempt::BeforeResponse(ExchangeError::Upstream {
            addr,
            source: timed_out(),
        })),
    }
}

/// Writes every byte of `bufs`, in as few system calls as the stream takes.
pub async fn write_all_vectored(
    w: &mut (impl AsyncWrite + Unpin),
    mut bufs: &mut [std::io::IoSlice<'_>],
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    std::io::IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Runs a request body's `pump` (client to backend) beside the response
/// `relay` (backend to client), for both protocol halves. While the pump
/// runs, `uploading` is set (the wait for the response head is then bounded
/// by the body's own timeouts). A backend that stops reading does not end
/// the exchange: its answer may still come. Any other pump failure does:
/// after the head when `head_sent` says a status went out. When the relay
/// ends first, the rest of the body still goes to the backend (within its
/// timeouts). Returns the relay's result and the pump's (an `Err` means the
/// body did not all reach the backend).
pub async fn duplex<T, U>(
    pump: impl std::future::Future<Output = Result<T, ExchangeError>>,
    relay: impl std::future::Future<Output = Result<U, Attempt>>,
    uploading: &std::sync::atomic::AtomicBool,
    head_sent: impl Fn() -> u16,
) -> Result<(U, Result<T, ExchangeError>), Attempt> {
    use std::sync::atomic::Ordering;
    tokio::pin!(pump, relay);
    let mut pumped = None;
    loop {
        tokio::select! {
            p = &mut pump, if pumped.is_none() => {
                uploading.store(false, Ordering::Relaxed);
                match p {
                    Err(e @ ExchangeError::Upstream { .. }) => {
                        tracing::debug!(error = %e, "backend stopped reading the request body");
                        pumped = Some(Err(e));
                    }
                    Err(e) => {
                        return Err(match head_sent() {
                            0 => Attempt::BeforeResponse(e),
                            status => Attempt::AfterHead(e, status),
                        });
                    }
                    Ok(t) => pumped = Some(Ok(t)),
                }
            }
            relayed = &mut relay => {
                let relayed = relayed?;
                let pumped = match pumped {
                    Some(p) => p,
                    None => pump.await,
                };
                return Ok((relayed, pumped));
            }
        }
    }
}

/// The client side of one forwarded request: how to run an attempt on a
/// backend connection, and how to answer a failure before any response.
pub trait Downstream {
    /// Sends the request on `backend` and relays the response.
    async fn attempt(&mut self, backend: &mut Conn, addr: SocketAddr) -> Result<Done, Attempt>;
    /// Answers `status` (0: just end); returns the status sent, or 0.
    async fn fail(&mut self, status: u16) -> u16;
    /// Whether a failed attempt on a reused connection may be sent again.
    fn replayable(&self) -> bool;
}

/// Forwards to an upstream of `pool`. A kept-alive connection that turns
/// out stale is replaced once by a new one when `d` is replayable (no body,
/// a method without side effects); a new connection that fails to connect,
/// or breaks before any response byte on a replayable request, moves on to
/// another upstream within the pool's `retries` and retry budget. Nothing
/// is sent twice once the backend may have acted on it: a request with a
/// body, or one that got any response byte or timed out, is never retried.
/// Each attempt's outcome feeds the upstream's passive ejection.
pub async fn forward(snap: &Snapshot, pool: &Pool, d: &mut impl Downstream) -> Result<Done, Failed> {
    let idle = snap.config.gateway.timeouts.idle;
    let mut retry = Retry::start(pool);
    loop {
        let mut backend = match open(snap, pool, &mut retry).await {
            Ok(b) => b,
            Err((error, upstream)) => {
                let status = d.fail(error.status()).await;
                return Err(Failed {
                    error,
                    status,
                    upstream,
                });
            }
        };
        let addr = backend.up.addr;
        let (error, status) = match d.attempt(&mut backend.conn, addr).await {
            Ok(done) => {
                match done.status {
                    500..=599 => pool.upstream_failed(&backend.up),
                    _ => backend.up.health.record_success(),
                }
                if done.reusable {
                    backend.up.put_idle(backend.conn, idle);
                }
                return Ok(done);
            }
            Err(Attempt::Stale(error)) => {
                if retry.broke_before_response(pool, backend.index, &backend.up, backend.reused, d.replayable()) {
                    continue;
                }
                let status = d.fail(error.status()).await;
                (error, status)
            }
            Err(Attempt::BeforeResponse(error)) => {
                if error.upstream_fault() {
                    pool.upstream_failed(&backend.up);
                }
                let status = d.fail(error.status()).await;
                (error, status)
            }
            Err(Attempt::AfterHead(error, status)) => {
                if error.upstream_fault() {
                    pool.upstream_failed(&backend.up);
                }
                (error, status)
            }
        };
        return Err(Failed {
            error,
            status,
            upstream: Some(addr),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstream::UpstreamName;

    #[test]
    fn retries_count_resolved_upstreams_and_stop_at_the_limit() {
        let metrics = crate::telemetry::Metrics::new().expect("metrics");
        let fixed = vec![Arc::new(Upstream::new(SocketAddr::from(([127, 0, 0, 1], 9000))))];
        let mut pool = Pool::new("p".into(), fixed, metrics.pool("p"));
        pool.names = vec![UpstreamName {
            host: "backend.internal".into(),
            port: 9100,
        }];
        let resolved = (1..=3)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, i], 9100));
                Arc::new(Upstream::resolved(addr, "backend.internal:9100".into(), None))
            })
            .collect();
        pool.resolved.store(Arc::new(resolved));
        let down = Duration::from_secs(60);
        let mut retry = Retry::start(&pool);
        // One fixed upstream: a resolved one is still there to try, within
        // `retries` (2).
        let (i, up) = retry.select(&pool).expect("one");
        assert!(retry.connect_failed(&pool, i, &up, down), "a resolved upstream is left");
        let (i, up) = retry.select(&pool).expect("two");
        assert!(retry.connect_failed(&pool, i, &up, down), "the second retry");
        let (i, up) = retry.select(&pool).expect("three");
        assert!(!retry.connect_failed(&pool, i, &up, down), "retries = 2 reached");
        // A stale kept connection is replaced once outside the budget, and
        // an unsafe request never goes again.
        let mut retry = Retry::start(&pool);
        let (i, up) = retry.select(&pool).expect("one");
        assert!(retry.broke_before_response(&pool, i, &up, true, true));
        assert!(retry.fresh_only());
        assert!(!retry.broke_before_response(&pool, i, &up, false, false));
    }
}
