//! `arca job create|list|show|encryption`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::*;
use crate::ops::jobs::{self as ops_jobs, ChainSpec, NewSlot};
use crate::repo::format::EncryptionMode;

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Create a job: what to back up, where, and how its keys are protected.
    Create(CreateArgs),
    /// List jobs in the catalog.
    List,
    /// Change a job's source or excludes (`--exclude ...` replaces the stored excludes,
    /// `--no-excludes` clears them). Encryption changes with `job encryption`.
    Set(SetArgs),
    /// Show one job.
    Show {
        /// The job's name.
        name: String,
    },
    /// Change a deactivated job's encryption: starts a new chain, and the next backup is a
    /// full backup that reuses nothing from the old one. An active job refuses (deactivate
    /// it first, or use `job activate NAME --encryption MODE`).
    Encryption(EncryptionArgs),
    /// Stop a job's backups; every recovery point stays restorable. While a job is
    /// deactivated its encryption may change.
    Deactivate {
        /// The job's name.
        name: String,
    },
    /// Resume a job's backups; with --encryption (and --password, --kms-key or --kmip-key),
    /// first switch it to a new chain under that encryption (the next run is a full backup).
    Activate(ActivateArgs),
    /// The keyslots (envelopes) of a job's active chain: any one opens it.
    #[command(subcommand)]
    #[command(name = "keyslots", alias = "keys")]
    Keys(KeysCmd),
    /// Renew a job's keys with the same secrets: its chain starts a new key generation
    /// (every keyslot re-wrapped; nothing re-encrypted). Points written afterwards are out of
    /// reach of any key or metadata copy from before, e.g. after removing a keyslot.
    Rekey {
        /// The job's name.
        name: String,
    },
    /// Accept what a repository says about a job (after a reinstall, or a change made on
    /// another machine): its chain, mode, source and keys become what this catalog trusts.
    /// The keys must resolve; the previous pins of the job are replaced.
    Adopt {
        /// The job's name.
        name: String,
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// List the keyslots of the job's active chain.
    List {
        /// The job's name.
        name: String,
    },
    /// Add a keyslot: a KMS key (--kms-key), a named password (--password), or a raw key
    /// (--key-file / ARCA_KEY). The chain's keys must resolve first.
    Add {
        /// The job's name.
        name: String,
        /// The AWS KMS key: key id, ARN, alias name or alias ARN.
        #[arg(long, group = "kind")]
        kms_key: Option<String>,
        /// The KMIP key: its name or unique identifier.
        #[arg(long, group = "kind")]
        kmip_key: Option<String>,
        /// The named password (created if new) [default: the job's name].
        #[arg(long, group = "kind")]
        password: Option<String>,
        /// Add the raw key given by --key-file or ARCA_KEY.
        #[arg(long, group = "kind")]
        raw_key: bool,
    },
    /// Remove a keyslot by id (prefix). The last keyslot is never removed.
    Remove {
        /// The job's name.
        name: String,
        /// The keyslot id or id prefix (`arca job keyslots list NAME` shows them).
        slot: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The job's name.
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
    #[command(flatten)]
    pub filters: super::filters::FilterArgs,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The job's name.
    pub name: String,
    /// A new source directory (the job record and the catalog's trust pin change with it).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Remove every stored exclude.
    #[arg(long, conflicts_with_all = ["exclude", "exclude_file", "exclude_if_present", "exclude_caches", "one_file_system", "exclude_larger_than"])]
    pub no_excludes: bool,
    /// The job's excludes become exactly the ones given (when any is given).
    #[command(flatten)]
    pub filters: super::filters::FilterArgs,
}

#[derive(Args, Debug)]
pub struct ActivateArgs {
    /// The job's name.
    pub name: String,
    /// passphrase (a named password, Argon2id), key (a raw 32-byte key), kms (AWS KMS), kmip, or none.
    #[arg(long, value_parser = ["passphrase", "key", "kms", "kmip", "none"])]
    pub encryption: Option<String>,
    /// The named password (created if new) [default: the job's name].
    #[arg(long)]
    pub password: Option<String>,
    /// The AWS KMS key: key id, ARN, alias name or alias ARN.
    #[arg(long)]
    pub kms_key: Option<String>,
    /// The KMIP key: its name or unique identifier.
    #[arg(long)]
    pub kmip_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct EncryptionArgs {
    /// The job's name.
    pub name: String,
    /// passphrase (a named password, Argon2id), key (a raw 32-byte key), kms (AWS KMS), kmip, or none.
    #[arg(long, value_parser = ["passphrase", "key", "kms", "kmip", "none"])]
    pub encryption: String,
    /// The named password (created if new) [default: the job's name].
    #[arg(long)]
    pub password: Option<String>,
    /// The AWS KMS key: key id, ARN, alias name or alias ARN.
    #[arg(long)]
    pub kms_key: Option<String>,
    /// The KMIP key: its name or unique identifier.
    #[arg(long)]
    pub kmip_key: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: JobCmd) -> Result<i32> {
    match cmd {
        JobCmd::Create(a) => create(ctx, a).await,
        JobCmd::List => list(ctx),
        JobCmd::Show { name } => show(ctx, &name),
        JobCmd::Set(a) => set(ctx, a).await,
        JobCmd::Encryption(a) => {
            let spec = spec_of(&a.encryption, &a.password, &a.kms_key, &a.kmip_key);
            let c = ops_jobs::change_encryption(ctx, &a.name, spec).await?;
            say_new_chain(ctx, &c);
            Ok(0)
        }
        JobCmd::Deactivate { name } => {
            ops_jobs::deactivate(ctx, &name)?;
            if ctx.json {
                crate::ui::print_json(&serde_json::json!({"job": name, "active": false}));
            } else {
                ctx.say(format!(
                    "job '{name}' is deactivated: its backups stop and every recovery point stays restorable. \
                     `arca job activate {name}` resumes it (with --encryption MODE, under new keys)"
                ));
            }
            Ok(0)
        }
        JobCmd::Activate(a) => {
            let spec = a
                .encryption
                .as_deref()
                .map(|e| spec_of(e, &a.password, &a.kms_key, &a.kmip_key));
            let changed = ops_jobs::activate(ctx, &a.name, spec).await?;
            if ctx.json {
                crate::ui::print_json(
                    &serde_json::json!({"job": a.name, "active": true, "new_chain": changed}),
                );
            } else {
                if let Some(c) = &changed {
                    say_new_chain(ctx, c);
                }
                ctx.say(format!("job '{}' is active: backups run again", a.name));
            }
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

fn spec_of<'a>(
    encryption: &str,
    password: &'a Option<String>,
    kms_key: &'a Option<String>,
    kmip_key: &'a Option<String>,
) -> ChainSpec<'a> {
    ChainSpec {
        mode: EncryptionMode::parse(encryption).expect("clap checked"),
        password: password.as_deref(),
        kms_key: kms_key.as_deref(),
        kmip_key: kmip_key.as_deref(),
    }
}

fn say_new_chain(ctx: &Ctx, c: &ops_jobs::NewChainInfo) {
    if ctx.json {
        crate::ui::print_json(c);
    } else {
        ctx.say(format!(
            "job '{}' now writes to a new chain {} (encryption: {}); the next backup is a full backup. \
             Earlier recovery points stay restorable with their old keys.",
            c.job,
            &c.chain_id[..8],
            c.encryption
        ));
    }
}

pub async fn create(ctx: &Ctx, a: CreateArgs) -> Result<i32> {
    let row = ops_jobs::create_job(
        ctx,
        ops_jobs::CreateJob {
            name: &a.name,
            repo: &a.repo,
            source: &a.source,
            spec: spec_of(&a.encryption, &a.password, &a.kms_key, &a.kmip_key),
        },
    )
    .await?;
    let filters = a.filters.filters();
    filters.compile(&a.source)?;
    ctx.catalog()?.set_job_filters(&row.job_id, &filters)?;
    if ctx.json {
        crate::ui::print_json(&JobView::of(&row, filters));
    } else {
        ctx.say(format!(
            "created job '{}': {} → {} (encryption: {}, chain {})\nnext: arca backup {}",
            row.name,
            row.source,
            row.repo_path.display(),
            row.encryption.as_str(),
            row.chain_id.short(),
            row.name
        ));
    }
    Ok(0)
}

#[derive(Serialize)]
struct JobView {
    /// The job's name.
    name: String,
    job_id: String,
    repository: String,
    source: String,
    encryption: &'static str,
    /// The named password (created if new) [default: the job's name].
    password: Option<String>,
    key_file: Option<String>,
    chain_id: String,
    created: String,
    active: bool,
    /// What backups leave out (empty: nothing).
    excludes: crate::engine::filter::Filters,
}

impl JobView {
    fn of(r: &JobRow, excludes: crate::engine::filter::Filters) -> Self {
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
            excludes,
        }
    }
}

async fn adopt(ctx: &Ctx, name: &str, dir: &std::path::Path) -> Result<i32> {
    let cat = ctx.catalog()?;
    let repo = Repository::open(dir)?;
    let job = repo.find_job(name)?;
    let before = cat.job(name)?;
    let r = crate::ops::admin::adopt_job(ctx, &cat, dir, &job).await?;
    if r["chains_pinned"].as_u64() == Some(0) {
        return Err(Error::KeysUnavailable {
            job: name.to_string(),
            detail: format!(
                "adopting needs the job's keys, and none resolved ({}); give the passphrase or key",
                r["key_status"].as_str().unwrap_or_default()
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
    let mut jobs: Vec<JobView> = Vec::new();
    for r in cat.list_jobs()? {
        jobs.push(JobView::of(&r, cat.job_filters(&r.job_id)?));
    }
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
    let v = JobView::of(&r, cat.job_filters(&r.job_id)?);
    if ctx.json {
        crate::ui::print_json(&v);
    } else {
        let enc = match (&v.password, &v.key_file) {
            (Some(p), _) => format!("{} (password '{p}')", v.encryption),
            (None, Some(k)) => format!("{} (key file {k})", v.encryption),
            _ => v.encryption.to_string(),
        };
        ctx.say(format!(
            "job '{}'{}\n  source:     {}\n  repository: {}\n  encryption: {}\n  chain:      {}\n  job id:     {}\n  created:    {}",
            v.name,
            if v.active { "" } else { " (deactivated: `arca job activate` resumes it)" },
            v.source,
            v.repository,
            enc,
            v.chain_id,
            v.job_id,
            v.created
        ));
        ctx.say(format!("  excludes:   {}", describe_filters(&v.excludes)));
    }
    Ok(0)
}

fn describe_filters(f: &crate::engine::filter::Filters) -> String {
    if f.is_empty() {
        return "none".into();
    }
    let mut parts: Vec<String> = f.exclude.iter().map(|p| format!("--exclude {p}")).collect();
    parts.extend(f.exclude_file.iter().map(|p| format!("--exclude-file {p}")));
    parts.extend(
        f.exclude_if_present
            .iter()
            .map(|p| format!("--exclude-if-present {p}")),
    );
    if f.exclude_caches {
        parts.push("--exclude-caches".into());
    }
    if f.one_file_system {
        parts.push("--one-file-system".into());
    }
    if let Some(n) = f.exclude_larger_than {
        parts.push(format!("--exclude-larger-than {n}"));
    }
    parts.join(" ")
}

async fn set(ctx: &Ctx, a: SetArgs) -> Result<i32> {
    let filters = if a.no_excludes {
        Some(Default::default())
    } else if a.filters.given() {
        Some(a.filters.filters())
    } else {
        None
    };
    if a.source.is_none() && filters.is_none() {
        return Err(Error::Usage(
            "nothing to change: give --source, excludes, or --no-excludes".into(),
        ));
    }
    let changed = ops_jobs::set_job(ctx, &a.name, a.source.as_deref(), filters).await?;
    let cat = ctx.catalog()?;
    let r = cat
        .job(&a.name)?
        .ok_or_else(|| Error::NotFound(format!("no job named '{}'", a.name)))?;
    let v = JobView::of(&r, cat.job_filters(&r.job_id)?);
    if ctx.json {
        crate::ui::print_json(&v);
    } else {
        for c in changed {
            ctx.say(c);
        }
    }
    Ok(0)
}

async fn keys(ctx: &Ctx, cmd: KeysCmd) -> Result<i32> {
    match cmd {
        KeysCmd::List { name } => {
            let (chain, rows) = ops_jobs::list_keyslots(ctx, &name)?;
            if ctx.json {
                crate::ui::print_json(&rows);
            } else {
                ctx.say(format!(
                    "keyslots of job '{name}' (chain {}, encryption {}, key generation {}):",
                    chain.chain_id.short(),
                    chain.encryption.as_str(),
                    chain.current_generation()
                ));
                for r in &rows {
                    ctx.say(format!(
                        "  {}  {:<10} {}",
                        &r.slot_id[..8],
                        r.provider,
                        r.description
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
            let new = if let Some(k) = &kms_key {
                NewSlot::Kms(k)
            } else if let Some(k) = &kmip_key {
                NewSlot::Kmip(k)
            } else if let Some(p) = &password {
                NewSlot::Password(p)
            } else if raw_key {
                NewSlot::RawKey
            } else {
                return Err(Error::Usage(
                    "give one of --kms-key KEY, --kmip-key KEY, --password NAME, --raw-key".into(),
                ));
            };
            let v = ops_jobs::add_keyslot(ctx, &name, new).await?;
            if ctx.json {
                crate::ui::print_json(&v);
            } else {
                ctx.say(format!(
                    "added keyslot {} to job '{name}': {}",
                    &v.slot_id[..8],
                    v.description
                ));
            }
            Ok(0)
        }
        KeysCmd::Remove { name, slot } => {
            let v = ops_jobs::remove_keyslot(ctx, &name, &slot).await?;
            if ctx.json {
                crate::ui::print_json(&v);
            } else {
                ctx.say(format!(
                    "removed keyslot {} ({}) from job '{name}'. A copy of the old chain record still lets its secret \
                     open the points written so far; run `arca job rekey {name}` so that it opens none written later",
                    &v.slot_id[..8],
                    v.description
                ));
            }
            Ok(0)
        }
    }
}
