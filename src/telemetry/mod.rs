//! Metrics and logs. This module owns every metric name; the rest of the
//! crate holds handles to them, resolved once per reload, so the request
//! path never formats a label or looks one up.

pub mod backends;
mod endpoint;
pub mod refusals;
pub mod rollouts;
pub mod spread;
pub mod top;

use prometheus::{Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tracing_subscriber::EnvFilter;

pub use endpoint::MetricsEndpoint;

use crate::config::LogFormat;

/// Status classes, as metric label values.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Label value shared by tenants past `tenant_label_limit`.
pub const OTHER_TENANTS: &str = "_other";

/// Why a request was refused before it reached a backend. Bounded set: these
/// are the only values of the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Valid host, no tenant: 421.
    UnknownHost,
    /// Missing, empty, malformed or conflicting Host: 400.
    BadHost,
    /// Host not covered by the TLS handshake's SNI and certificate: 421.
    SniMismatch,
    /// An ACME challenge path with no pending token: 404.
    UnknownChallenge,
    /// A request the HTTP parser refuses: malformed request line or header,
    /// ambiguous framing (differing `Content-Length`s, `chunked` twice or
    /// not last, both framings), a target that is neither origin-form,
    /// absolute-form nor `*` for `OPTIONS`: 400, connection closed.
    BadRequest,
    /// A request head over the size limit: 431, connection closed.
    TooLarge,
    /// `CONNECT`: 405.
    Method,
    /// A transfer coding other than `chunked`: 501.
    Coding,
    /// An `Expect` other than `100-continue`: 417.
    Expectation,
    /// A tenant of another region than `[gateway] region`: 421.
    OtherRegion,
    /// A path gated by a feature the tenant lacks: 404.
    FeatureOff,
    /// The tenant or its pool is in maintenance: 503.
    Maintenance,
}

impl Rejection {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownHost => "unknown_host",
            Rejection::BadHost => "bad_host",
            Rejection::SniMismatch => "sni_mismatch",
            Rejection::UnknownChallenge => "unknown_challenge",
            Rejection::BadRequest => "bad_request",
            Rejection::TooLarge => "too_large",
            Rejection::Method => "method",
            Rejection::Coding => "coding",
            Rejection::Expectation => "expectation",
            Rejection::OtherRegion => "other_region",
            Rejection::FeatureOff => "feature_off",
            Rejection::Maintenance => "maintenance",
        }
    }

    pub const ALL: [Rejection; 12] = [
        Rejection::UnknownHost,
        Rejection::BadHost,
        Rejection::SniMismatch,
        Rejection::UnknownChallenge,
        Rejection::BadRequest,
        Rejection::TooLarge,
        Rejection::Method,
        Rejection::Coding,
        Rejection::Expectation,
        Rejection::OtherRegion,
        Rejection::FeatureOff,
        Rejection::Maintenance,
    ];

    /// The status the client gets.
    pub fn status(self) -> u16 {
        match self {
            Rejection::UnknownHost | Rejection::SniMismatch | Rejection::OtherRegion => 421,
            Rejection::FeatureOff => 404,
            Rejection::Maintenance => 503,
            Rejection::BadHost | Rejection::BadRequest => 400,
            Rejection::UnknownChallenge => 404,
            Rejection::TooLarge => 431,
            Rejection::Method => 405,
            Rejection::Coding => 501,
            Rejection::Expectation => 417,
        }
    }

    /// Whether an HTTP/1.1 connection closes after the answer: the request
    /// could not be framed or trusted, so neither can what follows it.
    pub fn closes(self) -> bool {
        matches!(
            self,
            Rejection::BadHost | Rejection::BadRequest | Rejection::TooLarge | Rejection::Coding
        )
    }
}

/// Every metric tenantgate exports, in its own registry.
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    rejections: IntCounterVec,
    connections_refused: IntCounterVec,
    proxy_protocol: IntCounterVec,
    upstream_errors: IntCounterVec,
    /// Upstream health and retries.
    pub backends: backends::BackendMetrics,
    pub rollouts: rollouts::RolloutMetrics,
    pub config_generation: IntGauge,
    reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    pub config_last_reload_timestamp: Gauge,
    /// Seconds the last reload attempt took (read, parse, validate, build, swap).
    pub config_last_reload_duration: Gauge,
    pub tenants: IntGauge,
    pub domains: IntGauge,
    handshakes: IntCounterVec,
    /// Certificates by state: valid, expiring (within 14 days), failed.
    pub certificates: prometheus::IntGaugeVec,
    acme_orders: IntCounterVec,
    /// ACME orders running now (bounded by `max_concurrent_orders`).
    pub acme_orders_in_flight: IntGauge,
    limit_rejections: IntCounterVec,
    region_requests: IntCounterVec,
    identity_refusals: IntCounterVec,
    identity_spread: IntCounterVec,
    /// The busiest tenants (heavy-hitter sketches), the platform totals and
    /// the console's time series.
    pub top: std::sync::Arc<top::Top>,
    /// The recent refusals of routed requests, per tenant (bounded).
    pub refusals: refusals::RefusalLog,
    /// K: rows exported per `tenantgate_top_tenant_*` metric.
    top_k: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Label value of identity refusals before any tenant was resolved.
pub const NO_TENANT: &str = "_none";

/// Why an identity check refused a request: the only values of the
/// `reason` label of `tenantgate_identity_refusals_total`.
pub const IDENTITY_REASONS: [&str; 19] = [
    "tenant_mismatch",
    "missing_token",
    "no_tenant_claim",
    "malformed",
    "unknown_kid",
    "algorithm",
    "signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "claims",
    "no_keys",
    "header_source",
    "header_missing",
    "header_unknown",
    "unclaimed_path",
    "ambiguous_path",
    "bad_subject",
];

/// Fleet-mode metrics of the shared limit store (registered only in fleet mode).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// 1 while Redis answers, 0 while the replica serves on local limits.
    pub up: IntGauge,
    /// Replicas seen in the last few seconds, this one included.
    pub replicas: IntGauge,
    /// Redis calls by result (ok, error, timeout).
    calls: IntCounterVec,
    /// Admissions decided on local limits because the store was unreachable.
    pub fallback: IntCounter,
}

/// Fleet-mode metrics of the shared tenant registry (registered only in fleet mode).
#[derive(Debug, Clone)]
pub struct RegistryStoreMetrics {
    /// 1 while the registry in Redis answers; 0 while serving the last-known-good copy.
    pub up: IntGauge,
    /// The registry version in Redis that the live tenants match (0 before the first sync).
    pub version: IntGauge,
}

impl RegistryStoreMetrics {
    /// Creates and registers the registry store metrics in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> prometheus::Result<Self> {
        let up = IntGauge::new(
            "tenantgate_registry_store_up",
            "1 while the shared tenant registry (Redis) answers; 0 while serving the last-known-good copy on disk.",
        )?;
        let version = IntGauge::new(
            "tenantgate_registry_store_version",
            "Version of the shared tenant registry that the live tenants match (0 before the first sync).",
        )?;
        metrics.registry.register(Box::new(up.clone()))?;
        metrics.registry.register(Box::new(version.clone()))?;
        Ok(RegistryStoreMetrics { up, version })
    }
}

/// The custom-domain lifecycle's metrics.
#[derive(Clone)]
pub struct DomainMetrics {
    /// `tenantgate_domain_claims{state}`: claims by state (pending, failed);
    /// active names are `tenantgate_domains`.
    pub claims: prometheus::IntGaugeVec,
    /// `tenantgate_domain_checks_total`: ownership checks this replica ran.
    pub checks: prometheus::IntCounter,
    /// `tenantgate_domain_checker`: 1 while this replica runs the scheduled
    /// checks (always on a single node; the lease holder in fleet mode).
    pub checker: prometheus::IntGauge,
    /// `tenantgate_domain_store_up`: fleet mode, whether the domain store
    /// (Redis) answered last time.
    pub store_up: prometheus::IntGauge,
}

impl DomainMetrics {
    /// Creates and registers the lifecycle metrics in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> prometheus::Result<Self> {
        let claims = prometheus::IntGaugeVec::new(
            Opts::new(
                "tenantgate_domain_claims",
                "Custom-domain claims waiting for an ownership proof (pending) or refused (failed).",
            ),
            &["state"],
        )?;
        for s in ["pending", "failed"] {
            claims.with_label_values(&[s]);
        }
        metrics.registry.register(Box::new(claims.clone()))?;
        let checks = prometheus::IntCounter::new(
            "tenantgate_domain_checks_total",
            "Ownership checks of pending domain claims run by this replica.",
        )?;
        let checker = prometheus::IntGauge::new(
            "tenantgate_domain_checker",
            "1 while this replica runs the scheduled domain checks (fleet mode: holds the checker lease).",
        )?;
        let store_up = prometheus::IntGauge::new(
            "tenantgate_domain_store_up",
            "Fleet mode: 1 when the domain store (Redis) answered the last call.",
        )?;
        for m in [&checker, &store_up] {
            metrics.registry.register(Box::new(m.clone()))?;
        }
        metrics.registry.register(Box::new(checks.clone()))?;
        Ok(DomainMetrics {
            claims,
            checks,
            checker,
            store_up,
        })
    }
}

impl StoreMetrics {
    /// Creates and registers the store metrics in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> prometheus::Result<Self> {
        let up = IntGauge::new(
            "tenantgate_limit_store_up",
            "1 while the shared limit store (Redis) answers; 0 while limits are local.",
        )?;
        let replicas = IntGauge::new(
            "tenantgate_limit_store_replicas",
            "Gateway replicas sharing the limit store, as last seen.",
        )?;
        let calls = IntCounterVec::new(
            Opts::new(
                "tenantgate_limit_store_calls_total",
                "Calls to the shared limit store, by result (ok, error, timeout).",
            ),
            &["result"],
        )?;
        let fallback = IntCounter::new(
            "tenantgate_limit_store_fallback_requests_total",
            "Requests admitted or refused on local limits because the limit store was unreachable.",
        )?;
        metrics.registry.register(Box::new(up.clone()))?;
        metrics.registry.register(Box::new(replicas.clone()))?;
        metrics.registry.register(Box::new(calls.clone()))?;
        metrics.registry.register(Box::new(fallback.clone()))?;
        for r in ["ok", "error", "timeout"] {
            calls.with_label_values(&[r]);
        }
        replicas.set(1);
        Ok(StoreMetrics {
            up,
            replicas,
            calls,
            fallback,
        })
    }

    /// Counts one call by its result: `ok`, `error` or `timeout`.
    pub fn call(&self, result: &'static str) {
        self.calls.with_label_values(&[result]).inc();
    }
}

/// Per-tenant counters of limit rejections, in `Violation::ALL` order.
#[derive(Debug, Clone)]
pub struct LimitCounters([IntCounter; crate::limits::Violation::ALL.len()]);

impl LimitCounters {
    /// Counts one refusal.
    pub fn reject(&self, v: crate::limits::Violation) {
        let i = crate::limits::Violation::ALL.iter().position(|x| *x == v).unwrap_or(0);
        self.0[i].inc();
    }
}

/// Per-tenant request counters, one per status class.
#[derive(Debug, Clone)]
pub struct TenantCounters([IntCounter; 5]);

impl TenantCounters {
    /// Counts one response with `status`.
    pub fn observe(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.0[class].inc();
    }
}

/// Per-pool handles.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    pub duration: Histogram,
    pub connect_errors: IntCounter,
    pub proxy_errors: IntCounter,
    pub retries: backends::RetryCounters,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tenantgate_requests_total",
                "Requests routed to a tenant, by tenant and status class.",
            ),
            &["tenant", "status_class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tenantgate_request_duration_seconds",
                "Time from request start to the end of the response, by pool.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["pool"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "tenantgate_rejections_total",
                "Requests refused before routing, by reason.",
            ),
            &["reason"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "tenantgate_connections_refused_total",
                "Connections closed at accept because the listener had max_connections open.",
            ),
            &["listener"],
        )?;
        for l in ["http", "https"] {
            connections_refused.with_label_values(&[l]);
        }
        let proxy_protocol = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_protocol_total",
                "Connections on listeners with proxy_protocol, by how their PROXY header step ended: accepted, local, absent, direct (untrusted peer, no header) or refused: untrusted, missing, invalid, timeout.",
            ),
            &["listener", "result"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "tenantgate_upstream_errors_total",
                "Upstream failures, by pool and kind (connect, proxy).",
            ),
            &["pool", "kind"],
        )?;
        let config_generation = IntGauge::new("tenantgate_config_generation", "Generation of the live config.")?;
        let reloads = IntCounterVec::new(
            Opts::new("tenantgate_config_reloads_total", "Config reload attempts, by result."),
            &["result"],
        )?;
        let config_last_reload_success = IntGauge::new(
            "tenantgate_config_last_reload_success",
            "1 if the last reload attempt succeeded, 0 if it was refused.",
        )?;
        let config_last_reload_timestamp = Gauge::new(
            "tenantgate_config_last_reload_timestamp_seconds",
            "Unix time of the last reload attempt.",
        )?;
        let tenants = IntGauge::new("tenantgate_tenants", "Tenants in the live config.")?;
        let domains = IntGauge::new("tenantgate_domains", "Host names routed by the live config.")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(proxy_protocol.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(config_last_reload_timestamp.clone()))?;
        let config_last_reload_duration = Gauge::new(
            "tenantgate_config_last_reload_duration_seconds",
            "Time the last reload attempt took: read, parse, validate, build and swap.",
        )?;
        registry.register(Box::new(config_last_reload_duration.clone()))?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "tenantgate_tls_handshakes_total",
                "TLS handshakes, by result (ok or the failure reason).",
            ),
            &["result"],
        )?;
        let certificates = prometheus::IntGaugeVec::new(
            Opts::new(
                "tenantgate_certificates",
                "Managed certificates by state: valid, expiring (within 14 days), failed.",
            ),
            &["state"],
        )?;
        let acme_orders = IntCounterVec::new(
            Opts::new(
                "tenantgate_acme_orders_total",
                "ACME orders, by kind (issue, renew) and result (success, failure).",
            ),
            &["kind", "result"],
        )?;
        let acme_orders_in_flight = IntGauge::new(
            "tenantgate_acme_orders_in_flight",
            "ACME orders running now (at most max_concurrent_orders).",
        )?;
        registry.register(Box::new(acme_orders_in_flight.clone()))?;
        let limit_rejections = IntCounterVec::new(
            Opts::new(
                "tenantgate_limit_rejections_total",
                "Requests refused with 429, by tenant and policy (concurrency, burst, day, month).",
            ),
            &["tenant", "reason"],
        )?;
        registry.register(Box::new(limit_rejections.clone()))?;
        let region_requests = IntCounterVec::new(
            Opts::new(
                "tenantgate_region_requests_total",
                "Requests of tenants with a region, by region (data residency).",
            ),
            &["region"],
        )?;
        registry.register(Box::new(region_requests.clone()))?;
        let identity_refusals = IntCounterVec::new(
            Opts::new(
                "tenantgate_identity_refusals_total",
                "Requests refused by the tenant identity checks (path, trusted header, JWT), by resolved tenant and reason.",
            ),
            &["tenant", "reason"],
        )?;
        registry.register(Box::new(identity_refusals.clone()))?;
        let identity_spread = IntCounterVec::new(
            Opts::new(
                "tenantgate_identity_subject_spread_total",
                "Token subjects (kind=subject) or client addresses (kind=address) seen on more than [identity] max_tenants_per_subject tenants within an hour; each counted once per hour.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(identity_spread.clone()))?;
        for k in ["subject", "address"] {
            identity_spread.with_label_values(&[k]);
        }
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(certificates.clone()))?;
        registry.register(Box::new(acme_orders.clone()))?;
        for s in ["valid", "expiring", "failed"] {
            certificates.with_label_values(&[s]);
        }
        for kind in ["issue", "renew"] {
            for result in ["success", "failure"] {
                acme_orders.with_label_values(&[kind, result]);
            }
        }
        registry.register(Box::new(tenants.clone()))?;
        registry.register(Box::new(domains.clone()))?;
        for r in Rejection::ALL {
            rejections.with_label_values(&[r.as_str()]);
        }
        for r in ["success", "failure"] {
            reloads.with_label_values(&[r]);
        }
        let top = std::sync::Arc::new(top::Top::default());
        let top_k = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(top::DEFAULT_K));
        registry.register(Box::new(top::Collector::new(top.clone(), top_k.clone())?))?;
        let backends = backends::BackendMetrics::new(&registry)?;
        let rollouts = rollouts::RolloutMetrics::new(&registry)?;
        Ok(Metrics {
            refusals: refusals::RefusalLog::default(),
            backends,
            rollouts,
            registry,
            requests,
            duration,
            rejections,
            connections_refused,
            proxy_protocol,
            upstream_errors,
            config_generation,
            reloads,
            config_last_reload_success,
            config_last_reload_timestamp,
            config_last_reload_duration,
            tenants,
            domains,
            handshakes,
            certificates,
            acme_orders,
            acme_orders_in_flight,
            limit_rejections,
            region_requests,
            identity_refusals,
            identity_spread,
            top,
            top_k,
        })
    }

    /// Sizes the top-tenant sketches and exports to `k` tenants (`[telemetry]
    /// top_tenants`, read at start).
    pub fn set_top_tenants(&self, k: usize) {
        self.top.set_capacity(k);
        self.top_k.store(k, std::sync::atomic::Ordering::Relaxed);
    }

    /// K of the top-tenant sketches.
    pub fn top_tenants(&self) -> usize {
        self.top_k.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts an identity refusal (`reason` from [`IDENTITY_REASONS`]).
    pub fn identity_refusal(&self, tenant_label: &str, reason: &'static str) {
        self.identity_refusals.with_label_values(&[tenant_label, reason]).inc();
    }

    /// Counts a subject or address seen on too many tenants.
    pub fn identity_spread(&self, kind: &'static str) {
        self.identity_spread.with_label_values(&[kind]).inc();
    }

    /// Counts a TLS handshake: `None` for success, else the failure reason
    /// (a fixed set: no_sni, unknown_sni, no_certificate, bad_client_hello,
    /// handshake, timeout).
    pub fn tls_handshake(&self, failure: Option<&'static str>) {
        self.handshakes.with_label_values(&[failure.unwrap_or("ok")]).inc();
    }

    /// Counts an ACME order outcome.
    pub fn acme_order(&self, renewal: bool, ok: bool) {
        let kind = if renewal { "renew" } else { "issue" };
        self.acme_orders
            .with_label_values(&[kind, if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Counter handles for a tenant's label value.
    pub fn tenant(&self, label: &str) -> TenantCounters {
        TenantCounters(STATUS_CLASSES.map(|c| self.requests.with_label_values(&[label, c])))
    }

    /// The request counter of a region (regions are the operator's, so
    /// the label set is bounded by the config).
    pub fn region(&self, region: &str) -> IntCounter {
        self.region_requests.with_label_values(&[region])
    }

    /// Limit-rejection counters for a tenant's label value.
    pub fn tenant_limits(&self, label: &str) -> LimitCounters {
        LimitCounters(
            crate::limits::Violation::ALL.map(|v| self.limit_rejections.with_label_values(&[label, v.as_str()])),
        )
    }

    /// Drops a removed tenant's series.
    pub fn forget_tenant(&self, label: &str) {
        for c in STATUS_CLASSES {
            let _ = self.requests.remove_label_values(&[label, c]);
        }
        for v in crate::limits::Violation::ALL {
            let _ = self.limit_rejections.remove_label_values(&[label, v.as_str()]);
        }
        for r in IDENTITY_REASONS {
            let _ = self.identity_refusals.remove_label_values(&[label, r]);
        }
    }

    /// Handles for a pool.
    pub fn pool(&self, name: &str) -> PoolMetrics {
        PoolMetrics {
            duration: self.duration.with_label_values(&[name]),
            connect_errors: self.upstream_errors.with_label_values(&[name, "connect"]),
            proxy_errors: self.upstream_errors.with_label_values(&[name, "proxy"]),
            retries: self.backends.retries(name),
        }
    }

    /// Drops a removed pool's series.
    pub fn forget_pool(&self, name: &str) {
        let _ = self.duration.remove_label_values(&[name]);
        for k in ["connect", "proxy"] {
            let _ = self.upstream_errors.remove_label_values(&[name, k]);
        }
        self.backends.forget_pool(name);
    }

    /// Counts a connection closed at accept because the listener was at
    /// its `max_connections` cap.
    pub fn connection_refused(&self, listener: &'static str) {
        self.connections_refused.with_label_values(&[listener]).inc();
    }

    /// Counts a connection's PROXY protocol step (`result`: a fixed set).
    pub fn proxy_protocol(&self, listener: &'static str, result: &'static str) {
        self.proxy_protocol.with_label_values(&[listener, result]).inc();
    }

    /// Counts a refused request.
    pub fn reject(&self, r: Rejection) {
        self.rejections.with_label_values(&[r.as_str()]).inc();
    }

    /// Records the outcome of a reload attempt.
    pub fn reload_result(&self, ok: bool) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.config_last_reload_timestamp.set(now);
        self.config_last_reload_success.set(i64::from(ok));
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the level
/// (default `info`; see [`log_filter`]). Logs go to stderr.
pub fn init_logging(format: LogFormat) {
    let spec = log_filter(std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("tenantgate: logging already initialised: {e}");
    }
}

/// The filter directives for `RUST_LOG`'s value (`info` when unset or
/// empty), with the `h2` crate held to errors unless the value names it.
/// h2 logs some of the peer's protocol behaviour at `warn`, one line for
/// each unsolicited PING acknowledgement: 17 bytes from a client, without
/// bound on one connection, made a line of about 150 (found reading the
/// gateway's log after h2spec's PING cases). Those are the client's doing,
/// not the operator's to act on; `RUST_LOG=info,h2=warn` brings them back.
pub fn log_filter(rust_log: Option<&str>) -> String {
    let spec = rust_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info");
    let names_h2 = spec.split(',').any(|directive| {
        let target = directive.split(['=', '[']).next().unwrap_or("").trim();
        target == "h2" || target.starts_with("h2::")
    });
    match names_h2 {
        true => spec.to_string(),
        false => format!("{spec},h2=error"),
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn h2_is_held_to_errors_unless_rust_log_names_it() {
        assert_eq!(log_filter(None), "info,h2=error");
        assert_eq!(log_filter(Some("  ")), "info,h2=error");
        assert_eq!(log_filter(Some("debug")), "debug,h2=error");
        assert_eq!(log_filter(Some("info,h2=warn")), "info,h2=warn");
        assert_eq!(log_filter(Some("h2::proto[span]=trace")), "h2::proto[span]=trace");
        // A target that only starts with the letters is another crate.
        assert_eq!(log_filter(Some("h2o=debug")), "h2o=debug,h2=error");
        for spec in [None, Some("debug"), Some("tenantgate=debug")] {
            assert!(tracing_subscriber::EnvFilter::try_new(log_filter(spec)).is_ok());
        }
    }
}
