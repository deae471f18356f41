//! Backend pools: round-robin selection over the available upstreams.
//!
//! An upstream that fails to connect is skipped for `upstream_down`; one
//! that fails its active checks or is ejected for a run of failed requests
//! ([`crate::upstream::Health`]) is skipped too. When none is left the
//! pool has nothing to offer and the relay answers 503 at once. Health
//! lives in an [`Upstream`] shared across reloads (the registry hands the
//! same `Arc` to the next snapshot when the pool keeps the address), so a
//! reload neither forgets a dead backend nor resets a live one.
//!
//! Idle kept-alive connections are kept per worker thread (one shard per
//! thread), so a thread reuses the connections its own reactor drives;
//! with work stealing on, a thread whose shard is empty takes one from
//! another shard before it opens a new connection.

use std::borrow::Cow;
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::upstream_tls::Conn;
use crate::config::upstream::{H2Keepalive, HealthCheck, Outlier, Retries, UpstreamName};
use crate::config::upstream_tls::UpstreamTls;
use crate::config::PoolSpec;
use crate::telemetry::PoolMetrics;
use crate::upstream::{Budget, Health};

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Idle kept-alive backend connections the engine keeps per upstream and
/// worker thread.
const MAX_IDLE: usize = 1024;

/// While every upstream of a pool is marked down after failed connects,
/// one request this often tries each again (the others get 503 at once),
/// so a pool recovers within a second of its backend, and a black-holed one
/// holds up one request a second, not all of them.
const TRIAL_EVERY_MS: u64 = 1000;

/// Idle-connection shards per upstream; worker threads past this many
/// share shards.
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = Cell::new(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
}

/// This thread's idle-connection shard.
fn shard() -> usize {
    SHARD.with(Cell::get)
}

type Idle = Mutex<Vec<(Conn, Instant)>>;

/// One backend address, its passive health, and the engine's
/// idle connections to it (closed when a reload drops the address).
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// TLS to it (its pool's `tls = true`); idle connections are kept
    /// per address and TLS settings.
    pub tls: Option<UpstreamTls>,
    /// Milliseconds since [`EPOCH`] until which the upstream is skipped.
    down_until: AtomicU64,
    /// While it is marked down: when the next trial request may go to it.
    next_trial: AtomicU64,
    /// Per worker thread, most recently used last.
    idle: Box<[Idle]>,
    /// The multiplexed HTTP/2 connection (pools with `http2 = true`).
    pub h2: super::upstream_h2::Shared,
    /// Active-check verdict and passive ejection.
    pub health: Health,
    /// The `host:port` entry it was resolved from; `None` for an `IP:port`.
    pub origin: Option<Arc<str>>,
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_tls(addr, None)
    }

    /// An upstream reached over TLS when `tls` is set.
    pub fn with_tls(addr: SocketAddr, tls: Option<UpstreamTls>) -> Self {
        Upstream {
            addr,
            tls,
            down_until: AtomicU64::new(0),
            next_trial: AtomicU64::new(0),
            idle: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            h2: Default::default(),
            health: Health::default(),
            origin: None,
        }
    }

    /// An address `origin` (a `host:port` entry) resolved to, reached over
    /// TLS when `tls` is set.
    pub fn resolved(addr: SocketAddr, origin: Arc<str>, tls: Option<UpstreamTls>) -> Self {
        Upstream {
            origin: Some(origin),
            ..Upstream::with_tls(addr, tls)
        }
    }

    /// The most recently used idle connection that is younger than
    /// `max_idle` and still open, from this thread's shard, or with
    /// `any_thread` from another one when this thread has none. A backend
    /// that closed a connection has made it readable, so the check reads
    /// only then (no system call for a healthy one).
    pub fn take_idle(&self, max_idle: Duration, any_thread: bool) -> Option<Conn> {
        let own = shard();
        if let Some(conn) = self.idle.get(own).and_then(|idle| take_from(idle, max_idle)) {
            return Some(conn);
        }
        if !any_thread {
            return None;
        }
        (1..SHARDS).find_map(|k| {
            self.idle
                .get((own + k) % SHARDS)
                .and_then(|idle| take_from(idle, max_idle))
        })
    }

    /// Closes the idle connections older than `max_idle`.
    pub fn reap(&self, max_idle: Duration) {
        for idle in self.idle.iter() {
            if let Ok(mut idle) = idle.lock() {
                drop_stale(&mut idle, max_idle);
            }
        }
    }

    /// Keeps `conn` in this thread's shard for the next request (at most
    /// [`MAX_IDLE`] per shard), and closes the ones idle for longer than
    /// `max_idle`.
    pub fn put_idle(&self, conn: Conn, max_idle: Duration) {
        if let Some(Ok(mut idle)) = self.idle.get(shard()).map(Mutex::lock) {
            drop_stale(&mut idle, max_idle);
            if idle.len() < MAX_IDLE {
                idle.push((conn, Instant::now()));
            }
        }
    }

    /// Skips this upstream for `period`.
    pub fn mark_down(&self, period: Duration) {
        self.down_until
            .store(now_ms() + period.as_millis() as u64, Ordering::Relaxed);
    }

    /// How much longer it is skipped; `None` while it is not.
    pub fn down_for(&self) -> Option<Duration> {
        let left = self.down_until.load(Ordering::Relaxed).saturating_sub(now_ms());
        (left > 0).then(|| Duration::from_millis(left))
    }

    /// Whether it is currently skipped after a failed connect.
    pub fn is_down(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) > now_ms()
    }

    /// Ends a connect mark-down early (an active check reached it).
    pub fn clear_down(&self) {
        self.down_until.store(0, Ordering::Relaxed);
    }

    /// Whether a trial request may go to it while it is marked down (and
    /// otherwise healthy): at most one every [`TRIAL_EVERY_MS`].
    fn try_trial(&self) -> bool {
        if !self.health.available() {
            return false;
        }
        let now = now_ms();
        let next = self.next_trial.load(Ordering::Relaxed);
        now >= next
            && self
                .next_trial
                .compare_exchange(next, now + TRIAL_EVERY_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether requests may go to it: not marked down, passing its active
    /// checks, not ejected.
    pub fn available(&self) -> bool {
        self.health.available() && !self.is_down()
    }
}

/// The most recently used connection of one shard that is younger than
/// `max_idle` and still open.
fn take_from(idle: &Idle, max_idle: Duration) -> Option<Conn> {
    let mut idle = idle.lock().ok()?;
    while let Some((conn, since)) = idle.pop() {
        if since.elapsed() > max_idle {
            // Everything below is older still.
            idle.clear();
            return None;
        }
        if conn.idle_and_open() {
            return Some(conn);
        }
    }
    None
}

/// Closes the connections at the front of `idle` (the oldest) that were
/// idle for longer than `max_idle`.
fn drop_stale(idle: &mut Vec<(Conn, Instant)>, max_idle: Duration) {
    let stale = idle.iter().take_while(|(_, since)| since.elapsed() > max_idle).count();
    idle.drain(..stale);
}

/// A named set of upstreams.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    /// The `IP:port` entries.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Requests go to the backends over HTTP/2.
    pub http2: bool,
    /// PINGs on the HTTP/2 backend connections opened from now on.
    pub h2_keepalive: Option<H2Keepalive>,
    /// TLS to its upstreams (`tls = true`), resolved ones included.
    pub tls: Option<UpstreamTls>,
    /// The `host:port` entries ...
    pub names: Vec<UpstreamName>,
    /// ... and the addresses they resolved to, replaced whole by the
    /// resolver service (`proxy::resolve`); carried over by a reload.
    pub resolved: arc_swap::ArcSwap<Vec<Arc<Upstream>>>,
    next: AtomicUsize,
    pub metrics: PoolMetrics,
    /// Active health checks; `None`: off.
    pub health: Option<HealthCheck>,
    pub outlier: Outlier,
    pub retries: Retries,
    pub budget: Budget,
}

/// Which upstreams of a pool failed for this request (bit i = upstream i;
/// pools past 64 upstreams reuse bits, which only weakens the skip). An
/// upstream whose reused connection broke is not in here: the retry may
/// pick it again, on a fresh connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    fn has(self, i: usize) -> bool {
        self.0 & (1 << (i % 64)) != 0
    }
    /// Records that upstream `i` failed for this request.
    pub fn add(&mut self, i: usize) {
        self.0 |= 1 << (i % 64);
    }
    /// How many upstreams were tried.
    pub fn count(self) -> u32 {
        self.0.count_ones()
    }
}

impl Pool {
    pub fn new(name: Arc<str>, upstreams: Vec<Arc<Upstream>>, metrics: PoolMetrics) -> Self {
        Pool {
            name,
            upstreams,
            http2: false,
            h2_keepalive: None,
            tls: None,
            names: Vec::new(),
            resolved: arc_swap::ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            metrics,
            health: None,
            outlier: Outlier::default(),
            retries: Retries::default(),
            budget: Budget::default(),
        }
    }

    /// The pool's health checks, outlier ejection and retries from `spec`.
    pub fn with_policy(mut self, spec: &PoolSpec) -> Self {
        self.names = spec.names.clone();
        self.health = spec.health.clone();
        self.outlier = spec.outlier.clone();
        self.retries = spec.retries.clone();
        self.http2 = spec.http2;
        self.h2_keepalive = spec.h2_keepalive;
        self.tls = spec.tls.clone();
        self
    }

    /// Picks the next available upstream in round-robin order that did not
    /// fail for this request, with its index (over the `IP:port` entries,
    /// then the resolved ones); when none is, a marked-down one due for its
    /// trial. `None` when there is none: every upstream is failing its
    /// checks, ejected, marked down (and tried within the last second), or
    /// already failed for this request (or no name resolved yet).
    pub fn select(&self, tried: &Tried) -> Option<(usize, Cow<'_, Arc<Upstream>>)> {
        let fixed = self.upstreams.len();
        // Pools without names never touch the resolved set.
        let resolved = (!self.names.is_empty()).then(|| self.resolved.load());
        let dynamic: &[Arc<Upstream>] = resolved.as_deref().map_or(&[], |v| v.as_slice());
        let n = fixed + dynamic.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        self.pick(tried, start, dynamic, Upstream::available)
            .or_else(|| self.pick(tried, start, dynamic, Upstream::try_trial))
    }

    /// The first upstream from `start` on (round robin over the fixed ones,
    /// then `dynamic`) that is not in `tried` and passes `ok`.
    fn pick<'p>(
        &'p self,
        tried: &Tried,
        start: usize,
        dynamic: &[Arc<Upstream>],
        ok: impl Fn(&Upstream) -> bool,
    ) -> Option<(usize, Cow<'p, Arc<Upstream>>)> {
        let fixed = self.upstreams.len();
        let n = fixed + dynamic.len();
        (0..n).map(|k| (start + k) % n).find_map(|i| {
            if tried.has(i) {
                return None;
            }
            match self.upstreams.get(i) {
                Some(u) => ok(u).then_some((i, Cow::Borrowed(u))),
                None => dynamic
                    .get(i - fixed)
                    .filter(|u| ok(u))
                    .map(|u| (i, Cow::Owned(u.clone()))),
            }
        })
    }

    /// Every upstream: the `IP:port` entries, then the resolved ones.
    pub fn members(&self) -> Vec<Arc<Upstream>> {
        let mut all = self.upstreams.clone();
        all.extend(self.resolved.load().iter().cloned());
        all
    }

    /// Whether an available upstream did not fail for this request yet.
    pub fn any_untried(&self, tried: &Tried) -> bool {
        self.members()
            .iter()
            .enumerate()
            .any(|(i, u)| !tried.has(i) && u.available())
    }

    /// Whether an upstream other than `except` is available.
    pub fn others_available(&self, except: &Upstream) -> bool {
        self.members()
            .iter()
            .any(|u| !std::ptr::eq(&**u, except) && u.available())
    }

    /// A request failed on `up` (a 5xx answer, a reset, a timeout, a broken
    /// response): counts it toward ejection, and logs and counts an
    /// ejection.
    pub fn upstream_failed(&self, up: &Upstream) {
        if let Some(period) = up.health.record_failure(&self.outlier, || self.others_available(up)) {
            tracing::warn!(
                pool = &*self.name,
                upstream = %up.addr,
                ejected_ms = period.as_millis() as u64,
                "upstream ejected after consecutive failures"
            );
        }
    }
}

/// Closes the engine's idle backend connections once they are older
/// than `upstream_idle_timeout_ms`, also while no request comes (a pingora
/// background service; a tick a second).
pub struct IdleReaper {
    pub registry: Arc<crate::registry::Registry>,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for IdleReaper {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let snap = self.registry.snapshot();
                    let max_idle = snap.config.gateway.timeouts.idle;
                    for up in snap.pools.iter().flat_map(|p| p.members()) {
                        up.reap(max_idle);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        let metrics = crate::telemetry::Metrics::new().expect("metrics");
        let ups = (0..n)
            .map(|i| Arc::new(Upstream::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))))
            .collect();
        Pool::new("p".into(), ups, metrics.pool("p"))
    }

    #[test]
    fn selection_skips_unavailable_and_tried_upstreams_and_ends_with_none() {
        let p = pool(3);
        let outlier = Outlier {
            consecutive_failures: 1,
            eject_last: true,
            ..Outlier::default()
        };
        p.upstreams[0].mark_down(Duration::from_secs(60));
        p.upstreams[1].health.record_failure(&outlier, || true);
        for _ in 0..6 {
            let (i, u) = p.select(&Tried::default()).expect("one is left");
            assert_eq!((i, u.addr.port()), (2, 9002));
        }
        assert!(p.others_available(&p.upstreams[0]));
        assert!(!p.others_available(&p.upstreams[2]));
        let mut tried = Tried::default();
        tried.add(2);
        assert!(!p.any_untried(&tried));
        // The only available one failed already: the marked-down one gets
        // its trial, once a second; the ejected one none.
        assert_eq!(p.select(&tried).map(|(i, _)| i), Some(0), "a trial");
        assert!(p.select(&tried).is_none(), "nothing left: the relay answers 503");
        p.upstreams[2].mark_down(Duration::from_secs(60));
        assert_eq!(p.select(&Tried::default()).map(|(i, _)| i), Some(2), "its trial");
        assert!(p.select(&Tried::default()).is_none());
        p.upstreams[0].clear_down();
        assert_eq!(p.select(&Tried::default()).map(|(i, _)| i), Some(0));
    }

    #[test]
    fn resolved_addresses_follow_the_fixed_ones_in_the_rotation() {
        let mut p = pool(1);
        p.names = vec![UpstreamName {
            host: "backend.internal".into(),
            port: 9100,
        }];
        let origin: Arc<str> = "backend.internal:9100".into();
        p.resolved.store(Arc::new(vec![Arc::new(Upstream::resolved(
            SocketAddr::from(([127, 0, 0, 2], 9100)),
            origin,
            None,
        ))]));
        let mut seen: Vec<u16> = (0..4)
            .filter_map(|_| p.select(&Tried::default()).map(|(_, u)| u.addr.port()))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, [9000, 9000, 9100, 9100]);
        assert_eq!(p.members().len(), 2);
    }
}
