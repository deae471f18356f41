//! The JWT tenant claim: tokens verified with the `jsonwebtoken` crate
//! against keys from a JWKS (file or URL), and the claim that names the
//! token's tenant.
//!
//! - Keys: one [`KeySet`] per source, shared by every snapshot that names
//!   it (so a reload keeps them). Each key's algorithm is fixed by the key
//!   itself (`alg`, else its type: `oct` HS256, `RSA` RS256, `EC` P-256
//!   ES256, `OKP` Ed25519 EdDSA): a token whose header names another
//!   algorithm is refused, so an RSA public key can never serve as an HMAC
//!   secret, and `alg: none` is never accepted.
//! - Refresh: every `jwks_refresh_secs`, in a background task started by
//!   the request that notices the age (it does not wait for it); at once
//!   for an unknown `kid`, at most once per 10 s. A failed fetch keeps the
//!   last good keys. Only a request for which no keys were ever loaded, or
//!   whose `kid` is unknown, waits for a fetch (bounded by
//!   [`FETCH_TIMEOUT`]), and then only the one that started it.
//! - A verified token is cached until its expiry (and only for the key
//!   set's generation it was checked against), so a repeated token costs a
//!   hash lookup, not a signature check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::identity::{Jwt, KeySource};

/// Unknown-`kid` refetches happen at most this often per key set.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// The longest a request waits for a JWKS fetch it started.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Verified tokens kept per verifier.
const TOKEN_CACHE: usize = 100_000;
/// Longer tokens are verified every time (bounds the cache's memory).
const MAX_CACHED_TOKEN: usize = 4096;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("no key with this kid")]
    UnknownKey,
    #[error("algorithm not allowed for the key")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("invalid claims: {0}")]
    Claims(String),
    /// No keys could ever be loaded (the JWKS is unreachable or empty).
    #[error("no keys available")]
    NoKeys,
}

impl TokenError {
    /// A stable lowercase name, for metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::Algorithm => "algorithm",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Claims(_) => "claims",
            TokenError::NoKeys => "no_keys",
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One usable key.
struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

/// One generation of a key set's keys.
#[derive(Default)]
struct Keys {
    generation: u64,
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`: used only by tokens without one.
    anonymous: Vec<Key>,
    loaded: bool,
}

/// The algorithm a JWK is for, if it is one of HS256, RS256, ES256, EdDSA.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return None,
    };
    use jsonwebtoken::jwk::KeyAlgorithm as K;
    let named = jwk.common.key_algorithm.map(|a| match a {
        K::HS256 => Some(Algorithm::HS256),
        K::RS256 => Some(Algorithm::RS256),
        K::ES256 => Some(Algorithm::ES256),
        K::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    match named {
        None => Some(by_type),
        Some(Some(a)) if a == by_type => Some(a),
        _ => None,
    }
}

/// Parses a JWKS document: every key it can use, the others skipped.
fn parse_jwks(body: &[u8], generation: u64) -> Result<Keys, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Keys {
        generation,
        loaded: true,
        ..Keys::default()
    };
    for v in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        let (Some(alg), Ok(key)) = (algorithm_of(&jwk), DecodingKey::from_jwk(&jwk)) else {
            continue;
        };
        let k = Key { key, alg };
        match jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid, k);
            }
            None => keys.anonymous.push(k),
        }
    }
    Ok(keys)
}

/// The keys of one JWKS source, refreshed in the background.
pub struct KeySet {
    source: KeySource,
    keys: ArcSwap<Keys>,
    refresh_ms: AtomicU64,
    /// When the last fetch started and when one last succeeded (ms since
    /// the epoch).
    last_attempt: AtomicU64,
    last_success: AtomicU64,
    last_unknown_kid: AtomicU64,
    fetching: AtomicBool,
    client: Option<reqwest::Client>,
}

static KEY_SETS: LazyLock<Mutex<HashMap<KeySource, Weak<KeySet>>>> = LazyLock::new(Default::default);

impl KeySet {
    /// The key set of `source`, shared with earlier snapshots while any
    /// holds it. A new file source is read at once (on the loading thread);
    /// a URL is fetched by the first request that needs it.
    pub fn shared(source: &KeySource, refresh: Duration) -> Arc<KeySet> {
        let mut sets = KEY_SETS.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|_, w| w.strong_count() > 0);
        if let Some(set) = sets.get(source).and_then(Weak::upgrade) {
            set.refresh_ms.store(refresh.as_millis() as u64, Ordering::Relaxed);
            if let KeySource::File(_) = source {
                set.read_file_now();
            }
            return set;
        }
        let set = Arc::new(KeySet::new(source.clone(), refresh));
        if let KeySource::File(_) = source {
            set.read_file_now();
        }
        sets.insert(source.clone(), Arc::downgrade(&set));
        set
    }

    fn new(source: KeySource, refresh: Duration) -> KeySet {
        let client = match &source {
            KeySource::Url(_) => http_client(),
            KeySource::File(_) => None,
        };
        KeySet {
            source,
            keys: ArcSwap::from_pointee(Keys::default()),
            refresh_ms: AtomicU64::new(refresh.as_millis() as u64),
            last_attempt: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            last_unknown_kid: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            client,
        }
    }

    /// Reads a file source synchronously (at load, off the request path).
    fn read_file_now(&self) {
        let KeySource::File(path) = &self.source else { return };
        self.last_attempt.store(now_ms(), Ordering::Relaxed);
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| self.install(&b))
        {
            Ok(n) => tracing::debug!(path = %path.display(), keys = n, "JWKS read"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the JWKS; keeping the last good keys")
            }
        }
    }

    /// Installs a fetched document; the number of usable keys.
    fn install(&self, body: &[u8]) -> Result<usize, String> {
        let generation = self.keys.load().generation + 1;
        let keys = parse_jwks(body, generation)?;
        let n = keys.by_kid.len() + keys.anonymous.len();
        if n == 0 {
            return Err("the JWKS holds no usable key".into());
        }
        self.keys.store(Arc::new(keys));
        self.last_success.store(now_ms(), Ordering::Relaxed);
        Ok(n)
    }

    async fn fetch(self: Arc<Self>) {
        self.last_attempt.store(now_ms(), Ordering::Relaxed);
        let body = match (&self.source, &self.client) {
            (KeySource::Url(url), Some(client)) => {
                let got = async {
                    let r = client.get(url).send().await?.error_for_status()?;
                    r.bytes().await
                }
                .await;
                got.map(|b| b.to_vec()).map_err(|e| e.to_string())
            }
            (KeySource::File(path), _) => tokio::fs::read(path).await.map_err(|e| e.to_string()),
            (KeySource::Url(_), None) => Err("no HTTP client".into()),
        };
        match body.and_then(|b| self.install(&b)) {
            Ok(n) => tracing::info!(source = ?self.source, keys = n, "JWKS refreshed"),
            Err(e) => {
                tracing::warn!(source = ?self.source, error = %e, "JWKS fetch failed; keeping the last good keys")
            }
        }
        self.fetching.store(false, Ordering::Release);
    }

    /// Starts a fetch in the background unless one runs; its handle.
    fn spawn_fetch(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if self.fetching.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(handle.spawn(self.clone().fetch()))
    }

    /// The current keys; starts a background refresh when they are older
    /// than the refresh interval (without waiting for it).
    fn current(self: &Arc<Self>) -> Arc<Keys> {
        let keys = self.keys.load_full();
        let age = now_ms().saturating_sub(self.last_attempt.load(Ordering::Relaxed));
        if keys.loaded && age >= self.refresh_ms.load(Ordering::Relaxed) {
            drop(self.spawn_fetch());
        }
        keys
    }

    /// For a set that never loaded: fetches now (at most once per
    /// [`UNKNOWN_KID_INTERVAL`]) and waits, bounded, for that fetch or for
    /// one already running.
    async fn first_load(self: &Arc<Self>) {
        let since = now_ms().saturating_sub(self.last_attempt.load(Ordering::Relaxed));
        let recent = self.last_attempt.load(Ordering::Relaxed) != 0 && since < UNKNOWN_KID_INTERVAL.as_millis() as u64;
        let wait = FETCH_TIMEOUT + Duration::from_millis(500);
        if !recent {
            if let Some(task) = self.spawn_fetch() {
                let _ = tokio::time::timeout(wait, task).await;
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        while self.fetching.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fetches now, rate-limited to once per [`UNKNOWN_KID_INTERVAL`], and
    /// waits (bounded) for the fetch this call started. Whether it did.
    async fn refetch(self: &Arc<Self>) -> bool {
        let now = now_ms();
        let last = self.last_unknown_kid.load(Ordering::Relaxed);
        if now.saturating_sub(last) < UNKNOWN_KID_INTERVAL.as_millis() as u64 && last != 0 {
            return false;
        }
        if self
            .last_unknown_kid
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        match self.spawn_fetch() {
            Some(task) => tokio::time::timeout(FETCH_TIMEOUT + Duration::from_millis(500), task)
                .await
                .is_ok(),
            None => false,
        }
    }
}

/// An HTTP client for JWKS URLs, trusting the system's CA bundle.
fn http_client() -> Option<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .tls_built_in_root_certs(false);
    for pem in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
        if let Ok(bytes) = std::fs::read(pem) {
            if let Ok(certs) = reqwest::Certificate::from_pem_bundle(&bytes) {
                for c in certs {
                    b = b.add_root_certificate(c);
                }
                break;
            }
        }
    }
    b.build()
        .inspect_err(|e| tracing::error!(error = %e, "cannot build the JWKS HTTP client"))
        .ok()
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The tenant claim, if the token has one.
    pub tenant: Option<Box<str>>,
    /// `sub`, if any.
    pub subject: Option<Box<str>>,
    exp: u64,
    generation: u64,
}

/// Verifies tokens for one issuer against one key set.
pub struct Verifier {
    keys: Arc<KeySet>,
    issuer: Option<String>,
    audience: Vec<String>,
    claim: String,
    leeway: u64,
    cache: quick_cache::sync::Cache<Box<str>, Verified, quick_cache::UnitWeighter, ahash::RandomState>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("source", &self.keys.source)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier of `[identity.jwt]`, with `issuer` and `source` when the
    /// tenant brings its own.
    pub fn new(jwt: &Jwt, source: &KeySource, issuer: Option<&str>) -> Verifier {
        Verifier {
            keys: KeySet::shared(source, jwt.refresh),
            issuer: issuer.map(str::to_string).or_else(|| jwt.issuer.clone()),
            audience: jwt.audience.clone(),
            claim: jwt.claim.clone(),
            leeway: jwt.leeway_secs,
            cache: quick_cache::sync::Cache::with(
                TOKEN_CACHE,
                TOKEN_CACHE as u64,
                Default::default(),
                Default::default(),
                Default::default(),
            ),
        }
    }

    /// Verifies `token`: signature, algorithm, `exp` and `nbf` (with the
    /// leeway), `iss` and `aud` when configured.
    pub async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let mut keys = self.keys.current();
        if let Some(v) = self.cache.get(token) {
            if v.generation == keys.generation && v.exp + self.leeway >= now_secs() {
                return Ok(v);
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !keys.loaded {
            self.keys.first_load().await;
            keys = self.keys.current();
            if !keys.loaded {
                return Err(TokenError::NoKeys);
            }
        }
        let found = |keys: &Keys| -> Option<(Algorithm, DecodingKey)> {
            let k = match &header.kid {
                Some(kid) => keys.by_kid.get(kid),
                None => keys.anonymous.iter().find(|k| k.alg == header.alg),
            }?;
            Some((k.alg, k.key.clone()))
        };
        let (alg, key) = match found(&keys) {
            Some(k) => k,
            None if header.kid.is_some() && self.keys.refetch().await => {
                keys = self.keys.current();
                found(&keys).ok_or(TokenError::UnknownKey)?
            }
            None => return Err(TokenError::UnknownKey),
        };
        if alg != header.alg {
            return Err(TokenError::Algorithm);
        }
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(map_error)?;
        let claims = data.claims;
        let tenant = claims.pointer(&self.claim).and_then(|c| match c {
            serde_json::Value::String(s) => Some(s.as_str().into()),
            serde_json::Value::Number(n) => Some(n.to_string().into()),
            _ => None,
        });
        let subject = claims.get("sub").and_then(|s| s.as_str()).map(Into::into);
        let exp = claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let verified = Verified {
            tenant,
            subject,
            exp,
            generation: keys.generation,
        };
        if token.len() <= MAX_CACHED_TOKEN {
            self.cache.insert(token.into(), verified.clone());
        }
        Ok(verified)
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => TokenError::Signature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::InvalidKeyFormat => TokenError::Algorithm,
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidIssuer => TokenError::Issuer,
        K::InvalidAudience => TokenError::Audience,
        K::MissingRequiredClaim(c) => TokenError::Claims(format!("missing {c}")),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => TokenError::Malformed,
        other => TokenError::Claims(format!("{other:?}")),
    }
}

/// The bearer token of an `Authorization` value.
pub fn bearer(value: &[u8]) -> Option<&str> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of cookie `name` in a `Cookie` value.
pub fn cookie<'v>(value: &'v [u8], name: &str) -> Option<&'v str> {
    let v = std::str::from_utf8(value).ok()?;
    v.split(';').find_map(|pair| {
        let (n, val) = pair.trim().split_once('=')?;
        (n == name).then(|| val.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_cookies_are_read() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(cookie(b"a=1; session=tok; b=2", "session"), Some("tok"));
        assert_eq!(cookie(b"xsession=tok", "session"), None);
    }

    #[test]
    fn a_key_serves_only_the_algorithm_of_its_type() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"oct","kid":"bad","alg":"RS256","k":"c2VjcmV0"},
            {"kty":"XYZ","kid":"odd"}
        ]}"#;
        let keys = parse_jwks(doc, 1).expect("jwks");
        assert_eq!(keys.by_kid.get("h").map(|k| k.alg), Some(Algorithm::HS256));
        assert!(!keys.by_kid.contains_key("bad") && !keys.by_kid.contains_key("odd"));
    }
}
