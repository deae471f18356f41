//! The diff of a write: what its edits change, computed from the live state
//! for the tenants it touches only, directly or through a template.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::config::diff::{self, Subject, Templates, TenantDiff};
use crate::config::file::TenantSection;
use crate::config::{TenantSpec, Texts};
use crate::registry::{Snapshot, TenantEdit};

/// The diff of `edits` against the live texts and snapshot: each edited
/// template, then each tenant whose effective settings change (edited
/// itself, or using an edited template). Worked out tenant by tenant: a
/// 100,000-tenant import never holds more than one tenant's before and
/// after at once.
pub(super) fn diff_of(texts: &Texts, snap: &Snapshot, edits: &[TenantEdit]) -> Vec<TenantDiff> {
    let before: Templates = snap
        .config
        .templates
        .iter()
        .map(|t| (t.name.clone(), t.section.clone()))
        .collect();
    let mut after = before.clone();
    let mut tenant_edits: HashMap<&str, &TenantEdit> = HashMap::new();
    for e in edits {
        match e {
            TenantEdit::Put(t) => {
                tenant_edits.insert(&t.id, e);
            }
            TenantEdit::Delete(id) => {
                tenant_edits.insert(id, e);
            }
            TenantEdit::PutTemplate(name, t) => {
                after.insert(name.clone(), (**t).clone());
            }
            TenantEdit::DeleteTemplate(name) => {
                after.remove(name);
            }
            // A rollout's preview is its own (admin/rollouts.rs).
            TenantEdit::PutRollout(..) | TenantEdit::DeleteRollout(_) => {}
        }
    }
    let mut ids: BTreeSet<&str> = tenant_edits.keys().copied().collect();
    let changed: BTreeSet<&str> = edits.iter().filter_map(TenantEdit::template).collect();
    if !changed.is_empty() {
        let using = |t: &&TenantSpec| t.template.as_deref().is_some_and(|n| changed.contains(n));
        ids.extend(snap.config.tenants.iter().filter(using).map(|t| t.id.as_str()));
    }
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut out: Vec<TenantDiff> = names
        .into_iter()
        .filter_map(|n| diff::entry(Subject::Template, n, before.get(n), after.get(n)))
        .collect();
    let mut written = Written::new(texts, snap);
    for id in ids {
        let live = written.get(id);
        let was = live.as_ref().map(|t| diff::effective(&before, t));
        let now = match tenant_edits.get(id) {
            Some(TenantEdit::Put(t)) => Some(diff::effective(&after, t)),
            Some(_) => None,
            None => live.as_ref().map(|t| diff::effective(&after, t)),
        };
        out.extend(diff::entry(Subject::Tenant, id, was.as_deref(), now.as_deref()));
    }
    out
}

/// A diff serialised entry by entry (each as [`TenantDiff::to_json`]), so
/// that a 100,000-entry diff is never held as one JSON tree.
pub(super) struct Diffs<'a>(pub &'a [TenantDiff]);

impl serde::Serialize for Diffs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(TenantDiff::to_json))
    }
}

/// The tenants a diff shows as changed.
pub(super) fn tenants_of(diff: &[TenantDiff]) -> impl Iterator<Item = &str> {
    diff.iter()
        .filter(|d| d.subject == Subject::Tenant)
        .map(|d| d.id.as_str())
}

/// Live tenants as written: from their tenant file, or from the main file,
/// which is parsed only when one of its tenants is asked for.
struct Written<'a> {
    texts: &'a Texts,
    snap: &'a Snapshot,
    /// Ids of every live tenant, once a tenant without a file is asked for.
    live: Option<HashSet<&'a str>>,
    main: Option<Vec<TenantSection>>,
}

impl<'a> Written<'a> {
    fn new(texts: &'a Texts, snap: &'a Snapshot) -> Self {
        Written {
            texts,
            snap,
            live: None,
            main: None,
        }
    }

    fn get(&mut self, id: &str) -> Option<TenantSection> {
        if let Some(text) = self.texts.tenants.get(id) {
            return toml::from_str(text).ok();
        }
        let (texts, snap) = (self.texts, self.snap);
        let live = self
            .live
            .get_or_insert_with(|| snap.config.tenants.iter().map(|t| t.id.as_str()).collect());
        if !live.contains(id) {
            return None;
        }
        let main = self.main.get_or_insert_with(|| {
            crate::config::parse(std::path::Path::new("main"), &texts.main)
                .map(|f| f.tenants)
                .unwrap_or_default()
        });
        main.iter().find(|t| t.id == id).cloned()
    }
}
