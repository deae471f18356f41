//! Pebble (Let's Encrypt's ACME test CA) and its mock DNS `pebble-challtestsrv`,
//! run on loopback for integration tests of the ACME client.
//!
//! Every port is picked free at start, so parallel test runs never collide.
//! Both processes are killed by PID on `stop()` / drop. Their stdout and
//! stderr go to `pebble.log` and `challtestsrv.log` in the fixture's tempdir;
//! a failed start panics with those logs.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PEBBLE_BIN: &str = "/usr/bin/pebble";
const CHALLTESTSRV_BIN: &str = "/usr/bin/pebble-challtestsrv";

/// Upper bound for Pebble (and challtestsrv) to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts at a fresh start with new ports, for the rare case that another
/// process takes a picked port between the check and the bind.
const START_ATTEMPTS: usize = 3;

/// A running Pebble + challtestsrv pair on loopback. Killed on drop.
pub struct Pebble {
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
    /// Pebble's ACME API (`/dir`).
    listen_port: u16,
    /// Pebble's management API (`/roots/0`, `/intermediates/0`), HTTPS.
    mgmt_port: u16,
    /// challtestsrv DNS, UDP and TCP.
    dns_port: u16,
    /// challtestsrv management API, plain HTTP.
    challtest_mgmt_port: u16,
    http01_port: u16,
    tlsalpn_port: u16,
    cert_validity_secs: u64,
    /// The DNS server Pebble resolves and validates through, when not
    /// challtestsrv (a real authoritative server, for DNS-01).
    dns_server: Option<SocketAddr>,
    /// External Account Binding required, with this (key id, base64url HMAC key).
    eab: Option<(String, String)>,
    config_path: PathBuf,
    api_ca_path: PathBuf,
    pebble_log: PathBuf,
    challtest_log: PathBuf,
    client: reqwest::Client,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// Holds config, certs and logs; removed on drop (after the children).
    dir: tempfile::TempDir,
}

/// A loopback TCP port that was free a moment ago. The listener is returned
/// so that several picks made together stay distinct; drop it before use.
fn reserve_tcp() -> (u16, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (l.local_addr().expect("local addr").port(), l)
}

/// A loopback port free for both TCP and UDP (for a DNS server).
pub fn reserve_tcp_udp() -> (u16, TcpListener, UdpSocket) {
    for _ in 0..100 {
        let (port, tcp) = reserve_tcp();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            return (port, tcp, udp);
        }
    }
    panic!("no loopback port free for both TCP and UDP after 100 tries");
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// A log file opened for appending, usable as both stdout and stderr.
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let f2 = f.try_clone().expect("clone log handle");
    (Stdio::from(f), Stdio::from(f2))
}

/// Kills a child by PID (SIGKILL via `Child::kill`) and reaps it.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill(); // errors only if it already exited
        let _ = c.wait();
    }
}

/// Writes a throwaway CA and a `localhost`/`127.0.0.1` server certificate
/// signed by it. Returns (ca pem path, server cert path, server key path).
pub fn write_api_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "tenantgate test Pebble API CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("server key");
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("server params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    leaf_params.distinguished_name = dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer).expect("sign server cert");

    let ca_path = dir.join("api-ca.pem");
    let cert_path = dir.join("api-cert.pem");
    let key_path = dir.join("api-key.pem");
    std::fs::write(&ca_path, ca_cert.pem()).expect("write CA pem");
    std::fs::write(&cert_path, leaf_cert.pem()).expect("write server cert");
    std::fs::write(&key_path, leaf_key.serialize_pem()).expect("write server key");
    (ca_path, cert_path, key_path)
}

impl Pebble {
    /// Starts challtestsrv (answering every A query with 127.0.0.1) and
    /// Pebble, with HTTP-01 validation sent to 127.0.0.1:`http01_port` and
    /// TLS-ALPN-01 to `tlsalpn_port`. `cert_validity_secs` sets
    /// `certificateValidityPeriod`. Waits (at most ~15 s) until the directory
    /// and the management API answer; panics with both logs otherwise.
    pub async fn start(http01_port: u16, tlsalpn_port: u16, cert_validity_secs: u64) -> Pebble {
        Self::start_with(http01_port, tlsalpn_port, cert_validity_secs, None, None).await
    }

    /// Like [`Pebble::start`], with Pebble asking `dns` (when given) instead
    /// of challtestsrv for every name it validates.
    pub async fn start_resolving_with(
        http01_port: u16,
        tlsalpn_port: u16,
        cert_validity_secs: u64,
        dns: Option<SocketAddr>,
    ) -> Pebble {
        Self::start_with(http01_port, tlsalpn_port, cert_validity_secs, None, dns).await
    }

    /// Like [`Pebble::start`], requiring External Account Binding with the
    /// key id `kid` and the base64url HMAC key `hmac`.
    pub async fn start_with_eab(http01_port: u16, cert_validity_secs: u64, kid: &str, hmac: &str) -> Pebble {
        let eab = Some((kid.to_string(), hmac.to_string()));
        Self::start_with(http01_port, reserve_tcp().0, cert_validity_secs, eab, None).await
    }

    async fn start_with(
        http01_port: u16,
        tlsalpn_port: u16,
        cert_validity_secs: u64,
        eab: Option<(String, String)>,
        dns: Option<SocketAddr>,
    ) -> Pebble {
        for bin in [PEBBLE_BIN, CHALLTESTSRV_BIN] {
            assert!(
                Path::new(bin).exists(),
                "{bin} not found: install the Debian package `pebble`"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("pebble-fixture-")
            .tempdir()
            .expect("tempdir");
        let (api_ca_path, cert_path, key_path) = write_api_certs(dir.path());
        let ca_pem = std::fs::read(&api_ca_path).expect("read CA pem");
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("CA pem parses"))
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("reqwest client");

        let mut p = Pebble {
            pebble: None,
            challtestsrv: None,
            listen_port: 0,
            mgmt_port: 0,
            dns_port: 0,
            challtest_mgmt_port: 0,
            http01_port,
            tlsalpn_port,
            cert_validity_secs,
            dns_server: dns,
            eab,
            config_path: dir.path().join("pebble-config.json"),
            api_ca_path,
            pebble_log: dir.path().join("pebble.log"),
            challtest_log: dir.path().join("challtestsrv.log"),
            client,
            cert_path,
            key_path,
            dir,
        };
        let mut last_err = String::new();
        for attempt in 1..=START_ATTEMPTS {
            p.pick_ports_and_write_config();
            match p.try_start_all(attempt).await {
                Ok(()) => return p,
                Err(e) => {
                    p.stop();
                    last_err = e;
                }
            }
        }
        panic!("Pebble did not start after {START_ATTEMPTS} attempts: {last_err}");
    }

    /// Picks every port while holding all of them, so they are distinct, and
    /// writes Pebble's config for them.
    fn pick_ports_and_write_config(&mut self) {
        let (listen_port, l1) = reserve_tcp();
        let (mgmt_port, l2) = reserve_tcp();
        let (challtest_mgmt_port, l3) = reserve_tcp();
        let (dns_port, l4, u4) = reserve_tcp_udp();
        drop((l1, l2, l3, l4, u4));
        self.listen_port = listen_port;
        self.mgmt_port = mgmt_port;
        self.challtest_mgmt_port = challtest_mgmt_port;
        self.dns_port = dns_port;

        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": self.cert_path,
                "privateKey": self.key_path,
                "httpPort": self.http01_port,
                "tlsPort": self.tlsalpn_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": self.cert_validity_secs,
            }
        });
        if let Some((kid, hmac)) = &self.eab {
            config["pebble"]["externalAccountBindingRequired"] = serde_json::json!(true);
            config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: hmac });
        }
        std::fs::write(
            &self.config_path,
            serde_json::to_vec_pretty(&config).expect("config json"),
        )
        .expect("write pebble config");
    }

    /// Starts challtestsrv then Pebble; on failure returns a description with
    /// both logs (children are left for the caller to stop).
    async fn try_start_all(&mut self, attempt: usize) -> Result<(), String> {
        {
            use std::io::Write;
            for log in [&self.pebble_log, &self.challtest_log] {
                if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
                    let _ = writeln!(f, "=== fixture: start attempt {attempt} ===");
                }
            }
        }
        self.spawn_challtestsrv();
        self.wait_challtestsrv().await?;
        self.spawn_pebble();
        self.wait_pebble().await
    }

    fn spawn_challtestsrv(&mut self) {
        let (out, err) = log_stdio(&self.challtest_log);
        let child = Command::new(CHALLTESTSRV_BIN)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .arg("-dns01")
            .arg(format!("127.0.0.1:{}", self.dns_port))
            .arg("-management")
            .arg(format!("127.0.0.1:{}", self.challtest_mgmt_port))
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn pebble-challtestsrv");
        self.challtestsrv = Some(child);
    }

    fn spawn_pebble(&mut self) {
        let (out, err) = log_stdio(&self.pebble_log);
        let mut cmd = Command::new(PEBBLE_BIN);
        // Drop any inherited PEBBLE_* tuning (e.g. PEBBLE_VA_ALWAYS_VALID).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PEBBLE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .arg("-config")
            .arg(&self.config_path)
            .arg("-dnsserver")
            .arg(
                self.dns_server
                    .map_or_else(|| format!("127.0.0.1:{}", self.dns_port), |a| a.to_string()),
            )
            .arg("-strict=false")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn pebble");
        self.pebble = Some(child);
    }

    fn failure(&mut self, what: &str) -> String {
        let status = |c: &mut Option<Child>| match c.as_mut().map(|c| c.try_wait()) {
            None => "not started".to_string(),
            Some(Ok(None)) => "running".to_string(),
            Some(Ok(Some(s))) => format!("exited: {s}"),
            Some(Err(e)) => format!("unknown: {e}"),
        };
        format!(
            "{what}\n--- pebble ({}) log {}:\n{}\n--- challtestsrv ({}) log {}:\n{}",
            status(&mut self.pebble),
            self.pebble_log.display(),
            read_log(&self.pebble_log),
            status(&mut self.challtestsrv),
            self.challtest_log.display(),
            read_log(&self.challtest_log),
        )
    }

    fn exited(child: &mut Option<Child>) -> bool {
        matches!(child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    }

    async fn wait_challtestsrv(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.challtest_mgmt_port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if Self::exited(&mut self.challtestsrv) {
                return Err(self.failure("pebble-challtestsrv exited during startup"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "pebble-challtestsrv management {addr} not up within {READY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the directory and the management roots endpoint until both
    /// answer 200 (bounded by `READY_TIMEOUT`).
    async fn wait_pebble(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let dir_url = self.directory_url();
        let roots_url = self.roots_url();
        let mut last = String::from("no attempt");
        loop {
            if Self::exited(&mut self.pebble) {
                return Err(self.failure("pebble exited during startup"));
            }
            let dir_ok = match self.client.get(&dir_url).send().await {
                Ok(r) if r.status().is_success() => match r.text().await {
                    Ok(body) if body.contains("newOrder") => true,
                    Ok(body) => {
                        last = format!("directory body without newOrder: {body}");
                        false
                    }
                    Err(e) => {
                        last = format!("directory body: {e}");
                        false
                    }
                },
                Ok(r) => {
                    last = format!("directory status {}", r.status());
                    false
                }
                Err(e) => {
                    last = format!("directory: {e:?}");
                    false
                }
            };
            if dir_ok {
                match self.client.get(&roots_url).send().await {
                    Ok(r) if r.status().is_success() => return Ok(()),
                    Ok(r) => last = format!("roots status {}", r.status()),
                    Err(e) => last = format!("roots: {e:?}"),
                }
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!("pebble not ready within {READY_TIMEOUT:?} (last: {last})")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn roots_url(&self) -> String {
        format!("https://127.0.0.1:{}/roots/0", self.mgmt_port)
    }

    /// `https://127.0.0.1:<port>/dir`
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen_port)
    }

    /// PEM of the throwaway CA that signed Pebble's own HTTPS listener
    /// certificate: what an ACME client must trust to talk to Pebble.
    pub fn api_ca_pem_path(&self) -> &Path {
        &self.api_ca_path
    }

    /// Pebble's own HTTPS certificate and key (PEM paths), signed by the
    /// API CA: a test server beside Pebble can present them.
    pub fn api_cert_key_paths(&self) -> (&Path, &Path) {
        (&self.cert_path, &self.key_path)
    }

    /// A reqwest client that trusts only the API CA (no proxy, 5 s timeout).
    pub fn api_client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// The issuing root of the currently running Pebble (regenerated on
    /// every Pebble start), as PEM.
    pub async fn issuing_root_pem(&self) -> String {
        self.mgmt_get(&self.roots_url()).await
    }

    /// The intermediate that signs leaf certificates, as PEM.
    pub async fn intermediate_pem(&self) -> String {
        self.mgmt_get(&format!("https://127.0.0.1:{}/intermediates/0", self.mgmt_port))
            .await
    }

    async fn mgmt_get(&self, url: &str) -> String {
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_else(|e| panic!("GET {url} body: {e}"));
        assert!(status.is_success(), "GET {url}: {status}: {body}");
        body
    }

    /// Makes the mock DNS answer A queries for `host` with `ip` (replacing
    /// the default 127.0.0.1), e.g. to make a validation fail.
    pub async fn add_a_record(&self, host: &str, ip: &str) {
        self.challtest_post("add-a", serde_json::json!({ "host": host, "addresses": [ip] }))
            .await
    }

    /// Removes the A records set for `host`; it gets the default again.
    pub async fn clear_a_record(&self, host: &str) {
        self.challtest_post("clear-a", serde_json::json!({ "host": host }))
            .await
    }

    /// Makes the mock DNS answer TXT queries for `host` with `value`.
    pub async fn set_txt(&self, host: &str, value: &str) {
        self.challtest_post("set-txt", serde_json::json!({ "host": fqdn(host), "value": value }))
            .await
    }

    /// Removes the TXT records of `host`.
    pub async fn clear_txt(&self, host: &str) {
        self.challtest_post("clear-txt", serde_json::json!({ "host": fqdn(host) }))
            .await
    }

    /// Makes the mock DNS answer CAA queries for `host` with one `issue`
    /// record naming `issuer`.
    pub async fn add_caa_issue(&self, host: &str, issuer: &str) {
        self.challtest_post(
            "add-caa",
            serde_json::json!({ "host": fqdn(host), "policies": [{ "tag": "issue", "value": issuer }] }),
        )
        .await
    }

    /// How many TXT queries for `host` the mock DNS has answered.
    #[allow(dead_code)]
    pub async fn dns_queries(&self, host: &str) -> usize {
        let mut most = 0;
        // The history is kept under the queried name; ask with and without
        // the final dot.
        for h in [fqdn(host), host.trim_end_matches('.').to_string()] {
            let url = format!("http://127.0.0.1:{}/dns-request-history", self.challtest_mgmt_port);
            let resp = self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::json!({ "host": h }).to_string())
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
            let text = resp.text().await.unwrap_or_default();
            let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
            // Question.Qtype 16 is TXT.
            let txt = list
                .iter()
                .filter(|e| e["Question"]["Qtype"].as_u64().is_none_or(|t| t == 16))
                .count();
            most = most.max(txt);
        }
        most
    }

    async fn challtest_post(&self, endpoint: &str, body: serde_json::Value) {
        let url = format!("http://127.0.0.1:{}/{endpoint}", self.challtest_mgmt_port);
        let resp = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {url} {body}: {status}: {text}");
    }

    /// Pebble's ACME API port.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Pebble's management API port (HTTPS, same API CA).
    pub fn management_port(&self) -> u16 {
        self.mgmt_port
    }

    /// The mock DNS server (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dns_port))
    }

    /// challtestsrv's management API port (plain HTTP).
    pub fn challtestsrv_management_port(&self) -> u16 {
        self.challtest_mgmt_port
    }

    /// Pebble's stdout+stderr so far (all starts, appended).
    pub fn pebble_log(&self) -> String {
        read_log(&self.pebble_log)
    }

    /// challtestsrv's stdout+stderr so far.
    pub fn challtestsrv_log(&self) -> String {
        read_log(&self.challtest_log)
    }

    /// PID of the running Pebble process, if any.
    pub fn pebble_pid(&self) -> Option<u32> {
        self.pebble.as_ref().map(|c| c.id())
    }

    /// PID of the running challtestsrv process, if any.
    pub fn challtestsrv_pid(&self) -> Option<u32> {
        self.challtestsrv.as_ref().map(|c| c.id())
    }

    /// Kills only Pebble (by PID) and reaps it; the directory stops
    /// answering until `start_pebble_again`/`restart_pebble`.
    pub fn stop_pebble(&mut self) {
        kill_child(&mut self.pebble);
    }

    /// Kills both processes by PID and reaps them. Idempotent.
    pub fn stop(&mut self) {
        kill_child(&mut self.pebble);
        kill_child(&mut self.challtestsrv);
    }

    /// Starts Pebble again on the same ports after `stop_pebble`, and waits
    /// until it answers. Panics with the logs if it does not.
    pub async fn start_pebble_again(&mut self) {
        assert!(
            self.challtestsrv.is_some(),
            "start_pebble_again after stop(): challtestsrv is gone"
        );
        kill_child(&mut self.pebble);
        {
            use std::io::Write;
            if let Ok(mut f) = OpenOptions::new().append(true).open(&self.pebble_log) {
                let _ = writeln!(f, "=== fixture: pebble restart ===");
            }
        }
        // Go sets SO_REUSEADDR, so the same ports bind right away; still
        // retry briefly in case the old socket lingers.
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            self.spawn_pebble();
            match self.wait_pebble().await {
                Ok(()) => return,
                Err(e) => {
                    kill_child(&mut self.pebble);
                    last_err = e;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        panic!("Pebble did not restart on the same ports: {last_err}");
    }

    /// Stops Pebble and starts it again on the same ports (challtestsrv keeps
    /// running). The new Pebble has a new issuing root and forgets every
    /// account, order and authorization.
    pub async fn restart_pebble(&mut self) {
        self.stop_pebble();
        self.start_pebble_again().await;
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    }
}
