//! Tenant and domain resources: `/v1/tenants[/{id}]`, `/v1/domains/{name}`.

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::audit::Audit;
use super::auth::Caller;
use super::problem::{json_response, Body, Problem};
use crate::config::file::TenantSection;
use crate::config::{valid_tenant_id, Scope, Texts};
use crate::registry::{Registry, Snapshot, TenantEdit};

/// Default and largest page of `GET /v1/tenants`.
pub(super) const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// An authenticated request.
pub struct Call {
    pub registry: Arc<Registry>,
    pub audit: Arc<Audit>,
    /// The certificate store and ACME schedule; `None` without TLS.
    pub certs: Option<super::domains::Certs>,
    pub caller: Caller,
    /// `METHOD /path`, for the audit log.
    pub request: String,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: String,
    pub body: bytes::Bytes,
}

impl Call {
    pub async fn route(self, segments: &[&str]) -> Result<Response<Body>, Problem> {
        match (&self.method, segments) {
            (&Method::GET, ["v1", "tenants"]) => self.list(),
            (&Method::GET, ["v1", "tenants", id]) => self.get(id),
            (&Method::PUT, ["v1", "tenants", id]) => self.put(id.to_string()).await,
            (&Method::DELETE, ["v1", "tenants", id]) => self.delete(id.to_string()).await,
            (&Method::GET, ["v1", "domains", name]) => self.domain(name).await,
            (&Method::GET, ["v1", "templates"]) => self.templates(),
            (&Method::GET, ["v1", "templates", name]) => self.template(name),
            (&Method::PUT, ["v1", "templates", name]) => self.put_template(name.to_string()).await,
            (&Method::DELETE, ["v1", "templates", name]) => self.delete_template(name.to_string()).await,
            (&Method::POST, ["v1", "changes"]) => self.changes(false).await,
            (&Method::POST, ["v1", "changes", "preview"]) => self.changes(true).await,
            (&Method::GET, ["v1", "audit"]) => self.audit_log().await,
            (&Method::GET, ["v1", "versions"]) => self.versions().await,
            (&Method::GET, ["v1", "export"]) => self.export(),
            (&Method::POST, ["v1", "import"]) => self.import().await,
            (&Method::POST, ["v1", "versions", n, "rollback"]) => self.rollback(n).await,
            _ => Err(Problem::not_found("no such resource; see /v1/openapi.json")),
        }
    }

    fn list(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let offset: usize = query_param(&self.query, "offset").unwrap_or(0);
        let limit: usize = query_param(&self.query, "limit").unwrap_or(PAGE).clamp(1, MAX_PAGE);
        let snap = self.registry.snapshot();
        let tenants = &snap.config.tenants;
        let page: Vec<Value> = tenants
            .iter()
            .skip(offset)
            .take(limit)
            .map(|t| json!({"id": t.id, "pool": pool_name(&snap, t.pool)}))
            .collect();
        let next = (offset + page.len() < tenants.len()).then_some(offset + page.len());
        Ok(json_response(
            StatusCode::OK,
            &json!({"tenants": page, "total": tenants.len(), "next_offset": next, "generation": snap.generation}),
        ))
    }

    fn get(&self, id: &str) -> Result<Response<Body>, Problem> {
        self.caller.may_touch(id)?;
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let (tenant, etag) = current(&texts, &snap, id)?.ok_or_else(|| missing(id))?;
        let mut resp = json_response(StatusCode::OK, &tenant);
        set_etag(&mut resp, &etag);
        Ok(resp)
    }

    async fn put(self, id: String) -> Result<Response<Body>, Problem> {
        self.caller.may_touch(&id)?;
        let section = parse_tenant(&id, &self.body)?;
        let if_match = if_match(&self.headers);
        let caller = self.caller.clone();
        let sent = section.clone();
        let done = self
            .write(vec![id.clone()], false, move |texts, snap| {
                let existing = editable(texts, snap, &sent.id)?;
                check_if_match(TENANT, if_match.as_deref(), existing.as_ref().map(|(_, e)| e.as_str()))?;
                if let Scope::Tenant(_) = caller.scope {
                    let before = existing
                        .as_ref()
                        .and_then(|_| texts.tenants.get(&sent.id))
                        .and_then(|t| toml::from_str::<TenantSection>(t).ok())
                        .ok_or_else(|| Problem::forbidden("a tenant token cannot create its tenant"))?;
                    if before.template != sent.template {
                        return Err(Problem::forbidden(
                            "a tenant token may not change the tenant's template; templates are the operator's",
                        ));
                    }
                    if (&before.pool, &before.plan, &before.limits, &before.timezone)
                        != (&sent.pool, &sent.plan, &sent.limits, &sent.timezone)
                    {
                        return Err(Problem::forbidden(
                            "a tenant token may change domains, subdomain and redirect_https only; pool, plan, limits and timezone are the operator's",
                        ));
                    }
                }
                Ok((existing.is_none(), vec![TenantEdit::Put(Box::new(sent))]))
            })
            .await?;
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let (tenant, etag) = current(&texts, &snap, &id)?.ok_or_else(Problem::internal)?;
        Ok(put_response(done.value, &tenant, &etag))
    }

    async fn delete(self, id: String) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let if_match = if_match(&self.headers);
        self.write(vec![id.clone()], false, move |texts, snap| {
            let existing = editable(texts, snap, &id)?.ok_or_else(|| missing(&id))?;
            check_if_match(TENANT, if_match.as_deref(), Some(&existing.1))?;
            Ok(((), vec![TenantEdit::Delete(id)]))
        })
        .await?;
        let mut resp = Response::new(Body::default());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }
}

/// Like [`current`], refusing tenants of the main file (read-only here).
pub(super) fn editable(texts: &Texts, snap: &Snapshot, id: &str) -> Result<Option<(Value, String)>, Problem> {
    unless_main(current(texts, snap, id)?, TENANT, id, "tenants")
}

/// `found`, unless it is a `what` (tenant or template) of the main file:
/// 409 `read-only`, pointing at `<folder>/<key>.toml`.
pub(super) fn unless_main(
    found: Option<(Value, String)>,
    what: &str,
    key: &str,
    folder: &str,
) -> Result<Option<(Value, String)>, Problem> {
    if found.as_ref().is_some_and(|(v, _)| v["source"] == "main") {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "read-only",
            format!(
                "{what} {key:?} is defined in the main config file; move it to {folder}/{key}.toml to manage it here"
            ),
        ));
    }
    Ok(found)
}

/// The tenant's JSON and ETag, from its tenant file, or from the main file's
/// validated model (`"source": "main"`, read-only through the API).
pub(super) fn current(texts: &Texts, snap: &Snapshot, id: &str) -> Result<Option<(Value, String)>, Problem> {
    if let Some(text) = texts.tenants.get(id) {
        let t: TenantSection = toml::from_str(text).map_err(|_| Problem::internal())?;
        let mut v = serde_json::to_value(&t).map_err(|_| Problem::internal())?;
        v["source"] = json!("file");
        return Ok(Some((v, etag(text))));
    }
    let Some(t) = snap.config.tenants.iter().find(|t| t.id == id) else {
        return Ok(None);
    };
    let mut v = json!({
        "id": t.id,
        "subdomain": t.subdomain,
        "domains": t.domains.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "pool": pool_name(snap, t.pool),
        "source": "main",
    });
    if let Some(template) = &t.template {
        v["template"] = json!(template);
    }
    let tag = etag(&v.to_string());
    Ok(Some((v, tag)))
}

fn pool_name(snap: &Snapshot, pool: u32) -> &str {
    snap.config
        .pools
        .get(pool as usize)
        .map(|p| p.name.as_str())
        .unwrap_or("")
}

/// A strong ETag over a tenant's or template's stored text.
pub(super) fn etag(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The answer to a PUT: 201 if it `created` the resource, else 200, with
/// its JSON and ETag.
pub(super) fn put_response(created: bool, body: &Value, etag: &str) -> Response<Body> {
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut resp = json_response(status, body);
    set_etag(&mut resp, etag);
    resp
}

pub(super) fn set_etag(resp: &mut Response<Body>, etag: &str) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
}

pub(super) fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// What [`check_if_match`] names in its problem.
pub(super) const TENANT: &str = "tenant";

/// `If-Match: *` needs the resource (a tenant or template: `what`) to
/// exist; a tag must equal the current one.
pub(super) fn check_if_match(what: &str, if_match: Option<&str>, current: Option<&str>) -> Result<(), Problem> {
    let ok = match (if_match, current) {
        (None, _) => true,
        (Some("*"), c) => c.is_some(),
        (Some(want), Some(c)) => want.split(',').any(|w| w.trim() == c),
        (Some(_), None) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "stale",
            format!("the {what} changed since you read it; GET it again and retry with the new ETag"),
        )
        .with("current_etag", json!(current)))
    }
}

pub(super) fn missing(id: &str) -> Problem {
    Problem::not_found(format!("tenant {id:?} does not exist"))
}

/// The PUT body: a tenant as JSON, its `id` (if any) equal to the path's.
pub(super) fn parse_tenant(id: &str, body: &[u8]) -> Result<TenantSection, Problem> {
    let mut obj = body_object(body, "tenant id", id)?;
    match obj.get("id") {
        None => {
            obj.insert("id".into(), json!(id));
        }
        Some(Value::String(s)) if s == id => {}
        Some(_) => return Err(invalid("the body's id differs from the path's")),
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| invalid(format!("bad tenant: {e}")))
}

/// A PUT body as a JSON object, without the read-only `source` and
/// `used_by`, once `key` (a tenant id or template name, as `what`) is valid.
pub(super) fn body_object(body: &[u8], what: &str, key: &str) -> Result<serde_json::Map<String, Value>, Problem> {
    if !valid_tenant_id(key) {
        return Err(invalid(format!(
            "{key:?} is not a valid {what}: use 1 to 63 characters of a-z, 0-9, '-' and '_'"
        )));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| Problem::bad_request(format!("body is not JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(Problem::bad_request("body must be a JSON object"));
    };
    obj.remove("source");
    obj.remove("used_by");
    Ok(obj)
}

/// A 422 `invalid` problem.
pub(super) fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail)
}

pub(super) fn query_param<T: std::str::FromStr>(query: &str, key: &str) -> Option<T> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}
