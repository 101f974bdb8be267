//! Forwarding (PRODUCT.md §1-§2, issue 4), against the real binary: names outside the namespace
//! zones go to upstreams on loopback (a hickory authority for `example.test` behind scripted
//! fronts that time out, SERVFAIL, send wrong IDs or truncate), and the answers, the cache, the
//! failover, access control, rate limiting and loop detection are checked from the outside.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::Server;
use common::dns::*;
use common::upstream::{Authority, Front, Mode, NEGATIVE_TTL};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

/// Starts cloudmap-dns with `config` (TOML, written to a file) and these upstreams.
fn start(config: &str, upstreams: &[SocketAddr], extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cloudmap-dns.toml");
    std::fs::write(&path, config).expect("write config");
    let mut args: Vec<String> = vec!["--config".into(), path.display().to_string()];
    for u in upstreams {
        args.push("--upstream".into());
        args.push(u.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    (Server::start(&args), dir)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

async fn from(source: &str, server: &Server, name: &str, qtype: u16) -> Option<hickory_proto::op::Message> {
    udp_from(ip(source), server.dns, &query(name, qtype), Duration::from_secs(5)).await.map(|r| parse(&r))
}

const FAST: &str = "[forward]\ntimeout_ms = 300\nattempts = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_faithfully_and_caches_with_ttls_counted_down() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 11), Some(authority.addr)).await;
    let (server, _dir) = start("", &[front.addr], &[]);

    // The question's case is kept, to the upstream and back; a fresh ID goes upstream.
    let packet = query_with("WwW.ExAmple.TEST", A, &Q { id: 0x1111, ..Q::default() });
    let r = parse(&udp_from(ip("127.0.0.1"), server.dns, &packet, Duration::from_secs(5)).await.unwrap());
    assert_eq!(rcode(&r), ResponseCode::NoError);
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(r.queries[0].name().to_string(), "WwW.ExAmple.TEST.");
    assert_eq!(r.metadata.id, 0x1111);
    assert!(r.metadata.recursion_available && !r.metadata.authoritative);
    assert_eq!(r.answers[0].ttl, 300);
    let seen = front.seen();
    assert_eq!(seen.len(), 1, "one upstream query");
    assert_eq!(seen[0].qname(), "WwW.ExAmple.TEST.");
    assert_ne!(seen[0].id(), 0x1111, "the upstream query has its own ID");

    // From the cache, in another case, TTL counted down, no upstream query.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = ask(server.dns, "www.EXAMPLE.test", A).await;
    assert_eq!(r.queries[0].name().to_string(), "www.EXAMPLE.test.");
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(r.answers[0].ttl < 300 && r.answers[0].ttl >= 295, "TTL {}", r.answers[0].ttl);
    assert_eq!(front.count("www.example.test"), 1);

    // A CNAME chain, as the authority sends it.
    let r = ask(server.dns, "alias.example.test", A).await;
    assert_eq!(types(&r.answers), [RecordType::CNAME, RecordType::A]);
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)]);

    // Authority and additional sections pass through: NS with glue.
    let r = ask(server.dns, "example.test", NS).await;
    assert_eq!(types(&r.answers), [RecordType::NS]);
    assert!(
        r.additionals.iter().any(|x| matches!(&x.data, RData::A(a) if a.0 == Ipv4Addr::new(192, 0, 2, 53))),
        "glue in the additional section: {:?}",
        r.additionals
    );
}

/// Source ports of the UDP queries `front` saw (loop probes aside), and how many distinct IDs.
fn ports_and_ids(front: &Front) -> (std::collections::BTreeSet<u16>, usize) {
    let seen: Vec<_> = front.seen().into_iter().filter(|s| !s.tcp).collect();
    let ids: std::collections::BTreeSet<u16> = seen.iter().map(|s| s.id()).collect();
    (seen.iter().map(|s| s.from.port()).collect(), ids.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sockets_are_reused_only_within_their_lifetime() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 30), Some(authority.addr)).await;
    let config = "[forward]\ntimeout_ms = 300\nattempts = 1\nudp_socket_lifetime_ms = 2000\n";
    let (server, _dir) = start(config, &[front.addr], &[]);

    // Misses one after another share one socket (no socket opened and closed per query), each
    // with a fresh ID. (After a first query: the loop probe sent at start may hold a socket.)
    ask(server.dns, "warm.example.test", A).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    front.clear();
    for i in 0..8 {
        let r = ask(server.dns, &format!("n{i}.example.test"), A).await;
        assert_eq!(rcode(&r), ResponseCode::NXDomain);
    }
    let (ports, ids) = ports_and_ids(&front);
    assert_eq!((ports.len(), ids), (1, 8), "one socket, a fresh ID per query: {ports:?}");
    let first = *ports.first().unwrap();

    // A try that timed out closes its socket: its reply, were it to come late, meets no later query.
    front.set_mode(Mode::Drop);
    from("127.0.0.1", &server, "lost.example.test", A).await;
    front.set_mode(Mode::Forward);
    front.clear();
    ask(server.dns, "after.example.test", A).await;
    let (ports, _) = ports_and_ids(&front);
    assert!(!ports.contains(&first), "the timed-out socket was not reused: {ports:?} (was {first})");
    let second = *ports.first().unwrap();

    // Past its lifetime a socket is closed: the port changes.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    front.clear();
    ask(server.dns, "late.example.test", A).await;
    let (ports, _) = ports_and_ids(&front);
    assert!(!ports.contains(&second), "a socket past its lifetime was not reused: {ports:?} (was {second})");

    // Lifetime 0: a fresh socket, so a fresh port, per query.
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 32), Some(authority.addr)).await;
    let (server, _dir) = start("[forward]\nudp_socket_lifetime_ms = 0\n", &[front.addr], &[]);
    for i in 0..8 {
        ask(server.dns, &format!("n{i}.example.test"), A).await;
    }
    let (ports, ids) = ports_and_ids(&front);
    assert!(ports.len() >= 7 && ids >= 7, "a fresh port and ID per query: {ports:?}, {ids} IDs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_are_cached_for_the_soa_minimum() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 12), Some(authority.addr)).await;
    let (server, _dir) = start("", &[front.addr], &[]);

    let r = ask(server.dns, "nope.example.test", A).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);
    assert_eq!(types(&r.authorities), [RecordType::SOA]);
    assert!(r.authorities[0].ttl <= NEGATIVE_TTL, "SOA TTL {}", r.authorities[0].ttl);
    let r = ask(server.dns, "nope.example.test", A).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);
    assert_eq!(front.count("nope.example.test"), 1, "NXDOMAIN cached");
    // NODATA too.
    let r = ask(server.dns, "www.example.test", AAAA).await;
    assert_eq!((rcode(&r), r.answers.len()), (ResponseCode::NoError, 0));
    ask(server.dns, "www.example.test", AAAA).await;
    assert_eq!(
        front.seen().iter().filter(|s| s.message().queries[0].query_type() == RecordType::AAAA).count(),
        1
    );
    // For min(SOA TTL, MINIMUM) only.
    tokio::time::sleep(Duration::from_millis(NEGATIVE_TTL as u64 * 1000 + 600)).await;
    ask(server.dns, "nope.example.test", A).await;
    assert_eq!(front.count("nope.example.test"), 2, "asked again once the negative TTL ran out");

    // A negative answer without an SOA is passed on but not cached.
    front.set_mode(Mode::NxDomainWithoutSoa);
    for _ in 0..2 {
        let r = ask(server.dns, "nosoa.example.test", A).await;
        assert_eq!((rcode(&r), r.authorities.len()), (ResponseCode::NXDomain, 0));
    }
    assert_eq!(front.count("nosoa.example.test"), 2, "not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_are_clamped() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 27), Some(authority.addr)).await;
    let config = "[forward.cache]
min_ttl_s = 10
max_ttl_s = 100
max_negative_ttl_s = 1
";
    let (server, _dir) = start(config, &[front.addr], &[]);
    let r = ask(server.dns, "short.example.test", A).await;
    assert_eq!(r.answers[0].ttl, 10, "TTL 2 raised to the minimum");
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!(r.answers[0].ttl, 100, "TTL 300 cut to the maximum");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ask(server.dns, "short.example.test", A).await;
    assert_eq!(front.count("short.example.test"), 1, "cached for the raised TTL");
    // Negative answers: min(SOA TTL, MINIMUM) = 2, raised to 10, then cut to max_negative_ttl_s:
    // that clamp has the last word, so a name that appears is seen within it.
    let r = ask(server.dns, "neg.example.test", A).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);
    assert_eq!(r.authorities[0].ttl, 1, "the SOA lives as long as the negative answer");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    ask(server.dns, "neg.example.test", A).await;
    assert_eq!(front.count("neg.example.test"), 2, "negative answers live max_negative_ttl_s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_upstream_query() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 13), Some(authority.addr)).await;
    front.set_delay(Duration::from_millis(300));
    let (server, _dir) = start("", &[front.addr], &[]);
    let dns = server.dns;
    let answers: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                let packet = query_with("txt.example.test", TXT, &Q { id: i, ..Q::default() });
                udp_from(ip("127.0.0.1"), dns, &packet, Duration::from_secs(5)).await.map(|r| parse(&r))
            })
        })
        .collect();
    for (i, h) in answers.into_iter().enumerate() {
        let r = h.await.unwrap().expect("an answer");
        assert_eq!(r.metadata.id, i as u16);
        assert_eq!(txt(&r), [vec!["hello".to_string()]]);
    }
    assert_eq!(front.count("txt.example.test"), 1, "one upstream query for 100 concurrent misses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_skipped_until_it_recovers() {
    let authority = Authority::start().await;
    let bad = Front::start(Ipv4Addr::new(127, 0, 0, 14), Some(authority.addr)).await;
    let good = Front::start(Ipv4Addr::new(127, 0, 0, 15), Some(authority.addr)).await;
    bad.set_mode(Mode::Drop);
    let config = "[forward]\ntimeout_ms = 300\nattempts = 2\ndown_after_failures = 2\ndown_for_ms = 1500\n";
    let (server, _dir) = start(config, &[bad.addr, good.addr], &[]);

    for i in 0..6 {
        let r = ask(server.dns, &format!("f{i}.example.test"), TXT).await;
        assert_eq!(rcode(&r), ResponseCode::NXDomain, "answered by the second upstream");
    }
    let tried = bad.seen().len();
    assert!(tried <= 3, "the timing-out upstream is skipped after 2 failures (tried {tried} times)");
    assert_eq!(good.seen().len(), 6);

    // Back after it recovers: once the skip time is over it is tried, and used, again.
    bad.set_mode(Mode::Forward);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let before = good.seen().len();
    for i in 0..3 {
        let r = ask(server.dns, &format!("g{i}.example.test"), TXT).await;
        assert_eq!(rcode(&r), ResponseCode::NXDomain);
    }
    assert!(bad.seen().len() > tried, "the recovered upstream is asked again");
    assert!(good.seen().len() - before < 3, "and the first upstream takes the load back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_moves_on_then_is_cached_briefly() {
    let authority = Authority::start().await;
    let broken = Front::start(Ipv4Addr::new(127, 0, 0, 16), Some(authority.addr)).await;
    let good = Front::start(Ipv4Addr::new(127, 0, 0, 17), Some(authority.addr)).await;
    broken.set_mode(Mode::ServFail);
    let (server, _dir) = start(FAST, &[broken.addr, good.addr], &[]);
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)], "SERVFAIL from one upstream: the next one answers");

    // Every upstream failing: SERVFAIL with EDE 22, cached for a moment.
    good.set_mode(Mode::ServFail);
    let r = ask(server.dns, "txt.example.test", TXT).await;
    assert_eq!(rcode(&r), ResponseCode::ServFail);
    assert_eq!(ede(&r), Some(22));
    let asked = broken.count("txt.example.test") + good.count("txt.example.test");
    let r = ask(server.dns, "txt.example.test", TXT).await;
    assert_eq!(rcode(&r), ResponseCode::ServFail);
    assert_eq!(broken.count("txt.example.test") + good.count("txt.example.test"), asked, "SERVFAIL cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_with_a_wrong_id_are_ignored() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 18), Some(authority.addr)).await;
    front.set_mode(Mode::WrongIdFirst);
    let (server, _dir) = start("", &[front.addr], &[]);
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)], "the forged reply (6.6.6.6) was not taken");
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)], "nor cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_replies_are_retried_over_tcp() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 19), Some(authority.addr)).await;
    front.set_mode(Mode::TruncateUdp);
    let (server, _dir) = start("", &[front.addr], &[]);
    let r = ask_tcp(server.dns, &query("big.example.test", A)).await;
    assert_eq!(a(&r).len(), 60);
    let seen = front.seen();
    assert_eq!(seen.iter().map(|s| s.tcp).collect::<Vec<_>>(), [false, true], "UDP, then TCP");
    // A UDP client without EDNS gets TC from the cache (60 records do not fit 512 bytes).
    let r = parse(&udp(server.dns, &query_with("big.example.test", A, &Q { edns: None, ..Q::default() })));
    assert!(r.metadata.truncation && r.answers.is_empty());
    let r = ask(server.dns, "big.example.test", A).await;
    assert_eq!(a(&r).len(), 60, "fits in 1232 bytes");
    assert_eq!(front.seen().len(), 2);
}

#[tokio::test]
async fn oversized_upstream_replies_over_udp_are_taken_whole() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 29), Some(authority.addr)).await;
    front.set_mode(Mode::OversizeUdp);
    let (server, _dir) = start("", &[front.addr], &[]);
    let r = ask_tcp(server.dns, &query("huge.example.test", A)).await;
    assert_eq!(a(&r).len(), 200, "a 3 KiB UDP reply, though 1,232 bytes were asked for");
    assert_eq!(front.seen().iter().map(|s| s.tcp).collect::<Vec<_>>(), [false], "no retry");
}

/// A query with DO set and an EDNS Client Subnet option.
fn dnssec_query(name: &str) -> Vec<u8> {
    let mut p = query_with(name, A, &Q { edns: None, ..Q::default() });
    p[11] = 1;
    // OPT: payload 1232, DO; ECS option (code 8) for 192.0.2.0/24.
    p.extend([0, 0, 41, 4, 208, 0, 0, 0x80, 0, 0, 11, 0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnssec_records_pass_through_and_client_options_stay_here() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 20), Some(authority.addr)).await;
    let (server, _dir) = start("", &[front.addr], &[]);

    let r = parse(&udp(server.dns, &dnssec_query("signed.example.test")));
    assert_eq!(types(&r.answers), [RecordType::A, RecordType::RRSIG], "RRSIG passed through: {r:?}");
    assert!(r.metadata.authentic_data, "AD passed on to a DO client");
    assert!(r.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok), "DO echoed");
    let sent = front.seen()[0].message();
    let edns = sent.edns.as_ref().expect("EDNS upstream");
    assert!(edns.flags().dnssec_ok, "DO forwarded");
    assert!(edns.options().options.is_empty(), "no client option (ECS) forwarded: {:?}", edns.options());

    // Without DO: its own cache entry, no RRSIG, no AD.
    let r = ask(server.dns, "signed.example.test", A).await;
    assert_eq!(types(&r.answers), [RecordType::A]);
    assert!(!r.metadata.authentic_data);
    assert_eq!(front.count("signed.example.test"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_control_for_zones_and_forwarding() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 21), Some(authority.addr)).await;
    let config = "[dns]\nallow_query = [\"127.0.0.1/32\", \"127.0.0.2/32\"]\n[forward]\nallow_recursion = [\"127.0.0.1/32\"]\n";
    let (server, _dir) = start(config, &[front.addr], &["--demo"]);

    for _ in 0..2 {
        // Twice: the second time both answers are cached, and the hot path must refuse too.
        let r = from("127.0.0.1", &server, "www.example.test", A).await.unwrap();
        assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)]);
        let r = from("127.0.0.1", &server, "orders.demo", SRV).await.unwrap();
        assert_eq!(srv(&r).len(), 2);

        let r = from("127.0.0.2", &server, "orders.demo", SRV).await.unwrap();
        assert_eq!(srv(&r).len(), 2, "zones are open to 127.0.0.2");
        let r = from("127.0.0.2", &server, "www.example.test", A).await.unwrap();
        assert_eq!((rcode(&r), ede(&r)), (ResponseCode::Refused, Some(18)), "forwarding is not");

        for name in ["www.example.test", "orders.demo"] {
            let r = from("127.0.0.3", &server, name, A).await.unwrap();
            assert_eq!(
                (rcode(&r), ede(&r)),
                (ResponseCode::Refused, Some(18)),
                "{name} refused to 127.0.0.3"
            );
        }
    }
    assert_eq!(front.count("www.example.test"), 1, "refused clients cause no upstream query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rate_limit_per_client() {
    let config = "[dns.rate_limit]\nresponses_per_second = 5\nslip = 2\n";
    let (server, _dir) = start(config, &[], &["--demo"]);
    let sock = tokio::net::UdpSocket::bind("127.0.0.4:0").await.unwrap();
    for i in 0..40u16 {
        let p = query_with("orders.demo", A, &Q { id: i, ..Q::default() });
        sock.send_to(&p, server.dns).await.unwrap();
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
    {
        let m = parse(&buf[..n]);
        if m.metadata.truncation {
            assert!(m.answers.is_empty());
            truncated += 1;
        } else {
            full += 1;
        }
    }
    assert!((5..=8).contains(&full), "about 5 answers a second get through, not {full}");
    assert!(truncated >= 10, "every second dropped response slips out truncated ({truncated})");
    // Another client network is not held back.
    let r = from("127.1.0.5", &server, "orders.demo", A).await.expect("answered");
    assert_eq!(a(&r).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_loop_is_detected_and_answered_servfail() {
    // The upstream is a relay that sends every query back to cloudmap-dns with a new ID, as a
    // resolver rule pointing at us would.
    let relay = Front::start(Ipv4Addr::new(127, 0, 0, 22), None).await;
    let (server, _dir) = start(FAST, &[relay.addr], &[]);
    relay.set_target(server.dns);

    let r = ask(server.dns, "loop.example.test", A).await;
    assert_eq!(rcode(&r), ResponseCode::ServFail);
    // The failure sets off a loop check; soon forwarded names are refused at once.
    let mut detected = false;
    for _ in 0..50 {
        let r = ask(server.dns, "other.example.test", A).await;
        if rcode(&r) == ResponseCode::ServFail && ede_text(&r).is_some_and(|t| t.contains("loop")) {
            detected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(detected, "loop detected; log:\n{}", server.log.lock().unwrap().join("\n"));
    assert!(server.log.lock().unwrap().iter().any(|l| l.contains("forwarding loop")));
    let before = relay.seen().len();
    for i in 0..20 {
        let r = ask(server.dns, &format!("x{i}.example.test"), A).await;
        assert_eq!(rcode(&r), ResponseCode::ServFail);
    }
    assert!(relay.seen().len() - before <= 2, "no query goes round the loop any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_when_every_upstream_fails() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 23), Some(authority.addr)).await;
    let config = "[forward]\ntimeout_ms = 300\nattempts = 1\n[forward.cache]\nprefetch = false\nstale_answer_timeout_ms = 200\n";
    let (server, _dir) = start(config, &[front.addr], &[]);
    let r = ask(server.dns, "short.example.test", A).await;
    assert_eq!((a(&r), r.answers[0].ttl), (vec![Ipv4Addr::new(192, 0, 2, 2)], 2));
    front.set_mode(Mode::Drop);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let r = ask(server.dns, "short.example.test", A).await;
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 2)], "the expired answer");
    assert_eq!((r.answers[0].ttl, ede(&r)), (30, Some(3)), "with TTL 30 and EDE Stale Answer");
    // After a failed refresh, stale data is served at once for the recheck time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = front.count("short.example.test");
    let r = ask(server.dns, "short.example.test", A).await;
    assert_eq!(ede(&r), Some(3));
    assert_eq!(front.count("short.example.test"), asked, "no upstream query during the recheck time");
    // Names never cached: SERVFAIL.
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!((rcode(&r), ede(&r)), (ResponseCode::ServFail, Some(22)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popular_entries_are_prefetched_before_they_expire() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 24), Some(authority.addr)).await;
    let (server, _dir) = start("", &[front.addr], &[]);
    ask(server.dns, "short.example.test", A).await; // TTL 2: a miss
    tokio::time::sleep(Duration::from_millis(300)).await;
    ask(server.dns, "short.example.test", A).await; // a hit
    assert_eq!(front.count("short.example.test"), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ask(server.dns, "short.example.test", A).await; // a hit in the last second: prefetch
    for _ in 0..50 {
        if front.count("short.example.test") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(front.count("short.example.test"), 2, "refreshed in the background");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Past the first answer's expiry: still a hit, from the prefetched entry.
    let r = ask(server.dns, "short.example.test", A).await;
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 2)]);
    assert!(r.answers[0].ttl >= 1 && ede(&r).is_none());
    assert_eq!(front.count("short.example.test"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 25), Some(authority.addr)).await;
    let (server, _dir) = start("[forward.cache]\nmax_entries = 20\n", &[front.addr], &[]);
    ask(server.dns, "www.example.test", A).await;
    for i in 0..100 {
        ask(server.dns, &format!("e{i}.example.test"), TXT).await;
        if i % 5 == 0 {
            ask(server.dns, "www.example.test", A).await; // kept warm
        }
    }
    ask(server.dns, "e0.example.test", TXT).await;
    assert_eq!(front.count("e0.example.test"), 2, "an old entry was evicted");
    assert_eq!(front.count("www.example.test"), 1, "a busy entry was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstreams_other_names_are_refused() {
    let (server, _dir) = start("", &[], &[]);
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!((rcode(&r), ede(&r)), (ResponseCode::Refused, Some(18)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_listener_as_upstream_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--dns-listen", "127.0.0.1:5399", "--upstream", "127.0.0.1:5399", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("forward.upstreams[0]") && stderr.contains("loop"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallthrough_forwards_what_the_namespace_does_not_know() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 26), Some(authority.addr)).await;
    let config = "[[dns.zones]]\nzone = \"example.test\"\nnamespace = \"lab\"\nfallthrough = true\n\
                  [[dns.zones]]\nzone = \"closed.test\"\nnamespace = \"lab\"\n";
    let (server, _dir) = start(config, &[front.addr], &[]);
    let c = server.client();
    let ns = common::http_namespace(&c, "lab").await;

    // Unknown to the namespace: forwarded (records users added to the hosted zone still resolve).
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(!r.metadata.authoritative);
    // The zone's own names stay ours, and a zone without fallthrough says NXDOMAIN.
    let r = ask(server.dns, "example.test", SOA).await;
    assert!(r.metadata.authoritative);
    let r = ask(server.dns, "www.closed.test", A).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);
    assert_eq!(front.count("www.closed.test"), 0);

    // Once the namespace knows the name, it answers, even though the forwarded answer is cached.
    let svc = c.create_service().name("www").namespace_id(&ns).send().await.unwrap();
    let svc = svc.service().unwrap().id().unwrap().to_string();
    c.register_instance()
        .service_id(&svc)
        .instance_id("i1")
        .attributes("AWS_INSTANCE_IPV4", "10.9.9.9")
        .send()
        .await
        .unwrap();
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!(a(&r), [Ipv4Addr::new(10, 9, 9, 9)]);
    assert!(r.metadata.authoritative);
    assert_eq!(front.count("www.example.test"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_queries_in_flight_then_exits_cleanly() {
    let authority = Authority::start().await;
    let front = Front::start(Ipv4Addr::new(127, 0, 0, 28), Some(authority.addr)).await;
    front.set_delay(Duration::from_millis(800));
    let (mut server, _dir) = start("", &[front.addr], &[]);
    let dns = server.dns;
    let pending = tokio::spawn(async move {
        udp_from(ip("127.0.0.1"), dns, &query("www.example.test", A), Duration::from_secs(5)).await
    });
    let front2 = front.clone();
    common::until(Duration::from_secs(5), move || front2.count("www.example.test") == 1).await;
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let r = pending.await.unwrap().expect("the query in flight is answered");
    assert_eq!(a(&parse(&r)), [Ipv4Addr::new(192, 0, 2, 1)]);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit 0 after draining: {status:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(server.log.lock().unwrap().iter().any(|l| l.contains("stopped")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_probes_refused_by_an_authoritative_upstream_do_not_mark_it_down() {
    // hickory's authority refuses the probe's random name (outside its zone) every second.
    let authority = Authority::start().await;
    let config = "[forward]\ndown_after_failures = 1\nloop_check_interval_s = 1\n";
    let (server, _dir) = start(config, &[authority.addr], &[]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let upstream = authority.addr.to_string();
    assert!(
        server.metric(
            "cloudmap_dns_upstream_requests_total",
            &[("upstream", &upstream), ("outcome", "refused")]
        ) >= 2.0
    );
    assert_eq!(server.metric("cloudmap_dns_upstream_up", &[("upstream", &upstream)]), 1.0, "still in use");
    let r = ask(server.dns, "www.example.test", A).await;
    assert_eq!(a(&r), [Ipv4Addr::new(192, 0, 2, 1)]);
}
