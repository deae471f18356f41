//! HTTP/2 to backends (pools with `http2 = true`), so gRPC and h2-only
//! backends work end to end: one multiplexed connection per upstream (ALPN
//! `h2` over TLS, prior knowledge over plain TCP), kept in [`Shared`] and
//! reused by every stream, PINGed every `http2_keepalive_interval_ms`
//! (dropped when a PING goes unanswered); request and response bodies
//! streamed both ways at once under both sides' flow control; trailers
//! relayed both ways (`grpc-status`, `grpc-message`). The backend's head
//! comes from the one trusted-header writer ([`super::headers`]), parsed
//! back into HTTP/2 fields, so every client sends the same headers.
//!
//! [`forward`] serves both client protocols through [`Client`]: an HTTP/2
//! client's stream ([`Stream`]) and an HTTP/1.x request
//! ([`super::h1_to_h2`]). Failures take the same retry decision as the
//! HTTP/1.1 relay ([`Retry`]), and feed passive ejection the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::pages::Branded;
use super::pool::{Pool, Upstream};
use super::relay::{Attempt, Done, ExchangeError, Failed, Retry};
use super::upstream_tls::{self, Conn, ConnectError};
use crate::config::upstream::H2Keepalive;
use crate::registry::Snapshot;

/// An upstream's HTTP/2 connection, shared by the streams that use it.
#[derive(Debug, Default)]
pub struct Shared(Mutex<Option<Kept>>);

/// A kept HTTP/2 connection.
#[derive(Debug, Clone)]
struct Kept {
    /// Tells connections apart (a retry avoids the one that broke).
    id: u64,
    sender: SendRequest<Bytes>,
    /// Cleared by the connection's task when it ends (closed by either
    /// side, failed, or dropped after an unanswered PING).
    alive: Arc<AtomicBool>,
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

impl Shared {
    /// The kept connection, unless it ended or is `avoid`.
    fn get(&self, avoid: Option<u64>) -> Option<Kept> {
        let slot = self.0.lock().ok()?;
        let kept = slot.as_ref()?;
        (kept.alive.load(Ordering::Relaxed) && Some(kept.id) != avoid).then(|| kept.clone())
    }

    fn set(&self, kept: Kept) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(kept);
        }
    }

    /// Forgets connection `id`, if it is still the kept one.
    fn clear(&self, id: u64) {
        if let Ok(mut slot) = self.0.lock() {
            if slot.as_ref().is_some_and(|k| k.id == id) {
                *slot = None;
            }
        }
    }

    /// Whether a live connection is kept (for tests and the admin view).
    pub fn is_open(&self) -> bool {
        self.get(None).is_some()
    }
}

/// Largest stream window the gateway grants a backend (gRPC streams carry
/// big messages; the client's own window still paces what is read).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// The client side of a request forwarded over HTTP/2.
// Implemented and called by the engine only (no `Send` bound needed).
#[allow(async_fn_in_trait)]
pub trait Client {
    /// GET, HEAD or OPTIONS without a body: may be sent again after a
    /// failure before any response byte.
    fn replayable(&self) -> bool;
    /// The request ends with its head.
    fn bodiless(&self) -> bool;
    /// Sends the body on `send` (`None` when bodiless) while the response
    /// is awaited ([`head`]) and relayed; the status relayed.
    async fn exchange(
        &mut self,
        response: ResponseFuture,
        send: Option<SendStream<Bytes>>,
        addr: SocketAddr,
    ) -> Result<u16, Attempt>;
    /// Answers `status` (0: just end); the status sent, or 0.
    async fn fail(&mut self, status: u16) -> u16;
}

/// Forwards `request` to an upstream of `pool` over HTTP/2 and relays the
/// response to `client`. An upstream that cannot be connected to is marked
/// down and the next one tried; a stream that breaks before any response
/// byte is sent again when that is safe (a replayable request, or one the
/// backend refused unprocessed before any body went), on a fresh
/// connection or another upstream, as [`Retry`] decides for both
/// protocols. Nothing is sent twice once the backend may have acted on it.
/// Each outcome feeds the upstream's passive ejection.
/// `request` is the backend's request ([`backend_request`]), or why it
/// could not be made (answered 502).
pub async fn forward(
    snap: &Snapshot,
    pool: &Pool,
    request: Result<http::Request<()>, ExchangeError>,
    client: &mut impl Client,
) -> Result<Done, Failed> {
    let request = match request {
        Ok(r) => r,
        Err(error) => {
            let status = client.fail(error.status()).await;
            return Err(Failed {
                error,
                status,
                upstream: None,
            });
        }
    };
    let mut retry = Retry::start(pool);
    // The connection the last attempt broke on.
    let mut broken = None;
    loop {
        let (index, up, conn) = match open(snap, pool, &mut retry, broken).await {
            Ok(x) => x,
            Err((error, upstream)) => {
                let status = client.fail(error.status()).await;
                return Err(Failed {
                    error,
                    status,
                    upstream,
                });
            }
        };
        let addr = up.addr;
        let bodiless = client.bodiless();
        let mut sender = conn.sender;
        let (attempt, unsent) = match sender.send_request(request.clone(), bodiless) {
            Ok((response, send)) => (
                client.exchange(response, (!bodiless).then_some(send), addr).await,
                false,
            ),
            // The connection closed since it was ready: nothing left.
            Err(e) => (Err(stream_failed(addr, e)), true),
        };
        let (error, status) = match attempt {
            Ok(status) => {
                match status {
                    500..=599 => pool.upstream_failed(&up),
                    _ => up.health.record_success(),
                }
                return Ok(Done {
                    upstream: addr,
                    status,
                    reusable: true,
                });
            }
            Err(Attempt::Stale(error)) => {
                let (unprocessed, connection_broke) = match error {
                    ExchangeError::Refused { .. } => (true, true),
                    ExchangeError::Reset { reason, .. } => (reason == h2::Reason::REFUSED_STREAM, false),
                    _ => (false, true),
                };
                let safe = unsent || client.replayable() || (unprocessed && bodiless);
                // A stream the backend reset says nothing of the connection:
                // only a broken kept connection may be a stale one.
                let stale = conn.reused && connection_broke;
                if retry.broke_before_response(pool, index, &up, stale, safe) {
                    broken = Some(conn.id);
                    continue;
                }
                let status = client.fail(error.status()).await;
                (error, status)
            }
            Err(Attempt::BeforeResponse(error)) => {
                if error.upstream_fault() {
                    pool.upstream_failed(&up);
                }
                let status = client.fail(error.status()).await;
                (error, status)
            }
            Err(Attempt::AfterHead(error, status)) => {
                if error.upstream_fault() {
                    pool.upstream_failed(&up);
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

/// A ready sender on an upstream's HTTP/2 connection.
struct Opened {
    sender: SendRequest<Bytes>,
    id: u64,
    /// The upstream's kept connection (it may have gone stale).
    reused: bool,
}

/// The next upstream [`Retry`] picks and a ready sender to it: its kept
/// connection (not `broken`), else a new one (an upstream that fails to
/// connect is marked down and the next one tried, as for HTTP/1.1).
async fn open<'p>(
    snap: &Snapshot,
    pool: &'p Pool,
    retry: &mut Retry,
    broken: Option<u64>,
) -> Result<(usize, std::borrow::Cow<'p, Arc<Upstream>>, Opened), (ExchangeError, Option<SocketAddr>)> {
    let gw = &snap.config.gateway;
    loop {
        let Some((index, up)) = retry.select(pool) else {
            return Err((ExchangeError::NoUpstream, None));
        };
        if let Some(kept) = up.h2.get(broken) {
            match tokio::time::timeout(gw.timeouts.connect, kept.sender.clone().ready()).await {
                Ok(Ok(sender)) => {
                    let opened = Opened {
                        sender,
                        id: kept.id,
                        reused: true,
                    };
                    return Ok((index, up, opened));
                }
                // Closed (GOAWAY, reset) or saturated: a new connection.
                _ => up.h2.clear(kept.id),
            }
        }
        match connect(&up, pool, gw.timeouts.connect).await {
            Ok(kept) => {
                let opened = Opened {
                    sender: kept.sender.clone(),
                    id: kept.id,
                    reused: false,
                };
                up.h2.set(kept);
                return Ok((index, up, opened));
            }
            Err(source) => {
                if !retry.connect_failed(pool, index, &up, gw.upstream_down) {
                    return Err((ExchangeError::Connect { addr: up.addr, source }, Some(up.addr)));
                }
            }
        }
    }
}

/// Opens a connection and runs the HTTP/2 handshake, within `timeout`; the
/// connection is driven by a task of its own ([`drive`]) until every
/// sender is gone, the backend closes it, or a PING goes unanswered.
async fn connect(up: &Upstream, pool: &Pool, timeout: Duration) -> Result<Kept, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let conn = upstream_tls::connect(up, timeout, true).await?;
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(super::relay::MAX_RESPONSE_HEAD as u32)
        .enable_push(false);
    let handshake = tokio::time::timeout_at(deadline, builder.handshake::<_, Bytes>(conn)).await;
    let (sender, mut connection) = match handshake {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(ConnectError::Handshake(std::io::Error::other(e))),
        Err(_) => return Err(ConnectError::Handshake(std::io::ErrorKind::TimedOut.into())),
    };
    let keepalive = pool.h2_keepalive.and_then(|k| connection.ping_pong().map(|p| (k, p)));
    let alive = Arc::new(AtomicBool::new(true));
    let (addr, name, ended) = (up.addr, pool.name.clone(), alive.clone());
    tokio::spawn(async move {
        drive(connection, keepalive, addr, &name).await;
        ended.store(false, Ordering::Relaxed);
    });
    let ready = tokio::time::timeout_at(deadline, sender.ready()).await;
    let sender = match ready {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Handshake(std::io::Error::other(e))),
        Err(_) => return Err(ConnectError::Handshake(std::io::ErrorKind::TimedOut.into())),
    };
    Ok(Kept {
        id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        sender,
        alive,
    })
}

/// Runs a backend connection until it ends; with `keepalive`, sends a PING
/// every interval and drops the connection (its streams fail, new requests
/// open another) when one is not answered within the timeout.
async fn drive(
    connection: h2::client::Connection<Conn, Bytes>,
    keepalive: Option<(H2Keepalive, h2::PingPong)>,
    addr: SocketAddr,
    pool: &str,
) {
    tokio::pin!(connection);
    let Some((k, mut pings)) = keepalive else {
        if let Err(e) = connection.await {
            tracing::debug!(upstream = %addr, error = %e, "HTTP/2 backend connection ended");
        }
        return;
    };
    let watch = async {
        loop {
            tokio::time::sleep(k.interval).await;
            match tokio::time::timeout(k.timeout, pings.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                // The connection failed: it ends by itself.
                Ok(Err(_)) => std::future::pending::<()>().await,
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        ended = &mut connection => {
            if let Err(e) = ended {
                tracing::debug!(upstream = %addr, error = %e, "HTTP/2 backend connection ended");
            }
        }
        () = watch => {
            tracing::warn!(
                pool,
                upstream = %addr,
                timeout_ms = k.timeout.as_millis() as u64,
                "HTTP/2 backend connection dropped: its PING was not answered in time"
            );
        }
    }
}

/// How a stream failed before its response head: left out by the
/// backend's GOAWAY, reset by the backend (`REFUSED_STREAM`: unprocessed),
/// broken with its connection (maybe a stale one), or refused by the
/// gateway's own h2 for what the backend sent (a response came: never
/// again).
fn stream_failed(addr: SocketAddr, e: h2::Error) -> Attempt {
    if let (Some(reason), true) = (e.reason(), e.is_remote()) {
        return Attempt::Stale(match e.is_go_away() {
            true => ExchangeError::Refused { addr, reason },
            false => ExchangeError::Reset { addr, reason },
        });
    }
    let ours = e.is_library();
    let error = ExchangeError::Upstream {
        addr,
        source: std::io::Error::other(e),
    };
    match ours {
        true => Attempt::BeforeResponse(error),
        false => Attempt::Stale(error),
    }
}

/// One response head from an HTTP/2 backend.
pub enum Head {
    /// An interim (1xx) response: relayed, then the next head is awaited.
    Interim(http::Response<()>),
    Final(http::Response<RecvStream>),
}

/// The response heads of one stream to an HTTP/2 backend: interim ones
/// as they come (at most [`framing::MAX_INTERIM`]), then the final one.
///
/// [`framing::MAX_INTERIM`]: super::framing::MAX_INTERIM
pub struct Heads {
    response: ResponseFuture,
    addr: SocketAddr,
    read_timeout: Duration,
    interim: usize,
}

impl Heads {
    pub fn new(response: ResponseFuture, addr: SocketAddr, read_timeout: Duration) -> Heads {
        Heads {
            response,
            addr,
            read_timeout,
            interim: 0,
        }
    }

    /// The next head, each within the read timeout; while `uploading` says
    /// the request body still flows, the wait goes on (the body's own
    /// timeouts bound it).
    pub async fn next(&mut self, uploading: Option<&AtomicBool>) -> Result<Head, Attempt> {
        let addr = self.addr;
        loop {
            let step = std::future::poll_fn(|cx| {
                match self.response.poll_informational(cx) {
                    std::task::Poll::Ready(Some(r)) => return std::task::Poll::Ready(r.map(Head::Interim)),
                    std::task::Poll::Ready(None) | std::task::Poll::Pending => {}
                }
                std::pin::Pin::new(&mut self.response)
                    .poll(cx)
                    .map(|r| r.map(Head::Final))
            });
            match tokio::time::timeout(self.read_timeout, step).await {
                Ok(Ok(Head::Interim(r))) => {
                    self.interim += 1;
                    if self.interim > super::framing::MAX_INTERIM {
                        let source = super::framing::BadResponse::Interim;
                        return Err(Attempt::BeforeResponse(ExchangeError::BadResponse { addr, source }));
                    }
                    return Ok(Head::Interim(r));
                }
                Ok(Ok(head)) => return Ok(head),
                Ok(Err(e)) => return Err(stream_failed(addr, e)),
                Err(_) if uploading.is_some_and(|u| u.load(Ordering::Relaxed)) => continue,
                Err(_) => return Err(Attempt::BeforeResponse(ExchangeError::ReadTimeout(addr))),
            }
        }
    }
}

/// An HTTP/2 client's stream on its way to an HTTP/2 backend.
pub struct Stream<'r> {
    pub method: &'r http::Method,
    /// The client's body, unless the request ended with its headers.
    pub body: Option<&'r mut RecvStream>,
    pub respond: &'r mut SendResponse<Bytes>,
    /// Headers added to the response (rate limits).
    pub extra: &'r [(&'static str, &'r HeaderValue)],
    /// The tenant's 502 and 504.
    pub branded: Option<&'r Branded<'r>>,
    /// Names the client's trailers may not carry ([`reserved_names`]).
    pub reserved: Vec<HeaderName>,
    pub timeouts: crate::config::Timeouts,
    pub client_timeout: Duration,
}

impl Client for Stream<'_> {
    fn replayable(&self) -> bool {
        self.body.is_none()
            && matches!(
                *self.method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            )
    }

    fn bodiless(&self) -> bool {
        self.body.is_none()
    }

    async fn exchange(
        &mut self,
        response: ResponseFuture,
        send: Option<SendStream<Bytes>>,
        addr: SocketAddr,
    ) -> Result<u16, Attempt> {
        let head_request = *self.method == http::Method::HEAD;
        let (t, ct) = (self.timeouts, self.client_timeout);
        let Stream {
            body,
            respond,
            extra,
            reserved,
            ..
        } = self;
        let pump = async {
            match (body.as_deref_mut(), send) {
                (Some(body), Some(send)) => pump(body, send, addr, t.write, ct, reserved).await,
                _ => Ok(()),
            }
        };
        let relay = relay(response, respond, addr, extra, t.read, ct, head_request);
        // The response decides: once it ended (or failed), the rest of an
        // upload is moot.
        tokio::pin!(pump, relay);
        let mut pumped = None;
        let relayed = loop {
            tokio::select! {
                p = &mut pump, if pumped.is_none() => pumped = Some(p),
                r = &mut relay => break r,
            }
        };
        match (relayed, pumped) {
            (Ok(status), pumped) => {
                if let Some(Err(e)) = pumped {
                    tracing::debug!(error = %e, "request body did not all reach the HTTP/2 backend");
                }
                Ok(status)
            }
            // The client went away mid-body: not the backend's fault.
            (
                Err(
                    Attempt::Stale(ExchangeError::Upstream { .. })
                    | Attempt::BeforeResponse(ExchangeError::Upstream { .. }),
                ),
                Some(Err(client @ (ExchangeError::H2(_) | ExchangeError::ClientTimeout))),
            ) => Err(Attempt::BeforeResponse(client)),
            (Err(e), _) => Err(e),
        }
    }

    async fn fail(&mut self, status: u16) -> u16 {
        let head_request = *self.method == http::Method::HEAD;
        super::h2::fail(self.respond, status, head_request, self.branded)
    }
}

/// The backend's request: the HTTP/1.1 head the trusted-header writer
/// made, as HTTP/2 fields (`host` becomes `:authority`; connection-level
/// fields go, `te: trailers` stays when the client sent it).
pub fn backend_request(
    pool: &Pool,
    head: &[u8],
    method: &http::Method,
    te_trailers: bool,
) -> Result<http::Request<()>, ExchangeError> {
    let bad = |what: &str| ExchangeError::Upstream {
        addr: pool
            .upstreams
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |u| u.addr),
        source: std::io::Error::other(format!("request head for an HTTP/2 backend: {what}")),
    };
    let count = head.windows(2).filter(|w| w == b"\r\n").count();
    let mut fields = vec![httparse::EMPTY_HEADER; count];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("does not parse")),
    }
    let path = parsed.path.unwrap_or("/");
    let mut authority = None;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 1);
    for h in parsed.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name == "host" {
            authority = std::str::from_utf8(h.value).ok();
            continue;
        }
        if super::headers::connection_level(&name) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Err(bad("a field HTTP/2 cannot carry"));
        };
        headers.append(n, v);
    }
    if te_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let tls = pool.upstreams.first().is_some_and(|u| u.tls.is_some());
    let scheme = if tls { "https" } else { "http" };
    let authority = authority.filter(|a| !a.is_empty()).unwrap_or("localhost");
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| bad("the target and authority do not form a URI"))?;
    let mut request = http::Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Header names a client's trailers may not carry to the backend: the ones
/// the gateway vouches for in the head.
pub fn reserved_names(snap: &Snapshot) -> Vec<HeaderName> {
    let gw = &snap.config.gateway;
    let mut names = vec![gw.tenant_header.clone()];
    names.extend(gw.strip_headers.iter().cloned());
    names
}

fn reserved(name: &HeaderName, names: &[HeaderName]) -> bool {
    let n = name.as_str();
    names.contains(name)
        || n.starts_with("x-forwarded-")
        || matches!(n, "forwarded" | "x-real-ip" | "x-request-id")
        || super::headers::connection_level(n)
}

/// The client's body (then its trailers) to the backend, as the backend's
/// window allows; the client's window is given back as bytes leave.
async fn pump(
    body: &mut RecvStream,
    mut send: SendStream<Bytes>,
    addr: SocketAddr,
    write_timeout: Duration,
    client_timeout: Duration,
    names: &[HeaderName],
) -> Result<(), ExchangeError> {
    let upstream = |e: h2::Error| ExchangeError::Upstream {
        addr,
        source: std::io::Error::other(e),
    };
    loop {
        let data = match tokio::time::timeout(client_timeout, body.data()).await {
            Ok(Some(Ok(d))) => d,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(ExchangeError::H2(e));
            }
            Err(_) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(ExchangeError::ClientTimeout);
            }
        };
        let n = data.len();
        super::h2::send_data(&mut send, data, false, write_timeout)
            .await
            .map_err(upstream)?;
        let _ = body.flow_control().release_capacity(n);
    }
    let trailers = match tokio::time::timeout(client_timeout, body.trailers()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(ExchangeError::H2(e)),
        Err(_) => return Err(ExchangeError::ClientTimeout),
    };
    match trailers {
        Some(mut t) => {
            let drop: Vec<HeaderName> = t.keys().filter(|n| reserved(n, names)).cloned().collect();
            for n in drop {
                t.remove(n);
            }
            send.send_trailers(t).map_err(upstream)
        }
        None => send.send_data(Bytes::new(), true).map_err(upstream),
    }
}

/// The backend's response to the client: head (with `extra`), body under
/// the client's window, trailers. `Err` carries the status the client
/// already got (0: none yet).
#[allow(clippy::too_many_arguments)]
async fn relay(
    response: h2::client::ResponseFuture,
    respond: &mut SendResponse<Bytes>,
    addr: SocketAddr,
    extra: &[(&'static str, &HeaderValue)],
    read_timeout: Duration,
    client_timeout: Duration,
    head_request: bool,
) -> Result<u16, Attempt> {
    let upstream = |e: h2::Error| ExchangeError::Upstream {
        addr,
        source: std::io::Error::other(e),
    };
    // Interim responses go to the client as they come (103 Early Hints);
    // one the client cannot take is dropped.
    let mut heads = Heads::new(response, addr, read_timeout);
    let (parts, mut body) = loop {
        match heads.next(None).await? {
            Head::Interim(r) if r.status() != http::StatusCode::SWITCHING_PROTOCOLS => {
                let _ = respond.send_informational(r);
            }
            Head::Interim(_) => {}
            Head::Final(r) => break r.into_parts(),
        }
    };
    let status = parts.status.as_u16();
    let mut out = http::Response::new(());
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    for (name, value) in extra {
        out.headers_mut().insert(*name, (*value).clone());
    }
    let end = body.is_end_stream() || head_request;
    let mut send = respond
        .send_response(out, end)
        .map_err(|e| Attempt::BeforeResponse(ExchangeError::H2(e)))?;
    if end {
        return Ok(status);
    }
    let after = |e| Attempt::AfterHead(e, status);
    loop {
        let data = match tokio::time::timeout(read_timeout, body.data()).await {
            Ok(Some(Ok(d))) => d,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(after(upstream(e)));
            }
            Err(_) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(after(ExchangeError::ReadTimeout(addr)));
            }
        };
        let n = data.len();
        super::h2::send_data(&mut send, data, false, client_timeout)
            .await
            .map_err(|e| after(ExchangeError::H2(e)))?;
        let _ = body.flow_control().release_capacity(n);
    }
    let trailers = match tokio::time::timeout(read_timeout, body.trailers()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            send.send_reset(h2::Reason::INTERNAL_ERROR);
            return Err(after(upstream(e)));
        }
        Err(_) => {
            send.send_reset(h2::Reason::CANCEL);
            return Err(after(ExchangeError::ReadTimeout(addr)));
        }
    };
    let sent = match trailers {
        Some(t) => send.send_trailers(t),
        None => send.send_data(Bytes::new(), true),
    };
    sent.map_err(|e| after(ExchangeError::H2(e)))?;
    Ok(status)
}
