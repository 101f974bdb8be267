//! Cloud Map scale and freshness under load, end to end with the release binary on loopback.
//!
//! `cargo bench --bench scale` runs both; `-- scale` or `-- freshness` one of them.
//!
//! - **scale**: a registry (a cloudmap-dns embedded registry, behind a proxy that counts every
//!   call) holds 50 namespaces, 10,000 services and 100,000 instances, plus a namespace of 300
//!   services x 10 instances (3,000 instances) for comparison: 10 instances per service in
//!   both, so both answer with the same records per name (8, `max_answers`), and the comparison
//!   is of the data's scale alone, not of answer sizes (with 1,000 x 3 the small answers were
//!   half the size, and the kernel's cost of the bigger datagrams was ~10% of a query). A cloudmap-dns with the aws backend serves the 50
//!   namespaces; every service is asked for (so all 10,000 are active). Reports its resident
//!   memory (and per instance), the calls/s the registry saw at steady state against the
//!   configured `backend.rate_limit` (pass or fail), and its answer path over the 10,000 names
//!   against another aws instance serving the 3,000-instance namespace. The two are saturated in
//!   turns of 20 ms within each of three runs (so both share the core's interruptions) and
//!   compared as pairs: q/s, and the UDP thread's CPU per query answered, in all and in user mode
//!   (its own code, without the kernel's send and receive), which leaves out the two refreshes'
//!   share of the core. The CPU each thread of each server took is shown too. Then the same
//!   comparison between two embedded-backend servers, where no refresh runs: the registry
//!   itself (100,000 + 3,000 instances, the namespaces are zones of their names) over the
//!   10,000 names, and a registry holding only the 300 x 10 namespace. Two controls follow
//!   (SCALE_CONTROLS=0 skips them): the registry at scale over the small one's 300 names, and
//!   two small registries alike.
//! - **freshness**: with the server at half of its saturation (open-loop load, bench/udp_load.rs),
//!   the time from DeregisterInstance returning to the first DNS answer without the instance:
//!   p50/p99/max, for the embedded backend (target 10 ms) and the aws backend (target
//!   refresh_ms + 50 ms); and in how many samples the first query after the return was already
//!   answered without it, beside the load's own p99 round trip (the floor of any sample). Also
//!   the share of the core each of the server's threads used, and the first 100 ms windows in
//!   which its socket dropped queries, with its threads' CPU in each and the time since the last
//!   registry write: where a loss comes from.
//!
//! The server under test is pinned to CPU 0 and the load generator to CPU 1 where there are two
//! (in freshness, the aws server's Cloud Map too). The freshness probe is left to the scheduler: on
//! the generator's busy core, waking it took a millisecond or more.
//! Env: SCALE_RATE_LIMIT (calls/s, default 500), SCALE_WINDOW_S (steady-state window, 30),
//! FRESH_SAMPLES (embedded, 200), FRESH_AWS_SAMPLES (60), FRESH_LOAD_QPS (a fixed load instead of
//! half of the measured saturation), FRESH_BACKENDS (`embedded,aws`: which to run).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "loader.rs"]
mod loader;
#[path = "udp_load.rs"]
mod udp_load;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, dns, proxy::Proxy};
use tokio::sync::Semaphore;
use udp_load::Pace;

const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;
const NAMESPACES: usize = 50;
const SERVICES: usize = 10_000;
const INSTANCES: usize = 100_000;
/// Services of the comparison namespace (3,000 instances): 10 instances each, as at scale.
const SMALL_SERVICES: usize = 300;
/// Paired runs of the answer path (both servers loaded in turns).
const ANSWER_PATH_RUNS: usize = 3;

/// Servers are pinned to one core after they start: one runtime worker thread (and one UDP
/// socket, in their config), as a server started on one core would have. Two workers time-sliced
/// on one core delay a task by the kernel's slice (milliseconds).
const ONE_CORE: &[(&str, &str)] = &[("TOKIO_WORKER_THREADS", "1")];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn two_cpus() -> bool {
    std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
}

/// The registry every scenario registers through: raised quotas (the scale data is 50
/// namespaces of 2,000 instances, AWS's default per-namespace quota, plus the others).
fn start_registry(dir: &Path) -> Server {
    let conf = dir.join("registry.toml");
    let text =
        "[dns]\nudp_workers = 1\n[registry.quotas]\nnamespaces = 100\ninstances_per_namespace = 100000\n";
    std::fs::write(&conf, text).unwrap();
    let args = ["--config", conf.to_str().unwrap()];
    Server::start_in_env(&dir.join("registry"), ONE_CORE, &args).expect("registry starts")
}

/// A cloudmap-dns with the aws backend against `endpoint`, serving `zones` (zone, namespace).
fn aws_server(dir: &Path, name: &str, endpoint: &str, backend: &str, zones: &[(String, String)]) -> Server {
    let mut conf = format!(
        "[dns]\nudp_workers = 1\n[backend]\nkind = \"aws\"\nendpoint_url = \"{endpoint}\"\n{backend}\n"
    );
    for (zone, ns) in zones {
        conf += &format!("[[dns.zones]]\nzone = \"{zone}\"\nnamespace = \"{ns}\"\n");
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, conf).unwrap();
    Server::start_in_env(&dir.join(name), ONE_CORE, &["--config", path.to_str().unwrap()])
        .expect("aws server starts")
}

fn queries(names: &[String]) -> Vec<Vec<u8>> {
    names.iter().map(|n| udp_load::query(n, 1)).collect()
}

/// Asks every name until each is answered with records (misses wait for the backend's budget),
/// at `rate` queries/s; the rounds it took.
fn warm(server: SocketAddr, names: &[String], rate: f64) -> usize {
    let mut left: Vec<String> = names.to_vec();
    for round in 1..=20 {
        let q = queries(&left);
        udp_load::run(server, &q, Pace::Rate(rate), Duration::from_secs_f64(left.len() as f64 / rate));
        left.retain(|n| {
            let m = dns::udp_raw(server, &dns::query(n, 1), Duration::from_secs(5)).map(|b| dns::parse(&b));
            m.is_none_or(|m| dns::a(&m).is_empty())
        });
        if left.is_empty() {
            return round;
        }
        eprintln!("  warm round {round}: {} names not answered yet", left.len());
    }
    panic!("{} names never answered", left.len());
}

/// Saturation (200 in flight) over `q`, then the q/s.
fn saturate(server: SocketAddr, q: &[Vec<u8>], seconds: f64) -> udp_load::Report {
    udp_load::run(server, q, Pace::Window(200), Duration::from_secs_f64(seconds))
}

/// Each thread's share of one CPU, as `name N%`.
fn thread_shares(threads: &[(String, f64)]) -> String {
    threads.iter().map(|(n, pct)| format!("{n} {pct:.0}%")).collect::<Vec<_>>().join(", ")
}

/// One server's part of an answer-path run.
struct Row {
    report: udp_load::Report,
    /// Its UDP thread's CPU per query answered (`udp_cost`).
    cost: (f64, f64),
    threads: Vec<(String, f64)>,
}

/// A server's UDP thread's CPU per query it answered over a watch of `seconds`, in
/// microseconds: in all, and in user mode (the answer path's own code; the rest is the kernel's
/// send and receive).
fn udp_cost(watched: &udp_load::Steal, seconds: f64, answered: u64) -> (f64, f64) {
    let share = |threads: &[(String, f64)]| {
        threads.iter().filter(|(name, _)| name == "dns-udp").map(|(_, pct)| pct).sum::<f64>()
    };
    let per_query =
        |pct: f64| if answered > 0 { pct / 100.0 * seconds * 1e6 / answered as f64 } else { f64::NAN };
    (per_query(share(&watched.threads)), per_query(share(&watched.threads_user)))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn scale(dir: &Path) {
    let rate_limit: f64 = env_or("SCALE_RATE_LIMIT", 500.0);
    let window = Duration::from_secs(env_or("SCALE_WINDOW_S", 30));
    println!("## scale: {NAMESPACES} namespaces, {SERVICES} services, {INSTANCES} instances (aws backend)");
    let registry = start_registry(dir);
    let c = registry.client();
    let gate = Arc::new(Semaphore::new(32));
    let started = Instant::now();
    let mut per_ns: Vec<loader::Services> = vec![loader::Services::new(); NAMESPACES];
    for (k, (name, v)) in loader::synthetic(SERVICES, INSTANCES).into_iter().enumerate() {
        per_ns[k % NAMESPACES].insert(name, v);
    }
    // Which namespace each service landed in, for its DNS name.
    let mut names = Vec::with_capacity(SERVICES);
    let mut loaded = 0;
    for (k, services) in per_ns.into_iter().enumerate() {
        names.extend(services.keys().map(|s| format!("{s}.ns{k}.scale")));
        let id = loader::namespace(&c, &format!("ns{k}")).await;
        loaded += loader::load(&c, &id, services, &gate).await;
    }
    let small_id = loader::namespace(&c, "small").await;
    let small = loader::synthetic(SMALL_SERVICES, 3_000);
    let small_names: Vec<String> = small.keys().map(|s| format!("{s}.small.scale")).collect();
    loaded += loader::load(&c, &small_id, small, &gate).await;
    println!("registered {loaded} instances through the API in {:.0} s", started.elapsed().as_secs_f64());

    let proxy = Proxy::start(registry.api);
    let zones: Vec<(String, String)> =
        (0..NAMESPACES).map(|k| (format!("ns{k}.scale"), format!("ns{k}"))).collect();
    let backend = format!("rate_limit = {rate_limit}");
    let big = aws_server(dir, "big", &proxy.url(), &backend, &zones);
    let pid = big.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_start = udp_load::rss_bytes(pid);

    // Every service asked for once (misses wait for the budget), then all are active.
    let warm_started = Instant::now();
    let rounds = warm(big.dns, &names, rate_limit * 0.8);
    println!(
        "all {SERVICES} services answered in {:.0} s ({rounds} round(s)); server RSS at start {:.1} MiB",
        warm_started.elapsed().as_secs_f64(),
        mib(rss_start)
    );

    // Steady state: only the background refresh calls the backend now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let from = Instant::now();
    let before = proxy.calls().len();
    tokio::time::sleep(window).await;
    let calls = proxy.calls().len() - before;
    let secs = from.elapsed().as_secs_f64();
    let per_s = calls as f64 / secs;
    // The token bucket may spend one second's burst on top of the rate.
    let allowed = rate_limit * (secs + 1.0);
    let pass = (calls as f64) <= allowed;
    let calls_list = proxy.calls();
    let mut ops: std::collections::BTreeMap<String, usize> = Default::default();
    for call in calls_list.iter().filter(|c| c.at >= from) {
        *ops.entry(call.operation.clone()).or_default() += 1;
    }
    println!(
        "backend calls at steady state, counted at the registry: {per_s:.1}/s over {secs:.0} s ({ops:?}); budget {rate_limit}/s: {}",
        if pass { "PASS" } else { "FAIL" }
    );
    // Checks only: attribute reads (GetServiceAttributes) and listings share the budget.
    let checks = ["DiscoverInstances", "DiscoverInstancesRevision"]
        .iter()
        .map(|op| ops.get(*op).copied().unwrap_or(0))
        .sum::<usize>() as f64;
    println!(
        "each active service is re-validated every {:.1} s on average (refresh_ms 1000 wanted; the budget stretches it)",
        SERVICES as f64 / (checks / secs).max(0.001)
    );

    let rss = udp_load::rss_bytes(pid);
    println!(
        "server RSS with {INSTANCES} instances cached: {:.1} MiB (< 256 MiB: {}); {:.0} bytes per instance above the start",
        mib(rss),
        if rss < 256 << 20 { "PASS" } else { "FAIL" },
        rss.saturating_sub(rss_start) as f64 / INSTANCES as f64
    );

    // The answer path: the same server over its 10,000 names against another aws instance
    // serving the 3,000-instance namespace, same budget.
    let small_server =
        aws_server(dir, "small", &proxy.url(), &backend, &[("small.scale".into(), "small".into())]);
    warm(small_server.dns, &small_names, rate_limit * 0.8);
    compare_answer_paths("aws backend", [&big, &small_server], [&names, &small_names], SCALE_ROWS);
    println!("server RSS after the load: {:.1} MiB", mib(udp_load::rss_bytes(big.child.id())));
    drop((big, small_server));

    // The same comparison between two embedded-backend servers: the registry itself (its 50
    // namespaces and the small one are zones of their names), and one holding only the 300 x 10
    // namespace. No refresh runs in either, so this is the data's scale alone; above, each aws
    // server's refresh also shares the core, and the big one's refetches every service it
    // re-validates (each is re-validated every 20 s within the budget, or 40 s with its attribute
    // reads, past `health_refresh_ms`).
    let small_registry = start_small_registry(&dir.join("small-registry"), &gate).await;
    let embedded_names: Vec<String> =
        names.iter().map(|n| n.trim_end_matches(".scale").to_string()).collect();
    let embedded_small: Vec<String> =
        small_names.iter().map(|n| n.trim_end_matches(".scale").to_string()).collect();
    warm(registry.dns, &embedded_names, 20_000.0);
    warm(small_registry.dns, &embedded_small, 20_000.0);
    println!(
        "embedded registry RSS with {} instances stored and {SERVICES} services' answers cached: {:.1} MiB",
        INSTANCES + 3_000,
        mib(udp_load::rss_bytes(registry.child.id()))
    );
    compare_answer_paths(
        "embedded backend",
        [&registry, &small_registry],
        [&embedded_names, &embedded_small],
        SCALE_ROWS,
    );
    if !env_or("SCALE_CONTROLS", true) {
        return;
    }
    // Controls, to tell what the comparison above measures. The registry at scale over the
    // same 300 names as the small one (the same answers, so the difference is the process:
    // its heap, its maps' sizes); then two small registries alike (the benchmark's own bias:
    // which server of a pair goes first, its port, the drift within a run).
    warm(registry.dns, &embedded_small, 20_000.0);
    compare_answer_paths(
        "embedded backend, control: the same 300 names",
        [&registry, &small_registry],
        [&embedded_small, &embedded_small],
        ["103,000 instances stored, 300 names", "3,000 instances, 300 names"],
    );
    let twin = start_small_registry(&dir.join("twin-registry"), &gate).await;
    warm(twin.dns, &embedded_small, 20_000.0);
    compare_answer_paths(
        "embedded backend, control: two alike",
        [&twin, &small_registry],
        [&embedded_small, &embedded_small],
        ["3,000 instances, 300 names (twin)", "3,000 instances, 300 names"],
    );
}

/// A registry in `dir` holding only the comparison namespace (`small`, 300 x 10).
async fn start_small_registry(dir: &Path, gate: &Arc<Semaphore>) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let registry = start_registry(dir);
    let id = loader::namespace(&registry.client(), "small").await;
    loader::load(&registry.client(), &id, loader::synthetic(SMALL_SERVICES, 3_000), gate).await;
    registry
}

/// The rows of the comparison at scale (`rows` of `compare_answer_paths`).
const SCALE_ROWS: [&str; 2] = ["100,000 instances, 10,000 names", "3,000 instances, 300 names"];

/// The answer paths of two servers (at scale, the first over the 10,000 names and the second over
/// the 300 of the comparison namespace; in the controls, both over the 300), saturated in turns
/// of 20 ms within each of `ANSWER_PATH_RUNS` runs, so that they share the core's interruptions
/// and the machine's drift (back-to-back runs of seconds differed by up to 2x here); each run's
/// two servers compare as a pair, and the median of the pairs is reported.
fn compare_answer_paths(what: &str, servers: [&Server; 2], names: [&[String]; 2], rows: [&str; 2]) {
    let pinned = two_cpus();
    if pinned {
        for s in servers {
            udp_load::pin_process(s.child.id(), SERVER_CPU);
        }
    }
    let queries = names.map(queries);
    let targets =
        servers.map(|s| udp_load::Target { server: s.dns, pace: Pace::Window(200), list_slow: false });
    let watched = servers.map(|s| (s.dns.port(), s.child.id()));
    let load = std::thread::spawn(move || {
        if pinned {
            udp_load::pin_to(LOAD_CPU);
        }
        (0..ANSWER_PATH_RUNS)
            .map(|_| {
                // The CPU each thread of each server took: the answer path's cost per query
                // apart from the refreshes' share.
                let watches = watched.map(|(port, pid)| udp_load::StealWatch::start(SERVER_CPU, port, pid));
                let started = Instant::now();
                let reports = udp_load::run_interleaved_each(
                    &targets,
                    &[&queries[0], &queries[1]],
                    Duration::from_secs(6),
                    Duration::from_millis(20),
                );
                let seconds = started.elapsed().as_secs_f64();
                let mut rows = reports.into_iter().zip(watches).map(|(report, w)| {
                    let watched = w.stop();
                    Row {
                        cost: udp_cost(&watched, seconds, report.received),
                        report,
                        threads: watched.threads,
                    }
                });
                [(); 2].map(|_| rows.next().expect("a report per server"))
            })
            .collect::<Vec<[Row; 2]>>()
    });
    let runs = load.join().unwrap();
    println!("answer path, {what}:");
    println!(
        "| run | data | q/s | lost | bad | p50 ms | p99 ms | UDP thread us/query (user) | its server's threads |\n|---|---|---:|---:|---:|---:|---:|---:|---|"
    );
    for (i, run) in runs.iter().enumerate() {
        for (data, row) in rows.iter().zip(run) {
            let r = &row.report;
            println!(
                "| {} | {data} | {:.0} | {} | {} | {:.3} | {:.3} | {:.2} ({:.2}) | {} |",
                i + 1,
                r.qps(),
                r.lost(),
                r.bad + r.nxdomain,
                r.percentile_ms(0.5),
                r.percentile_ms(0.99),
                row.cost.0,
                row.cost.1,
                thread_shares(&row.threads)
            );
        }
    }
    // As fast: the first row's figure over the second's (at scale over 3,000 instances), each
    // run's pair compared, the median of the runs.
    let median = |ratio: fn(&[Row; 2]) -> f64| {
        let mut r: Vec<f64> = runs.iter().map(ratio).collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    println!(
        "answer path, {} / {}, {what} (median of {ANSWER_PATH_RUNS} paired runs): {:.2} by q/s; {:.2} by the UDP thread's CPU per query; {:.2} by its user time",
        rows[0],
        rows[1],
        median(|[big, small]| big.report.qps() / small.report.qps()),
        median(|[big, small]| small.cost.0 / big.cost.0),
        median(|[big, small]| small.cost.1 / big.cost.1),
    );
}

/// Asks `name` every `poll` (the resolution of the reading) until its A records satisfy `want`;
/// when that was first seen, and whether the first answer already did.
fn until_answer(
    server: SocketAddr,
    name: &str,
    poll: Duration,
    limit: Duration,
    want: impl Fn(&[Ipv4Addr]) -> bool,
) -> Option<(Instant, bool)> {
    let start = Instant::now();
    let query = dns::query(name, 1);
    let mut first = true;
    while start.elapsed() < limit {
        let asked = Instant::now();
        if let Some(b) = dns::udp_raw(server, &query, Duration::from_millis(200)) {
            let at = Instant::now();
            if want(&dns::a(&dns::parse(&b))) {
                return Some((at, first));
            }
        }
        first = false;
        // A steady poll, not a spin: spinning adds tens of thousands of queries a second to the
        // load and a busy thread to whichever core it lands on.
        std::thread::sleep(poll.saturating_sub(asked.elapsed()));
    }
    None
}

/// Registers and deregisters probe instances of `service_id` (DNS name `name`) while the server
/// (already pinned) takes open-loop load at half of its saturation over `names`; prints the
/// time from each DeregisterInstance returning to the first answer without the instance.
/// Each DeregisterInstance waits a random part of `phase` first: the probe shows right after a
/// refresh, and deregistrations in use come at any time relative to it, not right after one.
#[allow(clippy::too_many_arguments)] // a benchmark step: each is a knob of the run
async fn freshness_under_load(
    what: &str,
    c: &aws_sdk_servicediscovery::Client,
    service_id: &str,
    name: &str,
    server: &Server,
    names: &[String],
    samples: usize,
    (target, phase): (Duration, Duration),
) {
    let metrics = server;
    let server = server.dns;
    let calls_before = backend_calls(metrics);
    let q = queries(names);
    let pinned = two_cpus();
    let q2 = q.clone();
    let sat = std::thread::spawn(move || {
        if pinned {
            udp_load::pin_to(LOAD_CPU);
        }
        saturate(server, &q2, 3.0)
    })
    .join()
    .unwrap();
    // FRESH_LOAD_QPS fixes the load, to compare builds at one rate when saturation readings differ.
    let rate = env_or("FRESH_LOAD_QPS", sat.qps() / 2.0);
    let server_drops_before = udp_load::socket_drops(server.port());
    let watch_start = Instant::now();
    let steal = udp_load::StealWatch::start(SERVER_CPU, server.port(), metrics.child.id());
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || {
        if pinned {
            udp_load::pin_to(LOAD_CPU);
        }
        let mut total: Option<udp_load::Report> = None;
        while !stop2.load(Ordering::Relaxed) {
            let r = udp_load::run(server, &q, Pace::Rate(rate), Duration::from_secs(2));
            total = Some(match total {
                Some(t) => t.merge(r),
                None => r,
            });
        }
        total
    });
    let wait = target * 4 + Duration::from_secs(2);
    // A fortieth of the target, at most 1 ms: 250 us for the embedded backend.
    let poll = (target / 40).min(Duration::from_millis(1));
    let mut got = Vec::new();
    // Samples whose first query after DeregisterInstance returned was already answered without
    // the instance: the data was current at the return, and the time is one query's round trip.
    let mut first_fresh = 0;
    // When each write returned, to set the drop windows beside them.
    let mut writes = Vec::new();
    for i in 0..samples {
        let id = format!("probe{i}");
        let ip = Ipv4Addr::new(10, 250, (i >> 8) as u8, i as u8);
        let r = c
            .register_instance()
            .service_id(service_id)
            .instance_id(&id)
            .attributes("AWS_INSTANCE_IPV4", ip.to_string());
        r.send().await.expect("register");
        writes.push(Instant::now());
        until_answer(server, name, poll, wait, |a| a.contains(&ip)).expect("the probe instance shows");
        tokio::time::sleep(phase.mul_f64(rand::random::<f64>())).await;
        c.deregister_instance().service_id(service_id).instance_id(&id).send().await.expect("deregister");
        let returned = Instant::now();
        writes.push(returned);
        let (at, first) =
            until_answer(server, name, poll, wait, |a| !a.contains(&ip)).expect("the probe instance goes");
        got.push(at.saturating_duration_since(returned));
        first_fresh += first as usize;
    }
    stop.store(true, Ordering::Relaxed);
    let load = load.join().unwrap().expect("load ran");
    let server_drops = udp_load::socket_drops(server.port()).saturating_sub(server_drops_before);
    let steal = steal.stop();
    let calls = backend_calls(metrics).since(&calls_before);
    got.sort();
    let pct = |p: f64| got[((got.len() as f64 * p).ceil() as usize).clamp(1, got.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {what} | {:.0} of {:.0} | {} ({} at the server, {} at the generator; at most {} owed) | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
        rate,
        sat.qps(),
        load.lost(),
        server_drops,
        load.client_drops,
        load.max_owed,
        samples,
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(got[got.len() - 1]),
        ms(target),
        if pct(0.99) <= target { "PASS" } else { "FAIL" }
    );
    println!(
        "  {what}: the hypervisor took CPU {SERVER_CPU} for {} ms of the run, at most {} ms of a 100 ms sample",
        steal.total_ms, steal.worst_ms
    );
    // Against the load's own round trips: a sample cannot come in under one query's.
    println!(
        "  {what}: {first_fresh} of {samples} samples answered without the instance at the first query; the load's own p99 round trip {:.2} ms",
        load.percentile_ms(0.99)
    );
    println!(
        "  {what}: the server's threads used, of one CPU over the run: {}",
        thread_shares(&steal.threads)
    );
    // The first windows say when the loss began and beside what; the count says how long.
    const SHOWN: usize = 12;
    if steal.drops.len() > SHOWN {
        println!("  {what}: queries dropped in {} windows of 100 ms, the first {SHOWN}:", steal.drops.len());
    }
    for w in steal.drops.iter().take(SHOWN) {
        let at = watch_start + Duration::from_millis(w.at_ms);
        let last_write = writes.iter().rev().find(|&&t| t <= at).map(|&t| (at - t).as_millis());
        let since = last_write.map_or("no write before".into(), |ms| format!("{ms} ms after a write"));
        println!("  {what}: drops {} ({since})", w.to_text());
    }
    if calls.revisions > 0.0 {
        println!(
            "  {what}: during the run, {:.0} DiscoverInstancesRevision calls/s, mean {:.2} ms; DiscoverInstances mean {:.2} ms",
            calls.revisions / calls.seconds,
            calls.revision_s * 1000.0 / calls.revisions,
            calls.discover_s * 1000.0 / calls.discovers.max(1.0)
        );
    }
}

/// The server's own count and total time of its backend calls, from its metrics.
struct BackendCalls {
    at: Instant,
    seconds: f64,
    revisions: f64,
    revision_s: f64,
    discovers: f64,
    discover_s: f64,
}

fn backend_calls(server: &Server) -> BackendCalls {
    let (_, body) = server.http_get("/metrics");
    let h = |op: &str, part: &str| {
        common::metric_in(
            &body,
            &format!("cloudmap_dns_backend_request_duration_seconds_{part}"),
            &[("operation", op)],
        )
    };
    BackendCalls {
        at: Instant::now(),
        seconds: 0.0,
        revisions: h("DiscoverInstancesRevision", "count"),
        revision_s: h("DiscoverInstancesRevision", "sum"),
        discovers: h("DiscoverInstances", "count"),
        discover_s: h("DiscoverInstances", "sum"),
    }
}

impl BackendCalls {
    fn since(&self, before: &BackendCalls) -> BackendCalls {
        BackendCalls {
            at: self.at,
            seconds: (self.at - before.at).as_secs_f64(),
            revisions: self.revisions - before.revisions,
            revision_s: self.revision_s - before.revision_s,
            discovers: self.discovers - before.discovers,
            discover_s: self.discover_s - before.discover_s,
        }
    }
}

async fn freshness(dir: &Path) {
    let samples: usize = env_or("FRESH_SAMPLES", 200);
    let aws_samples: usize = env_or("FRESH_AWS_SAMPLES", 60);
    println!("## freshness under load: DeregisterInstance returned -> first answer without the instance");
    let registry = start_registry(dir);
    let c = registry.client();
    let ns = loader::namespace(&c, "fresh").await;
    let data = loader::synthetic(1_000, 3_000);
    let names: Vec<String> = data.keys().map(|s| format!("{s}.fresh")).collect();
    loader::load(&c, &ns, data, &Arc::new(Semaphore::new(32))).await;
    let probe = c.create_service().name("probe").namespace_id(&ns).send().await.expect("probe service");
    let probe = probe.service().and_then(|s| s.id()).expect("service id").to_string();
    // An instance that stays, so the name answers throughout.
    let anchor = c.register_instance().service_id(&probe).instance_id("anchor");
    anchor.attributes("AWS_INSTANCE_IPV4", "10.251.0.1").send().await.expect("anchor");
    println!(
        "| backend | load q/s (of saturation) | load lost | samples | p50 ms | p99 ms | max ms | target ms | |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );

    let backends = std::env::var("FRESH_BACKENDS").unwrap_or_else(|_| "embedded,aws".into());
    let wanted = |b: &str| backends.split(',').any(|w| w.trim() == b);

    // Embedded: the registry's own DNS server, one process.
    let pinned = two_cpus();
    if wanted("embedded") {
        warm(registry.dns, &names, 20_000.0);
        if pinned {
            udp_load::pin_process(registry.child.id(), SERVER_CPU);
        }
        let target = Duration::from_millis(10);
        let knobs = (target, Duration::ZERO);
        freshness_under_load("embedded", &c, &probe, "probe.fresh", &registry, &names, samples, knobs).await;
        if pinned {
            udp_load::unpin_process(registry.child.id());
        }
    }
    if !wanted("aws") {
        return;
    }

    // aws: a second cloudmap-dns against the registry's API. Its budget covers the 1,001
    // active services at one revision call per refresh (refresh_ms 1000).
    let refresh = 1000;
    let backend = format!("refresh_ms = {refresh}\nrate_limit = 2500");
    let aws =
        aws_server(dir, "fresh-aws", &registry.endpoint(), &backend, &[("fresh".into(), "fresh".into())]);
    warm(aws.dns, &names, 2_000.0);
    if pinned {
        udp_load::pin_process(aws.child.id(), SERVER_CPU);
        // Cloud Map is remote: its stand-in shares the load generator's core, not the server's.
        udp_load::pin_process(registry.child.id(), LOAD_CPU);
    }
    let knobs = (Duration::from_millis(refresh + 50), Duration::from_millis(refresh));
    freshness_under_load("aws", &c, &probe, "probe.fresh", &aws, &names, aws_samples, knobs).await;
}

fn main() {
    // cargo bench passes --bench; the rest picks scenarios.
    let picked: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| picked.is_empty() || picked.iter().any(|p| p == name);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        if run("scale") {
            scale(tmp.path()).await;
        }
        if run("freshness") {
            freshness(tmp.path()).await;
        }
    });
}
