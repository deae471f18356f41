//! A real `redis-server` on a free loopback port, for fleet-mode tests.
//!
//! Its data is kept in an append-only file fsynced on every write, so a
//! server killed with SIGKILL and started again on the same folder comes
//! back with every acknowledged count. Killed on drop.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REDIS_BIN: &str = "redis-server";

/// A running `redis-server`.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// With TLS only (no plain port): the CA that signed its certificate.
    ca: Option<std::path::PathBuf>,
    tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            ca: None,
            tls_files: None,
        };
        r.spawn();
        r
    }

    /// Like [`Redis::start`], speaking TLS only, with a certificate for
    /// `127.0.0.1` signed by a throwaway CA ([`Redis::ca_path`]).
    pub fn start_tls() -> Redis {
        // As the gateway does: one process-wide rustls provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = super::pebble::write_api_certs(dir.path());
        let mut r = Redis {
            child: None,
            port: super::free_port(),
            dir,
            ca: Some(ca),
            tls_files: Some((cert, key)),
        };
        r.spawn();
        r
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_path(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("redis log");
        let port = self.port.to_string();
        let mut listen: Vec<std::ffi::OsString> = vec!["--bind".into(), "127.0.0.1".into()];
        match (&self.ca, &self.tls_files) {
            (Some(ca), Some((cert, key))) => {
                for (k, v) in [
                    ("--port", "0".into()),
                    ("--tls-port", port.into()),
                    ("--tls-cert-file", cert.clone().into_os_string()),
                    ("--tls-key-file", key.clone().into_os_string()),
                    ("--tls-ca-cert-file", ca.clone().into_os_string()),
                    ("--tls-auth-clients", "no".into()),
                ] {
                    listen.push(k.into());
                    listen.push(v);
                }
            }
            _ => listen.extend(["--port".into(), port.into()]),
        }
        let child = Command::new(REDIS_BIN)
            .args(listen)
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{REDIS_BIN} did not start ({e}); is redis-server installed (scripts/dev setup)?")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connection().is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server never answered:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server at once (SIGKILL): no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca)?),
                },
            )?,
            None => redis::Client::open(self.url())?,
        };
        let mut c = client.get_connection_with_timeout(Duration::from_secs(1))?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }

    /// The sum of the integer values of the keys matching `pattern`.
    pub fn sum(&self, pattern: &str) -> u64 {
        let mut c = self.connection().expect("redis connection");
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).expect("KEYS");
        keys.iter()
            .map(|k| {
                redis::cmd("GET")
                    .arg(k)
                    .query::<Option<u64>>(&mut c)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
