//! `POST /v1/changes[/preview]`: a batch of tenant and template changes,
//! applied all or nothing, or only validated and diffed; and export/import.

use std::collections::HashSet;

use http::{header, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::preview::Diffs;
use super::problem::{json_bytes, Body, Problem};
use super::request;
use super::templates::{self, refuse_in_use, template_of_value, TEMPLATE};
use super::tenants::{
    canonical, check_if_match, editable, if_match, invalid, missing, read_only, tag_listed, tenant_of_value, Call,
    TENANT,
};
use crate::config::file::{PlanSection, TemplateSection, TenantSection};
use crate::config::{valid_tenant_id, Texts};
use crate::registry::{Snapshot, TenantEdit};

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    changes: Vec<Change>,
}

/// One change of a batch.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Change {
    /// Create or replace a tenant (the body of `PUT /v1/tenants/{id}`, with its `id`).
    Put { tenant: Value, if_match: Option<String> },
    /// Remove a tenant.
    Delete { id: String, if_match: Option<String> },
    /// Create or replace a template (the body of `PUT /v1/templates/{name}`, with its `name`).
    PutTemplate { template: Value, if_match: Option<String> },
    /// Remove a template no tenant names.
    DeleteTemplate { name: String, if_match: Option<String> },
}

impl Change {
    /// The edit, and the `If-Match` it must pass.
    fn plan(self) -> Result<(TenantEdit, Option<String>), Problem> {
        Ok(match self {
            Change::Put { tenant, if_match } => (TenantEdit::Put(Box::new(tenant_of_value(tenant)?)), if_match),
            Change::Delete { id, if_match } => (TenantEdit::Delete(id), if_match),
            Change::PutTemplate { template, if_match } => {
                let (name, t) = template_of_value(template)?;
                (TenantEdit::PutTemplate(name, Box::new(t)), if_match)
            }
            Change::DeleteTemplate { name, if_match } => (TenantEdit::DeleteTemplate(name), if_match),
        })
    }
}

/// Checks one edit of a batch against the live state: the tenant or
/// template is writable here, exists if deleted, and matches `if_match`.
fn admit(texts: &Texts, snap: &Snapshot, edit: &TenantEdit, if_match: Option<&str>) -> Result<(), Problem> {
    let (existing, what, gone) = match (edit.tenant(), edit.template()) {
        (Some(id), _) => (editable(texts, snap, id)?, TENANT, missing(id)),
        (None, Some(name)) => (
            templates::editable(texts, snap, name)?,
            TEMPLATE,
            templates::missing(name),
        ),
        (None, None) => return Err(Problem::internal()),
    };
    if matches!(edit, TenantEdit::Delete(_) | TenantEdit::DeleteTemplate(_)) && existing.is_none() {
        return Err(gone);
    }
    check_if_match(what, if_match, existing.as_ref().map(|(_, e)| e.as_str()))
}

impl Call {
    /// Applies (or with `dry_run`, previews) a batch. Operator only.
    pub async fn changes(self, dry_run: bool) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let batch: Batch = serde_json::from_value(request::json(&self.body)?)
            .map_err(|e| Problem::bad_request(format!("body is not a batch of changes: {e}")))?;
        let planned = batch
            .changes
            .into_iter()
            .map(Change::plan)
            .collect::<Result<Vec<_>, _>>()?;
        let unique: HashSet<(Option<&str>, Option<&str>)> =
            planned.iter().map(|(e, _)| (e.tenant(), e.template())).collect();
        if unique.len() != planned.len() {
            return Err(invalid("a batch may change each tenant and each template once"));
        }
        let ids = planned
            .iter()
            .filter_map(|(e, _)| e.tenant().map(str::to_string))
            .collect();
        let done = self
            .write(ids, dry_run, move |texts, snap| {
                for (edit, if_match) in &planned {
                    admit(texts, snap, edit, if_match.as_deref())?;
                }
                let edits: Vec<TenantEdit> = planned.into_iter().map(|(e, _)| e).collect();
                refuse_in_use(snap, &edits)?;
                Ok(((), edits))
            })
            .await?;
        outcome(!dry_run, done).await
    }
}

/// `{"applied", "generation", "diff"}` of a batch or import, with the
/// registry's ETag; built off the runtime (a diff may list 100,000 tenants).
async fn outcome(apply: bool, done: super::write::Done<()>) -> Result<Response<Body>, Problem> {
    #[derive(Serialize)]
    struct Outcome<'a> {
        applied: bool,
        diff: Diffs<'a>,
        generation: Option<u64>,
    }
    tokio::task::spawn_blocking(move || {
        let body = Outcome {
            applied: apply && !done.unchanged,
            diff: Diffs(&done.diff),
            generation: done.generation,
        };
        let mut resp = json_bytes(
            StatusCode::OK,
            serde_json::to_vec(&body).map_err(|_| Problem::internal())?,
        );
        if let Some(g) = done.generation {
            if let Ok(v) = HeaderValue::from_str(&registry_etag(g)) {
                resp.headers_mut().insert(header::ETAG, v);
            }
        }
        Ok(resp)
    })
    .await
    .map_err(|_| Problem::internal())?
}

/// The body of `POST /v1/import`, as `GET /v1/export` returns it, parsed
/// from the request bytes in one pass into the tenant files' own types
/// (duplicate keys and unknown fields refused).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Import {
    tenants: Vec<TenantSection>,
    /// Absent (an export from before templates): template files stay as they are.
    templates: Option<Vec<NamedTemplate>>,
    /// Informational members of an export, not imported.
    #[serde(rename = "main_file_tenants")]
    _main_file_tenants: Option<Vec<String>>,
    #[serde(rename = "main_file_templates")]
    _main_file_templates: Option<Vec<String>>,
    #[serde(default, rename = "generation", deserialize_with = "crate::config::file::whole")]
    _generation: Option<i64>,
}

/// A template with its name, as exported.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct NamedTemplate {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_https: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<PlanSection>,
}

impl NamedTemplate {
    fn of(name: &str, t: TemplateSection) -> NamedTemplate {
        NamedTemplate {
            name: name.to_string(),
            pool: t.pool,
            redirect_https: t.redirect_https,
            plan: t.plan,
            timezone: t.timezone,
            limits: t.limits,
        }
    }

    fn section(self) -> (String, TemplateSection) {
        let t = TemplateSection {
            pool: self.pool,
            redirect_https: self.redirect_https,
            plan: self.plan,
            timezone: self.timezone,
            limits: self.limits,
        };
        (self.name, t)
    }
}

/// `GET /v1/export`, serialised straight from the tenant files' types.
#[derive(Serialize)]
struct Export<'a> {
    tenants: Vec<TenantSection>,
    templates: Vec<NamedTemplate>,
    main_file_tenants: Vec<&'a str>,
    main_file_templates: Vec<&'a str>,
    generation: u64,
}

/// The ETag of the whole registry at `generation` (export and import).
fn registry_etag(generation: u64) -> String {
    format!("\"g{generation}\"")
}

/// An import's tenants, and its templates if it lists them.
type Imported = (Vec<TenantSection>, Option<Vec<(String, TemplateSection)>>);

/// An import's tenants and templates, checked and canonical. Blocking (a
/// 100,000-tenant body is CPU work).
fn parse_import(body: &[u8]) -> Result<Imported, Problem> {
    let import: Import =
        serde_json::from_slice(body).map_err(|e| Problem::bad_request(format!("body is not an export: {e}")))?;
    let mut seen = HashSet::with_capacity(import.tenants.len());
    let mut tenants = Vec::with_capacity(import.tenants.len());
    for t in import.tenants {
        if !seen.insert(t.id.clone()) {
            return Err(invalid(format!("tenant {:?} is listed twice", t.id)));
        }
        tenants.push(canonical(t)?);
    }
    let templates = match import.templates {
        None => None,
        Some(list) => {
            let mut names = HashSet::with_capacity(list.len());
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                if !valid_tenant_id(&t.name) {
                    return Err(invalid(format!("{:?} is not a valid template name", t.name)));
                }
                if !names.insert(t.name.clone()) {
                    return Err(invalid(format!("template {:?} is listed twice", t.name)));
                }
                out.push(t.section());
            }
            Some(out)
        }
    };
    Ok((tenants, templates))
}

impl Call {
    /// Every tenant and template kept in files, ready for `POST /v1/import`,
    /// with the registry's ETag.
    pub async fn export(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let registry = self.registry.clone();
        let (bytes, generation) = tokio::task::spawn_blocking(move || {
            let texts = registry.texts();
            let snap = registry.snapshot();
            let mut tenants = Vec::with_capacity(texts.tenants.len());
            for text in texts.tenants.values() {
                tenants.push(toml::from_str::<TenantSection>(text).map_err(|_| Problem::internal())?);
            }
            let mut templates = Vec::with_capacity(texts.templates.len());
            for (name, text) in &texts.templates {
                let t: TemplateSection = toml::from_str(text).map_err(|_| Problem::internal())?;
                templates.push(NamedTemplate::of(name, t));
            }
            let export = Export {
                tenants,
                templates,
                main_file_tenants: snap
                    .config
                    .tenants
                    .iter()
                    .map(|t| t.id.as_str())
                    .filter(|id| !texts.tenants.contains_key(*id))
                    .collect(),
                main_file_templates: snap
                    .config
                    .templates
                    .iter()
                    .filter(|t| t.in_main_file)
                    .map(|t| t.name.as_str())
                    .collect(),
                generation: snap.generation,
            };
            let bytes = serde_json::to_vec(&export).map_err(|_| Problem::internal())?;
            Ok::<_, Problem>((bytes, snap.generation))
        })
        .await
        .map_err(|_| Problem::internal())??;
        let mut resp = json_bytes(StatusCode::OK, bytes);
        if let Ok(v) = HeaderValue::from_str(&registry_etag(generation)) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        Ok(resp)
    }

    /// Makes the tenant files, and the template files if the export lists
    /// templates, equal to an export: creates, replaces and deletes, all or
    /// nothing. `?preview=true` returns the diff only. An import that would
    /// delete a tenant or template needs `?prune=true` or `If-Match` with
    /// the export's ETag (428 otherwise).
    pub async fn import(mut self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let preview = self.query.flag("preview")?;
        let prune = self.query.flag("prune")?;
        let expected = if_match(&self.headers);
        let body = std::mem::take(&mut self.body);
        let (sections, template_sections) = tokio::task::spawn_blocking(move || parse_import(&body))
            .await
            .map_err(|_| Problem::internal())??;
        let mut ids: Vec<String> = sections.iter().map(|t| t.id.clone()).collect();
        {
            let live = self.registry.texts();
            let wanted: HashSet<&str> = sections.iter().map(|t| t.id.as_str()).collect();
            let gone: Vec<String> = live
                .tenants
                .keys()
                .filter(|id| !wanted.contains(id.as_str()))
                .cloned()
                .collect();
            ids.extend(gone);
        }
        let done = self
            .write(ids, preview, move |texts, snap| {
                if let Some(tag) = &expected {
                    if !tag_listed(tag, &registry_etag(snap.generation)) {
                        return Err(Problem::new(
                            StatusCode::PRECONDITION_FAILED,
                            "stale",
                            "the registry changed since your export; export again and retry with its ETag",
                        )
                        .with("current_etag", json!(registry_etag(snap.generation))));
                    }
                }
                let in_files: HashSet<&str> = texts.tenants.keys().map(String::as_str).collect();
                let in_main: HashSet<&str> = snap
                    .config
                    .tenants
                    .iter()
                    .map(|t| t.id.as_str())
                    .filter(|id| !in_files.contains(id))
                    .collect();
                if let Some(t) = sections.iter().find(|t| in_main.contains(t.id.as_str())) {
                    return Err(read_only(TENANT, &t.id, "tenants"));
                }
                let wanted: HashSet<&str> = sections.iter().map(|t| t.id.as_str()).collect();
                let mut edits: Vec<TenantEdit> = texts
                    .tenants
                    .keys()
                    .filter(|id| !wanted.contains(id.as_str()))
                    .map(|id| TenantEdit::Delete(id.clone()))
                    .collect();
                drop(wanted);
                if let Some(list) = &template_sections {
                    let named: HashSet<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
                    if let Some(t) = snap
                        .config
                        .templates
                        .iter()
                        .find(|t| t.in_main_file && named.contains(t.name.as_str()))
                    {
                        return Err(read_only(TEMPLATE, &t.name, "templates"));
                    }
                    let gone = texts.templates.keys().filter(|n| !named.contains(n.as_str()));
                    edits.extend(gone.map(|n| TenantEdit::DeleteTemplate(n.clone())));
                }
                if !edits.is_empty() && !preview && !prune && expected.is_none() {
                    return Err(Problem::new(
                        StatusCode::PRECONDITION_REQUIRED,
                        "prune-required",
                        format!(
                            "this import deletes {} tenant(s) or template(s) not in it; send ?prune=true, or If-Match with the ETag of GET /v1/export",
                            edits.len()
                        ),
                    )
                    .with("deletes", json!(edits.len())));
                }
                edits.extend(sections.into_iter().map(|t| TenantEdit::Put(Box::new(t))));
                if let Some(list) = template_sections {
                    edits.extend(list.into_iter().map(|(n, t)| TenantEdit::PutTemplate(n, Box::new(t))));
                }
                refuse_in_use(snap, &edits)?;
                Ok(((), edits))
            })
            .await?;
        outcome(!preview, done).await
    }
}
