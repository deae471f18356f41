//! The OpenAPI document describes what the server does: every route of the
//! router is walked with real requests (successes and refusals), and each
//! answer's status, media type and body are checked against the document's
//! schemas.

mod common;

use std::collections::BTreeSet;

use common::{backend, Gateway};
use regex::Regex;
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;

const OPS: &str = "ops-secret-0123456789";
const ACME: &str = "acme-secret-0123456789";

/// A JSON Schema checker for the keywords the document uses.
struct Spec(Value);

impl Spec {
    fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        while let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let mut at = &self.0;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            s = at;
        }
        s
    }

    fn valid(&self, schema: &Value, v: &Value) -> bool {
        let mut errs = Vec::new();
        self.check(schema, v, "", &mut errs);
        errs.is_empty()
    }

    fn check(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let s = self.resolve(schema);
        let fail = |errs: &mut Vec<String>, why: String| errs.push(format!("{at}: {why} (value {v})"));
        if let Some(c) = s.get("const") {
            if c != v {
                fail(errs, format!("not {c}"));
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                fail(errs, "not in enum".into());
            }
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(x) => vec![x.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let ok = types.iter().any(|t| match *t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                _ => false,
            });
            if !ok {
                fail(errs, format!("not of type {t}"));
                return;
            }
        }
        if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
            if !any.iter().any(|x| self.valid(x, v)) {
                fail(errs, "matches no anyOf".into());
            }
        }
        if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
            let n = one.iter().filter(|x| self.valid(x, v)).count();
            if n != 1 {
                fail(errs, format!("matches {n} of oneOf"));
            }
        }
        if let Value::Object(o) = v {
            let props = s.get("properties").and_then(Value::as_object);
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                if let Some(k) = r.as_str() {
                    if !o.contains_key(k) {
                        fail(errs, format!("{k} missing"));
                    }
                }
            }
            if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
                if o.len() as u64 > max {
                    fail(errs, "too many properties".into());
                }
            }
            for (k, x) in o {
                if let Some(names) = s.get("propertyNames") {
                    self.check(names, &json!(k), &format!("{at}/{k} (name)"), errs);
                }
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(p), _) => self.check(p, x, &format!("{at}/{k}"), errs),
                    (None, Some(Value::Bool(false))) => fail(errs, format!("{k} not allowed")),
                    (None, Some(extra @ Value::Object(_))) => self.check(extra, x, &format!("{at}/{k}"), errs),
                    _ => {}
                }
            }
        }
        if let (Value::Array(a), Some(items)) = (v, s.get("items")) {
            for (i, x) in a.iter().enumerate() {
                self.check(items, x, &format!("{at}/{i}"), errs);
            }
        }
        if let Value::String(text) = v {
            let n = text.chars().count() as u64;
            if s.get("minLength").and_then(Value::as_u64).is_some_and(|m| n < m)
                || s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| n > m)
            {
                fail(errs, "length out of bounds".into());
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                let re = Regex::new(p).unwrap_or_else(|e| panic!("pattern {p}: {e}"));
                if !re.is_match(text) {
                    fail(errs, format!("does not match {p}"));
                }
            }
        }
        if let Some(n) = v.as_f64() {
            if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| n < m)
                || s.get("maximum").and_then(Value::as_f64).is_some_and(|m| n > m)
            {
                fail(errs, "out of range".into());
            }
        }
    }
}

/// One exchange, checked against the document.
struct Walk {
    spec: Spec,
    gw: Gateway,
    /// (path template, method) answered with a 2xx or 304.
    succeeded: BTreeSet<(String, String)>,
}

impl Walk {
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Value)>,
        headers: &[(&str, &str)],
        want: u16,
    ) -> (Value, Option<String>) {
        let client = reqwest::Client::new();
        let mut req = client.request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("http://{}{path}", self.gw.admin),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, b)) = &body {
            req = req.header("content-type", *ct).body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("sent");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.expect("body");
        let what = format!("{method} {path} -> {status}");
        assert_eq!(status, want, "{what}: {text}");
        let m = method.to_ascii_lowercase();
        let op = &self.spec.0["paths"][template][&m];
        assert!(op.is_object(), "{what}: {m} {template} is not documented");
        let documented = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{what}: status not documented"));
        let documented = self.spec.resolve(documented);
        let body: Value = match documented.get("content").and_then(Value::as_object) {
            Some(content) => {
                let ct = ct.unwrap_or_else(|| panic!("{what}: no content-type"));
                let schema = &content
                    .get(&ct)
                    .unwrap_or_else(|| panic!("{what}: content-type {ct} not documented"))["schema"];
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
                let mut errs = Vec::new();
                self.spec.check(schema, &v, "", &mut errs);
                assert!(
                    errs.is_empty(),
                    "{what}: body does not match the schema:\n{}\n{text}",
                    errs.join("\n")
                );
                v
            }
            None => {
                assert!(text.is_empty(), "{what}: undocumented body {text}");
                Value::Null
            }
        };
        if (200..300).contains(&status) || status == 304 {
            self.succeeded.insert((template.to_string(), m));
        }
        (body, etag)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_openapi_document_says() {
    let p = backend("p").await;
    let config = format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
https_listen = "{{https}}"
base_domains = ["saas.example"]

# Nothing listens at the CA: orders fail and back off for an hour.
[tls]
issuer = "acme"

[tls.acme]
directory_url = "https://127.0.0.1:1/dir"
retry_min_secs = 3600

# Nothing answers DNS here: checks fail fast, claims stay pending.
[domains]
nameservers = ["127.0.0.1:9"]
dns_timeout_ms = 300

[pools.p]
upstreams = ["{}"]
region = "eu"

[pools.p2]
upstreams = ["{}"]
region = "eu"

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
domains = ["stable.example.com"]
pool = "p"
"#,
        p.addr,
        p.addr,
        hash_hex(OPS),
        hash_hex(ACME)
    );
    let gw = Gateway::start(&config).await;
    let spec = Spec(serde_json::from_str(tenantgate::admin::OPENAPI).expect("document"));
    let mut w = Walk {
        spec,
        gw,
        succeeded: BTreeSet::new(),
    };
    const J: &str = "application/json";
    const MP: &str = "application/merge-patch+json";
    let op = Some(OPS);

    w.call("GET", "/healthz", "/healthz", None, None, &[], 200).await;
    w.call("GET", "/readyz", "/readyz", None, None, &[], 200).await;
    w.call("GET", "/v1/openapi.json", "/v1/openapi.json", None, None, &[], 200)
        .await;

    let t = "/v1/templates/{name}";
    w.call(
        "PUT",
        t,
        "/v1/templates/basic",
        op,
        Some((
            J,
            json!({"pool": "p", "features": ["beta"], "locale": {"language": "de", "currency": "EUR"},
                   "region": "eu", "branding": {"name": "Basic"}, "labels": {"tier": "basic"}}),
        )),
        &[],
        201,
    )
    .await;
    w.call(
        "PUT",
        t,
        "/v1/templates/basic",
        op,
        Some((J, json!({"pool": "p"}))),
        &[("if-none-match", "*")],
        412,
    )
    .await;
    w.call("GET", "/v1/templates", "/v1/templates", op, None, &[], 200)
        .await;
    let (_, tag) = w.call("GET", t, "/v1/templates/basic", op, None, &[], 200).await;
    let tag = tag.expect("template etag");
    w.call(
        "GET",
        t,
        "/v1/templates/basic",
        op,
        None,
        &[("if-none-match", &tag)],
        304,
    )
    .await;
    w.call("GET", t, "/v1/templates/none", op, None, &[], 404).await;
    let (pools, _) = w.call("GET", "/v1/pools", "/v1/pools", op, None, &[], 200).await;
    assert_eq!(pools["pools"][0]["upstreams"][0]["state"], "healthy", "{pools}");
    let pt = "/v1/pools/{name}";
    w.call("GET", pt, "/v1/pools/p", op, None, &[], 200).await;
    w.call("GET", pt, "/v1/pools/none", op, None, &[], 404).await;
    w.call("GET", pt, "/v1/pools/p", Some(ACME), None, &[], 403).await;

    // Rollouts: each change a version, a preview changes nothing.
    let rt = "/v1/rollouts/{name}";
    let r = json!({"from": "p", "to": "p2", "steps": [5, 100], "auto_rollback": {"window_secs": 30}});
    w.call(
        "PUT",
        rt,
        "/v1/rollouts/r?dry_run=true",
        op,
        Some((J, r.clone())),
        &[],
        200,
    )
    .await;
    w.call("GET", rt, "/v1/rollouts/r", op, None, &[], 404).await;
    w.call("PUT", rt, "/v1/rollouts/r", op, Some((J, r.clone())), &[], 201)
        .await;
    w.call(
        "PUT",
        rt,
        "/v1/rollouts/r",
        op,
        Some((J, json!({"from": "p", "to": "p"}))),
        &[],
        422,
    )
    .await;
    w.call("GET", "/v1/rollouts", "/v1/rollouts", op, None, &[], 200).await;
    w.call("GET", "/v1/rollouts", "/v1/rollouts", Some(ACME), None, &[], 403)
        .await;
    w.call("GET", rt, "/v1/rollouts/r", op, None, &[], 200).await;
    let pr = "/v1/rollouts/{name}/promote";
    w.call("POST", pr, "/v1/rollouts/r/promote?dry_run=true", op, None, &[], 200)
        .await;
    w.call("POST", pr, "/v1/rollouts/r/promote", op, None, &[], 200).await;
    w.call("POST", pr, "/v1/rollouts/r/promote?percent=5", op, None, &[], 409)
        .await;
    w.call("POST", pr, "/v1/rollouts/r/promote?percent=101", op, None, &[], 400)
        .await;
    w.call("POST", pr, "/v1/rollouts/none/promote", op, None, &[], 404)
        .await;
    let rb = "/v1/rollouts/{name}/rollback";
    w.call("POST", rb, "/v1/rollouts/r/rollback", op, None, &[], 200).await;
    w.call("DELETE", rt, "/v1/rollouts/r", op, None, &[], 204).await;
    w.call("PUT", rt, "/v1/rollouts/r", op, Some((J, r)), &[], 201).await;
    let co = "/v1/rollouts/{name}/complete";
    w.call("POST", co, "/v1/rollouts/r/complete?dry_run=true", op, None, &[], 200)
        .await;
    w.call("POST", co, "/v1/rollouts/r/complete", op, None, &[], 200).await;

    let id = "/v1/tenants/{id}";
    let acme = json!({"domains": ["a.acme.com"], "template": "basic", "labels": {"region": "eu"},
                      "features": ["-beta", "labs"], "branding": {"primary_color": "#0a7"},
                      "maintenance": {"until": "2026-12-04T13:00:00Z"}});
    w.call("PUT", id, "/v1/tenants/acme", None, Some((J, acme.clone())), &[], 401)
        .await;
    w.call(
        "PUT",
        id,
        "/v1/tenants/acme",
        op,
        Some(("text/plain", acme.clone())),
        &[],
        415,
    )
    .await;
    w.call(
        "PUT",
        id,
        "/v1/tenants/acme",
        op,
        Some((J, json!({"pool": 1}))),
        &[],
        422,
    )
    .await;
    w.call(
        "PUT",
        id,
        "/v1/tenants/acme",
        op,
        Some((J, acme.clone())),
        &[("idempotency-key", "one")],
        201,
    )
    .await;
    w.call(
        "PUT",
        id,
        "/v1/tenants/acme",
        op,
        Some((J, acme.clone())),
        &[("if-match", "\"stale\"")],
        412,
    )
    .await;
    w.call(
        "PUT",
        id,
        "/v1/tenants/other",
        op,
        Some((J, json!({"domains": ["a.acme.com"], "pool": "p"}))),
        &[],
        409,
    )
    .await;
    w.call(
        "PUT",
        id,
        "/v1/tenants/stable",
        op,
        Some((J, json!({"pool": "p"}))),
        &[],
        409,
    )
    .await;
    w.call("GET", "/v1/tenants", "/v1/tenants", op, None, &[], 200).await;
    w.call(
        "GET",
        "/v1/tenants",
        "/v1/tenants?label=region%3Deu&limit=1",
        op,
        None,
        &[],
        200,
    )
    .await;
    w.call("GET", "/v1/tenants", "/v1/tenants?limit=0", op, None, &[], 400)
        .await;
    // A cursor of another gateway instance (as before a restart): 410.
    let other = format!("{:016x}{:016x}61636d65", 0, 1);
    w.call(
        "GET",
        "/v1/tenants",
        &format!("/v1/tenants?cursor={other}"),
        op,
        None,
        &[],
        410,
    )
    .await;
    w.call("GET", "/v1/tenants", "/v1/tenants", Some(ACME), None, &[], 403)
        .await;
    let (_, tag) = w.call("GET", id, "/v1/tenants/acme", Some(ACME), None, &[], 200).await;
    let tag = tag.expect("tenant etag");
    w.call("GET", id, "/v1/tenants/acme", op, None, &[("if-none-match", &tag)], 304)
        .await;
    w.call("GET", id, "/v1/tenants/stable", op, None, &[], 200).await;
    w.call(
        "PATCH",
        id,
        "/v1/tenants/acme",
        op,
        Some((MP, json!({"redirect_https": false}))),
        &[],
        200,
    )
    .await;
    w.call("PATCH", id, "/v1/tenants/acme", op, Some((J, json!({}))), &[], 415)
        .await;
    w.call("PATCH", id, "/v1/tenants/nobody", op, Some((MP, json!({}))), &[], 404)
        .await;

    let d = "/v1/tenants/{id}/domains/{name}";
    // A tenant token's new name is a pending claim (202), the same claim
    // when sent again; an operator's is active at once (201, then 200).
    for _ in 0..2 {
        w.call(
            "PUT",
            d,
            "/v1/tenants/acme/domains/b.acme.com",
            Some(ACME),
            None,
            &[],
            202,
        )
        .await;
    }
    w.call("PUT", d, "/v1/tenants/acme/domains/c.acme.com", op, None, &[], 201)
        .await;
    w.call("PUT", d, "/v1/tenants/acme/domains/C.acme.com.", op, None, &[], 200)
        .await;
    w.call(
        "PUT",
        d,
        "/v1/tenants/acme/domains/stable.example.com",
        Some(ACME),
        None,
        &[],
        409,
    )
    .await;

    let h = "/v1/domains/{name}";
    w.call("GET", h, "/v1/domains/a.acme.com", op, None, &[], 200).await;
    w.call("GET", h, "/v1/domains/b.acme.com", Some(ACME), None, &[], 200)
        .await;
    w.call("GET", h, "/v1/domains/nobody.example.com", op, None, &[], 404)
        .await;
    w.call("GET", h, "/v1/domains/a%20b", op, None, &[], 400).await;
    let v = "/v1/domains/{name}/verify";
    w.call("POST", v, "/v1/domains/b.acme.com/verify", Some(ACME), None, &[], 200)
        .await;
    w.call("POST", v, "/v1/domains/nobody.example.com/verify", op, None, &[], 404)
        .await;
    let c = "/v1/domains/{name}/check";
    w.call("GET", c, "/v1/domains/b.acme.com/check", Some(ACME), None, &[], 200)
        .await;
    w.call(
        "GET",
        c,
        "/v1/domains/stable.example.com/check",
        Some(ACME),
        None,
        &[],
        404,
    )
    .await;
    let r = "/v1/domains/{name}/retry";
    w.call("POST", r, "/v1/domains/a.acme.com/retry", op, None, &[], 200)
        .await;
    w.call(
        "POST",
        r,
        "/v1/domains/stable.example.com/retry",
        Some(ACME),
        None,
        &[],
        404,
    )
    .await;
    w.call("POST", r, "/v1/domains/nobody.example.com/retry", op, None, &[], 404)
        .await;
    let e = "/v1/events";
    w.call("GET", e, "/v1/events?after=0", op, None, &[], 200).await;
    w.call("GET", e, "/v1/events?after=-1", op, None, &[], 400).await;
    w.call("GET", e, "/v1/events", None, None, &[], 401).await;

    for path in [
        "/v1/tenants/acme/domains/b.acme.com",
        "/v1/tenants/acme/domains/c.acme.com",
    ] {
        w.call("DELETE", d, path, Some(ACME), None, &[], 204).await;
    }
    w.call(
        "DELETE",
        d,
        "/v1/tenants/acme/domains/b.acme.com",
        Some(ACME),
        None,
        &[],
        404,
    )
    .await;

    let batch = json!({"changes": [{"op": "put", "tenant": {"id": "beta", "pool": "p", "domains": ["b.beta.com"]}}]});
    w.call(
        "POST",
        "/v1/changes/preview",
        "/v1/changes/preview",
        op,
        Some((J, batch.clone())),
        &[],
        200,
    )
    .await;
    w.call(
        "POST",
        "/v1/changes",
        "/v1/changes",
        op,
        Some((J, batch.clone())),
        &[],
        200,
    )
    .await;
    w.call(
        "POST",
        "/v1/changes",
        "/v1/changes",
        op,
        Some((J, json!({"changes": 1}))),
        &[],
        400,
    )
    .await;

    w.call("GET", "/v1/versions", "/v1/versions", op, None, &[], 200).await;
    w.call("GET", "/v1/session", "/v1/session", op, None, &[], 200).await;
    w.call("GET", "/v1/session", "/v1/session", Some(ACME), None, &[], 200)
        .await;
    w.call("GET", "/v1/session", "/v1/session", None, None, &[], 401).await;
    for by in ["rps", "5xx", "429", "p99"] {
        let path = format!("/v1/stats/top?by={by}&limit=5");
        w.call("GET", "/v1/stats/top", &path, op, None, &[], 200).await;
    }
    w.call("GET", "/v1/stats/top", "/v1/stats/top?by=bytes", op, None, &[], 400)
        .await;
    w.call("GET", "/v1/stats/top", "/v1/stats/top", Some(ACME), None, &[], 403)
        .await;
    let u = "/v1/tenants/{id}/usage";
    w.call("GET", u, "/v1/tenants/stable/usage", op, None, &[], 200).await;
    w.call("GET", u, "/v1/tenants/stable/usage?limit=5", op, None, &[], 200)
        .await;
    w.call("GET", u, "/v1/tenants/stable/usage?limit=0", op, None, &[], 400)
        .await;
    w.call("GET", u, "/v1/tenants/stable/usage", Some(ACME), None, &[], 403)
        .await;
    w.call("GET", u, "/v1/tenants/nope/usage", op, None, &[], 404).await;
    for stat in ["overview", "series", "domains", "pools", "replicas"] {
        let path = format!("/v1/stats/{stat}");
        w.call("GET", &path, &path, op, None, &[], 200).await;
        w.call("GET", &path, &path, Some(ACME), None, &[], 403).await;
    }
    w.call(
        "GET",
        "/v1/stats/domains",
        "/v1/stats/domains?limit=0",
        op,
        None,
        &[],
        400,
    )
    .await;
    w.call("GET", "/v1/tenants", "/v1/tenants?id_prefix=ac", op, None, &[], 200)
        .await;
    let r = "/v1/versions/{n}/rollback";
    w.call("POST", r, "/v1/versions/1/rollback?dry_run=true", op, None, &[], 200)
        .await;
    w.call("POST", r, "/v1/versions/999/rollback", op, None, &[], 404).await;

    let (export, tag) = w.call("GET", "/v1/export", "/v1/export", op, None, &[], 200).await;
    let tag = tag.expect("export etag");
    w.call(
        "GET",
        "/v1/export",
        "/v1/export",
        op,
        None,
        &[("if-none-match", &tag)],
        304,
    )
    .await;
    let imp = "/v1/import";
    w.call(
        "POST",
        imp,
        "/v1/import?preview=true",
        op,
        Some((J, export.clone())),
        &[],
        200,
    )
    .await;
    w.call(
        "POST",
        imp,
        "/v1/import",
        op,
        Some((J, json!({"tenants": []}))),
        &[],
        428,
    )
    .await;
    w.call(
        "POST",
        imp,
        "/v1/import",
        op,
        Some((J, export.clone())),
        &[("if-match", &tag)],
        200,
    )
    .await;

    w.call("GET", "/v1/audit", "/v1/audit?tenant=acme", Some(ACME), None, &[], 200)
        .await;
    w.call("GET", "/v1/audit", "/v1/audit?limit=2", op, None, &[], 200)
        .await;
    w.call(
        "GET",
        "/v1/audit",
        "/v1/audit?tenant=stable",
        Some(ACME),
        None,
        &[],
        403,
    )
    .await;

    w.call("DELETE", id, "/v1/tenants/beta", op, None, &[], 204).await;
    w.call("DELETE", id, "/v1/tenants/beta", op, None, &[], 404).await;
    w.call("DELETE", t, "/v1/templates/basic", op, None, &[], 409).await;
    w.call(
        "PATCH",
        id,
        "/v1/tenants/acme",
        op,
        Some((MP, json!({"template": null, "pool": "p"}))),
        &[],
        200,
    )
    .await;
    w.call("DELETE", t, "/v1/templates/basic", op, None, &[], 204).await;

    // Every operation of the router was seen succeeding, and checked.
    for (path, methods) in tenantgate::admin::route_methods() {
        for m in methods {
            let key = (path.to_string(), m.as_str().to_ascii_lowercase());
            assert!(w.succeeded.contains(&key), "{m} {path} never walked");
        }
    }
}

#[test]
fn the_checker_catches_what_the_document_forbids() {
    let spec = Spec(serde_json::from_str(tenantgate::admin::OPENAPI).expect("document"));
    let s = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    assert!(spec.valid(&s("Tenant"), &json!({"id": "a", "domains": [], "source": "file"})));
    assert!(!spec.valid(&s("Tenant"), &json!({"id": "a", "domains": [], "source": "disk"})));
    assert!(!spec.valid(
        &s("Tenant"),
        &json!({"id": "a", "domains": [], "source": "file", "extra": 1})
    ));
    assert!(!spec.valid(&s("Tenant"), &json!({"id": "a", "source": "file"})));
    let identity = json!({"id": "a", "domains": [], "source": "file", "paths": ["app.example/a"],
        "strip_prefix": true, "jwt": {"issuer": "https://idp.example", "jwks_url": "https://idp.example/jwks"}});
    assert!(spec.valid(&s("Tenant"), &identity));
    assert!(spec.valid(&s("TenantInput"), &json!({"jwt": "required", "paths": []})));
    assert!(!spec.valid(&s("TenantInput"), &json!({"jwt": "maybe"})));
    assert!(!spec.valid(&s("TenantInput"), &json!({"jwt": {"mode": "on"}})));
    assert!(spec.valid(
        &s("TenantPatch"),
        &json!({"jwt": null, "paths": null, "strip_prefix": null})
    ));
    assert!(!spec.valid(
        &s("TenantList"),
        &json!({"tenants": [], "total": -1, "next_offset": null, "next_cursor": null, "generation": 1})
    ));
    assert!(!spec.valid(
        &s("Problem"),
        &json!({"type": "tag:tenantgate,2026:nope", "title": "x", "status": 400, "detail": "d"})
    ));
    assert!(!spec.valid(&s("Batch"), &json!({"changes": [{"op": "put", "id": "a"}]})));
    assert!(spec.valid(&s("Batch"), &json!({"changes": [{"op": "delete", "id": "a"}]})));
    assert!(!spec.valid(&s("Labels"), &json!({"Region": "eu"})));
}
