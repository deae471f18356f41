//! What DNS says of a custom domain, asked with hickory-resolver at the
//! configured nameservers (`[domains] nameservers`, else the system's):
//! the ownership TXT record, where the name points, and what CAA allows.
//! Nothing is cached, so a record the tenant just created is seen at the
//! next check.

use std::net::IpAddr;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use serde::Serialize;

use crate::config::domains::Domains;

/// A DNS question that got no usable answer.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of {name} ({kind}) failed: {reason}")]
pub struct DnsError {
    pub name: String,
    pub kind: &'static str,
    pub reason: String,
}

/// A resolver for the lifecycle's questions.
pub struct Dns {
    resolver: TokioResolver,
}

/// One check of `GET /v1/domains/{name}/check`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub found: String,
    /// What to do when `ok` is false.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Dns {
    pub fn new(cfg: &Domains) -> Result<Dns, DnsError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.dns_timeout;
        opts.attempts = 1;
        opts.cache_size = 0;
        let builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError {
                name: "/etc/resolv.conf".into(),
                kind: "system configuration",
                reason: e.to_string(),
            })?
        } else {
            let mut conf = ResolverConfig::new();
            for ns in &cfg.nameservers {
                conf.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
                conf.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(conf, TokioConnectionProvider::default())
        };
        Ok(Dns {
            resolver: builder.with_options(opts).build(),
        })
    }

    /// Every TXT string at `name` (empty when the name has none).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self.resolver.txt_lookup(fqdn(name)).await {
            Ok(l) => Ok(l
                .iter()
                .map(|t| {
                    t.iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>()
                })
                .collect()),
            Err(e) if absent(&e) => Ok(Vec::new()),
            Err(e) => Err(failed(name, "TXT", &e)),
        }
    }

    /// Whether `<prefix>.<name>` holds `token`, and what it holds.
    /// (A wildcard `*.parent` is proven at `<prefix>.parent`.)
    pub async fn proves(&self, cfg: &Domains, name: &str, token: &str) -> Result<(bool, Vec<String>), DnsError> {
        let name = name.strip_prefix("*.").unwrap_or(name);
        let found = self.txt(&format!("{}.{name}", cfg.verification_prefix)).await?;
        Ok((found.iter().any(|t| t.trim() == token), found))
    }

    /// Whether `name` points at one of `targets` (`None`: DNS did not
    /// answer, or `targets` is empty).
    pub async fn points_to(&self, cfg: &Domains, name: &str) -> Option<bool> {
        if cfg.targets.is_empty() {
            return None;
        }
        let (cnames, ips) = self.points(name).await.ok()?;
        Some(
            cnames.iter().any(|c| cfg.targets.contains(c))
                || ips.iter().any(|ip| cfg.targets.contains(&ip.to_string())),
        )
    }

    /// The addresses `name` resolves to.
    pub async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.points(name).await.map(|(_, ips)| ips)
    }

    /// The CNAME target (if any) and the addresses `name` resolves to.
    async fn points(&self, name: &str) -> Result<(Vec<String>, Vec<IpAddr>), DnsError> {
        let mut cnames = Vec::new();
        let mut ips = Vec::new();
        for kind in [RecordType::A, RecordType::AAAA] {
            match self.resolver.lookup(fqdn(name), kind).await {
                Ok(l) => {
                    for r in l.record_iter() {
                        match r.data() {
                            RData::A(a) => ips.push(IpAddr::V4(a.0)),
                            RData::AAAA(a) => ips.push(IpAddr::V6(a.0)),
                            RData::CNAME(c) => {
                                let t = c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase();
                                if !cnames.contains(&t) {
                                    cnames.push(t);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) if absent(&e) => {}
                Err(e) => return Err(failed(name, "A/AAAA", &e)),
            }
        }
        Ok((cnames, ips))
    }

    /// The `issue` (or for a wildcard, `issuewild`) CA identities of the
    /// closest CAA record set at or above `name` (RFC 8659 §3), or `None`
    /// when no name up the tree has CAA (any CA may issue).
    async fn caa(&self, name: &str) -> Result<Option<Vec<String>>, DnsError> {
        let (wild, mut at) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, name.to_string()),
        };
        loop {
            match self.resolver.lookup(fqdn(&at), RecordType::CAA).await {
                Ok(l) => {
                    let caa: Vec<_> = l
                        .record_iter()
                        .filter_map(|r| match r.data() {
                            RData::CAA(c) => Some(c.clone()),
                            _ => None,
                        })
                        .collect();
                    if !caa.is_empty() {
                        let tag = |c: &hickory_resolver::proto::rr::rdata::CAA| c.tag().as_str().to_ascii_lowercase();
                        let has_wild = caa.iter().any(|c| tag(c) == "issuewild");
                        let want = if wild && has_wild { "issuewild" } else { "issue" };
                        let issuers = caa
                            .iter()
                            .filter(|c| tag(c) == want)
                            .filter_map(|c| c.value_as_issue().ok())
                            .map(|(n, _)| {
                                n.map(|n| n.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                                    .unwrap_or_default()
                            })
                            .collect();
                        return Ok(Some(issuers));
                    }
                }
                Err(e) if absent(&e) => {}
                Err(e) => return Err(failed(&at, "CAA", &e)),
            }
            match at.split_once('.') {
                Some((_, parent)) if parent.contains('.') => at = parent.to_string(),
                _ => return Ok(None),
            }
        }
    }

    /// The diagnosis of `name` before a certificate is ordered: where it
    /// points, what CAA allows and, for a pending claim's `token`, the
    /// ownership record. Each failed check says how to fix it.
    pub async fn diagnose(&self, cfg: &Domains, name: &str, token: Option<&str>) -> Vec<Check> {
        let mut checks = Vec::new();
        let base = name.strip_prefix("*.").unwrap_or(name);
        match self.points(base).await {
            Err(e) => checks.push(Check {
                check: "points_to_platform",
                ok: false,
                found: e.to_string(),
                fix: "the DNS servers did not answer: check the name's delegation, then retry".into(),
            }),
            Ok((cnames, ips)) => {
                let found = describe_points(&cnames, &ips);
                let ok = cfg.targets.is_empty()
                    || cnames.iter().any(|c| cfg.targets.contains(c))
                    || ips.iter().any(|ip| cfg.targets.contains(&ip.to_string()));
                let fix = if ok {
                    String::new()
                } else {
                    format!(
                        "point {base} at the platform: a CNAME to, or A/AAAA records of, {}",
                        cfg.targets.join(", ")
                    )
                };
                checks.push(Check {
                    check: "points_to_platform",
                    ok,
                    found,
                    fix,
                });
            }
        }
        match self.caa(name).await {
            Err(e) => checks.push(Check {
                check: "caa_allows_ca",
                ok: false,
                found: e.to_string(),
                fix: "the CAA lookup failed: a CA treats that as a refusal; fix the DNS servers' answers".into(),
            }),
            Ok(None) => checks.push(Check {
                check: "caa_allows_ca",
                ok: true,
                found: "no CAA record: any CA may issue".into(),
                fix: String::new(),
            }),
            Ok(Some(issuers)) => {
                let ok = issuers.iter().any(|i| cfg.caa_issuers.contains(i));
                checks.push(Check {
                    check: "caa_allows_ca",
                    ok,
                    found: format!(
                        "CAA allows: {}",
                        if issuers.is_empty() {
                            "nobody".into()
                        } else {
                            issuers.join(", ")
                        }
                    ),
                    fix: if ok {
                        String::new()
                    } else {
                        format!(
                            "add a CAA record `0 issue \"{}\"` at {base}, or remove the CAA records that exclude it",
                            cfg.caa_issuers.first().map_or("letsencrypt.org", String::as_str)
                        )
                    },
                });
            }
        }
        if let Some(token) = token {
            let record = format!("{}.{base}", cfg.verification_prefix);
            match self.proves(cfg, base, token).await {
                Ok((ok, found)) => checks.push(Check {
                    check: "ownership_txt",
                    ok,
                    found: if found.is_empty() {
                        format!("no TXT record at {record}")
                    } else {
                        found.join(", ")
                    },
                    fix: if ok {
                        String::new()
                    } else {
                        format!("create a TXT record at {record} with the value {token}")
                    },
                }),
                Err(e) => checks.push(Check {
                    check: "ownership_txt",
                    ok: false,
                    found: e.to_string(),
                    fix: format!("create a TXT record at {record} with the value {token}"),
                }),
            }
        }
        checks
    }
}

fn describe_points(cnames: &[String], ips: &[IpAddr]) -> String {
    let mut parts: Vec<String> = cnames.iter().map(|c| format!("CNAME {c}")).collect();
    parts.extend(ips.iter().map(ToString::to_string));
    if parts.is_empty() {
        "no A, AAAA or CNAME record".into()
    } else {
        parts.join(", ")
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The name exists with no such record, or does not exist.
fn absent(e: &ResolveError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

fn failed(name: &str, kind: &'static str, e: &ResolveError) -> DnsError {
    DnsError {
        name: name.to_string(),
        kind,
        reason: e.to_string(),
    }
}
