//! `[gateway] proxy_protocol`, `trusted_sources`, `proxy_protocol_required`
//! and `proxy_protocol_timeout_ms`: which proxy listeners expect a PROXY
//! protocol header, and from which load balancers it is believed.

use std::time::Duration;

use serde::Deserialize;

use super::identity::Cidr;
use super::{err, ConfigError, Problem};

/// `proxy_protocol = true | false | ["http", "https"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Listeners {
    All(bool),
    Named(Vec<String>),
}

/// Default bound on reading a header.
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;

/// The validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// The plain listener expects headers.
    pub http: bool,
    /// The TLS listener expects headers (before the TLS handshake).
    pub https: bool,
    /// Only these peers may send a header; it is refused from any other.
    pub trusted_sources: Vec<Cidr>,
    /// A trusted peer that sends no header is refused.
    pub required: bool,
    /// The longest wait for a header.
    pub timeout: Duration,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        ProxyProtocol {
            http: false,
            https: false,
            trusted_sources: Vec::new(),
            required: true,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        }
    }
}

impl ProxyProtocol {
    /// Whether `listener` (`"http"` or `"https"`) expects headers.
    pub fn on(&self, listener: &str) -> bool {
        match listener {
            "http" => self.http,
            "https" => self.https,
            _ => false,
        }
    }
}

/// Validates the four `[gateway]` keys.
pub fn validate(
    listeners: Option<Listeners>,
    trusted: Option<Vec<String>>,
    required: Option<bool>,
    timeout_ms: Option<u64>,
    errs: &mut Vec<ConfigError>,
) -> ProxyProtocol {
    let mut pp = ProxyProtocol::default();
    match listeners {
        None | Some(Listeners::All(false)) => {}
        Some(Listeners::All(true)) => (pp.http, pp.https) = (true, true),
        Some(Listeners::Named(names)) => {
            for (i, n) in names.iter().enumerate() {
                match n.as_str() {
                    "http" => pp.http = true,
                    "https" => pp.https = true,
                    _ => errs.push(err(
                        None,
                        &format!("gateway.proxy_protocol[{i}]"),
                        Problem::BadSetting {
                            value: n.clone(),
                            expected: "\"http\" or \"https\" (the proxy listeners), or proxy_protocol = true for both",
                        },
                    )),
                }
            }
        }
    }
    for (i, raw) in trusted.unwrap_or_default().iter().enumerate() {
        match Cidr::parse(raw) {
            Some(c) => pp.trusted_sources.push(c),
            None => errs.push(err(
                None,
                &format!("gateway.trusted_sources[{i}]"),
                Problem::BadCidr { value: raw.clone() },
            )),
        }
    }
    if (pp.http || pp.https) && pp.trusted_sources.is_empty() {
        errs.push(err(
            None,
            "gateway.trusted_sources",
            Problem::BadSetting {
                value: "[]".into(),
                expected: "the load balancers' addresses, such as [\"10.0.0.0/8\"]: proxy_protocol believes headers from them only",
            },
        ));
    }
    pp.required = required.unwrap_or(true);
    match timeout_ms {
        Some(0) => errs.push(err(
            None,
            "gateway.proxy_protocol_timeout_ms",
            Problem::Zero { value: "0".into() },
        )),
        Some(ms) => pp.timeout = Duration::from_millis(ms),
        None => {}
    }
    pp
}
