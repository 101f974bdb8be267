//! The README's Cloud Map lab, run as written with the aws CLI against the real binary.

mod common;

use std::process::Command;

use common::Server;

/// The shell block between the walkthrough markers in README.md.
fn walkthrough() -> Vec<String> {
    let readme = include_str!("../README.md");
    let start = readme.find("<!-- walkthrough:start -->").expect("README has the walkthrough");
    let end = readme.find("<!-- walkthrough:end -->").expect("walkthrough end marker");
    readme[start..end]
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_walkthrough_runs_with_the_aws_cli() {
    assert!(
        Command::new("aws").arg("--version").output().is_ok_and(|o| o.status.success()),
        "the aws CLI is required for this test: pip install awscli (bash .ci/run installs it)"
    );
    let server = Server::start(&[]);
    let lines = walkthrough();
    assert!(lines.len() > 10, "{lines:?}");
    // Run it line by line in one shell, marking where each command's output starts.
    let mut script = String::from("set -euo pipefail\n");
    for line in &lines {
        let line = line.replace("http://127.0.0.1:8787", &server.endpoint());
        if line.trim().is_empty() {
            continue;
        }
        script.push_str(&format!("echo '>>> {}'\n{line}\n", line.replace('\'', "")));
    }
    let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "walkthrough failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    // Each command's output, in order.
    let steps: Vec<(&str, serde_json::Value)> = stdout
        .split(">>> ")
        .skip(1)
        .map(|chunk| {
            let (cmd, rest) = chunk.split_once('\n').unwrap_or((chunk, ""));
            (cmd, serde_json::from_str(rest.trim()).unwrap_or(serde_json::Value::Null))
        })
        .collect();
    let outputs = |needle: &str| -> Vec<&serde_json::Value> {
        steps.iter().filter(|(c, _)| c.contains(needle)).map(|(_, v)| v).collect()
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        let mut ids: Vec<String> = v["Instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["InstanceId"].as_str().or(i["Id"].as_str()).unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };

    let get_op = outputs("get-operation --operation-id \"$op\"");
    assert_eq!(get_op[0]["Operation"]["Status"], "SUCCESS");
    assert_eq!(get_op[0]["Operation"]["Type"], "CREATE_NAMESPACE");
    let listed = outputs("list-instances");
    assert_eq!(ids(listed[0]), ["web-1", "web-2"]);
    let discovered = outputs("discover-instances");
    assert_eq!(discovered.len(), 4);
    assert_eq!(ids(discovered[0]), ["web-1", "web-2"]);
    assert_eq!(ids(discovered[1]), ["web-2"], "--query-parameters version=v2");
    assert_eq!(discovered[1]["Instances"][0]["Attributes"]["az"], "use1-az2");
    assert_eq!(ids(discovered[2]), ["web-2"], "web-1 is UNHEALTHY");
    assert_eq!(ids(discovered[3]), ["web-1", "web-2"], "web-1 is HEALTHY again");
    for op in outputs("deregister-instance") {
        assert!(op["OperationId"].is_string());
    }
    assert!(outputs("delete-namespace")[0]["OperationId"].is_string());

    // Everything the lab created, it deleted.
    let check = Command::new("aws")
        .args(["--endpoint-url", &server.endpoint(), "servicediscovery", "list-namespaces"])
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    let after: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(after["Namespaces"].as_array().map(Vec::len), Some(0));
}
