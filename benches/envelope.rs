//! Envelope seal and open of a 512-byte token set, next to a bare AES-256-GCM seal and
//! open of the same payload in the same run. Target: envelope open ≥ 0.4× the bare open's
//! throughput. Run: `cargo bench --bench envelope`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strongbox::crypto::{AeadKey, Cipher, Key32, random_nonce};
use strongbox::vault::envelope::{self, Binding, Envelope};

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

    let bare = AeadKey::new(Cipher::Aes256Gcm, &Key32::generate().unwrap()).unwrap();
    let nonce = random_nonce().unwrap();
    let aad = Envelope::data_aad(Cipher::Aes256Gcm, b);
    let sealed = bare.seal(&nonce, &aad, &payload).unwrap();
    group.bench_function("bare_aes256gcm_seal", |bn| {
        bn.iter(|| {
            bare.seal(black_box(&nonce), &aad, black_box(&payload))
                .unwrap()
        })
    });
    group.bench_function("bare_aes256gcm_open", |bn| {
        bn.iter(|| {
            bare.open(black_box(&nonce), &aad, black_box(&sealed))
                .unwrap()
        })
    });

    for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
        let kek = AeadKey::new(cipher, &Key32::generate().unwrap()).unwrap();
        let bytes = envelope::seal(&kek, 1, cipher, b, &payload).unwrap();
        group.bench_function(format!("envelope_seal_{cipher}"), |bn| {
            bn.iter(|| envelope::seal(&kek, 1, cipher, b, black_box(&payload)).unwrap())
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
