//! Tenant resources: `/v1/tenants[/{id}]`, its domains as a sub-resource
//! (`/v1/tenants/{id}/domains/{name}`), and the request dispatch.

use std::collections::HashSet;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::audit::Audit;
use super::auth::Caller;
use super::problem::{json_response, Body, Problem};
use super::request::{self, Query, Route};
use crate::config::file::TenantSection;
use crate::config::{parse_domain, valid_tenant_id, Scope, TenantSpec, Texts};
use crate::registry::{Registry, Snapshot, TenantEdit};
use crate::routing::host;

/// Default and largest page of `GET /v1/tenants`.
pub(super) const PAGE: u64 = 100;
pub(super) const MAX_PAGE: u64 = 1000;

/// An authenticated request.
pub struct Call {
    pub registry: Arc<Registry>,
    pub audit: Arc<Audit>,
    /// The certificate store and ACME schedule; `None` without TLS.
    pub certs: Option<super::domains::Certs>,
    /// Domain claims and the event log.
    pub lifecycle: Arc<crate::domains::verifier::Lifecycle>,
    pub caller: Caller,
    /// `METHOD /path`, for the audit log.
    pub request: String,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
    pub body: bytes::Bytes,
}

impl Call {
    pub async fn route(self, route: Route) -> Result<Response<Body>, Problem> {
        match (self.method.clone(), route) {
            (Method::GET, Route::Tenants) => self.list().await,
            (Method::GET, Route::Tenant(id)) => self.get(&id),
            (Method::PUT, Route::Tenant(id)) => self.put(id).await,
            (Method::PATCH, Route::Tenant(id)) => self.patch(id).await,
            (Method::DELETE, Route::Tenant(id)) => self.delete(id).await,
            (Method::PUT, Route::TenantDomain(id, name)) => self.put_domain(id, name).await,
            (Method::DELETE, Route::TenantDomain(id, name)) => self.delete_domain(id, name).await,
            (Method::GET, Route::Domain(name)) => self.domain(&name).await,
            (Method::POST, Route::DomainVerify(name)) => self.verify_domain(&name).await,
            (Method::GET, Route::DomainCheck(name)) => self.check_domain(&name).await,
            (Method::POST, Route::DomainRetry(name)) => self.retry_domain(&name),
            (Method::GET, Route::Events) => self.events().await,
            (Method::GET, Route::Templates) => self.templates(),
            (Method::GET, Route::Template(name)) => self.template(&name),
            (Method::PUT, Route::Template(name)) => self.put_template(name).await,
            (Method::DELETE, Route::Template(name)) => self.delete_template(name).await,
            (Method::GET, Route::Rollouts) => self.rollouts(),
            (Method::GET, Route::Rollout(name)) => self.rollout(&name),
            (Method::PUT, Route::Rollout(name)) => self.put_rollout(name).await,
            (Method::DELETE, Route::Rollout(name)) => self.delete_rollout(name).await,
            (Method::POST, Route::RolloutPromote(name)) => self.promote_rollout(name).await,
            (Method::POST, Route::RolloutRollback(name)) => self.rollback_rollout(name).await,
            (Method::POST, Route::RolloutComplete(name)) => self.complete_rollout(name).await,
            (Method::POST, Route::Changes) => self.changes(false).await,
            (Method::POST, Route::Preview) => self.changes(true).await,
            (Method::GET, Route::Audit) => self.audit_log().await,
            (Method::GET, Route::Versions) => self.versions().await,
            (Method::GET, Route::Export) => self.export().await,
            (Method::POST, Route::Import) => self.import().await,
            (Method::POST, Route::Rollback(n)) => self.rollback(&n).await,
            (Method::GET, Route::Session) => Ok(self.session()),
            (Method::GET, Route::StatsTop) => self.stats_top(),
            (Method::GET, Route::StatsOverview) => self.stats_overview().await,
            (Method::GET, Route::StatsSeries) => self.stats_series(),
            (Method::GET, Route::StatsDomains) => self.stats_domains().await,
            (Method::GET, Route::StatsPools) => self.stats_pools().await,
            (Method::GET, Route::StatsReplicas) => self.stats_replicas().await,
            (Method::GET, Route::TenantUsage(id)) => self.tenant_usage(id).await,
            (Method::GET, Route::Pools) => self.pools(),
            (Method::GET, Route::Pool(name)) => self.pool(&name),
            _ => Err(Problem::not_found("no such resource; see /v1/openapi.json")),
        }
    }

    /// `GET /v1/tenants`: a page of tenants in id order, filtered by
    /// `label=key=value` (repeatable), `domain`, `pool`, `plan`, `template`.
    /// The first page comes from the live generation; its `cursor` carries
    /// that generation, and every later page of the walk is served from it
    /// (kept for a while, [`crate::registry::KEPT_FOR`]), so that a walk
    /// sees exactly one generation's tenants whatever is written meanwhile;
    /// a generation no longer kept answers 410. `offset` is kept for older
    /// clients (pages of the live generation, shifting under writes).
    async fn list(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let limit = self.query.number("limit", 1, MAX_PAGE, PAGE)? as usize;
        let offset = self.query.number("offset", 0, u64::from(u32::MAX), 0)? as usize;
        let filter = Filter::of(&self.query)?;
        let cursor = match self.query.get("cursor") {
            None => None,
            Some(c) => Some(Cursor::decode(c).ok_or_else(|| {
                Problem::bad_request("cursor is not one this API returned").with("parameter", json!("cursor"))
            })?),
        };
        let registry = self.registry.clone();
        let (view, after) = match cursor {
            None => (registry.view(), None),
            Some(c) => {
                let view = (c.epoch == registry.epoch())
                    .then(|| registry.kept_view(c.generation))
                    .flatten()
                    .ok_or_else(|| cursor_gone(c.generation))?;
                (view, Some(c.after))
            }
        };
        // Filtering and sorting 100,000 tenants is CPU work: off the runtime.
        tokio::task::spawn_blocking(move || {
            let (snap, texts) = (&view.snapshot, &view.texts);
            let mut matching: Vec<&TenantSpec> =
                snap.config.tenants.iter().filter(|t| filter.matches(snap, t)).collect();
            matching.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            let start = match &after {
                Some(id) => matching.partition_point(|t| t.id.as_str() <= id.as_str()),
                None => offset.min(matching.len()),
            };
            let page: Vec<Value> = matching[start..]
                .iter()
                .take(limit)
                .map(|t| {
                    let etag = match texts.tenants.get(&t.id) {
                        Some(text) => etag(text),
                        None => main_json(snap, t).1,
                    };
                    json!({"id": t.id, "pool": pool_name(snap, t.pool), "etag": etag})
                })
                .collect();
            let end = start + page.len();
            let more = end < matching.len();
            let next_cursor = match matching.get(end.wrapping_sub(1)) {
                Some(last) if more => {
                    registry.keep_view(&view);
                    Some(
                        Cursor {
                            epoch: registry.epoch(),
                            generation: view.generation(),
                            after: last.id.clone(),
                        }
                        .encode(),
                    )
                }
                _ => None,
            };
            json_response(
                StatusCode::OK,
                &json!({"tenants": page, "total": matching.len(), "next_offset": more.then_some(end),
                        "next_cursor": next_cursor, "generation": view.generation()}),
            )
        })
        .await
        .map_err(|_| Problem::internal())
    }

    fn get(&self, id: &str) -> Result<Response<Body>, Problem> {
        self.caller.may_touch(id)?;
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let (mut tenant, etag) = current(&texts, &snap, id)?.ok_or_else(|| missing(id))?;
        self.with_claims(&mut tenant, id);
        let mut resp = json_response(StatusCode::OK, &tenant);
        set_etag(&mut resp, &etag);
        Ok(resp)
    }

    /// `tenant` with `domain_claims`: the names it claims but has not
    /// proven (or that failed), when there are any. Not part of the ETag:
    /// they are not the tenant's config.
    fn with_claims(&self, tenant: &mut Value, id: &str) {
        let claims = self.lifecycle.claims.of(id);
        if !claims.is_empty() {
            tenant["domain_claims"] = Value::Array(claims.iter().map(|c| self.claim_view(c)).collect());
        }
    }

    /// `PUT /v1/tenants/{id}`: create (201) or replace (200). `If-None-Match: *`
    /// makes it create-only.
    async fn put(self, id: String) -> Result<Response<Body>, Problem> {
        self.caller.may_touch(&id)?;
        let sent = parse_tenant(&id, &self.body)?;
        self.write_tenant(id, move |_| Ok(sent)).await
    }

    /// `PATCH /v1/tenants/{id}`: a JSON Merge Patch (RFC 7396) of the tenant.
    async fn patch(self, id: String) -> Result<Response<Body>, Problem> {
        self.caller.may_touch(&id)?;
        let Value::Object(mut members) = request::json(&self.body)? else {
            return Err(Problem::bad_request("a merge patch of a tenant is a JSON object"));
        };
        drop_read_only(&mut members)?;
        let patch = Value::Object(members);
        let path_id = id.clone();
        self.write_tenant(id, move |before| {
            let before = before.ok_or_else(|| missing(&path_id))?;
            let mut doc = serde_json::to_value(&before).map_err(|_| Problem::internal())?;
            super::patch::merge(&mut doc, &patch);
            let Value::Object(obj) = doc else {
                return Err(invalid("the patched tenant is not an object"));
            };
            tenant_from(&path_id, obj)
        })
        .await
    }

    /// `PUT /v1/tenants/{id}/domains/{name}`: adds one domain (201), or
    /// finds it already there (200), without a read-modify-write.
    async fn put_domain(self, id: String, name: String) -> Result<Response<Body>, Problem> {
        self.caller.may_touch(&id)?;
        let name = canonical_domain(&name).map_err(|p| Problem::bad_request(p.to_string()))?;
        if self.needs_proof() {
            if let Some(resp) = self.claim_domain(id.clone(), name.clone()).await? {
                return Ok(resp);
            }
        }
        let (path_id, added) = (id.clone(), name.clone());
        let had = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = had.clone();
        let mut resp = self
            .write_tenant(id, move |before| {
                let mut t = before.ok_or_else(|| missing(&path_id))?;
                if t.domains.contains(&added) {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                } else {
                    t.domains.push(added);
                }
                Ok(t)
            })
            .await?;
        if !had.load(std::sync::atomic::Ordering::Relaxed) && resp.status() == StatusCode::OK {
            *resp.status_mut() = StatusCode::CREATED;
        }
        Ok(resp)
    }

    /// `DELETE /v1/tenants/{id}/domains/{name}`: 204, or 404 when the
    /// tenant does not have the domain.
    async fn delete_domain(self, id: String, name: String) -> Result<Response<Body>, Problem> {
        self.caller.may_touch(&id)?;
        let name = canonical_domain(&name).map_err(|p| Problem::bad_request(p.to_string()))?;
        let active = self
            .registry
            .snapshot()
            .config
            .tenants
            .iter()
            .any(|t| t.id == id && t.domains.iter().any(|d| d.to_string() == name));
        if !active {
            if let Some(resp) = self.withdraw_claim(&id, &name).await? {
                return Ok(resp);
            }
        }
        let path_id = id.clone();
        self.write_tenant(id, move |before| {
            let mut t = before.ok_or_else(|| missing(&path_id))?;
            let n = t.domains.len();
            t.domains.retain(|d| *d != name);
            if t.domains.len() == n {
                return Err(Problem::not_found(format!("tenant {path_id:?} has no domain {name}")));
            }
            Ok(t)
        })
        .await?;
        let mut resp = Response::new(Body::default());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }

    /// Writes tenant `id` as `make` turns its current section (`None`:
    /// absent) into the new one, under the writer lock, honouring
    /// `If-Match` and `If-None-Match` and the token's scope. Answers the
    /// tenant with its ETag: 201 if created, 200 otherwise (also when
    /// nothing changed, which is neither recorded nor audited).
    async fn write_tenant(
        self,
        id: String,
        make: impl FnOnce(Option<TenantSection>) -> Result<TenantSection, Problem> + Clone + Send + 'static,
    ) -> Result<Response<Body>, Problem> {
        if !valid_tenant_id(&id) {
            return Err(missing(&id));
        }
        let if_match = if_match(&self.headers);
        let if_none_match = if_none_match(&self.headers);
        let caller = self.caller.clone();
        // A tenant token's refusals are found before the writer lock when
        // they can be, so they never queue in front of other writes.
        if let Scope::Tenant(_) = caller.scope {
            let texts = self.registry.texts();
            let before = texts
                .tenants
                .get(&id)
                .and_then(|t| toml::from_str::<TenantSection>(t).ok());
            if before.is_none() {
                return Err(Problem::forbidden("a tenant token cannot create its tenant"));
            }
        }
        let written = id.clone();
        // A tenant token's new custom domains wait for a proof: they are
        // taken out of the write and claimed after it.
        let proof = self.needs_proof() && matches!(caller.scope, Scope::Tenant(_));
        let claimed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let to_claim = claimed.clone();
        let done = self
            .write_checked(vec![id.clone()], move |texts, snap| {
                let existing = editable(texts, snap, &written)?;
                let before = texts
                    .tenants
                    .get(&written)
                    .map(|t| toml::from_str::<TenantSection>(t).map_err(|_| Problem::internal()))
                    .transpose()?;
                // A change of a tenant that does not exist is 404 before
                // any precondition is looked at.
                let mut after = canonical(make(before.clone())?)?;
                if let (true, Some(before)) = (proof, before.as_ref()) {
                    let mut new = Vec::new();
                    after.domains.retain(|d| {
                        let had = before.domains.contains(d);
                        if !had {
                            new.push(d.clone());
                        }
                        had
                    });
                    if let Ok(mut c) = to_claim.lock() {
                        *c = new;
                    }
                }
                let tag = existing.as_ref().map(|(_, e)| e.as_str());
                check_if_match(TENANT, if_match.as_deref(), tag)?;
                check_if_none_match(TENANT, if_none_match.as_deref(), tag)?;
                if let Scope::Tenant(_) = caller.scope {
                    let before = before.ok_or_else(|| Problem::forbidden("a tenant token cannot create its tenant"))?;
                    refuse_operator_fields(&before, &after)?;
                    refuse_profile_fields(&before, &after, &snap.config.profile)?;
                }
                Ok((existing.is_none(), vec![TenantEdit::Put(Box::new(after))]))
            })
            .await?;
        let names = claimed.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
        for name in names {
            // Each is refused or claimed as a PUT of the name alone would be.
            let _ = self.claim_domain(id.clone(), name).await;
        }
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let (mut tenant, etag) = current(&texts, &snap, &id)?.ok_or_else(Problem::internal)?;
        self.with_claims(&mut tenant, &id);
        Ok(put_response(done.value && !done.unchanged, &tenant, &etag))
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

/// A tenant token may change the profile fields the operator lists in
/// `[profile] tenant_editable`; `region` never (data residency is the
/// operator's).
fn refuse_profile_fields(
    before: &TenantSection,
    after: &TenantSection,
    settings: &crate::config::profile::ProfileSettings,
) -> Result<(), Problem> {
    let changed = [
        ("features", before.features != after.features),
        ("locale", before.locale != after.locale),
        ("branding", before.branding != after.branding),
        ("maintenance", before.maintenance != after.maintenance),
        ("labels", before.labels != after.labels),
        ("region", before.region != after.region),
    ];
    match changed
        .iter()
        .find(|(field, changed)| *changed && !settings.tenant_may_edit(field))
    {
        Some((field, _)) => Err(Problem::forbidden(format!(
            "a tenant token may not change {field}: the operator allows {} ([profile] tenant_editable)",
            match settings.tenant_editable.is_empty() {
                true => "no profile field".to_string(),
                false => settings.tenant_editable.join(", "),
            }
        ))),
        None => Ok(()),
    }
}

/// A tenant token may change its domains, subdomain and redirect_https
/// only; the rest is the operator's.
fn refuse_operator_fields(before: &TenantSection, after: &TenantSection) -> Result<(), Problem> {
    if before.template != after.template {
        return Err(Problem::forbidden(
            "a tenant token may not change the tenant's template; templates are the operator's",
        ));
    }
    if (
        &before.pool,
        &before.plan,
        &before.limits,
        &before.timezone,
        &before.pinned,
    ) != (&after.pool, &after.plan, &after.limits, &after.timezone, &after.pinned)
    {
        return Err(Problem::forbidden(
            "a tenant token may change domains, subdomain and redirect_https only; pool, plan, limits, timezone, pinned and labels are the operator's",
        ));
    }
    Ok(())
}

/// The list filters of `GET /v1/tenants`.
struct Filter {
    /// `id_prefix`: ids starting with it.
    id_prefix: Option<String>,
    labels: Vec<(String, String)>,
    domain: Option<String>,
    pool: Option<String>,
    plan: Option<String>,
    template: Option<String>,
}

impl Filter {
    fn of(q: &Query) -> Result<Filter, Problem> {
        let labels = q
            .all("label")
            .map(|l| {
                l.split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| Problem::bad_request("label must be key=value").with("parameter", json!("label")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let domain = match q.get("domain") {
            Some(d) => Some(
                canonical_domain(d)
                    .map_err(|e| Problem::bad_request(e.to_string()).with("parameter", json!("domain")))?,
            ),
            None => None,
        };
        Ok(Filter {
            id_prefix: q.get("id_prefix").map(str::to_string),
            labels,
            domain,
            pool: q.get("pool").map(str::to_string),
            plan: q.get("plan").map(str::to_string),
            template: q.get("template").map(str::to_string),
        })
    }

    fn matches(&self, snap: &Snapshot, t: &TenantSpec) -> bool {
        self.id_prefix.as_ref().is_none_or(|p| t.id.starts_with(p.as_str()))
            && self.labels.iter().all(|(k, v)| t.labels.get(k) == Some(v))
            && self
                .domain
                .as_ref()
                .is_none_or(|d| t.domains.iter().any(|x| x.to_string() == *d))
            && self.pool.as_ref().is_none_or(|p| pool_name(snap, t.pool) == p)
            && self.plan.as_ref().is_none_or(|p| t.plan.as_ref() == Some(p))
            && self.template.as_ref().is_none_or(|n| t.template.as_ref() == Some(n))
    }
}

/// Where a page walk is: the registry instance and generation it lists,
/// and the last id of the previous page. Sent hex-encoded (opaque to
/// clients).
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    epoch: u64,
    generation: u64,
    after: String,
}

impl Cursor {
    fn encode(&self) -> String {
        let mut out = format!("{:016x}{:016x}", self.epoch, self.generation);
        for b in self.after.bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// `None` for what is not shaped like one (hex of the instance, the
    /// generation, and at least one byte of id).
    fn decode(c: &str) -> Option<Cursor> {
        if c.len() < 34 || c.len() > 32 + 2 * 63 || !c.len().is_multiple_of(2) {
            return None;
        }
        let epoch = u64::from_str_radix(c.get(..16)?, 16).ok()?;
        let generation = u64::from_str_radix(c.get(16..32)?, 16).ok()?;
        let rest = c.get(32..)?;
        let bytes = (0..rest.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(rest.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        // Ids sort as their bytes do, so any text is a starting point.
        let after = String::from_utf8_lossy(&bytes).into_owned();
        Some(Cursor {
            epoch,
            generation,
            after,
        })
    }
}

/// 410: the generation a cursor walks is no longer kept.
fn cursor_gone(generation: u64) -> Problem {
    Problem::new(
        StatusCode::GONE,
        "cursor-expired",
        format!(
            "this cursor lists generation {generation}, which is no longer kept (a walk's generation is kept {} s after its last page, at most {} older generations at once, and not across a restart); list again without cursor",
            crate::registry::KEPT_FOR.as_secs(),
            crate::registry::KEPT_VIEWS
        ),
    )
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
        return Err(read_only(what, key, folder));
    }
    Ok(found)
}

/// 409 `read-only`: a `what` of the main file.
pub(super) fn read_only(what: &str, key: &str, folder: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "read-only",
        format!("{what} {key:?} is defined in the main config file; move it to {folder}/{key}.toml to manage it here"),
    )
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
    Ok(snap
        .config
        .tenants
        .iter()
        .find(|t| t.id == id)
        .map(|t| main_json(snap, t)))
}

/// A main-file tenant's JSON and ETag.
fn main_json(snap: &Snapshot, t: &TenantSpec) -> (Value, String) {
    let mut v = json!({
        "id": t.id,
        "domains": t.domains.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "pool": pool_name(snap, t.pool),
        "source": "main",
    });
    if let Some(s) = &t.subdomain {
        v["subdomain"] = json!(s);
    }
    if let Some(template) = &t.template {
        v["template"] = json!(template);
    }
    if !t.labels.is_empty() {
        v["labels"] = json!(t.labels);
    }
    let tag = etag(&v.to_string());
    (v, tag)
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

/// A header's value, trimmed; `None` when absent or empty.
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub(super) fn if_match(headers: &HeaderMap) -> Option<String> {
    header_text(headers, header::IF_MATCH)
}

pub(super) fn if_none_match(headers: &HeaderMap) -> Option<String> {
    header_text(headers, header::IF_NONE_MATCH)
}

/// What [`check_if_match`] names in its problem.
pub(super) const TENANT: &str = "tenant";

/// Whether `tag` is in the list `tags` of an `If-Match` or `If-None-Match`
/// (`*` lists every tag; weak tags compare by their opaque part).
pub(super) fn tag_listed(tags: &str, tag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    tags.trim() == "*" || tags.split(',').any(|w| bare(w) == bare(tag))
}

/// `If-Match: *` needs the resource (a tenant or template: `what`) to
/// exist; a tag must equal the current one.
pub(super) fn check_if_match(what: &str, if_match: Option<&str>, current: Option<&str>) -> Result<(), Problem> {
    // An empty header lists no tag: as if it were absent.
    let ok = match (if_match.filter(|t| !t.trim().is_empty()), current) {
        (None, _) => true,
        (Some(want), Some(c)) => tag_listed(want, c),
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

/// `If-None-Match: *` (create only) fails when the resource exists; a
/// list of tags fails when the current one is in it.
pub(super) fn check_if_none_match(what: &str, none_match: Option<&str>, current: Option<&str>) -> Result<(), Problem> {
    match (none_match.filter(|t| !t.trim().is_empty()), current) {
        (Some(tags), Some(c)) if tag_listed(tags, c) => Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "exists",
            format!("the {what} exists (If-None-Match); GET it, or send If-Match to replace it"),
        )
        .with("current_etag", json!(c))),
        _ => Ok(()),
    }
}

pub(super) fn missing(id: &str) -> Problem {
    Problem::not_found(format!("tenant {id:?} does not exist"))
}

/// The PUT body: a tenant as JSON, its `id` (if any) equal to the path's,
/// its names canonical.
pub(super) fn parse_tenant(id: &str, body: &[u8]) -> Result<TenantSection, Problem> {
    let obj = body_object(body, "tenant id", id)?;
    canonical(tenant_from(id, obj)?)
}

/// A tenant of a batch: a JSON object with its `id`, names canonical.
pub(super) fn tenant_of_value(v: Value) -> Result<TenantSection, Problem> {
    let Value::Object(mut obj) = v else {
        return Err(invalid("a tenant is a JSON object"));
    };
    let id = obj.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    drop_read_only(&mut obj)?;
    canonical(tenant_from(&id, obj)?)
}

/// A tenant from a JSON object whose `id`, if any, must be `id`.
fn tenant_from(id: &str, mut obj: serde_json::Map<String, Value>) -> Result<TenantSection, Problem> {
    if !valid_tenant_id(id) {
        return Err(bad_key("tenant id", id));
    }
    match obj.get("id") {
        None => {
            obj.insert("id".into(), json!(id));
        }
        Some(Value::String(s)) if s == id => {}
        Some(_) => return Err(invalid("the body's id differs from the path's")),
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| invalid(format!("bad tenant: {e}")))
}

/// A tenant with its domains canonical (lowercase, no trailing dot,
/// punycode: what routing matches) and each listed once, and its subdomain
/// canonical. 422 listing every name that is not a host name.
pub(super) fn canonical(mut t: TenantSection) -> Result<TenantSection, Problem> {
    if !valid_tenant_id(&t.id) {
        return Err(bad_key("tenant id", &t.id));
    }
    let mut errors = Vec::new();
    let mut seen = HashSet::with_capacity(t.domains.len());
    let mut domains = Vec::with_capacity(t.domains.len());
    for (j, raw) in t.domains.iter().enumerate() {
        match canonical_domain(raw) {
            Ok(d) => {
                if seen.insert(d.clone()) {
                    domains.push(d);
                }
            }
            Err(p) => errors.push(json!({"tenant": t.id, "field": format!("domains[{j}]"),
                                         "problem": p.to_string(), "fix": p.fix()})),
        }
    }
    t.domains = domains;
    if let Some(s) = &t.subdomain {
        match host::normalize(s) {
            Ok(n) if !n.contains('.') => t.subdomain = Some(n.into_owned()),
            _ => errors.push(json!({"tenant": t.id, "field": "subdomain",
                                    "problem": format!("{s:?} is not a single DNS label"),
                                    "fix": "use one label of a-z, 0-9 and '-', such as acme"})),
        }
    }
    if errors.is_empty() {
        Ok(t)
    } else {
        Err(invalid(format!("{} problem(s); nothing was applied", errors.len())).with("errors", Value::Array(errors)))
    }
}

/// A domain as routing matches it: `name` or `*.parent`, normalised.
pub(super) fn canonical_domain(raw: &str) -> Result<String, crate::config::Problem> {
    parse_domain(raw).map(|d| d.to_string())
}

/// A PUT body as a JSON object (duplicate keys refused), without the
/// read-only `source` and `used_by`, once `key` (a tenant id or template
/// name, as `what`) is valid.
pub(super) fn body_object(body: &[u8], what: &str, key: &str) -> Result<serde_json::Map<String, Value>, Problem> {
    if !valid_tenant_id(key) {
        return Err(bad_key(what, key));
    }
    let Value::Object(mut obj) = request::json(body)? else {
        return Err(Problem::bad_request("body must be a JSON object"));
    };
    drop_read_only(&mut obj)?;
    Ok(obj)
}

/// Removes the read-only members a GET answer has (`source`, and a
/// template's `used_by`), so that it can be sent back; other values of them
/// are refused.
pub(super) fn drop_read_only(obj: &mut serde_json::Map<String, Value>) -> Result<(), Problem> {
    match obj.remove("source") {
        None => {}
        Some(Value::String(s)) if s == "file" || s == "main" => {}
        Some(_) => return Err(invalid("source is read-only: \"file\" or \"main\", as GET returns it")),
    }
    match obj.remove("used_by") {
        None => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => return Err(invalid("used_by is read-only: a list of tenant ids, as GET returns it")),
    }
    Ok(())
}

fn bad_key(what: &str, key: &str) -> Problem {
    invalid(format!(
        "{key:?} is not a valid {what}: use 1 to 63 characters of a-z, 0-9, '-' and '_'"
    ))
}

/// A 422 `invalid` problem.
pub(super) fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_stored_canonical_and_once() {
        let t: TenantSection = serde_json::from_value(json!({
            "id": "a", "domains": ["shöp.acme.com", "A.dup.example.", "a.dup.example", "*.Wild.Example"],
            "subdomain": "Acme"
        }))
        .expect("tenant");
        let t = canonical(t).expect("canonical");
        assert_eq!(t.domains, ["xn--shp-tna.acme.com", "a.dup.example", "*.wild.example"]);
        assert_eq!(t.subdomain.as_deref(), Some("acme"));
        let bad: TenantSection =
            serde_json::from_value(json!({"id": "a", "domains": ["a b.example"]})).expect("tenant");
        assert_eq!(
            canonical(bad).map_err(|p| p.status),
            Err(StatusCode::UNPROCESSABLE_ENTITY)
        );
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let c = Cursor {
            epoch: u64::MAX - 7,
            generation: 42,
            after: "acme-1".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        let old_style = "61636d652d31"; // an id only, as cursors were before
        let no_id = format!("{:016x}{:016x}", 1, 2);
        for junk in ["", "zz", "abc", "0g", old_style, &no_id] {
            assert_eq!(Cursor::decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn preconditions() {
        assert!(check_if_none_match(TENANT, Some("*"), Some("\"a\"")).is_err());
        assert!(check_if_none_match(TENANT, Some("*"), None).is_ok());
        assert!(check_if_none_match(TENANT, Some("\"b\""), Some("\"a\"")).is_ok());
        assert!(check_if_match(TENANT, Some("*"), None).is_err());
        assert!(check_if_match(TENANT, Some("\"x\", \"a\""), Some("\"a\"")).is_ok());
        assert!(tag_listed("W/\"a\"", "\"a\""));
        // An empty header lists nothing: as if absent.
        assert!(check_if_match(TENANT, Some(""), None).is_ok());
        assert!(check_if_none_match(TENANT, Some(" "), Some("\"a\"")).is_ok());
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        let t: TenantSection =
            serde_json::from_value(json!({"id": "a", "limits": {"burst": 5.0, "max_domains": 2}})).expect("tenant");
        let limits = t.limits.expect("limits");
        assert_eq!(
            (limits.burst, limits.max_domains, limits.requests_per_day),
            (Some(5), Some(2), None)
        );
        assert!(serde_json::from_value::<TenantSection>(json!({"id": "a", "limits": {"burst": 5.5}})).is_err());
    }
}
