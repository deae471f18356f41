//! Pending HTTP-01 challenges, answered by the plain-HTTP listener.

use std::collections::HashMap;
use std::sync::RwLock;

/// One pending challenge.
#[derive(Debug, Clone)]
struct Pending {
    domain: String,
    key_authorization: String,
}

/// Tokens of orders in flight. Only these are answered; any other token
/// under `/.well-known/acme-challenge/` gets 404.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: RwLock<HashMap<String, Pending>>,
}

impl Challenges {
    pub fn insert(&self, token: &str, domain: &str, key_authorization: &str) {
        let p = Pending {
            domain: domain.to_string(),
            key_authorization: key_authorization.to_string(),
        };
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), p);
    }

    pub fn remove(&self, token: &str) {
        self.tokens.write().unwrap_or_else(|e| e.into_inner()).remove(token);
    }

    /// The key authorization for `token`, if it is pending for `host`.
    pub fn answer(&self, token: &str, host: &str) -> Option<String> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(token)
            .filter(|p| p.domain == host)
            .map(|p| p.key_authorization.clone())
    }
}
