//! Test harness: runs the real `cloudmap-dns` binary on ephemeral loopback ports (the addresses are
//! read from its `listening for ... on ADDR` log lines) and builds Cloud Map clients for it.
#![allow(dead_code)]

pub mod dns;
pub mod proxy;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_servicediscovery as sd;

pub const BIN: &str = env!("CARGO_BIN_EXE_cloudmap-dns");

/// A running cloudmap-dns; killed when dropped.
pub struct Server {
    pub child: Child,
    /// The registry API (embedded backend); unset for the aws backend.
    pub api: SocketAddr,
    pub dns: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    /// Every line the server logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server with a fresh data dir.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut server = Server::start_in(&dir, extra).expect("server starts");
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on `data_dir`; `Err` holds its output if it exits before listening.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Result<Server, String> {
        Server::start_in_env(data_dir, &[], extra)
    }

    /// As `start_in`, with these environment variables set over the defaults.
    pub fn start_in_env(data_dir: &Path, env: &[(&str, &str)], extra: &[&str]) -> Result<Server, String> {
        Server::launch(Command::new(BIN), data_dir, env, extra)
    }

    /// As `start`, with the server allowed to run on CPU `cpu` only (`taskset`), as if the host
    /// had one.
    pub fn start_on_cpu(cpu: usize, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", &cpu.to_string(), BIN]);
        let mut server =
            Server::launch(taskset, &tmp.path().join("data"), &[], extra).expect("server starts");
        server._tmp = Some(tmp);
        server
    }

    fn launch(
        mut command: Command,
        data_dir: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Server, String> {
        let mut child = command
            // Credentials and region for the aws backend; no instance metadata to ask.
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .arg("serve")
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-level", "info"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cloudmap-dns");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let addr_after = |line: &str, marker: &str| {
                line.split(marker).nth(1)?.split_whitespace().next()?.parse::<SocketAddr>().ok()
            };
            let (mut api, mut dns) = (None, None);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                api = api.or(addr_after(&line, "listening for Cloud Map API on "));
                dns = dns.or(addr_after(&line, "listening for DNS on UDP "));
                // The metrics listener is bound last: once it is, the server is up.
                if let (Some(dns), Some(metrics)) = (dns, addr_after(&line, "listening for metrics on ")) {
                    let _ = tx.send(Some((api, dns, metrics)));
                }
                sink.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some((api, dns, metrics))) => Ok(Server {
                child,
                api: api.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                dns,
                metrics,
                data_dir: data_dir.to_path_buf(),
                log,
                _tmp: None,
            }),
            _ => {
                let _ = child.kill();
                let status = child.wait().ok();
                std::thread::sleep(Duration::from_millis(100));
                Err(format!("exit {status:?}; log:\n{}", log.lock().unwrap().join("\n")))
            }
        }
    }

    /// GET on the metrics listener: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    /// The value of the series `name{labels}` in `/metrics` (labels in any order); 0 if absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.http_get("/metrics");
        metric_in(&body, name, labels)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn client(&self) -> sd::Client {
        client(&self.endpoint())
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client for a local Cloud Map API. The SDK sends DiscoverInstances and
/// DiscoverInstancesRevision to `data-<host>`, which a local endpoint does not have; the
/// interceptor the aws backend uses strips the prefix again.
pub fn client(endpoint: &str) -> sd::Client {
    let config = sd::Config::builder()
        .behavior_version(sd::config::BehaviorVersion::latest())
        .region(sd::config::Region::new("us-east-1"))
        .credentials_provider(sd::config::Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(endpoint)
        .interceptor(cloudmap_dns::backend::aws::StripDataHostPrefix)
        .build();
    sd::Client::from_conf(config)
}

/// The AWS error code (`__type`) of a failed SDK call.
pub fn code<E, R>(err: &sd::error::SdkError<E, R>) -> String
where
    E: sd::error::ProvideErrorMetadata,
{
    use sd::error::ProvideErrorMetadata;
    err.code().unwrap_or("<no code>").to_string()
}

pub fn message<E, R>(err: &sd::error::SdkError<E, R>) -> String
where
    E: sd::error::ProvideErrorMetadata,
{
    use sd::error::ProvideErrorMetadata;
    err.message().unwrap_or("").to_string()
}

/// Polls `f` until it holds, returning how long that took; fails the test after `limit`.
pub async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The namespace id an operation (CreateHttpNamespace and the like) targeted.
pub async fn namespace_of(c: &sd::Client, operation_id: Option<&str>) -> String {
    let op = c.get_operation().operation_id(operation_id.expect("an OperationId")).send().await.unwrap();
    op.operation().unwrap().targets().unwrap()[&sd::types::OperationTargetType::Namespace].clone()
}

/// Creates an HTTP namespace and returns its id.
pub async fn http_namespace(c: &sd::Client, name: &str) -> String {
    let op = c.create_http_namespace().name(name).send().await.unwrap();
    namespace_of(c, op.operation_id()).await
}

/// The value of the series `name{labels}` in a Prometheus text exposition (labels in any
/// order, all of them given); 0 if absent.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (n, mut got) = match series.split_once('{') {
            Some((n, rest)) => (
                n,
                rest.trim_end_matches('}')
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>(),
            ),
            None => (series, Vec::new()),
        };
        got.sort();
        if n == name && got == want {
            return value.parse().unwrap_or(0.0);
        }
    }
    0.0
}
