//! cloudmap-dns: AWS Cloud Map service discovery answered by plain DNS.
//!
//! A map of the crate, in the order data flows:
//!
//! - [`cli`] and [`config`]: flags and the TOML file, merged and validated once at start.
//! - [`app`]: start-up in two phases (open and bind, then serve) and shutdown on SIGINT/SIGTERM;
//!   [`reload`]: SIGHUP applies a changed config while serving.
//! - [`registry`]: the embedded Cloud Map-compatible registry: its JSON 1.1 API (`registry::api`),
//!   its durable SQLite store, validation as AWS documents it, and the in-process discovery calls
//!   the DNS side reads from.
//! - [`backend`] and [`cache`]: where instances come from (AWS Cloud Map or the embedded registry)
//!   and the cache that keeps them fresh and serves the last known good data.
//! - [`zone`]: namespace zones, how a name below one is read, and the answers built for it.
//! - [`dns`]: the wire format, the listeners, and the engine that routes each query to a
//!   namespace zone or to [`forward`], the caching forwarder for every other name.
//! - [`acl`]: who may query the zones and who may use the forwarder.
//! - [`metrics`] and [`admin`]: every Prometheus metric, and `/metrics`, `/healthz`, `/readyz`.
//! - [`demo`]: the `--demo` seed data.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod acl;
pub mod admin;
pub mod app;
pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dns;
pub mod forward;
pub mod metrics;
pub mod registry;
pub mod reload;
pub mod zone;
