//! The HTTP/1.x half: a client connection's requests, one after another
//! (pipelined ones too), each parsed strictly ([`super::request`]), decided
//! by the policy, and forwarded with its body streamed both ways at once
//! (a backend may answer while the upload goes on). An upgrade the
//! backend accepts with `101` turns the connection into a tunnel.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use super::upstream_tls::Conn as Backend;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::framing::{self, Body, Chunked};
use super::headers::{self, Outgoing};
use super::pages::{Branded, Prefs};
use super::policy::{reason, Answer, Decision, Outcome, Policy, RequestFacts};
use super::relay::{
    duplex, forward, read_backend, response_head, send_head, settle, timed_out, Attempt, Done, Downstream,
    ExchangeError, BUF,
};
use super::request::{self, BodyKind, Head, Parsed, MAX_HEADERS};
use super::tunnel;
use super::ConnFacts;

/// One client connection, and its buffers.
struct Conn<'f> {
    io: Stream,
    facts: &'f ConnFacts,
    /// Heads being written.
    out: Vec<u8>,
    /// The backend's bytes.
    rbuf: Vec<u8>,
    /// The client's body bytes on their way to the backend.
    bbuf: Vec<u8>,
}

/// Bytes read from the client; the unread ones are `buf[start..]`.
struct Input {
    buf: Vec<u8>,
    start: usize,
}

/// What follows an exchange on the connection.
enum Next {
    /// Another request may come: `used` bytes after the head were this
    /// one's body, and `more` were read past its end.
    Continue {
        used: usize,
        more: Vec<u8>,
    },
    Close,
}

/// Serves requests until the connection closes.
pub(super) async fn serve(policy: &Policy, io: Stream, facts: &ConnFacts, shutdown: &mut ShutdownWatch) {
    let mut conn = Conn {
        io,
        facts,
        out: Vec::new(),
        rbuf: Vec::new(),
        bbuf: Vec::new(),
    };
    let mut input = Input {
        buf: Vec::with_capacity(4096),
        start: 0,
    };
    // One registration with the shutdown signal for the connection's life,
    // not one per request.
    let mut signal = shutdown.clone();
    let stop = signal.changed();
    tokio::pin!(stop);
    // The whole head of the next request must arrive by this deadline (a
    // client trickling bytes gets no more time than a silent one).
    let client_timeout = |p: &Policy| p.registry.snapshot_guard().config.gateway.client_timeout;
    let mut ct = client_timeout(policy);
    let mut deadline = Instant::now() + ct;
    // Shutting down (SIGTERM, or SIGQUIT for a graceful upgrade): a request
    // that arrives within a moment still gets its answer, with `Connection:
    // close`, so a client sending back to back is not cut off mid-request.
    let mut stopping = false;
    loop {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let data = &input.buf[input.start..];
        match request::parse(data, &mut storage) {
            Parsed::Request(h) => {
                let after = &data[h.len..];
                let next = exchange(policy, &h, after, &mut conn, ct, shutdown).await;
                let len = h.len;
                match next {
                    Next::Continue { used, more } => {
                        input.start += len + used;
                        input.buf.extend_from_slice(&more);
                    }
                    Next::Close => break,
                }
                ct = client_timeout(policy);
                deadline = Instant::now() + ct;
                if input.start == input.buf.len() {
                    input.buf.clear();
                    input.start = 0;
                }
            }
            Parsed::Bad(rejection, body) => {
                let mut o = Outcome::begin("", "");
                o.client = conn.facts.peer;
                let a = policy.refuse(rejection, body, &mut o);
                o.status = a.status;
                write_answer(&mut conn.out, &a, true, false);
                let _ = send(&mut conn.io, &conn.out, ct).await;
                policy.record(&policy.registry.snapshot(), &o);
                break;
            }
            Parsed::Partial => {
                if !read_more(&mut conn.io, &mut input, deadline, stop.as_mut(), &mut stopping).await {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.io.shutdown()).await;
}

/// How long an idle connection waits for one more request once the
/// gateway is shutting down.
const LAST_CALL: Duration = Duration::from_secs(1);

/// Reads more of a request head. `false`: the client closed, failed, went
/// silent, or the gateway is shutting down and the connection stayed idle
/// for [`LAST_CALL`].
async fn read_more(
    io: &mut Stream,
    input: &mut Input,
    deadline: Instant,
    stop: std::pin::Pin<&mut impl std::future::Future<Output = Result<(), tokio::sync::watch::error::RecvError>>>,
    stopping: &mut bool,
) -> bool {
    if input.start > 0 {
        input.buf.drain(..input.start);
        input.start = 0;
    }
    if input.buf.capacity() - input.buf.len() < 1024 {
        input.buf.reserve(BUF);
    }
    let idle = input.buf.is_empty();
    let deadline = match *stopping && idle {
        true => deadline.min(Instant::now() + LAST_CALL),
        false => deadline,
    };
    let read = tokio::time::timeout_at(deadline.into(), io.read_buf(&mut input.buf));
    tokio::pin!(read);
    let n = if idle && !*stopping {
        tokio::select! {
            r = &mut read => r,
            _ = stop => {
                *stopping = true;
                let last_call = (Instant::now() + LAST_CALL).min(deadline);
                match tokio::time::timeout_at(last_call.into(), read).await {
                    Ok(r) => r,
                    Err(_) => return false,
                }
            }
        }
    } else {
        read.await
    };
    matches!(n, Ok(Ok(n)) if n > 0)
}

/// The request body still to come from the client after what was read
/// with the head.
pub(super) enum Rest {
    Nothing,
    Length(u64),
    Chunked(Chunked),
}

/// Proxies one request (or answers it).
async fn exchange(
    policy: &Policy,
    h: &Head<'_, '_>,
    after: &[u8],
    conn: &mut Conn<'_>,
    ct: Duration,
    shutdown: &ShutdownWatch,
) -> Next {
    let snap = policy.registry.snapshot();
    let mut o = Outcome::begin(h.method, h.path());
    // A chunked body goes to the backend re-chunked: its data only, without
    // the client's chunk extensions and trailers (no trailer field can
    // smuggle a header to a backend that merges them).
    let mut rechunked = Vec::new();
    // The body bytes already read, and what is still to come.
    let (in_buf, rest) = match h.body {
        BodyKind::None => (0, Rest::Nothing),
        BodyKind::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= after.len() => (n, Rest::Nothing),
            _ => (after.len(), Rest::Length(n - after.len() as u64)),
        },
        BodyKind::Chunked => {
            let mut scan = Chunked::default();
            match scan.feed(after, |d| framing::chunk(&mut rechunked, d)) {
                Ok(Some(end)) => {
                    rechunked.extend_from_slice(framing::LAST_CHUNK);
                    (end, Rest::Nothing)
                }
                Ok(None) => (after.len(), Rest::Chunked(scan)),
                Err(_) => {
                    let a = policy.refuse(
                        crate::telemetry::Rejection::BadRequest,
                        "400 Bad Request: malformed chunked body\n",
                        &mut o,
                    );
                    answer(conn, &a, true, h, ct, &mut o).await;
                    policy.record(&snap, &o);
                    return Next::Close;
                }
            }
        }
    };
    let body_done = matches!(rest, Rest::Nothing);
    let facts = RequestFacts {
        method: h.method,
        target: h.forward_target,
        authority: h.host,
        conn: conn.facts,
        prefs: Prefs::scan(h.headers.iter().map(|x| (x.name, x.value))),
        headers: &h.headers,
    };
    let f = match policy.decide(&snap, &facts, &mut o).await {
        Decision::Forward(f) => f,
        Decision::Answer(a) => {
            // The connection stays only when this request's body is read.
            let close = a.close || !body_done || !h.keep_alive || *shutdown.borrow();
            let sent = answer(conn, &a, close, h, ct, &mut o).await;
            policy.record(&snap, &o);
            return match sent && !close {
                true => Next::Continue {
                    used: in_buf,
                    more: Vec::new(),
                },
                false => Next::Close,
            };
        }
    };
    let Conn {
        io, out, rbuf, bbuf, ..
    } = conn;
    out.clear();
    let outgoing = Outgoing {
        method: h.method,
        target: f.target.as_deref().unwrap_or(h.forward_target),
        http2_host: None,
        length: match h.body {
            BodyKind::Length(n) => Some(n),
            _ => None,
        },
        chunked: h.body == BodyKind::Chunked,
        upgrade: h.upgrade,
    };
    let request_id = headers::write_upstream(
        out,
        &outgoing,
        || h.headers.iter().map(|x| (x.name, x.value)),
        &f.trusted,
    );
    o.request_id = request_id.to_str().ok();
    // The client waits for our word before it sends the body.
    if h.expect_continue && in_buf == 0 && !body_done && !h.http10 {
        if let Err(e) = send(io, b"HTTP/1.1 100 Continue\r\n\r\n", ct).await {
            tracing::debug!(error = %e, "client gone before 100 Continue");
            return Next::Close;
        }
    }
    let (pairs, n) = f.limit_headers();
    // An HTTP/2 pool gets HTTP/1.x requests over HTTP/2 too (an upgrade
    // stays HTTP/1.1: it has no HTTP/2 form here).
    if f.pool.http2 && h.upgrade.is_none() {
        let Ok(method) = http::Method::from_bytes(h.method.as_bytes()) else {
            return Next::Close;
        };
        let te_trailers = h
            .headers
            .iter()
            .filter(|x| x.name.eq_ignore_ascii_case("te"))
            .flat_map(|x| headers::tokens(x.value))
            .any(|t| t.eq_ignore_ascii_case(b"trailers"));
        let (first, has_body) = match h.body {
            BodyKind::None => (bytes::Bytes::new(), false),
            BodyKind::Length(n) => (bytes::Bytes::copy_from_slice(&after[..in_buf]), n > 0),
            BodyKind::Chunked => (super::h1_to_h2::unchunk(&rechunked), true),
        };
        let request = super::upstream_h2::backend_request(f.pool, out, &method, te_trailers);
        let mut client = super::h1_to_h2::H1ToH2 {
            method: &method,
            http10: h.http10,
            keep_alive: h.keep_alive,
            te_trailers,
            first,
            rest,
            has_body,
            extra: &pairs[..n],
            branded: f.branded.as_ref(),
            io,
            out,
            bbuf,
            timeouts: snap.config.gateway.timeouts,
            client_timeout: ct,
            shutdown,
            more: Vec::new(),
            unfinished: false,
            said_close: true,
        };
        let result = super::upstream_h2::forward(&snap, f.pool, request, &mut client).await;
        let (close, more) = (client.unfinished || client.said_close, std::mem::take(&mut client.more));
        drop(f.admission);
        settle(policy, &snap, &mut o, &result, f.tenant, f.pool);
        return match result.is_ok() && !close {
            true => Next::Continue { used: in_buf, more },
            false => Next::Close,
        };
    }
    if rbuf.len() < BUF {
        rbuf.resize(BUF, 0);
    }
    let mut exchange = H1Exchange {
        head: h,
        body: match h.body {
            BodyKind::Chunked => &rechunked,
            _ => &after[..in_buf],
        },
        beyond: &after[in_buf..],
        rest,
        extra: &pairs[..n],
        branded: f.branded.as_ref(),
        io,
        out,
        rbuf,
        bbuf,
        timeouts: snap.config.gateway.timeouts,
        client_timeout: ct,
        tunnel_idle: snap.config.gateway.tunnel_idle_timeout,
        more: Vec::new(),
        unfinished: false,
        upgraded: false,
        said_close: true,
        shutdown,
    };
    let result = forward(&snap, f.pool, &mut exchange).await;
    let (close, more) = (
        exchange.unfinished || exchange.upgraded || exchange.said_close,
        std::mem::take(&mut exchange.more),
    );
    drop(f.admission);
    settle(policy, &snap, &mut o, &result, f.tenant, f.pool);
    match result.is_ok() && !close {
        true => Next::Continue { used: in_buf, more },
        false => Next::Close,
    }
}

/// Writes an answer of the gateway's own; `false` when the client is gone.
async fn answer(
    conn: &mut Conn<'_>,
    a: &Answer,
    close: bool,
    h: &Head<'_, '_>,
    ct: Duration,
    o: &mut Outcome<'_>,
) -> bool {
    o.status = a.status;
    write_answer(&mut conn.out, a, close, h.method == "HEAD");
    let sent = send(&mut conn.io, &conn.out, ct).await.is_ok();
    if !sent {
        o.status = 0;
    }
    sent
}

/// One request's exchange with the backend (its head is in `out`).
struct H1Exchange<'a, 'h, 'b> {
    head: &'a Head<'h, 'b>,
    /// The body bytes read with the head.
    body: &'a [u8],
    /// Bytes the client sent past the body (the start of a tunnel).
    beyond: &'a [u8],
    /// The body still to come from the client.
    rest: Rest,
    /// Headers added to the response.
    extra: &'a [(&'static str, &'a http::HeaderValue)],
    /// The tenant's 502 and 504.
    branded: Option<&'a Branded<'a>>,
    io: &'a mut Stream,
    out: &'a mut Vec<u8>,
    rbuf: &'a mut Vec<u8>,
    bbuf: &'a mut Vec<u8>,
    timeouts: crate::config::Timeouts,
    client_timeout: Duration,
    tunnel_idle: Duration,
    /// Client bytes read past the body's end (the next request's).
    more: Vec<u8>,
    /// The response ended before the client's body did: close.
    unfinished: bool,
    /// The connection became a tunnel, and is over now.
    upgraded: bool,
    /// The response told the client the connection closes after it.
    said_close: bool,
    /// Set when the gateway shuts down: the response says `Connection: close`.
    shutdown: &'a ShutdownWatch,
}

impl Downstream for H1Exchange<'_, '_, '_> {
    async fn attempt(&mut self, backend: &mut Backend, addr: SocketAddr) -> Result<Done, Attempt> {
        attempt(self, backend, addr).await
    }

    async fn fail(&mut self, status: u16) -> u16 {
        match status {
            0 => 0,
            s => {
                self.unfinished = true;
                let head_request = self.head.method == "HEAD";
                write_answer(self.out, &super::pages::failure(self.branded, s), true, head_request);
                match send(self.io, self.out, self.client_timeout).await {
                    Ok(()) => s,
                    Err(_) => 0,
                }
            }
        }
    }

    fn replayable(&self) -> bool {
        self.head.replayable()
    }
}

/// One attempt on one backend connection: send the request, stream the
/// rest of its body while the response is relayed, and tunnel after a
/// `101`.
async fn attempt(x: &mut H1Exchange<'_, '_, '_>, backend: &mut Backend, addr: SocketAddr) -> Result<Done, Attempt> {
    let t = x.timeouts;
    send_head(backend, addr, x.out, x.body, t.write).await?;
    let head_sent = AtomicU16::new(0);
    let rest = std::mem::replace(&mut x.rest, Rest::Nothing);
    // While the body still flows, the wait for the response head is bounded
    // by the body's own timeouts (client reads, backend writes), not by the
    // backend read timeout.
    let uploading = AtomicBool::new(!matches!(rest, Rest::Nothing));
    let relayed = if matches!(rest, Rest::Nothing) {
        relay(
            x.head,
            x.extra,
            x.io,
            backend,
            addr,
            x.out,
            x.rbuf,
            t,
            x.client_timeout,
            &head_sent,
            &uploading,
            x.shutdown,
        )
        .await?
    } else {
        // Full duplex: the body keeps flowing to the backend while its
        // response is relayed. Boxed: the duplex machinery stays out of the
        // future of every request without a body.
        Box::pin(async {
            if x.bbuf.len() < BUF {
                x.bbuf.resize(BUF, 0);
            }
            let (mut client_r, mut client_w) = tokio::io::split(&mut *x.io);
            let (mut backend_r, mut backend_w) = backend.split();
            let pump = pump(
                &mut client_r,
                &mut backend_w,
                addr,
                rest,
                x.bbuf,
                t.write,
                x.client_timeout,
            );
            let relay = relay(
                x.head,
                x.extra,
                &mut client_w,
                &mut backend_r,
                addr,
                x.out,
                x.rbuf,
                t,
                x.client_timeout,
                &head_sent,
                &uploading,
                x.shutdown,
            );
            let sent = || head_sent.load(Ordering::Relaxed);
            let (relayed, pumped) = duplex(pump, relay, &uploading, sent)
                .await
                .inspect_err(|_| x.unfinished = true)?;
            match pumped {
                Ok(more) => x.more = more,
                Err(_) => x.unfinished = true,
            }
            Ok::<_, Attempt>(relayed)
        })
        .await?
    };
    x.said_close = relayed.close;
    let mut done = Done {
        upstream: addr,
        status: relayed.status,
        reusable: relayed.reusable && !x.unfinished,
    };
    if let Some(from) = relayed.tunnel_from {
        x.upgraded = true;
        done.reusable = false;
        let early = &x.rbuf[from..relayed.filled];
        Box::pin(tunnel::run(
            x.io,
            backend,
            early,
            x.beyond,
            x.tunnel_idle,
            x.client_timeout,
        ))
        .await;
    }
    Ok(done)
}

/// The client's remaining body to the backend, as it comes, within the
/// client timeout per read and the backend write timeout per write. A
/// chunked body is relayed with its framing, checked as it passes; bytes
/// read past its end come back (the next request's).
async fn pump(
    client: &mut (impl AsyncRead + Unpin),
    backend: &mut (impl AsyncWrite + Unpin),
    addr: SocketAddr,
    rest: Rest,
    buf: &mut [u8],
    write_timeout: Duration,
    ct: Duration,
) -> Result<Vec<u8>, ExchangeError> {
    let (mut remaining, mut scan) = match rest {
        Rest::Nothing => return Ok(Vec::new()),
        Rest::Length(n) => (n, None),
        Rest::Chunked(c) => (u64::MAX, Some(c)),
    };
    let mut rechunked = Vec::new();
    while remaining > 0 {
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let got = match tokio::time::timeout(ct, client.read(&mut buf[..want])).await {
            Ok(Ok(0)) => return Err(ExchangeError::Client(io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(ExchangeError::Client(e)),
            Err(_) => return Err(ExchangeError::ClientTimeout),
        };
        let (bytes, more) = match &mut scan {
            None => {
                remaining -= got as u64;
                (&buf[..got], Vec::new())
            }
            Some(s) => {
                rechunked.clear();
                let end = s
                    .feed(&buf[..got], |d| framing::chunk(&mut rechunked, d))
                    .map_err(|_| ExchangeError::ClientBody)?;
                match end {
                    Some(end) => {
                        remaining = 0;
                        rechunked.extend_from_slice(framing::LAST_CHUNK);
                        (&rechunked[..], buf[end..got].to_vec())
                    }
                    None => (&rechunked[..], Vec::new()),
                }
            }
        };
        let upstream_err = |source| ExchangeError::Upstream { addr, source };
        let write = async {
            backend.write_all(bytes).await?;
            backend.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(upstream_err(e)),
            Err(_) => return Err(upstream_err(timed_out())),
        }
        if remaining == 0 {
            return Ok(more);
        }
    }
    Ok(Vec::new())
}

/// How a relayed response ended.
struct Relayed {
    status: u16,
    reusable: bool,
    /// A `101`: the tunnel starts with `rbuf[from..filled]`.
    tunnel_from: Option<usize>,
    filled: usize,
    /// The head said `Connection: close`.
    close: bool,
}

/// Reads the response head (relaying interim ones as they come), writes
/// the client's head, then relays the body by its framing. An HTTP/1.0
/// client gets no interim responses and no chunked body (the connection
/// closes after a body without a length instead). `head_sent` gets the
/// status once the client has the head.
#[allow(clippy::too_many_arguments)]
async fn relay(
    h: &Head<'_, '_>,
    extra: &[(&'static str, &http::HeaderValue)],
    io: &mut (impl AsyncWrite + Unpin),
    backend: &mut (impl AsyncRead + Unpin),
    addr: SocketAddr,
    out: &mut Vec<u8>,
    rbuf: &mut Vec<u8>,
    t: crate::config::Timeouts,
    ct: Duration,
    head_sent: &AtomicU16,
    uploading: &AtomicBool,
    shutdown: &ShutdownWatch,
) -> Result<Relayed, Attempt> {
    let mut filled = 0;
    let mut received = false;
    let head_request = h.method == "HEAD";
    let mut interim = 0;
    let resp = loop {
        // `out` still holds the request head until a response head comes:
        // a stale connection's retry sends it again.
        let mut fresh = true;
        let emit = |l: framing::Line<'_>| {
            if std::mem::take(&mut fresh) {
                out.clear();
            }
            framing::write_line(out, l)
        };
        let r = response_head(
            backend,
            addr,
            rbuf,
            &mut filled,
            &mut received,
            head_request,
            h.upgrade.is_some(),
            extra,
            t.read,
            Some(uploading),
            emit,
        )
        .await?;
        if r.status >= 200 || r.body == Body::Upgrade {
            break r;
        }
        interim += 1;
        if interim > framing::MAX_INTERIM {
            let source = framing::BadResponse::Interim;
            return Err(Attempt::BeforeResponse(ExchangeError::BadResponse { addr, source }));
        }
        if !h.http10 {
            out.extend_from_slice(b"\r\n");
            send(io, out, ct).await.map_err(Attempt::BeforeResponse)?;
        }
        rbuf.copy_within(r.len..filled, 0);
        filled -= r.len;
    };
    let status = resp.status;
    if resp.body == Body::Upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n\r\n");
        send(io, out, ct).await.map_err(Attempt::BeforeResponse)?;
        head_sent.store(status, Ordering::Relaxed);
        return Ok(Relayed {
            status,
            reusable: false,
            tunnel_from: Some(resp.len),
            filled,
            close: true,
        });
    }
    for (name, value) in extra {
        framing::header_line(out, name.as_bytes(), value.as_bytes());
    }
    if !resp.date {
        framing::with_date(|d| framing::header_line(out, b"date", d));
    }
    // An HTTP/1.0 client reads a body without a length until the close.
    let until_close = h.http10 && matches!(resp.body, Body::Chunked | Body::Close);
    if matches!(resp.body, Body::Chunked | Body::Close) && !h.http10 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    let close = !h.keep_alive || until_close || *shutdown.borrow();
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if h.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let after_head = |e| Attempt::AfterHead(e, status);

    let mut reusable = resp.reusable;
    let avail = &rbuf[resp.len..filled];
    match resp.body {
        Body::Empty | Body::Upgrade => {
            reusable &= avail.is_empty();
            write_client(io, out, ct).await.map_err(after_head)?;
            head_sent.store(status, Ordering::Relaxed);
        }
        Body::Length(n) => {
            let first = usize::try_from(n).map_or(avail.len(), |n| n.min(avail.len()));
            reusable &= first == avail.len();
            out.extend_from_slice(&avail[..first]);
            write_client(io, out, ct).await.map_err(after_head)?;
            head_sent.store(status, Ordering::Relaxed);
            let mut remaining = n - first as u64;
            // The rest may be slow to come (a stream of events): what is
            // here goes out now.
            if remaining > 0 {
                flush_client(io, ct).await.map_err(after_head)?;
            }
            while remaining > 0 {
                let want = usize::try_from(remaining).map_or(rbuf.len(), |r| r.min(rbuf.len()));
                let got = read_backend(backend, addr, &mut rbuf[..want], t.read)
                    .await
                    .map_err(after_head)?;
                if got == 0 {
                    return Err(after_head(ExchangeError::Closed(addr)));
                }
                send(io, &rbuf[..got], ct).await.map_err(after_head)?;
                remaining -= got as u64;
            }
        }
        // Relayed with its framing as it is (HTTP/1.1), or unchunked
        // (HTTP/1.0, which then reads until the close).
        Body::Chunked => {
            let mut scan = Chunked::default();
            let bad = |source| after_head(ExchangeError::BadResponse { addr, source });
            let mut data = Vec::new();
            let mut chunk = &rbuf[resp.len..filled];
            let mut first = true;
            loop {
                let end = scan
                    .feed(chunk, |d| {
                        if until_close {
                            data.extend_from_slice(d)
                        }
                    })
                    .map_err(bad)?;
                let take = end.unwrap_or(chunk.len());
                reusable &= take == chunk.len();
                let piece = if until_close { &data[..] } else { &chunk[..take] };
                if first {
                    out.extend_from_slice(piece);
                    write_client(io, out, ct).await.map_err(after_head)?;
                    head_sent.store(status, Ordering::Relaxed);
                    first = false;
                } else {
                    write_client(io, piece, ct).await.map_err(after_head)?;
                }
                data.clear();
                if end.is_some() {
                    break;
                }
                flush_client(io, ct).await.map_err(after_head)?;
                let got = read_backend(backend, addr, rbuf, t.read).await.map_err(after_head)?;
                if got == 0 {
                    return Err(after_head(ExchangeError::Closed(addr)));
                }
                chunk = &rbuf[..got];
            }
        }
        // Re-chunked for an HTTP/1.1 client, so its connection outlives
        // the backend's; as it is for an HTTP/1.0 one.
        Body::Close => {
            let frame = |out: &mut Vec<u8>, data: &[u8]| match until_close {
                true => out.extend_from_slice(data),
                false => framing::chunk(out, data),
            };
            frame(out, avail);
            send(io, out, ct).await.map_err(after_head)?;
            head_sent.store(status, Ordering::Relaxed);
            loop {
                let got = read_backend(backend, addr, rbuf, t.read).await.map_err(after_head)?;
                if got == 0 {
                    if !until_close {
                        write_client(io, framing::LAST_CHUNK, ct).await.map_err(after_head)?;
                    }
                    break;
                }
                out.clear();
                frame(out, &rbuf[..got]);
                send(io, out, ct).await.map_err(after_head)?;
            }
        }
    }
    flush_client(io, ct).await.map_err(after_head)?;
    Ok(Relayed {
        status,
        reusable: reusable && !until_close,
        tunnel_from: None,
        filled,
        close,
    })
}

pub(super) async fn write_client(
    io: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    ct: Duration,
) -> Result<(), ExchangeError> {
    match tokio::time::timeout(ct, io.write_all(bytes)).await {
        Ok(r) => r.map_err(ExchangeError::Client),
        Err(_) => Err(ExchangeError::Client(timed_out())),
    }
}

/// Writes `out` to the client and flushes.
pub(super) async fn send(io: &mut (impl AsyncWrite + Unpin), out: &[u8], ct: Duration) -> Result<(), ExchangeError> {
    write_client(io, out, ct).await?;
    flush_client(io, ct).await
}

/// Sends what the client stream buffered (the TLS stream holds small
/// writes back), within the client timeout.
pub(super) async fn flush_client(io: &mut (impl AsyncWrite + Unpin), ct: Duration) -> Result<(), ExchangeError> {
    match tokio::time::timeout(ct, io.flush()).await {
        Ok(r) => r.map_err(ExchangeError::Client),
        Err(_) => Err(ExchangeError::Client(timed_out())),
    }
}

/// A whole response of the gateway's own into `out`.
/// A HEAD request's answer has the headers and no body.
pub(super) fn write_answer(out: &mut Vec<u8>, a: &Answer, close: bool, head_request: bool) {
    out.clear();
    framing::write_line(out, framing::Line::Status(a.status, reason(a.status)));
    // A 304 has neither a body nor the framing of one.
    let not_modified = a.status == 304;
    if !not_modified {
        framing::header_line(out, b"content-type", a.content_type.as_bytes());
        framing::header_line(out, b"content-length", a.body.len().to_string().as_bytes());
    }
    framing::with_date(|d| framing::header_line(out, b"date", d));
    for (name, value) in &a.headers {
        framing::header_line(out, name.as_bytes(), value.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request && !not_modified {
        out.extend_from_slice(&a.body);
    }
}
