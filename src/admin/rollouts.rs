//! Rollout resources, for operator tokens only: `/v1/rollouts[/{name}]`,
//! `POST /v1/rollouts/{name}/promote` and `/rollback`. Each change is a
//! registry version (audited, shared with every replica); `?dry_run=true`
//! answers what it would move without changing anything.

use std::collections::BTreeMap;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::problem::{json_response, Body, Problem};
use super::tenants::{
    body_object, check_if_match, check_if_none_match, etag, if_match, if_none_match, invalid, put_response, Call,
};
use crate::config::rollouts::{selected, Rollout, RolloutSection, RolloutState};
use crate::config::{PoolId, Texts};
use crate::registry::rollouts::{current, promoted, rolled_back};
use crate::registry::{Snapshot, TenantEdit};

/// What the problems name.
const ROLLOUT: &str = "rollout";
/// Moved tenants listed in an answer, at most.
const LISTED: usize = 1000;

impl Call {
    /// `GET /v1/rollouts`.
    pub(super) fn rollouts(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let snap = self.registry.snapshot();
        // One pass over the tenants for every rollout's counts.
        let mut counts = vec![(0usize, 0usize); snap.config.rollouts.len()];
        for c in snap.config.tenants.iter().filter_map(|t| t.cohort) {
            if let Some(n) = counts.get_mut(c.rollout as usize) {
                n.0 += 1;
                n.1 += usize::from(c.moved);
            }
        }
        let list: Vec<Value> = snap
            .config
            .rollouts
            .iter()
            .zip(counts)
            .map(|(r, n)| summary(&snap, r, Some(n)))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"rollouts": list, "generation": snap.generation}),
        ))
    }

    /// `GET /v1/rollouts/{name}`: the rollout, its cohort and its counters.
    pub(super) fn rollout(&self, name: &str) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let r = live(&snap, name)?;
        let mut v = summary(&snap, r, None);
        v["counters"] = self.counters(name);
        let mut resp = json_response(StatusCode::OK, &v);
        super::tenants::set_etag(&mut resp, &tag_of(&texts, &snap, name));
        Ok(resp)
    }

    /// `PUT /v1/rollouts/{name}`: creates (201) or replaces (200) it.
    pub(super) async fn put_rollout(self, name: String) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let section = parse(&name, &self.body)?;
        let dry_run = self.query.flag("dry_run")?;
        let if_match = if_match(&self.headers);
        let if_none_match = if_none_match(&self.headers);
        let sent = name.clone();
        let done = self
            .write(Vec::new(), dry_run, move |texts, snap| {
                let existing = current(texts, snap, &sent);
                let tag = existing.as_ref().map(|_| tag_of(texts, snap, &sent));
                check_if_match(ROLLOUT, if_match.as_deref(), tag.as_deref())?;
                check_if_none_match(ROLLOUT, if_none_match.as_deref(), tag.as_deref())?;
                let moves = moves_of(snap, &sent, existing.as_ref().map(|(s, _)| s), Some(&section));
                Ok((
                    (existing.is_none(), moves),
                    vec![TenantEdit::PutRollout(sent, Box::new(section))],
                ))
            })
            .await?;
        let (created, moves) = done.value;
        if dry_run {
            return Ok(preview(moves));
        }
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let r = live(&snap, &name)?;
        let mut v = summary(&snap, r, None);
        v["moves"] = moves;
        Ok(put_response(
            created && !done.unchanged,
            &v,
            &tag_of(&texts, &snap, &name),
        ))
    }

    /// `DELETE /v1/rollouts/{name}`: every moved tenant goes back to `from`.
    pub(super) async fn delete_rollout(self, name: String) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let if_match = if_match(&self.headers);
        self.write(Vec::new(), false, move |texts, snap| {
            let (_, in_main) = current(texts, snap, &name).ok_or_else(|| missing(&name))?;
            if in_main && !texts.rollouts.contains_key(&name) {
                return Err(super::tenants::read_only(ROLLOUT, &name, "rollouts"));
            }
            check_if_match(ROLLOUT, if_match.as_deref(), Some(&tag_of(texts, snap, &name)))?;
            Ok(((), vec![TenantEdit::DeleteRollout(name)]))
        })
        .await?;
        let mut resp = Response::new(Body::default());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }

    /// `POST /v1/rollouts/{name}/promote`: to the next step, or to
    /// `?percent=N` (above the share moved now).
    pub(super) async fn promote_rollout(self, name: String) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let dry_run = self.query.flag("dry_run")?;
        let asked = match self.query.number("percent", 1, 100, 0)? {
            0 => None,
            p => Some(p as u8),
        };
        let sent = name.clone();
        let done = self
            .write(Vec::new(), dry_run, move |texts, snap| {
                let (s, _) = current(texts, snap, &sent).ok_or_else(|| missing(&sent))?;
                let r = live(snap, &sent)?;
                let to = match asked {
                    Some(p) if p <= r.moved_percent() => {
                        return Err(Problem::new(
                            StatusCode::CONFLICT,
                            "not-a-promotion",
                            format!(
                                "rollout {sent:?} already moves {} %; promote to a higher share, or roll back",
                                r.moved_percent()
                            ),
                        )
                        .with("percent", json!(r.moved_percent())))
                    }
                    Some(p) => p,
                    None => r.next_step().ok_or_else(|| {
                        Problem::new(
                            StatusCode::CONFLICT,
                            "fully-promoted",
                            format!("rollout {sent:?} already moves every candidate (100 %)"),
                        )
                    })?,
                };
                let after = promoted(&s, to);
                let moves = moves_of(snap, &sent, Some(&s), Some(&after));
                Ok((moves, vec![TenantEdit::PutRollout(sent, Box::new(after))]))
            })
            .await?;
        self.step_answer(&name, dry_run, done.value)
    }

    /// `POST /v1/rollouts/{name}/rollback`: nobody moved; a later promote
    /// starts again at the first step.
    pub(super) async fn rollback_rollout(self, name: String) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let dry_run = self.query.flag("dry_run")?;
        let who = self.caller.name.clone();
        let sent = name.clone();
        let done = self
            .write(Vec::new(), dry_run, move |texts, snap| {
                let (s, _) = current(texts, snap, &sent).ok_or_else(|| missing(&sent))?;
                let after = rolled_back(&s, format!("rolled back by {who}"));
                let moves = moves_of(snap, &sent, Some(&s), Some(&after));
                let edits = match live(snap, &sent)?.state {
                    RolloutState::RolledBack => Vec::new(),
                    RolloutState::Active => vec![TenantEdit::PutRollout(sent, Box::new(after))],
                };
                Ok((moves, edits))
            })
            .await?;
        self.step_answer(&name, dry_run, done.value)
    }

    /// `POST /v1/rollouts/{name}/complete`: one version that points every
    /// moved tenant's `pool` at `to` and removes the rollout; the others
    /// stay on `from`. Main-file tenants cannot be rewritten here (409).
    pub(super) async fn complete_rollout(self, name: String) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let dry_run = self.query.flag("dry_run")?;
        let sent = name.clone();
        let done = self
            .write(Vec::new(), dry_run, move |texts, snap| {
                let (_, in_main) = current(texts, snap, &sent).ok_or_else(|| missing(&sent))?;
                if in_main && !texts.rollouts.contains_key(&sent) {
                    return Err(super::tenants::read_only(ROLLOUT, &sent, "rollouts"));
                }
                let r = live(snap, &sent)?;
                let idx = snap.config.rollouts.iter().position(|x| x.name == sent);
                let to = pool_name(snap, r.to).to_string();
                let mut edits = Vec::new();
                let mut in_main_file = Vec::new();
                let mut moved = Vec::new();
                for t in &snap.config.tenants {
                    if !t.cohort.is_some_and(|c| Some(c.rollout as usize) == idx && c.moved) {
                        continue;
                    }
                    let Some(text) = texts.tenants.get(&t.id) else {
                        in_main_file.push(t.id.clone());
                        continue;
                    };
                    let mut section: crate::config::file::TenantSection =
                        toml::from_str(text).map_err(|_| Problem::internal())?;
                    section.pool = Some(to.clone());
                    moved.push(t.id.clone());
                    edits.push(TenantEdit::Put(Box::new(section)));
                }
                if !in_main_file.is_empty() {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "read-only",
                        format!(
                            "moved tenants {} are defined in the main config file; set their pool to {to:?} there, then delete the rollout",
                            in_main_file.iter().take(10).map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                edits.push(TenantEdit::DeleteRollout(sent));
                let count = moved.len();
                moved.truncate(LISTED);
                Ok((json!({"completed": !dry_run, "pool": to, "tenants": moved, "count": count}), edits))
            })
            .await?;
        Ok(json_response(StatusCode::OK, &done.value))
    }

    fn step_answer(&self, name: &str, dry_run: bool, moves: Value) -> Result<Response<Body>, Problem> {
        if dry_run {
            return Ok(preview(moves));
        }
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let r = live(&snap, name)?;
        let mut v = summary(&snap, r, None);
        v["moves"] = moves;
        let mut resp = json_response(StatusCode::OK, &v);
        super::tenants::set_etag(&mut resp, &tag_of(&texts, &snap, name));
        Ok(resp)
    }

    /// This replica's counters of the rollout since it started.
    fn counters(&self, name: &str) -> Value {
        let side = |moved: bool| {
            let c = self.registry.metrics().rollouts.cohort(name, moved);
            json!({"requests": c.requests.get(), "responses_5xx": c.errors.get()})
        };
        json!({"moved": side(true), "rest": side(false)})
    }
}

fn missing(name: &str) -> Problem {
    Problem::not_found(format!("rollout {name:?} does not exist"))
}

fn live<'a>(snap: &'a Snapshot, name: &str) -> Result<&'a Rollout, Problem> {
    snap.config
        .rollouts
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| missing(name))
}

/// The ETag: over the rollout's file, else over the main file's section.
fn tag_of(texts: &Texts, snap: &Snapshot, name: &str) -> String {
    match texts.rollouts.get(name) {
        Some(text) => etag(text),
        None => etag(&format!("{:?}", current(texts, snap, name).map(|(s, _)| s))),
    }
}

fn pool_name(snap: &Snapshot, p: PoolId) -> &str {
    snap.config.pools.get(p as usize).map_or("", |p| p.name.as_str())
}

/// A rollout's JSON: as written, with where it stands. With `counts`
/// (candidates, moved) worked out by the caller, that is all; without,
/// one pass over the tenants adds the moved ones (the first [`LISTED`])
/// and the pinned tenants of `from`.
fn summary(snap: &Snapshot, r: &Rollout, counts: Option<(usize, usize)>) -> Value {
    let cohort = counts.is_none();
    let idx = snap
        .config
        .rollouts
        .iter()
        .position(|x| x.name == r.name)
        .unwrap_or(usize::MAX);
    let (mut candidates, mut moved, mut listed, mut pinned) = (0usize, 0usize, Vec::new(), 0usize);
    match counts {
        Some((c, m)) => (candidates, moved) = (c, m),
        None => {
            for t in &snap.config.tenants {
                pinned += usize::from(t.pinned && t.pool == r.from);
                if let Some(c) = t.cohort.filter(|c| c.rollout as usize == idx) {
                    candidates += 1;
                    if c.moved {
                        moved += 1;
                        if listed.len() < LISTED {
                            listed.push(t.id.as_str());
                        }
                    }
                }
            }
        }
    }
    let mut v = serde_json::to_value(&r.section).unwrap_or_else(|_| json!({}));
    v["name"] = json!(r.name);
    v["source"] = json!(if r.in_main_file { "main" } else { "file" });
    v["state"] = json!(r.state.as_str());
    v["percent"] = json!(r.percent);
    v["moved_percent"] = json!(r.moved_percent());
    v["steps"] = json!(r.steps);
    v["next_step"] = json!(r.next_step());
    v["candidates"] = json!(candidates);
    v["moved"] = json!(moved);
    if cohort {
        v["pinned_on_from"] = json!(pinned);
    }
    v["auto_rollback"] = match &r.auto_rollback {
        Some(a) => json!({
            "enabled": true,
            "margin_percent": a.margin_percent,
            "window_secs": a.window.as_secs(),
            "min_requests": a.min_requests,
        }),
        None => json!({"enabled": false}),
    };
    v["from_pool"] = json!(pool_name(snap, r.from));
    v["to_pool"] = json!(pool_name(snap, r.to));
    if cohort {
        v["moved_tenants"] = json!(listed);
        v["moved_tenants_truncated"] = json!(moved > listed.len());
    }
    v
}

/// The tenants a change from `before` to `after` moves, by destination
/// pool: worked out like the load does it (candidates by list or `from`,
/// pinned tenants and those another rollout takes left alone).
fn moves_of(snap: &Snapshot, name: &str, before: Option<&RolloutSection>, after: Option<&RolloutSection>) -> Value {
    let share = |s: Option<&RolloutSection>| match s {
        Some(s) if s.state.as_deref() != Some("rolled_back") => s.percent.min(100),
        _ => 0,
    };
    let (was, now) = (share(before), share(after));
    let Some(s) = after.or(before) else {
        return json!({});
    };
    let listed: Option<std::collections::HashSet<&str>> =
        s.tenants.as_ref().map(|l| l.iter().map(String::as_str).collect());
    let other = |t: &crate::config::TenantSpec| {
        t.cohort
            .and_then(|c| snap.config.rollouts.get(c.rollout as usize))
            .is_some_and(|r| r.name != name)
    };
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &snap.config.tenants {
        let candidate = match &listed {
            Some(l) => l.contains(t.id.as_str()),
            None => pool_name(snap, t.pool) == s.from,
        };
        if !candidate || t.pinned || other(t) {
            continue;
        }
        let (a, b) = (selected(name, &t.id, was), selected(name, &t.id, now));
        if a == b {
            continue;
        }
        let dest = if b { s.to.as_str() } else { s.from.as_str() };
        *counts.entry(dest).or_default() += 1;
        let list = out.entry(dest).or_default();
        if list.len() < LISTED {
            list.push(&t.id);
        }
    }
    json!({"to_pool": out, "counts": counts})
}

fn preview(moves: Value) -> Response<Body> {
    json_response(StatusCode::OK, &json!({"applied": false, "moves": moves}))
}

/// The PUT body: a rollout as JSON, its `name` (if any) equal to the path's.
fn parse(name: &str, body: &[u8]) -> Result<RolloutSection, Problem> {
    let mut obj = body_object(body, "rollout name", name)?;
    match obj.remove("name") {
        None => {}
        Some(Value::String(s)) if s == name => {}
        Some(_) => return Err(invalid("the body's name differs from the path's")),
    }
    // What a GET adds beside the section.
    for k in [
        "moved_percent",
        "next_step",
        "candidates",
        "moved",
        "pinned_on_from",
        "from_pool",
        "to_pool",
        "moved_tenants",
        "moved_tenants_truncated",
        "counters",
        "moves",
    ] {
        obj.remove(k);
    }
    if obj.get("auto_rollback").and_then(|a| a.get("enabled")) == Some(&json!(true)) {
        // A GET's defaults, sent back: keep only what the section has.
        if let Some(Value::Object(a)) = obj.get_mut("auto_rollback") {
            a.remove("enabled");
        }
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| invalid(format!("bad rollout: {e}")))
}
