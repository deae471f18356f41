//! One ACME order over HTTP-01, and the account it runs under.

use std::path::{Path, PathBuf};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use super::dns01::Rfc2136;
use rustls::pki_types::CertificateDer;

use super::fleet::SharedAcme;
use super::Challenges;
use crate::config::Acme;
use crate::tls::state::write_private;
use crate::tls::CertStore;

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("account state: {0}")]
    State(String),
    #[error("order ended {0:?}")]
    Status(OrderStatus),
    #[error("authorization is {0:?}")]
    Authorization(AuthorizationStatus),
    #[error("the CA offered no HTTP-01 challenge")]
    NoHttp01,
    #[error("the CA offered no TLS-ALPN-01 challenge")]
    NoTlsAlpn01,
    #[error("the CA offered no DNS-01 challenge")]
    NoDns01,
    #[error("DNS-01: {0}")]
    Dns01(#[from] super::dns01::Dns01Error),
    #[error("{0} needs DNS-01, and [tls.acme.dns01] is not set")]
    NeedsDns01(String),
}

impl OrderError {
    /// What an operator reads: a CA that cannot be reached is named with
    /// its directory and the transport's innermost reason ("ACME directory
    /// https://… unreachable: connection refused"), never a bare "client
    /// error (Connect)".
    pub fn describe(&self, directory: &str) -> String {
        let OrderError::Acme(e) = self else {
            return self.to_string();
        };
        if !matches!(
            e,
            instant_acme::Error::Http(_) | instant_acme::Error::Hyper(_) | instant_acme::Error::Other(_)
        ) {
            return self.to_string();
        }
        let mut innermost: &(dyn std::error::Error + 'static) = e;
        let mut io = None;
        while let Some(next) = innermost.source() {
            if let Some(i) = next.downcast_ref::<std::io::Error>() {
                io = Some(i);
            }
            innermost = next;
        }
        let why = match io.map(std::io::Error::kind) {
            Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
            Some(std::io::ErrorKind::ConnectionReset) => "connection reset".to_string(),
            Some(std::io::ErrorKind::TimedOut) => "connection timed out".to_string(),
            _ => innermost.to_string(),
        };
        format!("ACME directory {directory} unreachable: {why}")
    }

    /// The CA forgot our account (a test CA restarted, or it was deactivated).
    pub fn account_missing(&self) -> bool {
        matches!(self, OrderError::Acme(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }
}

/// Where the account of the CA at `directory` is kept: one file per
/// directory URL (`acme/accounts/<sha-256 of the URL, 16 hex>.json`), so a
/// changed `directory_url` never reuses another CA's account.
pub fn account_path(state_dir: &Path, directory: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(directory.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    state_dir.join("acme").join("accounts").join(format!("{hex}.json"))
}

/// The single account file of earlier versions; used only when the
/// directory it names is the configured one.
fn legacy_account_path(state_dir: &Path) -> PathBuf {
    state_dir.join("acme").join("account.json")
}

/// Stored credentials for `directory`: its own file, or the legacy file
/// when that one was registered at the same directory.
async fn stored_credentials(state_dir: &Path, directory: &str) -> Result<Option<AccountCredentials>, OrderError> {
    let path = account_path(state_dir, directory);
    if let Ok(bytes) = tokio::fs::read(&path).await {
        let creds =
            serde_json::from_slice(&bytes).map_err(|e| OrderError::State(format!("{}: {e}", path.display())))?;
        return Ok(Some(creds));
    }
    let legacy = legacy_account_path(state_dir);
    let Ok(bytes) = tokio::fs::read(&legacy).await else {
        return Ok(None);
    };
    let same_ca = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .is_some_and(|v| v.get("directory").and_then(|d| d.as_str()) == Some(directory));
    if !same_ca {
        return Ok(None);
    }
    // Moved to its per-directory file, so a later reset forgets it for good.
    let creds: Option<AccountCredentials> = serde_json::from_slice(&bytes).ok();
    let moved = tokio::task::spawn_blocking(move || write_private(&path, &bytes))
        .await
        .is_ok_and(|r| r.is_ok());
    if moved {
        let _ = tokio::fs::remove_file(&legacy).await;
    }
    Ok(creds)
}

/// Loads the stored account of the configured CA, or registers a new one
/// and stores it (0600).
pub async fn account(settings: &Acme, state_dir: &Path) -> Result<Account, OrderError> {
    let builder = || match &settings.ca_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let path = account_path(state_dir, &settings.directory_url);
    if let Some(creds) = stored_credentials(state_dir, &settings.directory_url).await? {
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact = settings.contact.as_ref().map(|c| {
        if c.contains(':') {
            c.clone()
        } else {
            format!("mailto:{c}")
        }
    });
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let eab = settings
        .eab
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
    let (account, creds) = builder()?
        .create(&new, settings.directory_url.clone(), eab.as_ref())
        .await?;
    let json = serde_json::to_vec(&creds).map_err(|e| OrderError::State(e.to_string()))?;
    let p = path.clone();
    tokio::task::spawn_blocking(move || write_private(&p, &json))
        .await
        .map_err(|e| OrderError::State(e.to_string()))?
        .map_err(|e| OrderError::State(format!("{}: {e}", path.display())))?;
    tracing::info!(account = account.id(), directory = %settings.directory_url, "ACME account registered");
    Ok(account)
}

/// Orders a certificate for `names` (the first is the managed name; a
/// base domain's wildcard also names the base). Wildcards are proven over
/// DNS-01 (the whole order, through `dns`), the rest over HTTP-01 answered
/// by this gateway (or TLS-ALPN-01, with `alpn`). In fleet mode
/// (`shared`), each HTTP-01 challenge is shared with every replica before
/// the CA is told to validate it. Returns (chain PEM, key PEM).
/// A renewal names the certificate it `replaces` (RFC 9773), so the CA
/// can exempt it from rate limits; a CA without ARI, or one that refuses
/// the field (a certificate of another CA), gets the order without it.
pub async fn order(
    account: &Account,
    names: &[String],
    challenges: &Challenges,
    dns: Option<&Rfc2136>,
    alpn: Option<&CertStore>,
    shared: Option<&SharedAcme>,
    replaces: Option<&CertificateDer<'_>>,
) -> Result<(String, String), OrderError> {
    let over_dns = names.iter().any(|n| n.starts_with("*."));
    if over_dns && dns.is_none() {
        return Err(OrderError::NeedsDns01(names.join(", ")));
    }
    let name = names.first().map(String::as_str).unwrap_or_default();
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let replaced = replaces.and_then(|der| CertificateIdentifier::try_from(der).ok());
    let mut order = match replaced {
        Some(id) => match account.new_order(&NewOrder::new(&ids).replaces(id)).await {
            Ok(o) => {
                tracing::info!(name, "renewal order names the certificate it replaces");
                o
            }
            Err(e) => {
                tracing::info!(name, error = %e, "renewal order without replaces");
                account.new_order(&NewOrder::new(&ids)).await?
            }
        },
        None => account.new_order(&NewOrder::new(&ids)).await?,
    };
    let mut tokens = Vec::new();
    let mut published = Vec::new();
    let mut alpn_names = Vec::new();
    let result = async {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(OrderError::Authorization(other)),
            }
            match dns.filter(|_| over_dns) {
                Some(dns) => {
                    let mut challenge = authz.challenge(ChallengeType::Dns01).ok_or(OrderError::NoDns01)?;
                    let Identifier::Dns(domain) = challenge.identifier().identifier.clone() else {
                        return Err(OrderError::NoDns01);
                    };
                    let value = challenge.key_authorization().dns_value();
                    let p = dns.publish(&domain, &value).await?;
                    tracing::info!(target: "acme", record = %p.record(), "DNS-01 record published");
                    published.push(p);
                    challenge.set_ready().await?;
                }
                None if alpn.is_some() => {
                    let mut challenge = authz
                        .challenge(ChallengeType::TlsAlpn01)
                        .ok_or(OrderError::NoTlsAlpn01)?;
                    let Identifier::Dns(domain) = challenge.identifier().identifier.clone() else {
                        return Err(OrderError::NoTlsAlpn01);
                    };
                    if let Some(store) = alpn {
                        let digest = challenge.key_authorization().digest();
                        let (cert, key) = store
                            .add_alpn_challenge(&domain, digest.as_ref())
                            .map_err(|e| OrderError::State(e.to_string()))?;
                        alpn_names.push(domain.clone());
                        // Fleet mode: the CA's validator may reach any replica.
                        if let Some(s) = shared {
                            s.share_alpn(&domain, &cert, &key)
                                .await
                                .map_err(|e| OrderError::State(e.to_string()))?;
                        }
                    }
                    challenge.set_ready().await?;
                }
                None => {
                    let mut challenge = authz.challenge(ChallengeType::Http01).ok_or(OrderError::NoHttp01)?;
                    let domain = match &challenge.identifier().identifier {
                        Identifier::Dns(d) => d.clone(),
                        _ => names.first().cloned().unwrap_or_default(),
                    };
                    let key_authorization = challenge.key_authorization();
                    challenges.insert(&challenge.token, &domain, key_authorization.as_str());
                    tokens.push(challenge.token.clone());
                    if let Some(s) = shared {
                        s.share_challenge(&challenge.token, &domain, key_authorization.as_str())
                            .await
                            .map_err(|e| OrderError::State(e.to_string()))?;
                    }
                    challenge.set_ready().await?;
                }
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(90));
        match order.poll_ready(&retry).await? {
            OrderStatus::Ready => {}
            other => return Err(OrderError::Status(other)),
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&retry).await?;
        Ok((chain, key))
    }
    .await;
    for t in &tokens {
        challenges.remove(t);
        if let Some(s) = shared {
            s.clear_challenge(t).await;
        }
    }
    if let Some(store) = alpn {
        for n in &alpn_names {
            store.remove_alpn_challenge(n);
            if let Some(s) = shared {
                s.clear_alpn(n).await;
            }
        }
    }
    if let Some(dns) = dns {
        for p in &published {
            if let Err(e) = dns.withdraw(p).await {
                tracing::warn!(target: "acme", record = %p.record(), error = %e, "DNS-01 record not removed");
            }
        }
    }
    result
}
