//! Vault behaviour on both backends: round trips, tampering, key lifecycle under load.

use std::sync::Arc;

use sqlx::Executor as _;

use super::*;
use crate::audit::{self, Actor};
use crate::both_backends;
use crate::executor::Executor;
use crate::secret::{AccessToken, RefreshToken};
use crate::store::users;
use crate::testkit::vault;

/// What a test needs to see of an opened token set.
pub(super) struct Plain {
    pub(super) access: String,
    refresh: Option<String>,
    scopes: Vec<String>,
}

fn tokens(access: &str) -> TokenSet {
    TokenSet {
        access_token: AccessToken::new(access.to_owned()),
        refresh_token: Some(RefreshToken::new(format!("{access}-refresh"))),
        id_token: None,
        token_type: "Bearer".into(),
        expires_at: Some(1_800_003_600),
        scopes: vec!["read".into(), "write".into()],
    }
}

fn stored(uid: &str) -> crate::audit::Event {
    crate::audit::Event::new(
        crate::audit::Kind::CredentialStored,
        Actor::System,
        format!("user:{uid}"),
    )
}

pub(super) async fn user(v: &Vault, id: &str) {
    let mut tx = v.db().begin().await.unwrap();
    users::insert(&mut tx, id, 0).await.unwrap();
    tx.commit().await.unwrap();
}

pub(super) async fn put(v: &Vault, uid: &str, provider: &str, access: &str) -> String {
    let mut tx = v.db().begin().await.unwrap();
    let id = v
        .store(
            &mut tx,
            stored(uid),
            uid,
            provider,
            &tokens(access),
            super::Scopes::Replace,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

/// Opens a record the only way the crate allows: through the executor.
pub(super) async fn open(v: &Arc<Vault>, uid: &str, provider: &str) -> Result<Plain, VaultError> {
    let sealed = v.load(uid, provider).await?.expect("record exists");
    Executor::new(Arc::clone(v))
        .with_tokens(&sealed, |t| Plain {
            access: t.access_token.reveal().to_owned(),
            refresh: t.refresh_token.as_ref().map(|r| r.reveal().to_owned()),
            scopes: t.scopes.clone(),
        })
        .await
}

async fn set_envelope(db: &crate::store::Db, id: &str, envelope: &[u8]) {
    sqlx::query("UPDATE connection SET envelope = $1 WHERE id = $2")
        .bind(envelope)
        .bind(id)
        .execute(db.pool())
        .await
        .unwrap();
}

both_backends! {
    async fn round_trip_and_replace(t: TestDb) {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let settings = VaultSettings { cipher, ..VaultSettings::default() };
            let (v, _) = vault(&t.db, settings);
            v.init(Actor::Cli).await.unwrap();
            let uid = format!("u-{}", cipher.id());
            user(&v, &uid).await;
            let id = put(&v, &uid, "spotify", "at-1").await;
            let got = open(&v, &uid, "spotify").await.unwrap();
            assert_eq!(got.access, "at-1");
            assert_eq!(got.refresh.unwrap(), "at-1-refresh");
            assert_eq!(got.scopes, ["read", "write"]);
            // A second write replaces the token set in place, under a fresh DEK.
            let before = v.load(&uid, "spotify").await.unwrap().unwrap();
            assert_eq!(put(&v, &uid, "spotify", "at-2").await, id);
            let after = v.load(&uid, "spotify").await.unwrap().unwrap();
            assert_eq!(after.generation(), before.generation() + 1);
            assert_ne!(after.row.envelope.get(7..67), before.row.envelope.get(7..67));
            assert_eq!(open(&v, &uid, "spotify").await.unwrap().access, "at-2");
            assert_eq!(Envelope::parse(&after.row.envelope).unwrap().data_cipher, cipher);
            // Delete erases the row and audits it; a second delete finds nothing.
            let mut tx = v.db().begin().await.unwrap();
            assert!(v.delete(&mut tx, &Actor::User(uid.clone()), &id).await.unwrap());
            assert!(!v.delete(&mut tx, &Actor::User(uid.clone()), &id).await.unwrap());
            tx.commit().await.unwrap();
            assert!(v.load(&uid, "spotify").await.unwrap().is_none());
        }
        let deleted: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_event WHERE kind = 'credential.deleted'")
            .fetch_one(t.db.pool()).await.unwrap();
        assert_eq!(deleted, 2);
        audit::verify(&t.db).await.unwrap();
    }

    async fn every_flipped_byte_fails(t: TestDb) {
        let (v, _) = vault(&t.db, VaultSettings::default());
        v.init(Actor::Cli).await.unwrap();
        user(&v, "u").await;
        let id = put(&v, "u", "github", "gho_secret").await;
        let original = v.load("u", "github").await.unwrap().unwrap().row.envelope;
        for i in 0..original.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = original.clone();
                bad[i] ^= bit;
                set_envelope(&t.db, &id, &bad).await;
                assert!(open(&v, "u", "github").await.is_err(), "byte {i} bit {bit:#x}");
            }
        }
        let mut longer = original.clone();
        longer.push(0);
        set_envelope(&t.db, &id, &longer).await;
        assert!(matches!(open(&v, "u", "github").await, Err(VaultError::Authentication)));
        for len in [0, 1, 40, envelope::HEADER_LEN, original.len() - 1] {
            set_envelope(&t.db, &id, &original[..len]).await;
            assert!(open(&v, "u", "github").await.is_err(), "truncated to {len}");
        }
        set_envelope(&t.db, &id, &original).await;
        assert_eq!(open(&v, "u", "github").await.unwrap().access, "gho_secret");
    }

    async fn row_swap_fails(t: TestDb) {
        let (v, _) = vault(&t.db, VaultSettings::default());
        v.init(Actor::Cli).await.unwrap();
        user(&v, "alice").await;
        user(&v, "bob").await;
        put(&v, "alice", "google", "alice-token").await;
        let bob_id = put(&v, "bob", "google", "bob-token").await;
        put(&v, "alice", "spotify", "alice-spotify").await;
        // Warm the data-key cache first: a cached DEK must not let a moved envelope open.
        assert_eq!(open(&v, "alice", "google").await.unwrap().access, "alice-token");
        assert_eq!(open(&v, "alice", "spotify").await.unwrap().access, "alice-spotify");
        let alice_google = v.load("alice", "google").await.unwrap().unwrap().row.envelope;
        let alice_spotify = v.load("alice", "spotify").await.unwrap().unwrap().row.envelope;
        // Alice's ciphertext copied into Bob's row, and another provider's into Alice's.
        set_envelope(&t.db, &bob_id, &alice_google).await;
        assert!(matches!(open(&v, "bob", "google").await, Err(VaultError::Authentication)));
        let alice_google_id = v.load("alice", "google").await.unwrap().unwrap().row.id;
        set_envelope(&t.db, &alice_google_id, &alice_spotify).await;
        assert!(matches!(open(&v, "alice", "google").await, Err(VaultError::Authentication)));
        // Moving the row's user id (a database writer re-assigning the record) fails too.
        t.db.pool().execute("UPDATE connection SET user_id = 'bob', provider = 'github' WHERE provider = 'spotify'").await.unwrap();
        assert!(matches!(open(&v, "bob", "github").await, Err(VaultError::Authentication)));
    }

    async fn wrong_root_key_is_named(t: TestDb) {
        let (v, _) = vault(&t.db, VaultSettings::default());
        v.init(Actor::Cli).await.unwrap();
        user(&v, "u").await;
        put(&v, "u", "discord", "d").await;
        let other = RootKey::new(crate::crypto::Key32::from_slice(&[9u8; 32]).unwrap(), RootKeySource::Env);
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        let wrong = Arc::new(Vault::new(t.db.clone(), other, VaultSettings::default(), clock));
        assert!(matches!(wrong.check_ready().await, Err(VaultError::WrongRootKey { version: 1, .. })));
        assert!(matches!(open(&wrong, "u", "discord").await, Err(VaultError::WrongRootKey { .. })));
        assert!(matches!(wrong.rotate(Actor::Cli).await, Err(VaultError::WrongRootKey { .. })));
    }

    async fn retire_lifecycle(t: TestDb) {
        let (v, _) = vault(&t.db, VaultSettings::default());
        v.init(Actor::Cli).await.unwrap();
        user(&v, "u").await;
        put(&v, "u", "slack", "xoxb").await;
        assert!(matches!(v.retire(Actor::Cli, 1).await, Err(VaultError::RetirePrimary(1))));
        assert_eq!(v.rotate(Actor::Cli).await.unwrap(), 2);
        assert!(matches!(v.retire(Actor::Cli, 1).await, Err(VaultError::RetireInUse { version: 1, records: 1 })));
        // Old version still opens (decrypt-only) before the rewrap.
        assert_eq!(open(&v, "u", "slack").await.unwrap().access, "xoxb");
        let stale = v.load("u", "slack").await.unwrap().unwrap().row.envelope;
        let r = v.rewrap(Actor::Cli, 10).await.unwrap();
        assert_eq!((r.rewrapped, r.skipped, r.failed.len()), (1, 0, 0));
        let fresh = v.load("u", "slack").await.unwrap().unwrap();
        assert_eq!(fresh.kek_version(), 2);
        // Only the DEK was re-wrapped: data nonce and ciphertext are byte-identical.
        assert_eq!(fresh.row.envelope.get(67..), stale.get(67..));
        v.retire(Actor::Cli, 1).await.unwrap();
        assert!(matches!(v.retire(Actor::Cli, 1).await, Err(VaultError::AlreadyRetired(1))));
        assert!(matches!(v.retire(Actor::Cli, 9).await, Err(VaultError::NoSuchVersion(9))));
        assert_eq!(open(&v, "u", "slack").await.unwrap().access, "xoxb");
        // The retired key's material is gone: an old envelope cannot be opened any more,
        // even by a fresh instance.
        let id = fresh.row.id.clone();
        set_envelope(&t.db, &id, &stale).await;
        let (fresh_vault, _) = vault(&t.db, VaultSettings::default());
        assert!(matches!(open(&fresh_vault, "u", "slack").await, Err(VaultError::KekRetired(1))));
        let status = v.status().await.unwrap();
        let states: Vec<_> = status.versions.iter().map(|s| (s.version, s.state)).collect();
        assert_eq!(states, [(1, "retired"), (2, "primary")]);
        let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM audit_event WHERE kind LIKE 'key.%' ORDER BY seq")
            .fetch_all(t.db.pool()).await.unwrap();
        assert_eq!(kinds, ["key.initialized", "key.rotated", "key.rewrapped", "key.retired"]);
        audit::verify(&t.db).await.unwrap();
    }

    async fn wrap_limit_rotates_automatically(t: TestDb) {
        let settings = VaultSettings { max_wraps: 3, ..VaultSettings::default() };
        let (v, _) = vault(&t.db, settings);
        v.init(Actor::Cli).await.unwrap();
        user(&v, "u").await;
        for p in ["a", "b", "c", "d", "e"] {
            put(&v, "u", p, p).await;
        }
        let status = v.status().await.unwrap();
        assert_eq!(status.primary, Some(2));
        assert_eq!(status.versions.iter().map(|s| s.wraps).collect::<Vec<_>>(), [3, 2], "the wrap count is exact");
        for p in ["a", "b", "c", "d", "e"] {
            assert_eq!(open(&v, "u", p).await.unwrap().access, p);
        }
        let reason: String = sqlx::query_scalar("SELECT detail FROM audit_event WHERE kind = 'key.rotated'")
            .fetch_one(t.db.pool()).await.unwrap();
        assert!(reason.contains("wrap_limit"), "{reason}");
    }

    async fn instances_see_each_others_rotations(t: TestDb) {
        let (a, _) = vault(&t.db, VaultSettings::default());
        let (b, _) = vault(&t.db, VaultSettings::default());
        a.init(Actor::Cli).await.unwrap();
        user(&a, "u").await;
        put(&b, "u", "x", "one").await;
        assert_eq!(a.rotate(Actor::Cli).await.unwrap(), 2);
        // b has never loaded version 2; it writes under it and a reads it back.
        put(&b, "u", "y", "two").await;
        assert_eq!(b.load("u", "y").await.unwrap().unwrap().kek_version(), 2);
        assert_eq!(open(&a, "u", "y").await.unwrap().access, "two");
        assert_eq!(open(&b, "u", "x").await.unwrap().access, "one");
    }

    async fn rotate_root_keeps_records(t: TestDb) {
        let (v, _) = vault(&t.db, VaultSettings::default());
        v.init(Actor::Cli).await.unwrap();
        v.rotate(Actor::Cli).await.unwrap();
        user(&v, "u").await;
        put(&v, "u", "p", "tok").await;
        let before: Vec<u8> = v.load("u", "p").await.unwrap().unwrap().row.envelope;
        let new_root = RootKey::new(crate::crypto::Key32::from_slice(&[8u8; 32]).unwrap(), RootKeySource::Env);
        let new_id = new_root.id();
        assert_eq!(v.rotate_root(Actor::Cli, &new_root).await.unwrap(), 2);
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        let after = Arc::new(Vault::new(t.db.clone(), new_root, VaultSettings::default(), clock));
        assert_eq!(after.root_key_id(), new_id);
        assert_eq!(open(&after, "u", "p").await.unwrap().access, "tok");
        assert_eq!(after.load("u", "p").await.unwrap().unwrap().row.envelope, before);
        let (old, _) = vault(&t.db, VaultSettings::default());
        assert!(matches!(old.check_ready().await, Err(VaultError::WrongRootKey { .. })));
    }

    async fn rewrap_batch_above_the_parameter_limit(t: TestDb) {
        // More rows in one batch than one statement can bind on either backend (4 per
        // row: 16,500 rows need 66,001 parameters).
        const ROWS: i64 = 16_500;
        let (v, _) = vault(&t.db, VaultSettings::default());
        v.init(Actor::Cli).await.unwrap();
        user(&v, "u").await;
        let template = put(&v, "u", "template", "tok").await;
        // Copies of one envelope: rewrap only re-wraps the DEK, whose wrap is bound to the
        // KEK version and not to the row, so the copies rewrap like real records.
        sqlx::query(
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
             INSERT INTO connection (id, user_id, provider, scopes, status, kek_version, generation, \
             envelope, expires_at, created_at, updated_at) \
             SELECT 'c' || n.i, c.user_id, 'p' || n.i, c.scopes, c.status, c.kek_version, c.generation, \
             c.envelope, c.expires_at, c.created_at, c.updated_at FROM connection c, n WHERE c.id = $1",
        )
        .bind(&template).bind(ROWS - 1)
        .execute(t.db.pool()).await.unwrap();
        assert_eq!(v.rotate(Actor::Cli).await.unwrap(), 2);
        let r = v.rewrap(Actor::Cli, 20_000).await.unwrap();
        assert_eq!((r.rewrapped, r.skipped, r.failed.len()), (ROWS as u64, 0, 0));
        let status = v.status().await.unwrap();
        assert_eq!(status.versions.iter().map(|s| (s.version, s.records)).collect::<Vec<_>>(), [(1, 0), (2, ROWS)]);
        assert_eq!(open(&v, "u", "template").await.unwrap().access, "tok");
        let batches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_event WHERE kind = 'key.rewrapped'")
            .fetch_one(t.db.pool()).await.unwrap();
        assert_eq!(batches, 1, "one batch, one transaction, one event");
    }

    async fn rotation_end_to_end_under_load(t: TestDb) {
        const RECORDS: usize = 10_000;
        let (v, _) = vault(&t.db, VaultSettings::default());
        v.init(Actor::Cli).await.unwrap();
        let mut tx = v.db().begin().await.unwrap();
        for u in 0..100 {
            users::insert(&mut tx, &format!("user{u}"), 0).await.unwrap();
        }
        tx.commit().await.unwrap();
        seed(&v, RECORDS).await;
        assert_eq!(v.rotate(Actor::Cli).await.unwrap(), 2);
        // Writers keep replacing token sets while the rewrap runs.
        let writers: Vec<_> = (0..2).map(|w| {
            let v = Arc::clone(&v);
            tokio::spawn(async move {
                for i in 0..150 {
                    let n = (w * 7919 + i * 31) % RECORDS;
                    put(&v, &format!("user{}", n % 100), &format!("p{}", n / 100), &format!("new-{n}")).await;
                }
            })
        }).collect();
        let report = v.rewrap(Actor::Cli, 500).await.unwrap();
        for w in writers {
            w.await.unwrap();
        }
        assert!(report.failed.is_empty());
        // Anything the rewrap skipped was rewritten by a writer under the new primary.
        let status = v.status().await.unwrap();
        assert_eq!(status.versions.iter().map(|s| (s.version, s.records)).collect::<Vec<_>>(), [(1, 0), (2, RECORDS as i64)]);
        v.retire(Actor::Cli, 1).await.unwrap();
        let check = v.verify_all().await.unwrap();
        assert_eq!((check.ok, check.failed.len()), (RECORDS as u64, 0));
        for n in (0..RECORDS).step_by(97) {
            let got = open(&v, &format!("user{}", n % 100), &format!("p{}", n / 100)).await.unwrap();
            let tok = got.access.as_str();
            assert!(tok == format!("tok-{n}") || tok == format!("new-{n}"), "{n}: lost or clobbered");
        }
        audit::verify(&t.db).await.unwrap();
    }
}

/// Seeds `n` records, 100 users × n/100 providers, with a few concurrent writers.
pub(crate) async fn seed(v: &Arc<Vault>, n: usize) {
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let v = Arc::clone(v);
            tokio::spawn(async move {
                for i in (w..n).step_by(4) {
                    put(
                        &v,
                        &format!("user{}", i % 100),
                        &format!("p{}", i / 100),
                        &format!("tok-{i}"),
                    )
                    .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}
