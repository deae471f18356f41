//! The top-tenant sketch's cost per request (`Top::record`), with 100,000
//! tenants under a skewed (Zipf 1.1) load, K = 100, and with every request
//! a miss (uniform over 100,000 tenants: the worst case, an eviction each).
//! Also two threads recording at once (the gateway's workers, thread per
//! core), per record. Run: `cargo bench --bench top`. Results:
//! benches/results/console-2026-12-04.md, top-2026-12-04.md.
//!
//! `TOP_FIXED=<records> TOP_THREADS=<n>` runs a fixed amount of work (the
//! Zipf stream, on n threads) and exits, for whole-process A/B timing.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
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
                top.record(black_box(&sample(&ids[stream[i]], i, start)))
            })
        });
        black_box(top.rank(RankBy::Rps, 10));
    }
    g.finish();
}

/// The `i`th request of the stream: every 50th a 502, durations 0.3–1 ms.
fn sample(tenant: &Arc<str>, i: usize, start: Instant) -> Sample<'_> {
    Sample {
        tenant: Some(tenant),
        status: if i.is_multiple_of(50) { 502 } else { 200 },
        refusal: None,
        start,
        elapsed: Duration::from_micros(300 + (i % 700) as u64),
    }
}

/// `threads` threads each recording `per_thread` samples of `stream`.
fn record_on_threads(
    top: &Arc<Top>,
    ids: &Arc<Vec<Arc<str>>>,
    stream: &Arc<Vec<usize>>,
    threads: usize,
    per_thread: u64,
) {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (top, ids, stream) = (top.clone(), ids.clone(), stream.clone());
            std::thread::spawn(move || {
                let mut i = t * 7_919;
                for _ in 0..per_thread {
                    i = (i + 1) & ((1 << 20) - 1);
                    top.record(black_box(&sample(&ids[stream[i]], i, start)));
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn contended(c: &mut Criterion) {
    let ids: Arc<Vec<Arc<str>>> = Arc::new((0..TENANTS).map(|i| Arc::from(format!("t{i:06}"))).collect());
    let stream = Arc::new(zipf_stream(TENANTS, 1.1, 1 << 20));
    let top = Arc::new(Top::new(100));
    let mut g = c.benchmark_group("top_record_100k_tenants");
    // Time per record while two threads record at once (wall time of the
    // pair divided by the records of one thread: what a worker pays).
    g.bench_function("zipf_1.1_two_threads", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            record_on_threads(&top, &ids, &stream, 2, iters);
            t.elapsed()
        })
    });
    black_box(top.rank(RankBy::Rps, 10));
    g.finish();
}

criterion_group!(benches, record, contended);

fn main() {
    if let Some(n) = std::env::var("TOP_FIXED").ok().and_then(|v| v.parse::<u64>().ok()) {
        let threads = std::env::var("TOP_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let ids: Arc<Vec<Arc<str>>> = Arc::new((0..TENANTS).map(|i| Arc::from(format!("t{i:06}"))).collect());
        let stream = Arc::new(zipf_stream(TENANTS, 1.1, 1 << 20));
        let top = Arc::new(Top::new(100));
        record_on_threads(&top, &ids, &stream, threads, n / threads as u64);
        println!("{}", top.totals().requests);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
