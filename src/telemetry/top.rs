//! The tenants that carry the load now: bounded heavy-hitter sketches
//! (space-saving, fixed capacity K) fed by `Policy::record`, plus the
//! platform-wide counters and the in-memory time series the console charts.
//!
//! Memory and per-request cost are fixed whatever the tenant count: each
//! of [`SHARDS`] shards (chosen by the tenant id's hash, so a tenant always
//! lands in the same one) holds three sketches of at most K entries (by
//! requests, by 5xx answers, by 429 refusals) for the current and the
//! previous window of [`WINDOW`]. A tracked tenant's count is an upper bound
//! of its true count, over by at most its `error`; any tenant with more than
//! 1/K of its shard's requests is tracked.
//!
//! It never formats a label, allocates or touches a reference count on the
//! request path (a tenant's id is copied into its slot; only an id longer
//! than a valid tenant id is shared by `Arc` instead), and a request with a
//! tenant takes one lock and no other atomic operation: the platform
//! counters of those requests are kept per shard, under its lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Independent shards, so requests of different tenants rarely contend.
pub const SHARDS: usize = 8;
/// Length of one counting window; rates cover the previous window and the
/// current one so far.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Points the time series keeps: one per [`WINDOW`], one hour.
pub const SERIES_POINTS: usize = 360;
/// Default K (`[telemetry] top_tenants`).
pub const DEFAULT_K: usize = crate::config::DEFAULT_TOP_TENANTS;
/// Requests a tenant needs in the counted span to be ranked by p99.
const P99_MIN_REQUESTS: u64 = 20;

/// Latency buckets: two per power of two of microseconds, from 1 µs to
/// about two minutes (the last bucket takes everything above).
const BUCKETS: usize = 54;

/// The bucket of a duration.
fn bucket(d: Duration) -> usize {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    if us < 2 {
        return 0;
    }
    let log = 63 - us.leading_zeros() as usize;
    let half = ((us >> (log - 1)) & 1) as usize;
    (2 * log + half - 1).min(BUCKETS - 1)
}

/// Upper bound of a bucket, in seconds.
fn bucket_upper(i: usize) -> f64 {
    let log = i.div_ceil(2);
    let half = (i + 1) % 2;
    let base = (1u64 << log) as f64;
    (base + base * 0.5 * (half as f64 + 1.0)) / 1e6
}

/// The `q` quantile (0..1) of bucket counts, in seconds; 0 without data.
fn quantile(counts: impl Iterator<Item = u64> + Clone, q: f64) -> f64 {
    let total: u64 = counts.clone().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.enumerate() {
        seen += c;
        if seen >= rank {
            return bucket_upper(i);
        }
    }
    bucket_upper(BUCKETS - 1)
}

/// What a slot of the request sketch carries besides its count.
#[derive(Clone)]
struct Detail {
    errors: u64,
    limited: u64,
    latency: [u32; BUCKETS],
}

impl Default for Detail {
    fn default() -> Self {
        Detail {
            errors: 0,
            limited: 0,
            latency: [0; BUCKETS],
        }
    }
}

/// Names up to this long (every valid tenant id) are copied into their
/// slot.
const INLINE_NAME: usize = 63;

/// A tracked key's name: a copy of it when it fits, so that a new key
/// taking an evicted slot touches neither its own nor the old key's
/// reference count (nor the old key's memory); a shared reference
/// otherwise.
enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Shared(Arc<str>),
}

impl Name {
    fn new(id: &Arc<str>) -> Name {
        let mut name = Name::Inline {
            len: 0,
            bytes: [0; INLINE_NAME],
        };
        name.set(id);
        name
    }

    /// Now names `id`.
    fn set(&mut self, id: &Arc<str>) {
        let src = id.as_bytes();
        match self {
            Name::Inline { len, bytes } if src.len() <= INLINE_NAME => {
                if let Some(dst) = bytes.get_mut(..src.len()) {
                    dst.copy_from_slice(src);
                    *len = src.len() as u8;
                }
            }
            _ if src.len() <= INLINE_NAME => *self = Name::new(id),
            _ => *self = Name::Shared(id.clone()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Name::Shared(id) => id.as_bytes(),
        }
    }

    fn is(&self, id: &str) -> bool {
        self.as_bytes() == id.as_bytes()
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        // Copied from a `str` whole, so always UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// One tracked key of a sketch. Its count lives in the sketch's sorted
/// `counts`, at position `pos[slot]`.
struct Slot<P> {
    id: Name,
    /// `key_hash` of `id`.
    hash: u64,
    /// How much of the count may belong to the keys this slot evicted.
    error: u64,
    extra: P,
}

/// The hash of a key as the sketches use it (never 0: 0 marks an empty
/// entry of [`Index`]).
fn key_hash(hasher: &ahash::RandomState, id: &str) -> u64 {
    hasher.hash_one(id) | 1
}

/// Key hash to slot: open addressing with linear probing over at least
/// twice as many entries as slots, deletion by backward shift (no
/// tombstones). Two keys of the same hash get two entries; a lookup tells
/// them apart by the key itself.
struct Index {
    /// Key hashes, 0 where empty.
    hashes: Box<[u64]>,
    slots: Box<[u32]>,
    mask: usize,
}

impl Index {
    fn new(cap: usize) -> Index {
        let n = (cap * 2).max(4).next_power_of_two();
        Index {
            hashes: vec![0; n].into_boxed_slice(),
            slots: vec![0; n].into_boxed_slice(),
            mask: n - 1,
        }
    }

    fn clear(&mut self) {
        self.hashes.fill(0);
    }

    /// The first entry at or after `hash`'s home for which `found` holds of
    /// its slot (`Ok`), or the empty entry that ends the run (`Err`; at
    /// most half the entries are taken, so there is one).
    fn probe(&self, hash: u64, mut found: impl FnMut(u32) -> bool) -> Result<usize, usize> {
        let mut i = hash as usize & self.mask;
        for _ in 0..=self.mask {
            match self.hashes.get(i) {
                Some(&h) if h == hash && self.slots.get(i).is_some_and(|s| found(*s)) => return Ok(i),
                Some(0) | None => return Err(i),
                Some(_) => i = (i + 1) & self.mask,
            }
        }
        Err(i)
    }

    fn insert_at(&mut self, i: usize, hash: u64, slot: u32) {
        if let (Some(h), Some(s)) = (self.hashes.get_mut(i), self.slots.get_mut(i)) {
            *h = hash;
            *s = slot;
        }
    }

    /// Empties entry `i`, moving later entries of its run back so that
    /// every entry stays reachable from its home.
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.mask;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let h = self.hashes[j];
            if h == 0 {
                break;
            }
            // The entry at j may fill the hole at i unless its home lies
            // cyclically in (i, j].
            let home = h as usize & mask;
            if (j.wrapping_sub(home) & mask) < (j.wrapping_sub(i) & mask) {
                continue;
            }
            self.hashes[i] = h;
            self.slots[i] = self.slots[j];
            i = j;
        }
        self.hashes[i] = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.hashes.iter().filter(|h| **h != 0).count()
    }
}

/// A space-saving sketch of at most `cap` keys. The counts are kept in
/// ascending order (`counts[p]` is the count of slot `order[p]`, and
/// `pos` is the inverse of `order`), so the minimum is at position 0 and
/// adding one to a count swaps its slot with the last one of equal count:
/// O(1) when the count is unique, a binary search over the counts (one
/// small contiguous array) otherwise, never a walk over the slots.
struct SpaceSaving<P> {
    cap: usize,
    index: Index,
    slots: Vec<Slot<P>>,
    counts: Vec<u64>,
    order: Vec<u32>,
    pos: Vec<u32>,
}

impl<P: Default> SpaceSaving<P> {
    fn new(cap: usize) -> Self {
        SpaceSaving {
            cap,
            index: Index::new(cap),
            slots: Vec::with_capacity(cap),
            counts: Vec::with_capacity(cap),
            order: Vec::with_capacity(cap),
            pos: Vec::with_capacity(cap),
        }
    }

    fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.counts.clear();
        self.order.clear();
        self.pos.clear();
    }

    /// The tracked keys with their counts, in no particular order.
    fn entries(&self) -> impl Iterator<Item = (&Slot<P>, u64)> {
        self.slots
            .iter()
            .zip(self.pos.iter())
            .map(|(s, p)| (s, self.counts.get(*p as usize).copied().unwrap_or(0)))
    }

    /// Counts one for `id`, whose [`key_hash`] is `hash`; the slot's
    /// payload, or `None` with a capacity of zero.
    fn hit(&mut self, id: &Arc<str>, hash: u64) -> Option<&mut P> {
        let slots = &self.slots;
        let found = self
            .index
            .probe(hash, |s| slots.get(s as usize).is_some_and(|slot| slot.id.is(id)));
        let s = match found {
            Ok(i) => *self.index.slots.get(i)?,
            Err(empty) if self.slots.len() < self.cap => {
                // Filling up (K times a window): the new count of 1 goes
                // first, before every count (all at least 1).
                let s = self.slots.len() as u32;
                self.slots.push(Slot {
                    id: Name::new(id),
                    hash,
                    error: 0,
                    extra: P::default(),
                });
                self.counts.insert(0, 1);
                self.order.insert(0, s);
                for p in &mut self.pos {
                    *p += 1;
                }
                self.pos.push(0);
                self.index.insert_at(empty, hash, s);
                return self.slots.get_mut(s as usize).map(|x| &mut x.extra);
            }
            Err(_) => {
                // Evict the minimum (position 0).
                let s = *self.order.first()?;
                let old = self.slots.get_mut(s as usize)?;
                let old_hash = old.hash;
                if let Ok(i) = self.index.probe(old_hash, |x| x == s) {
                    self.index.remove_at(i);
                }
                // The run may have moved: probe again for the new key's place.
                if let Err(empty) = self.index.probe(hash, |_| false) {
                    self.index.insert_at(empty, hash, s);
                }
                let old = self.slots.get_mut(s as usize)?;
                old.id.set(id);
                old.hash = hash;
                old.error = *self.counts.first()?;
                old.extra = P::default();
                s
            }
        };
        self.bump(s);
        self.slots.get_mut(s as usize).map(|x| &mut x.extra)
    }

    /// Adds one to slot `s`'s count, keeping the counts sorted.
    fn bump(&mut self, s: u32) {
        let Some(&p) = self.pos.get(s as usize) else { return };
        let p = p as usize;
        let Some(&c) = self.counts.get(p) else { return };
        // The last position with the same count.
        let q = match self.counts.get(p + 1) {
            Some(&next) if next == c => p + self.counts[p..].partition_point(|x| *x == c) - 1,
            _ => p,
        };
        if q != p {
            let t = self.order[q];
            self.order.swap(p, q);
            self.pos[t as usize] = p as u32;
            self.pos[s as usize] = q as u32;
        }
        self.counts[q] = c + 1;
    }

    #[cfg(test)]
    fn contains(&self, id: &Arc<str>, hash: u64) -> bool {
        self.index
            .probe(hash, |s| self.slots.get(s as usize).is_some_and(|x| x.id.is(id)))
            .is_ok()
    }
}

/// The sketches of one window.
struct Window {
    requests: SpaceSaving<Detail>,
    errors: SpaceSaving<()>,
    limited: SpaceSaving<()>,
}

impl Window {
    fn new(cap: usize) -> Self {
        Window {
            requests: SpaceSaving::new(cap),
            errors: SpaceSaving::new(cap),
            limited: SpaceSaving::new(cap),
        }
    }

    fn clear(&mut self) {
        self.requests.clear();
        self.errors.clear();
        self.limited.clear();
    }
}

struct Shard {
    /// The window `cur` counts.
    epoch: u64,
    cur: Window,
    prev: Window,
    /// The platform counters of this shard's tenants' requests, counted
    /// under the lock the sketches take anyway.
    counts: Counts,
}

impl Shard {
    /// Moves to `epoch`'s window: the current one becomes the previous one
    /// (or both are emptied after a silent window).
    fn roll(&mut self, epoch: u64) {
        if epoch <= self.epoch {
            return;
        }
        if epoch == self.epoch + 1 {
            std::mem::swap(&mut self.cur, &mut self.prev);
        } else {
            self.prev.clear();
        }
        self.cur.clear();
        self.epoch = epoch;
    }
}

/// Why a request was refused, for the overview and the series: the
/// gateway's own rejections (`Rejection::as_str`, in `Rejection::ALL`
/// order), `limit` (its own 429) and `identity` (its own 401 or 403).
pub const REFUSAL_REASONS: [&str; 14] = [
    "unknown_host",
    "bad_host",
    "sni_mismatch",
    "unknown_challenge",
    "bad_request",
    "too_large",
    "method",
    "coding",
    "expectation",
    "other_region",
    "feature_off",
    "maintenance",
    "limit",
    "identity",
];

/// The index in [`REFUSAL_REASONS`] of a reason.
pub fn refusal_index(reason: &str) -> Option<usize> {
    REFUSAL_REASONS.iter().position(|r| *r == reason)
}

/// Platform-wide counters of the requests without a tenant, since start
/// (each shard counts its tenants' requests in its own [`Counts`]).
struct Totals {
    requests: AtomicU64,
    errors: AtomicU64,
    refusals: [AtomicU64; REFUSAL_REASONS.len()],
    latency: [AtomicU64; BUCKETS],
}

/// Platform-wide counters since start.
#[derive(Clone)]
struct Counts {
    requests: u64,
    errors: u64,
    refusals: [u64; REFUSAL_REASONS.len()],
    latency: [u64; BUCKETS],
}

impl Counts {
    const ZERO: Counts = Counts {
        requests: 0,
        errors: 0,
        refusals: [0; REFUSAL_REASONS.len()],
        latency: [0; BUCKETS],
    };

    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.refusals.iter_mut().zip(other.refusals.iter()) {
            *a += b;
        }
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            *a += b;
        }
    }
}

/// One finished request, as the sketch counts it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// The tenant, when one was resolved.
    pub tenant: Option<&'a Arc<str>>,
    pub status: u16,
    /// Index in [`REFUSAL_REASONS`] when the gateway refused the request.
    pub refusal: Option<usize>,
    /// When the request started (chooses the window).
    pub start: Instant,
    pub elapsed: Duration,
}

/// A tenant's counts over both windows of its shard, while ranking.
struct Merged {
    requests: u64,
    errors: u64,
    limited: u64,
    /// The count of the sketch ranked by (5xx or 429).
    ranked: u64,
    latency: [u32; BUCKETS],
    /// Space-saving error of the ranked count.
    bound: u64,
}

impl Default for Merged {
    fn default() -> Self {
        Merged {
            requests: 0,
            errors: 0,
            limited: 0,
            ranked: 0,
            latency: [0; BUCKETS],
            bound: 0,
        }
    }
}

/// One tenant in a ranking.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ranked {
    pub tenant: String,
    /// Requests per second over the counted span (an upper bound).
    pub rps: f64,
    /// 5xx answers per second.
    pub errors_per_sec: f64,
    /// 429 refusals per second.
    pub limited_per_sec: f64,
    /// p99 latency in seconds (0 when the tenant is not tracked by requests).
    pub p99: f64,
    /// The ranked value may overcount by up to this many events (space-saving error).
    pub error_bound: u64,
}

/// What to rank tenants by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankBy {
    Rps,
    Errors,
    Limited,
    P99,
}

impl RankBy {
    /// `rps`, `5xx`, `429` or `p99`.
    pub fn parse(s: &str) -> Option<RankBy> {
        match s {
            "rps" => Some(RankBy::Rps),
            "5xx" => Some(RankBy::Errors),
            "429" => Some(RankBy::Limited),
            "p99" => Some(RankBy::P99),
            _ => None,
        }
    }
}

/// One point of the time series (one [`WINDOW`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Unix seconds at the end of the window.
    pub t: u64,
    pub rps: f64,
    pub errors_per_sec: f64,
    /// Refusals per second, by reason (only reasons seen in the window).
    pub refusals_per_sec: Vec<(String, f64)>,
    pub p50: f64,
    pub p99: f64,
}

/// The counters at the last sample, to compute the next point's deltas.
struct Sampled {
    at: Instant,
    requests: u64,
    errors: u64,
    refusals: [u64; REFUSAL_REASONS.len()],
    latency: [u64; BUCKETS],
    points: VecDeque<Point>,
}

/// The heavy-hitter sketches, the totals and the series.
pub struct Top {
    origin: Instant,
    hasher: ahash::RandomState,
    shards: Box<[Mutex<Shard>]>,
    totals: Totals,
    sampled: Mutex<Sampled>,
}

impl Default for Top {
    fn default() -> Self {
        Top::new(DEFAULT_K)
    }
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Top {
    /// Sketches of capacity `k` per shard (0 turns the rankings off; the
    /// totals and series still count).
    pub fn new(k: usize) -> Top {
        // Fixed keys: shard choice and index hashing need no randomness
        // against floods, since the keys are tenant ids from the config.
        let hasher = ahash::RandomState::with_seeds(0x7e4a, 0x9a7e, 0x3c1d, 0x51f0);
        let origin = Instant::now();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    epoch: 0,
                    cur: Window::new(k),
                    prev: Window::new(k),
                    counts: Counts::ZERO,
                })
            })
            .collect();
        Top {
            origin,
            hasher,
            shards,
            totals: Totals {
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                refusals: zeros(),
                latency: zeros(),
            },
            sampled: Mutex::new(Sampled {
                at: origin,
                requests: 0,
                errors: 0,
                refusals: [0; REFUSAL_REASONS.len()],
                latency: [0; BUCKETS],
                points: VecDeque::with_capacity(SERIES_POINTS),
            }),
        }
    }

    /// Re-sizes the sketches to `k` (at start; the rankings start over).
    pub fn set_capacity(&self, k: usize) {
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            s.cur = Window::new(k);
            s.prev = Window::new(k);
        }
    }

    fn epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_secs() / WINDOW.as_secs()
    }

    /// Counts one finished request.
    pub fn record(&self, s: &Sample<'_>) {
        let error = s.status >= 500 && s.refusal.is_none();
        let b = bucket(s.elapsed);
        let Some(id) = s.tenant else {
            let t = &self.totals;
            t.requests.fetch_add(1, Ordering::Relaxed);
            if error {
                t.errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(r) = s.refusal.and_then(|r| t.refusals.get(r)) {
                r.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(l) = t.latency.get(b) {
                l.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let limited = s.status == 429;
        // One hash: its high half picks the shard, its low bits the
        // index entry.
        let hash = key_hash(&self.hasher, id);
        let mut sh = lock(&self.shards[(hash >> 32) as usize % SHARDS]);
        let c = &mut sh.counts;
        c.requests += 1;
        c.errors += u64::from(error);
        if let Some(r) = s.refusal.and_then(|r| c.refusals.get_mut(r)) {
            *r += 1;
        }
        if let Some(l) = c.latency.get_mut(b) {
            *l += 1;
        }
        sh.roll(self.epoch(s.start));
        if let Some(d) = sh.cur.requests.hit(id, hash) {
            if let Some(c) = d.latency.get_mut(b) {
                *c = c.saturating_add(1);
            }
            d.errors += u64::from(error);
            d.limited += u64::from(limited);
        }
        if error {
            sh.cur.errors.hit(id, hash);
        }
        if limited {
            sh.cur.limited.hit(id, hash);
        }
    }

    /// The top `n` tenants by `by`, over the previous window and the
    /// current one so far.
    pub fn rank(&self, by: RankBy, n: usize) -> Vec<Ranked> {
        self.rank_at(by, n, Instant::now())
    }

    /// [`Top::rank`] as of `now`.
    fn rank_at(&self, by: RankBy, n: usize, now: Instant) -> Vec<Ranked> {
        let epoch = self.epoch(now);
        let since_window = now.saturating_duration_since(self.origin).as_secs_f64() % WINDOW.as_secs_f64();
        let span = if epoch == 0 {
            since_window
        } else {
            WINDOW.as_secs_f64() + since_window
        }
        .max(1.0);
        let mut out: Vec<Ranked> = Vec::new();
        for shard in self.shards.iter() {
            let mut sh = lock(shard);
            sh.roll(epoch);
            let mut merged: HashMap<&str, Merged> = HashMap::new();
            for w in [&sh.prev, &sh.cur] {
                for (slot, count) in w.requests.entries() {
                    let e = merged.entry(&slot.id).or_default();
                    e.requests += count;
                    e.errors += slot.extra.errors;
                    e.limited += slot.extra.limited;
                    for (a, b) in e.latency.iter_mut().zip(slot.extra.latency.iter()) {
                        *a = a.saturating_add(*b);
                    }
                    if by == RankBy::Rps {
                        e.bound += slot.error;
                    }
                }
                let extra = match by {
                    RankBy::Errors => Some(&w.errors),
                    RankBy::Limited => Some(&w.limited),
                    _ => None,
                };
                for (slot, count) in extra.map(|s| s.entries()).into_iter().flatten() {
                    let e = merged.entry(&slot.id).or_default();
                    e.ranked += count;
                    e.bound += slot.error;
                }
            }
            for (id, m) in merged {
                let (req, err, lim, ranked, lat, bound) =
                    (m.requests, m.errors, m.limited, m.ranked, m.latency, m.bound);
                let (errors, limited) = match by {
                    RankBy::Errors => (ranked.max(err), lim),
                    RankBy::Limited => (err, ranked.max(lim)),
                    _ => (err, lim),
                };
                let p99 = if req >= P99_MIN_REQUESTS || by != RankBy::P99 {
                    quantile(lat.iter().map(|c| u64::from(*c)), 0.99)
                } else {
                    0.0
                };
                out.push(Ranked {
                    tenant: id.to_string(),
                    rps: req as f64 / span,
                    errors_per_sec: errors as f64 / span,
                    limited_per_sec: limited as f64 / span,
                    p99,
                    error_bound: bound,
                });
            }
        }
        let key = |r: &Ranked| match by {
            RankBy::Rps => r.rps,
            RankBy::Errors => r.errors_per_sec,
            RankBy::Limited => r.limited_per_sec,
            RankBy::P99 => r.p99,
        };
        out.retain(|r| key(r) > 0.0);
        out.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.tenant.cmp(&b.tenant)));
        out.truncate(n);
        out
    }

    /// Closes a point of the series when a window has passed since the
    /// last one (called every second by the admin listener's task).
    pub fn sample(&self) {
        let now = Instant::now();
        let mut s = lock(&self.sampled);
        let span = now.saturating_duration_since(s.at);
        if span < WINDOW {
            return;
        }
        let Counts {
            requests,
            errors,
            refusals,
            latency,
        } = self.counts();
        let secs = span.as_secs_f64();
        let delta: Vec<u64> = latency
            .iter()
            .zip(s.latency.iter())
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let point = Point {
            t: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            rps: requests.saturating_sub(s.requests) as f64 / secs,
            errors_per_sec: errors.saturating_sub(s.errors) as f64 / secs,
            refusals_per_sec: REFUSAL_REASONS
                .iter()
                .zip(refusals.iter().zip(s.refusals.iter()))
                .filter(|(_, (a, b))| a > b)
                .map(|(r, (a, b))| (r.to_string(), (a - b) as f64 / secs))
                .collect(),
            p50: quantile(delta.iter().copied(), 0.5),
            p99: quantile(delta.iter().copied(), 0.99),
        };
        if s.points.len() == SERIES_POINTS {
            s.points.pop_front();
        }
        s.points.push_back(point);
        s.at = now;
        s.requests = requests;
        s.errors = errors;
        s.refusals = refusals;
        s.latency = latency;
    }

    /// Time since the sketches were made (the process start).
    pub fn uptime(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The series, oldest first.
    pub fn series(&self) -> Vec<Point> {
        lock(&self.sampled).points.iter().cloned().collect()
    }

    /// Totals since start: requests, 5xx, refusals by reason, p50 and p99
    /// (seconds).
    pub fn totals(&self) -> Overall {
        let c = self.counts();
        Overall {
            requests: c.requests,
            errors: c.errors,
            refusals: REFUSAL_REASONS
                .iter()
                .zip(c.refusals.iter())
                .map(|(r, c)| (r.to_string(), *c))
                .filter(|(_, c)| *c > 0)
                .collect(),
            p50: quantile(c.latency.iter().copied(), 0.5),
            p99: quantile(c.latency.iter().copied(), 0.99),
        }
    }

    /// The platform counters: the requests without a tenant plus every
    /// shard's.
    fn counts(&self) -> Counts {
        let t = &self.totals;
        let mut c = Counts {
            requests: t.requests.load(Ordering::Relaxed),
            errors: t.errors.load(Ordering::Relaxed),
            refusals: std::array::from_fn(|i| t.refusals[i].load(Ordering::Relaxed)),
            latency: std::array::from_fn(|i| t.latency[i].load(Ordering::Relaxed)),
        };
        for shard in self.shards.iter() {
            c.add(&lock(shard).counts);
        }
        c
    }
}

/// Counters since start.
#[derive(Debug, Clone, Serialize)]
pub struct Overall {
    pub requests: u64,
    pub errors: u64,
    pub refusals: Vec<(String, u64)>,
    pub p50: f64,
    pub p99: f64,
}

/// A poisoned lock still holds consistent counts (no invariant spans an
/// unwind), so it is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Exports the rankings as `tenantgate_top_tenant_*` gauges, computed at
/// scrape time: at most K series per metric.
pub struct Collector {
    pub top: Arc<Top>,
    pub k: Arc<std::sync::atomic::AtomicUsize>,
    descs: Vec<prometheus::core::Desc>,
}

/// The exported metrics: name, help.
const EXPORTED: [(&str, &str); 4] = [
    (
        "tenantgate_top_tenant_requests_per_second",
        "Requests per second of the K busiest tenants (space-saving sketch, last 10-20 s; an upper bound).",
    ),
    (
        "tenantgate_top_tenant_5xx_per_second",
        "5xx answers per second of the K tenants with the most 5xx (last 10-20 s).",
    ),
    (
        "tenantgate_top_tenant_429_per_second",
        "429 refusals per second of the K tenants refused most (last 10-20 s).",
    ),
    (
        "tenantgate_top_tenant_p99_seconds",
        "p99 request duration of the K busiest tenants (last 10-20 s; bucket upper bound, within 50 %).",
    ),
];

impl Collector {
    pub fn new(top: Arc<Top>, k: Arc<std::sync::atomic::AtomicUsize>) -> prometheus::Result<Collector> {
        let descs = EXPORTED
            .iter()
            .map(|(name, help)| {
                prometheus::core::Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec!["tenant".into()],
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(Collector { top, k, descs })
    }
}

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let k = self.k.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(EXPORTED.len());
        for ((name, help), by) in EXPORTED
            .iter()
            .zip([RankBy::Rps, RankBy::Errors, RankBy::Limited, RankBy::P99])
        {
            let Ok(vec) = prometheus::GaugeVec::new(prometheus::Opts::new(*name, *help), &["tenant"]) else {
                continue;
            };
            for r in self.top.rank(by, k) {
                let v = match by {
                    RankBy::Rps => r.rps,
                    RankBy::Errors => r.errors_per_sec,
                    RankBy::Limited => r.limited_per_sec,
                    RankBy::P99 => r.p99,
                };
                vec.with_label_values(&[&r.tenant]).set(v);
            }
            out.extend(prometheus::core::Collector::collect(&vec));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic Zipf(s) sampler over `n` keys (inverse CDF on a
    /// xorshift stream).
    struct Zipf {
        cdf: Vec<f64>,
        state: u64,
    }

    impl Zipf {
        fn new(n: usize, s: f64, seed: u64) -> Zipf {
            let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
            let total: f64 = weights.iter().sum();
            let mut acc = 0.0;
            let cdf = weights
                .iter()
                .map(|w| {
                    acc += w / total;
                    acc
                })
                .collect();
            Zipf { cdf, state: seed }
        }

        fn next(&mut self) -> usize {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let u = (self.state >> 11) as f64 / (1u64 << 53) as f64;
            self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
        }
    }

    #[test]
    fn space_saving_bounds_hold_against_exact_counts_under_a_zipf_load() {
        let n_keys = 10_000;
        let k = 64;
        let ids: Vec<Arc<str>> = (0..n_keys).map(|i| Arc::from(format!("t{i}").as_str())).collect();
        let hasher = ahash::RandomState::new();
        let hashes: Vec<u64> = ids.iter().map(|id| key_hash(&hasher, id)).collect();
        let mut ss: SpaceSaving<()> = SpaceSaving::new(k);
        let mut exact = vec![0u64; n_keys];
        let mut zipf = Zipf::new(n_keys, 1.1, 0x9e37_79b9_7f4a_7c15);
        let total = 500_000u64;
        for _ in 0..total {
            let i = zipf.next();
            exact[i] += 1;
            ss.hit(&ids[i], hashes[i]);
        }
        assert_eq!(ss.slots.len(), k, "the sketch never grows past K");
        check_against_exact(&ss, &ids, &hashes, &exact, total, k);
        // The top 10 by estimate are the exact top 10, in order.
        let mut by_est: Vec<(&Slot<()>, u64)> = ss.entries().collect();
        by_est.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
        let mut by_exact: Vec<usize> = (0..n_keys).collect();
        by_exact.sort_by(|a, b| exact[*b].cmp(&exact[*a]));
        let est_top: Vec<String> = by_est.iter().take(10).map(|(s, _)| s.id.to_string()).collect();
        let exact_top: Vec<String> = by_exact.iter().take(10).map(|i| format!("t{i}")).collect();
        assert_eq!(est_top, exact_top);
    }

    /// The space-saving invariants of `ss` after `total` hits counted
    /// exactly in `exact`, and the consistency of its index and order.
    fn check_against_exact(
        ss: &SpaceSaving<()>,
        ids: &[Arc<str>],
        hashes: &[u64],
        exact: &[u64],
        total: u64,
        k: usize,
    ) {
        assert_eq!(ss.index.len(), ss.slots.len(), "one index entry a slot");
        // Every estimate bounds the truth: count - error <= true <= count.
        for (slot, count) in ss.entries() {
            let i: usize = slot.id[1..].parse().unwrap();
            assert_eq!(slot.hash, hashes[i]);
            assert!(count >= exact[i], "{} undercounted", slot.id);
            assert!(count - slot.error <= exact[i], "{} error bound broken", slot.id);
            assert!(ss.contains(&ids[i], hashes[i]), "{} not found by its key", slot.id);
        }
        // Counts sum to the stream length (space-saving conserves mass).
        assert_eq!(ss.entries().map(|(_, c)| c).sum::<u64>(), total);
        // Every key above total/K is tracked; an untracked key is not found.
        for (i, c) in exact.iter().enumerate() {
            let tracked = ss.slots.iter().any(|s| *s.id == *ids[i]);
            assert_eq!(
                ss.contains(&ids[i], hashes[i]),
                tracked,
                "t{i}: index and slots disagree"
            );
            if *c > total / k as u64 {
                assert!(tracked, "heavy key t{i} ({c}) lost");
            }
        }
        // The counts are sorted, and `order` and `pos` are inverses.
        assert!(ss.counts.windows(2).all(|w| w[0] <= w[1]), "counts out of order");
        for (p, s) in ss.order.iter().enumerate() {
            assert_eq!(ss.pos[*s as usize] as usize, p);
        }
    }

    /// Keys that share their hash (forced here: 8 hash values for 2,000
    /// keys) are still told apart, and deletions from the index keep every
    /// entry reachable.
    #[test]
    fn space_saving_tells_apart_keys_of_the_same_hash() {
        let n_keys = 2_000;
        let k = 24;
        let ids: Vec<Arc<str>> = (0..n_keys).map(|i| Arc::from(format!("t{i}").as_str())).collect();
        let hashes: Vec<u64> = (0..n_keys as u64).map(|i| ((i % 8) << 1) | 1).collect();
        let mut ss: SpaceSaving<()> = SpaceSaving::new(k);
        let mut exact = vec![0u64; n_keys];
        let mut zipf = Zipf::new(n_keys, 1.1, 7);
        let total = 100_000u64;
        for j in 0..total {
            // Every 4th hit a key seen about once: many evictions.
            let i = if j % 4 == 0 {
                (j as usize * 7919) % n_keys
            } else {
                zipf.next()
            };
            exact[i] += 1;
            ss.hit(&ids[i], hashes[i]);
            if j % 5_000 == 0 {
                check_against_exact(&ss, &ids, &hashes, &exact, j + 1, k);
            }
        }
        check_against_exact(&ss, &ids, &hashes, &exact, total, k);
    }

    /// The sketch as the gateway feeds it: several threads at once, with
    /// tenants seen once or twice mixed in, against exact counts.
    #[test]
    fn concurrent_threads_keep_the_bounds_and_the_exact_top_under_a_zipf_load() {
        let n_keys = 10_000;
        let k = 32;
        let top = Arc::new(Top::new(k));
        let ids: Arc<Vec<Arc<str>>> = Arc::new((0..n_keys).map(|i| Arc::from(format!("t{i}").as_str())).collect());
        let start = top.origin;
        let per_thread = 150_000u64;
        let threads: Vec<_> = (0..4u64)
            .map(|seed| {
                let (top, ids) = (top.clone(), ids.clone());
                std::thread::spawn(move || {
                    let mut zipf = Zipf::new(n_keys, 1.1, 0x9e37_79b9_7f4a_7c15 ^ (seed + 1));
                    let mut exact = vec![0u64; n_keys];
                    for j in 0..per_thread {
                        // Every 16th request goes to a tenant seen once or
                        // twice: the sketches evict.
                        let i = if j % 16 == 0 {
                            (j as usize * 7919 + seed as usize) % n_keys
                        } else {
                            zipf.next()
                        };
                        exact[i] += 1;
                        top.record(&Sample {
                            tenant: Some(&ids[i]),
                            status: if i % 97 == 3 { 502 } else { 200 },
                            refusal: None,
                            start,
                            elapsed: Duration::from_micros(100),
                        });
                    }
                    exact
                })
            })
            .collect();
        let mut exact = vec![0u64; n_keys];
        for t in threads {
            for (a, b) in exact.iter_mut().zip(t.join().unwrap()) {
                *a += b;
            }
        }
        let total = 4 * per_thread;
        assert_eq!(top.totals().requests, total);
        let tracked: u64 = top
            .shards
            .iter()
            .map(|s| lock(s).cur.requests.entries().map(|(_, c)| c).sum::<u64>())
            .sum();
        assert_eq!(tracked, total, "the sketches conserve mass");
        assert!(top.shards.iter().all(|s| lock(s).cur.requests.slots.len() <= k));
        // One second into the first window: a rate is a count.
        let ranked = top.rank_at(RankBy::Rps, 8 * k, start + Duration::from_secs(1));
        assert!(ranked.len() <= SHARDS * k);
        for r in &ranked {
            let i: usize = r.tenant[1..].parse().unwrap();
            let est = r.rps as u64;
            assert!(est >= exact[i], "{} undercounted: {est} < {}", r.tenant, exact[i]);
            assert!(est - r.error_bound <= exact[i], "{} error bound broken", r.tenant);
        }
        let mut by_exact: Vec<usize> = (0..n_keys).collect();
        by_exact.sort_by(|a, b| exact[*b].cmp(&exact[*a]).then(a.cmp(b)));
        let est_top: Vec<&str> = ranked.iter().take(10).map(|r| &*r.tenant).collect();
        let exact_top: Vec<String> = by_exact.iter().take(10).map(|i| format!("t{i}")).collect();
        assert_eq!(est_top, exact_top);
        // Every tenant with more than 1/K of the load is ranked.
        for (i, c) in exact.iter().enumerate() {
            if *c > total / k as u64 {
                assert!(
                    ranked.iter().any(|r| r.tenant == format!("t{i}")),
                    "heavy t{i} ({c}) lost"
                );
            }
        }
        // The 5xx ranking too: exact for the top tenants with errors.
        let errs = top.rank_at(RankBy::Errors, 3, start + Duration::from_secs(1));
        let mut err_exact: Vec<(u64, usize)> = (0..n_keys).filter(|i| i % 97 == 3).map(|i| (exact[i], i)).collect();
        err_exact.sort_by(|a, b| b.cmp(a));
        assert_eq!(errs[0].tenant, format!("t{}", err_exact[0].1));
        assert!(errs[0].errors_per_sec as u64 >= err_exact[0].0);
    }

    #[test]
    fn top_ranks_tenants_by_requests_5xx_429_and_p99_with_at_most_n_rows() {
        let top = Top::new(16);
        let ids: Vec<Arc<str>> = (0..200).map(|i| Arc::from(format!("t{i}").as_str())).collect();
        let start = Instant::now();
        let mut zipf = Zipf::new(ids.len(), 1.2, 42);
        let mut exact = vec![0u64; ids.len()];
        for _ in 0..50_000 {
            let i = zipf.next();
            exact[i] += 1;
            top.record(&Sample {
                tenant: Some(&ids[i]),
                status: 200,
                refusal: None,
                start,
                elapsed: Duration::from_micros(100),
            });
        }
        // t150 answers 5xx, t151 is refused with 429, t152 is slow.
        for (id, status, refusal, ms) in [(150, 502, None, 1), (151, 429, Some(12), 1), (152, 200, None, 900)] {
            for _ in 0..2_000 {
                top.record(&Sample {
                    tenant: Some(&ids[id]),
                    status,
                    refusal,
                    start,
                    elapsed: Duration::from_millis(ms),
                });
            }
        }
        let by_rps = top.rank(RankBy::Rps, 5);
        assert_eq!(by_rps.len(), 5);
        let mut order: Vec<usize> = (0..ids.len()).collect();
        exact[150] += 2_000;
        exact[151] += 2_000;
        exact[152] += 2_000;
        order.sort_by(|a, b| exact[*b].cmp(&exact[*a]));
        assert_eq!(by_rps[0].tenant, format!("t{}", order[0]));
        assert_eq!(by_rps[1].tenant, format!("t{}", order[1]));
        assert_eq!(top.rank(RankBy::Errors, 3)[0].tenant, "t150");
        assert_eq!(top.rank(RankBy::Errors, 3).len(), 1, "only t150 answered 5xx");
        assert_eq!(top.rank(RankBy::Limited, 3)[0].tenant, "t151");
        let slow = &top.rank(RankBy::P99, 3)[0];
        assert_eq!(slow.tenant, "t152");
        assert!(slow.p99 >= 0.9 && slow.p99 <= 1.4, "p99 {}", slow.p99);
        let totals = top.totals();
        assert_eq!(totals.requests, 56_000);
        assert_eq!(totals.errors, 2_000);
        assert_eq!(totals.refusals, vec![("limit".to_string(), 2_000)]);
    }

    #[test]
    fn a_silent_window_empties_the_rankings() {
        let top = Top::new(4);
        let id: Arc<str> = Arc::from("acme");
        let long_ago = Instant::now();
        top.record(&Sample {
            tenant: Some(&id),
            status: 200,
            refusal: None,
            start: long_ago,
            elapsed: Duration::from_millis(1),
        });
        assert_eq!(top.rank(RankBy::Rps, 10).len(), 1);
        // Roll every shard two windows on: nothing is left.
        for s in top.shards.iter() {
            lock(s).roll(5);
        }
        let rows: Vec<String> = top
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .cur
                    .requests
                    .slots
                    .iter()
                    .map(|x| x.id.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(rows.is_empty());
    }

    #[test]
    fn latency_buckets_are_monotonic_and_bound_their_durations() {
        let mut last = 0;
        for us in [1u64, 2, 3, 4, 5, 7, 8, 100, 1_000, 65_000, 1_000_000, 60_000_000] {
            let b = bucket(Duration::from_micros(us));
            assert!(b >= last, "bucket of {us} went back");
            assert!(bucket_upper(b) * 1e6 >= us as f64, "{us} above its bucket's bound");
            last = b;
        }
    }

    #[test]
    fn the_series_keeps_at_most_an_hour() {
        let top = Top::new(4);
        for _ in 0..(SERIES_POINTS + 5) {
            lock(&top.sampled).at = Instant::now() - WINDOW;
            top.sample();
        }
        assert_eq!(top.series().len(), SERIES_POINTS);
    }
}
