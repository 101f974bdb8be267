//! Query handling: parse, check who is asking, route by zone, answer from the answer cache or
//! build the answer from the namespace cache (namespace zones), or hand the query to the
//! forwarder (every other name, and unknown names of zones with `fallthrough`), encode.
//!
//! `answer_cached` is the hot path, run inline on the socket's loop: it parses the header and
//! question, probes the answer cache with the lower-cased name, type and class (then the
//! forward cache), and copies the pre-encoded answer out with the query's ID and question; a
//! name the zone table and the catalog settle alone (NXDOMAIN, NODATA, the apex) is built there
//! too. The UDP loop answers a received batch this way (`prepare`, then `answer_prepared` for
//! each): each query parsed, keyed and looked up in the answer map once. Everything else
//! (`answer_miss`) runs on its own task, may wait for the backend or an upstream, and stores
//! what it built for the next query.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;
use smallvec::SmallVec;

use super::answer::{Answer, Deps, ServiceDep, deps_hold};
use super::copies::Copies;
use super::prefetch;
use super::wire::{self, *};
use crate::acl::Acl;
use crate::cache::{Cache, Lookup, SlotMarks, now_ms};
use crate::forward::{self, Forwarder};
use crate::metrics::{self, CacheKind, Counts, Source};
use crate::zone::Zone;
use crate::zone::answer::{self as build, BuildCtx, Parsed, Reserved, Rest, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub enum Fast {
    /// `out` holds the response.
    Answered,
    /// No response at all (a response packet, or too short to carry a header).
    Dropped,
    /// Needs the slow path.
    Miss,
}

pub struct EngineSettings {
    /// SOA MNAME and NS target of every zone (wire form).
    pub server_name: Vec<u8>,
    /// How many answers the answer cache holds at most.
    pub max_cached_answers: usize,
    /// Who may query the namespace zones.
    pub allow_query: Acl,
    /// Who may have other names forwarded.
    pub allow_recursion: Acl,
    /// Log every query at info.
    pub query_log: bool,
}

/// What a zone answer is built with: the settings and forwarder current when the query came in.
#[derive(Clone, Copy)]
struct ZoneCtx<'a> {
    settings: &'a EngineSettings,
    forwarding: bool,
    zones_generation: u64,
}

/// What the namespace side makes of a name in one of its zones.
enum ZoneOutcome {
    Answer(Arc<Answer>),
    /// The namespace does not know the name and the zone forwards such names; the answer must
    /// stop holding when any of these generations moves (the namespace may learn the name).
    Fallthrough(Deps),
}

/// What a name's reading against the catalog settles (see `Engine::settled`). Returned and
/// taken apart at once: boxing the answer would cost an allocation per zone miss.
#[allow(clippy::large_enum_variant)]
enum Settled {
    Answer(Answer),
    /// Unknown to the namespace, in a zone that forwards such names.
    Fallthrough,
    /// A service's name: its answer needs the service's data.
    Service {
        service: String,
        reserved: Option<Reserved>,
        rest: Rest,
        case_sensitive: bool,
    },
}

/// An answer in the answer cache, with its service's marks (if built from a service) beside it:
/// a hit then reads the answer's line and the marks' line at once, both addressed from the map's
/// slot, rather than the marks only once the answer's line has come (a cache miss each, one
/// after the other, most of the hit's own time in the profile).
#[derive(Clone)]
struct Cached {
    answer: Arc<Answer>,
    marks: Option<Arc<SlotMarks>>,
    /// Where the answer's records lie on the heap (`RecordSet::heap_parts`): prefetch hints,
    /// kept here so that `Engine::prepare` needs no read of the answer itself (a miss).
    records_at: [usize; 2],
    records_len: [u32; 2],
}

impl Cached {
    fn new(answer: Arc<Answer>) -> Cached {
        let marks = answer.service.as_ref().map(|s| s.marks.clone());
        let [bytes, ends] = answer.records.heap_parts();
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Cached { records_at: [bytes.0, ends.0], records_len: [len(bytes.1), len(ends.1)], answer, marks }
    }

    /// Starts loading into the CPU cache what a hit on it reads: the answer, its service's
    /// marks, its records.
    fn prefetch(&self) {
        prefetch::lines(Arc::as_ptr(&self.answer) as usize, std::mem::size_of::<Answer>());
        if let Some(m) = &self.marks {
            prefetch::lines(Arc::as_ptr(m) as usize, std::mem::size_of::<SlotMarks>());
        }
        for (at, len) in self.records_at.into_iter().zip(self.records_len) {
            prefetch::lines(at, len as usize);
        }
    }

    /// Whether the answer still holds: its service's generation (read through the slot's own
    /// pointer) and its zone and catalog generations.
    fn is_current(&self) -> bool {
        let service_holds = match (&self.marks, &self.answer.service) {
            (Some(m), Some(s)) => m.generation.load(Ordering::Acquire) == s.generation,
            _ => true,
        };
        service_holds && deps_hold(&self.answer.deps)
    }
}

/// A UDP thread's own copies (`copies`) of the entries it has answered from: the answer map's,
/// and the forward cache's. An answer map copy holds while its answer is current (the
/// generations `Cached::is_current` checks), as the shared entry does; one that is not is
/// looked for in the shared map again. So a copy may outlive its shared entry's eviction, never
/// its validity. Forward cache copies: `forward::cache::ThreadEntries`.
#[derive(Default)]
pub struct ThreadCopies {
    answers: Copies<Cached>,
    forwarded: forward::cache::ThreadEntries,
}

impl ThreadCopies {
    /// Keeps a copy of the shared map's entry for `key`, at most `max` (`max_cached_answers`).
    fn keep(&mut self, key: &[u8], entry: Cached, max: usize) {
        self.answers.keep(key, entry, max);
    }

    /// Copies of the answer map's entries.
    pub fn answers(&self) -> usize {
        self.answers.len()
    }

    /// Copies of the forward cache's entries.
    pub fn forwarded(&self) -> usize {
        self.forwarded.len()
    }
}

/// What `Engine::prepare` found: entries of the answer map and of the forward cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prefetched {
    pub answers: usize,
    pub forwarded: usize,
}

/// A received batch's queries, each parsed and keyed once (`Engine::prepare`), to be answered
/// one by one (`Engine::answer_prepared`).
pub struct Batch<'p> {
    queries: SmallVec<[Prepared<'p>; 32]>,
    /// The queries' keys back to back, each the forward cache's (`forward::key_into`).
    keys: SmallVec<[u8; 1536]>,
    pub found: Prefetched,
}

struct Prepared<'p> {
    packet: &'p [u8],
    parsed: Result<Query<'p>, Reject>,
    /// Where its key lies in `Batch::keys`; empty when the packet did not parse.
    key: std::ops::Range<usize>,
    /// False when the prefetch steps found the key missing from the answer map.
    look_in_answers: bool,
}

/// When a query was read: a monotonic instant its latency counts from, and the wall-clock ms
/// its answer marks its service's last use with and measures the data's age against. The UDP
/// loop reads both once per received batch, for every query in it: reading them per query (with
/// the latency's end, three clock reads per hit) was 1.5-2% of the core at saturation, and a
/// query's latency then counts from when its batch was read, which it waited in.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub at: Instant,
    pub wall_ms: u64,
}

impl Received {
    pub fn now() -> Received {
        Received { at: Instant::now(), wall_ms: now_ms() }
    }
}

pub struct Engine {
    cache: Arc<Cache>,
    /// Keyed and hashed as `prefetch::slot` expects (`prefetch::Key`, `prefetch::KeyHasher`).
    answers: DashMap<prefetch::Key, Cached, prefetch::KeyHasher>,
    /// Every insertion into `answers` in order, with the answer's address: when full, the
    /// oldest goes (if that key still holds that answer). A flood of new names evicts one entry
    /// per insertion, never the whole cache in one sweep (a sweep of 100,000 entries stalled
    /// the UDP loop for tens of milliseconds, and queries were lost).
    order: Mutex<VecDeque<(prefetch::Key, usize)>>,
    /// Answers dropped to stay within `max_cached_answers`.
    evicted: AtomicU64,
    /// Admission of negative answers (NXDOMAIN, REFUSED): the fingerprints of keys answered
    /// once, by slot. Such an answer is stored only when its key is answered again while its
    /// fingerprint is still in its slot, so a flood of one-off names (random subdomains) neither
    /// pays to be stored nor pushes the answers clients ask for again out of the cache.
    seen_once: Box<[AtomicU32]>,
    /// Both swapped whole on reload (SIGHUP); a query uses what was current when it came in.
    forwarder: ArcSwapOption<Forwarder>,
    settings: ArcSwap<EngineSettings>,
    /// `settings.query_log`, read by every query: a flag costs less than a load of the settings.
    query_log: AtomicBool,
    /// SOA serial: the start time, so it moves when a restart may have changed anything.
    serial: u32,
}

/// Slots of the negative answers' admission filter (4 bytes each): at 100,000 one-off names a
/// second, a slot holds a fingerprint for about half a second on average.
const SEEN_ONCE_BITS: u32 = 16;

fn limit(q: &Query, transport: Transport) -> usize {
    match transport {
        Transport::Udp => q.udp_limit(),
        Transport::Tcp => u16::MAX as usize,
    }
}

impl Engine {
    pub fn new(cache: Arc<Cache>, forwarder: Option<Arc<Forwarder>>, settings: EngineSettings) -> Engine {
        Engine {
            cache,
            answers: DashMap::with_hasher(prefetch::KeyHasher::default()),
            order: Mutex::new(VecDeque::new()),
            evicted: AtomicU64::new(0),
            seen_once: (0..1usize << SEEN_ONCE_BITS).map(|_| AtomicU32::new(0)).collect(),
            forwarder: ArcSwapOption::new(forwarder),
            query_log: AtomicBool::new(settings.query_log),
            settings: ArcSwap::from_pointee(settings),
            serial: (now_ms() / 1000) as u32,
        }
    }

    pub fn forwarder(&self) -> Option<Arc<Forwarder>> {
        self.forwarder.load_full()
    }

    /// Takes a reloaded config. Answers already cached stay: the caller moves the zones'
    /// generation when what they say changes (zones, server name, forwarding on or off).
    pub fn reconfigure(&self, settings: EngineSettings, forwarder: Option<Arc<Forwarder>>) {
        self.query_log.store(settings.query_log, Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
        self.forwarder.store(forwarder);
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The hot path: answers from the answer cache or the forward cache, or from the packet alone
    /// when it is an error or the client may ask nothing. What it answers is counted in `counts`.
    pub fn answer_cached(
        &self,
        packet: &[u8],
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
        received: Received,
        counts: &mut impl Counts,
    ) -> Fast {
        let batch = self.prepare(None, std::iter::once(packet), false);
        self.answer_prepared(None, &batch, 0, transport, client, out, received, counts)
    }

    /// `answer_cached` for the `i`th query of a batch that `prepare` parsed, keyed and looked up;
    /// through `own`, the calling thread's copies of the caches' entries, when it has them (the
    /// UDP threads: `ThreadCopies`).
    #[allow(clippy::too_many_arguments)]
    pub fn answer_prepared(
        &self,
        mut own: Option<&mut ThreadCopies>,
        batch: &Batch,
        i: usize,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
        received: Received,
        counts: &mut impl Counts,
    ) -> Fast {
        let Some(prepared) = batch.queries.get(i) else { return Fast::Dropped };
        // The forward cache's key (`forward::key_into`); the answer map's is that without its
        // last byte.
        let key = &batch.keys[prepared.key.clone()];
        let started = received.at;
        let packet = prepared.packet;
        let q = match &prepared.parsed {
            Ok(q) => q,
            Err(Reject::Drop) => return Fast::Dropped,
            Err(Reject::FormErr { id, flags, question_end }) => {
                wire::write_error(packet, *id, *flags, *question_end, RCODE_FORMERR, out);
                self.count(counts, Source::Refused, None, client, out, started);
                return Fast::Answered;
            }
            Err(Reject::NotImp { id, flags, question_end }) => {
                wire::write_error(packet, *id, *flags, *question_end, RCODE_NOTIMP, out);
                self.count(counts, Source::Refused, None, client, out, started);
                return Fast::Answered;
            }
        };
        if let Some(edns) = q.edns
            && edns.version > 0
        {
            // RFC 6891 §6.1.3: BADVERS, in the OPT's extended rcode, nothing else.
            let none: &[&[u8]] = &[];
            let s = Sections {
                rcode: 0,
                authoritative: false,
                recursion_available: false,
                answer: &none,
                authority: &none,
                additional: &none,
                opt: OptOut { extended_rcode: (RCODE_BADVERS >> 4) as u8, ede: None },
            };
            wire::write_response(q, &s, limit(q, transport), out);
            counts.query(Source::Refused, q.qtype, metrics::RCODE_BADVERS_INDEX, started);
            return Fast::Answered;
        }
        let settings = self.settings.load();
        let forwarder = self.forwarder.load();
        let zones_allowed = settings.allow_query.allows(client);
        let recursion_allowed = forwarder.is_some() && settings.allow_recursion.allows(client);
        if !zones_allowed && !recursion_allowed {
            Self::prohibited().write(q, limit(q, transport), 0, out);
            self.count(counts, Source::Refused, Some(q), client, out, started);
            return Fast::Answered;
        }
        let answer_key = &key[..key.len() - 1];
        let mut hit = |c: &Cached| {
            let a = &c.answer;
            if zones_allowed || a.rcode == RCODE_REFUSED {
                let now = received.wall_ms;
                a.write(q, limit(q, transport), now, out);
                self.count_answer(counts, a, q, client, out, now, metrics::Lookup::Hit, started);
                return Fast::Answered;
            }
            Fast::Miss
        };
        if prepared.look_in_answers {
            if let Some(c) = own.as_deref().and_then(|o| o.answers.get(answer_key)).filter(|c| c.is_current())
            {
                return hit(c);
            }
            // Not copied yet, or the copy no longer holds: the shared map may have a newer one.
            if let Some(c) = self.answers.get(answer_key)
                && c.is_current()
            {
                if let Some(o) = own.as_deref_mut() {
                    o.keep(answer_key, Cached::clone(&c), settings.max_cached_answers);
                }
                return hit(&c);
            }
        }
        if let Some(f) = forwarder.as_ref()
            && recursion_allowed
        {
            let zones_generation = self.cache.zones_generation.load(Ordering::Acquire);
            let now = forward::mono_ms_at(received.at);
            if let Some(served) = f.cached(
                own.map(|o| &mut o.forwarded),
                q,
                key,
                zones_generation,
                limit(q, transport),
                now,
                out,
            ) {
                self.count_forwarded(counts, served, q, client, out, started);
                return Fast::Answered;
            }
        }
        // Not cached, but perhaps settled by the zone table and the catalog alone (a new name
        // under a zone: NXDOMAIN): answered here rather than on a task of its own.
        if zones_allowed && (q.qclass == CLASS_IN || q.qclass == CLASS_ANY) {
            let zc = ZoneCtx {
                settings: &settings,
                forwarding: forwarder.is_some(),
                zones_generation: self.cache.zones_generation.load(Ordering::Acquire),
            };
            if let Some(a) = self.resolve_zone_now(q, answer_key, zc) {
                let now = received.wall_ms;
                a.write(q, limit(q, transport), now, out);
                self.count_answer(counts, &a, q, client, out, now, metrics::Lookup::Miss, started);
                return Fast::Answered;
            }
        }
        Fast::Miss
    }

    /// Parses and keys each of `packets` once, for `answer_prepared`. With `prefetch`, also
    /// starts loading into the CPU cache what answering each from the caches will read: the UDP
    /// loop asks for it for a batch of more than one, before it answers the first, so that the
    /// queries' cache misses overlap rather than come one after another. Over 10,000 names most
    /// of a hit's user time was those misses.
    ///
    /// The prefetch steps go over the batch, each loading what the next reads:
    /// 1. each key's place in the answer map (its control bytes and first buckets, found from
    ///    the table's address and size alone: no read of the table's contents);
    /// 2. each entry found there: its answer, its service's marks and its records (hints kept
    ///    in the entry: no read of the answer either). For a key not there, its place in the
    ///    forward cache, if names are forwarded; its answer is then not looked for in the answer
    ///    map again (one probe of the map per query);
    /// 3. each forward cache entry found there, and its template.
    ///
    /// With `own` (a UDP thread's copies), both maps are looked for in the thread's copies:
    /// a key neither has a copy of is then looked for in the shared answer map, then in the
    /// shared forward cache, and what is found is copied. So a forwarded name the thread has
    /// answered before reads no shared map either.
    pub fn prepare<'p>(
        &self,
        mut own: Option<&mut ThreadCopies>,
        packets: impl Iterator<Item = &'p [u8]>,
        prefetch: bool,
    ) -> Batch<'p> {
        let mut batch =
            Batch { queries: SmallVec::new(), keys: SmallVec::new(), found: Prefetched::default() };
        let mut key = [0u8; KEY_ROOM];
        for packet in packets {
            let parsed = wire::parse_query(packet);
            let start = batch.keys.len();
            if let Ok(q) = &parsed {
                let n = forward::key_into(q, &mut key);
                if prefetch {
                    match own.as_deref() {
                        Some(o) => o.answers.prefetch_slot(&key[..n - 1]),
                        None => prefetch::slot(&self.answers, &key[..n - 1]),
                    }
                }
                batch.keys.extend_from_slice(&key[..n]);
            }
            let key = start..batch.keys.len();
            batch.queries.push(Prepared { packet, parsed, key, look_in_answers: true });
        }
        if !prefetch {
            return batch;
        }
        let forwarder = self.forwarder.load();
        let forward_cache = forwarder.as_ref().map(|f| f.cache());
        let max = self.settings.load().max_cached_answers;
        // The queries without an entry (or a copy of one) in the answer map, by index.
        let mut rest: SmallVec<[usize; 32]> = SmallVec::new();
        let Batch { queries, keys, found } = &mut batch;
        for (i, q) in queries.iter_mut().enumerate() {
            if q.key.is_empty() {
                continue;
            }
            let answer_key = &keys[q.key.start..q.key.end - 1];
            let in_answers = match own.as_deref() {
                Some(o) => o.answers.get(answer_key).map(|c| c.prefetch()).is_some(),
                None => self.answers.get(answer_key).map(|c| c.prefetch()).is_some(),
            };
            if in_answers {
                found.answers += 1;
                continue;
            }
            rest.push(i);
            match (own.as_deref(), forward_cache) {
                (Some(o), Some(c)) => c.prefetch_own_slot(&o.forwarded, &keys[q.key.clone()]),
                (None, Some(c)) => c.prefetch_slot(&keys[q.key.clone()]),
                (_, None) => {}
            }
        }
        for i in rest {
            let q = &mut queries[i];
            let key = &keys[q.key.clone()];
            let in_forwarded = match own.as_deref_mut() {
                None => forward_cache.is_some_and(|c| c.prefetch_entry(key)),
                Some(o) => {
                    let answer_key = &key[..key.len() - 1];
                    if forward_cache.is_some_and(|c| c.prefetch_own_entry(&o.forwarded, key)) {
                        true
                    } else if let Some(c) = self.answers.get(answer_key).map(|c| Cached::clone(&c)) {
                        // Not answered by this thread yet (or not since its copy went).
                        c.prefetch();
                        o.keep(answer_key, c, max);
                        found.answers += 1;
                        continue;
                    } else {
                        forward_cache.is_some_and(|c| c.prefetch_copied_entry(&mut o.forwarded, key))
                    }
                }
            };
            q.look_in_answers = false;
            found.forwarded += in_forwarded as usize;
        }
        batch
    }

    /// Counts a query in `queries_total` and `request_duration_seconds`, and logs it when the
    /// query log is on.
    fn count(
        &self,
        counts: &mut impl Counts,
        source: Source,
        q: Option<&Query>,
        client: IpAddr,
        response: &[u8],
        started: Instant,
    ) {
        let rcode = metrics::rcode_index(response);
        counts.query(source, q.map_or(0, |q| q.qtype), rcode, started);
        if self.query_log.load(Ordering::Relaxed) {
            let elapsed = started.elapsed();
            tracing::info!(
                target: "cloudmap_dns::query",
                %client,
                name = %q.map_or_else(|| "-".into(), |q| wire::name_to_string(q.qname)),
                qtype = q.map_or(0, |q| q.qtype),
                rcode = metrics::rcode_label(rcode),
                source = metrics::source_label(source),
                latency_us = elapsed.as_micros() as u64,
                "query"
            );
        }
    }

    /// Counts an answer from the namespace side (or a REFUSED for an outside name).
    #[allow(clippy::too_many_arguments)]
    fn count_answer(
        &self,
        counts: &mut impl Counts,
        a: &Answer,
        q: &Query,
        client: IpAddr,
        response: &[u8],
        now: u64,
        lookup: metrics::Lookup,
        started: Instant,
    ) {
        if a.rcode == RCODE_REFUSED {
            return self.count(counts, Source::Refused, Some(q), client, response, started);
        }
        let age = match a.confirmed_ms() {
            Some(c) => Duration::from_millis(now.saturating_sub(c)),
            None => Duration::ZERO,
        };
        match a.stale_reason {
            Some(reason) => {
                counts.lookup(CacheKind::Namespace, metrics::Lookup::Stale, Some(age));
                metrics::get().stale(CacheKind::Namespace, reason);
            }
            None => counts.lookup(CacheKind::Namespace, lookup, Some(age)),
        }
        if a.fail_open {
            metrics::get().fail_open.inc();
        }
        self.count(counts, Source::Namespace, Some(q), client, response, started);
    }

    #[allow(clippy::too_many_arguments)]
    fn count_forwarded(
        &self,
        counts: &mut impl Counts,
        served: forward::Served,
        q: &Query,
        client: IpAddr,
        response: &[u8],
        started: Instant,
    ) {
        if let Some(lookup) = served.lookup {
            counts.lookup(CacheKind::Forward, lookup, Some(served.age));
        }
        if let Some(reason) = served.stale_reason {
            metrics::get().stale(CacheKind::Forward, reason);
        }
        self.count(counts, Source::Forward, Some(q), client, response, started);
    }

    /// The whole path: the answer cache, then whatever it could not answer.
    pub async fn answer(&self, packet: &[u8], transport: Transport, client: IpAddr) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        let mut counts = metrics::get().direct();
        match self.answer_cached(packet, transport, client, &mut out, Received::now(), &mut counts) {
            Fast::Answered => Some(out),
            Fast::Dropped => None,
            Fast::Miss => self.answer_miss(packet, transport, client).await,
        }
    }

    /// What `answer_cached` could not answer (it said `Fast::Miss` for this packet).
    pub async fn answer_miss(&self, packet: &[u8], transport: Transport, client: IpAddr) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        let started = Instant::now();
        let counts = &mut metrics::get().direct();
        let q = wire::parse_query(packet).ok()?;
        let limit = limit(&q, transport);
        let mut lower = [0u8; 255];
        let n = wire::lower_name_into(q.qname, &mut lower);
        let lower = &lower[..n];
        let settings = self.settings.load_full();
        let forwarder = self.forwarder.load_full();
        let zones_generation = self.cache.zones_generation.load(Ordering::Acquire);
        let zones = self.cache.zones().await;
        let (target, deps) = match zones.find(lower) {
            _ if q.qclass != CLASS_IN && q.qclass != CLASS_ANY => {
                self.refused().write(&q, limit, 0, &mut out);
                self.count(counts, Source::Refused, Some(&q), client, &out, started);
                return Some(out);
            }
            Some((zone, offset)) => {
                if !settings.allow_query.allows(client) {
                    Self::prohibited().write(&q, limit, 0, &mut out);
                    self.count(counts, Source::Refused, Some(&q), client, &out, started);
                    return Some(out);
                }
                let zone = zone.clone();
                let ctx = ZoneCtx { settings: &settings, forwarding: forwarder.is_some(), zones_generation };
                match self.resolve_zone(&q, lower, &zone, offset, ctx).await {
                    ZoneOutcome::Answer(a) => {
                        let now = now_ms();
                        a.write(&q, limit, now, &mut out);
                        self.count_answer(counts, &a, &q, client, &out, now, metrics::Lookup::Miss, started);
                        return Some(out);
                    }
                    ZoneOutcome::Fallthrough(deps) => {
                        (forwarder.as_ref().map(|f| f.target_of(Some(&zone.wire))), deps)
                    }
                }
            }
            None => {
                if forwarder.is_some() && !settings.allow_recursion.allows(client) {
                    Self::prohibited().write(&q, limit, 0, &mut out);
                    self.count(counts, Source::Refused, Some(&q), client, &out, started);
                    return Some(out);
                }
                (forwarder.as_ref().map(|f| f.target_of(None)), Deps::new())
            }
        };
        drop(zones);
        match (&forwarder, target) {
            (Some(f), Some(target)) => {
                let mut key = [0u8; KEY_ROOM];
                let n = forward::key_into(&q, &mut key);
                let served = f.answer(&q, &key[..n], target, zones_generation, deps, limit, &mut out).await;
                self.count_forwarded(counts, served, &q, client, &out, started);
            }
            _ => {
                // No upstream: the same REFUSED for every outside name, cached like an answer.
                let mut a = self.refused();
                a.deps = Deps::from_iter([(self.cache.zones_generation.clone(), zones_generation)]);
                let a = self.store(&q, a, false, settings.max_cached_answers);
                a.write(&q, limit, now_ms(), &mut out);
                self.count(counts, Source::Refused, Some(&q), client, &out, started);
            }
        }
        Some(out)
    }

    /// Entries in the answer cache (for `cache_entries{cache="namespace"}`).
    pub fn cached_answers(&self) -> usize {
        self.answers.len()
    }

    pub fn evicted_answers(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn refused(&self) -> Answer {
        let mut a = Answer::new(RCODE_REFUSED);
        a.authoritative = false;
        a.set_ede(EDE_PROHIBITED, "not a namespace zone, and no upstream is configured");
        a
    }

    /// For clients outside `allow_query` / `allow_recursion`.
    fn prohibited() -> Answer {
        let mut a = Answer::new(RCODE_REFUSED);
        a.authoritative = false;
        a.cacheable = false;
        a.set_ede(EDE_PROHIBITED, "this client may not query this server for this name");
        a
    }

    fn outage() -> Answer {
        let mut a = Answer::new(RCODE_SERVFAIL);
        a.cacheable = false;
        a.set_ede(EDE_NO_REACHABLE_AUTHORITY, "Cloud Map is unreachable and nothing is cached");
        a
    }

    /// `resolve_zone` for what needs no waiting: the zone table and the namespace's catalog are
    /// current and settle the name (the apex, no such name, an empty non-terminal). `None`: the
    /// rest of the path decides (a service, a fallthrough, something to load first).
    fn resolve_zone_now(&self, q: &Query<'_>, key: &[u8], zc: ZoneCtx<'_>) -> Option<Arc<Answer>> {
        // The key is the lower-cased name, then type and class.
        let lower = &key[..key.len().saturating_sub(4)];
        let zones = self.cache.zones_now()?;
        let (zone, offset) = zones.find(lower)?;
        // A new name's answer is likely negative and then meets the admission filter: its slot
        // is fetched from memory while the answer is built, not when `store` needs it.
        self.prefetch_seen(key);
        let ctx = self.build_ctx(q, zone, offset, zc);
        let mut deps = Deps::new();
        deps.push((self.cache.zones_generation.clone(), zc.zones_generation));
        let answer = if offset == 0 {
            build::apex(&ctx)
        } else {
            let ns = self.cache.namespace(&zone.namespace);
            let catalog_gen = ns.catalog_generation.load(Ordering::Acquire);
            let catalog = self.cache.catalog_now(&ns)?;
            deps.push((ns.catalog_generation.clone(), catalog_gen));
            let parsed =
                build::parse(&wire::labels(&lower[..offset]), &wire::labels(&q.qname[..offset]), &catalog);
            match Self::settled(parsed, &ctx, zone.fallthrough && zc.forwarding) {
                Settled::Answer(a) => a,
                Settled::Fallthrough | Settled::Service { .. } => return None,
            }
        };
        Some(self.finish_zone_answer(q, answer, deps, false, zc))
    }

    fn build_ctx<'a>(&self, q: &Query<'_>, zone: &'a Zone, offset: usize, zc: ZoneCtx<'a>) -> BuildCtx<'a> {
        BuildCtx {
            zone,
            zone_offset: offset,
            qtype: q.qtype,
            server_name: &zc.settings.server_name,
            serial: self.serial,
        }
    }

    /// What the catalog's reading of a name settles without the service's data.
    fn settled(parsed: Parsed, ctx: &BuildCtx, fallthrough: bool) -> Settled {
        match parsed {
            Parsed::Apex => Settled::Answer(build::apex(ctx)),
            Parsed::NoSuchName if fallthrough => Settled::Fallthrough,
            Parsed::NoSuchName => Settled::Answer(build::negative(ctx, RCODE_NXDOMAIN)),
            Parsed::EmptyNonTerminal => Settled::Answer(build::negative(ctx, RCODE_NOERROR)),
            Parsed::Service { service, reserved, rest, case_sensitive } => {
                Settled::Service { service, reserved, rest, case_sensitive }
            }
        }
    }

    fn finish_zone_answer(
        &self,
        q: &Query<'_>,
        mut answer: Answer,
        deps: Deps,
        case_sensitive: bool,
        zc: ZoneCtx<'_>,
    ) -> Arc<Answer> {
        answer.deps = deps;
        answer.recursion_available = zc.forwarding;
        self.store(q, answer, case_sensitive, zc.settings.max_cached_answers)
    }

    /// Answers a name in a namespace zone, from the namespace cache.
    async fn resolve_zone(
        &self,
        q: &Query<'_>,
        lower: &[u8],
        zone: &Arc<Zone>,
        offset: usize,
        zc: ZoneCtx<'_>,
    ) -> ZoneOutcome {
        let mut deps = Deps::new();
        deps.push((self.cache.zones_generation.clone(), zc.zones_generation));
        let mut case_sensitive = false;
        let fallthrough = zone.fallthrough && zc.forwarding;
        let ctx = self.build_ctx(q, zone, offset, zc);
        let answer = if offset == 0 {
            build::apex(&ctx)
        } else {
            let ns = self.cache.namespace(&zone.namespace);
            let catalog_gen = ns.catalog_generation.load(Ordering::Acquire);
            match self.cache.catalog(&ns).await {
                None => Self::outage(),
                Some(catalog) => {
                    deps.push((ns.catalog_generation.clone(), catalog_gen));
                    let parsed = build::parse(
                        &wire::labels(&lower[..offset]),
                        &wire::labels(&q.qname[..offset]),
                        &catalog,
                    );
                    match Self::settled(parsed, &ctx, fallthrough) {
                        Settled::Answer(a) => a,
                        Settled::Fallthrough => return ZoneOutcome::Fallthrough(deps),
                        Settled::Service { service, reserved, rest, case_sensitive: cs } => {
                            case_sensitive = cs;
                            match self.cache.service(&ns, &service).await {
                                Lookup::Found { slot, generation, view, stale, confirmed_age } => {
                                    let status = Status {
                                        backend: self.cache.backend_kind(),
                                        pushed: self.cache.pushed(),
                                        confirmed_age,
                                        refresh: self.cache.effective_refresh(),
                                        stale,
                                    };
                                    let mut a = build::service(&ctx, &view, reserved, &rest, &status);
                                    a.service = Some(ServiceDep {
                                        marks: slot.marks.clone(),
                                        generation,
                                        aged: !status.pushed,
                                    });
                                    if stale {
                                        a.stale_reason = Some(slot.stale_reason());
                                    }
                                    a
                                }
                                Lookup::NotFound if fallthrough => return ZoneOutcome::Fallthrough(deps),
                                Lookup::NotFound => build::negative(&ctx, RCODE_NXDOMAIN),
                                Lookup::Outage => Self::outage(),
                            }
                        }
                    }
                }
            }
        };
        ZoneOutcome::Answer(self.finish_zone_answer(q, answer, deps, case_sensitive, zc))
    }

    /// Keeps `answer` in the answer cache for the next query (unless it may not be reused).
    fn store(&self, q: &Query<'_>, answer: Answer, case_sensitive: bool, max: usize) -> Arc<Answer> {
        let answer = Arc::new(answer);
        if answer.cacheable && !case_sensitive {
            let mut key = [0u8; KEY_ROOM];
            let n = wire::key_into(q, &mut key);
            if answer.rcode != RCODE_NOERROR && !self.seen_before(&key[..n]) {
                return answer;
            }
            let key = prefetch::Key::from_slice(&key[..n]);
            let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
            // An evicted answer is rebuilt from the namespace cache on its next query, without
            // backend calls. A key cached again leaves an older record that evicts nothing.
            while order.len() >= max.max(1) {
                let Some((old, at)) = order.pop_front() else { break };
                if self.answers.remove_if(&old, |_, c| Arc::as_ptr(&c.answer) as usize == at).is_some() {
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
            order.push_back((key.clone(), Arc::as_ptr(&answer) as usize));
            self.answers.insert(key, Cached::new(answer.clone()));
        }
        answer
    }

    fn seen_slot(&self, key: &[u8]) -> (&AtomicU32, u64) {
        let hash = self.answers.hasher().hash_one(key);
        (&self.seen_once[(hash >> (64 - SEEN_ONCE_BITS)) as usize], hash)
    }

    /// Starts loading `key`'s slot of the admission filter into the cache. A slot read is a
    /// cache miss (the filter is 256 KiB, read at random): a tenth of a zone miss's user time.
    fn prefetch_seen(&self, key: &[u8]) {
        let (slot, _) = self.seen_slot(key);
        prefetch::lines(prefetch::addr_of(slot), std::mem::size_of_val(slot));
    }

    /// Whether `key` was seen here recently (and notes it if not): see `seen_once`.
    fn seen_before(&self, key: &[u8]) -> bool {
        // The slot comes from the high bits, the fingerprint from the low ones; nonzero, as a
        // zeroed slot holds nothing.
        let (slot, hash) = self.seen_slot(key);
        let fingerprint = hash as u32 | 1;
        // A load, and a store only when it changes: no locked instruction on the path.
        if slot.load(Ordering::Relaxed) == fingerprint {
            return true;
        }
        slot.store(fingerprint, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::Embedded;
    use crate::cache::{CacheSettings, ZoneSource};
    use crate::registry::{Registry, RegistrySettings};

    /// The value of the series `series` (name and labels) on the metrics page; 0 if absent.
    fn metric_value(series: &str) -> f64 {
        let text = metrics::get().render();
        let prefix = format!("{series} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }

    /// `request_duration_seconds_sum{source}` from the metrics page.
    fn duration_sum(source: &str) -> f64 {
        metric_value(&format!("cloudmap_dns_request_duration_seconds_sum{{source=\"{source}\"}}"))
    }

    /// `queries_total{source, qtype, rcode}` from the metrics page.
    fn queries_counted(source: &str, qtype: &str, rcode: &str) -> u64 {
        let series =
            format!("cloudmap_dns_queries_total{{qtype=\"{qtype}\",rcode=\"{rcode}\",source=\"{source}\"}}");
        metric_value(&series) as u64
    }

    /// A batch read 300 ms ago, which the loop is only now coming to.
    fn read_300_ms_ago() -> Received {
        Received { at: Instant::now() - Duration::from_millis(300), wall_ms: now_ms() }
    }

    /// An engine over an empty registry that serves loopback clients only.
    fn loopback_engine(dir: &std::path::Path) -> Engine {
        let registry = Registry::open(dir, RegistrySettings::default()).unwrap();
        let second = Duration::from_secs(1);
        let cache = Cache::new(
            Arc::new(Embedded::new(registry)),
            CacheSettings {
                refresh: second,
                health_refresh: second,
                idle_timeout: second,
                max_stale: second,
                catalog_refresh: second,
                service_attributes: true,
                rate_limit: 100.0,
                snapshot: None,
            },
            ZoneSource { explicit: Vec::new(), automatic: None },
        );
        Engine::new(cache, None, loopback_settings())
    }

    fn loopback_settings() -> EngineSettings {
        let loopback = Acl::new(&crate::acl::loopback());
        EngineSettings {
            server_name: wire::encode_name("localhost").unwrap(),
            max_cached_answers: 10,
            allow_query: loopback.clone(),
            allow_recursion: loopback,
            query_log: false,
        }
    }

    /// Asks `query` from outside the loopback ACL: answered at once, REFUSED.
    fn refused_from_outside(engine: &Engine, query: &[u8], received: Received, counts: &mut impl Counts) {
        let mut out = Vec::new();
        let fast =
            engine.answer_cached(query, Transport::Udp, [192, 0, 2, 1].into(), &mut out, received, counts);
        assert!(matches!(fast, Fast::Answered));
        assert_eq!(out[3] & 0x0f, RCODE_REFUSED);
    }

    /// A query's latency counts from when it was read (`Received`, once per batch), not from
    /// when the loop came to it.
    #[test]
    fn latency_counts_from_when_the_query_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let engine = loopback_engine(dir.path());
        let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1];
        // From outside the ACL, so REFUSED (counted under `refused`) without any lookup.
        let received = read_300_ms_ago();
        let before = duration_sum("refused");
        refused_from_outside(&engine, &query, received, &mut metrics::get().direct());
        assert!(duration_sum("refused") - before >= 0.3, "latency counted from when the query was read");
    }

    /// On the UDP loop a batch's queries are counted in its `Tally`, and reach the shared metrics
    /// when it is published, each with the time from the batch's read to the batch's end as its
    /// latency.
    #[test]
    fn a_batch_is_counted_when_its_tally_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let engine = loopback_engine(dir.path());
        // HTTPS (type 65), which no other test asks, from outside the ACL: REFUSED.
        let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 65, 0, 1];
        let received = read_300_ms_ago();
        let (before, sum_before) = (queries_counted("refused", "HTTPS", "REFUSED"), duration_sum("refused"));
        let mut tally = metrics::Tally::new();
        for _ in 0..2 {
            refused_from_outside(&engine, &query, received, &mut tally);
        }
        tally.end_batch(received.at);
        assert_eq!(tally.pending(), 1);
        assert_eq!(
            queries_counted("refused", "HTTPS", "REFUSED"),
            before,
            "nothing counted before it is published"
        );
        tally.publish();
        assert_eq!(tally.pending(), 0);
        assert_eq!(queries_counted("refused", "HTTPS", "REFUSED"), before + 2);
        assert!(duration_sum("refused") - sum_before >= 0.6, "each counted from the batch's read");
        tally.flush(received.at);
        assert_eq!(
            queries_counted("refused", "HTTPS", "REFUSED"),
            before + 2,
            "publishing empties the tally"
        );
    }

    /// The prefetch steps make each key as a lookup does: a name in the answer map is looked for
    /// there only, one that is not in the forward cache with its flags byte, and a batch's hits
    /// are then answered from those caches, each looked for in the answer map once.
    #[test]
    fn a_batch_is_prefetched_from_the_cache_that_answers_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = loopback_engine(dir.path());
        let query = |id: u8, name: &[u8], cd: bool| {
            let mut p = vec![0, id, 1, if cd { 0x10 } else { 0 }, 0, 1, 0, 0, 0, 0, 0, 1];
            p.extend_from_slice(name);
            p.extend_from_slice(&[0, 1, 0, 1]);
            p.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0x80, 0, 0, 0]); // OPT, DO
            p
        };
        let zone_name = query(1, b"\x03web\x02ns\x00", false);
        let forwarded = query(2, b"\x03WWW\x07example\x03org\x00", false);
        let unknown = query(3, b"\x05other\x07example\x03org\x00", false);
        let forwarded_cd = query(4, b"\x03www\x07example\x03org\x00", true);
        let mut key = [0u8; KEY_ROOM];
        let n = wire::key_into(&wire::parse_query(&zone_name).unwrap(), &mut key);
        engine.answers.insert(prefetch::Key::from_slice(&key[..n]), Cached::new(answer_of(2)));
        let config = crate::config::Config::default();
        let f = Arc::new(Forwarder::new(&["127.0.0.1:9".parse().unwrap()], &[], config.forward_settings()));
        let q = wire::parse_query(&forwarded).unwrap();
        let n = forward::key_into(&q, &mut key);
        let template = crate::forward::reply::bare(q.question, RCODE_NOERROR);
        let zones_generation = engine.cache().zones_generation.load(Ordering::Acquire);
        let entry = forward::cache::Entry::new(
            template,
            None,
            forward::mono_ms(),
            60,
            0,
            zones_generation,
            Deps::new(),
        );
        f.cache().insert(&key[..n], entry, forward::mono_ms());
        let batch = [&zone_name[..], &forwarded, &unknown, &forwarded_cd];
        // Without a forwarder nothing is looked for in a forward cache.
        assert_eq!(
            engine.prepare(None, batch.iter().copied(), true).found,
            Prefetched { answers: 1, forwarded: 0 }
        );
        engine.reconfigure(loopback_settings(), Some(f));
        // The forwarded name, found by its lower-cased name and flags; not the CD query's (its
        // key differs), nor the zone name's (answered from the answer map).
        let prepared = engine.prepare(None, batch.iter().copied(), true);
        assert_eq!(prepared.found, Prefetched { answers: 1, forwarded: 1 });
        // Put into the answer map after the prefetch steps found it missing there: a batch's
        // query is not looked for again, a lone query is.
        let q = wire::parse_query(&forwarded).unwrap();
        let n = wire::key_into(&q, &mut key);
        engine
            .answers
            .insert(prefetch::Key::from_slice(&key[..n]), Cached::new(Arc::new(Answer::new(RCODE_NXDOMAIN))));
        let received = Received::now();
        let mut counts = metrics::get().direct();
        let client = [127, 0, 0, 1].into();
        for (i, rcode) in [(0, Some(RCODE_NOERROR)), (1, Some(RCODE_NOERROR)), (3, None)] {
            let mut out = Vec::new();
            let fast = answer_shared(&engine, &prepared, i, &mut out, received);
            assert_eq!(matches!(fast, Fast::Answered), rcode.is_some(), "query {i}");
            if let Some(rcode) = rcode {
                assert_eq!(out[3] & 0x0f, rcode, "query {i}");
            }
        }
        let mut out = Vec::new();
        let fast = engine.answer_cached(&forwarded, Transport::Udp, client, &mut out, received, &mut counts);
        assert!(matches!(fast, Fast::Answered));
        assert_eq!(out[3] & 0x0f, RCODE_NXDOMAIN, "from the answer map");
    }

    /// A batch answers as the same queries one by one do: errors and an unparsed packet too.
    #[test]
    fn a_prepared_batch_answers_as_lone_queries_do() {
        let dir = tempfile::tempdir().unwrap();
        let engine = loopback_engine(dir.path());
        let notimp = [0, 1, 0x28, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1]; // opcode UPDATE
        let formerr = [0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'a'];
        let response = [0, 3, 0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1];
        let badvers =
            [0, 4, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, b'a', 0, 0, 1, 0, 1, 0, 0, 41, 4, 208, 0, 1, 0, 0, 0, 0];
        let batch: [&[u8]; 4] = [&notimp, &formerr, &response, &badvers];
        let prepared = engine.prepare(None, batch.iter().copied(), true);
        let (received, mut counts, client) =
            (Received::now(), metrics::get().direct(), [127, 0, 0, 1].into());
        for (i, packet) in batch.iter().enumerate() {
            let (mut alone, mut batched) = (Vec::new(), Vec::new());
            let a = engine.answer_cached(packet, Transport::Udp, client, &mut alone, received, &mut counts);
            let b = answer_shared(&engine, &prepared, i, &mut batched, received);
            assert_eq!(std::mem::discriminant(&a), std::mem::discriminant(&b), "query {i}");
            assert_eq!(alone, batched, "query {i}");
        }
        let mut out = Vec::new();
        let beyond = answer_shared(&engine, &prepared, 4, &mut out, received);
        assert!(matches!(beyond, Fast::Dropped) && out.is_empty());
    }

    /// A UDP thread answers from its own copy of an answer while the copy holds, even once the
    /// shared map has let it go, and takes the shared map's newer answer once it does not.
    #[test]
    fn a_thread_answers_from_its_own_copies_while_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let engine = loopback_engine(dir.path());
        let query = [0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 2, b'n', b's', 0, 0, 1, 0, 1];
        let mut key = [0u8; KEY_ROOM];
        let n = wire::key_into(&wire::parse_query(&query).unwrap(), &mut key);
        let key = prefetch::Key::from_slice(&key[..n]);
        let generation = Arc::new(AtomicU64::new(1));
        let answer = |records: usize| {
            let mut a = Answer::new(RCODE_NOERROR);
            for i in 0..records {
                a.records.push([i as u8; 16]);
            }
            a.deps.push((generation.clone(), generation.load(Ordering::Acquire)));
            Cached::new(Arc::new(a))
        };
        engine.answers.insert(key.clone(), answer(2));
        let mut own = ThreadCopies::default();
        // The records a query is answered with through `own`, if it is answered from a cache.
        let ask = |own: &mut ThreadCopies| {
            answer_through(&engine, own, &query).map(|out| u16::from_be_bytes([out[6], out[7]]))
        };
        assert_eq!(ask(&mut own), Some(2));
        assert_eq!(own.answers(), 1, "copied on the first hit");
        // Evicted from the shared map: the copy still holds, and answers.
        engine.answers.remove(key.as_slice());
        assert_eq!(ask(&mut own), Some(2), "from the thread's own copy");
        // What the answer was built from changed: the copy no longer holds, and the shared
        // map's answer, built since, replaces it.
        generation.fetch_add(1, Ordering::AcqRel);
        engine.answers.insert(key.clone(), answer(3));
        assert_eq!(ask(&mut own), Some(3), "the newer answer");
        assert_eq!(ask(&mut own), Some(3));
        // Neither holds: not answered from a cache.
        generation.fetch_add(1, Ordering::AcqRel);
        assert_ne!(ask(&mut own), Some(3));
    }

    /// A thread keeps at most `max_cached_answers` copies: past that it starts over.
    #[test]
    fn a_thread_keeps_at_most_the_answer_cache_size() {
        let mut own = ThreadCopies::default();
        let entry = || Cached::new(answer_of(1));
        own.keep(b"a", entry(), 2);
        own.keep(b"b", entry(), 2);
        own.keep(b"b", entry(), 2);
        assert_eq!(own.answers(), 2, "a key kept again replaces its copy");
        own.keep(b"c", entry(), 2);
        assert_eq!(own.answers(), 1, "full: started over with the new one");
        assert!(own.answers.get(b"c").is_some());
    }

    /// Stores in `f`'s cache an upstream's reply to `query`: one A record, 192.0.2.`last`.
    fn store_forwarded(engine: &Engine, f: &Forwarder, query: &[u8], last: u8) {
        let q = wire::parse_query(query).unwrap();
        let mut reply = query.to_vec();
        reply[2..8].copy_from_slice(&[0x81, 0x80, 0, 1, 0, 1]);
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, last]);
        let clamps = forward::reply::Clamps { min_ttl: 0, max_ttl: 3_600, max_negative_ttl: 60 };
        let id = u16::from_be_bytes([query[0], query[1]]);
        let template = forward::reply::accept(&reply, id, q.question, clamps).unwrap();
        let zones_generation = engine.cache().zones_generation.load(Ordering::Acquire);
        let now = forward::mono_ms();
        let entry = forward::cache::Entry::new(template, None, now, 60, 0, zones_generation, Deps::new());
        let mut key = [0u8; KEY_ROOM];
        let n = forward::key_into(&q, &mut key);
        f.cache().insert(&key[..n], entry, now);
    }

    /// A UDP thread answers a forwarded name from its own copy of the forward cache's entry
    /// while that entry is still the cache's: not once it is replaced, swept, routed anew, or of
    /// a forwarder a reload has since replaced.
    #[test]
    fn a_thread_answers_forwarded_names_from_its_own_copies_while_they_are_the_caches() {
        let dir = tempfile::tempdir().unwrap();
        let engine = loopback_engine(dir.path());
        let forwarder = || {
            let settings = crate::config::Config::default().forward_settings();
            Arc::new(Forwarder::new(&["127.0.0.1:9".parse().unwrap()], &[], settings))
        };
        let f = forwarder();
        engine.reconfigure(loopback_settings(), Some(f.clone()));
        let query = [0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w', 2, b'u', b'p', 0, 0, 1, 0, 1];
        let mut own = ThreadCopies::default();
        // The last byte of the address a query is answered with through `own`, if it is
        // answered from a cache.
        let ask = |own: &mut ThreadCopies| answer_through(&engine, own, &query).map(|out| out[out.len() - 1]);
        store_forwarded(&engine, &f, &query, 1);
        assert_eq!(ask(&mut own), Some(1));
        assert_eq!((own.forwarded(), own.answers()), (1, 0), "copied on the first hit");
        assert_eq!(ask(&mut own), Some(1));
        // Replaced in the cache (a refresh): the copy is not the cache's any more.
        store_forwarded(&engine, &f, &query, 2);
        assert_eq!(ask(&mut own), Some(2), "the cache's new reply");
        // Swept from the cache: nothing answers from a cache, and the copy is dropped.
        f.cache().sweep(u64::MAX);
        assert_eq!(ask(&mut own), None);
        assert_eq!(own.forwarded(), 0);
        // The zones changed since it was stored: the name must be routed anew.
        store_forwarded(&engine, &f, &query, 3);
        assert_eq!(ask(&mut own), Some(3));
        engine.cache().zones_generation.fetch_add(1, Ordering::AcqRel);
        assert_eq!(ask(&mut own), None);
        assert_eq!(own.forwarded(), 0, "a copy that gives no answer is dropped");
        // Forwarding switched off and on by a reload: a new forwarder, with a cache of its own.
        store_forwarded(&engine, &f, &query, 4);
        assert_eq!(ask(&mut own), Some(4));
        let g = forwarder();
        store_forwarded(&engine, &g, &query, 5);
        engine.reconfigure(loopback_settings(), Some(g));
        assert_eq!(ask(&mut own), Some(5), "not a copy of the old cache's entry");
        assert_eq!(own.forwarded(), 1);
    }

    /// The response to `query`, the first of a batch of two, answered through a UDP thread's
    /// copies `own` for a loopback client, if it is answered from a cache.
    fn answer_through(engine: &Engine, own: &mut ThreadCopies, query: &[u8]) -> Option<Vec<u8>> {
        let batch = [query, query];
        let prepared = engine.prepare(Some(&mut *own), batch.iter().copied(), true);
        let (mut out, mut counts) = (Vec::new(), metrics::get().direct());
        let client = [127, 0, 0, 1].into();
        let fast = engine.answer_prepared(
            Some(own),
            &prepared,
            0,
            Transport::Udp,
            client,
            &mut out,
            Received::now(),
            &mut counts,
        );
        matches!(fast, Fast::Answered).then_some(out)
    }

    /// `answer_prepared` for query `i` of `prepared` from a loopback client, from the shared
    /// answer map (no thread's copies).
    fn answer_shared(
        engine: &Engine,
        prepared: &Batch,
        i: usize,
        out: &mut Vec<u8>,
        received: Received,
    ) -> Fast {
        let (client, mut counts) = ([127, 0, 0, 1].into(), metrics::get().direct());
        engine.answer_prepared(None, prepared, i, Transport::Udp, client, out, received, &mut counts)
    }

    /// An answer of `records` records of different lengths, so that their ends are kept.
    fn answer_of(records: usize) -> Arc<Answer> {
        let mut a = Answer::new(RCODE_NOERROR);
        for i in 0..records {
            a.records.push(vec![i as u8; 16 + i % 2]);
        }
        Arc::new(a)
    }

    /// The prefetch hints beside a cached answer point at its records' bytes and, once they
    /// spill, at their ends: where a hit reads them.
    #[test]
    fn cached_answers_hold_where_their_records_lie() {
        let few = Cached::new(answer_of(3));
        assert_eq!(few.records_at[0], few.answer.records.heap_parts()[0].0);
        assert_eq!(few.records_len, [49, 0], "3 ends are inline in the answer: no second hint");
        assert_eq!(few.records_at[1], 0);

        let many = Cached::new(answer_of(10));
        assert_eq!(many.records_at[0], many.answer.records.heap_parts()[0].0);
        assert_eq!(many.records_len, [165, 40], "10 ends (u32) on the heap");
        let answer_at = Arc::as_ptr(&many.answer) as usize;
        let outside = |at: usize| at + 40 <= answer_at || at >= answer_at + std::mem::size_of::<Answer>();
        assert!(
            many.records_at[1] != 0 && outside(many.records_at[1]),
            "the spilled ends are their own block"
        );

        // Ten records of one length keep no ends (`RecordSet`): one hint.
        let mut a = Answer::new(RCODE_NOERROR);
        for i in 0..10u8 {
            a.records.push([0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, i]);
        }
        let uniform = Cached::new(Arc::new(a));
        assert_eq!(uniform.records_len, [15 + 10, 0]);

        let none = Cached::new(answer_of(0));
        assert_eq!(none.records_len, [0, 0]);
    }
}
