//! Per-token request limits: a token bucket and a cap on requests in
//! progress, so that one token (a tenant's, by default limited) cannot
//! queue work in front of everyone else's writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{header, HeaderName, HeaderValue, StatusCode};

use super::problem::Problem;
use crate::config::TokenLimits;

/// Limiter state by token name.
#[derive(Debug, Default)]
pub struct TokenLimiter {
    states: Mutex<HashMap<String, Arc<State>>>,
}

#[derive(Debug)]
struct State {
    /// Tokens left in the bucket, and when it was last filled.
    bucket: Mutex<(f64, Instant)>,
    in_flight: AtomicU32,
}

/// A request in progress; frees its slot when dropped.
#[derive(Debug)]
pub struct InFlight(Option<Arc<State>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl TokenLimiter {
    /// Admits one request of token `name`, or refuses it with a 429 that
    /// says when to retry (`Retry-After`, `RateLimit-Policy`, `RateLimit`).
    pub fn admit(&self, name: &str, limits: TokenLimits) -> Result<InFlight, Problem> {
        if limits.rate.is_none() && limits.max_concurrent.is_none() {
            return Ok(InFlight(None));
        }
        let state = {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            states
                .entry(name.to_string())
                .or_insert_with(|| {
                    Arc::new(State {
                        bucket: Mutex::new((f64::from(limits.rate.map_or(0, |r| r.1)), Instant::now())),
                        in_flight: AtomicU32::new(0),
                    })
                })
                .clone()
        };
        if let Some(max) = limits.max_concurrent {
            let before = state.in_flight.fetch_add(1, Ordering::AcqRel);
            if before >= max {
                state.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(refusal("concurrency", 1, &limits));
            }
        } else {
            state.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        let slot = InFlight(Some(state.clone()));
        if let Some((rate, burst)) = limits.rate {
            let mut b = state.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let (rate, burst) = (f64::from(rate), f64::from(burst));
            let filled = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(burst);
            if filled < 1.0 {
                *b = (filled, now);
                let wait = ((1.0 - filled) / rate).ceil().max(1.0) as u64;
                return Err(refusal("burst", wait, &limits));
            }
            *b = (filled - 1.0, now);
        }
        Ok(slot)
    }
}

/// 429 `rate-limited`: `Retry-After`, the token's `RateLimit-Policy` and
/// a `RateLimit` with nothing remaining and the seconds to wait.
fn refusal(policy: &str, retry_after: u64, limits: &TokenLimits) -> Problem {
    let mut items = Vec::new();
    if let Some((r, b)) = limits.rate {
        items.push(format!("\"burst\";q={b};w={}", b.div_ceil(r.max(1)).max(1)));
    }
    if let Some(c) = limits.max_concurrent {
        items.push(format!("\"concurrency\";q={c};qu=\"concurrent-requests\""));
    }
    let mut p = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!("this token is over its {policy} limit; retry in {retry_after} s"),
    )
    .with("policy", serde_json::json!(policy))
    .header(header::RETRY_AFTER, HeaderValue::from(retry_after));
    if let Ok(v) = HeaderValue::from_str(&items.join(", ")) {
        p = p.header(HeaderName::from_static("ratelimit-policy"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{policy}\";r=0;t={retry_after}")) {
        p = p.header(HeaderName::from_static("ratelimit"), v);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gets_its_burst_then_429_with_ratelimit_fields() {
        let l = TokenLimiter::default();
        let limits = TokenLimits {
            rate: Some((1, 3)),
            max_concurrent: None,
        };
        for _ in 0..3 {
            assert!(l.admit("t", limits).is_ok());
        }
        let p = l.admit("t", limits).expect_err("over the burst");
        assert_eq!(p.status, StatusCode::TOO_MANY_REQUESTS);
        let h: HashMap<_, _> = p.headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["ratelimit"], "\"burst\";r=0;t=1");
        assert_eq!(h["ratelimit-policy"], "\"burst\";q=3;w=3");
        // Another token is not affected.
        assert!(l.admit("u", limits).is_ok());
        assert!(l.admit("op", TokenLimits::default()).is_ok());
    }

    #[test]
    fn concurrency_frees_its_slot_when_the_request_ends() {
        let l = TokenLimiter::default();
        let limits = TokenLimits {
            rate: None,
            max_concurrent: Some(1),
        };
        let first = l.admit("t", limits).expect("first");
        assert!(l.admit("t", limits).is_err());
        drop(first);
        assert!(l.admit("t", limits).is_ok());
    }
}
