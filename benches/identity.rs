//! Admission cost of the one policy with tenant identity on, at 100,000
//! tenants: `Policy::decide` for a request by host with JWT off (the
//! baseline), with JWT required and a repeated token (verified-token cache),
//! with a new token each time (a signature check against a cached key:
//! ES256, EdDSA), and by path prefix on a shared host.
//! Run: `cargo bench --bench identity`; figures in
//! `benches/results/identity-2026-12-04.md`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tenantgate::acme::Challenges;
use tenantgate::config::Source;
use tenantgate::proxy::policy::{Decision, Outcome, RequestFacts};
use tenantgate::proxy::{ConnFacts, Policy};
use tenantgate::registry::Registry;
use tenantgate::telemetry::Metrics;

const TENANTS: usize = 100_000;

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

/// 100,000 tenants, each with a subdomain and a path prefix; `jwt` on all.
fn config(jwks_file: &str, jwt: &str) -> &'static str {
    let mut out = String::with_capacity(TENANTS * 120);
    let _ = writeln!(
        out,
        "[gateway]\nhttp_listen = \"127.0.0.1:1\"\nbase_domains = [\"saas.example\"]\nshared_hosts = [\"app.shared.example\"]\n\n[telemetry]\naccess_log = false\n\n[identity.jwt]\njwks_file = {jwks_file:?}\nissuer = \"https://idp.example\"\naudience = \"tenantgate\"\nclaim = \"/org/id\"\n\n[pools.p]\nupstreams = [\"127.0.0.1:2\"]\n"
    );
    for i in 1..=TENANTS {
        let _ = writeln!(
            out,
            "[[tenants]]\nid = \"t{i:06}\"\nsubdomain = \"t{i:06}\"\npaths = [\"app.shared.example/t{i:06}\"]\npool = \"p\"\njwt = \"{jwt}\"\n"
        );
    }
    Box::leak(out.into_boxed_str())
}

fn policy(text: &'static str) -> Policy {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let source = Source::Embedded {
        name: "identity-bench.toml",
        text,
    };
    let registry = Arc::new(Registry::load(source, metrics.clone()).unwrap_or_else(|e| panic!("config: {e}")));
    Policy::new(registry, metrics, Arc::new(Challenges::default()), None)
}

struct Key {
    kid: &'static str,
    alg: Algorithm,
    enc: EncodingKey,
}

fn sign(k: &Key, n: usize) -> String {
    let mut h = Header::new(k.alg);
    h.kid = Some(k.kid.into());
    let claims = json!({"iss": "https://idp.example", "aud": "tenantgate", "sub": format!("user{n}"),
        "exp": 4_000_000_000u64, "org": {"id": "t054321"}});
    jsonwebtoken::encode(&h, &claims, &k.enc).expect("sign")
}

/// Whether `decide` forwards to `t054321`.
fn decide(p: &Policy, target: &str, host: &str, token: Option<&str>) -> bool {
    let snap = p.registry().snapshot();
    let mut headers = http::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            "authorization",
            http::HeaderValue::from_str(&format!("Bearer {t}")).expect("value"),
        );
    }
    let conn = ConnFacts::default();
    let req = RequestFacts {
        method: "GET",
        target,
        authority: Ok(host),
        conn: &conn,
        prefs: tenantgate::proxy::pages::Prefs::default(),
        headers: &headers,
    };
    let mut o = Outcome::begin("GET", target);
    match p.decide(&snap, &req, &mut o).now_or_never() {
        Some(Decision::Forward(f)) => f.tenant.is_some_and(|t| &*t.id == "t054321"),
        _ => false,
    }
}

fn admission(c: &mut Criterion) {
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    let es = Key {
        kid: "es",
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).expect("ec"),
    };
    let ed_x = b64url(ed.public_key_raw());
    let ed = Key {
        kid: "ed",
        alg: Algorithm::EdDSA,
        enc: EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("ed"),
    };
    let mut es_jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&es.enc, Algorithm::ES256).expect("jwk"))
            .expect("json");
    es_jwk["kid"] = json!("es");
    let jwks = json!({"keys": [es_jwk, {"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": "ed", "alg": "EdDSA"}]});
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).expect("write jwks");
    let jwks_file = jwks_path.to_str().expect("utf-8 path");

    let off = policy(config(jwks_file, "off"));
    let on = policy(config(jwks_file, "required"));
    let mut g = c.benchmark_group("admission_100k_tenants");
    assert!(decide(&off, "/", "t054321.saas.example", None));
    g.bench_function("host_jwt_off", |b| {
        b.iter(|| decide(&off, black_box("/"), black_box("t054321.saas.example"), None))
    });
    assert!(decide(&off, "/t054321/orders", "app.shared.example", None));
    g.bench_function("path_prefix_jwt_off", |b| {
        b.iter(|| {
            decide(
                &off,
                black_box("/t054321/orders?page=2"),
                black_box("app.shared.example"),
                None,
            )
        })
    });
    for key in [&es, &ed] {
        let alg = format!("{:?}", key.alg);
        let token = sign(key, 0);
        assert!(decide(&on, "/", "t054321.saas.example", Some(&token)), "{alg}");
        g.bench_function(format!("host_jwt_{alg}_repeated_token"), |b| {
            b.iter(|| decide(&on, "/", black_box("t054321.saas.example"), Some(black_box(&token))))
        });
        // More distinct tokens than the verified-token cache holds, in a
        // cycle: each one costs a signature check against the cached key.
        let tokens: Vec<String> = (1..=150_000).map(|n| sign(key, n)).collect();
        let mut i = 0;
        g.bench_function(format!("host_jwt_{alg}_new_token"), |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                decide(&on, "/", black_box("t054321.saas.example"), Some(&tokens[i]))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
