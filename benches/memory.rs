//! Memory per tenant: heap bytes held by a live snapshot, measured with a
//! counting allocator, at several tenant counts. Run: `cargo bench --bench memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tenantgate::config::generate::{generate, Spec};
use tenantgate::registry::Snapshot;
use tenantgate::telemetry::Metrics;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let metrics = Metrics::new().expect("metrics");
    println!(
        "{:>8} {:>8} {:>10} {:>12} {:>12} {:>10}",
        "tenants", "limits", "load_ms", "live_MiB", "peak_MiB", "B/tenant"
    );
    // Under `cargo test --all-targets` (no --bench flag) only prove it runs.
    let sizes: &[usize] = if std::env::args().any(|a| a == "--bench") {
        &[1_000, 10_000, 100_000]
    } else {
        &[1_000]
    };
    for (&tenants, limited) in sizes.iter().flat_map(|n| [(n, false), (n, true)]) {
        let plain = generate(&Spec {
            tenants,
            domains_per_tenant: 2,
            upstreams: vec!["127.0.0.1:9001".into()],
            http_listen: "127.0.0.1:8080".into(),
            metrics_listen: None,
        });
        // With limits: every tenant on a plan with every kind of limit.
        let text = if limited {
            plain.replace("pool = \"shared\"", "pool = \"shared\"\nplan = \"p\"\ntimezone = \"Europe/Berlin\"")
                + "\n[plans.p]\nrequests_per_second = 50\nburst = 100\nmax_concurrent = 64\nrequests_per_day = 100000\nrequests_per_month = 1000000\n"
        } else {
            plain
        };
        let book = tenantgate::limits::Book::default();
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t = Instant::now();
        let (config, table) = Snapshot::compile(Path::new("generated.toml"), &text).expect("valid");
        let snap = Snapshot::assemble(1, config, table, None, &metrics, &book);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let live = LIVE.load(Ordering::Relaxed) - base;
        let peak = PEAK.load(Ordering::Relaxed) - base;
        println!(
            "{tenants:>8} {limited:>8} {ms:>10.0} {:>12.1} {:>12.1} {:>10}",
            live as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            live / tenants
        );
        drop(snap);
        drop(book);
    }
}
