//! `GET /v1/versions` and `POST /v1/versions/{n}/rollback`.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::audit::Entry;
use super::problem::{json_response, Body, Problem};
use super::tenants::Call;
use super::write::write_problem;

impl Call {
    /// Kept versions, newest first: number, time, who, changed files.
    pub async fn versions(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let registry = self.registry.clone();
        let list = tokio::task::spawn_blocking(move || registry.versions().list())
            .await
            .map_err(|_| Problem::internal())?
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the version history");
                Problem::internal()
            })?;
        let versions: Vec<Value> = list
            .iter()
            .map(|v| {
                json!({
                    "version": v.version,
                    "at": v.at,
                    "who": v.who,
                    "tenants": v.tenants.keys().collect::<Vec<_>>(),
                    "templates": v.templates.keys().collect::<Vec<_>>(),
                    "rollouts": v.rollouts.keys().collect::<Vec<_>>(),
                    "main_file": v.main.is_some() || v.main_not_kept,
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, &json!({"versions": versions})))
    }

    /// Puts the config back as it was right after version `n`, as a new
    /// version, validated like any write. `?dry_run=true` only checks.
    pub async fn rollback(&self, n: &str) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let n: u64 = n
            .parse()
            .map_err(|_| Problem::not_found(format!("{n:?} is not a version number")))?;
        let dry_run = self.query.flag("dry_run")?;
        let (registry, audit) = (self.registry.clone(), self.audit.clone());
        let (who, request) = (self.caller.name.clone(), self.request.clone());
        tokio::task::spawn_blocking(move || {
            let result = registry
                .rollback(dry_run, &who, n)
                .map_err(|e| write_problem(&who, &[], e));
            if !dry_run {
                let problem = result.as_ref().err();
                audit.record(&Entry {
                    who: &who,
                    request: &request,
                    tenants: &[],
                    status: problem.map(|p| p.status.as_u16()),
                    generation: result.as_ref().ok().and_then(|w| w.as_ref().map(|w| w.generation)),
                    diff: &[],
                    problem: problem.map(|p| p.detail.as_str()),
                });
            }
            let generation = result
                .map_err(|mut p| {
                    p.audited = !dry_run;
                    p
                })?
                .map(|w| w.generation);
            let mut body = json!({"rolled_back_to": n, "applied": !dry_run, "generation": generation});
            if dry_run {
                // The preview shows what the rollback would change.
                let diff = registry.rollback_diff(n).map_err(|e| write_problem(&who, &[], e))?;
                body["diff"] = Value::Array(diff.iter().map(|d| d.to_json()).collect());
            }
            Ok(json_response(StatusCode::OK, &body))
        })
        .await
        .map_err(|_| Problem::internal())?
    }
}
