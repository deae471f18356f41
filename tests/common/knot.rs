//! Knot DNS (`knotd`, Debian's `knot`) as a real authoritative server on
//! loopback, taking RFC 2136 updates signed with a TSIG key, for DNS-01
//! tests. Its port is picked free; it is killed by PID on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KNOTD: &str = "/usr/sbin/knotd";

/// A running `knotd` serving `zones` (name, zone-file body).
pub struct Knot {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The TSIG key's name and base64 secret the zones accept updates from.
    pub key_name: String,
    pub secret: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Knot {
    /// Starts knotd with `zones`, each `(zone name, zone file body)`;
    /// every zone accepts updates signed with the returned key.
    pub fn start(zones: &[(&str, &str)]) -> Knot {
        assert!(
            Path::new(KNOTD).exists(),
            "{KNOTD} not found: install the Debian package `knot` (scripts/dev setup does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("knot-fixture-")
            .tempdir()
            .expect("tempdir");
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("random");
        let secret = base64(&secret);
        let key_name = "tenantgate-test".to_string();
        let (port, tcp, udp) = super::pebble::reserve_tcp_udp();
        drop((tcp, udp));
        std::fs::create_dir_all(dir.path().join("db")).expect("db dir");
        let d = dir.path().display();
        let mut conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
             database:\n    storage: \"{d}/db\"\n\
             key:\n  - id: {key_name}\n    algorithm: hmac-sha256\n    secret: {secret}\n\
             acl:\n  - id: update\n    key: {key_name}\n    action: update\n\
             template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n    journal-content: changes\n\
             log:\n  - target: stderr\n    any: info\n\
             zone:\n"
        );
        for (zone, body) in zones {
            std::fs::write(dir.path().join(format!("{zone}.zone")), body).expect("zone file");
            conf.push_str(&format!("  - domain: {zone}\n    file: {zone}.zone\n    acl: update\n"));
        }
        std::fs::write(dir.path().join("knot.conf"), conf).expect("knot.conf");
        let log = dir.path().join("knot.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(KNOTD)
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn knotd");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let k = Knot {
            child: Some(child),
            addr,
            key_name,
            secret,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "knotd did not start:\n{}", k.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        k
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The TXT strings the server answers for `name` now (through `kdig`,
    /// from knot-dnsutils, over TCP).
    pub fn txt(&self, name: &str) -> Vec<String> {
        let out = Command::new("kdig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string(), "+tcp", "+short", "TXT", name])
            .output()
            .expect("kdig (knot-dnsutils)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('"'))
            .map(|l| l.trim_matches('"').to_string())
            .collect()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
