//! The vault: envelope encryption of token sets under versioned KEKs sealed by a root key.
//!
//! Three layers (SPEC §7): the root key (outside the database) seals KEKs (in the database,
//! shared by every instance); the primary KEK wraps a fresh DEK for every write; the DEK
//! seals the token set. Callers store, load and delete a (user, provider) connection's
//! token set. What [`Vault::load`] returns is a [`SealedCredential`]: metadata anyone may
//! read, and ciphertext that only [`Vault::open`] turns into a [`TokenSet`] — and `open`
//! demands an [`OpenCapability`], which only the executor module can construct. So the
//! compiler, not a convention, keeps plaintext tokens inside the executor.
//!
//! Every write reserves a wrap on the primary KEK in the caller's transaction; that both
//! counts wraps durably and locks the primary, so a rotation never races a write. When a
//! KEK's count passes the configured limit (far below the 2^32 random-nonce bound of NIST
//! SP 800-38D), the write rotates first, audited, in the same transaction.

pub mod envelope;
pub mod keyring;
mod lifecycle;
pub mod rootkey;
pub mod tokens;

use std::sync::Arc;

use crate::audit::{self, Actor, Event, Kind};
use crate::clock::Clock;
use crate::crypto::{AeadKey, Cipher, CryptoError, Plaintext};
use crate::executor::OpenCapability;
use crate::store::connection::{self as conns, ConnectionRow, NewEnvelope};
use crate::store::kek::{self, Reservation};
use crate::store::{Conn, Db};

pub use envelope::{Binding, Envelope, EnvelopeError};
pub use lifecycle::{KeyStatus, RewrapReport, VerifyReport, VersionStatus};
pub use rootkey::{RootKey, RootKeySource};
pub use tokens::TokenSet;

use keyring::{DekCache, KekCache};

/// Data keys kept ready for warm opens (a few MiB at most).
const DEK_CACHE_ENTRIES: usize = 4096;

/// The NIST SP 800-38D bound for random 96-bit nonces under one key is 2^32 invocations.
/// Rotate at half of it by default.
pub const DEFAULT_MAX_WRAPS: i64 = 1 << 31;

/// Everything that can go wrong in the vault. Messages never contain key or token bytes.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("malformed envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error(
        "the envelope failed authentication: it was altered, truncated, or belongs to another record"
    )]
    Authentication,
    #[error("KEK version {0} is not in the database")]
    UnknownKek(i64),
    #[error("KEK version {0} is retired; its key material was destroyed")]
    KekRetired(i64),
    #[error(
        "wrong root key: KEK version {version} was sealed under root key {expected}, \
         but the loaded root key is {have}"
    )]
    WrongRootKey {
        version: i64,
        expected: String,
        have: String,
    },
    #[error("the sealed key material of KEK version {0} is corrupt")]
    CorruptKek(i64),
    #[error("unknown cipher {0:?} recorded for a KEK")]
    UnknownCipher(String),
    #[error("no primary KEK: run `strongbox keys init`")]
    NoPrimary,
    #[error("KEK version {0} does not exist")]
    NoSuchVersion(i64),
    #[error("KEK version {0} is the primary; rotate first")]
    RetirePrimary(i64),
    #[error("KEK version {0} is already retired")]
    AlreadyRetired(i64),
    #[error(
        "KEK version {version} still protects {records} record(s); run `strongbox keys rewrap` first"
    )]
    RetireInUse { version: i64, records: i64 },
    #[error("another rotation committed at the same time; run the command again")]
    ConcurrentRotation,
    #[error(
        "KEK version {0} would be left sealed under the old root key; nothing was changed, run the command again"
    )]
    LeftUnderOldRoot(i64),
    #[error("the decrypted token set is malformed")]
    Malformed(#[from] tokens::MalformedTokenSet),
    #[error("{0}")]
    Crypto(#[from] CryptoError),
}

/// Vault settings, parsed from `[vault]`.
/// What a write does with the scopes already granted on an existing connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scopes {
    /// Store exactly the token set's scopes (a refresh that narrowed them, say).
    Replace,
    /// Keep the granted scopes beside the new ones (incremental authorization).
    Merge,
}

#[derive(Debug, Clone, Copy)]
pub struct VaultSettings {
    pub cipher: Cipher,
    /// Seconds after which the primary KEK is due for rotation.
    pub rotation_period: i64,
    /// Wraps after which a KEK is rotated automatically.
    pub max_wraps: i64,
}

impl Default for VaultSettings {
    fn default() -> Self {
        VaultSettings {
            cipher: Cipher::Aes256Gcm,
            rotation_period: 90 * 86_400,
            max_wraps: DEFAULT_MAX_WRAPS,
        }
    }
}

/// A stored connection as loaded: public metadata and ciphertext.
pub struct SealedCredential {
    row: ConnectionRow,
}

impl std::fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCredential")
            .field("id", &self.row.id)
            .field("provider", &self.row.provider)
            .finish_non_exhaustive()
    }
}

impl SealedCredential {
    /// Wraps a row read elsewhere (the agent routes read it with the delegation).
    pub(crate) fn from_row(row: ConnectionRow) -> SealedCredential {
        SealedCredential { row }
    }

    pub fn id(&self) -> &str {
        &self.row.id
    }
    pub fn user_id(&self) -> &str {
        &self.row.user_id
    }
    pub fn provider(&self) -> &str {
        &self.row.provider
    }
    pub fn scopes(&self) -> Vec<&str> {
        self.row
            .scopes
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect()
    }
    pub fn status(&self) -> &str {
        &self.row.status
    }
    pub fn expires_at(&self) -> Option<i64> {
        self.row.expires_at
    }
    pub fn kek_version(&self) -> i64 {
        self.row.kek_version
    }
    pub fn generation(&self) -> i64 {
        self.row.generation
    }
    pub fn created_at(&self) -> i64 {
        self.row.created_at
    }
    pub fn last_used_at(&self) -> Option<i64> {
        self.row.last_used_at
    }
}

fn binding(row: &ConnectionRow) -> Binding<'_> {
    Binding {
        record_id: &row.id,
        user_id: &row.user_id,
        provider: &row.provider,
    }
}

/// The vault facade shared by the whole service.
pub struct Vault {
    db: Db,
    root: RootKey,
    settings: VaultSettings,
    clock: Arc<dyn Clock>,
    keks: KekCache,
    deks: DekCache,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("backend", &self.db.backend())
            .field("root_key_id", &self.root.id())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Ids of active connections whose access token expires before `before` (and has
    /// not yet at `now`), at most `limit`: what the background refresher renews.
    pub async fn expiring(
        &self,
        before: i64,
        now: i64,
        limit: i64,
    ) -> Result<Vec<String>, VaultError> {
        Ok(crate::store::connection::expiring(self.db.pool(), before, now, limit).await?)
    }

    pub fn new(db: Db, root: RootKey, settings: VaultSettings, clock: Arc<dyn Clock>) -> Vault {
        Vault {
            db,
            root,
            settings,
            clock,
            keks: KekCache::default(),
            deks: DekCache::new(DEK_CACHE_ENTRIES),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn root_key_id(&self) -> String {
        self.root.id()
    }

    /// A 32-byte secret for `label`, derived from the root key (HMAC-SHA-256), shared by
    /// every instance without being stored anywhere.
    pub(crate) fn derive_secret(&self, label: &str) -> zeroize::Zeroizing<[u8; 32]> {
        let mut msg = b"strongbox derive v1 ".to_vec();
        msg.extend_from_slice(label.as_bytes());
        zeroize::Zeroizing::new(crate::crypto::hmac_sha256(self.root.key().reveal(), &msg))
    }

    /// The unsealed KEK of `version`, from cache or from the database.
    async fn kek(&self, version: i64) -> Result<Arc<AeadKey>, VaultError> {
        self.kek_via(None, version).await
    }

    /// As [`Vault::kek`], reading through `conn` when given: a writer holding a
    /// transaction must not wait on a second pool connection.
    async fn kek_via(
        &self,
        conn: Option<&mut Conn>,
        version: i64,
    ) -> Result<Arc<AeadKey>, VaultError> {
        if let Some(k) = self.keks.get(version) {
            return Ok(k);
        }
        let row = match conn {
            Some(conn) => kek::by_version(conn, version).await?,
            None => kek::by_version(self.db.pool(), version).await?,
        }
        .ok_or(VaultError::UnknownKek(version))?;
        let (cipher, key) = keyring::unseal_kek(&self.root, &row)?;
        let key = Arc::new(AeadKey::new(cipher, &key)?);
        self.keks.insert(version, Arc::clone(&key));
        Ok(key)
    }

    /// Reserves `n` wraps on the primary, rotating first (in the same transaction) when the
    /// primary cannot take them within its wrap limit. Returns the version and its key.
    async fn reserve(&self, conn: &mut Conn, n: i64) -> Result<(i64, Arc<AeadKey>), VaultError> {
        let max = self.settings.max_wraps;
        match kek::reserve_wraps(conn, n, max).await? {
            Reservation::Reserved { version, .. } => {
                Ok((version, self.kek_via(Some(conn), version).await?))
            }
            Reservation::NoPrimary => Err(VaultError::NoPrimary),
            Reservation::Full { version } => {
                let reason = serde_json::json!({ "reason": "wrap_limit", "full": version });
                let (new_version, key) = self
                    .rotate_in(conn, Actor::System, Kind::KeyRotated, reason)
                    .await?;
                match kek::reserve_wraps(conn, n, max).await? {
                    Reservation::Reserved { version, .. } if version == new_version => {
                        Ok((version, key))
                    }
                    _ => Err(VaultError::ConcurrentRotation),
                }
            }
        }
    }

    /// Seals `tokens` as the (user, provider) connection inside the caller's transaction,
    /// creating the row or replacing its token set, and appends `event` (the caller's
    /// reason: sign-in, connect, refresh…) with the connection id, provider, KEK version
    /// and the scopes stored added to its detail — one audit event per write. With
    /// [`Scopes::Merge`] the scopes already granted on the row (read under its lock) are
    /// kept beside the new ones: connecting again with more scopes is incremental.
    /// Returns the connection id.
    pub async fn store(
        &self,
        conn: &mut Conn,
        event: Event,
        user_id: &str,
        provider: &str,
        tokens: &TokenSet,
        scopes: Scopes,
    ) -> Result<String, VaultError> {
        let backend = self.db.backend();
        let (mut version, mut kek) = self.reserve(conn, 1).await?;
        let now = self.clock.unix();
        let mut existing = conns::find_for_update(conn, backend, user_id, provider).await?;
        if existing.is_none() {
            let id = uuid::Uuid::now_v7().to_string();
            let granted = tokens.scopes.clone();
            let plaintext = tokens.encode_with(&granted);
            let b = Binding {
                record_id: &id,
                user_id,
                provider,
            };
            let env = self.seal_with(&kek, version, b, &plaintext)?;
            let new = NewEnvelope {
                id: &id,
                user_id,
                provider,
                scopes: &granted.join(" "),
                kek_version: version,
                envelope: &env,
                expires_at: tokens.expires_at,
                now,
            };
            if conns::insert(conn, &new).await? {
                self.audit_store(conn, event, &id, provider, version, &granted)
                    .await?;
                return Ok(id);
            }
            // Another writer created the row first: lock it, and count the discarded
            // seal's use of the KEK by reserving again.
            existing = conns::find_for_update(conn, backend, user_id, provider).await?;
            (version, kek) = self.reserve(conn, 1).await?;
        }
        let row = existing.ok_or(VaultError::Database(sqlx::Error::RowNotFound))?;
        let mut granted = tokens.scopes.clone();
        if scopes == Scopes::Merge {
            for s in row.scopes.split(' ').filter(|s| !s.is_empty()) {
                if !granted.iter().any(|g| g == s) {
                    granted.push(s.to_owned());
                }
            }
        }
        let plaintext = tokens.encode_with(&granted);
        let b = Binding {
            record_id: &row.id,
            user_id,
            provider,
        };
        let env = self.seal_with(&kek, version, b, &plaintext)?;
        let new = NewEnvelope {
            id: &row.id,
            user_id,
            provider,
            scopes: &granted.join(" "),
            kek_version: version,
            envelope: &env,
            expires_at: tokens.expires_at,
            now,
        };
        conns::replace(conn, &new).await?;
        self.audit_store(conn, event, &row.id, provider, version, &granted)
            .await?;
        Ok(row.id)
    }

    /// Seals `tokens`, a refresh of `current`, over its row inside the caller's
    /// transaction and appends `event` as [`Vault::store`] does, but only if the row is
    /// still the one the refresh was taken on (same generation) and active. It never
    /// creates a row: a connection erased or marked while its refresh was at the provider
    /// stays so. `false` when nothing was written (the caller then rolls back, and must
    /// not use the tokens).
    pub async fn store_refreshed(
        &self,
        conn: &mut Conn,
        event: Event,
        current: &SealedCredential,
        tokens: &TokenSet,
    ) -> Result<bool, VaultError> {
        let (version, kek) = self.reserve(conn, 1).await?;
        let row = &current.row;
        let granted = tokens.scopes.clone();
        let plaintext = tokens.encode_with(&granted);
        let env = self.seal_with(&kek, version, binding(row), &plaintext)?;
        let new = NewEnvelope {
            id: &row.id,
            user_id: &row.user_id,
            provider: &row.provider,
            scopes: &granted.join(" "),
            kek_version: version,
            envelope: &env,
            expires_at: tokens.expires_at,
            now: self.clock.unix(),
        };
        if !conns::replace_refreshed(conn, &new, row.generation).await? {
            return Ok(false);
        }
        self.audit_store(conn, event, &row.id, &row.provider, version, &granted)
            .await?;
        Ok(true)
    }

    async fn audit_store(
        &self,
        conn: &mut Conn,
        mut event: Event,
        id: &str,
        provider: &str,
        version: i64,
        scopes: &[String],
    ) -> Result<(), VaultError> {
        if !event.detail.is_object() {
            event.detail = serde_json::json!({});
        }
        if let Some(detail) = event.detail.as_object_mut() {
            detail.insert("connection".into(), id.into());
            detail.insert("provider".into(), provider.into());
            detail.insert("kek_version".into(), version.into());
            detail.insert("scopes".into(), scopes.into());
        }
        audit::append(conn, self.clock.unix_ms(), event).await?;
        Ok(())
    }

    /// The sealed connection of (user, provider), if any.
    pub async fn load(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<SealedCredential>, VaultError> {
        let row = conns::by_user_provider(self.db.pool(), user_id, provider).await?;
        Ok(row.map(|row| SealedCredential { row }))
    }

    /// A connection by id.
    pub async fn load_by_id(&self, id: &str) -> Result<Option<SealedCredential>, VaultError> {
        Ok(conns::by_id(self.db.pool(), id)
            .await?
            .map(|row| SealedCredential { row }))
    }

    /// A user's connections (metadata and ciphertext).
    pub async fn list(&self, user_id: &str) -> Result<Vec<SealedCredential>, VaultError> {
        Ok(conns::for_user(self.db.pool(), user_id)
            .await?
            .into_iter()
            .map(|row| SealedCredential { row })
            .collect())
    }

    /// Marks a connection (`active`, `revoke_pending`, `reauth_required`).
    pub async fn set_status(
        &self,
        conn: &mut Conn,
        id: &str,
        status: &str,
    ) -> Result<(), VaultError> {
        conns::set_status(conn, id, status).await?;
        Ok(())
    }

    /// Erases a connection inside the caller's transaction and audits it.
    pub async fn delete(
        &self,
        conn: &mut Conn,
        actor: &Actor,
        id: &str,
    ) -> Result<bool, VaultError> {
        let deleted = conns::delete(conn, id).await?;
        if deleted {
            let event = Event::new(Kind::CredentialDeleted, actor.clone(), id);
            audit::append(conn, self.clock.unix_ms(), event).await?;
        }
        Ok(deleted)
    }

    /// Decrypts a loaded credential. Only the executor holds an [`OpenCapability`].
    pub async fn open(
        &self,
        _cap: &OpenCapability,
        sealed: &SealedCredential,
    ) -> Result<TokenSet, VaultError> {
        let plaintext = self.open_row(&sealed.row, true).await?;
        Ok(TokenSet::decode(&plaintext)?)
    }

    /// Authenticated decryption of a row's envelope.
    /// With `warm`, a data key cached by an earlier open is used; otherwise the DEK is
    /// unwrapped from the KEK every time (whole-vault checks must prove exactly that).
    async fn open_row(&self, row: &ConnectionRow, warm: bool) -> Result<Plaintext, VaultError> {
        let env = Envelope::parse(&row.envelope)?;
        let b = binding(row);
        if !warm {
            let kek = self.kek(i64::from(env.kek_version)).await?;
            return envelope::open(&kek, &env, b).map_err(auth);
        }
        let data_key = match self.deks.get(&env) {
            Some(key) => key,
            None => {
                let kek = self.kek(i64::from(env.kek_version)).await?;
                self.deks.unwrap(&kek, &env).map_err(auth)?
            }
        };
        envelope::open_with(&data_key, &env, b).map_err(auth)
    }

    /// Seals `plaintext` under a fresh DEK wrapped by `kek`.
    fn seal_with(
        &self,
        kek: &AeadKey,
        version: i64,
        b: Binding<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let kek_version = u32::try_from(version).map_err(|_| VaultError::UnknownKek(version))?;
        Ok(envelope::seal(
            kek,
            kek_version,
            self.settings.cipher,
            b,
            plaintext,
        )?)
    }
}

/// Maps an AEAD failure to the vault's one authentication error; keeps RNG and size errors.
fn auth(e: CryptoError) -> VaultError {
    match e {
        CryptoError::Authentication => VaultError::Authentication,
        other => VaultError::Crypto(other),
    }
}

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod root_race_tests;
#[cfg(test)]
mod tests;
