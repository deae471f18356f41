//! Which authority a request names, or why it names none we can trust.

use http::header::HOST;

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

/// Returns the authority (`host[:port]`) an HTTP/2 request is for: the
/// Host header, or the `:authority` pseudo-header. An `:authority` must
/// agree with Host. (HTTP/1.x heads are read by [`super::request`].)
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

    fn req(target: &str, hosts: &[&[u8]]) -> (http::HeaderMap, http::Uri) {
        let mut headers = http::HeaderMap::new();
        for h in hosts {
            headers.append(HOST, http::HeaderValue::from_bytes(h).expect("header"));
        }
        (headers, target.parse().expect("uri"))
    }

    fn authority(r: &(http::HeaderMap, http::Uri), http2: bool) -> Result<&str, BadAuthority> {
        of(&r.0, &r.1, http2)
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
