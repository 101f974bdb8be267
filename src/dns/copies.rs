//! A UDP thread's own copies of a shared cache's entries, read with no lock and no write to
//! memory another thread reads.
//!
//! The shared caches are DashMaps: a read takes its shard's read lock, an atomic add and
//! subtract on a word every thread's reads of that shard write. With a UDP thread per core, each
//! read then waits for that line to come from the core that read last (17 ns per read alone,
//! 34-64 ns with a second core reading; bench/README.md, *Multi-core*). A copy is an entry's
//! `Arc`s, taken the first time the thread finds the entry in the shared map; whoever owns the
//! copies decides when one no longer holds and is looked for in the shared map again.

use super::prefetch::{self, Key, KeyHasher};

/// Copies `Copies::start_over` drops on the calling thread at most: tens of microseconds on
/// cold lines, about what starting a thread costs.
const DROP_HERE: usize = 256;

pub struct Copies<V> {
    map: hashbrown::HashMap<Key, V, KeyHasher>,
}

impl<V> Default for Copies<V> {
    fn default() -> Self {
        Copies { map: hashbrown::HashMap::with_hasher(KeyHasher::default()) }
    }
}

impl<V: Send + 'static> Copies<V> {
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.map.get(key)
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.map.remove(key);
    }

    /// Keeps `value` as the copy for `key`, with at most `max` copies: past that the thread
    /// starts over (`start_over`).
    pub fn keep(&mut self, key: &[u8], value: V, max: usize) {
        if self.map.len() >= max.max(1) && !self.map.contains_key(key) {
            self.start_over();
        }
        self.map.insert(Key::from_slice(key), value);
    }

    /// Drops every copy. Many go on a thread of their own: dropping 100,000 (an `Arc` or two
    /// each, most on cold lines) would hold up the UDP loop for milliseconds. A few are dropped
    /// here, as starting a thread costs more than they do (the forward copies start over
    /// empty, once per thread and forwarder).
    pub fn start_over(&mut self) {
        let old = std::mem::take(&mut self.map);
        if old.len() <= DROP_HERE {
            return;
        }
        // Should no thread start, `old` is dropped here instead: a stall, nothing lost.
        let _ = std::thread::Builder::new().name("cloudmap-dns-drop".into()).spawn(move || drop(old));
    }

    /// Starts loading the lines where a lookup of `key` begins (`prefetch::own_slot`).
    pub fn prefetch_slot(&self, key: &[u8]) {
        prefetch::own_slot(&self.map, key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_copies_are_kept() {
        let mut c = Copies::default();
        for i in 0..10u32 {
            c.keep(&i.to_be_bytes(), i, 4);
            assert!(c.len() <= 4);
            assert_eq!(c.get(&i.to_be_bytes()), Some(&i), "the newest copy is kept");
        }
        // Replacing a copy is not a new one.
        let full = c.len();
        c.keep(&9u32.to_be_bytes(), 90, full);
        assert_eq!((c.len(), c.get(&9u32.to_be_bytes())), (full, Some(&90)));
        c.remove(&9u32.to_be_bytes());
        assert_eq!(c.get(&9u32.to_be_bytes()), None);
    }

    #[test]
    fn a_few_copies_are_dropped_at_once_and_many_on_a_thread_of_their_own() {
        let value = std::sync::Arc::new(());
        let mut few = Copies::default();
        for i in 0..DROP_HERE as u32 {
            few.keep(&i.to_be_bytes(), value.clone(), usize::MAX);
        }
        few.start_over();
        assert!(few.is_empty());
        assert_eq!(std::sync::Arc::strong_count(&value), 1, "dropped before start_over returns");

        let mut many = Copies::default();
        for i in 0..=DROP_HERE as u32 {
            many.keep(&i.to_be_bytes(), value.clone(), usize::MAX);
        }
        many.start_over();
        assert!(many.is_empty());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::sync::Arc::strong_count(&value) > 1 {
            assert!(std::time::Instant::now() < deadline, "the dropping thread never dropped them");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
