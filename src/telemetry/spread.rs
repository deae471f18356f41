//! A bounded sketch of how many tenants one token subject (or one client
//! address) reaches within an hour: a fixed table of slots, keyed by a hash
//! of the subject, each remembering up to [`MAX_TRACKED`] tenant hashes of
//! the current hour. Memory never grows with traffic; a collision evicts
//! (the sketch may miss a spread, never invent one from a single subject).

use std::hash::Hash;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Slots in the table.
const SLOTS: usize = 4096;
/// Tenants remembered per slot: limits above this count as this.
pub const MAX_TRACKED: usize = 16;

#[derive(Default, Clone, Copy)]
struct Slot {
    key: u64,
    hour: u64,
    tenants: [u64; MAX_TRACKED],
    n: u8,
    reported: bool,
}

/// The sketch: see the module doc.
pub struct Spread {
    slots: Box<[Mutex<Slot>]>,
    hasher: ahash::RandomState,
}

impl Default for Spread {
    fn default() -> Self {
        Spread {
            slots: (0..SLOTS).map(|_| Mutex::new(Slot::default())).collect(),
            hasher: ahash::RandomState::new(),
        }
    }
}

impl Spread {
    /// Records that `who` reached `tenant`. True exactly once per hour per
    /// `who`: when it is first seen on more than `limit` tenants.
    pub fn observe(&self, who: impl Hash, tenant: &str, limit: usize) -> bool {
        let key = self.hasher.hash_one(who) | 1;
        let t = self.hasher.hash_one(tenant);
        let hour = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 3600);
        let Ok(mut slot) = self.slots[(key as usize) % SLOTS].lock() else {
            return false;
        };
        if slot.key != key || slot.hour != hour {
            *slot = Slot {
                key,
                hour,
                ..Slot::default()
            };
        }
        let n = slot.n as usize;
        if !slot.tenants[..n].contains(&t) && n < MAX_TRACKED {
            slot.tenants[n] = t;
            slot.n += 1;
        }
        let over = slot.n as usize > limit.min(MAX_TRACKED - 1);
        if over && !slot.reported {
            slot.reported = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_on_too_many_tenants_is_reported_once() {
        let s = Spread::default();
        assert!(!s.observe("alice", "a", 2));
        assert!(!s.observe("alice", "a", 2));
        assert!(!s.observe("alice", "b", 2));
        assert!(s.observe("alice", "c", 2));
        assert!(!s.observe("alice", "d", 2));
        assert!(!s.observe("bob", "a", 2));
    }
}
