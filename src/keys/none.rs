//! Encryption "none": the chain key is stored in clear in its keyslot. Data is still
//! compressed, chunked and authenticated (so corruption is detected), but anyone who can read
//! the repository can read the data. It exists so that one code path serves every mode.

use async_trait::async_trait;

use super::{KeyError, KeyProvider, SlotContext};
use crate::crypto::SecretKey;
use crate::repo::format::{Id16, Keyslot, SlotParams};
use crate::repo::now_rfc3339;

pub struct NoneProvider;

#[async_trait]
impl KeyProvider for NoneProvider {
    fn describe(&self) -> String {
        "no encryption".into()
    }

    async fn wrap(&self, chain_key: &SecretKey, _ctx: &SlotContext) -> Result<Keyslot, KeyError> {
        Ok(Keyslot {
            slot_id: Id16::random(),
            created: now_rfc3339(),
            format: (_ctx.version >= 2).then_some(2),
            params: SlotParams::None {
                chain_key: chain_key.expose().to_vec(),
            },
            wrapped: None,
        })
    }

    async fn unwrap(
        &self,
        slot: &Keyslot,
        _ctx: &SlotContext,
    ) -> Option<Result<SecretKey, KeyError>> {
        match &slot.params {
            SlotParams::None { chain_key } => Some(
                SecretKey::from_slice(chain_key).map_err(|e| KeyError::Malformed(e.to_string())),
            ),
            _ => None,
        }
    }
}
