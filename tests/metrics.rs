//! Metrics and operations endpoints (PRODUCT.md §4, issue 5), against the real binary: every
//! family present at zero before traffic, values that follow a scripted query mix, bounded
//! series under random names and types, health and readiness, and the query log.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::dns::*;
use common::upstream::{Authority, Front};
use common::{Server, metric_in, until};

const FAMILIES: [(&str, &str); 8] = [
    ("queries_total", "counter"),
    ("cache_lookups_total", "counter"),
    ("answer_staleness_seconds", "histogram"),
    ("backend_requests_total", "counter"),
    ("backend_request_duration_seconds", "histogram"),
    ("upstream_requests_total", "counter"),
    ("cache_entries", "gauge"),
    ("request_duration_seconds", "histogram"),
];

fn series(text: &str, family: &str) -> usize {
    text.lines().filter(|l| l.starts_with(&format!("cloudmap_dns_{family}"))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_there_at_zero_before_any_traffic() {
    let authority = Authority::start().await;
    let upstream = authority.addr.to_string();
    let server = Server::start(&["--upstream", &upstream]);
    let (status, text) = server.http_get("/metrics");
    assert_eq!(status, 200);
    for (family, kind) in FAMILIES {
        let name = format!("cloudmap_dns_{family}");
        assert!(text.contains(&format!("# HELP {name} ")), "{family} has help text");
        assert!(text.contains(&format!("# TYPE {name} {kind}")), "{family} is a {kind}");
        assert!(series(&text, family) > 0, "{family} has series from the start");
    }
    for (name, labels) in [
        ("cloudmap_dns_queries_total", vec![("source", "namespace"), ("qtype", "SRV"), ("rcode", "NOERROR")]),
        ("cloudmap_dns_queries_total", vec![("source", "forward"), ("qtype", "A"), ("rcode", "SERVFAIL")]),
        ("cloudmap_dns_cache_lookups_total", vec![("cache", "forward"), ("result", "stale")]),
        (
            "cloudmap_dns_backend_requests_total",
            vec![("operation", "DiscoverInstances"), ("outcome", "throttled")],
        ),
        (
            "cloudmap_dns_upstream_requests_total",
            vec![("upstream", upstream.as_str()), ("outcome", "timeout")],
        ),
        ("cloudmap_dns_served_stale_total", vec![("cache", "namespace"), ("reason", "backend_unavailable")]),
        ("cloudmap_dns_fail_open_total", vec![("reason", "no_healthy_instances")]),
        ("cloudmap_dns_cache_evictions_total", vec![("cache", "forward")]),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))));
        assert!(line.is_some_and(|l| l.ends_with(" 0")), "{name}{labels:?} at zero from the start");
    }
    assert!(text.contains("process_resident_memory_bytes"), "process metrics");
    assert_eq!(metric_in(&text, "cloudmap_dns_upstream_up", &[("upstream", &upstream)]), 1.0);
    // Health and readiness.
    assert_eq!(server.http_get("/healthz").0, 200);
    assert_eq!(server.http_get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(server.http_get("/nope").0, 404);
}

#[test]
fn without_upstreams_the_upstream_families_are_still_exposed() {
    let server = Server::start(&[]);
    let (_, text) = server.http_get("/metrics");
    for (family, kind) in FAMILIES {
        let name = format!("cloudmap_dns_{family}");
        assert!(text.contains(&format!("# TYPE {name} {kind}")), "{family} is exposed");
    }
    assert!(text.contains("# TYPE cloudmap_dns_upstream_up gauge"));
    assert_eq!(series(&text, "upstream_requests_total"), 0, "no upstream, no series");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_follow_the_traffic() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 31), Some(authority.addr)).await;
    let upstream = front.addr.to_string();
    let server = Server::start(&["--demo", "--upstream", &upstream]);
    // Warm up (the first answers of a fresh start may be rebuilt as the demo data settles).
    ask(server.dns, "orders.demo", SRV).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ask(server.dns, "orders.demo", SRV).await;
    let (_, baseline) = server.http_get("/metrics");
    // A scripted mix: 9 namespace queries for a cached name and 1 for a new one (9 hits, 1
    // miss), 4 forwarded queries for one name (1 miss, 3 hits), 2 refused (another class).
    for _ in 0..9 {
        ask(server.dns, "orders.demo", SRV).await;
    }
    ask(server.dns, "new.demo", SRV).await;
    for _ in 0..4 {
        ask(server.dns, "www.example.test", A).await;
    }
    let mut chaos = query("version.bind", TXT);
    let n = chaos.len();
    chaos[n - 11 - 1] = 3; // class CH: the QCLASS low byte, before the OPT record
    for _ in 0..2 {
        udp(server.dns, &chaos);
    }
    let (_, text) = server.http_get("/metrics");
    let m = |name: &str, labels: &[(&str, &str)]| {
        metric_in(&text, name, labels) - metric_in(&baseline, name, labels)
    };
    let lookups = "cloudmap_dns_cache_lookups_total";
    let (hits, misses) = (
        m(lookups, &[("cache", "namespace"), ("result", "hit")]),
        m(lookups, &[("cache", "namespace"), ("result", "miss")]),
    );
    assert_eq!((hits, misses), (9.0, 1.0));
    assert_eq!(hits / (hits + misses), 0.9, "the hit rate of the mix");
    assert_eq!(m(lookups, &[("cache", "forward"), ("result", "hit")]), 3.0);
    assert_eq!(m(lookups, &[("cache", "forward"), ("result", "miss")]), 1.0);
    let q = "cloudmap_dns_queries_total";
    assert_eq!(m(q, &[("source", "namespace"), ("qtype", "SRV"), ("rcode", "NOERROR")]), 9.0);
    assert_eq!(m(q, &[("source", "namespace"), ("qtype", "SRV"), ("rcode", "NXDOMAIN")]), 1.0);
    assert_eq!(m(q, &[("source", "forward"), ("qtype", "A"), ("rcode", "NOERROR")]), 4.0);
    assert_eq!(m(q, &[("source", "refused"), ("qtype", "TXT"), ("rcode", "REFUSED")]), 2.0);
    assert_eq!(m("cloudmap_dns_request_duration_seconds_count", &[("source", "namespace")]), 10.0);
    assert_eq!(m("cloudmap_dns_answer_staleness_seconds_count", &[("cache", "forward")]), 4.0);
    assert_eq!(m("cloudmap_dns_upstream_requests_total", &[("upstream", &upstream), ("outcome", "ok")]), 1.0);
    // The embedded registry's in-process reads count as backend requests.
    let total = |name: &str, labels: &[(&str, &str)]| metric_in(&text, name, labels);
    assert!(
        total(
            "cloudmap_dns_backend_requests_total",
            &[("operation", "DiscoverInstances"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(
        total("cloudmap_dns_backend_request_duration_seconds_count", &[("operation", "DiscoverInstances")])
            >= 1.0
    );
    // orders.demo's answer; new.demo's NXDOMAIN, asked once, is not stored.
    assert!(total("cloudmap_dns_cache_entries", &[("cache", "namespace")]) >= 1.0);
    assert_eq!(total("cloudmap_dns_cache_entries", &[("cache", "forward")]), 1.0);
}

/// A UDP thread keeps the counts of full batches (its queue not yet dry) to add to the shared
/// metrics a few batches at a time; when the queries then stop, they reach the metrics within
/// the thread's wake-up (100 ms), not at the next query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_of_full_batches_reach_the_metrics_when_the_queries_stop() {
    let server = Server::start(&["--demo"]);
    for _ in 0..2 {
        ask(server.dns, "orders.demo", SRV).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let series = [("source", "namespace"), ("qtype", "SRV"), ("rcode", "NOERROR")];
    let before = server.metric("cloudmap_dns_queries_total", &series);
    // Stopped, the server leaves 64 queries in its socket's queue; resumed, its UDP thread
    // reads them as two full batches (32 each) and then waits.
    let pid = server.child.id() as i32;
    // SAFETY: signals to the child process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ask = query("orders.demo", SRV);
    for id in 0..64u16 {
        ask[..2].copy_from_slice(&id.to_be_bytes());
        client.send_to(&ask, server.dns).unwrap();
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        client.recv_from(&mut buf).expect("every query answered");
    }
    let waited = until(Duration::from_secs(2), || {
        server.metric("cloudmap_dns_queries_total", &series) == before + 64.0
    })
    .await;
    assert!(waited < Duration::from_secs(1), "counted after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_names_and_types_keep_the_series_bounded() {
    let server = Server::start(&["--demo"]);
    let (_, before) = server.http_get("/metrics");
    let mut seed = 0x2545F4914F6CDD1Du64;
    for i in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = format!("r{seed:x}.{}", if i % 2 == 0 { "demo" } else { "elsewhere.test" });
        udp(server.dns, &query(&name, (seed >> 20) as u16));
    }
    let (_, after) = server.http_get("/metrics");
    for (family, _) in FAMILIES {
        assert_eq!(series(&after, family), series(&before, family), "{family}: no new series");
    }
    assert!(
        metric_in(
            &after,
            "cloudmap_dns_queries_total",
            &[("source", "namespace"), ("qtype", "other"), ("rcode", "NXDOMAIN")]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_log_is_off_by_default_and_says_what_dig_would() {
    let quiet = Server::start(&["--demo"]);
    ask(quiet.dns, "orders.demo", SRV).await;
    let loud = Server::start(&["--demo", "--log-queries"]);
    ask(loud.dns, "Orders.Demo", SRV).await;
    ask(loud.dns, "nothing.demo", A).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !quiet.log.lock().unwrap().iter().any(|l| l.contains("orders.demo")),
        "no per-query logs by default"
    );
    let log = loud.log.lock().unwrap().join("\n");
    let line =
        log.lines().find(|l| l.contains("Orders.Demo.")).unwrap_or_else(|| panic!("a query line:\n{log}"));
    for field in ["client=127.0.0.1", "qtype=33", "rcode=\"NOERROR\"", "source=\"namespace\"", "latency_us="]
    {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(log.lines().any(|l| l.contains("nothing.demo.") && l.contains("NXDOMAIN")));
}
