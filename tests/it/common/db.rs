//! The stores under test: a SQLite file or a PostgreSQL database of the test's own.

use std::path::{Path, PathBuf};

use super::*;

/// The SQLite store of a test, opened directly (to read what is really stored).
pub async fn sqlite(db: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the test store")
}

pub fn pg_admin_url() -> String {
    std::env::var("PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Create a fresh database on the local PostgreSQL; returns (url, name).
pub async fn pg_database(name: &str) -> (String, String) {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let db = unique(&format!("cem_{name}"))
        .replace(['-', '.'], "_")
        .to_lowercase();
    let admin = sqlx::AnyPool::connect(&pg_admin_url())
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .expect("create database");
    admin.close().await;
    let base = pg_admin_url();
    let root = base
        .rsplit_once('/')
        .map(|(r, _)| r.to_string())
        .unwrap_or(base);
    (format!("{root}/{db}"), db)
}

/// A scratch database on one backend, dropped by `cleanup`.
pub struct Db {
    pub url: String,
    pub pg_name: Option<String>,
    pub dir: Option<PathBuf>,
}

impl Db {
    pub async fn sqlite(name: &str) -> Self {
        let dir = scratch_dir(name);
        Self {
            url: format!("sqlite://{}", dir.join("store.db").display()),
            pg_name: None,
            dir: Some(dir),
        }
    }

    pub async fn postgres(name: &str) -> Self {
        let (url, db) = pg_database(name).await;
        Self {
            url,
            pg_name: Some(db),
            dir: None,
        }
    }

    pub async fn open(&self) -> cem_bridge::store::Store {
        cem_bridge::store::Store::open(&self.url, &cem_bridge::store::StoreOptions::default())
            .await
            .expect("store opens")
    }

    /// Run SQL directly (to set up states the write paths reach only through time or pushes).
    pub async fn exec(&self, sql: &str) {
        use sqlx::Executor;
        let pool = sqlx::AnyPool::connect(&self.url).await.expect("connect");
        pool.execute(sqlx::AssertSqlSafe(sql.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    }

    /// `SELECT COUNT(*) AS n …` or any query returning one BIGINT column `n`.
    pub async fn count(&self, sql: &str) -> i64 {
        use sqlx::Row;
        let pool = sqlx::AnyPool::connect(&self.url).await.expect("connect");
        let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&pool)
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
        n
    }

    pub async fn cleanup(self) {
        if let Some(db) = self.pg_name {
            drop_pg_database(&db).await;
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Drop a database made by [`pg_database`] (best effort).
pub async fn drop_pg_database(db: &str) {
    use sqlx::Executor;
    if let Ok(admin) = sqlx::AnyPool::connect(&pg_admin_url()).await {
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .await;
        admin.close().await;
    }
}

/// `store.audit(Some(key))` as (action, message id) pairs, oldest first.
pub async fn audit_of(
    store: &cem_bridge::store::Store,
    key: &str,
) -> Vec<(String, Option<String>)> {
    store
        .audit(Some(key))
        .await
        .unwrap_or_else(|e| panic!("audit({key}): {e}"))
        .into_iter()
        .map(|a| (a.action, a.message_id))
        .collect()
}

/// A survey job row for store-level tests (template OP-SAT-01, visit `vk_x`, connector `adt`).
pub fn job<'a>(
    id: &'a str,
    patient: &'a str,
    message: &'a str,
    due: i64,
) -> cem_bridge::store::NewJob<'a> {
    cem_bridge::store::NewJob {
        job_id: id,
        template: "OP-SAT-01",
        patient_key: patient,
        visit_key: "vk_x",
        id_card_key: None,
        mobile_key: None,
        due_at: due,
        payload: "{}",
        connector: "adt",
        message_id: message,
        dnd: true,
        stale_at: None,
    }
}

/// A dead letter without a stored body, for store-level tests.
pub fn dead_letter<'a>(
    message_id: Option<&'a str>,
    reason: &'a str,
) -> cem_bridge::store::DeadLetterEntry<'a> {
    cem_bridge::store::DeadLetterEntry {
        connector: "adt",
        message_id,
        reason,
        detail: "MSH-9 (message type) is missing",
        content_hash: "h",
        size_bytes: 49,
        delivery_count: 0,
        sealed_body: None,
        sealed_headers: None,
    }
}
