//! Throughput and latency of the embedded registry's Cloud Map API, as a client sees it: the
//! release binary on loopback, driven by aws-sdk-servicediscovery with concurrent callers.
//!
//! Run: `cargo bench --bench registry_api` (env: BENCH_SECONDS, BENCH_CONCURRENCY).
//! Reports operations/s and p50/p99 latency per operation. Writes are fsync-bound by design
//! (every acknowledged write is durable), so their figure says as much about the disk as the code.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Report {
    name: &'static str,
    ops: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Report {
    fn line(&mut self) -> String {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        format!(
            "| {:<28} | {:>9.0} | {:>8.2} | {:>8.2} |",
            self.name,
            self.ops as f64 / self.seconds,
            pct(0.50),
            pct(0.99)
        )
    }
}

/// Runs `op` from `concurrency` tasks for `seconds`, collecting each call's latency.
async fn drive<F, Fut>(name: &'static str, concurrency: u64, seconds: u64, op: F) -> Report
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                assert!(op(n).await, "{name} failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Report { name, ops: latencies.len(), seconds: started.elapsed().as_secs_f64(), latencies }
}

#[tokio::main]
async fn main() {
    let seconds = env_or("BENCH_SECONDS", 3);
    let concurrency = env_or("BENCH_CONCURRENCY", 8);
    let server = common::Server::start(&[]);
    let c = server.client();
    let ns = common::http_namespace(&c, "bench").await;
    let svc = c.create_service().name("svc").namespace_id(&ns).send().await.unwrap();
    let svc = svc.service().unwrap().id().unwrap().to_string();
    for i in 0..100 {
        c.register_instance()
            .service_id(&svc)
            .instance_id(format!("seed-{i}"))
            .attributes("AWS_INSTANCE_IPV4", format!("10.0.0.{}", i + 1))
            .attributes("AWS_INSTANCE_PORT", "8080")
            .send()
            .await
            .unwrap();
    }

    let mut reports = Vec::new();
    let client = c.clone();
    reports.push(
        drive("DiscoverInstances (100)", concurrency, seconds, move |_| {
            let c = client.clone();
            async move { c.discover_instances().namespace_name("bench").service_name("svc").send().await.is_ok() }
        })
        .await,
    );
    let client = c.clone();
    reports.push(
        drive("DiscoverInstancesRevision", concurrency, seconds, move |_| {
            let c = client.clone();
            async move {
                c.discover_instances_revision()
                    .namespace_name("bench")
                    .service_name("svc")
                    .send()
                    .await
                    .is_ok()
            }
        })
        .await,
    );
    let client = c.clone();
    let service = svc.clone();
    reports.push(
        drive("RegisterInstance (durable)", concurrency, seconds, move |n| {
            let c = client.clone();
            let svc = service.clone();
            async move {
                c.register_instance()
                    .service_id(svc)
                    .instance_id(format!("w-{}", n % 500))
                    .attributes("AWS_INSTANCE_IPV4", "10.1.0.1")
                    .send()
                    .await
                    .is_ok()
            }
        })
        .await,
    );

    println!("embedded registry API, {concurrency} concurrent SDK clients, {seconds} s each");
    println!("| operation                    |  ops/s    | p50 ms   | p99 ms   |");
    println!("|------------------------------|-----------|----------|----------|");
    for r in &mut reports {
        println!("{}", r.line());
    }
}
