//! The difference between two sets of tenants, field by field: what the
//! admin API's preview returns and `tenantgate diff` prints.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::file::TenantSection;

/// What happens to one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One tenant's change: every field that differs, before and after
/// (`null` when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantDiff {
    pub id: String,
    pub action: Action,
    pub fields: BTreeMap<String, (Value, Value)>,
}

impl TenantDiff {
    /// `{"tenant", "action", "fields": {name: {"before", "after"}}}`.
    pub fn to_json(&self) -> Value {
        let fields: Map<String, Value> = self
            .fields
            .iter()
            .map(|(k, (b, a))| (k.clone(), json!({"before": b, "after": a})))
            .collect();
        json!({"tenant": self.id, "action": self.action.as_str(), "fields": fields})
    }

    /// One line: `+ acme: pool "q"`, `~ acme: pool "p" -> "q"`, `- acme`.
    pub fn to_line(&self) -> String {
        let sign = match self.action {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
        };
        let fields: Vec<String> = self
            .fields
            .iter()
            .filter(|(k, _)| *k != "id")
            .map(|(k, (b, a))| match self.action {
                Action::Create => format!("{k} {a}"),
                Action::Delete => format!("{k} {b}"),
                Action::Update => format!("{k} {b} -> {a}"),
            })
            .collect();
        format!("{sign} {}: {}", self.id, fields.join(", "))
    }
}

/// Tenants by id.
pub type Tenants = BTreeMap<String, TenantSection>;

/// Every tenant that differs between `before` and `after`, in id order.
pub fn diff(before: &Tenants, after: &Tenants) -> Vec<TenantDiff> {
    let ids: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    ids.into_iter()
        .filter_map(|id| {
            let (b, a) = (before.get(id), after.get(id));
            let action = match (b, a) {
                (None, Some(_)) => Action::Create,
                (Some(_), None) => Action::Delete,
                (Some(x), Some(y)) if x != y => Action::Update,
                _ => return None,
            };
            let (b, a) = (fields(b), fields(a));
            let names: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            let fields = names
                .into_iter()
                .filter_map(|n| {
                    let (x, y) = (
                        b.get(n).cloned().unwrap_or(Value::Null),
                        a.get(n).cloned().unwrap_or(Value::Null),
                    );
                    (x != y).then(|| (n.clone(), (x, y)))
                })
                .collect();
            Some(TenantDiff {
                id: id.clone(),
                action,
                fields,
            })
        })
        .collect()
}

fn fields(t: Option<&TenantSection>) -> Map<String, Value> {
    match t.map(serde_json::to_value) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, pool: &str, domains: &[&str]) -> TenantSection {
        TenantSection {
            id: id.into(),
            subdomain: None,
            domains: domains.iter().map(|d| d.to_string()).collect(),
            pool: pool.into(),
            redirect_https: None,
            plan: None,
            timezone: None,
            limits: None,
        }
    }

    #[test]
    fn create_update_delete_and_unchanged() {
        let before: Tenants = [
            ("a", t("a", "p", &["a.com"])),
            ("b", t("b", "p", &[])),
            ("c", t("c", "p", &[])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let after: Tenants = [
            ("a", t("a", "q", &["a.com"])),
            ("c", t("c", "p", &[])),
            ("d", t("d", "p", &["d.com"])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let lines: Vec<String> = diff(&before, &after).iter().map(TenantDiff::to_line).collect();
        assert_eq!(
            lines,
            [
                "~ a: pool \"p\" -> \"q\"",
                "- b: domains [], pool \"p\"",
                "+ d: domains [\"d.com\"], pool \"p\""
            ]
        );
        let a = &diff(&before, &after)[0];
        assert_eq!(
            a.to_json(),
            json!({"tenant": "a", "action": "update", "fields": {"pool": {"before": "p", "after": "q"}}})
        );
    }
}
