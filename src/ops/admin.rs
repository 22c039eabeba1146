//! Repository administration: migration from format 1, adopting a repository's jobs
//! (`job adopt`, `catalog rebuild`).

use std::path::Path;

use super::{job_points, open_chain, open_chain_with, pin_open_chain, JobHandle, Session};
use crate::catalog::{Catalog, JobRow, PointRow};
use crate::engine::{open_point, OpenChain};
use crate::error::{Error, Result};
use crate::repo::format::{EncryptionMode, Id16, JobRecord, SlotParams, FORMAT_V1, FORMAT_VERSION};
use crate::repo::Repository;

/// Accepts what a repository says about one job: registers it in the catalog and pins the
/// chains whose keys resolve (mode, key check value, revision, KMS/KMIP keys), the job
/// record's revision and its newest authenticated recovery point. The explicit act behind
/// `job adopt` and `catalog rebuild`.
pub async fn adopt_job(
    s: &Session,
    cat: &Catalog,
    dir: &Path,
    job: &JobRecord,
) -> Result<serde_json::Value> {
    let repo = Repository::open(dir)?;
    cat.add_repository(&repo.id(), repo.root())?;
    let existing = cat.job(&job.name)?;
    let h = JobHandle {
        repo: Repository::open(dir)?,
        job: job.clone(),
        row: None,
    };
    let (points, _) = job_points(cat, &h)?;
    let mut chains: Vec<Id16> = job.all_chains();
    for p in &points {
        if !chains.contains(&p.chain_id) {
            chains.push(p.chain_id);
        }
    }
    let mut open: std::collections::HashMap<Id16, OpenChain> = Default::default();
    let mut key_note = None;
    for c in &chains {
        match open_chain(s, cat, &h, c, None, false).await {
            Ok((oc, _)) => {
                open.insert(*c, oc);
            }
            Err(e @ (Error::Integrity { .. } | Error::Untrusted(_))) => return Err(e),
            Err(e) => key_note = Some(e.to_string()),
        }
    }
    let current = open.get(&job.chain_id);
    let chain = match current {
        Some(oc) => oc.chain.clone(),
        None => repo.read_chain(&job.chain_id)?,
    };
    let password = chain.keyslots.iter().find_map(|s| match &s.params {
        SlotParams::Passphrase { kdf } => Some(kdf.password.clone()),
        _ => None,
    });
    let row = JobRow {
        name: job.name.clone(),
        job_id: job.job_id,
        repo_id: repo.id(),
        repo_path: repo.root().to_path_buf(),
        source: job.source.clone(),
        encryption: chain.encryption,
        password: password
            .clone()
            .filter(|p| cat.password(p).ok().flatten().is_some()),
        key_file: existing.as_ref().and_then(|e| e.key_file.clone()),
        chain_id: job.chain_id,
        created: job.created.clone(),
        job_revision: job.revision,
        latest_point: None,
        active: true,
    };
    if existing.as_ref().is_some_and(|e| e.job_id != job.job_id) {
        return Err(Error::Usage(format!(
            "the catalog already has another job named '{}'; rename or delete it first",
            job.name
        )));
    }
    cat.upsert_job(&row)?;
    cat.clear_pins(&job.job_id)?;
    for oc in open.values() {
        pin_open_chain(cat, &job.job_id, oc)?;
    }
    cat.set_job_revision(&job.name, job.revision)?;
    cat.set_repo_format_version(&repo.id(), repo.version())?;
    let mut opened = 0;
    let mut latest = None;
    for p in &points {
        let body = open
            .get(&p.chain_id)
            .and_then(|oc| open_point(oc, p).ok().map(|(_, b)| b));
        if body.is_some() {
            opened += 1;
            latest = Some(p.point_id);
        }
        cat.upsert_point(&PointRow {
            point_id: p.point_id,
            job_id: p.job_id,
            chain_id: p.chain_id,
            time: p.time.clone(),
            kind: body.as_ref().map(|b| b.kind.clone()),
            errors: body.as_ref().map(|b| b.errors.len() as u64).unwrap_or(0),
            stats: body.map(|b| b.stats),
        })?;
    }
    if let Some(l) = latest {
        cat.set_latest_point(&job.name, &l)?;
    }
    // The resolver may have stored the password hash again: attach it now.
    if row.password.is_none() {
        if let Some(pw) = password.filter(|p| cat.password(p).ok().flatten().is_some()) {
            cat.update_job_encryption(
                &job.name,
                chain.encryption,
                Some(&pw),
                row.key_file.as_deref(),
                &job.chain_id,
            )?;
        }
    }
    if chain.encryption == EncryptionMode::None {
        s.note(format!(
            "warning: job '{}' writes to chain {} which is NOT encrypted",
            job.name, job.chain_id
        ));
    }
    // Escrow survives a reinstall: records of the repository that really hold the hash of a
    // password of this chain (verified: the escrowed hash opens the chain's authenticated
    // keyslot) go back into the catalog, and with them the escrow setting. An AWS KMS key is
    // asked only if trusted (--trust-kms-key): a planted record naming someone else's key
    // must never become the key future passwords are escrowed with.
    let mut escrow = None;
    if let Some(oc) = open.get(&job.chain_id) {
        for e in repo.list_escrow(Some(&job.job_id))? {
            let Some(slot) = oc
                .chain
                .keyslots
                .iter()
                .find(|s| matches!(&s.params, SlotParams::Passphrase { kdf } if *kdf == e.kdf))
            else {
                continue;
            };
            let kmip = e.provider.starts_with("kmip");
            if !kmip && !s.creds.kms.trusted_keys.contains(&e.key_arn) {
                s.note(format!(
                    "escrow record of password '{}' (KMS key {}) not restored: pass --trust-kms-key {} to verify and keep it",
                    e.kdf.password, e.key_arn, e.key_arn
                ));
                continue;
            }
            use crate::keys::KeyProvider;
            let verified = match crate::passwords::open_record(&s.creds, &e).await {
                Ok(hash) => matches!(
                    crate::keys::passphrase::PasswordHashProvider::new(e.kdf.clone(), hash)
                        .unwrap(slot, &oc.ctx)
                        .await,
                    Some(Ok(_))
                ),
                Err(_) => false,
            };
            if !verified {
                s.note(format!(
                    "escrow record of password '{}' ({} key {}) does not open the job's keyslot: not restored",
                    e.kdf.password, e.provider, e.key_arn
                ));
                continue;
            }
            cat.upsert_escrow(&e)?;
            let (setting, other) = if kmip {
                (
                    crate::passwords::KMIP_ESCROW_KEY_SETTING,
                    crate::passwords::ESCROW_KEY_SETTING,
                )
            } else {
                (
                    crate::passwords::ESCROW_KEY_SETTING,
                    crate::passwords::KMIP_ESCROW_KEY_SETTING,
                )
            };
            if cat.setting(setting)?.is_none() && cat.setting(other)?.is_none() {
                cat.set_setting(setting, Some(&e.key_arn))?;
                s.note(format!(
                    "escrow: enabled again from the repository's verified records ({} key {})",
                    e.provider, e.key_arn
                ));
            }
            escrow = Some(format!("{} {}", e.provider, e.key_arn));
        }
    }
    Ok(serde_json::json!({
        "job": job.name, "points": points.len(), "points_opened": opened,
        "encryption": chain.encryption.as_str(), "chain_id": job.chain_id.hex(), "source": job.source,
        "chains_pinned": open.len(), "escrow": escrow,
        "key_status": key_note.map(|n| format!("not resolved: {n}")).unwrap_or("resolved".into()),
    }))
}

/// `arca catalog rebuild --repo DIR`: registers the repository and adopts each of its jobs
/// (see [`adopt_job`]); returns one report line per job.
pub async fn rebuild(s: &Session, dir: &Path) -> Result<Vec<serde_json::Value>> {
    let cat = s.catalog()?;
    let repo = Repository::open(dir)?;
    cat.add_repository(&repo.id(), repo.root())?;
    let (jobs, damaged) = repo.scan_jobs()?;
    let mut report = Vec::new();
    for d in damaged {
        report.push(serde_json::json!({"job": null, "status": format!("skipped damaged {}: {}", d.object, d.detail)}));
    }
    for job in jobs {
        if let Some(e) = cat.job(&job.name)? {
            if e.job_id != job.job_id {
                report.push(serde_json::json!({"job": job.name, "status": "skipped: the catalog has another job of this name"}));
                continue;
            }
        }
        match adopt_job(s, &cat, dir, &job).await {
            Ok(r) => report.push(r),
            Err(e) => {
                report.push(serde_json::json!({"job": job.name, "status": format!("skipped: {e}")}))
            }
        }
    }
    Ok(report)
}

/// `arca migrate --repo DIR`: format 1 → 2 in place. Chain records get a MAC (their
/// keyslots are kept as they are, covered by it), point records bind their public fields to
/// their data key (rewrapped; the body, index and packs stay byte for byte), job records get
/// a MAC and their list of chains, and `config` says version 2 last. Re-running finishes an
/// interrupted migration.
pub async fn migrate(s: &Session, dir: &Path) -> Result<Vec<serde_json::Value>> {
    let cat = s.catalog()?;
    let repo = Repository::open(dir)?;
    let _lock = super::lifecycle::lock_waiting(s, &repo)?;
    let (jobs, damaged) = repo.scan_jobs()?;
    if let Some(d) = damaged.first() {
        return Err(Error::integrity(
            d.object.clone(),
            format!("{}; repair or remove it before migrating", d.detail),
        ));
    }
    let (all_points, _) = repo.scan_points()?;
    let mut report = Vec::new();
    for job in jobs {
        let h = JobHandle {
            repo: Repository::open(dir)?,
            job: job.clone(),
            row: cat.job(&job.name)?.filter(|r| r.job_id == job.job_id),
        };
        let mut chains = job.all_chains();
        for p in all_points.iter().filter(|p| p.job_id == job.job_id) {
            if !chains.contains(&p.chain_id) {
                chains.push(p.chain_id);
            }
        }
        let mut points_done = 0;
        let mut current_key = None;
        for c in &chains {
            let (oc, _) = open_chain_with(s, &cat, &h, c, None, false, true).await?;
            // A view of the chain as version 1, to open points not migrated yet.
            let mut v1 = oc.chain.clone();
            v1.version = FORMAT_V1;
            let v1 = OpenChain::new(v1, oc.chain_key.duplicate(), &job.name)?;
            let mut chain = oc.chain.clone();
            if chain.version < FORMAT_VERSION {
                chain.revision = 1;
                chain.seal(&oc.chain_key);
                repo.write_chain(&chain)?;
            }
            let v2 = OpenChain::new(chain, oc.chain_key.duplicate(), &job.name)?;
            for p in all_points
                .iter()
                .filter(|p| p.chain_id == *c && p.job_id == job.job_id)
            {
                if p.version >= FORMAT_VERSION {
                    continue;
                }
                let (_, body) = open_point(&v1, p)?;
                let dk = v1.data_key(p)?;
                let mut np = p.clone();
                np.version = FORMAT_VERSION;
                np.data_format = FORMAT_V1;
                np.source_kind = Some(body.kind.clone());
                let w = crate::crypto::wrap_key(&oc.chain_key, &dk, &np.data_key_place());
                np.data_key = crate::repo::format::WrappedKeyJson::from(&w);
                np.seal(&dk);
                repo.write_point(&np)?;
                points_done += 1;
            }
            if h.row.is_some() {
                pin_open_chain(&cat, &job.job_id, &v2)?;
            }
            if *c == job.chain_id {
                current_key = Some(oc.chain_key.duplicate());
            }
        }
        if job.version < FORMAT_VERSION {
            let mut j = job.clone();
            j.chains = chains.clone();
            j.chains.retain(|c| *c != j.chain_id);
            j.chains.push(j.chain_id);
            j.revision = 1;
            j.seal(
                current_key
                    .as_ref()
                    .expect("the job's own chain was opened above"),
            );
            repo.write_job(&j)?;
            if h.row.is_some() {
                cat.set_job_revision(&j.name, j.revision)?;
            }
        }
        report.push(serde_json::json!({"job": job.name, "chains": chains.len(), "points_migrated": points_done}));
    }
    if repo.version() < FORMAT_VERSION {
        let mut c = repo.config.clone();
        c.version = FORMAT_VERSION;
        let mut b = serde_json::to_vec_pretty(&c).expect("config serializes");
        b.push(b'\n');
        repo.write_atomic(&[], "config", &b)?;
    }
    cat.add_repository(&repo.id(), repo.root())?;
    cat.set_repo_format_version(&repo.id(), FORMAT_VERSION)?;
    Ok(report)
}
