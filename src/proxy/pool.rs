//! Backend pools: round-robin selection with passive health.
//!
//! An upstream that fails to connect is skipped for `upstream_down`. Its
//! health lives in an [`Upstream`] shared across reloads (the registry hands
//! the same `Arc` to the next snapshot when the address is unchanged), so a
//! reload neither forgets a dead backend nor resets a live one.
//!
//! Idle kept-alive connections are kept per worker thread (one shard per
//! thread), so a thread reuses the connections its own reactor drives;
//! with work stealing on, a thread whose shard is empty takes one from
//! another shard before it opens a new connection.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::upstream_tls::Conn;
use crate::config::upstream_tls::UpstreamTls;
use crate::telemetry::PoolMetrics;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Idle kept-alive backend connections the engine keeps per upstream and
/// worker thread.
const MAX_IDLE: usize = 1024;

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
    /// Per worker thread, most recently used last.
    idle: Box<[Idle]>,
    /// The multiplexed HTTP/2 connection (pools with `http2 = true`).
    pub h2: super::upstream_h2::Shared,
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
            idle: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            h2: Default::default(),
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

    /// Whether it is currently skipped.
    pub fn is_down(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) > now_ms()
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
    pub upstreams: Vec<Arc<Upstream>>,
    /// HTTP/2 clients' streams go to the backends over HTTP/2.
    pub http2: bool,
    next: AtomicUsize,
    pub metrics: PoolMetrics,
}

/// Which upstreams of a pool failed to connect for this request (bit i =
/// upstream i; pools past 64 upstreams reuse bits, which only weakens the
/// skip). An upstream whose reused connection broke is not in here: the
/// retry may pick it again, on a fresh connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    fn has(self, i: usize) -> bool {
        self.0 & (1 << (i % 64)) != 0
    }
    /// Records that upstream `i` failed to connect.
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
            next: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Picks the next upstream in round-robin order that is neither down nor
    /// failed for this request, with its index. When every remaining
    /// upstream is down, the next one is returned anyway, so a pool whose
    /// backends all failed recently still gets a chance to recover. `None`
    /// once every upstream failed to connect for this request.
    pub fn select(&self, tried: &Tried) -> Option<(usize, &Arc<Upstream>)> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for k in 0..n {
            let i = (start + k) % n;
            if tried.has(i) {
                continue;
            }
            if !self.upstreams[i].is_down() {
                return Some((i, &self.upstreams[i]));
            }
            fallback.get_or_insert(i);
        }
        let i = fallback?;
        Some((i, &self.upstreams[i]))
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
                    for up in snap.pools.iter().flat_map(|p| &p.upstreams) {
                        up.reap(max_idle);
                    }
                }
            }
        }
    }
}
