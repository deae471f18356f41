//! The domain table: every host a tenant answers to, compiled for O(1) lookup,
//! and the cross-tenant rules (duplicates, wildcard overlaps, platform
//! namespace) checked while it is built.
//!
//! A lookup costs at most three hash probes, whatever the number of tenants:
//! the exact name, then the parent name in the wildcard map, then the first
//! label in the subdomain map when the parent is a base domain.

use std::collections::{HashMap, HashSet};

use ahash::RandomState;

use super::paths::{PathTable, Shared};
use crate::config::{Config, ConfigError, DomainName, Problem};

/// Index of a tenant in the snapshot's tenant list.
pub type TenantIdx = u32;

/// How a host matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// A custom domain, exactly.
    Exact,
    /// A custom wildcard domain (`*.acme.io`).
    Wildcard,
    /// `<subdomain>.<base domain>`.
    Subdomain,
    /// A path prefix on a shared host.
    Path,
    /// The trusted tenant header on a header host.
    Header,
}

impl MatchKind {
    /// Stable lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Wildcard => "wildcard",
            MatchKind::Subdomain => "subdomain",
            MatchKind::Path => "path",
            MatchKind::Header => "header",
        }
    }
}

/// The tenant a host belongs to, and how it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub tenant: TenantIdx,
    pub kind: MatchKind,
}

type Map = HashMap<Box<str>, TenantIdx, RandomState>;

/// Compiled host → tenant table. Immutable once built.
#[derive(Debug, Default)]
pub struct DomainTable {
    exact: Map,
    wildcard: Map,
    subdomain: Map,
    bases: HashSet<Box<str>, RandomState>,
    /// Path-prefix claims on shared hosts.
    pub paths: PathTable,
    /// Tenant id → index, for the trusted tenant header (empty unless
    /// `[identity] header` is set).
    ids: Map,
}

impl DomainTable {
    /// Finds the tenant for a normalised host. No fallback: `None` means the
    /// host is nobody's.
    pub fn lookup(&self, host: &str) -> Option<Match> {
        if let Some(&tenant) = self.exact.get(host) {
            return Some(Match {
                tenant,
                kind: MatchKind::Exact,
            });
        }
        let (label, parent) = host.split_once('.')?;
        if let Some(&tenant) = self.wildcard.get(parent) {
            return Some(Match {
                tenant,
                kind: MatchKind::Wildcard,
            });
        }
        if self.bases.contains(parent) {
            if let Some(&tenant) = self.subdomain.get(label) {
                return Some(Match {
                    tenant,
                    kind: MatchKind::Subdomain,
                });
            }
        }
        None
    }

    /// The tenant with id `id`, when ids are indexed (`[identity] header`).
    pub fn by_id(&self, id: &str) -> Option<TenantIdx> {
        self.ids.get(id).copied()
    }

    /// Number of names in the table (exact, wildcard, and subdomain × base).
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + self.subdomain.len() * self.bases.len()
    }

    /// Whether the table routes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Builds the table from a validated config and reports every conflict
    /// between tenants, naming every claimant.
    pub fn build(config: &Config) -> (DomainTable, Vec<ConfigError>) {
        let mut b = Builder::new(config);
        b.subdomains();
        b.wildcards();
        b.exacts();
        b.under_wildcards();
        b.shared_hosts();
        b.paths();
        if config.identity.header.is_some() {
            for (i, t) in config.tenants.iter().enumerate() {
                b.table.ids.insert(t.id.as_str().into(), i as TenantIdx);
            }
        }
        b.finish()
    }
}

/// A conflict: the name, and each claimant with the field that claims it.
type Claims = Vec<(TenantIdx, String)>;

struct Builder<'a> {
    config: &'a Config,
    table: DomainTable,
    errors: Vec<ConfigError>,
    dup_exact: HashMap<String, Claims>,
    dup_wild: HashMap<String, Claims>,
    dup_sub: HashMap<String, Claims>,
}

impl<'a> Builder<'a> {
    fn new(config: &'a Config) -> Self {
        let names: usize = config.tenants.iter().map(|t| t.domains.len()).sum();
        let hasher = RandomState::new();
        let table = DomainTable {
            exact: Map::with_capacity_and_hasher(names, hasher.clone()),
            wildcard: Map::with_hasher(hasher.clone()),
            subdomain: Map::with_capacity_and_hasher(config.tenants.len(), hasher.clone()),
            bases: config.gateway.base_domains.iter().map(|b| b.as_str().into()).collect(),
            paths: PathTable::default(),
            ids: Map::with_hasher(hasher.clone()),
        };
        Builder {
            config,
            table,
            errors: Vec::new(),
            dup_exact: HashMap::new(),
            dup_wild: HashMap::new(),
            dup_sub: HashMap::new(),
        }
    }

    fn tenant_id(&self, t: TenantIdx) -> &str {
        &self.config.tenants[t as usize].id
    }

    fn domains(&self) -> impl Iterator<Item = (TenantIdx, usize, &'a DomainName)> + 'a {
        self.config.tenants.iter().enumerate().flat_map(|(t, spec)| {
            spec.domains
                .iter()
                .enumerate()
                .map(move |(j, d)| (t as TenantIdx, j, d))
        })
    }

    fn field_of(&self, t: TenantIdx, d: &DomainName) -> String {
        let spec = &self.config.tenants[t as usize];
        match spec.domains.iter().position(|x| x == d) {
            Some(j) => format!("tenants[{t}].domains[{j}]"),
            None => format!("tenants[{t}].subdomain"),
        }
    }

    /// The base domain `name` falls in, if any.
    fn base_of(&self, name: &str) -> Option<&'a str> {
        self.config
            .gateway
            .base_domains
            .iter()
            .find(|b| name == b.as_str() || name.strip_suffix(b.as_str()).is_some_and(|p| p.ends_with('.')))
            .map(String::as_str)
    }

    fn subdomains(&mut self) {
        for (t, spec) in self.config.tenants.iter().enumerate() {
            let Some(label) = &spec.subdomain else {
                continue;
            };
            let t = t as TenantIdx;
            if let Some(&owner) = self.table.subdomain.get(label.as_str()) {
                self.dup_sub
                    .entry(label.clone())
                    .or_insert_with(|| vec![(owner, format!("tenants[{owner}].subdomain"))])
                    .push((t, format!("tenants[{t}].subdomain")));
            } else {
                self.table.subdomain.insert(label.as_str().into(), t);
            }
        }
    }

    fn wildcards(&mut self) {
        for (t, j, d) in self.domains() {
            let DomainName::Wildcard(parent) = d else {
                continue;
            };
            let field = format!("tenants[{t}].domains[{j}]");
            if let Some(base) = self.base_of(parent) {
                let problem = Problem::InsideBaseDomain {
                    name: d.to_string(),
                    base: base.to_string(),
                };
                self.errors.push(self.err(Some(t), field, problem));
                continue;
            }
            // `*.acme.com` would capture a platform domain `saas.acme.com` itself.
            let covered = self
                .config
                .gateway
                .base_domains
                .iter()
                .find(|b| b.split_once('.').map(|(_, p)| p) == Some(parent));
            if let Some(base) = covered {
                let problem = Problem::WildcardCoversBase {
                    parent: parent.clone(),
                    base: base.clone(),
                };
                self.errors.push(self.err(Some(t), field, problem));
                continue;
            }
            match self.table.wildcard.get(parent.as_str()) {
                Some(&owner) if owner == t => {}
                Some(&owner) => {
                    let first = self.field_of(owner, d);
                    self.dup_wild
                        .entry(parent.clone())
                        .or_insert_with(|| vec![(owner, first)])
                        .push((t, field));
                }
                None => {
                    self.table.wildcard.insert(parent.as_str().into(), t);
                }
            }
        }
    }

    fn exacts(&mut self) {
        for (t, j, d) in self.domains() {
            let DomainName::Exact(name) = d else { continue };
            let field = format!("tenants[{t}].domains[{j}]");
            if let Some(base) = self.base_of(name) {
                // Only `<label>.<base>` can be legitimate: the tenant's own subdomain.
                let owner = name
                    .split_once('.')
                    .filter(|(_, parent)| *parent == base)
                    .and_then(|(label, _)| self.table.subdomain.get(label).copied());
                match owner {
                    Some(o) if o == t => {}
                    Some(o) => self
                        .dup_exact
                        .entry(name.clone())
                        .or_insert_with(|| vec![(o, format!("tenants[{o}].subdomain"))])
                        .push((t, field)),
                    None => {
                        let problem = Problem::InsideBaseDomain {
                            name: name.clone(),
                            base: base.to_string(),
                        };
                        self.errors.push(self.err(Some(t), field, problem));
                    }
                }
                continue;
            }
            match self.table.exact.get(name.as_str()) {
                Some(&owner) if owner == t => {}
                Some(&owner) => {
                    let first = self.field_of(owner, d);
                    self.dup_exact
                        .entry(name.clone())
                        .or_insert_with(|| vec![(owner, first)])
                        .push((t, field));
                }
                None => {
                    self.table.exact.insert(name.as_str().into(), t);
                }
            }
        }
    }

    fn under_wildcards(&mut self) {
        let mut found = Vec::new();
        for (name, &t) in &self.table.exact {
            let Some((_, parent)) = name.split_once('.') else {
                continue;
            };
            if let Some(&w) = self.table.wildcard.get(parent) {
                if w != t {
                    found.push((name.to_string(), parent.to_string(), w, t));
                }
            }
        }
        found.sort();
        for (name, parent, w, t) in found {
            let field = self.field_of(t, &DomainName::Exact(name.clone()));
            let tenants = vec![self.tenant_id(w).to_string(), self.tenant_id(t).to_string()];
            self.errors
                .push(self.err(None, field, Problem::UnderWildcard { name, parent, tenants }));
        }
    }

    /// A shared host is nobody's domain, and outside the subdomain namespace.
    fn shared_hosts(&mut self) {
        for (i, shared) in self.config.shared_hosts.iter().enumerate() {
            let field = format!("gateway.shared_hosts[{i}]");
            let name = shared.host.as_str();
            if let Some(base) = self.base_of(name) {
                let problem = Problem::SharedHostInBase {
                    name: name.to_string(),
                    base: base.to_string(),
                };
                self.errors.push(self.err(None, field, problem));
                continue;
            }
            let owner = self.table.exact.get(name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.table.wildcard.get(parent).copied()
            });
            if let Some(owner) = owner {
                let problem = Problem::SharedHostClaimed {
                    name: name.to_string(),
                    tenants: vec![self.tenant_id(owner).to_string()],
                };
                self.errors.push(self.err(None, field, problem));
                continue;
            }
            let platform_pool = shared.platform_pool;
            self.table.paths.add_shared(name, Shared { platform_pool });
        }
    }

    /// Prefix claims: each prefix on one tenant, and no tenant's prefix
    /// inside another's on the same host.
    fn paths(&mut self) {
        let mut dups: HashMap<String, Claims> = HashMap::new();
        for (t, spec) in self.config.tenants.iter().enumerate() {
            let t = t as TenantIdx;
            for (j, c) in spec.paths.iter().enumerate() {
                let field = format!("tenants[{t}].paths[{j}]");
                match self.table.paths.claim(&c.host, &c.prefix, t) {
                    None => {}
                    Some(owner) if owner == t => {}
                    Some(owner) => {
                        let first = self.config.tenants[owner as usize]
                            .paths
                            .iter()
                            .position(|x| x == c)
                            .map_or_else(
                                || format!("tenants[{owner}].paths"),
                                |k| format!("tenants[{owner}].paths[{k}]"),
                            );
                        dups.entry(format!("{}{}", c.host, c.prefix))
                            .or_insert_with(|| vec![(owner, first)])
                            .push((t, field));
                    }
                }
            }
        }
        self.errors
            .extend(self.conflicts(&dups, |path, tenants| Problem::DuplicatePath { path, tenants }));
        // Every proper ancestor of every claim, one probe each.
        let mut nested = Vec::new();
        for (t, spec) in self.config.tenants.iter().enumerate() {
            for (j, c) in spec.paths.iter().enumerate() {
                let mut end = c.prefix.len();
                while let Some(at) = c.prefix[..end].rfind('/').filter(|&a| a > 0) {
                    end = at;
                    let outer = &c.prefix[..end];
                    match self.table.paths.owner(&c.host, outer) {
                        Some(o) if o as usize != t => {
                            nested.push((t, j, format!("{}{outer}", c.host), o));
                        }
                        _ => {}
                    }
                }
            }
        }
        for (t, j, outer, o) in nested {
            let c = &self.config.tenants[t].paths[j];
            let problem = Problem::NestedPath {
                inner: format!("{}{}", c.host, c.prefix),
                outer,
                tenants: vec![self.tenant_id(o).to_string(), self.config.tenants[t].id.clone()],
            };
            self.errors
                .push(self.err(None, format!("tenants[{t}].paths[{j}]"), problem));
        }
    }

    fn err(&self, t: Option<TenantIdx>, field: String, problem: Problem) -> ConfigError {
        ConfigError {
            tenant: t.map(|t| self.tenant_id(t).to_string()),
            field,
            problem,
        }
    }

    fn conflicts(&self, dups: &HashMap<String, Claims>, make: fn(String, Vec<String>) -> Problem) -> Vec<ConfigError> {
        let mut out: Vec<ConfigError> = dups
            .iter()
            .map(|(name, claims)| {
                let tenants = claims.iter().map(|(t, _)| self.tenant_id(*t).to_string()).collect();
                let field = claims.iter().map(|(_, f)| f.as_str()).collect::<Vec<_>>().join(" and ");
                ConfigError {
                    tenant: None,
                    field,
                    problem: make(name.clone(), tenants),
                }
            })
            .collect();
        out.sort_by(|a, b| a.field.cmp(&b.field));
        out
    }

    fn finish(mut self) -> (DomainTable, Vec<ConfigError>) {
        let mut errors = self.conflicts(&self.dup_sub, |label, tenants| Problem::DuplicateSubdomain {
            label,
            tenants,
        });
        errors.extend(
            self.conflicts(&self.dup_wild, |parent, tenants| Problem::DuplicateWildcard {
                parent,
                tenants,
            }),
        );
        errors.extend(
            self.conflicts(&self.dup_exact, |name, tenants| Problem::DuplicateDomain {
                name,
                tenants,
            }),
        );
        errors.append(&mut self.errors);
        (self.table, errors)
    }
}
