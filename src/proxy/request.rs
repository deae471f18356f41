//! HTTP/1.x request heads, parsed strictly (RFC 9110, RFC 9112): nothing
//! is auto-corrected, and anything ambiguous is refused before routing.
//!
//! - A request line or header httparse refuses: 400.
//! - Targets: origin-form, `*`, or absolute-form (`http(s)://authority/…`,
//!   whose authority must agree with Host, and which is forwarded as
//!   origin-form); `CONNECT`'s authority-form goes to the policy (405).
//! - `Content-Length`: digits only; several values (in one field or
//!   several) must all be equal, and then count as one (RFC 9110 section
//!   8.6 lets a recipient take a list of identical values as one; the
//!   gateway writes its own single `content-length` upstream, so no
//!   backend ever sees the repetition). Differing values: 400.
//! - `Transfer-Encoding`: only `chunked`, once and last. `chunked` twice or
//!   not last: 400; any other coding: 501; both framings at once, or a
//!   transfer coding in HTTP/1.0: 400.
//! - `Expect`: `100-continue` is answered by the gateway itself; anything
//!   else: 417.

use super::authority::BadAuthority;
use super::headers::{digits, tokens};
use crate::telemetry::Rejection;

/// Header lines a request head may have; more get 431.
pub const MAX_HEADERS: usize = 100;
/// Largest request head; a larger one gets 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// A complete, well-formed request head.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub method: &'b str,
    /// The target as received (logged as such).
    pub target: &'b str,
    /// The target as forwarded: origin-form (the path of an absolute-form
    /// target), or `*`.
    pub forward_target: &'b str,
    pub host: Result<&'b str, BadAuthority>,
    pub body: BodyKind,
    pub http10: bool,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The protocol asked for by `Upgrade` with `Connection: upgrade`
    /// (never `h2c`, which is ignored: the request is served as HTTP/1.1).
    pub upgrade: Option<&'b [u8]>,
    /// Bytes of the head in the buffer.
    pub len: usize,
    pub headers: &'h [httparse::Header<'b>],
}

/// What the bytes at the front of a connection's buffer hold.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    Request(Head<'h, 'b>),
    /// Not a whole head yet: read more.
    Partial,
    /// Refused: answered with the rejection's status, then the connection
    /// closes.
    Bad(Rejection, &'static str),
}

const MALFORMED: &str = "400 Bad Request: malformed request head\n";
const TOO_LARGE: &str = "431 Request Header Fields Too Large\n";

fn bad(body: &'static str) -> Parsed<'static, 'static> {
    Parsed::Bad(Rejection::BadRequest, body)
}

/// Parses the head at the front of `buf`.
pub fn parse<'h, 'b>(buf: &'b [u8], storage: &'h mut [httparse::Header<'b>; MAX_HEADERS]) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(storage);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Parsed::Bad(Rejection::TooLarge, TOO_LARGE);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(Rejection::TooLarge, TOO_LARGE),
        Err(_) => return bad(MALFORMED),
    };
    if len > MAX_HEAD {
        return Parsed::Bad(Rejection::TooLarge, TOO_LARGE);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return bad(MALFORMED);
    };
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("400 Bad Request: request target is not visible ASCII\n");
    }
    let http10 = version == 0;
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let mut host = Err(BadAuthority::Missing);
    let mut length: Option<u64> = None;
    let mut codings = 0usize;
    let mut chunked_at = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut connection_upgrade = false;
    let mut upgrade = None;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            host = match host {
                Err(BadAuthority::Missing) => host_value(h.value),
                _ => Err(BadAuthority::Several),
            };
        } else if name.eq_ignore_ascii_case("content-length") {
            // A list of values counts as its values (`5, 5`); an empty one
            // is malformed.
            let mut any = false;
            for v in h.value.split(|b| *b == b',') {
                any = true;
                let Some(n) = digits(v) else {
                    return bad("400 Bad Request: malformed Content-Length\n");
                };
                if length.is_some_and(|l| l != n) {
                    return bad("400 Bad Request: differing Content-Length values\n");
                }
                length = Some(n);
            }
            if !any {
                return bad("400 Bad Request: malformed Content-Length\n");
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if t.is_empty() {
                    continue;
                }
                if chunked_at.is_some() {
                    // `chunked` must be the last coding, and only once.
                    return bad("400 Bad Request: chunked must be the last transfer coding\n");
                }
                if t.eq_ignore_ascii_case(b"chunked") {
                    chunked_at = Some(codings);
                }
                codings += 1;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                connection_close |= t.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                connection_upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(h.value);
        } else if name.eq_ignore_ascii_case("expect") {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Parsed::Bad(
                    Rejection::Expectation,
                    "417 Expectation Failed: only 100-continue is supported\n",
                );
            }
            expect_continue = true;
        }
    }
    let body = match (codings, chunked_at, length) {
        (0, _, None) => BodyKind::None,
        (0, _, Some(n)) => BodyKind::Length(n),
        (_, _, Some(_)) => return bad("400 Bad Request: both Transfer-Encoding and Content-Length\n"),
        _ if http10 => return bad("400 Bad Request: Transfer-Encoding in an HTTP/1.0 request\n"),
        (1, Some(0), None) => BodyKind::Chunked,
        (_, Some(_), None) => {
            return Parsed::Bad(
                Rejection::Coding,
                "501 Not Implemented: transfer codings other than chunked are not supported\n",
            );
        }
        (_, None, None) => return bad("400 Bad Request: chunked must be the last transfer coding\n"),
    };
    let forward_target = match absolute_form(target) {
        Some(Ok((authority, path))) => {
            host = match host {
                Ok(h) if h.eq_ignore_ascii_case(authority) => Ok(h),
                Ok(_) => Err(BadAuthority::Mismatch),
                other => other,
            };
            path
        }
        Some(Err(())) => return bad("400 Bad Request: malformed absolute-form target\n"),
        None => target,
    };
    // An `h2c` upgrade is not taken (this is HTTP/1.1 to the end); any
    // other goes to the backend, which may answer 101.
    let upgrade = upgrade.filter(|u| {
        connection_upgrade && !http10 && body == BodyKind::None && !tokens(u).any(|t| t.eq_ignore_ascii_case(b"h2c"))
    });
    let keep_alive = if http10 {
        connection_keep_alive && !connection_close
    } else {
        !connection_close
    };
    Parsed::Request(Head {
        method,
        target,
        forward_target,
        host,
        body,
        http10,
        keep_alive,
        expect_continue,
        upgrade,
        len,
        headers,
    })
}

/// An absolute-form target's authority and its origin-form rest (`/` when
/// it has no path), `None` for any other form, `Err` for a malformed one.
fn absolute_form(target: &str) -> Option<Result<(&str, &str), ()>> {
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Some(Err(()));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') || path.starts_with('?') {
        return Some(Err(()));
    }
    Some(Ok((authority, if path.is_empty() { "/" } else { path })))
}

impl Head<'_, '_> {
    /// The path without the query, as received, for logs.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// Whether a failed attempt on a reused connection may be sent again:
    /// no body and a method without side effects.
    pub fn replayable(&self) -> bool {
        self.body == BodyKind::None && self.upgrade.is_none() && matches!(self.method, "GET" | "HEAD" | "OPTIONS")
    }
}

/// A Host value: visible ASCII (or tab and space), not empty.
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

    fn refused(raw: &[u8]) -> Option<(u16, &'static str)> {
        with(raw, |p| match p {
            Parsed::Bad(r, body) => Some((r.status(), body)),
            _ => None,
        })
    }

    #[test]
    fn ordinary_requests_parse() {
        with(
            b"GET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nConnection: keep-alive, close\r\n\r\nrest",
            |p| {
                let Parsed::Request(h) = p else {
                    panic!("request expected")
                };
                assert_eq!((h.method, h.target, h.path()), ("GET", "/a?b=1", "/a"));
                assert_eq!(h.host, Ok("x.example"));
                assert!(!h.keep_alive);
                assert_eq!(h.len, 71);
                assert!(h.replayable());
            },
        );
        with(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n", |p| {
            let Parsed::Request(h) = p else {
                panic!("request expected")
            };
            assert_eq!(h.body, BodyKind::Length(12));
            assert!(!h.replayable());
        });
        with(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n",
            |p| {
                let Parsed::Request(h) = p else {
                    panic!("request expected")
                };
                assert_eq!(h.body, BodyKind::Chunked);
            },
        );
        assert!(with(b"GET / HTTP/1.1\r\nHost: x", |p| matches!(p, Parsed::Partial)));
    }

    #[test]
    fn http10_keeps_alive_only_when_asked() {
        for (raw, keep) in [
            (&b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..], false),
            (b"GET / HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n", true),
        ] {
            with(raw, |p| {
                let Parsed::Request(h) = p else {
                    panic!("request expected")
                };
                assert!(h.http10);
                assert_eq!(h.keep_alive, keep);
            });
        }
    }

    #[test]
    fn absolute_form_is_forwarded_as_origin_form_and_must_agree_with_host() {
        with(
            b"GET http://X.example:80/p?q HTTP/1.1\r\nHost: x.example:80\r\n\r\n",
            |p| {
                let Parsed::Request(h) = p else {
                    panic!("request expected")
                };
                assert_eq!(h.forward_target, "/p?q");
                assert_eq!(h.host, Ok("x.example:80"));
            },
        );
        with(b"GET http://x.example HTTP/1.1\r\nHost: x.example\r\n\r\n", |p| {
            let Parsed::Request(h) = p else {
                panic!("request expected")
            };
            assert_eq!(h.forward_target, "/");
        });
        with(b"GET http://y.example/ HTTP/1.1\r\nHost: x.example\r\n\r\n", |p| {
            let Parsed::Request(h) = p else {
                panic!("request expected")
            };
            assert_eq!(h.host, Err(BadAuthority::Mismatch));
        });
        assert!(refused(b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n").is_some());
        assert!(refused(b"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n").is_some());
    }

    #[test]
    fn invalid_request_lines_are_refused_never_corrected() {
        for raw in [
            &b"Extra lineGET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET  /x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded: 1\r\n\r\n",
            "GET /\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n".as_bytes(),
        ] {
            assert_eq!(
                refused(raw).map(|(s, _)| s),
                Some(400),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (raw, status) in [
            (
                &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
                400,
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", 417),
        ] {
            assert_eq!(
                refused(raw).map(|(s, _)| s),
                Some(status),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        // Equal values are one length.
        with(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
            |p| {
                let Parsed::Request(h) = p else {
                    panic!("request expected")
                };
                assert_eq!(h.body, BodyKind::Length(5));
            },
        );
    }

    #[test]
    fn upgrades_need_connection_upgrade_and_h2c_is_never_taken() {
        let upgrade = |raw: &[u8]| {
            with(raw, |p| match p {
                Parsed::Request(h) => h.upgrade.map(<[u8]>::to_vec),
                other => panic!("request expected, got {other:?}"),
            })
        };
        assert_eq!(
            upgrade(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            Some(b"websocket".to_vec())
        );
        assert_eq!(
            upgrade(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"),
            None
        );
        assert_eq!(
            upgrade(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n"),
            None
        );
    }

    #[test]
    fn oversized_heads_get_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(refused(&raw).map(|(s, _)| s), Some(431));
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(refused(&many).map(|(s, _)| s), Some(431));
    }

    #[test]
    fn host_problems_are_reported_not_guessed() {
        let host = |raw: &[u8]| {
            with(raw, |p| match p {
                Parsed::Request(h) => h.host.map(str::to_string),
                other => panic!("request expected, got {other:?}"),
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
}
