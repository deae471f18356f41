//! The audit log: one JSON line per write attempt, applied or rejected,
//! appended to `state/admin/audit.jsonl` beside the config file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::config::diff::TenantDiff;

/// Entries returned by one `GET /v1/audit` at most.
pub const MAX_READ: usize = 1000;

/// Appends entries; one writer at a time, so lines never interleave.
#[derive(Debug)]
pub struct Audit {
    path: Option<PathBuf>,
    lock: Mutex<()>,
}

/// One write attempt, for the log.
pub struct Entry<'a> {
    pub who: &'a str,
    pub request: &'a str,
    pub tenants: &'a [String],
    /// The refusal's status; `None` when applied.
    pub status: Option<u16>,
    pub generation: Option<u64>,
    pub diff: &'a [TenantDiff],
    pub problem: Option<&'a str>,
}

impl Audit {
    /// The log for the config file at `config` (`None`: the embedded demo, not logged).
    pub fn new(config: Option<&std::path::Path>) -> Audit {
        let path = config.map(|c| {
            c.parent()
                .unwrap_or(std::path::Path::new("."))
                .join("state/admin/audit.jsonl")
        });
        Audit {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Appends one entry. Blocking. A failure is logged: the write it
    /// describes has already happened (or was refused).
    pub fn record(&self, e: &Entry<'_>) {
        let Some(path) = &self.path else { return };
        let line = json!({
            "at": jiff::Timestamp::now().to_string(),
            "who": e.who,
            "request": e.request,
            "tenants": e.tenants,
            "result": if e.problem.is_none() { "applied" } else { "rejected" },
            "status": e.status,
            "generation": e.generation,
            "diff": e.diff.iter().map(TenantDiff::to_json).collect::<Vec<_>>(),
            "problem": e.problem,
        });
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            f.write_all(format!("{line}\n").as_bytes())?;
            f.sync_data()
        })();
        if let Err(err) = result {
            tracing::error!(error = %err, path = %path.display(), "cannot append to the audit log");
        }
    }

    /// The last `limit` entries, oldest first, about `tenant` if given.
    /// Blocking.
    pub fn read(&self, tenant: Option<&str>, limit: usize) -> std::io::Result<Vec<Value>> {
        let Some(path) = &self.path else { return Ok(Vec::new()) };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out: Vec<Value> = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| match tenant {
                None => true,
                Some(t) => v["tenants"].as_array().is_some_and(|a| a.iter().any(|x| x == t)),
            })
            .take(limit.min(MAX_READ))
            .collect();
        out.reverse();
        Ok(out)
    }
}
