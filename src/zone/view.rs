//! A service's instances as the DNS side reads them: addresses, ports and labels parsed once per
//! fetch, not once per query.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::backend::Discovered;
use crate::dns::wire;

use super::labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    /// The service has no health check.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct InstanceView {
    pub id: String,
    /// The label the instance is answered under (lower-case).
    pub label: String,
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
    pub attributes: Arc<BTreeMap<String, String>>,
    /// (key label, value label) of every attribute, lower-case, for filter names.
    pub attribute_labels: Vec<(String, String)>,
}

impl InstanceView {
    pub fn healthy(&self) -> bool {
        self.health != Health::Unhealthy
    }

    pub fn matches(&self, key: &str, value: &str) -> bool {
        self.attribute_labels.iter().any(|(k, v)| k == key && v == value)
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.attribute_labels.iter().any(|(k, _)| k == key)
    }
}

#[derive(Debug, Clone)]
pub struct ServiceView {
    pub name: String,
    pub revision: i64,
    pub instances: Vec<InstanceView>,
    /// Instance label (lower-case) -> index.
    pub by_label: HashMap<String, usize>,
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
                InstanceView {
                    id: i.id.clone(),
                    label: labels::match_label(&i.id),
                    ipv4: a.get("AWS_INSTANCE_IPV4").and_then(|v| v.parse().ok()),
                    ipv6: a.get("AWS_INSTANCE_IPV6").and_then(|v| v.parse().ok()),
                    cname: a.get("AWS_INSTANCE_CNAME").and_then(|v| wire::encode_name(v)),
                    port: a.get("AWS_INSTANCE_PORT").and_then(|v| v.parse().ok()).filter(|p| *p > 0),
                    priority: num("srv_priority", 1),
                    weight: num("srv_weight", 1),
                    health: match i.health.as_str() {
                        "HEALTHY" => Health::Healthy,
                        "UNHEALTHY" => Health::Unhealthy,
                        _ => Health::Unknown,
                    },
                    attribute_labels: a
                        .iter()
                        .map(|(k, v)| (labels::match_label(k), labels::match_label(v)))
                        .collect(),
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
