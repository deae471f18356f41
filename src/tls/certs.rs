//! Certificate parsing shared by every source: PEM in, a rustls
//! `CertifiedKey` plus the facts we schedule and match on out.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in PEM")]
    NoCertificate,
    #[error("no private key in PEM")]
    NoKey,
    #[error("PEM is malformed: {0}")]
    Pem(String),
    #[error("certificate does not parse: {0}")]
    X509(String),
    #[error("private key is unsupported or does not match the certificate: {0}")]
    Key(String),
    #[error("certificate expired at {0} (unix time)")]
    Expired(u64),
    #[error("certificate has no DNS names")]
    NoNames,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A usable certificate and what it covers.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// DNS names in the certificate, lowercase; wildcards as `*.parent`.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Loaded {
    /// Parses a chain and key from PEM. Refuses expired certificates and
    /// keys that do not match.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, CertError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Pem(e.to_string()))?;
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey,
            e => CertError::Pem(e.to_string()),
        })?;
        let (names, not_before, not_after) = facts(leaf)?;
        if not_after <= SystemTime::now() {
            return Err(CertError::Expired(unix(not_after)));
        }
        if names.is_empty() {
            return Err(CertError::NoNames);
        }
        let signer =
            rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| CertError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match().map_err(|e| CertError::Key(e.to_string()))?;
        Ok(Loaded {
            key: Arc::new(certified),
            names,
            not_before,
            not_after,
        })
    }

    /// Whether a certificate name (exact or `*.parent`) covers `host`.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_covers(n, host))
    }
}

/// Whether certificate name `name` covers `host` (a wildcard covers exactly one label).
pub fn name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(_, p)| p == parent),
        None => name == host,
    }
}

/// DNS names and validity of a DER certificate.
pub fn facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime, SystemTime), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| CertError::X509(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let validity = cert.validity();
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok((
        names,
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
    ))
}

/// The common name of a DER certificate's issuer, if it has one.
pub fn issuer_cn(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.issuer().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
