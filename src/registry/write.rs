//! Writes from the admin API: tenant and template files changed under the
//! writer lock, validated exactly like a load, persisted atomically, then
//! swapped in.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Changes, Registry, Snapshot, VersionError};
use crate::config::file::{TemplateSection, TenantSection};
use crate::config::{templates_dir, LoadError, Texts};

/// One change to the tenant or template files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantEdit {
    /// Create or replace `tenants/<id>.toml`.
    Put(Box<TenantSection>),
    /// Remove `tenants/<id>.toml`.
    Delete(String),
    /// Create or replace `templates/<name>.toml`.
    PutTemplate(String, Box<TemplateSection>),
    /// Remove `templates/<name>.toml`.
    DeleteTemplate(String),
}

impl TenantEdit {
    /// The tenant this edit writes, if it is a tenant edit.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            TenantEdit::Put(t) => Some(&t.id),
            TenantEdit::Delete(id) => Some(id),
            TenantEdit::PutTemplate(..) | TenantEdit::DeleteTemplate(_) => None,
        }
    }

    /// The template this edit writes, if it is a template edit.
    pub fn template(&self) -> Option<&str> {
        match self {
            TenantEdit::PutTemplate(name, _) | TenantEdit::DeleteTemplate(name) => Some(name),
            TenantEdit::Put(_) | TenantEdit::Delete(_) => None,
        }
    }
}

/// Why a write was not applied. Nothing changed, on disk or live.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the embedded config cannot be changed")]
    ReadOnly,
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error("cannot write {}: {source}", .path.display())]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `what` is `tenant <id>` or `template <name>`.
    #[error("cannot write {what}: {message}")]
    Serialize { what: String, message: String },
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// What an applied write did.
#[derive(Debug)]
pub struct Written {
    pub generation: u64,
    pub changes: Changes,
}

impl Registry {
    /// Runs `plan` on the live texts and snapshot under the writer lock, so
    /// that its checks (If-Match, scope) and the write are one step. The
    /// edits it returns are compiled exactly like a config load; only if
    /// every one is valid are the files written (temp file, fsync, rename)
    /// and the new snapshot swapped in, before this returns. With `dry_run`,
    /// nothing is written or swapped. Blocking: call from a blocking thread.
    pub fn write<E: From<WriteError>>(
        &self,
        dry_run: bool,
        who: &str,
        plan: impl FnOnce(&Texts, &Snapshot) -> Result<Vec<TenantEdit>, E>,
    ) -> Result<Option<Written>, E> {
        self.write_texts(dry_run, who, |live, snap| {
            let edits = plan(live, snap)?;
            let mut texts = live.clone();
            for edit in &edits {
                match edit {
                    TenantEdit::Put(t) => {
                        texts.tenants.insert(t.id.clone(), tenant_file(t)?);
                    }
                    TenantEdit::Delete(id) => {
                        texts.tenants.remove(id);
                    }
                    TenantEdit::PutTemplate(name, t) => {
                        texts.templates.insert(name.clone(), template_file(name, t)?);
                    }
                    TenantEdit::DeleteTemplate(name) => {
                        texts.templates.remove(name);
                    }
                }
            }
            Ok(texts)
        })
    }

    /// Puts the live texts back as they were right after version `n`, as a
    /// new version. Blocking.
    pub fn rollback(&self, dry_run: bool, who: &str, n: u64) -> Result<Option<Written>, WriteError> {
        self.write_texts(dry_run, who, |live, _| Ok(self.versions.undo_to(n, live)?))
    }

    /// The general write: `plan` turns the live texts into new ones.
    fn write_texts<E: From<WriteError>>(
        &self,
        dry_run: bool,
        who: &str,
        plan: impl FnOnce(&Texts, &Snapshot) -> Result<Texts, E>,
    ) -> Result<Option<Written>, E> {
        let (Some(dir), Some(main)) = (self.source.tenants_dir(), self.source.file()) else {
            return Err(WriteError::ReadOnly.into());
        };
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.texts.load_full();
        let texts = plan(&live, &self.live.load())?;
        let (config, table) = Snapshot::compile_texts(&self.source.path(), &texts).map_err(WriteError::from)?;
        if dry_run {
            return Ok(None);
        }
        persist(main, &dir, &live, &texts)?;
        let (generation, changes) = self.install(who, texts, config, table);
        self.metrics.reload_result(true);
        tracing::info!(generation, who, "admin write applied");
        Ok(Some(Written { generation, changes }))
    }
}

/// The text of `tenants/<id>.toml`.
pub fn tenant_file(t: &TenantSection) -> Result<String, WriteError> {
    toml::to_string(t).map_err(|e| WriteError::Serialize {
        what: format!("tenant {}", t.id),
        message: e.to_string(),
    })
}

/// The text of `templates/<name>.toml`.
pub fn template_file(name: &str, t: &TemplateSection) -> Result<String, WriteError> {
    toml::to_string(t).map_err(|e| WriteError::Serialize {
        what: format!("template {name}"),
        message: e.to_string(),
    })
}

/// Writes the files that differ between `old` and `new`.
fn persist(main: &Path, dir: &Path, old: &Texts, new: &Texts) -> Result<(), WriteError> {
    if old.main != new.main {
        write_atomic(main, new.main.as_bytes())?;
    }
    persist_folder(dir, &old.tenants, &new.tenants)?;
    if old.templates != new.templates {
        persist_folder(&templates_dir(main), &old.templates, &new.templates)?;
    }
    Ok(())
}

/// Makes the `<stem>.toml` files in `dir` go from `old` to `new`.
fn persist_folder(
    dir: &Path,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Result<(), WriteError> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Persist { path, source }
    };
    std::fs::create_dir_all(dir).map_err(fail(dir))?;
    for (stem, text) in new {
        if old.get(stem) != Some(text) {
            write_atomic(&dir.join(format!("{stem}.toml")), text.as_bytes())?;
        }
    }
    for stem in old.keys().filter(|s| !new.contains_key(*s)) {
        let path = dir.join(format!("{stem}.toml"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(&path)(e)),
            _ => {}
        }
    }
    sync_dir(dir).map_err(fail(dir))
}

/// Writes `bytes` to `path` via a temp file in the same folder, fsync and
/// rename, so readers see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        WriteError::Persist {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
