//! The top-tenant sketch's cost per request (`Top::record`), with 100,000
//! tenants under a skewed (Zipf 1.1) load, K = 100, and with every request
//! a miss (uniform over 100,000 tenants: the worst case, an eviction each).
//! Run: `cargo bench --bench top`. Results: benches/results/console-2026-12-04.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tenantgate::telemetry::top::{RankBy, Sample, Top};

const TENANTS: usize = 100_000;

/// Tenant indices drawn from Zipf(s) by inverse CDF on a xorshift stream.
fn zipf_stream(n: usize, s: f64, len: usize) -> Vec<usize> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let cdf: Vec<f64> = weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            cdf.partition_point(|c| *c < u).min(n - 1)
        })
        .collect()
}

fn record(c: &mut Criterion) {
    let ids: Vec<Arc<str>> = (0..TENANTS).map(|i| Arc::from(format!("t{i:06}"))).collect();
    let start = Instant::now();
    let mut g = c.benchmark_group("top_record_100k_tenants");
    for (name, stream) in [
        ("zipf_1.1", zipf_stream(TENANTS, 1.1, 1 << 20)),
        (
            "uniform_all_misses",
            (0..1usize << 20).map(|i| (i * 7919) % TENANTS).collect(),
        ),
    ] {
        let top = Top::new(100);
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & ((1 << 20) - 1);
                let status = if i.is_multiple_of(50) { 502 } else { 200 };
                top.record(black_box(&Sample {
                    tenant: Some(&ids[stream[i]]),
                    status,
                    refusal: None,
                    start,
                    elapsed: Duration::from_micros(300 + (i % 700) as u64),
                }))
            })
        });
        black_box(top.rank(RankBy::Rps, 10));
    }
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
