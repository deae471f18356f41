//! GCRA (generic cell rate algorithm) on one atomic: the tenant's
//! theoretical arrival time. Hand-written rather than governor because the
//! draft-10 `RateLimit` header needs the remaining capacity, which
//! governor does not expose, and because the quota is applied at check time
//! here, so a changed limit takes effect on the next request without
//! resetting the tenant's state.

use std::sync::atomic::{AtomicU64, Ordering};

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// Nanoseconds between two requests at the sustained rate.
    pub fn interval(self) -> u64 {
        1_000_000_000 / u64::from(self.per_second.max(1))
    }

    /// The policy window in seconds: the time a full burst takes to refill.
    pub fn window_secs(self) -> u64 {
        (u64::from(self.burst) * self.interval()).div_ceil(1_000_000_000).max(1)
    }
}

/// Outcome of a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateCheck {
    /// Admitted; `remaining` requests could follow at once; the burst is
    /// full again in `reset_ns`.
    Allowed { remaining: u32, reset_ns: u64 },
    /// Refused; one request fits again in `retry_ns`.
    Limited { retry_ns: u64 },
}

/// One tenant's rate state. `now` is nanoseconds on a monotonic clock.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// Requests that could be admitted at once at `now` (the burst left).
    pub fn remaining(&self, now: u64, rate: Rate) -> u32 {
        let t = rate.interval();
        let capacity = t * u64::from(rate.burst);
        let debt = self.tat.load(Ordering::Relaxed).saturating_sub(now);
        (capacity.saturating_sub(debt) / t).min(u64::from(rate.burst)) as u32
    }

    /// Admits one request at `now` under `rate`, or says when to retry.
    pub fn check(&self, now: u64, rate: Rate) -> RateCheck {
        let t = rate.interval();
        let capacity = t * u64::from(rate.burst);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + t;
            let debt = next - now;
            if debt > capacity {
                return RateCheck::Limited {
                    retry_ns: debt - capacity,
                };
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let remaining = ((capacity - debt) / t) as u32;
                    return RateCheck::Allowed {
                        remaining,
                        reset_ns: debt,
                    };
                }
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn exact_burst_then_steady_rate() {
        let g = Gcra::default();
        let rate = Rate {
            per_second: 10,
            burst: 5,
        };
        let start = 100 * S;
        for i in 0..5 {
            assert!(matches!(g.check(start, rate), RateCheck::Allowed { remaining, .. } if remaining == 4 - i));
        }
        assert_eq!(g.check(start, rate), RateCheck::Limited { retry_ns: S / 10 });
        // One more every 100 ms, no more.
        for k in 1..=20u64 {
            let now = start + k * S / 10;
            assert!(matches!(g.check(now, rate), RateCheck::Allowed { .. }), "tick {k}");
            assert!(
                matches!(g.check(now, rate), RateCheck::Limited { .. }),
                "tick {k} twice"
            );
        }
    }

    #[test]
    fn a_changed_rate_applies_to_the_next_request_without_a_reset() {
        let g = Gcra::default();
        let slow = Rate {
            per_second: 1,
            burst: 1,
        };
        assert!(matches!(g.check(10 * S, slow), RateCheck::Allowed { .. }));
        assert!(matches!(g.check(10 * S, slow), RateCheck::Limited { .. }));
        // The debt (1 s) is kept; a plan with 2 s of burst admits at once.
        let fast = Rate {
            per_second: 100,
            burst: 200,
        };
        assert!(
            matches!(g.check(10 * S, fast), RateCheck::Allowed { .. }),
            "bigger burst admits at once"
        );
    }

    #[test]
    fn window_is_the_refill_time_of_a_full_burst() {
        assert_eq!(
            Rate {
                per_second: 50,
                burst: 100
            }
            .window_secs(),
            2
        );
        assert_eq!(
            Rate {
                per_second: 200,
                burst: 100
            }
            .window_secs(),
            1
        );
    }
}
