//! gRPC end to end through the gateway (`[pools.<name>] http2 = true`): a
//! real grpcio client speaks HTTP/2 over TLS to the gateway, which speaks
//! HTTP/2 to a real grpcio server (h2c prior knowledge, or TLS with ALPN h2
//! and a client certificate): unary calls with their trailers, an error
//! status and message carried in trailers, server streaming, bidirectional
//! streaming and a 3 MiB message; the trusted headers reach the backend.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::upstream::Pki;
use common::Gateway;
use serde_json::Value;

/// Debian's Python, which has python3-grpcio.
const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/echo.py")
}

/// A grpcio server; killed on drop.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GrpcServer {
    /// `tls`: (cert, key, client CA) paths.
    fn start(dir: &Path, tls: Option<[&Path; 3]>) -> GrpcServer {
        let port_file = dir.join(format!("grpc-port-{}", tls.is_some()));
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script()).arg("server").arg(&port_file);
        if let Some(files) = tls {
            cmd.args(files);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn grpc server");
        let mut server = GrpcServer { child, port: 0 };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.port == 0 {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                server.port = p.trim().parse().expect("port");
            }
            assert!(Instant::now() < deadline, "the gRPC server did not start");
            assert!(
                server.child.try_wait().expect("wait").is_none(),
                "the gRPC server exited"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

fn config(pool: &str) -> String {
    format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
base_domains = ["saas.example"]

[tls]
issuer = "internal"
redirect_http = false

[pools.grpc]
{pool}

[[tenants]]
id = "acme"
subdomain = "acme"
pool = "grpc"
"#
    )
}

/// Runs the grpcio client against the gateway's TLS listener.
async fn call(gw: &Gateway) -> Value {
    let root = gw.dir().join("state/internal-ca/root.pem");
    let addr = format!("127.0.0.1:{}", gw.https.port());
    // The client's own calls time out within 20 s each.
    let mut cmd = Command::new(PYTHON);
    cmd.arg(script())
        .args(["client", &addr, "acme.saas.example"])
        .arg(&root);
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("the gRPC client finished in time")
    .expect("join")
    .expect("run the gRPC client");
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    serde_json::from_slice(&out.stdout).expect("client JSON")
}

fn assert_calls(v: &Value) {
    assert_eq!(v["unary"]["got"], "hello", "{v}");
    assert_eq!(v["unary"]["headers"]["x-tenant-id"], "acme", "{v}");
    assert_eq!(v["unary"]["headers"]["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(v["unary"]["headers"]["x-forwarded-proto"], "https", "{v}");
    assert_eq!(
        v["unary_trailers"]["x-echo-trailer"], "done",
        "response trailers relayed: {v}"
    );
    assert_eq!(v["fail"]["code"], "INVALID_ARGUMENT", "{v}");
    assert_eq!(v["fail"]["message"], "no such widget: w-42", "{v}");
    let items: Vec<String> = (0..5).map(|i| format!("item-{i}")).collect();
    assert_eq!(v["stream"], serde_json::json!(items), "{v}");
    assert_eq!(v["bidi"], serde_json::json!(["echo:a", "echo:b", "echo:c"]), "{v}");
    assert_eq!(v["big"], 3 << 20, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_backend_unary_error_and_streaming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = GrpcServer::start(dir.path(), None);
    let pool = format!("upstreams = [\"127.0.0.1:{}\"]\nhttp2 = true", server.port);
    let gw = Gateway::start_in(dir, &config(&pool)).await;
    let v = call(&gw).await;
    assert_calls(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_mtls_backend_with_alpn_h2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("grpc upstream CA");
    pki.write_ca(dir.path(), "ca.pem");
    pki.leaf("grpc-backend", &["grpc.internal"]).write(dir.path(), "server");
    pki.leaf("tenantgate", &["tenantgate.internal"])
        .write(dir.path(), "client");
    let d = dir.path();
    let server = GrpcServer::start(
        d,
        Some([&d.join("server.pem"), &d.join("server.key"), &d.join("ca.pem")]),
    );
    let pool = format!(
        "upstreams = [\"127.0.0.1:{}\"]\nhttp2 = true\ntls = true\ntls_server_name = \"grpc.internal\"\n\
         tls_ca_file = \"ca.pem\"\ntls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"",
        server.port
    );
    let gw = Gateway::start_in(dir, &config(&pool)).await;
    let v = call(&gw).await;
    assert_calls(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_backend_down_is_unavailable_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let pool = format!("upstreams = [\"127.0.0.1:{port}\"]\nhttp2 = true");
    let gw = Gateway::start_in(dir, &config(&pool)).await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("root");
    let client = common::https_client(&root, &["acme.saas.example"], gw.https, false);
    let started = Instant::now();
    let resp = client
        .post(format!("https://acme.saas.example:{}/tg.Echo/Unary", gw.https.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(started.elapsed() < Duration::from_secs(5));
}
