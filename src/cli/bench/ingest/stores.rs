//! The stores a `bench ingest` run writes to: one per bridge run (ingest and push, limited
//! push, latency), each a SQLite file in the run's temp dir, or with `--store postgres://…` a
//! fresh database `cem_bench_<pid>_<nanos>_<run>` on that server, dropped at the end whatever
//! happened.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::store::{Store, StoreOptions};

/// Which backend the run's stores use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub(super) fn code(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Hands out one fresh store per bridge run and removes them all at the end.
pub(super) struct Stores {
    dir: PathBuf,
    /// The server's URL as given (`--store`): where databases are created and dropped.
    admin: Option<String>,
    /// Prefix of the databases created: `cem_bench_<pid>_<nanos>`.
    prefix: String,
    created: Vec<String>,
}

impl Stores {
    /// `store`: `None` (or `sqlite`) for SQLite files in `dir`, or a `postgres://` URL.
    pub(super) fn new(store: Option<&str>, dir: &Path, run: &str) -> anyhow::Result<Self> {
        let admin = match store.map(str::trim) {
            None | Some("") | Some("sqlite") => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(url.to_string())
            }
            Some(other) => bail!(
                "--store {other:?} is not understood: pass a postgres://user@host:5432/db URL (a scratch database is created there and dropped), or leave it out for SQLite in the temp dir"
            ),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            admin,
            prefix: format!("cem_bench_{}", run.replace('-', "_")),
            created: Vec::new(),
        })
    }

    pub(super) fn kind(&self) -> StoreKind {
        if self.admin.is_some() {
            StoreKind::Postgres
        } else {
            StoreKind::Sqlite
        }
    }

    /// A fresh store for the run named `name` (lower-case letters): its URL, migrated, so a
    /// bridge starting on it measures no migration.
    pub(super) async fn fresh(&mut self, name: &str) -> anyhow::Result<String> {
        let url = match &self.admin {
            None => format!("sqlite://{}", self.dir.join(format!("{name}.db")).display()),
            Some(admin) => {
                let db = format!("{}_{name}", self.prefix);
                crate::store::ops::create_database(admin, &db)
                    .await
                    .with_context(|| {
                        format!(
                            "creating the scratch database {db} on {} (is PostgreSQL up, and may this user create databases?)",
                            cem_connectors::amqp::redact_url(admin)
                        )
                    })?;
                self.created.push(db.clone());
                database_url(admin, &db)
            }
        };
        let store = Store::open(&url, &StoreOptions::default())
            .await
            .with_context(|| format!("opening the bench store for {name}"))?;
        store.close().await;
        Ok(url)
    }

    /// Drop every database created (best effort); SQLite files go with the temp dir.
    pub(super) async fn drop_all(&mut self) {
        let Some(admin) = &self.admin else {
            return;
        };
        for db in self.created.drain(..) {
            crate::store::ops::drop_database(admin, &db).await;
        }
    }
}

/// The URL of database `db` on the server of `admin` (same user, host, port and parameters).
pub(super) fn database_url(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    // `postgres://user@host:5432/db` → keep up to the slash after the authority.
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_database_url_keeps_the_server_user_and_parameters() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/test", "cem_bench_1"),
            "postgres://postgres@127.0.0.1:5432/cem_bench_1"
        );
        assert_eq!(
            database_url("postgres://u:p@h:5432/test?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn store_urls_other_than_postgres_are_refused_with_the_fix() {
        let dir = std::env::temp_dir();
        let e = Stores::new(Some("mysql://x"), &dir, "1-2").err().unwrap();
        assert!(e.to_string().contains("postgres://"), "{e}");
        assert_eq!(
            Stores::new(None, &dir, "1-2").unwrap().kind(),
            StoreKind::Sqlite
        );
        let pg = Stores::new(Some("postgres://h/db"), &dir, "1-2").unwrap();
        assert_eq!(pg.kind(), StoreKind::Postgres);
        assert_eq!(pg.prefix, "cem_bench_1_2");
    }
}
