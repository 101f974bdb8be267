//! Packaging (issue 5), checked as far as this machine allows: the IAM policy against moto's
//! server with IAM enforcement on, the systemd unit with systemd-analyze, the Kubernetes example
//! and the Dockerfile against what the binary accepts, and the Grafana dashboard against what
//! the binary exports. (No Docker engine runs here: `.ci/run` builds and runs the image where
//! one does.)

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use common::dns::{self, A};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Metric names an expression uses (histogram series named by their family).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        if (rest.starts_with("cloudmap_dns_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let name = &rest[..end];
            let family =
                ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            names.push(family.to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn grafana_dashboard_names_only_metrics_the_binary_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("conf/grafana-dashboard.json")).unwrap();
    // With an upstream, so that the per-upstream families have series.
    let server = Server::start(&["--upstream", "127.0.0.1:9"]);
    let (_, body) = server.http_get("/metrics");
    let exported: BTreeSet<&str> =
        body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let mut used = BTreeSet::new();
    let mut expressions = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel '{}': no metric in {expr}", panel["title"]);
            for n in names {
                assert!(exported.contains(n.as_str()), "panel '{}': {n} is not exported", panel["title"]);
                used.insert(n);
            }
            expressions += 1;
        }
    }
    // Every cloudmap-dns family has a panel.
    let unused: Vec<_> =
        exported.iter().filter(|n| n.starts_with("cloudmap_dns_") && !used.contains(**n)).collect();
    assert!(unused.is_empty(), "families without a panel: {unused:?}");
    assert!(expressions >= 20, "{expressions}");
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read("conf/cloudmap-dns.service");
    // The unit as installed, with the binary under test in place of /usr/local/bin.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloudmap-dns.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/cloudmap-dns", common::BIN)).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&path).output();
    let verify = verify.expect("systemd-analyze is required (apt-get install systemd; .ci/run installs it)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "exposure above 2.0 ('OK' is below 4.0):\n{report}");
    assert!(report.contains("Overall exposure level"), "{report}");

    // Its commands are the binary's: the pre-start check passes on the shipped config, and
    // reload is SIGHUP.
    let pre = unit.lines().find_map(|l| l.strip_prefix("ExecStartPre=")).unwrap();
    let args: Vec<String> = pre
        .split_whitespace()
        .skip(1)
        .map(|a| {
            a.replace("/etc/cloudmap-dns/cloudmap-dns.toml", repo("conf/cloudmap-dns.toml").to_str().unwrap())
        })
        .collect();
    let out = Command::new(common::BIN).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    assert!(unit.contains("CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"));
}

/// YAML documents as JSON values (PyYAML is installed with the aws CLI).
fn yaml_documents(path: &str) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(repo(path))
        .output()
        .expect("python3 with PyYAML is required (.ci/run installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kubernetes_example_runs_the_binary_as_configured() {
    let docs = yaml_documents("conf/kubernetes.yaml");
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    let config = kind("ConfigMap")["data"]["cloudmap-dns.toml"].as_str().unwrap();
    let ds = kind("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "node-local: on the node's network");
    let container = &pod["containers"][0];

    // The container's command line, with the ConfigMap mounted and the node address filled in,
    // is one the binary accepts: check-config on the file, then the flags over it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cloudmap-dns.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(common::BIN).args(["check-config", "--config"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "the ConfigMap's config: {}", String::from_utf8_lossy(&out.stderr));
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("$(HOST_IP)", "127.0.0.1")
                .replace("/etc/cloudmap-dns/cloudmap-dns.toml", file.to_str().unwrap())
        })
        .collect();
    let cli = <cloudmap_dns::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("cloudmap-dns".to_string()).chain(args.iter().cloned()),
    )
    .expect("the DaemonSet's args parse");
    let Some(cloudmap_dns::cli::Command::Serve(serve)) = cli.command else { panic!("serve") };
    let loaded = serve.load_config().expect("flags and ConfigMap validate together");
    assert_eq!(loaded.dns.listen[0].port(), 53);
    assert_eq!(loaded.backend.kind, cloudmap_dns::config::BackendKind::Aws);

    // Probes hit the metrics listener's health endpoints.
    let metrics_port = loaded.metrics.listen.port();
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], metrics_port);
    // Least privilege: non-root, read-only root, only NET_BIND_SERVICE.
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], serde_json::json!(["NET_BIND_SERVICE"]));
    // The data dir is a writable volume.
    let data_dir = loaded.data_dir.to_str().unwrap().to_string();
    assert!(
        container["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == data_dir.as_str()),
        "data_dir {data_dir} is mounted"
    );
    assert_eq!(kind("Service")["spec"]["internalTrafficPolicy"], "Local");
    assert!(kind("ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string());
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_binds_53_by_capability() {
    let text = read("Dockerfile");
    let stages: Vec<&str> = text.split("\nFROM ").collect();
    assert!(stages.len() >= 3, "a build stage and a runtime stage");
    let runtime = stages.last().unwrap();
    assert!(runtime.starts_with("debian:bookworm-slim"), "a slim runtime base");
    assert!(runtime.contains("COPY --from=build"), "only the binary comes from the build stage");
    assert!(!runtime.contains("cargo "), "no toolchain in the runtime image");
    assert!(runtime.contains("setcap cap_net_bind_service=+ep /usr/local/bin/cloudmap-dns"));
    let user = runtime.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert!(!user.starts_with('0') && !user.starts_with("root"), "non-root: {user}");
    assert!(runtime.contains("EXPOSE 53/udp 53/tcp 9153/tcp"));
    // The default command is one the binary accepts, with the shipped config.
    let cmd = runtime.lines().find_map(|l| l.strip_prefix("CMD ")).unwrap();
    let args: Vec<String> = serde_json::from_str(cmd).unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("/etc/cloudmap-dns/cloudmap-dns.toml", repo("conf/cloudmap-dns.toml").to_str().unwrap())
        })
        .collect();
    let cli = <cloudmap_dns::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("cloudmap-dns".to_string()).chain(args),
    )
    .unwrap();
    let Some(cloudmap_dns::cli::Command::Serve(serve)) = cli.command else { panic!("serve") };
    assert_eq!(serve.load_config().unwrap().dns.listen[0].port(), 53);
}

#[test]
fn iam_policy_allows_what_the_aws_backend_calls_and_nothing_else() {
    let policy: serde_json::Value = serde_json::from_str(&read("conf/iam-policy.json")).unwrap();
    let actions: BTreeSet<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()))
        .collect();
    let operations: BTreeSet<String> =
        cloudmap_dns::metrics::OPERATIONS.iter().map(|o| format!("servicediscovery:{o}")).collect();
    assert_eq!(actions, operations, "the policy names exactly the operations the backend calls");

    // moto with IAM enforcement: tests/packaging/iam_moto.py sets up a user holding the policy,
    // checks that it is denied everything else, and hands over its keys.
    let mut moto = Command::new("python3")
        .arg(repo("tests/packaging/iam_moto.py"))
        .arg("--policy")
        .arg(repo("conf/iam-policy.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with boto3 and moto[server] is required (.ci/run installs them)");
    let mut line = String::new();
    BufReader::new(moto.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let setup: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("iam_moto.py failed (see its output above): {line}"));

    let endpoint = setup["endpoint"].as_str().unwrap();
    let keys = |user: &str| {
        let k = &setup["keys"][user];
        (k[0].as_str().unwrap().to_string(), k[1].as_str().unwrap().to_string())
    };

    // With the policy: it answers, and every call it makes is allowed.
    let (server, _dir) = aws_backend(endpoint, keys("cloudmap-dns"));
    let r = dns::parse(&dns::udp(server.dns, &dns::query("web.lab.example", A)));
    assert_eq!(dns::a(&r), ["10.0.0.1".parse::<std::net::Ipv4Addr>().unwrap()], "{r:?}");
    std::thread::sleep(Duration::from_millis(600)); // a few revision checks
    let (_, body) = server.http_get("/metrics");
    let calls = |body: &str, op: &str, outcome: &str| {
        common::metric_in(
            body,
            "cloudmap_dns_backend_requests_total",
            &[("operation", op), ("outcome", outcome)],
        )
    };
    for op in ["DiscoverInstances", "DiscoverInstancesRevision", "ListServices", "ListNamespaces"] {
        assert!(calls(&body, op, "ok") >= 1.0, "{op} was called and allowed");
    }
    for op in cloudmap_dns::metrics::OPERATIONS {
        assert_eq!(calls(&body, op, "denied"), 0.0, "{op} was denied under the policy");
        // moto has no GetServiceAttributes: past IAM, it answers 500 (AWS's documentation
        // wins, and tests/dns_aws.rs covers the operation against the embedded registry).
        if op != "GetServiceAttributes" {
            assert_eq!(calls(&body, op, "error"), 0.0, "{op} failed under the policy");
        }
    }
    assert!(calls(&body, "GetServiceAttributes", "error") >= 1.0, "GetServiceAttributes was called");
    drop(server);

    // Without any one of its actions, that call is denied: each is needed.
    for action in &actions {
        let op = action.trim_start_matches("servicediscovery:");
        let (server, _dir) = aws_backend(endpoint, keys(&format!("without-{op}")));
        let _ = dns::udp(server.dns, &dns::query("web.lab.example", A));
        std::thread::sleep(Duration::from_millis(600));
        let (_, body) = server.http_get("/metrics");
        assert!(
            calls(&body, op, "denied") >= 1.0,
            "without {action}, {op} is never denied: the backend does not need it"
        );
    }
    drop(moto.stdin.take().map(|mut s| s.flush()));
    let _ = moto.wait();
}

/// A cloudmap-dns with the aws backend against `endpoint`, with these credentials.
fn aws_backend(endpoint: &str, (key, secret): (String, String)) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aws.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\nkind = \"aws\"\nendpoint_url = \"{endpoint}\"\nrefresh_ms = 200\nhealth_refresh_ms = 60000\n\n[[dns.zones]]\nzone = \"lab.example\"\nnamespace = \"lab\"\n"
        ),
    )
    .unwrap();
    let env = [("AWS_ACCESS_KEY_ID", key.as_str()), ("AWS_SECRET_ACCESS_KEY", secret.as_str())];
    let server =
        Server::start_in_env(&dir.path().join("data"), &env, &["--config", config.to_str().unwrap()])
            .unwrap();
    (server, dir)
}
