//! Fleet mode: two real gateway processes share one real `redis-server`.
//! Rate limits and quotas hold across both; with Redis killed they serve on
//! local limits with no 5xx, and the counts meet again when it returns.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::Redis;
use common::{backend, Gateway};
use tenantgate::demo::EchoBackend;

fn config(pool: &EchoBackend, redis_url: &str, plan: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"

[store]
redis_url = "{redis_url}"
timeout_ms = 1000

[plans.standard]
{plan}

[pools.shared]
upstreams = ["{}"]

[[tenants]]
id = "acme"
domains = ["acme.example.com"]
pool = "shared"
plan = "standard"
"#,
        pool.addr
    )
}

/// Starts two replicas on `template` and waits until both see Redis and
/// each other.
async fn two_replicas(template: &str) -> (Gateway, Gateway) {
    let a = Gateway::start(template).await;
    let b = Gateway::start(template).await;
    for gw in [&a, &b] {
        gw.wait_metric("tenantgate_limit_store_up", 1.0).await;
        gw.wait_metric("tenantgate_limit_store_replicas", 2.0).await;
    }
    (a, b)
}

/// Status counts of a load run.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// `workers` loops per gateway sending requests for `run`.
async fn load(gateways: &[&Gateway], workers: usize, run: Duration) -> (Vec<Arc<Tally>>, Duration) {
    let start = Instant::now();
    let mut tallies = Vec::new();
    let mut tasks = Vec::new();
    for gw in gateways {
        let tally = Arc::new(Tally::default());
        tallies.push(tally.clone());
        for _ in 0..workers {
            let (tally, addr) = (tally.clone(), gw.http);
            let client = reqwest::Client::new();
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < run {
                    let resp = client
                        .get(format!("http://{addr}/"))
                        .header("host", "acme.example.com")
                        .send()
                        .await;
                    let counter = match resp.map(|r| r.status().as_u16()) {
                        Ok(200) => &tally.ok,
                        Ok(429) => &tally.limited,
                        _ => &tally.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("load task");
    }
    (tallies, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_enforce_one_global_rate() {
    let redis = Redis::start();
    let pool = backend("shared").await;
    let (a, b) = two_replicas(&config(&pool, &redis.url(), "requests_per_second = 100\nburst = 100")).await;
    let (tallies, elapsed) = load(&[&a, &b], 6, Duration::from_secs(4)).await;
    let admitted: u64 = tallies.iter().map(|t| t.ok.load(Ordering::Relaxed)).sum();
    let refused: u64 = tallies.iter().map(|t| t.limited.load(Ordering::Relaxed)).sum();
    let other: u64 = tallies.iter().map(|t| t.other.load(Ordering::Relaxed)).sum();
    // GCRA: the burst, then the sustained rate.
    let allowed = 100.0 + 100.0 * elapsed.as_secs_f64();
    let ratio = admitted as f64 / allowed;
    eprintln!("fleet rate: {admitted} admitted, {refused} refused in {elapsed:?}; limit allows {allowed:.0}; ratio {ratio:.3}");
    assert_eq!(other, 0, "every answer is 200 or 429");
    assert!(
        refused > admitted,
        "the load must exceed the limit to test it: {admitted} admitted, {refused} refused"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{admitted} admitted in {elapsed:?} across two replicas; the global limit allows {allowed:.0} (ratio {ratio:.3})"
    );
    for (gw, t) in [(&a, &tallies[0]), (&b, &tallies[1])] {
        assert!(t.ok.load(Ordering::Relaxed) > 0, "each replica admits its share");
        assert!(
            gw.metric("tenantgate_limit_store_fallback_requests_total").await == 0.0,
            "no local fallback: {}",
            gw.log()
        );
    }
}

#[tokio::test]
async fn two_replicas_share_one_day_quota() {
    let redis = Redis::start();
    let pool = backend("shared").await;
    let (a, b) = two_replicas(&config(&pool, &redis.url(), "requests_per_day = 30")).await;
    let mut admitted = 0;
    for _ in 0..20 {
        assert_eq!(a.get("acme.example.com", "/").await.0, 200);
        admitted += 1;
    }
    // B admits what A left, then refuses; A may still hold one leased request.
    for gw in [&b, &a] {
        loop {
            match gw.get("acme.example.com", "/").await.0 {
                200 => admitted += 1,
                429 => break,
                s => panic!("unexpected status {s}"),
            }
            assert!(admitted <= 30, "more than the day's quota admitted");
        }
    }
    assert_eq!(admitted, 30, "the fleet admits exactly the day's quota");
    let resp = reqwest::Client::new()
        .get(format!("http://{}/", b.http))
        .header("host", "acme.example.com")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 429);
    let retry: i64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    let now = jiff::Timestamp::now();
    let midnight = now.to_zoned(jiff::tz::TimeZone::UTC).date().tomorrow().expect("date");
    let to_midnight = midnight
        .to_zoned(jiff::tz::TimeZone::UTC)
        .expect("zoned")
        .timestamp()
        .as_second()
        - now.as_second();
    assert!(
        (retry - to_midnight).abs() <= 2,
        "retry-after {retry}, UTC midnight in {to_midnight}"
    );
    assert!(resp.text().await.expect("body").contains("\"policy\":\"day\""));
    assert_eq!(
        redis.sum("tenantgate:{acme}:day:*"),
        30,
        "Redis holds the fleet's count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_killed_replicas_serve_on_and_reconcile_counts_when_it_returns() {
    let mut redis = Redis::start();
    let pool = backend("shared").await;
    let plan = "requests_per_second = 5000\nburst = 5000\nrequests_per_day = 1000000";
    let (a, b) = two_replicas(&config(&pool, &redis.url(), plan)).await;
    let send = |n: usize| {
        let (a, b) = (&a, &b);
        async move {
            for i in 0..n {
                let gw = if i % 2 == 0 { a } else { b };
                let (status, _) = gw.get("acme.example.com", "/").await;
                assert_eq!(status, 200, "request {i}: {}", gw.log());
            }
        }
    };
    send(40).await;
    redis.kill();
    send(60).await;
    for gw in [&a, &b] {
        gw.wait_metric("tenantgate_requests_total{status_class=\"2xx\",tenant=\"acme\"}", 1.0)
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.metric("tenantgate_limit_store_up").await != 0.0 {
            assert!(Instant::now() < deadline, "the outage never showed: {}", gw.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Once the rate leases taken before the outage have lapsed, requests run
    // on local limits, still with no 5xx.
    tokio::time::sleep(Duration::from_nanos(tenantgate::limits::fleet::RATE_LEASE_TTL_NS)).await;
    send(40).await;
    assert!(
        a.metric("tenantgate_limit_store_fallback_requests_total").await
            + b.metric("tenantgate_limit_store_fallback_requests_total").await
            > 0.0,
        "the fallback is counted"
    );
    redis.restart();
    for gw in [&a, &b] {
        gw.wait_metric("tenantgate_limit_store_up", 1.0).await;
    }
    // Local counts are added and idle leases given back: Redis ends at the
    // number of requests the fleet admitted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = redis.sum("tenantgate:{acme}:day:*");
        if count == 140 {
            break;
        }
        assert!(Instant::now() < deadline, "Redis day count {count}, want 140");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_fail_closed_tenant_gets_503_while_the_store_is_down_and_others_serve_on() {
    // Nothing listens on this port: the store is down from the start.
    let url = format!("redis://127.0.0.1:{}", common::free_port());
    let pool = backend("shared").await;
    let template = format!(
        "{}\n[[tenants]]\nid = \"strict\"\ndomains = [\"strict.example.com\"]\npool = \"shared\"\nplan = \"standard\"\n\
         [tenants.limits]\non_store_failure = \"closed\"\n",
        config(&pool, &url, "requests_per_second = 100")
    );
    let gw = Gateway::start(&template).await;
    assert_eq!(gw.get("acme.example.com", "/").await.0, 200, "fail-open: local limits");
    let (status, body) = gw.get("strict.example.com", "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("\"policy\":\"store\""), "{body}");
    assert!(body.contains("\"status\":503"), "{body}");
    assert_eq!(pool.count(), 1, "the refused request never reached the backend");
    assert_eq!(gw.metric("tenantgate_limit_store_up").await, 0.0);
    assert_eq!(
        gw.metric("tenantgate_limit_rejections_total{reason=\"store\",tenant=\"strict\"}")
            .await,
        1.0
    );
}
