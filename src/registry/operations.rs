//! Operation records. Cloud Map's mutating calls are asynchronous in AWS and answer with an
//! OperationId; here the work is done by the time the call returns, so every operation is recorded
//! as SUCCESS in the same transaction as the change it describes.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use super::error::{RegistryError, Result};
use super::paging::{self, Condition};
use super::shapes::{GetOperationRequest, ListRequest, Operation};
use super::{Ctx, Registry, ids, validate};

pub const CREATE_NAMESPACE: &str = "CREATE_NAMESPACE";
pub const DELETE_NAMESPACE: &str = "DELETE_NAMESPACE";
pub const UPDATE_NAMESPACE: &str = "UPDATE_NAMESPACE";
pub const UPDATE_SERVICE: &str = "UPDATE_SERVICE";
pub const REGISTER_INSTANCE: &str = "REGISTER_INSTANCE";
pub const DEREGISTER_INSTANCE: &str = "DEREGISTER_INSTANCE";
const TYPES: &[&str] = &[
    CREATE_NAMESPACE,
    DELETE_NAMESPACE,
    UPDATE_NAMESPACE,
    UPDATE_SERVICE,
    REGISTER_INSTANCE,
    DEREGISTER_INSTANCE,
];

/// What an operation acted on.
#[derive(Default)]
pub struct Targets<'a> {
    pub namespace: Option<&'a str>,
    pub service: Option<&'a str>,
    pub instance: Option<&'a str>,
}

/// Records a completed operation and returns its id.
pub fn record(tx: &Connection, ctx: &Ctx, kind: &str, targets: Targets) -> Result<String> {
    let id = ids::operation_id();
    tx.execute(
        "INSERT INTO operations (id, type, status, namespace_id, service_id, instance_id, create_date, update_date)
         VALUES (?1, ?2, 'SUCCESS', ?3, ?4, ?5, ?6, ?6)",
        params![id, kind, targets.namespace, targets.service, targets.instance, ctx.now],
    )?;
    Ok(id)
}

/// An operation as stored: its API shape and what the list filters match on.
struct OperationRow {
    seq: i64,
    namespace_id: Option<String>,
    service_id: Option<String>,
    shape: Operation,
}

fn from_row(row: &Row, account: &str) -> rusqlite::Result<OperationRow> {
    let kind: String = row.get("type")?;
    let namespace_id: Option<String> = row.get("namespace_id")?;
    let service_id: Option<String> = row.get("service_id")?;
    let instance_id: Option<String> = row.get("instance_id")?;
    let mut targets = BTreeMap::new();
    let mut target = |name: &str, id: &Option<String>| {
        if let Some(id) = id {
            targets.insert(name.to_string(), id.clone());
        }
    };
    match kind.as_str() {
        CREATE_NAMESPACE | DELETE_NAMESPACE | UPDATE_NAMESPACE => target("NAMESPACE", &namespace_id),
        UPDATE_SERVICE => target("SERVICE", &service_id),
        _ => {
            target("SERVICE", &service_id);
            target("INSTANCE", &instance_id);
        }
    }
    Ok(OperationRow {
        seq: row.get("seq")?,
        shape: Operation {
            id: row.get("id")?,
            owner_account: account.to_string(),
            kind,
            status: row.get("status")?,
            error_message: None,
            error_code: None,
            create_date: row.get("create_date")?,
            update_date: row.get("update_date")?,
            targets,
        },
        namespace_id,
        service_id,
    })
}

/// Idempotency of CreatorRequestId / UpdaterRequestId tokens within a scope.
///
/// The same token with the same request (`fingerprint`) is a retry and gets the first answer: the
/// stored operation id and resource id. The same token with a different request is AWS's
/// `DuplicateRequest`.
pub fn replay(
    tx: &Connection,
    scope: &str,
    token: Option<&str>,
    fingerprint: &str,
) -> Result<Option<(Option<String>, Option<String>)>> {
    let Some(token) = token else { return Ok(None) };
    let found: Option<(String, Option<String>, Option<String>)> = tx
        .query_row(
            "SELECT fingerprint, operation_id, resource_id FROM idempotency WHERE scope = ?1 AND token = ?2",
            params![scope, token],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match found {
        None => Ok(None),
        Some((stored, op, resource)) if stored == fingerprint => Ok(Some((op, resource))),
        Some((_, op, resource)) => Err(RegistryError::DuplicateRequest {
            message: format!("The request token '{token}' was already used for a different request"),
            duplicate_operation_id: op.or(resource).unwrap_or_default(),
        }),
    }
}

pub fn remember(
    tx: &Connection,
    scope: &str,
    token: Option<&str>,
    fingerprint: &str,
    operation_id: Option<&str>,
    resource_id: Option<&str>,
) -> Result<()> {
    if let Some(token) = token {
        tx.execute(
            "INSERT OR REPLACE INTO idempotency (scope, token, fingerprint, operation_id, resource_id)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![scope, token, fingerprint, operation_id, resource_id],
        )?;
    }
    Ok(())
}

impl Registry {
    pub fn get_operation(&self, req: GetOperationRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let id = validate::required(&req.operation_id, "OperationId")?;
            validate::max_len(id, 255, "OperationId")?;
            validate::owner_account(&req.owner_account, &ctx.identity().account).map_err(|e| match e {
                RegistryError::NamespaceNotFound(_) => {
                    RegistryError::OperationNotFound(format!("No operation found with ID: {id}"))
                }
                other => other,
            })?;
            let account = ctx.identity().account.clone();
            let op = conn
                .query_row("SELECT * FROM operations WHERE id = ?1", [id], |r| from_row(r, &account))
                .optional()?
                .ok_or_else(|| {
                    RegistryError::OperationNotFound(format!("No operation found with ID: {id}"))
                })?;
            Ok(json!({ "Operation": op.shape }))
        })
    }

    pub fn list_operations(&self, req: ListRequest) -> Result<Value> {
        self.read(|conn, ctx| {
            let page = paging::page(&req.next_token, req.max_results, 100)?;
            let filters = paging::filters(
                &req.filters,
                &[
                    ("NAMESPACE_ID", &[Condition::Eq]),
                    ("SERVICE_ID", &[Condition::Eq]),
                    ("STATUS", &[Condition::Eq, Condition::In]),
                    ("TYPE", &[Condition::Eq, Condition::In]),
                    ("UPDATE_DATE", &[Condition::Between]),
                ],
            )?;
            let mut dates = None;
            for f in &filters {
                match f.name.as_str() {
                    "STATUS" => {
                        for v in &f.values {
                            if !["SUBMITTED", "PENDING", "SUCCESS", "SUCCEED", "FAIL"].contains(&v.as_str()) {
                                return Err(RegistryError::invalid(format!(
                                    "Filters.Values '{v}' is not an operation status"
                                )));
                            }
                        }
                    }
                    "TYPE" => {
                        if let Some(v) = f.values.iter().find(|v| !TYPES.contains(&v.as_str())) {
                            return Err(RegistryError::invalid(format!(
                                "Filters.Values '{v}' is not an operation type"
                            )));
                        }
                    }
                    "UPDATE_DATE" => {
                        let parse = |v: &String| {
                            v.parse::<f64>().map_err(|_| {
                                RegistryError::invalid(format!(
                                    "Filters.Values '{v}' for UPDATE_DATE is not a Unix timestamp"
                                ))
                            })
                        };
                        dates = Some((parse(&f.values[0])?, parse(&f.values[1])?));
                    }
                    _ => {}
                }
            }
            let account = ctx.identity().account.clone();
            let mut stmt = conn.prepare("SELECT * FROM operations WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = stmt
                .query_map(params![page.after, page.limit as i64 + 1], |r| {
                    from_row(r, &account).map(|op| (op.seq, op))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (rows, next) = paging::finish(rows, page.limit);
            let identity = ctx.identity();
            let ops: Vec<Value> = rows
                .into_iter()
                .map(|(_, row)| row)
                .filter(|row| {
                    let op = &row.shape;
                    filters.iter().all(|f| match f.name.as_str() {
                        "NAMESPACE_ID" => row
                            .namespace_id
                            .as_deref()
                            .is_some_and(|ns| identity.resolve("namespace", &f.values[0]) == Some(ns)),
                        "SERVICE_ID" => row
                            .service_id
                            .as_deref()
                            .is_some_and(|svc| identity.resolve("service", &f.values[0]) == Some(svc)),
                        "STATUS" => f
                            .values
                            .iter()
                            .any(|v| v == &op.status || (v == "SUCCEED" && op.status == "SUCCESS")),
                        "TYPE" => f.matches(&op.kind),
                        "UPDATE_DATE" => {
                            dates.is_some_and(|(from, to)| op.update_date >= from && op.update_date <= to)
                        }
                        _ => false,
                    })
                })
                .map(|row| json!({ "Id": row.shape.id, "Status": row.shape.status }))
                .collect();
            let mut out = json!({ "Operations": ops });
            if let Some(next) = next {
                out["NextToken"] = json!(next);
            }
            Ok(out)
        })
    }
}
