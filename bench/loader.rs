//! Registers data through a Cloud Map API (a cloudmap-dns embedded registry) as users would:
//! shared by the `load-zone` example and the scale benchmark. Calls go as many at a time as the
//! semaphore allows; every acknowledged registration is durable.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_servicediscovery as sd;
use tokio::sync::Semaphore;

/// What one service gets: its instances, each (id, attributes).
pub type Services = BTreeMap<String, Vec<(String, Vec<(String, String)>)>>;

/// `services` services `svc0..` with `instances` instances spread round robin over them, each
/// with a distinct IPv4 address in 10/8, port 8080 and an `az`.
pub fn synthetic(services: usize, instances: usize) -> Services {
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

pub fn client(endpoint: &str) -> sd::Client {
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
pub async fn namespace(c: &sd::Client, name: &str) -> String {
    let op = c.create_http_namespace().name(name).send().await;
    let op = op.unwrap_or_else(|e| panic!("namespace {name}: {e:?}"));
    let op = c.get_operation().operation_id(op.operation_id().unwrap_or_default()).send().await.unwrap();
    let targets = op.operation().and_then(|o| o.targets()).unwrap();
    targets[&sd::types::OperationTargetType::Namespace].clone()
}

pub async fn load(c: &sd::Client, ns: &str, services: Services, gate: &Arc<Semaphore>) -> usize {
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
