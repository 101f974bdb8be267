//! Start-up and shutdown. Phase one builds and binds everything (the backend, the registry and
//! its API, the DNS sockets), so a bad address or a bad data dir fails before anything serves;
//! phase two spawns the servers, reloads the config on SIGHUP (`reload`), and on SIGINT or
//! SIGTERM drains the listeners and writes the cache snapshot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::AtomicBool;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::acl::Acl;
use crate::admin::{self, Admin};
use crate::backend::aws::{Aws, AwsSettings};
use crate::backend::embedded::Embedded;
use crate::backend::{Backend, NamespaceRef};
use crate::cache::{Cache, CacheSettings, ZoneSource};
use crate::config::{BackendKind, Config};
use crate::dns::engine::{Engine, EngineSettings};
use crate::dns::ratelimit::RateLimiter;
use crate::dns::server::{self, Listeners, ServerSettings, SharedLimiter};
use crate::dns::wire;
use crate::forward::Forwarder;
use crate::registry::{self, Registry};
use crate::reload::{self, Live, LoadConfig, SetLogLevel};
use crate::zone::Zone;

/// How long SIGTERM waits for queries in flight (at most one upstream or backend round trip).
const DRAIN_GRACE: Duration = Duration::from_secs(5);

pub struct Options {
    pub demo: bool,
    /// Reads the config again for SIGHUP (the file with the command line laid over it); `None`
    /// leaves SIGHUP to its default action.
    pub reload: Option<LoadConfig>,
    /// Sets the log filter when a reload changes `log.level`.
    pub set_log_level: Option<SetLogLevel>,
}

/// The zones the config names, and the template for zones derived from namespace names.
pub(crate) fn zone_source(config: &Config) -> ZoneSource {
    let d = &config.dns;
    let template = |name: &str, namespace: NamespaceRef| Zone {
        name: name.trim_end_matches('.').to_ascii_lowercase(),
        wire: wire::encode_name(&name.to_ascii_lowercase()).unwrap_or_else(|| vec![0]),
        namespace,
        health: d.health,
        ttl: d.ttl,
        max_answers: d.max_answers,
        fallthrough: false,
        grpc_config: None,
    };
    let explicit = d
        .zones
        .iter()
        .map(|z| {
            let mut zone = template(
                &z.zone,
                NamespaceRef { http_name: z.namespace.clone(), owner_account: z.account.clone() },
            );
            zone.health = z.health.unwrap_or(d.health);
            zone.ttl = z.ttl.unwrap_or(d.ttl);
            zone.max_answers = z.max_answers.unwrap_or(d.max_answers);
            zone.grpc_config = z.grpc_config.clone();
            zone.fallthrough = z.fallthrough;
            zone
        })
        .collect::<Vec<_>>();
    let automatic = (config.backend.kind == BackendKind::Embedded && explicit.is_empty())
        .then(|| template("auto", NamespaceRef { http_name: String::new(), owner_account: None }));
    ZoneSource { explicit, automatic }
}

pub(crate) fn cache_settings(config: &Config) -> CacheSettings {
    let b = &config.backend;
    CacheSettings {
        refresh: Duration::from_millis(b.refresh_ms),
        health_refresh: Duration::from_millis(b.health_refresh_ms),
        idle_timeout: Duration::from_millis(b.idle_timeout_ms),
        max_stale: Duration::from_secs(b.max_stale_s),
        catalog_refresh: Duration::from_millis(b.catalog_refresh_ms),
        service_attributes: b.service_attributes,
        rate_limit: b.rate_limit,
        snapshot: (b.kind == BackendKind::Aws).then(|| config.data_dir.join("dns-cache.json")),
    }
}

pub(crate) fn engine_settings(config: &Config) -> EngineSettings {
    EngineSettings {
        server_name: wire::encode_name(&config.dns.server_name).unwrap_or_else(|| vec![0]),
        max_cached_answers: config.dns.max_cached_answers,
        allow_query: Acl::new(&config.dns.allow_query),
        allow_recursion: Acl::new(&config.forward.allow_recursion),
        query_log: config.log.queries,
    }
}

/// The upstreams, and the zones whose unknown names go to them (lower-case wire form).
pub(crate) fn forward_targets(config: &Config) -> (Vec<SocketAddr>, Vec<Vec<u8>>) {
    let upstreams = config.forward.upstreams.iter().map(|u| u.0).collect();
    let fallthrough =
        zone_source(config).explicit.iter().filter(|z| z.fallthrough).map(|z| z.wire.clone()).collect();
    (upstreams, fallthrough)
}

pub async fn run(config: Config, options: Options) -> anyhow::Result<()> {
    // Phase one: build and bind.
    let mut hangups = match options.reload {
        Some(_) => reload::Hangups::catch(),
        None => reload::Hangups::default(),
    };
    let mut registry_api = None;
    let backend: Arc<dyn Backend> = match config.backend.kind {
        BackendKind::Embedded => {
            let registry = Registry::open(&config.data_dir, config.registry_settings())
                .context("cannot open the embedded registry")?;
            if options.demo {
                registry.call(crate::demo::seed).await.context("cannot seed the demo namespace")?;
            }
            let api = TcpListener::bind(config.registry.api_listen).await.with_context(|| {
                format!("cannot listen for the Cloud Map API on {}", config.registry.api_listen)
            })?;
            let addr = api.local_addr()?;
            tracing::info!(addr = %addr, data_dir = %config.data_dir.display(), "listening for Cloud Map API on {addr}");
            registry_api = Some((registry.clone(), api, addr));
            Arc::new(Embedded::new(registry))
        }
        BackendKind::Aws => {
            let b = &config.backend;
            Arc::new(
                Aws::new(&AwsSettings {
                    region: config.region.clone(),
                    endpoint_url: b.endpoint_url.clone(),
                    data_endpoint_url: b.data_endpoint_url.clone(),
                    rate_limit: b.rate_limit,
                    call_timeout: Duration::from_millis(b.call_timeout_ms),
                    attributes_refresh: b
                        .service_attributes
                        .then(|| Duration::from_millis(b.catalog_refresh_ms)),
                })
                .await,
            )
        }
    };
    let cache = Cache::new(backend, cache_settings(&config), zone_source(&config));
    let forwarder = (!config.forward.upstreams.is_empty()).then(|| {
        let (upstreams, fallthrough) = forward_targets(&config);
        Arc::new(Forwarder::new(&upstreams, &fallthrough, config.forward_settings()))
    });
    let engine = Arc::new(Engine::new(cache.clone(), forwarder.clone(), engine_settings(&config)));
    let listeners = Listeners::bind(&config.dns.listen, config.dns.udp_workers, config.dns.udp_steering)
        .await
        .with_context(|| format!("cannot listen for DNS on {:?}", config.dns.listen))?;
    let dns_addrs = listeners.addrs();
    let admin_listener = TcpListener::bind(config.metrics.listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {}", config.metrics.listen))?;
    let admin_addr = admin_listener.local_addr()?;
    tracing::info!(addr = %admin_addr, "listening for metrics on {admin_addr}");
    // /healthz answers from now on; /readyz once the DNS listeners serve and the cache is filled
    // (the embedded registry's served namespaces read, or the aws snapshot loaded).
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        Admin { engine: engine.clone(), ready: ready.clone() },
        stopped(),
    ));
    if config.backend.kind == BackendKind::Aws && config.dns.zones.is_empty() {
        tracing::warn!("the aws backend serves configured zones only, and none is configured (--zone)");
    }

    // Phase two: spawn and serve.
    cache.start().await;
    let limiter: SharedLimiter =
        Arc::new(ArcSwapOption::new(RateLimiter::new(config.rate_limit_settings()).map(Arc::new)));
    let serving = server::spawn(
        listeners,
        engine.clone(),
        ServerSettings {
            tcp_idle_timeout: Duration::from_millis(config.dns.tcp_idle_timeout_ms),
            tcp_max_connections: config.dns.tcp_max_connections,
            udp_scheduling: config.dns.udp_scheduling,
        },
        limiter.clone(),
    );
    if let Some(f) = forwarder {
        for u in &config.forward.upstreams {
            tracing::info!(upstream = %u, "forwarding other names to {u}");
        }
        tokio::spawn(f.maintain());
    }
    // Listeners bound and serving, the cache filled by `cache.start`: ready.
    ready.store(true, std::sync::atomic::Ordering::Release);
    print_banner(&config, &dns_addrs, registry_api.as_ref().map(|(_, _, a)| *a), admin_addr, options.demo);
    let api = registry_api.map(|(registry, api, _)| {
        tokio::spawn(registry.clone().run_health_timer());
        tokio::spawn(registry::api::serve(api, registry, stopped()))
    });
    let mut live = Live::new(config, engine, limiter, options.set_log_level);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangups.next() => {
                if let Some(load) = &options.reload {
                    live.reload(load()).await;
                }
            }
        }
    }
    // Drain: stop reading and accepting, answer what is in flight, then stop the rest.
    let unanswered = serving.drain(DRAIN_GRACE).await;
    if unanswered > 0 {
        tracing::warn!(unanswered, "stopping with queries still in flight after {DRAIN_GRACE:?}");
    }
    let _ = stop_tx.send(true);
    if let Some(api) = api {
        match api.await {
            Ok(Err(e)) => tracing::error!(error = %e, "Cloud Map API server failed"),
            Err(e) => tracing::error!(error = %e, "Cloud Map API server panicked"),
            Ok(Ok(())) => {}
        }
    }
    let _ = admin.await;
    cache.flush().await;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(
    config: &Config,
    dns: &[SocketAddr],
    api: Option<SocketAddr>,
    metrics: SocketAddr,
    demo: bool,
) {
    println!(
        "cloudmap-dns {} is running ({} backend)",
        env!("CARGO_PKG_VERSION"),
        match config.backend.kind {
            BackendKind::Embedded => "embedded",
            BackendKind::Aws => "aws",
        }
    );
    for addr in dns {
        println!("  DNS (UDP and TCP): {addr}");
    }
    if let Some(api) = api {
        println!("  Cloud Map API (embedded registry): http://{api}   data: {}", config.data_dir.display());
    }
    println!("  metrics: http://{metrics}/metrics   health: /healthz /readyz");
    for u in &config.forward.upstreams {
        println!("  forwarding other names to: {u}");
    }
    println!("  try it:");
    if let Some(addr) = dns.first() {
        let name = if demo {
            format!("{}.{}", crate::demo::SERVICE, crate::demo::NAMESPACE)
        } else {
            "SERVICE.NAMESPACE".into()
        };
        println!("    dig @{} -p {} {name} SRV", addr.ip(), addr.port());
    }
    if let Some(api) = api {
        println!(
            "    AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DISABLE_HOST_PREFIX_INJECTION=true \\\n      aws --region {} --endpoint-url http://{api} servicediscovery list-namespaces",
            config.region.as_deref().unwrap_or("us-east-1")
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
