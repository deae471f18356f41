//! Host-name normalisation, shared by config validation and the request path.
//!
//! One function, [`normalize`], decides what a name is: lowercase, one trailing
//! dot removed, IDNA UTS-46 to punycode, STD3 characters only, DNS lengths
//! checked, IP literals refused. Config names and request hosts go through the
//! same code, so a name that matches in `check` matches on the wire.

use std::borrow::Cow;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Longest name allowed, in bytes of its ASCII form (RFC 1035, without the root dot).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label allowed.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name is not an acceptable host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing left after trimming.
    #[error("the name is empty")]
    Empty,
    /// A `host:port` where only a name is allowed.
    #[error("a port is not allowed here")]
    Port,
    /// A `/`, `?` or `#`: a URL was given where a name is expected.
    #[error("a path is not allowed in a host name")]
    Path,
    /// An IPv4 or IPv6 literal.
    #[error("an IP address is not a host name")]
    IpAddress,
    /// More than [`MAX_NAME_LEN`] bytes once in ASCII form.
    #[error("the name is longer than 253 characters")]
    TooLong,
    /// An empty label (`a..b`) or a label over 63 bytes.
    #[error("a label is empty or longer than 63 characters")]
    BadLabel,
    /// A character outside letters, digits and hyphens, a misplaced hyphen,
    /// or a Unicode name that IDNA (UTS-46) refuses.
    #[error("the name has invalid characters or fails IDNA (UTS-46) rules")]
    InvalidCharacters,
}

/// Normalises a bare host name (no port): lowercase, one trailing dot removed,
/// IDNA UTS-46 to punycode.
///
/// Borrows the input when it is already in normal form, which is the common
/// case on the request path, so no allocation happens there.
pub fn normalize(name: &str) -> Result<Cow<'_, str>, HostError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if already_normal(name.as_bytes()) {
        return Ok(Cow::Borrowed(name));
    }
    normalize_stripped(name)
}

/// Every rule, one after the other, on a name whose trailing dot is gone.
fn normalize_stripped(name: &str) -> Result<Cow<'_, str>, HostError> {
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.starts_with('[') {
        return Err(HostError::IpAddress);
    }
    if name.bytes().any(|b| matches!(b, b'/' | b'?' | b'#')) {
        return Err(HostError::Path);
    }
    if name.contains(':') {
        // IPv4 literals are refused by `check_shape` (numeric last label).
        return Err(match name.parse::<std::net::Ipv6Addr>() {
            Ok(_) => HostError::IpAddress,
            Err(_) => HostError::Port,
        });
    }
    let ascii = match plain_ldh(name.as_bytes()) {
        Plain::Lower => Cow::Borrowed(name),
        Plain::Upper => Cow::Owned(name.to_ascii_lowercase()),
        Plain::No => Cow::Owned(idna_to_ascii(name)?),
    };
    check_shape(&ascii)?;
    Ok(ascii)
}

/// Whether `name` is already a normal name, in one pass: lowercase letters,
/// digits, hyphens and dots; labels of 1 to 63 bytes, no hyphen at either
/// end, no `xn--` prefix (punycode takes the full IDNA check); at most 253
/// bytes; a last label that is not all digits. Exactly the names the full
/// path would return unchanged, so the result is the same in less than half
/// the time (the common case on the request path).
fn already_normal(name: &[u8]) -> bool {
    fn label_ok(l: &[u8]) -> bool {
        !l.is_empty() && l.len() <= MAX_LABEL_LEN && l[0] != b'-' && l[l.len() - 1] != b'-' && !l.starts_with(b"xn--")
    }
    if name.len() > MAX_NAME_LEN {
        return false;
    }
    let mut start = 0;
    let mut digits_only = true;
    for (i, &b) in name.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'-' => digits_only = false,
            b'0'..=b'9' => {}
            b'.' => {
                if !label_ok(&name[start..i]) {
                    return false;
                }
                start = i + 1;
                digits_only = true;
            }
            _ => return false,
        }
    }
    label_ok(&name[start..]) && !digits_only
}

/// Splits an HTTP authority (`host[:port]`) and normalises the host part.
/// The port, if any, must be digits and is ignored for matching.
pub fn normalize_authority(authority: &str) -> Result<Cow<'_, str>, HostError> {
    if authority.starts_with('[') {
        return Err(HostError::IpAddress);
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HostError::Port);
            }
            host
        }
        None => authority,
    };
    if host.bytes().any(|b| b == b'@') {
        return Err(HostError::InvalidCharacters);
    }
    normalize(host)
}

/// The name one label up: `a.b.c` → `b.c`. `None` for a single label.
pub fn parent(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
}

enum Plain {
    Lower,
    Upper,
    No,
}

/// Whether `name` is plain letters-digits-hyphens ASCII that UTS-46 would
/// only lowercase. Labels starting with `xn--` take the full IDNA path so that
/// punycode is validated.
fn plain_ldh(name: &[u8]) -> Plain {
    let mut upper = false;
    let mut label_start = true;
    for (i, &b) in name.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => {}
            b'A'..=b'Z' => upper = true,
            _ => return Plain::No,
        }
        if label_start && name[i..].len() >= 4 && name[i..i + 4].eq_ignore_ascii_case(b"xn--") {
            return Plain::No;
        }
        label_start = b == b'.';
    }
    if upper {
        Plain::Upper
    } else {
        Plain::Lower
    }
}

fn idna_to_ascii(name: &str) -> Result<String, HostError> {
    Uts46::new()
        .to_ascii(
            name.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Ignore,
        )
        .map(Cow::into_owned)
        .map_err(|_| HostError::InvalidCharacters)
}

/// Length, label and hyphen rules on the ASCII form, and a last refusal of
/// names whose final label is numeric (they parse as IPv4 in browsers).
fn check_shape(ascii: &str) -> Result<(), HostError> {
    if ascii.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    let mut last = "";
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(HostError::BadLabel);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::InvalidCharacters);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::IpAddress);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        normalize(s).map(Cow::into_owned).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn spellings_of_one_name_normalise_alike() {
        for s in ["app.acme.com", "APP.Acme.COM", "app.acme.com.", "App.ACME.com."] {
            assert_eq!(ok(s), "app.acme.com");
        }
        assert_eq!(ok("bücher.example"), "xn--bcher-kva.example");
        assert_eq!(ok("BÜCHER.example."), "xn--bcher-kva.example");
        assert_eq!(ok("xn--bcher-kva.example"), "xn--bcher-kva.example");
        assert_eq!(ok("XN--BCHER-KVA.example"), "xn--bcher-kva.example");
    }

    #[test]
    fn plain_names_borrow() {
        assert!(matches!(normalize("a.b.example"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        let cases: &[(&str, HostError)] = &[
            ("", HostError::Empty),
            (".", HostError::Empty),
            ("a.com:80", HostError::Port),
            ("a.com/x", HostError::Path),
            ("127.0.0.1", HostError::IpAddress),
            ("[::1]", HostError::IpAddress),
            ("::1", HostError::IpAddress),
            ("a.123", HostError::IpAddress),
            ("a..com", HostError::BadLabel),
            ("a.com..", HostError::BadLabel),
            (".a.com", HostError::BadLabel),
            ("-a.com", HostError::InvalidCharacters),
            ("a_b.com", HostError::InvalidCharacters),
            ("a b.com", HostError::InvalidCharacters),
            ("a*.com", HostError::InvalidCharacters),
            ("xn--zz.com", HostError::InvalidCharacters),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize(input).as_ref().map_err(Clone::clone),
                Err(want.clone()),
                "{input:?}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert_eq!(normalize(&long_label), Err(HostError::BadLabel));
        let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert_eq!(normalize(&long_name), Err(HostError::TooLong));
    }

    #[test]
    fn authority_port_is_ignored_but_must_be_numeric() {
        assert_eq!(
            normalize_authority("App.Acme.com:8080").map(Cow::into_owned),
            Ok("app.acme.com".into())
        );
        assert_eq!(normalize_authority("app.acme.com"), Ok(Cow::Borrowed("app.acme.com")));
        assert_eq!(normalize_authority("app.acme.com:"), Err(HostError::Port));
        assert_eq!(normalize_authority("app.acme.com:8x"), Err(HostError::Port));
        assert_eq!(
            normalize_authority("user@app.acme.com"),
            Err(HostError::InvalidCharacters)
        );
        assert_eq!(normalize_authority("[::1]:80"), Err(HostError::IpAddress));
        assert_eq!(normalize_authority("10.0.0.1:80"), Err(HostError::IpAddress));
    }

    #[test]
    fn one_pass_check_agrees_with_the_full_rules() {
        let long_label = format!("{}.com", "a".repeat(63));
        let too_long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}.com", vec!["a".repeat(62); 4].join("."));
        let mut samples = vec![
            "t00001.example.test",
            "a",
            "a.b",
            "a-b.c",
            "a--b.c",
            "-a.c",
            "a-.c",
            "a.-c",
            "a.c-",
            "a..c",
            ".a",
            "a.",
            "",
            "1.2.3.4",
            "a.123",
            "a.1-2",
            "123.a",
            "xn--bcher-kva.example",
            "a.xn--zz",
            "axn--b.c",
            "A.b",
            "a_b.c",
            "a b",
            "a:80",
            "a/b",
            "[::1]",
            "ü.example",
            &long_label,
            &too_long_label,
            &long_name,
        ];
        let longer = format!("a{long_name}");
        samples.push(&longer);
        for s in samples {
            if already_normal(s.as_bytes()) {
                assert_eq!(normalize_stripped(s), Ok(Cow::Borrowed(s)), "{s:?}");
            } else {
                assert!(
                    !matches!(normalize_stripped(s), Ok(Cow::Borrowed(n)) if n == s),
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn fast_path_agrees_with_idna() {
        let samples = [
            "abc.example",
            "a-b.c-d.example",
            "ab--cd.example",
            "x1.y2.z3",
            "Mixed.Case.Example",
        ];
        for s in samples {
            let full = idna_to_ascii(s).map_err(|_| HostError::InvalidCharacters);
            assert_eq!(normalize(s).map(Cow::into_owned), full, "{s}");
        }
    }
}
