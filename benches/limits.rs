//! The limiter's per-request cost with 100,000 tenants, and the heap each
//! active tenant's state takes. Run: `cargo bench --bench limits`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use jiff::tz::TimeZone;
use tenantgate::limits::{Book, Limits, Rate, SystemClock};

const TENANTS: usize = 100_000;

fn generous(all: bool) -> Limits {
    Limits {
        rate: Some(Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        }),
        client_rate: None,
        max_concurrent: all.then_some(1_000_000),
        per_day: all.then_some(u64::MAX / 2),
        per_month: all.then_some(u64::MAX / 2),
        timezone: TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::UTC),
        fail_closed: false,
    }
}

fn admit(c: &mut Criterion) {
    let book = Book::default();
    let ids: Vec<Arc<str>> = (0..TENANTS).map(|i| Arc::from(format!("t{i:06}"))).collect();
    let states: Vec<_> = ids.iter().map(|id| book.state(id)).collect();
    let mut g = c.benchmark_group("admit_100k_tenants");
    for (name, limits) in [
        ("rate_only", generous(false)),
        ("rate_concurrency_day_month", generous(true)),
    ] {
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 7919) % TENANTS;
                let admitted = states[i].admit(black_box(&limits), None, &SystemClock);
                black_box(admitted.is_ok())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, admit);
criterion_main!(benches);
