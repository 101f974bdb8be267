//! Upstreams for the forwarding tests: a real authoritative server (hickory-server's in-memory
//! zone handler, in process) for `example.test`, behind a scripted front that can misbehave on
//! demand (time out, SERVFAIL, REFUSED, answer with a wrong ID first, truncate over UDP) and logs
//! every query it receives, as sent by cloudmap-dns.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::rdata::{A, CNAME, NS, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// The zone the authority serves, and what is in it.
pub const ZONE: &str = "example.test.";
/// SOA MINIMUM: negative answers are cached this long.
pub const NEGATIVE_TTL: u32 = 2;

fn name(s: &str) -> Name {
    Name::from_str(s).expect("a name")
}

fn zone_records() -> Vec<Record> {
    let z = name(ZONE);
    let mut r = vec![
        Record::from_rdata(
            z.clone(),
            300,
            RData::SOA(SOA::new(
                name("ns.example.test."),
                name("hostmaster.example.test."),
                1,
                3600,
                600,
                86400,
                NEGATIVE_TTL,
            )),
        ),
        Record::from_rdata(z.clone(), 300, RData::NS(NS(name("ns.example.test.")))),
        Record::from_rdata(name("ns.example.test."), 300, RData::A(A(Ipv4Addr::new(192, 0, 2, 53)))),
        Record::from_rdata(name("www.example.test."), 300, RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))),
        Record::from_rdata(name("alias.example.test."), 300, RData::CNAME(CNAME(name("www.example.test.")))),
        Record::from_rdata(name("short.example.test."), 2, RData::A(A(Ipv4Addr::new(192, 0, 2, 2)))),
        Record::from_rdata(name("txt.example.test."), 300, RData::TXT(TXT::new(vec!["hello".into()]))),
    ];
    for i in 0..60u8 {
        r.push(Record::from_rdata(
            name("big.example.test."),
            300,
            RData::A(A(Ipv4Addr::new(198, 51, 100, i))),
        ));
    }
    // About 3,300 bytes: more than any EDNS payload size cloudmap-dns advertises.
    for i in 0..200u8 {
        r.push(Record::from_rdata(
            name("huge.example.test."),
            300,
            RData::A(A(Ipv4Addr::new(203, 0, 113, i))),
        ));
    }
    r
}

/// A running authoritative server for `example.test`.
pub struct Authority {
    pub addr: SocketAddr,
    _server: Server<Catalog>,
}

impl Authority {
    pub async fn start() -> Authority {
        let mut handler = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
            name(ZONE),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        for record in zone_records() {
            assert!(handler.upsert_mut(record, 1));
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(name(ZONE)), vec![Arc::new(handler)]);
        // The UDP port the kernel picks may be in use over TCP (by a parallel test): try another.
        let mut tries = 0;
        let (udp, addr, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let addr = udp.local_addr().expect("addr");
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, addr, tcp),
                Err(_) if tries < 20 => tries += 1,
                Err(e) => panic!("bind tcp on the same port: {e}"),
            }
        };
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Authority { addr, _server: server }
    }
}

/// How the front treats queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass to the authority and back.
    Forward,
    /// Never answer.
    Drop,
    ServFail,
    Refused,
    /// NXDOMAIN without an SOA (which must not be cached).
    NxDomainWithoutSoa,
    /// First a forged reply (wrong ID, address 6.6.6.6), then the real one.
    WrongIdFirst,
    /// Over UDP: a reply with TC set and no records; over TCP: the real answer.
    TruncateUdp,
    /// Over UDP: the whole answer however large, as an upstream that ignores the payload size
    /// the query advertised would send it.
    OversizeUdp,
}

/// A query as the front received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub tcp: bool,
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

impl Seen {
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    /// The question's name, in the case it was sent.
    pub fn qname(&self) -> String {
        let m = hickory_proto::op::Message::from_vec(&self.bytes).expect("a query");
        m.queries[0].name().to_string()
    }

    pub fn message(&self) -> hickory_proto::op::Message {
        hickory_proto::op::Message::from_vec(&self.bytes).expect("a query")
    }
}

struct State {
    mode: Mode,
    seen: Vec<Seen>,
    /// Where queries go in `Forward` mode (the authority, or anything else: a loop).
    target: Option<SocketAddr>,
    /// Added before every answer.
    delay: Duration,
}

/// A scripted upstream on its own loopback address, in front of an authority.
#[derive(Clone)]
pub struct Front {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn reply_with_rcode(query: &[u8], rcode: u8) -> Vec<u8> {
    // Header and question only.
    let name_end = 12 + query[12..].iter().position(|&b| b == 0).unwrap_or(0) + 1;
    let mut r = query[..(name_end + 4).min(query.len())].to_vec();
    r[2] = 0x80 | (query[2] & 0x79);
    r[3] = 0x80 | rcode;
    r[6..12].fill(0);
    r
}

async fn exchange_udp(target: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    super::dns::udp_from(Ipv4Addr::LOCALHOST.into(), target, query, Duration::from_secs(5)).await
}

async fn exchange_tcp(target: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    super::dns::tcp_raw(target, query).await
}

impl Front {
    /// Listens on UDP and TCP at `ip` (a loopback address of the test's choosing), port chosen
    /// by the OS, forwarding to `target`.
    pub async fn start(ip: Ipv4Addr, target: Option<SocketAddr>) -> Front {
        let udp = UdpSocket::bind((IpAddr::V4(ip), 0)).await.expect("bind front");
        let addr = udp.local_addr().expect("addr");
        let tcp = TcpListener::bind(addr).await.expect("bind front tcp");
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Forward,
            seen: Vec::new(),
            target,
            delay: Duration::ZERO,
        }));
        let front = Front { addr, state };
        let udp = Arc::new(udp);
        let f = front.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else { continue };
                let query = buf[..n].to_vec();
                let (mode, target) = f.record(Seen { tcp: false, from, bytes: query.clone() });
                let delay = f.state.lock().expect("front state").delay;
                let udp = udp.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if mode == Mode::Forward
                        && let Some(reply) = signed(&query)
                    {
                        let _ = udp.send_to(&reply, from).await;
                        return;
                    }
                    match mode {
                        Mode::Drop => {}
                        Mode::ServFail => {
                            let _ = udp.send_to(&reply_with_rcode(&query, 2), from).await;
                        }
                        Mode::Refused => {
                            let _ = udp.send_to(&reply_with_rcode(&query, 5), from).await;
                        }
                        Mode::NxDomainWithoutSoa => {
                            let _ = udp.send_to(&reply_with_rcode(&query, 3), from).await;
                        }
                        Mode::TruncateUdp => {
                            let mut r = reply_with_rcode(&query, 0);
                            r[2] |= 0x02;
                            let _ = udp.send_to(&r, from).await;
                        }
                        Mode::OversizeUdp => {
                            let Some(target) = target else { return };
                            let Some(reply) = exchange_tcp(target, &query).await else { return };
                            let _ = udp.send_to(&reply, from).await;
                        }
                        Mode::Forward | Mode::WrongIdFirst => {
                            let Some(target) = target else { return };
                            let Some(reply) = exchange_udp(target, &query).await else { return };
                            if mode == Mode::WrongIdFirst {
                                let _ = udp.send_to(&forged(&reply), from).await;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            let _ = udp.send_to(&reply, from).await;
                        }
                    }
                });
            }
        });
        let f = front.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, from)) = tcp.accept().await else { continue };
                let f = f.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let (mode, target) = f.record(Seen { tcp: true, from, bytes: query.clone() });
                    if mode == Mode::Drop {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let Some(target) = target else { return };
                    let Some(reply) = exchange_tcp(target, &query).await else { return };
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    let _ = stream.write_all(&framed).await;
                });
            }
        });
        front
    }

    fn record(&self, seen: Seen) -> (Mode, Option<SocketAddr>) {
        let mut s = self.state.lock().expect("front state");
        s.seen.push(seen);
        (s.mode, s.target)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("front state").mode = mode;
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().expect("front state").delay = delay;
    }

    pub fn set_target(&self, target: SocketAddr) {
        self.state.lock().expect("front state").target = Some(target);
    }

    /// Queries received, cloudmap-dns's loop probes aside.
    pub fn seen(&self) -> Vec<Seen> {
        self.all_seen().into_iter().filter(|s| !s.qname().contains(".loop-check.")).collect()
    }

    pub fn all_seen(&self) -> Vec<Seen> {
        self.state.lock().expect("front state").seen.clone()
    }

    /// Queries received for `name` (case-insensitive), loop probes aside.
    pub fn count(&self, name: &str) -> usize {
        let want = name.trim_end_matches('.').to_ascii_lowercase();
        self.seen().iter().filter(|s| s.qname().trim_end_matches('.').to_ascii_lowercase() == want).count()
    }

    pub fn clear(&self) {
        self.state.lock().expect("front state").seen.clear();
    }
}

/// A copy of `reply` with another ID and every A record pointing at 6.6.6.6: what a spoofer
/// racing the real upstream would send.
fn forged(reply: &[u8]) -> Vec<u8> {
    let mut m = hickory_proto::op::Message::from_vec(reply).expect("a reply");
    m.metadata.id = m.metadata.id.wrapping_add(1);
    for r in m.answers.iter_mut() {
        if let RData::A(a) = &mut r.data {
            a.0 = Ipv4Addr::new(6, 6, 6, 6);
        }
    }
    m.to_vec().expect("encode")
}

/// The reply for `signed.example.test A`, made here because the in-memory authority does not
/// sign: A 192.0.2.9, plus an RRSIG and the AD bit when the query has DO set (as a validating
/// resolver would send them).
fn signed(query: &[u8]) -> Option<Vec<u8>> {
    let m = hickory_proto::op::Message::from_vec(query).ok()?;
    if !m.queries.first()?.name().to_ascii().eq_ignore_ascii_case("signed.example.test.") {
        return None;
    }
    let dnssec_ok = m.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    let name_end = 12 + query[12..].iter().position(|&b| b == 0)? + 1;
    let mut r = query[..name_end + 4].to_vec();
    r[2] = 0x80 | (query[2] & 0x79);
    r[3] = 0x80 | if dnssec_ok { 0x20 } else { 0 };
    r[6..8].copy_from_slice(&(1 + dnssec_ok as u16).to_be_bytes());
    r[8..10].copy_from_slice(&0u16.to_be_bytes());
    r[10..12].copy_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 9]);
    if dnssec_ok {
        let mut rdata = vec![0, 1, 13, 3, 0, 0, 1, 44, 0x70, 0, 0, 0, 0x60, 0, 0, 0, 0x12, 0x34, 0];
        rdata.extend_from_slice(&[0xAA; 64]);
        r.extend_from_slice(&[0xC0, 12, 0, 46, 0, 1, 0, 0, 1, 44]);
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    r.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    Some(r)
}
