//! Typed configuration: the TOML file (`--config`), overridden by command-line flags, validated
//! once at load. Validation reports every problem at once, each with the key that holds it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::registry::{Identity, Quotas, RegistrySettings};
use crate::zone::HealthMode;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded registry keeps its database, and the DNS cache its snapshot.
    pub data_dir: PathBuf,
    /// AWS region: the aws backend calls it (default: the standard AWS chain); the embedded
    /// registry's ARNs name it (default: us-east-1).
    pub region: Option<String>,
    pub dns: DnsConfig,
    pub backend: BackendConfig,
    pub registry: RegistryConfig,
    pub forward: ForwardConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: SocketAddr::from(([127, 0, 0, 1], 9153)) }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./cloudmap-data"),
            region: None,
            dns: DnsConfig::default(),
            backend: BackendConfig::default(),
            registry: RegistryConfig::default(),
            forward: ForwardConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// UDP and TCP listeners.
    pub listen: Vec<SocketAddr>,
    /// TTL of namespace-zone answers; the SOA's TTL and MINIMUM too, so negative answers last as long.
    pub ttl: u32,
    /// A/AAAA answers hold at most this many records, a random subset per response; 0 = all.
    pub max_answers: usize,
    /// Which instances answer: HEALTHY_OR_ELSE_ALL, HEALTHY or ALL (zones may override).
    pub health: HealthMode,
    /// The name in every zone's SOA (MNAME) and NS records.
    pub server_name: String,
    pub tcp_idle_timeout_ms: u64,
    pub tcp_max_connections: usize,
    /// UDP sockets per listener (SO_REUSEPORT), each read by its own loop; 0 = one per CPU, and
    /// at most that many.
    pub udp_workers: usize,
    /// How the UDP threads are scheduled (Linux).
    pub udp_scheduling: UdpScheduling,
    /// Which of a listener's UDP sockets a query goes to (Linux, with several workers).
    pub udp_steering: UdpSteering,
    /// Bound on the pre-encoded answer cache (entries).
    pub max_cached_answers: usize,
    /// Clients allowed to query the namespace zones (networks); others get REFUSED.
    pub allow_query: Vec<IpNet>,
    pub rate_limit: RateLimitConfig,
    /// Namespace zones. With the embedded backend and none configured, every namespace whose name
    /// is a DNS name is a zone of that name.
    pub zones: Vec<ZoneConfig>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5353))],
            ttl: 5,
            max_answers: 8,
            health: HealthMode::HealthyOrElseAll,
            server_name: "localhost.".into(),
            tcp_idle_timeout_ms: 10_000,
            tcp_max_connections: 1024,
            udp_workers: 0,
            udp_scheduling: UdpScheduling::Normal,
            udp_steering: UdpSteering::Cpu,
            max_cached_answers: 100_000,
            allow_query: crate::acl::loopback(),
            rate_limit: RateLimitConfig::default(),
            zones: Vec::new(),
        }
    }
}

/// Per-client response rate limiting (UDP), off by default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Responses per second per client network; 0 = off.
    pub responses_per_second: u32,
    /// Every this many responses over the limit, one is sent truncated instead of dropped; 0 = none.
    pub slip: u32,
    pub ipv4_prefix_len: u8,
    pub ipv6_prefix_len: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { responses_per_second: 0, slip: 2, ipv4_prefix_len: 24, ipv6_prefix_len: 56 }
    }
}

/// An upstream resolver: `ADDR` or `ADDR:PORT` (IPv6 as `[ADDR]:PORT`), port 53 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamAddr(pub SocketAddr);

impl std::str::FromStr for UpstreamAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(UpstreamAddr(addr));
        }
        match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(UpstreamAddr(SocketAddr::new(ip, 53))),
            Err(_) => Err(format!("'{s}' is not ADDR or ADDR:PORT (IPv6 as [ADDR]:PORT)")),
        }
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for UpstreamAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UpstreamAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Where names outside the namespace zones go, in failover order. None: they get REFUSED.
    pub upstreams: Vec<UpstreamAddr>,
    /// Clients allowed to use the forwarder (networks); others get REFUSED.
    pub allow_recursion: Vec<IpNet>,
    /// How long one try waits for an upstream's reply.
    pub timeout_ms: u64,
    /// Tries per query, each to the next upstream in order.
    pub attempts: usize,
    /// Consecutive failures after which an upstream is skipped...
    pub down_after_failures: u32,
    /// ...for this long at first, doubling while it keeps failing, up to the max.
    pub down_for_ms: u64,
    pub down_for_max_ms: u64,
    /// How long an upstream UDP socket (its random source port) is reused after it was opened;
    /// 0: a new socket per query.
    pub udp_socket_lifetime_ms: u64,
    /// How often the forwarder checks that its queries do not come back to it.
    pub loop_check_interval_s: u64,
    pub cache: ForwardCacheConfig,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            upstreams: Vec::new(),
            allow_recursion: crate::acl::loopback(),
            timeout_ms: 1000,
            attempts: 3,
            down_after_failures: 3,
            down_for_ms: 1000,
            down_for_max_ms: 30_000,
            udp_socket_lifetime_ms: 10_000,
            loop_check_interval_s: 60,
            cache: ForwardCacheConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardCacheConfig {
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Clamps on the TTLs of what upstreams send.
    pub min_ttl_s: u32,
    pub max_ttl_s: u32,
    /// Clamp on how long a negative answer is cached (RFC 2308: min(SOA TTL, SOA MINIMUM)).
    pub max_negative_ttl_s: u32,
    /// How long a SERVFAIL (every upstream failed) is cached; 0 = not at all.
    pub servfail_ttl_s: u32,
    /// Refresh popular entries in the background before they expire.
    pub prefetch: bool,
    /// How long past expiry an entry may be served when every upstream fails (RFC 8767); 0 = never.
    pub serve_stale_s: u64,
    /// TTL of stale records, and how long after a failed refresh they are served before
    /// upstreams are tried again (RFC 8767: 30).
    pub stale_ttl_s: u32,
    /// With stale data at hand, how long a client waits for upstreams before getting it
    /// (RFC 8767: 1800).
    pub stale_answer_timeout_ms: u64,
}

impl Default for ForwardCacheConfig {
    fn default() -> Self {
        ForwardCacheConfig {
            max_entries: 100_000,
            max_bytes: 64 << 20,
            min_ttl_s: 0,
            max_ttl_s: 86_400,
            max_negative_ttl_s: 3600,
            servfail_ttl_s: 5,
            prefetch: true,
            serve_stale_s: 86_400,
            stale_ttl_s: 30,
            stale_answer_timeout_ms: 1800,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The DNS zone, e.g. `svc.example`.
    pub zone: String,
    /// The namespace's HttpName.
    pub namespace: String,
    /// The namespace's owner, for namespaces shared from another account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_answers: Option<usize>,
    /// gRPC service config for services whose `grpc_config` attribute is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_config: Option<String>,
    /// Forward names the namespace does not know to the upstreams, instead of NXDOMAIN.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallthrough: bool,
}

impl ZoneConfig {
    /// Parses the `--zone ZONE=NAMESPACE[@ACCOUNT]` form.
    pub fn parse_flag(s: &str) -> Result<ZoneConfig, String> {
        let (zone, rest) =
            s.split_once('=').ok_or_else(|| format!("'{s}' is not ZONE=NAMESPACE[@ACCOUNT]"))?;
        let (namespace, account) = match rest.rsplit_once('@') {
            Some((n, a)) => (n, Some(a.to_string())),
            None => (rest, None),
        };
        Ok(ZoneConfig { zone: zone.into(), namespace: namespace.into(), account, ..ZoneConfig::default() })
    }
}

/// The scheduling policy of the UDP threads (Linux; elsewhere UDP is served by tasks).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UdpScheduling {
    /// SCHED_OTHER: a thread woken by a datagram may preempt whatever runs on its CPU.
    Normal,
    /// SCHED_BATCH: the same share of the CPU, but a woken thread waits for the running task to
    /// block or use up its slice instead of preempting it. Where clients share the server's
    /// cores, each wake-up then takes a larger batch (more answers per CPU-second), and a query
    /// can wait up to a slice (milliseconds) more.
    Batch,
}

/// How the kernel picks which of a listener's UDP sockets (workers) a datagram goes to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UdpSteering {
    /// The socket of the CPU that received the datagram (its NIC queue's, or on loopback the
    /// sender's): a classic BPF program on the SO_REUSEPORT group (`server::steer_by_cpu`). Clients
    /// that share one CPU are answered by one worker rather than split over several, which on a
    /// host whose cores are busy would then take turns with the clients.
    Cpu,
    /// The kernel's default: a hash of the client's address and port.
    Hash,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Embedded,
    Aws,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// How often an active service is re-validated (aws backend).
    pub refresh_ms: u64,
    /// How often an active service is refetched whatever its revision: the bound on how late a
    /// health change shows (Cloud Map does not move the revision on health changes).
    pub health_refresh_ms: u64,
    /// A service nobody asked for this long stops being refreshed.
    pub idle_timeout_ms: u64,
    /// How long the last known good data is served while Cloud Map fails.
    pub max_stale_s: u64,
    /// How often each zone's list of service names is re-read.
    pub catalog_refresh_ms: u64,
    /// This node's share of the account's Cloud Map quota, in calls per second, all calls together.
    pub rate_limit: f64,
    /// aws: read each active service's attributes (GetServiceAttributes, once per catalog
    /// interval) for `_grpc_config` answers. Off saves those calls where no service has one.
    pub service_attributes: bool,
    pub call_timeout_ms: u64,
    /// Endpoint for every Cloud Map call (moto, another cloudmap-dns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Endpoint for DiscoverInstances and DiscoverInstancesRevision only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_endpoint_url: Option<String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: BackendKind::Embedded,
            refresh_ms: 1000,
            health_refresh_ms: 5000,
            idle_timeout_ms: 300_000,
            max_stale_s: 86_400,
            catalog_refresh_ms: 30_000,
            rate_limit: 100.0,
            service_attributes: true,
            call_timeout_ms: 2000,
            endpoint_url: None,
            data_endpoint_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// The embedded registry's Cloud Map API. Loopback only: anyone who can register an instance
    /// can redirect traffic, and the API takes no credentials yet.
    pub api_listen: SocketAddr,
    /// The 12-digit account id the registry answers as (ARNs, ResourceOwner).
    pub account_id: String,
    /// Delay before UpdateInstanceCustomHealthStatus takes effect; AWS waits about 30 000 ms.
    pub custom_health_delay_ms: u64,
    pub quotas: QuotaConfig,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            account_id: "123456789012".into(),
            custom_health_delay_ms: 0,
            quotas: QuotaConfig::default(),
        }
    }
}

/// AWS Cloud Map's default quotas, adjustable as they are in AWS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    pub namespaces: u32,
    pub instances_per_namespace: u32,
    pub instances_per_service: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        let q = Quotas::default();
        QuotaConfig {
            namespaces: q.namespaces as u32,
            instances_per_namespace: q.instances_per_namespace as u32,
            instances_per_service: q.instances_per_service as u32,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, or per target (`cloudmap_dns=debug,info`).
    pub level: String,
    /// Log every query (client, name, type, rcode, source, latency) at info, for troubleshooting.
    pub queries: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into(), queries: false }
    }
}

/// One problem in a configuration, with the key that holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Reads a TOML config file. Unknown keys are errors: a typo must not silently do nothing.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Every problem in the configuration, or none.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(Problem { key: key.to_string(), message });
        };
        if self.data_dir.as_os_str().is_empty() {
            bad("data_dir", "must not be empty".into());
        }
        if let Some(region) = &self.region {
            let ok = !region.is_empty()
                && region.len() <= 32
                && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                bad("region", format!("'{region}' is not an AWS region name such as us-east-1"));
            }
        }
        if self.dns.listen.is_empty() {
            bad("dns.listen", "needs at least one address".into());
        }
        if self.dns.ttl > 86_400 {
            bad("dns.ttl", "must be at most 86400".into());
        }
        if crate::dns::wire::encode_name(&self.dns.server_name).is_none() || self.dns.server_name.is_empty() {
            bad("dns.server_name", format!("'{}' is not a domain name", self.dns.server_name));
        }
        if self.dns.udp_workers > 256 {
            bad("dns.udp_workers", format!("{} is more than 256", self.dns.udp_workers));
        }
        if self.dns.tcp_max_connections == 0 {
            bad("dns.tcp_max_connections", "must be at least 1".into());
        }
        if self.dns.tcp_idle_timeout_ms == 0 {
            bad("dns.tcp_idle_timeout_ms", "must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, z) in self.dns.zones.iter().enumerate() {
            let key = |field: &str| format!("dns.zones[{i}].{field}");
            if !crate::zone::is_dns_name(&z.zone) {
                bad(&key("zone"), format!("'{}' is not a DNS name", z.zone));
            } else if !seen.insert(z.zone.trim_end_matches('.').to_ascii_lowercase()) {
                bad(&key("zone"), format!("zone '{}' is configured twice", z.zone));
            }
            if z.namespace.is_empty() {
                bad(&key("namespace"), "must name a namespace (its HttpName)".into());
            }
            if let Some(a) = &z.account
                && (a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()))
            {
                bad(&key("account"), format!("'{a}' is not a 12-digit AWS account id"));
            }
            if z.ttl.is_some_and(|t| t > 86_400) {
                bad(&key("ttl"), "must be at most 86400".into());
            }
        }
        let b = &self.backend;
        for (key, value) in [
            ("backend.refresh_ms", b.refresh_ms),
            ("backend.health_refresh_ms", b.health_refresh_ms),
            ("backend.idle_timeout_ms", b.idle_timeout_ms),
            ("backend.catalog_refresh_ms", b.catalog_refresh_ms),
            ("backend.call_timeout_ms", b.call_timeout_ms),
        ] {
            if value == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if b.health_refresh_ms < b.refresh_ms {
            bad(
                "backend.health_refresh_ms",
                format!("must be at least backend.refresh_ms ({})", b.refresh_ms),
            );
        }
        if !(b.rate_limit.is_finite() && b.rate_limit > 0.0) {
            bad("backend.rate_limit", "must be a positive number of calls per second".into());
        }
        for (key, url) in
            [("backend.endpoint_url", &b.endpoint_url), ("backend.data_endpoint_url", &b.data_endpoint_url)]
        {
            if let Some(u) = url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                bad(key, format!("'{u}' is not an http:// or https:// URL"));
            }
        }
        if !self.registry.api_listen.ip().is_loopback() {
            bad(
                "registry.api_listen",
                format!(
                    "{} is not a loopback address: the registry API takes no credentials, and anyone who can register an instance can redirect traffic",
                    self.registry.api_listen
                ),
            );
        }
        let account = &self.registry.account_id;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            bad("registry.account_id", format!("'{account}' is not a 12-digit AWS account id"));
        }
        if self.registry.custom_health_delay_ms > 3_600_000 {
            bad("registry.custom_health_delay_ms", "must be at most 3600000 (one hour)".into());
        }
        let q = &self.registry.quotas;
        for (key, value) in [
            ("registry.quotas.namespaces", q.namespaces),
            ("registry.quotas.instances_per_namespace", q.instances_per_namespace),
            ("registry.quotas.instances_per_service", q.instances_per_service),
        ] {
            if value == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        let f = &self.forward;
        for (i, u) in f.upstreams.iter().enumerate() {
            if self.dns.listen.iter().any(|l| {
                l == &u.0 || (l.port() == u.0.port() && l.ip().is_unspecified() && u.0.ip().is_loopback())
            }) {
                bad(
                    &format!("forward.upstreams[{i}]"),
                    format!("{u} is this server's own listener: every forwarded query would loop"),
                );
            }
            if u.0.port() == 0 || u.0.ip().is_unspecified() {
                bad(
                    &format!("forward.upstreams[{i}]"),
                    format!("{u} is not an address a query can be sent to"),
                );
            }
        }
        for (key, value) in [
            ("forward.timeout_ms", f.timeout_ms),
            ("forward.attempts", f.attempts as u64),
            ("forward.down_after_failures", f.down_after_failures as u64),
            ("forward.down_for_ms", f.down_for_ms),
            ("forward.loop_check_interval_s", f.loop_check_interval_s),
            ("forward.cache.max_entries", f.cache.max_entries as u64),
        ] {
            if value == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if f.down_for_max_ms < f.down_for_ms {
            bad(
                "forward.down_for_max_ms",
                format!("must be at least forward.down_for_ms ({})", f.down_for_ms),
            );
        }
        if f.cache.max_bytes < 1 << 16 {
            bad("forward.cache.max_bytes", "must be at least 65536".into());
        }
        if f.cache.min_ttl_s > f.cache.max_ttl_s {
            bad(
                "forward.cache.min_ttl_s",
                format!("must be at most forward.cache.max_ttl_s ({})", f.cache.max_ttl_s),
            );
        }
        if f.cache.stale_ttl_s == 0 {
            bad("forward.cache.stale_ttl_s", "must be at least 1 (RFC 8767 suggests 30)".into());
        }
        let r = &self.dns.rate_limit;
        if r.ipv4_prefix_len > 32 {
            bad("dns.rate_limit.ipv4_prefix_len", "must be at most 32".into());
        }
        if r.ipv6_prefix_len > 128 {
            bad("dns.rate_limit.ipv6_prefix_len", "must be at most 128".into());
        }
        if self.dns.zones.iter().any(|z| z.fallthrough) && f.upstreams.is_empty() {
            let i = self.dns.zones.iter().position(|z| z.fallthrough).unwrap_or(0);
            bad(&format!("dns.zones[{i}].fallthrough"), "needs forward.upstreams to forward to".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad("log.level", format!("'{}' is not a log level or filter", self.log.level));
        }
        problems
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    pub fn forward_settings(&self) -> crate::forward::ForwardSettings {
        let f = &self.forward;
        crate::forward::ForwardSettings {
            upstream: crate::forward::upstream::UpstreamSettings {
                timeout: Duration::from_millis(f.timeout_ms),
                attempts: f.attempts,
                down_after: f.down_after_failures,
                down_for: Duration::from_millis(f.down_for_ms),
                down_for_max: Duration::from_millis(f.down_for_max_ms),
                udp_socket_lifetime: Duration::from_millis(f.udp_socket_lifetime_ms),
                clamps: crate::forward::reply::Clamps {
                    min_ttl: f.cache.min_ttl_s,
                    max_ttl: f.cache.max_ttl_s,
                    max_negative_ttl: f.cache.max_negative_ttl_s,
                },
            },
            max_entries: f.cache.max_entries,
            max_bytes: f.cache.max_bytes,
            servfail_ttl: f.cache.servfail_ttl_s,
            prefetch: f.cache.prefetch,
            serve_stale: Duration::from_secs(f.cache.serve_stale_s),
            stale_ttl: f.cache.stale_ttl_s,
            stale_answer_timeout: Duration::from_millis(f.cache.stale_answer_timeout_ms),
            loop_check_interval: Duration::from_secs(f.loop_check_interval_s),
        }
    }

    pub fn rate_limit_settings(&self) -> crate::dns::ratelimit::RateLimitSettings {
        let r = &self.dns.rate_limit;
        crate::dns::ratelimit::RateLimitSettings {
            responses_per_second: r.responses_per_second,
            slip: r.slip,
            ipv4_prefix_len: r.ipv4_prefix_len,
            ipv6_prefix_len: r.ipv6_prefix_len,
        }
    }

    pub fn registry_settings(&self) -> RegistrySettings {
        let region = self.region.clone().unwrap_or_else(|| "us-east-1".into());
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        RegistrySettings {
            identity: Identity {
                partition: partition.into(),
                region,
                account: self.registry.account_id.clone(),
            },
            custom_health_delay: Duration::from_millis(self.registry.custom_health_delay_ms),
            quotas: Quotas {
                namespaces: self.registry.quotas.namespaces.into(),
                instances_per_namespace: self.registry.quotas.instances_per_namespace.into(),
                instances_per_service: self.registry.quotas.instances_per_service.into(),
            },
        }
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().problems(), vec![]);
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)]
    fn every_problem_is_reported_with_its_key() {
        let mut c = Config::default();
        c.region = Some("Not A Region".into());
        c.registry.api_listen = "0.0.0.0:8787".parse().unwrap();
        c.registry.account_id = "12".into();
        c.registry.quotas.namespaces = 0;
        c.log.level = "loud[".into();
        let keys: Vec<String> = c.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "region",
                "registry.api_listen",
                "registry.account_id",
                "registry.quotas.namespaces",
                "log.level"
            ]
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("[registry]\napi_lisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("api_lisen"), "{err}");
    }

    #[test]
    fn udp_scheduling_takes_normal_or_batch() {
        let c = toml::from_str::<Config>("[dns]\nudp_scheduling = \"batch\"\n").unwrap();
        assert_eq!(c.dns.udp_scheduling, UdpScheduling::Batch);
        let err = toml::from_str::<Config>("[dns]\nudp_scheduling = \"fifo\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("udp_scheduling") && text.contains("expected `normal` or `batch`"), "{text}");
    }

    #[test]
    fn udp_steering_takes_cpu_or_hash_and_is_cpu_by_default() {
        assert_eq!(Config::default().dns.udp_steering, UdpSteering::Cpu);
        let c = toml::from_str::<Config>("[dns]\nudp_steering = \"hash\"\n").unwrap();
        assert_eq!(c.dns.udp_steering, UdpSteering::Hash);
        let err = toml::from_str::<Config>("[dns]\nudp_steering = \"random\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("udp_steering") && text.contains("expected `cpu` or `hash`"), "{text}");
    }

    #[test]
    fn files_in_conf_load_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = Config::from_file(&path).unwrap();
                assert_eq!(config.problems(), vec![], "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0, "conf/ holds no TOML config");
    }

    /// Key paths (`dns.rate_limit.slip`) of a TOML table, array-of-table items under their
    /// array's path.
    fn key_paths(table: &toml::Table, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        for (k, v) in table {
            let path = format!("{prefix}{k}");
            match v {
                toml::Value::Table(t) => key_paths(t, &format!("{path}."), out),
                toml::Value::Array(items) if items.iter().all(|i| i.is_table()) && !items.is_empty() => {
                    for i in items {
                        key_paths(i.as_table().unwrap(), &format!("{path}."), out);
                    }
                }
                _ => {
                    out.insert(path);
                }
            }
        }
    }

    #[test]
    fn annotated_example_names_every_key() {
        // Every key the config has, optional ones set so they serialize.
        let mut full = Config { region: Some("us-east-1".into()), ..Config::default() };
        full.backend.endpoint_url = Some("http://127.0.0.1:1".into());
        full.backend.data_endpoint_url = Some("http://127.0.0.1:1".into());
        full.dns.zones = vec![ZoneConfig {
            zone: "a.example".into(),
            namespace: "a".into(),
            account: Some("123456789012".into()),
            health: Some(HealthMode::All),
            ttl: Some(1),
            max_answers: Some(1),
            grpc_config: Some("{}".into()),
            fallthrough: true,
        }];
        let table: toml::Table = toml::from_str(&full.to_toml()).unwrap();
        let mut keys = std::collections::BTreeSet::new();
        key_paths(&table, "", &mut keys);

        // Keys the file names, set or commented out (`# key = ...`), under their section.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cloudmap-dns.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut named = std::collections::BTreeSet::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(s) = line.strip_prefix('[') {
                section = format!("{}.", s.trim_matches(|c| c == '[' || c == ']'));
            } else if let Some((k, _)) = line.split_once('=')
                && !k.trim().is_empty()
                && k.trim().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                named.insert(format!("{section}{}", k.trim()));
            }
        }
        let missing: Vec<_> = keys.difference(&named).collect();
        assert!(missing.is_empty(), "conf/cloudmap-dns.toml does not document: {missing:?}");
        assert!(keys.len() > 50, "{keys:?}");
    }

    #[test]
    fn annotated_example_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cloudmap-dns.toml");
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }
}
