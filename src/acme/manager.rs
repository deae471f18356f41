//! The certificate manager: follows the registry and keeps a certificate
//! for every host that needs one.
//!
//! On every reload it re-reads the operator certificate folder and
//! recomputes the set of names to manage: every exact custom domain and
//! every platform host, minus those an operator certificate covers. With an
//! ACME issuer it orders what is missing (bounded concurrency), renews at
//! two thirds of the lifetime with jitter (or inside the CA's ARI window),
//! and on failure retries with capped exponential backoff while the old
//! certificate keeps serving. Names that leave the config stop renewing.
//! Orders run as their own tasks, so a reload never aborts one.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use instant_acme::{Account, CertificateIdentifier};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, Mutex, Semaphore};

use super::order::{self, OrderError};
use super::Challenges;
use crate::config::{Acme, DomainName, Issuer, Tls};
use crate::registry::{Registry, Snapshot};
use crate::telemetry::Metrics;
use crate::tls::certs::Loaded;
use crate::tls::state::write_private;
use crate::tls::CertStore;

/// A certificate this close to expiry counts as "expiring" in metrics.
const EXPIRING: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often due work is looked for.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Managed {
    due: Instant,
    failures: u32,
    not_after: Option<SystemTime>,
    in_flight: bool,
    last_failed: bool,
}

/// Outcome of one order task.
struct Done {
    name: String,
    renewal: bool,
    result: Result<(SystemTime, Instant), String>,
}

/// Keeps certificates current; a pingora background service.
pub struct CertManager {
    registry: Arc<Registry>,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
    account: Arc<Mutex<Option<Account>>>,
}

impl CertManager {
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
            account: Arc::new(Mutex::new(None)),
        }
    }

    /// Loads the operator certificate folder (blocking; used at start-up).
    pub fn load_provided_now(&self) {
        let snap = self.registry.snapshot();
        if let Some(tls) = &snap.config.tls {
            load_provided(&self.store, tls);
        }
    }

    /// Names that need a managed certificate from an ACME CA.
    fn wanted(&self, snap: &Snapshot) -> Vec<String> {
        let mut names = Vec::new();
        for t in &snap.config.tenants {
            for d in &t.domains {
                if let DomainName::Exact(n) = d {
                    names.push(n.clone());
                }
            }
            if let Some(label) = &t.subdomain {
                names.extend(snap.config.gateway.base_domains.iter().map(|b| format!("{label}.{b}")));
            }
        }
        names.retain(|n| !self.store.provided_covers(n));
        names
    }

    /// Brings `managed` in line with the config: new names get scheduled
    /// (from their stored certificate, if any), removed names are dropped.
    async fn sync(&self, acme: &Acme, managed: &mut HashMap<String, Managed>) {
        let snap = self.registry.snapshot();
        let wanted = self.wanted(&snap);
        let keep: std::collections::HashSet<&str> = wanted.iter().map(String::as_str).collect();
        managed.retain(|name, _| keep.contains(name.as_str()));
        let fresh: Vec<String> = wanted.iter().filter(|n| !managed.contains_key(*n)).cloned().collect();
        if fresh.is_empty() {
            return;
        }
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            fresh
                .into_iter()
                .map(|name| {
                    let (c, k) = store.managed_paths(&name);
                    let loaded = std::fs::read(c)
                        .ok()
                        .zip(std::fs::read(k).ok())
                        .and_then(|(c, k)| Loaded::from_pem(&c, &k).ok());
                    (name, loaded)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let now = Instant::now();
        for (name, loaded) in stored {
            let (due, not_after) = match &loaded {
                Some(l) => (self.renewal_due(acme, &name, l).await, Some(l.not_after)),
                None => (now, None),
            };
            managed.insert(
                name,
                Managed {
                    due,
                    failures: 0,
                    not_after,
                    in_flight: false,
                    last_failed: false,
                },
            );
        }
    }

    /// When to renew: inside the CA's ARI window when offered, else at two
    /// thirds of the lifetime, minus up to 5% of the lifetime of jitter.
    async fn renewal_due(&self, _acme: &Acme, name: &str, l: &Loaded) -> Instant {
        if let Some(at) = self.ari_window(l).await {
            return at;
        }
        let life = l.not_after.duration_since(l.not_before).unwrap_or_default();
        let jitter = life.mul_f64(0.05 * unit_random(name));
        let at = l.not_before + life.mul_f64(2.0 / 3.0) - jitter;
        instant_at(at)
    }

    /// A random time in the CA's suggested renewal window (RFC 9773), if the
    /// CA offers ARI and an account is already open.
    async fn ari_window(&self, l: &Loaded) -> Option<Instant> {
        let guard = self.account.lock().await;
        let account = guard.as_ref()?;
        let leaf: &CertificateDer<'_> = l.key.cert.first()?;
        let id = CertificateIdentifier::try_from(leaf).ok()?;
        let (info, _) = account.renewal_info(&id).await.ok()?;
        let (start, end) = (
            SystemTime::from(info.suggested_window.start),
            SystemTime::from(info.suggested_window.end),
        );
        let span = end.duration_since(start).unwrap_or_default();
        Some(instant_at(start + span.mul_f64(unit_random("ari"))))
    }

    fn publish(&self, managed: &HashMap<String, Managed>) {
        let now = SystemTime::now();
        let (mut valid, mut expiring, mut failed) = (0, 0, 0);
        for m in managed.values() {
            match m.not_after {
                Some(t) if t > now + EXPIRING => valid += 1,
                Some(t) if t > now => expiring += 1,
                _ if m.last_failed => failed += 1,
                _ => {}
            }
        }
        self.metrics.certificates.with_label_values(&["valid"]).set(valid);
        self.metrics.certificates.with_label_values(&["expiring"]).set(expiring);
        self.metrics.certificates.with_label_values(&["failed"]).set(failed);
    }

    fn start_order(
        &self,
        acme: &Acme,
        state_dir: PathBuf,
        name: String,
        renewal: bool,
        permits: Arc<Semaphore>,
        done: mpsc::UnboundedSender<Done>,
    ) {
        let (store, challenges, account, acme) = (
            self.store.clone(),
            self.challenges.clone(),
            self.account.clone(),
            acme.clone(),
        );
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = issue(&acme, &state_dir, &account, &store, &challenges, &name).await;
            let result = result.map(|l| {
                let life = l.not_after.duration_since(l.not_before).unwrap_or_default();
                let jitter = life.mul_f64(0.05 * unit_random(&name));
                (l.not_after, instant_at(l.not_before + life.mul_f64(2.0 / 3.0) - jitter))
            });
            let _ = done.send(Done {
                name,
                renewal,
                result: result.map_err(|e| e.to_string()),
            });
        });
    }
}

/// Orders, stores and installs one certificate, re-registering once if the
/// CA forgot the account.
async fn issue(
    acme: &Acme,
    state_dir: &std::path::Path,
    account: &Mutex<Option<Account>>,
    store: &CertStore,
    challenges: &Challenges,
    name: &str,
) -> Result<Loaded, OrderError> {
    for attempt in 0..2 {
        let acct = {
            let mut guard = account.lock().await;
            if guard.is_none() {
                *guard = Some(order::account(acme, state_dir).await?);
            }
            guard.clone().ok_or_else(|| OrderError::State("no account".into()))?
        };
        match order::order(&acct, name, challenges).await {
            Ok((chain, key)) => {
                let (cert_path, key_path) = store.managed_paths(name);
                let loaded = Loaded::from_pem(chain.as_bytes(), key.as_bytes())
                    .map_err(|e| OrderError::State(format!("CA returned an unusable certificate: {e}")))?;
                let write = tokio::task::spawn_blocking(move || {
                    write_private(&key_path, key.as_bytes())?;
                    write_private(&cert_path, chain.as_bytes())
                });
                write
                    .await
                    .map_err(|e| OrderError::State(e.to_string()))?
                    .map_err(|e| OrderError::State(e.to_string()))?;
                store
                    .install(name, loaded.clone())
                    .map_err(|e| OrderError::State(e.to_string()))?;
                return Ok(loaded);
            }
            Err(e) if e.account_missing() && attempt == 0 => {
                tracing::warn!(name, "ACME account unknown to the CA; registering again");
                *account.lock().await = None;
                let _ = tokio::fs::remove_file(order::account_path(state_dir)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(OrderError::State("account could not be re-registered".into()))
}

fn load_provided(store: &CertStore, tls: &Tls) {
    let (count, problems) = store.load_provided(&tls.certs_dir);
    for p in &problems {
        tracing::error!(file = %p.path.display(), error = %p.error, "operator certificate skipped");
    }
    tracing::info!(dir = %tls.certs_dir.display(), certificates = count, skipped = problems.len(), "operator certificates loaded");
}

/// A number in [0, 1) that differs per name and per process.
fn unit_random(seed: &str) -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(seed.as_bytes());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The `Instant` for a wall-clock time (now if it is past).
fn instant_at(t: SystemTime) -> Instant {
    Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default()
}

#[async_trait]
impl BackgroundService for CertManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut generations = self.registry.subscribe();
        let mut managed: HashMap<String, Managed> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut tick = tokio::time::interval(TICK);
        let mut permits: Option<Arc<Semaphore>> = None;
        let mut synced = None;
        loop {
            let snap = self.registry.snapshot();
            let tls = snap.config.tls.clone();
            let acme = match tls.as_ref().map(|t| &t.issuer) {
                Some(Issuer::Acme(a)) => Some(a.clone()),
                _ => None,
            };
            if let (Some(acme), Some(tls)) = (&acme, &tls) {
                let p = permits
                    .get_or_insert_with(|| Arc::new(Semaphore::new(acme.max_concurrent_orders)))
                    .clone();
                if synced != Some(snap.generation) {
                    self.sync(acme, &mut managed).await;
                    synced = Some(snap.generation);
                }
                let now = Instant::now();
                for (name, m) in managed.iter_mut().filter(|(_, m)| !m.in_flight && m.due <= now) {
                    m.in_flight = true;
                    let renewal = m.not_after.is_some();
                    self.start_order(
                        acme,
                        tls.state_dir.clone(),
                        name.clone(),
                        renewal,
                        p.clone(),
                        done_tx.clone(),
                    );
                }
                self.publish(&managed);
            }
            drop(snap);
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = generations.changed() => {
                    if changed.is_err() { return; }
                    // Read the new generation's [tls], not the one from before the change.
                    if let Some(tls) = self.registry.snapshot().config.tls.clone() {
                        let store = self.store.clone();
                        let _ = tokio::task::spawn_blocking(move || load_provided(&store, &tls)).await;
                    }
                }
                Some(done) = done_rx.recv() => {
                    let Some(acme) = &acme else { continue };
                    self.metrics.acme_order(done.renewal, done.result.is_ok());
                    let Some(m) = managed.get_mut(&done.name) else { continue };
                    m.in_flight = false;
                    match done.result {
                        Ok((not_after, due)) => {
                            tracing::info!(name = %done.name, renewal = done.renewal, "certificate issued");
                            *m = Managed { due, failures: 0, not_after: Some(not_after), in_flight: false, last_failed: false };
                        }
                        Err(e) => {
                            m.failures += 1;
                            m.last_failed = true;
                            let backoff = acme.retry_min.saturating_mul(1 << m.failures.min(20).saturating_sub(1)).min(acme.retry_max);
                            m.due = Instant::now() + backoff;
                            tracing::warn!(name = %done.name, error = %e, retry_in_secs = backoff.as_secs(), "certificate order failed; any current certificate keeps serving");
                        }
                    }
                }
                _ = tick.tick() => {}
            }
        }
    }
}
