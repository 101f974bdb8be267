//! Forwarding: names outside the namespace zones (and, for zones with `fallthrough`, names the
//! namespace does not know) are resolved by the upstream resolvers and cached.
//!
//! A query enters through `cached` (the hot path, on the socket's loop: a fresh or serving-stale
//! cache entry is written out, and a popular entry near its expiry is prefetched in the
//! background) or `answer` (everything else). `answer` joins or starts the one flight for its key
//! (concurrent misses share one upstream query), serves stale data per RFC 8767 when upstreams
//! fail or are slow, and refuses to forward names that come back to us (loop probes).

pub mod cache;
pub mod reply;
pub mod upstream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::{Notify, watch};

use self::cache::{Entry, ForwardCache, ThreadEntries};
use self::reply::{Kind, Ttls};
use self::upstream::{Failure, UpstreamSettings, Upstreams};
use crate::dns::answer::Deps;
use crate::dns::wire::{self, Query};
use crate::metrics;

/// Milliseconds on a monotonic clock: cache lifetimes must not jump with the wall clock.
pub fn mono_ms() -> u64 {
    mono_ms_at(Instant::now())
}

/// `mono_ms` at `at`, without reading the clock again.
pub fn mono_ms_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*START.get_or_init(Instant::now)).as_millis() as u64
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForwardSettings {
    pub upstream: UpstreamSettings,
    pub max_entries: usize,
    pub max_bytes: usize,
    /// How long a SERVFAIL (every upstream failed) is cached.
    pub servfail_ttl: u32,
    pub prefetch: bool,
    /// How long past expiry an entry may be served stale when upstreams fail; 0 = never.
    pub serve_stale: Duration,
    /// TTL of stale records (RFC 8767 suggests 30 s), and how long after a failed refresh an
    /// entry is served stale before upstreams are tried again.
    pub stale_ttl: u32,
    /// With stale data at hand, how long a client waits for upstreams before getting it.
    pub stale_answer_timeout: Duration,
    pub loop_check_interval: Duration,
}

/// How a forwarded query was served, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// `None` when no cache was involved (a loop refused).
    pub lookup: Option<metrics::Lookup>,
    /// Age of the reply served.
    pub age: Duration,
    pub stale_reason: Option<&'static str>,
}

impl Served {
    fn fresh(e: &Entry, now: u64, lookup: metrics::Lookup) -> Served {
        Served {
            lookup: Some(lookup),
            age: Duration::from_millis(now.saturating_sub(e.stored_ms)),
            stale_reason: None,
        }
    }

    fn stale(e: &Entry, now: u64, reason: &'static str) -> Served {
        Served {
            lookup: Some(metrics::Lookup::Stale),
            age: Duration::from_millis(now.saturating_sub(e.stored_ms)),
            stale_reason: Some(reason),
        }
    }
}

/// Where forwarded names come from, each checked for loops on its own: every name outside the
/// zones, or the unknown names of one fallthrough zone.
#[derive(Debug)]
pub struct LoopTarget {
    /// Lower-case wire suffix: the root for plain forwarding, the zone for fallthrough.
    suffix: Vec<u8>,
    looping: AtomicBool,
    /// Set when this target's probe came back to us during the current probe round.
    seen: AtomicBool,
}

/// What a flight ends with: an answer (positive or negative), or a SERVFAIL entry saying why.
#[derive(Debug, Clone)]
enum Outcome {
    Answer(Arc<Entry>),
    Failed(Arc<Entry>),
}

/// Everything a flight needs, owned: flights outlive the query that started them.
#[derive(Debug, Clone)]
struct Request {
    key: Box<[u8]>,
    question: Box<[u8]>,
    dnssec_ok: bool,
    checking_disabled: bool,
    zones_generation: u64,
    deps: Deps,
}

pub struct Forwarder {
    /// Upstreams, settings and loop targets are swapped whole on reload (SIGHUP); the cache and
    /// flights in progress stay.
    upstreams: ArcSwap<Upstreams>,
    cache: ForwardCache,
    flights: DashMap<Box<[u8]>, watch::Receiver<Option<Outcome>>>,
    settings: ArcSwap<ForwardSettings>,
    targets: ArcSwap<Vec<Arc<LoopTarget>>>,
    /// Probe names in flight (lower-case wire) and the target each checks.
    probes: Mutex<HashMap<Vec<u8>, Arc<LoopTarget>>>,
    probe_now: Notify,
    /// Wakes `maintain` after a reload (new probe interval), or to stop (`retire`).
    reconfigured: Notify,
    retired: AtomicBool,
    last_probe_ms: AtomicU64,
}

fn loop_targets(fallthrough_zones: &[Vec<u8>], old: &[Arc<LoopTarget>]) -> Vec<Arc<LoopTarget>> {
    std::iter::once(&vec![0u8])
        .chain(fallthrough_zones)
        .map(|suffix| {
            old.iter().find(|t| t.suffix == *suffix).cloned().unwrap_or_else(|| {
                Arc::new(LoopTarget { suffix: suffix.clone(), looping: false.into(), seen: false.into() })
            })
        })
        .collect()
}

/// The forward cache's key is `wire::key_into`'s followed by this byte: the DO and CD bits
/// change what upstreams send.
pub fn key_flags(q: &Query) -> u8 {
    q.edns.is_some_and(|e| e.dnssec_ok) as u8 | (q.checking_disabled() as u8) << 1
}

/// The forward cache key of `q`.
pub fn key_into(q: &Query, buf: &mut [u8; wire::KEY_ROOM]) -> usize {
    let n = wire::key_into(q, buf);
    buf[n] = key_flags(q);
    n + 1
}

impl Forwarder {
    /// `fallthrough_zones`: lower-case wire names of zones whose unknown names are forwarded.
    pub fn new(
        upstreams: &[std::net::SocketAddr],
        fallthrough_zones: &[Vec<u8>],
        settings: ForwardSettings,
    ) -> Forwarder {
        Forwarder {
            upstreams: ArcSwap::from_pointee(Upstreams::new(upstreams, settings.upstream.clone())),
            cache: ForwardCache::new(settings.max_entries, settings.max_bytes),
            flights: DashMap::new(),
            targets: ArcSwap::from_pointee(loop_targets(fallthrough_zones, &[])),
            settings: ArcSwap::from_pointee(settings),
            probes: Mutex::new(HashMap::new()),
            probe_now: Notify::new(),
            reconfigured: Notify::new(),
            retired: AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
        }
    }

    /// Takes a reloaded config. The cache stays (new bounds and clamps apply to what is stored
    /// from now on); the upstreams are replaced only if their list or settings changed, and then
    /// start with a clean health view. Returns the upstreams dropped.
    pub fn reconfigure(
        &self,
        upstreams: &[std::net::SocketAddr],
        fallthrough_zones: &[Vec<u8>],
        settings: ForwardSettings,
    ) -> Vec<std::net::SocketAddr> {
        let mut dropped = Vec::new();
        if !self.upstreams.load().same(upstreams, &settings.upstream) {
            let old = self.upstreams.swap(Arc::new(Upstreams::new(upstreams, settings.upstream.clone())));
            dropped = old.list().iter().map(|u| u.addr).filter(|a| !upstreams.contains(a)).collect();
        }
        self.targets.store(Arc::new(loop_targets(fallthrough_zones, &self.targets.load())));
        self.cache.set_limits(settings.max_entries, settings.max_bytes);
        self.settings.store(Arc::new(settings));
        self.reconfigured.notify_one();
        dropped
    }

    /// Stops the background work (forwarding was switched off by a reload).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.reconfigured.notify_one();
    }

    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.load_full()
    }

    pub fn cache(&self) -> &ForwardCache {
        &self.cache
    }

    /// The loop target of a forwarded name: its fallthrough zone, or the root.
    pub fn target_of(&self, zone_wire: Option<&[u8]>) -> Arc<LoopTarget> {
        let targets = self.targets.load();
        zone_wire
            .and_then(|z| targets.iter().find(|t| t.suffix == z))
            .or(targets.first())
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(LoopTarget { suffix: vec![0], looping: false.into(), seen: false.into() })
            })
    }

    fn write(&self, e: &Entry, q: &Query, limit: usize, now: u64, stale: bool, out: &mut Vec<u8>) {
        if stale {
            let ede = Some((wire::EDE_STALE_ANSWER, "upstreams failed; serving expired data"));
            e.template.write(q, limit, Ttls::Stale(self.settings.load().stale_ttl), ede, out);
        } else {
            let ede = e.ede.as_ref().map(|(c, t)| (*c, t.as_str()));
            e.template.write(q, limit, Ttls::Elapsed(e.elapsed_s(now)), ede, out);
        }
    }

    /// The hot path: writes a cached reply into `out` if there is one to give. `zones_generation`
    /// is the zone table's current generation: an entry routed under another must be routed again.
    /// `now` is `mono_ms` when the query was read.
    ///
    /// With `own` (a UDP thread's copies), through those: a copy that gives no answer (its name
    /// must be routed anew, or it expired) is dropped, so the next query looks in the maps again.
    #[allow(clippy::too_many_arguments)]
    pub fn cached(
        self: &Arc<Self>,
        own: Option<&mut ThreadEntries>,
        q: &Query,
        key: &[u8],
        zones_generation: u64,
        limit: usize,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Option<Served> {
        let serve = |e: &Arc<Entry>| {
            if e.zones_generation.load(Ordering::Relaxed) != zones_generation || !e.deps_hold() {
                return None;
            }
            if e.is_fresh(now) {
                self.write(e, q, limit, now, false, out);
                self.maybe_prefetch(e, key, now);
                Some(Served::fresh(e, now, metrics::Lookup::Hit))
            } else if now < e.serving_stale_until_ms.load(Ordering::Relaxed) {
                self.write(e, q, limit, now, true, out);
                Some(Served::stale(e, now, "upstream_failed"))
            } else {
                None
            }
        };
        let Some(own) = own else { return self.cache.with(key, serve).flatten() };
        let served = self.cache.with_own(own, key, serve)?;
        if served.is_none() {
            own.forget(key);
        }
        served
    }

    /// Unbound's prefetch: an entry asked for again in the last tenth of its TTL (at least the
    /// last second) is refreshed in the background, so popular names never expire in the cache.
    /// Checked on every hit: the common case (asked before, not near expiry) is a load and a
    /// subtraction, with no write to the entry and no load of the settings.
    fn maybe_prefetch(self: &Arc<Self>, e: &Entry, key: &[u8], now: u64) {
        if !e.asked_again.load(Ordering::Relaxed) {
            // The first hit: a name asked for once is not worth refreshing.
            e.asked_again.store(true, Ordering::Relaxed);
            return;
        }
        let window = (e.ttl as u64 * 100).max(1000);
        if e.expires_ms().saturating_sub(now) > window
            || e.template.kind == Kind::Failure
            || !self.settings.load().prefetch
            || e.prefetching.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let flags = key.last().copied().unwrap_or(0);
        let request = Request {
            key: key.into(),
            question: e.template.question().into(),
            dnssec_ok: flags & 1 != 0,
            checking_disabled: flags & 2 != 0,
            zones_generation: e.zones_generation.load(Ordering::Relaxed),
            deps: e.deps.clone(),
        };
        metrics::get().forward_prefetches.inc();
        let this = self.clone();
        runtime.spawn(async move {
            this.fetch(request).await;
        });
    }

    /// Whether `lower_qname` is one of our own loop probes coming back; marks its target looping.
    fn probe_returned(&self, lower_qname: &[u8]) -> bool {
        let Ok(probes) = self.probes.lock() else { return false };
        let Some(target) = probes.get(lower_qname) else { return false };
        target.seen.store(true, Ordering::Relaxed);
        if !target.looping.swap(true, Ordering::Relaxed) {
            metrics::get().forward_loops.inc();
            tracing::error!(
                zone = %wire::name_to_string(&target.suffix),
                "forwarding loop: our own probe came back to us through the upstreams; forwarded names under {} get SERVFAIL until it is fixed",
                wire::name_to_string(&target.suffix)
            );
        }
        true
    }

    /// The full path for a forwarded name.
    #[allow(clippy::too_many_arguments)]
    pub async fn answer(
        self: &Arc<Self>,
        q: &Query<'_>,
        key: &[u8],
        target: Arc<LoopTarget>,
        zones_generation: u64,
        deps: Deps,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Served {
        let lower_qname = &key[..q.qname.len()];
        if self.probe_returned(lower_qname) || target.looping.load(Ordering::Relaxed) {
            metrics::get().forward_loops.inc();
            let t = reply::bare(q.question, wire::RCODE_SERVFAIL);
            let ede =
                Some((wire::EDE_OTHER, "forwarding loop detected: the upstreams send this name back to us"));
            t.write(q, limit, Ttls::Elapsed(0), ede, out);
            return Served { lookup: None, age: Duration::ZERO, stale_reason: None };
        }
        let now = mono_ms();
        let existing = self.cache.get(key).filter(|e| e.deps_hold());
        if let Some(e) = &existing {
            if e.is_fresh(now) {
                // Still good; it was only routed under an older zone table.
                e.zones_generation.store(zones_generation, Ordering::Relaxed);
                self.write(e, q, limit, now, false, out);
                return Served::fresh(e, now, metrics::Lookup::Hit);
            }
            if now < e.serving_stale_until_ms.load(Ordering::Relaxed) {
                self.write(e, q, limit, now, true, out);
                return Served::stale(e, now, "upstream_failed");
            }
        }
        let stale = existing.filter(|e| e.template.kind != Kind::Failure && e.may_serve_stale(now));
        let request = Request {
            key: key.into(),
            question: q.question.into(),
            dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
            checking_disabled: q.checking_disabled(),
            zones_generation,
            deps,
        };
        let outcome = match &stale {
            // RFC 8767 §5: with stale data at hand, a client waits at most this long.
            Some(_) => {
                let wait = self.settings.load().stale_answer_timeout;
                tokio::time::timeout(wait, self.fetch(request)).await.ok()
            }
            None => Some(self.fetch(request).await),
        };
        let now = mono_ms();
        match (outcome, stale) {
            (Some(Outcome::Answer(e)), _) => {
                self.write(&e, q, limit, now, false, out);
                Served::fresh(&e, now, metrics::Lookup::Miss)
            }
            // The flight failed: stale data (the flight also keeps it served for the recheck time).
            (Some(Outcome::Failed(_)), Some(s)) => {
                self.write(&s, q, limit, now, true, out);
                Served::stale(&s, now, "upstream_failed")
            }
            // The upstreams are slow: stale data now; the flight goes on for later queries.
            (None, Some(s)) => {
                self.write(&s, q, limit, now, true, out);
                Served::stale(&s, now, "upstream_slow")
            }
            (Some(Outcome::Failed(e)), None) => {
                self.write(&e, q, limit, now, false, out);
                Served::fresh(&e, now, metrics::Lookup::Miss)
            }
            // Not reached: without stale data the flight is awaited.
            (None, None) => Served { lookup: None, age: Duration::ZERO, stale_reason: None },
        }
    }

    /// Joins the flight for `request.key`, or starts it.
    async fn fetch(self: &Arc<Self>, request: Request) -> Outcome {
        loop {
            let mut rx = match self.flights.entry(request.key.clone()) {
                dashmap::Entry::Occupied(o) => o.get().clone(),
                dashmap::Entry::Vacant(v) => {
                    let (tx, rx) = watch::channel(None);
                    v.insert(rx.clone());
                    // The flight runs on its own task: a client that stops waiting (a stale
                    // answer was sent instead) does not cancel it for the others.
                    tokio::spawn(self.clone().fly(request.clone(), tx));
                    rx
                }
            };
            match rx.wait_for(|o| o.is_some()).await {
                Ok(o) => {
                    if let Some(outcome) = o.as_ref() {
                        return outcome.clone();
                    }
                }
                Err(_) => continue, // the flight's task died without an outcome: start another
            }
        }
    }

    async fn fly(self: Arc<Self>, request: Request, tx: watch::Sender<Option<Outcome>>) {
        let upstreams = self.upstreams.load_full();
        let result = upstreams.resolve(&request.question, request.dnssec_ok, request.checking_disabled).await;
        let settings = self.settings.load_full();
        let now = mono_ms();
        let stale_s = settings.serve_stale.as_secs();
        let outcome = match result {
            Ok(t) => {
                let ttl = t.ttl.unwrap_or(0);
                let entry = Entry::new(t, None, now, ttl, stale_s, request.zones_generation, request.deps);
                Outcome::Answer(if ttl > 0 {
                    self.cache.insert(&request.key, entry, now)
                } else {
                    Arc::new(entry)
                })
            }
            Err(failure) => {
                let (code, why): (u16, Cow<str>) = match &failure {
                    Failure::NoUpstream => (wire::EDE_PROHIBITED, "no upstream is configured".into()),
                    Failure::Unreachable(why) => {
                        (wire::EDE_NO_REACHABLE_AUTHORITY, format!("no upstream answered ({why})").into())
                    }
                    Failure::Failed(rcode) => (
                        wire::EDE_NO_REACHABLE_AUTHORITY,
                        format!("every upstream failed (rcode {rcode})").into(),
                    ),
                };
                tracing::debug!(reason = %why, "forwarding failed");
                self.probe_soon();
                let t = reply::bare(&request.question, wire::RCODE_SERVFAIL);
                let ttl = settings.servfail_ttl;
                let entry = Entry::new(
                    t,
                    Some((code, why.into_owned())),
                    now,
                    ttl,
                    0,
                    request.zones_generation,
                    request.deps,
                );
                // A brief SERVFAIL entry spares the upstreams a retry storm, but never displaces
                // data that may still be served stale: that is served instead, without asking
                // upstream again for the failure recheck time (RFC 8767 §4).
                let stale = self
                    .cache
                    .get(&request.key)
                    .filter(|e| e.may_serve_stale(now) && e.template.kind != Kind::Failure);
                if let Some(e) = &stale {
                    e.serving_stale_until_ms.store(now + settings.stale_ttl as u64 * 1000, Ordering::Relaxed);
                }
                let keep_stale = stale.is_some();
                Outcome::Failed(if ttl > 0 && !keep_stale {
                    self.cache.insert(&request.key, entry, now)
                } else {
                    Arc::new(entry)
                })
            }
        };
        self.flights.remove(&request.key);
        let _ = tx.send(Some(outcome));
    }

    /// Asks for a loop check soon (after failures: a loop shows as upstream timeouts).
    fn probe_soon(&self) {
        let now = mono_ms();
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 5_000 || last == 0 {
            self.probe_now.notify_one();
        }
    }

    /// Sends one probe per loop target: a random name under it that nobody else asks for. If it
    /// reaches our own listener while in flight, the target is looping.
    async fn probe_round(&self) {
        self.last_probe_ms.store(mono_ms().max(1), Ordering::Relaxed);
        let mut names = Vec::new();
        if let Ok(mut probes) = self.probes.lock() {
            for t in self.targets.load().iter() {
                let mut name = Vec::with_capacity(t.suffix.len() + 40);
                name.push(16);
                name.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
                name.push(10);
                name.extend_from_slice(b"loop-check");
                name.extend_from_slice(&t.suffix);
                if name.len() > 255 {
                    continue;
                }
                t.seen.store(false, Ordering::Relaxed);
                probes.insert(name.clone(), t.clone());
                names.push((t.clone(), name));
            }
        }
        // One after another: a handful of names, and a round is not urgent.
        for (_, name) in &names {
            let mut question = name.clone();
            question.extend_from_slice(&wire::TYPE_HINFO.to_be_bytes());
            question.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
            let _ = self.upstreams.load_full().probe(&question).await;
        }
        if let Ok(mut probes) = self.probes.lock() {
            for (t, name) in &names {
                probes.remove(name);
                if !t.seen.load(Ordering::Relaxed) && t.looping.swap(false, Ordering::Relaxed) {
                    tracing::info!(zone = %wire::name_to_string(&t.suffix), "forwarding loop is gone");
                }
            }
        }
    }

    /// Background work: loop probes (at start, every `loop_check_interval`, and soon after
    /// failures) and sweeping entries past their stale window.
    pub async fn maintain(self: Arc<Self>) {
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let interval = || self.settings.load().loop_check_interval.max(Duration::from_secs(1));
        let mut probe = tokio::time::interval(interval());
        while !self.retired.load(Ordering::Acquire) {
            tokio::select! {
                _ = probe.tick() => self.probe_round().await,
                _ = self.probe_now.notified() => self.probe_round().await,
                _ = sweep.tick() => self.cache.sweep(mono_ms()),
                _ = self.reconfigured.notified() => {
                    if probe.period() != interval() {
                        probe = tokio::time::interval_at(tokio::time::Instant::now() + interval(), interval());
                    }
                    // New upstreams or zones: check them for loops now.
                    self.probe_now.notify_one();
                }
            }
        }
    }
}
