//! TLS: certificates for every tenant host, chosen by SNI.
//!
//! [`store::CertStore`] decides which certificate answers a handshake;
//! [`acceptor::TlsApp`] terminates TLS and hands the decrypted stream, with
//! what the handshake chose ([`Negotiated`]), to the HTTP engine. This
//! module never serves a certificate for a host that does not route to a
//! tenant.

pub mod acceptor;
pub mod alpn;
pub mod certs;
pub mod internal_ca;
pub mod state;
pub mod store;

pub use acceptor::{peer_of, ConnFacts, Negotiated, Serve, TlsApp};
pub use store::CertStore;
