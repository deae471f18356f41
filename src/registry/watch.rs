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
use crate::config::Changed;
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
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let snap = self.registry.snapshot();
        let watch = snap.config.gateway.watch_config;
        if !snap.config.admin.tokens.is_empty() {
            // The admin API writes there; watch them from the start so hand
            // edits of files it creates are seen too.
            for dir in [
                crate::config::tenants_dir(&path),
                crate::config::templates_dir(&path),
                crate::config::rollouts_dir(&path),
            ] {
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
            // `None`: read every file.
            let changed = tokio::select! {
                _ = shutdown.changed() => return,
                Some(first) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    let mut changed = Some(Changed::default());
                    for event in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                        match (&mut changed, event) {
                            (Some(c), Event::Main) => c.main = true,
                            (Some(c), Event::Tenant(stem)) => {
                                c.tenants.insert(stem);
                            }
                            (Some(c), Event::Template(stem)) => {
                                c.templates.insert(stem);
                            }
                            (Some(c), Event::Rollout(stem)) => {
                                c.rollouts.insert(stem);
                            }
                            (_, Event::Unknown) => changed = None,
                            (None, _) => {}
                        }
                    }
                    changed
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading config");
                    None
                }
            };
            let registry = self.registry.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || registry.reload_files(changed.as_ref())).await {
                tracing::error!(error = %e, "reload task failed");
            }
        }
    }
}

/// A file event that matters.
enum Event {
    Main,
    Tenant(String),
    Template(String),
    Rollout(String),
    /// Events may have been lost: read every file.
    Unknown,
}

/// Watches the file's directory (editors and `mv` replace the file, which
/// a watch on the file itself would miss) and signals changes to `path`,
/// and the tenants and templates folders beside it (those that exist) for
/// `*.toml` changes.
fn watch_file(path: PathBuf, tx: mpsc::UnboundedSender<Event>) -> notify::Result<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .map(PathBuf::from)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(PathBuf::from("."));
    let name = path.file_name().map(|n| n.to_os_string());
    let folders = [
        crate::config::tenants_dir(&path),
        crate::config::templates_dir(&path),
        crate::config::rollouts_dir(&path),
    ];
    let folders_for_events = folders.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(e) if !e.need_rescan() => e,
            _ => {
                let _ = tx.send(Event::Unknown);
                return;
            }
        };
        // Only changes count: our own reads of the file raise access events,
        // which must not trigger another reload.
        let changes = matches!(
            event.kind,
            notify::EventKind::Create(_) | notify::EventKind::Modify(_) | notify::EventKind::Remove(_)
        );
        if !changes {
            return;
        }
        for p in &event.paths {
            let folder = p.parent().and_then(|d| folders_for_events.iter().position(|f| f == d));
            match folder {
                Some(i) if p.extension().is_some_and(|e| e == "toml") => match p.file_stem().and_then(|s| s.to_str()) {
                    Some(stem) if stem.starts_with('.') => {}
                    Some(stem) if i == 0 => {
                        let _ = tx.send(Event::Tenant(stem.to_string()));
                    }
                    Some(stem) if i == 1 => {
                        let _ = tx.send(Event::Template(stem.to_string()));
                    }
                    Some(stem) => {
                        let _ = tx.send(Event::Rollout(stem.to_string()));
                    }
                    None => {
                        let _ = tx.send(Event::Unknown);
                    }
                },
                Some(_) => {}
                None if p.file_name().map(|n| n.to_os_string()) == name => {
                    let _ = tx.send(Event::Main);
                }
                None => {}
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    for folder in folders.iter().filter(|f| f.is_dir()) {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}
