//! The certificate manager: follows the registry and keeps a certificate
//! for every host that needs one.
//!
//! On every reload (and every minute, and on SIGHUP) it re-reads the
//! operator certificate folder and then recomputes the names to manage:
//! every exact custom domain and platform host that no operator certificate
//! covers for at least 14 more days. With an ACME issuer it orders what is
//! missing (bounded concurrency), renews inside the CA's ARI window (polled
//! on the CA's `Retry-After`, so a moved window brings a renewal forward) or,
//! without ARI, at two thirds of the lifetime minus up to a tenth of it as
//! jitter, and on failure retries
//! with capped exponential backoff while the current certificate keeps
//! serving. Names that leave the config stop renewing.
//!
//! The main loop never waits on the network: the account, ARI and orders run
//! in per-name tasks, each under a timeout, so a stalled CA cannot stop the
//! manager. A reload never aborts an order; a name removed and re-added while
//! its order runs is not ordered twice.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use instant_acme::{Account, CertificateIdentifier};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::{mpsc, Mutex, Semaphore};

use super::dns01::Rfc2136;
use super::fleet::{Lease, SharedAcme};
use super::order::{self, OrderError};
use super::Challenges;
use crate::config::{Acme, DomainName, Issuer, Tls};
use crate::registry::{Registry, Snapshot};
use crate::telemetry::Metrics;
use crate::tls::certs::Loaded;
use crate::tls::state::write_private;
use crate::tls::CertStore;

/// A certificate this close to expiry counts as "expiring" in metrics.
const EXPIRING: Duration = crate::tls::store::RENEW_BEFORE;
/// How often due work is looked for.
const TICK: Duration = Duration::from_millis(500);
/// How often names and operator certificates are re-read without a reload.
const RESYNC: Duration = Duration::from_secs(60);
/// Bounds on network work, so a stalled CA cannot hold a task for ever.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
const ACCOUNT_TIMEOUT: Duration = Duration::from_secs(30);
const ARI_TIMEOUT: Duration = Duration::from_secs(10);
/// ARI polls running at once.
const ARI_CONCURRENCY: usize = 8;
/// At most about this many first ARI polls per `ari_min_poll_secs`.
const ARI_FIRST_POLLS: usize = 1000;
/// The longest wait between two ARI polls of one certificate.
const ARI_MAX_POLL: Duration = Duration::from_secs(24 * 3600);
/// A CA without ARI is asked again after this (it may add it).
const ARI_UNSUPPORTED_RECHECK: Duration = Duration::from_secs(24 * 3600);
/// A failed ARI poll (the CA down, a bad answer) is retried after this.
const ARI_ERROR_RETRY: Duration = Duration::from_secs(15 * 60);
/// Fallback renewal jitter: renewals come up to this share of the
/// lifetime before two thirds of it.
const FALLBACK_JITTER: f64 = 0.10;
/// Far enough in the future to mean "not before the next change".
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug)]
struct Managed {
    due: Instant,
    failures: u32,
    not_after: Option<SystemTime>,
    /// Why the last order failed; `None` once one succeeds. Boxed, like
    /// `window`: every managed name has the field, few ever a value.
    last_error: Option<Box<str>>,
    /// Held back by an order budget until `due`.
    queued: bool,
    /// When the CA's renewal info (ARI) is polled next; `None` without a
    /// certificate.
    ari_next: Option<Instant>,
    /// The last suggested window the CA gave (start, end).
    window: Option<Box<(SystemTime, SystemTime)>>,
}

impl Managed {
    /// A name whose current certificate ends at `not_after` (if any),
    /// renewed from `due`; its ARI poll comes within `first_poll`.
    fn new(name: &str, due: Instant, not_after: Option<SystemTime>, first_poll: Duration) -> Managed {
        Managed {
            due,
            failures: 0,
            not_after,
            last_error: None,
            queued: false,
            ari_next: not_after.map(|_| Instant::now() + first_poll.mul_f64(unit_random(name))),
            window: None,
        }
    }
}

/// The names the manager keeps certificates for, and where each stands.
/// Shared with read-only queries (the admin API); locked only briefly and
/// never across an await.
#[derive(Default)]
pub struct Schedule(std::sync::Mutex<Book>);

#[derive(Default)]
struct Book {
    managed: HashMap<String, Managed>,
    /// Orders running, by name, with their id: survives a name's removal.
    in_flight: HashMap<String, u64>,
    /// A hash of each tenant's configured names at the last sync (sorted),
    /// to see which tenants' lists changed; the platform's under `""`.
    tenant_names: HashMap<Arc<str>, u64>,
    /// When first orders were sent, per registered domain and per account.
    budgets: Budgets,
    /// Names whose ARI poll runs.
    ari_polling: HashSet<String>,
}

/// The CA's rate budgets, kept here so that orders past them wait in a
/// queue instead of being refused by the CA: first orders per registered
/// domain in any 7 days, and per account (CA directory) in any 3 hours.
#[derive(Default)]
struct Budgets {
    by_domain: HashMap<String, std::collections::VecDeque<Instant>>,
    by_account: HashMap<String, std::collections::VecDeque<Instant>>,
}

const DOMAIN_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
const ACCOUNT_WINDOW: Duration = Duration::from_secs(3 * 3600);

/// The registered domain a name's budget counts against: `shop.acme.com`
/// and `acme.com` are both `acme.com`.
fn registered_domain(name: &str) -> String {
    let host = name.strip_prefix("*.").unwrap_or(name);
    psl::domain(host.as_bytes())
        .and_then(|d| std::str::from_utf8(d.as_bytes()).ok())
        .unwrap_or(host)
        .to_string()
}

impl Budgets {
    /// Spends one first order of `name` at `account`, or returns when the
    /// budget that is used up frees a slot.
    fn spend(&mut self, name: &str, account: &str, acme: &Acme, now: Instant) -> Result<(), Instant> {
        let domain = registered_domain(name);
        let free_at = |sent: &mut std::collections::VecDeque<Instant>, window: Duration, limit: u64| {
            while sent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                sent.pop_front();
            }
            if sent.len() as u64 >= limit {
                return sent.front().map(|t| *t + window);
            }
            None
        };
        let d = self.by_domain.entry(domain).or_default();
        if let Some(at) = free_at(d, DOMAIN_WINDOW, acme.budget_per_registered_domain) {
            return Err(at);
        }
        let a = self.by_account.entry(account.to_string()).or_default();
        if let Some(at) = free_at(a, ACCOUNT_WINDOW, acme.budget_per_account) {
            return Err(at);
        }
        a.push_back(now);
        d.push_back(now);
        Ok(())
    }

    /// Gives back the registered domain's share of a first order of `name`
    /// that issued nothing (the CA counts certificates per registered
    /// domain); the account's share stays (it counts orders).
    fn refund_domain(&mut self, name: &str) {
        if let Some(d) = self.by_domain.get_mut(&registered_domain(name)) {
            d.pop_back();
        }
    }
}

/// Where one managed name stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameStatus {
    pub state: NameState,
    /// The end of the certificate the manager last issued or found stored.
    pub not_after: Option<SystemTime>,
    /// When the next order (first issue, renewal or retry) is due; `None`
    /// while one runs.
    pub next_attempt: Option<SystemTime>,
    /// Orders failed in a row.
    pub failures: u32,
    pub last_error: Option<String>,
}

/// The state of a managed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameState {
    /// An order is running.
    Ordering,
    /// No certificate yet; the first order is due at `next_attempt`.
    Pending,
    /// The last order failed; it is retried at `next_attempt` (backoff).
    Failed,
    /// A certificate is current; it is renewed from `next_attempt` on.
    Valid,
    /// Held back by the CA's order budget (per registered domain or per
    /// account); the order runs at `next_attempt`.
    Queued,
}

impl NameState {
    /// The name used in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            NameState::Ordering => "ordering",
            NameState::Pending => "pending",
            NameState::Failed => "failed",
            NameState::Valid => "valid",
            NameState::Queued => "queued",
        }
    }
}

impl Schedule {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `name` (an exact host) stands; `None` when the manager does
    /// not order it (no ACME issuer, an operator certificate covers it, or
    /// it is not a configured host). One brief lock, no I/O.
    pub fn status(&self, name: &str) -> Option<NameStatus> {
        let book = self.lock();
        let m = book.managed.get(name)?;
        let ordering = book.in_flight.contains_key(name);
        let state = match (ordering, &m.last_error, m.not_after) {
            (true, _, _) => NameState::Ordering,
            (false, _, _) if m.queued => NameState::Queued,
            (false, Some(_), _) => NameState::Failed,
            (false, None, Some(t)) if t > SystemTime::now() => NameState::Valid,
            (false, None, _) => NameState::Pending,
        };
        let wall = wall_time(m.due);
        Some(NameStatus {
            state,
            not_after: m.not_after,
            next_attempt: (!ordering).then_some(wall),
            failures: m.failures,
            last_error: m.last_error.as_deref().map(str::to_string),
        })
    }
}

impl Schedule {
    /// Clears `name`'s backoff: its next order is due now (and a later
    /// failure backs off from `retry_min_secs` again). Returns where the
    /// name stands afterwards; `None` when the manager does not order it.
    pub fn retry(&self, name: &str) -> Option<NameStatus> {
        {
            let mut book = self.lock();
            let m = book.managed.get_mut(name)?;
            m.failures = 0;
            m.due = Instant::now();
        }
        self.status(name)
    }
}

/// The wall-clock time of `due`, in the past when it is overdue.
fn wall_time(due: Instant) -> SystemTime {
    let now = Instant::now();
    match due.checked_duration_since(now) {
        Some(ahead) => SystemTime::now() + ahead,
        None => SystemTime::now()
            .checked_sub(now.saturating_duration_since(due))
            .unwrap_or_else(SystemTime::now),
    }
}

/// Every managed name at a glance: counts by state and by days left, and
/// the names whose orders fail (at most `max_failing`, most failures first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleSummary {
    /// Names by state, in [`NameState::as_str`] terms.
    pub states: Vec<(&'static str, usize)>,
    /// Names with a certificate by days left: `expired`, `lt7d`, `lt14d`,
    /// `lt30d`, `ge30d`.
    pub expiry: Vec<(&'static str, usize)>,
    /// `(name, failures, last error)`.
    pub failing: Vec<(String, u32, String)>,
}

impl Schedule {
    /// Counts every name by state and expiry band. O(names): for operator
    /// queries on a blocking thread, never the request path.
    pub fn summary(&self, max_failing: usize) -> ScheduleSummary {
        let now = SystemTime::now();
        let book = self.lock();
        let mut states = [("ordering", 0), ("pending", 0), ("failed", 0), ("valid", 0)];
        let mut expiry = [("expired", 0), ("lt7d", 0), ("lt14d", 0), ("lt30d", 0), ("ge30d", 0)];
        let mut failing = Vec::new();
        for (name, m) in &book.managed {
            let state = match (book.in_flight.contains_key(name), &m.last_error, m.not_after) {
                (true, _, _) => 0,
                (false, Some(_), _) => 2,
                (false, None, Some(t)) if t > now => 3,
                (false, None, _) => 1,
            };
            states[state].1 += 1;
            if let Some(t) = m.not_after {
                let band = match t.duration_since(now).map(|d| d.as_secs() / 86_400) {
                    Err(_) => 0,
                    Ok(d) if d < 7 => 1,
                    Ok(d) if d < 14 => 2,
                    Ok(d) if d < 30 => 3,
                    Ok(_) => 4,
                };
                expiry[band].1 += 1;
            }
            if let Some(e) = &m.last_error {
                failing.push((name.clone(), m.failures, e.to_string()));
            }
        }
        failing.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        failing.truncate(max_failing);
        ScheduleSummary {
            states: states.to_vec(),
            expiry: expiry.to_vec(),
            failing,
        }
    }
}

enum Outcome {
    Issued {
        not_after: SystemTime,
        due: Instant,
    },
    /// Fleet mode: another replica's certificate, newer than this one's,
    /// was installed; no order was sent.
    Adopted {
        not_after: SystemTime,
        due: Instant,
    },
    /// The CA's renewal window starts later: try again then.
    NotYet(Instant),
    /// Fleet mode: the fleet's order budget is spent until then.
    Queued(Instant),
    Failed(String),
    /// Single node: a first order the CA refused or never finished
    /// validating, so nothing was issued and the registered domain's
    /// budget gets its share back.
    Unissued(String),
}

/// Outcome of one order task.
struct Done {
    name: String,
    order: u64,
    renewal: bool,
    outcome: Outcome,
}

/// The ACME accounts, one per CA directory URL, each opened once and
/// shared by the order tasks; a changed `directory_url`, or a fallback to
/// the next CA, opens (or registers) that CA's own account.
#[derive(Default)]
struct AccountSlot(Mutex<HashMap<String, Account>>);

impl AccountSlot {
    async fn get(&self, acme: &Acme, state_dir: &Path) -> Result<Account, OrderError> {
        let mut slot = self.0.lock().await;
        if let Some(a) = slot.get(&acme.directory_url) {
            return Ok(a.clone());
        }
        let account = tokio::time::timeout(ACCOUNT_TIMEOUT, order::account(acme, state_dir))
            .await
            .map_err(|_| OrderError::State("the CA did not answer in time (account)".into()))??;
        slot.insert(acme.directory_url.clone(), account.clone());
        Ok(account)
    }

    /// Forgets the account if it is still the one that failed (a sibling
    /// task may already have registered a new one).
    async fn reset(&self, failed: &str, state_dir: &Path) -> bool {
        let mut slot = self.0.lock().await;
        let Some(dir) = slot.iter().find(|(_, a)| a.id() == failed).map(|(d, _)| d.clone()) else {
            return false;
        };
        let _ = tokio::fs::remove_file(order::account_path(state_dir, &dir)).await;
        slot.remove(&dir);
        true
    }
}

/// Keeps certificates current; a pingora background service.
pub struct CertManager {
    registry: Arc<Registry>,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
    account: Arc<AccountSlot>,
    schedule: Arc<Schedule>,
    /// Where certificate events go (`certificate.issued`, `.renewed`,
    /// `.failed`), and which names moved away (not renewed).
    lifecycle: Option<Arc<crate::domains::verifier::Lifecycle>>,
    /// Fleet mode: orders, challenges and certificates shared through Redis.
    shared: Option<Arc<SharedAcme>>,
}

impl CertManager {
    /// Records each order's outcome in the event log, and stops ordering
    /// for names that moved away.
    pub fn with_lifecycle(mut self, lifecycle: Arc<crate::domains::verifier::Lifecycle>) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }

    /// Shares orders, challenges and certificates with the other replicas
    /// of the same Redis.
    pub fn with_fleet(mut self, shared: Arc<SharedAcme>) -> Self {
        self.shared = Some(shared);
        self
    }

    fn event(&self, kind: &str, name: &str, detail: Option<&str>) {
        let Some(events) = self.lifecycle.as_ref().map(|l| &l.events) else {
            return;
        };
        let host = name.strip_prefix("*.").unwrap_or(name);
        let snap = self.registry.snapshot();
        let tenant = snap
            .table
            .lookup(host)
            .and_then(|m| snap.tenant(m.tenant))
            .map(|t| t.id.to_string());
        events.emit(kind, tenant.as_deref(), Some(name), detail);
    }

    pub fn new(
        registry: Arc<Registry>,
        store: Arc<CertStore>,
        challenges: Arc<Challenges>,
        metrics: Arc<Metrics>,
    ) -> CertManager {
        CertManager {
            registry,
            store,
            challenges,
            metrics,
            account: Arc::new(AccountSlot::default()),
            schedule: Arc::new(Schedule::default()),
            lifecycle: None,
            shared: None,
        }
    }

    /// The context of one order or ARI poll, at the CA of `acme`.
    fn ctx(&self, acme: Acme, bases: Vec<String>, state_dir: PathBuf) -> OrderCtx {
        OrderCtx {
            acme,
            bases,
            state_dir,
            account: self.account.clone(),
            store: self.store.clone(),
            challenges: self.challenges.clone(),
            shared: self.shared.clone(),
        }
    }

    /// The managed names and their state, for read-only queries.
    pub fn schedule(&self) -> Arc<Schedule> {
        self.schedule.clone()
    }

    /// Loads the operator certificate folder (blocking; used at start-up).
    pub fn load_provided_now(&self) {
        let snap = self.registry.snapshot();
        if let Some(tls) = &snap.config.tls {
            load_provided(&self.store, tls);
        }
    }

    /// The names that need a managed certificate from an ACME CA (sorted),
    /// and each tenant's configured names, as [`Wanted`] says.
    /// `before`: each tenant's names at the last sync, as a hash.
    fn wanted(&self, snap: &Snapshot, before: &HashMap<Arc<str>, u64>) -> Wanted {
        let dns01 = snap.config.tls.as_ref().and_then(|t| t.dns01());
        let base_wildcard = dns01.is_some_and(|d| d.wildcard_base_domains);
        let wildcards = dns01.is_some_and(|d| d.wildcard_domains);
        let mut any_subdomain = false;
        let tenants = &snap.config.tenants;
        let mut by_tenant: HashMap<Arc<str>, u64> = HashMap::with_capacity(tenants.len() + 1);
        let mut all: Vec<String> = Vec::with_capacity(tenants.iter().map(|t| t.domains.len()).sum());
        let mut changed = Vec::new();
        let mut note = |id: Arc<str>, mut names: Vec<String>, all: &mut Vec<String>| {
            names.sort_unstable();
            let hash = names_hash(&names);
            if before.get(&id).is_some_and(|old| *old != hash) {
                changed.extend(names.iter().cloned());
            }
            by_tenant.insert(id, hash);
            all.append(&mut names);
        };
        for (i, t) in tenants.iter().enumerate() {
            let mut names: Vec<String> = t
                .domains
                .iter()
                .filter_map(|d| match d {
                    DomainName::Exact(n) => Some(n.clone()),
                    DomainName::Wildcard(_) if wildcards => Some(d.to_string()),
                    DomainName::Wildcard(_) => None,
                })
                .collect();
            if let Some(label) = &t.subdomain {
                any_subdomain = true;
                if !base_wildcard {
                    names.extend(snap.config.gateway.base_domains.iter().map(|b| format!("{label}.{b}")));
                }
            }
            // The snapshot's tenants are the config's, in the same order:
            // their ids are shared, not copied.
            let id = match snap.tenants.get(i).filter(|s| *s.id == *t.id) {
                Some(s) => s.id.clone(),
                None => Arc::from(t.id.as_str()),
            };
            note(id, names, &mut all);
        }
        // Shared hosts and header hosts belong to the platform, not a tenant.
        let mut platform: Vec<String> = snap
            .config
            .shared_hosts
            .iter()
            .map(|s| s.host.clone())
            .chain(snap.config.identity.header_hosts.iter().cloned())
            .collect();
        // One `*.<base>` + `<base>` certificate serves every platform host.
        if base_wildcard && any_subdomain {
            platform.extend(snap.config.gateway.base_domains.iter().map(|b| format!("*.{b}")));
        }
        note(Arc::from(""), platform, &mut all);
        all.sort_unstable();
        all.dedup();
        // Split without copying: the names left out stay known as
        // configured, so that their stored certificates are kept.
        let mut unwanted = Vec::new();
        let mut names = Vec::with_capacity(all.len());
        for n in all {
            let left_out = self.store.provided_covers(&n) || self.lifecycle.as_ref().is_some_and(|l| l.is_moved(&n));
            if left_out {
                unwanted.push(n);
            } else {
                names.push(n);
            }
        }
        Wanted {
            names,
            unwanted,
            by_tenant,
            changed,
        }
    }

    /// Brings `managed` in line with the config: new names get scheduled
    /// from their stored certificate (if any), removed names are dropped and
    /// their stored certificate and private key deleted, and the names of a
    /// tenant whose list changed lose their backoff.
    async fn sync(&self, snap: &Snapshot) {
        // Only this task writes `tenant_names`: take it out while the
        // config's names are gathered, without holding the lock.
        let before = std::mem::take(&mut self.schedule.lock().tenant_names);
        let Wanted {
            names: mut wanted,
            unwanted,
            by_tenant,
            changed,
        } = self.wanted(snap, &before);
        drop(before);
        let known = |list: &[String], name: &str| list.binary_search_by(|n| n.as_str().cmp(name)).is_ok();
        let (fresh, gone): (Vec<bool>, Vec<String>) = {
            let mut book = self.schedule.lock();
            let book = &mut *book;
            let mut gone = Vec::new();
            book.managed.retain(|name, _| {
                let kept = known(&wanted, name);
                if !kept && !known(&unwanted, name) {
                    gone.push(name.clone());
                }
                kept
            });
            // A tenant whose names changed (a PUT, an edited file): its
            // failed names are tried again now rather than after backoff.
            let now = Instant::now();
            for n in &changed {
                if let Some(m) = book.managed.get_mut(n).filter(|m| m.failures > 0) {
                    m.failures = 0;
                    m.due = now;
                }
            }
            book.tenant_names = by_tenant;
            let fresh = wanted.iter().map(|n| !book.managed.contains_key(n)).collect();
            (fresh, gone)
        };
        drop((unwanted, changed));
        // Fleet mode: say which names this replica serves before dropping
        // any, so that a name another replica still serves keeps its copy.
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.want(&wanted).await {
                tracing::warn!(error = %e, "fleet ACME: the names this replica serves were not recorded");
            }
        }
        if !gone.is_empty() {
            self.forget(gone).await;
        }
        // The names not managed yet, moved out of `wanted` (not copied).
        let mut is_fresh = fresh.into_iter();
        wanted.retain(|_| is_fresh.next().unwrap_or(false));
        let fresh = wanted;
        if fresh.is_empty() {
            return;
        }
        // Only each leaf's dates: the chain and key load lazily at the first
        // handshake, so 100,000 stored certificates cost no key material here.
        let store = self.store.clone();
        let (fresh, stored) = tokio::task::spawn_blocking(move || {
            let stored: Vec<_> = fresh.iter().map(|name| store.stored_validity(name)).collect();
            (fresh, stored)
        })
        .await
        .unwrap_or_default();
        let min_poll = match snap.config.tls.as_ref().map(|t| &t.issuer) {
            Some(Issuer::Acme(a)) => a.ari_min_poll,
            _ => Duration::from_secs(60),
        };
        let mut book = self.schedule.lock();
        // First ARI polls spread so that at most about ARI_FIRST_POLLS names
        // are asked per `ari_min_poll_secs` (100,000 names at the default:
        // over 100 min), never a burst at start-up.
        let first_poll = min_poll
            .saturating_mul(
                u32::try_from(book.managed.len() / ARI_FIRST_POLLS)
                    .unwrap_or(u32::MAX)
                    .max(1),
            )
            .min(ARI_MAX_POLL);
        // Room for all at once: growing the table step by step would hold
        // the old and the new table together at each step.
        book.managed.reserve(fresh.len());
        for (name, validity) in fresh.into_iter().zip(stored) {
            let (due, not_after) = match validity {
                Some((not_before, not_after)) => (
                    instant_at(fallback_renewal(not_before, not_after, unit_random(&name))),
                    Some(not_after),
                ),
                None => (Instant::now(), None),
            };
            let m = Managed::new(&name, due, not_after, first_poll);
            book.managed.insert(name, m);
        }
    }

    /// Deletes the stored certificates and private keys of names that left
    /// the config, and stops serving them.
    async fn forget(&self, names: Vec<String>) {
        if let Some(shared) = &self.shared {
            for name in &names {
                match shared.remove(name).await {
                    Ok(true) => {
                        tracing::info!(name = %name, "no replica serves the name any more: its certificate was deleted from the fleet store")
                    }
                    Ok(false) => {
                        tracing::info!(name = %name, "the name left this replica's config; other replicas still serve it, so the fleet's copy stays")
                    }
                    Err(e) => {
                        tracing::warn!(name = %name, error = %e, "the fleet's copy of a removed name was not deleted")
                    }
                }
            }
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for name in &names {
                match store.remove_managed(name) {
                    Ok(true) => {
                        tracing::info!(name = %name, "name left the config: its certificate and key were deleted")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(name = %name, error = %e, "could not delete the key of a removed name"),
                }
            }
        })
        .await;
    }

    fn publish(&self) {
        let now = SystemTime::now();
        let (mut valid, mut expiring, mut failed) = (0, 0, 0);
        for m in self.schedule.lock().managed.values() {
            match m.not_after {
                _ if m.last_error.is_some() => failed += 1,
                Some(t) if t > now + EXPIRING => valid += 1,
                Some(t) if t > now => expiring += 1,
                _ => {}
            }
        }
        self.metrics.certificates.with_label_values(&["valid"]).set(valid);
        self.metrics.certificates.with_label_values(&["expiring"]).set(expiring);
        self.metrics.certificates.with_label_values(&["failed"]).set(failed);
    }
}

/// What the config asks of the manager, from [`CertManager::wanted`].
struct Wanted {
    /// The names that need a managed certificate from an ACME CA, sorted.
    names: Vec<String>,
    /// Configured names left to an operator certificate or moved away,
    /// sorted: not ordered, but their stored certificates are kept.
    unwanted: Vec<String>,
    /// A hash of each tenant's names (sorted), by tenant id; the platform's
    /// names (shared hosts, header hosts) under `""`.
    by_tenant: HashMap<Arc<str>, u64>,
    /// The names of the tenants whose list differs from the last sync.
    changed: Vec<String>,
}

/// A hash of a tenant's sorted names (the same in every process).
fn names_hash(names: &[String]) -> u64 {
    use std::hash::Hash;
    let mut h = std::hash::DefaultHasher::new();
    names.hash(&mut h);
    h.finish()
}

/// The stored managed certificate for `name`, if usable. Blocking.
fn stored_certificate(store: &CertStore, name: &str) -> Option<Loaded> {
    store.stored(name)?.ok()
}

/// Renewal when the CA offers no ARI: at two thirds of the lifetime, minus
/// a random share of up to [`FALLBACK_JITTER`] of it, so that certificates
/// issued together (a fleet's, an import's) do not renew together.
fn two_thirds(name: &str, l: &Loaded) -> Instant {
    instant_at(fallback_renewal(l.not_before, l.not_after, unit_random(name)))
}

/// The fallback renewal time of a certificate valid from `not_before` to
/// `not_after`, for a random `unit` in [0, 1): between 57 % and 67 % of
/// the lifetime (90-day certificates: day 51 to day 60).
fn fallback_renewal(not_before: SystemTime, not_after: SystemTime, unit: f64) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let jitter = life.mul_f64(FALLBACK_JITTER * unit.clamp(0.0, 1.0));
    not_before + life.mul_f64(2.0 / 3.0) - jitter
}

/// A random time inside the CA's suggested window (RFC 9773 §4.2); now
/// when it has passed. Drawn once per window (see the ARI handling).
fn ari_time(name: &str, start: SystemTime, end: SystemTime) -> Instant {
    let span = end.duration_since(start).unwrap_or_default();
    instant_at(start + span.mul_f64(unit_random(name)))
}

/// What one ARI poll found.
enum Ari {
    /// The CA's window, and when to ask again (its `Retry-After`).
    Window {
        start: SystemTime,
        end: SystemTime,
        retry_after: Duration,
    },
    /// The CA offers no ARI.
    Unsupported,
    Failed(String),
}

/// Everything an order task needs.
#[derive(Clone)]
struct OrderCtx {
    acme: Acme,
    /// Base domains whose wildcard certificate also names the base.
    bases: Vec<String>,
    state_dir: PathBuf,
    account: Arc<AccountSlot>,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    shared: Option<Arc<SharedAcme>>,
}

/// Fleet mode: how soon a name whose order another replica holds is
/// looked at again (its certificate usually arrives by notification first).
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// The certificate the fleet stores for a name, as [`OrderCtx::adopt`]
/// found it: installed now, or already held (this replica's is as new).
enum FleetCopy {
    Installed(Loaded),
    Held(Loaded),
}

impl FleetCopy {
    fn loaded(&self) -> &Loaded {
        match self {
            FleetCopy::Installed(l) | FleetCopy::Held(l) => l,
        }
    }

    /// Before two thirds of its life: nobody renews it yet.
    fn not_due(&self, name: &str) -> bool {
        two_thirds(name, self.loaded()) > Instant::now()
    }

    /// The schedule entry for a name whose fleet copy is not due.
    fn outcome(&self, name: &str) -> Outcome {
        let l = self.loaded();
        Outcome::Adopted {
            not_after: l.not_after,
            due: two_thirds(name, l),
        }
    }
}

impl OrderCtx {
    /// Fleet mode: one name under the fleet's order lease. A newer
    /// certificate another replica stored is used instead of ordering; a
    /// name another replica is ordering is looked at again shortly.
    async fn run_shared(&self, shared: &Arc<SharedAcme>, name: &str, renewal: bool) -> Outcome {
        // While the fleet's copy is not due, nobody orders: a first order
        // that another replica finished, a renewal another replica made.
        // The copy this replica renews itself, before two thirds of its
        // life, is renewed only inside an ARI window the CA opened.
        let mut ari_asked = false;
        match self.adopt(shared, name).await {
            Ok(Some(copy)) if copy.not_due(name) => {
                if !renewal || matches!(copy, FleetCopy::Installed(_)) {
                    return copy.outcome(name);
                }
                match self.poll_ari(name).await {
                    Ari::Window { start, end, .. } if start > SystemTime::now() => {
                        return Outcome::NotYet(ari_time(name, start, end))
                    }
                    Ari::Window { .. } => ari_asked = true,
                    Ari::Unsupported | Ari::Failed(_) => return copy.outcome(name),
                }
            }
            Ok(_) => {}
            Err(e) => return Outcome::Failed(e),
        }
        if renewal && !ari_asked {
            if let Some(at) = self.ari_later(name).await {
                return Outcome::NotYet(at);
            }
        }
        let lease = match shared.acquire(name).await {
            Ok(Some(l)) => l,
            Ok(None) => return Outcome::NotYet(Instant::now() + BUSY_RETRY),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        // Looked at again under the lease: the replica that held it before
        // may have stored a certificate since the first look.
        match self.adopt(shared, name).await {
            Ok(Some(copy @ FleetCopy::Installed(_))) if copy.not_due(name) => {
                shared.release(&lease).await;
                return copy.outcome(name);
            }
            Ok(Some(copy @ FleetCopy::Held(_))) if !renewal && copy.not_due(name) => {
                shared.release(&lease).await;
                return copy.outcome(name);
            }
            Ok(_) => {}
            Err(e) => {
                shared.release(&lease).await;
                return Outcome::Failed(e);
            }
        }
        let keeper = {
            let (shared, lease) = (shared.clone(), lease.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(shared.lease / 3);
                every.tick().await;
                loop {
                    every.tick().await;
                    if !shared.renew(&lease).await {
                        tracing::warn!(name = %lease.name, "order lease lost; another replica may take the order over");
                        return;
                    }
                }
            })
        };
        // A first order spends from the budgets the fleet shares.
        if !renewal {
            let acme = &self.acme;
            let spent = shared
                .spend_budget(
                    &lease,
                    &registered_domain(name),
                    &acme.directory_url,
                    (acme.budget_per_registered_domain, DOMAIN_WINDOW),
                    (acme.budget_per_account, ACCOUNT_WINDOW),
                )
                .await;
            match spent {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    shared.release(&lease).await;
                    return Outcome::Queued(Instant::now() + wait.min(FAR));
                }
                Err(e) => {
                    shared.release(&lease).await;
                    return Outcome::Failed(e.to_string());
                }
            }
        }
        shared.count_order(name).await;
        let result = tokio::time::timeout(ORDER_TIMEOUT, self.issue(name, Some(&lease))).await;
        keeper.abort();
        match result {
            Ok(Ok(l)) => Outcome::Issued {
                not_after: l.not_after,
                due: two_thirds(name, &l),
            },
            Ok(Err(e)) => {
                // Nothing was issued: the registered domain's budget gets its
                // share back (an error after issue is a state error: kept).
                if !renewal && !matches!(e, OrderError::State(_)) {
                    shared.refund_domain_budget(&lease, &registered_domain(name)).await;
                }
                shared.release(&lease).await;
                Outcome::Failed(e.describe(&self.acme.directory_url))
            }
            Err(_) => {
                shared.release(&lease).await;
                Outcome::Failed(format!(
                    "the CA did not finish the order in {} s",
                    ORDER_TIMEOUT.as_secs()
                ))
            }
        }
    }

    /// Fleet mode: installs the certificate stored in Redis for `name` when
    /// it ends later than the one this replica has (written to disk first:
    /// the last-known-good copy). Returns the fleet's copy, installed or
    /// already held; `None` when the fleet stores none.
    async fn adopt(&self, shared: &SharedAcme, name: &str) -> Result<Option<FleetCopy>, String> {
        let Some(stored) = shared.fetch(name).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let loaded = Loaded::from_pem(stored.pem.as_bytes(), stored.pem.as_bytes())
            .map_err(|e| format!("the fleet's certificate of {name} is unusable: {e}"))?;
        let store = self.store.clone();
        let (n, pem) = (name.to_string(), stored.pem);
        let newer = loaded.not_after;
        let installed = tokio::task::spawn_blocking(move || {
            let current = store
                .cached(&n)
                .map(|e| e.loaded.not_after)
                .or_else(|| stored_certificate(&store, &n).map(|l| l.not_after));
            if current.is_some_and(|c| c >= newer) {
                return Ok(false);
            }
            write_private(&store.managed_path(&n), pem.as_bytes()).map_err(|e| e.to_string())?;
            Ok::<_, String>(true)
        })
        .await
        .map_err(|e| e.to_string())??;
        if !installed {
            return Ok(Some(FleetCopy::Held(loaded)));
        }
        self.store.install(name, loaded.clone()).map_err(|e| e.to_string())?;
        tracing::info!(name, fence = stored.fence, "certificate from the fleet installed");
        Ok(Some(FleetCopy::Installed(loaded)))
    }

    /// One name: for a renewal, ask the CA's ARI window first; then order,
    /// store and install, re-registering once if the CA forgot the account.
    async fn run(&self, name: &str, renewal: bool) -> Outcome {
        if let Some(shared) = &self.shared {
            return self.run_shared(shared, name, renewal).await;
        }
        if renewal {
            if let Some(at) = self.ari_later(name).await {
                return Outcome::NotYet(at);
            }
        }
        match tokio::time::timeout(ORDER_TIMEOUT, self.issue(name, None)).await {
            Ok(Ok(l)) => Outcome::Issued {
                not_after: l.not_after,
                due: two_thirds(name, &l),
            },
            Ok(Err(e)) if !renewal && !matches!(e, OrderError::State(_)) => {
                Outcome::Unissued(e.describe(&self.acme.directory_url))
            }
            Ok(Err(e)) => Outcome::Failed(e.describe(&self.acme.directory_url)),
            Err(_) => Outcome::Failed(format!(
                "the CA did not finish the order in {} s",
                ORDER_TIMEOUT.as_secs()
            )),
        }
    }

    /// The leaf of the certificate stored for `name` (read off the runtime).
    async fn current_leaf(&self, name: &str) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let store = self.store.clone();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || store.stored_leaf(&n))
            .await
            .ok()
            .flatten()
    }

    /// Asks the CA for the renewal window of `name`'s current certificate.
    async fn poll_ari(&self, name: &str) -> Ari {
        let Some(leaf) = self.current_leaf(name).await else {
            return Ari::Failed("no stored certificate".into());
        };
        let id = match CertificateIdentifier::try_from(&leaf) {
            Ok(id) => id,
            Err(e) => return Ari::Failed(format!("no ARI identifier: {e}")),
        };
        let account = match self.account.get(&self.acme, &self.state_dir).await {
            Ok(a) => a,
            Err(e) => return Ari::Failed(e.describe(&self.acme.directory_url)),
        };
        match tokio::time::timeout(ARI_TIMEOUT, account.renewal_info(&id)).await {
            Err(_) => Ari::Failed(format!("no ARI answer in {} s", ARI_TIMEOUT.as_secs())),
            Ok(Err(instant_acme::Error::Unsupported(_))) => Ari::Unsupported,
            Ok(Err(e)) => Ari::Failed(OrderError::Acme(e).describe(&self.acme.directory_url)),
            Ok(Ok((info, retry_after))) => Ari::Window {
                start: SystemTime::from(info.suggested_window.start),
                end: SystemTime::from(info.suggested_window.end),
                retry_after,
            },
        }
    }

    /// A time inside the CA's suggested renewal window (RFC 9773), when the
    /// CA offers ARI and the window has not started yet.
    async fn ari_later(&self, name: &str) -> Option<Instant> {
        let Ari::Window { start, end, .. } = self.poll_ari(name).await else {
            return None;
        };
        if start <= SystemTime::now() {
            return None;
        }
        Some(ari_time(name, start, end))
    }

    async fn issue(&self, name: &str, lease: Option<&Lease>) -> Result<Loaded, OrderError> {
        let mut names = vec![name.to_string()];
        if let Some(base) = name.strip_prefix("*.").filter(|b| self.bases.iter().any(|x| x == b)) {
            names.push(base.to_string());
        }
        let dns = self.acme.dns01.as_deref().map(Rfc2136::new).transpose()?;
        for attempt in 0..2 {
            let account = self.account.get(&self.acme, &self.state_dir).await?;
            let shared = self.shared.as_deref();
            let alpn = self.acme.tls_alpn.then_some(&*self.store);
            // A renewal names the certificate it replaces.
            let current = self.current_leaf(name).await;
            let replaces = current.as_ref();
            match order::order(&account, &names, &self.challenges, dns.as_ref(), alpn, shared, replaces).await {
                Ok((chain, key)) => {
                    if let (Some(shared), Some(lease)) = (shared, lease) {
                        match shared.store(lease, &chain, &key).await {
                            Ok(true) => {}
                            Ok(false) => {
                                return Err(OrderError::State(format!(
                                    "the order lease of {name} passed to another replica; its certificate is used"
                                )))
                            }
                            Err(e) => {
                                tracing::warn!(name, error = %e, "certificate not shared with the fleet; serving it here")
                            }
                        }
                    }
                    // Chain then key in one file: one atomic rename replaces both.
                    let pem = format!("{}\n{}", chain.trim_end(), key);
                    let loaded = Loaded::from_pem(pem.as_bytes(), pem.as_bytes())
                        .map_err(|e| OrderError::State(format!("CA returned an unusable certificate: {e}")))?;
                    let path = self.store.managed_path(name);
                    tokio::task::spawn_blocking(move || write_private(&path, pem.as_bytes()))
                        .await
                        .map_err(|e| OrderError::State(e.to_string()))?
                        .map_err(|e| OrderError::State(e.to_string()))?;
                    self.store
                        .install(name, loaded.clone())
                        .map_err(|e| OrderError::State(e.to_string()))?;
                    return Ok(loaded);
                }
                Err(e) if e.account_missing() && attempt == 0 => {
                    if self.account.reset(account.id(), &self.state_dir).await {
                        tracing::warn!(name, "ACME account unknown to the CA; registering again");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(OrderError::State("account could not be re-registered".into()))
    }
}

fn load_provided(store: &CertStore, tls: &Tls) {
    let (count, problems) = store.load_provided(&tls.certs_dir);
    for p in &problems {
        tracing::error!(file = %p.path.display(), error = %p.error, "operator certificate skipped");
    }
    tracing::info!(dir = %tls.certs_dir.display(), certificates = count, skipped = problems.len(), "operator certificates loaded");
}

/// A random number in [0, 1) (a fresh draw on every call: `RandomState`
/// keys differ per call).
fn unit_random(seed: &str) -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(seed.as_bytes());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The `Instant` for a wall-clock time (now if it is past).
fn instant_at(t: SystemTime) -> Instant {
    let ahead = t.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now().checked_add(ahead.min(FAR)).unwrap_or_else(Instant::now)
}

#[async_trait]
impl BackgroundService for CertManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut generations = self.registry.subscribe();
        let mut next_order = 0u64;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let (ari_tx, mut ari_rx) = mpsc::unbounded_channel::<(String, Ari)>();
        let mut tick = tokio::time::interval(TICK);
        let mut permits: Option<Arc<Semaphore>> = None;
        let mut stale = true;
        let mut last_sync = Instant::now();
        // Fleet mode: names whose certificate another replica stored.
        let (fleet_tx, mut fleet_rx) = mpsc::unbounded_channel::<String>();
        if let Some(shared) = &self.shared {
            tokio::spawn(
                shared
                    .clone()
                    .follow(self.challenges.clone(), self.store.clone(), fleet_tx),
            );
        } else {
            drop(fleet_tx);
        }
        loop {
            let snap = self.registry.snapshot();
            let acme = match snap.config.tls.as_ref().map(|t| &t.issuer) {
                Some(Issuer::Acme(a)) => Some(a.clone()),
                _ => None,
            };
            if stale || last_sync.elapsed() >= RESYNC {
                // Operator certificates first, then the names they leave.
                if let Some(tls) = snap.config.tls.clone() {
                    let store = self.store.clone();
                    let _ = tokio::task::spawn_blocking(move || load_provided(&store, &tls)).await;
                }
                if acme.is_some() {
                    self.sync(&snap).await;
                }
                stale = false;
                last_sync = Instant::now();
            }
            if let (Some(acme), Some(tls)) = (&acme, &snap.config.tls) {
                let p = permits
                    .get_or_insert_with(|| Arc::new(Semaphore::new(acme.max_concurrent_orders)))
                    .clone();
                let now = Instant::now();
                let due: Vec<(String, bool, u32, u64)> = {
                    let mut guard = self.schedule.lock();
                    let book = &mut *guard;
                    let mut due: Vec<(Instant, String, bool, u32)> = book
                        .managed
                        .iter()
                        .filter(|(n, m)| m.due <= now && !book.in_flight.contains_key(*n))
                        .map(|(n, m)| (m.due, n.clone(), m.not_after.is_some(), m.failures))
                        .collect();
                    // Oldest first, so a queue drains in order.
                    due.sort_unstable();
                    let mut go = Vec::with_capacity(due.len());
                    for (_, name, renewal, failures) in due {
                        // First orders spend the CA's budgets; renewals do not
                        // count against them (Let's Encrypt exempts them). In
                        // fleet mode the replica that takes the order spends
                        // from the budgets in Redis instead (`run_shared`).
                        if !renewal && self.shared.is_none() {
                            let account = acme.for_attempt(failures).directory_url;
                            if let Err(at) = book.budgets.spend(&name, &account, acme, now) {
                                if let Some(m) = book.managed.get_mut(&name) {
                                    m.due = at;
                                    m.queued = true;
                                }
                                continue;
                            }
                        }
                        if let Some(m) = book.managed.get_mut(&name) {
                            m.queued = false;
                        }
                        next_order += 1;
                        book.in_flight.insert(name.clone(), next_order);
                        go.push((name, renewal, failures, next_order));
                    }
                    go
                };
                for (name, renewal, failures, order) in due {
                    // After `fallback_after` failures in a row, the next CA.
                    let bases = if tls.base_wildcard() {
                        snap.config.gateway.base_domains.clone()
                    } else {
                        Vec::new()
                    };
                    let ctx = self.ctx(acme.for_attempt(failures), bases, tls.state_dir.clone());
                    let (p, tx) = (p.clone(), done_tx.clone());
                    let running = self.metrics.acme_orders_in_flight.clone();
                    let lifecycle = self.lifecycle.clone();
                    tokio::spawn(async move {
                        // A first order waits until DNS no longer says no
                        // (CAA, where the name points): a refused order
                        // burns the CA's rate limits.
                        // The platform's own wildcard is the operator's zone.
                        let platform = name
                            .strip_prefix("*.")
                            .is_some_and(|b| ctx.bases.iter().any(|x| x == b));
                        if let (false, false, Some(l)) = (renewal, platform, &lifecycle) {
                            if let Some(why) = l.refuses_order(&name).await {
                                let _ = tx.send(Done {
                                    name,
                                    order,
                                    renewal,
                                    outcome: Outcome::Failed(why),
                                });
                                return;
                            }
                        }
                        let _permit = p.acquire_owned().await;
                        running.inc();
                        let outcome = ctx.run(&name, renewal).await;
                        running.dec();
                        let _ = tx.send(Done {
                            name,
                            order,
                            renewal,
                            outcome,
                        });
                    });
                }
                // ARI polls that are due, on the schedule the CA asked for.
                let polls: Vec<String> = {
                    let mut guard = self.schedule.lock();
                    let book = &mut *guard;
                    let room = ARI_CONCURRENCY.saturating_sub(book.ari_polling.len());
                    let polls: Vec<String> = book
                        .managed
                        .iter()
                        .filter(|(n, m)| {
                            m.ari_next.is_some_and(|t| t <= now)
                                && !book.in_flight.contains_key(*n)
                                && !book.ari_polling.contains(*n)
                        })
                        .map(|(n, _)| n.clone())
                        .take(room)
                        .collect();
                    book.ari_polling.extend(polls.iter().cloned());
                    polls
                };
                for name in polls {
                    let ctx = self.ctx(acme.clone(), Vec::new(), tls.state_dir.clone());
                    let tx = ari_tx.clone();
                    tokio::spawn(async move {
                        let ari = ctx.poll_ari(&name).await;
                        let _ = tx.send((name, ari));
                    });
                }
                self.publish();
            }
            let retry = acme.as_ref().map(|a| (a.retry_min, a.retry_max));
            let min_poll = acme.as_ref().map_or(Duration::from_secs(60), |a| a.ari_min_poll);
            let state_dir = snap.config.tls.as_ref().map(|t| t.state_dir.clone());
            drop(snap);
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = generations.changed() => {
                    if changed.is_err() { return; }
                    stale = true;
                }
                Some(name) = fleet_rx.recv() => {
                    let managed = self.schedule.lock().managed.contains_key(&name);
                    if let (true, Some(acme), Some(state_dir), Some(shared)) = (managed, &acme, state_dir, &self.shared) {
                        let ctx = self.ctx(acme.clone(), Vec::new(), state_dir);
                        let (tx, shared) = (done_tx.clone(), shared.clone());
                        tokio::spawn(async move {
                            let outcome = match ctx.adopt(&shared, &name).await {
                                Ok(Some(FleetCopy::Installed(l))) => Outcome::Adopted { not_after: l.not_after, due: two_thirds(&name, &l) },
                                Ok(Some(FleetCopy::Held(_)) | None) => return,
                                Err(e) => {
                                    tracing::warn!(name = %name, error = %e, "certificate from the fleet not installed");
                                    return;
                                }
                            };
                            let _ = tx.send(Done { name, order: 0, renewal: false, outcome });
                        });
                    }
                }
                Some((name, ari)) = ari_rx.recv() => {
                    let mut guard = self.schedule.lock();
                    let book = &mut *guard;
                    book.ari_polling.remove(&name);
                    let ordering = book.in_flight.contains_key(&name);
                    let Some(m) = book.managed.get_mut(&name) else { continue };
                    let now = Instant::now();
                    match ari {
                        Ari::Window { start, end, retry_after } => {
                            m.ari_next = Some(now + retry_after.clamp(min_poll, ARI_MAX_POLL));
                            // A new window (the first, or one the CA moved:
                            // an incident, a revocation) sets the renewal
                            // time; a failed name keeps its backoff.
                            if m.window.as_deref() != Some(&(start, end)) {
                                m.window = Some(Box::new((start, end)));
                                if !ordering && m.failures == 0 && !m.queued {
                                    m.due = ari_time(&name, start, end);
                                    tracing::info!(name = %name, renew_in_secs = m.due.saturating_duration_since(now).as_secs(), "renewal set inside the CA's ARI window");
                                }
                            }
                        }
                        Ari::Unsupported => m.ari_next = Some(now + ARI_UNSUPPORTED_RECHECK),
                        Ari::Failed(e) => {
                            m.ari_next = Some(now + ARI_ERROR_RETRY.max(min_poll));
                            tracing::debug!(name = %name, error = %e, "ARI poll failed; renewal stays where it was");
                        }
                    }
                }
                Some(done) = done_rx.recv() => {
                    if !matches!(done.outcome, Outcome::NotYet(_) | Outcome::Queued(_) | Outcome::Adopted { .. }) {
                        self.metrics.acme_order(done.renewal, matches!(done.outcome, Outcome::Issued { .. }));
                    }
                    match &done.outcome {
                        Outcome::Issued { .. } => {
                            let kind = if done.renewal { "certificate.renewed" } else { "certificate.issued" };
                            self.event(kind, &done.name, None);
                        }
                        Outcome::Failed(e) | Outcome::Unissued(e) => {
                            self.event("certificate.failed", &done.name, Some(e.as_str()))
                        }
                        Outcome::NotYet(_) | Outcome::Queued(_) | Outcome::Adopted { .. } => {}
                    }
                    let mut book = self.schedule.lock();
                    // Handled whatever the issuer is now: the order ran.
                    if book.in_flight.get(&done.name) == Some(&done.order) {
                        book.in_flight.remove(&done.name);
                    }
                    if matches!(done.outcome, Outcome::Unissued(_)) {
                        book.budgets.refund_domain(&done.name);
                    }
                    let Some(m) = book.managed.get_mut(&done.name) else { continue };
                    match done.outcome {
                        Outcome::Issued { not_after, due } => {
                            tracing::info!(name = %done.name, renewal = done.renewal, "certificate issued");
                            *m = Managed::new(&done.name, due, Some(not_after), min_poll);
                        }
                        Outcome::Adopted { not_after, due } => {
                            *m = Managed::new(&done.name, due, Some(not_after), min_poll);
                        }
                        Outcome::NotYet(at) => m.due = at,
                        Outcome::Queued(at) => {
                            m.due = at;
                            m.queued = true;
                        }
                        Outcome::Failed(e) | Outcome::Unissued(e) => {
                            m.failures = m.failures.saturating_add(1);
                            m.last_error = Some(e.as_str().into());
                            let (min, max) = retry.unwrap_or((Duration::from_secs(60), Duration::from_secs(86_400)));
                            let backoff = min.saturating_mul(1 << m.failures.min(20).saturating_sub(1)).min(max);
                            m.due = Instant::now().checked_add(backoff.min(FAR)).unwrap_or_else(Instant::now);
                            tracing::warn!(name = %done.name, error = %e, retry_in_secs = backoff.as_secs(), "certificate order failed; any current certificate keeps serving");
                        }
                    }
                }
                _ = tick.tick() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule_with(name: &str, due: Instant, failures: u32) -> Schedule {
        let s = Schedule::default();
        s.lock().managed.insert(
            name.to_string(),
            Managed {
                failures,
                last_error: Some("refused".into()),
                ..Managed::new(name, due, None, Duration::from_secs(60))
            },
        );
        s
    }

    #[test]
    fn an_overdue_retry_shows_when_it_was_due_not_now() {
        let ago = Duration::from_secs(90);
        let Some(due) = Instant::now().checked_sub(ago) else {
            return; // a machine up for less than 90 s cannot express it
        };
        let s = schedule_with("a.example", due, 3);
        let next = s
            .status("a.example")
            .and_then(|st| st.next_attempt)
            .expect("next_attempt");
        let late = SystemTime::now().duration_since(next).expect("in the past");
        assert!(
            late >= Duration::from_secs(89) && late <= Duration::from_secs(91),
            "{late:?}"
        );
    }

    #[test]
    fn fallback_renewals_spread_over_a_tenth_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let life = Duration::from_secs(90 * 86_400);
        let end = start + life;
        let share = |t: SystemTime| t.duration_since(start).expect("after start").as_secs_f64() / life.as_secs_f64();
        // The bounds, exactly.
        assert!((share(fallback_renewal(start, end, 0.0)) - 2.0 / 3.0).abs() < 1e-6);
        assert!((share(fallback_renewal(start, end, 1.0)) - (2.0 / 3.0 - 0.1)).abs() < 1e-6);
        // 2,000 names issued at the same second: spread over the whole
        // band, every tenth of it used, none outside.
        let mut buckets = [0usize; 10];
        for i in 0..2000 {
            let name = format!("tenant-{i}.example");
            let s = share(fallback_renewal(start, end, unit_random(&name)));
            assert!((2.0 / 3.0 - 0.1 - 1e-9..=2.0 / 3.0 + 1e-9).contains(&s), "{name}: {s}");
            let b = (((2.0 / 3.0 - s) / 0.1) * 10.0).floor() as usize;
            buckets[b.min(9)] += 1;
        }
        assert!(buckets.iter().all(|&n| n >= 100), "uneven spread: {buckets:?}");
    }

    #[test]
    fn retry_makes_a_backed_off_name_due_now_and_resets_its_failures() {
        let s = schedule_with("a.example", Instant::now() + Duration::from_secs(86_400), 5);
        let st = s.retry("a.example").expect("managed");
        assert_eq!(st.failures, 0);
        let next = st.next_attempt.expect("next_attempt");
        let off = next.duration_since(SystemTime::now()).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(1), "{off:?}");
        assert!(s.retry("unknown.example").is_none());
    }
}
