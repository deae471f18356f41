//! The one writer of live state.
//!
//! A change (file edit, SIGHUP) goes: read → parse → validate → build
//! snapshot → swap. A change that fails any step leaves the live snapshot
//! untouched; the problems are logged and counted. Requests load the live
//! snapshot once and keep it for their whole life, so in-flight requests
//! finish on the generation they started with.

pub mod edge;
mod fleet;
pub mod rollouts;
mod snapshot;
mod versions;
mod views;
mod watch;
mod write;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

pub use fleet::{RegistryStore, RegistrySync, StoreError};
pub use snapshot::{problems, Changes, Snapshot, Tenant};
pub use versions::{FileChange, Version, VersionError, Versions};
pub use views::{View, KEPT_FOR, KEPT_VIEWS};
pub use watch::ConfigWatcher;
pub use write::{recover, template_file, tenant_file, Rendered, TenantEdit, WriteError, Written};

use crate::config::{Changed, Config, LoadError, Source, Texts};
use crate::limits::Book;
use crate::routing::DomainTable;
use crate::telemetry::Metrics;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Fleet mode: the edit could not be shared.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The source text is the same as the live one; nothing was done.
    Unchanged,
    /// A new generation is live.
    Applied { generation: u64, changes: Changes },
}

/// Holds the live snapshot and applies changes to it.
pub struct Registry {
    source: Source,
    live: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// Serialises writers (reloads and admin writes).
    writer: Mutex<()>,
    /// The text of the live config (main file and tenant files).
    texts: ArcSwap<Texts>,
    /// The live generation, for services that follow reloads.
    generation: tokio::sync::watch::Sender<u64>,
    /// Limiter state by tenant id, outside the snapshot.
    book: Arc<Book>,
    /// Applied versions, for rollback.
    versions: Versions,
    /// Fleet mode: the shared registry in Redis.
    store: OnceLock<RegistryStore>,
    /// The live snapshot and texts together (stored after both).
    view: ArcSwap<views::View>,
    /// Older views kept for page walks.
    kept: views::Kept,
    /// Tells this instance apart from one before a restart.
    epoch: u64,
}

impl Registry {
    /// The metrics every snapshot's handles come from (also the console's
    /// sketches and series).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Loads the first snapshot. Fails if the config is invalid.
    pub fn load(source: Source, metrics: Arc<Metrics>) -> Result<Registry, LoadError> {
        let texts = source.texts()?;
        let (config, table) = Snapshot::compile_texts(&source.path(), &texts)?;
        let book = Arc::new(Book::default());
        open_quota_file(&book, &config.quota_file);
        let snap = Snapshot::assemble(1, config, table, None, &metrics, &book);
        metrics.reload_result(true);
        publish_gauges(&metrics, &snap);
        let (generation, _) = tokio::sync::watch::channel(snap.generation);
        let versions = Versions::new(source.file());
        let (snap, texts) = (Arc::new(snap), Arc::new(texts));
        let view = views::View {
            snapshot: snap.clone(),
            texts: texts.clone(),
        };
        // Nanoseconds since the epoch, mixed with the process id: unique
        // enough to tell restarts apart.
        let epoch = (jiff::Timestamp::now().as_nanosecond() as u64) ^ (u64::from(std::process::id()) << 40);
        Ok(Registry {
            source,
            live: ArcSwap::new(snap),
            metrics,
            writer: Mutex::new(()),
            texts: ArcSwap::new(texts),
            generation,
            book,
            versions,
            store: OnceLock::new(),
            view: ArcSwap::from_pointee(view),
            kept: views::Kept::default(),
            epoch,
        })
    }

    /// The live snapshot. Cheap: one atomic increment.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// The live snapshot, borrowed: no shared atomic write in the common
    /// case. For use within one request hook; take an `Arc` to keep it.
    pub fn snapshot_guard(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.live.load()
    }

    /// Limiter state by tenant id.
    pub fn book(&self) -> &Arc<Book> {
        &self.book
    }

    /// Notified with the new generation after each applied reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The text of the live config.
    pub fn texts(&self) -> Arc<Texts> {
        self.texts.load_full()
    }

    /// Where the config comes from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Re-reads the source and swaps in a new snapshot if it is valid.
    /// Blocking (file I/O and CPU work): call it from a blocking thread.
    pub fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        self.reload_files(None)
    }

    /// Like [`Registry::reload`], re-reading only the files in `changed`
    /// (`None`: every file). Blocking.
    pub fn reload_files(&self, changed: Option<&Changed>) -> Result<ReloadOutcome, ReloadError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        let result = self.reload_locked(changed);
        let took = started.elapsed();
        self.metrics.config_last_reload_duration.set(took.as_secs_f64());
        match &result {
            // The file matches the running config again (e.g. a refused
            // edit was reverted), so the last state is healthy.
            Ok(ReloadOutcome::Unchanged) => {
                self.metrics.config_last_reload_success.set(1);
                // Same config, but files next to it (operator certificates)
                // may have changed: let followers re-read them.
                self.generation.send_modify(|_| {});
            }
            Ok(ReloadOutcome::Applied { generation, changes }) => {
                // Parsing and the old snapshot leave freed pages behind.
                crate::release_free_memory();
                self.metrics.reload_result(true);
                tracing::info!(
                    generation,
                    tenants_added = changes.added,
                    tenants_removed = changes.removed,
                    duration_ms = took.as_secs_f64() * 1e3,
                    "config reloaded"
                );
            }
            Err(ReloadError::Load(e)) => {
                self.metrics.reload_result(false);
                let file = self.source.path();
                for p in problems(e) {
                    tracing::error!(file = %file.display(), problem = %p, "config reload refused; the running config stays");
                }
            }
            Err(ReloadError::Store(e)) => {
                self.metrics.reload_result(false);
                tracing::error!(error = %e, "tenant file edit not shared, so not applied; the running config stays");
            }
        }
        result
    }

    fn reload_locked(&self, changed: Option<&Changed>) -> Result<ReloadOutcome, ReloadError> {
        let live = self.texts.load_full();
        let texts = match (changed, self.source.file()) {
            (Some(c), Some(path)) => match live.reread(path, c)? {
                Some(texts) => texts,
                None => return Ok(ReloadOutcome::Unchanged),
            },
            _ => self.source.texts()?,
        };
        if texts == *live {
            return Ok(ReloadOutcome::Unchanged);
        }
        // Fleet mode: a hand edit of tenant files is a write to the shared
        // registry, unless the registry moved on since (then it wins).
        let shared = match self.store.get() {
            Some(store)
                if texts.tenants != live.tenants
                    || texts.templates != live.templates
                    || texts.rollouts != live.rollouts =>
            {
                let lock = store.lock()?;
                let synced = self.sync_locked(store, true);
                store.mark(&synced);
                if synced? {
                    tracing::warn!(
                        "tenant files were edited by hand while the shared registry moved on; the shared registry wins"
                    );
                    return Ok(ReloadOutcome::Unchanged);
                }
                Some((store, lock))
            }
            _ => None,
        };
        let (config, table) = Snapshot::compile_texts(&self.source.path(), &texts)?;
        let version = match &shared {
            Some((store, _)) => Some(self.commit_to_store(store, &texts, &write::Batch::between(&live, &texts))?),
            None => None,
        };
        let (generation, changes) = self.install("file", texts, config, table);
        if let (Some((store, _)), Some(v)) = (shared, version) {
            store.set_synced(v);
        }
        Ok(ReloadOutcome::Applied { generation, changes })
    }

    /// The version history.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// Swaps in a compiled config and records it as a version (by `who`).
    /// Call with the writer lock held.
    fn install(&self, who: &str, texts: Texts, config: Config, table: DomainTable) -> (u64, Changes) {
        if let Err(e) = self
            .versions
            .record(who, &self.texts.load(), &texts, config.admin.history)
        {
            tracing::error!(error = %e, "cannot record the version; rollback to it will not be possible");
        }
        let old = self.live.load_full();
        if config.gateway.http_listen != old.config.gateway.http_listen
            || config.gateway.metrics_listen != old.config.gateway.metrics_listen
            || config.gateway.https_listen != old.config.gateway.https_listen
            || config.gateway.threads != old.config.gateway.threads
            || config.tls.is_some() != old.config.tls.is_some()
            || config.store != old.config.store
        {
            tracing::warn!("listen addresses, threads, turning [tls] on or off and [store] change only on restart; the rest of the change applies");
        }
        if let Some(store) = self.store.get() {
            // The main file may have changed: retry a refused shared version.
            store.forget_refusal();
        }
        let generation = old.generation + 1;
        let snap = Snapshot::assemble(generation, config, table, Some(&old), &self.metrics, &self.book);
        let ids: HashSet<&str> = snap
            .tenants
            .iter()
            .filter(|t| t.limiter.is_some())
            .map(|t| &*t.id)
            .collect();
        self.book.retain(&ids);
        let changes = self.forget_removed(&old, &snap);
        publish_gauges(&self.metrics, &snap);
        let (snap, texts) = (Arc::new(snap), Arc::new(texts));
        self.live.store(snap.clone());
        self.texts.store(texts.clone());
        self.view.store(Arc::new(views::View { snapshot: snap, texts }));
        self.prune_views();
        self.generation.send_replace(generation);
        (generation, changes)
    }

    /// Drops metric series of tenants and pools that are gone.
    fn forget_removed(&self, old: &Snapshot, new: &Snapshot) -> Changes {
        let new_ids: HashSet<&str> = new.tenants.iter().map(|t| &*t.id).collect();
        let old_ids: HashSet<&str> = old.tenants.iter().map(|t| &*t.id).collect();
        let labelled: HashSet<&str> = new.labelled_tenants().collect();
        for id in old.labelled_tenants() {
            if !labelled.contains(id) {
                self.metrics.forget_tenant(id);
            }
        }
        for r in &old.config.rollouts {
            if !new.config.rollouts.iter().any(|n| n.name == r.name) {
                self.metrics.rollouts.forget(&r.name);
            }
        }
        for p in &old.pools {
            let kept = new.pools.iter().find(|n| n.name == p.name);
            if kept.is_none() {
                self.metrics.forget_pool(&p.name);
            }
            for u in p.members() {
                if !kept.is_some_and(|n| n.members().iter().any(|k| k.addr == u.addr)) {
                    self.metrics.backends.forget_upstream(&p.name, &u.addr.to_string());
                }
            }
        }
        Changes {
            added: new_ids.difference(&old_ids).count(),
            removed: old_ids.difference(&new_ids).count(),
        }
    }
}

/// Loads persisted quota counts. A file that cannot be read is moved aside
/// (so the next flush does not overwrite evidence) and counting starts over.
fn open_quota_file(book: &Book, path: &std::path::Path) {
    if let Err(e) = book.open(path) {
        let aside = path.with_extension(format!("corrupt-{}", std::process::id()));
        let moved = std::fs::rename(path, &aside).is_ok();
        tracing::error!(error = %e, moved_to = %aside.display(), moved, "quota file unreadable; counting starts from zero");
    }
}

fn publish_gauges(metrics: &Metrics, snap: &Snapshot) {
    metrics.config_generation.set(snap.generation as i64);
    metrics.tenants.set(snap.tenants.len() as i64);
    metrics.domains.set(snap.table.len() as i64);
    for r in &snap.config.rollouts {
        metrics.rollouts.set_percent(&r.name, r.moved_percent());
    }
}
