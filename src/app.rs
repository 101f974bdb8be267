//! Start-up and shutdown: open the registry, bind every listener (so a bad address fails before
//! anything runs), then serve until SIGINT or SIGTERM, then drain.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::registry::{self, Registry};

pub struct Options {
    pub demo: bool,
}

pub async fn run(config: Config, options: Options) -> anyhow::Result<()> {
    // Phase one: build and bind. Any failure here exits non-zero before serving anything.
    let registry = Registry::open(&config.data_dir, config.registry_settings())
        .context("cannot open the embedded registry")?;
    if options.demo {
        registry.call(crate::demo::seed).await.context("cannot seed the demo namespace")?;
    }
    let api = TcpListener::bind(config.registry.api_listen)
        .await
        .with_context(|| format!("cannot listen for the Cloud Map API on {}", config.registry.api_listen))?;
    let api_addr = api.local_addr()?;
    tracing::info!(addr = %api_addr, data_dir = %config.data_dir.display(), "listening for Cloud Map API on {api_addr}");
    print_banner(&config, api_addr);

    // Phase two: spawn and serve.
    let shutdown = shutdown_signal();
    tokio::spawn(registry.clone().run_health_timer());
    registry::api::serve(api, registry, shutdown).await.context("Cloud Map API server failed")?;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(config: &Config, api: SocketAddr) {
    println!("cloudmap-dns {} is running", env!("CARGO_PKG_VERSION"));
    println!("  Cloud Map API (embedded registry): http://{api}   data: {}", config.data_dir.display());
    println!("  try it:");
    println!(
        "    AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DISABLE_HOST_PREFIX_INJECTION=true \\\n      aws --region {} --endpoint-url http://{api} servicediscovery list-namespaces",
        config.region
    );
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
