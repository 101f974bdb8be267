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
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[dns]\nudp_workers = {workers}\n")).unwrap();
    (Server::start(&["--config", config.to_str().unwrap(), "--demo"]), dir)
}

fn cpus() -> usize {
    std::thread::available_parallelism().unwrap().get()
}

#[test]
fn every_worker_socket_answers() {
    let (server, _dir) = start_with_workers(4);
    assert_eq!(
        udp_sockets_on(server.dns.port()),
        4.min(cpus()),
        "the sockets share the port, one per CPU at most"
    );
    // The kernel spreads clients over the sockets by address and port: from many client ports,
    // every query is answered only if every socket is read.
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

/// Names of the server's threads.
#[cfg(target_os = "linux")]
fn thread_names(server: &Server) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// Each thread's name and scheduling policy (0 SCHED_OTHER, 3 SCHED_BATCH), from
/// /proc/PID/task/TID/stat: the policy is the 41st field, the 39th after the name's `)`.
#[cfg(target_os = "linux")]
fn thread_policies(server: &Server) -> Vec<(String, u32)> {
    std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
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

/// The first CPU this test may run on, from /proc/self/status.
#[cfg(target_os = "linux")]
fn a_cpu_of_ours() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
    list.trim().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
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
    let server = Server::start_on_cpu(a_cpu_of_ours(), &extra);
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

/// `dns.udp_scheduling = "batch"` puts the UDP threads, and only them, under SCHED_BATCH, and
/// they answer; by default they keep the normal policy.
#[cfg(target_os = "linux")]
#[test]
fn udp_threads_take_the_configured_scheduling_policy() {
    const OTHER: u32 = 0;
    const BATCH: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[dns]\nudp_scheduling = \"batch\"\n").unwrap();
    let batch = Server::start(&["--config", config.to_str().unwrap(), "--demo"]);
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
