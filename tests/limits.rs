//! Per-tenant limits through the real gateway: burst and rate, concurrency,
//! day quotas in the tenant's time zone, persistence, overrides and reload.

mod common;

use std::time::Duration;

use common::{backend, Gateway};
use tenantgate::demo::EchoBackend;

fn config(pool: &EchoBackend, plan: &str, acme_extra: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"

[plans.standard]
{plan}

[pools.shared]
upstreams = ["{}"]

[[tenants]]
id = "acme"
domains = ["acme.example.com"]
pool = "shared"
plan = "standard"
{acme_extra}

[[tenants]]
id = "other"
domains = ["other.example.com"]
pool = "shared"
plan = "unlimited"
"#,
        pool.addr
    )
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn get(gw: &Gateway, host: &str, path: &str) -> Reply {
    get_from(gw, host, path, "127.0.0.1").await
}

/// Like [`get`], from the loopback address `from` (a client IP of its own).
async fn get_from(gw: &Gateway, host: &str, path: &str, from: &str) -> Reply {
    let client = reqwest::Client::builder()
        .local_address(Some(from.parse().expect("ip")))
        .build()
        .expect("client");
    let resp = client
        .get(format!("http://{}{path}", gw.http))
        .header("host", host)
        .send()
        .await
        .expect("request");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    Reply {
        status,
        headers,
        body: resp.text().await.expect("body"),
    }
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn exact_burst_then_refusal_while_another_tenant_on_the_pool_is_unaffected() {
    let pool = backend("shared").await;
    let gw = Gateway::start(&config(&pool, "requests_per_second = 1\nburst = 5", "")).await;
    for i in 0..5 {
        let r = get(&gw, "acme.example.com", "/").await;
        assert_eq!(r.status, 200, "request {i} is within the burst");
        assert_eq!(header(&r, "ratelimit-policy"), "\"burst\";q=5;w=5");
        assert!(
            header(&r, "ratelimit").starts_with(&format!("\"burst\";r={};t=", 4 - i)),
            "{}",
            header(&r, "ratelimit")
        );
    }
    let r = get(&gw, "acme.example.com", "/").await;
    assert_eq!(r.status, 429);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "ratelimit-policy"), "\"burst\";q=5;w=5");
    assert_eq!(
        header(&r, "ratelimit"),
        "\"burst\";r=0;t=1",
        "the refusing policy, nothing left"
    );
    let problem: serde_json::Value = serde_json::from_str(&r.body).expect("problem json");
    assert_eq!(
        problem,
        serde_json::json!({
            "type": "tag:tenantgate,2026:rate-limited",
            "title": "Too Many Requests",
            "status": 429,
            "detail": "request rate above the tenant's plan",
            "policy": "burst",
            "retry_after": 1
        })
    );
    assert_eq!(pool.count(), 5, "the refused request never reached the backend");
    for _ in 0..20 {
        assert_eq!(
            get(&gw, "other.example.com", "/").await.status,
            200,
            "other tenant unaffected"
        );
    }
    // Steady rate: after a second, one more fits, and only one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw, "acme.example.com", "/").await.status, 200);
    assert_eq!(get(&gw, "acme.example.com", "/").await.status, 429);
    let m = gw
        .metric("tenantgate_limit_rejections_total{reason=\"burst\",tenant=\"acme\"}")
        .await;
    assert_eq!(m, 2.0);
}

#[tokio::test]
async fn concurrency_cap_refuses_the_request_over_the_cap() {
    let pool = backend("shared").await;
    let gw = std::sync::Arc::new(Gateway::start(&config(&pool, "max_concurrent = 2", "")).await);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { get(&gw, "acme.example.com", "/sleep/1500").await.status })
        })
        .collect();
    // Wait until both are in flight at the backend.
    common::wait_requests(&pool, 2, "held requests never arrived").await;
    let r = get(&gw, "acme.example.com", "/").await;
    assert_eq!(r.status, 429);
    assert!(r.body.contains("\"policy\":\"concurrency\""), "{}", r.body);
    assert_eq!(
        header(&r, "ratelimit-policy"),
        "\"concurrency\";q=2;qu=\"concurrent-requests\""
    );
    for h in held {
        assert_eq!(h.await.expect("held request"), 200);
    }
    // A slot is released when the gateway finishes the request, which can
    // be just after the client has read the response.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&gw, "acme.example.com", "/").await;
        assert_eq!(r.status, 200, "slots are released when requests end");
        if header(&r, "ratelimit") == "\"concurrency\";r=1" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slots never released: {}",
            header(&r, "ratelimit")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds from now to the next midnight in `tz`.
fn to_local_midnight(tz: &str) -> i64 {
    let now = jiff::Timestamp::now();
    let zone = jiff::tz::TimeZone::get(tz).expect("tz");
    let today = now.to_zoned(zone.clone()).date();
    let midnight = today
        .tomorrow()
        .expect("tomorrow")
        .to_zoned(zone)
        .expect("midnight")
        .timestamp();
    midnight.as_second() - now.as_second()
}

#[tokio::test]
async fn day_quota_retry_after_points_to_the_next_local_midnight() {
    let pool = backend("shared").await;
    let gw = Gateway::start(&config(&pool, "requests_per_day = 3", "timezone = \"Asia/Tokyo\"")).await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "acme.example.com", "/").await.status, 200);
    }
    let r = get(&gw, "acme.example.com", "/").await;
    assert_eq!(r.status, 429);
    let retry: i64 = header(&r, "retry-after").parse().expect("retry-after");
    let want = to_local_midnight("Asia/Tokyo");
    assert!(
        (retry - want).abs() <= 2,
        "retry-after {retry}, next Tokyo midnight in {want}"
    );
    assert!(r.body.contains("\"policy\":\"day\""), "{}", r.body);
}

#[tokio::test]
async fn quota_counts_survive_a_restart() {
    let pool = backend("shared").await;
    let template = config(&pool, "requests_per_day = 5", "");
    let gw = Gateway::start(&template).await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "acme.example.com", "/").await.status, 200);
    }
    // A graceful stop (SIGTERM) flushes at once.
    gw.signal("TERM");
    let quota_file = gw.dir().join("state/quotas.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&quota_file)
        .unwrap_or_default()
        .contains("\"count\":3")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "quota file never written:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = gw.stop();
    let gw = Gateway::start_in(dir, &template).await;
    assert_eq!(get(&gw, "acme.example.com", "/").await.status, 200);
    assert_eq!(get(&gw, "acme.example.com", "/").await.status, 200);
    assert_eq!(
        get(&gw, "acme.example.com", "/").await.status,
        429,
        "3 + 2 = the day's 5"
    );
}

#[tokio::test]
async fn overrides_beat_the_plan_and_a_reload_changes_limits_without_resetting_counts() {
    let pool = backend("shared").await;
    let gw = Gateway::start(&config(
        &pool,
        "requests_per_day = 2",
        "[tenants.limits]\nrequests_per_day = 4",
    ))
    .await;
    for i in 0..4 {
        assert_eq!(
            get(&gw, "acme.example.com", "/").await.status,
            200,
            "request {i}: override of 4 applies"
        );
    }
    assert_eq!(get(&gw, "acme.example.com", "/").await.status, 429);
    // Reload: the override goes, the plan grows to 6. The 4 already counted stay.
    gw.write_config(&config(&pool, "requests_per_day = 6", ""));
    gw.wait_metric("tenantgate_config_generation", 2.0).await;
    assert_eq!(get(&gw, "acme.example.com", "/").await.status, 200);
    assert_eq!(get(&gw, "acme.example.com", "/").await.status, 200);
    assert_eq!(
        get(&gw, "acme.example.com", "/").await.status,
        429,
        "4 + 2 = the new 6: counts were kept"
    );
}

#[tokio::test]
async fn one_client_cannot_use_up_the_tenants_budget() {
    let pool = backend("shared").await;
    // The tenant refills one request a second: the counts below hold exactly.
    let plan = "requests_per_second = 1\nburst = 100\nclient_requests_per_second = 1\nclient_burst = 2";
    let gw = Gateway::start(&config(&pool, plan, "")).await;
    for _ in 0..2 {
        assert_eq!(get_from(&gw, "acme.example.com", "/", "127.0.0.1").await.status, 200);
    }
    let r = get_from(&gw, "acme.example.com", "/", "127.0.0.1").await;
    assert_eq!(r.status, 429);
    assert_eq!(header(&r, "retry-after"), "1");
    assert!(r.body.contains("\"policy\":\"client\""), "{}", r.body);
    assert_eq!(
        header(&r, "ratelimit-policy"),
        "\"burst\";q=100;w=100, \"client\";q=2;w=2"
    );
    // Another client of the same tenant still has its share, and the refused
    // request took nothing from the tenant's budget: 2 of 100 are spent.
    let other = get_from(&gw, "acme.example.com", "/", "127.0.0.2").await;
    assert_eq!(other.status, 200);
    assert!(
        header(&other, "ratelimit").starts_with("\"burst\";r=97;"),
        "{}",
        header(&other, "ratelimit")
    );
    assert_eq!(pool.count(), 3, "the refused request never reached the backend");
    assert_eq!(
        gw.metric("tenantgate_limit_rejections_total{reason=\"client\",tenant=\"acme\"}")
            .await,
        1.0
    );
}
