//! Headers sent to the backend: the trusted tenant identity and forwarding
//! information. Client copies of any of them are removed first, so a client
//! can never choose its tenant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use http::header::HOST;
use http::{HeaderName, HeaderValue};
use pingora_error::Result;
use pingora_http::RequestHeader;

use crate::config::Gateway;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the gateway knows about the client side of a request.
pub struct Origin<'a> {
    pub client_ip: Option<std::net::IpAddr>,
    pub authority: &'a str,
    pub https: bool,
}

/// The default tenant header, as pingora takes a name without allocating.
const DEFAULT_TENANT_HEADER: &str = "x-tenant-id";

/// Rewrites `req` for the backend. Returns the request id it carries when
/// `keep_id` (the access log wants it), else `None`.
///
/// Names go to pingora as `&'static str` and values as ready `HeaderValue`s
/// where possible: pingora copies a `HeaderName` into a second buffer for
/// the case-preserving map and a `&str` value into a new one, so each of
/// those would be an allocation per request.
pub fn rewrite(
    req: &mut RequestHeader,
    gw: &Gateway,
    tenant: &HeaderValue,
    origin: &Origin<'_>,
    keep_id: bool,
) -> Result<Option<HeaderValue>> {
    for h in &gw.strip_headers {
        req.remove_header(h);
    }
    // `insert_header` replaces every client copy of a name.
    if gw.tenant_header == DEFAULT_TENANT_HEADER {
        req.insert_header(DEFAULT_TENANT_HEADER, tenant.clone())?;
    } else {
        req.insert_header(gw.tenant_header.clone(), tenant.clone())?;
    }
    match origin.client_ip {
        Some(ip) => req.insert_header("x-forwarded-for", ip_value(ip))?,
        None => {
            req.remove_header(&X_FORWARDED_FOR);
        }
    }
    let proto = HeaderValue::from_static(if origin.https { "https" } else { "http" });
    req.insert_header("x-forwarded-proto", proto)?;
    // The authority is the Host header whenever there is one: share its bytes.
    let host = match req.headers.get(HOST) {
        Some(h) if h.as_bytes() == origin.authority.as_bytes() => h.clone(),
        Some(_) => HeaderValue::from_str(origin.authority).map_err(bad_value)?,
        None => {
            let v = HeaderValue::from_str(origin.authority).map_err(bad_value)?;
            req.insert_header(HOST, v.clone())?;
            v
        }
    };
    req.insert_header("x-forwarded-host", host)?;
    let id = match req.headers.get(&X_REQUEST_ID) {
        Some(v) if acceptable_request_id(v.as_bytes()) => keep_id.then(|| v.clone()),
        _ => {
            let v = new_request_id();
            let kept = keep_id.then(|| v.clone());
            req.insert_header("x-request-id", v)?;
            kept
        }
    };
    Ok(id)
}

fn bad_value(_: http::header::InvalidHeaderValue) -> Box<pingora_error::Error> {
    pingora_error::Error::explain(
        pingora_error::ErrorType::InvalidHTTPHeader,
        "authority is not a header value",
    )
}

/// The client address as a header value, formatted on the stack.
fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let n = format_ip(ip, &mut buf);
    HeaderValue::from_bytes(&buf[..n]).unwrap_or(HeaderValue::from_static(""))
}

/// Appends the client address as text to `out`.
pub fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    let mut buf = [0u8; 48];
    let n = format_ip(ip, &mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// Formats `ip` into `buf`; returns the length (an address always fits).
fn format_ip(ip: std::net::IpAddr, buf: &mut [u8; 48]) -> usize {
    use std::io::Write;
    let mut w = &mut buf[..];
    match write!(w, "{ip}") {
        Ok(()) => 48 - w.len(),
        Err(_) => 0,
    }
}

/// A client-supplied request id is kept when it is short visible ASCII.
pub fn acceptable_request_id(b: &[u8]) -> bool {
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
pub fn new_request_id() -> HeaderValue {
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
        let mut out = [0u8; 16];
        hex16(0x0123_4567_89ab_cdef, &mut out);
        assert_eq!(&out, b"0123456789abcdef");
    }

    #[test]
    fn client_addresses_format_as_text() {
        assert_eq!(ip_value("127.0.0.1".parse().expect("ip")), "127.0.0.1");
        assert_eq!(
            ip_value("2001:db8::ffff:1:2".parse().expect("ip")),
            "2001:db8::ffff:1:2"
        );
        assert_eq!(
            ip_value("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().expect("ip")),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }
}
