//! The operator console: a static single-page app served on the admin
//! listener under `/console/`, built into the binary (`include_str!`), with
//! no framework and nothing fetched from elsewhere. It acts only through
//! the admin API with the token the operator signs in with (kept in the
//! tab's `sessionStorage`, sent as `Authorization: Bearer` by script: no
//! cookie, so a cross-site form cannot act).
//!
//! Every answer of this module carries the same strict headers
//! ([`SECURITY_HEADERS`]): a Content-Security-Policy allowing only this
//! origin's scripts and styles (no inline code), no framing, `nosniff`.
//! It never reads live state: the page's data comes from `/v1/...`.

use http::{header, HeaderValue, Method, Response, StatusCode};

/// The prefix the console is served under.
pub const PREFIX: &str = "/console";

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// Headers on every console answer, assets, redirects and errors alike.
pub const SECURITY_HEADERS: [(&str, &str); 7] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=()",
    ),
];

/// One built-in file: path under `/console/`, media type, body.
struct Asset {
    path: &'static str,
    media_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/console/",
        media_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    },
    Asset {
        path: "/console/console.css",
        media_type: "text/css; charset=utf-8",
        body: include_str!("assets/console.css"),
    },
    Asset {
        path: "/console/console.js",
        media_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/console.js"),
    },
    Asset {
        path: "/console/chart.js",
        media_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/chart.js"),
    },
];

/// Whether `path` is the console's (`/console` or under `/console/`).
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/console/")
}

/// The answer to a request for a console path: status, headers and body.
/// `path` must be one [`owns`].
pub fn answer(method: &Method, path: &str) -> Response<bytes::Bytes> {
    let (status, media_type, body, extra) = match (method, path) {
        (&Method::GET | &Method::HEAD, PREFIX) => (
            StatusCode::PERMANENT_REDIRECT,
            "text/plain; charset=utf-8",
            "see /console/\n",
            Some((header::LOCATION, "/console/")),
        ),
        (&Method::GET | &Method::HEAD, _) => match ASSETS.iter().find(|a| a.path == path) {
            Some(a) => (StatusCode::OK, a.media_type, a.body, None),
            None => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "no such console page; open /console/\n",
                None,
            ),
        },
        (&Method::OPTIONS, _) => (
            StatusCode::NO_CONTENT,
            "text/plain; charset=utf-8",
            "",
            Some((header::ALLOW, "GET, HEAD, OPTIONS")),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "the console is read with GET; it acts through /v1/\n",
            Some((header::ALLOW, "GET, HEAD, OPTIONS")),
        ),
    };
    let body = if *method == Method::HEAD {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::from_static(body.as_bytes())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    // Small and built in: revalidated each time, so an upgrade shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Some((name, value)) = extra {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_carries_the_security_headers() {
        let paths = [
            "/console",
            "/console/",
            "/console/console.js",
            "/console/nope",
            "/console/../x",
        ];
        for m in [Method::GET, Method::HEAD, Method::POST, Method::OPTIONS, Method::DELETE] {
            for p in paths {
                let r = answer(&m, p);
                for (name, value) in SECURITY_HEADERS {
                    assert_eq!(
                        r.headers().get(name).map(|v| v.as_bytes()),
                        Some(value.as_bytes()),
                        "{m} {p} {name}"
                    );
                }
            }
        }
    }

    /// Whether `html` has an inline event handler attribute (` onclick=` …).
    fn has_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn no_asset_holds_inline_script_or_style_or_a_foreign_url() {
        assert!(has_handler("<a onclick=\"x\">"), "the check finds a handler");
        for a in ASSETS {
            assert!(!a.body.contains("innerHTML"), "{} uses innerHTML", a.path);
            assert!(!a.body.contains("eval("), "{} uses eval", a.path);
            // The SVG namespace is a name, not a fetch.
            let body = a.body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{} names another origin",
                a.path
            );
            if a.path == "/console/" {
                assert!(!a.body.contains("<script>"), "inline script");
                assert!(!a.body.contains("style="), "inline style");
                assert!(!a.body.contains("<style"), "inline style element");
                assert!(!has_handler(a.body), "inline event handler");
            }
        }
    }
}
