//! A pool's retry budget: retries may be at most `budget_percent` of the
//! pool's requests over the last one to two seconds, or
//! `min_per_second`, whichever is more, so retries never multiply an
//! outage.
//!
//! A request costs one relaxed atomic add; the window moves once a second
//! ([`Budget::rotate`], called by the health service), never on the request
//! path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::config::upstream::Retries;

/// Requests and retries of the current and the previous second.
#[derive(Debug, Default)]
pub struct Budget {
    requests: AtomicU64,
    retries: AtomicU64,
    prev_requests: AtomicU64,
    prev_retries: AtomicU64,
}

impl Budget {
    /// Counts one request (not a retry).
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget: `false` when the window's retries
    /// already reached the share `policy` allows.
    pub fn try_retry(&self, policy: &Retries) -> bool {
        let requests = self.requests.load(Relaxed) + self.prev_requests.load(Relaxed);
        let allowed = (requests * u64::from(policy.budget_percent) / 100).max(u64::from(policy.min_per_second));
        let used = self.retries.fetch_add(1, Relaxed) + self.prev_retries.load(Relaxed);
        if used < allowed {
            return true;
        }
        self.retries.fetch_sub(1, Relaxed);
        false
    }

    /// Starts a new second: the current counts become the previous ones.
    pub fn rotate(&self) {
        self.prev_requests.store(self.requests.swap(0, Relaxed), Relaxed);
        self.prev_retries.store(self.retries.swap(0, Relaxed), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32, min: u32) -> Retries {
        Retries {
            max: 2,
            budget_percent: percent,
            min_per_second: min,
        }
    }

    #[test]
    fn retries_stay_within_the_share_of_requests_or_the_minimum() {
        let b = Budget::default();
        let p = policy(20, 0);
        for _ in 0..100 {
            b.request();
        }
        let granted = (0..100).filter(|_| b.try_retry(&p)).count();
        assert_eq!(granted, 20);
        // The previous second still counts, then it is forgotten.
        b.rotate();
        assert!(!b.try_retry(&p));
        b.rotate();
        assert!(!b.try_retry(&p), "no requests, no minimum: nothing");
        let p = policy(20, 3);
        assert_eq!((0..10).filter(|_| b.try_retry(&p)).count(), 3, "the minimum");
        let p = policy(0, 0);
        b.request();
        assert!(!b.try_retry(&p), "0 % turns retries off");
    }
}
