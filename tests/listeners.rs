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

/// Each UDP socket bound to an address is read by a thread of its own, named `dns-udp`.
#[cfg(target_os = "linux")]
#[test]
fn each_udp_socket_has_a_thread_of_its_own() {
    let (server, _dir) = start_with_workers(2);
    // Answered: the listeners' threads are running.
    assert_eq!(a(&parse(&udp(server.dns, &query("orders.demo", A)))).len(), 2);
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "dns-udp").count(), 2, "a thread per worker socket: {names:?}");
}
