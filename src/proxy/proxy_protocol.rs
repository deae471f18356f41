//! PROXY protocol v1 and v2 on the proxy listeners (`[gateway]
//! proxy_protocol`), for a gateway behind an L4 load balancer: a strict
//! parser ([`parse`]) and the accept step ([`accept`]) that reads the
//! header of a connection from `trusted_sources` within
//! `proxy_protocol_timeout_ms` and makes its source address the client
//! address (`x-forwarded-for`, limits, logs). A header from any other
//! source closes the connection; so does a trusted source without one
//! (unless `proxy_protocol_required = false`). Every outcome is counted in
//! `tenantgate_proxy_protocol_total{listener,result}`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pingora_core::protocols::l4::stream::Stream as TcpConn;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::io::AsyncReadExt;

use crate::config::Gateway;
use crate::telemetry::Metrics;

/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line, CRLF included, is at most this long (the spec's bound).
pub const V1_MAX: usize = 107;
/// The v2 address and TLV block the gateway accepts (the spec allows 64 KiB;
/// load balancers send well under 1 KiB).
pub const V2_MAX_BODY: usize = 4096;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection was proxied for `source` (to `dest`).
    Proxied { source: SocketAddr, dest: SocketAddr },
    /// A v2 `LOCAL` command (the balancer's own health check), or an
    /// `UNKNOWN`/`UNSPEC`/`AF_UNIX` address: the socket's peer stands.
    Local,
}

/// What the bytes so far are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `len` bytes long.
    Complete(Header, usize),
    /// A header's beginning: more bytes are needed.
    Incomplete,
    /// Not a PROXY header at all.
    NotProxy,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("v1 line longer than 107 bytes")]
    V1TooLong,
    #[error("v1 line is malformed: {0}")]
    V1Malformed(&'static str),
    #[error("v2 version {0} is not 2")]
    V2Version(u8),
    #[error("v2 command {0} is neither LOCAL nor PROXY")]
    V2Command(u8),
    #[error("v2 address family/protocol byte {0:#04x} is not supported")]
    V2Family(u8),
    #[error("v2 length {len} is too short for the address family (needs {need})")]
    V2Short { len: usize, need: usize },
    #[error("v2 length {0} exceeds the 4096 bytes accepted")]
    V2TooLong(usize),
}

/// Parses the PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let v1 = b"PROXY ";
    if buf.len() < v1.len() && v1.starts_with(buf) || buf.starts_with(v1) {
        return parse_v1(buf);
    }
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return parse_v2(buf);
    }
    Ok(Parsed::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return match buf.len() >= V1_MAX {
            true => Err(ProxyError::V1TooLong),
            false if window.contains(&b'\r') && !window.ends_with(b"\r") => Err(ProxyError::V1Malformed("bare CR")),
            false if window.contains(&b'\n') => Err(ProxyError::V1Malformed("bare LF")),
            false => Ok(Parsed::Incomplete),
        };
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    if !line.is_ascii() {
        return Err(ProxyError::V1Malformed("not ASCII"));
    }
    let len = end + 2;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Parsed::Complete(Header::Local, len));
    }
    let mut parts = line.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ProxyError::V1Malformed(
            "want PROXY TCP4|TCP6 <src> <dst> <sport> <dport>",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(src.parse().map_err(|_| ProxyError::V1Malformed("bad IPv4 source"))?),
            IpAddr::V4(
                dst.parse()
                    .map_err(|_| ProxyError::V1Malformed("bad IPv4 destination"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(src.parse().map_err(|_| ProxyError::V1Malformed("bad IPv6 source"))?),
            IpAddr::V6(
                dst.parse()
                    .map_err(|_| ProxyError::V1Malformed("bad IPv6 destination"))?,
            ),
        ),
        _ => return Err(ProxyError::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (sport, dport) = (port(sport)?, port(dport)?);
    Ok(Parsed::Complete(
        Header::Proxied {
            source: SocketAddr::new(src, sport),
            dest: SocketAddr::new(dst, dport),
        },
        len,
    ))
}

/// A v1 port: 1 to 5 digits, no sign, no leading zero, at most 65535.
fn port(s: &str) -> Result<u16, ProxyError> {
    let ok =
        !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(ProxyError::V1Malformed("bad port"));
    }
    s.parse().map_err(|_| ProxyError::V1Malformed("port above 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let (ver, cmd) = (buf[12] >> 4, buf[12] & 0x0f);
    if ver != 2 {
        return Err(ProxyError::V2Version(ver));
    }
    if cmd > 1 {
        return Err(ProxyError::V2Command(cmd));
    }
    let fam = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body_len > V2_MAX_BODY {
        return Err(ProxyError::V2TooLong(body_len));
    }
    let need = match fam {
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        0x31 => 216,
        // Datagrams and unknown families are not for a TCP listener.
        _ if cmd == 0 => 0,
        _ => return Err(ProxyError::V2Family(fam)),
    };
    if body_len < need {
        return Err(ProxyError::V2Short { len: body_len, need });
    }
    let len = 16 + body_len;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    // LOCAL: the address block, if any, is ignored.
    if cmd == 0 {
        return Ok(Parsed::Complete(Header::Local, len));
    }
    let b = &buf[16..len];
    let header = match fam {
        0x11 => {
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                dest: SocketAddr::new(ip(4), port(10)),
            }
        }
        0x21 => {
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                dest: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC and AF_UNIX: no IP address to take.
        _ => Header::Local,
    };
    Ok(Parsed::Complete(header, len))
}

/// How a connection's PROXY step ended (the metric's `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A header from a trusted source: its address is the client's.
    Accepted,
    /// A `LOCAL`/`UNKNOWN` header from a trusted source.
    Local,
    /// No header from a trusted source, and none is required.
    Absent,
    /// Not a trusted source and no header: served as a direct client.
    Direct,
    /// Refused: a header from a source not in `trusted_sources`.
    Untrusted,
    /// Refused: a trusted source sent no header.
    Missing,
    /// Refused: a malformed header.
    Invalid,
    /// Refused: the header did not come within the timeout.
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Accepted,
        Outcome::Local,
        Outcome::Absent,
        Outcome::Direct,
        Outcome::Untrusted,
        Outcome::Missing,
        Outcome::Invalid,
        Outcome::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Local => "local",
            Outcome::Absent => "absent",
            Outcome::Direct => "direct",
            Outcome::Untrusted => "untrusted",
            Outcome::Missing => "missing",
            Outcome::Invalid => "invalid",
            Outcome::Timeout => "timeout",
        }
    }
}

/// The PROXY step of an accepted connection on `listener`: `None` when
/// it is refused (closed), else the stream, with the header's source as
/// its peer address and the bytes after the header left to read.
pub async fn accept(stream: Stream, gw: &Gateway, metrics: &Metrics, listener: &'static str) -> Option<Stream> {
    let pp = &gw.proxy_protocol;
    let peer = super::super::tls::peer_of(&stream);
    let trusted = peer.is_some_and(|p| pp.trusted_sources.iter().any(|c| c.contains(p.ip())));
    if !stream.as_any().is::<TcpConn>() {
        tracing::warn!(
            listener,
            "PROXY protocol: not a TCP connection; served without the step"
        );
        return Some(stream);
    }
    let Ok(mut conn) = stream.into_any().downcast::<TcpConn>() else {
        return None;
    };
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let read = async {
        loop {
            match parse(&buf) {
                Ok(Parsed::Incomplete) => {}
                other => return Some(other),
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let parsed = tokio::time::timeout(pp.timeout, read).await;
    let (outcome, header, used) = match parsed {
        // The client left before anything could be decided.
        Ok(None) => return None,
        Err(_) if trusted => (Outcome::Timeout, None, 0),
        // An untrusted client that sent too little to tell: served as is.
        Err(_) => (Outcome::Direct, None, 0),
        Ok(Some(Err(e))) => {
            tracing::info!(peer = ?peer, listener, error = %e, "PROXY protocol header refused");
            (if trusted { Outcome::Invalid } else { Outcome::Untrusted }, None, 0)
        }
        Ok(Some(Ok(Parsed::Complete(h, len)))) if trusted => {
            let o = if matches!(h, Header::Local) {
                Outcome::Local
            } else {
                Outcome::Accepted
            };
            (o, Some(h), len)
        }
        Ok(Some(Ok(Parsed::Complete(..)))) => (Outcome::Untrusted, None, 0),
        Ok(Some(Ok(_))) if trusted && pp.required => (Outcome::Missing, None, 0),
        Ok(Some(Ok(_))) if trusted => (Outcome::Absent, None, 0),
        Ok(Some(Ok(_))) => (Outcome::Direct, None, 0),
    };
    metrics.proxy_protocol(listener, outcome.label());
    match outcome {
        Outcome::Untrusted | Outcome::Missing | Outcome::Invalid | Outcome::Timeout => {
            if outcome != Outcome::Invalid {
                tracing::info!(peer = ?peer, listener, result = outcome.label(), "PROXY protocol: connection closed");
            }
            return None;
        }
        _ => {}
    }
    conn.rewind(&buf[used..]);
    if let Some(Header::Proxied { source, .. }) = header {
        let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&*conn));
        let _ = digest.peer_addr.set(Some(source.into()));
        conn.set_socket_digest(digest);
    }
    Some(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        let Ok(Parsed::Complete(h, len)) = parse(line) else {
            panic!("parse")
        };
        assert_eq!(len, 43);
        assert_eq!(
            h,
            Header::Proxied {
                source: addr("203.0.113.7:51000"),
                dest: addr("10.0.0.1:443")
            }
        );
        let line = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
        assert!(
            matches!(parse(line), Ok(Parsed::Complete(Header::Proxied { source, .. }, 36)) if source == addr("[2001:db8::1]:65535"))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Parsed::Complete(Header::Local, 15)));
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
            Ok(Parsed::Complete(Header::Local, 35))
        );
    }

    #[test]
    fn v1_partial_lines_wait_for_more() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Ok(Parsed::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn v1_hostile_lines_are_refused() {
        let long = format!("PROXY UNKNOWN {}\r\n", "a".repeat(100));
        assert_eq!(parse(long.as_bytes()), Err(ProxyError::V1TooLong));
        // No CRLF within 107 bytes, even if more bytes follow.
        assert_eq!(
            parse(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat()),
            Err(ProxyError::V1TooLong)
        );
        for bad in [
            "PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 51000 443 extra\r\n",
            "PROXY TCP4  203.0.113.7 10.0.0.1 51000 443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 51000 443 \r\n",
            "PROXY TCP4 ::1 10.0.0.1 51000 443\r\n",
            "PROXY TCP6 203.0.113.7 ::1 51000 443\r\n",
            "PROXY TCP4 203.0.113.007 10.0.0.1 51000 443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 +1 443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 0443 443\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 -1 443\r\n",
            "PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
            "PROXY tcp4 203.0.113.7 10.0.0.1 1 2\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 1 2\n",
            "PROXY TCP4 203.0.113.7\r10.0.0.1 1 2\r\n",
            "PROXY TCP4 2\u{e9}3.0.113.7 10.0.0.1 1 2\r\n",
            "PROXY \r\n",
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(ProxyError::V1Malformed(_))),
                "{bad:?}: {:?}",
                parse(bad.as_bytes())
            );
        }
    }

    #[test]
    fn v2_inet_inet6_local_and_unspec() {
        let mut body = vec![198, 51, 100, 9, 10, 0, 0, 1];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        // A TLV after the addresses is skipped.
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]);
        let mut h = v2(1, 0x11, &body);
        h.extend_from_slice(b"GET");
        assert_eq!(
            parse(&h),
            Ok(Parsed::Complete(
                Header::Proxied {
                    source: addr("198.51.100.9:4242"),
                    dest: addr("10.0.0.1:443")
                },
                16 + 16
            ))
        );
        let mut body6 = Vec::new();
        body6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("ip").octets());
        body6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body6.extend_from_slice(&[0, 80, 1, 187]);
        assert!(
            matches!(parse(&v2(1, 0x21, &body6)), Ok(Parsed::Complete(Header::Proxied { source, .. }, 52)) if source == addr("[2001:db8::7]:80"))
        );
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Parsed::Complete(Header::Local, 16)));
        // LOCAL with an address block: ignored.
        assert_eq!(parse(&v2(0, 0x11, &body)), Ok(Parsed::Complete(Header::Local, 32)));
        assert_eq!(parse(&v2(1, 0x00, &[])), Ok(Parsed::Complete(Header::Local, 16)));
        assert_eq!(parse(&v2(1, 0x31, &[0; 216])), Ok(Parsed::Complete(Header::Local, 232)));
    }

    #[test]
    fn v2_partial_headers_wait_for_more() {
        let h = v2(1, 0x11, &[1; 12]);
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Ok(Parsed::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn v2_hostile_headers_are_refused() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version), Err(ProxyError::V2Version(1)));
        assert_eq!(parse(&v2(2, 0x11, &[0; 12])), Err(ProxyError::V2Command(2)));
        assert_eq!(parse(&v2(0xf, 0x11, &[0; 12])), Err(ProxyError::V2Command(0xf)));
        assert_eq!(parse(&v2(1, 0x12, &[0; 12])), Err(ProxyError::V2Family(0x12)));
        assert_eq!(parse(&v2(1, 0x41, &[0; 12])), Err(ProxyError::V2Family(0x41)));
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 11])),
            Err(ProxyError::V2Short { len: 11, need: 12 })
        );
        assert_eq!(
            parse(&v2(1, 0x21, &[0; 12])),
            Err(ProxyError::V2Short { len: 12, need: 36 })
        );
        // A length past the bound is refused before its bytes arrive.
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(parse(&huge), Err(ProxyError::V2TooLong(0xffff)));
        // A near-signature is no header.
        let mut near = v2(1, 0x11, &[0; 12]);
        near[11] = b'X';
        assert_eq!(parse(&near), Ok(Parsed::NotProxy));
    }

    #[test]
    fn other_protocols_are_not_proxy() {
        for b in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PRI * HTTP/2.0",
            b"PROXZ",
            b"\r\n\r\nX",
        ] {
            assert_eq!(parse(b), Ok(Parsed::NotProxy), "{b:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x2545f4914f6cdd1du64;
        for _ in 0..20_000 {
            let mut b = Vec::new();
            let n = (x % 300) as usize;
            let prefix: &[u8] = if x.is_multiple_of(2) { b"PROXY " } else { V2_SIG };
            b.extend_from_slice(prefix);
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = parse(&b);
        }
    }
}
