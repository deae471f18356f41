//! Tenant cohorts moved between pools: a stable share promoted step by step
//! and rolled back with one call, each step a registry version; a pinned
//! tenant stays; a cohort whose pool starts answering 5xx under load rolls
//! itself back while no other tenant sees a failed request; a tenant moved
//! between pools and back under load fails no request, and a request in
//! flight finishes on the pool it started on. Real backends and the real
//! binary throughout; where a test reads which pool serves each tenant, it
//! asks over HTTP/1.1 and over HTTP/2 with TLS.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::flaky::{Flaky, Mode};
use common::Gateway;
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;
use tenantgate::config::rollouts::selected;

const OPS: &str = "ops-secret-0123456789";

fn config(v1: &Flaky, v2: &Flaky, rollout: &str) -> String {
    config_pools(&[("v1", v1.addr), ("v2", v2.addr)], rollout)
}

/// A gateway (HTTP, HTTPS from the internal CA, admin) with `pools`, one
/// upstream each, and `extra` after them.
fn config_pools(pools: &[(&str, std::net::SocketAddr)], extra: &str) -> String {
    let pools: String = pools
        .iter()
        .map(|(name, addr)| format!("[pools.{name}]\nupstreams = [\"{addr}\"]\n"))
        .collect();
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
watch_config = false

[tls]
issuer = "internal"
redirect_http = false

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{}"

{pools}{extra}
"#,
        hash_hex(OPS),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// Status and body of `GET http://<host>/`.
async fn get(c: &reqwest::Client, gw: &Gateway, host: &str) -> (u16, String) {
    match c.get(format!("http://{}/", gw.http)).header("host", host).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<&Value>) -> common::AdminResponse {
    gw.admin_call(method, path, Some(OPS), body, &[]).await
}

/// Creates tenants `t0..tN` on pool `v1` through the admin API.
async fn tenants(gw: &Gateway, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let changes: Vec<Value> = ids
        .iter()
        .map(|id| json!({"op": "put", "tenant": {"id": id, "domains": [format!("{id}.example")], "pool": "v1"}}))
        .collect();
    let r = admin(gw, "POST", "/v1/changes", Some(&json!({ "changes": changes }))).await;
    assert_eq!(r.status, 200, "{}", r.json);
    ids
}

/// Which backend answered each tenant (fails on anything but a 200), over
/// HTTP/1.1 and over HTTP/2 with TLS: both must agree.
async fn backends(gw: &Gateway, ids: &[String]) -> BTreeMap<String, String> {
    let c = client();
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    let hosts: Vec<String> = ids.iter().map(|id| format!("{id}.example")).collect();
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let h2 = common::https_client(&root, &host_refs, gw.https, false);
    let mut out = BTreeMap::new();
    for id in ids {
        let (status, body) = get(&c, gw, &format!("{id}.example")).await;
        assert_eq!(status, 200, "{id}: {body}");
        let backend = body.split(' ').next().unwrap_or_default().to_string();
        let r = h2
            .get(format!("https://{id}.example:{}/", gw.https.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{id} over HTTP/2: {e:?}"));
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{id}");
        assert_eq!(r.status().as_u16(), 200, "{id} over HTTP/2");
        let body2 = r.text().await.unwrap_or_default();
        assert_eq!(
            body2.split(' ').next().unwrap_or_default(),
            backend,
            "{id}: HTTP/2 and HTTP/1.1 agree"
        );
        out.insert(id.clone(), backend);
    }
    out
}

fn expected(ids: &[String], rollout: &str, percent: u8, pinned: &[&str]) -> BTreeMap<String, String> {
    ids.iter()
        .map(|id| {
            let moved = !pinned.contains(&id.as_str()) && selected(rollout, id, percent);
            (id.clone(), if moved { "v2" } else { "v1" }.to_string())
        })
        .collect()
}

/// The detail and every problem of a problem+json answer, as one text.
fn problems(v: &Value) -> String {
    let mut out = v["detail"].as_str().unwrap_or_default().to_string();
    for e in v["errors"].as_array().into_iter().flatten() {
        out.push('\n');
        out.push_str(e["problem"].as_str().unwrap_or_default());
    }
    out
}

async fn version_count(gw: &Gateway) -> usize {
    let r = admin(gw, "GET", "/v1/versions", None).await;
    r.json["versions"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_share_is_promoted_step_by_step_and_rolled_back_with_one_call_each_step_a_version() {
    let (v1, v2) = (Flaky::start("v1").await, Flaky::start("v2").await);
    let rollout =
        "[rollouts.r]\nfrom = \"v1\"\nto = \"v2\"\nsteps = [5, 25, 100]\n[rollouts.r.auto_rollback]\nenabled = false\n";
    let gw = Gateway::start(&config(&v1, &v2, rollout)).await;
    let ids = tenants(&gw, 40).await;
    // One tenant is pinned: exempt from every step.
    let pinned = ids
        .iter()
        .find(|id| selected("r", id, 25))
        .cloned()
        .expect("some tenant falls in 25 %");
    let patched = reqwest::Client::new()
        .patch(format!("http://{}/v1/tenants/{pinned}", gw.admin))
        .bearer_auth(OPS)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"pinned": true}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status().as_u16(), 200);

    let r = admin(&gw, "GET", "/v1/rollouts/r", None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["moved_percent"], 0);
    assert_eq!(r.json["candidates"], 39, "40 tenants of v1, one pinned: {}", r.json);
    assert_eq!(r.json["source"], "main");
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "r", 0, &[]));

    // A preview moves nothing and records nothing.
    let before = version_count(&gw).await;
    let r = admin(&gw, "POST", "/v1/rollouts/r/promote?dry_run=true", None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["applied"], false);
    let five: Vec<&String> = ids.iter().filter(|id| **id != pinned && selected("r", id, 5)).collect();
    assert_eq!(
        r.json["moves"]["counts"]["v2"].as_u64().unwrap_or(0),
        five.len() as u64,
        "{}",
        r.json
    );
    assert_eq!(version_count(&gw).await, before);
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "r", 0, &[]));

    // 5 → 25 → 100: each step moves exactly its share, keeps the earlier
    // members, leaves the pinned tenant, and is a version by "ops".
    for (step, percent) in [5u8, 25, 100].into_iter().enumerate() {
        let r = admin(&gw, "POST", "/v1/rollouts/r/promote", None).await;
        assert_eq!(r.status, 200, "{}", r.json);
        assert_eq!(r.json["moved_percent"], percent);
        assert_eq!(
            backends(&gw, &ids).await,
            expected(&ids, "r", percent, &[&pinned]),
            "at {percent} %"
        );
        assert_eq!(version_count(&gw).await, before + step + 1);
    }
    let r = admin(&gw, "POST", "/v1/rollouts/r/promote", None).await;
    assert_eq!(r.status, 409, "nothing left to promote: {}", r.json);
    let versions = admin(&gw, "GET", "/v1/versions", None).await;
    assert_eq!(versions.json["versions"][0]["who"], "ops");
    assert_eq!(versions.json["versions"][0]["rollouts"], json!(["r"]));

    // One call rolls everyone back.
    let r = admin(&gw, "POST", "/v1/rollouts/r/rollback", None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["state"], "rolled_back");
    assert_eq!(r.json["moved_percent"], 0);
    assert_eq!(r.json["reason"], "rolled back by ops");
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "r", 0, &[]));
    let audit = admin(&gw, "GET", "/v1/audit?limit=50", None).await;
    let text = audit.json.to_string();
    assert!(
        text.contains("/v1/rollouts/r/promote") && text.contains("/v1/rollouts/r/rollback"),
        "{text}"
    );

    // The state lives in rollouts/r.toml now, and survives a restart.
    let file = std::fs::read_to_string(gw.dir().join("rollouts/r.toml")).expect("rollout file");
    assert!(file.contains("rolled_back"), "{file}");
    // Promoting again starts at the first step.
    let r = admin(&gw, "POST", "/v1/rollouts/r/promote?percent=25", None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "r", 25, &[&pinned]));

    // Unpinned, the tenant follows the rollout like the others.
    let unpinned = reqwest::Client::new()
        .patch(format!("http://{}/v1/tenants/{pinned}", gw.admin))
        .bearer_auth(OPS)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"pinned": null}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(unpinned.status().as_u16(), 200);
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "r", 25, &[]));
}

#[tokio::test]
async fn bad_rollouts_are_refused_naming_the_field_and_change_nothing() {
    let (v1, v2) = (Flaky::start("v1").await, Flaky::start("v2").await);
    let gw = Gateway::start(&config(&v1, &v2, "")).await;
    let ids = tenants(&gw, 4).await;
    let cases = [
        (json!({"from": "v1", "to": "nope"}), "pool \"nope\" is not defined"),
        (json!({"from": "v1", "to": "v1"}), "to itself"),
        (json!({"from": "v1", "to": "v2", "percent": 150}), "over 100"),
        (json!({"from": "v1", "to": "v2", "steps": [50, 25]}), "ascending"),
        (
            json!({"from": "v1", "to": "v2", "tenants": ["ghost"]}),
            "does not exist",
        ),
        (json!({"from": "v1", "to": "v2", "state": "paused"}), "unknown state"),
        (json!({"from": "v1", "to": "v2", "bogus": 1}), "bogus"),
    ];
    for (body, needle) in cases {
        let r = admin(&gw, "PUT", "/v1/rollouts/bad", Some(&body)).await;
        assert_eq!(r.status, 422, "{body}: {}", r.json);
        assert!(problems(&r.json).contains(needle), "{body}: {}", r.json);
    }
    assert_eq!(admin(&gw, "GET", "/v1/rollouts/bad", None).await.status, 404);
    // Two rollouts may not take the same tenants: both are named.
    let r = admin(
        &gw,
        "PUT",
        "/v1/rollouts/a",
        Some(&json!({"from": "v1", "to": "v2", "percent": 100})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let r = admin(&gw, "PUT", "/v1/rollouts/b", Some(&json!({"from": "v1", "to": "v2"}))).await;
    assert_eq!(r.status, 422, "{}", r.json);
    let text = problems(&r.json);
    assert!(text.contains("rollouts \"a\" and \"b\" both take"), "{text}");
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "a", 100, &[]));
    // A named list moves only those, and only from its from pool.
    let r = admin(&gw, "DELETE", "/v1/rollouts/a", None).await;
    assert_eq!(r.status, 204);
    let r = admin(
        &gw,
        "PUT",
        "/v1/rollouts/b",
        Some(&json!({"from": "v1", "to": "v2", "tenants": ["t1", "t2"], "percent": 100})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let got = backends(&gw, &ids).await;
    let want: BTreeMap<String, String> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                if id == "t1" || id == "t2" { "v2" } else { "v1" }.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // A listed tenant's pool cannot change under the rollout.
    let moved = reqwest::Client::new()
        .patch(format!("http://{}/v1/tenants/t1", gw.admin))
        .bearer_auth(OPS)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"pool": "v2"}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(moved.status().as_u16(), 422);
    let body: Value = serde_json::from_str(&moved.text().await.unwrap_or_default()).expect("problem");
    assert!(problems(&body).contains("rollout \"b\" lists tenant \"t1\""), "{body}");
}

#[tokio::test]
async fn a_cohort_whose_pool_fails_under_load_rolls_itself_back_and_no_other_tenant_fails() {
    let (v1, v2) = (Flaky::start("v1").await, Flaky::start("v2").await);
    let rollout = "[rollouts.r]\nfrom = \"v1\"\nto = \"v2\"\npercent = 25\n[rollouts.r.auto_rollback]\nwindow_secs = 5\nmargin_percent = 10\nmin_requests = 10\n";
    let gw = Arc::new(Gateway::start(&config(&v1, &v2, rollout)).await);
    let ids = tenants(&gw, 24).await;
    let cohort: Vec<String> = ids.iter().filter(|id| selected("r", id, 25)).cloned().collect();
    assert!(!cohort.is_empty() && cohort.len() < ids.len());
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "r", 25, &[]));

    // Load on every tenant from 4 clients until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for k in 0..4 {
        let (gw, ids, stop) = (gw.clone(), ids.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let mut failed: BTreeMap<String, usize> = BTreeMap::new();
            let mut sent = 0usize;
            let mut i = k;
            while !stop.load(Ordering::Relaxed) {
                let id = &ids[i % ids.len()];
                i += 1;
                sent += 1;
                let (status, _) = get(&c, &gw, &format!("{id}.example")).await;
                if status != 200 {
                    *failed.entry(id.clone()).or_default() += 1;
                }
            }
            (sent, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    v2.set(Mode::Error);
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        let r = admin(&gw, "GET", "/v1/rollouts/r", None).await;
        if r.json["state"] == "rolled_back" || Instant::now() > deadline {
            break r.json;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state["state"], "rolled_back", "{state}\n{}", gw.log());
    assert!(
        state["reason"]
            .as_str()
            .unwrap_or("")
            .contains("automatic rollback at 25 %"),
        "{state}"
    );
    // Once rolled back, the cohort is served by v1 again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for h in load {
        let (s, f) = h.await.expect("load task");
        sent += s;
        for (k, v) in f {
            *failed.entry(k).or_default() += v;
        }
    }
    assert!(sent > 100, "load ran: {sent} requests");
    let outside: Vec<(&String, &usize)> = failed.iter().filter(|(id, _)| !cohort.contains(id)).collect();
    assert!(outside.is_empty(), "tenants outside the cohort failed: {outside:?}");
    assert!(!failed.is_empty(), "the spike reached the cohort");
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "r", 0, &[]));
    assert_eq!(
        gw.metric("tenantgate_rollout_rollbacks_total{rollout=\"r\",trigger=\"auto\"}")
            .await,
        1.0
    );
    assert_eq!(gw.metric("tenantgate_rollout_percent{rollout=\"r\"}").await, 0.0);
    let versions = admin(&gw, "GET", "/v1/versions", None).await;
    assert_eq!(
        versions.json["versions"][0]["who"], "auto-rollback",
        "{}",
        versions.json
    );
    assert!(gw.log().contains("rollout rolled back"));
}

#[tokio::test]
async fn moving_a_tenant_between_pools_and_back_under_load_fails_no_request() {
    let shared = common::backend("shared").await;
    let dedicated = common::backend("dedicated").await;
    let gw = Arc::new(
        Gateway::start(&config_pools(
            &[("shared", shared.addr), ("dedicated", dedicated.addr)],
            "",
        ))
        .await,
    );
    let r = admin(
        &gw,
        "PUT",
        "/v1/tenants/acme",
        Some(&json!({"domains": ["acme.example"], "pool": "shared"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (gw, stop) = (gw.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut bad) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get(&c, &gw, "acme.example").await {
                    (200, _) => ok += 1,
                    other => bad.push(other),
                }
            }
            (ok, bad)
        }));
    }
    // A slow request started on the shared pool finishes there.
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let c = client();
            let r = c
                .get(format!("http://{}/sleep/1500", gw.http))
                .header("host", "acme.example")
                .send()
                .await
                .expect("slow request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let patch = |pool: &'static str| {
        let gw = gw.clone();
        async move {
            let r = reqwest::Client::new()
                .patch(format!("http://{}/v1/tenants/acme", gw.admin))
                .bearer_auth(OPS)
                .header("content-type", "application/merge-patch+json")
                .body(format!(r#"{{"pool": "{pool}"}}"#))
                .send()
                .await
                .expect("patch");
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    let before = (shared.count(), dedicated.count());
    for _ in 0..5 {
        patch("dedicated").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        patch("shared").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (status, body) = slow.await.expect("slow task");
    assert_eq!(status, 200);
    assert_eq!(
        common::Echo::parse(&body).backend(),
        "shared",
        "in flight, it stays on its pool"
    );
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut bad) = (0, Vec::new());
    for h in load {
        let (o, b) = h.await.expect("load task");
        ok += o;
        bad.extend(b);
    }
    assert!(bad.is_empty(), "failed requests while moving: {bad:?}");
    assert!(ok > 50, "load ran: {ok}");
    assert!(
        shared.count() > before.0 && dedicated.count() > before.1,
        "both pools served the tenant"
    );
}

#[tokio::test]
async fn completing_a_rollout_points_the_moved_tenants_at_its_pool_in_one_version() {
    let (v1, v2) = (Flaky::start("v1").await, Flaky::start("v2").await);
    let gw = Gateway::start(&config(&v1, &v2, "")).await;
    let ids = tenants(&gw, 12).await;
    let r = admin(
        &gw,
        "PUT",
        "/v1/rollouts/r",
        Some(&json!({"from": "v1", "to": "v2", "percent": 25})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let before = version_count(&gw).await;
    let r = admin(&gw, "POST", "/v1/rollouts/r/complete", None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let moved: Vec<&String> = ids.iter().filter(|id| selected("r", id, 25)).collect();
    assert_eq!(r.json["count"], moved.len());
    assert_eq!(version_count(&gw).await, before + 1);
    assert_eq!(admin(&gw, "GET", "/v1/rollouts/r", None).await.status, 404);
    // Routing is what it was, now from the tenants' own pools.
    assert_eq!(backends(&gw, &ids).await, expected(&ids, "r", 25, &[]));
    for id in &ids {
        let t = admin(&gw, "GET", &format!("/v1/tenants/{id}"), None).await;
        let want = if moved.contains(&id) { "v2" } else { "v1" };
        assert_eq!(t.json["pool"], want, "{id}");
    }
}
