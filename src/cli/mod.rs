//! Command-line interface: parse, call the library, print. One file per command group.

mod admin;
pub(crate) mod backup;
mod drill;
mod job;
mod password;
mod read;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::catalog::{Catalog, ChainPin, JobRow};
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
12 keys could not be resolved, 13 integrity error, 14 the repository disagrees with what the catalog trusts."
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
    /// Allow KMS Decrypt with this key ARN besides the keys the catalog pins (repeatable;
    /// needed to restore through KMS after a reinstall). Also [kms] trusted_keys.
    #[arg(
        long,
        global = true,
        value_name = "ARN",
        env = "ARCA_TRUST_KMS_KEYS",
        value_delimiter = ','
    )]
    pub trust_kms_key: Vec<String>,
    /// Run Argon2 parameters above arca's cap (4x the defaults) when a repository asks for them.
    #[arg(long, global = true)]
    pub allow_expensive_kdf: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository in an empty or new directory.
    Init {
        dir: PathBuf,
        /// New files 0640 and directories 0750 (a repository shared with a group), instead of 0600/0700.
        #[arg(long)]
        group_readable: bool,
    },
    /// Upgrade a repository written by arca 0.1 (format 1) to format 2 in place: metadata is
    /// authenticated and re-bound; no data is re-encrypted or rewritten. Needs every chain's keys.
    Migrate {
        #[arg(long)]
        repo: PathBuf,
    },
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
            crate::ui::out(s.as_ref());
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
    config
        .kms
        .trusted_keys
        .extend(cli.trust_kms_key.iter().cloned());
    let mut creds = Credentials::new(cli.passphrase_file.clone(), cli.key_file.clone())
        .with_kms(config.kms)
        .with_kmip(config.kmip);
    creds.allow_expensive_kdf = cli.allow_expensive_kdf;
    let ctx = Ctx {
        catalog_path: cli.catalog.clone().unwrap_or_else(Catalog::default_path),
        json: cli.json,
        quiet: cli.quiet,
        creds,
    };
    match cli.command {
        Command::Init {
            dir,
            group_readable,
        } => admin::init(&ctx, &dir, group_readable),
        Command::Migrate { repo } => admin::migrate(&ctx, &repo).await,
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
    ctx: &Ctx,
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
            check_value: hex::encode(crate::crypto::check_value(&oc.chain_key)),
            revision: oc.chain.revision,
            kms_keys: chain_kms_keys(&oc.chain),
        },
    )
}

/// `explicit`: whether a passphrase or key the user gave must open this chain.
pub async fn open_chain_with(
    ctx: &Ctx,
    cat: &Catalog,
    h: &JobHandle,
    chain_id: &Id16,
    point: Option<&PointRecord>,
    explain: bool,
    explicit: bool,
) -> Result<(OpenChain, &'static str)> {
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
    let (oc, tier) = match resolve::resolve(req).await {
        Ok(r) => {
            print(&r.attempts);
            (r.chain, r.tier)
        }
        Err(f) => {
            print(&f.attempts);
            return Err(f.error);
        }
    };
    let check = hex::encode(crate::crypto::check_value(&oc.chain_key));
    match &pin {
        Some(p) if p.check_value != check => {
            return Err(Error::Untrusted(format!(
                "chain {chain_id} of job '{name}' opened, but with another key than the one the catalog pinned; refusing"
            )))
        }
        Some(p) if oc.chain.revision > p.revision => pin_open_chain(cat, &h.job.job_id, &oc)?,
        None if h.row.is_some() && (pins.is_empty() || legacy) => {
            pin_open_chain(cat, &h.job.job_id, &oc)?;
            if h.repo.version() >= 2 {
                cat.set_repo_format_version(&h.repo.id(), h.repo.version())?;
            }
        }
        _ => {}
    }
    // The job record is authenticated by the key of the chain it names.
    if *chain_id == h.job.chain_id && h.job.version >= 2 && !h.job.verify(&oc.chain_key) {
        return Err(Error::integrity(
            format!("job record of '{name}'"),
            "its MAC does not verify: it was changed by someone without the job's keys",
        ));
    }
    Ok((oc, tier))
}

/// A job's recovery points that belong to its trusted chains, oldest first, and the ones
/// that do not (planted in another chain, or unreadable).
pub fn job_points(
    cat: &Catalog,
    h: &JobHandle,
) -> Result<(Vec<PointRecord>, Vec<crate::repo::Damaged>)> {
    let trusted: Vec<Id16> = match &h.row {
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
    // A format-1 repository authenticates nothing, so its job records do not list their
    // chains: every point of the job counts (as in arca 0.1; `arca migrate` fixes this).
    let v1 = h.repo.version() < 2;
    let (ok, bad): (Vec<PointRecord>, Vec<PointRecord>) = h
        .repo
        .list_points(&h.job.job_id)?
        .into_iter()
        .partition(|p| v1 || trusted.contains(&p.chain_id));
    let bad = bad
        .into_iter()
        .map(|p| crate::repo::Damaged {
            object: format!("recovery point {}", p.point_id),
            detail: format!(
                "it claims job '{}' but lies in chain {}, which is not a chain of this job (planted?)",
                h.job.name, p.chain_id
            ),
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
