//! Key lifecycle: password rotation and job rekey (new key generations), escrow of
//! password hashes, activation.
//!
//! A rotation or rekey starts a new **key generation** in each chain it touches: a fresh
//! generation key, wrapped by every keyslot anew, wraps the data keys of new points; the
//! keys of earlier generations are wrapped under it (so the new secret opens every older
//! point), never the other way round (so an old secret opens no later point). Nothing but
//! the chain record changes: no point, index or pack is rewritten. Each chain moves in one
//! atomic write, and a journal in the catalog lets an interrupted rotation be finished.

use std::time::Duration;

use serde::Serialize;

use super::{locate_job, open_chain_with, pin_open_chain, JobHandle, Session};
use crate::catalog::Catalog;
use crate::crypto::{KdfParams, Passphrase, SecretKey};
use crate::engine::OpenChain;
use crate::error::{Error, Result};
use crate::keys::passphrase::{self, PasswordHashProvider};
use crate::keys::{KeyProvider, SlotContext};
use crate::repo::format::{ChainRecord, EncryptionMode, Id16, KdfRecord, Keyslot, SlotParams};
use crate::repo::{LockKind, RepoLock, Repository};

pub use crate::fault;

/// How long to wait for a lock: `--lock-wait` / `ARCA_LOCK_WAIT` (default 10 minutes).
pub fn lock_wait() -> Duration {
    std::env::var("ARCA_LOCK_WAIT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(600))
}

/// Calls `take` until it gets its lock, waiting up to the session's lock wait while another
/// process holds it (saying who, once), removing holder files of dead processes, and
/// stopping on SIGINT/SIGTERM (when the handlers are installed).
pub fn wait_for<T>(
    s: &Session,
    repo: &Repository,
    mut take: impl FnMut() -> Result<T>,
) -> Result<T> {
    let wait = s.lock_wait;
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        if let Some(signal) = crate::signals::requested() {
            return Err(Error::Interrupted {
                signal,
                detail: format!(
                    "interrupted while waiting for the lock of {}; nothing was changed",
                    repo.root().display()
                ),
            });
        }
        match take() {
            Err(Error::Locked { path, detail }) => {
                for h in repo.sweep_stale_holders() {
                    s.note(format!(
                        "removed the lock note of a process that no longer runs ({h})"
                    ));
                }
                if start.elapsed() >= wait {
                    return Err(Error::Locked {
                        path,
                        detail: format!(
                            "{detail}; waited {} (--lock-wait)",
                            humantime::format_duration(Duration::from_secs(wait.as_secs()))
                        ),
                    });
                }
                if !said {
                    s.note(format!(
                        "waiting for the lock of {}: {detail} (up to {}, --lock-wait)",
                        repo.root().display(),
                        humantime::format_duration(wait)
                    ));
                    said = true;
                }
                // Each try of a lock on S3 costs requests: poll it less often.
                std::thread::sleep(if repo.store().local_root().is_some() {
                    Duration::from_millis(100)
                } else {
                    Duration::from_secs(1)
                });
            }
            other => return other,
        }
    }
}

/// Takes the repository's exclusive lock, waiting (see [`wait_for`]).
pub fn lock_waiting(s: &Session, repo: &Repository) -> Result<RepoLock> {
    wait_for(s, repo, || repo.try_lock(LockKind::Exclusive))
}

/// The locks of a change to one chain (a backup, a rotation, a rekey, a keyslot change): the
/// repository shared (other jobs go on) and the chain exclusive.
pub fn lock_chain(s: &Session, repo: &Repository, chain: &Id16) -> Result<(RepoLock, RepoLock)> {
    let shared = wait_for(s, repo, || repo.try_lock(LockKind::Shared))?;
    let own = wait_for(s, repo, || repo.try_lock_chain(chain))?;
    Ok((shared, own))
}

/// If escrow is enabled (AWS KMS or KMIP), escrows the stored hash of `password` for a job.
pub async fn escrow_if_enabled(
    s: &Session,
    cat: &Catalog,
    repo: &Repository,
    job_id: &Id16,
    job: &str,
    password: &str,
) -> Result<()> {
    if escrow_target(cat)?.is_none() {
        return Ok(());
    }
    let (rec, hash) = cat.password_hash(password)?.ok_or_else(|| {
        Error::NotFound(format!(
            "password '{password}' has no stored hash in this catalog"
        ))
    })?;
    escrow_hash_if_enabled(s, cat, repo, job_id, job, &rec, &hash).await?;
    Ok(())
}

/// The enabled escrow target: ("aws-kms" or "kmip", key).
pub fn escrow_target(cat: &Catalog) -> Result<Option<(&'static str, String)>> {
    if let Some(k) = cat.setting(crate::passwords::ESCROW_KEY_SETTING)? {
        return Ok(Some(("aws-kms", k)));
    }
    Ok(cat
        .setting(crate::passwords::KMIP_ESCROW_KEY_SETTING)?
        .map(|k| ("kmip", k)))
}

/// Escrows a password hash (AWS KMS or KMIP, whichever is enabled) into the repository and
/// the catalog. Records are per password version (salt): this one is added beside the
/// record of an older version, which its caller removes once nothing needs it. Returns
/// whether it escrowed.
pub async fn escrow_hash_if_enabled(
    s: &Session,
    cat: &Catalog,
    repo: &Repository,
    job_id: &Id16,
    job: &str,
    rec: &KdfRecord,
    hash: &SecretKey,
) -> Result<bool> {
    let password = &rec.password;
    let unavailable = |e: crate::keys::KeyError| Error::KeysUnavailable {
        job: job.into(),
        detail: format!("escrow of password '{password}' failed: {e}"),
    };
    let e = match escrow_target(cat)? {
        Some(("aws-kms", key)) => {
            let client = s.creds.kms_client().await.map_err(unavailable)?;
            crate::passwords::escrow(&client, &key, &repo.id(), job_id, job, rec, hash)
                .await
                .map_err(unavailable)?
        }
        Some((_, key)) => {
            let client = s.creds.kmip_client().map_err(unavailable)?;
            crate::passwords::escrow_kmip(client, &key, &repo.id(), job_id, job, rec, hash)
                .await
                .map_err(unavailable)?
        }
        None => return Ok(false),
    };
    repo.write_escrow(&e)?;
    fault::wrote("repository: escrow record");
    cat.upsert_escrow(&e)?;
    fault::wrote("catalog: escrow record");
    s.note(format!(
        "escrowed the hash of password '{password}' for job '{job}' with {} key {}",
        e.provider, e.key_arn
    ));
    Ok(true)
}

/// Re-wraps `key` (a new generation key) for every keyslot of `old`: the same providers,
/// except that the passphrase slot of `replace.0` (a password version) is wrapped by
/// `replace.1` instead. Fails, before anything is written, if a keyslot's secret is not at
/// hand (a raw key not given, a password whose hash this catalog lacks, KMS unreachable).
async fn rewrap_slots(
    s: &Session,
    cat: &Catalog,
    h: &JobHandle,
    old: &ChainRecord,
    new: &ChainRecord,
    key: &SecretKey,
    replace: Option<(&KdfRecord, &PasswordHashProvider)>,
) -> Result<Vec<Keyslot>> {
    let job = &h.job.name;
    let sctx = SlotContext::of_chain(new, job);
    let unavailable = |what: String| Error::KeysUnavailable {
        job: job.clone(),
        detail: what,
    };
    let mut out = Vec::with_capacity(old.keyslots.len());
    for slot in &old.keyslots {
        let made = match &slot.params {
            SlotParams::None { .. } => {
                return Err(Error::Usage(format!(
                    "job '{job}' is not encrypted: there are no keys to rotate"
                )))
            }
            SlotParams::Passphrase { kdf } => match replace {
                Some((from, to)) if kdf.password == from.password && kdf.salt == from.salt => {
                    to.wrap(key, &sctx).await
                }
                _ => {
                    let (rec, hash) = cat
                        .password_hash(&kdf.password)?
                        .filter(|(r, _)| r.salt == kdf.salt)
                        .ok_or_else(|| {
                            unavailable(format!(
                                "the keyslot of password '{}' cannot be re-wrapped: this catalog has no stored hash of that version of it \
                                 (open a recovery point with its passphrase once, or remove the keyslot with `arca job keys remove`)",
                                kdf.password
                            ))
                        })?;
                    PasswordHashProvider::new(rec, hash).wrap(key, &sctx).await
                }
            },
            SlotParams::Raw { fingerprint } => {
                let key_file = h.row.as_ref().and_then(|r| r.key_file.as_deref());
                let (p, _) = s.creds.raw_key(key_file)?.ok_or_else(|| {
                    unavailable(format!(
                        "the raw-key keyslot (key {fingerprint}) must be re-wrapped: give its key (--key-file or ARCA_KEY)"
                    ))
                })?;
                if p.fingerprint() != *fingerprint {
                    return Err(unavailable(format!(
                        "the raw-key keyslot is for key {fingerprint}, but the key given is {}",
                        p.fingerprint()
                    )));
                }
                p.wrap(key, &sctx).await
            }
            SlotParams::Kms { key_arn, .. } => {
                let client = s
                    .creds
                    .kms_client_for(key_arn)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                crate::keys::aws_kms::KmsProvider::new(client, Some(key_arn.clone()))
                    .wrap(key, &sctx)
                    .await
            }
            SlotParams::Kmip { key_uid, .. } | SlotParams::KmipEncrypt { key_uid, .. } => {
                let client = s
                    .creds
                    .kmip_client()
                    .map_err(|e| unavailable(e.to_string()))?;
                crate::keys::kmip::KmipProvider::new(client, Some(key_uid.clone()))
                    .wrap(key, &sctx)
                    .await
            }
        }
        .map_err(|e| {
            unavailable(format!(
                "re-wrapping the {} keyslot failed: {e}",
                slot.params.provider()
            ))
        })?;
        out.push(made);
    }
    Ok(out)
}

/// Moves one open chain to a new key generation (one atomic write of its record), pins the
/// result, and returns the new generation number and how many points the chain has.
async fn advance(
    s: &Session,
    cat: &Catalog,
    h: &JobHandle,
    oc: &OpenChain,
    replace: Option<(&KdfRecord, &PasswordHashProvider)>,
) -> Result<(u32, usize)> {
    let ids: Vec<Id16> = h
        .repo
        .list_points(&h.job.job_id)?
        .iter()
        .filter(|p| p.chain_id == oc.chain.chain_id)
        .map(|p| p.point_id)
        .collect();
    let (mut chain, key) = oc.next_generation(&ids);
    chain.keyslots = rewrap_slots(s, cat, h, &oc.chain, &chain, &key, replace).await?;
    chain.seal(&key);
    let generation = chain.current_generation();
    // The new record must open, with the new key, to what we meant, before it replaces the
    // old one.
    let reopened = OpenChain::new(chain, key, &h.job.name)?;
    h.repo.write_chain(&reopened.chain)?;
    fault::wrote("repository: chain record");
    if h.row.is_some() {
        pin_open_chain(cat, &h.job.job_id, &reopened)?;
        fault::wrote("catalog: chain pin");
    }
    Ok((generation, ids.len()))
}

/// What a rotation did, per job.
#[derive(Debug, Serialize)]
pub struct RotatedJob {
    pub job: String,
    /// Chains moved to a new generation by this run (a resumed run skips those done).
    pub chains: Vec<RotatedChain>,
}

#[derive(Debug, Serialize)]
pub struct RotatedChain {
    pub chain_id: String,
    pub generation: u32,
    pub points: usize,
}

#[derive(Debug, Serialize)]
pub struct Rotation {
    pub password: String,
    /// True when this run finished a rotation an earlier run began.
    pub resumed: bool,
    pub jobs: Vec<RotatedJob>,
    pub escrowed: bool,
}

/// `arca password rotate`: moves every chain protected by password `name` to a new key
/// generation whose keyslot is made from `new_pass`; the old passphrase opens nothing
/// afterwards, not even with a copy of the repository's metadata taken before. Interrupted,
/// it leaves each chain on exactly one of the two passwords; running it again (with the
/// same new passphrase) finishes it.
pub async fn rotate_password(s: &Session, name: &str, new_pass: &Passphrase) -> Result<Rotation> {
    let cat = s.catalog()?;
    let journal = cat.rotation(name)?;
    let stored = cat.password_hash(name)?;
    let resumed = journal.is_some();
    let (old, new, new_hash) = match journal {
        Some((started, old, new, hash)) => {
            let given = passphrase::derive_for(&new, new_pass, s.creds.allow_expensive_kdf)
                .map_err(|e| Error::Other(e.to_string()))?;
            if given.expose() != hash.expose() {
                return Err(Error::Usage(format!(
                    "a rotation of password '{name}' to another new passphrase began at {started} and was interrupted; \
                     run it again with that same new passphrase to finish it"
                )));
            }
            s.note(format!(
                "finishing the rotation of password '{name}' begun at {started}"
            ));
            (old, new, hash)
        }
        None => {
            let (old, old_hash) = stored.as_ref().ok_or_else(|| {
                Error::NotFound(format!(
                    "password '{name}' has no stored hash in this catalog; restore it first (any restore with the passphrase, \
                     or `arca catalog rebuild --repo DIR` with ARCA_PASSPHRASE)"
                ))
            })?;
            let same = passphrase::derive_for(old, new_pass, s.creds.allow_expensive_kdf)
                .map_err(|e| Error::Other(e.to_string()))?;
            if same.expose() == old_hash.expose() {
                return Err(Error::Usage(format!(
                    "the new passphrase of password '{name}' is the old one; nothing was changed \
                     (to renew the keys with the same passphrase, use `arca job rekey JOB`)"
                )));
            }
            let params = KdfParams::for_new_password().map_err(|e| Error::Usage(e.to_string()))?;
            let (new, hash) = passphrase::new_password(name, new_pass, params)
                .map_err(|e| Error::Other(e.to_string()))?;
            (old.clone(), new, hash)
        }
    };
    crate::signals::install();
    // Every repository involved is locked before the first write (a backup running now
    // finishes first; its point then moves with the rest).
    let mut handles = Vec::new();
    for job in cat.jobs_using_password(name)? {
        handles.push(locate_job(&cat, &job, None)?);
    }
    let mut locks = Vec::new();
    for h in &handles {
        for c in h.job.all_chains() {
            let (a, b) = lock_chain(s, &h.repo, &c)?;
            locks.push(a);
            locks.push(b);
        }
    }
    let stop = |done: usize| -> Result<()> {
        match crate::signals::requested() {
            Some(signal) => Err(Error::Interrupted {
                signal,
                detail: format!(
                    "rotation of password '{name}' interrupted after {done} chain(s): each point still opens with \
                     exactly one of the two passphrases; run `arca password rotate {name}` again with the same \
                     new passphrase to finish it"
                ),
            }),
            None => Ok(()),
        }
    };
    let mut done = 0;
    if !resumed {
        cat.begin_rotation(&old, &new, &new_hash)?;
        fault::wrote("catalog: rotation journal");
    }
    let new_p = PasswordHashProvider::new(new.clone(), new_hash.duplicate());
    let mut escrowed = false;
    let mut report = Vec::new();
    for h in &handles {
        // 1. The new hash is escrowed before anything needs it, beside the old record (again
        //    when resuming: the repository and the catalog may hold it or not).
        escrowed |= escrow_hash_if_enabled(
            s,
            &cat,
            &h.repo,
            &h.job.job_id,
            &h.job.name,
            &new,
            &new_hash,
        )
        .await?;
        // 2. Each chain with a keyslot of the old version moves, in one write.
        let mut chains = Vec::new();
        for chain_id in h.job.all_chains() {
            let chain = h.repo.read_chain(&chain_id)?;
            let has = |k: &KdfRecord| {
                chain.keyslots.iter().any(|sl| {
                    matches!(&sl.params, SlotParams::Passphrase { kdf } if kdf.password == k.password && kdf.salt == k.salt)
                })
            };
            if !has(&old) {
                continue;
            }
            stop(done)?;
            let (oc, _) = open_chain_with(s, &cat, h, &chain_id, None, false, false).await?;
            let (generation, points) = advance(s, &cat, h, &oc, Some((&old, &new_p))).await?;
            done += 1;
            chains.push(RotatedChain {
                chain_id: chain_id.hex(),
                generation,
                points,
            });
        }
        report.push(RotatedJob {
            job: h.job.name.clone(),
            chains,
        });
    }
    // 3. The catalog's password now is the new version.
    if stored.as_ref().is_none_or(|(r, _)| r.salt != new.salt) {
        cat.create_password(&new, "", &new_hash)?;
        fault::wrote("catalog: password hash");
    }
    // 4. Only now do the old version's escrow records go.
    for h in &handles {
        if h.repo
            .list_escrow(Some(&h.job.job_id))?
            .iter()
            .any(|e| e.kdf.password == name && e.kdf.salt == old.salt)
        {
            h.repo.delete_escrow(&h.job.job_id, name, Some(&old.salt))?;
            fault::wrote("repository: old escrow record removed");
        }
        cat.delete_escrow(&h.job.job_id, name, Some(&old.salt))?;
    }
    cat.end_rotation(name)?;
    fault::wrote("catalog: rotation journal closed");
    drop(locks);
    Ok(Rotation {
        password: name.to_string(),
        resumed,
        jobs: report,
        escrowed,
    })
}

/// What a rekey did.
#[derive(Debug, Serialize)]
pub struct Rekey {
    pub job: String,
    pub chain_id: String,
    pub generation: u32,
}

/// `arca job rekey`: the job's current chain moves to a new key generation with the same
/// secrets (every keyslot re-wrapped): points written from now on are under keys no
/// earlier copy of the repository's metadata leads to.
pub async fn rekey_job(s: &Session, name: &str) -> Result<Rekey> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, None)?;
    crate::signals::install();
    let _locks = lock_chain(s, &h.repo, &h.job.chain_id)?;
    let (oc, _) = open_chain_with(s, &cat, &h, &h.job.chain_id, None, false, true).await?;
    if oc.chain.encryption == EncryptionMode::None {
        return Err(Error::Usage(format!(
            "job '{name}' is not encrypted: there are no keys to renew"
        )));
    }
    let (generation, _) = advance(s, &cat, &h, &oc, None).await?;
    Ok(Rekey {
        job: name.to_string(),
        chain_id: oc.chain.chain_id.hex(),
        generation,
    })
}

/// One escrow record as the catalog and the repositories see it.
#[derive(Debug, Serialize)]
pub struct EscrowView {
    pub job: String,
    pub password: String,
    pub provider: String,
    pub key: String,
    pub created: String,
    pub in_catalog: bool,
    pub in_repository: bool,
}

#[derive(Debug, Serialize)]
pub struct EscrowStatus {
    pub enabled: bool,
    /// "aws-kms" or "kmip" (whichever was asked about).
    pub target: &'static str,
    pub key: Option<String>,
    pub records: Vec<EscrowView>,
    /// Disagreements between the catalog and the repositories, in words.
    pub problems: Vec<String>,
}

/// Escrow as the catalog and every repository of its jobs hold it: both sides are listed,
/// and a record one side lacks is a problem (a reinstall restores from the repository).
pub fn escrow_status(s: &Session, kmip: bool) -> Result<EscrowStatus> {
    let cat = s.catalog()?;
    let (setting, target) = if kmip {
        (crate::passwords::KMIP_ESCROW_KEY_SETTING, "kmip")
    } else {
        (crate::passwords::ESCROW_KEY_SETTING, "aws-kms")
    };
    let is_target = |provider: &str| provider.starts_with("kmip") == kmip;
    let key = cat.setting(setting)?;
    let in_cat = cat.escrow_records(None)?;
    let mut records: Vec<EscrowView> = Vec::new();
    let mut problems = Vec::new();
    for e in in_cat.iter().filter(|e| is_target(&e.provider)) {
        records.push(EscrowView {
            job: e.job.clone(),
            password: e.kdf.password.clone(),
            provider: e.provider.clone(),
            key: e.key_arn.clone(),
            created: e.created.clone(),
            in_catalog: true,
            in_repository: false,
        });
    }
    for row in cat.list_jobs()? {
        let repo = match Repository::open(&row.repo_path) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("job '{}': repository unreadable: {e}", row.name));
                continue;
            }
        };
        for e in repo.list_escrow(Some(&row.job_id))? {
            if !is_target(&e.provider) {
                continue;
            }
            let twin = in_cat.iter().position(|c| {
                c.job_id == e.job_id && c.kdf == e.kdf && c.ciphertext == e.ciphertext
            });
            match twin.and_then(|_| {
                records.iter_mut().find(|r| {
                    r.in_catalog
                        && r.job == e.job
                        && r.password == e.kdf.password
                        && r.created == e.created
                })
            }) {
                Some(r) => r.in_repository = true,
                None => records.push(EscrowView {
                    job: row.name.clone(),
                    password: e.kdf.password.clone(),
                    provider: e.provider.clone(),
                    key: e.key_arn.clone(),
                    created: e.created.clone(),
                    in_catalog: false,
                    in_repository: true,
                }),
            }
        }
    }
    for r in &records {
        if !r.in_repository {
            problems.push(format!(
                "the escrow record of password '{}' for job '{}' is in the catalog but not in the repository: \
                 a reinstall could not use it (`arca {} escrow enable --key KEY` writes it again)",
                r.password,
                r.job,
                if kmip { "kmip" } else { "kms" }
            ));
        } else if !r.in_catalog {
            problems.push(format!(
                "the repository holds an escrow record of password '{}' for job '{}' that this catalog does not list",
                r.password, r.job
            ));
        }
    }
    if key.is_none() && records.iter().any(|r| r.in_repository) {
        problems.push(format!(
            "escrow is disabled in this catalog, but the repositories hold escrow records \
             (`arca catalog rebuild --repo DIR` or `arca {} escrow enable --key KEY` restores the setting)",
            if kmip { "kmip" } else { "kms" }
        ));
    }
    Ok(EscrowStatus {
        enabled: key.is_some(),
        target,
        key,
        records,
        problems,
    })
}

fn escrow_settings(kmip: bool) -> (&'static str, &'static str) {
    if kmip {
        (
            crate::passwords::KMIP_ESCROW_KEY_SETTING,
            crate::passwords::ESCROW_KEY_SETTING,
        )
    } else {
        (
            crate::passwords::ESCROW_KEY_SETTING,
            crate::passwords::KMIP_ESCROW_KEY_SETTING,
        )
    }
}

/// Turns escrow on (AWS KMS, or KMIP when `kmip`) with `key`, after checking the key can be
/// used, and escrows every password hash of every job now. Returns the key's full id and
/// how many hashes were escrowed.
pub async fn escrow_enable(s: &Session, kmip: bool, key: &str) -> Result<(String, usize)> {
    let cat = s.catalog()?;
    let (setting, other) = escrow_settings(kmip);
    if cat.setting(other)?.is_some() {
        return Err(Error::Usage(
            "escrow to the other key manager is enabled: disable it first (one escrow target at a time)".into(),
        ));
    }
    let unavailable = |e: crate::keys::KeyError| Error::KeysUnavailable {
        job: String::new(),
        detail: e.to_string(),
    };
    let key_id = if kmip {
        let c = s.creds.kmip_client().map_err(unavailable)?;
        let k = key.to_string();
        tokio::task::spawn_blocking(move || {
            c.resolve(&k).and_then(|uid| c.fetch(&uid).map(|_| uid))
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .map_err(unavailable)?
    } else {
        s.creds
            .kms_client()
            .await
            .map_err(unavailable)?
            .check_key(key)
            .await
            .map_err(unavailable)?
            .arn
    };
    cat.set_setting(setting, Some(&key_id))?;
    let mut n = 0;
    for p in cat.list_passwords()? {
        for j in cat.jobs_using_password(&p.name)? {
            let h = locate_job(&cat, &j, None)?;
            escrow_if_enabled(s, &cat, &h.repo, &h.job.job_id, &j, &p.name).await?;
            n += 1;
        }
    }
    Ok((key_id, n))
}

/// Turns escrow off and deletes every escrow record from the catalog and the repositories.
/// Returns how many records were deleted.
pub fn escrow_disable(s: &Session, kmip: bool) -> Result<usize> {
    let cat = s.catalog()?;
    let (setting, _) = escrow_settings(kmip);
    let mut n = 0;
    let jobs = cat.list_jobs()?;
    for r in cat.escrow_records(None)? {
        if let Some(row) = jobs.iter().find(|j| j.job_id == r.job_id) {
            if let Ok(repo) = Repository::open(&row.repo_path) {
                repo.delete_escrow(&r.job_id, &r.kdf.password, None)?;
            }
        }
        cat.delete_escrow(&r.job_id, &r.kdf.password, None)?;
        n += 1;
    }
    cat.set_setting(setting, None)?;
    Ok(n)
}

/// `arca password create`: a named password from a passphrase (its Argon2id hash is stored
/// sealed in the catalog; the passphrase never is).
pub fn create_password(
    s: &Session,
    name: &str,
    description: &str,
    pass: &Passphrase,
) -> Result<()> {
    super::validate_job_name(name)?;
    let cat = s.catalog()?;
    if cat.password(name)?.is_some() {
        return Err(Error::Usage(format!("password '{name}' already exists")));
    }
    let params = KdfParams::for_new_password().map_err(|e| Error::Usage(e.to_string()))?;
    let (rec, hash) =
        passphrase::new_password(name, pass, params).map_err(|e| Error::Other(e.to_string()))?;
    cat.create_password(&rec, description, &hash)
}

/// `arca kmip create-key`: creates and activates an AES-256 key with this name on the KMIP
/// server; returns its unique identifier.
pub async fn kmip_create_key(s: &Session, name: &str) -> Result<String> {
    let unavailable = |e: crate::keys::KeyError| Error::KeysUnavailable {
        job: String::new(),
        detail: e.to_string(),
    };
    let client = s.creds.kmip_client().map_err(unavailable)?;
    let n = name.to_string();
    tokio::task::spawn_blocking(move || client.create_key(&n))
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .map_err(unavailable)
}
