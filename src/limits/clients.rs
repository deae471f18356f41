//! A per-client limit inside a tenant, so that one abusive client cannot use
//! up the tenant's whole budget.
//!
//! Clients are keyed by IP address (IPv6 by its /64, which one subscriber
//! usually holds whole). Each tenant with a client limit has its own governor
//! keyed GCRA, trimmed periodically with `retain_recent`, so memory follows
//! the clients seen in the last burst window, not every client ever seen.
//! The limit is per replica, also in fleet mode.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::{Rate, Refusal, Violation};

/// The client limiter of one tenant, for one rate.
pub struct Clients {
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("rate", &self.rate)
            .field("clients", &self.limiter.len())
            .finish()
    }
}

impl Clients {
    /// A limiter for `rate` (rates of zero are refused by config checks).
    pub fn new(rate: Rate) -> Option<Clients> {
        let quota = Quota::per_second(NonZeroU32::new(rate.per_second)?).allow_burst(NonZeroU32::new(rate.burst)?);
        Some(Clients {
            rate,
            limiter: DefaultKeyedRateLimiter::dashmap(quota),
        })
    }

    /// The rate this limiter enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Admits one request of `client`, or says when it may retry.
    pub fn check(&self, client: IpAddr) -> Result<(), Refusal> {
        self.limiter.check_key(&key(client)).map_err(|not_until| Refusal {
            violation: Violation::Client,
            retry_after: not_until
                .wait_time_from(DefaultClock::default().now())
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64,
        })
    }

    /// Forgets clients whose state is back to full, and frees their memory.
    pub fn trim(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_own_burst() {
        let c = Clients::new(Rate {
            per_second: 1,
            burst: 2,
        })
        .expect("limiter");
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(c.check(a).is_ok());
        assert!(c.check(a).is_ok());
        let refused = c.check(a).expect_err("third request of a");
        assert_eq!(refused.violation, Violation::Client);
        assert_eq!(refused.retry_after, 1);
        assert!(c.check(b).is_ok(), "another client is unaffected");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let c = Clients::new(Rate {
            per_second: 1,
            burst: 1,
        })
        .expect("limiter");
        assert!(c.check("2001:db8:1:2::1".parse().expect("ip")).is_ok());
        assert!(
            c.check("2001:db8:1:2:ffff::9".parse().expect("ip")).is_err(),
            "same /64"
        );
        assert!(c.check("2001:db8:1:3::1".parse().expect("ip")).is_ok(), "another /64");
        assert!(c.check("::ffff:192.0.2.7".parse().expect("ip")).is_ok());
        assert!(
            c.check("192.0.2.7".parse().expect("ip")).is_err(),
            "mapped IPv4 is the IPv4 client"
        );
    }
}
