//! The pingora hooks. Reading [`Gateway`]'s `ProxyHttp` impl top to bottom
//! tells the whole request story:
//!
//! 1. `request_filter`: find the authority, resolve the tenant, or answer
//!    400/421 here. Nothing unresolved goes further.
//! 2. `upstream_peer`: pick an upstream of the tenant's pool.
//! 3. `fail_to_connect`: mark it down and retry the next one.
//! 4. `upstream_request_filter`: strip spoofable headers, add the trusted ones.
//! 5. `logging`: metrics and the access log line.

mod authority;
pub mod forward;
pub mod lean;
pub mod pool;
mod respond;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::acme::Challenges;
use crate::limits::{Admission, Permit, Refusal, SystemClock};
use crate::registry::{Registry, Snapshot};
use crate::routing::{self, HostError, Match, Unresolved};
use crate::telemetry::{Metrics, Rejection};
use crate::tls::certs::name_covers;
use crate::tls::SniBook;
use authority::BadAuthority;
use lean::ACME_CHALLENGE_PREFIX;
use pool::{Tried, Upstream};

/// The tenant-routing proxy.
pub struct Gateway {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Whether requests arrive over TLS (sets `x-forwarded-proto`).
    https: bool,
    /// Handshake results of live TLS connections (TLS listener only).
    sni: Option<Arc<SniBook>>,
    challenges: Arc<Challenges>,
    /// Port of the running TLS listener, the target of 308 redirects. Taken
    /// at start-up: a reload cannot open a listener, so it cannot move this.
    https_port: Option<u16>,
}

impl Gateway {
    /// The proxy for the plain-HTTP listener; `https_port` is the running
    /// TLS listener's port, if any.
    pub fn plain(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        challenges: Arc<Challenges>,
        https_port: Option<u16>,
    ) -> Self {
        Gateway {
            registry,
            metrics,
            https: false,
            sni: None,
            challenges,
            https_port,
        }
    }

    /// The proxy behind the TLS acceptor.
    pub fn tls(registry: Arc<Registry>, metrics: Arc<Metrics>, challenges: Arc<Challenges>, sni: Arc<SniBook>) -> Self {
        Gateway {
            registry,
            metrics,
            https: true,
            sni: Some(sni),
            challenges,
            https_port: None,
        }
    }
}

impl Gateway {
    /// Answers 4xx itself; the request never reaches a backend.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rejection: Rejection,
        body: &'static str,
    ) -> Result<bool> {
        self.metrics.reject(rejection);
        ctx.rejection = Some((rejection, body));
        let (status, close) = rejection_status(rejection);
        respond::plain(session, status, body, close).await?;
        Ok(true)
    }

    /// TLS-listener Host checks and the plain-listener redirect. `Some` when
    /// the request was answered here. The Host check holds on the TLS
    /// listener even after a reload removed `[tls]` (the listener keeps
    /// running until a restart).
    async fn tls_rules(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        host: &str,
        m: Match,
    ) -> Result<Option<bool>> {
        if self.https {
            let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
            if !self.sni_allows(peer, snap, host, m) {
                return self
                    .refuse(session, ctx, Rejection::SniMismatch, SNI_MISMATCH_BODY)
                    .await
                    .map(Some);
            }
        } else {
            let target = session.req_header().uri.path_and_query().map_or("/", |p| p.as_str());
            if let Some(location) = self.redirect(snap, host, m, target) {
                respond::redirect(session, &location).await?;
                return Ok(Some(true));
            }
        }
        Ok(None)
    }

    /// On the plain listener: where to send a request the tenant (or
    /// `[tls] redirect_http`) wants on HTTPS, if so.
    fn redirect(&self, snap: &Snapshot, host: &str, m: Match, target: &str) -> Option<String> {
        let (port, tls) = (self.https_port?, snap.config.tls.as_ref()?);
        let redirect = snap
            .config
            .tenants
            .get(m.tenant as usize)
            .and_then(|t| t.redirect_https);
        redirect
            .unwrap_or(tls.redirect_http)
            .then(|| https_location(host, port, target))
    }

    /// Resolves the tenant from the request's authority, or says why not.
    /// The normalised host comes back only when the TLS rules need it
    /// (no copy otherwise).
    fn route(
        &self,
        snap: &Snapshot,
        authority: Result<&str, BadAuthority>,
    ) -> Result<(Option<String>, Match), (Rejection, &'static str)> {
        let host = match authority {
            Ok(a) => routing::request_host(a).map_err(unresolved_body)?,
            Err(e) => return Err(bad_authority_body(e)),
        };
        let m = snap
            .table
            .lookup(&host)
            .ok_or((Rejection::UnknownHost, UNKNOWN_HOST_BODY))?;
        // The TLS rules hold on the TLS listener even after a reload
        // removed [tls].
        Ok(((self.https || snap.config.tls.is_some()).then(|| host.into_owned()), m))
    }

    /// The tenant's limits for one request: `Ok(None)` when it has none.
    /// A refusal is counted here.
    async fn limit(
        &self,
        snap: &Snapshot,
        m: Match,
        client: Option<std::net::IpAddr>,
    ) -> Result<Option<Admission>, Refusal> {
        let Some(tenant) = snap.tenant(m.tenant) else {
            return Ok(None);
        };
        let (Some(state), Some(limits)) = (
            &tenant.limiter,
            snap.config
                .tenants
                .get(m.tenant as usize)
                .and_then(|t| t.limits.as_ref()),
        ) else {
            return Ok(None);
        };
        let admitted = match self.registry.book().fleet() {
            Some(fleet) => fleet.admit(&tenant.id, state, limits, client, &SystemClock).await,
            None => state.admit(limits, client, &SystemClock),
        };
        admitted
            .map(Some)
            .inspect_err(|refusal| tenant.limit_counters.reject(refusal.violation))
    }

    /// Metrics and the access log line for one finished request.
    fn record(&self, snap: &Snapshot, o: &Outcome<'_>) {
        let elapsed = o.start.elapsed();
        let access_log = snap.config.telemetry.access_log;
        let (status, method, path) = (o.status, o.method, o.path);
        let Some(route) = o.route else {
            if access_log {
                let reason = o.rejection.map_or("none", Rejection::as_str);
                tracing::info!(target: "access", decision = "rejected", reason, status, method, path, duration_ms = elapsed.as_secs_f64() * 1e3);
            }
            return;
        };
        let Some(tenant) = snap.tenant(route.tenant) else {
            return;
        };
        let pool = snap.pool_of(tenant);
        if status > 0 {
            tenant.counters.observe(status);
        }
        if let Some(p) = pool {
            p.metrics.duration.observe(elapsed.as_secs_f64());
            if o.error.is_some() && status >= 500 && o.upstream.is_some() {
                p.metrics.proxy_errors.inc();
            }
        }
        if access_log {
            tracing::info!(
                target: "access",
                decision = "routed",
                tenant = &*tenant.id,
                match_kind = route.kind.as_str(),
                pool = pool.map_or("", |p| &*p.name),
                upstream = o.upstream.map(tracing::field::display),
                status,
                method,
                path,
                request_id = o.request_id,
                generation = snap.generation,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                error = o.error.map(tracing::field::display),
            );
        }
    }

    /// Applies the tenant's limits: concurrency, rate, quotas (shared
    /// through the fleet's store in fleet mode). A refusal is answered here
    /// with 429 (503 for a fail-closed tenant whose store is down) and never
    /// reaches a backend.
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx, snap: &Snapshot, m: Match) -> Result<bool> {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        match self.limit(snap, m, client).await {
            Ok(admission) => {
                if let Some(a) = admission {
                    ctx.permit = a.permit;
                    ctx.ratelimit = a.header;
                }
                Ok(false)
            }
            Err(refusal) => {
                let policy = snap.tenant(m.tenant).and_then(|t| t.policy_header.as_ref());
                respond::limited(session, &refusal, policy, refusal.problem_body()).await?;
                Ok(true)
            }
        }
    }

    /// Serves an HTTP-01 key authorization for a pending order, or 404.
    async fn answer_challenge(&self, session: &mut Session, ctx: &mut RequestCtx, token: &str) -> Result<bool> {
        let host = authority::authority(session.req_header(), session.is_http2())
            .ok()
            .and_then(|a| routing::request_host(a).ok().map(|h| h.into_owned()));
        match host.and_then(|h| self.challenges.answer(token, &h)) {
            Some(key_authorization) => {
                respond::plain(session, 200, key_authorization, false).await?;
                Ok(true)
            }
            None => {
                self.refuse(session, ctx, Rejection::UnknownChallenge, UNKNOWN_CHALLENGE_BODY)
                    .await
            }
        }
    }

    /// On the TLS listener: whether `host` may be served on the connection
    /// from `peer`, under `[tls] strict_sni_host` (on when `[tls]` is gone).
    fn sni_allows(&self, peer: Option<std::net::SocketAddr>, snap: &Snapshot, host: &str, m: Match) -> bool {
        let strict = snap.config.tls.as_ref().is_none_or(|t| t.strict_sni_host);
        !strict || self.handshake_covers(peer, snap, host, m)
    }

    /// Whether the TLS handshake of the connection from `peer` covers
    /// `host`: the same name as the SNI, or a name the served certificate
    /// covers that routes to the same tenant.
    fn handshake_covers(&self, peer: Option<std::net::SocketAddr>, snap: &Snapshot, host: &str, m: Match) -> bool {
        let Some(book) = &self.sni else { return false };
        let Some(n) = peer.and_then(|a| book.get(&a)) else {
            return false;
        };
        if *n.sni == *host {
            return true;
        }
        let same_tenant = snap.table.lookup(&n.sni).is_some_and(|s| s.tenant == m.tenant);
        same_tenant && n.cert_names.iter().any(|c| name_covers(c, host))
    }
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    /// The generation this request runs on, from start to end.
    snapshot: Option<Arc<Snapshot>>,
    route: Option<Match>,
    rejection: Option<(Rejection, &'static str)>,
    tried: Tried,
    /// The upstream of the current attempt, and its index in the pool.
    upstream: Option<(usize, Arc<Upstream>)>,
    /// The tenant's in-flight slot, released when the request ends.
    permit: Option<Permit>,
    /// The `RateLimit` header for the response.
    ratelimit: Option<HeaderValue>,
    /// The request id sent to the backend, kept only for the access log.
    request_id: Option<HeaderValue>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules. pingora's default adds response compression
    /// at level 0, which does nothing but costs a module context and two
    /// boxed futures per request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            snapshot: None,
            route: None,
            rejection: None,
            tried: Tried::default(),
            upstream: None,
            permit: None,
            ratelimit: None,
            request_id: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // A guard for this hook, and one reference for the request's life:
        // one shared atomic increment instead of two.
        let snap = self.registry.snapshot_guard();
        ctx.snapshot = Some(Arc::clone(&snap));
        if !self.https {
            if let Some(token) = session.req_header().uri.path().strip_prefix(ACME_CHALLENGE_PREFIX) {
                let token = token.to_string();
                return self.answer_challenge(session, ctx, &token).await;
            }
        }
        let resolved = self.route(&snap, authority::authority(session.req_header(), session.is_http2()));
        let (host, m) = match resolved {
            Ok(r) => r,
            Err((rejection, body)) => return self.refuse(session, ctx, rejection, body).await,
        };
        ctx.route = Some(m);
        if let Some(host) = &host {
            if let Some(done) = self.tls_rules(session, ctx, &snap, host, m).await? {
                return Ok(done);
            }
        }
        self.admit(session, ctx, &snap, m).await
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut pingora_http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let policy = ctx
            .snapshot
            .as_ref()
            .zip(ctx.route)
            .and_then(|(s, m)| s.tenant(m.tenant))
            .and_then(|t| t.policy_header.clone());
        if let Some(p) = policy {
            upstream_response.insert_header("ratelimit-policy", p)?;
        }
        if let Some(r) = ctx.ratelimit.take() {
            upstream_response.insert_header("ratelimit", r)?;
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let (snap, route) = match (&ctx.snapshot, ctx.route) {
            (Some(s), Some(r)) => (s, r),
            _ => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "upstream_peer without a route",
                ))
            }
        };
        let pool = snap
            .tenant(route.tenant)
            .and_then(|t| snap.pool_of(t))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "tenant or pool missing from snapshot"))?;
        let (index, upstream) = pool
            .select(&ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "every upstream of the pool failed"))?;
        ctx.upstream = Some((index, upstream.clone()));
        let t = &snap.config.gateway.timeouts;
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(t.idle);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(snap), Some(route), Some((index, up))) = (&ctx.snapshot, ctx.route, &ctx.upstream) {
            up.mark_down(snap.config.gateway.upstream_down);
            ctx.tried.add(*index);
            if let Some(pool) = snap.tenant(route.tenant).and_then(|t| snap.pool_of(t)) {
                pool.metrics.connect_errors.inc();
                let limit = pool.upstreams.len().min(64) as u32;
                if ctx.tried.count() < limit {
                    e.set_retry(true);
                }
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(snap), Some(route)) = (&ctx.snapshot, ctx.route) else {
            return Err(Error::explain(ErrorType::InternalError, "forwarding without a route"));
        };
        let tenant = snap
            .tenant(route.tenant)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "tenant missing from snapshot"))?;
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let authority = authority::authority(session.req_header(), session.is_http2()).unwrap_or_default();
        let origin = forward::Origin {
            client_ip,
            authority,
            https: self.https,
        };
        ctx.request_id = forward::rewrite(
            upstream_request,
            &snap.config.gateway,
            &tenant.header_value,
            &origin,
            snap.config.telemetry.access_log,
        )?;
        Ok(())
    }

    /// A client that hangs up is not an operator's error: keep it out of the
    /// error log (the access log still records the request).
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        downstream_gone(error)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut RequestCtx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream if downstream_gone(e) => 0,
                ErrorSource::Downstream => 400,
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            if let Err(write) = session.respond_error(code).await {
                tracing::debug!(error = %write, "client gone before the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(snap) = &ctx.snapshot else { return };
        let request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok());
        let outcome = Outcome {
            start: ctx.start,
            route: ctx.route,
            rejection: ctx.rejection.map(|(r, _)| r),
            upstream: ctx.upstream.as_ref().map(|(_, u)| u.addr),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            method: session.req_header().method.as_str(),
            path: session.req_header().uri.path(),
            request_id,
            error: e.map(|e| e as &(dyn std::fmt::Display + Sync)),
        };
        self.record(snap, &outcome);
    }
}

/// How one request ended, for metrics and the access log.
struct Outcome<'a> {
    start: Instant,
    route: Option<Match>,
    rejection: Option<Rejection>,
    upstream: Option<std::net::SocketAddr>,
    /// 0 when no response was written.
    status: u16,
    method: &'a str,
    path: &'a str,
    request_id: Option<&'a str>,
    error: Option<&'a (dyn std::fmt::Display + Sync)>,
}

impl<'a> Outcome<'a> {
    /// A request that starts now, with nothing decided yet.
    fn begin(method: &'a str, path: &'a str) -> Self {
        Outcome {
            start: Instant::now(),
            route: None,
            rejection: None,
            upstream: None,
            status: 0,
            method,
            path,
            request_id: None,
            error: None,
        }
    }
}

/// The status of a rejection, and whether the connection closes after it.
fn rejection_status(r: Rejection) -> (u16, bool) {
    match r {
        Rejection::UnknownHost | Rejection::SniMismatch => (421, false),
        Rejection::BadHost => (400, true),
        Rejection::UnknownChallenge => (404, false),
    }
}

/// Whether an error only means the client went away.
fn downstream_gone(e: &Error) -> bool {
    *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed | ErrorType::H2Error
        )
}

const UNKNOWN_HOST_BODY: &str = "421 Misdirected Request: this host is not served here\n";
const SNI_MISMATCH_BODY: &str = "421 Misdirected Request: Host is not covered by this connection's TLS name\n";
const UNKNOWN_CHALLENGE_BODY: &str = "404 Not Found: no pending ACME challenge for this token\n";

fn unresolved_body(e: Unresolved) -> (Rejection, &'static str) {
    match e {
        Unresolved::BadHost(e) => bad_host_body(e),
        Unresolved::UnknownHost => (Rejection::UnknownHost, UNKNOWN_HOST_BODY),
    }
}

/// `https://host[:port]/path`, the port omitted when it is 443.
fn https_location(host: &str, port: u16, path_and_query: &str) -> String {
    if port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{port}{path_and_query}")
    }
}

fn bad_authority_body(e: BadAuthority) -> (Rejection, &'static str) {
    let body = match e {
        BadAuthority::Missing => "400 Bad Request: missing Host header\n",
        BadAuthority::Empty => "400 Bad Request: empty Host header\n",
        BadAuthority::Several => "400 Bad Request: several Host headers\n",
        BadAuthority::NotAscii => "400 Bad Request: Host header is not visible ASCII\n",
        BadAuthority::Mismatch => "400 Bad Request: request target authority differs from Host\n",
    };
    (Rejection::BadHost, body)
}

fn bad_host_body(e: HostError) -> (Rejection, &'static str) {
    let body = match e {
        HostError::Empty => "400 Bad Request: empty host name\n",
        HostError::Port => "400 Bad Request: malformed port in Host\n",
        HostError::Path => "400 Bad Request: Host contains a path\n",
        HostError::IpAddress => UNKNOWN_HOST_BODY,
        HostError::TooLong => "400 Bad Request: host name too long\n",
        HostError::BadLabel => "400 Bad Request: empty or over-long label in Host\n",
        HostError::InvalidCharacters => "400 Bad Request: invalid characters in Host\n",
    };
    (Rejection::BadHost, body)
}
