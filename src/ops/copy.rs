//! Copy jobs between trust zones (`arca copy`).
//!
//! `--encrypt-on source` (the default) copies ciphertext as it is: the target repository is
//! a replica of the source one (the same repository id, to which every object is bound), so
//! the target zone never sees plaintext or keys and the copy opens with the same key
//! sources (passphrase, KMS, KMIP) as the original. A point comes with the earlier points
//! of its chain (its incremental history shares their chunks); packs are named by the hash
//! of their bytes, so what the target holds already is not copied again, and records that
//! changed (a point forgotten since) are copied anew. Packs go first, then indexes, then
//! the job, chain and escrow records, and the point records last: an interrupted copy
//! leaves only objects no point names, which `prune` of the target reclaims.
//!
//! `--encrypt-on target` re-encrypts: each point is read with the source job's keys and
//! written as a new point of a job of the target repository (`--to-job`, with its own
//! encryption: another passphrase, KMS or KMIP key), keeping the original's time, host and
//! source and naming the point it copies in its sealed body, so that copying again skips
//! what was copied. The target's deduplication applies. The files pass through a private
//! staging directory (0700, beside the catalog, removed after each point): the machine
//! running the copy sees plaintext, as it must to re-encrypt.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use serde::Serialize;

use super::{locate_job, Session};
use crate::error::{Error, Result};
use crate::repo::format::{Id16, Id32, PointRecord};
use crate::repo::{limits, LockKind, Repository};

/// Where a copy is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncryptOn {
    /// Ciphertext is copied as it is (the target never sees plaintext or keys).
    Source,
    /// The copy is re-encrypted under the target job's own keys.
    Target,
}

pub struct CopyRequest<'a> {
    pub name: &'a str,
    pub to: &'a Path,
    /// The source repository, if not the one the catalog names for the job.
    pub from: Option<&'a Path>,
    /// Point ids or prefixes; empty: every point of the job that is not forgotten.
    pub points: &'a [String],
    pub encrypt_on: EncryptOn,
    pub verify: bool,
    /// `--encrypt-on target`: the job of the target repository to copy into.
    pub to_job: Option<&'a str>,
}

/// What a copy did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    pub job: String,
    pub to: String,
    pub encrypt_on: Option<EncryptOn>,
    /// Points the target holds now because of this copy (asked for, and their history).
    pub points: Vec<String>,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    /// Objects the target already held (the same bytes): not copied.
    pub objects_present: u64,
    /// Objects read back from the target and found identical (`--verify`).
    pub objects_verified: u64,
    /// Whether the target repository was created by this copy.
    pub target_created: bool,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// Packs fetched at once when either side is remote.
const COPY_THREADS: usize = 4;

/// Copies one object; `Some(bytes)` if it was written, `None` if the target had the same.
fn copy_object(src: &Repository, dst: &Repository, key: &str, max: u64) -> Result<Option<u64>> {
    let b = src.store().get(key, max).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            Error::integrity(format!("{} in {}", key, src.root().display()), e)
        } else {
            Error::io(format!("read {}/{key}", src.root().display()), e)
        }
    })?;
    match dst.store().get(key, max) {
        Ok(t) if t == b => return Ok(None),
        _ => {}
    }
    dst.store()
        .put(key, &[&b])
        .map_err(io_err(format!("write {}/{key}", dst.root().display())))?;
    Ok(Some(b.len() as u64))
}

/// Opens the target of a source-side copy, creating it as a replica if it does not exist.
fn open_replica(src: &Repository, to: &Path) -> Result<(Repository, bool)> {
    match Repository::open(to) {
        Ok(r) if r.id() == src.id() => Ok((r, false)),
        Ok(r) => Err(Error::Usage(format!(
            "{} is another repository (id {}); a copy with --encrypt-on source goes into a replica of {} \
             (the same repository id, to which its ciphertext is bound): copy into a new or empty \
             location, or use --encrypt-on target with a job of that repository",
            to.display(),
            r.id().short(),
            src.root().display()
        ))),
        Err(Error::NotFound(_)) => Ok((Repository::init_replica(to, &src.config)?, true)),
        Err(e) => Err(e),
    }
}

/// `arca copy NAME --to REPO`.
pub async fn copy(s: &Session, req: &CopyRequest<'_>) -> Result<CopyReport> {
    match req.encrypt_on {
        EncryptOn::Source => copy_ciphertext(s, req),
        EncryptOn::Target => copy_reencrypt(s, req).await,
    }
}

fn copy_ciphertext(s: &Session, req: &CopyRequest<'_>) -> Result<CopyReport> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, req.name, req.from)?;
    let src = &h.repo;
    let mut report = CopyReport {
        job: req.name.to_string(),
        to: req.to.display().to_string(),
        encrypt_on: Some(EncryptOn::Source),
        ..Default::default()
    };
    let (dst, created) = open_replica(src, req.to)?;
    report.target_created = created;
    // Prune of the source must not remove what is being copied; the target's chains are
    // written as a backup writes them.
    let _src_lock = super::lifecycle::wait_for(s, src, || src.try_lock(LockKind::Shared))?;
    let _dst_lock = super::lifecycle::wait_for(s, &dst, || dst.try_lock(LockKind::Shared))?;

    let all = src.list_points(&h.job.job_id)?;
    let chosen: Vec<&PointRecord> = if req.points.is_empty() {
        all.iter().filter(|p| !p.is_forgotten()).collect()
    } else {
        req.points
            .iter()
            .map(|sel| super::select_point(&all, Some(sel), req.name))
            .collect::<Result<_>>()?
    };
    // Each chosen point with the earlier points of its chain.
    let mut points: Vec<&PointRecord> = Vec::new();
    let chains: BTreeSet<Id16> = chosen.iter().map(|p| p.chain_id).collect();
    for chain in &chains {
        let newest = chosen
            .iter()
            .filter(|p| p.chain_id == *chain)
            .filter_map(|p| p.time_ns())
            .max();
        points.extend(
            all.iter()
                .filter(|p| p.chain_id == *chain && p.time_ns() <= newest),
        );
    }
    let _chain_locks = chains
        .iter()
        .map(|c| super::lifecycle::wait_for(s, &dst, || dst.try_lock_chain(c)))
        .collect::<Result<Vec<_>>>()?;
    let wanted: HashSet<Id16> = points.iter().map(|p| p.point_id).collect();

    // Packs, by the point their header names (no keys are needed to copy ciphertext).
    let present: HashSet<Id32> = dst.list_packs()?.into_iter().collect();
    let mut packs: Vec<Id32> = Vec::new();
    for id in src.list_packs()? {
        if let Some((owner, _, _)) = src.pack_owner(&id)? {
            if wanted.contains(&owner) {
                if present.contains(&id) {
                    report.objects_present += 1;
                } else {
                    packs.push(id);
                }
            }
        }
    }
    // Packs are fetched by a few threads at once (each holds one pack; the target store
    // bounds its own uploads in flight).
    let total = packs.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let threads = if src.store().local_root().is_some() && dst.store().local_root().is_some() {
        1
    } else {
        COPY_THREADS
    };
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    use std::sync::atomic::Ordering::Relaxed;
                    loop {
                        let n = next.fetch_add(1, Relaxed);
                        let Some(id) = packs.get(n) else {
                            return Ok(());
                        };
                        let b = src.read_pack(id)?;
                        if Id32(*blake3::hash(&b).as_bytes()) != *id {
                            return Err(Error::integrity(
                                format!("pack {id} in {}", src.root().display()),
                                "its bytes do not match its name; the copy stops before writing it",
                            ));
                        }
                        bytes.fetch_add(b.len() as u64, Relaxed);
                        dst.write_pack_owned(id, b)?;
                        let d = done.fetch_add(1, Relaxed) + 1;
                        if d.is_multiple_of(16) {
                            s.note(format!("copied {d}/{total} packs"));
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| Error::Other("a copy thread panicked".into()))??;
        }
        Ok(())
    })?;
    report.objects_copied += total as u64;
    report.bytes_copied += bytes.into_inner();
    dst.flush()?;

    let mut tally = |r: Option<u64>| match r {
        Some(n) => {
            report.objects_copied += 1;
            report.bytes_copied += n;
        }
        None => report.objects_present += 1,
    };
    for p in &points {
        tally(copy_object(
            src,
            &dst,
            &format!("index/{}", p.point_id.hex()),
            limits::INDEX,
        )?);
    }
    tally(copy_object(
        src,
        &dst,
        &format!("jobs/{}.json", h.job.job_id),
        limits::RECORD,
    )?);
    for chain in &chains {
        tally(copy_object(
            src,
            &dst,
            &format!("chains/{chain}.json"),
            limits::RECORD,
        )?);
    }
    let prefix = format!("escrow/{}.", h.job.job_id);
    for o in src
        .store()
        .list("escrow")
        .map_err(io_err(format!("list {}/escrow", src.root().display())))?
    {
        if o.key.starts_with(&prefix) {
            tally(copy_object(src, &dst, &o.key, limits::RECORD)?);
        }
    }
    for p in &points {
        tally(copy_object(
            src,
            &dst,
            &format!("points/{}.json", p.point_id),
            limits::RECORD,
        )?);
        report.points.push(p.point_id.hex());
    }

    if req.verify {
        report.objects_verified = verify_copy(src, &dst, &points, &packs, &chains, &h.job.job_id)?;
    }
    Ok(report)
}

/// Reads back what a copy wrote (every pack it copied, every record and index of the
/// points) and compares it with the source; a pack must also hash to its name.
fn verify_copy(
    src: &Repository,
    dst: &Repository,
    points: &[&PointRecord],
    packs: &[Id32],
    chains: &BTreeSet<Id16>,
    job: &Id16,
) -> Result<u64> {
    let mut n = 0;
    for id in packs {
        let b = dst.read_pack(id)?;
        if Id32(*blake3::hash(&b).as_bytes()) != *id {
            return Err(Error::integrity(
                format!("pack {id} in {}", dst.root().display()),
                "what the copy wrote does not read back intact",
            ));
        }
        n += 1;
    }
    let mut keys: Vec<(String, u64)> = Vec::new();
    for p in points {
        keys.push((format!("index/{}", p.point_id.hex()), limits::INDEX));
        keys.push((format!("points/{}.json", p.point_id), limits::RECORD));
    }
    keys.push((format!("jobs/{job}.json"), limits::RECORD));
    keys.extend(
        chains
            .iter()
            .map(|c| (format!("chains/{c}.json"), limits::RECORD)),
    );
    for (k, max) in keys {
        let a = src
            .store()
            .get(&k, max)
            .map_err(io_err(format!("read {}/{k}", src.root().display())))?;
        let b = dst
            .store()
            .get(&k, max)
            .map_err(io_err(format!("read back {}/{k}", dst.root().display())))?;
        if a != b {
            return Err(Error::integrity(
                format!("{k} in {}", dst.root().display()),
                "what the copy wrote does not read back identical",
            ));
        }
        n += 1;
    }
    Ok(n)
}

/// A staging directory removed when dropped.
struct Stage(std::path::PathBuf);

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn copy_reencrypt(s: &Session, req: &CopyRequest<'_>) -> Result<CopyReport> {
    use crate::engine::restore::{self, RestoreOptions};
    use crate::engine::OpenPoint;
    let to_job = req.to_job.ok_or_else(|| {
        Error::Usage(
            "--encrypt-on target needs --to-job NAME: a job of the target repository, created with \
             `arca job create NAME --repo TARGET --source - --encryption ...` and its own keys"
                .into(),
        )
    })?;
    let cat = s.catalog()?;
    let h = locate_job(&cat, req.name, req.from)?;
    let th = locate_job(&cat, to_job, None)?;
    let target = Repository::open(req.to)?;
    if th.repo.id() != target.id() {
        return Err(Error::Usage(format!(
            "job '{to_job}' is in repository {}, not in {}",
            th.repo.root().display(),
            req.to.display()
        )));
    }
    if th.job.job_id == h.job.job_id {
        return Err(Error::Usage("a job cannot be copied into itself".into()));
    }
    let mut report = CopyReport {
        job: req.name.to_string(),
        to: req.to.display().to_string(),
        encrypt_on: Some(EncryptOn::Target),
        ..Default::default()
    };
    // What the target job holds already.
    let (toc, _) = super::open_chain(s, &cat, &th, &th.job.chain_id, None, false).await?;
    let mut done: HashSet<Id16> = HashSet::new();
    for p in th.repo.list_points(&th.job.job_id)? {
        if p.chain_id == th.job.chain_id && !p.is_forgotten() {
            if let Ok((_, body)) = crate::engine::open_point(&toc, &p) {
                done.extend(body.copied_from);
            }
        }
    }
    drop(toc);
    let all = h.repo.list_points(&h.job.job_id)?;
    let mut chosen: Vec<PointRecord> = if req.points.is_empty() {
        all.iter()
            .filter(|p| {
                !p.is_forgotten()
                    && p.source_kind.as_deref() != Some(crate::engine::backup::CHECKPOINT)
            })
            .cloned()
            .collect()
    } else {
        req.points
            .iter()
            .map(|sel| super::select_point(&all, Some(sel), req.name).cloned())
            .collect::<Result<_>>()?
    };
    chosen.sort_by(|a, b| {
        a.time_ns()
            .cmp(&b.time_ns())
            .then(a.point_id.cmp(&b.point_id))
    });
    chosen.dedup_by(|a, b| a.point_id == b.point_id);
    let stage_root = s
        .catalog_path
        .parent()
        .map(|d| d.join("copy-stage"))
        .unwrap_or_else(|| std::env::temp_dir().join("arca-copy-stage"));
    let mut chains: std::collections::HashMap<Id16, crate::engine::OpenChain> = Default::default();
    for p in chosen {
        if done.contains(&p.point_id) {
            report.objects_present += 1;
            report.points.push(p.point_id.hex());
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(v) = chains.entry(p.chain_id) {
            let (oc, _) = super::open_chain(s, &cat, &h, &p.chain_id, Some(&p), false).await?;
            v.insert(oc);
        }
        let oc = &chains[&p.chain_id];
        let op = OpenPoint::open(&h.repo, oc, p.clone())?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&stage_root)
                .map_err(|e| Error::io(format!("create {}", stage_root.display()), e))?;
        }
        let stage = Stage(stage_root.join(Id16::random().hex()));
        s.note(format!(
            "copying recovery point {} ({}) into job '{to_job}'",
            p.point_id.short(),
            p.time
        ));
        let opts = RestoreOptions {
            target: stage.0.clone(),
            include: Vec::new(),
            overwrite: false,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            progress: indicatif::ProgressBar::hidden(),
            partial: false,
        };
        restore::run(&h.repo, oc, &op, &opts)?;
        let origin = crate::engine::backup::Origin {
            time: p.time.clone(),
            hostname: op.body.hostname.clone(),
            source: op.body.source.clone(),
            point_id: p.point_id,
        };
        let staged = if op.body.kind == "stdin" {
            let name = op
                .body
                .source
                .strip_prefix("stdin as ")
                .unwrap_or(&op.body.source)
                .to_string();
            let path = stage.0.join(&name);
            let f = std::fs::File::open(&path)
                .map_err(|e| Error::io(format!("open staged {}", path.display()), e))?;
            super::backup::JobSource::Stream {
                name,
                reader: Box::new(f),
            }
        } else {
            super::backup::JobSource::Tree
        };
        let run = super::backup::backup_job(
            s,
            to_job,
            super::backup::JobSource::Copied {
                staged: Box::new(staged),
                dir: stage.0.clone(),
                origin,
            },
            3,
            &Default::default(),
            indicatif::ProgressBar::hidden(),
            Default::default(),
        )
        .await?;
        report.objects_copied += 1;
        report.bytes_copied += run.outcome.body.stats.bytes_stored;
        report.points.push(run.outcome.record.point_id.hex());
        if req.verify {
            // Read back the new point with the target's keys: every chunk authenticated.
            let cat = s.catalog()?;
            let th = locate_job(&cat, to_job, None)?;
            let (toc, _) = super::open_chain(s, &cat, &th, &th.job.chain_id, None, false).await?;
            let np = OpenPoint::open(&th.repo, &toc, run.outcome.record.clone())?;
            let check = Stage(stage_root.join(Id16::random().hex()));
            let vopts = RestoreOptions {
                target: check.0.clone(),
                ..opts
            };
            restore::run(&th.repo, &toc, &np, &vopts)?;
            report.objects_verified += 1;
        }
        drop(stage);
    }
    Ok(report)
}
