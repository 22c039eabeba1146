//! Opening arbitrary bytes as a sealed object or a wrapped key fails cleanly (no panic, and
//! never yields plaintext under a key that did not seal it).
#![no_main]
use arca::crypto::{open, unwrap_key, SecretKey, WrappedKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_slice(&[7u8; 32]).unwrap();
    assert!(open(&key, b"aad", data).is_err());
    if data.len() >= 12 + 32 + 48 {
        let w = WrappedKey {
            nonce: data[..12].try_into().unwrap(),
            commitment: data[12..44].try_into().unwrap(),
            ciphertext: data[44..92].to_vec(),
        };
        assert!(unwrap_key(&key, &w, b"aad").is_err());
    }
});
