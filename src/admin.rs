//! The operations endpoint on `--metrics-listen`: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive and serving HTTP) and `/readyz` (the DNS listeners are bound and the cache's
//! snapshot, if any, is loaded: a Cloud Map outage at boot never holds readiness back, since
//! forwarding and the snapshot answer without it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::dns::engine::Engine;
use crate::metrics::{self, CacheKind};

#[derive(Clone)]
pub struct Admin {
    pub engine: Arc<Engine>,
    pub ready: Arc<AtomicBool>,
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(admin)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(admin)).with_graceful_shutdown(shutdown).await
}

async fn ready(State(admin): State<Admin>) -> Response {
    if admin.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn scrape(State(admin): State<Admin>) -> Response {
    let m = metrics::get();
    let engine = &admin.engine;
    m.set_entries(CacheKind::Namespace, engine.cached_answers());
    m.set_evictions(CacheKind::Namespace, engine.evicted_answers());
    if let Some(f) = engine.forwarder() {
        m.set_entries(CacheKind::Forward, f.cache().len());
        m.set_evictions(CacheKind::Forward, f.cache().evictions.load(Ordering::Relaxed));
    }
    let cache = engine.cache();
    m.refresh_interval.set(if cache.pushed() { 0.0 } else { cache.effective_refresh().as_secs_f64() });
    m.active_services.set(cache.active_services() as i64);
    m.backend_budget_fill.set(cache.budget_fill().unwrap_or(1.0));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()).into_response()
}
