//! The edge profile's per-request cost at 100,000 tenants: the policy's
//! decision plus the backend head (trusted headers), for a tenant with a
//! profile (features, region, branding, locale, a gated feature, the
//! default profile headers) against the same tenants with the profile off.
//! The difference is what the profile adds to a request.
//! Run: `cargo bench --bench profile`; figures in
//! `benches/results/profile-2026-12-04.md`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use tenantgate::acme::Challenges;
use tenantgate::config::Source;
use tenantgate::proxy::headers::{write_upstream, Outgoing};
use tenantgate::proxy::pages::Prefs;
use tenantgate::proxy::policy::{Decision, Outcome, RequestFacts};
use tenantgate::proxy::{ConnFacts, Policy};
use tenantgate::registry::Registry;
use tenantgate::telemetry::Metrics;

const TENANTS: usize = 100_000;

/// 100,000 tenants on the platform domain; with `profile`, each has
/// features, a region, branding and a locale, and one feature gates a path.
fn config(profile: bool) -> String {
    let mut s = String::from(
        "[gateway]\nhttp_listen = \"127.0.0.1:1\"\nbase_domains = [\"saas.example\"]\n\
         [telemetry]\naccess_log = false\n\
         [pools.p]\nupstreams = [\"127.0.0.1:2\"]\nregion = \"eu\"\n",
    );
    if profile {
        s.push_str(
            "[plans.pro]\nfeatures = [\"sso\", \"reports\", \"audit\"]\n\
             locale = { language = \"de\", currency = \"EUR\", timezone = \"Europe/Berlin\" }\n\
             [features.labs]\npaths = [\"/labs\"]\n",
        );
    } else {
        s.push_str("[profile]\ntenant_json_path = \"\"\n[profile.headers]\nfeatures = \"\"\nregion = \"\"\n");
    }
    for i in 0..TENANTS {
        s.push_str(&format!(
            "[[tenants]]\nid = \"t{i:06}\"\nsubdomain = \"t{i:06}\"\npool = \"p\"\n"
        ));
        if profile {
            s.push_str(&format!(
                "plan = \"pro\"\nregion = \"eu\"\nfeatures = [\"-audit\", \"beta\"]\n\
                 branding = {{ name = \"Tenant {i}\", primary_color = \"#0a7\" }}\n"
            ));
        }
    }
    s
}

fn policy(profile: bool) -> (Policy, Arc<Registry>) {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let text: &'static str = Box::leak(config(profile).into_boxed_str());
    let source = Source::Embedded {
        name: "profile-bench.toml",
        text,
    };
    let registry = Arc::new(Registry::load(source, metrics.clone()).expect("config"));
    let p = Policy::new(registry.clone(), metrics, Arc::new(Challenges::default()), None);
    (p, registry)
}

/// A browser's request headers.
const HEADERS: &[(&str, &str)] = &[
    ("host", "t054321.saas.example"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    ),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("accept-language", "de-DE,de;q=0.9,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br"),
    ("cookie", "session=0123456789abcdef"),
    ("x-tenant-features", "forged"),
    ("sec-fetch-mode", "navigate"),
];

/// One request: its facts as a protocol half gathers them, the decision,
/// and the backend head.
fn one(p: &Policy, registry: &Registry, conn: &ConnFacts, out: &mut Vec<u8>, profile: bool) {
    let snap = registry.snapshot();
    let prefs = if profile {
        Prefs::scan(HEADERS.iter().map(|(n, v)| (*n, v.as_bytes())))
    } else {
        Prefs::default()
    };
    let req = RequestFacts {
        method: "GET",
        target: "/app/dashboard?x=1",
        authority: Ok("t054321.saas.example"),
        conn,
        prefs,
        headers: &http::HeaderMap::new(),
    };
    let mut o = Outcome::begin("GET", "/app/dashboard");
    let Some(Decision::Forward(f)) = p.decide(&snap, &req, &mut o).now_or_never() else {
        panic!("forwarded without waiting");
    };
    out.clear();
    let outgoing = Outgoing {
        method: "GET",
        target: "/app/dashboard?x=1",
        http2_host: None,
        length: None,
        chunked: false,
        upgrade: None,
    };
    let id = write_upstream(
        out,
        &outgoing,
        || HEADERS.iter().map(|(n, v)| (*n, v.as_bytes())),
        &f.trusted,
    );
    black_box(id);
    if let Some(c) = f.tenant.and_then(|t| t.edge.region_requests.as_ref()) {
        c.inc();
    }
}

fn per_request(c: &mut Criterion) {
    let conn = ConnFacts {
        peer: Some("10.1.2.3:5555".parse().expect("addr")),
        tls: None,
    };
    let mut g = c.benchmark_group("profile_100k_tenants");
    for profile in [false, true] {
        let (p, registry) = policy(profile);
        let mut out = Vec::with_capacity(1024);
        one(&p, &registry, &conn, &mut out, profile);
        let head = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(
            head.contains("x-tenant-features: beta,reports,sso\r\n"),
            profile,
            "{head}"
        );
        // With the profile off its header is no trusted one: forwarded as sent.
        assert_eq!(!head.contains("forged"), profile, "{head}");
        let name = if profile {
            "decide_and_head_with_profile"
        } else {
            "decide_and_head_without_profile"
        };
        g.bench_function(name, |b| b.iter(|| one(&p, &registry, &conn, &mut out, profile)));
        if profile {
            // tenant.json: the whole answer of the gateway's own.
            let snap = registry.snapshot();
            g.bench_function("tenant_json_answer", |b| {
                b.iter(|| {
                    let req = RequestFacts {
                        method: "GET",
                        target: "/.well-known/tenant.json",
                        authority: Ok("t054321.saas.example"),
                        conn: &conn,
                        prefs: Prefs::default(),
                        headers: &http::HeaderMap::new(),
                    };
                    let mut o = Outcome::begin("GET", "/.well-known/tenant.json");
                    let Some(Decision::Answer(a)) = p.decide(&snap, &req, &mut o).now_or_never() else {
                        panic!("answered");
                    };
                    black_box(a);
                })
            });
        }
    }
    g.finish();
}

/// The difference itself, paired: blocks of 256 requests without and with
/// the profile alternate (order swapped every block), so that a busy
/// neighbour slows both alike. Prints the median and quartiles of
/// (with - without) per request over 4,000 blocks (criterion cannot analyse
/// a difference that is sometimes zero or negative).
fn paired(_: &mut Criterion) {
    const BLOCK: u32 = 256;
    const BLOCKS: usize = 4000;
    let conn = ConnFacts {
        peer: Some("10.1.2.3:5555".parse().expect("addr")),
        tls: None,
    };
    let (p0, r0) = policy(false);
    let (p1, r1) = policy(true);
    let (mut out0, mut out1) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
    let mut block = |profile: bool| {
        let t = std::time::Instant::now();
        for _ in 0..BLOCK {
            match profile {
                false => one(&p0, &r0, &conn, &mut out0, false),
                true => one(&p1, &r1, &conn, &mut out1, true),
            }
        }
        t.elapsed().as_nanos() as f64 / f64::from(BLOCK)
    };
    let mut diffs = Vec::with_capacity(BLOCKS);
    let (mut sum0, mut sum1) = (0.0, 0.0);
    for i in 0..BLOCKS {
        let (a, b) = if i % 2 == 0 {
            let a = block(false);
            (a, block(true))
        } else {
            let b = block(true);
            (block(false), b)
        };
        sum0 += a;
        sum1 += b;
        diffs.push(b - a);
    }
    diffs.sort_by(f64::total_cmp);
    let q = |f: f64| diffs[((diffs.len() - 1) as f64 * f) as usize];
    println!(
        "profile_100k_tenants/added_per_request_paired: median {:.0} ns (quartiles {:.0} .. {:.0} ns); \
         mean without {:.0} ns, with {:.0} ns per request, {} blocks of {}",
        q(0.5),
        q(0.25),
        q(0.75),
        sum0 / BLOCKS as f64,
        sum1 / BLOCKS as f64,
        BLOCKS,
        BLOCK
    );
}

criterion_group!(benches, per_request, paired);
criterion_main!(benches);
