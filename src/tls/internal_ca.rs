//! A local certificate authority for development, like Caddy's `internal`
//! issuer: one root made once and kept in the state dir, and leaf
//! certificates made on demand for configured names. Browsers trust it only
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
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    root_path: PathBuf,
}

impl InternalCa {
    /// Loads the root from `state_dir/internal-ca/`, creating it on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<InternalCa, CertError> {
        let dir = state_dir.join("internal-ca");
        let (cert_path, key_path) = (dir.join("root.pem"), dir.join("root.key"));
        if cert_path.exists() && key_path.exists() {
            let root_pem = std::fs::read_to_string(&cert_path)?;
            let key =
                KeyPair::from_pem(&std::fs::read_to_string(&key_path)?).map_err(|e| CertError::Key(e.to_string()))?;
            let issuer = Issuer::from_ca_cert_pem(&root_pem, key).map_err(|e| CertError::X509(e.to_string()))?;
            return Ok(InternalCa {
                issuer,
                root_pem,
                root_path: cert_path,
            });
        }
        let key = KeyPair::generate().map_err(|e| CertError::Key(e.to_string()))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "tenantgate internal CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.not_after = (SystemTime::now() + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let cert = params.self_signed(&key).map_err(|e| CertError::X509(e.to_string()))?;
        let root_pem = cert.pem();
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, root_pem.as_bytes())?;
        let issuer = Issuer::new(params, key);
        Ok(InternalCa {
            issuer,
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
        let chain = format!("{}{}", cert.pem(), self.root_pem);
        Loaded::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes())
    }
}
