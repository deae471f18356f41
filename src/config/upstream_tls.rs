//! How the gateway talks to a pool's backends: TLS (`tls`, SNI, CA bundle,
//! verification, client certificate for mTLS) and HTTP/2 (`http2`),
//! validated into ready rustls client configurations. Every file is read
//! and checked here, so a bad PEM or a key that does not match its
//! certificate fails `check` and the reload, never a request.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::{err, ConfigError, Problem};

/// A pool's TLS to its backends, ready to connect with.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified in the backend's certificate;
    /// `None`: the upstream's IP address (verified, and no SNI is sent).
    pub server_name: Option<ServerName<'static>>,
    /// ALPN `http/1.1`.
    pub http1: Arc<ClientConfig>,
    /// ALPN `h2` (pools with `http2 = true`).
    pub http2: Arc<ClientConfig>,
    /// `tls_verify = false`: the backend's certificate is not checked.
    pub insecure: bool,
    /// Identifies the settings and file contents: kept-alive connections
    /// are reused across a reload only under the same key.
    pub key: Arc<str>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .field("key", &self.key)
            .finish()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for UpstreamTls {}

/// The keys of `[pools.<name>]` about the transport, as written.
pub struct Raw<'a> {
    pub tls: bool,
    pub server_name: Option<&'a str>,
    pub ca_file: Option<&'a str>,
    pub verify: Option<bool>,
    pub client_cert: Option<&'a str>,
    pub client_key: Option<&'a str>,
}

/// The platform's trust store (read once).
static PLATFORM_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let mut roots = RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        tracing::warn!("no platform CA certificate found: pools with tls = true need tls_ca_file");
    }
    Arc::new(roots)
});

/// Validates pool `pool`'s TLS keys; relative paths are under `base_dir`.
/// `None` when `tls` is off (then any other `tls_*` key is an error) or a
/// problem was pushed to `errs`.
pub fn validate(pool: &str, raw: &Raw<'_>, base_dir: &Path, errs: &mut Vec<ConfigError>) -> Option<UpstreamTls> {
    let field = |k: &str| format!("pools.{pool}.{k}");
    let problem = |errs: &mut Vec<ConfigError>, k: &str, file: Option<&str>, reason: String, fix: &'static str| {
        let file = file.map(str::to_string);
        errs.push(err(None, &field(k), Problem::UpstreamTls { file, reason, fix }));
    };
    if !raw.tls {
        let set = [
            ("tls_server_name", raw.server_name.is_some()),
            ("tls_ca_file", raw.ca_file.is_some()),
            ("tls_verify", raw.verify.is_some()),
            ("tls_client_cert", raw.client_cert.is_some()),
            ("tls_client_key", raw.client_key.is_some()),
        ];
        for (k, _) in set.iter().filter(|(_, s)| *s) {
            let reason = format!("{k} is set but tls is off");
            problem(errs, k, None, reason, "set tls = true on the pool, or remove the key");
        }
        return None;
    }
    let before = errs.len();
    let mut digest = Sha256::new();
    let server_name = raw.server_name.and_then(|n| match ServerName::try_from(n.to_string()) {
        Ok(name) => Some(name),
        Err(e) => {
            let reason = format!("{n:?} is not a DNS name or IP address: {e}");
            problem(
                errs,
                "tls_server_name",
                None,
                reason,
                "write the name the backend's certificate is for, such as \"api.internal\"",
            );
            None
        }
    });
    let read = |errs: &mut Vec<ConfigError>, k: &str, path: &str| -> Option<Vec<u8>> {
        let p = base_dir.join(path);
        match std::fs::read(&p) {
            Ok(b) => Some(b),
            Err(e) => {
                let reason = format!("cannot read {}: {e}", p.display());
                problem(
                    errs,
                    k,
                    Some(path),
                    reason,
                    "point it at a readable PEM file (relative paths are from the config's folder)",
                );
                None
            }
        }
    };
    let verify = raw.verify.unwrap_or(true);
    if !verify {
        tracing::warn!(
            pool,
            "pools.{pool}.tls_verify = false: the backends' certificates are NOT verified; anyone on the path can read and change this pool's traffic"
        );
    }
    let roots = match raw.ca_file {
        Some(path) => read(errs, "tls_ca_file", path).and_then(|pem| {
            digest.update(&pem);
            let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
            let fix = "give a PEM bundle of the CA certificates that sign the backends' certificates";
            match certs {
                Err(e) => problem(
                    errs,
                    "tls_ca_file",
                    Some(path),
                    format!("not PEM certificates: {e}"),
                    fix,
                ),
                Ok(certs) if certs.is_empty() => {
                    problem(errs, "tls_ca_file", Some(path), "no certificate in it".into(), fix)
                }
                Ok(certs) => {
                    let mut roots = RootCertStore::empty();
                    for (i, c) in certs.into_iter().enumerate() {
                        if let Err(e) = roots.add(c) {
                            let reason = format!("certificate {} is not a usable CA: {e}", i + 1);
                            problem(errs, "tls_ca_file", Some(path), reason, fix);
                        }
                    }
                    return Some(Arc::new(roots));
                }
            }
            None
        }),
        None if verify => Some(PLATFORM_ROOTS.clone()),
        None => Some(Arc::new(RootCertStore::empty())),
    };
    let client = match (raw.client_cert, raw.client_key) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            let k = if raw.client_cert.is_some() {
                "tls_client_key"
            } else {
                "tls_client_cert"
            };
            let reason = "tls_client_cert and tls_client_key go together".to_string();
            problem(
                errs,
                k,
                None,
                reason,
                "set both (the client certificate chain and its private key, PEM), or neither",
            );
            None
        }
        (Some(cert_path), Some(key_path)) => {
            let chain = read(errs, "tls_client_cert", cert_path).and_then(|pem| {
                digest.update(&pem);
                let fix = "give the client certificate (then its intermediates) as PEM";
                match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
                    Ok(c) if !c.is_empty() => Some(c),
                    Ok(_) => {
                        problem(
                            errs,
                            "tls_client_cert",
                            Some(cert_path),
                            "no certificate in it".into(),
                            fix,
                        );
                        None
                    }
                    Err(e) => {
                        let reason = format!("not PEM certificates: {e}");
                        problem(errs, "tls_client_cert", Some(cert_path), reason, fix);
                        None
                    }
                }
            });
            let key = read(errs, "tls_client_key", key_path).and_then(|pem| {
                digest.update(&pem);
                match PrivateKeyDer::from_pem_slice(&pem) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        let reason = format!("no usable private key: {e}");
                        let fix = "give the client certificate's private key as PEM (PKCS#8, PKCS#1 or SEC1)";
                        problem(errs, "tls_client_key", Some(key_path), reason, fix);
                        None
                    }
                }
            });
            match (chain, key) {
                (Some(chain), Some(key)) => match certified(chain.clone(), &key) {
                    Ok(()) => Some((chain, key)),
                    Err(reason) => {
                        let fix = "give the private key that belongs to tls_client_cert's first certificate";
                        problem(errs, "tls_client_key", Some(key_path), reason, fix);
                        None
                    }
                },
                _ => None,
            }
        }
    };
    if errs.len() > before {
        return None;
    }
    let roots = roots?;
    let provider = Arc::new(cheapest_first(rustls::crypto::aws_lc_rs::default_provider()));
    let builder = match ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions() {
        Ok(b) => b,
        Err(e) => {
            problem(
                errs,
                "tls",
                None,
                e.to_string(),
                "report this: the TLS library refused its own defaults",
            );
            return None;
        }
    };
    let builder = match verify {
        true => builder.with_root_certificates(roots),
        false => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
    };
    let config = match client {
        Some((chain, key)) => match builder.with_client_auth_cert(chain, key) {
            Ok(c) => c,
            Err(e) => {
                let fix = "give a client certificate and key of a supported type (RSA, ECDSA P-256/P-384, Ed25519)";
                problem(errs, "tls_client_key", raw.client_key, e.to_string(), fix);
                return None;
            }
        },
        None => builder.with_no_client_auth(),
    };
    let mut http1 = config.clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut http2 = config;
    http2.alpn_protocols = vec![b"h2".to_vec()];
    let key = format!(
        "{}|{}|{}|{}|{:x}",
        raw.server_name.unwrap_or(""),
        raw.ca_file.unwrap_or(""),
        verify,
        raw.client_cert.unwrap_or(""),
        digest.finalize()
    );
    Some(UpstreamTls {
        server_name,
        http1: Arc::new(http1),
        http2: Arc::new(http2),
        insecure: !verify,
        key: key.into(),
    })
}

/// The provider's cipher suites with AES-128-GCM ahead of AES-256-GCM for
/// each TLS version (the rest keep their order): a backend that follows the
/// client's preference (nginx and OpenSSL do by default) then spends 10 AES
/// rounds per block instead of 14 on every record, on its side and ours.
/// Both are AEADs the platform accelerates; nothing weaker is added.
fn cheapest_first(mut provider: rustls::crypto::CryptoProvider) -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    provider.cipher_suites.sort_by_key(|s| {
        let aes128 = matches!(
            s.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (s.tls13().is_none(), !aes128)
    });
    provider
}

/// Checks that `key` is usable and belongs to `chain`'s first certificate.
fn certified(chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'static>) -> Result<(), String> {
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(key)
        .map_err(|e| format!("the private key is not usable: {e}"))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| format!("the private key does not match the client certificate: {e}"))
}

/// `tls_verify = false`: any certificate is accepted (signatures on the
/// handshake are still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_offered_first_for_each_version_and_no_suite_is_lost() {
        let default = rustls::crypto::aws_lc_rs::default_provider();
        let ordered = cheapest_first(rustls::crypto::aws_lc_rs::default_provider());
        let names = |p: &rustls::crypto::CryptoProvider| p.cipher_suites.iter().map(|s| s.suite()).collect::<Vec<_>>();
        let mut before = names(&default);
        let after = names(&ordered);
        assert_eq!(after.first(), Some(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        let first12 = ordered
            .cipher_suites
            .iter()
            .find(|s| s.tls13().is_none())
            .map(|s| s.suite());
        assert_eq!(
            first12,
            Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        );
        let tls13 = ordered.cipher_suites.iter().take_while(|s| s.tls13().is_some()).count();
        assert_eq!(
            tls13,
            default.cipher_suites.iter().filter(|s| s.tls13().is_some()).count()
        );
        let mut sorted = after.clone();
        before.sort_by_key(|s| u16::from(*s));
        sorted.sort_by_key(|s| u16::from(*s));
        assert_eq!(before, sorted);
    }
}
