//! Fleet mode for the registry: two real gateway processes share their
//! tenants through one real `redis-server`. A change through either is
//! live on the other within a second; a replica started while Redis is down
//! serves its last-known-good tenant files.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::Redis;
use common::{backend, Gateway};
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;
use tenantgate::demo::EchoBackend;

const OPS: &str = "ops-secret-0123456789";

fn config(p: &EchoBackend, q: &EchoBackend, redis_url: &str) -> String {
    config_at(p.addr, q.addr, redis_url)
}

/// Two replicas' template: pools `p` and `q` at these addresses, the ops token.
fn config_at(p: std::net::SocketAddr, q: std::net::SocketAddr, redis_url: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"

[store]
redis_url = "{redis_url}"
timeout_ms = 200

[pools.p]
upstreams = ["{}"]

[pools.q]
upstreams = ["{}"]

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{}"
"#,
        p,
        q,
        hash_hex(OPS),
    )
}

async fn put(gw: &Gateway, id: &str, body: Value) -> common::AdminResponse {
    gw.admin_call("PUT", &format!("/v1/tenants/{id}"), Some(OPS), Some(&body), &[])
        .await
}

/// The tenant routed for `host`, by a real proxied request.
async fn routed(gw: &Gateway, host: &str) -> (u16, Option<String>, String) {
    gw.routed(host).await
}

/// Polls `host` on `gw` until it answers `status`; returns how long it took.
async fn time_until(gw: &Gateway, host: &str, status: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if gw.get(host, "/").await.0 == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{host} never answered {status} within {limit:?}; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn two_replicas(template: &str) -> (Gateway, Gateway) {
    let a = Gateway::start(template).await;
    let b = Gateway::start(template).await;
    for gw in [&a, &b] {
        gw.wait_metric("tenantgate_registry_store_up", 1.0).await;
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_replica_is_live_on_every_replica_within_a_second() {
    let redis = Redis::start();
    let (p, q) = (backend("p").await, backend("q").await);
    let (a, b) = two_replicas(&config(&p, &q, &redis.url())).await;

    // Created through A: routes on B within a second of A's answer.
    assert_eq!(routed(&b, "app.acme.com").await.0, 421);
    let r = put(&a, "acme", json!({"domains": ["app.acme.com"], "pool": "q"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let took = time_until(&b, "app.acme.com", 200, Duration::from_secs(5)).await;
    eprintln!("PUT on A to first routed request on B: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "B routed the new tenant only after {took:?}"
    );
    assert_eq!(routed(&b, "app.acme.com").await, (200, Some("acme".into()), "q".into()));
    // B read only what changed, from the change log.
    assert!(b.log().contains("read=\"changes\""), "{}", b.log());
    // B keeps it on disk as its last-known-good copy.
    let kept = std::fs::read_to_string(b.dir().join("tenants/acme.toml")).expect("B's copy of acme");
    assert!(kept.contains("app.acme.com"), "{kept}");

    // B validates against the shared registry: the name is taken.
    let r = put(&b, "other", json!({"domains": ["APP.acme.com."], "pool": "p"})).await;
    assert_eq!(r.status, 409, "{:?}", r.json);
    assert_eq!(r.json["owners"], json!(["acme"]), "{:?}", r.json);

    // Parallel writes through both replicas all land, on both.
    let writes = (0..6).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        async move {
            let id = format!("t{i}");
            put(gw, &id, json!({"domains": [format!("{id}.example.com")], "pool": "p"})).await
        }
    });
    for r in futures_util::future::join_all(writes).await {
        assert_eq!(r.status, 201, "{:?}", r.json);
    }
    for gw in [&a, &b] {
        for i in 0..6 {
            let host = format!("t{i}.example.com");
            time_until(gw, &host, 200, Duration::from_secs(2)).await;
            assert_eq!(routed(gw, &host).await.1, Some(format!("t{i}")));
        }
    }

    // Parallel claims of one name through both replicas: exactly one wins.
    let claims = (0..4).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        async move {
            let id = format!("claim{i}");
            put(gw, &id, json!({"domains": ["contested.example.com"], "pool": "p"})).await
        }
    });
    let mut statuses: Vec<u16> = futures_util::future::join_all(claims)
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409, 409, 409]);
    let owner = routed(&a, "contested.example.com").await.1;
    assert_eq!(routed(&b, "contested.example.com").await.1, owner);

    // Deleted through B: gone from A within a second.
    let r = b.admin_call("DELETE", "/v1/tenants/acme", Some(OPS), None, &[]).await;
    assert_eq!(r.status, 204, "{:?}", r.json);
    let took = time_until(&a, "app.acme.com", 421, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "A still routed the deleted tenant after {took:?}"
    );

    // A hand edit of a tenant file on B is shared too.
    std::fs::write(
        b.dir().join("tenants/hand.toml"),
        "id = \"hand\"\ndomains = [\"hand.example.com\"]\npool = \"q\"\n",
    )
    .expect("hand edit");
    time_until(&a, "hand.example.com", 200, Duration::from_secs(5)).await;
    assert_eq!(
        routed(&a, "hand.example.com").await,
        (200, Some("hand".into()), "q".into())
    );
    assert!(a.metric("tenantgate_registry_store_version").await >= 10.0);

    // Templates are shared too: one defined through A, used through B, and
    // changed through A moves the tenant on both.
    let template = |pool: &str| json!({"pool": pool});
    let r = a
        .admin_call("PUT", "/v1/templates/basic", Some(OPS), Some(&template("p")), &[])
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let r = put(
        &b,
        "tmpl",
        json!({"domains": ["tmpl.example.com"], "template": "basic"}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    time_until(&a, "tmpl.example.com", 200, Duration::from_secs(2)).await;
    assert_eq!(routed(&a, "tmpl.example.com").await.2, "p");
    let r = a
        .admin_call("PUT", "/v1/templates/basic", Some(OPS), Some(&template("q")), &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    for gw in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(1);
        while routed(gw, "tmpl.example.com").await.2 != "q" {
            assert!(
                Instant::now() < deadline,
                "the template change did not reach this replica in 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(b.dir().join("templates/basic.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_while_redis_is_down_serves_its_last_known_good_registry() {
    let mut redis = Redis::start();
    let (p, q) = (backend("p").await, backend("q").await);
    let template = config(&p, &q, &redis.url());
    let (a, b) = two_replicas(&template).await;
    let r = put(&a, "acme", json!({"domains": ["app.acme.com"], "pool": "q"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    time_until(&b, "app.acme.com", 200, Duration::from_secs(5)).await;

    // B goes down, then Redis; B starts again with no Redis.
    let dir = b.stop();
    redis.kill();
    let b = Gateway::start_in(dir, &template).await;
    assert_eq!(routed(&b, "app.acme.com").await, (200, Some("acme".into()), "q".into()));
    assert_eq!(b.metric("tenantgate_registry_store_up").await, 0.0);
    // A write cannot be shared, so it is refused and changes nothing.
    let r = put(&b, "late", json!({"domains": ["late.example.com"], "pool": "p"})).await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert_eq!(r.json["type"], "tag:tenantgate,2026:store-unavailable", "{:?}", r.json);
    assert_eq!(routed(&b, "late.example.com").await.0, 421);
    assert!(!b.dir().join("tenants/late.toml").exists());

    // Redis returns (with its data): B catches up with what A writes next.
    redis.restart();
    b.wait_metric("tenantgate_registry_store_up", 1.0).await;
    let r = put(&a, "beta", json!({"domains": ["beta.example.com"], "pool": "p"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let took = time_until(&b, "beta.example.com", 200, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "B caught up only after {took:?}");
    assert_eq!(routed(&b, "app.acme.com").await.1.as_deref(), Some("acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_version_that_does_not_load_on_a_replica_leaves_it_as_it_was() {
    let redis = Redis::start();
    let (p, q) = (backend("p").await, backend("q").await);
    let full = config(&p, &q, &redis.url());
    // B lacks pool q.
    let lacking = full.replace(&format!("[pools.q]\nupstreams = [\"{}\"]\n", q.addr), "");
    assert_ne!(lacking, full);
    let a = Gateway::start(&full).await;
    let b = Gateway::start(&lacking).await;
    for gw in [&a, &b] {
        gw.wait_metric("tenantgate_registry_store_up", 1.0).await;
    }
    let r = put(&a, "early", json!({"domains": ["early.example.com"], "pool": "p"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    time_until(&b, "early.example.com", 200, Duration::from_secs(2)).await;

    // A tenant on pool q: live on A, refused on B, which keeps what it had.
    let r = put(&a, "acme", json!({"domains": ["app.acme.com"], "pool": "q"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    b.wait_metric("tenantgate_config_reloads_total{result=\"failure\"}", 1.0)
        .await;
    assert_eq!(routed(&b, "app.acme.com").await.0, 421);
    assert_eq!(routed(&b, "early.example.com").await.1.as_deref(), Some("early"));
    assert!(
        b.log().contains("shared registry refused on this replica"),
        "{}",
        b.log()
    );
    assert!(!b.dir().join("tenants/acme.toml").exists());
    // Writes through B would build on a registry it cannot load.
    let r = put(&b, "other", json!({"domains": ["other.example.com"], "pool": "p"})).await;
    assert_eq!(r.status, 503, "{:?}", r.json);

    // Given the pool, B catches up.
    b.write_config(&full);
    time_until(&b, "app.acme.com", 200, Duration::from_secs(5)).await;
    assert_eq!(routed(&b, "app.acme.com").await, (200, Some("acme".into()), "q".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_registry_and_limits_over_tls_to_redis() {
    let redis = Redis::start_tls();
    let ca = redis.ca_path().expect("TLS server has a CA").display().to_string();
    let (p, q) = (backend("p").await, backend("q").await);
    let template = config(&p, &q, &redis.url()).replace(
        "timeout_ms = 200\n",
        &format!("timeout_ms = 200\nca_file = {ca:?}\n\n[plans.open]\nrequests_per_second = 1000\n\n[limits]\ndefault_plan = \"open\"\n"),
    );
    assert!(template.contains("rediss://"), "{template}");
    let (a, b) = two_replicas(&template).await;
    for gw in [&a, &b] {
        gw.wait_metric("tenantgate_limit_store_up", 1.0).await;
    }
    let r = put(&a, "acme", json!({"domains": ["app.acme.com"], "pool": "q"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let took = time_until(&b, "app.acme.com", 200, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "B routed the new tenant only after {took:?}"
    );
    assert_eq!(routed(&b, "app.acme.com").await, (200, Some("acme".into()), "q".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_step_through_one_replica_moves_the_tenants_on_every_replica() {
    let redis = Redis::start();
    let (p, q) = (backend("p").await, backend("q").await);
    let (a, b) = two_replicas(&config(&p, &q, &redis.url())).await;
    for id in ["t1", "t2"] {
        let r = put(&a, id, json!({"domains": [format!("{id}.example")], "pool": "p"})).await;
        assert_eq!(r.status, 201, "{:?}", r.json);
    }
    time_until(&b, "t2.example", 200, Duration::from_secs(5)).await;
    assert_eq!(routed(&b, "t1.example").await.2, "p");

    // A rollout of t1 made on A: B serves t1 from q, t2 stays on p.
    let body = json!({"from": "p", "to": "q", "tenants": ["t1"], "percent": 100});
    let r = a.admin_call("PUT", "/v1/rollouts/r", Some(OPS), Some(&body), &[]).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let start = Instant::now();
    while routed(&b, "t1.example").await.2 != "q" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "B never moved t1; log:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("rollout PUT on A to t1 served from q on B: {:?}", start.elapsed());
    assert_eq!(routed(&b, "t2.example").await.2, "p");
    assert!(
        b.dir().join("rollouts/r.toml").exists(),
        "B keeps the rollout as its copy"
    );

    // Rolled back through B: A serves t1 from p again.
    let r = b
        .admin_call("POST", "/v1/rollouts/r/rollback", Some(OPS), None, &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let start = Instant::now();
    while routed(&a, "t1.example").await.2 != "p" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "A never moved t1 back; log:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let on_a = a.admin_call("GET", "/v1/rollouts/r", Some(OPS), None, &[]).await;
    assert_eq!(on_a.json["state"], "rolled_back", "{:?}", on_a.json);
}

/// The replicas view: each replica publishes a summary (id, the registry
/// version it serves, its counts) with a TTL, every replica lists them all,
/// and a replica that stops leaves the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_lists_every_live_replica_with_its_version_and_counts() {
    let redis = Redis::start();
    let (p, q) = (backend("p").await, backend("q").await);
    let (a, b) = two_replicas(&config(&p, &q, &redis.url())).await;
    let r = put(&a, "acme", json!({"domains": ["app.acme.com"], "pool": "q"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    // Traffic on A only.
    for _ in 0..25 {
        assert_eq!(a.get("app.acme.com", "/").await.0, 200);
    }
    let version = a.metric("tenantgate_registry_store_version").await;
    // Wait (bounded) until each replica lists both, with a summary published
    // after the traffic and the version.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (la, lb) = loop {
        let (la, lb) = (listed(&a).await, listed(&b).await);
        let ready = |v: &Value| {
            v["replicas"].as_array().is_some_and(|r| {
                r.len() == 2
                    && r.iter().all(|x| x["version"].as_f64() == Some(version))
                    && r.iter().any(|x| x["requests"].as_u64().is_some_and(|n| n >= 25))
            })
        };
        if ready(&la.json) && ready(&lb.json) {
            break (la.json, lb.json);
        }
        assert!(
            Instant::now() < deadline,
            "replicas never listed both with version {version}:\nA {}\nB {}",
            la.json,
            lb.json
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((la["fleet"].clone(), la["store"].clone()), (json!(true), json!("up")));
    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["replicas"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x["id"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    assert_eq!(ids(&la), ids(&lb), "both replicas list the same fleet");
    assert_ne!(la["self"], lb["self"], "each replica has its own id");
    for l in [&la, &lb] {
        assert!(
            ids(l).contains(&l["self"].as_str().unwrap_or_default().to_string()),
            "{l}"
        );
    }
    // A's traffic is A's: its row counts the 25 requests, B's does not.
    let row = |v: &Value, id: &Value| {
        v["replicas"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["id"] == *id).cloned())
    };
    let a_row = row(&la, &la["self"]).expect("A's row");
    let b_row = row(&la, &lb["self"]).expect("B's row");
    assert!(a_row["requests"].as_u64().is_some_and(|n| n >= 25), "{a_row}");
    assert!(b_row["requests"].as_u64().is_some_and(|n| n < 25), "{b_row}");
    assert!(a_row["last_seen_ms"].as_u64().is_some_and(|ms| ms <= 5_000), "{a_row}");
    // B is killed (no goodbye): it leaves A's list once its last report is
    // older than the replica TTL.
    let b_id = lb["self"].clone();
    let _ = b.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = listed(&a).await.json;
        if l["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["id"] != b_id)
        {
            break;
        }
        assert!(Instant::now() < deadline, "B never left A's list: {l}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listed(gw: &Gateway) -> common::AdminResponse {
    gw.admin_call("GET", "/v1/stats/replicas", Some(OPS), None, &[]).await
}

/// The automatic rollback judges the cohort on the whole fleet's traffic:
/// each of two replicas sees 12 failed requests of the moved tenant, under
/// the rollout's `min_requests = 20`, and together they roll it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_automatic_rollback_sums_the_cohorts_traffic_over_the_replicas() {
    use common::flaky::{Flaky, Mode};
    let redis = Redis::start();
    let (v1, v2) = (Flaky::start("v1").await, Flaky::start("v2").await);
    v2.set(Mode::Error);
    let template = config_at(v1.addr, v2.addr, &redis.url()).replace("timeout_ms = 200", "timeout_ms = 500")
        + "\n[pools.q.outlier]\nconsecutive_failures = 0\n";
    let (a, b) = two_replicas(&template).await;
    for id in ["t1", "t2"] {
        let r = put(&a, id, json!({"domains": [format!("{id}.example")], "pool": "p"})).await;
        assert_eq!(r.status, 201, "{:?}", r.json);
    }
    let body = json!({
        "from": "p", "to": "q", "tenants": ["t1"], "percent": 100,
        "auto_rollback": {"enabled": true, "min_requests": 20, "window_secs": 60, "margin_percent": 5}
    });
    let r = a.admin_call("PUT", "/v1/rollouts/r", Some(OPS), Some(&body), &[]).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    for gw in [&a, &b] {
        time_until(gw, "t1.example", 500, Duration::from_secs(5)).await;
    }
    // Each replica's guard takes its window's first sample within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Twelve failures on each replica, and another tenant served well.
    for gw in [&a, &b] {
        for _ in 0..12 {
            assert_eq!(gw.get("t1.example", "/").await.0, 500);
        }
        for _ in 0..10 {
            assert_eq!(gw.get("t2.example", "/").await.0, 200);
        }
    }
    let start = Instant::now();
    let state = loop {
        let r = b.admin_call("GET", "/v1/rollouts/r", Some(OPS), None, &[]).await;
        if r.json["state"] == "rolled_back" {
            break r.json;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not rolled back: {}\nA:\n{}\nB:\n{}",
            r.json,
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = state["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("on 2 replicas"), "{reason}");
    assert!(reason.starts_with("automatic rollback at 100 %"), "{reason}");
    for gw in [&a, &b] {
        time_until(gw, "t1.example", 200, Duration::from_secs(5)).await;
    }
}
