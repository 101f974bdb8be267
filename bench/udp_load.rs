//! A UDP DNS load generator for the benchmarks, in one thread (pin it to its own core): either
//! open loop at a fixed rate, for latency at a chosen share of a server's capacity, or with a
//! fixed number of queries in flight, to saturate it. Eight sockets, sendmmsg/recvmmsg in batches
//! of 32 (one system call per batch, so one load core can outrun one server core); per-query
//! latency from a 16-bit id per socket, in a 1 µs histogram.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const SOCKETS: usize = 8;
const BATCH: usize = 32;
/// Latency buckets of 1 µs up to this; slower answers land in the last bucket.
const MAX_US: usize = 200_000;
/// `Report::slow` lists the answers at least this late (µs), up to `MAX_SLOW` of them.
const SLOW_US: usize = 500;
const MAX_SLOW: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Queries per second, open loop: sent on schedule whatever the answers do.
    Rate(f64),
    /// Queries kept in flight (closed loop): as fast as the server answers.
    Window(usize),
}

#[derive(Clone)]
pub struct Report {
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    /// Answers that were not responses, had an RCODE other than NOERROR and NXDOMAIN, or
    /// were NOERROR without an answer.
    pub bad: u64,
    /// NXDOMAIN answers: right for the miss workloads (names never registered), wrong for others.
    pub nxdomain: u64,
    /// Answers the kernel dropped at the generator's own sockets (receive buffer full): lost
    /// queries that are the generator's fault, not the server's.
    pub client_drops: u64,
    /// The most queries that were due at once but not yet sent (paced runs): a generator that
    /// fell behind sends them back to back, a burst above the nominal rate.
    pub max_owed: u64,
    hist: Vec<u64>,
    /// With `Target::list_slow`, the answers that took `SLOW_US` or more: (sent, µs since the run
    /// began; latency, µs), in the order they came: whether a tail is scattered answers or
    /// bursts of them (a stall). Not kept by `to_text`; merged reports hold each run's, timed
    /// from its own start.
    pub slow: Vec<(u64, usize)>,
}

impl Report {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    pub fn qps(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    /// The latency (ms) that this share of the answers (0..=1) came within.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return f64::NAN;
        }
        self.within(total, p).unwrap_or(MAX_US as f64 / 1000.0)
    }

    /// The same over every query sent, the lost ones counted as later than any answer: a server
    /// that drops the queries it is slow to reach loses them from its tail, and this puts them
    /// back. Infinite when more than `1 - p` of the queries were lost.
    pub fn percentile_of_sent_ms(&self, p: f64) -> f64 {
        self.within(self.sent, p).unwrap_or(f64::INFINITY)
    }

    /// The latency (ms) that `p` of `total` queries came within, if that many were answered.
    fn within(&self, total: u64, p: f64) -> Option<f64> {
        let want = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.hist.iter().enumerate().find_map(|(us, n)| {
            seen += n;
            (seen >= want).then(|| us as f64 / 1000.0)
        })
    }

    /// Two runs as one.
    pub fn merge(mut self, other: Report) -> Report {
        self.seconds += other.seconds;
        self.sent += other.sent;
        self.received += other.received;
        self.bad += other.bad;
        self.nxdomain += other.nxdomain;
        self.client_drops += other.client_drops;
        self.max_owed = self.max_owed.max(other.max_owed);
        for (a, b) in self.hist.iter_mut().zip(other.hist) {
            *a += b;
        }
        self.slow.extend(other.slow);
        self
    }

    /// The report as text, for `from_text`: the counts on the first line, then one line per
    /// latency bucket that holds any answer (`us count`).
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "{} {} {} {} {} {} {}\n",
            self.seconds, self.sent, self.received, self.bad, self.nxdomain, self.client_drops, self.max_owed
        );
        for (us, n) in self.hist.iter().enumerate().filter(|(_, n)| **n > 0) {
            t.push_str(&format!("{us} {n}\n"));
        }
        t
    }

    /// A report written by `to_text`; None if the text is not one.
    pub fn from_text(text: &str) -> Option<Report> {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next()?.split_whitespace().collect();
        let [seconds, sent, received, bad, nxdomain, client_drops, max_owed] = head.as_slice() else {
            return None;
        };
        let mut hist = vec![0; MAX_US + 1];
        for line in lines {
            let (us, n) = line.split_once(' ')?;
            *hist.get_mut(us.parse::<usize>().ok()?)? = n.parse().ok()?;
        }
        Some(Report {
            seconds: seconds.parse().ok()?,
            sent: sent.parse().ok()?,
            received: received.parse().ok()?,
            bad: bad.parse().ok()?,
            nxdomain: nxdomain.parse().ok()?,
            client_drops: client_drops.parse().ok()?,
            max_owed: max_owed.parse().ok()?,
            hist,
            slow: Vec::new(),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "qps {:.0} sent {} received {} lost {} client_drops {} max_owed {} bad {} nxdomain {} p50_ms {:.3} p90_ms {:.3} p99_ms {:.3} p999_ms {:.3} p99_sent_ms {:.3}",
            self.qps(),
            self.sent,
            self.received,
            self.lost(),
            self.client_drops,
            self.max_owed,
            self.bad,
            self.nxdomain,
            self.percentile_ms(0.50),
            self.percentile_ms(0.90),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
            self.percentile_of_sent_ms(0.99),
        )
    }
}

/// A query in wire form (RD set, no EDNS); its id is written per send.
pub fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut p = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p
}

/// Reads a dnsperf query file ("name TYPE" per line).
pub fn query_file(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let qtype = match f.next().unwrap_or("A").to_ascii_uppercase().as_str() {
                "AAAA" => 28,
                "SRV" => 33,
                "TXT" => 16,
                "NS" => 2,
                "SOA" => 6,
                _ => 1,
            };
            Some(query(name, qtype))
        })
        .collect()
}

/// Sets a thread's CPUs (tid 0: the calling thread); no-op where that fails.
fn set_affinity(tid: i32, cpus: impl IntoIterator<Item = usize>) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Every thread a process has now.
fn threads(pid: u32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks.flatten().filter_map(|t| t.file_name().to_string_lossy().parse().ok()).collect()
}

/// Pins the calling thread to one CPU.
pub fn pin_to(cpu: usize) {
    set_affinity(0, [cpu]);
}

/// Pins another process (every thread it has now) to one CPU.
pub fn pin_process(pid: u32, cpu: usize) {
    for tid in threads(pid) {
        set_affinity(tid, [cpu]);
    }
}

/// Lets another process run on every CPU again.
pub fn unpin_process(pid: u32) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for tid in threads(pid) {
        set_affinity(tid, 0..cpus);
    }
}

/// Resident memory of a process, bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct Batch {
    bufs: Vec<[u8; 512]>,
    lens: Vec<usize>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        let mut b = Batch {
            bufs: vec![[0u8; 512]; BATCH],
            lens: vec![0; BATCH],
            // SAFETY: iovec and mmsghdr are plain C structs; all-zero is a valid value.
            iov: vec![unsafe { std::mem::zeroed() }; BATCH],
            msgs: vec![unsafe { std::mem::zeroed() }; BATCH],
        };
        for i in 0..BATCH {
            b.iov[i] = libc::iovec { iov_base: b.bufs[i].as_mut_ptr().cast(), iov_len: 512 };
        }
        b
    }

    fn prepare(&mut self, n: usize, send: bool) {
        for i in 0..n {
            self.iov[i].iov_len = if send { self.lens[i] } else { 512 };
            // SAFETY: all-zero is a valid msghdr; the pointers set point into self, which outlives
            // the system call made right after.
            self.msgs[i] = unsafe { std::mem::zeroed() };
            self.msgs[i].msg_hdr.msg_iov = &mut self.iov[i];
            self.msgs[i].msg_hdr.msg_iovlen = 1;
        }
    }
}

/// Runs queries (round robin over `queries`) at `server` for `duration`, then waits up to
/// 500 ms for late answers.
pub fn run(server: SocketAddr, queries: &[Vec<u8>], pace: Pace, duration: Duration) -> Report {
    let mut reports =
        run_interleaved(&[Target { server, pace, list_slow: false }], queries, duration, duration);
    reports.pop().expect("one report per target")
}

/// One server of an interleaved run, and the load it gets while its turn lasts.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub server: SocketAddr,
    pub pace: Pace,
    /// Keep `Report::slow` (off, nothing is kept: at saturation nearly every answer is slow).
    pub list_slow: bool,
}

/// Loads several servers in turn: `slice` of load for each, round robin, until each has had
/// `duration` (rounded up to whole slices); answers are read from all of them throughout. Two
/// servers on one CPU then share that CPU's interruptions (steal, other tasks) almost evenly, which
/// back-to-back runs of seconds do not: one report per target, in order, each counting only the
/// time it was loaded.
pub fn run_interleaved(
    targets: &[Target],
    queries: &[Vec<u8>],
    duration: Duration,
    slice: Duration,
) -> Vec<Report> {
    let each = vec![queries; targets.len()];
    run_interleaved_each(targets, &each, duration, slice)
}

/// `run_interleaved`, with a query list for each target (servers holding different names).
pub fn run_interleaved_each(
    targets: &[Target],
    queries: &[&[Vec<u8>]],
    duration: Duration,
    slice: Duration,
) -> Vec<Report> {
    assert!(queries.len() == targets.len() && queries.iter().all(|q| !q.is_empty()), "no queries");
    assert!(!targets.is_empty() && !slice.is_zero(), "nothing to load");
    let slices_each = duration.as_nanos().div_ceil(slice.as_nanos()).max(1) as u32;
    let cycle = slice * targets.len() as u32;
    let mut loads: Vec<Load> = targets.iter().map(|t| Load::new(*t)).collect();
    let mut out = Batch::new();
    let mut inb = Batch::new();
    let start = Instant::now();
    let end = start + cycle * slices_each;
    let drain_end = end + Duration::from_millis(500);
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        let sending = now < end;
        if !sending && (now >= drain_end || loads.iter().all(Load::answered)) {
            break;
        }
        // The target whose turn it is, and how long each has been loaded so far.
        let turn = (elapsed.as_nanos() / slice.as_nanos()) as usize % loads.len();
        let cycles = (elapsed.as_nanos() / cycle.as_nanos()) as u32;
        let into = elapsed.saturating_sub(cycle * cycles);
        let mut worked = false;
        for (t, load) in loads.iter_mut().enumerate() {
            let loaded =
                (slice * cycles + into.saturating_sub(slice * t as u32).min(slice)).min(slice * slices_each);
            let due = match load.target.pace {
                _ if !sending => 0,
                // Owed for the time it was loaded: what a turn left unsent goes out with the next.
                Pace::Rate(r) => {
                    let owed = ((loaded.as_secs_f64() * r) as u64).saturating_sub(load.sent);
                    load.max_owed = load.max_owed.max(owed);
                    owed
                }
                Pace::Window(w) if t == turn => {
                    (w as u64).saturating_sub(load.sent.saturating_sub(load.received + load.forgiven))
                }
                Pace::Window(_) => 0,
            };
            worked |= load.send(queries[t], (due as usize).min(BATCH), &mut out, start);
        }
        for load in &mut loads {
            worked |= load.receive(&mut inb, start);
        }
        if !worked {
            for load in &mut loads {
                load.forgive_if_stuck();
            }
            let wait = match loads[turn].target.pace {
                Pace::Rate(r) if sending => {
                    let load = &loads[turn];
                    let loaded = slice * cycles + into.saturating_sub(slice * turn as u32).min(slice);
                    Duration::from_secs_f64(((load.sent + 1) as f64 / r - loaded.as_secs_f64()).max(0.0))
                        .min(Duration::from_millis(1))
                }
                _ => Duration::from_micros(200),
            };
            if wait > Duration::from_micros(20) {
                let mut fds: Vec<libc::pollfd> = loads
                    .iter()
                    .flat_map(|l| &l.sockets)
                    .map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                    .collect();
                let ts = libc::timespec { tv_sec: 0, tv_nsec: wait.as_nanos() as libc::c_long };
                // SAFETY: fds is a valid array of pollfds; ts outlives the call.
                unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
            }
        }
    }
    let seconds = (slice * slices_each).as_secs_f64();
    loads.into_iter().map(|l| l.report(seconds)).collect()
}

/// One target's sockets, what was sent to it and what came back.
struct Load {
    target: Target,
    sockets: Vec<UdpSocket>,
    drops_before: Vec<(u16, u64)>,
    /// Send time (ns since start, +1; 0 = nothing outstanding) per socket and id.
    sent_at: Vec<Vec<u64>>,
    next_id: [u16; SOCKETS],
    hist: Vec<u64>,
    /// Answers of `SLOW_US` or more (`Report::slow`).
    slow: Vec<(u64, usize)>,
    sent: u64,
    received: u64,
    bad: u64,
    nxdomain: u64,
    forgiven: u64,
    max_owed: u64,
    /// Each target walks the query file from its start: the miss workloads' names are new to
    /// every server.
    next_query: usize,
    turn: usize,
    last_progress: Instant,
}

impl Load {
    fn new(target: Target) -> Load {
        let bind: SocketAddr = if target.server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }
            .parse()
            .expect("a loopback address");
        let sockets: Vec<UdpSocket> = (0..SOCKETS)
            .map(|_| {
                let s = UdpSocket::bind(bind).expect("bind a load socket");
                s.connect(target.server).expect("connect");
                s.set_nonblocking(true).expect("nonblocking");
                // Answers the generator is too late to read must not be lost here and counted
                // against the server: as much as rmem_max allows (4 MiB here, ~10,000 answers).
                let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
                s
            })
            .collect();
        let drops_before = sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| (a.port(), socket_drops(a.port())))
            .collect();
        Load {
            target,
            sockets,
            drops_before,
            sent_at: vec![vec![0u64; 65536]; SOCKETS],
            next_id: [0; SOCKETS],
            hist: vec![0; MAX_US + 1],
            slow: Vec::new(),
            sent: 0,
            received: 0,
            bad: 0,
            nxdomain: 0,
            forgiven: 0,
            max_owed: 0,
            next_query: 0,
            turn: 0,
            last_progress: Instant::now(),
        }
    }

    fn answered(&self) -> bool {
        self.received + self.forgiven >= self.sent
    }

    /// Sends `n` queries in one sendmmsg on the next socket; whether any went.
    fn send(&mut self, queries: &[Vec<u8>], n: usize, out: &mut Batch, start: Instant) -> bool {
        if n == 0 {
            return false;
        }
        let s = self.turn % SOCKETS;
        self.turn += 1;
        let stamp = (Instant::now() - start).as_nanos() as u64 + 1;
        for i in 0..n {
            let q = &queries[self.next_query % queries.len()];
            self.next_query += 1;
            let id = self.next_id[s];
            self.next_id[s] = id.wrapping_add(1);
            out.bufs[i][..q.len()].copy_from_slice(q);
            out.bufs[i][..2].copy_from_slice(&id.to_be_bytes());
            out.lens[i] = q.len();
            self.sent_at[s][id as usize] = stamp;
        }
        out.prepare(n, true);
        // SAFETY: msgs points at n prepared headers whose buffers live in `out`.
        let r = unsafe { libc::sendmmsg(self.sockets[s].as_raw_fd(), out.msgs.as_mut_ptr(), n as u32, 0) };
        let ok = if r < 0 { 0 } else { r as usize };
        for i in ok..n {
            // Not sent (socket buffer full): forget the stamp, try again later.
            let id = u16::from_be_bytes([out.bufs[i][0], out.bufs[i][1]]);
            self.sent_at[s][id as usize] = 0;
        }
        self.sent += ok as u64;
        self.next_query -= n - ok;
        if ok > 0 {
            self.last_progress = Instant::now();
        }
        ok > 0
    }

    /// Reads what answers wait on every socket; whether there were any.
    fn receive(&mut self, inb: &mut Batch, start: Instant) -> bool {
        let mut any = false;
        for (s, sock) in self.sockets.iter().enumerate() {
            inb.prepare(BATCH, false);
            // SAFETY: msgs points at BATCH prepared headers whose 512-byte buffers live in `inb`.
            let r = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    inb.msgs.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r <= 0 {
                continue;
            }
            any = true;
            let at = (Instant::now() - start).as_nanos() as u64 + 1;
            for i in 0..r as usize {
                let len = inb.msgs[i].msg_len as usize;
                let b = &inb.bufs[i];
                if len < 12 {
                    continue;
                }
                let id = u16::from_be_bytes([b[0], b[1]]) as usize;
                let t = std::mem::take(&mut self.sent_at[s][id]);
                if t == 0 {
                    continue; // a duplicate or an answer to a query already given up on
                }
                self.received += 1;
                let us = ((at - t) / 1000) as usize;
                self.hist[us.min(MAX_US)] += 1;
                if us >= SLOW_US && self.target.list_slow && self.slow.len() < MAX_SLOW {
                    self.slow.push(((t - 1) / 1000, us));
                }
                let is_response = b[2] & 0x80 != 0;
                let rcode = b[3] & 0x0f;
                let answers = u16::from_be_bytes([b[6], b[7]]);
                if is_response && rcode == 3 {
                    self.nxdomain += 1;
                } else if !is_response || rcode != 0 || answers == 0 {
                    self.bad += 1;
                }
            }
        }
        if any {
            self.last_progress = Instant::now();
        }
        any
    }

    /// With a fixed window, nothing back for a while counts what is in flight as lost, so the
    /// window does not stay shut.
    fn forgive_if_stuck(&mut self) {
        if matches!(self.target.pace, Pace::Window(_))
            && self.last_progress.elapsed() > Duration::from_millis(200)
        {
            self.forgiven = self.sent - self.received;
            self.last_progress = Instant::now();
        }
    }

    fn report(self, seconds: f64) -> Report {
        let client_drops =
            self.drops_before.iter().map(|&(port, before)| socket_drops(port).saturating_sub(before)).sum();
        Report {
            seconds,
            sent: self.sent,
            received: self.received,
            bad: self.bad,
            nxdomain: self.nxdomain,
            client_drops,
            max_owed: self.max_owed,
            hist: self.hist,
            slow: self.slow,
        }
    }
}

/// Datagrams the kernel dropped at the UDP sockets bound to local `port` (its receive buffer was
/// full), summed over IPv4 and IPv6: the last column of /proc/net/udp. 0 where there is no
/// /proc.
pub fn socket_drops(port: u16) -> u64 {
    let tables: Vec<String> =
        ["/proc/net/udp", "/proc/net/udp6"].iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
    drops_in(&tables, port)
}

/// The drops of each socket bound to `port` in these tables, once per socket: the kernel writes a
/// table in pieces while sockets come and go, so a read can list one socket twice (its inode tells).
fn drops_in(tables: &[String], port: u16) -> u64 {
    let suffix = format!(":{port:04X}");
    let mut seen = std::collections::HashSet::new();
    tables
        .iter()
        .flat_map(|t| t.lines().skip(1))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            if !fields.get(1)?.ends_with(&suffix) || !seen.insert(*fields.get(9)?) {
                return None;
            }
            fields.last()?.parse::<u64>().ok()
        })
        .sum()
}

/// Time the hypervisor kept one CPU from this machine (steal, /proc/stat) while it runs, sampled
/// every 100 ms. A vCPU taken away for 100 ms leaves the sockets of the server on it unread that
/// long: loss and tail latency that no server there could avoid, so the benches report it.
/// It also keeps the windows in which a server's socket dropped queries, with the CPU each of
/// the server's threads used in that window and the one before (when and beside what the loss
/// fell), and each thread's share over the whole watch.
pub struct StealWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Steal>,
}

#[derive(Debug, Clone, Default)]
pub struct Steal {
    /// Stolen in all, ms.
    pub total_ms: u64,
    /// The most stolen within one 100 ms sample, ms.
    pub worst_ms: u64,
    /// The samples in which the watched socket dropped queries.
    pub drops: Vec<DropWindow>,
    /// CPU of each of the watched server's threads over the whole watch, as a share of it.
    pub threads: Vec<(String, f64)>,
    /// The user-mode part of `threads`: the server's own code, without the kernel's.
    pub threads_user: Vec<(String, f64)>,
}

/// A 100 ms sample in which the watched server's socket dropped queries.
#[derive(Debug, Clone)]
pub struct DropWindow {
    /// When the sample ended, from the start of the watch.
    pub at_ms: u64,
    pub dropped: u64,
    pub stolen_ms: u64,
    /// CPU ms of each of the server's threads (by name) in this sample and in the one before.
    pub threads: Vec<(String, u64, u64)>,
}

impl DropWindow {
    pub fn to_text(&self) -> String {
        let threads: Vec<String> =
            self.threads.iter().map(|(name, before, now)| format!("{name} {before}/{now}")).collect();
        format!(
            "t={:.1}s dropped {} stolen {} ms; thread CPU ms before/in: {}",
            self.at_ms as f64 / 1000.0,
            self.dropped,
            self.stolen_ms,
            threads.join(", ")
        )
    }
}

impl StealWatch {
    /// Watches `cpu`'s steal and the server with UDP `port` and process `pid`.
    pub fn start(cpu: usize, port: u16, pid: u32) -> StealWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: sysconf has no preconditions.
            let ms_per_tick = 1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            let mut steal = Steal::default();
            let Some(mut last) = steal_ticks(cpu) else { return steal };
            let start = Instant::now();
            let mut dropped = socket_drops(port);
            let mut cpu_then = thread_ticks(pid);
            let user_first = thread_user_ticks(pid);
            let mut cpu_before: Vec<(String, u64)> = Vec::new();
            let cpu_first = cpu_then.clone();
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let now = steal_ticks(cpu).unwrap_or(last);
                let ms = now.saturating_sub(last) * ms_per_tick;
                steal.total_ms += ms;
                steal.worst_ms = steal.worst_ms.max(ms);
                last = now;
                let cpu_now = thread_ticks(pid);
                let in_window = delta_named(&cpu_then, &cpu_now);
                // A read can also miss the socket (0): keep the last count.
                let d = socket_drops(port).max(dropped);
                if d > dropped {
                    let threads = in_window
                        .iter()
                        .map(|(name, ticks)| {
                            let before = cpu_before.iter().find(|(n, _)| n == name).map_or(0, |(_, b)| *b);
                            (name.clone(), before * ms_per_tick, ticks * ms_per_tick)
                        })
                        .filter(|(_, before, now)| before + now > 0)
                        .collect();
                    let at_ms = start.elapsed().as_millis() as u64;
                    steal.drops.push(DropWindow { at_ms, dropped: d - dropped, stolen_ms: ms, threads });
                }
                dropped = d;
                cpu_before = in_window;
                cpu_then = cpu_now;
            }
            let seconds = start.elapsed().as_secs_f64();
            let shares = |ticks: Vec<(String, u64)>| -> Vec<(String, f64)> {
                ticks
                    .into_iter()
                    .map(|(name, ticks)| (name, (ticks * ms_per_tick) as f64 / 10.0 / seconds))
                    .filter(|(_, pct)| *pct > 0.0)
                    .collect()
            };
            steal.threads = shares(delta_named(&cpu_first, &cpu_then));
            steal.threads_user = shares(delta_named(&user_first, &thread_user_ticks(pid)));
            steal
        });
        StealWatch { stop, thread }
    }

    pub fn stop(self) -> Steal {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// CPU ticks per thread name between two readings (threads of one name summed).
fn delta_named(then: &[(i32, String, u64)], now: &[(i32, String, u64)]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for (tid, name, t) in now {
        let was = then.iter().find(|(id, ..)| id == tid).map_or(0, |(.., w)| *w);
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, sum)) => *sum += t.saturating_sub(was),
            None => out.push((name.clone(), t.saturating_sub(was))),
        }
    }
    out
}

/// Each thread of a process: its id, its name and its CPU time (user + system) in clock ticks.
fn thread_ticks(pid: u32) -> Vec<(i32, String, u64)> {
    thread_times(pid).into_iter().map(|(tid, name, user, system)| (tid, name, user + system)).collect()
}

/// Each thread of a process: its id, its name and its user-mode CPU time in clock ticks.
fn thread_user_ticks(pid: u32) -> Vec<(i32, String, u64)> {
    thread_times(pid).into_iter().map(|(tid, name, user, _)| (tid, name, user)).collect()
}

/// Each thread of a process: its id, its name, its user and its system CPU time in clock ticks.
fn thread_times(pid: u32) -> Vec<(i32, String, u64, u64)> {
    threads(pid)
        .into_iter()
        .filter_map(|tid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            let (name, user, system) = parse_thread_stat(&stat)?;
            Some((tid, name, user, system))
        })
        .collect()
}

/// The name, user and system ticks of a `/proc/<pid>/task/<tid>/stat` line.
fn parse_thread_stat(stat: &str) -> Option<(String, u64, u64)> {
    // The name is in parentheses and may hold spaces and parentheses; the fields after the last
    // ')' are plain. utime and stime are fields 14 and 15 of the line; `rest` starts at field 3.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((name, fields.get(11)?.parse::<u64>().ok()?, fields.get(12)?.parse::<u64>().ok()?))
}

/// The steal field (the eighth number) of `cpuN` in /proc/stat, in clock ticks.
fn steal_ticks(cpu: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(latencies_us: &[usize], sent: u64) -> Report {
        let mut hist = vec![0; MAX_US + 1];
        for &us in latencies_us {
            hist[us] += 1;
        }
        let received = latencies_us.len() as u64;
        Report {
            seconds: 1.0,
            sent,
            received,
            bad: 0,
            nxdomain: 0,
            client_drops: 0,
            max_owed: 3,
            hist,
            slow: Vec::new(),
        }
    }

    /// A responder that holds every tenth query 3 ms: those answers, and no answer under
    /// `SLOW_US`, are listed with their send times; the machine can only add to the list.
    #[test]
    fn slow_answers_are_listed_with_their_send_times() {
        let responder = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = responder.local_addr().unwrap();
        responder.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let held = std::thread::spawn(move || {
            let (mut buf, mut n, mut held) = ([0u8; 512], 0u32, 0u64);
            while let Ok((len, peer)) = responder.recv_from(&mut buf) {
                n += 1;
                if n % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(3));
                    held += 1;
                }
                buf[2] |= 0x80; // a response; NOERROR with no answer counts as bad, which is fine here
                let _ = responder.send_to(&buf[..len], peer);
            }
            held
        });
        let seconds = 0.3;
        let target = Target { server, pace: Pace::Rate(400.0), list_slow: true };
        let duration = Duration::from_secs_f64(seconds);
        let r = run_interleaved(&[target], &[query("svc.test", 1)], duration, duration).remove(0);
        let held = held.join().unwrap();
        assert!(held >= 10 && r.received == r.sent, "held {held}, sent {}, received {}", r.sent, r.received);
        assert!(r.slow.iter().all(|&(_, us)| us >= SLOW_US), "{:?}", r.slow);
        let late = r.slow.iter().filter(|&&(_, us)| us >= 2_900).count() as u64;
        assert!(late >= held, "{late} answers of 2.9 ms or more, {held} held");
        assert!(r.slow.iter().all(|&(at, _)| at as f64 <= seconds * 1e6), "{:?}", r.slow);
    }

    #[test]
    fn socket_drops_count_each_socket_once() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops";
        let line = |sl: u32, port: &str, inode: u32, drops: u32| {
            format!(
                "{sl}: 0100007F:{port} 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000  0 {inode} 2 0000000000000000 {drops}"
            )
        };
        // Port 5353 (14E9): socket 77 listed twice, as a read in pieces can; 78 a second socket.
        let v4 =
            [header.to_string(), line(1, "14E9", 77, 40), line(2, "14E9", 77, 40), line(3, "0035", 79, 5)]
                .join("\n");
        let v6 = [header.to_string(), line(1, "14E9", 78, 2)].join("\n");
        assert_eq!(drops_in(&[v4, v6], 5353), 42);
    }

    #[test]
    fn thread_cpu_is_read_past_odd_names_and_summed_by_name() {
        let line = "4242 (tokio (rt) 2) S 1 2 3 0 -1 4194560 10 0 0 0 70 30 0 0 20 0 9 0 5 6 7";
        assert_eq!(parse_thread_stat(line), Some(("tokio (rt) 2".to_string(), 70, 30)));
        assert_eq!(parse_thread_stat("garbage"), None);
        let then = [(1, "dns-udp".to_string(), 50), (2, "worker".to_string(), 10)];
        // Thread 3 started between the readings: all its ticks are new.
        let now =
            [(1, "dns-udp".to_string(), 80), (2, "worker".to_string(), 15), (3, "worker".to_string(), 4)];
        assert_eq!(delta_named(&then, &now), vec![("dns-udp".to_string(), 30), ("worker".to_string(), 9)]);
    }

    #[test]
    fn pooled_runs_keep_every_count_and_give_the_percentiles_of_all_their_queries() {
        // 99 fast answers in one run, 99 slow ones and a lost query in the other.
        let fast = report(&[10; 99], 99);
        let slow = report(&[5_000; 99], 100);
        let text = fast.clone().merge(slow).to_text();
        let pooled = Report::from_text(&text).expect("a pool file reads back");
        assert_eq!((pooled.sent, pooled.received, pooled.lost(), pooled.max_owed), (199, 198, 1, 3));
        assert_eq!(pooled.seconds, 2.0);
        // Of the 198 answers the 99th is the last fast one, the 100th the first slow one.
        assert_eq!(pooled.percentile_ms(0.5), 0.01);
        assert_eq!(pooled.percentile_ms(0.51), 5.0);
        assert_eq!(
            pooled.percentile_of_sent_ms(0.999),
            f64::INFINITY,
            "the lost query is later than any answer"
        );
        assert_eq!(Report::from_text(&pooled.to_text()).map(|r| r.to_text()), Some(text));
    }

    #[test]
    fn text_that_is_not_a_pool_file_is_refused() {
        assert!(Report::from_text("").is_none());
        assert!(Report::from_text("1 2 3").is_none());
        assert!(Report::from_text("1 2 3 4 5 6 7\n10 x\n").is_none());
        assert!(Report::from_text("1 2 3 4 5 6 7\n999999999 1\n").is_none(), "a bucket past the histogram");
    }
}
