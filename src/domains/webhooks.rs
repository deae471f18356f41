//! `[[webhooks]]`: each receiver gets every event it asked for, in order,
//! at least once. A delivery is an HTTP POST of the event as JSON, signed:
//!
//! ```text
//! X-Tenantgate-Event-Id: <seq>          X-Tenantgate-Event: <type>
//! X-Tenantgate-Timestamp: <unix secs>
//! X-Tenantgate-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//! ```
//!
//! A receiver that does not answer 2xx gets the same event again after
//! 1 s, 2 s, 4 s … (at most 5 min between tries) until 24 h after the event,
//! then the event is skipped (logged). Each receiver's position is saved in
//! `<state_dir>/webhooks.json`, so deliveries survive a restart (events come
//! back from the event log).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::events::{Event, Events};
use crate::config::domains::Webhook;

/// How long an event is retried before it is skipped.
const GIVE_UP_AFTER: u64 = 24 * 3600;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Bound on one delivery (connect, send, read the status line).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS to {0}: {1}")]
    Tls(String, String),
    #[error("sending to {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} answered {1}")]
    Status(String, String),
    #[error("{0} did not answer within 10 s")]
    Timeout(String),
}

/// `sha256=<hex>` of `<timestamp>.<body>` under `secret`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Saved positions: receiver URL → last delivered (or skipped) sequence.
fn load_positions(path: &std::path::Path) -> BTreeMap<String, u64> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_positions(path: &std::path::Path, positions: &BTreeMap<String, u64>) {
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec_pretty(positions)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "webhook positions not saved; a restart may deliver some events again");
    }
}

async fn post<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    hook: &Webhook,
    event: &Event,
) -> Result<(), DeliveryError> {
    let body = serde_json::to_vec(event).unwrap_or_default();
    let ts = super::now();
    let host = if (hook.tls && hook.port == 443) || (!hook.tls && hook.port == 80) {
        hook.host.clone()
    } else {
        format!("{}:{}", hook.host, hook.port)
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tenantgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Tenantgate-Event-Id: {}\r\nX-Tenantgate-Event: {}\r\nX-Tenantgate-Timestamp: {ts}\r\nX-Tenantgate-Signature: {}\r\nConnection: close\r\n\r\n",
        hook.path,
        body.len(),
        event.seq,
        event.kind,
        signature(&hook.secret, ts, &body),
    );
    let io_err = |e| DeliveryError::Io(hook.url.clone(), e);
    io.write_all(head.as_bytes()).await.map_err(io_err)?;
    io.write_all(&body).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = io.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("").to_string();
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status.len() == 3 && status.starts_with('2') {
        Ok(())
    } else {
        Err(DeliveryError::Status(
            hook.url.clone(),
            if line.is_empty() { "nothing".into() } else { line },
        ))
    }
}

fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    Some(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Delivers one event to one receiver.
pub async fn deliver(
    hook: &Webhook,
    event: &Event,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(), DeliveryError> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((hook.host.as_str(), hook.port))
            .await
            .map_err(|e| DeliveryError::Connect(hook.url.clone(), e))?;
        if !hook.tls {
            return post(tcp, hook, event).await;
        }
        let config = tls.ok_or_else(|| DeliveryError::Tls(hook.url.clone(), "no TLS roots".into()))?;
        let name = rustls::pki_types::ServerName::try_from(hook.host.clone())
            .map_err(|e| DeliveryError::Tls(hook.url.clone(), e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| DeliveryError::Tls(hook.url.clone(), e.to_string()))?;
        post(stream, hook, event).await
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, attempt)
        .await
        .map_err(|_| DeliveryError::Timeout(hook.url.clone()))?
}

/// The shared positions of `hooks` (a receiver new to the fleet starts
/// after `last`); `None` while Redis does not answer.
async fn shared_positions(
    store: &super::fleet::DomainStore,
    hooks: &[Webhook],
    last: u64,
) -> Option<BTreeMap<String, u64>> {
    let saved = store.positions().await.ok()?;
    let mut out = BTreeMap::new();
    for h in hooks {
        let at = match saved.get(&h.url) {
            Some(at) => *at,
            None => {
                store.save_position(&h.url, last).await.ok()?;
                last
            }
        };
        out.insert(h.url.clone(), at);
    }
    Some(out)
}

/// Runs the deliveries of every configured receiver until `shutdown`.
pub async fn run(lifecycle: Arc<super::verifier::Lifecycle>, mut shutdown: pingora_core::server::ShutdownWatch) {
    let cfg = lifecycle.config();
    let (hooks, state_dir) = (cfg.webhooks, cfg.state_dir);
    let events: &Events = &lifecycle.events;
    if hooks.is_empty() {
        return;
    }
    let path = state_dir.join("webhooks.json");
    // Fleet mode: positions live in Redis and only the replica running the
    // checks delivers (it loads them when it takes over).
    let fleet = lifecycle.store().cloned();
    let mut positions = if fleet.is_some() {
        BTreeMap::new()
    } else {
        load_positions(&path)
    };
    let start = events.last();
    if let Some(store) = &fleet {
        for h in &hooks {
            if let Err(e) = store.start_position(&h.url, start).await {
                tracing::warn!(url = %h.url, error = %e, "webhook start position not recorded; the checker sets it when it takes over");
            }
        }
    }
    if fleet.is_none() {
        for h in &hooks {
            // A new receiver starts with the next event, not the history.
            positions.entry(h.url.clone()).or_insert(start);
        }
        save_positions(&path, &positions);
    }
    let tls = if hooks.iter().any(|h| h.tls) {
        tls_config()
    } else {
        None
    };
    let mut backoff: BTreeMap<String, (Duration, tokio::time::Instant)> = BTreeMap::new();
    let mut leading = fleet.is_none();
    loop {
        if let Some(store) = &fleet {
            let now = store.is_leader();
            if now && !leading {
                match shared_positions(store, &hooks, events.last()).await {
                    Some(p) => {
                        positions = p;
                        backoff.clear();
                    }
                    None => {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
            leading = now;
            if !leading {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
        }
        let mut progressed = false;
        for hook in &hooks {
            if backoff
                .get(&hook.url)
                .is_some_and(|(_, until)| tokio::time::Instant::now() < *until)
            {
                continue;
            }
            let at = positions.get(&hook.url).copied().unwrap_or(start);
            let (next, _) = events.after(at, 1);
            let Some(event) = next.into_iter().next() else { continue };
            if !hook.wants(&event.kind) {
                positions.insert(hook.url.clone(), event.seq);
                progressed = true;
                continue;
            }
            match deliver(hook, &event, tls.as_ref()).await {
                Ok(()) => {
                    backoff.remove(&hook.url);
                    positions.insert(hook.url.clone(), event.seq);
                    progressed = true;
                }
                Err(e) if super::now() > event.time.saturating_add(GIVE_UP_AFTER) => {
                    tracing::error!(url = %hook.url, seq = event.seq, error = %e, "webhook event not delivered in 24 h; skipped");
                    backoff.remove(&hook.url);
                    positions.insert(hook.url.clone(), event.seq);
                    progressed = true;
                }
                Err(e) => {
                    let wait = backoff
                        .get(&hook.url)
                        .map_or(Duration::from_secs(1), |(w, _)| (*w * 2).min(MAX_BACKOFF));
                    tracing::warn!(url = %hook.url, seq = event.seq, error = %e, retry_in_secs = wait.as_secs(), "webhook delivery failed");
                    backoff.insert(hook.url.clone(), (wait, tokio::time::Instant::now() + wait));
                }
            }
        }
        if progressed {
            if let Some(store) = &fleet {
                for (url, seq) in &positions {
                    if let Err(e) = store.save_position(url, *seq).await {
                        // Lost the lease (or Redis): the next holder starts
                        // from the last saved position (at least once).
                        tracing::warn!(url = %url, error = %e, "webhook position not saved");
                        leading = false;
                        break;
                    }
                }
            } else {
                let (p, positions_now) = (path.clone(), positions.clone());
                let _ = tokio::task::spawn_blocking(move || save_positions(&p, &positions_now)).await;
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = events.wait_after(events.last().min(positions.values().copied().min().unwrap_or(0)), Duration::from_millis(500)) => {}
        }
        // Sleep a little so a failing receiver's backoff is honoured.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
