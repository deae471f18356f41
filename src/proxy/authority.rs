//! Which authority a request names, or why it names none we can trust.

use http::header::HOST;
use pingora_http::RequestHeader;

/// Why the request's host is unusable (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadAuthority {
    #[error("missing Host header")]
    Missing,
    #[error("empty Host header")]
    Empty,
    #[error("several Host headers")]
    Several,
    #[error("Host header is not visible ASCII")]
    NotAscii,
    #[error("request target authority differs from Host")]
    Mismatch,
}

/// Returns the authority (`host[:port]`) a request is for: the Host header,
/// or for HTTP/2 the `:authority` pseudo-header. An absolute-form target
/// must agree with Host.
pub fn authority(req: &RequestHeader, http2: bool) -> Result<&str, BadAuthority> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadAuthority::Several);
    }
    let host = host
        .map(|h| h.to_str().map_err(|_| BadAuthority::NotAscii))
        .transpose()?;
    let target = req.uri.authority().map(|a| a.as_str());
    match (host, target) {
        (Some(""), _) => Err(BadAuthority::Empty),
        (Some(h), Some(t)) if !h.eq_ignore_ascii_case(t) => Err(BadAuthority::Mismatch),
        (Some(h), _) => Ok(h),
        (None, Some(t)) if http2 => Ok(t),
        (None, _) => Err(BadAuthority::Missing),
    }
}
