//! Library operations: what the CLI, the examples and the tests call. A [`Session`] holds
//! the catalog's location and the credentials; the functions here find jobs, check them
//! against what the catalog trusts, and open their chains. Key lifecycle operations
//! (rotation, rekey, activation, escrow) live in [`lifecycle`], the configuration bundle in
//! [`bundle`].

pub mod admin;
pub mod backup;
pub mod bundle;
pub mod copy;
pub mod inspect;
pub mod jobs;
pub mod lifecycle;
pub mod retention;

use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, ChainPin, JobRow};
use crate::engine::OpenChain;
use crate::error::{Error, Result};
use crate::repo::format::{Id16, JobRecord, PointRecord};
use crate::repo::Repository;
use crate::resolve::{self, Credentials};

/// The catalog and the secrets a caller has (passphrase, key file, KMS and KMIP settings).
pub struct Session {
    pub catalog_path: PathBuf,
    pub creds: Credentials,
    /// Only errors on standard error.
    pub quiet: bool,
    /// How long to wait for a lock another process holds.
    pub lock_wait: std::time::Duration,
}

impl Session {
    pub fn new(catalog_path: PathBuf, creds: Credentials) -> Self {
        Session {
            catalog_path,
            creds,
            quiet: false,
            lock_wait: lifecycle::lock_wait(),
        }
    }

    pub fn catalog(&self) -> Result<Catalog> {
        Catalog::open(&self.catalog_path)
    }

    /// A note or warning for humans, on standard error (not in quiet mode).
    pub fn note(&self, s: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", s.as_ref());
        }
    }
}

/// A job found through the catalog or straight from a repository (`--repo`).
pub struct JobHandle {
    pub repo: Repository,
    pub job: JobRecord,
    pub row: Option<JobRow>,
}

pub fn validate_job_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid name {name:?}: use 1-64 characters from A-Z a-z 0-9 - _ . (not starting with '.')"
        )))
    }
}

/// Compares a job's repository records with what the catalog trusts about it.
pub fn check_job_trust(cat: &Catalog, h: &JobHandle) -> Result<()> {
    let Some(row) = &h.row else { return Ok(()) };
    let name = &row.name;
    let adopt = format!(
        "if this change is yours (made on another machine), accept it with `arca job adopt {name} --repo {}`",
        h.repo.root().display()
    );
    let pinned_v = cat.repo_format_version(&h.repo.id())?;
    if h.repo.version() < pinned_v {
        return Err(Error::Untrusted(format!(
            "repository {} now says format version {}, but this catalog has seen version {pinned_v}: \
             a downgrade would make its metadata unauthenticated; refusing",
            h.repo.root().display(),
            h.repo.version()
        )));
    }
    if h.job.name != row.name {
        return Err(Error::Untrusted(format!(
            "job '{name}': its record in the repository now says name '{}'; refusing. {adopt}",
            h.job.name
        )));
    }
    if h.job.chain_id != row.chain_id {
        return Err(Error::Untrusted(format!(
            "job '{name}': its record in the repository names chain {}, but the catalog trusts chain {} \
             (encryption {}); refusing to follow it. {adopt}",
            h.job.chain_id,
            row.chain_id,
            row.encryption.as_str()
        )));
    }
    if h.job.source != row.source {
        return Err(Error::Untrusted(format!(
            "job '{name}': its record in the repository names source {:?}, but the catalog has {:?}; refusing. {adopt}",
            h.job.source, row.source
        )));
    }
    if h.job.revision < row.job_revision {
        return Err(Error::Untrusted(format!(
            "job '{name}': its record in the repository is revision {}, older than revision {} this catalog has seen: \
             an old record was put back; refusing",
            h.job.revision, row.job_revision
        )));
    }
    Ok(())
}

pub fn locate_job(cat: &Catalog, name: &str, repo: Option<&Path>) -> Result<JobHandle> {
    let h = locate_job_untrusted(cat, name, repo)?;
    check_job_trust(cat, &h)?;
    Ok(h)
}

/// Finds a job without comparing it with the catalog's pins (for `job adopt`).
pub fn locate_job_untrusted(cat: &Catalog, name: &str, repo: Option<&Path>) -> Result<JobHandle> {
    match repo {
        Some(dir) => {
            let repo = Repository::open(dir)?;
            let job = repo.find_job(name)?;
            let row = cat.job(name)?.filter(|r| r.job_id == job.job_id);
            Ok(JobHandle { repo, job, row })
        }
        None => {
            let row = cat.job(name)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "no job named '{name}' in the catalog {}; `arca job list` shows the jobs it has. \
                     After a reinstall, `arca catalog rebuild --repo DIR` adds a repository's jobs",
                    cat.path().display()
                ))
            })?;
            let repo = Repository::open(&row.repo_path)?;
            if repo.id() != row.repo_id {
                return Err(Error::Untrusted(format!(
                    "{} holds repository {}, not repository {} of job '{name}'; refusing",
                    row.repo_path.display(),
                    repo.id(),
                    row.repo_id
                )));
            }
            let job = match repo.read_job(&row.job_id) {
                Ok(j) => j,
                Err(Error::NotFound(_)) => {
                    return Err(Error::NotFound(format!(
                        "job '{name}' is in the catalog but not in its repository {}",
                        row.repo_path.display()
                    )))
                }
                Err(e) => return Err(e),
            };
            Ok(JobHandle {
                repo,
                job,
                row: Some(row),
            })
        }
    }
}

/// Resolves the key of a chain (for one point, when given), printing the tiers if asked,
/// and checks it against what the catalog trusts (see [`open_chain_with`]).
pub async fn open_chain(
    ctx: &Session,
    cat: &Catalog,
    h: &JobHandle,
    chain_id: &Id16,
    point: Option<&PointRecord>,
    explain: bool,
) -> Result<(OpenChain, &'static str)> {
    open_chain_with(ctx, cat, h, chain_id, point, explain, true).await
}

/// The KMS and KMIP keys a chain's keyslots use (pinned with it).
pub fn chain_kms_keys(chain: &crate::repo::format::ChainRecord) -> Vec<String> {
    use crate::repo::format::SlotParams;
    chain
        .keyslots
        .iter()
        .filter_map(|s| match &s.params {
            SlotParams::Kms { key_arn, .. } => Some(key_arn.clone()),
            SlotParams::Kmip { key_uid, .. } | SlotParams::KmipEncrypt { key_uid, .. } => {
                Some(key_uid.clone())
            }
            _ => None,
        })
        .collect()
}

/// Pins a chain whose key is open (job creation, adoption, or a legacy catalog's first use).
pub fn pin_open_chain(cat: &Catalog, job_id: &Id16, oc: &OpenChain) -> Result<()> {
    cat.pin_chain(
        job_id,
        &ChainPin {
            chain_id: oc.chain.chain_id,
            mode: oc.chain.encryption,
            check_value: hex::encode(crate::crypto::check_value(&oc.root)),
            revision: oc.chain.revision,
            kms_keys: chain_kms_keys(&oc.chain),
            generation: oc.chain.current_generation(),
            generation_check: hex::encode(crate::crypto::check_value(&oc.chain_key)),
        },
    )
}

/// `explicit`: whether a passphrase or key the user gave must open this chain.
pub async fn open_chain_with(
    ctx: &Session,
    cat: &Catalog,
    h: &JobHandle,
    chain_id: &Id16,
    point: Option<&PointRecord>,
    explain: bool,
    explicit: bool,
) -> Result<(OpenChain, &'static str)> {
    let (oc, tier, pending) =
        open_chain_inner(ctx, cat, h, chain_id, point, explain, explicit, false).await?;
    debug_assert!(pending.is_none());
    if let Some(p) = pending {
        p.wait()?;
    }
    Ok((oc, tier))
}

/// [`open_chain`], except that a given passphrase whose password's hash the catalog holds
/// may still be under check when it returns (not with `explain`, which shows every step in
/// order): the caller must [`resolve::PassphraseCheck::wait`] before anything it does
/// becomes visible (a restore: before anything reaches its target).
pub async fn open_chain_deferred(
    ctx: &Session,
    cat: &Catalog,
    h: &JobHandle,
    chain_id: &Id16,
    point: Option<&PointRecord>,
    explain: bool,
) -> Result<(OpenChain, &'static str, Option<resolve::PassphraseCheck>)> {
    open_chain_inner(ctx, cat, h, chain_id, point, explain, true, !explain).await
}

#[allow(clippy::too_many_arguments)]
async fn open_chain_inner(
    ctx: &Session,
    cat: &Catalog,
    h: &JobHandle,
    chain_id: &Id16,
    point: Option<&PointRecord>,
    explain: bool,
    explicit: bool,
    defer: bool,
) -> Result<(OpenChain, &'static str, Option<resolve::PassphraseCheck>)> {
    let chain = h.repo.read_chain(chain_id)?;
    let name = &h.job.name;
    let pins = match &h.row {
        Some(_) => cat.chain_pins(&h.job.job_id)?,
        None => Vec::new(),
    };
    let pin = pins.iter().find(|p| p.chain_id == *chain_id).cloned();
    // A job created by arca 0.1 (no job-record revision seen) has its chains pinned one by
    // one as they are first opened; a job of format 2 only ever trusts pinned chains.
    let legacy = h.row.as_ref().is_some_and(|r| r.job_revision == 0);
    if !pins.is_empty() && (pin.is_some() || !legacy) {
        let Some(pin) = &pin else {
            return Err(Error::Untrusted(format!(
                "chain {chain_id} is not a chain this catalog trusts for job '{name}' (it trusts {}); \
                 refusing to use it",
                pins.iter().map(|p| p.chain_id.hex()).collect::<Vec<_>>().join(", ")
            )));
        };
        if chain.encryption != pin.mode {
            return Err(Error::Untrusted(format!(
                "chain {chain_id} of job '{name}' now says encryption {}, but the catalog pinned {}; refusing",
                chain.encryption.as_str(),
                pin.mode.as_str()
            )));
        }
        if chain.revision < pin.revision {
            return Err(Error::Untrusted(format!(
                "chain {chain_id} of job '{name}': its record is revision {}, older than revision {} \
                 this catalog has seen (an old keyslot list was put back); refusing",
                chain.revision, pin.revision
            )));
        }
        if chain.current_generation() < pin.generation {
            return Err(Error::Untrusted(format!(
                "chain {chain_id} of job '{name}': its record is at key generation {}, older than generation {} \
                 this catalog has seen (a record from before a rotation was put back); refusing",
                chain.current_generation(),
                pin.generation
            )));
        }
    } else if chain.encryption == crate::repo::format::EncryptionMode::None {
        ctx.note(format!(
            "warning: chain {chain_id} of job '{name}' is NOT encrypted, and no catalog pins what this job trusts"
        ));
    }
    if h.repo.version() < 2 {
        ctx.note(format!(
            "warning: repository {} is in format version 1 (arca 0.1): its metadata is not authenticated; upgrade it with `arca migrate --repo {}`",
            h.repo.root().display(),
            h.repo.root().display()
        ));
    }
    let mut allowed = ctx.creds.kms.trusted_keys.clone();
    // The escrow key this catalog was told to use is trusted too.
    allowed.extend(cat.setting(crate::passwords::ESCROW_KEY_SETTING)?);
    match &pin {
        Some(p) => allowed.extend(p.kms_keys.iter().cloned()),
        None if legacy => {
            // A job created by arca 0.1 has no pins yet: trust what its chain names, once
            // (the keys are pinned below as soon as the chain opens).
            allowed.extend(chain_kms_keys(&chain));
        }
        None => {}
    }
    let escrow = h.repo.list_escrow(Some(&h.job.job_id))?;
    let req = resolve::Request {
        job_name: &h.job.name,
        chain,
        point_kdf: point.map(|p| p.kdf.as_ref()),
        point_generation: point.map(|p| p.key_generation()),
        point_label: point.map(|p| format!("recovery point {}", p.point_id)),
        catalog: Some(cat),
        creds: &ctx.creds,
        job_key_file: h.row.as_ref().and_then(|r| r.key_file.as_deref()),
        escrow: &escrow,
        tiers: resolve::Tiers::ALL,
        allowed_kmip: pin.as_ref().map(|p| {
            let mut v = p.kms_keys.clone();
            v.extend(
                cat.setting(crate::passwords::KMIP_ESCROW_KEY_SETTING)
                    .ok()
                    .flatten(),
            );
            v
        }),
        allowed_kms: allowed,
        explicit,
        defer_passphrase_check: defer,
    };
    let print = |attempts: &[resolve::Attempt]| {
        if explain {
            for (i, a) in attempts.iter().enumerate() {
                eprintln!(
                    "  {}. {:<10} {} {}",
                    i + 1,
                    a.tier,
                    if a.ok { "opened:" } else { "failed:" },
                    a.detail
                );
            }
        }
    };
    if explain {
        eprintln!("resolving keys of job '{}' chain {}:", h.job.name, chain_id);
    }
    let (oc, tier, pending) = match resolve::resolve(req).await {
        Ok(r) => {
            print(&r.attempts);
            (r.chain, r.tier, r.pending)
        }
        Err(f) => {
            print(&f.attempts);
            return Err(f.error);
        }
    };
    let check = hex::encode(crate::crypto::check_value(&oc.root));
    // The key of the newest generation the catalog has seen must be the one it pinned: a
    // record claiming a later generation must carry that key, which only its holders have.
    let generation_ok = |p: &ChainPin| {
        p.generation_check.is_empty()
            || oc
                .generation_key(p.generation)
                .is_some_and(|k| hex::encode(crate::crypto::check_value(k)) == p.generation_check)
    };
    match &pin {
        Some(p) if p.check_value != check => {
            return Err(Error::Untrusted(format!(
                "chain {chain_id} of job '{name}' opened, but with another key than the one the catalog pinned; refusing"
            )))
        }
        Some(p) if !generation_ok(p) => {
            return Err(Error::Untrusted(format!(
                "chain {chain_id} of job '{name}' opened, but its key generation {} is not the one this catalog pinned \
                 (a record forged with an old key after a rotation?); refusing",
                p.generation
            )))
        }
        Some(p)
            if oc.chain.revision > p.revision
                || oc.chain.current_generation() > p.generation
                || p.generation_check.is_empty() =>
        {
            pin_open_chain(cat, &h.job.job_id, &oc)?
        }
        None if h.row.is_some() && (pins.is_empty() || legacy) => {
            pin_open_chain(cat, &h.job.job_id, &oc)?;
            if h.repo.version() >= 2 {
                cat.set_repo_format_version(&h.repo.id(), h.repo.version())?;
            }
        }
        _ => {}
    }
    // The job record is authenticated by the key of the chain it names.
    if *chain_id == h.job.chain_id && h.job.version >= 2 && !h.job.verify(&oc.root) {
        return Err(Error::integrity(
            format!("job record of '{name}'"),
            "its MAC does not verify: it was changed by someone without the job's keys",
        ));
    }
    Ok((oc, tier, pending))
}

/// A job's recovery points that belong to its trusted chains, oldest first, and the ones
/// that do not (planted in another chain, or unreadable).
/// The chains whose points count as the job's: those the catalog pinned, else (no catalog
/// entry, or nothing pinned yet) those the job record lists.
pub fn trusted_chains(cat: &Catalog, h: &JobHandle) -> Result<Vec<Id16>> {
    let mut t: Vec<Id16> = match &h.row {
        Some(row) => {
            let pins = cat.chain_pins(&h.job.job_id)?;
            let mut t: Vec<Id16> = pins.iter().map(|p| p.chain_id).collect();
            // Not pinned yet (a rebuilt catalog whose keys did not resolve, or a job created
            // by arca 0.1): the chains its job record lists.
            if pins.is_empty() || row.job_revision == 0 {
                t.extend(h.job.all_chains());
            }
            t
        }
        None => h.job.all_chains(),
    };
    t.sort();
    t.dedup();
    Ok(t)
}

/// The job's recovery points (oldest first) in the chains it trusts, without forgotten
/// ones; and the records that claim the job but are not its points (planted, or forgotten
/// ones put back).
pub fn job_points(
    cat: &Catalog,
    h: &JobHandle,
) -> Result<(Vec<PointRecord>, Vec<crate::repo::Damaged>)> {
    let trusted = trusted_chains(cat, h)?;
    // A format-1 repository authenticates nothing, so its job records do not list their
    // chains: every point of the job counts (as in arca 0.1; `arca migrate` fixes this).
    let v1 = h.repo.version() < 2;
    let forgotten = match &h.row {
        Some(_) => cat.forgotten_points(&h.job.job_id)?,
        None => Default::default(),
    };
    let (ok, bad): (Vec<PointRecord>, Vec<PointRecord>) = h
        .repo
        .list_points(&h.job.job_id)?
        .into_iter()
        // Forgotten points are not points any more (their records only hold keys).
        .filter(|p| !p.is_forgotten())
        .partition(|p| (v1 || trusted.contains(&p.chain_id)) && !forgotten.contains(&p.point_id));
    let bad = bad
        .into_iter()
        .map(|p| crate::repo::Damaged {
            object: format!("recovery point {}", p.point_id),
            detail: if forgotten.contains(&p.point_id) {
                "it was forgotten, but its record is back (an old copy put back, or the \
                 repository rolled back); ignored"
                    .to_string()
            } else {
                format!(
                    "it claims job '{}' but lies in chain {}, which is not a chain of this job (planted?)",
                    h.job.name, p.chain_id
                )
            },
        })
        .collect();
    Ok((ok, bad))
}

/// The catalog's latest known point must still be there: a repository that lost it (deleted
/// points, or rolled back) is reported, never silently accepted.
pub fn check_latest(h: &JobHandle, points: &[PointRecord]) -> Result<()> {
    let Some(row) = &h.row else { return Ok(()) };
    if let Some(latest) = row.latest_point {
        if !points.iter().any(|p| p.point_id == latest) {
            return Err(Error::Untrusted(format!(
                "the repository no longer has recovery point {latest}, the latest of job '{}' this catalog knows: \
                 it was deleted or the repository was rolled back. Name an older point explicitly to restore it",
                row.name
            )));
        }
    }
    Ok(())
}

/// Picks a recovery point: the latest, or the one whose id starts with `sel`.
/// The points "latest" may mean, newest first: complete tree points; a job that has none
/// (one that only backs up streams) offers its stream points.
pub fn latest_candidates(points: &[PointRecord]) -> Vec<&PointRecord> {
    let complete = points
        .iter()
        .rev()
        .filter(|p| p.source_kind.as_deref() != Some(crate::engine::backup::CHECKPOINT));
    let tree: Vec<&PointRecord> = complete
        .clone()
        .filter(|p| p.source_kind.as_deref().is_none_or(|k| k == "tree"))
        .collect();
    if tree.is_empty() {
        complete.collect()
    } else {
        tree
    }
}

pub fn select_point<'a>(
    points: &'a [PointRecord],
    sel: Option<&str>,
    job: &str,
) -> Result<&'a PointRecord> {
    match sel {
        // A checkpoint of an interrupted backup is never "latest"; nor is a stream while the
        // job has tree points (streams are their own series: `--stream NAME`).
        None | Some("latest") => latest_candidates(points).into_iter().next().ok_or_else(|| {
            Error::NotFound(format!(
                "job '{job}' has no recovery points yet; run `arca backup {job}`"
            ))
        }),
        Some(prefix) => {
            let m: Vec<_> = points
                .iter()
                .filter(|p| p.point_id.hex().starts_with(&prefix.to_ascii_lowercase()))
                .collect();
            match m.len() {
                0 => Err(Error::NotFound(format!(
                    "job '{job}' has no recovery point {prefix}; `arca points {job}` lists them"
                ))),
                1 => Ok(m[0]),
                n => Err(Error::Usage(format!(
                    "{n} recovery points of job '{job}' start with {prefix}; give more digits"
                ))),
            }
        }
    }
}
