//! HTTP/2 to backends (`http2 = true`) against real h2-only backends spawned
//! here (tests/common/h2backend.rs): HTTP/1.x clients reach them over
//! HTTP/2 with the request and response translated (hop-by-hop fields
//! dropped, `Host` as `:authority`, chunked bodies as DATA frames, the
//! response back with a length or chunked, trailers only for `TE:
//! trailers`); failures before any response byte take the same retry
//! decision as HTTP/1.1 (`retries`, the budget, a request the backend may
//! have acted on never sent twice), for HTTP/1.1 and HTTP/2 clients alike;
//! a connection whose PING goes unanswered is dropped and the next request
//! opens another.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::h2backend::{resetting, Freezer, H2Backend, H2Mode};
use common::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with tenant `t.example` on pool `p` (`http2 = true`) over
/// `upstreams`, with `pool_extra` in `[pools.p]` and `gateway_extra` in
/// `[gateway]`; also an HTTPS listener (internal CA) for HTTP/2 clients
/// on `t.saas.example`, and tenant `o.example` on an echo backend.
fn config(upstreams: &[SocketAddr], pool_extra: &str, gateway_extra: &str, other: SocketAddr) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
base_domains = ["saas.example"]
read_timeout_ms = 5000
{gateway_extra}

[tls]
issuer = "internal"
redirect_http = false

[pools.p]
upstreams = [{}]
http2 = true
{pool_extra}

[pools.other]
upstreams = ["{other}"]

[[tenants]]
id = "t"
subdomain = "t"
domains = ["t.example"]
pool = "p"

[[tenants]]
id = "o"
domains = ["o.example"]
pool = "other"
"#,
        list.join(", ")
    )
}

async fn other() -> SocketAddr {
    let b = common::backend("other").await;
    let addr = b.addr;
    std::mem::forget(b);
    addr
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

async fn send(c: &reqwest::Client, gw: &Gateway, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut req = c
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("http://{}{path}", gw.http),
        )
        .header("host", "t.example");
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{e:?}\n{}", gw.log()));
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// An HTTP/2 client (TLS, ALPN h2) for `t.saas.example`.
fn h2_client(gw: &Gateway) -> reqwest::Client {
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    common::https_client(&root, &["t.saas.example"], gw.https, false)
}

async fn send_h2(c: &reqwest::Client, gw: &Gateway, method: &str, path: &str) -> (u16, String) {
    let resp = c
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("https://t.saas.example:{}{path}", gw.https.port()),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// Raw HTTP/1.x exchange: writes `raw`, reads until the gateway closes or
/// goes quiet for 2 s.
async fn raw(gw: &Gateway, raw: &str) -> String {
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http1_clients_reach_an_h2_only_backend_with_the_request_and_response_translated() {
    let b = H2Backend::start("b").await;
    let gw = Gateway::start(&config(&[b.addr], "", "", other().await)).await;

    // Hop-by-hop fields stop at the gateway; Host becomes :authority.
    let resp = raw(
        &gw,
        "GET /plain?q=1 HTTP/1.1\r\nHost: t.example\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
         Keep-Alive: timeout=5\r\nTE: gzip\r\nX-End: 2\r\n\r\nGET /again HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{resp}\n{}", gw.log());
    assert!(resp.contains("b GET /plain 0 t.example"), "{resp}");
    assert!(resp.contains("b GET /again 0 t.example"), "{resp}");
    assert!(resp.contains("content-length: 24\r\n"), "{resp}");
    let seen = b.seen();
    let first = &seen[0];
    assert_eq!((first.authority.as_str(), first.method.as_str()), ("t.example", "GET"));
    let names: Vec<&str> = first.headers.iter().map(|(k, _)| k.as_str()).collect();
    for hop in ["connection", "x-hop", "keep-alive", "te", "host", "transfer-encoding"] {
        assert!(!names.contains(&hop), "{hop} reached the backend: {names:?}");
    }
    assert!(names.contains(&"x-end") && names.contains(&"x-tenant-id"), "{names:?}");

    // A chunked upload arrives whole as DATA frames.
    let resp = raw(
        &gw,
        "POST /echo HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Client-Trailer: no\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello world"), "{resp:?}");
    let echo = b.seen().into_iter().find(|s| s.path == "/echo").expect("echo seen");
    assert_eq!(echo.body, b"hello world");
    assert!(!echo.headers.iter().any(|(k, _)| k == "x-client-trailer"));
    // A body by length, through reqwest.
    let (status, body) = send(&client(), &gw, "POST", "/echo", Some("payload")).await;
    assert_eq!((status, body.as_str()), (200, "payload"));

    // No length from the backend: chunked, and its trailer only for a
    // client that said TE: trailers.
    let resp = raw(
        &gw,
        "GET /nolength HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.contains("transfer-encoding: chunked\r\n"), "{resp}");
    assert!(resp.ends_with("6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"), "{resp}");
    assert!(!resp.contains("x-trailer"), "{resp}");
    let resp = raw(
        &gw,
        "GET /nolength HTTP/1.1\r\nHost: t.example\r\nTE: trailers\r\nConnection: close, te\r\n\r\n",
    )
    .await;
    assert!(resp.ends_with("0\r\nx-trailer: t\r\n\r\n"), "{resp}");
    // HTTP/1.0: read until the close, no chunks.
    let resp = raw(&gw, "GET /nolength HTTP/1.0\r\nHost: t.example\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("connection: close\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello world"), "{resp}");
    // HEAD: the head only.
    let resp = raw(
        &gw,
        "HEAD /plain HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\n"),
        "{resp}"
    );

    // Cut mid-body: the client sees the truncation (the connection closes
    // before the length it was promised), never a complete response.
    let resp = raw(&gw, "GET /cut HTTP/1.1\r\nHost: t.example\r\n\r\n").await;
    assert!(resp.contains("content-length: 100\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\n0123456789"), "{resp}");
    assert_eq!(gw.get("o.example", "/still").await.0, 200);
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

#[tokio::test]
async fn a_failed_stream_is_retried_only_when_safe_and_within_retries() {
    let a = H2Backend::start("a").await;
    let b = H2Backend::start("b").await;
    let gw = Gateway::start(&config(
        &[a.addr, b.addr],
        "retry_min_per_second = 1000\n[pools.p.outlier]\nconsecutive_failures = 0\n",
        "",
        other().await,
    ))
    .await;
    let c = client();
    let h2 = h2_client(&gw);
    // a resets every stream after reading it: GETs go to b.
    a.set(H2Mode::Reset);
    for i in 0..8 {
        let (status, body) = send(&c, &gw, "GET", &format!("/g{i}"), None).await;
        assert_eq!(status, 200, "{body}\n{}", gw.log());
        assert!(body.starts_with("b GET"), "{body}");
        let (status, body) = send_h2(&h2, &gw, "GET", &format!("/h{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("b GET"), "{body}");
    }
    assert!(a.seen().len() >= 4, "a saw (and reset) some: {:?}", a.seen().len());
    // A POST whose body reached a is never sent again.
    let mut refused = 0;
    for i in 0..8 {
        let path = format!("/p{i}");
        let (status, _) = send(&c, &gw, "POST", &path, Some("payload")).await;
        match status {
            200 => assert_eq!((a.count(&path), b.count(&path)), (0, 1), "{path}"),
            502 => {
                refused += 1;
                assert_eq!((a.count(&path), b.count(&path)), (1, 0), "{path}: sent once only");
            }
            s => panic!("{path}: {s}"),
        }
    }
    assert!(refused >= 2, "some POSTs went to a: {refused}");
    // Refused unprocessed (REFUSED_STREAM): even a bodiless POST goes on.
    a.set(H2Mode::Refuse);
    for i in 0..6 {
        let (status, body) = send(&c, &gw, "POST", &format!("/r{i}"), None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("b POST"), "{body}");
    }
    assert!(a.refused() >= 2, "a refused some: {}", a.refused());

    // Both reset: a GET tries retries + 1 upstreams at most, then 502.
    b.set(H2Mode::Reset);
    a.set(H2Mode::Reset);
    let before = a.seen().len() + b.seen().len();
    let (status, body) = send(&c, &gw, "GET", "/both", None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("502"), "branded: {body}");
    assert_eq!(a.seen().len() + b.seen().len() - before, 2, "each upstream once");
    assert_eq!(gw.get("o.example", "/still").await.0, 200);
}

#[tokio::test]
async fn the_retry_budget_and_retries_cap_the_http2_path() {
    let a = H2Backend::start("a").await;
    let b = H2Backend::start("b").await;
    let extra = "retries = 1\nretry_budget_percent = 20\nretry_min_per_second = 0\n[pools.p.outlier]\nconsecutive_failures = 0\n";
    let gw = Gateway::start(&config(&[a.addr, b.addr], extra, "", other().await)).await;
    let c = client();
    a.set(H2Mode::Reset);
    let n = 60;
    let (mut ok, mut failed) = (0, 0);
    for i in 0..n {
        match send(&c, &gw, "GET", &format!("/b{i}"), None).await.0 {
            200 => ok += 1,
            502 => failed += 1,
            s => panic!("{s}"),
        }
    }
    let retries = gw.metric("tenantgate_upstream_retries_total{pool=\"p\"}").await;
    let refused = gw
        .metric("tenantgate_upstream_retry_budget_exhausted_total{pool=\"p\"}")
        .await;
    assert!(retries > 0.0, "some retries were granted");
    assert!(retries <= f64::from(n) * 0.2 + 1.0, "at most 20 % of {n}: {retries}");
    assert_eq!(failed as f64, refused, "each refused retry is a 502");
    assert_eq!(ok + failed, n);
    assert!(failed > 0, "the budget ran out");

    // Dead ports and a backend that resets at accept: connects fail, and
    // a request tries at most retries + 1 of them.
    let (reset_addr, _reset) = resetting().await;
    let dead = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let good = H2Backend::start("good").await;
    let extra = "retries = 1\nretry_min_per_second = 100000\n";
    let gw = Gateway::start(&config(
        &[dead, reset_addr, good.addr],
        extra,
        "upstream_down_ms = 1",
        other().await,
    ))
    .await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(send(&c, &gw, "GET", &format!("/d{i}"), None).await.0);
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 502), "{statuses:?}");
    assert!(
        statuses.contains(&502),
        "two failed connects end a request: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let errors = gw
        .metric("tenantgate_upstream_errors_total{kind=\"connect\",pool=\"p\"}")
        .await;
    assert!(errors <= 2.0 * 12.0, "at most retries + 1 connects a request: {errors}");
    // With room for two retries every request gets through.
    gw.write_config(&config(
        &[dead, reset_addr, good.addr],
        "retries = 2\nretry_min_per_second = 100000\n",
        "upstream_down_ms = 1",
        other().await,
    ));
    gw.wait_metric("tenantgate_config_generation", 2.0).await;
    for i in 0..6 {
        let (status, body) = send(&c, &gw, "GET", &format!("/e{i}"), None).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn a_connection_whose_ping_goes_unanswered_is_dropped_and_replaced() {
    let b = H2Backend::start("b").await;
    let proxy = Freezer::start(b.addr).await;
    let extra = "http2_keepalive_interval_ms = 200\nhttp2_keepalive_timeout_ms = 200\n";
    let gw = Gateway::start(&config(&[proxy.addr], extra, "", other().await)).await;
    let c = client();
    assert_eq!(send(&c, &gw, "GET", "/one", None).await.0, 200);
    assert_eq!(send(&c, &gw, "GET", "/two", None).await.0, 200);
    assert_eq!(b.connections(), 1, "one multiplexed connection");
    // The path goes silent: the PING is not answered, the connection goes.
    proxy.freeze();
    let log = gw.log_with(&["PING was not answered"]).await;
    assert!(log.contains("PING was not answered"), "{log}");
    let started = Instant::now();
    let (status, body) = send(&c, &gw, "GET", "/three", None).await;
    assert_eq!((status, body.starts_with("b GET /three")), (200, true), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not stuck on the dead connection"
    );
    assert_eq!(b.connections(), 2, "a fresh connection");
}

#[test]
fn keepalive_settings_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |pool: &str| {
        let path = dir.path().join("gw.toml");
        let text = format!(
            "[gateway]\nhttp_listen = \"127.0.0.1:1\"\n[pools.p]\nupstreams = [\"127.0.0.1:2\"]\n{pool}\n\
             [[tenants]]\nid = \"t\"\ndomains = [\"t.example\"]\npool = \"p\"\n"
        );
        std::fs::write(&path, text).expect("write");
        let out = std::process::Command::new(common::BIN)
            .args(["check"])
            .arg(&path)
            .output()
            .expect("run check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = check("http2 = true\nhttp2_keepalive_interval_ms = 0");
    assert!(ok, "0 turns PINGs off: {out}");
    let (ok, out) = check("http2 = true\nhttp2_keepalive_interval_ms = 5000\nhttp2_keepalive_timeout_ms = 1000");
    assert!(ok, "{out}");
    let (ok, out) = check("http2 = true\nhttp2_keepalive_interval_ms = 50");
    assert!(
        !ok && out.contains("gw.toml") && out.contains("pools.p.http2_keepalive_interval_ms") && out.contains("fix"),
        "{out}"
    );
    let (ok, out) = check("http2 = true\nhttp2_keepalive_interval_ms = 1000\nhttp2_keepalive_timeout_ms = 2000");
    assert!(!ok && out.contains("pools.p.http2_keepalive_timeout_ms"), "{out}");
    let (ok, out) = check("http2_keepalive_interval_ms = 1000");
    assert!(
        !ok && out.contains("pools.p.http2_keepalive_interval_ms") && out.contains("http2 = true"),
        "{out}"
    );
}

#[tokio::test]
async fn an_http2_upstream_answering_5xx_is_ejected_and_hanging_one_gets_504() {
    let a = H2Backend::start("a").await;
    let b = H2Backend::start("b").await;
    let extra = "[pools.p.outlier]\nconsecutive_failures = 3\nejection_ms = 60000\n";
    let gw = Gateway::start(&config(&[a.addr, b.addr], extra, "", other().await)).await;
    let c = client();
    a.set(H2Mode::Error);
    let mut fives = 0;
    for i in 0..12 {
        if send(&c, &gw, "GET", &format!("/e{i}"), None).await.0 == 500 {
            fives += 1;
        }
    }
    assert_eq!(fives, 3, "a answered 500 three times in a row, then was ejected");
    gw.wait_metric(
        &format!(
            "tenantgate_upstream_ejections_total{{pool=\"p\",upstream=\"{}\"}}",
            a.addr
        ),
        1.0,
    )
    .await;
    // The last one standing hangs: 504, branded, over both protocols.
    b.set(H2Mode::Hang);
    let (status, body) = send(&c, &gw, "GET", "/slow", None).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("504"), "{body}");
    let (status, _) = send_h2(&h2_client(&gw), &gw, "GET", "/slow2").await;
    assert_eq!(status, 504);
    assert_eq!(b.count("/slow"), 1, "a timed-out request is never sent again");
    assert_eq!(gw.get("o.example", "/still").await.0, 200);
}

/// An interim 103 Early Hints from an HTTP/2 backend reaches HTTP/1.1 and
/// HTTP/2 clients before the final response (not an HTTP/1.0 client);
/// more than 16 interim responses are a bad response (502).
#[tokio::test]
async fn interim_responses_from_an_http2_backend_reach_the_client() {
    let b = H2Backend::start("b").await;
    let gw = Gateway::start(&config(&[b.addr], "", "", other().await)).await;
    let out = raw(
        &gw,
        "GET /hints HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{out}");
    let (early, fin) = out.split_once("\r\n\r\n").expect("two heads");
    assert!(early.contains("link: </s.css>; rel=preload"), "{out}");
    assert!(fin.starts_with("HTTP/1.1 200 "), "{out}");
    assert!(fin.ends_with("b GET /hints 0 t.example"), "{out}");

    let out = raw(&gw, "GET /hints HTTP/1.0\r\nHost: t.example\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 200 "),
        "no interim response for HTTP/1.0: {out}"
    );

    let out = raw(
        &gw,
        "GET /many-hints HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 103 ").count(), 16, "{out}");
    assert!(out.contains("HTTP/1.1 502 "), "{out}");

    // HTTP/2: the 103 arrives as an informational HEADERS frame.
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    let mut h2 = common::h2_connect(gw.https, &root, "t.saas.example").await;
    let req = http::Request::builder()
        .uri("https://t.saas.example/hints")
        .body(())
        .expect("request");
    let (mut resp, _) = h2.send_request(req, true).expect("send");
    let early = std::future::poll_fn(|cx| resp.poll_informational(cx))
        .await
        .expect("an interim response")
        .expect("no error");
    assert_eq!(early.status().as_u16(), 103);
    assert_eq!(early.headers()["link"], "</s.css>; rel=preload");
    let fin = resp.await.expect("final response");
    assert_eq!(fin.status().as_u16(), 200);
    let other = {
        let c = client();
        send(&c, &gw, "GET", "/", None).await
    };
    assert_eq!(other.0, 200, "{other:?}");
}
