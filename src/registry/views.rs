//! Views: the state of one generation (its snapshot and the texts it was
//! compiled from, together), and the few older ones kept while a client
//! walks the pages of a listing that started on them, so that every page of
//! one walk comes from the same generation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Registry, Snapshot};
use crate::config::Texts;

/// How many generations older than the live one are kept for page walks;
/// walking a listing of an older one answers 410 Gone.
pub const KEPT_VIEWS: usize = 4;

/// How long a kept generation stays after the last page served from it.
pub const KEPT_FOR: Duration = Duration::from_secs(300);

/// One generation of live state, snapshot and texts together.
#[derive(Debug)]
pub struct View {
    pub snapshot: Arc<Snapshot>,
    pub texts: Arc<Texts>,
}

impl View {
    pub fn generation(&self) -> u64 {
        self.snapshot.generation
    }
}

/// Generations kept for page walks, with when each was last used.
#[derive(Debug, Default)]
pub(super) struct Kept(Mutex<Vec<(Arc<View>, Instant)>>);

impl Kept {
    /// Drops views unused for [`KEPT_FOR`], and those older than `live`
    /// beyond the [`KEPT_VIEWS`] most recently used.
    fn prune(list: &mut Vec<(Arc<View>, Instant)>, live: u64, now: Instant) {
        list.retain(|(_, used)| now.duration_since(*used) < KEPT_FOR);
        list.sort_by_key(|(_, used)| std::cmp::Reverse(*used));
        let mut older = 0;
        list.retain(|(v, _)| {
            if v.generation() == live {
                return true;
            }
            older += 1;
            older <= KEPT_VIEWS
        });
    }
}

impl Registry {
    /// The live generation's snapshot and texts, consistent with each other.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Tells this registry instance apart from one before a restart (whose
    /// generations count from 1 again).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Keeps `view` for later pages of a walk (for [`KEPT_FOR`] after this
    /// call, while it is among the [`KEPT_VIEWS`] most recently used older
    /// generations).
    pub fn keep_view(&self, view: &Arc<View>) {
        let now = Instant::now();
        let mut list = self.kept.0.lock().unwrap_or_else(|p| p.into_inner());
        match list.iter_mut().find(|(v, _)| v.generation() == view.generation()) {
            Some((_, used)) => *used = now,
            None => list.push((view.clone(), now)),
        }
        Kept::prune(&mut list, self.view.load().generation(), now);
    }

    /// The view of `generation`, if it is live or still kept.
    pub fn kept_view(&self, generation: u64) -> Option<Arc<View>> {
        let live = self.view();
        if live.generation() == generation {
            return Some(live);
        }
        let mut list = self.kept.0.lock().unwrap_or_else(|p| p.into_inner());
        Kept::prune(&mut list, live.generation(), Instant::now());
        list.iter()
            .find(|(v, _)| v.generation() == generation)
            .map(|(v, _)| v.clone())
    }

    /// Drops kept views that expired (after a new generation went live).
    pub(super) fn prune_views(&self) {
        let mut list = self.kept.0.lock().unwrap_or_else(|p| p.into_inner());
        Kept::prune(&mut list, self.view.load().generation(), Instant::now());
    }
}
