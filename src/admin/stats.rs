//! `GET /v1/stats/*` (operator): what the console shows at a glance. The
//! busiest tenants from the heavy-hitter sketches (`top`), the platform
//! totals with tenants, domains and certificates by state (`overview`),
//! the last hour's time series (`series`) and the stuck or failing names
//! (`domains`). Read-only; they never touch the registry's writer.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::problem::{json_response, Body, Problem};
use super::tenants::Call;
use crate::config::Scope;
use crate::domains::ClaimState;
use crate::limits::SystemClock;
use crate::telemetry::refusals::PER_TENANT;
use crate::telemetry::top::{RankBy, WINDOW};

/// Rows of `GET /v1/stats/top` by default, and at most.
const TOP_DEFAULT: u64 = 20;
const TOP_MAX: u64 = 1_000;
/// Names listed by `GET /v1/stats/domains`, per kind, at most.
const STUCK_MAX: u64 = 500;

impl Call {
    /// `GET /v1/session`: the token's name and scope (and its tenant), so
    /// that the console shows what this token may see.
    pub(super) fn session(&self) -> Response<Body> {
        let (scope, tenant) = match &self.caller.scope {
            Scope::Operator => ("operator", None),
            Scope::Tenant(id) => ("tenant", Some(id.as_str())),
        };
        json_response(
            StatusCode::OK,
            &json!({"name": self.caller.name, "scope": scope, "tenant": tenant}),
        )
    }

    /// `GET /v1/stats/top?by=rps|5xx|429|p99&limit=N`.
    pub(super) fn stats_top(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let by_text = self.query.get("by").unwrap_or("rps");
        let by = RankBy::parse(by_text).ok_or_else(|| {
            Problem::bad_request("by must be one of rps, 5xx, 429, p99").with("parameter", json!("by"))
        })?;
        let limit = self.query.number("limit", 1, TOP_MAX, TOP_DEFAULT)? as usize;
        let metrics = self.registry.metrics();
        let k = metrics.top_tenants();
        let rows = metrics.top.rank(by, limit.min(k));
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "by": by_text,
                "k": k,
                "window_secs": WINDOW.as_secs(),
                "tenants": rows,
            }),
        ))
    }

    /// `GET /v1/tenants/{id}/usage?limit=N`: the tenant's effective limits,
    /// their use now (this replica's in-flight count; quota counts, in
    /// fleet mode the shared ones as last seen), and its recent refusals,
    /// newest first. A tenant token reads only its own.
    pub(super) async fn tenant_usage(&self, id: String) -> Result<Response<Body>, Problem> {
        self.caller.may_touch(&id)?;
        let limit = self.query.number("limit", 1, PER_TENANT as u64, PER_TENANT as u64)? as usize;
        let registry = self.registry.clone();
        let wanted = id.clone();
        // Finding the tenant among 100,000 is a scan: off the runtime.
        let body = tokio::task::spawn_blocking(move || {
            let snap = registry.snapshot();
            let i = snap.config.tenants.iter().position(|t| t.id == id)?;
            let spec = snap.config.tenants.get(i)?;
            let fleet = registry.book().fleet().is_some();
            let limits = spec.limits.as_ref().map(|l| {
                json!({
                    "rate_per_second": l.rate.map(|r| r.per_second),
                    "burst": l.rate.map(|r| r.burst),
                    "client_rate_per_second": l.client_rate.map(|r| r.per_second),
                    "max_concurrent": l.max_concurrent,
                    "per_day": l.per_day,
                    "per_month": l.per_month,
                    "timezone": l.timezone.iana_name().unwrap_or("UTC"),
                })
            });
            let usage = spec
                .limits
                .as_ref()
                .zip(
                    snap.tenant(i as crate::routing::TenantIdx)
                        .and_then(|t| t.limiter.as_ref()),
                )
                .map(|(l, state)| state.usage(l, fleet, &SystemClock));
            let refusals = registry.metrics().refusals.of(&id, limit);
            Some(json!({
                "tenant": id,
                "fleet": fleet,
                "limits": limits,
                "use": usage,
                "refusals": refusals,
                "refusals_kept": PER_TENANT,
            }))
        })
        .await
        .map_err(|_| Problem::internal())?;
        let Some(body) = body else {
            return Err(super::tenants::missing(&wanted));
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    /// `GET /v1/stats/replicas`: every live replica's summary in fleet mode
    /// (published every 2 s with a 10 s TTL), else this node's alone.
    pub(super) async fn stats_replicas(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let me = replica_summary(&self.registry);
        let Some(fleet) = self.registry.book().fleet().cloned() else {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"fleet": false, "self": me["id"], "store": Value::Null, "replicas": [me]}),
            ));
        };
        let (store, replicas) = match fleet.replicas_seen().await {
            Ok(seen) => {
                let rows: Vec<Value> = seen
                    .into_iter()
                    .map(|r| {
                        let mut row = r.summary.filter(Value::is_object).unwrap_or_else(|| json!({}));
                        row["id"] = json!(r.id);
                        row["last_seen_ms"] = json!(r.ago_ms);
                        row
                    })
                    .collect();
                ("up", rows)
            }
            // The store is down: this node is all it knows.
            Err(_) => ("down", vec![me.clone()]),
        };
        Ok(json_response(
            StatusCode::OK,
            &json!({"fleet": true, "self": me["id"], "store": store, "replicas": replicas}),
        ))
    }

    /// `GET /v1/stats/series`: one point per window, oldest first.
    pub(super) fn stats_series(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let points: Vec<Value> = self
            .registry
            .metrics()
            .top
            .series()
            .into_iter()
            .map(|p| {
                let refusals: serde_json::Map<String, Value> =
                    p.refusals_per_sec.into_iter().map(|(r, v)| (r, json!(v))).collect();
                json!({"t": p.t, "rps": p.rps, "errors_per_sec": p.errors_per_sec, "refusals_per_sec": refusals, "p50": p.p50, "p99": p.p99})
            })
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"step_secs": WINDOW.as_secs(), "points": points}),
        ))
    }

    /// `GET /v1/stats/overview`.
    pub(super) async fn stats_overview(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let (registry, lifecycle, certs) = (self.registry.clone(), self.lifecycle.clone(), self.certs.clone());
        // Counting 100,000 tenants and names is CPU work: off the runtime.
        let body = tokio::task::spawn_blocking(move || {
            let snap = registry.snapshot();
            let metrics = registry.metrics();
            let totals = metrics.top.totals();
            let last = metrics.top.series().pop();
            let now = jiff::Timestamp::now();
            let maintenance = snap
                .config
                .tenants
                .iter()
                .filter(|t| t.maintenance.as_ref().is_some_and(|m| m.active(now).is_some()))
                .count();
            let (pending, failed) = lifecycle.claims.counts();
            let certificates = certs.map(|c| {
                let s = c.schedule.summary(0);
                json!({
                    "states": s.states.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "expiry": s.expiry.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                })
            });
            let refusals: serde_json::Map<String, Value> =
                totals.refusals.iter().map(|(r, c)| (r.clone(), json!(c))).collect();
            let store = snap.config.store.is_some();
            json!({
                "generation": snap.generation,
                "uptime_secs": metrics.top.uptime().as_secs(),
                "fleet": store,
                "now": last.as_ref().map(|p| json!({"t": p.t, "rps": p.rps, "errors_per_sec": p.errors_per_sec, "p50": p.p50, "p99": p.p99, "refusals_per_sec": p.refusals_per_sec.iter().map(|(r, v)| (r.clone(), json!(v))).collect::<serde_json::Map<String, Value>>()})),
                "since_start": {
                    "requests": totals.requests,
                    "errors_5xx": totals.errors,
                    "refusals": refusals,
                    "p50": totals.p50,
                    "p99": totals.p99,
                },
                "tenants": {"total": snap.tenants.len(), "maintenance": maintenance, "serving": snap.tenants.len() - maintenance},
                "domains": {"active": snap.table.len(), "pending": pending, "failed": failed},
                "certificates": certificates,
            })
        })
        .await
        .map_err(|_| Problem::internal())?;
        Ok(json_response(StatusCode::OK, &body))
    }

    /// `GET /v1/stats/pools`: each pool's upstreams, whether each is
    /// marked down after failed connects (and for how long), its tenants
    /// and its request and error counts since start.
    pub(super) async fn stats_pools(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let registry = self.registry.clone();
        let body = tokio::task::spawn_blocking(move || {
            let snap = registry.snapshot();
            let mut tenants = vec![0usize; snap.pools.len()];
            for t in &snap.config.tenants {
                if let Some(n) = tenants.get_mut(t.pool as usize) {
                    *n += 1;
                }
            }
            let pools: Vec<Value> = snap
                .pools
                .iter()
                .zip(tenants)
                .map(|(p, n)| {
                    let upstreams: Vec<Value> = p
                        .upstreams
                        .iter()
                        .map(|u| match u.down_for() {
                            Some(d) => json!({"addr": u.addr.to_string(), "state": "down", "down_for_ms": d.as_millis() as u64}),
                            None => json!({"addr": u.addr.to_string(), "state": "up"}),
                        })
                        .collect();
                    json!({
                        "name": &*p.name,
                        "tenants": n,
                        "upstreams": upstreams,
                        "requests": p.metrics.duration.get_sample_count(),
                        "connect_errors": p.metrics.connect_errors.get(),
                        "proxy_errors": p.metrics.proxy_errors.get(),
                    })
                })
                .collect();
            json!({"generation": snap.generation, "pools": pools})
        })
        .await
        .map_err(|_| Problem::internal())?;
        Ok(json_response(StatusCode::OK, &body))
    }

    /// `GET /v1/stats/domains`: pending and failed claims (oldest first)
    /// and names whose certificate orders fail, each with where to look.
    pub(super) async fn stats_domains(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let limit = self.query.number("limit", 1, STUCK_MAX, 100)? as usize;
        let (lifecycle, certs) = (self.lifecycle.clone(), self.certs.clone());
        let (mut claims, failing) = tokio::task::spawn_blocking(move || {
            let claims = lifecycle.claims.all();
            let failing = certs.map(|c| c.schedule.summary(limit).failing).unwrap_or_default();
            (claims, failing)
        })
        .await
        .map_err(|_| Problem::internal())?;
        claims.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
        let claims: Vec<Value> = claims
            .iter()
            .take(limit)
            .map(|c| {
                json!({
                    "name": c.name,
                    "tenant": c.tenant,
                    "state": match c.state { ClaimState::Pending => "pending", ClaimState::Failed => "failed" },
                    "attempts": c.attempts,
                    "detail": c.detail,
                })
            })
            .collect();
        let certificates: Vec<Value> = failing
            .into_iter()
            .map(|(name, failures, error)| json!({"name": name, "failures": failures, "last_error": error}))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"claims": claims, "certificates": certificates}),
        ))
    }
}

/// This node's summary, as `GET /v1/stats/replicas` lists it and fleet
/// mode publishes it: its id, the registry version it serves (fleet) and
/// its generation, requests and 5xx since start, and req/s, 5xx/s and p99
/// over the last closed 10 s window (0 before the first one).
pub fn replica_summary(registry: &crate::registry::Registry) -> Value {
    let metrics = registry.metrics();
    let totals = metrics.top.totals();
    let last = metrics.top.series().pop();
    let id = registry
        .book()
        .fleet()
        .map_or_else(local_id, |f| f.replica_id().to_string());
    json!({
        "id": id,
        "version": registry.store().map(crate::registry::RegistryStore::synced),
        "generation": registry.snapshot().generation,
        "uptime_secs": metrics.top.uptime().as_secs(),
        "requests": totals.requests,
        "errors_5xx": totals.errors,
        "rps": last.as_ref().map_or(0.0, |p| p.rps),
        "errors_per_sec": last.as_ref().map_or(0.0, |p| p.errors_per_sec),
        "p99": last.as_ref().map(|p| p.p99),
        "last_seen_ms": 0,
    })
}

/// A single node's id: its host name and process id.
fn local_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
