//! Key lifecycle: init, rotate, rewrap, retire, rotate-root, status and whole-vault checks.
//!
//! Each operation is one or more transactions that commit the key change with its audit
//! event. Rewrap is online and resumable: it reads a batch of rows still under an older
//! version, re-wraps their DEKs (payload ciphertext untouched) and swaps the new envelopes
//! in only where the row's generation and version are unchanged, one committed batch at a
//! time. A writer racing it always wins; a killed rewrap simply leaves fewer stale rows.

use std::sync::Arc;

use serde_json::json;

use super::{Envelope, RootKey, Vault, VaultError, auth, envelope, keyring};
use crate::audit::{self, Actor, Event, Kind};
use crate::crypto::{AeadKey, Key32};
use crate::store::connection::{self as conns, Swap};
use crate::store::kek::{self, KekState};
use crate::store::{Conn, is_unique_violation};

/// The most rows one swap statement carries (4 parameters each, far below every
/// backend's limit).
const SWAP_SLICE: usize = 1_000;

/// One version in `keys status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionStatus {
    pub version: i64,
    pub state: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    pub records: i64,
    pub wraps: i64,
}

/// The keyring as `keys status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub versions: Vec<VersionStatus>,
    pub primary: Option<i64>,
    /// Seconds since the primary was created.
    pub primary_age: Option<i64>,
    pub rotation_due: bool,
}

impl KeyStatus {
    /// The shape of `keys status --json` and `GET /admin/keys`.
    pub fn to_json(&self) -> serde_json::Value {
        let versions: Vec<_> = self
            .versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v.version, "state": v.state,
                    "created_at": crate::clock::rfc3339(v.created_at),
                    "records": v.records, "wraps": v.wraps,
                })
            })
            .collect();
        serde_json::json!({ "versions": versions, "rotation_due": self.rotation_due })
    }
}

/// What a rewrap did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapReport {
    pub rewrapped: u64,
    /// Rows rewritten by someone else between read and swap (already current).
    pub skipped: u64,
    /// Rows that could not be opened, with the reason.
    pub failed: Vec<(String, String)>,
}

/// One batch read and re-wrapped, ready to swap in.
struct Prepared {
    swaps: Vec<Swap>,
    failed: Vec<(String, String)>,
    last: String,
}

/// What a whole-vault check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: u64,
    pub failed: Vec<(String, String)>,
}

impl Vault {
    /// Creates the first KEK. `Ok(None)` if the vault already has one.
    pub async fn init(&self, actor: Actor) -> Result<Option<i64>, VaultError> {
        let mut tx = self.db.begin().await?;
        if !kek::all(&mut *tx).await?.is_empty() {
            return Ok(None);
        }
        let (version, key) = self
            .rotate_in(&mut tx, actor, Kind::KeyInitialized, json!({}))
            .await?;
        tx.commit().await?;
        self.keks.insert(version, key);
        Ok(Some(version))
    }

    /// Makes a new KEK version primary; older versions stay decrypt-only.
    pub async fn rotate(&self, actor: Actor) -> Result<i64, VaultError> {
        let mut tx = self.db.begin().await?;
        let (version, key) = self
            .rotate_in(
                &mut tx,
                actor,
                Kind::KeyRotated,
                json!({ "reason": "requested" }),
            )
            .await?;
        tx.commit().await?;
        self.keks.insert(version, key);
        Ok(version)
    }

    /// Creates and installs a new primary inside `conn`'s transaction, with its audit
    /// event. The key is not cached until the caller has committed.
    pub(super) async fn rotate_in(
        &self,
        conn: &mut Conn,
        actor: Actor,
        kind: Kind,
        mut detail: serde_json::Value,
    ) -> Result<(i64, Arc<AeadKey>), VaultError> {
        if let Some(primary) = kek::lock_primary(&mut *conn, self.db.backend()).await? {
            // Never seal a new KEK under a root key the others were not sealed under.
            if primary.root_key_id != self.root.id() {
                return Err(VaultError::WrongRootKey {
                    version: primary.version,
                    expected: primary.root_key_id,
                    have: self.root.id(),
                });
            }
            set(&mut detail, "previous", json!(primary.version));
        }
        kek::demote_primary(conn).await?;
        let version = kek::next_version(conn).await?;
        let cipher = self.settings.cipher;
        let key = Key32::generate()?;
        let sealed = keyring::seal_kek(&self.root, version, cipher, &key)?;
        let now = self.clock.unix();
        kek::insert_primary(conn, version, cipher.name(), &sealed, &self.root.id(), now)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    VaultError::ConcurrentRotation
                } else {
                    VaultError::Database(e)
                }
            })?;
        set(&mut detail, "version", json!(version));
        set(&mut detail, "cipher", json!(cipher.name()));
        let event = Event::new(kind, actor, format!("kek:{version}")).detail(detail);
        audit::append(conn, self.clock.unix_ms(), event).await?;
        Ok((version, Arc::new(AeadKey::new(cipher, &key)?)))
    }

    /// Re-wraps every record under an older KEK with the primary, `batch` rows per
    /// committed transaction. While one batch is written, the next is read and re-wrapped.
    pub async fn rewrap(&self, actor: Actor, batch: usize) -> Result<RewrapReport, VaultError> {
        let limit = i64::try_from(batch.max(1)).unwrap_or(1000);
        let mut report = RewrapReport::default();
        'scan: loop {
            let primary = kek::primary(self.db.pool())
                .await?
                .ok_or(VaultError::NoPrimary)?
                .version;
            let target = self.kek(primary).await?;
            report.failed.clear();
            let mut next = self.prepare(primary, &target, "", limit).await?;
            while let Some(current) = next.take() {
                let (written, prepared) = tokio::join!(
                    self.write_batch(&actor, primary, &current.swaps),
                    self.prepare(primary, &target, &current.last, limit),
                );
                let Some((changed, skipped)) = written? else {
                    // The primary moved (or filled up and was rotated): scan again.
                    continue 'scan;
                };
                report.rewrapped += changed;
                report.skipped += skipped;
                report.failed.extend(current.failed);
                tracing::info!(
                    rewrapped = report.rewrapped,
                    to = primary,
                    "rewrap progress"
                );
                next = prepared?;
            }
            return Ok(report);
        }
    }

    /// Reads the next stale rows after `after` and re-wraps them in memory.
    async fn prepare(
        &self,
        primary: i64,
        target: &AeadKey,
        after: &str,
        limit: i64,
    ) -> Result<Option<Prepared>, VaultError> {
        let rows = conns::stale_batch(self.db.pool(), primary, after, limit).await?;
        let Some(last) = rows.last().map(|r| r.id.clone()) else {
            return Ok(None);
        };
        let target_version = u32::try_from(primary).map_err(|_| VaultError::UnknownKek(primary))?;
        let mut prepared = Prepared {
            swaps: Vec::with_capacity(rows.len()),
            failed: Vec::new(),
            last,
        };
        for row in rows {
            match self.rewrapped(&row, target, target_version).await {
                Ok(envelope) => prepared.swaps.push(Swap {
                    id: row.id,
                    generation: row.generation,
                    old_version: row.kek_version,
                    envelope,
                }),
                Err(e) => prepared.failed.push((row.id, e.to_string())),
            }
        }
        Ok(Some(prepared))
    }

    /// Swaps one batch in with its audit event. `None` when the primary is no longer
    /// `primary` (rotating first if it reached its wrap limit).
    async fn write_batch(
        &self,
        actor: &Actor,
        primary: i64,
        swaps: &[Swap],
    ) -> Result<Option<(u64, u64)>, VaultError> {
        let n = i64::try_from(swaps.len()).unwrap_or(i64::MAX);
        let mut tx = self.db.begin().await?;
        match kek::reserve_wraps(&mut tx, n, self.settings.max_wraps).await? {
            kek::Reservation::Reserved { version, .. } if version == primary => {}
            kek::Reservation::NoPrimary => return Err(VaultError::NoPrimary),
            kek::Reservation::Reserved { .. } => return Ok(None),
            kek::Reservation::Full { version } => {
                let reason = json!({ "reason": "wrap_limit", "full": version });
                let (v, key) = self
                    .rotate_in(&mut tx, Actor::System, Kind::KeyRotated, reason)
                    .await?;
                tx.commit().await?;
                self.keks.insert(v, key);
                return Ok(None);
            }
        }
        // One statement binds four parameters per row: a batch larger than a statement
        // can carry (PostgreSQL takes 65,535 parameters, SQLite 32,766) goes in slices,
        // all in this one transaction with its one audit event.
        let mut changed = 0;
        for slice in swaps.chunks(SWAP_SLICE) {
            changed += conns::swap_envelopes(&mut tx, primary, slice).await?;
        }
        let skipped = u64::try_from(n).unwrap_or(0).saturating_sub(changed);
        let event = Event::new(Kind::KeyRewrapped, actor.clone(), format!("kek:{primary}"))
            .detail(json!({ "to": primary, "rewrapped": changed, "skipped": skipped }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        Ok(Some((changed, skipped)))
    }

    /// A row's envelope with its DEK re-wrapped under `target`; the payload is untouched.
    async fn rewrapped(
        &self,
        row: &conns::StaleRow,
        target: &AeadKey,
        target_version: u32,
    ) -> Result<Vec<u8>, VaultError> {
        let mut env = Envelope::parse(&row.envelope)?;
        let kek = self.kek(i64::from(env.kek_version)).await?;
        let dek = envelope::unwrap_dek(&kek, &env).map_err(auth)?;
        let (nonce, wrapped) = envelope::wrap_dek(target, env.data_cipher, target_version, &dek)?;
        env.kek_version = target_version;
        env.wrap_cipher = target.cipher();
        env.wrap_nonce = nonce;
        env.wrapped_dek = wrapped;
        Ok(env.to_bytes())
    }

    /// Destroys the key material of a decrypt-only version no record uses.
    pub async fn retire(&self, actor: Actor, version: i64) -> Result<(), VaultError> {
        let mut tx = self.db.begin().await?;
        let row = kek::lock(&mut tx, self.db.backend(), version)
            .await?
            .ok_or(VaultError::NoSuchVersion(version))?;
        match row.state {
            KekState::Primary => return Err(VaultError::RetirePrimary(version)),
            KekState::Retired => return Err(VaultError::AlreadyRetired(version)),
            KekState::DecryptOnly => {}
        }
        let records = conns::count_under(&mut tx, version).await?;
        if records > 0 {
            return Err(VaultError::RetireInUse { version, records });
        }
        kek::retire(&mut tx, version, self.clock.unix()).await?;
        let event = Event::new(Kind::KeyRetired, actor, format!("kek:{version}"));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        self.keks.remove(version);
        self.deks.clear();
        Ok(())
    }

    /// Re-seals every live KEK under `new_root`; records are not touched. Returns how many
    /// KEKs were re-sealed.
    ///
    /// The table is locked before it is read, so a rotation (of a KEK) cannot add a
    /// version under the old root key that this one would not re-seal: a rotation that
    /// started first is waited for and its version re-sealed; one that starts after finds
    /// the primary under the new root key and refuses. Before commit, no live version may
    /// be left under another root key.
    pub async fn rotate_root(&self, actor: Actor, new_root: &RootKey) -> Result<usize, VaultError> {
        let mut tx = self.db.begin().await?;
        kek::lock_table(&mut tx, self.db.backend()).await?;
        let rows = kek::all(&mut *tx).await?;
        let mut resealed = 0;
        for row in rows.iter().filter(|r| r.state != KekState::Retired) {
            let (cipher, key) = keyring::unseal_kek(&self.root, row)?;
            let sealed = keyring::seal_kek(new_root, row.version, cipher, &key)?;
            kek::reseal(&mut tx, row.version, &sealed, &new_root.id()).await?;
            resealed += 1;
        }
        if let Some(version) = kek::first_live_not_under(&mut tx, &new_root.id()).await? {
            // Rolled back: a KEK left under the old root key would be lost with it.
            return Err(VaultError::LeftUnderOldRoot(version));
        }
        let event = Event::new(Kind::RootKeyRotated, actor, "root")
            .detail(json!({ "from": self.root.id(), "to": new_root.id(), "keks": resealed }));
        audit::append(&mut tx, self.clock.unix_ms(), event).await?;
        tx.commit().await?;
        self.deks.clear();
        Ok(resealed)
    }

    /// Key versions, their states and use, and whether rotation is due.
    pub async fn status(&self) -> Result<KeyStatus, VaultError> {
        let rows = kek::all(self.db.pool()).await?;
        let counts = conns::count_by_version(self.db.pool()).await?;
        let now = self.clock.unix();
        let primary = rows.iter().find(|r| r.state == KekState::Primary);
        let primary_age = primary.map(|p| now - p.created_at);
        Ok(KeyStatus {
            versions: rows
                .iter()
                .map(|r| VersionStatus {
                    version: r.version,
                    state: r.state.as_str(),
                    created_at: r.created_at,
                    records: counts
                        .iter()
                        .find(|(v, _)| *v == r.version)
                        .map_or(0, |(_, n)| *n),
                    wraps: r.wraps,
                })
                .collect(),
            primary: primary.map(|p| p.version),
            primary_age,
            rotation_due: primary_age.is_none_or(|age| age > self.settings.rotation_period),
        })
    }

    /// Checks that the primary KEK unseals with the loaded root key.
    pub async fn check_ready(&self) -> Result<i64, VaultError> {
        let primary = kek::primary(self.db.pool())
            .await?
            .ok_or(VaultError::NoPrimary)?;
        self.kek(primary.version).await?;
        Ok(primary.version)
    }

    /// Opens every record (and throws the plaintext away) to prove it is readable.
    pub async fn verify_all(&self) -> Result<VerifyReport, VaultError> {
        let mut report = VerifyReport::default();
        let mut after = String::new();
        loop {
            let rows = conns::page(self.db.pool(), &after, 1000).await?;
            let Some(last) = rows.last().map(|r| r.id.clone()) else {
                break;
            };
            for row in &rows {
                match self.open_row(row, false).await {
                    Ok(_) => report.ok += 1,
                    Err(e) => report.failed.push((row.id.clone(), e.to_string())),
                }
            }
            after = last;
        }
        Ok(report)
    }
}

/// Adds `key` to a JSON object (audit details are always objects).
fn set(detail: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(obj) = detail.as_object_mut() {
        obj.insert(key.to_owned(), value);
    }
}
