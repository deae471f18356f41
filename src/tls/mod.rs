//! TLS: certificates for every tenant host, chosen by SNI.
//!
//! [`store::CertStore`] decides which certificate answers a handshake;
//! [`acceptor::TlsApp`] terminates TLS and feeds pingora; [`sni::SniBook`]
//! lets the request path compare Host with the handshake. This module never
//! serves a certificate for a host that does not route to a tenant.

pub mod acceptor;
pub mod certs;
pub mod internal_ca;
pub mod sni;
pub mod state;
pub mod store;

pub use acceptor::TlsApp;
pub use sni::SniBook;
pub use store::CertStore;
