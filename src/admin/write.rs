//! Writes through the registry, their problems, and the audit log: every
//! write endpoint ends in [`Call::write`].

use std::collections::HashSet;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::audit::{Entry, MAX_READ};
use super::preview;
use super::problem::{json_response, Body, Problem};
use super::tenants::{Call, PAGE};
use crate::config::diff::TenantDiff;
use crate::config::{LoadError, Problem as ConfigProblem, Scope, Texts};
use crate::registry::{Rendered, Snapshot, StoreError, TenantEdit, VersionError, WriteError};

impl Call {
    /// Runs a write on a blocking thread (compiling a big config is CPU
    /// work) and records it in the audit log, applied or rejected. With
    /// `dry_run`, validates and diffs only, and records nothing.
    pub async fn write<T: Send + 'static>(
        &self,
        writing: Vec<String>,
        dry_run: bool,
        plan: impl FnOnce(&Texts, &Snapshot) -> Result<(T, Vec<TenantEdit>), Problem> + Send + 'static,
    ) -> Result<Done<T>, Problem> {
        let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
        self.run(writing, mode, plan).await
    }

    /// [`Call::write`] for a tenant token: the write is first checked
    /// without the writer lock ([`Registry::validate`]), and a refusal is
    /// answered (and audited) from there, so a tenant's refused writes never
    /// hold up the operator's.
    pub async fn write_checked<T: Send + 'static>(
        &self,
        writing: Vec<String>,
        plan: impl FnOnce(&Texts, &Snapshot) -> Result<(T, Vec<TenantEdit>), Problem> + Clone + Send + 'static,
    ) -> Result<Done<T>, Problem> {
        if let Scope::Tenant(_) = self.caller.scope {
            // One check at a time for all tenant tokens: together they use
            // at most one core, whatever their number.
            let _turn = PRECHECKS.acquire().await.map_err(|_| Problem::internal())?;
            self.run(writing.clone(), Mode::Precheck, plan.clone()).await?;
        }
        self.run(writing, Mode::Apply, plan).await
    }

    async fn run<T: Send + 'static>(
        &self,
        writing: Vec<String>,
        mode: Mode,
        plan: impl FnOnce(&Texts, &Snapshot) -> Result<(T, Vec<TenantEdit>), Problem> + Send + 'static,
    ) -> Result<Done<T>, Problem> {
        let registry = self.registry.clone();
        let audit = self.audit.clone();
        let who = self.caller.name.clone();
        let scope = self.caller.scope.clone();
        let request = self.request.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut out = None;
            let planned = |texts: &Texts, snap: &Snapshot| {
                let (t, edits) = plan(texts, snap).map_err(Refusal::Problem)?;
                let edits = Rendered::of(texts, edits)?;
                out = Some((t, preview::diff_of(texts, snap, edits.edits())));
                Ok::<_, Refusal>(edits)
            };
            let result = match mode {
                Mode::Apply => registry.write(false, &who, planned),
                Mode::DryRun => registry.write(true, &who, planned),
                Mode::Precheck => registry.validate(planned).map(|()| None),
            };
            let (value, diff) = match out {
                Some((v, d)) => (Some(v), d),
                None => (None, Vec::new()),
            };
            let outcome = match (result, value) {
                (Ok(written), Some(value)) => Ok((value, written)),
                (Ok(_), None) => Err(Problem::internal()),
                (Err(Refusal::Problem(p)), _) => Err(p),
                (Err(Refusal::Write(e)), _) => Err(for_scope(&scope, write_problem(&who, &writing, e))),
            };
            // A write that changed nothing is not on record, nor one that
            // passed its check (it is recorded when applied).
            let unchanged = matches!(&outcome, Ok((_, Some(w))) if w.unchanged);
            let record = match mode {
                Mode::Apply => !unchanged,
                Mode::DryRun => false,
                Mode::Precheck => outcome.is_err(),
            };
            if record {
                let (status, problem) = match &outcome {
                    Ok(_) => (None, None),
                    Err(p) => (Some(p.status.as_u16()), Some(p.detail.as_str())),
                };
                // Tenants changed through a template are on record too.
                let named: HashSet<&str> = writing.iter().map(String::as_str).collect();
                let mut tenants = writing.clone();
                tenants.extend(
                    preview::tenants_of(&diff)
                        .filter(|id| !named.contains(id))
                        .map(str::to_string),
                );
                audit.record(&Entry {
                    who: &who,
                    request: &request,
                    tenants: &tenants,
                    status,
                    generation: outcome
                        .as_ref()
                        .ok()
                        .and_then(|(_, w)| w.as_ref().map(|w| w.generation)),
                    diff: &diff,
                    problem,
                });
            }
            match outcome {
                Ok((value, written)) => Ok(Done {
                    value,
                    diff,
                    unchanged,
                    generation: written.map(|w| w.generation),
                }),
                Err(mut p) => {
                    p.audited = record;
                    Err(p)
                }
            }
        })
        .await;
        joined.map_err(|_| Problem::internal())?
    }

    /// `GET /v1/audit?tenant=&limit=`: the last entries, oldest first. A
    /// tenant token sees its own tenant's entries, and of each only what
    /// concerns that tenant.
    pub(super) async fn audit_log(&self) -> Result<Response<Body>, Problem> {
        let tenant = self.query.get("tenant").map(str::to_string);
        if tenant.as_deref().is_some_and(|t| !crate::config::valid_tenant_id(t)) {
            return Err(Problem::bad_request("tenant must be a tenant id").with("parameter", json!("tenant")));
        }
        match &tenant {
            Some(t) => self.caller.may_touch(t)?,
            None => self.caller.operator()?,
        }
        let limit = self.query.number("limit", 1, MAX_READ as u64, PAGE)? as usize;
        let audit = self.audit.clone();
        let view = match &self.caller.scope {
            Scope::Operator => None,
            Scope::Tenant(own) => Some((own.clone(), self.caller.name.clone())),
        };
        let entries = tokio::task::spawn_blocking(move || {
            audit.read(tenant.as_deref(), limit).map(|list| match view {
                None => list,
                Some((own, who)) => list.into_iter().map(|e| redact(e, &own, &who)).collect(),
            })
        })
        .await
        .map_err(|_| Problem::internal())?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read the audit log");
            Problem::internal()
        })?;
        Ok(json_response(StatusCode::OK, &json!({"entries": entries})))
    }
}

/// An audit entry as tenant `own`'s token `who` may see it: its own
/// tenant's diff only, no other tenants, no other token's name, and no
/// other token's problem detail (an operator's 409 names other owners).
fn redact(mut e: Value, own: &str, who: &str) -> Value {
    let mine = e["who"] == who;
    if let Some(diff) = e["diff"].as_array_mut() {
        diff.retain(|d| d["tenant"] == own);
    }
    e["tenants"] = json!([own]);
    if !mine {
        e["who"] = Value::Null;
        // A refused attempt of someone else's is not the tenant's data
        // (an operator's may name another tenant's host).
        if e["result"] == "rejected" {
            e["diff"] = json!([]);
        }
        if !e["problem"].is_null() {
            e["problem"] = json!("refused; ask the operator for details");
        }
    }
    e
}

/// Tenant tokens' lock-free checks ([`Call::write_checked`]) run one at a time.
static PRECHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// How [`Call::run`] goes through the registry.
#[derive(Clone, Copy)]
enum Mode {
    /// Under the writer lock, applied.
    Apply,
    /// Under the writer lock, validated and diffed only.
    DryRun,
    /// Without the lock, validated only; recorded only if refused.
    Precheck,
}

/// An applied (or, in a dry run, validated) write.
pub struct Done<T> {
    pub value: T,
    pub diff: Vec<TenantDiff>,
    /// The new generation (the live one if nothing changed); `None` in a dry run.
    pub generation: Option<u64>,
    /// Every file stayed as it was.
    pub unchanged: bool,
}

/// Why a write was refused: by the API's own checks, or by the registry.
enum Refusal {
    Problem(Problem),
    Write(WriteError),
}

impl From<WriteError> for Refusal {
    fn from(e: WriteError) -> Self {
        Refusal::Write(e)
    }
}

/// A tenant token does not learn who owns a name it cannot have: its
/// conflicts name no other tenant.
pub(super) fn for_scope(scope: &Scope, p: Problem) -> Problem {
    match scope {
        Scope::Tenant(_) if p.kind == "conflict" => Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "a name in this change belongs to another tenant; ask the operator",
        ),
        _ => p,
    }
}

/// Maps a refused write to its problem: conflicts with another tenant are
/// 409 naming the owner, other validation errors 422 listing them all.
pub(super) fn write_problem(who: &str, writing: &[String], e: WriteError) -> Problem {
    match e {
        WriteError::Invalid(LoadError::Invalid { errors, .. }) => {
            let owners: Vec<String> = errors.iter().flat_map(|e| claimants(&e.problem)).cloned().collect();
            let list: Vec<Value> = errors
                .iter()
                .map(|e| {
                    json!({
                        "tenant": e.tenant,
                        "field": e.field,
                        "problem": e.problem.to_string(),
                        "fix": e.problem.fix(),
                    })
                })
                .collect();
            if owners.is_empty() {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    format!("{} problem(s); nothing was applied", list.len()),
                )
                .with("errors", Value::Array(list))
            } else {
                let detail = errors
                    .iter()
                    .find(|e| is_conflict(&e.problem))
                    .map(|e| e.problem.to_string())
                    .unwrap_or_default();
                let mut owners: Vec<String> = owners.into_iter().filter(|o| !writing.contains(o)).collect();
                owners.dedup();
                Problem::new(StatusCode::CONFLICT, "conflict", detail)
                    .with("owners", json!(owners))
                    .with("errors", Value::Array(list))
            }
        }
        WriteError::Invalid(e) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string()),
        WriteError::ReadOnly => Problem::new(
            StatusCode::CONFLICT,
            "read-only",
            "the embedded config cannot be changed",
        ),
        WriteError::Version(VersionError::Unknown(n)) => {
            Problem::not_found(format!("version {n} is not in the kept history; see GET /v1/versions"))
        }
        WriteError::Version(e @ VersionError::MainNotKept(_)) => {
            Problem::new(StatusCode::CONFLICT, "not-kept", e.to_string())
        }
        WriteError::Store(e) => {
            tracing::error!(error = %e, token = who, "admin write not applied: shared registry");
            let detail = match e {
                StoreError::Busy(_) => "another replica is writing the shared registry; nothing was applied, retry",
                StoreError::Rejected { .. } | StoreError::Refused(_) => {
                    "the shared registry does not load on this replica (see its log); nothing was applied"
                }
                _ => "the shared registry (Redis) is unreachable; nothing was applied, retry",
            };
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable", detail)
        }
        e @ (WriteError::Persist { .. } | WriteError::Serialize { .. } | WriteError::Version(_)) => {
            tracing::error!(error = %e, token = who, "admin write failed; nothing was applied");
            Problem::internal()
        }
    }
}

/// The tenants claiming a name, for problems that are conflicts between tenants.
fn claimants(p: &ConfigProblem) -> &[String] {
    match p {
        ConfigProblem::DuplicateDomain { tenants, .. }
        | ConfigProblem::DuplicateWildcard { tenants, .. }
        | ConfigProblem::DuplicateSubdomain { tenants, .. }
        | ConfigProblem::UnderWildcard { tenants, .. }
        | ConfigProblem::DuplicatePath { tenants, .. }
        | ConfigProblem::NestedPath { tenants, .. }
        | ConfigProblem::SharedHostClaimed { tenants, .. } => tenants,
        _ => &[],
    }
}

fn is_conflict(p: &ConfigProblem) -> bool {
    !claimants(p).is_empty()
}
