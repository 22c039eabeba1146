//! Jobs and their chains: creation, encryption changes, activation, keyslots. The CLI
//! parses and prints; everything that makes keys, keyslots or records is here.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::lifecycle::escrow_if_enabled;
use super::{locate_job, open_chain, open_chain_with, pin_open_chain, validate_job_name, Session};
use crate::catalog::{Catalog, JobRow};
use crate::crypto::{KdfParams, SecretKey};
use crate::error::{Error, Result};
use crate::keys::none::NoneProvider;
use crate::keys::passphrase::{self, PasswordHashProvider};
use crate::keys::{KeyProvider, SlotContext};
use crate::repo::format::{ChainRecord, EncryptionMode, Id16, JobRecord, FORMAT_VERSION};
use crate::repo::{now_rfc3339, Repository};

/// A KMS keyslot provider for `key`, after DescribeKey confirmed the key is usable.
pub async fn kms_provider(
    s: &Session,
    job: &str,
    key: &str,
) -> Result<crate::keys::aws_kms::KmsProvider> {
    let unavailable = |e: crate::keys::KeyError| Error::KeysUnavailable {
        job: job.to_string(),
        detail: e.to_string(),
    };
    let client = s.creds.kms_client().await.map_err(unavailable)?;
    let info = client.check_key(key).await.map_err(unavailable)?;
    s.note(format!("using KMS key {}", info.arn));
    Ok(crate::keys::aws_kms::KmsProvider::new(
        client,
        Some(info.arn),
    ))
}

/// What a new chain's encryption is made of.
pub struct ChainSpec<'a> {
    pub mode: EncryptionMode,
    pub password: Option<&'a str>,
    pub kms_key: Option<&'a str>,
    pub kmip_key: Option<&'a str>,
}

pub fn kmip_provider(s: &Session, job: &str, key: &str) -> Result<crate::keys::kmip::KmipProvider> {
    let c = s.creds.kmip_client().map_err(|e| Error::KeysUnavailable {
        job: job.to_string(),
        detail: e.to_string(),
    })?;
    Ok(crate::keys::kmip::KmipProvider::new(
        c,
        Some(key.to_string()),
    ))
}

/// A new chain, sealed (MAC) under its fresh key.
pub struct NewChain {
    pub chain: ChainRecord,
    pub key: SecretKey,
    pub password: Option<String>,
    pub key_file: Option<String>,
}

pub async fn new_chain(
    s: &Session,
    cat: &Catalog,
    repo: &Repository,
    job_id: Id16,
    job_name: &str,
    spec: ChainSpec<'_>,
) -> Result<NewChain> {
    if repo.version() < FORMAT_VERSION {
        return Err(Error::Usage(format!(
            "repository {} is in format version 1; upgrade it with `arca migrate --repo {}` first",
            repo.root().display(),
            repo.root().display()
        )));
    }
    let mut chain = ChainRecord {
        kind: ChainRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: repo.id(),
        job_id,
        chain_id: Id16::random(),
        created: now_rfc3339(),
        encryption: spec.mode,
        keyslots: Vec::new(),
        revision: 1,
        chunker: Some(ChainRecord::KEYED_GEAR.into()),
        generation: None,
        retired: Vec::new(),
        mac: None,
    };
    let ChainSpec {
        mode,
        password,
        kms_key,
        kmip_key,
    } = spec;
    let sctx = SlotContext::of_chain(&chain, job_name);
    let chain_key = SecretKey::random();
    let mut password_name = None;
    let mut key_file = None;
    let slot = match mode {
        EncryptionMode::None => NoneProvider.wrap(&chain_key, &sctx).await,
        EncryptionMode::Kmip => {
            let key = kmip_key.ok_or_else(|| Error::Usage("--encryption kmip needs --kmip-key NAME (create one with `arca kmip create-key NAME`)".into()))?;
            kmip_provider(s, job_name, key)?.wrap(&chain_key, &sctx).await
        }
        EncryptionMode::Kms => {
            let key = kms_key.ok_or_else(|| Error::Usage("--encryption kms needs --kms-key KEY (key id, ARN or alias)".into()))?;
            // Fail closed: if KMS cannot be reached, no chain is created.
            kms_provider(s, job_name, key).await?.wrap(&chain_key, &sctx).await
        }
        EncryptionMode::Key => {
            let (p, from) = s.creds.raw_key(None)?.ok_or_else(|| {
                Error::Usage("--encryption key needs a key: --key-file FILE (base64 of 32 bytes; `arca key generate` makes one) or ARCA_KEY".into())
            })?;
            if let Some(f) = &s.creds.key_file {
                key_file = Some(std::path::absolute(f).unwrap_or(f.clone()).to_string_lossy().into_owned());
            }
            s.note(format!("using {from} (fingerprint {})", p.fingerprint()));
            p.wrap(&chain_key, &sctx).await
        }
        EncryptionMode::Passphrase => {
            let name = password.unwrap_or(job_name).to_string();
            super::validate_job_name(&name).map_err(|_| Error::Usage(format!("invalid password name {name:?}")))?;
            let provider = password_provider(s, cat, &name).await?;
            password_name = Some(name);
            provider.wrap(&chain_key, &sctx).await
        }
    }
    .map_err(|e| Error::KeysUnavailable { job: job_name.to_string(), detail: format!("creating the keyslot failed: {e}") })?;
    note_kmip_mode(s, &slot);
    chain.keyslots.push(slot);
    chain.seal(&chain_key);
    Ok(NewChain {
        chain,
        key: chain_key,
        password: password_name,
        key_file,
    })
}

/// Says which KMIP mode a new keyslot uses (never silently the weaker one).
pub fn note_kmip_mode(s: &Session, slot: &crate::repo::format::Keyslot) {
    match slot.params.provider() {
        "kmip-encrypt" => s.note(
            "KMIP: the server encrypts the chain key (Encrypt/Decrypt); the key never leaves it",
        ),
        "kmip" => s.note(
            "KMIP: the server does not offer Encrypt/Decrypt (or [kmip] server_side = false): \
             using Get + local wrapping, so the key is fetched into arca's memory when used",
        ),
        _ => {}
    }
}

/// Pins a freshly made chain in the catalog.
pub fn pin_new(cat: &Catalog, job_id: &Id16, nc: &NewChain) -> Result<()> {
    cat.pin_chain(
        job_id,
        &crate::catalog::ChainPin {
            chain_id: nc.chain.chain_id,
            mode: nc.chain.encryption,
            check_value: hex::encode(crate::crypto::check_value(&nc.key)),
            revision: nc.chain.revision,
            kms_keys: super::chain_kms_keys(&nc.chain),
            generation: nc.chain.current_generation(),
            generation_check: hex::encode(crate::crypto::check_value(&nc.key)),
        },
    )
}

/// The stored hash of password `name`, or a new password from a passphrase.
pub async fn password_provider(
    s: &Session,
    cat: &Catalog,
    name: &str,
) -> Result<PasswordHashProvider> {
    if let Some((rec, hash)) = cat.password_hash(name)? {
        // A passphrase given anyway must match: never attach a password the admin mistyped.
        if s.creds.explicit_passphrase() {
            if let Some(p) = s.creds.read_passphrase("", false)? {
                let h = passphrase::derive_for(&rec, &p, s.creds.allow_expensive_kdf)
                    .map_err(|e| Error::Other(e.to_string()))?;
                if h.expose() != hash.expose() {
                    return Err(Error::WrongPassphrase {
                        job: name.to_string(),
                        password: name.to_string(),
                    });
                }
            }
        }
        s.note(format!("using existing password '{name}'"));
        return Ok(PasswordHashProvider::new(rec, hash));
    }
    let p = s
        .creds
        .read_passphrase(&format!("New passphrase for password '{name}': "), true)?
        .ok_or_else(|| {
            Error::Usage("a passphrase is needed: set ARCA_PASSPHRASE, pass --passphrase-file FILE, or run on a terminal".into())
        })?;
    let params = KdfParams::for_new_password().map_err(|e| Error::Usage(e.to_string()))?;
    let (rec, hash) =
        passphrase::new_password(name, &p, params).map_err(|e| Error::Other(e.to_string()))?;
    cat.create_password(&rec, "", &hash)?;
    s.note(format!(
        "created password '{name}' (Argon2id, {} KiB, t={}, p={})",
        params.m_kib, params.t, params.p
    ));
    Ok(PasswordHashProvider::new(rec, hash))
}

pub fn describe_slot(slot: &crate::repo::format::Keyslot) -> String {
    use crate::repo::format::SlotParams;
    match &slot.params {
        SlotParams::Passphrase { kdf } => format!(
            "password '{}' (Argon2id {} KiB, t={}, p={})",
            kdf.password, kdf.m_kib, kdf.t, kdf.p
        ),
        SlotParams::Raw { fingerprint } => format!("raw key {fingerprint}"),
        SlotParams::Kms { key_arn, .. } => format!("AWS KMS key {key_arn}"),
        SlotParams::Kmip {
            server,
            key_uid,
            key_name,
        } => {
            format!(
                "KMIP key {} (uid {key_uid}) on {server}",
                key_name.as_deref().unwrap_or("-")
            )
        }
        SlotParams::KmipEncrypt {
            server,
            key_uid,
            key_name,
            ..
        } => format!(
            "KMIP key {} (uid {key_uid}) on {server}, encrypted by the server (the key never leaves it)",
            key_name.as_deref().unwrap_or("-")
        ),
        SlotParams::None { .. } => "no encryption".into(),
    }
}

/// What `create_job` needs.
pub struct CreateJob<'a> {
    pub name: &'a str,
    pub repo: &'a Path,
    pub source: &'a Path,
    pub spec: ChainSpec<'a>,
}

/// `arca job create`: a job record and its first chain in the repository, the job and its
/// trust pins in the catalog, and escrow of its password if escrow is on.
pub async fn create_job(s: &Session, a: CreateJob<'_>) -> Result<JobRow> {
    validate_job_name(a.name)?;
    let cat = s.catalog()?;
    if cat.job(a.name)?.is_some() {
        return Err(Error::Usage(format!(
            "a job named '{}' already exists in the catalog",
            a.name
        )));
    }
    let repo = Repository::open(a.repo).map_err(|e| match e {
        Error::NotFound(m) => Error::NotFound(format!(
            "{m} (`arca init {}` creates a new, empty repository)",
            a.repo.display()
        )),
        other => other,
    })?;
    if repo.list_jobs()?.iter().any(|j| j.name == a.name) {
        return Err(Error::Usage(format!(
            "repository {} already has a job named '{}'; `arca catalog rebuild --repo {}` adds it to this catalog",
            a.repo.display(),
            a.name,
            a.repo.display()
        )));
    }
    let source: PathBuf = std::path::absolute(a.source).unwrap_or(a.source.to_path_buf());
    if !source.exists() {
        s.note(format!(
            "warning: source {} does not exist yet",
            source.display()
        ));
    }
    let mode = a.spec.mode;
    let _lock =
        super::lifecycle::wait_for(s, &repo, || repo.try_lock(crate::repo::LockKind::Shared))?;
    let job_id = Id16::random();
    let nc = new_chain(s, &cat, &repo, job_id, a.name, a.spec).await?;
    let chain = &nc.chain;
    let mut job = JobRecord {
        kind: JobRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: repo.id(),
        job_id,
        name: a.name.to_string(),
        source: source.to_string_lossy().into_owned(),
        created: now_rfc3339(),
        chain_id: chain.chain_id,
        chains: Vec::new(),
        revision: 1,
        mac: None,
    };
    job.seal(&nc.key);
    repo.write_chain(chain)?;
    repo.write_job(&job)?;
    cat.create_job(&JobRow {
        name: a.name.to_string(),
        job_id,
        repo_id: repo.id(),
        repo_path: repo.root().to_path_buf(),
        source: job.source.clone(),
        encryption: mode,
        password: nc.password.clone(),
        key_file: nc.key_file.clone(),
        chain_id: chain.chain_id,
        created: job.created.clone(),
        job_revision: job.revision,
        latest_point: None,
        active: true,
    })?;
    cat.set_job_revision(a.name, job.revision)?;
    cat.set_repo_format_version(&repo.id(), repo.version())?;
    pin_new(&cat, &job_id, &nc)?;
    if let Some(pw) = cat.job(a.name)?.and_then(|r| r.password) {
        escrow_if_enabled(s, &cat, &repo, &job_id, a.name, &pw).await?;
    }
    cat.job(a.name)?
        .ok_or_else(|| Error::Other("the job just created is not in the catalog".into()))
}

/// A job's new chain after an encryption change.
#[derive(Debug, Serialize)]
pub struct NewChainInfo {
    pub job: String,
    pub chain_id: String,
    pub encryption: &'static str,
}

/// Switches a deactivated job to a new chain with `spec` (the next backup is a full one that
/// reuses nothing of the old chain; older points keep their keys). An active job refuses.
pub async fn change_encryption(
    s: &Session,
    name: &str,
    spec: ChainSpec<'_>,
) -> Result<NewChainInfo> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, None)?;
    let mode = spec.mode;
    if h.row.as_ref().is_some_and(|r| r.active) {
        return Err(Error::Usage(format!(
            "job '{name}' is active: an active job's encryption settings cannot change. \
             Deactivate it (`arca job deactivate {name}`), then `arca job activate {name} --encryption {}` \
             starts a new chain (the next backup is a full backup; older points keep their keys)",
            mode.as_str()
        )));
    }
    let _locks = super::lifecycle::lock_chain(s, &h.repo, &h.job.chain_id)?;
    // The current chain's key authenticates the change of the job record. A passphrase or
    // key given here is meant for the new chain.
    open_chain_with(s, &cat, &h, &h.job.chain_id, None, false, false).await?;
    let nc = new_chain(s, &cat, &h.repo, h.job.job_id, name, spec).await?;
    let chain = &nc.chain;
    h.repo.write_chain(chain)?;
    let mut job = h.job.clone();
    job.chains = job.all_chains();
    job.chain_id = chain.chain_id;
    job.revision += 1;
    job.seal(&nc.key);
    pin_new(&cat, &h.job.job_id, &nc)?;
    h.repo.write_job(&job)?;
    cat.update_job_encryption(
        name,
        mode,
        nc.password.as_deref(),
        nc.key_file.as_deref(),
        &chain.chain_id,
    )?;
    cat.set_job_revision(name, job.revision)?;
    Ok(NewChainInfo {
        job: name.to_string(),
        chain_id: chain.chain_id.hex(),
        encryption: mode.as_str(),
    })
}

/// Stops a job's backups; every recovery point stays restorable.
pub fn deactivate(s: &Session, name: &str) -> Result<()> {
    let cat = s.catalog()?;
    locate_job(&cat, name, None)?;
    cat.set_active(name, false)
}

/// Resumes a job's backups, first switching it to a new chain when `spec` is given (which
/// only a deactivated job accepts).
pub async fn activate(
    s: &Session,
    name: &str,
    spec: Option<ChainSpec<'_>>,
) -> Result<Option<NewChainInfo>> {
    let cat = s.catalog()?;
    let row = cat.job(name)?.ok_or_else(|| {
        Error::NotFound(format!(
            "no job named '{name}' in the catalog; `arca job list` shows them"
        ))
    })?;
    let changed = match spec {
        Some(spec) => {
            if row.active {
                return Err(Error::Usage(format!(
                    "job '{name}' is active: deactivate it first (`arca job deactivate {name}`), then activate it with the new encryption"
                )));
            }
            Some(change_encryption(s, name, spec).await?)
        }
        None => None,
    };
    cat.set_active(name, true)?;
    Ok(changed)
}

/// One keyslot, for listing.
#[derive(Debug, Serialize)]
pub struct SlotView {
    pub slot_id: String,
    pub provider: &'static str,
    pub description: String,
    pub created: String,
}

/// The keyslots of a job's current chain (what it says; nothing is opened).
pub fn list_keyslots(s: &Session, name: &str) -> Result<(ChainRecord, Vec<SlotView>)> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, None)?;
    let chain = h.repo.read_chain(&h.job.chain_id)?;
    let rows = chain
        .keyslots
        .iter()
        .map(|k| SlotView {
            slot_id: k.slot_id.hex(),
            provider: k.params.provider(),
            description: describe_slot(k),
            created: k.created.clone(),
        })
        .collect();
    Ok((chain, rows))
}

/// The secret a new keyslot is made from.
pub enum NewSlot<'a> {
    Kms(&'a str),
    Kmip(&'a str),
    /// A named password (its stored hash, or a new password from the passphrase given).
    Password(&'a str),
    /// The raw key given by --key-file or ARCA_KEY.
    RawKey,
}

/// Adds a keyslot to a job's current chain (its keys must resolve first).
pub async fn add_keyslot(s: &Session, name: &str, new: NewSlot<'_>) -> Result<SlotView> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, None)?;
    let _locks = super::lifecycle::lock_chain(s, &h.repo, &h.job.chain_id)?;
    // A passphrase or key given here is the new keyslot's, not the chain's.
    let explicit = matches!(new, NewSlot::Kms(_) | NewSlot::Kmip(_));
    let (oc, _) = open_chain_with(s, &cat, &h, &h.job.chain_id, None, false, explicit).await?;
    if oc.chain.encryption == EncryptionMode::None {
        return Err(Error::Usage(format!(
            "job '{name}' is not encrypted; deactivate it and `arca job activate {name} --encryption MODE` starts an encrypted chain"
        )));
    }
    let slot = match &new {
        NewSlot::Kms(k) => {
            kms_provider(s, name, k)
                .await?
                .wrap(&oc.chain_key, &oc.ctx)
                .await
        }
        NewSlot::Kmip(k) => {
            kmip_provider(s, name, k)?
                .wrap(&oc.chain_key, &oc.ctx)
                .await
        }
        NewSlot::Password(pw) => {
            validate_job_name(pw)?;
            password_provider(s, &cat, pw)
                .await?
                .wrap(&oc.chain_key, &oc.ctx)
                .await
        }
        NewSlot::RawKey => {
            let (p, _) = s.creds.raw_key(None)?.ok_or_else(|| {
                Error::Usage("--raw-key needs --key-file FILE or ARCA_KEY".into())
            })?;
            p.wrap(&oc.chain_key, &oc.ctx).await
        }
    }
    .map_err(|e| Error::KeysUnavailable {
        job: name.to_string(),
        detail: e.to_string(),
    })?;
    note_kmip_mode(s, &slot);
    let view = SlotView {
        slot_id: slot.slot_id.hex(),
        provider: slot.params.provider(),
        description: describe_slot(&slot),
        created: slot.created.clone(),
    };
    let mut chain = oc.chain.clone();
    chain.keyslots.push(slot);
    chain.revision += 1;
    chain.seal(&oc.chain_key);
    let oc = crate::engine::OpenChain::new(chain, oc.chain_key.duplicate(), name)?;
    h.repo.write_chain(&oc.chain)?;
    pin_open_chain(&cat, &h.job.job_id, &oc)?;
    if let NewSlot::Password(pw) = new {
        // Points made before the chain had a passphrase keyslot record no salt yet: record
        // it (public metadata bound to the data key; nothing is re-encrypted).
        if let Some(kdf) = oc.chain.point_kdf(Some(pw)) {
            for p in crate::engine::chain_points(&h.repo, &h.job.job_id, &oc.chain.chain_id)? {
                if p.kdf.is_none() {
                    crate::engine::rebind_point(&h.repo, &oc, p, |p| p.kdf = Some(kdf.clone()))?;
                }
            }
        }
        escrow_if_enabled(s, &cat, &h.repo, &h.job.job_id, name, pw).await?;
    }
    Ok(view)
}

/// Removes a keyslot (by id prefix) from a job's current chain; never the last one.
pub async fn remove_keyslot(s: &Session, name: &str, prefix: &str) -> Result<SlotView> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, None)?;
    let _locks = super::lifecycle::lock_chain(s, &h.repo, &h.job.chain_id)?;
    let (oc, _) = open_chain(s, &cat, &h, &h.job.chain_id, None, false).await?;
    let mut chain = oc.chain.clone();
    let matches: Vec<usize> = chain
        .keyslots
        .iter()
        .enumerate()
        .filter(|(_, k)| k.slot_id.hex().starts_with(&prefix.to_ascii_lowercase()))
        .map(|(i, _)| i)
        .collect();
    let i = match matches.as_slice() {
        [i] => *i,
        [] => {
            return Err(Error::NotFound(format!(
                "job '{name}' has no keyslot {prefix}; `arca job keys list {name}` shows them"
            )))
        }
        _ => {
            return Err(Error::Usage(format!(
                "several keyslots start with {prefix}; give more digits"
            )))
        }
    };
    if chain.keyslots.len() == 1 {
        return Err(Error::Usage(format!(
            "keyslot {prefix} is the last one of job '{name}': removing it would make every recovery point of the chain unreadable"
        )));
    }
    let removed = chain.keyslots.remove(i);
    chain.revision += 1;
    chain.seal(&oc.chain_key);
    let oc = crate::engine::OpenChain::new(chain, oc.chain_key.duplicate(), name)?;
    h.repo.write_chain(&oc.chain)?;
    pin_open_chain(&cat, &h.job.job_id, &oc)?;
    Ok(SlotView {
        slot_id: removed.slot_id.hex(),
        provider: removed.params.provider(),
        description: describe_slot(&removed),
        created: removed.created.clone(),
    })
}

/// `arca job set`: a new source and/or new excludes for a job. A new source rewrites the job
/// record (authenticated under the chain key; its revision rises) and the catalog's pin of
/// the source, so a repository that still says the old source is refused afterwards. Returns
/// what changed, as sentences.
pub async fn set_job(
    s: &Session,
    name: &str,
    source: Option<&Path>,
    filters: Option<crate::engine::filter::Filters>,
) -> Result<Vec<String>> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, None)?;
    let mut changed = Vec::new();
    if let Some(f) = &filters {
        let root = source
            .map(Path::to_path_buf)
            .unwrap_or_else(|| std::path::PathBuf::from(&h.job.source));
        f.compile(&root)?;
    }
    if let Some(src) = source {
        let abs = std::fs::canonicalize(src)
            .map_err(|e| Error::io(format!("source {}", src.display()), e))?;
        let new = abs.display().to_string();
        if new != h.job.source {
            let _locks = super::lifecycle::lock_chain(s, &h.repo, &h.job.chain_id)?;
            let (oc, _) = open_chain(s, &cat, &h, &h.job.chain_id, None, false).await?;
            let mut job = h.repo.read_job(&h.job.job_id)?;
            let old = std::mem::replace(&mut job.source, new.clone());
            job.revision += 1;
            job.seal(&oc.root);
            h.repo.write_job(&job)?;
            cat.set_job_source(name, &new)?;
            cat.set_job_revision(name, job.revision)?;
            changed.push(format!(
                "source of '{name}': {old} -> {new} (the job record and this catalog's pin changed; \
                 the next backup compares against the last point by path)"
            ));
        }
    }
    if let Some(f) = filters {
        cat.set_job_filters(&h.job.job_id, &f)?;
        changed.push(if f.is_empty() {
            format!("excludes of '{name}': none")
        } else {
            format!("excludes of '{name}' replaced")
        });
    }
    Ok(changed)
}
