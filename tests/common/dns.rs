//! A small DNS client for the tests: queries built byte by byte (so case, flags and malformations
//! are exactly what a test says), sent over UDP or TCP, and responses parsed with hickory-proto.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

pub const A: u16 = 1;
pub const NS: u16 = 2;
pub const CNAME: u16 = 5;
pub const SOA: u16 = 6;
pub const TXT: u16 = 16;
pub const AAAA: u16 = 28;
pub const SRV: u16 = 33;
pub const ANY: u16 = 255;

pub struct Q {
    pub id: u16,
    pub flags: u16,
    pub edns: Option<(u16, u8)>,
}

impl Default for Q {
    fn default() -> Q {
        Q { id: 0x4242, flags: 0x0100, edns: Some((1232, 0)) }
    }
}

pub fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

pub fn query_with(name: &str, qtype: u16, q: &Q) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(q.id.to_be_bytes());
    p.extend(q.flags.to_be_bytes());
    p.extend([0, 1, 0, 0, 0, 0, 0, q.edns.is_some() as u8]);
    p.extend(encode_name(name));
    p.extend(qtype.to_be_bytes());
    p.extend(1u16.to_be_bytes());
    if let Some((size, version)) = q.edns {
        p.push(0);
        p.extend(41u16.to_be_bytes());
        p.extend(size.to_be_bytes());
        p.extend([0, version, 0, 0, 0, 0]);
    }
    p
}

pub fn query(name: &str, qtype: u16) -> Vec<u8> {
    query_with(name, qtype, &Q::default())
}

/// Sends one datagram; `None` if nothing comes back within the timeout.
pub fn udp_raw(server: SocketAddr, packet: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    sock.send_to(packet, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

pub fn udp(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    udp_raw(server, packet, Duration::from_secs(10)).expect("a UDP response")
}

/// Sends several queries on one TCP connection at once (pipelined) and reads as many responses.
pub fn tcp(server: SocketAddr, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    for p in packets {
        all.extend((p.len() as u16).to_be_bytes());
        all.extend(p);
    }
    s.write_all(&all).unwrap();
    (0..packets.len())
        .map(|_| {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).unwrap();
            buf
        })
        .collect()
}

pub fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("a well-formed DNS message")
}

pub fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

pub fn a(m: &Message) -> Vec<Ipv4Addr> {
    m.answers.iter().filter_map(|r| if let RData::A(a) = &r.data { Some(a.0) } else { None }).collect()
}

pub fn aaaa(m: &Message) -> Vec<Ipv6Addr> {
    m.answers.iter().filter_map(|r| if let RData::AAAA(a) = &r.data { Some(a.0) } else { None }).collect()
}

/// (priority, weight, port, target) of each SRV answer.
pub fn srv(m: &Message) -> Vec<(u16, u16, u16, String)> {
    m.answers
        .iter()
        .filter_map(|r| {
            if let RData::SRV(s) = &r.data {
                Some((s.priority, s.weight, s.port, s.target.to_ascii()))
            } else {
                None
            }
        })
        .collect()
}

pub fn txt(m: &Message) -> Vec<Vec<String>> {
    m.answers
        .iter()
        .filter_map(|r| {
            if let RData::TXT(t) = &r.data {
                Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
            } else {
                None
            }
        })
        .collect()
}

pub fn types(records: &[hickory_proto::rr::Record]) -> Vec<RecordType> {
    records.iter().map(|r| r.record_type()).collect()
}

/// The Extended DNS Error code (RFC 8914) in the response's OPT, if any.
pub fn ede(m: &Message) -> Option<u16> {
    let edns = m.edns.as_ref()?;
    edns.options().options.iter().find_map(|(code, opt)| {
        if u16::from(*code) != 15 {
            return None;
        }
        match opt {
            hickory_proto::rr::rdata::opt::EdnsOption::Unknown(_, data) if data.len() >= 2 => {
                Some(u16::from_be_bytes([data[0], data[1]]))
            }
            _ => None,
        }
    })
}

/// Sends one datagram from `source` (a loopback address of the test's choosing, so access
/// control and rate limits see distinct clients); `None` if nothing comes back in time.
pub async fn udp_from(
    source: std::net::IpAddr,
    server: SocketAddr,
    packet: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind((source, 0)).await.expect("bind client");
    sock.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(timeout, sock.recv_from(&mut buf)).await.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

/// One query over UDP from 127.0.0.1, parsed.
pub async fn ask(server: SocketAddr, name: &str, qtype: u16) -> Message {
    let r = udp_from([127, 0, 0, 1].into(), server, &query(name, qtype), Duration::from_secs(10)).await;
    parse(&r.expect("a UDP response"))
}

/// One message over TCP; `None` if the connection fails or closes before a response.
pub async fn tcp_raw(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server).await.ok()?;
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    s.write_all(&framed).await.ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

/// One query over TCP, parsed.
pub async fn ask_tcp(server: SocketAddr, packet: &[u8]) -> Message {
    parse(&tcp_raw(server, packet).await.expect("a TCP response"))
}

/// The text of the Extended DNS Error, if any.
pub fn ede_text(m: &Message) -> Option<String> {
    let edns = m.edns.as_ref()?;
    edns.options().options.iter().find_map(|(code, opt)| match opt {
        hickory_proto::rr::rdata::opt::EdnsOption::Unknown(_, data)
            if u16::from(*code) == 15 && data.len() >= 2 =>
        {
            Some(String::from_utf8_lossy(&data[2..]).into_owned())
        }
        _ => None,
    })
}

/// Datagrams the kernel dropped, its receive buffer full, on the UDP sockets bound to `port`
/// (the `drops` column of /proc/net/udp and udp6; 0 where there is no /proc). Tests that flood a
/// server count these apart from what the server itself dropped.
pub fn kernel_drops(port: u16) -> u64 {
    let suffix = format!(":{port:04X}");
    let mut drops = 0;
    // Once per socket (inode): the kernel writes the table in pieces while sockets come and go,
    // so one read can list a socket twice.
    let mut seen = std::collections::HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"].iter().filter_map(|p| std::fs::read_to_string(p).ok()) {
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ours = fields.get(1).is_some_and(|local| local.ends_with(&suffix));
            if ours && fields.get(9).is_some_and(|inode| seen.insert(inode.to_string())) {
                drops += fields.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    drops
}
