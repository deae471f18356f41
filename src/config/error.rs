//! Config errors: each names the file, the tenant(s), the field and the fix.

use std::fmt;
use std::path::PathBuf;

use crate::routing::host::HostError;

/// One problem found in a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The tenant the problem belongs to, if any (several for a conflict are
    /// named in the problem itself).
    pub tenant: Option<String>,
    /// The field, as a TOML path: `tenants[3].domains[0]`, `pools.shared.upstreams`.
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

/// What can be wrong in a config, beyond syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{value:?} is not a valid host name: {reason}")]
    BadName { value: String, reason: HostError },
    #[error("{value:?} is not a valid listen address (want IP:port)")]
    BadListen { value: String },
    #[error("{value:?} is not a valid upstream address (want IP:port or host:port)")]
    BadUpstream { value: String },
    #[error("{value:?} is not a valid HTTP header name")]
    BadHeader { value: String },
    #[error("header {value:?} is set or used by the gateway itself")]
    ReservedHeader { value: String },
    #[error("wildcard *.{parent} would cover the platform domain {base}")]
    WildcardCoversBase { parent: String, base: String },
    #[error("{value:?} is not a valid tenant id")]
    BadTenantId { value: String },
    #[error("{value:?} is not a single DNS label")]
    BadSubdomain { value: String },
    #[error("{value:?} is not a valid wildcard: only a leading \"*.\" is allowed")]
    BadWildcard { value: String },
    #[error("{value:?} must be greater than zero")]
    Zero { value: String },
    #[error("{}{reason}", .file.as_ref().map(|f| format!("file {f}: ")).unwrap_or_default())]
    UpstreamTls {
        file: Option<String>,
        reason: String,
        fix: &'static str,
    },
    /// A `[rollouts.<name>]` problem.
    #[error("{reason}")]
    Rollout { reason: String, fix: &'static str },
    #[error("label {key:?}: {reason}")]
    BadLabel { key: String, reason: &'static str },
    #[error("unknown log format {value:?}")]
    BadLogFormat { value: String },
    #[error("tenant id {id:?} is used {count} times")]
    DuplicateTenantId { id: String, count: usize },
    #[error("domain {name} is claimed by {}", claimants(.tenants))]
    DuplicateDomain { name: String, tenants: Vec<String> },
    #[error("wildcard *.{parent} is claimed by {}", claimants(.tenants))]
    DuplicateWildcard { parent: String, tenants: Vec<String> },
    #[error("subdomain {label:?} is claimed by {}", claimants(.tenants))]
    DuplicateSubdomain { label: String, tenants: Vec<String> },
    #[error("domain {name} is under the wildcard *.{parent} of {}: both tenants would match", claimants(.tenants))]
    UnderWildcard {
        name: String,
        parent: String,
        tenants: Vec<String>,
    },
    #[error("domain {name} is inside the platform domain {base}, which only serves tenant subdomains")]
    InsideBaseDomain { name: String, base: String },
    #[error("{name} is at or above a public suffix ({suffix}): it would cover domains nobody here owns")]
    PublicSuffix { name: String, suffix: String },
    #[error("subdomain {label:?} is reserved")]
    ReservedSubdomain { label: String },
    #[error("subdomain is set but [gateway] base_domains is empty")]
    NoBaseDomain,
    #[error("base domain {inner} is inside base domain {outer}")]
    NestedBaseDomain { inner: String, outer: String },
    #[error("base domain {name} is listed twice")]
    DuplicateBaseDomain { name: String },
    #[error("unknown certificate issuer {value:?}")]
    BadIssuer { value: String },
    #[error("issuer \"acme\" needs a [tls.acme] section")]
    AcmeMissing,
    #[error("[tls] is set but [gateway] https_listen is not")]
    TlsWithoutListener,
    #[error("{value:?} is not a valid ACME directory URL (want https://...)")]
    BadDirectoryUrl { value: String },
    #[error("plan {plan:?} is not defined")]
    UnknownPlan { plan: String },
    #[error("{field} = {value} must be a positive whole number")]
    BadLimit { field: &'static str, value: i64 },
    #[error("{burst_field} {burst} is below {rate_field} {rate}")]
    BurstBelowRate {
        burst_field: &'static str,
        burst: i64,
        rate_field: &'static str,
        rate: i64,
    },
    #[error("{burst_field} is set without {rate_field}")]
    BurstWithoutRate {
        burst_field: &'static str,
        rate_field: &'static str,
    },
    #[error("{value:?} is not a known time zone")]
    BadTimezone { value: String },
    #[error("the tenant has no plan, and [limits] default_plan is not set")]
    NoPlan,
    #[error("{value:?} is not \"open\" or \"closed\"")]
    BadStoreFailure { value: String },
    #[error("{count} custom domains, but its plan allows {max} (max_domains)")]
    TooManyDomains { count: usize, max: i64 },
    #[error("{value:?} is not a usable Redis URL: {reason}")]
    BadRedisUrl { value: String, reason: String },
    #[error("cannot use {path} as the Redis CA: {reason}")]
    BadStoreCa { path: String, reason: String },
    #[error("cannot use {path} as the store key: {reason}")]
    BadStoreKey { path: String, reason: String },
    #[error(
        "fleet mode with the ACME issuer keeps certificates' private keys in Redis, and no key_file encrypts them"
    )]
    FleetAcmeWithoutKey,
    #[error("no ACME CA: neither directory_url nor [[tls.acme.issuers]] is set")]
    AcmeNoDirectory,
    #[error("the External Account Binding HMAC key is not base64url")]
    BadEabKey,
    #[error("External Account Binding needs both eab_kid and eab_hmac_key")]
    EabHalf,
    #[error("ca_file is set but redis_url is not rediss://")]
    StoreCaWithoutTls,
    #[error("key prefix {value:?} is not 1 to 32 characters of a-z, 0-9, '-' and '_'")]
    BadKeyPrefix { value: String },
    #[error("token hash {value:?} is not 64 hex digits")]
    BadTokenHash { value: String },
    #[error("token scope {value:?} is neither \"operator\" nor \"tenant:<id>\"")]
    BadTokenScope { value: String },
    #[error("token name {name:?} is used twice")]
    DuplicateTokenName { name: String },
    #[error("tenant file {file} holds tenant {id:?}")]
    TenantFileName { file: String, id: String },
    #[error("pool {pool:?} is not defined")]
    UnknownPool { pool: String },
    #[error("pool {pool:?} has no upstreams")]
    EmptyPool { pool: String },
    #[error("the tenant has no pool{}", template_sets_none(.template))]
    MissingPool { template: Option<String> },
    #[error("template {template:?} is not defined ({})", defined(.known))]
    UnknownTemplate { template: String, known: Vec<String> },
    #[error("{value:?} is not a valid template name")]
    BadTemplateName { value: String },
    #[error("template {name:?} is defined both in the main file and in templates/{name}.toml")]
    DuplicateTemplate { name: String },
    #[error("{value:?} is not valid here: want {expected}")]
    BadSetting { value: String, expected: &'static str },
    #[error(transparent)]
    Profile(super::profile::ProfileProblem),
    #[error("{value:?} is not a valid URL (want http:// or https://)")]
    BadUrl { value: String },
    #[error("shared host {name} is listed twice")]
    DuplicateSharedHost { name: String },
    #[error("{name} is not listed in [gateway] shared_hosts")]
    NotSharedHost { name: String },
    #[error("{value:?} is not an IP address or block (want such as 127.0.0.0/8)")]
    BadCidr { value: String },
    #[error("header_hosts is set but [identity] header is not")]
    HeaderHostsWithoutHeader,
    #[error("both jwks_file and jwks_url are set")]
    TwoKeySources,
    #[error("claim {value:?} is empty")]
    BadClaim { value: String },
    #[error("token_from {value:?} is neither \"authorization\" nor \"cookie:<name>\"")]
    BadTokenFrom { value: String },
    #[error("jwt {value:?} is not \"off\", \"optional\" or \"required\"")]
    BadJwtMode { value: String },
    #[error("JWT checking is on but no keys are configured")]
    JwtWithoutKeys,
    #[error("path claim {value:?} is not host/prefix with a normalised prefix")]
    BadPath { value: String },
    #[error("path claims need a shared host, and {host} is not in [gateway] shared_hosts")]
    PathHostNotShared { host: String },
    #[error("path prefix {path} is claimed by {}", claimants(.tenants))]
    DuplicatePath { path: String, tenants: Vec<String> },
    #[error("path prefix {inner} is inside prefix {outer} of {}", claimants(.tenants))]
    NestedPath {
        inner: String,
        outer: String,
        tenants: Vec<String>,
    },
    #[error("shared host {name} is also a domain of {}", claimants(.tenants))]
    SharedHostClaimed { name: String, tenants: Vec<String> },
    #[error("shared host {name} is inside the platform domain {base}, the tenant subdomain namespace")]
    SharedHostInBase { name: String, base: String },
}

fn template_sets_none(template: &Option<String>) -> String {
    match template {
        Some(t) => format!(", and its template {t:?} sets none"),
        None => String::new(),
    }
}

fn defined(known: &[String]) -> String {
    if known.is_empty() {
        return "no templates are defined".to_string();
    }
    let quoted: Vec<String> = known.iter().map(|t| format!("{t:?}")).collect();
    format!("defined: {}", quoted.join(", "))
}

fn claimants(tenants: &[String]) -> String {
    let quoted: Vec<String> = tenants.iter().map(|t| format!("{t:?}")).collect();
    match quoted.len() {
        1 => format!("tenant {}", quoted[0]),
        _ => format!("tenants {}", quoted.join(", ")),
    }
}

impl Problem {
    /// How to fix it, in one sentence.
    pub fn fix(&self) -> &'static str {
        use Problem::*;
        match self {
            BadName { .. } => "write a plain DNS name such as app.example.com, without scheme, port or path",
            BadListen { .. } => "write an address such as 127.0.0.1:8080",
            BadUpstream { .. } => "write an upstream as IP:port or host:port, such as 127.0.0.1:9001 or backend.internal:9001",
            BadHeader { .. } => "use a lowercase token such as x-tenant-id",
            ReservedHeader { .. } => "pick another header name, such as x-tenant-id",
            WildcardCoversBase { .. } => "claim exact names instead, or move the platform domain",
            BadTenantId { .. } => "use 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
            BadSubdomain { .. } => "use one label of a-z, 0-9 and '-', such as acme",
            BadWildcard { .. } => "write a wildcard as *.example.com; it covers exactly one extra label",
            Zero { .. } => "set a positive value or remove the key to use the default",
            UpstreamTls { fix, .. } | Rollout { fix, .. } => fix,
            BadLabel { .. } => "use keys of 1 to 63 characters of a-z, 0-9, '.', '_', '-' and '/', values of at most 255 printable characters, and at most 32 labels",
            BadLogFormat { .. } => "use \"text\" or \"json\"",
            DuplicateTenantId { .. } => "give each tenant a unique id",
            DuplicateDomain { .. } | DuplicateWildcard { .. } | DuplicateSubdomain { .. } => {
                "keep the name on exactly one tenant"
            }
            UnderWildcard { .. } => "move the name to the wildcard's tenant, or drop the wildcard",
            InsideBaseDomain { .. } => "use the tenant's subdomain field for platform names",
            PublicSuffix { .. } => "claim a registrable domain (such as acme.com) or a name below it",
            ReservedSubdomain { .. } => "pick another subdomain, or change [gateway] reserved_subdomains",
            NoBaseDomain => "add the platform domain to [gateway] base_domains, or remove subdomain",
            NestedBaseDomain { .. } => "keep only the outer base domain",
            DuplicateBaseDomain { .. } => "list each base domain once",
            BadIssuer { .. } => "use \"acme\", \"internal\" or \"none\"",
            AcmeMissing => "add [tls.acme] with directory_url, or choose issuer = \"internal\" or \"none\"",
            TlsWithoutListener => "set [gateway] https_listen, such as \"0.0.0.0:443\"",
            BadDirectoryUrl { .. } => {
                "use the CA's directory URL, such as https://acme-v02.api.letsencrypt.org/directory"
            }
            UnknownPlan { .. } => "define it under [plans.<name>], or use plan = \"unlimited\"",
            BadLimit { .. } => "use a value of 1 or more, or remove the key for no limit",
            BurstBelowRate { .. } => "set the burst to at least the rate per second",
            BurstWithoutRate { .. } => "add the rate per second, or remove the burst",
            BadTimezone { .. } => "use an IANA time zone name such as Europe/Berlin, or remove it for UTC",
            NoPlan => "set plan = \"<name>\" (or plan = \"unlimited\" to serve it without limits), or set [limits] default_plan",
            BadStoreFailure { .. } => "use \"open\" (serve on local limits while the store is down) or \"closed\" (refuse with 503)",
            TooManyDomains { .. } => "remove domains, or raise max_domains in the tenant's plan or its [tenants.limits]",
            BadRedisUrl { .. } => "write a URL such as redis://127.0.0.1:6379 or rediss://user:pass@host:6380/0",
            BadStoreCa { .. } => "point ca_file at a PEM file of the CA certificates that signed Redis' certificate (relative to this file), or remove it to trust the system's",
            StoreCaWithoutTls => "use a rediss:// URL, or remove ca_file",
            AcmeNoDirectory => "set directory_url, such as https://acme-v02.api.letsencrypt.org/directory, or list the CAs as [[tls.acme.issuers]]",
            BadEabKey => "paste the HMAC key exactly as the CA shows it (base64url, such as ZeroSSL's or Google's EAB key)",
            EabHalf => "set both eab_kid and eab_hmac_key from the CA's External Account Binding page, or neither",
            BadStoreKey { .. } | FleetAcmeWithoutKey => "set [store] key_file to a file of 64 hex digits, the same on every replica (openssl rand -hex 32 > store.key; chmod 600 store.key)",
            BadKeyPrefix { .. } => "use a short name such as tenantgate",
            BadTokenHash { .. } => "store the SHA-256 of the token as hex: printf %s \"$TOKEN\" | sha256sum",
            BadTokenScope { .. } => "use scope = \"operator\" or scope = \"tenant:<tenant id>\"",
            DuplicateTokenName { .. } => "give each token its own name; the audit log records it",
            TenantFileName { .. } => "name the file <tenant id>.toml",
            UnknownPool { .. } => "define it under [pools.<name>] or point the tenant at an existing pool",
            EmptyPool { .. } => "list at least one upstream, such as upstreams = [\"127.0.0.1:9001\"]",
            MissingPool { .. } => "set pool = \"<name>\" on the tenant, or on the template it names",
            UnknownTemplate { .. } => {
                "name a defined template, or define it under [templates.<name>] or in templates/<name>.toml"
            }
            BadTemplateName { .. } => "use 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
            DuplicateTemplate { .. } => "keep one definition: remove [templates.<name>] or the file",
            BadSetting { .. } => "set the value the message names (see config/README.md), or remove the key for its default",
            Profile(p) => p.fix(),
            BadUrl { .. } => "write a URL such as https://idp.example/.well-known/jwks.json",
            DuplicateSharedHost { .. } => "list each shared host once",
            NotSharedHost { .. } => "add the host to [gateway] shared_hosts, or remove the section",
            BadCidr { .. } => "write an address or a block such as 10.0.0.0/8 or ::1/128",
            HeaderHostsWithoutHeader => "set [identity] header, such as \"x-org-id\"",
            TwoKeySources => "keep one of jwks_file and jwks_url",
            BadClaim { .. } => "name the claim (such as \"tenant\") or give a JSON pointer (such as \"/org/id\")",
            BadTokenFrom { .. } => "use \"authorization\" or \"cookie:<name>\"",
            BadJwtMode { .. } => "use \"off\", \"optional\" or \"required\"",
            JwtWithoutKeys => "set [identity.jwt] jwks_file or jwks_url, or the tenant's [tenants.jwt] jwks_url, or jwt = \"off\"",
            BadPath { .. } => "write a claim such as \"app.example.com/acme\": whole segments, no trailing /, no dot-segments or escapes",
            PathHostNotShared { .. } => "add the host to [gateway] shared_hosts, or claim a prefix on a shared host",
            DuplicatePath { .. } => "keep the prefix on exactly one tenant",
            NestedPath { .. } => "claim prefixes that do not contain each other",
            SharedHostClaimed { .. } => "remove the name from the tenant's domains, or from [gateway] shared_hosts",
            SharedHostInBase { .. } => "use a shared host outside [gateway] base_domains",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = &self.tenant {
            write!(f, "tenant {t:?}: ")?;
        }
        write!(f, "{}: {}; fix: {}", self.field, self.problem, self.problem.fix())
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}", render(.path, .errors))]
    Invalid { path: PathBuf, errors: Vec<ConfigError> },
}

fn render(path: &std::path::Path, errors: &[ConfigError]) -> String {
    let mut out = format!("{}: {} problem(s)", path.display(), errors.len());
    for e in errors {
        out.push_str(&format!("\n{}: {e}", path.display()));
    }
    out
}

impl LoadError {
    /// The individual problems (one for a read or parse failure).
    pub fn count(&self) -> usize {
        match self {
            LoadError::Invalid { errors, .. } => errors.len(),
            _ => 1,
        }
    }
}
