//! Shared test support: a scratch directory per test, a database on either backend, and
//! a way to run the binary inside that directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use sqlx::Executor;
use strongbox::audit::{Actor, Event, Kind};
use strongbox::clock::{Clock, SystemClock};
use strongbox::crypto::Key32;
use strongbox::secret::{AccessToken, RefreshToken};
use strongbox::store::{Db, users};
use strongbox::vault::{RootKey, RootKeySource, TokenSet, Vault, VaultSettings};

pub const BIN: &str = env!("CARGO_BIN_EXE_strongbox");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A working directory with its own database, as an operator would have.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub engine: Engine,
}

fn postgres_admin_url() -> Option<String> {
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

impl Site {
    /// A fresh site; `None` when PostgreSQL tests are skipped.
    pub async fn new(engine: Engine) -> Option<Site> {
        let dir = tempfile::tempdir().unwrap();
        let url = match engine {
            Engine::Sqlite => format!("sqlite://{}/data/strongbox.db", dir.path().display()),
            Engine::Postgres => {
                let admin = postgres_admin_url()?;
                drop_stale_databases(&admin).await;
                let name = format!("sbx_it_{}", uuid::Uuid::new_v4().simple());
                sql(&admin, &format!("CREATE DATABASE {name}")).await;
                sql(
                    &admin,
                    &format!("ALTER DATABASE {name} SET synchronous_commit = off"),
                )
                .await;
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
        };
        Some(Site { dir, url, engine })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// A `strongbox` command in this site's directory, with its database.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.path())
            .env_remove("STRONGBOX_ROOT_KEY")
            .env_remove("STRONGBOX_NEW_ROOT_KEY")
            .env("STRONGBOX_DATABASE_URL", &self.url)
            .env("RUST_LOG", "warn");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strongbox {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub async fn db(&self) -> Db {
        let db = Db::connect(&self.url).await.unwrap();
        db.migrate().await.unwrap();
        db
    }

    /// The vault as the binary would open it, reading `keys/root.key`.
    pub async fn vault(&self) -> Arc<Vault> {
        let root = strongbox::vault::rootkey::load(&self.keys_dir(), None, true)
            .unwrap()
            .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Arc::new(Vault::new(
            self.db().await,
            root,
            VaultSettings::default(),
            clock,
        ))
    }
}

/// Drops test databases that earlier runs left behind, once per test process and before
/// this process creates any of its own. Databases still in use are left alone.
async fn drop_stale_databases(admin: &str) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        sqlx::any::install_default_drivers();
        // Best effort: a failed clean-up must not fail the suite.
        let Ok(mut conn) = <sqlx::AnyConnection as sqlx::Connection>::connect(admin).await else {
            return;
        };
        let names: Vec<String> = match sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'sbx\\_%'",
        )
        .fetch_all(&mut conn)
        .await
        {
            Ok(names) => names,
            Err(e) => {
                eprintln!("could not list stale test databases: {e}");
                return;
            }
        };
        for name in names {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                .await;
        }
    })
    .await;
}

/// Runs one statement against `url` on a connection of the test's own.
pub async fn sql(url: &str, statement: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&fix_sqlite(url))
        .await
        .unwrap();
    conn.execute(statement).await.unwrap();
}

/// One number from `query` against `url`, on a connection of the test's own.
pub async fn count(url: &str, query: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&fix_sqlite(url))
        .await
        .unwrap();
    sqlx::query_scalar(query)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn fix_sqlite(url: &str) -> String {
    if url.starts_with("sqlite") && !url.contains('?') {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    }
}

/// A known token set; `access` is what leak scans look for.
pub fn tokens(access: &str) -> TokenSet {
    TokenSet {
        access_token: AccessToken::new(access.to_owned()),
        refresh_token: Some(RefreshToken::new(format!("{access}-refresh"))),
        id_token: None,
        token_type: "Bearer".into(),
        expires_at: Some(2_000_000_000),
        scopes: vec!["read".into()],
    }
}

/// Creates `users` users and `n` records spread over them, four writers at a time.
pub async fn seed(vault: &Arc<Vault>, users_n: usize, n: usize, prefix: &str) {
    let mut tx = vault.db().begin().await.unwrap();
    for u in 0..users_n {
        users::insert(&mut tx, &format!("user{u}"), 0)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let v = Arc::clone(vault);
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                for i in (w..n).step_by(4) {
                    let mut tx = v.db().begin().await.unwrap();
                    let (u, p) = (format!("user{}", i % users_n), format!("p{}", i / users_n));
                    v.store(
                        &mut tx,
                        Event::new(Kind::CredentialStored, Actor::System, format!("user:{u}")),
                        &u,
                        &p,
                        &tokens(&format!("{prefix}{i}")),
                        strongbox::vault::Scopes::Replace,
                    )
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A root key for tests that do not go through the binary.
pub fn fixed_root(byte: u8) -> RootKey {
    RootKey::new(Key32::from_slice(&[byte; 32]).unwrap(), RootKeySource::Env)
}

/// `keys status --json` parsed.
pub fn status_json(site: &Site) -> serde_json::Value {
    serde_json::from_str(&site.ok(&["keys", "status", "--json"])).unwrap()
}

/// Every byte the site stores: the SQLite files, or a `pg_dump` of its database.
pub fn at_rest(site: &Site) -> Vec<u8> {
    match site.engine {
        Engine::Sqlite => {
            let mut bytes = Vec::new();
            for entry in std::fs::read_dir(site.path().join("data")).unwrap() {
                bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
            }
            bytes
        }
        Engine::Postgres => {
            let out = std::process::Command::new("pg_dump")
                .arg(&site.url)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }
    }
}
