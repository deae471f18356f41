//! `[identity]`, `[identity.jwt]`, `[gateway] shared_hosts` with
//! `[shared_hosts."<host>"]`, and the tenant fields `paths`, `strip_prefix`
//! and `jwt`: file sections turned into the validated model. Rules between
//! tenants (the same prefix twice, nested prefixes, a shared host that is
//! also a tenant's domain) live in `routing::table`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::file::{IdentitySection, JwtSection, SharedHostSection, TenantJwtSection};
use super::{err, ConfigError, PoolId, Problem, GATEWAY_HEADERS};
use crate::routing::{host, paths};

/// Default `[identity] max_tenants_per_subject`.
pub const DEFAULT_MAX_TENANTS_PER_SUBJECT: usize = 3;
/// Default `[identity.jwt] jwks_refresh_secs`.
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;
/// Default `[identity.jwt] leeway_secs`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// A shared host and what gets the paths no tenant claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedHost {
    /// Normalised.
    pub host: String,
    pub platform_pool: Option<PoolId>,
}

/// An address block (`127.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    /// Parses `addr/bits` or a bare address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { addr, bits })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as
    /// IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Where a JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    File(PathBuf),
    Url(String),
}

/// Where the token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFrom {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// The named cookie.
    Cookie(String),
}

/// `[identity.jwt]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwt {
    pub keys: Option<KeySource>,
    pub refresh: Duration,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    /// A JSON pointer (`/org/id`); a plain claim name `tid` is `/tid`.
    pub claim: String,
    pub leeway_secs: u64,
    pub token_from: TokenFrom,
}

/// `[identity]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The trusted tenant header of `header_hosts`.
    pub header: Option<HeaderName>,
    /// Normalised.
    pub header_hosts: HashSet<String>,
    pub header_sources: Vec<Cidr>,
    /// Where the token's subject goes toward the backend.
    pub user_header: HeaderName,
    pub max_tenants_per_subject: usize,
    pub jwt: Option<Jwt>,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            header: None,
            header_hosts: HashSet::new(),
            header_sources: Vec::new(),
            user_header: HeaderName::from_static("x-tenant-user"),
            max_tenants_per_subject: DEFAULT_MAX_TENANTS_PER_SUBJECT,
            jwt: None,
        }
    }
}

/// How a tenant treats tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JwtMode {
    /// Not looked at (the default).
    #[default]
    Off,
    /// Checked when present.
    Optional,
    /// A request without a valid token is refused.
    Required,
}

impl JwtMode {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtMode::Off => "off",
            JwtMode::Optional => "optional",
            JwtMode::Required => "required",
        }
    }
}

/// A tenant's JWT settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantJwt {
    pub mode: JwtMode,
    /// The tenant's own issuer (instead of `[identity.jwt] issuer`).
    pub issuer: Option<String>,
    /// The tenant's own JWKS (instead of `[identity.jwt]`'s).
    pub jwks_url: Option<String>,
}

/// A prefix claimed on a shared host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathClaim {
    /// Normalised host.
    pub host: String,
    /// Canonical prefix: `/acme`.
    pub prefix: String,
}

fn header_name(field: &str, v: &str, errs: &mut Vec<ConfigError>) -> Option<HeaderName> {
    let name = HeaderName::from_bytes(v.to_ascii_lowercase().as_bytes())
        .map_err(|_| errs.push(err(None, field, Problem::BadHeader { value: v.to_string() })))
        .ok()?;
    if GATEWAY_HEADERS.contains(&name.as_str()) || name.as_str() == "authorization" || name.as_str() == "cookie" {
        errs.push(err(None, field, Problem::ReservedHeader { value: v.to_string() }));
        return None;
    }
    Some(name)
}

fn http_url(field: &str, v: &str, tenant: Option<&str>, errs: &mut Vec<ConfigError>) -> bool {
    let ok = (v.starts_with("https://") || v.starts_with("http://")) && v.parse::<http::Uri>().is_ok();
    if !ok {
        errs.push(err(tenant, field, Problem::BadUrl { value: v.to_string() }));
    }
    ok
}

/// `[gateway] shared_hosts` with their `[shared_hosts."<host>"]` sections.
pub fn validate_shared_hosts(
    hosts: &[String],
    sections: BTreeMap<String, SharedHostSection>,
    pool_ids: &HashMap<String, PoolId>,
    errs: &mut Vec<ConfigError>,
) -> Vec<SharedHost> {
    let mut out: Vec<SharedHost> = Vec::with_capacity(hosts.len());
    for (i, raw) in hosts.iter().enumerate() {
        let field = format!("gateway.shared_hosts[{i}]");
        match host::normalize(raw) {
            Ok(h) if out.iter().any(|s| s.host == h) => {
                errs.push(err(None, &field, Problem::DuplicateSharedHost { name: h.into_owned() }))
            }
            Ok(h) => out.push(SharedHost {
                host: h.into_owned(),
                platform_pool: None,
            }),
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
    for (name, section) in sections {
        let field = format!("shared_hosts.\"{name}\"");
        let normal = host::normalize(&name).map(|h| h.into_owned()).unwrap_or(name.clone());
        let Some(shared) = out.iter_mut().find(|s| s.host == normal) else {
            errs.push(err(None, &field, Problem::NotSharedHost { name }));
            continue;
        };
        if let Some(pool) = section.platform_pool {
            match pool_ids.get(&pool) {
                Some(&p) => shared.platform_pool = Some(p),
                None => errs.push(err(
                    None,
                    &format!("{field}.platform_pool"),
                    Problem::UnknownPool { pool },
                )),
            }
        }
    }
    out
}

/// `[identity]`.
pub fn validate_identity(s: Option<IdentitySection>, base: &Path, errs: &mut Vec<ConfigError>) -> Identity {
    let Some(s) = s else {
        return Identity::default();
    };
    let mut identity = Identity {
        header: s
            .header
            .as_deref()
            .and_then(|h| header_name("identity.header", h, errs)),
        ..Identity::default()
    };
    for (i, raw) in s.header_hosts.iter().enumerate() {
        match host::normalize(raw) {
            Ok(h) => {
                identity.header_hosts.insert(h.into_owned());
            }
            Err(reason) => errs.push(err(
                None,
                &format!("identity.header_hosts[{i}]"),
                Problem::BadName {
                    value: raw.clone(),
                    reason,
                },
            )),
        }
    }
    for (i, raw) in s.header_sources.iter().enumerate() {
        match Cidr::parse(raw) {
            Some(c) => identity.header_sources.push(c),
            None => errs.push(err(
                None,
                &format!("identity.header_sources[{i}]"),
                Problem::BadCidr { value: raw.clone() },
            )),
        }
    }
    if identity.header.is_none() && !identity.header_hosts.is_empty() {
        errs.push(err(None, "identity.header_hosts", Problem::HeaderHostsWithoutHeader));
    }
    if let Some(h) = s
        .user_header
        .as_deref()
        .and_then(|h| header_name("identity.user_header", h, errs))
    {
        identity.user_header = h;
    }
    if let Some(n) = s.max_tenants_per_subject {
        if n == 0 {
            errs.push(err(
                None,
                "identity.max_tenants_per_subject",
                Problem::Zero { value: "0".into() },
            ));
        } else {
            identity.max_tenants_per_subject = n;
        }
    }
    identity.jwt = s.jwt.map(|j| validate_jwt(j, base, errs));
    identity
}

fn validate_jwt(j: JwtSection, base: &Path, errs: &mut Vec<ConfigError>) -> Jwt {
    let keys = match (j.jwks_file, j.jwks_url) {
        (Some(_), Some(_)) => {
            errs.push(err(None, "identity.jwt", Problem::TwoKeySources));
            None
        }
        (Some(f), None) => {
            let p = PathBuf::from(&f);
            Some(KeySource::File(if p.is_absolute() { p } else { base.join(p) }))
        }
        (None, Some(u)) => http_url("identity.jwt.jwks_url", &u, None, errs).then_some(KeySource::Url(u)),
        (None, None) => None,
    };
    let refresh = match j.jwks_refresh_secs {
        Some(0) => {
            errs.push(err(
                None,
                "identity.jwt.jwks_refresh_secs",
                Problem::Zero { value: "0".into() },
            ));
            DEFAULT_JWKS_REFRESH_SECS
        }
        Some(n) => n,
        None => DEFAULT_JWKS_REFRESH_SECS,
    };
    let claim = match j.claim.as_deref().unwrap_or("tenant") {
        "" => {
            errs.push(err(
                None,
                "identity.jwt.claim",
                Problem::BadClaim { value: String::new() },
            ));
            "/tenant".to_string()
        }
        c if c.starts_with('/') => c.to_string(),
        c => format!("/{}", c.replace('~', "~0").replace('/', "~1")),
    };
    let token_from = match j.token_from.as_deref() {
        None | Some("authorization") => TokenFrom::Authorization,
        Some(c) => match c.strip_prefix("cookie:") {
            Some(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b)) => {
                TokenFrom::Cookie(name.to_string())
            }
            _ => {
                errs.push(err(
                    None,
                    "identity.jwt.token_from",
                    Problem::BadTokenFrom { value: c.to_string() },
                ));
                TokenFrom::Authorization
            }
        },
    };
    Jwt {
        keys,
        refresh: Duration::from_secs(refresh),
        issuer: j.issuer,
        audience: j.audience,
        claim,
        leeway_secs: j.leeway_secs.unwrap_or(DEFAULT_LEEWAY_SECS),
        token_from,
    }
}

/// A tenant's `jwt`.
pub fn validate_tenant_jwt(
    field: &str,
    tenant: &str,
    s: Option<&TenantJwtSection>,
    identity: &Identity,
    errs: &mut Vec<ConfigError>,
) -> TenantJwt {
    let mode = |v: &str, errs: &mut Vec<ConfigError>| match v {
        "off" => JwtMode::Off,
        "optional" => JwtMode::Optional,
        "required" => JwtMode::Required,
        other => {
            errs.push(err(Some(tenant), field, Problem::BadJwtMode { value: other.into() }));
            JwtMode::Off
        }
    };
    let out = match s {
        None => TenantJwt::default(),
        Some(TenantJwtSection::Mode(m)) => TenantJwt {
            mode: mode(m, errs),
            ..TenantJwt::default()
        },
        Some(TenantJwtSection::Own(t)) => {
            let url_field = format!("{field}.jwks_url");
            let jwks_url = t
                .jwks_url
                .clone()
                .filter(|u| http_url(&url_field, u, Some(tenant), errs));
            TenantJwt {
                mode: t.mode.as_deref().map_or(JwtMode::Required, |m| mode(m, errs)),
                issuer: t.issuer.clone(),
                jwks_url,
            }
        }
    };
    let has_keys = out.jwks_url.is_some() || identity.jwt.as_ref().is_some_and(|j| j.keys.is_some());
    if out.mode != JwtMode::Off && !has_keys {
        errs.push(err(Some(tenant), field, Problem::JwtWithoutKeys));
    }
    out
}

/// A tenant's `paths`: each `host/prefix` with a canonical prefix on a
/// host listed in `[gateway] shared_hosts`.
pub fn validate_paths(
    i: usize,
    tenant: &str,
    raw: &[String],
    shared: &[SharedHost],
    errs: &mut Vec<ConfigError>,
) -> Vec<PathClaim> {
    let mut out = Vec::with_capacity(raw.len());
    for (j, claim) in raw.iter().enumerate() {
        let field = format!("tenants[{i}].paths[{j}]");
        let bad = |errs: &mut Vec<ConfigError>| {
            errs.push(err(Some(tenant), &field, Problem::BadPath { value: claim.clone() }));
        };
        let Some((h, prefix)) = paths::split_claim(claim) else {
            bad(errs);
            continue;
        };
        let Ok(h) = host::normalize(h) else {
            bad(errs);
            continue;
        };
        if !paths::canonical_prefix(prefix) {
            bad(errs);
            continue;
        }
        if !shared.iter().any(|s| s.host == h) {
            errs.push(err(
                Some(tenant),
                &field,
                Problem::PathHostNotShared { host: h.into_owned() },
            ));
            continue;
        }
        out.push(PathClaim {
            host: h.into_owned(),
            prefix: prefix.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_blocks_contain_their_addresses_only() {
        let c = Cidr::parse("127.0.0.0/8").expect("cidr");
        assert!(c.contains("127.1.2.3".parse().expect("ip")));
        assert!(c.contains("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!c.contains("128.0.0.1".parse().expect("ip")));
        let one = Cidr::parse("10.0.0.1").expect("cidr");
        assert!(one.contains("10.0.0.1".parse().expect("ip")) && !one.contains("10.0.0.2".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("cidr")
            .contains("8.8.8.8".parse().expect("ip")));
        assert!(Cidr::parse("::1/128")
            .expect("cidr")
            .contains("::1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }
}
