//! The operator admin API: HTTP/JSON on `[gateway] admin_listen`, served by
//! hyper on its own listener, away from the request path.
//!
//! Every write goes through [`Registry::write`]: validated like a config
//! load, persisted as tenant files, swapped in before the response.

mod audit;
pub mod auth;
mod changes;
mod domains;
mod idempotency;
mod lifecycle;
mod limit;
mod patch;
mod pools;
mod preview;
mod problem;
mod request;
mod rollouts;
mod stats;
mod templates;
mod tenants;
mod versions;
mod write;

use std::sync::Arc;

use async_trait::async_trait;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::json;

pub use audit::Audit;
pub use domains::Certs;
pub use problem::{Body, Problem};
pub use request::{route_methods, PATHS};
pub use stats::replica_summary;

use crate::config::{Listening, Scope};
use crate::listener::{self, BodyError, Handler};
use crate::registry::Registry;
use request::{Query, Route};

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
    /// Domain claims and the event log.
    pub lifecycle: Arc<crate::domains::verifier::Lifecycle>,
    /// Bound in `server::serve`, so that a taken port fails the start.
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for AdminApi {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(listener) = listener::take(&self.listener) else {
            tracing::error!("admin API listener unavailable");
            return;
        };
        let admin = self.registry.snapshot().config.admin.clone();
        let limits = admin.listening;
        self.audit.set_max_bytes(admin.audit_max_bytes);
        // The console's time series: one point per window, whatever the traffic.
        let top = self.registry.metrics().top.clone();
        let mut sampler_stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => top.sample(),
                    _ = sampler_stop.changed() => return,
                }
            }
        });
        let api = Arc::new(Api {
            registry: self.registry.clone(),
            audit: self.audit.clone(),
            certs: self.certs.clone(),
            lifecycle: self.lifecycle.clone(),
            limiter: Arc::new(limit::TokenLimiter::default()),
            keys: idempotency::Keys::default(),
            limits,
        });
        listener::serve("admin", listener, limits, api, shutdown).await;
    }
}

/// What every request of the API shares.
struct Api {
    registry: Arc<Registry>,
    audit: Arc<Audit>,
    certs: Option<Certs>,
    lifecycle: Arc<crate::domains::verifier::Lifecycle>,
    limiter: Arc<limit::TokenLimiter>,
    keys: idempotency::Keys,
    limits: Listening,
}

/// A claimed `Idempotency-Key` whose answer is not kept yet: freed if the
/// request is dropped before it answers.
struct Pending<'a> {
    keys: &'a idempotency::Keys,
    id: Option<(String, String)>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(id) = &self.id {
            self.keys.abandon(id);
        }
    }
}

impl Handler for Api {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if crate::console::owns(req.uri().path()) {
            let (parts, body) = crate::console::answer(req.method(), req.uri().path()).into_parts();
            return Response::from_parts(parts, Body::new(body));
        }
        let read = matches!(*req.method(), Method::GET | Method::HEAD);
        let none_match = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut resp = self.serve(req).await;
        // JSON is never to be sniffed as a page, nor framed.
        let h = resp.headers_mut();
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
        match none_match {
            Some(tags) if read && resp.status() == StatusCode::OK => not_modified(resp, &tags),
            _ => resp,
        }
    }
}

/// `resp` as a `304 Not Modified` when its ETag is one of `tags` (or `tags` is `*`).
fn not_modified(resp: Response<Body>, tags: &str) -> Response<Body> {
    let Some(etag) = resp.headers().get(header::ETAG).cloned() else {
        return resp;
    };
    if !tenants::tag_listed(tags, etag.to_str().unwrap_or_default()) {
        return resp;
    }
    let mut out = Response::new(Body::default());
    *out.status_mut() = StatusCode::NOT_MODIFIED;
    out.headers_mut().insert(header::ETAG, etag);
    out
}

/// The OpenAPI document, committed as `src/admin/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

fn openapi() -> Response<Body> {
    let mut resp = Response::new(Body::new(bytes::Bytes::from_static(OPENAPI.as_bytes())));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl Api {
    /// One request, end to end.
    async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        let route = match Route::parse(req.uri().path()) {
            Ok(Some(r)) => r,
            Ok(None) => return Problem::not_found("no such resource; see /v1/openapi.json").response(),
            Err(p) => return p.response(),
        };
        if req.method() == Method::OPTIONS {
            let mut resp = Response::new(Body::default());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp.headers_mut().insert(header::ALLOW, route.allow_header());
            return resp;
        }
        if !route.allow().contains(req.method()) {
            return Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{} is not allowed here; see the Allow header", req.method()),
            )
            .header(header::ALLOW, route.allow_header())
            .response();
        }
        match route {
            Route::OpenApi => return openapi(),
            Route::Health => return problem::json_response(StatusCode::OK, &json!({"status": "ok"})),
            Route::Ready => {
                let generation = self.registry.snapshot().generation;
                return problem::json_response(StatusCode::OK, &json!({"status": "ready", "generation": generation}));
            }
            _ => {}
        }
        // A browser marks a request another site made it send: such a write
        // is refused before its token is even looked at (CSRF defence in
        // depth; the token is never a cookie, so a forged form has none).
        let cross_site = req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        if cross_site && !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Problem::forbidden("a write from another site is refused").response();
        }
        let caller = {
            let snap = self.registry.snapshot();
            match auth::authenticate(req.headers(), &snap.config.admin.tokens) {
                Ok(c) => c,
                Err(p) => return p.response(),
            }
        };
        let _slot = match self.limiter.admit(&caller.name, caller.limits) {
            Ok(s) => s,
            Err(p) => return p.response(),
        };
        let query = match Query::parse(req.uri().query()) {
            Ok(q) => q,
            Err(p) => return p.response(),
        };
        // HEAD is answered as GET; hyper sends the head only.
        let method = match req.method() {
            &Method::HEAD => Method::GET,
            m => m.clone(),
        };
        let request = format!("{} {}", method, req.uri().path());
        let write = method != Method::GET;
        let (parts, body) = req.into_parts();
        let body = match self.body(&route, &method, &parts.headers, &caller, body).await {
            Ok(b) => b,
            Err(p) => return self.refused(write, &caller.name, &request, &route, p).await,
        };
        let mut pending = Pending {
            keys: &self.keys,
            id: None,
        };
        if write {
            let key = match idempotency::key_of(&parts.headers) {
                Ok(k) => k,
                Err(p) => return p.response(),
            };
            if let Some(key) = key {
                let print = idempotency::fingerprint(&request, parts.uri.query().unwrap_or(""), &body);
                match self.keys.claim(&caller.name, &request, key, print) {
                    Ok(idempotency::Claim::Replay(resp)) => return resp,
                    Ok(idempotency::Claim::Run(id)) => pending.id = Some(id),
                    Err(p) => return p.response(),
                }
            }
        }
        let call = tenants::Call {
            registry: self.registry.clone(),
            audit: self.audit.clone(),
            certs: self.certs.clone(),
            lifecycle: self.lifecycle.clone(),
            caller: caller.clone(),
            request: request.clone(),
            method,
            headers: parts.headers,
            query,
            body,
        };
        let resp = match call.route(route.clone()).await {
            Ok(resp) => resp,
            Err(p) => self.refused(write, &caller.name, &request, &route, p).await,
        };
        let Some(id) = pending.id.take() else { return resp };
        let (parts, body) = resp.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        self.keys.finish(id, parts.status, &parts.headers, &bytes);
        Response::from_parts(parts, Body::new(bytes))
    }

    /// The request body, for the routes that take one: of the media type
    /// they take, within the token's size limit and the body timeout.
    async fn body(
        &self,
        route: &Route,
        method: &Method,
        headers: &http::HeaderMap,
        caller: &auth::Caller,
        body: Incoming,
    ) -> Result<bytes::Bytes, Problem> {
        let Some(want) = route.body_type(method) else {
            return Ok(bytes::Bytes::new());
        };
        request::check_media_type(headers, want)?;
        // Operators import and batch whole registries; a tenant edits one tenant.
        let limit = match caller.scope {
            Scope::Operator => MAX_OPERATOR_BODY,
            Scope::Tenant(_) => MAX_BODY,
        };
        listener::read_body(body, limit, self.limits.body_timeout)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(_) => Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    format!("the body must be at most {limit} bytes for this token"),
                ),
                BodyError::Timeout(_) => Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the body was not received in time",
                )
                .header(header::CONNECTION, HeaderValue::from_static("close")),
                BodyError::Read(_) => Problem::bad_request("the body could not be read"),
            })
    }

    /// The answer to a refused request. Writes refused before reaching the
    /// registry (scope, body) are rejected attempts too, and audited.
    async fn refused(&self, write: bool, who: &str, request: &str, route: &Route, p: Problem) -> Response<Body> {
        if write && !p.audited && p.status != StatusCode::NOT_FOUND {
            let tenants: Vec<String> = route.tenant().map(str::to_string).into_iter().collect();
            let (audit, status, detail) = (self.audit.clone(), p.status.as_u16(), p.detail.clone());
            let (who, request) = (who.to_string(), request.to_string());
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
