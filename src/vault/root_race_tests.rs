//! `keys rotate-root` and `keys rotate` interleaved: whichever starts first, no live KEK
//! is left sealed under the old root key.
//!
//! On PostgreSQL both operations are held at their audit append (a test transaction holds
//! the head's lock) after the first has done its key work and while the second is on its
//! way, so the two overlap, deterministically, in the order under test. On SQLite the
//! write lock serialises them whatever they do; there they run one after the other, and
//! the outcomes must be the same.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tests::{open, put, user};
use super::*;
use crate::audit::Actor;
use crate::both_backends;
use crate::store::Backend;
use crate::testkit::{TestDb, vault};

/// Waits until `n` sessions of this PostgreSQL database wait on a lock.
async fn blocked(db: &crate::store::Db, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} of {n} sessions blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `rotate_root` and `rotate` with the first (by `root_first`) past its key work
/// before the second starts; returns both results, the new root key and the vault.
async fn interleave(
    t: &TestDb,
    root_first: bool,
) -> (
    Result<usize, VaultError>,
    Result<i64, VaultError>,
    RootKey,
    Arc<Vault>,
) {
    let (v, _) = vault(&t.db, VaultSettings::default());
    v.init(Actor::Cli).await.unwrap();
    user(&v, "u").await;
    put(&v, "u", "p", "tok").await;
    let new_root = RootKey::new(
        crate::crypto::Key32::from_slice(&[8u8; 32]).unwrap(),
        RootKeySource::Env,
    );
    let again = RootKey::new(
        crate::crypto::Key32::from_slice(&[8u8; 32]).unwrap(),
        RootKeySource::Env,
    );
    // Every key change appends its audit event last: holding the head's row lock stops
    // both there, with their key rows written (or waited for) but not committed.
    let mut gate = t.db.begin().await.unwrap();
    sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1")
        .execute(&mut *gate)
        .await
        .unwrap();
    let root = {
        let v = Arc::clone(&v);
        async move { v.rotate_root(Actor::Cli, &again).await }
    };
    let rotate = {
        let v = Arc::clone(&v);
        async move { v.rotate(Actor::Cli).await }
    };
    if t.db.backend() == Backend::Sqlite {
        gate.rollback().await.unwrap();
        return if root_first {
            let root = root.await;
            (root, rotate.await, new_root, v)
        } else {
            let rotate = rotate.await;
            (root.await, rotate, new_root, v)
        };
    }
    let (root, rotate) = if root_first {
        let root = tokio::spawn(root);
        blocked(&t.db, 1).await;
        let rotate = tokio::spawn(rotate);
        blocked(&t.db, 2).await;
        (root, rotate)
    } else {
        let rotate = tokio::spawn(rotate);
        blocked(&t.db, 1).await;
        let root = tokio::spawn(root);
        blocked(&t.db, 2).await;
        (root, rotate)
    };
    gate.rollback().await.unwrap();
    (root.await.unwrap(), rotate.await.unwrap(), new_root, v)
}

/// Every live KEK is sealed under `root`, and a vault holding only `root` opens the record.
async fn all_under(t: &TestDb, root: RootKey) {
    let id = root.id();
    let live: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, root_key_id FROM kek WHERE state <> 'retired' ORDER BY version",
    )
    .fetch_all(t.db.pool())
    .await
    .unwrap();
    for (version, under) in &live {
        assert_eq!(
            under, &id,
            "KEK version {version} is left under the old root key"
        );
    }
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
    let after = Arc::new(Vault::new(
        t.db.clone(),
        root,
        VaultSettings::default(),
        clock,
    ));
    after.check_ready().await.unwrap();
    assert_eq!(open(&after, "u", "p").await.unwrap().access, "tok");
    crate::audit::verify(&t.db).await.unwrap();
}

both_backends! {
    async fn rotate_root_then_rotate(t: TestDb) {
        let (root, rotate, new_root, _) = interleave(&t, true).await;
        assert_eq!(root.unwrap(), 1);
        // The rotation waited for the new root key and refuses to seal under the old one.
        assert!(matches!(rotate, Err(VaultError::WrongRootKey { version: 1, .. })), "{rotate:?}");
        all_under(&t, new_root).await;
    }

    async fn rotate_then_rotate_root(t: TestDb) {
        let (root, rotate, new_root, _) = interleave(&t, false).await;
        assert_eq!(rotate.unwrap(), 2);
        // The root-key rotation waited for version 2 and re-sealed it too.
        assert_eq!(root.unwrap(), 2);
        all_under(&t, new_root).await;
    }
}
