//! UDP worker sockets (SO_REUSEPORT), against the real binary: every worker socket is read, and
//! a second server cannot join the group on a port that is already taken.

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

#[test]
fn every_worker_socket_answers() {
    let (server, _dir) = start_with_workers(4);
    assert_eq!(udp_sockets_on(server.dns.port()), 4, "four sockets share the port");
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
    assert_eq!(udp_sockets_on(addr.port()), 2, "the first server's group is unchanged");
}

/// The threads of a process, as (name, /proc/…/sched text).
#[cfg(target_os = "linux")]
fn threads(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_string();
            Some((name, std::fs::read_to_string(dir.join("sched")).unwrap_or_default()))
        })
        .collect()
}

/// Each UDP socket bound to an address is read by a thread of its own (`dns-udp`), which asks the
/// kernel for a short time slice (0.1 ms) where the kernel has them (EEVDF, Linux 6.12+), so a
/// datagram's arrival preempts a runtime worker mid-slice; the runtime's threads keep the default.
#[cfg(target_os = "linux")]
#[test]
fn each_udp_socket_has_a_thread_with_a_short_time_slice() {
    let (server, _dir) = start_with_workers(2);
    // Answered: the listeners' threads are running.
    assert_eq!(a(&parse(&udp(server.dns, &query("orders.demo", A)))).len(), 2);
    let threads = threads(server.child.id());
    let udp: Vec<&String> = threads.iter().filter(|(name, _)| name == "dns-udp").map(|(_, s)| s).collect();
    assert_eq!(
        udp.len(),
        2,
        "a thread per worker socket: {:?}",
        threads.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let slice = |sched: &str| -> Option<u64> {
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    };
    if slice(udp[0]).is_none() {
        eprintln!("this kernel does not show se.slice: the slice is not checked");
        return;
    }
    for s in &udp {
        assert_eq!(slice(s), Some(100_000), "the UDP thread's slice, ns");
    }
    let others: Vec<u64> =
        threads.iter().filter(|(n, _)| n != "dns-udp").filter_map(|(_, s)| slice(s)).collect();
    assert!(
        !others.is_empty() && others.iter().all(|&s| s > 100_000),
        "other threads, those the UDP threads started among them, keep the default: {others:?}"
    );
}
