//! Pool resources, read-only and for operator tokens: `GET /v1/pools` and
//! `GET /v1/pools/{name}`, each upstream's state (active checks, passive
//! ejection, connect mark-down), its last probe and its ejections, and the
//! pool's health, outlier and retry settings.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::problem::{json_response, Body, Problem};
use super::tenants::Call;
use crate::proxy::pool::{Pool, Upstream};

impl Call {
    /// `GET /v1/pools`: every pool with its upstreams' state.
    pub(super) fn pools(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let snap = self.registry.snapshot();
        let pools: Vec<Value> = snap.pools.iter().map(pool_json).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"pools": pools, "generation": snap.generation}),
        ))
    }

    /// `GET /v1/pools/{name}`.
    pub(super) fn pool(&self, name: &str) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let snap = self.registry.snapshot();
        let pool = snap
            .pools
            .iter()
            .find(|p| &*p.name == name)
            .ok_or_else(|| Problem::not_found(format!("no pool {name:?}")))?;
        let mut body = pool_json(pool);
        if let Some(o) = body.as_object_mut() {
            o.insert("generation".into(), json!(snap.generation));
        }
        Ok(json_response(StatusCode::OK, &body))
    }
}

fn pool_json(p: &Pool) -> Value {
    let health = p.health.as_ref().map(|h| {
        json!({
            "path": h.path,
            "expect_status": h.expect_status,
            "interval_ms": h.interval.as_millis() as u64,
            "timeout_ms": h.timeout.as_millis() as u64,
            "rise": h.rise,
            "fall": h.fall,
        })
    });
    let members = p.members();
    let upstreams: Vec<Value> = members.iter().map(|u| upstream_json(u, p.health.is_some())).collect();
    json!({
        "name": &*p.name,
        "available": members.iter().filter(|u| u.available()).count(),
        "names": p.names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "upstreams": upstreams,
        "health": health,
        "outlier": {
            "consecutive_failures": p.outlier.consecutive_failures,
            "ejection_ms": p.outlier.ejection.as_millis() as u64,
            "max_ejection_ms": p.outlier.max_ejection.as_millis() as u64,
            "eject_last": p.outlier.eject_last,
        },
        "retries": {
            "max": p.retries.max,
            "budget_percent": p.retries.budget_percent,
            "min_per_second": p.retries.min_per_second,
        },
    })
}

fn upstream_json(u: &Upstream, checked: bool) -> Value {
    let h = &u.health;
    let state = if checked && !h.probed_up() {
        "unhealthy"
    } else if h.is_ejected() {
        "ejected"
    } else if u.is_down() {
        "down"
    } else {
        "healthy"
    };
    let last_probe = h.last_probe().filter(|_| checked).map(|r| {
        json!({
            "at_unix_ms": r.at_unix_ms,
            "ok": r.ok,
            "status": r.status,
            "error": r.error,
            "duration_ms": r.duration_ms,
        })
    });
    json!({
        "address": u.addr.to_string(),
        "name": u.origin.as_deref(),
        "state": state,
        "available": u.available(),
        "last_probe": last_probe,
        "ejected_for_ms": h.ejected_for().map(|d| d.as_millis() as u64),
        "consecutive_failures": h.consecutive_failures(),
        "ejections": h.ejections(),
    })
}
