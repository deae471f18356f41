//! Per-tenant limits: concurrency cap, sustained rate with burst (GCRA), and
//! day/month quotas in the tenant's time zone.
//!
//! Limits come from the tenant's plan with per-tenant overrides (resolved in
//! `config`). The state they act on lives here, outside the snapshot, in a
//! [`Book`] keyed by tenant id: it survives reloads, a changed limit applies
//! from the next request, and a removed tenant's state is dropped. Quota
//! counts are persisted to a file so a restart keeps them.

mod clients;
pub mod fleet;
mod flush;
mod gcra;
mod quota;

pub use clients::Clients;
pub use flush::QuotaFlusher;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use http::HeaderValue;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use gcra::{Gcra, Rate, RateCheck};
pub use quota::{Counter, Period};

/// A tenant's effective limits. `None` fields are unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub rate: Option<Rate>,
    /// Per client IP address, inside the tenant's rate.
    pub client_rate: Option<Rate>,
    pub max_concurrent: Option<u32>,
    pub per_day: Option<u64>,
    pub per_month: Option<u64>,
    pub timezone: TimeZone,
    /// Fleet mode: refuse (503) rather than serve on local limits while the
    /// shared store is unreachable.
    pub fail_closed: bool,
}

impl Limits {
    /// No limit of any kind (UTC). Fleet settling uses it: it moves counts
    /// without leasing anything.
    pub fn none() -> Limits {
        Limits {
            rate: None,
            client_rate: None,
            max_concurrent: None,
            per_day: None,
            per_month: None,
            timezone: TimeZone::UTC,
            fail_closed: false,
        }
    }

    /// Whether no request is ever limited.
    pub fn is_unlimited(&self) -> bool {
        self.rate.is_none()
            && self.client_rate.is_none()
            && self.max_concurrent.is_none()
            && self.per_day.is_none()
            && self.per_month.is_none()
    }

    /// The `RateLimit-Policy` header (draft-ietf-httpapi-ratelimit-headers-10).
    pub fn policy_header(&self) -> Option<HeaderValue> {
        let mut items = Vec::new();
        if let Some(r) = self.rate {
            items.push(format!("\"burst\";q={};w={}", r.burst, r.window_secs()));
        }
        if let Some(r) = self.client_rate {
            items.push(format!("\"client\";q={};w={}", r.burst, r.window_secs()));
        }
        if let Some(q) = self.per_day {
            items.push(format!("\"day\";q={q};w={}", Period::Day.window_secs()));
        }
        if let Some(q) = self.per_month {
            items.push(format!("\"month\";q={q};w={}", Period::Month.window_secs()));
        }
        if let Some(c) = self.max_concurrent {
            items.push(format!("\"concurrency\";q={c};qu=\"concurrent-requests\""));
        }
        HeaderValue::from_str(&items.join(", "))
            .ok()
            .filter(|_| !items.is_empty())
    }
}

/// Which limit refused a request. A fixed set: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Concurrency,
    Rate,
    Day,
    Month,
    /// Fleet mode, `on_store_failure = "closed"`: the shared store is down.
    Store,
    /// One client over its share of the tenant.
    Client,
}

impl Violation {
    /// The policy name used in headers, problem bodies and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Concurrency => "concurrency",
            Violation::Rate => "burst",
            Violation::Day => "day",
            Violation::Month => "month",
            Violation::Store => "store",
            Violation::Client => "client",
        }
    }

    /// All of them, in check order.
    pub const ALL: [Violation; 6] = [
        Violation::Concurrency,
        Violation::Client,
        Violation::Rate,
        Violation::Day,
        Violation::Month,
        Violation::Store,
    ];
}

/// A refused request: which limit, and when to retry (whole seconds, never
/// earlier than the reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub violation: Violation,
    pub retry_after: u64,
}

impl Refusal {
    /// 429, or 503 when a fail-closed tenant's shared store is down.
    pub fn status(&self) -> u16 {
        match self.violation {
            Violation::Store => 503,
            _ => 429,
        }
    }

    /// The RFC 9457 `application/problem+json` body.
    pub fn problem_body(&self) -> String {
        let detail = match self.violation {
            Violation::Concurrency => "too many requests in flight for this tenant",
            Violation::Rate => "request rate above the tenant's plan",
            Violation::Day => "daily request quota used up",
            Violation::Month => "monthly request quota used up",
            Violation::Store => "the shared limit store is unreachable and this tenant's limits fail closed",
            Violation::Client => "request rate of this client above its share of the tenant's plan",
        };
        let (kind, title) = match self.violation {
            Violation::Store => ("limit-store-unavailable", "Service Unavailable"),
            _ => ("rate-limited", "Too Many Requests"),
        };
        serde_json::json!({
            "type": format!("tag:tenantgate,2026:{kind}"),
            "title": title,
            "status": self.status(),
            "detail": detail,
            "policy": self.violation.as_str(),
            "retry_after": self.retry_after,
        })
        .to_string()
    }

    /// The `RateLimit` field of the refusal (draft-ietf-httpapi-ratelimit-headers-10):
    /// the refusing policy with nothing remaining and the seconds until a
    /// retry can pass, `"burst";r=0;t=3`. `None` for a store outage (503),
    /// which is no quota.
    pub fn header(&self) -> Option<HeaderValue> {
        if self.violation == Violation::Store {
            return None;
        }
        let mut items = Items::default();
        items.push(self.violation.as_str(), 0, Some(self.retry_after));
        items.header()
    }
}

/// Time sources, injectable for tests.
pub trait Clock: Send + Sync {
    /// Nanoseconds on a monotonic clock.
    fn mono_ns(&self) -> u64;
    /// Wall-clock time, for calendar quotas.
    fn now(&self) -> Timestamp;
}

/// The real clocks.
pub struct SystemClock;

static MONO_EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Clock for SystemClock {
    fn mono_ns(&self) -> u64 {
        MONO_EPOCH.elapsed().as_nanos() as u64
    }
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Persisted quota counts of one tenant.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Quotas {
    pub day: Counter,
    pub month: Counter,
}

/// One tenant's limiter state.
#[derive(Debug, Default)]
pub struct TenantState {
    inflight: AtomicU32,
    gcra: Gcra,
    quotas: Mutex<Quotas>,
    dirty: AtomicBool,
    /// Fleet mode: this replica's share of the tenant's budget.
    lease: Mutex<fleet::Lease>,
    /// Fleet mode: one Redis exchange at a time per tenant.
    exchange: tokio::sync::Mutex<()>,
    /// Fleet mode: a background refill is under way.
    prefetching: AtomicBool,
    /// The per-client limiter, when the tenant has a client limit.
    clients: arc_swap::ArcSwapOption<Clients>,
}

/// Holds one in-flight slot of a tenant; released on drop.
#[derive(Debug)]
pub struct Permit(Arc<TenantState>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request: its slot (if capped) and the `RateLimit` header.
#[derive(Debug)]
pub struct Admission {
    pub permit: Option<Permit>,
    pub header: Option<HeaderValue>,
}

/// The items of a `RateLimit` header, in one buffer.
#[derive(Debug, Default)]
struct Items(String);

impl Items {
    /// Adds `"<policy>";r=<remaining>` and, when given, `;t=<seconds>`.
    fn push(&mut self, policy: &str, remaining: u64, reset_secs: Option<u64>) {
        use std::fmt::Write;
        if !self.0.is_empty() {
            self.0.push_str(", ");
        }
        let _ = write!(self.0, "\"{policy}\";r={remaining}");
        if let Some(t) = reset_secs {
            let _ = write!(self.0, ";t={t}");
        }
    }

    fn header(self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            None
        } else {
            HeaderValue::from_maybe_shared(self.0).ok()
        }
    }
}

impl TenantState {
    /// Takes an in-flight slot if the tenant is capped. The cap is per
    /// replica, also in fleet mode.
    fn slot(self: &Arc<Self>, limits: &Limits, items: &mut Items) -> Result<Option<Permit>, Refusal> {
        let Some(max) = limits.max_concurrent else {
            return Ok(None);
        };
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(self.clone());
        if before >= max {
            return Err(Refusal {
                violation: Violation::Concurrency,
                retry_after: 1,
            });
        }
        items.push("concurrency", u64::from(max - before - 1), None);
        Ok(Some(permit))
    }

    /// Applies the per-client limit, when the tenant has one. A changed
    /// client rate starts a fresh limiter.
    fn client(&self, limits: &Limits, client: Option<IpAddr>) -> Result<(), Refusal> {
        let (Some(rate), Some(ip)) = (limits.client_rate, client) else {
            return Ok(());
        };
        let current = self.clients.load();
        match current.as_deref() {
            Some(c) if c.rate() == rate => c.check(ip),
            _ => {
                drop(current);
                let Some(fresh) = Clients::new(rate).map(Arc::new) else {
                    return Ok(());
                };
                self.clients.store(Some(fresh.clone()));
                fresh.check(ip)
            }
        }
    }

    /// Trims the per-client limiter (see [`Clients::trim`]).
    fn trim_clients(&self) {
        if let Some(c) = self.clients.load().as_deref() {
            c.trim();
        }
    }

    /// Admits one request of `client`, cheapest check first: concurrency,
    /// the client's share, the tenant's rate, quotas.
    pub fn admit(
        self: &Arc<Self>,
        limits: &Limits,
        client: Option<IpAddr>,
        clock: &dyn Clock,
    ) -> Result<Admission, Refusal> {
        let mut items = Items::default();
        let permit = self.slot(limits, &mut items)?;
        self.client(limits, client)?;
        if let Some(rate) = limits.rate {
            match self.gcra.check(clock.mono_ns(), rate) {
                RateCheck::Allowed { remaining, reset_ns } => {
                    items.push("burst", u64::from(remaining), Some(reset_ns.div_ceil(1_000_000_000)));
                }
                RateCheck::Limited { retry_ns } => {
                    let retry_after = retry_ns.div_ceil(1_000_000_000).max(1);
                    return Err(Refusal {
                        violation: Violation::Rate,
                        retry_after,
                    });
                }
            }
        }
        if limits.per_day.is_some() || limits.per_month.is_some() {
            let now = clock.now();
            let mut q = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
            for (period, limit, violation) in [
                (Period::Day, limits.per_day, Violation::Day),
                (Period::Month, limits.per_month, Violation::Month),
            ] {
                let Some(limit) = limit else { continue };
                let counter = match period {
                    Period::Day => &mut q.day,
                    Period::Month => &mut q.month,
                };
                match counter.take(period, limit, now, &limits.timezone) {
                    Ok(remaining) => items.push(period.as_str(), remaining, Some(counter.resets_in(now))),
                    Err(retry_after) => return Err(Refusal { violation, retry_after }),
                }
            }
            self.dirty.store(true, Ordering::Release);
        }
        Ok(Admission {
            permit,
            header: items.header(),
        })
    }

    /// Requests currently in flight.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    /// A copy of the quota counts.
    pub fn quotas(&self) -> Quotas {
        *self.quotas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tenant's use of `limits` at `now`: in fleet mode the shared
    /// counts as this replica last saw them (they include budget leased to
    /// replicas and not yet spent), and no local burst figure.
    pub fn usage(&self, limits: &Limits, fleet: bool, clock: &dyn Clock) -> Usage {
        let now = clock.now();
        let (day, month) = if fleet {
            self.lease.lock().unwrap_or_else(|p| p.into_inner()).counts()
        } else {
            let q = self.quotas();
            (q.day, q.month)
        };
        let period = |mut c: Counter, period: Period, limit: Option<u64>| {
            let limit = limit?;
            c.roll(period, now, &limits.timezone);
            Some(PeriodUse {
                used: c.count,
                limit,
                resets_in_secs: c.resets_in(now),
            })
        };
        Usage {
            in_flight: self.inflight(),
            max_concurrent: limits.max_concurrent,
            burst_left: limits
                .rate
                .filter(|_| !fleet)
                .map(|r| self.gcra.remaining(clock.mono_ns(), r)),
            day: period(day, Period::Day, limits.per_day),
            month: period(month, Period::Month, limits.per_month),
        }
    }
}

/// A tenant's use of its limits (`TenantState::usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub in_flight: u32,
    pub max_concurrent: Option<u32>,
    /// Requests the rate allows at once now (`None` without a rate, or in
    /// fleet mode, where the rate lives in Redis).
    pub burst_left: Option<u32>,
    pub day: Option<PeriodUse>,
    pub month: Option<PeriodUse>,
}

/// One quota period's use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodUse {
    pub used: u64,
    pub limit: u64,
    pub resets_in_secs: u64,
}

/// Every tenant's limiter state, keyed by tenant id, plus the quota file.
#[derive(Debug, Default)]
pub struct Book {
    states: Mutex<HashMap<Arc<str>, Arc<TenantState>>>,
    /// Counts read from the quota file, waiting for their tenant.
    stored: Mutex<HashMap<String, Quotas>>,
    file: Mutex<Option<PathBuf>>,
    /// Set in fleet mode: rate and quotas are shared through Redis.
    fleet: std::sync::OnceLock<Arc<fleet::Fleet>>,
}

/// Why the quota file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum QuotaFileError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a quota file: {source}", .path.display())]
    Format { path: PathBuf, source: serde_json::Error },
}

impl Book {
    /// Shares rate and quotas through `fleet` from now on.
    pub fn use_fleet(&self, fleet: Arc<fleet::Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    /// The fleet, in fleet mode.
    pub fn fleet(&self) -> Option<&Arc<fleet::Fleet>> {
        self.fleet.get()
    }

    /// The tenants whose state passes `keep` (the fleet's reconciliation
    /// picks those with counts or leases to settle).
    fn states_where(&self, keep: impl Fn(&TenantState) -> bool) -> Vec<(Arc<str>, Arc<TenantState>)> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .filter(|(_, s)| keep(s))
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    /// Uses `path` to persist quotas, loading the counts already there.
    pub fn open(&self, path: &Path) -> Result<(), QuotaFileError> {
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.to_path_buf());
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(QuotaFileError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let stored: HashMap<String, Quotas> =
            serde_json::from_slice(&bytes).map_err(|source| QuotaFileError::Format {
                path: path.to_path_buf(),
                source,
            })?;
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        for (id, q) in stored {
            match states.get(id.as_str()) {
                Some(s) => *s.quotas.lock().unwrap_or_else(|p| p.into_inner()) = q,
                None => {
                    pending.insert(id, q);
                }
            }
        }
        let _ = &mut states;
        Ok(())
    }

    /// The state of tenant `id`, created (with any stored counts) if new.
    pub fn state(&self, id: &Arc<str>) -> Arc<TenantState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .entry(id.clone())
            .or_insert_with(|| {
                let stored = self
                    .stored
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&**id)
                    .unwrap_or_default();
                Arc::new(TenantState {
                    quotas: Mutex::new(stored),
                    ..TenantState::default()
                })
            })
            .clone()
    }

    /// Drops the state of tenants not in `keep`.
    pub fn retain(&self, keep: &std::collections::HashSet<&str>) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep.contains(&**id));
    }

    /// Trims every tenant's per-client limiter. Blocking (walks all tenants).
    pub fn trim_clients(&self) {
        let states: Vec<Arc<TenantState>> = {
            let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            states
                .values()
                .filter(|s| s.clients.load().is_some())
                .cloned()
                .collect()
        };
        for s in states {
            s.trim_clients();
        }
    }

    /// Writes the quota counts if any changed since the last flush.
    /// Blocking (file I/O).
    pub fn flush(&self) -> Result<bool, QuotaFileError> {
        let Some(path) = self.file.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(false);
        };
        let snapshot: HashMap<String, Quotas> = {
            let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            let mut any = false;
            for s in states.values() {
                any |= s.dirty.swap(false, Ordering::AcqRel);
            }
            if !any {
                return Ok(false);
            }
            states
                .iter()
                .map(|(id, s)| (id.to_string(), s.quotas()))
                .filter(|(_, q)| q.day.count + q.month.count > 0)
                .collect()
        };
        let json = serde_json::to_vec(&snapshot).map_err(|source| QuotaFileError::Format {
            path: path.clone(),
            source,
        })?;
        crate::tls::state::write_private(&path, &json).map_err(|source| QuotaFileError::Io { path, source })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refusal_carries_a_ratelimit_field_with_nothing_remaining() {
        let r = |violation, retry_after| Refusal { violation, retry_after };
        assert_eq!(
            r(Violation::Rate, 3).header().as_ref().and_then(|v| v.to_str().ok()),
            Some("\"burst\";r=0;t=3")
        );
        assert_eq!(
            r(Violation::Day, 10800).header().as_ref().and_then(|v| v.to_str().ok()),
            Some("\"day\";r=0;t=10800")
        );
        assert_eq!(r(Violation::Store, 1).header(), None);
    }

    use super::*;
    use std::sync::atomic::AtomicU64;

    struct FakeClock {
        mono: AtomicU64,
        wall: Mutex<Timestamp>,
    }

    impl Clock for FakeClock {
        fn mono_ns(&self) -> u64 {
            self.mono.load(Ordering::SeqCst)
        }
        fn now(&self) -> Timestamp {
            *self.wall.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    fn clock(at: &str) -> FakeClock {
        FakeClock {
            mono: AtomicU64::new(1_000_000_000_000),
            wall: Mutex::new(at.parse().expect("ts")),
        }
    }

    fn limits() -> Limits {
        Limits::none()
    }

    #[test]
    fn concurrency_cap_holds_and_releases_on_drop() {
        let s = Arc::new(TenantState::default());
        let l = Limits {
            client_rate: None,
            max_concurrent: Some(2),
            ..limits()
        };
        let c = clock("2026-11-22T12:00:00Z");
        let a = s.admit(&l, None, &c).expect("first");
        let b = s.admit(&l, None, &c).expect("second");
        assert_eq!(
            s.admit(&l, None, &c).map(|_| ()),
            Err(Refusal {
                violation: Violation::Concurrency,
                retry_after: 1
            })
        );
        assert_eq!(s.inflight(), 2, "a refused request holds no slot");
        drop(a);
        let c3 = s.admit(&l, None, &c).expect("slot freed");
        assert_eq!(
            c3.header.as_ref().and_then(|h| h.to_str().ok()),
            Some("\"concurrency\";r=0")
        );
        drop((b, c3));
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn day_quota_retry_after_points_at_local_midnight() {
        let s = Arc::new(TenantState::default());
        let l = Limits {
            per_day: Some(3),
            timezone: TimeZone::get("Asia/Tokyo").expect("tz"),
            ..limits()
        };
        // 12:00 UTC = 21:00 in Tokyo: 3 hours to local midnight.
        let c = clock("2026-11-22T12:00:00Z");
        for left in [2, 1, 0] {
            let a = s.admit(&l, None, &c).expect("within quota");
            let h = a
                .header
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert_eq!(h, format!("\"day\";r={left};t=10800"));
        }
        assert_eq!(
            s.admit(&l, None, &c).map(|_| ()),
            Err(Refusal {
                violation: Violation::Day,
                retry_after: 10800
            })
        );
        *c.wall.lock().unwrap_or_else(|p| p.into_inner()) = "2026-11-22T15:00:00Z".parse().expect("ts");
        assert!(s.admit(&l, None, &c).is_ok(), "a new local day");
    }

    #[test]
    fn policy_header_lists_every_limit() {
        let l = Limits {
            rate: Some(Rate {
                per_second: 50,
                burst: 100,
            }),
            client_rate: None,
            max_concurrent: Some(64),
            per_day: Some(1000),
            per_month: None,
            timezone: TimeZone::UTC,
            fail_closed: false,
        };
        assert_eq!(
            l.policy_header().as_ref().and_then(|h| h.to_str().ok()),
            Some("\"burst\";q=100;w=2, \"day\";q=1000;w=86400, \"concurrency\";q=64;qu=\"concurrent-requests\"")
        );
        assert_eq!(limits().policy_header(), None);
    }

    #[test]
    fn quotas_survive_a_restart_through_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("quotas.json");
        let l = Limits {
            per_day: Some(10),
            ..limits()
        };
        let c = clock("2026-11-22T12:00:00Z");
        let id: Arc<str> = "acme".into();
        let book = Book::default();
        book.open(&path).expect("open");
        for _ in 0..4 {
            book.state(&id).admit(&l, None, &c).expect("admit");
        }
        assert!(book.flush().expect("flush"));
        assert!(!book.flush().expect("flush"), "nothing new to write");
        let again = Book::default();
        again.open(&path).expect("reopen");
        assert_eq!(again.state(&id).quotas().day.count, 4);
        assert_eq!(
            again
                .state(&id)
                .admit(&l, None, &c)
                .ok()
                .and_then(|a| a.header)
                .as_ref()
                .and_then(|h| h.to_str().ok().map(String::from)),
            Some("\"day\";r=5;t=43200".to_string())
        );
    }
}
