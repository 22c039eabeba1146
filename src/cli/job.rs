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
    /// Change a deactivated job's encryption: starts a new chain, and the next backup is a
    /// full backup that reuses nothing from the old one. An active job refuses (deactivate
    /// it first, or use `job activate NAME --encryption MODE`).
    Encryption(EncryptionArgs),
    /// Stop a job's backups; every recovery point stays restorable. While a job is
    /// deactivated its encryption may change.
    Deactivate { name: String },
    /// Resume a job's backups; with --encryption (and --password, --kms-key or --kmip-key),
    /// first switch it to a new chain under that encryption (the next run is a full backup).
    Activate(ActivateArgs),
    /// The keyslots (envelopes) of a job's active chain: any one opens it.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Renew a job's keys with the same secrets: its chain starts a new key generation
    /// (every keyslot re-wrapped; nothing re-encrypted). Points written afterwards are out of
    /// reach of any key or metadata copy from before, e.g. after removing a keyslot.
    Rekey { name: String },
    /// Accept what a repository says about a job (after a reinstall, or a change made on
    /// another machine): its chain, mode, source and keys become what this catalog trusts.
    /// The keys must resolve; the previous pins of the job are replaced.
    Adopt {
        name: String,
        #[arg(long)]
        repo: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// List the keyslots of the job's active chain.
    List { name: String },
    /// Add a keyslot: a KMS key (--kms-key), a named password (--password), or a raw key
    /// (--key-file / ARCA_KEY). The chain's keys must resolve first.
    Add {
        name: String,
        #[arg(long, group = "kind")]
        kms_key: Option<String>,
        #[arg(long, group = "kind")]
        kmip_key: Option<String>,
        #[arg(long, group = "kind")]
        password: Option<String>,
        /// Add the raw key given by --key-file or ARCA_KEY.
        #[arg(long, group = "kind")]
        raw_key: bool,
    },
    /// Remove a keyslot by id (prefix). The last keyslot is never removed.
    Remove { name: String, slot: String },
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
    /// passphrase (Argon2id), key (a raw 32-byte key: --key-file or ARCA_KEY), kms (AWS KMS,
    /// --kms-key), or none.
    #[arg(long, value_parser = ["passphrase", "key", "kms", "kmip", "none"])]
    pub encryption: String,
    /// The named password to use (created if new) [default: the job's name].
    #[arg(long)]
    pub password: Option<String>,
    /// The KMS key for --encryption kms: key id, ARN, alias name or alias ARN.
    #[arg(long)]
    pub kms_key: Option<String>,
    /// The KMIP key for --encryption kmip: its name or unique identifier.
    #[arg(long)]
    pub kmip_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct ActivateArgs {
    pub name: String,
    #[arg(long, value_parser = ["passphrase", "key", "kms", "kmip", "none"])]
    pub encryption: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    #[arg(long)]
    pub kms_key: Option<String>,
    #[arg(long)]
    pub kmip_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct EncryptionArgs {
    pub name: String,
    #[arg(long, value_parser = ["passphrase", "key", "kms", "kmip", "none"])]
    pub encryption: String,
    #[arg(long)]
    pub password: Option<String>,
    #[arg(long)]
    pub kms_key: Option<String>,
    #[arg(long)]
    pub kmip_key: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: JobCmd) -> Result<i32> {
    match cmd {
        JobCmd::Create(a) => create(ctx, a).await,
        JobCmd::List => list(ctx),
        JobCmd::Show { name } => show(ctx, &name),
        JobCmd::Encryption(a) => change_encryption(ctx, a).await,
        JobCmd::Deactivate { name } => {
            let cat = ctx.catalog()?;
            locate_job(&cat, &name, None)?;
            cat.set_active(&name, false)?;
            ctx.say(format!(
                "job '{name}' is deactivated: its backups stop and every recovery point stays restorable. \
                 `arca job activate {name}` resumes it (with --encryption MODE, under new keys)"
            ));
            Ok(0)
        }
        JobCmd::Activate(a) => {
            let cat = ctx.catalog()?;
            let row = cat.job(&a.name)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "no job named '{}' in the catalog; `arca job list` shows them",
                    a.name
                ))
            })?;
            if let Some(enc) = a.encryption.clone() {
                if row.active {
                    return Err(Error::Usage(format!(
                        "job '{}' is active: deactivate it first (`arca job deactivate {}`), then activate it with the new encryption",
                        a.name, a.name
                    )));
                }
                change_encryption(
                    ctx,
                    EncryptionArgs {
                        name: a.name.clone(),
                        encryption: enc,
                        password: a.password,
                        kms_key: a.kms_key,
                        kmip_key: a.kmip_key,
                    },
                )
                .await?;
            }
            cat.set_active(&a.name, true)?;
            ctx.say(format!("job '{}' is active: backups run again", a.name));
            Ok(0)
        }
        JobCmd::Keys(c) => keys(ctx, c).await,
        JobCmd::Rekey { name } => {
            let r = crate::ops::lifecycle::rekey_job(ctx, &name).await?;
            if ctx.json {
                crate::ui::print_json(&r);
            } else {
                ctx.say(format!(
                    "job '{name}': chain {} now at key generation {}; earlier points stay readable, later ones use the new keys",
                    &r.chain_id[..8],
                    r.generation
                ));
            }
            Ok(0)
        }
        JobCmd::Adopt { name, repo } => adopt(ctx, &name, &repo).await,
    }
}

/// A KMS keyslot provider for `key`, after DescribeKey confirmed the key is usable.
async fn kms_provider(
    ctx: &Ctx,
    job: &str,
    key: &str,
) -> Result<crate::keys::aws_kms::KmsProvider> {
    let unavailable = |e: crate::keys::KeyError| Error::KeysUnavailable {
        job: job.to_string(),
        detail: e.to_string(),
    };
    let client = ctx.creds.kms_client().await.map_err(unavailable)?;
    let info = client.check_key(key).await.map_err(unavailable)?;
    ctx.note(format!("using KMS key {}", info.arn));
    Ok(crate::keys::aws_kms::KmsProvider::new(
        client,
        Some(info.arn),
    ))
}

pub use crate::ops::lifecycle::escrow_if_enabled;

/// A new chain with one keyslot, for a job. Returns it, the password name and key file.
/// What a new chain's encryption is made of.
pub struct ChainSpec<'a> {
    pub mode: EncryptionMode,
    pub password: Option<&'a str>,
    pub kms_key: Option<&'a str>,
    pub kmip_key: Option<&'a str>,
}

fn kmip_provider(ctx: &Ctx, job: &str, key: &str) -> Result<crate::keys::kmip::KmipProvider> {
    let c = ctx
        .creds
        .kmip_client()
        .map_err(|e| Error::KeysUnavailable {
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
    ctx: &Ctx,
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
            kmip_provider(ctx, job_name, key)?.wrap(&chain_key, &sctx).await
        }
        EncryptionMode::Kms => {
            let key = kms_key.ok_or_else(|| Error::Usage("--encryption kms needs --kms-key KEY (key id, ARN or alias)".into()))?;
            // Fail closed: if KMS cannot be reached, no chain is created.
            kms_provider(ctx, job_name, key).await?.wrap(&chain_key, &sctx).await
        }
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
    .map_err(|e| Error::KeysUnavailable { job: job_name.to_string(), detail: format!("creating the keyslot failed: {e}") })?;
    note_kmip_mode(ctx, &slot);
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
fn note_kmip_mode(ctx: &Ctx, slot: &crate::repo::format::Keyslot) {
    match slot.params.provider() {
        "kmip-encrypt" => ctx.note(
            "KMIP: the server encrypts the chain key (Encrypt/Decrypt); the key never leaves it",
        ),
        "kmip" => ctx.note(
            "KMIP: the server does not offer Encrypt/Decrypt (or [kmip] server_side = false): \
             using Get + local wrapping, so the key is fetched into arca's memory when used",
        ),
        _ => {}
    }
}

/// Pins a freshly made chain in the catalog.
fn pin_new(cat: &Catalog, job_id: &Id16, nc: &NewChain) -> Result<()> {
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
async fn password_provider(ctx: &Ctx, cat: &Catalog, name: &str) -> Result<PasswordHashProvider> {
    if let Some((rec, hash)) = cat.password_hash(name)? {
        // A passphrase given anyway must match: never attach a password the admin mistyped.
        if std::env::var_os("ARCA_PASSPHRASE").is_some() || ctx.creds.passphrase_file.is_some() {
            if let Some(p) = ctx.creds.read_passphrase("", false)? {
                let h = passphrase::derive_for(&rec, &p, ctx.creds.allow_expensive_kdf)
                    .map_err(|e| Error::Other(e.to_string()))?;
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
    let nc = new_chain(
        ctx,
        &cat,
        &repo,
        job_id,
        &a.name,
        ChainSpec {
            mode,
            password: a.password.as_deref(),
            kms_key: a.kms_key.as_deref(),
            kmip_key: a.kmip_key.as_deref(),
        },
    )
    .await?;
    let chain = &nc.chain;
    let mut job = JobRecord {
        kind: JobRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: repo.id(),
        job_id,
        name: a.name.clone(),
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
        name: a.name.clone(),
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
    cat.set_job_revision(&a.name, job.revision)?;
    cat.set_repo_format_version(&repo.id(), repo.version())?;
    pin_new(&cat, &job_id, &nc)?;
    if let Some(pw) = cat.job(&a.name)?.and_then(|r| r.password) {
        escrow_if_enabled(ctx, &cat, &repo, &job_id, &a.name, &pw).await?;
    }
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
    active: bool,
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
            active: r.active,
        }
    }
}

async fn adopt(ctx: &Ctx, name: &str, dir: &std::path::Path) -> Result<i32> {
    let cat = ctx.catalog()?;
    let repo = Repository::open(dir)?;
    let job = repo.find_job(name)?;
    let before = cat.job(name)?;
    let r = super::admin::adopt_job(ctx, &cat, dir, &job).await?;
    if r["chains_pinned"].as_u64() == Some(0) {
        return Err(Error::KeysUnavailable {
            job: name.to_string(),
            detail: format!(
                "adopting needs the job's keys, and none resolved ({}); give the passphrase or key",
                r["keys"].as_str().unwrap_or_default()
            ),
        });
    }
    if ctx.json {
        crate::ui::print_json(&r);
    } else {
        if let Some(b) = before.filter(|b| b.chain_id != job.chain_id || b.source != job.source) {
            ctx.say(format!(
                "job '{name}': chain {} → {}, source {} → {}",
                b.chain_id.short(),
                job.chain_id.short(),
                b.source,
                job.source
            ));
        }
        ctx.say(format!(
            "adopted job '{name}' from {}: chain {} (encryption {}), source {}; this catalog now trusts it",
            dir.display(),
            job.chain_id.short(),
            r["encryption"].as_str().unwrap_or_default(),
            job.source
        ));
    }
    Ok(0)
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
    if h.row.as_ref().is_some_and(|r| r.active) {
        return Err(Error::Usage(format!(
            "job '{}' is active: an active job's encryption settings cannot change. \
             Deactivate it (`arca job deactivate {}`), then `arca job activate {} --encryption {}` \
             starts a new chain (the next backup is a full backup; older points keep their keys)",
            a.name, a.name, a.name, a.encryption
        )));
    }
    let _lock = h.repo.lock()?;
    // The current chain's key authenticates the change of the job record. A passphrase or
    // key given here is meant for the new chain.
    super::open_chain_with(ctx, &cat, &h, &h.job.chain_id, None, false, false).await?;
    let nc = new_chain(
        ctx,
        &cat,
        &h.repo,
        h.job.job_id,
        &a.name,
        ChainSpec {
            mode,
            password: a.password.as_deref(),
            kms_key: a.kms_key.as_deref(),
            kmip_key: a.kmip_key.as_deref(),
        },
    )
    .await?;
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
        &a.name,
        mode,
        nc.password.as_deref(),
        nc.key_file.as_deref(),
        &chain.chain_id,
    )?;
    cat.set_job_revision(&a.name, job.revision)?;
    ctx.say(format!(
        "job '{}' now writes to a new chain {} (encryption: {}); the next backup is a full backup. \
         Earlier recovery points stay restorable with their old keys.",
        a.name,
        chain.chain_id.short(),
        mode.as_str()
    ));
    Ok(0)
}

fn describe_slot(s: &crate::repo::format::Keyslot) -> String {
    use crate::repo::format::SlotParams;
    match &s.params {
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

async fn keys(ctx: &Ctx, cmd: KeysCmd) -> Result<i32> {
    let cat = ctx.catalog()?;
    match cmd {
        KeysCmd::List { name } => {
            let h = locate_job(&cat, &name, None)?;
            let chain = h.repo.read_chain(&h.job.chain_id)?;
            let rows: Vec<serde_json::Value> = chain
                .keyslots
                .iter()
                .map(|s| serde_json::json!({"slot_id": s.slot_id.hex(), "provider": s.params.provider(), "description": describe_slot(s), "created": s.created}))
                .collect();
            if ctx.json {
                crate::ui::print_json(&rows);
            } else {
                ctx.say(format!(
                    "keyslots of job '{name}' (chain {}, encryption {}):",
                    chain.chain_id.short(),
                    chain.encryption.as_str()
                ));
                for s in &chain.keyslots {
                    ctx.say(format!(
                        "  {}  {:<10} {}",
                        s.slot_id.short(),
                        s.params.provider(),
                        describe_slot(s)
                    ));
                }
            }
            Ok(0)
        }
        KeysCmd::Add {
            name,
            kms_key,
            kmip_key,
            password,
            raw_key,
        } => {
            let h = locate_job(&cat, &name, None)?;
            let _lock = h.repo.lock()?;
            // A passphrase or key given here is the new keyslot's, not the chain's.
            let (oc, _) = super::open_chain_with(
                ctx,
                &cat,
                &h,
                &h.job.chain_id,
                None,
                false,
                password.is_none() && !raw_key,
            )
            .await?;
            if oc.chain.encryption == EncryptionMode::None {
                return Err(Error::Usage(format!("job '{name}' is not encrypted; use `arca job encryption` to start an encrypted chain")));
            }
            let slot = if let Some(k) = kms_key {
                kms_provider(ctx, &name, &k)
                    .await?
                    .wrap(&oc.chain_key, &oc.ctx)
                    .await
            } else if let Some(k) = kmip_key {
                kmip_provider(ctx, &name, &k)?
                    .wrap(&oc.chain_key, &oc.ctx)
                    .await
            } else if let Some(pw) = &password {
                validate_job_name(pw)?;
                password_provider(ctx, &cat, pw)
                    .await?
                    .wrap(&oc.chain_key, &oc.ctx)
                    .await
            } else if raw_key {
                let (p, _) = ctx.creds.raw_key(None)?.ok_or_else(|| {
                    Error::Usage("--raw-key needs --key-file FILE or ARCA_KEY".into())
                })?;
                p.wrap(&oc.chain_key, &oc.ctx).await
            } else {
                return Err(Error::Usage(
                    "give one of --kms-key KEY, --password NAME, --raw-key".into(),
                ));
            }
            .map_err(|e| Error::KeysUnavailable {
                job: name.clone(),
                detail: e.to_string(),
            })?;
            note_kmip_mode(ctx, &slot);
            let mut chain = oc.chain.clone();
            let desc = describe_slot(&slot);
            let id = slot.slot_id;
            chain.keyslots.push(slot);
            chain.revision += 1;
            chain.seal(&oc.chain_key);
            h.repo.write_chain(&chain)?;
            let oc = crate::engine::OpenChain::new(chain.clone(), oc.chain_key.duplicate(), &name)?;
            super::pin_open_chain(&cat, &h.job.job_id, &oc)?;
            if let Some(pw) = password {
                // Points made before the chain had a passphrase keyslot record no salt yet:
                // record it (public metadata bound to the data key: the data key is
                // rewrapped; nothing is re-encrypted).
                if let Some(kdf) = super::backup::point_kdf(&chain, Some(&pw)) {
                    for p in crate::engine::chain_points(&h.repo, &h.job.job_id, &chain.chain_id)? {
                        if p.kdf.is_none() {
                            crate::engine::rebind_point(&h.repo, &oc, p, |p| {
                                p.kdf = Some(kdf.clone())
                            })?;
                        }
                    }
                }
                escrow_if_enabled(ctx, &cat, &h.repo, &h.job.job_id, &name, &pw).await?;
            }
            ctx.say(format!(
                "added keyslot {} to job '{name}': {desc}",
                id.short()
            ));
            Ok(0)
        }
        KeysCmd::Remove { name, slot } => {
            let h = locate_job(&cat, &name, None)?;
            let _lock = h.repo.lock()?;
            let (oc, _) = open_chain(ctx, &cat, &h, &h.job.chain_id, None, false).await?;
            let mut chain = oc.chain.clone();
            let matches: Vec<usize> = chain
                .keyslots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.slot_id.hex().starts_with(&slot.to_ascii_lowercase()))
                .map(|(i, _)| i)
                .collect();
            let i = match matches.as_slice() {
                [i] => *i,
                [] => {
                    return Err(Error::NotFound(format!(
                    "job '{name}' has no keyslot {slot}; `arca job keys list {name}` shows them"
                )))
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "several keyslots start with {slot}; give more digits"
                    )))
                }
            };
            if chain.keyslots.len() == 1 {
                return Err(Error::Usage(format!(
                    "keyslot {slot} is the last one of job '{name}': removing it would make every recovery point of the chain unreadable"
                )));
            }
            let removed = chain.keyslots.remove(i);
            chain.revision += 1;
            chain.seal(&oc.chain_key);
            h.repo.write_chain(&chain)?;
            let oc = crate::engine::OpenChain::new(chain, oc.chain_key.duplicate(), &name)?;
            super::pin_open_chain(&cat, &h.job.job_id, &oc)?;
            ctx.say(format!(
                "removed keyslot {} ({}) from job '{name}'. A copy of the old chain record still lets its secret \
                 open the points written so far; run `arca job rekey {name}` so that it opens none written later",
                removed.slot_id.short(),
                describe_slot(&removed)
            ));
            Ok(0)
        }
    }
}
