//! Format objects: each one's serializer and parser side by side. docs/FORMAT.md is the spec.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, KdfParams, WrappedKey, NONCE_LEN};

/// The format this arca writes. It reads version 1 (arca 0.1) too.
pub const FORMAT_VERSION: u32 = 2;
/// The format of arca 0.1: its metadata is not authenticated (`arca migrate` upgrades it).
pub const FORMAT_V1: u32 = 1;

/// AAD labels (docs/FORMAT.md, "Associated data").
pub mod label {
    pub const KEYSLOT: &str = "arca-keyslot-v1";
    pub const DATA_KEY: &str = "arca-data-key-v1";
    pub const POINT_BODY: &str = "arca-point-body-v1";
    pub const CHUNK: &str = "arca-chunk-v1";
    pub const PACK_HEADER: &str = "arca-pack-header-v1";
    pub const INDEX: &str = "arca-index-v1";
    pub const ESCROW: &str = "arca-escrow-v1";
    pub const KEYSLOT2: &str = "arca-keyslot-v2";
    pub const DATA_KEY2: &str = "arca-data-key-v2";
    pub const POINT_BODY2: &str = "arca-point-body-v2";
    pub const CHUNK2: &str = "arca-chunk-v2";
    pub const PACK_HEADER2: &str = "arca-pack-header-v2";
    pub const INDEX2: &str = "arca-index-v2";
    pub const ESCROW2: &str = "arca-escrow-v2";
    pub const CHAIN_RECORD2: &str = "arca-chain-v2";
    pub const JOB_RECORD2: &str = "arca-job-v2";
    pub const POINT_RECORD2: &str = "arca-point-v2";
    pub const GENERATION2: &str = "arca-generation-v2";
}

/// Canonical binary encoding of the public fields an object's MAC or associated data covers
/// (docs/FORMAT.md §3.2): fixed-length ids raw, integers little-endian, and every
/// variable-length field as `u32 LE length || bytes`, so no two field lists encode alike.
#[derive(Default)]
pub struct Canon(pub Vec<u8>);

impl Canon {
    pub fn new(label: &str) -> Self {
        let mut c = Canon(Vec::new());
        c.lp(label.as_bytes());
        c
    }
    pub fn lp(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    /// `0x00`, or `0x01 || id`.
    pub fn opt_id(&mut self, id: Option<&Id16>) -> &mut Self {
        match id {
            None => self.raw(&[0]),
            Some(i) => self.raw(&[1]).raw(&i.0),
        }
    }
    pub fn kdf(&mut self, k: &KdfRecord) -> &mut Self {
        self.lp(k.password.as_bytes())
            .lp(k.algorithm.as_bytes())
            .lp(&k.salt)
            .u32(k.m_kib)
            .u32(k.t)
            .u32(k.p)
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn perr<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// A 16-byte random identifier (repository, job, chain, point, keyslot), hex on disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id16(pub [u8; 16]);

impl Id16 {
    pub fn random() -> Self {
        Id16(crypto::random_bytes())
    }
    pub fn hex(&self) -> String {
        hex_string(&self.0)
    }
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| ParseError(format!("bad id {s:?}")))?;
        Ok(Id16(b))
    }
    pub fn short(&self) -> String {
        self.hex()[..8].to_string()
    }
}

impl fmt::Debug for Id16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Display for Id16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// Lower-case hex of `b`, written into `buf` (twice as long): ids are encoded and parsed
/// millions of times in a file index, without an allocation each.
fn hex_into<'a>(b: &[u8], buf: &'a mut [u8]) -> &'a str {
    let out = &mut buf[..2 * b.len()];
    hex::encode_to_slice(b, out).expect("buffer twice as long");
    std::str::from_utf8(out).expect("hex is ASCII")
}

fn hex_string(b: &[u8]) -> String {
    hex_into(b, &mut [0u8; 64]).to_string()
}

/// Parses exactly `2 * N` hex digits (either case), as a string field of a document.
struct HexId<const N: usize>;

impl<const N: usize> serde::de::Visitor<'_> for HexId<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an id of {} hex digits", 2 * N)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<[u8; N], E> {
        let mut b = [0u8; N];
        hex::decode_to_slice(s, &mut b).map_err(|_| E::custom(format!("bad id {s:?}")))?;
        Ok(b)
    }
}

impl Serialize for Id16 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hex_into(&self.0, &mut [0u8; 32]))
    }
}

impl<'de> Deserialize<'de> for Id16 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(HexId::<16>).map(Id16)
    }
}

/// A 32-byte chunk or pack id, hex on disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id32(pub [u8; 32]);

impl Id32 {
    pub fn hex(&self) -> String {
        hex_string(&self.0)
    }
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|_| ParseError(format!("bad id {s:?}")))?;
        Ok(Id32(b))
    }
}

impl fmt::Debug for Id32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Display for Id32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for Id32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hex_into(&self.0, &mut [0u8; 64]))
    }
}

impl<'de> Deserialize<'de> for Id32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(HexId::<32>).map(Id32)
    }
}

/// Base64 (standard, padded) for byte fields in JSON objects.
pub mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }
    pub fn decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(s.trim())
    }
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).map_err(serde::de::Error::custom)
    }
}

/// `repository/config`: plaintext, written once by `arca init`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub repo_id: Id16,
    pub created: String,
    /// v2: new files 0640 and directories 0750 (a repository shared with a group) instead
    /// of 0600/0700.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group_readable: bool,
    /// S3 repositories: every object written is retained this long by S3 Object Lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<super::store::ObjectLock>,
}

impl RepoConfig {
    pub const KIND: &'static str = "arca-repository";
}

/// How a chain's key is protected. Fixed for the life of a chain.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    Passphrase,
    Key,
    Kms,
    Kmip,
    None,
}

impl EncryptionMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            EncryptionMode::Passphrase => "passphrase",
            EncryptionMode::Key => "key",
            EncryptionMode::Kms => "kms",
            EncryptionMode::Kmip => "kmip",
            EncryptionMode::None => "none",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passphrase" => Some(Self::Passphrase),
            "key" => Some(Self::Key),
            "kms" => Some(Self::Kms),
            "kmip" => Some(Self::Kmip),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// `repository/jobs/<job_id>.json`: the job definition, so a reinstall can find its jobs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub repo_id: Id16,
    pub job_id: Id16,
    pub name: String,
    pub source: String,
    pub created: String,
    /// The chain new recovery points go into.
    pub chain_id: Id16,
    /// v2: every chain the job has written to, oldest first (the last is `chain_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chains: Vec<Id16>,
    /// v2: incremented at every change; the catalog pins the highest seen.
    #[serde(default)]
    pub revision: u64,
    /// v2: MAC of [`JobRecord::mac_input`] under `derive(key of chain_id, JOB_MAC)`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub mac: Option<Vec<u8>>,
}

impl JobRecord {
    pub const KIND: &'static str = "arca-job";

    /// The canonical bytes the job record's MAC covers.
    pub fn mac_input(&self) -> Vec<u8> {
        let mut c = Canon::new(label::JOB_RECORD2);
        c.raw(&self.repo_id.0)
            .raw(&self.job_id.0)
            .lp(self.name.as_bytes())
            .lp(self.source.as_bytes())
            .lp(self.created.as_bytes())
            .raw(&self.chain_id.0)
            .u32(self.chains.len() as u32);
        for ch in &self.chains {
            c.raw(&ch.0);
        }
        c.u64(self.revision);
        c.finish()
    }

    /// Sets the MAC (v2) under the key of the chain it names.
    pub fn seal(&mut self, chain_key: &crypto::SecretKey) {
        self.version = FORMAT_VERSION;
        if !self.chains.contains(&self.chain_id) {
            self.chains.push(self.chain_id);
        }
        self.mac =
            Some(crypto::mac(chain_key, crypto::context::JOB_MAC, &self.mac_input()).to_vec());
    }

    /// True when the MAC is valid under the key of `chain_id`.
    pub fn verify(&self, chain_key: &crypto::SecretKey) -> bool {
        self.mac.as_deref().is_some_and(|m| {
            crypto::verify_mac(chain_key, crypto::context::JOB_MAC, &self.mac_input(), m)
        })
    }

    /// Every chain of the job (v1 records name only the current one).
    pub fn all_chains(&self) -> Vec<Id16> {
        let mut v = self.chains.clone();
        if !v.contains(&self.chain_id) {
            v.push(self.chain_id);
        }
        v
    }
}

/// The JSON form of a [`WrappedKey`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrappedKeyJson {
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    #[serde(with = "b64")]
    pub commitment: Vec<u8>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

impl From<&WrappedKey> for WrappedKeyJson {
    fn from(w: &WrappedKey) -> Self {
        WrappedKeyJson {
            nonce: w.nonce.to_vec(),
            commitment: w.commitment.to_vec(),
            ciphertext: w.ciphertext.clone(),
        }
    }
}

impl TryFrom<&WrappedKeyJson> for WrappedKey {
    type Error = ParseError;
    fn try_from(j: &WrappedKeyJson) -> Result<Self, ParseError> {
        let nonce: [u8; NONCE_LEN] = j
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| ParseError("nonce must be 12 bytes".into()))?;
        let commitment: [u8; 32] = j
            .commitment
            .as_slice()
            .try_into()
            .map_err(|_| ParseError("commitment must be 32 bytes".into()))?;
        if j.ciphertext.len() != 48 {
            return perr("wrapped key ciphertext must be 48 bytes");
        }
        Ok(WrappedKey {
            nonce,
            commitment,
            ciphertext: j.ciphertext.clone(),
        })
    }
}

/// Salt and parameters of a password (recorded in keyslots and in every recovery point).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfRecord {
    /// The password's name in the password manager.
    pub password: String,
    pub algorithm: String,
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl KdfRecord {
    pub const ARGON2ID: &'static str = "argon2id-v19";

    pub fn params(&self) -> KdfParams {
        KdfParams {
            m_kib: self.m_kib,
            t: self.t,
            p: self.p,
        }
    }
}

/// Provider-specific, public parameters of an envelope.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum SlotParams {
    /// Wrapped by the password hash.
    Passphrase { kdf: KdfRecord },
    /// Wrapped by a raw 32-byte key; `fingerprint` names it without revealing it.
    Raw { fingerprint: String },
    /// Encrypted by AWS KMS under `key_arn` with the chain-key encryption context;
    /// `key_check` commits to the chain key.
    Kms {
        key_arn: String,
        #[serde(with = "b64")]
        ciphertext: Vec<u8>,
        #[serde(with = "b64")]
        key_check: Vec<u8>,
    },
    /// Wrapped (AES-256-GCM with commitment) by an AES-256 key kept on a KMIP server.
    Kmip {
        server: String,
        key_uid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_name: Option<String>,
    },
    /// Encrypted by the KMIP server itself (KMIP Encrypt, AES-256-GCM, associated data =
    /// the keyslot's place and bound): the key never leaves the key manager. `ciphertext` is
    /// ciphertext || tag; `key_check` commits to the chain key, as for KMS.
    #[serde(rename = "kmip-encrypt")]
    KmipEncrypt {
        server: String,
        key_uid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_name: Option<String>,
        #[serde(with = "b64")]
        iv: Vec<u8>,
        #[serde(with = "b64")]
        ciphertext: Vec<u8>,
        #[serde(with = "b64")]
        key_check: Vec<u8>,
    },
    /// No encryption: the chain key is stored in clear.
    None {
        #[serde(with = "b64")]
        chain_key: Vec<u8>,
    },
}

impl SlotParams {
    /// The KMIP key uid of a KMIP keyslot (either mode).
    pub fn kmip_uid(&self) -> Option<&str> {
        match self {
            SlotParams::Kmip { key_uid, .. } | SlotParams::KmipEncrypt { key_uid, .. } => {
                Some(key_uid)
            }
            _ => None,
        }
    }

    /// v2: the public fields a keyslot's wrapping authenticates (FORMAT.md §5.3).
    pub fn bound(&self) -> Vec<u8> {
        let mut c = Canon::default();
        c.lp(self.provider().as_bytes());
        match self {
            SlotParams::Passphrase { kdf } => {
                c.kdf(kdf);
            }
            SlotParams::Raw { fingerprint } => {
                c.lp(fingerprint.as_bytes());
            }
            SlotParams::Kms { key_arn, .. } => {
                c.lp(key_arn.as_bytes());
            }
            SlotParams::Kmip {
                server,
                key_uid,
                key_name,
            }
            | SlotParams::KmipEncrypt {
                server,
                key_uid,
                key_name,
                ..
            } => {
                c.lp(server.as_bytes())
                    .lp(key_uid.as_bytes())
                    .lp(key_name.as_deref().unwrap_or("").as_bytes());
            }
            SlotParams::None { .. } => {}
        }
        c.finish()
    }

    /// Every byte of the slot's parameters (for the chain MAC).
    fn canonical_all(&self) -> Vec<u8> {
        let mut c = Canon::default();
        c.lp(&self.bound());
        match self {
            SlotParams::Kms {
                ciphertext,
                key_check,
                ..
            } => {
                c.lp(ciphertext).lp(key_check);
            }
            SlotParams::KmipEncrypt {
                iv,
                ciphertext,
                key_check,
                ..
            } => {
                c.lp(iv).lp(ciphertext).lp(key_check);
            }
            SlotParams::None { chain_key } => {
                c.lp(chain_key);
            }
            _ => {}
        }
        c.finish()
    }

    pub fn provider(&self) -> &'static str {
        match self {
            SlotParams::Passphrase { .. } => "passphrase",
            SlotParams::Raw { .. } => "raw",
            SlotParams::Kms { .. } => "kms",
            SlotParams::Kmip { .. } => "kmip",
            SlotParams::KmipEncrypt { .. } => "kmip-encrypt",
            SlotParams::None { .. } => "none",
        }
    }
}

/// One envelope (keyslot): one wrapping of the chain key by one provider.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Keyslot {
    pub slot_id: Id16,
    pub created: String,
    /// 2: the wrapping authenticates the slot's public parameters (v2 label). Absent: a
    /// keyslot made by arca 0.1 and kept by `arca migrate` (v1 wrapping; the chain MAC
    /// covers it all the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u32>,
    #[serde(flatten)]
    pub params: SlotParams,
    /// Absent for provider "none".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped: Option<WrappedKeyJson>,
}

impl Keyslot {
    fn canonical(&self) -> Vec<u8> {
        let mut c = Canon::default();
        c.raw(&self.slot_id.0)
            .lp(self.created.as_bytes())
            .u32(self.format.unwrap_or(1))
            .lp(&self.params.canonical_all());
        match &self.wrapped {
            Some(w) => c.raw(&[1]).lp(&w.nonce).lp(&w.commitment).lp(&w.ciphertext),
            None => c.raw(&[0]),
        };
        c.finish()
    }
}

/// `repository/chains/<chain_id>.json`: a chain's encryption settings and envelopes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChainRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub repo_id: Id16,
    pub job_id: Id16,
    pub chain_id: Id16,
    pub created: String,
    pub encryption: EncryptionMode,
    pub keyslots: Vec<Keyslot>,
    /// v2: incremented at every change of the keyslot list; the catalog pins the highest seen.
    #[serde(default)]
    pub revision: u64,
    /// v2: "keyed-gear" when chunk boundaries come from a gear table keyed with the chain
    /// key; absent for chains made by arca 0.1 (fastcdc's public table, kept so that
    /// deduplication continues after `arca migrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunker: Option<String>,
    /// v2: the current key generation (absent: 1, the chain's first key). The keyslots wrap
    /// the current generation key; new points' data keys are wrapped under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// v2: every earlier generation (1 .. generation-1), its key wrapped under the current
    /// generation key, with the points written under it (a point claiming a retired
    /// generation must be listed here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredGeneration>,
    /// v2: MAC of [`ChainRecord::mac_input`] under `derive(current generation key,
    /// CHAIN_MAC)`: nobody without it can add, remove, swap or edit a keyslot, the mode or a
    /// generation.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub mac: Option<Vec<u8>>,
}

impl ChainRecord {
    pub const KIND: &'static str = "arca-chain";
    pub const KEYED_GEAR: &'static str = "keyed-gear";

    /// The canonical bytes the chain record's MAC covers.
    pub fn mac_input(&self) -> Vec<u8> {
        let mut c = Canon::new(label::CHAIN_RECORD2);
        c.raw(&self.repo_id.0)
            .raw(&self.job_id.0)
            .raw(&self.chain_id.0)
            .lp(self.created.as_bytes())
            .lp(self.encryption.as_str().as_bytes())
            .lp(self.chunker.as_deref().unwrap_or("").as_bytes())
            .u64(self.revision)
            .u32(self.keyslots.len() as u32);
        for k in &self.keyslots {
            c.lp(&k.canonical());
        }
        // Chains that never rotated (no generation field) keep their 0.2 MAC input.
        if let Some(g) = self.generation {
            c.u32(g).u32(self.retired.len() as u32);
            for r in &self.retired {
                c.u32(r.generation)
                    .lp(r.retired.as_bytes())
                    .lp(&r.wrapped.nonce)
                    .lp(&r.wrapped.commitment)
                    .lp(&r.wrapped.ciphertext)
                    .u32(r.points.len() as u32);
                for p in &r.points {
                    c.raw(&p.0);
                }
            }
        }
        c.finish()
    }

    /// The salt record a new point of this chain stores: password `want`'s keyslot, else the
    /// first passphrase keyslot, else none.
    pub fn point_kdf(&self, want: Option<&str>) -> Option<KdfRecord> {
        let slots: Vec<&KdfRecord> = self
            .keyslots
            .iter()
            .filter_map(|s| match &s.params {
                SlotParams::Passphrase { kdf } => Some(kdf),
                _ => None,
            })
            .collect();
        slots
            .iter()
            .find(|k| Some(k.password.as_str()) == want)
            .or(slots.first())
            .map(|k| (*k).clone())
    }

    /// The current key generation (1 for a chain that never rotated).
    pub fn current_generation(&self) -> u32 {
        self.generation.unwrap_or(1)
    }

    /// The place a retired generation's key is bound to when wrapped under the current one.
    pub fn generation_aad(&self, generation: u32) -> Vec<u8> {
        crypto::aad(
            label::GENERATION2,
            &[
                &self.repo_id.0,
                &self.job_id.0,
                &self.chain_id.0,
                &generation.to_be_bytes(),
                &self.current_generation().to_be_bytes(),
            ],
        )
    }

    /// Sets the MAC (v2) under the chain key.
    pub fn seal(&mut self, chain_key: &crypto::SecretKey) {
        self.version = FORMAT_VERSION;
        self.mac =
            Some(crypto::mac(chain_key, crypto::context::CHAIN_MAC, &self.mac_input()).to_vec());
    }

    /// True when the MAC is valid under `chain_key` (v2 records).
    pub fn verify(&self, chain_key: &crypto::SecretKey) -> bool {
        self.mac.as_deref().is_some_and(|m| {
            crypto::verify_mac(chain_key, crypto::context::CHAIN_MAC, &self.mac_input(), m)
        })
    }
}

/// A key generation a rotation or rekey retired: its key, wrapped under the chain's current
/// generation key, stays so that its points remain readable.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetiredGeneration {
    pub generation: u32,
    /// When it was retired (RFC 3339).
    pub retired: String,
    /// Its key, wrapped under the current generation key at [`ChainRecord::generation_aad`].
    pub wrapped: WrappedKeyJson,
    /// The points written under it, sorted (nothing can be written under it any more).
    pub points: Vec<Id16>,
}

/// `repository/escrow/<job_id>.<password>.json`: a password hash encrypted by a KMS, so
/// that a reinstalled product can restore without the passphrase.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EscrowRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub repo_id: Id16,
    pub job_id: Id16,
    pub job: String,
    /// The password, with the salt and parameters its hash was derived with.
    pub kdf: KdfRecord,
    /// "aws-kms" (or "kmip" later).
    pub provider: String,
    pub key_arn: String,
    /// The exact encryption context given to KMS.
    pub context: std::collections::BTreeMap<String, String>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
    /// keyed(derive(password hash, COMMIT), escrow AAD): detects a wrong plaintext.
    #[serde(with = "b64")]
    pub key_check: Vec<u8>,
    pub created: String,
}

impl EscrowRecord {
    pub const KIND: &'static str = "arca-escrow";

    /// v1: `AAD(escrow-v1, repo, job)`; v2 also binds the password's name, salt and
    /// parameters, so a record cannot be renamed onto another password.
    pub fn aad(&self) -> Vec<u8> {
        if self.version < 2 {
            return crypto::aad(label::ESCROW, &[&self.repo_id.0, &self.job_id.0]);
        }
        let mut c = Canon::default();
        c.kdf(&self.kdf);
        crypto::aad(
            label::ESCROW2,
            &[&self.repo_id.0, &self.job_id.0, &c.finish()],
        )
    }

    /// Version-2 records are named by job, password and salt, so the record of a new
    /// password hash can be written before the old one is removed (rotation).
    pub fn file_name(&self) -> String {
        if self.version >= 2 {
            format!(
                "{}.{}.{}.json",
                self.job_id,
                self.kdf.password,
                hex::encode(&self.kdf.salt[..self.kdf.salt.len().min(8)])
            )
        } else {
            Self::legacy_file_name(&self.job_id, &self.kdf.password)
        }
    }

    /// The name arca 0.1 (and 0.2 before rotation records) used: job and password only.
    pub fn legacy_file_name(job_id: &Id16, password: &str) -> String {
        format!("{job_id}.{password}.json")
    }
}

/// The place a recovery point's objects are bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointPlace {
    pub repo_id: Id16,
    pub job_id: Id16,
    pub chain_id: Id16,
    pub point_id: Id16,
    /// The layout of the point's body, index, packs and chunks: 1 (arca 0.1) or 2.
    pub data_format: u32,
}

impl PointPlace {
    fn v2(&self) -> bool {
        self.data_format >= 2
    }
    fn fields(&self) -> [&[u8]; 4] {
        [
            &self.repo_id.0,
            &self.job_id.0,
            &self.chain_id.0,
            &self.point_id.0,
        ]
    }
    /// The data key's place (its commitment covers this; v2 binds more, see
    /// [`PointRecord::bound`]). v1 records use the v1 label, whatever their data format.
    pub fn data_key_aad_v(&self, record_version: u32) -> Vec<u8> {
        let l = if record_version >= 2 {
            label::DATA_KEY2
        } else {
            label::DATA_KEY
        };
        crypto::aad(l, &self.fields())
    }
    pub fn body_aad(&self) -> Vec<u8> {
        let l = if self.v2() {
            label::POINT_BODY2
        } else {
            label::POINT_BODY
        };
        crypto::aad(l, &self.fields())
    }
    pub fn index_aad(&self) -> Vec<u8> {
        let l = if self.v2() {
            label::INDEX2
        } else {
            label::INDEX
        };
        crypto::aad(l, &self.fields())
    }
    pub fn chunk_aad(&self, chunk_id: &Id32) -> Vec<u8> {
        let f = self.fields();
        let l = if self.v2() {
            label::CHUNK2
        } else {
            label::CHUNK
        };
        crypto::aad(l, &[f[0], f[1], f[2], f[3], &chunk_id.0])
    }
    pub fn pack_header_aad(&self) -> Vec<u8> {
        let l = if self.v2() {
            label::PACK_HEADER2
        } else {
            label::PACK_HEADER
        };
        crypto::aad(l, &self.fields())
    }
}

/// `repository/points/<point_id>.json`: one recovery point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PointRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub repo_id: Id16,
    pub job_id: Id16,
    pub job: String,
    pub chain_id: Id16,
    pub point_id: Id16,
    pub time: String,
    #[serde(default)]
    pub parent: Option<Id16>,
    /// Salt and parameters of the password whose hash wraps the chain key (passphrase chains).
    #[serde(default)]
    pub kdf: Option<KdfRecord>,
    /// v2: "tree", or "stdin" (a stream), in clear for listing; authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_kind: Option<String>,
    /// v2: layout of the body, index, packs and chunks (1 for points migrated from arca 0.1).
    #[serde(default = "one")]
    pub data_format: u32,
    /// v2: the chain's key generation whose key wraps `data_key` (absent: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// v2: when `arca forget` removed the point (RFC 3339). A forgotten point is never
    /// listed or restored; its record stays (with an empty body) only while its data key is
    /// needed for chunks that kept points share with it, and `arca prune` removes it after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten: Option<String>,
    /// This point's data key, wrapped under the chain key.
    pub data_key: WrappedKeyJson,
    /// [`PointBody`] as JSON, sealed under the point-body subkey of the data key.
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    /// v2: MAC of [`PointRecord::mac_input`] under `derive(data key, POINT_MAC)`: the public
    /// fields (time, parent, kind, salt record, ...) cannot be changed without the keys.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub mac: Option<Vec<u8>>,
}

fn one() -> u32 {
    1
}

impl PointRecord {
    pub const KIND: &'static str = "arca-point";

    pub fn place(&self) -> PointPlace {
        PointPlace {
            repo_id: self.repo_id,
            job_id: self.job_id,
            chain_id: self.chain_id,
            point_id: self.point_id,
            data_format: self.data_format,
        }
    }

    pub fn data_key_place(&self) -> Vec<u8> {
        self.place().data_key_aad_v(self.version)
    }

    /// v2: the public fields the point's MAC covers: its place, the job's name, the time,
    /// the parent, the kind, the salt record and the data format.
    pub fn mac_input(&self) -> Vec<u8> {
        let mut c = Canon::new(label::POINT_RECORD2);
        c.raw(&self.repo_id.0)
            .raw(&self.job_id.0)
            .raw(&self.chain_id.0)
            .raw(&self.point_id.0)
            .lp(self.job.as_bytes())
            .lp(self.time.as_bytes())
            .opt_id(self.parent.as_ref())
            .lp(self.source_kind.as_deref().unwrap_or("").as_bytes());
        match &self.kdf {
            None => c.raw(&[0]),
            Some(k) => c.raw(&[1]).kdf(k),
        };
        c.u32(self.data_format);
        if let Some(g) = self.generation {
            c.u32(g);
        }
        if let Some(f) = &self.forgotten {
            c.lp(b"forgotten").lp(f.as_bytes());
        }
        c.finish()
    }

    /// True for a point `arca forget` removed (its record only holds its data key).
    pub fn is_forgotten(&self) -> bool {
        self.forgotten.is_some()
    }

    /// The key generation that wraps this point's data key.
    pub fn key_generation(&self) -> u32 {
        self.generation.unwrap_or(1)
    }

    /// Sets the MAC under the point's data key.
    pub fn seal(&mut self, data_key: &crypto::SecretKey) {
        self.mac =
            Some(crypto::mac(data_key, crypto::context::POINT_MAC, &self.mac_input()).to_vec());
    }

    /// True when the MAC is valid under the point's data key.
    pub fn verify(&self, data_key: &crypto::SecretKey) -> bool {
        self.mac.as_deref().is_some_and(|m| {
            crypto::verify_mac(data_key, crypto::context::POINT_MAC, &self.mac_input(), m)
        })
    }

    /// The point's time as nanoseconds since the epoch, if it parses (RFC 3339).
    pub fn time_ns(&self) -> Option<i128> {
        let t = humantime::parse_rfc3339(&self.time).ok()?;
        Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128)
    }
}

/// What a backup run saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PointStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file content in the point.
    pub bytes_total: u64,
    /// Bytes actually read from the source this run (unchanged files are not re-read).
    pub bytes_read: u64,
    /// Chunks new to the chain, their plaintext bytes, and bytes written to packs.
    pub chunks_new: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub files_unchanged: u64,
    /// Entries left out by the job's or the run's excludes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub excluded: u64,
    /// Bundles (chunks holding several small files) this run made, new or not.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bundles: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceError {
    pub path: String,
    pub error: String,
}

/// The decrypted body of a recovery point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PointBody {
    /// "tree" or "stdin".
    pub kind: String,
    pub source: String,
    pub hostname: String,
    pub stats: PointStats,
    /// The file index as a list of chunk ids; its entries are [`TreeEntry`] records in the
    /// encoding `tree_format` names.
    pub tree: Vec<Id32>,
    pub tree_bytes: u64,
    /// [`TREE_FORMAT_JSON`] (omitted: points written before the binary index) or
    /// [`TREE_FORMAT_BINARY`].
    #[serde(
        default = "tree_format_json",
        skip_serializing_if = "is_tree_format_json"
    )]
    pub tree_format: u32,
    /// Files that could not be read (or changed while read).
    #[serde(default)]
    pub errors: Vec<SourceError>,
    /// Entries deliberately not backed up (sockets, ...), with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SourceError>,
    /// The source root's own metadata (mode, owner, times, xattrs), for a tree point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<TreeEntry>,
    /// Names of the owners and groups the file index uses (by id), where the backing-up
    /// machine knew them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<u32, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<u32, String>,
    /// A point made by `arca copy --encrypt-on target`: the point (of another job) it copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<Id16>,
}

/// File index as JSON lines (docs/FORMAT.md §5.5).
pub const TREE_FORMAT_JSON: u32 = 1;
/// File index as length-prefixed binary records ([`super::tree_bin`]).
pub const TREE_FORMAT_BINARY: u32 = 2;

fn tree_format_json() -> u32 {
    TREE_FORMAT_JSON
}

fn is_tree_format_json(f: &u32) -> bool {
    *f == TREE_FORMAT_JSON
}

impl PointBody {
    /// The recorded name of a uid / gid.
    pub fn user(&self, uid: u32) -> Option<&str> {
        self.users.get(&uid).map(String::as_str)
    }
    pub fn group(&self, gid: u32) -> Option<&str> {
        self.groups.get(&gid).map(String::as_str)
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    /// A named pipe (recreated empty).
    Fifo,
    /// Character and block device nodes (`rdev`; recreated by root).
    Chardev,
    Blockdev,
}

/// One line of a recovery point's file index.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path relative to the source root, '/'-separated. Non-UTF-8 names are stored as
    /// `path_b64` instead, with `path` empty.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub path_b64: Option<Vec<u8>>,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub inode: u64,
    #[serde(default)]
    pub ctime_ns: i128,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub target: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id32>,
    /// A small file stored in a bundle (one chunk holding several small files): its
    /// content is `size` bytes from this offset of its one chunk's plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    /// Device number of a `chardev`/`blockdev` entry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// Extended attributes, POSIX ACLs among them (`system.posix_acl_access`/`_default`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// A `file` entry that is a hard link to an earlier entry: that entry's path bytes. It
    /// has no chunks of its own.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub hardlink: Option<Vec<u8>>,
}

/// One extended attribute.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Xattr {
    pub name: String,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

impl TreeEntry {
    /// An entry of `kind` at `path` with everything else empty.
    pub fn new(path: String, path_b64: Option<Vec<u8>>, kind: EntryType) -> TreeEntry {
        TreeEntry {
            path,
            path_b64,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            inode: 0,
            ctime_ns: 0,
            target: None,
            chunks: Vec::new(),
            at: None,
            rdev: 0,
            xattrs: Vec::new(),
            hardlink: None,
        }
    }

    /// A file's content within the plaintext of its chunk when it is bundled (`at` is
    /// set): refused unless it has exactly one chunk and lies wholly inside it.
    pub fn bundled_part<'d>(&self, chunk: &'d [u8]) -> Result<&'d [u8], ParseError> {
        let at = self.at.unwrap_or(0);
        if self.chunks.len() != 1 {
            return perr("a bundled file has one chunk");
        }
        at.checked_add(self.size)
            .filter(|end| *end <= chunk.len() as u64)
            .map(|end| &chunk[at as usize..end as usize])
            .ok_or_else(|| ParseError("a bundled file reaches beyond its chunk".into()))
    }
}

mod opt_b64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_str(&super::b64::encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::b64::decode(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl TreeEntry {
    /// The path as raw bytes.
    pub fn path_bytes(&self) -> Vec<u8> {
        self.path_raw().to_vec()
    }

    /// The path as raw bytes, borrowed.
    pub fn path_raw(&self) -> &[u8] {
        match &self.path_b64 {
            Some(b) => b,
            None => self.path.as_bytes(),
        }
    }

    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(self.path_raw()).into_owned()
    }
}

/// Serializes a file index as JSON lines.
pub fn encode_tree(entries: &[TreeEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut out, e).expect("tree entry serializes");
        out.push(b'\n');
    }
    out
}

pub fn decode_tree(bytes: &[u8]) -> Result<Vec<TreeEntry>, ParseError> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).map_err(|e| ParseError(format!("file index entry: {e}")))
        })
        .collect()
}

/// Where a chunk is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub chunk_id: Id32,
    pub pack_id: Id32,
    pub offset: u64,
    /// Sealed length in the pack (nonce + ciphertext + tag).
    pub length: u32,
    /// Plaintext length of the chunk.
    pub raw_len: u32,
}

pub const INDEX_MAGIC: &[u8; 8] = b"ARCAIDX\x01";
pub const INDEX_MAGIC2: &[u8; 8] = b"ARCAIDX\x02";
pub const INDEX_RECORD_LEN: usize = 32 + 32 + 8 + 4 + 4;

/// Plaintext of an index file: `count u32 LE || records`.
pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * INDEX_RECORD_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        push_index_record(&mut out, e);
    }
    out
}

pub fn decode_index(b: &[u8]) -> Result<Vec<IndexEntry>, ParseError> {
    let mut out = Vec::with_capacity(index_count(b)?);
    decode_index_with(b, |e| out.push(e))?;
    Ok(out)
}

/// The record count of an index plaintext, once its length is checked against it.
pub fn index_count(b: &[u8]) -> Result<usize, ParseError> {
    if b.len() < 4 {
        return perr("index too short");
    }
    let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    if b.len() - 4
        != n.checked_mul(INDEX_RECORD_LEN)
            .ok_or(ParseError("index count".into()))?
    {
        return perr("index length does not match its count");
    }
    Ok(n)
}

/// Hands each record of an index plaintext to `f`, without building a list of them.
pub fn decode_index_with(b: &[u8], mut f: impl FnMut(IndexEntry)) -> Result<(), ParseError> {
    index_count(b)?;
    for r in b[4..].chunks_exact(INDEX_RECORD_LEN) {
        f(IndexEntry {
            chunk_id: Id32(r[0..32].try_into().unwrap()),
            pack_id: Id32(r[32..64].try_into().unwrap()),
            offset: u64::from_le_bytes(r[64..72].try_into().unwrap()),
            length: u32::from_le_bytes(r[72..76].try_into().unwrap()),
            raw_len: u32::from_le_bytes(r[76..80].try_into().unwrap()),
        });
    }
    Ok(())
}

/// Appends one index record to a plaintext being built (see [`encode_index`]); the count
/// in front is set by [`finish_index`].
pub fn push_index_record(out: &mut Vec<u8>, e: &IndexEntry) {
    out.extend_from_slice(&e.chunk_id.0);
    out.extend_from_slice(&e.pack_id.0);
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.length.to_le_bytes());
    out.extend_from_slice(&e.raw_len.to_le_bytes());
}

/// Writes the record count of an index plaintext that starts at `out[at..]` with four
/// bytes of room for it.
pub fn finish_index(out: &mut [u8], at: usize) {
    let n = (out.len() - at - 4) / INDEX_RECORD_LEN;
    out[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
}

pub const PACK_MAGIC: &[u8; 8] = b"ARCAPCK\x01";
pub const PACK_MAGIC2: &[u8; 8] = b"ARCAPCK\x02";
/// magic (8) || point_id (16)
pub const PACK_PREFIX_LEN: usize = 8 + 16;
pub const PACK_HEADER_RECORD_LEN: usize = 32 + 8 + 4 + 4;

/// One entry of a pack's (sealed) header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackHeaderEntry {
    pub chunk_id: Id32,
    pub offset: u64,
    pub length: u32,
    pub raw_len: u32,
}

pub fn encode_pack_header(entries: &[PackHeaderEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * PACK_HEADER_RECORD_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.chunk_id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    out
}

pub fn decode_pack_header(b: &[u8]) -> Result<Vec<PackHeaderEntry>, ParseError> {
    if b.len() < 4 {
        return perr("pack header too short");
    }
    let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    let body = &b[4..];
    if Some(body.len()) != n.checked_mul(PACK_HEADER_RECORD_LEN) {
        return perr("pack header length does not match its count");
    }
    Ok(body
        .chunks_exact(PACK_HEADER_RECORD_LEN)
        .map(|r| PackHeaderEntry {
            chunk_id: Id32(r[0..32].try_into().unwrap()),
            offset: u64::from_le_bytes(r[32..40].try_into().unwrap()),
            length: u32::from_le_bytes(r[40..44].try_into().unwrap()),
            raw_len: u32::from_le_bytes(r[44..48].try_into().unwrap()),
        })
        .collect())
}

/// Chunk payload before sealing: `0x00 || raw` or `0x01 || zstd frame`.
pub const PAYLOAD_RAW: u8 = 0;
pub const PAYLOAD_ZSTD: u8 = 1;

/// The zstd context a backup compresses chunks with at `level`, with zstd's own parameters for
/// it (the frames `zstd -<level>` writes; `tar | zstd -1` is what a full backup is measured
/// against).
pub fn chunk_compressor(level: i32) -> zstd::bulk::Compressor<'static> {
    zstd::bulk::Compressor::new(level).expect("zstd context")
}

/// Compresses with zstd unless that does not save at least 1/32 of the size.
pub fn encode_payload(data: &[u8], level: i32) -> Vec<u8> {
    encode_payload_with(&mut chunk_compressor(level), data)
}

/// [`encode_payload`] with a reusable compression context.
pub fn encode_payload_with(z: &mut zstd::bulk::Compressor<'_>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_payload_into(z, data, &mut Vec::new(), &mut out);
    out
}

/// [`encode_payload_with`] into `out` (cleared first), with `scratch` for the compressor's
/// output: a backup reuses both, so encoding a chunk allocates nothing.
pub fn encode_payload_into(
    z: &mut zstd::bulk::Compressor<'_>,
    data: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    if !compress_payload(z, data, scratch, out) {
        out.clear();
        out.reserve_exact(data.len() + 1 + crate::crypto::TAG_LEN);
        out.push(PAYLOAD_RAW);
        out.extend_from_slice(data);
    }
}

/// [`encode_payload_into`] of a chunk that lies in `buf` after one byte of room (`buf[0]`):
/// compressed into `out`, or, when it is stored raw, made a payload where it lies (its type
/// byte written into that room) instead of copied. Returns true when the payload is `buf`,
/// false when it is `out`.
pub fn encode_payload_in_place(
    z: &mut zstd::bulk::Compressor<'_>,
    buf: &mut [u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> bool {
    let Some((room, data)) = buf.split_first_mut() else {
        // No room byte, so no chunk either: the payload of an empty one.
        encode_payload_into(z, &[], scratch, out);
        return false;
    };
    if compress_payload(z, data, scratch, out) {
        return false;
    }
    *room = PAYLOAD_RAW;
    true
}

/// Compresses `data` into `out` as a zstd payload (type byte first) and returns true, unless
/// that does not save at least 1/32 of its size: then false, and it is to be stored raw.
fn compress_payload(
    z: &mut zstd::bulk::Compressor<'_>,
    data: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    // A large chunk whose middle does not compress (media, archives, encrypted data) is
    // stored raw without compressing all of it: one 8 KiB probe instead of a full pass.
    const PROBE: usize = 8 * 1024;
    let mut compress = |src: &[u8], scratch: &mut Vec<u8>| {
        scratch.clear();
        scratch.reserve_exact(zstd::zstd_safe::compress_bound(src.len()));
        z.compress_to_buffer(src, scratch).is_ok()
    };
    let incompressible = data.len() >= 16 * PROBE && {
        let mid = data.len() / 2;
        compress(&data[mid..mid + PROBE], scratch) && scratch.len() + PROBE / 32 >= PROBE
    };
    if data.len() >= 64 && !incompressible {
        // Compressed straight after the type byte (no copy of the compressed chunk).
        out.reserve_exact(1 + zstd::zstd_safe::compress_bound(data.len()) + crate::crypto::TAG_LEN);
        out.push(PAYLOAD_ZSTD);
        let mut at = std::io::Cursor::new(&mut *out);
        at.set_position(1);
        if z.compress_to_buffer(data, &mut at).is_ok()
            && out.len() - 1 + data.len() / 32 < data.len()
        {
            return true;
        }
        out.clear();
    }
    false
}

/// The largest plaintext a chunk may have (content chunks are at most 4 MiB).
pub const MAX_CHUNK_RAW: usize = 16 * 1024 * 1024;

pub fn decode_payload(p: &[u8], raw_len: usize) -> Result<Vec<u8>, ParseError> {
    let mut z = zstd::bulk::Decompressor::new().map_err(|e| ParseError(format!("zstd: {e}")))?;
    let mut out = Vec::new();
    Ok(decode_payload_into(&mut z, p, raw_len, &mut out)?.to_vec())
}

/// [`decode_payload`] with a reusable decompression context (creating one per chunk was a
/// tenth of a restore's CPU time) and output buffer: a compressed payload decompresses into
/// `out`, a stored one is returned where it lies in `p`.
pub fn decode_payload_into<'a>(
    z: &mut zstd::bulk::Decompressor<'_>,
    p: &'a [u8],
    raw_len: usize,
    out: &'a mut Vec<u8>,
) -> Result<&'a [u8], ParseError> {
    if raw_len > MAX_CHUNK_RAW {
        return perr("chunk length beyond the format's limit");
    }
    match p.split_first() {
        Some((&PAYLOAD_RAW, rest)) if rest.len() == raw_len => Ok(rest),
        Some((&PAYLOAD_RAW, _)) => perr("stored length differs from the index"),
        Some((&PAYLOAD_ZSTD, rest)) => {
            out.clear();
            out.reserve_exact(raw_len);
            z.decompress_to_buffer(rest, out)
                .map_err(|e| ParseError(format!("zstd: {e}")))?;
            if out.len() != raw_len {
                return perr("decompressed length differs from the index");
            }
            Ok(out)
        }
        Some((t, _)) => perr(format!("unknown payload type {t}")),
        None => perr("empty payload"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bundled_file_is_read_only_from_within_its_one_chunk() {
        let chunk = b"0123456789";
        let mut e = TreeEntry::new("f".into(), None, EntryType::File);
        e.chunks = vec![Id32([1; 32])];
        e.at = Some(3);
        e.size = 4;
        assert_eq!(e.bundled_part(chunk).unwrap(), b"3456");
        e.size = 7;
        assert_eq!(e.bundled_part(chunk).unwrap(), b"3456789");
        // Past the end, by a byte or by wrapping around u64: refused, no panic.
        for (at, size) in [(3, 8), (11, 0), (u64::MAX, 2), (2, u64::MAX)] {
            e.at = Some(at);
            e.size = size;
            assert!(e.bundled_part(chunk).is_err(), "at {at} size {size}");
        }
        e.at = Some(0);
        e.size = 1;
        e.chunks.push(Id32([2; 32]));
        assert!(e.bundled_part(chunk).is_err(), "two chunks");
    }

    fn arb_id32() -> impl Strategy<Value = Id32> {
        any::<[u8; 32]>().prop_map(Id32)
    }
    fn arb_id16() -> impl Strategy<Value = Id16> {
        any::<[u8; 16]>().prop_map(Id16)
    }

    /// `len` incompressible bytes, the same for the same seed.
    fn noise(seed: &[u8], len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        blake3::Hasher::new()
            .update(seed)
            .finalize_xof()
            .fill(&mut v);
        v
    }

    #[test]
    fn chunks_are_compressed_with_zstds_own_parameters_for_the_level() {
        // Frames equal to `zstd -N`'s for the same input: what a full backup is measured
        // against (`tar | zstd -1`), at the default level and another.
        let half = noise(b"window", 600 * 1024);
        let data = [half.clone(), half, b"text ".repeat(40_000)].concat();
        for level in [1, 3] {
            let ours = chunk_compressor(level).compress(&data).unwrap();
            let plain = zstd::bulk::Compressor::new(level)
                .unwrap()
                .compress(&data)
                .unwrap();
            assert_eq!(ours, plain, "level {level}");
            let back = zstd::bulk::Decompressor::new()
                .unwrap()
                .decompress(&ours, data.len())
                .unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn incompressible_chunks_are_stored_raw_after_a_probe() {
        let random = noise(b"seed", 256 * 1024);
        let text = b"INSERT INTO t VALUES (1, 'arca');\n".repeat(8000);
        let p = encode_payload(&random, 1);
        assert_eq!(p[0], PAYLOAD_RAW);
        assert_eq!(decode_payload(&p, random.len()).unwrap(), random);
        let p = encode_payload(&text, 1);
        assert_eq!(p[0], PAYLOAD_ZSTD);
        assert!(p.len() < text.len() / 10);
        assert_eq!(decode_payload(&p, text.len()).unwrap(), text);
    }

    #[test]
    fn reused_payload_buffers_encode_as_fresh_ones() {
        let text = b"INSERT INTO t VALUES (1, 'arca');\n".repeat(8000);
        let random = noise(b"seed", 256 * 1024);
        let small = b"hello hello hello hello hello hello hello hello hello".to_vec();
        let mut z = chunk_compressor(1);
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        for d in [&random, &text, &small, &random, &text] {
            encode_payload_into(&mut z, d, &mut scratch, &mut out);
            assert_eq!(out, encode_payload(d, 1));
            assert_eq!(decode_payload(&out, d.len()).unwrap(), *d);
        }
    }

    #[test]
    fn payloads_made_in_place_equal_copied_ones() {
        // A chunk after a byte of room: stored raw where it lies, or compressed into `out`;
        // either way the same payload bytes as the copying encoder's.
        let text = b"INSERT INTO t VALUES (1, 'arca');\n".repeat(8000);
        let random = noise(b"seed", 256 * 1024);
        let tiny = b"hi".to_vec();
        let mut z = chunk_compressor(1);
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        let mut empty = Vec::new();
        assert!(!encode_payload_in_place(
            &mut z,
            &mut empty,
            &mut scratch,
            &mut out
        ));
        assert_eq!(out, encode_payload(&[], 1));
        for (d, raw) in [
            (&random, true),
            (&text, false),
            (&tiny, true),
            (&random, true),
        ] {
            let mut buf = [&[0xEE][..], d].concat();
            let in_place = encode_payload_in_place(&mut z, &mut buf, &mut scratch, &mut out);
            assert_eq!(in_place, raw);
            let payload = if in_place { &buf } else { &out };
            assert_eq!(*payload, encode_payload(d, 1));
            assert_eq!(decode_payload(payload, d.len()).unwrap(), *d);
        }
    }

    proptest! {
        #[test]
        fn index_roundtrip(v in proptest::collection::vec(
            (arb_id32(), arb_id32(), any::<u64>(), any::<u32>(), any::<u32>()), 0..50)) {
            let entries: Vec<IndexEntry> = v.into_iter().map(|(c, p, o, l, r)| IndexEntry {
                chunk_id: c, pack_id: p, offset: o, length: l, raw_len: r }).collect();
            let enc = encode_index(&entries);
            prop_assert_eq!(decode_index(&enc).unwrap(), entries);
            if !enc.is_empty() {
                prop_assert!(decode_index(&enc[..enc.len() - 1]).is_err());
            }
        }

        #[test]
        fn pack_header_roundtrip(v in proptest::collection::vec(
            (arb_id32(), any::<u64>(), any::<u32>(), any::<u32>()), 0..50)) {
            let entries: Vec<PackHeaderEntry> = v.into_iter().map(|(c, o, l, r)| PackHeaderEntry {
                chunk_id: c, offset: o, length: l, raw_len: r }).collect();
            prop_assert_eq!(decode_pack_header(&encode_pack_header(&entries)).unwrap(), entries);
        }

        #[test]
        fn payload_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..20000), rep in 0usize..4) {
            let mut d = data.clone();
            for _ in 0..rep { d.extend_from_slice(&data); }
            let p = encode_payload(&d, 3);
            prop_assert_eq!(decode_payload(&p, d.len()).unwrap(), d);
        }

        #[test]
        fn tree_roundtrip(paths in proptest::collection::vec("[a-z/ é\"\\\\]{0,20}", 0..20),
                          raw in proptest::collection::vec(any::<u8>(), 0..10),
                          chunks in proptest::collection::vec(arb_id32(), 0..4),
                          mtime in any::<i64>(), mode in any::<u32>()) {
            let mut entries: Vec<TreeEntry> = paths.into_iter().map(|p| TreeEntry {
                mode, uid: 1, gid: 2, mtime_ns: mtime as i128 * 7, size: 3, inode: 4,
                ctime_ns: -5, chunks: chunks.clone(), at: (mode % 3 == 0).then_some(mtime as u64),
                xattrs: vec![Xattr { name: "user.k".into(), value: raw.clone() }],
                ..TreeEntry::new(p, None, EntryType::File) }).collect();
            entries.push(TreeEntry { mode, target: Some(raw.clone()), hardlink: Some(raw.clone()),
                ..TreeEntry::new(String::new(), Some(raw.clone()), EntryType::Symlink) });
            entries.push(TreeEntry { rdev: 0x0103,
                ..TreeEntry::new("dev/null".into(), None, EntryType::Chardev) });
            prop_assert_eq!(decode_tree(&encode_tree(&entries)).unwrap(), entries);
        }

        #[test]
        fn point_record_roundtrip(ids in (arb_id16(), arb_id16(), arb_id16(), arb_id16()),
                                  body in proptest::collection::vec(any::<u8>(), 0..100),
                                  salt in proptest::collection::vec(any::<u8>(), 16..17),
                                  job in "[a-zA-Z0-9_-]{1,20}") {
            let rec = PointRecord {
                kind: PointRecord::KIND.into(), version: FORMAT_VERSION,
                repo_id: ids.0, job_id: ids.1, job, chain_id: ids.2, point_id: ids.3,
                time: "2026-11-23T11:00:00Z".into(), parent: Some(ids.0),
                source_kind: Some("tree".into()), data_format: 2, generation: None, mac: Some(vec![9; 32]),
                forgotten: None,
                kdf: Some(KdfRecord { password: "p".into(), algorithm: KdfRecord::ARGON2ID.into(),
                    salt, m_kib: 65536, t: 3, p: 2 }),
                data_key: WrappedKeyJson { nonce: vec![1; 12], commitment: vec![2; 32],
                    ciphertext: vec![3; 48] },
                body,
            };
            let s = serde_json::to_string(&rec).unwrap();
            prop_assert_eq!(serde_json::from_str::<PointRecord>(&s).unwrap(), rec);
        }

        #[test]
        fn chain_record_roundtrip(ids in (arb_id16(), arb_id16(), arb_id16(), arb_id16()),
                                  fp in "[0-9a-f]{16}") {
            let rec = ChainRecord {
                kind: ChainRecord::KIND.into(), version: FORMAT_VERSION, repo_id: ids.0,
                job_id: ids.1, chain_id: ids.2, created: "t".into(), encryption: EncryptionMode::Key,
                chunker: Some(ChainRecord::KEYED_GEAR.into()),
                generation: None,
                retired: Vec::new(),
                keyslots: vec![Keyslot { slot_id: ids.3, created: "t".into(), format: Some(2),
                    params: SlotParams::Raw { fingerprint: fp },
                    wrapped: Some(WrappedKeyJson { nonce: vec![0; 12], commitment: vec![0; 32],
                        ciphertext: vec![0; 48] }) }],
                revision: 3, mac: Some(vec![1; 32]),
            };
            let s = serde_json::to_string(&rec).unwrap();
            prop_assert_eq!(serde_json::from_str::<ChainRecord>(&s).unwrap(), rec);
        }
    }

    #[test]
    fn wrapped_key_json_checks_lengths() {
        let j = WrappedKeyJson {
            nonce: vec![0; 11],
            commitment: vec![0; 32],
            ciphertext: vec![0; 48],
        };
        assert!(WrappedKey::try_from(&j).is_err());
        let j = WrappedKeyJson {
            nonce: vec![0; 12],
            commitment: vec![0; 32],
            ciphertext: vec![0; 47],
        };
        assert!(WrappedKey::try_from(&j).is_err());
    }

    #[test]
    fn incompressible_payload_stored_raw() {
        let data: Vec<u8> = (0..10000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let random = crypto::random_bytes::<4096>();
        assert_eq!(encode_payload(&random, 3)[0], PAYLOAD_RAW);
        let zeros = vec![0u8; 4096];
        assert_eq!(encode_payload(&zeros, 3)[0], PAYLOAD_ZSTD);
        let _ = data;
    }
}
