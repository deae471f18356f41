//! Fleet mode for the domain lifecycle: claims, tokens, check schedules,
//! `moved` states, the event log and webhook positions live in Redis, so
//! every replica of one `[store]` agrees and one replica runs the checks.
//!
//! ```text
//! <prefix>:{domains}:claims   hash  name → JSON list of claims (state, token, last/next check)
//! <prefix>:{domains}:moved    hash  name → JSON [since, moved]
//! <prefix>:{domains}:version  counter, bumped by every change above
//! <prefix>:{domains}:events   stream, ids <seq>-0, at most ~10,000 entries
//! <prefix>:{domains}:seq      the last event's sequence number
//! <prefix>:{domains}:leader   the checker lease, <replica>:<fence>
//! <prefix>:{domains}:fence    the fence counter
//! <prefix>:{domains}:hooks    hash  webhook URL → last delivered sequence
//! <prefix>:domains            channel: "c <version>" and "e <seq>"
//! ```
//!
//! - **Claims.** A change reads the name's list, applies the same operation
//!   as single-node mode (`claim_in`, `settle_in`, …) and writes it back with
//!   a compare-and-set script that bumps the version and publishes it; a
//!   lost race is retried on the fresh list. Every replica keeps a copy
//!   (its `domain-claims.json`, last-known-good with Redis down), replaced
//!   when the version changes (notification, or the check every second).
//! - **One checker.** Scheduled checks, expiry, the re-verification of
//!   active names, the events of registry changes and webhook deliveries run
//!   on the replica holding the checker lease (`SET NX PX`, renewed every
//!   third of `[store] lease_secs`). Its writes carry the lease's value and
//!   are refused once another replica holds it (fencing), so a replica that
//!   stalled or died hands over after `lease_secs` without overwriting its
//!   successor.
//! - **Events.** Any replica appends (one script: next sequence number,
//!   `XADD` with a bounded length, publish); every replica mirrors the
//!   stream into its local log, which `GET /v1/events` reads, so every
//!   replica answers the same sequence. Events emitted while Redis is down
//!   wait in memory and are appended when it answers.
//!
//! Nothing here runs on the request path.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex as SyncMutex;
use std::time::Duration;

use futures_util::StreamExt;
use pingora_core::server::ShutdownWatch;
use redis::aio::ConnectionManager;
use redis::Script;

use super::events::Event;
use super::verifier::Lifecycle;
use super::{Claim, ClaimError};
use crate::config::Store;
use crate::store::{BoundedRedis, CallError};

/// Bound on one Redis call of the lifecycle.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Events kept in the stream (approximately; `MAXLEN ~`).
pub const STREAM_LEN: u64 = 10_000;
/// Tries of a claim change that keeps losing races.
const CAS_TRIES: usize = 16;

/// Why a call to the domain store failed.
#[derive(Debug, thiserror::Error)]
pub enum DomainStoreError {
    #[error("domain store (Redis) unreachable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("domain store (Redis) unreachable: no answer in {} s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("this replica no longer holds the domain checker lease")]
    Fenced,
    #[error("the claims on {0} kept changing under this write ({CAS_TRIES} tries)")]
    Contended(String),
    #[error("the domain store holds unreadable data at {0}: {1}")]
    Corrupt(String, String),
}

impl From<CallError> for DomainStoreError {
    fn from(e: CallError) -> DomainStoreError {
        match e {
            CallError::Redis(e) => DomainStoreError::Redis(e),
            CallError::Timeout(_) => DomainStoreError::Timeout,
        }
    }
}

impl From<DomainStoreError> for ClaimError {
    fn from(e: DomainStoreError) -> ClaimError {
        match e {
            DomainStoreError::Fenced => ClaimError::Fenced,
            e => ClaimError::Unreachable(e.to_string()),
        }
    }
}

/// Replaces the claims of one name if they are still what the caller read,
/// and (for the checker) only while it holds the lease.
/// KEYS: claims, version, leader. ARGV: name, expected ('' = none), new
/// ('' = delete), channel, lease value ('' = not fenced).
/// Returns the new version, -1 on a lost race, -2 when fenced out.
const CAS_LUA: &str = r#"
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return -2 end
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if cur ~= ARGV[2] then return -1 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], 'c ' .. v)
return v
"#;

/// Sets (or with '' deletes) one name's moved state, for the lease holder.
/// KEYS: moved, version, leader. ARGV: name, value, channel, lease value.
const MOVED_LUA: &str = r#"
if redis.call('GET', KEYS[3]) ~= ARGV[4] then return -2 end
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], 'c ' .. v)
return v
"#;

/// The version, every claim and every moved state in one step.
/// KEYS: version, claims, moved.
const READ_LUA: &str = r#"
return {tonumber(redis.call('GET', KEYS[1]) or 0), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
"#;

/// Seeds an empty store with a replica's claims. KEYS: version, claims.
/// ARGV: name, JSON, name, JSON, …. Returns 1 when seeded.
const SEED_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[1], 1)
return 1
"#;

/// Appends one event. KEYS: seq, events. ARGV: max length, channel, time,
/// type, tenant, name, detail ('' = none). Returns its sequence number.
const EMIT_LUA: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local f = {'time', ARGV[3], 'type', ARGV[4]}
if ARGV[5] ~= '' then f[#f + 1] = 'tenant'; f[#f + 1] = ARGV[5] end
if ARGV[6] ~= '' then f[#f + 1] = 'name'; f[#f + 1] = ARGV[6] end
if ARGV[7] ~= '' then f[#f + 1] = 'detail'; f[#f + 1] = ARGV[7] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0', unpack(f))
redis.call('PUBLISH', ARGV[2], 'e ' .. seq)
return seq
"#;

/// Renews the lease `KEYS[1]` for `ARGV[2]` ms if it still holds `ARGV[1]`.
const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"#;

/// Records a webhook position (never backwards) for the lease holder.
/// KEYS: hooks, leader. ARGV: url, seq, lease value.
const POSITION_LUA: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return -2 end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or 0)
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"#;

struct Keys {
    claims: String,
    moved: String,
    version: String,
    events: String,
    seq: String,
    leader: String,
    fence: String,
    hooks: String,
    channel: String,
}

/// Everything the store holds of the lifecycle but the events.
pub struct Shared {
    pub version: u64,
    pub claims: BTreeMap<String, Vec<Claim>>,
    pub moved: BTreeMap<String, (u64, bool)>,
}

/// One replica's handle on the fleet's domain state.
pub struct DomainStore {
    redis: BoundedRedis,
    keys: Keys,
    replica: String,
    /// How long the checker lease lasts without renewal.
    pub lease: Duration,
    cas: Script,
    moved: Script,
    read: Script,
    seed: Script,
    emit: Script,
    renew: Script,
    position: Script,
    /// The checker lease's value while this replica holds it.
    held: SyncMutex<Option<String>>,
    leader: AtomicBool,
    up: AtomicBool,
    /// The version of the claims this replica has.
    synced: AtomicU64,
    /// Why the last call failed, while the store is down.
    last_error: SyncMutex<Option<String>>,
}

impl DomainStore {
    /// The domain state of `store`; connects on first use.
    pub fn new(store: &Store) -> Result<DomainStore, DomainStoreError> {
        let prefix = &store.key_prefix;
        let k = |s: &str| format!("{prefix}:{{domains}}:{s}");
        let mut id = [0u8; 6];
        if getrandom::fill(&mut id).is_err() {
            id = super::now().to_le_bytes()[..6].try_into().unwrap_or([0; 6]);
        }
        Ok(DomainStore {
            redis: BoundedRedis::new(store.client()?, CALL_TIMEOUT),
            keys: Keys {
                claims: k("claims"),
                moved: k("moved"),
                version: k("version"),
                events: k("events"),
                seq: k("seq"),
                leader: k("leader"),
                fence: k("fence"),
                hooks: k("hooks"),
                channel: format!("{prefix}:domains"),
            },
            replica: format!(
                "{}-{}",
                std::process::id(),
                id.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
            lease: store.lease,
            cas: Script::new(CAS_LUA),
            moved: Script::new(MOVED_LUA),
            read: Script::new(READ_LUA),
            seed: Script::new(SEED_LUA),
            emit: Script::new(EMIT_LUA),
            renew: Script::new(RENEW_LUA),
            position: Script::new(POSITION_LUA),
            held: SyncMutex::new(None),
            leader: AtomicBool::new(false),
            up: AtomicBool::new(true),
            synced: AtomicU64::new(0),
            last_error: SyncMutex::new(None),
        })
    }

    /// Runs one bounded call, recording whether the store answered.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, DomainStoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = self.redis.call(f).await.map_err(DomainStoreError::from);
        let down = matches!(&result, Err(DomainStoreError::Redis(_) | DomainStoreError::Timeout));
        if let Ok(mut last) = self.last_error.lock() {
            match (&result, down) {
                (Err(e), true) => *last = Some(e.to_string()),
                (_, false) => *last = None,
                _ => {}
            }
        }
        let was = self.up.swap(!down, Ordering::AcqRel);
        if was && down {
            if let Err(e) = &result {
                tracing::warn!(error = %e, "domain store unreachable: serving the last-known domain states; checks pause");
            }
            // Nobody can prove it still holds the lease: stop acting on it.
            self.leader.store(false, Ordering::Release);
        } else if !was && !down {
            tracing::info!("domain store reachable again");
        }
        if down {
            // A broken connection is opened afresh next time.
            self.redis.reset().await;
        }
        result
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Why the store is unreachable (the last failed call), while it is.
    pub fn unreachable(&self) -> Option<String> {
        if self.is_up() {
            return None;
        }
        self.last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .or_else(|| Some("no answer".into()))
    }

    /// Whether this replica holds the checker lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// This replica's name in leases.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn lease_value(&self) -> Option<String> {
        self.held.lock().ok().and_then(|h| h.clone())
    }

    /// Takes or renews the checker lease; whether this replica holds it.
    pub async fn lead(&self) -> bool {
        let ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let held = self.lease_value();
        let result = match held {
            Some(value) => {
                let mut call = self.renew.prepare_invoke();
                call.key(&self.keys.leader).arg(&value).arg(ms);
                self.call(|mut c| async move { call.invoke_async::<i64>(&mut c).await })
                    .await
                    .map(|n| (n == 1).then_some(value))
            }
            None => {
                let fence_key = self.keys.fence.clone();
                let leader_key = self.keys.leader.clone();
                let replica = self.replica.clone();
                self.call(|mut c| async move {
                    let fence: u64 = redis::cmd("INCR").arg(&fence_key).query_async(&mut c).await?;
                    let value = format!("{replica}:{fence}");
                    let got: Option<String> = redis::cmd("SET")
                        .arg(&leader_key)
                        .arg(&value)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async(&mut c)
                        .await?;
                    Ok(got.map(|_| value))
                })
                .await
            }
        };
        let now = match result {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "checker lease");
                None
            }
        };
        let was = self.leader.swap(now.is_some(), Ordering::AcqRel);
        if let Ok(mut h) = self.held.lock() {
            if !was && now.is_some() {
                tracing::info!(replica = %self.replica, lease = ?now, "this replica now runs the domain checks");
            } else if was && now.is_none() {
                tracing::warn!(replica = %self.replica, "this replica no longer runs the domain checks (lease lost)");
            }
            *h = now;
        }
        self.is_leader()
    }

    /// The fencing value for a write of the checker (`''` for any replica).
    fn fence(&self, fenced: bool) -> Result<String, DomainStoreError> {
        if !fenced {
            return Ok(String::new());
        }
        match (self.is_leader(), self.lease_value()) {
            (true, Some(v)) => Ok(v),
            _ => Err(DomainStoreError::Fenced),
        }
    }

    /// Applies `f` to the claims on `name` as the store holds them, and
    /// writes them back if they changed; `fenced` for the checker's writes.
    /// Returns `f`'s result and the list now stored.
    pub async fn update<R>(
        &self,
        name: &str,
        fenced: bool,
        mut f: impl FnMut(&mut Vec<Claim>) -> R,
    ) -> Result<(R, Vec<Claim>), DomainStoreError> {
        let fence = self.fence(fenced)?;
        for _ in 0..CAS_TRIES {
            let (key, field) = (self.keys.claims.clone(), name.to_string());
            let current: Option<String> = self
                .call(|mut c| async move { redis::cmd("HGET").arg(&key).arg(&field).query_async(&mut c).await })
                .await?;
            let current = current.unwrap_or_default();
            let mut list: Vec<Claim> = if current.is_empty() {
                Vec::new()
            } else {
                serde_json::from_str(&current)
                    .map_err(|e| DomainStoreError::Corrupt(name.to_string(), e.to_string()))?
            };
            let before = list.clone();
            let r = f(&mut list);
            if list == before {
                return Ok((r, list));
            }
            let new = if list.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&list).map_err(|e| DomainStoreError::Corrupt(name.to_string(), e.to_string()))?
            };
            let mut call = self.cas.prepare_invoke();
            call.key(&self.keys.claims)
                .key(&self.keys.version)
                .key(&self.keys.leader)
                .arg(name)
                .arg(&current)
                .arg(&new)
                .arg(&self.keys.channel)
                .arg(&fence);
            let v: i64 = self
                .call(|mut c| async move { call.invoke_async(&mut c).await })
                .await?;
            match v {
                -2 => {
                    self.leader.store(false, Ordering::Release);
                    return Err(DomainStoreError::Fenced);
                }
                -1 => continue,
                _ => return Ok((r, list)),
            }
        }
        Err(DomainStoreError::Contended(name.to_string()))
    }

    /// Records `name`'s moved state (`None` clears it); the checker only.
    pub async fn set_moved(&self, name: &str, state: Option<(u64, bool)>) -> Result<(), DomainStoreError> {
        let fence = self.fence(true)?;
        let value = match state {
            Some(s) => {
                serde_json::to_string(&s).map_err(|e| DomainStoreError::Corrupt(name.to_string(), e.to_string()))?
            }
            None => String::new(),
        };
        let mut call = self.moved.prepare_invoke();
        call.key(&self.keys.moved)
            .key(&self.keys.version)
            .key(&self.keys.leader)
            .arg(name)
            .arg(value)
            .arg(&self.keys.channel)
            .arg(&fence);
        let v: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        if v == -2 {
            self.leader.store(false, Ordering::Release);
            return Err(DomainStoreError::Fenced);
        }
        Ok(())
    }

    /// The store's version of the claims.
    pub async fn version(&self) -> Result<u64, DomainStoreError> {
        let key = self.keys.version.clone();
        let v: Option<u64> = self
            .call(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// The version this replica's copy matches.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    pub fn set_synced(&self, v: u64) {
        self.synced.store(v, Ordering::Release);
    }

    /// Every claim and moved state, with the version.
    pub async fn read(&self) -> Result<Shared, DomainStoreError> {
        let mut call = self.read.prepare_invoke();
        call.key(&self.keys.version)
            .key(&self.keys.claims)
            .key(&self.keys.moved);
        let (version, claims, moved): (u64, Vec<String>, Vec<String>) = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        let mut out = Shared {
            version,
            claims: BTreeMap::new(),
            moved: BTreeMap::new(),
        };
        for (name, json) in pairs(claims) {
            match serde_json::from_str::<Vec<Claim>>(&json) {
                Ok(list) => {
                    out.claims.insert(name, list);
                }
                Err(e) => tracing::error!(domain = %name, error = %e, "unreadable claims in the domain store; skipped"),
            }
        }
        for (name, json) in pairs(moved) {
            if let Ok(m) = serde_json::from_str::<(u64, bool)>(&json) {
                out.moved.insert(name, m);
            }
        }
        Ok(out)
    }

    /// Seeds an empty store with `claims` (this replica's copy, e.g. from
    /// single-node mode); whether it did.
    pub async fn seed(&self, claims: &BTreeMap<String, Vec<Claim>>) -> Result<bool, DomainStoreError> {
        let mut call = self.seed.prepare_invoke();
        call.key(&self.keys.version).key(&self.keys.claims);
        for (name, list) in claims {
            if let Ok(json) = serde_json::to_string(list) {
                call.arg(name).arg(json);
            }
        }
        let n: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(n == 1)
    }

    /// Appends one event; returns its sequence number.
    pub async fn emit(&self, e: &Event) -> Result<u64, DomainStoreError> {
        let mut call = self.emit.prepare_invoke();
        call.key(&self.keys.seq)
            .key(&self.keys.events)
            .arg(STREAM_LEN)
            .arg(&self.keys.channel)
            .arg(e.time)
            .arg(&e.kind)
            .arg(e.tenant.as_deref().unwrap_or(""))
            .arg(e.name.as_deref().unwrap_or(""))
            .arg(e.detail.as_deref().unwrap_or(""));
        self.call(|mut c| async move { call.invoke_async(&mut c).await }).await
    }

    /// The last event's sequence number.
    pub async fn last_seq(&self) -> Result<u64, DomainStoreError> {
        let key = self.keys.seq.clone();
        let v: Option<u64> = self
            .call(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Up to `count` events after `after`, in order.
    pub async fn events_after(&self, after: u64, count: usize) -> Result<Vec<Event>, DomainStoreError> {
        let key = self.keys.events.clone();
        let start = format!("{}-0", after.saturating_add(1));
        let reply: Vec<(String, Vec<String>)> = self
            .call(|mut c| async move {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(reply.len());
        for (id, flat) in reply {
            let Some(seq) = id.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            let fields: HashMap<String, String> = pairs(flat).collect();
            let field = |k: &str| -> Option<String> { fields.get(k).cloned() };
            out.push(Event {
                seq,
                time: field("time").and_then(|t| t.parse().ok()).unwrap_or(0),
                kind: field("type").unwrap_or_default(),
                tenant: field("tenant"),
                name: field("name"),
                detail: field("detail"),
            });
        }
        Ok(out)
    }

    /// Every receiver's last delivered sequence.
    pub async fn positions(&self) -> Result<HashMap<String, u64>, DomainStoreError> {
        let key = self.keys.hooks.clone();
        self.call(|mut c| async move { redis::cmd("HGETALL").arg(&key).query_async(&mut c).await })
            .await
    }

    /// Records `seq` as a receiver's position unless it has one: any
    /// replica, at its start, so a receiver new to the fleet starts with
    /// the events after the fleet's start, not after whenever a checker
    /// first took the lease (events in between were skipped).
    pub async fn start_position(&self, url: &str, seq: u64) -> Result<(), DomainStoreError> {
        let (key, url) = (self.keys.hooks.clone(), url.to_string());
        self.call(|mut c| async move {
            redis::cmd("HSETNX")
                .arg(&key)
                .arg(&url)
                .arg(seq)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Records a receiver's position; the checker only.
    pub async fn save_position(&self, url: &str, seq: u64) -> Result<(), DomainStoreError> {
        let fence = self.fence(true)?;
        let mut call = self.position.prepare_invoke();
        call.key(&self.keys.hooks)
            .key(&self.keys.leader)
            .arg(url)
            .arg(seq)
            .arg(&fence);
        let v: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        if v == -2 {
            self.leader.store(false, Ordering::Release);
            return Err(DomainStoreError::Fenced);
        }
        Ok(())
    }

    /// Subscribes to the change channel (bounded).
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub, DomainStoreError> {
        let connect = async {
            let mut ps = self.redis.client().get_async_pubsub().await?;
            ps.subscribe(&self.keys.channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(CALL_TIMEOUT, connect).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(DomainStoreError::Timeout),
        }
    }
}

/// A flat Redis reply `[field, value, …]` as pairs.
fn pairs(flat: Vec<String>) -> impl Iterator<Item = (String, String)> {
    let mut it = flat.into_iter();
    std::iter::from_fn(move || Some((it.next()?, it.next()?)))
}

impl DomainStore {
    /// Gives the checker lease up (at shutdown), so another replica takes
    /// it at once instead of after `lease_secs`.
    pub async fn release(&self) {
        let Some(value) = self.lease_value() else { return };
        let mut call = self.renew.prepare_invoke();
        call.key(&self.keys.leader).arg(&value).arg(1);
        let _ = self
            .call(|mut c| async move { call.invoke_async::<i64>(&mut c).await })
            .await;
        self.leader.store(false, Ordering::Release);
    }
}

/// Keeps the checker lease: tries to take it, or renews it, every third of
/// `lease_secs`, until `shutdown` (then gives it up).
pub async fn lead(lifecycle: Arc<Lifecycle>, mut shutdown: ShutdownWatch) {
    let Some(store) = lifecycle.store().cloned() else {
        return;
    };
    let every = (store.lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                store.release().await;
                return;
            }
            _ = tick.tick() => {}
        }
        store.lead().await;
        lifecycle.checker_gauge();
    }
}

/// Keeps this replica's copy of the shared state current: appends the
/// events emitted here to the shared log, replaces the claims and moved
/// states when their version changes, and mirrors the shared event log.
/// Runs on notifications and every second, until `shutdown`.
pub async fn sync(lifecycle: Arc<Lifecycle>, mut shutdown: ShutdownWatch) {
    let Some(store) = lifecycle.store().cloned() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut notes: Option<redis::aio::PubSub> = None;
    let mut seeded = false;
    loop {
        if notes.is_none() {
            notes = store.subscribe().await.ok();
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
            _ = lifecycle.events.queued.notified() => {}
            note = next(&mut notes) => {
                if note.is_none() {
                    notes = None;
                }
            }
        }
        push_events(&store, &lifecycle).await;
        if !seeded {
            seeded = seed(&store, &lifecycle).await;
        }
        if let Err(e) = pull_claims(&store, &lifecycle).await {
            tracing::debug!(error = %e, "domain store sync");
        }
        if let Err(e) = pull_events(&store, &lifecycle).await {
            tracing::debug!(error = %e, "domain event sync");
        }
        lifecycle.store_gauge(store.is_up());
    }
}

/// Appends the queued events to the shared log, in order; what Redis does
/// not take waits for the next round.
async fn push_events(store: &DomainStore, lifecycle: &Lifecycle) {
    let out = lifecycle.events.take_outbox();
    for (i, e) in out.iter().enumerate() {
        if let Err(err) = store.emit(e).await {
            tracing::debug!(error = %err, "events wait for the domain store");
            lifecycle.events.requeue(out[i..].to_vec());
            return;
        }
    }
}

/// An empty store gets this replica's claims (from single-node mode, or a
/// Redis that lost its data). Whether the store was reached.
async fn seed(store: &DomainStore, lifecycle: &Lifecycle) -> bool {
    match store.version().await {
        Ok(0) => {
            let mine = lifecycle.claims.by_name();
            match store.seed(&mine).await {
                Ok(true) => {
                    tracing::info!(
                        names = mine.len(),
                        "domain store was empty: seeded it with this replica's claims"
                    );
                    true
                }
                Ok(false) => true,
                Err(_) => false,
            }
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

async fn pull_claims(store: &DomainStore, lifecycle: &Arc<Lifecycle>) -> Result<(), DomainStoreError> {
    let v = store.version().await?;
    if v == store.synced() {
        return Ok(());
    }
    let shared = store.read().await?;
    lifecycle.claims.replace(shared.claims);
    lifecycle.replace_moved(shared.moved);
    store.set_synced(shared.version);
    // The copy on disk is this replica's last-known-good.
    lifecycle.save().await;
    Ok(())
}

async fn pull_events(store: &DomainStore, lifecycle: &Lifecycle) -> Result<(), DomainStoreError> {
    let events = &lifecycle.events;
    let shared = store.last_seq().await?;
    if shared < events.last() {
        tracing::warn!(
            shared,
            local = events.last(),
            "the shared event log is behind this replica's copy (Redis lost its data?); following it from the start"
        );
        events.reset();
    }
    while events.last() < shared {
        let page = store.events_after(events.last(), 1000).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            // Trimmed past this copy: start at the oldest kept.
            break;
        };
        events.ingest(page);
        if last >= shared {
            break;
        }
    }
    Ok(())
}

/// The next notification; pending forever while unsubscribed.
async fn next(notes: &mut Option<redis::aio::PubSub>) -> Option<redis::Msg> {
    match notes {
        Some(ps) => ps.on_message().next().await,
        None => std::future::pending().await,
    }
}
