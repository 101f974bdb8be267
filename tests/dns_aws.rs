//! The aws backend against a real Cloud Map API server (the embedded registry of a second
//! cloudmap-dns) behind a counting proxy: freshness, API cost at the backend, single-flight
//! misses, throttling, stale serving, the snapshot across a restart, and service attributes.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_servicediscovery as sd;
use common::Server;
use common::dns::{self, A};
use common::proxy::{Mode, Proxy};
use hickory_proto::op::ResponseCode;

/// The registry (a cloudmap-dns with the embedded backend), seeded with namespace `lab`, service
/// `web` (custom health) and two instances.
async fn registry() -> (Server, sd::Client, String) {
    let registry = Server::start(&[]);
    let c = registry.client();
    let ns = common::http_namespace(&c, "lab").await;
    let svc = c
        .create_service()
        .name("web")
        .namespace_id(&ns)
        .health_check_custom_config(sd::types::HealthCheckCustomConfig::builder().build())
        .send()
        .await
        .unwrap();
    let svc = svc.service().unwrap().id().unwrap().to_string();
    for (id, ip) in [("w1", "10.0.0.1"), ("w2", "10.0.0.2")] {
        register(&c, &svc, id, ip).await;
    }
    c.create_service().name("cold").namespace_id(&ns).send().await.unwrap();
    (registry, c, svc)
}

async fn register(c: &sd::Client, svc: &str, id: &str, ip: &str) {
    c.register_instance()
        .service_id(svc)
        .instance_id(id)
        .attributes("AWS_INSTANCE_IPV4", ip)
        .send()
        .await
        .unwrap();
}

/// A cloudmap-dns with the aws backend pointed at `proxy`, serving namespace `lab` as `lab.example`.
fn dns_server(dir: &Path, proxy: &Proxy, backend: &str) -> Result<Server, String> {
    dns_server_zone(dir, proxy, backend, "")
}

/// As `dns_server`, with more keys for the zone.
fn dns_server_zone(dir: &Path, proxy: &Proxy, backend: &str, zone: &str) -> Result<Server, String> {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("aws.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\nkind = \"aws\"\nendpoint_url = \"{}\"\nrefresh_ms = 200\n{backend}\n\n[[dns.zones]]\nzone = \"lab.example\"\nnamespace = \"lab\"\n{zone}\n",
            proxy.url()
        ),
    )
    .unwrap();
    Server::start_in(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

const ROUND_ROBIN: &str = r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#;
const PICK_FIRST: &str = r#"{"loadBalancingConfig":[{"pick_first":{}}]}"#;

async fn set_grpc_config(c: &sd::Client, svc: &str, config: &str) {
    c.update_service_attributes().service_id(svc).attributes("grpc_config", config).send().await.unwrap();
}

/// A service config as `_grpc_config` TXT gives it (gRPC's format).
fn txt(config: &str) -> String {
    format!("grpc_config=[{{\"serviceConfig\":{config}}}]")
}

/// The `_grpc_config` TXT answer of service `web`, its strings joined; empty for NODATA.
fn grpc_config(server: &Server) -> String {
    let m = dns::parse(&dns::udp(server.dns, &dns::query("_grpc_config.web.lab.example", dns::TXT)));
    assert_eq!(dns::rcode(&m), ResponseCode::NoError, "{m:?}");
    dns::txt(&m).into_iter().flatten().collect::<Vec<_>>().concat()
}

fn ips(server: &Server, name: &str) -> Vec<String> {
    let mut v: Vec<String> = dns::a(&ask(server, name)).iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

fn ask(server: &Server, name: &str) -> hickory_proto::op::Message {
    dns::parse(&dns::udp(server.dns, &dns::query(name, A)))
}

#[tokio::test]
async fn fresh_and_cheap() {
    let (registry, c, svc) = registry().await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    // A long health interval, so that steady state shows revision checks only.
    let server = dns_server(tmp.path(), &proxy, "health_refresh_ms = 60000").unwrap();

    assert_eq!(ips(&server, "web.lab.example"), ["10.0.0.1", "10.0.0.2"]);
    let start = Instant::now();
    let steady = Duration::from_secs(2);
    while start.elapsed() < steady {
        assert_eq!(ips(&server, "web.lab.example").len(), 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let discover = proxy.count("DiscoverInstances", "\"web\"", start);
    let revisions = proxy.count("DiscoverInstancesRevision", "\"web\"", start);
    println!(
        "steady state over {steady:?}: {discover} DiscoverInstances, {revisions} DiscoverInstancesRevision"
    );
    assert_eq!(discover, 0, "no changes: no DiscoverInstances");
    assert!((5..=14).contains(&revisions), "about one revision check per 200 ms: {revisions}");

    // Random names in the zone cost no API calls: the catalog answers them.
    let before = proxy.calls().len();
    for i in 0..50 {
        assert_eq!(dns::rcode(&ask(&server, &format!("nope-{i}.lab.example"))), ResponseCode::NXDomain);
    }
    let discovers = proxy.calls()[before..]
        .iter()
        .filter(|c| c.operation.starts_with("Discover") && !c.body.contains("\"web\""))
        .count();
    assert_eq!(discovers, 0);

    // A registration shows within the refresh interval and a round trip.
    register(&c, &svc, "w3", "10.0.0.3").await;
    let took = common::until(Duration::from_secs(5), || ips(&server, "web.lab.example").len() == 3).await;
    c.deregister_instance().service_id(&svc).instance_id("w1").send().await.unwrap();
    let took2 =
        common::until(Duration::from_secs(5), || ips(&server, "web.lab.example") == ["10.0.0.2", "10.0.0.3"])
            .await;
    println!("register seen after {took:?}, deregister after {took2:?} (refresh 200 ms)");
    assert!(took < Duration::from_millis(1500) && took2 < Duration::from_millis(1500));
}

#[tokio::test]
async fn health_changes_show_within_the_health_interval() {
    let (registry, c, svc) = registry().await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server = dns_server(tmp.path(), &proxy, "health_refresh_ms = 600").unwrap();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    c.update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("w1")
        .status(sd::types::CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap();
    let took =
        common::until(Duration::from_secs(5), || ips(&server, "web.lab.example") == ["10.0.0.2"]).await;
    println!("health change seen after {took:?} (health interval 600 ms)");
    assert!(took < Duration::from_millis(600 + 1500));
}

#[tokio::test]
async fn idle_services_stop_costing_calls() {
    let (registry, _c, _svc) = registry().await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server = dns_server(tmp.path(), &proxy, "idle_timeout_ms = 500").unwrap();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        proxy.count("DiscoverInstancesRevision", "", quiet) + proxy.count("DiscoverInstances", "", quiet),
        0
    );
    // Asked again, it is re-validated before the answer.
    let before = Instant::now();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    assert!(
        proxy.count("DiscoverInstancesRevision", "\"web\"", before)
            + proxy.count("DiscoverInstances", "\"web\"", before)
            >= 1
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_call() {
    let (registry, c, _svc) = registry().await;
    let ns = c.list_namespaces().send().await.unwrap().namespaces()[0].id().unwrap().to_string();
    let cold = c.list_services().send().await.unwrap();
    let cold = cold.services().iter().find(|s| s.name() == Some("cold")).unwrap().id().unwrap().to_string();
    let _ = ns;
    register(&c, &cold, "c1", "10.9.9.9").await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server = Arc::new(dns_server(tmp.path(), &proxy, "").unwrap());
    // Warm the catalog, so the cold service is the only miss.
    let _ = ask(&server, "nope.lab.example");
    proxy.set(Mode::Forward { latency: Duration::from_millis(300) });
    let start = Instant::now();
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || dns::a(&ask(&server, "cold.lab.example")).len())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 1);
    }
    assert_eq!(proxy.count("DiscoverInstances", "\"cold\"", start), 1, "200 concurrent misses, one call");
}

#[tokio::test]
async fn throttling_backs_off_within_the_budget_and_serves_stale() {
    let (registry, _c, _svc) = registry().await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server = dns_server(tmp.path(), &proxy, "rate_limit = 5.0\nhealth_refresh_ms = 60000").unwrap();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    proxy.set(Mode::Throttle(vec!["DiscoverInstancesRevision", "DiscoverInstances"]));
    let start = Instant::now();
    let mut stale_seen = false;
    while start.elapsed() < Duration::from_secs(6) {
        let m = ask(&server, "web.lab.example");
        assert_eq!(dns::a(&m).len(), 2, "answers continue");
        if dns::ede(&m) == Some(3) {
            stale_seen = true;
            assert!(m.answers.iter().all(|r| r.ttl > 0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stale_seen, "answers are marked stale (EDE 3)");
    let stale = server.metric(
        "cloudmap_dns_served_stale_total",
        &[("cache", "namespace"), ("reason", "backend_throttled")],
    );
    assert!(stale > 0.0, "the stale counters move");
    let throttled = server.metric(
        "cloudmap_dns_backend_requests_total",
        &[("operation", "DiscoverInstancesRevision"), ("outcome", "throttled")],
    );
    assert!(throttled > 0.0, "throttled calls are counted");
    let fill = server.metric("cloudmap_dns_backend_rate_budget_fill_ratio", &[]);
    assert!((0.0..=1.0).contains(&fill), "{fill}");
    let calls: Vec<Instant> = proxy.calls().iter().filter(|c| c.at >= start).map(|c| c.at).collect();
    let elapsed = start.elapsed().as_secs_f64();
    println!("{} calls in {elapsed:.1} s under throttling", calls.len());
    assert!((calls.len() as f64) <= 5.0 * elapsed + 5.0, "within the budget of 5/s");
    let gaps: Vec<f64> = calls.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    assert!(gaps.len() >= 4, "{gaps:?}");
    let early: f64 = gaps[..2].iter().sum::<f64>() / 2.0;
    let late: f64 = gaps[gaps.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(late > early, "the gaps grow: {gaps:?}");
}

#[tokio::test]
async fn outages_serve_stale_and_the_snapshot_survives_a_restart() {
    let (registry, _c, _svc) = registry().await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();

    // Nothing cached and the backend down: SERVFAIL with EDE 22.
    proxy.set(Mode::Down);
    let cold = dns_server(&tmp.path().join("cold"), &proxy, "").unwrap();
    let m = ask(&cold, "web.lab.example");
    assert_eq!((dns::rcode(&m), dns::ede(&m)), (ResponseCode::ServFail, Some(22)));
    drop(cold);

    proxy.set(Mode::Forward { latency: Duration::ZERO });
    let mut server = dns_server(tmp.path(), &proxy, "").unwrap();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    assert_eq!(dns::ede(&ask(&server, "web.lab.example")), None, "fresh");
    // The snapshot is written soon after the data changes.
    let snapshot = tmp.path().join("data/dns-cache.json");
    common::until(Duration::from_secs(5), || snapshot.exists()).await;

    // While fresh, every answer's data is younger than a second (re-validated every 200 ms).
    let older_than_1s = |server: &Server| {
        let (_, text) = server.http_get("/metrics");
        let count = common::metric_in(
            &text,
            "cloudmap_dns_answer_staleness_seconds_count",
            &[("cache", "namespace")],
        );
        let young = common::metric_in(
            &text,
            "cloudmap_dns_answer_staleness_seconds_bucket",
            &[("cache", "namespace"), ("le", "1")],
        );
        count - young
    };
    let before = older_than_1s(&server);
    proxy.set(Mode::Down);
    common::until(Duration::from_secs(5), || dns::ede(&ask(&server, "web.lab.example")) == Some(3)).await;
    std::thread::sleep(Duration::from_millis(1200));
    let m = ask(&server, "web.lab.example");
    assert!(older_than_1s(&server) > before, "the staleness histogram moves when the backend is gone");
    let stale = server.metric(
        "cloudmap_dns_served_stale_total",
        &[("cache", "namespace"), ("reason", "backend_unavailable")],
    );
    assert!(stale > 0.0);
    let m2 = ask(&server, "web.lab.example");
    assert_eq!(dns::ede(&m2), Some(3));
    assert_eq!(dns::a(&m).len(), 2, "the last known good data");
    assert!(m.answers.iter().all(|r| r.ttl > 0));

    // kill -9, and start again with the backend still down: answers come from the snapshot.
    server.kill9();
    let server = dns_server(tmp.path(), &proxy, "").unwrap();
    let m = ask(&server, "web.lab.example");
    assert_eq!(dns::a(&m).len(), 2);
    assert_eq!(dns::ede(&m), Some(3));
}

#[tokio::test]
async fn data_plane_calls_go_to_the_data_endpoint() {
    let (registry, _c, _svc) = registry().await;
    let control = Proxy::start(registry.api);
    let data = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server =
        dns_server(tmp.path(), &control, &format!("data_endpoint_url = \"{}\"", data.url())).unwrap();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    let ops =
        |p: &Proxy| p.calls().iter().map(|c| c.operation.clone()).collect::<std::collections::BTreeSet<_>>();
    assert!(
        ops(&control).iter().all(|o| o.starts_with("List") || o == "GetServiceAttributes"),
        "control plane only: {:?}",
        ops(&control)
    );
    assert!(ops(&data).contains("DiscoverInstances"), "{:?}", ops(&data));
    assert!(ops(&data).iter().all(|o| o.starts_with("Discover")), "{:?}", ops(&data));
}

#[tokio::test]
async fn a_short_budget_stretches_the_refresh_interval() {
    let (registry, c, _svc) = registry().await;
    let cold = c.list_services().send().await.unwrap();
    let cold = cold.services().iter().find(|s| s.name() == Some("cold")).unwrap().id().unwrap().to_string();
    register(&c, &cold, "c1", "10.9.9.9").await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    // Two active services, two calls a second. Each service costs one check per interval and
    // one attribute read per catalog interval (30 s): 2/R + 2/30 = 2 gives R = 1.034 s.
    let server = dns_server(tmp.path(), &proxy, "rate_limit = 2.0").unwrap();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    assert_eq!(ips(&server, "cold.lab.example").len(), 1);
    let m = dns::parse(&dns::udp(server.dns, &dns::query("_cloudmap.web.lab.example", dns::TXT)));
    let strings: Vec<String> = dns::txt(&m).into_iter().flatten().collect();
    assert!(strings.contains(&"refresh=1034ms".to_string()), "{strings:?}");
    assert!(strings.contains(&"backend=aws".to_string()), "{strings:?}");
    let interval = server.metric("cloudmap_dns_backend_refresh_interval_seconds", &[]);
    assert!((1.034..1.035).contains(&interval), "and in the metrics: {interval}");
    assert_eq!(server.metric("cloudmap_dns_backend_active_services", &[]), 2.0);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let revisions = proxy.count("DiscoverInstancesRevision", "", start);
    assert!(revisions <= 8, "about one per service per second, not five: {revisions}");
}

/// Services first asked for together are re-validated at spread-out points of the refresh
/// interval, not in one burst per interval (which would stall queries on a busy core and meet
/// the API's rate limit at once).
#[tokio::test]
async fn services_asked_for_together_are_checked_apart() {
    const SERVICES: usize = 40;
    let (registry, c, _svc) = registry().await;
    let ns = common::http_namespace(&c, "spread").await;
    for i in 0..SERVICES {
        let svc = c.create_service().name(format!("s{i}")).namespace_id(&ns).send().await.unwrap();
        register(&c, svc.service().unwrap().id().unwrap(), "i1", "10.1.0.1").await;
    }
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("aws.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\nkind = \"aws\"\nendpoint_url = \"{}\"\nrefresh_ms = 1000\nhealth_refresh_ms = 60000\n\
             rate_limit = 1000.0\n\n[[dns.zones]]\nzone = \"spread.example\"\nnamespace = \"spread\"\n",
            proxy.url()
        ),
    )
    .unwrap();
    let server = Arc::new(
        Server::start_in(&tmp.path().join("data"), &["--config", config.to_str().unwrap()]).unwrap(),
    );
    // All at once, as a client starting up would.
    let threads: Vec<_> = (0..SERVICES)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || dns::a(&ask(&server, &format!("s{i}.spread.example"))).len())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 1);
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Each check's phase within the 1 s interval, in ms.
    let phases: Vec<u128> = proxy
        .calls()
        .iter()
        .filter(|c| c.at >= start && c.operation == "DiscoverInstancesRevision" && c.body.contains("\"s"))
        .map(|c| (c.at - start).as_millis() % 1000)
        .collect();
    assert!(phases.len() >= 2 * SERVICES, "{} checks of {SERVICES} services in 3 s", phases.len());
    // The most checks that fall in any 200 ms of the interval: a fifth of them when spread
    // evenly, nearly all when they come in one burst.
    let busiest = phases
        .iter()
        .map(|&from| phases.iter().filter(|&&p| (p + 1000 - from) % 1000 < 200).count())
        .max()
        .unwrap_or(0);
    assert!(
        busiest * 100 < phases.len() * 50,
        "{busiest} of {} checks within 200 ms of the 1 s interval: {phases:?}",
        phases.len()
    );
}

/// Re-validations start one refresh interval apart however long each call takes, so a change
/// waits at most the interval plus one round trip (not the interval plus every past round trip).
#[tokio::test]
async fn slow_calls_do_not_stretch_the_refresh_interval() {
    let (registry, _c, _svc) = registry().await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server = dns_server(tmp.path(), &proxy, "health_refresh_ms = 60000").unwrap();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    proxy.set(Mode::Forward { latency: Duration::from_millis(120) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let revisions = proxy.count("DiscoverInstancesRevision", "\"web\"", start);
    // Every 200 ms: 20 in 4 s. Were each interval counted from the end of the last 120 ms call,
    // one every 320 ms: 12 or 13.
    assert!(revisions >= 16, "{revisions} revision checks in 4 s at refresh 200 ms");
}

#[tokio::test]
async fn concurrent_queries_after_idle_share_one_revalidation() {
    let (registry, _c, _svc) = registry().await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server = Arc::new(dns_server(tmp.path(), &proxy, "idle_timeout_ms = 300").unwrap());
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    tokio::time::sleep(Duration::from_millis(1200)).await; // idle: no longer refreshed
    proxy.set(Mode::Forward { latency: Duration::from_millis(300) });
    let start = Instant::now();
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || dns::a(&ask(&server, "web.lab.example")).len())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 2);
    }
    let calls = proxy.count("DiscoverInstancesRevision", "\"web\"", start)
        + proxy.count("DiscoverInstances", "\"web\"", start);
    // One re-validation for all of them (the refresher may add one more during the run).
    assert!(calls <= 2, "{calls} calls for 100 concurrent queries");
}

/// With the backend slow, at most 10,000 UDP queries wait for it: more are dropped (the client
/// retries) and counted, so memory stays bounded; once the backend answers, so does the server.
#[tokio::test]
async fn misses_waiting_for_a_slow_backend_are_capped() {
    const CAP: u64 = 10_000;
    let (registry, _c, _svc) = registry().await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    // Calls wait out the latency (no timeout): the backend is slow, not failing.
    let server = dns_server(tmp.path(), &proxy, "call_timeout_ms = 20000").unwrap();
    assert_eq!(ips(&server, "web.lab.example"), ["10.0.0.1", "10.0.0.2"]);
    proxy.set(Mode::Forward { latency: Duration::from_secs(8) });

    // Queries for a service never asked before: each waits for the one slow call. Sent until
    // 1,000 more than the cap reached the server: the kernel may drop some from a full socket
    // buffer (a small rmem_max, a slow machine), and those never reach it, so they are counted
    // apart from the ones the server drops.
    let port = server.dns.port();
    let kernel_before = dns::kernel_drops(port);
    let kernel = || dns::kernel_drops(port) - kernel_before;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut query = dns::query("cold.lab.example", A);
    let mut sent = 0u64;
    while sent - kernel() < CAP + 1_000 {
        assert!(sent < 60_000, "{sent} sent, {} dropped by the kernel", kernel());
        for _ in 0..250 {
            query[..2].copy_from_slice(&(sent as u16).to_be_bytes());
            sock.send_to(&query, server.dns).unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let dropped = || server.metric("cloudmap_dns_queries_dropped_total", &[("reason", "overload")]) as u64;
    // Every query the server read either waits (exactly the cap of them) or was dropped.
    common::until(Duration::from_secs(6), || dropped() + kernel() + CAP == sent).await;
    assert!(dropped() >= 1_000, "{} dropped of {sent} ({} by the kernel)", dropped(), kernel());
    // The slow call returns; the waiting queries are answered and new ones are served again.
    proxy.set(Mode::Forward { latency: Duration::ZERO });
    common::until(Duration::from_secs(15), || {
        dns::udp_raw(server.dns, &dns::query("cold.lab.example", A), Duration::from_millis(500))
            .is_some_and(|b| dns::rcode(&dns::parse(&b)) == ResponseCode::NoError)
    })
    .await;
    assert_eq!(ips(&server, "web.lab.example"), ["10.0.0.1", "10.0.0.2"]);
}

/// DiscoverInstances does not carry service attributes: the `grpc_config` attribute comes from
/// GetServiceAttributes, read beside the first fetch and then at most once per catalog interval,
/// and every call is counted under its own operation.
#[tokio::test]
async fn the_grpc_config_attribute_is_read_once_per_catalog_interval() {
    let (registry, c, svc) = registry().await;
    set_grpc_config(&c, &svc, ROUND_ROBIN).await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server =
        dns_server(tmp.path(), &proxy, "catalog_refresh_ms = 1000\nhealth_refresh_ms = 400").unwrap();
    assert_eq!(grpc_config(&server), txt(ROUND_ROBIN), "the first answer has it");

    set_grpc_config(&c, &svc, PICK_FIRST).await;
    let took = common::until(Duration::from_secs(5), || grpc_config(&server) == txt(PICK_FIRST)).await;
    println!("a changed attribute seen after {took:?} (catalog 1000 ms, health 400 ms)");
    assert!(took < Duration::from_millis(1000 + 400 + 1500), "{took:?}");
    c.delete_service_attributes().service_id(&svc).attributes("grpc_config").send().await.unwrap();
    common::until(Duration::from_secs(5), || grpc_config(&server).is_empty()).await;

    // Steady state: the service is fetched every 400 ms (health), its attributes read once a
    // second at most.
    let start = Instant::now();
    let window = Duration::from_secs(3);
    while start.elapsed() < window {
        assert_eq!(ips(&server, "web.lab.example").len(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attributes = proxy.count("GetServiceAttributes", &svc, start);
    let fetches = proxy.count("DiscoverInstances", "\"web\"", start);
    println!("over {window:?}: {attributes} GetServiceAttributes, {fetches} DiscoverInstances");
    assert!((1..=5).contains(&attributes), "about one a second: {attributes}");
    assert!(attributes < fetches, "not one per fetch: {attributes} against {fetches}");

    // The metrics count each request under its own name, as the backend received it.
    let before = proxy.calls();
    let (_, text) = server.http_get("/metrics");
    let after = proxy.calls();
    for op in ["ListNamespaces", "ListServices", "GetServiceAttributes", "DiscoverInstances"] {
        let counted = common::metric_in(
            &text,
            "cloudmap_dns_backend_requests_total",
            &[("operation", op), ("outcome", "ok")],
        );
        let received =
            |calls: &[common::proxy::Call]| calls.iter().filter(|c| c.operation == op).count() as f64;
        assert!(counted >= 1.0, "{op} counted");
        assert!(
            counted <= received(&after) && counted + 1.0 >= received(&before),
            "{op}: {counted} counted, {} to {} received",
            received(&before),
            received(&after)
        );
    }
}

/// A role without servicediscovery:GetServiceAttributes: answers go on, `_grpc_config` comes
/// from the zone's config, the denial is counted as such, and attributes are not asked for
/// again (each denial would spend the call budget) until a reload.
#[tokio::test]
async fn a_role_denied_service_attributes_asks_once_until_a_reload() {
    let (registry, c, svc) = registry().await;
    set_grpc_config(&c, &svc, ROUND_ROBIN).await;
    let proxy = Proxy::start(registry.api);
    proxy.set(Mode::Deny(vec!["GetServiceAttributes"]));
    let tmp = tempfile::tempdir().unwrap();
    let server = dns_server_zone(
        tmp.path(),
        &proxy,
        "catalog_refresh_ms = 300\nhealth_refresh_ms = 300",
        &format!("grpc_config = '{PICK_FIRST}'"),
    )
    .unwrap();
    assert_eq!(ips(&server, "web.lab.example").len(), 2);
    assert_eq!(grpc_config(&server), txt(PICK_FIRST), "the zone's config");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(grpc_config(&server), txt(PICK_FIRST));
    assert_eq!(proxy.count("GetServiceAttributes", "", Instant::now() - Duration::from_secs(60)), 1);
    let denied = server.metric(
        "cloudmap_dns_backend_requests_total",
        &[("operation", "GetServiceAttributes"), ("outcome", "denied")],
    );
    assert_eq!(denied, 1.0);
    assert!(
        server.log_text().contains("servicediscovery:GetServiceAttributes"),
        "the log says what is missing"
    );

    // The role is fixed, and the config reloaded: the attribute is read again.
    proxy.set(Mode::Forward { latency: Duration::ZERO });
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    common::until(Duration::from_secs(5), || grpc_config(&server) == txt(ROUND_ROBIN)).await;
}

/// `service_attributes = false`: no GetServiceAttributes calls, and `_grpc_config` comes from
/// the zone's config alone.
#[tokio::test]
async fn service_attributes_can_be_left_unread() {
    let (registry, c, svc) = registry().await;
    set_grpc_config(&c, &svc, ROUND_ROBIN).await;
    let proxy = Proxy::start(registry.api);
    let tmp = tempfile::tempdir().unwrap();
    let server = dns_server(
        tmp.path(),
        &proxy,
        "service_attributes = false\ncatalog_refresh_ms = 300\nhealth_refresh_ms = 300",
    )
    .unwrap();
    assert_eq!(grpc_config(&server), "", "NODATA: no zone config, and the attribute is not read");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(grpc_config(&server), "");
    assert!(proxy.count("DiscoverInstances", "", Instant::now() - Duration::from_secs(60)) >= 2);
    assert_eq!(proxy.count("GetServiceAttributes", "", Instant::now() - Duration::from_secs(60)), 0);
}
