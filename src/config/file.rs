//! The TOML file format, as serde sees it. Nothing outside `config` uses these
//! types: they are turned into the validated model in `config::model`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub gateway: GatewaySection,
    #[serde(default)]
    pub telemetry: TelemetrySection,
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSection>,
    #[serde(default)]
    pub plans: BTreeMap<String, PlanSection>,
    pub limits: Option<LimitsSection>,
    pub store: Option<StoreSection>,
    pub admin: Option<AdminSection>,
    pub domains: Option<DomainsSection>,
    #[serde(default)]
    pub webhooks: Vec<WebhookSection>,
    /// `[templates.<name>]` of the main file.
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateSection>,
    /// Templates from `templates/<name>.toml`, by name (filled by `Texts::parse`).
    #[serde(skip)]
    pub template_files: BTreeMap<String, TemplateSection>,
    /// `[rollouts.<name>]` of the main file.
    #[serde(default)]
    pub rollouts: BTreeMap<String, super::rollouts::RolloutSection>,
    /// Rollouts from `rollouts/<name>.toml`, by name (filled by `Texts::parse`).
    #[serde(skip)]
    pub rollout_files: BTreeMap<String, super::rollouts::RolloutSection>,
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
    /// `[profile]`: trusted headers, `tenant.json`, error pages, maintenance.
    #[serde(default)]
    pub profile: super::profile::ProfileSection,
    /// `[features.<name>]`: path prefixes gated by a feature.
    #[serde(default)]
    pub features: BTreeMap<String, super::profile::FeatureSection>,
    /// `[shared_hosts."<host>"]`: settings of a `[gateway] shared_hosts` entry.
    #[serde(default)]
    pub shared_hosts: BTreeMap<String, SharedHostSection>,
    pub identity: Option<IdentitySection>,
}

/// `[domains]`: the custom-domain lifecycle (ownership proof).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsSection {
    pub verify: Option<String>,
    pub verification_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub pending_ttl_days: Option<u64>,
    pub recheck_min_secs: Option<u64>,
    pub recheck_max_secs: Option<u64>,
    pub nameservers: Option<Vec<String>>,
    pub dns_timeout_ms: Option<u64>,
    pub targets: Option<Vec<String>>,
    pub caa_issuers: Option<Vec<String>>,
    pub state_dir: Option<String>,
    pub max_pending_per_tenant: Option<usize>,
    pub reverify_secs: Option<u64>,
    pub moved_grace_days: Option<u64>,
    pub remove_moved: Option<bool>,
}

/// One `[[webhooks]]` receiver of events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    pub url: String,
    pub secret: String,
    pub events: Option<Vec<String>>,
}

/// `[shared_hosts."<host>"]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedHostSection {
    /// The pool that gets paths no tenant claims (with no tenant header).
    pub platform_pool: Option<String>,
}

/// `[identity]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    pub header: Option<String>,
    #[serde(default)]
    pub header_hosts: Vec<String>,
    #[serde(default)]
    pub header_sources: Vec<String>,
    pub user_header: Option<String>,
    pub max_tenants_per_subject: Option<usize>,
    pub jwt: Option<JwtSection>,
}

/// `[identity.jwt]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_refresh_secs: Option<u64>,
    pub issuer: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    pub claim: Option<String>,
    pub leeway_secs: Option<u64>,
    pub token_from: Option<String>,
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A tenant's (or template's) `jwt`: `"off"`, `"optional"`, `"required"`,
/// or a `[tenants.jwt]` table naming its own identity provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TenantJwtSection {
    Mode(String),
    Own(TenantJwtTable),
}

/// `[tenants.jwt]`: the tenant's own identity provider.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantJwtTable {
    /// `"off"`, `"optional"` or `"required"` (the default in this form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default)]
    pub tokens: Vec<TokenSection>,
    pub history: Option<usize>,
    pub header_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub audit_max_bytes: Option<u64>,
}

/// One `[[admin.tokens]]` entry: only the SHA-256 of the secret is stored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    pub name: String,
    pub scope: String,
    pub sha256: String,
    #[serde(default)]
    pub requests_per_second: Option<u64>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub max_concurrent: Option<u64>,
}

/// `[gateway]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub http_listen: String,
    pub https_listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub base_domains: Vec<String>,
    pub reserved_subdomains: Option<Vec<String>>,
    pub tenant_header: Option<String>,
    /// Hosts on which the tenant is chosen by path.
    #[serde(default)]
    pub shared_hosts: Vec<String>,
    pub strip_headers: Option<Vec<String>>,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub upstream_idle_timeout_ms: Option<u64>,
    pub client_timeout_ms: Option<u64>,
    pub upstream_down_ms: Option<u64>,
    /// Resolvers of upstream host names (default: the system's).
    pub upstream_nameservers: Option<Vec<String>>,
    pub upstream_dns_min_ttl_ms: Option<u64>,
    pub upstream_dns_max_ttl_ms: Option<u64>,
    pub threads: Option<usize>,
    pub watch_config: Option<bool>,
    pub max_connections: Option<usize>,
    pub underscores_in_headers: Option<bool>,
    pub tunnel_idle_timeout_ms: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub upgrade_sock: Option<String>,
    pub work_stealing: Option<bool>,
    /// The region this replica serves (data residency).
    pub region: Option<String>,
    /// With `region`: refuse tenants of other regions with 421.
    pub refuse_other_regions: Option<bool>,
    /// PROXY protocol on the proxy listeners (`true` or listener names).
    pub proxy_protocol: Option<super::proxy_protocol::Listeners>,
    /// The load balancers whose PROXY headers are believed.
    pub trusted_sources: Option<Vec<String>>,
    pub proxy_protocol_required: Option<bool>,
    pub proxy_protocol_timeout_ms: Option<u64>,
}

/// `[telemetry]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    pub access_log: Option<bool>,
    pub log_format: Option<String>,
    pub tenant_label_limit: Option<usize>,
    pub top_tenants: Option<usize>,
    pub metrics_header_timeout_ms: Option<u64>,
    pub metrics_idle_timeout_ms: Option<u64>,
    pub metrics_max_connections: Option<usize>,
}

/// `[pools.<name>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// The region the pool's backends are in (data residency).
    pub region: Option<String>,
    /// Maintenance of every tenant on the pool.
    #[serde(default, deserialize_with = "super::profile::maintenance_value")]
    pub maintenance: Option<super::profile::MaintenanceSection>,
    /// TLS to the backends.
    #[serde(default)]
    pub tls: bool,
    pub tls_server_name: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_verify: Option<bool>,
    pub tls_client_cert: Option<String>,
    pub tls_client_key: Option<String>,
    /// HTTP/2 to the backends (ALPN h2 with TLS, prior knowledge without).
    #[serde(default)]
    pub http2: bool,
    /// PINGs on the HTTP/2 backend connections (`0`: none), and how long
    /// an answer may take.
    pub http2_keepalive_interval_ms: Option<u64>,
    pub http2_keepalive_timeout_ms: Option<u64>,
    /// Active health checks (`[pools.<name>.health]`).
    pub health: Option<super::upstream::HealthSection>,
    /// Passive outlier ejection (`[pools.<name>.outlier]`).
    pub outlier: Option<super::upstream::OutlierSection>,
    pub retries: Option<u32>,
    pub retry_budget_percent: Option<u32>,
    pub retry_min_per_second: Option<u32>,
}

/// One `[[tenants]]` entry, or one file under `tenants/`. Serialised as a
/// tenant file and as the admin API's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    /// The template whose settings this tenant starts from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Required unless the template sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Box<PlanSection>>,
    /// Path prefixes on shared hosts: `"app.example/acme"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Remove the claimed prefix toward the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    /// JWT checking: a mode, or the tenant's own identity provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<TenantJwtSection>,
    /// Free-form `key = "value"` pairs (an external billing id, a region),
    /// for the admin API's list filters; they change nothing in routing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "unique_map")]
    pub labels: BTreeMap<String, String>,
    /// Feature flags: names add, `-name` removes one the plan or template grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Box<super::profile::LocaleSection>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<Box<super::profile::BrandingSection>>,
    /// Maintenance mode: present means on (until `until`, if set).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::profile::maintenance_value"
    )]
    pub maintenance: Option<super::profile::MaintenanceSection>,
    /// Exempt from every rollout until unpinned (the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
}

/// A map of strings that refuses a key given twice (serde's maps keep the
/// last one silently).
fn unique_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("duplicate label {k:?}")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// `[templates.<name>]`, or one file under `templates/`: tenant defaults.
/// A tenant naming the template takes each of these it does not set itself;
/// `limits` are merged key by key. Serialised as a template file and as the
/// admin API's JSON.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<PlanSection>,
    /// Feature flags: names add, `-name` removes one the plan or template grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<super::profile::LocaleSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<super::profile::BrandingSection>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "unique_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<TenantJwtSection>,
}

/// `[plans.<name>]`, and a tenant's `[tenants.limits]` overrides. Signed so
/// that a negative value gets a clear message rather than a type error.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole")]
    pub requests_per_second: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole")]
    pub burst: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole")]
    pub max_concurrent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole")]
    pub requests_per_day: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole")]
    pub requests_per_month: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole")]
    pub client_requests_per_second: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole")]
    pub client_burst: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_store_failure: Option<String>,
    /// Custom domains a tenant may have (its platform subdomain not counted).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole")]
    pub max_domains: Option<i64>,
    // The profile a plan grants (refused in a `limits` table).
    /// Feature flags: names add, `-name` removes one the plan or template grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<super::profile::LocaleSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<super::profile::BrandingSection>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "unique_map")]
    pub labels: BTreeMap<String, String>,
    /// The plan's JWT check for its tenants (a tenant's or template's own
    /// `jwt` wins); refused in a `limits` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<TenantJwtSection>,
}

/// An integer, also written as a number with no fraction (`5.0`: JSON
/// clients and JSON Schema treat it as the integer 5).
pub fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("integer out of range"))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 {
                Ok(Some(v as i64))
            } else {
                Err(E::custom(format!(
                    "invalid type: floating point `{v}`, expected an integer"
                )))
            }
        }
    }
    d.deserialize_any(Whole)
}

/// `[[tls.acme.issuers]]`: one CA of the ordered list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeIssuerSection {
    pub directory_url: String,
    pub ca_root: Option<String>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
}

/// `[store]`: fleet mode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub redis_url: String,
    pub timeout_ms: Option<u64>,
    pub key_prefix: Option<String>,
    pub ca_file: Option<String>,
    pub key_file: Option<String>,
    pub lease_secs: Option<u64>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub default_plan: Option<String>,
    pub quota_file: Option<String>,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub issuer: Option<String>,
    pub certs_dir: Option<String>,
    pub state_dir: Option<String>,
    pub default_sni: Option<String>,
    pub strict_sni_host: Option<bool>,
    pub redirect_http: Option<bool>,
    pub cache_size: Option<usize>,
    pub acme: Option<AcmeSection>,
}

/// `[tls.acme]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    pub directory_url: Option<String>,
    pub contact: Option<String>,
    pub ca_root: Option<String>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
    pub issuers: Option<Vec<AcmeIssuerSection>>,
    pub fallback_after: Option<u32>,
    pub budget_per_registered_domain: Option<u64>,
    pub budget_per_account: Option<u64>,
    pub max_concurrent_orders: Option<usize>,
    pub retry_min_secs: Option<u64>,
    pub retry_max_secs: Option<u64>,
    pub ari_min_poll_secs: Option<u64>,
    pub dns01: Option<super::dns01::Dns01Section>,
    pub challenge: Option<String>,
}
