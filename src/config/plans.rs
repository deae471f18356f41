//! Plans and per-tenant limits: validation and the plan/override merge.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;

use super::file::{LimitsSection, PlanSection, TenantSection};
use super::{err, ConfigError, Problem};
use crate::limits::{Limits, Rate};

/// The plan name that means "no limits", explicitly.
pub const UNLIMITED: &str = "unlimited";

/// Plans as written, checked once, ready to resolve tenants against.
pub struct Plans<'a> {
    plans: &'a BTreeMap<String, PlanSection>,
    default_plan: Option<&'a str>,
}

impl<'a> Plans<'a> {
    /// Checks every plan and the default.
    pub fn new(
        plans: &'a BTreeMap<String, PlanSection>,
        limits: Option<&'a LimitsSection>,
        errs: &mut Vec<ConfigError>,
    ) -> Self {
        for (name, plan) in plans {
            check(plan, None, &format!("plans.{name}"), errs);
            super::profile::check_plan(name, plan, errs);
        }
        let default_plan = limits.and_then(|l| l.default_plan.as_deref());
        if let Some(d) = default_plan {
            if d != UNLIMITED && !plans.contains_key(d) {
                errs.push(err(
                    None,
                    "limits.default_plan",
                    Problem::UnknownPlan { plan: d.to_string() },
                ));
            }
        }
        Plans { plans, default_plan }
    }

    /// The plan a tenant naming `plan` (or none: the default) is on, if
    /// it is a defined one.
    pub fn effective(&self, plan: Option<&str>) -> Option<&'a PlanSection> {
        self.plans.get(plan.or(self.default_plan)?)
    }

    /// The name of the plan a tenant naming `plan` (or none: the default)
    /// is on.
    pub fn effective_name<'p>(&self, plan: Option<&'p str>) -> Option<&'p str>
    where
        'a: 'p,
    {
        plan.or(self.default_plan)
    }

    /// Whether `name` is a defined plan or [`UNLIMITED`].
    pub fn has(&self, name: &str) -> bool {
        name == UNLIMITED || self.plans.contains_key(name)
    }

    /// A tenant's effective limits: its plan (or the default), with its
    /// overrides on top. `None` means unlimited, which needs
    /// `plan = "unlimited"` once any plan is defined. Also checks the
    /// tenant's count of custom `domains` against the plan's `max_domains`.
    pub fn resolve(&self, i: usize, tenant: &TenantSection, errs: &mut Vec<ConfigError>) -> Option<Limits> {
        let (plan, overrides, timezone) = (
            tenant.plan.as_deref(),
            tenant.limits.as_ref(),
            tenant.timezone.as_deref(),
        );
        // Spellings of one name (case, trailing dot, Unicode) count once.
        let domains = tenant
            .domains
            .iter()
            .map(|d| super::parse_domain(d).map_or_else(|_| d.clone(), |n| n.to_string()))
            .collect::<std::collections::HashSet<String>>()
            .len();
        let t = Some(tenant.id.as_str());
        let timezone = match timezone {
            None => TimeZone::UTC,
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => tz,
                Err(_) => {
                    errs.push(err(
                        t,
                        &format!("tenants[{i}].timezone"),
                        Problem::BadTimezone {
                            value: name.to_string(),
                        },
                    ));
                    TimeZone::UTC
                }
            },
        };
        let base = match plan.or(self.default_plan) {
            // No plan limits, but the tenant's own limits still apply and
            // are checked like any others.
            Some(UNLIMITED) => PlanSection::default(),
            Some(name) => match self.plans.get(name) {
                Some(p) => p.clone(),
                None => {
                    errs.push(err(
                        t,
                        &format!("tenants[{i}].plan"),
                        Problem::UnknownPlan { plan: name.to_string() },
                    ));
                    return None;
                }
            },
            None if self.plans.is_empty() && overrides.is_none() => return None,
            None => {
                errs.push(err(t, &format!("tenants[{i}].plan"), Problem::NoPlan));
                return None;
            }
        };
        let merged = match overrides {
            Some(o) => o.over(&base),
            None => base,
        };
        if let Some(max) = merged.max_domains.filter(|m| *m > 0) {
            if domains as u64 > max as u64 {
                let problem = Problem::TooManyDomains { count: domains, max };
                errs.push(err(t, &format!("tenants[{i}].domains"), problem));
            }
        }
        // A plan may cap domains only: that is no request limit.
        check(&merged, t, &format!("tenants[{i}].limits"), errs)
            .filter(|l| !l.is_unlimited())
            .map(|mut l| {
                l.timezone = timezone;
                l
            })
    }
}

impl PlanSection {
    /// These values, with `base`'s for the keys not set here.
    pub fn over(&self, base: &PlanSection) -> PlanSection {
        PlanSection {
            requests_per_second: self.requests_per_second.or(base.requests_per_second),
            burst: self.burst.or(base.burst),
            max_concurrent: self.max_concurrent.or(base.max_concurrent),
            requests_per_day: self.requests_per_day.or(base.requests_per_day),
            requests_per_month: self.requests_per_month.or(base.requests_per_month),
            client_requests_per_second: self.client_requests_per_second.or(base.client_requests_per_second),
            client_burst: self.client_burst.or(base.client_burst),
            on_store_failure: self.on_store_failure.clone().or_else(|| base.on_store_failure.clone()),
            max_domains: self.max_domains.or(base.max_domains),
            // Profile keys are refused in limits tables; a plan's own stay.
            features: self.features.clone().or_else(|| base.features.clone()),
            locale: self.locale.clone().or_else(|| base.locale.clone()),
            region: self.region.clone().or_else(|| base.region.clone()),
            branding: self.branding.clone().or_else(|| base.branding.clone()),
            labels: if self.labels.is_empty() {
                base.labels.clone()
            } else {
                self.labels.clone()
            },
            jwt: self.jwt.clone().or_else(|| base.jwt.clone()),
        }
    }

    /// The keys set here, as written in the file.
    pub fn keys(&self) -> Vec<&'static str> {
        let set = [
            ("requests_per_second", self.requests_per_second.is_some()),
            ("burst", self.burst.is_some()),
            ("max_concurrent", self.max_concurrent.is_some()),
            ("requests_per_day", self.requests_per_day.is_some()),
            ("requests_per_month", self.requests_per_month.is_some()),
            ("client_requests_per_second", self.client_requests_per_second.is_some()),
            ("client_burst", self.client_burst.is_some()),
            ("on_store_failure", self.on_store_failure.is_some()),
            ("max_domains", self.max_domains.is_some()),
        ];
        set.into_iter().filter(|(_, on)| *on).map(|(k, _)| k).collect()
    }
}

/// Each value of `p` on its own (positive numbers, a known
/// `on_store_failure`), for values that are merged with others later.
pub fn check_values(p: &PlanSection, at: &str, errs: &mut Vec<ConfigError>) {
    values(p, None, at, errs);
}

/// The values of a plan, each checked on its own.
struct Values {
    rps: Option<u64>,
    burst: Option<u64>,
    max_concurrent: Option<u64>,
    per_day: Option<u64>,
    per_month: Option<u64>,
    client_rps: Option<u64>,
    client_burst: Option<u64>,
    fail_closed: bool,
}

fn values(p: &PlanSection, tenant: Option<&str>, at: &str, errs: &mut Vec<ConfigError>) -> Values {
    let mut positive = |field: &'static str, v: Option<i64>| -> Option<u64> {
        match v {
            Some(n) if n > 0 => Some(n as u64),
            Some(n) => {
                errs.push(err(
                    tenant,
                    &format!("{at}.{field}"),
                    Problem::BadLimit { field, value: n },
                ));
                None
            }
            None => None,
        }
    };
    let rps = positive("requests_per_second", p.requests_per_second);
    let burst = positive("burst", p.burst);
    let max_concurrent = positive("max_concurrent", p.max_concurrent);
    let per_day = positive("requests_per_day", p.requests_per_day);
    let per_month = positive("requests_per_month", p.requests_per_month);
    let client_rps = positive("client_requests_per_second", p.client_requests_per_second);
    let client_burst = positive("client_burst", p.client_burst);
    positive("max_domains", p.max_domains);
    let fail_closed = match p.on_store_failure.as_deref() {
        None | Some("open") => false,
        Some("closed") => true,
        Some(other) => {
            errs.push(err(
                tenant,
                &format!("{at}.on_store_failure"),
                Problem::BadStoreFailure {
                    value: other.to_string(),
                },
            ));
            false
        }
    };
    Values {
        rps,
        burst,
        max_concurrent,
        per_day,
        per_month,
        client_rps,
        client_burst,
        fail_closed,
    }
}

/// Validates one set of values and turns it into [`Limits`] (UTC).
fn check(p: &PlanSection, tenant: Option<&str>, at: &str, errs: &mut Vec<ConfigError>) -> Option<Limits> {
    let before = errs.len();
    let v = values(p, tenant, at, errs);
    let mut rate_of = |(rate_field, rps): (&'static str, Option<u64>),
                       (burst_field, burst): (&'static str, Option<u64>)| {
        match (rps, burst) {
            (Some(r), Some(b)) if b < r => {
                errs.push(err(
                    tenant,
                    &format!("{at}.{burst_field}"),
                    Problem::BurstBelowRate {
                        burst_field,
                        burst: b as i64,
                        rate_field,
                        rate: r as i64,
                    },
                ));
                None
            }
            (Some(r), b) => Some(Rate {
                per_second: clamp32(r),
                burst: clamp32(b.unwrap_or(r)),
            }),
            (None, Some(_)) => {
                errs.push(err(
                    tenant,
                    &format!("{at}.{burst_field}"),
                    Problem::BurstWithoutRate {
                        burst_field,
                        rate_field,
                    },
                ));
                None
            }
            (None, None) => None,
        }
    };
    let rate = rate_of(("requests_per_second", v.rps), ("burst", v.burst));
    let client_rate = rate_of(
        ("client_requests_per_second", v.client_rps),
        ("client_burst", v.client_burst),
    );
    (errs.len() == before).then(|| Limits {
        rate,
        client_rate,
        max_concurrent: v.max_concurrent.map(clamp32),
        per_day: v.per_day,
        per_month: v.per_month,
        timezone: TimeZone::UTC,
        fail_closed: v.fail_closed,
    })
}

fn clamp32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
