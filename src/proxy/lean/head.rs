//! Request heads: which ones the lean path proxies itself, and the head it
//! sends upstream in their place.

use std::net::IpAddr;

use http::HeaderValue;

use super::super::authority::BadAuthority;
use super::super::forward::{acceptable_request_id, new_request_id, write_ip};
use super::framing::header_line;
use crate::config::Gateway;

/// Header lines a request head may have on the lean path; more go to pingora.
pub const MAX_HEADERS: usize = 64;

/// The ACME HTTP-01 path prefix (answered by the pingora hooks).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// A complete HTTP/1.1 request head the lean path can proxy: origin-form
/// target, no transfer coding, at most one `Content-Length`, no upgrade and
/// no `Expect`.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub method: &'b str,
    /// The origin-form target (`/path?query`).
    pub target: &'b str,
    pub host: Result<&'b str, BadAuthority>,
    pub content_length: u64,
    /// The request had a `Content-Length` (`0` included).
    pub has_length: bool,
    /// The client asked to close after this exchange (`Connection: close`).
    pub close: bool,
    /// Bytes of the head in the buffer.
    pub len: usize,
    headers: &'h [httparse::Header<'b>],
}

/// What to do with the bytes at the front of a connection's buffer.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// A head the lean path proxies.
    Lean(Head<'h, 'b>),
    /// Not a whole head yet: read more.
    Partial,
    /// Anything else: pingora's HTTP/1 path takes the connection from here
    /// on.
    Handoff(Handoff),
}

/// Why a request goes to pingora's path (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Not a head httparse accepts (h2c's preface included).
    Malformed,
    /// A head larger than the lean path reads.
    TooLarge,
    Http10,
    /// `CONNECT`, or a target that is not origin-form.
    Target,
    AcmeChallenge,
    /// `Transfer-Encoding`, or more than one or a malformed `Content-Length`.
    Body,
    Upgrade,
    Expect,
}

impl Handoff {
    pub const ALL: [Handoff; 8] = [
        Handoff::Malformed,
        Handoff::TooLarge,
        Handoff::Http10,
        Handoff::Target,
        Handoff::AcmeChallenge,
        Handoff::Body,
        Handoff::Upgrade,
        Handoff::Expect,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Handoff::Malformed => "malformed",
            Handoff::TooLarge => "too_large",
            Handoff::Http10 => "http10",
            Handoff::Target => "target",
            Handoff::AcmeChallenge => "acme_challenge",
            Handoff::Body => "body",
            Handoff::Upgrade => "upgrade",
            Handoff::Expect => "expect",
        }
    }
}

/// Parses the head at the front of `buf`.
pub fn parse<'h, 'b>(buf: &'b [u8], storage: &'h mut [httparse::Header<'b>; MAX_HEADERS]) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(storage);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handoff(Handoff::Malformed),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff(Handoff::Malformed);
    };
    if version != 1 {
        return Parsed::Handoff(Handoff::Http10);
    }
    if method == "CONNECT" || !target.starts_with('/') {
        return Parsed::Handoff(Handoff::Target);
    }
    if target.starts_with(ACME_CHALLENGE_PREFIX) {
        return Parsed::Handoff(Handoff::AcmeChallenge);
    }
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let mut host = Err(BadAuthority::Missing);
    let mut content_length = None;
    let mut close = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            host = match host {
                Err(BadAuthority::Missing) => host_value(h.value),
                _ => Err(BadAuthority::Several),
            };
        } else if name.eq_ignore_ascii_case("content-length") {
            match (content_length, digits(h.value)) {
                (None, Some(n)) => content_length = Some(n),
                _ => return Parsed::Handoff(Handoff::Body),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Handoff(Handoff::Body);
        } else if name.eq_ignore_ascii_case("upgrade") {
            return Parsed::Handoff(Handoff::Upgrade);
        } else if name.eq_ignore_ascii_case("expect") {
            return Parsed::Handoff(Handoff::Expect);
        } else if name.eq_ignore_ascii_case("connection") {
            close |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
    }
    Parsed::Lean(Head {
        method,
        target,
        host,
        content_length: content_length.unwrap_or(0),
        has_length: content_length.is_some(),
        close,
        len,
        headers,
    })
}

impl Head<'_, '_> {
    /// The path without the query, for logs.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// Whether a failed attempt on a reused connection may be sent again:
    /// no body and a method without side effects.
    pub fn replayable(&self) -> bool {
        self.content_length == 0 && matches!(self.method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
    }

    /// The head for the backend, into `out` (see [`write_upstream`]).
    pub fn write_upstream(&self, out: &mut Vec<u8>, trusted: &Trusted<'_>) -> HeaderValue {
        let headers = || self.headers.iter().map(|h| (h.name, h.value));
        let length = self.has_length.then_some(self.content_length);
        write_upstream(out, self.method, self.target, headers, None, length, trusted)
    }
}

/// What the gateway tells the backend about a request.
pub struct Trusted<'a> {
    pub gw: &'a Gateway,
    /// The tenant id, for the tenant header.
    pub tenant: &'a HeaderValue,
    pub client_ip: Option<IpAddr>,
    /// The authority the client asked for.
    pub authority: &'a str,
    pub https: bool,
}

/// Writes the head for the backend into `out`: the request line, `Host`
/// (from the authority when `host` is set: HTTP/2 has none, and its split
/// `cookie` fields are joined), the client's headers without hop-by-hop
/// ones, the configured strip list and every copy of the trusted ones, the
/// body's `content-length` when `length` is set (the client's own copies
/// never pass: the gateway frames the body), then the trusted headers
/// (tenant, `x-forwarded-{for,proto,host}`, `x-request-id`). A `Connection`
/// header can drop none of these. Returns the request id sent. The caller
/// adds `transfer-encoding` when it chunks, and the blank line.
/// `headers` yields the client's headers (as often as needed).
pub fn write_upstream<'h, I: Iterator<Item = (&'h str, &'h [u8])>>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: impl Fn() -> I,
    host: Option<&str>,
    length: Option<u64>,
    t: &Trusted<'_>,
) -> HeaderValue {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        header_line(out, b"host", host.as_bytes());
    }
    let listed = |name: &str| {
        headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .any(|(_, v)| tokens(v).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    };
    let mut request_id = None;
    for (name, value) in headers() {
        if name.eq_ignore_ascii_case("x-request-id") {
            if request_id.is_none() && acceptable_request_id(value) {
                request_id = HeaderValue::from_bytes(value).ok();
            }
            continue;
        }
        let is_host = name.eq_ignore_ascii_case("host");
        let skip = is_replaced(name, t.gw)
            || hop_by_hop(name)
            || name.eq_ignore_ascii_case("content-length")
            || (host.is_some() && (is_host || name.eq_ignore_ascii_case("cookie")))
            || (!is_host && listed(name));
        if !skip {
            header_line(out, name.as_bytes(), value);
        }
    }
    if host.is_some() {
        // RFC 9113 section 8.2.3: HTTP/2 clients split cookies; HTTP/1.1
        // wants one field.
        let mut cookies = headers().filter(|(n, _)| n.eq_ignore_ascii_case("cookie"));
        if let Some((_, first)) = cookies.next() {
            out.extend_from_slice(b"cookie: ");
            out.extend_from_slice(first);
            for (_, more) in cookies {
                out.extend_from_slice(b"; ");
                out.extend_from_slice(more);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(n) = length {
        use std::io::Write;
        let _ = write!(out, "content-length: {n}\r\n");
    }
    header_line(out, t.gw.tenant_header.as_str().as_bytes(), t.tenant.as_bytes());
    if let Some(ip) = t.client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        write_ip(out, ip);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if t.https {
        b"x-forwarded-proto: https\r\n"
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    header_line(out, b"x-forwarded-host", t.authority.as_bytes());
    let id = request_id.unwrap_or_else(new_request_id);
    header_line(out, b"x-request-id", id.as_bytes());
    id
}

/// Headers the gateway sets itself: every client copy is dropped.
fn is_replaced(name: &str, gw: &Gateway) -> bool {
    name.eq_ignore_ascii_case(gw.tenant_header.as_str())
        || name.eq_ignore_ascii_case("x-forwarded-for")
        || name.eq_ignore_ascii_case("x-forwarded-proto")
        || name.eq_ignore_ascii_case("x-forwarded-host")
        || gw.strip_headers.iter().any(|s| name.eq_ignore_ascii_case(s.as_str()))
}

/// Headers that describe one connection and are never forwarded (RFC 9110
/// section 7.6.1), plus the framing ones the lean path writes itself.
pub fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// The comma-separated tokens of a header value, trimmed.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A `Content-Length`: ASCII digits only, at most 19 of them.
pub fn digits(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A Host value as the pingora path sees it: visible ASCII (or tab and
/// space), not empty.
fn host_value(v: &[u8]) -> Result<&str, BadAuthority> {
    if v.is_empty() {
        return Err(BadAuthority::Empty);
    }
    if !v.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)) {
        return Err(BadAuthority::NotAscii);
    }
    std::str::from_utf8(v).map_err(|_| BadAuthority::NotAscii)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with<R>(raw: &[u8], f: impl FnOnce(Parsed<'_, '_>) -> R) -> R {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        f(parse(raw, &mut storage))
    }

    fn handoff(raw: &[u8]) -> Option<Handoff> {
        with(raw, |p| match p {
            Parsed::Handoff(h) => Some(h),
            _ => None,
        })
    }

    #[test]
    fn plain_requests_stay_on_the_lean_path() {
        with(
            b"GET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nConnection: keep-alive, close\r\n\r\nrest",
            |p| {
                let Parsed::Lean(h) = p else { panic!("lean expected") };
                assert_eq!((h.method, h.target, h.path()), ("GET", "/a?b=1", "/a"));
                assert_eq!(h.host, Ok("x.example"));
                assert!(h.close);
                assert_eq!(h.len, 71);
                assert!(h.replayable());
            },
        );
        with(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n", |p| {
            let Parsed::Lean(h) = p else { panic!("lean expected") };
            assert_eq!(h.content_length, 12);
            assert!(!h.replayable());
        });
        assert!(with(b"GET / HTTP/1.1\r\nHost: x", |p| matches!(p, Parsed::Partial)));
    }

    #[test]
    fn unusual_requests_go_to_pingora() {
        use Handoff::*;
        for (raw, why) in [
            (&b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..], Http10),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                Body,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Body,
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", Body),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                Upgrade,
            ),
            (
                b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                Expect,
            ),
            (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", Target),
            (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", Target),
            (
                b"GET /.well-known/acme-challenge/t HTTP/1.1\r\nHost: x\r\n\r\n",
                AcmeChallenge,
            ),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Malformed),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", Malformed),
        ] {
            assert_eq!(handoff(raw), Some(why), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn host_problems_are_reported_not_guessed() {
        let host = |raw: &[u8]| {
            with(raw, |p| match p {
                Parsed::Lean(h) => h.host.map(str::to_string),
                other => panic!("lean expected, got {other:?}"),
            })
        };
        assert_eq!(host(b"GET / HTTP/1.1\r\n\r\n"), Err(BadAuthority::Missing));
        assert_eq!(host(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), Err(BadAuthority::Empty));
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            Err(BadAuthority::Several)
        );
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: ü.example\r\n\r\n".as_bytes()),
            Err(BadAuthority::NotAscii)
        );
    }

    #[test]
    fn the_upstream_head_carries_only_trusted_identity() {
        let text = "[gateway]\nhttp_listen = \"127.0.0.1:1\"\n[pools.a]\nupstreams = [\"127.0.0.1:1\"]\n";
        let (config, _) = crate::registry::Snapshot::compile(std::path::Path::new("t.toml"), text).expect("config");
        let gw = config.gateway;
        let raw = b"GET /p HTTP/1.1\r\nHost: a.example\r\nX-Tenant-Id: evil\r\nX-Forwarded-For: 6.6.6.6\r\n\
X-Forwarded-Host: evil\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Request-Id: abc\r\nAccept: */*\r\n\r\n";
        with(raw, |p| {
            let Parsed::Lean(h) = p else { panic!("lean expected") };
            let mut out = Vec::new();
            let tenant = HeaderValue::from_static("t1");
            let trusted = Trusted {
                gw: &gw,
                tenant: &tenant,
                client_ip: Some("10.0.0.1".parse().expect("ip")),
                authority: "a.example",
                https: false,
            };
            let id = h.write_upstream(&mut out, &trusted);
            out.extend_from_slice(b"\r\n");
            assert_eq!(id, "abc");
            assert_eq!(
                String::from_utf8(out).expect("ascii"),
                "GET /p HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\nx-tenant-id: t1\r\n\
x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: a.example\r\nx-request-id: abc\r\n\r\n"
            );
        });
    }

    #[test]
    fn content_lengths_are_plain_digits() {
        assert_eq!(digits(b" 42 "), Some(42));
        assert_eq!(digits(b"0"), Some(0));
        for bad in [&b""[..], b"-1", b"1,1", b"0x10", b"99999999999999999999"] {
            assert_eq!(digits(bad), None);
        }
    }
}
