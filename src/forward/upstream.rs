//! The upstream resolvers: one exchange per try (UDP with a random ID from a socket on a random
//! port, TCP when the reply is truncated), failover in the configured order, and a health view of
//! each upstream so a failing one is skipped until it recovers.
//!
//! A reply is accepted only if it comes from the upstream's address (the socket is connected),
//! carries the ID sent and echoes the question sent (`reply::accept`); anything else is counted
//! and ignored while the try waits on, so an unsolicited or spoofed datagram can neither poison
//! the cache nor cut the wait short.
//!
//! UDP sockets are pooled per upstream: opening, binding, connecting, registering and closing a
//! socket per query was a quarter of a forwarded miss's CPU (`perf`, bench/README.md). A socket
//! goes back to the pool only after a try that got its reply, so no try's late reply waits in a
//! reused socket, and it is retired `udp_socket_lifetime` after it was opened (CoreDNS's
//! `expire`, 10 s by default), so the source port keeps changing; 0 opens one per query.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

use super::reply::{self, Bad, Kind, Template};

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    /// How long one try waits for a reply.
    pub timeout: Duration,
    /// Tries per query, across upstreams (each try goes to the next upstream in order).
    pub attempts: usize,
    /// Consecutive failures after which an upstream is skipped.
    pub down_after: u32,
    /// How long a failing upstream is skipped at first; doubled while it keeps failing.
    pub down_for: Duration,
    pub down_for_max: Duration,
    /// How long a UDP socket (its source port) serves queries after it was opened; zero: one
    /// socket per query.
    pub udp_socket_lifetime: Duration,
    /// TTL clamps applied to what is accepted.
    pub clamps: reply::Clamps,
}

#[derive(Debug)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
    down_for: Duration,
}

/// Most idle UDP sockets kept per upstream: what a burst of concurrent misses opened beyond this
/// is closed when its try ends.
const MAX_IDLE_SOCKETS: usize = 256;

/// A UDP socket connected to one upstream, with its receive buffer.
#[derive(Debug)]
struct UdpConn {
    socket: UdpSocket,
    /// Room for any datagram (we ask for 1,232 bytes, an upstream may ignore that); never
    /// zeroed: only the bytes received are read.
    buf: Vec<u8>,
    opened: Instant,
}

#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// `upstream` label of its metrics.
    label: String,
    health: Mutex<Health>,
    /// Idle UDP sockets, most recently used last.
    idle: Mutex<VecDeque<UdpConn>>,
}

impl Upstream {
    /// Counts a try's outcome (`upstream_requests_total{outcome}`).
    fn count(&self, outcome: &str) {
        crate::metrics::get().upstream(&self.label, outcome);
    }

    /// Whether it is being skipped for failing.
    pub fn is_down(&self, now: Instant) -> bool {
        self.health.lock().map(|h| h.down_until.is_some_and(|t| t > now)).unwrap_or(false)
    }

    fn succeeded(&self, settings: &UpstreamSettings) {
        if let Ok(mut h) = self.health.lock() {
            if h.down_until.is_some() {
                tracing::info!(upstream = %self.addr, "upstream {} answers again", self.addr);
                crate::metrics::get().upstream_up.with_label_values(&[&self.label]).set(1);
            }
            *h = Health { failures: 0, down_until: None, down_for: settings.down_for };
        }
    }

    fn failed(&self, settings: &UpstreamSettings, why: &str) {
        if let Ok(mut h) = self.health.lock() {
            h.failures += 1;
            if h.failures >= settings.down_after {
                let now = Instant::now();
                if h.down_until.is_none_or(|t| t <= now) {
                    if h.down_until.is_none() {
                        tracing::warn!(upstream = %self.addr, reason = why, "upstream {} is failing ({why}); skipping it", self.addr);
                        crate::metrics::get().upstream_up.with_label_values(&[&self.label]).set(0);
                    }
                    h.down_until = Some(now + h.down_for);
                    h.down_for = (h.down_for * 2).min(settings.down_for_max);
                }
            }
        }
    }
}

/// Why no upstream gave an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No upstream is configured.
    NoUpstream,
    /// Every try timed out or failed; the last reason.
    Unreachable(String),
    /// Upstreams answered, but only SERVFAIL, REFUSED or the like; the last rcode.
    Failed(u8),
}

/// The configured upstreams, in failover order.
#[derive(Debug)]
pub struct Upstreams {
    list: Vec<Upstream>,
    settings: UpstreamSettings,
}

impl Upstreams {
    pub fn new(addrs: &[SocketAddr], settings: UpstreamSettings) -> Upstreams {
        let list = addrs
            .iter()
            .map(|&addr| {
                let label = addr.to_string();
                crate::metrics::get().upstream_known(&label);
                Upstream {
                    addr,
                    label,
                    health: Mutex::new(Health { failures: 0, down_until: None, down_for: settings.down_for }),
                    idle: Mutex::new(VecDeque::new()),
                }
            })
            .collect();
        Upstreams { list, settings }
    }

    /// Whether these are `addrs` with `settings`: a reload that changes neither keeps them
    /// (and their health).
    pub fn same(&self, addrs: &[SocketAddr], settings: &UpstreamSettings) -> bool {
        self.settings == *settings && self.list.iter().map(|u| u.addr).eq(addrs.iter().copied())
    }

    pub fn list(&self) -> &[Upstream] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `ip` is one of the upstreams' addresses.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.list.iter().any(|u| u.addr.ip() == ip)
    }

    /// The order to try them in: healthy ones as configured, then skipped ones, soonest back
    /// first (when all are down, the one most likely to have recovered is still tried).
    fn order(&self) -> Vec<&Upstream> {
        let now = Instant::now();
        let (mut up, mut down): (Vec<&Upstream>, Vec<&Upstream>) =
            self.list.iter().partition(|u| !u.is_down(now));
        down.sort_by_key(|u| u.health.lock().ok().and_then(|h| h.down_until));
        up.append(&mut down);
        up
    }

    /// Resolves `question` (the client's, as sent) upstream. A negative or positive answer is
    /// returned as soon as one upstream gives it; failures move on to the next upstream.
    pub async fn resolve(
        &self,
        question: &[u8],
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Result<Template, Failure> {
        self.resolve_as(question, dnssec_ok, checking_disabled, true).await
    }

    /// A loop probe: as `resolve`, but what happens does not change the upstreams' health (an
    /// authoritative-only upstream rightly refuses a random name outside its zones).
    pub async fn probe(&self, question: &[u8]) -> Result<Template, Failure> {
        self.resolve_as(question, false, false, false).await
    }

    async fn resolve_as(
        &self,
        question: &[u8],
        dnssec_ok: bool,
        checking_disabled: bool,
        track_health: bool,
    ) -> Result<Template, Failure> {
        let order = self.order();
        if order.is_empty() {
            return Err(Failure::NoUpstream);
        }
        let mut last = Failure::Unreachable("no try".into());
        for upstream in order.iter().cycle().take(self.settings.attempts.max(1)) {
            match self.try_one(upstream, question, dnssec_ok, checking_disabled).await {
                Ok(t) if t.kind != Kind::Failure => {
                    upstream.count("ok");
                    if track_health {
                        upstream.succeeded(&self.settings);
                    }
                    return Ok(t);
                }
                Ok(t) => {
                    // SERVFAIL is about this name (a broken delegation, a DNSSEC failure), not
                    // the upstream's health; REFUSED and the rest mean it will not serve us.
                    if t.rcode == crate::dns::wire::RCODE_SERVFAIL {
                        upstream.count("servfail");
                        if track_health {
                            upstream.succeeded(&self.settings);
                        }
                    } else {
                        upstream.count("refused");
                        if track_health {
                            upstream.failed(&self.settings, "refuses queries");
                        }
                    }
                    last = Failure::Failed(t.rcode);
                }
                Err(why) => {
                    if track_health {
                        upstream.failed(&self.settings, &why);
                    }
                    if !matches!(last, Failure::Failed(_)) {
                        last = Failure::Unreachable(format!("{}: {why}", upstream.addr));
                    }
                }
            }
        }
        Err(last)
    }

    /// One try: UDP, then TCP if the UDP reply was truncated.
    async fn try_one(
        &self,
        upstream: &Upstream,
        question: &[u8],
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Result<Template, String> {
        let t = self.exchange(upstream, question, dnssec_ok, checking_disabled, false).await?;
        if !t.truncated {
            return Ok(t);
        }
        upstream.count("truncated");
        self.exchange(upstream, question, dnssec_ok, checking_disabled, true).await
    }

    /// One query with a fresh ID over UDP or TCP, within the timeout.
    async fn exchange(
        &self,
        upstream: &Upstream,
        question: &[u8],
        dnssec_ok: bool,
        checking_disabled: bool,
        tcp: bool,
    ) -> Result<Template, String> {
        let deadline = Instant::now() + self.settings.timeout;
        let id: u16 = rand::random();
        let query = reply::upstream_query(id, question, dnssec_ok, checking_disabled);
        let result = if tcp {
            timeout_at(deadline, self.tcp(upstream, &query, id, question)).await
        } else {
            timeout_at(deadline, self.udp(upstream, &query, id, question)).await
        };
        match result {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => {
                upstream.count("error");
                Err(e)
            }
            Err(_) => {
                upstream.count("timeout");
                Err(if tcp { "timed out over TCP" } else { "timed out" }.into())
            }
        }
    }

    async fn udp(
        &self,
        upstream: &Upstream,
        query: &[u8],
        id: u16,
        question: &[u8],
    ) -> Result<Template, String> {
        let mut conn = match self.idle_conn(upstream) {
            Some(conn) => conn,
            None => open_udp(upstream.addr).await?,
        };
        conn.socket.send(query).await.map_err(|e| format!("cannot send: {e}"))?;
        loop {
            conn.buf.clear();
            let n = conn.socket.recv_buf(&mut conn.buf).await.map_err(|e| format!("receive failed: {e}"))?;
            match reply::accept(&conn.buf[..n], id, question, self.settings.clamps) {
                Ok(t) => {
                    self.keep_conn(upstream, conn);
                    return Ok(t);
                }
                Err(Bad::Mismatch | Bad::Malformed) => {
                    upstream.count("mismatched");
                    tracing::debug!(upstream = %upstream.addr, "ignored a reply that does not match the query");
                }
            }
        }
    }

    /// The most recently used idle socket still within its lifetime; older ones are closed.
    fn idle_conn(&self, upstream: &Upstream) -> Option<UdpConn> {
        let lifetime = self.settings.udp_socket_lifetime;
        let mut idle = upstream.idle.lock().ok()?;
        while let Some(conn) = idle.pop_back() {
            if conn.opened.elapsed() < lifetime {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a socket whose try got its reply to the pool, unless it is past its lifetime or
    /// the pool is full; the least recently used sockets past their lifetime are closed.
    fn keep_conn(&self, upstream: &Upstream, conn: UdpConn) {
        let lifetime = self.settings.udp_socket_lifetime;
        if conn.opened.elapsed() >= lifetime {
            return;
        }
        if let Ok(mut idle) = upstream.idle.lock() {
            while idle.front().is_some_and(|c| c.opened.elapsed() >= lifetime) {
                idle.pop_front();
            }
            if idle.len() < MAX_IDLE_SOCKETS {
                idle.push_back(conn);
            }
        }
    }

    async fn tcp(
        &self,
        upstream: &Upstream,
        query: &[u8],
        id: u16,
        question: &[u8],
    ) -> Result<Template, String> {
        let mut stream =
            TcpStream::connect(upstream.addr).await.map_err(|e| format!("cannot connect over TCP: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(|e| format!("cannot send over TCP: {e}"))?;
        loop {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.map_err(|e| format!("TCP receive failed: {e}"))?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut buf).await.map_err(|e| format!("TCP receive failed: {e}"))?;
            match reply::accept(&buf, id, question, self.settings.clamps) {
                Ok(t) => return Ok(t),
                Err(_) => {
                    upstream.count("mismatched");
                }
            }
        }
    }
}

/// A new UDP socket for `addr`: the kernel picks a random ephemeral port, so a spoofer must guess
/// the port as well as the ID; `connect` makes the kernel drop datagrams from any other address.
async fn open_udp(addr: SocketAddr) -> Result<UdpConn, String> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    socket.connect(addr).await.map_err(|e| format!("cannot reach: {e}"))?;
    Ok(UdpConn { socket, buf: Vec::with_capacity(65535), opened: Instant::now() })
}
