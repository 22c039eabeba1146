//! Command-line interface: parse, call the library, print. One file per command group.

mod admin;
pub(crate) mod backup;
mod drill;
mod job;
mod password;
mod read;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::catalog::{Catalog, JobRow};
use crate::engine::OpenChain;
use crate::error::{Error, Result};
use crate::repo::format::{Id16, JobRecord, PointRecord};
use crate::repo::Repository;
use crate::resolve::{self, Credentials};

#[derive(Parser, Debug)]
#[command(
    name = "arca",
    version,
    about = "Encrypted, deduplicating backups built around key management"
)]
#[command(
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 backup done but some files unreadable, \
12 keys could not be resolved, 13 integrity error."
)]
pub struct Cli {
    /// The catalog database [default: the platform data dir, e.g. ~/.local/share/arca/catalog.db].
    #[arg(long, env = "ARCA_CATALOG", global = true)]
    pub catalog: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More detail (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Read the passphrase from this file (first line). Else ARCA_PASSPHRASE, else a prompt.
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// A raw 32-byte key, base64, in this file (encryption "key"). Else ARCA_KEY.
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The config file [default: ~/.config/arca/config.toml, or ARCA_CONFIG].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// KMS endpoint URL (LocalStack, an emulator); else AWS_ENDPOINT_URL, the config file, or AWS.
    #[arg(long, global = true, value_name = "URL")]
    pub kms_endpoint: Option<String>,
    /// AWS region for KMS; else AWS_REGION, the profile, or the config file.
    #[arg(long, global = true)]
    pub kms_region: Option<String>,
    /// KMIP server host (else ARCA_KMIP_HOST or [kmip] in the config file).
    #[arg(long, global = true)]
    pub kmip_host: Option<String>,
    /// KMIP server port [default: 5696].
    #[arg(long, global = true)]
    pub kmip_port: Option<u16>,
    /// CA certificate (PEM) of the KMIP server.
    #[arg(long, global = true, value_name = "FILE")]
    pub kmip_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with the KMIP server.
    #[arg(long, global = true, value_name = "FILE")]
    pub kmip_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS with the KMIP server.
    #[arg(long, global = true, value_name = "FILE")]
    pub kmip_client_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository in an empty or new directory.
    Init { dir: PathBuf },
    /// Create, list and show jobs; change a job's encryption (starts a new chain).
    #[command(subcommand)]
    Job(job::JobCmd),
    /// Run a job: back up its source (or standard input) into a new recovery point.
    Backup(backup::BackupArgs),
    /// List a job's recovery points.
    Points(read::PointsArgs),
    /// List the files of a recovery point.
    Ls(read::LsArgs),
    /// Search the encrypted file index of every recovery point of a job (needs its keys).
    Find(read::FindArgs),
    /// Restore a recovery point into a directory.
    Restore(read::RestoreArgs),
    /// Verify a job's recovery points; --read-data also reads and authenticates every chunk.
    Check(read::CheckArgs),
    /// Resolve the keys of a recovery point and explain how.
    #[command(subcommand)]
    Keys(read::KeysCmd),
    /// Manage the catalog.
    #[command(subcommand)]
    Catalog(admin::CatalogCmd),
    /// Generate a raw key file for `--encryption key`.
    #[command(subcommand)]
    Key(admin::KeyCmd),
    /// Named passwords: create, list, show, delete.
    #[command(subcommand)]
    Password(password::PasswordCmd),
    /// AWS KMS: escrow of password hashes.
    #[command(subcommand)]
    Kms(password::KmsCmd),
    /// KMIP: create keys on the key manager.
    #[command(subcommand)]
    Kmip(password::KmipCmd),
    /// Prove, ignoring the catalog (as after a reinstall), that every recovery point's keys
    /// can be recovered through KMS and/or a passphrase. Writes nothing.
    Drill(drill::DrillArgs),
    /// Back up a directory with no setup: creates a local repository, a job and a key on
    /// first use, runs the job and shows its recovery points.
    Quickstart(admin::QuickstartArgs),
}

/// What every command gets.
pub struct Ctx {
    pub catalog_path: PathBuf,
    pub json: bool,
    pub quiet: bool,
    pub creds: Credentials,
}

impl Ctx {
    pub fn catalog(&self) -> Result<Catalog> {
        Catalog::open(&self.catalog_path)
    }

    /// Prints a line for humans (not in --json or --quiet mode).
    pub fn say(&self, s: impl AsRef<str>) {
        if !self.json && !self.quiet {
            println!("{}", s.as_ref());
        }
    }

    pub fn note(&self, s: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", s.as_ref());
        }
    }
}

pub async fn run(cli: Cli) -> Result<i32> {
    let mut config = crate::config::Config::load(cli.config.as_deref())?;
    if cli.kms_endpoint.is_some() {
        config.kms.endpoint = cli.kms_endpoint.clone();
    }
    if cli.kms_region.is_some() {
        config.kms.region = cli.kms_region.clone();
    }
    let k = &mut config.kmip;
    k.host = cli.kmip_host.clone().or(k.host.take());
    k.port = cli.kmip_port.or(k.port);
    k.ca = cli.kmip_ca.clone().or(k.ca.take());
    k.cert = cli.kmip_cert.clone().or(k.cert.take());
    k.key = cli.kmip_client_key.clone().or(k.key.take());
    let ctx = Ctx {
        catalog_path: cli.catalog.clone().unwrap_or_else(Catalog::default_path),
        json: cli.json,
        quiet: cli.quiet,
        creds: Credentials::new(cli.passphrase_file.clone(), cli.key_file.clone())
            .with_kms(config.kms)
            .with_kmip(config.kmip),
    };
    match cli.command {
        Command::Init { dir } => admin::init(&ctx, &dir),
        Command::Job(c) => job::run(&ctx, c).await,
        Command::Backup(a) => backup::run(&ctx, a).await,
        Command::Points(a) => read::points(&ctx, a).await,
        Command::Ls(a) => read::ls(&ctx, a).await,
        Command::Find(a) => read::find(&ctx, a).await,
        Command::Restore(a) => read::restore(&ctx, a).await,
        Command::Check(a) => read::check(&ctx, a).await,
        Command::Keys(c) => read::keys(&ctx, c).await,
        Command::Catalog(c) => admin::catalog(&ctx, c).await,
        Command::Key(c) => admin::key(&ctx, c),
        Command::Password(c) => password::run(&ctx, c).await,
        Command::Kms(c) => password::kms(&ctx, c).await,
        Command::Kmip(c) => password::kmip(&ctx, c).await,
        Command::Drill(a) => drill::run(&ctx, a).await,
        Command::Quickstart(a) => admin::quickstart(&ctx, a).await,
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

pub fn locate_job(cat: &Catalog, name: &str, repo: Option<&Path>) -> Result<JobHandle> {
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
                    "no job named '{name}' in the catalog {}; pass --repo DIR to read it straight from its repository, \
                     or run `arca catalog rebuild --repo DIR`",
                    cat.path().display()
                ))
            })?;
            let repo = Repository::open(&row.repo_path)?;
            let job = repo
                .list_jobs()?
                .into_iter()
                .find(|j| j.job_id == row.job_id)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "job '{name}' is in the catalog but not in its repository {}",
                        row.repo_path.display()
                    ))
                })?;
            Ok(JobHandle {
                repo,
                job,
                row: Some(row),
            })
        }
    }
}

/// Resolves the key of a chain (for one point, when given), printing the tiers if asked.
pub async fn open_chain(
    ctx: &Ctx,
    cat: &Catalog,
    h: &JobHandle,
    chain_id: &Id16,
    point: Option<&PointRecord>,
    explain: bool,
) -> Result<(OpenChain, &'static str)> {
    let chain = h.repo.read_chain(chain_id)?;
    let escrow = h.repo.list_escrow(Some(&h.job.job_id))?;
    let req = resolve::Request {
        job_name: &h.job.name,
        chain,
        point_kdf: point.map(|p| p.kdf.as_ref()),
        point_label: point.map(|p| format!("recovery point {}", p.point_id)),
        catalog: Some(cat),
        creds: &ctx.creds,
        job_key_file: h.row.as_ref().and_then(|r| r.key_file.as_deref()),
        escrow: &escrow,
        tiers: resolve::Tiers::ALL,
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
    match resolve::resolve(req).await {
        Ok(r) => {
            print(&r.attempts);
            Ok((r.chain, r.tier))
        }
        Err(f) => {
            print(&f.attempts);
            Err(f.error)
        }
    }
}

/// Picks a recovery point: the latest, or the one whose id starts with `sel`.
pub fn select_point<'a>(
    points: &'a [PointRecord],
    sel: Option<&str>,
    job: &str,
) -> Result<&'a PointRecord> {
    match sel {
        None | Some("latest") => points.last().ok_or_else(|| {
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
