//! Bounded history of applied versions, kept as files so that a rollback
//! works after a restart. A version records, for each file it changed (the
//! main file, tenant files, template files), the text before and after: rolling back to
//! version N undoes every later version, newest first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::write::write_atomic_with;
use crate::config::Texts;

/// One file's text before and after a version (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub before: Option<String>,
    pub after: Option<String>,
}

/// One applied version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    pub at: String,
    /// The token name, or `file` for a reload of edited files.
    pub who: String,
    pub tenants: BTreeMap<String, FileChange>,
    /// Template files by name (absent in versions written before templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, FileChange>,
    /// Rollout files by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<String, FileChange>,
    pub main: Option<FileChange>,
    /// The main file changed but was too big to keep (see [`MAX_KEPT_MAIN`]).
    #[serde(default)]
    pub main_not_kept: bool,
}

/// A main file bigger than this is not copied into versions (a generated
/// 100,000-tenant file is 12.8 MB; 50 versions of it would be over 1 GB).
pub const MAX_KEPT_MAIN: usize = 4 << 20;

/// Why a rollback cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("version {0} is not in the kept history")]
    Unknown(u64),
    #[error("version {0} changed a main config file too big to keep; undo that change by editing the file")]
    MainNotKept(u64),
    #[error("cannot read the version history: {0}")]
    Io(#[from] std::io::Error),
}

/// The history folder: `state/admin/versions/<n>.json` beside the config.
#[derive(Debug)]
pub struct Versions {
    dir: Option<PathBuf>,
}

impl Versions {
    /// The history of the config file at `config`; `None` keeps none.
    pub fn new(config: Option<&Path>) -> Versions {
        let dir = config.map(|c| c.parent().unwrap_or(Path::new(".")).join("state/admin/versions"));
        Versions { dir }
    }

    /// Records the change from `old` to `new` as the next version and drops
    /// versions beyond `keep`. Blocking; call with the writer lock held.
    pub fn record(&self, who: &str, old: &Texts, new: &Texts, keep: usize) -> std::io::Result<Option<u64>> {
        let Some(dir) = &self.dir else { return Ok(None) };
        // Borrows the texts and streams the record to its file: a
        // 100,000-tenant import is neither copied nor held as one string.
        let tenants = changes(&old.tenants, &new.tenants);
        let templates = changes(&old.templates, &new.templates);
        let rollouts = changes(&old.rollouts, &new.rollouts);
        let main_changed = old.main != new.main;
        let main_not_kept = main_changed && old.main.len().max(new.main.len()) > MAX_KEPT_MAIN;
        let main = (main_changed && !main_not_kept).then(|| ChangeRef {
            before: Some(&old.main),
            after: Some(&new.main),
        });
        std::fs::create_dir_all(dir)?;
        let numbers = self.numbers()?;
        let version = numbers.last().map_or(1, |n| n + 1);
        let v = VersionRef {
            version,
            at: jiff::Timestamp::now().to_string(),
            who,
            tenants,
            templates,
            rollouts,
            main,
            main_not_kept,
        };
        write_atomic_with(&dir.join(format!("{version}.json")), |w| {
            serde_json::to_writer(w, &v).map_err(std::io::Error::other)
        })
        .map_err(std::io::Error::other)?;
        let excess = (numbers.len() + 1).saturating_sub(keep.max(1));
        for n in numbers.iter().take(excess) {
            let _ = std::fs::remove_file(dir.join(format!("{n}.json")));
        }
        Ok(Some(version))
    }

    /// Kept version numbers, oldest first.
    fn numbers(&self) -> std::io::Result<Vec<u64>> {
        let Some(dir) = &self.dir else { return Ok(Vec::new()) };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn load(&self, n: u64) -> Result<Version, VersionError> {
        let Some(dir) = &self.dir else {
            return Err(VersionError::Unknown(n));
        };
        let text = match std::fs::read(dir.join(format!("{n}.json"))) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(VersionError::Unknown(n)),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&text).map_err(|e| VersionError::Io(std::io::Error::other(e)))
    }

    /// Kept versions, newest first. Blocking.
    pub fn list(&self) -> Result<Vec<Version>, VersionError> {
        self.numbers()?.into_iter().rev().map(|n| self.load(n)).collect()
    }

    /// The texts as they were right after version `n`: `current` with every
    /// later version undone, newest first. Blocking.
    pub fn undo_to(&self, n: u64, current: &Texts) -> Result<Texts, VersionError> {
        let numbers = self.numbers()?;
        if !numbers.contains(&n) {
            return Err(VersionError::Unknown(n));
        }
        let mut texts = current.clone();
        for m in numbers.into_iter().rev().take_while(|m| *m > n) {
            let v = self.load(m)?;
            if v.main_not_kept {
                return Err(VersionError::MainNotKept(m));
            }
            undo(&mut texts.tenants, v.tenants);
            undo(&mut texts.templates, v.templates);
            undo(&mut texts.rollouts, v.rollouts);
            if let Some(FileChange { before: Some(main), .. }) = v.main {
                texts.main = main;
            }
        }
        Ok(texts)
    }
}

/// [`Version`] as recorded, borrowing the texts (same JSON).
#[derive(Serialize)]
struct VersionRef<'a> {
    version: u64,
    at: String,
    who: &'a str,
    tenants: BTreeMap<&'a str, ChangeRef<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    templates: BTreeMap<&'a str, ChangeRef<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    rollouts: BTreeMap<&'a str, ChangeRef<'a>>,
    main: Option<ChangeRef<'a>>,
    main_not_kept: bool,
}

/// [`FileChange`], borrowed.
#[derive(Serialize)]
struct ChangeRef<'a> {
    before: Option<&'a str>,
    after: Option<&'a str>,
}

/// Each file that differs from `old` to `new`, by stem.
fn changes<'a>(
    old: &'a BTreeMap<String, String>,
    new: &'a BTreeMap<String, String>,
) -> BTreeMap<&'a str, ChangeRef<'a>> {
    let mut out = BTreeMap::new();
    for (stem, after) in new.iter().filter(|(s, t)| old.get(*s) != Some(*t)) {
        let before = old.get(stem).map(String::as_str);
        let after = Some(after.as_str());
        out.insert(stem.as_str(), ChangeRef { before, after });
    }
    for (stem, before) in old.iter().filter(|(s, _)| !new.contains_key(*s)) {
        let before = Some(before.as_str());
        out.insert(stem.as_str(), ChangeRef { before, after: None });
    }
    out
}

/// Puts each changed file of `files` back as it was before.
fn undo(files: &mut BTreeMap<String, String>, changes: BTreeMap<String, FileChange>) {
    for (stem, change) in changes {
        match change.before {
            Some(t) => files.insert(stem, t),
            None => files.remove(&stem),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(main: &str, tenants: &[(&str, &str)]) -> Texts {
        Texts {
            main: main.to_string(),
            tenants: tenants.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            templates: BTreeMap::new(),
            rollouts: BTreeMap::new(),
        }
    }

    #[test]
    fn undo_restores_main_and_tenant_files_and_history_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let versions = Versions::new(Some(&dir.path().join("tenantgate.toml")));
        let t0 = texts("main 0", &[("a", "a0")]);
        let t1 = texts("main 1", &[("a", "a1"), ("b", "b1")]);
        let t2 = texts("main 1", &[("b", "b2")]);
        assert_eq!(versions.record("x", &t0, &t1, 3).expect("record"), Some(1));
        assert_eq!(versions.record("y", &t1, &t2, 3).expect("record"), Some(2));
        assert_eq!(versions.undo_to(1, &t2).expect("undo"), t1);
        assert_eq!(versions.undo_to(2, &t2).expect("undo"), t2);

        for n in 3..=5 {
            assert_eq!(versions.record("z", &t2, &t2, 3).expect("record"), Some(n));
        }
        let kept: Vec<u64> = versions.list().expect("list").iter().map(|v| v.version).collect();
        assert_eq!(kept, [5, 4, 3]);
        assert!(matches!(versions.undo_to(1, &t2), Err(VersionError::Unknown(1))));

        let big = texts(&"#".repeat(MAX_KEPT_MAIN + 1), &[("b", "b2")]);
        assert_eq!(versions.record("w", &t2, &big, 3).expect("record"), Some(6));
        assert!(matches!(versions.undo_to(5, &big), Err(VersionError::MainNotKept(6))));
    }
}
