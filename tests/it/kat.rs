//! Known-answer tests: every Wycheproof AES-GCM and ChaCha20-Poly1305 vector through our
//! wrapper. Vectors with sizes we do not support (keys other than 256 bits, nonces other
//! than 96 bits, tags other than 128 bits) must be refused, never processed.

use strongbox::crypto::{AeadKey, Cipher, CryptoError, TAG_LEN};
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

fn run(name: TestName, cipher: Cipher) -> (usize, usize) {
    let set = TestSet::load(name).unwrap();
    let (mut checked, mut refused) = (0, 0);
    for group in set.test_groups {
        for t in group.tests {
            let supported =
                group.key_size == 256 && group.nonce_size == 96 && group.tag_size == 128;
            let key = AeadKey::from_slice(cipher, &t.key);
            if !supported {
                let refused_here = match &key {
                    Err(CryptoError::UnsupportedSize { .. }) => true,
                    Err(_) => false,
                    Ok(k) => {
                        let mut sealed = t.ct.to_vec();
                        sealed.extend_from_slice(&t.tag);
                        let seal = k.seal(&t.nonce, &t.aad, &t.pt);
                        let open = k.open(&t.nonce, &t.aad, &sealed);
                        // A short tag is refused by length; other sizes by the size check.
                        matches!(seal, Err(CryptoError::UnsupportedSize { .. }))
                            || (t.tag.len() != TAG_LEN && open.is_err())
                    }
                };
                assert!(
                    refused_here,
                    "tc {} ({} bit key, {} bit nonce, {} bit tag) was not refused",
                    t.tc_id, group.key_size, group.nonce_size, group.tag_size
                );
                refused += 1;
                continue;
            }
            let key = key.unwrap();
            let mut sealed = t.ct.to_vec();
            sealed.extend_from_slice(&t.tag);
            let opened = key.open(&t.nonce, &t.aad, &sealed);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(
                        opened.unwrap().as_slice(),
                        t.pt.as_slice(),
                        "tc {} open",
                        t.tc_id
                    );
                    assert_eq!(
                        key.seal(&t.nonce, &t.aad, &t.pt).unwrap(),
                        sealed,
                        "tc {} seal",
                        t.tc_id
                    );
                }
                TestResult::Invalid => assert!(opened.is_err(), "tc {} must not open", t.tc_id),
            }
            checked += 1;
        }
    }
    (checked, refused)
}

#[test]
fn wycheproof_aes_256_gcm() {
    let (checked, refused) = run(TestName::AesGcm, Cipher::Aes256Gcm);
    assert!(
        checked > 50 && refused > 50,
        "checked {checked}, refused {refused}"
    );
}

#[test]
fn wycheproof_chacha20_poly1305() {
    let (checked, refused) = run(TestName::ChaCha20Poly1305, Cipher::ChaCha20Poly1305);
    assert!(checked > 50, "checked {checked}, refused {refused}");
}
