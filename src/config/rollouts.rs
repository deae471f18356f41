//! Tenant cohorts: `[rollouts.<name>]` in the main file or
//! `rollouts/<name>.toml` (written by the admin API). A rollout moves a
//! named list of tenants, or a stable hash-based share of a pool's tenants,
//! from pool `from` to pool `to`; `percent` is the share moved now. The
//! cohort is decided here, once per load, so the request path only reads
//! each tenant's serving pool.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{err, valid_tenant_id, ConfigError, PoolId, PoolSpec, Problem, TenantSpec};

/// Promotion steps when a rollout names none.
pub const DEFAULT_STEPS: [u8; 3] = [5, 25, 100];
/// Automatic rollback: the cohort's 5xx rate may exceed the rest's by this
/// many percentage points.
pub const DEFAULT_MARGIN_PERCENT: u32 = 5;
pub const DEFAULT_WINDOW_SECS: u64 = 60;
/// Fewer cohort requests in the window than this decide nothing.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;

/// One rollout as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    /// The pool the cohort leaves.
    #[serde(alias = "from_pool")]
    pub from: String,
    /// The pool the cohort moves to.
    #[serde(alias = "to_pool")]
    pub to: String,
    /// The candidates by id; absent: every tenant of `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// The share of the candidates moved now, 0 to 100.
    #[serde(default, alias = "share")]
    pub percent: u8,
    /// The shares `promote` steps through, ascending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<u8>>,
    /// `active` (the default) or `rolled_back`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why it was rolled back, written by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollbackSection>,
}

/// `[rollouts.<name>.auto_rollback]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRollbackSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Active,
    /// Rolled back (by a call or automatically): nobody is moved.
    RolledBack,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::RolledBack => "rolled_back",
        }
    }
}

/// When to roll back by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoRollback {
    /// Percentage points.
    pub margin_percent: u32,
    pub window: Duration,
    pub min_requests: u64,
}

/// A validated rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub name: String,
    pub from: PoolId,
    pub to: PoolId,
    /// Named candidates, if listed.
    pub tenants: Option<Vec<String>>,
    pub percent: u8,
    pub steps: Vec<u8>,
    pub state: RolloutState,
    pub reason: Option<String>,
    /// `None`: off.
    pub auto_rollback: Option<AutoRollback>,
    /// Defined in the main file (its state then lives in
    /// `rollouts/<name>.toml` once the API changes it).
    pub in_main_file: bool,
    /// As written, for the admin API.
    pub section: RolloutSection,
}

impl Rollout {
    /// The share moved now: 0 once rolled back.
    pub fn moved_percent(&self) -> u8 {
        match self.state {
            RolloutState::Active => self.percent,
            RolloutState::RolledBack => 0,
        }
    }

    /// The next step above the share moved now, if any.
    pub fn next_step(&self) -> Option<u8> {
        let now = self.moved_percent();
        self.steps.iter().copied().find(|s| *s > now)
    }
}

/// A tenant's place in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cohort {
    /// Index in [`super::Config::rollouts`].
    pub rollout: u32,
    /// In the moved share (served by the rollout's `to`), else one of the
    /// remaining candidates (served by `from`).
    pub moved: bool,
}

/// Where a tenant falls among a rollout's candidates, 0 to 9,999: stable
/// for a (rollout, tenant) pair on every replica, so a tenant moved at 5 %
/// stays moved at 25 %.
pub fn bucket(rollout: &str, tenant: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(rollout.as_bytes());
    h.update([0]);
    h.update(tenant.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 10_000
}

/// Whether a candidate is in the moved share at `percent`.
pub fn selected(rollout: &str, tenant: &str, percent: u8) -> bool {
    bucket(rollout, tenant) < u32::from(percent.min(100)) * 100
}

fn field(name: &str, in_main_file: bool, key: &str) -> String {
    match (in_main_file, key.is_empty()) {
        (true, true) => format!("rollouts.{name}"),
        (true, false) => format!("rollouts.{name}.{key}"),
        (false, true) => format!("rollouts/{name}.toml"),
        (false, false) => format!("rollouts/{name}.toml:{key}"),
    }
}

fn problem(reason: String, fix: &'static str) -> Problem {
    Problem::Rollout { reason, fix }
}

/// Checks every rollout; a file `rollouts/<name>.toml` replaces the main
/// file's `[rollouts.<name>]` (it holds that rollout's state once the API
/// has changed it). Returns them in name order.
pub(super) fn validate(
    main: BTreeMap<String, RolloutSection>,
    files: BTreeMap<String, RolloutSection>,
    pools: &HashMap<String, PoolId>,
    specs: &[PoolSpec],
    errs: &mut Vec<ConfigError>,
) -> Vec<Rollout> {
    let mut all: BTreeMap<String, (bool, RolloutSection)> = BTreeMap::new();
    for (name, s) in main {
        all.insert(name, (true, s));
    }
    for (name, s) in files {
        all.insert(name, (false, s));
    }
    let mut out = Vec::with_capacity(all.len());
    for (name, (in_main_file, s)) in all {
        let at = |key: &str| field(&name, in_main_file, key);
        if !valid_tenant_id(&name) {
            errs.push(err(
                None,
                &at(""),
                problem(
                    format!("{name:?} is not a valid rollout name"),
                    "use 1 to 63 characters of a-z, 0-9, '-' and '_'",
                ),
            ));
        }
        let mut pool = |key: &str, value: &str| match pools.get(value) {
            Some(&p) => p,
            None => {
                errs.push(err(
                    None,
                    &at(key),
                    problem(
                        format!("rollout {name:?}: pool {value:?} is not defined"),
                        "name a pool defined under [pools.<name>]",
                    ),
                ));
                PoolId::MAX
            }
        };
        let from = pool("from", &s.from);
        let to = pool("to", &s.to);
        if from == to && from != PoolId::MAX {
            errs.push(err(
                None,
                &at("to"),
                problem(
                    format!("rollout {name:?} moves tenants from pool {:?} to itself", s.from),
                    "set to = \"<pool>\" to a different pool than from",
                ),
            ));
        }
        let region = |p: PoolId| specs.get(p as usize).and_then(|s| s.region.clone());
        if from != PoolId::MAX && to != PoolId::MAX && region(from) != region(to) {
            errs.push(err(
                None,
                &at("to"),
                problem(
                    format!(
                        "rollout {name:?} would move tenants from region {:?} to region {:?}",
                        region(from).unwrap_or_default(),
                        region(to).unwrap_or_default()
                    ),
                    "move tenants only between pools of the same region (data residency)",
                ),
            ));
        }
        if s.percent > 100 {
            errs.push(err(
                None,
                &at("percent"),
                problem(
                    format!("rollout {name:?}: percent {} is over 100", s.percent),
                    "set percent between 0 and 100",
                ),
            ));
        }
        let steps = s.steps.clone().unwrap_or_else(|| DEFAULT_STEPS.to_vec());
        if steps.is_empty() || steps.iter().any(|p| *p == 0 || *p > 100) || steps.windows(2).any(|w| w[0] >= w[1]) {
            errs.push(err(
                None,
                &at("steps"),
                problem(
                    format!("rollout {name:?}: steps {steps:?} are not ascending shares from 1 to 100"),
                    "list ascending percentages such as steps = [5, 25, 100]",
                ),
            ));
        }
        let state = match s.state.as_deref() {
            None | Some("active") => RolloutState::Active,
            Some("rolled_back") => RolloutState::RolledBack,
            Some(other) => {
                errs.push(err(
                    None,
                    &at("state"),
                    problem(
                        format!("rollout {name:?}: unknown state {other:?}"),
                        "set state to \"active\" or \"rolled_back\" (or leave it out)",
                    ),
                ));
                RolloutState::Active
            }
        };
        if let Some(list) = &s.tenants {
            if list.is_empty() {
                errs.push(err(
                    None,
                    &at("tenants"),
                    problem(
                        format!("rollout {name:?} lists no tenants"),
                        "list tenant ids, or leave tenants out to take a share of every tenant of the from pool",
                    ),
                ));
            }
        }
        let a = s.auto_rollback.clone().unwrap_or_default();
        let auto_rollback = match a.enabled.unwrap_or(true) {
            false => None,
            true => {
                let window = a.window_secs.unwrap_or(DEFAULT_WINDOW_SECS);
                let margin = a.margin_percent.unwrap_or(DEFAULT_MARGIN_PERCENT);
                if window == 0 || window > 3600 {
                    errs.push(err(
                        None,
                        &at("auto_rollback.window_secs"),
                        problem(
                            format!("rollout {name:?}: window_secs {window} is out of range"),
                            "set window_secs between 1 and 3600",
                        ),
                    ));
                }
                if margin > 100 {
                    errs.push(err(
                        None,
                        &at("auto_rollback.margin_percent"),
                        problem(
                            format!("rollout {name:?}: margin_percent {margin} is over 100"),
                            "set margin_percent between 0 and 100 (percentage points of 5xx rate)",
                        ),
                    ));
                }
                Some(AutoRollback {
                    margin_percent: margin,
                    window: Duration::from_secs(window.clamp(1, 3600)),
                    min_requests: a.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS).max(1),
                })
            }
        };
        out.push(Rollout {
            name,
            from,
            to,
            tenants: s.tenants.clone(),
            percent: s.percent.min(100),
            steps,
            state,
            reason: s.reason.clone(),
            auto_rollback,
            in_main_file,
            section: s,
        });
    }
    out
}

/// Places every tenant in at most one rollout's candidates and decides
/// who is moved. A tenant a rollout lists must exist and be on its `from`
/// pool; a tenant that two active rollouts would both take is refused,
/// naming both. Pinned tenants are in no rollout.
pub(super) fn assign(rollouts: &[Rollout], tenants: &mut [TenantSpec], errs: &mut Vec<ConfigError>) {
    if rollouts.is_empty() {
        return;
    }
    let index: HashMap<&str, usize> = tenants.iter().enumerate().map(|(i, t)| (t.id.as_str(), i)).collect();
    let mut cohorts: Vec<Option<Cohort>> = vec![None; tenants.len()];
    let mut clashes: BTreeMap<(u32, u32), Vec<String>> = BTreeMap::new();
    for (r_idx, r) in rollouts.iter().enumerate() {
        let r_idx = r_idx as u32;
        if r.state == RolloutState::RolledBack {
            continue;
        }
        let candidates: Vec<usize> = match &r.tenants {
            Some(list) => {
                let mut found = Vec::with_capacity(list.len());
                for (j, id) in list.iter().enumerate() {
                    let at = field(&r.name, r.in_main_file, &format!("tenants[{j}]"));
                    match index.get(id.as_str()) {
                        None => errs.push(err(
                            Some(id),
                            &at,
                            problem(
                                format!("rollout {:?} lists tenant {id:?}, which does not exist", r.name),
                                "list existing tenant ids only",
                            ),
                        )),
                        Some(&i) if tenants[i].pool != r.from => errs.push(err(
                            Some(id),
                            &at,
                            problem(
                                format!(
                                    "rollout {:?} lists tenant {id:?}, which is not on the rollout's from pool",
                                    r.name
                                ),
                                "list only tenants whose pool is the rollout's from pool, or change from",
                            ),
                        )),
                        Some(&i) => found.push(i),
                    }
                }
                found
            }
            None => (0..tenants.len()).filter(|&i| tenants[i].pool == r.from).collect(),
        };
        for i in candidates {
            if tenants[i].pinned {
                continue;
            }
            match cohorts[i] {
                Some(Cohort { rollout: other, .. }) if other != r_idx => {
                    let list = clashes.entry((other, r_idx)).or_default();
                    if list.len() < 5 {
                        list.push(tenants[i].id.clone());
                    }
                }
                _ => {
                    cohorts[i] = Some(Cohort {
                        rollout: r_idx,
                        moved: selected(&r.name, &tenants[i].id, r.moved_percent()),
                    });
                }
            }
        }
    }
    drop(index);
    for (t, c) in tenants.iter_mut().zip(cohorts) {
        t.cohort = c;
    }
    for ((a, b), ids) in clashes {
        let (a, b) = (&rollouts[a as usize], &rollouts[b as usize]);
        errs.push(err(
            ids.first().map(String::as_str),
            &field(&b.name, b.in_main_file, ""),
            problem(
                format!(
                    "rollouts {:?} and {:?} both take tenants {} (and perhaps more)",
                    a.name,
                    b.name,
                    ids.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
                ),
                "give one of them a tenants list that leaves the others out, pin those tenants, or roll one back",
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_moved_share_grows_with_the_percent_and_keeps_its_members() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        let at = |p: u8| -> Vec<&String> { ids.iter().filter(|id| selected("r", id, p)).collect() };
        let (five, quarter, all) = (at(5), at(25), at(100));
        assert!((350..650).contains(&five.len()), "5 %: {}", five.len());
        assert!((2250..2750).contains(&quarter.len()), "25 %: {}", quarter.len());
        assert_eq!(all.len(), ids.len());
        assert!(at(0).is_empty());
        assert!(five.iter().all(|id| quarter.contains(id)));
        // Another rollout picks another share.
        let other: Vec<&String> = ids.iter().filter(|id| selected("s", id, 5)).collect();
        assert_ne!(five, other);
    }
}
