//! The admin API as an attacker and a provisioning system use it: each test
//! is one defect of issue 13, against the real binary over real sockets.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{backend, Gateway, BIN};
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;
use tenantgate::demo::EchoBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPS: &str = "ops-secret-0123456789";
const ACME: &str = "acme-secret-0123456789";

fn config(p: &EchoBackend, extra: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
base_domains = ["saas.example"]

# Names are active at once here; the ownership proof has its own tests
# (tests/domains.rs).
[domains]
verify = "off"

[pools.p]
upstreams = ["{}"]

{extra}

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{}"

[[admin.tokens]]
name = "acme-admin"
scope = "tenant:acme"
sha256 = "{}"

[[tenants]]
id = "stable"
subdomain = "stable"
domains = ["stable.example.com"]
pool = "p"
"#,
        p.addr,
        hash_hex(OPS),
        hash_hex(ACME)
    )
}

async fn start(extra: &str) -> (Gateway, EchoBackend) {
    let p = backend("p").await;
    let gw = Gateway::start(&config(&p, extra)).await;
    (gw, p)
}

/// A gateway where the operator created tenant acme (`a.acme.com`).
async fn with_acme() -> (Gateway, EchoBackend) {
    let (gw, p) = start("").await;
    let r = op(
        &gw,
        "PUT",
        "/v1/tenants/acme",
        Some(json!({"domains": ["a.acme.com"], "pool": "p"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    (gw, p)
}

/// A response: status, headers, body text and JSON (`Null` if none).
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem of `status` and `kind`.
    fn problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(
            self.json["type"],
            format!("tag:tenantgate,2026:{kind}"),
            "{}",
            self.text
        );
        assert_eq!(self.json["status"], status);
    }
}

/// Any request to the admin API: `headers` as given (no implicit
/// `Content-Type`), `body` as raw text.
async fn call(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    let client = reqwest::Client::new();
    let mut req = client.request(
        reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
        format!("http://{}{path}", gw.admin),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        json,
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn op(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Resp {
    let auth = bearer(OPS);
    let text = body.map(|b| b.to_string());
    call(gw, method, path, &[(auth.0, &auth.1), JSON], text.as_deref()).await
}

async fn as_acme(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Resp {
    let auth = bearer(ACME);
    let text = body.map(|b| b.to_string());
    call(gw, method, path, &[(auth.0, &auth.1), JSON], text.as_deref()).await
}

/// Reads until the peer closes; `None` if it is still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

const SMALL_LIMITS: &str = "[admin]\nheader_timeout_ms = 500\nidle_timeout_ms = 700\nbody_timeout_ms = 700\nmax_connections = 4\n\n[telemetry]\nmetrics_header_timeout_ms = 500\nmetrics_idle_timeout_ms = 700\nmetrics_max_connections = 2\n";

// Defect 1: no timeouts, no connection cap on the admin (and metrics) port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_listeners_time_out_slow_and_idle_clients_and_cap_connections() {
    let (gw, _p) = start(SMALL_LIMITS).await;
    for addr in [gw.admin, gw.metrics] {
        // A request head that never ends.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /v1/tenants HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        assert!(
            closed_within(&mut s, Duration::from_secs(3)).await.is_some(),
            "{addr}: a slow head is not cut"
        );
        // A kept-alive connection that goes idle after one request.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let path = if addr == gw.admin { "/healthz" } else { "/metrics" };
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let seen = closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(
            seen.as_deref().is_some_and(|t| t.starts_with("HTTP/1.1 200")),
            "{addr}: idle connection not closed after its answer: {seen:?}"
        );
    }
    // A body that never finishes: 408 problem, connection closed.
    let mut s = TcpStream::connect(gw.admin).await.expect("connect");
    let head = format!(
        "PUT /v1/tenants/acme HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPS}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"pool\""
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let seen = closed_within(&mut s, Duration::from_secs(3))
        .await
        .expect("slow body cut");
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    assert!(seen.contains("application/problem+json"), "{seen}");

    // The cap: four idle connections hold the admin port; a fifth is told
    // so at once, and the proxy answers throughout.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.admin).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = TcpStream::connect(gw.admin).await.expect("connect");
    let seen = closed_within(&mut s, Duration::from_secs(2)).await.expect("refused");
    assert!(seen.starts_with("HTTP/1.1 503"), "{seen}");
    assert!(seen.contains("tag:tenantgate,2026:busy"), "{seen}");
    assert_eq!(gw.routed("stable.example.com").await.0, 200);
    // Once they time out, the port serves again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(op(&gw, "GET", "/v1/tenants", None).await.status, 200);
    drop(held);
}

/// Starts the gateway with at most `nofile` descriptors (as `prlimit`
/// sets them); returns the child, its log path and the admin address.
struct Ports {
    http: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    https: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

fn start_limited(dir: &std::path::Path, p: &EchoBackend, extra: &str, nofile: u32) -> (std::process::Child, Ports) {
    let ports = Ports {
        http: local(common::free_port()),
        metrics: local(common::free_port()),
        https: local(common::free_port()),
        admin: local(common::free_port()),
    };
    let text = common::fill(&config(p, extra), ports.http, ports.metrics, ports.https, ports.admin);
    let path = dir.join("tenantgate.toml");
    std::fs::write(&path, text).expect("config");
    let log = std::fs::File::create(dir.join("gateway.log")).expect("log");
    let child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    (child, ports)
}

async fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Defect 1, as reported: 300 idle connections with 256 descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_flood_never_takes_the_proxys_descriptors_and_accept_errors_back_off() {
    let p = backend("p").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, ports) = start_limited(dir.path(), &p, "", 256);
    wait_listening(ports.admin).await;
    wait_listening(ports.http).await;
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(ports.admin).await {
            held.push(s);
        }
    }
    // The proxy still answers while the flood holds on.
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{}/", ports.http))
        .header("host", "stable.example.com")
        .send()
        .await
        .expect("proxy answers during the flood");
    assert_eq!(r.status(), 200);
    drop(held);
    let _ = child.kill();
    let _ = child.wait();

    // Without a useful cap, accept fails for lack of descriptors: the
    // listener pauses and logs a few lines, not millions.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, ports) = start_limited(dir.path(), &p, "[admin]\nmax_connections = 100000\n", 128);
    wait_listening(ports.admin).await;
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(ports.admin).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).expect("log");
    let lines = log.matches("accept failed").count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} accept-failure lines:\n{}",
        &log[log.len().saturating_sub(2000)..]
    );
    drop(held);
    // Connections freed: it accepts again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = client
        .get(format!("http://{}/healthz", ports.admin))
        .send()
        .await
        .expect("admin answers again");
    assert_eq!(r.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
}

// Defect 2: a tenant token read other tenants' data in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_sees_only_its_own_part_of_the_audit_log() {
    let (gw, _p) = start("").await;
    let batch = json!({"changes": [
        {"op": "put", "tenant": {"id": "acme", "domains": ["app.acme.com"], "pool": "p"}},
        {"op": "put", "tenant": {"id": "beta", "domains": ["secret-beta.example.net"], "pool": "p"}},
    ]});
    assert_eq!(op(&gw, "POST", "/v1/changes", Some(batch)).await.status, 200);
    // The operator's conflict names the owner (stable).
    let r = op(
        &gw,
        "PUT",
        "/v1/tenants/acme",
        Some(json!({"domains": ["stable.example.com"], "pool": "p"})),
    )
    .await;
    r.problem(409, "conflict");
    // The tenant's own refused write stays visible to it, in full.
    let r = as_acme(
        &gw,
        "PUT",
        "/v1/tenants/acme",
        Some(json!({"domains": [], "pool": "q"})),
    )
    .await;
    r.problem(403, "forbidden");

    let r = as_acme(&gw, "GET", "/v1/audit?tenant=acme", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.json["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3, "{}", r.text);
    for leak in ["beta", "stable", "\"ops\""] {
        assert!(!r.text.contains(leak), "{leak} leaked: {}", r.text);
    }
    assert_eq!(entries[0]["diff"][0]["tenant"], "acme");
    assert_eq!(entries[2]["who"], "acme-admin");
    assert!(entries[2]["problem"]
        .as_str()
        .is_some_and(|p| p.contains("tenant token")));
    // The operator still sees everything.
    let r = op(&gw, "GET", "/v1/audit?tenant=acme", None).await;
    assert!(r.text.contains("beta") && r.text.contains("stable"), "{}", r.text);
}

// Defect 3: import and preview were quadratic and blocked /healthz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_import_is_linear_and_health_answers_throughout() {
    let (gw, _p) = start("").await;
    let n = 20_000;
    let tenants: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("t{i}"), "domains": [format!("t{i}.example.com")], "pool": "p"}))
        .collect();
    let body = json!({"tenants": tenants}).to_string();
    let admin = gw.admin;
    let probe = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut worst = Duration::ZERO;
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            let t = Instant::now();
            let r = client.get(format!("http://{admin}/healthz")).send().await;
            assert!(r.is_ok_and(|r| r.status() == 200));
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worst
    });
    let auth = bearer(OPS);
    let started = Instant::now();
    // `stable` is in the main file: not deleted, no prune needed.
    let r = call(&gw, "POST", "/v1/import", &[(auth.0, &auth.1), JSON], Some(&body)).await;
    assert_eq!(r.status, 200, "{}", &r.text[..r.text.len().min(500)]);
    let import = started.elapsed();
    let export = op(&gw, "GET", "/v1/export", None).await;
    let started = Instant::now();
    let again = json!({"tenants": export.json["tenants"]}).to_string();
    let r = call(
        &gw,
        "POST",
        "/v1/import?preview=true",
        &[(auth.0, &auth.1), JSON],
        Some(&again),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["diff"], json!([]));
    let preview = started.elapsed();
    let worst = probe.await.expect("probe");
    eprintln!("import of {n}: {import:?}; preview unchanged: {preview:?}; slowest /healthz: {worst:?}");
    assert!(worst < Duration::from_millis(1000), "/healthz took {worst:?}");
    assert!(preview < Duration::from_secs(20), "preview took {preview:?}");
    assert_eq!(gw.routed("t19999.example.com").await.1.as_deref(), Some("t19999"));
}

// Defect 4: limits were ignored and unchecked on the `unlimited` plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_and_are_checked_on_the_unlimited_plan() {
    // `tenantgate check` refuses negative limits there too: tests/check.rs.
    let (gw, _p) = start("[limits]\ndefault_plan = \"unlimited\"\n").await;
    // max_domains = 1 holds on the (default) unlimited plan.
    let r = op(
        &gw,
        "PUT",
        "/v1/tenants/acme",
        Some(json!({"domains": ["a.acme.com", "b.acme.com"], "pool": "p", "limits": {"max_domains": 1}})),
    )
    .await;
    r.problem(422, "invalid");
    assert!(r.text.contains("max_domains"), "{}", r.text);
    // A rate of 1/s lets one request through in a second, not five.
    let r = op(
        &gw,
        "PUT",
        "/v1/tenants/acme",
        Some(json!({"domains": ["a.acme.com"], "pool": "p", "plan": "unlimited",
                    "limits": {"requests_per_second": 1}})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(gw.get("a.acme.com", "/").await.0);
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert!(codes.contains(&429), "{codes:?}");
}

// Defect 5: a write that changed nothing was recorded and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_changes_nothing_is_not_recorded() {
    let (gw, _p) = start("").await;
    let body = json!({"domains": ["app.acme.com"], "pool": "p"});
    let first = op(&gw, "PUT", "/v1/tenants/acme", Some(body.clone())).await;
    assert_eq!(first.status, 201);
    let generation = op(&gw, "GET", "/readyz", None).await.json["generation"].clone();
    let versions = op(&gw, "GET", "/v1/versions", None).await.json["versions"].clone();
    let audit = op(&gw, "GET", "/v1/audit", None).await.json["entries"].clone();
    for _ in 0..3 {
        let r = op(&gw, "PUT", "/v1/tenants/acme", Some(body.clone())).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("etag"), first.header("etag"));
    }
    let batch = json!({"changes": [{"op": "put", "tenant": {"id": "acme", "domains": ["app.acme.com"], "pool": "p"}}]});
    let r = op(&gw, "POST", "/v1/changes", Some(batch)).await;
    assert_eq!(
        (r.status, &r.json["applied"], &r.json["diff"]),
        (200, &json!(false), &json!([]))
    );
    assert_eq!(op(&gw, "GET", "/readyz", None).await.json["generation"], generation);
    assert_eq!(op(&gw, "GET", "/v1/versions", None).await.json["versions"], versions);
    assert_eq!(op(&gw, "GET", "/v1/audit", None).await.json["entries"], audit);
}

// Defect 7 and 19: per-token limits; a 429 says when to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_is_rate_limited_and_operators_are_not_slowed() {
    let (gw, _p) = start("").await;
    assert_eq!(
        op(
            &gw,
            "PUT",
            "/v1/tenants/acme",
            Some(json!({"domains": ["a.acme.com"], "pool": "p"}))
        )
        .await
        .status,
        201
    );
    let mut limited = None;
    for _ in 0..40 {
        let r = as_acme(
            &gw,
            "PUT",
            "/v1/tenants/acme",
            Some(json!({"domains": ["a.acme.com"], "pool": "q"})),
        )
        .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        r.problem(403, "forbidden");
    }
    let r = limited.expect("a tenant token is limited");
    r.problem(429, "rate-limited");
    let t: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(t >= 1);
    assert_eq!(r.header("ratelimit"), Some(format!("\"burst\";r=0;t={t}").as_str()));
    assert!(r.header("ratelimit-policy").is_some_and(|p| p.contains("q=20")));
    // The operator is neither limited nor slowed meanwhile.
    let started = Instant::now();
    for i in 0..30 {
        let r = op(
            &gw,
            "PUT",
            "/v1/tenants/acme",
            Some(json!({"domains": [format!("x{i}.acme.com")], "pool": "p"})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

// Defects 8 and 14: percent-decoding; names stored canonical and once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_names_are_decoded_canonicalised_and_counted_once() {
    let (gw, _p) = start("[plans.one]\nmax_domains = 2\n\n[limits]\ndefault_plan = \"one\"\n").await;
    let r = op(
        &gw,
        "PUT",
        "/v1/tenants/acme",
        Some(
            json!({"domains": ["Shöp.Acme.com", "A.dup.example.", "a.dup.example", "xn--shp-tna.acme.com"],
                    "subdomain": "Acme", "pool": "p"}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["domains"], json!(["xn--shp-tna.acme.com", "a.dup.example"]));
    assert_eq!(r.json["subdomain"], "acme");
    let stored = std::fs::read_to_string(gw.dir().join("tenants/acme.toml")).expect("file");
    assert!(
        stored.contains("xn--shp-tna.acme.com") && !stored.contains("Shöp"),
        "{stored}"
    );
    let r = op(&gw, "GET", "/v1/domains/sh%C3%B6p.acme.com", None).await;
    assert_eq!((r.status, &r.json["tenant"]), (200, &json!("acme")), "{}", r.text);
    let r = op(&gw, "GET", "/v1/tenants?domain=SH%C3%96P.acme.com.", None).await;
    assert_eq!(r.json["tenants"][0]["id"], "acme", "{}", r.text);
    // A zero-width space is not a host name character.
    let r = op(
        &gw,
        "PUT",
        "/v1/tenants/acme",
        Some(json!({"domains": ["zero\u{200B}width.example.com"], "pool": "p"})),
    )
    .await;
    assert!(
        r.status == 422 || r.json["domains"] == json!(["zerowidth.example.com"]),
        "{}",
        r.text
    );
    // The domain sub-resource takes any spelling.
    let r = op(&gw, "PUT", "/v1/tenants/acme/domains/A.DUP.example.", None).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json["domains"]
        .as_array()
        .is_some_and(|d| d.contains(&json!("a.dup.example"))));
    let r = op(&gw, "PUT", "/v1/tenants/acme/domains/a.dup.EXAMPLE", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

// Defect 9: Content-Type and If-None-Match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_types_and_if_none_match_are_honoured() {
    let (gw, _p) = start("").await;
    let auth = bearer(OPS);
    let body = json!({"domains": ["a.acme.com"], "pool": "p"}).to_string();
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut h = vec![(auth.0, auth.1.as_str())];
        if let Some(c) = ct {
            h.push(("content-type", c));
        }
        call(&gw, "PUT", "/v1/tenants/acme", &h, Some(&body))
            .await
            .problem(415, "unsupported-media-type");
    }
    let h = [(auth.0, auth.1.as_str()), JSON, ("if-none-match", "*")];
    let created = call(&gw, "PUT", "/v1/tenants/acme", &h, Some(&body)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    // Create-only: the second one finds it.
    call(&gw, "PUT", "/v1/tenants/acme", &h, Some(&body))
        .await
        .problem(412, "exists");
    let etag = created.header("etag").expect("etag").to_string();
    let h = [(auth.0, auth.1.as_str()), ("if-none-match", etag.as_str())];
    let r = call(&gw, "GET", "/v1/tenants/acme", &h, None).await;
    assert_eq!((r.status, r.text.as_str()), (304, ""));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let h = [(auth.0, auth.1.as_str()), ("if-none-match", "\"other\"")];
    assert_eq!(call(&gw, "GET", "/v1/tenants/acme", &h, None).await.status, 200);
    // Merge patch wants its own media type.
    let h = [(auth.0, auth.1.as_str()), JSON];
    let r = call(&gw, "PATCH", "/v1/tenants/acme", &h, Some("{\"redirect_https\":false}")).await;
    r.problem(415, "unsupported-media-type");
    assert_eq!(r.header("accept-patch"), Some("application/merge-patch+json"));
    let h = [
        (auth.0, auth.1.as_str()),
        ("content-type", "application/merge-patch+json"),
    ];
    let r = call(
        &gw,
        "PATCH",
        "/v1/tenants/acme",
        &h,
        Some("{\"redirect_https\":false,\"labels\":{\"region\":\"eu\"}}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["redirect_https"], false);
    assert_eq!(r.json["domains"], json!(["a.acme.com"]));
    let r = op(&gw, "GET", "/v1/tenants?label=region%3Deu", None).await;
    assert_eq!(r.json["tenants"][0]["id"], "acme", "{}", r.text);
    assert_eq!(
        op(&gw, "GET", "/v1/tenants?label=region%3Dus", None).await.json["total"],
        0
    );
}

// Defect 10: 405 with Allow; HEAD and OPTIONS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_get_405_with_allow_and_head_and_options_work() {
    let (gw, _p) = start("").await;
    let auth = bearer(OPS);
    let h = [(auth.0, auth.1.as_str())];
    let r = call(&gw, "DELETE", "/v1/tenants", &h, None).await;
    r.problem(405, "method-not-allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
    let r = call(&gw, "POST", "/v1/tenants/stable", &h, None).await;
    r.problem(405, "method-not-allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT, PATCH, DELETE, OPTIONS"));
    call(&gw, "BREW", "/v1/export", &h, None)
        .await
        .problem(405, "method-not-allowed");
    let r = call(&gw, "OPTIONS", "/v1/import", &[], None).await;
    assert_eq!((r.status, r.header("allow")), (204, Some("POST, OPTIONS")));
    let r = call(&gw, "HEAD", "/v1/tenants/stable", &h, None).await;
    assert_eq!((r.status, r.text.as_str()), (200, ""));
    assert!(r.header("etag").is_some());
    assert_eq!(call(&gw, "HEAD", "/healthz", &[], None).await.status, 200);
    call(&gw, "GET", "/v1/nothing", &h, None)
        .await
        .problem(404, "not-found");
}

// Defects 11, 12 and 13: query bounds, the Bearer scheme, duplicate keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_bounded_bearer_is_case_insensitive_and_duplicate_keys_refused() {
    let (gw, _p) = start("").await;
    for q in [
        "/v1/tenants?limit=abc",
        "/v1/tenants?limit=0",
        "/v1/tenants?limit=1001",
        "/v1/tenants?offset=-1",
        "/v1/tenants?cursor=zz",
        "/v1/audit?limit=1001",
        "/v1/audit?limit=0",
        "/v1/import?preview=maybe",
    ] {
        let method = if q.starts_with("/v1/import") { "POST" } else { "GET" };
        op(&gw, method, q, Some(json!({"tenants": []})))
            .await
            .problem(400, "bad-request");
    }
    for scheme in ["BEARER", "bearer", "BeArEr"] {
        let v = format!("{scheme} {OPS}");
        assert_eq!(
            call(&gw, "GET", "/v1/tenants", &[("authorization", &v)], None)
                .await
                .status,
            200
        );
    }
    let auth = bearer(OPS);
    let h = [(auth.0, auth.1.as_str()), JSON];
    for (path, body) in [
        ("/v1/tenants/acme", r#"{"pool":"p","pool":"q"}"#),
        ("/v1/tenants/acme", r#"{"pool":"p","limits":{"burst":1,"burst":2}}"#),
        (
            "/v1/changes",
            r#"{"changes":[{"op":"put","tenant":{"id":"acme","pool":"p","pool":"q"}}]}"#,
        ),
        (
            "/v1/import?preview=true",
            r#"{"tenants":[{"id":"acme","pool":"p","pool":"q"}]}"#,
        ),
    ] {
        let method = if path.starts_with("/v1/tenants") { "PUT" } else { "POST" };
        call(&gw, method, path, &h, Some(body))
            .await
            .problem(400, "bad-request");
    }
    assert_eq!(op(&gw, "GET", "/v1/tenants/acme", None).await.status, 404);
}

// Defect 15: a tenant token probed who owns a host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_cannot_tell_another_tenants_host_from_an_unrouted_one() {
    let (gw, _p) = with_acme().await;
    let owned = as_acme(&gw, "GET", "/v1/domains/stable.example.com", None).await;
    let unrouted = as_acme(&gw, "GET", "/v1/domains/nobody.example.com", None).await;
    owned.problem(404, "not-found");
    unrouted.problem(404, "not-found");
    assert_eq!(
        owned.text.replace("stable.example.com", "X"),
        unrouted.text.replace("nobody.example.com", "X")
    );
    assert_eq!(as_acme(&gw, "GET", "/v1/domains/a.acme.com", None).await.status, 200);
}

// Defect 16: the audit log was read whole per call and never rotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_rotated_by_size_and_read_from_its_end() {
    let (gw, _p) = start("[admin]\naudit_max_bytes = 4096\n").await;
    for i in 0..30 {
        let r = op(
            &gw,
            "PUT",
            "/v1/tenants/acme",
            Some(json!({"domains": [format!("d{i}.acme.com")], "pool": "p"})),
        )
        .await;
        assert!(r.status == 200 || r.status == 201);
    }
    let log = gw.dir().join("state/admin/audit.jsonl");
    assert!(gw.dir().join("state/admin/audit.jsonl.1").exists());
    assert!(std::fs::metadata(&log).expect("log").len() <= 4096);
    let r = op(&gw, "GET", "/v1/audit?limit=3", None).await;
    let entries = r.json["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    assert!(entries[2]["diff"].to_string().contains("d29.acme.com"), "{}", r.text);
    assert!(entries[0]["diff"].to_string().contains("d27.acme.com"), "{}", r.text);
}

// Defect 17: an import of `{"tenants":[]}` deleted every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_deletes_needs_prune_or_the_exports_etag() {
    let (gw, _p) = with_acme().await;
    let empty = json!({"tenants": []});
    let r = op(&gw, "POST", "/v1/import", Some(empty.clone())).await;
    r.problem(428, "prune-required");
    assert_eq!(gw.routed("a.acme.com").await.1.as_deref(), Some("acme"));
    // Previewing shows what would go.
    let r = op(&gw, "POST", "/v1/import?preview=true", Some(empty.clone())).await;
    assert_eq!(r.json["diff"][0]["action"], "delete");
    let export = call(&gw, "GET", "/v1/export", &[(bearer(OPS).0, &bearer(OPS).1)], None).await;
    let tag = export.header("etag").expect("export etag").to_string();
    op(
        &gw,
        "PUT",
        "/v1/tenants/beta",
        Some(json!({"domains": ["b.beta.com"], "pool": "p"})),
    )
    .await;
    let auth = bearer(OPS);
    let h = [(auth.0, auth.1.as_str()), JSON, ("if-match", tag.as_str())];
    call(&gw, "POST", "/v1/import", &h, Some(&empty.to_string()))
        .await
        .problem(412, "stale");
    let export = call(&gw, "GET", "/v1/export", &[(auth.0, &auth.1)], None).await;
    let tag = export.header("etag").expect("export etag").to_string();
    let h = [(auth.0, auth.1.as_str()), JSON, ("if-match", tag.as_str())];
    let r = call(&gw, "POST", "/v1/import", &h, Some(&empty.to_string())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(gw.routed("a.acme.com").await.0, 421);
}

// Conventions: domains as a sub-resource, cursor pages, Idempotency-Key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_sub_resource_cursor_pages_and_idempotent_retries() {
    let (gw, _p) = with_acme().await;
    let r = as_acme(&gw, "PUT", "/v1/tenants/acme/domains/b.acme.com", None).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["domains"], json!(["a.acme.com", "b.acme.com"]));
    assert_eq!(gw.routed("b.acme.com").await.1.as_deref(), Some("acme"));
    assert_eq!(
        as_acme(&gw, "PUT", "/v1/tenants/acme/domains/b.acme.com", None)
            .await
            .status,
        200
    );
    as_acme(&gw, "PUT", "/v1/tenants/acme/domains/stable.example.com", None)
        .await
        .problem(409, "conflict");
    assert_eq!(
        as_acme(&gw, "DELETE", "/v1/tenants/acme/domains/a.acme.com", None)
            .await
            .status,
        204
    );
    as_acme(&gw, "DELETE", "/v1/tenants/acme/domains/a.acme.com", None)
        .await
        .problem(404, "not-found");
    as_acme(&gw, "PUT", "/v1/tenants/stable/domains/x.acme.com", None)
        .await
        .problem(403, "forbidden");

    for id in ["c1", "c2", "c3", "c4"] {
        op(&gw, "PUT", &format!("/v1/tenants/{id}"), Some(json!({"pool": "p"}))).await;
    }
    let first = op(&gw, "GET", "/v1/tenants?limit=2", None).await;
    let ids = |r: &Resp| -> Vec<String> {
        r.json["tenants"]
            .as_array()
            .expect("page")
            .iter()
            .map(|t| t["id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(ids(&first), ["acme", "c1"]);
    // A write between pages does not shift the next one.
    op(&gw, "DELETE", "/v1/tenants/acme", None).await;
    let cursor = first.json["next_cursor"].as_str().expect("cursor").to_string();
    let second = op(&gw, "GET", &format!("/v1/tenants?limit=2&cursor={cursor}"), None).await;
    assert_eq!(ids(&second), ["c2", "c3"]);

    let auth = bearer(OPS);
    let h = [(auth.0, auth.1.as_str()), JSON, ("idempotency-key", "k-1")];
    let body = json!({"changes": [{"op": "put", "tenant": {"id": "idem", "pool": "p", "domains": ["i.idem.com"]}}]})
        .to_string();
    let first = call(&gw, "POST", "/v1/changes", &h, Some(&body)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = call(&gw, "POST", "/v1/changes", &h, Some(&body)).await;
    assert_eq!((again.status, &again.json), (200, &first.json));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = json!({"changes": []}).to_string();
    call(&gw, "POST", "/v1/changes", &h, Some(&other))
        .await
        .problem(409, "idempotency-key-reused");
}

/// The ids of a `GET /v1/tenants` page.
fn page_ids(r: &Resp) -> Vec<String> {
    r.json["tenants"]
        .as_array()
        .expect("page")
        .iter()
        .map(|t| t["id"].as_str().unwrap_or("").to_string())
        .collect()
}

// Conventions: a snapshot-consistent cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_walk_sees_exactly_the_generation_it_started_on_while_another_client_writes() {
    let (gw, _p) = start("").await;
    let start_set: Vec<String> = (1..=12).map(|i| format!("t{i:02}")).collect();
    let changes: Vec<Value> = start_set
        .iter()
        .map(|id| json!({"op": "put", "tenant": {"id": id, "pool": "p"}}))
        .collect();
    let r = op(&gw, "POST", "/v1/changes", Some(json!({"changes": changes}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut expected = start_set.clone();
    expected.push("stable".into());
    expected.sort();

    // Another client writes all through the walk: creates tenants that sort
    // before, between and after the walked ids, and deletes walked ones.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (admin, writing) = (gw.admin, writing.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                for id in [format!("a{n}"), format!("t05-{n}"), format!("z{n}")] {
                    let r = client
                        .put(format!("http://{admin}/v1/tenants/{id}"))
                        .bearer_auth(OPS)
                        .header("content-type", "application/json")
                        .body(json!({"pool": "p"}).to_string())
                        .send()
                        .await
                        .expect("sent");
                    assert_eq!(r.status(), 201);
                }
                n += 1;
            }
            n
        })
    };
    let mut seen = Vec::new();
    let first = op(&gw, "GET", "/v1/tenants?limit=3", None).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let generation = first.json["generation"].clone();
    seen.extend(page_ids(&first));
    let mut cursor = first.json["next_cursor"].as_str().map(str::to_string);
    let mut pages = 1;
    while let Some(c) = cursor {
        // Besides the writer's, a change between every two pages: a walked
        // tenant deleted, one created just after the cursor.
        let victim = &start_set[pages * 3 - 1];
        assert_eq!(
            op(&gw, "DELETE", &format!("/v1/tenants/{victim}"), None).await.status,
            204
        );
        let r = op(
            &gw,
            "PUT",
            &format!("/v1/tenants/{victim}-new"),
            Some(json!({"pool": "p"})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let page = op(&gw, "GET", &format!("/v1/tenants?limit=3&cursor={c}"), None).await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(
            page.json["generation"], generation,
            "every page lists the walk's generation"
        );
        assert_eq!(page.json["total"], first.json["total"]);
        seen.extend(page_ids(&page));
        cursor = page.json["next_cursor"].as_str().map(str::to_string);
        pages += 1;
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.await.expect("writer");
    assert!(rounds > 0, "the other client wrote during the walk");
    assert_eq!(
        seen, expected,
        "the walk lists exactly the starting tenants, once each, in order"
    );

    // A fresh listing shows the writes.
    let now = op(&gw, "GET", "/v1/tenants?limit=1000", None).await;
    let now = page_ids(&now);
    assert!(now.contains(&"a0".to_string()) && !now.contains(&"t03".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_whose_generation_is_no_longer_kept_is_gone_and_junk_cursors_are_refused() {
    let (gw, _p) = with_acme().await;
    let walk = op(&gw, "GET", "/v1/tenants?limit=1", None).await;
    let cursor = walk.json["next_cursor"].as_str().expect("cursor").to_string();
    // Five later walks, each of a newer generation, push the first one's
    // generation out of those kept (four older than the live one).
    for i in 0..5 {
        let r = op(&gw, "PUT", &format!("/v1/tenants/n{i}"), Some(json!({"pool": "p"}))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let r = op(&gw, "GET", "/v1/tenants?limit=1", None).await;
        assert!(r.json["next_cursor"].is_string());
    }
    let gone = op(&gw, "GET", &format!("/v1/tenants?limit=1&cursor={cursor}"), None).await;
    gone.problem(410, "cursor-expired");
    assert!(
        gone.json["detail"]
            .as_str()
            .is_some_and(|d| d.contains("without cursor")),
        "{}",
        gone.text
    );
    // A cursor of another gateway instance (as before a restart).
    let other = format!("{:016x}{:016x}61636d65", 0, 1);
    op(&gw, "GET", &format!("/v1/tenants?limit=1&cursor={other}"), None)
        .await
        .problem(410, "cursor-expired");
    // A cursor as older versions made it (a bare id), and made-up ones.
    let bare: String = "acme".bytes().map(|b| format!("{b:02x}")).collect();
    for junk in [bare.as_str(), "zz", "00"] {
        op(&gw, "GET", &format!("/v1/tenants?cursor={junk}"), None)
            .await
            .problem(400, "bad-request");
    }
}
