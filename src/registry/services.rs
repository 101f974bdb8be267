//! Services: create, get, list, update, delete, and service attributes.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use super::error::{RegistryError, Result};
use super::namespaces::{self, NamespaceKind, NamespaceRow};
use super::operations::{self, Targets};
use super::paging::{self, Condition};
use super::shapes::{
    CreateServiceRequest, DeleteServiceAttributesRequest, DnsConfig, DnsRecord, HealthCheckConfig,
    HealthCheckCustomConfig, IdRequest, ListRequest, Service, ServiceIdRequest,
    UpdateServiceAttributesRequest, UpdateServiceRequest,
};
use super::{Ctx, Registry, ids, tags, validate};

/// How a service's instances report health, which decides what the HealthStatus filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMode {
    /// No health check: every instance is UNKNOWN and the HealthStatus filter is ignored.
    None,
    /// HealthCheckCustomConfig: UpdateInstanceCustomHealthStatus sets it.
    Custom,
    /// HealthCheckConfig (a Route 53 health check in AWS).
    Route53,
}

pub struct ServiceRow {
    pub seq: i64,
    pub namespace_id: String,
    pub revision: i64,
    pub shape: Service,
}

impl ServiceRow {
    pub fn id(&self) -> &str {
        &self.shape.id
    }

    pub fn health_mode(&self) -> HealthMode {
        if self.shape.health_check_custom_config.is_some() {
            HealthMode::Custom
        } else if self.shape.health_check_config.is_some() {
            HealthMode::Route53
        } else {
            HealthMode::None
        }
    }

    pub fn record_types(&self) -> BTreeSet<String> {
        record_types(&self.shape.dns_config)
    }

    pub fn routing_policy(&self) -> Option<&str> {
        self.shape.dns_config.as_ref().and_then(|d| d.routing_policy.as_deref())
    }
}

fn record_types(dns: &Option<DnsConfig>) -> BTreeSet<String> {
    dns.iter().flat_map(|d| d.dns_records.iter().flatten()).filter_map(|r| r.kind.clone()).collect()
}

fn json_col<T: serde::de::DeserializeOwned>(row: &Row, col: &str) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(col)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn to_json_col<T: serde::Serialize>(value: &Option<T>) -> Option<String> {
    value.as_ref().and_then(|v| serde_json::to_string(v).ok())
}

fn from_row(row: &Row, ctx: &Ctx) -> rusqlite::Result<ServiceRow> {
    let account = ctx.identity().account.clone();
    let namespace_id: String = row.get("namespace_id")?;
    Ok(ServiceRow {
        seq: row.get("seq")?,
        namespace_id: namespace_id.clone(),
        revision: row.get("revision")?,
        shape: Service {
            id: row.get("id")?,
            arn: row.get("arn")?,
            resource_owner: account.clone(),
            name: row.get("name")?,
            namespace_id,
            description: row.get("description")?,
            instance_count: row.get("instance_count")?,
            dns_config: json_col(row, "dns_config")?,
            kind: row.get("type")?,
            health_check_config: json_col(row, "health_check_config")?,
            health_check_custom_config: json_col(row, "health_check_custom_config")?,
            create_date: row.get("create_date")?,
            creator_request_id: row.get("creator_request_id")?,
            created_by_account: account,
        },
    })
}

const SELECT: &str =
    "SELECT s.*, (SELECT count(*) FROM instances i WHERE i.service_id = s.id) AS instance_count
                      FROM services s";

pub fn not_found(id: &str) -> RegistryError {
    RegistryError::ServiceNotFound(format!("No service exists with ID: {id}"))
}

/// Looks a service up by id or ARN.
pub fn load(conn: &Connection, ctx: &Ctx, id_or_arn: &str) -> Result<ServiceRow> {
    let id = ctx.identity().resolve("service", id_or_arn).ok_or_else(|| not_found(id_or_arn))?;
    conn.query_row(&format!("{SELECT} WHERE s.id = ?1"), [id], |r| from_row(r, ctx))
        .optional()?
        .ok_or_else(|| not_found(id_or_arn))
}

/// Looks a service up by name within a namespace, as DiscoverInstances does.
pub fn load_by_name(conn: &Connection, ctx: &Ctx, ns: &NamespaceRow, name: &str) -> Result<ServiceRow> {
    conn.query_row(
        &format!("{SELECT} WHERE s.namespace_id = ?1 AND s.name = ?2"),
        params![ns.id(), name],
        |r| from_row(r, ctx),
    )
    .optional()?
    .ok_or_else(|| {
        RegistryError::ServiceNotFound(format!(
            "No service named {name} exists in namespace {}",
            ns.shape.name
        ))
    })
}

fn check_dns_records(records: &Option<Vec<DnsRecord>>, field: &str) -> Result<Vec<DnsRecord>> {
    let records = validate::required(records, field)?;
    if records.is_empty() {
        return Err(RegistryError::invalid(format!("{field} must hold at least one record")));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in records {
        let kind = validate::required(&r.kind, &format!("{field}.Type"))?;
        if !["SRV", "A", "AAAA", "CNAME"].contains(&kind.as_str()) {
            return Err(RegistryError::invalid(format!(
                "{field}.Type '{kind}' is not one of SRV, A, AAAA, CNAME"
            )));
        }
        let ttl = validate::ttl(r.ttl, &format!("{field}.TTL"))?;
        if !seen.insert(kind.clone()) {
            return Err(RegistryError::invalid(format!("{field} lists type {kind} twice")));
        }
        out.push(DnsRecord { kind: Some(kind.clone()), ttl: Some(ttl) });
    }
    if seen.contains("CNAME") && seen.len() > 1 {
        return Err(RegistryError::invalid(format!(
            "{field}: a CNAME record can't be combined with other record types"
        )));
    }
    Ok(out)
}

fn check_health_check_config(
    hc: &Option<HealthCheckConfig>,
    ns: &NamespaceRow,
    types: &BTreeSet<String>,
    field: &str,
) -> Result<Option<HealthCheckConfig>> {
    let Some(hc) = hc else { return Ok(None) };
    if ns.kind == NamespaceKind::DnsPrivate {
        return Err(RegistryError::invalid(format!(
            "{field} (Route 53 health checks) can't be used in a private DNS namespace; use HealthCheckCustomConfig"
        )));
    }
    if types.contains("CNAME") {
        return Err(RegistryError::invalid(format!("{field} can't be used with a CNAME record")));
    }
    let kind = validate::required(&hc.kind, &format!("{field}.Type"))?;
    if !["HTTP", "HTTPS", "TCP"].contains(&kind.as_str()) {
        return Err(RegistryError::invalid(format!("{field}.Type '{kind}' is not one of HTTP, HTTPS, TCP")));
    }
    let resource_path = match (kind.as_str(), &hc.resource_path) {
        ("TCP", Some(_)) => {
            return Err(RegistryError::invalid(format!(
                "{field}.ResourcePath must not be set for a TCP health check"
            )));
        }
        ("TCP", None) => None,
        (_, Some(p)) => {
            validate::max_len(p, 255, &format!("{field}.ResourcePath"))?;
            Some(p.clone())
        }
        (_, None) => Some("/".to_string()),
    };
    if let Some(t) = hc.failure_threshold
        && !(1..=10).contains(&t)
    {
        return Err(RegistryError::invalid(format!("{field}.FailureThreshold must be from 1 to 10")));
    }
    Ok(Some(HealthCheckConfig {
        kind: Some(kind.clone()),
        resource_path,
        failure_threshold: hc.failure_threshold,
    }))
}

fn service_name_taken(
    tx: &Connection,
    ns: &NamespaceRow,
    name: &str,
) -> Result<Option<(String, String, Option<String>)>> {
    // Names that differ only by case would share a DNS name, so DNS namespaces refuse them.
    let sql = if ns.kind.is_dns() {
        "SELECT id, arn, creator_request_id FROM services WHERE namespace_id = ?1 AND lower(name) = lower(?2)"
    } else {
        "SELECT id, arn, creator_request_id FROM services WHERE namespace_id = ?1 AND name = ?2"
    };
    Ok(tx.query_row(sql, params![ns.id(), name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?)
}

impl Registry {
    pub fn create_service(&self, req: CreateServiceRequest) -> Result<Value> {
        let name = validate::required(&req.name, "Name")?.clone();
        validate::service_name(&name, "Name")?;
        validate::optional_max_len(&req.creator_request_id, 64, "CreatorRequestId")?;
        validate::optional_max_len(&req.description, 1024, "Description")?;
        let legacy_ns = req.dns_config.as_ref().and_then(|d| d.namespace_id.clone());
        let namespace_id = match (&req.namespace_id, &legacy_ns) {
            (Some(a), Some(b)) if a != b => {
                return Err(RegistryError::invalid(
                    "NamespaceId and DnsConfig.NamespaceId name different namespaces",
                ));
            }
            (Some(a), _) | (None, Some(a)) => a.clone(),
            (None, None) => return Err(RegistryError::invalid("NamespaceId is required")),
        };
        let http_only = match req.kind.as_deref() {
            None => false,
            Some("HTTP") => true,
            Some(other) => {
                return Err(RegistryError::invalid(format!("Type '{other}' is not HTTP")));
            }
        };
        if req.health_check_config.is_some() && req.health_check_custom_config.is_some() {
            return Err(RegistryError::invalid(
                "Specify HealthCheckConfig or HealthCheckCustomConfig, not both",
            ));
        }
        if let Some(t) = req.health_check_custom_config.as_ref().and_then(|c| c.failure_threshold)
            && !(1..=10).contains(&t)
        {
            return Err(RegistryError::invalid(
                "HealthCheckCustomConfig.FailureThreshold must be from 1 to 10",
            ));
        }
        let new_tags = validate::tags(req.tags.as_deref().unwrap_or_default())?;
        if new_tags.len() > validate::MAX_TAGS_PER_RESOURCE {
            return Err(RegistryError::TooManyTags {
                message: format!("A resource can have at most {} tags", validate::MAX_TAGS_PER_RESOURCE),
                resource_name: name.clone(),
            });
        }
        let token = req.creator_request_id.clone();
        let fingerprint = format!(
            "{namespace_id}|{name}|{:?}|{:?}|{:?}|{:?}|{:?}|{new_tags:?}",
            req.description,
            req.dns_config,
            req.health_check_config,
            req.health_check_custom_config,
            req.kind
        );

        self.write(|tx, ctx| {
            let ns = namespaces::load(tx, ctx, &namespace_id)?;
            if let Some((_, Some(existing))) = operations::replay(tx, "service", token.as_deref(), &fingerprint)?
                && let Ok(svc) = load(tx, ctx, &existing)
            {
                return Ok(json!({ "Service": svc.shape }));
            }
            let (kind, dns_config) = match (ns.kind, http_only, &req.dns_config) {
                (NamespaceKind::Http, _, Some(_)) => {
                    return Err(RegistryError::invalid("DnsConfig can't be used in an HTTP namespace"));
                }
                (NamespaceKind::Http, _, None) => ("HTTP", None),
                (_, true, Some(_)) => {
                    return Err(RegistryError::invalid("DnsConfig can't be used with Type HTTP"));
                }
                (_, true, None) => ("HTTP", None),
                (_, false, None) => {
                    return Err(RegistryError::invalid(
                        "DnsConfig is required for a service in a DNS namespace (or Type HTTP)",
                    ));
                }
                (_, false, Some(dns)) => {
                    let records = check_dns_records(&dns.dns_records, "DnsConfig.DnsRecords")?;
                    let policy = dns.routing_policy.clone().unwrap_or_else(|| "MULTIVALUE".into());
                    if !["MULTIVALUE", "WEIGHTED"].contains(&policy.as_str()) {
                        return Err(RegistryError::invalid(format!(
                            "DnsConfig.RoutingPolicy '{policy}' is not MULTIVALUE or WEIGHTED"
                        )));
                    }
                    if records.iter().any(|r| r.kind.as_deref() == Some("CNAME")) && policy != "WEIGHTED" {
                        return Err(RegistryError::invalid(
                            "DnsConfig: a CNAME record requires RoutingPolicy WEIGHTED",
                        ));
                    }
                    let config = DnsConfig {
                        namespace_id: Some(ns.id().to_string()),
                        routing_policy: Some(policy),
                        dns_records: Some(records),
                    };
                    ("DNS_HTTP", Some(config))
                }
            };
            let types = record_types(&dns_config);
            let hc = check_health_check_config(&req.health_check_config, &ns, &types, "HealthCheckConfig")?;
            // FailureThreshold of custom health checks is no longer supported: AWS always reports 1.
            let hcc = req
                .health_check_custom_config
                .as_ref()
                .map(|_| HealthCheckCustomConfig { failure_threshold: Some(1) });
            if let Some((id, arn, crid)) = service_name_taken(tx, &ns, &name)? {
                return Err(RegistryError::ServiceAlreadyExists {
                    message: format!("A service named {name} already exists in namespace {}: {id}", ns.id()),
                    creator_request_id: crid,
                    service_id: id,
                    service_arn: arn,
                });
            }
            let id = ids::service_id();
            let arn = ctx.identity().arn("service", &id);
            tx.execute(
                "INSERT INTO services (id, arn, namespace_id, name, description, type, dns_config, health_check_config,
                                       health_check_custom_config, creator_request_id, create_date, revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0)",
                params![
                    id, arn, ns.id(), name, req.description, kind,
                    to_json_col(&dns_config), to_json_col(&hc), to_json_col(&hcc),
                    token, ctx.now
                ],
            )?;
            tags::put(tx, &arn, &new_tags)?;
            operations::remember(tx, "service", token.as_deref(), &fingerprint, None, Some(&id))?;
            ctx.changed(super::Change::Services {
                namespace: ns.shape.properties.http_properties.http_name.clone(),
                service: name.clone(),
            });
            let svc = load(tx, ctx, &id)?;
            Ok(json!({ "Service": svc.shape }))
        })
    }

    pub fn get_service(&self, req: IdRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let id = validate::required(&req.id, "Id")?;
            Ok(json!({ "Service": load(conn, ctx, id)?.shape }))
        })
    }

    pub fn list_services(&self, req: ListRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let page = paging::page(&req.next_token, req.max_results, 100)?;
            let filters = paging::filters(
                &req.filters,
                &[("NAMESPACE_ID", &[Condition::Eq]), ("RESOURCE_OWNER", &[Condition::Eq])],
            )?;
            if filters.iter().any(|f| {
                f.name == "RESOURCE_OWNER" && !["SELF", "OTHER_ACCOUNTS"].contains(&f.values[0].as_str())
            }) {
                return Err(RegistryError::invalid(
                    "Filters.Values for RESOURCE_OWNER must be SELF or OTHER_ACCOUNTS",
                ));
            }
            let mut stmt = conn.prepare(&format!("{SELECT} WHERE s.seq > ?1 ORDER BY s.seq LIMIT ?2"))?;
            let rows = stmt
                .query_map(params![page.after, page.limit as i64 + 1], |r| {
                    from_row(r, ctx).map(|s| (s.seq, s))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (rows, next) = paging::finish(rows, page.limit);
            let identity = ctx.identity();
            let services: Vec<Value> = rows
                .into_iter()
                .map(|(_, s)| s.shape)
                .filter(|s| {
                    filters.iter().all(|f| match f.name.as_str() {
                        "NAMESPACE_ID" => {
                            identity.resolve("namespace", &f.values[0]) == Some(s.namespace_id.as_str())
                        }
                        "RESOURCE_OWNER" => f.values[0] == "SELF",
                        _ => false,
                    })
                })
                .map(|s| {
                    let mut v = json!(s);
                    // ServiceSummary has neither NamespaceId nor CreatorRequestId.
                    if let Some(o) = v.as_object_mut() {
                        o.remove("NamespaceId");
                        o.remove("CreatorRequestId");
                    }
                    v
                })
                .collect();
            let mut out = json!({ "Services": services });
            if let Some(next) = next {
                out["NextToken"] = json!(next);
            }
            Ok(out)
        })
    }

    pub fn update_service(&self, req: UpdateServiceRequest) -> Result<Value> {
        let id = validate::required(&req.id, "Id")?.clone();
        let change = validate::required(&req.service, "Service")?.clone();
        validate::optional_max_len(&change.description, 1024, "Service.Description")?;
        self.write(|tx, ctx| {
            let svc = load(tx, ctx, &id)?;
            let ns = namespaces::load(tx, ctx, &svc.namespace_id)?;
            if ns.kind == NamespaceKind::Http {
                return Err(RegistryError::invalid(
                    "UpdateService can't update a service in an HTTP namespace",
                ));
            }
            let mut dns_config = svc.shape.dns_config.clone();
            if let Some(new) = &change.dns_config {
                let records = check_dns_records(&new.dns_records, "Service.DnsConfig.DnsRecords")?;
                let Some(current) = dns_config.as_mut() else {
                    return Err(RegistryError::invalid(
                        "Service.DnsConfig can't be added to a service created without DNS records",
                    ));
                };
                let new_types: BTreeSet<String> = records.iter().filter_map(|r| r.kind.clone()).collect();
                if new_types != svc.record_types() {
                    return Err(RegistryError::invalid(
                        "Service.DnsConfig.DnsRecords can change TTLs only, not the record types",
                    ));
                }
                current.dns_records = Some(records);
            }
            let types = record_types(&dns_config);
            if change.health_check_config.is_some() && svc.health_mode() == HealthMode::Custom {
                return Err(RegistryError::invalid(
                    "Service.HealthCheckConfig can't be added to a service with HealthCheckCustomConfig",
                ));
            }
            // As AWS documents: a HealthCheckConfig left out of the update is deleted.
            let hc = check_health_check_config(&change.health_check_config, &ns, &types, "Service.HealthCheckConfig")?;
            let description = change.description.clone().or(svc.shape.description.clone());
            tx.execute(
                "UPDATE services SET description = ?1, dns_config = ?2, health_check_config = ?3 WHERE id = ?4",
                params![description, to_json_col(&dns_config), to_json_col(&hc), svc.id()],
            )?;
            ctx.changed(super::Change::Services {
                namespace: ns.shape.properties.http_properties.http_name.clone(),
                service: svc.shape.name.clone(),
            });
            let op = operations::record(tx, ctx, operations::UPDATE_SERVICE, Targets { service: Some(svc.id()), namespace: Some(&svc.namespace_id), ..Default::default() })?;
            Ok(json!({ "OperationId": op }))
        })
    }

    pub fn delete_service(&self, req: IdRequest) -> Result<Value> {
        let id = validate::required(&req.id, "Id")?.clone();
        self.write(|tx, ctx| {
            let svc = load(tx, ctx, &id)?;
            if svc.shape.instance_count > 0 {
                return Err(RegistryError::ResourceInUse(format!(
                    "Service {} has {} registered instance(s); deregister them first",
                    svc.id(),
                    svc.shape.instance_count
                )));
            }
            tags::delete_all(tx, &svc.shape.arn)?;
            tx.execute("DELETE FROM service_attributes WHERE service_id = ?1", [svc.id()])?;
            tx.execute("DELETE FROM idempotency WHERE scope = ?1", [format!("instance:{}", svc.id())])?;
            tx.execute("DELETE FROM services WHERE id = ?1", [svc.id()])?;
            let ns = namespaces::load(tx, ctx, &svc.namespace_id)?;
            ctx.changed(super::Change::Services {
                namespace: ns.shape.properties.http_properties.http_name.clone(),
                service: svc.shape.name.clone(),
            });
            Ok(json!({}))
        })
    }

    pub fn get_service_attributes(&self, req: ServiceIdRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let id = validate::required(&req.service_id, "ServiceId")?;
            let svc = load(conn, ctx, id)?;
            let attrs = service_attributes(conn, svc.id())?;
            Ok(json!({ "ServiceAttributes": {
                "ServiceArn": svc.shape.arn,
                "ResourceOwner": ctx.identity().account,
                "Attributes": attrs,
            }}))
        })
    }

    pub fn update_service_attributes(&self, req: UpdateServiceAttributesRequest) -> Result<Value> {
        let id = validate::required(&req.service_id, "ServiceId")?.clone();
        let attrs = validate::required(&req.attributes, "Attributes")?.clone();
        if attrs.is_empty() || attrs.len() > validate::MAX_SERVICE_ATTRIBUTES {
            return Err(RegistryError::invalid("Attributes must hold 1 to 30 attributes"));
        }
        for (k, v) in &attrs {
            if k.is_empty() {
                return Err(RegistryError::invalid("Attributes keys must not be empty"));
            }
            validate::max_len(k, 255, "Attributes key")?;
            validate::max_len(v, 1024, &format!("Attributes value of '{k}'"))?;
        }
        self.write(|tx, ctx| {
            let svc = load(tx, ctx, &id)?;
            let mut merged = service_attributes(tx, svc.id())?;
            merged.extend(attrs.clone());
            if merged.len() > validate::MAX_SERVICE_ATTRIBUTES {
                return Err(RegistryError::ServiceAttributesLimitExceeded(format!(
                    "A service can have at most {} attributes; this update would give it {}",
                    validate::MAX_SERVICE_ATTRIBUTES,
                    merged.len()
                )));
            }
            for (k, v) in &attrs {
                tx.execute(
                    "INSERT OR REPLACE INTO service_attributes (service_id, key, value) VALUES (?1, ?2, ?3)",
                    params![svc.id(), k, v],
                )?;
            }
            changed_instances(tx, ctx, &svc)?;
            Ok(json!({}))
        })
    }

    pub fn delete_service_attributes(&self, req: DeleteServiceAttributesRequest) -> Result<Value> {
        let id = validate::required(&req.service_id, "ServiceId")?.clone();
        let keys = validate::required(&req.attributes, "Attributes")?.clone();
        if keys.is_empty() || keys.len() > validate::MAX_SERVICE_ATTRIBUTES {
            return Err(RegistryError::invalid("Attributes must list 1 to 30 keys"));
        }
        for k in &keys {
            validate::max_len(k, 255, "Attributes key")?;
        }
        self.write(|tx, ctx| {
            let svc = load(tx, ctx, &id)?;
            for k in &keys {
                tx.execute(
                    "DELETE FROM service_attributes WHERE service_id = ?1 AND key = ?2",
                    params![svc.id(), k],
                )?;
            }
            changed_instances(tx, ctx, &svc)?;
            Ok(json!({}))
        })
    }
}

pub fn service_attributes(conn: &Connection, service_id: &str) -> Result<BTreeMap<String, String>> {
    let mut stmt = conn.prepare("SELECT key, value FROM service_attributes WHERE service_id = ?1")?;
    let rows = stmt
        .query_map([service_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<BTreeMap<String, String>>>()?;
    Ok(rows)
}

/// Announces that what DiscoverInstances (or a service's attributes) gives for `svc` changed.
pub fn changed_instances(conn: &Connection, ctx: &Ctx, svc: &ServiceRow) -> Result<()> {
    let ns = namespaces::load(conn, ctx, &svc.namespace_id)?;
    ctx.changed(super::Change::Instances {
        namespace: ns.shape.properties.http_properties.http_name.clone(),
        service: svc.shape.name.clone(),
    });
    Ok(())
}
