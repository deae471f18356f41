//! `[tls.acme.dns01]`, validated: DNS-01 through RFC 2136 dynamic updates
//! signed with TSIG, for the base domains' wildcard certificate and for
//! custom wildcard domains delegated by CNAME (used by `crate::acme::dns01`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::err;
use super::error::{ConfigError, Problem};
use crate::routing::host;

/// `[tls.acme.dns01]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns01Section {
    pub server: String,
    pub zone: Option<String>,
    pub tsig_key: String,
    pub tsig_algorithm: Option<String>,
    pub tsig_secret: Option<String>,
    pub tsig_secret_file: Option<String>,
    pub ttl: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub propagation_timeout_secs: Option<u64>,
    pub wildcard_base_domains: Option<bool>,
    pub wildcard_domains: Option<bool>,
}

/// The TSIG MAC algorithms accepted (the ones RFC 8945 recommends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

/// `[tls.acme.dns01]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Dns01 {
    /// The primary server that takes the updates (and is asked whether
    /// the record is visible).
    pub server: SocketAddr,
    /// The zone to update; `None`: found by asking `server` for the SOA.
    pub zone: Option<String>,
    pub tsig_key: String,
    pub tsig_algorithm: TsigAlgorithm,
    pub tsig_secret: Vec<u8>,
    pub ttl: u32,
    pub timeout: Duration,
    pub propagation_timeout: Duration,
    /// One `*.<base>` + `<base>` certificate per base domain instead of
    /// one per platform subdomain.
    pub wildcard_base_domains: bool,
    /// Order certificates for custom wildcard domains (`*.acme.com`),
    /// whose `_acme-challenge` name is a CNAME into a zone of `server`.
    pub wildcard_domains: bool,
}

impl std::fmt::Debug for Dns01 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns01")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("tsig_key", &self.tsig_key)
            .field("tsig_algorithm", &self.tsig_algorithm)
            .field("tsig_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

const DEFAULT_TTL: u32 = 60;
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_PROPAGATION_SECS: u64 = 120;

/// Checks `[tls.acme.dns01]`; relative paths are resolved against `base`.
pub fn validate(s: Dns01Section, base: &Path, errs: &mut Vec<ConfigError>) -> Option<Dns01> {
    let at = |k: &str| format!("tls.acme.dns01.{k}");
    let bad = |errs: &mut Vec<ConfigError>, k: &str, value: String, expected: &'static str| {
        errs.push(err(None, &at(k), Problem::BadSetting { value, expected }));
    };
    let before = errs.len();
    let server = match s.server.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => match s.server.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, 53)),
            Err(_) => {
                bad(
                    errs,
                    "server",
                    s.server.clone(),
                    "an IP address with an optional port, such as 192.0.2.53:53",
                );
                None
            }
        },
    };
    let zone = s.zone.and_then(|z| match host::normalize(&z) {
        Ok(n) => Some(n.into_owned()),
        Err(_) => {
            bad(errs, "zone", z, "a DNS zone name, such as saas.example");
            None
        }
    });
    let tsig_key = s.tsig_key.trim_end_matches('.').to_ascii_lowercase();
    if tsig_key.is_empty() || host::normalize(&tsig_key).is_err() {
        bad(
            errs,
            "tsig_key",
            s.tsig_key.clone(),
            "the TSIG key's name as the server knows it, such as tenantgate",
        );
    }
    let tsig_algorithm = match s
        .tsig_algorithm
        .as_deref()
        .unwrap_or("hmac-sha256")
        .to_ascii_lowercase()
        .as_str()
    {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        _ => {
            bad(
                errs,
                "tsig_algorithm",
                s.tsig_algorithm.clone().unwrap_or_default(),
                "hmac-sha256, hmac-sha384 or hmac-sha512",
            );
            TsigAlgorithm::HmacSha256
        }
    };
    let secret_text = match (s.tsig_secret, s.tsig_secret_file) {
        (Some(t), None) => Some(t),
        (None, Some(f)) => {
            let p = Path::new(&f);
            let p = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
            match std::fs::read_to_string(&p) {
                Ok(t) => Some(t),
                Err(e) => {
                    bad(
                        errs,
                        "tsig_secret_file",
                        format!("{}: {e}", p.display()),
                        "a readable file holding the base64 TSIG secret",
                    );
                    None
                }
            }
        }
        (Some(_), Some(_)) => {
            bad(
                errs,
                "tsig_secret",
                "both tsig_secret and tsig_secret_file".into(),
                "one of tsig_secret or tsig_secret_file",
            );
            None
        }
        (None, None) => {
            bad(
                errs,
                "tsig_secret",
                "none".into(),
                "the base64 TSIG secret, in tsig_secret or tsig_secret_file",
            );
            None
        }
    };
    let tsig_secret = secret_text.and_then(|t| {
        match base64::engine::general_purpose::STANDARD.decode(t.trim()) {
            Ok(k) if k.len() >= 16 => Some(k),
            // Never echo the secret back.
            _ => {
                bad(
                    errs,
                    "tsig_secret",
                    "(not shown)".into(),
                    "at least 16 bytes in base64, as `keymgr -t` or `tsig-keygen` print it",
                );
                None
            }
        }
    });
    let ttl = s.ttl.unwrap_or(DEFAULT_TTL);
    if ttl == 0 {
        bad(errs, "ttl", "0".into(), "a TTL of at least 1 second");
    }
    let timeout_ms = s.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(100..=60_000).contains(&timeout_ms) {
        bad(errs, "timeout_ms", timeout_ms.to_string(), "between 100 and 60000");
    }
    let propagation = s.propagation_timeout_secs.unwrap_or(DEFAULT_PROPAGATION_SECS);
    if !(1..=3_600).contains(&propagation) {
        bad(
            errs,
            "propagation_timeout_secs",
            propagation.to_string(),
            "between 1 and 3600",
        );
    }
    if errs.len() > before {
        return None;
    }
    Some(Dns01 {
        server: server?,
        zone,
        tsig_key,
        tsig_algorithm,
        tsig_secret: tsig_secret?,
        ttl,
        timeout: Duration::from_millis(timeout_ms),
        propagation_timeout: Duration::from_secs(propagation),
        wildcard_base_domains: s.wildcard_base_domains.unwrap_or(true),
        wildcard_domains: s.wildcard_domains.unwrap_or(true),
    })
}
