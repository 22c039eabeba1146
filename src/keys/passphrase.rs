//! Passphrase keyslots: the password hash, Argon2id(passphrase, salt, params), wraps the
//! chain key.
//!
//! Two ways to hold the secret:
//! - [`PasswordHashProvider`]: an already derived password hash (from the catalog, an escrow
//!   record, or a password just created). Claims only slots of the same password (same salt).
//! - [`PassphraseProvider`]: a passphrase typed by the user. Claims every passphrase slot and
//!   derives the hash with that slot's stored salt and parameters.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{KeyError, KeyProvider, SlotContext};
use crate::crypto::{self, KdfParams, Passphrase, SecretKey};
use crate::repo::format::{KdfRecord, Keyslot, SlotParams};

/// Creates the record and hash of a new password.
pub fn new_password(
    name: &str,
    passphrase: &Passphrase,
    params: KdfParams,
) -> Result<(KdfRecord, SecretKey), crypto::CryptoError> {
    let salt = crypto::random_bytes::<16>().to_vec();
    let hash = crypto::derive_password_hash(passphrase, &salt, &params)?;
    let rec = KdfRecord {
        password: name.to_string(),
        algorithm: KdfRecord::ARGON2ID.into(),
        salt,
        m_kib: params.m_kib,
        t: params.t,
        p: params.p,
    };
    Ok((rec, hash))
}

/// Derives the hash for a stored record, refusing unknown algorithms, salts that are not
/// 16 to 64 bytes, and parameters above [`KdfParams::CAP`] unless `allow_expensive`.
pub fn derive_for(
    rec: &KdfRecord,
    passphrase: &Passphrase,
    allow_expensive: bool,
) -> Result<SecretKey, KeyError> {
    if rec.algorithm != KdfRecord::ARGON2ID {
        return Err(KeyError::Malformed(format!(
            "unknown KDF {:?}",
            rec.algorithm
        )));
    }
    if rec.salt.len() < 16 || rec.salt.len() > 64 {
        return Err(KeyError::Malformed(
            "the salt must be 16 to 64 bytes".into(),
        ));
    }
    rec.params()
        .check_cap(allow_expensive)
        .map_err(|e| KeyError::Malformed(e.to_string()))?;
    crypto::derive_password_hash(passphrase, &rec.salt, &rec.params())
        .map_err(|e| KeyError::Malformed(e.to_string()))
}

fn wrap_with(
    hash: &SecretKey,
    rec: &KdfRecord,
    chain_key: &SecretKey,
    ctx: &SlotContext,
) -> Keyslot {
    ctx.wrap(hash, chain_key, SlotParams::Passphrase { kdf: rec.clone() })
}

fn unwrap_with(
    hash: &SecretKey,
    slot: &Keyslot,
    ctx: &SlotContext,
    password: &str,
) -> Result<SecretKey, KeyError> {
    super::unwrap_slot(
        hash,
        slot,
        ctx,
        &format!("passphrase for password '{password}'"),
    )
}

pub struct PasswordHashProvider {
    pub record: KdfRecord,
    hash: SecretKey,
}

impl PasswordHashProvider {
    pub fn new(record: KdfRecord, hash: SecretKey) -> Self {
        PasswordHashProvider { record, hash }
    }
    pub fn hash(&self) -> &SecretKey {
        &self.hash
    }
}

#[async_trait]
impl KeyProvider for PasswordHashProvider {
    fn describe(&self) -> String {
        format!("stored hash of password '{}'", self.record.password)
    }

    async fn wrap(&self, chain_key: &SecretKey, ctx: &SlotContext) -> Result<Keyslot, KeyError> {
        Ok(wrap_with(&self.hash, &self.record, chain_key, ctx))
    }

    async fn unwrap(
        &self,
        slot: &Keyslot,
        ctx: &SlotContext,
    ) -> Option<Result<SecretKey, KeyError>> {
        match &slot.params {
            SlotParams::Passphrase { kdf } if kdf.salt == self.record.salt => {
                Some(unwrap_with(&self.hash, slot, ctx, &kdf.password))
            }
            _ => None,
        }
    }
}

/// A passphrase typed by the user, tried against every passphrase slot.
pub struct PassphraseProvider {
    passphrase: Passphrase,
    /// Run Argon2 parameters above the cap (`--allow-expensive-kdf`).
    pub allow_expensive: bool,
    /// Hashes already derived, by salt: Argon2 is deliberately slow.
    derived: Mutex<HashMap<Vec<u8>, SecretKey>>,
}

impl PassphraseProvider {
    pub fn new(passphrase: Passphrase) -> Self {
        PassphraseProvider {
            passphrase,
            allow_expensive: false,
            derived: Mutex::new(HashMap::new()),
        }
    }

    /// The password hash for `rec`, derived once per salt.
    pub fn hash_for(&self, rec: &KdfRecord) -> Result<SecretKey, KeyError> {
        if let Some(h) = self.derived.lock().unwrap().get(&rec.salt) {
            return Ok(h.duplicate());
        }
        let h = derive_for(rec, &self.passphrase, self.allow_expensive)?;
        self.derived
            .lock()
            .unwrap()
            .insert(rec.salt.clone(), h.duplicate());
        Ok(h)
    }
}

#[async_trait]
impl KeyProvider for PassphraseProvider {
    fn describe(&self) -> String {
        "passphrase".into()
    }

    async fn wrap(&self, _chain_key: &SecretKey, _ctx: &SlotContext) -> Result<Keyslot, KeyError> {
        Err(KeyError::Unavailable(
            "a typed passphrase cannot create a keyslot by itself: create a password first".into(),
        ))
    }

    async fn unwrap(
        &self,
        slot: &Keyslot,
        ctx: &SlotContext,
    ) -> Option<Result<SecretKey, KeyError>> {
        match &slot.params {
            SlotParams::Passphrase { kdf } => Some(
                self.hash_for(kdf)
                    .and_then(|h| unwrap_with(&h, slot, ctx, &kdf.password)),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{provider_suite as suite, raw::RawKeyProvider};

    fn provider(pass: &str) -> PasswordHashProvider {
        let (rec, hash) = new_password(
            "ops",
            &Passphrase::new(pass.into()),
            KdfParams::INSECURE_TEST,
        )
        .unwrap();
        PasswordHashProvider::new(rec, hash)
    }

    #[tokio::test]
    async fn shared_suite_password_hash() {
        let good = provider("correct horse");
        // Same password name and salt, wrong passphrase.
        let h = derive_for(&good.record, &Passphrase::new("wrong".into()), false).unwrap();
        let wrong = PasswordHashProvider::new(good.record.clone(), h);
        suite::run(&good, &wrong, &RawKeyProvider::new(SecretKey::random())).await;
    }

    #[tokio::test]
    async fn typed_passphrase_opens_with_stored_salt() {
        let good = provider("correct horse");
        let c = suite::ctx();
        let ck = SecretKey::random();
        let slot = good.wrap(&ck, &c).await.unwrap();
        let typed = PassphraseProvider::new(Passphrase::new("correct horse".into()));
        assert_eq!(
            typed.unwrap(&slot, &c).await.unwrap().unwrap().expose(),
            ck.expose()
        );
        let bad = PassphraseProvider::new(Passphrase::new("nope".into()));
        assert!(matches!(
            bad.unwrap(&slot, &c).await,
            Some(Err(KeyError::WrongKey { .. }))
        ));
        // A different password's hash does not claim the slot at all.
        assert!(provider("x").unwrap(&slot, &c).await.is_none());
    }
}
