//! One harness for every integration test: echo backends spawned in the
//! test, the real `tenantgate` binary on loopback, and small clients.
#![allow(dead_code)]

pub mod flaky;
pub mod h2backend;
pub mod haproxy;
pub mod knot;
pub mod pebble;
pub mod redis_server;
pub mod upstream;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenantgate::demo::{spawn_echo_backend, EchoBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_tenantgate");

/// Spawns an echo backend on a free loopback port.
pub async fn backend(name: &str) -> EchoBackend {
    spawn_echo_backend(name, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("backend binds")
}

/// Waits until `pool` has received `n` requests; fails the test, saying
/// `what`, if that takes over 10 s.
pub async fn wait_requests(pool: &EchoBackend, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.count() < n {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback port that was free a moment ago.
///
/// Ports come from 20000-32767, below the kernel's ephemeral range (where
/// outgoing connections take theirs, and where a port freed by `bind(0)`
/// can be handed to the next caller), each at most once per test process:
/// two gateways of one test binary never race for a port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts at its own place in the range.
    let start = std::process::id() * 7919 % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left in the test range");
        let port = (FIRST + (start + n) % SPAN) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running gateway process; killed on drop.
pub struct Gateway {
    child: Child,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    /// Listened on only when the config uses `{https}`.
    pub https: SocketAddr,
    /// The admin API; listened on only when the config uses `{admin}`.
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

/// Fills `{http}`, `{metrics}`, `{https}` and `{admin}` in a config template.
pub fn fill(template: &str, http: SocketAddr, metrics: SocketAddr, https: SocketAddr, admin: SocketAddr) -> String {
    template
        .replace("{http}", &http.to_string())
        .replace("{metrics}", &metrics.to_string())
        .replace("{https}", &https.to_string())
        .replace("{admin}", &admin.to_string())
}

impl Gateway {
    /// Writes the config (with `{http}`/`{metrics}` filled in) and starts
    /// `tenantgate serve`, waiting until it accepts connections.
    pub async fn start(template: &str) -> Gateway {
        Self::start_in(tempfile::tempdir().expect("tempdir"), template).await
    }

    /// Like [`Gateway::start`], with the config written into `dir` (so that
    /// relative paths such as `certs` and `state` land there).
    pub async fn start_in(dir: tempfile::TempDir, template: &str) -> Gateway {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::start_with_http(dir, template, http).await
    }

    /// Like [`Gateway::start_in`], on a plain-HTTP address chosen by the
    /// caller (the ACME tests point Pebble's HTTP-01 validator at it).
    pub async fn start_with_http(dir: tempfile::TempDir, template: &str, http: SocketAddr) -> Gateway {
        Self::start_with_env(dir, template, http, &[]).await
    }

    /// Like [`Gateway::start_with_http`], with extra environment variables.
    pub async fn start_with_env(
        dir: tempfile::TempDir,
        template: &str,
        http: SocketAddr,
        env: &[(&str, &str)],
    ) -> Gateway {
        let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::start_with_listeners(dir, template, http, https, env).await
    }

    /// Like [`Gateway::start_with_env`], on an HTTPS address chosen by the
    /// caller too (Pebble's TLS-ALPN-01 validator connects to it).
    pub async fn start_with_listeners(
        dir: tempfile::TempDir,
        template: &str,
        http: SocketAddr,
        https: SocketAddr,
        env: &[(&str, &str)],
    ) -> Gateway {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config_path = dir.path().join("tenantgate.toml");
        std::fs::write(&config_path, fill(template, http, metrics, https, admin)).expect("write config");
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tenantgate");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(8)
            .build()
            .expect("client");
        let gw = Gateway {
            child,
            http,
            metrics,
            https,
            admin,
            config_path,
            log_path,
            _dir: dir,
            client,
        };
        gw.wait_listening(http).await;
        gw.wait_listening(metrics).await;
        if template.contains("{https}") {
            gw.wait_listening(https).await;
        }
        if template.contains("{admin}") {
            gw.wait_listening(admin).await;
        }
        gw
    }

    /// A graceful binary upgrade: starts a second `tenantgate serve
    /// --upgrade` on the same config, which takes the listening sockets
    /// once this one gets SIGQUIT (sent here after `settle`). The new
    /// gateway logs to `gateway-upgraded.log` in the same folder; keep this
    /// one alive as long as the new one runs (it owns the folder).
    pub async fn upgrade(&self, settle: Duration) -> Gateway {
        let log_path = self.dir().join("gateway-upgraded.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "--upgrade", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tenantgate");
        tokio::time::sleep(settle).await;
        self.signal("QUIT");
        Gateway {
            child,
            http: self.http,
            metrics: self.metrics,
            https: self.https,
            admin: self.admin,
            config_path: self.config_path.clone(),
            log_path,
            _dir: tempfile::tempdir().expect("tempdir"),
            client: self.client.clone(),
        }
    }

    /// Whether the gateway process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Stops the gateway and hands back its folder (config, certs, state),
    /// to start another gateway on the same state.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self._dir, dir)
    }

    async fn wait_listening(&self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway never listened on {addr}; log:\n{}", self.log());
    }

    /// The gateway's log so far.
    /// The log once it contains every one of `needles` (it is written
    /// asynchronously), or as it is after 5 s.
    pub async fn log_with(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if needles.iter().all(|n| log.contains(n)) || Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The folder holding the config (and relative `certs`/`state`).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `"TERM"`, `"HUP"`) to the gateway.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits up to `limit` for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Replaces the config file atomically (write + rename), as editors and
    /// deploy tools do.
    pub fn write_config(&self, template: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, fill(template, self.http, self.metrics, self.https, self.admin))
            .expect("write tmp config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// GET `path` with a Host header; returns status and body.
    pub async fn get(&self, host: &str, path: &str) -> (u16, String) {
        self.get_with(host, path, &[]).await
    }

    /// GET with extra headers (repeats allowed).
    pub async fn get_with(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = self
            .client
            .get(format!("http://{}{path}", self.http))
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// Calls the admin API: `method path` with an optional bearer token,
    /// JSON body and extra headers.
    pub async fn admin_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> AdminResponse {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("http://{}{path}", self.admin));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("admin request sent");
        let status = resp.status().as_u16();
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(String::from);
        let (etag, content_type) = (header("etag"), header("content-type"));
        let text = resp.text().await.expect("admin body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("admin body is not JSON ({e}): {text}"))
        };
        AdminResponse {
            status,
            etag,
            content_type,
            json,
        }
    }

    /// Sends raw bytes on a new connection and returns everything read until
    /// the server closes or goes quiet.
    pub async fn raw(&self, request: &str) -> String {
        let mut s = TcpStream::connect(self.http).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let resp = self
            .client
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await
            .expect("metrics");
        resp.text().await.expect("metrics body")
    }

    /// The value of one metric series (exact line prefix, e.g.
    /// `tenantgate_config_generation` or `name{label="x"}`). Panics when the
    /// series is absent, so a renamed metric fails loudly rather than
    /// reading as 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        series_value(&text, series).unwrap_or_else(|| panic!("no metric series {series}:\n{text}"))
    }

    /// Polls until `metric(series)` reaches `at_least`, for up to 10 s.
    pub async fn wait_metric(&self, series: &str, at_least: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // A series may appear only with its first event.
            let v = series_value(&self.metrics_text().await, series).unwrap_or(0.0);
            if v >= at_least {
                return;
            }
            if Instant::now() > deadline {
                panic!("{series} stayed at {v}, wanted >= {at_least}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status, tenant header and backend name of a real proxied GET on
    /// `host` (tenant and backend only for a 200 from an echo backend).
    pub async fn routed(&self, host: &str) -> (u16, Option<String>, String) {
        let (status, body) = self.get(host, "/").await;
        if status != 200 {
            return (status, None, String::new());
        }
        let e = Echo::parse(&body);
        (status, e.header("x-tenant-id"), e.backend().to_string())
    }

    /// Polls until GET on `host` answers `status`, for up to 10 s.
    pub async fn wait_status(&self, host: &str, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, _) = self.get(host, "/").await;
            if s == status {
                return;
            }
            if Instant::now() > deadline {
                panic!("{host} answered {s}, wanted {status}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of `series` in a Prometheus text exposition, if present.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client trusting `root_pem`, with `hosts` resolved to `addr`.
pub fn https_client(root_pem: &[u8], hosts: &[&str], addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(root_pem).expect("root pem");
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root);
    for h in hosts {
        b = b.resolve(h, addr);
    }
    if http1_only {
        b = b.http1_only();
    }
    b.build().expect("https client")
}

/// A raw TLS handshake with `sni` (`None`: no SNI), trusting `root_pem`.
/// Returns the negotiated ALPN on success, or the error text.
pub async fn handshake(addr: SocketAddr, sni: Option<&str>, root_pem: &[u8]) -> Result<Option<Vec<u8>>, String> {
    handshake_full(addr, sni, root_pem).await.map(|(alpn, _)| alpn)
}

/// Like [`handshake`], also returning the server's leaf certificate (DER).
pub async fn handshake_full(
    addr: SocketAddr,
    sni: Option<&str>,
    root_pem: &[u8],
) -> Result<(Option<Vec<u8>>, Vec<u8>), String> {
    let (alpn, chain) = handshake_chain(addr, sni, root_pem).await?;
    Ok((alpn, chain.into_iter().next().unwrap_or_default()))
}

/// Like [`handshake`], also returning every certificate the server sent
/// (DER, leaf first).
pub async fn handshake_chain(
    addr: SocketAddr,
    sni: Option<&str>,
    root_pem: &[u8],
) -> Result<(Option<Vec<u8>>, Vec<Vec<u8>>), String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // An IP server name makes rustls send no SNI; the certificate is then
    // checked against the name given in `sni` only when one is sent.
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_string()).map_err(|e| e.to_string())?,
        None => {
            config.enable_sni = false;
            ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?
        }
    };
    if sni.is_none() {
        config
            .dangerous()
            .set_certificate_verifier(std::sync::Arc::new(AcceptAny));
    }
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let conn = tls.get_ref().1;
    let chain = conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default();
    Ok((conn.alpn_protocol().map(<[u8]>::to_vec), chain))
}

/// Accepts any server certificate (for the no-SNI case, where the
/// certificate names a host the client did not ask for).
#[derive(Debug)]
pub struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An admin API answer.
#[derive(Debug)]
pub struct AdminResponse {
    pub status: u16,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub json: Value,
}

/// The echo backend's view of a request.
pub struct Echo(pub Value);

impl Echo {
    pub fn parse(body: &str) -> Echo {
        Echo(serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo body ({e}): {body}")))
    }
    pub fn backend(&self) -> &str {
        self.0["backend"].as_str().unwrap_or("")
    }
    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .filter(|h| h[0].as_str() == Some(name))
                    .filter_map(|h| h[1].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
}

/// The status code in a raw HTTP/1.1 response.
pub fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// An HTTP/2 connection (TLS with SNI `sni`, ALPN h2), driven in the
/// background.
pub async fn h2_connect(addr: SocketAddr, root_pem: &[u8], sni: &str) -> h2::client::SendRequest<bytes::Bytes> {
    let (h2, conn) = h2::client::handshake(tls_h2(addr, root_pem, sni).await)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    h2
}

/// A TLS connection with SNI `sni` that negotiated ALPN h2, for raw frames.
pub async fn tls_h2(addr: SocketAddr, root_pem: &[u8], sni: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_string()).expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}
