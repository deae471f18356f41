//! An HTTP/2-only backend (h2c, prior knowledge) on the h2 crate, whose
//! behaviour the test changes while it runs: answer, refuse streams
//! unprocessed (`REFUSED_STREAM`), reset them after reading the request,
//! hang. It records what reached it, and answers by path: `/nolength` (no
//! `content-length`, two DATA frames, a trailer), `/cut` (a length of 100,
//! 10 bytes, then a reset), `/echo` (the request body), anything else
//! `<name> <METHOD> <path> <body bytes> <authority>` with a length.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum H2Mode {
    Answer = 0,
    /// `REFUSED_STREAM` before reading anything: not processed.
    Refuse = 1,
    /// Reads the whole request, then resets the stream (`INTERNAL_ERROR`).
    Reset = 2,
    /// Reads the request and never answers.
    Hang = 3,
    /// Answers 500.
    Error = 4,
}

/// One request that reached the backend.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    seen: Mutex<Vec<Seen>>,
    refused: AtomicUsize,
    connections: AtomicUsize,
}

pub struct H2Backend {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Backend {
    pub async fn start(name: &str) -> H2Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let (s, n) = (shared.clone(), name.to_string());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (s, n) = (s.clone(), n.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        tokio::spawn(stream(req, respond, s.clone(), n.clone()));
                    }
                });
            }
        });
        H2Backend {
            name: name.to_string(),
            addr,
            shared,
            task,
        }
    }

    pub fn set(&self, mode: H2Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("lock").clone()
    }

    /// Requests that reached it with this path.
    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

async fn stream(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    shared: Arc<Shared>,
    name: String,
) {
    let mode = shared.mode.load(Ordering::SeqCst);
    if mode == H2Mode::Refuse as u8 {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    }
    let (parts, mut body) = req.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let path = parts.uri.path().to_string();
    let authority = parts.uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    shared.seen.lock().expect("lock").push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        authority: authority.clone(),
        body: data.clone(),
        headers,
    });
    if mode == H2Mode::Reset as u8 {
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        return;
    }
    if mode == H2Mode::Hang as u8 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    if mode == H2Mode::Error as u8 {
        let resp = http::Response::builder().status(500).body(()).expect("response");
        let _ = respond.send_response(resp, true);
        return;
    }
    // `/hints`: a 103 Early Hints first; `/many-hints`: twenty of them.
    let hints = match path.as_str() {
        "/hints" => 1,
        "/many-hints" => 20,
        _ => 0,
    };
    for _ in 0..hints {
        let early = http::Response::builder()
            .status(103)
            .header("link", "</s.css>; rel=preload")
            .body(())
            .expect("response");
        if respond.send_informational(early).is_err() {
            return;
        }
    }
    let ok = http::Response::builder().status(200);
    match path.as_str() {
        "/nolength" => {
            let Ok(mut send) = respond.send_response(ok.body(()).expect("response"), false) else {
                return;
            };
            let _ = send.send_data(Bytes::from_static(b"hello "), false);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = send.send_data(Bytes::from_static(b"world"), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-trailer", http::HeaderValue::from_static("t"));
            let _ = send.send_trailers(trailers);
        }
        "/cut" => {
            let resp = ok.header("content-length", "100").body(()).expect("response");
            let Ok(mut send) = respond.send_response(resp, false) else {
                return;
            };
            let _ = send.send_data(Bytes::from_static(b"0123456789"), false);
            tokio::time::sleep(Duration::from_millis(50)).await;
            send.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        "/echo" => {
            let resp = ok
                .header("content-length", data.len().to_string())
                .body(())
                .expect("response");
            let Ok(mut send) = respond.send_response(resp, data.is_empty()) else {
                return;
            };
            if !data.is_empty() {
                let _ = send.send_data(Bytes::from(data), true);
            }
        }
        _ => {
            let text = format!("{name} {} {path} {} {authority}", parts.method, data.len());
            let resp = ok
                .header("content-length", text.len().to_string())
                .body(())
                .expect("response");
            let Ok(mut send) = respond.send_response(resp, false) else {
                return;
            };
            let _ = send.send_data(Bytes::from(text), true);
        }
    }
}

/// A TCP listener that accepts connections and resets them at once.
pub async fn resetting() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    (addr, task)
}

/// A TCP proxy to `target` whose connections can be frozen: a frozen
/// connection stays open but nothing passes any more (a backend that
/// stopped answering, a black-holed path).
pub struct Freezer {
    pub addr: SocketAddr,
    /// Connections with a number below this are frozen.
    frozen_below: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Freezer {
    pub async fn start(target: SocketAddr) -> Freezer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (f, a) = (frozen_below.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = a.fetch_add(1, Ordering::SeqCst);
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let frozen = move || f.load(Ordering::SeqCst) > n;
                    let up = copy(cr, sw, frozen.clone());
                    let down = copy(sr, cw, frozen);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Freezer {
            addr,
            frozen_below,
            accepted,
            task,
        }
    }

    /// Freezes every connection accepted so far.
    pub fn freeze(&self) {
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen() {
            // Swallow everything from now on, keep the socket open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
