//! tenantgate's request engine: every request on the proxy listeners, over
//! HTTP/1.x or HTTP/2, is served here and decided by the one [`Policy`].
//!
//! One request, in pipeline order:
//!
//! ```text
//! listener ─▶ Capped (connection cap)                          mod.rs
//!   └─ TLS? tls::TlsApp: handshake, SNI → certificate ─▶ ConnFacts (SNI, names, ALPN)
//!   └─▶ Engine::serve ─┬─ ALPN h2 ─▶ h2::serve: one task per connection,    h2.rs
//!                      │               streams beside it
//!                      └─ else ─────▶ h1::serve: strict head parse          h1.rs, request.rs
//!        per request:  policy::decide ─▶ Answer | Forward                  policy.rs
//!                      relay::forward: idle or new backend connection,      relay.rs
//!                        head from headers::write_upstream (trusted ones)   headers.rs
//!                        body streamed (full duplex), response relayed by
//!                        its framing; a 101 becomes a tunnel                framing.rs, tunnel.rs
//!                      Policy::record: metrics and the access log
//! ```
//!
//! Timeouts (`[gateway]`): `client_timeout_ms` bounds a whole request head
//! (and the idle wait for the next one), each wait for request-body bytes,
//! each write to the client (a client that stops reading releases its
//! backend connection), and an idle HTTP/2 connection (then GOAWAY);
//! `tunnel_idle_timeout_ms` an upgraded connection with no bytes either
//! way; the upstream ones (`connect`, `read`, `write`) the backend side.

mod authority;
mod framing;
mod h1;
mod h1_to_h2;
mod h2;
pub mod headers;
pub mod health;
pub mod pages;
pub mod policy;
pub mod pool;
mod profile;
pub mod proxy_protocol;
mod relay;
mod request;
pub mod resolve;
mod tunnel;
pub mod upstream_h2;
pub mod upstream_tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

pub use crate::tls::{ConnFacts, Negotiated};
pub use policy::{Policy, ACME_CHALLENGE_PREFIX};

use crate::registry::Registry;
use crate::telemetry::Metrics;

/// Serves the connections of one listener.
pub struct Engine {
    policy: Policy,
}

impl Engine {
    pub fn new(policy: Policy) -> Self {
        Engine { policy }
    }
}

#[async_trait]
impl crate::tls::Serve for Engine {
    async fn serve(&self, io: Stream, facts: ConnFacts, shutdown: &ShutdownWatch) {
        let mut shutdown = shutdown.clone();
        if facts.tls.as_ref().is_some_and(|t| t.h2) {
            h2::serve(&self.policy, io, &facts, &mut shutdown).await;
        } else {
            h1::serve(&self.policy, io, &facts, &mut shutdown).await;
        }
    }
}

#[async_trait]
impl ServerApp for Engine {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let facts = ConnFacts {
            peer: crate::tls::peer_of(&stream),
            tls: None,
        };
        crate::tls::Serve::serve(self.as_ref(), stream, facts, shutdown).await;
        None
    }
}

/// A listener's app behind a cap on open connections (`[gateway]
/// max_connections`, read from the live config at each accept, and never
/// more than a quarter of the process's file descriptors, so that client
/// connections on both listeners leave room for their backend connections
/// and for the admin and `/metrics` listeners): a connection over the cap
/// is closed at once, before any handshake, so a flood of idle connections
/// cannot take every file descriptor.
pub struct Capped<A> {
    inner: Arc<A>,
    open: AtomicUsize,
    /// A quarter of the descriptors this process may open.
    fd_share: usize,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    listener: &'static str,
    /// Re-register each accepted socket with the thread that serves it
    /// (thread-per-core mode: `[gateway] work_stealing = false`).
    rehome: bool,
}

impl<A> Capped<A> {
    /// Thread-per-core mode: pingora's accept loop runs on one thread and
    /// hands each connection to a random one, so the socket stays registered
    /// with the accepting thread's reactor; re-registering it with the
    /// serving thread keeps every wake-up of the connection on that thread.
    pub fn rehomed(mut self, rehome: bool) -> Self {
        self.rehome = rehome;
        self
    }

    /// `nofile`: the descriptors this process may open (`None`: unknown).
    pub fn new(
        inner: A,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        listener: &'static str,
        nofile: Option<u64>,
    ) -> Self {
        Capped {
            inner: Arc::new(inner),
            open: AtomicUsize::new(0),
            fd_share: nofile.map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX).max(1)),
            registry,
            metrics,
            listener,
            rehome: false,
        }
    }
}

/// Gives a connection slot back when the connection ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let cap = self
            .fd_share
            .min(self.registry.snapshot_guard().config.gateway.max_connections);
        if self.open.fetch_add(1, Ordering::Relaxed) >= cap {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.connection_refused(self.listener);
            return None;
        }
        let _slot = Slot(&self.open);
        let stream = if self.rehome { rehome(stream) } else { stream };
        let proxied = self
            .registry
            .snapshot_guard()
            .config
            .gateway
            .proxy_protocol
            .on(self.listener);
        let stream = if proxied {
            // The snapshot is let go once the header is read.
            let snap = self.registry.snapshot();
            proxy_protocol::accept(stream, &snap.config.gateway, &self.metrics, self.listener).await?
        } else {
            stream
        };
        let mut next = Some(stream);
        while let Some(s) = next {
            next = self.inner.process_new(s, shutdown).await;
        }
        None
    }
}

/// The same TCP connection, registered with the current thread's reactor
/// (a duplicate descriptor; the original is closed when `stream` drops).
/// Falls back to `stream` itself when the descriptor cannot be duplicated.
fn rehome(stream: Stream) -> Stream {
    use pingora_core::protocols::l4::stream::Stream as TcpConn;
    use pingora_core::protocols::{GetSocketDigest, SocketDigest};
    use std::os::fd::{AsRawFd, BorrowedFd};
    let Some(conn) = stream.as_any().downcast_ref::<TcpConn>() else {
        return stream;
    };
    let peer = crate::tls::peer_of(&stream);
    // SAFETY: the descriptor belongs to `stream`, which is alive (and keeps
    // it open) for the whole borrow; the borrow ends within this statement,
    // once the duplicate is made.
    let owned = match unsafe { BorrowedFd::borrow_raw(conn.as_raw_fd()) }.try_clone_to_owned() {
        Ok(owned) => owned,
        Err(_) => return stream,
    };
    let std_stream = std::net::TcpStream::from(owned);
    let tcp = match std_stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(std_stream))
    {
        Ok(tcp) => tcp,
        Err(_) => return stream,
    };
    drop(stream);
    let mut moved = TcpConn::from(tcp);
    let digest = SocketDigest::from_raw_fd(moved.as_raw_fd());
    let _ = digest.peer_addr.set(peer.map(Into::into));
    moved.set_socket_digest(digest);
    Box::new(moved)
}
