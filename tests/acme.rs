//! ACME end to end against the real test CA Pebble: issuance over HTTP-01
//! answered by the gateway, reload-driven issuance, renewal, and a CA outage.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::pebble::Pebble;
use common::{backend, free_port, handshake_full, https_client, Echo, Gateway};
use tenantgate::demo::EchoBackend;

fn config(p: &Pebble, pool: &EchoBackend, domains: &[&str]) -> String {
    let list: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"

[tls]
issuer = "acme"

[tls.acme]
directory_url = "{}"
ca_root = "{}"
contact = "ops@example.com"
retry_min_secs = 1
retry_max_secs = 2

[pools.p]
upstreams = ["{}"]

[[tenants]]
id = "acme"
domains = [{}]
pool = "p"
"#,
        p.directory_url(),
        p.api_ca_pem_path().display(),
        pool.addr,
        list.join(", ")
    )
}

/// Pebble validating HTTP-01 on a port the gateway will listen on.
async fn pebble(validity_secs: u64) -> (Pebble, SocketAddr) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let p = Pebble::start(http.port(), free_port(), validity_secs).await;
    (p, http)
}

/// A gateway ordering `domains` from `p`, its plain listener on `http`.
async fn start(p: &Pebble, pool: &EchoBackend, domains: &[&str], http: SocketAddr) -> Gateway {
    Gateway::start_with_http(tempfile::tempdir().expect("dir"), &config(p, pool, domains), http).await
}

/// Polls TLS handshakes for `sni` until one verifies against `root`; returns the leaf.
async fn wait_for_certificate(gw: &Gateway, sni: &str, root: &[u8], p: &Pebble) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match handshake_full(gw.https, Some(sni), root).await {
            Ok((_, leaf)) => return leaf,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "no certificate for {sni}: {e}\ngateway:\n{}\npebble:\n{}",
                    gw.log(),
                    p.pebble_log()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_gets_a_certificate_over_http01_and_serves_http1_and_http2() {
    let (p, http) = pebble(3600).await;
    let pool = backend("pool").await;
    let gw = start(&p, &pool, &["app.acme.com"], http).await;
    let root = p.issuing_root_pem().await;
    wait_for_certificate(&gw, "app.acme.com", root.as_bytes(), &p).await;

    for http1 in [true, false] {
        let client = https_client(root.as_bytes(), &["app.acme.com"], gw.https, http1);
        let resp = client
            .get(format!("https://app.acme.com:{}/", gw.https.port()))
            .send()
            .await
            .expect("https");
        assert_eq!(
            resp.version(),
            if http1 {
                reqwest::Version::HTTP_11
            } else {
                reqwest::Version::HTTP_2
            }
        );
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.header_all("x-tenant-id"), vec!["acme"]);
    }
    // Stored with private permissions, account included.
    use std::os::unix::fs::PermissionsExt;
    let accounts: Vec<_> = std::fs::read_dir(gw.dir().join("state/acme/accounts"))
        .expect("accounts folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(accounts.len(), 1, "one account, for the one directory: {accounts:?}");
    for f in [gw.dir().join("state/certs/app.acme.com.pem"), accounts[0].clone()] {
        let mode = std::fs::metadata(&f).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600), "{}", f.display());
    }
    assert_eq!(
        gw.metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"success\"}")
            .await,
        1.0
    );
    // A one-hour test certificate is within 14 days of expiry: "expiring".
    gw.wait_metric("tenantgate_certificates{state=\"expiring\"}", 1.0).await;
    assert_eq!(gw.metric("tenantgate_certificates{state=\"failed\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_added_by_reload_gets_its_certificate_without_restart() {
    let (p, http) = pebble(3600).await;
    let pool = backend("pool").await;
    let gw = start(&p, &pool, &["app.acme.com"], http).await;
    let root = p.issuing_root_pem().await;
    wait_for_certificate(&gw, "app.acme.com", root.as_bytes(), &p).await;
    // An SNI alone never orders: scanners cannot make the gateway issue.
    for sni in ["shop.acme.com", "scanner.example"] {
        assert!(handshake_full(gw.https, Some(sni), root.as_bytes()).await.is_err());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        gw.metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"success\"}")
            .await
            + gw.metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"failure\"}")
                .await,
        1.0,
        "no order for an SNI the config does not name"
    );
    gw.write_config(&config(&p, &pool, &["app.acme.com", "shop.acme.com"]));
    wait_for_certificate(&gw, "shop.acme.com", root.as_bytes(), &p).await;
    assert_eq!(
        gw.metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"success\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_replaces_a_certificate_near_expiry_while_handshakes_continue() {
    // 24 s certificates: renewal is due after about two thirds of that.
    let (p, http) = pebble(24).await;
    let pool = backend("pool").await;
    let gw = start(&p, &pool, &["app.acme.com"], http).await;
    let root = p.issuing_root_pem().await;
    let first = wait_for_certificate(&gw, "app.acme.com", root.as_bytes(), &p).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut handshakes = 0;
    loop {
        let (_, leaf) = handshake_full(gw.https, Some("app.acme.com"), root.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("handshake {handshakes} failed during renewal: {e}\n{}", gw.log()));
        handshakes += 1;
        if leaf != first {
            break;
        }
        assert!(Instant::now() < deadline, "no renewal within 40 s\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        handshakes > 10,
        "handshakes kept succeeding before the swap ({handshakes})"
    );
    // A renewal names the certificate it replaces (RFC 9773) where the CA
    // offers ARI; Debian's Pebble 2.4 has no renewalInfo in its directory,
    // so the renewal went ahead without the field instead of failing.
    let log = gw.log();
    assert!(
        log.contains("renewal order without replaces")
            && log.contains("does not support: ACME renewal information (ARI)"),
        "{log}"
    );
    assert!(
        gw.metric("tenantgate_acme_orders_total{kind=\"renew\",result=\"success\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_down_the_existing_certificate_keeps_serving_and_failures_are_counted() {
    let (mut p, http) = pebble(30).await;
    let pool = backend("pool").await;
    let gw = start(&p, &pool, &["app.acme.com"], http).await;
    let root = p.issuing_root_pem().await;
    let first = wait_for_certificate(&gw, "app.acme.com", root.as_bytes(), &p).await;
    p.stop_pebble();

    // A new domain cannot be issued: counted, and the old one still serves.
    gw.write_config(&config(&p, &pool, &["app.acme.com", "new.acme.com"]));
    gw.wait_metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"failure\"}", 1.0)
        .await;
    gw.wait_metric("tenantgate_certificates{state=\"failed\"}", 1.0).await;
    // Renewal (due at about 20 s of 30) fails too; the current certificate stays.
    let deadline = Instant::now() + Duration::from_secs(28);
    while gw
        .metric("tenantgate_acme_orders_total{kind=\"renew\",result=\"failure\"}")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "no renewal attempt\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, leaf) = handshake_full(gw.https, Some("app.acme.com"), root.as_bytes())
        .await
        .expect("still served");
    assert_eq!(leaf, first);
    assert!(handshake_full(gw.https, Some("new.acme.com"), root.as_bytes())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_forgot_the_account_gets_a_new_registration() {
    let (mut p, http) = pebble(3600).await;
    let pool = backend("pool").await;
    let gw = start(&p, &pool, &["app.acme.com"], http).await;
    wait_for_certificate(&gw, "app.acme.com", p.issuing_root_pem().await.as_bytes(), &p).await;
    p.restart_pebble().await;
    gw.write_config(&config(&p, &pool, &["app.acme.com", "after.acme.com"]));
    let root = p.issuing_root_pem().await;
    wait_for_certificate(&gw, "after.acme.com", root.as_bytes(), &p).await;
    assert!(gw.log().contains("registering again"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_removed_from_the_config_is_no_longer_renewed_and_its_key_is_deleted() {
    // 24 s certificates: renewal is due after about two thirds of that.
    let (p, http) = pebble(24).await;
    let pool = backend("pool").await;
    let gw = start(&p, &pool, &["app.acme.com", "old.acme.com"], http).await;
    let root = p.issuing_root_pem().await;
    let first = wait_for_certificate(&gw, "app.acme.com", root.as_bytes(), &p).await;
    wait_for_certificate(&gw, "old.acme.com", root.as_bytes(), &p).await;
    let stored = gw.dir().join("state/certs/old.acme.com.pem");
    let before = std::fs::read(&stored).expect("stored certificate of old.acme.com");
    gw.write_config(&config(&p, &pool, &["app.acme.com"]));
    gw.wait_metric("tenantgate_config_generation", 2.0).await;
    // app.acme.com is renewed; old.acme.com, issued at the same time, is not.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, leaf) = handshake_full(gw.https, Some("app.acme.com"), root.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", gw.log()));
        if leaf != first {
            break;
        }
        assert!(Instant::now() < deadline, "no renewal within 40 s\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Its certificate and private key were deleted when it left the config
    // (so it was not renewed either).
    assert!(!before.is_empty());
    assert!(
        !stored.exists(),
        "the removed name's key is still on disk\n{}",
        gw.log()
    );
    assert!(gw.dir().join("state/certs/app.acme.com.pem").exists());
    assert!(
        handshake_full(gw.https, Some("old.acme.com"), root.as_bytes())
            .await
            .is_err(),
        "a removed domain is not served either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_run_at_most_max_concurrent_orders_at_a_time_and_a_reload_aborts_none() {
    let (p, http) = pebble(3600).await;
    let pool = backend("pool").await;
    let names = ["a.acme.com", "b.acme.com", "c.acme.com"];
    let template = config(&p, &pool, &names).replace(
        "retry_max_secs = 2\n",
        "retry_max_secs = 2\nmax_concurrent_orders = 1\n",
    );
    let gw = Gateway::start_with_http(tempfile::tempdir().expect("dir"), &template, http).await;
    let (mut most, mut reloaded) = (0.0f64, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let issued = "tenantgate_acme_orders_total{kind=\"issue\",result=\"success\"}";
    while gw.metric(issued).await < 4.0 {
        let running = gw.metric("tenantgate_acme_orders_in_flight").await;
        most = most.max(running);
        if running > 0.0 && !reloaded {
            // A reload while an order runs (adding a name) aborts nothing.
            gw.write_config(&template.replace("\"c.acme.com\"", "\"c.acme.com\", \"d.acme.com\""));
            reloaded = true;
        }
        assert!(
            Instant::now() < deadline,
            "four certificates not issued in 60 s\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reloaded, "an order was seen running");
    assert_eq!(most, 1.0, "never more than one order at a time");
    let failed = "tenantgate_acme_orders_total{kind=\"issue\",result=\"failure\"}";
    assert_eq!(
        gw.metric(failed).await,
        0.0,
        "no order failed or was cut short by the reload"
    );
    let root = p.issuing_root_pem().await;
    for name in names.iter().chain(&["d.acme.com"]) {
        wait_for_certificate(&gw, name, root.as_bytes(), &p).await;
    }
    assert_eq!(gw.metric("tenantgate_acme_orders_in_flight").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_lookup_reports_the_issued_certificate_and_its_renewal() {
    use serde_json::json;
    use tenantgate::admin::auth::hash_hex;
    let (p, http) = pebble(3600).await;
    let pool = backend("pool").await;
    let template = config(&p, &pool, &["app.acme.com"]).replace("[tls]\n", "admin_listen = \"{admin}\"\n\n[tls]\n")
        + &format!(
            "\n[[admin.tokens]]\nname = \"ops\"\nscope = \"operator\"\nsha256 = \"{}\"\n",
            hash_hex("ops-secret")
        );
    let gw = Gateway::start_with_http(tempfile::tempdir().expect("dir"), &template, http).await;
    let root = p.issuing_root_pem().await;
    let leaf = wait_for_certificate(&gw, "app.acme.com", root.as_bytes(), &p).await;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).expect("leaf");
    let issuer = leaf.issuer().iter_common_name().next().and_then(|c| c.as_str().ok());
    let end = jiff::Timestamp::from_second(leaf.validity().not_after.timestamp()).expect("timestamp");

    // The certificate serves as soon as it is installed; the manager
    // records the finished order a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cert = loop {
        let r = gw
            .admin_call("GET", "/v1/domains/app.acme.com", Some("ops-secret"), None, &[])
            .await;
        let cert = r.json["certificate"].clone();
        if cert["acme"]["state"] != "ordering" || Instant::now() > deadline {
            break cert;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let next: jiff::Timestamp = cert["acme"]["next_attempt"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("next_attempt: {cert}"));
    // Renewal at about two thirds of the hour-long lifetime.
    assert!(next > jiff::Timestamp::now() && next < end, "{cert}");
    cert["acme"].as_object_mut().expect("acme").remove("next_attempt");
    let path = gw.dir().join("state/certs/app.acme.com.pem").display().to_string();
    assert_eq!(
        cert,
        json!({
            "source": "managed",
            "path": path,
            "not_after": end.to_string(),
            "issuer_cn": issuer.expect("issuer CN"),
            "sans": ["app.acme.com"],
            "acme": {"state": "valid", "failures": 0},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_through_the_https_listener_with_port_80_closed() {
    // Pebble's HTTP-01 port has nothing behind it; TLS-ALPN-01 goes to the
    // gateway's HTTPS listener.
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let closed = free_port();
    let p = Pebble::start(closed, https.port(), 3600).await;
    let pool = backend("pool").await;
    let cfg = config(&p, &pool, &["app.acme.com", "shop.acme.com"]).replace(
        "retry_max_secs = 2\n",
        "retry_max_secs = 2\nchallenge = \"tls-alpn-01\"\n",
    );
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let gw = Gateway::start_with_listeners(tempfile::tempdir().expect("dir"), &cfg, http, https, &[]).await;
    let root = p.issuing_root_pem().await;
    for name in ["app.acme.com", "shop.acme.com"] {
        wait_for_certificate(&gw, name, root.as_bytes(), &p).await;
    }
    assert_eq!(
        gw.metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"success\"}")
            .await,
        2.0
    );
    // The CA's validation handshakes were answered as challenges (Pebble's
    // validator connects from several perspectives per name).
    let answered = gw
        .metric("tenantgate_tls_handshakes_total{result=\"acme_tls_alpn\"}")
        .await;
    assert!(answered >= 2.0, "{answered} challenge handshakes");
    // With no order in flight, an `acme-tls/1` handshake gets nothing: the
    // challenge certificates exist only while their order runs.
    // It is refused with the fatal unrecognized_name alert, as any unknown
    // SNI is, for a configured name and for one no tenant has.
    for sni in ["app.acme.com", "nobody.example"] {
        let err = alpn_handshake(gw.https, sni).await;
        assert!(
            err.as_ref().is_err_and(|e| e.contains("UnrecognisedName")),
            "an acme-tls/1 handshake for {sni} outside an order must get unrecognized_name, got {err:?}"
        );
    }
}

/// A handshake offering only `acme-tls/1`, accepting any certificate.
async fn alpn_handshake(addr: SocketAddr, sni: &str) -> Result<(), String> {
    use rustls::pki_types::ServerName;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(common::AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    connector
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_directory_url_registers_an_account_at_the_new_ca() {
    let (p, http) = pebble(3600).await;
    let pool = backend("pool").await;
    let gw = start(&p, &pool, &["app.acme.com"], http).await;
    wait_for_certificate(&gw, "app.acme.com", p.issuing_root_pem().await.as_bytes(), &p).await;
    // A second CA on the same validation port; the first stays up, so an
    // order sent to it with the old account would succeed there, silently.
    let second = Pebble::start(http.port(), free_port(), 3600).await;
    let moved = config(&second, &pool, &["app.acme.com", "next.acme.com"]);
    gw.write_config(&moved);
    let root = second.issuing_root_pem().await;
    wait_for_certificate(&gw, "next.acme.com", root.as_bytes(), &second).await;
    let accounts = std::fs::read_dir(gw.dir().join("state/acme/accounts"))
        .expect("accounts")
        .count();
    assert_eq!(accounts, 2, "one account per directory URL\n{}", gw.log());
    assert!(
        !gw.log().contains("registering again"),
        "the new CA never saw the old account: {}",
        gw.log()
    );
}

/// The External Account Binding key of the EAB test CA (Pebble's example).
const EAB_HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_fall_back_to_the_next_ca_after_repeated_failures_and_bind_external_accounts() {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let p = Pebble::start_with_eab(http.port(), 3600, "kid-1", EAB_HMAC).await;
    let pool = backend("pool").await;
    let issuers = |eab: &str| {
        format!(
            "fallback_after = 2\n\n[[tls.acme.issuers]]\ndirectory_url = \"https://127.0.0.1:1/dir\"\n\n\
             [[tls.acme.issuers]]\ndirectory_url = \"{}\"\nca_root = \"{}\"\n{eab}\n",
            p.directory_url(),
            p.api_ca_pem_path().display()
        )
    };
    let template = |eab: &str| {
        config(&p, &pool, &["app.acme.com"])
            .replace(&format!("directory_url = \"{}\"\n", p.directory_url()), "")
            .replace(&format!("ca_root = \"{}\"\n", p.api_ca_pem_path().display()), "")
            .replace("retry_max_secs = 2\n", &format!("retry_max_secs = 1\n{}", issuers(eab)))
    };
    let good = template(&format!("eab_kid = \"kid-1\"\neab_hmac_key = \"{EAB_HMAC}\""));
    let gw = Gateway::start_with_http(tempfile::tempdir().expect("dir"), &good, http).await;
    // The first CA is down: two failed orders, then the second CA issues,
    // its account bound to the external account.
    let root = p.issuing_root_pem().await;
    wait_for_certificate(&gw, "app.acme.com", root.as_bytes(), &p).await;
    let failed = gw
        .metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"failure\"}")
        .await;
    assert_eq!(
        failed,
        2.0,
        "fallback after exactly fallback_after failures\n{}",
        gw.log()
    );
    assert!(
        gw.log().contains("ACME directory https://127.0.0.1:1/dir unreachable"),
        "{}",
        gw.log()
    );

    // Without the binding (or with another key) the EAB CA refuses the
    // account: nothing is issued.
    let unbound = template("");
    let other = Gateway::start_in(
        tempfile::tempdir().expect("dir"),
        &unbound.replace("app.acme.com", "other.acme.com"),
    )
    .await;
    other
        .wait_metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"failure\"}", 3.0)
        .await;
    assert!(
        other.log().contains("externalAccountRequired"),
        "the CA's refusal is reported\n{}",
        other.log()
    );
    assert!(handshake_full(other.https, Some("other.acme.com"), root.as_bytes())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_past_the_ca_budgets_queue_and_show_when_they_will_run() {
    use tenantgate::admin::auth::hash_hex;
    let (p, http) = pebble(3600).await;
    let pool = backend("pool").await;
    let names = ["a.acme.com", "b.acme.com", "c.acme.com", "x.other.com", "y.other.com"];
    let template = config(&p, &pool, &names)
        .replace("[tls]\n", "admin_listen = \"{admin}\"\n\n[tls]\n")
        .replace(
            "retry_max_secs = 2\n",
            "retry_max_secs = 2\nbudget_per_registered_domain = 2\nbudget_per_account = 3\n",
        )
        + &format!(
            "\n[[admin.tokens]]\nname = \"ops\"\nscope = \"operator\"\nsha256 = \"{}\"\n",
            hash_hex("ops-secret")
        );
    let started = jiff::Timestamp::now();
    let gw = Gateway::start_with_http(tempfile::tempdir().expect("dir"), &template, http).await;
    let root = p.issuing_root_pem().await;
    // Oldest (then alphabetical) first: a and b fill acme.com's budget, x
    // the account's; c waits a week for acme.com, y three hours.
    for name in ["a.acme.com", "b.acme.com", "x.other.com"] {
        wait_for_certificate(&gw, name, root.as_bytes(), &p).await;
    }
    for (name, wait) in [("c.acme.com", 7 * 24 * 3600), ("y.other.com", 3 * 3600)] {
        let r = gw
            .admin_call("GET", &format!("/v1/domains/{name}"), Some("ops-secret"), None, &[])
            .await;
        let acme = &r.json["certificate"]["acme"];
        assert_eq!(acme["state"], "queued", "{name}: {:?}", r.json);
        let next: jiff::Timestamp = acme["next_attempt"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("next_attempt: {:?}", r.json));
        let secs = next.duration_since(started).as_secs();
        assert!(
            // next_attempt is written to the second: up to 1 s early.
            (wait - 2..wait + 120).contains(&secs),
            "{name} runs in {secs} s, want about {wait}"
        );
        assert!(handshake_full(gw.https, Some(name), root.as_bytes()).await.is_err());
    }
    assert_eq!(
        gw.metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"success\"}")
            .await,
        3.0,
        "no order past the budgets reached the CA"
    );
}

/// A first order that issued nothing (the CA's validator could not reach
/// the name) gives the registered domain's budget its share back: with a
/// budget of one, the name is certified once its DNS is fixed, not queued
/// for a week.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_order_does_not_spend_the_domain_budget() {
    let (p, http) = pebble(3600).await;
    p.add_a_record("bad.acme.com", "127.0.0.3").await;
    let pool = backend("pool").await;
    let template = config(&p, &pool, &["bad.acme.com"]).replace(
        "retry_max_secs = 2\n",
        "retry_max_secs = 2\nbudget_per_registered_domain = 1\n",
    );
    assert!(template.contains("budget_per_registered_domain = 1"));
    let gw = Gateway::start_with_http(tempfile::tempdir().expect("dir"), &template, http).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw
        .metric("tenantgate_acme_orders_total{kind=\"issue\",result=\"failure\"}")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "no failed order\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.clear_a_record("bad.acme.com").await;
    let root = p.issuing_root_pem().await;
    wait_for_certificate(&gw, "bad.acme.com", root.as_bytes(), &p).await;
}
