//! The one trusted-header writer: the request head a backend gets, for
//! HTTP/1.1 and HTTP/2 clients alike.
//!
//! Client copies of every header the gateway vouches for (the tenant
//! header, `[identity]`'s tenant and subject headers, `forwarded`, `x-real-ip`,
//! the whole `x-forwarded-*` family, `x-request-id`, every `strip_headers`
//! entry and every `[profile.headers]` name) are removed in every
//! spelling: case, and `_` for `-` (CGI, WSGI and Rack backends read
//! `X_Tenant_Id` as `X-Tenant-Id`). Header names containing `_` are
//! dropped altogether unless `underscores_in_headers` is on. Then the
//! gateway writes its own values, so a client can never choose its tenant.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use http::{HeaderName, HeaderValue};

use super::framing::header_line;
use crate::config::profile::Carried;
use crate::config::{Gateway, Identity};

/// What the gateway tells the backend about a request.
pub struct Trusted<'a> {
    pub gw: &'a Gateway,
    pub identity: &'a Identity,
    /// The tenant id, for the tenant header (none for a shared host's
    /// platform pool).
    pub tenant: Option<&'a HeaderValue>,
    /// The verified token's subject, for `[identity] user_header`.
    pub user: Option<HeaderValue>,
    /// The claimed path prefix removed from the target (`strip_prefix`),
    /// for `x-forwarded-prefix`.
    pub prefix: Option<HeaderValue>,
    pub client_ip: Option<IpAddr>,
    /// The authority the client asked for.
    pub authority: &'a str,
    pub https: bool,
    /// The tenant's profile headers (features, region, ...), precomputed.
    pub profile: &'a [(HeaderName, HeaderValue)],
    /// Every configured profile header name: client copies are dropped
    /// even when this tenant has no value for one.
    pub profile_names: &'a [(Carried, HeaderName)],
}

/// The request line and framing of the head a backend gets.
pub struct Outgoing<'a> {
    pub method: &'a str,
    /// Origin-form, or `*`.
    pub target: &'a str,
    /// HTTP/2: `Host` from `:authority`, and split `cookie` fields joined.
    pub http2_host: Option<&'a str>,
    /// The body's length, written as `content-length`.
    pub length: Option<u64>,
    /// The body goes chunked (`transfer-encoding: chunked`).
    pub chunked: bool,
    /// An upgrade (WebSocket) the backend is asked for: `upgrade: <value>`
    /// and `connection: upgrade`.
    pub upgrade: Option<&'a [u8]>,
}

/// Writes the whole head for the backend into `out`, blank line included:
/// the request line, `Host` (HTTP/2: from the authority), the client's
/// headers without hop-by-hop ones, without any the gateway vouches for
/// (see the module doc) and without those the client's `Connection` names,
/// then the framing the gateway chose, then the trusted headers (tenant,
/// `x-forwarded-{for,proto,host}`, `x-request-id`). A `Connection` header
/// can drop none of these. Returns the request id sent: the client's own
/// when it is short visible ASCII, else a new one. `headers` yields the
/// client's headers (as often as needed).
pub fn write_upstream<'h, I: Iterator<Item = (&'h str, &'h [u8])>>(
    out: &mut Vec<u8>,
    req: &Outgoing<'_>,
    headers: impl Fn() -> I,
    t: &Trusted<'_>,
) -> HeaderValue {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = req.http2_host {
        header_line(out, b"host", host.as_bytes());
    }
    let listed = |name: &str| {
        headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .any(|(_, v)| tokens(v).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    };
    let mut request_id = None;
    let http2 = req.http2_host.is_some();
    for (name, value) in headers() {
        if name.eq_ignore_ascii_case("x-request-id") {
            if request_id.is_none() && acceptable_request_id(value) {
                request_id = HeaderValue::from_bytes(value).ok();
            }
            continue;
        }
        let is_host = name.eq_ignore_ascii_case("host");
        let skip = (name.contains('_') && !t.gw.underscores_in_headers)
            || vouched_for(name, t.gw, t.identity)
            || t.profile_names
                .iter()
                .any(|(_, p)| same_name(name.as_bytes(), p.as_str().as_bytes()))
            || hop_by_hop(name)
            || (http2 && (is_host || name.eq_ignore_ascii_case("cookie")))
            || (!is_host && listed(name));
        if !skip {
            header_line(out, name.as_bytes(), value);
        }
    }
    if http2 {
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
    if let Some(n) = req.length {
        use std::io::Write;
        let _ = write!(out, "content-length: {n}\r\n");
    }
    if req.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(upgrade) = req.upgrade {
        header_line(out, b"upgrade", upgrade);
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    if let Some(tenant) = t.tenant {
        header_line(out, t.gw.tenant_header.as_str().as_bytes(), tenant.as_bytes());
    }
    if let Some(user) = &t.user {
        header_line(out, t.identity.user_header.as_str().as_bytes(), user.as_bytes());
    }
    if let Some(prefix) = &t.prefix {
        header_line(out, b"x-forwarded-prefix", prefix.as_bytes());
    }
    for (name, value) in t.profile {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
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
    out.extend_from_slice(b"\r\n");
    id
}

/// Whether `a` and `b` name the same header for a CGI-style backend:
/// ASCII case and `_` against `-` ignored.
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

/// Headers the gateway vouches for: every client copy is dropped (the
/// trusted tenant header of `[identity]` too, once read, and the subject
/// header).
fn vouched_for(name: &str, gw: &Gateway, identity: &Identity) -> bool {
    let n = name.as_bytes();
    let x_forwarded = n.len() > 12 && same_name(&n[..12], b"x-forwarded-");
    x_forwarded
        || same_name(n, gw.tenant_header.as_str().as_bytes())
        || same_name(n, identity.user_header.as_str().as_bytes())
        || identity
            .header
            .as_ref()
            .is_some_and(|h| same_name(n, h.as_str().as_bytes()))
        || same_name(n, b"x-request-id")
        || same_name(n, b"forwarded")
        || same_name(n, b"x-real-ip")
        || gw.strip_headers.iter().any(|s| same_name(n, s.as_str().as_bytes()))
}

/// Headers that describe one connection (RFC 9110 section 7.6.1): never
/// relayed, in either direction.
pub fn connection_level(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
        "http2-settings",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Request headers never forwarded: the connection-level ones, and those
/// the gateway sets itself (it frames the body, answers `Expect` and asks
/// for an upgrade on its own).
fn hop_by_hop(name: &str) -> bool {
    connection_level(name) || name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("expect")
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

/// Appends the client address as text to `out`.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    let _ = write!(out, "{ip}");
}

/// A client-supplied request id is kept when it is short visible ASCII.
fn acceptable_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

static PREFIX: LazyLock<u64> = LazyLock::new(|| {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
});
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique id: a random per-process prefix and a counter, 32 hex digits.
fn new_request_id() -> HeaderValue {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    hex16(*PREFIX, &mut buf[..16]);
    hex16(n, &mut buf[16..]);
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// `v` as 16 lowercase hex digits into `out` (16 bytes).
fn hex16(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(extra: &str) -> Gateway {
        let text =
            format!("[gateway]\nhttp_listen = \"127.0.0.1:1\"\n{extra}\n[pools.a]\nupstreams = [\"127.0.0.1:1\"]\n");
        let (config, _) = crate::registry::Snapshot::compile(std::path::Path::new("t.toml"), &text).expect("config");
        config.gateway
    }

    fn head(gw: &Gateway, req: &Outgoing<'_>, headers: &[(&str, &str)]) -> (String, HeaderValue) {
        let tenant = HeaderValue::from_static("t1");
        let identity = Identity::default();
        let trusted = Trusted {
            gw,
            identity: &identity,
            tenant: Some(&tenant),
            user: None,
            prefix: None,
            client_ip: Some("10.0.0.1".parse().expect("ip")),
            authority: "a.example",
            https: false,
            profile: &[],
            profile_names: &gw_profile_names(),
        };
        let mut out = Vec::new();
        let id = write_upstream(
            &mut out,
            req,
            || headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            &trusted,
        );
        (String::from_utf8(out).expect("ascii"), id)
    }

    fn gw_profile_names() -> Vec<(Carried, HeaderName)> {
        crate::config::profile::ProfileSettings::default().headers
    }

    #[test]
    fn profile_headers_are_the_gateways_in_every_spelling() {
        let gw = gateway("");
        let tenant = HeaderValue::from_static("t1");
        let names = gw_profile_names();
        let profile = [
            (
                HeaderName::from_static("x-tenant-features"),
                HeaderValue::from_static("beta,sso"),
            ),
            (
                HeaderName::from_static("x-tenant-region"),
                HeaderValue::from_static("eu"),
            ),
        ];
        let identity = crate::config::Identity::default();
        let trusted = Trusted {
            gw: &gw,
            identity: &identity,
            tenant: Some(&tenant),
            user: None,
            prefix: None,
            client_ip: None,
            authority: "a.example",
            https: true,
            profile: &profile,
            profile_names: &names,
        };
        let client = [
            ("X-Tenant-Features", "admin,everything"),
            ("x_tenant_features", "admin"),
            ("X-TENANT-REGION", "us"),
            ("X_Tenant_Region", "us"),
        ];
        let mut out = Vec::new();
        write_upstream(
            &mut out,
            &plain(),
            || client.iter().map(|(n, v)| (*n, v.as_bytes())),
            &trusted,
        );
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.contains("x-tenant-features: beta,sso\r\n"), "{text}");
        assert!(text.contains("x-tenant-region: eu\r\n"), "{text}");
        assert!(!text.contains("admin") && !text.contains(": us"), "{text}");
    }

    fn plain<'a>() -> Outgoing<'a> {
        Outgoing {
            method: "GET",
            target: "/p",
            http2_host: None,
            length: None,
            chunked: false,
            upgrade: None,
        }
    }

    #[test]
    fn every_spelling_of_a_vouched_header_is_dropped() {
        let gw = gateway("strip_headers = [\"x-user-role\"]");
        let (text, id) = head(
            &gw,
            &plain(),
            &[
                ("Host", "a.example"),
                ("X-Tenant-Id", "evil"),
                ("X_Tenant_Id", "evil"),
                ("x_tenant-ID", "evil"),
                ("X_Forwarded_For", "6.6.6.6"),
                ("X-Forwarded-Host", "evil"),
                ("X-Forwarded-Port", "1"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("X-User-Role", "admin"),
                ("X_User_Role", "admin"),
                ("X_Custom", "1"),
                ("Connection", "x-secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "5"),
                ("Expect", "100-continue"),
                ("X-Request-Id", "abc"),
                ("Accept", "*/*"),
            ],
        );
        assert_eq!(id, "abc");
        assert_eq!(
            text,
            "GET /p HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\nx-tenant-id: t1\r\n\
x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: a.example\r\nx-request-id: abc\r\n\r\n"
        );
    }

    #[test]
    fn underscored_names_pass_only_with_the_knob_and_never_for_vouched_ones() {
        let gw = gateway("underscores_in_headers = true");
        let (text, _) = head(&gw, &plain(), &[("X_Custom", "1"), ("X_Tenant_Id", "evil")]);
        assert!(text.contains("X_Custom: 1\r\n"), "{text}");
        assert!(!text.contains("evil"), "{text}");
    }

    #[test]
    fn http2_heads_get_host_and_one_cookie_and_the_chosen_framing() {
        let gw = gateway("");
        let req = Outgoing {
            method: "POST",
            target: "/u",
            http2_host: Some("a.example"),
            length: None,
            chunked: true,
            upgrade: None,
        };
        let (text, _) = head(
            &gw,
            &req,
            &[
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("content-length", "5"),
                ("te", "trailers"),
            ],
        );
        assert!(
            text.starts_with(
                "POST /u HTTP/1.1\r\nhost: a.example\r\ncookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("content-length") && !text.contains("te:"), "{text}");
    }

    #[test]
    fn an_upgrade_is_asked_for_by_the_gateway_alone() {
        let gw = gateway("");
        let mut req = plain();
        req.upgrade = Some(b"websocket");
        let (text, _) = head(
            &gw,
            &req,
            &[("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings")],
        );
        assert!(text.contains("upgrade: websocket\r\nconnection: upgrade\r\n"), "{text}");
        assert!(!text.contains("h2c") && !text.contains("Connection:"), "{text}");
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_unique() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for v in [&a, &b] {
            assert_eq!(v.len(), 32);
            assert!(v
                .as_bytes()
                .iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        assert_eq!(a.as_bytes()[..16], b.as_bytes()[..16]);
        let gw = gateway("");
        let (_, id) = head(&gw, &plain(), &[("X-Request-Id", "bad id with spaces")]);
        assert_eq!(id.len(), 32);
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
