//! The plain listener's lean HTTP/1.1 path, against a scripted backend that
//! answers with exact bytes: response framing (length, chunked with
//! trailers, until close, no body), pipelining, request bodies, hop-by-hop
//! headers both ways, interim responses, bad and slow backends, stale
//! kept-alive backend connections, and the hand-off of unusual requests to
//! pingora's HTTP/1 path.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{backend, raw_status, Echo, Gateway};
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
}

async fn scripted() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_scripted(conn, seen.clone()));
        }
    });
    Scripted { addr, heads }
}

async fn serve_scripted(mut conn: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    // After "/drop-next", the next request on this connection is read and
    // the connection closed without an answer: a kept-alive connection that
    // the backend closed just as the gateway reused it.
    let mut drop_next = false;
    loop {
        let Some(end) = read_until(&mut conn, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let length: usize = header_of(&head, "content-length").map_or(0, |v| v.parse().expect("length"));
        while buf.len() < length {
            let mut chunk = [0u8; 65536];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let mut words = head.split(' ');
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if drop_next {
            return;
        }
        drop_next = path == "/drop-next";
        let (resp, close) = script(method, path);
        seen.lock().expect("lock").push(head.clone());
        if path == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if conn.write_all(&resp).await.is_err() || close {
            return;
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
async fn unusual_requests_are_served_by_pingora_with_the_same_rules() {
    let f = fixture().await;
    // HTTP/1.0, absolute-form and Expect: 100-continue all take pingora's path.
    let resp = f.gw.raw("GET /old HTTP/1.0\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(resp.ends_with("GET /old"), "{resp}");
    let resp =
        f.gw.raw("GET http://a.example/abs HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
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
    // A spoofed tenant header never survives either path.
    let resp =
        f.gw.raw("GET /h HTTP/1.0\r\nHost: e.example\r\nX-Tenant-Id: evil\r\n\r\n")
            .await;
    let body = resp.split("\r\n\r\n").nth(1).expect("body");
    assert_eq!(Echo::parse(body).header_all("x-tenant-id"), vec!["e".to_string()]);
}

#[tokio::test]
async fn lean_http1_off_serves_everything_through_pingora() {
    let backend = scripted().await;
    let echo = backend_echo().await;
    let cfg = config(backend.addr, echo).replace("read_timeout_ms = 500", "read_timeout_ms = 500\nlean_http1 = false");
    let gw = Gateway::start(&cfg).await;
    let (status, body) = gw.get("e.example", "/p").await;
    assert_eq!(status, 200);
    assert_eq!(Echo::parse(&body).header("x-tenant-id").as_deref(), Some("e"));
    let resp = gw
        .raw("GET /x HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&resp), 421, "{resp}");
    // pingora marks kept-alive responses with `Connection: keep-alive`; the
    // lean path does not, which tells the two paths apart.
    let mut c = Client::connect(&gw).await;
    c.send("GET /length HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    let (head, body) = c.response(5).await;
    assert_eq!(body, "hello");
    assert_eq!(header_of(&head, "connection"), Some("keep-alive"), "{head}");
}
