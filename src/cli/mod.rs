//! Command-line interface: parse, call the library, print. One file per command group.

mod admin;
pub(crate) mod backup;
mod drill;
mod job;
mod password;
mod read;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::catalog::{Catalog, JobRow};
use crate::engine::OpenChain;
use crate::error::{Error, Result};
use crate::ops::Session;
use crate::repo::format::{Id16, JobRecord};
use crate::repo::Repository;
use crate::resolve::Credentials;

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
    /// Run this shell command and take its output as the passphrase (pass, Vault, a keyring...).
    /// Excludes --passphrase-file; both come before ARCA_PASSPHRASE.
    #[arg(long, global = true, value_name = "CMD", env = "ARCA_PASSWORD_COMMAND")]
    pub password_command: Option<String>,
    /// A raw 32-byte key, base64, in this file (encryption "key"). Else ARCA_KEY.
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Run this shell command and take its output (base64 of 32 bytes) as the raw key.
    /// Excludes --key-file; both come before ARCA_KEY.
    #[arg(long, global = true, value_name = "CMD", env = "ARCA_KEY_COMMAND")]
    pub key_command: Option<String>,
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
    /// Export or import the system configuration (jobs, repositories, trust pins, password
    /// hashes, escrow settings) as one file sealed under a bundle passphrase.
    #[command(subcommand)]
    Config(admin::ConfigCmd),
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
    /// Print a shell completion script: `arca completions bash > /etc/bash_completion.d/arca`.
    Completions {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
    /// Print arca's man page (roff), or write one page per command into --out DIR.
    Man {
        /// A directory for arca.1 and one arca-COMMAND.1 per command.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// What every command gets: the library session, and how to print.
pub struct Ctx {
    pub session: Session,
    pub json: bool,
}

impl std::ops::Deref for Ctx {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Ctx {
    /// Prints a line for humans (not in --json or --quiet mode).
    pub fn say(&self, s: impl AsRef<str>) {
        if !self.json && !self.quiet {
            crate::ui::out(s.as_ref());
        }
    }
}

pub async fn run(cli: Cli) -> Result<i32> {
    if cli.password_command.is_some() && cli.passphrase_file.is_some() {
        return Err(Error::Usage(
            "--password-command (or ARCA_PASSWORD_COMMAND) and --passphrase-file are mutually exclusive: give one".into(),
        ));
    }
    if cli.key_command.is_some() && cli.key_file.is_some() {
        return Err(Error::Usage(
            "--key-command (or ARCA_KEY_COMMAND) and --key-file are mutually exclusive: give one"
                .into(),
        ));
    }
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
    creds.password_command = cli.password_command.clone();
    creds.key_command = cli.key_command.clone();
    let ctx = Ctx {
        session: Session {
            catalog_path: cli.catalog.clone().unwrap_or_else(Catalog::default_path),
            quiet: cli.quiet,
            creds,
        },
        json: cli.json,
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
        Command::Config(c) => admin::config(&ctx, c),
        Command::Password(c) => password::run(&ctx, c).await,
        Command::Kms(c) => password::kms(&ctx, c).await,
        Command::Kmip(c) => password::kmip(&ctx, c).await,
        Command::Drill(a) => drill::run(&ctx, a).await,
        Command::Quickstart(a) => admin::quickstart(&ctx, a).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut b = Vec::new();
            clap_complete::generate(shell, &mut cmd, "arca", &mut b);
            crate::ui::out_bytes(&b);
            Ok(0)
        }
        Command::Man { out } => man(out.as_deref()),
    }
}

/// The man page of arca (stdout), or of arca and each command (into `out`).
fn man(out: Option<&std::path::Path>) -> Result<i32> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let render = |c: clap::Command| -> Result<Vec<u8>> {
        let mut b = Vec::new();
        clap_mangen::Man::new(c)
            .render(&mut b)
            .map_err(|e| Error::io("render the man page", e))?;
        Ok(b)
    };
    let Some(dir) = out else {
        crate::ui::out_bytes(&render(cmd)?);
        return Ok(0);
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let write = |name: String, b: Vec<u8>| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, b).map_err(|e| Error::io(format!("write {}", p.display()), e))
    };
    for sub in cmd.get_subcommands() {
        let name = format!("arca-{}", sub.get_name());
        let page = sub.clone().name(name.clone().leak() as &str);
        write(format!("{name}.1"), render(page)?)?;
    }
    write("arca.1".into(), render(cmd)?)?;
    Ok(0)
}

pub use crate::ops::{
    chain_kms_keys, check_job_trust, check_latest, job_points, locate_job, locate_job_untrusted,
    open_chain, open_chain_with, pin_open_chain, select_point, validate_job_name, JobHandle,
};
