//! One ACME order over HTTP-01, and the account it runs under.

use std::path::{Path, PathBuf};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::dns01::Rfc2136;
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
    /// The CA forgot our account (a test CA restarted, or it was deactivated).
    pub fn account_missing(&self) -> bool {
        matches!(self, OrderError::Acme(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }
}

/// Where the account credentials are kept.
pub fn account_path(state_dir: &Path) -> PathBuf {
    state_dir.join("acme").join("account.json")
}

/// Loads the stored account, or registers a new one and stores it (0600).
pub async fn account(settings: &Acme, state_dir: &Path) -> Result<Account, OrderError> {
    let builder = || match &settings.ca_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let path = account_path(state_dir);
    if let Ok(bytes) = tokio::fs::read(&path).await {
        let creds: AccountCredentials =
            serde_json::from_slice(&bytes).map_err(|e| OrderError::State(format!("{}: {e}", path.display())))?;
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
    let (account, creds) = builder()?.create(&new, settings.directory_url.clone(), None).await?;
    let json = serde_json::to_vec(&creds).map_err(|e| OrderError::State(e.to_string()))?;
    let p = path.clone();
    tokio::task::spawn_blocking(move || write_private(&p, &json))
        .await
        .map_err(|e| OrderError::State(e.to_string()))?
        .map_err(|e| OrderError::State(format!("{}: {e}", path.display())))?;
    tracing::info!(account = account.id(), "ACME account registered");
    Ok(account)
}

/// Orders a certificate for `names` (the first is the managed name; a
/// base domain's wildcard also names the base). Wildcards are proven over
/// DNS-01 (the whole order, through `dns`), the rest over HTTP-01 answered
/// by this gateway. Returns (chain PEM, key PEM).
pub async fn order(
    account: &Account,
    names: &[String],
    challenges: &Challenges,
    dns: Option<&Rfc2136>,
    alpn: Option<&CertStore>,
) -> Result<(String, String), OrderError> {
    let over_dns = names.iter().any(|n| n.starts_with("*."));
    if over_dns && dns.is_none() {
        return Err(OrderError::NeedsDns01(names.join(", ")));
    }
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
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
                        store
                            .add_alpn_challenge(&domain, digest.as_ref())
                            .map_err(|e| OrderError::State(e.to_string()))?;
                        alpn_names.push(domain);
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
    }
    if let Some(store) = alpn {
        for n in &alpn_names {
            store.remove_alpn_challenge(n);
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
