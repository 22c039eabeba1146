//! The password manager's key operations: escrow of password hashes to KMS.
//!
//! A password hash is a key: escrow encrypts it with KMS `Encrypt` under the escrow key,
//! with an encryption context naming repository, job, purpose and password, and writes the
//! record into the job's repository (so it survives a reinstall) and into the catalog.
//! The catalog-side commands live in `cli/password.rs`.

use crate::crypto::SecretKey;
use crate::keys::aws_kms::{escrow_context, key_check, KmsClient};
use crate::keys::KeyError;
use crate::repo::format::{EscrowRecord, Id16, KdfRecord, FORMAT_VERSION};
use crate::repo::now_rfc3339;

/// The catalog setting holding the AWS KMS escrow key (escrow is enabled when it is set).
pub const ESCROW_KEY_SETTING: &str = "kms.escrow_key";
/// The catalog setting holding the KMIP escrow key (name or unique identifier).
pub const KMIP_ESCROW_KEY_SETTING: &str = "kmip.escrow_key";

/// Escrows with a KMIP key: the key is fetched (Get), the password hash wrapped locally with
/// AES-256-GCM and a commitment (`ciphertext = nonce || commitment || wrapped`), and the
/// key dropped.
pub async fn escrow_kmip(
    kmip: std::sync::Arc<crate::keys::kmip::KmipClient>,
    key: &str,
    repo_id: &Id16,
    job_id: &Id16,
    job: &str,
    kdf: &KdfRecord,
    hash: &SecretKey,
) -> Result<EscrowRecord, KeyError> {
    let k = key.to_string();
    let c = kmip.clone();
    let (uid, server_side) = tokio::task::spawn_blocking(move || {
        let uid = c.resolve(&k)?;
        let s = c.offers_encrypt()?;
        Ok::<_, KeyError>((uid, s))
    })
    .await
    .map_err(|e| KeyError::Unavailable(e.to_string()))??;
    if server_side {
        // The server encrypts the password hash: the KMIP key never leaves it.
        // ciphertext = iv (12) || ciphertext (32) || tag (16).
        let mut rec = record("kmip-encrypt", uid.clone(), repo_id, job_id, job, kdf, hash);
        let (c, aad, h) = (kmip.clone(), rec.aad(), hash.duplicate());
        let (iv, ct) = tokio::task::spawn_blocking(move || c.encrypt(&uid, h.expose(), &aad))
            .await
            .map_err(|e| KeyError::Unavailable(e.to_string()))??;
        rec.ciphertext = [iv, ct].concat();
        return Ok(rec);
    }
    let c = kmip.clone();
    let u = uid.clone();
    let kek = tokio::task::spawn_blocking(move || c.fetch(&u))
        .await
        .map_err(|e| KeyError::Unavailable(e.to_string()))??;
    let mut rec = record("kmip", uid, repo_id, job_id, job, kdf, hash);
    let w = crate::crypto::wrap_key(&kek, hash, &rec.aad());
    rec.ciphertext = [
        w.nonce.as_slice(),
        w.commitment.as_slice(),
        w.ciphertext.as_slice(),
    ]
    .concat();
    Ok(rec)
}

/// Opens an escrow record with whichever provider made it.
pub async fn open_record(
    creds: &crate::resolve::Credentials,
    rec: &EscrowRecord,
) -> Result<SecretKey, KeyError> {
    match rec.provider.as_str() {
        "aws-kms" => open_escrow(&*creds.kms_client_for(&rec.key_arn).await?, rec).await,
        "kmip-encrypt" => {
            let c = creds.kmip_client()?;
            let b = rec.ciphertext.clone();
            if b.len() != 12 + 32 + 16 {
                return Err(KeyError::Malformed(
                    "KMIP escrow ciphertext has the wrong length".into(),
                ));
            }
            let (uid, aad) = (rec.key_arn.clone(), rec.aad());
            let hash =
                tokio::task::spawn_blocking(move || c.decrypt(&uid, &b[..12], &b[12..], &aad))
                    .await
                    .map_err(|e| KeyError::Unavailable(e.to_string()))??;
            let want = blake3::Hash::from_slice(&rec.key_check)
                .map_err(|_| KeyError::Malformed("escrow check value is not 32 bytes".into()))?;
            if blake3::Hash::from_bytes(key_check(&hash, &rec.aad())) != want {
                return Err(KeyError::Tampered(
                    "escrow record check value mismatch".into(),
                ));
            }
            Ok(hash)
        }
        "kmip" => {
            let c = creds.kmip_client()?;
            let uid = rec.key_arn.clone();
            let kek = tokio::task::spawn_blocking(move || c.fetch(&uid))
                .await
                .map_err(|e| KeyError::Unavailable(e.to_string()))??;
            let b = &rec.ciphertext;
            if b.len() != 12 + 32 + 48 {
                return Err(KeyError::Malformed(
                    "KMIP escrow ciphertext has the wrong length".into(),
                ));
            }
            let w = crate::crypto::WrappedKey {
                nonce: b[..12].try_into().expect("12"),
                commitment: b[12..44].try_into().expect("32"),
                ciphertext: b[44..].to_vec(),
            };
            let hash = crate::crypto::unwrap_key(&kek, &w, &rec.aad()).map_err(|e| {
                KeyError::from_crypto(
                    e,
                    &format!("KMIP key {} for this escrow record", rec.key_arn),
                )
            })?;
            let want = blake3::Hash::from_slice(&rec.key_check)
                .map_err(|_| KeyError::Malformed("escrow check value is not 32 bytes".into()))?;
            if blake3::Hash::from_bytes(key_check(&hash, &rec.aad())) != want {
                return Err(KeyError::Tampered(
                    "escrow record check value mismatch".into(),
                ));
            }
            Ok(hash)
        }
        other => Err(KeyError::Malformed(format!(
            "unknown escrow provider {other:?}"
        ))),
    }
}

/// The KMS encryption context of an escrow record: v1 names repository, job and password;
/// v2 also the job id and the password's salt, so a record cannot be replayed onto another
/// job of the same name or another version of the password.
pub fn escrow_context_v(
    version: u32,
    repo_id: &Id16,
    job_id: &Id16,
    job: &str,
    kdf: &KdfRecord,
) -> std::collections::BTreeMap<String, String> {
    let mut c = escrow_context(repo_id, job, &kdf.password);
    if version >= 2 {
        c.insert("arca:job-id".into(), job_id.hex());
        c.insert("arca:salt".into(), hex::encode(&kdf.salt));
    }
    c
}

/// A record for `kdf.password` of `job`, without its ciphertext yet.
fn record(
    provider: &str,
    key: String,
    repo_id: &Id16,
    job_id: &Id16,
    job: &str,
    kdf: &KdfRecord,
    hash: &SecretKey,
) -> EscrowRecord {
    let mut rec = EscrowRecord {
        kind: EscrowRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: *repo_id,
        job_id: *job_id,
        job: job.to_string(),
        kdf: kdf.clone(),
        provider: provider.into(),
        key_arn: key,
        context: escrow_context_v(FORMAT_VERSION, repo_id, job_id, job, kdf),
        ciphertext: Vec::new(),
        key_check: Vec::new(),
        created: now_rfc3339(),
    };
    rec.key_check = key_check(hash, &rec.aad()).to_vec();
    rec
}

/// Encrypts `hash` (the hash of password `kdf.password`) for job `job` with KMS.
pub async fn escrow(
    kms: &KmsClient,
    key: &str,
    repo_id: &Id16,
    job_id: &Id16,
    job: &str,
    kdf: &KdfRecord,
    hash: &SecretKey,
) -> Result<EscrowRecord, KeyError> {
    let (arn, ciphertext) = kms
        .encrypt(
            key,
            hash.expose(),
            &escrow_context_v(FORMAT_VERSION, repo_id, job_id, job, kdf),
        )
        .await?;
    let mut rec = record("aws-kms", arn, repo_id, job_id, job, kdf, hash);
    rec.ciphertext = ciphertext;
    Ok(rec)
}

/// Decrypts an escrow record back into the password hash.
pub async fn open_escrow(kms: &KmsClient, rec: &EscrowRecord) -> Result<SecretKey, KeyError> {
    // The context is recomputed, never taken from the record: a record moved to another
    // repository or job asks KMS for a context it was not made with, and fails.
    let context = escrow_context_v(rec.version, &rec.repo_id, &rec.job_id, &rec.job, &rec.kdf);
    let hash = kms.decrypt(&rec.key_arn, &rec.ciphertext, &context).await?;
    let want = blake3::Hash::from_slice(&rec.key_check)
        .map_err(|_| KeyError::Malformed("escrow check value is not 32 bytes".into()))?;
    if blake3::Hash::from_bytes(key_check(&hash, &rec.aad())) != want {
        return Err(KeyError::Tampered(format!(
            "escrow record of password '{}' decrypted to a value that does not match its check value",
            rec.kdf.password
        )));
    }
    Ok(hash)
}
