//! A real HAProxy in TCP mode (round robin) on loopback, in front of test
//! gateways: the L4 load balancer of fleet tests. Killed by PID on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HAPROXY_BIN: &str = "/usr/sbin/haproxy";

pub struct Haproxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// Listens on `addr` and spreads connections over `backends`, one after
    /// the other; a backend that refuses is taken out (checked every 300 ms)
    /// and a refused connection is sent to the next one, as a production
    /// L4 balancer does. While the checks have every backend down (at start,
    /// before the first check that finds a gateway listening), connections
    /// go to the same backends unchecked (`backup`, `allbackups`), so a CA
    /// validating then reaches a gateway that is up instead of a closed
    /// frontend connection.
    pub fn start(addr: SocketAddr, backends: &[SocketAddr]) -> Haproxy {
        assert!(
            std::path::Path::new(HAPROXY_BIN).exists(),
            "{HAPROXY_BIN} not found: install the Debian package haproxy (scripts/dev setup)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("    server r{i} {b} check inter 300ms fall 1 rise 1\n"))
            .chain(
                backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("    server u{i} {b} backup\n")),
            )
            .collect();
        let config = format!(
            "global\n    maxconn 256\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n    retries 3\n    option redispatch 1\n\n\
             frontend lb\n    bind {addr}\n    default_backend replicas\n\n\
             backend replicas\n    balance roundrobin\n    option allbackups\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("haproxy config");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log");
        let child = Command::new(HAPROXY_BIN)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let h = Haproxy {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "haproxy never listened:\n{}", h.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        h
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
