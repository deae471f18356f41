//! The `/metrics` HTTP endpoint, served by pingora on `metrics_listen`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

use super::Metrics;

/// Serves the Prometheus text format at `/metrics`; 404 elsewhere.
pub struct MetricsEndpoint {
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl ServeHttp for MetricsEndpoint {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, content_type, body) = if session.req_header().uri.path() == "/metrics" {
            let mut buf = Vec::with_capacity(16 * 1024);
            match TextEncoder::new().encode(&self.metrics.registry.gather(), &mut buf) {
                Ok(()) => (StatusCode::OK, "text/plain; version=0.0.4", buf),
                Err(e) => {
                    tracing::error!(error = %e, "metrics encoding failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        b"metrics unavailable\n".to_vec(),
                    )
                }
            }
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found; try /metrics\n".to_vec(),
            )
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        resp
    }
}
