//! Namespace zones: which DNS zone serves which Cloud Map namespace, how a name below a zone is
//! read (PRODUCT.md §2), and how answers are built from a service's instances.

pub mod answer;
pub mod labels;
pub mod view;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::backend::NamespaceRef;
use crate::dns::wire;

/// Which instances a zone answers with, as Cloud Map's DiscoverInstances HealthStatus filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthMode {
    /// Healthy instances; all of them when none is healthy (fail open).
    #[default]
    HealthyOrElseAll,
    Healthy,
    All,
}

impl HealthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthMode::HealthyOrElseAll => "HEALTHY_OR_ELSE_ALL",
            HealthMode::Healthy => "HEALTHY",
            HealthMode::All => "ALL",
        }
    }
}

/// One namespace zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Lower-case, without the trailing dot (`svc.example`).
    pub name: String,
    /// Lower-case wire form.
    pub wire: Vec<u8>,
    pub namespace: NamespaceRef,
    pub health: HealthMode,
    pub ttl: u32,
    /// A/AAAA answers hold at most this many records, picked at random per response; 0 = all.
    pub max_answers: usize,
    /// Names the namespace does not know go to the upstreams instead of NXDOMAIN.
    pub fallthrough: bool,
    /// gRPC service config for services that carry none of their own.
    pub grpc_config: Option<String>,
}

impl Zone {
    pub fn label_count(&self) -> usize {
        wire::labels(&self.wire).len()
    }
}

/// The zones, for longest-suffix matching of query names.
#[derive(Debug, Default)]
pub struct ZoneTable {
    zones: Vec<Arc<Zone>>,
}

impl ZoneTable {
    pub fn new(mut zones: Vec<Zone>) -> ZoneTable {
        // Longest first, so the first suffix match is the most specific zone.
        zones.sort_by_key(|z| std::cmp::Reverse(z.wire.len()));
        ZoneTable { zones: zones.into_iter().map(Arc::new).collect() }
    }

    pub fn zones(&self) -> &[Arc<Zone>] {
        &self.zones
    }

    /// The most specific zone containing `lower_qname` (lower-case wire form), and the offset in
    /// the name where the zone's labels start.
    pub fn find(&self, lower_qname: &[u8]) -> Option<(&Arc<Zone>, usize)> {
        // Label boundaries of the query name; the zone must start on one.
        let mut starts: SmallVec<[usize; 16]> = SmallVec::new();
        let mut i = 0;
        while let Some(&len) = lower_qname.get(i) {
            starts.push(i);
            if len == 0 {
                break;
            }
            i += 1 + len as usize;
        }
        self.zones.iter().find_map(|z| {
            let off = lower_qname.len().checked_sub(z.wire.len())?;
            (starts.contains(&off) && lower_qname[off..] == z.wire[..]).then_some((z, off))
        })
    }
}

/// Whether `name` can be a zone: dot-separated labels of 1-63 letters, digits, `-` or `_`.
pub fn is_dns_name(name: &str) -> bool {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    !trimmed.is_empty() && trimmed.len() <= 253 && trimmed.split('.').all(labels::is_plain_label)
}
