//! RFC 9457 problem details: every error the admin API returns.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

/// An admin API response body.
pub type Body = Full<Bytes>;

/// An error answer: status, a stable type, and details safe to show a client.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// The last part of the type URI: `tag:tenantgate,2026:<kind>`.
    pub kind: &'static str,
    pub detail: String,
    /// Extra members (`errors`, `owner`, …).
    pub extra: Vec<(&'static str, Value)>,
    /// Already in the audit log (refused by a write itself).
    pub audited: bool,
    /// Headers of the answer (`Allow`, `Retry-After`, …).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
            extra: Vec::new(),
            audited: false,
            headers: Vec::new(),
        }
    }

    /// Adds a header to the answer.
    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Problem {
        self.headers.push((name, value));
        self
    }

    /// Adds a member to the body.
    pub fn with(mut self, key: &'static str, value: Value) -> Problem {
        self.extra.push((key, value));
        self
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid token as Authorization: Bearer <token>",
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn internal() -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the change could not be saved; nothing was applied (see the gateway log)",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut v = json!({
            "type": format!("tag:tenantgate,2026:{}", self.kind),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        for (k, x) in &self.extra {
            v[*k] = x.clone();
        }
        v
    }

    pub fn response(&self) -> Response<Body> {
        let mut resp = json_response(self.status, &self.body());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (k, v) in &self.headers {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    json_bytes(status, body.to_string().into_bytes())
}

/// A JSON response of bytes already serialised.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
