//! `arca job create|list|show|encryption`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::*;
use crate::crypto::{KdfParams, SecretKey};
use crate::keys::none::NoneProvider;
use crate::keys::passphrase::{self, PasswordHashProvider};
use crate::keys::{KeyProvider, SlotContext};
use crate::repo::format::{ChainRecord, EncryptionMode, JobRecord, FORMAT_VERSION};
use crate::repo::now_rfc3339;

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Create a job: what to back up, where, and how its keys are protected.
    Create(CreateArgs),
    /// List jobs in the catalog.
    List,
    /// Show one job.
    Show { name: String },
    /// Change a job's encryption. The active chain's settings never change: this starts a
    /// new chain, and the next backup is a full backup that reuses nothing from the old one.
    Encryption(EncryptionArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// The repository (create it with `arca init DIR`).
    #[arg(long)]
    pub repo: PathBuf,
    /// The directory or file to back up.
    #[arg(long)]
    pub source: PathBuf,
    /// passphrase (Argon2id), key (a raw 32-byte key: --key-file or ARCA_KEY), or none.
    #[arg(long, value_parser = ["passphrase", "key", "none"])]
    pub encryption: String,
    /// The named password to use (created if new) [default: the job's name].
    #[arg(long)]
    pub password: Option<String>,
}

#[derive(Args, Debug)]
pub struct EncryptionArgs {
    pub name: String,
    #[arg(long, value_parser = ["passphrase", "key", "none"])]
    pub encryption: String,
    #[arg(long)]
    pub password: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: JobCmd) -> Result<i32> {
    match cmd {
        JobCmd::Create(a) => create(ctx, a).await,
        JobCmd::List => list(ctx),
        JobCmd::Show { name } => show(ctx, &name),
        JobCmd::Encryption(a) => change_encryption(ctx, a).await,
    }
}

/// A new chain with one keyslot, for a job. Returns it, the password name and key file.
pub async fn new_chain(
    ctx: &Ctx,
    cat: &Catalog,
    repo: &Repository,
    job_id: Id16,
    job_name: &str,
    mode: EncryptionMode,
    password: Option<&str>,
) -> Result<(ChainRecord, Option<String>, Option<String>)> {
    let mut chain = ChainRecord {
        kind: ChainRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: repo.id(),
        job_id,
        chain_id: Id16::random(),
        created: now_rfc3339(),
        encryption: mode,
        keyslots: Vec::new(),
    };
    let sctx = SlotContext::of_chain(&chain, job_name);
    let chain_key = SecretKey::random();
    let mut password_name = None;
    let mut key_file = None;
    let slot = match mode {
        EncryptionMode::None => NoneProvider.wrap(&chain_key, &sctx).await,
        EncryptionMode::Key => {
            let (p, from) = ctx.creds.raw_key(None)?.ok_or_else(|| {
                Error::Usage("--encryption key needs a key: --key-file FILE (base64 of 32 bytes; `arca key generate` makes one) or ARCA_KEY".into())
            })?;
            if let Some(f) = &ctx.creds.key_file {
                key_file = Some(std::path::absolute(f).unwrap_or(f.clone()).to_string_lossy().into_owned());
            }
            ctx.note(format!("using {from} (fingerprint {})", p.fingerprint()));
            p.wrap(&chain_key, &sctx).await
        }
        EncryptionMode::Passphrase => {
            let name = password.unwrap_or(job_name).to_string();
            validate_job_name(&name).map_err(|_| Error::Usage(format!("invalid password name {name:?}")))?;
            let provider = password_provider(ctx, cat, &name).await?;
            password_name = Some(name);
            provider.wrap(&chain_key, &sctx).await
        }
    }
    .map_err(|e| Error::Other(format!("creating the keyslot failed: {e}")))?;
    chain.keyslots.push(slot);
    Ok((chain, password_name, key_file))
}

/// The stored hash of password `name`, or a new password from a passphrase.
async fn password_provider(ctx: &Ctx, cat: &Catalog, name: &str) -> Result<PasswordHashProvider> {
    if let Some((rec, hash)) = cat.password_hash(name)? {
        // A passphrase given anyway must match: never attach a password the admin mistyped.
        if std::env::var_os("ARCA_PASSPHRASE").is_some() || ctx.creds.passphrase_file.is_some() {
            if let Some(p) = ctx.creds.read_passphrase("", false)? {
                let h =
                    passphrase::derive_for(&rec, &p).map_err(|e| Error::Other(e.to_string()))?;
                if h.expose() != hash.expose() {
                    return Err(Error::WrongPassphrase {
                        job: name.to_string(),
                        password: name.to_string(),
                    });
                }
            }
        }
        ctx.note(format!("using existing password '{name}'"));
        return Ok(PasswordHashProvider::new(rec, hash));
    }
    let p = ctx
        .creds
        .read_passphrase(&format!("New passphrase for password '{name}': "), true)?
        .ok_or_else(|| {
            Error::Usage("a passphrase is needed: set ARCA_PASSPHRASE, pass --passphrase-file FILE, or run on a terminal".into())
        })?;
    let params = KdfParams::for_new_password().map_err(|e| Error::Usage(e.to_string()))?;
    let (rec, hash) =
        passphrase::new_password(name, &p, params).map_err(|e| Error::Other(e.to_string()))?;
    cat.create_password(&rec, "", &hash)?;
    ctx.note(format!(
        "created password '{name}' (Argon2id, {} KiB, t={}, p={})",
        params.m_kib, params.t, params.p
    ));
    Ok(PasswordHashProvider::new(rec, hash))
}

pub async fn create(ctx: &Ctx, a: CreateArgs) -> Result<i32> {
    validate_job_name(&a.name)?;
    let mode = EncryptionMode::parse(&a.encryption).expect("clap checked");
    let cat = ctx.catalog()?;
    if cat.job(&a.name)?.is_some() {
        return Err(Error::Usage(format!(
            "a job named '{}' already exists in the catalog",
            a.name
        )));
    }
    let repo = Repository::open(&a.repo)?;
    if repo.list_jobs()?.iter().any(|j| j.name == a.name) {
        return Err(Error::Usage(format!(
            "repository {} already has a job named '{}'; `arca catalog rebuild --repo {}` adds it to this catalog",
            a.repo.display(),
            a.name,
            a.repo.display()
        )));
    }
    let source = std::path::absolute(&a.source).unwrap_or(a.source.clone());
    if !source.exists() {
        ctx.note(format!(
            "warning: source {} does not exist yet",
            source.display()
        ));
    }
    let _lock = repo.lock()?;
    let job_id = Id16::random();
    let (chain, password, key_file) = new_chain(
        ctx,
        &cat,
        &repo,
        job_id,
        &a.name,
        mode,
        a.password.as_deref(),
    )
    .await?;
    let job = JobRecord {
        kind: JobRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: repo.id(),
        job_id,
        name: a.name.clone(),
        source: source.to_string_lossy().into_owned(),
        created: now_rfc3339(),
        chain_id: chain.chain_id,
    };
    repo.write_chain(&chain)?;
    repo.write_job(&job)?;
    cat.create_job(&JobRow {
        name: a.name.clone(),
        job_id,
        repo_id: repo.id(),
        repo_path: repo.root().to_path_buf(),
        source: job.source.clone(),
        encryption: mode,
        password,
        key_file,
        chain_id: chain.chain_id,
        created: job.created.clone(),
    })?;
    if ctx.json {
        crate::ui::print_json(&JobView::of(&cat.job(&a.name)?.expect("just created")));
    } else {
        ctx.say(format!(
            "created job '{}': {} → {} (encryption: {}, chain {})\nnext: arca backup {}",
            a.name,
            job.source,
            repo.root().display(),
            mode.as_str(),
            chain.chain_id.short(),
            a.name
        ));
    }
    Ok(0)
}

#[derive(Serialize)]
struct JobView {
    name: String,
    job_id: String,
    repository: String,
    source: String,
    encryption: &'static str,
    password: Option<String>,
    key_file: Option<String>,
    chain_id: String,
    created: String,
}

impl JobView {
    fn of(r: &JobRow) -> Self {
        JobView {
            name: r.name.clone(),
            job_id: r.job_id.hex(),
            repository: r.repo_path.display().to_string(),
            source: r.source.clone(),
            encryption: r.encryption.as_str(),
            password: r.password.clone(),
            key_file: r.key_file.clone(),
            chain_id: r.chain_id.hex(),
            created: r.created.clone(),
        }
    }
}

fn list(ctx: &Ctx) -> Result<i32> {
    let cat = ctx.catalog()?;
    let jobs: Vec<JobView> = cat.list_jobs()?.iter().map(JobView::of).collect();
    if ctx.json {
        crate::ui::print_json(&jobs);
    } else if jobs.is_empty() {
        ctx.say("no jobs; create one with `arca job create NAME --repo DIR --source PATH --encryption passphrase`");
    } else {
        ctx.say(format!(
            "{:<20} {:<11} {:<40} {}",
            "NAME", "ENCRYPTION", "SOURCE", "REPOSITORY"
        ));
        for j in jobs {
            ctx.say(format!(
                "{:<20} {:<11} {:<40} {}",
                j.name, j.encryption, j.source, j.repository
            ));
        }
    }
    Ok(0)
}

fn show(ctx: &Ctx, name: &str) -> Result<i32> {
    let cat = ctx.catalog()?;
    let r = cat
        .job(name)?
        .ok_or_else(|| Error::NotFound(format!("no job named '{name}' in the catalog")))?;
    let v = JobView::of(&r);
    if ctx.json {
        crate::ui::print_json(&v);
    } else {
        ctx.say(
            serde_json::to_string_pretty(&v)
                .expect("json")
                .trim_matches(['{', '}', '\n'])
                .replace('"', ""),
        );
    }
    Ok(0)
}

async fn change_encryption(ctx: &Ctx, a: EncryptionArgs) -> Result<i32> {
    let mode = EncryptionMode::parse(&a.encryption).expect("clap checked");
    let cat = ctx.catalog()?;
    let h = locate_job(&cat, &a.name, None)?;
    let _lock = h.repo.lock()?;
    let (chain, password, key_file) = new_chain(
        ctx,
        &cat,
        &h.repo,
        h.job.job_id,
        &a.name,
        mode,
        a.password.as_deref(),
    )
    .await?;
    h.repo.write_chain(&chain)?;
    let mut job = h.job.clone();
    job.chain_id = chain.chain_id;
    h.repo.write_job(&job)?;
    cat.update_job_encryption(
        &a.name,
        mode,
        password.as_deref(),
        key_file.as_deref(),
        &chain.chain_id,
    )?;
    ctx.say(format!(
        "job '{}' now writes to a new chain {} (encryption: {}); the next backup is a full backup. \
         Earlier recovery points stay restorable with their old keys.",
        a.name,
        chain.chain_id.short(),
        mode.as_str()
    ));
    Ok(0)
}
