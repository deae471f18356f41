//! The policy's profile checks, in order, for a routed request (see
//! [`super::policy`]): a tenant of another region than `[gateway] region`
//! (421), `tenant.json` (answered by the gateway), a path gated by a
//! feature the tenant lacks (404), maintenance of the tenant or its pool
//! (503 with `Retry-After`, unless the client is on the allow-list).

use std::borrow::Cow;

use http::HeaderValue;

use super::pages::{retry_after, Branded};
use super::policy::{Answer, Outcome, Policy, RequestFacts};
use crate::config::pages::Page;
use crate::config::profile::ProfileSettings;
use crate::config::{PoolSpec, TenantSpec};
use crate::registry::{Snapshot, Tenant};
use crate::telemetry::Rejection;

const OTHER_REGION_BODY: &str = "421 Misdirected Request: this tenant is served in another region\n";

impl Policy {
    /// The profile's answer to a routed request, if it has one.
    pub(super) fn profile_answer(
        &self,
        snap: &Snapshot,
        tenant: &Tenant,
        spec: &TenantSpec,
        branded: &Branded<'_>,
        req: &RequestFacts<'_>,
        o: &mut Outcome<'_>,
    ) -> Option<Answer> {
        let settings = &snap.config.profile;
        let gw = &snap.config.gateway;
        if let (Some(here), Some(theirs)) = (&gw.region, &spec.profile.region) {
            if gw.refuse_other_regions && here != theirs {
                return Some(self.refuse(Rejection::OtherRegion, OTHER_REGION_BODY, o));
            }
        }
        let path = req.target.split('?').next().unwrap_or(req.target);
        if settings.tenant_json_path.as_deref() == Some(path) {
            return Some(tenant_json(tenant, settings, req));
        }
        if tenant.edge.missing != 0 && gated(settings, tenant.edge.missing, path) {
            self.count(Rejection::FeatureOff, o);
            return Some(feature_off());
        }
        let pool = snap.config.pools.get(spec.pool as usize);
        let maintenance = spec
            .maintenance
            .as_ref()
            .or_else(|| pool.and_then(|p: &PoolSpec| p.maintenance.as_ref()))?;
        let secs = maintenance.active(jiff::Timestamp::now())?;
        if settings.allowed(req.conn.peer.map(|p| p.ip())) {
            return None;
        }
        self.count(Rejection::Maintenance, o);
        Some(branded.answer(Page::Maintenance, in_maintenance(secs), Some(secs)))
    }

    fn count(&self, r: Rejection, o: &mut Outcome<'_>) {
        self.metrics.reject(r);
        o.rejection = Some(r);
    }
}

/// `GET` or `HEAD` of the public profile: 200 with a strong ETag, or 304
/// when `If-None-Match` names it; other methods 405.
fn tenant_json(tenant: &Tenant, settings: &ProfileSettings, req: &RequestFacts<'_>) -> Answer {
    if req.method != "GET" && req.method != "HEAD" {
        let mut a = Answer::text(405, "405 Method Not Allowed: GET or HEAD\n", false);
        a.headers.push(("allow", HeaderValue::from_static("GET, HEAD")));
        return a;
    }
    let edge = &tenant.edge;
    let cache = format!("public, max-age={}", settings.tenant_json_max_age);
    let headers = vec![
        ("etag", edge.etag.clone()),
        (
            "cache-control",
            HeaderValue::from_str(&cache).unwrap_or(HeaderValue::from_static("no-cache")),
        ),
    ];
    let fresh = req
        .prefs
        .if_none_match
        .is_some_and(|v| matches(v, edge.etag.as_bytes()));
    Answer {
        status: if fresh { 304 } else { 200 },
        content_type: "application/json",
        body: if fresh { bytes::Bytes::new() } else { edge.json.clone() },
        headers,
        close: false,
    }
}

/// Whether `If-None-Match` names `etag` (weak comparison, `*` for any).
fn matches(if_none_match: &[u8], etag: &[u8]) -> bool {
    super::headers::tokens(if_none_match).any(|t| t == b"*" || t.strip_prefix(b"W/").unwrap_or(t) == etag)
}

/// Whether `path` is under a prefix of a gated feature set in `missing`.
fn gated(settings: &ProfileSettings, missing: u64, path: &str) -> bool {
    let path = normalize(path);
    settings
        .gated
        .iter()
        .enumerate()
        .filter(|(i, _)| missing & (1u64 << i) != 0)
        .any(|(_, (_, prefixes))| prefixes.iter().any(|p| under(&path, p)))
}

/// `path` is `prefix`, or below it (a `/` follows, or the prefix ends in one).
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// The path a backend would see: percent-decoded, `//` collapsed, `.` and
/// `..` segments resolved, so that `/%62eta`, `//beta` or `/x/../beta`
/// cannot slip past a gate on `/beta`.
fn normalize(path: &str) -> Cow<'_, str> {
    if !path.contains('%') && !path.contains("//") && !path.contains("/.") {
        return Cow::Borrowed(path);
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || decoded.ends_with('/') {
        out.push('/');
    }
    Cow::Owned(out)
}

fn feature_off() -> Answer {
    let body = serde_json::json!({
        "type": "tag:tenantgate,2026:feature-off",
        "title": "Not Found",
        "status": 404,
        "detail": "this path needs a feature the tenant does not have",
    });
    Answer {
        status: 404,
        content_type: "application/problem+json",
        body: body.to_string().into(),
        headers: Vec::new(),
        close: false,
    }
}

fn in_maintenance(secs: u32) -> Answer {
    let body = serde_json::json!({
        "type": "tag:tenantgate,2026:maintenance",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "the service is down for maintenance",
        "retry_after": secs,
    });
    Answer {
        status: 503,
        content_type: "application/problem+json",
        body: body.to_string().into(),
        headers: vec![("retry-after", retry_after(secs))],
        close: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gated_prefixes_see_through_encodings_and_dot_segments() {
        for p in ["/beta", "/beta/x", "/%62eta/x", "//beta/x", "/x/../beta/y", "/./beta"] {
            assert!(under(&normalize(p), "/beta"), "{p}");
        }
        for p in ["/betamax", "/alpha/beta", "/"] {
            assert!(!under(&normalize(p), "/beta"), "{p}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists() {
        let tag = b"\"abc\"";
        assert!(matches(b"\"abc\"", tag));
        assert!(matches(b"W/\"abc\"", tag));
        assert!(matches(b"\"x\", \"abc\"", tag));
        assert!(matches(b"*", tag));
        assert!(!matches(b"\"abd\"", tag));
    }
}
