//! The backend health service (a pingora background service, off the
//! request path): one probe loop per upstream of every pool with
//! `[pools.<name>.health]`, reconciled with each new registry generation
//! (loops of removed upstreams, or whose check changed, stop; new ones
//! start); and a one-second tick that moves every pool's retry budget
//! window and publishes `tenantgate_upstream_healthy` and ejections.
//!
//! The state it writes ([`crate::upstream::Health`]) lives in the
//! [`Upstream`]s the registry hands from snapshot to snapshot, so a reload
//! neither forgets a verdict nor restarts an unchanged loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::pool::{Pool, Upstream};
use crate::config::upstream::HealthCheck;
use crate::registry::Registry;
use crate::telemetry::Metrics;

/// Runs the probes and the health tick.
pub struct HealthChecks {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

/// A running probe loop and what it was started for.
struct Loop {
    check: HealthCheck,
    upstream: Arc<Upstream>,
    task: JoinHandle<()>,
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A probe loop's key: the pool and the upstream's address.
type Key = (Arc<str>, SocketAddr);

type Loops = HashMap<Key, Loop>;

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut generations = self.registry.subscribe();
        let mut loops = Loops::new();
        reconcile(&self.registry.snapshot().pools, &mut loops);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = generations.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    reconcile(&self.registry.snapshot().pools, &mut loops);
                }
                _ = tick.tick() => {
                    let snap = self.registry.snapshot();
                    // Resolved addresses come and go between generations.
                    reconcile(&snap.pools, &mut loops);
                    for pool in snap.pools.iter() {
                        pool.budget.rotate();
                        for up in &pool.members() {
                            if pool.health.is_none() && !up.health.probed_up() {
                                // Checks were turned off: their verdict goes.
                                up.health.reset_probe();
                            }
                            self.metrics.backends.upstream(
                                &pool.name,
                                &up.addr.to_string(),
                                up.available(),
                                up.health.take_new_ejections(),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Starts the loops `pools` need and stops the others.
fn reconcile(pools: &[Pool], loops: &mut Loops) {
    let mut wanted: HashMap<Key, (&HealthCheck, Arc<Upstream>)> = HashMap::new();
    for pool in pools {
        if let Some(check) = &pool.health {
            for up in pool.members() {
                wanted.insert((pool.name.clone(), up.addr), (check, up));
            }
        }
    }
    loops.retain(|key, l| {
        wanted
            .get(key)
            .is_some_and(|(check, up)| **check == l.check && Arc::ptr_eq(up, &l.upstream))
    });
    for (key, (check, up)) in wanted {
        if loops.contains_key(&key) {
            continue;
        }
        let task = tokio::spawn(probe_loop(key.0.clone(), up.clone(), check.clone()));
        loops.insert(
            key,
            Loop {
                check: check.clone(),
                upstream: up.clone(),
                task,
            },
        );
    }
}

/// Probes `up` every `check.interval` (the first after a spread-out delay,
/// so the upstreams of a big pool are not probed all at once).
async fn probe_loop(pool: Arc<str>, up: Arc<Upstream>, mut check: HealthCheck) {
    // An address resolved from a name is probed with that name as Host.
    if check.host.is_none() {
        check.host = up.origin.as_deref().map(str::to_string);
    }
    let spread = spread(up.addr, check.interval);
    tokio::time::sleep(spread).await;
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let record = crate::upstream::probe::probe(up.addr, &check).await;
        let ok = record.ok;
        let error = record.error.clone();
        if ok {
            up.clear_down();
        }
        match up.health.record_probe(&check, record) {
            Some(true) => tracing::info!(pool = &*pool, upstream = %up.addr, "upstream passes its health checks again"),
            Some(false) => tracing::warn!(
                pool = &*pool,
                upstream = %up.addr,
                error = error.as_deref().unwrap_or(""),
                "upstream failed its health checks: taken out"
            ),
            None if !ok => {
                tracing::debug!(pool = &*pool, upstream = %up.addr, error = error.as_deref().unwrap_or(""), "health probe failed")
            }
            None => {}
        }
    }
}

/// A delay in `[0, interval/4)` derived from the address.
fn spread(addr: SocketAddr, interval: Duration) -> Duration {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(addr);
    let quarter = (interval.as_millis() as u64 / 4).max(1);
    Duration::from_millis(h % quarter)
}
