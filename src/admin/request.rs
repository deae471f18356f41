//! What a request asks for, read strictly: its route (percent-decoded path
//! segments) and the methods the route allows, its query (decoded, each
//! value checked), its body's media type, and JSON without duplicate keys.

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use percent_encoding::percent_decode_str;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::problem::Problem;

/// A known resource, its path segments decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    OpenApi,
    Tenants,
    Tenant(String),
    /// `/v1/tenants/{id}/domains/{name}`.
    TenantDomain(String, String),
    Domain(String),
    /// `POST /v1/domains/{name}/verify`.
    DomainVerify(String),
    /// `GET /v1/domains/{name}/check`.
    DomainCheck(String),
    /// `POST /v1/domains/{name}/retry`.
    DomainRetry(String),
    Events,
    Templates,
    Template(String),
    Rollouts,
    Rollout(String),
    /// `POST /v1/rollouts/{name}/promote`.
    RolloutPromote(String),
    /// `POST /v1/rollouts/{name}/rollback`.
    RolloutRollback(String),
    /// `POST /v1/rollouts/{name}/complete`.
    RolloutComplete(String),
    Changes,
    Preview,
    Audit,
    Versions,
    Rollback(String),
    Export,
    Import,
    /// `GET /v1/session`: who the token is.
    Session,
    /// `GET /v1/stats/top`.
    StatsTop,
    /// `GET /v1/stats/overview`.
    StatsOverview,
    /// `GET /v1/stats/series`.
    StatsSeries,
    /// `GET /v1/stats/domains`.
    StatsDomains,
    /// `GET /v1/stats/pools`.
    StatsPools,
    /// `GET /v1/stats/replicas`.
    StatsReplicas,
    /// `GET /v1/tenants/{id}/usage`.
    TenantUsage(String),
    Pools,
    Pool(String),
}

const READ: &[Method] = &[Method::GET, Method::HEAD, Method::OPTIONS];
const POST: &[Method] = &[Method::POST, Method::OPTIONS];

impl Route {
    /// The route of `path`; `Ok(None)` for a path that names no resource,
    /// 400 when a segment is not valid percent-encoded UTF-8.
    pub fn parse(path: &str) -> Result<Option<Route>, Problem> {
        let segments = path
            .trim_matches('/')
            .split('/')
            .map(|s| {
                percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| Problem::bad_request("a path segment is not valid percent-encoded UTF-8"))
            })
            .collect::<Result<Vec<String>, Problem>>()?;
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        let owned = |x: &str| x.to_string();
        Ok(Some(match s.as_slice() {
            ["healthz"] => Route::Health,
            ["readyz"] => Route::Ready,
            ["v1", "openapi.json"] => Route::OpenApi,
            ["v1", "tenants"] => Route::Tenants,
            ["v1", "tenants", id] => Route::Tenant(owned(id)),
            ["v1", "tenants", id, "usage"] => Route::TenantUsage(owned(id)),
            ["v1", "tenants", id, "domains", name] => Route::TenantDomain(owned(id), owned(name)),
            ["v1", "domains", name] => Route::Domain(owned(name)),
            ["v1", "domains", name, "verify"] => Route::DomainVerify(owned(name)),
            ["v1", "domains", name, "check"] => Route::DomainCheck(owned(name)),
            ["v1", "domains", name, "retry"] => Route::DomainRetry(owned(name)),
            ["v1", "events"] => Route::Events,
            ["v1", "templates"] => Route::Templates,
            ["v1", "templates", name] => Route::Template(owned(name)),
            ["v1", "rollouts"] => Route::Rollouts,
            ["v1", "rollouts", name] => Route::Rollout(owned(name)),
            ["v1", "rollouts", name, "promote"] => Route::RolloutPromote(owned(name)),
            ["v1", "rollouts", name, "rollback"] => Route::RolloutRollback(owned(name)),
            ["v1", "rollouts", name, "complete"] => Route::RolloutComplete(owned(name)),
            ["v1", "changes"] => Route::Changes,
            ["v1", "changes", "preview"] => Route::Preview,
            ["v1", "audit"] => Route::Audit,
            ["v1", "versions"] => Route::Versions,
            ["v1", "versions", n, "rollback"] => Route::Rollback(owned(n)),
            ["v1", "export"] => Route::Export,
            ["v1", "import"] => Route::Import,
            ["v1", "session"] => Route::Session,
            ["v1", "stats", "top"] => Route::StatsTop,
            ["v1", "stats", "overview"] => Route::StatsOverview,
            ["v1", "stats", "series"] => Route::StatsSeries,
            ["v1", "stats", "domains"] => Route::StatsDomains,
            ["v1", "stats", "pools"] => Route::StatsPools,
            ["v1", "stats", "replicas"] => Route::StatsReplicas,
            ["v1", "pools"] => Route::Pools,
            ["v1", "pools", name] => Route::Pool(owned(name)),
            _ => return Ok(None),
        }))
    }

    /// The methods this resource answers.
    pub fn allow(&self) -> &'static [Method] {
        match self {
            Route::Tenant(_) => &[
                Method::GET,
                Method::HEAD,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ],
            Route::Template(_) | Route::Rollout(_) => {
                &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE, Method::OPTIONS]
            }
            Route::TenantDomain(..) => &[Method::PUT, Method::DELETE, Method::OPTIONS],
            Route::Changes
            | Route::Preview
            | Route::Rollback(_)
            | Route::Import
            | Route::DomainVerify(_)
            | Route::DomainRetry(_)
            | Route::RolloutPromote(_)
            | Route::RolloutRollback(_)
            | Route::RolloutComplete(_) => POST,
            _ => READ,
        }
    }

    /// The `Allow` header.
    pub fn allow_header(&self) -> HeaderValue {
        let names: Vec<&str> = self.allow().iter().map(Method::as_str).collect();
        HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static("OPTIONS"))
    }

    /// The media type a request body must have, for the methods that take one.
    pub fn body_type(&self, method: &Method) -> Option<&'static str> {
        match (method, self) {
            (&Method::PATCH, Route::Tenant(_)) => Some(MERGE_PATCH),
            (&Method::PUT, Route::Tenant(_) | Route::Template(_) | Route::Rollout(_)) => Some(JSON),
            (&Method::POST, Route::Changes | Route::Preview | Route::Import) => Some(JSON),
            _ => None,
        }
    }

    /// The tenant a write to this route is about (for the audit log).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Route::Tenant(id) | Route::TenantDomain(id, _) => Some(id),
            _ => None,
        }
    }
}

/// Every route, as the OpenAPI document spells its path.
pub const PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/v1/openapi.json",
    "/v1/tenants",
    "/v1/tenants/{id}",
    "/v1/tenants/{id}/usage",
    "/v1/tenants/{id}/domains/{name}",
    "/v1/domains/{name}",
    "/v1/domains/{name}/verify",
    "/v1/domains/{name}/check",
    "/v1/domains/{name}/retry",
    "/v1/events",
    "/v1/templates",
    "/v1/templates/{name}",
    "/v1/rollouts",
    "/v1/rollouts/{name}",
    "/v1/rollouts/{name}/promote",
    "/v1/rollouts/{name}/rollback",
    "/v1/rollouts/{name}/complete",
    "/v1/changes",
    "/v1/changes/preview",
    "/v1/audit",
    "/v1/versions",
    "/v1/versions/{n}/rollback",
    "/v1/export",
    "/v1/import",
    "/v1/session",
    "/v1/stats/top",
    "/v1/stats/overview",
    "/v1/stats/series",
    "/v1/stats/domains",
    "/v1/stats/pools",
    "/v1/stats/replicas",
    "/v1/pools",
    "/v1/pools/{name}",
];

/// Each of [`PATHS`] with the methods the router answers on it (besides
/// HEAD and OPTIONS), found by routing the path with sample parameters.
pub fn route_methods() -> Vec<(&'static str, Vec<Method>)> {
    PATHS
        .iter()
        .map(|p| {
            let sample = p
                .replace("{id}", "acme")
                .replace("{name}", "a.example.com")
                .replace("{n}", "1");
            let methods = match Route::parse(&sample) {
                Ok(Some(r)) => r
                    .allow()
                    .iter()
                    .filter(|m| **m != Method::HEAD && **m != Method::OPTIONS)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            (*p, methods)
        })
        .collect()
}

pub const JSON: &str = "application/json";
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// 415 unless the request's `Content-Type` is `want` (parameters such as
/// `charset=utf-8` allowed).
pub fn check_media_type(headers: &HeaderMap, want: &'static str) -> Result<(), Problem> {
    let sent = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if sent.as_deref() == Some(want) {
        return Ok(());
    }
    let p = Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        format!("send the body as Content-Type: {want}"),
    );
    Err(if want == MERGE_PATCH {
        p.header(
            header::HeaderName::from_static("accept-patch"),
            HeaderValue::from_static(MERGE_PATCH),
        )
    } else {
        p
    })
}

/// The query string, percent-decoded (`+` is a space).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Query, Problem> {
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| Problem::bad_request("the query is not valid percent-encoded UTF-8"))
        };
        let mut out = Vec::new();
        for kv in raw.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            out.push((decode(k)?, decode(v)?));
        }
        Ok(Query(out))
    }

    /// The value of `key` (its first occurrence).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// An integer in `min..=max`, `default` when absent; 400 otherwise.
    pub fn number(&self, key: &str, min: u64, max: u64, default: u64) -> Result<u64, Problem> {
        let Some(v) = self.get(key) else { return Ok(default) };
        v.parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(format!("{key} must be an integer from {min} to {max}"))
                    .with("parameter", serde_json::json!(key))
            })
    }

    /// `true` or `false`, `false` when absent; 400 otherwise.
    pub fn flag(&self, key: &str) -> Result<bool, Problem> {
        match self.get(key) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => {
                Err(Problem::bad_request(format!("{key} must be true or false"))
                    .with("parameter", serde_json::json!(key)))
            }
        }
    }
}

/// A JSON document as a [`Value`], refusing duplicate keys (which
/// `serde_json::from_slice` resolves silently, last one winning).
pub fn json(body: &[u8]) -> Result<Value, Problem> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Strict
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| Problem::bad_request(format!("body is not JSON: {e}")))?;
    Ok(v)
}

/// Builds a [`Value`], failing on a key seen twice in one object.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(A::Error::custom(format!("duplicate key {k:?}")));
            }
            let v = map.next_value_seed(Strict)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode_segments_and_list_their_methods() {
        assert_eq!(
            Route::parse("/v1/domains/sh%C3%B6p.example").expect("ok"),
            Some(Route::Domain("shöp.example".into()))
        );
        assert_eq!(Route::parse("/v1/tenants/").expect("ok"), Some(Route::Tenants));
        assert_eq!(Route::parse("/v1/nope").expect("ok"), None);
        assert!(Route::parse("/v1/domains/%FF").is_err());
        assert_eq!(
            Route::Tenant("a".into()).allow_header(),
            "GET, HEAD, PUT, PATCH, DELETE, OPTIONS"
        );
    }

    #[test]
    fn the_openapi_document_has_exactly_the_routers_routes_and_methods() {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).expect("document");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
        documented.sort_unstable();
        let mut routed: Vec<&str> = PATHS.to_vec();
        routed.sort_unstable();
        assert_eq!(documented, routed);
        for (path, methods) in route_methods() {
            assert!(!methods.is_empty(), "{path} does not route");
            let mut want: Vec<String> = methods.iter().map(|m| m.as_str().to_ascii_lowercase()).collect();
            want.sort();
            let mut have: Vec<String> = paths[path]
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| *k != "parameters")
                .cloned()
                .collect();
            have.sort();
            assert_eq!(have, want, "{path}");
            for m in &have {
                let op = &paths[path][m];
                assert!(op["operationId"].is_string(), "{m} {path}: operationId");
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{m} {path}");
            }
        }
    }

    #[test]
    fn query_values_are_decoded_and_bounded() {
        let q = Query::parse(Some("limit=abc&offset=-1&name=sh%C3%B6p&x=a+b&preview=yes")).expect("ok");
        assert_eq!(q.get("name"), Some("shöp"));
        assert_eq!(q.get("x"), Some("a b"));
        assert!(q.number("limit", 1, 1000, 100).is_err());
        assert!(q.number("offset", 0, u64::MAX, 0).is_err());
        assert!(q.flag("preview").is_err());
        assert_eq!(q.number("absent", 1, 10, 7).expect("default"), 7);
        let q = Query::parse(Some("limit=0")).expect("ok");
        assert!(q.number("limit", 1, 1000, 100).is_err());
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        assert!(json(br#"{"a":1,"a":2}"#).is_err());
        assert!(json(br#"{"x":[{"b":1,"b":1}]}"#).is_err());
        assert!(json(br#"{"a":1} x"#).is_err());
        assert_eq!(json(br#"{"a":[1,2.5,null,"s"]}"#).expect("ok")["a"][1], 2.5);
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        let mut h = HeaderMap::new();
        assert!(check_media_type(&h, JSON).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(check_media_type(&h, JSON).is_ok());
        assert_eq!(
            check_media_type(&h, MERGE_PATCH).map_err(|p| p.status),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
    }
}
