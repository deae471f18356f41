//! Rollouts as the registry changes them: the section a change starts from,
//! the promote and rollback steps (each a registry version), and
//! `RolloutGuard`, the background service that rolls a rollout back by
//! itself when its cohort's 5xx rate exceeds the rest's by the margin.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::{Registry, Rendered, Snapshot, TenantEdit, WriteError};
use crate::config::rollouts::{Rollout, RolloutSection, RolloutState};
use crate::config::Texts;
use crate::telemetry::Metrics;

/// The rollout `name` as it stands: its file's section, else the main
/// file's; with whether it comes from the main file.
pub fn current(texts: &Texts, snap: &Snapshot, name: &str) -> Option<(RolloutSection, bool)> {
    if let Some(text) = texts.rollouts.get(name) {
        return toml::from_str(text).ok().map(|s| (s, false));
    }
    snap.config
        .rollouts
        .iter()
        .find(|r| r.name == name && r.in_main_file)
        .map(|r| (r.section.clone(), true))
}

/// The section after a promotion to `percent`: active, no reason.
pub fn promoted(s: &RolloutSection, percent: u8) -> RolloutSection {
    RolloutSection {
        percent,
        state: None,
        reason: None,
        ..s.clone()
    }
}

/// The section rolled back: nobody moved; the share reached is kept, so
/// the record shows how far it got.
pub fn rolled_back(s: &RolloutSection, reason: String) -> RolloutSection {
    RolloutSection {
        state: Some(RolloutState::RolledBack.as_str().to_string()),
        reason: Some(reason),
        ..s.clone()
    }
}

/// One sample of a rollout's counters (totals since start).
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    counts: Counts,
}

/// The samples of one rollout at one share.
#[derive(Debug)]
struct Window {
    percent: u8,
    samples: VecDeque<Sample>,
}

/// What a window shows: rates in percent, and the cohort's requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub moved_requests: u64,
    pub moved_rate: f64,
    pub rest_rate: f64,
}

/// Whether `v` calls for a rollback under `r`'s settings.
pub fn exceeds(r: &Rollout, v: &Verdict) -> bool {
    match &r.auto_rollback {
        Some(a) => v.moved_requests >= a.min_requests && v.moved_rate - v.rest_rate > f64::from(a.margin_percent),
        None => false,
    }
}

fn rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 * 100.0 / requests as f64
    }
}

/// Watches every active rollout with automatic rollback, once a second.
pub struct RolloutGuard {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

/// How often the guard samples.
const TICK: Duration = Duration::from_secs(1);
/// A replica's shared window counts while it is at most this old.
const FLEET_FRESH: Duration = Duration::from_secs(3);

/// Requests and 5xx of the cohort (moved) and of the rest, over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    moved: (u64, u64),
    rest: (u64, u64),
}

impl Counts {
    /// What was counted after `earlier`.
    fn since(&self, earlier: &Counts) -> Counts {
        let d = |a: (u64, u64), b: (u64, u64)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1));
        Counts {
            moved: d(self.moved, earlier.moved),
            rest: d(self.rest, earlier.rest),
        }
    }

    fn encode(&self) -> String {
        format!("{} {} {} {}", self.moved.0, self.moved.1, self.rest.0, self.rest.1)
    }

    /// The sum of the replicas' samples ("<percent> <four counts>") taken
    /// at `percent`, and how many there were; unreadable ones are skipped.
    fn sum(samples: &[String], percent: u8) -> (Counts, usize) {
        let mut all = Counts::default();
        let mut n = 0;
        for s in samples {
            let f: Vec<u64> = s.split(' ').filter_map(|x| x.parse().ok()).collect();
            let [p, mr, me, rr, re] = f[..] else { continue };
            if p != u64::from(percent) {
                continue;
            }
            all.moved = (all.moved.0.saturating_add(mr), all.moved.1.saturating_add(me));
            all.rest = (all.rest.0.saturating_add(rr), all.rest.1.saturating_add(re));
            n += 1;
        }
        (all, n)
    }
}

#[async_trait]
impl BackgroundService for RolloutGuard {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut windows: HashMap<String, Window> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snap = self.registry.snapshot();
            windows.retain(|name, _| snap.config.rollouts.iter().any(|r| &r.name == name));
            for r in &snap.config.rollouts {
                let Some(a) = r.auto_rollback else { continue };
                if r.moved_percent() == 0 {
                    windows.remove(&r.name);
                    continue;
                }
                let read = |moved: bool| {
                    let c = self.metrics.rollouts.cohort(&r.name, moved);
                    (c.requests.get(), c.errors.get())
                };
                let sample = Sample {
                    at: Instant::now(),
                    counts: Counts {
                        moved: read(true),
                        rest: read(false),
                    },
                };
                let w = windows.entry(r.name.clone()).or_insert_with(|| Window {
                    percent: r.moved_percent(),
                    samples: VecDeque::new(),
                });
                // A new step starts a new window.
                if w.percent != r.moved_percent() {
                    w.percent = r.moved_percent();
                    w.samples.clear();
                }
                w.samples.push_back(sample);
                while w.samples.len() > 1
                    && w.samples
                        .front()
                        .is_some_and(|s| sample.at.duration_since(s.at) > a.window)
                {
                    w.samples.pop_front();
                }
                let Some(first) = w.samples.front().copied() else {
                    continue;
                };
                let mine = sample.counts.since(&first.counts);
                // In a fleet, the windows of every replica at this step are
                // summed: a cohort whose traffic is spread over the replicas
                // is judged on all of it. Redis down: this replica's own.
                let (all, replicas) = match self.registry.book().fleet() {
                    Some(fleet) => {
                        let text = format!("{} {}", r.moved_percent(), mine.encode());
                        match fleet
                            .pool_samples(&format!("rollout:{}", r.name), &text, FLEET_FRESH)
                            .await
                        {
                            Ok(samples) => Counts::sum(&samples, r.moved_percent()),
                            Err(e) => {
                                tracing::debug!(rollout = %r.name, error = %e, "rollout window not shared; judging this replica's traffic");
                                (mine, 1)
                            }
                        }
                    }
                    None => (mine, 1),
                };
                let v = Verdict {
                    moved_requests: all.moved.0,
                    moved_rate: rate(all.moved.1, all.moved.0),
                    rest_rate: rate(all.rest.1, all.rest.0),
                };
                if !exceeds(r, &v) {
                    continue;
                }
                let reason = format!(
                    "automatic rollback at {} %: cohort 5xx rate {:.1} % against {:.1} % for the rest over {} requests in {} s on {} replica{} (margin {} points)",
                    r.moved_percent(),
                    v.moved_rate,
                    v.rest_rate,
                    v.moved_requests,
                    a.window.as_secs(),
                    replicas,
                    if replicas == 1 { "" } else { "s" },
                    a.margin_percent
                );
                let (registry, name, percent) = (self.registry.clone(), r.name.clone(), r.moved_percent());
                let why = reason.clone();
                let done = tokio::task::spawn_blocking(move || {
                    registry.write(false, "auto-rollback", |texts, snap| {
                        let mut edits = Vec::new();
                        if let Some((s, _)) = current(texts, snap, &name) {
                            // Only the step that failed: a change meanwhile wins.
                            let live = snap.config.rollouts.iter().find(|r| r.name == name);
                            if live.is_some_and(|l| l.moved_percent() == percent) {
                                edits.push(TenantEdit::PutRollout(name.clone(), Box::new(rolled_back(&s, why))));
                            }
                        }
                        Rendered::of(texts, edits)
                    })
                })
                .await;
                windows.remove(&r.name);
                match done {
                    Ok(Ok(Some(w))) if !w.unchanged => {
                        self.metrics.rollouts.rolled_back(&r.name);
                        tracing::warn!(rollout = %r.name, generation = w.generation, %reason, "rollout rolled back");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        let e: WriteError = e;
                        tracing::error!(rollout = %r.name, error = %e, %reason, "automatic rollback failed; will try again");
                    }
                    Err(e) => tracing::error!(rollout = %r.name, error = %e, "automatic rollback task failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_windows_at_the_same_step_are_summed() {
        let samples = vec![
            "25 12 6 100 1".to_string(),
            "25 10 5 80 0".to_string(),
            // Another step (a replica not yet at 25 %), and garbage.
            "5 50 50 50 0".to_string(),
            "25 x".to_string(),
        ];
        let (all, n) = Counts::sum(&samples, 25);
        assert_eq!(n, 2);
        assert_eq!(
            all,
            Counts {
                moved: (22, 11),
                rest: (180, 1)
            }
        );
        let back = Counts::sum(&[format!("25 {}", all.encode())], 25);
        assert_eq!(back, (all, 1));
    }
}
