//! The lean HTTP/1.1 path of the plain listener.
//!
//! pingora 0.9's HTTP/1 proxy spends about 87k instructions and 93
//! allocations per request (benches/results/perf-notes-2026-11-22.md). For
//! the common request (HTTP/1.1, origin-form, no body or a
//! `Content-Length` one, no upgrade, no `Expect`), [`H1App`] does the work
//! itself: it parses the head in place (httparse), makes the same decisions
//! as the pingora hooks (the [`Gateway`] methods: route, redirect, limits,
//! metrics and access log), writes the backend's head in one buffer, keeps
//! idle backend connections per upstream, and relays the response by its
//! framing (length, chunked or until close) without copying it into an
//! owned message. Any other request hands the connection, with the bytes
//! already read, to pingora's HTTP app for the rest of its life.
//!
//! Client timeouts: a request head (or the wait for the next one on a
//! kept-alive connection) and each write to the client get
//! [`CLIENT_TIMEOUT`]; the backend gets the configured connect, read and
//! write timeouts.

mod framing;
mod head;
mod replay;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pool::{Pool, Tried, Upstream};
use super::{rejection_status, Gateway, Outcome};
use crate::registry::Snapshot;
use framing::{BadResponse, Body, Chunked};
use head::{Head, Parsed, MAX_HEADERS};
use replay::Replay;

pub use head::ACME_CHALLENGE_PREFIX;

/// A client gets this long to send a request head, or to read a write.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head (or buffered pipeline) read before pingora takes over.
const MAX_HEAD: usize = 64 * 1024;
/// Largest backend response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const BUF: usize = 16 * 1024;

/// The plain listener's app: the lean path, with pingora's `inner` app for
/// whatever it does not take.
pub struct H1App<A> {
    gateway: Gateway,
    inner: Arc<A>,
}

impl<A> H1App<A> {
    /// `gateway` makes the decisions; `inner` gets the connections the lean
    /// path hands off.
    pub fn new(gateway: Gateway, inner: Arc<A>) -> Self {
        H1App { gateway, inner }
    }
}

/// How a connection left the lean path.
enum End {
    Close,
    Handoff,
}

/// One client connection's buffers.
struct Conn {
    io: Stream,
    client: Option<IpAddr>,
    /// Bytes read from the client; unread ones are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    /// Heads being written.
    out: Vec<u8>,
    /// The backend's bytes.
    rbuf: Vec<u8>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for H1App<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let mut conn = Conn {
            io: stream,
            client,
            buf: Vec::with_capacity(4096),
            start: 0,
            out: Vec::new(),
            rbuf: Vec::new(),
        };
        let mut shutdown = shutdown.clone();
        match self.serve(&mut conn, &mut shutdown).await {
            End::Close => {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.io.shutdown()).await;
                None
            }
            End::Handoff => {
                let rest = conn.buf.split_off(conn.start);
                let mut next: Option<Stream> = Some(Box::new(Replay::new(rest, conn.io)));
                while let Some(s) = next {
                    next = self.inner.process_new(s, &shutdown).await;
                }
                None
            }
        }
    }
}

impl<A> H1App<A> {
    /// Serves requests until the connection closes or goes to pingora.
    async fn serve(&self, conn: &mut Conn, shutdown: &mut ShutdownWatch) -> End {
        loop {
            if *shutdown.borrow() {
                return End::Close;
            }
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let data = &conn.buf[conn.start..];
            match head::parse(data, &mut storage) {
                Parsed::Lean(h) => {
                    let after = &data[h.len..];
                    let step = self
                        .exchange(&h, after, &mut conn.io, &mut conn.out, &mut conn.rbuf, conn.client)
                        .await;
                    match step {
                        Some(used) => conn.start += h.len + used,
                        None => return End::Close,
                    }
                    if conn.start == conn.buf.len() {
                        conn.buf.clear();
                        conn.start = 0;
                    }
                }
                Parsed::Handoff => return End::Handoff,
                Parsed::Partial => {
                    if conn.buf.len() - conn.start >= MAX_HEAD {
                        return End::Handoff;
                    }
                    match read_head(conn, shutdown).await {
                        Ok(true) => {}
                        Ok(false) => return End::Close,
                        Err(()) => return End::Close,
                    }
                }
            }
        }
    }

    /// Proxies one request (or answers it). `Some(n)`: done, the connection
    /// may carry another request, and `n` bytes of `after` were this one's
    /// body. `None`: close the connection.
    async fn exchange(
        &self,
        h: &Head<'_, '_>,
        after: &[u8],
        io: &mut Stream,
        out: &mut Vec<u8>,
        rbuf: &mut Vec<u8>,
        client: Option<IpAddr>,
    ) -> Option<usize> {
        let start = Instant::now();
        let gw = &self.gateway;
        let snap = gw.registry.snapshot();
        let in_buf = usize::try_from(h.content_length).map_or(after.len(), |cl| cl.min(after.len()));
        let body_buffered = in_buf as u64 == h.content_length;
        let mut o = Outcome {
            start,
            route: None,
            rejection: None,
            upstream: None,
            status: 0,
            method: h.method,
            path: h.path(),
            request_id: None,
            error: None,
        };
        // Answers the gateway gives itself keep the connection only when
        // the request's body is already read.
        let keep = |close: bool| (!close && !h.close && body_buffered).then_some(in_buf);

        let (host, m) = match gw.route(&snap, h.host) {
            Ok(r) => r,
            Err((rejection, body)) => {
                gw.metrics.reject(rejection);
                let (status, close) = rejection_status(rejection);
                let close = close || !body_buffered || h.close;
                o.rejection = Some(rejection);
                o.status = status;
                text(out, status, "text/plain; charset=utf-8", body.as_bytes(), &[], close);
                let sent = send(io, out).await;
                gw.record(&snap, &o);
                return sent.ok().and(keep(close));
            }
        };
        o.route = Some(m);
        if let Some(location) = host.as_deref().and_then(|host| gw.redirect(&snap, host, m, h.target)) {
            let close = !body_buffered || h.close;
            o.status = 308;
            let location = HeaderValue::from_str(&location).ok();
            let extra: Vec<_> = location.iter().map(|l| ("location", l)).collect();
            text(
                out,
                308,
                "text/plain; charset=utf-8",
                b"308 Permanent Redirect: use HTTPS\n",
                &extra,
                close,
            );
            let sent = send(io, out).await;
            gw.record(&snap, &o);
            return sent.ok().and(keep(close));
        }
        let Some(tenant) = snap.tenant(m.tenant) else {
            return self.internal_error(io, out, &snap, &mut o).await;
        };
        let admission = match gw.limit(&snap, m, client).await {
            Ok(a) => a,
            Err(refusal) => {
                let close = !body_buffered || h.close;
                o.status = refusal.status();
                let retry = HeaderValue::from(refusal.retry_after);
                let mut extra = vec![("retry-after", &retry)];
                if let Some(p) = &tenant.policy_header {
                    extra.push(("ratelimit-policy", p));
                }
                let body = refusal.problem_body();
                text(
                    out,
                    o.status,
                    "application/problem+json",
                    body.as_bytes(),
                    &extra,
                    close,
                );
                let sent = send(io, out).await;
                gw.record(&snap, &o);
                return sent.ok().and(keep(close));
            }
        };
        let Some(pool) = snap.pool_of(tenant) else {
            return self.internal_error(io, out, &snap, &mut o).await;
        };
        let authority = h.host.unwrap_or_default();
        out.clear();
        let request_id = h.write_upstream(out, &snap.config.gateway, &tenant.header_value, client, authority);
        o.request_id = request_id.to_str().ok();
        let (ratelimit, permit) = match admission {
            Some(a) => (a.header, a.permit),
            None => (None, None),
        };
        // The rate-limit headers, without an allocation.
        let policy = tenant.policy_header.as_ref().map(|p| ("ratelimit-policy", p));
        let (both, one);
        let extra: &[(&'static str, &HeaderValue)] = match (policy, ratelimit.as_ref().map(|r| ("ratelimit", r))) {
            (Some(p), Some(r)) => {
                both = [p, r];
                &both
            }
            (Some(x), None) | (None, Some(x)) => {
                one = x;
                std::slice::from_ref(&one)
            }
            (None, None) => &[],
        };
        let req = Request {
            head: h,
            body: &after[..in_buf],
            extra,
        };
        let result = forward(&snap, pool, &req, io, out, rbuf).await;
        drop(permit);
        let keep_alive = match &result {
            Ok(done) => {
                o.upstream = Some(done.upstream);
                o.status = done.status;
                !h.close
            }
            Err(e) => {
                o.upstream = e.upstream;
                o.status = e.status;
                false
            }
        };
        let error = result.as_ref().err().map(|e| &e.error);
        o.error = error.map(|e| e as &(dyn std::fmt::Display + Sync));
        if let Some(e) = error {
            if e.client_gone() {
                tracing::debug!(error = %e, "client gone during the exchange");
            } else {
                tracing::warn!(error = %e, tenant = &*tenant.id, pool = &*pool.name, "proxying failed");
            }
        }
        gw.record(&snap, &o);
        keep_alive.then_some(in_buf)
    }

    async fn internal_error(
        &self,
        io: &mut Stream,
        out: &mut Vec<u8>,
        snap: &Snapshot,
        o: &mut Outcome<'_>,
    ) -> Option<usize> {
        tracing::error!("routed tenant or its pool missing from the snapshot");
        o.status = 500;
        text(
            out,
            500,
            "text/plain; charset=utf-8",
            b"500 Internal Server Error\n",
            &[],
            true,
        );
        let _ = send(io, out).await;
        self.gateway.record(snap, o);
        None
    }
}

/// Reads more of a request head. `Ok(false)`: the client closed, went
/// silent, or the gateway is shutting down while it was idle.
async fn read_head(conn: &mut Conn, shutdown: &mut ShutdownWatch) -> Result<bool, ()> {
    if conn.start > 0 {
        conn.buf.drain(..conn.start);
        conn.start = 0;
    }
    if conn.buf.capacity() - conn.buf.len() < 1024 {
        conn.buf.reserve(BUF);
    }
    let idle = conn.buf.is_empty();
    let read = tokio::time::timeout(CLIENT_TIMEOUT, conn.io.read_buf(&mut conn.buf));
    let n = if idle {
        tokio::select! {
            r = read => r,
            _ = shutdown.changed() => return Ok(false),
        }
    } else {
        read.await
    };
    match n {
        Ok(Ok(0)) | Err(_) => Ok(false),
        Ok(Ok(_)) => Ok(true),
        Ok(Err(_)) => Err(()),
    }
}

/// A lean request as it goes to the backend.
struct Request<'r, 'h, 'b> {
    head: &'r Head<'h, 'b>,
    /// The body bytes already read (all of it, or its start).
    body: &'r [u8],
    /// Headers added to the response.
    extra: &'r [(&'static str, &'r HeaderValue)],
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
}

impl ExchangeError {
    fn client_gone(&self) -> bool {
        matches!(self, ExchangeError::Client(_))
    }
}

/// Where a backend connection comes from.
enum Origin {
    Idle,
    Fresh,
}

/// Sends `req` to an upstream of `pool` and relays the response.
async fn forward(
    snap: &Snapshot,
    pool: &Pool,
    req: &Request<'_, '_, '_>,
    io: &mut Stream,
    out: &mut Vec<u8>,
    rbuf: &mut Vec<u8>,
) -> Result<Done, Failed> {
    let gw = &snap.config.gateway;
    let t = gw.timeouts;
    let fail = |error, status, upstream| Failed {
        error,
        status,
        upstream,
    };
    let mut tried = Tried::default();
    let limit = pool.upstreams.len().min(64) as u32;
    let mut fresh_only = false;
    if rbuf.len() < BUF {
        rbuf.resize(BUF, 0);
    }
    loop {
        let Some((index, up)) = pool.select(&tried) else {
            return Err(fail(ExchangeError::NoUpstream, reply_502(io, out).await, None));
        };
        let addr = up.addr;
        let (mut backend, origin) = match (!fresh_only).then(|| up.take_idle(t.idle)).flatten() {
            Some(c) => (c, Origin::Idle),
            None => match connect(up, t.connect).await {
                Ok(c) => (c, Origin::Fresh),
                Err(source) => {
                    up.mark_down(gw.upstream_down);
                    tried.add(index);
                    pool.metrics.connect_errors.inc();
                    if tried.count() < limit {
                        continue;
                    }
                    let error = ExchangeError::Connect { addr, source };
                    return Err(fail(error, reply_502(io, out).await, Some(addr)));
                }
            },
        };
        match exchange_with(&mut backend, addr, req, io, out, rbuf, t).await {
            Ok(done) => {
                if done.reusable {
                    up.put_idle(backend, t.idle);
                }
                return Ok(done);
            }
            // A kept-alive connection the backend closed just before this
            // request: send it again on a new one, if that is safe.
            Err(Attempt::Stale(_)) if matches!(origin, Origin::Idle) && req.head.replayable() => {
                fresh_only = true;
            }
            Err(Attempt::Stale(error)) | Err(Attempt::BeforeResponse(error)) => {
                let status = match error {
                    ExchangeError::ReadTimeout(_) => reply(io, out, 504).await,
                    ExchangeError::Client(_) => 0,
                    _ => reply_502(io, out).await,
                };
                return Err(fail(error, status, Some(addr)));
            }
            Err(Attempt::AfterHead(error, status)) => return Err(fail(error, status, Some(addr))),
        }
    }
}

/// How an attempt failed.
enum Attempt {
    /// Nothing came back and the connection broke: maybe a stale one.
    Stale(ExchangeError),
    /// Failed before any response was sent to the client.
    BeforeResponse(ExchangeError),
    /// Failed after the client got the response head with this status.
    AfterHead(ExchangeError, u16),
}

async fn connect(up: &Upstream, timeout: Duration) -> io::Result<TcpStream> {
    let c = tokio::time::timeout(timeout, TcpStream::connect(up.addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    c.set_nodelay(true)?;
    Ok(c)
}

/// One attempt on one backend connection: send the request, relay the
/// response, and keep the connection if it can carry another request.
#[allow(clippy::too_many_arguments)]
async fn exchange_with(
    backend: &mut TcpStream,
    addr: SocketAddr,
    req: &Request<'_, '_, '_>,
    io: &mut Stream,
    out: &mut Vec<u8>,
    rbuf: &mut Vec<u8>,
    t: crate::config::Timeouts,
) -> Result<Done, Attempt> {
    let h = req.head;
    let upstream_err = |source| ExchangeError::Upstream { addr, source };
    // The head and the buffered body in one write where they fit.
    let write = async {
        if req.body.is_empty() {
            backend.write_all(out).await
        } else {
            backend.write_all(out).await?;
            backend.write_all(req.body).await
        }
    };
    match tokio::time::timeout(t.write, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Attempt::Stale(upstream_err(e))),
        Err(_) => return Err(Attempt::BeforeResponse(upstream_err(timed_out()))),
    }
    // The rest of a body the client is still sending.
    let mut remaining = h.content_length - req.body.len() as u64;
    while remaining > 0 {
        let want = usize::try_from(remaining).map_or(rbuf.len(), |r| r.min(rbuf.len()));
        let n = match tokio::time::timeout(CLIENT_TIMEOUT, io.read(&mut rbuf[..want])).await {
            Ok(Ok(0)) => {
                return Err(Attempt::BeforeResponse(ExchangeError::Client(
                    io::ErrorKind::UnexpectedEof.into(),
                )))
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(Attempt::BeforeResponse(ExchangeError::Client(e))),
            Err(_) => return Err(Attempt::BeforeResponse(ExchangeError::Client(timed_out()))),
        };
        match tokio::time::timeout(t.write, backend.write_all(&rbuf[..n])).await {
            Ok(Ok(())) => remaining -= n as u64,
            Ok(Err(e)) => return Err(Attempt::BeforeResponse(upstream_err(e))),
            Err(_) => return Err(Attempt::BeforeResponse(upstream_err(timed_out()))),
        }
    }

    // The response head (after any interim 1xx ones, relayed as they come).
    let mut filled = 0;
    // Nothing at all came back yet: a broken connection may be a stale one.
    let mut received = false;
    let resp = loop {
        if filled > 0 {
            out.clear();
            match framing::parse(&rbuf[..filled], h.method == "HEAD", out, req.extra) {
                Ok(Some(r)) if r.status < 200 => {
                    out.extend_from_slice(b"\r\n");
                    write_client(io, out).await.map_err(Attempt::BeforeResponse)?;
                    rbuf.copy_within(r.len..filled, 0);
                    filled -= r.len;
                    continue;
                }
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(source) => return Err(Attempt::BeforeResponse(ExchangeError::BadResponse { addr, source })),
            }
        }
        if filled == rbuf.len() {
            if rbuf.len() >= MAX_RESPONSE_HEAD {
                return Err(Attempt::BeforeResponse(ExchangeError::BadResponse {
                    addr,
                    source: BadResponse::TooLarge,
                }));
            }
            rbuf.resize(rbuf.len() * 2, 0);
        }
        let n = match tokio::time::timeout(t.read, backend.read(&mut rbuf[filled..])).await {
            Ok(Ok(0)) if !received => return Err(Attempt::Stale(ExchangeError::Closed(addr))),
            Ok(Ok(0)) => return Err(Attempt::BeforeResponse(ExchangeError::Closed(addr))),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if !received => return Err(Attempt::Stale(upstream_err(e))),
            Ok(Err(e)) => return Err(Attempt::BeforeResponse(upstream_err(e))),
            Err(_) => return Err(Attempt::BeforeResponse(ExchangeError::ReadTimeout(addr))),
        };
        filled += n;
        received = true;
    };
    let status = resp.status;
    if h.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let after_head = |e| Attempt::AfterHead(e, status);

    // The body, by its framing.
    let mut reusable = resp.reusable;
    let avail = &rbuf[resp.len..filled];
    match resp.body {
        Body::Empty => {
            reusable &= avail.is_empty();
            write_client(io, out).await.map_err(after_head)?;
        }
        Body::Length(n) => {
            let first = usize::try_from(n).map_or(avail.len(), |n| n.min(avail.len()));
            reusable &= first == avail.len();
            out.extend_from_slice(&avail[..first]);
            write_client(io, out).await.map_err(after_head)?;
            let mut remaining = n - first as u64;
            while remaining > 0 {
                let want = usize::try_from(remaining).map_or(rbuf.len(), |r| r.min(rbuf.len()));
                let got = read_backend(backend, addr, &mut rbuf[..want], t.read)
                    .await
                    .map_err(after_head)?;
                if got == 0 {
                    return Err(after_head(ExchangeError::Closed(addr)));
                }
                write_client(io, &rbuf[..got]).await.map_err(after_head)?;
                remaining -= got as u64;
            }
        }
        Body::Chunked => {
            let mut scan = Chunked::default();
            let end = scan
                .feed(avail)
                .map_err(|source| after_head(ExchangeError::BadResponse { addr, source }))?;
            let take = end.unwrap_or(avail.len());
            reusable &= take == avail.len();
            out.extend_from_slice(&avail[..take]);
            write_client(io, out).await.map_err(after_head)?;
            let mut done = end.is_some();
            while !done {
                let got = read_backend(backend, addr, rbuf, t.read).await.map_err(after_head)?;
                if got == 0 {
                    return Err(after_head(ExchangeError::Closed(addr)));
                }
                let end = scan
                    .feed(&rbuf[..got])
                    .map_err(|source| after_head(ExchangeError::BadResponse { addr, source }))?;
                let take = end.unwrap_or(got);
                reusable &= take == got;
                write_client(io, &rbuf[..take]).await.map_err(after_head)?;
                done = end.is_some();
            }
        }
        // Re-chunked, so the client connection outlives the backend's.
        Body::Close => {
            chunk(out, avail);
            write_client(io, out).await.map_err(after_head)?;
            loop {
                let got = read_backend(backend, addr, rbuf, t.read).await.map_err(after_head)?;
                if got == 0 {
                    write_client(io, b"0\r\n\r\n").await.map_err(after_head)?;
                    break;
                }
                out.clear();
                chunk(out, &rbuf[..got]);
                write_client(io, out).await.map_err(after_head)?;
            }
        }
    }
    io.flush().await.map_err(|e| after_head(ExchangeError::Client(e)))?;
    Ok(Done {
        upstream: addr,
        status,
        reusable,
    })
}

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

async fn write_client(io: &mut Stream, bytes: &[u8]) -> Result<(), ExchangeError> {
    match tokio::time::timeout(CLIENT_TIMEOUT, io.write_all(bytes)).await {
        Ok(r) => r.map_err(ExchangeError::Client),
        Err(_) => Err(ExchangeError::Client(timed_out())),
    }
}

/// Appends `data` as one chunk; nothing when it is empty (the last chunk,
/// `0 CRLF CRLF`, is written apart).
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    if !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

fn timed_out() -> io::Error {
    io::ErrorKind::TimedOut.into()
}

/// Writes `out` to the client and flushes.
async fn send(io: &mut Stream, out: &[u8]) -> Result<(), ExchangeError> {
    write_client(io, out).await?;
    io.flush().await.map_err(ExchangeError::Client)
}

/// Answers 502 before any response went out; returns the status sent (0
/// if the client is gone).
async fn reply_502(io: &mut Stream, out: &mut Vec<u8>) -> u16 {
    reply(io, out, 502).await
}

async fn reply(io: &mut Stream, out: &mut Vec<u8>, status: u16) -> u16 {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = format!("{status} {reason}\n");
    text(out, status, "text/plain; charset=utf-8", body.as_bytes(), &[], true);
    match send(io, out).await {
        Ok(()) => status,
        Err(_) => 0,
    }
}

/// A whole response of the gateway's own into `out`.
fn text(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8], extra: &[(&str, &HeaderValue)], close: bool) {
    use std::io::Write;
    out.clear();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}
