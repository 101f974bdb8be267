//! `--demo`: seeds the registry with a namespace `demo`, a service `orders` (custom health) and
//! two instances, through the same operations the API serves. Seeding twice changes nothing.

use crate::registry::shapes::{
    CreateNamespaceRequest, CreateServiceRequest, HealthCheckCustomConfig, ListRequest,
    RegisterInstanceRequest,
};
use crate::registry::{Registry, RegistryError};

pub const NAMESPACE: &str = "demo";
pub const SERVICE: &str = "orders";

pub fn seed(registry: &Registry) -> Result<(), RegistryError> {
    let namespace_id = match find_namespace(registry)? {
        Some(id) => id,
        None => {
            registry.create_namespace(
                crate::registry::NamespaceKind::Http,
                CreateNamespaceRequest {
                    name: Some(NAMESPACE.into()),
                    description: Some("cloudmap-dns demo namespace".into()),
                    ..Default::default()
                },
            )?;
            find_namespace(registry)?.ok_or_else(|| {
                RegistryError::NamespaceNotFound("demo namespace vanished after creation".into())
            })?
        }
    };
    let service = registry.create_service(CreateServiceRequest {
        name: Some(SERVICE.into()),
        namespace_id: Some(namespace_id),
        description: Some("cloudmap-dns demo service".into()),
        health_check_custom_config: Some(HealthCheckCustomConfig { failure_threshold: Some(1) }),
        ..Default::default()
    });
    let service_id = match service {
        Ok(v) => v["Service"]["Id"].as_str().unwrap_or_default().to_string(),
        // Already seeded: leave what the user may have changed since.
        Err(RegistryError::ServiceAlreadyExists { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    for (id, ip, az) in [("orders-1", "10.0.1.10", "use1-az1"), ("orders-2", "10.0.2.10", "use1-az2")] {
        let attributes =
            [("AWS_INSTANCE_IPV4", ip), ("AWS_INSTANCE_PORT", "8080"), ("version", "v1"), ("az", az)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        registry.register_instance(RegisterInstanceRequest {
            service_id: Some(service_id.clone()),
            instance_id: Some(id.into()),
            attributes: Some(attributes),
            ..Default::default()
        })?;
    }
    Ok(())
}

fn find_namespace(registry: &Registry) -> Result<Option<String>, RegistryError> {
    let mut token = None;
    loop {
        let page = registry.list_namespaces(ListRequest { next_token: token, ..Default::default() })?;
        let found = page["Namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["Name"] == NAMESPACE && ns["Type"] == "HTTP");
        if let Some(ns) = found {
            return Ok(ns["Id"].as_str().map(str::to_string));
        }
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(None),
        }
    }
}
