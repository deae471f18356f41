//! Fleet mode for the registry: the tenant files live in Redis, shared by
//! every replica.
//!
//! Redis holds `<prefix>:{registry}:files` (a hash: `tenants/<id>` and
//! `templates/<name>`, `rollouts/<name>` → the file's text), `<prefix>:{registry}:version`, and
//! `<prefix>:{registry}:log`, a stream of the fields each version changed,
//! so a replica one or a few versions behind reads only those. A write takes the
//! fleet's write lock, brings this replica up to the store's version, is
//! validated like any load, and commits its changed files with one Lua
//! script that checks the version, bumps it and publishes it on
//! `<prefix>:registry`. Every replica applies a new version when told, and
//! checks the version every second in case a message was lost.
//!
//! The main file stays per replica (listeners, pools, plans, tokens). Each
//! replica keeps the registry it last applied as its `tenants/` files: it
//! starts and serves from them while Redis is unreachable, and Redis wins
//! when it answers again. An empty store is seeded from the first replica's
//! files.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use redis::{Connection, Script};

use super::write::Batch;
use super::Registry;
use crate::config::{LoadError, Store, Texts};
use crate::telemetry::RegistryStoreMetrics;

/// Bound on one registry call to Redis (reads may carry every tenant file).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write lock lasts if its holder dies.
const LOCK_TTL_MS: u64 = 30_000;
/// How long a write waits for another replica's write.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often each replica checks the store's version, besides notifications.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Bound on connecting the notification channel.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many versions the change log keeps; a replica further behind reads
/// every file.
const LOG_LEN: u64 = 1000;

/// Commits changed files if the version is still the one they were based on,
/// and logs which fields the new version changed.
/// KEYS: version, files, log. ARGV: expected version, channel, log length,
/// then triples of op (`+` set, `-` delete), field, text.
/// Returns the new version, or -1.
const COMMIT_LUA: &str = r#"
local v = tonumber(redis.call('GET', KEYS[1]) or 0)
if v ~= tonumber(ARGV[1]) then return -1 end
local names = {}
for i = 4, #ARGV, 3 do
  if ARGV[i] == '+' then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
  end
  names[#names + 1] = ARGV[i + 1]
end
v = redis.call('INCR', KEYS[1])
if #names <= 1000 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'v', v, 'f', table.concat(names, ' '))
else
  -- A bulk change: readers take every file.
  redis.call('DEL', KEYS[3])
end
redis.call('PUBLISH', ARGV[2], v)
return v
"#;

/// The files changed since version `ARGV[1]`, from the change log, in one
/// step. KEYS: version, files, log. Returns {version, 1, {field, text, …},
/// {deleted field, …}}, or {version, 0, {}, {}} when the log does not cover
/// every version since (then read every file).
const READ_SINCE_LUA: &str = r#"
local v = tonumber(redis.call('GET', KEYS[1]) or 0)
local since = tonumber(ARGV[1])
local n = v - since
if since == 0 or n <= 0 or n > 1000 then return {v, 0, {}, {}} end
local entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', n)
if #entries ~= n then return {v, 0, {}, {}} end
local seen, put, del = {}, {}, {}
for _, e in ipairs(entries) do
  local f, ver, names = e[2], nil, ''
  for j = 1, #f, 2 do
    if f[j] == 'v' then ver = tonumber(f[j + 1]) elseif f[j] == 'f' then names = f[j + 1] end
  end
  if ver == nil or ver <= since or ver > v then return {v, 0, {}, {}} end
  for name in string.gmatch(names, '%S+') do
    if not seen[name] then
      seen[name] = true
      local text = redis.call('HGET', KEYS[2], name)
      if text then
        put[#put + 1] = name
        put[#put + 1] = text
      else
        del[#del + 1] = name
      end
    end
  end
end
return {v, 1, put, del}
"#;

/// The version and every file, read in one step. KEYS: version, files.
const READ_LUA: &str = r#"
return {tonumber(redis.call('GET', KEYS[1]) or 0), redis.call('HGETALL', KEYS[2])}
"#;

/// Releases the write lock if this writer still holds it. KEYS: lock. ARGV: token.
const UNLOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Why the shared registry could not be read or written. Logged; an admin
/// client sees a 503 without the details.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry store (Redis): {0}")]
    Redis(#[from] redis::RedisError),
    #[error("another replica held the registry write lock for over {0:?}")]
    Busy(Duration),
    #[error("the shared registry changed during this write; nothing was applied")]
    Conflict,
    #[error("the shared registry (version {0}) was refused on this replica; see the log for why")]
    Refused(u64),
    #[error("the shared registry (version {version}) does not load on this replica: {error}")]
    Rejected {
        version: u64,
        #[source]
        error: Box<LoadError>,
    },
}

impl StoreError {
    /// True when Redis did not answer (as opposed to answering "no").
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Redis(_))
    }
}

/// One shared file: its field (`tenants/<id>`) and text, `None` once deleted.
type Field = (String, Option<String>);

/// Redis keys of the registry.
struct Keys {
    version: String,
    files: String,
    log: String,
    lock: String,
    channel: String,
}

/// The shared registry in Redis, as one replica reaches it. Every call is
/// blocking: use it from blocking threads (registry writes and syncs are).
pub struct RegistryStore {
    client: redis::Client,
    keys: Keys,
    conn: Mutex<Option<Connection>>,
    commit: Script,
    read: Script,
    read_since: Script,
    unlock: Script,
    /// The store version the live tenant files match; 0 when the store was
    /// empty or not reached yet. Changed only under the registry's writer lock.
    synced: AtomicU64,
    /// The last version refused here, so that it is logged once.
    refused: AtomicU64,
    up: AtomicBool,
    token_seq: AtomicU64,
    pub metrics: RegistryStoreMetrics,
}

/// A held fleet write lock, released on drop.
pub struct WriteLock<'a> {
    store: &'a RegistryStore,
    token: String,
}

impl Drop for WriteLock<'_> {
    fn drop(&mut self) {
        let mut call = self.store.unlock.prepare_invoke();
        call.key(&self.store.keys.lock).arg(&self.token);
        if let Err(e) = self.store.call(|c| call.invoke::<i64>(c)) {
            tracing::warn!(error = %e, "cannot release the registry write lock; it lapses by itself");
        }
    }
}

impl RegistryStore {
    /// The registry store of `store`; connects on first use.
    pub fn new(store: &Store, metrics: RegistryStoreMetrics) -> Result<RegistryStore, StoreError> {
        let prefix = &store.key_prefix;
        Ok(RegistryStore {
            client: store.client()?,
            keys: Keys {
                version: format!("{prefix}:{{registry}}:version"),
                files: format!("{prefix}:{{registry}}:files"),
                log: format!("{prefix}:{{registry}}:log"),
                lock: format!("{prefix}:{{registry}}:lock"),
                channel: format!("{prefix}:registry"),
            },
            conn: Mutex::new(None),
            commit: Script::new(COMMIT_LUA),
            read: Script::new(READ_LUA),
            read_since: Script::new(READ_SINCE_LUA),
            unlock: Script::new(UNLOCK_LUA),
            synced: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            up: AtomicBool::new(false),
            token_seq: AtomicU64::new(0),
            metrics,
        })
    }

    /// Runs `f` on the connection, opening it first if needed; a failed call
    /// drops the connection so that the next one reconnects.
    fn call<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut conn = match guard.take() {
            Some(c) => c,
            None => {
                let c = self.client.get_connection_with_timeout(CALL_TIMEOUT)?;
                c.set_read_timeout(Some(CALL_TIMEOUT))?;
                c.set_write_timeout(Some(CALL_TIMEOUT))?;
                c
            }
        };
        let value = f(&mut conn)?;
        *guard = Some(conn);
        Ok(value)
    }

    /// The store's version (0 for an empty store).
    pub fn version(&self) -> Result<u64, StoreError> {
        let v: Option<u64> = self.call(|c| redis::cmd("GET").arg(&self.keys.version).query(c))?;
        Ok(v.unwrap_or(0))
    }

    /// The version the live tenant files match.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    pub(super) fn set_synced(&self, version: u64) {
        self.synced.store(version, Ordering::Release);
        self.metrics.version.set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// Lets the next sync try a version refused before.
    pub(super) fn forget_refusal(&self) {
        self.refused.store(0, Ordering::Release);
    }

    /// Waits for the fleet's write lock (at most [`LOCK_WAIT`]).
    pub fn lock(&self) -> Result<WriteLock<'_>, StoreError> {
        let seq = self.token_seq.fetch_add(1, Ordering::Relaxed);
        let token = format!(
            "{}-{}-{seq}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        );
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let got: Option<String> = self.call(|c| {
                redis::cmd("SET")
                    .arg(&self.keys.lock)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL_MS)
                    .query(c)
            })?;
            if got.is_some() {
                return Ok(WriteLock { store: self, token });
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Busy(LOCK_WAIT));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The version and every file.
    fn read_all(&self) -> Result<(u64, Vec<Field>), StoreError> {
        let mut call = self.read.prepare_invoke();
        call.key(&self.keys.version).key(&self.keys.files);
        let (version, flat): (u64, Vec<String>) = self.call(|c| call.invoke(c))?;
        Ok((version, pairs(flat).collect()))
    }

    /// The fields changed since `since` (text, or `None` when deleted), if
    /// the change log covers every version since.
    fn read_since(&self, since: u64) -> Result<(u64, Option<Vec<Field>>), StoreError> {
        let mut call = self.read_since.prepare_invoke();
        call.key(&self.keys.version)
            .key(&self.keys.files)
            .key(&self.keys.log)
            .arg(since);
        let (version, complete, put, del): (u64, u8, Vec<String>, Vec<String>) = self.call(|c| call.invoke(c))?;
        if complete == 0 {
            return Ok((version, None));
        }
        let changes = pairs(put).chain(del.into_iter().map(|k| (k, None))).collect();
        Ok((version, Some(changes)))
    }

    /// Commits the tenant and template files of `batch`, based on
    /// `expected`; returns the new version.
    fn commit(&self, expected: u64, batch: &Batch) -> Result<u64, StoreError> {
        let mut call = self.commit.prepare_invoke();
        call.key(&self.keys.version)
            .key(&self.keys.files)
            .key(&self.keys.log)
            .arg(expected)
            .arg(&self.keys.channel)
            .arg(LOG_LEN);
        for (folder, change) in [
            ("tenants", &batch.tenants),
            ("templates", &batch.templates),
            ("rollouts", &batch.rollouts),
        ] {
            for (stem, text) in &change.put {
                call.arg("+").arg(format!("{folder}/{stem}")).arg(text);
            }
            for stem in &change.delete {
                call.arg("-").arg(format!("{folder}/{stem}")).arg("");
            }
        }
        let v: i64 = self.call(|c| call.invoke(c))?;
        u64::try_from(v).map_err(|_| StoreError::Conflict)
    }

    /// Connects the notification channel.
    async fn subscribe(&self) -> Result<redis::aio::PubSub, StoreError> {
        let connect = async {
            let mut ps = self.client.get_async_pubsub().await?;
            ps.subscribe(&self.keys.channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, connect).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Redis(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )))),
        }
    }

    /// Records whether the store answered, logging changes.
    pub(super) fn mark(&self, result: &Result<bool, StoreError>) {
        let up = !matches!(result, Err(e) if e.is_unreachable());
        self.metrics.up.set(i64::from(up));
        let was = self.up.swap(up, Ordering::AcqRel);
        match (was, up, result) {
            (true, false, Err(e)) => {
                tracing::warn!(error = %e, "registry store unreachable: serving the last-known-good tenant files")
            }
            (false, true, _) => tracing::info!(version = self.synced(), "registry store reachable"),
            _ => {}
        }
    }
}

/// A flat Redis reply `[field, text, field, text, …]` as fields set to text.
fn pairs(flat: Vec<String>) -> impl Iterator<Item = Field> {
    let mut it = flat.into_iter();
    std::iter::from_fn(move || Some((it.next()?, Some(it.next()?))))
}

/// `base` with the shared `fields` set (text) or removed (`None`). A field
/// that is not `tenants/<id>` or `templates/<name>` (with a valid id or
/// name, so never a path outside those folders) is returned as the error.
fn with_fields(mut texts: Texts, fields: impl IntoIterator<Item = Field>) -> Result<Texts, String> {
    for (k, v) in fields {
        let (map, stem) = if let Some(id) = k.strip_prefix("tenants/") {
            (&mut texts.tenants, id)
        } else if let Some(name) = k.strip_prefix("templates/") {
            (&mut texts.templates, name)
        } else if let Some(name) = k.strip_prefix("rollouts/") {
            (&mut texts.rollouts, name)
        } else {
            return Err(k);
        };
        if !crate::config::valid_tenant_id(stem) {
            return Err(k);
        }
        match v {
            Some(text) => map.insert(stem.to_string(), text),
            None => map.remove(stem),
        };
    }
    Ok(texts)
}

impl Registry {
    /// Shares the tenant files through `store` (fleet mode). Only for a
    /// config read from a file; call once, before serving.
    pub fn share_through(&self, store: RegistryStore) {
        if self.source.tenants_dir().is_none() {
            tracing::warn!("[store] ignored for the registry: the embedded config is not shared");
            return;
        }
        if self.store.set(store).is_err() {
            tracing::warn!("registry store already set");
        }
    }

    /// The shared registry, in fleet mode.
    pub fn store(&self) -> Option<&RegistryStore> {
        self.store.get()
    }

    /// Brings the live tenants up to the shared registry (or seeds an empty
    /// one with this replica's tenant files). Returns whether a new
    /// generation went live. Blocking: call from a blocking thread.
    pub fn sync_from_store(&self) -> Result<bool, StoreError> {
        let Some(store) = self.store.get() else {
            return Ok(false);
        };
        // Ask first without the writer lock, so that a slow or unreachable
        // store never holds up local reloads and writes.
        match store.version() {
            Ok(v) if v != 0 && v == store.synced() => {
                store.mark(&Ok(false));
                return Ok(false);
            }
            Ok(_) => {}
            Err(e) => {
                let result = Err(e);
                store.mark(&result);
                return result;
            }
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.sync_locked(store, false);
        store.mark(&result);
        result
    }

    /// [`Registry::sync_from_store`] with the writer lock held; `locked`
    /// says whether the fleet write lock is held too (then an empty store is
    /// left for the caller's commit to seed).
    pub(super) fn sync_locked(&self, store: &RegistryStore, locked: bool) -> Result<bool, StoreError> {
        let version = store.version()?;
        if version == 0 {
            if locked {
                store.set_synced(0);
                return Ok(false);
            }
            let _lock = store.lock()?;
            if store.version()? == 0 {
                let live = self.texts.load_full();
                let v = store.commit(0, &Batch::between(&Texts::default(), &live))?;
                store.set_synced(v);
                tracing::info!(
                    version = v,
                    tenant_files = live.tenants.len(),
                    template_files = live.templates.len(),
                    "registry store was empty: seeded it with this replica's tenant files"
                );
                return Ok(false);
            }
            return self.apply_store(store);
        }
        if version == store.synced() {
            return Ok(false);
        }
        if version == store.refused.load(Ordering::Acquire) {
            // Already read and refused: do not fetch every file again.
            return Err(StoreError::Refused(version));
        }
        self.apply_store(store)
    }

    /// Reads what changed in the shared registry since this replica's
    /// version (every file when the change log does not cover it) and makes
    /// it live here.
    fn apply_store(&self, store: &RegistryStore) -> Result<bool, StoreError> {
        let live = self.texts.load_full();
        // The changed files when the log covers them, else every file.
        let (version, fields, base, bulk) = match store.read_since(store.synced())? {
            (version, Some(changes)) => (version, changes, (*live).clone(), false),
            (_, None) => {
                let (version, all) = store.read_all()?;
                let base = Texts {
                    main: live.main.clone(),
                    ..Texts::default()
                };
                (version, all, base, true)
            }
        };
        let texts = match with_fields(base, fields) {
            Ok(t) => t,
            Err(field) => {
                if store.refused.swap(version, Ordering::AcqRel) != version {
                    self.metrics.reload_result(false);
                    tracing::error!(
                        version,
                        field,
                        "shared registry refused on this replica: a field is not tenants/<id>, templates/<name> or rollouts/<name>"
                    );
                }
                return Err(StoreError::Refused(version));
            }
        };
        if texts.tenants == live.tenants && texts.templates == live.templates && texts.rollouts == live.rollouts {
            store.set_synced(version);
            return Ok(false);
        }
        let started = Instant::now();
        let (config, table) = match super::Snapshot::compile_texts(&self.source.path(), &texts) {
            Ok(c) => c,
            Err(e) => {
                if store.refused.swap(version, Ordering::AcqRel) != version {
                    self.metrics.reload_result(false);
                    for p in super::problems(&e) {
                        tracing::error!(version, problem = %p, "shared registry refused on this replica; the running config stays");
                    }
                }
                return Err(StoreError::Rejected {
                    version,
                    error: Box::new(e),
                });
            }
        };
        // A few files go to disk first, so that what routes here is also in
        // the last-known-good copy; a bulk change (a replica's first sync)
        // routes first and writes its copy after, under the writer lock.
        let keep = |old: &Texts, new: &Texts| {
            if let (Some(dir), Some(main)) = (self.source.tenants_dir(), self.source.file()) {
                if let Err(e) = super::write::persist(main, &dir, old, new) {
                    tracing::error!(error = %e, "cannot keep the shared registry on disk; a restart without Redis serves an older copy");
                }
            }
        };
        if !bulk {
            keep(&live, &texts);
        }
        let (generation, changes) = self.install("fleet", texts, config, table);
        store.set_synced(version);
        if bulk {
            keep(&live, &self.texts.load());
        }
        self.metrics.reload_result(true);
        crate::release_free_memory();
        tracing::info!(
            generation,
            version,
            read = if bulk { "all" } else { "changes" },
            tenants_added = changes.added,
            tenants_removed = changes.removed,
            duration_ms = started.elapsed().as_secs_f64() * 1e3,
            "shared registry applied"
        );
        Ok(true)
    }

    /// Commits `texts` (compiled and valid), which differ from the live
    /// texts by `changes`, to the shared registry. Call with the writer lock
    /// and the fleet lock held, after [`Registry::sync_locked`].
    pub(super) fn commit_to_store(
        &self,
        store: &RegistryStore,
        texts: &Texts,
        changes: &Batch,
    ) -> Result<u64, StoreError> {
        match store.synced() {
            // An empty store gets every file: the commit seeds it.
            0 => store.commit(0, &Batch::between(&Texts::default(), texts)),
            synced => store.commit(synced, changes),
        }
    }
}

/// The pingora background service of a shared registry: applies new
/// versions when notified, and checks the version every second.
pub struct RegistrySync {
    pub registry: Arc<Registry>,
}

#[async_trait]
impl BackgroundService for RegistrySync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(store) = self.registry.store() else {
            return;
        };
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut notes: Option<redis::aio::PubSub> = None;
        loop {
            if notes.is_none() {
                notes = store.subscribe().await.ok();
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
                note = next(&mut notes) => {
                    if note.is_none() {
                        notes = None;
                    }
                }
            }
            let registry = self.registry.clone();
            match tokio::task::spawn_blocking(move || registry.sync_from_store()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "registry sync"),
                Err(e) => tracing::error!(error = %e, "registry sync task failed"),
            }
        }
    }
}

/// The next notification; pending forever while unsubscribed.
async fn next(notes: &mut Option<redis::aio::PubSub>) -> Option<redis::Msg> {
    match notes {
        Some(ps) => ps.on_message().next().await,
        None => std::future::pending().await,
    }
}
