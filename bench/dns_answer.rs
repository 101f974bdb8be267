//! The DNS answer path end to end: the release binary on loopback, with the embedded backend, and
//! closed-loop UDP clients. Reports queries/s and p50/p99 latency for answer-cache hits (A and SRV
//! of a cached service) and for misses (names never asked before, answered by building from the
//! namespace cache), and for forwarded names (an in-process hickory authority as the upstream):
//! forward-cache hits and misses that go upstream.
//!
//! Run: `cargo bench --bench dns_answer` (env: BENCH_SECONDS, BENCH_CLIENTS).
//! On a 2-core machine the clients share the CPU with the server: compare figures from one run,
//! and see ../shared/bench-peers for one-core-per-side measurements beside NSD and Unbound.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::dns;

/// Gives the i-th query's name.
type Names = Arc<dyn Fn(u64) -> String + Send + Sync>;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `clients` closed-loop clients for `seconds`; `name(i)` gives the i-th query's name.
fn drive(
    server: SocketAddr,
    clients: u64,
    seconds: u64,
    qtype: u16,
    name: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> (f64, Vec<Duration>, u64) {
    let counter = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (counter, lost, name) = (counter.clone(), lost.clone(), name.clone());
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                let mut lat = Vec::new();
                let mut buf = [0u8; 4096];
                while Instant::now() < deadline {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let q = dns::query_with(&name(i), qtype, &dns::Q { id: i as u16, ..dns::Q::default() });
                    let t = Instant::now();
                    sock.send_to(&q, server).unwrap();
                    match sock.recv_from(&mut buf) {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(_) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    lat.sort();
    (lat.len() as f64 / start.elapsed().as_secs_f64(), lat, lost.load(Ordering::Relaxed))
}

/// Names the upstream authority has, with TTL 300: an A record, a CNAME chain, the NS host.
const FORWARDED: [&str; 3] = ["www", "alias", "ns"];

#[tokio::main]
async fn main() {
    let seconds = env_or("BENCH_SECONDS", 3);
    let clients = env_or("BENCH_CLIENTS", 4);
    let authority = common::upstream::Authority::start().await;
    let upstream = authority.addr.to_string();
    let server = common::Server::start(&["--upstream", &upstream]);
    let c = server.client();
    let ns = common::http_namespace(&c, "bench").await;
    for s in 0..100 {
        let svc = c.create_service().name(format!("svc{s}")).namespace_id(&ns).send().await.unwrap();
        let svc = svc.service().unwrap().id().unwrap().to_string();
        for i in 0..3 {
            c.register_instance()
                .service_id(&svc)
                .instance_id(format!("i{i}"))
                .attributes("AWS_INSTANCE_IPV4", format!("10.{s}.0.{}", i + 1))
                .attributes("AWS_INSTANCE_PORT", "8080")
                .send()
                .await
                .unwrap();
        }
    }
    let dns_addr = server.dns;
    let cases: Vec<(&str, u16, Names)> = vec![
        ("cached A (100 services x 3)", dns::A, Arc::new(|i| format!("svc{}.bench", i % 100))),
        ("cached SRV", dns::SRV, Arc::new(|i| format!("svc{}.bench", i % 100))),
        ("miss (new name, NXDOMAIN)", dns::A, Arc::new(|i| format!("nx{i}.bench"))),
        ("miss (_cloudmap TXT)", dns::TXT, Arc::new(|i| format!("_cloudmap.svc{}.bench", i % 100))),
        ("forwarded, cache hit", dns::A, Arc::new(|i| format!("{}.example.test", FORWARDED[i as usize % 3]))),
        ("forwarded, miss (upstream)", dns::A, Arc::new(|i| format!("nx{i}.example.test"))),
    ];
    // Warm the caches for the hit cases.
    for s in 0..100 {
        for t in [dns::A, dns::SRV] {
            dns::udp(dns_addr, &dns::query(&format!("svc{s}.bench"), t));
        }
    }
    for name in FORWARDED {
        dns::udp(dns_addr, &dns::query(&format!("{name}.example.test"), dns::A));
    }
    println!("DNS answer path, {clients} closed-loop UDP clients, {seconds} s per case");
    println!("| case                          |   q/s    | p50 us | p99 us | lost |");
    println!("|-------------------------------|----------|--------|--------|------|");
    for (label, qtype, name) in cases {
        let (qps, lat, lost) = drive(dns_addr, clients, seconds, qtype, name);
        let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).map_or(0, |d| d.as_micros());
        println!("| {label:<29} | {qps:>8.0} | {:>6} | {:>6} | {lost:>4} |", pct(0.5), pct(0.99));
    }
}
