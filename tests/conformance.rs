//! The field's conformance suites against the real gateway binary:
//! h2spec 2.6.0 (built from `third_party/h2spec` by `scripts/dev setup`)
//! over TLS with ALPN h2, and h1spec (`third_party/h1spec`, run by Deno,
//! which `scripts/dev setup` installs from the npm registry) on the plain
//! listener. The gateway serves HTTP/2 only over TLS: a plain-HTTP
//! connection is HTTP/1.x, and neither h2c upgrades nor prior knowledge
//! are taken, so there is no h2c run.
//!
//! Behind the gateway: a backend that answers every method with the request
//! body, or a fixed text when there is none (h1spec checks echoed bodies;
//! h2spec needs a response body for its flow-control cases, which it skips
//! otherwise), over HTTP/1.1 (hyper) and over h2c (a pool with `http2 =
//! true`). Each suite must pass every case: nothing failed, nothing
//! skipped, and the case count is the suite's own (146, 147 with
//! `--strict`, 33), so a tool that runs fewer cases fails too.
//!
//! A missing tool fails the test with the command that installs it.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::Gateway;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The version `scripts/dev setup` builds.
const H2SPEC_VERSION: &str = "2.6.0";

/// One suite at a time: h1spec gives each answer 500 ms (its own rule),
/// so it does not run beside an h2spec run of this binary.
static ONE_SUITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Answered to a request without a body.
const NO_BODY: &[u8] = b"tenantgate conformance backend: this request had no body\n";

/// The body a backend answers with.
fn answer_to(body: Bytes) -> Bytes {
    if body.is_empty() {
        Bytes::from_static(NO_BODY)
    } else {
        body
    }
}

/// A backend on a free loopback port serving each connection with
/// `serve`; runs for the test.
async fn backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// An HTTP/1.1 backend (hyper) echoing request bodies.
async fn http1_backend() -> SocketAddr {
    backend(|stream| async move {
        let svc = service_fn(|req: Request<Incoming>| async move {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok::<_, Infallible>(Response::new(Full::new(answer_to(body))))
        });
        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
    })
    .await
}

/// An h2c (prior knowledge) backend echoing request bodies.
async fn h2c_backend() -> SocketAddr {
    backend(|stream| async move {
        let Ok(mut conn) = h2::server::handshake(stream).await else {
            return;
        };
        while let Some(Ok((req, respond))) = conn.accept().await {
            tokio::spawn(h2_echo(req, respond));
        }
    })
    .await
}

async fn h2_echo(req: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let mut recv = req.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let body = answer_to(body.into());
    let head = http::Response::builder()
        .header("content-length", body.len())
        .body(())
        .expect("response head");
    if let Ok(mut send) = respond.send_response(head, false) {
        let _ = send.send_data(body, true);
    }
}

/// The gateway with one tenant on `backend`: `example.com` (h1spec's Host)
/// and the path `/conformance` on the shared host `localhost` (the one
/// name h2spec can both resolve and send as SNI here; a tenant may not
/// claim `localhost` itself, a public suffix).
async fn gateway(backend: SocketAddr, http2: bool) -> Gateway {
    Gateway::start(&format!(
        r#"
[gateway]
http_listen = "{{http}}"
https_listen = "{{https}}"
metrics_listen = "{{metrics}}"
shared_hosts = ["localhost"]

[tls]
issuer = "internal"
redirect_http = false

[pools.echo]
upstreams = ["{backend}"]
http2 = {http2}

[[tenants]]
id = "conformance"
domains = ["example.com"]
paths = ["localhost/conformance"]
pool = "echo"
"#
    ))
    .await
}

/// `name` on PATH, or a failure naming the command that installs it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (not on PATH): run scripts/dev setup, which installs the conformance suites"
            )
        })
}

/// Runs `cmd` off the runtime (the backends keep serving); its exit
/// success and its stdout and stderr together.
async fn run(mut cmd: Command) -> (bool, String) {
    let what = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// h2spec's closing line: `N tests, P passed, S skipped, F failed`.
#[derive(Debug, PartialEq)]
struct H2specSummary {
    tests: u32,
    passed: u32,
    skipped: u32,
    failed: u32,
}

fn h2spec_summary(out: &str) -> Option<H2specSummary> {
    let line = out.lines().rev().find(|l| l.contains(" tests, "))?;
    let mut n = line
        .split(", ")
        .map(|part| part.split_whitespace().next()?.parse().ok());
    Some(H2specSummary {
        tests: n.next()??,
        passed: n.next()??,
        skipped: n.next()??,
        failed: n.next()??,
    })
}

/// Runs h2spec against the gateway's TLS listener; fails unless every one
/// of `cases` passed.
async fn h2spec(gw: &Gateway, strict: bool, cases: u32) {
    let _one = ONE_SUITE.lock().await;
    let bin = tool("h2spec");
    let (_, version) = run({
        let mut c = Command::new(&bin);
        c.arg("--version");
        c
    })
    .await;
    assert!(
        version.contains(H2SPEC_VERSION),
        "h2spec {H2SPEC_VERSION} wanted, found {version:?}: run scripts/dev setup"
    );
    let mut cmd = Command::new(&bin);
    cmd.args(["--tls", "--insecure", "--host", "localhost", "--path", "/conformance"])
        .args(["--port", &gw.https.port().to_string()])
        // Per case, for a frame that must come: a passing run never waits it out.
        .args(["--timeout", "10"]);
    if strict {
        cmd.arg("--strict");
    }
    let (ok, out) = run(cmd).await;
    let want = H2specSummary {
        tests: cases,
        passed: cases,
        skipped: 0,
        failed: 0,
    };
    assert_eq!(
        h2spec_summary(&out).as_ref(),
        Some(&want),
        "h2spec (strict: {strict}):\n{out}\ngateway log:\n{}",
        gw.log()
    );
    assert!(ok, "h2spec exited with failure:\n{out}");
}

fn h1spec_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("third_party/h1spec/http_test.ts")
}

/// h1spec's closing line: `P out of N tests passed.`
fn h1spec_summary(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().rev().find(|l| l.ends_with(" tests passed."))?;
    let mut words = line.split_whitespace();
    let passed = words.next()?.parse().ok()?;
    let total = words.nth(2)?.parse().ok()?;
    Some((passed, total))
}

#[tokio::test]
async fn h2spec_passes_every_case_over_tls_with_an_http1_backend() {
    let gw = gateway(http1_backend().await, false).await;
    h2spec(&gw, false, 146).await;
    h2spec(&gw, true, 147).await;
}

#[tokio::test]
async fn h2spec_passes_every_case_over_tls_with_an_h2c_backend() {
    let gw = gateway(h2c_backend().await, true).await;
    h2spec(&gw, false, 146).await;
    h2spec(&gw, true, 147).await;
}

#[tokio::test]
async fn h1spec_passes_every_case_on_the_plain_listener() {
    let gw = gateway(http1_backend().await, false).await;
    // Deno's module cache, of this run only.
    let cache = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(tool("deno"));
    cmd.args(["run", "--allow-net"])
        .arg(h1spec_script())
        .args(["127.0.0.1", &gw.http.port().to_string()])
        .env("DENO_DIR", cache.path())
        .env("DENO_NO_UPDATE_CHECK", "1")
        .env("NO_COLOR", "1");
    let _one = ONE_SUITE.lock().await;
    let (ok, out) = run(cmd).await;
    assert_eq!(
        h1spec_summary(&out),
        Some((33, 33)),
        "h1spec:\n{out}\ngateway log:\n{}",
        gw.log()
    );
    assert!(ok, "h1spec exited with failure:\n{out}");
}

#[test]
fn the_summaries_are_read_as_the_tools_print_them() {
    let h2 = "Finished in 0.7384 seconds\n146 tests, 140 passed, 4 skipped, 2 failed\n";
    assert_eq!(
        h2spec_summary(h2),
        Some(H2specSummary {
            tests: 146,
            passed: 140,
            skipped: 4,
            failed: 2
        })
    );
    assert_eq!(h2spec_summary("Error: dial tcp: connection refused\n"), None);
    assert_eq!(
        h1spec_summary("✅ a\n❌ b\n\n32 out of 33 tests passed.\n"),
        Some((32, 33))
    );
    assert_eq!(h1spec_summary("error: Module not found\n"), None);
}
