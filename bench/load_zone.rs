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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_servicediscovery as sd;
use tokio::sync::Semaphore;

/// What one service gets: its instances, each (id, attributes).
type Services = BTreeMap<String, Vec<(String, Vec<(String, String)>)>>;

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

fn synthetic(services: usize, instances: usize) -> Services {
    let mut out = Services::new();
    for i in 0..instances {
        let s = i % services;
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let attrs = vec![
            ("AWS_INSTANCE_IPV4".to_string(), ip),
            ("AWS_INSTANCE_PORT".to_string(), "8080".to_string()),
            ("az".to_string(), format!("use1-az{}", i % 3 + 1)),
        ];
        out.entry(format!("svc{s}")).or_default().push((format!("i{i}"), attrs));
    }
    out
}

fn client(endpoint: &str) -> sd::Client {
    use sd::config::{BehaviorVersion, Credentials, Region};
    let credentials = Credentials::new("local", "local", None, None, "load-zone");
    sd::Client::from_conf(
        sd::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(endpoint)
            // DiscoverInstances goes to `data-<host>` otherwise (not called here, but harmless).
            .interceptor(cloudmap_dns::backend::aws::StripDataHostPrefix)
            .build(),
    )
}

/// Creates an HTTP namespace; its id.
async fn namespace(c: &sd::Client, name: &str) -> String {
    let op = c.create_http_namespace().name(name).send().await;
    let op = op.unwrap_or_else(|e| panic!("namespace {name}: {e:?}"));
    let op = c.get_operation().operation_id(op.operation_id().unwrap_or_default()).send().await.unwrap();
    let targets = op.operation().and_then(|o| o.targets()).unwrap();
    targets[&sd::types::OperationTargetType::Namespace].clone()
}

async fn load(c: &sd::Client, ns: &str, services: Services, gate: &Arc<Semaphore>) -> usize {
    let mut tasks = Vec::new();
    for (name, instances) in services {
        let (c, ns, gate) = (c.clone(), ns.to_string(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire().await.unwrap();
            let svc = c.create_service().name(&name).namespace_id(&ns).send().await;
            let svc = svc.unwrap_or_else(|e| panic!("service {name}: {e:?}"));
            let svc = svc.service().and_then(|s| s.id()).unwrap().to_string();
            drop(permit);
            let mut registrations = Vec::new();
            for (id, attrs) in instances {
                let (c, svc, gate) = (c.clone(), svc.clone(), gate.clone());
                registrations.push(tokio::spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    let mut r = c.register_instance().service_id(&svc).instance_id(&id);
                    for (k, v) in attrs {
                        r = r.attributes(k, v);
                    }
                    r.send().await.unwrap_or_else(|e| panic!("instance {id}: {e:?}"));
                }));
            }
            let n = registrations.len();
            for r in registrations {
                r.await.unwrap();
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n
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
