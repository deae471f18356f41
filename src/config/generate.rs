//! Generates large configs for scale tests and benchmarks.

use std::fmt::Write;

/// Options for [`generate`].
#[derive(Debug, Clone)]
pub struct Spec {
    pub tenants: usize,
    /// Custom domains per tenant (the first is exact, the second a wildcard,
    /// further ones exact again).
    pub domains_per_tenant: usize,
    /// Upstreams of the shared pool.
    pub upstreams: Vec<String>,
    pub http_listen: String,
    pub metrics_listen: Option<String>,
}

/// A config with `tenants` tenants `t000001` …, each with a platform
/// subdomain and `domains_per_tenant` custom domains, all on one shared pool.
pub fn generate(spec: &Spec) -> String {
    let mut out = String::with_capacity(spec.tenants * (80 + 40 * spec.domains_per_tenant) + 512);
    let _ = writeln!(out, "[gateway]\nhttp_listen = {:?}", spec.http_listen);
    if let Some(m) = &spec.metrics_listen {
        let _ = writeln!(out, "metrics_listen = {m:?}");
    }
    let _ = writeln!(
        out,
        "base_domains = [\"saas.example\"]\n\n[telemetry]\naccess_log = false\n"
    );
    let _ = writeln!(out, "[pools.shared]\nupstreams = {:?}\n", spec.upstreams);
    for i in 1..=spec.tenants {
        let _ = write!(
            out,
            "[[tenants]]\nid = \"t{i:06}\"\nsubdomain = \"t{i:06}\"\ndomains = ["
        );
        for d in 0..spec.domains_per_tenant {
            let sep = if d == 0 { "" } else { ", " };
            let _ = match d {
                1 => write!(out, "{sep}\"*.t{i:06}.example.net\""),
                _ => write!(out, "{sep}\"d{d}.t{i:06}.example.com\""),
            };
        }
        let _ = writeln!(out, "]\npool = \"shared\"\n");
    }
    out
}
