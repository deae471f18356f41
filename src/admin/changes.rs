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
