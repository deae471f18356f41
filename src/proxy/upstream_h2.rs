//! HTTP/2 to backends (pools with `http2 = true`), for the streams of
//! HTTP/2 clients, so gRPC works end to end: one multiplexed connection per
//! upstream (ALPN `h2` over TLS, prior knowledge over plain TCP), kept in
//! [`Shared`] and reused by every stream; request and response bodies
//! streamed both ways at once under both sides' flow control; trailers
//! relayed both ways (`grpc-status`, `grpc-message`). The backend's head
//! comes from the one trusted-header writer ([`super::headers`]), parsed
//! back into HTTP/2 fields, so both halves send the same headers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::pages::Branded;
use super::pool::{Pool, Tried, Upstream};
use super::relay::{Done, ExchangeError, Failed};
use super::upstream_tls::{self, ConnectError};
use crate::registry::Snapshot;

/// An upstream's HTTP/2 connection, shared by the streams that use it.
#[derive(Debug, Default)]
pub struct Shared(Mutex<Option<SendRequest<Bytes>>>);

impl Shared {
    fn get(&self) -> Option<SendRequest<Bytes>> {
        self.0.lock().ok()?.clone()
    }
    fn set(&self, s: Option<SendRequest<Bytes>>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = s;
        }
    }
}

/// Largest stream window the gateway grants a backend (gRPC streams carry
/// big messages; the client's own window still paces what is read).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// One HTTP/2 client stream as it goes to an HTTP/2 backend.
pub struct Request<'r> {
    /// The backend's head, as [`super::headers::write_upstream`] wrote it
    /// for HTTP/1.1 (request line, `host`, headers, blank line).
    pub head: &'r [u8],
    pub method: &'r http::Method,
    /// The client sent `te: trailers` (gRPC does; the backend may insist).
    pub te_trailers: bool,
    /// The client's body, unless the request ended with its headers.
    pub body: Option<&'r mut RecvStream>,
    /// Headers added to the response (rate limits).
    pub extra: &'r [(&'static str, &'r HeaderValue)],
    /// The tenant's 502 and 504.
    pub branded: Option<&'r Branded<'r>>,
}

/// Forwards `req` to an upstream of `pool` over HTTP/2 and relays the
/// response on `respond`. An upstream whose connection cannot be opened is
/// marked down and the next one tried; a kept connection that turns out
/// closed is replaced once (nothing was sent on it).
pub async fn forward(
    snap: &Snapshot,
    pool: &Pool,
    mut req: Request<'_>,
    respond: &mut SendResponse<Bytes>,
) -> Result<Done, Failed> {
    let gw = &snap.config.gateway;
    let t = gw.timeouts;
    let head_request = *req.method == http::Method::HEAD;
    let fail = |respond: &mut SendResponse<Bytes>, error: ExchangeError, upstream: Option<SocketAddr>| {
        let status = super::h2::fail(respond, error.status(), head_request, req.branded);
        Err(Failed {
            error,
            status,
            upstream,
        })
    };
    let request = match backend_request(pool, &req) {
        Ok(r) => r,
        Err(error) => return fail(respond, error, None),
    };
    let (up, mut sender) = match open(snap, pool).await {
        Ok(x) => x,
        Err((error, addr)) => return fail(respond, error, addr),
    };
    let addr = up.addr;
    let end = req.body.is_none();
    let (response, send) = match sender.send_request(request, end) {
        Ok(x) => x,
        Err(e) => {
            up.h2.set(None);
            let error = ExchangeError::Upstream {
                addr,
                source: std::io::Error::other(e),
            };
            return fail(respond, error, Some(addr));
        }
    };
    let reserved = reserved_names(snap);
    let ct = gw.client_timeout;
    let (relayed, pumped) = {
        let pump = async {
            match req.body.as_deref_mut() {
                Some(body) => pump(body, send, addr, t.write, ct, &reserved).await,
                None => Ok(()),
            }
        };
        let relay = relay(response, respond, addr, req.extra, t.read, ct, head_request);
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
        (relayed, pumped.unwrap_or(Ok(())))
    };
    match relayed {
        Ok(status) => {
            if let Err(e) = pumped {
                tracing::debug!(error = %e, "request body did not all reach the HTTP/2 backend");
            }
            Ok(Done {
                upstream: addr,
                status,
                reusable: true,
            })
        }
        Err((error, 0)) => {
            let error = match (error, pumped) {
                // The client went away mid-body: not the backend's fault.
                (ExchangeError::Upstream { .. }, Err(client @ ExchangeError::H2(_))) => client,
                (ExchangeError::Upstream { .. }, Err(client @ ExchangeError::ClientTimeout)) => client,
                (e, _) => e,
            };
            fail(respond, error, Some(addr))
        }
        Err((error, status)) => Err(Failed {
            error,
            status,
            upstream: Some(addr),
        }),
    }
}

/// A ready sender on an upstream's HTTP/2 connection: its kept one, else a
/// new one (an upstream that fails to connect is marked down, the next
/// one tried, as for HTTP/1.1).
async fn open(
    snap: &Snapshot,
    pool: &Pool,
) -> Result<(Arc<Upstream>, SendRequest<Bytes>), (ExchangeError, Option<SocketAddr>)> {
    let gw = &snap.config.gateway;
    let limit = pool.upstreams.len().min(64) as u32;
    let mut tried = Tried::default();
    loop {
        let Some((index, up)) = pool.select(&tried) else {
            return Err((ExchangeError::NoUpstream, None));
        };
        if let Some(kept) = up.h2.get() {
            match tokio::time::timeout(gw.timeouts.connect, kept.ready()).await {
                Ok(Ok(ready)) => return Ok((up.into_owned(), ready)),
                // Closed (GOAWAY, reset) or saturated: a new connection.
                _ => up.h2.set(None),
            }
        }
        match connect(&up, gw.timeouts.connect).await {
            Ok(sender) => {
                up.h2.set(Some(sender.clone()));
                return Ok((up.into_owned(), sender));
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

/// Opens a connection and runs the HTTP/2 handshake, within `timeout`; the
/// connection is driven by a task of its own until every sender is gone.
async fn connect(up: &Upstream, timeout: Duration) -> Result<SendRequest<Bytes>, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let conn = upstream_tls::connect(up, timeout, true).await?;
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .enable_push(false);
    let handshake = tokio::time::timeout_at(deadline, builder.handshake::<_, Bytes>(conn)).await;
    let (sender, connection) = match handshake {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(ConnectError::Handshake(std::io::Error::other(e))),
        Err(_) => return Err(ConnectError::Handshake(std::io::ErrorKind::TimedOut.into())),
    };
    let addr = up.addr;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(upstream = %addr, error = %e, "HTTP/2 backend connection ended");
        }
    });
    let ready = tokio::time::timeout_at(deadline, sender.ready()).await;
    match ready {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ConnectError::Handshake(std::io::Error::other(e))),
        Err(_) => Err(ConnectError::Handshake(std::io::ErrorKind::TimedOut.into())),
    }
}

/// The backend's request: the HTTP/1.1 head the trusted-header writer
/// made, as HTTP/2 fields (`host` becomes `:authority`; connection-level
/// fields go, `te: trailers` stays when the client sent it).
fn backend_request(pool: &Pool, req: &Request<'_>) -> Result<http::Request<()>, ExchangeError> {
    let bad = |what: &str| ExchangeError::Upstream {
        addr: pool
            .upstreams
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |u| u.addr),
        source: std::io::Error::other(format!("request head for an HTTP/2 backend: {what}")),
    };
    let count = req.head.windows(2).filter(|w| w == b"\r\n").count();
    let mut fields = vec![httparse::EMPTY_HEADER; count];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(req.head) {
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
    if req.te_trailers {
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
    *request.method_mut() = req.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Header names a client's trailers may not carry to the backend: the ones
/// the gateway vouches for in the head.
fn reserved_names(snap: &Snapshot) -> Vec<HeaderName> {
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
) -> Result<u16, (ExchangeError, u16)> {
    let upstream = |e: h2::Error| ExchangeError::Upstream {
        addr,
        source: std::io::Error::other(e),
    };
    // The head may wait for a streamed request body: bounded by the read
    // timeout per response frame, not for the whole upload.
    let head = match tokio::time::timeout(read_timeout, response).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err((upstream(e), 0)),
        Err(_) => return Err((ExchangeError::ReadTimeout(addr), 0)),
    };
    let (parts, mut body) = head.into_parts();
    let status = parts.status.as_u16();
    let mut out = http::Response::new(());
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    for (name, value) in extra {
        out.headers_mut().insert(*name, (*value).clone());
    }
    let end = body.is_end_stream() || head_request;
    let mut send = respond.send_response(out, end).map_err(|e| (ExchangeError::H2(e), 0))?;
    if end {
        return Ok(status);
    }
    let after = |e| (e, status);
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
