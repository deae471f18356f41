//! Template resources: `/v1/templates[/{name}]`, for operator tokens only.
//! Templates are kept as `templates/<name>.toml`; those of the main file
//! are read-only here.

use std::collections::{BTreeSet, HashMap};

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::problem::{json_response, Body, Problem};
use super::tenants::{
    body_object, check_if_match, check_if_none_match, etag, if_match, if_none_match, invalid, put_response, set_etag,
    unless_main, Call,
};
use crate::config::file::TemplateSection;
use crate::config::{templates, Texts};
use crate::registry::{Snapshot, TenantEdit};

/// What [`check_if_match`] names for templates.
pub(super) const TEMPLATE: &str = "template";

impl Call {
    /// `GET /v1/templates`: every template, with where it is defined and
    /// how many tenants name it.
    pub(super) fn templates(&self) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let snap = self.registry.snapshot();
        let mut users: HashMap<&str, usize> = HashMap::new();
        for name in snap.config.tenants.iter().filter_map(|t| t.template.as_deref()) {
            *users.entry(name).or_default() += 1;
        }
        let list: Vec<Value> = snap
            .config
            .templates
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "source": source(t.in_main_file),
                    "tenants": users.get(t.name.as_str()).copied().unwrap_or(0),
                })
            })
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"templates": list, "generation": snap.generation}),
        ))
    }

    /// `GET /v1/templates/{name}`: the template with an ETag, and the
    /// tenants that name it (`used_by`).
    pub(super) fn template(&self, name: &str) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let (mut v, tag) = current(&texts, &snap, name)?.ok_or_else(|| missing(name))?;
        v["used_by"] = json!(users(&snap, name, &[]));
        let mut resp = json_response(StatusCode::OK, &v);
        set_etag(&mut resp, &tag);
        Ok(resp)
    }

    /// `PUT /v1/templates/{name}`: creates (201) or replaces (200) the
    /// template; every tenant naming it changes with it, before the response.
    pub(super) async fn put_template(self, name: String) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let section = parse_template(&name, &self.body)?;
        let if_match = if_match(&self.headers);
        let if_none_match = if_none_match(&self.headers);
        let sent = name.clone();
        let done = self
            .write(Vec::new(), false, move |texts, snap| {
                let existing = editable(texts, snap, &sent)?;
                let tag = existing.as_ref().map(|(_, e)| e.as_str());
                check_if_match(TEMPLATE, if_match.as_deref(), tag)?;
                check_if_none_match(TEMPLATE, if_none_match.as_deref(), tag)?;
                Ok((
                    existing.is_none(),
                    vec![TenantEdit::PutTemplate(sent, Box::new(section))],
                ))
            })
            .await?;
        let texts = self.registry.texts();
        let snap = self.registry.snapshot();
        let (v, tag) = current(&texts, &snap, &name)?.ok_or_else(Problem::internal)?;
        Ok(put_response(done.value && !done.unchanged, &v, &tag))
    }

    /// `DELETE /v1/templates/{name}`: 204, or 409 while a tenant names it.
    pub(super) async fn delete_template(self, name: String) -> Result<Response<Body>, Problem> {
        self.caller.operator()?;
        let if_match = if_match(&self.headers);
        self.write(Vec::new(), false, move |texts, snap| {
            let existing = editable(texts, snap, &name)?.ok_or_else(|| missing(&name))?;
            check_if_match(TEMPLATE, if_match.as_deref(), Some(&existing.1))?;
            let edits = vec![TenantEdit::DeleteTemplate(name)];
            refuse_in_use(snap, &edits)?;
            Ok(((), edits))
        })
        .await?;
        let mut resp = Response::new(Body::default());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }
}

fn source(in_main_file: bool) -> &'static str {
    if in_main_file {
        "main"
    } else {
        "file"
    }
}

/// The template's JSON (`name`, its settings, `source`) and ETag: from its
/// file, or from the main file (read-only through the API).
pub(super) fn current(texts: &Texts, snap: &Snapshot, name: &str) -> Result<Option<(Value, String)>, Problem> {
    let (section, tag) = match texts.templates.get(name) {
        Some(text) => {
            let t: TemplateSection = toml::from_str(text).map_err(|_| Problem::internal())?;
            (t, Some(etag(text)))
        }
        None => match templates::find(&snap.config.templates, name) {
            Some(t) => (t.section.clone(), None),
            None => return Ok(None),
        },
    };
    let mut v = serde_json::to_value(&section).map_err(|_| Problem::internal())?;
    v["name"] = json!(name);
    v["source"] = json!(source(tag.is_none()));
    let tag = tag.unwrap_or_else(|| etag(&v.to_string()));
    Ok(Some((v, tag)))
}

/// Like [`current`], refusing templates of the main file.
pub(super) fn editable(texts: &Texts, snap: &Snapshot, name: &str) -> Result<Option<(Value, String)>, Problem> {
    unless_main(current(texts, snap, name)?, TEMPLATE, name, "templates")
}

pub(super) fn missing(name: &str) -> Problem {
    Problem::not_found(format!("template {name:?} does not exist"))
}

/// A template of a batch: a JSON object with its `name`.
pub(super) fn template_of_value(v: Value) -> Result<(String, TemplateSection), Problem> {
    let Value::Object(mut obj) = v else {
        return Err(invalid("a template is a JSON object"));
    };
    let name = obj.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    if !crate::config::valid_tenant_id(&name) {
        return Err(invalid(format!(
            "{name:?} is not a valid template name: use 1 to 63 characters of a-z, 0-9, '-' and '_'"
        )));
    }
    obj.remove("name");
    super::tenants::drop_read_only(&mut obj)?;
    let t = serde_json::from_value(Value::Object(obj)).map_err(|e| invalid(format!("bad template: {e}")))?;
    Ok((name, t))
}

/// The PUT body: a template as JSON, its `name` (if any) equal to the path's.
pub(super) fn parse_template(name: &str, body: &[u8]) -> Result<TemplateSection, Problem> {
    let mut obj = body_object(body, "template name", name)?;
    match obj.remove("name") {
        None => {}
        Some(Value::String(s)) if s == name => {}
        Some(_) => return Err(invalid("the body's name differs from the path's")),
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| invalid(format!("bad template: {e}")))
}

/// The tenants that name template `name` once `edits` are applied, in id order.
fn users(snap: &Snapshot, name: &str, edits: &[TenantEdit]) -> Vec<String> {
    let edited: BTreeSet<&str> = edits.iter().filter_map(TenantEdit::tenant).collect();
    let mut out: BTreeSet<&str> = snap
        .config
        .tenants
        .iter()
        .filter(|t| t.template.as_deref() == Some(name) && !edited.contains(t.id.as_str()))
        .map(|t| t.id.as_str())
        .collect();
    for e in edits {
        if let TenantEdit::Put(t) = e {
            if t.template.as_deref() == Some(name) {
                out.insert(&t.id);
            }
        }
    }
    out.into_iter().map(str::to_string).collect()
}

/// Refuses `edits` if they delete a template that a tenant still names
/// after them: 409 `in-use`, naming those tenants.
pub(super) fn refuse_in_use(snap: &Snapshot, edits: &[TenantEdit]) -> Result<(), Problem> {
    for e in edits {
        let TenantEdit::DeleteTemplate(name) = e else { continue };
        let tenants = users(snap, name, edits);
        if !tenants.is_empty() {
            let quoted: Vec<String> = tenants.iter().map(|t| format!("{t:?}")).collect();
            let noun = if tenants.len() == 1 { "tenant" } else { "tenants" };
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "in-use",
                format!(
                    "template {name:?} is used by {noun} {}; point them at another template or remove their template field first",
                    quoted.join(", ")
                ),
            )
            .with("template", json!(name))
            .with("tenants", json!(tenants)));
        }
    }
    Ok(())
}
