//! `arca init`, `arca catalog rebuild`, `arca key generate`, `arca quickstart`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::*;
use crate::repo::format::EncryptionMode;

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Recreate catalog entries (repository, jobs, recovery points) from a repository. Keys
    /// that resolve (passphrase, key file) also restore the stored password hash.
    Rebuild {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Write the system configuration (jobs, repositories, trust pins, password hashes,
    /// escrow settings) to one file sealed under a bundle passphrase (ARCA_BUNDLE_PASSPHRASE,
    /// --bundle-passphrase-file, or a prompt asked twice). Keep it apart from the repository.
    Export {
        /// Where to write the bundle (a new file, mode 0600; an existing file is not overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Read the bundle passphrase from this file (first line) instead of ARCA_BUNDLE_PASSPHRASE or a prompt.
        #[arg(long, value_name = "FILE")]
        bundle_passphrase_file: Option<PathBuf>,
    },
    /// Restore the system configuration from a bundle (on a fresh install: backups and
    /// restores then run without retyping job passphrases). Over an existing catalog it shows
    /// what would change and replaces nothing without --replace.
    Import {
        /// The bundle file written by `arca config export`.
        file: PathBuf,
        /// Read the bundle passphrase from this file (first line) instead of ARCA_BUNDLE_PASSPHRASE or a prompt.
        #[arg(long, value_name = "FILE")]
        bundle_passphrase_file: Option<PathBuf>,
        /// Replace what differs in this catalog (jobs, passwords, pins, settings).
        #[arg(long)]
        replace: bool,
        /// Only show what would be added or replaced.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The bundle passphrase: ARCA_BUNDLE_PASSPHRASE, a file, or a no-echo prompt (twice when
/// `confirm`). Never the job passphrase (ARCA_PASSPHRASE).
fn bundle_passphrase(
    ctx: &Ctx,
    file: Option<PathBuf>,
    confirm: bool,
) -> Result<crate::crypto::Passphrase> {
    super::other_secret(
        ctx,
        file.as_deref(),
        "ARCA_BUNDLE_PASSPHRASE",
        "--bundle-passphrase-file",
        "Bundle passphrase: ",
        "bundle passphrase",
        confirm,
    )
}

pub fn config(ctx: &Ctx, cmd: ConfigCmd) -> Result<i32> {
    match cmd {
        ConfigCmd::Export {
            out,
            bundle_passphrase_file,
        } => {
            let pass = bundle_passphrase(ctx, bundle_passphrase_file, true)?;
            let r = crate::ops::bundle::export(ctx, &out, &pass)?;
            if ctx.json {
                crate::ui::print_json(&r);
            } else {
                ctx.say(format!(
                    "exported {} job(s), {} password(s), {} repository(ies) and {} escrow record(s) to {} ({} bytes, sealed). \
                     Keep it, and its passphrase, apart from the repositories",
                    r.jobs,
                    r.passwords,
                    r.repositories,
                    r.escrow_records,
                    out.display(),
                    r.bytes
                ));
            }
            Ok(0)
        }
        ConfigCmd::Import {
            file,
            bundle_passphrase_file,
            replace,
            dry_run,
        } => {
            let pass = bundle_passphrase(ctx, bundle_passphrase_file, false)?;
            let r = crate::ops::bundle::import(ctx, &file, &pass, replace, dry_run)?;
            if ctx.json {
                crate::ui::print_json(&r);
            } else {
                for c in r.changes.iter().filter(|c| c.action != "same") {
                    ctx.say(format!("  {:<8} {:<10} {}", c.action, c.kind, c.name));
                }
                let adds = r.changes.iter().filter(|c| c.action == "add").count();
                if r.applied {
                    ctx.say(format!(
                        "imported {}: {adds} added, {} replaced",
                        file.display(),
                        r.replacements
                    ));
                } else if dry_run {
                    ctx.say(format!(
                        "dry run: {adds} would be added, {} replaced; nothing was written",
                        r.replacements
                    ));
                }
            }
            if !r.applied && !dry_run {
                return Err(Error::Usage(format!(
                    "{} item(s) of the bundle differ from this catalog (listed above); nothing was imported. \
                     Run again with --replace to replace them",
                    r.replacements
                )));
            }
            Ok(0)
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Write a new random 32-byte key (base64) to FILE, readable only by you.
    Generate {
        /// Where to write the key (a new file, mode 0600).
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

pub fn init(ctx: &Ctx, dir: &Path, o: &crate::repo::InitOptions) -> Result<i32> {
    let repo = Repository::init_with(dir, o)?;
    let cat = ctx.catalog()?;
    cat.add_repository(&repo.id(), repo.root())?;
    cat.set_repo_format_version(&repo.id(), repo.version())?;
    if ctx.json {
        crate::ui::print_json(
            &serde_json::json!({"repository": dir.display().to_string(), "repo_id": repo.id().hex()}),
        );
    } else {
        ctx.say(format!(
            "created repository {} (id {})\nnext: arca job create NAME --repo {} --source PATH --encryption passphrase",
            dir.display(),
            repo.id().hex(),
            dir.display()
        ));
    }
    Ok(0)
}

pub async fn catalog(ctx: &Ctx, cmd: CatalogCmd) -> Result<i32> {
    let CatalogCmd::Rebuild { repo: dir } = cmd;
    let report = crate::ops::admin::rebuild(ctx, &dir).await?;
    let cat = ctx.catalog()?;
    if ctx.json {
        crate::ui::print_json(&report);
    } else {
        ctx.say(format!(
            "catalog {} now knows repository {}:",
            cat.path().display(),
            dir.display()
        ));
        for r in &report {
            let job = r["job"].as_str().unwrap_or("-");
            match r["status"].as_str() {
                Some(st) => ctx.say(format!("  {job}: {st}")),
                None => ctx.say(format!(
                    "  job '{job}': {} point(s), encryption {}, {} chain(s) trusted, keys {}{}",
                    r["points"],
                    r["encryption"].as_str().unwrap_or("-"),
                    r["chains_pinned"],
                    r["key_status"].as_str().unwrap_or("-"),
                    r["escrow"]
                        .as_str()
                        .map(|e| format!(", escrow {e}"))
                        .unwrap_or_default()
                )),
            }
        }
    }
    Ok(0)
}

/// `arca migrate --repo DIR` (see [`crate::ops::admin::migrate`]).
pub async fn migrate(ctx: &Ctx, dir: &Path) -> Result<i32> {
    let report = crate::ops::admin::migrate(ctx, dir).await?;
    if ctx.json {
        crate::ui::print_json(
            &serde_json::json!({"repository": dir.display().to_string(), "format_version": crate::repo::format::FORMAT_VERSION, "jobs": report}),
        );
    } else {
        ctx.say(format!(
            "repository {} is now in format version {}: its metadata is authenticated; no data was re-encrypted",
            dir.display(),
            crate::repo::format::FORMAT_VERSION
        ));
        for r in &report {
            ctx.say(format!("  {r}"));
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
    if ctx.json {
        let fp = crate::keys::raw::RawKeyProvider::from_base64(&k)
            .map(|p| p.fingerprint())
            .unwrap_or_default();
        crate::ui::print_json(
            &serde_json::json!({"file": out.display().to_string(), "fingerprint": fp}),
        );
        return Ok(0);
    }
    ctx.say(format!(
        "wrote a new key to {} (mode 0600). Keep a copy somewhere safe: without it, data encrypted with it is lost.",
        out.display()
    ));
    Ok(0)
}

pub async fn quickstart(ctx: &Ctx, a: QuickstartArgs) -> Result<i32> {
    use std::os::unix::fs::MetadataExt;
    validate_job_name(&a.job)?;
    let base = ctx
        .catalog_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let cat = ctx.catalog()?;
    let mut key_warning = None;
    match cat.job(&a.job)? {
        Some(row) => {
            // Never back up something else than what the job was made for, silently.
            if let Some(src) = &a.source {
                let want = std::path::absolute(src)
                    .map_err(|e| Error::io("resolve the source path", e))?;
                if want != Path::new(&row.source) {
                    return Err(Error::Usage(format!(
                        "job '{}' backs up {}, not {}: back that up as another job \
                         (`arca quickstart --source {} --job OTHER-NAME`)",
                        a.job,
                        row.source,
                        want.display(),
                        want.display()
                    )));
                }
            }
        }
        None => {
            let repo_dir = a.repo.clone().unwrap_or_else(|| base.join("default-repo"));
            let repo = match Repository::open(&repo_dir) {
                Ok(r) => r,
                Err(Error::NotFound(_)) => {
                    let r = Repository::init(&repo_dir, false)?;
                    ctx.note(format!("created repository {}", repo_dir.display()));
                    r
                }
                Err(e) => return Err(e),
            };
            let source =
                std::path::absolute(a.source.clone().unwrap_or_else(|| PathBuf::from(".")))
                    .map_err(|e| Error::io("resolve the source path", e))?;
            if let (Ok(r), Ok(sm)) = (std::fs::metadata(repo.root()), std::fs::metadata(&source)) {
                if r.dev() == sm.dev() {
                    ctx.note(format!(
                        "warning: the repository {} is on the same filesystem as the source {}: \
                         one disk failure loses both. Use --repo on another disk (or copy the repository elsewhere)",
                        repo.root().display(),
                        source.display()
                    ));
                }
            }
            // A passphrase if one is given, else a generated key file beside the catalog.
            let mode = if ctx.creds.explicit_passphrase() {
                EncryptionMode::Passphrase
            } else {
                EncryptionMode::Key
            };
            let mut key_ctx = None;
            if mode == EncryptionMode::Key && !ctx.creds.explicit_key() {
                let kf = base.join(format!("{}.key", a.job));
                if !kf.exists() {
                    write_private(
                        &kf,
                        format!("{}\n", crate::keys::raw::generate_base64().as_str()).as_bytes(),
                    )?;
                    key_warning = Some(format!(
                        "IMPORTANT: job '{}' is encrypted with the key in {} (mode 0600). Copy it somewhere safe, \
                         away from this disk: without it nothing can be restored",
                        a.job,
                        kf.display()
                    ));
                }
                key_ctx = Some(Ctx {
                    session: crate::ops::Session {
                        catalog_path: ctx.catalog_path.clone(),
                        quiet: ctx.quiet,
                        lock_wait: ctx.lock_wait,
                        creds: crate::resolve::Credentials::new(None, Some(kf)),
                    },
                    json: ctx.json,
                });
            }
            let c = key_ctx.as_ref().unwrap_or(ctx);
            let row = crate::ops::jobs::create_job(
                c,
                crate::ops::jobs::CreateJob {
                    name: &a.job,
                    repo: repo.root(),
                    source: &source,
                    spec: crate::ops::jobs::ChainSpec {
                        mode,
                        password: None,
                        kms_key: None,
                        kmip_key: None,
                    },
                },
            )
            .await?;
            ctx.note(format!(
                "created job '{}': {} → {} (encryption {})",
                row.name,
                row.source,
                row.repo_path.display(),
                row.encryption.as_str()
            ));
        }
    }
    let code = super::backup::run(
        ctx,
        super::backup::BackupArgs {
            name: a.job.clone(),
            stdin: false,
            stdin_name: None,
            compression: super::backup::DEFAULT_COMPRESSION,
            filters: Default::default(),
        },
    )
    .await?;
    // Under --json, the backup summary is the one document.
    if !ctx.json {
        super::read::points(
            ctx,
            super::read::PointsArgs {
                stream: None,
                name: a.job.clone(),
                repo: None,
            },
        )
        .await?;
    }
    if let Some(w) = key_warning {
        ctx.note(w);
    }
    Ok(code)
}
