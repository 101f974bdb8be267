//! The forward cache: upstream replies as templates, keyed by lower-case name, type, class and
//! the client's DO and CD bits (they change what the upstream sends).
//!
//! Bounded in entries and in bytes. Eviction is CLOCK (second chance), an approximation of LRU
//! whose hit path is one relaxed store: a hit marks its entry referenced; when an insert goes over
//! a bound, the hand walks the ring of keys in insertion order, giving referenced entries a second
//! round and evicting the first unreferenced one (or any one past its stale window). Lookups
//! never take a lock; inserts take the ring's.
//!
//! A UDP thread reads through its own copies of the entries (`ThreadEntries`), which share
//! the entries themselves (`Arc`): a hit through a copy marks the same reference bit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::reply::Template;
use crate::dns::answer::{Deps, deps_hold};
use crate::dns::copies::Copies;
use crate::dns::prefetch::{self, Key, KeyHasher};

/// Numbers the caches, so that a thread's copies are known to be of the cache it reads: a
/// reload that switches forwarding off and on again makes a new one.
static NEXT_CACHE: AtomicU64 = AtomicU64::new(1);

/// One cached reply.
#[derive(Debug)]
pub struct Entry {
    pub template: Template,
    /// Extended DNS Error to attach (a cached SERVFAIL says why).
    pub ede: Option<(u16, String)>,
    /// When it was stored (monotonic ms).
    pub stored_ms: u64,
    /// Seconds it is fresh for.
    pub ttl: u32,
    /// Until when it may still be served stale (monotonic ms); equal to expiry when it may not.
    pub stale_until_ms: u64,
    /// RFC 8767 failure recheck: after a failed refresh, served stale without trying upstream
    /// until then (monotonic ms).
    pub serving_stale_until_ms: AtomicU64,
    /// The zone table generation it was routed under: a new zone may cover its name.
    pub zones_generation: AtomicU64,
    /// Generations of namespace data it depends on (a fallthrough answer stops holding when the
    /// namespace learns the name).
    pub deps: Deps,
    /// Hit at least once since it was stored (a later hit may prefetch it).
    pub asked_again: AtomicBool,
    pub prefetching: AtomicBool,
    referenced: AtomicBool,
    /// No longer the map's (replaced, evicted or swept): threads' copies of it stop answering.
    dropped: AtomicBool,
    id: u64,
}

impl Entry {
    pub fn new(
        template: Template,
        ede: Option<(u16, String)>,
        now_ms: u64,
        ttl: u32,
        stale_s: u64,
        zones_generation: u64,
        deps: Deps,
    ) -> Entry {
        let expires = now_ms + ttl as u64 * 1000;
        Entry {
            template,
            ede,
            stored_ms: now_ms,
            ttl,
            stale_until_ms: expires + stale_s * 1000,
            serving_stale_until_ms: AtomicU64::new(0),
            zones_generation: AtomicU64::new(zones_generation),
            deps,
            asked_again: AtomicBool::new(false),
            prefetching: AtomicBool::new(false),
            referenced: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            id: 0,
        }
    }

    pub fn expires_ms(&self) -> u64 {
        self.stored_ms + self.ttl as u64 * 1000
    }

    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms()
    }

    /// Seconds since it was stored, for counting TTLs down.
    pub fn elapsed_s(&self, now_ms: u64) -> u32 {
        (now_ms.saturating_sub(self.stored_ms) / 1000) as u32
    }

    /// Whether it may still be served stale, should upstreams fail.
    pub fn may_serve_stale(&self, now_ms: u64) -> bool {
        now_ms < self.stale_until_ms
    }

    pub fn deps_hold(&self) -> bool {
        deps_hold(&self.deps)
    }

    fn size(&self, key: &[u8]) -> usize {
        self.template.size() + key.len() + std::mem::size_of::<Entry>() + 64
    }
}

/// An entry in the map, with where its template lies on the heap: prefetch hints, kept here so
/// that `ForwardCache::prefetch_entry` needs no read of the entry itself (a miss).
#[derive(Clone)]
pub struct Slot {
    entry: Arc<Entry>,
    template_at: [(usize, usize); 2],
}

impl Slot {
    fn new(entry: Arc<Entry>) -> Slot {
        Slot { template_at: entry.template.heap_parts(), entry }
    }

    /// Starts loading what a hit on it reads: the entry and its template.
    fn prefetch(&self) {
        prefetch::lines(Arc::as_ptr(&self.entry) as usize, std::mem::size_of::<Entry>());
        for (at, len) in self.template_at {
            prefetch::lines(at, len);
        }
    }

    /// Marks its entry asked for, for the eviction's second chance. A write only the first
    /// time after the hand cleared it, so hits leave the line shared between cores.
    fn reference(&self) {
        if !self.entry.referenced.load(Ordering::Relaxed) {
            self.entry.referenced.store(true, Ordering::Relaxed);
        }
    }
}

/// A UDP thread's own copies of the forward cache's entries (`crate::dns::copies`). A copy
/// answers while its entry is still the map's (`Entry::dropped`), as the map would; then it is
/// looked for in the map again. Within the cache's own bounds in entries and bytes: past either,
/// the thread starts over.
#[derive(Default)]
pub struct ThreadEntries {
    /// The cache they are copies of (`ForwardCache::number`).
    cache: u64,
    copies: Copies<Slot>,
    bytes: usize,
}

impl ThreadEntries {
    /// The copy for `key`, if it is still the map's.
    fn current(&self, key: &[u8]) -> Option<&Slot> {
        self.copies.get(key).filter(|s| !s.entry.dropped.load(Ordering::Relaxed))
    }

    /// Keeps `slot` as the copy for `key`, within the cache's bounds.
    fn keep(&mut self, key: &[u8], slot: Slot, max_entries: usize, max_bytes: usize) {
        let size = slot.entry.size(key);
        let replaced = self.copies.get(key).map(|s| s.entry.size(key));
        self.bytes -= replaced.unwrap_or(0);
        if (replaced.is_none() && self.copies.len() >= max_entries) || self.bytes + size > max_bytes {
            self.copies.start_over();
            self.bytes = 0;
        }
        self.copies.keep(key, slot, usize::MAX);
        self.bytes += size;
    }

    /// Drops the copy for `key`: it no longer answers.
    pub fn forget(&mut self, key: &[u8]) {
        if let Some(size) = self.copies.get(key).map(|s| s.entry.size(key)) {
            self.bytes -= size;
            self.copies.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.copies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }
}

pub struct ForwardCache {
    /// This cache among those the process has made (`ThreadEntries::cache`).
    number: u64,
    map: DashMap<Key, Slot, KeyHasher>,
    /// Keys in insertion order, with the id of the entry they were inserted with: a key whose
    /// entry has since been replaced is a tombstone, dropped when the hand reaches it.
    ring: Mutex<VecDeque<(Key, u64)>>,
    bytes: AtomicUsize,
    next_id: AtomicU64,
    max_entries: AtomicUsize,
    max_bytes: AtomicUsize,
    pub evictions: AtomicU64,
}

impl ForwardCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> ForwardCache {
        ForwardCache {
            number: NEXT_CACHE.fetch_add(1, Ordering::Relaxed),
            map: DashMap::with_hasher(KeyHasher::default()),
            ring: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_entries: AtomicUsize::new(max_entries.max(1)),
            max_bytes: AtomicUsize::new(max_bytes),
            evictions: AtomicU64::new(0),
        }
    }

    /// New bounds (reload); a smaller one takes effect as entries are inserted.
    pub fn set_limits(&self, max_entries: usize, max_bytes: usize) {
        self.max_entries.store(max_entries.max(1), Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    pub fn get(&self, key: &[u8]) -> Option<Arc<Entry>> {
        self.with(key, Arc::clone)
    }

    /// Runs `f` on the entry of `key` in place: a hit needs no count taken on the entry's `Arc`
    /// (two atomic read-modify-writes on the hot path).
    pub fn with<R>(&self, key: &[u8], f: impl FnOnce(&Arc<Entry>) -> R) -> Option<R> {
        let slot = self.map.get(key)?;
        slot.reference();
        Some(f(&slot.entry))
    }

    /// `with`, through a thread's copies: from its copy of the entry while that is the map's,
    /// else from the map (then copied).
    pub fn with_own<R>(
        &self,
        own: &mut ThreadEntries,
        key: &[u8],
        f: impl FnOnce(&Arc<Entry>) -> R,
    ) -> Option<R> {
        let slot = self.own(own, key)?;
        slot.reference();
        Some(f(&slot.entry))
    }

    /// The thread's copy of `key`'s entry: the one it has while that is the map's, else the
    /// map's (copied, or the copy dropped when the map has none).
    fn own<'o>(&self, own: &'o mut ThreadEntries, key: &[u8]) -> Option<&'o Slot> {
        if own.cache != self.number {
            own.copies.start_over();
            *own = ThreadEntries { cache: self.number, ..ThreadEntries::default() };
        }
        if own.current(key).is_none() {
            match self.map.get(key).map(|s| s.clone()) {
                Some(slot) => own.keep(
                    key,
                    slot,
                    self.max_entries.load(Ordering::Relaxed),
                    self.max_bytes.load(Ordering::Relaxed),
                ),
                None => own.forget(key),
            }
        }
        own.copies.get(key)
    }

    /// Starts loading the lines of the map where a lookup of `key` begins (`prefetch::slot`).
    pub fn prefetch_slot(&self, key: &[u8]) {
        prefetch::slot(&self.map, key);
    }

    /// Starts loading the lines of `own` where a lookup of `key` begins.
    pub fn prefetch_own_slot(&self, own: &ThreadEntries, key: &[u8]) {
        own.copies.prefetch_slot(key);
    }

    /// Starts loading what a hit on `key` reads: the entry and its template. The lookup reads
    /// the map's slot: call `prefetch_slot` for the key a while before. Returns whether the key
    /// is there.
    pub fn prefetch_entry(&self, key: &[u8]) -> bool {
        let Some(slot) = self.map.get(key) else { return false };
        slot.prefetch();
        true
    }

    /// `prefetch_entry` from the thread's copy only (none is made): whether it has one. Whether
    /// the copy is still the map's is checked when it answers (`with_own`): checked here, it
    /// would read the entry's line before its prefetch could load it. Call `prefetch_own_slot`
    /// for the key a while before.
    pub fn prefetch_own_entry(&self, own: &ThreadEntries, key: &[u8]) -> bool {
        let Some(slot) = own.copies.get(key).filter(|_| own.cache == self.number) else { return false };
        slot.prefetch();
        true
    }

    /// `prefetch_entry` through the thread's copies (copied from the map when it has none).
    pub fn prefetch_copied_entry(&self, own: &mut ThreadEntries, key: &[u8]) -> bool {
        let Some(slot) = self.own(own, key) else { return false };
        slot.prefetch();
        true
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn insert(&self, key: &[u8], mut entry: Entry, now_ms: u64) -> Arc<Entry> {
        entry.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let size = entry.size(key);
        let entry = Arc::new(entry);
        let Ok(mut ring) = self.ring.lock() else { return entry };
        if let Some(old) = self.map.insert(key.into(), Slot::new(entry.clone())) {
            old.entry.dropped.store(true, Ordering::Relaxed);
            self.bytes.fetch_sub(old.entry.size(key), Ordering::Relaxed);
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        ring.push_back((key.into(), entry.id));
        // The hand: at most two rounds (the first clears every reference bit).
        let mut budget = ring.len() * 2;
        let (max_entries, max_bytes) =
            (self.max_entries.load(Ordering::Relaxed), self.max_bytes.load(Ordering::Relaxed));
        while (self.map.len() > max_entries || self.bytes() > max_bytes) && budget > 0 {
            budget -= 1;
            let Some((k, id)) = ring.pop_front() else { break };
            let Some(current) = self.map.get(k.as_slice()).map(|s| s.entry.clone()) else { continue };
            if current.id != id {
                continue; // tombstone
            }
            if current.id != entry.id
                && current.may_serve_stale(now_ms)
                && current.referenced.swap(false, Ordering::Relaxed)
            {
                ring.push_back((k, id));
                continue;
            }
            if current.id == entry.id && self.map.len() > 1 {
                // Never evict what is being inserted while others remain.
                ring.push_back((k, id));
                continue;
            }
            if self.map.remove_if(k.as_slice(), |_, s| s.entry.id == id).is_some() {
                current.dropped.store(true, Ordering::Relaxed);
                self.bytes.fetch_sub(current.size(&k), Ordering::Relaxed);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        if ring.len() > 2 * self.map.len() + 1024 {
            ring.retain(|(k, id)| self.map.get(k.as_slice()).is_some_and(|s| s.entry.id == *id));
        }
        entry
    }

    /// Drops entries past their stale window (run now and then, so memory is not held by
    /// names nobody asks for any more).
    pub fn sweep(&self, now_ms: u64) {
        let Ok(mut ring) = self.ring.lock() else { return };
        let mut freed = 0;
        self.map.retain(|k, s| {
            let keep = s.entry.may_serve_stale(now_ms);
            if !keep {
                s.entry.dropped.store(true, Ordering::Relaxed);
                freed += s.entry.size(k);
            }
            keep
        });
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        ring.retain(|(k, id)| self.map.get(k.as_slice()).is_some_and(|s| s.entry.id == *id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::reply;

    fn entry(now: u64, ttl: u32) -> Entry {
        Entry::new(reply::bare(&[0, 0, 1, 0, 1], 0), None, now, ttl, 0, 0, Deps::new())
    }

    #[test]
    fn bounded_in_entries_with_second_chance() {
        let c = ForwardCache::new(3, usize::MAX);
        for k in [b"a", b"b", b"c"] {
            c.insert(k, entry(0, 60), 0);
        }
        assert!(c.get(b"a").is_some()); // referenced: survives the next eviction
        c.insert(b"d", entry(0, 60), 0);
        assert_eq!(c.len(), 3);
        assert!(c.get(b"a").is_some());
        assert!(c.get(b"b").is_none(), "the oldest unreferenced entry goes first");
        assert_eq!(c.evictions.load(Ordering::Relaxed), 1);
    }

    /// An entry's hints point at its template's bytes and records.
    #[test]
    fn slots_hold_where_their_template_lies() {
        let e = Arc::new(entry(0, 60));
        let slot = Slot::new(e.clone());
        let question = e.template.question();
        let [bytes, records] = slot.template_at;
        assert!(
            bytes.0 < question.as_ptr() as usize
                && question.as_ptr() as usize + question.len() <= bytes.0 + bytes.1
        );
        assert_eq!(records, e.template.heap_parts()[1]);
        let c = ForwardCache::new(3, usize::MAX);
        c.insert(b"a", entry(0, 60), 0);
        assert!(c.prefetch_entry(b"a"));
        assert!(!c.prefetch_entry(b"b"));
    }

    /// A thread's copies stay within the cache's bounds, in entries and in bytes, and count
    /// each copy's bytes once however often it is replaced.
    #[test]
    fn a_threads_copies_stay_within_the_caches_bounds() {
        let one = entry(0, 60).size(b"k0");
        for (max_entries, max_bytes) in [(4, usize::MAX), (100, one * 3)] {
            let c = ForwardCache::new(max_entries, max_bytes);
            let mut own = ThreadEntries::default();
            for i in 0..20 {
                let k = format!("k{}", i % 10);
                c.insert(k.as_bytes(), entry(0, 60), 0);
                assert!(c.with_own(&mut own, k.as_bytes(), |_| ()).is_some(), "{k}");
                assert!(
                    own.len() <= max_entries && own.bytes <= max_bytes,
                    "{} copies, {} bytes",
                    own.len(),
                    own.bytes
                );
                assert!(!own.is_empty());
            }
        }
        let c = ForwardCache::new(10, usize::MAX);
        let mut own = ThreadEntries::default();
        for _ in 0..5 {
            c.insert(b"k0", entry(0, 60), 0);
            assert!(c.with_own(&mut own, b"k0", |_| ()).is_some());
        }
        assert_eq!((own.len(), own.bytes), (1, one));
        own.forget(b"k0");
        assert_eq!((own.len(), own.bytes), (0, 0));
    }

    /// A hit through a thread's copy marks the entry the cache evicts by: it keeps its second
    /// chance.
    #[test]
    fn a_hit_through_a_copy_gives_the_entry_its_second_chance() {
        let c = ForwardCache::new(3, usize::MAX);
        let mut own = ThreadEntries::default();
        for k in [b"a", b"b", b"c"] {
            c.insert(k, entry(0, 60), 0);
        }
        assert!(c.with_own(&mut own, b"a", |_| ()).is_some());
        c.insert(b"d", entry(0, 60), 0);
        // (`prefetch_entry` tells whether a key is there without marking it.)
        assert!(c.prefetch_entry(b"a") && !c.prefetch_entry(b"b"));
        // Evicted entries' copies stop answering.
        for k in [b"e", b"f", b"g", b"h"] {
            c.insert(k, entry(0, 60), 0);
        }
        assert!(!c.prefetch_entry(b"a"));
        assert!(c.with_own(&mut own, b"a", |_| ()).is_none());
        assert!(own.is_empty());
    }

    #[test]
    fn bounded_in_bytes() {
        let one = entry(0, 60).size(b"k0");
        let c = ForwardCache::new(1000, one * 5);
        for i in 0..50 {
            c.insert(format!("k{i}").as_bytes(), entry(0, 60), 0);
        }
        assert!(c.bytes() <= one * 5 + 64, "{} bytes", c.bytes());
        assert!(c.len() <= 5);
    }

    #[test]
    fn replacing_keeps_accounting_and_sweep_drops_dead() {
        let c = ForwardCache::new(10, usize::MAX);
        for _ in 0..100 {
            c.insert(b"same", entry(0, 1), 0);
        }
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), entry(0, 1).size(b"same"));
        c.sweep(5_000);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }
}
