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

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Queries per second, open loop: sent on schedule whatever the answers do.
    Rate(f64),
    /// Queries kept in flight (closed loop): as fast as the server answers.
    Window(usize),
}

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
        let want = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (us, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= want {
                return us as f64 / 1000.0;
            }
        }
        MAX_US as f64 / 1000.0
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
        self
    }

    pub fn line(&self) -> String {
        format!(
            "qps {:.0} sent {} received {} lost {} client_drops {} max_owed {} bad {} nxdomain {} p50_ms {:.3} p90_ms {:.3} p99_ms {:.3} p999_ms {:.3}",
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
/// `drain` for late answers.
pub fn run(server: SocketAddr, queries: &[Vec<u8>], pace: Pace, duration: Duration) -> Report {
    assert!(!queries.is_empty(), "no queries");
    let bind: SocketAddr = if server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }.parse().unwrap();
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| {
            let s = UdpSocket::bind(bind).expect("bind a load socket");
            s.connect(server).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            // Answers the generator is too late to read must not be lost here and counted
            // against the server: as much as rmem_max allows (4 MiB here, ~10,000 answers).
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
            s
        })
        .collect();
    let drops_before: std::collections::HashMap<u16, u64> = sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|a| (a.port(), socket_drops(a.port())))
        .collect();
    // Send time (ns since start, +1; 0 = nothing outstanding) per socket and id.
    let mut sent_at = vec![vec![0u64; 65536]; SOCKETS];
    let mut next_id = [0u16; SOCKETS];
    let mut hist = vec![0u64; MAX_US + 1];
    let (mut sent, mut received, mut bad, mut nxdomain, mut forgiven) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut max_owed = 0u64;
    let mut next_query = 0usize;
    let mut turn = 0usize;
    let mut out = Batch::new();
    let mut inb = Batch::new();
    let start = Instant::now();
    let end = start + duration;
    let drain_end = end + Duration::from_millis(500);
    let mut last_progress = start;
    loop {
        let now = Instant::now();
        let sending = now < end;
        if !sending && (now >= drain_end || received + forgiven >= sent) {
            break;
        }
        let mut worked = false;
        if sending {
            let due = match pace {
                Pace::Rate(r) => {
                    let owed = (((now - start).as_secs_f64() * r) as u64).saturating_sub(sent);
                    max_owed = max_owed.max(owed);
                    owed
                }
                Pace::Window(w) => (w as u64).saturating_sub(sent.saturating_sub(received + forgiven)),
            };
            let n = (due as usize).min(BATCH);
            if n > 0 {
                let s = turn % SOCKETS;
                turn += 1;
                let stamp = (now - start).as_nanos() as u64 + 1;
                for i in 0..n {
                    let q = &queries[next_query % queries.len()];
                    next_query += 1;
                    let id = next_id[s];
                    next_id[s] = id.wrapping_add(1);
                    out.bufs[i][..q.len()].copy_from_slice(q);
                    out.bufs[i][..2].copy_from_slice(&id.to_be_bytes());
                    out.lens[i] = q.len();
                    sent_at[s][id as usize] = stamp;
                }
                out.prepare(n, true);
                // SAFETY: msgs points at n prepared headers whose buffers live in `out`.
                let r = unsafe { libc::sendmmsg(sockets[s].as_raw_fd(), out.msgs.as_mut_ptr(), n as u32, 0) };
                let ok = if r < 0 { 0 } else { r as usize };
                for i in ok..n {
                    // Not sent (socket buffer full): forget the stamp, try again later.
                    let id = u16::from_be_bytes([out.bufs[i][0], out.bufs[i][1]]);
                    sent_at[s][id as usize] = 0;
                }
                sent += ok as u64;
                next_query -= n - ok;
                worked |= ok > 0;
            }
        }
        for (s, sock) in sockets.iter().enumerate() {
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
            let at = (Instant::now() - start).as_nanos() as u64 + 1;
            for i in 0..r as usize {
                let len = inb.msgs[i].msg_len as usize;
                let b = &inb.bufs[i];
                if len < 12 {
                    continue;
                }
                let id = u16::from_be_bytes([b[0], b[1]]) as usize;
                let t = std::mem::take(&mut sent_at[s][id]);
                if t == 0 {
                    continue; // a duplicate or an answer to a query already given up on
                }
                received += 1;
                let us = ((at - t) / 1000) as usize;
                hist[us.min(MAX_US)] += 1;
                let is_response = b[2] & 0x80 != 0;
                let rcode = b[3] & 0x0f;
                let answers = u16::from_be_bytes([b[6], b[7]]);
                if is_response && rcode == 3 {
                    nxdomain += 1;
                } else if !is_response || rcode != 0 || answers == 0 {
                    bad += 1;
                }
            }
            worked = true;
        }
        if worked {
            last_progress = Instant::now();
        } else if let Pace::Window(_) = pace {
            // Nothing came back for a while: count what is in flight as lost, so the window
            // does not stay shut.
            if last_progress.elapsed() > Duration::from_millis(200) {
                forgiven = sent - received;
                last_progress = Instant::now();
            }
        }
        if !worked {
            let wait = match pace {
                Pace::Rate(r) if sending => {
                    let next = start + Duration::from_secs_f64((sent + 1) as f64 / r);
                    next.saturating_duration_since(Instant::now()).min(Duration::from_millis(1))
                }
                _ => Duration::from_micros(200),
            };
            if wait > Duration::from_micros(20) {
                let mut fds: Vec<libc::pollfd> = sockets
                    .iter()
                    .map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                    .collect();
                let ts = libc::timespec { tv_sec: 0, tv_nsec: wait.as_nanos() as libc::c_long };
                // SAFETY: fds is a valid array of SOCKETS pollfds; ts outlives the call.
                unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
            }
        }
    }
    let client_drops = sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|a| socket_drops(a.port()).saturating_sub(drops_before.get(&a.port()).copied().unwrap_or(0)))
        .sum();
    Report { seconds: duration.as_secs_f64(), sent, received, bad, nxdomain, client_drops, max_owed, hist }
}

/// Datagrams the kernel dropped at the UDP sockets bound to local `port` (its receive buffer was
/// full), summed over IPv4 and IPv6: the last column of /proc/net/udp. 0 where there is no
/// /proc.
pub fn socket_drops(port: u16) -> u64 {
    let suffix = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    fields.get(1)?.ends_with(&suffix).then(|| fields.last()?.parse::<u64>().ok())?
                })
                .sum::<u64>()
        })
        .sum()
}

/// Time the hypervisor kept one CPU from this machine (steal, /proc/stat) while it runs, sampled
/// every 100 ms. A vCPU taken away for 100 ms leaves the sockets of the server on it unread that
/// long: loss and tail latency that no server there could avoid, so the benches report it.
pub struct StealWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Steal>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Steal {
    /// Stolen in all, ms.
    pub total_ms: u64,
    /// The most stolen within one 100 ms sample, ms.
    pub worst_ms: u64,
}

impl StealWatch {
    pub fn start(cpu: usize) -> StealWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: sysconf has no preconditions.
            let ms_per_tick = 1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            let mut steal = Steal::default();
            let Some(mut last) = steal_ticks(cpu) else { return steal };
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let now = steal_ticks(cpu).unwrap_or(last);
                let ms = now.saturating_sub(last) * ms_per_tick;
                steal.total_ms += ms;
                steal.worst_ms = steal.worst_ms.max(ms);
                last = now;
            }
            steal
        });
        StealWatch { stop, thread }
    }

    pub fn stop(self) -> Steal {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The steal field (the eighth number) of `cpuN` in /proc/stat, in clock ticks.
fn steal_ticks(cpu: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    line.split_whitespace().nth(8)?.parse().ok()
}
