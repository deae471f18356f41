//! Backends that misbehave the way real ones and hostile ones do, each a
//! real socket spawned here and answering by path: a head or body cut
//! short, invalid status lines, both Content-Length and Transfer-Encoding,
//! differing lengths, a storm of interim responses, silence after accept,
//! a reset, a head trickled byte by byte, a huge head, an answer before the
//! upload was read. For each, what the client gets: the branded 502 or
//! 504, or a visibly truncated response (closed before its length or
//! without a last chunk), never a fake complete one; over HTTP/1.1 and,
//! for some, HTTP/2. Nothing panics, and another tenant is served
//! throughout.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The hostile backend; counts the connections it accepted.
async fn hostile() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (addr, conns)
}

async fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        if path == "/early" {
            // Answers before reading the upload, then drains it.
            let _ = s
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
                .await;
            let mut sink = [0u8; 65536];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        while buf.len() < length {
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let w = |b: &'static [u8]| b;
        let wrote = match path.as_str() {
            "/mid-head" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                return;
            }
            "/mid-body" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
                return;
            }
            "/mid-chunk" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n")
                    .await;
                return;
            }
            "/bad-status" => s.write_all(w(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n")).await,
            "/status-700" => s.write_all(w(b"HTTP/1.1 700 Odd\r\nContent-Length: 0\r\n\r\n")).await,
            "/no-status" => s.write_all(w(b"hello, I am not HTTP\r\n\r\n")).await,
            "/cl-te" => {
                s.write_all(w(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                ))
                .await
            }
            "/two-cl" => {
                s.write_all(w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"))
                    .await
            }
            "/storm" => {
                for _ in 0..1000 {
                    if s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            "/hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            "/rst" => {
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                return;
            }
            "/trickle-head" => {
                for b in b"HTTP/1.1 200 OK\r\nX-Slow: 1234567890\r\nContent-Length: 2\r\n\r\nok" {
                    if s.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return;
            }
            "/trickle-body" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
                for b in b"slowy" {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if s.write_all(&[*b]).await.is_err() {
                        return;
                    }
                }
                Ok(())
            }
            "/stall-body" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234").await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                return;
            }
            "/huge-head" => {
                let big = "x".repeat(70 * 1024);
                let resp = format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\nok");
                s.write_all(resp.as_bytes()).await
            }
            "/many-headers" => {
                let mut resp = String::from("HTTP/1.1 200 OK\r\n");
                for i in 0..500 {
                    resp.push_str(&format!("X-H{i}: v\r\n"));
                }
                resp.push_str("Content-Length: 2\r\n\r\nok");
                s.write_all(resp.as_bytes()).await
            }
            _ => s.write_all(w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await,
        };
        if wrote.is_err() {
            return;
        }
    }
}

async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn config(hostile: SocketAddr, other: SocketAddr) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
base_domains = ["saas.example"]
read_timeout_ms = 500

[tls]
issuer = "internal"
redirect_http = false

[pools.hostile]
upstreams = ["{hostile}"]
retries = 0

[pools.other]
upstreams = ["{other}"]

[[tenants]]
id = "h"
subdomain = "h"
domains = ["h.example"]
pool = "hostile"

[[tenants]]
id = "o"
domains = ["o.example"]
pool = "other"
"#
    )
}

/// Sends `request` on a new connection; everything read until the
/// gateway closes (or 3 s of quiet), and whether it closed.
async fn exchange(gw: &Gateway, request: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: h.example\r\n\r\n").into_bytes()
}

async fn fixture() -> (Gateway, Arc<AtomicUsize>) {
    let (addr, conns) = hostile().await;
    let other = common::backend("other").await;
    let other_addr = other.addr;
    std::mem::forget(other);
    (Gateway::start(&config(addr, other_addr)).await, conns)
}

/// The other tenant is served, and nothing panicked.
async fn unharmed(gw: &Gateway) {
    let (status, body) = gw.get("o.example", "/fine").await;
    assert_eq!(status, 200, "{body}");
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

/// The final status in a raw response (after any interim ones).
fn status_of(resp: &str) -> u16 {
    resp.match_indices("HTTP/1.1 ")
        .map(|(i, _)| common::raw_status(&resp[i..]))
        .filter(|s| *s >= 200)
        .last()
        .unwrap_or(0)
}

#[tokio::test]
async fn broken_heads_and_framing_get_a_branded_502() {
    let (gw, _) = fixture().await;
    for path in [
        "/mid-head",
        "/bad-status",
        "/status-700",
        "/no-status",
        "/two-cl",
        "/storm",
        "/rst",
        "/huge-head",
        "/many-headers",
    ] {
        let (resp, closed) = exchange(&gw, &get(path)).await;
        assert_eq!(status_of(&resp), 502, "{path}: {resp:.300}");
        assert!(resp.contains("502"), "{path}: branded body: {resp:.300}");
        assert!(closed, "{path}: the connection closes after a failure");
        unharmed(&gw).await;
    }
    // The storm relayed at most 16 interim responses before the 502.
    let (resp, _) = exchange(&gw, &get("/storm")).await;
    assert!(resp.matches("100 Continue").count() <= 16, "{resp:.500}");
}

#[tokio::test]
async fn silence_and_a_trickled_head_get_504_but_a_slow_body_within_its_timeout_passes() {
    let (gw, _) = fixture().await;
    for path in ["/hang", "/trickle-head"] {
        let (resp, closed) = exchange(&gw, &get(path)).await;
        assert_eq!(status_of(&resp), 504, "{path}: {resp:.300}");
        assert!(closed, "{path}");
        unharmed(&gw).await;
    }
    // Each byte within read_timeout_ms: the whole body arrives.
    let (resp, _) = exchange(&gw, &get("/trickle-body")).await;
    assert!(
        resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\nslowy"),
        "{resp}"
    );
    unharmed(&gw).await;
}

#[tokio::test]
async fn a_body_cut_short_is_never_passed_off_as_complete() {
    let (gw, _) = fixture().await;
    // A length promised and not delivered: the connection closes short.
    let (resp, closed) = exchange(&gw, &get("/mid-body")).await;
    assert!(resp.to_ascii_lowercase().contains("content-length: 100\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\n0123456789") && closed, "{resp}");
    // A stall past read_timeout_ms mid-body: the same.
    let (resp, closed) = exchange(&gw, &get("/stall-body")).await;
    assert!(resp.ends_with("\r\n\r\n01234") && closed, "{resp}");
    // Chunked: the chunks that came, no last chunk, closed.
    let (resp, closed) = exchange(&gw, &get("/mid-chunk")).await;
    assert!(resp.contains("transfer-encoding: chunked\r\n"), "{resp}");
    assert!(resp.ends_with("a\r\n0123456789\r\n") && closed, "{resp:?}");
    assert!(!resp.contains("\r\n0\r\n\r\n"), "no fake last chunk: {resp:?}");
    unharmed(&gw).await;

    // HTTP/2 clients see the stream reset, not a complete body.
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    let h2 = common::https_client(&root, &["h.saas.example"], gw.https, false);
    for path in ["/mid-body", "/mid-chunk"] {
        let sent = h2
            .get(format!("https://h.saas.example:{}{path}", gw.https.port()))
            .send()
            .await;
        // The reset may reach the client with the head, before it is read.
        match sent {
            Ok(resp) => {
                assert_eq!(resp.version(), reqwest::Version::HTTP_2);
                assert_eq!(resp.status(), 200);
                assert!(resp.bytes().await.is_err(), "{path}: the body fails, not ends");
            }
            Err(e) => assert!(format!("{e:?}").contains("INTERNAL_ERROR"), "{path}: {e:?}"),
        }
    }
    for (path, want) in [("/bad-status", 502), ("/hang", 504), ("/two-cl", 502)] {
        let resp = h2
            .get(format!("https://h.saas.example:{}{path}", gw.https.port()))
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status().as_u16(), want, "{path}");
        assert!(resp.text().await.expect("body").contains(&want.to_string()));
    }
    unharmed(&gw).await;
}

#[tokio::test]
async fn both_lengths_relay_the_chunked_body_and_never_reuse_the_connection() {
    let (gw, conns) = fixture().await;
    let (resp, _) = exchange(
        &gw,
        b"GET /cl-te HTTP/1.1\r\nHost: h.example\r\n\r\nGET /plain HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(!resp.to_ascii_lowercase().contains("content-length: 3"), "{resp}");
    assert!(resp.contains("5\r\nhello\r\n0\r\n\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "the backend connection that sent both was not used again"
    );
    unharmed(&gw).await;
}

#[tokio::test]
async fn an_answer_before_the_upload_was_read_reaches_the_client() {
    let (gw, _) = fixture().await;
    let body = vec![b'x'; 1 << 20];
    let resp = reqwest::Client::new()
        .post(format!("http://{}/early", gw.http))
        .header("host", "h.example")
        .body(body)
        .send()
        .await;
    match resp {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            assert_eq!(r.text().await.unwrap_or_default(), "too big\n");
        }
        // The client may fail to finish its own upload after the answer
        // and the close; what it must never get is a 502.
        Err(e) => assert!(!e.to_string().contains("502"), "{e}"),
    }
    let (resp, _) = exchange(
        &gw,
        b"POST /early HTTP/1.1\r\nHost: h.example\r\nContent-Length: 100000\r\n\r\nxxxx",
    )
    .await;
    assert_eq!(status_of(&resp), 413, "{resp}");
    unharmed(&gw).await;
}
