//! The stored envelope: a self-describing, versioned byte format for one sealed token set.
//!
//! ```text
//! offset  size  field
//!      0     1  format version (1)
//!      1     1  data cipher id   (1 = AES-256-GCM, 2 = ChaCha20-Poly1305)
//!      2     1  wrap cipher id   (cipher of the KEK that wraps the DEK)
//!      3     4  KEK version, big-endian
//!      7    12  wrap nonce
//!     19    48  wrapped DEK (32-byte key ‖ 16-byte tag)
//!     67    12  data nonce
//!     79   16+  ciphertext ‖ tag
//! ```
//!
//! Two associated-data strings protect the envelope. The data AAD binds the payload to its
//! row: the header fields that never change for a sealed payload (format, data cipher)
//! plus record id, user and provider. The wrap AAD binds the wrapped DEK to the whole key
//! header (format, both ciphers, KEK version). Each part is length-prefixed, so no two
//! different tuples encode alike. Because the KEK version sits only in the wrap AAD, a
//! rewrap replaces bytes 2..67 and leaves the payload ciphertext untouched, yet a copied or
//! edited envelope still fails to open anywhere but in its own row: a DEK carried to
//! another row unwraps, but its payload's data AAD names the original row. The ids stay
//! out of the wrap AAD on purpose: GHASH over associated data is the slow path, and the
//! data AAD already carries them.
//!
//! Parsing is total: any input yields an [`Envelope`] or an [`EnvelopeError`], never a panic.

use zeroize::Zeroizing;

use crate::crypto::{
    AeadKey, Cipher, CryptoError, KEY_LEN, Key32, NONCE_LEN, Plaintext, TAG_LEN, fill_random,
    random_nonce,
};

/// The only format version this build writes and reads.
pub const FORMAT_V1: u8 = 1;
const WRAPPED_DEK_LEN: usize = KEY_LEN + TAG_LEN;
const OFF_KEK: usize = 3;
const OFF_WRAP_NONCE: usize = OFF_KEK + 4;
const OFF_WRAPPED: usize = OFF_WRAP_NONCE + NONCE_LEN;
const OFF_DATA_NONCE: usize = OFF_WRAPPED + WRAPPED_DEK_LEN;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = OFF_DATA_NONCE + NONCE_LEN;
/// Bytes in [`Envelope::key_id`]: the key header and wrapped DEK.
pub const KEY_ID_LEN: usize = OFF_DATA_NONCE - 1;

/// Why bytes are not an envelope this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope truncated: {len} bytes, at least {min} needed")]
    Truncated { len: usize, min: usize },
    #[error("unsupported envelope format version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown cipher id {0} in envelope")]
    UnknownCipher(u8),
}

/// A parsed envelope, borrowing its ciphertext from the stored bytes. Holds only
/// ciphertext and public header fields.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub data_cipher: Cipher,
    pub wrap_cipher: Cipher,
    pub kek_version: u32,
    pub wrap_nonce: [u8; NONCE_LEN],
    pub wrapped_dek: [u8; WRAPPED_DEK_LEN],
    pub data_nonce: [u8; NONCE_LEN],
    pub ciphertext: &'a [u8],
}

impl std::fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("data_cipher", &self.data_cipher)
            .field("wrap_cipher", &self.wrap_cipher)
            .field("kek_version", &self.kek_version)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// The ids an envelope is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub record_id: &'a str,
    pub user_id: &'a str,
    pub provider: &'a str,
}

impl<'a> Envelope<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        let min = HEADER_LEN + TAG_LEN;
        let truncated = || EnvelopeError::Truncated {
            len: bytes.len(),
            min,
        };
        let (&version, rest) = bytes.split_first().ok_or_else(truncated)?;
        if version != FORMAT_V1 {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        if bytes.len() < min {
            return Err(truncated());
        }
        let cipher = |id: u8| Cipher::from_id(id).ok_or(EnvelopeError::UnknownCipher(id));
        let (&data_id, rest) = rest.split_first().ok_or_else(truncated)?;
        let (&wrap_id, rest) = rest.split_first().ok_or_else(truncated)?;
        let (kek, rest) = rest.split_first_chunk::<4>().ok_or_else(truncated)?;
        let (wrap_nonce, rest) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or_else(truncated)?;
        let (wrapped_dek, rest) = rest
            .split_first_chunk::<WRAPPED_DEK_LEN>()
            .ok_or_else(truncated)?;
        let (data_nonce, ciphertext) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or_else(truncated)?;
        Ok(Envelope {
            data_cipher: cipher(data_id)?,
            wrap_cipher: cipher(wrap_id)?,
            kek_version: u32::from_be_bytes(*kek),
            wrap_nonce: *wrap_nonce,
            wrapped_dek: *wrapped_dek,
            data_nonce: *data_nonce,
            ciphertext,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.push(FORMAT_V1);
        out.push(self.data_cipher.id());
        out.push(self.wrap_cipher.id());
        out.extend_from_slice(&self.kek_version.to_be_bytes());
        out.extend_from_slice(&self.wrap_nonce);
        out.extend_from_slice(&self.wrapped_dek);
        out.extend_from_slice(&self.data_nonce);
        out.extend_from_slice(self.ciphertext);
        out
    }

    /// Associated data for the payload: stable header fields and the row's ids.
    pub fn data_aad(data_cipher: Cipher, binding: Binding<'_>) -> AadBuf {
        aad(&[
            b"strongbox/data/v1",
            &[FORMAT_V1, data_cipher.id()],
            binding.record_id.as_bytes(),
            binding.user_id.as_bytes(),
            binding.provider.as_bytes(),
        ])
    }

    /// Associated data for the wrapped DEK: the full key header. The row's ids are bound by
    /// the data AAD: a DEK moved to another row unwraps, but opens nothing there.
    pub fn wrap_aad(data_cipher: Cipher, wrap_cipher: Cipher, kek_version: u32) -> AadBuf {
        let v = kek_version.to_be_bytes();
        let header = [
            FORMAT_V1,
            data_cipher.id(),
            wrap_cipher.id(),
            v[0],
            v[1],
            v[2],
            v[3],
        ];
        aad(&[b"strongbox/dek/v1", &header])
    }
}

/// Seals `plaintext` for the record `b` under a fresh DEK, wrapped by `kek` (version
/// `kek_version`). Fresh DEK and nonces come from the OS CSPRNG on every call.
pub fn seal(
    kek: &AeadKey,
    kek_version: u32,
    data_cipher: Cipher,
    b: Binding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    // One draw from the OS for the DEK and both nonces: the syscall costs more than the
    // encryption of a token set.
    let mut fresh = Zeroizing::new([0u8; KEY_LEN + 2 * NONCE_LEN]);
    fill_random(fresh.as_mut_slice())?;
    let (key_bytes, nonces) = fresh.split_at(KEY_LEN);
    let (data_nonce, wrap_nonce) = nonces.split_at(NONCE_LEN);
    let dek = Key32::from_slice(key_bytes)?;
    let ciphertext = AeadKey::new(data_cipher, &dek)?.seal(
        data_nonce,
        &Envelope::data_aad(data_cipher, b),
        plaintext,
    )?;
    let wrapped_dek = wrap_dek_with(kek, data_cipher, kek_version, &dek, wrap_nonce)?;
    Ok(Envelope {
        data_cipher,
        wrap_cipher: kek.cipher(),
        kek_version,
        wrap_nonce: wrap_nonce.try_into().map_err(|_| CryptoError::Rng)?,
        wrapped_dek,
        data_nonce: data_nonce.try_into().map_err(|_| CryptoError::Rng)?,
        ciphertext: &ciphertext,
    }
    .to_bytes())
}

/// Opens a parsed envelope of record `b` with its KEK, decrypting its ciphertext in place.
/// Any mismatch — another row's ciphertext, an edited header, the wrong KEK — is
/// [`CryptoError::Authentication`].
pub fn open(kek: &AeadKey, env: &Envelope<'_>, b: Binding<'_>) -> Result<Plaintext, CryptoError> {
    let dek = unwrap_dek(kek, env)?;
    open_with(&AeadKey::new(env.data_cipher, &dek)?, env, b)
}

/// Opens a parsed envelope with its already unwrapped data key.
pub fn open_with(
    data_key: &AeadKey,
    env: &Envelope<'_>,
    b: Binding<'_>,
) -> Result<Plaintext, CryptoError> {
    if data_key.cipher() != env.data_cipher {
        return Err(CryptoError::Authentication);
    }
    data_key.open_owned(
        &env.data_nonce,
        &Envelope::data_aad(env.data_cipher, b),
        env.ciphertext.to_vec(),
    )
}

impl Envelope<'_> {
    /// The key header and wrapped DEK (bytes 1..67): identifies the DEK for caching.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        let mut id = [0u8; KEY_ID_LEN];
        let v = self.kek_version.to_be_bytes();
        let head = [
            self.data_cipher.id(),
            self.wrap_cipher.id(),
            v[0],
            v[1],
            v[2],
            v[3],
        ];
        let (a, rest) = id.split_at_mut(head.len());
        a.copy_from_slice(&head);
        let (b, c) = rest.split_at_mut(NONCE_LEN);
        b.copy_from_slice(&self.wrap_nonce);
        c.copy_from_slice(&self.wrapped_dek);
        id
    }
}

/// Unwraps the DEK of a parsed envelope.
pub fn unwrap_dek(kek: &AeadKey, env: &Envelope<'_>) -> Result<Key32, CryptoError> {
    if kek.cipher() != env.wrap_cipher {
        return Err(CryptoError::Authentication);
    }
    let aad = Envelope::wrap_aad(env.data_cipher, env.wrap_cipher, env.kek_version);
    kek.unwrap_key(&env.wrap_nonce, &aad, &env.wrapped_dek)
}

/// Wraps a DEK under `kek`, with a fresh nonce.
pub fn wrap_dek(
    kek: &AeadKey,
    data_cipher: Cipher,
    kek_version: u32,
    dek: &Key32,
) -> Result<([u8; NONCE_LEN], [u8; WRAPPED_DEK_LEN]), CryptoError> {
    let nonce = random_nonce()?;
    let wrapped = wrap_dek_with(kek, data_cipher, kek_version, dek, &nonce)?;
    Ok((nonce, wrapped))
}

fn wrap_dek_with(
    kek: &AeadKey,
    data_cipher: Cipher,
    kek_version: u32,
    dek: &Key32,
    nonce: &[u8],
) -> Result<[u8; WRAPPED_DEK_LEN], CryptoError> {
    let aad = Envelope::wrap_aad(data_cipher, kek.cipher(), kek_version);
    let wrapped = kek.wrap(nonce, &aad, dek)?;
    wrapped.try_into().map_err(|_| CryptoError::Authentication)
}

/// Associated data, built on the stack: an allocation per open costs as much as a tenth of
/// the decryption. Ids longer than the inline buffer fall back to the heap.
pub struct AadBuf {
    inline: [u8; AAD_INLINE],
    len: usize,
    heap: Vec<u8>,
}

const AAD_INLINE: usize = 256;

impl AadBuf {
    fn push(&mut self, bytes: &[u8]) {
        if self.heap.is_empty() {
            if let Some(dst) = self.inline.get_mut(self.len..self.len + bytes.len()) {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
                return;
            }
            self.heap
                .extend_from_slice(self.inline.get(..self.len).unwrap_or_default());
        }
        self.heap.extend_from_slice(bytes);
    }
}

impl std::ops::Deref for AadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.heap.is_empty() {
            self.inline.get(..self.len).unwrap_or_default()
        } else {
            &self.heap
        }
    }
}

fn aad(parts: &[&[u8]]) -> AadBuf {
    let mut out = AadBuf {
        inline: [0; AAD_INLINE],
        len: 0,
        heap: Vec::new(),
    };
    for part in parts {
        // Parts are short ids; a length over u32::MAX cannot be built from them.
        out.push(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.push(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Envelope<'static> {
        Envelope {
            data_cipher: Cipher::Aes256Gcm,
            wrap_cipher: Cipher::ChaCha20Poly1305,
            kek_version: 0x0102_0304,
            wrap_nonce: [1; NONCE_LEN],
            wrapped_dek: [2; WRAPPED_DEK_LEN],
            data_nonce: [3; NONCE_LEN],
            ciphertext: &[4; 40],
        }
    }

    #[test]
    fn encodes_and_parses() {
        let env = sample();
        let bytes = env.to_bytes();
        assert_eq!(bytes.len(), HEADER_LEN + 40);
        assert_eq!(Envelope::parse(&bytes), Ok(env));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().to_bytes();
        for len in 0..HEADER_LEN + TAG_LEN {
            assert!(
                Envelope::parse(bytes.get(..len).unwrap_or_default()).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn rejects_unknown_version_and_cipher() {
        let mut bytes = sample().to_bytes();
        bytes[0] = 2;
        assert_eq!(
            Envelope::parse(&bytes),
            Err(EnvelopeError::UnsupportedVersion(2))
        );
        bytes[0] = 1;
        bytes[1] = 9;
        assert_eq!(
            Envelope::parse(&bytes),
            Err(EnvelopeError::UnknownCipher(9))
        );
    }

    #[test]
    fn aad_is_length_prefixed() {
        let a = Binding {
            record_id: "ab",
            user_id: "c",
            provider: "p",
        };
        let b = Binding {
            record_id: "a",
            user_id: "bc",
            provider: "p",
        };
        assert_ne!(
            *Envelope::data_aad(Cipher::Aes256Gcm, a),
            *Envelope::data_aad(Cipher::Aes256Gcm, b)
        );
        let long = "x".repeat(300);
        let c = Binding {
            record_id: &long,
            user_id: "u",
            provider: "p",
        };
        let built = Envelope::data_aad(Cipher::Aes256Gcm, c);
        assert_eq!(built.len(), 4 * 5 + 17 + 2 + 300 + 1 + 1);
        assert!(built.ends_with(b"\0\0\0\x01u\0\0\0\x01p"));
    }

    proptest! {
        /// The decoder is total: arbitrary bytes never panic, and whatever parses
        /// re-encodes to the same bytes.
        #[test]
        fn parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(env) = Envelope::parse(&bytes) {
                prop_assert_eq!(env.to_bytes(), bytes);
            }
        }
    }
}
