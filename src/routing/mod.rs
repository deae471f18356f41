//! Host normalisation, the domain table and tenant resolution.
//!
//! Routing never guesses: a host that is not in the table resolves to
//! nothing, and there is no default tenant or pool.

pub mod host;
pub mod jwt;
pub mod paths;
pub mod table;

pub use host::HostError;
pub use table::{DomainTable, Match, MatchKind, TenantIdx};

/// Why a request host did not resolve to a tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    /// The host is not a valid name (answered with 400).
    #[error("malformed host: {0}")]
    BadHost(HostError),
    /// The host is valid but belongs to no tenant, or is an IP literal
    /// (answered with 421).
    #[error("unknown host")]
    UnknownHost,
}

/// The normalised host of an HTTP authority (`host[:port]`).
pub fn request_host(authority: &str) -> Result<std::borrow::Cow<'_, str>, Unresolved> {
    host::normalize_authority(authority).map_err(|e| match e {
        HostError::IpAddress => Unresolved::UnknownHost,
        e => Unresolved::BadHost(e),
    })
}

/// Resolves an HTTP authority (`host[:port]`) to a tenant.
pub fn resolve(table: &DomainTable, authority: &str) -> Result<Match, Unresolved> {
    let host = request_host(authority)?;
    table.lookup(&host).ok_or(Unresolved::UnknownHost)
}
