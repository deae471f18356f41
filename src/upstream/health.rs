//! One upstream's health: the verdict of its active checks (rise/fall
//! thresholds) and its passive outlier ejection (consecutive failures,
//! ejection time doubled on each ejection in a row, capped).
//!
//! Read on the request path with relaxed atomic loads; written by the
//! probe loop and by the relay after an attempt. Kept outside the
//! snapshot, per pool and upstream, so a reload keeps it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use super::now_ms;
use crate::config::upstream::{HealthCheck, Outlier};

/// The outcome of the last active probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub ok: bool,
    /// The status the upstream answered, if it answered.
    pub status: Option<u16>,
    /// Why it failed, for operators.
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One upstream's health, shared across reloads.
#[derive(Debug)]
pub struct Health {
    /// The active checks' verdict; `true` until `fall` probes fail (and
    /// always without checks).
    probed_up: AtomicBool,
    probe_passes: AtomicU32,
    probe_fails: AtomicU32,
    /// Consecutive failed requests (passive).
    failures: AtomicU32,
    /// `now_ms` until which the upstream is ejected; 0: never ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row (for the backoff).
    streak: AtomicU32,
    ejections: AtomicU64,
    /// Ejections already counted in the metric.
    ejections_reported: AtomicU64,
    last_probe: Mutex<Option<ProbeRecord>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            probed_up: AtomicBool::new(true),
            probe_passes: AtomicU32::new(0),
            probe_fails: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            ejections_reported: AtomicU64::new(0),
            last_probe: Mutex::new(None),
        }
    }
}

impl Health {
    /// Whether requests may go to this upstream: passing its active checks
    /// and not ejected.
    pub fn available(&self) -> bool {
        self.probed_up.load(Relaxed) && !self.is_ejected()
    }

    /// The active checks' verdict.
    pub fn probed_up(&self) -> bool {
        self.probed_up.load(Relaxed)
    }

    /// Whether passive ejection skips it now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && until > now_ms()
    }

    /// How much longer it stays ejected.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// A request got a good answer: the failure run ends.
    pub fn record_success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// A request failed (5xx, reset, timeout, broken response). Ejects the
    /// upstream once `outlier.consecutive_failures` failed in a row, unless
    /// it is the pool's last available one (`others_available` says
    /// whether another would remain) and `eject_last` is off. Returns the
    /// ejection time when it ejected.
    pub fn record_failure(&self, outlier: &Outlier, others_available: impl FnOnce() -> bool) -> Option<Duration> {
        let n = self.failures.fetch_add(1, Relaxed).saturating_add(1);
        if outlier.consecutive_failures == 0 || n < outlier.consecutive_failures || self.is_ejected() {
            return None;
        }
        if !outlier.eject_last && !others_available() {
            return None;
        }
        let now = now_ms();
        let max = outlier.max_ejection.as_millis() as u64;
        // An upstream that stayed in for `max_ejection` since its last
        // ejection ended starts over at the base time.
        let last_end = self.ejected_until.load(Relaxed);
        let streak = if last_end != 0 && now.saturating_sub(last_end) > max {
            0
        } else {
            self.streak.load(Relaxed)
        };
        let base = outlier.ejection.as_millis() as u64;
        let period = base.saturating_mul(1u64 << streak.min(20)).min(max);
        self.streak.store(streak.saturating_add(1), Relaxed);
        self.ejected_until.store(now + period, Relaxed);
        self.failures.store(0, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        Some(Duration::from_millis(period))
    }

    /// Ends an ejection early (an active check saw the upstream recover).
    fn clear_ejection(&self) {
        let until = self.ejected_until.load(Relaxed);
        let now = now_ms();
        if until > now {
            self.ejected_until.store(now, Relaxed);
        }
        self.failures.store(0, Relaxed);
    }

    /// Records one probe; returns the new verdict when it changed: healthy
    /// after `rise` passes in a row, unhealthy after `fall` failures in a
    /// row. Turning healthy also ends an ejection.
    pub fn record_probe(&self, check: &HealthCheck, record: ProbeRecord) -> Option<bool> {
        let ok = record.ok;
        if let Ok(mut last) = self.last_probe.lock() {
            *last = Some(record);
        }
        let up = self.probed_up.load(Relaxed);
        if ok {
            self.probe_fails.store(0, Relaxed);
            let passes = self.probe_passes.fetch_add(1, Relaxed).saturating_add(1);
            if !up && passes >= check.rise {
                self.probed_up.store(true, Relaxed);
                self.clear_ejection();
                return Some(true);
            }
        } else {
            self.probe_passes.store(0, Relaxed);
            let fails = self.probe_fails.fetch_add(1, Relaxed).saturating_add(1);
            if up && fails >= check.fall {
                self.probed_up.store(false, Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Forgets the active checks' verdict (checks turned off for the pool).
    pub fn reset_probe(&self) {
        self.probed_up.store(true, Relaxed);
        self.probe_passes.store(0, Relaxed);
        self.probe_fails.store(0, Relaxed);
    }

    /// The last probe's outcome.
    pub fn last_probe(&self) -> Option<ProbeRecord> {
        self.last_probe.lock().ok().and_then(|l| l.clone())
    }

    /// Consecutive failed requests so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Relaxed)
    }

    /// Ejections since the upstream was first configured.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// Ejections not yet counted in the metric (and marks them counted).
    pub fn take_new_ejections(&self) -> u64 {
        let total = self.ejections.load(Relaxed);
        total.saturating_sub(self.ejections_reported.swap(total, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(n: u32, eject_last: bool) -> Outlier {
        Outlier {
            consecutive_failures: n,
            ejection: Duration::from_millis(1000),
            max_ejection: Duration::from_millis(3000),
            eject_last,
        }
    }

    #[test]
    fn ejects_after_a_run_of_failures_with_doubling_time_but_never_the_last() {
        // The clock starts at the first reading: move past 0 so that an
        // ejection can be set to have just ended.
        now_ms();
        std::thread::sleep(Duration::from_millis(5));
        let h = Health::default();
        let o = outlier(3, false);
        assert_eq!(h.record_failure(&o, || true), None);
        h.record_success();
        assert_eq!(h.record_failure(&o, || true), None);
        assert_eq!(h.record_failure(&o, || true), None);
        assert_eq!(h.record_failure(&o, || true), Some(Duration::from_millis(1000)));
        assert!(!h.available());
        assert_eq!(h.ejections(), 1);
        assert_eq!(h.take_new_ejections(), 1);
        assert_eq!(h.take_new_ejections(), 0);
        // The next ejection in a row doubles, capped at the maximum.
        h.ejected_until.store(now_ms() - 1, Relaxed);
        for _ in 0..2 {
            h.record_failure(&o, || true);
        }
        assert_eq!(h.record_failure(&o, || true), Some(Duration::from_millis(2000)));
        h.ejected_until.store(now_ms() - 1, Relaxed);
        for _ in 0..2 {
            h.record_failure(&o, || true);
        }
        assert_eq!(h.record_failure(&o, || true), Some(Duration::from_millis(3000)));
        // The last available upstream stays, unless the pool allows it.
        let last = Health::default();
        for _ in 0..10 {
            assert_eq!(last.record_failure(&o, || false), None);
        }
        assert!(last.available());
        assert!(last.record_failure(&outlier(3, true), || false).is_some());
        // 0 turns ejection off.
        let off = Health::default();
        for _ in 0..100 {
            assert_eq!(off.record_failure(&outlier(0, true), || true), None);
        }
    }

    #[test]
    fn probes_flip_the_verdict_after_rise_and_fall_in_a_row() {
        let check = HealthCheck {
            path: "/".into(),
            expect_status: 200,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            rise: 2,
            fall: 2,
            host: None,
        };
        let rec = |ok| ProbeRecord {
            at_unix_ms: 0,
            ok,
            status: None,
            error: None,
            duration_ms: 0,
        };
        let h = Health::default();
        assert_eq!(h.record_probe(&check, rec(false)), None);
        assert_eq!(h.record_probe(&check, rec(true)), None, "the run of failures broke");
        assert_eq!(h.record_probe(&check, rec(false)), None);
        assert_eq!(h.record_probe(&check, rec(false)), Some(false));
        assert!(!h.available());
        assert_eq!(h.record_probe(&check, rec(true)), None);
        assert_eq!(h.record_probe(&check, rec(true)), Some(true));
        assert!(h.available());
        assert_eq!(h.last_probe().map(|r| r.ok), Some(true));
    }
}
