//! The embedded default: a demo config and echo backends on loopback, so a
//! fresh machine can see tenant routing with one command. The echo backend
//! is also what the integration tests run behind the gateway.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The demo config, compiled in.
pub const CONFIG: &str = include_str!("../config/demo.toml");

/// The demo's backends: name and address, matching `config/demo.toml`.
pub const BACKENDS: &[(&str, &str)] = &[
    ("shared-1", "127.0.0.1:9001"),
    ("shared-2", "127.0.0.1:9002"),
    ("acme-dedicated", "127.0.0.1:9101"),
];

/// A running echo backend.
#[derive(Debug, Clone)]
pub struct EchoBackend {
    pub addr: SocketAddr,
    /// Requests received so far.
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl EchoBackend {
    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Binds an echo backend on `addr` (port 0 picks a free one) and serves it
/// on the current runtime until the runtime stops.
pub async fn spawn_echo_backend(name: &str, addr: SocketAddr) -> std::io::Result<EchoBackend> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let name: Arc<str> = name.into();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let name = name.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    echo(name.clone(), req)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(EchoBackend {
        addr: local,
        requests,
        connections,
    })
}

/// Answers with JSON describing the request: backend name, method, path,
/// every header (in order, repeats kept) and the body length. A WebSocket
/// upgrade gets 101 and then echoes raw bytes. `/sleep/<ms>` waits that
/// long before answering.
async fn echo(name: Arc<str>, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(ms) = req.uri().path().strip_prefix("/sleep/").and_then(|m| m.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if req
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("websocket"),
        );
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        return Ok(resp);
    }
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let body = serde_json::json!({
        "backend": &*name,
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body_len,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-backend", v);
    }
    Ok(resp)
}

/// The lines printed by `tenantgate demo`.
pub fn instructions() -> String {
    [
        "tenantgate demo: http://127.0.0.1:8080, https://127.0.0.1:8443, metrics http://127.0.0.1:9090/metrics",
        "backends: shared-1 127.0.0.1:9001, shared-2 127.0.0.1:9002, acme-dedicated 127.0.0.1:9101",
        "",
        "# tenant globex on the shared pool (round-robin over shared-1 and shared-2):",
        "curl -s -H 'Host: globex.saas.example' http://127.0.0.1:8080/",
        "# tenant acme on its dedicated pool, by platform subdomain, custom domain and wildcard:",
        "curl -s -H 'Host: acme.saas.example' http://127.0.0.1:8080/",
        "curl -s -H 'Host: app.acme.com' http://127.0.0.1:8080/",
        "curl -s -H 'Host: eu.acme.io' http://127.0.0.1:8080/",
        "# a spoofed tenant header is replaced by the real one:",
        "curl -s -H 'Host: globex.saas.example' -H 'x-tenant-id: acme' http://127.0.0.1:8080/",
        "# an unknown host is refused with 421 and never forwarded:",
        "curl -si -H 'Host: unknown.example' http://127.0.0.1:8080/",
        "# HTTPS (HTTP/2) with the internal CA, whose root the demo wrote to ./state/internal-ca/root.pem:",
        "curl -s --cacert state/internal-ca/root.pem --resolve app.acme.com:8443:127.0.0.1 https://app.acme.com:8443/",
        "curl -s --cacert state/internal-ca/root.pem --resolve globex.saas.example:8443:127.0.0.1 https://globex.saas.example:8443/",
        "curl -s http://127.0.0.1:9090/metrics | grep ^tenantgate_",
    ]
    .join("\n")
}
