//! A backend whose behaviour the test changes while it runs: answer, answer
//! 5xx, hang, reset after reading the whole request, die (stop listening)
//! and come back on the same port. Its health endpoint (`/healthz`) has its
//! own behaviour, so active checks and traffic can disagree.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the backend does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 with body `<name> <METHOD> <path>`.
    Answer = 0,
    /// 500.
    Error = 1,
    /// Reads the request and never answers.
    Hang = 2,
    /// Reads the whole request (head and body), then resets the connection.
    Reset = 3,
}

impl Mode {
    fn of(v: u8) -> Mode {
        match v {
            1 => Mode::Error,
            2 => Mode::Hang,
            3 => Mode::Reset,
            _ => Mode::Answer,
        }
    }
}

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    health: AtomicU8,
    health_status: AtomicU16,
    /// `METHOD path` of every request that fully arrived (health probes apart).
    seen: Mutex<Vec<String>>,
    probes: AtomicUsize,
}

/// A running flaky backend.
pub struct Flaky {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Flaky {
    /// Starts on a free loopback port, answering (health: 200).
    pub async fn start(name: &str) -> Flaky {
        Self::start_at(name, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts on `addr` (port 0: a free one).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Flaky {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        shared.health_status.store(200, Ordering::Relaxed);
        let mut f = Flaky {
            name: name.to_string(),
            addr,
            shared,
            task: None,
        };
        f.task = Some(spawn(listener, f.name.clone(), f.shared.clone()));
        f
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// What `/healthz` does; with [`Mode::Answer`] it answers `status`.
    pub fn set_health(&self, mode: Mode, status: u16) {
        self.shared.health.store(mode as u8, Ordering::Relaxed);
        self.shared.health_status.store(status, Ordering::Relaxed);
    }

    /// Stops listening and drops every open connection: connects are refused.
    pub fn die(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn revive(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.task = Some(spawn(listener, self.name.clone(), self.shared.clone()));
    }

    /// Requests that fully arrived (not health probes).
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.seen.lock().expect("lock").len()
    }

    pub fn probes(&self) -> usize {
        self.shared.probes.load(Ordering::Relaxed)
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.die();
    }
}

fn spawn(listener: TcpListener, name: String, shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            conns.spawn(serve(s, name.clone(), shared.clone()));
            while conns.try_join_next().is_some() {}
        }
    })
}

/// Serves requests on one connection until it closes.
async fn serve(mut s: TcpStream, name: String, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        let Some((head_len, method, path, body_len)) = read_head(&mut s, &mut buf).await else {
            return;
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_len + body_len);
        let probe = path == "/healthz";
        let mode = if probe {
            shared.probes.fetch_add(1, Ordering::Relaxed);
            Mode::of(shared.health.load(Ordering::Relaxed))
        } else {
            shared.seen.lock().expect("lock").push(format!("{method} {path}"));
            Mode::of(shared.mode.load(Ordering::Relaxed))
        };
        let (status, body) = match mode {
            Mode::Answer if probe => (shared.health_status.load(Ordering::Relaxed), String::new()),
            Mode::Answer => (200, format!("{name} {method} {path}")),
            Mode::Error => (500, format!("{name} failed")),
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::Reset => {
                // A zero linger sends RST at once; it never blocks the drop.
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                return;
            }
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one request head: its length, method, path and Content-Length.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(usize, String, String, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
            let body_len = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            return Some((end + 4, method, path, body_len));
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
