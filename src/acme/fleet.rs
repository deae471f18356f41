//! Fleet ACME: the certificate state every replica of one Redis shares.
//!
//! - **Challenges.** An order's HTTP-01 key authorizations are written to
//!   Redis and announced; every replica adds them to its own
//!   [`Challenges`] and acknowledges, and the ordering replica tells the CA
//!   to validate only once every replica that heard it has acknowledged (or
//!   after 2 s), so whichever replica the CA's request reaches answers it.
//! - **TLS-ALPN-01.** The ordering replica's challenge certificate (its key
//!   sealed) is shared and acknowledged the same way, so any replica's HTTPS
//!   listener answers the CA's `acme-tls/1` connection.
//! - **Order budgets.** First orders are counted once for the fleet (sorted
//!   sets of send times, one Lua script on Redis' clock).
//! - **Which replica serves what.** Each replica lists the names it serves
//!   (a TTL'd set); a name's stored certificate is deleted only by the last
//!   replica that drops it.
//! - **One order per name.** An order (first issue or renewal) runs under a
//!   lease: `SET NX PX` of `<replica>:<fence>`, the fence from one counter,
//!   renewed while the order runs. A replica that dies loses the lease after
//!   `lease_secs`, and another takes the order over; a certificate is
//!   stored only while its replica still holds the lease (one Lua script), so
//!   a replica that lost it cannot overwrite its successor's.
//! - **Certificates.** Stored in Redis (chain in PEM, private key sealed with
//!   AES-256-GCM under `[store] key_file`, the name as associated data) and
//!   announced; every replica fetches, writes its own copy to disk (its
//!   last-known-good, served with Redis down) and serves it. A sweep of the
//!   index every few seconds catches a lost announcement.
//!
//! Never on the request path: the policy reads only the local challenges.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::sync::mpsc;

use super::Challenges;
use crate::config::Store;
use crate::store::{BoundedRedis, CallError};
use crate::tls::CertStore;

/// Bound on one Redis call made for ACME.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the ordering replica waits for every replica to hold a token.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How often the shared challenges are re-read (a lost announcement).
const CHALLENGE_SWEEP: Duration = Duration::from_secs(1);
/// How often the certificate index is compared with what this replica has;
/// also how often this replica renews its claim on the names it serves.
const CERT_SWEEP: Duration = Duration::from_secs(5);
/// A replica's set of wanted names outlives its last renewal by this much;
/// a replica gone longer no longer keeps a certificate in Redis.
const WANTS_TTL: Duration = Duration::from_secs(60);
/// Names sent to Redis per command when a wanted set is written.
const WANTS_CHUNK: usize = 1000;

/// Why a shared ACME call failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("fleet store unreachable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("fleet store unreachable: no answer in {} s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error(
        "a stored certificate of {0} cannot be decrypted with this key_file (a different key on another replica?)"
    )]
    Decrypt(String),
    #[error("sealing a private key failed")]
    Seal,
}

impl From<CallError> for SharedError {
    fn from(e: CallError) -> SharedError {
        match e {
            CallError::Redis(e) => SharedError::Redis(e),
            CallError::Timeout(_) => SharedError::Timeout,
        }
    }
}

/// Redis keys, all in one hash slot (`{acme}`).
struct Keys {
    challenges: String,
    fence: String,
    index: String,
    orders: String,
    channel: String,
    /// Sorted set: replica → when it last renewed its wanted set (ms).
    replicas: String,
    prefix: String,
}

impl Keys {
    fn domain_budget(&self, registered_domain: &str) -> String {
        format!("{}:{{acme}}:budget:domain:{registered_domain}", self.prefix)
    }
    fn lease(&self, name: &str) -> String {
        format!("{}:{{acme}}:lease:{name}", self.prefix)
    }
    fn cert(&self, name: &str) -> String {
        format!("{}:{{acme}}:cert:{name}", self.prefix)
    }
    fn ack(&self, token: &str) -> String {
        format!("{}:{{acme}}:ack:{token}", self.prefix)
    }
    /// The set of names `replica` serves from the fleet's certificates.
    fn wants(&self, replica: &str) -> String {
        format!("{}{replica}", self.wants_prefix())
    }
    /// A name's shared TLS-ALPN-01 challenge certificate.
    fn alpn(&self, name: &str) -> String {
        format!("{}:{{acme}}:alpn:{name}", self.prefix)
    }
    fn alpn_index(&self) -> String {
        format!("{}:{{acme}}:alpns", self.prefix)
    }
    fn wants_prefix(&self) -> String {
        format!("{}:{{acme}}:wants:", self.prefix)
    }
}

/// A held order lease on one name.
#[derive(Debug, Clone)]
pub struct Lease {
    pub name: String,
    value: String,
    pub fence: u64,
}

impl Lease {
    /// This order's entry in the budgets' sorted sets.
    fn budget_member(&self) -> String {
        format!("{}:{}", self.name, self.value)
    }
}

/// A certificate as stored in Redis: its fence and PEM (chain, then key).
pub struct Stored {
    pub fence: u64,
    pub pem: String,
}

/// Stores the certificate only while `KEYS[1]` (the lease) still holds
/// `ARGV[1]`; then drops the lease and announces the name.
const STORE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'chain', ARGV[2], 'key', ARGV[3], 'fence', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[6], 'cert\t' .. ARGV[5])
return 1
"#;

/// Extends the lease `KEYS[1]` by `ARGV[2]` ms if it still holds `ARGV[1]`.
const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"#;

/// Deletes the stored certificate `KEYS[1]` (and its index entry in
/// `KEYS[2]`) of the name `ARGV[1]`, which replica `ARGV[2]` no longer
/// wants (`KEYS[4]`, its wanted set), unless another live replica listed
/// in `KEYS[3]` still wants it. A replica whose wanted set expired (gone
/// for `WANTS_TTL`) is dropped from the list. Returns 1 when deleted.
/// The wanted sets (`ARGV[3]` .. replica) share the `{acme}` hash slot.
const REMOVE_LUA: &str = r#"
redis.call('SREM', KEYS[4], ARGV[1])
for _, r in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if r ~= ARGV[2] then
    local k = ARGV[3] .. r
    if redis.call('EXISTS', k) == 0 then
      redis.call('ZREM', KEYS[3], r)
    elseif redis.call('SISMEMBER', k, ARGV[1]) == 1 then
      return 0
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

/// Spends one first order from the fleet's budgets: `KEYS[1]` (the
/// registered domain's, `ARGV[1]` orders per `ARGV[2]` ms) and `KEYS[2]`
/// (the account's, `ARGV[3]` per `ARGV[4]` ms), sliding windows kept as
/// sorted sets of send times on Redis' own clock. Returns `{1, 0}` when
/// spent, or `{0, ms}`: how long until a slot frees.
const BUDGET_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function wait(key, limit, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return tonumber(oldest[2]) + window - now
  end
  return nil
end
local w = wait(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if w then return {0, w} end
w = wait(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if w then return {0, w} end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, 0}
"#;

/// Deletes the lease `KEYS[1]` if it still holds `ARGV[1]`.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"#;

/// One replica's handle on the fleet's ACME state.
pub struct SharedAcme {
    redis: BoundedRedis,
    keys: Keys,
    cipher: LessSafeKey,
    replica: String,
    /// This replica's name in the wanted sets: kept in the state dir, so a
    /// restarted replica takes its own set over instead of leaving a stale
    /// one behind.
    member: String,
    pub lease: Duration,
    store: Script,
    renew: Script,
    release: Script,
    remove: Script,
    budget: Script,
    up: AtomicBool,
    /// The names this replica last wrote to its wanted set.
    wanted: std::sync::Mutex<HashSet<String>>,
}

impl SharedAcme {
    /// The shared ACME state of `store`; `None` without a `key_file` (the
    /// config refuses fleet ACME without one). Connects on first use.
    /// `state_dir` keeps this replica's member id (`acme/replica-id`).
    pub fn new(store: &Store, state_dir: &std::path::Path) -> Result<Option<SharedAcme>, SharedError> {
        let Some((_, key)) = &store.key else {
            return Ok(None);
        };
        let cipher = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| SharedError::Seal)?);
        let prefix = store.key_prefix.clone();
        let mut id = [0u8; 6];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| SharedError::Seal)?;
        let replica = format!(
            "{}-{}",
            std::process::id(),
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let member = member_id(state_dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "fleet ACME: no replica id could be kept in the state dir; using this run's");
            replica.clone()
        });
        Ok(Some(SharedAcme {
            member,
            redis: BoundedRedis::new(store.client()?, CALL_TIMEOUT),
            keys: Keys {
                challenges: format!("{prefix}:{{acme}}:challenges"),
                fence: format!("{prefix}:{{acme}}:fence"),
                index: format!("{prefix}:{{acme}}:certs"),
                orders: format!("{prefix}:{{acme}}:orders"),
                channel: format!("{prefix}:acme"),
                replicas: format!("{prefix}:{{acme}}:replicas"),
                prefix,
            },
            cipher,
            replica,
            lease: store.lease,
            store: Script::new(STORE_LUA),
            renew: Script::new(RENEW_LUA),
            release: Script::new(RELEASE_LUA),
            remove: Script::new(REMOVE_LUA),
            budget: Script::new(BUDGET_LUA),
            up: AtomicBool::new(true),
            wanted: std::sync::Mutex::new(HashSet::new()),
        }))
    }

    /// Runs one bounded call, recording whether the store answered.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = self.redis.call(f).await.map_err(SharedError::from);
        let up = result.is_ok();
        if self.up.swap(up, Ordering::AcqRel) != up {
            match &result {
                Err(e) => {
                    tracing::warn!(error = %e, "fleet ACME store unreachable: serving the certificates on disk, no new orders")
                }
                Ok(_) => tracing::info!("fleet ACME store reachable again"),
            }
        }
        result
    }

    /// Shares a pending HTTP-01 challenge with every replica and waits (at
    /// most [`ACK_WAIT`]) until each replica that heard of it holds it.
    pub async fn share_challenge(&self, token: &str, domain: &str, key_authorization: &str) -> Result<(), SharedError> {
        let value = format!("{domain}\n{key_authorization}");
        let (hash, channel, ack) = (
            self.keys.challenges.clone(),
            self.keys.channel.clone(),
            self.keys.ack(token),
        );
        let note = format!("challenge\t{token}");
        let token_owned = token.to_string();
        let heard: i64 = self
            .call(|mut c| async move {
                let _: () = c.hset(&hash, &token_owned, &value).await?;
                let _: () = c.expire(&hash, 3600).await?;
                c.publish(&channel, &note).await
            })
            .await?;
        self.await_acks(heard, ack, token).await
    }

    /// Waits (at most [`ACK_WAIT`]) until `heard` replicas have added
    /// themselves to the set `ack`.
    async fn await_acks(&self, heard: i64, ack: String, what: &str) -> Result<(), SharedError> {
        let deadline = Instant::now() + ACK_WAIT;
        loop {
            let key = ack.clone();
            let held: i64 = self.call(|mut c| async move { c.scard(&key).await }).await?;
            if held >= heard || Instant::now() >= deadline {
                if held < heard {
                    tracing::warn!(
                        what,
                        held,
                        heard,
                        "not every replica acknowledged the challenge in time"
                    );
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shares a TLS-ALPN-01 challenge certificate (`cert` DER, `key`
    /// PKCS#8 DER, sealed like certificate keys) with every replica, and
    /// waits (at most [`ACK_WAIT`]) until each replica that heard of it serves it.
    pub async fn share_alpn(&self, name: &str, cert: &[u8], key: &[u8]) -> Result<(), SharedError> {
        let sealed = self.seal(&alpn_aad(name), key)?;
        let (hash, index, channel, ack) = (
            self.keys.alpn(name),
            self.keys.alpn_index(),
            self.keys.channel.clone(),
            self.keys.ack(&format!("alpn:{name}")),
        );
        let (n, note, cert) = (name.to_string(), format!("alpn\t{name}"), cert.to_vec());
        let heard: i64 = self
            .call(|mut c| async move {
                let _: () = c.del(&ack).await?;
                let _: () = c.hset_multiple(&hash, &[("cert", cert), ("key", sealed)]).await?;
                let _: () = c.expire(&hash, 600).await?;
                let _: () = c.sadd(&index, &n).await?;
                c.publish(&channel, &note).await
            })
            .await?;
        self.await_acks(heard, self.keys.ack(&format!("alpn:{name}")), name)
            .await
    }

    /// Withdraws a TLS-ALPN-01 challenge certificate from every replica.
    pub async fn clear_alpn(&self, name: &str) {
        let (hash, index, channel, ack) = (
            self.keys.alpn(name),
            self.keys.alpn_index(),
            self.keys.channel.clone(),
            self.keys.ack(&format!("alpn:{name}")),
        );
        let (n, note) = (name.to_string(), format!("alpn-done\t{name}"));
        let _ = self
            .call(|mut c| async move {
                let _: () = c.del(&[&hash, &ack]).await?;
                let _: () = c.srem(&index, &n).await?;
                c.publish::<_, _, i64>(&channel, &note).await
            })
            .await;
    }

    /// Installs the shared challenge certificate of `name` in `store` and
    /// acknowledges it; `false` when there is none (or it is unusable).
    async fn take_alpn(&self, name: &str, store: &CertStore) -> bool {
        let key = self.keys.alpn(name);
        let Ok(fields) = self
            .call(|mut c| async move { c.hgetall::<_, HashMap<String, Vec<u8>>>(&key).await })
            .await
        else {
            return false;
        };
        let (Some(cert), Some(sealed)) = (fields.get("cert"), fields.get("key")) else {
            return false;
        };
        let installed = self
            .open(&alpn_aad(name), sealed)
            .map_err(|e| e.to_string())
            .and_then(|key| {
                store
                    .install_alpn_challenge(name, cert, &key)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = installed {
            tracing::warn!(name, error = %e, "a shared TLS-ALPN-01 challenge certificate was not installed");
            return false;
        }
        tracing::info!(name, "TLS-ALPN-01 challenge certificate from the fleet installed");
        let (ack, replica) = (self.keys.ack(&format!("alpn:{name}")), self.replica.clone());
        let _ = self
            .call(|mut c| async move {
                let _: () = c.sadd(&ack, &replica).await?;
                c.expire::<_, i64>(&ack, 600).await
            })
            .await;
        true
    }

    /// Brings this replica's shared challenge certificates in line with Redis.
    async fn sweep_alpn(&self, store: &CertStore, ours: &mut HashSet<String>) {
        let index = self.keys.alpn_index();
        let Ok(all) = self
            .call(|mut c| async move { c.smembers::<_, HashSet<String>>(&index).await })
            .await
        else {
            return;
        };
        for name in &all {
            if !ours.contains(name) && self.take_alpn(name, store).await {
                ours.insert(name.clone());
            }
        }
        forget_missing(ours, |n| all.contains(n), |n| store.remove_alpn_challenge(n));
    }

    /// Withdraws a challenge from every replica.
    pub async fn clear_challenge(&self, token: &str) {
        let (hash, channel, ack) = (
            self.keys.challenges.clone(),
            self.keys.channel.clone(),
            self.keys.ack(token),
        );
        let (token, note) = (token.to_string(), format!("done\t{token}"));
        let _ = self
            .call(|mut c| async move {
                let _: () = c.hdel(&hash, &token).await?;
                let _: () = c.del(&ack).await?;
                c.publish::<_, _, i64>(&channel, &note).await
            })
            .await;
    }

    /// Takes the order lease of `name`; `None` while another replica holds it.
    pub async fn acquire(&self, name: &str) -> Result<Option<Lease>, SharedError> {
        let (fence_key, lease_key) = (self.keys.fence.clone(), self.keys.lease(name));
        let ms = self.lease.as_millis() as u64;
        let replica = self.replica.clone();
        let got: Option<(u64, String)> = self
            .call(|mut c| async move {
                let held: Option<String> = c.get(&lease_key).await?;
                if held.is_some() {
                    return Ok(None);
                }
                let fence: u64 = c.incr(&fence_key, 1).await?;
                let value = format!("{replica}:{fence}");
                let set: Option<String> = redis::cmd("SET")
                    .arg(&lease_key)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await?;
                Ok(set.map(|_| (fence, value)))
            })
            .await?;
        Ok(got.map(|(fence, value)| Lease {
            name: name.to_string(),
            value,
            fence,
        }))
    }

    /// Extends a held lease; `false` once it is lost.
    pub async fn renew(&self, lease: &Lease) -> bool {
        let mut call = self.renew.prepare_invoke();
        call.key(self.keys.lease(&lease.name))
            .arg(&lease.value)
            .arg(self.lease.as_millis() as u64);
        self.call(|mut c| async move { call.invoke_async::<i64>(&mut c).await })
            .await
            .is_ok_and(|n| n == 1)
    }

    /// Gives a lease up (an order that failed), so another replica may try.
    pub async fn release(&self, lease: &Lease) {
        let mut call = self.release.prepare_invoke();
        call.key(self.keys.lease(&lease.name)).arg(&lease.value);
        let _ = self
            .call(|mut c| async move { call.invoke_async::<i64>(&mut c).await })
            .await;
    }

    /// Spends one first order of `lease.name` from the budgets the fleet
    /// shares (one script): `per_domain` per registered domain in `domain_window`,
    /// `per_account` per account (CA directory) in `account_window`.
    /// `Ok(None)` when spent, else how long until a slot frees.
    pub async fn spend_budget(
        &self,
        lease: &Lease,
        registered_domain: &str,
        directory: &str,
        (per_domain, domain_window): (u64, Duration),
        (per_account, account_window): (u64, Duration),
    ) -> Result<Option<Duration>, SharedError> {
        use sha2::{Digest, Sha256};
        let account: String = Sha256::digest(directory.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut call = self.budget.prepare_invoke();
        call.key(self.keys.domain_budget(registered_domain))
            .key(format!("{}:{{acme}}:budget:account:{account}", self.keys.prefix))
            .arg(per_domain)
            .arg(domain_window.as_millis() as u64)
            .arg(per_account)
            .arg(account_window.as_millis() as u64)
            .arg(lease.budget_member());
        let (spent, wait_ms): (i64, i64) = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok((spent != 1).then(|| Duration::from_millis(wait_ms.max(0) as u64)))
    }

    /// Gives back the registered domain's share of a first order that
    /// issued nothing (the CA counts certificates per registered domain,
    /// not attempts); the account's share stays spent (the CA counts
    /// orders per account).
    pub async fn refund_domain_budget(&self, lease: &Lease, registered_domain: &str) {
        let key = self.keys.domain_budget(registered_domain);
        let member = lease.budget_member();
        let _ = self
            .call(|mut c| async move { c.zrem::<_, _, i64>(&key, &member).await })
            .await;
    }

    /// Counts an order sent to the CA for `name` (`HINCRBY <prefix>:{acme}:orders`).
    pub async fn count_order(&self, name: &str) {
        let (key, name) = (self.keys.orders.clone(), name.to_string());
        let _ = self
            .call(|mut c| async move { c.hincr::<_, _, _, i64>(&key, &name, 1).await })
            .await;
    }

    /// Stores an issued certificate (the key sealed) if `lease` still
    /// holds, and announces it; `Ok(false)` when the lease was lost.
    pub async fn store(&self, lease: &Lease, chain: &str, key_pem: &str) -> Result<bool, SharedError> {
        let sealed = self.seal(&lease.name, key_pem.as_bytes())?;
        let mut call = self.store.prepare_invoke();
        call.key(self.keys.lease(&lease.name))
            .key(self.keys.cert(&lease.name))
            .key(&self.keys.index)
            .arg(&lease.value)
            .arg(chain)
            .arg(sealed)
            .arg(lease.fence)
            .arg(&lease.name)
            .arg(&self.keys.channel);
        let stored: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(stored == 1)
    }

    /// The stored certificate of `name`, its key opened.
    pub async fn fetch(&self, name: &str) -> Result<Option<Stored>, SharedError> {
        let key = self.keys.cert(name);
        let fields: HashMap<String, Vec<u8>> = self.call(|mut c| async move { c.hgetall(&key).await }).await?;
        let (Some(chain), Some(sealed), Some(fence)) = (fields.get("chain"), fields.get("key"), fields.get("fence"))
        else {
            return Ok(None);
        };
        let key_pem = self.open(name, sealed)?;
        let fence = std::str::from_utf8(fence)
            .ok()
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        let pem = format!(
            "{}\n{}",
            String::from_utf8_lossy(chain).trim_end(),
            String::from_utf8_lossy(&key_pem)
        );
        Ok(Some(Stored { fence, pem }))
    }

    /// Records the names this replica serves from the fleet's certificates
    /// (its wanted set, renewed every few seconds by [`follow`]), so that a
    /// replica dropping a name never deletes a copy another one still uses.
    /// Writes only the difference with the last call; on failure the next
    /// call tries again.
    ///
    /// [`follow`]: SharedAcme::follow
    pub async fn want(&self, names: &[String]) -> Result<(), SharedError> {
        let (add, drop): (Vec<String>, Vec<String>) = {
            let published = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
            let now: HashSet<&str> = names.iter().map(String::as_str).collect();
            (
                names.iter().filter(|n| !published.contains(*n)).cloned().collect(),
                published
                    .iter()
                    .filter(|n| !now.contains(n.as_str()))
                    .cloned()
                    .collect(),
            )
        };
        self.write_wants(&add, &drop).await?;
        let mut published = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        for n in drop {
            published.remove(&n);
        }
        published.extend(add);
        Ok(())
    }

    /// Adds `add` to and takes `drop` from this replica's wanted set, and
    /// renews it and the replica's place in the list.
    async fn write_wants(&self, add: &[String], drop: &[String]) -> Result<(), SharedError> {
        let (wants, replicas, replica) = (
            self.keys.wants(&self.member),
            self.keys.replicas.clone(),
            self.member.clone(),
        );
        let ttl = WANTS_TTL.as_millis() as u64;
        let (add, drop) = (add.to_vec(), drop.to_vec());
        self.call(|mut c| async move {
            let mut pipe = redis::pipe();
            for chunk in add.chunks(WANTS_CHUNK) {
                pipe.sadd(&wants, chunk).ignore();
            }
            for chunk in drop.chunks(WANTS_CHUNK) {
                pipe.srem(&wants, chunk).ignore();
            }
            pipe.pexpire(&wants, ttl as i64).ignore();
            pipe.cmd("TIME");
            let ((secs, micros),): ((u64, u64),) = pipe.query_async(&mut c).await?;
            let now_ms = secs * 1000 + micros / 1000;
            c.zadd::<_, _, _, i64>(&replicas, &replica, now_ms).await
        })
        .await?;
        Ok(())
    }

    /// Renews this replica's wanted set; writes it again whole when Redis
    /// lost it (a restarted Redis, or an outage longer than its TTL).
    async fn heartbeat(&self) {
        let wants = self.keys.wants(&self.member);
        let ttl = WANTS_TTL.as_millis() as i64;
        let Ok(kept) = self
            .call(|mut c| async move { c.pexpire::<_, bool>(&wants, ttl).await })
            .await
        else {
            return;
        };
        let all: Vec<String> = if kept {
            Vec::new()
        } else {
            let published = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
            published.iter().cloned().collect()
        };
        let _ = self.write_wants(&all, &[]).await;
    }

    /// This replica no longer serves `name`: its stored certificate is
    /// deleted from Redis unless another live replica still wants it.
    /// Returns whether it was deleted.
    pub async fn remove(&self, name: &str) -> Result<bool, SharedError> {
        {
            let mut published = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
            published.remove(name);
        }
        let mut call = self.remove.prepare_invoke();
        call.key(self.keys.cert(name))
            .key(&self.keys.index)
            .key(&self.keys.replicas)
            .key(self.keys.wants(&self.member))
            .arg(name)
            .arg(&self.member)
            .arg(self.keys.wants_prefix());
        let deleted: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(deleted == 1)
    }

    /// `nonce || ciphertext || tag`, the name as associated data.
    fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, SharedError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SharedError::Seal)?;
        let mut data = plain.to_vec();
        self.cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| SharedError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(out)
    }

    fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SharedError> {
        if sealed.len() < NONCE_LEN {
            return Err(SharedError::Decrypt(name.to_string()));
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SharedError::Decrypt(name.to_string()))?;
        let mut data = data.to_vec();
        let plain = self
            .cipher
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut data)
            .map_err(|_| SharedError::Decrypt(name.to_string()))?;
        Ok(plain.to_vec())
    }

    /// Follows the fleet: shared challenges into `challenges` (acknowledged),
    /// and the names of newly stored certificates to `changed`. Runs until
    /// `changed` is closed; reconnects after a Redis outage.
    pub async fn follow(
        self: Arc<Self>,
        challenges: Arc<Challenges>,
        store: Arc<CertStore>,
        changed: mpsc::UnboundedSender<String>,
    ) {
        let mut known: HashMap<String, u64> = HashMap::new();
        let mut ours: HashSet<String> = HashSet::new();
        let mut ours_alpn: HashSet<String> = HashSet::new();
        let mut notes: Option<redis::aio::PubSub> = None;
        let mut challenge_sweep = tokio::time::interval(CHALLENGE_SWEEP);
        let mut cert_sweep = tokio::time::interval(CERT_SWEEP);
        for t in [&mut challenge_sweep, &mut cert_sweep] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            if changed.is_closed() {
                return;
            }
            if notes.is_none() {
                notes = self.subscribe().await;
            }
            tokio::select! {
                note = next(&mut notes) => match note {
                    None => notes = None,
                    Some(msg) => {
                        let text: String = msg.get_payload().unwrap_or_default();
                        match text.split_once('\t') {
                            Some(("challenge", token)) => {
                                self.take_challenge(token, &challenges, &mut ours).await;
                            }
                            Some(("done", token)) if ours.remove(token) => challenges.remove(token),
                            Some(("alpn", name)) => {
                                let installed = self.take_alpn(name, &store).await;
                                installed.then(|| ours_alpn.insert(name.to_string()));
                            }
                            Some(("alpn-done", name)) if ours_alpn.remove(name) => store.remove_alpn_challenge(name),
                            Some(("cert", name)) => {
                                let _ = changed.send(name.to_string());
                            }
                            _ => {}
                        }
                    }
                },
                _ = challenge_sweep.tick() => {
                    self.sweep_challenges(&challenges, &mut ours).await;
                    self.sweep_alpn(&store, &mut ours_alpn).await;
                }
                _ = cert_sweep.tick() => {
                    self.heartbeat().await;
                    let index = self.keys.index.clone();
                    if let Ok(now) = self.call(|mut c| async move { c.hgetall::<_, HashMap<String, u64>>(&index).await }).await {
                        for (name, fence) in &now {
                            if known.get(name) != Some(fence) {
                                let _ = changed.send(name.clone());
                            }
                        }
                        known = now;
                    }
                }
            }
        }
    }

    async fn subscribe(&self) -> Option<redis::aio::PubSub> {
        let channel = self.keys.channel.clone();
        let connect = async {
            let mut ps = self.redis.client().get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        tokio::time::timeout(CALL_TIMEOUT, connect).await.ok()?.ok()
    }

    /// Adds a shared challenge to this replica and acknowledges it.
    async fn take_challenge(&self, token: &str, challenges: &Challenges, ours: &mut HashSet<String>) {
        let (hash, tok) = (self.keys.challenges.clone(), token.to_string());
        let Ok(Some(value)) = self
            .call(|mut c| async move { c.hget::<_, _, Option<String>>(&hash, &tok).await })
            .await
        else {
            return;
        };
        if let Some((domain, key_authorization)) = value.split_once('\n') {
            challenges.insert(token, domain, key_authorization);
            ours.insert(token.to_string());
            let (ack, replica) = (self.keys.ack(token), self.replica.clone());
            let _ = self
                .call(|mut c| async move {
                    let _: () = c.sadd(&ack, &replica).await?;
                    c.expire::<_, i64>(&ack, 600).await
                })
                .await;
        }
    }

    /// Brings this replica's shared challenges in line with Redis.
    async fn sweep_challenges(&self, challenges: &Challenges, ours: &mut HashSet<String>) {
        let hash = self.keys.challenges.clone();
        let Ok(all) = self
            .call(|mut c| async move { c.hgetall::<_, HashMap<String, String>>(&hash).await })
            .await
        else {
            return;
        };
        for (token, value) in &all {
            if let (false, Some((domain, key_authorization))) = (ours.contains(token), value.split_once('\n')) {
                challenges.insert(token, domain, key_authorization);
                ours.insert(token.clone());
            }
        }
        forget_missing(ours, |t| all.contains_key(t), |t| challenges.remove(t));
    }
}

/// Drops from `ours` (and withdraws with `withdraw`) what Redis no longer
/// holds.
fn forget_missing(ours: &mut HashSet<String>, held: impl Fn(&str) -> bool, withdraw: impl Fn(&str)) {
    ours.retain(|n| {
        let keep = held(n);
        if !keep {
            withdraw(n);
        }
        keep
    });
}

/// The associated data a challenge certificate's key is sealed with (never
/// the same as the name's certificate key).
fn alpn_aad(name: &str) -> String {
    format!("acme-tls/1 {name}")
}

/// This replica's member id, kept in `<state_dir>/acme/replica-id` (made
/// on first use: 16 hex digits).
fn member_id(state_dir: &std::path::Path) -> std::io::Result<String> {
    let path = state_dir.join("acme").join("replica-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let mut raw = [0u8; 8];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| std::io::Error::other("no randomness"))?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    crate::tls::state::write_private(&path, id.as_bytes())?;
    Ok(id)
}

/// The next notification; pending forever while unsubscribed (the sweeps
/// still run, and the loop subscribes again on its next turn).
async fn next(notes: &mut Option<redis::aio::PubSub>) -> Option<redis::Msg> {
    use futures_util::StreamExt;
    match notes {
        Some(ps) => ps.on_message().next().await,
        None => {
            tokio::time::sleep(CHALLENGE_SWEEP).await;
            None
        }
    }
}
