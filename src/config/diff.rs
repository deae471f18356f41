//! The difference between two configs' tenants and templates, field by
//! field: what the admin API's preview returns and `tenantgate diff` prints.
//! Tenants are compared with their templates applied, so a template change
//! shows on every tenant whose effective settings it changes.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::file::{File, TemplateSection, TenantSection};
use super::templates;

/// What happens to one tenant or template.
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

/// What a diff entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Tenant,
    Template,
}

/// One tenant's or template's change: every field that differs, before and
/// after (`null` when absent). A tenant's fields are its effective ones.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantDiff {
    /// The tenant id, or the template name.
    pub id: String,
    pub subject: Subject,
    pub action: Action,
    /// The JSON text of `{name: {"before", "after"}}`, in name order: one
    /// string, not a tree of values, since a big import's diff has an
    /// entry per tenant.
    fields: Box<str>,
}

impl TenantDiff {
    /// `{"tenant", "action", "fields": {name: {"before", "after"}}}`, with
    /// `"template"` instead of `"tenant"` for a template.
    pub fn to_json(&self) -> Value {
        let fields = self.fields();
        let key = match self.subject {
            Subject::Tenant => "tenant",
            Subject::Template => "template",
        };
        json!({key: self.id, "action": self.action.as_str(), "fields": fields})
    }

    /// One line: `+ acme: pool "q"`, `~ acme: pool "p" -> "q"`, `- acme`,
    /// `~ template basic: pool "p" -> "q"`.
    pub fn to_line(&self) -> String {
        let sign = match self.action {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
        };
        let fields: Vec<String> = self
            .fields()
            .iter()
            .filter(|(k, _)| *k != "id")
            .map(|(k, v)| (k, &v["before"], &v["after"]))
            .map(|(k, b, a)| match self.action {
                Action::Create => format!("{k} {a}"),
                Action::Delete => format!("{k} {b}"),
                Action::Update => format!("{k} {b} -> {a}"),
            })
            .collect();
        let what = match self.subject {
            Subject::Tenant => String::new(),
            Subject::Template => "template ".to_string(),
        };
        format!("{sign} {what}{}: {}", self.id, fields.join(", "))
    }
}

impl TenantDiff {
    /// `{name: {"before", "after"}}` of each field that changes.
    pub fn fields(&self) -> Map<String, Value> {
        serde_json::from_str(&self.fields).unwrap_or_default()
    }
}

/// Tenants by id.
pub type Tenants = BTreeMap<String, TenantSection>;

/// Templates by name.
pub type Templates = BTreeMap<String, TemplateSection>;

/// What a diff compares: tenants as written, and the templates they may name.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub tenants: Tenants,
    pub templates: Templates,
}

impl State {
    /// The tenants and templates (main file and template files) of a parsed config.
    pub fn of(file: File) -> State {
        let mut templates = file.template_files;
        templates.extend(file.templates);
        let tenants = file.tenants.into_iter().map(|t| (t.id.clone(), t)).collect();
        State { tenants, templates }
    }

    /// Every tenant with its template applied; a tenant naming an unknown
    /// template as written.
    pub fn effective(&self) -> Tenants {
        let one = |t: &TenantSection| match t.template.as_ref().and_then(|n| self.templates.get(n)) {
            Some(template) => templates::apply(t.clone(), template),
            None => t.clone(),
        };
        self.tenants.iter().map(|(id, t)| (id.clone(), one(t))).collect()
    }
}

/// Every change from `before` to `after`: each template that differs, then
/// each tenant whose effective settings differ, each in name order.
pub fn changes(before: &State, after: &State) -> Vec<TenantDiff> {
    let mut out = entries(Subject::Template, &before.templates, &after.templates);
    out.extend(diff(&before.effective(), &after.effective()));
    out
}

/// Every tenant that differs between `before` and `after`, in id order.
pub fn diff(before: &Tenants, after: &Tenants) -> Vec<TenantDiff> {
    entries(Subject::Tenant, before, after)
}

fn entries<T: Serialize + PartialEq>(
    subject: Subject,
    before: &BTreeMap<String, T>,
    after: &BTreeMap<String, T>,
) -> Vec<TenantDiff> {
    let ids: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    ids.into_iter()
        .filter_map(|id| entry(subject, id, before.get(id), after.get(id)))
        .collect()
}

/// The change of one tenant or template from `before` to `after` (`None`:
/// absent), if there is one.
pub fn entry<T: Serialize + PartialEq>(
    subject: Subject,
    id: &str,
    before: Option<&T>,
    after: Option<&T>,
) -> Option<TenantDiff> {
    let action = match (before, after) {
        (None, Some(_)) => Action::Create,
        (Some(_), None) => Action::Delete,
        (Some(x), Some(y)) if x != y => Action::Update,
        _ => return None,
    };
    let (b, a) = (fields(before), fields(after));
    let names: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    let fields: Map<String, Value> = names
        .into_iter()
        .filter_map(|n| {
            let (x, y) = (b.get(n).unwrap_or(&Value::Null), a.get(n).unwrap_or(&Value::Null));
            (x != y).then(|| (n.clone(), json!({"before": x, "after": y})))
        })
        .collect();
    Some(TenantDiff {
        id: id.to_string(),
        subject,
        action,
        fields: Value::Object(fields).to_string().into_boxed_str(),
    })
}

/// `t` with its template applied (as written when it names none, or an
/// unknown one).
pub fn effective<'a>(templates: &Templates, t: &'a TenantSection) -> std::borrow::Cow<'a, TenantSection> {
    match t.template.as_ref().and_then(|n| templates.get(n)) {
        Some(template) => std::borrow::Cow::Owned(templates::apply(t.clone(), template)),
        None => std::borrow::Cow::Borrowed(t),
    }
}

fn fields<T: Serialize>(t: Option<&T>) -> Map<String, Value> {
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
            template: None,
            pool: Some(pool.into()),
            redirect_https: None,
            plan: None,
            timezone: None,
            limits: None,
            paths: Vec::new(),
            strip_prefix: None,
            jwt: None,
            labels: Default::default(),
            features: None,
            locale: None,
            region: None,
            branding: None,
            maintenance: None,
            pinned: None,
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

    #[test]
    fn a_template_change_shows_on_each_tenant_it_changes() {
        let template = |pool: &str| TemplateSection {
            pool: Some(pool.into()),
            ..TemplateSection::default()
        };
        let uses = |id: &str, pool: Option<&str>| TenantSection {
            template: Some("basic".into()),
            pool: pool.map(str::to_string),
            ..t(id, "", &[])
        };
        let tenants: Tenants = [uses("a", None), uses("b", Some("own")), t("c", "p", &[])]
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let before = State {
            tenants: tenants.clone(),
            templates: [("basic".to_string(), template("p"))].into(),
        };
        let after = State {
            tenants,
            templates: [("basic".to_string(), template("q"))].into(),
        };
        let lines: Vec<String> = changes(&before, &after).iter().map(TenantDiff::to_line).collect();
        assert_eq!(
            lines,
            ["~ template basic: pool \"p\" -> \"q\"", "~ a: pool \"p\" -> \"q\""]
        );
        assert_eq!(
            changes(&before, &after)[0].to_json(),
            json!({"template": "basic", "action": "update", "fields": {"pool": {"before": "p", "after": "q"}}})
        );
    }
}
