//! Which SNI and certificate each live TLS connection negotiated, so the
//! request path can refuse a Host that the handshake did not cover (421).
//!
//! Keyed by the client's address, which is unique among live connections to
//! a listener. Entries are added after the handshake and removed when the
//! connection ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 32;

/// What a connection's handshake chose.
#[derive(Debug)]
pub struct Negotiated {
    /// The normalised SNI, or the default-certificate name without SNI.
    pub sni: Box<str>,
    /// Names the served certificate covers.
    pub cert_names: Vec<String>,
}

/// Live connections' handshake results.
pub struct SniBook {
    shards: Vec<Mutex<HashMap<SocketAddr, Arc<Negotiated>>>>,
}

impl Default for SniBook {
    fn default() -> Self {
        SniBook {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl SniBook {
    fn shard(&self, addr: &SocketAddr) -> &Mutex<HashMap<SocketAddr, Arc<Negotiated>>> {
        &self.shards[(addr.port() as usize) % SHARDS]
    }

    pub fn insert(&self, addr: SocketAddr, n: Arc<Negotiated>) {
        self.shard(&addr)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, n);
    }

    pub fn remove(&self, addr: &SocketAddr) {
        self.shard(addr).lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<Arc<Negotiated>> {
        self.shard(addr)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
            .cloned()
    }
}
