//! tenantgate's own HTTP/1.1 and HTTP/2 paths in front of pingora's.
//!
//! pingora 0.9's proxy spends about 87k instructions and 93 allocations per
//! HTTP/1 request (benches/results/perf-notes-2026-11-22.md), and its HTTP/2
//! path is slower still. [`LeanApp`] serves the common requests itself and
//! makes the same decisions as the pingora hooks (the [`Gateway`] methods:
//! route, SNI check, redirect, limits, metrics and access log):
//!
//! - HTTP/1.1 ([`h1`]): a request with an origin-form target, no body or a
//!   `Content-Length` one, no upgrade and no `Expect` is parsed in place
//!   (httparse) and relayed by its framing. Any other request hands the
//!   connection, with the bytes already read, to pingora's HTTP app for the
//!   rest of its life.
//! - HTTP/2 over TLS ([`h2`]): every stream, on the `h2` crate.
//!
//! Backends get HTTP/1.1 over idle connections kept per upstream
//! ([`Upstream::take_idle`]). Clients get `client_timeout_ms` for a whole
//! request head (or the wait for the next one), for each wait for body
//! bytes, and for each write; the backend gets the configured connect,
//! read and write timeouts.

mod framing;
mod h1;
mod h2;
mod head;
mod replay;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::tls::ALPN;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use http::HeaderValue;

use super::authority::BadAuthority;
use super::pool::{Pool, Tried, Upstream};
use super::{rejection_status, Gateway, Outcome, SNI_MISMATCH_BODY};
use crate::limits::Admission;
use crate::registry::{Snapshot, Tenant};
use crate::telemetry::Rejection;
use framing::BadResponse;

pub use head::{Handoff, ACME_CHALLENGE_PREFIX};

/// The HTTP app of a listener: the lean paths, with pingora's `inner` app
/// for whatever they do not take.
pub struct LeanApp<A> {
    gateway: Gateway,
    inner: Arc<A>,
}

impl<A> LeanApp<A> {
    /// `gateway` makes the decisions; `inner` gets the connections the lean
    /// path hands off.
    pub fn new(gateway: Gateway, inner: Arc<A>) -> Self {
        LeanApp { gateway, inner }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for LeanApp<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let mut shutdown = shutdown.clone();
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            h2::serve(&self.gateway, stream, peer, &mut shutdown).await;
            return None;
        }
        if let Some((rest, stream)) = h1::serve(&self.gateway, stream, peer, &mut shutdown).await {
            let mut next: Option<Stream> = Some(Box::new(replay::Replay::new(rest, stream)));
            while let Some(s) = next {
                next = self.inner.process_new(s, &shutdown).await;
            }
        }
        None
    }
}

/// A relayed response.
struct Done {
    upstream: SocketAddr,
    status: u16,
    /// The backend connection can carry another request.
    reusable: bool,
}

/// Why an exchange failed, the status the client got (0 if none), and the
/// upstream that failed.
struct Failed {
    error: ExchangeError,
    status: u16,
    upstream: Option<SocketAddr>,
}

/// What went wrong while proxying (logged; the client sees only a status).
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("every upstream of the pool failed to connect (last: {addr}: {source})")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("no upstream in the pool")]
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
    #[error("upstream {addr}: {source}")]
    BadResponse {
        addr: SocketAddr,
        #[source]
        source: BadResponse,
    },
    #[error("client: {0}")]
    Client(#[source] io::Error),
    #[error("HTTP/2 client: {0}")]
    H2(#[source] ::h2::Error),
}

impl ExchangeError {
    fn client_gone(&self) -> bool {
        matches!(self, ExchangeError::Client(_) | ExchangeError::H2(_))
    }

    /// The status for a failure before any response went out.
    fn status(&self) -> u16 {
        match self {
            ExchangeError::ReadTimeout(_) => 504,
            ExchangeError::Client(_) | ExchangeError::H2(_) => 0,
            _ => 502,
        }
    }
}

/// How an attempt on one backend connection failed.
enum Attempt {
    /// Nothing came back and the connection broke: maybe a stale one.
    Stale(ExchangeError),
    /// Failed before any response was sent to the client.
    BeforeResponse(ExchangeError),
    /// Failed after the client got the response head with this status.
    AfterHead(ExchangeError, u16),
}

/// A backend connection for one attempt.
struct Backend<'p> {
    up: &'p Arc<Upstream>,
    conn: TcpStream,
    /// Taken from the idle pool (it may have gone stale).
    reused: bool,
}

/// The next backend connection to try: an idle one (unless `fresh_only`)
/// or a new one. An upstream that fails to connect is marked down and the
/// next one tried, as the pingora hooks do.
async fn open<'p>(
    snap: &Snapshot,
    pool: &'p Pool,
    tried: &mut Tried,
    fresh_only: bool,
) -> Result<Backend<'p>, (ExchangeError, Option<SocketAddr>)> {
    let gw = &snap.config.gateway;
    let limit = pool.upstreams.len().min(64) as u32;
    loop {
        let Some((index, up)) = pool.select(tried) else {
            return Err((ExchangeError::NoUpstream, None));
        };
        if !fresh_only {
            if let Some(conn) = up.take_idle(gw.timeouts.idle) {
                return Ok(Backend { up, conn, reused: true });
            }
        }
        match connect(up, gw.timeouts.connect).await {
            Ok(conn) => {
                return Ok(Backend {
                    up,
                    conn,
                    reused: false,
                })
            }
            Err(source) => {
                up.mark_down(gw.upstream_down);
                tried.add(index);
                pool.metrics.connect_errors.inc();
                if tried.count() >= limit {
                    return Err((ExchangeError::Connect { addr: up.addr, source }, Some(up.addr)));
                }
            }
        }
    }
}

async fn connect(up: &Upstream, timeout: Duration) -> io::Result<TcpStream> {
    let c = tokio::time::timeout(timeout, TcpStream::connect(up.addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    c.set_nodelay(true)?;
    Ok(c)
}

/// One read from the backend, within the read timeout.
async fn read_backend(
    backend: &mut TcpStream,
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

fn timed_out() -> io::Error {
    io::ErrorKind::TimedOut.into()
}

/// The canonical reason phrase of `status`.
fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// A response of the gateway's own.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: bytes::Bytes,
    headers: Vec<(&'static str, HeaderValue)>,
    /// Close the HTTP/1.1 connection after it (a malformed request).
    close: bool,
}

impl Answer {
    fn text(status: u16, body: &'static str, close: bool) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: bytes::Bytes::from_static(body.as_bytes()),
            headers: Vec::new(),
            close,
        }
    }

    /// `status` with its reason phrase as the body (a 502 or 504 of the
    /// gateway's own); the HTTP/1.1 connection closes after it.
    fn failure(status: u16) -> Answer {
        let mut a = Answer::text(status, "", true);
        a.body = format!("{status} {}\n", reason(status)).into();
        a
    }
}

/// What the gateway decided for one request.
enum Decision<'s> {
    Answer(Answer),
    /// Forward to `pool`, as `tenant`, holding the limiter's admission.
    Forward {
        tenant: &'s Tenant,
        pool: &'s Pool,
        admission: Option<Admission>,
    },
}

/// Routes a request and applies the tenant's rules, as the pingora hooks
/// do (`request_filter`): the tenant from the authority, the TLS listener's
/// SNI check, the plain listener's HTTPS redirect, then the limits.
/// Records the route or the rejection in `o`.
async fn decide<'s>(
    gw: &Gateway,
    snap: &'s Snapshot,
    authority: Result<&str, BadAuthority>,
    target: &str,
    peer: Option<SocketAddr>,
    o: &mut Outcome<'_>,
) -> Decision<'s> {
    let (host, m) = match gw.route(snap, authority) {
        Ok(r) => r,
        Err((rejection, body)) => return Decision::Answer(reject(gw, rejection, body, o)),
    };
    o.route = Some(m);
    if let Some(host) = host.as_deref() {
        if gw.https && !gw.sni_allows(peer, snap, host, m) {
            return Decision::Answer(reject(gw, Rejection::SniMismatch, SNI_MISMATCH_BODY, o));
        }
        if !gw.https {
            if let Some(location) = gw.redirect(snap, host, m, target) {
                let mut a = Answer::text(308, "308 Permanent Redirect: use HTTPS\n", false);
                a.headers
                    .extend(HeaderValue::from_str(&location).ok().map(|l| ("location", l)));
                return Decision::Answer(a);
            }
        }
    }
    let Some((tenant, pool)) = snap.tenant(m.tenant).and_then(|t| Some((t, snap.pool_of(t)?))) else {
        tracing::error!("routed tenant or its pool missing from the snapshot");
        return Decision::Answer(Answer::text(500, "500 Internal Server Error\n", true));
    };
    match gw.limit(snap, m, peer.map(|p| p.ip())).await {
        Ok(admission) => Decision::Forward {
            tenant,
            pool,
            admission,
        },
        Err(refusal) => {
            let mut headers = vec![("retry-after", HeaderValue::from(refusal.retry_after))];
            headers.extend(tenant.policy_header.clone().map(|p| ("ratelimit-policy", p)));
            Decision::Answer(Answer {
                status: refusal.status(),
                content_type: "application/problem+json",
                body: refusal.problem_body().into(),
                headers,
                close: false,
            })
        }
    }
}

fn reject(gw: &Gateway, rejection: Rejection, body: &'static str, o: &mut Outcome<'_>) -> Answer {
    gw.metrics.reject(rejection);
    o.rejection = Some(rejection);
    let (status, close) = rejection_status(rejection);
    Answer::text(status, body, close)
}

/// The rate-limit headers a forwarded response gets, as `(name, value)`
/// pairs without an allocation or a copy: the first `n`.
fn limit_headers<'a>(
    tenant: &'a Tenant,
    admission: Option<&'a Admission>,
) -> ([(&'static str, &'a HeaderValue); 2], usize) {
    static NONE: HeaderValue = HeaderValue::from_static("");
    let mut pairs = [("", &NONE); 2];
    let mut n = 0;
    let ratelimit = admission.and_then(|a| a.header.as_ref());
    for (name, value) in [
        ("ratelimit-policy", tenant.policy_header.as_ref()),
        ("ratelimit", ratelimit),
    ] {
        if let Some(v) = value {
            pairs[n] = (name, v);
            n += 1;
        }
    }
    (pairs, n)
}

/// Takes a forwarded request's result into `o`, logs a failure (a client
/// that left is no operator's concern), and records the outcome.
fn settle<'a>(
    gw: &Gateway,
    snap: &Snapshot,
    o: &mut Outcome<'a>,
    result: &'a Result<Done, Failed>,
    tenant: &Tenant,
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
            } else {
                tracing::warn!(error = %f.error, tenant = &*tenant.id, pool = &*pool.name, "proxying failed");
            }
        }
    }
    gw.record(snap, o);
}

/// Largest backend response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Room for backend bytes (and HTTP/1.1 request bodies) per connection.
const BUF: usize = 16 * 1024;

/// Reads from the backend until `rbuf[..*filled]` starts with a whole
/// response head, and parses it ([`framing::parse`], which hands its lines
/// to `emit`). `received` tracks whether anything came back at all: until
/// then, a broken connection may be a stale kept-alive one.
#[allow(clippy::too_many_arguments)]
async fn response_head(
    backend: &mut TcpStream,
    addr: SocketAddr,
    rbuf: &mut Vec<u8>,
    filled: &mut usize,
    received: &mut bool,
    head_request: bool,
    replaced: &[(&'static str, &HeaderValue)],
    timeout: Duration,
    mut emit: impl FnMut(framing::Line<'_>),
) -> Result<framing::Response, Attempt> {
    loop {
        if *filled > 0 {
            match framing::parse(&rbuf[..*filled], head_request, replaced, &mut emit) {
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
        let n = match tokio::time::timeout(timeout, backend.read(&mut rbuf[*filled..])).await {
            Ok(Ok(0)) if !*received => return Err(Attempt::Stale(ExchangeError::Closed(addr))),
            Ok(Ok(0)) => return Err(Attempt::BeforeResponse(ExchangeError::Closed(addr))),
            Ok(Ok(n)) => n,
            Ok(Err(source)) if !*received => return Err(Attempt::Stale(ExchangeError::Upstream { addr, source })),
            Ok(Err(source)) => return Err(Attempt::BeforeResponse(ExchangeError::Upstream { addr, source })),
            Err(_) => return Err(Attempt::BeforeResponse(ExchangeError::ReadTimeout(addr))),
        };
        *filled += n;
        *received = true;
    }
}

/// Writes the backend's request head (and the body bytes already at
/// hand) within the write timeout. A failure may mean a stale connection.
async fn send_head(
    backend: &mut TcpStream,
    addr: SocketAddr,
    head: &[u8],
    body: &[u8],
    timeout: Duration,
) -> Result<(), Attempt> {
    use tokio::io::AsyncWriteExt;
    let write = async {
        backend.write_all(head).await?;
        if !body.is_empty() {
            backend.write_all(body).await?;
        }
        Ok(())
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

/// The client side of one forwarded request: how to run an attempt on a
/// backend connection, and how to answer a failure before any response.
trait Downstream {
    /// Sends the request on `backend` and relays the response.
    async fn attempt(&mut self, backend: &mut TcpStream, addr: SocketAddr) -> Result<Done, Attempt>;
    /// Answers `status` (0: just end); returns the status sent, or 0.
    async fn fail(&mut self, status: u16) -> u16;
    /// Whether a failed attempt on a reused connection may be sent again.
    fn replayable(&self) -> bool;
}

/// Forwards to an upstream of `pool`: on a kept-alive connection that
/// turns out stale, once more on a new one when `d` is replayable; a new
/// connection that fails moves on to the next upstream ([`open`]).
async fn forward(snap: &Snapshot, pool: &Pool, d: &mut impl Downstream) -> Result<Done, Failed> {
    let idle = snap.config.gateway.timeouts.idle;
    let mut tried = Tried::default();
    let mut fresh_only = false;
    loop {
        let mut backend = match open(snap, pool, &mut tried, fresh_only).await {
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
                if done.reusable {
                    backend.up.put_idle(backend.conn, idle);
                }
                return Ok(done);
            }
            Err(Attempt::Stale(_)) if backend.reused && d.replayable() => {
                fresh_only = true;
                continue;
            }
            Err(Attempt::Stale(error)) | Err(Attempt::BeforeResponse(error)) => {
                let status = d.fail(error.status()).await;
                (error, status)
            }
            Err(Attempt::AfterHead(error, status)) => (error, status),
        };
        return Err(Failed {
            error,
            status,
            upstream: Some(addr),
        });
    }
}
