//! Live reload: file changes and SIGHUP swap the routing with no restart and
//! no failed request; an invalid change leaves the running config untouched.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{backend, Echo, Gateway};
use tenantgate::demo::EchoBackend;

fn config(p: &EchoBackend, extra_tenants: &[&str], watch: bool) -> String {
    let mut s = format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
base_domains = ["saas.example"]
watch_config = {watch}

[pools.p]
upstreams = ["{}"]

[[tenants]]
id = "stable"
subdomain = "stable"
domains = ["stable.example.com"]
pool = "p"
"#,
        p.addr
    );
    for t in extra_tenants {
        s.push_str(&format!(
            "\n[[tenants]]\nid = \"{t}\"\ndomains = [\"{t}.example.com\"]\npool = \"p\"\n"
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_tenants_under_load_with_zero_failed_requests() {
    let p = backend("p").await;
    let gw = Arc::new(Gateway::start(&config(&p, &["old"], true)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            // Bounded: at most 20 s, however the reloads go.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                // Some requests stay in flight across a swap.
                let path = if worker == 0 { "/sleep/30" } else { "/" };
                let host = if worker % 2 == 0 {
                    "stable.saas.example"
                } else {
                    "stable.example.com"
                };
                let (status, body) = gw.get(host, path).await;
                if status == 200 && Echo::parse(&body).header("x-tenant-id").as_deref() == Some("stable") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for round in 0..3 {
        gw.write_config(&config(&p, &["new"], true));
        gw.wait_status("new.example.com", 200).await;
        gw.wait_status("old.example.com", 421).await;
        gw.write_config(&config(&p, &["old"], true));
        gw.wait_status("old.example.com", 200).await;
        gw.wait_status("new.example.com", 421).await;
        assert!(gw.metric("tenantgate_config_generation").await >= f64::from(2 * round + 3));
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed across reloads", ok + failed);
    assert!(ok > 50, "the load loop ran ({ok} requests)");
    assert_eq!(
        gw.metric("tenantgate_config_reloads_total{result=\"failure\"}").await,
        0.0
    );
}

#[tokio::test]
async fn invalid_reload_keeps_the_old_routing_and_is_counted() {
    let p = backend("p").await;
    let gw = Gateway::start(&config(&p, &["old"], true)).await;
    assert_eq!(gw.get("old.example.com", "/").await.0, 200);

    // Two tenants claim one domain, and one points at a missing pool.
    let mut bad = config(&p, &["old"], true);
    bad.push_str("\n[[tenants]]\nid = \"thief\"\ndomains = [\"OLD.example.com.\"]\npool = \"p\"\n");
    bad.push_str("\n[[tenants]]\nid = \"lost\"\ndomains = [\"lost.example.com\"]\npool = \"nope\"\n");
    gw.write_config(&bad);
    gw.wait_metric("tenantgate_config_reloads_total{result=\"failure\"}", 1.0)
        .await;
    assert_eq!(gw.metric("tenantgate_config_last_reload_success").await, 0.0);
    assert_eq!(gw.metric("tenantgate_config_generation").await, 1.0);
    let (status, body) = gw.get("old.example.com", "/").await;
    assert_eq!(status, 200);
    assert_eq!(Echo::parse(&body).header("x-tenant-id").as_deref(), Some("old"));
    assert_eq!(gw.get("lost.example.com", "/").await.0, 421);
    let log = gw.log();
    assert!(
        log.contains(r#"domain old.example.com is claimed by tenants "old", "thief""#),
        "{log}"
    );
    assert!(
        log.contains(r#"tenant "lost": tenants[3].pool: pool "nope" is not defined"#),
        "{log}"
    );

    // Refused once, not again and again: the gateway's own reads of the file
    // must not look like edits.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        gw.metric("tenantgate_config_reloads_total{result=\"failure\"}").await,
        1.0,
        "{}",
        gw.log()
    );

    // Putting the running text back is healthy again, with no new generation.
    gw.write_config(&config(&p, &["old"], true));
    gw.wait_metric("tenantgate_config_last_reload_success", 1.0).await;
    assert_eq!(gw.metric("tenantgate_config_generation").await, 1.0);

    // A syntax error is refused the same way.
    gw.write_config("[gateway\nhttp_listen = ");
    gw.wait_metric("tenantgate_config_reloads_total{result=\"failure\"}", 2.0)
        .await;
    assert_eq!(gw.get("old.example.com", "/").await.0, 200);

    // The next valid change applies.
    gw.write_config(&config(&p, &["old", "fresh"], true));
    gw.wait_status("fresh.example.com", 200).await;
    // The gauges are set just after the swap that routes `fresh`.
    gw.wait_metric("tenantgate_config_last_reload_success", 1.0).await;
    gw.wait_metric("tenantgate_config_generation", 2.0).await;
    assert_eq!(gw.metric("tenantgate_config_generation").await, 2.0);
}

#[tokio::test]
async fn sighup_reloads_when_file_watching_is_off() {
    let p = backend("p").await;
    let gw = Gateway::start(&config(&p, &[], false)).await;
    gw.write_config(&config(&p, &["late"], false));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gw.get("late.example.com", "/").await.0,
        421,
        "no reload without a signal"
    );
    gw.signal("HUP");
    gw.wait_status("late.example.com", 200).await;
    assert_eq!(gw.metric("tenantgate_config_generation").await, 2.0);
    assert!(gw.metric("tenantgate_config_last_reload_duration_seconds").await > 0.0);
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let p = backend("p").await;
    let gw = Arc::new(Gateway::start(&config(&p, &["old"], true)).await);
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.get("old.example.com", "/sleep/1500").await })
    };
    // Wait until the slow request is at the backend, then remove its tenant.
    common::wait_requests(&p, 1, "the slow request never arrived").await;
    gw.write_config(&config(&p, &[], true));
    gw.wait_metric("tenantgate_config_generation", 2.0).await;
    assert_eq!(
        gw.get("old.example.com", "/").await.0,
        421,
        "new requests see the new config"
    );
    let (status, body) = slow.await.expect("slow request");
    assert_eq!(status, 200, "the request in flight completes: {body}");
    assert_eq!(Echo::parse(&body).header_all("x-tenant-id"), vec!["old"]);
}
