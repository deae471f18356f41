//! The custom-domain lifecycle against the real binary and a real DNS
//! server (pebble-challtestsrv, whose records each test sets): a tenant's
//! new name is pending until its TXT (or HTTP) proof is found, squatting is
//! refused end to end, the diagnosis names each fix, and the event log
//! tells provisioning systems what happened, by long poll or SSE.

mod common;

use std::time::{Duration, Instant};

use common::pebble::Pebble;
use common::{backend, Gateway};
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;
use tenantgate::demo::EchoBackend;

const OPS: &str = "ops-secret-0123456789";
const A: &str = "tenant-a-secret-0123456789";
const C: &str = "tenant-c-secret-0123456789";

struct Fixture {
    gw: Gateway,
    dns: Pebble,
    a_pool: EchoBackend,
    b_pool: EchoBackend,
}

fn config(dns: &Pebble, a: &EchoBackend, b: &EchoBackend, extra: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"

[domains]
nameservers = ["{dns}"]
recheck_min_secs = 1
recheck_max_secs = 2
targets = ["127.0.0.1"]
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
name = "c-admin"
scope = "tenant:c"
sha256 = "{tc}"
"#,
        dns = dns.dns_addr(),
        a = a.addr,
        b = b.addr,
        ops = hash_hex(OPS),
        ta = hash_hex(A),
        tc = hash_hex(C),
    )
}

async fn start(extra: &str) -> Fixture {
    let dns = Pebble::start(common::free_port(), common::free_port(), 3600).await;
    let (a_pool, b_pool) = (backend("a").await, backend("b").await);
    let gw = Gateway::start(&config(&dns, &a_pool, &b_pool, extra)).await;
    for (id, pool) in [("a", "a"), ("b", "b"), ("c", "b")] {
        let r = gw
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
    Fixture {
        gw,
        dns,
        a_pool,
        b_pool,
    }
}

impl Fixture {
    async fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> common::AdminResponse {
        self.gw.admin_call(method, path, Some(token), body, &[]).await
    }

    /// Waits until `GET /v1/domains/{name}` (as the operator) says `state`.
    async fn wait_state(&self, name: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.call("GET", &format!("/v1/domains/{name}"), OPS, None).await;
            if r.json["state"] == state {
                return r.json;
            }
            assert!(Instant::now() < deadline, "{name} never became {state}: {:?}", r.json);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn events(&self, token: &str, after: u64) -> Vec<Value> {
        let r = self
            .call("GET", &format!("/v1/events?after={after}"), token, None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json["events"].as_array().cloned().unwrap_or_default()
    }
}

fn kinds(events: &[Value], name: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["name"] == name)
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["tenant"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_squat_another_customers_domain() {
    let f = start("").await;
    // Tenant a's token claims b's name before b is provisioned.
    let r = f.call("PUT", "/v1/tenants/a/domains/app.b.example", A, None).await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    assert_eq!(r.json["state"], "pending");
    let token = r.json["token"].as_str().expect("token").to_string();
    assert_eq!(r.json["record"]["name"], "_tenantgate-challenge.app.b.example");
    assert_eq!(r.json["record"]["value"], token.as_str());
    // Pending: it does not route, and the tenant does not have it.
    assert_eq!(f.gw.routed("app.b.example").await.0, 421);
    let t = f.call("GET", "/v1/tenants/a", A, None).await;
    assert_eq!(t.json["domains"], json!([]));
    assert_eq!(t.json["domain_claims"][0]["name"], "app.b.example");

    // b's provisioning (operator) adds the name: trusted, active at once.
    let r = f.call("PUT", "/v1/tenants/b/domains/app.b.example", OPS, None).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(f.gw.routed("app.b.example").await.1.as_deref(), Some("b"));
    // a's claim fails, with the reason, and a never gets a request for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.call("GET", "/v1/domains/app.b.example", A, None).await;
        if r.json["state"] == "failed" {
            assert!(
                r.json["claims"][0]["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("another tenant"),
                "{:?}",
                r.json
            );
            break;
        }
        assert!(Instant::now() < deadline, "a's claim never failed: {:?}", r.json);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.gw.wait_metric("tenantgate_domain_claims{state=\"failed\"}", 1.0)
        .await;
    // Even a's token in DNS now changes nothing: the claim is over.
    f.dns.set_txt("_tenantgate-challenge.app.b.example", &token).await;
    let r = f.call("POST", "/v1/domains/app.b.example/verify", A, None).await;
    assert_eq!(r.status, 404, "a failed claim is not checked again: {:?}", r.json);
    for _ in 0..5 {
        assert_eq!(f.gw.routed("app.b.example").await.1.as_deref(), Some("b"));
    }
    assert_eq!(f.a_pool.count(), 0, "the squatter never receives a request");
    assert!(f.b_pool.count() >= 5);
    let events = f.events(OPS, 0).await;
    let ks = kinds(&events, "app.b.example");
    assert!(ks.contains(&("domain.pending".into(), "a".into())), "{ks:?}");
    assert!(ks.contains(&("domain.active".into(), "b".into())), "{ks:?}");
    assert!(ks.contains(&("domain.failed".into(), "a".into())), "{ks:?}");
    // a's token sees a's events only.
    let mine = f.events(A, 0).await;
    assert!(mine.iter().all(|e| e["tenant"] == "a"), "{mine:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_txt_proof_makes_a_pending_domain_active_and_the_proven_claimant_wins() {
    let f = start("").await;
    let ra = f.call("PUT", "/v1/tenants/a/domains/shop.owned.example", A, None).await;
    let rc = f.call("PUT", "/v1/tenants/c/domains/shop.owned.example", C, None).await;
    assert_eq!(
        (ra.status, rc.status),
        (202, 202),
        "two tenants may hold pending claims"
    );
    let (ta, tc) = (
        ra.json["token"].as_str().expect("a token").to_string(),
        rc.json["token"].as_str().expect("c token").to_string(),
    );
    assert_ne!(ta, tc);
    // A claim again is the same claim (same token), not a second one.
    let again = f.call("PUT", "/v1/tenants/a/domains/shop.owned.example", A, None).await;
    assert_eq!((again.status, again.json["token"].as_str()), (202, Some(ta.as_str())));

    // Wrong token in DNS: still pending, and the check says what it saw.
    f.dns
        .set_txt("_tenantgate-challenge.shop.owned.example", "not-a-token")
        .await;
    let r = f.call("POST", "/v1/domains/shop.owned.example/verify", C, None).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["results"][0]["state"], "pending");
    assert!(r.json["results"][0]["detail"]
        .as_str()
        .unwrap_or("")
        .contains("not-a-token"));
    assert_eq!(f.gw.routed("shop.owned.example").await.0, 421);

    // c's token in DNS: c wins at once when asked.
    f.dns.clear_txt("_tenantgate-challenge.shop.owned.example").await;
    f.dns.set_txt("_tenantgate-challenge.shop.owned.example", &tc).await;
    let r = f.call("POST", "/v1/domains/shop.owned.example/verify", C, None).await;
    assert_eq!(r.json["results"][0]["state"], "active", "{:?}", r.json);
    assert_eq!(f.gw.routed("shop.owned.example").await.1.as_deref(), Some("c"));
    let d = f.wait_state("shop.owned.example", "active").await;
    assert_eq!(d["tenant"], "c");
    let t = f.call("GET", "/v1/tenants/c", C, None).await;
    assert_eq!(t.json["domains"], json!(["shop.owned.example"]));
    // a's claim failed, naming why.
    let r = f.call("GET", "/v1/domains/shop.owned.example", A, None).await;
    assert_eq!(r.json["state"], "failed", "{:?}", r.json);
    assert!(r.json.get("tenant").is_none(), "a learns nothing of c: {:?}", r.json);

    // Found by the schedule too, without asking: a proves another name.
    let r = f
        .call("PUT", "/v1/tenants/a/domains/blog.a-owned.example", A, None)
        .await;
    let token = r.json["token"].as_str().expect("token").to_string();
    f.dns
        .set_txt("_tenantgate-challenge.blog.a-owned.example", &token)
        .await;
    f.wait_state("blog.a-owned.example", "active").await;
    assert_eq!(f.gw.routed("blog.a-owned.example").await.1.as_deref(), Some("a"));
    let ks = kinds(&f.events(A, 0).await, "blog.a-owned.example");
    assert_eq!(
        ks,
        vec![
            ("domain.pending".to_string(), "a".to_string()),
            ("domain.verified".to_string(), "a".to_string()),
            ("domain.active".to_string(), "a".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_added_in_a_tenant_put_wait_for_their_proof_too() {
    let f = start("").await;
    let body = json!({"pool": "a", "domains": ["put.a-owned.example"]});
    let r = f.call("PUT", "/v1/tenants/a", A, Some(&body)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["domains"], json!([]), "not active: {:?}", r.json);
    assert_eq!(r.json["domain_claims"][0]["name"], "put.a-owned.example");
    assert_eq!(r.json["domain_claims"][0]["state"], "pending");
    assert_eq!(f.gw.routed("put.a-owned.example").await.0, 421);
    // Withdrawn by a DELETE of the name.
    let r = f
        .call("DELETE", "/v1/tenants/a/domains/put.a-owned.example", A, None)
        .await;
    assert_eq!(r.status, 204);
    let r = f.call("GET", "/v1/domains/put.a-owned.example", OPS, None).await;
    assert_eq!(r.status, 404, "{:?}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_proof_is_served_by_the_gateway_when_allowed() {
    let f = start("methods = [\"txt\", \"http\"]").await;
    let r = f
        .call("PUT", "/v1/tenants/a/domains/web.a-owned.example", A, None)
        .await;
    assert_eq!(r.status, 202);
    let token = r.json["token"].as_str().expect("token").to_string();
    assert_eq!(
        r.json["http"]["url"],
        format!("http://web.a-owned.example/.well-known/tenantgate-challenge/{token}").as_str()
    );
    // The gateway answers the token for that host only, and nothing else.
    let path = format!("/.well-known/tenantgate-challenge/{token}");
    assert_eq!(f.gw.get("web.a-owned.example", &path).await, (200, token.clone()));
    assert_eq!(f.gw.get("other.example", &path).await.0, 421);
    assert_eq!(
        f.gw.get("web.a-owned.example", "/.well-known/tenantgate-challenge/guess")
            .await
            .0,
        421
    );
    // The mock DNS answers 127.0.0.1 for every name: the name points here,
    // so the HTTP proof passes without a TXT record.
    let r = f.call("POST", "/v1/domains/web.a-owned.example/verify", A, None).await;
    assert_eq!(r.json["results"][0]["state"], "active", "{:?}", r.json);
    assert_eq!(f.gw.routed("web.a-owned.example").await.1.as_deref(), Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_names_each_problem_and_its_fix() {
    let f = start("caa_issuers = [\"letsencrypt.org\"]").await;
    let r = f
        .call("PUT", "/v1/tenants/a/domains/caa.a-owned.example", A, None)
        .await;
    let token = r.json["token"].as_str().expect("token").to_string();
    f.dns.add_caa_issue("a-owned.example", "other-ca.example").await;
    let r = f.call("GET", "/v1/domains/caa.a-owned.example/check", A, None).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["ready"], false);
    let checks = r.json["checks"].as_array().expect("checks");
    let by = |name: &str| checks.iter().find(|c| c["check"] == name).cloned().expect(name);
    assert_eq!(by("points_to_platform")["ok"], true, "{checks:?}");
    let caa = by("caa_allows_ca");
    assert_eq!(caa["ok"], false);
    assert!(
        caa["found"].as_str().unwrap_or("").contains("other-ca.example"),
        "{caa:?}"
    );
    assert!(caa["fix"].as_str().unwrap_or("").contains("letsencrypt.org"), "{caa:?}");
    let txt = by("ownership_txt");
    assert_eq!(txt["ok"], false);
    assert!(txt["fix"].as_str().unwrap_or("").contains(&token), "{txt:?}");
    // Another tenant cannot diagnose it (nor learn it is claimed).
    let r = f.call("GET", "/v1/domains/caa.a-owned.example/check", C, None).await;
    assert_eq!(r.status, 404);
    let r = f.call("GET", "/v1/domains/caa.a-owned.example", C, None).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_systems_wait_for_events_by_long_poll_or_sse() {
    let f = start("").await;
    let last = f.call("GET", "/v1/events?after=0&limit=1000", OPS, None).await.json["last"]
        .as_u64()
        .expect("last");
    let poll = {
        let admin = format!("http://{}/v1/events?after={last}&wait=20", f.gw.admin);
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = reqwest::Client::new()
                .get(admin)
                .bearer_auth(OPS)
                .send()
                .await
                .expect("poll");
            (
                started.elapsed(),
                serde_json::from_str::<Value>(&resp.text().await.expect("body")).expect("json"),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = f
        .call("PUT", "/v1/tenants/a/domains/poll.a-owned.example", A, None)
        .await;
    assert_eq!(r.status, 202);
    let (took, body) = poll.await.expect("poll task");
    assert!(
        took < Duration::from_secs(15),
        "the poll returned at the event, not at its end"
    );
    assert_eq!(body["events"][0]["type"], "domain.pending", "{body:?}");
    assert_eq!(body["events"][0]["name"], "poll.a-owned.example");

    // SSE: ids are sequence numbers; Last-Event-ID continues after them.
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v1/events?wait=0", f.gw.admin))
        .bearer_auth(OPS)
        .header("accept", "text/event-stream")
        .header("last-event-id", last.to_string())
        .send()
        .await
        .expect("sse");
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let text = resp.text().await.expect("sse body");
    assert!(
        text.contains(&format!("id: {}\nevent: domain.pending\n", last + 1)),
        "{text}"
    );
    // Bad input is refused clearly.
    let r = f.call("GET", "/v1/events?after=-1", OPS, None).await;
    assert_eq!(r.status, 400);
    let r = f.call("GET", "/v1/events?wait=999", OPS, None).await;
    assert_eq!(r.status, 400);
}

/// A webhook receiver on loopback: answers 503 to the first `fail` POSTs,
/// then 200, and keeps every request (head and body).
async fn receiver(
    fail: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, u16)>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
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
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break (head.to_string(), body.to_string());
                    }
                }
            };
            let n = kept.lock().expect("lock").len();
            let status = if n < fail { 503 } else { 200 };
            kept.lock().expect("lock").push((head, body, status));
            let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = conn.write_all(resp.as_bytes()).await;
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_filtered_and_retried_after_an_outage() {
    use hmac::{Hmac, Mac};
    const SECRET: &str = "webhook-secret-0123456789";
    let (addr, seen) = receiver(2).await;
    let f = start(&format!(
        "\n[[webhooks]]\nurl = \"http://{addr}/hooks/tenantgate\"\nsecret = \"{SECRET}\"\nevents = [\"domain.*\"]\n"
    ))
    .await;
    let r = f
        .call("PUT", "/v1/tenants/a/domains/hook.a-owned.example", A, None)
        .await;
    assert_eq!(r.status, 202);
    // Two failed tries (503), then delivered: 1 s and 2 s of backoff.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.lock().expect("lock").iter().any(|(_, _, s)| *s == 200) {
        assert!(
            Instant::now() < deadline,
            "never delivered: {:?}",
            seen.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = seen.lock().expect("lock").clone();
    assert_eq!(got.iter().map(|(_, _, s)| *s).collect::<Vec<_>>(), vec![503, 503, 200]);
    let header = |head: &str, name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let ids: Vec<String> = got.iter().map(|(h, _, _)| header(h, "x-tenantgate-event-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0] && !i.is_empty()),
        "the same event each time: {ids:?}"
    );
    let (head, body, _) = &got[2];
    assert!(head.starts_with("POST /hooks/tenantgate HTTP/1.1"), "{head}");
    let event: Value = serde_json::from_str(body).expect("json body");
    // Filtered: tenant.created came first, but only domain.* is sent.
    assert_eq!(event["type"], "domain.pending");
    assert_eq!(event["name"], "hook.a-owned.example");
    // The signature verifies with the shared secret.
    let ts = header(head, "x-tenantgate-timestamp");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{ts}.{body}").as_bytes());
    let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(header(head, "x-tenantgate-signature"), format!("sha256={want}"));
    // A tampered body would not verify.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{ts}.{body} ").as_bytes());
    let other: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_ne!(want, other);
}

/// A gateway ordering certificates from Pebble, whose DNS is challtestsrv.
async fn with_acme() -> (Gateway, Pebble, EchoBackend) {
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().expect("addr");
    let p = Pebble::start(http.port(), common::free_port(), 3600).await;
    let pool = backend("a").await;
    let cfg = format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"

[tls]
issuer = "acme"

[tls.acme]
directory_url = "{dir}"
ca_root = "{ca}"
contact = "ops@example.com"
retry_min_secs = 1
retry_max_secs = 2

[domains]
nameservers = ["{dns}"]
recheck_min_secs = 1

[pools.a]
upstreams = ["{pool}"]

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{ops}"

[[admin.tokens]]
name = "a-admin"
scope = "tenant:a"
sha256 = "{ta}"
"#,
        dir = p.directory_url(),
        ca = p.api_ca_pem_path().display(),
        dns = p.dns_addr(),
        pool = pool.addr,
        ops = hash_hex(OPS),
        ta = hash_hex(A),
    );
    let gw = Gateway::start_with_http(tempfile::tempdir().expect("dir"), &cfg, http).await;
    let r = gw
        .admin_call("PUT", "/v1/tenants/a", Some(OPS), Some(&json!({"pool": "a"})), &[])
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    (gw, p, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_domain_goes_live_over_https_with_a_pebble_certificate() {
    let (gw, p, _pool) = with_acme().await;
    let name = "live.a-owned.example";
    let started = Instant::now();
    let r = gw
        .admin_call("PUT", &format!("/v1/tenants/a/domains/{name}"), Some(A), None, &[])
        .await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    let token = r.json["token"].as_str().expect("token").to_string();
    // Pending: no certificate is ordered for it.
    let root = p.issuing_root_pem().await;
    assert!(common::handshake_full(gw.https, Some(name), root.as_bytes())
        .await
        .is_err());
    p.set_txt(&format!("_tenantgate-challenge.{name}"), &token).await;
    // Follow the event stream (long poll) until the certificate is issued.
    let mut after = 0;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(k, n): &(String, String)| k == "certificate.issued" && n == name)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never live: {seen:?}\n{}",
            gw.log()
        );
        let r = gw
            .admin_call("GET", &format!("/v1/events?after={after}&wait=10"), Some(A), None, &[])
            .await;
        for e in r.json["events"].as_array().cloned().unwrap_or_default() {
            after = e["seq"].as_u64().unwrap_or(after);
            seen.push((
                e["type"].as_str().unwrap_or("").to_string(),
                e["name"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    eprintln!("PUT + TXT to certificate.issued: {:?}", started.elapsed());
    let order: Vec<&str> = seen
        .iter()
        .filter(|(_, n)| n == name)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "domain.pending",
            "domain.verified",
            "domain.active",
            "certificate.issued"
        ]
    );
    // Live over verified HTTPS with the Pebble certificate.
    let (_, leaf) = common::handshake_full(gw.https, Some(name), root.as_bytes())
        .await
        .expect("a verified handshake");
    assert!(!leaf.is_empty());
    let client = common::https_client(root.as_bytes(), &[name], gw.https, true);
    let resp = client
        .get(format!("https://{name}:{}/", gw.https.port()))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_domain_that_points_elsewhere_becomes_moved_and_back() {
    let f = start("reverify_secs = 1\nmoved_grace_days = 0").await;
    let r = f.call("PUT", "/v1/tenants/b/domains/gone.b.example", OPS, None).await;
    assert_eq!(r.status, 201);
    f.dns.add_a_record("gone.b.example", "10.9.9.9").await;
    f.wait_state("gone.b.example", "moved").await;
    // Still routed (removal is the operator's choice), but not renewed.
    assert_eq!(f.gw.routed("gone.b.example").await.1.as_deref(), Some("b"));
    f.dns.clear_a_record("gone.b.example").await;
    f.wait_state("gone.b.example", "active").await;
    let ks = kinds(&f.events(OPS, 0).await, "gone.b.example");
    assert_eq!(
        ks.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["domain.active", "domain.moved", "domain.active"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_moved_takes_a_moved_domain_off_its_tenant() {
    let f = start("reverify_secs = 1\nmoved_grace_days = 0\nremove_moved = true").await;
    let r = f.call("PUT", "/v1/tenants/b/domains/left.b.example", OPS, None).await;
    assert_eq!(r.status, 201);
    f.dns.add_a_record("left.b.example", "10.9.9.9").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while f.gw.routed("left.b.example").await.0 != 421 {
        assert!(Instant::now() < deadline, "a moved name was never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = f.call("GET", "/v1/tenants/b", OPS, None).await;
    assert_eq!(t.json["domains"], json!([]));
    let ks = kinds(&f.events(OPS, 0).await, "left.b.example");
    assert!(ks.contains(&("domain.moved".into(), "b".into())), "{ks:?}");
    assert!(ks.contains(&("domain.removed".into(), "b".into())), "{ks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_is_ordered_while_caa_excludes_the_ca() {
    let (gw, p, _pool) = with_acme().await;
    let name = "caa.a-owned.example";
    p.add_caa_issue(name, "other-ca.example").await;
    let r = gw
        .admin_call("PUT", &format!("/v1/tenants/a/domains/{name}"), Some(OPS), None, &[])
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let deadline = Instant::now() + Duration::from_secs(20);
    let acme = loop {
        let r = gw
            .admin_call("GET", &format!("/v1/domains/{name}"), Some(OPS), None, &[])
            .await;
        let acme = r.json["certificate"]["acme"].clone();
        if acme["state"] == "failed" {
            break acme;
        }
        assert!(Instant::now() < deadline, "{:?}", r.json);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = acme["last_error"].as_str().unwrap_or("");
    assert!(
        why.contains("caa_allows_ca") && why.contains("other-ca.example"),
        "{acme:?}"
    );
    // Pebble never saw an order for it: no certificate is served.
    let root = p.issuing_root_pem().await;
    assert!(common::handshake_full(gw.https, Some(name), root.as_bytes())
        .await
        .is_err());
    assert!(!p.pebble_log().contains(name), "an order reached the CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_webhook_event_is_delivered_after_a_restart() {
    const SECRET: &str = "webhook-secret-0123456789";
    // The receiver refuses the first three tries (1 s + 2 s of backoff).
    let (addr, seen) = receiver(3).await;
    let extra = format!("\n[[webhooks]]\nurl = \"http://{addr}/h\"\nsecret = \"{SECRET}\"\nevents = [\"domain.*\"]\n");
    let f = start(&extra).await;
    let r = f
        .call("PUT", "/v1/tenants/a/domains/restart.a-owned.example", A, None)
        .await;
    assert_eq!(r.status, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The gateway dies before the event got through.
    let template = config(&f.dns, &f.a_pool, &f.b_pool, &extra);
    let Fixture {
        gw,
        dns,
        a_pool,
        b_pool,
    } = f;
    let dir = gw.stop();
    let tries_before = seen.lock().expect("lock").len();
    assert!(seen.lock().expect("lock").iter().all(|(_, _, s)| *s == 503));
    let gw = Gateway::start_in(dir, &template).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.lock().expect("lock").iter().any(|(_, _, s)| *s == 200) {
        assert!(
            Instant::now() < deadline,
            "not delivered after the restart: {:?}\n{}",
            seen.lock().expect("lock"),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = seen.lock().expect("lock").clone();
    let id = |head: &str| {
        head.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-tenantgate-event-id:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    assert!(got.len() > tries_before, "the new process tried again");
    assert!(
        got.iter().all(|(h, _, _)| id(h) == id(&got[0].0)),
        "the same event, not skipped"
    );
    drop((dns, a_pool, b_pool));
}
