//! Running a job: `arca backup` as a library operation.

use crate::catalog::PointRow;
use crate::engine::backup::{self, BackupOptions, BackupOutcome, Source};
use crate::error::{Error, Result};

use super::{check_latest, locate_job, open_chain_deferred, Session};

/// What to back up: the job's source tree, or a stream under a file name.
pub enum JobSource {
    Tree,
    Stream {
        name: String,
        reader: Box<dyn std::io::Read + Send>,
    },
    /// `arca copy --encrypt-on target`: a copied point's files, staged in a directory (or
    /// its stream), recorded with the time, host and source of the point copied.
    Copied {
        staged: Box<JobSource>,
        dir: std::path::PathBuf,
        origin: backup::Origin,
    },
}

/// One run of a job.
pub struct BackupRun {
    pub outcome: BackupOutcome,
    /// How the keys were resolved ("catalog", "passphrase", "kms", ...).
    pub tier: &'static str,
    /// Why it was a full backup (None for an incremental).
    pub full_reason: Option<&'static str>,
}

/// Backs up job `name` into a new recovery point (an active job only), and records it in
/// the catalog as the job's latest.
pub async fn backup_job(
    s: &Session,
    name: &str,
    source: JobSource,
    compression_level: i32,
    run_filters: &crate::engine::filter::Filters,
    progress: indicatif::ProgressBar,
    status: std::sync::Arc<crate::engine::backup::Status>,
) -> Result<BackupRun> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, None)?;
    if h.row.as_ref().is_some_and(|r| !r.active) {
        return Err(Error::Usage(format!(
            "job '{name}' is deactivated; `arca job activate {name}` resumes its backups"
        )));
    }
    let lock = super::lifecycle::lock_chain(s, &h.repo, &h.job.chain_id)?;
    // Leftovers of interrupted writes: other backups may be writing now, so only old ones.
    h.repo.clean_tmp(std::time::Duration::from_secs(3600))?;
    // A given passphrase is checked while the backup starts; nothing reaches the repository
    // before it is found right.
    let (oc, tier, check) = open_chain_deferred(s, &cat, &h, &h.job.chain_id, None, false).await?;
    if let Err(e) = check_latest(&h, &h.repo.list_points(&h.job.job_id)?) {
        // Not fatal for a backup (it only re-reads more), but never silent.
        s.note(format!("warning: {e}"));
    }
    // The password whose salt the point records: the one attached to the job, else the
    // first passphrase keyslot, whatever the chain's mode (a KMS chain may have one too).
    let want = h.row.as_ref().and_then(|r| r.password.clone());
    let kdf = oc.chain.point_kdf(want.as_deref());
    let mut filter = crate::engine::filter::Compiled::none();
    let mut origin = None;
    let source = match source {
        JobSource::Copied {
            staged,
            dir,
            origin: o,
        } => {
            origin = Some(o);
            match *staged {
                JobSource::Stream { name, reader } => Source::Stdin { name, reader },
                _ => Source::Tree(dir),
            }
        }
        JobSource::Tree => {
            let stored = match &h.row {
                Some(_) => cat.job_filters(&h.job.job_id)?,
                None => Default::default(),
            };
            filter = stored
                .merged(run_filters)
                .compile(std::path::Path::new(&h.job.source))?;
            // Totals for progress and ETA, counted alongside the backup.
            if status.totals {
                let (st, root) = (status.clone(), std::path::PathBuf::from(&h.job.source));
                let f2 = filter.clone();
                std::thread::Builder::new()
                    .name("arca-prescan".into())
                    .spawn(move || st.prescan(&root, &f2))
                    .map_err(|e| Error::Other(format!("start the pre-scan: {e}")))?;
            }
            Source::Tree(std::path::PathBuf::from(&h.job.source))
        }
        JobSource::Stream { name, reader } => Source::Stdin { name, reader },
    };
    let opts = BackupOptions {
        source,
        compression_level,
        workers: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        progress,
        status,
        kdf,
        filter,
        origin,
    };
    let other_chain_points = h
        .repo
        .list_points(&h.job.job_id)?
        .iter()
        .filter(|p| p.chain_id != h.job.chain_id)
        .count();
    crate::signals::install();
    let out = backup::run_checked(h.repo.root(), &h.job, &oc, opts, check)?;
    drop(lock);
    if let Some(signal) = out.interrupted {
        cat.upsert_point(&PointRow {
            point_id: out.record.point_id,
            job_id: out.record.job_id,
            chain_id: out.record.chain_id,
            time: out.record.time.clone(),
            kind: Some(out.body.kind.clone()),
            stats: Some(out.body.stats.clone()),
            errors: out.body.errors.len() as u64,
        })?;
        let st = &out.body.stats;
        return Err(Error::Interrupted {
            signal,
            detail: format!(
                "backup of '{name}' interrupted: the {} file(s) finished ({} bytes) are kept as checkpoint {} \
                 (not a restore point of the whole source); the repository is consistent, and the next \
                 `arca backup {name}` reuses what was stored and reads the rest",
                st.files,
                st.bytes_total,
                out.record.point_id.short()
            ),
        });
    }
    cat.set_latest_point(name, &out.record.point_id)?;
    cat.upsert_point(&PointRow {
        point_id: out.record.point_id,
        job_id: out.record.job_id,
        chain_id: out.record.chain_id,
        time: out.record.time.clone(),
        kind: Some(out.body.kind.clone()),
        stats: Some(out.body.stats.clone()),
        errors: out.body.errors.len() as u64,
    })?;
    let full_reason = out.full.then(|| {
        if out.record.parent.is_some() {
            "nothing could be reused from the chain's earlier points"
        } else if other_chain_points > 0 {
            "first backup in a new chain: the job's encryption changed, and a new chain shares nothing with the old one"
        } else {
            "first backup of the job"
        }
    });
    Ok(BackupRun {
        outcome: out,
        tier,
        full_reason,
    })
}
