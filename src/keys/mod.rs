//! Key providers: things that wrap and unwrap a chain key into a keyslot (envelope).
//!
//! The seam follows age: [`KeyProvider::unwrap`] returns `None` for "not my envelope" and
//! `Some(Err(..))` for "mine, but it failed". The restore resolver uses that distinction to
//! explain what it tried. A provider never changes any state when it fails.

pub mod aws_kms;
pub mod kmip;
pub mod none;
pub mod passphrase;
pub mod raw;

use async_trait::async_trait;

use crate::crypto::{CryptoError, SecretKey};
use crate::repo::format::{ChainRecord, Id16, Keyslot, SlotParams};

/// Where an envelope belongs: it is bound to the repository, job and chain.
#[derive(Clone, Debug)]
pub struct SlotContext {
    pub repo_id: Id16,
    pub job_id: Id16,
    pub chain_id: Id16,
    pub job_name: String,
    /// The chain record's format version: 2 binds each keyslot's public parameters.
    pub version: u32,
}

impl SlotContext {
    pub fn of_chain(chain: &ChainRecord, job_name: &str) -> Self {
        SlotContext {
            repo_id: chain.repo_id,
            job_id: chain.job_id,
            chain_id: chain.chain_id,
            job_name: job_name.to_string(),
            version: chain.version,
        }
    }

    /// The same context for an existing keyslot: its own wrapping version decides.
    pub fn for_slot(&self, slot: &Keyslot) -> SlotContext {
        let mut c = self.clone();
        c.version = slot.format.unwrap_or(1);
        c
    }

    /// The place a keyslot is bound to (its commitment covers this; docs/FORMAT.md).
    pub fn aad(&self, slot_id: &Id16) -> Vec<u8> {
        let l = if self.version >= 2 {
            crate::repo::format::label::KEYSLOT2
        } else {
            crate::repo::format::label::KEYSLOT
        };
        crate::crypto::aad(
            l,
            &[
                &self.repo_id.0,
                &self.job_id.0,
                &self.chain_id.0,
                &slot_id.0,
            ],
        )
    }

    /// v2: the slot's public parameters its wrapping authenticates (empty for v1).
    pub fn bound(&self, params: &SlotParams) -> Vec<u8> {
        if self.version >= 2 {
            params.bound()
        } else {
            Vec::new()
        }
    }

    /// Place and bound together (for check values over both).
    pub fn full(&self, slot_id: &Id16, params: &SlotParams) -> Vec<u8> {
        [self.aad(slot_id), self.bound(params)].concat()
    }

    /// Wraps `key` under `kek` into a keyslot with `params`.
    pub fn wrap(&self, kek: &SecretKey, key: &SecretKey, params: SlotParams) -> Keyslot {
        let slot_id = Id16::random();
        let w = crate::crypto::wrap_key_bound(kek, key, &self.aad(&slot_id), &self.bound(&params));
        Keyslot {
            slot_id,
            created: crate::repo::now_rfc3339(),
            format: (self.version >= 2).then_some(2),
            params,
            wrapped: Some(crate::repo::format::WrappedKeyJson::from(&w)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The secret is not the one that made this envelope.
    #[error("wrong {what}")]
    WrongKey { what: String },
    /// The envelope was modified.
    #[error("the keyslot was modified or moved ({0})")]
    Tampered(String),
    /// The provider could not be reached or refused (a KMS outage, access denied...).
    #[error("{0}")]
    Unavailable(String),
    #[error("malformed keyslot: {0}")]
    Malformed(String),
}

impl KeyError {
    pub fn from_crypto(e: CryptoError, what: &str) -> Self {
        match e {
            CryptoError::WrongKey => KeyError::WrongKey {
                what: what.to_string(),
            },
            CryptoError::Tampered => KeyError::Tampered("authentication failed".into()),
            other => KeyError::Malformed(other.to_string()),
        }
    }
}

/// Opens a keyslot's `wrapped` field with `kek` (the §3.2 wrapping every local-wrap provider
/// uses). `what` names the secret in a "wrong ..." error.
pub(crate) fn unwrap_slot(
    kek: &SecretKey,
    slot: &Keyslot,
    ctx: &SlotContext,
    what: &str,
) -> Result<SecretKey, KeyError> {
    let w = slot.wrapped.as_ref().ok_or_else(|| {
        KeyError::Malformed(format!(
            "{} keyslot without wrapped key",
            slot.params.provider()
        ))
    })?;
    let w = crate::crypto::WrappedKey::try_from(w).map_err(|e| KeyError::Malformed(e.0))?;
    let ctx = ctx.for_slot(slot);
    crate::crypto::unwrap_key_bound(kek, &w, &ctx.aad(&slot.slot_id), &ctx.bound(&slot.params))
        .map_err(|e| KeyError::from_crypto(e, what))
}

/// Wraps and unwraps chain keys. Object-safe and async, because some providers are network
/// services (AWS KMS, KMIP).
#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// A human-readable description, e.g. "password 'ops-2026'". Never contains a secret.
    fn describe(&self) -> String;

    /// Wraps `chain_key` into a new keyslot bound to `ctx`.
    async fn wrap(&self, chain_key: &SecretKey, ctx: &SlotContext) -> Result<Keyslot, KeyError>;

    /// `None`: not this provider's envelope. `Some(Err)`: it is, but unwrapping failed.
    async fn unwrap(
        &self,
        slot: &Keyslot,
        ctx: &SlotContext,
    ) -> Option<Result<SecretKey, KeyError>>;
}

/// Tries every keyslot with one provider: the first that opens wins. Returns `None` if the
/// provider claims none of them, otherwise the first success or the last failure.
pub async fn unwrap_any(
    provider: &dyn KeyProvider,
    slots: &[Keyslot],
    ctx: &SlotContext,
) -> Option<Result<SecretKey, KeyError>> {
    let mut last = None;
    for s in slots {
        match provider.unwrap(s, ctx).await {
            None => continue,
            Some(Ok(k)) => return Some(Ok(k)),
            Some(Err(e)) => last = Some(Err(e)),
        }
    }
    last
}

/// The shared test suite every key provider passes (used by the unit tests and by the
/// integration tests of the network providers).
#[doc(hidden)]
pub mod provider_suite {
    use super::*;

    pub fn ctx() -> SlotContext {
        SlotContext {
            repo_id: Id16([1; 16]),
            job_id: Id16([2; 16]),
            chain_id: Id16([3; 16]),
            job_name: "nightly".into(),
            version: 2,
        }
    }

    /// `good` wraps; `wrong` is the same kind of provider with another secret (or a key
    /// manager that refuses); `other` is a different kind of provider.
    pub async fn run(good: &dyn KeyProvider, wrong: &dyn KeyProvider, other: &dyn KeyProvider) {
        let ck = SecretKey::random();
        let c = ctx();
        let slot = good.wrap(&ck, &c).await.expect("wrap");
        // Round trip.
        let back = good
            .unwrap(&slot, &c)
            .await
            .expect("claims own slot")
            .expect("unwraps");
        assert_eq!(back.expose(), ck.expose());
        // Wrong secret: claimed ("mine"), and failed: a wrong key, or a refusal.
        match wrong.unwrap(&slot, &c).await {
            Some(Err(KeyError::WrongKey { .. })) | Some(Err(KeyError::Unavailable(_))) => {}
            other => panic!("wrong secret gave {:?}", other.map(|r| r.map(|_| ()))),
        }
        // Another kind of provider: not its envelope.
        assert!(
            other.unwrap(&slot, &c).await.is_none(),
            "foreign provider claimed the slot"
        );
        // Context binding: the same slot in another chain does not open.
        let mut moved = c.clone();
        moved.chain_id = Id16([9; 16]);
        assert!(
            matches!(good.unwrap(&slot, &moved).await, Some(Err(_))),
            "slot opened in another chain"
        );
        // v2: an edited public parameter (a renamed password, another fingerprint...) fails.
        let mut edited = slot.clone();
        match &mut edited.params {
            crate::repo::format::SlotParams::Passphrase { kdf } => kdf.password.push('x'),
            crate::repo::format::SlotParams::Raw { fingerprint } => fingerprint.push('0'),
            crate::repo::format::SlotParams::Kms { key_arn, .. } => key_arn.push('0'),
            crate::repo::format::SlotParams::Kmip { key_name, .. }
            | crate::repo::format::SlotParams::KmipEncrypt { key_name, .. } => {
                *key_name = Some("other".into())
            }
            crate::repo::format::SlotParams::None { .. } => {}
        }
        if edited != slot {
            assert!(
                !matches!(good.unwrap(&edited, &c).await, Some(Ok(_))),
                "a keyslot with edited public parameters opened"
            );
        }
        // A modified envelope is "mine but failed", never garbage.
        let mut t = slot.clone();
        if let Some(w) = t.wrapped.as_mut() {
            w.ciphertext[0] ^= 1;
        } else if let crate::repo::format::SlotParams::Kms { ciphertext, .. }
        | crate::repo::format::SlotParams::KmipEncrypt { ciphertext, .. } = &mut t.params
        {
            let n = ciphertext.len() / 2;
            ciphertext[n] ^= 1;
        }
        assert!(
            matches!(good.unwrap(&t, &c).await, Some(Err(_))),
            "a modified envelope opened"
        );
    }
}
