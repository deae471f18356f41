//! `GET /v1/domains/{name}`: the tenant a host routes to, and the
//! certificate a handshake for it is answered with.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::problem::{json_response, Body, Problem};
use super::tenants::Call;
use crate::acme::{NameStatus, Schedule};
use crate::config::{Issuer, Scope};
use crate::routing;
use crate::tls::certs::issuer_cn;
use crate::tls::store::{Origin, Served};
use crate::tls::CertStore;

/// What the admin API reads of TLS: the certificate store and the ACME
/// manager's schedule. `None` when the gateway started without `[tls]`.
#[derive(Clone)]
pub struct Certs {
    pub store: Arc<CertStore>,
    pub schedule: Arc<Schedule>,
}

impl Call {
    /// Fleet mode with Redis down: the answer says the states shown are
    /// this replica's last-known ones.
    pub(super) fn store_note(&self, body: &mut Value) {
        if let Some(why) = self.lifecycle.store_unreachable() {
            body["store"] = json!({
                "reachable": false,
                "detail": format!("{why}; showing this replica's last-known domain states; checks are paused and changes are refused until it answers"),
            });
        }
    }

    /// `{"name","tenant","match","generation","certificate"}` for any host
    /// (normalised); 404 when nobody routes it.
    pub(super) async fn domain(&self, name: &str) -> Result<Response<Body>, Problem> {
        let host = routing::host::normalize(name)
            .map_err(|e| Problem::bad_request(format!("{name:?} is not a valid host name: {e}")))?
            .into_owned();
        let snap = self.registry.snapshot();
        let claims = self.visible_claims(&host);
        let unrouted = || {
            if claims.is_empty() {
                return Err(Problem::not_found(format!("no tenant routes {host}")));
            }
            // Claimed only: pending (or failed) until proven.
            let pending = claims.iter().any(|c| c.state == crate::domains::ClaimState::Pending);
            let views: Vec<Value> = claims.iter().map(|c| self.claim_view(c)).collect();
            let mut body = json!({"name": host, "state": if pending { "pending" } else { "failed" }, "claims": views});
            self.store_note(&mut body);
            Ok(json_response(StatusCode::OK, &body))
        };
        let Some(m) = snap.table.lookup(&host) else {
            return unrouted();
        };
        let tenant = snap.tenant(m.tenant).ok_or_else(Problem::internal)?;
        // A tenant token learns nothing of hosts it does not own: another
        // tenant's host gets the same answer as an unrouted one.
        if self.caller.may_touch(&tenant.id).is_err() {
            return unrouted();
        }
        let state = if self.lifecycle.is_moved(&host) {
            "moved"
        } else {
            "active"
        };
        let mut body = json!({"name": host, "state": state, "tenant": &*tenant.id, "match": m.kind.as_str(), "generation": snap.generation});
        if !claims.is_empty() {
            body["claims"] = Value::Array(claims.iter().map(|c| self.claim_view(c)).collect());
        }
        self.store_note(&mut body);
        let acme = matches!(snap.config.tls.as_ref().map(|t| &t.issuer), Some(Issuer::Acme(_)));
        let base_wildcard = snap.config.tls.as_ref().is_some_and(|t| t.base_wildcard());
        let certs = match (&self.certs, &snap.config.tls) {
            (Some(c), Some(_)) => c.clone(),
            (None, Some(_)) => {
                return Ok(answer(
                    body,
                    none("TLS is off until a restart: [tls] was added after start"),
                ))
            }
            (_, None) => return Ok(answer(body, none("TLS is off: the config has no [tls] section"))),
        };
        drop(snap);
        let (store, for_store) = (certs.store.clone(), host.clone());
        let served = tokio::task::spawn_blocking(move || store.served(&for_store, m.kind, base_wildcard))
            .await
            .map_err(|_| Problem::internal())?;
        let status = acme
            .then(|| {
                certs
                    .schedule
                    .status(&CertStore::managed_name(m.kind, &host, base_wildcard))
            })
            .flatten();
        let cert = match (served, status) {
            (Some(s), status) => with_acme(describe(&s, self.caller.scope == Scope::Operator), status),
            (None, Some(status)) => with_acme(json!({"source": "managed"}), Some(status)),
            (None, None) => none("no certificate covers this name: put one in certs_dir"),
        };
        Ok(answer(body, cert))
    }
}

impl Call {
    /// `POST /v1/domains/{name}/retry`: the name's next certificate order
    /// is due now, whatever its backoff said; answered with the name's
    /// ACME state and its new `next_attempt`. 404 for a host the caller
    /// does not route, 409 when no ACME order is made for it.
    pub(super) fn retry_domain(&self, name: &str) -> Result<Response<Body>, Problem> {
        let host = routing::host::normalize(name)
            .map_err(|e| Problem::bad_request(format!("{name:?} is not a valid host name: {e}")))?
            .into_owned();
        let snap = self.registry.snapshot();
        let unrouted = || Problem::not_found(format!("no tenant routes {host}"));
        let (kind, tenant) = match snap.table.lookup(&host) {
            Some(m) => {
                let tenant = snap.tenant(m.tenant).ok_or_else(Problem::internal)?;
                self.caller.may_touch(&tenant.id).map_err(|_| unrouted())?;
                (m.kind, Some(tenant.id.to_string()))
            }
            None if snap.table.paths.shared(&host).is_some() || snap.config.identity.header_hosts.contains(&host) => {
                self.caller.operator()?;
                (routing::MatchKind::Exact, None)
            }
            None => return Err(unrouted()),
        };
        let not_managed = |why: &str| {
            Problem::new(
                StatusCode::CONFLICT,
                "not-managed",
                format!("no certificate order is made for {host}: {why}"),
            )
        };
        if !matches!(snap.config.tls.as_ref().map(|t| &t.issuer), Some(Issuer::Acme(_))) {
            return Err(not_managed("the certificate issuer is not ACME"));
        }
        let certs = self
            .certs
            .as_ref()
            .ok_or_else(|| not_managed("TLS is off until a restart"))?;
        let status = certs
            .schedule
            .retry(&CertStore::managed_name(
                kind,
                &host,
                snap.config.tls.as_ref().is_some_and(|t| t.base_wildcard()),
            ))
            .ok_or_else(|| {
                not_managed("an operator certificate covers it, or it is a wildcard without [tls.acme.dns01]")
            })?;
        tracing::info!(name = %host, tenant = tenant.as_deref().unwrap_or(""), "certificate backoff cleared through the admin API");
        let body = with_acme(json!({"name": host, "tenant": tenant}), Some(status));
        Ok(json_response(StatusCode::OK, &body))
    }
}

fn answer(mut body: Value, certificate: Value) -> Response<Body> {
    body["certificate"] = certificate;
    json_response(StatusCode::OK, &body)
}

/// `{"source": "none", "detail"}`.
fn none(detail: &str) -> Value {
    json!({"source": "none", "detail": detail})
}

/// `source` (with the file's `path` when `show_path`), and the served
/// certificate's `not_after`, `issuer_cn` and `sans`.
fn describe(s: &Served, show_path: bool) -> Value {
    let (source, path) = match &s.origin {
        Origin::Operator(p) => ("operator", Some(p)),
        Origin::Managed(p) => ("managed", Some(p)),
        Origin::Internal => ("internal", None),
    };
    let mut v = json!({"source": source});
    if let Some(p) = path.filter(|_| show_path) {
        v["path"] = json!(p.display().to_string());
    }
    match &s.loaded {
        Some(l) => {
            v["not_after"] = json!(rfc3339(l.not_after));
            if let Some(cn) = l.key.cert.first().and_then(issuer_cn) {
                v["issuer_cn"] = json!(cn);
            }
            v["sans"] = json!(l.names);
        }
        None => v["detail"] = json!("the internal CA makes the certificate at the first handshake"),
    }
    v
}

/// `v` with the ACME manager's view of the name as `acme`, if it orders it.
fn with_acme(mut v: Value, status: Option<NameStatus>) -> Value {
    if let Some(s) = status {
        let mut acme = json!({
            "state": s.state.as_str(),
            "failures": s.failures,
        });
        if let Some(t) = s.next_attempt {
            acme["next_attempt"] = json!(rfc3339(t));
        }
        if let Some(e) = s.last_error {
            acme["last_error"] = json!(e);
        }
        v["acme"] = acme;
    }
    v
}

/// `2026-11-23T10:00:00Z` (whole seconds, UTC).
fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .and_then(|t| jiff::Timestamp::from_second(t.as_second()))
        .map(|t| t.to_string())
        .unwrap_or_default()
}
