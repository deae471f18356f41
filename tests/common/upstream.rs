//! Backends the gateway reaches over TLS: a private CA made by the test
//! ([`Pki`]) and an HTTP/1.1 backend behind rustls ([`TlsBackend`]) that
//! can require a client certificate and reports, in its body, the SNI it
//! saw, the client certificate's subject and the forwarded headers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A private CA.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca");
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses) with common name `cn`.
    pub fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/<file>`.
    pub fn write_ca(&self, dir: &Path, file: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, &self.ca_pem).expect("write ca");
        p
    }
}

impl Leaf {
    /// Writes `dir/<stem>.pem` and `dir/<stem>.key`.
    pub fn write(&self, dir: &Path, stem: &str) {
        std::fs::write(dir.join(format!("{stem}.pem")), &self.cert_pem).expect("write cert");
        std::fs::write(dir.join(format!("{stem}.key")), &self.key_pem).expect("write key");
    }
}

/// A TLS backend speaking HTTP/1.1 with keep-alive.
pub struct TlsBackend {
    pub addr: SocketAddr,
    /// TLS connections that completed a handshake.
    pub connections: Arc<AtomicUsize>,
    /// Requests answered.
    pub requests: Arc<AtomicUsize>,
    /// Handshake failures, as rustls worded them.
    pub handshake_errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    /// Serves `leaf`; with `client_ca`, a client certificate signed by it
    /// is required.
    pub async fn spawn(leaf: &Leaf, client_ca: Option<&str>) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.expect("ca")).expect("add ca");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let handshake_errors = Arc::new(Mutex::new(Vec::new()));
        let (c, r, h) = (connections.clone(), requests.clone(), handshake_errors.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, c, r, h) = (acceptor.clone(), c.clone(), r.clone(), h.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            h.lock().expect("lock").push(e.to_string());
                            return;
                        }
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    serve(tls, r, h).await;
                });
            }
        });
        TlsBackend {
            addr,
            connections,
            requests,
            handshake_errors,
            task,
        }
    }

    pub fn handshake_errors(&self) -> Vec<String> {
        self.handshake_errors.lock().expect("lock").clone()
    }
}

/// What [`TlsBackend`] answers `GET /big` with: 300,000 letters.
pub fn big_body() -> Vec<u8> {
    (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Answers `GET /big` with [`big_body`] in records of 1,000 bytes, and any
/// other request with `sni=`, `client=` (the client certificate's
/// common name, or `none`), `alpn=` and every request header, one a line.
async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    requests: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let (sni, client, alpn) = {
        let (_, conn) = tls.get_ref();
        let sni = conn.server_name().unwrap_or("none").to_string();
        let client = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| {
                x509_parser::parse_x509_certificate(c)
                    .ok()
                    .and_then(|(_, x)| x.subject().iter_common_name().next()?.as_str().ok().map(str::to_string))
            })
            .unwrap_or_else(|| "none".into());
        let alpn = conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_else(|| "none".into());
        (sni, client, alpn)
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tls.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    // A client certificate refused after a TLS 1.3
                    // handshake shows here.
                    errors.lock().expect("lock").push(e.to_string());
                    return;
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut body = format!("sni={sni}\nclient={client}\nalpn={alpn}\n");
        for line in head.lines().skip(1).filter(|l| !l.is_empty()) {
            body.push_str(&line.to_ascii_lowercase());
            body.push('\n');
        }
        requests.fetch_add(1, Ordering::SeqCst);
        if head.starts_with("GET /big ") {
            // A large body in many small TLS records (one per write).
            let big = big_body();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len());
            if tls.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for piece in big.chunks(1000) {
                if tls.write_all(piece).await.is_err() || tls.flush().await.is_err() {
                    return;
                }
            }
            continue;
        }
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if tls.write_all(resp.as_bytes()).await.is_err() || tls.flush().await.is_err() {
            return;
        }
    }
}
