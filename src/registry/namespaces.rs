//! Namespaces: create (HTTP, private DNS, public DNS), get, list, update, delete.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use super::error::{RegistryError, Result};
use super::operations::{self, Targets};
use super::paging::{self, Condition};
use super::shapes::{
    CreateNamespaceRequest, DnsNamespacePropertiesInput, DnsProperties, HttpProperties, IdRequest,
    ListRequest, Namespace, NamespaceProperties, Soa, UpdateNamespaceRequest,
};
use super::{Ctx, Registry, ids, tags, validate};

/// The three kinds of namespace, by their `Type` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceKind {
    Http,
    DnsPrivate,
    DnsPublic,
}

impl NamespaceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NamespaceKind::Http => "HTTP",
            NamespaceKind::DnsPrivate => "DNS_PRIVATE",
            NamespaceKind::DnsPublic => "DNS_PUBLIC",
        }
    }

    fn parse(s: &str) -> NamespaceKind {
        match s {
            "DNS_PRIVATE" => NamespaceKind::DnsPrivate,
            "DNS_PUBLIC" => NamespaceKind::DnsPublic,
            _ => NamespaceKind::Http,
        }
    }

    pub fn is_dns(self) -> bool {
        self != NamespaceKind::Http
    }
}

/// SOA TTL given to a DNS namespace created without one.
const DEFAULT_SOA_TTL: i64 = 15;

/// A namespace row with what the operations need beyond its API shape.
pub struct NamespaceRow {
    pub seq: i64,
    pub kind: NamespaceKind,
    pub shape: Namespace,
}

impl NamespaceRow {
    pub fn id(&self) -> &str {
        &self.shape.id
    }
}

fn from_row(row: &Row, ctx: &Ctx) -> rusqlite::Result<NamespaceRow> {
    let kind = NamespaceKind::parse(&row.get::<_, String>("type")?);
    let soa_ttl: Option<i64> = row.get("soa_ttl")?;
    Ok(NamespaceRow {
        seq: row.get("seq")?,
        kind,
        shape: Namespace {
            id: row.get("id")?,
            arn: row.get("arn")?,
            resource_owner: ctx.identity().account.clone(),
            name: row.get("name")?,
            kind: kind.as_str().to_string(),
            description: row.get("description")?,
            service_count: row.get("service_count")?,
            properties: NamespaceProperties {
                dns_properties: DnsProperties {
                    hosted_zone_id: row.get("hosted_zone_id")?,
                    soa: soa_ttl.map(|ttl| Soa { ttl: Some(ttl) }),
                },
                http_properties: HttpProperties { http_name: row.get("http_name")? },
            },
            create_date: row.get("create_date")?,
            creator_request_id: row.get("creator_request_id")?,
        },
    })
}

const SELECT: &str =
    "SELECT n.*, (SELECT count(*) FROM services s WHERE s.namespace_id = n.id) AS service_count
                      FROM namespaces n";

pub fn not_found(id: &str) -> RegistryError {
    RegistryError::NamespaceNotFound(format!("No namespace exists with ID: {id}"))
}

/// Looks a namespace up by id or ARN.
pub fn load(conn: &Connection, ctx: &Ctx, id_or_arn: &str) -> Result<NamespaceRow> {
    let id = ctx.identity().resolve("namespace", id_or_arn).ok_or_else(|| not_found(id_or_arn))?;
    conn.query_row(&format!("{SELECT} WHERE n.id = ?1"), [id], |r| from_row(r, ctx))
        .optional()?
        .ok_or_else(|| not_found(id_or_arn))
}

/// Looks a namespace up by its HttpName, as DiscoverInstances does.
pub fn load_by_http_name(conn: &Connection, ctx: &Ctx, http_name: &str) -> Result<NamespaceRow> {
    conn.query_row(&format!("{SELECT} WHERE n.http_name = ?1"), [http_name], |r| from_row(r, ctx))
        .optional()?
        .ok_or_else(|| {
            RegistryError::NamespaceNotFound(format!("No namespace exists with name: {http_name}"))
        })
}

fn soa_ttl(props: &Option<DnsNamespacePropertiesInput>) -> Result<Option<i64>> {
    let Some(props) = props else { return Ok(None) };
    let dns = validate::required(&props.dns_properties, "Properties.DnsProperties")?;
    let soa = validate::required(&dns.soa, "Properties.DnsProperties.SOA")?;
    validate::ttl(soa.ttl, "Properties.DnsProperties.SOA.TTL").map(Some)
}

impl Registry {
    pub fn create_namespace(&self, kind: NamespaceKind, req: CreateNamespaceRequest) -> Result<Value> {
        let name = validate::required(&req.name, "Name")?;
        match kind {
            NamespaceKind::Http => validate::namespace_name(name, 1024, "Name")?,
            NamespaceKind::DnsPrivate => validate::private_dns_name(name)?,
            NamespaceKind::DnsPublic => validate::public_dns_name(name)?,
        }
        validate::optional_max_len(&req.creator_request_id, 64, "CreatorRequestId")?;
        validate::optional_max_len(&req.description, 1024, "Description")?;
        let vpc = match kind {
            NamespaceKind::DnsPrivate => {
                let vpc = validate::required(&req.vpc, "Vpc")?;
                validate::max_len(vpc, 64, "Vpc")?;
                Some(vpc.clone())
            }
            _ if req.vpc.is_some() => {
                return Err(RegistryError::invalid("Vpc applies to private DNS namespaces only"));
            }
            _ => None,
        };
        let soa_ttl = match kind {
            NamespaceKind::Http if req.properties.is_some() => {
                return Err(RegistryError::invalid("Properties applies to DNS namespaces only"));
            }
            NamespaceKind::Http => None,
            _ => Some(soa_ttl(&req.properties)?.unwrap_or(DEFAULT_SOA_TTL)),
        };
        let new_tags = validate::tags(req.tags.as_deref().unwrap_or_default())?;
        if new_tags.len() > validate::MAX_TAGS_PER_RESOURCE {
            return Err(RegistryError::TooManyTags {
                message: format!("A resource can have at most {} tags", validate::MAX_TAGS_PER_RESOURCE),
                resource_name: name.clone(),
            });
        }
        let fingerprint = format!("{kind:?}|{name}|{:?}|{vpc:?}|{soa_ttl:?}|{new_tags:?}", req.description);
        let token = req.creator_request_id.as_deref();

        self.write(|tx, ctx| {
            if let Some((op, _)) = operations::replay(tx, "namespace", token, &fingerprint)? {
                return Ok(json!({ "OperationId": op }));
            }
            let count: i64 = tx.query_row("SELECT count(*) FROM namespaces", [], |r| r.get(0))?;
            if count >= ctx.settings.quotas.namespaces {
                return Err(RegistryError::ResourceLimitExceeded(format!(
                    "The namespace quota of {} per Region has been reached",
                    ctx.settings.quotas.namespaces
                )));
            }
            let http_name = claim_http_name(tx, kind, name, vpc.as_deref())?;
            let id = ids::namespace_id();
            let arn = ctx.identity().arn("namespace", &id);
            let hosted_zone = kind.is_dns().then(ids::hosted_zone_id);
            tx.execute(
                "INSERT INTO namespaces (id, arn, name, http_name, type, description, vpc, hosted_zone_id, soa_ttl, creator_request_id, create_date)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![id, arn, name, http_name, kind.as_str(), req.description, vpc, hosted_zone, soa_ttl, token, ctx.now],
            )?;
            tags::put(tx, &arn, &new_tags)?;
            ctx.changed(super::Change::Namespaces);
            let op = operations::record(tx, ctx, operations::CREATE_NAMESPACE, Targets { namespace: Some(&id), ..Default::default() })?;
            operations::remember(tx, "namespace", token, &fingerprint, Some(&op), Some(&id))?;
            Ok(json!({ "OperationId": op }))
        })
    }

    pub fn get_namespace(&self, req: IdRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let id = validate::required(&req.id, "Id")?;
            let ns = load(conn, ctx, id)?;
            Ok(json!({ "Namespace": ns.shape }))
        })
    }

    pub fn list_namespaces(&self, req: ListRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let page = paging::page(&req.next_token, req.max_results, 100)?;
            let filters = paging::filters(
                &req.filters,
                &[
                    ("TYPE", &[Condition::Eq, Condition::BeginsWith]),
                    ("NAME", &[Condition::Eq, Condition::BeginsWith]),
                    ("HTTP_NAME", &[Condition::Eq, Condition::BeginsWith]),
                    ("RESOURCE_OWNER", &[Condition::Eq]),
                ],
            )?;
            for f in &filters {
                if f.name == "RESOURCE_OWNER" && !["SELF", "OTHER_ACCOUNTS"].contains(&f.values[0].as_str()) {
                    return Err(RegistryError::invalid(
                        "Filters.Values for RESOURCE_OWNER must be SELF or OTHER_ACCOUNTS",
                    ));
                }
                if f.name == "TYPE"
                    && f.condition == Condition::Eq
                    && !["HTTP", "DNS_PUBLIC", "DNS_PRIVATE"].contains(&f.values[0].as_str())
                {
                    return Err(RegistryError::invalid(
                        "Filters.Values for TYPE must be HTTP, DNS_PUBLIC or DNS_PRIVATE",
                    ));
                }
            }
            let mut stmt = conn.prepare(&format!("{SELECT} WHERE n.seq > ?1 ORDER BY n.seq LIMIT ?2"))?;
            let rows = stmt
                .query_map(params![page.after, page.limit as i64 + 1], |r| {
                    from_row(r, ctx).map(|ns| (ns.seq, ns))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (rows, next) = paging::finish(rows, page.limit);
            let namespaces: Vec<Value> = rows
                .into_iter()
                .map(|(_, ns)| ns.shape)
                .filter(|ns| {
                    filters.iter().all(|f| match f.name.as_str() {
                        "TYPE" => f.matches(&ns.kind),
                        "NAME" => f.matches(&ns.name),
                        "HTTP_NAME" => f.matches(&ns.properties.http_properties.http_name),
                        // Every namespace here is this account's own; none is shared with it.
                        "RESOURCE_OWNER" => f.values[0] == "SELF",
                        _ => false,
                    })
                })
                .map(|ns| {
                    let mut v = json!(ns);
                    // NamespaceSummary has no CreatorRequestId.
                    if let Some(o) = v.as_object_mut() {
                        o.remove("CreatorRequestId");
                    }
                    v
                })
                .collect();
            let mut out = json!({ "Namespaces": namespaces });
            if let Some(next) = next {
                out["NextToken"] = json!(next);
            }
            Ok(out)
        })
    }

    pub fn update_namespace(&self, kind: NamespaceKind, req: UpdateNamespaceRequest) -> Result<Value> {
        let id = validate::required(&req.id, "Id")?.clone();
        let change = validate::required(&req.namespace, "Namespace")?;
        validate::optional_max_len(&req.updater_request_id, 64, "UpdaterRequestId")?;
        let description = match kind {
            NamespaceKind::Http => Some(validate::required(&change.description, "Namespace.Description")?),
            _ => change.description.as_ref(),
        };
        if let Some(d) = description {
            validate::max_len(d, 1024, "Namespace.Description")?;
        }
        let soa_ttl = match kind {
            NamespaceKind::Http if change.properties.is_some() => {
                return Err(RegistryError::invalid("Namespace.Properties applies to DNS namespaces only"));
            }
            NamespaceKind::Http => None,
            _ => soa_ttl(&change.properties)?,
        };
        let token = req.updater_request_id.as_deref();
        let fingerprint = format!("{id}|{description:?}|{soa_ttl:?}");
        self.write(|tx, ctx| {
            let ns = load(tx, ctx, &id)?;
            if ns.kind != kind {
                return Err(RegistryError::invalid(format!(
                    "Namespace {} is of type {}, not {}",
                    ns.id(),
                    ns.kind.as_str(),
                    kind.as_str()
                )));
            }
            let scope = format!("update-namespace:{}", ns.id());
            if let Some((op, _)) = operations::replay(tx, &scope, token, &fingerprint)? {
                return Ok(json!({ "OperationId": op }));
            }
            if let Some(d) = description {
                tx.execute("UPDATE namespaces SET description = ?1 WHERE id = ?2", params![d, ns.id()])?;
            }
            if let Some(ttl) = soa_ttl {
                tx.execute("UPDATE namespaces SET soa_ttl = ?1 WHERE id = ?2", params![ttl, ns.id()])?;
            }
            ctx.changed(super::Change::Namespaces);
            let op = operations::record(
                tx,
                ctx,
                operations::UPDATE_NAMESPACE,
                Targets { namespace: Some(ns.id()), ..Default::default() },
            )?;
            operations::remember(tx, &scope, token, &fingerprint, Some(&op), Some(ns.id()))?;
            Ok(json!({ "OperationId": op }))
        })
    }

    pub fn delete_namespace(&self, req: IdRequest) -> Result<Value> {
        let id = validate::required(&req.id, "Id")?.clone();
        self.write(|tx, ctx| {
            let ns = load(tx, ctx, &id)?;
            if ns.shape.service_count > 0 {
                return Err(RegistryError::ResourceInUse(format!(
                    "Namespace {} has {} service(s); delete them first",
                    ns.id(),
                    ns.shape.service_count
                )));
            }
            tags::delete_all(tx, &ns.shape.arn)?;
            tx.execute(
                "DELETE FROM idempotency WHERE scope = ?1",
                [format!("update-namespace:{}", ns.id())],
            )?;
            tx.execute("DELETE FROM namespaces WHERE id = ?1", [ns.id()])?;
            ctx.changed(super::Change::Namespaces);
            let op = operations::record(
                tx,
                ctx,
                operations::DELETE_NAMESPACE,
                Targets { namespace: Some(ns.id()), ..Default::default() },
            )?;
            Ok(json!({ "OperationId": op }))
        })
    }
}

/// Decides a new namespace's HttpName, the name DiscoverInstances takes, which must be unique.
///
/// An HTTP namespace's name is its HttpName, so it must be free. A DNS namespace may reuse a name
/// (another VPC, or public beside private), as in AWS; it then gets the name with a generated
/// suffix as HttpName. The same private name in the same VPC, or an existing public namespace of
/// the same name, already exists.
fn claim_http_name(tx: &Connection, kind: NamespaceKind, name: &str, vpc: Option<&str>) -> Result<String> {
    let mut stmt = tx.prepare(
        "SELECT id, type, vpc, creator_request_id FROM namespaces WHERE lower(name) = lower(?1) OR http_name = ?1",
    )?;
    let clashes = stmt
        .query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (id, other_type, other_vpc, crid) in &clashes {
        let other = NamespaceKind::parse(other_type);
        let same = match kind {
            NamespaceKind::Http => true,
            NamespaceKind::DnsPrivate => other == kind && other_vpc.as_deref() == vpc,
            NamespaceKind::DnsPublic => other == kind,
        };
        if same {
            return Err(RegistryError::NamespaceAlreadyExists {
                message: format!("A namespace named {name} already exists: {id}"),
                creator_request_id: crid.clone(),
                namespace_id: id.clone(),
            });
        }
    }
    let taken = |candidate: &str| -> Result<bool> {
        Ok(tx
            .query_row("SELECT 1 FROM namespaces WHERE http_name = ?1", [candidate], |_| Ok(()))
            .optional()?
            .is_some())
    };
    if !taken(name)? {
        return Ok(name.to_string());
    }
    loop {
        let suffix = &ids::namespace_id()[3..11];
        let candidate = format!("{name}-{suffix}");
        if !taken(&candidate)? {
            return Ok(candidate);
        }
    }
}
