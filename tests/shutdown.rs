//! Graceful shutdown: SIGTERM stops accepting, lets requests in flight
//! finish within `shutdown_grace_secs`, then exits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{backend, Gateway};
use tokio::sync::Mutex;

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_and_stops_accepting() {
    let pool = backend("p").await;
    let template = format!(
        "[gateway]\nhttp_listen = \"{{http}}\"\nmetrics_listen = \"{{metrics}}\"\nshutdown_grace_secs = 3\n\n\
         [pools.p]\nupstreams = [\"{}\"]\n\n[[tenants]]\nid = \"t\"\ndomains = [\"t.example.com\"]\npool = \"p\"\n",
        pool.addr
    );
    let gw = Arc::new(Mutex::new(Gateway::start(&template).await));
    let http = gw.lock().await.http;
    let client = reqwest::Client::new();
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let resp = client
                .get(format!("http://{http}/sleep/1500"))
                .header("host", "t.example.com")
                .send()
                .await?;
            let status = resp.status().as_u16();
            resp.text().await.map(|_| status)
        }
    });
    common::wait_requests(&pool, 1, "the slow request never arrived").await;
    gw.lock().await.signal("TERM");
    // New connections are refused soon after the signal.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(http).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.await.expect("task").expect("the request in flight completes"), 200);
    let status = gw.lock().await.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some(), "the gateway exits after the grace period");
}

#[tokio::test]
async fn sigterm_lets_http2_streams_in_flight_finish() {
    let pool = backend("p").await;
    let template = format!(
        "[gateway]\nhttp_listen = \"{{http}}\"\nhttps_listen = \"{{https}}\"\nmetrics_listen = \"{{metrics}}\"\n\
         shutdown_grace_secs = 3\n\n[tls]\nissuer = \"internal\"\n\n\
         [pools.p]\nupstreams = [\"{}\"]\n\n[[tenants]]\nid = \"t\"\ndomains = [\"t.example.com\"]\npool = \"p\"\n",
        pool.addr
    );
    let gw = Gateway::start(&template).await;
    let root = std::fs::read(gw.dir().join("state/internal-ca/root.pem")).expect("internal CA root");
    let client = common::https_client(&root, &["t.example.com"], gw.https, false);
    let url = format!("https://t.example.com:{}", gw.https.port());
    // Open the connection first, then start a slow stream on it.
    let first = client.get(format!("{url}/")).send().await.expect("first");
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let resp = client.get(format!("{url}/sleep/1500")).send().await?;
            let status = resp.status().as_u16();
            resp.text().await.map(|_| status)
        }
    });
    common::wait_requests(&pool, 2, "the slow stream never arrived").await;
    let gw = Arc::new(Mutex::new(gw));
    gw.lock().await.signal("TERM");
    assert_eq!(slow.await.expect("task").expect("the stream in flight completes"), 200);
    let status = gw.lock().await.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some(), "the gateway exits after the grace period");
}
