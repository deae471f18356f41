//! Assembles the pingora server: the proxy listener, the metrics endpoint and
//! the config watcher.

use std::sync::Arc;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::config::{LoadError, Source};
use crate::proxy::Gateway;
use crate::registry::{ConfigWatcher, Registry};
use crate::telemetry::{self, Metrics, MetricsEndpoint};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error("metrics setup failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Loads the config and runs the gateway until a shutdown signal.
/// Returns only on a start-up error.
pub fn serve(source: Source) -> Result<std::convert::Infallible, StartError> {
    let metrics = Arc::new(Metrics::new()?);
    let registry = Arc::new(Registry::load(source, metrics.clone())?);
    // SAFETY: malloc_trim only releases free heap pages back to the OS.
    unsafe { libc::malloc_trim(0) };
    let snap = registry.snapshot();
    let gw = &snap.config.gateway;
    telemetry::init_logging(snap.config.telemetry.log_format);

    let conf = ServerConf {
        threads: gw.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(registry.clone(), metrics.clone(), false),
        "tenantgate http",
    );
    proxy.add_tcp(&gw.http_listen.to_string());
    server.add_service(proxy);

    if let Some(addr) = gw.metrics_listen {
        let mut svc = Service::new(
            "tenantgate metrics".to_string(),
            MetricsEndpoint {
                metrics: metrics.clone(),
            },
        );
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    server.add_service(background_service(
        "tenantgate config watcher",
        ConfigWatcher {
            registry: registry.clone(),
        },
    ));

    tracing::info!(
        http = %gw.http_listen,
        metrics = ?gw.metrics_listen,
        tenants = snap.tenants.len(),
        domains = snap.table.len(),
        "tenantgate serving"
    );
    drop(snap);
    server.run_forever()
}
