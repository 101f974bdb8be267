//! Where instances come from. One trait, one file per source: `embedded` reads the in-process
//! registry (and is told of every change as it commits); `aws` calls Cloud Map through
//! aws-sdk-servicediscovery. Nothing outside this module knows which one is in use.

mod attributes;
pub mod aws;
pub mod embedded;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use attributes::Attributes;

/// A namespace as the data plane names it: its HttpName, and its owner for shared namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NamespaceRef {
    pub http_name: String,
    pub owner_account: Option<String>,
}

/// A service of a namespace, as ListServices names it. Its attributes (the gRPC service config)
/// come with its instances, in `Discovered`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
}

/// Every instance of a service with its health, and the service's InstancesRevision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discovered {
    pub revision: i64,
    pub instances: Vec<DiscoveredInstance>,
    /// The service's gRPC service config attribute, where the backend reads it with the instances.
    #[serde(default)]
    pub grpc_config: Option<String>,
}

/// The strings are shared with the answer views built from it: one copy per instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredInstance {
    pub id: Arc<str>,
    pub health: Health,
    pub attributes: Arc<Attributes>,
}

/// An instance's health as DiscoverInstances reports it (HEALTHY, UNHEALTHY, UNKNOWN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// The service has no health check.
    Unknown,
}

impl Health {
    /// From the API's string; anything unexpected counts as no health check.
    pub fn parse(s: &str) -> Health {
        match s {
            "HEALTHY" => Health::Healthy,
            "UNHEALTHY" => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }
}

/// The service attribute that carries a gRPC service config for `_grpc_config` TXT.
pub const GRPC_CONFIG_ATTRIBUTE: &str = "grpc_config";

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The namespace or service does not exist: an answer (NXDOMAIN), not an outage.
    #[error("not found: {0}")]
    NotFound(String),
    /// RequestLimitExceeded or throttling: back off.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The credentials in use may not make this call (AccessDenied): a setup error, not an outage.
    #[error("access denied: {0}")]
    Denied(String),
    /// Anything else: the backend cannot be reached or failed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

/// Counts one request to the backend under the API's name for it (`backend_requests_total`),
/// with its duration. Each backend counts its own requests: one lookup can take several (the aws
/// backend pages ListServices, finds a namespace's id, reads service attributes).
pub(crate) fn count<T>(operation: &str, result: &Result<T, BackendError>, started: std::time::Instant) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(BackendError::NotFound(_)) => "not_found",
        Err(BackendError::Throttled(_)) => "throttled",
        Err(BackendError::Denied(_)) => "denied",
        Err(_) => "error",
    };
    crate::metrics::get().backend(operation, outcome, started.elapsed());
}

/// Runs one request and counts it (`count`).
pub(crate) async fn counted<T>(
    operation: &str,
    request: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let started = std::time::Instant::now();
    let result = request.await;
    count(operation, &result, started);
    result
}

/// What changed in the backend, for backends that can say (the embedded one).
pub use crate::registry::Change;

/// Who waits for a backend call: a client's query (a miss), or nobody (the background refresh).
/// A budgeted backend serves waiting calls first, so a backlog of refreshes never delays a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Waiting,
    Background,
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `embedded` or `aws`, for `_cloudmap` TXT and logs.
    fn kind(&self) -> &'static str;

    /// Namespaces served as zones when none are configured: (Name, HttpName). The aws backend
    /// serves configured zones only and returns none.
    async fn default_zones(&self) -> Result<Vec<(String, String)>, BackendError>;

    /// The services of a namespace.
    async fn services(&self, ns: &NamespaceRef, urgency: Urgency) -> Result<Vec<ServiceInfo>, BackendError>;

    /// All instances of a service (DiscoverInstances, HealthStatus ALL).
    async fn discover(
        &self,
        ns: &NamespaceRef,
        service: &str,
        urgency: Urgency,
    ) -> Result<Discovered, BackendError>;

    /// All instances of a service, read on the caller's thread at once, for backends that can
    /// (the embedded one reads its own store); `None` means only `discover` can.
    fn discover_now(&self, _ns: &NamespaceRef, _service: &str) -> Option<Result<Discovered, BackendError>> {
        None
    }

    /// Every service of a namespace with all its instances, in one call, for backends that keep
    /// their data in process (the embedded one): a cold cache loads a namespace at once, not
    /// with one call per service's first query. `None`: the backend cannot; use `discover`.
    async fn discover_all(
        &self,
        _ns: &NamespaceRef,
    ) -> Option<Result<Vec<(String, Discovered)>, BackendError>> {
        None
    }

    /// The service's InstancesRevision (DiscoverInstancesRevision).
    async fn revision(&self, ns: &NamespaceRef, service: &str, urgency: Urgency)
    -> Result<i64, BackendError>;

    /// Pushed changes, when the backend has them; `None` means poll.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>>;

    /// Registers a synchronous observer of changes, called before the write that made them is
    /// acknowledged; `false` if the backend cannot (then readers cannot read their writes).
    fn observe(&self, _observer: crate::registry::Observer) -> bool {
        false
    }

    /// Sets this node's call budget (calls/s), and how often service attributes are read again
    /// (`None`: never), on reload, for backends that rate-limit calls or read attributes in calls
    /// of their own.
    fn set_budget(&self, _calls_per_second: f64, _attributes_refresh: Option<std::time::Duration>) {}

    /// Whether a fetch also reads the service's attributes in a call of its own, at most once per
    /// `attributes_refresh` (aws: GetServiceAttributes), which the refresh arithmetic counts.
    fn reads_attributes(&self) -> bool {
        false
    }

    /// How full its rate budget is (0..=1), if calls are rate limited.
    fn budget_fill(&self) -> Option<f64> {
        None
    }
}
