//! The embedded registry as a backend: in-process calls on the blocking pool, the registry's
//! change stream, and reads on the writer's own thread, so the DNS cache refetches a service
//! before a write to it is acknowledged.

use crate::registry::{DiscoverOutput, Registry, RegistryError};

use super::{
    Backend, BackendError, Change, Discovered, DiscoveredInstance, Health, NamespaceRef, ServiceInfo, Urgency,
};

pub struct Embedded {
    registry: Registry,
}

impl Embedded {
    pub fn new(registry: Registry) -> Embedded {
        Embedded { registry }
    }

    async fn read(&self, ns: &NamespaceRef, service: &str) -> Result<Discovered, BackendError> {
        let (namespace, service) = (ns.http_name.clone(), service.to_string());
        self.registry.call(move |r| read_discovered(r, &namespace, &service)).await.map_err(map_err)
    }
}

fn map_err(e: RegistryError) -> BackendError {
    match e {
        RegistryError::NamespaceNotFound(m) | RegistryError::ServiceNotFound(m) => BackendError::NotFound(m),
        other => BackendError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Backend for Embedded {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn default_zones(&self) -> Result<Vec<(String, String)>, BackendError> {
        super::counted("ListNamespaces", async {
            self.registry.call(|r| r.namespace_names()).await.map_err(map_err)
        })
        .await
    }

    async fn services(&self, ns: &NamespaceRef, _: Urgency) -> Result<Vec<ServiceInfo>, BackendError> {
        let namespace = ns.http_name.clone();
        let rows = super::counted("ListServices", async {
            self.registry.call(move |r| r.services_of(&namespace)).await.map_err(map_err)
        })
        .await?;
        Ok(rows.into_iter().map(|name| ServiceInfo { name }).collect())
    }

    async fn discover(
        &self,
        ns: &NamespaceRef,
        service: &str,
        _: Urgency,
    ) -> Result<Discovered, BackendError> {
        super::counted("DiscoverInstances", self.read(ns, service)).await
    }

    fn discover_now(&self, ns: &NamespaceRef, service: &str) -> Option<Result<Discovered, BackendError>> {
        let started = std::time::Instant::now();
        let result = read_discovered(&self.registry, &ns.http_name, service).map_err(map_err);
        super::count("DiscoverInstances", &result, started);
        Some(result)
    }

    async fn discover_all(
        &self,
        ns: &NamespaceRef,
    ) -> Option<Result<Vec<(String, Discovered)>, BackendError>> {
        let namespace = ns.http_name.clone();
        let started = std::time::Instant::now();
        let read =
            self.registry.call(move |r| r.namespace_contents(&namespace, super::GRPC_CONFIG_ATTRIBUTE));
        let result = read.await.map_err(map_err);
        // Counted as the DiscoverInstances calls it stands for, each with an equal share of the
        // read's time (one read of three queries; how it splits by service is not known).
        if let Ok(services) = &result {
            let share = started.elapsed() / services.len().max(1) as u32;
            for _ in services {
                crate::metrics::get().backend("DiscoverInstances", "ok", share);
            }
        } else {
            super::count("DiscoverInstances", &result, started);
        }
        Some(result.map(|services| {
            services.into_iter().map(|s| (s.name, discovered(s.output, s.attribute))).collect()
        }))
    }

    async fn revision(&self, ns: &NamespaceRef, service: &str, _: Urgency) -> Result<i64, BackendError> {
        super::counted("DiscoverInstancesRevision", async { Ok(self.read(ns, service).await?.revision) })
            .await
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        Some(self.registry.subscribe())
    }

    fn observe(&self, observer: crate::registry::Observer) -> bool {
        self.registry.observe(observer);
        true
    }
}

fn read_discovered(r: &Registry, namespace: &str, service: &str) -> Result<Discovered, RegistryError> {
    let out = r.instances_of(namespace, service)?;
    let grpc_config = r.service_attribute(namespace, service, super::GRPC_CONFIG_ATTRIBUTE)?;
    Ok(discovered(out, grpc_config))
}

fn discovered(out: DiscoverOutput, grpc_config: Option<String>) -> Discovered {
    Discovered {
        grpc_config,
        revision: out.revision,
        instances: out
            .instances
            .into_iter()
            .map(|i| DiscoveredInstance {
                id: i.instance_id.into(),
                health: Health::parse(&i.health_status),
                attributes: std::sync::Arc::new(i.attributes.into()),
            })
            .collect(),
    }
}
