//! The forward cache: upstream replies as templates, keyed by lower-case name, type, class and
//! the client's DO and CD bits (they change what the upstream sends).
//!
//! Bounded in entries and in bytes. Eviction is CLOCK (second chance), an approximation of LRU
//! whose hit path is one relaxed store: a hit marks its entry referenced; when an insert goes over
//! a bound, the hand walks the ring of keys in insertion order, giving referenced entries a second
//! round and evicting the first unreferenced one (or any one past its stale window). Lookups
//! never take a lock; inserts take the ring's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::reply::Template;
use crate::dns::answer::{Deps, deps_hold};
use crate::dns::prefetch::{self, Key, KeyHasher};

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
struct Slot {
    entry: Arc<Entry>,
    template_at: [(usize, usize); 2],
}

impl Slot {
    fn new(entry: Arc<Entry>) -> Slot {
        Slot { template_at: entry.template.heap_parts(), entry }
    }
}

pub struct ForwardCache {
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
        let e = &slot.entry;
        if !e.referenced.load(Ordering::Relaxed) {
            e.referenced.store(true, Ordering::Relaxed);
        }
        Some(f(e))
    }

    /// Starts loading the lines of the map where a lookup of `key` begins (`prefetch::slot`).
    pub fn prefetch_slot(&self, key: &[u8]) {
        prefetch::slot(&self.map, key);
    }

    /// Starts loading what a hit on `key` reads: the entry and its template. The lookup reads
    /// the map's slot: call `prefetch_slot` for the key a while before. Returns whether the key
    /// is there.
    pub fn prefetch_entry(&self, key: &[u8]) -> bool {
        let Some(slot) = self.map.get(key) else { return false };
        prefetch::lines(Arc::as_ptr(&slot.entry) as usize, std::mem::size_of::<Entry>());
        for (at, len) in slot.template_at {
            prefetch::lines(at, len);
        }
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
