//! The DNS listeners: UDP and TCP on each `--dns-listen` address.
//!
//! UDP: each socket is read by one loop that answers cache hits inline from pre-encoded answers;
//! a miss is handed to its own task so a slow backend never holds up other queries. On Linux, for
//! sockets bound to one address, that loop is a thread of its own, off tokio's reactor, blocking
//! in `recvmmsg` and answering in one `sendmmsg`: below saturation a wake-up brings a datagram or
//! two, and tokio's epoll wake-up and task scheduling around them cost ~10% of the core at 113k
//! q/s (bench/README.md). Elsewhere, and on wildcard addresses (which need each datagram's
//! destination), it is a tokio task.
//! TCP (RFC 7766): queries on a connection are read as they come (pipelining) and answered
//! concurrently, possibly out of order; a connection idle for `tcp_idle_timeout` is closed, and at
//! most `tcp_max_connections` are open at once (further ones wait in the accept queue).
//!
//! `Serving::drain` stops it: sockets stop reading and accepting, and it waits for the queries
//! already in flight to be answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tracing::Instrument;

use super::engine::{Engine, Fast, Received, Transport};
use super::ratelimit::{RateLimiter, Verdict};
use crate::config::{UdpScheduling, UdpSteering};
use crate::metrics;
use arc_swap::ArcSwapOption;

/// The response rate limiter, if on; swapped on reload (SIGHUP).
pub type SharedLimiter = Arc<ArcSwapOption<RateLimiter>>;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub tcp_idle_timeout: Duration,
    pub tcp_max_connections: usize,
    pub udp_scheduling: UdpScheduling,
}

/// Applies the response rate limit (if any) to a UDP response about to go to `peer`; `false` if
/// it must not be sent. A slipped response is cut down to its header and question, with TC.
fn admit(limiter: Option<&RateLimiter>, peer: SocketAddr, response: &mut Vec<u8>) -> bool {
    let Some(limiter) = limiter else { return true };
    match limiter.check(peer.ip(), crate::cache::now_ms()) {
        Verdict::Send => true,
        Verdict::Drop => false,
        Verdict::Slip => {
            let question_end = super::wire::read_plain_name(response, super::wire::HEADER_LEN).map(|e| e + 4);
            match question_end {
                Some(end) if end <= response.len() => {
                    response.truncate(end);
                    response[2] |= 0x02; // TC
                    response[6..12].fill(0);
                    true
                }
                _ => false,
            }
        }
    }
}

/// CPUs this process may run on (its affinity mask and cgroup quota, as the OS reports them).
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Shares the UDP sockets out among at most `cpus` threads, round robin: with several listener
/// addresses there can be more sockets than CPUs, and two busy loops on one core take turns and
/// lose ~6% to the switching (bench/README.md, *Multi-core*), so a thread may read several.
#[cfg(target_os = "linux")]
fn udp_thread_shares<T>(sockets: Vec<T>, cpus: usize) -> Vec<Vec<T>> {
    let threads = sockets.len().min(cpus.max(1));
    let mut shares: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in sockets.into_iter().enumerate() {
        shares[i % threads].push(s);
    }
    shares
}

/// Bound sockets, ready to serve.
pub struct Listeners {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

impl Listeners {
    /// Binds UDP and TCP on every address; the OS-chosen port of `:0` is shared by both. Each
    /// address gets `udp_workers` UDP sockets, at most (and with 0, exactly) one per CPU this
    /// process may run on, bound with SO_REUSEPORT so that no socket's receive queue is shared;
    /// `steering` picks each query's socket (`steer_by_cpu`, or the kernel's hash of the client).
    /// Each is read by a loop of its own (`spawn`). More sockets than CPUs would only split the
    /// queries into smaller batches, and their loops would take turns on a core (bench/README.md,
    /// *Multi-core*).
    pub async fn bind(
        addrs: &[SocketAddr],
        udp_workers: usize,
        steering: UdpSteering,
    ) -> std::io::Result<Listeners> {
        let cpus = usable_cpus();
        let workers = match udp_workers {
            0 => cpus,
            n if n > cpus => {
                tracing::info!(
                    udp_workers = n,
                    cpus,
                    "dns.udp_workers is {n}: {cpus} per listener, one per CPU this process may run on"
                );
                cpus
            }
            n => n,
        };
        let ours = affinity();
        let mut l = Listeners { udp: Vec::new(), tcp: Vec::new() };
        for addr in addrs {
            let (udp, tcp) = bind_group(*addr, workers).await?;
            let bound = udp[0].local_addr()?;
            let by_cpu = udp.len() > 1
                && steering == UdpSteering::Cpu
                && steer_by_cpu(&udp[0], udp.len(), &ours)
                    .inspect_err(|error| {
                        tracing::warn!(
                            %error,
                            "cannot steer UDP queries by CPU (dns.udp_steering): the kernel's hash of the client spreads them"
                        )
                    })
                    .is_ok();
            tracing::info!(addr = %bound, workers = udp.len(), by_cpu, "listening for DNS on UDP {bound}");
            tracing::info!(addr = %bound, "listening for DNS on TCP {bound}");
            l.udp.extend(udp);
            l.tcp.push(tcp);
        }
        Ok(l)
    }

    /// One address per listener (worker sockets share their listener's).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.udp.iter().filter_map(|s| s.local_addr().ok()).collect();
        addrs.dedup();
        addrs
    }
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    #[cfg(unix)]
    s.set_reuse_port(reuse_port)?;
    s.set_nonblocking(true)?;
    socket_buffers(&s);
    #[cfg(target_os = "linux")]
    no_path_mtu(&s, addr.is_ipv6());
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Answers leave without DF and with path MTU news ignored (IP_PMTUDISC_OMIT, as NSD and Unbound
/// set): a forged ICMP "fragmentation needed" then cannot make the kernel split answers to a
/// victim into fragments, which spoofed fragments could replace (cache poisoning). A UDP answer
/// is at most 1,232 bytes, the size chosen to cross paths whole (DNS Flag Day 2020); a rare
/// smaller link fragments it, as without DF it may. It also spares each datagram sent a lookup
/// of its route's MTU. Where OMIT is unknown (before Linux 3.15), IP_PMTUDISC_DONT.
#[cfg(target_os = "linux")]
fn no_path_mtu(s: &socket2::Socket, v6: bool) {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let (level, name, modes) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, [libc::IPV6_PMTUDISC_OMIT, libc::IPV6_PMTUDISC_DONT])
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, [libc::IP_PMTUDISC_OMIT, libc::IP_PMTUDISC_DONT])
    };
    for mode in modes {
        // SAFETY: an int option, passed by pointer with its size, on a socket we own.
        let set = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&mode as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set == 0 {
            return;
        }
    }
}

/// Receive buffer asked for on each UDP socket: ~10,000 queries, 40 ms at 250k q/s (Unbound
/// advises 4m for busy servers; NSD asks for 1 MiB, ~2,500 queries).
const UDP_RECV_BUFFER: usize = 4 << 20;
/// Send buffer: answers leave in `sendmmsg` batches as fast as they are made.
const UDP_SEND_BUFFER: usize = 1 << 20;

/// The default receive buffer (rmem_default, 208 KiB on Linux) holds ~250 queries: a few
/// milliseconds at 100k q/s, so one scheduling hiccup drops queries even at half load; 1 MiB
/// still lost queries to stalls of tens of milliseconds on a shared core. Forced past rmem_max
/// where we have CAP_NET_ADMIN, else up to rmem_max. Failing leaves the default, which works.
fn socket_buffers(s: &socket2::Socket) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(s, sockopt::RcvBufForce, &UDP_RECV_BUFFER).is_err() {
            let _ = s.set_recv_buffer_size(UDP_RECV_BUFFER);
        }
        if setsockopt(s, sockopt::SndBufForce, &UDP_SEND_BUFFER).is_err() {
            let _ = s.set_send_buffer_size(UDP_SEND_BUFFER);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = s.set_recv_buffer_size(UDP_RECV_BUFFER);
        let _ = s.set_send_buffer_size(UDP_SEND_BUFFER);
    }
}

/// CPUs in this process's affinity mask, in order (empty where it cannot be read, and off Linux).
fn affinity() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        use nix::libc;
        // SAFETY: a zeroed cpu_set_t is a valid empty set, filled in by the kernel within its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
        }
    }
    #[cfg(not(target_os = "linux"))]
    Vec::new()
}

/// Most CPUs given a socket of their own in the steering program: two instructions each, within
/// classic BPF's 4,096.
const STEERED_CPUS: usize = 1024;

/// Sends each datagram to a socket of the SO_REUSEPORT group chosen by the CPU that received it
/// (`dns.udp_steering = "cpu"`): the n-th CPU of `ours` (the process's affinity) to socket n
/// modulo the group's size, any other CPU by its number modulo the size. A classic BPF program,
/// which needs no privilege, attached to the group through any of its sockets (they join it in
/// the order they were bound, the order of the workers). On loopback the receiving CPU is the
/// sender's; from a NIC, its queue's (RSS). The table keeps a cpuset such as {3, 7} (siblings
/// that Kubernetes' static CPU manager hands out) from sending both CPUs' clients to one socket
/// by the modulo. Where it cannot be attached (before Linux 4.5, or elsewhere) the kernel's hash
/// of the client stays, which also works.
fn steer_by_cpu(socket: &UdpSocket, sockets: usize, ours: &[usize]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use nix::libc;
        use std::os::fd::AsRawFd;
        let op = |code: u32, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf, k };
        let n = sockets as u32;
        let mut program = vec![op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            0,
            (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        )];
        for (i, cpu) in ours.iter().take(STEERED_CPUS).enumerate() {
            // if A == cpu { return i % n } (else skip the return)
            program.push(op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 1, *cpu as u32));
            program.push(op(libc::BPF_RET | libc::BPF_K, 0, i as u32 % n));
        }
        program.push(op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, 0, n));
        program.push(op(libc::BPF_RET | libc::BPF_A, 0, 0));
        let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
        // SAFETY: the program outlives the call (the kernel copies it) and its length is right.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_CBPF,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if set == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, sockets, ours);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Binds `workers` UDP sockets and a TCP listener on one address. For port 0 the port UDP gets
/// may be taken for TCP by someone else, or for UDP in the moment between the probe and the
/// group's bind; then another port is tried.
async fn bind_group(addr: SocketAddr, workers: usize) -> std::io::Result<(Vec<UdpSocket>, TcpListener)> {
    let reuse_port = cfg!(unix) && workers > 1;
    let mut tries = 0;
    loop {
        match bind_group_once(addr, workers, reuse_port).await {
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1
            }
            bound => return bound,
        }
    }
}

async fn bind_group_once(
    addr: SocketAddr,
    workers: usize,
    reuse_port: bool,
) -> std::io::Result<(Vec<UdpSocket>, TcpListener)> {
    // SO_REUSEPORT lets a socket join another process's group on its port (same user) and take
    // a share of its traffic, and for port 0 the kernel may pick such a port, as if it were
    // free. A plain bind first fails if anyone holds the port, and for port 0 gets one no one
    // holds; the group then binds to it.
    let addr = if reuse_port { std::net::UdpSocket::bind(addr)?.local_addr()? } else { addr };
    let first = udp_socket(addr, reuse_port)?;
    let bound = first.local_addr()?;
    let tcp = TcpListener::bind(bound).await?;
    let mut udp = vec![first];
    for _ in 1..workers {
        udp.push(udp_socket(bound, reuse_port)?);
    }
    Ok((udp, tcp))
}

/// Queries answered off the socket tasks (UDP misses and TCP queries, waiting for the backend,
/// an upstream or the call budget) beyond which new UDP misses are dropped: the client retries,
/// and memory stays bounded when the backend or the upstreams are slow. Cache hits are still
/// answered; TCP is bounded by `dns.tcp_max_connections`.
const MAX_PENDING: usize = 10_000;

/// Queries being answered off the socket's task (misses, TCP queries).
#[derive(Default)]
struct InFlight {
    n: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.n.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The running listeners.
pub struct Serving {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    inflight: Arc<InFlight>,
}

impl Serving {
    /// Stops reading and accepting, then waits (at most `grace`) for queries in flight. Returns
    /// how many were still unanswered when the grace ran out.
    pub async fn drain(self, grace: Duration) -> usize {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.inflight.idle.notified();
            let n = self.inflight.n.load(Ordering::Acquire);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.inflight.n.load(Ordering::Acquire);
            }
        }
    }
}

pub fn spawn(
    listeners: Listeners,
    engine: Arc<Engine>,
    settings: ServerSettings,
    limiter: SharedLimiter,
) -> Serving {
    let (stop, stopped) = watch::channel(false);
    let inflight = Arc::new(InFlight::default());
    let mut tasks = Vec::new();
    #[cfg(target_os = "linux")]
    let mut threaded = Vec::new();
    for socket in listeners.udp {
        #[cfg(target_os = "linux")]
        {
            let wildcard = socket.local_addr().is_ok_and(|a| a.ip().is_unspecified());
            if !wildcard {
                match socket.into_std() {
                    Ok(std_socket) => threaded.push(Arc::new(std_socket)),
                    Err(e) => tracing::error!(error = %e, "cannot take a UDP socket off the reactor"),
                }
                continue;
            }
        }
        let io = (Arc::new(socket), stopped.clone(), inflight.clone());
        tasks.push(tokio::spawn(serve_udp(io, engine.clone(), limiter.clone())));
    }
    #[cfg(target_os = "linux")]
    let shares = {
        let (sockets, cpus) = (threaded.len(), usable_cpus());
        let shares = udp_thread_shares(threaded, cpus);
        if sockets > 0 {
            let threads = shares.len();
            tracing::info!(sockets, threads, cpus, "UDP: {sockets} socket(s) read by {threads} thread(s)");
        }
        shares
    };
    #[cfg(target_os = "linux")]
    if !shares.is_empty() && settings.udp_scheduling == UdpScheduling::Batch {
        tracing::info!("UDP threads scheduled with SCHED_BATCH (dns.udp_scheduling)");
    }
    #[cfg(target_os = "linux")]
    for sockets in shares {
        let policy = settings.udp_scheduling;
        let io = (sockets, stopped.clone(), inflight.clone());
        let (engine, limiter) = (engine.clone(), limiter.clone());
        let handle = tokio::runtime::Handle::current();
        // A thread of its own, named, rather than one of the runtime's blocking pool, which it
        // would hold for good.
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("dns-udp".into()).spawn(move || {
            schedule_this_thread(policy);
            serve_udp_thread(io, engine, limiter, handle);
            let _ = done.send(());
        });
        match thread {
            Ok(_) => tasks.push(tokio::spawn(async move {
                let _ = finished.await;
            })),
            Err(e) => tracing::error!(error = %e, "cannot start a UDP thread"),
        }
    }
    let connections = Arc::new(Semaphore::new(settings.tcp_max_connections));
    for listener in listeners.tcp {
        let io = (stopped.clone(), inflight.clone());
        tasks.push(tokio::spawn(serve_tcp(
            listener,
            io,
            engine.clone(),
            settings.clone(),
            connections.clone(),
        )));
    }
    Serving { stop, tasks, inflight }
}

async fn serve_udp(
    (socket, mut stopped, inflight): (Arc<UdpSocket>, watch::Receiver<bool>, Arc<InFlight>),
    engine: Arc<Engine>,
    limiter: SharedLimiter,
) {
    // On a wildcard address, replies must leave from the address each query came to.
    let wildcard = socket.local_addr().is_ok_and(|a| a.ip().is_unspecified());
    if wildcard && let Err(e) = super::pktinfo::enable(&socket) {
        tracing::warn!(error = %e, "cannot read datagram destinations; replies leave by the routing table's choice");
    }
    let sink = Sink::Async(socket.clone());
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(1232);
    loop {
        let receive = async {
            if wildcard {
                super::pktinfo::recv(&socket, &mut buf).await
            } else {
                socket.recv_from(&mut buf).await.map(|(n, peer)| (n, peer, None))
            }
        };
        let received = tokio::select! {
            r = receive => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let (len, peer, local) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors for earlier replies surface here on some systems; keep serving.
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let packet = &buf[..len];
        match engine.answer_cached(
            packet,
            Transport::Udp,
            peer.ip(),
            &mut out,
            Received::now(),
            &mut metrics::get().direct(),
        ) {
            Fast::Answered => {
                if admit(limiter.load().as_deref(), peer, &mut out) {
                    let _ = reply(&socket, &out, peer, local).await;
                }
            }
            Fast::Dropped => {}
            Fast::Miss => {
                if let Some(mut response) = miss(packet, peer, local, (&sink, &engine, &limiter, &inflight))
                    && admit(limiter.load().as_deref(), peer, &mut response)
                {
                    let _ = reply(&socket, &response, peer, local).await;
                }
            }
        }
    }
}

/// Answers a cache miss. Some need nothing to wait for (a service's answer rebuilt from the
/// namespace cache after a change): those are answered at once, in the receiving loop, and their
/// response is returned for the caller to send (in the batch, on the thread's path), which spares
/// a task and a system call each. The rest (a backend or upstream call) go on on their own task.
fn miss(
    packet: &[u8],
    peer: SocketAddr,
    local: Option<std::net::IpAddr>,
    (sink, engine, limiter, inflight): (&Sink, &Arc<Engine>, &SharedLimiter, &Arc<InFlight>),
) -> Option<Vec<u8>> {
    if inflight.n.load(Ordering::Relaxed) >= MAX_PENDING {
        crate::metrics::get().dropped_overload.inc();
        return None;
    }
    let packet = packet.to_vec();
    let engine = engine.clone();
    let guard = inflight.enter();
    let span = tracing::debug_span!("query", %peer, transport = "udp");
    // The loop's `answer_cached` just missed: straight to the rest of the path.
    let mut answer = Box::pin(
        async move { engine.answer_miss(&packet, Transport::Udp, peer.ip()).await }.instrument(span),
    );
    // One poll: what waits registers the real waker when the task polls it again.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if let std::task::Poll::Ready(response) = answer.as_mut().poll(&mut cx) {
        return response;
    }
    let (sink, limiter) = (sink.clone(), limiter.clone());
    tokio::spawn(async move {
        if let Some(mut response) = answer.await
            && admit(limiter.load().as_deref(), peer, &mut response)
        {
            sink.send(&response, peer, local).await;
        }
        drop(guard);
    });
    None
}

/// Where a miss answered on its own task sends its response: the listener's socket, through
/// tokio, or (the UDP thread's socket, in blocking mode) without waiting.
#[derive(Clone)]
enum Sink {
    Async(Arc<UdpSocket>),
    #[cfg(target_os = "linux")]
    Thread(Arc<std::net::UdpSocket>),
}

impl Sink {
    async fn send(&self, data: &[u8], peer: SocketAddr, local: Option<std::net::IpAddr>) {
        match self {
            Sink::Async(socket) => {
                let _ = reply(socket, data, peer, local).await;
            }
            #[cfg(target_os = "linux")]
            Sink::Thread(socket) => {
                // MSG_DONTWAIT: a full send buffer drops this response (the client retries)
                // rather than blocking a runtime worker.
                let _ = socket2::SockRef::from(&**socket).send_to_with_flags(
                    data,
                    &peer.into(),
                    nix::libc::MSG_DONTWAIT,
                );
            }
        }
    }
}

/// Puts the calling thread under `policy`. A failure is logged, not fatal: the thread serves as
/// well under the default policy.
#[cfg(target_os = "linux")]
fn schedule_this_thread(policy: UdpScheduling) {
    let policy = match policy {
        UdpScheduling::Normal => return,
        UdpScheduling::Batch => nix::libc::SCHED_BATCH,
    };
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is valid for the call, and priority 0 is
    // the only one SCHED_BATCH takes.
    if unsafe { nix::libc::sched_setscheduler(0, policy, &param) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot set the UDP thread's scheduling policy (dns.udp_scheduling)");
    }
}

/// The UDP loop on its own thread (Linux, sockets bound to one address): its sockets are off
/// tokio's reactor and in blocking mode (a full send buffer holds the loop rather than dropping
/// answers); `recvmmsg` takes what is queued, cache hits go out in one `sendmmsg`, misses go to
/// tasks as in `serve_udp`. One socket is waited on in `recvmmsg` itself. Several (more sockets
/// than CPUs) are read in turns, a batch from each, and waited on together in `poll` when all
/// are empty: at saturation the thread goes from socket to socket without a system call between.
#[cfg(target_os = "linux")]
fn serve_udp_thread(
    (sockets, stopped, inflight): (Vec<Arc<std::net::UdpSocket>>, watch::Receiver<bool>, Arc<InFlight>),
    engine: Arc<Engine>,
    limiter: SharedLimiter,
    runtime: tokio::runtime::Handle,
) {
    use std::os::fd::{AsFd, AsRawFd};

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    use super::mmsg::{BATCH, RecvBatch};
    let _runtime = runtime.enter();
    // Woken at least this often to see whether to stop.
    let wake = Duration::from_millis(100);
    let one = sockets.len() == 1;
    for socket in &sockets {
        let set_up = socket.set_nonblocking(false).and_then(|_| socket.set_read_timeout(one.then_some(wake)));
        if let Err(e) = set_up {
            tracing::error!(error = %e, "cannot set up a UDP socket for its thread");
            return;
        }
    }
    let mut batch = UdpBatch {
        received: RecvBatch::default(),
        replies: super::mmsg::SendBatch::default(),
        tally: metrics::Tally::new(),
        own: super::engine::ThreadCopies::default(),
        engine: &engine,
        limiter: &limiter,
        inflight: &inflight,
    };
    let sinks: Vec<Sink> = sockets.iter().map(|s| Sink::Thread(s.clone())).collect();
    let cache = engine.cache().clone();
    // Whether the last receive filled the batch: more queries wait behind it.
    let mut queued = false;
    let mut note = |full: bool| {
        if full != queued {
            queued = full;
            cache.backlog().mark(full);
        }
    };
    let unexpected = |e: &std::io::Error| {
        if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            tracing::debug!(error = %e, "UDP receive failed");
        }
    };
    // What `poll` waits on when every socket is empty (only with several sockets).
    let mut idle: Vec<PollFd> = if one {
        Vec::new()
    } else {
        sockets.iter().map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect()
    };
    // Until told to stop (or the sender is gone).
    while !*stopped.borrow() && stopped.has_changed().is_ok() {
        if one {
            let fd = sockets[0].as_raw_fd();
            match batch.received.recv_blocking(fd) {
                Ok(n) => {
                    note(n == BATCH);
                    batch.answer(n, fd, &sinks[0]);
                }
                Err(e) => {
                    unexpected(&e);
                    note(false);
                    batch.tally.publish();
                }
            }
            continue;
        }
        let mut any = false;
        let mut full = false;
        for (socket, sink) in sockets.iter().zip(&sinks) {
            let fd = socket.as_raw_fd();
            match batch.received.recv_queued(fd) {
                Ok(n) => {
                    (any, full) = (true, full || n == BATCH);
                    batch.answer(n, fd, sink);
                }
                Err(e) => unexpected(&e),
            }
        }
        note(full);
        if !any {
            batch.tally.publish();
            let _ = poll(&mut idle, PollTimeout::from(wake.as_millis() as u16));
        }
    }
    note(false);
    batch.tally.publish();
}

/// One UDP thread's buffers and counts, and what answering a batch needs.
#[cfg(target_os = "linux")]
struct UdpBatch<'a> {
    received: super::mmsg::RecvBatch,
    replies: super::mmsg::SendBatch,
    tally: metrics::Tally,
    /// This thread's copies of the answer map's and the forward cache's entries.
    own: super::engine::ThreadCopies,
    engine: &'a Arc<Engine>,
    limiter: &'a SharedLimiter,
    inflight: &'a Arc<InFlight>,
}

#[cfg(target_os = "linux")]
impl UdpBatch<'_> {
    /// Answers the `n` datagrams just received on `fd`: hits from the cache, the rest through
    /// `miss`; what is answered here leaves in one `sendmmsg`.
    fn answer(&mut self, n: usize, fd: i32, sink: &Sink) {
        let UdpBatch { received, replies, tally, own, engine, limiter, inflight } = self;
        let received_at = Received::now();
        let datagrams: smallvec::SmallVec<[(&[u8], SocketAddr); super::mmsg::BATCH]> =
            (0..n).filter_map(|i| received.get(i)).collect();
        let batch = engine.prepare(Some(&mut *own), datagrams.iter().map(|&(packet, _)| packet), n > 1);
        let limit = limiter.load();
        for (i, &(packet, peer)) in datagrams.iter().enumerate() {
            let out = replies.next_buf();
            match engine.answer_prepared(
                Some(&mut *own),
                &batch,
                i,
                Transport::Udp,
                peer.ip(),
                out,
                received_at,
                tally,
            ) {
                Fast::Answered => {
                    if admit(limit.as_deref(), peer, out) {
                        replies.push(peer);
                    }
                }
                Fast::Dropped => {}
                Fast::Miss => {
                    if let Some(response) = miss(packet, peer, None, (sink, engine, limiter, inflight)) {
                        let out = replies.next_buf();
                        out.extend_from_slice(&response);
                        if admit(limit.as_deref(), peer, out) {
                            replies.push(peer);
                        }
                    }
                }
            }
        }
        drop(limit);
        tally.end_batch(received_at.at);
        // A batch short of full emptied the queue: the thread may wait next, so its counts go
        // to the shared metrics now (`metrics::Tally`). Full ones wait for a few more.
        if n < super::mmsg::BATCH || tally.pending() >= metrics::PUBLISH_EVERY {
            tally.publish();
        }
        replies.flush_blocking(fd);
    }
}

async fn reply(
    socket: &UdpSocket,
    data: &[u8],
    peer: SocketAddr,
    local: Option<std::net::IpAddr>,
) -> std::io::Result<usize> {
    match local {
        Some(_) => super::pktinfo::send(socket, data, peer, local).await,
        None => socket.send_to(data, peer).await,
    }
}

async fn serve_tcp(
    listener: TcpListener,
    (mut stopped, inflight): (watch::Receiver<bool>, Arc<InFlight>),
    engine: Arc<Engine>,
    settings: ServerSettings,
    connections: Arc<Semaphore>,
) {
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped.wait_for(|s| *s) => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let engine = engine.clone();
        let idle = settings.tcp_idle_timeout;
        let io = (stopped.clone(), inflight.clone());
        tokio::spawn(async move {
            serve_connection(stream, peer, io, engine, idle).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    (mut stopped, inflight): (watch::Receiver<bool>, Arc<InFlight>),
    engine: Arc<Engine>,
    idle: Duration,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let write_task = tokio::spawn(async move {
        while let Some(response) = rx.recv().await {
            let len = (response.len() as u16).to_be_bytes();
            if writer.write_all(&len).await.is_err() || writer.write_all(&response).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            r = tokio::time::timeout(idle, reader.read_exact(&mut len)) => r,
            _ = stopped.wait_for(|s| *s) => break, // draining: answer what was read, take no more
        };
        match read {
            Ok(Ok(_)) => {}
            _ => break, // idle, closed, or reset
        }
        let len = u16::from_be_bytes(len) as usize;
        let mut packet = vec![0u8; len];
        match tokio::time::timeout(idle, reader.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let (engine, tx) = (engine.clone(), tx.clone());
        let span = tracing::debug_span!("query", %peer, transport = "tcp");
        let guard = inflight.enter();
        tokio::spawn(
            async move {
                if let Some(response) = engine.answer(&packet, Transport::Tcp, peer.ip()).await {
                    let _ = tx.send(response).await;
                }
                drop(guard);
            }
            .instrument(span),
        );
    }
    drop(tx);
    let _ = write_task.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn sockets_are_shared_out_among_at_most_one_thread_per_cpu() {
        assert_eq!(udp_thread_shares(vec![1, 2, 3, 4], 2), vec![vec![1, 3], vec![2, 4]]);
        assert_eq!(udp_thread_shares(vec![1, 2], 8), vec![vec![1], vec![2]]);
        assert_eq!(udp_thread_shares(vec![1, 2, 3], 1), vec![vec![1, 2, 3]]);
        assert_eq!(udp_thread_shares(vec![1], 0), vec![vec![1]]);
        assert!(udp_thread_shares(Vec::<u8>::new(), 4).is_empty());
    }

    /// The buffer asked for is granted (the kernel reports twice what it keeps for bookkeeping),
    /// up to rmem_max where the process may not force it.
    #[tokio::test]
    async fn udp_sockets_get_large_buffers() {
        let s = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let got = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(UDP_RECV_BUFFER);
        let floor =
            if cfg!(target_os = "linux") { 2 * UDP_RECV_BUFFER.min(max) } else { UDP_RECV_BUFFER.min(max) };
        assert!(got >= floor, "receive buffer {got} bytes, want at least {floor}");
    }

    /// A worker group bound to port 0 never lands on a port that another SO_REUSEPORT socket of
    /// this user holds: it would join that group and split its queries. The kernel hands such
    /// ports out to `:0` binds with SO_REUSEPORT as if free (of 1,000 such binds here, 26 got a
    /// port given before), so with 600 held, 400 groups bound that way would join one ~8 times.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_worker_group_on_port_0_never_joins_another_group() {
        let held: Vec<std::net::UdpSocket> = (0..600)
            .map(|_| std::net::UdpSocket::from(reuse_port_socket("127.0.0.1:0".parse().unwrap())))
            .collect();
        let ports: std::collections::HashSet<u16> =
            held.iter().map(|s| s.local_addr().unwrap().port()).collect();
        for _ in 0..400 {
            let (udp, _tcp) = bind_group("127.0.0.1:0".parse().unwrap(), 2).await.unwrap();
            let port = udp[0].local_addr().unwrap().port();
            assert!(!ports.contains(&port), "the group joined another on port {port}");
        }
    }

    /// A UDP socket bound with SO_REUSEPORT, as another server's worker group would be.
    #[cfg(unix)]
    fn reuse_port_socket(addr: SocketAddr) -> socket2::Socket {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s
    }

    /// Path MTU discovery is off on the listeners, for either family: no DF, and forged ICMP
    /// "fragmentation needed" ignored.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn udp_sockets_ignore_path_mtu() {
        use nix::libc;
        use std::os::fd::AsRawFd;
        let mode = |s: &UdpSocket, level, name| {
            let (mut v, mut len) = (-1 as libc::c_int, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
            // SAFETY: an int option read into an int of the stated size.
            let r = unsafe {
                libc::getsockopt(s.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len)
            };
            assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
            v
        };
        let v4 = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert_eq!(mode(&v4, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER), libc::IP_PMTUDISC_OMIT);
        if let Ok(v6) = udp_socket("[::1]:0".parse().unwrap(), false) {
            assert_eq!(mode(&v6, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER), libc::IPV6_PMTUDISC_OMIT);
        }
    }

    /// With `dns.udp_steering = "cpu"` a listener's datagrams go to the socket of the CPU that
    /// received them: the n-th of the process's CPUs to socket n modulo the sockets, another CPU
    /// by its number modulo the sockets. All those sent from one CPU, from many source ports,
    /// land on one socket, which the kernel's hash of the source would not do.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn udp_datagrams_go_to_the_socket_of_the_cpu_that_received_them() {
        let cpus = affinity();
        assert!(!cpus.is_empty());
        let absent = nix::libc::CPU_SETSIZE as usize + 1;
        let listed: Vec<usize> = std::iter::once(absent).chain(cpus.iter().copied()).collect();
        for table in [listed, Vec::new()] {
            let (udp, _tcp) = bind_group("127.0.0.1:0".parse().unwrap(), 2).await.unwrap();
            steer_by_cpu(&udp[0], udp.len(), &table).expect("the steering program attaches");
            for (i, &cpu) in cpus.iter().enumerate().take(4) {
                // Listed after a CPU that is not there, the i-th of ours takes socket i + 1
                // (modulo 2): for CPUs numbered from 0, not the one its number modulo 2 gives,
                // which it takes unlisted.
                let want = if table.is_empty() { cpu % 2 } else { (i + 1) % 2 };
                let mut expected = [0usize; 2];
                expected[want] = SENT;
                assert_eq!(
                    sockets_reached_from(cpu, &udp).await,
                    expected,
                    "sent from CPU {cpu}, table {table:?}"
                );
            }
        }
    }

    #[cfg(target_os = "linux")]
    const SENT: usize = 32;

    /// Datagrams from SENT client ports, sent from `cpu`: how many each socket received.
    #[cfg(target_os = "linux")]
    async fn sockets_reached_from(cpu: usize, udp: &[UdpSocket]) -> [usize; 2] {
        use nix::libc;
        let to = udp[0].local_addr().unwrap();
        std::thread::spawn(move || {
            // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
            }
            for _ in 0..SENT {
                let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                client.send_to(b"query", to).unwrap();
            }
        })
        .join()
        .unwrap();
        let mut got = [0usize; 2];
        for (i, socket) in udp.iter().enumerate() {
            let mut buf = [0u8; 16];
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await
            {
                got[i] += 1;
            }
        }
        got
    }
}
