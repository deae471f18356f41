//! HTTPS: SNI certificate selection, HTTP/2, the internal CA, operator
//! certificates, SNI/Host mismatch, plain-HTTP redirects and challenges.

mod common;

use common::{backend, handshake, handshake_chain, handshake_full, https_client, raw_status, Echo, Gateway};
use tenantgate::demo::EchoBackend;

fn config(shared: &EchoBackend, dedicated: &EchoBackend, tls_extra: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
base_domains = ["saas.example"]

[tls]
issuer = "internal"
{tls_extra}

[pools.shared]
upstreams = ["{}"]

[pools.dedicated]
upstreams = ["{}"]

[[tenants]]
id = "acme"
subdomain = "acme"
domains = ["app.acme.com", "*.acme.io"]
pool = "dedicated"

[[tenants]]
id = "globex"
subdomain = "globex"
domains = ["portal.globex.example"]
pool = "shared"

[[tenants]]
id = "plainco"
domains = ["plain.example.com"]
pool = "shared"
redirect_https = false
"#,
        shared.addr, dedicated.addr
    )
}

async fn start(tls_extra: &str) -> (Gateway, Vec<u8>, EchoBackend, EchoBackend) {
    let shared = backend("shared").await;
    let dedicated = backend("dedicated").await;
    let gw = Gateway::start(&config(&shared, &dedicated, tls_extra)).await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("internal CA root written");
    (gw, root, shared, dedicated)
}

const HOSTS: [&str; 5] = [
    "acme.saas.example",
    "app.acme.com",
    "eu.acme.io",
    "globex.saas.example",
    "portal.globex.example",
];

#[tokio::test]
async fn internal_ca_serves_every_tenant_host_over_http1_and_http2() {
    let (gw, root, _shared, dedicated) = start("").await;
    for http1 in [true, false] {
        let client = https_client(&root, &HOSTS, gw.https, http1);
        for host in HOSTS {
            let url = format!("https://{host}:{}/x", gw.https.port());
            let resp = client
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}\n{}", gw.log()));
            let want = if http1 {
                reqwest::Version::HTTP_11
            } else {
                reqwest::Version::HTTP_2
            };
            assert_eq!(resp.version(), want, "{host}");
            assert_eq!(resp.status().as_u16(), 200, "{host}");
            let echo = Echo::parse(&resp.text().await.expect("body"));
            let tenant = if host.contains("acme") { "acme" } else { "globex" };
            assert_eq!(echo.header_all("x-tenant-id"), vec![tenant], "{host}");
            assert_eq!(echo.header_all("x-forwarded-proto"), vec!["https"], "{host}");
        }
    }
    assert_eq!(dedicated.count(), 6);
    assert!(gw.metric("tenantgate_tls_handshakes_total{result=\"ok\"}").await >= 2.0);
    // Leaves are signed by an intermediate, sent with them; the root
    // (self-signed, the client's trust anchor) is never sent.
    let (_, chain) = handshake_chain(gw.https, Some("app.acme.com"), &root)
        .await
        .expect("handshake");
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let names: Vec<(String, String)> = chain
        .iter()
        .map(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(der).expect("certificate");
            (c.subject().to_string(), c.issuer().to_string())
        })
        .collect();
    assert_eq!(
        names[0].1, names[1].0,
        "the leaf's issuer is the intermediate: {names:?}"
    );
    assert_eq!(names[1].1, "CN=tenantgate internal CA", "{names:?}");
    assert_ne!(names[1].0, names[1].1, "no self-signed root in the chain: {names:?}");
    // One certificate per name: no certificate carries another host, so none
    // publishes one customer's domains to another.
    for host in HOSTS {
        let (_, leaf) = handshake_full(gw.https, Some(host), &root).await.expect("handshake");
        let parent_wildcard = host.split_once('.').map(|(_, p)| format!("*.{p}"));
        let names = san_names(&leaf);
        assert!(
            names == [host.to_string()] || Some(names.concat()) == parent_wildcard,
            "{host}: certificate names {names:?}"
        );
    }
}

#[tokio::test]
async fn unknown_or_missing_sni_gets_no_certificate() {
    let (gw, root, shared, dedicated) = start("").await;
    assert_eq!(
        handshake(gw.https, Some("app.acme.com"), &root).await,
        Ok(Some(b"h2".to_vec()))
    );
    // Refused with a fatal unrecognized_name alert (RFC 6066), as both a
    // rustls and an OpenSSL client read it, never a bare close.
    for sni in ["unknown.example", "x.y.acme.io", "saas.example", "other.saas.example"] {
        let r = handshake(gw.https, Some(sni), &root).await;
        assert!(
            r.as_ref().is_err_and(|e| e.contains("UnrecognisedName")),
            "{sni} must be refused with unrecognized_name, got {r:?}"
        );
    }
    let r = handshake(gw.https, None, &root).await;
    assert!(
        r.as_ref().is_err_and(|e| e.contains("UnrecognisedName")),
        "no SNI, no default: refused, got {r:?}"
    );
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &gw.https.to_string(),
            "-servername",
            "scanner.example",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("unrecognized name"), "openssl saw: {text}");
    assert_eq!(shared.count() + dedicated.count(), 0);
    assert_eq!(
        gw.metric("tenantgate_tls_handshakes_total{result=\"unknown_sni\"}")
            .await,
        5.0
    );
    assert_eq!(
        gw.metric("tenantgate_tls_handshakes_total{result=\"no_sni\"}").await,
        1.0
    );

    let (gw, root, _, _) = start("default_sni = \"app.acme.com\"").await;
    assert!(
        handshake(gw.https, None, &root).await.is_ok(),
        "default certificate without SNI"
    );
}

#[tokio::test]
async fn host_not_covered_by_the_handshake_gets_421() {
    let (gw, root, shared, dedicated) = start("").await;
    let client = https_client(&root, &["app.acme.com", "eu.acme.io"], gw.https, true);
    let get = |url: String, host: &'static str| client.get(url).header("host", host).send();
    let port = gw.https.port();
    // SNI app.acme.com (acme), Host globex: another tenant.
    let resp = get(format!("https://app.acme.com:{port}/"), "globex.saas.example")
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 421);
    // Same tenant, but the served certificate (app.acme.com) does not cover acme.saas.example.
    let resp = get(format!("https://app.acme.com:{port}/"), "acme.saas.example")
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 421);
    assert_eq!(shared.count() + dedicated.count(), 0);
    // Same tenant, covered by the *.acme.io certificate: allowed.
    let resp = get(format!("https://eu.acme.io:{port}/"), "us.acme.io")
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        gw.metric("tenantgate_rejections_total{reason=\"sni_mismatch\"}").await,
        2.0
    );

    let (gw, root, _, _) = start("strict_sni_host = false").await;
    let client = https_client(&root, &["app.acme.com"], gw.https, true);
    let url = format!("https://app.acme.com:{}/", gw.https.port());
    let resp = client
        .get(url)
        .header("host", "globex.saas.example")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200, "check disabled by config");
}

#[tokio::test]
async fn plain_http_redirects_and_answers_only_pending_challenges() {
    let (gw, _root, shared, dedicated) = start("").await;
    let resp = gw
        .raw("GET /a/b?c=1 HTTP/1.1\r\nHost: App.Acme.com\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&resp), 308, "{resp}");
    let location = format!("location: https://app.acme.com:{}/a/b?c=1", gw.https.port());
    assert!(resp.to_ascii_lowercase().contains(&location), "{resp}");
    // A tenant that opted out is served on plain HTTP.
    let (status, body) = gw.get("plain.example.com", "/").await;
    assert_eq!(status, 200);
    assert_eq!(Echo::parse(&body).header_all("x-forwarded-proto"), vec!["http"]);
    // Unknown hosts are still 421 on plain HTTP, before any redirect.
    assert_eq!(gw.get("nobody.example", "/").await.0, 421);
    // A challenge token nobody asked for: 404, never forwarded.
    for host in ["app.acme.com", "app.acme.com:80", "nobody.example"] {
        let (status, _) = gw.get(host, "/.well-known/acme-challenge/not-a-pending-token").await;
        assert_eq!(status, 404, "{host}");
    }
    assert_eq!(shared.count(), 1, "only the opted-out tenant's request was forwarded");
    assert_eq!(dedicated.count(), 0);
}

/// DNS names in a DER certificate.
fn san_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    let san = cert.subject_alternative_name().ok().flatten();
    san.map(|s| {
        s.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The common name of the throwaway CAs that sign test certificates.
const TEST_CA: &str = "tenantgate test CA";

/// A certificate for `names`, signed by a throwaway CA. Returns (ca_pem, cert_pem, key_pem).
fn signed_cert(names: &[&str], expired: bool) -> (String, String, String) {
    signed_cert_inner(names, if expired { None } else { Some(365) })
}

/// A certificate valid for `days` from now.
fn signed_cert_for_days(names: &[&str], days: i64) -> (String, String, String) {
    signed_cert_inner(names, Some(days))
}

/// `None`: expired in 2021.
fn signed_cert_inner(names: &[&str], days: Option<i64>) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name.push(rcgen::DnType::CommonName, TEST_CA);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    match days {
        None => {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Some(d) => {
            let now = std::time::SystemTime::now();
            p.not_before = (now - std::time::Duration::from_secs(3600)).into();
            p.not_after = (now + std::time::Duration::from_secs(d as u64 * 86_400)).into();
        }
    }
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &issuer).expect("sign");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn operator_certificates_are_served_and_bad_ones_skipped() {
    let shared = backend("shared").await;
    let dedicated = backend("dedicated").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let (good_ca, good_cert, good_key) = signed_cert(&["app.acme.com", "*.saas.example"], false);
    std::fs::write(certs.join("acme.pem"), &good_cert).expect("write");
    std::fs::write(certs.join("acme.key"), &good_key).expect("write");
    let (_, expired_cert, expired_key) = signed_cert(&["portal.globex.example"], true);
    std::fs::write(certs.join("expired.pem"), format!("{expired_cert}{expired_key}")).expect("write");
    std::fs::write(
        certs.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    std::fs::write(certs.join("nokey.crt"), &good_cert).expect("write");
    // Two files for one name: the one valid longest wins, whatever the file order.
    let (short_ca, short_cert, short_key) = signed_cert_for_days(&["*.saas.example"], 2);
    std::fs::write(certs.join("a-short.pem"), format!("{short_cert}{short_key}")).expect("write");
    let gw = Gateway::start_in(dir, &config(&shared, &dedicated, "")).await;
    assert!(
        handshake(gw.https, Some("globex.saas.example"), short_ca.as_bytes())
            .await
            .is_err(),
        "the 2-day certificate lost"
    );

    // The operator certificate is served for its names (exact and wildcard).
    let client = https_client(
        good_ca.as_bytes(),
        &["app.acme.com", "globex.saas.example"],
        gw.https,
        true,
    );
    for host in ["app.acme.com", "globex.saas.example"] {
        let resp = client.get(format!("https://{host}:{}/", gw.https.port())).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("{host}: {e}\n{}", gw.log()));
        assert_eq!(resp.status().as_u16(), 200, "{host}");
    }
    // The expired one is skipped: the internal CA covers that name instead.
    let internal_root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    assert!(handshake(gw.https, Some("portal.globex.example"), &internal_root)
        .await
        .is_ok());
    let log = gw.log();
    for (file, why) in [
        ("expired.pem", "expired"),
        ("garbage.pem", "PEM"),
        ("nokey.crt", "No such file"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not reported:\n{log}"));
        assert!(
            line.contains("operator certificate skipped") && line.contains(why),
            "{line}"
        );
    }
}

#[tokio::test]
async fn state_dir_keeps_the_internal_root_private_and_stable_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let shared = backend("shared").await;
    let dedicated = backend("dedicated").await;
    let template = config(&shared, &dedicated, "");
    let gw = Gateway::start(&template).await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    let key = gw.dir().join("state/internal-ca/root.key");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "root key mode");
    let dir_mode = std::fs::metadata(gw.dir().join("state/internal-ca"))
        .expect("dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "state dir mode");

    let dir = gw.stop();
    let gw = Gateway::start_in(dir, &template).await;
    let again = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    assert_eq!(root, again, "the root is made once and kept");
    assert!(
        handshake(gw.https, Some("app.acme.com"), &root).await.is_ok(),
        "old root still verifies"
    );
}

#[tokio::test]
async fn sighup_loads_new_operator_certificates_without_a_config_change() {
    let (gw, _root, _, _) = start("").await;
    let (ca, cert, key) = signed_cert(&["app.acme.com"], false);
    assert!(
        handshake(gw.https, Some("app.acme.com"), ca.as_bytes()).await.is_err(),
        "internal CA before"
    );
    let certs = gw.dir().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    std::fs::write(certs.join("acme.pem"), format!("{cert}{key}")).expect("write");
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while handshake(gw.https, Some("app.acme.com"), ca.as_bytes()).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "operator certificate not picked up:\n{}",
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_operator_certificate_close_to_its_end_gives_way_to_a_managed_one() {
    let shared = backend("shared").await;
    let dedicated = backend("dedicated").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    // Two days left: under the 14 days an operator certificate must cover.
    let (short_ca, short_cert, short_key) = signed_cert_for_days(&["app.acme.com"], 2);
    std::fs::write(certs.join("app.pem"), format!("{short_cert}{short_key}")).expect("write");
    // A year left: served as usual.
    let (long_ca, long_cert, long_key) = signed_cert_for_days(&["portal.globex.example"], 365);
    std::fs::write(certs.join("portal.pem"), format!("{long_cert}{long_key}")).expect("write");
    let gw = Gateway::start_in(dir, &config(&shared, &dedicated, "")).await;
    let internal_root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    assert!(
        handshake(gw.https, Some("app.acme.com"), &internal_root).await.is_ok(),
        "the managed (internal CA) certificate replaces the expiring one"
    );
    assert!(handshake(gw.https, Some("app.acme.com"), short_ca.as_bytes())
        .await
        .is_err());
    assert!(handshake(gw.https, Some("portal.globex.example"), long_ca.as_bytes())
        .await
        .is_ok());
}

#[tokio::test]
async fn the_host_check_holds_on_the_tls_listener_after_a_reload_removes_tls() {
    let shared = backend("shared").await;
    let dedicated = backend("dedicated").await;
    let template = config(&shared, &dedicated, "");
    let gw = Gateway::start(&template).await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    let client = https_client(&root, &["app.acme.com"], gw.https, true);
    gw.write_config(&template.replace("[tls]\nissuer = \"internal\"\n", ""));
    gw.wait_metric("tenantgate_config_generation", 2.0).await;
    // The listener keeps running until a restart; a Host of another tenant
    // than the handshake's is still refused.
    let resp = client
        .get(format!("https://app.acme.com:{}/", gw.https.port()))
        .header("host", "globex.saas.example")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 421);
    assert_eq!(shared.count() + dedicated.count(), 0);
}

const OPS: &str = "ops-secret-0123456789";
const ACME_TENANT: &str = "acme-secret-0123456789";

/// `template` with the admin API on `{admin}`: an operator token and one for tenant acme.
fn with_admin(template: &str) -> String {
    use tenantgate::admin::auth::hash_hex;
    let tokens = format!(
        "\n[[admin.tokens]]\nname = \"ops\"\nscope = \"operator\"\nsha256 = \"{}\"\n\n\
         [[admin.tokens]]\nname = \"acme-admin\"\nscope = \"tenant:acme\"\nsha256 = \"{}\"\n",
        hash_hex(OPS),
        hash_hex(ACME_TENANT)
    );
    template.replace("[gateway]\n", "[gateway]\nadmin_listen = \"{admin}\"\n") + &tokens
}

/// The `certificate` object of `GET /v1/domains/{host}`.
async fn certificate(gw: &Gateway, token: &str, host: &str) -> serde_json::Value {
    let r = gw
        .admin_call("GET", &format!("/v1/domains/{host}"), Some(token), None, &[])
        .await;
    assert_eq!(r.status, 200, "{host}: {:?}", r.json);
    r.json["certificate"].clone()
}

/// A new folder holding `files` (relative path, text).
fn folder_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

/// RFC 3339 (seconds, UTC) of a PEM certificate's notAfter.
fn not_after(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    let secs = cert.validity().not_after.timestamp();
    jiff::Timestamp::from_second(secs).expect("timestamp").to_string()
}

#[tokio::test]
async fn domain_lookup_reports_the_certificate_served() {
    use serde_json::json;
    let (ca, cert, key) = signed_cert(&["app.acme.com", "acme.saas.example"], false);
    let dir = folder_with(&[("certs/acme.pem", &format!("{cert}{key}"))]);
    let (shared, dedicated) = (backend("shared").await, backend("dedicated").await);
    let gw = Gateway::start_in(dir, &with_admin(&config(&shared, &dedicated, ""))).await;
    let path = gw.dir().join("certs/acme.pem").display().to_string();

    // An operator file: its path, end, issuer and names.
    let operator = json!({
        "source": "operator",
        "path": path,
        "not_after": not_after(&cert),
        "issuer_cn": TEST_CA,
        "sans": ["app.acme.com", "acme.saas.example"],
    });
    assert_eq!(certificate(&gw, OPS, "App.Acme.com.").await, operator);
    assert!(handshake(gw.https, Some("app.acme.com"), ca.as_bytes()).await.is_ok());
    // The owning tenant's token sees the certificate, not the gateway's file system.
    let mut for_tenant = operator.clone();
    for_tenant.as_object_mut().expect("object").remove("path");
    assert_eq!(certificate(&gw, ACME_TENANT, "app.acme.com").await, for_tenant);

    // Internal CA: made at the first handshake, then described; wildcards by their parent.
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    for (host, san) in [
        ("portal.globex.example", "portal.globex.example"),
        ("eu.acme.io", "*.acme.io"),
    ] {
        assert_eq!(
            certificate(&gw, OPS, host).await,
            json!({"source": "internal", "detail": "the internal CA makes the certificate at the first handshake"}),
            "{host}"
        );
        let (_, leaf) = handshake_full(gw.https, Some(host), &root).await.expect("handshake");
        let served = certificate(&gw, OPS, host).await;
        assert_eq!(
            (&served["source"], &served["issuer_cn"], &served["sans"]),
            (
                &json!("internal"),
                &json!("tenantgate internal intermediate"),
                &json!([san])
            ),
            "{host}"
        );
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).expect("leaf");
        let end = jiff::Timestamp::from_second(leaf.validity().not_after.timestamp()).expect("timestamp");
        assert_eq!(served["not_after"], json!(end.to_string()), "{host}");
    }
}

#[tokio::test]
async fn domain_lookup_reports_a_failing_acme_order_and_its_backoff() {
    use serde_json::json;
    let shared = backend("shared").await;
    let dedicated = backend("dedicated").await;
    // Nothing listens on port 1: every order fails at once.
    let acme = "[tls.acme]\ndirectory_url = \"https://127.0.0.1:1/dir\"\nretry_min_secs = 3600\nretry_max_secs = 7200";
    let template = config(&shared, &dedicated, acme).replace("issuer = \"internal\"", "issuer = \"acme\"");
    let gw = Gateway::start(&with_admin(&template)).await;
    let started = std::time::SystemTime::now();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let cert = loop {
        let cert = certificate(&gw, OPS, "app.acme.com").await;
        if cert["acme"]["state"] == "failed" {
            break cert;
        }
        assert!(std::time::Instant::now() < deadline, "{cert}\n{}", gw.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(cert["source"], "managed", "{cert}");
    assert_eq!(cert["acme"]["failures"], 1, "{cert}");
    assert!(
        cert["acme"]["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{cert}"
    );
    let next: jiff::Timestamp = cert["acme"]["next_attempt"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("next_attempt: {cert}"));
    let backoff = next.duration_since(jiff::Timestamp::try_from(started).expect("now"));
    assert!(
        // Counted from the test's clock, which starts before the order fails
        // (seconds later on a busy machine).
        backoff.as_secs() > 3500 && backoff.as_secs() <= 3660,
        "retry in about retry_min_secs: {cert}"
    );
    // The CA's outage is named, not "client error (Connect)".
    assert_eq!(
        cert["acme"]["last_error"], "ACME directory https://127.0.0.1:1/dir unreachable: connection refused",
        "{cert}"
    );
    // Wildcards are not ordered: nothing covers them without an operator file.
    assert_eq!(
        certificate(&gw, OPS, "eu.acme.io").await,
        json!({"source": "none", "detail": "no certificate covers this name: put one in certs_dir"})
    );

    // Five names (acme 2, globex 2, plainco 1), each failed once.
    let failed = "tenantgate_acme_orders_total{kind=\"issue\",result=\"failure\"}";
    gw.wait_metric(failed, 5.0).await;
    let retry = |host: &'static str, token: &'static str| {
        let gw = &gw;
        async move {
            gw.admin_call("POST", &format!("/v1/domains/{host}/retry"), Some(token), None, &[])
                .await
        }
    };
    // Another tenant's host, an unrouted one: 404; a wildcard: nothing to retry.
    assert_eq!(retry("portal.globex.example", ACME_TENANT).await.status, 404);
    assert_eq!(retry("nobody.example", OPS).await.status, 404);
    let r = retry("eu.acme.io", OPS).await;
    assert_eq!(
        (r.status, r.json["type"].as_str()),
        (409, Some("tag:tenantgate,2026:not-managed")),
        "{:?}",
        r.json
    );
    // The tenant clears its own name's backoff: due now, answered so.
    let before = jiff::Timestamp::now();
    let r = retry("App.Acme.com", ACME_TENANT).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(
        (r.json["name"].as_str(), r.json["tenant"].as_str()),
        (Some("app.acme.com"), Some("acme"))
    );
    assert_eq!(r.json["acme"]["failures"], 0, "{:?}", r.json);
    let next: jiff::Timestamp = r.json["acme"]["next_attempt"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("next_attempt: {:?}", r.json));
    assert!(
        next.duration_since(before).as_secs().abs() <= 2,
        "due now: {:?}",
        r.json
    );
    // The order runs at once (not an hour later), fails, and backs off again.
    gw.wait_metric(failed, 6.0).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let cert = certificate(&gw, OPS, "app.acme.com").await;
        if cert["acme"]["state"] == "failed" {
            assert_eq!(cert["acme"]["failures"], 1, "{cert}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{cert}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A change to acme's names (here a hand edit; a PUT alike) clears the
    // backoff of acme's names only: its two old names and the new one are
    // ordered now, globex's and plainco's wait for their backoff.
    gw.write_config(&template.replace(
        "\"app.acme.com\", \"*.acme.io\"",
        "\"app.acme.com\", \"new.acme.com\", \"*.acme.io\"",
    ));
    gw.wait_metric(failed, 9.0).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        gw.metric(failed).await,
        9.0,
        "only acme's names were retried\n{}",
        gw.log()
    );
}

#[tokio::test]
async fn the_first_handshakes_of_a_name_share_one_certificate() {
    let (gw, root, _shared, _dedicated) = start("").await;
    // 40 clients at once on a name with no certificate yet: one is issued
    // (one blocking load, not 40), and every client gets that one.
    let handshakes = (0..40).map(|_| handshake_full(gw.https, Some("portal.globex.example"), &root));
    let leaves: Vec<Vec<u8>> = futures_util::future::join_all(handshakes)
        .await
        .into_iter()
        .map(|r| r.expect("handshake").1)
        .collect();
    assert!(
        leaves.iter().all(|l| *l == leaves[0]),
        "every client saw the same certificate"
    );
    let threads = std::fs::read_dir(format!("/proc/{}/task", gw.pid()))
        .expect("tasks")
        .count();
    assert!(threads < 40, "{threads} threads: a blocking thread per handshake");
}
