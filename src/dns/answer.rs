//! A pre-encoded answer: the records of each section as bytes, ready to be copied into a response
//! with a new ID and the question's own bytes. Answers are cached by (lower-case name, type,
//! class) and reused until the data they were built from changes (`deps`), so a cache hit does
//! no parsing beyond the question, no lookups beyond one map probe, and no encoding.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use rand::seq::SliceRandom;

use super::wire::{self, OptOut, Query, Sections};

/// How the answer section is drawn from `records` for each response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Every record, in order.
    All,
    /// Every record, in a fresh random order.
    Shuffle,
    /// At most this many records, a fresh random subset in random order (Route 53 multivalue).
    Sample(usize),
}

#[derive(Debug)]
pub struct Answer {
    pub rcode: u8,
    pub authoritative: bool,
    pub recursion_available: bool,
    pub records: Vec<Vec<u8>>,
    pub pick: Pick,
    pub authority: Vec<Vec<u8>>,
    pub additional: Vec<Vec<u8>>,
    /// Extended DNS Error (RFC 8914) to attach when the client speaks EDNS.
    pub ede: Option<(u16, Cow<'static, str>)>,
    /// The generations this answer was built from; it is current while all of them still hold.
    pub deps: Vec<(Arc<AtomicU64>, u64)>,
    /// Marks the data behind it as in use (idle services stop being refreshed).
    pub touch: Option<Arc<AtomicU64>>,
    /// Whether the answer may be reused for other queries (troubleshooting TXT is not).
    pub cacheable: bool,
    /// Age of the data behind it, for staleness accounting: when the backend last confirmed it
    /// (wall-clock ms, kept by its cache slot); `None` when it is always current (pushed by the
    /// embedded registry, or not from the backend).
    pub confirmed_ms: Option<Arc<AtomicU64>>,
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
            records: Vec::new(),
            pick: Pick::All,
            authority: Vec::new(),
            additional: Vec::new(),
            ede: None,
            deps: Vec::new(),
            touch: None,
            cacheable: true,
            confirmed_ms: None,
            stale_reason: None,
            fail_open: false,
        }
    }

    pub fn is_current(&self) -> bool {
        self.deps.iter().all(|(g, v)| g.load(Ordering::Acquire) == *v)
    }

    /// Writes the response to `q` into `out`, within `limit` bytes. Returns whether TC was set.
    /// Besides `out`, nothing is allocated unless the answer has over 64 records.
    pub fn write(&self, q: &Query, limit: usize, now_ms: u64, out: &mut Vec<u8>) -> bool {
        if let Some(t) = &self.touch {
            t.store(now_ms, Ordering::Relaxed);
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
            Pick::All => n,
            Pick::Shuffle => {
                order.shuffle(&mut rand::rng());
                n
            }
            Pick::Sample(k) if k > 0 && k < n => {
                let mut rng = rand::rng();
                // A partial Fisher-Yates: the first k slots end up a uniform random sample.
                for i in 0..k {
                    let j = rng.random_range(i..n);
                    order.swap(i, j);
                }
                k
            }
            Pick::Sample(_) => {
                order.shuffle(&mut rand::rng());
                n
            }
        };
        let answer = wire::Picked { records: &self.records, order: &order[..take] };
        let sections = Sections {
            rcode: self.rcode,
            authoritative: self.authoritative,
            recursion_available: self.recursion_available,
            answer: &answer,
            authority: &self.authority,
            additional: &self.additional,
            opt: OptOut { extended_rcode: 0, ede: self.ede.as_ref().map(|(c, t)| (*c, t.as_ref())) },
        };
        wire::write_response(q, &sections, limit, out)
    }
}
