//! The immutable routing snapshot: everything a request needs, built off the
//! request path and swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::config::{self, Config, ConfigError, LoadError, PoolId, Texts};
use crate::limits::{Book, TenantState};
use crate::proxy::pool::{Pool, Upstream};
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
        Self::compile_file(path, file, errors)
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
        let mut known: HashMap<SocketAddr, Arc<Upstream>> = HashMap::new();
        if let Some(prev) = previous {
            for u in prev.pools.iter().flat_map(|p| &p.upstreams) {
                known.entry(u.addr).or_insert_with(|| u.clone());
            }
        }
        let pools = config
            .pools
            .iter()
            .map(|spec| {
                let upstreams = spec
                    .upstreams
                    .iter()
                    .map(|a| known.entry(*a).or_insert_with(|| Arc::new(Upstream::new(*a))).clone())
                    .collect();
                Pool::new(spec.name.as_str().into(), upstreams, metrics.pool(&spec.name))
            })
            .collect();

        let limit = config.telemetry.tenant_label_limit;
        let other = metrics.tenant(OTHER_TENANTS);
        let other_limits = metrics.tenant_limits(OTHER_TENANTS);
        let tenants = config
            .tenants
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let id: Arc<str> = spec.id.as_str().into();
                let labelled = i < limit;
                Tenant {
                    // Tenant ids are validated to [a-z0-9_-], always a valid header value.
                    header_value: HeaderValue::from_str(&spec.id).unwrap_or(HeaderValue::from_static("invalid")),
                    pool: spec.pool,
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
                    id,
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
        let limit = self.config.telemetry.tenant_label_limit;
        self.tenants.iter().take(limit).map(|t| &*t.id)
    }
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
