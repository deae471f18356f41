//! Start-up with 10,000 stored ACME certificates (`CERTS=<n>` for another
//! count): time until the HTTPS listener accepts, time until a handshake
//! for a stored name succeeds (the certificate is loaded lazily), and RSS.
//! Run: `cargo bench --bench cert_startup`.
//! Under `cargo test` (no --bench flag) it runs with 200 certificates.
//! `TG_BIN=<path>` runs another build of the gateway (before/after pairs);
//! `SETTLE=<s>` samples RSS that long after the first handshake (default 3).
//! `FIXTURE=<dir>` keeps the certificates in `<dir>` and reuses them.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // CERTS=100000 for the fleet-scale figure (#17).
    let n: usize = match std::env::var("CERTS").ok().and_then(|v| v.parse().ok()) {
        Some(n) => n,
        None if full => 10_000,
        None => 200,
    };
    // FIXTURE=<dir>: keep the certificates (and the CA's certificate) there
    // and reuse them on the next run with the same CERTS, instead of making
    // them anew (about a minute at 100,000 on a small box).
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("FIXTURE").map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    let certs = dir.join("state/certs");
    let ca_path = dir.join(format!("ca-{n}.der"));
    let mut tenants = String::new();
    for i in 0..n {
        let name = format!("d{i}.certs.example");
        tenants.push_str(&format!(
            "[[tenants]]\nid = \"t{i}\"\ndomains = [\"{name}\"]\npool = \"p\"\n\n"
        ));
    }
    let ca_der = match std::fs::read(&ca_path) {
        Ok(der) => {
            println!("reusing {n} certificates in {}", dir.display());
            der
        }
        Err(_) => {
            std::fs::create_dir_all(&certs).expect("mkdir");
            let ca_key = KeyPair::generate().expect("key");
            let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).expect("ca");
            let issuer = Issuer::new(ca, ca_key);
            let t = Instant::now();
            for i in 0..n {
                let name = format!("d{i}.certs.example");
                let key = KeyPair::generate().expect("key");
                let cert = CertificateParams::new(vec![name.clone()])
                    .expect("p")
                    .signed_by(&key, &issuer)
                    .expect("sign");
                // The managed layout: chain then key in one file.
                let pem = format!("{}{}", cert.pem(), key.serialize_pem());
                std::fs::write(certs.join(format!("{name}.pem")), pem).expect("write");
            }
            println!("wrote {n} certificates in {:.1} s", t.elapsed().as_secs_f64());
            std::fs::write(&ca_path, ca_cert.der()).expect("ca");
            ca_cert.der().to_vec()
        }
    };
    let (http, https) = (free_port(), free_port());
    let config = format!(
        "[gateway]\nhttp_listen = \"127.0.0.1:{http}\"\nhttps_listen = \"127.0.0.1:{https}\"\n\n[telemetry]\naccess_log = false\n\n\
         [tls]\nissuer = \"acme\"\nstate_dir = \"state\"\n\n[tls.acme]\ndirectory_url = \"https://127.0.0.1:1/dir\"\n\n\
         [pools.p]\nupstreams = [\"127.0.0.1:9\"]\n\n{tenants}"
    );
    let path = dir.join("bench.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(config.as_bytes()))
        .expect("config");

    let start = Instant::now();
    // TG_BIN: another build of the gateway, for interleaved before/after runs.
    let bin = std::env::var("TG_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tenantgate").to_string());
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let addr: SocketAddr = format!("127.0.0.1:{https}").parse().expect("addr");
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
    let listening = start.elapsed();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der))
        .expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = format!("d{}.certs.example", n / 2);
    let server = ServerName::try_from(name.clone()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("conn");
    let mut sock = TcpStream::connect(addr).expect("connect");
    let ok = conn.complete_io(&mut sock).is_ok() && !conn.is_handshaking();
    let first_handshake = start.elapsed();
    let status = |field: &str| {
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
            })
            .unwrap_or_default()
    };
    let rss = status("VmRSS");
    // The certificate manager reads the stored certificates' dates in the
    // background after start-up: sample again once that pass is over.
    // SETTLE=<s>: a slower (debug) build needs longer for that pass.
    let settle: u64 = std::env::var("SETTLE").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    std::thread::sleep(Duration::from_secs(settle));
    let (rss_later, peak) = (status("VmRSS"), status("VmHWM"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "handshake for {name} failed");
    println!(
        "{n} stored certificates: listening after {:.0} ms, first handshake ({name}) after {:.0} ms, \
         RSS {rss} KiB then, {rss_later} KiB {settle} s later (peak {peak} KiB)",
        listening.as_secs_f64() * 1e3,
        first_handshake.as_secs_f64() * 1e3,
    );
}
