//! Answers the gateway gives itself, without a backend.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// A complete plain-text response. With `close`, the connection is not
/// kept alive (used after a malformed request).
pub async fn plain(session: &mut Session, status: u16, body: impl Into<Bytes>, close: bool) -> Result<()> {
    send(session, status, body.into(), None, close).await
}

/// A limit refusal (429, or 503 for a fail-closed store outage) with
/// `Retry-After`, the rate-limit policy and an RFC 9457 body.
pub async fn limited(
    session: &mut Session,
    refusal: &crate::limits::Refusal,
    policy: Option<&http::HeaderValue>,
    problem: String,
) -> Result<()> {
    let mut resp = ResponseHeader::build(refusal.status(), Some(5))?;
    resp.insert_header(CONTENT_TYPE, "application/problem+json")?;
    resp.insert_header(CONTENT_LENGTH, problem.len())?;
    resp.insert_header(http::header::RETRY_AFTER, refusal.retry_after)?;
    if let Some(p) = policy {
        resp.insert_header("ratelimit-policy", p.clone())?;
    }
    write(session, resp, Bytes::from(problem)).await
}

/// A 308 to `location`.
pub async fn redirect(session: &mut Session, location: &str) -> Result<()> {
    send(
        session,
        308,
        Bytes::from_static(b"308 Permanent Redirect: use HTTPS\n"),
        Some(location),
        false,
    )
    .await
}

async fn send(session: &mut Session, status: u16, body: Bytes, location: Option<&str>, close: bool) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(CONTENT_LENGTH, body.len())?;
    if let Some(l) = location {
        resp.insert_header(LOCATION, l)?;
    }
    if close {
        resp.insert_header(CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    write(session, resp, body).await
}

/// Writes a whole response. A failure here means the client went away (or
/// reset the stream), so it is marked as the downstream's: the proxy keeps it
/// out of the error log.
async fn write(session: &mut Session, resp: ResponseHeader, body: Bytes) -> Result<()> {
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(|e| e.into_down())?;
    session
        .write_response_body(Some(body), true)
        .await
        .map_err(|e| e.into_down())
}
