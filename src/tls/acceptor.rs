//! TLS termination in front of the HTTP engine.
//!
//! pingora 0.9's rustls listener serves one certificate and has no SNI
//! resolver (cloudflare/pingora#594, #832). So the listener here is plain
//! TCP, and [`TlsApp`] runs the handshake itself: it reads the ClientHello,
//! picks the certificate for the SNI from the [`CertStore`] (loading it
//! asynchronously if needed), completes the handshake, and passes the
//! decrypted stream, wrapped in [`TlsIo`], to the engine ([`Serve`]) with
//! what the handshake chose ([`Negotiated`]: SNI, certificate names, ALPN).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::tls::{SslDigest, ALPN};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::store::{CertStore, Refusal};
use crate::registry::Registry;
use crate::routing::host;
use crate::telemetry::Metrics;

/// A slow or silent client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `acme-tls/1` handshake in fleet mode waits for a challenge
/// certificate this replica does not hold yet.
const FLEET_ALPN_WAIT: Duration = Duration::from_secs(2);
/// A refused client gets this long to take its alert.
const ALERT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a connection's handshake chose; travels with the connection to
/// the engine, so the request path can refuse a Host that the handshake
/// did not cover (421).
#[derive(Debug)]
pub struct Negotiated {
    /// The normalised SNI, or the default-certificate name without SNI.
    pub sni: Box<str>,
    /// Names the served certificate covers.
    pub cert_names: Vec<String>,
    /// ALPN chose `h2`.
    pub h2: bool,
}

/// What the HTTP engine knows about a client connection before its first
/// request: travels with the connection, never through shared state.
#[derive(Debug, Clone, Default)]
pub struct ConnFacts {
    pub peer: Option<std::net::SocketAddr>,
    /// The TLS handshake's SNI, certificate names and ALPN; `None` on the
    /// plain listener.
    pub tls: Option<Arc<Negotiated>>,
}

/// The client's address, from the accepted socket.
pub fn peer_of(stream: &Stream) -> Option<std::net::SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

/// What serves a connection once its handshake is done: the HTTP engine.
#[async_trait]
pub trait Serve: Send + Sync + 'static {
    async fn serve(&self, io: Stream, facts: ConnFacts, shutdown: &ShutdownWatch);
}

/// Terminates TLS, then hands the stream to `inner`.
pub struct TlsApp<S> {
    pub inner: Arc<S>,
    pub store: Arc<CertStore>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl<S: Serve> ServerApp for TlsApp<S> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let peer = peer_of(&stream);
        let (io, negotiated) = match self.handshake(stream).await {
            Ok(t) => t,
            Err(reason) => {
                self.metrics.tls_handshake(Some(reason));
                return None;
            }
        };
        self.metrics.tls_handshake(None);
        let facts = ConnFacts {
            peer,
            tls: Some(negotiated),
        };
        self.inner.serve(Box::new(io), facts, shutdown).await;
        None
    }
}

impl<S> TlsApp<S> {
    /// TLS in front of `inner`, with certificates from `store`.
    pub fn new(inner: Arc<S>, store: &Arc<CertStore>, registry: &Arc<Registry>, metrics: &Arc<Metrics>) -> Self {
        TlsApp {
            inner,
            store: store.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
        }
    }

    /// The certificate for the ClientHello's SNI (or the default name), and
    /// that name normalised.
    async fn choose(
        &self,
        start: &tokio_rustls::StartHandshake<Stream>,
    ) -> Result<(Arc<super::store::Entry>, String), Refusal> {
        let snap = self.registry.snapshot();
        let sni = match start.client_hello().server_name() {
            Some(name) => host::normalize(name)
                .map(|n| n.into_owned())
                .map_err(|_| Refusal::UnknownSni)?,
            None => snap
                .config
                .tls
                .as_ref()
                .and_then(|t| t.default_sni.clone())
                .ok_or(Refusal::NoSni)?,
        };
        let entry = self.store.select(&sni, &snap).await?;
        Ok((entry, sni))
    }

    async fn handshake(&self, stream: Stream) -> Result<(TlsIo, Arc<Negotiated>), &'static str> {
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err("bad_client_hello"),
            Err(_) => return Err("timeout"),
        };
        // TLS-ALPN-01 (RFC 8737): the CA offers only `acme-tls/1`. Answered
        // with the challenge certificate of an order in flight, then closed;
        // never served by the engine.
        let hello = start.client_hello();
        if hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == super::alpn::ACME_TLS_1))
        {
            let name = hello
                .server_name()
                .and_then(|n| host::normalize(n).ok().map(|n| n.into_owned()));
            // In a fleet, another replica's challenge may be on its way
            // through Redis (this replica just started, or the
            // announcement was missed): wait for it a moment.
            let fleet = self.registry.snapshot().config.store.is_some();
            let config = match name {
                Some(n) => match self.store.alpn_challenge(&n) {
                    Some(c) => Some(c),
                    None if fleet => self.store.wait_alpn_challenge(&n, FLEET_ALPN_WAIT).await,
                    None => None,
                },
                None => None,
            };
            let Some(config) = config else {
                // No order in flight for it: refused like any unknown SNI,
                // with the same alert.
                let mut start = start;
                send_alert(&mut start.io, Refusal::UnknownSni).await;
                return Err(Refusal::UnknownSni.as_str());
            };
            if let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            }
            return Err("acme_tls_alpn");
        }
        let mut start = start;
        let entry = match self.choose(&start).await {
            Ok(e) => e,
            Err(refusal) => {
                send_alert(&mut start.io, refusal).await;
                return Err(refusal.as_str());
            }
        };
        let sni = entry.1;
        let entry = entry.0;
        let config = entry.config.clone();
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
            Ok(Ok(t)) => t,
            Ok(Err(_)) => return Err("handshake"),
            Err(_) => return Err("timeout"),
        };
        let conn = tls.get_ref().1;
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(_) => Some(ALPN::H1),
            None => None,
        };
        let version = conn.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS");
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown");
        let digest = Arc::new(SslDigest::new(cipher, version, None, None, Vec::new()));
        let negotiated = Arc::new(Negotiated {
            sni: sni.into(),
            cert_names: entry.loaded.names.clone(),
            h2: alpn == Some(ALPN::H2),
        });
        Ok((
            TlsIo {
                inner: tls,
                alpn,
                digest,
            },
            negotiated,
        ))
    }
}

/// Sends the fatal alert of `refusal` before the handshake goes on, so the
/// client learns why (RFC 6066: `unrecognized_name`) instead of seeing a
/// bare close.
async fn send_alert(io: &mut Stream, refusal: Refusal) {
    let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, refusal.alert()];
    let _ = tokio::time::timeout(ALERT_TIMEOUT, async {
        use tokio::io::AsyncWriteExt;
        io.write_all(&alert).await?;
        io.flush().await
    })
    .await;
}

/// A decrypted TLS stream, as pingora's `IO`.
pub struct TlsIo {
    inner: TlsStream<Stream>,
    alpn: Option<ALPN>,
    digest: Arc<SslDigest>,
}

impl std::fmt::Debug for TlsIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIo").field("alpn", &self.alpn).finish()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

forward_async_write!(TlsIo, inner);

#[async_trait]
impl Shutdown for TlsIo {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for TlsIo {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().0.id()
    }
}

impl Ssl for TlsIo {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().0.get_timing_digest()
    }
}

impl GetProxyDigest for TlsIo {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().0.get_socket_digest()
    }
}

impl Peek for TlsIo {}
