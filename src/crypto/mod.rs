//! The only module that touches `aes-gcm`, `argon2` and `blake3`.
//!
//! Its API is small on purpose:
//! - [`SecretKey`]: 32 bytes of key material, zeroized on drop, readable only through
//!   [`SecretKey::expose`], with a redacted `Debug` and no `Clone`.
//! - [`derive_password_hash`]: Argon2id(passphrase, salt, params) → 32-byte password hash.
//! - [`wrap_key`] / [`unwrap_key`]: key wrapping with a key commitment, so a wrong key is
//!   reported as [`CryptoError::WrongKey`] and a modified envelope as [`CryptoError::Tampered`].
//! - [`Sealer`]: AES-256-GCM with a per-key nonce counter, for objects sealed under a
//!   single-use key; [`open`] authenticates and decrypts.
//! - [`ChunkIdKey`]: keyed BLAKE3 for chunk ids.
//!
//! Every derivation context string below is part of the on-disk format (docs/FORMAT.md).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroize;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed object adds to its plaintext: nonce + GCM tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Derivation contexts (BLAKE3 `derive_key`). Changing one changes the format.
pub mod context {
    pub const WRAP: &str = "arca 2026-11 v1 key wrapping key";
    pub const COMMIT: &str = "arca 2026-11 v1 key commitment";
    pub const CHUNK_ID: &str = "arca 2026-11 v1 chunk id";
    pub const POINT_CHUNKS: &str = "arca 2026-11 v1 point chunk encryption";
    pub const POINT_PACK_HEADERS: &str = "arca 2026-11 v1 point pack header encryption";
    pub const POINT_INDEX: &str = "arca 2026-11 v1 point index encryption";
    pub const POINT_BODY: &str = "arca 2026-11 v1 point body encryption";
    pub const KEY_FINGERPRINT: &str = "arca 2026-11 v1 raw key fingerprint";
    pub const CATALOG_SEAL: &str = "arca 2026-11 v1 catalog secret sealing";
    // Format v2 additions (docs/FORMAT.md §3).
    pub const CHAIN_MAC: &str = "arca 2026-11 v2 chain record authentication";
    pub const JOB_MAC: &str = "arca 2026-11 v2 job record authentication";
    pub const POINT_MAC: &str = "arca 2026-11 v2 point record authentication";
    pub const CHAIN_CHECK: &str = "arca 2026-11 v2 chain key check value";
    pub const CHUNKER: &str = "arca 2026-11 v2 chunker gear table";
    pub const CHUNK_NONCE: &str = "arca 2026-11 v2 chunk nonce";
    pub const BUNDLE: &str = "arca 2026-11 v2 configuration bundle encryption";
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The key commitment did not match: this key is not the one that wrapped the envelope.
    #[error("wrong key")]
    WrongKey,
    /// The key is right but the ciphertext or its associated data was modified.
    #[error("authentication failed: the object was modified or does not belong here")]
    Tampered,
    #[error("malformed sealed object ({0})")]
    Malformed(&'static str),
    #[error("invalid key derivation parameters: {0}")]
    KdfParams(String),
}

/// 32 bytes of secret key material. Never `Clone`, `Copy`, `Debug`-printed or serialized.
pub struct SecretKey(SecretBox<[u8; KEY_LEN]>);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        SecretKey(SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| {
            getrandom::fill(k).expect("the operating system's random number generator failed")
        }))
    }

    /// Takes ownership of key bytes; the caller's copy is zeroized.
    pub fn from_bytes(bytes: &mut [u8; KEY_LEN]) -> Self {
        let k = SecretKey(SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| {
            k.copy_from_slice(bytes)
        }));
        bytes.zeroize();
        k
    }

    /// Copies from a slice; errors unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::Malformed("key must be 32 bytes"));
        }
        Ok(SecretKey(SecretBox::init_with_mut(
            |k: &mut [u8; KEY_LEN]| k.copy_from_slice(bytes),
        )))
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }

    /// A subkey for one purpose: BLAKE3 `derive_key(context, self)`.
    pub fn derive(&self, context: &str) -> SecretKey {
        let mut out = blake3::derive_key(context, self.expose());
        SecretKey::from_bytes(&mut out)
    }

    /// An explicit copy (the type is deliberately not `Clone`).
    pub fn duplicate(&self) -> SecretKey {
        SecretKey::from_slice(self.expose()).expect("32 bytes")
    }

    /// A short public fingerprint of this key (first 8 bytes of a one-way derivation).
    pub fn fingerprint(&self) -> String {
        let d = blake3::derive_key(context::KEY_FINGERPRINT, self.expose());
        hex::encode(&d[..8])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.expose()).expect("32-byte key")
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// A passphrase held in a zeroizing box.
pub struct Passphrase(SecretBox<str>);

impl Passphrase {
    pub fn new(s: String) -> Self {
        Passphrase(SecretBox::from(s.into_boxed_str()))
    }
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase([redacted])")
    }
}

/// Argon2id cost parameters, recorded next to every salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The defaults for new passwords: 64 MiB, 3 passes, 2 lanes (~0.3 s on one core of a
    /// current x86-64 machine). Within OWASP's recommended Argon2id range.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 2,
    };

    /// Cheap parameters. Only reachable from test builds or debug builds with the
    /// explicit `ARCA_INSECURE_TEST_KDF=1` (see [`KdfParams::for_new_password`]).
    pub const INSECURE_TEST: KdfParams = KdfParams {
        m_kib: 256,
        t: 1,
        p: 1,
    };

    /// Parameters for a password being created now.
    ///
    /// `ARCA_INSECURE_TEST_KDF=1` selects [`KdfParams::INSECURE_TEST`] in debug builds so the
    /// integration tests stay fast; a release build refuses to run with it set.
    pub fn for_new_password() -> Result<KdfParams, CryptoError> {
        if cfg!(test) {
            return Ok(Self::INSECURE_TEST);
        }
        match std::env::var("ARCA_INSECURE_TEST_KDF").ok().as_deref() {
            None | Some("") | Some("0") => Ok(Self::DEFAULT),
            Some(_) if cfg!(debug_assertions) => Ok(Self::INSECURE_TEST),
            Some(_) => Err(CryptoError::KdfParams(
                "ARCA_INSECURE_TEST_KDF is set, but this is a release build: it refuses weak \
                 key derivation. Unset the variable."
                    .into(),
            )),
        }
    }

    /// The largest parameters arca runs without `--allow-expensive-kdf`: four times the
    /// default memory and passes, four times the lanes. Parameters come from the repository,
    /// which may have been written by an attacker: an inflated record would otherwise cost
    /// gigabytes and seconds per attempt before it could be found out.
    pub const CAP: KdfParams = KdfParams {
        m_kib: 4 * 64 * 1024,
        t: 4 * 3,
        p: 4 * 2,
    };

    /// Refuses parameters above [`KdfParams::CAP`] unless `allow_expensive`.
    pub fn check_cap(&self, allow_expensive: bool) -> Result<(), CryptoError> {
        if allow_expensive {
            return self.validate();
        }
        if self.m_kib > Self::CAP.m_kib || self.t > Self::CAP.t || self.p > Self::CAP.p {
            return Err(CryptoError::KdfParams(format!(
                "Argon2id parameters m={} KiB, t={}, p={} exceed arca's cap (m={} KiB, t={}, p={}: \
                 four times the defaults); a repository record asking for more may be an attack. \
                 If you set them on purpose, pass --allow-expensive-kdf",
                self.m_kib,
                self.t,
                self.p,
                Self::CAP.m_kib,
                Self::CAP.t,
                Self::CAP.p
            )));
        }
        self.validate()
    }

    /// Refuses parameters that argon2 rejects or that would be absurd to run.
    pub fn validate(&self) -> Result<(), CryptoError> {
        if self.m_kib > 4 * 1024 * 1024 || self.t > 64 || self.p > 64 {
            return Err(CryptoError::KdfParams(format!(
                "{self:?} exceeds the limits (4 GiB, 64 passes, 64 lanes)"
            )));
        }
        argon2::Params::new(self.m_kib, self.t, self.p, Some(KEY_LEN))
            .map(|_| ())
            .map_err(|e| CryptoError::KdfParams(e.to_string()))
    }
}

/// Random bytes from the OS CSPRNG (salts, ids).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    b
}

/// Argon2id(passphrase, salt, params) → the 32-byte password hash.
pub fn derive_password_hash(
    passphrase: &Passphrase,
    salt: &[u8],
    params: &KdfParams,
) -> Result<SecretKey, CryptoError> {
    params.validate()?;
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(KEY_LEN))
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; KEY_LEN];
    argon
        .hash_password_into(passphrase.expose().as_bytes(), salt, &mut out)
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    Ok(SecretKey::from_bytes(&mut out))
}

/// Builds associated data: `label || 0x00 || field_1 || ... || field_n`. Every field used in
/// arca's format has a fixed length, so the concatenation is unambiguous.
pub fn aad(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(label.len() + 1 + fields.iter().map(|f| f.len()).sum::<usize>());
    v.extend_from_slice(label.as_bytes());
    v.push(0);
    for f in fields {
        v.extend_from_slice(f);
    }
    v
}

/// A key wrapped under a key-encryption key, with a commitment to that key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub nonce: [u8; NONCE_LEN],
    /// keyed_hash(derive_key(COMMIT, kek), aad): proves which key (and place) it belongs to.
    pub commitment: [u8; 32],
    /// AES-256-GCM(derive_key(WRAP, kek), nonce, key, aad): 32 + 16 bytes.
    pub ciphertext: Vec<u8>,
}

fn commitment(kek: &SecretKey, aad: &[u8]) -> blake3::Hash {
    let ck = kek.derive(context::COMMIT);
    blake3::keyed_hash(ck.expose(), aad)
}

/// Wraps `key` under `kek`, bound to `aad`, with a random nonce.
pub fn wrap_key(kek: &SecretKey, key: &SecretKey, aad: &[u8]) -> WrappedKey {
    wrap_key_with_nonce(kek, key, aad, random_bytes())
}

/// Deterministic form of [`wrap_key`], for test vectors only.
#[doc(hidden)]
pub fn wrap_key_with_nonce(
    kek: &SecretKey,
    key: &SecretKey,
    aad: &[u8],
    nonce: [u8; NONCE_LEN],
) -> WrappedKey {
    let wk = kek.derive(context::WRAP);
    let ciphertext = wk
        .cipher()
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: key.expose(),
                aad,
            },
        )
        .expect("AES-GCM encryption of 32 bytes cannot fail");
    WrappedKey {
        nonce,
        commitment: *commitment(kek, aad).as_bytes(),
        ciphertext,
    }
}

/// Format v2 wrapping: the commitment covers `place` (which key, which slot), the AEAD's
/// associated data covers `place || bound` (every public field that steers a reader, e.g. a
/// keyslot's KDF record). A wrong key is [`CryptoError::WrongKey`]; the right key with an
/// edited `bound` is [`CryptoError::Tampered`]. With an empty `bound` it is exactly v1.
pub fn wrap_key_bound(kek: &SecretKey, key: &SecretKey, place: &[u8], bound: &[u8]) -> WrappedKey {
    wrap_key_bound_with_nonce(kek, key, place, bound, random_bytes())
}

/// Deterministic form of [`wrap_key_bound`], for test vectors only.
#[doc(hidden)]
pub fn wrap_key_bound_with_nonce(
    kek: &SecretKey,
    key: &SecretKey,
    place: &[u8],
    bound: &[u8],
    nonce: [u8; NONCE_LEN],
) -> WrappedKey {
    let full = [place, bound].concat();
    let mut w = wrap_key_with_nonce(kek, key, &full, nonce);
    w.commitment = *commitment(kek, place).as_bytes();
    w
}

/// Unwraps a [`wrap_key_bound`] envelope.
pub fn unwrap_key_bound(
    kek: &SecretKey,
    w: &WrappedKey,
    place: &[u8],
    bound: &[u8],
) -> Result<SecretKey, CryptoError> {
    if commitment(kek, place) != blake3::Hash::from_bytes(w.commitment) {
        return Err(CryptoError::WrongKey);
    }
    if w.ciphertext.len() != KEY_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("wrapped key has the wrong length"));
    }
    let full = [place, bound].concat();
    let mut pt = kek
        .derive(context::WRAP)
        .cipher()
        .decrypt(
            &Nonce::from(w.nonce),
            Payload {
                msg: &w.ciphertext,
                aad: &full,
            },
        )
        .map_err(|_| CryptoError::Tampered)?;
    let k = SecretKey::from_slice(&pt);
    pt.zeroize();
    k
}

/// A keyed MAC (BLAKE3 keyed hash under `derive(key, context)`) of `data`.
pub fn mac(key: &SecretKey, context: &str, data: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key.derive(context).expose(), data).as_bytes()
}

/// Constant-time check of a [`mac`].
pub fn verify_mac(key: &SecretKey, context: &str, data: &[u8], tag: &[u8]) -> bool {
    match blake3::Hash::from_slice(tag) {
        Ok(t) => blake3::Hash::from_bytes(mac(key, context, data)) == t,
        Err(_) => false,
    }
}

/// The public check value of a chain key, pinned in the catalog: it names the key without
/// revealing it, so a repository that swaps a chain's key is caught.
pub fn check_value(chain_key: &SecretKey) -> [u8; 32] {
    *blake3::hash(chain_key.derive(context::CHAIN_CHECK).expose()).as_bytes()
}

/// The chunker's gear tables keyed per chain (format v2): `gear[i]` is the i-th 8-byte
/// little-endian word of the BLAKE3 XOF keyed with `derive(chain key, CHUNKER)`, and
/// `gear_ls[i] = gear[i] << 1`. Chunk boundaries then differ between chains.
pub fn gear_tables(chain_key: &SecretKey) -> (Box<[u64; 256]>, Box<[u64; 256]>) {
    let k = chain_key.derive(context::CHUNKER);
    let mut xof = blake3::Hasher::new_keyed(k.expose()).finalize_xof();
    let mut buf = [0u8; 256 * 8];
    xof.fill(&mut buf);
    let mut gear = Box::new([0u64; 256]);
    let mut gear_ls = Box::new([0u64; 256]);
    for i in 0..256 {
        gear[i] = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        gear_ls[i] = gear[i] << 1;
    }
    buf.zeroize();
    (gear, gear_ls)
}

/// Seals chunks without storing their nonces (format v2): the nonce of a chunk is the first
/// 12 bytes of `keyed(nonce key, chunk id)`. A point seals each chunk id once (dedup), and
/// the same id always means the same plaintext, so a (key, nonce) pair never carries two
/// different messages; nothing in a pack marks where one sealed chunk ends.
pub struct ChunkSealer {
    cipher: Aes256Gcm,
    nonce_key: [u8; 32],
    sealed: AtomicU64,
}

impl ChunkSealer {
    pub fn new(chunk_key: &SecretKey, nonce_key: &SecretKey) -> Self {
        ChunkSealer {
            cipher: chunk_key.cipher(),
            nonce_key: *nonce_key.expose(),
            sealed: AtomicU64::new(0),
        }
    }

    /// How many chunks this sealer has sealed.
    pub fn sealed_count(&self) -> u64 {
        self.sealed.load(Ordering::Relaxed)
    }

    pub fn nonce(&self, chunk_id: &[u8; 32]) -> [u8; NONCE_LEN] {
        let h = blake3::keyed_hash(&self.nonce_key, chunk_id);
        h.as_bytes()[..NONCE_LEN].try_into().expect("12 bytes")
    }

    /// `ciphertext || tag` (no nonce).
    pub fn seal(&self, chunk_id: &[u8; 32], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        self.sealed.fetch_add(1, Ordering::Relaxed);
        let n = self.nonce(chunk_id);
        self.cipher
            .encrypt(&Nonce::from(n), Payload { msg: pt, aad })
            .expect("AES-GCM encryption cannot fail for inputs below 64 GiB")
    }

    /// [`ChunkSealer::seal`] in place: `buf` (the plaintext) becomes `ciphertext || tag`.
    pub fn seal_in_place(&self, chunk_id: &[u8; 32], aad: &[u8], buf: &mut Vec<u8>) {
        self.sealed.fetch_add(1, Ordering::Relaxed);
        let n = self.nonce(chunk_id);
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(n), aad, buf.as_mut_slice().into())
            .expect("AES-GCM encryption cannot fail for inputs below 64 GiB");
        buf.extend_from_slice(&tag);
    }

    pub fn open(
        &self,
        chunk_id: &[u8; 32],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < TAG_LEN {
            return Err(CryptoError::Malformed("sealed chunk shorter than its tag"));
        }
        let n = self.nonce(chunk_id);
        self.cipher
            .decrypt(&Nonce::from(n), Payload { msg: sealed, aad })
            .map_err(|_| CryptoError::Tampered)
    }

    /// [`ChunkSealer::open`] where the sealed chunk lies: `sealed` becomes the plaintext.
    pub fn open_in_place(
        &self,
        chunk_id: &[u8; 32],
        aad: &[u8],
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>, CryptoError> {
        self.open_in_buf(chunk_id, aad, &mut sealed)?;
        Ok(sealed)
    }

    /// [`ChunkSealer::open_in_place`] in a buffer the caller keeps: on success `sealed` holds
    /// the plaintext; on failure its contents are unspecified (never to be used).
    pub fn open_in_buf(
        &self,
        chunk_id: &[u8; 32],
        aad: &[u8],
        sealed: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let Some(tag_at) = sealed.len().checked_sub(TAG_LEN) else {
            return Err(CryptoError::Malformed("sealed chunk shorter than its tag"));
        };
        let n = self.nonce(chunk_id);
        let (ct, tag) = sealed.split_at_mut(tag_at);
        let tag =
            aes_gcm::Tag::try_from(&tag[..]).map_err(|_| CryptoError::Malformed("tag length"))?;
        self.cipher
            .decrypt_inout_detached(&Nonce::from(n), aad, ct.into(), &tag)
            .map_err(|_| CryptoError::Tampered)?;
        sealed.truncate(tag_at);
        Ok(())
    }
}

impl Drop for ChunkSealer {
    fn drop(&mut self) {
        self.nonce_key.zeroize();
    }
}

/// Unwraps: [`CryptoError::WrongKey`] if `kek` is not the wrapping key (or the envelope was
/// moved to another place), [`CryptoError::Tampered`] if the ciphertext was modified.
pub fn unwrap_key(kek: &SecretKey, w: &WrappedKey, aad: &[u8]) -> Result<SecretKey, CryptoError> {
    // blake3::Hash equality is constant-time.
    if commitment(kek, aad) != blake3::Hash::from_bytes(w.commitment) {
        return Err(CryptoError::WrongKey);
    }
    if w.ciphertext.len() != KEY_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("wrapped key has the wrong length"));
    }
    let wk = kek.derive(context::WRAP);
    let mut pt = wk
        .cipher()
        .decrypt(
            &Nonce::from(w.nonce),
            Payload {
                msg: &w.ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Tampered)?;
    let k = SecretKey::from_slice(&pt);
    pt.zeroize();
    k
}

/// Seals objects under one key with counter nonces: nonce = 0x00000000 || counter (u64 BE).
///
/// Only ever used with keys derived from a single-use data key, so a nonce never repeats
/// under one key: the counter is atomic and the key is never used by another `Sealer`.
pub struct Sealer {
    cipher: Aes256Gcm,
    counter: AtomicU64,
}

impl Sealer {
    pub fn new(key: &SecretKey) -> Self {
        Sealer {
            cipher: key.cipher(),
            counter: AtomicU64::new(0),
        }
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        assert!(n < u64::MAX, "nonce counter exhausted");
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        seal_raw(&self.cipher, nonce, aad, plaintext)
    }

    /// How many objects this sealer has sealed.
    pub fn sealed_count(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// [`Sealer::seal`] without a second buffer: `buf` is `NONCE_LEN` bytes of room followed
    /// by the plaintext, and becomes `nonce || ciphertext || tag` (for large objects such as
    /// the index of a point with millions of chunks).
    pub fn seal_in_place(&self, aad: &[u8], mut buf: Vec<u8>) -> Vec<u8> {
        assert!(buf.len() >= NONCE_LEN, "no room for the nonce");
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        assert!(n < u64::MAX, "nonce counter exhausted");
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(nonce), aad, (&mut buf[NONCE_LEN..]).into())
            .expect("AES-GCM encryption cannot fail for inputs below 64 GiB");
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        buf.extend_from_slice(&tag);
        buf
    }
}

fn seal_raw(cipher: &Aes256Gcm, nonce: [u8; NONCE_LEN], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NONCE_LEN + pt.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    let ct = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: pt, aad })
        .expect("AES-GCM encryption cannot fail for inputs below 64 GiB");
    out.extend_from_slice(&ct);
    out
}

/// Deterministic seal for test vectors only.
#[doc(hidden)]
pub fn seal_with_nonce(key: &SecretKey, nonce: [u8; NONCE_LEN], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    seal_raw(&key.cipher(), nonce, aad, pt)
}

/// A configuration bundle sealed under a passphrase (docs/FORMAT.md §9): the Argon2id hash
/// of the bundle passphrase commits to `header` (so a wrong passphrase reads as "wrong",
/// not "modified") and seals `payload` with AES-256-GCM, `header` as associated data.
/// Returns (commitment, nonce || ciphertext || tag).
pub fn seal_bundle(hash: &SecretKey, header: &[u8], payload: &[u8]) -> ([u8; 32], Vec<u8>) {
    seal_bundle_with_nonce(hash, header, payload, random_bytes())
}

/// Deterministic form of [`seal_bundle`], for test vectors only.
#[doc(hidden)]
pub fn seal_bundle_with_nonce(
    hash: &SecretKey,
    header: &[u8],
    payload: &[u8],
    nonce: [u8; NONCE_LEN],
) -> ([u8; 32], Vec<u8>) {
    let c = *commitment(hash, header).as_bytes();
    (
        c,
        seal_raw(
            &hash.derive(context::BUNDLE).cipher(),
            nonce,
            header,
            payload,
        ),
    )
}

/// Opens what [`seal_bundle`] sealed: `WrongKey` for another passphrase, `Tampered` if the
/// header or the ciphertext was changed.
pub fn open_bundle(
    hash: &SecretKey,
    header: &[u8],
    commit: &[u8],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    let commit: [u8; 32] = commit
        .try_into()
        .map_err(|_| CryptoError::Malformed("commitment must be 32 bytes"))?;
    // blake3::Hash compares in constant time.
    if commitment(hash, header) != commit {
        return Err(CryptoError::WrongKey);
    }
    open(&hash.derive(context::BUNDLE), header, sealed).map(zeroize::Zeroizing::new)
}

/// A reusable opener for one key.
pub struct Opener {
    cipher: Aes256Gcm,
}

impl Opener {
    pub fn new(key: &SecretKey) -> Self {
        Opener {
            cipher: key.cipher(),
        }
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Malformed(
                "sealed object shorter than nonce and tag",
            ));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(&nonce_of(nonce)?, Payload { msg: ct, aad })
            .map_err(|_| CryptoError::Tampered)
    }
}

/// [`open`] without a second buffer: decrypts `sealed` where it lies and returns it as the
/// plaintext (for large objects).
pub fn open_in_place(
    key: &SecretKey,
    aad: &[u8],
    mut sealed: Vec<u8>,
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(CryptoError::Malformed(
            "sealed object shorter than nonce and tag",
        ));
    }
    let tag_at = sealed.len() - TAG_LEN;
    let (head, tag) = sealed.split_at_mut(tag_at);
    let (nonce, ct) = head.split_at_mut(NONCE_LEN);
    key.cipher()
        .decrypt_inout_detached(
            &nonce_of(nonce)?,
            aad,
            ct.into(),
            &aes_gcm::Tag::try_from(&tag[..]).map_err(|_| CryptoError::Malformed("tag length"))?,
        )
        .map_err(|_| CryptoError::Tampered)?;
    sealed.truncate(tag_at);
    sealed.drain(..NONCE_LEN);
    Ok(sealed)
}

fn nonce_of(b: &[u8]) -> Result<aes_gcm::aead::Nonce<Aes256Gcm>, CryptoError> {
    aes_gcm::aead::Nonce::<Aes256Gcm>::try_from(b)
        .map_err(|_| CryptoError::Malformed("nonce length"))
}

/// One-shot [`Opener::open`].
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    Opener::new(key).open(aad, sealed)
}

/// Seals a small secret with a random nonce (for keys reused across many objects, e.g. the
/// catalog's sealing key).
pub fn seal_random_nonce(key: &SecretKey, aad: &[u8], pt: &[u8]) -> Vec<u8> {
    seal_raw(&key.cipher(), random_bytes(), aad, pt)
}

/// Chunk ids: keyed BLAKE3 of the plaintext under a chain-specific key, so that someone
/// without the key cannot confirm a guess of the content.
pub struct ChunkIdKey([u8; 32]);

impl ChunkIdKey {
    pub fn from_chain_key(chain_key: &SecretKey) -> Self {
        ChunkIdKey(*chain_key.derive(context::CHUNK_ID).expose())
    }

    pub fn id(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, data).as_bytes()
    }
}

impl Drop for ChunkIdKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ChunkIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkIdKey([redacted])")
    }
}

/// Unkeyed BLAKE3, for naming pack files by their content.
pub fn content_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Incremental unkeyed BLAKE3.
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    pub fn new() -> Self {
        ContentHasher(blake3::Hasher::new())
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finalize(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

impl Default for ContentHasher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_place_seal_and_open_match_the_copying_ones() {
        let key = SecretKey::random();
        let pt: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let copied = Sealer::new(&key).seal(b"aad", &pt);
        let mut buf = vec![0u8; NONCE_LEN];
        buf.extend_from_slice(&pt);
        let in_place = Sealer::new(&key).seal_in_place(b"aad", buf);
        assert_eq!(copied, in_place);
        assert_eq!(open_in_place(&key, b"aad", in_place.clone()).unwrap(), pt);
        assert!(open_in_place(&key, b"other", in_place.clone()).is_err());
        let mut bad = in_place;
        bad[NONCE_LEN + 5] ^= 1;
        assert!(open_in_place(&key, b"aad", bad).is_err());
        assert!(open_in_place(&key, b"aad", vec![0; SEAL_OVERHEAD - 1]).is_err());
    }

    #[test]
    fn wrap_roundtrip_and_wrong_key() {
        let kek = SecretKey::random();
        let key = SecretKey::random();
        let a = aad("test", &[b"place-1"]);
        let w = wrap_key(&kek, &key, &a);
        let back = unwrap_key(&kek, &w, &a).unwrap();
        assert_eq!(back.expose(), key.expose());
        assert_eq!(
            unwrap_key(&SecretKey::random(), &w, &a).unwrap_err(),
            CryptoError::WrongKey
        );
        // Moved to another place: the commitment binds the associated data too.
        let b = aad("test", &[b"place-2"]);
        assert_eq!(unwrap_key(&kek, &w, &b).unwrap_err(), CryptoError::WrongKey);
    }

    #[test]
    fn tampered_wrap_is_not_wrong_key() {
        let kek = SecretKey::random();
        let key = SecretKey::random();
        let a = aad("t", &[]);
        let mut w = wrap_key(&kek, &key, &a);
        w.ciphertext[3] ^= 1;
        assert_eq!(unwrap_key(&kek, &w, &a).unwrap_err(), CryptoError::Tampered);
    }

    #[test]
    fn sealer_nonces_never_repeat() {
        let k = SecretKey::random();
        let s = Sealer::new(&k);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let c = s.seal(b"x", b"same plaintext");
            assert!(seen.insert(c[..NONCE_LEN].to_vec()), "nonce repeated");
        }
        assert_eq!(s.sealed_count(), 1000);
    }

    #[test]
    fn open_rejects_wrong_aad_and_flips() {
        let k = SecretKey::random();
        let s = Sealer::new(&k);
        let c = s.seal(b"here", b"payload");
        assert_eq!(open(&k, b"here", &c).unwrap(), b"payload");
        assert_eq!(open(&k, b"there", &c).unwrap_err(), CryptoError::Tampered);
        for i in 0..c.len() {
            let mut d = c.clone();
            d[i] ^= 0x80;
            assert!(open(&k, b"here", &d).is_err(), "flip at {i} not detected");
        }
        assert!(matches!(
            open(&k, b"here", &c[..10]),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn debug_is_redacted() {
        let k = SecretKey::from_slice(&[0x41; 32]).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("41") && !s.contains("65"), "{s}");
        let p = Passphrase::new("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn password_hash_depends_on_salt_and_passphrase() {
        let p = KdfParams::INSECURE_TEST;
        let a = derive_password_hash(&Passphrase::new("a".into()), &[1; 16], &p).unwrap();
        let b = derive_password_hash(&Passphrase::new("a".into()), &[2; 16], &p).unwrap();
        let c = derive_password_hash(&Passphrase::new("b".into()), &[1; 16], &p).unwrap();
        let a2 = derive_password_hash(&Passphrase::new("a".into()), &[1; 16], &p).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
        assert_eq!(a.expose(), a2.expose());
    }

    #[test]
    fn kdf_params_limits() {
        assert!(KdfParams {
            m_kib: 1,
            t: 1,
            p: 1
        }
        .validate()
        .is_err());
        assert!(KdfParams {
            m_kib: u32::MAX,
            t: 1,
            p: 1
        }
        .validate()
        .is_err());
        assert!(KdfParams::DEFAULT.validate().is_ok());
    }

    #[test]
    fn bound_wrap_tells_wrong_key_from_edited_fields() {
        let kek = SecretKey::random();
        let key = SecretKey::random();
        let w = wrap_key_bound(&kek, &key, b"place", b"kdf m=1");
        assert_eq!(
            unwrap_key_bound(&kek, &w, b"place", b"kdf m=1")
                .unwrap()
                .expose(),
            key.expose()
        );
        assert_eq!(
            unwrap_key_bound(&kek, &w, b"place", b"kdf m=9").unwrap_err(),
            CryptoError::Tampered
        );
        assert_eq!(
            unwrap_key_bound(&SecretKey::random(), &w, b"place", b"kdf m=1").unwrap_err(),
            CryptoError::WrongKey
        );
        // Empty bound is exactly the v1 wrapping.
        let v1 = wrap_key_with_nonce(&kek, &key, b"place", [3; 12]);
        assert_eq!(
            wrap_key_bound_with_nonce(&kek, &key, b"place", b"", [3; 12]),
            v1
        );
    }

    #[test]
    fn chunk_sealer_nonces_follow_ids_and_keys() {
        let (a, b) = (SecretKey::random(), SecretKey::random());
        let s = ChunkSealer::new(&a, &b);
        let c = s.seal(&[1; 32], b"aad", b"hello");
        assert_eq!(c.len(), 5 + TAG_LEN);
        assert_eq!(s.open(&[1; 32], b"aad", &c).unwrap(), b"hello");
        assert!(s.open(&[2; 32], b"aad", &c).is_err());
        assert!(s.open(&[1; 32], b"other", &c).is_err());
        // In place: the same plaintext, the same refusals.
        assert_eq!(
            s.open_in_place(&[1; 32], b"aad", c.clone()).unwrap(),
            b"hello"
        );
        assert!(matches!(
            s.open_in_place(&[2; 32], b"aad", c.clone()),
            Err(CryptoError::Tampered)
        ));
        let mut flipped = c.clone();
        flipped[0] ^= 1;
        assert!(matches!(
            s.open_in_place(&[1; 32], b"aad", flipped),
            Err(CryptoError::Tampered)
        ));
        assert!(matches!(
            s.open_in_place(&[1; 32], b"aad", c[..TAG_LEN - 1].to_vec()),
            Err(CryptoError::Malformed(_))
        ));
        assert_ne!(s.nonce(&[1; 32]), s.nonce(&[2; 32]));
        assert_ne!(
            s.nonce(&[1; 32]),
            ChunkSealer::new(&a, &SecretKey::random()).nonce(&[1; 32])
        );
    }

    #[test]
    fn gear_tables_are_keyed() {
        let k = SecretKey::random();
        let (g1, l1) = gear_tables(&k);
        let (g2, _) = gear_tables(&SecretKey::random());
        assert_ne!(g1, g2);
        assert_eq!(g1, gear_tables(&k).0);
        assert_eq!(l1[5], g1[5] << 1);
    }

    #[test]
    fn kdf_cap() {
        assert!(KdfParams::DEFAULT.check_cap(false).is_ok());
        let big = KdfParams {
            m_kib: 4 * 1024 * 1024,
            t: 3,
            p: 2,
        };
        assert!(big.check_cap(false).is_err());
        assert!(big.check_cap(true).is_ok());
        let slow = KdfParams {
            m_kib: 65536,
            t: 13,
            p: 2,
        };
        assert!(slow.check_cap(false).is_err());
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let k1 = ChunkIdKey::from_chain_key(&SecretKey::random());
        let k2 = ChunkIdKey::from_chain_key(&SecretKey::random());
        assert_ne!(k1.id(b"data"), k2.id(b"data"));
        assert_ne!(k1.id(b"data"), content_hash(b"data"));
        assert_eq!(k1.id(b"data"), k1.id(b"data"));
    }

    proptest! {
        #[test]
        fn seal_open_roundtrip(pt in proptest::collection::vec(any::<u8>(), 0..4096),
                               a in proptest::collection::vec(any::<u8>(), 0..64)) {
            let k = SecretKey::random();
            let s = Sealer::new(&k);
            let c = s.seal(&a, &pt);
            prop_assert_eq!(c.len(), pt.len() + SEAL_OVERHEAD);
            prop_assert_eq!(open(&k, &a, &c).unwrap(), pt);
        }
    }
}
