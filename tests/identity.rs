//! Tenant identity beyond the Host, through the real gateway binary:
//! path-prefix tenants on shared hosts, the trusted tenant header, and JWT
//! tenant claims checked with real tokens signed by a real library against
//! keys served as a JWKS by a loopback server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{backend, raw_status, Echo, Gateway};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tenantgate::admin::auth::hash_hex;
use tenantgate::demo::EchoBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPS: &str = "ops-secret-0123456789abcdef";

/// A raw GET on `host` (the target sent exactly as written: no client-side
/// dot-segment resolution): status and body.
async fn raw_get(gw: &Gateway, host: &str, target: &str, extra: &str) -> (u16, String) {
    let resp = gw
        .raw(&format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
        ))
        .await;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (raw_status(&resp), body)
}

fn paths_config(a: &EchoBackend, b: &EchoBackend, c: &EchoBackend, platform: &EchoBackend) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
admin_listen = "{{admin}}"
shared_hosts = ["app.saas.example", "portal.saas.example"]

[shared_hosts."portal.saas.example"]
platform_pool = "platform"

[[admin.tokens]]
name = "ops"
scope = "operator"
sha256 = "{}"

[pools.a]
upstreams = ["{}"]
[pools.b]
upstreams = ["{}"]
[pools.c]
upstreams = ["{}"]
[pools.platform]
upstreams = ["{}"]

[[tenants]]
id = "acme"
paths = ["app.saas.example/acme", "portal.saas.example/acme"]
pool = "a"

[[tenants]]
id = "acme-eu"
paths = ["app.saas.example/eu/acme"]
pool = "b"
strip_prefix = true

[[tenants]]
id = "globex"
paths = ["app.saas.example/globex"]
domains = ["globex.example"]
pool = "c"
"#,
        hash_hex(OPS),
        a.addr,
        b.addr,
        c.addr,
        platform.addr
    )
}

#[tokio::test]
async fn path_tenants_match_whole_normalised_segments_and_never_reach_another_pool() {
    let (a, b, c, platform) = (
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("platform").await,
    );
    let gw = Gateway::start(&paths_config(&a, &b, &c, &platform)).await;

    for (target, pool, tenant, path) in [
        ("/acme", "a", "acme", "/acme"),
        ("/acme/", "a", "acme", "/acme/"),
        ("/acme/x/y?q=1", "a", "acme", "/acme/x/y?q=1"),
        ("/%61cme/x", "a", "acme", "/acme/x"),
        ("/globex/../acme/x", "a", "acme", "/acme/x"),
        // Dot-segments resolve before matching: this is globex's own path,
        // and it reaches globex as that path, never acme's pool.
        ("/acme/../globex", "c", "globex", "/globex"),
        ("/acme/%2e%2e/globex/z", "c", "globex", "/globex/z"),
        // strip_prefix: the backend sees the rest, the prefix in x-forwarded-prefix.
        ("/eu/acme/orders?page=2", "b", "acme-eu", "/orders?page=2"),
        ("/eu/acme", "b", "acme-eu", "/"),
    ] {
        let (status, body) = raw_get(
            &gw,
            "app.saas.example",
            target,
            "X-Forwarded-Prefix: /evil\r\nX-Tenant-Id: evil\r\n",
        )
        .await;
        assert_eq!(status, 200, "{target}: {body}");
        let e = Echo::parse(&body);
        assert_eq!(e.backend(), pool, "{target}");
        assert_eq!(e.header_all("x-tenant-id"), [tenant], "{target}");
        assert_eq!(e.0["path"], path, "{target}");
        let prefix = e.header_all("x-forwarded-prefix");
        if tenant == "acme-eu" {
            assert_eq!(prefix, ["/eu/acme"], "{target}");
        } else {
            assert!(prefix.is_empty(), "{target}: {prefix:?}");
        }
    }

    let forwarded = || a.count() + b.count() + c.count() + platform.count();
    let before = forwarded();
    // Unclaimed, not on a segment boundary, another case, or /eu alone.
    for target in [
        "/acmex",
        "/ACME",
        "/",
        "/eu",
        "/eu/acmex",
        "/acme/../../etc",
        "/glob%65x2",
    ] {
        let (status, body) = raw_get(&gw, "app.saas.example", target, "").await;
        assert_eq!(status, 404, "{target}: {body}");
        let p: Value = serde_json::from_str(&body).expect("problem+json");
        assert_eq!(p["type"], "tag:tenantgate,2026:unclaimed-path", "{target}");
    }
    // Paths that backends could read differently are refused outright.
    for target in [
        "/acme%2f..%2fglobex",
        "/acme/..%2Fglobex",
        "/acme\\..\\globex",
        "/acme/%00",
    ] {
        let (status, body) = raw_get(&gw, "app.saas.example", target, "").await;
        assert_eq!(status, 400, "{target}: {body}");
    }
    assert_eq!(forwarded(), before, "nothing unclaimed or ambiguous was forwarded");
    gw.wait_metric(
        "tenantgate_identity_refusals_total{reason=\"unclaimed_path\",tenant=\"_none\"}",
        7.0,
    )
    .await;

    // A shared host with a platform pool: unclaimed paths go there, with no tenant header.
    let (status, body) = raw_get(&gw, "portal.saas.example", "/pricing", "X-Tenant-Id: evil\r\n").await;
    assert_eq!(status, 200, "{body}");
    let e = Echo::parse(&body);
    assert_eq!(e.backend(), "platform");
    assert!(e.header_all("x-tenant-id").is_empty(), "{body}");
    let (status, body) = raw_get(&gw, "portal.saas.example", "/acme/home", "").await;
    assert_eq!((status, Echo::parse(&body).backend().to_string()), (200, "a".into()));

    // The domain still routes by host.
    let (status, body) = gw.get("globex.example", "/acme").await;
    assert_eq!((status, Echo::parse(&body).backend().to_string()), (200, "c".into()));
}

#[tokio::test]
async fn overlapping_prefixes_are_refused_by_the_api_naming_the_owner() {
    let (a, b, c, platform) = (
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("platform").await,
    );
    let gw = Gateway::start(&paths_config(&a, &b, &c, &platform)).await;
    let put = |id: &'static str, paths: Value| {
        let body = json!({"id": id, "pool": "a", "paths": paths});
        let gw = &gw;
        async move {
            gw.admin_call("PUT", &format!("/v1/tenants/{id}"), Some(OPS), Some(&body), &[])
                .await
        }
    };
    for (paths, owner) in [
        (json!(["app.saas.example/acme"]), "acme"),
        (json!(["app.saas.example/acme/admin"]), "acme"),
        (json!(["app.saas.example/eu"]), "acme-eu"),
    ] {
        let r = put("initech", paths.clone()).await;
        assert_eq!(r.status, 409, "{paths}: {}", r.json);
        assert_eq!(r.json["owners"], json!([owner]), "{paths}: {}", r.json);
    }
    let r = put("initech", json!(["api.saas.example/initech"])).await;
    assert_eq!(r.status, 422, "{}", r.json);
    assert!(r.json.to_string().contains("shared_hosts"), "{}", r.json);
    // A sibling prefix is fine, and routes at once.
    let r = put("initech", json!(["app.saas.example/initech"])).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let (status, body) = gw.get("app.saas.example", "/initech/x").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Echo::parse(&body).header("x-tenant-id").as_deref(), Some("initech"));
}

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .arg(&path)
        .output()
        .expect("run check");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

#[test]
fn check_refuses_duplicate_nested_and_unshared_prefixes_and_claimed_shared_hosts() {
    let base = r#"
[gateway]
http_listen = "127.0.0.1:1"
base_domains = ["saas.example"]
shared_hosts = ["app.example"]
[pools.p]
upstreams = ["127.0.0.1:2"]
"#;
    let tenant = |id: &str, extra: &str| format!("[[tenants]]\nid = \"{id}\"\npool = \"p\"\n{extra}\n");
    for (tenants, expect) in [
        (
            tenant("a", "paths = [\"app.example/x\"]") + &tenant("b", "paths = [\"app.example/x\"]"),
            "path prefix app.example/x is claimed by tenants \"a\", \"b\"",
        ),
        (
            tenant("a", "paths = [\"app.example/x\"]") + &tenant("b", "paths = [\"app.example/x/y\"]"),
            "path prefix app.example/x/y is inside prefix app.example/x of tenants \"a\", \"b\"",
        ),
        (
            tenant("a", "paths = [\"other.example/x\"]"),
            "other.example is not in [gateway] shared_hosts",
        ),
        (tenant("a", "paths = [\"app.example/x/\"]"), "is not host/prefix"),
        (tenant("a", "paths = [\"app.example/%78\"]"), "is not host/prefix"),
        (
            tenant("a", "domains = [\"app.example\"]"),
            "shared host app.example is also a domain of tenant \"a\"",
        ),
        (
            tenant("a", "jwt = \"maybe\""),
            "is not \"off\", \"optional\" or \"required\"",
        ),
        (tenant("a", "jwt = \"required\""), "no keys are configured"),
    ] {
        let (ok, out) = check(&format!("{base}{tenants}"));
        assert!(!ok, "{tenants}");
        assert!(out.contains(expect), "{tenants}\n{out}");
    }
    let (ok, out) = check(&format!(
        "{}{}",
        base.replace("[\"app.example\"]", "[\"app.example\", \"x.saas.example\"]"),
        tenant("a", "")
    ));
    assert!(!ok && out.contains("inside the platform domain saas.example"), "{out}");
    let fine = tenant("a", "paths = [\"app.example/x\"]\nstrip_prefix = true")
        + &tenant("b", "paths = [\"app.example/xy\", \"app.example/y/x\"]");
    let (ok, out) = check(&format!("{base}{fine}"));
    assert!(ok, "{out}");
}

// ---------------------------------------------------------------- JWT ---

/// A loopback JWKS server: serves the current document, counts fetches,
/// and can be stopped.
struct Jwks {
    url: String,
    doc: Arc<Mutex<String>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Jwks {
    async fn serve(doc: Value) -> Jwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        let doc = Arc::new(Mutex::new(doc.to_string()));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (d, h) = (d.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = d.lock().expect("doc").clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Jwks { url, doc, hits, task }
    }

    fn set(&self, doc: Value) {
        *self.doc.lock().expect("doc") = doc.to_string();
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A signing key and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
    /// The public key as PEM (for the HS/RS confusion attack).
    public_pem: String,
}

impl Signer {
    fn new(alg: Algorithm, kid: &str) -> Signer {
        let (pair, enc) = match alg {
            Algorithm::ES256 => {
                let p = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
                let e = EncodingKey::from_ec_pem(p.serialize_pem().as_bytes()).expect("ec key");
                (p, e)
            }
            Algorithm::RS256 => {
                let p = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa");
                let e = EncodingKey::from_rsa_pem(p.serialize_pem().as_bytes()).expect("rsa key");
                (p, e)
            }
            Algorithm::EdDSA => {
                let p = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
                let e = EncodingKey::from_ed_pem(p.serialize_pem().as_bytes()).expect("ed key");
                (p, e)
            }
            other => panic!("no signer for {other:?}"),
        };
        let jwk = match alg {
            Algorithm::EdDSA => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(pair.public_key_raw()), "kid": kid, "alg": "EdDSA"})
            }
            _ => {
                let mut j = serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, alg).expect("jwk"))
                    .expect("json");
                j["kid"] = json!(kid);
                j
            }
        };
        Signer {
            kid: kid.into(),
            alg,
            key: enc,
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).expect("sign")
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

const ISS: &str = "https://idp.example";

fn claims(tenant: &str, sub: &str) -> Value {
    json!({"iss": ISS, "aud": "tenantgate", "sub": sub, "exp": now() + 600, "org": {"id": tenant}})
}

fn jwt_config(a: &EchoBackend, b: &EchoBackend, jwks: &str, own: &str, token_from: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"

[identity]
header = "x-org-id"
header_hosts = ["api.internal.example"]
header_sources = ["127.0.0.0/8"]
max_tenants_per_subject = 2

[identity.jwt]
jwks_url = "{jwks}"
issuer = "{ISS}"
audience = "tenantgate"
claim = "/org/id"
leeway_secs = 30
token_from = "{token_from}"

[pools.a]
upstreams = ["{}"]
[pools.b]
upstreams = ["{}"]

[[tenants]]
id = "acme"
domains = ["acme.example"]
pool = "a"
jwt = "required"

[[tenants]]
id = "globex"
domains = ["globex.example"]
pool = "b"
jwt = "optional"

[[tenants]]
id = "umbrella"
domains = ["umbrella.example"]
pool = "b"

[[tenants]]
id = "initech"
domains = ["initech.example"]
pool = "b"
[tenants.jwt]
issuer = "https://login.initech.example"
jwks_url = "{own}"
"#,
        a.addr, b.addr
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Status, `WWW-Authenticate` and body of a GET with a bearer token.
async fn call(gw: &Gateway, host: &str, token: Option<&str>, extra: &[(&str, &str)]) -> (u16, Option<String>, String) {
    let mut req = reqwest::Client::new()
        .get(format!("http://{}/p", gw.http))
        .header("host", host);
    if let Some(t) = token {
        req = req.header("authorization", bearer(t));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, challenge, resp.text().await.expect("body"))
}

const INVALID: Option<&str> = Some("Bearer error=\"invalid_token\"");

#[tokio::test]
async fn tokens_are_checked_at_the_edge_and_a_claim_for_another_tenant_is_never_forwarded() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let rs = Signer::new(Algorithm::RS256, "rs-1");
    let ed = Signer::new(Algorithm::EdDSA, "ed-1");
    let jwks = Jwks::serve(json!({"keys": [es.jwk, rs.jwk, ed.jwk]})).await;
    let own_key = Signer::new(Algorithm::ES256, "initech-1");
    let own = Jwks::serve(json!({"keys": [own_key.jwk]})).await;
    let (a, b) = (backend("a").await, backend("b").await);
    let gw = Gateway::start(&jwt_config(&a, &b, &jwks.url, &own.url, "authorization")).await;

    // Valid tokens of each algorithm: forwarded with the subject.
    for s in [&es, &rs, &ed] {
        let (status, _, body) = call(
            &gw,
            "acme.example",
            Some(&s.sign(&claims("acme", "alice"))),
            &[("x-tenant-user", "mallory")],
        )
        .await;
        assert_eq!(status, 200, "{:?}: {body}", s.alg);
        let e = Echo::parse(&body);
        assert_eq!(e.header_all("x-tenant-user"), ["alice"], "{:?}", s.alg);
        assert_eq!(e.header("x-tenant-id").as_deref(), Some("acme"));
    }

    // A valid token naming another tenant: 403 tenant-mismatch, not forwarded.
    let before = a.count();
    let (status, _, body) = call(&gw, "acme.example", Some(&es.sign(&claims("globex", "bob"))), &[]).await;
    assert_eq!(status, 403, "{body}");
    let p: Value = serde_json::from_str(&body).expect("problem");
    assert_eq!(p["type"], "tag:tenantgate,2026:tenant-mismatch");
    assert_eq!(a.count(), before);
    gw.wait_metric(
        "tenantgate_identity_refusals_total{reason=\"tenant_mismatch\",tenant=\"acme\"}",
        1.0,
    )
    .await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("tenant mismatch"))
        .unwrap_or_else(|| panic!("{log}"));
    for part in [
        "resolved_tenant=\"acme\"",
        "claimed_tenant=\"globex\"",
        "subject=\"bob\"",
        "client=127.0.0.1",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }

    // Invalid tokens: 401 with the Bearer challenge, never forwarded.
    let t = now();
    let hs_confusion = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rs-1".into());
        jsonwebtoken::encode(
            &h,
            &claims("acme", "eve"),
            &EncodingKey::from_secret(rs.public_pem.as_bytes()),
        )
        .expect("sign")
    };
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT","kid":"es-1"}"#),
        b64url(claims("acme", "eve").to_string().as_bytes())
    );
    let tampered = {
        let good = es.sign(&claims("acme", "eve"));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = b64url(claims("acme", "root").to_string().as_bytes());
        parts[1] = &forged;
        parts.join(".")
    };
    let mut wrong_aud = claims("acme", "eve");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims("acme", "eve");
    wrong_iss["iss"] = json!("https://evil.example");
    let mut expired = claims("acme", "eve");
    expired["exp"] = json!(t - 120);
    let mut not_yet = claims("acme", "eve");
    not_yet["nbf"] = json!(t + 600);
    let mut no_claim = claims("acme", "eve");
    no_claim["org"] = json!({});
    for (what, token) in [
        ("HS256 signed with the RSA public key", hs_confusion),
        ("alg none", none),
        ("tampered payload", tampered),
        ("wrong audience", es.sign(&wrong_aud)),
        ("wrong issuer", es.sign(&wrong_iss)),
        ("expired beyond the leeway", es.sign(&expired)),
        ("not valid yet", es.sign(&not_yet)),
        ("no tenant claim", es.sign(&no_claim)),
        ("garbage", "not.a.token".to_string()),
    ] {
        let (status, challenge, body) = call(&gw, "acme.example", Some(&token), &[]).await;
        assert_eq!((status, challenge.as_deref()), (401, INVALID), "{what}: {body}");
    }
    assert_eq!(a.count(), before, "no invalid token was forwarded");
    // Expired, but within the leeway: accepted.
    let mut late = claims("acme", "alice");
    late["exp"] = json!(t - 5);
    assert_eq!(call(&gw, "acme.example", Some(&es.sign(&late)), &[]).await.0, 200);

    // No token: 401 on a required tenant, forwarded on an optional one.
    let (status, challenge, _) = call(&gw, "acme.example", None, &[]).await;
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")));
    let (status, _, body) = call(&gw, "globex.example", None, &[("x-tenant-user", "mallory")]).await;
    assert_eq!(status, 200);
    assert!(Echo::parse(&body).header("x-tenant-user").is_none(), "{body}");
    // Optional still refuses a token naming another tenant, and an invalid one.
    assert_eq!(
        call(&gw, "globex.example", Some(&es.sign(&claims("acme", "bob"))), &[])
            .await
            .0,
        403
    );
    assert_eq!(call(&gw, "globex.example", Some("x.y.z"), &[]).await.0, 401);
    // A tenant with jwt off does not look at tokens.
    assert_eq!(call(&gw, "umbrella.example", Some("x.y.z"), &[]).await.0, 200);

    // A tenant with its own identity provider: its issuer and keys only.
    let mut initech = claims("initech", "carol");
    initech["iss"] = json!("https://login.initech.example");
    assert_eq!(
        call(&gw, "initech.example", Some(&own_key.sign(&initech)), &[]).await.0,
        200
    );
    assert_eq!(
        call(&gw, "initech.example", Some(&es.sign(&claims("initech", "carol"))), &[])
            .await
            .0,
        401
    );
    assert_eq!(
        call(
            &gw,
            "initech.example",
            Some(&own_key.sign(&claims("initech", "carol"))),
            &[]
        )
        .await
        .0,
        401
    );

    // The header host: the trusted header names the tenant, and a token
    // naming another tenant is refused (the sources must agree).
    let (status, _, body) = call(
        &gw,
        "api.internal.example",
        Some(&es.sign(&claims("acme", "svc"))),
        &[("x-org-id", "acme")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let e = Echo::parse(&body);
    assert_eq!(e.header("x-tenant-id").as_deref(), Some("acme"));
    assert!(e.header("x-org-id").is_none(), "the trusted header is not forwarded");
    let (status, _, _) = call(
        &gw,
        "api.internal.example",
        Some(&es.sign(&claims("globex", "svc"))),
        &[("x-org-id", "acme")],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = call(&gw, "api.internal.example", None, &[("x-org-id", "globex")]).await;
    assert_eq!(status, 200);
    assert_eq!(call(&gw, "api.internal.example", None, &[]).await.0, 400);
    assert_eq!(
        call(&gw, "api.internal.example", None, &[("x-org-id", "nobody")])
            .await
            .0,
        421
    );
    let two = gw
        .raw("GET / HTTP/1.1\r\nHost: api.internal.example\r\nx-org-id: globex\r\nx-org-id: acme\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&two), 400, "{two}");
    // On any other host the header is stripped like any spoofable header.
    let (_, _, body) = call(&gw, "umbrella.example", None, &[("x-org-id", "acme")]).await;
    assert!(Echo::parse(&body).header("x-org-id").is_none(), "{body}");

    // One subject on more tenants than max_tenants_per_subject (2): counted once.
    for tenant in ["acme", "globex"] {
        let host = format!("{tenant}.example");
        assert_eq!(
            call(&gw, &host, Some(&es.sign(&claims(tenant, "roamer"))), &[]).await.0,
            200
        );
    }
    let mut third = claims("initech", "roamer");
    third["iss"] = json!("https://login.initech.example");
    assert_eq!(
        call(&gw, "initech.example", Some(&own_key.sign(&third)), &[]).await.0,
        200
    );
    gw.wait_metric("tenantgate_identity_subject_spread_total{kind=\"subject\"}", 1.0)
        .await;
    assert!(gw.log().contains("subject=\"roamer\""), "{}", gw.log());
    let _ = (jwks.hits(), &own.task);
}

#[tokio::test]
async fn keys_rotate_by_kid_and_the_last_good_keys_outlive_an_unreachable_jwks() {
    let old = Signer::new(Algorithm::ES256, "2026-11");
    let new = Signer::new(Algorithm::EdDSA, "2026-12");
    let mut jwks = Jwks::serve(json!({"keys": [old.jwk]})).await;
    let (a, b) = (backend("a").await, backend("b").await);
    // initech's own JWKS URL points at a port nobody listens on.
    let closed = format!("http://127.0.0.1:{}/jwks.json", common::free_port());
    let gw = Gateway::start(&jwt_config(&a, &b, &jwks.url, &closed, "authorization")).await;

    assert_eq!(
        call(&gw, "acme.example", Some(&old.sign(&claims("acme", "alice"))), &[])
            .await
            .0,
        200
    );
    assert_eq!(jwks.hits(), 1);
    // The IdP rotates: a token with the new kid makes the gateway refetch at once.
    jwks.set(json!({"keys": [old.jwk, new.jwk]}));
    assert_eq!(
        call(&gw, "acme.example", Some(&new.sign(&claims("acme", "alice"))), &[])
            .await
            .0,
        200
    );
    assert_eq!(jwks.hits(), 2);
    // Unknown kids refetch at most once per 10 s: a flood costs no fetches.
    let stranger = Signer::new(Algorithm::ES256, "unknown");
    for _ in 0..5 {
        let (status, challenge, _) = call(&gw, "acme.example", Some(&stranger.sign(&claims("acme", "eve"))), &[]).await;
        assert_eq!((status, challenge.as_deref()), (401, INVALID));
    }
    assert_eq!(jwks.hits(), 2, "unknown kids are refetched at most once per 10 s");

    // The JWKS goes away: the keys already loaded keep working.
    jwks.task.abort();
    let _ = (&mut jwks.task).await;
    assert_eq!(
        call(&gw, "acme.example", Some(&old.sign(&claims("acme", "alice"))), &[])
            .await
            .0,
        200
    );
    assert_eq!(
        call(&gw, "acme.example", Some(&new.sign(&claims("acme", "bob"))), &[])
            .await
            .0,
        200
    );

    // A JWKS that was never reachable: 503, never forwarded.
    let before = b.count();
    let mut c = claims("initech", "carol");
    c["iss"] = json!("https://login.initech.example");
    let (status, _, body) = call(&gw, "initech.example", Some(&old.sign(&c)), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(b.count(), before);
    gw.wait_metric(
        "tenantgate_identity_refusals_total{reason=\"no_keys\",tenant=\"initech\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_token_can_come_from_a_cookie() {
    let es = Signer::new(Algorithm::ES256, "k");
    let jwks = Jwks::serve(json!({"keys": [es.jwk]})).await;
    let (a, b) = (backend("a").await, backend("b").await);
    let gw = Gateway::start(&jwt_config(&a, &b, &jwks.url, &jwks.url, "cookie:session")).await;
    let good = es.sign(&claims("acme", "alice"));
    let cookie = format!("theme=dark; session={good}");
    let (status, _, body) = call(&gw, "acme.example", None, &[("cookie", &cookie)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Echo::parse(&body).header("x-tenant-user").as_deref(), Some("alice"));
    // The Authorization header is not where this gateway looks.
    assert_eq!(call(&gw, "acme.example", Some(&good), &[]).await.0, 401);
    let other = format!("session={}", es.sign(&claims("globex", "alice")));
    assert_eq!(call(&gw, "acme.example", None, &[("cookie", &other)]).await.0, 403);
}

#[tokio::test]
async fn a_tenant_with_its_own_identity_provider_is_checked_without_a_global_one() {
    // An HS256 key (kty oct) from the tenant's own JWKS; the default claim is `tenant`.
    let secret = b"initech-shared-secret-0123456789";
    let jwks = Jwks::serve(json!({"keys": [{"kty": "oct", "kid": "hs", "k": b64url(secret)}]})).await;
    let a = backend("a").await;
    let gw = Gateway::start(&format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
[pools.a]
upstreams = ["{}"]
[[tenants]]
id = "initech"
domains = ["initech.example"]
pool = "a"
[tenants.jwt]
jwks_url = "{}"
"#,
        a.addr, jwks.url
    ))
    .await;
    let sign = |tenant: &str| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("hs".into());
        let c = json!({"sub": "dave", "exp": now() + 60, "tenant": tenant});
        jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(secret)).expect("sign")
    };
    let (status, challenge, _) = call(&gw, "initech.example", None, &[]).await;
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")));
    let (status, _, body) = call(&gw, "initech.example", Some(&sign("initech")), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Echo::parse(&body).header("x-tenant-user").as_deref(), Some("dave"));
    assert_eq!(call(&gw, "initech.example", Some(&sign("acme")), &[]).await.0, 403);
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn a_plan_turns_the_check_on_for_its_tenants_and_a_tenant_or_template_setting_wins() {
    let es = Signer::new(Algorithm::ES256, "k");
    let jwks = Jwks::serve(json!({"keys": [es.jwk]})).await;
    let a = backend("a").await;
    let gw = Gateway::start(&format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
[identity.jwt]
jwks_url = "{}"
issuer = "{ISS}"
audience = "tenantgate"
claim = "/org/id"
[limits]
default_plan = "free"
[plans.free]
requests_per_second = 1000
[plans.business]
requests_per_second = 1000
jwt = "required"
[templates.public]
jwt = "off"
[pools.a]
upstreams = ["{}"]
[[tenants]]
id = "acme"
domains = ["acme.example"]
pool = "a"
plan = "business"
[[tenants]]
id = "globex"
domains = ["globex.example"]
pool = "a"
plan = "business"
jwt = "optional"
[[tenants]]
id = "hooli"
domains = ["hooli.example"]
pool = "a"
plan = "business"
template = "public"
[[tenants]]
id = "umbrella"
domains = ["umbrella.example"]
pool = "a"
"#,
        jwks.url, a.addr
    ))
    .await;
    // The business plan requires a token of the tenant's own.
    assert_eq!(call(&gw, "acme.example", None, &[]).await.0, 401);
    let (status, _, body) = call(&gw, "acme.example", Some(&es.sign(&claims("acme", "alice"))), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Echo::parse(&body).header("x-tenant-user").as_deref(), Some("alice"));
    assert_eq!(
        call(&gw, "acme.example", Some(&es.sign(&claims("globex", "alice"))), &[])
            .await
            .0,
        403
    );
    // The tenant's own `optional` wins over its plan's `required`.
    assert_eq!(call(&gw, "globex.example", None, &[]).await.0, 200);
    assert_eq!(
        call(&gw, "globex.example", Some(&es.sign(&claims("acme", "bob"))), &[])
            .await
            .0,
        403
    );
    // So does its template's `off`; and the default plan sets nothing.
    assert_eq!(call(&gw, "hooli.example", None, &[]).await.0, 200);
    assert_eq!(call(&gw, "umbrella.example", None, &[]).await.0, 200);
}

#[test]
fn a_plan_jwt_is_checked_and_refused_in_a_limits_table() {
    let (ok, out) = check(
        r#"
[gateway]
http_listen = "127.0.0.1:0"
[plans.business]
requests_per_second = 10
jwt = "sometimes"
[pools.a]
upstreams = ["127.0.0.1:9"]
[[tenants]]
id = "acme"
domains = ["acme.example"]
pool = "a"
plan = "business"
[[tenants]]
id = "globex"
domains = ["globex.example"]
pool = "a"
plan = "business"
[tenants.limits]
jwt = "required"
"#,
    );
    assert!(!ok, "{out}");
    assert!(out.contains("plans.business.jwt"), "{out}");
    assert!(out.contains("\"sometimes\""), "{out}");
    assert!(out.contains("limits.jwt"), "{out}");
}

#[tokio::test]
async fn shared_hosts_are_served_over_https_and_http2_decides_like_http1() {
    let es = Signer::new(Algorithm::ES256, "k");
    let jwks = Jwks::serve(json!({"keys": [es.jwk]})).await;
    let (a, b) = (backend("a").await, backend("b").await);
    let gw = Gateway::start(&format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
shared_hosts = ["app.saas.example"]

[tls]
issuer = "internal"

[identity.jwt]
jwks_url = "{}"
issuer = "{ISS}"
audience = "tenantgate"
claim = "/org/id"

[pools.a]
upstreams = ["{}"]
[pools.b]
upstreams = ["{}"]

[[tenants]]
id = "acme"
paths = ["app.saas.example/acme"]
strip_prefix = true
pool = "a"
jwt = "required"

[[tenants]]
id = "globex"
paths = ["app.saas.example/globex"]
pool = "b"
jwt = "required"
"#,
        jwks.url, a.addr, b.addr
    ))
    .await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("internal CA root");
    let token = es.sign(&claims("acme", "alice"));
    for http1 in [true, false] {
        let client = common::https_client(&root, &["app.saas.example"], gw.https, http1);
        let get = |path: &str| {
            client
                .get(format!("https://app.saas.example:{}{path}", gw.https.port()))
                .header("authorization", bearer(&token))
                .send()
        };
        let resp = get("/acme/orders?x=1")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
        assert_eq!(resp.status(), 200, "http1={http1}");
        let e = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!((e.backend(), e.0["path"].as_str()), ("a", Some("/orders?x=1")));
        assert_eq!(e.header("x-tenant-user").as_deref(), Some("alice"));
        assert_eq!(e.header("x-forwarded-prefix").as_deref(), Some("/acme"));
        // acme's token on globex's path: 403, never forwarded.
        let resp = get("/globex/orders").await.expect("sent");
        assert_eq!(resp.status(), 403, "http1={http1}");
        assert_eq!(get("/nobody").await.expect("sent").status(), 404);
    }
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background_and_a_removed_key_stops_verifying() {
    let k1 = Signer::new(Algorithm::ES256, "k1");
    let k2 = Signer::new(Algorithm::ES256, "k2");
    let jwks = Jwks::serve(json!({"keys": [k1.jwk]})).await;
    let (a, b) = (backend("a").await, backend("b").await);
    let text = jwt_config(&a, &b, &jwks.url, &jwks.url, "authorization")
        .replace("leeway_secs = 30", "leeway_secs = 30\njwks_refresh_secs = 1");
    let gw = Gateway::start(&text).await;
    let token = k1.sign(&claims("acme", "alice"));
    assert_eq!(call(&gw, "acme.example", Some(&token), &[]).await.0, 200);
    // The IdP drops k1 (no new kid is ever asked for): the periodic refresh
    // alone takes it away, and the cached verification of the token with it.
    jwks.set(json!({"keys": [k2.jwk]}));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _, _) = call(&gw, "acme.example", Some(&token), &[]).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(std::time::Instant::now() < deadline, "k1 still accepted after 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        call(&gw, "acme.example", Some(&k2.sign(&claims("acme", "alice"))), &[])
            .await
            .0,
        200
    );
}
