//! Every SQL statement lives under this module: the pool, migrations, transactions, and one
//! file per table group.
//!
//! One set of statements serves SQLite and PostgreSQL through sqlx's `Any` driver: `$N`
//! placeholders (SQLite reads them by number), portable types (TEXT ids, BIGINT times,
//! BLOB/BYTEA bytes). Where the dialects differ — row locks — [`Backend`] says which form to
//! use. Writers always go through [`Db::begin`], which on SQLite takes the write lock up
//! front (`BEGIN IMMEDIATE`) so a transaction never fails half-way on a stale snapshot.
//! A database failure is an `Err`, never a swallowed `None`.

pub mod agents;
pub mod audit;
mod checkpoint;
pub mod connection;
pub mod grants;
pub mod identities;
pub mod kek;
pub mod sessions;
pub mod users;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// A write transaction; the caller owns it and commits the change with its audit event.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;
/// A connection inside a transaction, as store functions take it.
pub type Conn = sqlx::AnyConnection;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How long opening the database keeps trying a server that refuses connections.
const OPEN_PATIENCE: Duration = Duration::from_secs(15);

/// Which SQL engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `FOR UPDATE` where the engine has row locks; SQLite's write lock already covers it.
    pub const fn for_update(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// How long a request waits for a connection. On PostgreSQL a server that is down or
    /// restarting refuses connections and the pool keeps trying until then: short, so that
    /// such a request is answered (`503`) promptly, and the same pool carries on by itself
    /// once the server is back. SQLite's waits are for the file's write lock, which a
    /// burst of writers can hold for longer.
    const fn acquire_timeout(self) -> Duration {
        match self {
            Backend::Sqlite => Duration::from_secs(15),
            Backend::Postgres => Duration::from_secs(3),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database_url must start with sqlite: or postgres:, got scheme {0:?}")]
    UnsupportedScheme(String),
    #[error("cannot create the directory {path} for the SQLite database: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The shared pool and its backend.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Cleared by [`Db::close`]; background work on the database stops with it, or when
    /// the last clone is dropped.
    open: Arc<AtomicBool>,
}

impl Db {
    /// Opens `url`, creating a SQLite file (and its directory) on first use.
    pub async fn connect(url: &str) -> Result<Db, OpenError> {
        sqlx::any::install_default_drivers();
        let scheme = url.split(':').next().unwrap_or_default();
        let (backend, url) = match scheme {
            "sqlite" => (Backend::Sqlite, sqlite_url(url)?),
            "postgres" | "postgresql" => (Backend::Postgres, url.to_owned()),
            other => return Err(OpenError::UnsupportedScheme(other.to_owned())),
        };
        let options = AnyConnectOptions::from_str(&url).map_err(OpenError::Connect)?;
        if backend == Backend::Sqlite {
            enable_wal(&options).await.map_err(OpenError::Connect)?;
        }
        let pool_options = || {
            match backend {
                Backend::Sqlite => {
                    AnyPoolOptions::new()
                        .max_connections(4)
                        .after_connect(|conn, _meta| {
                            Box::pin(async move {
                                // FULL: in WAL mode, NORMAL lets the last commits before a
                                // power loss vanish although their callers were told they were
                                // durable (a release answered, its audit event gone). FULL
                                // syncs the log at every commit; the journal's group commit
                                // keeps that to one sync per batch of releases.
                                conn.execute(
                                    "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                             PRAGMA busy_timeout = 15000;",
                                )
                                .await?;
                                conn.execute(checkpoint::POOL_PRAGMAS).await?;
                                Ok(())
                            })
                        })
                }
                Backend::Postgres => AnyPoolOptions::new().max_connections(8),
            }
            .acquire_timeout(backend.acquire_timeout())
            // No round trip before every statement to check the connection: a broken one
            // fails its statement and is dropped by the pool.
            .test_before_acquire(false)
        };
        // Opening waits longer than a request does for a server that is not up yet (one
        // started beside this process, or restarting).
        let patience = Instant::now() + OPEN_PATIENCE;
        let pool = loop {
            match pool_options().connect_with(options.clone()).await {
                Ok(pool) => break pool,
                Err(e) if is_unavailable(&e) && Instant::now() < patience => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(OpenError::Connect(e)),
            }
        };
        let open = Arc::new(AtomicBool::new(true));
        if backend == Backend::Sqlite {
            checkpoint::spawn(options, Arc::downgrade(&open));
        }
        Ok(Db {
            pool,
            backend,
            open,
        })
    }

    /// Applies pending migrations for this backend.
    pub async fn migrate(&self) -> Result<(), OpenError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Round-trips a trivial query.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.pool.execute("SELECT 1").await.map(|_| ())
    }

    pub async fn close(&self) {
        self.open.store(false, Ordering::Release);
        self.pool.close().await;
    }
}

/// Placeholders for a statement with many bound values, written and bound in text order:
/// `?` on SQLite, `$1`, `$2`, … on PostgreSQL. sqlx's SQLite driver resolves every `$N` by
/// its name, which SQLite answers with a linear scan of the statement's parameters, so
/// binding a statement of 4,000 `$N` took about 19 ms; `?` is bound by position. Never mix
/// the two forms in one statement: a `?` is numbered after the highest `$N` before it.
pub struct Params {
    sqlite: bool,
    next: usize,
}

impl Params {
    /// Placeholders for a statement run on `conn`.
    pub fn for_conn(conn: &Conn) -> Params {
        Params {
            sqlite: conn.backend_name().eq_ignore_ascii_case("sqlite"),
            next: 1,
        }
    }

    /// Appends the next placeholder to `sql`.
    pub fn push(&mut self, sql: &mut String) {
        if self.sqlite {
            sql.push('?');
        } else {
            sql.push('$');
            sql.push_str(&self.next.to_string());
        }
        self.next += 1;
    }

    /// Appends `(p, p, …)` with `n` placeholders.
    pub fn push_tuple(&mut self, sql: &mut String, n: usize) {
        sql.push('(');
        for j in 0..n {
            if j > 0 {
                sql.push(',');
            }
            self.push(sql);
        }
        sql.push(')');
    }
}

/// Switches a SQLite database to write-ahead logging. The mode is stored in the file, so
/// this runs once per open on one connection, and only changes what needs changing.
async fn enable_wal(options: &AnyConnectOptions) -> Result<(), sqlx::Error> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = options.connect().await?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.execute("PRAGMA journal_mode = WAL").await?;
    }
    conn.close().await
}

/// `sqlite://path` or `sqlite:path`: makes sure the parent directory exists and that the
/// file is created on first use.
fn sqlite_url(url: &str) -> Result<String, OpenError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let query = if query.split('&').any(|kv| kv.starts_with("mode=")) {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// True when `err` says the database is out of reach rather than that a statement was
/// wrong: the connection broke or was refused, the server is shutting down or starting up
/// (SQLSTATE classes 08 and 57P), or no connection came free in time. The same request
/// can succeed once the database is back.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// True when `err` is a unique-constraint violation.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_create_mode() -> Result<(), OpenError> {
        let dir = tempfile::tempdir().map_err(|source| OpenError::CreateDir {
            path: "tmp".into(),
            source,
        })?;
        let path = dir.path().join("sub/x.db");
        let url = sqlite_url(&format!("sqlite://{}", path.display()))?;
        assert!(url.ends_with("x.db?mode=rwc"));
        assert!(dir.path().join("sub").is_dir());
        assert_eq!(sqlite_url("sqlite::memory:")?, "sqlite://:memory:?mode=rwc");
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_commits_sync_fully() {
        // Every connection of the pool (the journal's batches and every other writer
        // take theirs from it) syncs the log at each commit: 2 is FULL.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}/s.db", dir.path().display()))
            .await
            .unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut conn = db.pool().acquire().await.unwrap();
            let mode: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(mode, 2, "synchronous = FULL");
            held.push(conn);
        }
        drop(held);
        let mut tx = db.begin().await.unwrap();
        let mode: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(mode, 2);
    }

    #[tokio::test]
    async fn sqlite_checkpoints_outside_commits() {
        // No commit checkpoints (the pool's connections have it off), and yet the log
        // reaches the database file: the background checkpointer copies it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.db");
        let db = Db::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        let every: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert!(every >= 16_384, "no checkpoint in a commit: {every}");
        conn.execute("CREATE TABLE t (b BLOB)").await.unwrap();
        for _ in 0..64 {
            sqlx::query("INSERT INTO t VALUES (randomblob(32768))")
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        drop(conn);
        let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let mut waited = 0;
        while size() < 2 << 20 && waited < 50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += 1;
        }
        assert!(size() >= 2 << 20, "the log was copied: {} bytes", size());
        db.close().await;
    }
}
