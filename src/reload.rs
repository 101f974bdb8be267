//! SIGHUP: read the config again and apply it while serving. Zones, TTLs, health modes, answer
//! limits, upstreams and forwarder settings, ACLs, the rate limit, the backend's refresh timing
//! and call budget, the query log and the log level change in place; every cache stays, and
//! queries in flight finish with the settings they started with. What is bound or opened at
//! start (listeners, the backend, the registry, the data dir) needs a restart: a change to it
//! is logged and otherwise ignored. An invalid config is rejected whole, with the problems
//! logged, and the one in force is kept.

use std::sync::Arc;

use crate::app;
use crate::config::{Config, ConfigError};
use crate::dns::engine::Engine;
use crate::dns::ratelimit::RateLimiter;
use crate::dns::server::SharedLimiter;
use crate::forward::Forwarder;

/// SIGHUP, caught from start-up on: one that comes before the serving loop waits, or between
/// two waits, is kept rather than killing the process or being lost. The default catches none.
#[derive(Default)]
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts catching SIGHUP (call within the runtime, before anything serves).
    pub fn catch() -> Hangups {
        #[cfg(unix)]
        let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload is off");
                None
            }
        };
        Hangups {
            #[cfg(unix)]
            signal,
        }
    }

    /// Waits for the next SIGHUP (never, where there is none).
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Reads the config again: the file with the command line laid over it.
pub type LoadConfig = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;
/// Sets the log level filter.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What a reload can change, and the config it was last set from.
pub struct Live {
    /// As started: keys that need a restart are compared against this.
    started: Config,
    /// As last applied.
    config: Config,
    engine: Arc<Engine>,
    limiter: SharedLimiter,
    set_log_level: Option<SetLogLevel>,
}

/// The keys whose change needs a restart that differ between `a` and `b`.
fn restart_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    let checks = [
        ("data_dir", a.data_dir != b.data_dir),
        ("region", a.region != b.region),
        ("dns.listen", a.dns.listen != b.dns.listen),
        ("dns.tcp_idle_timeout_ms", a.dns.tcp_idle_timeout_ms != b.dns.tcp_idle_timeout_ms),
        ("dns.tcp_max_connections", a.dns.tcp_max_connections != b.dns.tcp_max_connections),
        ("dns.udp_workers", a.dns.udp_workers != b.dns.udp_workers),
        ("dns.udp_scheduling", a.dns.udp_scheduling != b.dns.udp_scheduling),
        ("dns.udp_steering", a.dns.udp_steering != b.dns.udp_steering),
        ("backend.kind", a.backend.kind != b.backend.kind),
        ("backend.call_timeout_ms", a.backend.call_timeout_ms != b.backend.call_timeout_ms),
        ("backend.endpoint_url", a.backend.endpoint_url != b.backend.endpoint_url),
        ("backend.data_endpoint_url", a.backend.data_endpoint_url != b.backend.data_endpoint_url),
        ("registry", a.registry != b.registry),
        ("metrics.listen", a.metrics.listen != b.metrics.listen),
        ("log.format", a.log.format != b.log.format),
    ];
    checks.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
}

impl Live {
    pub fn new(
        config: Config,
        engine: Arc<Engine>,
        limiter: SharedLimiter,
        set_log_level: Option<SetLogLevel>,
    ) -> Live {
        Live { started: config.clone(), config, engine, limiter, set_log_level }
    }

    /// Applies a config just read, or logs why it is rejected and keeps the one in force.
    pub async fn reload(&mut self, loaded: Result<Config, ConfigError>) {
        let m = crate::metrics::get();
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                m.reloads_rejected.inc();
                tracing::error!(error = %e, "config reload rejected; the config in force is kept");
                return;
            }
        };
        for key in restart_keys(&self.started, &new) {
            tracing::warn!(key, "config reload: {key} changed; it takes effect after a restart");
        }
        let old = std::mem::replace(&mut self.config, new);
        let new = &self.config;
        let cache = self.engine.cache().clone();
        let zones_changed = cache.reconfigure(app::cache_settings(new), app::zone_source(new)).await;

        let (upstreams, fallthrough) = app::forward_targets(new);
        let forwarder = match (self.engine.forwarder(), upstreams.is_empty()) {
            (Some(f), false) => {
                for gone in f.reconfigure(&upstreams, &fallthrough, new.forward_settings()) {
                    crate::metrics::get().upstream_forgotten(&gone.to_string());
                }
                Some(f)
            }
            (Some(f), true) => {
                f.retire();
                for u in f.upstreams().list() {
                    crate::metrics::get().upstream_forgotten(&u.addr.to_string());
                }
                None
            }
            (None, false) => {
                let f = Arc::new(Forwarder::new(&upstreams, &fallthrough, new.forward_settings()));
                tokio::spawn(f.clone().maintain());
                Some(f)
            }
            (None, true) => None,
        };
        let forwarding_toggled = forwarder.is_some() != self.engine.forwarder().is_some();
        self.engine.reconfigure(app::engine_settings(new), forwarder);
        // Cached zone answers carry the zone settings, the server name and whether recursion is
        // available: move the generation once the engine has them all (answers built between
        // the two steps are dropped too).
        if zones_changed || forwarding_toggled || old.dns.server_name != new.dns.server_name {
            cache.zones_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }

        let rate_limit = new.rate_limit_settings();
        let current = self.limiter.load_full();
        if current.as_ref().map(|l| l.settings()) != Some(&rate_limit) {
            let replacement = RateLimiter::new(rate_limit).map(Arc::new);
            if current.is_some() || replacement.is_some() {
                self.limiter.store(replacement);
            }
        }

        if old.log.level != new.log.level
            && let Some(set) = &self.set_log_level
            && let Err(e) = set(&new.log.level)
        {
            tracing::warn!(error = %e, "config reload: log.level not changed");
        }
        m.reloads_applied.inc();
        tracing::info!(
            zones_changed,
            upstreams = upstreams.len(),
            "config reloaded{}",
            if zones_changed { "; zone answers are rebuilt from cached data" } else { "" }
        );
    }
}
