//! The lean HTTP/1.1 path: requests parsed in place, responses relayed by
//! their framing.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::framing::{self, Body, Chunked};
use super::head::{self, Head, Parsed, Trusted, MAX_HEADERS};
use super::{
    decide, forward, limit_headers, read_backend, response_head, send_head, settle, timed_out, Answer, Attempt,
    Decision, Done, Downstream, ExchangeError, BUF,
};
use crate::proxy::{Gateway, Outcome};

/// Largest request head (or buffered pipeline) read before pingora takes over.
const MAX_HEAD: usize = 64 * 1024;

/// One client connection, and its buffers for heads and backend bytes.
struct Conn {
    io: Stream,
    peer: Option<SocketAddr>,
    /// Heads being written.
    out: Vec<u8>,
    /// The backend's bytes.
    rbuf: Vec<u8>,
}

/// Bytes read from the client; the unread ones are `buf[start..]`.
struct Input {
    buf: Vec<u8>,
    start: usize,
}

/// Serves requests until the connection closes (`None`) or a request needs
/// pingora's path: then the unread bytes and the stream come back.
pub(super) async fn serve(
    gw: &Gateway,
    io: Stream,
    peer: Option<SocketAddr>,
    shutdown: &mut ShutdownWatch,
) -> Option<(Vec<u8>, Stream)> {
    let mut conn = Conn {
        io,
        peer,
        out: Vec::new(),
        rbuf: Vec::new(),
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
    let client_timeout = |gw: &Gateway| gw.registry.snapshot_guard().config.gateway.client_timeout;
    let mut ct = client_timeout(gw);
    let mut deadline = Instant::now() + ct;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let data = &input.buf[input.start..];
        match head::parse(data, &mut storage) {
            Parsed::Lean(h) => {
                let after = &data[h.len..];
                let used = exchange(gw, &h, after, &mut conn, ct).await;
                match used {
                    Some(used) => input.start += h.len + used,
                    None => break,
                }
                ct = client_timeout(gw);
                deadline = Instant::now() + ct;
                if input.start == input.buf.len() {
                    input.buf.clear();
                    input.start = 0;
                }
            }
            Parsed::Handoff(why) => {
                gw.metrics.handoff(why);
                let rest = input.buf.split_off(input.start);
                return Some((rest, conn.io));
            }
            Parsed::Partial => {
                if input.buf.len() - input.start >= MAX_HEAD {
                    gw.metrics.handoff(head::Handoff::TooLarge);
                    let rest = input.buf.split_off(input.start);
                    return Some((rest, conn.io));
                }
                if !read_more(&mut conn.io, &mut input, deadline, stop.as_mut()).await {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.io.shutdown()).await;
    None
}

/// Reads more of a request head. `false`: the client closed, failed, went
/// silent, or the gateway is shutting down while the connection was idle.
async fn read_more(
    io: &mut Stream,
    input: &mut Input,
    deadline: Instant,
    stop: std::pin::Pin<&mut impl std::future::Future<Output = Result<(), tokio::sync::watch::error::RecvError>>>,
) -> bool {
    if input.start > 0 {
        input.buf.drain(..input.start);
        input.start = 0;
    }
    if input.buf.capacity() - input.buf.len() < 1024 {
        input.buf.reserve(BUF);
    }
    let idle = input.buf.is_empty();
    let read = tokio::time::timeout_at(deadline.into(), io.read_buf(&mut input.buf));
    let n = if idle {
        tokio::select! {
            r = read => r,
            _ = stop => return false,
        }
    } else {
        read.await
    };
    matches!(n, Ok(Ok(n)) if n > 0)
}

/// Proxies one request (or answers it). `Some(n)`: done, the connection
/// may carry another request, and `n` bytes of `after` were this one's
/// body. `None`: close the connection.
async fn exchange(gw: &Gateway, h: &Head<'_, '_>, after: &[u8], conn: &mut Conn, ct: Duration) -> Option<usize> {
    let Conn { io, peer, out, rbuf } = conn;
    let peer = *peer;
    let snap = gw.registry.snapshot();
    let in_buf = usize::try_from(h.content_length).map_or(after.len(), |cl| cl.min(after.len()));
    let body_buffered = in_buf as u64 == h.content_length;
    let mut o = Outcome::begin(h.method, h.path());
    let (tenant, pool, admission) = match decide(gw, &snap, h.host, h.target, peer, &mut o).await {
        Decision::Forward {
            tenant,
            pool,
            admission,
        } => (tenant, pool, admission),
        Decision::Answer(a) => {
            // The connection stays only when this request's body is read.
            let close = a.close || !body_buffered || h.close;
            o.status = a.status;
            write_answer(out, &a, close, h.method == "HEAD");
            let sent = send(io, out, ct).await;
            gw.record(&snap, &o);
            return (sent.is_ok() && !close).then_some(in_buf);
        }
    };
    let trusted = Trusted {
        gw: &snap.config.gateway,
        tenant: &tenant.header_value,
        client_ip: peer.map(|p| p.ip()),
        authority: h.host.unwrap_or_default(),
        https: gw.https,
    };
    out.clear();
    let request_id = h.write_upstream(out, &trusted);
    out.extend_from_slice(b"\r\n");
    o.request_id = request_id.to_str().ok();
    let (pairs, n) = limit_headers(tenant, admission.as_ref());
    let req = Request {
        head: h,
        body: &after[..in_buf],
        extra: &pairs[..n],
    };
    if rbuf.len() < BUF {
        rbuf.resize(BUF, 0);
    }
    let mut exchange = H1Exchange {
        req: &req,
        io,
        out,
        rbuf,
        timeouts: snap.config.gateway.timeouts,
        client_timeout: ct,
    };
    let result = forward(&snap, pool, &mut exchange).await;
    drop(admission);
    settle(gw, &snap, &mut o, &result, tenant, pool);
    (result.is_ok() && !h.close).then_some(in_buf)
}

/// A lean request as it goes to the backend.
struct Request<'r, 'h, 'b> {
    head: &'r Head<'h, 'b>,
    /// The body bytes already read (all of it, or its start).
    body: &'r [u8],
    /// Headers added to the response.
    extra: &'r [(&'static str, &'r HeaderValue)],
}

/// One request's exchange with the backend (its head is in `out`).
struct H1Exchange<'a, 'r, 'h, 'b> {
    req: &'a Request<'r, 'h, 'b>,
    io: &'a mut Stream,
    out: &'a mut Vec<u8>,
    rbuf: &'a mut Vec<u8>,
    timeouts: crate::config::Timeouts,
    client_timeout: Duration,
}

impl Downstream for H1Exchange<'_, '_, '_, '_> {
    async fn attempt(&mut self, backend: &mut TcpStream, addr: SocketAddr) -> Result<Done, Attempt> {
        attempt(self, backend, addr).await
    }

    async fn fail(&mut self, status: u16) -> u16 {
        match status {
            0 => 0,
            s => {
                reply(
                    self.io,
                    self.out,
                    s,
                    self.client_timeout,
                    self.req.head.method == "HEAD",
                )
                .await
            }
        }
    }

    fn replayable(&self) -> bool {
        self.req.head.replayable()
    }
}

/// One attempt on one backend connection: send the request (its head is
/// in `out`), then relay the response.
async fn attempt(
    x: &mut H1Exchange<'_, '_, '_, '_>,
    backend: &mut TcpStream,
    addr: SocketAddr,
) -> Result<Done, Attempt> {
    let (req, t, ct) = (x.req, x.timeouts, x.client_timeout);
    let (io, out, rbuf) = (&mut *x.io, &mut *x.out, &mut *x.rbuf);
    let h = req.head;
    send_head(backend, addr, out, req.body, t.write).await?;
    // The rest of a body the client is still sending.
    let mut remaining = h.content_length - req.body.len() as u64;
    while remaining > 0 {
        let want = usize::try_from(remaining).map_or(rbuf.len(), |r| r.min(rbuf.len()));
        let n = match tokio::time::timeout(ct, io.read(&mut rbuf[..want])).await {
            Ok(Ok(0)) => {
                let eof = io::ErrorKind::UnexpectedEof.into();
                return Err(Attempt::BeforeResponse(ExchangeError::Client(eof)));
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(Attempt::BeforeResponse(ExchangeError::Client(e))),
            Err(_) => return Err(Attempt::BeforeResponse(ExchangeError::Client(timed_out()))),
        };
        let upstream_err = |source| Attempt::BeforeResponse(ExchangeError::Upstream { addr, source });
        match tokio::time::timeout(t.write, backend.write_all(&rbuf[..n])).await {
            Ok(Ok(())) => remaining -= n as u64,
            Ok(Err(e)) => return Err(upstream_err(e)),
            Err(_) => return Err(upstream_err(timed_out())),
        }
    }

    // The response head, after any interim 1xx ones (relayed as they come).
    let mut filled = 0;
    let mut received = false;
    let head_request = h.method == "HEAD";
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
            req.extra,
            t.read,
            emit,
        )
        .await?;
        if r.status >= 200 {
            break r;
        }
        out.extend_from_slice(b"\r\n");
        send(io, out, ct).await.map_err(Attempt::BeforeResponse)?;
        rbuf.copy_within(r.len..filled, 0);
        filled -= r.len;
    };
    for (name, value) in req.extra {
        framing::header_line(out, name.as_bytes(), value.as_bytes());
    }
    if !resp.date {
        framing::with_date(|d| framing::header_line(out, b"date", d));
    }
    if matches!(resp.body, Body::Chunked | Body::Close) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if h.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let status = resp.status;
    let after_head = |e| Attempt::AfterHead(e, status);

    // The body, by its framing.
    let mut reusable = resp.reusable;
    let avail = &rbuf[resp.len..filled];
    match resp.body {
        Body::Empty => {
            reusable &= avail.is_empty();
            write_client(io, out, ct).await.map_err(after_head)?;
        }
        Body::Length(n) => {
            let first = usize::try_from(n).map_or(avail.len(), |n| n.min(avail.len()));
            reusable &= first == avail.len();
            out.extend_from_slice(&avail[..first]);
            write_client(io, out, ct).await.map_err(after_head)?;
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
        // Relayed with its framing as it is.
        Body::Chunked => {
            let mut scan = Chunked::default();
            let bad = |source| after_head(ExchangeError::BadResponse { addr, source });
            let end = scan.feed(avail, |_| ()).map_err(bad)?;
            let take = end.unwrap_or(avail.len());
            reusable &= take == avail.len();
            out.extend_from_slice(&avail[..take]);
            write_client(io, out, ct).await.map_err(after_head)?;
            let mut done = end.is_some();
            if !done {
                flush_client(io, ct).await.map_err(after_head)?;
            }
            while !done {
                let got = read_backend(backend, addr, rbuf, t.read).await.map_err(after_head)?;
                if got == 0 {
                    return Err(after_head(ExchangeError::Closed(addr)));
                }
                let end = scan.feed(&rbuf[..got], |_| ()).map_err(bad)?;
                let take = end.unwrap_or(got);
                reusable &= take == got;
                send(io, &rbuf[..take], ct).await.map_err(after_head)?;
                done = end.is_some();
            }
        }
        // Re-chunked, so the client connection outlives the backend's.
        Body::Close => {
            chunk(out, avail);
            send(io, out, ct).await.map_err(after_head)?;
            loop {
                let got = read_backend(backend, addr, rbuf, t.read).await.map_err(after_head)?;
                if got == 0 {
                    write_client(io, b"0\r\n\r\n", ct).await.map_err(after_head)?;
                    break;
                }
                out.clear();
                chunk(out, &rbuf[..got]);
                send(io, out, ct).await.map_err(after_head)?;
            }
        }
    }
    flush_client(io, ct).await.map_err(after_head)?;
    Ok(Done {
        upstream: addr,
        status,
        reusable,
    })
}

async fn write_client(io: &mut Stream, bytes: &[u8], ct: Duration) -> Result<(), ExchangeError> {
    match tokio::time::timeout(ct, io.write_all(bytes)).await {
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

/// Writes `out` to the client and flushes.
async fn send(io: &mut Stream, out: &[u8], ct: Duration) -> Result<(), ExchangeError> {
    write_client(io, out, ct).await?;
    flush_client(io, ct).await
}

/// Sends what the client stream buffered (pingora's stream holds small
/// writes back), within the client timeout.
async fn flush_client(io: &mut Stream, ct: Duration) -> Result<(), ExchangeError> {
    match tokio::time::timeout(ct, io.flush()).await {
        Ok(r) => r.map_err(ExchangeError::Client),
        Err(_) => Err(ExchangeError::Client(timed_out())),
    }
}

/// Answers `status` (a 502 or 504) before any response went out, and
/// closes; returns the status sent (0 if the client is gone).
async fn reply(io: &mut Stream, out: &mut Vec<u8>, status: u16, ct: Duration, head_request: bool) -> u16 {
    write_answer(out, &Answer::failure(status), true, head_request);
    match send(io, out, ct).await {
        Ok(()) => status,
        Err(_) => 0,
    }
}

/// A whole response of the gateway's own into `out`.
/// A HEAD request's answer has the headers and no body.
fn write_answer(out: &mut Vec<u8>, a: &Answer, close: bool, head_request: bool) {
    out.clear();
    framing::write_line(out, framing::Line::Status(a.status, super::reason(a.status)));
    framing::header_line(out, b"content-type", a.content_type.as_bytes());
    framing::header_line(out, b"content-length", a.body.len().to_string().as_bytes());
    for (name, value) in &a.headers {
        framing::header_line(out, name.as_bytes(), value.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(&a.body);
    }
}
