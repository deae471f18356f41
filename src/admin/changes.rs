//! `POST /v1/changes[/preview]`: a batch of tenant and template changes,
//! applied all or nothing, or only validated and diffed; and export/import.

use std::collections::HashSet;

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::problem::{json_response, Body, Problem};
use super::templates::{self, parse_template, refuse_in_use, TEMPLATE};
use super::tenants::{check_if_match, editable, invalid, missing, parse_tenant, Call, TENANT};
use crate::config::diff::TenantDiff;
use crate::config::Texts;
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
            Change::Put { tenant, if_match } => {
                let id = tenant["id"].as_str().unwrap_or_default().to_string();
                let t = parse_tenant(&id, tenant.to_string().as_bytes())?;
                (TenantEdit::Put(Box::new(t)), if_match)
            }
            Change::Delete { id, if_match } => (TenantEdit::Delete(id), if_match),
            Change::PutTemplate { template, if_match } => {
                let name = template["name"].as_str().unwrap_or_default().to_string();
                let t = parse_template(&name, template.to_string().as_bytes())?;
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
        let batch: Batch = serde_json::from_slice(&self.body)
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
        let diff: Vec<Value> = done.diff.iter().map(TenantDiff::to_json).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"applied": !dry_run, "generation": done.generation, "diff": diff}),
        ))
    }
}

/// The body of `POST /v1/import`, as `GET /v1/export` returns it.
#[derive(Deserialize)]
struct Import {
    tenants: Vec<Value>,
    /// Absent (an export from before templates): template files stay as they are.
    templates: Option<Vec<Value>>,
}

impl Call {
    /// Every tenant and template kept in files, ready for `POST /v1/import`.
    pub fn export(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let texts = self.registry.texts();
        let mut tenants = Vec::with_capacity(texts.tenants.len());
        for text in texts.tenants.values() {
            let t: crate::config::file::TenantSection = toml::from_str(text).map_err(|_| Problem::internal())?;
            tenants.push(serde_json::to_value(t).map_err(|_| Problem::internal())?);
        }
        let mut templates = Vec::with_capacity(texts.templates.len());
        for (name, text) in &texts.templates {
            let t: crate::config::file::TemplateSection = toml::from_str(text).map_err(|_| Problem::internal())?;
            let mut v = serde_json::to_value(t).map_err(|_| Problem::internal())?;
            v["name"] = json!(name);
            templates.push(v);
        }
        let snap = self.registry.snapshot();
        let main: Vec<&str> = snap
            .config
            .tenants
            .iter()
            .map(|t| t.id.as_str())
            .filter(|id| !texts.tenants.contains_key(*id))
            .collect();
        let main_templates: Vec<&str> = snap
            .config
            .templates
            .iter()
            .filter(|t| t.in_main_file)
            .map(|t| t.name.as_str())
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"tenants": tenants, "templates": templates, "main_file_tenants": main,
                    "main_file_templates": main_templates, "generation": snap.generation}),
        ))
    }

    /// Makes the tenant files, and the template files if the export lists
    /// templates, equal to an export: creates, replaces and deletes, all or
    /// nothing. `?preview=true` returns the diff only.
    pub async fn import(self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let preview = super::tenants::query_param::<bool>(&self.query, "preview").unwrap_or(false);
        let body: Import = serde_json::from_slice(&self.body)
            .map_err(|e| Problem::bad_request(format!("body is not an export: {e}")))?;
        let mut sections = Vec::with_capacity(body.tenants.len());
        for t in &body.tenants {
            let id = t["id"].as_str().unwrap_or_default();
            sections.push(parse_tenant(id, t.to_string().as_bytes())?);
        }
        let template_sections = match &body.templates {
            Some(list) => Some(
                list.iter()
                    .map(|t| {
                        let name = t["name"].as_str().unwrap_or_default();
                        Ok((name.to_string(), parse_template(name, t.to_string().as_bytes())?))
                    })
                    .collect::<Result<Vec<_>, Problem>>()?,
            ),
            None => None,
        };
        let mut ids: Vec<String> = sections.iter().map(|t| t.id.clone()).collect();
        let live = self.registry.texts();
        ids.extend(
            live.tenants
                .keys()
                .filter(|id| !sections.iter().any(|t| &t.id == *id))
                .cloned(),
        );
        let done = self
            .write(ids, preview, move |texts, snap| {
                let mut edits: Vec<TenantEdit> = Vec::with_capacity(sections.len());
                for t in &sections {
                    editable(texts, snap, &t.id)?;
                }
                for id in texts.tenants.keys() {
                    if !sections.iter().any(|t| &t.id == id) {
                        edits.push(TenantEdit::Delete(id.clone()));
                    }
                }
                edits.extend(sections.into_iter().map(|t| TenantEdit::Put(Box::new(t))));
                if let Some(list) = template_sections {
                    for (name, _) in &list {
                        templates::editable(texts, snap, name)?;
                    }
                    let gone = texts.templates.keys().filter(|n| !list.iter().any(|(m, _)| m == *n));
                    edits.extend(gone.map(|n| TenantEdit::DeleteTemplate(n.clone())));
                    edits.extend(list.into_iter().map(|(n, t)| TenantEdit::PutTemplate(n, Box::new(t))));
                }
                refuse_in_use(snap, &edits)?;
                Ok(((), edits))
            })
            .await?;
        let diff: Vec<Value> = done.diff.iter().map(TenantDiff::to_json).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"applied": !preview, "generation": done.generation, "diff": diff}),
        ))
    }
}
