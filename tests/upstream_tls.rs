//! TLS and mTLS to upstreams (`[pools.<name>] tls = true`), against a real
//! rustls backend with a private CA made by the test that requires a client
//! certificate: the request passes with the configured SNI and client
//! certificate over one kept-alive connection; a wrong CA, a wrong server
//! name and a missing client certificate are all refused with a 502 and a
//! logged reason, and the backend never sees a request; `tls_verify =
//! false` is the loudly-logged escape hatch; bad files fail `check` naming
//! the file, pool, field and fix.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::upstream::{Pki, TlsBackend};
use common::{Gateway, BIN};

/// A config with one tenant on pool `p`, whose keys are `pool`.
fn config(backend: std::net::SocketAddr, pool: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
metrics_listen = "{{metrics}}"
base_domains = ["saas.example"]
connect_timeout_ms = 2000

[pools.p]
upstreams = ["{backend}"]
{pool}

[[tenants]]
id = "acme"
subdomain = "acme"
pool = "p"
"#
    )
}

/// The private CA, a backend certificate for `backend.internal` and
/// 127.0.0.1, and a client certificate, written into `dir`.
fn pki(dir: &Path) -> (Pki, common::upstream::Leaf) {
    let pki = Pki::new("upstream test CA");
    pki.write_ca(dir, "ca.pem");
    let server = pki.leaf("backend", &["backend.internal", "127.0.0.1"]);
    pki.leaf("tenantgate-client", &["tenantgate.internal"])
        .write(dir, "client");
    (pki, server)
}

const MTLS: &str = r#"tls = true
tls_server_name = "backend.internal"
tls_ca_file = "ca.pem"
tls_client_cert = "client.pem"
tls_client_key = "client.key""#;

fn line<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.lines().find_map(|l| l.strip_prefix(key))
}

#[tokio::test]
async fn mtls_backend_gets_the_request_with_sni_and_client_certificate_over_one_kept_alive_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, server) = pki(dir.path());
    let backend = TlsBackend::spawn(&server, Some(&pki.ca_pem)).await;
    let gw = Gateway::start_in(dir, &config(backend.addr, MTLS)).await;
    for i in 0..5 {
        let (status, body) = gw.get("acme.saas.example", &format!("/r{i}")).await;
        assert_eq!(status, 200, "{body}\n{}", gw.log());
        assert_eq!(line(&body, "sni="), Some("backend.internal"), "{body}");
        assert_eq!(line(&body, "client="), Some("tenantgate-client"), "{body}");
        assert_eq!(line(&body, "alpn="), Some("http/1.1"), "{body}");
        assert_eq!(line(&body, "x-tenant-id: "), Some("acme"), "{body}");
        assert_eq!(line(&body, "x-forwarded-for: "), Some("127.0.0.1"), "{body}");
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "sequential requests reuse the kept-alive TLS connection"
    );
}

#[tokio::test]
async fn a_large_body_in_many_small_records_arrives_whole_and_the_connection_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, server) = pki(dir.path());
    let backend = TlsBackend::spawn(&server, Some(&pki.ca_pem)).await;
    let gw = Gateway::start_in(dir, &config(backend.addr, MTLS)).await;
    let want = String::from_utf8(common::upstream::big_body()).expect("letters");
    for path in ["/big", "/small", "/big", "/small"] {
        let (status, body) = gw.get("acme.saas.example", path).await;
        assert_eq!(status, 200, "{}", gw.log());
        match path {
            "/big" => assert!(body == want, "{} bytes, not the {} sent", body.len(), want.len()),
            _ => assert_eq!(line(&body, "sni="), Some("backend.internal"), "{body}"),
        }
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 4);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
}

#[tokio::test]
async fn default_server_name_is_the_upstream_ip_and_no_sni_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, server) = pki(dir.path());
    let backend = TlsBackend::spawn(&server, Some(&pki.ca_pem)).await;
    let pool =
        "tls = true\ntls_ca_file = \"ca.pem\"\ntls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"";
    let gw = Gateway::start_in(dir, &config(backend.addr, pool)).await;
    let (status, body) = gw.get("acme.saas.example", "/").await;
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    assert_eq!(line(&body, "sni="), Some("none"), "an IP address is never sent as SNI");
}

#[tokio::test]
async fn backend_signed_by_another_ca_is_refused_with_502_and_a_logged_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, _) = pki(dir.path());
    let rogue = Pki::new("rogue CA");
    let server = rogue.leaf("backend", &["backend.internal"]);
    let backend = TlsBackend::spawn(&server, Some(&pki.ca_pem)).await;
    let gw = Gateway::start_in(dir, &config(backend.addr, MTLS)).await;
    let (status, _) = gw.get("acme.saas.example", "/").await;
    assert_eq!(status, 502);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    let log = gw.log_with(&["TLS handshake failed", "UnknownIssuer"]).await;
    assert!(
        log.contains("TLS handshake failed") && log.contains("UnknownIssuer"),
        "{log}"
    );
    assert!(
        log.contains("\"tenant\":\"acme\"") || log.contains("tenant=\"acme\"") || log.contains("acme"),
        "{log}"
    );
}

#[tokio::test]
async fn certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, server) = pki(dir.path());
    let backend = TlsBackend::spawn(&server, Some(&pki.ca_pem)).await;
    let pool = MTLS.replace("backend.internal", "billing.internal");
    let gw = Gateway::start_in(dir, &config(backend.addr, &pool)).await;
    let (status, _) = gw.get("acme.saas.example", "/").await;
    assert_eq!(status, 502);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    let log = gw.log_with(&["not valid for name"]).await;
    assert!(log.contains("not valid for name"), "{log}");
}

#[tokio::test]
async fn missing_client_certificate_is_refused_by_the_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, server) = pki(dir.path());
    let backend = TlsBackend::spawn(&server, Some(&pki.ca_pem)).await;
    let pool = "tls = true\ntls_server_name = \"backend.internal\"\ntls_ca_file = \"ca.pem\"";
    let gw = Gateway::start_in(dir, &config(backend.addr, pool)).await;
    let (status, _) = gw.get("acme.saas.example", "/").await;
    assert_eq!(status, 502, "{}", gw.log());
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backend.handshake_errors().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backend saw no refused handshake"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors = backend.handshake_errors().join("\n");
    assert!(errors.contains("certificate"), "{errors}");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, server) = pki(dir.path());
    Pki::new("rogue CA")
        .leaf("intruder", &["intruder.internal"])
        .write(dir.path(), "client");
    let backend = TlsBackend::spawn(&server, Some(&pki.ca_pem)).await;
    let gw = Gateway::start_in(dir, &config(backend.addr, MTLS)).await;
    let (status, _) = gw.get("acme.saas.example", "/").await;
    assert_eq!(status, 502);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tls_verify_false_accepts_any_certificate_and_says_so_loudly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rogue = Pki::new("rogue CA");
    let backend = TlsBackend::spawn(&rogue.leaf("backend", &["x.internal"]), None).await;
    let gw = Gateway::start_in(dir, &config(backend.addr, "tls = true\ntls_verify = false")).await;
    let (status, body) = gw.get("acme.saas.example", "/").await;
    assert_eq!(status, 200, "{body}");
    let log = gw.log_with(&["NOT verified"]).await;
    assert!(log.contains("NOT verified"), "{log}");
}

#[tokio::test]
async fn plain_backend_behind_a_tls_pool_gets_502_not_a_hang() {
    let echo = common::backend("plain").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_pki, _) = pki(dir.path());
    let gw = Gateway::start_in(dir, &config(echo.addr, MTLS)).await;
    let started = std::time::Instant::now();
    let (status, _) = gw.get("acme.saas.example", "/").await;
    assert_eq!(status, 502);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Runs `tenantgate check` on the config with `pool` keys and `files`.
fn check(pool: &str, files: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).expect("write");
    }
    let path = dir.path().join("gw.toml");
    let text = config("127.0.0.1:9443".parse().expect("addr"), pool)
        .replace("{http}", "127.0.0.1:8080")
        .replace("{metrics}", "127.0.0.1:9090");
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(&path)
        .output()
        .expect("check");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

#[test]
fn bad_tls_files_fail_check_naming_file_pool_field_and_fix() {
    let pki = Pki::new("ca");
    let client = pki.leaf("c", &["c.internal"]);
    let other = pki.leaf("o", &["o.internal"]);
    let ca = pki.ca_pem.as_str();

    let (ok, out) = check(
        MTLS,
        &[
            ("ca.pem", ca),
            ("client.pem", &client.cert_pem),
            ("client.key", &client.key_pem),
        ],
    );
    assert!(ok, "{out}");

    // A key that belongs to another certificate.
    let (ok, out) = check(
        MTLS,
        &[
            ("ca.pem", ca),
            ("client.pem", &client.cert_pem),
            ("client.key", &other.key_pem),
        ],
    );
    assert!(!ok);
    assert!(
        out.contains("gw.toml")
            && out.contains("pools.p.tls_client_key")
            && out.contains("client.key")
            && out.contains("does not match")
            && out.contains("fix:"),
        "{out}"
    );

    // A missing CA file, a CA file that is not PEM.
    let (ok, out) = check(
        MTLS,
        &[("client.pem", &client.cert_pem), ("client.key", &client.key_pem)],
    );
    assert!(
        !ok && out.contains("pools.p.tls_ca_file") && out.contains("cannot read"),
        "{out}"
    );
    let files = [
        ("ca.pem", "garbage"),
        ("client.pem", client.cert_pem.as_str()),
        ("client.key", client.key_pem.as_str()),
    ];
    let (ok, out) = check(MTLS, &files);
    assert!(
        !ok && out.contains("pools.p.tls_ca_file") && out.contains("no certificate"),
        "{out}"
    );

    // A certificate without its key; TLS keys without tls = true; a bad name.
    let (ok, out) = check(
        "tls = true\ntls_client_cert = \"client.pem\"",
        &[("client.pem", &client.cert_pem)],
    );
    assert!(
        !ok && out.contains("pools.p.tls_client_key") && out.contains("go together"),
        "{out}"
    );
    let (ok, out) = check("tls_ca_file = \"ca.pem\"", &[("ca.pem", ca)]);
    assert!(
        !ok && out.contains("pools.p.tls_ca_file") && out.contains("tls is off"),
        "{out}"
    );
    let (ok, out) = check("tls = true\ntls_server_name = \"not a name\"", &[]);
    assert!(!ok && out.contains("pools.p.tls_server_name"), "{out}");
    // An unknown key is refused, not ignored.
    let (ok, out) = check("tls = true\ntls_verfy = false", &[]);
    assert!(!ok && out.contains("tls_verfy"), "{out}");
}

#[tokio::test]
async fn a_reload_with_new_tls_files_takes_effect_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, server) = pki(dir.path());
    // The pool trusts another CA at first: refused.
    Pki::new("old CA").write_ca(dir.path(), "ca.pem");
    let backend = TlsBackend::spawn(&server, Some(&pki.ca_pem)).await;
    let cfg = config(backend.addr, MTLS);
    let gw = Gateway::start_in(dir, &cfg).await;
    assert_eq!(gw.get("acme.saas.example", "/").await.0, 502);
    // The right CA under a new name, and a reload: the new settings open
    // new connections.
    pki.write_ca(gw.dir(), "ca-new.pem");
    gw.write_config(&cfg.replace("ca.pem", "ca-new.pem"));
    gw.wait_status("acme.saas.example", 200).await;
    // A reload naming an unreadable client key is refused: the pool
    // keeps working on what it had.
    gw.write_config(&cfg.replace("ca.pem", "ca-new.pem").replace("client.key", "missing.key"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("missing.key") {
        assert!(
            std::time::Instant::now() < deadline,
            "the bad reload was not logged: {}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.get("acme.saas.example", "/").await.0, 200);
}
