//! A bounded log of the gateway's recent refusals of routed requests (429,
//! 503, 421, 401/403, …), for a tenant's page in the console.
//!
//! Memory is fixed whatever the tenant count: [`SHARDS`] rings (by the
//! tenant id's hash) of [`PER_SHARD`] entries, each entry a fixed-size
//! record (the path cut to [`PATH_MAX`] bytes, no allocation). One tenant
//! keeps at most [`PER_TENANT`] entries of its ring: a tenant refused in a
//! flood replaces its own oldest entries, not its neighbours'. Pushing
//! scans one ring (a pointer compare per entry), only for refused requests.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Rings, chosen by the tenant id's hash.
pub const SHARDS: usize = 8;
/// Entries one ring keeps.
pub const PER_SHARD: usize = 256;
/// Entries one tenant keeps in its ring, at most.
pub const PER_TENANT: usize = 32;
/// Bytes of the path kept (cut at a character boundary; the query is never kept).
pub const PATH_MAX: usize = 96;

/// One refusal as the policy reports it.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    pub tenant: &'a Arc<str>,
    pub status: u16,
    /// One of `top::REFUSAL_REASONS`, or `no_upstream`.
    pub reason: &'static str,
    /// The limit that refused (`rate`, `day`, …), for `limit` refusals.
    pub detail: Option<&'static str>,
    pub method: &'a str,
    pub path: &'a str,
}

struct Entry {
    tenant: Arc<str>,
    seq: u64,
    at_ms: u64,
    status: u16,
    reason: &'static str,
    detail: Option<&'static str>,
    method: &'static str,
    path_len: u8,
    path: [u8; PATH_MAX],
}

#[derive(Default)]
struct Ring {
    entries: Vec<Entry>,
    /// The next slot to overwrite once the ring is full.
    next: usize,
}

/// The log; see the module's documentation.
pub struct RefusalLog {
    hasher: ahash::RandomState,
    rings: Box<[Mutex<Ring>]>,
    seq: std::sync::atomic::AtomicU64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            hasher: ahash::RandomState::with_seeds(0x51a7, 0x0e11, 0x4c0f, 0x9b2d),
            rings: (0..SHARDS).map(|_| Mutex::new(Ring::default())).collect(),
            seq: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// One logged refusal, as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RefusalView {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub status: u16,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    pub method: &'static str,
    pub path: String,
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

fn lock(m: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RefusalLog {
    fn ring(&self, tenant: &str) -> &Mutex<Ring> {
        &self.rings[(self.hasher.hash_one(tenant) as usize) % SHARDS]
    }

    /// Logs one refusal.
    pub fn push(&self, r: &Refused<'_>) {
        let path = r.path.split('?').next().unwrap_or_default();
        let mut cut = path.len().min(PATH_MAX);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut bytes = [0u8; PATH_MAX];
        bytes[..cut].copy_from_slice(&path.as_bytes()[..cut]);
        let entry = Entry {
            tenant: r.tenant.clone(),
            seq: self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            status: r.status,
            reason: r.reason,
            detail: r.detail,
            method: METHODS.iter().find(|m| **m == r.method).copied().unwrap_or("OTHER"),
            path_len: cut as u8,
            path: bytes,
        };
        let mut ring = lock(self.ring(r.tenant));
        // The tenant's own oldest entry, when it holds its share already.
        let mut own = 0;
        let mut oldest: Option<(u64, usize)> = None;
        for (i, e) in ring.entries.iter().enumerate() {
            if Arc::ptr_eq(&e.tenant, r.tenant) || *e.tenant == **r.tenant {
                own += 1;
                if oldest.is_none_or(|(s, _)| e.seq < s) {
                    oldest = Some((e.seq, i));
                }
            }
        }
        match oldest {
            Some((_, i)) if own >= PER_TENANT => ring.entries[i] = entry,
            _ if ring.entries.len() < PER_SHARD => ring.entries.push(entry),
            _ => {
                let i = ring.next;
                ring.entries[i] = entry;
                ring.next = (i + 1) % PER_SHARD;
            }
        }
    }

    /// The tenant's logged refusals, newest first, at most `limit`.
    pub fn of(&self, tenant: &str, limit: usize) -> Vec<RefusalView> {
        let ring = lock(self.ring(tenant));
        let mut mine: Vec<&Entry> = ring.entries.iter().filter(|e| &*e.tenant == tenant).collect();
        mine.sort_by_key(|e| std::cmp::Reverse(e.seq));
        mine.iter()
            .take(limit)
            .map(|e| RefusalView {
                at_ms: e.at_ms,
                status: e.status,
                reason: e.reason,
                detail: e.detail,
                method: e.method,
                path: String::from_utf8_lossy(&e.path[..usize::from(e.path_len)]).into_owned(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(log: &RefusalLog, id: &Arc<str>, path: &str) {
        log.push(&Refused {
            tenant: id,
            status: 429,
            reason: "limit",
            detail: Some("rate"),
            method: "GET",
            path,
        });
    }

    #[test]
    fn a_flooded_tenant_keeps_its_share_and_leaves_its_neighbours_alone() {
        let log = RefusalLog::default();
        let quiet: Vec<Arc<str>> = (0..40).map(|i| Arc::from(format!("q{i}"))).collect();
        for q in &quiet {
            refuse(&log, q, "/once?token=secret");
        }
        let loud: Arc<str> = Arc::from("loud");
        for i in 0..100_000 {
            refuse(&log, &loud, &format!("/x/{i}"));
        }
        let rows = log.of("loud", 1000);
        assert_eq!(rows.len(), PER_TENANT);
        assert_eq!(rows[0].path, "/x/99999", "newest first");
        assert_eq!(rows[PER_TENANT - 1].path, format!("/x/{}", 100_000 - PER_TENANT));
        for q in &quiet {
            let mine = log.of(q, 10);
            assert_eq!(mine.len(), 1, "{q} lost its refusal to the flood");
            assert_eq!(mine[0].path, "/once", "the query is never kept");
            assert_eq!(
                (mine[0].status, mine[0].reason, mine[0].detail),
                (429, "limit", Some("rate"))
            );
        }
        let total: usize = log.rings.iter().map(|r| lock(r).entries.len()).sum();
        assert!(total <= SHARDS * PER_SHARD);
    }

    #[test]
    fn many_tenants_stay_within_the_rings_and_long_paths_are_cut_on_a_character() {
        let log = RefusalLog::default();
        let long = format!("/{}", "é".repeat(100));
        for i in 0..10_000 {
            let id: Arc<str> = Arc::from(format!("t{i}"));
            refuse(&log, &id, &long);
        }
        let total: usize = log.rings.iter().map(|r| lock(r).entries.len()).sum();
        assert_eq!(total, SHARDS * PER_SHARD);
        let last = log.of("t9999", 5);
        assert_eq!(last.len(), 1);
        assert!(last[0].path.len() <= PATH_MAX && last[0].path.starts_with("/é"));
        assert!(!last[0].path.contains('\u{fffd}'));
        assert!(log.of("t0", 5).is_empty(), "the oldest tenants' entries were replaced");
    }
}
