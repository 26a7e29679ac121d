//! The one crypto boundary: the only module that names cipher, digest or RNG crates.
//!
//! The AEADs are RustCrypto's `aes-gcm` and `chacha20poly1305`, whose expanded keys are
//! wiped on drop; ring supplies the CSPRNG, SHA-256 and HMAC, and its AEADs are the
//! independent implementation the tests check these against.
//!
//! Everything here works on fixed-size keys (32 bytes), nonces (12 bytes) and tags
//! (16 bytes); any other size is refused with [`CryptoError::UnsupportedSize`] rather than
//! padded or truncated. Key bytes live in [`Key32`], which zeroizes on drop and cannot be
//! printed. Callers above this module speak of `seal`/`open` (data) and `wrap`/`unwrap`
//! (keys) and never see a cipher crate type.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadCore, AeadInOut, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Bytes in every key this module accepts.
pub const KEY_LEN: usize = 32;
/// Bytes in every nonce this module accepts.
pub const NONCE_LEN: usize = 12;
/// Bytes in every authentication tag this module produces and accepts.
pub const TAG_LEN: usize = 16;

/// What can go wrong below the vault. Deliberately coarse: an authentication failure never
/// says which byte or which key was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext, its tag, nonce, key or associated data do not match.
    #[error("authentication failed")]
    Authentication,
    /// A key, nonce or tag of a size this wrapper does not support.
    #[error("unsupported {what} size: {got} bytes")]
    UnsupportedSize { what: &'static str, got: usize },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
}

/// An AEAD cipher, identified in envelopes by a stable one-byte id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Cipher {
    /// The id written into envelopes. Never renumber.
    pub const fn id(self) -> u8 {
        match self {
            Cipher::Aes256Gcm => 1,
            Cipher::ChaCha20Poly1305 => 2,
        }
    }

    pub const fn from_id(id: u8) -> Option<Cipher> {
        match id {
            1 => Some(Cipher::Aes256Gcm),
            2 => Some(Cipher::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// The name used in configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    pub fn from_name(name: &str) -> Option<Cipher> {
        [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// 32 bytes of key material: zeroized on drop, never printed, never cloned implicitly.
pub struct Key32(Zeroizing<[u8; KEY_LEN]>);

impl Key32 {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Result<Key32, CryptoError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(key.as_mut_slice())?;
        Ok(Key32(key))
    }

    /// Copies `bytes` into a key; any length but 32 is refused.
    pub fn from_slice(bytes: &[u8]) -> Result<Key32, CryptoError> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::UnsupportedSize {
            what: "key",
            got: bytes.len(),
        })?;
        Ok(Key32(Zeroizing::new(arr)))
    }

    /// The raw bytes, for wrapping this key under another or writing a key file.
    pub(crate) fn reveal(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A short, non-secret identifier of this key: HMAC-SHA-256 keyed by the key over a
    /// fixed label, first 8 bytes in hex. Lets an operator tell keys apart without seeing
    /// them, and lets the vault say "wrong root key" instead of "corrupt data".
    pub fn fingerprint(&self) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.0.as_slice());
        let tag = ring::hmac::sign(&key, b"strongbox key fingerprint v1");
        tag.as_ref()
            .iter()
            .take(8)
            .fold(String::with_capacity(16), push_hex)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), push_hex)
}

fn push_hex(mut s: String, b: &u8) -> String {
    for nibble in [b >> 4, b & 0x0f] {
        s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
    }
    s
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32([REDACTED])")
    }
}

/// A key bound to its cipher, ready to seal and open. Built once per KEK and kept; built
/// per record for DEKs, and kept in the vault's DEK cache. Both engines are RustCrypto's,
/// built with their `zeroize` feature: the expanded AES key schedule, the GHASH key and the
/// ChaCha20 key are wiped when the last reference drops (ring's are not).
pub struct AeadKey {
    cipher: Cipher,
    engine: Engine,
}

/// The expanded key of one cipher. The AES schedule is a few hundred bytes, so it is boxed
/// to keep the enum (and every `Arc` in the DEK cache) small.
enum Engine {
    Aes(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AeadKey({}, [REDACTED])", self.cipher)
    }
}

impl AeadKey {
    pub fn new(cipher: Cipher, key: &Key32) -> Result<AeadKey, CryptoError> {
        Self::from_slice(cipher, key.0.as_slice())
    }

    /// Builds a key from raw bytes; any length but 32 is refused.
    pub fn from_slice(cipher: Cipher, key: &[u8]) -> Result<AeadKey, CryptoError> {
        let size = || CryptoError::UnsupportedSize {
            what: "key",
            got: key.len(),
        };
        if key.len() != KEY_LEN {
            return Err(size());
        }
        let engine = match cipher {
            Cipher::Aes256Gcm => Engine::Aes(Box::new(
                Aes256Gcm::new_from_slice(key).map_err(|_| size())?,
            )),
            Cipher::ChaCha20Poly1305 => Engine::ChaCha(Box::new(
                ChaCha20Poly1305::new_from_slice(key).map_err(|_| size())?,
            )),
        };
        Ok(AeadKey { cipher, engine })
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Encrypts `plaintext` and returns `ciphertext ‖ tag`.
    pub fn seal(&self, nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = nonce_from(nonce)?;
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        let tag = match &self.engine {
            Engine::Aes(k) => seal_detached(k.as_ref(), nonce, aad, &mut buf)?,
            Engine::ChaCha(k) => seal_detached(k.as_ref(), nonce, aad, &mut buf)?,
        };
        buf.extend_from_slice(&tag);
        Ok(buf)
    }

    /// Decrypts `ciphertext ‖ tag`. The plaintext comes back in a zeroizing buffer.
    pub fn open(&self, nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Plaintext, CryptoError> {
        self.open_owned(nonce, aad, sealed.to_vec())
    }

    /// Decrypts `ciphertext ‖ tag` in place, without copying: the buffer is zeroizing from
    /// the moment it is handed over, whether or not it authenticates.
    pub fn open_owned(
        &self,
        nonce: &[u8],
        aad: &[u8],
        sealed: Vec<u8>,
    ) -> Result<Plaintext, CryptoError> {
        let nonce = nonce_from(nonce)?;
        let mut buf = Plaintext(sealed);
        let len = self.open_in_place(nonce, aad, buf.0.as_mut_slice())?;
        buf.0.truncate(len);
        Ok(buf)
    }

    /// Wraps (encrypts) another key. Output is 48 bytes: the key and its tag.
    pub fn wrap(&self, nonce: &[u8], aad: &[u8], key: &Key32) -> Result<Vec<u8>, CryptoError> {
        self.seal(nonce, aad, key.0.as_slice())
    }

    /// Unwraps a key sealed by [`AeadKey::wrap`]. Works on the stack: no allocation.
    pub fn unwrap_key(
        &self,
        nonce: &[u8],
        aad: &[u8],
        wrapped: &[u8],
    ) -> Result<Key32, CryptoError> {
        let nonce = nonce_from(nonce)?;
        let mut buf = Zeroizing::new([0u8; KEY_LEN + TAG_LEN]);
        if wrapped.len() != buf.len() {
            return Err(CryptoError::Authentication);
        }
        buf.copy_from_slice(wrapped);
        let len = self.open_in_place(nonce, aad, buf.as_mut_slice())?;
        Key32::from_slice(buf.get(..len).ok_or(CryptoError::Authentication)?)
    }

    /// Authenticates and decrypts `ciphertext ‖ tag` in `buf`; returns the plaintext length.
    /// On failure the buffer still holds ciphertext: both crates check the tag first.
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(CryptoError::Authentication)?;
        let (ct, tag) = buf
            .split_at_mut_checked(len)
            .ok_or(CryptoError::Authentication)?;
        let tag: [u8; TAG_LEN] = (&*tag)
            .try_into()
            .map_err(|_| CryptoError::Authentication)?;
        match &self.engine {
            Engine::Aes(k) => open_detached(k.as_ref(), nonce, aad, ct, tag)?,
            Engine::ChaCha(k) => open_detached(k.as_ref(), nonce, aad, ct, tag)?,
        }
        Ok(len)
    }
}

/// One seal, generic over the two RustCrypto AEADs (same nonce and tag sizes).
fn seal_detached<A>(
    aead: &A,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; TAG_LEN], CryptoError>
where
    A: AeadInOut + AeadCore<NonceSize = U12, TagSize = U16>,
{
    aead.encrypt_inout_detached(&Array::from(*nonce), aad, buf.into())
        .map(Into::into)
        .map_err(|_| CryptoError::Authentication)
}

/// One open, generic over the two RustCrypto AEADs.
fn open_detached<A>(
    aead: &A,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: [u8; TAG_LEN],
) -> Result<(), CryptoError>
where
    A: AeadInOut + AeadCore<NonceSize = U12, TagSize = U16>,
{
    aead.decrypt_inout_detached(&Array::from(*nonce), aad, buf.into(), &Array::from(tag))
        .map_err(|_| CryptoError::Authentication)
}

fn nonce_from(bytes: &[u8]) -> Result<&[u8; NONCE_LEN], CryptoError> {
    bytes.try_into().map_err(|_| CryptoError::UnsupportedSize {
        what: "nonce",
        got: bytes.len(),
    })
}

/// Decrypted bytes: wiped when dropped, including spare capacity, and never printed.
/// Wiping goes a machine word at a time (volatile writes through `zeroize`), because a
/// byte-at-a-time wipe of a token set costs more than decrypting it.
pub struct Plaintext(Vec<u8>);

impl Plaintext {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Plaintext {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.0.spare_capacity_mut().zeroize();
        let (head, words, tail) = bytemuck::pod_align_to_mut::<u8, u64>(self.0.as_mut_slice());
        head.zeroize();
        words.zeroize();
        tail.zeroize();
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext([REDACTED; {} bytes])", self.0.len())
    }
}

/// Fills `buf` from the OS CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new().fill(buf).map_err(|_| CryptoError::Rng)
}

/// `bytes` random bytes from the OS CSPRNG as unpadded URL-safe base64, in a zeroizing
/// string: session secrets, agent secrets, delegation tokens, opaque handles.
pub fn random_text(bytes: usize) -> Result<Zeroizing<String>, CryptoError> {
    use base64::Engine;
    let mut raw = Zeroizing::new(vec![0u8; bytes]);
    fill_random(&mut raw)?;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_slice()),
    ))
}

/// A fresh random nonce from the OS CSPRNG.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    Ok(nonce)
}

/// SHA-256 over a sequence of parts, fed in order.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// HMAC-SHA-256 of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::hmac::sign(&key, msg).as_ref());
    out
}

/// Constant-time equality for secrets and digests (`subtle`, whose comparison the
/// optimizer cannot turn into an early exit). Lengths are public and compared first.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn round_trip_both_ciphers() -> Result<(), CryptoError> {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let key = AeadKey::new(cipher, &Key32::generate()?)?;
            let nonce = random_nonce()?;
            let sealed = key.seal(&nonce, b"aad", b"hello")?;
            assert_eq!(sealed.len(), 5 + TAG_LEN);
            let opened = key.open(&nonce, b"aad", &sealed)?;
            assert_eq!(opened.as_slice(), b"hello");
            assert_eq!(format!("{opened:?}"), "Plaintext([REDACTED; 5 bytes])");
            assert_eq!(
                key.open(&nonce, b"other", &sealed).err(),
                Some(CryptoError::Authentication)
            );
        }
        Ok(())
    }

    #[test]
    fn unsupported_sizes_are_refused() {
        assert!(matches!(
            AeadKey::from_slice(Cipher::Aes256Gcm, &[0u8; 16]),
            Err(CryptoError::UnsupportedSize {
                what: "key",
                got: 16
            })
        ));
        let Ok(key) = AeadKey::from_slice(Cipher::Aes256Gcm, &[0u8; 32]) else {
            unreachable!("32-byte keys are supported")
        };
        assert!(matches!(
            key.seal(&[0u8; 8], b"", b"x"),
            Err(CryptoError::UnsupportedSize {
                what: "nonce",
                got: 8
            })
        ));
        assert_eq!(
            key.open(&[0u8; 12], b"", &[0u8; 15]).err(),
            Some(CryptoError::Authentication)
        );
    }

    #[test]
    fn key_debug_is_redacted() -> Result<(), CryptoError> {
        let key = Key32::from_slice(&[0x41; 32])?;
        assert_eq!(format!("{key:?}"), "Key32([REDACTED])");
        assert_eq!(key.fingerprint().len(), 16);
        Ok(())
    }

    /// The engines the DEK cache and the KEK cache keep must wipe their expanded keys when
    /// dropped; without the crates' `zeroize` feature this does not compile.
    #[test]
    fn expanded_keys_are_wiped_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<Aes256Gcm>();
        wiped_on_drop::<ChaCha20Poly1305>();
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
