//! Typed configuration: the TOML file (`--config`), overridden by command-line flags, validated
//! once at load. Validation reports every problem at once, each with the key that holds it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::registry::{Identity, Quotas, RegistrySettings};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded registry keeps its database.
    pub data_dir: PathBuf,
    /// AWS region: the embedded registry's ARNs name it.
    pub region: String,
    pub registry: RegistryConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./cloudmap-data"),
            region: "us-east-1".into(),
            registry: RegistryConfig::default(),
            log: LogConfig::default(),
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
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
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
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 32
            && self.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            bad("region", format!("'{}' is not an AWS region name such as us-east-1", self.region));
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
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad("log.level", format!("'{}' is not a log level or filter", self.log.level));
        }
        problems
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    pub fn registry_settings(&self) -> RegistrySettings {
        let partition = if self.region.starts_with("cn-") {
            "aws-cn"
        } else if self.region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        RegistrySettings {
            identity: Identity {
                partition: partition.into(),
                region: self.region.clone(),
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
        c.region = "Not A Region".into();
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

    #[test]
    fn annotated_example_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cloudmap-dns.toml");
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }
}
