//! Assembles the pingora server: the plain and TLS listeners, the metrics
//! endpoint, the config watcher and the certificate manager.

use std::sync::Arc;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::acme::fleet::SharedAcme;
use crate::acme::{CertManager, Challenges};
use crate::admin::{AdminApi, Certs};
use crate::config::{Issuer, LoadError, Source, Store};
use crate::domains::verifier::{Lifecycle, Verifier};
use crate::limits::fleet::{Fleet, FleetSync, StoreError};
use crate::limits::QuotaFlusher;
use crate::proxy::{Capped, Engine, Policy};
use crate::registry::{ConfigWatcher, Registry, RegistryStore, RegistrySync};
use crate::telemetry::{self, DomainMetrics, Metrics, MetricsEndpoint, RegistryStoreMetrics, StoreMetrics};
use crate::tls::certs::CertError;
use crate::tls::internal_ca::InternalCa;
use crate::tls::{CertStore, TlsApp};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error("metrics setup failed: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("admin API: cannot listen on {addr}: {source}")]
    AdminListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: cannot listen on {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("internal CA: {0}")]
    InternalCa(#[from] CertError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    RegistryStore(#[from] crate::registry::StoreError),
    #[error("fleet ACME: {0}")]
    SharedAcme(#[from] crate::acme::fleet::SharedError),
    #[error("fleet domain lifecycle: {0}")]
    DomainStore(#[from] crate::domains::fleet::DomainStoreError),
}

/// Fleet mode: shares the tenant files through Redis and catches up with
/// it before serving. Unreachable, the replica serves its last-known-good
/// tenant files and catches up when Redis answers.
fn share_registry(registry: &Registry, store: &Store, metrics: &Metrics) -> Result<(), StartError> {
    registry.share_through(RegistryStore::new(store, RegistryStoreMetrics::register(metrics)?)?);
    match registry.sync_from_store() {
        Ok(_) => tracing::info!(
            version = registry.store().map_or(0, RegistryStore::synced),
            "fleet mode: tenant registry shared through Redis"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "fleet mode: shared registry not reached at start; serving the last-known-good tenant files")
        }
    }
    Ok(())
}

/// Loads the config and runs the gateway until a shutdown signal.
/// Returns only on a start-up error.
/// With `upgrade`, the listening sockets come from the running gateway
/// (graceful binary upgrade: it hands them over on SIGQUIT).
pub fn serve(source: Source, upgrade: bool) -> Result<std::convert::Infallible, StartError> {
    let metrics = Arc::new(Metrics::new()?);
    // An admin batch that a crash left half written is finished first, so
    // the files load as the whole batch or none of it.
    let recovered = source.file().map(crate::registry::recover);
    let registry = Arc::new(Registry::load(source, metrics.clone())?);
    telemetry::init_logging(registry.snapshot().config.telemetry.log_format);
    // Said at every load too, but the first load comes before logging.
    for pool in registry
        .snapshot()
        .config
        .pools
        .iter()
        .filter(|p| p.tls.as_ref().is_some_and(|t| t.insecure))
    {
        tracing::warn!(pool = %pool.name, "pools.{}.tls_verify = false: the backends' certificates are NOT verified", pool.name);
    }
    match recovered {
        Some(Ok(true)) => tracing::warn!("finished writing an admin batch that a crash interrupted"),
        Some(Err(e)) => {
            tracing::error!(error = %e, "an interrupted admin batch cannot be finished; serving the files as they are")
        }
        _ => {}
    }
    if let Some(store) = &registry.snapshot().config.store {
        share_registry(&registry, store, &metrics)?;
    }
    crate::purge_freed_pages_after_delay();
    crate::release_free_memory();
    let snap = registry.snapshot();
    metrics.set_top_tenants(snap.config.telemetry.top_tenants);
    let gw = &snap.config.gateway;

    let conf = ServerConf {
        threads: gw.threads,
        // SIGTERM: stop accepting, let requests in flight finish for this
        // long, then exit (SIGINT exits at once).
        grace_period_seconds: Some(gw.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: 1024,
        upgrade_sock: gw.upgrade_sock.clone(),
        work_stealing: gw.work_stealing,
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let challenges = Arc::new(Challenges::default());
    let mut certs = None;

    let https_port = snap.config.tls.as_ref().and(gw.https_listen).map(|a| a.port());
    let mut lifecycle = Lifecycle::new(
        registry.clone(),
        gw.http_listen.port(),
        Some(DomainMetrics::register(&metrics)?),
    );
    if let Some(store) = &snap.config.store {
        lifecycle = lifecycle.with_store(crate::domains::fleet::DomainStore::new(store)?);
        tracing::info!(prefix = %store.key_prefix, "fleet mode: domain claims, checks and events shared through Redis");
    }
    let lifecycle = Arc::new(lifecycle);
    let policy = || {
        Policy::new(registry.clone(), metrics.clone(), challenges.clone(), https_port).with_lifecycle(lifecycle.clone())
    };
    let nofile = crate::raise_nofile();
    let plain = Capped::new(Engine::new(policy()), registry.clone(), metrics.clone(), "http", nofile)
        .rehomed(!gw.work_stealing);
    let mut http = Service::new("tenantgate http".to_string(), plain);
    http.add_tcp(&gw.http_listen.to_string());
    server.add_service(http);

    if let (Some(tls), Some(addr)) = (&snap.config.tls, gw.https_listen) {
        let internal = match tls.issuer {
            Issuer::Internal => Some(InternalCa::load_or_create(&tls.state_dir)?),
            _ => None,
        };
        if let Some(ca) = &internal {
            tracing::info!(root = %ca.root_path().display(), "internal CA ready; trust this root to use HTTPS locally");
        }
        let store = Arc::new(CertStore::new(&tls.state_dir, internal, tls.cache_size));
        let engine = Arc::new(Engine::new(policy()));
        let tls_app = TlsApp::new(engine, &store, &registry, &metrics);
        let tls_app =
            Capped::new(tls_app, registry.clone(), metrics.clone(), "https", nofile).rehomed(!gw.work_stealing);
        let mut https = Service::new("tenantgate https".to_string(), tls_app);
        https.add_tcp(&addr.to_string());
        server.add_service(https);
        let mut manager = CertManager::new(registry.clone(), store.clone(), challenges, metrics.clone())
            .with_lifecycle(lifecycle.clone());
        let fleet_acme = matches!(tls.issuer, Issuer::Acme(_));
        if let (true, Some(fleet)) = (fleet_acme, &snap.config.store) {
            if let Some(shared) = SharedAcme::new(fleet, &tls.state_dir)? {
                tracing::info!(prefix = %fleet.key_prefix, "fleet mode: ACME orders, challenges and certificates shared through Redis");
                manager = manager.with_fleet(Arc::new(shared));
            }
        }
        manager.load_provided_now();
        certs = Some(Certs {
            store,
            schedule: manager.schedule(),
        });
        server.add_service(background_service("tenantgate certificates", manager));
    }

    if let Some(addr) = gw.metrics_listen {
        let listener = crate::listener::bind(addr).map_err(|source| StartError::MetricsListen { addr, source })?;
        server.add_service(background_service(
            "tenantgate metrics",
            MetricsEndpoint {
                metrics: metrics.clone(),
                listener: std::sync::Mutex::new(Some(listener)),
                limits: snap.config.telemetry.metrics_listening,
            },
        ));
    }
    if !snap.config.admin.tokens.is_empty() {
        let addr = gw.admin_listen;
        let listener = crate::listener::bind(addr).map_err(|source| StartError::AdminListen { addr, source })?;
        server.add_service(background_service(
            "tenantgate admin",
            AdminApi {
                audit: Arc::new(crate::admin::Audit::new(
                    registry
                        .source()
                        .tenants_dir()
                        .is_some()
                        .then(|| registry.source().path())
                        .as_deref(),
                )),
                registry: registry.clone(),
                certs,
                lifecycle: lifecycle.clone(),
                listener: std::sync::Mutex::new(Some(listener)),
            },
        ));
    }
    server.add_service(background_service(
        "tenantgate domain lifecycle",
        Verifier {
            lifecycle: lifecycle.clone(),
        },
    ));
    server.add_service(background_service(
        "tenantgate config watcher",
        ConfigWatcher {
            registry: registry.clone(),
        },
    ));
    if let Some(store) = &snap.config.store {
        let fleet = Arc::new(Fleet::new(store, StoreMetrics::register(&metrics)?)?);
        registry.book().use_fleet(fleet.clone());
        tracing::info!(prefix = %store.key_prefix, "fleet mode: rate limits and quotas shared through Redis");
        server.add_service(background_service(
            "tenantgate limit store",
            FleetSync {
                fleet,
                book: registry.book().clone(),
                summary: Some({
                    let registry = registry.clone();
                    Arc::new(move || crate::admin::replica_summary(&registry))
                }),
            },
        ));
    }
    if registry.store().is_some() {
        server.add_service(background_service(
            "tenantgate registry sync",
            RegistrySync {
                registry: registry.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "tenantgate rollout guard",
        crate::registry::rollouts::RolloutGuard {
            registry: registry.clone(),
            metrics: metrics.clone(),
        },
    ));
    server.add_service(background_service(
        "tenantgate backend health",
        crate::proxy::health::HealthChecks {
            registry: registry.clone(),
            metrics: metrics.clone(),
        },
    ));
    server.add_service(background_service(
        "tenantgate upstream names",
        crate::proxy::resolve::UpstreamNames {
            registry: registry.clone(),
            metrics: metrics.clone(),
        },
    ));
    server.add_service(background_service(
        "tenantgate idle connections",
        crate::proxy::pool::IdleReaper {
            registry: registry.clone(),
        },
    ));
    server.add_service(background_service(
        "tenantgate quotas",
        QuotaFlusher {
            book: registry.book().clone(),
        },
    ));

    tracing::info!(
        http = %gw.http_listen,
        https = ?gw.https_listen,
        metrics = ?gw.metrics_listen,
        admin = ?(!snap.config.admin.tokens.is_empty()).then_some(gw.admin_listen),
        tenants = snap.tenants.len(),
        domains = snap.table.len(),
        "tenantgate serving"
    );
    drop(snap);
    server.run_forever()
}
