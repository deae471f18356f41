//! Path-prefix tenants on shared hosts: the normalisation every request path
//! on a shared host goes through, and the table of prefix claims.
//!
//! A request path is normalised once ([`normalize_path`]): percent-encoded
//! unreserved characters are decoded (`/%61cme` is `/acme`), other escapes
//! are kept with uppercase hex, and dot-segments are resolved
//! (`/acme/../globex` is `/globex`). Matching is case-sensitive and by
//! whole segments: `/acme` claims `/acme` and `/acme/x`, never `/acmex`.
//! A path that different backends could read differently (`\`, an encoded
//! `/`, `\` or NUL, a broken escape, a control or non-ASCII byte) is
//! refused rather than routed ([`PathError`]). The gateway forwards the
//! normalised path, so the backend sees exactly the path that was routed.
//!
//! A lookup costs one hash probe per segment of the request path, up to the
//! depth of the deepest claim, whatever the number of tenants.

use std::borrow::Cow;
use std::collections::HashMap;

use ahash::RandomState;

use super::TenantIdx;
use crate::config::PoolId;

/// Why a request path cannot be routed by prefix (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path holds a character or escape that backends read differently")]
    Ambiguous,
}

/// Whether `b` is an RFC 3986 unreserved character.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normalised form of a request path (no query): see the module doc.
/// Borrowed when the path is already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // First pass: refuse what is ambiguous, and see whether any work is needed.
    let mut work = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::Ambiguous);
                };
                let c = h << 4 | l;
                if matches!(c, b'/' | b'\\' | 0) {
                    return Err(PathError::Ambiguous);
                }
                work = true;
                i += 3;
            }
            b'\\' | b'#' => return Err(PathError::Ambiguous),
            c if !c.is_ascii_graphic() => return Err(PathError::Ambiguous),
            _ => i += 1,
        }
    }
    let dots = path.split('/').any(|s| s == "." || s == "..");
    if !work && !dots {
        return Ok(Cow::Borrowed(path));
    }
    // Decode unreserved escapes, keep the others in uppercase.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let c = (hex(bytes[i + 1]).unwrap_or(0) << 4) | hex(bytes[i + 2]).unwrap_or(0);
            if unreserved(c) {
                decoded.push(c as char);
            } else {
                decoded.push('%');
                decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            decoded.push(bytes[i] as char);
            i += 1;
        }
    }
    // RFC 3986 section 5.2.4, on segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing = false;
    for (n, s) in segments.iter().enumerate() {
        match *s {
            "." => trailing = n == last,
            ".." => {
                out.pop();
                trailing = n == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Whether a claimed prefix (`/acme`, `/eu/acme`) is in its one canonical
/// form: normalised, segments non-empty, no trailing `/`.
pub fn canonical_prefix(prefix: &str) -> bool {
    prefix.len() > 1
        && !prefix.ends_with('/')
        && !prefix.contains("//")
        && matches!(normalize_path(prefix), Ok(Cow::Borrowed(_)))
}

/// A shared host: tenants are chosen by path on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    /// Where a path no tenant claims goes (with no tenant header); `None`:
    /// 404, never forwarded.
    pub platform_pool: Option<PoolId>,
}

/// Prefix claims on shared hosts. Immutable once built.
#[derive(Debug, Default)]
pub struct PathTable {
    /// `host` + `prefix` (`app.example/acme`) → tenant.
    claims: HashMap<Box<str>, TenantIdx, RandomState>,
    shared: HashMap<Box<str>, Shared, RandomState>,
    /// Segments of the deepest claim: no lookup probes deeper.
    depth: usize,
}

impl PathTable {
    /// The shared host `host` (normalised), if it is one.
    pub fn shared(&self, host: &str) -> Option<Shared> {
        if self.shared.is_empty() {
            return None;
        }
        self.shared.get(host).copied()
    }

    /// The tenant claiming the longest prefix of the normalised `path` on
    /// `host`, and that prefix's length.
    pub fn lookup(&self, host: &str, path: &str) -> Option<(TenantIdx, usize)> {
        if self.claims.is_empty() {
            return None;
        }
        // Ends of the candidate prefixes: before each `/` after the first,
        // and the whole path; only the first `depth` segments count.
        let mut ends: [usize; 16] = [0; 16];
        let mut n = 0;
        for (i, b) in path.bytes().enumerate().skip(1) {
            if b == b'/' {
                if n == self.depth.min(16) {
                    break;
                }
                ends[n] = i;
                n += 1;
            }
        }
        if n < self.depth.min(16) && !path.ends_with('/') {
            ends[n] = path.len();
            n += 1;
        }
        let mut key = String::with_capacity(host.len() + path.len());
        key.push_str(host);
        key.push_str(path);
        for &end in ends[..n].iter().rev() {
            key.truncate(host.len() + end);
            if let Some(&t) = self.claims.get(key.as_str()) {
                return Some((t, end));
            }
        }
        None
    }

    /// The owner of exactly `prefix` on `host`.
    pub(super) fn owner(&self, host: &str, prefix: &str) -> Option<TenantIdx> {
        self.claims.get(format!("{host}{prefix}").as_str()).copied()
    }

    pub(super) fn add_shared(&mut self, host: &str, shared: Shared) {
        self.shared.insert(host.into(), shared);
    }

    /// Claims `prefix` on `host` for `tenant`; the previous owner if any
    /// (then nothing changes).
    pub(super) fn claim(&mut self, host: &str, prefix: &str, tenant: TenantIdx) -> Option<TenantIdx> {
        let key: Box<str> = format!("{host}{prefix}").into();
        if let Some(&owner) = self.claims.get(&key) {
            return Some(owner);
        }
        self.claims.insert(key, tenant);
        self.depth = self.depth.max(prefix.matches('/').count()).min(16);
        None
    }

    /// Number of prefix claims.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    /// Whether nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }
}

/// Splits a claim `host/prefix` into its host (as written) and prefix.
pub fn split_claim(claim: &str) -> Option<(&str, &str)> {
    let at = claim.find('/')?;
    Some((&claim[..at], &claim[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_escapes_are_decoded_and_dot_segments_resolved() {
        let n = |p: &str| normalize_path(p).map(Cow::into_owned);
        assert_eq!(n("/acme/x"), Ok("/acme/x".into()));
        assert_eq!(n("/%61cme"), Ok("/acme".into()));
        assert_eq!(n("/acme/../globex"), Ok("/globex".into()));
        assert_eq!(n("/acme/%2e%2e/globex"), Ok("/globex".into()));
        assert_eq!(n("/acme/%2E%2E"), Ok("/".into()));
        assert_eq!(n("/../../acme"), Ok("/acme".into()));
        assert_eq!(n("/acme/./x/."), Ok("/acme/x/".into()));
        assert_eq!(n("/a%20b"), Ok("/a%20b".into()));
        assert_eq!(n("/a%3fb"), Ok("/a%3Fb".into()));
        assert_eq!(n("/ACME"), Ok("/ACME".into()));
    }

    #[test]
    fn paths_backends_could_read_differently_are_refused() {
        for p in [
            "/acme%2f..%2fglobex",
            "/acme%2F",
            "/acme\\..\\globex",
            "/acme%5c",
            "/a%00",
            "/a%zz",
            "/a%4",
            "/a\u{e9}",
            "/a b",
        ] {
            assert_eq!(normalize_path(p), Err(PathError::Ambiguous), "{p}");
        }
        assert_eq!(normalize_path("acme"), Err(PathError::NotAbsolute));
    }

    fn table(claims: &[(&str, TenantIdx)]) -> PathTable {
        let mut t = PathTable::default();
        for (c, idx) in claims {
            let (h, p) = split_claim(c).expect("claim");
            assert_eq!(t.claim(h, p, *idx), None);
        }
        t
    }

    #[test]
    fn the_longest_whole_segment_prefix_wins() {
        let t = table(&[
            ("app.example/acme", 1),
            ("app.example/acme/eu", 2),
            ("app.example/globex", 3),
        ]);
        assert_eq!(t.lookup("app.example", "/acme"), Some((1, 5)));
        assert_eq!(t.lookup("app.example", "/acme/"), Some((1, 5)));
        assert_eq!(t.lookup("app.example", "/acme/x/y"), Some((1, 5)));
        assert_eq!(t.lookup("app.example", "/acme/eu"), Some((2, 8)));
        assert_eq!(t.lookup("app.example", "/acme/eu/x"), Some((2, 8)));
        assert_eq!(t.lookup("app.example", "/acme/eux"), Some((1, 5)));
        assert_eq!(t.lookup("app.example", "/acmex"), None);
        assert_eq!(t.lookup("app.example", "/ACME"), None);
        assert_eq!(t.lookup("app.example", "/"), None);
        assert_eq!(t.lookup("other.example", "/acme"), None);
    }

    #[test]
    fn claimed_prefixes_must_be_canonical() {
        for ok in ["/acme", "/eu/acme", "/a-b_c~d"] {
            assert!(canonical_prefix(ok), "{ok}");
        }
        for bad in ["/", "/acme/", "/%61cme", "/a/../b", "//a", "/a%2fb", "acme"] {
            assert!(!canonical_prefix(bad), "{bad}");
        }
    }
}
