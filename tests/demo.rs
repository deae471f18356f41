//! `tenantgate demo`, the newcomer's first command, works as printed: two
//! tenants on a shared and a dedicated pool, HTTPS from the internal CA, and
//! an unknown host refused. It binds the fixed demo ports (8080, 8443, 9090,
//! 9001, 9002, 9101).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{https_client, Echo, BIN};

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn demo_routes_two_tenants_over_http_and_https_and_refuses_unknown_hosts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::fs::File::create(dir.path().join("demo.log")).expect("log");
    let child = Command::new(BIN)
        .arg("demo")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn();
    let _demo = Demo(child.expect("spawn demo"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect("127.0.0.1:8443").await.is_err() {
        let log = std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "demo did not listen on 8443:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plain = reqwest::Client::new();
    let get = |host: &'static str| plain.get("http://127.0.0.1:8080/").header("host", host).send();
    let globex = Echo::parse(
        &get("globex.saas.example")
            .await
            .expect("globex")
            .text()
            .await
            .expect("body"),
    );
    assert!(globex.backend().starts_with("shared-"), "{}", globex.backend());
    let acme = Echo::parse(
        &get("acme.saas.example")
            .await
            .expect("acme")
            .text()
            .await
            .expect("body"),
    );
    assert_eq!(acme.backend(), "acme-dedicated");
    assert_eq!(get("unknown.example").await.expect("unknown").status().as_u16(), 421);

    let root = std::fs::read(dir.path().join("state/internal-ca/root.pem")).expect("internal CA root");
    let addr = "127.0.0.1:8443".parse().expect("addr");
    let tls = https_client(&root, &["app.acme.com", "globex.saas.example"], addr, false);
    let resp = tls.get("https://app.acme.com:8443/").send().await.expect("https");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        Echo::parse(&resp.text().await.expect("body")).backend(),
        "acme-dedicated"
    );
}
