//! Templates: named tenant defaults. A tenant naming one takes each setting
//! it does not set itself (`limits` key by key); validation then sees only
//! the result, so nothing after `config` knows templates exist.

use std::collections::{BTreeMap, HashMap};

use super::file::{TemplateSection, TenantSection};
use super::plans::{self, Plans};
use super::{err, valid_tenant_id, ConfigError, PoolId, Problem, TemplateSpec};

/// Checks every template, those of the main file and those of
/// `templates/<name>.toml`, each once. Returns them in name order; a name
/// defined in both places is a problem, and the main file's definition is kept.
pub(super) fn validate(
    main: BTreeMap<String, TemplateSection>,
    files: BTreeMap<String, TemplateSection>,
    pools: &HashMap<String, PoolId>,
    plans: &Plans<'_>,
    errs: &mut Vec<ConfigError>,
) -> Vec<TemplateSpec> {
    for name in files.keys().filter(|n| main.contains_key(*n)) {
        let problem = Problem::DuplicateTemplate { name: name.clone() };
        errs.push(err(None, &format!("templates.{name}"), problem));
    }
    let mut all: BTreeMap<String, TemplateSpec> = BTreeMap::new();
    // The main file's come last, so they replace a file of the same name.
    for (in_main_file, defined) in [(false, files), (true, main)] {
        for (name, section) in defined {
            let spec = TemplateSpec {
                name: name.clone(),
                in_main_file,
                section,
            };
            all.insert(name, spec);
        }
    }
    for t in all.values() {
        check(t, pools, plans, errs);
    }
    all.into_values().collect()
}

/// The field name of `key` in template `t`: `templates.<name>.<key>` in the
/// main file, `templates/<name>.toml:<key>` in a template file.
fn field(t: &TemplateSpec, key: &str) -> String {
    match (t.in_main_file, key.is_empty()) {
        (true, true) => format!("templates.{}", t.name),
        (true, false) => format!("templates.{}.{key}", t.name),
        (false, true) => format!("templates/{}.toml", t.name),
        (false, false) => format!("templates/{}.toml:{key}", t.name),
    }
}

/// Each value of one template on its own; how they combine with a tenant's
/// own values is checked on each tenant.
fn check(t: &TemplateSpec, pools: &HashMap<String, PoolId>, plans: &Plans<'_>, errs: &mut Vec<ConfigError>) {
    if !valid_tenant_id(&t.name) {
        let problem = Problem::BadTemplateName { value: t.name.clone() };
        errs.push(err(None, &field(t, ""), problem));
    }
    let s = &t.section;
    if let Some(pool) = s.pool.as_ref().filter(|p| !pools.contains_key(*p)) {
        errs.push(err(
            None,
            &field(t, "pool"),
            Problem::UnknownPool { pool: pool.clone() },
        ));
    }
    if let Some(plan) = s.plan.as_ref().filter(|p| !plans.has(p)) {
        errs.push(err(
            None,
            &field(t, "plan"),
            Problem::UnknownPlan { plan: plan.clone() },
        ));
    }
    if let Some(tz) = s.timezone.as_ref().filter(|z| jiff::tz::TimeZone::get(z).is_err()) {
        errs.push(err(
            None,
            &field(t, "timezone"),
            Problem::BadTimezone { value: tz.clone() },
        ));
    }
    if let Some(limits) = &s.limits {
        plans::check_values(limits, &field(t, "limits"), errs);
    }
    super::profile::check_template(s, &|key| field(t, key), errs);
}

/// The template `name` among `templates` (in name order).
pub fn find<'a>(templates: &'a [TemplateSpec], name: &str) -> Option<&'a TemplateSpec> {
    templates
        .binary_search_by(|t| t.name.as_str().cmp(name))
        .ok()
        .and_then(|i| templates.get(i))
}

/// `tenant` over `template`: the tenant's own values win; `limits` are
/// merged key by key.
pub fn apply(mut tenant: TenantSection, template: &TemplateSection) -> TenantSection {
    tenant.pool = tenant.pool.or_else(|| template.pool.clone());
    tenant.redirect_https = tenant.redirect_https.or(template.redirect_https);
    tenant.plan = tenant.plan.or_else(|| template.plan.clone());
    tenant.timezone = tenant.timezone.or_else(|| template.timezone.clone());
    tenant.jwt = tenant.jwt.or_else(|| template.jwt.clone());
    tenant.limits = match (tenant.limits, &template.limits) {
        (Some(own), Some(base)) => Some(Box::new(own.over(base))),
        (own, base) => own.or_else(|| base.clone().map(Box::new)),
    };
    super::profile::apply_template(&mut tenant, template);
    tenant
}

/// What tenant `i` took from its template, so that a problem of such a
/// value, already reported at the template, is not repeated per tenant.
#[derive(Debug, Default)]
pub(super) struct Inherited {
    /// Keys taken from the template: `pool`, `plan`, `timezone`, `limits.<key>`.
    keys: Vec<String>,
    /// The tenant names a template that does not exist.
    unknown: bool,
}

impl Inherited {
    /// Whether `key` came from the template.
    pub(super) fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    /// Whether the tenant names an undefined template (already reported):
    /// values it would have given are not missing on their own account.
    pub(super) fn unknown(&self) -> bool {
        self.unknown
    }

    /// Whether a problem found on tenant `i` is its own, not one of its
    /// template's values (reported once, at the template).
    pub(super) fn own(&self, i: usize, e: &ConfigError) -> bool {
        let prefix = format!("tenants[{i}].");
        let Some(key) = e.field.strip_prefix(&prefix) else {
            return true;
        };
        match e.problem {
            Problem::NoPlan => !self.unknown,
            Problem::UnknownPlan { .. }
            | Problem::BadTimezone { .. }
            | Problem::BadLimit { .. }
            | Problem::BadStoreFailure { .. } => !self.has(key),
            _ => true,
        }
    }
}

/// Tenant `i` with its template applied. An unknown template is a problem
/// naming the defined ones; the tenant is then taken as written.
pub(super) fn resolve(
    i: usize,
    tenant: TenantSection,
    templates: &[TemplateSpec],
    errs: &mut Vec<ConfigError>,
) -> (TenantSection, Inherited) {
    let Some(name) = tenant.template.as_deref() else {
        return (tenant, Inherited::default());
    };
    let Some(template) = find(templates, name) else {
        let problem = Problem::UnknownTemplate {
            template: name.to_string(),
            known: templates.iter().map(|t| t.name.clone()).collect(),
        };
        errs.push(err(Some(&tenant.id), &format!("tenants[{i}].template"), problem));
        let inherited = Inherited {
            keys: Vec::new(),
            unknown: true,
        };
        return (tenant, inherited);
    };
    let t = &template.section;
    let mut keys = Vec::new();
    for (key, own, base) in [
        ("pool", tenant.pool.is_some(), t.pool.is_some()),
        ("plan", tenant.plan.is_some(), t.plan.is_some()),
        ("timezone", tenant.timezone.is_some(), t.timezone.is_some()),
    ] {
        if base && !own {
            keys.push(key.to_string());
        }
    }
    if let Some(base) = &t.limits {
        let own = tenant.limits.as_ref().map(|l| l.keys()).unwrap_or_default();
        keys.extend(
            base.keys()
                .into_iter()
                .filter(|k| !own.contains(k))
                .map(|k| format!("limits.{k}")),
        );
    }
    (apply(tenant, t), Inherited { keys, unknown: false })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse, validate, Config};
    use crate::limits::Rate;

    fn config(text: &str) -> Config {
        let file = parse(Path::new("t.toml"), text).expect("parses");
        let (config, errs) = validate(file, Path::new("."));
        assert_eq!(errs, [], "valid");
        config
    }

    #[test]
    fn tenant_beats_template_beats_plan() {
        let c = config(
            r#"
[gateway]
http_listen = "127.0.0.1:8080"
[pools.p]
upstreams = ["127.0.0.1:9001"]
[pools.q]
upstreams = ["127.0.0.1:9002"]
[plans.std]
requests_per_second = 10
burst = 20
requests_per_day = 50
[templates.basic]
pool = "p"
plan = "std"
timezone = "Europe/Berlin"
[templates.basic.limits]
burst = 30
requests_per_day = 100
[[tenants]]
id = "plain"
template = "basic"
[[tenants]]
id = "own"
template = "basic"
pool = "q"
[tenants.limits]
requests_per_day = 200
"#,
        );
        let (plain, own) = (&c.tenants[0], &c.tenants[1]);
        assert_eq!((plain.pool, own.pool), (0, 1));
        assert_eq!(plain.template.as_deref(), Some("basic"));
        let limits = |t: &crate::config::TenantSpec| t.limits.clone().expect("limited");
        let rate = Some(Rate {
            per_second: 10,
            burst: 30,
        });
        assert_eq!((limits(plain).rate, limits(plain).per_day), (rate, Some(100)));
        assert_eq!((limits(own).rate, limits(own).per_day), (rate, Some(200)));
        assert_eq!(
            limits(own).timezone,
            jiff::tz::TimeZone::get("Europe/Berlin").expect("tz")
        );
    }
}
