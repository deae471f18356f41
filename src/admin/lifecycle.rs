//! The custom-domain lifecycle on the API: pending claims
//! (`PUT /v1/tenants/{id}/domains/{name}` with a tenant token), checks on
//! demand (`POST /v1/domains/{name}/verify`), the DNS diagnosis
//! (`GET /v1/domains/{name}/check`) and the event log (`GET /v1/events`).

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::problem::{json_response, Body, Problem};
use super::tenants::Call;
use crate::config::domains::Verify;
use crate::config::Scope;
use crate::domains::verifier::Outcome;
use crate::domains::{Claim, ClaimError, ClaimState, HTTP_PROOF_PREFIX};
use crate::routing;

/// Longest `wait` of `GET /v1/events`.
const MAX_WAIT_SECS: u64 = 60;

impl Call {
    /// Whether a domain this caller adds must prove its owner first.
    pub(super) fn needs_proof(&self) -> bool {
        match self.registry.snapshot().config.domains.verify {
            Verify::Off => false,
            Verify::Tenant => matches!(self.caller.scope, Scope::Tenant(_)),
            Verify::All => true,
        }
    }

    /// A claim as the API shows it: its state, token and what to create.
    pub(super) fn claim_view(&self, c: &Claim) -> Value {
        let cfg = self.registry.snapshot().config.domains.clone();
        let mut v = json!({
            "name": c.name,
            "tenant": c.tenant,
            "state": match c.state { ClaimState::Pending => "pending", ClaimState::Failed => "failed" },
            "created": rfc3339(c.created),
            "attempts": c.attempts,
        });
        if c.state == ClaimState::Pending {
            v["token"] = json!(c.token);
            v["next_check"] = json!(rfc3339(c.next_check));
            if cfg.txt {
                v["record"] = json!({
                    "type": "TXT",
                    "name": format!("{}.{}", cfg.verification_prefix, c.name.strip_prefix("*.").unwrap_or(&c.name)),
                    "value": c.token,
                });
            }
            if cfg.http {
                v["http"] = json!({
                    "url": format!("http://{}{HTTP_PROOF_PREFIX}{}", c.name, c.token),
                    "body": c.token,
                });
            }
        }
        if let Some(t) = c.last_check {
            v["last_check"] = json!(rfc3339(t));
        }
        if let Some(d) = &c.detail {
            v["detail"] = json!(d);
        }
        v
    }

    /// The claims on `name` this caller may see (a tenant: its own).
    pub(super) fn visible_claims(&self, name: &str) -> Vec<Claim> {
        self.lifecycle
            .claims
            .on(name)
            .into_iter()
            .filter(|c| self.caller.may_touch(&c.tenant).is_ok())
            .collect()
    }

    /// `PUT /v1/tenants/{id}/domains/{name}` when the name needs a proof:
    /// 202 with the pending claim (its token and the record to create), or
    /// `None` when the tenant already has the name active. Refused like an
    /// active name would be (reserved, at a public suffix, over
    /// `max_domains`, another tenant's active name: 409), so a claim never
    /// waits for a proof that could not make it route.
    pub(super) async fn claim_domain(&self, id: String, name: String) -> Result<Option<Response<Body>>, Problem> {
        let texts = self.registry.texts();
        let Some(text) = texts.tenants.get(&id) else {
            let snap = self.registry.snapshot();
            return Err(if snap.tenants.iter().any(|t| *t.id == *id) {
                super::tenants::read_only("tenant", &id, "tenants")
            } else {
                Problem::not_found(format!("no tenant {id:?}"))
            });
        };
        let mut tenant: crate::config::file::TenantSection = toml::from_str(text).map_err(|_| Problem::internal())?;
        if tenant.domains.contains(&name) {
            // Already active: answered like any PUT of a name it has.
            return Ok(None);
        }
        // Would the name route once proven? Checked against the live state
        // without the writer lock (the proof re-checks when it lands).
        tenant.domains.push(name.clone());
        let registry = self.registry.clone();
        let check = tokio::task::spawn_blocking(move || {
            registry.validate::<crate::registry::WriteError>(|live, _| {
                crate::registry::Rendered::of(live, vec![crate::registry::TenantEdit::Put(Box::new(tenant))])
            })
        })
        .await
        .map_err(|_| Problem::internal())?;
        if let Err(e) = check {
            let p = super::write::write_problem(&self.caller.name, std::slice::from_ref(&id), e);
            return Err(super::write::for_scope(&self.caller.scope, p));
        }
        let cfg = self.registry.snapshot().config.domains.clone();
        let (claim, new) = self.lifecycle.claim(&name, &id, &cfg).await.map_err(claim_problem)?;
        if new {
            self.lifecycle.save().await;
            self.lifecycle
                .events
                .emit("domain.pending", Some(&id), Some(&name), None);
            self.audit_claim(&id).await;
        }
        let mut resp = json_response(StatusCode::ACCEPTED, &self.claim_view(&claim));
        if let Ok(loc) = HeaderValue::from_str(&format!("/v1/domains/{name}")) {
            resp.headers_mut().insert(header::LOCATION, loc);
        }
        Ok(Some(resp))
    }

    /// `DELETE /v1/tenants/{id}/domains/{name}` of a name the tenant only
    /// claims: the claim is withdrawn (204); `None` when there was none.
    pub(super) async fn withdraw_claim(&self, id: &str, name: &str) -> Result<Option<Response<Body>>, Problem> {
        if !self.lifecycle.withdraw(name, id, false).await.map_err(claim_problem)? {
            return Ok(None);
        }
        self.lifecycle.save().await;
        self.lifecycle
            .events
            .emit("domain.removed", Some(id), Some(name), Some("claim withdrawn"));
        let mut resp = Response::new(Body::default());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(Some(resp))
    }

    /// The claim goes to the audit log like a write (it changes no tenant).
    async fn audit_claim(&self, id: &str) {
        let (audit, who, request, id) = (
            self.audit.clone(),
            self.caller.name.clone(),
            self.request.clone(),
            id.to_string(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            audit.record(&super::audit::Entry {
                who: &who,
                request: &request,
                tenants: &[id],
                status: None,
                generation: None,
                diff: &[],
                problem: None,
            })
        })
        .await;
    }

    /// `POST /v1/domains/{name}/verify`: checks this caller's pending
    /// claims on `name` now.
    pub(super) async fn verify_domain(&self, name: &str) -> Result<Response<Body>, Problem> {
        let host = normalized(name)?;
        let claims: Vec<Claim> = self
            .visible_claims(&host)
            .into_iter()
            .filter(|c| c.state == ClaimState::Pending)
            .collect();
        if claims.is_empty() {
            return Err(Problem::not_found(format!("no pending claim on {host}")));
        }
        // Fleet mode: a check whose result cannot be recorded is not run.
        if let Some(why) = self.lifecycle.store_unreachable() {
            return Err(claim_problem(ClaimError::Unreachable(why)));
        }
        let mut out = Vec::new();
        for c in &claims {
            let outcome = self.lifecycle.check(c, false).await;
            let mut v = json!({"tenant": c.tenant, "state": outcome.state()});
            match outcome {
                Outcome::Pending(d) | Outcome::Failed(d) => v["detail"] = json!(d),
                Outcome::Active => {}
            }
            out.push(v);
        }
        self.lifecycle.save().await;
        Ok(json_response(StatusCode::OK, &json!({"name": host, "results": out})))
    }

    /// `GET /v1/domains/{name}/check`: each check with what was found and
    /// how to fix it.
    pub(super) async fn check_domain(&self, name: &str) -> Result<Response<Body>, Problem> {
        let host = normalized(name)?;
        let snap = self.registry.snapshot();
        let owner = snap
            .table
            .lookup(&host)
            .and_then(|m| snap.tenant(m.tenant))
            .map(|t| t.id.to_string());
        drop(snap);
        let claims = self.visible_claims(&host);
        let owns = owner.as_deref().is_some_and(|o| self.caller.may_touch(o).is_ok());
        if !owns && claims.is_empty() {
            return Err(Problem::not_found(format!(
                "no tenant of yours routes or claims {host}"
            )));
        }
        let token = claims
            .iter()
            .find(|c| c.state == ClaimState::Pending)
            .map(|c| c.token.clone());
        let checks = self.lifecycle.diagnose(&host, token.as_deref()).await;
        let ready = checks.iter().all(|c| c.ok);
        Ok(json_response(
            StatusCode::OK,
            &json!({"name": host, "ready": ready, "checks": checks}),
        ))
    }

    /// `GET /v1/events?after=<seq>&limit=&wait=<secs>`: the events after
    /// `after` (a tenant token sees its own tenant's), waiting up to `wait`
    /// seconds for one when there is none. With `Accept: text/event-stream`
    /// the same events come as server-sent events (each with its `id`, so
    /// an `EventSource` reconnects with `Last-Event-ID` and misses none).
    pub(super) async fn events(&self) -> Result<Response<Body>, Problem> {
        let last_event_id = self
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let after = match last_event_id {
            Some(id) => id,
            None => self.query.number("after", 0, u64::MAX >> 1, 0)?,
        };
        let limit = self.query.number("limit", 1, 1000, 100)? as usize;
        let sse = self
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        let wait = self.query.number("wait", 0, MAX_WAIT_SECS, if sse { 25 } else { 0 })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let mut cursor = after;
        let (events, oldest) = loop {
            let (page, oldest) = self.lifecycle.events.after(cursor, limit);
            let mine: Vec<_> = page
                .iter()
                .filter(|e| e.tenant.as_deref().is_none_or(|t| self.caller.may_touch(t).is_ok()))
                .filter(|e| e.tenant.is_some() || self.caller.scope == Scope::Operator)
                .cloned()
                .collect();
            let now = tokio::time::Instant::now();
            if !mine.is_empty() || now >= deadline {
                break (mine, oldest);
            }
            // Skip past events this caller may not see.
            if let Some(e) = page.last() {
                cursor = e.seq;
                continue;
            }
            self.lifecycle.events.wait_after(cursor, deadline - now).await;
        };
        let last = events.last().map_or(cursor.max(after), |e| e.seq);
        if sse {
            let mut text = String::from("retry: 1000\n\n");
            for e in &events {
                let data = serde_json::to_string(e).map_err(|_| Problem::internal())?;
                text.push_str(&format!("id: {}\nevent: {}\ndata: {data}\n\n", e.seq, e.kind));
            }
            let mut resp = Response::new(Body::from(text));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(resp);
        }
        let mut body = json!({"events": events, "last": last, "oldest": oldest});
        self.store_note(&mut body);
        Ok(json_response(StatusCode::OK, &body))
    }
}

/// A claim that could not be made or changed, as the API answers it.
fn claim_problem(e: ClaimError) -> Problem {
    match e {
        ClaimError::TooMany { .. } => Problem::new(StatusCode::CONFLICT, "too-many-pending", e.to_string()),
        ClaimError::Unreachable(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            format!(
                "{e}; nothing was changed. This replica keeps serving the domains it knows; retry when Redis answers"
            ),
        ),
        ClaimError::Save(_) | ClaimError::Fenced => Problem::internal(),
    }
}

fn normalized(name: &str) -> Result<String, Problem> {
    routing::host::normalize(name)
        .map(|h| h.into_owned())
        .map_err(|e| Problem::bad_request(format!("{name:?} is not a valid host name: {e}")))
}

/// `2026-11-23T10:00:00Z`.
pub(super) fn rfc3339(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
