//! A pre-encoded answer: the records of each section as bytes, ready to be copied into a response
//! with a new ID and the question's own bytes. Answers are cached by (lower-case name, type,
//! class) and reused until the data they were built from changes (`deps`), so a cache hit does
//! no parsing beyond the question, no lookups beyond one map probe, and no encoding.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use rand::seq::SliceRandom;
use smallvec::SmallVec;

use super::wire::{self, OptOut, Query, RareRecords, RecordSet, Records, Sections};
use crate::cache::SlotMarks;

/// Generations an answer was built from, each with the value it had: the answer is current while
/// all of them still hold. Inline (a zone, a catalog): no allocation to follow on a hit.
pub type Deps = SmallVec<[(Arc<AtomicU64>, u64); 2]>;

/// Whether every generation in `deps` still holds.
pub fn deps_hold(deps: &[(Arc<AtomicU64>, u64)]) -> bool {
    deps.iter().all(|(g, v)| g.load(Ordering::Acquire) == *v)
}

/// How stale a hit may leave its service's `last_used` (ms): what the idle timeout (minutes by
/// default) is measured against, not worth a write per hit.
const USE_STAMP_MS: u64 = 100;

/// The service an answer was built from: its generation then, and its marks, read (and the
/// last use written) on every hit.
#[derive(Debug)]
pub struct ServiceDep {
    pub marks: Arc<SlotMarks>,
    pub generation: u64,
    /// Whether the data's age is known (polled from the backend; pushed data is always current).
    pub aged: bool,
}

/// How the answer section is drawn from `records` for each response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Every record, in order.
    All,
    /// Every record, in a fresh random order.
    Shuffle,
    /// At most this many records, a fresh random subset in random order (Route 53 multivalue).
    /// A `u32`, not a `usize`: the answer it is part of stays within three cache lines.
    Sample(u32),
}

#[derive(Debug)]
pub struct Answer {
    pub rcode: u8,
    pub authoritative: bool,
    pub recursion_available: bool,
    pub records: RecordSet,
    pub pick: Pick,
    pub authority: RareRecords,
    pub additional: RareRecords,
    /// Extended DNS Error (RFC 8914) to attach when the client speaks EDNS. Boxed, as
    /// `RareRecords` is: most answers have none, and every hit reads the whole answer.
    pub ede: Option<Box<(u16, Cow<'static, str>)>>,
    /// The zone and catalog generations this answer was built from.
    pub deps: Deps,
    /// The service it was built from, if any: it is current while the service's generation
    /// holds; a hit marks the service as in use (idle services stop being refreshed), and reads
    /// the data's age (when the backend last confirmed it) for staleness accounting.
    pub service: Option<ServiceDep>,
    /// Whether the answer may be reused for other queries (troubleshooting TXT is not).
    pub cacheable: bool,
    /// Why it is served stale, when it is (`served_stale_total{reason}`).
    pub stale_reason: Option<&'static str>,
    /// Whether it falls back to unhealthy instances because none is healthy.
    pub fail_open: bool,
}

impl Answer {
    pub fn new(rcode: u8) -> Answer {
        Answer {
            rcode,
            authoritative: true,
            recursion_available: false,
            records: RecordSet::default(),
            pick: Pick::All,
            authority: RareRecords::default(),
            additional: RareRecords::default(),
            ede: None,
            deps: Deps::new(),
            service: None,
            cacheable: true,
            stale_reason: None,
            fail_open: false,
        }
    }

    /// Attaches an Extended DNS Error, sent when the client speaks EDNS.
    pub fn set_ede(&mut self, code: u16, text: impl Into<Cow<'static, str>>) {
        self.ede = Some(Box::new((code, text.into())));
    }

    /// When the backend last confirmed the data behind it (wall-clock ms), if that is known.
    pub fn confirmed_ms(&self) -> Option<u64> {
        self.service.as_ref().filter(|s| s.aged).map(|s| s.marks.confirmed_ms.load(Ordering::Relaxed))
    }

    /// Writes the response to `q` into `out`, within `limit` bytes. Returns whether TC was set.
    /// Besides `out`, nothing is allocated unless a shuffled or sampled answer has over 64 records.
    pub fn write(&self, q: &Query, limit: usize, now_ms: u64, out: &mut Vec<u8>) -> bool {
        if let Some(s) = &self.service
            && now_ms.saturating_sub(s.marks.last_used.load(Ordering::Relaxed)) >= USE_STAMP_MS
        {
            // Written only when it is older than that: the line is read by every hit on the
            // service, on every UDP thread, and a write takes it from the other cores.
            s.marks.last_used.store(now_ms, Ordering::Relaxed);
        }
        if self.pick == Pick::All {
            // In their own order, all of them: one copy, no order to draw.
            return self.write_with(q, &self.records, limit, out);
        }
        let n = self.records.len();
        let mut stack = [0u16; 64];
        let mut heap = Vec::new();
        let order: &mut [u16] = if n <= stack.len() {
            &mut stack[..n]
        } else {
            heap.resize(n, 0);
            &mut heap
        };
        for (i, slot) in order.iter_mut().enumerate() {
            *slot = i as u16;
        }
        let take = match self.pick {
            Pick::Sample(k) if k > 0 && (k as usize) < n => {
                let k = k as usize;
                let mut rng = rand::rng();
                // A partial Fisher-Yates: the first k slots end up a uniform random sample.
                for i in 0..k {
                    let j = rng.random_range(i..n);
                    order.swap(i, j);
                }
                k
            }
            Pick::All | Pick::Shuffle | Pick::Sample(_) => {
                order.shuffle(&mut rand::rng());
                n
            }
        };
        self.write_with(q, &wire::Picked { records: &self.records, order: &order[..take] }, limit, out)
    }

    fn write_with(&self, q: &Query, answer: &dyn Records, limit: usize, out: &mut Vec<u8>) -> bool {
        let sections = Sections {
            rcode: self.rcode,
            authoritative: self.authoritative,
            recursion_available: self.recursion_available,
            answer,
            authority: &*self.authority,
            additional: &*self.additional,
            opt: OptOut { extended_rcode: 0, ede: self.ede.as_deref().map(|(c, t)| (*c, t.as_ref())) },
        };
        wire::write_response(q, &sections, limit, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hit reads the whole answer, so its size is lines read per hit: over 10,000 names most
    /// of them miss the core's caches (bench/README.md, *Scale*).
    #[test]
    fn an_answer_and_its_arc_counts_fit_three_cache_lines() {
        let size = std::mem::size_of::<Answer>() + 2 * std::mem::size_of::<usize>();
        assert!(size <= 3 * 64, "{size} bytes");
    }
}
