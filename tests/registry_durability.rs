//! Every acknowledged registry write survives `kill -9`; nothing is half-applied; a corrupt or
//! unreadable data dir is refused with a clear error and left untouched.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_servicediscovery as sd;
use common::{BIN, Server};

#[derive(Default)]
struct Acked {
    /// service id -> instance ids whose RegisterInstance was acknowledged (and not deregistered)
    registered: BTreeMap<String, BTreeSet<String>>,
    /// instance ids whose DeregisterInstance was acknowledged
    deregistered: BTreeMap<String, BTreeSet<String>>,
    /// instance ids whose DeregisterInstance was sent but not acknowledged: either outcome is right
    deregistering: BTreeMap<String, BTreeSet<String>>,
    /// every instance id a RegisterInstance was sent for, acknowledged or not
    attempted: BTreeMap<String, BTreeSet<String>>,
    /// service id -> highest revision read after an acknowledged write
    revisions: BTreeMap<String, i64>,
    operations: Vec<String>,
    /// namespaces and services created by the structure writer
    namespaces: BTreeSet<String>,
    services: BTreeSet<String>,
}

async fn instance_writer(c: sd::Client, svc: String, name: String, acked: Arc<Mutex<Acked>>) {
    for n in 0.. {
        let id = format!("i-{n}");
        acked.lock().unwrap().attempted.entry(svc.clone()).or_default().insert(id.clone());
        let res = c
            .register_instance()
            .service_id(&svc)
            .instance_id(&id)
            .attributes("AWS_INSTANCE_IPV4", format!("10.0.{}.{}", n / 250, n % 250 + 1))
            .attributes("n", n.to_string())
            .send()
            .await;
        let Ok(out) = res else { return };
        {
            let mut a = acked.lock().unwrap();
            a.registered.entry(svc.clone()).or_default().insert(id.clone());
            a.operations.push(out.operation_id().unwrap().to_string());
        }
        if n % 3 == 2 {
            let old = format!("i-{}", n - 2);
            acked.lock().unwrap().deregistering.entry(svc.clone()).or_default().insert(old.clone());
            if c.deregister_instance().service_id(&svc).instance_id(&old).send().await.is_err() {
                return;
            }
            let mut a = acked.lock().unwrap();
            a.deregistering.entry(svc.clone()).or_default().remove(&old);
            a.registered.entry(svc.clone()).or_default().remove(&old);
            a.deregistered.entry(svc.clone()).or_default().insert(old);
        }
        let Ok(rev) =
            c.discover_instances_revision().namespace_name("durable").service_name(&name).send().await
        else {
            return;
        };
        acked.lock().unwrap().revisions.insert(svc.clone(), rev.instances_revision().unwrap());
    }
}

async fn structure_writer(c: sd::Client, acked: Arc<Mutex<Acked>>) {
    for n in 0.. {
        let Ok(op) = c.create_http_namespace().name(format!("s-{n}")).send().await else {
            return;
        };
        let Ok(op) = c.get_operation().operation_id(op.operation_id().unwrap()).send().await else {
            return;
        };
        let ns =
            op.operation().unwrap().targets().unwrap()[&sd::types::OperationTargetType::Namespace].clone();
        acked.lock().unwrap().namespaces.insert(ns.clone());
        let Ok(svc) = c.create_service().name("svc").namespace_id(&ns).send().await else {
            return;
        };
        acked.lock().unwrap().services.insert(svc.service().unwrap().id().unwrap().to_string());
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_in(&dir, &[]).unwrap();
    let c = server.client();
    let ns = common::http_namespace(&c, "durable").await;
    let mut services = Vec::new();
    for i in 0..4 {
        let name = format!("w{i}");
        let svc = c.create_service().name(&name).namespace_id(&ns).send().await.unwrap();
        services.push((svc.service().unwrap().id().unwrap().to_string(), name));
    }

    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut writers = Vec::new();
    for (svc, name) in &services {
        writers.push(tokio::spawn(instance_writer(
            server.client(),
            svc.clone(),
            name.clone(),
            acked.clone(),
        )));
    }
    writers.push(tokio::spawn(structure_writer(server.client(), acked.clone())));

    // Kill once every writer has had plenty acknowledged, while they are all mid-flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a = acked.lock().unwrap();
        let min = services.iter().map(|(s, _)| a.registered.get(s).map_or(0, |r| r.len())).min().unwrap();
        if (min >= 15 && a.services.len() >= 5) || Instant::now() > deadline {
            break;
        }
    }
    server.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
    assert!(acked.operations.len() > 40, "the writers got going: {}", acked.operations.len());

    let server = Server::start_in(&dir, &[]).expect("restart on the same data dir");
    let c = server.client();
    for (svc, name) in &services {
        let listed: BTreeSet<String> = c
            .list_instances()
            .service_id(svc)
            .into_paginator()
            .send()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flat_map(|p| {
                p.unwrap().instances().iter().map(|i| i.id().unwrap().to_string()).collect::<Vec<_>>()
            })
            .collect();
        let registered = acked.registered.get(svc).cloned().unwrap_or_default();
        let in_flight = acked.deregistering.get(svc).cloned().unwrap_or_default();
        let missing: Vec<_> = registered.difference(&listed).filter(|i| !in_flight.contains(*i)).collect();
        assert!(missing.is_empty(), "{name}: acknowledged registrations lost: {missing:?}");
        let resurrected: Vec<_> =
            acked.deregistered.get(svc).into_iter().flatten().filter(|i| listed.contains(*i)).collect();
        assert!(resurrected.is_empty(), "{name}: acknowledged deregistrations undone: {resurrected:?}");
        let phantom: Vec<_> = listed.difference(&acked.attempted[svc]).collect();
        assert!(phantom.is_empty(), "{name}: instances nobody registered: {phantom:?}");
        let rev = c
            .discover_instances_revision()
            .namespace_name("durable")
            .service_name(name)
            .send()
            .await
            .unwrap();
        assert!(
            rev.instances_revision().unwrap() >= acked.revisions[svc],
            "{name}: revision went back from {} to {:?}",
            acked.revisions[svc],
            rev.instances_revision()
        );
        // The instance count the service reports agrees with its instances.
        let got = c.get_service().id(svc).send().await.unwrap();
        assert_eq!(got.service().unwrap().instance_count(), Some(listed.len() as i32));
    }
    for op in &acked.operations {
        let got = c.get_operation().operation_id(op).send().await.unwrap();
        assert_eq!(got.operation().unwrap().status(), Some(&sd::types::OperationStatus::Success));
    }
    for ns in &acked.namespaces {
        c.get_namespace().id(ns).send().await.unwrap_or_else(|e| panic!("namespace {ns} lost: {e:?}"));
    }
    // No service survives without its namespace, acknowledged or not.
    let all_services = c.list_services().into_paginator().send().collect::<Vec<_>>().await;
    let mut seen = BTreeSet::new();
    for page in all_services {
        for s in page.unwrap().services() {
            let got = c.get_service().id(s.id().unwrap()).send().await.unwrap();
            let ns = got.service().unwrap().namespace_id().unwrap().to_string();
            c.get_namespace()
                .id(&ns)
                .send()
                .await
                .unwrap_or_else(|e| panic!("service {:?} has no namespace: {e:?}", s.id()));
            seen.insert(s.id().unwrap().to_string());
        }
    }
    let lost: Vec<_> = acked.services.difference(&seen).collect();
    assert!(lost.is_empty(), "acknowledged services lost: {lost:?}");
}

fn run_expecting_failure(dir: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .args(["serve", "--api-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "must refuse to start");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn corrupt_data_dir_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("registry.sqlite3");
    let garbage: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let stderr = run_expecting_failure(tmp.path());
    assert!(stderr.contains("corrupt") && stderr.contains("left untouched"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), garbage);

    // A database whose pages were damaged after a real run.
    let tmp = tempfile::tempdir().unwrap();
    {
        let server = Server::start_in(&tmp.path().join("d"), &["--demo"]).unwrap();
        drop(server);
    }
    let db = tmp.path().join("d/registry.sqlite3");
    let _ = std::fs::remove_file(tmp.path().join("d/registry.sqlite3-wal"));
    let _ = std::fs::remove_file(tmp.path().join("d/registry.sqlite3-shm"));
    let mut bytes = std::fs::read(&db).unwrap();
    if bytes.len() > 4096 * 2 {
        for b in &mut bytes[4096..4096 * 2] {
            *b = 0xA5;
        }
    }
    std::fs::write(&db, &bytes).unwrap();
    let stderr = run_expecting_failure(&tmp.path().join("d"));
    assert!(stderr.contains("registry database"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "the damaged file was not modified");
}

#[test]
fn unreadable_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory where the database file should be cannot be opened as one.
    std::fs::create_dir(tmp.path().join("registry.sqlite3")).unwrap();
    let stderr = run_expecting_failure(tmp.path());
    assert!(stderr.contains("registry database") && stderr.contains("cannot be read"), "{stderr}");

    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let stderr = run_expecting_failure(&file);
    assert!(stderr.contains("data dir"), "{stderr}");
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = Server::start_in(tmp.path(), &[]).unwrap();
    let stderr = run_expecting_failure(tmp.path());
    assert!(stderr.contains("in use by another cloudmap-dns process"), "{stderr}");
}

#[test]
fn api_refuses_non_loopback_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--api-listen", "0.0.0.0:0", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("registry.api_listen") && stderr.contains("loopback"), "{stderr}");
}
