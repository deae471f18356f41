//! The one policy: every request, HTTP/1.1 or HTTP/2, is decided here and
//! nowhere else. It sees only protocol-neutral facts (method, target,
//! authority, the connection's peer and TLS facts) and returns a
//! [`Decision`]; the protocol halves (`h1`, `h2`) carry it out. No sockets
//! here, so every rule is unit-tested without one.
//!
//! The order of the checks:
//!
//! 1. `CONNECT` → 405; a target that is not origin-form (or `*` for
//!    `OPTIONS`) → 400.
//! 2. Plain listener: `/.well-known/acme-challenge/<token>` → the key
//!    authorization of a pending order, else 404.
//! 3. The authority (Host, or `:authority`) → the tenant, or 400/421.
//!    There is no default: an unknown host is never forwarded. On a shared
//!    host the normalised path's longest claimed prefix names the tenant
//!    (an ambiguous path 400; an unclaimed one 404, or the host's
//!    `platform_pool`). On a header host the trusted tenant header names
//!    it (from a listed source only: 403; missing 400, unknown 421).
//!    Host, path and header must agree, or 403 `tenant-mismatch`.
//! 4. TLS listener: the Host must be covered by the connection's SNI or
//!    certificate (same tenant), else 421. Plain listener: 308 to HTTPS
//!    when the tenant (or `[tls] redirect_http`) wants it.
//! 5. The tenant's profile ([`super::profile`]): another region than
//!    `[gateway] region` → 421; `tenant.json` → answered here; a path gated
//!    by a feature it lacks → 404; maintenance → 503 (allow-list passes).
//! 6. The tenant's JWT (`jwt = "optional"|"required"`): an invalid token,
//!    or none when required, 401 with `WWW-Authenticate: Bearer`; a valid
//!    token whose tenant claim names another tenant, 403 `tenant-mismatch`.
//!    Every identity refusal is counted and logged; subjects and addresses
//!    seen on too many tenants are reported ([`Spread`]).
//! 7. The tenant's limits: concurrency, client share, rate, quotas → 429
//!    (503 for a fail-closed store outage).
//! 8. Forward to the tenant's pool, with the trusted headers
//!    ([`super::headers::Trusted`]): tenant, token subject, the stripped
//!    prefix and the profile.
//!
//! The gateway's own 429, 502, 503, 504 and maintenance answers are
//! branded for the client that asks ([`super::pages`]).
//!
//! After the exchange, [`Policy::record`] counts it and writes the access
//! log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use super::authority::BadAuthority;
use super::headers::Trusted;
use super::pages::{Branded, Prefs};
use super::pool::Pool;
use super::ConnFacts;
use crate::acme::Challenges;
use crate::config::identity::{JwtMode, TokenFrom};
use crate::config::pages::Page;
use crate::config::PoolId;
use crate::domains::verifier::Lifecycle;
use crate::domains::HTTP_PROOF_PREFIX;
use crate::limits::{Admission, Refusal, SystemClock};
use crate::registry::{Registry, Snapshot, Tenant};
use crate::routing::jwt::{self, TokenError};
use crate::routing::paths::{normalize_path, PathError};
use crate::routing::MatchKind;
use crate::routing::{self, HostError, Match, TenantIdx, Unresolved};
use crate::telemetry::spread::Spread;
use crate::telemetry::top;
use crate::telemetry::NO_TENANT;
use crate::telemetry::{Metrics, Rejection};
use crate::tls::certs::name_covers;

/// The ACME HTTP-01 path prefix.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Decides requests for one listener.
pub struct Policy {
    pub(super) registry: Arc<Registry>,
    pub(super) metrics: Arc<Metrics>,
    challenges: Arc<Challenges>,
    /// Pending domain claims, for the HTTP ownership proof.
    lifecycle: Option<Arc<Lifecycle>>,
    /// Port of the running TLS listener, the target of 308 redirects. Taken
    /// at start-up: a reload cannot open a listener, so it cannot move this.
    https_port: Option<u16>,
    /// Subjects and client addresses seen on many tenants (outlives reloads).
    spread: Spread,
}

/// A request's header fields, whatever the protocol.
pub trait HeaderSource: Sync {
    /// Every value of the field `name` (lowercase), in order.
    fn all<'s>(&'s self, name: &'s str) -> Box<dyn Iterator<Item = &'s [u8]> + 's>;
}

impl HeaderSource for &[httparse::Header<'_>] {
    fn all<'s>(&'s self, name: &'s str) -> Box<dyn Iterator<Item = &'s [u8]> + 's> {
        Box::new(
            self.iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value),
        )
    }
}

impl HeaderSource for http::HeaderMap {
    fn all<'s>(&'s self, name: &'s str) -> Box<dyn Iterator<Item = &'s [u8]> + 's> {
        Box::new(self.get_all(name).into_iter().map(HeaderValue::as_bytes))
    }
}

/// The one value of field `name`: `Ok(None)` when absent, `Err` when given
/// more than once.
fn single<'h>(headers: &'h dyn HeaderSource, name: &'h str) -> Result<Option<&'h [u8]>, ()> {
    let mut values = headers.all(name);
    let first = values.next();
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

/// One request, as the policy sees it.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// The target as forwarded: origin-form (`/path?query`), or `*`.
    pub target: &'a str,
    /// Host (or HTTP/2 `:authority`), checked against an absolute-form
    /// target.
    pub authority: Result<&'a str, BadAuthority>,
    pub conn: &'a ConnFacts,
    /// `Accept`, `Accept-Language`, `If-None-Match`.
    pub prefs: Prefs<'a>,
    /// The client's header fields (tokens, the trusted tenant header).
    pub headers: &'a dyn HeaderSource,
}

/// A response of the gateway's own.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: bytes::Bytes,
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// Close the HTTP/1.1 connection after it (a malformed request).
    pub close: bool,
}

impl Answer {
    pub fn text(status: u16, body: &'static str, close: bool) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: bytes::Bytes::from_static(body.as_bytes()),
            headers: Vec::new(),
            close,
        }
    }

    /// `status` with its reason phrase as the body (a 502 or 504 of the
    /// gateway's own); the HTTP/1.1 connection closes after it.
    pub fn failure(status: u16) -> Answer {
        let mut a = Answer::text(status, "", true);
        a.body = format!("{status} {}\n", reason(status)).into();
        a
    }

    /// A refusal, counted under `rejection`.
    fn rejection(rejection: Rejection, body: &'static str) -> Answer {
        Answer::text(rejection.status(), body, rejection.closes())
    }
}

/// The canonical reason phrase of `status`.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// What the policy decided for one request.
// Forward is large (trusted headers, branded pages, the new target), but a
// decision is made and moved once per request: boxing it would cost an
// allocation per request for a short stack copy saved.
#[allow(clippy::large_enum_variant)]
pub enum Decision<'s> {
    Answer(Answer),
    Forward(Forward<'s>),
}

/// Forward to `pool` as `tenant` (none for a shared host's platform pool),
/// holding the limiter's admission until the exchange ends.
pub struct Forward<'s> {
    pub tenant: Option<&'s Tenant>,
    pub pool: &'s Pool,
    pub admission: Option<Admission>,
    /// What the backend is told about the request ([`super::headers`]).
    pub trusted: Trusted<'s>,
    /// The tenant's 502 and 504, as the client asks for them (none for a
    /// shared host's platform pool: plain answers).
    pub branded: Option<Branded<'s>>,
    /// The target to send instead of the client's: on a shared host, the
    /// normalised path (without the prefix under `strip_prefix`) and query.
    pub target: Option<String>,
}

impl Forward<'_> {
    /// The rate-limit headers a forwarded response gets, as `(name, value)`
    /// pairs without an allocation or a copy: the first `n`.
    pub fn limit_headers(&self) -> ([(&'static str, &HeaderValue); 2], usize) {
        static NONE: HeaderValue = HeaderValue::from_static("");
        let mut pairs = [("", &NONE); 2];
        let mut n = 0;
        let ratelimit = self.admission.as_ref().and_then(|a| a.header.as_ref());
        for (name, value) in [
            ("ratelimit-policy", self.tenant.and_then(|t| t.policy_header.as_ref())),
            ("ratelimit", ratelimit),
        ] {
            if let Some(v) = value {
                pairs[n] = (name, v);
                n += 1;
            }
        }
        (pairs, n)
    }
}

/// How one request ended, for metrics and the access log.
pub struct Outcome<'a> {
    pub start: Instant,
    pub route: Option<Match>,
    pub rejection: Option<Rejection>,
    pub upstream: Option<SocketAddr>,
    /// The client's address (a trusted PROXY header's source).
    pub client: Option<SocketAddr>,
    /// 0 when no response was written.
    pub status: u16,
    pub method: &'a str,
    /// The target's path as received.
    pub path: &'a str,
    pub request_id: Option<&'a str>,
    pub error: Option<&'a (dyn std::fmt::Display + Sync)>,
    /// The tenant limit that refused the request (`Violation::as_str`).
    pub limit: Option<&'static str>,
}

impl<'a> Outcome<'a> {
    /// A request that starts now, with nothing decided yet.
    pub fn begin(method: &'a str, path: &'a str) -> Self {
        Outcome {
            start: Instant::now(),
            route: None,
            rejection: None,
            upstream: None,
            client: None,
            status: 0,
            method,
            path,
            request_id: None,
            error: None,
            limit: None,
        }
    }
}

impl Policy {
    /// The policy of a listener; `https_port` is the running TLS listener's
    /// port, if any (the target of redirects from the plain one).
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        challenges: Arc<Challenges>,
        https_port: Option<u16>,
    ) -> Self {
        Policy {
            registry,
            metrics,
            challenges,
            lifecycle: None,
            https_port,
            spread: Spread::default(),
        }
    }

    /// With the domain lifecycle: answers the HTTP ownership proof of
    /// pending claims (when `[domains] methods` allows it).
    pub fn with_lifecycle(mut self, lifecycle: Arc<Lifecycle>) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }

    /// The registry this policy decides against.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A refusal the parser of a protocol half found before any routing
    /// (counted and recorded in `o`).
    pub fn refuse(&self, rejection: Rejection, body: &'static str, o: &mut Outcome<'_>) -> Answer {
        self.metrics.reject(rejection);
        o.rejection = Some(rejection);
        Answer::rejection(rejection, body)
    }

    /// Decides one request. Records the route or the rejection in `o`.
    pub async fn decide<'s>(&self, snap: &'s Snapshot, req: &RequestFacts<'s>, o: &mut Outcome<'_>) -> Decision<'s> {
        o.client = req.conn.peer;
        if req.method == "CONNECT" {
            return Decision::Answer(self.refuse(Rejection::Method, CONNECT_BODY, o));
        }
        if !(req.target.starts_with('/') || (req.target == "*" && req.method == "OPTIONS")) {
            return Decision::Answer(self.refuse(Rejection::BadRequest, BAD_TARGET_BODY, o));
        }
        let https = req.conn.tls.is_some();
        if !https {
            if let Some(token) = req.target.strip_prefix(ACME_CHALLENGE_PREFIX) {
                return Decision::Answer(self.challenge(req.authority, token, o));
            }
            if let Some(token) = req.target.strip_prefix(HTTP_PROOF_PREFIX) {
                if let Some(a) = self.ownership_proof(snap, req.authority, token) {
                    return Decision::Answer(a);
                }
            }
        }
        let host = match req.authority {
            Ok(a) => routing::request_host(a).map_err(unresolved_body),
            Err(e) => Err(bad_authority_body(e)),
        };
        let host = match host {
            Ok(h) => h,
            Err((rejection, body)) => return Decision::Answer(self.refuse(rejection, body, o)),
        };
        let routed = match self.resolve(snap, &host, req, o) {
            Ok(r) => r,
            Err(a) => return Decision::Answer(a),
        };
        let (m, path) = match routed {
            Routed::Tenant(m, path) => (m, path),
            Routed::Platform(pool, target) => return self.platform(snap, req, &host, pool, target, o),
        };
        o.route = Some(m);
        // The TLS rules hold on the TLS listener even after a reload
        // removed [tls].
        if https && !sni_allows(req.conn, snap, &host, m) {
            return Decision::Answer(self.refuse(Rejection::SniMismatch, SNI_MISMATCH_BODY, o));
        }
        if !https && snap.config.tls.is_some() {
            if let Some(location) = self.redirect(snap, &host, m, req.target) {
                let mut a = Answer::text(308, "308 Permanent Redirect: use HTTPS\n", false);
                a.headers
                    .extend(HeaderValue::from_str(&location).ok().map(|l| ("location", l)));
                return Decision::Answer(a);
            }
        }
        let found = snap
            .tenant(m.tenant)
            .and_then(|t| Some((t, snap.pool_of(t)?, snap.config.tenants.get(m.tenant as usize)?)));
        let Some((tenant, pool, spec)) = found else {
            tracing::error!("routed tenant or its pool missing from the snapshot");
            return Decision::Answer(Answer::text(500, "500 Internal Server Error\n", true));
        };
        let branded = Branded {
            tenant: spec,
            pages: &snap.config.profile.pages,
            prefs: req.prefs,
        };
        if let Some(a) = self.profile_answer(snap, tenant, spec, &branded, req, o) {
            return Decision::Answer(a);
        }
        let user = match self.check_token(snap, tenant, m, req).await {
            Ok(user) => user,
            Err(a) => return Decision::Answer(a),
        };
        let (target, prefix) = match path {
            Some(p) => p.target(tenant.strip_prefix),
            None => (None, None),
        };
        let peer = req.conn.peer;
        match self.limit(snap, tenant, m, peer.map(|p| p.ip())).await {
            Ok(admission) => Decision::Forward(Forward {
                tenant: Some(tenant),
                pool,
                admission,
                trusted: Trusted {
                    gw: &snap.config.gateway,
                    identity: &snap.config.identity,
                    tenant: Some(&tenant.header_value),
                    user,
                    prefix,
                    client_ip: peer.map(|p| p.ip()),
                    authority: req.authority.unwrap_or_default(),
                    https,
                    profile: &tenant.edge.headers,
                    profile_names: &snap.config.profile.headers,
                },
                branded: Some(branded),
                target,
            }),
            Err(refusal) => {
                o.limit = Some(refusal.violation.as_str());
                let page = match refusal.status() {
                    429 => Page::TooManyRequests,
                    _ => Page::Unavailable,
                };
                Decision::Answer(branded.answer(
                    page,
                    limited(tenant, &refusal),
                    u32::try_from(refusal.retry_after).ok(),
                ))
            }
        }
    }

    /// A shared host's unclaimed path: its platform pool (no tenant
    /// header, no limits), or 404.
    fn platform<'s>(
        &self,
        snap: &'s Snapshot,
        req: &RequestFacts<'s>,
        host: &str,
        pool: Option<PoolId>,
        target: String,
        o: &mut Outcome<'_>,
    ) -> Decision<'s> {
        let https = req.conn.tls.is_some();
        let strict = snap.config.tls.as_ref().is_none_or(|t| t.strict_sni_host);
        if https && strict && req.conn.tls.as_ref().is_some_and(|n| *n.sni != *host) {
            return Decision::Answer(self.refuse(Rejection::SniMismatch, SNI_MISMATCH_BODY, o));
        }
        let Some(pool) = pool.and_then(|p| snap.pools.get(p as usize)) else {
            self.metrics.identity_refusal(NO_TENANT, "unclaimed_path");
            return Decision::Answer(problem(
                404,
                "unclaimed-path",
                "Not Found",
                "no tenant claims this path on this host",
            ));
        };
        Decision::Forward(Forward {
            tenant: None,
            pool,
            admission: None,
            trusted: Trusted {
                gw: &snap.config.gateway,
                identity: &snap.config.identity,
                tenant: None,
                user: None,
                prefix: None,
                client_ip: req.conn.peer.map(|p| p.ip()),
                authority: req.authority.unwrap_or_default(),
                https,
                profile: &[],
                profile_names: &snap.config.profile.headers,
            },
            branded: None,
            target: Some(target),
        })
    }

    /// The tenant named by the host (or, on a shared host, the path) and
    /// by the trusted header on a header host: they must agree.
    fn resolve(
        &self,
        snap: &Snapshot,
        host: &str,
        req: &RequestFacts<'_>,
        o: &mut Outcome<'_>,
    ) -> Result<Routed, Answer> {
        let mut path = None;
        let mut unclaimed = None;
        let by_host = match snap.table.paths.shared(host) {
            Some(shared) => {
                let (p, query) = match req.target.split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (req.target, None),
                };
                let normal = match normalize_path(p) {
                    Ok(n) => n,
                    // `*` (OPTIONS) names no path: nobody's.
                    Err(PathError::NotAbsolute) => "*".into(),
                    Err(PathError::Ambiguous) => {
                        self.metrics.identity_refusal(NO_TENANT, "ambiguous_path");
                        return Err(problem(
                            400,
                            "ambiguous-path",
                            "Bad Request",
                            "the path holds an escape or character that backends read differently",
                        ));
                    }
                };
                match snap.table.paths.lookup(host, &normal) {
                    Some((tenant, prefix_len)) => {
                        path = Some(PathRoute {
                            normal: normal.into_owned(),
                            prefix_len,
                            query: query.map(str::to_string),
                        });
                        Some(Match {
                            tenant,
                            kind: MatchKind::Path,
                        })
                    }
                    None => {
                        let mut target = normal.into_owned();
                        if let Some(q) = query {
                            target.push('?');
                            target.push_str(q);
                        }
                        unclaimed = Some((shared.platform_pool, target));
                        None
                    }
                }
            }
            None => snap.table.lookup(host),
        };
        let header_hosts = &snap.config.identity.header_hosts;
        let by_header = match !header_hosts.is_empty() && header_hosts.contains(host) {
            true => Some(self.header_tenant(snap, req, o)?),
            false => None,
        };
        match (by_host, by_header) {
            (Some(m), Some(h)) if m.tenant != h => {
                let resolved = snap.tenant(m.tenant).map_or("", |t| &t.id);
                let claimed = snap.tenant(h).map_or("", |t| &t.id);
                o.route = Some(m);
                Err(self.mismatch(snap, m, resolved, claimed, None, req, "header"))
            }
            (Some(m), _) => Ok(Routed::Tenant(m, path)),
            (None, Some(tenant)) => Ok(Routed::Tenant(
                Match {
                    tenant,
                    kind: MatchKind::Header,
                },
                None,
            )),
            (None, None) => match unclaimed {
                Some((pool, target)) => Ok(Routed::Platform(pool, target)),
                None => Err(self.refuse(Rejection::UnknownHost, UNKNOWN_HOST_BODY, o)),
            },
        }
    }

    /// The tenant the trusted header names, on a header host.
    fn header_tenant(&self, snap: &Snapshot, req: &RequestFacts<'_>, o: &mut Outcome<'_>) -> Result<TenantIdx, Answer> {
        let identity = &snap.config.identity;
        let Some(name) = &identity.header else {
            return Err(self.refuse(Rejection::UnknownHost, UNKNOWN_HOST_BODY, o));
        };
        let from_source = req
            .conn
            .peer
            .is_some_and(|p| identity.header_sources.iter().any(|c| c.contains(p.ip())));
        if !from_source {
            self.metrics.identity_refusal(NO_TENANT, "header_source");
            return Err(problem(
                403,
                "untrusted-source",
                "Forbidden",
                "this host takes requests from the listed sources only",
            ));
        }
        let value = match single(req.headers, name.as_str()) {
            Ok(Some(v)) => v,
            _ => {
                self.metrics.identity_refusal(NO_TENANT, "header_missing");
                return Err(problem(
                    400,
                    "tenant-header",
                    "Bad Request",
                    "exactly one tenant header naming the tenant is required on this host",
                ));
            }
        };
        let id = std::str::from_utf8(value).unwrap_or_default().trim();
        match snap.table.by_id(id) {
            Some(t) => Ok(t),
            None => {
                self.metrics.identity_refusal(NO_TENANT, "header_unknown");
                Err(problem(
                    421,
                    "unknown-tenant",
                    "Misdirected Request",
                    "the tenant header names no tenant served here",
                ))
            }
        }
    }

    /// The tenant's JWT check: the subject to forward (none without a
    /// token), or the refusal.
    async fn check_token(
        &self,
        snap: &Snapshot,
        tenant: &Tenant,
        m: Match,
        req: &RequestFacts<'_>,
    ) -> Result<Option<HeaderValue>, Answer> {
        let Some(verifier) = &tenant.jwt else {
            return Ok(None);
        };
        let label = self.tenant_label(snap, m);
        let token_from = snap
            .config
            .identity
            .jwt
            .as_ref()
            .map_or(&TokenFrom::Authorization, |j| &j.token_from);
        let token = match token_from {
            TokenFrom::Authorization => match single(req.headers, "authorization") {
                Ok(v) => v.map(|v| jwt::bearer(v).ok_or(())).transpose(),
                Err(()) => Err(()),
            },
            TokenFrom::Cookie(name) => Ok(req.headers.all("cookie").find_map(|v| jwt::cookie(v, name))),
        };
        let token = match token {
            Ok(Some(t)) => t,
            Ok(None) if tenant.jwt_mode == JwtMode::Optional => return Ok(None),
            Ok(None) => {
                self.metrics.identity_refusal(label, "missing_token");
                return Err(unauthorized(None));
            }
            Err(()) => {
                self.metrics.identity_refusal(label, "malformed");
                return Err(unauthorized(Some(&TokenError::Malformed)));
            }
        };
        let verified = match verifier.verify(token).await {
            Ok(v) => v,
            Err(TokenError::NoKeys) => {
                self.metrics.identity_refusal(label, "no_keys");
                tracing::warn!(target: "identity", tenant = &*tenant.id, "no JWT keys could be loaded; refusing tokens");
                let mut a = problem(
                    503,
                    "identity-unavailable",
                    "Service Unavailable",
                    "the keys to check tokens with cannot be loaded",
                );
                a.headers.push(("retry-after", HeaderValue::from_static("10")));
                return Err(a);
            }
            Err(e) => {
                self.metrics.identity_refusal(label, e.as_str());
                tracing::info!(target: "identity", tenant = &*tenant.id, reason = e.as_str(), client = req.conn.peer.map(tracing::field::display), "invalid token");
                return Err(unauthorized(Some(&e)));
            }
        };
        let subject = verified.subject.as_deref();
        match verified.tenant.as_deref() {
            Some(claimed) if claimed == &*tenant.id => {}
            Some(claimed) => {
                return Err(self.mismatch(snap, m, &tenant.id, claimed, subject, req, "jwt"));
            }
            None => {
                self.metrics.identity_refusal(label, "no_tenant_claim");
                return Err(unauthorized(Some(&TokenError::Claims("no tenant claim".into()))));
            }
        }
        let limit = snap.config.identity.max_tenants_per_subject;
        if let Some(sub) = subject {
            if self.spread.observe(("sub", sub), &tenant.id, limit) {
                self.metrics.identity_spread("subject");
                tracing::warn!(target: "identity", subject = sub, tenant = &*tenant.id, limit, "token subject seen on more tenants than max_tenants_per_subject within the hour");
            }
        }
        if let Some(peer) = req.conn.peer {
            if self.spread.observe(("addr", peer.ip()), &tenant.id, limit) {
                self.metrics.identity_spread("address");
                tracing::warn!(target: "identity", client = %peer.ip(), tenant = &*tenant.id, limit, "client address seen on more tenants than max_tenants_per_subject within the hour");
            }
        }
        match subject.map(HeaderValue::from_str) {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(_)) => {
                self.metrics.identity_refusal(label, "bad_subject");
                Err(unauthorized(Some(&TokenError::Claims(
                    "subject is not a header value".into(),
                ))))
            }
        }
    }

    /// A 403 `tenant-mismatch`: two sources name different tenants.
    #[allow(clippy::too_many_arguments)]
    fn mismatch(
        &self,
        snap: &Snapshot,
        m: Match,
        resolved: &str,
        claimed: &str,
        subject: Option<&str>,
        req: &RequestFacts<'_>,
        source: &'static str,
    ) -> Answer {
        self.metrics
            .identity_refusal(self.tenant_label(snap, m), "tenant_mismatch");
        tracing::warn!(
            target: "identity",
            resolved_tenant = resolved,
            claimed_tenant = claimed,
            subject,
            client = req.conn.peer.map(tracing::field::display),
            source,
            "tenant mismatch: refused"
        );
        problem(
            403,
            "tenant-mismatch",
            "Forbidden",
            "the request's credentials belong to another tenant",
        )
    }

    /// The metric label of a resolved tenant (bounded like every tenant label).
    fn tenant_label<'s>(&self, snap: &'s Snapshot, m: Match) -> &'s str {
        match snap.tenant(m.tenant) {
            Some(t) if snap.config.labels_tenants() => &t.id,
            Some(_) => crate::telemetry::OTHER_TENANTS,
            None => NO_TENANT,
        }
    }

    /// Serves an HTTP-01 key authorization for a pending order, or 404.
    fn challenge(&self, authority: Result<&str, BadAuthority>, token: &str, o: &mut Outcome<'_>) -> Answer {
        let host = authority
            .ok()
            .and_then(|a| routing::request_host(a).ok().map(|h| h.into_owned()));
        match host.and_then(|h| self.challenges.answer(token, &h)) {
            Some(key_authorization) => {
                let mut a = Answer::text(200, "", false);
                a.content_type = "application/octet-stream";
                a.body = key_authorization.into();
                a
            }
            None => self.refuse(Rejection::UnknownChallenge, UNKNOWN_CHALLENGE_BODY, o),
        }
    }

    /// The token of a pending claim on the request's host, when HTTP proofs
    /// are allowed: it shows the name points at this gateway.
    fn ownership_proof(&self, snap: &Snapshot, authority: Result<&str, BadAuthority>, token: &str) -> Option<Answer> {
        let lifecycle = self.lifecycle.as_ref().filter(|_| snap.config.domains.http)?;
        let host = routing::request_host(authority.ok()?).ok()?;
        lifecycle.claims.has_token(&host, token).then(|| {
            let mut a = Answer::text(200, "", false);
            a.body = token.to_string().into();
            a
        })
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

    /// The tenant's limits for one request: `Ok(None)` when it has none.
    /// A refusal is counted here.
    async fn limit(
        &self,
        snap: &Snapshot,
        tenant: &Tenant,
        m: Match,
        client: Option<std::net::IpAddr>,
    ) -> Result<Option<Admission>, Refusal> {
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
    pub fn record(&self, snap: &Snapshot, o: &Outcome<'_>) {
        let elapsed = o.start.elapsed();
        let access_log = snap.config.telemetry.access_log;
        let (status, method, path) = (o.status, o.method, o.path);
        let tenant = o.route.and_then(|r| snap.tenant(r.tenant));
        let refusal = refusal_reason(o);
        self.metrics.top.record(&top::Sample {
            tenant: tenant.map(|t| &t.id),
            status,
            refusal,
            start: o.start,
            elapsed,
        });
        if let Some(t) = tenant {
            let reason = match (refusal, o.limit) {
                (_, Some(_)) => Some("limit"),
                (Some(r), None) => top::REFUSAL_REASONS.get(r).copied(),
                // No upstream available: the pool's own 503.
                (None, None) if status == 503 && o.upstream.is_none() => Some("no_upstream"),
                _ => None,
            };
            if let Some(reason) = reason {
                self.metrics.refusals.push(&crate::telemetry::refusals::Refused {
                    tenant: &t.id,
                    status,
                    reason,
                    detail: o.limit,
                    method,
                    path,
                });
            }
        }
        let Some(route) = o.route else {
            if access_log {
                // Without a tenant, only a shared host's platform pool forwards.
                let decision = match (o.rejection, o.upstream) {
                    (None, Some(_)) => "platform",
                    _ => "rejected",
                };
                let reason = o.rejection.map_or("none", Rejection::as_str);
                let upstream = o.upstream.map(tracing::field::display);
                let client = o.client.map(tracing::field::display);
                tracing::info!(target: "access", decision, reason, status, method, path, upstream, client, duration_ms = elapsed.as_secs_f64() * 1e3);
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
        if let Some(c) = &tenant.edge.region_requests {
            c.inc();
        }
        // A rollout compares what its pools answered: forwarded requests,
        // and the gateway's own 5xx for a pool that failed them.
        let forwarded = o.upstream.is_some() || (status >= 500 && o.error.is_some());
        if let (Some(c), true, None) = (&tenant.cohort, status > 0 && forwarded, o.rejection) {
            c.observe(status);
        }
        if let Some(p) = pool {
            p.metrics.duration.observe(elapsed.as_secs_f64());
            if o.error.is_some() && status >= 500 && o.upstream.is_some() {
                p.metrics.proxy_errors.inc();
            }
        }
        if access_log {
            let decision = match o.rejection {
                Some(_) => "rejected",
                None => "routed",
            };
            tracing::info!(
                target: "access",
                decision,
                reason = o.rejection.map(Rejection::as_str),
                tenant = &*tenant.id,
                match_kind = route.kind.as_str(),
                pool = pool.map_or("", |p| &*p.name),
                region = snap.config.tenants.get(route.tenant as usize).and_then(|t| t.profile.region.as_deref()),
                upstream = o.upstream.map(tracing::field::display),
                client = o.client.map(tracing::field::display),
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
}

/// Why the gateway itself refused a request, as an index in
/// [`top::REFUSAL_REASONS`]: its rejection, else its own 429 (limits) or
/// 401/403 (identity); `None` for a request a backend answered.
fn refusal_reason(o: &Outcome<'_>) -> Option<usize> {
    if let Some(r) = o.rejection {
        return Rejection::ALL.iter().position(|x| *x == r);
    }
    if o.upstream.is_some() {
        return None;
    }
    match o.status {
        429 => top::refusal_index("limit"),
        401 | 403 => top::refusal_index("identity"),
        _ => None,
    }
}

/// How the host, path and header resolved.
enum Routed {
    Tenant(Match, Option<PathRoute>),
    /// A shared host's unclaimed path: its platform pool (or 404), and the
    /// normalised target.
    Platform(Option<PoolId>, String),
}

/// A request routed by a prefix on a shared host.
struct PathRoute {
    /// The normalised path.
    normal: String,
    /// Length of the claimed prefix in `normal`.
    prefix_len: usize,
    query: Option<String>,
}

impl PathRoute {
    /// The target toward the backend, and `x-forwarded-prefix` when the
    /// prefix is stripped.
    fn target(self, strip: bool) -> (Option<String>, Option<HeaderValue>) {
        let (path, prefix) = match strip {
            true => {
                let rest = &self.normal[self.prefix_len..];
                let rest = if rest.is_empty() { "/" } else { rest };
                (rest, HeaderValue::from_str(&self.normal[..self.prefix_len]).ok())
            }
            false => (self.normal.as_str(), None),
        };
        let mut target = path.to_string();
        if let Some(q) = self.query {
            target.push('?');
            target.push_str(&q);
        }
        (Some(target), prefix)
    }
}

/// An RFC 9457 problem answer of type `tag:tenantgate,2026:<kind>`.
fn problem(status: u16, kind: &str, title: &str, detail: &str) -> Answer {
    let body = serde_json::json!({
        "type": format!("tag:tenantgate,2026:{kind}"),
        "title": title,
        "status": status,
        "detail": detail,
    });
    Answer {
        status,
        content_type: "application/problem+json",
        body: body.to_string().into(),
        headers: Vec::new(),
        close: false,
    }
}

/// A 401 with `WWW-Authenticate: Bearer` (and `error="invalid_token"`
/// for a token that was given but refused).
fn unauthorized(e: Option<&TokenError>) -> Answer {
    let (challenge, detail) = match e {
        Some(e) => (
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
            format!("the token is not valid: {e}"),
        ),
        None => (
            HeaderValue::from_static("Bearer"),
            "a bearer token is required".to_string(),
        ),
    };
    let mut a = problem(401, "unauthorized", "Unauthorized", &detail);
    a.headers.push(("www-authenticate", challenge));
    a
}

/// A limit refusal (429, or 503 for a fail-closed store outage) with
/// `Retry-After`, the rate-limit policy, the `RateLimit` field of the
/// refusing policy (`r=0`, `t=` the seconds to wait) and an RFC 9457 body.
fn limited(tenant: &Tenant, refusal: &Refusal) -> Answer {
    let mut headers = vec![("retry-after", HeaderValue::from(refusal.retry_after))];
    headers.extend(tenant.policy_header.clone().map(|p| ("ratelimit-policy", p)));
    headers.extend(refusal.header().map(|r| ("ratelimit", r)));
    Answer {
        status: refusal.status(),
        content_type: "application/problem+json",
        body: refusal.problem_body().into(),
        headers,
        close: false,
    }
}

/// On the TLS listener: whether `host` may be served on this connection,
/// under `[tls] strict_sni_host` (on when `[tls]` is gone): the same name
/// as the SNI, or a name the served certificate covers that routes to the
/// same tenant.
fn sni_allows(conn: &ConnFacts, snap: &Snapshot, host: &str, m: Match) -> bool {
    let strict = snap.config.tls.as_ref().is_none_or(|t| t.strict_sni_host);
    if !strict {
        return true;
    }
    let Some(n) = &conn.tls else { return false };
    if *n.sni == *host {
        return true;
    }
    let same_tenant = snap.table.lookup(&n.sni).is_some_and(|s| s.tenant == m.tenant);
    same_tenant && n.cert_names.iter().any(|c| name_covers(c, host))
}

const UNKNOWN_HOST_BODY: &str = "421 Misdirected Request: this host is not served here\n";
const SNI_MISMATCH_BODY: &str = "421 Misdirected Request: Host is not covered by this connection's TLS name\n";
const UNKNOWN_CHALLENGE_BODY: &str = "404 Not Found: no pending ACME challenge for this token\n";
const CONNECT_BODY: &str = "405 Method Not Allowed: CONNECT is not proxied\n";
const BAD_TARGET_BODY: &str = "400 Bad Request: the request target must be a path (or * for OPTIONS)\n";

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
        HostError::IpAddress => return (Rejection::UnknownHost, UNKNOWN_HOST_BODY),
        HostError::TooLong => "400 Bad Request: host name too long\n",
        HostError::BadLabel => "400 Bad Request: empty or over-long label in Host\n",
        HostError::InvalidCharacters => "400 Bad Request: invalid characters in Host\n",
    };
    (Rejection::BadHost, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    const CONFIG: &str = r#"
[gateway]
http_listen = "127.0.0.1:1"

[pools.a]
upstreams = ["127.0.0.1:2"]

[[tenants]]
id = "acme"
domains = ["acme.example", "*.acme.example"]
pool = "a"

[[tenants]]
id = "beta"
domains = ["beta.example"]
pool = "a"
"#;

    fn policy() -> (Policy, Arc<Challenges>) {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let source = Source::Embedded {
            name: "policy.toml",
            text: CONFIG,
        };
        let registry = Arc::new(Registry::load(source, metrics.clone()).expect("config"));
        let challenges = Arc::new(Challenges::default());
        (Policy::new(registry, metrics, challenges.clone(), None), challenges)
    }

    /// The decision for one request: the status of an answer, or 0 for a
    /// forward (with the tenant it goes to).
    fn decide(
        p: &Policy,
        method: &str,
        target: &str,
        authority: Result<&str, BadAuthority>,
        conn: &ConnFacts,
    ) -> (u16, String) {
        let snap = p.registry.snapshot();
        let headers = http::HeaderMap::new();
        let req = RequestFacts {
            method,
            target,
            authority,
            conn,
            prefs: Prefs::default(),
            headers: &headers,
        };
        let mut o = Outcome::begin(method, target);
        let decided =
            futures_util::FutureExt::now_or_never(p.decide(&snap, &req, &mut o)).expect("no wait without limits");
        match decided {
            Decision::Answer(a) => (a.status, String::from_utf8_lossy(&a.body).into_owned()),
            Decision::Forward(f) => (0, f.tenant.map_or(String::new(), |t| t.id.to_string())),
        }
    }

    fn tls(sni: &str, names: &[&str]) -> ConnFacts {
        ConnFacts {
            peer: None,
            tls: Some(Arc::new(crate::tls::Negotiated {
                sni: sni.into(),
                cert_names: names.iter().map(|n| n.to_string()).collect(),
                h2: false,
            })),
        }
    }

    #[test]
    fn known_hosts_forward_to_their_tenant_and_nothing_else_does() {
        let (p, _) = policy();
        let plain = ConnFacts::default();
        assert_eq!(decide(&p, "GET", "/", Ok("acme.example"), &plain), (0, "acme".into()));
        assert_eq!(
            decide(&p, "GET", "/", Ok("X.Acme.Example:80"), &plain),
            (0, "acme".into())
        );
        assert_eq!(
            decide(&p, "OPTIONS", "*", Ok("beta.example"), &plain),
            (0, "beta".into())
        );
        assert_eq!(decide(&p, "GET", "/", Ok("nobody.example"), &plain).0, 421);
        assert_eq!(decide(&p, "GET", "/", Ok("127.0.0.1"), &plain).0, 421);
        assert_eq!(decide(&p, "GET", "/", Err(BadAuthority::Missing), &plain).0, 400);
        assert_eq!(decide(&p, "GET", "/", Err(BadAuthority::Mismatch), &plain).0, 400);
        assert_eq!(decide(&p, "GET", "/", Ok("a b.example"), &plain).0, 400);
    }

    #[test]
    fn connect_and_targets_that_are_not_paths_are_refused_before_routing() {
        let (p, _) = policy();
        let plain = ConnFacts::default();
        assert_eq!(
            decide(&p, "CONNECT", "acme.example:443", Ok("acme.example:443"), &plain).0,
            405
        );
        assert_eq!(decide(&p, "GET", "*", Ok("acme.example"), &plain).0, 400);
        assert_eq!(decide(&p, "GET", "acme.example", Ok("acme.example"), &plain).0, 400);
    }

    #[test]
    fn on_tls_the_host_must_be_covered_by_the_handshake_of_the_same_tenant() {
        let (p, _) = policy();
        let same = tls("acme.example", &["acme.example"]);
        assert_eq!(decide(&p, "GET", "/", Ok("acme.example"), &same), (0, "acme".into()));
        let wildcard = tls("acme.example", &["acme.example", "*.acme.example"]);
        assert_eq!(
            decide(&p, "GET", "/", Ok("www.acme.example"), &wildcard),
            (0, "acme".into())
        );
        // Another tenant's host on this connection: 421, never forwarded.
        let (status, body) = decide(&p, "GET", "/", Ok("beta.example"), &same);
        assert_eq!(status, 421, "{body}");
        assert!(body.contains("TLS name"), "{body}");
        // A name the certificate does not cover.
        assert_eq!(decide(&p, "GET", "/", Ok("www.acme.example"), &same).0, 421);
    }

    #[test]
    fn the_trusted_tenant_header_counts_only_from_listed_sources_on_header_hosts() {
        let text = format!(
            "{CONFIG}\n[identity]\nheader = \"x-org-id\"\nheader_hosts = [\"api.internal\", \"acme.example\"]\nheader_sources = [\"10.0.0.0/8\"]\n"
        );
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let source = Source::Embedded {
            name: "policy.toml",
            text: Box::leak(text.into_boxed_str()),
        };
        let registry = Arc::new(Registry::load(source, metrics.clone()).expect("config"));
        let p = Policy::new(registry, metrics, Arc::new(Challenges::default()), None);
        let from = |ip: &str| ConnFacts {
            peer: Some(SocketAddr::new(ip.parse().expect("ip"), 4000)),
            tls: None,
        };
        let decide = |host: &str, conn: &ConnFacts, org: &[&str]| {
            let snap = p.registry.snapshot();
            let mut headers = http::HeaderMap::new();
            for v in org {
                headers.append("x-org-id", HeaderValue::from_str(v).expect("value"));
            }
            let req = RequestFacts {
                method: "GET",
                target: "/",
                authority: Ok(host),
                conn,
                prefs: Prefs::default(),
                headers: &headers,
            };
            let mut o = Outcome::begin("GET", "/");
            match futures_util::FutureExt::now_or_never(p.decide(&snap, &req, &mut o)).expect("no wait") {
                Decision::Answer(a) => (a.status, String::new()),
                Decision::Forward(f) => (0, f.tenant.map_or(String::new(), |t| t.id.to_string())),
            }
        };
        let inside = from("10.1.2.3");
        assert_eq!(decide("api.internal", &inside, &["beta"]), (0, "beta".into()));
        assert_eq!(decide("api.internal", &inside, &[]).0, 400);
        assert_eq!(decide("api.internal", &inside, &["beta", "acme"]).0, 400);
        assert_eq!(decide("api.internal", &inside, &["nobody"]).0, 421);
        assert_eq!(decide("api.internal", &from("192.168.1.1"), &["beta"]).0, 403);
        assert_eq!(decide("api.internal", &ConnFacts::default(), &["beta"]).0, 403);
        // A header host that is also a tenant's domain: both must agree.
        assert_eq!(decide("acme.example", &inside, &["acme"]), (0, "acme".into()));
        assert_eq!(decide("acme.example", &inside, &["beta"]).0, 403);
        // Elsewhere the header names nothing (and is stripped on the way).
        assert_eq!(
            decide("beta.example", &from("192.168.1.1"), &["acme"]),
            (0, "beta".into())
        );
    }

    #[test]
    fn acme_challenges_are_answered_on_the_plain_listener_only() {
        let (p, challenges) = policy();
        challenges.insert("tok", "acme.example", "tok.key");
        let plain = ConnFacts::default();
        let path = format!("{ACME_CHALLENGE_PREFIX}tok");
        assert_eq!(
            decide(&p, "GET", &path, Ok("acme.example"), &plain),
            (200, "tok.key".into())
        );
        assert_eq!(decide(&p, "GET", &path, Ok("beta.example"), &plain).0, 404);
        let other = format!("{ACME_CHALLENGE_PREFIX}nope");
        assert_eq!(decide(&p, "GET", &other, Ok("acme.example"), &plain).0, 404);
        // Over TLS the path is the tenant's own.
        let conn = tls("acme.example", &["acme.example"]);
        assert_eq!(decide(&p, "GET", &path, Ok("acme.example"), &conn).0, 0);
    }
}
