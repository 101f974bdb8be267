//! Command-line interface (PRODUCT.md §1). `serve` is the default when no subcommand is given.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{BackendKind, Config, ConfigError, LogFormat, UpstreamAddr, ZoneConfig};

#[derive(Debug, Parser)]
#[command(
    name = "cloudmap-dns",
    version,
    about = "AWS Cloud Map service discovery answered by plain DNS, with an embedded Cloud Map-compatible registry",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Validate a config file, print the effective config, exit 0 (valid) or 1.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (annotated example: conf/cloudmap-dns.toml)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// DNS over UDP and TCP (repeatable) [default: 127.0.0.1:5353]
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_listen: Vec<SocketAddr>,
    /// Prometheus /metrics, /healthz and /readyz [default: 127.0.0.1:9153]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where instances come from [default: embedded]
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// aws backend: endpoint for every Cloud Map call (moto, another cloudmap-dns)
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// aws backend: endpoint for DiscoverInstances and DiscoverInstancesRevision only
    #[arg(long, value_name = "URL")]
    pub data_endpoint_url: Option<String>,
    /// Serve the namespace with this HttpName as this DNS zone (repeatable)
    #[arg(long, value_name = "ZONE=NAMESPACE[@ACCOUNT]", value_parser = ZoneConfig::parse_flag)]
    pub zone: Vec<ZoneConfig>,
    /// Forward other names to this resolver (repeatable, in failover order) [default: none, REFUSED]
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub upstream: Vec<UpstreamAddr>,
    /// TTL of namespace-zone answers [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u32>,
    /// How often an active service is re-validated against the backend [default: 1000]
    #[arg(long, value_name = "MS")]
    pub refresh_ms: Option<u64>,
    /// Embedded registry storage, and the DNS cache snapshot [default: ./cloudmap-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The embedded registry's Cloud Map JSON API, loopback only [default: 127.0.0.1:8787]
    #[arg(long, value_name = "ADDR:PORT")]
    pub api_listen: Option<SocketAddr>,
    /// AWS region (aws backend: default from the AWS chain; embedded registry: us-east-1)
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Delay before a custom health status change takes effect (AWS: about 30000) [default: 0]
    #[arg(long, value_name = "MS")]
    pub custom_health_delay_ms: Option<u64>,
    /// Seed a namespace `demo` with a service `orders` and two instances
    #[arg(long)]
    pub demo: bool,
    /// Log format [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log level or tracing filter [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log every query: client, name, type, rcode, source, latency
    #[arg(long)]
    pub log_queries: bool,
}

impl ServeArgs {
    /// The config file (or the defaults) with these flags laid over it, validated.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = self.api_listen {
            config.registry.api_listen = v;
        }
        if let Some(v) = &self.region {
            config.region = Some(v.clone());
        }
        if !self.dns_listen.is_empty() {
            config.dns.listen = self.dns_listen.clone();
        }
        if let Some(v) = self.backend {
            config.backend.kind = v;
        }
        if let Some(v) = self.metrics_listen {
            config.metrics.listen = v;
        }
        if self.log_queries {
            config.log.queries = true;
        }
        if let Some(v) = &self.endpoint_url {
            config.backend.endpoint_url = Some(v.clone());
        }
        if let Some(v) = &self.data_endpoint_url {
            config.backend.data_endpoint_url = Some(v.clone());
        }
        if !self.zone.is_empty() {
            config.dns.zones = self.zone.clone();
        }
        if !self.upstream.is_empty() {
            config.forward.upstreams = self.upstream.clone();
        }
        if let Some(v) = self.ttl {
            config.dns.ttl = v;
        }
        if let Some(v) = self.refresh_ms {
            config.backend.refresh_ms = v;
        }
        if let Some(v) = self.custom_health_delay_ms {
            config.registry.custom_health_delay_ms = v;
        }
        if let Some(v) = self.log_format {
            config.log.format = v;
        }
        if let Some(v) = &self.log_level {
            config.log.level = v.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_is_the_default_and_flags_override() {
        let cli = Cli::parse_from(["cloudmap-dns", "--api-listen", "127.0.0.1:9999", "--demo"]);
        assert!(cli.command.is_none());
        assert!(cli.serve.demo);
        let config = cli.serve.load_config().unwrap();
        assert_eq!(config.registry.api_listen.port(), 9999);

        let cli = Cli::parse_from(["cloudmap-dns", "serve", "--region", "eu-west-1"]);
        let Some(Command::Serve(args)) = cli.command else { panic!("expected serve") };
        assert_eq!(args.load_config().unwrap().region.as_deref(), Some("eu-west-1"));
        let cli =
            Cli::parse_from(["cloudmap-dns", "--zone", "svc.example=lab@123456789012", "--backend", "aws"]);
        let config = cli.serve.load_config().unwrap();
        assert_eq!(config.dns.zones[0].namespace, "lab");
        assert_eq!(config.dns.zones[0].account.as_deref(), Some("123456789012"));
    }

    #[test]
    fn invalid_flags_fail_validation() {
        let cli = Cli::parse_from(["cloudmap-dns", "--api-listen", "0.0.0.0:8787"]);
        assert!(matches!(cli.serve.load_config(), Err(ConfigError::Invalid(_))));
    }
}
