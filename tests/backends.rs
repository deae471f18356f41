//! Backends as they really fail: active health checks take an upstream out
//! and bring it back, passive ejection skips one that answers 5xx or
//! resets, a pool with nothing healthy answers 503 at once, retries go to
//! another upstream only when nothing can have been acted on, and the
//! retry budget caps them. Every backend is a real socket spawned here
//! (tests/common/flaky.rs) that the test makes die, hang, fail and recover.

mod common;

use std::time::{Duration, Instant};

use common::flaky::{Flaky, Mode};
use common::Gateway;
use serde_json::Value;
use tenantgate::admin::auth::hash_hex;

const OPS: &str = "ops-secret-0123456789";

/// A gateway with one tenant `t.example` on pool `p` over `upstreams`,
/// `pool_extra` appended to `[pools.p]`.
fn config(upstreams: &[&Flaky], pool_extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
read_timeout_ms = 20000
watch_config = false

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{}"

[pools.p]
upstreams = [{}]
{pool_extra}

[[tenants]]
id = "t"
domains = ["t.example"]
pool = "p"
"#,
        hash_hex(OPS),
        list.join(", ")
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

async fn send(c: &reqwest::Client, gw: &Gateway, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut req = c
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("http://{}{path}", gw.http),
        )
        .header("host", "t.example");
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

fn healthy(u: &Flaky) -> String {
    format!("tenantgate_upstream_healthy{{pool=\"p\",upstream=\"{}\"}}", u.addr)
}

/// Polls the `healthy` gauge of `u` until it is `want`, for up to 10 s.
async fn wait_healthy(gw: &Gateway, u: &Flaky, want: bool) {
    let series = healthy(u);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = common::series_value(&gw.metrics_text().await, &series);
        if v == Some(if want { 1.0 } else { 0.0 }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {v:?}, wanted {want}; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pool_state(gw: &Gateway) -> Value {
    let r = gw.admin_call("GET", "/v1/pools/p", Some(OPS), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.json
}

fn upstream_of<'v>(pool: &'v Value, u: &Flaky) -> &'v Value {
    pool["upstreams"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["address"] == u.addr.to_string()))
        .unwrap_or_else(|| panic!("{} not in {pool}", u.addr))
}

const CHECKS: &str = "[pools.p.health]\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 100\nrise = 2\nfall = 2\n";

#[tokio::test]
async fn active_checks_take_failing_and_hanging_upstreams_out_and_bring_them_back() {
    let a = Flaky::start("a").await;
    let b = Flaky::start("b").await;
    let gw = Gateway::start(&config(&[&a, &b], CHECKS)).await;
    let c = client();
    wait_healthy(&gw, &b, true).await;
    assert!(b.probes() > 0, "b is probed");

    // b's health endpoint answers 503: b is taken out, its traffic is not.
    b.set_health(Mode::Answer, 503);
    wait_healthy(&gw, &b, false).await;
    let before = b.count();
    for i in 0..20 {
        let (status, body) = send(&c, &gw, "GET", &format!("/x{i}"), None).await;
        assert_eq!((status, body.starts_with("a ")), (200, true), "{body}");
    }
    assert_eq!(b.count(), before, "no request reached the unhealthy upstream");
    let pool = pool_state(&gw).await;
    let ub = upstream_of(&pool, &b);
    assert_eq!(
        (ub["state"].as_str(), ub["available"].as_bool()),
        (Some("unhealthy"), Some(false)),
        "{pool}"
    );
    assert_eq!(ub["last_probe"]["status"], 503, "{pool}");
    assert_eq!(pool["available"], 1);
    assert_eq!(pool["health"]["rise"], 2);

    // Healthy again after `rise` passing probes: traffic returns.
    b.set_health(Mode::Answer, 200);
    wait_healthy(&gw, &b, true).await;
    let before = b.count();
    for i in 0..10 {
        assert_eq!(send(&c, &gw, "GET", &format!("/y{i}"), None).await.0, 200);
    }
    assert!(b.count() >= before + 4, "round robin reaches b again");

    // A health endpoint that hangs past timeout_ms fails the check too.
    b.set_health(Mode::Hang, 0);
    wait_healthy(&gw, &b, false).await;
    let pool = pool_state(&gw).await;
    let err = upstream_of(&pool, &b)["last_probe"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("no answer"), "{err}");
}

#[tokio::test]
async fn reload_starts_probes_for_added_upstreams_and_stops_them_for_removed_ones() {
    let a = Flaky::start("a").await;
    let b = Flaky::start("b").await;
    let gw = Gateway::start(&config(&[&a], CHECKS)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.probes() > 0);
    assert_eq!(b.probes(), 0);
    // b's checks fail before it is even added: it starts healthy, and is
    // taken out after `fall` probes.
    b.set_health(Mode::Answer, 500);
    gw.write_config(&config(&[&a, &b], CHECKS));
    gw.signal("HUP");
    gw.wait_metric("tenantgate_config_generation", 2.0).await;
    wait_healthy(&gw, &b, false).await;
    // a leaves the pool: its probes stop, and its series goes.
    gw.write_config(&config(&[&b], CHECKS));
    gw.signal("HUP");
    gw.wait_metric("tenantgate_config_generation", 3.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probes = a.probes();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.probes(), probes, "no probe of a removed upstream");
    assert_eq!(common::series_value(&gw.metrics_text().await, &healthy(&a)), None);
    // b kept its verdict across the reload: the only upstream is unhealthy.
    let (status, _) = send(&client(), &gw, "GET", "/", None).await;
    assert_eq!(status, 503);
    // Checks turned off: the verdict goes, b takes traffic again.
    gw.write_config(&config(&[&b], ""));
    gw.signal("HUP");
    gw.wait_metric("tenantgate_config_generation", 4.0).await;
    wait_healthy(&gw, &b, true).await;
    let probes = b.probes();
    assert_eq!(send(&client(), &gw, "GET", "/", None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.probes(), probes, "checks off: no probes");
}

#[tokio::test]
async fn passive_ejection_skips_an_upstream_that_answers_5xx_or_resets_but_never_the_last() {
    let a = Flaky::start("a").await;
    let b = Flaky::start("b").await;
    let solo = Flaky::start("solo").await;
    let extra = "retries = 0\n[pools.p.outlier]\nconsecutive_failures = 3\nejection_ms = 1500\n";
    let mut cfg = config(&[&a, &b], extra);
    cfg.push_str(&format!(
        "\n[pools.solo]\nupstreams = [\"{}\"]\n[pools.solo.outlier]\nconsecutive_failures = 2\n\n[[tenants]]\nid = \"s\"\ndomains = [\"s.example\"]\npool = \"solo\"\n",
        solo.addr
    ));
    let gw = Gateway::start(&cfg).await;
    let c = client();
    b.set(Mode::Error);
    let mut fives = 0;
    for i in 0..12 {
        let (status, _) = send(&c, &gw, "GET", &format!("/e{i}"), None).await;
        if status == 500 {
            fives += 1;
        }
    }
    assert_eq!(fives, 3, "b answered 500 three times in a row, then was ejected");
    assert_eq!(b.count(), 3);
    gw.wait_metric(
        &format!(
            "tenantgate_upstream_ejections_total{{pool=\"p\",upstream=\"{}\"}}",
            b.addr
        ),
        1.0,
    )
    .await;
    let pool = pool_state(&gw).await;
    let ub = upstream_of(&pool, &b);
    assert_eq!(ub["state"], "ejected", "{pool}");
    assert_eq!(ub["ejections"], 1);

    // Recovered, and back after the ejection time.
    b.set(Mode::Answer);
    wait_healthy(&gw, &b, true).await;
    for i in 0..6 {
        assert_eq!(send(&c, &gw, "GET", &format!("/r{i}"), None).await.0, 200);
    }
    assert!(b.count() >= 5, "b takes requests again");

    // Resets count as failures too (no retry here: retries = 0).
    b.set(Mode::Reset);
    let mut bad = 0;
    for i in 0..12 {
        if send(&c, &gw, "GET", &format!("/z{i}"), None).await.0 == 502 {
            bad += 1;
        }
    }
    assert_eq!(bad, 3, "three resets, then b was ejected again");
    let ub = upstream_of(&pool_state(&gw).await, &b).clone();
    assert_eq!(ub["ejections"], 2);
    assert!(
        ub["ejected_for_ms"].as_u64().unwrap_or(0) > 1500,
        "the second ejection in a row lasts longer: {ub}"
    );

    // The last upstream of a pool is never ejected: its answers pass.
    solo.set(Mode::Error);
    for _ in 0..6 {
        let (status, body) = c
            .get(format!("http://{}/", gw.http))
            .header("host", "s.example")
            .send()
            .await
            .map(|r| (r.status().as_u16(), ()))
            .expect("sent");
        assert_eq!((status, body), (500, ()));
    }
    assert_eq!(solo.count(), 6);
}

#[tokio::test]
async fn a_pool_whose_upstreams_all_fail_answers_503_at_once_and_recovers() {
    let mut a = Flaky::start("a").await;
    let b = Flaky::start("b").await;
    let gw = Gateway::start(&config(&[&a, &b], CHECKS)).await;
    let c = client();
    wait_healthy(&gw, &a, true).await;
    // a dies (connects refused), b hangs on everything: requests would wait
    // for the 20 s read timeout.
    a.die();
    b.set(Mode::Hang);
    b.set_health(Mode::Hang, 0);
    wait_healthy(&gw, &a, false).await;
    wait_healthy(&gw, &b, false).await;
    let before = b.count();
    for _ in 0..5 {
        let answer = tokio::time::timeout(Duration::from_secs(3), send(&c, &gw, "GET", "/", None)).await;
        let (status, body) = answer.expect("answered without waiting for a backend");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("503"), "{body}");
    }
    assert_eq!(b.count(), before, "nothing was sent to a hanging upstream");
    gw.wait_metric("tenantgate_requests_total{status_class=\"5xx\",tenant=\"t\"}", 5.0)
        .await;

    // a comes back on its port: it passes its checks and serves again.
    a.revive().await;
    wait_healthy(&gw, &a, true).await;
    let (status, body) = send(&c, &gw, "GET", "/back", None).await;
    assert_eq!((status, body.as_str()), (200, "a GET /back"));
}

#[tokio::test]
async fn a_reset_get_is_retried_on_another_upstream_but_a_post_whose_body_arrived_is_not() {
    let a = Flaky::start("a").await;
    let b = Flaky::start("b").await;
    // Outlier ejection off, so the resetting upstream keeps being picked.
    let gw = Gateway::start(&config(&[&a, &b], "[pools.p.outlier]\nconsecutive_failures = 0\n")).await;
    let c = client();
    a.set(Mode::Reset);
    for i in 0..10 {
        let (status, body) = send(&c, &gw, "GET", &format!("/g{i}"), None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("b "), "{body}");
    }
    let reset_gets = a.seen().iter().filter(|s| s.starts_with("GET /g")).count();
    assert!(reset_gets >= 3, "a got (and reset) some GETs: {reset_gets}");
    gw.wait_metric("tenantgate_upstream_retries_total{pool=\"p\"}", reset_gets as f64)
        .await;

    let mut refused = 0;
    for i in 0..10 {
        let path = format!("/p{i}");
        let (status, _) = send(&c, &gw, "POST", &path, Some("payload")).await;
        let at_a = a.seen().iter().filter(|s| **s == format!("POST {path}")).count();
        let at_b = b.seen().iter().filter(|s| **s == format!("POST {path}")).count();
        match status {
            200 => assert_eq!((at_a, at_b), (0, 1), "{path}"),
            502 => {
                refused += 1;
                assert_eq!(
                    (at_a, at_b),
                    (1, 0),
                    "{path}: the body reached a, which reset: never sent again"
                );
            }
            s => panic!("{path}: {s}"),
        }
    }
    assert!(refused >= 3, "some POSTs went to a: {refused}");
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_an_outage() {
    let a = Flaky::start("a").await;
    let b = Flaky::start("b").await;
    let extra = "retries = 1\nretry_budget_percent = 20\nretry_min_per_second = 0\n[pools.p.outlier]\nconsecutive_failures = 0\n";
    let gw = Gateway::start(&config(&[&a, &b], extra)).await;
    let c = client();
    a.set(Mode::Reset);
    let n = 60;
    let (mut ok, mut failed) = (0, 0);
    for i in 0..n {
        match send(&c, &gw, "GET", &format!("/b{i}"), None).await.0 {
            200 => ok += 1,
            502 => failed += 1,
            s => panic!("{s}"),
        }
    }
    let retries = gw.metric("tenantgate_upstream_retries_total{pool=\"p\"}").await;
    let refused = gw
        .metric("tenantgate_upstream_retry_budget_exhausted_total{pool=\"p\"}")
        .await;
    assert!(retries > 0.0, "some retries were granted");
    assert!(
        retries <= f64::from(n) * 0.2 + 1.0,
        "at most 20 % of {n} requests: {retries}"
    );
    assert_eq!(failed as f64, refused, "each refused retry is a 502");
    assert_eq!(ok + failed, n);
    assert!(failed > 0, "the budget ran out during the outage");
}

#[tokio::test]
async fn hostname_upstreams_are_resolved_in_the_background_and_follow_dns() {
    // challtestsrv: a real DNS server answering A queries with 127.0.0.1
    // unless told otherwise.
    let dns = common::pebble::Pebble::start(common::free_port(), common::free_port(), 3600).await;
    let a = Flaky::start("a").await;
    // b on the same port at another loopback address.
    let b = Flaky::start_at("b", format!("127.0.0.2:{}", a.addr.port()).parse().expect("addr")).await;
    let template = format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
upstream_nameservers = ["{dns}"]
upstream_dns_min_ttl_ms = 100
upstream_dns_max_ttl_ms = 300

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{ops}"

[pools.p]
upstreams = ["backend.internal:{port}"]

[[tenants]]
id = "t"
domains = ["t.example"]
pool = "p"
"#,
        dns = dns.dns_addr(),
        ops = hash_hex(OPS),
        port = a.addr.port()
    );
    let gw = Gateway::start(&template).await;
    let c = client();
    let answered_by = |who: &'static str| {
        let (gw, c) = (&gw, &c);
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (status, body) = send(c, gw, "GET", "/who", None).await;
                if status == 200 && body.starts_with(&format!("{who} ")) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "never answered by {who}: {status} {body}\n{}",
                    gw.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    answered_by("a").await;
    let pool = pool_state(&gw).await;
    assert_eq!(
        pool["names"][0],
        format!("backend.internal:{}", a.addr.port()),
        "{pool}"
    );
    assert_eq!(pool["upstreams"][0]["address"], a.addr.to_string(), "{pool}");
    assert_eq!(
        pool["upstreams"][0]["name"],
        format!("backend.internal:{}", a.addr.port())
    );

    // The record moves: so do requests, within the TTL ceiling.
    dns.add_a_record("backend.internal", "127.0.0.2").await;
    answered_by("b").await;
    for _ in 0..5 {
        let (status, body) = send(&c, &gw, "GET", "/who", None).await;
        assert_eq!((status, body.as_str()), (200, "b GET /who"));
    }
    let pool = pool_state(&gw).await;
    let addrs: Vec<&str> = pool["upstreams"]
        .as_array()
        .map_or(vec![], |l| l.iter().filter_map(|u| u["address"].as_str()).collect());
    assert_eq!(addrs, [b.addr.to_string().as_str()], "the old address left the pool");

    // The DNS server goes away: lookups fail (logged), and the last good
    // addresses keep serving.
    drop(dns);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw.log().contains("lookup failed") {
        assert!(Instant::now() < deadline, "no failed lookup logged:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = send(&c, &gw, "GET", "/who", None).await;
    assert_eq!((status, body.as_str()), (200, "b GET /who"));
}

#[tokio::test]
async fn without_checks_a_dead_backend_costs_one_trial_a_second_and_recovers_within_seconds() {
    let mut a = Flaky::start("a").await;
    let gw = Gateway::start(&config(&[&a], "")).await;
    let c = client();
    assert_eq!(send(&c, &gw, "GET", "/", None).await.0, 200);
    a.die();
    // The first request finds it refusing (502) and marks it down for
    // upstream_down_ms (10 s); then one trial a second, 503 for the rest.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(send(&c, &gw, "GET", "/", None).await.0);
    }
    assert_eq!(statuses[0], 502, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 502 || *s == 503), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 503).count() >= 15, "{statuses:?}");
    a.revive().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = send(&c, &gw, "GET", "/again", None).await;
        if status == 200 {
            assert_eq!(body, "a GET /again");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back within 5 s of the backend (mark-down is 10 s): {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
