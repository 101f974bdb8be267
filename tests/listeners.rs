//! UDP worker sockets (SO_REUSEPORT), against the real binary: every worker socket is read, a
//! second server cannot join the group on a port that is already taken, and there are never more
//! sockets per listener, or UDP threads, than CPUs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Server;
use common::dns::*;

/// UDP sockets bound to `port` on 127.0.0.1, from /proc/net/udp.
fn udp_sockets_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    let wanted = format!("0100007F:{port:04X}");
    table.lines().skip(1).filter(|l| l.split_whitespace().nth(1) == Some(wanted.as_str())).count()
}

fn start_with_workers(workers: usize) -> (Server, tempfile::TempDir) {
    start_with_dns_config(&format!("udp_workers = {workers}"))
}

/// A demo server with these lines in its `[dns]` table.
fn start_with_dns_config(lines: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[dns]\n{lines}\n")).unwrap();
    (Server::start(&["--config", config.to_str().unwrap(), "--demo"]), dir)
}

fn cpus() -> usize {
    std::thread::available_parallelism().unwrap().get()
}

#[test]
fn every_worker_socket_answers() {
    let (server, _dir) = start_with_dns_config("udp_workers = 4\nudp_steering = \"hash\"");
    assert_eq!(
        udp_sockets_on(server.dns.port()),
        4.min(cpus()),
        "the sockets share the port, one per CPU at most"
    );
    // The kernel's hash spreads clients over the sockets by address and port: from many client
    // ports, every query is answered only if every socket is read.
    for i in 0..64u16 {
        let packet = query_with("orders.demo", A, &Q { id: i, ..Q::default() });
        let r = udp_raw(server.dns, &packet, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("query {i} unanswered: a worker socket is not read"));
        assert_eq!(a(&parse(&r)).len(), 2);
    }
}

#[test]
fn a_taken_port_is_refused_not_shared() {
    let (server, _dir) = start_with_workers(2);
    let addr: SocketAddr = server.dns;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[dns]\nudp_workers = 2\n").unwrap();
    let port = addr.to_string();
    let second = Server::start_in(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap(), "--dns-listen", &port],
    );
    let log = second.err().expect("the second server must not start on a taken port");
    assert!(log.contains("cannot listen for DNS"), "{log}");
    assert_eq!(udp_sockets_on(addr.port()), 2.min(cpus()), "the first server's group is unchanged");
}

/// The server's threads' /proc/PID/task/TID directories.
#[cfg(target_os = "linux")]
fn thread_dirs(server: &Server) -> impl Iterator<Item = std::path::PathBuf> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap();
    tasks.filter_map(|t| Some(t.ok()?.path()))
}

/// Names of the server's threads.
#[cfg(target_os = "linux")]
fn thread_names(server: &Server) -> Vec<String> {
    thread_dirs(server)
        .filter_map(|t| std::fs::read_to_string(t.join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// Each thread's name and scheduling policy (0 SCHED_OTHER, 3 SCHED_BATCH), from
/// /proc/PID/task/TID/stat: the policy is the 41st field, the 39th after the name's `)`.
#[cfg(target_os = "linux")]
fn thread_policies(server: &Server) -> Vec<(String, u32)> {
    thread_dirs(server)
        .filter_map(|t| std::fs::read_to_string(t.join("stat")).ok())
        .map(|stat| {
            let (head, rest) = stat.rsplit_once(')').unwrap();
            let name = head.split_once('(').unwrap().1.to_string();
            (name, rest.split_whitespace().nth(38).unwrap().parse().unwrap())
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn udp_threads(server: &Server) -> usize {
    thread_names(server).iter().filter(|n| *n == "dns-udp").count()
}

/// Each UDP socket bound to an address is read by a thread of its own, named `dns-udp`, while
/// there are CPUs for them.
#[cfg(target_os = "linux")]
#[test]
fn udp_sockets_get_a_thread_each_up_to_one_per_cpu() {
    let (server, _dir) = start_with_workers(2);
    // Answered: the listeners' threads are running.
    assert_eq!(a(&parse(&udp(server.dns, &query("orders.demo", A)))).len(), 2);
    assert_eq!(
        udp_threads(&server),
        2.min(cpus()),
        "a thread per worker socket, up to one per CPU: {:?}",
        thread_names(&server)
    );
}

/// On one CPU: `udp_workers` beyond it is capped (one socket per listener), and the two
/// listeners' sockets are read by one thread (two busy threads on one core would take turns),
/// each socket still read.
#[cfg(target_os = "linux")]
#[test]
fn on_one_cpu_one_thread_reads_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[dns]\nudp_workers = 4\n").unwrap();
    let extra = ["--config", config.to_str().unwrap(), "--demo", "--dns-listen", "127.0.0.2:0"];
    let server = Server::start_on_cpu(our_cpus()[0], &extra);
    assert_eq!(udp_sockets_on(server.dns.port()), 1, "one socket per listener on one CPU");
    let log = server.log_text();
    assert!(log.contains("dns.udp_workers is 4: 1 per listener"), "the cap is logged:\n{log}");
    let second: SocketAddr = log
        .split("listening for DNS on UDP 127.0.0.2:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|port| format!("127.0.0.2:{port}").parse().unwrap())
        .unwrap_or_else(|| panic!("no second listener in the log:\n{log}"));
    for listener in [server.dns, second] {
        for i in 0..8u16 {
            let packet = query_with("orders.demo", A, &Q { id: i, ..Q::default() });
            let r = udp_raw(listener, &packet, Duration::from_secs(2)).unwrap_or_else(|| {
                panic!("query {i} to {listener} unanswered: a socket of the thread is not read")
            });
            assert_eq!(a(&parse(&r)).len(), 2);
        }
    }
    assert_eq!(udp_threads(&server), 1, "one CPU, one UDP thread: {:?}", thread_names(&server));
}

/// Voluntary context switches of each `dns-udp` thread, by thread id: a thread blocked in
/// `recvmmsg` switches once per wake-up, so these count the wake-ups of each worker.
#[cfg(target_os = "linux")]
fn udp_thread_wakeups(server: &Server) -> std::collections::BTreeMap<String, u64> {
    thread_dirs(server)
        .filter_map(|path| {
            (std::fs::read_to_string(path.join("comm")).ok()?.trim() == "dns-udp").then_some(())?;
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let n = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?;
            Some((path.file_name()?.to_string_lossy().into_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

/// CPUs this test may run on, from /proc/self/status (`0-3,6` form).
#[cfg(target_os = "linux")]
fn our_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
    let mut cpus = Vec::new();
    for range in list.trim().split(',') {
        let (from, to) = range.split_once('-').unwrap_or((range, range));
        cpus.extend(from.parse::<usize>().unwrap()..=to.parse::<usize>().unwrap());
    }
    cpus
}

/// By default (`dns.udp_steering = "cpu"`) the queries received on one CPU, from any number of
/// client ports, go to one worker socket, and so wake one UDP thread: a client pinned to one CPU
/// wakes one thread for each of its queries and the other not at all (but for its 100 ms check
/// whether to stop); pinned to another CPU, the other. The kernel's hash would wake both.
#[cfg(target_os = "linux")]
#[test]
fn queries_received_on_one_cpu_wake_one_udp_thread() {
    const QUERIES: u64 = 200;
    let cpus = our_cpus();
    if cpus.len() < 2 {
        eprintln!("one CPU: one worker, nothing to steer (the unit test covers the mechanism)");
        return;
    }
    let (server, _dir) = start_with_workers(2);
    // Answered: the listeners' threads are running.
    assert_eq!(a(&parse(&udp(server.dns, &query("orders.demo", A)))).len(), 2);
    assert_eq!(udp_threads(&server), 2, "{:?}", thread_names(&server));
    let log = server.log_text();
    assert!(log.contains("workers=2 by_cpu=true"), "the steering is logged:\n{log}");
    let mut busiest = Vec::new();
    for cpu in [cpus[0], cpus[1]] {
        let before = udp_thread_wakeups(&server);
        let dns = server.dns;
        std::thread::spawn(move || {
            // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
            }
            for i in 0..QUERIES as u16 {
                // A new client socket (source port) for each query.
                let packet = query_with("orders.demo", A, &Q { id: i, ..Q::default() });
                let r = udp_raw(dns, &packet, Duration::from_secs(2)).expect("answered");
                assert_eq!(a(&parse(&r)).len(), 2);
            }
        })
        .join()
        .unwrap();
        let after = udp_thread_wakeups(&server);
        let mut woken: Vec<(u64, String)> =
            after.iter().map(|(tid, n)| (n - before.get(tid).copied().unwrap_or(0), tid.clone())).collect();
        woken.sort();
        let [(idle, _), (busy, busy_tid)] = &woken[..] else { panic!("two UDP threads: {woken:?}") };
        assert!(
            *busy >= QUERIES / 2 && *idle <= QUERIES / 10,
            "from CPU {cpu}, one thread takes every query: wake-ups {woken:?}"
        );
        busiest.push(busy_tid.clone());
    }
    assert_ne!(busiest[0], busiest[1], "each CPU's queries go to a socket of its own");
}

/// `dns.udp_scheduling = "batch"` puts the UDP threads, and only them, under SCHED_BATCH, and
/// they answer; by default they keep the normal policy.
#[cfg(target_os = "linux")]
#[test]
fn udp_threads_take_the_configured_scheduling_policy() {
    const OTHER: u32 = 0;
    const BATCH: u32 = 3;
    let (batch, _batch_dir) = start_with_dns_config("udp_scheduling = \"batch\"");
    let (plain, _dir) = start_with_workers(0);
    for (server, udp_policy) in [(&batch, BATCH), (&plain, OTHER)] {
        assert_eq!(a(&parse(&udp(server.dns, &query("orders.demo", A)))).len(), 2);
        let policies = thread_policies(server);
        let udp: Vec<u32> = policies.iter().filter(|(n, _)| n == "dns-udp").map(|(_, p)| *p).collect();
        assert!(!udp.is_empty(), "no UDP thread: {policies:?}");
        assert!(udp.iter().all(|p| *p == udp_policy), "UDP threads: {policies:?}");
        assert!(
            policies.iter().filter(|(n, _)| n != "dns-udp").all(|(_, p)| *p == OTHER),
            "only the UDP threads change policy: {policies:?}"
        );
    }
    assert!(batch.log_text().contains("SCHED_BATCH"), "the policy is logged:\n{}", batch.log_text());
}
