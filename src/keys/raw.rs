//! Raw-key keyslots: a 32-byte key supplied by the user (base64 in a file or `ARCA_KEY`)
//! wraps the chain key.

use async_trait::async_trait;
use base64::Engine;

use super::{KeyError, KeyProvider, SlotContext};
use crate::crypto::SecretKey;
use crate::repo::format::{Keyslot, SlotParams};

pub struct RawKeyProvider {
    key: SecretKey,
}

impl RawKeyProvider {
    pub fn new(key: SecretKey) -> Self {
        RawKeyProvider { key }
    }

    /// Parses base64 text (surrounding whitespace ignored) holding exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Malformed("the key is not valid base64".into()))?;
        let k = SecretKey::from_slice(&bytes).map_err(|_| {
            KeyError::Malformed(format!("the key must be 32 bytes, it has {}", bytes.len()))
        });
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(RawKeyProvider { key: k? })
    }

    pub fn fingerprint(&self) -> String {
        self.key.fingerprint()
    }
}

/// A fresh random key as base64 text (for `arca key generate` and the quickstart).
pub fn generate_base64() -> zeroize::Zeroizing<String> {
    let k = SecretKey::random();
    zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(k.expose()))
}

#[async_trait]
impl KeyProvider for RawKeyProvider {
    fn describe(&self) -> String {
        format!("raw key {}", self.fingerprint())
    }

    async fn wrap(&self, chain_key: &SecretKey, ctx: &SlotContext) -> Result<Keyslot, KeyError> {
        Ok(ctx.wrap(
            &self.key,
            chain_key,
            SlotParams::Raw {
                fingerprint: self.fingerprint(),
            },
        ))
    }

    async fn unwrap(
        &self,
        slot: &Keyslot,
        ctx: &SlotContext,
    ) -> Option<Result<SecretKey, KeyError>> {
        let SlotParams::Raw { fingerprint } = &slot.params else {
            return None;
        };
        Some(super::unwrap_slot(
            &self.key,
            slot,
            ctx,
            &format!(
                "key (the slot expects key {fingerprint}, this is key {})",
                self.fingerprint()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{none::NoneProvider, provider_suite as suite};

    #[tokio::test]
    async fn shared_suite_raw() {
        let good = RawKeyProvider::new(SecretKey::random());
        let wrong = RawKeyProvider::new(SecretKey::random());
        suite::run(&good, &wrong, &NoneProvider).await;
    }

    #[test]
    fn base64_parsing() {
        let t = generate_base64();
        assert!(RawKeyProvider::from_base64(&format!("  {}\n", t.as_str())).is_ok());
        assert!(RawKeyProvider::from_base64("aGVsbG8=").is_err());
        assert!(RawKeyProvider::from_base64("!!!").is_err());
    }
}
