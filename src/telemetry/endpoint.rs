//! The `/metrics` HTTP endpoint on `metrics_listen`, served by the bounded
//! operator listener ([`crate::listener`]).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{Encoder, TextEncoder};

use super::Metrics;
use crate::config::Listening;
use crate::listener::{self, Handler};

/// Serves the Prometheus text format at `/metrics`; 404 elsewhere, 405 for
/// methods other than GET and HEAD.
pub struct MetricsEndpoint {
    pub metrics: Arc<Metrics>,
    /// Bound in `server::serve`, so that a taken port fails the start.
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    pub limits: Listening,
}

struct Serve(Arc<Metrics>);

impl Handler for Serve {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let mut buf = Vec::with_capacity(16 * 1024);
                match TextEncoder::new().encode(&self.0.registry.gather(), &mut buf) {
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
            }
            (_, "/metrics") => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"use GET or HEAD\n".to_vec(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found; try /metrics\n".to_vec(),
            ),
        };
        let head = req.method() == Method::HEAD;
        let mut resp = Response::new(Full::new(if head { Bytes::new() } else { Bytes::from(body) }));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}

#[async_trait]
impl BackgroundService for MetricsEndpoint {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(listener) = listener::take(&self.listener) else {
            tracing::error!("metrics listener unavailable");
            return;
        };
        let serve = Arc::new(Serve(self.metrics.clone()));
        listener::serve("metrics", listener, self.limits, serve, shutdown).await;
    }
}
