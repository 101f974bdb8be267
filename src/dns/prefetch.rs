//! CPU cache prefetches for the hot path: hints that start loading memory a later step will
//! read, so that the misses of several queries overlap instead of coming one after another.

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
}
