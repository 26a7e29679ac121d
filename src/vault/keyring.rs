//! The keyring: KEKs sealed under the root key, unsealed on demand and cached.
//!
//! A KEK row holds `format ‖ root cipher id ‖ nonce ‖ AEAD(root, KEK)` with associated data
//! naming the version and the KEK's cipher, so a sealed KEK copied onto another version's
//! row does not unseal. The cache only ever holds keys read back from committed rows, so a
//! rolled-back rotation can never leave a phantom version in memory. An instance that meets
//! a version it has not loaded reads it from the database: instances sharing one database
//! see each other's rotations without a restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::crypto::{AeadKey, Cipher, CryptoError, Key32, NONCE_LEN, random_nonce};
use crate::store::kek::{KekRow, KekState};

use super::VaultError;
use super::envelope::{self, Envelope, KEY_ID_LEN};
use super::rootkey::RootKey;

const SEALED_KEK_V1: u8 = 1;
/// The root key always seals with AES-256-GCM; the id is still written for future change.
const ROOT_CIPHER: Cipher = Cipher::Aes256Gcm;

fn kek_aad(version: i64, cipher: Cipher) -> Vec<u8> {
    let mut aad = b"strongbox/kek/v1".to_vec();
    aad.extend_from_slice(&version.to_be_bytes());
    aad.push(cipher.id());
    aad
}

/// Seals a KEK under `root` for storage in version `version`'s row.
pub fn seal_kek(
    root: &RootKey,
    version: i64,
    cipher: Cipher,
    kek: &Key32,
) -> Result<Vec<u8>, VaultError> {
    let nonce = random_nonce()?;
    let sealer = AeadKey::new(ROOT_CIPHER, root.key())?;
    let wrapped = sealer.wrap(&nonce, &kek_aad(version, cipher), kek)?;
    let mut out = Vec::with_capacity(2 + NONCE_LEN + wrapped.len());
    out.push(SEALED_KEK_V1);
    out.push(ROOT_CIPHER.id());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&wrapped);
    Ok(out)
}

/// Unseals a KEK row's key material with `root`.
pub fn unseal_kek(root: &RootKey, row: &KekRow) -> Result<(Cipher, Key32), VaultError> {
    let version = row.version;
    let cipher = Cipher::from_name(&row.cipher)
        .ok_or_else(|| VaultError::UnknownCipher(row.cipher.clone()))?;
    let sealed = match (&row.state, &row.sealed_key) {
        (KekState::Retired, _) | (_, None) => return Err(VaultError::KekRetired(version)),
        (_, Some(sealed)) => sealed,
    };
    if row.root_key_id != root.id() {
        return Err(VaultError::WrongRootKey {
            version,
            expected: row.root_key_id.clone(),
            have: root.id(),
        });
    }
    let corrupt = || VaultError::CorruptKek(version);
    let (&format, rest) = sealed.split_first().ok_or_else(corrupt)?;
    let (&root_cipher, rest) = rest.split_first().ok_or_else(corrupt)?;
    let (nonce, wrapped) = rest.split_at_checked(NONCE_LEN).ok_or_else(corrupt)?;
    if format != SEALED_KEK_V1 || Cipher::from_id(root_cipher) != Some(ROOT_CIPHER) {
        return Err(corrupt());
    }
    let opener = AeadKey::new(ROOT_CIPHER, root.key())?;
    let key = opener
        .unwrap_key(nonce, &kek_aad(version, cipher), wrapped)
        .map_err(|_| corrupt())?;
    Ok((cipher, key))
}

/// Unsealed KEKs by version.
#[derive(Debug, Default)]
pub struct KekCache(RwLock<HashMap<i64, Arc<AeadKey>>>);

impl KekCache {
    pub fn get(&self, version: i64) -> Option<Arc<AeadKey>> {
        self.0.read().ok().and_then(|m| m.get(&version).cloned())
    }

    /// Caches a key read from a committed row.
    pub fn insert(&self, version: i64, key: Arc<AeadKey>) {
        if let Ok(mut m) = self.0.write() {
            m.insert(version, key);
        }
    }

    pub fn remove(&self, version: i64) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&version);
        }
    }
}

/// Data keys of recently opened envelopes, ready to use: an open of a warm record skips the
/// DEK unwrap and the AES key schedule, which together cost more than the decryption.
///
/// Keyed by the envelope's whole key header and wrapped DEK, which are unique per write, so
/// a rewrite or rewrap simply misses. A hit proves nothing about the row: the data AAD still
/// binds every open to its record, user and provider. Bounded; emptied when full and when a
/// KEK is retired or the root key rotated.
#[derive(Debug)]
pub struct DekCache {
    map: RwLock<HashMap<[u8; KEY_ID_LEN], Arc<AeadKey>>>,
    capacity: usize,
}

impl DekCache {
    pub fn new(capacity: usize) -> DekCache {
        DekCache {
            map: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// The cached data key of `env`, if any.
    pub fn get(&self, env: &Envelope<'_>) -> Option<Arc<AeadKey>> {
        self.map
            .read()
            .ok()
            .and_then(|m| m.get(&env.key_id()).cloned())
    }

    /// Unwraps the data key of `env` with `kek`, caches it and returns it.
    pub fn unwrap(&self, kek: &AeadKey, env: &Envelope<'_>) -> Result<Arc<AeadKey>, CryptoError> {
        let dek = envelope::unwrap_dek(kek, env)?;
        let key = Arc::new(AeadKey::new(env.data_cipher, &dek)?);
        if let Ok(mut m) = self.map.write() {
            if m.len() >= self.capacity {
                m.clear();
            }
            m.insert(env.key_id(), Arc::clone(&key));
        }
        Ok(key)
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.map.write() {
            m.clear();
        }
    }
}
