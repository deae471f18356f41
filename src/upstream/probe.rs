//! One active health probe: a fresh TCP connection, `GET <path>` over
//! HTTP/1.1 with `Connection: close`, and the status line of the answer,
//! all within the check's timeout. Only the status line is read.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ProbeRecord;
use crate::config::upstream::HealthCheck;

/// Why a probe failed (shown in the admin API and logged at debug).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    #[error("closed before a status line")]
    Closed,
    #[error("not an HTTP/1.x status line")]
    BadStatusLine,
    #[error("answered {got}, expected {want}")]
    Status { got: u16, want: u16 },
}

/// Longest status line read.
const MAX_LINE: usize = 1024;

/// Probes `addr` once and records the outcome.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> ProbeRecord {
    let start = Instant::now();
    let result = match tokio::time::timeout(check.timeout, exchange(addr, check)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(check.timeout)),
    };
    let status = match &result {
        Ok(s) | Err(ProbeError::Status { got: s, .. }) => Some(*s),
        Err(_) => None,
    };
    ProbeRecord {
        at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        ok: result.is_ok(),
        status,
        error: result.err().map(|e| e.to_string()),
        duration_ms: start.elapsed().as_millis() as u64,
    }
}

async fn exchange(addr: SocketAddr, check: &HealthCheck) -> Result<u16, ProbeError> {
    let mut conn = TcpStream::connect(addr).await.map_err(ProbeError::Connect)?;
    let host = match &check.host {
        Some(h) => h.clone(),
        None => addr.to_string(),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tenantgate-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        check.path
    );
    conn.write_all(request.as_bytes()).await.map_err(ProbeError::Io)?;
    let mut buf = [0u8; MAX_LINE];
    let mut filled = 0;
    loop {
        let n = conn.read(&mut buf[filled..]).await.map_err(ProbeError::Io)?;
        if n == 0 {
            return Err(ProbeError::Closed);
        }
        filled += n;
        if let Some(end) = buf[..filled].windows(2).position(|w| w == b"\r\n") {
            let got = status_of(&buf[..end]).ok_or(ProbeError::BadStatusLine)?;
            return match got == check.expect_status {
                true => Ok(got),
                false => Err(ProbeError::Status {
                    got,
                    want: check.expect_status,
                }),
            };
        }
        if filled == buf.len() {
            return Err(ProbeError::BadStatusLine);
        }
    }
}

/// The status of `HTTP/1.x NNN ...`.
fn status_of(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_well_formed_status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503"), Some(503));
        assert_eq!(status_of(b"HTTP/2 200"), None);
        assert_eq!(status_of(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH"), None);
    }
}
