//! Durable state of the embedded registry: one SQLite database in the data dir.
//!
//! Every registry write runs as one `BEGIN IMMEDIATE` transaction committed with
//! `synchronous=FULL` in WAL mode before the API acknowledges it, so an acknowledged write survives
//! `kill -9` and power loss, and a crash mid-write leaves the previous state (never half a write).
//! Foreign keys make orphans (a service without its namespace, an instance without its service)
//! impossible rather than merely unlikely. A database that is corrupt, unreadable, of a newer
//! schema, or held by another process is refused with a clear error and left untouched.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// Schema version this binary writes; a database with a newer one is refused, not downgraded.
const SCHEMA_VERSION: i64 = 1;
const DB_FILE: &str = "registry.sqlite3";
const LOCK_FILE: &str = "registry.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("data dir {path} is in use by another cloudmap-dns process (lock held on {lock})")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error(
        "registry database {path} cannot be read: {source}; the file was left untouched (restore it from a backup, or move it away to start empty)"
    )]
    Unreadable { path: PathBuf, source: rusqlite::Error },
    #[error(
        "registry database {path} is corrupt: {detail}; the file was left untouched (restore it from a backup, or move it away to start empty)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "registry database {path} has schema version {found}, newer than this binary's {SCHEMA_VERSION}; upgrade cloudmap-dns"
    )]
    TooNew { path: PathBuf, found: i64 },
}

/// The opened store: the connection and the lock that keeps a second process out of the data dir.
pub struct Store {
    pub conn: Connection,
    /// Held for the life of the process; the OS releases it on exit, even on `kill -9`.
    _lock: File,
}

impl Store {
    /// Opens (creating when absent) the registry database under `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let data_dir_err = |source| StoreError::DataDir { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(data_dir_err)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(data_dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: dir.to_path_buf(), lock: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(data_dir_err(e)),
        }

        let path = dir.join(DB_FILE);
        let exists = path.exists();
        if exists {
            // Probe read-only first: nothing below may write to a file we have not validated.
            check_existing(&path)?;
        }
        let unreadable = |source| StoreError::Unreadable { path: path.clone(), source };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(unreadable)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )
        .map_err(unreadable)?;
        if !exists {
            conn.execute_batch(SCHEMA).map_err(unreadable)?;
        }
        Ok(Store { conn, _lock: lock })
    }
}

/// Validates an existing database without writing to it.
fn check_existing(path: &Path) -> Result<(), StoreError> {
    let unreadable = |source| StoreError::Unreadable { path: path.to_path_buf(), source };
    let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), detail };
    // A read-only open still replays a WAL left by a crash in memory, so committed writes count.
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(unreadable)?;
    let version: Option<i64> = match conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))
        .optional()
    {
        Ok(v) => v.and_then(|s| s.parse().ok()),
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if matches!(e.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) =>
        {
            return Err(corrupt(msg.unwrap_or_else(|| e.to_string())));
        }
        Err(rusqlite::Error::SqliteFailure(e, Some(msg))) if msg.contains("no such table") => {
            let _ = e;
            return Err(corrupt("it is not a cloudmap-dns registry (no meta table)".into()));
        }
        Err(e) => return Err(unreadable(e)),
    };
    let Some(version) = version else {
        return Err(corrupt("it has no schema version".into()));
    };
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew { path: path.to_path_buf(), found: version });
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, msg)
            if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) =>
        {
            corrupt(msg.unwrap_or_else(|| f.to_string()))
        }
        other => unreadable(other),
    })?;
    if check != "ok" {
        return Err(corrupt(check));
    }
    let violations: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
        .map_err(unreadable)?;
    if violations > 0 {
        return Err(corrupt(format!("{violations} rows reference missing parents")));
    }
    Ok(())
}

/// Takes the next value of the registry-wide revision counter. Revisions only ever increase, across
/// services and across restarts, so a service re-created under the same name never repeats one.
pub fn next_revision(tx: &Connection) -> rusqlite::Result<i64> {
    tx.query_row(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision' RETURNING CAST(value AS INTEGER)",
        [],
        |r| r.get(0),
    )
}

#[cfg(test)]
fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
}

const SCHEMA: &str = "
BEGIN;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1'), ('revision', '0');

CREATE TABLE namespaces (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    arn TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    http_name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL CHECK (type IN ('HTTP', 'DNS_PRIVATE', 'DNS_PUBLIC')),
    description TEXT,
    vpc TEXT,
    hosted_zone_id TEXT,
    soa_ttl INTEGER,
    creator_request_id TEXT,
    create_date REAL NOT NULL
);

CREATE TABLE services (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    arn TEXT NOT NULL UNIQUE,
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    name TEXT NOT NULL,
    description TEXT,
    type TEXT NOT NULL,
    dns_config TEXT,
    health_check_config TEXT,
    health_check_custom_config TEXT,
    creator_request_id TEXT,
    create_date REAL NOT NULL,
    revision INTEGER NOT NULL,
    UNIQUE (namespace_id, name)
);
CREATE INDEX services_by_namespace ON services(namespace_id);

CREATE TABLE service_attributes (
    service_id TEXT NOT NULL REFERENCES services(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (service_id, key)
);

CREATE TABLE instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id TEXT NOT NULL REFERENCES services(id),
    id TEXT NOT NULL,
    creator_request_id TEXT,
    attributes TEXT NOT NULL,
    health TEXT NOT NULL CHECK (health IN ('HEALTHY', 'UNHEALTHY', 'UNKNOWN')),
    pending_health TEXT CHECK (pending_health IN ('HEALTHY', 'UNHEALTHY')),
    pending_health_at REAL,
    UNIQUE (service_id, id)
);

CREATE TABLE operations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    namespace_id TEXT,
    service_id TEXT,
    instance_id TEXT,
    create_date REAL NOT NULL,
    update_date REAL NOT NULL
);
CREATE INDEX operations_by_update ON operations(update_date);

-- CreatorRequestId / UpdaterRequestId tokens: a retry with the same token and the same request is
-- answered with the first answer; the same token with a different request is a DuplicateRequest.
CREATE TABLE idempotency (
    scope TEXT NOT NULL,
    token TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    operation_id TEXT,
    resource_id TEXT,
    PRIMARY KEY (scope, token)
);

CREATE TABLE tags (
    arn TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (arn, key)
);
COMMIT;
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(schema_version(&store.conn).unwrap(), SCHEMA_VERSION);
            assert_eq!(next_revision(&store.conn).unwrap(), 1);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(next_revision(&store.conn).unwrap(), 2);
    }

    #[test]
    fn refuses_second_process_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Locked { .. })));
    }

    #[test]
    fn corrupt_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&db, &garbage).unwrap();
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&db).unwrap(), garbage);
        assert!(!dir.path().join(format!("{DB_FILE}-wal")).exists());
    }

    #[test]
    fn foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        Connection::open(&db).unwrap().execute_batch("CREATE TABLE t (x);").unwrap();
        let before = std::fs::read(&db).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Corrupt { .. })));
        assert_eq!(std::fs::read(&db).unwrap(), before);
    }
}
