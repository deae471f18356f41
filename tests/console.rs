//! The operator console against the real binary: every console answer
//! carries the strict headers, a tenant token sees only its own tenant, a
//! cross-site form cannot act, the top-tenant rankings follow real traffic
//! (and export at most K series), and a real headless Chromium signs in,
//! finds a tenant among 10,000, watches the top-tenants table change under
//! load, rolls back a version and re-checks a domain
//! (tests/console_browser.py, driven through Selenium and chromedriver).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pebble::Pebble;
use common::{backend, Gateway};
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;
use tenantgate::demo::EchoBackend;

const OPS: &str = "ops-secret-0123456789";
const ACME: &str = "acme-secret-0123456789";

fn config(p: &EchoBackend, extra: &str, tenants: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
base_domains = ["saas.example"]
{extra}

[pools.p]
upstreams = ["{p}"]

[pools.dead]
upstreams = ["127.0.0.1:1"]

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{ops}"

[[admin.tokens]]
name = "acme-admin"
scope = "tenant:acme"
sha256 = "{acme}"

{tenants}
"#,
        p = p.addr,
        ops = hash_hex(OPS),
        acme = hash_hex(ACME),
    )
}

fn tenant(id: &str, pool: &str) -> String {
    format!("[[tenants]]\nid = \"{id}\"\nsubdomain = \"{id}\"\npool = \"{pool}\"\n")
}

/// A raw HTTP/1.1 exchange with the admin listener; the whole answer.
async fn raw_admin(gw: &Gateway, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.admin).await.expect("connect admin");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn assert_strict(resp: &reqwest::Response, what: &str) {
    let csp = header(resp, "content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: CSP {csp:?} lacks {directive}");
    }
    assert!(!csp.contains("unsafe"), "{what}: CSP {csp:?} allows unsafe code");
    assert_eq!(header(resp, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(resp, "x-frame-options"), "DENY", "{what}");
    assert_eq!(header(resp, "referrer-policy"), "no-referrer", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_answer_carries_the_csp_and_security_headers() {
    let p = backend("p").await;
    let gw = Gateway::start(&config(&p, "", &tenant("acme", "p"))).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let base = format!("http://{}", gw.admin);
    // The page, and every file it names, is served with the headers.
    let page = client.get(format!("{base}/console/")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    assert_strict(&page, "/console/");
    assert!(header(&page, "content-type").starts_with("text/html"));
    let html = page.text().await.expect("html");
    let re = regex::Regex::new(r#"(?:src|href)="([^"]+)""#).expect("regex");
    let mut assets = 0;
    for cap in re.captures_iter(&html) {
        let url = &cap[1];
        if url.starts_with('#') || url.starts_with("data:") {
            continue;
        }
        assert!(
            url.starts_with("/console/"),
            "the page names {url}, outside this origin's console"
        );
        let r = client.get(format!("{base}{url}")).send().await.expect("asset");
        assert_eq!(r.status(), 200, "{url}");
        assert_strict(&r, url);
        let want = if url.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(header(&r, "content-type").starts_with(want), "{url}");
        assets += 1;
    }
    assert_eq!(assets, 3, "console.css, chart.js and console.js");
    // Redirects, misses, wrong methods, HEAD and sneaky paths too.
    for (method, path, status) in [
        ("GET", "/console", 308),
        ("GET", "/console/nope.js", 404),
        ("POST", "/console/", 405),
        ("DELETE", "/console/console.js", 405),
        ("HEAD", "/console/console.js", 200),
        ("OPTIONS", "/console/", 204),
    ] {
        let r = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{base}{path}"),
            )
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert_strict(&r, &format!("{method} {path}"));
    }
    // A raw request whose target is not normalised by a client.
    // Raw targets that a client would normalise: never the API, never without headers.
    for target in [
        "/console/../console/",
        "/console/../v1/tenants",
        "/console/%2e%2e/v1/tenants",
    ] {
        let raw = raw_admin(
            &gw,
            &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 404"), "{target}: {raw}");
        assert!(
            raw.to_ascii_lowercase()
                .contains("content-security-policy: default-src 'self'"),
            "{raw}"
        );
    }
    // The API's JSON is never sniffed nor framed either.
    let api = client
        .get(format!("{base}/v1/session"))
        .bearer_auth(OPS)
        .send()
        .await
        .expect("session");
    assert_eq!(header(&api, "x-content-type-options"), "nosniff");
    assert!(header(&api, "content-security-policy").contains("frame-ancestors 'none'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_sees_only_its_own_tenant_and_no_platform_stats() {
    let p = backend("p").await;
    let gw = Gateway::start(&config(&p, "", &[tenant("acme", "p"), tenant("globex", "p")].concat())).await;
    let s = gw.admin_call("GET", "/v1/session", Some(ACME), None, &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.json,
        json!({"name": "acme-admin", "scope": "tenant", "tenant": "acme"})
    );
    let s = gw.admin_call("GET", "/v1/session", Some(OPS), None, &[]).await;
    assert_eq!(s.json["scope"], "operator");
    assert_eq!(s.json["tenant"], Value::Null);
    for path in [
        "/v1/stats/top",
        "/v1/stats/overview",
        "/v1/stats/series",
        "/v1/stats/domains",
        "/v1/stats/pools",
        "/v1/tenants",
        "/v1/tenants?id_prefix=glo",
        "/v1/tenants/globex",
        "/v1/versions",
    ] {
        let r = gw.admin_call("GET", path, Some(ACME), None, &[]).await;
        assert_eq!(r.status, 403, "{path}: {}", r.json);
        assert!(!r.json.to_string().contains("globex\""), "{path} leaks another tenant");
        let anon = gw.admin_call("GET", path, None, None, &[]).await;
        assert_eq!(anon.status, 401, "{path} without a token");
    }
    assert_eq!(
        gw.admin_call("GET", "/v1/tenants/acme", Some(ACME), None, &[])
            .await
            .status,
        200
    );
    // id_prefix searches ids.
    let r = gw
        .admin_call("GET", "/v1/tenants?id_prefix=glo", Some(OPS), None, &[])
        .await;
    let ids: Vec<&str> = r.json["tenants"]
        .as_array()
        .expect("page")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["globex"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_post_cannot_act() {
    let p = backend("p").await;
    let gw = Gateway::start(&config(&p, "", &tenant("acme", "p"))).await;
    // Version 1 exists: a write through the API.
    let put = gw
        .admin_call("PUT", "/v1/tenants/victim", Some(OPS), Some(&json!({"pool": "p"})), &[])
        .await;
    assert_eq!(put.status, 201, "{}", put.json);
    let versions = |r: common::AdminResponse| r.json["versions"].as_array().map(Vec::len).unwrap_or(0);
    let before = versions(gw.admin_call("GET", "/v1/versions", Some(OPS), None, &[]).await);
    // What a form on another site makes a browser send: no Authorization
    // (the console never uses cookies, so any cookie is worthless).
    let form = "POST /v1/versions/1/rollback HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\n\
Sec-Fetch-Site: cross-site\r\nCookie: session=stolen\r\nContent-Type: application/x-www-form-urlencoded\r\n\
Content-Length: 3\r\nConnection: close\r\n\r\na=b";
    let resp = raw_admin(&gw, &form.replace("{host}", &gw.admin.to_string())).await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    // Even carrying a valid token, a browser-flagged cross-site write is refused.
    let with_token = form.replace("Cookie: session=stolen", &format!("Authorization: Bearer {OPS}"));
    let resp = raw_admin(&gw, &with_token.replace("{host}", &gw.admin.to_string())).await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    // A form-encoded DELETE stand-in, without the browser's marker: no token, no action.
    let delete = format!(
        "DELETE /v1/tenants/victim HTTP/1.1\r\nHost: {}\r\nOrigin: https://evil.example\r\nCookie: session=stolen\r\nConnection: close\r\n\r\n",
        gw.admin
    );
    assert!(raw_admin(&gw, &delete).await.starts_with("HTTP/1.1 401"));
    // A preflight gets no CORS grant, so no other origin's script may send the token.
    let preflight = format!(
        "OPTIONS /v1/tenants/victim HTTP/1.1\r\nHost: {}\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: DELETE\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n",
        gw.admin
    );
    let resp = raw_admin(&gw, &preflight).await.to_ascii_lowercase();
    assert!(!resp.contains("access-control-allow-origin"), "{resp}");
    // Nothing happened.
    assert_eq!(
        gw.admin_call("GET", "/v1/tenants/victim", Some(OPS), None, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        versions(gw.admin_call("GET", "/v1/versions", Some(OPS), None, &[]).await),
        before
    );
    // The same-origin console's way (token in the header, same-origin) works.
    let ok = gw
        .admin_call(
            "POST",
            "/v1/versions/1/rollback?dry_run=true",
            Some(OPS),
            None,
            &[("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.json);
}

/// Sends `n` requests for `host` on the plain listener, `conns` at a time.
async fn load(gw: &Gateway, host: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    let client = reqwest::Client::new();
    let url = format!("http://{}/", gw.http);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let calls = chunk.iter().map(|_| client.get(&url).header("host", host).send());
        for r in futures_util::future::join_all(calls).await {
            statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_tenants_follow_real_traffic_and_export_at_most_k_series() {
    let p = backend("p").await;
    let ids = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let mut tenants: String = ids.iter().map(|id| tenant(id, "p")).collect();
    tenants.push_str(&tenant("broken", "dead"));
    let gw = Gateway::start(&config(
        &p,
        "[telemetry]\ntop_tenants = 3\ntenant_label_limit = 2",
        &tenants,
    ))
    .await;
    // A skewed load: alpha > bravo > charlie > the rest; broken answers 502.
    for (id, n) in [
        ("alpha", 120),
        ("bravo", 60),
        ("charlie", 30),
        ("delta", 3),
        ("echo", 2),
        ("foxtrot", 1),
    ] {
        let s = load(&gw, &format!("{id}.saas.example"), n).await;
        assert!(s.iter().all(|s| *s == 200), "{id}: {s:?}");
    }
    // A dead pool: 502 for the first tries, then 503 at once while its only
    // upstream is marked down; 5xx either way.
    let s = load(&gw, "broken.saas.example", 10).await;
    assert!(s.iter().all(|s| *s == 502 || *s == 503), "{s:?}");
    let top = gw
        .admin_call("GET", "/v1/stats/top?by=rps&limit=10", Some(OPS), None, &[])
        .await;
    assert_eq!(top.status, 200);
    assert_eq!(top.json["k"], 3);
    let names: Vec<&str> = top.json["tenants"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["tenant"].as_str())
        .collect();
    assert_eq!(&names[..3], ["alpha", "bravo", "charlie"], "{}", top.json);
    assert!(names.len() <= 3, "at most K rows: {names:?}");
    let errors = gw.admin_call("GET", "/v1/stats/top?by=5xx", Some(OPS), None, &[]).await;
    assert_eq!(errors.json["tenants"][0]["tenant"], "broken", "{}", errors.json);
    assert!(errors.json["tenants"][0]["errors_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    // Prometheus: at most K series per top metric, the busiest named.
    let text = gw.metrics_text().await;
    let series = |name: &str| text.lines().filter(|l| l.starts_with(&format!("{name}{{"))).count();
    let rps = series("tenantgate_top_tenant_requests_per_second");
    assert!((1..=3).contains(&rps), "{rps} series:\n{text}");
    assert!(
        text.contains("tenantgate_top_tenant_requests_per_second{tenant=\"alpha\"}"),
        "{text}"
    );
    assert!(
        text.contains("tenantgate_top_tenant_5xx_per_second{tenant=\"broken\"}"),
        "{text}"
    );
    assert!(series("tenantgate_top_tenant_p99_seconds") <= 3);
    // 7 tenants > tenant_label_limit 2: nobody gets a label of their own.
    assert!(
        !text.contains("tenantgate_requests_total{status_class=\"2xx\",tenant=\"alpha\"}"),
        "{text}"
    );
    assert!(
        common::series_value(
            &text,
            "tenantgate_requests_total{status_class=\"2xx\",tenant=\"_other\"}"
        )
        .unwrap_or(0.0)
            >= 216.0
    );
    // The overview counts what happened.
    let o = gw.admin_call("GET", "/v1/stats/overview", Some(OPS), None, &[]).await;
    assert_eq!(o.status, 200);
    assert_eq!(o.json["tenants"]["total"], 7);
    assert!(
        o.json["since_start"]["requests"].as_u64().unwrap_or(0) >= 226,
        "{}",
        o.json
    );
    assert!(
        o.json["since_start"]["errors_5xx"].as_u64().unwrap_or(0) >= 10,
        "{}",
        o.json
    );
    assert_eq!(o.json["certificates"], Value::Null, "TLS is off");
    // Unknown hosts are refusals by reason, not tenants.
    let s = load(&gw, "nobody.example.org", 5).await;
    assert!(s.iter().all(|s| *s == 421));
    let o = gw.admin_call("GET", "/v1/stats/overview", Some(OPS), None, &[]).await;
    assert_eq!(o.json["since_start"]["refusals"]["unknown_host"], 5, "{}", o.json);
    let pools = gw.admin_call("GET", "/v1/stats/pools", Some(OPS), None, &[]).await;
    let dead = pools.json["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == "dead")
        .cloned()
        .expect("dead pool");
    // Connects are tried until the upstream is marked down; the rest get
    // 503 without one.
    assert!(dead["connect_errors"].as_u64().unwrap_or(0) >= 1, "{dead}");
    assert_eq!(dead["requests"], 10, "{dead}");
    assert_eq!(dead["upstreams"][0]["state"], "down", "{dead}");
    assert_eq!(dead["tenants"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_few_tenants_each_keeps_its_own_label() {
    let p = backend("p").await;
    let gw = Gateway::start(&config(&p, "", &[tenant("acme", "p"), tenant("globex", "p")].concat())).await;
    load(&gw, "acme.saas.example", 3).await;
    gw.wait_metric("tenantgate_requests_total{status_class=\"2xx\",tenant=\"acme\"}", 3.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_tenants_value_past_the_cap_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("dir");
    let p = dir.path().join("tenantgate.toml");
    std::fs::write(
        &p,
        "[gateway]\nhttp_listen = \"127.0.0.1:0\"\n[telemetry]\ntop_tenants = 5000\n[pools.p]\nupstreams = [\"127.0.0.1:9\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .arg("check")
        .arg(&p)
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("telemetry.top_tenants") && err.contains("0 to 1000"),
        "{err}"
    );
}

// ---- the browser ---------------------------------------------------------

const XSS: &str = "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PYTHON: &str = "/usr/bin/python3";

/// Runs the browser script with `args` (its output kept under `shots` as
/// `<name>.out` and `<name>.err`), killed after `limit`; asserts it
/// succeeded and hands back its output.
async fn run_browser(args: &[String], shots: &Path, name: &str, limit: Duration) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console_browser.py");
    let (out_path, err_path) = (shots.join(format!("{name}.out")), shots.join(format!("{name}.err")));
    let started = Instant::now();
    let mut child = std::process::Command::new(PYTHON)
        .arg(&script)
        .args(args)
        .args(["--screenshots", &shots.display().to_string()])
        .env("CHROMIUM", CHROMIUM)
        .env("CHROMEDRIVER", CHROMEDRIVER)
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("python runs");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "browser run failed after {:?} ({status:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        started.elapsed()
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_drives_the_console_end_to_end() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "\n\n!!!!! SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is absent; run scripts/dev setup (Debian chromium, chromium-driver, python3-selenium) !!!!!\n\n"
        );
        return;
    }
    let dns = Pebble::start(common::free_port(), common::free_port(), 3600).await;
    let p = backend("p").await;
    // acme's plan: a burst of 8 is partly refused (429) and its page shows it.
    let extra = format!(
        "[domains]\nverify = \"all\"\nnameservers = [\"{}\"]\ntargets = [\"127.0.0.1\"]\nrecheck_min_secs = 3600\nrecheck_max_secs = 3600\n\n[limits]\ndefault_plan = \"unlimited\"\n\n[plans.small]\nrequests_per_second = 1\nburst = 3\nrequests_per_day = 100000\n\n[rollouts.v2]\nfrom = \"p\"\nto = \"dead\"\n[rollouts.v2.auto_rollback]\nenabled = false\n",
        dns.dns_addr()
    );
    let gw = Gateway::start(&config(&p, &extra, "")).await;
    // 10,000 tenants through one import (version 1 of the history)...
    let mut list: Vec<Value> = (0..10_000)
        .map(|i| json!({"id": format!("t{i:05}"), "subdomain": format!("t{i:05}"), "pool": "p", "labels": {"tier": if i % 2 == 0 { "gold" } else { "free" }}}))
        .collect();
    list.push(json!({"id": "acme", "subdomain": "acme", "pool": "p", "plan": "small"}));
    // Markup in a label value must show as text, never run.
    list[7777]["labels"]["note"] = json!(XSS);
    let export = gw.admin_call("GET", "/v1/export", Some(OPS), None, &[]).await;
    let tag = export.etag.clone().expect("etag");
    let import = gw
        .admin_call(
            "POST",
            "/v1/import",
            Some(OPS),
            Some(&json!({"tenants": list})),
            &[("if-match", &tag)],
        )
        .await;
    assert_eq!(import.status, 200, "{}", import.json);
    // ... then one more change, which the browser will roll back.
    let put = gw
        .admin_call(
            "PUT",
            "/v1/tenants/zz-rollback-me",
            Some(OPS),
            Some(&json!({"pool": "p"})),
            &[],
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.json);
    let versions = gw.admin_call("GET", "/v1/versions", Some(OPS), None, &[]).await;
    let target = versions.json["versions"]
        .as_array()
        .and_then(|v| {
            v.iter()
                .find(|x| x["tenants"].as_array().is_some_and(|t| t.len() > 100))
        })
        .and_then(|x| x["version"].as_u64())
        .expect("the import's version");
    // A custom domain waiting for its proof; the DNS answers it only now,
    // and the next scheduled check is an hour away: the button must do it.
    let claim = gw
        .admin_call(
            "PUT",
            "/v1/tenants/t04242/domains/shop.console-test.example",
            Some(OPS),
            None,
            &[],
        )
        .await;
    assert_eq!(claim.status, 202, "{}", claim.json);
    let record = claim.json["record"]["name"]
        .as_str()
        .expect("the TXT record to create")
        .to_string();
    let token = claim.json["token"].as_str().expect("claim token");
    // The name points here; its ownership record is created by the browser
    // script just before it presses re-check (through challtestsrv).
    dns.add_a_record("shop.console-test.example", "127.0.0.1").await;

    let shots = std::env::var("CONSOLE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| gw.dir().join("screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let args: Vec<String> = [
        "--admin",
        &format!("http://{}", gw.admin),
        "--proxy",
        &gw.http.to_string(),
        "--token",
        OPS,
        "--tenant-token",
        ACME,
        "--find",
        "t07777",
        "--markup",
        XSS,
        "--hot",
        "t00042",
        "--hotter",
        "t09999",
        "--limited",
        "acme",
        "--rollback",
        &target.to_string(),
        "--domain",
        "shop.console-test.example",
        "--dns-admin",
        &format!("http://127.0.0.1:{}", dns.challtestsrv_management_port()),
        "--txt-name",
        &record,
        "--txt-value",
        token,
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    // Bounded: the run is killed after 4 minutes.
    let (stdout, stderr) = run_browser(&args, &shots, "browser", Duration::from_secs(240)).await;
    for step in [
        "signed-in",
        "replicas",
        "found",
        "opened",
        "usage",
        "top-changed",
        "rolled-back",
        "rechecked",
        "tenant-token",
    ] {
        assert!(
            stdout.contains(&format!("STEP {step}")),
            "step {step} missing:\n{stdout}\n{stderr}"
        );
    }
    // What the browser did, seen through the API.
    let gone = gw
        .admin_call("GET", "/v1/tenants/zz-rollback-me", Some(OPS), None, &[])
        .await;
    assert_eq!(gone.status, 404, "the rollback removed the later tenant");
    let kept = gw.admin_call("GET", "/v1/tenants/t07777", Some(OPS), None, &[]).await;
    assert_eq!(kept.status, 200);
    let t = gw.admin_call("GET", "/v1/tenants/t04242", Some(OPS), None, &[]).await;
    assert!(
        t.json["domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n == "shop.console-test.example")),
        "the re-check activated the name: {}",
        t.json
    );
    // The refusals the browser saw are the API's too, for the tenant's own token.
    let usage = gw
        .admin_call("GET", "/v1/tenants/acme/usage", Some(ACME), None, &[])
        .await;
    assert_eq!(usage.status, 200, "{}", usage.json);
    let refusals = usage.json["refusals"].as_array().cloned().unwrap_or_default();
    assert!(
        !refusals.is_empty() && refusals.iter().all(|r| r["status"] == 429 && r["detail"] == "burst"),
        "{}",
        usage.json
    );
    let other = gw
        .admin_call("GET", "/v1/tenants/t07777/usage", Some(ACME), None, &[])
        .await;
    assert_eq!(other.status, 403, "a tenant token reads only its own usage");
    for shot in [
        "signin",
        "overview",
        "tenants",
        "tenant",
        "tenant-usage",
        "top",
        "changes",
        "domains",
    ] {
        let f = shots.join(format!("{shot}.png"));
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        assert!(len > 5_000, "{} missing or empty", f.display());
    }
}

/// The Domains page's "Retry order" button, in a real browser: a name
/// whose orders fail against a dead CA (backed off for an hour) is retried,
/// and the gateway clears its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_retries_a_failing_certificate_order() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        eprintln!("\n\n!!!!! SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is absent !!!!!\n\n");
        return;
    }
    let p = backend("p").await;
    // Nothing listens at the CA: every order fails and backs off an hour.
    let extra = "https_listen = \"{https}\"\n\n[tls]\nissuer = \"acme\"\n\n[tls.acme]\ndirectory_url = \"https://127.0.0.1:1/dir\"\nretry_min_secs = 3600\n";
    let name = "shop.retry-test.example";
    let tenants = format!("[[tenants]]\nid = \"shop\"\ndomains = [\"{name}\"]\npool = \"p\"\n");
    let gw = Gateway::start(&config(&p, extra, &tenants)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = gw.admin_call("GET", "/v1/stats/domains", Some(OPS), None, &[]).await;
        if r.json["certificates"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x["name"] == name))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order never failed: {}\n{}",
            r.json,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = gw
        .admin_call("GET", &format!("/v1/domains/{name}"), Some(OPS), None, &[])
        .await;
    let shots = std::env::var("CONSOLE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| gw.dir().join("screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let args: Vec<String> = [
        "--flow",
        "retry",
        "--admin",
        &format!("http://{}", gw.admin),
        "--token",
        OPS,
        "--domain",
        name,
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let (stdout, _) = run_browser(&args, &shots, "retry", Duration::from_secs(180)).await;
    assert!(stdout.contains("STEP retried"), "{stdout}");
    // The click reached the gateway: the backoff was cleared and the name
    // ordered again at once (it fails again against the dead CA).
    assert!(
        gw.log().contains("certificate backoff cleared through the admin API"),
        "{}",
        gw.log()
    );
    let acme_of = |v: &Value| {
        let nested = &v["certificate"]["acme"];
        if nested.is_null() {
            v["acme"].clone()
        } else {
            nested.clone()
        }
    };
    let before_next = acme_of(&before.json)["next_attempt"].clone();
    assert!(!before_next.is_null(), "{}", before.json);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = gw
            .admin_call("GET", &format!("/v1/domains/{name}"), Some(OPS), None, &[])
            .await;
        let acme = acme_of(&after.json);
        if acme["next_attempt"] != before_next && acme["failures"].as_u64().is_some_and(|f| f >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new attempt after the retry: before {} after {}",
            before.json,
            after.json
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let f = shots.join("domains-retry.png");
    assert!(
        std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0) > 5_000,
        "{} missing",
        f.display()
    );
}
