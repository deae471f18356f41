//! The immutable routing snapshot: everything a request needs, built off the
//! request path and swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::config::identity::{JwtMode, KeySource};
use crate::config::{self, Config, ConfigError, LoadError, PoolId, Texts};
use crate::limits::{Book, TenantState};
use crate::proxy::pool::{Pool, Upstream};
use crate::routing::jwt::Verifier;
use crate::routing::{DomainTable, TenantIdx};
use crate::telemetry::{LimitCounters, Metrics, TenantCounters, OTHER_TENANTS};

/// A tenant as the request path sees it.
#[derive(Debug)]
pub struct Tenant {
    pub id: Arc<str>,
    /// The id, ready to send in the tenant header.
    pub header_value: HeaderValue,
    pub pool: PoolId,
    pub counters: TenantCounters,
    /// Limiter state (shared across reloads); `None` when unlimited.
    pub limiter: Option<Arc<TenantState>>,
    /// `RateLimit-Policy`, ready to send.
    pub policy_header: Option<HeaderValue>,
    pub limit_counters: LimitCounters,
    /// The profile as the request path needs it (`tenant.json`, headers).
    pub edge: super::edge::Edge,
    /// How the tenant treats tokens.
    pub jwt_mode: JwtMode,
    /// The verifier of the tenant's tokens (its own issuer's, or
    /// `[identity.jwt]`'s); `None` when `jwt_mode` is off.
    pub jwt: Option<Arc<Verifier>>,
    /// Remove the claimed path prefix toward the backend.
    pub strip_prefix: bool,
    /// The counters of the tenant's side of its rollout, if it is a candidate.
    pub cohort: Option<crate::telemetry::rollouts::CohortCounters>,
}

/// One generation of live state.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub config: Config,
    pub table: DomainTable,
    pub tenants: Vec<Tenant>,
    pub pools: Vec<Pool>,
}

/// An upstream's identity across reloads: pool, address, TLS settings.
type UpstreamKey<'a> = (&'a str, SocketAddr, Option<Arc<str>>);

impl Snapshot {
    /// Parses, validates and compiles config text. Every problem is reported,
    /// not just the first. `path` is only used in messages.
    pub fn compile(path: &std::path::Path, text: &str) -> Result<(Config, DomainTable), LoadError> {
        let file = config::parse(path, text)?;
        Self::compile_file(path, file, Vec::new())
    }

    /// Like [`Snapshot::compile`], for the main file and its tenant files.
    pub fn compile_texts(path: &std::path::Path, texts: &Texts) -> Result<(Config, DomainTable), LoadError> {
        let (file, errors) = texts.parse(path)?;
        let main_count = file.tenants.len().saturating_sub(texts.tenants.len());
        Self::compile_file(path, file, errors).map_err(|e| match e {
            LoadError::Invalid { path, mut errors } => {
                let stems: Vec<&str> = texts.tenants.keys().map(String::as_str).collect();
                for e in &mut errors {
                    e.field = relocate(&e.field, main_count, &stems);
                }
                LoadError::Invalid { path, errors }
            }
            other => other,
        })
    }

    fn compile_file(
        path: &std::path::Path,
        file: config::file::File,
        earlier: Vec<ConfigError>,
    ) -> Result<(Config, DomainTable), LoadError> {
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        let (config, mut errors) = config::validate(file, base);
        errors.extend(earlier);
        let (table, conflicts) = DomainTable::build(&config);
        errors.extend(conflicts);
        if errors.is_empty() {
            Ok((config, table))
        } else {
            Err(LoadError::Invalid {
                path: path.to_path_buf(),
                errors,
            })
        }
    }

    /// Wraps a compiled config into a snapshot, reusing the upstream health
    /// of `previous` for addresses that stay.
    pub fn assemble(
        generation: u64,
        config: Config,
        table: DomainTable,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        book: &Book,
    ) -> Snapshot {
        // Kept per pool, address and TLS settings: health is per pool and
        // upstream (the same address in two pools, with their own checks,
        // has two states), and a kept-alive connection is reused only as
        // what it was opened as.
        let tls_key = |u: &Upstream| u.tls.as_ref().map(|t| t.key.clone());
        let mut known: HashMap<UpstreamKey, Arc<Upstream>> = HashMap::new();
        if let Some(prev) = previous {
            for p in prev.pools.iter() {
                for u in &p.upstreams {
                    known.entry((&p.name, u.addr, tls_key(u))).or_insert_with(|| u.clone());
                }
            }
        }
        let pools = config
            .pools
            .iter()
            .map(|spec| {
                let upstreams = spec
                    .upstreams
                    .iter()
                    .map(|a| {
                        let key = (spec.name.as_str(), *a, spec.tls.as_ref().map(|t| t.key.clone()));
                        let new = || Arc::new(Upstream::with_tls(*a, spec.tls.clone()));
                        known.entry(key).or_insert_with(new).clone()
                    })
                    .collect();
                let mut pool =
                    Pool::new(spec.name.as_str().into(), upstreams, metrics.pool(&spec.name)).with_policy(spec);
                pool.http2 = spec.http2;
                // What the pool's names resolved to stays until the resolver
                // looks them up again.
                if let Some(prev) = previous.and_then(|p| p.pools.iter().find(|p| p.name == pool.name)) {
                    let names: Vec<String> = spec.names.iter().map(|n| n.to_string()).collect();
                    let carried: Vec<Arc<Upstream>> = prev
                        .resolved
                        .load()
                        .iter()
                        .filter(|u| u.origin.as_deref().is_some_and(|o| names.iter().any(|n| n == o)))
                        .cloned()
                        .collect();
                    pool.resolved.store(Arc::new(carried));
                }
                pool
            })
            .collect();

        // One verifier per (key source, issuer): tenants without their own
        // identity provider share [identity.jwt]'s.
        let mut verifiers: HashMap<(KeySource, Option<String>), Arc<Verifier>> = HashMap::new();
        let mut verifier = |spec: &config::TenantSpec| -> Option<Arc<Verifier>> {
            if spec.jwt.mode == JwtMode::Off {
                return None;
            }
            let jwt = config.identity.jwt.clone().unwrap_or_else(|| config::identity::Jwt {
                keys: None,
                refresh: std::time::Duration::from_secs(config::identity::DEFAULT_JWKS_REFRESH_SECS),
                issuer: None,
                audience: Vec::new(),
                claim: "/tenant".into(),
                leeway_secs: config::identity::DEFAULT_LEEWAY_SECS,
                token_from: config::identity::TokenFrom::Authorization,
            });
            let source = match &spec.jwt.jwks_url {
                Some(url) => KeySource::Url(url.clone()),
                None => jwt.keys.clone()?,
            };
            let issuer = spec.jwt.issuer.clone();
            let v = verifiers
                .entry((source.clone(), issuer.clone()))
                .or_insert_with(|| Arc::new(Verifier::new(&jwt, &source, issuer.as_deref())));
            Some(v.clone())
        };
        let labelled = config.labels_tenants();
        let other = metrics.tenant(OTHER_TENANTS);
        let other_limits = metrics.tenant_limits(OTHER_TENANTS);
        let tenants = config
            .tenants
            .iter()
            .map(|spec| {
                let id: Arc<str> = spec.id.as_str().into();
                Tenant {
                    // Tenant ids are validated to [a-z0-9_-], always a valid header value.
                    header_value: HeaderValue::from_str(&spec.id).unwrap_or(HeaderValue::from_static("invalid")),
                    pool: spec.serving_pool(&config.rollouts),
                    cohort: spec.cohort.and_then(|c| {
                        let r = config.rollouts.get(c.rollout as usize)?;
                        Some(metrics.rollouts.cohort(&r.name, c.moved))
                    }),
                    counters: if labelled {
                        metrics.tenant(&spec.id)
                    } else {
                        other.clone()
                    },
                    limiter: spec.limits.as_ref().map(|_| book.state(&id)),
                    policy_header: spec.limits.as_ref().and_then(|l| l.policy_header()),
                    limit_counters: if labelled {
                        metrics.tenant_limits(&spec.id)
                    } else {
                        other_limits.clone()
                    },
                    edge: super::edge::Edge::build(spec, &config.profile, metrics),
                    id,
                    jwt_mode: spec.jwt.mode,
                    jwt: verifier(spec),
                    strip_prefix: spec.strip_prefix,
                }
            })
            .collect();
        Snapshot {
            generation,
            config,
            table,
            tenants,
            pools,
        }
    }

    /// The tenant at `idx`.
    pub fn tenant(&self, idx: TenantIdx) -> Option<&Tenant> {
        self.tenants.get(idx as usize)
    }

    /// The pool of a tenant.
    pub fn pool_of(&self, tenant: &Tenant) -> Option<&Pool> {
        self.pools.get(tenant.pool as usize)
    }

    /// Ids of tenants with their own metric series.
    pub(crate) fn labelled_tenants(&self) -> impl Iterator<Item = &str> {
        let labelled = self.config.labels_tenants();
        self.tenants.iter().take_while(move |_| labelled).map(|t| &*t.id)
    }
}

/// Rewrites `tenants[N].x` to `tenants/<id>.toml:x` for tenants from tenant
/// files (N counts the main file's tenants first), so that a problem names
/// the file to fix and a tenant file's fields do not depend on its position.
fn relocate(field: &str, main_count: usize, stems: &[&str]) -> String {
    let mut out = String::with_capacity(field.len() + 16);
    let mut rest = field;
    while let Some(at) = rest.find("tenants[") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let digits = &from["tenants[".len()..];
        let len = digits.bytes().take_while(u8::is_ascii_digit).count();
        let index = digits[..len].parse::<usize>().ok();
        let stem = index.and_then(|n| n.checked_sub(main_count)).and_then(|k| stems.get(k));
        match (stem, digits[len..].strip_prefix(']')) {
            (Some(stem), Some(after)) => {
                out.push_str(&format!("tenants/{stem}.toml"));
                rest = match after.strip_prefix('.') {
                    Some(a) => {
                        out.push(':');
                        a
                    }
                    None => after,
                };
            }
            _ => {
                out.push_str("tenants[");
                rest = digits;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Summary of what a reload changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// Returned when compile fails, so callers can log each problem.
pub fn problems(e: &LoadError) -> Vec<String> {
    match e {
        LoadError::Invalid { errors, .. } => errors.iter().map(ConfigError::to_string).collect(),
        other => vec![other.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::relocate;

    #[test]
    fn fields_of_tenant_files_name_the_file() {
        let stems = ["acme", "beta"];
        assert_eq!(relocate("tenants[0].domains[1]", 1, &stems), "tenants[0].domains[1]");
        assert_eq!(
            relocate("tenants[1].domains[1]", 1, &stems),
            "tenants/acme.toml:domains[1]"
        );
        assert_eq!(
            relocate("tenants[0].domains[0] and tenants[2].subdomain", 1, &stems),
            "tenants[0].domains[0] and tenants/beta.toml:subdomain"
        );
        assert_eq!(relocate("tenants[].id", 1, &stems), "tenants[].id");
        assert_eq!(relocate("tenants[9].pool", 1, &stems), "tenants[9].pool");
        assert_eq!(relocate("pools.p.upstreams", 1, &stems), "pools.p.upstreams");
    }
}
