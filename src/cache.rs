//! The namespace cache: what the DNS side knows of each namespace (its service names, the
//! catalog) and of each service (its instances), and how that is kept fresh.
//!
//! Data enters from a backend and leaves as `ServiceView`s for the answer builder. Every piece of
//! data carries a generation counter that moves whenever what an answer would say changes (new
//! instances, a health change, turning stale or fresh, going idle); answers built from it list
//! the generations they used, so the DNS answer cache never serves something outdated.
//!
//! Freshness, by backend:
//! - embedded: the registry announces every committed change; the affected service is refetched
//!   at once. Nothing is polled.
//! - aws: the first query for a service fetches it (concurrent misses share one call); a refresher
//!   then re-validates it every `refresh` with DiscoverInstancesRevision and refetches only when the
//!   revision moved, or every `health_refresh` (health changes do not move the revision). A service
//!   nobody asks for within `idle_timeout` stops being refreshed. When calls fail, the last known
//!   good data is served, marked stale, for up to `max_stale`. The data is snapshotted to the data
//!   dir soon after each change and loaded at start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, Change, Discovered, NamespaceRef, Urgency};
use crate::zone::answer::Catalog;
use crate::zone::view::ServiceView;
use crate::zone::{Zone, ZoneTable};

#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub refresh: Duration,
    pub health_refresh: Duration,
    pub idle_timeout: Duration,
    pub max_stale: Duration,
    pub catalog_refresh: Duration,
    /// Whether the backend reads service attributes (aws: once per `catalog_refresh`).
    pub service_attributes: bool,
    /// The backend's call budget (calls/s), which stretches the refresh interval when short.
    pub rate_limit: f64,
    /// Where the last known good data is snapshotted (aws backend); `None` to keep none.
    pub snapshot: Option<PathBuf>,
}

/// Zones configured explicitly, and the template for zones derived from namespace names.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSource {
    pub explicit: Vec<Zone>,
    /// With the embedded backend and no explicit zones: every namespace whose name is a DNS name.
    pub automatic: Option<Zone>,
}

/// The result of looking a service up.
pub enum Lookup {
    Found {
        slot: Arc<ServiceSlot>,
        /// The slot's generation, read before its data: an answer built from this is current
        /// while the generation still holds.
        generation: u64,
        view: Arc<ServiceView>,
        stale: bool,
        confirmed_age: Option<Duration>,
    },
    NotFound,
    /// The backend cannot be reached and nothing is cached.
    Outage,
}

pub struct Cache {
    backend: Arc<dyn Backend>,
    /// Swapped whole on reload (SIGHUP); readers take what is current at each use.
    settings: ArcSwap<CacheSettings>,
    zone_source: ArcSwap<ZoneSource>,
    zones: RwLock<Arc<ZoneTable>>,
    pub zones_generation: Arc<AtomicU64>,
    /// Read by every query that misses the answer cache, so hashed with foldhash rather than
    /// SipHash: the keys are the zones' namespaces, not names a client chose.
    namespaces: DashMap<NamespaceRef, Arc<NamespaceState>, foldhash::fast::RandomState>,
    /// Services being refreshed, for the effective refresh interval.
    active: AtomicUsize,
    /// Whether the backend pushes changes (embedded) rather than being polled.
    push: bool,
    dirty: AtomicBool,
    /// Set by a change the backend announced before acknowledging it: the zone table must be
    /// rebuilt before it is used again.
    zones_wanted: Outdated,
    zones_rebuild: tokio::sync::Mutex<()>,
    /// Queries waiting at the DNS sockets: background checks wait for them (briefly).
    backlog: Backlog,
}

/// How long a background check waits, at most, for queued queries to be answered first.
/// Checks fall due this much short of one interval apart, so the wait never makes them more than
/// one interval apart: 20 ms drains thousands of queries at full speed and costs 2% more calls
/// at a 1 s interval.
const BACKLOG_WAIT: Duration = Duration::from_millis(20);

/// The most a background check at `period` waits for queued queries: `BACKLOG_WAIT`, or a
/// twentieth of a shorter interval, so short intervals do not cost many more calls.
fn backlog_slack(period: Duration) -> Duration {
    BACKLOG_WAIT.min(period / 20)
}

/// Whether queries are queued at the DNS sockets. A UDP thread whose receive filled a whole batch
/// has more waiting behind it: it marks its socket backlogged until a receive comes back short.
/// On a core shared by the DNS path and the refresh (the aws backend: ~250 us of CPU per call),
/// a stall leaves both behind; the kernel then splits the core between them, the queue drains at
/// half speed and a full socket buffer drops queries. A background check that falls due waits
/// (at most `backlog_slack`) until no socket is backlogged, so the queue drains first.
#[derive(Default)]
pub struct Backlog {
    sockets: AtomicUsize,
    drained: tokio::sync::Notify,
}

impl Backlog {
    /// A socket's state changed: `queued` when a receive filled its batch, not when one came
    /// back short. Each socket reports changes only, so `true` and `false` alternate.
    pub fn mark(&self, queued: bool) {
        if queued {
            self.sockets.fetch_add(1, Ordering::AcqRel);
        } else if self.sockets.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    pub fn is_queued(&self) -> bool {
        self.sockets.load(Ordering::Acquire) > 0
    }

    /// Returns once no socket is backlogged, or after `at_most`.
    pub async fn wait_drained(&self, at_most: Duration) {
        if !self.is_queued() {
            return;
        }
        let drained = self.drained.notified();
        tokio::pin!(drained);
        // Registered before the second look: a drain between the two still wakes us.
        drained.as_mut().enable();
        if !self.is_queued() {
            return;
        }
        let _ = tokio::time::timeout(at_most, drained).await;
    }
}

pub struct NamespaceState {
    pub ns: NamespaceRef,
    catalog: RwLock<Option<Arc<Catalog>>>,
    pub catalog_generation: Arc<AtomicU64>,
    /// Held while the service names are read; inside, when the backend was last asked for
    /// them (answered or not): queries that waited meanwhile take that answer.
    catalog_load: tokio::sync::Mutex<Option<Instant>>,
    catalog_refresher: AtomicBool,
    /// The catalog must be re-read before it is used again (see `Cache::invalidate`).
    catalog_wanted: Outdated,
    services: DashMap<String, Arc<ServiceSlot>>,
}

/// A service's atomics that a cached answer built from it reads (or writes) on every hit, in one
/// allocation: one cache line per hit, not one per field.
#[derive(Debug)]
pub struct SlotMarks {
    /// Moves when what answers say changes.
    pub generation: AtomicU64,
    /// Milliseconds since the epoch of the last query that used this service (hits stamp it
    /// when it is 100 ms old or more: `answer::USE_STAMP_MS`).
    pub last_used: AtomicU64,
    /// When the backend last confirmed the data (wall-clock ms, 0 = never): answers built from it
    /// read it when served, for `answer_staleness_seconds`.
    pub confirmed_ms: AtomicU64,
}

pub struct ServiceSlot {
    pub name: String,
    state: RwLock<SlotState>,
    pub marks: Arc<SlotMarks>,
    /// Serialises fetches: concurrent misses share one call, and a later fetch never loses to an
    /// earlier one.
    load: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    /// Changes announced for this service, and how many of them the data reflects: when they
    /// differ, the data must be refetched before it is used (see `Cache::invalidate`).
    wanted: Outdated,
}

/// Announced changes versus those a copy reflects. A fetch notes what it will reflect before it
/// reads, and records it once done, so a reader that finds a fetch under way waits for it.
#[derive(Default)]
struct Outdated {
    announced: AtomicU64,
    reflected: AtomicU64,
}

impl Outdated {
    fn announce(&self) {
        self.announced.fetch_add(1, Ordering::AcqRel);
    }

    fn is_outdated(&self) -> bool {
        self.announced.load(Ordering::Acquire) != self.reflected.load(Ordering::Acquire)
    }

    /// Called before reading: what the read will reflect.
    fn begin(&self) -> u64 {
        self.announced.load(Ordering::Acquire)
    }

    fn done(&self, seen: u64) {
        self.reflected.store(seen, Ordering::Release);
    }
}

#[derive(Default)]
struct SlotState {
    raw: Option<Arc<Discovered>>,
    view: Option<Arc<ServiceView>>,
    not_found: bool,
    /// Wall-clock time of the last successful contact about this service.
    confirmed: Option<SystemTime>,
    discovered_at: Option<Instant>,
    /// When the backend last answered about this service, or failed to: waiters that queued before
    /// then take that answer instead of asking again.
    attempted_at: Option<Instant>,
    stale: bool,
    /// Why it is stale (`served_stale_total{reason}`).
    stale_reason: &'static str,
}

/// The shortest refresh interval (seconds) at which `active` services cost at most `rate` calls a
/// second: one check each per interval, and, where attributes are read in calls of their own,
/// one read each per `attributes` interval, or per refresh interval when that is longer (they
/// are read with a fetch, and a fetch comes at most once per check).
fn needed_refresh(active: f64, rate: f64, attributes: Option<Duration>) -> f64 {
    let Some(attributes) = attributes.map(|a| a.as_secs_f64()) else { return active / rate };
    // Solves active/R + active/max(A, R) = rate for R; the two cases meet at R = A.
    let both = 2.0 * active / rate;
    if both >= attributes { both } else { active / (rate - active / attributes) }
}

/// The least time between two snapshot writes; longer when writing takes long.
const SNAPSHOT_MIN_PAUSE: Duration = Duration::from_secs(1);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn bump(generation: &AtomicU64) {
    generation.fetch_add(1, Ordering::AcqRel);
}

impl ServiceSlot {
    fn new(name: &str) -> ServiceSlot {
        ServiceSlot {
            name: name.to_string(),
            state: RwLock::new(SlotState::default()),
            marks: Arc::new(SlotMarks {
                generation: AtomicU64::new(1),
                last_used: AtomicU64::new(now_ms()),
                confirmed_ms: AtomicU64::new(0),
            }),
            load: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            wanted: Outdated::default(),
        }
    }

    fn attempted_since(&self, t: Instant) -> bool {
        self.read().attempted_at.is_some_and(|a| a >= t)
    }

    fn attempted(&self) {
        self.write().attempted_at = Some(Instant::now());
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SlotState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SlotState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(self: &Arc<Self>) -> Option<Lookup> {
        let generation = self.marks.generation.load(Ordering::Acquire);
        let st = self.read();
        if st.not_found {
            return Some(Lookup::NotFound);
        }
        let view = st.view.clone()?;
        let confirmed_age = st.confirmed.and_then(|c| SystemTime::now().duration_since(c).ok());
        Some(Lookup::Found { slot: self.clone(), generation, view, stale: st.stale, confirmed_age })
    }

    /// Records a fetch. Moves the generation when what answers say changes.
    fn store(&self, mut d: Discovered, grpc_config: Option<String>) -> bool {
        // DiscoverInstances lists instances in a random order (Cloud Map, and our registry
        // likewise). Answers pick their own order, so only the set counts: compared in call
        // order, every refetch was a change, rebuilding the view, dropping the service's
        // cached answers and rewriting the snapshot.
        d.instances.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut st = self.write();
        let changed = st.raw.as_deref() != Some(&d)
            || st.stale
            || st.not_found
            || st.view.as_ref().is_some_and(|v| v.grpc_config != grpc_config);
        if changed {
            st.view = Some(Arc::new(ServiceView::new(&self.name, &d, grpc_config)));
            st.raw = Some(Arc::new(d));
        }
        st.not_found = false;
        st.stale = false;
        st.confirmed = Some(SystemTime::now());
        self.marks.confirmed_ms.store(now_ms(), Ordering::Relaxed);
        st.discovered_at = Some(Instant::now());
        drop(st);
        if changed {
            bump(&self.marks.generation);
        }
        changed
    }

    fn confirm(&self) {
        let mut st = self.write();
        st.confirmed = Some(SystemTime::now());
        self.marks.confirmed_ms.store(now_ms(), Ordering::Relaxed);
        let was_stale = std::mem::replace(&mut st.stale, false);
        drop(st);
        if was_stale {
            bump(&self.marks.generation);
        }
    }

    fn gone(&self) {
        let mut st = self.write();
        let changed = !st.not_found;
        *st = SlotState { not_found: true, confirmed: Some(SystemTime::now()), ..SlotState::default() };
        self.marks.confirmed_ms.store(now_ms(), Ordering::Relaxed);
        drop(st);
        if changed {
            bump(&self.marks.generation);
        }
    }

    /// Why the data is stale, when it is.
    pub fn stale_reason(&self) -> &'static str {
        self.read().stale_reason
    }

    /// The backend failed: keep serving what we have, marked stale, until `max_stale`.
    fn failed(&self, max_stale: Duration, error: &BackendError) {
        let mut st = self.write();
        st.stale_reason = match error {
            BackendError::Throttled(_) => "backend_throttled",
            _ => "backend_unavailable",
        };
        let too_old =
            st.confirmed.and_then(|c| SystemTime::now().duration_since(c).ok()).is_none_or(|a| a > max_stale);
        let changed = if too_old && st.view.is_some() {
            *st = SlotState::default();
            true
        } else {
            st.view.is_some() && !std::mem::replace(&mut st.stale, true)
        };
        drop(st);
        if changed {
            bump(&self.marks.generation);
        }
    }
}

impl NamespaceState {
    fn new(ns: NamespaceRef) -> NamespaceState {
        NamespaceState {
            ns,
            catalog: RwLock::new(None),
            catalog_generation: Arc::new(AtomicU64::new(1)),
            catalog_load: tokio::sync::Mutex::new(None),
            catalog_refresher: AtomicBool::new(false),
            catalog_wanted: Outdated::default(),
            services: DashMap::new(),
        }
    }

    fn current_catalog(&self) -> Option<Arc<Catalog>> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the service names; whether they changed.
    fn set_catalog(&self, names: Vec<String>) -> bool {
        let new = Catalog::new(names);
        let mut c = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let changed = c.as_ref().is_none_or(|old| {
            let mut a: Vec<&String> = old.names().collect();
            let mut b: Vec<&String> = new.names().collect();
            a.sort();
            b.sort();
            a != b
        });
        if changed {
            *c = Some(Arc::new(new));
            drop(c);
            bump(&self.catalog_generation);
        }
        changed
    }

    fn slot(&self, name: &str) -> Arc<ServiceSlot> {
        if let Some(s) = self.services.get(name) {
            return s.clone();
        }
        self.services.entry(name.to_string()).or_insert_with(|| Arc::new(ServiceSlot::new(name))).clone()
    }
}

impl Cache {
    pub fn new(backend: Arc<dyn Backend>, settings: CacheSettings, zone_source: ZoneSource) -> Arc<Cache> {
        let push = backend.changes().is_some();
        let zones = ZoneTable::new(zone_source.explicit.clone());
        Arc::new(Cache {
            backend,
            settings: ArcSwap::from_pointee(settings),
            zone_source: ArcSwap::from_pointee(zone_source),
            zones: RwLock::new(Arc::new(zones)),
            zones_generation: Arc::new(AtomicU64::new(1)),
            namespaces: DashMap::with_hasher(Default::default()),
            active: AtomicUsize::new(0),
            push,
            dirty: AtomicBool::new(false),
            zones_wanted: Outdated::default(),
            zones_rebuild: tokio::sync::Mutex::new(()),
            backlog: Backlog::default(),
        })
    }

    /// Where the DNS sockets report queued queries.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Whether the backend pushes changes (embedded) rather than being polled (aws).
    pub fn pushed(&self) -> bool {
        self.push
    }

    /// The zone table, rebuilt first if a change made it outdated.
    pub async fn zones(&self) -> Arc<ZoneTable> {
        if self.zones_wanted.is_outdated() {
            let _guard = self.zones_rebuild.lock().await;
            if self.zones_wanted.is_outdated() {
                self.rebuild_zones_locked().await;
            }
        }
        self.zones.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The zone table if it is current, without waiting: `None` when a change made it outdated.
    pub fn zones_now(&self) -> Option<Arc<ZoneTable>> {
        if self.zones_wanted.is_outdated() {
            return None;
        }
        Some(self.zones.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Marks what a change touches as outdated, synchronously, before the write that made it is
    /// acknowledged: the next query that needs it refetches it first, so a client that registered
    /// an instance and then asks DNS sees it (read-your-writes). The change listener refetches in
    /// the background too, so hot answers are rebuilt without waiting for a query.
    fn invalidate(&self, change: &Change) {
        match change {
            Change::Namespaces => {
                self.zones_wanted.announce();
                bump(&self.zones_generation);
                for ns in self.namespaces.iter() {
                    ns.catalog_wanted.announce();
                    bump(&ns.catalog_generation);
                }
            }
            Change::Services { namespace, service } => {
                for ns in self.states_for(namespace) {
                    ns.catalog_wanted.announce();
                    bump(&ns.catalog_generation);
                    // A service deleted, or deleted and created again, must not keep its old
                    // instances; the other services' data is untouched.
                    if let Some(slot) = ns.services.get(service) {
                        slot.wanted.announce();
                        bump(&slot.marks.generation);
                    }
                }
            }
            Change::Instances { namespace, service } => {
                for ns in self.states_for(namespace) {
                    if let Some(slot) = ns.services.get(service) {
                        slot.wanted.announce();
                        bump(&slot.marks.generation);
                    }
                }
            }
        }
    }

    /// Reads the services of instance changes again on the writer's thread, before the write is
    /// acknowledged, where the backend can (embedded): an answer without a deregistered instance
    /// is ready when DeregisterInstance returns, not after the change listener's turn on a busy
    /// core. A service whose fetch is under way is left to the listener (its data is outdated).
    fn refetch_now(&self, change: &Change) {
        let Change::Instances { namespace, service } = change else { return };
        for ns in self.states_for(namespace) {
            let Some(slot) = ns.services.get(service).map(|s| s.clone()) else { continue };
            let Ok(_guard) = slot.load.try_lock() else { continue };
            let seen = slot.wanted.begin();
            let Some(result) = self.backend.discover_now(&ns.ns, service) else { return };
            let _ = self.record(&slot, result);
            slot.wanted.done(seen);
        }
    }

    /// Takes a reloaded config (SIGHUP). Returns whether the zones changed: answers in them are
    /// then rebuilt from the cached data, without backend calls; nothing cached is dropped.
    pub async fn reconfigure(&self, settings: CacheSettings, zone_source: ZoneSource) -> bool {
        self.backend
            .set_budget(settings.rate_limit, settings.service_attributes.then_some(settings.catalog_refresh));
        self.settings.store(Arc::new(settings));
        if **self.zone_source.load() == zone_source {
            return false;
        }
        self.zone_source.store(Arc::new(zone_source));
        self.rebuild_zones().await;
        bump(&self.zones_generation);
        true
    }

    /// The refresh interval in force: the configured one, stretched when the call budget cannot
    /// re-validate every active service that often.
    pub fn effective_refresh(&self) -> Duration {
        let settings = self.settings.load();
        let needed = needed_refresh(
            self.active.load(Ordering::Relaxed) as f64,
            settings.rate_limit.max(0.001),
            self.backend.reads_attributes().then_some(settings.catalog_refresh),
        );
        settings.refresh.max(Duration::from_secs_f64(needed))
    }

    /// How full the backend's rate budget is (0..=1), if it has one.
    pub fn budget_fill(&self) -> Option<f64> {
        self.backend.budget_fill()
    }

    pub fn active_services(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn namespace(&self, ns: &NamespaceRef) -> Arc<NamespaceState> {
        if let Some(s) = self.namespaces.get(ns) {
            return s.clone();
        }
        self.namespaces.entry(ns.clone()).or_insert_with(|| Arc::new(NamespaceState::new(ns.clone()))).clone()
    }

    /// Starts the background work: the change listener (embedded) or the snapshot writer (aws).
    pub async fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.backend.observe(Box::new(move |change| {
            if let Some(cache) = weak.upgrade() {
                cache.invalidate(change);
                cache.refetch_now(change);
            }
        }));
        if let Some(mut rx) = self.backend.changes() {
            self.rebuild_zones().await;
            let cache = self.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(change) => cache.apply(change).await,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "fell behind the registry's changes; re-reading everything"
                            );
                            cache.reload_all().await;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            self.preload().await;
        } else {
            self.load_snapshot();
        }
        if self.settings.load().snapshot.is_some() && !self.push {
            let cache = self.clone();
            tokio::spawn(async move {
                let mut pause = SNAPSHOT_MIN_PAUSE;
                loop {
                    tokio::time::sleep(pause).await;
                    if !cache.dirty.swap(false, Ordering::AcqRel) {
                        continue;
                    }
                    let started = Instant::now();
                    if let Err(e) = cache.write_snapshot().await {
                        tracing::warn!(error = %e, "cannot write the cache snapshot");
                        cache.dirty.store(true, Ordering::Release);
                    }
                    // Writing costs time in proportion to the data (100,000 instances: tens of
                    // milliseconds): keep it under 2% of one core.
                    pause = SNAPSHOT_MIN_PAUSE.max(started.elapsed() * 50);
                }
            });
        }
    }

    /// Reads every service of the served namespaces before the listeners serve, where the
    /// backend can read many at once (embedded), as NSD loads its zones before it answers.
    /// Started cold under load, each service's first queries waited for a read of its own: at
    /// 100k q/s the first second's p99 was 200 ms or more, and the blocking pool grew to 512
    /// threads (`bench/cold-start.sh`).
    async fn preload(&self) {
        let zones = self.zones.read().unwrap_or_else(|p| p.into_inner()).clone();
        let started = Instant::now();
        let mut loaded = 0;
        let mut done = HashSet::new();
        for zone in zones.zones() {
            if !done.insert(zone.namespace.clone()) {
                continue;
            }
            let ns = self.namespace(&zone.namespace);
            if !self.reload_catalog(&ns, Urgency::Background).await {
                continue;
            }
            let Some(catalog) = ns.current_catalog() else { continue };
            // Slots first, noting what the read will reflect: a change announced meanwhile
            // leaves its slot outdated, and its next query reads it again.
            let slots: Vec<(Arc<ServiceSlot>, u64)> = catalog
                .names()
                .map(|name| {
                    let slot = ns.slot(name);
                    let seen = slot.wanted.begin();
                    (slot, seen)
                })
                .collect();
            let services = match self.backend.discover_all(&ns.ns).await {
                None => return,
                Some(Ok(services)) => services,
                Some(Err(e)) => {
                    tracing::warn!(namespace = %ns.ns.http_name, error = %e, "cannot load the namespace's services");
                    continue;
                }
            };
            let mut read: HashMap<String, Discovered> = services.into_iter().collect();
            // A service created since the names were read waits for its first query; one deleted
            // since is left unloaded (its removal re-reads the names).
            for (slot, seen) in &slots {
                let Some(discovered) = read.remove(&slot.name) else { continue };
                let _guard = slot.load.lock().await;
                let _ = self.record(slot, Ok(discovered));
                slot.wanted.done(*seen);
                loaded += 1;
            }
        }
        if loaded > 0 {
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(services = loaded, ms, "loaded the served namespaces' services");
        }
    }

    async fn rebuild_zones(&self) {
        let _guard = self.zones_rebuild.lock().await;
        self.rebuild_zones_locked().await;
    }

    async fn rebuild_zones_locked(&self) {
        let seen = self.zones_wanted.begin();
        let source = self.zone_source.load_full();
        let Some(template) = &source.automatic else {
            *self.zones.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(ZoneTable::new(source.explicit.clone()));
            self.zones_wanted.done(seen);
            return;
        };
        let names = match self.backend.default_zones().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list namespaces for zones");
                return;
            }
        };
        let mut zones = source.explicit.clone();
        for (name, http_name) in names {
            if !crate::zone::is_dns_name(&name) {
                continue;
            }
            let lower = name.trim_end_matches('.').to_ascii_lowercase();
            if zones.iter().any(|z| z.name == lower) {
                continue; // an explicit zone, or an older namespace of the same name, wins
            }
            let Some(wire) = crate::dns::wire::encode_name(&lower) else { continue };
            zones.push(Zone {
                name: lower,
                wire,
                namespace: NamespaceRef { http_name, owner_account: None },
                ..template.clone()
            });
        }
        *self.zones.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ZoneTable::new(zones));
        self.zones_wanted.done(seen);
        bump(&self.zones_generation);
    }

    async fn apply(&self, change: Change) {
        match change {
            Change::Namespaces => {
                self.rebuild_zones().await;
                // A namespace re-created under the same name holds other services now.
                for ns in self.namespaces.iter().map(|e| e.value().clone()).collect::<Vec<_>>() {
                    self.reload_catalog(&ns, Urgency::Background).await;
                }
            }
            Change::Services { namespace, service } => {
                for ns in self.states_for(&namespace) {
                    self.reload_catalog(&ns, Urgency::Background).await;
                    let slot = ns.services.get(&service).map(|s| s.clone());
                    if let Some(slot) = slot
                        && slot.wanted.is_outdated()
                    {
                        self.fetch(&ns, &slot, Urgency::Background).await;
                    }
                }
            }
            Change::Instances { namespace, service } => {
                for ns in self.states_for(&namespace) {
                    let slot = ns.services.get(&service).map(|s| s.clone());
                    // Most are current already: `refetch_now` read them before the write returned.
                    if let Some(slot) = slot
                        && slot.wanted.is_outdated()
                    {
                        self.fetch(&ns, &slot, Urgency::Background).await;
                    }
                }
            }
        }
    }

    async fn reload_all(&self) {
        self.rebuild_zones().await;
        for ns in self.namespaces.iter().map(|e| e.value().clone()).collect::<Vec<_>>() {
            self.reload_catalog(&ns, Urgency::Background).await;
            let slots: Vec<Arc<ServiceSlot>> = ns.services.iter().map(|e| e.value().clone()).collect();
            for slot in slots {
                self.fetch(&ns, &slot, Urgency::Background).await;
            }
        }
    }

    fn states_for(&self, http_name: &str) -> Vec<Arc<NamespaceState>> {
        self.namespaces.iter().filter(|e| e.key().http_name == http_name).map(|e| e.value().clone()).collect()
    }

    async fn reload_catalog(&self, ns: &NamespaceState, urgency: Urgency) -> bool {
        let mut attempted = ns.catalog_load.lock().await;
        let seen = ns.catalog_wanted.begin();
        match self.list_services(ns, &mut attempted, urgency).await {
            Ok(services) => {
                if ns.set_catalog(services.into_iter().map(|s| s.name).collect()) {
                    self.dirty.store(true, Ordering::Release);
                }
                ns.catalog_wanted.done(seen);
                true
            }
            Err(BackendError::NotFound(_)) => {
                ns.set_catalog(Vec::new());
                ns.catalog_wanted.done(seen);
                true
            }
            Err(e) => {
                tracing::debug!(namespace = %ns.ns.http_name, error = %e, "cannot list services");
                false
            }
        }
    }

    /// Asks the backend for the namespace's service names, under `catalog_load`, and notes in it
    /// when it asked (answered or not), for the queries waiting on the lock.
    async fn list_services(
        &self,
        ns: &NamespaceState,
        attempted: &mut Option<Instant>,
        urgency: Urgency,
    ) -> Result<Vec<crate::backend::ServiceInfo>, BackendError> {
        let result = self.backend.services(&ns.ns, urgency).await;
        *attempted = Some(Instant::now());
        result
    }

    /// The namespace's service names if they are loaded and current, without waiting.
    pub fn catalog_now(&self, ns: &NamespaceState) -> Option<Arc<Catalog>> {
        if ns.catalog_wanted.is_outdated() {
            return None;
        }
        ns.current_catalog()
    }

    /// The namespace's service names; loads them on first use.
    pub async fn catalog(self: &Arc<Self>, ns: &Arc<NamespaceState>) -> Option<Arc<Catalog>> {
        let since = Instant::now();
        if ns.catalog_wanted.is_outdated() {
            let mut attempted = ns.catalog_load.lock().await;
            if ns.catalog_wanted.is_outdated() {
                let seen = ns.catalog_wanted.begin();
                if let Ok(services) = self.list_services(ns, &mut attempted, Urgency::Waiting).await {
                    ns.set_catalog(services.into_iter().map(|s| s.name).collect());
                }
                ns.catalog_wanted.done(seen);
            }
        }
        if let Some(c) = ns.current_catalog() {
            return Some(c);
        }
        {
            // Not loaded: the queries that wait for it share one call, failed or not.
            let mut attempted = ns.catalog_load.lock().await;
            if ns.current_catalog().is_none() && attempted.is_none_or(|a| a < since) {
                match self.list_services(ns, &mut attempted, Urgency::Waiting).await {
                    Ok(services) => {
                        ns.set_catalog(services.into_iter().map(|s| s.name).collect());
                    }
                    Err(BackendError::NotFound(_)) => {
                        ns.set_catalog(Vec::new());
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %ns.ns.http_name, error = %e, "cannot list services")
                    }
                }
            }
        }
        if !self.push && !ns.catalog_refresher.swap(true, Ordering::AcqRel) {
            let cache = self.clone();
            let state = ns.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(cache.settings.load().catalog_refresh).await;
                    cache.reload_catalog(&state, Urgency::Background).await;
                }
            });
        }
        ns.current_catalog()
    }

    /// Fetches a service now (DiscoverInstances) and records the result, failures included (the
    /// slot turns stale or not-found).
    async fn fetch(&self, ns: &NamespaceState, slot: &ServiceSlot, urgency: Urgency) {
        let _guard = slot.load.lock().await;
        let _ = self.fetch_locked(ns, slot, urgency).await;
    }

    async fn fetch_locked(
        &self,
        ns: &NamespaceState,
        slot: &ServiceSlot,
        urgency: Urgency,
    ) -> Result<(), BackendError> {
        let seen = slot.wanted.begin();
        let result = self.fetch_now(ns, slot, urgency).await;
        slot.wanted.done(seen);
        result
    }

    async fn fetch_now(
        &self,
        ns: &NamespaceState,
        slot: &ServiceSlot,
        urgency: Urgency,
    ) -> Result<(), BackendError> {
        let result = self.backend.discover(&ns.ns, &slot.name, urgency).await;
        self.record(slot, result)
    }

    /// Fetches a service for a waiting query unless the backend was asked about it since the
    /// query came (`since`): queries that wait on the lock meanwhile take that call's outcome.
    async fn fetch_unless_asked_since(&self, ns: &NamespaceState, slot: &ServiceSlot, since: Instant) {
        let _guard = slot.load.lock().await;
        if !slot.attempted_since(since) {
            let _ = self.fetch_locked(ns, slot, Urgency::Waiting).await;
        }
    }

    /// Records what a fetch found, failures included (the slot turns stale or not-found).
    fn record(
        &self,
        slot: &ServiceSlot,
        result: Result<Discovered, BackendError>,
    ) -> Result<(), BackendError> {
        slot.attempted();
        match result {
            Ok(d) => {
                let grpc = d.grpc_config.clone();
                if slot.store(d, grpc) {
                    self.dirty.store(true, Ordering::Release);
                }
                Ok(())
            }
            Err(BackendError::NotFound(m)) => {
                slot.gone();
                self.dirty.store(true, Ordering::Release);
                Err(BackendError::NotFound(m))
            }
            Err(e) => {
                slot.failed(self.settings.load().max_stale, &e);
                Err(e)
            }
        }
    }

    /// Re-validates a service: a revision check, and a fetch when it moved or health is due.
    /// Skipped when the backend was asked about it after `since` (by a concurrent caller).
    async fn revalidate(&self, ns: &NamespaceState, slot: &ServiceSlot, since: Instant, urgency: Urgency) {
        let _guard = slot.load.lock().await;
        if slot.attempted_since(since) {
            return;
        }
        let (revision, health_due) = {
            let st = slot.read();
            let due = st.discovered_at.is_none_or(|t| t.elapsed() >= self.settings.load().health_refresh);
            (st.raw.as_ref().map(|d| d.revision), due)
        };
        let Some(revision) = revision.filter(|_| !health_due) else {
            let _ = self.fetch_locked(ns, slot, urgency).await;
            return;
        };
        let result = self.backend.revision(&ns.ns, &slot.name, urgency).await;
        slot.attempted();
        match result {
            // Equality only: some servers' revisions go down or repeat.
            Ok(r) if r == revision => slot.confirm(),
            Ok(_) => {
                let _ = self.fetch_locked(ns, slot, urgency).await;
            }
            Err(BackendError::NotFound(_)) => {
                slot.gone();
                self.dirty.store(true, Ordering::Release);
            }
            Err(e) => slot.failed(self.settings.load().max_stale, &e),
        }
    }

    /// Looks a service up for an answer, fetching or re-validating it as its backend requires.
    pub async fn service(self: &Arc<Self>, ns: &Arc<NamespaceState>, name: &str) -> Lookup {
        let slot = ns.slot(name);
        slot.marks.last_used.store(now_ms(), Ordering::Relaxed);
        if self.push || slot.refreshing.load(Ordering::Acquire) {
            let since = Instant::now();
            if slot.wanted.is_outdated() {
                let _guard = slot.load.lock().await;
                if slot.wanted.is_outdated() {
                    let _ = self.fetch_locked(ns, &slot, Urgency::Waiting).await;
                }
            }
            if let Some(found) = slot.lookup() {
                return found;
            }
            // Not loaded: the queries that miss together share one call (a cold start under
            // load made one call per waiting query, 13 per service, and queries timed out).
            self.fetch_unless_asked_since(ns, &slot, since).await;
            return slot.lookup().unwrap_or(Lookup::Outage);
        }
        // aws, and nobody keeps this service fresh: re-validate before answering. Concurrent
        // queries share one call: whoever waited while it was made takes its answer.
        let since = Instant::now();
        let has_data = slot.read().view.is_some();
        if has_data {
            self.revalidate(ns, &slot, since, Urgency::Waiting).await;
        } else {
            self.fetch_unless_asked_since(ns, &slot, since).await;
        }
        if !slot.refreshing.swap(true, Ordering::AcqRel) {
            self.active.fetch_add(1, Ordering::Relaxed);
            let cache = self.clone();
            let (ns, slot) = (ns.clone(), slot.clone());
            tokio::spawn(async move { cache.refresh_loop(ns, slot).await });
        }
        slot.lookup().unwrap_or(Lookup::Outage)
    }

    async fn refresh_loop(self: Arc<Self>, ns: Arc<NamespaceState>, slot: Arc<ServiceSlot>) {
        // The first check comes at a random point of the first interval (the service was just
        // checked for the query that started this loop). Services first asked for together (a
        // client starting, a burst of traffic) would otherwise be checked together every
        // interval: a burst of calls that holds up the queries on a busy core and meets the
        // API's rate limit all at once.
        let first = self.effective_refresh().mul_f64(rand::random::<f64>());
        let mut next = tokio::time::Instant::now() + first;
        loop {
            tokio::time::sleep_until(next).await;
            let idle_ms = now_ms().saturating_sub(slot.marks.last_used.load(Ordering::Relaxed));
            if idle_ms > self.settings.load().idle_timeout.as_millis() as u64 {
                slot.refreshing.store(false, Ordering::Release);
                self.active.fetch_sub(1, Ordering::Relaxed);
                // Answers built from it must not be served without a new check.
                bump(&slot.marks.generation);
                tracing::debug!(service = %slot.name, "idle: no longer refreshed");
                return;
            }
            let period = self.effective_refresh();
            let slack = backlog_slack(period);
            self.backlog.wait_drained(slack).await;
            self.revalidate(&ns, &slot, Instant::now(), Urgency::Background).await;
            // Checks fall due `slack` short of one interval apart, and wait at most `slack` for
            // queued queries: checks begin at most one interval apart, so a change waits at most
            // the interval plus one round trip, however slow calls are and whatever the queue.
            next += period - slack;
            let now = tokio::time::Instant::now();
            if next < now {
                // A check overran its slot: no catch-up burst, the next a whole step from now.
                next = now + period - slack;
            }
        }
    }

    /// Copies, encodes and writes the snapshot off the async workers: at 100,000 instances
    /// that is long enough to delay queries.
    async fn write_snapshot(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(path) = self.settings.load().snapshot.clone() else { return Ok(()) };
        let cache = self.clone();
        tokio::task::spawn_blocking(move || {
            // Streamed to the file rather than encoded into one buffer first: at 100,000
            // instances the JSON is ~15 MB.
            write_atomically(&path, |w| {
                serde_json::to_writer(w, &cache.to_snapshot()).map_err(std::io::Error::other)
            })
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Writes the snapshot now (shutdown).
    pub async fn flush(self: &Arc<Self>) {
        if self.settings.load().snapshot.is_some()
            && !self.push
            && let Err(e) = self.write_snapshot().await
        {
            tracing::warn!(error = %e, "cannot write the cache snapshot");
        }
    }

    fn to_snapshot(&self) -> Snapshot {
        let namespaces = self
            .namespaces
            .iter()
            .map(|e| {
                let ns = e.value();
                let services = ns
                    .services
                    .iter()
                    .filter_map(|s| {
                        let st = s.read();
                        let raw = st.raw.clone()?;
                        Some((
                            s.key().clone(),
                            SnapshotService {
                                confirmed_ms: st
                                    .confirmed
                                    .and_then(|c| c.duration_since(UNIX_EPOCH).ok())
                                    .map(|d| d.as_millis() as u64),
                                discovered: raw,
                            },
                        ))
                    })
                    .collect();
                SnapshotNamespace {
                    namespace: ns.ns.clone(),
                    services_names: ns.current_catalog().map(|c| c.names().cloned().collect()),
                    services,
                }
            })
            .collect();
        Snapshot { version: 1, namespaces }
    }

    fn load_snapshot(&self) {
        let settings = self.settings.load();
        let Some(path) = &settings.snapshot else { return };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the cache snapshot");
                return;
            }
        };
        let snapshot: Snapshot = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable cache snapshot");
                return;
            }
        };
        let mut services = 0;
        for n in snapshot.namespaces {
            let ns = self.namespace(&n.namespace);
            if let Some(names) = n.services_names {
                ns.set_catalog(names);
            }
            for (name, s) in n.services {
                let slot = ns.slot(&name);
                let grpc = s.discovered.grpc_config.clone();
                slot.store(Arc::unwrap_or_clone(s.discovered), grpc);
                let mut st = slot.write();
                st.confirmed = s.confirmed_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
                st.discovered_at = None;
                slot.marks.confirmed_ms.store(s.confirmed_ms.unwrap_or(0), Ordering::Relaxed);
                services += 1;
            }
        }
        tracing::info!(path = %path.display(), services, "loaded the last known good data");
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    namespaces: Vec<SnapshotNamespace>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotNamespace {
    namespace: NamespaceRef,
    services_names: Option<Vec<String>>,
    services: BTreeMap<String, SnapshotService>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotService {
    confirmed_ms: Option<u64>,
    /// Shared with the live cache: a snapshot of 100,000 instances copies none of them.
    discovered: Arc<Discovered>,
}

/// Writes to `path` what `write` writes, so that a crash at any point leaves either the old or
/// the new file whole.
fn write_atomically(
    path: &std::path::Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::fs::File::create(&tmp)?);
    write(&mut out)?;
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::Embedded;
    use crate::registry::shapes::{Attributes, InstanceRequest, RegisterInstanceRequest};
    use crate::registry::{Registry, RegistrySettings};

    #[test]
    fn the_refresh_interval_pays_for_attribute_reads_within_the_budget() {
        let calls_per_second = |active: f64, r: f64, a: f64| active / r + active / a.max(r);
        // Without attribute reads: one check per service per interval.
        assert_eq!(needed_refresh(100.0, 100.0, None), 1.0);
        for (active, rate) in
            [(2.0, 2.0), (100.0, 100.0), (1000.0, 100.0), (1500.0, 100.0), (10_000.0, 100.0)]
        {
            let attributes = Duration::from_secs(30);
            let r = needed_refresh(active, rate, Some(attributes));
            let spent = calls_per_second(active, r, 30.0);
            assert!((spent - rate).abs() < 1e-9, "{active} services at {rate}/s: R = {r}, {spent} calls/s");
        }
        // Once the interval reaches the attribute interval, every fetch reads them: two calls
        // per service per interval.
        assert_eq!(needed_refresh(3000.0, 100.0, Some(Duration::from_secs(30))), 60.0);
    }

    fn register(r: &Registry, service_id: &str, id: &str, ip: &str) {
        let attributes = Attributes::from([("AWS_INSTANCE_IPV4".to_string(), ip.to_string())]);
        r.register_instance(RegisterInstanceRequest {
            service_id: Some(service_id.into()),
            instance_id: Some(id.into()),
            attributes: Some(attributes),
            ..Default::default()
        })
        .unwrap();
    }

    fn ids(slot: &Arc<ServiceSlot>) -> Vec<String> {
        match slot.lookup() {
            Some(Lookup::Found { view, .. }) => view.instances.iter().map(|i| i.id.to_string()).collect(),
            _ => panic!("the service is cached"),
        }
    }

    /// A polled backend (as aws is): one service with no instances at revision 1; it records
    /// when each revision check came.
    #[derive(Default)]
    struct Polled {
        checks: std::sync::Mutex<Vec<Instant>>,
    }

    #[async_trait::async_trait]
    impl Backend for Polled {
        fn kind(&self) -> &'static str {
            "aws"
        }
        async fn default_zones(&self) -> Result<Vec<(String, String)>, BackendError> {
            Ok(Vec::new())
        }
        async fn services(
            &self,
            _: &NamespaceRef,
            _: Urgency,
        ) -> Result<Vec<crate::backend::ServiceInfo>, BackendError> {
            Ok(vec![crate::backend::ServiceInfo { name: "s".into() }])
        }
        async fn discover(&self, _: &NamespaceRef, _: &str, _: Urgency) -> Result<Discovered, BackendError> {
            Ok(Discovered { revision: 1, instances: Vec::new(), grpc_config: None })
        }
        async fn revision(&self, _: &NamespaceRef, _: &str, _: Urgency) -> Result<i64, BackendError> {
            self.checks.lock().unwrap().push(Instant::now());
            Ok(1)
        }
        fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
            None
        }
    }

    /// A backend that pushes its changes (as the embedded registry does), whose ListServices and
    /// DiscoverInstances take 10 ms each and fail while `failing` is set; it counts those calls.
    struct Pushed {
        changes: tokio::sync::broadcast::Sender<Change>,
        lists: AtomicUsize,
        discovers: AtomicUsize,
        failing: AtomicBool,
    }

    impl Pushed {
        fn new() -> Pushed {
            Pushed {
                changes: tokio::sync::broadcast::channel(8).0,
                lists: AtomicUsize::new(0),
                discovers: AtomicUsize::new(0),
                failing: AtomicBool::new(false),
            }
        }
    }

    #[async_trait::async_trait]
    impl Backend for Pushed {
        fn kind(&self) -> &'static str {
            "embedded"
        }
        async fn default_zones(&self) -> Result<Vec<(String, String)>, BackendError> {
            Ok(Vec::new())
        }
        async fn services(
            &self,
            _: &NamespaceRef,
            _: Urgency,
        ) -> Result<Vec<crate::backend::ServiceInfo>, BackendError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(BackendError::Unavailable("down".into()));
            }
            Ok(vec![crate::backend::ServiceInfo { name: "s".into() }])
        }
        async fn discover(&self, _: &NamespaceRef, _: &str, _: Urgency) -> Result<Discovered, BackendError> {
            self.discovers.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(BackendError::Unavailable("down".into()));
            }
            Ok(discovered(&["a"]))
        }
        async fn revision(&self, _: &NamespaceRef, _: &str, _: Urgency) -> Result<i64, BackendError> {
            Ok(7)
        }
        fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
            Some(self.changes.subscribe())
        }
    }

    /// A cache over a `Pushed` backend, and its namespace `ns`.
    fn pushed_cache() -> (Arc<Pushed>, Arc<Cache>, Arc<NamespaceState>) {
        let backend = Arc::new(Pushed::new());
        let cache = Cache::new(
            backend.clone(),
            settings(Duration::from_secs(5)),
            ZoneSource { explicit: Vec::new(), automatic: None },
        );
        let ns = cache.namespace(&NamespaceRef { http_name: "ns".into(), owner_account: None });
        (backend, cache, ns)
    }

    #[tokio::test(start_paused = true)]
    async fn queries_that_miss_together_share_one_backend_call() {
        let (backend, cache, ns) = pushed_cache();
        assert!(cache.pushed());
        let together = |n: usize| {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (cache, ns) = (cache.clone(), ns.clone());
                set.spawn(async move { cache.service(&ns, "s").await });
            }
            set.join_all()
        };

        // The backend down: twenty queries for a service not loaded share the one failed call.
        backend.failing.store(true, Ordering::SeqCst);
        let lookups = together(20).await;
        assert!(lookups.iter().all(|l| matches!(l, Lookup::Outage)));
        assert_eq!(backend.discovers.load(Ordering::SeqCst), 1);

        // Back, a moment later: twenty more share one call, and all find the service.
        backend.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let lookups = together(20).await;
        assert!(lookups.iter().all(|l| matches!(l, Lookup::Found { .. })));
        assert_eq!(backend.discovers.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn queries_waiting_for_the_service_names_share_one_call() {
        let (backend, cache, ns) = pushed_cache();
        let together = |n: usize| {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (cache, ns) = (cache.clone(), ns.clone());
                set.spawn(async move { cache.catalog(&ns).await });
            }
            set.join_all()
        };

        backend.failing.store(true, Ordering::SeqCst);
        assert!(together(20).await.iter().all(Option::is_none));
        assert_eq!(backend.lists.load(Ordering::SeqCst), 1, "one failed call for all who waited");

        backend.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let catalogs = together(20).await;
        assert!(catalogs.iter().all(|c| c.as_ref().is_some_and(|c| c.names().eq(["s"]))));
        assert_eq!(backend.lists.load(Ordering::SeqCst), 2);
    }

    fn discovered(ids: &[&str]) -> Discovered {
        let instances = ids
            .iter()
            .map(|id| crate::backend::DiscoveredInstance {
                id: (*id).into(),
                health: crate::backend::Health::Healthy,
                attributes: Arc::new(
                    [("AWS_INSTANCE_IPV4", format!("10.0.0.{}", id.len()).as_str())].into_iter().collect(),
                ),
            })
            .collect();
        Discovered { revision: 7, instances, grpc_config: None }
    }

    #[test]
    fn a_refetch_in_another_order_is_no_change() {
        let slot = Arc::new(ServiceSlot::new("s"));
        let view = || match slot.lookup() {
            Some(Lookup::Found { view, .. }) => view,
            _ => panic!("the service is cached"),
        };
        assert!(slot.store(discovered(&["a", "bb", "ccc"]), None));
        let generation = slot.marks.generation.load(Ordering::Acquire);
        let before = view();

        assert!(!slot.store(discovered(&["ccc", "a", "bb"]), None), "the same instances");
        assert_eq!(slot.marks.generation.load(Ordering::Acquire), generation);
        assert!(Arc::ptr_eq(&before, &view()), "the view is kept, not rebuilt");
        assert!(slot.store(discovered(&["ccc", "a"]), None), "one instance gone");
        assert!(slot.marks.generation.load(Ordering::Acquire) > generation);
        assert_eq!(ids(&slot), ["a", "ccc"]);
    }

    fn settings(refresh: Duration) -> CacheSettings {
        CacheSettings {
            refresh,
            health_refresh: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            max_stale: Duration::from_secs(3600),
            catalog_refresh: Duration::from_secs(3600),
            service_attributes: true,
            rate_limit: 100.0,
            snapshot: None,
        }
    }

    #[test]
    fn the_backlog_holds_while_any_socket_is_queued() {
        let b = Backlog::default();
        assert!(!b.is_queued());
        b.mark(true);
        b.mark(true);
        b.mark(false);
        assert!(b.is_queued(), "one of two sockets still has queries waiting");
        b.mark(false);
        assert!(!b.is_queued());
    }

    // Paused time: the clock moves only when every task waits, so the times below are exact.
    #[tokio::test(start_paused = true)]
    async fn background_checks_wait_for_queued_queries_and_stay_within_the_interval() {
        let refresh = Duration::from_secs(1);
        let slack = backlog_slack(refresh);
        assert_eq!(slack, BACKLOG_WAIT);
        let ms = Duration::from_millis;
        let backend = Arc::new(Polled::default());
        let cache = Cache::new(
            backend.clone(),
            settings(refresh),
            ZoneSource { explicit: Vec::new(), automatic: None },
        );
        let ns = cache.namespace(&NamespaceRef { http_name: "ns".into(), owner_account: None });
        cache.service(&ns, "s").await;
        // Past the first check (at a random point of the first interval).
        tokio::time::sleep(refresh.mul_f64(1.5)).await;
        let checks = || backend.checks.lock().unwrap().clone();
        let due = *checks().last().expect("a background check in the first interval") + refresh - slack;

        // Nothing queued: checks fall due the slack short of one interval apart.
        tokio::time::sleep_until(due + ms(1)).await;
        assert_eq!(checks().last(), Some(&due));

        // Queued throughout: the next check waits the whole slack, and so comes exactly one
        // interval after the last, never later.
        cache.backlog().mark(true);
        let waited = due + refresh;
        tokio::time::sleep_until(waited + ms(1)).await;
        assert_eq!(checks().last(), Some(&waited), "at most one interval apart");
        cache.backlog().mark(false);

        // A UDP thread's receive fills its batch: no check while queries are queued, the check
        // the moment they drain, and the schedule keeps its place.
        let due = due + (refresh - slack) * 2;
        cache.backlog().mark(true);
        tokio::time::sleep_until(due + ms(5)).await;
        assert_eq!(checks().last(), Some(&waited), "no check while queries are queued");
        cache.backlog().mark(false);
        tokio::time::sleep(ms(1)).await;
        assert_eq!(checks().last(), Some(&(due + ms(5))), "checked once drained");
        tokio::time::sleep_until(due + refresh - slack + ms(1)).await;
        assert_eq!(checks().last(), Some(&(due + refresh - slack)));
    }

    // A current-thread runtime: the change listener cannot run between a write and the checks,
    // so what they see was done before the write returned.
    #[tokio::test]
    async fn an_instance_write_is_cached_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), RegistrySettings::default()).unwrap();
        let svc = crate::registry::test_service(&r, None);
        register(&r, &svc, "a", "10.0.0.1");

        let cache = Cache::new(
            Arc::new(Embedded::new(r.clone())),
            settings(Duration::from_secs(5)),
            ZoneSource { explicit: Vec::new(), automatic: None },
        );
        cache.start().await;
        let ns = cache.namespace(&NamespaceRef { http_name: "ns".into(), owner_account: None });
        assert!(matches!(cache.service(&ns, "s").await, Lookup::Found { .. }));
        let slot = ns.slot("s");
        assert_eq!(ids(&slot), ["a"]);

        register(&r, &svc, "b", "10.0.0.2");
        assert!(!slot.wanted.is_outdated(), "read again before RegisterInstance returned");
        assert_eq!(ids(&slot), ["a", "b"]);

        r.deregister_instance(InstanceRequest {
            service_id: Some(svc.clone()),
            instance_id: Some("a".into()),
        })
        .unwrap();
        assert!(!slot.wanted.is_outdated(), "read again before DeregisterInstance returned");
        assert_eq!(ids(&slot), ["b"]);
    }
}
