//! Backend health and retry metrics. Labels are pool names and upstream
//! addresses from the config, so the series are bounded by it; a reload
//! drops the series of removed pools and upstreams.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The backend metric families.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    healthy: IntGaugeVec,
    ejections: IntCounterVec,
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
}

/// A pool's retry counters.
#[derive(Debug, Clone)]
pub struct RetryCounters {
    /// Retries sent to another upstream (or on a new connection).
    pub sent: IntCounter,
    /// Retries the budget refused.
    pub refused: IntCounter,
}

impl BackendMetrics {
    /// Creates and registers the families.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let healthy = IntGaugeVec::new(
            Opts::new(
                "tenantgate_upstream_healthy",
                "1 when the upstream takes requests (passing its active checks, not ejected, not marked down), else 0.",
            ),
            &["pool", "upstream"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "tenantgate_upstream_ejections_total",
                "Passive outlier ejections of an upstream after consecutive failed requests.",
            ),
            &["pool", "upstream"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "tenantgate_upstream_retries_total",
                "Requests sent again after a failure before any response byte, by pool.",
            ),
            &["pool"],
        )?;
        let budget_exhausted = IntCounterVec::new(
            Opts::new(
                "tenantgate_upstream_retry_budget_exhausted_total",
                "Retries refused because the pool's retry budget was spent, by pool.",
            ),
            &["pool"],
        )?;
        registry.register(Box::new(healthy.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(budget_exhausted.clone()))?;
        Ok(BackendMetrics {
            healthy,
            ejections,
            retries,
            budget_exhausted,
        })
    }

    /// A pool's retry counters.
    pub fn retries(&self, pool: &str) -> RetryCounters {
        RetryCounters {
            sent: self.retries.with_label_values(&[pool]),
            refused: self.budget_exhausted.with_label_values(&[pool]),
        }
    }

    /// Sets an upstream's state: whether it takes requests, and ejections
    /// since the last call.
    pub fn upstream(&self, pool: &str, upstream: &str, available: bool, new_ejections: u64) {
        self.healthy
            .with_label_values(&[pool, upstream])
            .set(i64::from(available));
        let ejections = self.ejections.with_label_values(&[pool, upstream]);
        if new_ejections > 0 {
            ejections.inc_by(new_ejections);
        }
    }

    /// Drops a removed upstream's series.
    pub fn forget_upstream(&self, pool: &str, upstream: &str) {
        let _ = self.healthy.remove_label_values(&[pool, upstream]);
        let _ = self.ejections.remove_label_values(&[pool, upstream]);
    }

    /// Drops a removed pool's retry series.
    pub fn forget_pool(&self, pool: &str) {
        let _ = self.retries.remove_label_values(&[pool]);
        let _ = self.budget_exhausted.remove_label_values(&[pool]);
    }
}
