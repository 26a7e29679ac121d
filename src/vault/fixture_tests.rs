//! A database written by an earlier release still opens: `tests/fixtures/vault-v1.db` was
//! sealed by the ring-backed AEADs before the switch to RustCrypto, under two KEK versions
//! (AES-256-GCM, then ChaCha20-Poly1305) and with both data ciphers. Nothing stored is ever
//! rewritten by an upgrade, so every record in it must open to the plaintext recorded in
//! `tests/fixtures/vault-v1-expected.json`, with the root key in
//! `tests/fixtures/vault-v1-root-key.b64` (test-only: it protects nothing else).
//!
//! `write_fixture` made the files once, with the code of that release; it is ignored so a
//! normal run never regenerates them (a fixture written by today's code proves nothing).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::Executor as _;

use super::*;
use crate::audit::{Actor, Event, Kind};
use crate::clock::{Clock, ManualClock};
use crate::executor::Executor;
use crate::secret::{AccessToken, RefreshToken};
use crate::store::{Db, users};

/// One record of the fixture and what it must open to.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Expected {
    user: String,
    provider: String,
    access: String,
    refresh: Option<String>,
    scopes: Vec<String>,
    kek_version: i64,
    data_cipher: String,
    wrap_cipher: String,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn root_key() -> RootKey {
    let text = std::fs::read_to_string(fixtures().join("vault-v1-root-key.b64")).unwrap();
    RootKey::new(
        rootkey::parse(&text, "fixture").unwrap(),
        rootkey::RootKeySource::Env,
    )
}

fn vault_over(db: &Db, cipher: Cipher) -> Arc<Vault> {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::at_unix(1_800_000_000));
    let settings = VaultSettings {
        cipher,
        ..VaultSettings::default()
    };
    Arc::new(Vault::new(db.clone(), root_key(), settings, clock))
}

async fn open_all(v: &Arc<Vault>, users: &[&str]) -> Vec<Expected> {
    let mut out = Vec::new();
    for uid in users {
        for sealed in v.list(uid).await.unwrap() {
            let env = envelope::Envelope::parse(&sealed.row.envelope).unwrap();
            let (data_cipher, wrap_cipher) = (env.data_cipher.name(), env.wrap_cipher.name());
            let opened = Executor::new(Arc::clone(v))
                .with_tokens(&sealed, |t| Expected {
                    user: sealed.user_id().to_owned(),
                    provider: sealed.provider().to_owned(),
                    access: t.access_token.reveal().to_owned(),
                    refresh: t.refresh_token.as_ref().map(|r| r.reveal().to_owned()),
                    scopes: t.scopes.clone(),
                    kek_version: sealed.kek_version(),
                    data_cipher: data_cipher.to_owned(),
                    wrap_cipher: wrap_cipher.to_owned(),
                })
                .await
                .unwrap();
            out.push(opened);
        }
    }
    out.sort_by(|a, b| (&a.user, &a.provider).cmp(&(&b.user, &b.provider)));
    out
}

const USERS: [&str; 2] = ["fixture-user-a", "fixture-user-b"];

#[tokio::test]
async fn database_from_the_ring_release_opens() {
    // A copy, so opening (which may record last use or migrate) never touches the fixture.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault-v1.db");
    std::fs::copy(fixtures().join("vault-v1.db"), &path).unwrap();
    let db = Db::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let v = vault_over(&db, Cipher::Aes256Gcm);
    let got = open_all(&v, &USERS).await;
    let text = std::fs::read_to_string(fixtures().join("vault-v1-expected.json")).unwrap();
    let want: Vec<Expected> = serde_json::from_str(&text).unwrap();
    assert_eq!(want.len(), 5);
    assert_eq!(got, want);
    // Both KEK versions and both data ciphers are in there, or the fixture proves less.
    let versions: std::collections::BTreeSet<_> = got.iter().map(|e| e.kek_version).collect();
    let ciphers: std::collections::BTreeSet<_> =
        got.iter().map(|e| e.data_cipher.as_str()).collect();
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(ciphers.len(), 2);
    db.close().await;
}

/// Writes the fixture. Run once, on the release whose format it pins:
/// `STRONGBOX_WRITE_FIXTURE=1 cargo test --lib write_fixture -- --ignored`, then fold the
/// write-ahead log into the one file that is committed:
/// `sqlite3 tests/fixtures/vault-v1.db 'PRAGMA journal_mode=DELETE; VACUUM'`.
#[tokio::test]
#[ignore = "writes tests/fixtures; run by hand only"]
async fn write_fixture() {
    if std::env::var_os("STRONGBOX_WRITE_FIXTURE").is_none() {
        return;
    }
    let path = fixtures().join("vault-v1.db");
    let _ = std::fs::remove_file(&path);
    let db = Db::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let aes = vault_over(&db, Cipher::Aes256Gcm);
    let chacha = vault_over(&db, Cipher::ChaCha20Poly1305);
    aes.init(Actor::Cli).await.unwrap();
    for uid in USERS {
        let mut tx = db.begin().await.unwrap();
        users::insert(&mut tx, uid, 0).await.unwrap();
        tx.commit().await.unwrap();
    }
    let put = |v: Arc<Vault>, uid: &'static str, provider: &'static str, refresh: bool| async move {
        let tokens = TokenSet {
            access_token: AccessToken::new(format!("{provider}-access-for-{uid}")),
            refresh_token: refresh
                .then(|| RefreshToken::new(format!("{provider}-refresh-for-{uid}"))),
            id_token: None,
            token_type: "Bearer".into(),
            expires_at: Some(1_800_003_600),
            scopes: vec!["read".into(), format!("{provider}:write")],
        };
        let mut tx = v.db().begin().await.unwrap();
        let event = Event::new(Kind::CredentialStored, Actor::System, format!("user:{uid}"));
        v.store(&mut tx, event, uid, provider, &tokens, Scopes::Replace)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    // KEK v1 (AES-256-GCM), AES data.
    put(Arc::clone(&aes), USERS[0], "github", true).await;
    put(Arc::clone(&aes), USERS[1], "slack", false).await;
    // KEK v2 (ChaCha20-Poly1305), ChaCha data and AES data.
    assert_eq!(chacha.rotate(Actor::Cli).await.unwrap(), 2);
    put(Arc::clone(&chacha), USERS[0], "spotify", true).await;
    put(Arc::clone(&chacha), USERS[1], "google", true).await;
    put(Arc::clone(&aes), USERS[1], "notion", true).await;
    let all = open_all(&aes, &USERS).await;
    std::fs::write(
        fixtures().join("vault-v1-expected.json"),
        serde_json::to_string_pretty(&all).unwrap() + "\n",
    )
    .unwrap();
    db.pool()
        .execute("PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .unwrap();
    db.close().await;
}
