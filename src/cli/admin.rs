//! `arca init`, `arca catalog rebuild`, `arca key generate`, `arca quickstart`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::*;
use crate::catalog::PointRow;
use crate::engine::open_point;
use crate::repo::format::{EncryptionMode, SlotParams};

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Recreate catalog entries (repository, jobs, recovery points) from a repository. Keys
    /// that resolve (passphrase, key file) also restore the stored password hash.
    Rebuild {
        #[arg(long)]
        repo: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Write a new random 32-byte key (base64) to FILE, readable only by you.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// The directory to back up [default: the current directory].
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// The repository [default: default-repo beside the catalog].
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// The job's name.
    #[arg(long, default_value = "default")]
    pub job: String,
}

pub fn init(ctx: &Ctx, dir: &Path) -> Result<i32> {
    let repo = Repository::init(dir)?;
    let cat = ctx.catalog()?;
    cat.add_repository(&repo.id(), repo.root())?;
    if ctx.json {
        crate::ui::print_json(
            &serde_json::json!({"repository": dir.display().to_string(), "repo_id": repo.id().hex()}),
        );
    } else {
        ctx.say(format!(
            "created repository {} (id {})\nnext: arca job create NAME --repo {} --source PATH --encryption passphrase",
            dir.display(),
            repo.id().short(),
            dir.display()
        ));
    }
    Ok(0)
}

pub async fn catalog(ctx: &Ctx, cmd: CatalogCmd) -> Result<i32> {
    let CatalogCmd::Rebuild { repo: dir } = cmd;
    let cat = ctx.catalog()?;
    let repo = Repository::open(&dir)?;
    cat.add_repository(&repo.id(), repo.root())?;
    let mut report = Vec::new();
    for job in repo.list_jobs()? {
        let chain = repo.read_chain(&job.chain_id)?;
        let password = chain.keyslots.iter().find_map(|s| match &s.params {
            SlotParams::Passphrase { kdf } => Some(kdf.password.clone()),
            _ => None,
        });
        let existing = cat.job(&job.name)?;
        if let Some(e) = &existing {
            if e.job_id != job.job_id {
                report.push(serde_json::json!({"job": job.name, "status": "skipped: the catalog has another job of this name"}));
                continue;
            }
        }
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
        };
        cat.upsert_job(&row)?;
        let h = JobHandle {
            repo: Repository::open(&dir)?,
            job: job.clone(),
            row: Some(row.clone()),
        };
        let points = repo.list_points(&job.job_id)?;
        let mut opened = 0;
        let mut key_note = None;
        let mut chains: Vec<Id16> = points.iter().map(|p| p.chain_id).collect();
        chains.dedup();
        let mut open: std::collections::HashMap<Id16, OpenChain> = Default::default();
        for c in chains {
            match open_chain(ctx, &cat, &h, &c, None, false).await {
                Ok((oc, _)) => {
                    open.insert(c, oc);
                }
                Err(e) => key_note = Some(e.to_string()),
            }
        }
        for p in &points {
            let body = open
                .get(&p.chain_id)
                .and_then(|oc| open_point(oc, p).ok().map(|(_, b)| b));
            if body.is_some() {
                opened += 1;
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
        report.push(serde_json::json!({
            "job": job.name, "points": points.len(), "points_opened": opened,
            "encryption": chain.encryption.as_str(), "keys": key_note.map(|n| format!("not resolved: {n}")).unwrap_or("resolved".into()),
        }));
    }
    if ctx.json {
        crate::ui::print_json(&report);
    } else {
        ctx.say(format!(
            "catalog {} now knows repository {}:",
            cat.path().display(),
            dir.display()
        ));
        for r in &report {
            ctx.say(format!("  {}", r));
        }
    }
    Ok(0)
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

pub fn key(ctx: &Ctx, cmd: KeyCmd) -> Result<i32> {
    let KeyCmd::Generate { out } = cmd;
    let k = crate::keys::raw::generate_base64();
    write_private(&out, format!("{}\n", k.as_str()).as_bytes())?;
    ctx.say(format!(
        "wrote a new key to {} (mode 0600). Keep a copy somewhere safe: without it, data encrypted with it is lost.",
        out.display()
    ));
    Ok(0)
}

pub async fn quickstart(ctx: &Ctx, a: QuickstartArgs) -> Result<i32> {
    validate_job_name(&a.job)?;
    let base = ctx
        .catalog_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let cat = ctx.catalog()?;
    if cat.job(&a.job)?.is_none() {
        let repo_dir = a.repo.clone().unwrap_or_else(|| base.join("default-repo"));
        let repo = match Repository::open(&repo_dir) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => {
                let r = Repository::init(&repo_dir)?;
                ctx.note(format!("created repository {}", repo_dir.display()));
                r
            }
            Err(e) => return Err(e),
        };
        let source = std::path::absolute(a.source.clone().unwrap_or_else(|| PathBuf::from(".")))
            .map_err(|e| Error::io("resolve the source path", e))?;
        // A passphrase if one is given, else a generated key file beside the catalog.
        let mode = if std::env::var_os("ARCA_PASSPHRASE").is_some()
            || ctx.creds.passphrase_file.is_some()
        {
            EncryptionMode::Passphrase
        } else {
            EncryptionMode::Key
        };
        let mut key_ctx = None;
        if mode == EncryptionMode::Key
            && ctx.creds.key_file.is_none()
            && std::env::var_os("ARCA_KEY").is_none()
        {
            let kf = base.join(format!("{}.key", a.job));
            if !kf.exists() {
                write_private(
                    &kf,
                    format!("{}\n", crate::keys::raw::generate_base64().as_str()).as_bytes(),
                )?;
                ctx.note(format!(
                    "generated key file {} (mode 0600): back it up, it is the only way to restore",
                    kf.display()
                ));
            }
            key_ctx = Some(Ctx {
                catalog_path: ctx.catalog_path.clone(),
                json: ctx.json,
                quiet: ctx.quiet,
                creds: crate::resolve::Credentials::new(None, Some(kf)),
            });
        }
        let c = key_ctx.as_ref().unwrap_or(ctx);
        super::job::create(
            c,
            super::job::CreateArgs {
                name: a.job.clone(),
                repo: repo.root().to_path_buf(),
                source,
                encryption: mode.as_str().into(),
                password: None,
                kms_key: None,
                kmip_key: None,
            },
        )
        .await?;
    }
    let code = super::backup::run(
        ctx,
        super::backup::BackupArgs {
            name: a.job.clone(),
            stdin: false,
            stdin_name: None,
            compression: 3,
        },
    )
    .await?;
    super::read::points(
        ctx,
        super::read::PointsArgs {
            name: a.job.clone(),
            repo: None,
        },
    )
    .await?;
    Ok(code)
}
