//! The tenant's edge profile: feature flags, locale, region, branding and
//! labels, merged plan < template < tenant like limits; maintenance mode;
//! the `[profile]` settings (trusted header names, `tenant.json` path,
//! maintenance allow-list, error pages, what a tenant token may edit) and
//! `[features.<name>]` path gates.
//!
//! The serde sections are here (not in [`super::file`]) so that the profile
//! is one concern in one file; `file` only names them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::file::{PlanSection, TemplateSection, TenantSection};
use super::pages::Pages;
use super::{err, ConfigError, Problem};

/// Features a tenant may have at most, after merging.
pub const MAX_FEATURES: usize = 64;
/// Features that may name path prefixes (`[features.<name>] paths`).
pub const MAX_GATED_FEATURES: usize = 64;
/// Default `[profile] tenant_json_path`.
pub const DEFAULT_TENANT_JSON_PATH: &str = "/.well-known/tenant.json";
/// Default `[profile] max_header_bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 1024;
/// Default `[profile] max_label_bytes`: keys and values of one tenant's
/// labels, summed.
pub const DEFAULT_MAX_LABEL_BYTES: usize = 4096;
/// Default `Retry-After` of a maintenance without an end time.
pub const DEFAULT_MAINTENANCE_RETRY_AFTER: u32 = 300;
/// Profile fields an operator may let tenant tokens edit.
pub const EDITABLE: &[&str] = &["features", "locale", "branding", "labels", "maintenance"];

/// `locale = { language, timezone, currency, date_format }`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocaleSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_format: Option<String>,
}

/// `branding = { name, primary_color, secondary_color, logo_url, favicon_url }`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrandingSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_color: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary_color: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub favicon_url: Option<String>,
}

/// `maintenance = { until, retry_after }` on a tenant or a pool: present
/// means on (until `until`, if given).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSection {
    /// RFC 3339 end time; past it the maintenance is over by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// `Retry-After` seconds when `until` is not set.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::file::whole"
    )]
    pub retry_after: Option<i64>,
}

/// `maintenance` as a table, or `true` (on, no end time) or `false` (off).
pub fn maintenance_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<MaintenanceSection>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Switch(bool),
        Table(MaintenanceSection),
    }
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Switch(false)) => None,
        Some(Value::Switch(true)) => Some(MaintenanceSection::default()),
        Some(Value::Table(t)) => Some(t),
    })
}

/// `[profile]` of the main file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSection {
    pub tenant_json_path: Option<String>,
    pub tenant_json_max_age: Option<u64>,
    #[serde(default)]
    pub headers: HeadersSection,
    pub max_header_bytes: Option<usize>,
    pub max_label_bytes: Option<usize>,
    pub maintenance_allow: Option<Vec<String>>,
    pub pages_dir: Option<String>,
    pub tenant_editable: Option<Vec<String>>,
}

/// `[profile.headers]`: the trusted header of each profile value; `""`
/// turns one off. Features and region are on by default, the rest off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSection {
    pub features: Option<String>,
    pub region: Option<String>,
    pub language: Option<String>,
    pub timezone: Option<String>,
    pub currency: Option<String>,
    pub date_format: Option<String>,
}

/// `[features.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSection {
    /// Path prefixes answered 404 at the edge for tenants without the feature.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// A tenant's merged, validated profile.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Profile {
    pub features: BTreeSet<String>,
    pub locale: LocaleSection,
    pub region: Option<String>,
    pub branding: BrandingSection,
}

/// Maintenance, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintenance {
    pub until: Option<jiff::Timestamp>,
    pub retry_after: u32,
}

impl Maintenance {
    /// `Some(Retry-After seconds)` while on at `now`, `None` once over.
    pub fn active(&self, now: jiff::Timestamp) -> Option<u32> {
        match self.until {
            None => Some(self.retry_after),
            Some(until) if now < until => {
                let secs = until.as_second().saturating_sub(now.as_second()).max(1);
                Some(u32::try_from(secs).unwrap_or(u32::MAX))
            }
            Some(_) => None,
        }
    }
}

/// Which profile value a trusted header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    Features,
    Region,
    Language,
    Timezone,
    Currency,
    DateFormat,
}

/// An address range of the maintenance allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 client counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(c)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(c) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(c)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(c) & mask
            }
            _ => false,
        }
    }
}

/// `[profile]` and `[features]`, validated.
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    /// `None`: `tenant.json` is not served (`tenant_json_path = ""`).
    pub tenant_json_path: Option<String>,
    /// `Cache-Control: max-age` of `tenant.json`, in seconds.
    pub tenant_json_max_age: u64,
    /// The trusted headers that are on, in a fixed order.
    pub headers: Vec<(Carried, HeaderName)>,
    pub max_header_bytes: usize,
    pub max_label_bytes: usize,
    pub maintenance_allow: Vec<Cidr>,
    pub pages: Arc<Pages>,
    /// Profile fields tenant tokens may change (see [`EDITABLE`]).
    pub tenant_editable: Vec<String>,
    /// Features with path prefixes, in name order (at most
    /// [`MAX_GATED_FEATURES`]: a tenant's missing ones fit a `u64`).
    pub gated: Vec<(String, Vec<String>)>,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            tenant_json_path: Some(DEFAULT_TENANT_JSON_PATH.into()),
            tenant_json_max_age: 60,
            headers: vec![
                (Carried::Features, HeaderName::from_static("x-tenant-features")),
                (Carried::Region, HeaderName::from_static("x-tenant-region")),
            ],
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_label_bytes: DEFAULT_MAX_LABEL_BYTES,
            maintenance_allow: Vec::new(),
            pages: Arc::default(),
            tenant_editable: Vec::new(),
            gated: Vec::new(),
        }
    }
}

impl ProfileSettings {
    /// Whether `ip` may pass a maintenance.
    pub fn allowed(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.maintenance_allow.iter().any(|c| c.contains(ip)))
    }

    /// Whether a tenant token may change `field`.
    pub fn tenant_may_edit(&self, field: &str) -> bool {
        self.tenant_editable.iter().any(|f| f == field)
    }

    /// The bit mask of gated features `profile` lacks.
    pub fn missing(&self, profile: &Profile) -> u64 {
        self.gated
            .iter()
            .enumerate()
            .filter(|(_, (f, _))| !profile.features.contains(f))
            .fold(0, |m, (i, _)| m | (1u64 << i))
    }
}

/// What is wrong with a profile value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileProblem {
    #[error("feature {value:?} is not 1 to 63 characters of a-z, 0-9, '.', '_' and '-' (a leading '-' removes it)")]
    BadFeature { value: String },
    #[error("{count} features, more than {MAX_FEATURES}")]
    TooManyFeatures { count: usize },
    #[error("{value:?} is not a language tag such as en, de-CH or pt-BR")]
    BadLanguage { value: String },
    #[error("{value:?} is not an ISO 4217 currency code")]
    BadCurrency { value: String },
    #[error("{value:?} is not a date format of 1 to 32 characters of letters, digits, spaces and . / , : -")]
    BadDateFormat { value: String },
    #[error("{value:?} is not a region name")]
    BadRegion { value: String },
    #[error("{value:?} is not a colour as #rgb or #rrggbb")]
    BadColor { value: String },
    #[error("{value:?} is not an https:// URL or an absolute path")]
    BadUrl { value: String },
    #[error("{value:?} is not a brand name of 1 to 100 printable characters")]
    BadBrandName { value: String },
    #[error("labels take {bytes} bytes, more than max_label_bytes {max}")]
    LabelsTooLarge { bytes: usize, max: usize },
    #[error("{value:?} is not an RFC 3339 time")]
    BadUntil { value: String },
    #[error("retry_after {value} is not between 1 and 86400 seconds")]
    BadRetryAfter { value: i64 },
    #[error("tenant region {tenant_region:?} but pool {pool:?} is in {}", region_or_none(.pool_region))]
    RegionMismatch {
        tenant_region: String,
        pool: String,
        pool_region: Option<String>,
    },
    #[error("{key} is a profile field, not a limit")]
    ProfileInLimits { key: &'static str },
    #[error("header {header} would be {bytes} bytes, more than max_header_bytes {max}")]
    HeaderTooLarge { header: String, bytes: usize, max: usize },
    #[error("{value:?} is not an IP address or CIDR range")]
    BadAllow { value: String },
    #[error("{value:?} is not a path starting with /")]
    BadPath { value: String },
    #[error("{value:?} cannot be left to tenant tokens")]
    BadEditable { value: String },
    #[error("{count} features name paths, more than {MAX_GATED_FEATURES}")]
    TooManyGated { count: usize },
    #[error("header {value:?} is used twice")]
    DuplicateHeader { value: String },
    #[error("error page {file}: {reason}")]
    BadPage { file: String, reason: String },
}

fn region_or_none(r: &Option<String>) -> String {
    match r {
        Some(r) => format!("region {r:?}"),
        None => "no region".into(),
    }
}

impl ProfileProblem {
    /// How to fix it, in one sentence.
    pub fn fix(&self) -> &'static str {
        use ProfileProblem::*;
        match self {
            BadFeature { .. } => "name features like beta-search or reports.v2; write -name to remove one a plan or template grants",
            TooManyFeatures { .. } => "remove features, or group them under fewer names",
            BadLanguage { .. } => "use a BCP 47 tag such as en, de-CH or pt-BR",
            BadCurrency { .. } => "use three capital letters such as EUR, USD or JPY",
            BadDateFormat { .. } => "use a pattern such as YYYY-MM-DD or DD.MM.YYYY",
            BadRegion { .. } => "use 1 to 32 characters of a-z, 0-9 and '-', such as eu or us-east",
            BadColor { .. } => "write a colour such as #0a7 or #1e90ff",
            BadUrl { .. } => "use an https:// URL or a path such as /static/logo.svg, without spaces or quotes",
            BadBrandName { .. } => "use 1 to 100 characters without control characters",
            LabelsTooLarge { .. } => "remove or shorten labels, or raise [profile] max_label_bytes",
            BadUntil { .. } => "write a time such as 2026-12-04T13:00:00Z, or remove until",
            BadRetryAfter { .. } => "use a number of seconds from 1 to 86400",
            RegionMismatch { .. } => "point the tenant at a pool of its region, or set the pool's region",
            ProfileInLimits { .. } => "move it out of the limits table to the tenant or template itself",
            HeaderTooLarge { .. } => "remove features, or raise [profile] max_header_bytes",
            BadAllow { .. } => "write an address such as 203.0.113.7 or a range such as 10.0.0.0/8",
            BadPath { .. } => "write a path such as /.well-known/tenant.json, or \"\" to turn it off",
            BadEditable { .. } => "list only features, locale, branding, labels or maintenance",
            TooManyGated { .. } => "gate fewer features by path",
            DuplicateHeader { .. } => "give each profile value its own header",
            BadPage { .. } => "fix the template: use only {{ name }}, {{ primary_color }}, {{ secondary_color }}, {{ logo_url }}, {{ favicon_url }}, {{ status }}, {{ title }}, {{ detail }}, {{ retry_after }} and {{ language }}, closed by }}",
        }
    }
}

fn problem(p: ProfileProblem) -> Problem {
    Problem::Profile(p)
}

/// Validates `[profile]` and `[features]`.
pub(super) fn settings(
    p: ProfileSection,
    features: BTreeMap<String, FeatureSection>,
    gw: &super::Gateway,
    base: &Path,
    errs: &mut Vec<ConfigError>,
) -> ProfileSettings {
    let d = ProfileSettings::default();
    let tenant_json_path = match p.tenant_json_path {
        None => d.tenant_json_path.clone(),
        Some(s) if s.is_empty() => None,
        Some(s) if valid_path(&s) => Some(s),
        Some(s) => {
            errs.push(err(
                None,
                "profile.tenant_json_path",
                problem(ProfileProblem::BadPath { value: s }),
            ));
            d.tenant_json_path.clone()
        }
    };
    let h = p.headers;
    let mut headers = Vec::new();
    for (carried, key, value, default) in [
        (Carried::Features, "features", h.features, Some("x-tenant-features")),
        (Carried::Region, "region", h.region, Some("x-tenant-region")),
        (Carried::Language, "language", h.language, None),
        (Carried::Timezone, "timezone", h.timezone, None),
        (Carried::Currency, "currency", h.currency, None),
        (Carried::DateFormat, "date_format", h.date_format, None),
    ] {
        let field = format!("profile.headers.{key}");
        let Some(name) = value.as_deref().or(default).filter(|v| !v.is_empty()) else {
            continue;
        };
        let Ok(n) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
            errs.push(err(None, &field, Problem::BadHeader { value: name.into() }));
            continue;
        };
        if super::GATEWAY_HEADERS.contains(&n.as_str()) || n == gw.tenant_header {
            errs.push(err(None, &field, Problem::ReservedHeader { value: name.into() }));
            continue;
        }
        if headers.iter().any(|(_, h)| *h == n) {
            errs.push(err(
                None,
                &field,
                problem(ProfileProblem::DuplicateHeader { value: name.into() }),
            ));
            continue;
        }
        headers.push((carried, n));
    }
    let positive = |field: &str, v: Option<usize>, default: usize, errs: &mut Vec<ConfigError>| match v {
        Some(0) => {
            errs.push(err(None, field, Problem::Zero { value: "0".into() }));
            default
        }
        Some(n) => n,
        None => default,
    };
    let max_header_bytes = positive("profile.max_header_bytes", p.max_header_bytes, d.max_header_bytes, errs);
    let max_label_bytes = positive("profile.max_label_bytes", p.max_label_bytes, d.max_label_bytes, errs);
    let mut maintenance_allow = Vec::new();
    for (i, a) in p.maintenance_allow.unwrap_or_default().iter().enumerate() {
        match Cidr::parse(a) {
            Some(c) => maintenance_allow.push(c),
            None => errs.push(err(
                None,
                &format!("profile.maintenance_allow[{i}]"),
                problem(ProfileProblem::BadAllow { value: a.clone() }),
            )),
        }
    }
    let mut tenant_editable = Vec::new();
    for (i, f) in p.tenant_editable.unwrap_or_default().into_iter().enumerate() {
        if EDITABLE.contains(&f.as_str()) {
            tenant_editable.push(f);
        } else {
            errs.push(err(
                None,
                &format!("profile.tenant_editable[{i}]"),
                problem(ProfileProblem::BadEditable { value: f }),
            ));
        }
    }
    let pages = match p.pages_dir {
        Some(dir) => Pages::load(&base.join(&dir), &dir, errs),
        None => Pages::default(),
    };
    let mut gated = Vec::new();
    for (name, f) in features {
        if !valid_feature(&name) {
            errs.push(err(
                None,
                &format!("features.{name}"),
                problem(ProfileProblem::BadFeature { value: name }),
            ));
            continue;
        }
        for (j, path) in f.paths.iter().enumerate() {
            if !valid_path(path) {
                let field = format!("features.{name}.paths[{j}]");
                errs.push(err(
                    None,
                    &field,
                    problem(ProfileProblem::BadPath { value: path.clone() }),
                ));
            }
        }
        if !f.paths.is_empty() {
            gated.push((name, f.paths));
        }
    }
    if gated.len() > MAX_GATED_FEATURES {
        errs.push(err(
            None,
            "features",
            problem(ProfileProblem::TooManyGated { count: gated.len() }),
        ));
        gated.truncate(MAX_GATED_FEATURES);
    }
    ProfileSettings {
        tenant_json_path,
        tenant_json_max_age: p.tenant_json_max_age.unwrap_or(d.tenant_json_max_age),
        headers,
        max_header_bytes,
        max_label_bytes,
        maintenance_allow,
        pages: Arc::new(pages),
        tenant_editable,
        gated,
    }
}

/// A path the gateway may own: `/` then visible ASCII.
fn valid_path(s: &str) -> bool {
    s.starts_with('/') && s.len() <= 256 && s.bytes().all(|c| c.is_ascii_graphic())
}

/// A feature name: 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a
/// letter or digit.
pub fn valid_feature(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

/// A region name: 1 to 32 of a-z, 0-9 and '-', starting with a letter or digit.
pub fn valid_region(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn valid_language(s: &str) -> bool {
    let mut parts = s.split('-');
    let first = parts.next().unwrap_or("");
    s.len() <= 35
        && (2..=3).contains(&first.len())
        && first.bytes().all(|c| c.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_alphanumeric()))
}

fn valid_color(s: &str) -> bool {
    s.strip_prefix('#')
        .is_some_and(|h| matches!(h.len(), 3 | 6) && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

fn valid_url(s: &str) -> bool {
    let shape =
        s.strip_prefix("https://").is_some_and(|r| !r.is_empty()) || (s.starts_with('/') && !s.starts_with("//"));
    shape && s.len() <= 2048 && s.bytes().all(|c| c.is_ascii_graphic() && !b"\"'<>`\\".contains(&c))
}

/// Each profile value written in one place (a tenant, a template, a plan)
/// on its own; `at(key)` names its field.
pub(super) fn check_values(
    tenant: Option<&str>,
    features: Option<&[String]>,
    locale: Option<&LocaleSection>,
    region: Option<&str>,
    branding: Option<&BrandingSection>,
    at: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) {
    let mut bad = |key: &str, p: ProfileProblem| errs.push(err(tenant, &at(key), problem(p)));
    for (j, f) in features.unwrap_or_default().iter().enumerate() {
        if !valid_feature(f.strip_prefix('-').unwrap_or(f)) {
            bad(
                &format!("features[{j}]"),
                ProfileProblem::BadFeature { value: f.clone() },
            );
        }
    }
    if let Some(l) = locale {
        if let Some(v) = l.language.as_ref().filter(|v| !valid_language(v)) {
            bad("locale.language", ProfileProblem::BadLanguage { value: v.clone() });
        }
        if let Some(v) = l.timezone.as_ref().filter(|z| jiff::tz::TimeZone::get(z).is_err()) {
            let p = Problem::BadTimezone { value: v.clone() };
            errs.push(err(tenant, &at("locale.timezone"), p));
        }
        if let Some(v) = l
            .currency
            .as_ref()
            .filter(|v| v.len() != 3 || !v.bytes().all(|c| c.is_ascii_uppercase()))
        {
            let p = ProfileProblem::BadCurrency { value: v.clone() };
            errs.push(err(tenant, &at("locale.currency"), problem(p)));
        }
        if let Some(v) = l.date_format.as_ref().filter(|v| {
            v.is_empty() || v.len() > 32 || !v.bytes().all(|c| c.is_ascii_alphanumeric() || b" ./,:-".contains(&c))
        }) {
            let p = ProfileProblem::BadDateFormat { value: v.clone() };
            errs.push(err(tenant, &at("locale.date_format"), problem(p)));
        }
    }
    let mut bad = |key: &str, p: ProfileProblem| errs.push(err(tenant, &at(key), problem(p)));
    if let Some(r) = region.filter(|r| !valid_region(r)) {
        bad("region", ProfileProblem::BadRegion { value: r.into() });
    }
    if let Some(b) = branding {
        if let Some(n) = b
            .name
            .as_ref()
            .filter(|n| n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control))
        {
            bad("branding.name", ProfileProblem::BadBrandName { value: n.clone() });
        }
        for (key, v) in [
            ("branding.primary_color", &b.primary_color),
            ("branding.secondary_color", &b.secondary_color),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !valid_color(v)) {
                bad(key, ProfileProblem::BadColor { value: v.clone() });
            }
        }
        for (key, v) in [
            ("branding.logo_url", &b.logo_url),
            ("branding.favicon_url", &b.favicon_url),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !valid_url(v)) {
                bad(key, ProfileProblem::BadUrl { value: v.clone() });
            }
        }
    }
}

/// A tenant's own profile values (before its template is applied).
pub(super) fn check_tenant(i: usize, t: &TenantSection, errs: &mut Vec<ConfigError>) {
    let at = |key: &str| format!("tenants[{i}].{key}");
    check_values(
        Some(&t.id),
        t.features.as_deref(),
        t.locale.as_deref(),
        t.region.as_deref(),
        t.branding.as_deref(),
        &at,
        errs,
    );
    check_limits_table(Some(&t.id), t.limits.as_deref(), &at, errs);
    if let Some(m) = &t.maintenance {
        maintenance(Some(&t.id), m, &|k| at(&format!("maintenance.{k}")), errs);
    }
}

/// A template's profile values; `at` names the template's fields.
pub(super) fn check_template(t: &TemplateSection, at: &dyn Fn(&str) -> String, errs: &mut Vec<ConfigError>) {
    check_values(
        None,
        t.features.as_deref(),
        t.locale.as_ref(),
        t.region.as_deref(),
        t.branding.as_ref(),
        at,
        errs,
    );
    check_limits_table(None, t.limits.as_ref(), at, errs);
    for (k, v) in &t.labels {
        if let Some(reason) = super::label_problem(k, v) {
            errs.push(err(
                None,
                &at(&format!("labels.{k}")),
                Problem::BadLabel { key: k.clone(), reason },
            ));
        }
    }
}

/// A plan's profile values.
pub(super) fn check_plan(name: &str, p: &PlanSection, errs: &mut Vec<ConfigError>) {
    let at = |key: &str| format!("plans.{name}.{key}");
    check_values(
        None,
        p.features.as_deref(),
        p.locale.as_ref(),
        p.region.as_deref(),
        p.branding.as_ref(),
        &at,
        errs,
    );
    for (k, v) in &p.labels {
        if let Some(reason) = super::label_problem(k, v) {
            errs.push(err(
                None,
                &at(&format!("labels.{k}")),
                Problem::BadLabel { key: k.clone(), reason },
            ));
        }
    }
}

/// A `limits` table (a tenant's or template's overrides) holds limits only.
fn check_limits_table(
    tenant: Option<&str>,
    limits: Option<&PlanSection>,
    at: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) {
    let Some(l) = limits else { return };
    for (key, set) in [
        ("features", l.features.is_some()),
        ("locale", l.locale.is_some()),
        ("region", l.region.is_some()),
        ("branding", l.branding.is_some()),
        ("labels", !l.labels.is_empty()),
        ("jwt", l.jwt.is_some()),
    ] {
        if set {
            let p = ProfileProblem::ProfileInLimits { key };
            errs.push(err(tenant, &at(&format!("limits.{key}")), problem(p)));
        }
    }
}

/// A maintenance section, validated.
pub(super) fn maintenance(
    tenant: Option<&str>,
    m: &MaintenanceSection,
    at: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) -> Maintenance {
    let until = m.until.as_ref().and_then(|u| match u.parse::<jiff::Timestamp>() {
        Ok(t) => Some(t),
        Err(_) => {
            let p = ProfileProblem::BadUntil { value: u.clone() };
            errs.push(err(tenant, &at("until"), problem(p)));
            None
        }
    });
    let retry_after = match m.retry_after {
        None => DEFAULT_MAINTENANCE_RETRY_AFTER,
        Some(v @ 1..=86_400) => v as u32,
        Some(v) => {
            let p = ProfileProblem::BadRetryAfter { value: v };
            errs.push(err(tenant, &at("retry_after"), problem(p)));
            DEFAULT_MAINTENANCE_RETRY_AFTER
        }
    };
    Maintenance { until, retry_after }
}

/// `tenant` over `template` for the profile fields: `features` as a list of
/// changes (the template's first), `locale` and `branding` key by key,
/// `labels` key by key.
pub(super) fn apply_template(tenant: &mut TenantSection, template: &TemplateSection) {
    if let Some(base) = &template.features {
        let own = tenant.features.take().unwrap_or_default();
        tenant.features = Some(base.iter().cloned().chain(own).collect());
    }
    tenant.locale = merge_locale(tenant.locale.take().map(|l| *l), template.locale.as_ref()).map(Box::new);
    tenant.branding = merge_branding(tenant.branding.take().map(|b| *b), template.branding.as_ref()).map(Box::new);
    tenant.region = tenant.region.take().or_else(|| template.region.clone());
    for (k, v) in &template.labels {
        tenant.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

fn merge_locale(own: Option<LocaleSection>, base: Option<&LocaleSection>) -> Option<LocaleSection> {
    let Some(base) = base else { return own };
    let own = own.unwrap_or_default();
    Some(LocaleSection {
        language: own.language.or_else(|| base.language.clone()),
        timezone: own.timezone.or_else(|| base.timezone.clone()),
        currency: own.currency.or_else(|| base.currency.clone()),
        date_format: own.date_format.or_else(|| base.date_format.clone()),
    })
}

fn merge_branding(own: Option<BrandingSection>, base: Option<&BrandingSection>) -> Option<BrandingSection> {
    let Some(base) = base else { return own };
    let own = own.unwrap_or_default();
    Some(BrandingSection {
        name: own.name.or_else(|| base.name.clone()),
        primary_color: own.primary_color.or_else(|| base.primary_color.clone()),
        secondary_color: own.secondary_color.or_else(|| base.secondary_color.clone()),
        logo_url: own.logo_url.or_else(|| base.logo_url.clone()),
        favicon_url: own.favicon_url.or_else(|| base.favicon_url.clone()),
    })
}

/// Tenant `i` (its template applied) over its plan: the merged profile and
/// labels. Also checks what only the merge shows: the count of features,
/// the labels' size, the features header's size.
pub(super) fn resolve(
    i: usize,
    t: &TenantSection,
    plan: Option<&PlanSection>,
    settings: &ProfileSettings,
    errs: &mut Vec<ConfigError>,
) -> (Profile, BTreeMap<String, String>) {
    let tenant = Some(t.id.as_str());
    let mut features = BTreeSet::new();
    let plan_features = plan.and_then(|p| p.features.as_deref()).unwrap_or_default();
    for f in plan_features.iter().chain(t.features.as_deref().unwrap_or_default()) {
        match f.strip_prefix('-') {
            Some(gone) => features.remove(gone),
            None => features.insert(f.clone()),
        };
    }
    if features.len() > MAX_FEATURES {
        let p = ProfileProblem::TooManyFeatures { count: features.len() };
        errs.push(err(tenant, &format!("tenants[{i}].features"), problem(p)));
    }
    let locale = merge_locale(t.locale.as_deref().cloned(), plan.and_then(|p| p.locale.as_ref())).unwrap_or_default();
    let branding =
        merge_branding(t.branding.as_deref().cloned(), plan.and_then(|p| p.branding.as_ref())).unwrap_or_default();
    let region = t.region.clone().or_else(|| plan.and_then(|p| p.region.clone()));
    let mut labels = t.labels.clone();
    for (k, v) in plan.map(|p| &p.labels).into_iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > settings.max_label_bytes {
        let p = ProfileProblem::LabelsTooLarge {
            bytes,
            max: settings.max_label_bytes,
        };
        errs.push(err(tenant, &format!("tenants[{i}].labels"), problem(p)));
    }
    let profile = Profile {
        features,
        locale,
        region,
        branding,
    };
    for (carried, name) in &settings.headers {
        let bytes = header_text(&profile, *carried).map_or(0, |v| v.len());
        if bytes > settings.max_header_bytes {
            let p = ProfileProblem::HeaderTooLarge {
                header: name.to_string(),
                bytes,
                max: settings.max_header_bytes,
            };
            errs.push(err(tenant, &format!("tenants[{i}].features"), problem(p)));
        }
    }
    (profile, labels)
}

/// The text of the trusted header carrying `what`, if the tenant has it:
/// features as a comma-separated list in name order.
pub fn header_text(p: &Profile, what: Carried) -> Option<String> {
    match what {
        Carried::Features => Some(p.features.iter().map(String::as_str).collect::<Vec<_>>().join(",")),
        Carried::Region => p.region.clone(),
        Carried::Language => p.locale.language.clone(),
        Carried::Timezone => p.locale.timezone.clone(),
        Carried::Currency => p.locale.currency.clone(),
        Carried::DateFormat => p.locale.date_format.clone(),
    }
}

/// Data residency: a tenant with a region uses only a pool of that region.
pub(super) fn check_residency(
    i: usize,
    id: &str,
    profile: &Profile,
    pool: Option<&super::PoolSpec>,
    errs: &mut Vec<ConfigError>,
) {
    let (Some(region), Some(pool)) = (&profile.region, pool) else {
        return;
    };
    if pool.region.as_ref() != Some(region) {
        let p = ProfileProblem::RegionMismatch {
            tenant_region: region.clone(),
            pool: pool.name.clone(),
            pool_region: pool.region.clone(),
        };
        errs.push(err(Some(id), &format!("tenants[{i}].pool"), problem(p)));
    }
}

/// Pools' regions and maintenance, validated.
pub(super) fn pool_fields(
    name: &str,
    region: Option<&String>,
    m: Option<&MaintenanceSection>,
    errs: &mut Vec<ConfigError>,
) -> (Option<String>, Option<Maintenance>) {
    if let Some(r) = region.filter(|r| !valid_region(r)) {
        let p = ProfileProblem::BadRegion { value: r.clone() };
        errs.push(err(None, &format!("pools.{name}.region"), problem(p)));
    }
    let at = |k: &str| format!("pools.{name}.maintenance.{k}");
    (region.cloned(), m.map(|m| maintenance(None, m, &at, errs)))
}

/// Counts a config's regions (for the metrics' bounded label set).
pub fn regions<'a>(profiles: impl Iterator<Item = &'a Profile>) -> HashMap<&'a str, usize> {
    let mut out = HashMap::new();
    for p in profiles {
        if let Some(r) = &p.region {
            *out.entry(r.as_str()).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> (crate::config::Config, Vec<ConfigError>) {
        let file = crate::config::parse(Path::new("t.toml"), text).expect("parses");
        crate::config::validate(file, Path::new("."))
    }

    const MERGE: &str = r##"
[gateway]
http_listen = "127.0.0.1:8080"
[pools.p]
upstreams = ["127.0.0.1:9001"]
region = "eu"
[plans.pro]
features = ["sso", "audit"]
locale = { language = "en", currency = "USD" }
branding = { name = "Plan", primary_color = "#111" }
labels = { tier = "pro" }
[templates.t]
plan = "pro"
pool = "p"
features = ["beta", "-audit"]
locale = { language = "de" }
region = "eu"
labels = { tier = "template", team = "x" }
[[tenants]]
id = "a"
template = "t"
features = ["-sso"]
branding = { name = "A" }
labels = { team = "a" }
"##;

    #[test]
    fn tenant_beats_template_beats_plan_for_every_profile_field() {
        let (c, errs) = config(MERGE);
        assert_eq!(errs, []);
        let a = &c.tenants[0];
        let p = &a.profile;
        assert_eq!(p.features.iter().map(String::as_str).collect::<Vec<_>>(), ["beta"]);
        assert_eq!(
            (p.locale.language.as_deref(), p.locale.currency.as_deref()),
            (Some("de"), Some("USD"))
        );
        assert_eq!(
            (p.branding.name.as_deref(), p.branding.primary_color.as_deref()),
            (Some("A"), Some("#111"))
        );
        assert_eq!(p.region.as_deref(), Some("eu"));
        let labels: Vec<(&str, &str)> = a.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, [("team", "a"), ("tier", "template")]);
    }

    #[test]
    fn profile_keys_in_a_limits_table_and_oversized_labels_are_refused() {
        let text = format!("{MERGE}[tenants.limits]\nfeatures = [\"x\"]\n");
        let (_, errs) = config(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "tenants[0].limits.features");
        let big = format!("{MERGE}\n[profile]\nmax_label_bytes = 10\n");
        let (_, errs) = config(&big);
        assert!(errs.iter().any(|e| e.field == "tenants[0].labels"), "{errs:?}");
    }

    #[test]
    fn cidr_ranges_contain_their_addresses_only() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let one = Cidr::parse("2001:db8::1").expect("cidr");
        assert!(one.contains("2001:db8::1".parse().expect("ip")));
        assert!(!one.contains("2001:db8::2".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn maintenance_ends_by_itself_at_its_end_time() {
        let now: jiff::Timestamp = "2026-12-04T12:00:00Z".parse().expect("time");
        let m = Maintenance {
            until: Some("2026-12-04T12:10:00Z".parse().expect("time")),
            retry_after: 300,
        };
        assert_eq!(m.active(now), Some(600));
        assert_eq!(m.active("2026-12-04T12:10:00Z".parse().expect("time")), None);
        let open = Maintenance {
            until: None,
            retry_after: 120,
        };
        assert_eq!(open.active(now), Some(120));
    }

    #[test]
    fn values_are_checked_by_shape() {
        assert!(valid_language("de-CH") && valid_language("en") && !valid_language("english!"));
        assert!(valid_color("#0a7") && valid_color("#1E90FF") && !valid_color("red") && !valid_color("#12345"));
        assert!(valid_url("https://cdn.example/logo.svg") && valid_url("/logo.png"));
        for bad in [
            "javascript:alert(1)",
            "//evil.example/x",
            "https://a/\"onload=",
            "http://plain.example/x",
        ] {
            assert!(!valid_url(bad), "{bad}");
        }
        assert!(valid_region("eu") && valid_region("us-east-1") && !valid_region("EU"));
    }
}
