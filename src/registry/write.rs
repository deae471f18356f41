//! Writes from the admin API: tenant and template files changed under the
//! writer lock, validated exactly like a load, persisted atomically, then
//! swapped in.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::fleet::StoreError;
use super::{Changes, Registry, Snapshot, VersionError};
use crate::config::file::{TemplateSection, TenantSection};
use crate::config::rollouts::RolloutSection;
use crate::config::{rollouts_dir, templates_dir, LoadError, Texts};

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
    /// Create or replace `rollouts/<name>.toml`.
    PutRollout(String, Box<RolloutSection>),
    /// Remove `rollouts/<name>.toml`.
    DeleteRollout(String),
}

impl TenantEdit {
    /// The tenant this edit writes, if it is a tenant edit.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            TenantEdit::Put(t) => Some(&t.id),
            TenantEdit::Delete(id) => Some(id),
            _ => None,
        }
    }

    /// The template this edit writes, if it is a template edit.
    pub fn template(&self) -> Option<&str> {
        match self {
            TenantEdit::PutTemplate(name, _) | TenantEdit::DeleteTemplate(name) => Some(name),
            _ => None,
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an applied write did.
#[derive(Debug)]
pub struct Written {
    pub generation: u64,
    pub changes: Changes,
    /// The edits left every file as it was: nothing was recorded, the
    /// generation is the live one.
    pub unchanged: bool,
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
        plan: impl FnOnce(&Texts, &Snapshot) -> Result<Rendered, E>,
    ) -> Result<Option<Written>, E> {
        self.write_texts(dry_run, who, |live, snap| Ok(edited(live, plan(live, snap)?)))
    }

    /// Checks `plan`'s edits like [`Registry::write`] with `dry_run`, but
    /// without the writer lock, against the live state as it is now: a
    /// write refused here never waits for, or holds up, other writes. A
    /// write that passes must still go through [`Registry::write`] (the
    /// state may change in between). Blocking.
    pub fn validate<E: From<WriteError>>(
        &self,
        plan: impl FnOnce(&Texts, &Snapshot) -> Result<Rendered, E>,
    ) -> Result<(), E> {
        let live = self.texts.load_full();
        let snap = self.live.load_full();
        let texts = edited(&live, plan(&live, &snap)?);
        if texts != *live {
            Snapshot::compile_texts(&self.source.path(), &texts).map_err(WriteError::from)?;
        }
        Ok(())
    }

    /// Puts the live texts back as they were right after version `n`, as a
    /// new version. Blocking.
    pub fn rollback(&self, dry_run: bool, who: &str, n: u64) -> Result<Option<Written>, WriteError> {
        self.write_texts(dry_run, who, |live, _| Ok(self.versions.undo_to(n, live)?))
    }

    /// What rolling back to version `n` would change, field by field (the
    /// console shows it before the rollback). Parses both the live and
    /// the restored files: for a blocking thread.
    pub fn rollback_diff(&self, n: u64) -> Result<Vec<crate::config::diff::TenantDiff>, WriteError> {
        let live = self.texts.load_full();
        let undone = self.versions.undo_to(n, &live)?;
        let path = self.source.path();
        let (before, _) = live.parse(&path)?;
        let (after, _) = undone.parse(&path)?;
        Ok(crate::config::diff::changes(
            &crate::config::diff::State::of(before),
            &crate::config::diff::State::of(after),
        ))
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
        // Fleet mode: wait for other replicas' writes and start from the
        // shared registry's latest version (a preview just tries to).
        let store = self.store.get();
        let _fleet_lock = match store {
            Some(store) if !dry_run => {
                let lock = store.lock().map_err(WriteError::from)?;
                let synced = self.sync_locked(store, true);
                store.mark(&synced);
                synced.map_err(WriteError::from)?;
                Some(lock)
            }
            Some(store) => {
                // Catch up, but never seed an empty store from a preview.
                if store.version().is_ok_and(|v| v != 0 && v != store.synced()) {
                    let _ = self.sync_locked(store, false);
                }
                None
            }
            None => None,
        };
        let live = self.texts.load_full();
        let snap = self.live.load_full();
        let texts = plan(&live, &snap)?;
        // The live texts are valid: a write that leaves them as they are is
        // neither compiled, recorded nor swapped.
        if texts == *live {
            return Ok((!dry_run).then(|| Written {
                generation: snap.generation,
                changes: Changes::default(),
                unchanged: true,
            }));
        }
        let (config, table) = Snapshot::compile_texts(&self.source.path(), &texts).map_err(WriteError::from)?;
        if dry_run {
            return Ok(None);
        }
        let batch = Batch::between(&live, &texts);
        let version = match store {
            // The shared registry is the record; the files here are its copy.
            Some(store) => {
                let v = self.commit_to_store(store, &texts, &batch).map_err(WriteError::from)?;
                if let Err(e) = persist_batch(main, &dir, &batch) {
                    tracing::error!(error = %e, "cannot keep the shared registry on disk; a restart without Redis serves an older copy");
                }
                Some((store, v))
            }
            None => {
                persist_batch(main, &dir, &batch)?;
                None
            }
        };
        let (generation, changes) = self.install(who, texts, config, table);
        if let Some((store, v)) = version {
            store.set_synced(v);
        }
        self.metrics.reload_result(true);
        // The old snapshot and the parse leave freed pages behind.
        crate::release_free_memory();
        tracing::info!(generation, who, "admin write applied");
        Ok(Some(Written {
            generation,
            changes,
            unchanged: false,
        }))
    }
}

/// Edits with the text each one writes, rendered once (by several threads
/// for a big batch), without those that would leave a file as it is (a PUT
/// of the text already there), so that an unchanged import neither diffs
/// nor rewrites 100,000 tenants.
#[derive(Debug, Default)]
pub struct Rendered {
    edits: Vec<TenantEdit>,
    /// For each edit, the new file's text (`None`: the file goes).
    texts: Vec<Option<String>>,
}

impl Rendered {
    /// Renders `edits` against the `live` texts.
    pub fn of(live: &Texts, edits: Vec<TenantEdit>) -> Result<Rendered, WriteError> {
        let texts = crate::map_parallel(&edits, |e| match e {
            TenantEdit::Put(t) => tenant_file(t).map(Some),
            TenantEdit::PutTemplate(name, t) => template_file(name, t).map(Some),
            TenantEdit::PutRollout(name, r) => rollout_file(name, r).map(Some),
            TenantEdit::Delete(_) | TenantEdit::DeleteTemplate(_) | TenantEdit::DeleteRollout(_) => Ok(None),
        })
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        let mut out = Rendered {
            edits: Vec::with_capacity(edits.len()),
            texts: Vec::with_capacity(edits.len()),
        };
        for (edit, text) in edits.into_iter().zip(texts) {
            let now = match &edit {
                TenantEdit::Put(t) => live.tenants.get(&t.id),
                TenantEdit::PutTemplate(name, _) => live.templates.get(name),
                TenantEdit::PutRollout(name, _) => live.rollouts.get(name),
                TenantEdit::Delete(_) | TenantEdit::DeleteTemplate(_) | TenantEdit::DeleteRollout(_) => None,
            };
            if text.is_some() && now == text.as_ref() {
                continue;
            }
            out.edits.push(edit);
            out.texts.push(text);
        }
        Ok(out)
    }

    /// The edits that change a file.
    pub fn edits(&self) -> &[TenantEdit] {
        &self.edits
    }
}

/// `live` with `edits` made.
fn edited(live: &Texts, edits: Rendered) -> Texts {
    let mut texts = live.clone();
    for (edit, text) in edits.edits.into_iter().zip(edits.texts) {
        match (edit, text) {
            (TenantEdit::Put(t), Some(text)) => {
                texts.tenants.insert(t.id, text);
            }
            (TenantEdit::PutTemplate(name, _), Some(text)) => {
                texts.templates.insert(name, text);
            }
            (TenantEdit::Delete(id), _) => {
                texts.tenants.remove(&id);
            }
            (TenantEdit::DeleteTemplate(name), _) => {
                texts.templates.remove(&name);
            }
            (TenantEdit::PutRollout(name, _), Some(text)) => {
                texts.rollouts.insert(name, text);
            }
            (TenantEdit::DeleteRollout(name), _) => {
                texts.rollouts.remove(&name);
            }
            // Rendered::of gives every put its text.
            (TenantEdit::Put(_) | TenantEdit::PutTemplate(..) | TenantEdit::PutRollout(..), None) => {}
        }
    }
    texts
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

/// The text of `rollouts/<name>.toml`.
pub fn rollout_file(name: &str, r: &RolloutSection) -> Result<String, WriteError> {
    toml::to_string(r).map_err(|e| WriteError::Serialize {
        what: format!("rollout {name}"),
        message: e.to_string(),
    })
}

/// The files one write changes: written first as a journal, so that a
/// crash part way through a batch is finished at the next start; in fleet
/// mode, also what a write commits to the shared registry.
/// It borrows the texts it writes (a 100,000-tenant batch is not copied);
/// one read back from a journal owns them.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Batch<'a> {
    /// The new main file, when it changes.
    pub(super) main: Option<Cow<'a, str>>,
    pub(super) tenants: FolderChange<'a>,
    #[serde(default)]
    pub(super) templates: FolderChange<'a>,
    #[serde(default)]
    pub(super) rollouts: FolderChange<'a>,
}

impl<'a> Batch<'a> {
    /// The files that differ from `old` to `new`.
    pub(super) fn between(old: &Texts, new: &'a Texts) -> Batch<'a> {
        Batch {
            main: (old.main != new.main).then_some(Cow::Borrowed(new.main.as_str())),
            tenants: FolderChange::between(&old.tenants, &new.tenants),
            templates: FolderChange::between(&old.templates, &new.templates),
            rollouts: FolderChange::between(&old.rollouts, &new.rollouts),
        }
    }
}

/// Changes to one folder of `<stem>.toml` files.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct FolderChange<'a> {
    /// Files to write, by stem.
    pub(super) put: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    /// Files to remove, by stem.
    pub(super) delete: Vec<String>,
}

impl<'a> FolderChange<'a> {
    fn between(old: &BTreeMap<String, String>, new: &'a BTreeMap<String, String>) -> FolderChange<'a> {
        FolderChange {
            put: new
                .iter()
                .filter(|(stem, text)| old.get(*stem) != Some(text))
                .map(|(stem, text)| (Cow::Borrowed(stem.as_str()), Cow::Borrowed(text.as_str())))
                .collect(),
            delete: old.keys().filter(|s| !new.contains_key(*s)).cloned().collect(),
        }
    }

    fn files(&self) -> usize {
        self.put.len() + self.delete.len()
    }

    /// Writes (each atomically; with `durable`, each fsynced) and removes
    /// the files, then syncs `dir`. A big batch (journaled, so not
    /// `durable`) is written by several threads: creating a file is mostly
    /// waiting on the file system, and 100,000 of them one after the other
    /// took seconds.
    fn apply(&self, dir: &Path, durable: bool) -> Result<(), WriteError> {
        if self.files() == 0 {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(fail(dir))?;
        let put: Vec<(&str, &str)> = self.put.iter().map(|(k, v)| (&**k, &**v)).collect();
        let delete: Vec<&str> = self.delete.iter().map(String::as_str).collect();
        in_parallel(&put, durable, |(stem, text)| {
            write_file(&dir.join(format!("{stem}.toml")), text.as_bytes(), durable)
        })?;
        in_parallel(&delete, durable, |stem| {
            let path = dir.join(format!("{stem}.toml"));
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(&path)(e)),
                _ => Ok(()),
            }
        })?;
        sync_dir(dir).map_err(fail(dir))
    }
}

/// Runs `f` on every item (on several threads when there are many, unless
/// `serial`); the first error wins.
fn in_parallel<T: Sync>(
    items: &[T],
    serial: bool,
    f: impl Fn(&T) -> Result<(), WriteError> + Sync,
) -> Result<(), WriteError> {
    if serial {
        return items.iter().try_for_each(f);
    }
    crate::map_parallel(items, f).into_iter().collect()
}

/// Maps an I/O error on `path` to a [`WriteError`].
fn fail(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError {
    let path = path.to_path_buf();
    move |source| WriteError::Persist { path, source }
}

/// The journal of a batch being written: `tenants/.batch.json` (a dot file,
/// so neither loads nor the watcher read it).
fn journal(dir: &Path) -> PathBuf {
    dir.join(".batch.json")
}

/// Writes the files that differ between `old` and `new`. More than one file
/// goes through a journal: a crash part way leaves it, and the next start
/// finishes the batch ([`recover`]). The journal is fsynced; the files it
/// covers are flushed together by one `syncfs` before it is removed (one
/// fsync per file made a fleet replica's 100,000-file copy take 30 s).
pub(super) fn persist(main: &Path, dir: &Path, old: &Texts, new: &Texts) -> Result<(), WriteError> {
    persist_batch(main, dir, &Batch::between(old, new))
}

/// [`persist`] of changes already worked out. A batch is done, and
/// survives a crash, once its journal is on disk and its files written;
/// flushing the files and removing the journal (which takes seconds on a
/// busy disk) happens after, on a thread of its own, and the next write
/// waits for it before it touches a file ([`settle`]).
fn persist_batch(main: &Path, dir: &Path, batch: &Batch) -> Result<(), WriteError> {
    settle()?;
    let files =
        batch.tenants.files() + batch.templates.files() + batch.rollouts.files() + usize::from(batch.main.is_some());
    let journal = journal(dir);
    if files > 1 {
        std::fs::create_dir_all(dir).map_err(fail(dir))?;
        write_atomic_with(&journal, |w| {
            serde_json::to_writer(w, batch).map_err(std::io::Error::other)
        })?;
    }
    apply(main, batch, files <= 1)?;
    if files > 1 {
        finish_later(dir.to_path_buf(), journal);
    }
    Ok(())
}

/// The finish of the last batch ([`finish`]), running after its write
/// returned: its folder, its journal, and the thread.
type Finishing = (PathBuf, PathBuf, std::thread::JoinHandle<Result<(), WriteError>>);

static FINISHING: std::sync::Mutex<Option<Finishing>> = std::sync::Mutex::new(None);

/// Runs [`finish`] on a thread of its own; [`settle`] waits for it.
fn finish_later(dir: PathBuf, journal: PathBuf) {
    let spawned = {
        let (dir, journal) = (dir.clone(), journal.clone());
        std::thread::Builder::new()
            .name("batch-sync".into())
            .spawn(move || finish(&dir, &journal))
    };
    match spawned {
        Ok(handle) => {
            *FINISHING.lock().unwrap_or_else(|p| p.into_inner()) = Some((dir, journal, handle));
        }
        // No thread: finish here (the batch is safe either way).
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the batch sync thread; syncing here");
            if let Err(e) = finish(&dir, &journal) {
                tracing::error!(error = %e, "cannot flush a batch; its journal stays and the next start finishes it");
            }
        }
    }
}

/// Waits until the last batch's files are on disk and its journal gone
/// (finishing it here if its thread failed), so that no file is written
/// while an older journal could still replay over it.
fn settle() -> Result<(), WriteError> {
    let pending = FINISHING.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some((dir, journal, handle)) = pending else {
        return Ok(());
    };
    match handle.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "flushing the last batch failed; trying again");
            finish(&dir, &journal)
        }
        Err(_) => finish(&dir, &journal),
    }
}

/// Writes every file of a batch.
fn apply(main: &Path, batch: &Batch, durable: bool) -> Result<(), WriteError> {
    if let Some(text) = &batch.main {
        write_file(main, text.as_bytes(), durable)?;
    }
    batch.tenants.apply(&crate::config::tenants_dir(main), durable)?;
    batch.templates.apply(&templates_dir(main), durable)?;
    batch.rollouts.apply(&rollouts_dir(main), durable)
}

/// Flushes the batch's files to disk, then removes its journal.
fn finish(dir: &Path, journal: &Path) -> Result<(), WriteError> {
    sync_fs(dir).map_err(fail(dir))?;
    match std::fs::remove_file(journal) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(journal)(e)),
        _ => {}
    }
    sync_dir(dir).map_err(fail(dir))
}

/// `syncfs(2)` on the file system holding `dir`: every file written so far
/// is on disk when it returns.
fn sync_fs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    // SAFETY: `f` is an open descriptor for the duration of the call.
    match unsafe { libc::syncfs(f.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Finishes a batch that a crash interrupted, if `tenants/.batch.json` is
/// there; returns whether one was. Run before the first load.
pub fn recover(main: &Path) -> Result<bool, WriteError> {
    let dir = crate::config::tenants_dir(main);
    let journal = journal(&dir);
    let bytes = match std::fs::read(&journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(WriteError::Persist { path: journal, source }),
    };
    // The journal is written atomically, so a partial one cannot exist;
    // one that does not parse was not written by this program.
    let batch: Batch = serde_json::from_slice(&bytes).map_err(|e| WriteError::Serialize {
        what: "the batch journal".into(),
        message: format!("{}: {e}", journal.display()),
    })?;
    apply(main, &batch, false)?;
    finish(&dir, &journal)?;
    Ok(true)
}

/// Writes what `write` writes (through a buffer, so that a big file, a
/// batch journal or a version record, is never held whole in memory) to
/// `path` via a temp file in the same folder, fsync and rename, so readers
/// see the old file or the new one, never a part.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
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

/// With `durable`: via a temp file, fsync and rename, like
/// [`write_atomic_with`]. Otherwise the file is part of a journaled
/// batch, which a crash part way through finishes from the journal at the
/// next start, and which readers (reloads) only see once the writer lock is
/// released: it is written in place, without temp file, fsync or rename
/// (with a rename per file, 100,000 new tenants spent most of their import
/// in directory operations).
fn write_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), WriteError> {
    if !durable {
        return std::fs::write(path, bytes).map_err(|source| WriteError::Persist {
            path: path.to_path_buf(),
            source,
        });
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
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
