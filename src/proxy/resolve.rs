//! The upstream-name resolver (a pingora background service, off the
//! request path): looks up every `host:port` entry of every pool with
//! hickory-resolver (`[gateway] upstream_nameservers`, else the system's),
//! again after the answer's TTL clamped to `upstream_dns_min_ttl_ms` ..
//! `upstream_dns_max_ttl_ms`, and replaces the pool's resolved set whole
//! (an `ArcSwap` the request path only reads). An address that stays keeps
//! its `Upstream` (health, idle connections); a failed lookup keeps the
//! last good set and is retried after the TTL floor.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pool::{Pool, Upstream};
use crate::config::upstream::{Resolver as ResolverSpec, UpstreamName};
use crate::registry::Registry;
use crate::telemetry::Metrics;

/// Most addresses kept per name.
const MAX_ADDRESSES: usize = 32;

/// Resolves the pools' upstream names.
pub struct UpstreamNames {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

type Key = (Arc<str>, UpstreamName);

/// A finished lookup: the addresses and how long they are good for.
struct Answer {
    key: Key,
    result: Result<(Vec<IpAddr>, Duration), String>,
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the system's resolver configuration: {0}")]
struct NoResolver(String);

fn build(spec: &ResolverSpec) -> Result<TokioResolver, NoResolver> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // Each lookup asks the server, so the TTL ceiling holds.
    opts.cache_size = 0;
    let builder = if spec.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| NoResolver(e.to_string()))?
    } else {
        let mut conf = ResolverConfig::new();
        for ns in &spec.nameservers {
            conf.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
            conf.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(conf, TokioConnectionProvider::default())
    };
    Ok(builder.with_options(opts).build())
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for UpstreamNames {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut generations = self.registry.subscribe();
        let (tx, mut rx) = mpsc::channel::<Answer>(64);
        let mut spec: Option<ResolverSpec> = None;
        let mut resolver: Option<TokioResolver> = None;
        let mut due: HashMap<Key, Instant> = HashMap::new();
        let mut in_flight: HashSet<Key> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = generations.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A new generation starts from the previous one's
                    // addresses: look every name up again now.
                    due.clear();
                }
                _ = tick.tick() => {}
                Some(answer) = rx.recv() => {
                    in_flight.remove(&answer.key);
                    let floor = spec.as_ref().map_or(Duration::from_secs(5), |s| s.min_ttl);
                    let ceiling = spec.as_ref().map_or(Duration::from_secs(300), |s| s.max_ttl);
                    let next = match &answer.result {
                        Ok((_, ttl)) => (*ttl).clamp(floor, ceiling),
                        Err(_) => floor,
                    };
                    due.insert(answer.key.clone(), Instant::now() + next);
                    self.apply(answer);
                    continue;
                }
            }
            let snap = self.registry.snapshot();
            let wanted = &snap.config.gateway.resolver;
            if spec.as_ref() != Some(wanted) {
                resolver = match build(wanted) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(error = %e, "upstream names cannot be resolved");
                        None
                    }
                };
                spec = Some(wanted.clone());
                due.clear();
            }
            let Some(resolver) = &resolver else { continue };
            let now = Instant::now();
            let mut live = HashSet::new();
            for pool in snap.pools.iter() {
                for name in &pool.names {
                    let key = (pool.name.clone(), name.clone());
                    live.insert(key.clone());
                    if in_flight.contains(&key) || due.get(&key).is_some_and(|t| *t > now) {
                        continue;
                    }
                    in_flight.insert(key.clone());
                    tokio::spawn(lookup(resolver.clone(), key, tx.clone()));
                }
            }
            due.retain(|k, _| live.contains(k));
        }
    }
}

/// Looks `key`'s host up (A and AAAA) and sends the answer.
async fn lookup(resolver: TokioResolver, key: Key, tx: mpsc::Sender<Answer>) {
    let fqdn = format!("{}.", key.1.host);
    let result = match resolver.lookup_ip(fqdn).await {
        Ok(l) => {
            let ttl = l.valid_until().saturating_duration_since(std::time::Instant::now());
            let mut ips: Vec<IpAddr> = l.iter().collect();
            ips.sort();
            ips.dedup();
            ips.truncate(MAX_ADDRESSES);
            Ok((ips, ttl))
        }
        Err(e) => Err(e.to_string()),
    };
    let _ = tx.send(Answer { key, result }).await;
}

impl UpstreamNames {
    /// Replaces the resolved set of the answer's name in its pool (in the
    /// live snapshot) and drops the series of addresses that went.
    fn apply(&self, answer: Answer) {
        let (pool_name, name) = &answer.key;
        let ips = match answer.result {
            Ok((ips, _)) if !ips.is_empty() => ips,
            Ok(_) => {
                tracing::warn!(pool = &**pool_name, upstream = %name, "upstream name has no address; keeping the last ones");
                return;
            }
            Err(e) => {
                tracing::warn!(pool = &**pool_name, upstream = %name, error = %e, "upstream name lookup failed; keeping the last addresses");
                return;
            }
        };
        let snap = self.registry.snapshot();
        let Some(pool) = snap.pools.iter().find(|p| p.name == *pool_name) else {
            return;
        };
        if !pool.names.contains(name) {
            return;
        }
        let origin: Arc<str> = name.to_string().into();
        let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, name.port)).collect();
        let before = pool.resolved.load_full();
        let gone = replace(pool, &origin, &addrs);
        let had: Vec<SocketAddr> = mine(&before, &origin).map(|u| u.addr).collect();
        if had != addrs {
            tracing::info!(pool = &**pool_name, upstream = %name, addresses = ?addrs, "upstream name resolved");
        }
        for addr in gone {
            self.metrics.backends.forget_upstream(pool_name, &addr.to_string());
        }
    }
}

/// The members resolved from `origin`.
fn mine<'a>(set: &'a [Arc<Upstream>], origin: &'a str) -> impl Iterator<Item = &'a Arc<Upstream>> {
    set.iter().filter(move |u| u.origin.as_deref() == Some(origin))
}

/// Sets `origin`'s addresses in `pool` to `addrs` (keeping the `Upstream`
/// of an address that stays); returns the addresses that went.
fn replace(pool: &Pool, origin: &Arc<str>, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut gone = Vec::new();
    pool.resolved.rcu(|current| {
        let mut next: Vec<Arc<Upstream>> = current
            .iter()
            .filter(|u| u.origin.as_deref() != Some(&**origin))
            .cloned()
            .collect();
        for addr in addrs {
            let kept = mine(current, origin).find(|u| u.addr == *addr).cloned();
            next.push(kept.unwrap_or_else(|| Arc::new(Upstream::resolved(*addr, origin.clone(), pool.tls.clone()))));
        }
        gone = mine(current, origin)
            .map(|u| u.addr)
            .filter(|a| !addrs.contains(a))
            .collect();
        next
    });
    gone
}
