//! Graceful binary upgrade (`tenantgate serve --upgrade`, then SIGQUIT to
//! the running gateway): the new process takes the listening sockets, the
//! old one drains, and no request fails on the way.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{backend, raw_status, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response (head with a Content-Length, and its body) from a
/// kept-alive connection; `None` when the connection ended first.
async fn response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, bool)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + len {
                buf.drain(..end + len);
                return Some((raw_status(&head), head.contains("connection: close")));
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_binary_upgrade_under_load_fails_no_request() {
    let pool = backend("upgrade").await;
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let sock = sock_dir.path().join("upgrade.sock");
    let template = format!(
        "[gateway]\nhttp_listen = \"{{http}}\"\nmetrics_listen = \"{{metrics}}\"\nupgrade_sock = \"{}\"\nshutdown_grace_secs = 2\n\n\
         [pools.p]\nupstreams = [\"{}\"]\n\n[[tenants]]\nid = \"t\"\ndomains = [\"t.example\"]\npool = \"p\"\n",
        sock.display(),
        pool.addr
    );
    let mut old = Gateway::start(&template).await;
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut load = Vec::new();
    // 6 clients on kept-alive connections, back to back, and 2 asking for a
    // new connection per request: a response that says `Connection: close`
    // sends a client to a new connection.
    for i in 0..8 {
        let (ok, failed, stop, addr) = (ok.clone(), failed.clone(), stop.clone(), old.http);
        let request: &[u8] = match i < 6 {
            true => b"GET /load HTTP/1.1\r\nHost: t.example\r\n\r\n",
            false => b"GET /once HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n",
        };
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut conn) = TcpStream::connect(addr).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if conn.write_all(request).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    match response(&mut conn, &mut buf).await {
                        Some((200, close)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if close {
                                break;
                            }
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "the load runs");
    let new = old.upgrade(Duration::from_millis(500)).await;
    // The old gateway hands over, drains and exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !old.exited() {
        assert!(
            Instant::now() < deadline,
            "the old gateway never exited:\n{}",
            old.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_exit = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "upgrade under load: {ok} requests ok ({before} before, {at_exit} at the old one's exit), {failed} failed"
    );
    assert_eq!(failed, 0, "old:\n{}\nnew:\n{}", old.log(), new.log());
    assert!(ok > at_exit, "the new gateway serves after the old one exited");
    assert!(old.log().contains("listener sockets sent"), "{}", old.log());
    let (status, _) = new.get("t.example", "/after").await;
    assert_eq!(status, 200);
}
