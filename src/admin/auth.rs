//! Bearer tokens: the secret's SHA-256 is compared in constant time with
//! every configured hash; tokens are never logged.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::problem::Problem;
use crate::config::{Scope, Token, TokenLimits};

/// Who is calling: the token's name (for the audit log) and its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
    pub limits: TokenLimits,
}

impl Caller {
    /// May this caller read or write tenant `id`?
    pub fn may_touch(&self, id: &str) -> Result<(), Problem> {
        match &self.scope {
            Scope::Operator => Ok(()),
            Scope::Tenant(own) if own == id => Ok(()),
            Scope::Tenant(_) => Err(Problem::forbidden("this token may only touch its own tenant")),
        }
    }

    /// Only operator tokens pass.
    pub fn operator(&self) -> Result<(), Problem> {
        match self.scope {
            Scope::Operator => Ok(()),
            Scope::Tenant(_) => Err(Problem::forbidden("this needs an operator token")),
        }
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Finds the token presented in `Authorization: Bearer <token>`.
pub fn authenticate(headers: &HeaderMap, tokens: &[Token]) -> Result<Caller, Problem> {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(Problem::unauthorized)?;
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Look at every token, so the time taken does not tell which one matched.
    let mut found = None;
    for t in tokens {
        if bool::from(t.sha256.ct_eq(&hash)) {
            found = Some(t);
        }
    }
    found
        .map(|t| Caller {
            name: t.name.clone(),
            scope: t.scope.clone(),
            limits: t.limits,
        })
        .ok_or_else(Problem::unauthorized)
}

/// The hex SHA-256 of a token, as stored in `[[admin.tokens]] sha256`.
pub fn hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr   abc  "] {
            assert_eq!(bearer(v), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc"] {
            assert_eq!(bearer(v), None, "{v}");
        }
    }
}
