//! A measurement prototype for issue #14 item 8: hyper 1.x (server and
//! client) doing, in spirit, the per-request work of tenantgate's lean path.
//! Not a product: no config file, no reload, no limits, no access log.
//!
//! - HTTP/1.1 on a plain listener, HTTP/2 (and HTTP/1.1) over TLS with ALPN
//!   on a second one (a self-signed ECDSA P-256 certificate for
//!   `*.example.test` from rcgen; rustls with the aws-lc-rs provider, as
//!   tenantgate).
//! - Per request: the authority (Host, or `:authority` on HTTP/2), its port
//!   and a trailing dot dropped and lowercased, looked up in a map of
//!   `t00001.example.test` .. `tNNNNN.example.test` to a tenant id and pool
//!   (odd -> a, even -> b, as benches/hot-path.sh); 421 for an unknown host;
//!   on TLS the host checked against the certificate's name (tenantgate's SNI
//!   check); hop-by-hop headers, the headers the `Connection` header lists,
//!   and client copies of `x-tenant-id` and `x-forwarded-{for,proto,host}`
//!   removed; `x-tenant-id`, `x-forwarded-{for,proto,host}` and `x-request-id`
//!   (the client's when acceptable, else a new 32-hex-digit id) added;
//!   HTTP/2 cookies joined and `Host` set from `:authority`; forwarded as
//!   HTTP/1.1 with hyper's client on a kept-alive connection; the response
//!   streamed back without its hop-by-hop headers; a per-tenant status
//!   counter and a per-pool duration histogram updated (tenantgate's metrics).
//! - Backend client, `--client conn` (default): `hyper::client::conn::http1`
//!   with a per-upstream stack of idle `SendRequest` handles; a handle goes
//!   back when the response body has been relayed to its end. A request the
//!   connection refused unsent is retried once on a new connection.
//!   `--client legacy`: hyper-util's legacy `Client` (its own pool).
//! - A multi-thread tokio runtime with `--threads` (2) workers.
//!
//! Usage: hyper-proto --http ADDR [--https ADDR] --pool-a ADDR --pool-b ADDR
//!        [--tenants N] [--client conn|legacy] [--threads N] [--vectored]
//!        [--flat-writes] [--one-pass-strip]
//!
//! `--vectored`: the TLS stream offers h2 vectored writes (by default it does
//! not, as tenantgate's `Unvectored`). `--flat-writes`: hyper's HTTP/1.1
//! server and client connections without vectored writes (`writev(false)`:
//! head and body copied into one buffer, one write per message).
//! `--one-pass-strip`: hop-by-hop and replaced headers found in one pass over
//! the names present and only those removed (by default: one
//! `HeaderMap::remove`, a hash lookup, per name that might be there; 16 a
//! request).

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const TENANT_HEADER: HeaderName = HeaderName::from_static("x-tenant-id");
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
const XRID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The certificate's name: `*.example.test`.
const CERT_SUFFIX: &str = ".example.test";

struct Tenant {
    id: HeaderValue,
    pool: usize,
    /// Responses by status class (1xx..5xx).
    counters: [AtomicU64; 5],
}

/// Prometheus-style buckets (seconds), tenantgate's pool duration histogram.
const BUCKETS: [f64; 11] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

struct Upstream {
    addr: SocketAddr,
    authority: http::uri::Authority,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Upstream {
    fn observe(&self, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// A kept-alive connection ready for a request, if any.
    async fn take_idle(&self) -> Option<SendRequest<Incoming>> {
        loop {
            let mut s = self.idle.lock().unwrap().pop()?;
            // Its last response body has been read to the end; the
            // connection task may still be finishing it.
            if s.ready().await.is_ok() {
                return Some(s);
            }
        }
    }

    fn put_idle(&self, s: SendRequest<Incoming>) {
        if !s.is_closed() {
            self.idle.lock().unwrap().push(s);
        }
    }

    async fn connect(&self, writev: bool) -> Result<SendRequest<Incoming>, ()> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(drop)?
            .map_err(drop)?;
        tcp.set_nodelay(true).map_err(drop)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(writev)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(drop)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum ClientMode {
    Conn,
    Legacy,
}

struct Ctx {
    tenants: HashMap<Box<str>, Tenant, ahash::RandomState>,
    upstreams: Vec<Upstream>,
    mode: ClientMode,
    /// hyper's vectored writes on HTTP/1.1 (off: one flattened buffer, one
    /// write per message, as the lean path).
    writev: bool,
    /// Header stripping in one pass over the names present.
    one_pass: bool,
    legacy: Client<HttpConnector, Incoming>,
}

/// What the handler knows about the client connection.
struct Conn {
    /// The client address, formatted once per connection.
    peer: Option<HeaderValue>,
    https: bool,
}

/// The response body: the backend's (with the connection to give back when
/// it ends), or one of the gateway's own.
enum ProxyBody {
    Pooled {
        inner: Incoming,
        back: Option<(SendRequest<Incoming>, &'static Upstream)>,
    },
    Plain(Incoming),
    Full(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Pooled { inner, back } => {
                let r = Pin::new(&mut *inner).poll_frame(cx);
                if let Poll::Ready(None) = r {
                    if let Some((s, up)) = back.take() {
                        up.put_idle(s);
                    }
                }
                r
            }
            ProxyBody::Plain(inner) => Pin::new(inner).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Pooled { inner, .. } | ProxyBody::Plain(inner) => inner.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Pooled { inner, .. } | ProxyBody::Plain(inner) => inner.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // The server may stop polling once `is_end_stream` says so.
        if let ProxyBody::Pooled { inner, back } = self {
            if let Some((s, up)) = back.take() {
                if inner.is_end_stream() {
                    up.put_idle(s);
                }
            }
        }
    }
}

fn answer(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Full(Some(Bytes::from_static(body.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The host of an authority, as the routing table keys it: without the
/// port and a trailing dot, lowercase.
fn request_host(authority: &str) -> Cow<'_, str> {
    let host = match authority.rfind(':') {
        Some(i) if !authority[i + 1..].contains(']') => &authority[..i],
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn acceptable_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_request_id(prefix: u64) -> HeaderValue {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    for (i, b) in buf[..16].iter_mut().enumerate() {
        *b = DIGITS[((prefix >> (60 - 4 * i)) & 0xf) as usize];
    }
    for (i, b) in buf[16..].iter_mut().enumerate() {
        *b = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap()
}

fn prefix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones `Connection`
/// lists.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(c) = headers.get(header::CONNECTION) {
        let listed: Vec<HeaderName> = c
            .as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for n in listed {
            if n != header::HOST {
                headers.remove(n);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::UPGRADE);
    headers.remove(header::TRANSFER_ENCODING);
}

/// Hop-by-hop headers but `Connection` (RFC 9110 section 7.6.1).
const HOP: [HeaderName; 5] = [KEEP_ALIVE, PROXY_CONNECTION, header::TE, header::UPGRADE, header::TRANSFER_ENCODING];
/// Headers the gateway sets itself.
const REPLACED: [HeaderName; 4] = [TENANT_HEADER, XFF, XFP, XFH];

/// The same as [`strip_hop_by_hop`] plus the `extra` names, in one pass over
/// the names present, removing only those there (instead of one hash
/// lookup per name that might be there).
fn strip_one_pass(headers: &mut HeaderMap, extra: &[HeaderName]) {
    let mut found: [Option<HeaderName>; 10] = Default::default();
    let mut n = 0;
    let mut connection = false;
    for name in headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if n < found.len() && (HOP.contains(name) || extra.contains(name)) {
            found[n] = Some(name.clone());
            n += 1;
        }
    }
    if connection {
        strip_hop_by_hop(headers);
    }
    for name in found[..n].iter_mut().filter_map(Option::take) {
        headers.remove(name);
    }
}

async fn handle(
    ctx: &'static Ctx,
    conn: Arc<Conn>,
    prefix: u64,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    let h2 = parts.version == Version::HTTP_2;
    // The authority: Host on HTTP/1.1, `:authority` on HTTP/2.
    let authority: HeaderValue = if h2 {
        match parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            Some(a) => a,
            None => return Ok(answer(StatusCode::BAD_REQUEST, "400 Bad Request: no authority\n")),
        }
    } else {
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(h), None) => h.clone(),
            _ => return Ok(answer(StatusCode::BAD_REQUEST, "400 Bad Request: one Host header\n")),
        }
    };
    let Ok(auth_str) = authority.to_str() else {
        return Ok(answer(StatusCode::BAD_REQUEST, "400 Bad Request: bad Host\n"));
    };
    let host = request_host(auth_str);
    let Some(tenant) = ctx.tenants.get(&*host) else {
        return Ok(answer(StatusCode::MISDIRECTED_REQUEST, "421 Misdirected Request: unknown host\n"));
    };
    if conn.https && !host.ends_with(CERT_SUFFIX) {
        return Ok(answer(StatusCode::MISDIRECTED_REQUEST, "421 Misdirected Request: SNI\n"));
    }
    drop(host);
    let up: &'static Upstream = &ctx.upstreams[tenant.pool];

    // The head for the backend.
    let headers = &mut parts.headers;
    if ctx.one_pass {
        strip_one_pass(headers, &REPLACED);
    } else {
        strip_hop_by_hop(headers);
        headers.remove(TENANT_HEADER);
        headers.remove(XFF);
        headers.remove(XFP);
        headers.remove(XFH);
    }
    let rid = match headers.get(XRID) {
        Some(v) if acceptable_request_id(v.as_bytes()) => None,
        Some(_) => {
            headers.remove(XRID);
            Some(new_request_id(prefix))
        }
        None => Some(new_request_id(prefix)),
    };
    if h2 {
        // RFC 9113 section 8.2.3: one cookie field for HTTP/1.1.
        if let header::Entry::Occupied(e) = headers.entry(header::COOKIE) {
            if e.iter().nth(1).is_some() {
                let (_, values) = e.remove_entry_mult();
                let mut joined = Vec::new();
                for v in values {
                    if !joined.is_empty() {
                        joined.extend_from_slice(b"; ");
                    }
                    joined.extend_from_slice(v.as_bytes());
                }
                if let Ok(v) = HeaderValue::from_bytes(&joined) {
                    headers.insert(header::COOKIE, v);
                }
            }
        }
        headers.insert(header::HOST, authority.clone());
    }
    headers.insert(TENANT_HEADER, tenant.id.clone());
    if let Some(p) = &conn.peer {
        headers.insert(XFF, p.clone());
    }
    headers.insert(
        XFP,
        HeaderValue::from_static(if conn.https { "https" } else { "http" }),
    );
    headers.insert(XFH, authority);
    if let Some(id) = rid {
        headers.insert(XRID, id);
    }
    parts.version = Version::HTTP_11;

    let result = match ctx.mode {
        ClientMode::Conn => {
            if h2 {
                // Origin-form for the backend.
                let pq = parts.uri.path_and_query().cloned();
                parts.uri = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
            }
            forward_conn(up, ctx.writev, Request::from_parts(parts, body)).await
        }
        ClientMode::Legacy => {
            let mut u = http::uri::Parts::default();
            u.scheme = Some(http::uri::Scheme::HTTP);
            u.authority = Some(up.authority.clone());
            u.path_and_query = parts.uri.path_and_query().cloned();
            parts.uri = Uri::from_parts(u).unwrap();
            match tokio::time::timeout(READ_TIMEOUT, ctx.legacy.request(Request::from_parts(parts, body))).await {
                Ok(Ok(r)) => Ok(r.map(ProxyBody::Plain)),
                Ok(Err(_)) => Err(StatusCode::BAD_GATEWAY),
                Err(_) => Err(StatusCode::GATEWAY_TIMEOUT),
            }
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(s) => {
            let body = if s == StatusCode::GATEWAY_TIMEOUT { "504 Gateway Timeout\n" } else { "502 Bad Gateway\n" };
            answer(s, body)
        }
    };
    if ctx.one_pass {
        strip_one_pass(resp.headers_mut(), &[]);
    } else {
        strip_hop_by_hop(resp.headers_mut());
    }
    let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    tenant.counters[class].fetch_add(1, Ordering::Relaxed);
    up.observe(start.elapsed());
    Ok(resp)
}

/// Sends `req` on a kept-alive connection to `up`, or a new one; a request
/// the connection refused before sending it goes once more on a new one.
async fn forward_conn(up: &'static Upstream, writev: bool, req: Request<Incoming>) -> Result<Response<ProxyBody>, StatusCode> {
    let mut req = req;
    let mut fresh = false;
    loop {
        let mut sender = match if fresh { None } else { up.take_idle().await } {
            Some(s) => s,
            None => {
                fresh = true;
                up.connect(writev).await.map_err(|_| StatusCode::BAD_GATEWAY)?
            }
        };
        match tokio::time::timeout(READ_TIMEOUT, sender.try_send_request(req)).await {
            Ok(Ok(resp)) => {
                let (parts, inner) = resp.into_parts();
                let body = ProxyBody::Pooled {
                    inner,
                    back: Some((sender, up)),
                };
                return Ok(Response::from_parts(parts, body));
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(r) if !fresh => {
                    req = r;
                    fresh = true;
                }
                _ => return Err(StatusCode::BAD_GATEWAY),
            },
            Err(_) => return Err(StatusCode::GATEWAY_TIMEOUT),
        }
    }
}

/// The TLS stream without vectored writes, as tenantgate hands it to h2:
/// then h2 copies small DATA payloads into its buffer and the responses of
/// streams that finish together leave in one TLS write.
struct Unvectored<S>(S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Unvectored<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Unvectored<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn conn_info(peer: SocketAddr, https: bool) -> Arc<Conn> {
    let ip: IpAddr = peer.ip();
    Arc::new(Conn {
        peer: HeaderValue::from_str(&ip.to_string()).ok(),
        https,
    })
}

async fn serve_h1<I>(ctx: &'static Ctx, io: I, conn: Arc<Conn>, prefix: u64)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(ctx, conn.clone(), prefix, req));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .keep_alive(true)
        .writev(ctx.writev)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn serve_h2<I>(ctx: &'static Ctx, io: I, conn: Arc<Conn>, prefix: u64)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(ctx, conn.clone(), prefix, req));
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let need = |n: &str| arg(&args, n).unwrap_or_else(|| panic!("missing {n}"));
    let http: SocketAddr = need("--http").parse().expect("--http");
    let https: Option<SocketAddr> = arg(&args, "--https").map(|a| a.parse().expect("--https"));
    let pools: Vec<SocketAddr> = vec![need("--pool-a").parse().expect("--pool-a"), need("--pool-b").parse().expect("--pool-b")];
    let n: usize = arg(&args, "--tenants").map_or(10_000, |t| t.parse().expect("--tenants"));
    let threads: usize = arg(&args, "--threads").map_or(2, |t| t.parse().expect("--threads"));
    let vectored = args.iter().any(|a| a == "--vectored");
    let writev = !args.iter().any(|a| a == "--flat-writes");
    let one_pass = args.iter().any(|a| a == "--one-pass-strip");
    let mode = match arg(&args, "--client").as_deref() {
        None | Some("conn") => ClientMode::Conn,
        Some("legacy") => ClientMode::Legacy,
        Some(o) => panic!("--client conn|legacy, not {o}"),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut map: HashMap<Box<str>, Tenant, ahash::RandomState> =
            HashMap::with_capacity_and_hasher(n, ahash::RandomState::new());
        for i in 1..=n {
            let name = format!("t{i:05}.example.test");
            let id = HeaderValue::from_str(&name[..6]).unwrap();
            map.insert(
                name.into_boxed_str(),
                Tenant {
                    id,
                    pool: if i % 2 == 1 { 0 } else { 1 },
                    counters: Default::default(),
                },
            );
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let legacy = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        let ctx: &'static Ctx = Box::leak(Box::new(Ctx {
            tenants: map,
            upstreams: pools
                .iter()
                .map(|a| Upstream {
                    addr: *a,
                    authority: a.to_string().parse().unwrap(),
                    idle: Mutex::new(Vec::new()),
                    buckets: Default::default(),
                    sum_us: AtomicU64::new(0),
                })
                .collect(),
            mode,
            writev,
            one_pass,
            legacy,
        }));
        let prefix = prefix();

        if let Some(addr) = https {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let cert = rcgen::generate_simple_self_signed(vec!["*.example.test".to_string()]).expect("cert");
            let der = cert.cert.der().clone();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .expect("cert");
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind(addr).await.expect("bind https");
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, peer)) = listener.accept().await else { continue };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        let Ok(Ok(tls)) = tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await else {
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let conn = conn_info(peer, true);
                        match (h2, vectored) {
                            (true, false) => serve_h2(ctx, Unvectored(tls), conn, prefix).await,
                            (true, true) => serve_h2(ctx, tls, conn, prefix).await,
                            (false, _) => serve_h1(ctx, tls, conn, prefix).await,
                        }
                    });
                }
            });
        }

        let listener = TcpListener::bind(http).await.expect("bind http");
        eprintln!("hyper-proto: http {http}, https {https:?}, {n} tenants, client {}", if mode == ClientMode::Conn { "conn" } else { "legacy" });
        loop {
            let Ok((tcp, peer)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                serve_h1(ctx, tcp, conn_info(peer, false), prefix).await;
            });
        }
    });
}
