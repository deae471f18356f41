//! `Idempotency-Key` on writes (draft-ietf-httpapi-idempotency-key-header):
//! a retried write with the same key and the same request gets the first
//! answer again (`Idempotent-Replayed: true`), so a batch that already
//! applied is told apart from a real conflict. Keys are per token, method
//! and path; the same key with another body is 409 (as while the first is
//! still running).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::problem::{Body, Problem};

/// Keys remembered at most; the oldest go first.
const MAX_KEYS: usize = 10_000;
/// How long an answer is kept for replay.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Longest key accepted.
const MAX_KEY_LEN: usize = 255;
/// Answers bigger than this (a 100,000-tenant import's diff) are not kept:
/// a retry runs again (an unchanged import is a no-op).
const MAX_KEPT_BODY: usize = 1 << 20;

/// Answers by ("<token name> <METHOD> <path>", key).
#[derive(Default)]
pub struct Keys {
    map: Mutex<HashMap<(String, String), Slot>>,
}

struct Slot {
    fingerprint: [u8; 32],
    at: Instant,
    /// `None` while the first request is running.
    answer: Option<(StatusCode, HeaderMap, Bytes)>,
}

/// What to do with a keyed write.
pub enum Claim {
    /// Run it, then [`Keys::finish`] with the key.
    Run((String, String)),
    /// The first answer, to send again.
    Replay(Response<Body>),
}

/// The `Idempotency-Key` of a request, if any; 400 if it is not a short
/// printable string.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.trim().is_empty() && k.len() <= MAX_KEY_LEN => Ok(Some(k.trim().to_string())),
        _ => Err(Problem::bad_request(
            "Idempotency-Key must be 1 to 255 printable characters",
        )),
    }
}

/// The request's fingerprint: method, path and query, and body.
pub fn fingerprint(request: &str, query: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(request.as_bytes());
    h.update([0]);
    h.update(query.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

impl Keys {
    /// Claims `key` of token `who` for `request` (method and path) with a
    /// body of `fingerprint`.
    pub fn claim(&self, who: &str, request: &str, key: String, fingerprint: [u8; 32]) -> Result<Claim, Problem> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let id = (format!("{who} {request}"), key);
        if let Some(slot) = map.get(&id).filter(|s| now.duration_since(s.at) < KEEP) {
            if slot.fingerprint != fingerprint {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency-key-reused",
                    "this Idempotency-Key was used for this method and path with another body; use a new key",
                ));
            }
            return match &slot.answer {
                None => Err(Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency-key-in-use",
                    "a request with this Idempotency-Key is still running; retry once it has answered",
                )),
                Some((status, headers, body)) => {
                    let mut resp = Response::new(Body::new(body.clone()));
                    *resp.status_mut() = *status;
                    *resp.headers_mut() = headers.clone();
                    resp.headers_mut().insert(
                        HeaderName::from_static("idempotent-replayed"),
                        HeaderValue::from_static("true"),
                    );
                    Ok(Claim::Replay(resp))
                }
            };
        }
        if map.len() >= MAX_KEYS {
            map.retain(|_, s| now.duration_since(s.at) < KEEP);
            if map.len() >= MAX_KEYS {
                if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.at).map(|(k, _)| k.clone()) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(
            id.clone(),
            Slot {
                fingerprint,
                at: now,
                answer: None,
            },
        );
        Ok(Claim::Run(id))
    }

    /// Keeps the answer of a claimed key; an answer worth retrying (5xx,
    /// 408, 429), or too big to keep, frees the key instead.
    pub fn finish(&self, id: (String, String), status: StatusCode, headers: &HeaderMap, body: &Bytes) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let retry = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        if retry || body.len() > MAX_KEPT_BODY {
            map.remove(&id);
        } else if let Some(slot) = map.get_mut(&id) {
            slot.answer = Some((status, headers.clone(), body.clone()));
        }
    }

    /// Frees a claimed key whose request did not finish.
    pub fn abandon(&self, id: &(String, String)) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_some_and(|s| s.answer.is_none()) {
            map.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_the_same_request_and_refuses_another() {
        let keys = Keys::default();
        let r = "POST /v1/changes";
        let f = fingerprint(r, "", b"{}");
        let Ok(Claim::Run(id)) = keys.claim("ops", r, "k".into(), f) else {
            panic!("first claim")
        };
        assert!(matches!(keys.claim("ops", r, "k".into(), f), Err(p) if p.status == StatusCode::CONFLICT));
        keys.finish(
            id,
            StatusCode::OK,
            &HeaderMap::new(),
            &Bytes::from_static(b"{\"ok\":1}"),
        );
        assert!(matches!(keys.claim("ops", r, "k".into(), f), Ok(Claim::Replay(r)) if r.status() == StatusCode::OK));
        let other = fingerprint(r, "", b"{\"x\":1}");
        assert!(matches!(keys.claim("ops", r, "k".into(), other), Err(p) if p.kind == "idempotency-key-reused"));
        // Keys are per token, and per method and path.
        assert!(matches!(keys.claim("other", r, "k".into(), other), Ok(Claim::Run(_))));
        let put = "PUT /v1/tenants/a";
        assert!(matches!(
            keys.claim("ops", put, "k".into(), fingerprint(put, "", b"{}")),
            Ok(Claim::Run(_))
        ));
    }
}
