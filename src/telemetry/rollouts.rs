//! Rollout metrics. Labels are rollout names from the config and a fixed
//! cohort set, so the series are bounded by it; a reload drops the series
//! of removed rollouts. The automatic rollback reads the same counters.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// `moved`: the cohort on the rollout's `to` pool; `rest`: the remaining
/// candidates, still on `from`.
pub const COHORTS: [&str; 2] = ["moved", "rest"];

/// The rollout metric families.
#[derive(Debug, Clone)]
pub struct RolloutMetrics {
    requests: IntCounterVec,
    errors: IntCounterVec,
    percent: IntGaugeVec,
    rollbacks: IntCounterVec,
}

/// One side of a rollout: answered requests and 5xx among them.
#[derive(Debug, Clone)]
pub struct CohortCounters {
    pub requests: IntCounter,
    pub errors: IntCounter,
}

impl CohortCounters {
    /// Counts an answered request by its status.
    pub fn observe(&self, status: u16) {
        self.requests.inc();
        if status >= 500 {
            self.errors.inc();
        }
    }
}

impl RolloutMetrics {
    /// Creates and registers the families.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tenantgate_rollout_requests_total",
                "Forwarded requests of a rollout's candidates: cohort=moved (on the to pool) or rest (on the from pool).",
            ),
            &["rollout", "cohort"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "tenantgate_rollout_responses_5xx_total",
                "5xx answers among tenantgate_rollout_requests_total.",
            ),
            &["rollout", "cohort"],
        )?;
        let percent = IntGaugeVec::new(
            Opts::new(
                "tenantgate_rollout_percent",
                "The share of a rollout's candidates moved now (0 once rolled back).",
            ),
            &["rollout"],
        )?;
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "tenantgate_rollout_rollbacks_total",
                "Rollbacks of a rollout by this replica: trigger=auto (5xx margin exceeded).",
            ),
            &["rollout", "trigger"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(percent.clone()))?;
        registry.register(Box::new(rollbacks.clone()))?;
        Ok(RolloutMetrics {
            requests,
            errors,
            percent,
            rollbacks,
        })
    }

    /// The counters of one side of a rollout.
    pub fn cohort(&self, rollout: &str, moved: bool) -> CohortCounters {
        let cohort = COHORTS[usize::from(!moved)];
        CohortCounters {
            requests: self.requests.with_label_values(&[rollout, cohort]),
            errors: self.errors.with_label_values(&[rollout, cohort]),
        }
    }

    /// Publishes the share moved now.
    pub fn set_percent(&self, rollout: &str, percent: u8) {
        self.percent.with_label_values(&[rollout]).set(i64::from(percent));
    }

    /// Counts an automatic rollback.
    pub fn rolled_back(&self, rollout: &str) {
        self.rollbacks.with_label_values(&[rollout, "auto"]).inc();
    }

    /// Drops a removed rollout's series.
    pub fn forget(&self, rollout: &str) {
        for c in COHORTS {
            let _ = self.requests.remove_label_values(&[rollout, c]);
            let _ = self.errors.remove_label_values(&[rollout, c]);
        }
        let _ = self.percent.remove_label_values(&[rollout]);
        let _ = self.rollbacks.remove_label_values(&[rollout, "auto"]);
    }
}
