//! The same Cloud Map API cases with boto3 against cloudmap-dns and against moto's server mode
//! (started by tests/compat/compat.py on a loopback port). Every disagreement must be one listed in
//! tests/compat/expected_differences.json (a documented moto departure from AWS), and every listed
//! one must still show.

mod common;

use std::process::Command;

use common::Server;

#[test]
fn boto3_agrees_with_moto_except_where_moto_departs_from_aws() {
    let probe = Command::new("python3").args(["-c", "import boto3, moto.server"]).output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "python3 with boto3 and moto[server] is required: pip install boto3 'moto[server]' (bash .ci/run installs them)"
    );
    let server = Server::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/compat.py");
    let out = Command::new("python3").arg(script).args(["--ours", &server.endpoint()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "differences from moto changed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("OK: every difference"), "{stdout}");
}
