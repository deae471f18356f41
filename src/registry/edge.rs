//! A tenant's edge profile, precomputed when a snapshot is built, so that
//! a request only looks it up: the `tenant.json` body and its strong ETag,
//! the trusted profile headers, the gated features it lacks, and its
//! region's request counter.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use prometheus::IntCounter;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::profile::{header_text, Profile, ProfileSettings};
use crate::config::TenantSpec;
use crate::telemetry::Metrics;

/// What the request path needs of a tenant's profile.
#[derive(Debug)]
pub struct Edge {
    /// `GET /.well-known/tenant.json`: the public profile.
    pub json: Bytes,
    /// Strong ETag of `json`.
    pub etag: HeaderValue,
    /// The trusted profile headers the backend gets, in config order.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// Bit `i` set: the tenant lacks `ProfileSettings::gated[i]`.
    pub missing: u64,
    /// `tenantgate_region_requests_total{region}`, for a tenant with a region.
    pub region_requests: Option<IntCounter>,
}

impl Edge {
    /// The edge profile of `spec`.
    pub fn build(spec: &TenantSpec, settings: &ProfileSettings, metrics: &Metrics) -> Edge {
        let p = &spec.profile;
        let json = Bytes::from(public_json(&spec.id, p));
        let digest = Sha256::digest(&json);
        let mut tag = String::with_capacity(34);
        tag.push('"');
        for b in &digest[..16] {
            tag.push_str(&format!("{b:02x}"));
        }
        tag.push('"');
        let headers = settings
            .headers
            .iter()
            .filter_map(|(what, name)| {
                // Values are validated printable ASCII; one that is not is left out.
                let v = header_text(p, *what)?;
                Some((name.clone(), HeaderValue::from_str(&v).ok()?))
            })
            .collect();
        Edge {
            json,
            etag: HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\"")),
            headers,
            missing: settings.missing(p),
            region_requests: p.region.as_deref().map(|r| metrics.region(r)),
        }
    }
}

/// The public profile: branding, enabled features and locale (never
/// labels, limits, region or maintenance).
pub fn public_json(id: &str, p: &Profile) -> Vec<u8> {
    let mut branding = Map::new();
    for (k, v) in [
        ("name", &p.branding.name),
        ("primary_color", &p.branding.primary_color),
        ("secondary_color", &p.branding.secondary_color),
        ("logo_url", &p.branding.logo_url),
        ("favicon_url", &p.branding.favicon_url),
    ] {
        if let Some(v) = v {
            branding.insert(k.into(), Value::String(v.clone()));
        }
    }
    let mut locale = Map::new();
    for (k, v) in [
        ("language", &p.locale.language),
        ("timezone", &p.locale.timezone),
        ("currency", &p.locale.currency),
        ("date_format", &p.locale.date_format),
    ] {
        if let Some(v) = v {
            locale.insert(k.into(), Value::String(v.clone()));
        }
    }
    let v = json!({
        "tenant": id,
        "branding": branding,
        "features": p.features,
        "locale": locale,
    });
    serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec())
}
