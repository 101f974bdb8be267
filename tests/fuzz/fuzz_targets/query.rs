//! Fuzzes the whole query path without sockets: any bytes in, through parsing, zone routing, the
//! name grammar, the namespace cache and the answer builder, to an encoded response (and through
//! the UDP loop's batches, answered as lone queries are). It must never panic, and every
//! response must carry the query's ID.
//!
//! Run: cargo fuzz run --fuzz-dir tests/fuzz query

#![no_main]

use std::sync::{Arc, OnceLock};

use cloudmap_dns::acl::{self, Acl};
use cloudmap_dns::backend::{
    Backend, BackendError, Change, Discovered, DiscoveredInstance, Health, NamespaceRef, ServiceInfo, Urgency,
};
use cloudmap_dns::cache::{Cache, CacheSettings, ZoneSource};
use cloudmap_dns::dns::engine::{Engine, EngineSettings, Received, ThreadCopies, Transport};
use cloudmap_dns::dns::wire;
use cloudmap_dns::zone::{HealthMode, Zone};
use libfuzzer_sys::fuzz_target;

/// A fixed namespace: services with dotted names, SRV-style names, odd instance ids and attributes.
struct Fixed {
    changes: tokio::sync::broadcast::Sender<Change>,
}

fn instance(id: &str, attrs: &[(&str, &str)], health: &str) -> DiscoveredInstance {
    DiscoveredInstance {
        id: id.into(),
        health: Health::parse(health),
        attributes: Arc::new(attrs.iter().copied().collect()),
    }
}

#[async_trait::async_trait]
impl Backend for Fixed {
    fn kind(&self) -> &'static str {
        "fuzz"
    }
    async fn default_zones(&self) -> Result<Vec<(String, String)>, BackendError> {
        Ok(Vec::new())
    }
    async fn services(&self, _: &NamespaceRef, _: Urgency) -> Result<Vec<ServiceInfo>, BackendError> {
        Ok(["web", "_sip._tcp", "a.b", "Web", "big"]
            .iter()
            .map(|n| ServiceInfo { name: n.to_string() })
            .collect())
    }
    async fn discover(&self, _: &NamespaceRef, service: &str, _: Urgency) -> Result<Discovered, BackendError> {
        let instances = match service {
            "web" => vec![
                instance("w1", &[("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80"), ("v", "1.2")], "HEALTHY"),
                instance("10.0.0.2:80", &[("AWS_INSTANCE_IPV6", "2001:db8::2"), ("AWS_INSTANCE_PORT", "80")], "UNHEALTHY"),
                instance("c", &[("AWS_INSTANCE_CNAME", "x.example.org")], "UNKNOWN"),
            ],
            "big" => (0..60)
                .map(|i| instance(&format!("n{i}"), &[("AWS_INSTANCE_IPV4", &format!("10.1.0.{i}")), ("AWS_INSTANCE_PORT", "1")], "HEALTHY"))
                .collect(),
            "a.b" | "_sip._tcp" | "Web" => vec![instance("x", &[("AWS_INSTANCE_IPV4", "10.2.0.1"), ("k", "")], "HEALTHY")],
            _ => return Err(BackendError::NotFound(service.into())),
        };
        Ok(Discovered { revision: 1, instances, grpc_config: Some("{\"a\":1}".into()) })
    }
    async fn revision(&self, _: &NamespaceRef, _: &str, _: Urgency) -> Result<i64, BackendError> {
        Ok(1)
    }
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let backend = Arc::new(Fixed { changes: tokio::sync::broadcast::channel(1).0 });
        let zone = Zone {
            name: "fz.test".into(),
            wire: wire::encode_name("fz.test").unwrap(),
            namespace: NamespaceRef { http_name: "fz".into(), owner_account: None },
            health: HealthMode::HealthyOrElseAll,
            ttl: 5,
            max_answers: 8,
            fallthrough: false,
            grpc_config: None,
        };
        let cache = Cache::new(
            backend,
            CacheSettings {
                refresh: std::time::Duration::from_secs(1),
                health_refresh: std::time::Duration::from_secs(5),
                idle_timeout: std::time::Duration::from_secs(60),
                max_stale: std::time::Duration::from_secs(60),
                catalog_refresh: std::time::Duration::from_secs(60),
                service_attributes: true,
                rate_limit: 100.0,
                snapshot: None,
            },
            ZoneSource { explicit: vec![zone], automatic: None },
        );
        let settings = EngineSettings {
            server_name: wire::encode_name("localhost").unwrap(),
            max_cached_answers: 1000,
            allow_query: Acl::new(&acl::loopback()),
            allow_recursion: Acl::new(&acl::loopback()),
            query_log: false,
        };
        let engine = Engine::new(cache, None, settings);
        Harness { runtime, engine }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    // The UDP loop's way: a batch parsed, keyed and prefetched once, then answered query by
    // query, as a lone query is.
    let mut own = ThreadCopies::default();
    let batch = h.engine.prepare(Some(&mut own), [data, data].into_iter(), true);
    let mut counts = cloudmap_dns::metrics::get().direct();
    let received = Received::now();
    for i in 0..2 {
        let (mut alone, mut batched) = (Vec::new(), Vec::new());
        let client = [127, 0, 0, 1].into();
        let a = h.engine.answer_cached(data, Transport::Udp, client, &mut alone, received, &mut counts);
        let b = h.engine.answer_prepared(Some(&mut own), &batch, i, Transport::Udp, client, &mut batched, received, &mut counts);
        // Records may come in another order; the kind of answer, its ID, flags and rcode not.
        assert_eq!(std::mem::discriminant(&a), std::mem::discriminant(&b), "answered as a lone query");
        assert_eq!(alone.get(..4), batched.get(..4), "the same ID, flags and rcode as a lone query");
    }
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(response) = h.runtime.block_on(h.engine.answer(data, transport, [127, 0, 0, 1].into())) {
            assert!(response.len() >= 12, "a response has a header");
            assert_eq!(response[..2], data[..2], "the response carries the query's ID");
            if transport == Transport::Udp {
                assert!(response.len() <= 1232, "UDP responses fit the largest payload we offer");
            }
        }
    }
});
