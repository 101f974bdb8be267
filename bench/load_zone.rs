//! Loads data into a Cloud Map API (a cloudmap-dns embedded registry) through the API itself, as
//! users would register it: `cargo build --release --example load-zone`.
//!
//! - `load-zone --endpoint URL zone NAMESPACE ZONE_FILE`: a zone file's A and SRV records as
//!   instances of an HTTP namespace named like the zone (bench/candidate.sh, for
//!   ../shared/bench-peers): each owner with A records is a service with one instance per
//!   address; each owner with SRV records (`_sip._udp.svc0`) is a service with one instance per
//!   record (port, `srv_priority`, `srv_weight`, and the target's first address).
//! - `load-zone --endpoint URL synthetic NAMESPACES SERVICES INSTANCES`: `ns0..` with services
//!   `svc0..` spread over them and instances spread over those (the scale benchmark).
//!
//! Calls go 32 at a time; every acknowledged registration is durable.

#[path = "loader.rs"]
mod loader;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use loader::{Services, client, load, namespace, synthetic};
use tokio::sync::Semaphore;

fn usage() -> ! {
    eprintln!(
        "usage: load-zone --endpoint URL zone NAMESPACE ZONE_FILE\n       load-zone --endpoint URL synthetic NAMESPACES SERVICES INSTANCES"
    );
    std::process::exit(2)
}

/// Reads `owner [ttl] [IN] TYPE rdata` lines, relative to the zone; A and SRV only.
fn from_zone_file(text: &str, zone: &str) -> Services {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let relative = |name: &str| -> String {
        let name = name.to_ascii_lowercase();
        match name.strip_suffix('.') {
            Some(abs) => abs.strip_suffix(&format!(".{zone}")).unwrap_or(abs).to_string(),
            None => name,
        }
    };
    let mut a: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut srv: BTreeMap<String, Vec<(String, String, String, String)>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('$') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(t) = fields.iter().position(|f| *f == "A" || *f == "SRV") else { continue };
        let owner = relative(fields[0]);
        if owner == "@" {
            continue;
        }
        match (fields[t], &fields[t + 1..]) {
            ("A", [ip, ..]) => a.entry(owner).or_default().push(ip.to_string()),
            ("SRV", [prio, weight, port, target, ..]) => srv.entry(owner).or_default().push((
                prio.to_string(),
                weight.to_string(),
                port.to_string(),
                relative(target),
            )),
            _ => {}
        }
    }
    let mut services = Services::new();
    for (owner, ips) in &a {
        let instances = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("i{i}"), vec![("AWS_INSTANCE_IPV4".into(), ip.clone())]))
            .collect();
        services.insert(owner.clone(), instances);
    }
    for (owner, records) in srv {
        let instances = records
            .into_iter()
            .enumerate()
            .filter_map(|(i, (prio, weight, port, target))| {
                let ip = a.get(&target)?.first()?.clone();
                Some((
                    format!("{}-{i}", target.split('.').next().unwrap_or("t")),
                    vec![
                        ("AWS_INSTANCE_IPV4".into(), ip),
                        ("AWS_INSTANCE_PORT".into(), port),
                        ("srv_priority".into(), prio),
                        ("srv_weight".into(), weight),
                    ],
                ))
            })
            .collect();
        services.insert(owner, instances);
    }
    services
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, rest) = match args.as_slice() {
        [flag, url, rest @ ..] if flag == "--endpoint" => (url.clone(), rest.to_vec()),
        _ => usage(),
    };
    let c = client(&endpoint);
    let gate = Arc::new(Semaphore::new(32));
    let started = Instant::now();
    let (namespaces, instances) = match rest.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["zone", ns, file] => {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            let id = namespace(&c, ns).await;
            (1, load(&c, &id, from_zone_file(&text, ns), &gate).await)
        }
        ["synthetic", namespaces, services, instances] => {
            let parse = |s: &str| s.parse::<usize>().unwrap_or_else(|_| usage());
            let (n, s, i) = (parse(namespaces), parse(services), parse(instances));
            let all = synthetic(s, i);
            let mut per_ns: Vec<Services> = vec![Services::new(); n];
            for (k, (name, v)) in all.into_iter().enumerate() {
                per_ns[k % n].insert(name, v);
            }
            let mut total = 0;
            for (k, services) in per_ns.into_iter().enumerate() {
                let id = namespace(&c, &format!("ns{k}")).await;
                total += load(&c, &id, services, &gate).await;
            }
            (n, total)
        }
        _ => usage(),
    };
    eprintln!(
        "loaded {instances} instances in {namespaces} namespace(s) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
