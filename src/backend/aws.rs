//! AWS Cloud Map as a backend, through aws-sdk-servicediscovery and the standard credential chain.
//!
//! Every call passes one shared rate budget (`Budget`): a token bucket sized to this node's share
//! of the account's Cloud Map quota, which every node of a fleet shares. Throttling answers
//! (`RequestLimitExceeded`) make the whole budget back off, exponentially and with jitter. The
//! SDK's own retries are off, so each call counted here is exactly one request at the backend.
//!
//! DiscoverInstances does not carry the service's attributes, so a service's `grpc_config`
//! attribute is read with GetServiceAttributes beside it, at most once per `attributes_refresh`
//! (the catalog's interval), by the service id that ListServices gave.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_servicediscovery as sd;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use rand::Rng;
use sd::error::ProvideErrorMetadata;
use tokio::time::Instant;

use super::{
    Backend, BackendError, Change, Discovered, DiscoveredInstance, Health, NamespaceRef, ServiceInfo, Urgency,
};

#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub data_endpoint_url: Option<String>,
    /// Calls per second this node may make, all operations together.
    pub rate_limit: f64,
    pub call_timeout: Duration,
    /// How often an active service's attributes are read again (GetServiceAttributes); `None`:
    /// never.
    pub attributes_refresh: Option<Duration>,
}

pub struct Aws {
    control: sd::Client,
    data: sd::Client,
    budget: Budget,
    /// Milliseconds, 0 for never; set again on reload.
    attributes_refresh_ms: AtomicU64,
    /// Each listed service's id and what its attributes last said.
    services: Mutex<HashMap<(NamespaceRef, String), ServiceMeta>>,
    /// Whether a failure to read attributes was logged at warn (once; later ones at debug).
    attributes_warned: AtomicBool,
    /// GetServiceAttributes was denied: attributes are not asked for again until a reload, so
    /// a role without that action does not spend the call budget on denials.
    attributes_denied: AtomicBool,
}

#[derive(Default)]
struct ServiceMeta {
    /// From ListServices (the ARN in a shared namespace); `None` until the namespace is listed
    /// with the service in it.
    id: Option<String>,
    grpc_config: Option<String>,
    /// When the attributes were last asked for, answered or not.
    read_at: Option<Instant>,
}

/// aws-sdk-servicediscovery sends DiscoverInstances and DiscoverInstancesRevision to
/// `data-<host>` (AWS serves them on `data-servicediscovery.<region>`). A custom endpoint has no
/// such name, and the SDK has no switch, so this strips the prefix again before signing.
#[derive(Debug)]
pub struct StripDataHostPrefix;

impl Intercept for StripDataHostPrefix {
    fn name(&self) -> &'static str {
        "StripDataHostPrefix"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        let uri = request.uri().to_string();
        for scheme in ["http://", "https://"] {
            if let Some(rest) = uri.strip_prefix(&format!("{scheme}data-")) {
                request.set_uri(format!("{scheme}{rest}"))?;
                break;
            }
        }
        Ok(())
    }
}

impl Aws {
    pub async fn new(settings: &AwsSettings) -> Aws {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(settings.call_timeout)
            .connect_timeout(settings.call_timeout)
            .build();
        let base = sd::config::Builder::from(&shared)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts);
        let mut control = base.clone();
        if let Some(url) = &settings.endpoint_url {
            control = control.endpoint_url(url);
        }
        let mut data = base;
        if let Some(url) = settings.data_endpoint_url.as_ref().or(settings.endpoint_url.as_ref()) {
            data = data.endpoint_url(url).interceptor(StripDataHostPrefix);
        }
        Aws {
            control: sd::Client::from_conf(control.build()),
            data: sd::Client::from_conf(data.build()),
            budget: Budget::new(settings.rate_limit),
            attributes_refresh_ms: AtomicU64::new(millis(settings.attributes_refresh)),
            services: Mutex::new(HashMap::new()),
            attributes_warned: AtomicBool::new(false),
            attributes_denied: AtomicBool::new(false),
        }
    }

    /// Runs one call within the budget, classifying its failure, and counts it under the API's
    /// name for it (the time counted includes the wait for the budget).
    async fn call<T, E, F, Fut>(&self, operation: &str, urgency: Urgency, f: F) -> Result<T, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, sd::error::SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        super::counted(operation, async {
            self.budget.acquire(urgency).await;
            match f().await {
                Ok(v) => {
                    self.budget.succeeded();
                    Ok(v)
                }
                Err(e) => {
                    let err = classify(&e);
                    if matches!(err, BackendError::Throttled(_)) {
                        self.budget.throttled();
                    }
                    Err(err)
                }
            }
        })
        .await
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, HashMap<(NamespaceRef, String), ServiceMeta>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the ids of a namespace's services as ListServices gave them, and forgets the
    /// services it no longer lists.
    fn listed(&self, ns: &NamespaceRef, ids: HashMap<String, String>) {
        let mut meta = self.meta();
        meta.retain(|(n, name), _| n != ns || ids.contains_key(name));
        for (name, id) in ids {
            let m = meta.entry((ns.clone(), name)).or_default();
            if m.id.as_deref() != Some(id.as_str()) {
                // A new service, or one deleted and created again under its name.
                *m = ServiceMeta { id: Some(id), ..ServiceMeta::default() };
            }
        }
    }

    /// The service's `grpc_config` attribute: read again when it is older than the attributes
    /// interval, else as last read. It never fails the lookup it is part of: without an id
    /// (the service is newer than the last listing) or when the call fails (throttled, or a
    /// role without `servicediscovery:GetServiceAttributes`), the last value stands.
    async fn grpc_config(&self, ns: &NamespaceRef, service: &str, urgency: Urgency) -> Option<String> {
        let every = match self.attributes_refresh_ms.load(Ordering::Relaxed) {
            0 => return None,
            ms => Duration::from_millis(ms),
        };
        let key = (ns.clone(), service.to_string());
        let id = {
            let meta = self.meta();
            let m = meta.get(&key)?;
            if m.read_at.is_some_and(|t| t.elapsed() < every)
                || self.attributes_denied.load(Ordering::Relaxed)
            {
                return m.grpc_config.clone();
            }
            m.id.clone()?
        };
        let result = self
            .call("GetServiceAttributes", urgency, || {
                self.control.get_service_attributes().service_id(&id).send()
            })
            .await;
        let mut meta = self.meta();
        let m = meta.get_mut(&key).filter(|m| m.id.as_deref() == Some(id.as_str()))?;
        m.read_at = Some(Instant::now());
        match result {
            Ok(out) => {
                m.grpc_config = out
                    .service_attributes()
                    .and_then(|a| a.attributes())
                    .and_then(|a| a.get(super::GRPC_CONFIG_ATTRIBUTE))
                    .cloned();
            }
            Err(BackendError::NotFound(_)) => {
                // The id is gone: the service was created again under its name. The next
                // listing gives the new one.
                *m = ServiceMeta::default();
            }
            Err(BackendError::Denied(e)) => {
                // Once: calls made before the first denial came back log nothing more.
                if !self.attributes_denied.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "GetServiceAttributes is denied (the role lacks \
                         servicediscovery:GetServiceAttributes, see conf/iam-policy.json): service \
                         attributes are not read again until a reload; _grpc_config answers keep \
                         the last value read, or the zone's grpc_config"
                    );
                }
            }
            Err(e) => {
                if !matches!(e, BackendError::Throttled(_))
                    && !self.attributes_warned.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        service,
                        error = %e,
                        "cannot read service attributes; _grpc_config answers keep the last value \
                         read, or the zone's grpc_config"
                    );
                } else {
                    tracing::debug!(service, error = %e, "cannot read service attributes");
                }
            }
        }
        m.grpc_config.clone()
    }

    async fn namespace_id(&self, ns: &NamespaceRef, urgency: Urgency) -> Result<String, BackendError> {
        let filter = sd::types::NamespaceFilter::builder()
            .name(sd::types::NamespaceFilterName::HttpName)
            .values(&ns.http_name)
            .condition(sd::types::FilterCondition::Eq)
            .build()
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let mut token = None;
        loop {
            let page = self
                .call("ListNamespaces", urgency, || {
                    self.control
                        .list_namespaces()
                        .filters(filter.clone())
                        .set_next_token(token.clone())
                        .send()
                })
                .await?;
            for n in page.namespaces() {
                let http = n.properties().and_then(|p| p.http_properties()).and_then(|h| h.http_name());
                let owner_ok = ns.owner_account.as_deref().is_none_or(|a| n.resource_owner() == Some(a));
                if http == Some(ns.http_name.as_str()) && owner_ok {
                    // Shared namespaces are named by ARN; our own by id.
                    let id = if ns.owner_account.is_some() { n.arn() } else { n.id() };
                    return id
                        .map(str::to_string)
                        .ok_or_else(|| BackendError::Unavailable("namespace without id".into()));
                }
            }
            match page.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => {
                    return Err(BackendError::NotFound(format!(
                        "no namespace with HttpName {}",
                        ns.http_name
                    )));
                }
            }
        }
    }
}

/// An attributes interval as stored: milliseconds, at least 1; 0 for never.
fn millis(every: Option<Duration>) -> u64 {
    every.map_or(0, |d| (d.as_millis() as u64).max(1))
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: &sd::error::SdkError<E>,
) -> BackendError {
    let code = e.code().unwrap_or_default();
    let message = format!("{code}: {}", e.message().unwrap_or(&e.to_string()));
    let status = e.raw_response().map(|r| r.status().as_u16());
    match code {
        "ServiceNotFound" | "NamespaceNotFound" => BackendError::NotFound(message),
        "RequestLimitExceeded" | "ThrottlingException" | "TooManyRequestsException" | "Throttling" => {
            BackendError::Throttled(message)
        }
        _ if status == Some(429) => BackendError::Throttled(message),
        // moto answers a denial in XML, which the JSON protocol reads as no code at all.
        "AccessDeniedException" | "AccessDenied" => BackendError::Denied(message),
        "" if status == Some(403) => BackendError::Denied(format!("HTTP 403: {e:?}")),
        _ => BackendError::Unavailable(if code.is_empty() { format!("{e:?}") } else { message }),
    }
}

#[async_trait::async_trait]
impl Backend for Aws {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn default_zones(&self) -> Result<Vec<(String, String)>, BackendError> {
        Ok(Vec::new())
    }

    async fn services(&self, ns: &NamespaceRef, urgency: Urgency) -> Result<Vec<ServiceInfo>, BackendError> {
        let id = self.namespace_id(ns, urgency).await?;
        let filter = sd::types::ServiceFilter::builder()
            .name(sd::types::ServiceFilterName::NamespaceId)
            .values(&id)
            .condition(sd::types::FilterCondition::Eq)
            .build()
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let (mut out, mut ids) = (Vec::new(), HashMap::new());
        let mut token = None;
        loop {
            let page = self
                .call("ListServices", urgency, || {
                    self.control.list_services().filters(filter.clone()).set_next_token(token.clone()).send()
                })
                .await?;
            for s in page.services() {
                let Some(name) = s.name() else { continue };
                out.push(ServiceInfo { name: name.to_string() });
                // GetServiceAttributes names a shared namespace's services by ARN.
                let id = if ns.owner_account.is_some() { s.arn() } else { s.id() };
                if let Some(id) = id {
                    ids.insert(name.to_string(), id.to_string());
                }
            }
            match page.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        self.listed(ns, ids);
        Ok(out)
    }

    async fn discover(
        &self,
        ns: &NamespaceRef,
        service: &str,
        urgency: Urgency,
    ) -> Result<Discovered, BackendError> {
        // Side by side: a miss waits for the slower of the two, not for both.
        let (out, grpc_config) = tokio::join!(
            self.call("DiscoverInstances", urgency, || {
                self.data
                    .discover_instances()
                    .namespace_name(&ns.http_name)
                    .service_name(service)
                    .set_owner_account(ns.owner_account.clone())
                    .health_status(sd::types::HealthStatusFilter::All)
                    .max_results(1000)
                    .send()
            }),
            self.grpc_config(ns, service, urgency)
        );
        let out = out?;
        Ok(Discovered {
            grpc_config,
            revision: out.instances_revision().unwrap_or_default(),
            instances: out
                .instances()
                .iter()
                .map(|i| DiscoveredInstance {
                    id: i.instance_id().unwrap_or_default().into(),
                    health: Health::parse(i.health_status().map_or("UNKNOWN", |h| h.as_str())),
                    attributes: std::sync::Arc::new(
                        i.attributes().map(|a| a.iter().collect()).unwrap_or_default(),
                    ),
                })
                .collect(),
        })
    }

    async fn revision(
        &self,
        ns: &NamespaceRef,
        service: &str,
        urgency: Urgency,
    ) -> Result<i64, BackendError> {
        let out = self
            .call("DiscoverInstancesRevision", urgency, || {
                self.data
                    .discover_instances_revision()
                    .namespace_name(&ns.http_name)
                    .service_name(service)
                    .set_owner_account(ns.owner_account.clone())
                    .send()
            })
            .await?;
        Ok(out.instances_revision().unwrap_or_default())
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    fn budget_fill(&self) -> Option<f64> {
        Some(self.budget.fill())
    }

    fn set_budget(&self, calls_per_second: f64, attributes_refresh: Option<Duration>) {
        self.budget.set_rate(calls_per_second);
        self.attributes_refresh_ms.store(millis(attributes_refresh), Ordering::Relaxed);
        self.attributes_denied.store(false, Ordering::Relaxed);
    }

    fn reads_attributes(&self) -> bool {
        self.attributes_refresh_ms.load(Ordering::Relaxed) > 0
            && !self.attributes_denied.load(Ordering::Relaxed)
    }
}

/// One token bucket for every call to Cloud Map, with a shared back-off after throttling.
pub struct Budget {
    state: Mutex<BudgetState>,
    /// Background calls queue here, one at a time in line for spare capacity.
    background: tokio::sync::Mutex<()>,
}

struct BudgetState {
    /// Calls per second (set again on reload).
    rate: f64,
    /// The time the next call may start; calls are spaced 1/rate apart, with a one-second burst.
    next: Instant,
    /// Current back-off after throttling; doubles on each throttle, halves on each success.
    penalty: Duration,
}

const MAX_PENALTY: Duration = Duration::from_secs(30);

impl Budget {
    pub fn new(rate: f64) -> Budget {
        let now = Instant::now();
        let next = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        Budget {
            state: Mutex::new(BudgetState { rate: rate.max(0.001), next, penalty: Duration::ZERO }),
            background: tokio::sync::Mutex::new(()),
        }
    }

    pub fn set_rate(&self, rate: f64) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rate = rate.max(0.001);
    }

    /// Waits for this call's turn. A waiting call reserves the next free slot at once; a
    /// background call takes only a slot that is free now, after every reservation made before
    /// it, so however many refreshes are due a miss waits at most one slot behind them.
    pub async fn acquire(&self, urgency: Urgency) {
        if urgency == Urgency::Background {
            let _line = self.background.lock().await;
            loop {
                let free_at = {
                    let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    if s.next <= now {
                        Self::take(&mut s, now);
                        return;
                    }
                    s.next
                };
                tokio::time::sleep_until(free_at).await;
            }
        }
        let at = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            Self::take(&mut s, Instant::now())
        };
        tokio::time::sleep_until(at).await;
    }

    /// Reserves the next slot; when it starts.
    fn take(s: &mut BudgetState, now: Instant) -> Instant {
        // Unused capacity accumulates for at most one second (the burst).
        let earliest = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let at = s.next.max(earliest);
        s.next = at + Duration::from_secs_f64(1.0 / s.rate);
        at
    }

    /// The share of the one-second burst available now: 1 = calls go at once, 0 = they wait
    /// (the budget is spent, or backing off after throttling).
    pub fn fill(&self) -> f64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if s.next >= now { 0.0 } else { (now - s.next).as_secs_f64().min(1.0) }
    }

    pub fn throttled(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.penalty = (s.penalty * 2).clamp(Duration::from_millis(200), MAX_PENALTY);
        // Full jitter: fleets that were throttled together must not retry together.
        let wait = s.penalty.mul_f64(rand::rng().random_range(0.5..=1.0));
        s.next = s.next.max(Instant::now() + wait);
    }

    pub fn succeeded(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.penalty /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_spaces_calls_and_backs_off() {
        let b = Budget::new(10.0);
        let start = Instant::now();
        for _ in 0..30 {
            b.acquire(Urgency::Waiting).await;
        }
        // 10 of burst, then 20 more at 10/s.
        let spent = start.elapsed();
        assert!(spent >= Duration::from_millis(1900) && spent <= Duration::from_millis(2100), "{spent:?}");

        let before = Instant::now();
        b.throttled();
        b.throttled();
        b.acquire(Urgency::Waiting).await;
        assert!(before.elapsed() >= Duration::from_millis(200), "backed off: {:?}", before.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_calls_go_before_a_backlog_of_background_ones() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let b = Arc::new(Budget::new(10.0));
        let start = Instant::now();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            let (b, done) = (b.clone(), done.clone());
            tokio::spawn(async move {
                b.acquire(Urgency::Background).await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The burst and 3 s at 10/s are spent; some 60 background calls still wait.
        let before = Instant::now();
        b.acquire(Urgency::Waiting).await;
        assert!(before.elapsed() <= Duration::from_millis(100), "a miss waited {:?}", before.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Still within the budget: one second of burst plus the rate.
        let calls = done.load(Ordering::SeqCst) + 1;
        let allowed = 10 + (start.elapsed().as_secs_f64() * 10.0) as usize + 1;
        assert!(calls <= allowed && calls >= allowed - 3, "{calls} calls, {allowed} allowed");
    }
}
