//! The HTTP/2 half: every stream of an HTTP/2 connection is decided by the
//! policy and forwarded to an HTTP/1.1 backend connection, its body
//! streamed, the response's chunked trailers relayed as HTTP/2 trailers
//! (gRPC needs them). The streams of one connection run on its task, next
//! to the connection itself.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::io::IoSlice;
use std::sync::atomic::AtomicBool;

use super::upstream_tls::Conn;
use tokio::io::AsyncWriteExt;

use super::authority;
use super::framing::{self, Body, Chunked, Line};
use super::headers::{self, digits, Outgoing};
use super::pages::{Branded, Prefs};
use super::policy::{Answer, Decision, Outcome, Policy, RequestFacts};
use super::relay::{
    duplex, forward, read_backend, response_head, send_head, settle, timed_out, write_all_vectored, Attempt, Done,
    Downstream, ExchangeError, BUF,
};
use super::ConnFacts;

/// Streams a client may have open at once (pingora's default too).
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Largest decoded request header list.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// Serves an HTTP/2 connection until the client closes it, it stays idle
/// for `client_timeout_ms`, or the gateway shuts down (then with GOAWAY,
/// letting streams in flight finish).
pub(super) async fn serve(policy: &Policy, io: Stream, facts: &ConnFacts, shutdown: &mut ShutdownWatch) {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);
    let ct = policy.registry.snapshot_guard().config.gateway.client_timeout;
    let mut conn = match tokio::time::timeout(ct, builder.handshake::<_, Bytes>(Unvectored(io))).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    // Declared first: the streams borrow it.
    let buffers = Buffers::default();
    let mut streams = FuturesUnordered::new();
    let mut closing = false;
    let stop = shutdown.changed();
    tokio::pin!(stop);
    let idle = tokio::time::sleep(ct);
    tokio::pin!(idle);
    loop {
        // Biased to the streams: every stream that can finish does so before
        // the connection is polled again, so their frames leave in one write
        // (at most the 100 open streams finish in a row).
        tokio::select! {
            biased;
            Some(()) = streams.next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + ct);
                }
            }
            accepted = conn.accept() => match accepted {
                // Streams the client reset stop counting towards its
                // concurrency limit, but their work goes on: at most 100 run
                // here at once whatever the client does (rapid reset,
                // CVE-2023-44487).
                Some(Ok((_, mut respond))) if streams.len() >= MAX_CONCURRENT_STREAMS as usize => {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
                Some(Ok((req, respond))) => streams.push(stream(policy, req, respond, facts, &buffers)),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                    break;
                }
                None => break,
            },
            _ = &mut stop, if !closing => {
                conn.graceful_shutdown();
                closing = true;
                idle.as_mut().reset(tokio::time::Instant::now() + ct);
            }
            // Idle: GOAWAY. Closing: a client that never acknowledges the
            // GOAWAY is dropped.
            _ = &mut idle, if closing || streams.is_empty() => {
                if closing {
                    break;
                }
                conn.graceful_shutdown();
                closing = true;
                idle.as_mut().reset(tokio::time::Instant::now() + ct);
            }
        }
    }
}

/// Decides, forwards and relays one stream.
async fn stream(
    policy: &Policy,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    facts: &ConnFacts,
    buffers: &Buffers,
) {
    let snap = policy.registry.snapshot();
    let (parts, mut body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut o = Outcome::begin(parts.method.as_str(), parts.uri.path());
    let authority = authority::of(&parts.headers, &parts.uri, true);
    let request = RequestFacts {
        method: parts.method.as_str(),
        target,
        authority,
        conn: facts,
        prefs: Prefs::scan(parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))),
        headers: &parts.headers,
    };
    let f = match policy.decide(&snap, &request, &mut o).await {
        Decision::Forward(f) => f,
        Decision::Answer(a) => {
            let head_request = parts.method == http::Method::HEAD;
            o.status = if answer(&mut respond, &a, head_request) {
                a.status
            } else {
                0
            };
            policy.record(&snap, &o);
            return;
        }
    };
    let mut out = Vec::with_capacity(512);
    // A body without a length goes to the backend chunked (h2 checks that
    // the DATA frames add up to a length the client gave).
    let has_body = !body.is_end_stream();
    let length = parts.headers.get(CONTENT_LENGTH).and_then(|v| digits(v.as_bytes()));
    // (An HTTP/2 backend gets DATA frames as they come.)
    let chunked = has_body && length.is_none() && !f.pool.http2;
    let outgoing = Outgoing {
        method: parts.method.as_str(),
        target: f.target.as_deref().unwrap_or(target),
        http2_host: Some(authority.unwrap_or_default()),
        length,
        chunked,
        upgrade: None,
    };
    let headers = || parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    let request_id = headers::write_upstream(&mut out, &outgoing, headers, &f.trusted);
    o.request_id = request_id.to_str().ok();
    let (pairs, n) = f.limit_headers();
    if f.pool.http2 {
        let te = parts.headers.get_all(http::header::TE).iter();
        let te_trailers = te
            .flat_map(|v| headers::tokens(v.as_bytes()))
            .any(|t| t.eq_ignore_ascii_case(b"trailers"));
        let request = super::upstream_h2::backend_request(f.pool, &out, &parts.method, te_trailers);
        let mut client = super::upstream_h2::Stream {
            method: &parts.method,
            body: has_body.then_some(&mut body),
            respond: &mut respond,
            extra: &pairs[..n],
            branded: f.branded.as_ref(),
            reserved: super::upstream_h2::reserved_names(&snap),
            timeouts: snap.config.gateway.timeouts,
            client_timeout: snap.config.gateway.client_timeout,
        };
        // Boxed: this branch's state is several KB, and every stream's future
        // (allocated and moved once per stream) would carry it otherwise.
        let result = Box::pin(super::upstream_h2::forward(&snap, f.pool, request, &mut client)).await;
        drop(f.admission);
        settle(policy, &snap, &mut o, &result, f.tenant, f.pool);
        return;
    }
    let req = Request {
        head: &out,
        method: &parts.method,
        body: has_body.then_some(&mut body),
        chunked,
        extra: &pairs[..n],
        client_timeout: snap.config.gateway.client_timeout,
    };
    let mut exchange = H2Exchange {
        req,
        branded: f.branded.as_ref(),
        respond: &mut respond,
        rbuf: buffers.take(),
        timeouts: snap.config.gateway.timeouts,
    };
    // A stream the client reset at once (rapid reset) costs no backend work.
    let reset = std::future::poll_fn(|cx| exchange.respond.poll_reset(cx)).now_or_never();
    let result = match reset {
        Some(_) => {
            drop(f.admission);
            policy.record(&snap, &o);
            return;
        }
        None => forward(&snap, f.pool, &mut exchange).await,
    };
    buffers.give(exchange.rbuf);
    drop(f.admission);
    settle(policy, &snap, &mut o, &result, f.tenant, f.pool);
}

/// An HTTP/2 request as it goes to the backend.
struct Request<'r> {
    /// The backend's request head, ready to send.
    head: &'r [u8],
    method: &'r http::Method,
    /// The client's body, unless the request ended with its headers.
    body: Option<&'r mut RecvStream>,
    /// Send the body chunked (the client gave no length).
    chunked: bool,
    /// Headers added to the response.
    extra: &'r [(&'static str, &'r HeaderValue)],
    /// The longest wait for the client's next body bytes.
    client_timeout: std::time::Duration,
}

impl Request<'_> {
    /// Whether a failed attempt on a reused connection may be sent again.
    fn replayable(&self) -> bool {
        self.body.is_none()
            && matches!(
                *self.method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            )
    }
}

/// Backend read buffers of one connection's streams, reused so that a
/// stream does not allocate and zero a fresh one.
#[derive(Default)]
struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    /// Buffers kept for reuse per connection.
    const KEEP: usize = 16;

    fn take(&self) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut b| b.pop());
        reused.unwrap_or_else(|| vec![0u8; BUF])
    }

    fn give(&self, mut buf: Vec<u8>) {
        // A buffer grown for a large response head goes back to the usual size.
        if buf.len() > BUF {
            buf.truncate(BUF);
            buf.shrink_to_fit();
        }
        if let Ok(mut b) = self.0.lock() {
            if b.len() < Self::KEEP {
                b.push(buf);
            }
        }
    }
}

/// One stream's exchange with the backend.
struct H2Exchange<'r, 's> {
    req: Request<'r>,
    /// The tenant's 502 and 504.
    branded: Option<&'r Branded<'r>>,
    respond: &'s mut SendResponse<Bytes>,
    rbuf: Vec<u8>,
    timeouts: crate::config::Timeouts,
}

impl Downstream for H2Exchange<'_, '_> {
    async fn attempt(&mut self, backend: &mut Conn, addr: SocketAddr) -> Result<Done, Attempt> {
        attempt(
            backend,
            addr,
            &mut self.req,
            self.respond,
            &mut self.rbuf,
            self.timeouts,
        )
        .await
    }

    async fn fail(&mut self, status: u16) -> u16 {
        fail(
            self.respond,
            status,
            *self.req.method == http::Method::HEAD,
            self.branded,
        )
    }

    fn replayable(&self) -> bool {
        self.req.replayable()
    }
}

/// One attempt on one backend connection.
async fn attempt(
    backend: &mut Conn,
    addr: SocketAddr,
    req: &mut Request<'_>,
    respond: &mut SendResponse<Bytes>,
    rbuf: &mut Vec<u8>,
    t: crate::config::Timeouts,
) -> Result<Done, Attempt> {
    send_head(backend, addr, req.head, &[], t.write).await?;
    let (method, extra, ct, chunked) = (req.method, req.extra, req.client_timeout, req.chunked);
    let Some(body) = req.body.as_deref_mut() else {
        return relay(backend, addr, method, extra, ct, respond, rbuf, t, None).await;
    };
    // Boxed: the duplex machinery stays out of the future of every stream
    // without a body (a larger future costs each stream its copies).
    let sent = Sent {
        method,
        extra,
        ct,
        chunked,
    };
    Box::pin(upload(backend, addr, body, sent, respond, rbuf, t)).await
}

/// What [`upload`] needs of the request besides its body.
struct Sent<'r> {
    method: &'r http::Method,
    extra: &'r [(&'static str, &'r HeaderValue)],
    ct: std::time::Duration,
    chunked: bool,
}

/// Full duplex: the body keeps flowing to the backend while its response is
/// relayed; the wait for the response head is not bounded by the backend
/// read timeout while it does.
async fn upload(
    backend: &mut Conn,
    addr: SocketAddr,
    body: &mut RecvStream,
    req: Sent<'_>,
    respond: &mut SendResponse<Bytes>,
    rbuf: &mut Vec<u8>,
    t: crate::config::Timeouts,
) -> Result<Done, Attempt> {
    let Sent {
        method,
        extra,
        ct,
        chunked,
    } = req;
    let uploading = AtomicBool::new(true);
    let (mut backend_r, mut backend_w) = backend.split();
    let pump = send_body(&mut backend_w, addr, body, chunked, t.write, ct);
    let relay = relay(
        &mut backend_r,
        addr,
        method,
        extra,
        ct,
        respond,
        rbuf,
        t,
        Some(&uploading),
    );
    let (mut done, pumped) = duplex(pump, relay, &uploading, || 0).await?;
    done.reusable &= pumped.is_ok();
    Ok(done)
}

/// Reads the response head (relaying interim ones as they come), sends the
/// client's head, then relays the body by its framing: chunked trailers
/// become HTTP/2 trailers.
#[allow(clippy::too_many_arguments)]
async fn relay(
    backend: &mut (impl tokio::io::AsyncRead + Unpin),
    addr: SocketAddr,
    method: &http::Method,
    extra: &[(&'static str, &HeaderValue)],
    ct: std::time::Duration,
    respond: &mut SendResponse<Bytes>,
    rbuf: &mut Vec<u8>,
    t: crate::config::Timeouts,
    uploading: Option<&AtomicBool>,
) -> Result<Done, Attempt> {
    // The response head, after any interim 1xx ones (relayed as they come).
    let mut filled = 0;
    let mut received = false;
    let head_request = *method == http::Method::HEAD;
    let mut headers = HeaderMap::with_capacity(16);
    let mut interim = 0;
    let resp = loop {
        headers.clear();
        let emit = |l: Line<'_>| {
            if let Line::Header(name, value) = l {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
                    headers.append(n, v);
                }
            }
        };
        let r = response_head(
            backend,
            addr,
            rbuf,
            &mut filled,
            &mut received,
            head_request,
            false,
            extra,
            t.read,
            uploading,
            emit,
        )
        .await?;
        if r.status >= 200 {
            break r;
        }
        interim += 1;
        if interim > framing::MAX_INTERIM {
            let source = framing::BadResponse::Interim;
            return Err(Attempt::BeforeResponse(ExchangeError::BadResponse { addr, source }));
        }
        let mut informational = http::Response::new(());
        *informational.status_mut() = status_code(r.status);
        *informational.headers_mut() = std::mem::take(&mut headers);
        // An interim response the client cannot take is dropped.
        let _ = respond.send_informational(informational);
        rbuf.copy_within(r.len..filled, 0);
        filled -= r.len;
    };
    for (name, value) in extra {
        headers.insert(*name, (*value).clone());
    }
    if !resp.date {
        headers.insert(http::header::DATE, framing::date());
    }
    let status = resp.status;
    let mut response = http::Response::new(());
    *response.status_mut() = status_code(status);
    *response.headers_mut() = headers;
    let empty = matches!(resp.body, Body::Empty | Body::Length(0));
    let client_err = |e| Attempt::BeforeResponse(ExchangeError::H2(e));
    let mut send = respond.send_response(response, empty).map_err(client_err)?;
    let after_head = |e| Attempt::AfterHead(e, status);
    let h2_err = |e| Attempt::AfterHead(ExchangeError::H2(e), status);

    let mut reusable = resp.reusable;
    let avail = &rbuf[resp.len..filled];
    match resp.body {
        Body::Empty | Body::Upgrade => reusable &= avail.is_empty(),
        Body::Length(n) => {
            let first = usize::try_from(n).map_or(avail.len(), |n| n.min(avail.len()));
            reusable &= first == avail.len();
            let mut remaining = n - first as u64;
            if first > 0 {
                send_data(&mut send, Bytes::copy_from_slice(&avail[..first]), remaining == 0, ct)
                    .await
                    .map_err(h2_err)?;
            }
            while remaining > 0 {
                let want = usize::try_from(remaining).map_or(rbuf.len(), |r| r.min(rbuf.len()));
                let got = read_backend(backend, addr, &mut rbuf[..want], t.read)
                    .await
                    .map_err(after_head)?;
                if got == 0 {
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Err(after_head(ExchangeError::Closed(addr)));
                }
                remaining -= got as u64;
                send_data(&mut send, Bytes::copy_from_slice(&rbuf[..got]), remaining == 0, ct)
                    .await
                    .map_err(h2_err)?;
            }
        }
        // Unchunked: HTTP/2 frames the data itself.
        Body::Chunked => {
            let mut scan = Chunked::keeping_trailers();
            let mut data = BytesMut::new();
            let mut chunk = &rbuf[resp.len..filled];
            loop {
                let end = scan
                    .feed(chunk, |d| data.extend_from_slice(d))
                    .map_err(|source| after_head(ExchangeError::BadResponse { addr, source }))?;
                if let Some(end) = end {
                    reusable &= end == chunk.len();
                    let trailers = scan.trailers();
                    send_data(&mut send, data.split().freeze(), trailers.is_none(), ct)
                        .await
                        .map_err(h2_err)?;
                    if let Some(t) = trailers {
                        send.send_trailers(t).map_err(h2_err)?;
                    }
                    break;
                }
                if !data.is_empty() {
                    send_data(&mut send, data.split().freeze(), false, ct)
                        .await
                        .map_err(h2_err)?;
                }
                let got = read_backend(backend, addr, rbuf, t.read).await.map_err(after_head)?;
                if got == 0 {
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Err(after_head(ExchangeError::Closed(addr)));
                }
                chunk = &rbuf[..got];
            }
        }
        Body::Close => {
            let mut data = Bytes::copy_from_slice(avail);
            loop {
                let got = read_backend(backend, addr, rbuf, t.read).await.map_err(after_head)?;
                send_data(&mut send, data, got == 0, ct).await.map_err(h2_err)?;
                if got == 0 {
                    break;
                }
                data = Bytes::copy_from_slice(&rbuf[..got]);
            }
        }
    }
    Ok(Done {
        upstream: addr,
        status,
        reusable,
    })
}

/// Streams the client's body to the backend (chunked when it has no
/// length), giving the client flow-control window back as it goes.
async fn send_body(
    backend: &mut (impl tokio::io::AsyncWrite + Unpin),
    addr: SocketAddr,
    body: &mut RecvStream,
    chunked: bool,
    timeout: std::time::Duration,
    client_timeout: std::time::Duration,
) -> Result<(), ExchangeError> {
    let upstream_err = |source| ExchangeError::Upstream { addr, source };
    loop {
        let data = match tokio::time::timeout(client_timeout, body.data()).await {
            Ok(Some(Ok(d))) => d,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ExchangeError::H2(e)),
            Err(_) => return Err(ExchangeError::ClientTimeout),
        };
        let n = data.len();
        let size = format!("{n:x}\r\n");
        let mut chunk = [
            IoSlice::new(size.as_bytes()),
            IoSlice::new(&data),
            IoSlice::new(b"\r\n"),
        ];
        let mut plain = [IoSlice::new(&data)];
        let write = async {
            write_all_vectored(backend, if chunked && n > 0 { &mut chunk } else { &mut plain }).await?;
            backend.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(upstream_err(e)),
            Err(_) => return Err(upstream_err(timed_out())),
        }
        let _ = body.flow_control().release_capacity(n);
    }
    if chunked {
        // Client trailers are not forwarded (no trailer field can smuggle
        // a header to a backend that merges them).
        let last = framing::LAST_CHUNK;
        let write = async {
            backend.write_all(last).await?;
            backend.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(upstream_err(e)),
            Err(_) => return Err(upstream_err(timed_out())),
        }
    }
    Ok(())
}

/// Sends `data`, no faster than the client's flow-control window allows,
/// so at most one read of backend bytes is buffered per stream.
pub(super) async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    ct: std::time::Duration,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end { send.send_data(data, true) } else { Ok(()) };
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        // A client that keeps its window shut is given up on.
        let granted = match tokio::time::timeout(ct, std::future::poll_fn(|cx| send.poll_capacity(cx))).await {
            Ok(Some(Ok(n))) => n,
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err(h2::Error::from(h2::Reason::STREAM_CLOSED)),
            Err(_) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(h2::Error::from(h2::Reason::CANCEL));
            }
        };
        let part = data.split_to(granted.min(data.len()));
        send.send_data(part, end && data.is_empty())?;
    }
    Ok(())
}

/// Answers with the gateway's own response; `false` when the client is gone.
/// A HEAD request's answer has the headers and no body.
fn answer(respond: &mut SendResponse<Bytes>, a: &Answer, head_request: bool) -> bool {
    let mut response = http::Response::new(());
    *response.status_mut() = status_code(a.status);
    let h = response.headers_mut();
    // A 304 has neither a body nor the framing of one.
    let not_modified = a.status == 304;
    if !not_modified {
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
        h.insert(CONTENT_LENGTH, HeaderValue::from(a.body.len()));
    }
    for (name, value) in &a.headers {
        h.append(*name, value.clone());
    }
    let no_body = head_request || not_modified || a.body.is_empty();
    match respond.send_response(response, no_body) {
        // The body fits any window (the gateway's own answers are short).
        Ok(mut send) => no_body || send.send_data(a.body.clone(), true).is_ok(),
        Err(_) => false,
    }
}

/// Answers `status` (502 or 504) before any response went out; the status
/// sent, or 0.
pub(super) fn fail(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    head_request: bool,
    branded: Option<&Branded<'_>>,
) -> u16 {
    if status == 0 {
        respond.send_reset(h2::Reason::CANCEL);
        return 0;
    }
    if answer(respond, &super::pages::failure(branded, status), head_request) {
        status
    } else {
        0
    }
}

fn status_code(status: u16) -> http::StatusCode {
    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY)
}

/// The client connection as h2 sees it. Without vectored writes, h2 copies
/// DATA payloads under 1 KiB into its write buffer instead of flushing once
/// per payload (256 bytes and up with vectored writes), so the responses of
/// streams that finish together leave in one TLS record and one system call.
struct Unvectored<S>(S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Unvectored<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// Every call but the vectored ones, which keep their defaults (one buffer
/// at a time, and `is_write_vectored` false).
impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Unvectored<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

    use super::Unvectored;

    /// A server end that counts the writes reaching it, and offers vectored
    /// writes as the TLS stream does.
    struct Counted {
        io: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            Pin::new(&mut self.io).poll_write(cx, &all)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Writes it takes a server connection to send the responses of 8
    /// streams (400-byte bodies) that all finished before it was polled.
    async fn writes_for_eight_responses<S>(wrap: impl FnOnce(Counted) -> S) -> usize
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let server_io = wrap(Counted {
            io: server_io,
            writes: writes.clone(),
        });
        let (client, server) = tokio::join!(h2::client::handshake(client_io), h2::server::handshake(server_io));
        let (mut client, client_conn) = client.unwrap();
        tokio::spawn(client_conn);
        let mut server = server.unwrap();
        let mut responses = Vec::new();
        for _ in 0..8 {
            let req = http::Request::get("https://t.example/").body(()).unwrap();
            let (response, _) = client.send_request(req, true).unwrap();
            responses.push(response);
        }
        let mut accepted = Vec::new();
        while accepted.len() < 8 {
            let (_, respond) = server.accept().await.unwrap().unwrap();
            accepted.push(respond);
        }
        // Every stream answers before the connection is polled again.
        writes.store(0, Ordering::Relaxed);
        for mut respond in accepted {
            let mut send = respond.send_response(http::Response::new(()), false).unwrap();
            send.send_data(Bytes::from(vec![b'x'; 400]), true).unwrap();
        }
        std::future::poll_fn(|cx| {
            let _ = server.poll_accept(cx);
            Poll::Ready(())
        })
        .await;
        let sent = writes.load(Ordering::Relaxed);
        // The client got every response.
        for response in responses {
            let mut body = response.await.unwrap().into_body();
            let mut n = 0;
            while let Some(chunk) = body.data().await {
                n += chunk.unwrap().len();
            }
            assert_eq!(n, 400);
        }
        sent
    }

    #[tokio::test]
    async fn finished_streams_leave_in_one_write() {
        let plain = writes_for_eight_responses(|io| io).await;
        let unvectored = writes_for_eight_responses(Unvectored).await;
        assert_eq!(unvectored, 1, "eight responses in one write");
        assert!(
            plain >= 8,
            "h2 flushes per payload with vectored writes ({plain} writes)"
        );
    }
}
