//! Checks pending claims: at once when asked (`POST
//! /v1/domains/{name}/verify`), else on a schedule that backs off
//! (`recheck_min_secs` × 1.05ⁿ, up to `recheck_max_secs`), until the proof
//! is found (the name joins the tenant's domains through the registry, the
//! one writer), another claimant wins, or the claim expires.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dns::Dns;
use super::events::Events;
use super::fleet::DomainStore;
use super::{Claim, ClaimError, Claims, HTTP_PROOF_PREFIX};
use crate::config::domains::Domains;
use crate::config::file::TenantSection;
use crate::config::TenantSpec;
use crate::registry::{Registry, Snapshot, TenantEdit, WriteError};
use crate::telemetry::DomainMetrics;

/// Pending claims checked per pass (the rest wait for the next second).
const BATCH: usize = 32;

/// What a check of one claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Proven: the name is now the tenant's and routes.
    Active,
    /// Not proven yet; what was found.
    Pending(String),
    /// Refused for good, and why.
    Failed(String),
}

impl Outcome {
    pub fn state(&self) -> &'static str {
        match self {
            Outcome::Active => "active",
            Outcome::Pending(_) => "pending",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// The lifecycle's moving parts, shared by the admin API, the policy (HTTP
/// proof) and the background checks.
pub struct Lifecycle {
    pub claims: Claims,
    pub events: Arc<Events>,
    dns: Option<Dns>,
    registry: Arc<Registry>,
    /// The gateway's plain HTTP port, where an HTTP proof is fetched.
    http_port: u16,
    metrics: Option<DomainMetrics>,
    /// Active names that stopped pointing at `targets`: since when (Unix
    /// seconds), and whether the grace ran out (`moved`).
    moved: Mutex<BTreeMap<String, (u64, bool)>>,
    /// When active names were last re-checked.
    last_reverify: Mutex<Option<tokio::time::Instant>>,
    /// Fleet mode: the shared claims, events and checker lease.
    store: Option<Arc<DomainStore>>,
}

#[derive(Debug, thiserror::Error)]
enum PromoteError {
    #[error("tenant {0:?} no longer exists")]
    NoTenant(String),
    #[error("tenant {0:?} is defined in the main config file; move it to tenants/{0}.toml")]
    MainFile(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Why a proven claim did not become active.
enum Promote {
    /// The shared registry did not answer: try again later.
    Unreachable(String),
    /// The write was refused: the claim fails.
    Refused(String),
}

impl Lifecycle {
    pub fn new(registry: Arc<Registry>, http_port: u16, metrics: Option<DomainMetrics>) -> Lifecycle {
        let snap = registry.snapshot();
        let cfg = &snap.config.domains;
        let dns = match Dns::new(cfg) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "no DNS resolver: domain ownership can be proven over HTTP only");
                None
            }
        };
        let claims = Claims::load(&cfg.state_dir);
        let events = Arc::new(Events::open(&cfg.state_dir));
        drop(snap);
        Lifecycle {
            claims,
            events,
            dns,
            registry,
            http_port,
            metrics,
            moved: Mutex::new(BTreeMap::new()),
            last_reverify: Mutex::new(None),
            store: None,
        }
    }

    /// Fleet mode: claims, moved states, events and webhook positions are
    /// shared through `store`, and only the replica holding the checker
    /// lease runs the scheduled work.
    pub fn with_store(mut self, store: DomainStore) -> Lifecycle {
        self.events.use_fleet();
        self.store = Some(Arc::new(store));
        self
    }

    /// The shared store, in fleet mode.
    pub fn store(&self) -> Option<&Arc<DomainStore>> {
        self.store.as_ref()
    }

    /// Whether this replica runs the scheduled checks, expiry, moved
    /// detection, registry events and webhooks (always, on a single node).
    pub fn runs_checks(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.is_leader())
    }

    /// Fleet mode with Redis unreachable: why (for the admin API).
    pub fn store_unreachable(&self) -> Option<String> {
        self.store.as_ref().and_then(|s| s.unreachable())
    }

    /// Publishes whether this replica runs the checks.
    pub(super) fn checker_gauge(&self) {
        if let Some(m) = &self.metrics {
            m.checker.set(i64::from(self.runs_checks()));
        }
    }

    /// Publishes whether the fleet store answers.
    pub(super) fn store_gauge(&self, up: bool) {
        if let Some(m) = &self.metrics {
            m.store_up.set(i64::from(up));
        }
    }

    /// Replaces the moved states (fleet mode: what the store holds).
    pub(super) fn replace_moved(&self, all: BTreeMap<String, (u64, bool)>) {
        if let Ok(mut m) = self.moved.lock() {
            *m = all;
        }
    }

    /// Applies one claim operation on `name`: to the shared store in fleet
    /// mode (then to this replica's copy), else to the local claims. The
    /// operation may run more than once (a lost race is retried on the
    /// fresh list). `fenced`: a write of the checker, refused once another
    /// replica holds the lease.
    async fn edit<R>(
        &self,
        name: &str,
        fenced: bool,
        mut f: impl FnMut(&mut Vec<Claim>) -> R,
    ) -> Result<R, ClaimError> {
        match &self.store {
            None => Ok(self.claims.edit(name, f)),
            Some(store) => {
                let (r, list) = store.update(name, fenced, &mut f).await?;
                self.claims.put(name, list);
                Ok(r)
            }
        }
    }

    /// `tenant`'s claim on `name`: its pending one, or a new one; and
    /// whether it is new.
    pub async fn claim(&self, name: &str, tenant: &str, cfg: &Domains) -> Result<(Claim, bool), ClaimError> {
        if self.store.is_none() {
            return self.claims.claim(name, tenant, cfg);
        }
        let has = self
            .claims
            .on(name)
            .iter()
            .any(|c| c.tenant == tenant && c.state == super::ClaimState::Pending);
        if !has && self.claims.pending_count(tenant) >= cfg.max_pending_per_tenant {
            return Err(ClaimError::TooMany {
                tenant: tenant.to_string(),
                max: cfg.max_pending_per_tenant,
            });
        }
        self.edit(name, false, |l| super::claim_in(l, name, tenant)).await
    }

    /// Withdraws `tenant`'s claim on `name`; whether there was one.
    pub async fn withdraw(&self, name: &str, tenant: &str, fenced: bool) -> Result<bool, ClaimError> {
        self.edit(name, fenced, |l| super::withdraw_in(l, tenant)).await
    }

    async fn settle(&self, name: &str, winner: &str, why: &str, fenced: bool) -> Result<Vec<Claim>, ClaimError> {
        self.edit(name, fenced, |l| super::settle_in(l, winner, why)).await
    }

    async fn fail(&self, name: &str, tenant: &str, why: &str, fenced: bool) -> Result<Option<Claim>, ClaimError> {
        self.edit(name, fenced, |l| super::fail_in(l, tenant, why)).await
    }

    async fn checked(
        &self,
        name: &str,
        tenant: &str,
        found: &str,
        cfg: &Domains,
        fenced: bool,
    ) -> Result<(), ClaimError> {
        let now = super::now();
        self.edit(name, fenced, |l| super::checked_in(l, tenant, found, cfg, now))
            .await
    }

    /// Records a moved state: shared in fleet mode (the checker only).
    async fn record_moved(&self, name: &str, state: Option<(u64, bool)>) -> Result<(), ClaimError> {
        if let Some(store) = &self.store {
            store.set_moved(name, state).await?;
        }
        if let Ok(mut m) = self.moved.lock() {
            match state {
                Some(s) => m.insert(name.to_string(), s),
                None => m.remove(name),
            };
        }
        Ok(())
    }

    /// Whether `name` is `moved`: it stopped pointing here for longer than
    /// `moved_grace_days` (its certificate is no longer renewed).
    pub fn is_moved(&self, name: &str) -> bool {
        self.moved
            .lock()
            .map(|m| m.get(name).is_some_and(|(_, moved)| *moved))
            .unwrap_or(false)
    }

    /// Re-checks that active custom names still point at `targets`
    /// (every `reverify_secs`; only when `targets` is set). A name that has
    /// not for `moved_grace_days` becomes `moved`: an event, no more
    /// renewals, and with `remove_moved` it leaves its tenant.
    async fn reverify(self: &Arc<Self>, cfg: &Domains) {
        let Some(dns) = &self.dns else { return };
        if cfg.targets.is_empty() {
            return;
        }
        {
            let Ok(mut last) = self.last_reverify.lock() else {
                return;
            };
            if last.is_some_and(|t| t.elapsed() < cfg.reverify) {
                return;
            }
            *last = Some(tokio::time::Instant::now());
        }
        let snap = self.registry.snapshot();
        let names: Vec<(String, String)> = snap
            .config
            .tenants
            .iter()
            .flat_map(|t| {
                t.domains.iter().filter_map(move |d| match d {
                    crate::config::DomainName::Exact(n) => Some((t.id.clone(), n.clone())),
                    crate::config::DomainName::Wildcard(_) => None,
                })
            })
            .collect();
        drop(snap);
        let now = super::now();
        let mut remove = Vec::new();
        for (tenant, name) in names {
            if !self.runs_checks() {
                return;
            }
            let points = match dns.points_to(cfg, &name).await {
                Some(p) => p,
                None => continue, // DNS did not answer: no verdict
            };
            let current = self.moved.lock().ok().and_then(|m| m.get(&name).copied());
            if points {
                if let Some((_, was)) = current {
                    if let Err(e) = self.record_moved(&name, None).await {
                        tracing::warn!(domain = %name, error = %e, "moved state not recorded");
                        return;
                    }
                    if was {
                        self.events.emit(
                            "domain.active",
                            Some(&tenant),
                            Some(&name),
                            Some("points at the platform again"),
                        );
                    }
                }
                continue;
            }
            let (since, was_moved) = current.unwrap_or((now, false));
            let moved = !was_moved && now.saturating_sub(since) >= cfg.moved_grace.as_secs();
            if current.is_none() || moved {
                if let Err(e) = self.record_moved(&name, Some((since, was_moved || moved))).await {
                    tracing::warn!(domain = %name, error = %e, "moved state not recorded");
                    return;
                }
            }
            if moved {
                let why = format!("no longer points at {}", cfg.targets.join(", "));
                self.events.emit("domain.moved", Some(&tenant), Some(&name), Some(&why));
                tracing::warn!(tenant = %tenant, domain = %name, "domain moved away; its certificate is no longer renewed");
                if cfg.remove_moved {
                    remove.push((tenant, name));
                }
            }
        }
        for (tenant, name) in remove {
            if let Err(e) = self.remove(&tenant, &name).await {
                tracing::error!(tenant = %tenant, domain = %name, error = %e, "moved domain not removed");
            }
        }
    }

    /// Takes `name` out of `tenant`'s domains (a registry write).
    async fn remove(&self, tenant: &str, name: &str) -> Result<(), String> {
        let registry = self.registry.clone();
        let (id, name) = (tenant.to_string(), name.to_string());
        let res = tokio::task::spawn_blocking(move || {
            registry.write::<PromoteError>(false, &format!("domain-verifier (tenant {id}, moved)"), |texts, _| {
                let text = texts
                    .tenants
                    .get(&id)
                    .ok_or_else(|| PromoteError::MainFile(id.clone()))?;
                let mut t: TenantSection = toml::from_str(text).map_err(|_| PromoteError::NoTenant(id.clone()))?;
                t.domains.retain(|d| *d != name);
                Ok(crate::registry::Rendered::of(
                    texts,
                    vec![TenantEdit::Put(Box::new(t))],
                )?)
            })
        })
        .await;
        match res {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn config(&self) -> Domains {
        self.registry.snapshot().config.domains.clone()
    }

    /// The DNS diagnosis of `name` (`GET /v1/domains/{name}/check`).
    pub async fn diagnose(&self, name: &str, token: Option<&str>) -> Vec<super::dns::Check> {
        let cfg = self.config();
        match &self.dns {
            Some(dns) => dns.diagnose(&cfg, name, token).await,
            None => vec![super::dns::Check {
                check: "dns",
                ok: false,
                found: "no DNS resolver could be set up".into(),
                fix: "set [domains] nameservers, or fix /etc/resolv.conf, and restart".into(),
            }],
        }
    }

    /// Why a certificate must not be ordered for `name` yet, when DNS says
    /// so plainly: a CAA record that excludes every `caa_issuers`, or (with
    /// `targets`) the name pointing elsewhere. A DNS server that does not
    /// answer is no verdict: the order goes ahead.
    pub async fn refuses_order(&self, name: &str) -> Option<String> {
        let cfg = self.config();
        let dns = self.dns.as_ref()?;
        let checks = dns.diagnose(&cfg, name, None).await;
        let refusal = checks.iter().find(|c| !c.ok && !c.found.starts_with("DNS lookup of"))?;
        Some(format!(
            "not ordered: {} ({}); fix: {}",
            refusal.check, refusal.found, refusal.fix
        ))
    }

    /// Saves the claims off the async threads.
    pub async fn save(self: &Arc<Self>) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.claims.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "domain claims not saved"),
            Err(e) => tracing::error!(error = %e, "domain claims not saved"),
        }
    }

    /// Checks one pending claim now, and acts on the result. `fenced`: a
    /// scheduled check of the checker, whose writes are refused once
    /// another replica holds the lease.
    pub async fn check(self: &Arc<Self>, claim: &Claim, fenced: bool) -> Outcome {
        let cfg = self.config();
        if let Some(m) = &self.metrics {
            m.checks.inc();
        }
        let mut found = Vec::new();
        let mut proven = false;
        if cfg.txt {
            match &self.dns {
                Some(dns) => match dns.proves(&cfg, &claim.name, &claim.token).await {
                    Ok((true, _)) => proven = true,
                    Ok((false, txt)) if txt.is_empty() => {
                        found.push(format!("no TXT record at {}.{}", cfg.verification_prefix, claim.name))
                    }
                    Ok((false, txt)) => found.push(format!(
                        "TXT at {}.{} holds {} but not this claim's token",
                        cfg.verification_prefix,
                        claim.name,
                        txt.join(", ")
                    )),
                    Err(e) => found.push(e.to_string()),
                },
                None => found.push("no DNS resolver".into()),
            }
        }
        if !proven && cfg.http {
            match self.http_proof(&claim.name, &claim.token, cfg.dns_timeout).await {
                Ok(()) => proven = true,
                Err(e) => found.push(format!("HTTP proof: {e}")),
            }
        }
        if !proven {
            let found = found.join("; ");
            if let Err(e) = self.checked(&claim.name, &claim.tenant, &found, &cfg, fenced).await {
                tracing::warn!(domain = %claim.name, tenant = %claim.tenant, error = %e, "check result not recorded");
            }
            return Outcome::Pending(found);
        }
        // The lease holder re-checks before acting, so a replica that lost
        // it in the middle of a check does not act on its result.
        if fenced && !self.runs_checks() {
            return Outcome::Pending("this replica no longer runs the checks; the next one does".into());
        }
        self.events
            .emit("domain.verified", Some(&claim.tenant), Some(&claim.name), None);
        match self.promote(claim).await {
            Ok(()) => {
                let failed = self
                    .settle(&claim.name, &claim.tenant, "another tenant proved ownership of this name", false)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(domain = %claim.name, error = %e, "claims not settled; the registry change settles them");
                        Vec::new()
                    });
                for f in failed {
                    self.events
                        .emit("domain.failed", Some(&f.tenant), Some(&f.name), f.detail.as_deref());
                }
                tracing::info!(tenant = %claim.tenant, domain = %claim.name, "domain ownership proven; the domain is active");
                Outcome::Active
            }
            Err(Promote::Unreachable(why)) => {
                // Not the claim's fault: it stays pending and is checked again.
                tracing::warn!(domain = %claim.name, error = %why, "proven domain not added: the registry store is unreachable");
                Outcome::Pending(format!("proven, but not added yet: {why}"))
            }
            Err(Promote::Refused(why)) => {
                if let Err(e) = self.fail(&claim.name, &claim.tenant, &why, false).await {
                    tracing::warn!(domain = %claim.name, error = %e, "failed claim not recorded");
                }
                self.events
                    .emit("domain.failed", Some(&claim.tenant), Some(&claim.name), Some(&why));
                Outcome::Failed(why)
            }
        }
    }

    /// Adds the proven name to the tenant's domains (a registry write,
    /// validated like any other: a name another tenant has active fails).
    async fn promote(&self, claim: &Claim) -> Result<(), Promote> {
        let registry = self.registry.clone();
        let (id, name) = (claim.tenant.clone(), claim.name.clone());
        let who = format!("domain-verifier (tenant {id})");
        let res = tokio::task::spawn_blocking(move || {
            registry.write::<PromoteError>(
                false,
                &who,
                |texts, snap| -> Result<crate::registry::Rendered, PromoteError> {
                    let Some(text) = texts.tenants.get(&id) else {
                        return Err(if snap.tenants.iter().any(|t| *t.id == *id) {
                            PromoteError::MainFile(id.clone())
                        } else {
                            PromoteError::NoTenant(id.clone())
                        });
                    };
                    let mut t: TenantSection = toml::from_str(text).map_err(|_| PromoteError::NoTenant(id.clone()))?;
                    if !t.domains.contains(&name) {
                        t.domains.push(name.clone());
                    }
                    Ok(crate::registry::Rendered::of(
                        texts,
                        vec![TenantEdit::Put(Box::new(t))],
                    )?)
                },
            )
        })
        .await;
        match res {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(PromoteError::Write(WriteError::Store(e)))) if e.is_unreachable() => {
                Err(Promote::Unreachable(e.to_string()))
            }
            Ok(Err(e)) => Err(Promote::Refused(e.to_string())),
            Err(e) => Err(Promote::Refused(format!("the registry write did not finish: {e}"))),
        }
    }

    /// Fetches `http://<name>/.well-known/tenantgate-challenge/<token>`
    /// from the addresses DNS gives for `name` (on the gateway's HTTP port)
    /// and wants the token back: it proves the name points here.
    async fn http_proof(&self, name: &str, token: &str, timeout: Duration) -> Result<(), String> {
        if name.starts_with("*.") {
            return Err("a wildcard is proven by its TXT record only".into());
        }
        let dns = self.dns.as_ref().ok_or("no DNS resolver")?;
        let ips = dns.addresses(name).await.map_err(|e| e.to_string())?;
        let mut last = format!("{name} has no address");
        for ip in ips.into_iter().take(4) {
            let addr = std::net::SocketAddr::new(ip, self.http_port);
            let fetch = async {
                let mut conn = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let req =
                    format!("GET {HTTP_PROOF_PREFIX}{token} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
                conn.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
                let mut buf = Vec::with_capacity(512);
                (&mut conn)
                    .take(4096)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&buf);
                let ok = text.starts_with("HTTP/1.1 200")
                    && text
                        .split_once("\r\n\r\n")
                        .is_some_and(|(_, body)| body.trim() == token);
                if ok {
                    Ok(())
                } else {
                    Err(format!("{addr} did not answer the token"))
                }
            };
            match tokio::time::timeout(timeout, fetch).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("{addr} timed out"),
            }
        }
        Err(last)
    }

    /// One pass: expire old claims, check the due ones (only on the
    /// replica that runs the checks).
    pub async fn pass(self: &Arc<Self>) {
        let cfg = self.config();
        let fenced = self.store.is_some();
        let mut changed = false;
        if self.runs_checks() {
            let (due, expired) = self.claims.due(super::now(), cfg.pending_ttl);
            changed = !due.is_empty() || !expired.is_empty();
            for c in expired {
                let why = format!(
                    "not proven within {} days (pending_ttl_days)",
                    cfg.pending_ttl.as_secs() / 86_400
                );
                match self.fail(&c.name, &c.tenant, &why, fenced).await {
                    Ok(Some(_)) => {
                        self.events
                            .emit("domain.failed", Some(&c.tenant), Some(&c.name), Some(&why));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(domain = %c.name, error = %e, "expired claim not recorded"),
                }
            }
            for c in due.into_iter().take(BATCH) {
                if !self.runs_checks() {
                    break;
                }
                self.check(&c, fenced).await;
            }
            self.reverify(&cfg).await;
        }
        if let Some(m) = &self.metrics {
            let (pending, failed) = self.claims.counts();
            m.claims.with_label_values(&["pending"]).set(pending as i64);
            m.claims.with_label_values(&["failed"]).set(failed as i64);
        }
        self.checker_gauge();
        if changed {
            self.save().await;
        }
    }
}

/// One write changing more tenants than this gets one summary event.
const MAX_TENANT_EVENTS: usize = 1000;

impl Lifecycle {
    /// Events for what changed between two generations (tenants created,
    /// updated, deleted; domains active and removed), and the claims the
    /// change settles: a claimed name now active for its claimant is
    /// fulfilled, for another tenant it fails. O(tenants), off the writer's
    /// path.
    pub async fn follow(self: &Arc<Self>, old: &Snapshot, new: &Snapshot) {
        use std::collections::{HashMap, HashSet};
        let before: HashMap<&str, &TenantSpec> = old.config.tenants.iter().map(|t| (t.id.as_str(), t)).collect();
        let after: HashMap<&str, &TenantSpec> = new.config.tenants.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut tenant_events: Vec<(&str, &str)> = Vec::new();
        let mut domain_events: Vec<(&'static str, &str, String)> = Vec::new();
        let names = |t: Option<&&TenantSpec>| -> HashSet<String> {
            t.map(|t| t.domains.iter().map(ToString::to_string).collect())
                .unwrap_or_default()
        };
        for (id, t) in &after {
            match before.get(id) {
                None => tenant_events.push(("tenant.created", id)),
                Some(b) if b != t => tenant_events.push(("tenant.updated", id)),
                Some(_) => continue,
            }
            let (was, now) = (names(before.get(id)), names(Some(t)));
            for n in now.difference(&was) {
                domain_events.push(("domain.active", id, n.clone()));
            }
            for n in was.difference(&now) {
                domain_events.push(("domain.removed", id, n.clone()));
            }
        }
        for (id, b) in &before {
            if !after.contains_key(id) {
                tenant_events.push(("tenant.deleted", id));
                for n in names(Some(b)) {
                    domain_events.push(("domain.removed", id, n));
                }
            }
        }
        // Fleet mode: every replica sees the change; the one that runs the
        // checks tells the event log and settles the claims.
        if !self.runs_checks() {
            return;
        }
        if tenant_events.len() + domain_events.len() > MAX_TENANT_EVENTS {
            let detail = format!(
                "{} tenant and {} domain changes in generation {}",
                tenant_events.len(),
                domain_events.len(),
                new.generation
            );
            self.events.emit("tenants.changed", None, None, Some(&detail));
        } else {
            tenant_events.sort();
            domain_events.sort();
            for (kind, id) in tenant_events {
                self.events.emit(kind, Some(id), None, None);
            }
            for (kind, id, name) in &domain_events {
                self.events.emit(kind, Some(id), Some(name), None);
            }
        }
        // Claims on names that are now active somewhere.
        let fenced = self.store.is_some();
        let pending = self.claims.pending();
        let mut changed = false;
        for c in pending {
            let Some(owner) = new.table.lookup(&c.name).and_then(|m| new.tenant(m.tenant)) else {
                continue;
            };
            changed = true;
            if *owner.id == *c.tenant {
                if let Err(e) = self.withdraw(&c.name, &c.tenant, fenced).await {
                    tracing::warn!(domain = %c.name, error = %e, "fulfilled claim not removed");
                }
            } else {
                let why = "the name is now active for another tenant";
                match self.fail(&c.name, &c.tenant, why, fenced).await {
                    Ok(Some(_)) => {
                        self.events
                            .emit("domain.failed", Some(&c.tenant), Some(&c.name), Some(why));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(domain = %c.name, error = %e, "claim not failed"),
                }
            }
        }
        if changed {
            self.save().await;
        }
    }
}

/// The background service: [`Lifecycle::pass`] every second, and
/// [`Lifecycle::follow`] at each new generation.
pub struct Verifier {
    pub lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl BackgroundService for Verifier {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(super::webhooks::run(self.lifecycle.clone(), shutdown.clone()));
        if self.lifecycle.store().is_some() {
            tokio::spawn(super::fleet::lead(self.lifecycle.clone(), shutdown.clone()));
            tokio::spawn(super::fleet::sync(self.lifecycle.clone(), shutdown.clone()));
        }
        let mut generations = self.lifecycle.registry.subscribe();
        let mut seen = self.lifecycle.registry.snapshot();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.lifecycle.pass().await,
                r = generations.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let now = self.lifecycle.registry.snapshot();
                    if now.generation != seen.generation {
                        self.lifecycle.follow(&seen, &now).await;
                        seen = now;
                    }
                }
            }
        }
    }
}
