//! `POST /v1/changes[/preview]`: a batch of tenant changes, applied all or
//! nothing, or only validated and diffed.

use std::collections::HashSet;

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::problem::{json_response, Body, Problem};
use super::tenants::{check_if_match, editable, missing, parse_tenant, Call};
use crate::config::diff::TenantDiff;
use crate::registry::TenantEdit;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    changes: Vec<Change>,
}

/// One change of a batch.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Change {
    /// Create or replace a tenant (the body of `PUT /v1/tenants/{id}`, with its `id`).
    Put { tenant: Value, if_match: Option<String> },
    /// Remove a tenant.
    Delete { id: String, if_match: Option<String> },
}

impl Call {
    /// Applies (or with `dry_run`, previews) a batch. Operator only.
    pub async fn changes(self, dry_run: bool) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let batch: Batch = serde_json::from_slice(&self.body)
            .map_err(|e| Problem::bad_request(format!("body is not a batch of changes: {e}")))?;
        let mut planned = Vec::with_capacity(batch.changes.len());
        let mut ids = Vec::with_capacity(batch.changes.len());
        for c in batch.changes {
            let (id, edit, if_match) = match c {
                Change::Put { tenant, if_match } => {
                    let id = tenant["id"].as_str().unwrap_or_default().to_string();
                    let t = parse_tenant(&id, tenant.to_string().as_bytes())?;
                    (id, TenantEdit::Put(Box::new(t)), if_match)
                }
                Change::Delete { id, if_match } => (id.clone(), TenantEdit::Delete(id), if_match),
            };
            ids.push(id.clone());
            planned.push((id, edit, if_match));
        }
        let unique: HashSet<&String> = ids.iter().collect();
        if unique.len() != ids.len() {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "a batch may change each tenant once",
            ));
        }
        let done = self
            .write(ids, dry_run, move |texts, snap| {
                let mut edits = Vec::with_capacity(planned.len());
                for (id, edit, if_match) in planned {
                    let existing = editable(texts, snap, &id)?;
                    if matches!(edit, TenantEdit::Delete(_)) && existing.is_none() {
                        return Err(missing(&id));
                    }
                    check_if_match(if_match.as_deref(), existing.as_ref().map(|(_, e)| e.as_str()))?;
                    edits.push(edit);
                }
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
}

impl Call {
    /// Every tenant kept in tenant files, ready for `POST /v1/import`.
    pub fn export(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let texts = self.registry.texts();
        let mut tenants = Vec::with_capacity(texts.tenants.len());
        for text in texts.tenants.values() {
            let t: crate::config::file::TenantSection = toml::from_str(text).map_err(|_| Problem::internal())?;
            tenants.push(serde_json::to_value(t).map_err(|_| Problem::internal())?);
        }
        let snap = self.registry.snapshot();
        let main: Vec<&str> = snap
            .config
            .tenants
            .iter()
            .map(|t| t.id.as_str())
            .filter(|id| !texts.tenants.contains_key(*id))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"tenants": tenants, "main_file_tenants": main, "generation": snap.generation}),
        ))
    }

    /// Makes the tenant files equal to an export: creates, replaces and
    /// deletes, all or nothing. `?preview=true` returns the diff only.
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
