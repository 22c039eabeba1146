//! Command-line interface: parse, call the library, print. One file per command group.

mod admin;
pub(crate) mod backup;
mod copy;
mod drill;
mod filters;
mod job;
mod password;
mod read;
mod retention;

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
    #[arg(
        long,
        env = "ARCA_CATALOG",
        global = true,
        help_heading = "Global options"
    )]
    pub catalog: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Only errors.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// More detail (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub verbose: u8,
    /// Read the passphrase from this file (first line). Else ARCA_PASSPHRASE, else a prompt.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub passphrase_file: Option<PathBuf>,
    /// Run this shell command and take its output as the passphrase (pass, Vault, a keyring...).
    /// Excludes --passphrase-file; both come before ARCA_PASSPHRASE.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "CMD",
        env = "ARCA_PASSWORD_COMMAND"
    )]
    pub password_command: Option<String>,
    /// A raw 32-byte key, base64, in this file (encryption "key"). Else ARCA_KEY.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub key_file: Option<PathBuf>,
    /// Run this shell command and take its output (base64 of 32 bytes) as the raw key.
    /// Excludes --key-file; both come before ARCA_KEY.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "CMD",
        env = "ARCA_KEY_COMMAND"
    )]
    pub key_command: Option<String>,
    /// The config file [default: ~/.config/arca/config.toml, or ARCA_CONFIG].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// KMS endpoint URL (LocalStack, an emulator); else AWS_ENDPOINT_URL, the config file, or AWS.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL"
    )]
    pub kms_endpoint: Option<String>,
    /// AWS region for KMS; else AWS_REGION, the profile, or the config file.
    #[arg(long, global = true, help_heading = "Global options")]
    pub kms_region: Option<String>,
    /// KMIP server host (else ARCA_KMIP_HOST or [kmip] in the config file).
    #[arg(long, global = true, help_heading = "Global options")]
    pub kmip_host: Option<String>,
    /// KMIP server port [default: 5696].
    #[arg(long, global = true, help_heading = "Global options")]
    pub kmip_port: Option<u16>,
    /// CA certificate (PEM) of the KMIP server.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub kmip_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with the KMIP server.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub kmip_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS with the KMIP server.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub kmip_client_key: Option<PathBuf>,
    /// Allow KMS Decrypt with this key ARN besides the keys the catalog pins (repeatable;
    /// needed to restore through KMS after a reinstall). Also [kms] trusted_keys.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "ARN",
        env = "ARCA_TRUST_KMS_KEYS",
        value_delimiter = ','
    )]
    pub trust_kms_key: Vec<String>,
    /// How long to wait for a lock another arca process holds (e.g. 30s, 10m) [default: 10m].
    #[arg(long, global = true, help_heading = "Global options", value_name = "DURATION", env = "ARCA_LOCK_WAIT", value_parser = humantime::parse_duration)]
    pub lock_wait: Option<std::time::Duration>,
    /// The endpoint of an S3-compatible store for s3:// repositories (MinIO, Ceph RGW, Wasabi...).
    /// Else AWS_ENDPOINT_URL_S3; AWS S3 when neither is set.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL",
        env = "ARCA_S3_ENDPOINT"
    )]
    pub s3_endpoint: Option<String>,
    /// Path-style S3 addressing (http://host/bucket/key) [default: on with an endpoint, else off].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "BOOL",
        env = "ARCA_S3_PATH_STYLE"
    )]
    pub s3_path_style: Option<bool>,
    /// The bucket's region [default: the AWS chain (AWS_REGION, profile), else us-east-1].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "REGION",
        env = "ARCA_S3_REGION"
    )]
    pub s3_region: Option<String>,
    /// Run Argon2 parameters above arca's cap (4x the defaults) when a repository asks for them.
    #[arg(long, global = true, help_heading = "Global options")]
    pub allow_expensive_kdf: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository in an empty or new directory.
    Init {
        /// The new repository: a directory (created if missing; must be empty) or
        /// s3://BUCKET/PREFIX (the prefix must hold nothing).
        dir: PathBuf,
        /// New files 0640 and directories 0750 (a repository shared with a group), instead of 0600/0700.
        #[arg(long)]
        group_readable: bool,
        /// S3 Object Lock: every object a backup writes is retained this many days (the bucket
        /// must have Object Lock enabled; `forget` extends the retention of what it keeps).
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
        object_lock_days: Option<u32>,
        /// governance (users with s3:BypassGovernanceRetention may shorten it) or compliance
        /// (nobody can, not even the account root) [default: governance].
        #[arg(long, value_name = "MODE", requires = "object_lock_days")]
        object_lock_mode: Option<crate::repo::store::LockMode>,
    },
    /// Upgrade a repository written by arca 0.1 (format 1) to format 2 in place: metadata is
    /// authenticated and re-bound; no data is re-encrypted or rewritten. Needs every chain's keys.
    Migrate {
        /// The repository directory.
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
    /// What changed between two recovery points: added, removed, changed files (sizes) and
    /// metadata changes (mode, owner, times).
    Diff {
        /// The job's name.
        name: String,
        /// The earlier point (id or id prefix).
        from: String,
        /// The later point (id or id prefix, or "latest").
        to: String,
        /// Read the job from this repository instead of the catalog.
        #[arg(long)]
        repo: Option<PathBuf>,
    },
    /// Sizes per recovery point and for the whole job: source bytes, unique bytes after
    /// deduplication, bytes stored (compressed and sealed), and the ratio.
    Stats {
        /// The job's name.
        name: String,
        /// Read the job from this repository instead of the catalog.
        #[arg(long)]
        repo: Option<PathBuf>,
    },
    /// Verify a job's recovery points; --read-data also reads and authenticates every chunk.
    Check(read::CheckArgs),
    /// Remove recovery points by a retention policy (restic's --keep-* rules, per series) or
    /// by id. Their space is reclaimed by `prune` (or `--prune`).
    Forget(retention::ForgetArgs),
    /// Reclaim space: remove what no kept recovery point uses (forgotten points, leftovers of
    /// interrupted backups) and repack partly used packs. Crash-safe.
    Prune(retention::PruneArgs),
    /// Copy a job's recovery points to another repository (another zone: a local directory
    /// or S3), as ciphertext (--encrypt-on source) or re-encrypted there (--encrypt-on target).
    Copy(copy::CopyArgs),
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
    /// Raw key files for `--encryption key` (`keyfile generate`; formerly `key`).
    #[command(subcommand)]
    #[command(name = "keyfile", alias = "key")]
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
    let catalog_path = cli.catalog.clone().unwrap_or_else(Catalog::default_path);
    crate::repo::store::s3::configure(crate::repo::store::s3::S3Settings {
        endpoint: cli.s3_endpoint.clone(),
        path_style: cli.s3_path_style,
        region: cli.s3_region.clone(),
        cache_dir: catalog_path.parent().map(|d| d.join("cache")),
        ..Default::default()
    });
    let ctx = Ctx {
        session: Session {
            catalog_path,
            quiet: cli.quiet,
            creds,
            lock_wait: cli.lock_wait.unwrap_or(std::time::Duration::from_secs(600)),
        },
        json: cli.json,
    };
    match cli.command {
        Command::Init {
            dir,
            group_readable,
            object_lock_days,
            object_lock_mode,
        } => admin::init(
            &ctx,
            &dir,
            &crate::repo::InitOptions {
                group_readable,
                object_lock: object_lock_days.map(|days| crate::repo::store::ObjectLock {
                    days,
                    mode: object_lock_mode.unwrap_or(crate::repo::store::LockMode::Governance),
                }),
            },
        ),
        Command::Migrate { repo } => admin::migrate(&ctx, &repo).await,
        Command::Job(c) => job::run(&ctx, c).await,
        Command::Backup(a) => backup::run(&ctx, a).await,
        Command::Points(a) => read::points(&ctx, a).await,
        Command::Ls(a) => read::ls(&ctx, a).await,
        Command::Find(a) => read::find(&ctx, a).await,
        Command::Restore(a) => read::restore(&ctx, a).await,
        Command::Diff {
            name,
            from,
            to,
            repo,
        } => read::diff(&ctx, &name, repo.as_deref(), &from, &to).await,
        Command::Stats { name, repo } => read::stats(&ctx, &name, repo.as_deref()).await,
        Command::Check(a) => read::check(&ctx, a).await,
        Command::Forget(a) => retention::forget(&ctx, a).await,
        Command::Prune(a) => retention::prune(&ctx, a).await,
        Command::Copy(a) => copy::run(&ctx, a).await,
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
            let mut cmd = command();
            let mut b = Vec::new();
            clap_complete::generate(shell, &mut cmd, "arca", &mut b);
            crate::ui::out_bytes(&b);
            Ok(0)
        }
        Command::Man { out } => man(out.as_deref()),
    }
}

/// Two or three examples per command, shown after its help (and in the man pages).
const EXAMPLES: &[(&str, &str)] = &[
    ("init", "arca init /srv/backup/repo\n  arca init /mnt/shared/repo --group-readable\n  arca init s3://acme-backups/arca --object-lock-days 30\n  arca --s3-endpoint http://minio.lan:9000 init s3://backups/arca"),
    ("migrate", "arca migrate --repo /srv/backup/repo\n  arca --passphrase-file ~/.arca-pass migrate --repo /srv/backup/repo"),
    ("job create", "arca job create nightly --repo /srv/backup/repo --source /home --encryption passphrase\n  arca job create db --repo /srv/backup/repo --source /var/lib/db --encryption kms --kms-key alias/backup\n  arca --key-file ~/arca.key job create media --repo /srv/backup/repo --source /srv/media --encryption key"),
    ("job list", "arca job list\n  arca job list --json"),
    ("job set", "arca job set nightly --exclude '*.tmp' --exclude node_modules --exclude-caches\n  arca job set nightly --source /srv/home --one-file-system\n  arca job set nightly --no-excludes"),
    ("job show", "arca job show nightly\n  arca job show nightly --json"),
    ("job encryption", "arca job deactivate nightly && arca job encryption nightly --encryption kms --kms-key alias/backup\n  arca job encryption nightly --encryption passphrase --password ops"),
    ("job deactivate", "arca job deactivate nightly\n  arca job deactivate nightly && arca job activate nightly --encryption kmip --kmip-key backups"),
    ("job activate", "arca job activate nightly\n  arca job activate nightly --encryption kms --kms-key alias/backup"),
    ("job keyslots list", "arca job keyslots list nightly\n  arca job keyslots list nightly --json"),
    ("job keyslots add", "arca job keyslots add nightly --kms-key alias/backup\n  arca job keyslots add nightly --password recovery\n  arca --key-file ~/arca.key job keyslots add nightly --raw-key"),
    ("job keyslots remove", "arca job keyslots remove nightly 3f2a\n  arca job keyslots remove nightly 3f2a && arca job rekey nightly"),
    ("job rekey", "arca job rekey nightly\n  arca job rekey nightly --json"),
    ("job adopt", "arca job adopt nightly --repo /srv/backup/repo\n  arca --passphrase-file ~/.arca-pass job adopt nightly --repo /srv/backup/repo"),
    ("backup", "arca backup nightly\n  pg_dump mydb | arca backup db --stdin --stdin-name mydb.sql\n  arca backup nightly --exclude '*.iso' --exclude-larger-than 2G --json"),
    ("points", "arca points nightly\n  arca points nightly --repo /srv/backup/repo --json"),
    ("ls", "arca ls nightly\n  arca ls nightly 3f2a9c01 | grep etc/"),
    ("find", "arca find nightly '*.conf'\n  arca find nightly invoice --json"),
    ("restore", "arca restore nightly --target /tmp/restore\n  arca restore nightly 3f2a9c01 --target /tmp/restore --include etc/hosts\n  arca restore nightly --repo /srv/backup/repo --target /tmp/restore --explain"),
    ("diff", "arca diff nightly 3f2a 9c01\n  arca diff nightly 3f2a latest --json"),
    ("stats", "arca stats nightly\n  arca stats nightly --json"),
    ("check", "arca check nightly\n  arca check nightly --read-data"),
    ("forget", "arca forget nightly --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune\n  arca forget nightly --keep-last 10 --dry-run --json\n  arca forget db --stream mydb.sql --keep-within 30d\n  arca forget nightly 3f2a9c01"),
    ("copy", "arca copy nightly --to s3://offsite-backups/arca --verify\n  arca copy nightly --to /mnt/usb/arca --points 3f2a9c01\n  arca copy nightly --to s3://dr-site/arca --encrypt-on target --to-job nightly-dr"),
    ("prune", "arca prune nightly\n  arca prune --repo /srv/backup/repo --dry-run\n  arca prune nightly --max-unused 0 --max-repack 10"),
    ("keys resolve", "arca keys resolve nightly --explain\n  arca keys resolve nightly 3f2a9c01 --repo /srv/backup/repo --no-store"),
    ("catalog rebuild", "arca catalog rebuild --repo /srv/backup/repo\n  arca --trust-kms-key arn:aws:kms:eu-west-1:111122223333:key/1234abcd catalog rebuild --repo /srv/backup/repo"),
    ("config export", "arca config export --out /secure/arca-config.bundle\n  arca config export --out arca.bundle --bundle-passphrase-file ~/.bundle-pass"),
    ("config import", "arca config import /secure/arca-config.bundle\n  arca config import arca.bundle --dry-run\n  arca config import arca.bundle --replace"),
    ("keyfile generate", "arca keyfile generate --out ~/arca.key\n  arca keyfile generate --out /etc/arca/media.key"),
    ("password create", "arca password create ops --description 'operations team'\n  arca --password-command 'pass show backup/ops' password create ops"),
    ("password list", "arca password list\n  arca password list --json"),
    ("password show", "arca password show ops\n  arca password show ops --json"),
    ("password delete", "arca password delete old-ops\n  arca password delete old-ops --json"),
    ("password rotate", "arca password rotate ops\n  arca password rotate ops --new-passphrase-file ~/.new-pass"),
    ("kms escrow enable", "arca kms escrow enable --key alias/arca-escrow\n  arca kms escrow enable --key arn:aws:kms:eu-west-1:111122223333:key/1234abcd"),
    ("kms escrow disable", "arca kms escrow disable\n  arca kms escrow disable --json"),
    ("kms escrow status", "arca kms escrow status\n  arca kms escrow status --json"),
    ("kmip create-key", "arca kmip create-key arca-backups\n  arca kmip create-key arca-escrow --json"),
    ("kmip escrow enable", "arca kmip escrow enable --key arca-escrow\n  arca kmip escrow enable --key 42"),
    ("kmip escrow disable", "arca kmip escrow disable\n  arca kmip escrow disable --json"),
    ("kmip escrow status", "arca kmip escrow status\n  arca kmip escrow status --json"),
    ("drill", "arca drill nightly\n  arca drill --repo /srv/backup/repo --json"),
    ("quickstart", "arca quickstart --source ~/Documents\n  arca quickstart --source /etc --repo /mnt/usb/arca --job etc"),
    ("completions", "arca completions bash > /etc/bash_completion.d/arca\n  arca completions zsh > ~/.zfunc/_arca"),
    ("man", "arca man | man -l -\n  arca man --out /usr/local/share/man/man1"),
];

fn with_examples(mut cmd: clap::Command, path: &[&str], text: &'static str) -> clap::Command {
    match path {
        [] => {
            let body = format!("Examples:\n  {text}");
            cmd.after_help(body)
        }
        [first, rest @ ..] => {
            cmd = cmd.mut_subcommand(*first, |c| with_examples(c, rest, text));
            cmd
        }
    }
}

/// The full command definition: clap's, with the examples of every command. Global options
/// are listed once, under their own heading in `arca --help`; a subcommand's help points
/// there instead of repeating them (they still work after any subcommand).
pub fn command() -> clap::Command {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    for (path, text) in EXAMPLES {
        let p: Vec<&str> = path.split(' ').collect();
        cmd = with_examples(cmd, &p, text);
    }
    cmd.build();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for n in names {
        cmd = cmd.mut_subcommand(n, hide_globals);
    }
    cmd
}

fn hide_globals(mut c: clap::Command) -> clap::Command {
    let examples = c.get_after_help().map(|h| h.to_string());
    let note = "Global options (--catalog, --json, --quiet, --passphrase-file, --password-command, \
                --key-file, --config, KMS and KMIP settings...) work here too: `arca --help` lists them.";
    let after = match examples {
        Some(e) => format!("{e}\n\n{note}"),
        None => note.to_string(),
    };
    c = c
        .mut_args(|a| if a.is_global_set() { a.hide(true) } else { a })
        .after_help(after);
    let names: Vec<String> = c
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for n in names {
        c = c.mut_subcommand(n, hide_globals);
    }
    c
}

/// Parses the command line (exits with clap's message on a usage error).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let m = command().get_matches();
    Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
}

/// A secret that is not the job passphrase (a new passphrase, a bundle passphrase): from a
/// file given by flag (first line), else the environment variable `env`, else a no-echo prompt
/// on a terminal (asked twice when `confirm`). `what` names it in messages.
pub(crate) fn other_secret(
    ctx: &Ctx,
    file: Option<&std::path::Path>,
    env: &str,
    flag: &str,
    prompt: &str,
    what: &str,
    confirm: bool,
) -> Result<crate::crypto::Passphrase> {
    if let Some(f) = file {
        let t = zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| Error::io(format!("read {}", f.display()), e))?,
        );
        let t = t.trim_end_matches(['\n', '\r']);
        if t.is_empty() {
            return Err(Error::Usage(format!("{} is empty", f.display())));
        }
        return Ok(crate::crypto::Passphrase::new(t.to_string()));
    }
    if let Ok(v) = std::env::var(env) {
        if !v.is_empty() {
            return Ok(crate::crypto::Passphrase::new(v));
        }
    }
    if !ctx.creds.interactive {
        return Err(Error::Usage(format!(
            "the {what} is needed: {env}, {flag}, or a terminal"
        )));
    }
    let a = zeroize::Zeroizing::new(
        rpassword::prompt_password(prompt).map_err(|e| Error::io("read passphrase", e))?,
    );
    if confirm {
        let b = zeroize::Zeroizing::new(
            rpassword::prompt_password(format!("Repeat the {what}: "))
                .map_err(|e| Error::io("read passphrase", e))?,
        );
        if a.is_empty() || *a != *b {
            return Err(Error::Usage(format!(
                "the {what}s are empty or differ; nothing was changed"
            )));
        }
    }
    Ok(crate::crypto::Passphrase::new(a.to_string()))
}

/// The man page of arca (stdout), or of arca and each command (into `out`).
fn man(out: Option<&std::path::Path>) -> Result<i32> {
    let cmd = command();
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

#[cfg(test)]
mod help_tests {
    use super::Cli;
    use clap::CommandFactory;

    fn walk(c: &clap::Command, path: String, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            if a.get_id() == "help" || a.get_id() == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!(
                    "{path}: argument {} has no description",
                    a.get_id()
                ));
            }
        }
        let subs: Vec<_> = c
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subs.is_empty() {
            let examples = c
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if examples.matches("\n  arca ").count() < 2 {
                out.push(format!("{path}: fewer than two examples"));
            }
        }
        for s in subs {
            walk(s, format!("{path} {}", s.get_name()), out);
        }
    }

    #[test]
    fn every_command_documents_its_arguments_and_has_examples() {
        let cmd = super::command();
        cmd.clone().debug_assert();
        let mut problems = Vec::new();
        walk(&cmd, "arca".into(), &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn global_options_have_their_own_heading() {
        let cmd = Cli::command();
        for a in cmd.get_arguments().filter(|a| a.is_global_set()) {
            assert_eq!(
                a.get_help_heading(),
                Some("Global options"),
                "global option {} is not under the Global options heading",
                a.get_id()
            );
        }
    }
}
