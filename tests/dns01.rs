//! DNS-01 end to end: Pebble validates through a real authoritative server
//! (Knot DNS on loopback) that the gateway updates over RFC 2136 with TSIG.
//! One wildcard certificate serves every platform subdomain; a custom
//! wildcard domain is proven through its `_acme-challenge` CNAME; a wrong
//! key is refused by the server and named in the error.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::knot::Knot;
use common::pebble::Pebble;
use common::{backend, free_port, handshake_full, Gateway};
use tenantgate::demo::EchoBackend;

const SAAS_ZONE: &str = "$ORIGIN saas.test.\n$TTL 60\n\
@ SOA ns1.saas.test. hostmaster.saas.test. 1 3600 600 86400 60\n\
@ NS ns1\nns1 A 127.0.0.1\n@ A 127.0.0.1\n* A 127.0.0.1\n";

/// A customer's zone whose `_acme-challenge` is delegated by CNAME to a
/// name the operator's key may update.
const CUSTOM_ZONE: &str = "$ORIGIN shop.test.\n$TTL 60\n\
@ SOA ns1.shop.test. hostmaster.shop.test. 1 3600 600 86400 60\n\
@ NS ns1\nns1 A 127.0.0.1\n* A 127.0.0.1\n\
_acme-challenge CNAME shop-test.acme-delegation\n";

fn config(p: &Pebble, knot: &Knot, secret: &str, pool: &EchoBackend, tenants: usize, custom_wildcard: bool) -> String {
    let mut c = format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
base_domains = ["saas.test"]

[tls]
issuer = "acme"

[tls.acme]
directory_url = "{}"
ca_root = "{}"
retry_min_secs = 1
retry_max_secs = 2

[tls.acme.dns01]
server = "{}"
tsig_key = "{}"
tsig_secret = "{secret}"
propagation_timeout_secs = 10

[pools.p]
upstreams = ["{}"]
"#,
        p.directory_url(),
        p.api_ca_pem_path().display(),
        knot.addr,
        knot.key_name,
        pool.addr
    );
    for i in 0..tenants {
        c.push_str(&format!(
            "\n[[tenants]]\nid = \"t{i:04}\"\nsubdomain = \"t{i:04}\"\npool = \"p\"\n"
        ));
    }
    if custom_wildcard {
        c.push_str("\n[[tenants]]\nid = \"shop\"\ndomains = [\"*.shop.test\"]\npool = \"p\"\n");
    }
    c
}

async fn start(zones: &[(&str, &str)]) -> (Knot, Pebble, SocketAddr) {
    let knot = Knot::start(zones);
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let p = Pebble::start_resolving_with(http.port(), free_port(), 3600, Some(knot.addr)).await;
    (knot, p, http)
}

async fn wait_for_certificate(gw: &Gateway, sni: &str, root: &[u8], p: &Pebble, knot: &Knot) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match handshake_full(gw.https, Some(sni), root).await {
            Ok((_, leaf)) => return leaf,
            Err(e) if Instant::now() > deadline => panic!(
                "no certificate for {sni}: {e}\ngateway:\n{}\npebble:\n{}\nknot:\n{}",
                gw.log(),
                p.pebble_log(),
                knot.log()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The DNS names (SANs) of a DER certificate.
fn sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_wildcard_certificate_from_dns01_serves_a_thousand_platform_subdomains() {
    let (knot, p, http) = start(&[("saas.test", SAAS_ZONE)]).await;
    let pool = backend("pool").await;
    let gw = Gateway::start_with_http(
        tempfile::tempdir().expect("dir"),
        &config(&p, &knot, &knot.secret, &pool, 1000, false),
        http,
    )
    .await;
    let root = p.issuing_root_pem().await;
    let first = wait_for_certificate(&gw, "t0000.saas.test", root.as_bytes(), &p, &knot).await;
    let mut names = sans(&first);
    names.sort();
    assert_eq!(names, vec!["*.saas.test".to_string(), "saas.test".to_string()]);

    // Every platform host gets that same certificate, verified by a client.
    for i in 0..1000 {
        let sni = format!("t{i:04}.saas.test");
        let (_, leaf) = handshake_full(gw.https, Some(&sni), root.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert!(leaf == first, "{sni} got another certificate");
    }
    // An unrouted name under the base still gets no certificate.
    assert!(handshake_full(gw.https, Some("nobody.saas.test"), root.as_bytes())
        .await
        .is_err());
    // One order, one file; no per-subdomain certificate.
    assert_eq!(
        gw.metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"success\"}")
            .await,
        1.0
    );
    let stored: Vec<String> = std::fs::read_dir(gw.dir().join("state/certs"))
        .expect("certs dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(stored, vec!["_wildcard_.saas.test.pem".to_string()]);
    // The challenge records were removed from the zone afterwards.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !knot.txt("_acme-challenge.saas.test").is_empty() {
        assert!(
            Instant::now() < deadline,
            "TXT left behind: {:?}",
            knot.txt("_acme-challenge.saas.test")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The access goes through as HTTPS for a tenant.
    let client = common::https_client(root.as_bytes(), &["t0042.saas.test"], gw.https, false);
    let resp = client
        .get(format!("https://t0042.saas.test:{}/", gw.https.port()))
        .send()
        .await
        .expect("https");
    let echo = common::Echo::parse(&resp.text().await.expect("body"));
    assert_eq!(echo.header_all("x-tenant-id"), vec!["t0042"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_wildcard_domain_is_proven_through_its_delegated_acme_challenge_cname() {
    let (knot, p, http) = start(&[("shop.test", CUSTOM_ZONE), ("saas.test", SAAS_ZONE)]).await;
    let pool = backend("pool").await;
    let gw = Gateway::start_with_http(
        tempfile::tempdir().expect("dir"),
        &config(&p, &knot, &knot.secret, &pool, 0, true),
        http,
    )
    .await;
    let root = p.issuing_root_pem().await;
    let leaf = wait_for_certificate(&gw, "eu.shop.test", root.as_bytes(), &p, &knot).await;
    assert_eq!(sans(&leaf), vec!["*.shop.test".to_string()]);
    let (_, other) = handshake_full(gw.https, Some("us.shop.test"), root.as_bytes())
        .await
        .expect("another name under the wildcard");
    assert!(other == leaf);
    // The record went to the CNAME's target, and is gone again.
    let log = gw.log();
    assert!(log.contains("shop-test.acme-delegation.shop.test"), "{log}");
    assert!(knot.txt("shop-test.acme-delegation.shop.test").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_key_is_refused_by_the_server_and_the_error_says_so() {
    let (knot, p, http) = start(&[("saas.test", SAAS_ZONE)]).await;
    let pool = backend("pool").await;
    // Another 32-byte key under the same name.
    let wrong = "c2VjcmV0LXRoYXQtdGhlLXNlcnZlci1kb2VzLW5vdC1rbm93";
    let gw = Gateway::start_with_http(
        tempfile::tempdir().expect("dir"),
        &config(&p, &knot, wrong, &pool, 3, false),
        http,
    )
    .await;
    gw.wait_metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"failure\"}", 1.0)
        .await;
    let log = gw.log();
    assert!(log.contains("answered Not authorized"), "{log}");
    assert!(log.contains("check the TSIG key"), "{log}");
    // Nothing was written to the zone, and nothing is served.
    assert!(knot.txt("_acme-challenge.saas.test").is_empty());
    let root = p.issuing_root_pem().await;
    assert!(handshake_full(gw.https, Some("t0000.saas.test"), root.as_bytes())
        .await
        .is_err());
}

#[test]
fn check_names_each_bad_dns01_setting_and_never_prints_the_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.toml");
    let secret = "c2VjcmV0LXRoYXQtdGhlLXNlcnZlci1kb2VzLW5vdC1rbm93";
    let run = |dns01: &str| {
        std::fs::write(
            &path,
            format!(
                "[gateway]\nhttp_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n\
                 [tls]\nissuer = \"acme\"\n[tls.acme]\ndirectory_url = \"https://ca.example/dir\"\n\
                 [tls.acme.dns01]\n{dns01}\n[pools.a]\nupstreams = [\"127.0.0.1:9\"]\n"
            ),
        )
        .expect("write");
        let out = std::process::Command::new(common::BIN)
            .arg("check")
            .arg(&path)
            .output()
            .expect("check");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = run(&format!(
        "server = \"127.0.0.1:53\"\ntsig_key = \"k\"\ntsig_secret = \"{secret}\""
    ));
    assert!(ok, "{out}");
    for (setting, field) in [
        (
            format!("server = \"ns1.example\"\ntsig_key = \"k\"\ntsig_secret = \"{secret}\""),
            "tls.acme.dns01.server",
        ),
        (
            "server = \"127.0.0.1\"\ntsig_key = \"k\"".to_string(),
            "tls.acme.dns01.tsig_secret",
        ),
        (
            format!(
                "server = \"127.0.0.1\"\ntsig_key = \"k\"\ntsig_secret = \"{secret}\"\ntsig_secret_file = \"k.b64\""
            ),
            "tls.acme.dns01.tsig_secret",
        ),
        (
            "server = \"127.0.0.1\"\ntsig_key = \"k\"\ntsig_secret = \"c2hvcnQ=\"".to_string(),
            "tls.acme.dns01.tsig_secret",
        ),
        (
            format!(
                "server = \"127.0.0.1\"\ntsig_key = \"k\"\ntsig_secret = \"{secret}\"\ntsig_algorithm = \"hmac-md5\""
            ),
            "tls.acme.dns01.tsig_algorithm",
        ),
        (
            "server = \"127.0.0.1\"\ntsig_key = \"k\"\ntsig_secret_file = \"missing.b64\"".to_string(),
            "tls.acme.dns01.tsig_secret_file",
        ),
        (
            format!("server = \"127.0.0.1\"\ntsig_key = \"k\"\ntsig_secret = \"{secret}\"\nttl = 0"),
            "tls.acme.dns01.ttl",
        ),
        (
            format!("server = \"127.0.0.1\"\ntsig_key = \"k\"\ntsig_secret = \"{secret}\"\nprovider = \"x\""),
            "provider",
        ),
    ] {
        let (ok, out) = run(&setting);
        assert!(!ok, "{setting}: {out}");
        assert!(out.contains(field), "{setting}: want {field} in:\n{out}");
        assert!(
            !out.contains("c2hvcnQ=") && !out.contains(secret),
            "the secret is printed:\n{out}"
        );
    }
}
