//! Every metric, defined once (PRODUCT.md §4), on our own registry, with help text and bounded
//! label sets, every known label combination created at start so dashboards see zeros rather
//! than missing series.
//!
//! The query path only touches pre-resolved handles (an atomic add, a histogram observe; on the
//! UDP loop, a `Tally` added to them once per received batch); no label lookup happens per
//! query. Gauges that mirror state (cache sizes, upstream health, the backend's rate budget) are
//! set when `/metrics` is scraped (`app`).

// Metric definitions are static: one that fails to build is a programming error that every test
// run finds (the unit test below renders them all), so `expect` is right here and nowhere else.
#![allow(clippy::expect_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus::local::LocalHistogram;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::dns::wire;

/// Where an answer came from (`queries_total{source}`, `request_duration_seconds{source}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Namespace = 0,
    Forward = 1,
    /// Refused (access control, no upstream, another class) or not a query we answer
    /// (FORMERR, NOTIMP, BADVERS).
    Refused = 2,
}

const SOURCES: [&str; 3] = ["namespace", "forward", "refused"];
const QTYPES: [(u16, &str); 14] = [
    (wire::TYPE_A, "A"),
    (wire::TYPE_NS, "NS"),
    (wire::TYPE_CNAME, "CNAME"),
    (wire::TYPE_SOA, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (wire::TYPE_TXT, "TXT"),
    (wire::TYPE_AAAA, "AAAA"),
    (wire::TYPE_SRV, "SRV"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (43, "DS"),
    (48, "DNSKEY"),
    (wire::TYPE_ANY, "ANY"),
];
const QTYPE_LABELS: usize = QTYPES.len() + 1; // + "other"
const RCODES: [&str; 8] =
    ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other"];
pub const RCODE_BADVERS_INDEX: usize = 6;

/// Which cache (`cache` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    Namespace = 0,
    Forward = 1,
}
const CACHES: [&str; 2] = ["namespace", "forward"];

/// `cache_lookups_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit = 0,
    Miss = 1,
    Stale = 2,
}
const RESULTS: [&str; 3] = ["hit", "miss", "stale"];

/// Why stale data was served (`served_stale_total{cache, reason}`).
pub const STALE_REASONS: [(CacheKind, &str); 4] = [
    (CacheKind::Namespace, "backend_unavailable"),
    (CacheKind::Namespace, "backend_throttled"),
    (CacheKind::Forward, "upstream_failed"),
    (CacheKind::Forward, "upstream_slow"),
];

/// Backend operations (`backend_requests_total{operation}`), as the Cloud Map API names them.
pub const OPERATIONS: [&str; 5] = [
    "DiscoverInstances",
    "DiscoverInstancesRevision",
    "ListServices",
    "ListNamespaces",
    "GetServiceAttributes",
];
pub const BACKEND_OUTCOMES: [&str; 5] = ["ok", "not_found", "throttled", "denied", "error"];
pub const UPSTREAM_OUTCOMES: [&str; 7] =
    ["ok", "timeout", "error", "servfail", "refused", "mismatched", "truncated"];

pub struct Metrics {
    pub registry: Registry,
    queries: Vec<IntCounter>,
    lookups: Vec<IntCounter>,
    staleness: Vec<Histogram>,
    request_duration: Vec<Histogram>,
    pub backend_requests: IntCounterVec,
    pub backend_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_up: IntGaugeVec,
    pub cache_entries: IntGaugeVec,
    pub cache_evictions: IntCounterVec,
    pub served_stale: IntCounterVec,
    /// `served_stale` resolved for each of `STALE_REASONS`: stale answers are counted per query.
    served_stale_by_reason: Vec<IntCounter>,
    pub fail_open: IntCounter,
    pub backend_budget_fill: Gauge,
    pub refresh_interval: Gauge,
    pub active_services: IntGauge,
    pub forward_prefetches: IntCounter,
    pub forward_loops: IntCounter,
    /// `queries_dropped_total{reason="overload"}`.
    pub dropped_overload: IntCounter,
    /// `config_reloads_total{outcome="applied"|"rejected"}`.
    pub reloads_applied: IntCounter,
    pub reloads_rejected: IntCounter,
}

fn name(n: &str) -> String {
    format!("cloudmap_dns_{n}")
}

fn counter_vec(r: &Registry, n: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name(n), help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn histogram_vec(r: &Registry, n: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h =
        HistogramVec::new(HistogramOpts::new(name(n), help).buckets(buckets), labels).expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

fn gauge_vec(r: &Registry, n: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name(n), help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter(r: &Registry, n: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name(n), help)).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, n: &str, help: &str) -> Gauge {
    let g = Gauge::with_opts(Opts::new(name(n), help)).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

/// 50 µs to 5 s: answers from the cache take microseconds, upstream and backend calls milliseconds.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ]
}

/// 0 (pushed, just confirmed) to a day (max-stale).
fn age_buckets() -> Vec<f64> {
    vec![0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0]
}

impl Metrics {
    fn new() -> Metrics {
        {
            let r = Registry::new();
            let queries_vec = counter_vec(
                &r,
                "queries_total",
                "DNS queries answered, by source, query type and rcode.",
                &["source", "qtype", "rcode"],
            );
            let mut queries = Vec::new();
            for s in SOURCES {
                for q in QTYPES.iter().map(|(_, l)| *l).chain(["other"]) {
                    for rc in RCODES {
                        queries.push(queries_vec.with_label_values(&[s, q, rc]));
                    }
                }
            }
            let lookups_vec = counter_vec(
                &r,
                "cache_lookups_total",
                "Cache lookups by cache and result: hit (answered from the cache), miss (had to ask the backend or an upstream, or build the answer), stale (served past freshness because the backend or upstreams failed).",
                &["cache", "result"],
            );
            let mut lookups = Vec::new();
            for c in CACHES {
                for res in RESULTS {
                    lookups.push(lookups_vec.with_label_values(&[c, res]));
                }
            }
            let staleness_vec = histogram_vec(
                &r,
                "answer_staleness_seconds",
                "Age of the data behind each answer: since it was last confirmed with the backend (0 when pushed by the embedded registry), or since the upstream sent it.",
                &["cache"],
                age_buckets(),
            );
            let staleness = CACHES.iter().map(|c| staleness_vec.with_label_values(&[c])).collect();
            let duration_vec = histogram_vec(
                &r,
                "request_duration_seconds",
                "Time from reading a query to its response being ready, by source.",
                &["source"],
                latency_buckets(),
            );
            let request_duration = SOURCES.iter().map(|s| duration_vec.with_label_values(&[s])).collect();
            let backend_requests = counter_vec(
                &r,
                "backend_requests_total",
                "Calls to the backend (AWS Cloud Map, or the embedded registry in process), by operation and outcome.",
                &["operation", "outcome"],
            );
            let backend_duration = histogram_vec(
                &r,
                "backend_request_duration_seconds",
                "Duration of backend calls, by operation (including time waiting for the rate budget).",
                &["operation"],
                latency_buckets(),
            );
            for op in OPERATIONS {
                backend_duration.with_label_values(&[op]);
                for o in BACKEND_OUTCOMES {
                    backend_requests.with_label_values(&[op, o]);
                }
            }
            let upstream_requests = counter_vec(
                &r,
                "upstream_requests_total",
                "Tries sent to upstream resolvers, by upstream and outcome (mismatched: replies ignored for a wrong ID or question; truncated: retried over TCP).",
                &["upstream", "outcome"],
            );
            let upstream_up = gauge_vec(
                &r,
                "upstream_up",
                "1 while an upstream is in use, 0 while it is skipped for failing.",
                &["upstream"],
            );
            let cache_entries = gauge_vec(&r, "cache_entries", "Entries held, by cache.", &["cache"]);
            let cache_evictions = counter_vec(
                &r,
                "cache_evictions_total",
                "Entries evicted to stay within the cache's bounds.",
                &["cache"],
            );
            let served_stale = counter_vec(
                &r,
                "served_stale_total",
                "Answers served from stale data, by cache and reason.",
                &["cache", "reason"],
            );
            for c in CACHES {
                cache_entries.with_label_values(&[c]);
                cache_evictions.with_label_values(&[c]);
            }
            let served_stale_by_reason = STALE_REASONS
                .iter()
                .map(|(c, reason)| served_stale.with_label_values(&[CACHES[*c as usize], reason]))
                .collect();
            let fail_open = counter_vec(
                &r,
                "fail_open_total",
                "Answers that fell back to every instance because none was healthy (HEALTHY_OR_ELSE_ALL), by reason.",
                &["reason"],
            )
            .with_label_values(&["no_healthy_instances"]);
            let backend_budget_fill = gauge(
                &r,
                "backend_rate_budget_fill_ratio",
                "How full the Cloud Map rate budget is: 1 = a full second's burst available, 0 = calls wait (aws backend; 1 for embedded).",
            );
            let refresh_interval = gauge(
                &r,
                "backend_refresh_interval_seconds",
                "Effective re-validation interval of active services: refresh-ms, stretched when the rate budget is short (0 when the backend pushes changes).",
            );
            let active_services = IntGauge::with_opts(Opts::new(
                name("backend_active_services"),
                "Services being kept fresh (asked for within the idle timeout).",
            ))
            .expect("valid metric");
            r.register(Box::new(active_services.clone())).expect("registered once");
            let forward_prefetches = counter(
                &r,
                "forward_prefetches_total",
                "Forward cache entries refreshed before they expired.",
            );
            let forward_loops = counter(
                &r,
                "forward_loops_total",
                "Forwarding loops found (our probe came back), and queries answered SERVFAIL because of one.",
            );
            let dropped = counter_vec(
                &r,
                "queries_dropped_total",
                "Queries read and not answered, by reason: overload (too many queries already waiting for the backend or upstreams).",
                &["reason"],
            );
            let dropped_overload = dropped.with_label_values(&["overload"]);
            let reloads = counter_vec(
                &r,
                "config_reloads_total",
                "Config reloads (SIGHUP), by outcome: applied, or rejected (invalid; the config in force is kept).",
                &["outcome"],
            );
            let reloads_applied = reloads.with_label_values(&["applied"]);
            let reloads_rejected = reloads.with_label_values(&["rejected"]);
            #[cfg(target_os = "linux")]
            {
                let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
            }
            Metrics {
                registry: r,
                queries,
                lookups,
                staleness,
                request_duration,
                backend_requests,
                backend_duration,
                upstream_requests,
                upstream_up,
                cache_entries,
                cache_evictions,
                served_stale,
                served_stale_by_reason,
                fail_open,
                backend_budget_fill,
                refresh_interval,
                active_services,
                forward_prefetches,
                forward_loops,
                dropped_overload,
                reloads_applied,
                reloads_rejected,
            }
        }
    }

    /// Counts one answered query.
    pub fn query(&self, source: Source, qtype: u16, rcode_index: usize, elapsed: Duration) {
        if let Some(c) = self.queries.get(query_index(source, qtype, rcode_index)) {
            c.inc();
        }
        if let Some(h) = self.request_duration.get(source as usize) {
            h.observe(elapsed.as_secs_f64());
        }
    }

    pub fn lookup(&self, cache: CacheKind, result: Lookup, age: Option<Duration>) {
        if let Some(c) = self.lookups.get(lookup_index(cache, result)) {
            c.inc();
        }
        if let (Some(age), Some(h)) = (age, self.staleness.get(cache as usize)) {
            h.observe(age.as_secs_f64());
        }
    }

    /// Where the hot path's counts go when they are not kept for a batch (`Tally`).
    pub fn direct(&'static self) -> Direct {
        Direct(self)
    }

    pub fn stale(&self, cache: CacheKind, reason: &str) {
        match STALE_REASONS.iter().position(|(c, r)| *c == cache && *r == reason) {
            Some(i) => self.served_stale_by_reason[i].inc(),
            None => self.served_stale.with_label_values(&[CACHES[cache as usize], reason]).inc(),
        }
    }

    pub fn backend(&self, operation: &str, outcome: &str, elapsed: Duration) {
        self.backend_requests.with_label_values(&[operation, outcome]).inc();
        self.backend_duration.with_label_values(&[operation]).observe(elapsed.as_secs_f64());
    }

    /// Creates the series of one upstream at zero.
    pub fn upstream_known(&self, upstream: &str) {
        for o in UPSTREAM_OUTCOMES {
            self.upstream_requests.with_label_values(&[upstream, o]);
        }
        self.upstream_up.with_label_values(&[upstream]).set(1);
    }

    /// An upstream removed by a reload: its `upstream_up` series goes.
    pub fn upstream_forgotten(&self, upstream: &str) {
        let _ = self.upstream_up.remove_label_values(&[upstream]);
    }

    pub fn upstream(&self, upstream: &str, outcome: &str) {
        self.upstream_requests.with_label_values(&[upstream, outcome]).inc();
    }

    pub fn set_entries(&self, cache: CacheKind, n: usize) {
        self.cache_entries.with_label_values(&[CACHES[cache as usize]]).set(n as i64);
    }

    /// Brings the evictions counter up to `total` (kept as an atomic where evictions happen).
    pub fn set_evictions(&self, cache: CacheKind, total: u64) {
        let c = self.cache_evictions.with_label_values(&[CACHES[cache as usize]]);
        let now = c.get();
        if total > now {
            c.inc_by(total - now);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        // The per-upstream families have a series per configured upstream; with none configured
        // the encoder leaves them out, yet every family is to be exposed from start-up.
        let per_upstream: [(&dyn prometheus::core::Collector, &str); 2] =
            [(&self.upstream_requests, "counter"), (&self.upstream_up, "gauge")];
        for (family, kind) in per_upstream {
            for desc in family.desc() {
                if !text.contains(&format!("# TYPE {} ", desc.fq_name)) {
                    text.push_str(&format!(
                        "# HELP {} {}\n# TYPE {} {kind}\n",
                        desc.fq_name, desc.help, desc.fq_name
                    ));
                }
            }
        }
        text
    }
}

pub fn rcode_label(index: usize) -> &'static str {
    RCODES.get(index).copied().unwrap_or("other")
}

pub fn source_label(source: Source) -> &'static str {
    SOURCES[source as usize]
}

/// The rcode label index of a response's header (BADVERS is passed explicitly: it lives in OPT).
pub fn rcode_index(response: &[u8]) -> usize {
    response.get(3).map_or(RCODES.len() - 1, |b| ((b & 0x0F) as usize).min(RCODES.len() - 1))
}

fn query_index(source: Source, qtype: u16, rcode_index: usize) -> usize {
    let q = QTYPES.iter().position(|(t, _)| *t == qtype).unwrap_or(QTYPES.len());
    ((source as usize) * QTYPE_LABELS + q) * RCODES.len() + rcode_index.min(RCODES.len() - 1)
}

fn lookup_index(cache: CacheKind, result: Lookup) -> usize {
    cache as usize * RESULTS.len() + result as usize
}

/// Where the answer path counts a query and its cache lookup: straight into the shared metrics
/// (`Direct`), or into a UDP loop's `Tally`, added to them once per received batch.
pub trait Counts {
    /// One answered query, read at `started`.
    fn query(&mut self, source: Source, qtype: u16, rcode_index: usize, started: Instant);
    /// One cache lookup, with the age of the data it found.
    fn lookup(&mut self, cache: CacheKind, result: Lookup, age: Option<Duration>);
}

/// Counts into the shared metrics at once: atomic adds and histogram observations per query.
pub struct Direct(&'static Metrics);

impl Counts for Direct {
    fn query(&mut self, source: Source, qtype: u16, rcode_index: usize, started: Instant) {
        self.0.query(source, qtype, rcode_index, started.elapsed());
    }

    fn lookup(&mut self, cache: CacheKind, result: Lookup, age: Option<Duration>) {
        self.0.lookup(cache, result, age);
    }
}

/// A UDP loop's counts, kept on its own thread and added to the shared metrics by `publish`.
/// Counted per query, the shared counters and histograms (atomic adds, a compare-and-swap loop
/// for each histogram's sum, two histograms and a clock read for the latency per query) were ~2%
/// of the core at saturation, as much as the rest of a forwarded hit's own work. Published per
/// batch, each of two UDP threads still paid ~10 of those adds per batch on lines the other
/// thread's adds had just taken (in process, 8% more per hit with two threads than with one,
/// 5% when published every 16 batches): the UDP loop publishes when the socket's queue runs
/// dry, and at most every `PUBLISH_EVERY` batches while it does not.
///
/// Every query of a batch is sent with the batch (one `sendmmsg`), so each one's latency is
/// the same: from the batch's read to `end_batch`, one clock read per batch.
pub struct Tally {
    /// Per `query_index`, and which of them are not zero.
    queries: Vec<u64>,
    counted: Vec<usize>,
    lookups: [u64; CACHES.len() * RESULTS.len()],
    /// Queries of this batch per source, for the latency histograms.
    answered: [u32; SOURCES.len()],
    latency: Vec<LocalHistogram>,
    staleness: Vec<LocalHistogram>,
    /// Batches ended since the last `publish`.
    pending: usize,
}

/// Batches a UDP loop ends between two publications at most, while its queue does not run dry:
/// at saturation (~300k q/s, 32 per batch) the metrics lag by under 2 ms.
pub const PUBLISH_EVERY: usize = 16;

impl Tally {
    pub fn new() -> Tally {
        let m = get();
        Tally {
            queries: vec![0; m.queries.len()],
            counted: Vec::new(),
            lookups: [0; CACHES.len() * RESULTS.len()],
            answered: [0; SOURCES.len()],
            latency: m.request_duration.iter().map(|h| h.local()).collect(),
            staleness: m.staleness.iter().map(|h| h.local()).collect(),
            pending: 0,
        }
    }

    /// `end_batch`, then `publish`.
    pub fn flush(&mut self, received: Instant) {
        self.end_batch(received);
        self.publish();
    }

    /// Ends a batch: every query counted since the last batch ended took from `received` (when
    /// its batch was read) to now. Kept on this thread until `publish`.
    pub fn end_batch(&mut self, received: Instant) {
        if self.answered.iter().any(|n| *n > 0) {
            let elapsed = received.elapsed().as_secs_f64();
            for (n, h) in self.answered.iter_mut().zip(&self.latency) {
                for _ in 0..std::mem::take(n) {
                    h.observe(elapsed);
                }
            }
        }
        self.pending += 1;
    }

    /// Batches ended since the last `publish`.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Adds the ended batches' counts to the shared metrics.
    pub fn publish(&mut self) {
        self.pending = 0;
        let m = get();
        for i in self.counted.drain(..) {
            if let (Some(n), Some(c)) = (self.queries.get_mut(i), m.queries.get(i)) {
                c.inc_by(std::mem::take(n));
            }
        }
        for (n, c) in self.lookups.iter_mut().zip(&m.lookups) {
            if *n > 0 {
                c.inc_by(std::mem::take(n));
            }
        }
        for h in self.latency.iter().chain(&self.staleness) {
            h.flush();
        }
    }
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::new()
    }
}

impl Counts for Tally {
    fn query(&mut self, source: Source, qtype: u16, rcode_index: usize, _started: Instant) {
        let i = query_index(source, qtype, rcode_index);
        if let Some(n) = self.queries.get_mut(i) {
            if *n == 0 {
                self.counted.push(i);
            }
            *n += 1;
        }
        if let Some(n) = self.answered.get_mut(source as usize) {
            *n += 1;
        }
    }

    fn lookup(&mut self, cache: CacheKind, result: Lookup, age: Option<Duration>) {
        if let Some(n) = self.lookups.get_mut(lookup_index(cache, result)) {
            *n += 1;
        }
        if let (Some(age), Some(h)) = (age, self.staleness.get(cache as usize)) {
            h.observe(age.as_secs_f64());
        }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch's latency is taken when it ends, however much later its counts are published.
    #[test]
    fn a_batch_latency_runs_to_its_end_not_to_its_publication() {
        let mut tally = Tally::new();
        let read = Instant::now() - Duration::from_millis(300);
        let refused = Source::Refused as usize;
        for _ in 0..2 {
            tally.query(Source::Refused, 1, 0, read);
        }
        tally.end_batch(read);
        let by_end = read.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(50));
        let local = &tally.latency[refused];
        assert_eq!(local.get_sample_count(), 2);
        let sum = local.get_sample_sum();
        assert!(
            (0.6..=2.0 * by_end).contains(&sum),
            "{sum} s for two queries read {by_end} s before their end"
        );
        tally.publish();
        assert_eq!((tally.latency[refused].get_sample_count(), tally.pending()), (0, 0));
    }

    #[test]
    fn every_family_is_present_at_zero_and_named_by_convention() {
        let text = get().render();
        for family in [
            "queries_total",
            "cache_lookups_total",
            "answer_staleness_seconds",
            "backend_requests_total",
            "backend_request_duration_seconds",
            "cache_entries",
            "request_duration_seconds",
            "served_stale_total",
            "fail_open_total",
            "cache_evictions_total",
        ] {
            assert!(text.contains(&format!("# TYPE cloudmap_dns_{family} ")), "{family} missing");
        }
        // Prometheus conventions: snake_case, counters end in _total, units in the name.
        for line in text.lines().filter(|l| l.starts_with("# TYPE cloudmap_dns_")) {
            let mut parts = line.split_whitespace().skip(2);
            let (n, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{n}");
            match kind {
                "counter" => assert!(n.ends_with("_total"), "{n}"),
                "histogram" => assert!(n.ends_with("_seconds"), "{n}"),
                _ => assert!(!n.ends_with("_total"), "{n}"),
            }
        }
    }
}
