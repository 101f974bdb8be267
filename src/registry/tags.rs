//! Tags on namespaces and services, addressed by ARN.

use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::error::{RegistryError, Result};
use super::shapes::{ResourceArnRequest, TagResourceRequest, UntagResourceRequest};
use super::{Ctx, Registry, namespaces, services, validate};

pub fn put(tx: &Connection, arn: &str, tags: &[(String, String)]) -> Result<()> {
    for (k, v) in tags {
        tx.execute("INSERT OR REPLACE INTO tags (arn, key, value) VALUES (?1, ?2, ?3)", params![arn, k, v])?;
    }
    Ok(())
}

pub fn delete_all(tx: &Connection, arn: &str) -> Result<()> {
    tx.execute("DELETE FROM tags WHERE arn = ?1", [arn])?;
    Ok(())
}

/// Checks that `arn` names an existing namespace or service of ours; returns the canonical ARN.
fn resource(conn: &Connection, ctx: &Ctx, arn: &str) -> Result<String> {
    validate::max_len(arn, 1011, "ResourceARN")?;
    let not_found = || RegistryError::ResourceNotFound(format!("Resource not found: {arn}"));
    match ctx.identity().parse_resource_arn(arn)? {
        ("namespace", _) => namespaces::load(conn, ctx, arn).map(|n| n.shape.arn).map_err(|_| not_found()),
        _ => services::load(conn, ctx, arn).map(|s| s.shape.arn).map_err(|_| not_found()),
    }
}

impl Registry {
    pub fn tag_resource(&self, req: TagResourceRequest) -> Result<Value> {
        let arn = validate::required(&req.resource_arn, "ResourceARN")?.clone();
        let new = validate::tags(validate::required(&req.tags, "Tags")?)?;
        self.write(|tx, ctx| {
            let arn = resource(tx, ctx, &arn)?;
            put(tx, &arn, &new)?;
            let total: i64 =
                tx.query_row("SELECT count(*) FROM tags WHERE arn = ?1", [&arn], |r| r.get(0))?;
            if total as usize > validate::MAX_TAGS_PER_RESOURCE {
                // Returning the error rolls the transaction back: no tag of this call is kept.
                return Err(RegistryError::TooManyTags {
                    message: format!(
                        "A resource can have at most {} tags; this call would give it {total}",
                        validate::MAX_TAGS_PER_RESOURCE
                    ),
                    resource_name: arn,
                });
            }
            Ok(json!({}))
        })
    }

    pub fn untag_resource(&self, req: UntagResourceRequest) -> Result<Value> {
        let arn = validate::required(&req.resource_arn, "ResourceARN")?.clone();
        let keys = validate::required(&req.tag_keys, "TagKeys")?.clone();
        if keys.len() > 200 || keys.iter().any(|k| k.is_empty() || k.chars().count() > 128) {
            return Err(RegistryError::invalid("TagKeys must hold at most 200 keys of 1 to 128 characters"));
        }
        self.write(|tx, ctx| {
            let arn = resource(tx, ctx, &arn)?;
            for k in &keys {
                tx.execute("DELETE FROM tags WHERE arn = ?1 AND key = ?2", params![arn, k])?;
            }
            Ok(json!({}))
        })
    }

    pub fn list_tags_for_resource(&self, req: ResourceArnRequest) -> Result<Value> {
        let arn = validate::required(&req.resource_arn, "ResourceARN")?.clone();
        self.read(|conn, ctx| {
            let arn = resource(conn, ctx, &arn)?;
            let mut stmt = conn.prepare("SELECT key, value FROM tags WHERE arn = ?1 ORDER BY key")?;
            let tags = stmt
                .query_map([&arn], |r| {
                    Ok(json!({ "Key": r.get::<_, String>(0)?, "Value": r.get::<_, String>(1)? }))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(json!({ "Tags": tags }))
        })
    }
}
