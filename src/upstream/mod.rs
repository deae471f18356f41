//! Backend health and retry accounting that outlives a reload: an
//! upstream's active-check verdict and passive ejection ([`Health`]), a
//! pool's retry budget ([`Budget`]) and one HTTP health probe ([`probe`]).
//!
//! Pure state and arithmetic plus one probe over a socket: this module
//! never imports the proxy or the registry. The proxy reads the state on
//! the request path (a few relaxed atomic loads); `proxy::health` runs the
//! probes and the budget's clock in the background.

pub mod budget;
pub mod health;
pub mod probe;

pub use budget::Budget;
pub use health::{Health, ProbeRecord};

use std::sync::LazyLock;
use std::time::Instant;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the first call in this process (a monotonic clock).
pub(crate) fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}
