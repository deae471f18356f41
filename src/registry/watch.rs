//! Triggers reloads: config file changes (via `notify`) and SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::Registry;
use crate::config::Source;

/// Coalesces bursts of file events (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Background service that reloads the registry when its file changes or on SIGHUP.
pub struct ConfigWatcher {
    pub registry: Arc<Registry>,
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Source::File(path) = self.registry.source().clone() else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let snap = self.registry.snapshot();
        let watch = snap.config.gateway.watch_config;
        if !snap.config.admin.tokens.is_empty() {
            // The admin API writes there; watch them from the start so hand
            // edits of files it creates are seen too.
            for dir in [crate::config::tenants_dir(&path), crate::config::templates_dir(&path)] {
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    tracing::warn!(error = %e, dir = %dir.display(), "cannot create the folder");
                }
            }
        }
        drop(snap);
        let _watcher = match watch.then(|| watch_file(path.clone(), tx.clone())).transpose() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot watch config file; reload with SIGHUP");
                None
            }
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading config");
                }
            }
            let registry = self.registry.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || registry.reload()).await {
                tracing::error!(error = %e, "reload task failed");
            }
        }
    }
}

/// Watches the file's directory (editors and `mv` replace the file, which
/// a watch on the file itself would miss) and signals changes to `path`,
/// and the tenants and templates folders beside it (those that exist) for
/// `*.toml` changes.
fn watch_file(path: PathBuf, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .map(PathBuf::from)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(PathBuf::from("."));
    let name = path.file_name().map(|n| n.to_os_string());
    let folders = [crate::config::tenants_dir(&path), crate::config::templates_dir(&path)];
    let folders_for_events = folders.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        // Only changes count: our own reads of the file raise access events,
        // which must not trigger another reload.
        let changes = matches!(
            event.kind,
            notify::EventKind::Create(_) | notify::EventKind::Modify(_) | notify::EventKind::Remove(_)
        );
        let relevant = |p: &PathBuf| {
            p.file_name().map(|n| n.to_os_string()) == name
                || (p.parent().is_some_and(|d| folders_for_events.iter().any(|f| f == d))
                    && p.extension().is_some_and(|e| e == "toml")
                    && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        };
        if changes && event.paths.iter().any(relevant) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    for folder in folders.iter().filter(|f| f.is_dir()) {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}
