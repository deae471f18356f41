//! HTTP/1.x clients on a pool with `http2 = true`: their requests go to
//! the backend over HTTP/2 like HTTP/2 clients' streams, so an h2-only
//! backend (a gRPC server, h2c prior knowledge, TLS with ALPN `h2` only)
//! serves them too. The translation follows RFC 9113 section 8.2.2 and RFC
//! 9110: the backend's head comes from the trusted-header writer with its
//! hop-by-hop fields dropped and `Host` as `:authority`
//! ([`upstream_h2::backend_request`]); the body (by length, or unchunked)
//! becomes DATA frames; the response comes back as HTTP/1.1 with a
//! `content-length` when the backend gave one, else chunked (HTTP/1.0:
//! until the close), and its trailers only to a client that sent `TE:
//! trailers` (in the last chunk). A response cut short closes the
//! connection without a last chunk (or before its length), so the client
//! sees the truncation.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::SendStream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::framing::{self, Chunked};
use super::h1::{flush_client, send, write_client, Rest};
use super::headers::connection_level;
use super::pages::Branded;
use super::relay::{duplex, Attempt, ExchangeError, BUF};
use super::upstream_h2::{self, Client};

/// One HTTP/1.x request on its way to an HTTP/2 backend.
pub(super) struct H1ToH2<'a> {
    pub method: &'a http::Method,
    pub http10: bool,
    /// The client keeps the connection after this request.
    pub keep_alive: bool,
    /// The client sent `TE: trailers`.
    pub te_trailers: bool,
    /// Body data already read with the head (unchunked).
    pub first: Bytes,
    /// The body still to come from the client.
    pub rest: Rest,
    /// The request has a body (a length above 0, or chunked).
    pub has_body: bool,
    /// Headers added to the response.
    pub extra: &'a [(&'static str, &'a http::HeaderValue)],
    /// The tenant's 502 and 504.
    pub branded: Option<&'a Branded<'a>>,
    pub io: &'a mut Stream,
    pub out: &'a mut Vec<u8>,
    pub bbuf: &'a mut Vec<u8>,
    pub timeouts: crate::config::Timeouts,
    pub client_timeout: Duration,
    pub shutdown: &'a ShutdownWatch,
    /// Client bytes read past the body's end (the next request's).
    pub more: Vec<u8>,
    /// The exchange ended before the client's body or the response did:
    /// close.
    pub unfinished: bool,
    /// The response told the client the connection closes after it.
    pub said_close: bool,
}

impl Client for H1ToH2<'_> {
    fn replayable(&self) -> bool {
        !self.has_body
            && matches!(
                *self.method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            )
    }

    fn bodiless(&self) -> bool {
        !self.has_body
    }

    async fn exchange(
        &mut self,
        response: ResponseFuture,
        send: Option<SendStream<Bytes>>,
        addr: SocketAddr,
    ) -> Result<u16, Attempt> {
        let t = self.timeouts;
        let head_sent = AtomicU16::new(0);
        let rest = std::mem::replace(&mut self.rest, Rest::Nothing);
        let uploading = AtomicBool::new(send.is_some());
        let shape = Shape {
            head_request: *self.method == http::Method::HEAD,
            http10: self.http10,
            keep_alive: self.keep_alive && !*self.shutdown.borrow(),
            te_trailers: self.te_trailers && !self.http10,
            extra: self.extra,
            ct: self.client_timeout,
            read: t.read,
        };
        let Some(send) = send else {
            let relayed = relay(&shape, self.io, self.out, response, addr, &head_sent, &uploading).await;
            return self.finish(relayed);
        };
        if self.bbuf.len() < BUF {
            self.bbuf.resize(BUF, 0);
        }
        let first = std::mem::take(&mut self.first);
        // Boxed: the duplex machinery stays out of the future of every
        // request without a body.
        let result = Box::pin(async {
            let (mut client_r, mut client_w) = tokio::io::split(&mut *self.io);
            let pump = pump(
                &mut client_r,
                send,
                addr,
                first,
                rest,
                self.bbuf,
                t.write,
                self.client_timeout,
            );
            let relay = relay(&shape, &mut client_w, self.out, response, addr, &head_sent, &uploading);
            let sent = || head_sent.load(Ordering::Relaxed);
            duplex(pump, relay, &uploading, sent).await
        })
        .await;
        let relayed = match result {
            Ok((relayed, pumped)) => {
                match pumped {
                    Ok(more) => self.more = more,
                    Err(_) => self.unfinished = true,
                }
                Ok(relayed)
            }
            Err(e) => Err(e),
        };
        self.finish(relayed)
    }

    async fn fail(&mut self, status: u16) -> u16 {
        match status {
            0 => 0,
            s => {
                self.unfinished = true;
                let head_request = *self.method == http::Method::HEAD;
                super::h1::write_answer(self.out, &super::pages::failure(self.branded, s), true, head_request);
                match send(self.io, self.out, self.client_timeout).await {
                    Ok(()) => s,
                    Err(_) => 0,
                }
            }
        }
    }
}

impl H1ToH2<'_> {
    /// Notes how the relayed response left the connection.
    fn finish(&mut self, relayed: Result<Relayed, Attempt>) -> Result<u16, Attempt> {
        match relayed {
            Ok(r) => {
                self.said_close = r.close;
                Ok(r.status)
            }
            // Cut short after its head: the connection is not in step any
            // more. (Before it, nothing went to the client: a retry or the
            // failure answer follows.)
            Err(e @ Attempt::AfterHead(..)) => {
                self.unfinished = true;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// What shapes the HTTP/1.1 response head and framing.
struct Shape<'a> {
    head_request: bool,
    http10: bool,
    keep_alive: bool,
    /// Trailers go to the client (HTTP/1.1 with `TE: trailers`).
    te_trailers: bool,
    extra: &'a [(&'static str, &'a http::HeaderValue)],
    ct: Duration,
    read: Duration,
}

/// How a relayed response ended.
struct Relayed {
    status: u16,
    /// The head said `Connection: close`.
    close: bool,
}

/// How the response body is delimited towards the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304, or an empty one).
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client reads until the close.
    Close,
}

/// Waits for the backend's head, writes the client's HTTP/1.1 head, then
/// relays DATA frames (and trailers, when asked for) by the chosen
/// framing. `head_sent` gets the status once the client has the head.
async fn relay(
    shape: &Shape<'_>,
    io: &mut (impl AsyncWrite + Unpin),
    out: &mut Vec<u8>,
    response: ResponseFuture,
    addr: SocketAddr,
    head_sent: &AtomicU16,
    uploading: &AtomicBool,
) -> Result<Relayed, Attempt> {
    // Interim responses go to the client as they come (103 Early Hints),
    // but 100: the gateway answered the client's `Expect` itself. An
    // HTTP/1.0 client gets none.
    let mut heads = upstream_h2::Heads::new(response, addr, shape.read);
    let resp = loop {
        match heads.next(Some(uploading)).await? {
            upstream_h2::Head::Final(r) => break r,
            upstream_h2::Head::Interim(r) => {
                let status = r.status();
                if shape.http10 || matches!(status.as_u16(), 100 | 101) {
                    continue;
                }
                out.clear();
                framing::write_line(
                    out,
                    framing::Line::Status(status.as_u16(), status.canonical_reason().unwrap_or("")),
                );
                for (name, value) in r.headers() {
                    if !connection_level(name.as_str()) {
                        framing::header_line(out, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
                out.extend_from_slice(b"\r\n");
                send(io, out, shape.ct).await.map_err(Attempt::BeforeResponse)?;
            }
        }
    };
    let (parts, mut body) = resp.into_parts();
    let status = parts.status.as_u16();
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| super::headers::digits(v.as_bytes()));
    let no_body = shape.head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let framing = if no_body {
        Framing::None
    } else if body.is_end_stream() {
        Framing::Length(0)
    } else if shape.http10 {
        Framing::Close
    } else if let (Some(n), false) = (length, shape.te_trailers) {
        Framing::Length(n)
    } else {
        Framing::Chunked
    };
    out.clear();
    framing::write_line(
        out,
        framing::Line::Status(status, parts.status.canonical_reason().unwrap_or("")),
    );
    for (name, value) in parts.headers.iter() {
        let n = name.as_str();
        // The framing is the gateway's own (a HEAD or 304 keeps the
        // backend's length: it describes the representation).
        let framing_field = n == "content-length" && framing != Framing::None;
        let replaced = shape.extra.iter().any(|(e, _)| n.eq_ignore_ascii_case(e));
        if framing_field || replaced || connection_level(n) {
            continue;
        }
        framing::header_line(out, n.as_bytes(), value.as_bytes());
    }
    for (name, value) in shape.extra {
        framing::header_line(out, name.as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(http::header::DATE) {
        framing::with_date(|d| framing::header_line(out, b"date", d));
    }
    match framing {
        Framing::Length(n) => framing::header_line(out, b"content-length", n.to_string().as_bytes()),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    let close = !shape.keep_alive || framing == Framing::Close;
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if shape.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let ct = shape.ct;
    let after = |e| Attempt::AfterHead(e, status);
    let upstream = |e: h2::Error| {
        after(ExchangeError::Upstream {
            addr,
            source: std::io::Error::other(e),
        })
    };
    send(io, out, ct).await.map_err(after)?;
    head_sent.store(status, Ordering::Relaxed);
    if matches!(framing, Framing::None | Framing::Length(0)) {
        return Ok(Relayed { status, close });
    }
    loop {
        let data = match tokio::time::timeout(shape.read, body.data()).await {
            Ok(Some(Ok(d))) => d,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(upstream(e)),
            Err(_) => return Err(after(ExchangeError::ReadTimeout(addr))),
        };
        let n = data.len();
        if n == 0 {
            continue;
        }
        out.clear();
        match framing {
            Framing::Chunked => framing::chunk(out, &data),
            _ => out.extend_from_slice(&data),
        }
        write_client(io, out, ct).await.map_err(after)?;
        flush_client(io, ct).await.map_err(after)?;
        let _ = body.flow_control().release_capacity(n);
    }
    if framing == Framing::Chunked {
        let trailers = match tokio::time::timeout(shape.read, body.trailers()).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(upstream(e)),
            Err(_) => return Err(after(ExchangeError::ReadTimeout(addr))),
        };
        out.clear();
        out.extend_from_slice(b"0\r\n");
        if shape.te_trailers {
            for (name, value) in trailers.iter().flatten() {
                let n = name.as_str();
                if connection_level(n) || n == "content-length" {
                    continue;
                }
                framing::header_line(out, n.as_bytes(), value.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        send(io, out, ct).await.map_err(after)?;
    }
    Ok(Relayed { status, close })
}

/// The client's body to the backend as DATA frames: the bytes at hand,
/// then the rest as it comes (by length, or unchunked), within the client
/// timeout per read and the write timeout per frame the backend's window
/// holds back; the client's chunk extensions and trailers never pass. Bytes
/// read past the body's end come back (the next request's).
#[allow(clippy::too_many_arguments)]
async fn pump(
    client: &mut (impl AsyncRead + Unpin),
    mut send: SendStream<Bytes>,
    addr: SocketAddr,
    first: Bytes,
    rest: Rest,
    buf: &mut [u8],
    write_timeout: Duration,
    ct: Duration,
) -> Result<Vec<u8>, ExchangeError> {
    let upstream = |e: h2::Error| ExchangeError::Upstream {
        addr,
        source: std::io::Error::other(e),
    };
    let (mut remaining, mut scan) = match rest {
        Rest::Nothing => (0, None),
        Rest::Length(n) => (n, None),
        Rest::Chunked(c) => (u64::MAX, Some(c)),
    };
    super::h2::send_data(&mut send, first, remaining == 0, write_timeout)
        .await
        .map_err(upstream)?;
    let mut more = Vec::new();
    let mut data = Vec::new();
    while remaining > 0 {
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let got = match tokio::time::timeout(ct, client.read(&mut buf[..want])).await {
            Ok(Ok(0)) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(ExchangeError::Client(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(ExchangeError::Client(e));
            }
            Err(_) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(ExchangeError::ClientTimeout);
            }
        };
        data.clear();
        match &mut scan {
            None => {
                remaining -= got as u64;
                data.extend_from_slice(&buf[..got]);
            }
            Some(s) => {
                let end = match s.feed(&buf[..got], |d| data.extend_from_slice(d)) {
                    Ok(end) => end,
                    Err(_) => {
                        send.send_reset(h2::Reason::CANCEL);
                        return Err(ExchangeError::ClientBody);
                    }
                };
                if let Some(end) = end {
                    remaining = 0;
                    more = buf[end..got].to_vec();
                }
            }
        }
        let frame = Bytes::copy_from_slice(&data);
        super::h2::send_data(&mut send, frame, remaining == 0, write_timeout)
            .await
            .map_err(upstream)?;
    }
    Ok(more)
}

/// The body data in `raw`, a chunked body the gateway re-chunked itself.
pub(super) fn unchunk(raw: &[u8]) -> Bytes {
    let mut data = Vec::with_capacity(raw.len());
    let _ = Chunked::default().feed(raw, |d| data.extend_from_slice(d));
    Bytes::from(data)
}
