//! Rewrap throughput: seeds N records (default 1,000,000; `REWRAP_RECORDS`) under KEK 1,
//! rotates, and times `keys rewrap` — on SQLite, and on PostgreSQL when `DATABASE_URL`
//! is set. `REWRAP_BATCH=1000,5000` times one rewrap per batch size (rotating in between).
//! Target: 1,000,000 records in ≤ 20 s on each. Run: `cargo bench --bench rewrap`.
//!
//! Meanwhile the service answers raw releases (`POST /v1/credentials/acme`, every one
//! durably audited) of a credential that is itself under the old KEK until the rewrap
//! reaches it, on a fixed schedule (`REWRAP_RELEASE_RATE`, default 500 a second, over 4
//! keep-alive connections; a late answer counts from its scheduled time): their latency
//! is reported for a quiet second before and for the whole rewrap.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};
use strongbox::audit::Actor;
use strongbox::clock::{Clock, SystemClock};
use strongbox::crypto::{AeadKey, Cipher, Key32};
use strongbox::store::{Db, kek};
use strongbox::vault::envelope::{self, Binding};
use strongbox::vault::keyring::unseal_kek;
use strongbox::vault::{RootKey, RootKeySource, Vault, VaultSettings};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

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

#[path = "support/releases.rs"]
mod releases;

/// Serves the app on loopback, ready to release one user's credential (sealed under the
/// current KEK); returns the address and a release request.
async fn serve_releases(
    db: &Db,
    vault: &Arc<Vault>,
    clock: &Arc<dyn Clock>,
) -> (std::net::SocketAddr, Vec<u8>) {
    let fixture = releases::fixture(db, vault, clock, releases::LIMITS_OFF, "release-user").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let request = releases::request(addr, &fixture);
    let app = strongbox::app(fixture.state.clone());
    tokio::spawn(async move {
        let _policies = fixture;
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, request)
}

/// Sends `request` at `rate` a second over 4 keep-alive connections until `stop`; returns
/// each latency (from its scheduled time) and how many answers were not 200.
async fn releases(
    addr: std::net::SocketAddr,
    request: Arc<Vec<u8>>,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> (Vec<Duration>, usize) {
    const CONNECTIONS: usize = 4;
    let every = Duration::from_secs_f64(CONNECTIONS as f64 / rate);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (request, stop) = (Arc::clone(&request), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (r, mut w) = tcp.into_split();
            let mut r = BufReader::new(r);
            let (mut latencies, mut failed) = (Vec::new(), 0);
            let start = Instant::now() + every.mul_f64(c as f64 / CONNECTIONS as f64);
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let due = start + every * k;
                tokio::time::sleep_until(due.into()).await;
                w.write_all(&request).await.unwrap();
                let (mut line, mut length) = (String::new(), 0usize);
                r.read_line(&mut line).await.unwrap();
                let ok = line.starts_with("HTTP/1.1 200");
                loop {
                    line.clear();
                    r.read_line(&mut line).await.unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).await.unwrap();
                latencies.push(due.elapsed());
                failed += usize::from(!ok);
                k += 1;
            }
            (latencies, failed)
        }));
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.unwrap();
        all.extend(l);
        failed += f;
    }
    all.sort_unstable();
    (all, failed)
}

fn summary((latencies, failed): &(Vec<Duration>, usize)) -> String {
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    format!(
        "{} releases, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {failed} not 200",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    )
}

async fn run(label: &str, url: &str, n: usize) {
    let db = Db::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let vault = Arc::new(Vault::new(
        db.clone(),
        root(),
        VaultSettings::default(),
        Arc::clone(&clock),
    ));
    vault.init(Actor::Cli).await.unwrap();
    let t = Instant::now();
    seed(url, n).await;
    eprintln!("{label}: seeded {n} records in {:.1?}", t.elapsed());
    let (addr, request) = serve_releases(&db, &vault, &clock).await;
    let request = Arc::new(request);
    let rate: f64 = std::env::var("REWRAP_RELEASE_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500.0);
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(releases(
        addr,
        Arc::clone(&request),
        rate,
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let quiet = quiet.await.unwrap();
    println!(
        "{label}: releases at {rate:.0}/s before the rewrap: {}",
        summary(&quiet)
    );
    vault.rotate(Actor::Cli).await.unwrap();
    let batches: Vec<usize> = std::env::var("REWRAP_BATCH")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000]);
    for (i, batch) in batches.into_iter().enumerate() {
        if i > 0 {
            vault.rotate(Actor::Cli).await.unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let during = tokio::spawn(releases(
            addr,
            Arc::clone(&request),
            rate,
            Arc::clone(&stop),
        ));
        let t = Instant::now();
        let report = vault.rewrap(Actor::Cli, batch).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let during = during.await.unwrap();
        // Every record, the served credential's included.
        assert_eq!(report.rewrapped as usize, n + 1);
        println!(
            "{label}: rewrap of {n} records (batch {batch}) took {secs:.2} s = {:.0} records/s",
            n as f64 / secs
        );
        println!(
            "{label}: releases at {rate:.0}/s during the rewrap: {}",
            summary(&during)
        );
    }
    let status = vault.status().await.unwrap();
    assert_eq!(status.versions.last().unwrap().records as usize, n + 1);
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
