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
    of(&req.headers, &req.uri, http2)
}

/// [`authority`] from a request's headers and target.
pub fn of<'r>(headers: &'r http::HeaderMap, uri: &'r http::Uri, http2: bool) -> Result<&'r str, BadAuthority> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadAuthority::Several);
    }
    let host = host
        .map(|h| h.to_str().map_err(|_| BadAuthority::NotAscii))
        .transpose()?;
    let target = uri.authority().map(|a| a.as_str());
    match (host, target) {
        (Some(""), _) => Err(BadAuthority::Empty),
        (Some(h), Some(t)) if !h.eq_ignore_ascii_case(t) => Err(BadAuthority::Mismatch),
        (Some(h), _) => Ok(h),
        (None, Some(t)) if http2 => Ok(t),
        (None, _) => Err(BadAuthority::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, hosts: &[&[u8]]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        r.set_uri(target.parse().expect("uri"));
        for h in hosts {
            r.append_header(HOST, *h).expect("header");
        }
        r
    }

    #[test]
    fn host_header_or_h2_authority_is_the_authority() {
        assert_eq!(authority(&req("/", &[b"a.example:80"]), false), Ok("a.example:80"));
        assert_eq!(authority(&req("https://a.example/", &[]), true), Ok("a.example"));
        assert_eq!(
            authority(&req("https://A.example/", &[b"a.example"]), true),
            Ok("a.example")
        );
    }

    #[test]
    fn every_untrustworthy_shape_is_refused() {
        assert_eq!(authority(&req("/", &[]), false), Err(BadAuthority::Missing));
        assert_eq!(
            authority(&req("http://a.example/", &[]), false),
            Err(BadAuthority::Missing)
        );
        assert_eq!(authority(&req("/", &[]), true), Err(BadAuthority::Missing));
        assert_eq!(authority(&req("/", &[b""]), false), Err(BadAuthority::Empty));
        assert_eq!(
            authority(&req("/", &[b"a.example", b"a.example"]), false),
            Err(BadAuthority::Several)
        );
        assert_eq!(
            authority(&req("/", &["ü.example".as_bytes()]), false),
            Err(BadAuthority::NotAscii)
        );
        assert_eq!(
            authority(&req("https://b.example/", &[b"a.example"]), true),
            Err(BadAuthority::Mismatch)
        );
        assert_eq!(
            authority(&req("http://b.example/", &[b"a.example"]), false),
            Err(BadAuthority::Mismatch)
        );
    }
}
