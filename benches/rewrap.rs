//! Rewrap throughput: seeds N records (default 1,000,000; `REWRAP_RECORDS`) under KEK 1,
//! rotates, and times `keys rewrap` — on SQLite, and on PostgreSQL when `DATABASE_URL`
//! is set. `REWRAP_BATCH=1000,5000` times one rewrap per batch size (rotating in between). Target: 1,000,000 records in ≤ 60 s on each. Run: `cargo bench --bench rewrap`.
//!
//! Seeding writes real envelopes (sealed with the unsealed KEK, bound to their rows) in
//! multi-row inserts, because storing a million rows one transaction at a time would
//! measure the seeding, not the rewrap.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Instant;

use sqlx::{Connection, Executor};
use strongbox::audit::Actor;
use strongbox::clock::{Clock, SystemClock};
use strongbox::crypto::{AeadKey, Cipher, Key32};
use strongbox::store::{Db, kek};
use strongbox::vault::envelope::{self, Binding};
use strongbox::vault::keyring::unseal_kek;
use strongbox::vault::{RootKey, RootKeySource, Vault, VaultSettings};

const USERS: usize = 1000;

fn root() -> RootKey {
    RootKey::new(Key32::from_slice(&[42u8; 32]).unwrap(), RootKeySource::Env)
}

async fn seed(url: &str, n: usize) {
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let row = kek::by_version(&mut conn, 1).await.unwrap().unwrap();
    let (cipher, key) = unseal_kek(&root(), &row).unwrap();
    let kek = AeadKey::new(cipher, &key).unwrap();
    let payload = vec![0x5au8; 512];
    let mut tx = conn.begin().await.unwrap();
    for u in 0..USERS {
        sqlx::query("INSERT INTO users (id, created_at) VALUES ($1, 0)")
            .bind(format!("user{u:04}"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    const CHUNK: usize = 500;
    let mut i = 0;
    while i < n {
        let end = (i + CHUNK).min(n);
        let mut sql = String::from(
            "INSERT INTO connection (id, user_id, provider, scopes, status, kek_version, generation, envelope, created_at, updated_at) VALUES ",
        );
        let mut rows = Vec::with_capacity(end - i);
        for (k, r) in (i..end).enumerate() {
            let id = format!("rec{r:08}");
            let user = format!("user{:04}", r % USERS);
            let provider = format!("p{}", r / USERS);
            let env = envelope::seal(
                &kek,
                1,
                Cipher::Aes256Gcm,
                Binding {
                    record_id: &id,
                    user_id: &user,
                    provider: &provider,
                },
                &payload,
            )
            .unwrap();
            let p = k * 4;
            if k > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, 'read', 'active', 1, 1, ${}, 0, 0)",
                p + 1,
                p + 2,
                p + 3,
                p + 4
            ));
            rows.push((id, user, provider, env));
        }
        let mut q = sqlx::query(&sql);
        for (id, user, provider, env) in &rows {
            q = q
                .bind(id.as_str())
                .bind(user.as_str())
                .bind(provider.as_str())
                .bind(env.as_slice());
        }
        q.execute(&mut *tx).await.unwrap();
        i = end;
    }
    tx.commit().await.unwrap();
}

async fn run(label: &str, url: &str, n: usize) {
    let db = Db::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let vault = Vault::new(db, root(), VaultSettings::default(), clock);
    vault.init(Actor::Cli).await.unwrap();
    let t = Instant::now();
    seed(url, n).await;
    eprintln!("{label}: seeded {n} records in {:.1?}", t.elapsed());
    vault.rotate(Actor::Cli).await.unwrap();
    let batches: Vec<usize> = std::env::var("REWRAP_BATCH")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000]);
    for (i, batch) in batches.into_iter().enumerate() {
        if i > 0 {
            vault.rotate(Actor::Cli).await.unwrap();
        }
        let t = Instant::now();
        let report = vault.rewrap(Actor::Cli, batch).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.rewrapped as usize, n);
        println!(
            "{label}: rewrap of {n} records (batch {batch}) took {secs:.2} s = {:.0} records/s",
            n as f64 / secs
        );
    }
    let status = vault.status().await.unwrap();
    assert_eq!(status.versions.last().unwrap().records as usize, n);
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks bench binaries to list their tests.
    }
    let n: usize = std::env::var("REWRAP_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/rewrap.db?mode=rwc", dir.path().display());
    run("sqlite", &url, n).await;
    if let Ok(admin) = std::env::var("DATABASE_URL") {
        let name = format!("sbx_bench_{}", std::process::id());
        let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
        conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
            .await
            .unwrap();
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        run("postgres", &format!("{base}/{name}"), n).await;
        conn.execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
            .await
            .unwrap();
    } else {
        println!("postgres: skipped (set DATABASE_URL)");
    }
}
