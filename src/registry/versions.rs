//! Bounded history of applied versions, kept as files so that a rollback
//! works after a restart. A version records, for each file it changed (the
//! main file, tenant files), the text before and after: rolling back to
//! version N undoes every later version, newest first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::write::write_atomic;
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
    pub main: Option<FileChange>,
}

/// Why a rollback cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("version {0} is not in the kept history")]
    Unknown(u64),
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
        let mut tenants = BTreeMap::new();
        for (id, after) in &new.tenants {
            if old.tenants.get(id) != Some(after) {
                let before = old.tenants.get(id).cloned();
                tenants.insert(
                    id.clone(),
                    FileChange {
                        before,
                        after: Some(after.clone()),
                    },
                );
            }
        }
        for (id, before) in old.tenants.iter().filter(|(id, _)| !new.tenants.contains_key(*id)) {
            let change = FileChange {
                before: Some(before.clone()),
                after: None,
            };
            tenants.insert(id.clone(), change);
        }
        let main = (old.main != new.main).then(|| FileChange {
            before: Some(old.main.clone()),
            after: Some(new.main.clone()),
        });
        std::fs::create_dir_all(dir)?;
        let numbers = self.numbers()?;
        let version = numbers.last().map_or(1, |n| n + 1);
        let v = Version {
            version,
            at: jiff::Timestamp::now().to_string(),
            who: who.to_string(),
            tenants,
            main,
        };
        let json = serde_json::to_vec(&v).map_err(std::io::Error::other)?;
        write_atomic(&dir.join(format!("{version}.json")), &json).map_err(std::io::Error::other)?;
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
            for (id, change) in v.tenants {
                match change.before {
                    Some(t) => texts.tenants.insert(id, t),
                    None => texts.tenants.remove(&id),
                };
            }
            if let Some(FileChange { before: Some(main), .. }) = v.main {
                texts.main = main;
            }
        }
        Ok(texts)
    }
}
