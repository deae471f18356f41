//! The admin API against the real binary: auth and scopes, problem bodies,
//! writes that route before the response returns, concurrency, persistence
//! as tenant files, and hand edits.

mod common;

use std::sync::Arc;

use common::{backend, Gateway};
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;
use tenantgate::demo::EchoBackend;

const OPS: &str = "ops-secret-0123456789";
const ACME: &str = "acme-secret-0123456789";

fn config(p: &EchoBackend, q: &EchoBackend) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
base_domains = ["saas.example"]

# These tests are about scopes, limits and writes: names are active at once
# (the ownership proof has its own tests, tests/domains.rs).
[domains]
verify = "off"

[pools.p]
upstreams = ["{}"]

[pools.q]
upstreams = ["{}"]

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
        q.addr,
        hash_hex(OPS),
        hash_hex(ACME)
    )
}

async fn start() -> (Gateway, EchoBackend, EchoBackend) {
    let (p, q) = (backend("p").await, backend("q").await);
    let gw = Gateway::start(&config(&p, &q)).await;
    (gw, p, q)
}

/// The tenant routed for `host`, by a real proxied request.
async fn routed(gw: &Gateway, host: &str) -> (u16, Option<String>, String) {
    gw.routed(host).await
}

async fn put(gw: &Gateway, token: &str, id: &str, body: Value) -> common::AdminResponse {
    gw.admin_call("PUT", &format!("/v1/tenants/{id}"), Some(token), Some(&body), &[])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_routes_on_the_first_request_after_it_returns() {
    let (gw, _p, _q) = start().await;
    assert_eq!(routed(&gw, "app.acme.com").await.0, 421);
    let r = put(
        &gw,
        OPS,
        "acme",
        json!({"domains": ["app.acme.com"], "subdomain": "acme", "pool": "q"}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(
        r.json,
        json!({"id": "acme", "subdomain": "acme", "domains": ["app.acme.com"], "pool": "q", "source": "file"})
    );
    assert!(r.etag.is_some());
    assert_eq!(
        routed(&gw, "app.acme.com").await,
        (200, Some("acme".into()), "q".into())
    );
    assert_eq!(routed(&gw, "acme.saas.example").await.1.as_deref(), Some("acme"));

    let d = gw
        .admin_call("GET", "/v1/domains/App.Acme.com.", Some(OPS), None, &[])
        .await;
    assert_eq!(d.status, 200);
    assert_eq!(d.json["tenant"], "acme");
    assert_eq!(d.json["match"], "exact");
    assert_eq!(
        d.json["certificate"],
        json!({"source": "none", "detail": "TLS is off: the config has no [tls] section"})
    );

    // Pages are in id order; each item carries its ETag.
    let list = gw.admin_call("GET", "/v1/tenants?limit=1", Some(OPS), None, &[]).await;
    assert_eq!(
        list.json["tenants"],
        json!([{"id": "acme", "pool": "q", "etag": r.etag}])
    );
    assert_eq!(list.json["total"], 2);
    assert_eq!(list.json["next_offset"], 1);
    let list = gw
        .admin_call("GET", "/v1/tenants?offset=1&limit=5", Some(OPS), None, &[])
        .await;
    assert_eq!(list.json["tenants"][0]["id"], "stable");
    assert_eq!(list.json["next_offset"], Value::Null);

    let del = gw.admin_call("DELETE", "/v1/tenants/acme", Some(OPS), None, &[]).await;
    assert_eq!(del.status, 204);
    assert_eq!(routed(&gw, "app.acme.com").await.0, 421);
    assert!(!gw.dir().join("tenants/acme.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes() {
    let (gw, _p, _q) = start().await;
    let unauthorized = json!({
        "type": "tag:tenantgate,2026:unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": "send a valid token as Authorization: Bearer <token>",
    });
    for token in [None, Some("wrong-token")] {
        let r = gw.admin_call("GET", "/v1/tenants", token, None, &[]).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.content_type.as_deref(), Some("application/problem+json"));
        assert_eq!(r.json, unauthorized);
    }
    // Health needs no token.
    assert_eq!(gw.admin_call("GET", "/healthz", None, None, &[]).await.status, 200);
    assert_eq!(
        gw.admin_call("GET", "/readyz", None, None, &[]).await.json["generation"],
        1
    );

    // The operator creates acme; its tenant token may then edit its domains only.
    let r = put(&gw, OPS, "acme", json!({"domains": ["app.acme.com"], "pool": "p"})).await;
    assert_eq!(r.status, 201);
    let forbidden = |detail: &str| json!({"type": "tag:tenantgate,2026:forbidden", "title": "Forbidden", "status": 403, "detail": detail});
    let r = gw.admin_call("GET", "/v1/tenants/stable", Some(ACME), None, &[]).await;
    assert_eq!(
        (r.status, r.json),
        (403, forbidden("this token may only touch its own tenant"))
    );
    let r = gw.admin_call("GET", "/v1/tenants", Some(ACME), None, &[]).await;
    assert_eq!((r.status, r.json), (403, forbidden("this needs an operator token")));
    let r = put(&gw, ACME, "stable", json!({"pool": "p"})).await;
    assert_eq!(r.status, 403);
    let r = put(&gw, ACME, "acme", json!({"domains": ["app.acme.com"], "pool": "q"})).await;
    assert_eq!(
        (r.status, r.json),
        (403, forbidden("a tenant token may change domains, subdomain and redirect_https only; pool, plan, limits, timezone, pinned and labels are the operator's"))
    );
    let r = gw.admin_call("DELETE", "/v1/tenants/acme", Some(ACME), None, &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(routed(&gw, "app.acme.com").await.2, "p");

    let r = put(
        &gw,
        ACME,
        "acme",
        json!({"domains": ["app.acme.com", "www.acme.com"], "pool": "p"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(routed(&gw, "www.acme.com").await.1.as_deref(), Some("acme"));
    let r = gw.admin_call("GET", "/v1/tenants/acme", Some(ACME), None, &[]).await;
    assert_eq!(r.status, 200);
    // A tenant token is told of a conflict, not who owns the name.
    let r = put(
        &gw,
        ACME,
        "acme",
        json!({"domains": ["stable.example.com"], "pool": "p"}),
    )
    .await;
    assert_eq!(
        (r.status, r.json),
        (
            409,
            json!({"type": "tag:tenantgate,2026:conflict", "title": "Conflict", "status": 409,
                   "detail": "a name in this change belongs to another tenant; ask the operator"})
        )
    );
    assert!(
        !gw.log().contains(OPS) && !gw.log().contains(ACME),
        "a token was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_conflicting_writes_change_nothing() {
    let (gw, _p, _q) = start().await;
    let r = put(
        &gw,
        OPS,
        "bad",
        json!({"domains": ["*.github.io", "ok.example.net"], "subdomain": "www", "pool": "nope"}),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(
        r.json,
        json!({
            "type": "tag:tenantgate,2026:invalid",
            "title": "Unprocessable Entity",
            "status": 422,
            "detail": "3 problem(s); nothing was applied",
            "errors": [
                {"tenant": "bad", "field": "tenants/bad.toml:subdomain", "problem": "subdomain \"www\" is reserved",
                 "fix": "pick another subdomain, or change [gateway] reserved_subdomains"},
                {"tenant": "bad", "field": "tenants/bad.toml:domains[0]",
                 "problem": "*.github.io is at or above a public suffix (github.io): it would cover domains nobody here owns",
                 "fix": "claim a registrable domain (such as acme.com) or a name below it"},
                {"tenant": "bad", "field": "tenants/bad.toml:pool", "problem": "pool \"nope\" is not defined",
                 "fix": "define it under [pools.<name>] or point the tenant at an existing pool"},
            ],
        })
    );
    assert_eq!(routed(&gw, "ok.example.net").await.0, 421);
    assert!(!gw.dir().join("tenants/bad.toml").exists());

    let r = put(
        &gw,
        OPS,
        "thief",
        json!({"domains": ["Stable.Example.com."], "pool": "p"}),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json,
        json!({
            "type": "tag:tenantgate,2026:conflict",
            "title": "Conflict",
            "status": 409,
            "detail": "domain stable.example.com is claimed by tenants \"stable\", \"thief\"",
            "owners": ["stable"],
            "errors": [
                {"tenant": null, "field": "tenants[0].domains[0] and tenants/thief.toml:domains[0]",
                 "problem": "domain stable.example.com is claimed by tenants \"stable\", \"thief\"",
                 "fix": "keep the name on exactly one tenant"},
            ],
        })
    );
    assert_eq!(routed(&gw, "stable.example.com").await.1.as_deref(), Some("stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_match_is_refused() {
    let (gw, _p, _q) = start().await;
    let first = put(&gw, OPS, "acme", json!({"domains": ["app.acme.com"], "pool": "p"})).await;
    let v1 = first.etag.clone().expect("etag");
    let got = gw.admin_call("GET", "/v1/tenants/acme", Some(OPS), None, &[]).await;
    assert_eq!(got.etag.as_deref(), Some(v1.as_str()));

    let body = json!({"domains": ["app.acme.com"], "pool": "q"});
    let r = gw
        .admin_call("PUT", "/v1/tenants/acme", Some(OPS), Some(&body), &[("if-match", &v1)])
        .await;
    assert_eq!(r.status, 200);
    let v2 = r.etag.clone().expect("etag");
    assert_ne!(v1, v2);

    let stale = json!({"domains": ["app.acme.com"], "pool": "p"});
    let r = gw
        .admin_call("PUT", "/v1/tenants/acme", Some(OPS), Some(&stale), &[("if-match", &v1)])
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(
        r.json,
        json!({
            "type": "tag:tenantgate,2026:stale",
            "title": "Precondition Failed",
            "status": 412,
            "detail": "the tenant changed since you read it; GET it again and retry with the new ETag",
            "current_etag": v2,
        })
    );
    let r = gw
        .admin_call("DELETE", "/v1/tenants/acme", Some(OPS), None, &[("if-match", &v1)])
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(routed(&gw, "app.acme.com").await.2, "q");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers() {
    let (gw, _p, _q) = start().await;
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            put(
                &gw,
                OPS,
                &format!("t{i}"),
                json!({"domains": [format!("t{i}.example.com")], "pool": "p"}),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 201);
    }
    for i in 0..12 {
        assert_eq!(routed(&gw, &format!("t{i}.example.com")).await.1, Some(format!("t{i}")));
    }

    let mut tasks = Vec::new();
    for i in 0..8 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let r = put(
                &gw,
                OPS,
                &format!("c{i}"),
                json!({"domains": ["contested.example.com"], "pool": "p"}),
            )
            .await;
            (i, r.status, r.json)
        }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tasks {
        let (i, status, body) = t.await.expect("task");
        match status {
            201 => winners.push(i),
            409 => losers.push(body),
            other => panic!("claim answered {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    let winner = format!("c{}", winners[0]);
    for body in &losers {
        assert_eq!(body["owners"], json!([winner]));
    }
    assert_eq!(routed(&gw, "contested.example.com").await.1, Some(winner));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_persist_as_files_and_hand_edits_are_validated() {
    let (p, q) = (backend("p").await, backend("q").await);
    let template = config(&p, &q);
    let gw = Gateway::start(&template).await;
    let r = put(&gw, OPS, "acme", json!({"domains": ["app.acme.com"], "pool": "q"})).await;
    assert_eq!(r.status, 201);
    let file = gw.dir().join("tenants/acme.toml");
    let text = std::fs::read_to_string(&file).expect("tenant file");
    assert_eq!(text, "id = \"acme\"\ndomains = [\"app.acme.com\"]\npool = \"q\"\n");

    // Across a restart.
    let dir = gw.stop();
    let gw = Gateway::start_in(dir, &template).await;
    assert_eq!(
        routed(&gw, "app.acme.com").await,
        (200, Some("acme".into()), "q".into())
    );

    // A hand edit is picked up by the watcher.
    let edit = "id = \"acme\"\ndomains = [\"app.acme.com\", \"hand.acme.com\"]\npool = \"p\"\n";
    write_by_hand(&file, edit);
    gw.wait_status("hand.acme.com", 200).await;
    assert_eq!(routed(&gw, "app.acme.com").await.2, "p");
    let got = gw.admin_call("GET", "/v1/tenants/acme", Some(OPS), None, &[]).await;
    assert_eq!(got.json["domains"], json!(["app.acme.com", "hand.acme.com"]));

    // An invalid hand edit is refused; routing stays.
    let failures = gw.metric("tenantgate_config_reloads_total{result=\"failure\"}").await;
    write_by_hand(
        &file,
        "id = \"acme\"\ndomains = [\"stable.example.com\"]\npool = \"p\"\n",
    );
    gw.wait_metric("tenantgate_config_reloads_total{result=\"failure\"}", failures + 1.0)
        .await;
    assert_eq!(routed(&gw, "hand.acme.com").await.1.as_deref(), Some("acme"));
    assert_eq!(routed(&gw, "stable.example.com").await.1.as_deref(), Some("stable"));
    assert!(gw.log().contains("domain stable.example.com is claimed by tenants"));

    // A file not named after its tenant is refused too.
    write_by_hand(&gw.dir().join("tenants/other.toml"), "id = \"nomatch\"\npool = \"p\"\n");
    gw.wait_metric("tenantgate_config_reloads_total{result=\"failure\"}", failures + 2.0)
        .await;
    assert!(
        gw.log()
            .contains("tenant file tenants/other.toml holds tenant \\\"nomatch\\\"")
            || gw
                .log()
                .contains("tenant file tenants/other.toml holds tenant \"nomatch\"")
    );
}

fn write_by_hand(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("edit");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_changes_nothing_and_a_batch_is_all_or_nothing() {
    let (gw, _p, _q) = start().await;
    assert_eq!(
        put(&gw, OPS, "old", json!({"domains": ["old.example.com"], "pool": "p"}))
            .await
            .status,
        201
    );
    let batch = json!({"changes": [
        {"op": "put", "tenant": {"id": "new", "domains": ["new.example.com"], "pool": "q"}},
        {"op": "put", "tenant": {"id": "old", "domains": ["old.example.com"], "pool": "q"}},
        {"op": "delete", "id": "gone-later"},
    ]});
    let r = gw
        .admin_call("POST", "/v1/changes/preview", Some(OPS), Some(&batch), &[])
        .await;
    assert_eq!(r.status, 404, "deleting a missing tenant: {:?}", r.json);

    let batch = json!({"changes": [
        {"op": "put", "tenant": {"id": "new", "domains": ["new.example.com"], "pool": "q"}},
        {"op": "put", "tenant": {"id": "old", "domains": ["old.example.com"], "pool": "q"}},
    ]});
    let diff = json!([
        {"tenant": "new", "action": "create", "fields": {
            "id": {"before": null, "after": "new"},
            "domains": {"before": null, "after": ["new.example.com"]},
            "pool": {"before": null, "after": "q"}}},
        {"tenant": "old", "action": "update", "fields": {"pool": {"before": "p", "after": "q"}}},
    ]);
    let r = gw
        .admin_call("POST", "/v1/changes/preview", Some(OPS), Some(&batch), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, json!({"applied": false, "generation": null, "diff": diff}));
    // Nothing applied: routing, files and generation as before.
    assert_eq!(routed(&gw, "new.example.com").await.0, 421);
    assert_eq!(routed(&gw, "old.example.com").await.2, "p");
    assert!(!gw.dir().join("tenants/new.toml").exists());
    let ready = gw.admin_call("GET", "/readyz", None, None, &[]).await;
    assert_eq!(ready.json["generation"], 2);

    // One invalid change: nothing of the batch applies.
    let mixed = json!({"changes": [
        {"op": "put", "tenant": {"id": "new", "domains": ["new.example.com"], "pool": "q"}},
        {"op": "put", "tenant": {"id": "old", "domains": ["old.example.com"], "pool": "missing"}},
    ]});
    let r = gw.admin_call("POST", "/v1/changes", Some(OPS), Some(&mixed), &[]).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json["errors"][0]["problem"], "pool \"missing\" is not defined");
    assert_eq!(routed(&gw, "new.example.com").await.0, 421);
    assert_eq!(routed(&gw, "old.example.com").await.2, "p");

    let r = gw.admin_call("POST", "/v1/changes", Some(OPS), Some(&batch), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, json!({"applied": true, "generation": 3, "diff": diff}));
    assert_eq!(
        routed(&gw, "new.example.com").await,
        (200, Some("new".into()), "q".into())
    );
    assert_eq!(routed(&gw, "old.example.com").await.2, "q");

    // Tenant tokens cannot send batches.
    let r = gw
        .admin_call("POST", "/v1/changes", Some(ACME), Some(&batch), &[])
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_applied_and_rejected_writes() {
    let (gw, _p, _q) = start().await;
    assert_eq!(
        put(&gw, OPS, "acme", json!({"domains": ["app.acme.com"], "pool": "p"}))
            .await
            .status,
        201
    );
    assert_eq!(
        put(
            &gw,
            ACME,
            "acme",
            json!({"domains": ["stable.example.com"], "pool": "p"})
        )
        .await
        .status,
        409
    );
    assert_eq!(put(&gw, OPS, "other", json!({"pool": "p"})).await.status, 201);

    let r = gw
        .admin_call("GET", "/v1/audit?tenant=acme", Some(OPS), None, &[])
        .await;
    assert_eq!(r.status, 200);
    let entries = r.json["entries"].as_array().expect("entries").clone();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let strip = |mut e: Value| {
        assert!(e["at"].as_str().is_some_and(|t| t.ends_with('Z')));
        e.as_object_mut().expect("object").remove("at");
        e
    };
    assert_eq!(
        strip(entries[0].clone()),
        json!({"who": "ops", "request": "PUT /v1/tenants/acme", "tenants": ["acme"], "result": "applied",
               "status": null, "generation": 2, "problem": null,
               "diff": [{"tenant": "acme", "action": "create", "fields": {
                   "id": {"before": null, "after": "acme"},
                   "domains": {"before": null, "after": ["app.acme.com"]},
                   "pool": {"before": null, "after": "p"}}}]})
    );
    assert_eq!(
        strip(entries[1].clone()),
        json!({"who": "acme-admin", "request": "PUT /v1/tenants/acme", "tenants": ["acme"], "result": "rejected",
               "status": 409, "generation": null,
               "problem": "a name in this change belongs to another tenant; ask the operator",
               "diff": [{"tenant": "acme", "action": "update", "fields": {
                   "domains": {"before": ["app.acme.com"], "after": ["stable.example.com"]}}}]})
    );
    // The tenant token reads its own tenant's entries only.
    assert_eq!(
        gw.admin_call("GET", "/v1/audit?tenant=acme", Some(ACME), None, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        gw.admin_call("GET", "/v1/audit", Some(ACME), None, &[]).await.status,
        403
    );
    let all = gw.admin_call("GET", "/v1/audit", Some(OPS), None, &[]).await;
    assert_eq!(all.json["entries"].as_array().map(Vec::len), Some(3));
    let file = std::fs::read_to_string(gw.dir().join("state/admin/audit.jsonl")).expect("audit file");
    assert_eq!(file.lines().count(), 3);

    // A write refused by scope is on record too.
    assert_eq!(put(&gw, ACME, "other", json!({"pool": "q"})).await.status, 403);
    let r = gw
        .admin_call("GET", "/v1/audit?tenant=other", Some(OPS), None, &[])
        .await;
    assert_eq!(
        strip(r.json["entries"][1].clone()),
        json!({"who": "acme-admin", "request": "PUT /v1/tenants/other", "tenants": ["other"], "result": "rejected",
               "status": 403, "generation": null, "diff": [],
               "problem": "this token may only touch its own tenant"})
    );
}

/// Copies a gateway's config file, tenant files and template files into a new folder.
fn snapshot_config(gw: &Gateway) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&gw.config_path, dir.path().join("tenantgate.toml")).expect("copy config");
    for folder in ["tenants", "templates"] {
        std::fs::create_dir_all(dir.path().join(folder)).expect("folder");
        for f in std::fs::read_dir(gw.dir().join(folder)).expect("read folder") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, dir.path().join(folder).join(f.file_name().expect("name"))).expect("copy file");
        }
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_subcommand_prints_the_same_diff_as_the_api() {
    let (gw, _p, _q) = start().await;
    assert_eq!(
        put(&gw, OPS, "old", json!({"domains": ["old.example.com"], "pool": "p"}))
            .await
            .status,
        201
    );
    assert_eq!(put(&gw, OPS, "gone", json!({"pool": "p"})).await.status, 201);
    let before = snapshot_config(&gw);
    let batch = json!({"changes": [
        {"op": "put", "tenant": {"id": "new", "subdomain": "new", "pool": "q"}},
        {"op": "put", "tenant": {"id": "old", "domains": ["old.example.com", "more.example.com"], "pool": "p"}},
        {"op": "delete", "id": "gone"},
    ]});
    let applied = gw.admin_call("POST", "/v1/changes", Some(OPS), Some(&batch), &[]).await;
    assert_eq!(applied.status, 200);

    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .arg("diff")
            .arg(before.path().join("tenantgate.toml"))
            .arg(&gw.config_path)
            .args(args)
            .output()
            .expect("run diff");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = run(&["--json"]);
    assert_eq!(code, Some(1));
    let printed: Value = serde_json::from_str(&out).expect("json diff");
    assert_eq!(printed, applied.json["diff"]);
    let (code, out) = run(&[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        out,
        "- gone: domains [], pool \"p\"\n\
         + new: domains [], pool \"q\", subdomain \"new\"\n\
         ~ old: domains [\"old.example.com\"] -> [\"old.example.com\",\"more.example.com\"]\n"
    );
    let same = std::process::Command::new(common::BIN)
        .arg("diff")
        .arg(&gw.config_path)
        .arg(&gw.config_path)
        .output()
        .expect("run diff");
    assert_eq!((same.status.code(), same.stdout.len()), (Some(0), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_earlier_routing_also_after_a_restart() {
    let (p, q) = (backend("p").await, backend("q").await);
    let template = config(&p, &q);
    let gw = Gateway::start(&template).await;
    assert_eq!(
        put(&gw, OPS, "acme", json!({"domains": ["app.acme.com"], "pool": "p"}))
            .await
            .status,
        201
    );
    assert_eq!(
        put(&gw, OPS, "acme", json!({"domains": ["app.acme.com"], "pool": "q"}))
            .await
            .status,
        200
    );
    assert_eq!(
        put(&gw, OPS, "beta", json!({"domains": ["beta.example.com"], "pool": "p"}))
            .await
            .status,
        201
    );

    let v = gw.admin_call("GET", "/v1/versions", Some(OPS), None, &[]).await;
    let summary: Vec<(u64, String, Value)> = v.json["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|x| {
            (
                x["version"].as_u64().unwrap_or(0),
                x["who"].as_str().unwrap_or("").to_string(),
                x["tenants"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (3, "ops".to_string(), json!(["beta"])),
            (2, "ops".to_string(), json!(["acme"])),
            (1, "ops".to_string(), json!(["acme"]))
        ]
    );

    let dry = gw
        .admin_call("POST", "/v1/versions/1/rollback?dry_run=true", Some(OPS), None, &[])
        .await;
    // The preview says what the rollback would change, field by field.
    assert_eq!(
        dry.json,
        json!({"rolled_back_to": 1, "applied": false, "generation": null, "diff": [
            {"tenant": "acme", "action": "update", "fields": {"pool": {"before": "q", "after": "p"}}},
            {"tenant": "beta", "action": "delete", "fields": {
                "domains": {"before": ["beta.example.com"], "after": null},
                "id": {"before": "beta", "after": null},
                "pool": {"before": "p", "after": null}}}
        ]})
    );
    assert_eq!(routed(&gw, "app.acme.com").await.2, "q");

    let r = gw
        .admin_call("POST", "/v1/versions/1/rollback", Some(OPS), None, &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(
        routed(&gw, "app.acme.com").await,
        (200, Some("acme".into()), "p".into())
    );
    assert_eq!(routed(&gw, "beta.example.com").await.0, 421);
    assert!(!gw.dir().join("tenants/beta.toml").exists());

    let missing = gw
        .admin_call("POST", "/v1/versions/99/rollback", Some(OPS), None, &[])
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json["detail"],
        "version 99 is not in the kept history; see GET /v1/versions"
    );
    assert_eq!(
        gw.admin_call("POST", "/v1/versions/1/rollback", Some(ACME), None, &[])
            .await
            .status,
        403
    );

    // The history survives a restart: roll forward to version 3.
    let dir = gw.stop();
    let gw = Gateway::start_in(dir, &template).await;
    assert_eq!(routed(&gw, "app.acme.com").await.2, "p");
    let r = gw
        .admin_call("POST", "/v1/versions/3/rollback", Some(OPS), None, &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(routed(&gw, "app.acme.com").await.2, "q");
    assert_eq!(routed(&gw, "beta.example.com").await.1.as_deref(), Some("beta"));
    let v = gw.admin_call("GET", "/v1/versions", Some(OPS), None, &[]).await;
    assert_eq!(v.json["versions"][0]["version"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_give_identical_routing() {
    let (p, q) = (backend("p").await, backend("q").await);
    let staging = Gateway::start(&config(&p, &q)).await;
    let prod = Gateway::start(&config(&p, &q)).await;
    for (id, pool) in [("acme", "p"), ("beta", "q")] {
        let body = json!({"domains": [format!("{id}.example.org")], "subdomain": id, "pool": pool});
        assert_eq!(put(&staging, OPS, id, body).await.status, 201);
    }
    assert_eq!(
        put(
            &prod,
            OPS,
            "legacy",
            json!({"domains": ["legacy.example.org"], "pool": "p"})
        )
        .await
        .status,
        201
    );

    let export = staging.admin_call("GET", "/v1/export", Some(OPS), None, &[]).await;
    assert_eq!(export.json["main_file_tenants"], json!(["stable"]));
    let body = json!({"tenants": export.json["tenants"]});
    let preview = prod
        .admin_call("POST", "/v1/import?preview=true", Some(OPS), Some(&body), &[])
        .await;
    assert_eq!(preview.status, 200);
    let actions: Vec<(String, String)> = preview.json["diff"]
        .as_array()
        .expect("diff")
        .iter()
        .map(|d| {
            (
                d["tenant"].as_str().unwrap_or("").into(),
                d["action"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let want = [("acme", "create"), ("beta", "create"), ("legacy", "delete")];
    assert_eq!(actions, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(routed(&prod, "legacy.example.org").await.0, 200);

    // It deletes legacy: only with an explicit prune.
    let r = prod.admin_call("POST", "/v1/import", Some(OPS), Some(&body), &[]).await;
    assert_eq!(r.status, 428, "{:?}", r.json);
    let r = prod
        .admin_call("POST", "/v1/import?prune=true", Some(OPS), Some(&body), &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    for host in [
        "acme.example.org",
        "acme.saas.example",
        "beta.example.org",
        "legacy.example.org",
        "stable.example.com",
    ] {
        assert_eq!(routed(&staging, host).await, routed(&prod, host).await, "{host}");
    }
    assert_eq!(routed(&prod, "legacy.example.org").await.0, 421);
    assert_eq!(
        prod.admin_call("GET", "/v1/export", Some(OPS), None, &[]).await.json["tenants"],
        export.json["tenants"]
    );

    // The OpenAPI document is served as committed, and names every route.
    let doc = prod.admin_call("GET", "/v1/openapi.json", None, None, &[]).await;
    assert_eq!(doc.status, 200);
    let committed: Value = serde_json::from_str(tenantgate::admin::OPENAPI).expect("committed document");
    assert_eq!(doc.json, committed);
    for path in [
        "/v1/tenants/{id}",
        "/v1/changes/preview",
        "/v1/versions/{n}/rollback",
        "/v1/import",
        "/v1/audit",
        "/v1/templates/{name}",
    ] {
        assert!(doc.json["paths"][path].is_object(), "{path} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_environment() {
    let (p, q) = (backend("p").await, backend("q").await);
    let env = format!(
        "deploy:operator:{}, beta-admin:tenant:beta:{}",
        hash_hex("deploy-secret"),
        hash_hex("beta-secret")
    );
    let http = format!("127.0.0.1:{}", common::free_port()).parse().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with_env(dir, &config(&p, &q), http, &[("TENANTGATE_ADMIN_TOKENS", &env)]).await;
    assert_eq!(
        put(&gw, "deploy-secret", "beta", json!({"pool": "p"})).await.status,
        201
    );
    let r = gw
        .admin_call("GET", "/v1/tenants/beta", Some("beta-secret"), None, &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.admin_call("GET", "/v1/tenants/stable", Some("beta-secret"), None, &[])
            .await
            .status,
        403
    );
    let audit = gw
        .admin_call("GET", "/v1/audit?tenant=beta", Some(OPS), None, &[])
        .await;
    assert_eq!(audit.json["entries"][0]["who"], "deploy");

    // A bad entry is refused by check, naming the variable and never echoing the value.
    let file = gw.dir().join("tenantgate.toml");
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .arg(&file)
        .env("TENANTGATE_ADMIN_TOKENS", "x:root:supersecretvalue")
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("TENANTGATE_ADMIN_TOKENS[0].scope: token scope \"root\" is neither"),
        "{err}"
    );
    assert!(
        err.contains("TENANTGATE_ADMIN_TOKENS[0].sha256: token hash \"supe…\" is not 64 hex digits"),
        "{err}"
    );
    assert!(!err.contains("supersecretvalue"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_by_a_crash_is_finished_at_the_next_start() {
    let (gw, p, q) = start().await;
    let r = put(&gw, OPS, "acme", json!({"domains": ["app.acme.com"], "pool": "p"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let dir = gw.stop();
    // A batch moving app.acme.com from acme to beta stopped after writing
    // beta's file: on disk both claim the name, which alone does not load.
    let tenants = dir.path().join("tenants");
    let beta = "id = \"beta\"\ndomains = [\"app.acme.com\"]\npool = \"q\"\n";
    let acme = "id = \"acme\"\ndomains = [\"new.acme.com\"]\npool = \"p\"\n";
    std::fs::write(tenants.join("beta.toml"), beta).expect("beta");
    let journal = json!({"main": null, "tenants": {"put": {"acme": acme, "beta": beta}, "delete": []}});
    std::fs::write(tenants.join(".batch.json"), journal.to_string()).expect("journal");
    let gw = Gateway::start_in(dir, &config(&p, &q)).await;
    assert_eq!(
        routed(&gw, "app.acme.com").await,
        (200, Some("beta".into()), "q".into())
    );
    assert_eq!(
        routed(&gw, "new.acme.com").await,
        (200, Some("acme".into()), "p".into())
    );
    assert!(
        !tenants.join(".batch.json").exists(),
        "the journal is removed once done"
    );
    assert!(gw
        .log()
        .contains("finished writing an admin batch that a crash interrupted"));
}

async fn put_template(gw: &Gateway, name: &str, body: Value, headers: &[(&str, &str)]) -> common::AdminResponse {
    gw.admin_call("PUT", &format!("/v1/templates/{name}"), Some(OPS), Some(&body), headers)
        .await
}

/// `(tenant or "template <name>", action, fields)` of each diff entry.
fn diff_summary(diff: &Value) -> Vec<(String, String, Value)> {
    diff.as_array()
        .expect("diff")
        .iter()
        .map(|d| {
            let who = match (d["tenant"].as_str(), d["template"].as_str()) {
                (Some(t), _) => t.to_string(),
                (None, Some(name)) => format!("template {name}"),
                (None, None) => panic!("entry names neither: {d}"),
            };
            (who, d["action"].as_str().unwrap_or("").into(), d["fields"].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_moves_every_tenant_using_it() {
    let (gw, _p, _q) = start().await;
    let r = put_template(&gw, "basic", json!({"pool": "p", "redirect_https": false}), &[]).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(
        r.json,
        json!({"name": "basic", "pool": "p", "redirect_https": false, "source": "file"})
    );
    let v1 = r.etag.clone().expect("etag");
    assert_eq!(
        std::fs::read_to_string(gw.dir().join("templates/basic.toml")).expect("template file"),
        "pool = \"p\"\nredirect_https = false\n"
    );
    for (id, extra) in [("a", json!({})), ("c", json!({})), ("own", json!({"pool": "q"}))] {
        let mut body = json!({"domains": [format!("{id}.example.com")], "template": "basic"});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        assert_eq!(put(&gw, OPS, id, body).await.status, 201);
    }
    // The template's pool, unless the tenant sets its own.
    assert_eq!(routed(&gw, "a.example.com").await, (200, Some("a".into()), "p".into()));
    assert_eq!(routed(&gw, "c.example.com").await.2, "p");
    assert_eq!(
        routed(&gw, "own.example.com").await,
        (200, Some("own".into()), "q".into())
    );
    let list = gw.admin_call("GET", "/v1/tenants", Some(OPS), None, &[]).await;
    assert!(list.json["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .any(|t| t["id"] == "a" && t["pool"] == "p"));

    // The preview lists exactly the tenants whose pool changes, and changes nothing.
    let change = json!({"changes": [{"op": "put_template", "template": {"name": "basic", "pool": "q", "redirect_https": false}}]});
    let preview = gw
        .admin_call("POST", "/v1/changes/preview", Some(OPS), Some(&change), &[])
        .await;
    assert_eq!(preview.status, 200, "{:?}", preview.json);
    let pool_moves = json!({"pool": {"before": "p", "after": "q"}});
    let want = [
        ("template basic".to_string(), "update".to_string(), pool_moves.clone()),
        ("a".to_string(), "update".to_string(), pool_moves.clone()),
        ("c".to_string(), "update".to_string(), pool_moves.clone()),
    ];
    assert_eq!(diff_summary(&preview.json["diff"]), want);
    assert_eq!(preview.json["applied"], false);
    assert_eq!(routed(&gw, "a.example.com").await.2, "p");
    assert!(std::fs::read_to_string(gw.dir().join("templates/basic.toml"))
        .expect("template file")
        .contains("\"p\""));

    // A stale ETag is refused; the current one applies, and routes before the answer.
    let body = json!({"pool": "q", "redirect_https": false});
    let r = put_template(&gw, "basic", body.clone(), &[("if-match", "\"0000\"")]).await;
    assert_eq!(r.status, 412);
    assert_eq!(
        r.json["detail"],
        "the template changed since you read it; GET it again and retry with the new ETag"
    );
    let r = put_template(&gw, "basic", body, &[("if-match", &v1)]).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    for host in ["a.example.com", "c.example.com", "own.example.com"] {
        assert_eq!(routed(&gw, host).await.2, "q", "{host}");
    }
    let got = gw.admin_call("GET", "/v1/templates/basic", Some(OPS), None, &[]).await;
    assert_eq!(got.json["used_by"], json!(["a", "c", "own"]));
    assert_eq!(got.etag, r.etag);
    let all = gw.admin_call("GET", "/v1/templates", Some(OPS), None, &[]).await;
    assert_eq!(
        all.json["templates"],
        json!([{"name": "basic", "source": "file", "tenants": 3}])
    );

    // The audit records the tenants a template change moved; versions the file.
    let audit = gw.admin_call("GET", "/v1/audit?tenant=c", Some(OPS), None, &[]).await;
    let last = audit.json["entries"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .expect("entry");
    assert_eq!(last["request"], "PUT /v1/templates/basic");
    assert_eq!(last["tenants"], json!(["a", "c"]));
    let versions = gw.admin_call("GET", "/v1/versions", Some(OPS), None, &[]).await;
    assert_eq!(versions.json["versions"][0]["templates"], json!(["basic"]));
    let undo = versions.json["versions"][1]["version"].as_u64().expect("version");
    let r = gw
        .admin_call("POST", &format!("/v1/versions/{undo}/rollback"), Some(OPS), None, &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(routed(&gw, "a.example.com").await.2, "p");
    assert_eq!(routed(&gw, "own.example.com").await.2, "q");

    // A hand edit of the template file is validated and applied like any reload.
    write_by_hand(&gw.dir().join("templates/basic.toml"), "pool = \"q\"\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while routed(&gw, "a.example.com").await.2 != "q" {
        assert!(
            std::time::Instant::now() < deadline,
            "hand edit not applied:\n{}",
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(routed(&gw, "c.example.com").await.2, "q");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_in_use_or_in_the_main_file_are_not_removed_and_tenant_tokens_cannot_touch_them() {
    let (p, q) = (backend("p").await, backend("q").await);
    let main = format!(
        "{}\n[[tenants]]\nid = \"legacy\"\ndomains = [\"legacy.example.com\"]\ntemplate = \"classic\"\n\n[templates.classic]\npool = \"q\"\n",
        config(&p, &q)
    );
    let gw = Gateway::start(&main).await;
    assert_eq!(
        routed(&gw, "legacy.example.com").await,
        (200, Some("legacy".into()), "q".into())
    );
    let got = gw.admin_call("GET", "/v1/tenants/legacy", Some(OPS), None, &[]).await;
    assert_eq!(
        (got.json["template"].clone(), got.json["pool"].clone()),
        (json!("classic"), json!("q"))
    );

    assert_eq!(put_template(&gw, "basic", json!({"pool": "p"}), &[]).await.status, 201);
    for id in ["acme", "beta"] {
        let body = json!({"domains": [format!("{id}.example.com")], "template": "basic"});
        assert_eq!(put(&gw, OPS, id, body).await.status, 201);
    }
    let r = gw
        .admin_call("DELETE", "/v1/templates/basic", Some(OPS), None, &[])
        .await;
    assert_eq!(
        (r.status, r.json),
        (
            409,
            json!({"type": "tag:tenantgate,2026:in-use", "title": "Conflict", "status": 409,
                   "detail": "template \"basic\" is used by tenants \"acme\", \"beta\"; point them at another template or remove their template field first",
                   "template": "basic", "tenants": ["acme", "beta"]})
        )
    );
    assert!(gw.dir().join("templates/basic.toml").exists());
    assert_eq!(routed(&gw, "acme.example.com").await.2, "p");

    let r = gw
        .admin_call("DELETE", "/v1/templates/classic", Some(OPS), None, &[])
        .await;
    assert_eq!(
        (r.status, r.json["type"].clone()),
        (409, json!("tag:tenantgate,2026:read-only"))
    );
    assert_eq!(
        put_template(&gw, "classic", json!({"pool": "p"}), &[]).await.status,
        409
    );
    let r = gw
        .admin_call("GET", "/v1/templates/classic", Some(OPS), None, &[])
        .await;
    assert_eq!(
        r.json,
        json!({"name": "classic", "pool": "q", "source": "main", "used_by": ["legacy"]})
    );

    // Tenant tokens: no template resources, and not their own tenant's template.
    for (method, body) in [("GET", None), ("PUT", Some(json!({"pool": "q"}))), ("DELETE", None)] {
        let r = gw
            .admin_call(method, "/v1/templates/basic", Some(ACME), body.as_ref(), &[])
            .await;
        assert_eq!((method, r.status), (method, 403));
    }
    assert_eq!(
        gw.admin_call("GET", "/v1/templates", Some(ACME), None, &[])
            .await
            .status,
        403
    );
    let r = put(&gw, ACME, "acme", json!({"domains": ["acme.example.com"], "pool": "p"})).await;
    assert_eq!(
        (r.status, r.json["detail"].clone()),
        (
            403,
            json!("a tenant token may not change the tenant's template; templates are the operator's")
        )
    );
    let own_names = json!({"domains": ["acme.example.com", "www.acme.example.com"], "template": "basic"});
    assert_eq!(put(&gw, ACME, "acme", own_names).await.status, 200);

    // One batch may move the tenants off a template and delete it.
    let batch = json!({"changes": [
        {"op": "put", "tenant": {"id": "acme", "domains": ["acme.example.com"], "pool": "q"}},
        {"op": "put", "tenant": {"id": "beta", "domains": ["beta.example.com"], "template": "classic"}},
        {"op": "delete_template", "name": "basic"},
    ]});
    let r = gw.admin_call("POST", "/v1/changes", Some(OPS), Some(&batch), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(!gw.dir().join("templates/basic.toml").exists());
    assert_eq!(routed(&gw, "acme.example.com").await.2, "q");
    assert_eq!(routed(&gw, "beta.example.com").await.2, "q");
    let r = gw
        .admin_call("DELETE", "/v1/templates/basic", Some(OPS), None, &[])
        .await;
    assert_eq!(r.status, 404);

    // Export carries template files; an import makes them equal.
    assert_eq!(
        put_template(&gw, "spare", json!({"plan": "unlimited"}), &[])
            .await
            .status,
        201
    );
    let export = gw.admin_call("GET", "/v1/export", Some(OPS), None, &[]).await;
    assert_eq!(
        export.json["templates"],
        json!([{"name": "spare", "plan": "unlimited"}])
    );
    assert_eq!(export.json["main_file_templates"], json!(["classic"]));
    let body = json!({"tenants": export.json["tenants"], "templates": []});
    let r = gw
        .admin_call("POST", "/v1/import?preview=true", Some(OPS), Some(&body), &[])
        .await;
    assert_eq!(
        diff_summary(&r.json["diff"]),
        [(
            "template spare".to_string(),
            "delete".to_string(),
            json!({"plan": {"before": "unlimited", "after": null}})
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_subcommand_lists_the_tenants_a_template_change_moves() {
    let (gw, _p, _q) = start().await;
    assert_eq!(put_template(&gw, "basic", json!({"pool": "p"}), &[]).await.status, 201);
    for id in ["one", "two"] {
        assert_eq!(put(&gw, OPS, id, json!({"template": "basic"})).await.status, 201);
    }
    let before = snapshot_config(&gw);
    assert_eq!(put_template(&gw, "basic", json!({"pool": "q"}), &[]).await.status, 200);
    let out = std::process::Command::new(common::BIN)
        .arg("diff")
        .arg(before.path().join("tenantgate.toml"))
        .arg(&gw.config_path)
        .output()
        .expect("run diff");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "~ template basic: pool \"p\" -> \"q\"\n~ one: pool \"p\" -> \"q\"\n~ two: pool \"p\" -> \"q\"\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_adds_domains_only_up_to_its_plan() {
    let (p, q) = (backend("p").await, backend("q").await);
    let plan = "[plans.pro]\nmax_domains = 2\n\n[limits]\ndefault_plan = \"pro\"\n\n[[tenants]]";
    let gw = Gateway::start(&config(&p, &q).replacen("[[tenants]]", plan, 1)).await;
    let r = put(&gw, OPS, "acme", json!({"domains": ["a.acme.com"], "pool": "p"})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let two = json!({"domains": ["a.acme.com", "*.acme.io"], "pool": "p"});
    assert_eq!(put(&gw, ACME, "acme", two).await.status, 200);

    let three = json!({"domains": ["a.acme.com", "*.acme.io", "b.acme.com"], "pool": "p"});
    let r = put(&gw, ACME, "acme", three.clone()).await;
    assert_eq!(r.status, 422, "{:?}", r.json);
    assert_eq!(
        r.json["errors"],
        json!([{"tenant": "acme", "field": "tenants/acme.toml:domains",
                "problem": "3 custom domains, but its plan allows 2 (max_domains)",
                "fix": "remove domains, or raise max_domains in the tenant's plan or its [tenants.limits]"}])
    );
    assert_eq!(routed(&gw, "b.acme.com").await.0, 421);

    // The operator raises the cap for this tenant alone.
    let mut raised = three;
    raised["limits"] = json!({"max_domains": 3});
    let r = put(&gw, OPS, "acme", raised).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(routed(&gw, "b.acme.com").await.1.as_deref(), Some("acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_may_send_registry_sized_bodies_and_tenant_tokens_may_not() {
    let (gw, _p, _q) = start().await;
    // 60,000 names: about 1.5 MB of JSON, over a tenant token's 1 MiB.
    let domains: Vec<String> = (0..60_000).map(|i| format!("d{i}.acme-big.com")).collect();
    let body = json!({"domains": domains, "pool": "p"});
    assert!(body.to_string().len() > 1 << 20);
    let r = put(&gw, OPS, "acme", body.clone()).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(routed(&gw, "d59999.acme-big.com").await.1.as_deref(), Some("acme"));
    let r = put(&gw, ACME, "acme", body).await;
    assert_eq!(r.status, 413, "{:?}", r.json);
    assert_eq!(r.json["type"], "tag:tenantgate,2026:too-large");
    assert_eq!(
        r.json["detail"],
        "the body must be at most 1048576 bytes for this token"
    );
}
