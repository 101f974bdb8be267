//! The embedded Cloud Map-compatible registry.
//!
//! It owns namespaces, services, instances, operations and tags, stored durably in SQLite
//! (`store`), validated as AWS documents (`validate`), and spoken to over AWS's JSON 1.1 protocol
//! (`api`). The DNS side reads it in process through the same operations the API serves
//! (`discover_instances`, `discover_instances_revision`); nothing here knows about DNS.
//!
//! Every operation is a synchronous method that runs one SQLite transaction; async callers run them
//! on the blocking pool (`Registry::call`). Writes are serialised by the connection's mutex and
//! acknowledged only after commit.

pub mod api;
mod error;
mod ids;
mod instances;
mod namespaces;
mod operations;
mod paging;
mod services;
pub mod shapes;
mod store;
mod tags;
mod validate;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

pub use error::{RegistryError, Result};
pub use ids::Identity;
pub use instances::{DiscoverOutput, HealthFilter, ServiceContents};
pub use namespaces::NamespaceKind;
pub use store::StoreError;

/// Cloud Map's documented default quotas (all but the attribute count are adjustable in AWS, so
/// they are settings here).
#[derive(Debug, Clone)]
pub struct Quotas {
    pub namespaces: i64,
    pub instances_per_namespace: i64,
    pub instances_per_service: i64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas { namespaces: 50, instances_per_namespace: 2000, instances_per_service: 1000 }
    }
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub identity: Identity,
    /// How long an UpdateInstanceCustomHealthStatus waits before it takes effect. AWS waits about
    /// 30 s; the default here is zero so local work sees changes at once.
    pub custom_health_delay: Duration,
    pub quotas: Quotas,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            identity: Identity {
                partition: "aws".into(),
                region: "us-east-1".into(),
                account: "123456789012".into(),
            },
            custom_health_delay: Duration::ZERO,
            quotas: Quotas::default(),
        }
    }
}

/// Seconds since the epoch, as Cloud Map's timestamps are (millisecond precision).
pub type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (d.as_millis() as f64) / 1000.0
    })
}

/// A handle to the registry; cheap to clone and share.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<store::Store>,
    settings: RegistrySettings,
    clock: Clock,
    /// Wakes the task that applies delayed custom health changes when a new one is scheduled.
    health_changed: tokio::sync::Notify,
    /// Committed changes, for in-process readers (the DNS cache) that must see them at once.
    changes: tokio::sync::broadcast::Sender<Change>,
    /// Called with each change after its commit and before the write returns, so a reader that
    /// marks its copy outdated here never serves it after the writer was answered.
    observers: std::sync::RwLock<Vec<Observer>>,
    /// Turns on the blocking pool (`Registry::call`).
    calls: tokio::sync::Semaphore,
}

/// Registry calls on the blocking pool at once: one holds the store's lock, the others are ready
/// to take it in turn.
const CALL_THREADS: usize = 4;

pub type Observer = Box<dyn Fn(&Change) + Send + Sync>;

/// What a committed write changed, as in-process readers need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A namespace was created, updated or deleted.
    Namespaces,
    /// A service was created, updated or deleted: the HttpName of its namespace, and its name.
    Services { namespace: String, service: String },
    /// A service's instances, their health, or its attributes changed.
    Instances { namespace: String, service: String },
}

/// What an operation sees besides the database: the time of the request and the settings.
pub(crate) struct Ctx<'a> {
    pub now: f64,
    pub settings: &'a RegistrySettings,
    /// Changes made by the current transaction, announced once it commits.
    changes: std::cell::RefCell<Vec<Change>>,
}

impl Ctx<'_> {
    pub fn identity(&self) -> &Identity {
        &self.settings.identity
    }

    pub fn changed(&self, change: Change) {
        self.changes.borrow_mut().push(change);
    }
}

impl Registry {
    /// Opens the registry stored under `data_dir`, refusing a corrupt, foreign or locked one.
    pub fn open(data_dir: &Path, settings: RegistrySettings) -> Result<Registry, StoreError> {
        Self::open_with_clock(data_dir, settings, system_clock())
    }

    pub fn open_with_clock(
        data_dir: &Path,
        settings: RegistrySettings,
        clock: Clock,
    ) -> Result<Registry, StoreError> {
        let store = store::Store::open(data_dir)?;
        Ok(Registry {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                settings,
                clock,
                health_changed: tokio::sync::Notify::new(),
                changes: tokio::sync::broadcast::channel(4096).0,
                observers: std::sync::RwLock::new(Vec::new()),
                calls: tokio::sync::Semaphore::new(CALL_THREADS),
            }),
        })
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.inner.settings
    }

    /// Runs a registry operation on the blocking pool, so SQLite's fsync never stalls the runtime.
    /// At most `CALL_THREADS` at a time: they take one lock in turn, so a burst of calls beyond
    /// that would only add threads waiting for it (1,000 at once grew the pool to 512).
    pub async fn call<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Registry) -> Result<T> + Send + 'static,
    {
        let _turn = self
            .inner
            .calls
            .acquire()
            .await
            .map_err(|e| RegistryError::Internal(format!("registry closed: {e}")))?;
        let registry = self.clone();
        match tokio::task::spawn_blocking(move || op(&registry)).await {
            Ok(result) => result,
            Err(join) => Err(RegistryError::Internal(format!("registry task failed: {join}"))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, store::Store> {
        // A panic while holding the lock cannot leave a half-applied write (the transaction was not
        // committed), so a poisoned lock is safe to keep using.
        self.inner.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx { now: (self.inner.clock)(), settings: &self.inner.settings, changes: Default::default() }
    }

    /// Registers a synchronous observer of committed changes. It runs on the writer's thread
    /// before the write returns, with the store unlocked: it may read the registry, must not
    /// write to it, and must be quick.
    pub fn observe(&self, observer: Observer) {
        self.inner.observers.write().unwrap_or_else(|p| p.into_inner()).push(observer);
    }

    /// Committed changes, as they happen. A receiver that lags gets `RecvError::Lagged` and must
    /// re-read everything it holds.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Runs `f` in one immediate transaction, committed before returning: all or nothing.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Connection, &Ctx) -> Result<T>) -> Result<T> {
        let mut store = self.lock();
        let ctx = self.ctx();
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx, &ctx)?;
        tx.commit()?;
        drop(store);
        let mut changes = ctx.changes.into_inner();
        changes.dedup();
        let observers = self.inner.observers.read().unwrap_or_else(|p| p.into_inner());
        for change in changes {
            for observe in observers.iter() {
                observe(&change);
            }
            // No receiver is fine: nothing in process is reading.
            let _ = self.inner.changes.send(change);
        }
        Ok(out)
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection, &Ctx) -> Result<T>) -> Result<T> {
        let store = self.lock();
        let ctx = self.ctx();
        f(&store.conn, &ctx)
    }

    /// Applies delayed custom health changes that are due, and says when the next one is.
    pub fn apply_due_health(&self) -> Result<Option<f64>> {
        self.write(|tx, ctx| {
            let mut due = tx.prepare(
                "SELECT DISTINCT n.http_name, s.name FROM instances i
                 JOIN services s ON s.id = i.service_id JOIN namespaces n ON n.id = s.namespace_id
                 WHERE i.pending_health_at IS NOT NULL AND i.pending_health_at <= ?1",
            )?;
            let services = due
                .query_map([ctx.now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (namespace, service) in services {
                ctx.changed(Change::Instances { namespace, service });
            }
            tx.execute(
                "UPDATE instances SET health = pending_health, pending_health = NULL, pending_health_at = NULL
                 WHERE pending_health_at IS NOT NULL AND pending_health_at <= ?1",
                [ctx.now],
            )?;
            Ok(tx
                .query_row("SELECT min(pending_health_at) FROM instances", [], |r| r.get::<_, Option<f64>>(0))
                .optional()?
                .flatten())
        })
    }

    /// Keeps delayed custom health changes moving: persists each one when it falls due, so the
    /// stored state matches what DiscoverInstances already reports.
    pub async fn run_health_timer(self) {
        loop {
            let next = match self.call(|r| r.apply_due_health()).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "applying delayed health changes failed; retrying");
                    Some((self.inner.clock)() + 1.0)
                }
            };
            let notified = self.inner.health_changed.notified();
            match next {
                Some(at) => {
                    let wait = (at - (self.inner.clock)()).max(0.0) + 0.001;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// For unit tests: the HTTP namespace `ns` holding the service `s`; returns the service's id.
#[cfg(test)]
pub(crate) fn test_service(r: &Registry, custom_health: Option<shapes::HealthCheckCustomConfig>) -> String {
    use shapes::{CreateNamespaceRequest, CreateServiceRequest};
    r.create_namespace(
        NamespaceKind::Http,
        CreateNamespaceRequest { name: Some("ns".into()), ..Default::default() },
    )
    .unwrap();
    let ns =
        r.list_namespaces(Default::default()).unwrap()["Namespaces"][0]["Id"].as_str().unwrap().to_string();
    let created = r
        .create_service(CreateServiceRequest {
            name: Some("s".into()),
            namespace_id: Some(ns),
            health_check_custom_config: custom_health,
            ..Default::default()
        })
        .unwrap();
    created["Service"]["Id"].as_str().unwrap().to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_calls_runs_a_few_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), RegistrySettings::default()).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let (r, running, most) = (r.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    r.call(move |registry| {
                        most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                        running.fetch_sub(1, Ordering::SeqCst);
                        registry.namespace_names()
                    })
                    .await
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        // Unbounded, the blocking pool ran as many as were asked for, on a thread each.
        let most = most.load(Ordering::SeqCst);
        assert!(most <= CALL_THREADS, "{most} calls ran at once");
    }
}
