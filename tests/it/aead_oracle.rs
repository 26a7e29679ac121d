//! Differential tests: our AEADs (RustCrypto `aes-gcm` and `chacha20poly1305`) against
//! ring's, an independent implementation of the same algorithms. What one seals the other
//! opens, for random keys, nonces, associated data and payloads, at the primitive and at the
//! envelope level; a flipped byte fails on both. Envelopes stored before the switch were
//! sealed by ring, so this is also the promise that nothing stored needs rewriting.

use proptest::prelude::*;
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use strongbox::crypto::{AeadKey, Cipher, Key32};
use strongbox::vault::envelope::{self, Binding, Envelope};

fn ring_key(cipher: Cipher, key: &[u8; 32]) -> LessSafeKey {
    let alg = match cipher {
        Cipher::Aes256Gcm => &AES_256_GCM,
        Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
    };
    LessSafeKey::new(UnboundKey::new(alg, key).unwrap())
}

fn ring_seal(cipher: Cipher, key: &[u8; 32], nonce: [u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let mut buf = pt.to_vec();
    ring_key(cipher, key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .unwrap();
    buf
}

fn ring_open(
    cipher: Cipher,
    key: &[u8; 32],
    nonce: [u8; 12],
    aad: &[u8],
    sealed: &[u8],
) -> Option<Vec<u8>> {
    let mut buf = sealed.to_vec();
    let n = ring_key(cipher, key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

fn cipher() -> impl Strategy<Value = Cipher> {
    prop_oneof![Just(Cipher::Aes256Gcm), Just(Cipher::ChaCha20Poly1305)]
}

const BINDING: Binding<'static> = Binding {
    record_id: "0193a6f2-7c4e-7d3a-9c1b-2f4e6a8b0c1d",
    user_id: "u-oracle",
    provider: "github",
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ours_and_rings_agree(
        cipher in cipher(),
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..96),
        pt in proptest::collection::vec(any::<u8>(), 0..2048),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let ours = AeadKey::from_slice(cipher, &key).unwrap();
        // Ours seals, ring opens; and byte-identical output (same algorithm, same inputs).
        let sealed = ours.seal(&nonce, &aad, &pt).unwrap();
        prop_assert_eq!(ring_open(cipher, &key, nonce, &aad, &sealed), Some(pt.clone()));
        // Ring seals, ours opens.
        let by_ring = ring_seal(cipher, &key, nonce, &aad, &pt);
        prop_assert_eq!(&by_ring, &sealed);
        let opened = ours.open(&nonce, &aad, &by_ring).unwrap();
        prop_assert_eq!(opened.as_slice(), pt.as_slice());
        // One flipped bit anywhere (ciphertext or tag) fails on both.
        let mut tampered = sealed.clone();
        let i = flip.index(tampered.len());
        if let Some(b) = tampered.get_mut(i) {
            *b ^= 1 << bit;
        }
        prop_assert!(ours.open(&nonce, &aad, &tampered).is_err());
        prop_assert!(ring_open(cipher, &key, nonce, &aad, &tampered).is_none());
        // So does other associated data.
        let mut other_aad = aad.clone();
        other_aad.push(0);
        prop_assert!(ours.open(&nonce, &other_aad, &sealed).is_err());
    }

    #[test]
    fn wrapped_keys_cross_over(
        cipher in cipher(),
        kek in any::<[u8; 32]>(),
        dek in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let ours = AeadKey::from_slice(cipher, &kek).unwrap();
        let wrapped = ours.wrap(&nonce, &aad, &Key32::from_slice(&dek).unwrap()).unwrap();
        prop_assert_eq!(ring_open(cipher, &kek, nonce, &aad, &wrapped), Some(dek.to_vec()));
        let by_ring = ring_seal(cipher, &kek, nonce, &aad, &dek);
        let back = ours.unwrap_key(&nonce, &aad, &by_ring).unwrap();
        prop_assert_eq!(back.fingerprint(), Key32::from_slice(&dek).unwrap().fingerprint());
    }

    #[test]
    fn envelopes_cross_over(
        data_cipher in cipher(),
        wrap_cipher in cipher(),
        kek in any::<[u8; 32]>(),
        dek in any::<[u8; 32]>(),
        wrap_nonce in any::<[u8; 12]>(),
        data_nonce in any::<[u8; 12]>(),
        pt in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let kek_ours = AeadKey::from_slice(wrap_cipher, &kek).unwrap();
        let data_aad = Envelope::data_aad(data_cipher, BINDING);
        let wrap_aad = Envelope::wrap_aad(data_cipher, wrap_cipher, 3);

        // Sealed by ours, opened by ring, field by field.
        let bytes = envelope::seal(&kek_ours, 3, data_cipher, BINDING, &pt).unwrap();
        let env = Envelope::parse(&bytes).unwrap();
        let dek_back = ring_open(wrap_cipher, &kek, env.wrap_nonce, &wrap_aad, &env.wrapped_dek).unwrap();
        let dek_back: [u8; 32] = dek_back.try_into().unwrap();
        let opened = ring_open(data_cipher, &dek_back, env.data_nonce, &data_aad, env.ciphertext);
        prop_assert_eq!(opened, Some(pt.clone()));

        // Sealed by ring, opened by ours.
        let ciphertext = ring_seal(data_cipher, &dek, data_nonce, &data_aad, &pt);
        let wrapped = ring_seal(wrap_cipher, &kek, wrap_nonce, &wrap_aad, &dek);
        let by_ring = Envelope {
            data_cipher,
            wrap_cipher,
            kek_version: 3,
            wrap_nonce,
            wrapped_dek: wrapped.try_into().unwrap(),
            data_nonce,
            ciphertext: &ciphertext,
        }
        .to_bytes();
        let env = Envelope::parse(&by_ring).unwrap();
        let opened = envelope::open(&kek_ours, &env, BINDING).unwrap();
        prop_assert_eq!(opened.as_slice(), pt.as_slice());
        // Another row's binding opens nothing.
        let elsewhere = Binding { provider: "slack", ..BINDING };
        prop_assert!(envelope::open(&kek_ours, &env, elsewhere).is_err());
    }
}
