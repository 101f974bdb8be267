//! The embedded registry's Cloud Map API, driven through aws-sdk-servicediscovery against the real
//! binary: every operation, the error codes, validation, pagination and idempotency.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_servicediscovery as sd;
use common::{Server, code, message};
use sd::types::{
    DnsConfig, DnsRecord, FilterCondition, HealthCheckConfig, HealthCheckCustomConfig, HealthCheckType,
    HealthStatusFilter, NamespaceFilter, NamespaceFilterName, OperationFilter, OperationFilterName,
    PrivateDnsNamespaceProperties, PrivateDnsPropertiesMutable, RecordType, RoutingPolicy, ServiceFilter,
    ServiceFilterName, Soa, Tag,
};

use common::{http_namespace, namespace_of};

#[allow(deprecated)] // FailureThreshold is deprecated, but the aws CLI walkthrough still sends it.
async fn custom_health_service(c: &sd::Client, ns: &str, name: &str) -> String {
    let svc = c
        .create_service()
        .name(name)
        .namespace_id(ns)
        .health_check_custom_config(HealthCheckCustomConfig::builder().failure_threshold(1).build())
        .send()
        .await
        .unwrap();
    svc.service().unwrap().id().unwrap().to_string()
}

fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn register(c: &sd::Client, svc: &str, id: &str, pairs: &[(&str, &str)]) -> String {
    let out = c
        .register_instance()
        .service_id(svc)
        .instance_id(id)
        .set_attributes(Some(attrs(pairs)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("register {id}: {} {}", code(&e), message(&e)));
    out.operation_id().unwrap().to_string()
}

async fn discover(
    c: &sd::Client,
    ns: &str,
    svc: &str,
    health: Option<HealthStatusFilter>,
) -> BTreeSet<String> {
    let out = c
        .discover_instances()
        .namespace_name(ns)
        .service_name(svc)
        .set_health_status(health)
        .send()
        .await
        .unwrap();
    out.instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect()
}

async fn revision(c: &sd::Client, ns: &str, svc: &str) -> i64 {
    c.discover_instances_revision()
        .namespace_name(ns)
        .service_name(svc)
        .send()
        .await
        .unwrap()
        .instances_revision()
        .expect("InstancesRevision")
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn namespaces_lifecycle_and_operations() {
    let server = Server::start(&[]);
    let c = server.client();

    let created = c.create_http_namespace().name("shop").description("the shop").send().await.unwrap();
    let op_id = created.operation_id().unwrap();
    assert_eq!(op_id.len(), 41, "operation ids look like AWS's: {op_id}");
    let op = c.get_operation().operation_id(op_id).send().await.unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.status(), Some(&sd::types::OperationStatus::Success));
    assert_eq!(op.r#type(), Some(&sd::types::OperationType::CreateNamespace));
    assert!(op.create_date().is_some() && op.update_date().is_some());
    let ns_id = op.targets().unwrap()[&sd::types::OperationTargetType::Namespace].clone();
    assert!(ns_id.starts_with("ns-") && ns_id.len() == 19, "{ns_id}");

    let ns = c.get_namespace().id(&ns_id).send().await.unwrap();
    let ns = ns.namespace().unwrap();
    assert_eq!(ns.name(), Some("shop"));
    assert_eq!(ns.r#type(), Some(&sd::types::NamespaceType::Http));
    assert_eq!(ns.description(), Some("the shop"));
    assert_eq!(ns.service_count(), Some(0));
    assert_eq!(ns.resource_owner(), Some("123456789012"));
    assert_eq!(
        ns.arn(),
        Some(format!("arn:aws:servicediscovery:us-east-1:123456789012:namespace/{ns_id}").as_str())
    );
    assert_eq!(ns.properties().unwrap().http_properties().unwrap().http_name(), Some("shop"));
    // The namespace's ARN works wherever its id does.
    let by_arn = c.get_namespace().id(ns.arn().unwrap()).send().await.unwrap();
    assert_eq!(by_arn.namespace().unwrap().id(), Some(ns_id.as_str()));

    let private = c
        .create_private_dns_namespace()
        .name("corp.internal")
        .vpc("vpc-0abc")
        .properties(
            PrivateDnsNamespaceProperties::builder()
                .dns_properties(
                    PrivateDnsPropertiesMutable::builder()
                        .soa(Soa::builder().ttl(60).build().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let private_id = namespace_of(&c, private.operation_id()).await;
    let p = c.get_namespace().id(&private_id).send().await.unwrap();
    let dns = p.namespace().unwrap().properties().unwrap().dns_properties().unwrap();
    assert!(dns.hosted_zone_id().unwrap().starts_with('Z'));
    assert_eq!(dns.soa().unwrap().ttl(), 60);
    c.create_public_dns_namespace().name("example.com").send().await.unwrap();

    let all = c.list_namespaces().send().await.unwrap();
    let names: BTreeSet<_> = all.namespaces().iter().filter_map(|n| n.name()).collect();
    assert_eq!(names, BTreeSet::from(["shop", "corp.internal", "example.com"]));
    let private_only = c
        .list_namespaces()
        .filters(
            NamespaceFilter::builder().name(NamespaceFilterName::Type).values("DNS_PRIVATE").build().unwrap(),
        )
        .send()
        .await
        .unwrap();
    let names: Vec<_> = private_only.namespaces().iter().filter_map(|n| n.name()).collect();
    assert_eq!(names, ["corp.internal"]);
    let begins = c
        .list_namespaces()
        .filters(
            NamespaceFilter::builder()
                .name(NamespaceFilterName::Name)
                .condition(FilterCondition::BeginsWith)
                .values("ex")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(begins.namespaces().len(), 1);
    let in_err = c
        .list_namespaces()
        .filters(
            NamespaceFilter::builder()
                .name(NamespaceFilterName::Type)
                .condition(FilterCondition::In)
                .values("HTTP")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&in_err), "InvalidInput");

    let update = c
        .update_http_namespace()
        .id(&ns_id)
        .namespace(sd::types::HttpNamespaceChange::builder().description("renamed").build().unwrap())
        .send()
        .await
        .unwrap();
    let op = c.get_operation().operation_id(update.operation_id().unwrap()).send().await.unwrap();
    assert_eq!(op.operation().unwrap().r#type(), Some(&sd::types::OperationType::UpdateNamespace));
    let ns = c.get_namespace().id(&ns_id).send().await.unwrap();
    assert_eq!(ns.namespace().unwrap().description(), Some("renamed"));
    let wrong_type = c
        .update_http_namespace()
        .id(&private_id)
        .namespace(sd::types::HttpNamespaceChange::builder().description("x").build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&wrong_type), "InvalidInput");

    let soa = |ttl: i64| {
        sd::types::PrivateDnsNamespacePropertiesChange::builder()
            .dns_properties(
                sd::types::PrivateDnsPropertiesMutableChange::builder()
                    .soa(sd::types::SoaChange::builder().ttl(ttl).build().unwrap())
                    .build(),
            )
            .build()
    };
    c.update_private_dns_namespace()
        .id(&private_id)
        .namespace(
            sd::types::PrivateDnsNamespaceChange::builder()
                .description("vpc zone")
                .properties(soa(120))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let p = c.get_namespace().id(&private_id).send().await.unwrap();
    let p = p.namespace().unwrap();
    assert_eq!(p.description(), Some("vpc zone"));
    assert_eq!(p.properties().unwrap().dns_properties().unwrap().soa().unwrap().ttl(), 120);

    let dup = c.create_http_namespace().name("shop").send().await.unwrap_err();
    assert_eq!(code(&dup), "NamespaceAlreadyExists");

    let deleted = c.delete_namespace().id(&ns_id).send().await.unwrap();
    let op = c.get_operation().operation_id(deleted.operation_id().unwrap()).send().await.unwrap();
    assert_eq!(op.operation().unwrap().r#type(), Some(&sd::types::OperationType::DeleteNamespace));
    let gone = c.get_namespace().id(&ns_id).send().await.unwrap_err();
    assert_eq!(code(&gone), "NamespaceNotFound");
    let gone = c.delete_namespace().id(&ns_id).send().await.unwrap_err();
    assert_eq!(code(&gone), "NamespaceNotFound");
    let unknown_op = c.get_operation().operation_id("nope").send().await.unwrap_err();
    assert_eq!(code(&unknown_op), "OperationNotFound");
}

#[tokio::test]
async fn services_lifecycle_and_errors() {
    let server = Server::start(&[]);
    let c = server.client();
    let private = c.create_private_dns_namespace().name("svc.internal").vpc("vpc-1").send().await.unwrap();
    let ns = namespace_of(&c, private.operation_id()).await;

    let dns = |ttl: i64| {
        DnsConfig::builder()
            .routing_policy(RoutingPolicy::Multivalue)
            .dns_records(DnsRecord::builder().r#type(RecordType::A).ttl(ttl).build().unwrap())
            .dns_records(DnsRecord::builder().r#type(RecordType::Srv).ttl(ttl).build().unwrap())
            .build()
            .unwrap()
    };
    let created = c.create_service().name("api").namespace_id(&ns).dns_config(dns(10)).send().await.unwrap();
    let svc = created.service().unwrap();
    let svc_id = svc.id().unwrap().to_string();
    assert!(svc_id.starts_with("srv-") && svc_id.len() == 20, "{svc_id}");
    assert_eq!(svc.r#type(), Some(&sd::types::ServiceType::DnsHttp));
    assert_eq!(svc.namespace_id(), Some(ns.as_str()));
    assert_eq!(svc.instance_count(), Some(0));
    assert!(svc.arn().unwrap().ends_with(&format!(":service/{svc_id}")));

    // DNS names are case-insensitive, so a DNS namespace refuses names differing only by case.
    let dup = c.create_service().name("API").namespace_id(&ns).dns_config(dns(10)).send().await.unwrap_err();
    assert_eq!(code(&dup), "ServiceAlreadyExists");
    let err = c
        .create_service()
        .name("x")
        .namespace_id("ns-doesnotexist0000")
        .dns_config(dns(1))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NamespaceNotFound");
    let err = c
        .create_service()
        .name("hc")
        .namespace_id(&ns)
        .dns_config(dns(1))
        .health_check_config(HealthCheckConfig::builder().r#type(HealthCheckType::Http).build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidInput", "Route 53 health checks are not for private namespaces");
    let cname = DnsConfig::builder()
        .dns_records(DnsRecord::builder().r#type(RecordType::Cname).ttl(5).build().unwrap())
        .build()
        .unwrap();
    let err = c.create_service().name("cn").namespace_id(&ns).dns_config(cname).send().await.unwrap_err();
    assert_eq!(code(&err), "InvalidInput");
    assert!(message(&err).contains("WEIGHTED"), "{}", message(&err));
    let err =
        c.create_service().name("bad name!").namespace_id(&ns).dns_config(dns(1)).send().await.unwrap_err();
    assert_eq!(code(&err), "InvalidInput");
    assert!(message(&err).contains("Name"));

    let other = c
        .create_service()
        .name("web")
        .namespace_id(&ns)
        .r#type(sd::types::ServiceTypeOption::Http)
        .send()
        .await
        .unwrap();
    assert_eq!(other.service().unwrap().r#type(), Some(&sd::types::ServiceType::Http));
    let listed = c
        .list_services()
        .filters(ServiceFilter::builder().name(ServiceFilterName::NamespaceId).values(&ns).build().unwrap())
        .send()
        .await
        .unwrap();
    let names: BTreeSet<_> = listed.services().iter().filter_map(|s| s.name()).collect();
    assert_eq!(names, BTreeSet::from(["api", "web"]));

    let updated = c
        .update_service()
        .id(&svc_id)
        .service(
            sd::types::ServiceChange::builder()
                .description("v2")
                .dns_config(
                    sd::types::DnsConfigChange::builder()
                        .dns_records(DnsRecord::builder().r#type(RecordType::A).ttl(30).build().unwrap())
                        .dns_records(DnsRecord::builder().r#type(RecordType::Srv).ttl(30).build().unwrap())
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let op = c.get_operation().operation_id(updated.operation_id().unwrap()).send().await.unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.r#type(), Some(&sd::types::OperationType::UpdateService));
    assert_eq!(op.targets().unwrap()[&sd::types::OperationTargetType::Service], svc_id);
    let got = c.get_service().id(&svc_id).send().await.unwrap();
    let got = got.service().unwrap();
    assert_eq!(got.description(), Some("v2"));
    assert!(got.dns_config().unwrap().dns_records().iter().all(|r| r.ttl() == 30));

    register(&c, &svc_id, "i-1", &[("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80")]).await;
    let in_use = c.delete_service().id(&svc_id).send().await.unwrap_err();
    assert_eq!(code(&in_use), "ResourceInUse");
    let in_use = c.delete_namespace().id(&ns).send().await.unwrap_err();
    assert_eq!(code(&in_use), "ResourceInUse");
    c.deregister_instance().service_id(&svc_id).instance_id("i-1").send().await.unwrap();
    c.delete_service().id(&svc_id).send().await.unwrap();
    let gone = c.get_service().id(&svc_id).send().await.unwrap_err();
    assert_eq!(code(&gone), "ServiceNotFound");
    let gone = c.delete_service().id(&svc_id).send().await.unwrap_err();
    assert_eq!(code(&gone), "ServiceNotFound");
}

#[tokio::test]
async fn service_attributes() {
    let server = Server::start(&[]);
    let c = server.client();
    let ns = http_namespace(&c, "attrs").await;
    let svc = custom_health_service(&c, &ns, "api").await;
    c.update_service_attributes()
        .service_id(&svc)
        .attributes("grpc_config", "[]")
        .attributes("team", "core")
        .send()
        .await
        .unwrap();
    let got = c.get_service_attributes().service_id(&svc).send().await.unwrap();
    let got = got.service_attributes().unwrap();
    assert!(got.service_arn().unwrap().ends_with(&svc));
    assert_eq!(got.attributes().unwrap().len(), 2);
    c.delete_service_attributes().service_id(&svc).attributes("team").send().await.unwrap();
    let got = c.get_service_attributes().service_id(&svc).send().await.unwrap();
    let keys: Vec<_> = got.service_attributes().unwrap().attributes().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["grpc_config"]);

    let mut many = c.update_service_attributes().service_id(&svc);
    for i in 0..30 {
        many = many.attributes(format!("k{i}"), "v");
    }
    let err = many.send().await.unwrap_err();
    assert_eq!(code(&err), "ServiceAttributesLimitExceededException");
    let err = c.get_service_attributes().service_id("srv-none").send().await.unwrap_err();
    assert_eq!(code(&err), "ServiceNotFound");
}

#[tokio::test]
async fn instances_health_and_discovery() {
    let server = Server::start(&[]);
    let c = server.client();
    let ns = http_namespace(&c, "lab").await;
    let svc = custom_health_service(&c, &ns, "web").await;

    let r0 = revision(&c, "lab", "web").await;
    let op = register(
        &c,
        &svc,
        "web-1",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.11"),
            ("AWS_INSTANCE_PORT", "8080"),
            ("version", "v1"),
            ("az", "use1-az1"),
        ],
    )
    .await;
    let op = c.get_operation().operation_id(op).send().await.unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.r#type(), Some(&sd::types::OperationType::RegisterInstance));
    assert_eq!(op.targets().unwrap()[&sd::types::OperationTargetType::Instance], "web-1");
    let r1 = revision(&c, "lab", "web").await;
    assert_ne!(r1, r0, "RegisterInstance moves the revision");
    register(
        &c,
        &svc,
        "web-2",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.12"),
            ("AWS_INSTANCE_PORT", "8080"),
            ("version", "v2"),
            ("az", "use1-az2"),
        ],
    )
    .await;
    let r2 = revision(&c, "lab", "web").await;
    assert_ne!(r2, r1);

    let listed = c.list_instances().service_id(&svc).send().await.unwrap();
    let ids: Vec<_> = listed.instances().iter().filter_map(|i| i.id()).collect();
    assert_eq!(ids, ["web-1", "web-2"]);
    let got = c.get_instance().service_id(&svc).instance_id("web-2").send().await.unwrap();
    assert_eq!(got.instance().unwrap().attributes().unwrap()["version"], "v2");
    // A service ARN works where its id does.
    let arn = c.get_service().id(&svc).send().await.unwrap().service().unwrap().arn().unwrap().to_string();
    c.get_instance().service_id(&arn).instance_id("web-1").send().await.unwrap();

    assert_eq!(discover(&c, "lab", "web", Some(HealthStatusFilter::Healthy)).await, set(&["web-1", "web-2"]));
    let v2 = c
        .discover_instances()
        .namespace_name("lab")
        .service_name("web")
        .query_parameters("version", "v2")
        .send()
        .await
        .unwrap();
    assert_eq!(v2.instances().len(), 1);
    assert_eq!(v2.instances()[0].instance_id(), Some("web-2"));
    assert_eq!(v2.instances()[0].namespace_name(), Some("lab"));
    assert_eq!(v2.instances()[0].health_status(), Some(&sd::types::HealthStatus::Healthy));
    assert_eq!(v2.instances_revision(), Some(r2));
    // OptionalParameters narrow only when something matches them.
    let opt = c
        .discover_instances()
        .namespace_name("lab")
        .service_name("web")
        .optional_parameters("az", "use1-az1")
        .send()
        .await
        .unwrap();
    assert_eq!(opt.instances().len(), 1);
    let opt = c
        .discover_instances()
        .namespace_name("lab")
        .service_name("web")
        .optional_parameters("az", "nowhere")
        .send()
        .await
        .unwrap();
    assert_eq!(opt.instances().len(), 2);
    let one =
        c.discover_instances().namespace_name("lab").service_name("web").max_results(1).send().await.unwrap();
    assert_eq!(one.instances().len(), 1);

    c.update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("web-1")
        .status(sd::types::CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap();
    assert_eq!(discover(&c, "lab", "web", Some(HealthStatusFilter::Healthy)).await, set(&["web-2"]));
    assert_eq!(discover(&c, "lab", "web", Some(HealthStatusFilter::Unhealthy)).await, set(&["web-1"]));
    assert_eq!(discover(&c, "lab", "web", Some(HealthStatusFilter::All)).await, set(&["web-1", "web-2"]));
    assert_eq!(discover(&c, "lab", "web", Some(HealthStatusFilter::HealthyOrElseAll)).await, set(&["web-2"]));
    assert_eq!(discover(&c, "lab", "web", None).await, set(&["web-2"]), "HEALTHY is the default");
    assert_eq!(revision(&c, "lab", "web").await, r2, "health changes do not move the revision");
    let health = c.get_instances_health_status().service_id(&svc).send().await.unwrap();
    let status: BTreeMap<_, _> =
        health.status().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().to_string())).collect();
    assert_eq!(
        status,
        BTreeMap::from([("web-1".into(), "UNHEALTHY".into()), ("web-2".into(), "HEALTHY".into())])
    );
    let only = c.get_instances_health_status().service_id(&svc).instances("web-2").send().await.unwrap();
    assert_eq!(only.status().unwrap().len(), 1);
    let err = c.get_instances_health_status().service_id(&svc).instances("nope").send().await.unwrap_err();
    assert_eq!(code(&err), "InstanceNotFound");

    c.update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("web-2")
        .status(sd::types::CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap();
    assert_eq!(discover(&c, "lab", "web", Some(HealthStatusFilter::Healthy)).await, set(&[]));
    assert_eq!(
        discover(&c, "lab", "web", Some(HealthStatusFilter::HealthyOrElseAll)).await,
        set(&["web-1", "web-2"]),
        "fails open"
    );
    c.update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("web-1")
        .status(sd::types::CustomHealthStatus::Healthy)
        .send()
        .await
        .unwrap();
    assert_eq!(discover(&c, "lab", "web", Some(HealthStatusFilter::Healthy)).await, set(&["web-1"]));

    // Re-registering an id updates it in place and moves the revision.
    register(
        &c,
        &svc,
        "web-1",
        &[("AWS_INSTANCE_IPV4", "10.0.0.21"), ("AWS_INSTANCE_PORT", "8080"), ("version", "v3")],
    )
    .await;
    let listed = c.list_instances().service_id(&svc).send().await.unwrap();
    assert_eq!(listed.instances().len(), 2);
    assert_eq!(listed.instances()[0].attributes().unwrap()["AWS_INSTANCE_IPV4"], "10.0.0.21");
    let r3 = revision(&c, "lab", "web").await;
    assert_ne!(r3, r2);

    let op = c.deregister_instance().service_id(&svc).instance_id("web-2").send().await.unwrap();
    let op = c.get_operation().operation_id(op.operation_id().unwrap()).send().await.unwrap();
    assert_eq!(op.operation().unwrap().r#type(), Some(&sd::types::OperationType::DeregisterInstance));
    assert_ne!(revision(&c, "lab", "web").await, r3, "DeregisterInstance moves the revision");
    let err = c.get_instance().service_id(&svc).instance_id("web-2").send().await.unwrap_err();
    assert_eq!(code(&err), "InstanceNotFound");
    let err = c.deregister_instance().service_id(&svc).instance_id("web-2").send().await.unwrap_err();
    assert_eq!(code(&err), "InstanceNotFound");
    let err = c
        .update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("web-2")
        .status(sd::types::CustomHealthStatus::Healthy)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InstanceNotFound");
    let err = c.discover_instances().namespace_name("nope").service_name("web").send().await.unwrap_err();
    assert_eq!(code(&err), "NamespaceNotFound");
    let err = c.discover_instances().namespace_name("lab").service_name("nope").send().await.unwrap_err();
    assert_eq!(code(&err), "ServiceNotFound");
    let err = c
        .register_instance()
        .service_id("srv-none")
        .instance_id("x")
        .attributes("a", "b")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "ServiceNotFound");
}

#[tokio::test]
async fn health_filter_is_ignored_without_a_health_check() {
    let server = Server::start(&[]);
    let c = server.client();
    let ns = http_namespace(&c, "plain").await;
    let svc = c
        .create_service()
        .name("db")
        .namespace_id(&ns)
        .send()
        .await
        .unwrap()
        .service()
        .unwrap()
        .id()
        .unwrap()
        .to_string();
    register(&c, &svc, "db-1", &[("AWS_INSTANCE_IPV4", "10.1.0.1")]).await;
    let out = c
        .discover_instances()
        .namespace_name("plain")
        .service_name("db")
        .health_status(HealthStatusFilter::Unhealthy)
        .send()
        .await
        .unwrap();
    assert_eq!(out.instances().len(), 1);
    assert_eq!(out.instances()[0].health_status().map(|h| h.as_str()), Some("UNKNOWN"));
    let err = c
        .update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("db-1")
        .status(sd::types::CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "CustomHealthNotFound");
}

#[tokio::test]
async fn init_health_status_attribute() {
    let server = Server::start(&[]);
    let c = server.client();
    let ns = http_namespace(&c, "init").await;
    let svc = custom_health_service(&c, &ns, "w").await;
    register(&c, &svc, "w-1", &[("AWS_INIT_HEALTH_STATUS", "UNHEALTHY")]).await;
    register(&c, &svc, "w-2", &[]).await;
    assert_eq!(discover(&c, "init", "w", Some(HealthStatusFilter::Healthy)).await, set(&["w-2"]));
}

#[tokio::test]
async fn register_instance_validation() {
    let server = Server::start(&[]);
    let c = server.client();
    let op = c.create_private_dns_namespace().name("v.internal").vpc("vpc-1").send().await.unwrap();
    let ns = namespace_of(&c, op.operation_id()).await;
    let dns = DnsConfig::builder()
        .dns_records(DnsRecord::builder().r#type(RecordType::A).ttl(5).build().unwrap())
        .dns_records(DnsRecord::builder().r#type(RecordType::Srv).ttl(5).build().unwrap())
        .build()
        .unwrap();
    let svc = c
        .create_service()
        .name("s")
        .namespace_id(&ns)
        .dns_config(dns)
        .send()
        .await
        .unwrap()
        .service()
        .unwrap()
        .id()
        .unwrap()
        .to_string();

    let many: Vec<(String, String)> = (0..31).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let mut many_attrs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    many_attrs.extend([("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80")]);
    let long = "x".repeat(1025);
    let big: Vec<(String, String)> = (0..6).map(|i| (format!("big{i}"), "y".repeat(1000))).collect();
    let mut big_attrs: Vec<(&str, &str)> = big.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    big_attrs.extend([("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80")]);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("i-1", vec![("AWS_INSTANCE_IPV4", "10.0.0.300"), ("AWS_INSTANCE_PORT", "80")], "AWS_INSTANCE_IPV4"),
        (
            "i-1",
            vec![
                ("AWS_INSTANCE_IPV4", "10.0.0.1"),
                ("AWS_INSTANCE_PORT", "80"),
                ("AWS_INSTANCE_IPV6", "nope"),
            ],
            "AWS_INSTANCE_IPV6",
        ),
        ("i-1", vec![("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "70000")], "AWS_INSTANCE_PORT"),
        ("i-1", vec![("AWS_INSTANCE_PORT", "80")], "AWS_INSTANCE_IPV4"),
        ("i-1", vec![("AWS_INSTANCE_IPV4", "10.0.0.1")], "AWS_INSTANCE_PORT"),
        (
            "i-1",
            vec![("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80"), ("AWS_FOO", "1")],
            "AWS_FOO",
        ),
        (
            "i-1",
            vec![("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80"), ("k", " leading")],
            "'k'",
        ),
        (
            "i-1",
            vec![("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80"), ("k", long.as_str())],
            "'k'",
        ),
        ("i-1", many_attrs, "31 custom attributes"),
        ("i-1", big_attrs, "total"),
        ("bad id!", vec![("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80")], "InstanceId"),
    ];
    for (id, pairs, needle) in cases {
        let err = c
            .register_instance()
            .service_id(&svc)
            .instance_id(id)
            .set_attributes(Some(attrs(&pairs)))
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&err), "InvalidInput", "{needle}");
        assert!(message(&err).contains(needle), "message {:?} should name {needle}", message(&err));
    }
    assert_eq!(
        c.list_instances().service_id(&svc).send().await.unwrap().instances().len(),
        0,
        "nothing was registered"
    );
    register(&c, &svc, "i-1", &[("AWS_INSTANCE_IPV4", "10.0.0.1"), ("AWS_INSTANCE_PORT", "80")]).await;
}

#[tokio::test]
async fn pagination() {
    let server = Server::start(&[]);
    let c = server.client();
    for i in 0..5 {
        c.create_http_namespace().name(format!("page-{i}")).send().await.unwrap();
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c.list_namespaces().max_results(2).set_next_token(token.clone()).send().await.unwrap();
        assert!(page.namespaces().len() <= 2);
        names.extend(page.namespaces().iter().filter_map(|n| n.name().map(str::to_string)));
        pages += 1;
        match page.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["page-0", "page-1", "page-2", "page-3", "page-4"]);
    // The SDK's paginator follows the same tokens.
    let pages: Vec<_> = c.list_namespaces().max_results(2).into_paginator().send().collect::<Vec<_>>().await;
    assert_eq!(pages.iter().map(|p| p.as_ref().unwrap().namespaces().len()).sum::<usize>(), 5);
    let err = c.list_namespaces().next_token("not-a-token").send().await.unwrap_err();
    assert_eq!(code(&err), "InvalidInput");
    let err = c.list_namespaces().max_results(101).send().await.unwrap_err();
    assert_eq!(code(&err), "InvalidInput");

    let ns = http_namespace(&c, "paged").await;
    let svc = custom_health_service(&c, &ns, "s").await;
    for i in 0..7 {
        register(&c, &svc, &format!("i-{i}"), &[]).await;
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page =
            c.list_instances().service_id(&svc).max_results(3).set_next_token(token).send().await.unwrap();
        seen.extend(page.instances().iter().filter_map(|i| i.id().map(str::to_string)));
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 7);
    let health = c.get_instances_health_status().service_id(&svc).max_results(4).send().await.unwrap();
    assert_eq!(health.status().unwrap().len(), 4);
    assert!(health.next_token().is_some());
    let ops = c.list_operations().max_results(5).send().await.unwrap();
    assert_eq!(ops.operations().len(), 5);
    assert!(ops.next_token().is_some());
}

#[tokio::test]
async fn list_operations_filters() {
    let server = Server::start(&[]);
    let c = server.client();
    let ns = http_namespace(&c, "ops").await;
    let svc = custom_health_service(&c, &ns, "s").await;
    register(&c, &svc, "i-1", &[]).await;
    c.deregister_instance().service_id(&svc).instance_id("i-1").send().await.unwrap();
    let filtered = |name: OperationFilterName, cond: Option<FilterCondition>, values: Vec<String>| {
        c.list_operations()
            .filters(
                OperationFilter::builder()
                    .name(name)
                    .set_condition(cond)
                    .set_values(Some(values))
                    .build()
                    .unwrap(),
            )
            .send()
    };
    let regs = filtered(
        OperationFilterName::Type,
        Some(FilterCondition::In),
        vec!["REGISTER_INSTANCE".into(), "DEREGISTER_INSTANCE".into()],
    )
    .await
    .unwrap();
    assert_eq!(regs.operations().len(), 2);
    let by_ns = filtered(OperationFilterName::NamespaceId, None, vec![ns.clone()]).await.unwrap();
    assert_eq!(by_ns.operations().len(), 3, "create + register + deregister");
    let by_svc = filtered(OperationFilterName::ServiceId, None, vec![svc.clone()]).await.unwrap();
    assert_eq!(by_svc.operations().len(), 2);
    let ok = filtered(OperationFilterName::Status, None, vec!["SUCCESS".into()]).await.unwrap();
    assert_eq!(ok.operations().len(), 3);
    let failed = filtered(OperationFilterName::Status, None, vec!["FAIL".into()]).await.unwrap();
    assert_eq!(failed.operations().len(), 0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let window = filtered(
        OperationFilterName::UpdateDate,
        Some(FilterCondition::Between),
        vec![(now - 600).to_string(), (now + 600).to_string()],
    )
    .await
    .unwrap();
    assert_eq!(window.operations().len(), 3);
    let past = filtered(
        OperationFilterName::UpdateDate,
        Some(FilterCondition::Between),
        vec!["0".into(), "1000".into()],
    )
    .await
    .unwrap();
    assert_eq!(past.operations().len(), 0);
    let err = filtered(OperationFilterName::Type, None, vec!["EXPLODE".into()]).await.unwrap_err();
    assert_eq!(code(&err), "InvalidInput");
}

#[tokio::test]
async fn idempotency_tokens() {
    let server = Server::start(&[]);
    let c = server.client();
    let a = c.create_http_namespace().name("idem").creator_request_id("req-1").send().await.unwrap();
    let b = c.create_http_namespace().name("idem").creator_request_id("req-1").send().await.unwrap();
    assert_eq!(a.operation_id(), b.operation_id(), "a retry gets the first answer");
    assert_eq!(c.list_namespaces().send().await.unwrap().namespaces().len(), 1);
    let err = c.create_http_namespace().name("other").creator_request_id("req-1").send().await.unwrap_err();
    assert_eq!(code(&err), "DuplicateRequest");

    let ns = c.list_namespaces().send().await.unwrap().namespaces()[0].id().unwrap().to_string();
    let s1 =
        c.create_service().name("svc").namespace_id(&ns).creator_request_id("svc-req").send().await.unwrap();
    let s2 =
        c.create_service().name("svc").namespace_id(&ns).creator_request_id("svc-req").send().await.unwrap();
    assert_eq!(s1.service().unwrap().id(), s2.service().unwrap().id());
    let err = c
        .create_service()
        .name("svc")
        .namespace_id(&ns)
        .creator_request_id("another")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "ServiceAlreadyExists");
    let svc = s1.service().unwrap().id().unwrap().to_string();

    let reg = |id: &'static str, token: &'static str| {
        c.register_instance()
            .service_id(&svc)
            .instance_id(id)
            .creator_request_id(token)
            .attributes("AWS_INSTANCE_IPV4", "10.0.0.1")
            .send()
    };
    let first = reg("i-1", "tok-1").await.unwrap();
    let rev = revision(&c, "idem", "svc").await;
    let again = reg("i-1", "tok-1").await.unwrap();
    assert_eq!(first.operation_id(), again.operation_id());
    assert_eq!(revision(&c, "idem", "svc").await, rev, "a replay changes nothing");
    let err = reg("i-2", "tok-1").await.unwrap_err();
    assert_eq!(code(&err), "DuplicateRequest");
    assert_eq!(c.list_instances().service_id(&svc).send().await.unwrap().instances().len(), 1);
}

#[tokio::test]
async fn tags() {
    let server = Server::start(&[]);
    let c = server.client();
    let ns = http_namespace(&c, "tagged").await;
    let arn = c.get_namespace().id(&ns).send().await.unwrap().namespace().unwrap().arn().unwrap().to_string();
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().unwrap();
    c.tag_resource()
        .resource_arn(&arn)
        .tags(tag("team", "core"))
        .tags(tag("env", "dev"))
        .send()
        .await
        .unwrap();
    let listed = c.list_tags_for_resource().resource_arn(&arn).send().await.unwrap();
    let keys: Vec<_> = listed.tags().iter().map(|t| t.key().to_string()).collect();
    assert_eq!(keys, ["env", "team"]);
    c.untag_resource().resource_arn(&arn).tag_keys("env").send().await.unwrap();
    assert_eq!(c.list_tags_for_resource().resource_arn(&arn).send().await.unwrap().tags().len(), 1);

    let missing = arn.replace(&ns, "ns-0000000000000000");
    let err = c.list_tags_for_resource().resource_arn(&missing).send().await.unwrap_err();
    assert_eq!(code(&err), "ResourceNotFoundException");
    let err = c.tag_resource().resource_arn(&arn).tags(tag("aws:owner", "x")).send().await.unwrap_err();
    assert_eq!(code(&err), "InvalidInput");
    let mut many = c.tag_resource().resource_arn(&arn);
    for i in 0..50 {
        many = many.tags(tag(&format!("k{i}"), "v"));
    }
    let err = many.send().await.unwrap_err();
    assert_eq!(code(&err), "TooManyTagsException");
    assert_eq!(
        c.list_tags_for_resource().resource_arn(&arn).send().await.unwrap().tags().len(),
        1,
        "a rejected call adds no tag"
    );

    let svc = c.create_service().name("s").namespace_id(&ns).tags(tag("tier", "web")).send().await.unwrap();
    let svc_arn = svc.service().unwrap().arn().unwrap();
    assert_eq!(c.list_tags_for_resource().resource_arn(svc_arn).send().await.unwrap().tags().len(), 1);
}

#[tokio::test]
async fn quotas_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("quota.toml");
    std::fs::write(&config, "[registry.quotas]\nnamespaces = 2\ninstances_per_service = 2\n").unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let c = server.client();
    let ns = http_namespace(&c, "q1").await;
    c.create_http_namespace().name("q2").send().await.unwrap();
    let err = c.create_http_namespace().name("q3").send().await.unwrap_err();
    assert_eq!(code(&err), "ResourceLimitExceeded");
    let svc = custom_health_service(&c, &ns, "s").await;
    register(&c, &svc, "a", &[]).await;
    register(&c, &svc, "b", &[]).await;
    let err = c
        .register_instance()
        .service_id(&svc)
        .instance_id("c")
        .attributes("k", "v")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "ResourceLimitExceeded");
    register(&c, &svc, "a", &[("k", "updated")]).await; // an update is not a new instance
}

#[tokio::test]
async fn custom_health_delay_emulates_aws() {
    let server = Server::start(&["--custom-health-delay-ms", "1500"]);
    let c = server.client();
    let ns = http_namespace(&c, "slow").await;
    let svc = custom_health_service(&c, &ns, "s").await;
    register(&c, &svc, "a", &[]).await;
    register(&c, &svc, "b", &[]).await;
    let set_health = |id: &'static str, s: sd::types::CustomHealthStatus| {
        c.update_instance_custom_health_status().service_id(&svc).instance_id(id).status(s).send()
    };
    let started = Instant::now();
    set_health("a", sd::types::CustomHealthStatus::Unhealthy).await.unwrap();
    set_health("b", sd::types::CustomHealthStatus::Unhealthy).await.unwrap();
    // Changing back within the wait cancels the change.
    set_health("b", sd::types::CustomHealthStatus::Healthy).await.unwrap();
    if started.elapsed() < Duration::from_millis(1200) {
        assert_eq!(
            discover(&c, "slow", "s", Some(HealthStatusFilter::Healthy)).await,
            set(&["a", "b"]),
            "not yet"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let healthy = discover(&c, "slow", "s", Some(HealthStatusFilter::Healthy)).await;
        if healthy == set(&["b"]) {
            break;
        }
        assert!(Instant::now() < deadline, "the delayed change never took effect: {healthy:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500), "it waited the configured delay");
}
