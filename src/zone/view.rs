//! A service's instances as the DNS side reads them: addresses, ports and labels parsed once per
//! fetch, not once per query.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub use crate::backend::Health;
use crate::backend::{Attributes, Discovered};
use crate::dns::wire;

use super::labels;

/// One instance, its strings shared with the discovery result it was built from (at 100,000
/// instances every per-instance copy shows in the resident size).
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub id: Arc<str>,
    /// The label the instance is answered under (lower-case): the id itself when it is one.
    pub label: Arc<str>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// AWS_INSTANCE_CNAME in wire form.
    pub cname: Option<Vec<u8>>,
    pub port: Option<u16>,
    /// SRV priority and weight: Cloud Map's 1 and 1 unless the `srv_priority` / `srv_weight`
    /// attributes say otherwise.
    pub priority: u16,
    pub weight: u16,
    pub health: Health,
    pub attributes: Arc<Attributes>,
}

impl InstanceView {
    pub fn healthy(&self) -> bool {
        self.health != Health::Unhealthy
    }

    /// Whether an attribute's key and value are answered under these (lower-case) labels.
    pub fn matches(&self, key: &str, value: &str) -> bool {
        self.attributes.iter().any(|(k, v)| labels::is_label_of(k, key) && labels::is_label_of(v, value))
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.attributes.iter().any(|(k, _)| labels::is_label_of(k, key))
    }
}

#[derive(Debug, Clone)]
pub struct ServiceView {
    pub name: String,
    pub revision: i64,
    pub instances: Vec<InstanceView>,
    /// Instance label (lower-case) -> index.
    pub by_label: HashMap<Arc<str>, usize>,
    pub grpc_config: Option<String>,
    pub has_health_check: bool,
}

impl ServiceView {
    pub fn new(name: &str, d: &Discovered, grpc_config: Option<String>) -> ServiceView {
        let mut instances: Vec<InstanceView> = d
            .instances
            .iter()
            .map(|i| {
                let a = &i.attributes;
                let num = |k: &str, default: u16| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
                let label = labels::match_label(&i.id);
                InstanceView {
                    label: if *label == *i.id { i.id.clone() } else { label.into() },
                    id: i.id.clone(),
                    ipv4: a.get("AWS_INSTANCE_IPV4").and_then(|v| v.parse().ok()),
                    ipv6: a.get("AWS_INSTANCE_IPV6").and_then(|v| v.parse().ok()),
                    cname: a.get("AWS_INSTANCE_CNAME").and_then(wire::encode_name),
                    port: a.get("AWS_INSTANCE_PORT").and_then(|v| v.parse().ok()).filter(|p| *p > 0),
                    priority: num("srv_priority", 1),
                    weight: num("srv_weight", 1),
                    health: i.health,
                    attributes: a.clone(),
                }
            })
            .collect();
        // A stable order, so that answers built twice from the same data are the same bytes.
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let by_label = instances.iter().enumerate().map(|(i, v)| (v.label.clone(), i)).collect();
        let has_health_check = instances.iter().any(|i| i.health != Health::Unknown);
        ServiceView {
            name: name.to_string(),
            revision: d.revision,
            instances,
            by_label,
            grpc_config,
            has_health_check,
        }
    }
}
