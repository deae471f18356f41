//! A pool's backends and their policy, validated: upstream entries
//! (`IP:port`, or `host:port` resolved in the background), the resolver of
//! those names (`[gateway] upstream_nameservers`, TTL floor and ceiling),
//! active health checks (`[pools.<name>.health]`), passive outlier ejection
//! (`[pools.<name>.outlier]`) and retries with a budget (`retries`,
//! `retry_budget_percent`, `retry_min_per_second`). Never looks at
//! tenants.

use std::time::Duration;

use serde::Deserialize;

use super::error::{ConfigError, Problem};

/// `[pools.<name>.health]`: present means active checks are on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// The `Host` header of a probe; the upstream's address by default.
    pub host: Option<String>,
}

/// `[pools.<name>.outlier]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    pub consecutive_failures: Option<u32>,
    pub ejection_ms: Option<u64>,
    pub max_ejection_ms: Option<u64>,
    pub eject_last: Option<bool>,
}

/// Active health checks of every upstream of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub expect_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passing probes that make an unhealthy upstream healthy.
    pub rise: u32,
    /// Consecutive failing probes that make a healthy upstream unhealthy.
    pub fall: u32,
    pub host: Option<String>,
}

/// Passive outlier ejection: an upstream that fails `consecutive_failures`
/// requests in a row (5xx answers, resets, timeouts, broken responses) is
/// skipped for `ejection`, doubled on each ejection in a row up to
/// `max_ejection`. `consecutive_failures = 0` turns it off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
    /// Whether the last available upstream of the pool may be ejected too
    /// (then the pool answers 503 until one comes back).
    pub eject_last: bool,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            ejection: Duration::from_millis(DEFAULT_EJECTION_MS),
            max_ejection: Duration::from_millis(DEFAULT_MAX_EJECTION_MS),
            eject_last: false,
        }
    }
}

/// Retries on other upstreams, within a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retries {
    /// Extra attempts per request after a failure before any response byte.
    pub max: u32,
    /// Retries allowed as a share of the pool's requests, in percent.
    pub budget_percent: u32,
    /// Retries always allowed per second, whatever the share.
    pub min_per_second: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max: DEFAULT_RETRIES,
            budget_percent: DEFAULT_BUDGET_PERCENT,
            min_per_second: DEFAULT_MIN_PER_SECOND,
        }
    }
}

/// PINGs on a pool's HTTP/2 backend connections (`http2 = true`): one
/// every `interval`; a connection whose PING is not answered within
/// `timeout` is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

pub const DEFAULT_H2_KEEPALIVE_INTERVAL_MS: u64 = 30_000;
pub const DEFAULT_H2_KEEPALIVE_TIMEOUT_MS: u64 = 10_000;

/// Validates `http2_keepalive_interval_ms` (`0`: off) and
/// `http2_keepalive_timeout_ms`; both only with `http2 = true`. `None`:
/// no PINGs (off, or the pool does not speak HTTP/2).
pub fn h2_keepalive(
    pool: &str,
    http2: bool,
    interval: Option<u64>,
    timeout: Option<u64>,
    errs: &mut Vec<ConfigError>,
) -> Option<H2Keepalive> {
    if !http2 {
        for (key, v) in [
            ("http2_keepalive_interval_ms", interval),
            ("http2_keepalive_timeout_ms", timeout),
        ] {
            if let Some(v) = v {
                errs.push(bad(
                    pool,
                    key,
                    v,
                    "a setting of a pool with http2 = true (set http2 = true, or remove the key)",
                ));
            }
        }
        return None;
    }
    let interval = match interval {
        None => DEFAULT_H2_KEEPALIVE_INTERVAL_MS,
        Some(v) if v == 0 || (100..=3_600_000).contains(&v) => v,
        Some(v) => {
            errs.push(bad(
                pool,
                "http2_keepalive_interval_ms",
                v,
                "0 (no PINGs) or milliseconds from 100 to 3600000",
            ));
            DEFAULT_H2_KEEPALIVE_INTERVAL_MS
        }
    };
    let limit = if interval == 0 { 3_600_000 } else { interval };
    let timeout = match timeout {
        None => DEFAULT_H2_KEEPALIVE_TIMEOUT_MS.min(limit),
        Some(v) if (10..=3_600_000).contains(&v) && v <= limit => v,
        Some(v) => {
            errs.push(bad(
                pool,
                "http2_keepalive_timeout_ms",
                v,
                "milliseconds from 10 to 3600000, at most http2_keepalive_interval_ms",
            ));
            DEFAULT_H2_KEEPALIVE_TIMEOUT_MS.min(limit)
        }
    };
    (interval > 0).then(|| H2Keepalive {
        interval: Duration::from_millis(interval),
        timeout: Duration::from_millis(timeout),
    })
}

pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
pub const DEFAULT_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_EJECTION_MS: u64 = 30_000;
pub const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
pub const DEFAULT_MIN_PER_SECOND: u32 = 10;

fn bad(pool: &str, key: &str, value: impl ToString, expected: &'static str) -> ConfigError {
    super::err(
        None,
        &format!("pools.{pool}.{key}"),
        Problem::BadSetting {
            value: value.to_string(),
            expected,
        },
    )
}

/// Validates `[pools.<pool>.health]`.
pub fn health(pool: &str, s: &HealthSection, errs: &mut Vec<ConfigError>) -> HealthCheck {
    let path = match &s.path {
        None => DEFAULT_HEALTH_PATH.to_string(),
        Some(p) if p.starts_with('/') && p.len() <= 1024 && p.bytes().all(|b| b.is_ascii_graphic()) => p.clone(),
        Some(p) => {
            errs.push(bad(
                pool,
                "health.path",
                p,
                "an absolute path of visible ASCII such as \"/healthz\"",
            ));
            DEFAULT_HEALTH_PATH.to_string()
        }
    };
    let expect_status = match s.expect_status {
        None => 200,
        Some(v @ 200..=599) => v,
        Some(v) => {
            errs.push(bad(pool, "health.expect_status", v, "a final status from 200 to 599"));
            200
        }
    };
    let mut ms = |key: &str, v: Option<u64>, default: u64, min: u64| match v {
        None => default,
        Some(v) if (min..=3_600_000).contains(&v) => v,
        Some(v) => {
            errs.push(bad(pool, key, v, "milliseconds from 100 to 3600000"));
            default
        }
    };
    let interval = ms("health.interval_ms", s.interval_ms, DEFAULT_INTERVAL_MS, 100);
    let mut timeout = ms("health.timeout_ms", s.timeout_ms, DEFAULT_TIMEOUT_MS.min(interval), 10);
    if timeout > interval {
        errs.push(bad(pool, "health.timeout_ms", timeout, "at most health.interval_ms"));
        timeout = interval;
    }
    let rise = bounded(
        pool,
        "health.rise",
        s.rise,
        DEFAULT_RISE,
        1..=100,
        "a count from 1 to 100",
        errs,
    );
    let fall = bounded(
        pool,
        "health.fall",
        s.fall,
        DEFAULT_FALL,
        1..=100,
        "a count from 1 to 100",
        errs,
    );
    let host = match &s.host {
        None => None,
        Some(h) if !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()) => Some(h.clone()),
        Some(h) => {
            errs.push(bad(pool, "health.host", h, "a host name such as \"backend.internal\""));
            None
        }
    };
    HealthCheck {
        path,
        expect_status,
        interval: std::time::Duration::from_millis(interval),
        timeout: std::time::Duration::from_millis(timeout),
        rise,
        fall,
        host,
    }
}

/// Validates `[pools.<pool>.outlier]`.
pub fn outlier(pool: &str, s: Option<&OutlierSection>, errs: &mut Vec<ConfigError>) -> Outlier {
    let Some(s) = s else {
        return Outlier::default();
    };
    let consecutive_failures = bounded(
        pool,
        "outlier.consecutive_failures",
        s.consecutive_failures,
        DEFAULT_CONSECUTIVE_FAILURES,
        0..=1000,
        "a count from 0 (off) to 1000",
        errs,
    );
    let mut ms = |key: &str, v: Option<u64>, default: u64| match v {
        None => default,
        Some(v) if (100..=86_400_000).contains(&v) => v,
        Some(v) => {
            errs.push(bad(pool, key, v, "milliseconds from 100 to 86400000"));
            default
        }
    };
    let ejection = ms("outlier.ejection_ms", s.ejection_ms, DEFAULT_EJECTION_MS);
    let mut max_ejection = ms(
        "outlier.max_ejection_ms",
        s.max_ejection_ms,
        DEFAULT_MAX_EJECTION_MS.max(ejection),
    );
    if max_ejection < ejection {
        errs.push(bad(
            pool,
            "outlier.max_ejection_ms",
            max_ejection,
            "at least outlier.ejection_ms",
        ));
        max_ejection = ejection;
    }
    Outlier {
        consecutive_failures,
        ejection: Duration::from_millis(ejection),
        max_ejection: Duration::from_millis(max_ejection),
        eject_last: s.eject_last.unwrap_or(false),
    }
}

/// `v` when it lies in `range`, else (with an error naming the key) the
/// default; the default when unset.
fn bounded(
    pool: &str,
    key: &str,
    v: Option<u32>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    expected: &'static str,
    errs: &mut Vec<ConfigError>,
) -> u32 {
    match v {
        None => default,
        Some(v) if range.contains(&v) => v,
        Some(v) => {
            errs.push(bad(pool, key, v, expected));
            default
        }
    }
}

/// Validates a pool's `retries`, `retry_budget_percent` and
/// `retry_min_per_second`.
pub fn retries(
    pool: &str,
    max: Option<u32>,
    percent: Option<u32>,
    min_per_second: Option<u32>,
    errs: &mut Vec<ConfigError>,
) -> Retries {
    Retries {
        max: bounded(
            pool,
            "retries",
            max,
            DEFAULT_RETRIES,
            0..=10,
            "a count from 0 (no retries) to 10",
            errs,
        ),
        budget_percent: bounded(
            pool,
            "retry_budget_percent",
            percent,
            DEFAULT_BUDGET_PERCENT,
            0..=100,
            "a percentage from 0 to 100",
            errs,
        ),
        min_per_second: bounded(
            pool,
            "retry_min_per_second",
            min_per_second,
            DEFAULT_MIN_PER_SECOND,
            0..=100_000,
            "a count from 0 to 100000",
            errs,
        ),
    }
}

/// An upstream given by name: resolved (A and AAAA) and re-resolved in
/// the background; requests go to the addresses it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamName {
    /// Lower case, without a trailing dot.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `host:port` with a DNS host name (letters, digits, `-`, `_`, dots;
/// labels of 1 to 63 characters, not all digits at the end; a single label
/// such as a container name is fine) and a port from 1.
pub fn parse_name(entry: &str) -> Option<UpstreamName> {
    let (host, port) = entry.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let last_numeric = labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    (host.len() <= 253 && labels.iter().all(label_ok) && !last_numeric).then_some(UpstreamName { host, port })
}

/// How upstream names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// Empty: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub nameservers: Vec<std::net::SocketAddr>,
    /// A name is looked up again after its record's TTL, but never sooner
    /// than this (and after a failed lookup, this long).
    pub min_ttl: Duration,
    /// … and never later than this.
    pub max_ttl: Duration,
}

pub const DEFAULT_MIN_TTL_MS: u64 = 5_000;
pub const DEFAULT_MAX_TTL_MS: u64 = 300_000;

/// Validates `[gateway] upstream_nameservers`, `upstream_dns_min_ttl_ms`
/// and `upstream_dns_max_ttl_ms`.
pub fn resolver(
    nameservers: Option<&[String]>,
    min_ttl_ms: Option<u64>,
    max_ttl_ms: Option<u64>,
    errs: &mut Vec<ConfigError>,
) -> Resolver {
    let mut servers = Vec::new();
    for (i, ns) in nameservers.unwrap_or_default().iter().enumerate() {
        match ns
            .parse::<std::net::SocketAddr>()
            .or_else(|_| ns.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        {
            Ok(a) => servers.push(a),
            Err(_) => errs.push(super::err(
                None,
                &format!("gateway.upstream_nameservers[{i}]"),
                Problem::BadSetting {
                    value: ns.clone(),
                    expected: "an IP address, or IP:port, such as \"10.0.0.2\" or \"127.0.0.1:5353\"",
                },
            )),
        }
    }
    let mut ms = |key: &str, v: Option<u64>, default: u64| match v {
        None => default,
        Some(v) if (100..=86_400_000).contains(&v) => v,
        Some(v) => {
            errs.push(super::err(
                None,
                &format!("gateway.{key}"),
                Problem::BadSetting {
                    value: v.to_string(),
                    expected: "milliseconds from 100 to 86400000",
                },
            ));
            default
        }
    };
    let min = ms("upstream_dns_min_ttl_ms", min_ttl_ms, DEFAULT_MIN_TTL_MS);
    let mut max = ms("upstream_dns_max_ttl_ms", max_ttl_ms, DEFAULT_MAX_TTL_MS.max(min));
    if max < min {
        errs.push(super::err(
            None,
            "gateway.upstream_dns_max_ttl_ms",
            Problem::BadSetting {
                value: max.to_string(),
                expected: "at least upstream_dns_min_ttl_ms",
            },
        ));
        max = min;
    }
    Resolver {
        nameservers: servers,
        min_ttl: Duration::from_millis(min),
        max_ttl: Duration::from_millis(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe_and_bad_values_name_the_field() {
        let mut errs = Vec::new();
        let h = health("p", &HealthSection::default(), &mut errs);
        assert_eq!(
            (h.path.as_str(), h.expect_status, h.rise, h.fall),
            ("/healthz", 200, 2, 3)
        );
        assert!(h.timeout <= h.interval);
        assert!(errs.is_empty());
        let s = HealthSection {
            path: Some("healthz".into()),
            interval_ms: Some(200),
            timeout_ms: Some(500),
            rise: Some(0),
            ..Default::default()
        };
        health("p", &s, &mut errs);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "pools.p.health.path",
                "pools.p.health.timeout_ms",
                "pools.p.health.rise"
            ]
        );
        let mut errs = Vec::new();
        let r = retries("p", Some(11), Some(101), None, &mut errs);
        assert_eq!(r, Retries::default());
        assert_eq!(errs.len(), 2);
        let o = outlier(
            "p",
            Some(&OutlierSection {
                ejection_ms: Some(10_000),
                max_ejection_ms: Some(1_000),
                ..Default::default()
            }),
            &mut errs,
        );
        assert_eq!(o.max_ejection, o.ejection);
        assert_eq!(errs.len(), 3);
    }

    #[test]
    fn upstream_names_are_dns_names_with_a_port() {
        let n = parse_name("Backend.Internal.:9000").expect("a name");
        assert_eq!(
            (n.host.as_str(), n.port, n.to_string().as_str()),
            ("backend.internal", 9000, "backend.internal:9000")
        );
        assert!(parse_name("localhost:80").is_some());
        assert!(parse_name("proj_backend_1:8080").is_some());
        for bad in [
            "backend",
            "backend:0",
            "backend:http",
            "-a.example:1",
            "a..b:1",
            "10.0.0.300:80",
            "http://a.example:1",
            ":80",
            "[::1]:80",
            "a b:1",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        let mut errs = Vec::new();
        let r = resolver(
            Some(&["10.0.0.2".into(), "127.0.0.1:5353".into(), "dns.example".into()]),
            Some(1000),
            Some(500),
            &mut errs,
        );
        assert_eq!(r.nameservers.len(), 2);
        assert_eq!(r.nameservers[0].port(), 53);
        assert_eq!(r.max_ttl, r.min_ttl);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["gateway.upstream_nameservers[2]", "gateway.upstream_dns_max_ttl_ms"]
        );
    }
}
