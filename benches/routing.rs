//! Host normalisation and tenant lookup at 100,000 tenants / 300,000 names.
//! Run: `cargo bench --bench routing`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use tenantgate::config::generate::{generate, Spec};
use tenantgate::registry::Snapshot;
use tenantgate::routing::{self, host};

fn normalisation(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    for (name, input) in [
        ("plain", "t012345.saas.example"),
        ("with_port", "t012345.saas.example:8443"),
        ("uppercase", "T012345.SaaS.Example"),
        ("unicode", "bücher.t012345.example"),
        ("punycode", "xn--bcher-kva.t012345.example"),
    ] {
        g.bench_function(name, |b| b.iter(|| host::normalize_authority(black_box(input))));
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let text = generate(&Spec {
        tenants: 100_000,
        domains_per_tenant: 2,
        upstreams: vec!["127.0.0.1:9001".into()],
        http_listen: "127.0.0.1:8080".into(),
        metrics_listen: None,
    });
    let (_config, table) = match Snapshot::compile(Path::new("generated.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("generated config is invalid: {e}"),
    };
    let mut g = c.benchmark_group("resolve_100k_tenants");
    for (name, authority) in [
        ("exact", "d0.t054321.example.com"),
        ("wildcard", "shop.t054321.example.net"),
        ("subdomain", "t054321.saas.example"),
        ("subdomain_with_port", "t054321.saas.example:8080"),
        ("unknown", "nobody.example.org"),
    ] {
        assert!(
            routing::resolve(&table, authority).is_ok() == (name != "unknown"),
            "{name}"
        );
        g.bench_function(name, |b| b.iter(|| routing::resolve(&table, black_box(authority))));
    }
    g.finish();
}

criterion_group!(benches, normalisation, lookup);
criterion_main!(benches);
