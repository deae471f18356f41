//! Fleet mode: rate limits and quotas shared by every replica through one
//! Redis, with no Redis round trip on the typical request.
//!
//! Each replica leases a chunk of a tenant's budget with one Lua script and
//! spends it locally, refilling in the background before the chunk runs out:
//! - rate: GCRA in Redis on Redis `TIME`, so node clocks never matter. A
//!   lease of `n` requests moves the tenant's theoretical arrival time by `n`
//!   intervals, so the fleet never admits more than one gateway would; what
//!   a lease still holds after [`RATE_LEASE_TTL_NS`] lapses unspent.
//! - quotas: the day and month counters hold what was admitted plus what is
//!   leased; a lease left idle for a second is given back.
//!
//! Keys carry the tenant as a hash tag (`<prefix>:{<tenant>}:rate`), so one
//! script's keys share a Redis Cluster slot.
//!
//! While Redis is unreachable a replica serves on: the rate divided by the
//! last known number of replicas, quotas counted locally and added to Redis
//! when it answers again. A store fault refuses a request (503) only for a
//! tenant configured `on_store_failure = "closed"`; it is never a 429.
//! The in-flight cap stays per replica.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use jiff::Timestamp;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::quota::Counter;
use super::{
    Admission, Book, Clock, Items, Limits, Period, Rate, RateCheck, Refusal, SystemClock, TenantState, Violation,
};
use crate::config::Store;
use crate::telemetry::StoreMetrics;

/// A rate lease lapses this long after it was granted.
pub const RATE_LEASE_TTL_NS: u64 = 1_000_000_000;
/// A quota lease unused this long goes back to Redis.
const QUOTA_IDLE_NS: u64 = 1_000_000_000;
/// A replica not seen for this long no longer counts.
const REPLICA_TTL_MS: u64 = 5_000;
/// How often a replica reports itself, settles quotas and probes a down store.
const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Heartbeats between two publications of this replica's summary.
const SUMMARY_EVERY: u32 = 4;
/// A summary not refreshed for this long expires in Redis.
const SUMMARY_TTL_MS: u64 = 10_000;
/// Replicas listed at most (the summaries are read one key each).
const REPLICAS_LISTED: usize = 256;
/// The largest quota lease, unless a tenth of a second of the tenant's rate
/// is more.
const MAX_QUOTA_LEASE: u64 = 64;

/// Leases rate and quota budget for one tenant in one step.
/// KEYS: rate, day, month. ARGV: interval_us, capacity_us, rate_want,
/// day_limit, month_limit, quota_want, day_adjust, month_adjust, day_ttl_s,
/// month_ttl_s (a limit of 0 leaves that counter alone).
/// Returns: rate granted, µs until one request fits (when none was),
/// burst left, quota granted, day count, month count.
const LEASE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, cap, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local granted, retry, left = 0, 0, 0
if want > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
  if tat < now then tat = now end
  local room = math.floor((now + cap - tat) / T)
  if room > 0 then
    granted = math.min(want, room)
    tat = tat + granted * T
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    left = room - granted
  else
    retry = tat + T - cap - now
  end
end
local dl, ml, q = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function current(key, limit, adjust)
  if limit <= 0 then return 0 end
  local c = tonumber(redis.call('GET', key) or 0) + adjust
  if c < 0 then c = 0 end
  if limit - c < q then q = math.max(0, limit - c) end
  return c
end
local day = current(KEYS[2], dl, tonumber(ARGV[7]))
local month = current(KEYS[3], ml, tonumber(ARGV[8]))
if dl > 0 then
  day = day + q
  redis.call('SET', KEYS[2], string.format('%.0f', day), 'EX', tonumber(ARGV[9]))
end
if ml > 0 then
  month = month + q
  redis.call('SET', KEYS[3], string.format('%.0f', month), 'EX', tonumber(ARGV[10]))
end
return {granted, retry, left, q, day, month}
"#;

/// Reports this replica and counts the live ones. KEYS: the replica set.
/// ARGV: replica id, TTL in ms, 1 to leave the set instead.
const REPLICAS_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"#;

/// Why a call to the store failed. Never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not connected to the limit store")]
    NotConnected,
    #[error("the limit store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("limit store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("limit store: unexpected reply {0:?}")]
    Reply(Vec<i64>),
}

/// One period's counter as this replica knows it.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Period key and end; `count` is Redis' count at the last exchange
    /// (admitted plus leased, by every replica).
    counter: Counter,
    /// Admitted here while the store was down, not yet added to Redis.
    local: u64,
}

impl Slot {
    /// Moves to the period containing `now`; a new period starts clean.
    /// Returns whether it moved.
    fn roll(&mut self, period: Period, now: Timestamp, limits: &Limits) -> bool {
        let before = self.counter.period;
        self.counter.roll(period, now, &limits.timezone);
        let moved = before != self.counter.period;
        if moved {
            self.local = 0;
        }
        moved
    }

    fn resets_in(&self, now: Timestamp) -> u64 {
        self.counter.resets_in(now)
    }

    /// Seconds the Redis key should live: to the period's end, and a day.
    fn ttl(&self, now: Timestamp) -> u64 {
        self.resets_in(now) + 86_400
    }
}

/// A replica's share of one tenant's budget.
#[derive(Debug, Default)]
pub struct Lease {
    /// Requests the rate lease still allows, until `rate_until` (mono ns).
    rate: u32,
    rate_until: u64,
    /// Burst left in Redis when the lease was granted (for the header).
    rate_left: u32,
    /// Redis had no room: refuse locally until then (mono ns).
    rate_refused_until: u64,
    /// Requests the quota lease still allows (both periods).
    quota: u64,
    quota_used_at: u64,
    /// A period is used up: refuse locally until its end (unix seconds).
    quota_refused: Option<(Violation, i64)>,
    day: Slot,
    month: Slot,
}

/// What a request does with the lease.
enum Step {
    Admit {
        low: bool,
    },
    Refuse(Refusal),
    /// The lease is empty: ask Redis (or local limits).
    Refill,
}

impl Lease {
    /// The day and month counts as this replica knows them: Redis' count
    /// at the last exchange (admitted and leased, every replica) plus what
    /// was admitted here while the store was down.
    pub(super) fn counts(&self) -> (Counter, Counter) {
        let with_local = |s: &Slot| Counter {
            count: s.counter.count + s.local,
            ..s.counter
        };
        (with_local(&self.day), with_local(&self.month))
    }

    fn roll(&mut self, limits: &Limits, now: Timestamp) {
        let day = limits.per_day.is_some() && self.day.roll(Period::Day, now, limits);
        let month = limits.per_month.is_some() && self.month.roll(Period::Month, now, limits);
        if day || month {
            // Leased for a period that is over.
            self.quota = 0;
            self.quota_refused = None;
        }
    }

    /// Spends one request of the lease, or says why it cannot.
    fn spend(&mut self, limits: &Limits, mono: u64, now: Timestamp, want: &Want, items: &mut Items) -> Step {
        self.roll(limits, now);
        if limits.rate.is_some() {
            if mono < self.rate_refused_until {
                return Step::Refuse(Refusal {
                    violation: Violation::Rate,
                    retry_after: (self.rate_refused_until - mono).div_ceil(1_000_000_000).max(1),
                });
            }
            if self.rate == 0 || mono >= self.rate_until {
                return Step::Refill;
            }
        }
        let quota = limits.per_day.is_some() || limits.per_month.is_some();
        if quota {
            if let Some((violation, until)) = self.quota_refused {
                if now.as_second() < until {
                    return Step::Refuse(Refusal {
                        violation,
                        retry_after: u64::try_from(until - now.as_second()).unwrap_or(0).max(1),
                    });
                }
                self.quota_refused = None;
            }
            if self.quota == 0 {
                return Step::Refill;
            }
        }
        let mut low = false;
        if let Some(r) = limits.rate {
            self.rate -= 1;
            low |= self.rate <= want.rate / 2;
            let remaining = (self.rate + self.rate_left).min(r.burst);
            let reset = u64::from(r.burst - remaining) * r.interval();
            items.push("burst", u64::from(remaining), Some(reset.div_ceil(1_000_000_000)));
        }
        if quota {
            self.quota -= 1;
            self.quota_used_at = mono;
            low |= self.quota <= want.quota / 2;
            for (period, limit, slot) in [
                (Period::Day, limits.per_day, &self.day),
                (Period::Month, limits.per_month, &self.month),
            ] {
                if let Some(limit) = limit {
                    let used = slot.counter.count + slot.local;
                    let remaining = limit.saturating_sub(used) + self.quota;
                    items.push(period.as_str(), remaining.min(limit), Some(slot.resets_in(now)));
                }
            }
        }
        Step::Admit { low }
    }

    /// Gives one request from local limits (the store is down): the rate
    /// split by the replica count, quotas against the last known count.
    fn local_grant(
        &mut self,
        state: &TenantState,
        limits: &Limits,
        mono: u64,
        now: Timestamp,
        replicas: u32,
    ) -> Result<(), Refusal> {
        if let Some(r) = limits.rate {
            if self.rate == 0 || mono >= self.rate_until {
                let share = Rate {
                    per_second: (r.per_second / replicas).max(1),
                    burst: (r.burst / replicas).max(1),
                };
                match state.gcra.check(mono, share) {
                    RateCheck::Allowed { .. } => {
                        self.rate = 1;
                        self.rate_until = mono + RATE_LEASE_TTL_NS;
                        self.rate_left = 0;
                        self.rate_refused_until = 0;
                    }
                    RateCheck::Limited { retry_ns } => {
                        return Err(Refusal {
                            violation: Violation::Rate,
                            retry_after: retry_ns.div_ceil(1_000_000_000).max(1),
                        })
                    }
                }
            }
        }
        if (limits.per_day.is_some() || limits.per_month.is_some()) && self.quota == 0 {
            for (violation, limit, slot) in [
                (Violation::Day, limits.per_day, &self.day),
                (Violation::Month, limits.per_month, &self.month),
            ] {
                if let Some(limit) = limit {
                    if slot.counter.count + slot.local >= limit {
                        return Err(Refusal {
                            violation,
                            retry_after: slot.resets_in(now).max(1),
                        });
                    }
                }
            }
            // Counted as admitted here; added to Redis when it is back.
            self.quota = 1;
            self.day.local += u64::from(limits.per_day.is_some());
            self.month.local += u64::from(limits.per_month.is_some());
        }
        Ok(())
    }

    /// Whether the periodic sync has something to settle.
    fn has_work(&self, mono: u64) -> bool {
        self.day.local > 0
            || self.month.local > 0
            || (self.quota > 0 && mono.saturating_sub(self.quota_used_at) >= QUOTA_IDLE_NS)
    }
}

/// How much to lease at once: about a tenth of a second of the rate, and
/// an eighth of the quota left, shared among the replicas.
#[derive(Debug, Clone, Copy, Default)]
struct Want {
    rate: u32,
    quota: u64,
}

impl Want {
    fn new(limits: &Limits, lease: &Lease, replicas: u32) -> Want {
        let rate = limits.rate.map_or(0, |r| {
            let cap = (r.burst / 2 / replicas).max(1);
            (r.per_second / 10 / replicas).clamp(1, cap)
        });
        let left = |limit: Option<u64>, slot: &Slot| limit.map(|l| l.saturating_sub(slot.counter.count + slot.local));
        let quota = match (left(limits.per_day, &lease.day), left(limits.per_month, &lease.month)) {
            (None, None) => 0,
            (d, m) => {
                let left = d.unwrap_or(u64::MAX).min(m.unwrap_or(u64::MAX));
                // A fast tenant leases a tenth of a second of its rate.
                let cap = limits.rate.map_or(MAX_QUOTA_LEASE, |r| {
                    u64::from(r.per_second / 10 / replicas).max(MAX_QUOTA_LEASE)
                });
                (left / 8 / u64::from(replicas)).clamp(1, cap)
            }
        };
        Want { rate, quota }
    }
}

/// One exchange with Redis: what to ask and what to settle.
#[derive(Debug, Default)]
struct Ask {
    rate: Option<(Rate, u32)>,
    quota: u64,
    day: Option<(u64, u32, u64)>,
    month: Option<(u64, u32, u64)>,
    /// Counts admitted locally, sent now: restored if the call fails.
    day_local: u64,
    month_local: u64,
    /// Leased quota given back.
    returned: u64,
}

/// The answer of [`LEASE_LUA`].
#[derive(Debug)]
struct Grant {
    rate: u32,
    retry_us: u64,
    rate_left: u32,
    quota: u64,
    day: u64,
    month: u64,
}

/// The fleet's shared store: a Redis connection and this replica's view.
/// `KEYS[1]`: a hash of replica → "<ms> <sample>"; stores `ARGV[2]` for
/// replica `ARGV[1]` stamped with Redis' clock, drops entries older than
/// `ARGV[3]` ms, returns the samples left. The hash expires once idle.
const SAMPLES_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], fresh * 2)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local at, rest = string.match(all[i + 1], '^(%d+) (.*)$')
  if at and now - tonumber(at) <= fresh then
    table.insert(out, rest)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"#;

pub struct Fleet {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    lease: Script,
    replicas_script: Script,
    samples_script: Script,
    prefix: String,
    timeout: Duration,
    replica: String,
    replicas: AtomicU32,
    up: AtomicBool,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A fleet on `store`; connects from [`FleetSync`], so a gateway starts
    /// and serves even while Redis is down.
    pub fn new(store: &Store, metrics: StoreMetrics) -> Result<Fleet, StoreError> {
        let client = store.client()?;
        // Host, process and start time: unique among live replicas.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let replica = format!("{}-{}-{started:x}", host.trim(), std::process::id());
        metrics.up.set(0);
        Ok(Fleet {
            client,
            conn: ArcSwapOption::empty(),
            lease: Script::new(LEASE_LUA),
            replicas_script: Script::new(REPLICAS_LUA),
            samples_script: Script::new(SAMPLES_LUA),
            prefix: store.key_prefix.clone(),
            timeout: store.timeout,
            replica,
            replicas: AtomicU32::new(1),
            up: AtomicBool::new(false),
            metrics,
        })
    }

    /// Whether Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// Admits one request against the fleet-wide limits: the in-flight cap
    /// of this replica, then rate and quotas from this replica's lease.
    pub async fn admit(
        self: &Arc<Self>,
        id: &Arc<str>,
        state: &Arc<TenantState>,
        limits: &Limits,
        client: Option<std::net::IpAddr>,
        clock: &dyn Clock,
    ) -> Result<Admission, Refusal> {
        let mut items = Items::default();
        let permit = state.slot(limits, &mut items)?;
        state.client(limits, client)?;
        if limits.rate.is_none() && limits.per_day.is_none() && limits.per_month.is_none() {
            return Ok(Admission {
                permit,
                header: items.header(),
            });
        }
        let step = {
            let mut lease = state.lease.lock().unwrap_or_else(|p| p.into_inner());
            let want = Want::new(limits, &lease, self.replicas());
            lease.spend(limits, clock.mono_ns(), clock.now(), &want, &mut items)
        };
        let step = match step {
            Step::Refill if self.is_up() => match self.refill(id, state, limits, clock, Some(&mut items)).await {
                Ok(Some(step)) => step,
                Ok(None) => Step::Refill,
                Err(e) => {
                    tracing::debug!(tenant = &**id, error = %e, "lease refill failed; local limits");
                    Step::Refill
                }
            },
            step => step,
        };
        match step {
            Step::Admit { low } => {
                if low && self.is_up() {
                    self.prefetch(id, state, limits);
                }
            }
            Step::Refuse(r) => return Err(r),
            // The store is down, or answered nothing usable: local limits.
            Step::Refill => self.local(state, limits, clock, &mut items)?,
        }
        Ok(Admission {
            permit,
            header: items.header(),
        })
    }

    /// Admits on local limits while the store is unreachable, or refuses a
    /// fail-closed tenant.
    fn local(&self, state: &TenantState, limits: &Limits, clock: &dyn Clock, items: &mut Items) -> Result<(), Refusal> {
        self.metrics.fallback.inc();
        if limits.fail_closed {
            return Err(Refusal {
                violation: Violation::Store,
                retry_after: 1,
            });
        }
        let mut lease = state.lease.lock().unwrap_or_else(|p| p.into_inner());
        let (mono, now) = (clock.mono_ns(), clock.now());
        let want = Want::new(limits, &lease, self.replicas());
        lease.local_grant(state, limits, mono, now, self.replicas())?;
        match lease.spend(limits, mono, now, &want, items) {
            Step::Refuse(r) => Err(r),
            Step::Admit { .. } | Step::Refill => Ok(()),
        }
    }

    /// Refills in the background when the lease runs low, so the next
    /// requests need no round trip.
    fn prefetch(self: &Arc<Self>, id: &Arc<str>, state: &Arc<TenantState>, limits: &Limits) {
        if state.prefetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let (fleet, id, state, limits) = (self.clone(), id.clone(), state.clone(), limits.clone());
        tokio::spawn(async move {
            if let Err(e) = fleet.refill(&id, &state, &limits, &SystemClock, None).await {
                tracing::debug!(tenant = &*id, error = %e, "lease prefetch failed");
            }
            state.prefetching.store(false, Ordering::Release);
        });
    }

    /// Tops the lease up from Redis (one exchange per tenant at a time).
    /// With `spend`, takes one request from the lease under the same lock,
    /// so that requests queued behind this one cannot take it first.
    async fn refill(
        &self,
        id: &str,
        state: &TenantState,
        limits: &Limits,
        clock: &dyn Clock,
        spend: Option<&mut Items>,
    ) -> Result<Option<Step>, StoreError> {
        let _one = state.exchange.lock().await;
        let ask = {
            let mut lease = state.lease.lock().unwrap_or_else(|p| p.into_inner());
            let (mono, now) = (clock.mono_ns(), clock.now());
            lease.roll(limits, now);
            let want = Want::new(limits, &lease, self.replicas());
            let rate_needed = limits.rate.is_some()
                && mono >= lease.rate_refused_until
                && (lease.rate <= want.rate / 2 || mono >= lease.rate_until);
            let quota_needed = want.quota > 0 && lease.quota_refused.is_none() && lease.quota <= want.quota / 2;
            if !rate_needed && !quota_needed {
                // Another request refilled meanwhile.
                return Ok(spend.map(|items| lease.spend(limits, mono, now, &want, items)));
            }
            let mut ask = Ask::settle(&mut lease, limits, now, false);
            ask.rate = limits.rate.filter(|_| rate_needed).map(|r| (r, want.rate));
            ask.quota = if quota_needed { want.quota } else { 0 };
            ask
        };
        let result = self.exchange(id, &ask).await;
        let mut lease = state.lease.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(grant) => {
                let (mono, now) = (clock.mono_ns(), clock.now());
                lease.apply(&ask, &grant, limits, mono);
                let want = Want::new(limits, &lease, self.replicas());
                Ok(spend.map(|items| lease.spend(limits, mono, now, &want, items)))
            }
            Err(e) => {
                ask.restore(&mut lease);
                Err(e)
            }
        }
    }

    /// Runs [`LEASE_LUA`] for tenant `id`.
    async fn exchange(&self, id: &str, ask: &Ask) -> Result<Grant, StoreError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::NotConnected);
        };
        let mut conn = (*conn).clone();
        let (interval_us, capacity_us, rate_want) = match ask.rate {
            Some((r, want)) => {
                let t = (r.interval() / 1_000).max(1);
                (t, t * u64::from(r.burst), want)
            }
            None => (1, 0, 0),
        };
        let key = |suffix: std::fmt::Arguments<'_>| format!("{}:{{{id}}}:{suffix}", self.prefix);
        let (dl, dk, _) = ask.day.unwrap_or_default();
        let (ml, mk, _) = ask.month.unwrap_or_default();
        let day_adjust = ask.day_local as i64 - ask.returned as i64;
        let month_adjust = ask.month_local as i64 - ask.returned as i64;
        let mut invocation = self.lease.prepare_invoke();
        invocation
            .key(key(format_args!("rate")))
            .key(key(format_args!("day:{dk}")))
            .key(key(format_args!("month:{mk}")))
            .arg(interval_us)
            .arg(capacity_us)
            .arg(rate_want)
            .arg(if ask.day.is_some() { dl.min(i64::MAX as u64) } else { 0 })
            .arg(if ask.month.is_some() {
                ml.min(i64::MAX as u64)
            } else {
                0
            })
            .arg(ask.quota)
            .arg(day_adjust)
            .arg(month_adjust)
            .arg(ask.day.map_or(86_400, |(_, _, ttl)| ttl))
            .arg(ask.month.map_or(86_400, |(_, _, ttl)| ttl));
        let reply: Vec<i64> = self.call(invocation.invoke_async(&mut conn)).await?;
        let [rate, retry_us, rate_left, quota, day, month] = reply[..] else {
            return Err(StoreError::Reply(reply));
        };
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Grant {
            rate: u32::try_from(rate).unwrap_or(0),
            retry_us: n(retry_us),
            rate_left: u32::try_from(rate_left).unwrap_or(u32::MAX),
            quota: n(quota),
            day: n(day),
            month: n(month),
        })
    }

    /// Runs one Redis call under the timeout, keeping `up` and the metrics
    /// current.
    async fn call<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => {
                self.metrics.call("ok");
                self.set_up(true);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.metrics.call("error");
                self.set_up(false);
                Err(e.into())
            }
            Err(_) => {
                self.metrics.call("timeout");
                self.set_up(false);
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!("limit store reachable: limits are fleet-wide again");
            } else {
                tracing::warn!("limit store unreachable: serving on local limits");
            }
        }
        self.metrics.up.set(i64::from(up));
    }

    /// Connects if not connected yet.
    async fn connect(&self) -> Result<(), StoreError> {
        if self.conn.load().is_some() {
            return Ok(());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            self.timeout * 4,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout * 4))??;
        self.conn.store(Some(Arc::new(conn)));
        Ok(())
    }

    /// This replica's id in the fleet (host, process id, start time).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    fn summary_key(&self, id: &str) -> String {
        format!("{}:replica:{id}", self.prefix)
    }

    /// Publishes this replica's summary (a JSON object) for
    /// [`SUMMARY_TTL_MS`], or removes it (`None`, when leaving).
    async fn publish(&self, summary: Option<String>) -> Result<(), StoreError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::NotConnected);
        };
        let mut conn = (*conn).clone();
        let key = self.summary_key(&self.replica);
        let cmd = match summary {
            Some(text) => {
                let mut c = redis::cmd("SET");
                c.arg(key).arg(text).arg("PX").arg(SUMMARY_TTL_MS);
                c
            }
            None => {
                let mut c = redis::cmd("DEL");
                c.arg(key);
                c
            }
        };
        let _: redis::Value = self.call(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Shares this replica's `sample` under `topic` and returns every
    /// replica's sample under it that is at most `fresh` old by Redis'
    /// clock, this one's included (older ones are dropped): the fleet-wide
    /// view of a per-replica measurement, such as a rollout's window.
    pub async fn pool_samples(&self, topic: &str, sample: &str, fresh: Duration) -> Result<Vec<String>, StoreError> {
        self.connect().await?;
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::NotConnected);
        };
        let mut conn = (*conn).clone();
        let mut call = self.samples_script.prepare_invoke();
        call.key(format!("{}:samples:{topic}", self.prefix))
            .arg(&self.replica)
            .arg(sample)
            .arg(fresh.as_millis() as u64);
        self.call(call.invoke_async(&mut conn)).await
    }

    /// The live replicas (seen within the replica TTL, at most
    /// [`REPLICAS_LISTED`]), each with how long ago it reported (by Redis'
    /// clock) and its last published summary, if one is still there.
    pub async fn replicas_seen(&self) -> Result<Vec<ReplicaSeen>, StoreError> {
        self.connect().await?;
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::NotConnected);
        };
        let mut conn = (*conn).clone();
        let set = format!("{}:replicas", self.prefix);
        let (time, seen): ((u64, u64), Vec<(String, f64)>) = self
            .call(
                redis::pipe()
                    .cmd("TIME")
                    .cmd("ZREVRANGE")
                    .arg(&set)
                    .arg(0)
                    .arg(REPLICAS_LISTED - 1)
                    .arg("WITHSCORES")
                    .query_async(&mut conn),
            )
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let seen: Vec<(String, u64)> = seen
            .into_iter()
            .map(|(id, at)| (id, now_ms.saturating_sub(at as u64)))
            .filter(|(_, ago)| *ago <= REPLICA_TTL_MS)
            .collect();
        if seen.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &seen {
            pipe.cmd("GET").arg(self.summary_key(id));
        }
        let texts: Vec<Option<String>> = self.call(pipe.query_async(&mut conn)).await?;
        Ok(seen
            .into_iter()
            .zip(texts)
            .map(|((id, ago_ms), text)| ReplicaSeen {
                id,
                ago_ms,
                summary: text.and_then(|t| serde_json::from_str(&t).ok()),
            })
            .collect())
    }

    /// Reports this replica (or removes it, `leave`) and reads the count.
    async fn heartbeat(&self, leave: bool) -> Result<(), StoreError> {
        self.connect().await?;
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::NotConnected);
        };
        let mut conn = (*conn).clone();
        let mut invocation = self.replicas_script.prepare_invoke();
        invocation
            .key(format!("{}:replicas", self.prefix))
            .arg(&self.replica)
            .arg(REPLICA_TTL_MS)
            .arg(if leave { "1" } else { "0" });
        let n: u32 = self.call(invocation.invoke_async(&mut conn)).await?;
        let n = n.max(1);
        self.replicas.store(n, Ordering::Relaxed);
        self.metrics.replicas.set(i64::from(n));
        Ok(())
    }

    /// Adds counts admitted locally to Redis and gives back idle (or, at
    /// shutdown, all) quota leases.
    async fn settle(&self, book: &Book, all: bool) {
        let mono = SystemClock.mono_ns();
        let due = book.states_where(|s| {
            let lease = s.lease.lock().unwrap_or_else(|p| p.into_inner());
            lease.has_work(mono) || (all && lease.quota > 0)
        });
        for (id, state) in due {
            let _one = state.exchange.lock().await;
            let now = Timestamp::now();
            let ask = {
                let mut lease = state.lease.lock().unwrap_or_else(|p| p.into_inner());
                Ask::settle(&mut lease, &Limits::none(), now, true)
            };
            let result = self.exchange(&id, &ask).await;
            let mut lease = state.lease.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(grant) => lease.apply(&ask, &grant, &Limits::none(), mono),
                Err(e) => {
                    ask.restore(&mut lease);
                    tracing::debug!(tenant = &*id, error = %e, "quota counts not settled; retrying");
                    return;
                }
            }
        }
    }
}

impl Ask {
    /// Takes what is to be settled out of `lease`: counts admitted locally,
    /// and with `give_back` an idle quota lease. The periods' keys come from
    /// the lease's slots, so settling needs no limits.
    fn settle(lease: &mut Lease, limits: &Limits, now: Timestamp, give_back: bool) -> Ask {
        let slot = |s: &Slot, limit: Option<u64>, local: u64| {
            (limit.is_some() || local > 0 || s.counter.period != 0)
                .then(|| (limit.unwrap_or(u64::MAX / 2), s.counter.period, s.ttl(now)))
        };
        let returned = if give_back { std::mem::take(&mut lease.quota) } else { 0 };
        let (day_local, month_local) = (
            std::mem::take(&mut lease.day.local),
            std::mem::take(&mut lease.month.local),
        );
        Ask {
            rate: None,
            quota: 0,
            day: slot(&lease.day, limits.per_day, day_local + returned),
            month: slot(&lease.month, limits.per_month, month_local + returned),
            day_local,
            month_local,
            returned,
        }
    }

    /// Puts back what [`Ask::settle`] took, after a failed call.
    fn restore(&self, lease: &mut Lease) {
        lease.day.local += self.day_local;
        lease.month.local += self.month_local;
        lease.quota += self.returned;
    }
}

impl Lease {
    /// Takes a grant in.
    fn apply(&mut self, ask: &Ask, g: &Grant, limits: &Limits, mono: u64) {
        if let Some((_, want)) = ask.rate {
            if g.rate > 0 {
                if mono >= self.rate_until {
                    self.rate = 0;
                }
                self.rate += g.rate;
                self.rate_until = mono + RATE_LEASE_TTL_NS;
                self.rate_left = g.rate_left;
                self.rate_refused_until = 0;
            } else if want > 0 && (self.rate == 0 || mono >= self.rate_until) {
                self.rate_refused_until = mono + g.retry_us * 1_000;
            }
        }
        if ask.day.is_some() {
            self.day.counter.count = g.day;
        }
        if ask.month.is_some() {
            self.month.counter.count = g.month;
        }
        self.quota += g.quota;
        if ask.quota > 0 && g.quota == 0 && self.quota == 0 {
            // Used up: refuse locally until the period that ran out ends.
            let day_out = limits.per_day.is_some_and(|l| g.day >= l);
            let (violation, slot) = if day_out {
                (Violation::Day, &self.day)
            } else {
                (Violation::Month, &self.month)
            };
            self.quota_refused = Some((violation, slot.counter.ends_at));
        }
    }
}

/// One live replica, as `Fleet::replicas_seen` lists it.
#[derive(Debug, Clone)]
pub struct ReplicaSeen {
    pub id: String,
    /// Milliseconds since it last reported, by Redis' clock.
    pub ago_ms: u64,
    /// Its last summary (a JSON object), unless it expired.
    pub summary: Option<serde_json::Value>,
}

/// Makes this replica's summary (a JSON object) to publish.
pub type Summary = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The pingora background service of fleet mode: connects, reports this
/// replica (and every [`SUMMARY_EVERY`] heartbeats its summary), settles
/// quota counts, and probes a store that is down.
pub struct FleetSync {
    pub fleet: Arc<Fleet>,
    pub book: Arc<Book>,
    pub summary: Option<Summary>,
}

#[async_trait]
impl BackgroundService for FleetSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.fleet.settle(&self.book, true).await;
                    let _ = self.fleet.heartbeat(true).await;
                    if self.summary.is_some() {
                        let _ = self.fleet.publish(None).await;
                    }
                    return;
                }
                _ = tick.tick() => {
                    match self.fleet.heartbeat(false).await {
                        Ok(()) => {
                            if let Some(summary) = self.summary.as_ref().filter(|_| beats.is_multiple_of(SUMMARY_EVERY)) {
                                let text = summary().to_string();
                                if let Err(e) = self.fleet.publish(Some(text)).await {
                                    tracing::debug!(error = %e, "publishing the replica summary failed");
                                }
                            }
                            beats = beats.wrapping_add(1);
                            self.fleet.settle(&self.book, false).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "limit store heartbeat failed"),
                    }
                }
            }
        }
    }
}
