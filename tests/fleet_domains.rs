//! Fleet mode for the domain lifecycle: real gateway processes sharing one
//! real `redis-server`, a real DNS server (pebble-challtestsrv) and a real
//! webhook receiver. A claim made on one replica is seen and acted on by
//! every replica; one replica (the checker lease holder) runs the checks;
//! every replica serves the same event log; each event reaches a webhook
//! once; a killed checker hands over; with Redis down the replicas keep
//! serving what they know and the admin API says why changes are refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pebble::Pebble;
use common::redis_server::Redis;
use common::{backend, Gateway};
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;
use tenantgate::demo::EchoBackend;

const OPS: &str = "ops-secret-0123456789";
const A: &str = "tenant-a-secret-0123456789";
const B: &str = "tenant-b-secret-0123456789";
const HOOK_SECRET: &str = "webhook-secret-0123456789";

fn config(redis: &str, dns: &Pebble, a: &EchoBackend, b: &EchoBackend, extra: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"

[store]
redis_url = "{redis}"
timeout_ms = 200
lease_secs = 2

[domains]
nameservers = ["{dns}"]
recheck_min_secs = 1
recheck_max_secs = 2
{extra}

[pools.a]
upstreams = ["{a}"]

[pools.b]
upstreams = ["{b}"]

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{ops}"

[[admin.tokens]]
name = "a-admin"
scope = "tenant:a"
sha256 = "{ta}"

[[admin.tokens]]
name = "b-admin"
scope = "tenant:b"
sha256 = "{tb}"
"#,
        dns = dns.dns_addr(),
        a = a.addr,
        b = b.addr,
        ops = hash_hex(OPS),
        ta = hash_hex(A),
        tb = hash_hex(B),
    )
}

struct Fleet {
    replicas: Vec<Gateway>,
    dns: Pebble,
    redis: Redis,
    a_pool: EchoBackend,
    b_pool: EchoBackend,
}

async fn fleet(n: usize, extra: &str) -> Fleet {
    let redis = Redis::start();
    let dns = Pebble::start(common::free_port(), common::free_port(), 3600).await;
    let (a_pool, b_pool) = (backend("a").await, backend("b").await);
    let template = config(&redis.url(), &dns, &a_pool, &b_pool, extra);
    let mut replicas = Vec::new();
    for _ in 0..n {
        let gw = Gateway::start(&template).await;
        gw.wait_metric("tenantgate_registry_store_up", 1.0).await;
        gw.wait_metric("tenantgate_domain_store_up", 1.0).await;
        replicas.push(gw);
    }
    for (id, pool) in [("a", "a"), ("b", "b")] {
        let r = replicas[0]
            .admin_call(
                "PUT",
                &format!("/v1/tenants/{id}"),
                Some(OPS),
                Some(&json!({"pool": pool})),
                &[],
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.json);
    }
    // Every replica has both tenants.
    for gw in &replicas {
        wait_for(gw, "tenant b", || async {
            gw.admin_call("GET", "/v1/tenants/b", Some(OPS), None, &[]).await.status == 200
        })
        .await;
    }
    Fleet {
        replicas,
        dns,
        redis,
        a_pool,
        b_pool,
    }
}

/// Polls `ok` until it holds (at most 15 s, then fails naming `what`).
async fn wait_for<F, Fut>(gw: &Gateway, what: &str, ok: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok().await {
        assert!(Instant::now() < deadline, "{what}: never happened; log:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(gw: &Gateway, method: &str, path: &str, token: &str) -> common::AdminResponse {
    gw.admin_call(method, path, Some(token), None, &[]).await
}

/// Every event `gw` serves after 0, as (seq, type, tenant, name).
async fn events(gw: &Gateway) -> Vec<(u64, String, String, String)> {
    let r = call(gw, "GET", "/v1/events?after=0&limit=1000", OPS).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    r.json["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (e["seq"].as_u64().unwrap_or(0), s("type"), s("tenant"), s("name"))
        })
        .collect()
}

/// The ids and types of the events `gw` serves as server-sent events.
async fn sse(gw: &Gateway) -> Vec<(u64, String)> {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v1/events?after=0&limit=1000&wait=0", gw.admin))
        .bearer_auth(OPS)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sse");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("sse body");
    let mut out = Vec::new();
    let mut id = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse::<u64>().ok();
        } else if let (Some(kind), Some(i)) = (line.strip_prefix("event: "), id) {
            out.push((i, kind.to_string()));
        }
    }
    out
}

fn count(events: &[(u64, String, String, String)], kind: &str, tenant: &str, name: &str) -> usize {
    events
        .iter()
        .filter(|(_, k, t, n)| k == kind && t == tenant && n == name)
        .count()
}

/// The replica holding the checker lease (exactly one).
async fn checker(replicas: &[&Gateway]) -> usize {
    let mut holders = Vec::new();
    for (i, gw) in replicas.iter().enumerate() {
        if gw.metric("tenantgate_domain_checker").await == 1.0 {
            holders.push(i);
        }
    }
    assert!(holders.len() <= 1, "more than one checker: {holders:?}");
    holders.first().copied().unwrap_or(usize::MAX)
}

/// A webhook receiver: 503 to the first `fail` POSTs, then 200; keeps
/// (event id, status, signature ok) of each.
type Seen = Arc<Mutex<Vec<(u64, u16, bool)>>>;

async fn receiver(fail: usize) -> (std::net::SocketAddr, Seen) {
    use hmac::{Hmac, Mac};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let Ok(n) = conn.read(&mut chunk).await else {
                    break (String::new(), String::new());
                };
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = header(head, "content-length").parse().unwrap_or(0);
                    if body.len() >= len {
                        break (head.to_string(), body.to_string());
                    }
                }
            };
            let id: u64 = header(&head, "x-tenantgate-event-id").parse().unwrap_or(0);
            let ts = header(&head, "x-tenantgate-timestamp");
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("hmac");
            mac.update(format!("{ts}.{body}").as_bytes());
            let want = format!(
                "sha256={}",
                mac.finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let signed = header(&head, "x-tenantgate-signature") == want;
            let status = {
                let mut all = kept.lock().expect("lock");
                let status = if all.len() < fail { 503 } else { 200 };
                all.push((id, status, signed));
                status
            };
            let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = conn.write_all(resp.as_bytes()).await;
        }
    });
    (addr, seen)
}

fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Waits until the domain's state, as `token` sees it on `gw`, is `state`.
async fn wait_state(gw: &Gateway, name: &str, token: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = call(gw, "GET", &format!("/v1/domains/{name}"), token).await;
        if r.json["state"] == state {
            return r.json;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {state}: {:?}\n{}",
            r.json,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_squatter_fails_on_every_replica_and_every_replica_serves_the_same_events_and_one_delivery_each() {
    let (hook, seen) = receiver(2).await;
    let extra =
        format!("\n[[webhooks]]\nurl = \"http://{hook}/h\"\nsecret = \"{HOOK_SECRET}\"\nevents = [\"domain.*\"]\n");
    let f = fleet(3, &extra).await;
    let (r1, r2, r3) = (&f.replicas[0], &f.replicas[1], &f.replicas[2]);
    let name = "app.b.example";

    // Tenant a's token claims b's name on replica 1.
    let r = call(r1, "PUT", &format!("/v1/tenants/a/domains/{name}"), A).await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    let claimed = Instant::now();
    let a_token = r.json["token"].as_str().expect("token").to_string();
    wait_state(r3, name, OPS, "pending").await;
    eprintln!("claim on replica 1 to pending on replica 3: {:?}", claimed.elapsed());
    // Every replica knows the claim (same token) and refuses the name.
    for gw in [r1, r2, r3] {
        let v = wait_state(gw, name, OPS, "pending").await;
        assert_eq!(v["claims"][0]["token"], a_token.as_str(), "{v:?}");
        assert_eq!(gw.routed(name).await.0, 421);
    }

    // b claims it on replica 2 and proves it with its TXT record.
    let r = call(r2, "PUT", &format!("/v1/tenants/b/domains/{name}"), B).await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    let b_token = r.json["token"].as_str().expect("token").to_string();
    assert_ne!(a_token, b_token);
    f.dns.set_txt(&format!("_tenantgate-challenge.{name}"), &b_token).await;
    let r = call(r2, "POST", &format!("/v1/domains/{name}/verify"), B).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["results"][0]["state"], "active", "{:?}", r.json);

    // b has it on every replica; a's claim failed on every replica.
    for gw in [r1, r2, r3] {
        wait_for(gw, "routes to b", || async {
            gw.routed(name).await.1.as_deref() == Some("b")
        })
        .await;
        let v = wait_state(gw, name, A, "failed").await;
        assert!(
            v["claims"][0]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("another tenant"),
            "{v:?}"
        );
    }
    // a's token in DNS now changes nothing, on any replica.
    f.dns.set_txt(&format!("_tenantgate-challenge.{name}"), &a_token).await;
    for gw in [r1, r2, r3] {
        let r = call(gw, "POST", &format!("/v1/domains/{name}/verify"), A).await;
        assert_eq!(r.status, 404, "{:?}", r.json);
        for _ in 0..3 {
            assert_eq!(gw.routed(name).await.1.as_deref(), Some("b"));
        }
    }
    assert_eq!(f.a_pool.count(), 0, "the squatter never receives a request");
    assert!(f.b_pool.count() >= 9);

    // A last event, so that everything before it is in the log and sent.
    let r = call(r3, "PUT", "/v1/tenants/a/domains/last.a-owned.example", A).await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    let expected = [
        ("tenant.created", "a", ""),
        ("tenant.created", "b", ""),
        ("domain.pending", "a", name),
        ("domain.pending", "b", name),
        ("domain.verified", "b", name),
        ("domain.active", "b", name),
        ("domain.failed", "a", name),
        ("domain.pending", "a", "last.a-owned.example"),
    ];
    // Events reach the log shortly after the change they tell of.
    wait_for(r1, "every event on replica 1", || async {
        let log = events(r1).await;
        expected.iter().all(|(k, t, n)| count(&log, k, t, n) >= 1)
    })
    .await;
    let log1 = events(r1).await;
    // The same sequence from every replica (each reads up to the same point).
    for gw in [r2, r3] {
        wait_for(gw, "the same log", || async { events(gw).await.len() >= log1.len() }).await;
        let other = events(gw).await;
        assert_eq!(other[..log1.len()], log1[..], "replicas disagree on the event log");
    }
    // The same as server-sent events, from another replica.
    let streamed = sse(r2).await;
    let want: Vec<(u64, String)> = log1.iter().map(|e| (e.0, e.1.clone())).collect();
    assert_eq!(streamed[..want.len()], want[..], "SSE from replica 2 differs");
    let seqs: Vec<u64> = log1.iter().map(|e| e.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ordered ids: {seqs:?}");
    // Each change is one event across the fleet, not one per replica.
    for (kind, tenant, n) in expected {
        assert_eq!(count(&log1, kind, tenant, n), 1, "{kind} {tenant} {n}: {log1:?}");
    }

    // The webhook got each domain event once (after its first two 503s,
    // retried), signed.
    let wanted: BTreeSet<u64> = log1
        .iter()
        .filter(|e| e.1.starts_with("domain."))
        .map(|e| e.0)
        .collect();
    let last = *wanted.iter().max().expect("events");
    wait_for(r1, "the last delivery", || async {
        seen.lock()
            .expect("lock")
            .iter()
            .any(|(id, s, _)| *id == last && *s == 200)
    })
    .await;
    let got = seen.lock().expect("lock").clone();
    assert!(got.iter().all(|(_, _, signed)| *signed), "{got:?}");
    assert_eq!(got.iter().filter(|(_, s, _)| *s == 503).count(), 2);
    let mut delivered: BTreeMap<u64, usize> = BTreeMap::new();
    for (id, s, _) in &got {
        if *s == 200 {
            *delivered.entry(*id).or_default() += 1;
        }
    }
    assert_eq!(delivered.keys().copied().collect::<BTreeSet<_>>(), wanted, "{got:?}");
    assert!(
        delivered.values().all(|n| *n == 1),
        "an event delivered more than once: {delivered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_checks_each_claim_and_a_checker_killed_mid_check_hands_over() {
    // The HTTP proof too, so that a check can be held in flight: the name
    // resolves to 127.0.0.2, where nothing listens (refused at once) until
    // the test listens there without answering.
    let mut f = fleet(3, "methods = [\"txt\", \"http\"]\ndns_timeout_ms = 5000").await;
    let name = "shop.a-owned.example";
    let txt = format!("_tenantgate-challenge.{name}");
    f.dns.add_a_record(name, "127.0.0.2").await;
    let r = call(&f.replicas[1], "PUT", &format!("/v1/tenants/a/domains/{name}"), A).await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    let token = r.json["token"].as_str().expect("token").to_string();

    // A few scheduled checks run; each is one TXT query, by one replica.
    let all: Vec<&Gateway> = f.replicas.iter().collect();
    wait_for(&f.replicas[0], "four checks", || async {
        let mut n = 0.0;
        for gw in &all {
            n += gw.metric("tenantgate_domain_checks_total").await;
        }
        n >= 4.0
    })
    .await;
    let holder = checker(&all).await;
    assert!(holder < 3, "nobody holds the checker lease");
    // A stable reading (no check started or finished meanwhile): the
    // claim's attempts, the checks each replica ran and the DNS server's
    // TXT queries all agree, and only the lease holder checked.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempts = || async {
            wait_state(&f.replicas[2], name, OPS, "pending").await["claims"][0]["attempts"]
                .as_u64()
                .unwrap_or(0)
        };
        let started = || async {
            let mut per = Vec::new();
            for gw in &all {
                per.push(gw.metric("tenantgate_domain_checks_total").await as u64);
            }
            per
        };
        let (before, m1) = (attempts().await, started().await);
        let queries = f.dns.dns_queries(&txt).await;
        let (m2, after) = (started().await, attempts().await);
        if before == after && m1 == m2 && m1.iter().sum::<u64>() == after {
            assert_eq!(queries, after as usize, "one TXT query per check");
            for (i, n) in m1.iter().enumerate() {
                if i != holder {
                    assert_eq!(*n, 0, "replica {i} checked too: {m1:?}");
                }
            }
            break;
        }
        assert!(Instant::now() < deadline, "no stable reading");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Hold the checker's next HTTP proof fetch, and kill it (SIGKILL) as
    // soon as that check has started.
    let silent = tokio::net::TcpListener::bind(("127.0.0.2", f.replicas[holder].http.port()))
        .await
        .expect("bind 127.0.0.2");
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let n = f.replicas[holder].metric("tenantgate_domain_checks_total").await;
    wait_for(&f.replicas[holder], "the next check", || async {
        f.replicas[holder].metric("tenantgate_domain_checks_total").await > n
    })
    .await;
    let mut dead = f.replicas.remove(holder);
    dead.signal("KILL");
    assert!(dead.wait_exit(Duration::from_secs(5)).await.is_some());
    held.abort();
    // The proof appears; another replica takes the lease over and proves
    // the claim.
    f.dns.set_txt(&txt, &token).await;
    let rest: Vec<&Gateway> = f.replicas.iter().collect();
    for gw in &rest {
        wait_for(gw, "the name routes to a", || async {
            gw.routed(name).await.1.as_deref() == Some("a")
        })
        .await;
    }
    wait_for(rest[0], "a new checker", || async { checker(&rest).await < 2 }).await;
    let next = checker(&rest).await;
    assert!(
        rest[next].log().contains("this replica now runs the domain checks"),
        "{}",
        rest[next].log()
    );
    wait_for(rest[0], "the active event", || async {
        count(&events(rest[0]).await, "domain.active", "a", name) == 1
    })
    .await;
    let log = events(rest[0]).await;
    assert_eq!(count(&log, "domain.verified", "a", name), 1, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_replicas_serve_what_they_know_and_the_api_says_the_store_is_unreachable() {
    let mut f = fleet(2, "").await;
    let (r1, r2) = (&f.replicas[0], &f.replicas[1]);
    let r = call(r1, "PUT", "/v1/tenants/b/domains/live.b-owned.example", OPS).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let r = call(r1, "PUT", "/v1/tenants/a/domains/wait.a-owned.example", A).await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    let token = r.json["token"].as_str().expect("token").to_string();
    for gw in [r1, r2] {
        wait_state(gw, "wait.a-owned.example", OPS, "pending").await;
        wait_for(gw, "live routes", || async {
            gw.routed("live.b-owned.example").await.1.as_deref() == Some("b")
        })
        .await;
    }

    f.redis.kill();
    for gw in [r1, r2] {
        wait_for(gw, "the store marked down", || async {
            gw.metric("tenantgate_domain_store_up").await == 0.0 && gw.metric("tenantgate_domain_checker").await == 0.0
        })
        .await;
        // Active names keep routing, pending ones stay refused.
        assert_eq!(gw.routed("live.b-owned.example").await.1.as_deref(), Some("b"));
        assert_eq!(gw.routed("wait.a-owned.example").await.0, 421);
        // The API shows the last-known state and says why.
        let v = wait_state(gw, "wait.a-owned.example", A, "pending").await;
        assert_eq!(v["store"]["reachable"], false, "{v:?}");
        assert!(v["claims"][0]["token"] == token.as_str());
        // Changes are refused, plainly.
        let r = call(gw, "PUT", "/v1/tenants/a/domains/new.a-owned.example", A).await;
        assert_eq!(r.status, 503, "{:?}", r.json);
        assert_eq!(
            r.json["type"].as_str().map(|t| t.ends_with("store-unavailable")),
            Some(true),
            "{:?}",
            r.json
        );
        assert!(
            r.json["detail"].as_str().unwrap_or("").contains("Redis"),
            "{:?}",
            r.json
        );
        let r = call(gw, "POST", "/v1/domains/wait.a-owned.example/verify", A).await;
        assert_eq!(r.status, 503, "{:?}", r.json);
        let r = call(gw, "GET", "/v1/events?after=0", OPS).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        assert_eq!(r.json["store"]["reachable"], false, "{:?}", r.json);
        assert!(
            !r.json["events"].as_array().is_none_or(Vec::is_empty),
            "the copy is served"
        );
    }

    // Redis comes back (with its data): nothing was lost, checks resume.
    f.redis.restart();
    f.dns
        .set_txt("_tenantgate-challenge.wait.a-owned.example", &token)
        .await;
    for gw in [r1, r2] {
        wait_for(gw, "the proven name routes", || async {
            gw.routed("wait.a-owned.example").await.1.as_deref() == Some("a")
        })
        .await;
    }
    // Events reach the log shortly after the change they tell of.
    wait_for(r2, "the active event", || async {
        count(&events(r2).await, "domain.active", "a", "wait.a-owned.example") == 1
    })
    .await;
    let log = events(r2).await;
    assert_eq!(count(&log, "domain.pending", "a", "wait.a-owned.example"), 1, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moved_and_withdrawn_names_are_the_same_on_every_replica() {
    let f = fleet(2, "targets = [\"127.0.0.1\"]\nreverify_secs = 1\nmoved_grace_days = 0").await;
    let (r1, r2) = (&f.replicas[0], &f.replicas[1]);
    let name = "gone.b-owned.example";
    let r = call(r1, "PUT", &format!("/v1/tenants/b/domains/{name}"), OPS).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    // It points elsewhere: moved on both replicas (found by the checker).
    f.dns.add_a_record(name, "10.9.9.9").await;
    for gw in [r1, r2] {
        wait_state(gw, name, OPS, "moved").await;
        assert_eq!(gw.routed(name).await.1.as_deref(), Some("b"), "still routed");
    }
    // Back: active on both.
    f.dns.clear_a_record(name).await;
    for gw in [r1, r2] {
        wait_state(gw, name, OPS, "active").await;
    }
    let mine = |log: &[(u64, String, String, String)]| -> Vec<String> {
        log.iter().filter(|e| e.3 == name).map(|e| e.1.clone()).collect()
    };
    wait_for(r1, "the second active event", || async {
        mine(&events(r1).await).len() >= 3
    })
    .await;
    let log = events(r1).await;
    assert_eq!(
        mine(&log),
        ["domain.active", "domain.moved", "domain.active"],
        "{log:?}"
    );

    // A claim made on one replica and withdrawn on the other is gone on both.
    let claim = "later.a-owned.example";
    let r = call(r1, "PUT", &format!("/v1/tenants/a/domains/{claim}"), A).await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    wait_state(r2, claim, A, "pending").await;
    let r = call(r2, "DELETE", &format!("/v1/tenants/a/domains/{claim}"), A).await;
    assert_eq!(r.status, 204, "{:?}", r.json);
    for gw in [r1, r2] {
        wait_for(gw, "the claim gone", || async {
            call(gw, "GET", &format!("/v1/domains/{claim}"), A).await.status == 404
        })
        .await;
    }
    for gw in [r1, r2] {
        wait_for(gw, "the removal event", || async {
            count(&events(gw).await, "domain.removed", "a", claim) == 1
        })
        .await;
    }
    let log2 = events(r2).await;
    assert_eq!(log2[..log.len()], log[..], "replicas disagree on the event log");
    assert_eq!(events(r1).await, log2, "replicas disagree on the event log");
}
