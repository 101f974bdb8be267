//! The registry's HTTP face: AWS JSON 1.1 over `POST /`, the operation named by
//! `X-Amz-Target: Route53AutoNaming_v20170314.<Operation>`, as the aws CLI, boto3 and the AWS SDKs
//! send it. Each request is decoded into its shape, run on the blocking pool, and answered with
//! the operation's JSON or AWS's error shape (`__type`, `Message`). Bad requests are 400s that
//! change nothing.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use super::namespaces::NamespaceKind;
use super::{Registry, RegistryError};

const TARGET_PREFIX: &str = "Route53AutoNaming_v20170314.";
/// Far above any valid request (attributes total 5,000 characters; 200 tags), far below harm.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

pub fn router(registry: Registry) -> Router {
    Router::new().fallback(handle).with_state(registry)
}

/// Serves the API on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

async fn handle(State(registry): State<Registry>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let operation = operation_name(&parts.headers).unwrap_or_default();
    let request_id = super::ids::operation_id()[..36].to_string();
    let span = tracing::debug_span!("api", op = %operation, request_id = %request_id);
    let result = async {
        if parts.method != axum::http::Method::POST {
            return Err(RegistryError::UnknownOperation(format!(
                "the Cloud Map API takes POST requests, not {}",
                parts.method
            )));
        }
        let body = read_body(body).await?;
        dispatch(&registry, &parts.headers, body).await
    }
    .instrument(span.clone())
    .await;
    let _enter = span.enter();
    let (status, body) = match result {
        Ok(value) => (StatusCode::OK, value),
        Err(e) => {
            if e.http_status() >= 500 {
                tracing::error!(error = %e, "registry request failed");
            } else {
                tracing::debug!(code = e.code(), error = %e, "registry request rejected");
            }
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            (status, e.body())
        }
    };
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", v);
    }
    response
}

fn operation_name(headers: &HeaderMap) -> Option<String> {
    let target = headers.get("x-amz-target")?.to_str().ok()?;
    Some(target.strip_prefix(TARGET_PREFIX).unwrap_or(target).to_string())
}

async fn read_body(body: Body) -> Result<Bytes, RegistryError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|e| {
        // The limit's own error type, wherever in the source chain axum put it.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut too_large = false;
        while let Some(s) = source {
            too_large |= s.is::<http_body_util::LengthLimitError>();
            source = s.source();
        }
        if too_large {
            RegistryError::invalid(format!("the request body exceeds {MAX_BODY_BYTES} bytes"))
        } else {
            RegistryError::Serialization(format!("the request body could not be read: {e}"))
        }
    })
}

/// Decodes the body into an operation's request shape, naming the member that does not fit.
fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, RegistryError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RegistryError::Serialization(format!("the request body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(RegistryError::Serialization("the request body must be a JSON object".into()));
    }
    serde_path_to_error::deserialize(value)
        .map_err(|e| RegistryError::Serialization(format!("member {}: {}", e.path(), e.inner())))
}

async fn dispatch(registry: &Registry, headers: &HeaderMap, body: Bytes) -> Result<Value, RegistryError> {
    let Some(target) = headers.get("x-amz-target") else {
        return Err(RegistryError::UnknownOperation("the X-Amz-Target header is missing".into()));
    };
    let target = target
        .to_str()
        .map_err(|_| RegistryError::UnknownOperation("the X-Amz-Target header is not text".into()))?;
    let Some(operation) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(RegistryError::UnknownOperation(format!(
            "X-Amz-Target '{target}' is not a Cloud Map ({TARGET_PREFIX}*) operation"
        )));
    };

    /// Decodes the body as the operation's shape, then runs the operation on the blocking pool.
    macro_rules! op {
        (|$r:ident, $req:ident: $shape:ty| $call:expr) => {{
            let $req: $shape = decode(&body)?;
            registry.call(move |$r| $call).await
        }};
    }
    use super::shapes::*;
    match operation {
        "CreateHttpNamespace" => {
            op!(|r, q: CreateNamespaceRequest| r.create_namespace(NamespaceKind::Http, q))
        }
        "CreatePrivateDnsNamespace" => {
            op!(|r, q: CreateNamespaceRequest| r.create_namespace(NamespaceKind::DnsPrivate, q))
        }
        "CreatePublicDnsNamespace" => {
            op!(|r, q: CreateNamespaceRequest| r.create_namespace(NamespaceKind::DnsPublic, q))
        }
        "GetNamespace" => op!(|r, q: IdRequest| r.get_namespace(q)),
        "ListNamespaces" => op!(|r, q: ListRequest| r.list_namespaces(q)),
        "UpdateHttpNamespace" => {
            op!(|r, q: UpdateNamespaceRequest| r.update_namespace(NamespaceKind::Http, q))
        }
        "UpdatePrivateDnsNamespace" => {
            op!(|r, q: UpdateNamespaceRequest| r.update_namespace(NamespaceKind::DnsPrivate, q))
        }
        "UpdatePublicDnsNamespace" => {
            op!(|r, q: UpdateNamespaceRequest| r.update_namespace(NamespaceKind::DnsPublic, q))
        }
        "DeleteNamespace" => op!(|r, q: IdRequest| r.delete_namespace(q)),
        "CreateService" => op!(|r, q: CreateServiceRequest| r.create_service(q)),
        "GetService" => op!(|r, q: IdRequest| r.get_service(q)),
        "ListServices" => op!(|r, q: ListRequest| r.list_services(q)),
        "UpdateService" => op!(|r, q: UpdateServiceRequest| r.update_service(q)),
        "DeleteService" => op!(|r, q: IdRequest| r.delete_service(q)),
        "GetServiceAttributes" => op!(|r, q: ServiceIdRequest| r.get_service_attributes(q)),
        "UpdateServiceAttributes" => {
            op!(|r, q: UpdateServiceAttributesRequest| r.update_service_attributes(q))
        }
        "DeleteServiceAttributes" => {
            op!(|r, q: DeleteServiceAttributesRequest| r.delete_service_attributes(q))
        }
        "RegisterInstance" => op!(|r, q: RegisterInstanceRequest| r.register_instance(q)),
        "DeregisterInstance" => op!(|r, q: InstanceRequest| r.deregister_instance(q)),
        "GetInstance" => op!(|r, q: InstanceRequest| r.get_instance(q)),
        "ListInstances" => op!(|r, q: ListInstancesRequest| r.list_instances(q)),
        "GetInstancesHealthStatus" => {
            op!(|r, q: GetInstancesHealthStatusRequest| r.get_instances_health_status(q))
        }
        "UpdateInstanceCustomHealthStatus" => {
            op!(|r, q: UpdateInstanceCustomHealthStatusRequest| r.update_instance_custom_health_status(q))
        }
        "DiscoverInstances" => op!(|r, q: DiscoverInstancesRequest| r.discover_instances(q)),
        "DiscoverInstancesRevision" => {
            op!(|r, q: DiscoverInstancesRequest| r.discover_instances_revision(q))
        }
        "GetOperation" => op!(|r, q: GetOperationRequest| r.get_operation(q)),
        "ListOperations" => op!(|r, q: ListRequest| r.list_operations(q)),
        "TagResource" => op!(|r, q: TagResourceRequest| r.tag_resource(q)),
        "UntagResource" => op!(|r, q: UntagResourceRequest| r.untag_resource(q)),
        "ListTagsForResource" => op!(|r, q: ResourceArnRequest| r.list_tags_for_resource(q)),
        other => Err(RegistryError::UnknownOperation(format!("'{other}' is not a Cloud Map operation"))),
    }
}
