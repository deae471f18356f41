//! The ordered event log provisioning systems follow: tenants created,
//! updated and deleted; domains pending, verified, active, failed, removed;
//! certificates issued, renewed, failed. Each event has a sequence number
//! that only grows (also across restarts: the log is appended to
//! `events.jsonl` in `[domains] state_dir`); `GET /v1/events?after=<seq>`
//! reads it, waiting for the next event when there is none yet.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Events kept in memory for readers (older ones stay in the file).
const KEEP: usize = 10_000;
/// The file is rewritten with the kept events once it passes this size.
const MAX_FILE: u64 = 16 << 20;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Unix seconds.
    pub time: u64,
    /// `domain.pending`, `domain.active`, `certificate.issued`, ...
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

struct Log {
    kept: VecDeque<Event>,
    next: u64,
    file: Option<std::fs::File>,
}

/// The event log.
pub struct Events {
    log: Mutex<Log>,
    path: PathBuf,
    /// The last sequence number written, for waiting readers.
    last: watch::Sender<u64>,
    /// Fleet mode: events emitted here wait for the shared log (in Redis);
    /// the local log mirrors the shared one (see `fleet.rs`).
    outbox: Mutex<Option<VecDeque<Event>>>,
    /// Told when the outbox has an event.
    pub queued: tokio::sync::Notify,
}

/// Events an unreachable fleet store may leave waiting in memory.
const MAX_OUTBOX: usize = 100_000;

impl Events {
    /// The log in `state_dir`, its last [`KEEP`] events read back.
    pub fn open(state_dir: &Path) -> Events {
        let path = state_dir.join("events.jsonl");
        let mut kept = VecDeque::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Ok(e) = serde_json::from_str::<Event>(line) {
                    if kept.len() == KEEP {
                        kept.pop_front();
                    }
                    kept.push_back(e);
                }
            }
        }
        let next = kept.back().map_or(1, |e: &Event| e.seq + 1);
        let _ = std::fs::create_dir_all(state_dir);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        if let Err(e) = &file {
            tracing::error!(path = %path.display(), error = %e, "event log cannot be written; events are kept in memory only");
        }
        Events {
            log: Mutex::new(Log {
                kept,
                next,
                file: file.ok(),
            }),
            path,
            last: watch::channel(next - 1).0,
            outbox: Mutex::new(None),
            queued: tokio::sync::Notify::new(),
        }
    }

    /// Fleet mode: from now on, [`Events::emit`] queues events for the
    /// shared log, and the local log holds only what [`Events::ingest`]
    /// brings from it.
    pub fn use_fleet(&self) {
        if let Ok(mut o) = self.outbox.lock() {
            o.get_or_insert_with(VecDeque::new);
        }
    }

    /// The queued events, oldest first (fleet mode).
    pub fn take_outbox(&self) -> Vec<Event> {
        self.outbox
            .lock()
            .ok()
            .and_then(|mut o| o.as_mut().map(|q| q.drain(..).collect()))
            .unwrap_or_default()
    }

    /// Puts back events the shared log did not take, ahead of newer ones.
    pub fn requeue(&self, events: Vec<Event>) {
        if let Ok(mut o) = self.outbox.lock() {
            if let Some(q) = o.as_mut() {
                for e in events.into_iter().rev() {
                    q.push_front(e);
                }
                while q.len() > MAX_OUTBOX {
                    if let Some(e) = q.pop_front() {
                        tracing::error!(event = %e.kind, tenant = ?e.tenant, name = ?e.name, "event dropped: the domain store was unreachable for too long");
                    }
                }
            }
        }
    }

    /// Appends events of the shared log (fleet mode), keeping their
    /// sequence numbers; those not after the last one are ignored.
    pub fn ingest(&self, events: Vec<Event>) {
        let mut log = self.lock();
        let mut last = None;
        for e in events {
            if e.seq < log.next {
                continue;
            }
            log.next = e.seq + 1;
            last = Some(e.seq);
            self.append(&mut log, e);
        }
        drop(log);
        if let Some(seq) = last {
            self.last.send_replace(seq);
        }
    }

    /// Writes one event to the file and keeps it (compacting the file when
    /// it grew past [`MAX_FILE`]).
    fn append(&self, log: &mut Log, e: Event) {
        if let Some(f) = log.file.as_mut() {
            if let Ok(mut line) = serde_json::to_vec(&e) {
                line.push(b'\n');
                if let Err(err) = f.write_all(&line) {
                    tracing::error!(error = %err, "event log write failed");
                }
            }
        }
        if log.kept.len() == KEEP {
            log.kept.pop_front();
        }
        log.kept.push_back(e);
        if log
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() > MAX_FILE)
        {
            self.compact(log);
        }
    }

    /// Forgets every event (fleet mode: the shared log is behind this copy,
    /// so it was reset; the copy follows it).
    pub fn reset(&self) {
        let mut log = self.lock();
        log.kept.clear();
        log.next = 1;
        self.compact(&mut log);
        drop(log);
        self.last.send_replace(0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends one event. Blocking (one small write), cheap.
    /// In fleet mode the event is queued for the shared log and 0 is
    /// returned (its number comes from Redis).
    pub fn emit(&self, kind: &str, tenant: Option<&str>, name: Option<&str>, detail: Option<&str>) -> u64 {
        let mut e = Event {
            seq: 0,
            time: super::now(),
            kind: kind.to_string(),
            tenant: tenant.map(str::to_string),
            name: name.map(str::to_string),
            detail: detail.map(str::to_string),
        };
        if let Ok(mut o) = self.outbox.lock() {
            if let Some(q) = o.as_mut() {
                q.push_back(e);
                if q.len() > MAX_OUTBOX {
                    if let Some(e) = q.pop_front() {
                        tracing::error!(event = %e.kind, tenant = ?e.tenant, name = ?e.name, "event dropped: the domain store was unreachable for too long");
                    }
                }
                drop(o);
                self.queued.notify_one();
                return 0;
            }
        }
        let mut log = self.lock();
        e.seq = log.next;
        log.next += 1;
        tracing::info!(seq = e.seq, event = %e.kind, tenant = ?e.tenant, name = ?e.name, "event");
        let seq = e.seq;
        self.append(&mut log, e);
        drop(log);
        self.last.send_replace(seq);
        seq
    }

    /// Rewrites the file with the kept events only.
    fn compact(&self, log: &mut Log) {
        let tmp = self.path.with_extension("jsonl.tmp");
        let write = || -> std::io::Result<std::fs::File> {
            let mut f = std::fs::File::create(&tmp)?;
            for e in &log.kept {
                let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::OpenOptions::new().append(true).open(&self.path)
        };
        match write() {
            Ok(f) => log.file = Some(f),
            Err(e) => tracing::error!(error = %e, "event log compaction failed"),
        }
    }

    /// Up to `limit` events after `after`, in order, and the oldest
    /// sequence number still kept (a reader behind it missed events).
    pub fn after(&self, after: u64, limit: usize) -> (Vec<Event>, u64) {
        let log = self.lock();
        let oldest = log.kept.front().map_or(log.next, |e| e.seq);
        let start = log.kept.partition_point(|e| e.seq <= after);
        (log.kept.iter().skip(start).take(limit).cloned().collect(), oldest)
    }

    /// Waits up to `wait` for an event after `after`.
    pub async fn wait_after(&self, after: u64, wait: Duration) {
        let mut rx = self.last.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|last| *last > after)).await;
    }

    /// The last sequence number.
    pub fn last(&self) -> u64 {
        *self.last.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_keep_growing_across_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let ev = Events::open(dir.path());
        assert_eq!(ev.emit("domain.pending", Some("a"), Some("x.example"), None), 1);
        assert_eq!(ev.emit("domain.active", Some("a"), Some("x.example"), None), 2);
        drop(ev);
        let ev = Events::open(dir.path());
        assert_eq!(ev.last(), 2);
        assert_eq!(ev.emit("domain.removed", Some("a"), Some("x.example"), None), 3);
        let (after1, oldest) = ev.after(1, 10);
        assert_eq!(oldest, 1);
        assert_eq!(
            after1.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["domain.active", "domain.removed"]
        );
    }
}
