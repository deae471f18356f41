//! An upgraded connection (WebSocket, after the backend's `101`): bytes
//! copied both ways until either side closes, or nothing moves either way
//! for `tunnel_idle_timeout_ms`.

use std::time::Duration;

use super::upstream_tls::Conn;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes one read may carry.
const BUF: usize = 16 * 1024;

/// Runs the tunnel: `early_backend` (sent right after the `101`) goes to
/// the client and `early_client` (sent right after the request) to the
/// backend first. Each write gets `write_timeout`; a side that closes has
/// its peer's write side shut, and the tunnel ends when both have closed.
pub async fn run(
    client: &mut Stream,
    backend: &mut Conn,
    early_backend: &[u8],
    early_client: &[u8],
    idle: Duration,
    write_timeout: Duration,
) {
    let (mut br, mut bw) = backend.split();
    let (mut cr, mut cw) = tokio::io::split(client);
    if !write(&mut cw, early_backend, write_timeout).await || !write(&mut bw, early_client, write_timeout).await {
        return;
    }
    let mut from_client = vec![0u8; BUF];
    let mut from_backend = vec![0u8; BUF];
    let (mut client_open, mut backend_open) = (true, true);
    while client_open || backend_open {
        let quiet = tokio::time::sleep(idle);
        tokio::select! {
            r = cr.read(&mut from_client), if client_open => match r {
                Ok(n) if n > 0 => {
                    if !write(&mut bw, &from_client[..n], write_timeout).await {
                        return;
                    }
                }
                _ => {
                    client_open = false;
                    let _ = bw.shutdown().await;
                }
            },
            r = br.read(&mut from_backend), if backend_open => match r {
                Ok(n) if n > 0 => {
                    if !write(&mut cw, &from_backend[..n], write_timeout).await {
                        return;
                    }
                }
                _ => {
                    backend_open = false;
                    let _ = tokio::time::timeout(write_timeout, cw.shutdown()).await;
                }
            },
            () = quiet => return,
        }
    }
}

/// Writes and flushes `bytes` within `timeout`; `false` when that failed.
async fn write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], timeout: Duration) -> bool {
    let write = async {
        if !bytes.is_empty() {
            w.write_all(bytes).await?;
        }
        w.flush().await
    };
    matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(())))
}
