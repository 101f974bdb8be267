//! CPU cache prefetches for the hot path: hints that start loading memory a later step will
//! read, so that the misses of several queries overlap instead of coming one after another.

use std::hash::BuildHasher;

use dashmap::DashMap;
use smallvec::SmallVec;

/// A key of the answer and forward caches (`wire::key_into`, and the forward cache's flags
/// byte), inline up to 32 bytes (a name of up to ~28 bytes on the wire): compared in the map's
/// own slot, which `slot` loads, not behind a pointer to a cold line of its own.
pub type Key = SmallVec<[u8; 32]>;

/// The caches' hasher: foldhash, seeded at random per process. A hit hashes its key up to three
/// times (the prefetch steps and the lookup), and SipHash was 1.2% of the core at saturation;
/// with the seed, names cannot be chosen to collide.
pub type KeyHasher = foldhash::quality::RandomState;

/// Bytes per cache line on the targets we prefetch for.
const LINE: usize = 64;
/// Lines per hint at most: an answer and its header (296 bytes) fit; the hardware's own
/// prefetcher follows a longer run.
const MAX_LINES: usize = 8;

/// The cache lines `[addr, addr + len)` touches, the first `MAX_LINES` of them.
fn line_starts(addr: usize, len: usize) -> impl Iterator<Item = usize> {
    let count =
        if addr == 0 || len == 0 { 0 } else { (addr.saturating_add(len - 1) / LINE) - addr / LINE + 1 };
    let first = addr & !(LINE - 1);
    (0..count.min(MAX_LINES)).map(move |i| first + i * LINE)
}

/// Starts loading the cache lines of `[addr, addr + len)`.
///
/// A prefetch reads nothing the program can see and never faults, so `addr` may be stale or
/// dangling: a hint taken from a cache entry that has since been replaced only wastes a load.
#[inline]
pub fn lines(addr: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in line_starts(addr, len) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: PREFETCHT0 is a hint: it does not access memory in the language's sense,
        // cannot fault on any address, and SSE is part of every x86_64 target.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = line_starts(addr, len);
}

/// Starts loading the lines of `map` where a lookup of `key` begins: the control group at the
/// key's probe position, and the two buckets from there. Found from the table's address and
/// size alone: no read of its contents.
pub fn slot<V>(map: &DashMap<Key, V, KeyHasher>, key: &[u8]) {
    load_slot(slot_lines(map, key));
}

/// `slot` for a map of one thread's own (`engine::ThreadCopies`).
pub fn own_slot<V>(map: &hashbrown::HashMap<Key, V, KeyHasher>, key: &[u8]) {
    load_slot(table_lines(map.raw_table(), map.hasher().hash_one(key) as usize));
}

fn load_slot((control, buckets): ((usize, usize), (usize, usize))) {
    lines(control.0, control.1);
    lines(buckets.0, buckets.1);
}

/// Where `slot` looks: (address, length) of the control group and of the two buckets.
fn slot_lines<V>(map: &DashMap<Key, V, KeyHasher>, key: &[u8]) -> ((usize, usize), (usize, usize)) {
    let hash = map.hash_usize(&key);
    let shard = &map.shards()[map.determine_shard(hash)];
    table_lines(&shard.read(), hash)
}

/// The control group and the two buckets where a lookup of `hash` in `table` begins.
/// hashbrown's table keeps its control bytes from `data_end` on and bucket `i` just below
/// `data_end - i * size` (its documented layout); were that to change, the hint would only miss
/// (`cached_keys_are_found_where_their_slot_is_loaded` would fail).
fn table_lines<T>(table: &hashbrown::raw::RawTable<T>, hash: usize) -> ((usize, usize), (usize, usize)) {
    const GROUP: usize = 16;
    let (end, size) = (table.data_end().as_ptr() as usize, std::mem::size_of::<T>());
    let pos = hash & (table.buckets() - 1);
    ((end + pos, GROUP), (end.wrapping_sub((pos + 2) * size), 2 * size))
}

/// The address of `value`, as a prefetch hint.
#[inline]
pub fn addr_of<T>(value: &T) -> usize {
    value as *const T as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_a_range_touches_is_loaded_up_to_the_cap() {
        let lines = |addr, len| line_starts(addr, len).collect::<Vec<_>>();
        assert_eq!(lines(0x1000, 1), [0x1000]);
        assert_eq!(lines(0x103f, 1), [0x1000]);
        // Two bytes astride a line boundary: both lines.
        assert_eq!(lines(0x103f, 2), [0x1000, 0x1040]);
        assert_eq!(lines(0x1010, 64), [0x1000, 0x1040]);
        assert_eq!(lines(0x1000, 64), [0x1000]);
        // An answer with its Arc header (296 bytes) from 48 bytes into a line: 6 lines, all
        // within the cap.
        assert_eq!(lines(0x1030, 296).len(), 6);
        assert_eq!(lines(0x1000, 10_000).len(), MAX_LINES);
        // Nothing to load: no hint (empty records, no spilled ends).
        assert!(lines(0, 100).is_empty());
        assert!(lines(0x1000, 0).is_empty());
        assert_eq!(lines(usize::MAX - 10, 100), [usize::MAX & !(LINE - 1)]);
    }

    /// The map's layout that `slot` and `own_slot` assume holds: most keys lie in the two
    /// buckets they load (the rest were pushed further along their probe by collisions).
    #[test]
    fn cached_keys_are_found_where_their_slot_is_loaded() {
        // A value of an answer cache entry's size (two Arcs, two hints).
        let map: DashMap<Key, [usize; 6], KeyHasher> = DashMap::with_hasher(KeyHasher::default());
        let mut own: hashbrown::HashMap<Key, [usize; 6], KeyHasher> =
            hashbrown::HashMap::with_hasher(KeyHasher::default());
        let keys: Vec<Key> = (0..5_000).map(|i| Key::from_slice(format!("svc{i}.ns").as_bytes())).collect();
        for k in &keys {
            map.insert(k.clone(), [0; 6]);
            own.insert(k.clone(), [0; 6]);
        }
        let (mut within, mut within_own) = (0, 0);
        for k in &keys {
            let (_, (at, len)) = slot_lines(&map, k);
            let entry = map.get(k.as_slice()).expect("inserted");
            if (at..at + len).contains(&(entry.key() as *const Key as usize)) {
                within += 1;
            }
            let (_, (at, len)) = table_lines(own.raw_table(), own.hasher().hash_one(k.as_slice()) as usize);
            let (key, _) = own.get_key_value(k.as_slice()).expect("inserted");
            if (at..at + len).contains(&(key as *const Key as usize)) {
                within_own += 1;
            }
        }
        for (map, n) in [("shared", within), ("own", within_own)] {
            assert!(
                n * 10 >= keys.len() * 7,
                "{map}: {n} of {} keys where their slot was loaded",
                keys.len()
            );
        }
    }
}
