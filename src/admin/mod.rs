//! The operator admin API: HTTP/JSON on `[gateway] admin_listen`, served by
//! hyper on its own listener, away from the request path.
//!
//! Every write goes through [`Registry::write`]: validated like a config
//! load, persisted as tenant files, swapped in before the response.

mod audit;
pub mod auth;
mod changes;
mod domains;
mod preview;
mod problem;
mod templates;
mod tenants;
mod versions;
mod write;

use std::sync::Arc;

use async_trait::async_trait;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::json;

pub use audit::Audit;
pub use domains::Certs;
pub use problem::{Body, Problem};

use crate::config::Scope;
use crate::registry::Registry;

/// The largest request body from a tenant token.
const MAX_BODY: usize = 1 << 20;
/// The largest request body from an operator token (an import of a big
/// registry: about 120 bytes per tenant).
const MAX_OPERATOR_BODY: usize = 256 << 20;

/// Background service serving the admin API on a listener bound at start-up.
pub struct AdminApi {
    pub registry: Arc<Registry>,
    pub audit: Arc<Audit>,
    /// The certificate store and ACME schedule; `None` without TLS.
    pub certs: Option<Certs>,
    /// Bound in `server::serve`, so that a taken port fails the start.
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for AdminApi {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let std = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(listener) = std.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) else {
            tracing::error!("admin API listener unavailable");
            return;
        };
        loop {
            let stream = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin API accept failed");
                        continue;
                    }
                },
            };
            let registry = self.registry.clone();
            let audit = self.audit.clone();
            let certs = self.certs.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (registry, audit, certs) = (registry.clone(), audit.clone(), certs.clone());
                    async move { Ok::<_, std::convert::Infallible>(serve(&registry, &audit, certs, req).await) }
                });
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                    tracing::debug!(error = %e, "admin API connection ended");
                }
            });
        }
    }
}

/// The OpenAPI document, committed as `src/admin/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

fn openapi() -> Response<Body> {
    let mut resp = Response::new(Body::new(bytes::Bytes::from_static(OPENAPI.as_bytes())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// One request, end to end.
async fn serve(
    registry: &Arc<Registry>,
    audit: &Arc<Audit>,
    certs: Option<Certs>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/openapi.json") => return openapi(),
        (&Method::GET, "/healthz") => return problem::json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let generation = registry.snapshot().generation;
            return problem::json_response(StatusCode::OK, &json!({"status": "ready", "generation": generation}));
        }
        _ => {}
    }
    let snap = registry.snapshot();
    let caller = match auth::authenticate(req.headers(), &snap.config.admin.tokens) {
        Ok(c) => c,
        Err(p) => return p.response(),
    };
    drop(snap);
    let (parts, body) = req.into_parts();
    // Operators import and batch whole registries; a tenant edits one tenant.
    let limit = match caller.scope {
        Scope::Operator => MAX_OPERATOR_BODY,
        Scope::Tenant(_) => MAX_BODY,
    };
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let detail = format!("the body must be at most {limit} bytes for this token");
            return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", detail).response();
        }
    };
    let call = tenants::Call {
        registry: registry.clone(),
        audit: audit.clone(),
        certs,
        caller,
        request: format!("{} {path}", parts.method),
        method: parts.method,
        headers: parts.headers,
        query: parts.uri.query().unwrap_or("").to_string(),
        body,
    };
    let (who, request, write) = (
        call.caller.name.clone(),
        call.request.clone(),
        call.method != Method::GET,
    );
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let tenants: Vec<String> = match segments.as_slice() {
        ["v1", "tenants", id] => vec![id.to_string()],
        _ => Vec::new(),
    };
    match call.route(&segments).await {
        Ok(resp) => resp,
        Err(p) => {
            // Writes refused before reaching the registry (scope, body) are
            // rejected attempts too.
            if write && !p.audited && p.status != StatusCode::NOT_FOUND {
                let (audit, status, detail) = (audit.clone(), p.status.as_u16(), p.detail.clone());
                let recorded = tokio::task::spawn_blocking(move || {
                    audit.record(&audit::Entry {
                        who: &who,
                        request: &request,
                        tenants: &tenants,
                        status: Some(status),
                        generation: None,
                        diff: &[],
                        problem: Some(&detail),
                    })
                });
                if recorded.await.is_err() {
                    tracing::error!("audit task failed");
                }
            }
            p.response()
        }
    }
}
