//! TLS-ALPN-01 (RFC 8737): while an order runs, a handshake that offers
//! only the `acme-tls/1` protocol for a name in the order gets a
//! self-signed certificate carrying the key authorization's digest in its
//! critical `acmeIdentifier` extension, and the connection ends there.
//! No other handshake ever sees these certificates.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_1: &[u8] = b"acme-tls/1";

/// Why a challenge certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AlpnError {
    #[error("challenge certificate: {0}")]
    Cert(String),
}

/// Challenge certificates of the orders in flight, by name.
#[derive(Debug, Default)]
pub struct AlpnChallenges {
    by_name: RwLock<HashMap<String, Arc<ServerConfig>>>,
    /// Woken at each install, for handshakes waiting on one.
    installed: tokio::sync::Notify,
}

impl AlpnChallenges {
    /// Answers `acme-tls/1` handshakes for `name` with a certificate for
    /// `digest` (SHA-256 of the key authorization) until [`remove`].
    /// Returns the certificate and its PKCS#8 key (DER), for other replicas.
    ///
    /// [`remove`]: AlpnChallenges::remove
    pub fn insert(
        &self,
        name: &str,
        digest: &[u8],
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<(Vec<u8>, Vec<u8>), AlpnError> {
        let fail = |e: &dyn std::fmt::Display| AlpnError::Cert(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| fail(&e))?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
        let (cert, key) = (cert.der().to_vec(), key.serialize_der());
        self.insert_der(name, &cert, &key, provider)?;
        Ok((cert, key))
    }

    /// Answers `acme-tls/1` handshakes for `name` with a challenge
    /// certificate made elsewhere (another replica's order).
    pub fn insert_der(
        &self,
        name: &str,
        cert: &[u8],
        key: &[u8],
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<(), AlpnError> {
        let fail = |e: &dyn std::fmt::Display| AlpnError::Cert(e.to_string());
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
        // Not `with_single_cert`: it parses the certificate as a WebPKI end
        // entity, which refuses the critical acmeIdentifier extension.
        let signing = provider.key_provider.load_private_key(der).map_err(|e| fail(&e))?;
        let certified = CertifiedKey::new(vec![CertificateDer::from(cert.to_vec())], signing);
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(&e))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Only(Arc::new(certified))));
        config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Arc::new(config));
        self.installed.notify_waiters();
        Ok(())
    }

    pub fn remove(&self, name: &str) {
        self.by_name.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// The challenge handshake's config for `name`, waiting at most
    /// `within` for one to be installed (another replica's order reaches
    /// this one through Redis a moment after the CA may connect).
    pub async fn wait_for(&self, name: &str, within: std::time::Duration) -> Option<Arc<ServerConfig>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let installed = self.installed.notified();
            tokio::pin!(installed);
            installed.as_mut().enable();
            if let Some(c) = self.config_for(name) {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, installed).await.is_err() {
                return self.config_for(name);
            }
        }
    }

    /// The challenge handshake's config for `name`, while one is pending.
    pub fn config_for(&self, name: &str) -> Option<Arc<ServerConfig>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

/// Serves the one challenge certificate.
#[derive(Debug)]
struct Only(Arc<CertifiedKey>);

impl ResolvesServerCert for Only {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_handshake_waits_for_a_challenge_installed_meanwhile_and_no_longer() {
        let challenges = Arc::new(AlpnChallenges::default());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (cert, key) = challenges
            .insert("a.example", &[7u8; 32], &provider)
            .expect("challenge");
        challenges.remove("a.example");
        let other = challenges.clone();
        let install = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            other.insert_der("a.example", &cert, &key, &provider).expect("install");
        });
        let start = std::time::Instant::now();
        assert!(challenges.wait_for("a.example", Duration::from_secs(5)).await.is_some());
        assert!(start.elapsed() < Duration::from_secs(4), "woken by the install");
        install.await.expect("task");
        let start = std::time::Instant::now();
        assert!(challenges
            .wait_for("b.example", Duration::from_millis(200))
            .await
            .is_none());
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
