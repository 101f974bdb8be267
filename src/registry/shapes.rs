//! Cloud Map's JSON 1.1 request and response shapes (API version 2017-03-14).
//!
//! Requests are lenient at the serde level: members the model marks as required are `Option`s here
//! and are checked by the operations, so a missing member is AWS's `InvalidInput` naming the field,
//! while a member of the wrong JSON type is a `SerializationException`. Enums are strings for the
//! same reason. Responses omit absent members, as AWS does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Attributes = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Filter {
    pub name: Option<String>,
    pub values: Option<Vec<String>>,
    pub condition: Option<String>,
}

// ---- namespaces -------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Soa {
    #[serde(rename = "TTL")]
    pub ttl: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DnsPropertiesInput {
    #[serde(rename = "SOA")]
    pub soa: Option<Soa>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DnsNamespacePropertiesInput {
    pub dns_properties: Option<DnsPropertiesInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNamespaceRequest {
    pub name: Option<String>,
    pub creator_request_id: Option<String>,
    pub description: Option<String>,
    /// Private DNS namespaces only.
    pub vpc: Option<String>,
    pub tags: Option<Vec<Tag>>,
    /// DNS namespaces only.
    pub properties: Option<DnsNamespacePropertiesInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IdRequest {
    pub id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NamespaceChange {
    pub description: Option<String>,
    pub properties: Option<DnsNamespacePropertiesInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateNamespaceRequest {
    pub id: Option<String>,
    pub updater_request_id: Option<String>,
    pub namespace: Option<NamespaceChange>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListRequest {
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub filters: Option<Vec<Filter>>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DnsProperties {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosted_zone_id: Option<String>,
    #[serde(rename = "SOA", skip_serializing_if = "Option::is_none")]
    pub soa: Option<Soa>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HttpProperties {
    pub http_name: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NamespaceProperties {
    pub dns_properties: DnsProperties,
    pub http_properties: HttpProperties,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Namespace {
    pub id: String,
    pub arn: String,
    pub resource_owner: String,
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub service_count: i64,
    pub properties: NamespaceProperties,
    pub create_date: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator_request_id: Option<String>,
}

// ---- services ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct DnsRecord {
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    #[serde(rename = "TTL")]
    pub ttl: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DnsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_policy: Option<String>,
    pub dns_records: Option<Vec<DnsRecord>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheckConfig {
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheckCustomConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateServiceRequest {
    pub name: Option<String>,
    pub namespace_id: Option<String>,
    pub creator_request_id: Option<String>,
    pub description: Option<String>,
    pub dns_config: Option<DnsConfig>,
    pub health_check_config: Option<HealthCheckConfig>,
    pub health_check_custom_config: Option<HealthCheckCustomConfig>,
    pub tags: Option<Vec<Tag>>,
    #[serde(rename = "Type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DnsConfigChange {
    pub dns_records: Option<Vec<DnsRecord>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceChange {
    pub description: Option<String>,
    pub dns_config: Option<DnsConfigChange>,
    pub health_check_config: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateServiceRequest {
    pub id: Option<String>,
    pub service: Option<ServiceChange>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    pub id: String,
    pub arn: String,
    pub resource_owner: String,
    pub name: String,
    pub namespace_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub instance_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_config: Option<HealthCheckConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_custom_config: Option<HealthCheckCustomConfig>,
    pub create_date: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator_request_id: Option<String>,
    pub created_by_account: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceIdRequest {
    pub service_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateServiceAttributesRequest {
    pub service_id: Option<String>,
    pub attributes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteServiceAttributesRequest {
    pub service_id: Option<String>,
    pub attributes: Option<Vec<String>>,
}

// ---- instances --------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterInstanceRequest {
    pub service_id: Option<String>,
    pub instance_id: Option<String>,
    pub creator_request_id: Option<String>,
    pub attributes: Option<Attributes>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceRequest {
    pub service_id: Option<String>,
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListInstancesRequest {
    pub service_id: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetInstancesHealthStatusRequest {
    pub service_id: Option<String>,
    pub instances: Option<Vec<String>>,
    pub max_results: Option<i64>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateInstanceCustomHealthStatusRequest {
    pub service_id: Option<String>,
    pub instance_id: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiscoverInstancesRequest {
    pub namespace_name: Option<String>,
    pub service_name: Option<String>,
    pub max_results: Option<i64>,
    pub query_parameters: Option<Attributes>,
    pub optional_parameters: Option<Attributes>,
    pub health_status: Option<String>,
    pub owner_account: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator_request_id: Option<String>,
    pub attributes: Attributes,
    pub created_by_account: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceSummary {
    pub id: String,
    pub attributes: Attributes,
    pub created_by_account: String,
}

/// One instance as DiscoverInstances returns it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HttpInstanceSummary {
    pub instance_id: String,
    pub namespace_name: String,
    pub service_name: String,
    pub health_status: String,
    pub attributes: Attributes,
}

// ---- operations -------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetOperationRequest {
    pub operation_id: Option<String>,
    pub owner_account: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Operation {
    pub id: String,
    pub owner_account: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub create_date: f64,
    pub update_date: f64,
    pub targets: BTreeMap<String, String>,
}

// ---- tags -------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TagResourceRequest {
    #[serde(rename = "ResourceARN")]
    pub resource_arn: Option<String>,
    #[serde(rename = "Tags")]
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UntagResourceRequest {
    #[serde(rename = "ResourceARN")]
    pub resource_arn: Option<String>,
    #[serde(rename = "TagKeys")]
    pub tag_keys: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceArnRequest {
    #[serde(rename = "ResourceARN")]
    pub resource_arn: Option<String>,
}
