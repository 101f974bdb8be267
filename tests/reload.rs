//! SIGHUP reload (issue 5), against the real binary: a changed config takes effect while queries
//! keep being answered from the caches, an invalid one is rejected and the old one kept, and a
//! key that needs a restart says so.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::Server;
use common::dns::*;
use common::upstream::{Authority, Front};
use hickory_proto::op::ResponseCode;

fn hangup(server: &Server) {
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
}

/// Waits for the `n`th log line containing `text`.
async fn logged(server: &Server, text: &str, n: usize) {
    let log = server.log.clone();
    let wanted = text.to_string();
    let waited = common::until(Duration::from_secs(10), move || {
        log.lock().unwrap().iter().filter(|l| l.contains(&wanted)).count() >= n
    })
    .await;
    assert!(waited < Duration::from_secs(10), "no log line '{text}' (#{n}):\n{}", server.log_text());
}

async fn from(
    source: &str,
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Option<hickory_proto::op::Message> {
    let source: IpAddr = source.parse().unwrap();
    udp_from(source, server, &query(name, A), timeout).await.map(|r| parse(&r))
}

fn config(allow_query: &[&str], upstreams: &[SocketAddr], extra: &str) -> String {
    let list = |v: Vec<String>| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[dns]\nallow_query = [{}]\n{extra}\n[forward]\nupstreams = [{}]\n",
        list(allow_query.iter().map(|s| s.to_string()).collect()),
        list(upstreams.iter().map(|u| u.to_string()).collect()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_config_without_dropping_queries_or_the_caches() {
    let authority = Authority::start().await;
    let first = Front::start(Ipv4Addr::new(127, 0, 0, 41), Some(authority.addr)).await;
    let second = Front::start(Ipv4Addr::new(127, 0, 0, 42), Some(authority.addr)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloudmap-dns.toml");
    std::fs::write(&path, config(&["127.0.0.1/32"], &[first.addr], "")).unwrap();
    let server = Server::start(&["--config", path.to_str().unwrap(), "--demo"]);
    let dns = server.dns;
    let zone_name = "orders.demo";

    // Warm both caches; 127.0.0.2 may not query the zones yet.
    assert_eq!(a(&from("127.0.0.1", dns, zone_name, Duration::from_secs(5)).await.unwrap()).len(), 2);
    assert_eq!(a(&ask(dns, "www.example.test", A).await), [Ipv4Addr::new(192, 0, 2, 1)]);
    let r = from("127.0.0.2", dns, zone_name, Duration::from_secs(5)).await.unwrap();
    assert_eq!(rcode(&r), ResponseCode::Refused);

    // Queries throughout the reloads, each checked.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (name, want) in [(zone_name, 2), ("www.example.test", 1)] {
                    let r = from("127.0.0.1", dns, name, Duration::from_secs(2)).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !r.is_some_and(|r| rcode(&r) == ResponseCode::NoError && a(&r).len() == want) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let misses = |s: &Server| {
        let (_, body) = s.http_get("/metrics");
        let m = |cache| {
            common::metric_in(
                &body,
                "cloudmap_dns_cache_lookups_total",
                &[("cache", cache), ("result", "miss")],
            )
        };
        (m("namespace"), m("forward"))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = misses(&server);
    let sent_before = sent.load(Ordering::Relaxed);

    // Reload 1: ACL, upstreams (the new one first), forward cache clamps, query log, log level.
    let extra = "[log]\nqueries = true\nlevel = \"debug\"\n[forward.cache]\nmin_ttl_s = 10\n";
    let allowed = ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.3/32"];
    std::fs::write(&path, config(&allowed, &[second.addr, first.addr], "") + extra).unwrap();
    hangup(&server);
    logged(&server, "config reloaded", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = from("127.0.0.2", dns, zone_name, Duration::from_secs(5)).await.unwrap();
    assert_eq!(a(&r).len(), 2, "the new ACL lets 127.0.0.2 in");
    let r = ask(dns, "short.example.test", A).await;
    assert_eq!(second.count("short.example.test"), 1, "new names go to the new first upstream");
    assert_eq!(first.count("short.example.test"), 0);
    assert_eq!(r.answers[0].ttl, 10, "the new min TTL clamps what is stored from now on");
    logged(&server, "cloudmap_dns::query", 1).await;

    // Nothing was dropped: no upstream asked again for the cached name, no answer rebuilt.
    assert!(sent.load(Ordering::Relaxed) > sent_before + 10, "queries went on during the reload");
    assert_eq!(first.count("www.example.test") + second.count("www.example.test"), 1);
    let after = misses(&server);
    assert_eq!(after.0, before.0, "no namespace-zone answer rebuilt");
    assert_eq!(after.1, before.1 + 1.0, "one forward miss: the new name");

    // Reload 2: invalid; rejected, the config in force is kept.
    std::fs::write(&path, "[dns]\nttl = \"soon\"\n").unwrap();
    hangup(&server);
    logged(&server, "config reload rejected", 1).await;
    assert_eq!(server.metric("cloudmap_dns_config_reloads_total", &[("outcome", "rejected")]), 1.0);
    let r = from("127.0.0.2", dns, zone_name, Duration::from_secs(5)).await.unwrap();
    assert_eq!(a(&r).len(), 2, "still the reloaded ACL");

    // Reload 3: the zones' TTL (answers rebuilt from cached data, no backend call), and a key
    // that needs a restart.
    let upstreams = [second.addr, first.addr];
    std::fs::write(&path, config(&allowed, &upstreams, "ttl = 7\ntcp_max_connections = 5\n")).unwrap();
    hangup(&server);
    logged(&server, "config reloaded", 2).await;
    logged(&server, "dns.tcp_max_connections changed; it takes effect after a restart", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no query failed across three reloads");
    assert_eq!(server.metric("cloudmap_dns_config_reloads_total", &[("outcome", "applied")]), 2.0);
    let r = from("127.0.0.1", dns, zone_name, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.answers[0].ttl, 7, "the new zone TTL");

    // Reload 4: a rate limit, per client address.
    let extra = "[dns.rate_limit]\nresponses_per_second = 2\nslip = 0\nipv4_prefix_len = 32\n";
    std::fs::write(&path, config(&allowed, &upstreams, extra)).unwrap();
    hangup(&server);
    logged(&server, "config reloaded", 3).await;
    let mut dropped = 0;
    for _ in 0..8 {
        dropped += from("127.0.0.3", dns, zone_name, Duration::from_millis(300)).await.is_none() as usize;
    }
    assert!(dropped >= 4, "the new rate limit drops most of a burst: {dropped} of 8 dropped");
    assert!(
        from("127.0.0.1", dns, zone_name, Duration::from_secs(2)).await.is_some(),
        "other clients unaffected"
    );
}
