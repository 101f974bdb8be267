//! The answer path's own cost per cache hit, without sockets, on one thread and on two at once:
//! what the UDP threads' reads of the caches cost each other. A batch of 32 queries is answered
//! as the UDP loop answers one (`Engine::prepare`, then `answer_prepared` for each), either from
//! the shared maps alone (`shared`, as the TCP path and the lone-query path read them) or
//! through each thread's own copies (`own`, `ThreadCopies`, as the UDP threads do). Two kinds of
//! hit: zone names (`svcN.b`, the answer map) and forwarded names (`hostN.up.test`, the forward
//! cache, as an upstream's reply of one A record).
//!
//! Run: cargo bench --bench answer_threads   (ANSWER_THREADS_NAMES, _RECORDS, _SECONDS, _ROUNDS
//! to change; with 10 records, 8 of them are picked per answer, as at *Scale* in bench/README.md)
//!
//! With sockets, the kernel's send and receive are ~90% of a query (bench/README.md, *Profile*)
//! and their noise hides differences of this size; this measures the user-space part alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cloudmap_dns::acl::{self, Acl};
use cloudmap_dns::backend::{
    Backend, BackendError, Change, Discovered, DiscoveredInstance, Health, NamespaceRef, ServiceInfo, Urgency,
};
use cloudmap_dns::cache::{Cache, CacheSettings, ZoneSource};
use cloudmap_dns::dns::answer::Deps;
use cloudmap_dns::dns::engine::{Engine, EngineSettings, Fast, Received, ThreadCopies, Transport};
use cloudmap_dns::dns::wire;
use cloudmap_dns::forward::{self, Forwarder, reply};
use cloudmap_dns::metrics::{PUBLISH_EVERY, Tally};
use cloudmap_dns::zone::{HealthMode, Zone};

/// `svc0..` in namespace `b`, `instances` each; changes are pushed, so answers stay current.
struct Services {
    count: usize,
    instances: usize,
    changes: tokio::sync::broadcast::Sender<Change>,
}

#[async_trait::async_trait]
impl Backend for Services {
    fn kind(&self) -> &'static str {
        "bench"
    }
    async fn default_zones(&self) -> Result<Vec<(String, String)>, BackendError> {
        Ok(Vec::new())
    }
    async fn services(&self, _: &NamespaceRef, _: Urgency) -> Result<Vec<ServiceInfo>, BackendError> {
        Ok((0..self.count).map(|i| ServiceInfo { name: format!("svc{i}") }).collect())
    }
    async fn discover(
        &self,
        _: &NamespaceRef,
        service: &str,
        _: Urgency,
    ) -> Result<Discovered, BackendError> {
        let i: usize = service
            .strip_prefix("svc")
            .and_then(|n| n.parse().ok())
            .ok_or(BackendError::NotFound(service.into()))?;
        let instances = (0..self.instances)
            .map(|k| {
                let ip = format!("10.{}.{}.{k}", i / 256 % 256, i % 256);
                DiscoveredInstance {
                    id: format!("i{k}").into(),
                    health: Health::parse("HEALTHY"),
                    attributes: Arc::new([("AWS_INSTANCE_IPV4", ip.as_str())].into_iter().collect()),
                }
            })
            .collect();
        Ok(Discovered { revision: 1, instances, grpc_config: None })
    }
    async fn revision(&self, _: &NamespaceRef, _: &str, _: Urgency) -> Result<i64, BackendError> {
        Ok(1)
    }
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}

/// The hits (`zone`, `forwarded`), whether through each thread's own copies, and threads.
type Case = (&'static str, bool, usize);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(&wire::encode_name(name).expect("a name"));
    p.extend_from_slice(&[0, 1, 0, 1]);
    p
}

/// Stores an upstream's reply to `query` (one A record, an hour's TTL) in `f`'s cache, as the
/// forwarder stores what it receives.
fn store_forwarded(f: &Forwarder, query: &[u8], zones_generation: u64) {
    let q = wire::parse_query(query).expect("a query");
    let mut reply = query.to_vec();
    reply[2..8].copy_from_slice(&[0x81, 0x80, 0, 1, 0, 1]);
    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 192, 0, 2, query[1]]);
    let id = u16::from_be_bytes([query[0], query[1]]);
    let clamps = reply::Clamps { min_ttl: 0, max_ttl: 86_400, max_negative_ttl: 3_600 };
    let template = reply::accept(&reply, id, q.question, clamps).expect("a reply");
    let now = forward::mono_ms();
    let entry = forward::cache::Entry::new(template, None, now, 3_600, 0, zones_generation, Deps::new());
    let mut key = [0u8; wire::KEY_ROOM];
    let n = forward::key_into(&q, &mut key);
    f.cache().insert(&key[..n], entry, now);
}

/// Answers batches of 32 of `queries` (from `offset` on, in turn) for `seconds`: nanoseconds per
/// query on this thread.
fn answer_for(
    engine: &Engine,
    queries: &[Vec<u8>],
    offset: usize,
    own: bool,
    stop: &AtomicBool,
) -> (u64, Duration) {
    let mut copies = ThreadCopies::default();
    let (mut tally, mut out, client) = (Tally::new(), Vec::with_capacity(512), [127, 0, 0, 1].into());
    let (started, mut answered, mut at) = (Instant::now(), 0u64, offset);
    while !stop.load(Ordering::Relaxed) {
        let received = Received::now();
        let batch: Vec<&[u8]> =
            (0..32).map(|i| queries[(at + i * 7919) % queries.len()].as_slice()).collect();
        at = (at + 1) % queries.len();
        let mut mine = own.then_some(&mut copies);
        let prepared = engine.prepare(mine.as_deref_mut(), batch.iter().copied(), true);
        for i in 0..batch.len() {
            let fast = engine.answer_prepared(
                mine.as_deref_mut(),
                &prepared,
                i,
                Transport::Udp,
                client,
                &mut out,
                received,
                &mut tally,
            );
            assert!(matches!(fast, Fast::Answered), "every query is a hit");
            answered += 1;
        }
        // As the UDP loop does with full batches (`metrics::Tally`).
        tally.end_batch(received.at);
        if tally.pending() >= PUBLISH_EVERY {
            tally.publish();
        }
    }
    (answered, started.elapsed())
}

fn main() {
    let names: usize = env_or("ANSWER_THREADS_NAMES", 1_000);
    let records: usize = env_or("ANSWER_THREADS_RECORDS", 3);
    let seconds: f64 = env_or("ANSWER_THREADS_SECONDS", 2.0);
    let rounds: usize = env_or("ANSWER_THREADS_ROUNDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let backend = Arc::new(Services {
        count: names,
        instances: records,
        changes: tokio::sync::broadcast::channel(1).0,
    });
    let zone = Zone {
        name: "b".into(),
        wire: wire::encode_name("b").expect("a name"),
        namespace: NamespaceRef { http_name: "b".into(), owner_account: None },
        health: HealthMode::HealthyOrElseAll,
        ttl: 5,
        max_answers: 8,
        fallthrough: false,
        grpc_config: None,
    };
    let minute = Duration::from_secs(60);
    let cache = runtime.block_on(async {
        Cache::new(
            backend,
            CacheSettings {
                refresh: minute,
                health_refresh: minute,
                idle_timeout: Duration::from_secs(3600),
                max_stale: minute,
                catalog_refresh: minute,
                service_attributes: true,
                rate_limit: 1e6,
                snapshot: None,
            },
            ZoneSource { explicit: vec![zone], automatic: None },
        )
    });
    let settings = EngineSettings {
        server_name: wire::encode_name("localhost").expect("a name"),
        max_cached_answers: names * 2,
        allow_query: Acl::new(&acl::loopback()),
        allow_recursion: Acl::new(&acl::loopback()),
        query_log: false,
    };
    let config = cloudmap_dns::config::Config::default();
    // Its upstream is never asked: every forwarded name is in its cache.
    let forwarder =
        Forwarder::new(&["127.0.0.1:9".parse().expect("an address")], &[], config.forward_settings());
    let zones_generation = cache.zones_generation.load(Ordering::Acquire);
    let forwarded: Vec<Vec<u8>> = (0..names).map(|i| query(i as u16, &format!("host{i}.up.test"))).collect();
    for q in &forwarded {
        store_forwarded(&forwarder, q, zones_generation);
    }
    let engine = Arc::new(Engine::new(cache, Some(Arc::new(forwarder)), settings));
    let zone_names: Vec<Vec<u8>> = (0..names).map(|i| query(i as u16, &format!("svc{i}.b"))).collect();
    // Each zone name answered once through the slow path, which caches its answer; the next
    // time it is a hit.
    runtime.block_on(async {
        for q in &zone_names {
            for _ in 0..2 {
                let _ = engine.answer(q, Transport::Udp, [127, 0, 0, 1].into()).await;
            }
        }
    });
    let workloads = [("zone", Arc::new(zone_names)), ("forwarded", Arc::new(forwarded))];
    println!(
        "## answer path per hit, {names} names (zone: x {records} records), batches of 32, {seconds} s per reading, {rounds} rounds"
    );
    println!("| round | hits | reads | threads | ns per query on each thread | queries/s in all |");
    println!("|---|---|---|---:|---|---:|");
    // (hits, own, threads): each round's mean ns per query.
    let mut per_case: Vec<(Case, Vec<f64>)> = Vec::new();
    for round in 1..=rounds {
        for ((workload, queries), own) in workloads.iter().flat_map(|w| [false, true].map(|own| (w, own))) {
            for threads in [1usize, 2] {
                let stop = Arc::new(AtomicBool::new(false));
                let start = Arc::new(Barrier::new(threads + 1));
                let workers: Vec<_> = (0..threads)
                    .map(|t| {
                        let (engine, queries, stop, start) =
                            (engine.clone(), queries.clone(), stop.clone(), start.clone());
                        std::thread::spawn(move || {
                            start.wait();
                            answer_for(&engine, &queries, t * queries.len() / 2, own, &stop)
                        })
                    })
                    .collect();
                start.wait();
                std::thread::sleep(Duration::from_secs_f64(seconds));
                stop.store(true, Ordering::Relaxed);
                let results: Vec<(u64, Duration)> =
                    workers.into_iter().map(|w| w.join().expect("a worker")).collect();
                let ns: Vec<f64> = results.iter().map(|(n, d)| d.as_nanos() as f64 / *n as f64).collect();
                let total: f64 = results.iter().map(|(n, d)| *n as f64 / d.as_secs_f64()).sum();
                let mode = if own { "own" } else { "shared" };
                let each = ns.iter().map(|n| format!("{n:.0}")).collect::<Vec<_>>().join(", ");
                println!("| {round} | {workload} | {mode} | {threads} | {each} | {total:.0} |");
                let mean = ns.iter().sum::<f64>() / ns.len() as f64;
                match per_case.iter_mut().find(|(k, _)| *k == (*workload, own, threads)) {
                    Some((_, v)) => v.push(mean),
                    None => per_case.push(((*workload, own, threads), vec![mean])),
                }
            }
        }
    }
    println!();
    println!("| hits | reads | threads | median ns per query (mean of the threads) |");
    println!("|---|---|---:|---:|");
    for ((workload, own, threads), mut v) in per_case {
        v.sort_by(f64::total_cmp);
        let mode = if own { "own" } else { "shared" };
        println!("| {workload} | {mode} | {threads} | {:.1} |", v[v.len() / 2]);
    }
}
