//! Test support: a fresh database per test on SQLite and on PostgreSQL.
//!
//! PostgreSQL tests read `DATABASE_URL` and create their own database, so tests never
//! share state. Without `DATABASE_URL` they are skipped with a message — unless
//! `REQUIRE_POSTGRES_TESTS=1` (set by `.ci/run`), where they fail instead.

use std::sync::Arc;

use sqlx::Executor;

use crate::clock::{Clock, ManualClock};
use crate::crypto::Key32;
use crate::store::Db;
use crate::vault::{RootKey, RootKeySource, Vault, VaultSettings};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A test database and whatever must outlive it.
pub struct TestDb {
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL admin URL, or `None` when these tests should be skipped.
fn postgres_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => Some(url),
        _ => {
            let required = std::env::var("REQUIRE_POSTGRES_TESTS").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "DATABASE_URL must point at PostgreSQL: these tests are required"
            );
            eprintln!("skipping PostgreSQL test: DATABASE_URL is not set");
            None
        }
    }
}

impl TestDb {
    pub async fn new(engine: Engine) -> Option<TestDb> {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/strongbox.db", dir.path().display());
                let db = Db::connect(&url).await.unwrap();
                db.migrate().await.unwrap();
                Some(TestDb {
                    db,
                    _dir: Some(dir),
                })
            }
            Engine::Postgres => {
                let admin = postgres_url()?;
                let name = format!("sbx_test_{}", uuid::Uuid::new_v4().simple());
                let admin_db = Db::connect(&admin).await.unwrap();
                drop_stale_databases(&admin_db).await;
                admin_db
                    .pool()
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap();
                // Durability is not under test here; speed is welcome.
                admin_db
                    .pool()
                    .execute(format!("ALTER DATABASE {name} SET synchronous_commit = off").as_str())
                    .await
                    .unwrap();
                admin_db.close().await;
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                let url = format!("{base}/{name}");
                let db = Db::connect(&url).await.unwrap();
                db.migrate().await.unwrap();
                Some(TestDb { db, _dir: None })
            }
        }
    }
}

/// Drops test databases that earlier runs left behind, once per test process and before
/// this process creates any of its own. Databases still in use are left alone.
async fn drop_stale_databases(admin: &Db) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'sbx\\_%'",
        )
        .fetch_all(admin.pool())
        .await
        .unwrap_or_default();
        for name in names {
            let _ = admin
                .pool()
                .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                .await;
        }
    })
    .await;
}

/// A root key for tests.
pub fn root() -> RootKey {
    RootKey::new(Key32::from_slice(&[7u8; 32]).unwrap(), RootKeySource::Env)
}

/// A vault over `db` with a manual clock at a fixed time.
pub fn vault(db: &Db, settings: VaultSettings) -> (Arc<Vault>, ManualClock) {
    let clock = ManualClock::at_unix(1_800_000_000);
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    (Arc::new(Vault::new(db.clone(), root(), settings, c)), clock)
}

/// Runs an async test body once per engine.
#[macro_export]
macro_rules! both_backends {
    ($(async fn $name:ident($db:ident: TestDb) $body:block)*) => {$(
        mod $name {
            use super::*;
            async fn body($db: $crate::testkit::TestDb) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::testkit::TestDb::new($crate::testkit::Engine::Sqlite).await.unwrap();
                body(db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = $crate::testkit::TestDb::new($crate::testkit::Engine::Postgres).await {
                    body(db).await;
                }
            }
        }
    )*};
}
