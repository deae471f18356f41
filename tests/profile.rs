//! The tenant's edge profile: feature flags, locale, region and branding
//! merged plan < template < tenant, carried to the backend as trusted
//! headers and to the browser as `tenant.json`; feature-gated paths;
//! maintenance mode; branded error pages; data residency. Real gateway
//! process, real echo backends, real HTTP/1.1 and HTTP/2 clients.
//! (Tests in a headless browser are not part of this suite.)

mod common;

use std::process::Command;

use common::{backend, https_client, Echo, Gateway, BIN};
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;

const OPS: &str = "ops-secret-0123456789";
const ACME: &str = "acme-secret-0123456789";

/// A gateway config: plans, a template, tenants `acme` (template, own
/// changes), `beta` (plan only) and `plain` (no profile), all on `pool`.
fn config(pool: &str, extra: &str) -> String {
    format!(
        r##"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
https_listen = "{{https}}"
{extra}

[tls]
issuer = "internal"
redirect_http = false

[pools.eu]
upstreams = ["{pool}"]
region = "eu"

[pools.us]
upstreams = ["{pool}"]
region = "us"

[pools.any]
upstreams = ["{pool}"]

[plans.pro]
features = ["sso", "reports", "audit"]
locale = {{ language = "en", currency = "USD", timezone = "UTC", date_format = "YYYY-MM-DD" }}
branding = {{ primary_color = "#111111", secondary_color = "#eeeeee" }}

[plans.free]
features = ["reports"]

[templates.europe]
plan = "pro"
pool = "eu"
region = "eu"
features = ["beta", "-audit"]
locale = {{ language = "de", currency = "EUR", timezone = "Europe/Berlin" }}
labels = {{ billing = "template" }}

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{ops}"

[[admin.tokens]]
name = "acme-admin"
scope = "tenant:acme"
sha256 = "{acme}"

[[tenants]]
id = "acme"
template = "europe"
domains = ["acme.example"]
features = ["-sso", "labs"]
locale = {{ date_format = "DD.MM.YYYY" }}
branding = {{ name = "Acme <GmbH>", primary_color = "#0a7", logo_url = "https://cdn.acme.example/logo.svg" }}
labels = {{ secret = "do-not-show" }}

[[tenants]]
id = "beta"
domains = ["beta.example"]
plan = "free"
pool = "us"
region = "us"

[[tenants]]
id = "plain"
domains = ["plain.example"]
plan = "unlimited"
pool = "any"
"##,
        ops = hash_hex(OPS),
        acme = hash_hex(ACME),
    )
}

async fn start(extra: &str) -> (Gateway, tenantgate::demo::EchoBackend) {
    let b = backend("b").await;
    let gw = Gateway::start(&config(&b.addr.to_string(), extra)).await;
    (gw, b)
}

/// The echo backend's view of a GET on `host` with `headers`.
async fn echo(gw: &Gateway, host: &str, headers: &[(&str, &str)]) -> Echo {
    let (status, body) = gw.get_with(host, "/", headers).await;
    assert_eq!(status, 200, "{body}");
    Echo::parse(&body)
}

#[tokio::test]
async fn the_profile_merges_plan_template_tenant_and_reaches_the_backend_as_trusted_headers() {
    let (gw, _b) = start("").await;
    let forged = [
        ("X-Tenant-Features", "admin,everything"),
        ("x_tenant_features", "admin"),
        ("X-TENANT-REGION", "us"),
        ("X_Tenant_Region", "us"),
    ];
    let e = echo(&gw, "acme.example", &forged).await;
    // pro grants sso, reports, audit; europe adds beta, drops audit; acme
    // drops sso, adds labs.
    assert_eq!(e.header_all("x-tenant-features"), ["beta,labs,reports"]);
    assert_eq!(e.header_all("x-tenant-region"), ["eu"]);
    // Locale headers are off by default.
    assert_eq!(e.header("x-tenant-language"), None);
    let text = e.0.to_string();
    assert!(!text.contains("admin") && !text.contains("everything"), "{text}");

    let e = echo(&gw, "beta.example", &[]).await;
    assert_eq!(e.header_all("x-tenant-features"), ["reports"]);
    assert_eq!(e.header_all("x-tenant-region"), ["us"]);
    // No region, no features: an empty features header, no region header,
    // and forged copies still dropped.
    let e = echo(&gw, "plain.example", &forged).await;
    assert_eq!(e.header_all("x-tenant-features"), [""]);
    assert!(e.header_all("x-tenant-region").is_empty());
    assert!(e.header_all("x_tenant_region").is_empty() && e.header_all("X_Tenant_Region").is_empty());
}

#[tokio::test]
async fn profile_header_names_are_configurable_and_locale_headers_can_be_turned_on() {
    let extra = "\n[profile.headers]\nfeatures = \"x-flags\"\nregion = \"\"\nlanguage = \"x-tenant-language\"\ncurrency = \"x-currency\"\ndate_format = \"x-date-format\"\n";
    // [profile] tables go after [gateway]'s keys: append them at the end.
    let b = backend("b").await;
    let text = format!("{}{extra}", config(&b.addr.to_string(), ""));
    let gw = Gateway::start(&text).await;
    let e = echo(
        &gw,
        "acme.example",
        &[("x-flags", "forged"), ("X-Tenant-Region", "forged")],
    )
    .await;
    assert_eq!(e.header_all("x-flags"), ["beta,labs,reports"]);
    assert_eq!(e.header_all("x-tenant-language"), ["de"]);
    assert_eq!(e.header_all("x-currency"), ["EUR"]);
    assert_eq!(e.header_all("x-date-format"), ["DD.MM.YYYY"]);
    // Region is off here: the client's copy is forwarded as any header.
    assert_eq!(e.header_all("x-tenant-region"), ["forged"]);
    assert_eq!(e.header("x-tenant-features"), None);
}

#[tokio::test]
async fn tenant_json_is_answered_by_the_gateway_with_a_strong_etag_on_http1_and_http2() {
    let (gw, b) = start("").await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("internal CA root");
    let mut etags = Vec::new();
    for http1 in [true, false] {
        let client = https_client(&root, &["acme.example"], gw.https, http1);
        let url = format!("https://acme.example:{}/.well-known/tenant.json", gw.https.port());
        let resp = client.get(&url).send().await.expect("tenant.json");
        let want = if http1 {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!((resp.status().as_u16(), resp.version()), (200, want));
        let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(String::from);
        let etag = h("etag").expect("etag");
        assert!(etag.starts_with('"') && !etag.starts_with("W/"), "strong: {etag}");
        assert_eq!(h("cache-control").as_deref(), Some("public, max-age=60"));
        assert_eq!(h("content-type").as_deref(), Some("application/json"));
        let v: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
        assert_eq!(
            v,
            json!({
                "tenant": "acme",
                "branding": {"name": "Acme <GmbH>", "primary_color": "#0a7", "secondary_color": "#eeeeee",
                             "logo_url": "https://cdn.acme.example/logo.svg"},
                "features": ["beta", "labs", "reports"],
                "locale": {"language": "de", "currency": "EUR", "timezone": "Europe/Berlin", "date_format": "DD.MM.YYYY"},
            })
        );
        let resp = client
            .get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("conditional");
        assert_eq!(resp.status().as_u16(), 304);
        assert_eq!(
            resp.headers().get("etag").and_then(|v| v.to_str().ok()),
            Some(etag.as_str())
        );
        assert_eq!(resp.bytes().await.expect("empty").len(), 0);
        let resp = client
            .get(&url)
            .header("if-none-match", "\"stale\"")
            .send()
            .await
            .expect("stale tag");
        assert_eq!(resp.status().as_u16(), 200);
        let resp = client.post(&url).body("x").send().await.expect("post");
        assert_eq!(resp.status().as_u16(), 405);
        etags.push(etag);
    }
    assert_eq!(etags[0], etags[1], "one representation, one tag, on both protocols");
    // Never labels, limits or the region; and never a backend hop.
    let (status, body) = gw.get("acme.example", "/.well-known/tenant.json?x=1").await;
    assert_eq!(status, 200);
    assert!(
        !body.contains("do-not-show") && !body.contains("billing") && !body.contains("\"eu\""),
        "{body}"
    );
    assert_eq!(b.count(), 0, "tenant.json never reaches the backend");
    let (status, body) = gw.get("beta.example", "/.well-known/tenant.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["features"],
        json!(["reports"])
    );
}

#[tokio::test]
async fn the_tenant_json_path_is_configurable() {
    let b = backend("b").await;
    let text = format!(
        "{}\n[profile]\ntenant_json_path = \"/_edge/profile\"\n",
        config(&b.addr.to_string(), "")
    );
    let gw = Gateway::start(&text).await;
    let (status, body) = gw.get("acme.example", "/_edge/profile").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"tenant\":\"acme\""), "{body}");
    // The default path is the tenant's own again.
    let (status, body) = gw.get("acme.example", "/.well-known/tenant.json").await;
    assert_eq!(status, 200);
    assert_eq!(Echo::parse(&body).backend(), "b");
}

#[tokio::test]
async fn feature_gated_paths_are_404_at_the_edge_for_tenants_without_the_feature() {
    let b = backend("b").await;
    let text = format!(
        "{}\n[features.labs]\npaths = [\"/labs\"]\n[features.sso]\npaths = [\"/sso/\"]\n",
        config(&b.addr.to_string(), "")
    );
    let gw = Gateway::start(&text).await;
    // acme has labs, not sso; beta has neither.
    assert_eq!(gw.get("acme.example", "/labs/x").await.0, 200);
    let before = b.count();
    for (host, path) in [
        ("acme.example", "/sso/login"),
        ("beta.example", "/labs"),
        ("beta.example", "/labs/x?y=1"),
        ("beta.example", "/%6Cabs/x"),
        ("beta.example", "//labs/x"),
        ("beta.example", "/a/../labs/x"),
        ("beta.example", "/./labs"),
    ] {
        let (status, body) = gw.get(host, path).await;
        assert_eq!(status, 404, "{host}{path}: {body}");
        let v: Value = serde_json::from_str(&body).expect("problem+json");
        assert_eq!(v["type"], "tag:tenantgate,2026:feature-off");
    }
    assert_eq!(b.count(), before, "gated paths never reach the backend");
    assert_eq!(gw.get("beta.example", "/labsx").await.0, 200);
    gw.wait_metric("tenantgate_rejections_total{reason=\"feature_off\"}", 7.0)
        .await;
}

#[tokio::test]
async fn maintenance_answers_503_with_retry_after_lets_the_allow_list_through_and_keeps_tenant_json() {
    let (gw, b) = start("").await;
    let gw = &gw;
    let put = |body: Value| async move {
        gw.admin_call("PUT", "/v1/tenants/shop", Some(OPS), Some(&body), &[])
            .await
    };
    let r = put(json!({"domains": ["shop.example"], "pool": "any", "plan": "free",
                       "maintenance": {"retry_after": 120}}))
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["maintenance"], json!({"retry_after": 120}));
    let resp = reqwest::Client::new()
        .get(format!("http://{}/checkout", gw.http))
        .header("host", "shop.example")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("120")
    );
    let v: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("problem");
    assert_eq!(v["type"], "tag:tenantgate,2026:maintenance");
    assert_eq!(b.count(), 0);
    let (status, body) = gw.get("shop.example", "/.well-known/tenant.json").await;
    assert_eq!(status, 200, "tenant.json keeps answering: {body}");

    // An end time: Retry-After counts down to it.
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600);
    let (status, r) = merge_patch(
        gw,
        OPS,
        "shop",
        json!({"maintenance": {"until": until.to_string(), "retry_after": null}}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let resp = reqwest::Client::new()
        .get(format!("http://{}/", gw.http))
        .header("host", "shop.example")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    let secs: u32 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((590..=600).contains(&secs), "{secs}");

    // An end time in the past: over by itself.
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let r = put(json!({"domains": ["shop.example"], "pool": "any", "plan": "free",
                       "maintenance": {"until": past.to_string()}}))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(gw.get("shop.example", "/").await.0, 200);
    gw.wait_metric("tenantgate_rejections_total{reason=\"maintenance\"}", 2.0)
        .await;

    // A switch: true is on with no end time (default Retry-After 300), false is off.
    let r = put(json!({"domains": ["shop.example"], "pool": "any", "plan": "free", "maintenance": true})).await;
    assert_eq!((r.status, &r.json["maintenance"]), (200, &json!({})));
    let resp = reqwest::Client::new()
        .get(format!("http://{}/", gw.http))
        .header("host", "shop.example")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("300")
    );
    let r = put(json!({"domains": ["shop.example"], "pool": "any", "plan": "free", "maintenance": false})).await;
    assert_eq!((r.status, &r.json["maintenance"]), (200, &Value::Null));
    assert_eq!(gw.get("shop.example", "/").await.0, 200);
}

#[tokio::test]
async fn maintenance_of_a_pool_holds_its_tenants_and_the_allow_list_passes_through() {
    let b = backend("b").await;
    let with_pool_maintenance =
        config(&b.addr.to_string(), "").replace("[pools.us]\n", "[pools.us]\nmaintenance = { retry_after = 30 }\n");
    let gw = Gateway::start(&with_pool_maintenance).await;
    let (status, _) = gw.get("beta.example", "/").await;
    assert_eq!(status, 503);
    assert_eq!(gw.get("acme.example", "/").await.0, 200, "other pools are served");
    // The operator's own addresses pass (the test client is on loopback).
    gw.write_config(&format!(
        "{with_pool_maintenance}\n[profile]\nmaintenance_allow = [\"127.0.0.0/8\", \"::1\"]\n"
    ));
    gw.wait_status("beta.example", 200).await;
}

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

#[tokio::test]
async fn error_pages_are_branded_per_tenant_and_language_escaped_and_json_for_json_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pages = dir.path().join("pages");
    std::fs::create_dir_all(pages.join("acme")).expect("mkdir");
    std::fs::write(
        pages.join("acme/502.de.html"),
        "<h1 style=\"color:{{ primary_color }}\">{{ name }}: Dienst nicht erreichbar ({{ status }})</h1>",
    )
    .expect("write");
    std::fs::write(
        pages.join("acme/502.fr.html"),
        "<h1>{{ name }}: service injoignable</h1>",
    )
    .expect("write");
    std::fs::write(
        pages.join("maintenance.html"),
        "<p lang=\"{{ language }}\">{{ name }} is under maintenance, back in {{ retry_after }} s</p>",
    )
    .expect("write");
    // A closed port: every exchange fails with 502 (marked down for 1 ms
    // only, so each request tries it again rather than getting the 503 of a
    // pool with nothing available).
    let closed = format!("127.0.0.1:{}", common::free_port());
    let text = format!(
        "{}\n[profile]\npages_dir = \"pages\"\n",
        config(&closed, "upstream_down_ms = 1")
    )
    .replace("[pools.us]\n", "[pools.us]\nmaintenance = { retry_after = 30 }\n");
    let gw = Gateway::start_in(dir, &text).await;

    let get = |host: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let gw = &gw;
        async move {
            let (status, body) = gw.get_with(host, "/", &headers).await;
            (status, body)
        }
    };
    let (status, body) = get(
        "acme.example",
        vec![("accept", BROWSER), ("accept-language", "de-DE,de;q=0.9")],
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        "<h1 style=\"color:#0a7\">Acme &lt;GmbH&gt;: Dienst nicht erreichbar (502)</h1>"
    );
    let (_, body) = get(
        "acme.example",
        vec![("accept", BROWSER), ("accept-language", "fr-CH, de;q=0.5")],
    )
    .await;
    assert_eq!(body, "<h1>Acme &lt;GmbH&gt;: service injoignable</h1>");
    // No template in the client's language: the tenant's default (de).
    let (_, body) = get("acme.example", vec![("accept", BROWSER), ("accept-language", "ja")]).await;
    assert!(body.contains("Dienst nicht erreichbar"), "{body}");
    // A tenant without pages of its own: the safe built-in page.
    let (status, body) = get("plain.example", vec![("accept", BROWSER)]).await;
    assert_eq!(status, 502);
    assert!(
        body.starts_with("<!doctype html>") && body.contains("502 Bad Gateway"),
        "{body}"
    );
    assert!(!body.contains("<script"), "{body}");
    // JSON clients get a problem; others the plain answer.
    let (status, body) = get("acme.example", vec![("accept", "application/json")]).await;
    assert_eq!(status, 502);
    let v: Value = serde_json::from_str(&body).expect("problem+json");
    assert_eq!(
        (v["status"].as_u64(), v["type"].as_str()),
        (Some(502), Some("tag:tenantgate,2026:bad-gateway"))
    );
    let (_, body) = get("acme.example", vec![]).await;
    assert_eq!(body, "502 Bad Gateway\n");
    // Maintenance (of beta's pool): the page for all tenants.
    let (status, body) = get("beta.example", vec![("accept", BROWSER)]).await;
    assert_eq!(status, 503);
    assert_eq!(body, "<p lang=\"en\">beta is under maintenance, back in 30 s</p>");

    // The same answers over HTTP/2.
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("internal CA root");
    let client = https_client(&root, &["acme.example", "beta.example"], gw.https, false);
    let url = |host: &str| format!("https://{host}:{}/", gw.https.port());
    let resp = client
        .get(url("acme.example"))
        .header("accept", BROWSER)
        .header("accept-language", "de")
        .send()
        .await
        .expect("h2 502");
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (502, reqwest::Version::HTTP_2)
    );
    assert_eq!(
        resp.headers().get("vary").and_then(|v| v.to_str().ok()),
        Some("accept, accept-language")
    );
    assert!(resp.text().await.expect("body").contains("Dienst nicht erreichbar"));
    let resp = client
        .get(url("beta.example"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("h2 503");
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    let v: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("problem");
    assert_eq!(v["type"], "tag:tenantgate,2026:maintenance");
}

#[tokio::test]
async fn rate_limited_browsers_get_the_tenants_429_page_and_api_clients_the_problem() {
    let b = backend("b").await;
    let text =
        config(&b.addr.to_string(), "").replace("[plans.free]\n", "[plans.free]\nrequests_per_second = 1\nburst = 1\n");
    let gw = Gateway::start(&text).await;
    assert_eq!(gw.get("beta.example", "/").await.0, 200);
    let (status, body) = gw.get_with("beta.example", "/", &[("accept", BROWSER)]).await;
    assert_eq!(status, 429);
    assert!(
        body.contains("429 Too Many Requests") && body.contains("<html"),
        "{body}"
    );
    let (status, body) = gw
        .get_with("beta.example", "/", &[("accept", "application/json")])
        .await;
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["type"],
        "tag:tenantgate,2026:rate-limited"
    );
}

#[tokio::test]
async fn a_replica_with_a_region_refuses_other_regions_tenants_with_421_unless_told_not_to() {
    let (gw, b) = start("region = \"eu\"").await;
    assert_eq!(gw.get("acme.example", "/").await.0, 200);
    assert_eq!(gw.get("plain.example", "/").await.0, 200, "no region: served anywhere");
    let before = b.count();
    let (status, body) = gw.get("beta.example", "/").await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(b.count(), before);
    assert_eq!(gw.get("beta.example", "/.well-known/tenant.json").await.0, 421);
    gw.wait_metric("tenantgate_region_requests_total{region=\"eu\"}", 1.0)
        .await;
    gw.wait_metric("tenantgate_rejections_total{reason=\"other_region\"}", 2.0)
        .await;
    assert!(
        gw.log().contains("region=\"eu\"") || gw.log().contains("region=eu"),
        "{}",
        gw.log()
    );
    drop(gw);

    let (gw, _b) = start("region = \"eu\"\nrefuse_other_regions = false").await;
    assert_eq!(gw.get("beta.example", "/").await.0, 200);
}

/// `tenantgate check` on `text`: exit code and output.
fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).expect("write");
    let pages = dir.path().join("pages");
    std::fs::create_dir_all(&pages).expect("mkdir");
    std::fs::write(pages.join("502.html"), "<p>{{ name }} {{ password }}</p>").expect("write");
    std::fs::write(pages.join("504.html"), "<p>{{ name </p>").expect("write");
    let out = Command::new(BIN).arg("check").arg(&path).output().expect("check");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all)
}

#[test]
fn residency_and_bad_profile_values_are_refused_naming_file_tenant_field_and_fix() {
    let base = config("127.0.0.1:9", "");
    let (code, out) = check(&format!("{base}\n[profile]\npages_dir = \"pages\"\n").replace(
        "plan = \"free\"\npool = \"us\"",
        "plan = \"free\"\npool = \"eu\"\nfeatures = [\"Bad Flag\"]\nbranding = { primary_color = \"red\", logo_url = \"javascript:alert(1)\" }\nlocale = { currency = \"euro\", language = \"not a tag\" }",
    ));
    assert_eq!(code, 1, "{out}");
    for needle in [
        "tenant \"beta\": tenants[1].pool: tenant region \"us\" but pool \"eu\" is in region \"eu\"; fix: point the tenant at a pool of its region",
        "tenant \"beta\": tenants[1].features[0]: feature \"Bad Flag\"",
        "tenants[1].branding.primary_color: \"red\" is not a colour",
        "tenants[1].branding.logo_url: \"javascript:alert(1)\" is not an https:// URL",
        "tenants[1].locale.currency: \"euro\" is not an ISO 4217 currency code",
        "tenants[1].locale.language",
        "profile.pages_dir: error page pages/502.html: unknown placeholder {{ password }}",
        "profile.pages_dir: error page pages/504.html: a {{ is not closed by }}",
    ] {
        let line = out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not in:\n{out}"));
        assert!(line.contains("gw.toml"), "names the file: {line}");
        assert!(line.contains("fix: "), "says the fix: {line}");
    }
    // A region on a pool without one is refused too, naming both sides.
    let (code, out) = check(&base.replace("pool = \"us\"\nregion = \"us\"", "pool = \"any\"\nregion = \"us\""));
    assert_eq!(code, 1);
    assert!(
        out.contains("tenant region \"us\" but pool \"any\" is in no region"),
        "{out}"
    );
}

#[tokio::test]
async fn the_api_edits_the_profile_refuses_residency_breaks_and_bounds_tenant_tokens() {
    let b = backend("b").await;
    let text = format!(
        "{}\n[profile]\ntenant_editable = [\"branding\"]\n",
        config(&b.addr.to_string(), "")
    )
    .replace("scope = \"tenant:acme\"", "scope = \"tenant:acme2\"");
    let gw = Gateway::start(&text).await;
    let patch = |token: &'static str, body: Value| {
        let gw = &gw;
        async move {
            let (status, json) = merge_patch(gw, token, "acme2", body).await;
            common::AdminResponse {
                status,
                etag: None,
                content_type: None,
                json,
            }
        }
    };
    let body = json!({"domains": ["app.acme.io"], "template": "europe", "branding": {"name": "Acme"}});
    let r = gw
        .admin_call("PUT", "/v1/tenants/acme2", Some(OPS), Some(&body), &[])
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["branding"], json!({"name": "Acme"}));
    let tag1 = tenant_json_etag(&gw, "app.acme.io").await;

    // Data residency: a pool of another region is refused, naming all.
    let r = patch(OPS, json!({"pool": "us"})).await;
    assert_eq!(r.status, 422, "{:?}", r.json);
    let detail = r.json.to_string();
    for n in ["acme2", "region \\\"eu\\\"", "pool \\\"us\\\"", "region \\\"us\\\""] {
        assert!(detail.contains(n), "{n} in {detail}");
    }

    // A preview shows the profile change, field by field.
    let batch = json!({"changes": [{"op": "put", "tenant": {"id": "acme2", "domains": ["app.acme.io"],
        "template": "europe", "branding": {"name": "Acme"}, "features": ["labs"]}}]});
    let r = gw
        .admin_call("POST", "/v1/changes/preview", Some(OPS), Some(&batch), &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let fields = &r.json.to_string();
    assert!(fields.contains("\"features\""), "{fields}");

    let r = patch(OPS, json!({"features": ["labs"]})).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    // pro: sso, reports, audit; europe: +beta -audit; acme2: +labs.
    let seen = echo(&gw, "app.acme.io", &[]).await;
    assert_eq!(seen.header_all("x-tenant-features"), ["beta,labs,reports,sso"]);
    let tag2 = tenant_json_etag(&gw, "app.acme.io").await;
    assert_ne!(tag1, tag2, "a profile change is a new ETag");

    // The tenant's own token: branding yes (the operator allows it), the rest no.
    let r = patch(
        ACME,
        json!({"branding": {"name": "Acme Two", "primary_color": "#123456"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let (_, body) = gw.get("app.acme.io", "/.well-known/tenant.json").await;
    assert!(body.contains("\"name\":\"Acme Two\""), "{body}");
    for forbidden in [
        json!({"features": ["everything"]}),
        json!({"region": "us"}),
        json!({"maintenance": {"retry_after": 5}}),
        json!({"labels": {"tier": "gold"}}),
    ] {
        let r = patch(ACME, forbidden.clone()).await;
        assert_eq!(r.status, 403, "{forbidden}: {:?}", r.json);
        assert!(
            r.json["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("tenant_editable"),
            "{:?}",
            r.json
        );
    }
    // A bad value from a tenant token is refused like any other.
    let r = patch(ACME, json!({"branding": {"logo_url": "javascript:alert(1)"}})).await;
    assert_eq!(r.status, 422, "{:?}", r.json);
}

/// `PATCH /v1/tenants/<id>` with a JSON Merge Patch: status and body.
async fn merge_patch(gw: &Gateway, token: &str, id: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .patch(format!("http://{}/v1/tenants/{id}", gw.admin))
        .bearer_auth(token)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .expect("patch sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The ETag of `host`'s tenant.json.
async fn tenant_json_etag(gw: &Gateway, host: &str) -> String {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/.well-known/tenant.json", gw.http))
        .header("host", host)
        .send()
        .await
        .expect("tenant.json");
    assert_eq!(resp.status().as_u16(), 200);
    resp.headers()["etag"].to_str().expect("ascii").to_string()
}
