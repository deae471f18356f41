//! The certificate store: which certificate answers a handshake.
//!
//! Sources, in order: operator PEM files (`certs_dir`, indexed by SAN at
//! start and on reload), then managed certificates (ACME-issued files in
//! the state dir, or internal-CA leaves). Managed certificates are loaded
//! lazily into a bounded cache, so start-up and reload cost does not grow
//! with the number of stored certificates. A handshake gets a certificate
//! only when its SNI routes to a tenant: an unknown SNI is refused, and an
//! SNI never triggers issuance from a public CA.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use quick_cache::sync::Cache;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::certs::{CertError, Loaded};

/// An operator certificate with less than this left is replaced by a
/// managed one; a managed certificate this close to its end counts as
/// expiring.
pub const RENEW_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);
use super::internal_ca::InternalCa;
use crate::registry::Snapshot;
use crate::routing::MatchKind;

/// A certificate ready to serve, with its rustls config.
#[derive(Debug)]
pub struct Entry {
    pub loaded: Loaded,
    pub config: Arc<ServerConfig>,
    pub origin: Origin,
}

/// Where a served certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An operator file in `certs_dir`.
    Operator(PathBuf),
    /// A managed certificate file in the state dir (issued by ACME).
    Managed(PathBuf),
    /// A leaf of the internal CA, kept in memory only.
    Internal,
}

/// What a handshake for a host would be answered with now, for the admin
/// API. `loaded` is `None` for an internal-CA name whose leaf is made at
/// its first handshake.
#[derive(Debug, Clone)]
pub struct Served {
    pub origin: Origin,
    pub loaded: Option<Loaded>,
}

/// Why a handshake gets no certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no SNI and no default certificate")]
    NoSni,
    #[error("SNI is not a configured host")]
    UnknownSni,
    #[error("no certificate for this host yet")]
    NoCertificate,
}

impl Refusal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSni => "no_sni",
            Refusal::UnknownSni => "unknown_sni",
            Refusal::NoCertificate => "no_certificate",
        }
    }

    /// The TLS alert description sent to the client: `unrecognized_name`
    /// (112) for a name this gateway does not serve or no name at all,
    /// `handshake_failure` (40) while a served name has no certificate yet.
    pub fn alert(self) -> u8 {
        match self {
            Refusal::NoSni | Refusal::UnknownSni => 112,
            Refusal::NoCertificate => 40,
        }
    }
}

#[derive(Default)]
struct Provided {
    exact: HashMap<String, Arc<Entry>>,
    wildcard: HashMap<String, Arc<Entry>>,
}

/// A problem with one operator certificate file.
#[derive(Debug)]
pub struct FileProblem {
    pub path: PathBuf,
    pub error: CertError,
}

/// All certificates the gateway can serve.
pub struct CertStore {
    provided: ArcSwap<Provided>,
    managed_dir: PathBuf,
    cache: Cache<String, Arc<Entry>>,
    internal: Option<InternalCa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions>,
    /// One load (or internal issue) of a managed name at a time: the first
    /// handshakes of a name wait for it instead of each loading (or
    /// issuing) their own on a blocking thread of their own. By name hash.
    loading: [tokio::sync::Mutex<()>; LOAD_SHARDS],
    /// TLS-ALPN-01 challenge certificates of the orders in flight.
    alpn: super::alpn::AlpnChallenges,
}

const LOAD_SHARDS: usize = 16;

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl CertStore {
    /// A store with managed certificates under `state_dir/certs` and, when
    /// given, an internal CA for names nothing else covers.
    pub fn new(state_dir: &Path, internal: Option<InternalCa>, cache_size: usize) -> CertStore {
        CertStore {
            provided: ArcSwap::from_pointee(Provided::default()),
            managed_dir: state_dir.join("certs"),
            cache: Cache::new(cache_size.max(16)),
            internal,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            sessions: ServerSessionMemoryCache::new(16 * 1024),
            loading: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            alpn: super::alpn::AlpnChallenges::default(),
        }
    }

    /// Answers TLS-ALPN-01 handshakes for `name` with a certificate for
    /// `digest`, until [`CertStore::remove_alpn_challenge`]. Returns the
    /// certificate and its key (DER), to share with other replicas.
    pub fn add_alpn_challenge(&self, name: &str, digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), super::alpn::AlpnError> {
        self.alpn.insert(name, digest, &self.provider)
    }

    /// Answers TLS-ALPN-01 handshakes for `name` with another replica's
    /// challenge certificate (DER certificate and PKCS#8 key).
    pub fn install_alpn_challenge(&self, name: &str, cert: &[u8], key: &[u8]) -> Result<(), super::alpn::AlpnError> {
        self.alpn.insert_der(name, cert, key, &self.provider)
    }

    pub fn remove_alpn_challenge(&self, name: &str) {
        self.alpn.remove(name);
    }

    /// [`CertStore::alpn_challenge`], waiting at most `within` for another
    /// replica's challenge to arrive (fleet mode).
    pub async fn wait_alpn_challenge(
        &self,
        name: &str,
        within: std::time::Duration,
    ) -> Option<Arc<rustls::server::ServerConfig>> {
        self.alpn.wait_for(name, within).await
    }

    /// The TLS-ALPN-01 handshake config for `name`, while an order wants it.
    pub fn alpn_challenge(&self, name: &str) -> Option<Arc<rustls::server::ServerConfig>> {
        self.alpn.config_for(name)
    }

    /// The internal CA, if this store issues from one.
    pub fn internal_ca(&self) -> Option<&InternalCa> {
        self.internal.as_ref()
    }

    fn entry(&self, loaded: Loaded, origin: Origin) -> Result<Arc<Entry>, CertError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CertError::Key(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(loaded.key.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        Ok(Arc::new(Entry {
            loaded,
            config: Arc::new(config),
            origin,
        }))
    }

    /// Re-reads the operator certificate directory and swaps the index.
    /// Bad files are skipped and returned; they never block the others.
    /// Blocking: call off the async threads.
    pub fn load_provided(&self, dir: &Path) -> (usize, Vec<FileProblem>) {
        let mut problems = Vec::new();
        let mut next = Provided::default();
        let mut count = 0;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.provided.store(Arc::new(next));
                return (0, problems);
            }
            Err(e) => {
                problems.push(FileProblem {
                    path: dir.to_path_buf(),
                    error: e.into(),
                });
                return (0, problems);
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("pem" | "crt")))
            .collect();
        paths.sort();
        for path in paths {
            match load_pair(&path).and_then(|l| self.entry(l, Origin::Operator(path.clone()))) {
                Ok(entry) => {
                    count += 1;
                    for name in &entry.loaded.names {
                        let map = match name.strip_prefix("*.") {
                            Some(_) => &mut next.wildcard,
                            None => &mut next.exact,
                        };
                        let key = name.strip_prefix("*.").unwrap_or(name).to_string();
                        // Several files for one name: the one valid longest wins.
                        match map.get(&key) {
                            Some(have) if have.loaded.not_after >= entry.loaded.not_after => {}
                            _ => {
                                map.insert(key, entry.clone());
                            }
                        }
                    }
                }
                Err(error) => problems.push(FileProblem { path, error }),
            }
        }
        self.provided.store(Arc::new(next));
        (count, problems)
    }

    /// Whether an operator certificate covers `host` for at least
    /// [`RENEW_BEFORE`] more: if not, the name is managed (ACME or the
    /// internal CA) like any other.
    pub fn provided_covers(&self, host: &str) -> bool {
        self.provided_for(host)
            .is_some_and(|e| e.loaded.not_after > SystemTime::now() + RENEW_BEFORE)
    }

    /// The operator certificate for `host` that is valid now: exact first,
    /// then wildcard.
    fn provided_for(&self, host: &str) -> Option<Arc<Entry>> {
        let p = self.provided.load();
        let now = SystemTime::now();
        let valid = |e: &&Arc<Entry>| e.loaded.not_after > now;
        p.exact
            .get(host)
            .filter(valid)
            .or_else(|| {
                host.split_once('.')
                    .and_then(|(_, parent)| p.wildcard.get(parent))
                    .filter(valid)
            })
            .cloned()
    }

    /// The managed certificate name for a host matched as `kind`; with
    /// `base_wildcard`, platform hosts share their base domain's wildcard.
    pub fn managed_name(kind: MatchKind, host: &str, base_wildcard: bool) -> String {
        match (kind, host.split_once('.')) {
            (MatchKind::Wildcard, Some((_, parent))) => format!("*.{parent}"),
            (MatchKind::Subdomain, Some((_, parent))) if base_wildcard => format!("*.{parent}"),
            _ => host.to_string(),
        }
    }

    /// Where a managed certificate lives: one file, `certs/<name>.pem`
    /// (`*` spelled `_wildcard_`), holding the chain and then the key, so
    /// that one atomic rename replaces both and no reader or crash can see a
    /// mismatched pair.
    pub fn managed_path(&self, name: &str) -> PathBuf {
        self.managed_dir
            .join(format!("{}.pem", name.replace('*', "_wildcard_")))
    }

    /// Makes a freshly issued certificate live for `name`.
    pub fn install(&self, name: &str, loaded: Loaded) -> Result<(), CertError> {
        let entry = self.entry(loaded, Origin::Managed(self.managed_path(name)))?;
        self.cache.insert(name.to_string(), entry);
        Ok(())
    }

    /// Deletes `name`'s stored certificate and private key and drops it from
    /// memory; `Ok(false)` when there was no file. Blocking.
    pub fn remove_managed(&self, name: &str) -> std::io::Result<bool> {
        self.cache.remove(name);
        match std::fs::remove_file(self.managed_path(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The managed certificate for `name` currently served, if loaded.
    pub fn cached(&self, name: &str) -> Option<Arc<Entry>> {
        self.cache.get(name)
    }

    /// Chooses the certificate for a handshake's SNI (already normalised).
    pub async fn select(self: &Arc<Self>, sni: &str, snap: &Snapshot) -> Result<Arc<Entry>, Refusal> {
        // Shared hosts and header hosts are served too: the policy chooses
        // their tenant per request.
        let kind = match snap.table.lookup(sni) {
            Some(m) => m.kind,
            None if snap.table.paths.shared(sni).is_some() || snap.config.identity.header_hosts.contains(sni) => {
                MatchKind::Exact
            }
            None => return Err(Refusal::UnknownSni),
        };
        // An operator certificate wins while it has time left; close to its
        // end, a managed one (once issued) takes over, and it serves only
        // while nothing else can.
        let provided = self.provided_for(sni);
        if let Some(e) = provided
            .as_ref()
            .filter(|e| e.loaded.not_after > SystemTime::now() + RENEW_BEFORE)
        {
            return Ok(e.clone());
        }
        let base_wildcard = snap.config.tls.as_ref().is_some_and(|t| t.base_wildcard());
        let name = Self::managed_name(kind, sni, base_wildcard);
        if let Some(e) = self.valid_cached(&name) {
            return Ok(e);
        }
        let _turn = self.loading[load_shard(&name)].lock().await;
        // Another handshake may have loaded it while this one waited.
        if let Some(e) = self.valid_cached(&name) {
            return Ok(e);
        }
        let store = self.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load_managed(&name)).await;
        match (loaded, provided) {
            (Ok(Some(e)), _) => Ok(e),
            (_, Some(p)) => Ok(p),
            _ => Err(Refusal::NoCertificate),
        }
    }

    /// The cached managed certificate for `name`, while it is valid.
    fn valid_cached(&self, name: &str) -> Option<Arc<Entry>> {
        let e = self.cache.get(name)?;
        if e.loaded.not_after > SystemTime::now() {
            return Some(e);
        }
        self.cache.remove(name);
        None
    }

    /// Loads a managed certificate from disk, or makes one with the
    /// internal CA. Blocking.
    fn load_managed(&self, name: &str) -> Option<Arc<Entry>> {
        if let Some(stored) = self.stored(name) {
            match stored.and_then(|l| self.entry(l, Origin::Managed(self.managed_path(name)))) {
                Ok(e) => {
                    self.cache.insert(name.to_string(), e.clone());
                    return Some(e);
                }
                Err(err) => tracing::warn!(name, error = %err, "stored certificate unusable"),
            }
        }
        let ca = self.internal.as_ref()?;
        match ca.issue(name).and_then(|l| self.entry(l, Origin::Internal)) {
            Ok(e) => {
                self.cache.insert(name.to_string(), e.clone());
                Some(e)
            }
            Err(err) => {
                tracing::error!(name, error = %err, "internal CA could not issue");
                None
            }
        }
    }
}

impl CertStore {
    /// What a handshake for `host` (routed as `kind`) would be answered
    /// with now, chosen as [`CertStore::select`] chooses, without loading,
    /// caching or issuing anything; `None` when nothing would be served.
    /// Reads the managed certificate file when it is not in memory:
    /// blocking, call it off the async threads (never on the request path).
    pub fn served(&self, host: &str, kind: MatchKind, base_wildcard: bool) -> Option<Served> {
        let now = SystemTime::now();
        let provided = self.provided_for(host);
        let of = |e: &Arc<Entry>| Served {
            origin: e.origin.clone(),
            loaded: Some(e.loaded.clone()),
        };
        if let Some(e) = provided.as_ref().filter(|e| e.loaded.not_after > now + RENEW_BEFORE) {
            return Some(of(e));
        }
        let name = Self::managed_name(kind, host, base_wildcard);
        if let Some(e) = self.cache.peek(&name).filter(|e| e.loaded.not_after > now) {
            return Some(of(&e));
        }
        if let Some(Ok(loaded)) = self.stored(&name) {
            let origin = Origin::Managed(self.managed_path(&name));
            return Some(Served {
                origin,
                loaded: Some(loaded),
            });
        }
        if self.internal.is_some() {
            return Some(Served {
                origin: Origin::Internal,
                loaded: None,
            });
        }
        provided.as_ref().map(of)
    }

    /// The leaf of `name`'s managed certificate file, read without its
    /// chain or key (for scheduling and ARI). Blocking.
    pub fn stored_leaf(&self, name: &str) -> Option<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(self.managed_path(name)).ok()?;
        rustls::pki_types::CertificateDer::pem_slice_iter(&pem).next()?.ok()
    }

    /// The validity (not before, not after) of `name`'s managed
    /// certificate, when it has one that has not expired: only its leaf is
    /// parsed, so reading every stored certificate at start-up costs no key
    /// material. Blocking.
    pub fn stored_validity(&self, name: &str) -> Option<(SystemTime, SystemTime)> {
        let leaf = self.stored_leaf(name)?;
        let (_, not_before, not_after) = super::certs::facts(&leaf).ok()?;
        (not_after > SystemTime::now()).then_some((not_before, not_after))
    }

    /// The managed certificate file of `name`: `None` if there is none,
    /// else whether it is usable. Blocking.
    pub fn stored(&self, name: &str) -> Option<Result<Loaded, CertError>> {
        let pem = std::fs::read(self.managed_path(name)).ok()?;
        Some(Loaded::from_pem(&pem, &pem))
    }
}

/// Reads an operator certificate: `X.pem`/`X.crt` with the key in the same
/// file or in `X.key`.
fn load_pair(path: &Path) -> Result<Loaded, CertError> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)?;
    // Report a broken certificate as such, before looking for its key.
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let has_key = String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----");
    let key = if has_key {
        pem.clone()
    } else {
        std::fs::read(path.with_extension("key"))?
    };
    Loaded::from_pem(&pem, &key)
}

/// The load lock of `name`.
fn load_shard(name: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() % LOAD_SHARDS as u64) as usize
}
