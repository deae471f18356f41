//! The Pebble fixture itself: Pebble and challtestsrv come up on free
//! loopback ports, serve the directory and the issuing root, restart on the
//! same ports with a new root, and are gone after drop.

#[path = "common/pebble.rs"]
mod pebble;

use std::net::TcpStream;
use std::time::Duration;

use pebble::Pebble;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would show state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn directory(p: &Pebble) -> serde_json::Value {
    let resp = p
        .api_client()
        .get(p.directory_url())
        .send()
        .await
        .expect("GET directory");
    assert!(resp.status().is_success(), "directory status {}", resp.status());
    let body = resp.text().await.expect("directory body");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("directory not JSON ({e}): {body}"))
}

fn assert_pem_cert(pem: &str) {
    let pem = pem.trim();
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE-----") && pem.ends_with("-----END CERTIFICATE-----"),
        "not a PEM certificate: {pem}"
    );
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).expect("PEM parses");
    assert!(!certs.is_empty(), "no certificate in PEM");
}

#[tokio::test]
async fn pebble_starts_serves_restarts_and_cleans_up() {
    let t0 = std::time::Instant::now();
    let mut p = Pebble::start(free_port(), free_port(), 60).await;
    let started = t0.elapsed();

    let dir = directory(&p).await;
    for key in ["newNonce", "newAccount", "newOrder"] {
        assert!(
            dir[key].as_str().is_some_and(|u| u.starts_with("https://127.0.0.1:")),
            "directory lacks {key}: {dir}"
        );
    }
    assert!(std::fs::read_to_string(p.api_ca_pem_path())
        .expect("API CA pem")
        .contains("BEGIN CERTIFICATE"));

    let root1 = p.issuing_root_pem().await;
    assert_pem_cert(&root1);

    // challtestsrv management answers.
    p.add_a_record("fail.example", "127.0.0.2").await;
    p.clear_a_record("fail.example").await;

    let old_pid = p.pebble_pid().expect("pebble pid");
    p.restart_pebble().await;
    let new_pid = p.pebble_pid().expect("pebble pid");
    assert_ne!(old_pid, new_pid);
    assert!(!alive(old_pid), "old Pebble {old_pid} still alive");
    assert!(directory(&p).await["newOrder"].is_string());
    let root2 = p.issuing_root_pem().await;
    assert_pem_cert(&root2);
    assert_ne!(root1, root2, "issuing root should be regenerated on restart");

    let pids = [new_pid, p.challtestsrv_pid().expect("challtestsrv pid")];
    let ports = [p.listen_port(), p.management_port()];
    p.stop();
    p.stop(); // idempotent
    drop(p);
    for pid in pids {
        assert!(!alive(pid), "process {pid} still alive after stop");
    }
    for port in ports {
        assert!(
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_err(),
            "port {port} still accepting after stop"
        );
    }
    eprintln!("pebble start took {started:?}, whole test {:?}", t0.elapsed());
}

#[tokio::test]
async fn drop_kills_both_processes() {
    let p = Pebble::start(free_port(), free_port(), 7776000).await;
    let pids = [
        p.pebble_pid().expect("pebble pid"),
        p.challtestsrv_pid().expect("challtestsrv pid"),
    ];
    drop(p);
    for pid in pids {
        assert!(!alive(pid), "process {pid} still alive after drop");
    }
}
