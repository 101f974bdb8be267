//! Instances: register, deregister, get, list, health, and discovery.
//!
//! InstancesRevision moves on every RegisterInstance and DeregisterInstance of a service, in the
//! same transaction as the change, and never on health changes, as AWS documents. Revisions come
//! from one registry-wide counter, so they only ever increase.

use std::collections::{BTreeMap, HashMap};

use rand::seq::SliceRandom;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use super::error::{RegistryError, Result};
use super::namespaces::{self, NamespaceKind};
use super::operations::{self, Targets};
use super::paging;
use super::services::{self, HealthMode, ServiceRow};
use super::shapes::{
    Attributes, DiscoverInstancesRequest, GetInstancesHealthStatusRequest, HttpInstanceSummary, Instance,
    InstanceRequest, InstanceSummary, ListInstancesRequest, RegisterInstanceRequest,
    UpdateInstanceCustomHealthStatusRequest,
};
use super::{Ctx, Registry, store, validate};

/// DiscoverInstances' HealthStatus filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthFilter {
    Healthy,
    Unhealthy,
    All,
    HealthyOrElseAll,
}

impl HealthFilter {
    pub fn parse(s: &str) -> Result<HealthFilter> {
        match s {
            "HEALTHY" => Ok(HealthFilter::Healthy),
            "UNHEALTHY" => Ok(HealthFilter::Unhealthy),
            "ALL" => Ok(HealthFilter::All),
            "HEALTHY_OR_ELSE_ALL" => Ok(HealthFilter::HealthyOrElseAll),
            other => Err(RegistryError::invalid(format!(
                "HealthStatus '{other}' is not one of HEALTHY, UNHEALTHY, ALL, HEALTHY_OR_ELSE_ALL"
            ))),
        }
    }
}

/// What DiscoverInstances answers: the chosen instances and the service's revision.
#[derive(Debug, Clone)]
pub struct DiscoverOutput {
    pub instances: Vec<HttpInstanceSummary>,
    pub revision: i64,
}

/// What `Registry::namespace_contents` reads of one service.
#[derive(Debug, Clone)]
pub struct ServiceContents {
    pub name: String,
    pub output: DiscoverOutput,
    pub attribute: Option<String>,
}

struct InstanceRow {
    seq: i64,
    id: String,
    creator_request_id: Option<String>,
    attributes: Attributes,
    /// Health as of the request time: a delayed custom health change counts once it is due.
    health: String,
}

/// The SQL expression for an instance's effective health at `?1` (now).
const EFFECTIVE_HEALTH: &str =
    "CASE WHEN pending_health_at IS NOT NULL AND pending_health_at <= ?1 THEN pending_health ELSE health END";

fn from_row(row: &Row) -> rusqlite::Result<InstanceRow> {
    let attrs: String = row.get("attributes")?;
    Ok(InstanceRow {
        seq: row.get("seq")?,
        id: row.get("id")?,
        creator_request_id: row.get("creator_request_id")?,
        attributes: serde_json::from_str(&attrs).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        health: row.get("effective_health")?,
    })
}

fn load_all(conn: &Connection, ctx: &Ctx, service_id: &str) -> Result<Vec<InstanceRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT *, {EFFECTIVE_HEALTH} AS effective_health FROM instances WHERE service_id = ?2 ORDER BY seq"
    ))?;
    let rows =
        stmt.query_map(params![ctx.now, service_id], from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Every instance of a service as DiscoverInstances returns it, for in-process readers.
fn summaries(rows: Vec<InstanceRow>, namespace: &str, service: &str) -> Vec<HttpInstanceSummary> {
    rows.into_iter()
        .map(|i| HttpInstanceSummary {
            instance_id: i.id,
            namespace_name: namespace.to_string(),
            service_name: service.to_string(),
            health_status: i.health,
            attributes: i.attributes,
        })
        .collect()
}

fn load_one(conn: &Connection, ctx: &Ctx, svc: &ServiceRow, instance_id: &str) -> Result<InstanceRow> {
    conn.query_row(
        &format!("SELECT *, {EFFECTIVE_HEALTH} AS effective_health FROM instances WHERE service_id = ?2 AND id = ?3"),
        params![ctx.now, svc.id(), instance_id],
        from_row,
    )
    .optional()?
    .ok_or_else(|| {
        RegistryError::InstanceNotFound(format!(
            "No instance {instance_id} is registered with service {}",
            svc.id()
        ))
    })
}

/// Checks RegisterInstance's Attributes against AWS's rules and the service's DNS configuration.
fn check_attributes(attrs: &Attributes, svc: &ServiceRow, ns_kind: NamespaceKind) -> Result<()> {
    validate::attribute_map(attrs, "Attributes")?;
    let mut custom = 0;
    let mut total = 0;
    for (k, v) in attrs {
        total += k.chars().count() + v.chars().count();
        if k.starts_with("AWS_") {
            if !validate::RESERVED_ATTRIBUTES.contains(&k.as_str()) {
                return Err(RegistryError::invalid(format!(
                    "Attributes key '{k}' uses the reserved prefix AWS_ but is not one of {}",
                    validate::RESERVED_ATTRIBUTES.join(", ")
                )));
            }
        } else {
            custom += 1;
        }
    }
    if custom > validate::MAX_CUSTOM_ATTRIBUTES {
        return Err(RegistryError::invalid(format!(
            "Attributes holds {custom} custom attributes; at most {} are allowed",
            validate::MAX_CUSTOM_ATTRIBUTES
        )));
    }
    if total > validate::MAX_ATTRIBUTES_TOTAL_CHARS {
        return Err(RegistryError::invalid(format!(
            "Attributes keys and values total {total} characters; at most {} are allowed",
            validate::MAX_ATTRIBUTES_TOTAL_CHARS
        )));
    }
    let has = |k: &str| attrs.contains_key(k);
    if let Some(v) = attrs.get("AWS_INSTANCE_IPV4") {
        validate::ipv4(v)?;
    }
    if let Some(v) = attrs.get("AWS_INSTANCE_IPV6") {
        validate::ipv6(v)?;
    }
    if let Some(v) = attrs.get("AWS_INSTANCE_PORT") {
        validate::port(v)?;
    }
    if let Some(v) = attrs.get("AWS_INIT_HEALTH_STATUS")
        && v != "HEALTHY"
        && v != "UNHEALTHY"
    {
        return Err(RegistryError::invalid("AWS_INIT_HEALTH_STATUS must be HEALTHY or UNHEALTHY"));
    }
    if let Some(v) = attrs.get("AWS_INSTANCE_CNAME") {
        validate::max_len(v, 255, "AWS_INSTANCE_CNAME")?;
    }
    let instance_attrs = attrs.keys().any(|k| k.starts_with("AWS_INSTANCE_"));
    if has("AWS_EC2_INSTANCE_ID") {
        if ns_kind != NamespaceKind::Http {
            return Err(RegistryError::invalid("AWS_EC2_INSTANCE_ID applies to HTTP namespaces only"));
        }
        if let Some(k) = attrs
            .keys()
            .find(|k| k.starts_with("AWS_") && *k != "AWS_EC2_INSTANCE_ID" && *k != "AWS_INIT_HEALTH_STATUS")
        {
            return Err(RegistryError::invalid(format!(
                "With AWS_EC2_INSTANCE_ID the only other AWS_ attribute allowed is AWS_INIT_HEALTH_STATUS, not {k}"
            )));
        }
    }
    let types = svc.record_types();
    if has("AWS_ALIAS_DNS_NAME") {
        if instance_attrs {
            return Err(RegistryError::invalid(
                "With AWS_ALIAS_DNS_NAME, don't specify any AWS_INSTANCE_ attribute",
            ));
        }
        if svc.routing_policy() != Some("WEIGHTED") || !(types.contains("A") || types.contains("AAAA")) {
            return Err(RegistryError::invalid(
                "AWS_ALIAS_DNS_NAME requires a service with an A or AAAA record and RoutingPolicy WEIGHTED",
            ));
        }
        return Ok(());
    }
    let need = |key: &str, why: &str| {
        if has(key) {
            Ok(())
        } else {
            Err(RegistryError::invalid(format!("Attributes must include {key}: {why}")))
        }
    };
    if types.contains("A") {
        need("AWS_INSTANCE_IPV4", "the service has an A record")?;
    }
    if types.contains("AAAA") {
        need("AWS_INSTANCE_IPV6", "the service has an AAAA record")?;
    }
    if types.contains("CNAME") {
        need("AWS_INSTANCE_CNAME", "the service has a CNAME record")?;
    }
    if types.contains("SRV") {
        need("AWS_INSTANCE_PORT", "the service has an SRV record")?;
        if !has("AWS_INSTANCE_IPV4") && !has("AWS_INSTANCE_IPV6") {
            return Err(RegistryError::invalid(
                "Attributes must include AWS_INSTANCE_IPV4 or AWS_INSTANCE_IPV6: the service has an SRV record",
            ));
        }
    }
    if svc.health_mode() == HealthMode::Route53 {
        need("AWS_INSTANCE_PORT", "the service has a health check")?;
    }
    Ok(())
}

fn initial_health(svc: &ServiceRow, attrs: &Attributes) -> &'static str {
    match svc.health_mode() {
        HealthMode::None => "UNKNOWN",
        HealthMode::Custom => match attrs.get("AWS_INIT_HEALTH_STATUS").map(String::as_str) {
            Some("UNHEALTHY") => "UNHEALTHY",
            _ => "HEALTHY",
        },
        // Route 53 health checks are not performed by the embedded registry (see the README).
        HealthMode::Route53 => "HEALTHY",
    }
}

fn bump_revision(tx: &Connection, service_id: &str) -> Result<i64> {
    let revision = store::next_revision(tx)?;
    tx.execute("UPDATE services SET revision = ?1 WHERE id = ?2", params![revision, service_id])?;
    Ok(revision)
}

fn count(tx: &Connection, sql: &str, arg: &str) -> Result<i64> {
    Ok(tx.query_row(sql, [arg], |r| r.get(0))?)
}

impl Registry {
    pub fn register_instance(&self, req: RegisterInstanceRequest) -> Result<Value> {
        let service_id = validate::required(&req.service_id, "ServiceId")?.clone();
        let instance_id = validate::required(&req.instance_id, "InstanceId")?.clone();
        validate::instance_id(&instance_id)?;
        let attrs = validate::required(&req.attributes, "Attributes")?.clone();
        validate::optional_max_len(&req.creator_request_id, 64, "CreatorRequestId")?;
        let token = req.creator_request_id.clone();
        let fingerprint = format!("{instance_id}|{attrs:?}");
        self.write(|tx, ctx| {
            let svc = services::load(tx, ctx, &service_id)?;
            let ns = namespaces::load(tx, ctx, &svc.namespace_id)?;
            let scope = format!("instance:{}", svc.id());
            if let Some((Some(op), _)) = operations::replay(tx, &scope, token.as_deref(), &fingerprint)? {
                return Ok(json!({ "OperationId": op }));
            }
            check_attributes(&attrs, &svc, ns.kind)?;
            let exists = tx
                .query_row(
                    "SELECT 1 FROM instances WHERE service_id = ?1 AND id = ?2",
                    params![svc.id(), instance_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            let quotas = &ctx.settings.quotas;
            if !exists {
                if svc.shape.instance_count >= quotas.instances_per_service {
                    return Err(RegistryError::ResourceLimitExceeded(format!(
                        "Service {} has reached the quota of {} instances",
                        svc.id(),
                        quotas.instances_per_service
                    )));
                }
                let in_namespace = count(
                    tx,
                    "SELECT count(*) FROM instances i JOIN services s ON s.id = i.service_id WHERE s.namespace_id = ?1",
                    ns.id(),
                )?;
                if in_namespace >= quotas.instances_per_namespace {
                    return Err(RegistryError::ResourceLimitExceeded(format!(
                        "Namespace {} has reached the quota of {} instances",
                        ns.id(),
                        quotas.instances_per_namespace
                    )));
                }
            }
            let attrs_json = serde_json::to_string(&attrs)
                .map_err(|e| RegistryError::invalid(format!("Attributes: {e}")))?;
            let health = initial_health(&svc, &attrs);
            // Re-registering an id updates the instance in place (and restarts its health), as AWS
            // documents; it keeps its place in ListInstances.
            tx.execute(
                "INSERT INTO instances (service_id, id, creator_request_id, attributes, health)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (service_id, id) DO UPDATE SET
                   creator_request_id = excluded.creator_request_id, attributes = excluded.attributes,
                   health = excluded.health, pending_health = NULL, pending_health_at = NULL",
                params![svc.id(), instance_id, token, attrs_json, health],
            )?;
            bump_revision(tx, svc.id())?;
            services::changed_instances(tx, ctx, &svc)?;
            let op = operations::record(
                tx,
                ctx,
                operations::REGISTER_INSTANCE,
                Targets { namespace: Some(ns.id()), service: Some(svc.id()), instance: Some(&instance_id) },
            )?;
            operations::remember(tx, &scope, token.as_deref(), &fingerprint, Some(&op), Some(&instance_id))?;
            Ok(json!({ "OperationId": op }))
        })
    }

    pub fn deregister_instance(&self, req: InstanceRequest) -> Result<Value> {
        let service_id = validate::required(&req.service_id, "ServiceId")?.clone();
        let instance_id = validate::required(&req.instance_id, "InstanceId")?.clone();
        validate::max_len(&instance_id, 64, "InstanceId")?;
        self.write(|tx, ctx| {
            let svc = services::load(tx, ctx, &service_id)?;
            let removed = tx.execute(
                "DELETE FROM instances WHERE service_id = ?1 AND id = ?2",
                params![svc.id(), instance_id],
            )?;
            if removed == 0 {
                return Err(RegistryError::InstanceNotFound(format!(
                    "No instance {instance_id} is registered with service {}",
                    svc.id()
                )));
            }
            bump_revision(tx, svc.id())?;
            services::changed_instances(tx, ctx, &svc)?;
            let op = operations::record(
                tx,
                ctx,
                operations::DEREGISTER_INSTANCE,
                Targets {
                    namespace: Some(&svc.namespace_id),
                    service: Some(svc.id()),
                    instance: Some(&instance_id),
                },
            )?;
            Ok(json!({ "OperationId": op }))
        })
    }

    pub fn get_instance(&self, req: InstanceRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let service_id = validate::required(&req.service_id, "ServiceId")?;
            let instance_id = validate::required(&req.instance_id, "InstanceId")?;
            let svc = services::load(conn, ctx, service_id)?;
            let inst = load_one(conn, ctx, &svc, instance_id)?;
            let account = ctx.identity().account.clone();
            Ok(json!({
                "ResourceOwner": account,
                "Instance": Instance {
                    id: inst.id,
                    creator_request_id: inst.creator_request_id,
                    attributes: inst.attributes,
                    created_by_account: account.clone(),
                }
            }))
        })
    }

    pub fn list_instances(&self, req: ListInstancesRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let service_id = validate::required(&req.service_id, "ServiceId")?;
            let page = paging::page(&req.next_token, req.max_results, 100)?;
            let svc = services::load(conn, ctx, service_id)?;
            let mut stmt = conn.prepare(&format!(
                "SELECT *, {EFFECTIVE_HEALTH} AS effective_health FROM instances
                 WHERE service_id = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
            ))?;
            let rows = stmt
                .query_map(params![ctx.now, svc.id(), page.after, page.limit as i64 + 1], from_row)?
                .map(|r| r.map(|i| (i.seq, i)))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (rows, next) = paging::finish(rows, page.limit);
            let account = ctx.identity().account.clone();
            let instances: Vec<InstanceSummary> = rows
                .into_iter()
                .map(|(_, i)| InstanceSummary {
                    id: i.id,
                    attributes: i.attributes,
                    created_by_account: account.clone(),
                })
                .collect();
            let mut out = json!({ "ResourceOwner": account, "Instances": instances });
            if let Some(next) = next {
                out["NextToken"] = json!(next);
            }
            Ok(out)
        })
    }

    pub fn get_instances_health_status(&self, req: GetInstancesHealthStatusRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let service_id = validate::required(&req.service_id, "ServiceId")?;
            let page = paging::page(&req.next_token, req.max_results, 100)?;
            let svc = services::load(conn, ctx, service_id)?;
            let all = load_all(conn, ctx, svc.id())?;
            let selected: Vec<&InstanceRow> = match &req.instances {
                None => all.iter().collect(),
                Some(ids) if ids.is_empty() => {
                    return Err(RegistryError::invalid("Instances must list at least one instance id"));
                }
                Some(ids) => {
                    let mut picked = Vec::new();
                    for id in ids {
                        validate::max_len(id, 64, "Instances")?;
                        let inst = all.iter().find(|i| &i.id == id).ok_or_else(|| {
                            RegistryError::InstanceNotFound(format!(
                                "No instance {id} is registered with service {}",
                                svc.id()
                            ))
                        })?;
                        picked.push(inst);
                    }
                    picked.sort_by_key(|i| i.seq);
                    picked.dedup_by_key(|i| i.seq);
                    picked
                }
            };
            let rows: Vec<(i64, &InstanceRow)> = selected
                .into_iter()
                .filter(|i| i.seq > page.after)
                .take(page.limit + 1)
                .map(|i| (i.seq, i))
                .collect();
            let (rows, next) = paging::finish(rows, page.limit);
            let status: BTreeMap<&str, &str> =
                rows.iter().map(|(_, i)| (i.id.as_str(), i.health.as_str())).collect();
            let mut out = json!({ "Status": status });
            if let Some(next) = next {
                out["NextToken"] = json!(next);
            }
            Ok(out)
        })
    }

    pub fn update_instance_custom_health_status(
        &self,
        req: UpdateInstanceCustomHealthStatusRequest,
    ) -> Result<Value> {
        let service_id = validate::required(&req.service_id, "ServiceId")?.clone();
        let instance_id = validate::required(&req.instance_id, "InstanceId")?.clone();
        let status = validate::required(&req.status, "Status")?.clone();
        if status != "HEALTHY" && status != "UNHEALTHY" {
            return Err(RegistryError::invalid(format!("Status '{status}' is not HEALTHY or UNHEALTHY")));
        }
        let delay = self.settings().custom_health_delay.as_secs_f64();
        let scheduled = self.write(|tx, ctx| {
            let svc = services::load(tx, ctx, &service_id)?;
            let inst = load_one(tx, ctx, &svc, &instance_id)?;
            if svc.health_mode() != HealthMode::Custom {
                return Err(RegistryError::CustomHealthNotFound(format!(
                    "Service {} has no HealthCheckCustomConfig",
                    svc.id()
                )));
            }
            let (pending, _): (Option<String>, Option<f64>) = tx.query_row(
                "SELECT pending_health, pending_health_at FROM instances WHERE service_id = ?1 AND id = ?2",
                params![svc.id(), inst.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            // `inst.health` already counts a due pending change, so compare against it.
            let (health, pending, at) = if delay <= 0.0 {
                (status.clone(), None, None)
            } else if pending.as_deref() == Some(status.as_str()) && inst.health != status {
                // The same change again does not restart AWS's wait.
                return Ok(false);
            } else if inst.health == status {
                // Changing back within the wait cancels the pending change.
                (status.clone(), None, None)
            } else {
                (inst.health.clone(), Some(status.clone()), Some(ctx.now + delay))
            };
            tx.execute(
                "UPDATE instances SET health = ?1, pending_health = ?2, pending_health_at = ?3 WHERE service_id = ?4 AND id = ?5",
                params![health, pending, at, svc.id(), inst.id],
            )?;
            if at.is_none() {
                services::changed_instances(tx, ctx, &svc)?;
            }
            Ok(at.is_some())
        })?;
        if scheduled {
            self.inner.health_changed.notify_one();
        }
        Ok(json!({}))
    }

    /// DiscoverInstances: the in-process entry point the DNS side shares with the API.
    pub fn discover(&self, req: &DiscoverInstancesRequest) -> Result<DiscoverOutput> {
        let namespace_name = validate::required(&req.namespace_name, "NamespaceName")?;
        validate::namespace_name(namespace_name, 1024, "NamespaceName")?;
        let service_name = validate::required(&req.service_name, "ServiceName")?;
        validate::service_name(service_name, "ServiceName")?;
        let max = validate::max_results(req.max_results, 1000, 100)?;
        let query = req.query_parameters.clone().unwrap_or_default();
        let optional = req.optional_parameters.clone().unwrap_or_default();
        validate::attribute_map(&query, "QueryParameters")?;
        validate::attribute_map(&optional, "OptionalParameters")?;
        // With a health check configured, AWS returns healthy instances unless told otherwise.
        let filter = req
            .health_status
            .as_deref()
            .map(HealthFilter::parse)
            .transpose()?
            .unwrap_or(HealthFilter::Healthy);
        self.read(|conn, ctx| {
            validate::owner_account(&req.owner_account, &ctx.identity().account)?;
            let ns = namespaces::load_by_http_name(conn, ctx, namespace_name)?;
            let svc = services::load_by_name(conn, ctx, &ns, service_name)?;
            let all = load_all(conn, ctx, svc.id())?;
            let matches = |i: &&InstanceRow, params: &Attributes| {
                params.iter().all(|(k, v)| i.attributes.get(k) == Some(v))
            };
            let mut chosen: Vec<&InstanceRow> = all.iter().filter(|i| matches(i, &query)).collect();
            if !optional.is_empty() {
                let both: Vec<&InstanceRow> =
                    chosen.iter().copied().filter(|i| matches(i, &optional)).collect();
                if !both.is_empty() {
                    chosen = both;
                }
            }
            if svc.health_mode() != HealthMode::None {
                let healthy = |i: &&InstanceRow| i.health == "HEALTHY";
                chosen = match filter {
                    HealthFilter::All => chosen,
                    HealthFilter::Healthy => chosen.into_iter().filter(healthy).collect(),
                    HealthFilter::Unhealthy => {
                        chosen.into_iter().filter(|i| i.health == "UNHEALTHY").collect()
                    }
                    HealthFilter::HealthyOrElseAll => {
                        if chosen.iter().any(healthy) {
                            chosen.into_iter().filter(healthy).collect()
                        } else {
                            chosen
                        }
                    }
                };
            }
            chosen.shuffle(&mut rand::rng());
            chosen.truncate(max);
            let instances = chosen
                .into_iter()
                .map(|i| HttpInstanceSummary {
                    instance_id: i.id.clone(),
                    namespace_name: ns.shape.properties.http_properties.http_name.clone(),
                    service_name: svc.shape.name.clone(),
                    health_status: i.health.clone(),
                    attributes: i.attributes.clone(),
                })
                .collect();
            Ok(DiscoverOutput { instances, revision: svc.revision })
        })
    }

    /// Every instance of a service with its health, for in-process readers (the DNS cache): no
    /// MaxResults cap, no shuffling and no health filter, which the reader applies itself.
    pub fn instances_of(&self, namespace: &str, service: &str) -> Result<DiscoverOutput> {
        self.read(|conn, ctx| {
            let ns = namespaces::load_by_http_name(conn, ctx, namespace)?;
            let svc = services::load_by_name(conn, ctx, &ns, service)?;
            let instances = summaries(load_all(conn, ctx, svc.id())?, namespace, &svc.shape.name);
            Ok(DiscoverOutput { instances, revision: svc.revision })
        })
    }

    /// Every service of a namespace, oldest first, with every instance (as `instances_of`) and
    /// the value of one service attribute: what the DNS cache holds of it, read under one lock in
    /// three queries, so a cold cache loads a namespace at once.
    pub fn namespace_contents(&self, namespace: &str, attribute: &str) -> Result<Vec<ServiceContents>> {
        self.read(|conn, ctx| {
            let ns = namespaces::load_by_http_name(conn, ctx, namespace)?;
            let mut stmt =
                conn.prepare("SELECT id, name, revision FROM services WHERE namespace_id = ?1 ORDER BY seq")?;
            let services = stmt
                .query_map(params![ns.id()], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<(String, String, i64)>>>()?;
            let mut stmt = conn.prepare(&format!(
                "SELECT *, {EFFECTIVE_HEALTH} AS effective_health FROM instances
                 WHERE service_id IN (SELECT id FROM services WHERE namespace_id = ?2) ORDER BY seq"
            ))?;
            let mut instances: HashMap<String, Vec<InstanceRow>> = HashMap::new();
            let rows =
                stmt.query_map(params![ctx.now, ns.id()], |r| Ok((r.get("service_id")?, from_row(r)?)))?;
            for row in rows {
                let (service_id, instance): (String, InstanceRow) = row?;
                instances.entry(service_id).or_default().push(instance);
            }
            let mut stmt = conn.prepare(
                "SELECT service_id, value FROM service_attributes
                 WHERE key = ?2 AND service_id IN (SELECT id FROM services WHERE namespace_id = ?1)",
            )?;
            let mut attributes = stmt
                .query_map(params![ns.id(), attribute], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<HashMap<String, String>>>()?;
            Ok(services
                .into_iter()
                .map(|(id, name, revision)| {
                    let instances = summaries(instances.remove(&id).unwrap_or_default(), namespace, &name);
                    ServiceContents {
                        attribute: attributes.remove(&id),
                        output: DiscoverOutput { instances, revision },
                        name,
                    }
                })
                .collect())
        })
    }

    /// The names of the services in a namespace, oldest first.
    pub fn services_of(&self, namespace: &str) -> Result<Vec<String>> {
        self.read(|conn, ctx| {
            let ns = namespaces::load_by_http_name(conn, ctx, namespace)?;
            let mut stmt = conn.prepare("SELECT name FROM services WHERE namespace_id = ?1 ORDER BY seq")?;
            let rows =
                stmt.query_map(params![ns.id()], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// One attribute of a service, by namespace HttpName and service name.
    pub fn service_attribute(&self, namespace: &str, service: &str, key: &str) -> Result<Option<String>> {
        self.read(|conn, ctx| {
            let ns = namespaces::load_by_http_name(conn, ctx, namespace)?;
            let svc = services::load_by_name(conn, ctx, &ns, service)?;
            Ok(conn
                .query_row(
                    "SELECT value FROM service_attributes WHERE service_id = ?1 AND key = ?2",
                    params![svc.id(), key],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    /// Every namespace as (Name, HttpName), oldest first.
    pub fn namespace_names(&self) -> Result<Vec<(String, String)>> {
        self.read(|conn, _| {
            let mut stmt = conn.prepare("SELECT name, http_name FROM namespaces ORDER BY seq")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    pub fn discover_instances(&self, req: DiscoverInstancesRequest) -> Result<Value> {
        let out = self.discover(&req)?;
        Ok(json!({ "Instances": out.instances, "InstancesRevision": out.revision }))
    }

    pub fn discover_instances_revision(&self, req: DiscoverInstancesRequest) -> Result<Value> {
        let namespace_name = validate::required(&req.namespace_name, "NamespaceName")?.clone();
        let service_name = validate::required(&req.service_name, "ServiceName")?.clone();
        validate::service_name(&service_name, "ServiceName")?;
        self.read(|conn, ctx| {
            validate::owner_account(&req.owner_account, &ctx.identity().account)?;
            let ns = namespaces::load_by_http_name(conn, ctx, &namespace_name)?;
            let svc = services::load_by_name(conn, ctx, &ns, &service_name)?;
            Ok(json!({ "InstancesRevision": svc.revision }))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::registry::RegistrySettings;
    use crate::registry::shapes::HealthCheckCustomConfig;

    /// A registry on a clock the test moves by hand, with AWS's 30 s custom health delay.
    fn registry(dir: &std::path::Path) -> (Registry, Arc<AtomicU64>, String) {
        let millis = Arc::new(AtomicU64::new(1_700_000_000_000));
        let clock_ms = millis.clone();
        let settings =
            RegistrySettings { custom_health_delay: Duration::from_secs(30), ..RegistrySettings::default() };
        let clock: crate::registry::Clock = Arc::new(move || clock_ms.load(Ordering::SeqCst) as f64 / 1000.0);
        let r = Registry::open_with_clock(dir, settings, clock).unwrap();
        let svc = crate::registry::test_service(&r, Some(HealthCheckCustomConfig::default()));
        r.register_instance(RegisterInstanceRequest {
            service_id: Some(svc.clone()),
            instance_id: Some("a".into()),
            attributes: Some(Attributes::new()),
            ..Default::default()
        })
        .unwrap();
        (r, millis, svc)
    }

    fn health(r: &Registry) -> String {
        let out = r
            .discover(&DiscoverInstancesRequest {
                namespace_name: Some("ns".into()),
                service_name: Some("s".into()),
                health_status: Some("ALL".into()),
                ..Default::default()
            })
            .unwrap();
        out.instances[0].health_status.clone()
    }

    fn set(r: &Registry, svc: &str, status: &str) {
        r.update_instance_custom_health_status(UpdateInstanceCustomHealthStatusRequest {
            service_id: Some(svc.into()),
            instance_id: Some("a".into()),
            status: Some(status.into()),
        })
        .unwrap();
    }

    #[test]
    fn custom_health_waits_like_aws() {
        let dir = tempfile::tempdir().unwrap();
        let (r, clock, svc) = registry(dir.path());
        let advance = |secs: u64| clock.fetch_add(secs * 1000, Ordering::SeqCst);
        set(&r, &svc, "UNHEALTHY");
        assert_eq!(health(&r), "HEALTHY");
        advance(20);
        // The same status again does not restart the wait.
        set(&r, &svc, "UNHEALTHY");
        advance(9);
        assert_eq!(health(&r), "HEALTHY");
        advance(1);
        assert_eq!(health(&r), "UNHEALTHY", "due 30 s after the first request");
        assert_eq!(r.apply_due_health().unwrap(), None, "nothing else pending once applied");

        // Changing back within the wait cancels the change.
        set(&r, &svc, "HEALTHY");
        advance(10);
        set(&r, &svc, "UNHEALTHY");
        advance(25);
        assert_eq!(health(&r), "UNHEALTHY");
        advance(10);
        assert_eq!(health(&r), "UNHEALTHY");
    }

    #[test]
    fn a_namespace_read_matches_a_read_of_each_service() {
        use crate::registry::shapes::{
            CreateNamespaceRequest, CreateServiceRequest, UpdateServiceAttributesRequest,
        };
        let dir = tempfile::tempdir().unwrap();
        let (r, clock, svc) = registry(dir.path());
        let ns_id = |name: &str| {
            let listed = r.list_namespaces(Default::default()).unwrap();
            let all = listed["Namespaces"].as_array().unwrap().clone();
            all.iter().find(|n| n["Name"] == name).unwrap()["Id"].as_str().unwrap().to_string()
        };
        let create = |ns: &str, name: &str| {
            let req = CreateServiceRequest {
                name: Some(name.into()),
                namespace_id: Some(ns_id(ns)),
                ..Default::default()
            };
            r.create_service(req).unwrap()["Service"]["Id"].as_str().unwrap().to_string()
        };
        let register = |svc: &str, id: &str, ip: &str| {
            let attributes = Attributes::from([("AWS_INSTANCE_IPV4".to_string(), ip.to_string())]);
            let req = RegisterInstanceRequest {
                service_id: Some(svc.into()),
                instance_id: Some(id.into()),
                attributes: Some(attributes),
                ..Default::default()
            };
            r.register_instance(req).unwrap();
        };
        // `s` (custom health) holds `a`, turned unhealthy by a delayed change that is due but
        // not yet applied; `t` two instances and a gRPC config; `empty` none. A service of the
        // same name in another namespace must not show.
        set(&r, &svc, "UNHEALTHY");
        clock.fetch_add(31_000, Ordering::SeqCst);
        let t = create("ns", "t");
        register(&t, "t2", "10.0.0.2");
        register(&t, "t1", "10.0.0.1");
        let attributes = BTreeMap::from([("grpc_config".to_string(), "{}".to_string())]);
        let req =
            UpdateServiceAttributesRequest { service_id: Some(t.clone()), attributes: Some(attributes) };
        r.update_service_attributes(req).unwrap();
        create("ns", "empty");
        let other = CreateNamespaceRequest { name: Some("other".into()), ..Default::default() };
        r.create_namespace(NamespaceKind::Http, other).unwrap();
        register(&create("other", "s"), "o", "10.1.0.1");

        let read = r.namespace_contents("ns", "grpc_config").unwrap();
        let names: Vec<&str> = read.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["s", "t", "empty"], "every service, oldest first");
        for c in &read {
            let one = r.instances_of("ns", &c.name).unwrap();
            assert_eq!(c.output.instances, one.instances, "{}", c.name);
            assert_eq!(c.output.revision, one.revision, "{}", c.name);
            assert_eq!(c.attribute, r.service_attribute("ns", &c.name, "grpc_config").unwrap(), "{}", c.name);
        }
        assert_eq!(read[0].output.instances[0].health_status, "UNHEALTHY", "health as of now");
        let ids: Vec<&str> = read[1].output.instances.iter().map(|i| i.instance_id.as_str()).collect();
        assert_eq!(ids, ["t2", "t1"], "in the order registered");
        assert_eq!(read[1].attribute.as_deref(), Some("{}"));
        assert!(read[2].output.instances.is_empty());
        assert!(matches!(
            r.namespace_contents("nope", "grpc_config"),
            Err(RegistryError::NamespaceNotFound(_))
        ));
    }

    #[test]
    fn pending_health_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (r, clock, svc) = registry(dir.path());
        set(&r, &svc, "UNHEALTHY");
        let now = clock.load(Ordering::SeqCst);
        drop(r);
        let millis = Arc::new(AtomicU64::new(now + 31_000));
        let m = millis.clone();
        let clock: crate::registry::Clock = Arc::new(move || m.load(Ordering::SeqCst) as f64 / 1000.0);
        let r = Registry::open_with_clock(dir.path(), RegistrySettings::default(), clock).unwrap();
        assert_eq!(health(&r), "UNHEALTHY");
    }
}
