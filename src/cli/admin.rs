//! `arca init`, `arca catalog rebuild`, `arca key generate`, `arca quickstart`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::*;
use crate::catalog::PointRow;
use crate::engine::open_point;
use crate::repo::format::{EncryptionMode, SlotParams, FORMAT_V1, FORMAT_VERSION};

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
pub enum ConfigCmd {
    /// Write the system configuration (jobs, repositories, trust pins, password hashes,
    /// escrow settings) to one file sealed under a bundle passphrase (ARCA_BUNDLE_PASSPHRASE,
    /// --bundle-passphrase-file, or a prompt asked twice). Keep it apart from the repository.
    Export {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long, value_name = "FILE")]
        bundle_passphrase_file: Option<PathBuf>,
    },
    /// Restore the system configuration from a bundle (on a fresh install: backups and
    /// restores then run without retyping job passphrases). Over an existing catalog it shows
    /// what would change and replaces nothing without --replace.
    Import {
        file: PathBuf,
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
    if let Some(f) = file {
        let t = zeroize::Zeroizing::new(
            std::fs::read_to_string(&f)
                .map_err(|e| Error::io(format!("read {}", f.display()), e))?,
        );
        let t = t.trim_end_matches(['\n', '\r']);
        if t.is_empty() {
            return Err(Error::Usage(format!("{} is empty", f.display())));
        }
        return Ok(crate::crypto::Passphrase::new(t.to_string()));
    }
    if let Ok(v) = std::env::var("ARCA_BUNDLE_PASSPHRASE") {
        if !v.is_empty() {
            return Ok(crate::crypto::Passphrase::new(v));
        }
    }
    if !ctx.creds.interactive {
        return Err(Error::Usage(
            "the bundle passphrase is needed: ARCA_BUNDLE_PASSPHRASE, --bundle-passphrase-file, or a terminal".into(),
        ));
    }
    let a = zeroize::Zeroizing::new(
        rpassword::prompt_password("Bundle passphrase: ")
            .map_err(|e| Error::io("read passphrase", e))?,
    );
    if confirm {
        let b = zeroize::Zeroizing::new(
            rpassword::prompt_password("Repeat the bundle passphrase: ")
                .map_err(|e| Error::io("read passphrase", e))?,
        );
        if a.is_empty() || *a != *b {
            return Err(Error::Usage(
                "the bundle passphrases are empty or differ; nothing was written".into(),
            ));
        }
    }
    Ok(crate::crypto::Passphrase::new(a.to_string()))
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

pub fn init(ctx: &Ctx, dir: &Path, group_readable: bool) -> Result<i32> {
    let repo = Repository::init(dir, group_readable)?;
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

/// Accepts what a repository says about one job: registers it in the catalog and pins the
/// chains whose keys resolve (mode, key check value, revision, KMS/KMIP keys), the job
/// record's revision and its newest authenticated recovery point. The explicit act behind
/// `job adopt` and `catalog rebuild`.
pub async fn adopt_job(
    ctx: &Ctx,
    cat: &Catalog,
    dir: &Path,
    job: &JobRecord,
) -> Result<serde_json::Value> {
    let repo = Repository::open(dir)?;
    cat.add_repository(&repo.id(), repo.root())?;
    let existing = cat.job(&job.name)?;
    let h = JobHandle {
        repo: Repository::open(dir)?,
        job: job.clone(),
        row: None,
    };
    let (points, _) = job_points(cat, &h)?;
    let mut chains: Vec<Id16> = job.all_chains();
    for p in &points {
        if !chains.contains(&p.chain_id) {
            chains.push(p.chain_id);
        }
    }
    let mut open: std::collections::HashMap<Id16, OpenChain> = Default::default();
    let mut key_note = None;
    for c in &chains {
        match open_chain(ctx, cat, &h, c, None, false).await {
            Ok((oc, _)) => {
                open.insert(*c, oc);
            }
            Err(e @ (Error::Integrity { .. } | Error::Untrusted(_))) => return Err(e),
            Err(e) => key_note = Some(e.to_string()),
        }
    }
    let current = open.get(&job.chain_id);
    let chain = match current {
        Some(oc) => oc.chain.clone(),
        None => repo.read_chain(&job.chain_id)?,
    };
    let password = chain.keyslots.iter().find_map(|s| match &s.params {
        SlotParams::Passphrase { kdf } => Some(kdf.password.clone()),
        _ => None,
    });
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
        job_revision: job.revision,
        latest_point: None,
        active: true,
    };
    if existing.as_ref().is_some_and(|e| e.job_id != job.job_id) {
        return Err(Error::Usage(format!(
            "the catalog already has another job named '{}'; rename or delete it first",
            job.name
        )));
    }
    cat.upsert_job(&row)?;
    cat.clear_pins(&job.job_id)?;
    for oc in open.values() {
        pin_open_chain(cat, &job.job_id, oc)?;
    }
    cat.set_job_revision(&job.name, job.revision)?;
    cat.set_repo_format_version(&repo.id(), repo.version())?;
    let mut opened = 0;
    let mut latest = None;
    for p in &points {
        let body = open
            .get(&p.chain_id)
            .and_then(|oc| open_point(oc, p).ok().map(|(_, b)| b));
        if body.is_some() {
            opened += 1;
            latest = Some(p.point_id);
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
    if let Some(l) = latest {
        cat.set_latest_point(&job.name, &l)?;
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
    if chain.encryption == EncryptionMode::None {
        ctx.note(format!(
            "warning: job '{}' writes to chain {} which is NOT encrypted",
            job.name, job.chain_id
        ));
    }
    // Escrow survives a reinstall: records of the repository that really hold the hash of a
    // password of this chain (verified: the escrowed hash opens the chain's authenticated
    // keyslot) go back into the catalog, and with them the escrow setting. An AWS KMS key is
    // asked only if trusted (--trust-kms-key): a planted record naming someone else's key
    // must never become the key future passwords are escrowed with.
    let mut escrow = None;
    if let Some(oc) = open.get(&job.chain_id) {
        for e in repo.list_escrow(Some(&job.job_id))? {
            let Some(slot) = oc
                .chain
                .keyslots
                .iter()
                .find(|s| matches!(&s.params, SlotParams::Passphrase { kdf } if *kdf == e.kdf))
            else {
                continue;
            };
            let kmip = e.provider.starts_with("kmip");
            if !kmip && !ctx.creds.kms.trusted_keys.contains(&e.key_arn) {
                ctx.note(format!(
                    "escrow record of password '{}' (KMS key {}) not restored: pass --trust-kms-key {} to verify and keep it",
                    e.kdf.password, e.key_arn, e.key_arn
                ));
                continue;
            }
            use crate::keys::KeyProvider;
            let verified = match crate::passwords::open_record(&ctx.creds, &e).await {
                Ok(hash) => matches!(
                    crate::keys::passphrase::PasswordHashProvider::new(e.kdf.clone(), hash)
                        .unwrap(slot, &oc.ctx)
                        .await,
                    Some(Ok(_))
                ),
                Err(_) => false,
            };
            if !verified {
                ctx.note(format!(
                    "escrow record of password '{}' ({} key {}) does not open the job's keyslot: not restored",
                    e.kdf.password, e.provider, e.key_arn
                ));
                continue;
            }
            cat.upsert_escrow(&e)?;
            let (setting, other) = if kmip {
                (
                    crate::passwords::KMIP_ESCROW_KEY_SETTING,
                    crate::passwords::ESCROW_KEY_SETTING,
                )
            } else {
                (
                    crate::passwords::ESCROW_KEY_SETTING,
                    crate::passwords::KMIP_ESCROW_KEY_SETTING,
                )
            };
            if cat.setting(setting)?.is_none() && cat.setting(other)?.is_none() {
                cat.set_setting(setting, Some(&e.key_arn))?;
                ctx.note(format!(
                    "escrow: enabled again from the repository's verified records ({} key {})",
                    e.provider, e.key_arn
                ));
            }
            escrow = Some(format!("{} {}", e.provider, e.key_arn));
        }
    }
    Ok(serde_json::json!({
        "job": job.name, "points": points.len(), "points_opened": opened,
        "encryption": chain.encryption.as_str(), "chain_id": job.chain_id.hex(), "source": job.source,
        "chains_pinned": open.len(), "escrow": escrow,
        "keys": key_note.map(|n| format!("not resolved: {n}")).unwrap_or("resolved".into()),
    }))
}

pub async fn catalog(ctx: &Ctx, cmd: CatalogCmd) -> Result<i32> {
    let CatalogCmd::Rebuild { repo: dir } = cmd;
    let cat = ctx.catalog()?;
    let repo = Repository::open(&dir)?;
    cat.add_repository(&repo.id(), repo.root())?;
    let (jobs, damaged) = repo.scan_jobs()?;
    let mut report = Vec::new();
    for d in damaged {
        report.push(serde_json::json!({"job": null, "status": format!("skipped damaged {}: {}", d.object, d.detail)}));
    }
    for job in jobs {
        if let Some(e) = cat.job(&job.name)? {
            if e.job_id != job.job_id {
                report.push(serde_json::json!({"job": job.name, "status": "skipped: the catalog has another job of this name"}));
                continue;
            }
        }
        match adopt_job(ctx, &cat, &dir, &job).await {
            Ok(r) => report.push(r),
            Err(e) => {
                report.push(serde_json::json!({"job": job.name, "status": format!("skipped: {e}")}))
            }
        }
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

/// `arca migrate --repo DIR`: format 1 → 2 in place. Chain records get a MAC (their
/// keyslots are kept as they are, covered by it), point records bind their public fields to
/// their data key (rewrapped; the body, index and packs stay byte for byte), job records get
/// a MAC and their list of chains, and `config` says version 2 last. Re-running finishes an
/// interrupted migration.
pub async fn migrate(ctx: &Ctx, dir: &Path) -> Result<i32> {
    let cat = ctx.catalog()?;
    let repo = Repository::open(dir)?;
    let _lock = repo.lock()?;
    let (jobs, damaged) = repo.scan_jobs()?;
    if let Some(d) = damaged.first() {
        return Err(Error::integrity(
            d.object.clone(),
            format!("{}; repair or remove it before migrating", d.detail),
        ));
    }
    let (all_points, _) = repo.scan_points()?;
    let mut report = Vec::new();
    for job in jobs {
        let h = JobHandle {
            repo: Repository::open(dir)?,
            job: job.clone(),
            row: cat.job(&job.name)?.filter(|r| r.job_id == job.job_id),
        };
        let mut chains = job.all_chains();
        for p in all_points.iter().filter(|p| p.job_id == job.job_id) {
            if !chains.contains(&p.chain_id) {
                chains.push(p.chain_id);
            }
        }
        let mut points_done = 0;
        let mut current_key = None;
        for c in &chains {
            let (oc, _) = open_chain_with(ctx, &cat, &h, c, None, false, true).await?;
            // A view of the chain as version 1, to open points not migrated yet.
            let mut v1 = oc.chain.clone();
            v1.version = FORMAT_V1;
            let v1 = OpenChain::new(v1, oc.chain_key.duplicate(), &job.name)?;
            let mut chain = oc.chain.clone();
            if chain.version < FORMAT_VERSION {
                chain.revision = 1;
                chain.seal(&oc.chain_key);
                repo.write_chain(&chain)?;
            }
            let v2 = OpenChain::new(chain, oc.chain_key.duplicate(), &job.name)?;
            for p in all_points
                .iter()
                .filter(|p| p.chain_id == *c && p.job_id == job.job_id)
            {
                if p.version >= FORMAT_VERSION {
                    continue;
                }
                let (_, body) = open_point(&v1, p)?;
                let dk = v1.data_key(p)?;
                let mut np = p.clone();
                np.version = FORMAT_VERSION;
                np.data_format = FORMAT_V1;
                np.source_kind = Some(body.kind.clone());
                let w = crate::crypto::wrap_key(&oc.chain_key, &dk, &np.data_key_place());
                np.data_key = crate::repo::format::WrappedKeyJson::from(&w);
                np.seal(&dk);
                repo.write_point(&np)?;
                points_done += 1;
            }
            if h.row.is_some() {
                pin_open_chain(&cat, &job.job_id, &v2)?;
            }
            if *c == job.chain_id {
                current_key = Some(oc.chain_key.duplicate());
            }
        }
        if job.version < FORMAT_VERSION {
            let mut j = job.clone();
            j.chains = chains.clone();
            j.chains.retain(|c| *c != j.chain_id);
            j.chains.push(j.chain_id);
            j.revision = 1;
            j.seal(
                current_key
                    .as_ref()
                    .expect("the job's own chain was opened above"),
            );
            repo.write_job(&j)?;
            if h.row.is_some() {
                cat.set_job_revision(&j.name, j.revision)?;
            }
        }
        report.push(serde_json::json!({"job": job.name, "chains": chains.len(), "points_migrated": points_done}));
    }
    if repo.version() < FORMAT_VERSION {
        let mut c = repo.config.clone();
        c.version = FORMAT_VERSION;
        let mut b = serde_json::to_vec_pretty(&c).expect("config serializes");
        b.push(b'\n');
        repo.write_atomic(&[], "config", &b)?;
    }
    cat.add_repository(&repo.id(), repo.root())?;
    cat.set_repo_format_version(&repo.id(), FORMAT_VERSION)?;
    if ctx.json {
        crate::ui::print_json(
            &serde_json::json!({"repository": dir.display().to_string(), "format_version": FORMAT_VERSION, "jobs": report}),
        );
    } else {
        ctx.say(format!(
            "repository {} is now in format version {FORMAT_VERSION}: its metadata is authenticated; no data was re-encrypted",
            dir.display()
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
                let r = Repository::init(&repo_dir, false)?;
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
                session: crate::ops::Session {
                    catalog_path: ctx.catalog_path.clone(),
                    quiet: ctx.quiet,
                    creds: crate::resolve::Credentials::new(None, Some(kf)),
                },
                json: ctx.json,
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
