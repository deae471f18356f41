//! A local certificate authority for development, like Caddy's `internal`
//! issuer: one root made once and kept in the state dir, an intermediate
//! signed by it, and leaf certificates made on demand for configured names,
//! signed by the intermediate and served with it (never with the root). Browsers trust it only
//! if the operator installs `internal-ca/root.pem`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::certs::{CertError, Loaded};
use super::state::write_private;

/// Leaf lifetime. Short, since leaves are cheap to make again.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The internal CA.
pub struct InternalCa {
    /// The intermediate that signs leaves; the root only signs it.
    issuer: Issuer<'static, KeyPair>,
    intermediate_pem: String,
    root_pem: String,
    root_path: PathBuf,
}

/// Intermediate lifetime; it is made again from the root when it is
/// missing or has less than a year left.
const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

impl InternalCa {
    /// Loads the root and its intermediate from `state_dir/internal-ca/`,
    /// creating what is missing (the root once; the intermediate whenever
    /// it is missing or within a year of its end).
    pub fn load_or_create(state_dir: &Path) -> Result<InternalCa, CertError> {
        let dir = state_dir.join("internal-ca");
        let (cert_path, key_path) = (dir.join("root.pem"), dir.join("root.key"));
        let (root_pem, root) = if cert_path.exists() && key_path.exists() {
            let root_pem = std::fs::read_to_string(&cert_path)?;
            let key =
                KeyPair::from_pem(&std::fs::read_to_string(&key_path)?).map_err(|e| CertError::Key(e.to_string()))?;
            let issuer = Issuer::from_ca_cert_pem(&root_pem, key).map_err(|e| CertError::X509(e.to_string()))?;
            (root_pem, issuer)
        } else {
            let key = KeyPair::generate().map_err(|e| CertError::Key(e.to_string()))?;
            let params = ca_params(
                "tenantgate internal CA",
                Duration::from_secs(10 * 365 * 24 * 3600),
                None,
            );
            let cert = params.self_signed(&key).map_err(|e| CertError::X509(e.to_string()))?;
            let root_pem = cert.pem();
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_private(&cert_path, root_pem.as_bytes())?;
            (root_pem, Issuer::new(params, key))
        };
        let (int_path, int_key_path) = (dir.join("intermediate.pem"), dir.join("intermediate.key"));
        let stored = std::fs::read_to_string(&int_path)
            .ok()
            .zip(std::fs::read_to_string(&int_key_path).ok())
            .filter(|(pem, _)| intermediate_current(pem));
        let (intermediate_pem, issuer) = match stored {
            Some((pem, key)) => {
                let key = KeyPair::from_pem(&key).map_err(|e| CertError::Key(e.to_string()))?;
                let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| CertError::X509(e.to_string()))?;
                (pem, issuer)
            }
            None => {
                let key = KeyPair::generate().map_err(|e| CertError::Key(e.to_string()))?;
                let params = ca_params("tenantgate internal intermediate", INTERMEDIATE_LIFETIME, Some(0));
                let cert = params
                    .signed_by(&key, &root)
                    .map_err(|e| CertError::X509(e.to_string()))?;
                let pem = cert.pem();
                write_private(&int_key_path, key.serialize_pem().as_bytes())?;
                write_private(&int_path, pem.as_bytes())?;
                (pem, Issuer::new(params, key))
            }
        };
        Ok(InternalCa {
            issuer,
            intermediate_pem,
            root_pem,
            root_path: cert_path,
        })
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Where the root is stored.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Makes a leaf for one name (`*.parent` allowed). CPU work: call it off
    /// the async threads.
    pub fn issue(&self, name: &str) -> Result<Loaded, CertError> {
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(|e| CertError::X509(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.not_after = (SystemTime::now() + LEAF_LIFETIME).into();
        let key = KeyPair::generate().map_err(|e| CertError::Key(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CertError::X509(e.to_string()))?;
        // The leaf and the intermediate; the root is the client's to trust.
        let chain = format!("{}{}", cert.pem(), self.intermediate_pem);
        Loaded::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes())
    }
}

/// CA parameters: `path_len` bounds the CAs below (`Some(0)`: leaves only).
fn ca_params(cn: &str, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
    params.not_after = (SystemTime::now() + lifetime).into();
    params
}

/// Whether a stored intermediate has more than a year left.
fn intermediate_current(pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    let Ok(der) = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()) else {
        return false;
    };
    super::certs::facts(&der).is_ok_and(|(_, _, end)| end > SystemTime::now() + Duration::from_secs(365 * 24 * 3600))
}
