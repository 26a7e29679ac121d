//! Envelope seal and open of a 512-byte token set, next to a bare AES-256-GCM seal and
//! open of the same payload in the same run. `envelope_open` is a cold open (unwrap the
//! DEK, build its key schedule, decrypt); `envelope_open_warm` is the vault's path for a
//! record opened before (data key from the DEK cache, decrypt). Target: envelope open
//! ≥ 0.4× the throughput of the bare `aes-gcm` open (the crate itself, not our wrapper);
//! ring's bare open stays alongside for reference, as the implementation before the switch.
//! Run: `cargo bench --bench envelope`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce as RingNonce, UnboundKey};
use strongbox::crypto::{AeadKey, Cipher, Key32, random_nonce};
use strongbox::vault::envelope::{self, Binding, Envelope};
use strongbox::vault::keyring::DekCache;

const PAYLOAD: usize = 512;

fn bench(c: &mut Criterion) {
    let payload = vec![0x5au8; PAYLOAD];
    let b = Binding {
        record_id: "0193a6f2-7c4e-7d3a-9c1b-2f4e6a8b0c1d",
        user_id: "0193a6f2-7c4e-7d3a-9c1b-aaaaaaaaaaaa",
        provider: "spotify",
    };
    let mut group = c.benchmark_group("token_set_512B");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));

    // For reference: ring's bare AES-256-GCM, the implementation before the switch.
    let bare = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let nonce = random_nonce().unwrap();
    let aad = Envelope::data_aad(Cipher::Aes256Gcm, b).to_vec();
    let mut sealed = payload.clone();
    bare.seal_in_place_append_tag(
        RingNonce::assume_unique_for_key(nonce),
        Aad::from(&aad),
        &mut sealed,
    )
    .unwrap();
    // The bare `aes-gcm` open: the crate our envelope uses, with the per-call buffer copy
    // any caller needs.
    let rc = Aes256Gcm::new_from_slice(&[7u8; 32]).unwrap();
    let rc_nonce = Nonce::<Aes256Gcm>::from(nonce);
    let mut rc_ct = payload.clone();
    let rc_tag: Tag<Aes256Gcm> = rc
        .encrypt_inout_detached(&rc_nonce, &aad, rc_ct.as_mut_slice().into())
        .unwrap();
    group.bench_function("bare_aes_gcm_crate_open", |bn| {
        bn.iter(|| {
            let mut buf = black_box(&rc_ct).clone();
            rc.decrypt_inout_detached(&rc_nonce, &aad, buf.as_mut_slice().into(), &rc_tag)
                .unwrap();
            buf
        })
    });

    group.bench_function("bare_ring_aes256gcm_seal", |bn| {
        bn.iter(|| {
            let mut buf = black_box(&payload).clone();
            bare.seal_in_place_append_tag(
                RingNonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut buf,
            )
            .unwrap();
            buf
        })
    });
    group.bench_function("bare_ring_aes256gcm_open", |bn| {
        bn.iter(|| {
            let mut buf = black_box(&sealed).clone();
            let n = bare
                .open_in_place(
                    RingNonce::assume_unique_for_key(nonce),
                    Aad::from(&aad),
                    &mut buf,
                )
                .unwrap()
                .len();
            buf.truncate(n);
            buf
        })
    });

    for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
        let kek = AeadKey::new(cipher, &Key32::generate().unwrap()).unwrap();
        let bytes = envelope::seal(&kek, 1, cipher, b, &payload).unwrap();
        group.bench_function(format!("envelope_seal_{cipher}"), |bn| {
            bn.iter(|| envelope::seal(&kek, 1, cipher, b, black_box(&payload)).unwrap())
        });
        let cache = DekCache::new(16);
        group.bench_function(format!("envelope_open_warm_{cipher}"), |bn| {
            bn.iter(|| {
                let env = Envelope::parse(black_box(&bytes)).unwrap();
                let key = match cache.get(&env) {
                    Some(key) => key,
                    None => cache.unwrap(&kek, &env).unwrap(),
                };
                envelope::open_with(&key, &env, b).unwrap()
            })
        });
        group.bench_function(format!("envelope_open_{cipher}"), |bn| {
            bn.iter(|| {
                let env = Envelope::parse(black_box(&bytes)).unwrap();
                envelope::open(&kek, &env, b).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
