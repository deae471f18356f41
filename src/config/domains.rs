//! `[domains]`, validated: how a custom domain proves its owner before it
//! routes (the lifecycle in `crate::domains`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::err;
use super::error::{ConfigError, Problem};
use super::file::DomainsSection;
use crate::routing::host;

/// Whose new custom domains wait for an ownership proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nobody's: every name is active at once.
    Off,
    /// Names a tenant token adds (the default); the operator's are trusted.
    Tenant,
    /// Names added through the admin API by any token.
    All,
}

/// `[domains]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domains {
    pub verify: Verify,
    /// The TXT record is `<prefix>.<name>`.
    pub verification_prefix: String,
    /// TXT proof allowed.
    pub txt: bool,
    /// HTTP proof allowed (`/.well-known/tenantgate-challenge/<token>`).
    pub http: bool,
    /// A pending claim not proven for this long fails as expired.
    pub pending_ttl: Duration,
    /// First re-check delay; each failed check waits 5 % longer, up to
    /// `recheck_max`.
    pub recheck_min: Duration,
    pub recheck_max: Duration,
    /// DNS servers asked (empty: the system's resolver configuration).
    pub nameservers: Vec<SocketAddr>,
    pub dns_timeout: Duration,
    /// What a custom domain must point at: addresses (A/AAAA) or host
    /// names (CNAME). Empty: the check is skipped.
    pub targets: Vec<String>,
    /// CA identities a CAA record must allow (RFC 8659).
    pub caa_issuers: Vec<String>,
    /// Where claims and the event log are kept.
    pub state_dir: PathBuf,
    pub max_pending_per_tenant: usize,
    /// How often active custom domains are checked to still point at
    /// `targets`.
    pub reverify: Duration,
    /// A name that stopped pointing here for this long is `moved`.
    pub moved_grace: Duration,
    /// Remove a moved name from its tenant.
    pub remove_moved: bool,
    /// `[[webhooks]]`: where events are POSTed.
    pub webhooks: Vec<Webhook>,
}

/// One `[[webhooks]]` receiver.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
    /// Signs each delivery (HMAC-SHA256); never logged.
    pub secret: String,
    /// Event types (`domain.active`) or families (`domain.*`); empty: all.
    pub events: Vec<String>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Whether this receiver wants events of type `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty()
            || self.events.iter().any(|e| {
                e == kind
                    || e.strip_suffix(".*")
                        .is_some_and(|family| kind.split('.').next() == Some(family))
            })
    }
}

/// The event types a webhook may name.
const EVENT_FAMILIES: &[&str] = &["tenant", "tenants", "domain", "certificate"];

fn parse_webhook(i: usize, w: super::file::WebhookSection, errs: &mut Vec<ConfigError>) -> Option<Webhook> {
    let field = |k: &str| format!("webhooks[{i}].{k}");
    let (tls, rest) = if let Some(r) = w.url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = w.url.strip_prefix("http://") {
        (false, r)
    } else {
        errs.push(err(
            None,
            &field("url"),
            Problem::BadSetting {
                value: w.url.clone(),
                expected: "an http:// or https:// URL",
            },
        ));
        return None;
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].to_string()),
        None => (rest, "/".to_string()),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h.trim_start_matches('[').trim_end_matches(']').to_string(), p),
            Err(_) => (String::new(), 0),
        },
        _ => (authority.to_string(), default_port),
    };
    if host.is_empty() || port == 0 || authority.contains('@') || path.contains(char::is_whitespace) {
        errs.push(err(
            None,
            &field("url"),
            Problem::BadSetting {
                value: w.url.clone(),
                expected: "an http:// or https:// URL with a host",
            },
        ));
        return None;
    }
    if w.secret.len() < 16 {
        errs.push(err(
            None,
            &field("secret"),
            Problem::BadSetting {
                value: "(hidden)".into(),
                expected: "a secret of at least 16 characters",
            },
        ));
        return None;
    }
    let events = w.events.unwrap_or_default();
    for e in &events {
        let family = e.split('.').next().unwrap_or("");
        if !EVENT_FAMILIES.contains(&family) || !e.contains('.') {
            errs.push(err(
                None,
                &field("events"),
                Problem::BadSetting {
                    value: e.clone(),
                    expected: "an event type such as \"domain.active\" or a family such as \"domain.*\"",
                },
            ));
        }
    }
    Some(Webhook {
        url: w.url,
        tls,
        host,
        port,
        path,
        secret: w.secret,
        events,
    })
}

impl Domains {
    /// The `[domains]` defaults, with `base` the config file's directory.
    pub fn default_in(base: &Path) -> Domains {
        Domains {
            verify: Verify::Tenant,
            verification_prefix: "_tenantgate-challenge".into(),
            txt: true,
            http: false,
            pending_ttl: Duration::from_secs(7 * 86_400),
            recheck_min: Duration::from_secs(60),
            recheck_max: Duration::from_secs(4 * 3600),
            nameservers: Vec::new(),
            dns_timeout: Duration::from_secs(3),
            targets: Vec::new(),
            caa_issuers: vec!["letsencrypt.org".into()],
            state_dir: base.join("state"),
            max_pending_per_tenant: 20,
            reverify: Duration::from_secs(4 * 3600),
            moved_grace: Duration::from_secs(3 * 86_400),
            remove_moved: false,
            webhooks: Vec::new(),
        }
    }

    /// Seconds to wait before check number `attempts + 1` of a pending
    /// claim: `recheck_min · 1.05^attempts`, at most `recheck_max`.
    pub fn recheck_after(&self, attempts: u32) -> Duration {
        let min = self.recheck_min.as_secs_f64();
        let d = min * 1.05f64.powi(attempts.min(1000) as i32);
        Duration::from_secs_f64(
            d.min(self.recheck_max.as_secs_f64())
                .max(min.min(self.recheck_max.as_secs_f64())),
        )
    }
}

pub(super) fn validate(
    d: Option<DomainsSection>,
    webhooks: Vec<super::file::WebhookSection>,
    base: &Path,
    errs: &mut Vec<ConfigError>,
) -> Domains {
    let mut out = Domains::default_in(base);
    out.webhooks = webhooks
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| parse_webhook(i, w, errs))
        .collect();
    let Some(d) = d else { return out };
    let mut bad = |field: &str, value: String, expected: &'static str| {
        errs.push(err(
            None,
            &format!("domains.{field}"),
            Problem::BadSetting { value, expected },
        ));
    };
    match d.verify.as_deref() {
        None | Some("tenant") => {}
        Some("off") => out.verify = Verify::Off,
        Some("all") => out.verify = Verify::All,
        Some(v) => bad("verify", v.into(), "\"off\", \"tenant\" or \"all\""),
    }
    if let Some(p) = d.verification_prefix {
        let ok =
            !p.is_empty() && p.len() <= 63 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            out.verification_prefix = p.to_ascii_lowercase();
        } else {
            bad(
                "verification_prefix",
                p,
                "one DNS label of letters, digits, '-' and '_'",
            );
        }
    }
    if let Some(methods) = d.methods {
        out.txt = false;
        out.http = false;
        for m in &methods {
            match m.as_str() {
                "txt" => out.txt = true,
                "http" => out.http = true,
                other => bad("methods", other.into(), "\"txt\" or \"http\""),
            }
        }
        if methods.is_empty() {
            bad("methods", "[]".into(), "at least one of \"txt\" and \"http\"");
        }
    }
    if let Some(days) = d.pending_ttl_days {
        if (1..=365).contains(&days) {
            out.pending_ttl = Duration::from_secs(days * 86_400);
        } else {
            bad("pending_ttl_days", days.to_string(), "1 to 365 days");
        }
    }
    if let Some(s) = d.recheck_min_secs {
        if (1..=86_400).contains(&s) {
            out.recheck_min = Duration::from_secs(s);
        } else {
            bad("recheck_min_secs", s.to_string(), "1 to 86400 seconds");
        }
    }
    if let Some(s) = d.recheck_max_secs {
        if (1..=7 * 86_400).contains(&s) {
            out.recheck_max = Duration::from_secs(s);
        } else {
            bad("recheck_max_secs", s.to_string(), "1 to 604800 seconds");
        }
    }
    if out.recheck_max < out.recheck_min {
        bad(
            "recheck_max_secs",
            out.recheck_max.as_secs().to_string(),
            "at least recheck_min_secs",
        );
    }
    for ns in d.nameservers.unwrap_or_default() {
        match ns.parse::<SocketAddr>() {
            Ok(a) => out.nameservers.push(a),
            Err(_) => match ns.parse::<IpAddr>() {
                Ok(ip) => out.nameservers.push(SocketAddr::new(ip, 53)),
                Err(_) => bad("nameservers", ns, "IP or IP:port"),
            },
        }
    }
    if let Some(ms) = d.dns_timeout_ms {
        if (1..=60_000).contains(&ms) {
            out.dns_timeout = Duration::from_millis(ms);
        } else {
            bad("dns_timeout_ms", ms.to_string(), "1 to 60000 milliseconds");
        }
    }
    for t in d.targets.unwrap_or_default() {
        if t.parse::<IpAddr>().is_ok() {
            out.targets.push(t);
        } else {
            match host::normalize(&t) {
                Ok(h) => out.targets.push(h.into_owned()),
                Err(_) => bad("targets", t, "an IP address or a host name"),
            }
        }
    }
    if let Some(issuers) = d.caa_issuers {
        out.caa_issuers = issuers.into_iter().map(|i| i.trim().to_ascii_lowercase()).collect();
    }
    if let Some(dir) = d.state_dir {
        let p = PathBuf::from(dir);
        out.state_dir = if p.is_absolute() { p } else { base.join(p) };
    }
    if let Some(secs) = d.reverify_secs {
        if (1..=7 * 86_400).contains(&secs) {
            out.reverify = Duration::from_secs(secs);
        } else {
            bad("reverify_secs", secs.to_string(), "1 to 604800 seconds");
        }
    }
    if let Some(days) = d.moved_grace_days {
        if days <= 365 {
            out.moved_grace = Duration::from_secs(days * 86_400);
        } else {
            bad("moved_grace_days", days.to_string(), "0 to 365 days");
        }
    }
    out.remove_moved = d.remove_moved.unwrap_or(false);
    if let Some(n) = d.max_pending_per_tenant {
        if (1..=10_000).contains(&n) {
            out.max_pending_per_tenant = n;
        } else {
            bad("max_pending_per_tenant", n.to_string(), "1 to 10000");
        }
    }
    out
}
