//! ACME: certificates from a public (or test) CA over HTTP-01, answered by
//! this gateway's plain listener. Issuance is driven by the registry, never
//! by an incoming SNI, so scanners cannot make the gateway order
//! certificates.

mod challenges;
pub mod dns01;
pub mod fleet;
mod manager;
mod order;

pub use challenges::Challenges;
pub use manager::{CertManager, NameState, NameStatus, Schedule, ScheduleSummary};
pub use order::OrderError;
