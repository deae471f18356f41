//! tenantgate's request engine (HTTP/1.x and HTTP/2), against a scripted
//! backend that answers with exact bytes: response framing (length,
//! chunked with trailers, until close, no body), pipelining, request
//! bodies streamed both ways at once, hop-by-hop headers both ways,
//! interim responses, bad and slow backends, stale kept-alive backend
//! connections, HTTP/1.0, absolute-form, `Expect`, upgrades, strict
//! parsing, and HTTP/2 streams over TLS.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{backend, h2_connect, https_client, raw_status, tls_h2, Echo, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted backend sends for a request path, and whether it
/// closes the connection afterwards.
fn script(method: &str, path: &str) -> (Vec<u8>, bool) {
    let (bytes, close): (&[u8], bool) = match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/length" if method == "HEAD" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
        "/length" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
        "/204" => (b"HTTP/1.1 204 No Content\r\nX-Done: 1\r\n\r\n", false),
        "/close" => (b"HTTP/1.1 200 OK\r\nX-Framing: none\r\n\r\nuntil close", true),
        "/hop" => (
            b"HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
            true,
        ),
        "/malformed" => (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", true),
        "/two-lengths" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", true),
        "/early-held" => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate", false),
        "/cl-listed" => (
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
            false,
        ),
        "/early" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        // Closes right after answering, without saying so.
        "/stale" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale", true),
        _ => {
            let body = format!("{method} {path}");
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            return (resp.into_bytes(), false);
        }
    };
    (bytes.to_vec(), close)
}

/// A backend that answers by [`script`] and records every request head.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    /// `/early-held` sends its 103, then waits for this before the 200.
    release: Arc<tokio::sync::Notify>,
    /// Connections the gateway closed (read end of file).
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

async fn scripted() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(tokio::sync::Notify::new());
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen, held, ended) = (heads.clone(), release.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let ended = ended.clone();
            let served = serve_scripted(conn, seen.clone(), held.clone());
            tokio::spawn(async move {
                if served.await {
                    ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    Scripted {
        addr,
        heads,
        release,
        closed,
    }
}

/// Serves one connection; `true` when the gateway closed it.
async fn serve_scripted(mut conn: TcpStream, seen: Arc<Mutex<Vec<String>>>, release: Arc<tokio::sync::Notify>) -> bool {
    let mut buf = Vec::new();
    // After "/drop-next", the next request on this connection is read and
    // the connection closed without an answer: a kept-alive connection that
    // the backend closed just as the gateway reused it.
    let mut drop_next = false;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 65536];
            match conn.read(&mut chunk).await {
                Ok(0) => return true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let length: usize = header_of(&head, "content-length").map_or(0, |v| v.parse().expect("length"));
        while buf.len() < length {
            let mut chunk = [0u8; 65536];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let mut words = head.split(' ');
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if drop_next {
            return false;
        }
        drop_next = path == "/drop-next";
        let (resp, close) = script(method, path);
        seen.lock().expect("lock").push(head.clone());
        if path == "/early-held" {
            let _ = conn
                .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </b.css>\r\n\r\n")
                .await;
            release.notified().await;
        }
        if path == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if path == "/held" {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        if conn.write_all(&resp).await.is_err() || close {
            return false;
        }
    }
}

/// Reads into `buf` until it holds `needle`; the index just past it.
async fn read_until(conn: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(i + needle.len());
        }
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn config(upstream: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
read_timeout_ms = 500

[pools.scripted]
upstreams = ["{upstream}"]

[pools.echo]
upstreams = ["{echo}"]

[[tenants]]
id = "a"
domains = ["a.example"]
pool = "scripted"

[[tenants]]
id = "e"
domains = ["e.example"]
pool = "echo"
"#
    )
}

struct Fixture {
    gw: Gateway,
    backend: Scripted,
}

async fn fixture() -> Fixture {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let gw = Gateway::start(&config(backend.addr, echo)).await;
    Fixture { gw, backend }
}

async fn backend_echo() -> SocketAddr {
    let b = backend("echo").await;
    let addr = b.addr;
    // The echo backend runs as long as its handle lives: keep it for the test.
    std::mem::forget(b);
    addr
}

/// One client connection that sends requests and reads whole responses.
struct Client {
    conn: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(gw: &Gateway) -> Client {
        Client {
            conn: TcpStream::connect(gw.http).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.conn.write_all(raw.as_bytes()).await.expect("write");
    }

    /// Reads one response head and `body_len` more bytes; returns the head
    /// and the body.
    async fn response(&mut self, body_len: usize) -> (String, String) {
        let end = read_until(&mut self.conn, &mut self.buf, b"\r\n\r\n")
            .await
            .unwrap_or_else(|| panic!("no response head; got {:?}", String::from_utf8_lossy(&self.buf)));
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let body = self.body(body_len).await;
        (head, body)
    }

    /// Reads one response whose body has a Content-Length.
    async fn sized_response(&mut self) -> (String, String) {
        let (head, _) = self.response(0).await;
        let len: usize = header_of(&head, "content-length")
            .expect("length")
            .parse()
            .expect("digits");
        let body = self.body(len).await;
        (head, body)
    }

    /// The next `len` bytes.
    async fn body(&mut self, len: usize) -> String {
        while self.buf.len() < len {
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout(Duration::from_secs(5), self.conn.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                other => panic!("body cut short ({other:?})"),
            }
        }
        let body = String::from_utf8_lossy(&self.buf[..len]).into_owned();
        self.buf.drain(..len);
        body
    }

    /// A chunked body, decoded.
    async fn dechunk(&mut self) -> String {
        let mut body = String::new();
        loop {
            let end = read_until(&mut self.conn, &mut self.buf, b"\r\n")
                .await
                .expect("chunk size");
            let size = usize::from_str_radix(String::from_utf8_lossy(&self.buf[..end - 2]).trim(), 16).expect("hex");
            self.buf.drain(..end);
            let data = self.body(size + 2).await;
            if size == 0 {
                return body;
            }
            body.push_str(&data[..size]);
        }
    }

    /// Whether the gateway closed the connection (nothing more arrives).
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 16];
        self.buf.is_empty()
            && matches!(
                tokio::time::timeout(Duration::from_secs(3), self.conn.read(&mut chunk)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
    }
}

const CHUNKED_BODY: &str = "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";

#[tokio::test]
async fn every_response_framing_is_relayed_exactly_on_one_connection() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;

    c.send("GET /chunked HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, body) = c.response(CHUNKED_BODY.len()).await;
    assert_eq!(raw_status(&head), 200);
    assert_eq!(header_of(&head, "transfer-encoding"), Some("chunked"));
    assert_eq!(body, CHUNKED_BODY, "chunks and trailers pass through unchanged");

    c.send("HEAD /length HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, _) = c.response(0).await;
    assert_eq!(
        header_of(&head, "content-length"),
        Some("5"),
        "HEAD keeps the length, sends no body"
    );

    c.send("GET /204 HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, _) = c.response(0).await;
    assert_eq!(raw_status(&head), 204);
    assert_eq!(header_of(&head, "x-done"), Some("1"));

    c.send("GET /length HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, body) = c.response(5).await;
    assert_eq!((raw_status(&head), body.as_str()), (200, "hello"));
    assert_eq!(header_of(&head, "connection"), None, "served by the lean path");

    // A body that ends when the backend closes reaches the client chunked,
    // so the client's connection stays open.
    c.send("GET /close HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, _) = c.response(0).await;
    assert_eq!(header_of(&head, "transfer-encoding"), Some("chunked"));
    assert_eq!(header_of(&head, "x-framing"), Some("none"));
    assert!(header_of(&head, "date").is_some(), "a response without Date gets one");
    assert_eq!(c.dechunk().await, "until close");
    c.send("GET /length HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await;
    let (head, body) = c.response(5).await;
    assert_eq!((raw_status(&head), body.as_str()), (200, "hello"));
    assert_eq!(header_of(&head, "connection"), Some("close"));
    assert!(c.closed().await, "Connection: close is honoured");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;
    c.send(
        "GET /one HTTP/1.1\r\nHost: a.example\r\n\r\nGET /two HTTP/1.1\r\nHost: a.example\r\n\r\n\
         GET /three HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    for path in ["/one", "/two", "/three"] {
        let expected = format!("GET {path}");
        let (head, body) = c.response(expected.len()).await;
        assert_eq!((raw_status(&head), body), (200, expected));
    }
    assert!(c.closed().await, "Connection: close is honoured after the last one");

    // A hundred in one write, bodies of both framings among them (to the
    // echo backend): every one answered, in order.
    let mut c = Client::connect(&f.gw).await;
    let mut burst = String::new();
    for i in 0..100 {
        burst.push_str(&match i % 3 {
            0 => format!("GET /p{i} HTTP/1.1\r\nHost: e.example\r\n\r\n"),
            1 => format!("POST /p{i} HTTP/1.1\r\nHost: e.example\r\nContent-Length: 3\r\n\r\nabc"),
            _ => format!(
                "POST /p{i} HTTP/1.1\r\nHost: e.example\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
            ),
        });
    }
    c.send(&burst).await;
    for i in 0..100 {
        let (head, body) = c.sized_response().await;
        assert_eq!(raw_status(&head), 200, "request {i}: {head}");
        let echo = Echo::parse(&body);
        assert_eq!(echo.0["path"], format!("/p{i}"));
        assert_eq!(echo.0["body_len"], [0, 3, 2][i % 3]);
    }
}

#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_gateway_in_both_directions() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;
    c.send(
        "GET /hop HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\n\
         Keep-Alive: 300\r\nTE: trailers\r\nX-Tenant-Id: evil\r\nX-Forwarded-Host: evil\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    let (head, body) = c.response(2).await;
    assert_eq!((raw_status(&head), body.as_str()), (200, "ok"));
    for gone in ["x-hop", "keep-alive", "connection"] {
        assert_eq!(header_of(&head, gone), None, "{gone} reached the client:\n{head}");
    }
    let seen = f
        .backend
        .heads
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a request");
    for gone in ["x-secret", "keep-alive", "te", "connection"] {
        assert_eq!(header_of(&seen, gone), None, "{gone} reached the backend:\n{seen}");
    }
    assert_eq!(header_of(&seen, "x-tenant-id"), Some("a"));
    assert_eq!(header_of(&seen, "x-forwarded-host"), Some("a.example"));
    assert_eq!(header_of(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(header_of(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header_of(&seen, "x-kept"), Some("yes"));
    assert_eq!(header_of(&seen, "x-request-id").map(str::len), Some(32));

    // The backend's Connection: close was about its own connection: the
    // client's stays open.
    c.send("GET /again HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (_, body) = c.response("GET /again".len()).await;
    assert_eq!(body, "GET /again");
}

#[tokio::test]
async fn interim_responses_reach_the_client_before_the_final_one() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;
    c.send("GET /early HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, _) = c.response(0).await;
    assert_eq!(raw_status(&head), 103);
    assert_eq!(header_of(&head, "link"), Some("</a.css>; rel=preload"));
    let (head, body) = c.response(2).await;
    assert_eq!((raw_status(&head), body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn broken_and_slow_backends_get_502_and_504_with_the_config_intact() {
    let f = fixture().await;
    for path in ["/malformed", "/two-lengths"] {
        let resp =
            f.gw.raw(&format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n"))
                .await;
        assert_eq!(raw_status(&resp), 502, "{path}: {resp}");
    }
    let resp = f.gw.raw("GET /slow HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 504, "read timeout 500 ms: {resp}");
    let (status, body) = f.gw.get("a.example", "/fine").await;
    assert_eq!((status, body.as_str()), (200, "GET /fine"));
    f.gw.wait_metric(r#"tenantgate_upstream_errors_total{kind="proxy",pool="scripted"}"#, 3.0)
        .await;
}

#[tokio::test]
async fn kept_alive_backend_connections_that_went_stale_are_retried_for_safe_requests() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;
    // Each answer closes the backend connection without a word: the pool
    // sees it closed and the next request opens a new one.
    for _ in 0..5 {
        c.send("GET /stale HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
        let (head, body) = c.response(5).await;
        assert_eq!((raw_status(&head), body.as_str()), (200, "stale"));
    }
    // The backend closes the kept-alive connection just as it is reused: a
    // GET is sent again on a new connection and the client never notices.
    c.send("GET /drop-next HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (_, body) = c.response("GET /drop-next".len()).await;
    assert_eq!(body, "GET /drop-next");
    c.send("GET /retried HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, body) = c.response("GET /retried".len()).await;
    assert_eq!((raw_status(&head), body.as_str()), (200, "GET /retried"));
    // A POST is never sent twice: the client gets 502.
    let mut c = Client::connect(&f.gw).await;
    c.send("GET /drop-next HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    c.response("GET /drop-next".len()).await;
    c.send("POST /once HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    let (head, _) = c.response(0).await;
    assert_eq!(raw_status(&head), 502);
    let posts = f
        .backend
        .heads
        .lock()
        .expect("lock")
        .iter()
        .filter(|h| h.starts_with("POST /once"))
        .count();
    assert_eq!(posts, 0, "the dropped POST was not answered, and not sent again");
}

#[tokio::test]
async fn request_bodies_stream_through_both_paths() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;
    // 1 MiB with a Content-Length: the lean path streams it.
    let body = "x".repeat(1 << 20);
    c.send(&format!(
        "POST /upload HTTP/1.1\r\nHost: e.example\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
    .await;
    let (_, echoed) = c.sized_response().await;
    let echo = Echo::parse(&echoed);
    assert_eq!(echo.0["body_len"], 1 << 20);
    assert_eq!(echo.header("x-tenant-id").as_deref(), Some("e"));

    // Chunked: pingora's path takes the connection, and keeps serving it.
    c.send("POST /chunked-up HTTP/1.1\r\nHost: e.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    let (head, echoed) = c.sized_response().await;
    assert_eq!(raw_status(&head), 200);
    let echo = Echo::parse(&echoed);
    assert_eq!(echo.0["body_len"], 3);
    assert_eq!(echo.0["path"], "/chunked-up");
    c.send("GET /after HTTP/1.1\r\nHost: e.example\r\n\r\n").await;
    let (head, echoed) = c.sized_response().await;
    assert_eq!(raw_status(&head), 200);
    assert_eq!(Echo::parse(&echoed).0["path"], "/after");
}

#[tokio::test]
async fn unusual_requests_are_served_by_the_one_engine_with_the_same_rules() {
    let f = fixture().await;
    let resp = f.gw.raw("GET /old HTTP/1.0\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(resp.ends_with("GET /old"), "{resp}");
    assert_eq!(header_of(&resp, "connection"), Some("close"), "{resp}");
    // HTTP/1.0 with keep-alive: a body without a length (chunked from the
    // backend) comes unchunked, and the connection closes after it.
    let resp =
        f.gw.raw("GET /chunked HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n")
            .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello world"), "{resp}");
    assert_eq!(header_of(&resp, "transfer-encoding"), None, "{resp}");
    let resp =
        f.gw.raw("GET http://a.example/abs?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(resp.ends_with("GET /abs?q=1"), "forwarded in origin-form: {resp}");
    let resp =
        f.gw.raw("GET http://b.example/abs HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(raw_status(&resp), 400, "a target that disagrees with Host: {resp}");
    let resp =
        f.gw.raw("GET /x HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(raw_status(&resp), 421, "{resp}");
    let resp = f.gw.raw("GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    let resp =
        f.gw.raw("OPTIONS * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(resp.ends_with("OPTIONS *"), "{resp}");
    let resp =
        f.gw.raw("GET * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(raw_status(&resp), 400, "asterisk-form is for OPTIONS only: {resp}");
    let resp =
        f.gw.raw("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
            .await;
    assert_eq!(raw_status(&resp), 405, "{resp}");
    // Expect: 100-continue is answered by the gateway once the request is
    // routed and admitted; the body follows.
    let mut c = Client::connect(&f.gw).await;
    c.send("PUT /up HTTP/1.1\r\nHost: e.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let mut interim = vec![0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), c.conn.read_exact(&mut interim))
        .await
        .expect("100 in time")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send("hello").await;
    let (head, echoed) = c.sized_response().await;
    assert_eq!(raw_status(&head), 200, "{head}");
    let echo = Echo::parse(&echoed);
    assert_eq!(echo.0["body_len"], 5);
    assert_eq!(echo.header("expect"), None, "the backend is not asked to expect");
    // A spoofed tenant header never survives, in any spelling.
    let resp = f
        .gw
        .raw("GET /h HTTP/1.0\r\nHost: e.example\r\nX-Tenant-Id: evil\r\nX_Tenant_Id: evil\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n")
        .await;
    let body = resp.split("\r\n\r\n").nth(1).expect("body");
    let echo = Echo::parse(body);
    assert_eq!(echo.header_all("x-tenant-id"), vec!["e".to_string()]);
    assert!(!body.contains("evil") && !body.contains("6.6.6.6"), "{body}");
}

/// Freed pages wait 1 s in the allocator; the trim thread hands them back
/// while the gateway idles (why: benches/results/purge-2026-12-04.md).
#[tokio::test]
async fn the_gateway_runs_the_memory_trim_thread() {
    let f = fixture().await;
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", f.gw.pid()))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "tenantgate trim"),
        "no trim thread among {names:?}"
    );
}

/// The scripted and echo backends behind HTTPS (internal CA) as well.
async fn tls_fixture() -> (Gateway, Vec<u8>, Scripted) {
    tls_fixture_with(500).await
}

/// [`tls_fixture`] with `read_timeout_ms = read_ms`.
async fn tls_fixture_with(read_ms: u64) -> (Gateway, Vec<u8>, Scripted) {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let cfg = config(backend.addr, echo).replace(
        "read_timeout_ms = 500",
        &format!("read_timeout_ms = {read_ms}\nhttps_listen = \"{{https}}\"\n\n[tls]\nissuer = \"internal\"\nredirect_http = false\n"),
    );
    let gw = Gateway::start(&cfg).await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("internal CA root");
    (gw, root, backend)
}

#[tokio::test]
async fn http2_streams_relay_every_framing_with_trusted_headers() {
    let (gw, root, backend) = tls_fixture().await;
    let client = https_client(&root, &["a.example", "e.example"], gw.https, false);
    let url = |host: &str, path: &str| format!("https://{host}:{}{path}", gw.https.port());
    let get = |path: &str| client.get(url("a.example", path)).send();

    let resp = get("/chunked").await.expect("chunked");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(resp.headers().get("date").is_some(), "a response without Date gets one");
    assert_eq!(resp.text().await.expect("body"), "hello world", "unchunked for HTTP/2");
    let resp = get("/length").await.expect("length");
    assert_eq!(resp.text().await.expect("body"), "hello");
    let resp = client.head(url("a.example", "/length")).send().await.expect("head");
    assert_eq!(
        resp.headers().get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    assert_eq!(get("/204").await.expect("204").status().as_u16(), 204);
    assert_eq!(
        get("/close").await.expect("close").text().await.expect("body"),
        "until close"
    );
    let resp = get("/early").await.expect("103 then 200");
    assert_eq!(
        (resp.status().as_u16(), resp.text().await.expect("body").as_str()),
        (200, "ok")
    );

    let seen = backend.heads.lock().expect("lock").first().cloned().expect("a request");
    let authority = format!("a.example:{}", gw.https.port());
    assert!(
        seen.starts_with(&format!("GET /chunked HTTP/1.1\r\nhost: {authority}\r\n")),
        "{seen}"
    );
    assert_eq!(header_of(&seen, "x-tenant-id"), Some("a"));
    assert_eq!(header_of(&seen, "x-forwarded-proto"), Some("https"));
    assert_eq!(header_of(&seen, "x-forwarded-host"), Some(authority.as_str()));

    // A client's copy of the tenant header never gets through.
    let resp = client
        .get(url("e.example", "/who"))
        .header("x-tenant-id", "evil")
        .send()
        .await
        .expect("echo");
    let echo = Echo::parse(&resp.text().await.expect("body"));
    assert_eq!(echo.header_all("x-tenant-id"), vec!["e".to_string()]);
}

#[tokio::test]
async fn http2_multiplexes_hundreds_of_streams_on_one_connection() {
    let (gw, root, _backend) = tls_fixture().await;
    let client = https_client(&root, &["e.example"], gw.https, false);
    let first = client
        .get(format!("https://e.example:{}/", gw.https.port()))
        .send()
        .await;
    assert_eq!(first.expect("first").status().as_u16(), 200);
    let requests = (0..300).map(|i| {
        let client = client.clone();
        let url = format!("https://e.example:{}/n/{i}", gw.https.port());
        async move {
            let resp = client.get(url).send().await.expect("stream");
            (
                resp.status().as_u16(),
                Echo::parse(&resp.text().await.expect("body")).0["path"].clone(),
            )
        }
    });
    let results = futures_util::future::join_all(requests).await;
    for (i, (status, path)) in results.into_iter().enumerate() {
        assert_eq!(
            (status, path.as_str()),
            (200, Some(format!("/n/{i}").as_str())),
            "stream {i}"
        );
    }
    assert_eq!(
        gw.metric("tenantgate_tls_handshakes_total{result=\"ok\"}").await,
        1.0,
        "one connection"
    );
}

#[tokio::test]
async fn http2_failures_get_their_status_and_unknown_hosts_421() {
    let (gw, root, _backend) = tls_fixture().await;
    let client = https_client(&root, &["a.example"], gw.https, false);
    let status = |path: &'static str| {
        let client = client.clone();
        let url = format!("https://a.example:{}{path}", gw.https.port());
        async move { client.get(url).send().await.expect("response").status().as_u16() }
    };
    assert_eq!(status("/malformed").await, 502);
    assert_eq!(status("/two-lengths").await, 502);
    assert_eq!(status("/slow").await, 504);
    assert_eq!(status("/fine").await, 200, "the connection survives failed streams");
    // A Host that disagrees with :authority: 400.
    let resp = client
        .get(format!("https://a.example:{}/x", gw.https.port()))
        .header("host", "e.example")
        .send()
        .await
        .expect("response");
    assert_eq!(resp.status().as_u16(), 400);
    // Another tenant's host on a.example's connection: 421.
    let (status, _) = h2_request(gw.https, &root, "a.example", "https://e.example/x", &[]).await;
    assert_eq!(status, 421);
    let (status, _) = h2_request(gw.https, &root, "a.example", "https://nobody.example/x", &[]).await;
    assert_eq!(status, 421);
}

#[tokio::test]
async fn http2_request_bodies_reach_the_backend_with_and_without_a_length() {
    let (gw, root, _backend) = tls_fixture().await;
    let client = https_client(&root, &["e.example"], gw.https, false);
    let body = vec![b'x'; 300_000];
    let resp = client
        .post(format!("https://e.example:{}/up", gw.https.port()))
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(Echo::parse(&resp.text().await.expect("body")).0["body_len"], 300_000);

    // No content-length: the backend gets it chunked.
    let (status, text) = h2_request(
        gw.https,
        &root,
        "e.example",
        "https://e.example/raw",
        &[b"abc", b"defgh", b""],
    )
    .await;
    assert_eq!(status, 200);
    let echo = Echo::parse(&text);
    assert_eq!(echo.0["body_len"], 8);
    assert_eq!(echo.header("transfer-encoding").as_deref(), Some("chunked"));
}

/// A raw HTTP/2 request on a connection with SNI `sni`: a GET when
/// `chunks` is empty, else a POST of `chunks` as DATA frames with no
/// content-length. Returns the status and the body.
async fn h2_request(addr: SocketAddr, root_pem: &[u8], sni: &str, uri: &str, chunks: &[&[u8]]) -> (u16, String) {
    let mut h2 = h2_connect(addr, root_pem, sni).await;
    let method = if chunks.is_empty() { "GET" } else { "POST" };
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .expect("request");
    let (resp, mut send) = h2.send_request(req, chunks.is_empty()).expect("send");
    for (i, c) in chunks.iter().enumerate() {
        send.send_data(bytes::Bytes::copy_from_slice(c), i + 1 == chunks.len())
            .expect("data");
    }
    let resp = resp.await.expect("response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(d) = body.data().await {
        let d = d.expect("data");
        body.flow_control().release_capacity(d.len()).expect("window");
        text.extend_from_slice(&d);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn http2_streams_reset_after_they_started_still_count_towards_the_stream_cap() {
    let (gw, root, scripted) = tls_fixture_with(15_000).await;
    let mut h2 = h2_connect(gw.https, &root, "a.example").await;
    let slow_heads = || {
        scripted
            .heads
            .lock()
            .expect("lock")
            .iter()
            .filter(|h| h.starts_with("GET /held"))
            .count()
    };
    let mut open = Vec::new();
    for _ in 0..100 {
        h2 = h2.ready().await.expect("ready");
        let req = http::Request::get("https://a.example/held").body(()).expect("request");
        open.push(h2.send_request(req, true).expect("send"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while slow_heads() < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} streams reached the backend",
            slow_heads()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Reset all 100 while the gateway still works on them (the backend
    // holds them 10 s, the read timeout is 15 s): h2 stops counting them,
    // the gateway does not, so the next 100 are refused, not forwarded
    // (rapid reset, CVE-2023-44487).
    for (_, send) in &mut open {
        send.send_reset(h2::Reason::CANCEL);
    }
    let mut refused = 0;
    for _ in 0..100 {
        h2 = h2.ready().await.expect("ready");
        let req = http::Request::get("https://a.example/held").body(()).expect("request");
        let (response, _) = h2.send_request(req, true).expect("send");
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("answered in time")
        {
            assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}");
            refused += 1;
        }
    }
    assert_eq!(
        slow_heads(),
        100,
        "reset streams still running: no more work reached the backend"
    );
    assert_eq!(refused, 100);
    let (status, body) = h2_request(gw.https, &root, "a.example", "https://a.example/fine", &[]).await;
    assert_eq!((status, body.as_str()), (200, "GET /fine"));
}

#[tokio::test]
async fn a_client_gets_client_timeout_ms_for_a_whole_head_and_for_idling() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let cfg = config(backend.addr, echo).replace(
        "read_timeout_ms = 500",
        "read_timeout_ms = 500\nclient_timeout_ms = 500",
    );
    let gw = Gateway::start(&cfg).await;

    // A head trickled a byte every 100 ms: each read is quick, but the
    // whole head is late, so the connection closes while it is still coming.
    let mut c = Client::connect(&gw).await;
    let head =
        b"GET /slow-head HTTP/1.1\r\nHost: a.example\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed_at = None;
    for (i, byte) in head.iter().enumerate() {
        if c.conn.write_all(std::slice::from_ref(byte)).await.is_err() {
            closed_at = Some(i);
            break;
        }
        let mut one = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(100), c.conn.read(&mut one)).await {
            closed_at = Some(i);
            break;
        }
    }
    let at = closed_at.expect("the connection was closed before the head was complete");
    assert!(at < head.len() - 1, "closed after byte {at} of {}", head.len());

    // An idle kept-alive connection is closed after the timeout.
    let mut c = Client::connect(&gw).await;
    c.send("GET /idle HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (_, body) = c.response("GET /idle".len()).await;
    assert_eq!(body, "GET /idle");
    assert!(c.closed().await, "idle connection closed after client_timeout_ms");
}

#[tokio::test]
async fn connection_tokens_cannot_drop_framing_or_host_and_smuggle_a_request() {
    let f = fixture().await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: a.example\r\nX-Tenant-Id: victim\r\n\r\n";
    let mut c = Client::connect(&f.gw).await;
    c.send(&format!(
        "POST /smuggle HTTP/1.1\r\nHost: a.example\r\nContent-Length: {}\r\nConnection: content-length, host\r\n\r\n{smuggled}",
        smuggled.len()
    ))
    .await;
    let (_, body) = c.response("POST /smuggle".len()).await;
    assert_eq!(body, "POST /smuggle");
    c.send("GET /after HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (_, body) = c.response("GET /after".len()).await;
    assert_eq!(body, "GET /after");
    let heads = f.backend.heads.lock().expect("lock").clone();
    let post = heads.iter().find(|h| h.starts_with("POST /smuggle")).expect("the POST");
    assert_eq!(
        header_of(post, "content-length"),
        Some(smuggled.len().to_string().as_str()),
        "{post}"
    );
    assert_eq!(header_of(post, "host"), Some("a.example"), "{post}");
    assert!(
        !heads.iter().any(|h| h.starts_with("GET /admin")),
        "a request was smuggled: {heads:?}"
    );

    // A backend's Connection: content-length cannot unframe its response.
    c.send("GET /cl-listed HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, body) = c.response(5).await;
    assert_eq!(
        (header_of(&head, "content-length"), body.as_str()),
        (Some("5"), "hello"),
        "{head}"
    );
    c.send("GET /next HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (_, body) = c.response("GET /next".len()).await;
    assert_eq!(body, "GET /next");
}

#[tokio::test]
async fn answers_to_head_requests_have_no_body_and_keep_the_connection_in_step() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;
    c.send("HEAD /x HTTP/1.1\r\nHost: nobody.example\r\n\r\n").await;
    let (head, _) = c.response(0).await;
    assert_eq!(raw_status(&head), 421);
    assert!(header_of(&head, "content-length").is_some(), "{head}");
    c.send("GET /length HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, body) = c.response(5).await;
    assert_eq!(
        (raw_status(&head), body.as_str()),
        (200, "hello"),
        "no stray body before it"
    );
}

#[tokio::test]
async fn an_interim_response_reaches_the_client_before_the_backend_goes_on() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;
    c.send("GET /early-held HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    // The backend holds its 200 until the client has seen the 103.
    let (head, _) = c.response(0).await;
    assert_eq!(raw_status(&head), 103);
    f.backend.release.notify_one();
    let (head, body) = c.response(4).await;
    assert_eq!((raw_status(&head), body.as_str()), (200, "late"));
}

#[tokio::test]
async fn idle_backend_connections_are_closed_after_their_timeout_without_traffic() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let cfg = config(backend.addr, echo).replace(
        "read_timeout_ms = 500",
        "read_timeout_ms = 500\nupstream_idle_timeout_ms = 300",
    );
    let gw = Gateway::start(&cfg).await;
    let (status, body) = gw.get("a.example", "/once").await;
    assert_eq!((status, body.as_str()), (200, "GET /once"));
    assert_eq!(
        backend.closed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "kept for reuse"
    );
    // No more requests: the reaper closes it within a tick after 300 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backend.closed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle backend connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fixture's config with one more tenant, `<id>.example`, on its own
/// pool at `addr`.
fn with_tenant(cfg: String, id: &str, addr: SocketAddr) -> String {
    format!("{cfg}\n[pools.{id}]\nupstreams = [\"{addr}\"]\n\n[[tenants]]\nid = \"{id}\"\ndomains = [\"{id}.example\"]\npool = \"{id}\"\n")
}

/// A backend that answers every request with `101` (WebSocket) and then
/// echoes every byte until the gateway closes.
async fn upgrade_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(end) = read_until(&mut conn, &mut buf, b"\r\n\r\n").await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                assert!(
                    head.contains("upgrade: websocket\r\n") && head.contains("connection: upgrade\r\n"),
                    "{head}"
                );
                let accept = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
                if conn.write_all(accept).await.is_err() || conn.write_all(&buf[end..]).await.is_err() {
                    return;
                }
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_upgrades_relay_the_101_then_copy_both_ways_until_a_side_closes() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let ws = upgrade_backend().await;
    let cfg = with_tenant(config(backend.addr, echo), "w", ws).replace(
        "read_timeout_ms = 500",
        "read_timeout_ms = 500\ntunnel_idle_timeout_ms = 1000",
    );
    let gw = Gateway::start(&cfg).await;
    const UPGRADE: &str =
        "GET /chat HTTP/1.1\r\nHost: w.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n";
    // Many upgrades at once, each talking right after the 101: none is
    // closed early.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = gw.http;
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(UPGRADE.as_bytes()).await.expect("write");
            let mut buf = Vec::new();
            let end = read_until(&mut c, &mut buf, b"\r\n\r\n").await.expect("101 head");
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            assert!(head.starts_with("http/1.1 101"), "{head}");
            assert!(
                head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
                "{head}"
            );
            let msg = format!("ping {i}");
            c.write_all(msg.as_bytes()).await.expect("write");
            let mut got = buf[end..].to_vec();
            while got.len() < msg.len() {
                let mut chunk = [0u8; 64];
                let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
                    .await
                    .expect("echo in time")
                    .expect("read");
                assert!(n > 0, "tunnel closed early after {} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got, msg.as_bytes());
        }));
    }
    for t in tasks {
        t.await.expect("upgrade");
    }
    // Megabytes both ways at once.
    let mut c = TcpStream::connect(gw.http).await.expect("connect");
    c.write_all(UPGRADE.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let end = read_until(&mut c, &mut buf, b"\r\n\r\n").await.expect("101 head");
    buf.drain(..end);
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = c.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.expect("upload");
        w
    });
    let mut got = buf;
    while got.len() < payload.len() {
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), r.read(&mut chunk))
            .await
            .expect("echo in time")
            .expect("read");
        assert!(n > 0, "tunnel closed after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got == payload, "the echo differs");
    // Idle for longer than tunnel_idle_timeout_ms: the gateway closes it.
    let _w = writer.await.expect("writer");
    let mut rest = [0u8; 16];
    let idle = tokio::time::timeout(Duration::from_secs(5), r.read(&mut rest)).await;
    assert!(
        matches!(idle, Ok(Ok(0)) | Ok(Err(_))),
        "an idle tunnel is closed: {idle:?}"
    );
}

/// A backend that answers at once, before reading the chunked upload,
/// then reads the upload to its end and reports it, as received, on `done`.
async fn early_answer_backend(done: tokio::sync::mpsc::Sender<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let done = done.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(end) = read_until(&mut conn, &mut buf, b"\r\n\r\n").await else {
                    return;
                };
                buf.drain(..end);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                    .await;
                if let Some(end) = read_until(&mut conn, &mut buf, b"0\r\n\r\n").await {
                    let _ = done.send(String::from_utf8_lossy(&buf[..end]).into_owned()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn uploads_stream_both_ways_at_once_and_an_early_answer_does_not_stall() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(1);
    let early = early_answer_backend(done_tx).await;
    let gw = Gateway::start(&with_tenant(config(backend.addr, echo), "u", early)).await;
    // The answer comes while the upload is still going on.
    let mut c = Client::connect(&gw).await;
    c.send("POST /up HTTP/1.1\r\nHost: u.example\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n")
        .await;
    let (head, body) = c.response(5).await;
    assert_eq!((raw_status(&head), body.as_str()), (200, "early"), "{head}");
    c.send("6\r\n world\r\n0\r\nX-Tenant-Id: victim\r\n\r\n").await;
    let seen = tokio::time::timeout(Duration::from_secs(5), done_rx.recv())
        .await
        .expect("the backend got the whole upload")
        .expect("body");
    assert_eq!(
        seen, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "re-chunked: no extension, no trailer"
    );

    // A chunked upload that trickles in after the head, with the next
    // request right behind its last chunk, on the echo backend.
    let mut c = Client::connect(&gw).await;
    c.send("POST /trickle HTTP/1.1\r\nHost: e.example\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send("3\r\nabc\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send("4;ext=1\r\ndefg\r\n0\r\nX-T: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: e.example\r\n\r\n")
        .await;
    let (head, echoed) = c.sized_response().await;
    assert_eq!(raw_status(&head), 200, "{head}");
    assert_eq!(Echo::parse(&echoed).0["body_len"], 7);
    let (head, echoed) = c.sized_response().await;
    assert_eq!(raw_status(&head), 200, "{head}");
    assert_eq!(Echo::parse(&echoed).0["path"], "/next");

    // A malformed chunk after the head: 400, and the connection closes.
    let mut c = Client::connect(&gw).await;
    c.send("POST /bad HTTP/1.1\r\nHost: e.example\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send("3;bare\nabc\r\n0\r\n\r\n").await;
    let (head, _) = c.response(0).await;
    assert_eq!(raw_status(&head), 400, "{head}");
}

#[tokio::test]
async fn requests_other_parsers_autocorrect_are_refused_and_never_forwarded() {
    let f = fixture().await;
    for (raw, status) in [
        ("Extra lineGET / HTTP/1.1\r\nHost: a.example\r\n\r\n", 400),
        ("GET /a b HTTP/1.1\r\nHost: a.example\r\n\r\n", 400),
        ("GET  /x HTTP/1.1\r\nHost: a.example\r\n\r\n", 400),
        ("GET lineGET HTTP/1.1\r\nHost: a.example\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5, 6\r\n\r\nhello",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nabc\r\n0\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.1\r\nHost: a.example\r\n folded: 1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a.example\r\nExpect: nothing\r\n\r\n", 417),
    ] {
        let resp = f.gw.raw(raw).await;
        assert_eq!(raw_status(&resp), status, "{raw:?} -> {resp}");
        assert_eq!(header_of(&resp, "connection"), Some("close"), "{raw:?} -> {resp}");
    }
    assert!(
        f.backend.heads.lock().expect("lock").is_empty(),
        "nothing reached the backend"
    );
    assert!(f.gw.metric("tenantgate_rejections_total{reason=\"bad_request\"}").await >= 9.0);
    assert_eq!(f.gw.metric("tenantgate_rejections_total{reason=\"coding\"}").await, 1.0);
    // Equal lengths count as one, and the backend sees one.
    let resp = f
        .gw
        .raw("POST /eq HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let heads = f.backend.heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].matches("content-length: 5\r\n").count(), 1, "{}", heads[0]);
    assert!(
        !heads[0].to_lowercase().contains("content-length: 5, 5"),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn a_request_refused_as_unparsable_is_logged_with_its_client_address() {
    let f = fixture().await;
    let mut c = Client::connect(&f.gw).await;
    let me = c.conn.local_addr().expect("local addr");
    c.send("Extra lineGET / HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, _) = c.response(0).await;
    assert_eq!(raw_status(&head), 400, "{head}");
    let client = format!("client={me}");
    let log = f.gw.log_with(&["reason=\"bad_request\""]).await;
    let line = log
        .lines()
        .find(|l| l.contains("reason=\"bad_request\""))
        .unwrap_or_else(|| panic!("no access line for the refused request:\n{log}"));
    assert!(line.contains(&client), "{line}");
}

#[tokio::test]
async fn a_listener_at_max_connections_closes_new_connections_at_once() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let cfg = config(backend.addr, echo).replace("read_timeout_ms = 500", "read_timeout_ms = 500\nmax_connections = 2");
    let gw = Gateway::start(&cfg).await;
    // Two kept-alive connections, each known to the gateway (it answered
    // a request on it).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&gw).await;
        c.send("GET /length HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
        let (_, body) = c.response(5).await;
        assert_eq!(body, "hello");
        held.push(c);
    }
    let mut over = TcpStream::connect(gw.http).await.expect("connect");
    let _ = over.write_all(b"GET / HTTP/1.1\r\nHost: e.example\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed unanswered: {read:?}");
    assert!(
        gw.metric("tenantgate_connections_refused_total{listener=\"http\"}")
            .await
            >= 1.0
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = gw.get("e.example", "/again").await;
    assert_eq!(status, 200, "slots come back when connections close");
}

#[tokio::test]
async fn http2_relays_response_trailers_and_drops_underscored_and_spoofed_headers() {
    let (gw, root, _backend) = tls_fixture().await;
    let mut h2 = h2_connect(gw.https, &root, "a.example").await;
    let req = http::Request::get("https://a.example/chunked")
        .body(())
        .expect("request");
    let (resp, _) = h2.send_request(req, true).expect("send");
    let resp = resp.await.expect("response");
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(d) = body.data().await {
        text.extend_from_slice(&d.expect("data"));
    }
    assert_eq!(text, b"hello world");
    let trailers = body.trailers().await.expect("trailers").expect("some trailers");
    assert_eq!(trailers.get("x-trailer").map(|v| v.as_bytes()), Some(&b"t"[..]));

    let mut h2 = h2_connect(gw.https, &root, "e.example").await;
    let req = http::Request::get("https://e.example/h")
        .header("x_tenant_id", "evil")
        .header("x-tenant-id", "evil")
        .header("x_forwarded_for", "6.6.6.6")
        .header("x_custom", "1")
        .body(())
        .expect("request");
    let (resp, _) = h2.send_request(req, true).expect("send");
    let mut body = resp.await.expect("response").into_body();
    let mut text = Vec::new();
    while let Some(d) = body.data().await {
        text.extend_from_slice(&d.expect("data"));
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let echo = Echo::parse(&text);
    assert_eq!(echo.header_all("x-tenant-id"), vec!["e".to_string()]);
    assert!(
        !text.contains("evil") && !text.contains("6.6.6.6") && !text.contains("x_custom"),
        "{text}"
    );
}

#[tokio::test]
async fn http2_ping_acks_nobody_asked_for_are_ignored_without_a_log_line_each() {
    let (gw, root, _backend) = tls_fixture().await;
    let mut tls = tls_h2(gw.https, &root, "a.example").await;
    // 9-byte frame headers: length, type, flags, stream 0.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    for _ in 0..2000 {
        out.extend_from_slice(b"\x00\x00\x08\x06\x01\x00\x00\x00\x00unasked!");
    }
    // Then a PING of our own: its ACK comes after every frame before it
    // was handled (and logged, if it were).
    out.extend_from_slice(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00ours0001");
    tls.write_all(&out).await.expect("write frames");
    // (type, flags, payload) of each whole frame the gateway sent.
    let frames = |buf: &[u8]| {
        let mut frames = Vec::new();
        let mut rest = buf;
        while rest.len() >= 9 {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            if rest.len() < 9 + len {
                break;
            }
            frames.push((rest[3], rest[4], rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        frames
    };
    let mut got = Vec::new();
    let our_ack = (6u8, 1u8, b"ours0001".to_vec());
    while !frames(&got).contains(&our_ack) {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no answer to our PING ({other:?}); frames: {:?}", frames(&got)),
        }
    }
    // Unsolicited ACKs are ignored (RFC 9113 §6.7): no GOAWAY, and only
    // our PING was acknowledged.
    let frames = frames(&got);
    assert!(frames.iter().all(|f| f.0 != 7), "{frames:?}");
    assert_eq!(frames.iter().filter(|f| f.0 == 6).count(), 1, "{frames:?}");
    let log = gw.log();
    assert_eq!(
        log.matches("PING ack").count(),
        0,
        "a log line per client frame:\n{log}"
    );
}

/// A backend that answers every request with a 64 MiB body and reports,
/// on `ended`, when it could write no more (the gateway dropped it).
async fn endless_backend(ended: tokio::sync::mpsc::Sender<()>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_until(&mut conn, &mut buf, b"\r\n\r\n").await.is_none() {
                    return;
                }
                let total = 64usize << 20;
                let _ = conn
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes())
                    .await;
                let block = vec![b'z'; 1 << 16];
                for _ in 0..total / block.len() {
                    if conn.write_all(&block).await.is_err() {
                        let _ = ended.send(()).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn timeouts_hold_for_clients_that_stop_reading_or_stall_a_body_or_idle_after_http10() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::channel(1);
    let endless = endless_backend(ended_tx).await;
    let cfg = with_tenant(config(backend.addr, echo), "big", endless).replace(
        "read_timeout_ms = 500",
        "read_timeout_ms = 500\nclient_timeout_ms = 800",
    );
    let gw = Gateway::start(&cfg).await;

    // A client that stops reading: once its socket buffers are full, each
    // write to it gets client_timeout_ms, then the gateway drops both sides
    // and the backend connection is released.
    let mut stuck = TcpStream::connect(gw.http).await.expect("connect");
    stuck
        .write_all(b"GET /huge HTTP/1.1\r\nHost: big.example\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(Duration::from_secs(20), ended_rx.recv())
        .await
        .expect("the backend connection was released while the client kept not reading")
        .expect("signal");
    drop(stuck);

    // A chunked upload that stops half way: client_timeout_ms between body
    // reads (not the backend's shorter read timeout), then 408 and close.
    let mut c = Client::connect(&gw).await;
    c.send("POST /stall HTTP/1.1\r\nHost: e.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await;
    let (head, _) = c.response(0).await;
    assert_eq!(raw_status(&head), 408, "{head}");
    assert_eq!(header_of(&head, "connection"), Some("close"), "{head}");

    // HTTP/1.0 kept alive, after a chunked upload on HTTP/1.1 too: an idle
    // connection closes after client_timeout_ms.
    let mut c = Client::connect(&gw).await;
    c.send("GET /ka HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let (head, body) = c.response("GET /ka".len()).await;
    assert_eq!(body, "GET /ka");
    assert_eq!(header_of(&head, "connection"), Some("keep-alive"), "{head}");
    assert!(c.closed().await, "idle HTTP/1.0 keep-alive connection closed");
    let mut c = Client::connect(&gw).await;
    c.send("POST /up HTTP/1.1\r\nHost: e.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    let (head, _) = c.sized_response().await;
    assert_eq!(raw_status(&head), 200, "{head}");
    assert!(c.closed().await, "idle connection after a chunked upload closed");
}

#[tokio::test]
async fn http2_uploads_stream_both_ways_at_once_and_an_early_answer_does_not_stall() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(1);
    let early = early_answer_backend(done_tx).await;
    let cfg = with_tenant(config(backend.addr, echo), "u", early).replace(
        "read_timeout_ms = 500",
        "read_timeout_ms = 500\nhttps_listen = \"{https}\"\n\n[tls]\nissuer = \"internal\"\nredirect_http = false\n",
    );
    let gw = Gateway::start(&cfg).await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("internal CA root");
    let mut h2 = h2_connect(gw.https, &root, "u.example").await;
    let req = http::Request::post("https://u.example/up").body(()).expect("request");
    let (resp, mut send) = h2.send_request(req, false).expect("send");
    send.send_data(bytes::Bytes::from_static(b"hello"), false)
        .expect("data");
    // The answer arrives while the stream's body is still open.
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("the answer came before the upload ended")
        .expect("response");
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(d) = body.data().await {
        text.extend_from_slice(&d.expect("data"));
    }
    assert_eq!(text, b"early");
    send.send_data(bytes::Bytes::from_static(b" world"), true)
        .expect("data");
    tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
        .await
        .expect("the backend got the whole upload")
        .expect("length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_proxy_port_with_few_descriptors_starves_no_other_listener() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = |_| SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let (http, metrics, https, admin) = (port(0), port(1), port(2), port(3));
    let path = dir.path().join("tenantgate.toml");
    std::fs::write(
        &path,
        common::fill(&config(backend.addr, echo), http, metrics, https, admin),
    )
    .expect("config");
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).expect("log");
    // 256 descriptors: the proxy listener holds at most 64 clients.
    let mut child = std::process::Command::new("prlimit")
        .args([
            "--nofile=256:256",
            "--",
            env!("CARGO_BIN_EXE_tenantgate"),
            "serve",
            "--config",
        ])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(metrics).await.is_err() || TcpStream::connect(http).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(http).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // /metrics still answers, and says how many were refused.
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("metrics answers during the flood")
        .text()
        .await
        .expect("body");
    let refused =
        common::series_value(&text, "tenantgate_connections_refused_total{listener=\"http\"}").expect("series");
    assert!(
        refused >= 200.0,
        "at most a quarter of 256 descriptors held: {refused} refused"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = TcpStream::connect(http).await.expect("connect");
    c.write_all(b"GET /after HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut resp)).await;
    assert_eq!(
        raw_status(&String::from_utf8_lossy(&resp)),
        200,
        "the proxy serves again"
    );
    let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        !logged.contains("Too many open files"),
        "no descriptor ran out:\n{logged}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn thread_per_core_mode_keeps_connections_and_reuses_backends_per_thread() {
    kept_alive_connections_on_two_threads(false).await;
}

#[tokio::test]
async fn work_stealing_mode_keeps_connections_and_reuses_backends() {
    kept_alive_connections_on_two_threads(true).await;
}

async fn kept_alive_connections_on_two_threads(work_stealing: bool) {
    let echo = backend("echo").await;
    let scripted = scripted().await;
    let cfg = config(scripted.addr, echo.addr).replace(
        "read_timeout_ms = 500",
        &format!("read_timeout_ms = 500\nthreads = 2\nwork_stealing = {work_stealing}\nhttps_listen = \"{{https}}\"\n\n[tls]\nissuer = \"internal\"\nredirect_http = false\n"),
    );
    let gw = Gateway::start(&cfg).await;

    // HTTP/1.1: 8 kept-alive connections, 25 requests each, in turn.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Client::connect(&gw).await);
    }
    for round in 0..25 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&format!(
                "GET /r{round}/c{i} HTTP/1.1\r\nHost: e.example\r\nX-Tenant-Id: evil\r\n\r\n"
            ))
            .await;
            let (head, body) = c.sized_response().await;
            assert_eq!(raw_status(&head), 200, "{head}");
            let seen = Echo::parse(&body);
            assert_eq!(seen.header_all("x-tenant-id"), vec!["e".to_string()]);
            // The client address survives the socket's move to its thread.
            assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"), "{body}");
        }
    }
    // Over HTTP/2 with TLS as well.
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("internal CA root");
    let client = https_client(&root, &["e.example"], gw.https, false);
    for i in 0..50 {
        let resp = client
            .get(format!("https://e.example:{}/h2/{i}", gw.https.port()))
            .send()
            .await
            .expect("h2");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), 200);
    }
    let requests = echo.count();
    let conns = echo.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(requests, 250);
    // Backend connections are kept per thread and reused: far fewer than
    // one a request (at most a few per client connection and thread).
    assert!(conns <= 20, "{conns} backend connections for {requests} requests");
}
