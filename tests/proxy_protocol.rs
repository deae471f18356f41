//! PROXY protocol on the proxy listeners (`[gateway] proxy_protocol`,
//! `trusted_sources`): HAProxy in TCP mode with `send-proxy-v2` in front of
//! the gateway's plain and TLS listeners, the client on another loopback
//! address (127.0.0.2) than HAProxy (127.0.0.1): the backend sees the
//! client's address in `x-forwarded-for`. A forged header from an untrusted
//! source, a trusted source without a header, a v1 header and a malformed
//! one are each handled and counted.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{backend, free_port, Echo, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// HAProxy in the foreground; killed on drop.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy forwarding `front_http` to `http` and `front_https` to `https`
/// in TCP mode, with a PROXY v2 header, from 127.0.0.1.
async fn haproxy(dir: &std::path::Path, fronts: [SocketAddr; 2], backs: [SocketAddr; 2]) -> Haproxy {
    let cfg = format!(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\n\
         frontend fe_http\n  bind {}\n  default_backend be_http\n\
         backend be_http\n  server gw {} send-proxy-v2 source 127.0.0.1\n\n\
         frontend fe_https\n  bind {}\n  default_backend be_https\n\
         backend be_https\n  server gw {} send-proxy-v2 source 127.0.0.1\n",
        fronts[0], backs[0], fronts[1], backs[1]
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("write haproxy.cfg");
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn haproxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    for front in fronts {
        while tokio::net::TcpStream::connect(front).await.is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen on {front}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Haproxy(child)
}

fn config(echo: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
base_domains = ["saas.example"]
trusted_sources = ["127.0.0.1/32"]
{extra}

[tls]
issuer = "internal"
redirect_http = false

[pools.p]
upstreams = ["{echo}"]

[[tenants]]
id = "acme"
subdomain = "acme"
pool = "p"
"#
    )
}

/// A raw exchange from local address `from`: sends `bytes`, returns what
/// came back until the gateway closed (or 5 s passed).
async fn raw_from(from: IpAddr, to: SocketAddr, bytes: &[u8]) -> String {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from, 0)).expect("bind");
    let mut s = sock.connect(to).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const GET: &[u8] = b"GET /pp HTTP/1.1\r\nHost: acme.saas.example\r\nConnection: close\r\n\r\n";

fn xff(response: &str) -> Option<String> {
    let body = response.split_once("\r\n\r\n")?.1;
    Echo::parse(body).header("x-forwarded-for")
}

fn v2_header(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_sets_the_client_address_on_plain_and_tls_listeners() {
    let echo = backend("pp").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_in(dir, &config(echo.addr, "proxy_protocol = true")).await;
    let fronts: [SocketAddr; 2] = [
        format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
        format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
    ];
    let _haproxy = haproxy(gw.dir(), fronts, [gw.http, gw.https]).await;
    let client_ip: IpAddr = "127.0.0.2".parse().expect("ip");

    // Plain: the client's own address, not HAProxy's.
    let resp = raw_from(client_ip, fronts[0], GET).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}\n{}", gw.log());
    assert_eq!(xff(&resp).as_deref(), Some("127.0.0.2"), "{resp}");

    // TLS: the header comes before the handshake.
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&root).expect("root"))
        .resolve("acme.saas.example", fronts[1])
        .local_address(client_ip)
        .build()
        .expect("client");
    for _ in 0..3 {
        let resp = client
            .get(format!("https://acme.saas.example:{}/tls", fronts[1].port()))
            .send()
            .await
            .expect("TLS through haproxy");
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.2"));
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    }
    gw.wait_metric(
        "tenantgate_proxy_protocol_total{listener=\"http\",result=\"accepted\"}",
        1.0,
    )
    .await;
    gw.wait_metric(
        "tenantgate_proxy_protocol_total{listener=\"https\",result=\"accepted\"}",
        1.0,
    )
    .await;
    // The access log carries the client's address too.
    let log = gw.log_with(&["client=127.0.0.2:"]).await;
    assert!(log.contains("client=127.0.0.2:"), "{log}");
}

#[tokio::test]
async fn untrusted_headers_missing_headers_and_malformed_ones_are_refused_and_counted() {
    let echo = backend("pp").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_in(dir, &config(echo.addr, "proxy_protocol = [\"http\"]")).await;
    let trusted: IpAddr = "127.0.0.1".parse().expect("ip");
    let untrusted: IpAddr = "127.0.0.3".parse().expect("ip");
    let series = |r: &str| format!("tenantgate_proxy_protocol_total{{listener=\"http\",result=\"{r}\"}}");

    // An untrusted source forging a header: closed, nothing forwarded.
    let forged = [v2_header([203, 0, 113, 9], 4000), GET.to_vec()].concat();
    let resp = raw_from(untrusted, gw.http, &forged).await;
    assert_eq!(resp, "", "closed without an answer");
    gw.wait_metric(&series("untrusted"), 1.0).await;
    let v1_forged = [b"PROXY TCP4 203.0.113.9 127.0.0.1 4000 80\r\n".to_vec(), GET.to_vec()].concat();
    assert_eq!(raw_from(untrusted, gw.http, &v1_forged).await, "");
    gw.wait_metric(&series("untrusted"), 2.0).await;

    // An untrusted source without a header: a direct client.
    let resp = raw_from(untrusted, gw.http, GET).await;
    assert_eq!(xff(&resp).as_deref(), Some("127.0.0.3"), "{resp}");
    gw.wait_metric(&series("direct"), 1.0).await;

    // A trusted source without a header: refused (required by default).
    assert_eq!(raw_from(trusted, gw.http, GET).await, "");
    gw.wait_metric(&series("missing"), 1.0).await;

    // A trusted source with v1 and v2 headers: their addresses.
    let v1 = [b"PROXY TCP4 198.51.100.4 127.0.0.1 4001 80\r\n".to_vec(), GET.to_vec()].concat();
    assert_eq!(
        xff(&raw_from(trusted, gw.http, &v1).await).as_deref(),
        Some("198.51.100.4")
    );
    let v2 = [v2_header([198, 51, 100, 5], 4002), GET.to_vec()].concat();
    assert_eq!(
        xff(&raw_from(trusted, gw.http, &v2).await).as_deref(),
        Some("198.51.100.5")
    );
    // LOCAL (a health check): the socket's address stands.
    let local = [b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec(), GET.to_vec()].concat();
    assert_eq!(
        xff(&raw_from(trusted, gw.http, &local).await).as_deref(),
        Some("127.0.0.1")
    );
    gw.wait_metric(&series("accepted"), 2.0).await;
    gw.wait_metric(&series("local"), 1.0).await;

    // Malformed headers from a trusted source: closed.
    let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(120));
    assert_eq!(raw_from(trusted, gw.http, too_long.as_bytes()).await, "");
    assert_eq!(
        raw_from(trusted, gw.http, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n").await,
        ""
    );
    gw.wait_metric(&series("invalid"), 2.0).await;

    // A trusted source that sends half a header and stalls: closed at the
    // header timeout.
    let started = Instant::now();
    assert_eq!(raw_from(trusted, gw.http, b"PROXY TCP4 1.2.3.4").await, "");
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.wait_metric(&series("timeout"), 1.0).await;

    // The TLS listener is not behind the balancer here: no step at all.
    let resp = raw_from(trusted, gw.https, &v2_header([1, 2, 3, 4], 1)).await;
    assert!(!resp.contains("HTTP/"), "a PROXY header is no TLS handshake: {resp:?}");
    assert_eq!(echo.count(), 4, "only the accepted requests were forwarded");
}

#[tokio::test]
async fn optional_mode_serves_trusted_sources_without_a_header() {
    let echo = backend("pp").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        echo.addr,
        "proxy_protocol = true\nproxy_protocol_required = false\nproxy_protocol_timeout_ms = 1000",
    );
    let gw = Gateway::start_in(dir, &cfg).await;
    let trusted: IpAddr = "127.0.0.1".parse().expect("ip");
    assert_eq!(
        xff(&raw_from(trusted, gw.http, GET).await).as_deref(),
        Some("127.0.0.1")
    );
    gw.wait_metric(
        "tenantgate_proxy_protocol_total{listener=\"http\",result=\"absent\"}",
        1.0,
    )
    .await;
}

#[test]
fn proxy_protocol_without_trusted_sources_fails_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.toml");
    let text = config(
        "127.0.0.1:9".parse().expect("addr"),
        "proxy_protocol = [\"http\", \"ftp\"]",
    )
    .replace("trusted_sources = [\"127.0.0.1/32\"]", "trusted_sources = []")
    .replace("{http}", "127.0.0.1:8080")
    .replace("{https}", "127.0.0.1:8443")
    .replace("{metrics}", "127.0.0.1:9090");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(common::BIN)
        .arg("check")
        .arg(&path)
        .output()
        .expect("check");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(all.contains("gateway.trusted_sources") && all.contains("fix:"), "{all}");
    assert!(
        all.contains("gateway.proxy_protocol[1]") && all.contains("ftp"),
        "{all}"
    );
}
