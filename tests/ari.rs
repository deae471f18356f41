//! ACME Renewal Information (RFC 9773) on its own schedule. Debian's
//! Pebble 2.4 has no `renewalInfo`, so a small real HTTPS server stands in
//! front of it: it serves Pebble's directory with a `renewalInfo` URL added
//! and answers that endpoint itself with windows the test sets, and a
//! `Retry-After` of one second; every other ACME call goes to Pebble.
//! The gateway polls on the CA's schedule, renews inside the window, and
//! renews early when the CA moves a certificate's window into the past (an
//! incident, a revocation).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pebble::Pebble;
use common::{backend, free_port, handshake_full, Gateway};
use http_body_util::Full;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// Windows by certificate id; ids not listed get `default`.
struct Windows {
    default: (i64, i64),
    by_id: HashMap<String, (i64, i64)>,
    polls: HashMap<String, usize>,
}

struct AriServer {
    addr: SocketAddr,
    windows: Arc<Mutex<Windows>>,
}

impl AriServer {
    async fn start(p: &Pebble, default: (i64, i64)) -> AriServer {
        let (cert, key) = p.api_cert_key_paths();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("cert pem");
        let key = PrivateKeyDer::from_pem_file(key).expect("key pem");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let windows = Arc::new(Mutex::new(Windows {
            default,
            by_id: HashMap::new(),
            polls: HashMap::new(),
        }));
        let (w, client, pebble_dir) = (windows.clone(), p.api_client(), p.directory_url());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, w, client, pebble_dir) =
                    (acceptor.clone(), w.clone(), client.clone(), pebble_dir.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (w, client, pebble_dir) = (w.clone(), client.clone(), pebble_dir.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(req.uri().path(), addr, &w, &client, &pebble_dir).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        AriServer { addr, windows }
    }

    fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.addr.port())
    }

    fn polls(&self, id: &str) -> usize {
        self.windows.lock().expect("lock").polls.get(id).copied().unwrap_or(0)
    }

    fn set(&self, id: &str, window: (i64, i64)) {
        self.windows.lock().expect("lock").by_id.insert(id.to_string(), window);
    }
}

async fn answer(
    path: &str,
    me: SocketAddr,
    w: &Mutex<Windows>,
    client: &reqwest::Client,
    pebble_dir: &str,
) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, body: String, retry: bool| {
        let mut b = hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json");
        if retry {
            b = b.header("retry-after", "1");
        }
        b.body(Full::new(Bytes::from(body))).expect("response")
    };
    if path == "/dir" {
        let Ok(resp) = client.get(pebble_dir).send().await else {
            return reply(502, "{}".into(), false);
        };
        let text = resp.text().await.unwrap_or_default();
        let mut dir: Value = serde_json::from_str(&text).unwrap_or_default();
        dir["renewalInfo"] = Value::String(format!("https://127.0.0.1:{}/ari", me.port()));
        return reply(200, dir.to_string(), false);
    }
    if let Some(id) = path.strip_prefix("/ari/") {
        let (start, end) = {
            let mut w = w.lock().expect("lock");
            *w.polls.entry(id.to_string()).or_default() += 1;
            w.by_id.get(id).copied().unwrap_or(w.default)
        };
        let ts = |s: i64| jiff::Timestamp::from_second(s).expect("ts").to_string();
        let body = serde_json::json!({"suggestedWindow": {"start": ts(start), "end": ts(end)}});
        return reply(200, body.to_string(), true);
    }
    reply(404, "{}".into(), false)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The certificate's ARI id (RFC 9773 §4.1).
fn ari_id(leaf: &[u8]) -> String {
    let der = CertificateDer::from(leaf.to_vec());
    instant_acme::CertificateIdentifier::try_from(&der)
        .expect("ARI id")
        .to_string()
}

async fn wait_until<F: FnMut() -> bool>(mut ok: F, what: &str, gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn served(gw: &Gateway, name: &str, root: &str) -> Option<Vec<u8>> {
    handshake_full(gw.https, Some(name), root.as_bytes())
        .await
        .ok()
        .map(|(_, l)| l)
}

/// Waits until `/v1/domains/{name}` shows the next renewal inside
/// `window` (seconds since the epoch).
async fn next_attempt_within(gw: &Gateway, name: &str, window: (i64, i64)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = gw
            .admin_call("GET", &format!("/v1/domains/{name}"), Some("ops-secret"), None, &[])
            .await;
        let at = r.json["certificate"]["acme"]["next_attempt"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
            .unwrap_or(0);
        if (window.0..=window.1).contains(&at) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "next_attempt {at} not in {window:?}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_follow_the_cas_ari_window_and_come_early_when_it_moves() {
    use tenantgate::admin::auth::hash_hex;
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    // An hour-long certificate: without ARI it would renew after ~40 min.
    let p = Pebble::start(http.port(), free_port(), 3600).await;
    // The CA's window for every certificate: in 20 to 21 days.
    let far = (now() + 20 * 86_400, now() + 21 * 86_400);
    let ari = AriServer::start(&p, far).await;
    let pool = backend("pool").await;
    let name = "app.ari.example";
    let template = format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"

[tls]
issuer = "acme"

[tls.acme]
directory_url = "{}"
ca_root = "{}"
retry_min_secs = 1
retry_max_secs = 2
ari_min_poll_secs = 1

[pools.p]
upstreams = ["{}"]

[[tenants]]
id = "ari"
domains = ["{name}"]
pool = "p"

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{}"
"#,
        ari.directory_url(),
        p.api_ca_pem_path().display(),
        pool.addr,
        hash_hex("ops-secret")
    );
    let gw = Gateway::start_with_http(tempfile::tempdir().expect("dir"), &template, http).await;
    let root = p.issuing_root_pem().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(l) = served(&gw, name, &root).await {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate\n{}\n{}",
            gw.log(),
            p.pebble_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id1 = ari_id(&first);

    // Polled again and again, on the CA's one-second Retry-After.
    wait_until(|| ari.polls(&id1) >= 3, "ARI polled on the CA's schedule", &gw).await;
    // The renewal is set inside the CA's window (not at two thirds of the
    // hour), and nothing is renewed meanwhile.
    next_attempt_within(&gw, name, far).await;
    assert_eq!(served(&gw, name, &root).await.as_deref(), Some(&first[..]));
    assert_eq!(
        gw.metric("tenantgate_acme_orders_total{kind=\"renew\",result=\"success\"}")
            .await,
        0.0
    );

    // The CA moves this certificate's window to now (an incident): the
    // next poll sees it and the certificate is renewed early.
    ari.set(&id1, (now() - 60, now() + 3));
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        if let Some(l) = served(&gw, name, &root).await.filter(|l| *l != first) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed early\n{}\n{}",
            gw.log(),
            p.pebble_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id2 = ari_id(&second);
    assert_ne!(id1, id2);
    gw.wait_metric("tenantgate_acme_orders_total{kind=\"renew\",result=\"success\"}", 1.0)
        .await;
    // The new certificate is polled in turn and set in its own (far)
    // window: renewed once, not again.
    wait_until(|| ari.polls(&id2) >= 2, "the new certificate polled", &gw).await;
    next_attempt_within(&gw, name, far).await;
    assert_eq!(
        gw.metric("tenantgate_acme_orders_total{kind=\"renew\",result=\"success\"}")
            .await,
        1.0
    );
    assert_eq!(served(&gw, name, &root).await, Some(second));
}
