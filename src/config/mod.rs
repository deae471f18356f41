//! Turns the TOML file into a validated model.
//!
//! [`file`] is the serde view of the file; the rest of the crate only sees the
//! types here, whose values have passed validation. Field-level rules live in
//! this module; rules that compare tenants with each other (duplicates,
//! wildcard overlaps, platform namespace) live in `routing::table`, which is
//! built from this model.

pub mod diff;
pub mod dns01;
pub mod domains;
mod error;
pub mod file;
pub mod generate;
pub mod identity;
pub mod pages;
mod parse;
pub mod plans;
pub mod profile;
pub mod proxy_protocol;
pub mod rollouts;
pub mod templates;
pub mod upstream;
pub mod upstream_tls;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

pub use error::{ConfigError, LoadError, Problem};
pub use identity::{Identity, JwtMode, PathClaim, SharedHost, TenantJwt};

use crate::routing::host;

/// Subdomains no tenant may take unless the operator changes the list.
pub const DEFAULT_RESERVED_SUBDOMAINS: &[&str] = &[
    "www", "api", "admin", "app", "auth", "login", "mail", "status", "static", "cdn", "docs", "support",
];
/// Headers the gateway itself sets or needs for framing: neither the tenant
/// header nor a strip-list entry may name one.
pub const GATEWAY_HEADERS: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];
/// Longest ACME retry delay honoured (30 days); larger settings are capped.
pub const MAX_RETRY_SECS: u64 = 30 * 24 * 3600;
/// Client headers removed before forwarding, besides the tenant header.
pub const DEFAULT_STRIP_HEADERS: &[&str] = &["forwarded", "x-real-ip", "x-forwarded-port"];

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where quota counts are persisted.
    pub quota_file: PathBuf,
    pub gateway: Gateway,
    pub telemetry: Telemetry,
    pub admin: Admin,
    /// `[domains]`: the custom-domain lifecycle.
    pub domains: domains::Domains,
    /// `None` when the gateway serves plain HTTP only.
    pub tls: Option<Tls>,
    /// Fleet mode: limits shared through Redis. `None` on a single node.
    pub store: Option<Store>,
    /// Pools in name order; tenants refer to them by index.
    pub pools: Vec<PoolSpec>,
    /// Templates in name order. Already applied to `tenants`; kept for the
    /// admin API and diffs.
    pub templates: Vec<TemplateSpec>,
    pub tenants: Vec<TenantSpec>,
    /// Rollouts in name order; tenants refer to them by index.
    pub rollouts: Vec<rollouts::Rollout>,
    /// `[profile]` and `[features]`: the edge profile's settings.
    pub profile: profile::ProfileSettings,
    /// `[gateway] shared_hosts`, with their `[shared_hosts."<host>"]`.
    pub shared_hosts: Vec<SharedHost>,
    /// `[identity]`.
    pub identity: Identity,
}

impl Config {
    /// Whether each tenant gets its own `tenant` label in per-tenant
    /// metrics: only while there are at most `tenant_label_limit` tenants.
    pub fn labels_tenants(&self) -> bool {
        self.tenants.len() <= self.telemetry.tenant_label_limit
    }
}

/// A template, validated: the section as written and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub name: String,
    /// Defined as `[templates.<name>]` in the main file (read-only through
    /// the admin API), not in `templates/<name>.toml`.
    pub in_main_file: bool,
    pub section: file::TemplateSection,
}

/// `[store]`, validated: the Redis that replicas share limits through.
#[derive(Clone, PartialEq)]
pub struct Store {
    /// May hold a password: never logged (see the `Debug` impl).
    pub redis_url: String,
    /// Bound on one Redis call; past it the replica serves on local limits.
    pub timeout: Duration,
    /// First part of every key: `<prefix>:{<tenant>}:...`.
    pub key_prefix: String,
    /// For `rediss://`: the CA certificates (PEM) to trust instead of the
    /// system's, and the file they came from.
    pub ca: Option<(PathBuf, Vec<u8>)>,
    /// `key_file`: the AES-256 key that encrypts certificates' private keys
    /// in Redis (fleet ACME), and the file it came from. Never logged.
    pub key: Option<(PathBuf, [u8; 32])>,
    /// How long a replica's hold on one name's certificate order lasts
    /// without renewal (fleet ACME): a replica that dies mid-order loses it
    /// after this, and another takes the order over.
    pub lease: Duration,
}

impl Store {
    /// A Redis client for this store (no connection yet).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.ca {
            Some((_, pem)) => redis::Client::build_with_tls(
                self.redis_url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(self.redis_url.as_str()),
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("redis_url", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("ca_file", &self.ca.as_ref().map(|(p, _)| p))
            .field("key_file", &self.key.as_ref().map(|(p, _)| p))
            .field("lease", &self.lease)
            .finish()
    }
}

/// Default `[gateway] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// `[gateway]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub http_listen: SocketAddr,
    pub https_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    /// The admin API's listener (served only when tokens are configured).
    pub admin_listen: SocketAddr,
    /// Normalised platform domains.
    pub base_domains: Vec<String>,
    pub reserved_subdomains: Vec<String>,
    pub tenant_header: HeaderName,
    /// Removed from client requests before forwarding (the tenant header is
    /// always removed too).
    pub strip_headers: Vec<HeaderName>,
    pub timeouts: Timeouts,
    /// How long an upstream that failed to connect is skipped.
    pub upstream_down: Duration,
    /// How upstream host names are resolved.
    pub resolver: upstream::Resolver,
    pub threads: usize,
    /// Reload when the config file changes (SIGHUP always reloads).
    pub watch_config: bool,
    /// How long a client may take to send a whole request head, stay idle
    /// between requests, wait between request-body reads, or take one
    /// write; an HTTP/2 connection's handshake and idle time too.
    pub client_timeout: Duration,
    /// An upgraded connection (WebSocket) with no bytes either way for this
    /// long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Client connections open at once on each proxy listener; more are
    /// closed as soon as they are accepted.
    pub max_connections: usize,
    /// Forward client header names that contain `_` (dropped by default:
    /// CGI-style backends read `X_Tenant_Id` as `X-Tenant-Id`).
    pub underscores_in_headers: bool,
    /// On SIGTERM: how long requests in flight may finish before exit.
    pub shutdown_grace: Duration,
    /// The Unix socket a graceful binary upgrade hands the listening
    /// sockets over.
    pub upgrade_sock: String,
    /// `true`: each listener's threads share one work-stealing scheduler.
    /// `false` (the default): each thread runs its own scheduler, a
    /// connection stays on the thread that serves it, and backend
    /// connections are kept per thread.
    pub work_stealing: bool,
    /// The region this replica serves (data residency).
    pub region: Option<String>,
    /// With `region`: tenants of another region get 421.
    pub refuse_other_regions: bool,
    /// PROXY protocol on the proxy listeners.
    pub proxy_protocol: proxy_protocol::ProxyProtocol,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// How long an idle upstream connection is kept for reuse.
    pub idle: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[telemetry]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub access_log: bool,
    pub log_format: LogFormat,
    /// With at most this many tenants, each has its own label in per-tenant
    /// metrics; with more, all share `_other` (the busiest are then named by
    /// `tenantgate_top_tenant_*`), which keeps label cardinality bounded.
    pub tenant_label_limit: usize,
    /// K of the top-tenant sketches: tenants ranked and exported as
    /// `tenantgate_top_tenant_*` (read at start).
    pub top_tenants: usize,
    /// Bounds of the `/metrics` listener.
    pub metrics_listening: Listening,
}

/// Bounds of an operator listener (admin API, `/metrics`), so that idle or
/// slow clients cannot hold its connections, or the process's descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// How long a client may take to send a request head.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Listening {
    /// The admin API's defaults.
    pub const ADMIN: Listening = Listening {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(60),
        max_connections: 64,
    };
    /// The metrics listener's defaults.
    pub const METRICS: Listening = Listening {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(10),
        max_connections: 16,
    };
}

impl Default for Listening {
    fn default() -> Self {
        Listening::ADMIN
    }
}

/// A positive number of milliseconds (`0` refused), or `default`.
fn positive_ms(field: &str, v: Option<u64>, default: Duration, errs: &mut Vec<ConfigError>) -> Duration {
    match v {
        Some(0) => {
            errs.push(err(None, field, Problem::Zero { value: "0".into() }));
            default
        }
        Some(ms) => Duration::from_millis(ms),
        None => default,
    }
}

/// A positive count (`0` refused), or `default`.
fn positive_count(field: &str, v: Option<usize>, default: usize, errs: &mut Vec<ConfigError>) -> usize {
    match v {
        Some(0) => {
            errs.push(err(None, field, Problem::Zero { value: "0".into() }));
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// `[admin]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admin {
    pub tokens: Vec<Token>,
    /// Applied versions kept for rollback.
    pub history: usize,
    /// Bounds of the admin listener (read at start).
    pub listening: Listening,
    /// The audit log is rotated (to `audit.jsonl.1`) past this size.
    pub audit_max_bytes: u64,
}

/// Default size at which the audit log is rotated.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 << 20;

/// A token's own request limits (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenLimits {
    /// Sustained requests per second, and the burst above it.
    pub rate: Option<(u32, u32)>,
    /// Requests of this token in progress at once.
    pub max_concurrent: Option<u32>,
}

impl TokenLimits {
    /// What a tenant token gets unless its entry says otherwise.
    pub const TENANT: TokenLimits = TokenLimits {
        rate: Some((10, 20)),
        max_concurrent: Some(2),
    };
}

/// An admin API bearer token: its name, what it may touch, and the SHA-256
/// of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub scope: Scope,
    pub sha256: [u8; 32],
    pub limits: TokenLimits,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Operator,
    /// One tenant's own settings, within what the operator set.
    Tenant(String),
}

/// A backend pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    /// The `IP:port` entries.
    pub upstreams: Vec<SocketAddr>,
    /// The `host:port` entries, resolved in the background.
    pub names: Vec<upstream::UpstreamName>,
    /// The region its backends are in.
    pub region: Option<String>,
    /// Maintenance of every tenant on the pool.
    pub maintenance: Option<profile::Maintenance>,
    /// TLS to the backends (`tls = true`).
    pub tls: Option<upstream_tls::UpstreamTls>,
    /// HTTP/2 to the backends.
    pub http2: bool,
    /// PINGs on the HTTP/2 backend connections; `None`: none.
    pub h2_keepalive: Option<upstream::H2Keepalive>,
    /// Active health checks; `None`: off.
    pub health: Option<upstream::HealthCheck>,
    pub outlier: upstream::Outlier,
    pub retries: upstream::Retries,
}

/// Index of a pool in [`Config::pools`].
pub type PoolId = u32;

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    pub id: String,
    /// The label under each base domain, if the tenant has one.
    pub subdomain: Option<String>,
    pub domains: Vec<DomainName>,
    /// The template the settings below started from, if any.
    pub template: Option<String>,
    pub pool: PoolId,
    /// Overrides `[tls] redirect_http` for this tenant.
    pub redirect_https: Option<bool>,
    /// Effective limits (plan plus overrides); `None` is unlimited.
    pub limits: Option<crate::limits::Limits>,
    /// The plan named (by the tenant or its template), as written.
    pub plan: Option<String>,
    /// Labels of the plan, template and tenant, merged.
    pub labels: BTreeMap<String, String>,
    /// Features, locale, region and branding, merged plan < template < tenant.
    /// Shared by the tenants with the same profile (most have the same few).
    pub profile: Arc<profile::Profile>,
    /// Maintenance mode, if on.
    pub maintenance: Option<profile::Maintenance>,
    /// Prefixes claimed on shared hosts.
    pub paths: Vec<PathClaim>,
    /// Remove the claimed prefix toward the backend.
    pub strip_prefix: bool,
    pub jwt: TenantJwt,
    /// Exempt from every rollout.
    pub pinned: bool,
    /// The tenant's place among a rollout's candidates, if any.
    pub cohort: Option<rollouts::Cohort>,
}

impl TenantSpec {
    /// The pool that serves the tenant now: its rollout's `to` when it is
    /// in the moved share, else its own.
    pub fn serving_pool(&self, rollouts: &[rollouts::Rollout]) -> PoolId {
        match self.cohort {
            Some(c) if c.moved => rollouts.get(c.rollout as usize).map_or(self.pool, |r| r.to),
            _ => self.pool,
        }
    }
}

/// Labels a tenant may carry at most.
pub const MAX_LABELS: usize = 32;

/// Why a label is refused, if it is.
pub fn label_problem(key: &str, value: &str) -> Option<&'static str> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && (key.as_bytes()[0].is_ascii_lowercase() || key.as_bytes()[0].is_ascii_digit())
        && key
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-' | b'/'));
    if !key_ok {
        return Some("the key is not 1 to 63 characters of a-z, 0-9, '.', '_', '-' and '/'");
    }
    if value.chars().count() > 255 || value.chars().any(char::is_control) {
        return Some("the value is longer than 255 characters or has control characters");
    }
    None
}

/// Where certificates for names no operator file covers come from.
// One per config (not per request or tenant): its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer {
    /// Operator files only.
    None,
    /// The local development CA.
    Internal,
    /// An ACME CA, over HTTP-01 answered by this gateway.
    Acme(Acme),
}

/// `[tls]`, validated. Paths are resolved against the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub issuer: Issuer,
    pub certs_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Certificate served to clients that send no SNI.
    pub default_sni: Option<String>,
    /// Refuse with 421 a Host the handshake's SNI and certificate do not cover.
    pub strict_sni_host: bool,
    /// Answer plain HTTP with a 308 to HTTPS (tenants may override).
    pub redirect_http: bool,
    /// Managed certificates kept in memory.
    pub cache_size: usize,
}

/// `[tls.acme]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The CA orders go to: the first of `cas` (see [`Acme::for_attempt`]).
    pub directory_url: String,
    pub contact: Option<String>,
    pub ca_root: Option<PathBuf>,
    /// External Account Binding with the CA of `directory_url`.
    pub eab: Option<Eab>,
    pub max_concurrent_orders: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// `[tls.acme.dns01]`: DNS-01 through RFC 2136, for wildcards.
    pub dns01: Option<Box<dns01::Dns01>>,
    /// `challenge = "tls-alpn-01"`: exact names are proven on the HTTPS
    /// listener (RFC 8737) instead of over HTTP-01.
    pub tls_alpn: bool,
    /// Every CA in order of preference: `directory_url` first (when set),
    /// then `[[tls.acme.issuers]]`. Never empty.
    pub cas: Vec<AcmeCa>,
    /// Failed orders of one name in a row after which it moves to the next CA.
    pub fallback_after: u32,
    /// First orders per registered domain in any 7 days (Let's Encrypt: 50).
    pub budget_per_registered_domain: u64,
    /// First orders per account (CA directory) in any 3 hours (Let's Encrypt: 300).
    pub budget_per_account: u64,
    /// The shortest wait between two ARI polls of one certificate, whatever
    /// the CA's `Retry-After` says (the longest is a day).
    pub ari_min_poll: Duration,
}

/// One ACME CA of the ordered list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeCa {
    pub directory_url: String,
    pub ca_root: Option<PathBuf>,
    pub eab: Option<Eab>,
}

/// An External Account Binding: the key id and the decoded HMAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

impl Acme {
    /// These settings aimed at the CA for a name's order after `failures`
    /// failed orders in a row: the first CA, then the next one after every
    /// `fallback_after` failures, round the list.
    pub fn for_attempt(&self, failures: u32) -> Acme {
        let n = self.cas.len().max(1);
        let i = (failures / self.fallback_after.max(1)) as usize % n;
        let mut a = self.clone();
        if let Some(ca) = self.cas.get(i) {
            a.directory_url = ca.directory_url.clone();
            a.ca_root = ca.ca_root.clone();
            a.eab = ca.eab.clone();
        }
        a
    }
}

impl Tls {
    /// The DNS-01 settings, when the issuer is ACME and has them.
    pub fn dns01(&self) -> Option<&dns01::Dns01> {
        match &self.issuer {
            Issuer::Acme(a) => a.dns01.as_deref(),
            _ => None,
        }
    }

    /// Whether platform hosts (`<subdomain>.<base>`) share one
    /// `*.<base>` certificate per base domain.
    pub fn base_wildcard(&self) -> bool {
        self.dns01().is_some_and(|d| d.wildcard_base_domains)
    }
}

/// A normalised custom domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainName {
    /// Matches this name only.
    Exact(String),
    /// `*.parent`: matches exactly one label below `parent`.
    Wildcard(String),
}

impl std::fmt::Display for DomainName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainName::Exact(n) => f.write_str(n),
            DomainName::Wildcard(p) => write!(f, "*.{p}"),
        }
    }
}

/// Reads and parses a file; field validation only. Most callers want
/// `registry::Snapshot::load`, which also checks cross-tenant rules.
pub fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses TOML text. `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<file::File, LoadError> {
    parse::from_str(text).map_err(|e| LoadError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Validates every field. Returns the model built from the valid parts and
/// every problem found, so that callers can report all problems at once.
pub fn validate(file: file::File, base_dir: &Path) -> (Config, Vec<ConfigError>) {
    let mut errs = Vec::new();
    let mut file = file;
    let shared_raw = std::mem::take(&mut file.gateway.shared_hosts);
    let gateway = validate_gateway(file.gateway, &mut errs);
    let telemetry = validate_telemetry(file.telemetry, &mut errs);
    let mut admin_section = file.admin.unwrap_or_default();
    let env_tokens = std::env::var(TOKENS_ENV).unwrap_or_default();
    let from_config = admin_section.tokens.len();
    admin_section.tokens.extend(env_token_sections(&env_tokens));
    let admin = validate_admin(admin_section, from_config, &mut errs);
    let domains = domains::validate(file.domains, file.webhooks, base_dir, &mut errs);
    let tls = file.tls.map(|t| validate_tls(t, base_dir, &gateway, &mut errs));
    let plans = plans::Plans::new(&file.plans, file.limits.as_ref(), &mut errs);
    let store = file.store.map(|s| validate_store(s, base_dir, &mut errs));
    let fleet_acme = matches!(tls.as_ref().map(|t| &t.issuer), Some(Issuer::Acme(_)));
    if store.as_ref().is_some_and(|s| s.key.is_none()) && fleet_acme {
        errs.push(err(None, "store.key_file", Problem::FleetAcmeWithoutKey));
    }
    let profile_settings = profile::settings(file.profile, file.features, &gateway, base_dir, &mut errs);
    let quota_file = {
        let p = PathBuf::from(
            file.limits
                .as_ref()
                .and_then(|l| l.quota_file.clone())
                .unwrap_or("state/quotas.json".into()),
        );
        if p.is_absolute() {
            p
        } else {
            base_dir.join(p)
        }
    };

    let mut pools = Vec::with_capacity(file.pools.len());
    let mut pool_ids = HashMap::with_capacity(file.pools.len());
    for (name, section) in file.pools {
        let field = format!("pools.{name}.upstreams");
        if section.upstreams.is_empty() {
            errs.push(err(None, &field, Problem::EmptyPool { pool: name.clone() }));
        }
        let mut upstreams = Vec::with_capacity(section.upstreams.len());
        let mut names = Vec::new();
        for u in &section.upstreams {
            if let Ok(a) = u.parse::<SocketAddr>() {
                upstreams.push(a);
            } else if let Some(n) = upstream::parse_name(u) {
                names.push(n);
            } else {
                errs.push(err(None, &field, Problem::BadUpstream { value: u.clone() }));
            }
        }
        pool_ids.insert(name.clone(), pools.len() as PoolId);
        let (region, maintenance) =
            profile::pool_fields(&name, section.region.as_ref(), section.maintenance.as_ref(), &mut errs);
        let raw = upstream_tls::Raw {
            tls: section.tls,
            server_name: section.tls_server_name.as_deref(),
            ca_file: section.tls_ca_file.as_deref(),
            verify: section.tls_verify,
            client_cert: section.tls_client_cert.as_deref(),
            client_key: section.tls_client_key.as_deref(),
        };
        let tls = upstream_tls::validate(&name, &raw, base_dir, &mut errs);
        let health = section.health.as_ref().map(|h| upstream::health(&name, h, &mut errs));
        let outlier = upstream::outlier(&name, section.outlier.as_ref(), &mut errs);
        let retries = upstream::retries(
            &name,
            section.retries,
            section.retry_budget_percent,
            section.retry_min_per_second,
            &mut errs,
        );
        let h2_keepalive = upstream::h2_keepalive(
            &name,
            section.http2,
            section.http2_keepalive_interval_ms,
            section.http2_keepalive_timeout_ms,
            &mut errs,
        );
        pools.push(PoolSpec {
            name,
            upstreams,
            names,
            region,
            maintenance,
            tls,
            http2: section.http2,
            h2_keepalive,
            health,
            outlier,
            retries,
        });
    }

    let templates = templates::validate(file.templates, file.template_files, &pool_ids, &plans, &mut errs);
    let shared_hosts = identity::validate_shared_hosts(&shared_raw, file.shared_hosts, &pool_ids, &mut errs);
    let identity = identity::validate_identity(file.identity, base_dir, &mut errs);

    let reserved: HashSet<&str> = gateway.reserved_subdomains.iter().map(String::as_str).collect();
    // Positions of each id, to name every copy of a duplicate.
    let mut ids: HashMap<String, Vec<usize>> = HashMap::with_capacity(file.tenants.len());
    let mut tenants = Vec::with_capacity(file.tenants.len());
    // One copy of each distinct profile, shared by its tenants.
    let mut profiles: HashSet<Arc<profile::Profile>> = HashSet::new();
    for (i, t) in file.tenants.into_iter().enumerate() {
        profile::check_tenant(i, &t, &mut errs);
        let (t, inherited) = templates::resolve(i, t, &templates, &mut errs);
        let tenant = Some(t.id.as_str());
        if !valid_tenant_id(&t.id) {
            errs.push(err(
                tenant,
                &format!("tenants[{i}].id"),
                Problem::BadTenantId { value: t.id.clone() },
            ));
        }
        ids.entry(t.id.clone()).or_default().push(i);

        let subdomain = t.subdomain.as_deref().and_then(|s| {
            let field = format!("tenants[{i}].subdomain");
            match host::normalize(s) {
                Ok(label) if !label.contains('.') => {
                    if reserved.contains(label.as_ref()) {
                        errs.push(err(
                            tenant,
                            &field,
                            Problem::ReservedSubdomain {
                                label: label.to_string(),
                            },
                        ));
                    }
                    if gateway.base_domains.is_empty() {
                        errs.push(err(tenant, &field, Problem::NoBaseDomain));
                    }
                    Some(label.into_owned())
                }
                _ => {
                    errs.push(err(tenant, &field, Problem::BadSubdomain { value: s.to_string() }));
                    None
                }
            }
        });

        let mut domains = Vec::with_capacity(t.domains.len());
        for (j, raw) in t.domains.iter().enumerate() {
            let field = format!("tenants[{i}].domains[{j}]");
            match parse_domain(raw) {
                Ok(d) => {
                    if let Some(p) = public_suffix_problem(&d) {
                        errs.push(err(tenant, &field, p));
                    } else {
                        domains.push(d);
                    }
                }
                Err(p) => errs.push(err(tenant, &field, p)),
            }
        }

        let pool_field = || format!("tenants[{i}].pool");
        let pool = match t.pool.as_ref().map(|p| (p, pool_ids.get(p))) {
            Some((_, Some(&p))) => p,
            // Keep the tenant so later positions (tenants[i]) stay right;
            // the config is refused anyway.
            Some((name, None)) => {
                if !inherited.has("pool") {
                    let problem = Problem::UnknownPool { pool: name.clone() };
                    errs.push(err(tenant, &pool_field(), problem));
                }
                PoolId::MAX
            }
            None => {
                if !inherited.unknown() {
                    let problem = Problem::MissingPool {
                        template: t.template.clone(),
                    };
                    errs.push(err(tenant, &pool_field(), problem));
                }
                PoolId::MAX
            }
        };
        let mut found = Vec::new();
        let limits = plans.resolve(i, &t, &mut found);
        errs.extend(found.into_iter().filter(|e| inherited.own(i, e)));
        let (edge_profile, labels) =
            profile::resolve(i, &t, plans.effective(t.plan.as_deref()), &profile_settings, &mut errs);
        profile::check_residency(i, &t.id, &edge_profile, pools.get(pool as usize), &mut errs);
        let maintenance = t.maintenance.as_ref().map(|m| {
            let at = |k: &str| format!("tenants[{i}].maintenance.{k}");
            // Checked (and reported) by profile::check_tenant.
            profile::maintenance(tenant, m, &at, &mut Vec::new())
        });
        if t.labels.len() > MAX_LABELS {
            let problem = Problem::BadLabel {
                key: format!("({} labels)", t.labels.len()),
                reason: "a tenant may have at most 32 labels",
            };
            errs.push(err(tenant, &format!("tenants[{i}].labels"), problem));
        }
        for (k, v) in &t.labels {
            if let Some(reason) = label_problem(k, v) {
                let problem = Problem::BadLabel { key: k.clone(), reason };
                errs.push(err(tenant, &format!("tenants[{i}].labels.{k}"), problem));
            }
        }
        let paths = identity::validate_paths(i, &t.id, &t.paths, &shared_hosts, &mut errs);
        // The tenant's (or its template's) own `jwt`, else its plan's.
        let (jwt_section, jwt_field) = match (&t.jwt, plans.effective(t.plan.as_deref())) {
            (Some(j), _) => (Some(j), format!("tenants[{i}].jwt")),
            (None, Some(plan)) if plan.jwt.is_some() => {
                let name = plans.effective_name(t.plan.as_deref()).unwrap_or_default();
                (
                    plan.jwt.as_ref(),
                    format!("plans.{name}.jwt (the plan of tenants[{i}])"),
                )
            }
            (None, _) => (None, format!("tenants[{i}].jwt")),
        };
        let jwt = identity::validate_tenant_jwt(&jwt_field, &t.id, jwt_section, &identity, &mut errs);
        tenants.push(TenantSpec {
            paths,
            strip_prefix: t.strip_prefix.unwrap_or(false),
            jwt,
            id: t.id,
            subdomain,
            domains,
            template: t.template,
            pool,
            redirect_https: t.redirect_https,
            limits,
            plan: t.plan,
            labels,
            profile: match profiles.get(&edge_profile) {
                Some(shared) => shared.clone(),
                None => {
                    let shared = Arc::new(edge_profile);
                    profiles.insert(shared.clone());
                    shared
                }
            },
            maintenance,
            pinned: t.pinned.unwrap_or(false),
            cohort: None,
        });
    }
    let rollouts = rollouts::validate(file.rollouts, file.rollout_files, &pool_ids, &pools, &mut errs);
    rollouts::assign(&rollouts, &mut tenants, &mut errs);
    let mut duplicates: Vec<(String, Vec<usize>)> = ids.into_iter().filter(|(_, at)| at.len() > 1).collect();
    duplicates.sort_by_key(|(_, at)| at[0]);
    for (id, at) in duplicates {
        let fields: Vec<String> = at.iter().map(|i| format!("tenants[{i}].id")).collect();
        errs.push(err(
            Some(&id),
            &fields.join(", "),
            Problem::DuplicateTenantId {
                id: id.clone(),
                count: at.len(),
            },
        ));
    }
    (
        Config {
            quota_file,
            gateway,
            telemetry,
            admin,
            domains,
            tls,
            store,
            pools,
            templates,
            tenants,
            rollouts,
            profile: profile_settings,
            shared_hosts,
            identity,
        },
        errs,
    )
}

fn validate_store(s: file::StoreSection, base: &Path, errs: &mut Vec<ConfigError>) -> Store {
    use redis::IntoConnectionInfo;
    if let Err(e) = s.redis_url.as_str().into_connection_info() {
        // The message names the URL's scheme and shape, never its password.
        let shown = s.redis_url.split('@').next_back().unwrap_or_default().to_string();
        errs.push(err(
            None,
            "store.redis_url",
            Problem::BadRedisUrl {
                value: shown,
                reason: e.to_string(),
            },
        ));
    }
    let timeout = match s.timeout_ms {
        Some(0) => {
            errs.push(err(None, "store.timeout_ms", Problem::Zero { value: "0".into() }));
            Duration::from_millis(DEFAULT_STORE_TIMEOUT_MS)
        }
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_millis(DEFAULT_STORE_TIMEOUT_MS),
    };
    let key_prefix = s.key_prefix.unwrap_or_else(|| "tenantgate".into());
    let ok = !key_prefix.is_empty()
        && key_prefix.len() <= 32
        && key_prefix
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
    if !ok {
        errs.push(err(
            None,
            "store.key_prefix",
            Problem::BadKeyPrefix {
                value: key_prefix.clone(),
            },
        ));
    }
    let ca = s.ca_file.and_then(|f| {
        let path = base.join(f);
        match read_ca(&path) {
            Ok(pem) => Some((path, pem)),
            Err(reason) => {
                let problem = Problem::BadStoreCa {
                    path: path.display().to_string(),
                    reason,
                };
                errs.push(err(None, "store.ca_file", problem));
                None
            }
        }
    });
    if ca.is_some() && !s.redis_url.starts_with("rediss://") {
        errs.push(err(None, "store.ca_file", Problem::StoreCaWithoutTls));
    }
    let key = s.key_file.and_then(|f| {
        let path = base.join(f);
        match read_store_key(&path) {
            Ok(key) => Some((path, key)),
            Err(reason) => {
                let problem = Problem::BadStoreKey {
                    path: path.display().to_string(),
                    reason,
                };
                errs.push(err(None, "store.key_file", problem));
                None
            }
        }
    });
    let lease = match s.lease_secs {
        Some(0) => {
            errs.push(err(None, "store.lease_secs", Problem::Zero { value: "0".into() }));
            Duration::from_secs(DEFAULT_LEASE_SECS)
        }
        Some(n) => Duration::from_secs(n),
        None => Duration::from_secs(DEFAULT_LEASE_SECS),
    };
    Store {
        redis_url: s.redis_url,
        timeout,
        key_prefix,
        ca,
        key,
        lease,
    }
}

/// Default `[store] lease_secs`.
pub const DEFAULT_LEASE_SECS: u64 = 20;

/// The 32-byte key of a `key_file`: 64 hex digits (surrounding whitespace
/// ignored).
fn read_store_key(path: &Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let hex = text.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("it holds {} characters, not 64 hex digits", hex.len()));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(key)
}

/// The PEM bytes of a file holding at least one certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(pem)
}

/// Default bound on one Redis call.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 250;

pub(crate) fn err(tenant: Option<&str>, field: &str, problem: Problem) -> ConfigError {
    ConfigError {
        tenant: tenant.map(str::to_string),
        field: field.to_string(),
        problem,
    }
}

fn validate_gateway(g: file::GatewaySection, errs: &mut Vec<ConfigError>) -> Gateway {
    let listen = |field: &str, v: &str, errs: &mut Vec<ConfigError>| {
        v.parse::<SocketAddr>().map_err(|_| {
            errs.push(err(None, field, Problem::BadListen { value: v.to_string() }));
        })
    };
    let http_listen = listen("gateway.http_listen", &g.http_listen, errs).unwrap_or(([127, 0, 0, 1], 8080).into());
    let https_listen = g
        .https_listen
        .as_deref()
        .and_then(|v| listen("gateway.https_listen", v, errs).ok());
    let metrics_listen = g
        .metrics_listen
        .as_deref()
        .and_then(|v| listen("gateway.metrics_listen", v, errs).ok());

    let admin_listen = g
        .admin_listen
        .as_deref()
        .and_then(|v| listen("gateway.admin_listen", v, errs).ok())
        .unwrap_or(([127, 0, 0, 1], 9901).into());

    let mut base_domains: Vec<String> = Vec::new();
    for (i, raw) in g.base_domains.iter().enumerate() {
        let field = format!("gateway.base_domains[{i}]");
        match host::normalize(raw) {
            Ok(n) => {
                let d = DomainName::Exact(n.into_owned());
                if let Some(p) = public_suffix_problem(&d) {
                    errs.push(err(None, &field, p));
                } else if let DomainName::Exact(n) = d {
                    if base_domains.contains(&n) {
                        errs.push(err(None, &field, Problem::DuplicateBaseDomain { name: n }));
                    } else {
                        base_domains.push(n);
                    }
                }
            }
            Err(reason) => errs.push(err(
                None,
                &field,
                Problem::BadName {
                    value: raw.clone(),
                    reason,
                },
            )),
        }
    }
    for inner in &base_domains {
        for outer in &base_domains {
            if inner.len() > outer.len() && inner.ends_with(&format!(".{outer}")) {
                errs.push(err(
                    None,
                    "gateway.base_domains",
                    Problem::NestedBaseDomain {
                        inner: inner.clone(),
                        outer: outer.clone(),
                    },
                ));
            }
        }
    }

    let reserved_subdomains = match g.reserved_subdomains {
        // Normalised like subdomains, so "Bücher" reserves "xn--bcher-kva".
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match host::normalize(s) {
                Ok(l) if !l.contains('.') => Some(l.into_owned()),
                _ => {
                    let field = format!("gateway.reserved_subdomains[{i}]");
                    errs.push(err(None, &field, Problem::BadSubdomain { value: s.clone() }));
                    None
                }
            })
            .collect(),
        None => DEFAULT_RESERVED_SUBDOMAINS.iter().map(|s| s.to_string()).collect(),
    };
    let header = |field: &str, v: &str, errs: &mut Vec<ConfigError>| {
        let name = HeaderName::from_bytes(v.to_ascii_lowercase().as_bytes())
            .map_err(|_| errs.push(err(None, field, Problem::BadHeader { value: v.to_string() })))
            .ok()?;
        if GATEWAY_HEADERS.contains(&name.as_str()) {
            errs.push(err(None, field, Problem::ReservedHeader { value: v.to_string() }));
            return None;
        }
        Some(name)
    };
    let tenant_header = g
        .tenant_header
        .as_deref()
        .and_then(|h| header("gateway.tenant_header", h, errs))
        .unwrap_or(HeaderName::from_static("x-tenant-id"));
    let strip_headers = match &g.strip_headers {
        Some(list) => list
            .iter()
            .filter_map(|h| header("gateway.strip_headers", h, errs))
            .collect(),
        None => DEFAULT_STRIP_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect(),
    };

    let mut ms = |field: &str, v: Option<u64>, default: u64| -> Duration {
        match v {
            Some(0) => {
                errs.push(err(None, field, Problem::Zero { value: "0".into() }));
                Duration::from_millis(default)
            }
            Some(v) => Duration::from_millis(v),
            None => Duration::from_millis(default),
        }
    };
    let timeouts = Timeouts {
        connect: ms("gateway.connect_timeout_ms", g.connect_timeout_ms, 3_000),
        read: ms("gateway.read_timeout_ms", g.read_timeout_ms, 30_000),
        write: ms("gateway.write_timeout_ms", g.write_timeout_ms, 30_000),
        idle: ms("gateway.upstream_idle_timeout_ms", g.upstream_idle_timeout_ms, 60_000),
    };
    let upstream_down = ms("gateway.upstream_down_ms", g.upstream_down_ms, 10_000);
    let client_timeout = ms("gateway.client_timeout_ms", g.client_timeout_ms, 60_000);
    let tunnel_idle_timeout = ms("gateway.tunnel_idle_timeout_ms", g.tunnel_idle_timeout_ms, 300_000);
    let max_connections = match g.max_connections {
        Some(0) => {
            errs.push(err(
                None,
                "gateway.max_connections",
                Problem::Zero { value: "0".into() },
            ));
            DEFAULT_MAX_CONNECTIONS
        }
        Some(n) => n,
        None => DEFAULT_MAX_CONNECTIONS,
    };
    let threads = match g.threads {
        Some(0) => {
            errs.push(err(None, "gateway.threads", Problem::Zero { value: "0".into() }));
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
    };
    let resolver = upstream::resolver(
        g.upstream_nameservers.as_deref(),
        g.upstream_dns_min_ttl_ms,
        g.upstream_dns_max_ttl_ms,
        errs,
    );
    Gateway {
        http_listen,
        https_listen,
        metrics_listen,
        admin_listen,
        base_domains,
        reserved_subdomains,
        tenant_header,
        strip_headers,
        timeouts,
        upstream_down,
        resolver,
        threads,
        watch_config: g.watch_config.unwrap_or(true),
        client_timeout,
        tunnel_idle_timeout,
        max_connections,
        underscores_in_headers: g.underscores_in_headers.unwrap_or(false),
        shutdown_grace: Duration::from_secs(g.shutdown_grace_secs.unwrap_or(5).min(3600)),
        upgrade_sock: g
            .upgrade_sock
            .unwrap_or_else(|| "/tmp/tenantgate-upgrade.sock".to_string()),
        work_stealing: g.work_stealing.unwrap_or(false),
        region: g.region.filter(|r| {
            let ok = profile::valid_region(r);
            if !ok {
                let p = Problem::Profile(profile::ProfileProblem::BadRegion { value: r.clone() });
                errs.push(err(None, "gateway.region", p));
            }
            ok
        }),
        refuse_other_regions: g.refuse_other_regions.unwrap_or(true),
        proxy_protocol: proxy_protocol::validate(
            g.proxy_protocol,
            g.trusted_sources,
            g.proxy_protocol_required,
            g.proxy_protocol_timeout_ms,
            errs,
        ),
    }
}

/// One CA of `[tls.acme]`: its directory must be an https URL.
fn ca(url: &str, ca_root: Option<PathBuf>, eab: Option<Eab>, field: &str, errs: &mut Vec<ConfigError>) -> AcmeCa {
    if !url.starts_with("https://") {
        let value = url.to_string();
        errs.push(err(None, field, Problem::BadDirectoryUrl { value }));
    }
    AcmeCa {
        directory_url: url.to_string(),
        ca_root,
        eab,
    }
}

/// An External Account Binding from `eab_kid` and `eab_hmac_key` (base64url,
/// as CAs hand it out); both or neither.
fn eab(kid: Option<String>, key: Option<String>, at: &str, errs: &mut Vec<ConfigError>) -> Option<Eab> {
    use base64::Engine;
    match (kid, key) {
        (None, None) => None,
        (Some(kid), Some(key)) => {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key.trim().trim_end_matches('='))
                .ok()
                .filter(|k| !k.is_empty());
            match decoded {
                Some(hmac_key) => Some(Eab { kid, hmac_key }),
                None => {
                    errs.push(err(None, &format!("{at}.eab_hmac_key"), Problem::BadEabKey));
                    None
                }
            }
        }
        (kid, _) => {
            let missing = if kid.is_some() { "eab_hmac_key" } else { "eab_kid" };
            errs.push(err(None, &format!("{at}.{missing}"), Problem::EabHalf));
            None
        }
    }
}

fn validate_tls(t: file::TlsSection, base: &Path, gw: &Gateway, errs: &mut Vec<ConfigError>) -> Tls {
    if gw.https_listen.is_none() {
        errs.push(err(None, "gateway.https_listen", Problem::TlsWithoutListener));
    }
    let path = |p: Option<String>, default: &str| {
        let p = PathBuf::from(p.unwrap_or_else(|| default.to_string()));
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    let acme = t.acme.map(|a| {
        let mut cas = Vec::new();
        // Checked even without directory_url: a half binding is a mistake.
        let top_eab = eab(a.eab_kid.clone(), a.eab_hmac_key.clone(), "tls.acme", errs);
        if let Some(url) = &a.directory_url {
            let ca_root = a.ca_root.clone().map(|p| path(Some(p), ""));
            cas.push(ca(url, ca_root, top_eab, "tls.acme.directory_url", errs));
        }
        for (i, is) in a.issuers.iter().flatten().enumerate() {
            let at = format!("tls.acme.issuers[{i}]");
            let ca_root = is.ca_root.clone().map(|p| path(Some(p), ""));
            let eab = eab(is.eab_kid.clone(), is.eab_hmac_key.clone(), &at, errs);
            cas.push(ca(
                &is.directory_url,
                ca_root,
                eab,
                &format!("{at}.directory_url"),
                errs,
            ));
        }
        if cas.is_empty() {
            errs.push(err(None, "tls.acme.directory_url", Problem::AcmeNoDirectory));
            cas.push(AcmeCa {
                directory_url: String::new(),
                ca_root: None,
                eab: None,
            });
        }
        let first = cas[0].clone();
        let dns01 = a.dns01.and_then(|d| dns01::validate(d, base, errs)).map(Box::new);
        let tls_alpn = match a.challenge.as_deref() {
            None | Some("http-01") => false,
            Some("tls-alpn-01") => true,
            Some(other) => {
                errs.push(err(
                    None,
                    "tls.acme.challenge",
                    Problem::BadSetting {
                        value: other.to_string(),
                        expected: "\"http-01\" or \"tls-alpn-01\"",
                    },
                ));
                false
            }
        };
        let mut positive = |field: &str, v: Option<u64>, default: u64| match v {
            Some(0) => {
                errs.push(err(None, field, Problem::Zero { value: "0".into() }));
                default
            }
            Some(v) => v,
            None => default,
        };
        Acme {
            max_concurrent_orders: positive(
                "tls.acme.max_concurrent_orders",
                a.max_concurrent_orders.map(|v| v as u64),
                4,
            ) as usize,
            retry_min: Duration::from_secs(
                positive("tls.acme.retry_min_secs", a.retry_min_secs, 60).min(MAX_RETRY_SECS),
            ),
            retry_max: Duration::from_secs(
                positive("tls.acme.retry_max_secs", a.retry_max_secs, 86_400).min(MAX_RETRY_SECS),
            ),
            directory_url: first.directory_url,
            contact: a.contact,
            ca_root: first.ca_root,
            eab: first.eab,
            fallback_after: positive("tls.acme.fallback_after", a.fallback_after.map(u64::from), 3).min(1000) as u32,
            budget_per_registered_domain: positive(
                "tls.acme.budget_per_registered_domain",
                a.budget_per_registered_domain,
                50,
            ),
            budget_per_account: positive("tls.acme.budget_per_account", a.budget_per_account, 300),
            ari_min_poll: Duration::from_secs(
                positive("tls.acme.ari_min_poll_secs", a.ari_min_poll_secs, 60).min(86_400),
            ),
            cas,
            dns01,
            tls_alpn,
        }
    });
    let issuer = match (t.issuer.as_deref(), acme) {
        (Some("acme") | None, Some(a)) => Issuer::Acme(a),
        (Some("acme"), None) => {
            errs.push(err(None, "tls.issuer", Problem::AcmeMissing));
            Issuer::None
        }
        (Some("internal"), _) => Issuer::Internal,
        (Some("none") | None, _) => Issuer::None,
        (Some(other), _) => {
            errs.push(err(
                None,
                "tls.issuer",
                Problem::BadIssuer {
                    value: other.to_string(),
                },
            ));
            Issuer::None
        }
    };
    let default_sni = t.default_sni.and_then(|n| match host::normalize(&n) {
        Ok(h) => Some(h.into_owned()),
        Err(reason) => {
            errs.push(err(
                None,
                "tls.default_sni",
                Problem::BadName {
                    value: n.clone(),
                    reason,
                },
            ));
            None
        }
    });
    Tls {
        issuer,
        certs_dir: path(t.certs_dir, "certs"),
        state_dir: path(t.state_dir, "state"),
        default_sni,
        strict_sni_host: t.strict_sni_host.unwrap_or(true),
        redirect_http: t.redirect_http.unwrap_or(true),
        cache_size: t.cache_size.unwrap_or(10_000),
    }
}

/// Admin tokens added from the environment: `name:scope:sha256` entries
/// separated by commas or whitespace (the scope may be `tenant:<id>`).
pub const TOKENS_ENV: &str = "TENANTGATE_ADMIN_TOKENS";

fn env_token_sections(value: &str) -> Vec<file::TokenSection> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, rest) = e.split_once(':').unwrap_or((e, ""));
            let (scope, sha256) = rest.rsplit_once(':').unwrap_or((rest, ""));
            file::TokenSection {
                name: name.to_string(),
                scope: scope.to_string(),
                sha256: sha256.to_string(),
                requests_per_second: None,
                burst: None,
                max_concurrent: None,
            }
        })
        .collect()
}

/// Validates `[admin]`; tokens from index `from_config` on came from the environment.
fn validate_admin(a: file::AdminSection, from_config: usize, errs: &mut Vec<ConfigError>) -> Admin {
    let mut tokens: Vec<Token> = Vec::with_capacity(a.tokens.len());
    for (i, t) in a.tokens.into_iter().enumerate() {
        let at = |key: &str| match i.checked_sub(from_config) {
            None => format!("admin.tokens[{i}].{key}"),
            Some(j) => format!("{TOKENS_ENV}[{j}].{key}"),
        };
        let scope = match t.scope.strip_prefix("tenant:") {
            None if t.scope == "operator" => Some(Scope::Operator),
            Some(id) if valid_tenant_id(id) => Some(Scope::Tenant(id.to_string())),
            _ => {
                let field = at("scope");
                errs.push(err(None, &field, Problem::BadTokenScope { value: t.scope.clone() }));
                None
            }
        };
        let sha256 = parse_sha256(&t.sha256);
        if sha256.is_none() {
            let field = at("sha256");
            // The value is a hash, but a secret pasted by mistake must not be echoed.
            let value = format!("{}…", t.sha256.chars().take(4).collect::<String>());
            errs.push(err(None, &field, Problem::BadTokenHash { value }));
        }
        if tokens.iter().any(|k| k.name == t.name) {
            let field = at("name");
            errs.push(err(None, &field, Problem::DuplicateTokenName { name: t.name.clone() }));
        }
        let limits = token_limits(&t, scope.as_ref(), &at, errs);
        if let (Some(scope), Some(sha256)) = (scope, sha256) {
            tokens.push(Token {
                name: t.name,
                scope,
                sha256,
                limits,
            });
        }
    }
    let history = match a.history {
        Some(0) => {
            errs.push(err(None, "admin.history", Problem::Zero { value: "0".into() }));
            50
        }
        Some(n) => n,
        None => 50,
    };
    let d = Listening::ADMIN;
    let listening = Listening {
        header_timeout: positive_ms("admin.header_timeout_ms", a.header_timeout_ms, d.header_timeout, errs),
        idle_timeout: positive_ms("admin.idle_timeout_ms", a.idle_timeout_ms, d.idle_timeout, errs),
        body_timeout: positive_ms("admin.body_timeout_ms", a.body_timeout_ms, d.body_timeout, errs),
        max_connections: positive_count("admin.max_connections", a.max_connections, d.max_connections, errs),
    };
    let audit_max_bytes = match a.audit_max_bytes {
        Some(0) => {
            errs.push(err(None, "admin.audit_max_bytes", Problem::Zero { value: "0".into() }));
            DEFAULT_AUDIT_MAX_BYTES
        }
        Some(n) => n,
        None => DEFAULT_AUDIT_MAX_BYTES,
    };
    Admin {
        tokens,
        history,
        listening,
        audit_max_bytes,
    }
}

/// A token's limits: its own keys, else the default of its scope (tenant
/// tokens are limited, operator tokens are not). `0` is refused.
fn token_limits(
    t: &file::TokenSection,
    scope: Option<&Scope>,
    at: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) -> TokenLimits {
    let default = match scope {
        Some(Scope::Tenant(_)) => TokenLimits::TENANT,
        _ => TokenLimits::default(),
    };
    let mut positive = |key: &str, v: Option<u64>| match v {
        Some(0) => {
            errs.push(err(None, &at(key), Problem::Zero { value: "0".into() }));
            None
        }
        v => v.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let rps = positive("requests_per_second", t.requests_per_second);
    let burst = positive("burst", t.burst);
    let max_concurrent = positive("max_concurrent", t.max_concurrent);
    let rate = match (rps, burst) {
        (Some(r), b) => Some((r, b.unwrap_or(r).max(r))),
        (None, Some(b)) => default.rate.map(|(r, _)| (r, b.max(r))),
        (None, None) => default.rate,
    };
    TokenLimits {
        rate,
        max_concurrent: max_concurrent.or(default.max_concurrent),
    }
}

/// 64 hex digits, either case.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Default `[telemetry] top_tenants`.
pub const DEFAULT_TOP_TENANTS: usize = 100;
/// The largest `[telemetry] top_tenants`.
pub const MAX_TOP_TENANTS: usize = 1_000;

fn validate_telemetry(t: file::TelemetrySection, errs: &mut Vec<ConfigError>) -> Telemetry {
    let log_format = match t.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errs.push(err(
                None,
                "telemetry.log_format",
                Problem::BadLogFormat {
                    value: other.to_string(),
                },
            ));
            LogFormat::Text
        }
    };
    Telemetry {
        access_log: t.access_log.unwrap_or(true),
        log_format,
        tenant_label_limit: t.tenant_label_limit.unwrap_or(1_000),
        top_tenants: match t.top_tenants {
            Some(k) if k > MAX_TOP_TENANTS => {
                errs.push(err(
                    None,
                    "telemetry.top_tenants",
                    Problem::BadSetting {
                        value: k.to_string(),
                        expected: "a whole number from 0 to 1000",
                    },
                ));
                DEFAULT_TOP_TENANTS
            }
            Some(k) => k,
            None => DEFAULT_TOP_TENANTS,
        },
        metrics_listening: Listening {
            header_timeout: positive_ms(
                "telemetry.metrics_header_timeout_ms",
                t.metrics_header_timeout_ms,
                Listening::METRICS.header_timeout,
                errs,
            ),
            idle_timeout: positive_ms(
                "telemetry.metrics_idle_timeout_ms",
                t.metrics_idle_timeout_ms,
                Listening::METRICS.idle_timeout,
                errs,
            ),
            body_timeout: Listening::METRICS.body_timeout,
            max_connections: positive_count(
                "telemetry.metrics_max_connections",
                t.metrics_max_connections,
                Listening::METRICS.max_connections,
                errs,
            ),
        },
    }
}

/// Parses one `domains` entry: an exact name or `*.parent`.
pub fn parse_domain(raw: &str) -> Result<DomainName, Problem> {
    let bad = |reason| Problem::BadName {
        value: raw.to_string(),
        reason,
    };
    match raw.strip_prefix("*.") {
        Some(parent) if !parent.contains('*') => host::normalize(parent)
            .map(|p| DomainName::Wildcard(p.into_owned()))
            .map_err(bad),
        Some(_) => Err(Problem::BadWildcard { value: raw.to_string() }),
        None if raw.contains('*') => Err(Problem::BadWildcard { value: raw.to_string() }),
        None => host::normalize(raw)
            .map(|n| DomainName::Exact(n.into_owned()))
            .map_err(bad),
    }
}

/// A name (or a wildcard's parent) that is itself a public suffix, or above
/// one, would cover names owned by others.
fn public_suffix_problem(d: &DomainName) -> Option<Problem> {
    let name = match d {
        DomainName::Exact(n) | DomainName::Wildcard(n) => n,
    };
    if psl::domain(name.as_bytes()).is_some() {
        return None;
    }
    let suffix = psl::suffix(name.as_bytes())
        .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
        .unwrap_or_else(|| name.clone());
    Some(Problem::PublicSuffix {
        name: d.to_string(),
        suffix,
    })
}

/// Whether `id` is a valid tenant id.
pub fn valid_tenant_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// Where a config comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on disk, watched for changes.
    File(PathBuf),
    /// Text compiled into the binary (the demo); never reloaded.
    Embedded { name: &'static str, text: &'static str },
}

impl Source {
    /// The name used in messages.
    pub fn path(&self) -> PathBuf {
        match self {
            Source::File(p) => p.clone(),
            Source::Embedded { name, .. } => PathBuf::from(name),
        }
    }

    /// The current text.
    pub fn text(&self) -> Result<String, LoadError> {
        match self {
            Source::File(p) => read(p),
            Source::Embedded { text, .. } => Ok(text.to_string()),
        }
    }

    /// The main file and the tenant files beside it.
    pub fn texts(&self) -> Result<Texts, LoadError> {
        match self {
            Source::File(p) => Texts::read(p),
            Source::Embedded { text, .. } => Ok(Texts {
                main: text.to_string(),
                ..Texts::default()
            }),
        }
    }

    /// The config file; `None` for the embedded config.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Source::File(p) => Some(p),
            Source::Embedded { .. } => None,
        }
    }

    /// The folder of tenant files; `None` for the embedded config.
    pub fn tenants_dir(&self) -> Option<PathBuf> {
        self.file().map(tenants_dir)
    }
}

/// The tenant files' folder for the config file at `path`: `tenants/` beside it.
pub fn tenants_dir(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).join("tenants")
}

/// The template files' folder for the config file at `path`: `templates/` beside it.
pub fn templates_dir(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).join("templates")
}

/// The rollout files' folder for the config file at `path`: `rollouts/` beside it.
pub fn rollouts_dir(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).join("rollouts")
}

/// Which files changed, so that a reload re-reads only those.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The main file.
    pub main: bool,
    /// Tenant files, by stem.
    pub tenants: BTreeSet<String>,
    /// Template files, by stem.
    pub templates: BTreeSet<String>,
    /// Rollout files, by stem.
    pub rollouts: BTreeSet<String>,
}

/// The files of `stems` in `dir` that differ from `live`: new text, or
/// `None` for a removed file.
fn reread_folder(
    dir: &Path,
    live: &BTreeMap<String, String>,
    stems: &BTreeSet<String>,
) -> Result<Vec<(String, Option<String>)>, LoadError> {
    let mut updates = Vec::new();
    for stem in stems {
        let p = dir.join(format!("{stem}.toml"));
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(LoadError::Read { path: p, source }),
        };
        if live.get(stem) != text.as_ref() {
            updates.push((stem.clone(), text));
        }
    }
    Ok(updates)
}

/// The text of a whole config: the main file, one file per tenant in
/// `tenants/` (by file stem, which must be the tenant id) and one file per
/// template in `templates/` (by file stem, which is the template's name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Texts {
    pub main: String,
    pub tenants: BTreeMap<String, String>,
    pub templates: BTreeMap<String, String>,
    /// `rollouts/<name>.toml` by name.
    pub rollouts: BTreeMap<String, String>,
}

impl Texts {
    /// Reads the main file and every `tenants/*.toml` and `templates/*.toml`
    /// beside it (a missing folder is no such files).
    pub fn read(path: &Path) -> Result<Texts, LoadError> {
        Ok(Texts {
            main: read(path)?,
            tenants: read_folder(&tenants_dir(path))?,
            templates: read_folder(&templates_dir(path))?,
            rollouts: read_folder(&rollouts_dir(path))?,
        })
    }

    /// The texts after re-reading only the files in `changed` (a missing
    /// file is a removed tenant or template); `None` when none of them
    /// differs from `self`.
    pub fn reread(&self, path: &Path, changed: &Changed) -> Result<Option<Texts>, LoadError> {
        let new_main = if changed.main {
            Some(read(path)?).filter(|m| *m != self.main)
        } else {
            None
        };
        let tenants = reread_folder(&tenants_dir(path), &self.tenants, &changed.tenants)?;
        let templates = reread_folder(&templates_dir(path), &self.templates, &changed.templates)?;
        let rollouts = reread_folder(&rollouts_dir(path), &self.rollouts, &changed.rollouts)?;
        if new_main.is_none() && tenants.is_empty() && templates.is_empty() && rollouts.is_empty() {
            return Ok(None);
        }
        let mut texts = self.clone();
        if let Some(m) = new_main {
            texts.main = m;
        }
        for (map, updates) in [
            (&mut texts.tenants, tenants),
            (&mut texts.templates, templates),
            (&mut texts.rollouts, rollouts),
        ] {
            for (stem, text) in updates {
                match text {
                    Some(t) => map.insert(stem, t),
                    None => map.remove(&stem),
                };
            }
        }
        Ok(Some(texts))
    }

    /// Parses every file: the tenant files' tenants come after the main
    /// file's, in file name order; template files go to
    /// `File::template_files`. Also returns a problem for each tenant file
    /// not named after its tenant.
    pub fn parse(&self, path: &Path) -> Result<(file::File, Vec<ConfigError>), LoadError> {
        let mut file = parse(path, &self.main)?;
        let mut errs = Vec::new();
        let dir = tenants_dir(path);
        // Tenant files parse on several threads: 100,000 of them are seconds
        // of work for one.
        let files: Vec<(&String, &String)> = self.tenants.iter().collect();
        let parsed = crate::map_parallel(&files, |(stem, text)| {
            parse_part::<file::TenantSection>(&dir, stem, text)
        });
        file.tenants.reserve(parsed.len());
        for ((stem, _), t) in files.into_iter().zip(parsed) {
            let t = t?;
            if t.id != *stem {
                let problem = Problem::TenantFileName {
                    file: format!("tenants/{stem}.toml"),
                    id: t.id.clone(),
                };
                errs.push(err(Some(&t.id), "id", problem));
            }
            file.tenants.push(t);
        }
        let dir = templates_dir(path);
        for (stem, text) in &self.templates {
            file.template_files.insert(stem.clone(), parse_part(&dir, stem, text)?);
        }
        let dir = rollouts_dir(path);
        for (stem, text) in &self.rollouts {
            file.rollout_files.insert(stem.clone(), parse_part(&dir, stem, text)?);
        }
        Ok((file, errs))
    }
}

/// Parses `<dir>/<stem>.toml`, whose text is `text`.
fn parse_part<T: serde::de::DeserializeOwned>(dir: &Path, stem: &str, text: &str) -> Result<T, LoadError> {
    toml::from_str(text).map_err(|e| LoadError::Parse {
        path: dir.join(format!("{stem}.toml")),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Every `*.toml` in `dir` whose name does not start with `.`, by file stem
/// (a missing folder has none).
fn read_folder(dir: &Path) -> Result<BTreeMap<String, String>, LoadError> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(LoadError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = entry.path();
        let stem = p.file_stem().and_then(|s| s.to_str()).map(str::to_string);
        match (stem, p.extension().and_then(|e| e.to_str())) {
            (Some(stem), Some("toml")) if !stem.starts_with('.') => {
                out.insert(stem, read(&p)?);
            }
            _ => {}
        }
    }
    Ok(out)
}
