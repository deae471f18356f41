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
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool.count() < 1 {
        assert!(std::time::Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
