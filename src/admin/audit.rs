//! The audit log: one JSON line per write attempt, applied or rejected,
//! appended to `state/admin/audit.jsonl` beside the config file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use super::preview::Diffs;

use crate::config::diff::TenantDiff;

/// Entries returned by one `GET /v1/audit` at most.
pub const MAX_READ: usize = 1000;

/// Appends entries; one writer at a time, so lines never interleave.
#[derive(Debug)]
pub struct Audit {
    path: Option<PathBuf>,
    lock: Mutex<()>,
    /// Past this size the log is moved to `audit.jsonl.1` (replacing the
    /// one there) and a new one started.
    max_bytes: AtomicU64,
}

/// One line of the log (keys in alphabetical order, as before).
#[derive(serde::Serialize)]
struct Line<'a> {
    at: String,
    diff: Diffs<'a>,
    generation: Option<u64>,
    problem: Option<&'a str>,
    request: &'a str,
    result: &'static str,
    status: Option<u16>,
    tenants: &'a [String],
    who: &'a str,
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
            max_bytes: AtomicU64::new(crate::config::DEFAULT_AUDIT_MAX_BYTES),
        }
    }

    /// Sets the size past which the log is rotated (`[admin] audit_max_bytes`).
    pub fn set_max_bytes(&self, n: u64) {
        self.max_bytes.store(n.max(1), Ordering::Relaxed);
    }

    /// Appends one entry. Blocking. A failure is logged: the write it
    /// describes has already happened (or was refused).
    pub fn record(&self, e: &Entry<'_>) {
        let Some(path) = &self.path else { return };
        let line = Line {
            at: jiff::Timestamp::now().to_string(),
            diff: Diffs(e.diff),
            generation: e.generation,
            problem: e.problem,
            request: e.request,
            result: if e.problem.is_none() { "applied" } else { "rejected" },
            status: e.status,
            tenants: e.tenants,
            who: e.who,
        };
        let mut line = match serde_json::to_string(&line) {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(error = %err, "cannot write an audit entry");
                return;
            }
        };
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            line.push('\n');
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if size > 0 && size + line.len() as u64 > self.max_bytes.load(Ordering::Relaxed) {
                std::fs::rename(path, rotated(path))?;
            }
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })();
        if let Err(err) = result {
            tracing::error!(error = %err, path = %path.display(), "cannot append to the audit log");
        }
    }

    /// The last `limit` entries, oldest first, about `tenant` if given.
    /// Reads the log (then the rotated one) backwards from its end, a block
    /// at a time, and stops once it has `limit` entries. Blocking.
    pub fn read(&self, tenant: Option<&str>, limit: usize) -> std::io::Result<Vec<Value>> {
        let Some(path) = &self.path else { return Ok(Vec::new()) };
        let limit = limit.min(MAX_READ);
        let mut out: Vec<Value> = Vec::new();
        for file in [path.clone(), rotated(path)] {
            if out.len() >= limit {
                break;
            }
            lines_backwards(&file, |line| {
                if let Ok(v) = serde_json::from_slice::<Value>(line) {
                    let about = match tenant {
                        None => true,
                        Some(t) => v["tenants"].as_array().is_some_and(|a| a.iter().any(|x| x == t)),
                    };
                    if about {
                        out.push(v);
                    }
                }
                out.len() < limit
            })?;
        }
        out.reverse();
        Ok(out)
    }
}

/// The rotated log: `audit.jsonl.1`.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Block size of [`lines_backwards`].
const BLOCK: u64 = 64 * 1024;

/// Calls `each` with every line of `path`, last first, until it returns
/// `false`. Memory: one block plus the longest line. A missing file has no
/// lines.
fn lines_backwards(path: &Path, mut each: impl FnMut(&[u8]) -> bool) -> std::io::Result<()> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut end = f.metadata()?.len();
    // Bytes after the last newline seen so far (a line's tail), carried
    // into the next (earlier) block.
    let mut carry: Vec<u8> = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0u8; (end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block)?;
        block.extend_from_slice(&carry);
        let mut cut = block.len();
        while let Some(nl) = block[..cut].iter().rposition(|&b| b == b'\n') {
            let line = &block[nl + 1..cut];
            if !line.is_empty() && !each(line) {
                return Ok(());
            }
            cut = nl;
        }
        carry = block[..cut].to_vec();
        end = start;
    }
    if !carry.is_empty() {
        each(&carry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(who: &str, tenant: &str) -> (String, Vec<String>) {
        (who.to_string(), vec![tenant.to_string()])
    }

    #[test]
    fn reads_the_newest_entries_across_blocks_and_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::new(Some(&dir.path().join("tenantgate.toml")));
        audit.set_max_bytes(200 * 1024);
        let long = "x".repeat(3000);
        for i in 0..200 {
            let (who, tenants) = entry(&format!("w{i}"), if i % 2 == 0 { "even" } else { "odd" });
            audit.record(&Entry {
                who: &who,
                request: &long,
                tenants: &tenants,
                status: None,
                generation: Some(i),
                diff: &[],
                problem: None,
            });
        }
        let log = dir.path().join("state/admin/audit.jsonl");
        assert!(rotated(&log).exists(), "rotated");
        assert!(std::fs::metadata(&log).expect("log").len() <= 200 * 1024);
        let last = audit.read(None, 3).expect("read");
        let gens: Vec<u64> = last.iter().filter_map(|v| v["generation"].as_u64()).collect();
        assert_eq!(gens, [197, 198, 199]);
        let odd = audit.read(Some("odd"), 1000).expect("read");
        assert!(odd.len() > 10 && odd.iter().all(|v| v["tenants"][0] == "odd"));
        assert_eq!(odd.last().and_then(|v| v["generation"].as_u64()), Some(199));
        let gens: Vec<u64> = odd.iter().filter_map(|v| v["generation"].as_u64()).collect();
        assert!(gens.windows(2).all(|w| w[0] + 2 == w[1]), "oldest first, none skipped");
    }
}
