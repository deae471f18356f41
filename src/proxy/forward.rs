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

/// Rewrites `req` for the backend and returns the request id it carries.
pub fn rewrite(
    req: &mut RequestHeader,
    gw: &Gateway,
    tenant: &HeaderValue,
    origin: &Origin<'_>,
) -> Result<HeaderValue> {
    for h in &gw.strip_headers {
        req.remove_header(h);
    }
    req.remove_header(&gw.tenant_header);
    req.insert_header(gw.tenant_header.clone(), tenant.clone())?;
    match origin.client_ip {
        Some(ip) => req.insert_header(X_FORWARDED_FOR.clone(), ip.to_string())?,
        None => {
            req.remove_header(&X_FORWARDED_FOR);
        }
    }
    req.insert_header(X_FORWARDED_PROTO.clone(), if origin.https { "https" } else { "http" })?;
    req.insert_header(X_FORWARDED_HOST.clone(), origin.authority)?;
    if req.headers.get(HOST).is_none() {
        req.insert_header(HOST, origin.authority)?;
    }
    let id = match req.headers.get(&X_REQUEST_ID) {
        Some(v) if acceptable_request_id(v) => v.clone(),
        _ => {
            let v = new_request_id();
            req.insert_header(X_REQUEST_ID.clone(), v.clone())?;
            v
        }
    };
    Ok(id)
}

/// A client-supplied request id is kept when it is short visible ASCII.
fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
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
    let s = format!("{:016x}{:016x}", *PREFIX, n);
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("0"))
}
