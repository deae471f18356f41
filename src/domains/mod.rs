//! The custom-domain lifecycle: a name a tenant token adds is a *pending
//! claim* until its owner proves it, and only then joins the tenant's
//! domains (a registry write) and routes. Pending claims never route, never
//! get certificates and never block an active name.
//!
//! ```text
//! PUT (tenant token) ─▶ pending ──TXT/HTTP proof──▶ active (tenant's domains)
//!                          │ └─ another claimant proved it, expiry ─▶ failed
//!                          └─ re-checked with backoff (verifier.rs)
//! ```
//!
//! Claims live here, outside the registry snapshot, persisted as one JSON
//! file in `[domains] state_dir`; every change is also an event
//! (`events.rs`).

pub mod dns;
pub mod events;
pub mod fleet;
pub mod verifier;
pub mod webhooks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::domains::Domains;

/// Where an ownership proof is served over HTTP.
pub const HTTP_PROOF_PREFIX: &str = "/.well-known/tenantgate-challenge/";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimState {
    Pending,
    Failed,
}

/// One tenant's claim on one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub name: String,
    pub tenant: String,
    pub token: String,
    pub state: ClaimState,
    pub created: u64,
    #[serde(default)]
    pub last_check: Option<u64>,
    pub next_check: u64,
    #[serde(default)]
    pub attempts: u32,
    /// Why it failed, or what the last check found.
    #[serde(default)]
    pub detail: Option<String>,
}

/// Why a claim cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("tenant {tenant:?} already has {max} pending domains (max_pending_per_tenant)")]
    TooMany { tenant: String, max: usize },
    #[error("cannot save the domain claims: {0}")]
    Save(String),
    /// Fleet mode: Redis did not answer; nothing was changed.
    #[error("the domain store (Redis) is unreachable: {0}")]
    Unreachable(String),
    /// Fleet mode: this replica no longer runs the checks (another one took
    /// the checker lease); its result was dropped.
    #[error("this replica lost the domain checker lease; the result was dropped")]
    Fenced,
}

/// Every claim, by name. Small (bounded per tenant) and changed rarely, so
/// one lock and one file.
#[derive(Debug)]
pub struct Claims {
    by_name: Mutex<BTreeMap<String, Vec<Claim>>>,
    path: PathBuf,
}

/// A random token: 32 hex digits from the OS's generator.
fn token() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Never expected on Linux; a token from the clock is still unique
        // but guessable, so it is marked.
        let n = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        b.copy_from_slice(&n.to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Claims {
    /// The claims saved in `state_dir` (none when the file is missing or
    /// unreadable; an unreadable file is logged and kept aside).
    pub fn load(state_dir: &Path) -> Claims {
        let path = state_dir.join("domain-claims.json");
        let by_name = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Claim>>(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "domain claims unreadable; starting with none (file kept as .bad)");
                let _ = std::fs::rename(&path, path.with_extension("json.bad"));
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let mut map: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
        for c in by_name {
            map.entry(c.name.clone()).or_default().push(c);
        }
        Claims {
            by_name: Mutex::new(map),
            path,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Claim>>> {
        self.by_name.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes every claim (temp file, fsync, rename). Blocking.
    pub fn save(&self) -> Result<(), ClaimError> {
        let all: Vec<Claim> = self.lock().values().flatten().cloned().collect();
        let bytes = serde_json::to_vec_pretty(&all).map_err(|e| ClaimError::Save(e.to_string()))?;
        let save = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("json.tmp");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &self.path)
        };
        save().map_err(|e| ClaimError::Save(format!("{}: {e}", self.path.display())))
    }

    /// `tenant`'s claim on `name`: the pending one it has, or a new one.
    /// Returns the claim and whether it is new. Not saved.
    pub fn claim(&self, name: &str, tenant: &str, cfg: &Domains) -> Result<(Claim, bool), ClaimError> {
        let mut map = self.lock();
        if let Some(c) = map.get(name).and_then(|v| pending_of(v, tenant)) {
            return Ok((c.clone(), false));
        }
        check_bound(&map, tenant, cfg)?;
        Ok(claim_in(map.entry(name.to_string()).or_default(), name, tenant))
    }

    /// How many pending claims `tenant` has.
    pub fn pending_count(&self, tenant: &str) -> usize {
        let map = self.lock();
        count_pending(&map, tenant)
    }

    /// Replaces the claims on `name` (fleet mode: what the store holds).
    pub fn put(&self, name: &str, list: Vec<Claim>) {
        let mut map = self.lock();
        if list.is_empty() {
            map.remove(name);
        } else {
            map.insert(name.to_string(), list);
        }
    }

    /// Replaces every claim (fleet mode: what the store holds).
    pub fn replace(&self, all: BTreeMap<String, Vec<Claim>>) {
        *self.lock() = all;
    }

    /// Every claim by name, a copy.
    pub fn by_name(&self) -> BTreeMap<String, Vec<Claim>> {
        self.lock().clone()
    }

    /// Applies `f` to the claims on `name` (dropping the name when none are
    /// left).
    pub fn edit<R>(&self, name: &str, f: impl FnOnce(&mut Vec<Claim>) -> R) -> R {
        let mut map = self.lock();
        let list = map.entry(name.to_string()).or_default();
        let r = f(list);
        if list.is_empty() {
            map.remove(name);
        }
        r
    }

    /// The claims on `name`.
    pub fn on(&self, name: &str) -> Vec<Claim> {
        self.lock().get(name).cloned().unwrap_or_default()
    }

    /// Every claim of `tenant`.
    pub fn of(&self, tenant: &str) -> Vec<Claim> {
        self.lock()
            .values()
            .flatten()
            .filter(|c| c.tenant == tenant)
            .cloned()
            .collect()
    }

    /// Whether a pending claim on `name` has `token` (the HTTP proof).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.lock().get(name).is_some_and(|v| {
            v.iter()
                .any(|c| c.state == ClaimState::Pending && bool::from(c.token.as_bytes().ct_eq(token.as_bytes())))
        })
    }

    /// Removes `tenant`'s claim on `name`; whether there was one.
    pub fn withdraw(&self, name: &str, tenant: &str) -> bool {
        self.edit(name, |l| withdraw_in(l, tenant))
    }

    /// `name` went to `winner`: its claim is fulfilled (removed), and every
    /// other pending claim fails with `why`. Returns the failed claims.
    pub fn settle(&self, name: &str, winner: &str, why: &str) -> Vec<Claim> {
        self.edit(name, |l| settle_in(l, winner, why))
    }

    /// Marks one pending claim failed.
    pub fn fail(&self, name: &str, tenant: &str, why: &str) -> Option<Claim> {
        self.edit(name, |l| fail_in(l, tenant, why))
    }

    /// Records an unsuccessful check and schedules the next one.
    pub fn checked(&self, name: &str, tenant: &str, found: &str, cfg: &Domains) {
        self.edit(name, |l| checked_in(l, tenant, found, cfg, now()));
    }

    /// Pending claims whose next check is due at `now`, oldest first, and
    /// those past `ttl` (to expire).
    pub fn due(&self, now: u64, ttl: Duration) -> (Vec<Claim>, Vec<Claim>) {
        let map = self.lock();
        let pending = map.values().flatten().filter(|c| c.state == ClaimState::Pending);
        let (expired, live): (Vec<&Claim>, Vec<&Claim>) =
            pending.partition(|c| now >= c.created.saturating_add(ttl.as_secs()));
        let mut due: Vec<Claim> = live.into_iter().filter(|c| c.next_check <= now).cloned().collect();
        due.sort_by_key(|c| c.next_check);
        (due, expired.into_iter().cloned().collect())
    }

    /// Every pending claim.
    pub fn pending(&self) -> Vec<Claim> {
        self.lock()
            .values()
            .flatten()
            .filter(|c| c.state == ClaimState::Pending)
            .cloned()
            .collect()
    }

    /// Every claim, pending and failed.
    pub fn all(&self) -> Vec<Claim> {
        self.lock().values().flatten().cloned().collect()
    }

    /// Counts by state, for metrics.
    pub fn counts(&self) -> (usize, usize) {
        let map = self.lock();
        let pending = map
            .values()
            .flatten()
            .filter(|c| c.state == ClaimState::Pending)
            .count();
        let failed = map.values().flatten().filter(|c| c.state == ClaimState::Failed).count();
        (pending, failed)
    }
}

fn pending_of<'a>(list: &'a [Claim], tenant: &str) -> Option<&'a Claim> {
    list.iter()
        .find(|c| c.tenant == tenant && c.state == ClaimState::Pending)
}

fn count_pending(map: &BTreeMap<String, Vec<Claim>>, tenant: &str) -> usize {
    map.values()
        .flatten()
        .filter(|c| c.tenant == tenant && c.state == ClaimState::Pending)
        .count()
}

fn check_bound(map: &BTreeMap<String, Vec<Claim>>, tenant: &str, cfg: &Domains) -> Result<(), ClaimError> {
    if count_pending(map, tenant) >= cfg.max_pending_per_tenant {
        return Err(ClaimError::TooMany {
            tenant: tenant.to_string(),
            max: cfg.max_pending_per_tenant,
        });
    }
    Ok(())
}

/// The operations on the claims of one name, shared by the local map and
/// the fleet store (which applies them to what Redis holds).
///
/// `tenant`'s pending claim in `list`, or a new one (a failed claim of the
/// same tenant is replaced); and whether it is new.
pub fn claim_in(list: &mut Vec<Claim>, name: &str, tenant: &str) -> (Claim, bool) {
    if let Some(c) = pending_of(list, tenant) {
        return (c.clone(), false);
    }
    let now = now();
    let claim = Claim {
        name: name.to_string(),
        tenant: tenant.to_string(),
        token: token(),
        state: ClaimState::Pending,
        created: now,
        last_check: None,
        next_check: now,
        attempts: 0,
        detail: None,
    };
    list.retain(|c| c.tenant != tenant);
    list.push(claim.clone());
    (claim, true)
}

/// Removes `tenant`'s claim; whether there was one.
pub fn withdraw_in(list: &mut Vec<Claim>, tenant: &str) -> bool {
    let n = list.len();
    list.retain(|c| c.tenant != tenant);
    list.len() != n
}

/// `winner`'s claim is fulfilled (removed); every other pending claim fails.
pub fn settle_in(list: &mut Vec<Claim>, winner: &str, why: &str) -> Vec<Claim> {
    list.retain(|c| c.tenant != winner);
    let mut failed = Vec::new();
    for c in list.iter_mut().filter(|c| c.state == ClaimState::Pending) {
        c.state = ClaimState::Failed;
        c.detail = Some(why.to_string());
        failed.push(c.clone());
    }
    failed
}

/// Marks `tenant`'s pending claim failed.
pub fn fail_in(list: &mut [Claim], tenant: &str, why: &str) -> Option<Claim> {
    let c = list
        .iter_mut()
        .find(|c| c.tenant == tenant && c.state == ClaimState::Pending)?;
    c.state = ClaimState::Failed;
    c.detail = Some(why.to_string());
    Some(c.clone())
}

/// Records an unsuccessful check of `tenant`'s pending claim at `now` and
/// schedules the next one.
pub fn checked_in(list: &mut [Claim], tenant: &str, found: &str, cfg: &Domains, now: u64) {
    let Some(c) = list
        .iter_mut()
        .find(|c| c.tenant == tenant && c.state == ClaimState::Pending)
    else {
        return;
    };
    c.last_check = Some(now);
    c.next_check = now + cfg.recheck_after(c.attempts).as_secs().max(1);
    c.attempts = c.attempts.saturating_add(1);
    c.detail = Some(found.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Domains {
        Domains::default_in(Path::new("/nonexistent"))
    }

    #[test]
    fn a_tenant_has_one_pending_claim_per_name_and_others_may_claim_it_too() {
        let dir = tempfile::tempdir().expect("dir");
        let claims = Claims::load(dir.path());
        let (a, new) = claims.claim("app.b.example", "a", &cfg()).expect("a claims");
        assert!(new);
        let (again, new) = claims.claim("app.b.example", "a", &cfg()).expect("again");
        assert!(!new);
        assert_eq!(a.token, again.token);
        let (b, _) = claims.claim("app.b.example", "b", &cfg()).expect("b claims");
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 32);
        assert!(claims.has_token("app.b.example", &b.token));
        assert!(!claims.has_token("app.b.example", "nope"));
        let failed = claims.settle("app.b.example", "b", "proven by another tenant");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].tenant, "a");
        assert!(
            !claims.has_token("app.b.example", &a.token),
            "a failed claim proves nothing"
        );
        claims.save().expect("save");
        let back = Claims::load(dir.path());
        assert_eq!(back.on("app.b.example"), claims.on("app.b.example"));
    }

    #[test]
    fn pending_claims_are_bounded_per_tenant() {
        let dir = tempfile::tempdir().expect("dir");
        let claims = Claims::load(dir.path());
        let mut c = cfg();
        c.max_pending_per_tenant = 2;
        claims.claim("a.example", "t", &c).expect("1");
        claims.claim("b.example", "t", &c).expect("2");
        assert!(matches!(
            claims.claim("c.example", "t", &c),
            Err(ClaimError::TooMany { .. })
        ));
        claims
            .claim("c.example", "u", &c)
            .expect("another tenant is not counted");
    }

    #[test]
    fn claims_are_due_by_their_schedule_and_expire_after_the_ttl() {
        let dir = tempfile::tempdir().expect("dir");
        let claims = Claims::load(dir.path());
        let c = cfg();
        let (claim, _) = claims.claim("a.example", "t", &c).expect("claim");
        let ttl = Duration::from_secs(7 * 86_400);
        let (due, expired) = claims.due(claim.created, ttl);
        assert_eq!((due.len(), expired.len()), (1, 0), "a new claim is checked at once");
        claims.checked("a.example", "t", "no TXT record", &c);
        let (due, _) = claims.due(claim.created + 59, ttl);
        assert!(due.is_empty(), "not before recheck_min_secs");
        let (due, _) = claims.due(claim.created + 61, ttl);
        assert_eq!(due.len(), 1);
        let (due, expired) = claims.due(claim.created + ttl.as_secs(), ttl);
        assert_eq!((due.len(), expired.len()), (0, 1), "past the TTL it expires instead");
        assert_eq!(expired[0].detail.as_deref(), Some("no TXT record"));
    }

    #[test]
    fn rechecks_back_off_by_five_percent_up_to_the_maximum() {
        let c = cfg();
        assert_eq!(c.recheck_after(0), Duration::from_secs(60));
        assert!(c.recheck_after(10) > Duration::from_secs(97) && c.recheck_after(10) < Duration::from_secs(98));
        assert_eq!(c.recheck_after(500), Duration::from_secs(4 * 3600));
    }
}
