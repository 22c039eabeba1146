//! `arca password create|list|show|delete` and `arca kms escrow enable|disable|status`.

use clap::Subcommand;
use serde::Serialize;

use super::*;
use crate::crypto::KdfParams;
use crate::keys::passphrase;
use crate::passwords::ESCROW_KEY_SETTING;

#[derive(Subcommand, Debug)]
pub enum PasswordCmd {
    /// Create a named password (the passphrase from ARCA_PASSPHRASE, --passphrase-file, or a prompt).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List passwords: name, description, created, jobs using it, escrowed. Never the hash.
    List,
    /// Show one password.
    Show { name: String },
    /// Delete a password no job uses (its stored hash and escrow records go with it).
    Delete { name: String },
    /// Change a password's passphrase. Rewraps key material only: no data is re-encrypted or
    /// re-uploaded. Afterwards the new passphrase opens every recovery point of every job using
    /// it, the old one opens none, and the next backup is an incremental under fresh data keys.
    /// The new passphrase comes from ARCA_NEW_PASSPHRASE, --new-passphrase-file, or a prompt.
    Rotate {
        name: String,
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KmsCmd {
    /// Escrow password hashes with AWS KMS, so a reinstalled product can restore without them.
    #[command(subcommand)]
    Escrow(EscrowCmd),
}

#[derive(Subcommand, Debug)]
pub enum KmipCmd {
    /// Create and activate an AES-256 key with this name on the KMIP server.
    CreateKey { name: String },
    /// Escrow password hashes with a KMIP key (name or unique identifier).
    #[command(subcommand)]
    Escrow(EscrowCmd),
}

pub async fn kmip(ctx: &Ctx, cmd: KmipCmd) -> Result<i32> {
    let name = match cmd {
        KmipCmd::CreateKey { name } => name,
        KmipCmd::Escrow(e) => return escrow(ctx, e, Target::Kmip).await,
    };
    let client = ctx
        .creds
        .kmip_client()
        .map_err(|e| Error::KeysUnavailable {
            job: String::new(),
            detail: e.to_string(),
        })?;
    let n = name.clone();
    let uid = tokio::task::spawn_blocking(move || client.create_key(&n))
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .map_err(|e| Error::KeysUnavailable {
            job: String::new(),
            detail: e.to_string(),
        })?;
    if ctx.json {
        crate::ui::print_json(&serde_json::json!({"name": name, "unique_identifier": uid}));
    } else {
        ctx.say(format!(
            "created and activated KMIP key '{name}' (unique identifier {uid})"
        ));
    }
    Ok(0)
}

#[derive(Subcommand, Debug)]
pub enum EscrowCmd {
    /// Escrow every password hash, now and when passwords are attached to jobs later.
    Enable {
        /// The KMS key: key id, ARN, alias name or alias ARN.
        #[arg(long)]
        key: String,
    },
    /// Stop escrowing and delete the escrow records from the catalog and the repositories.
    Disable,
    /// Show whether escrow is on and which records exist.
    Status,
}

#[derive(Serialize)]
struct PasswordView {
    name: String,
    description: String,
    created: String,
    jobs: Vec<String>,
    escrowed: bool,
    kdf: String,
}

fn view(cat: &Catalog, p: &crate::catalog::PasswordRow) -> Result<PasswordView> {
    let jobs = cat.jobs_using_password(&p.name)?;
    let records = cat.escrow_records(Some(&p.name))?;
    // Escrowed: every job using it has a record made with the current salt.
    let escrowed = !jobs.is_empty()
        && jobs.iter().all(|j| {
            cat.job(j).ok().flatten().is_some_and(|row| {
                records
                    .iter()
                    .any(|r| r.job_id == row.job_id && r.kdf.salt == p.kdf.salt)
            })
        });
    Ok(PasswordView {
        name: p.name.clone(),
        description: p.description.clone(),
        created: p.created.clone(),
        jobs,
        escrowed,
        kdf: format!("argon2id m={} KiB t={} p={}", p.kdf.m_kib, p.kdf.t, p.kdf.p),
    })
}

pub async fn run(ctx: &Ctx, cmd: PasswordCmd) -> Result<i32> {
    let cat = ctx.catalog()?;
    match cmd {
        PasswordCmd::Create { name, description } => {
            validate_job_name(&name)?;
            if cat.password(&name)?.is_some() {
                return Err(Error::Usage(format!("password '{name}' already exists")));
            }
            let p = ctx
                .creds
                .read_passphrase(&format!("New passphrase for password '{name}': "), true)?
                .ok_or_else(|| {
                    Error::Usage(
                        "a passphrase is needed: ARCA_PASSPHRASE, --passphrase-file, or a terminal"
                            .into(),
                    )
                })?;
            let params = KdfParams::for_new_password().map_err(|e| Error::Usage(e.to_string()))?;
            let (rec, hash) = passphrase::new_password(&name, &p, params)
                .map_err(|e| Error::Other(e.to_string()))?;
            cat.create_password(&rec, &description, &hash)?;
            ctx.say(format!("created password '{name}'; attach it with `arca job create ... --encryption passphrase --password {name}`"));
            Ok(0)
        }
        PasswordCmd::List => {
            let rows: Vec<PasswordView> = cat
                .list_passwords()?
                .iter()
                .map(|p| view(&cat, p))
                .collect::<Result<_>>()?;
            if ctx.json {
                crate::ui::print_json(&rows);
            } else {
                ctx.say(format!(
                    "{:<20} {:<28} {:<9} {:<30} {}",
                    "NAME", "CREATED", "ESCROWED", "JOBS", "DESCRIPTION"
                ));
                for r in rows {
                    ctx.say(format!(
                        "{:<20} {:<28} {:<9} {:<30} {}",
                        r.name,
                        r.created,
                        if r.escrowed { "yes" } else { "no" },
                        r.jobs.join(","),
                        r.description
                    ));
                }
            }
            Ok(0)
        }
        PasswordCmd::Show { name } => {
            let p = cat
                .password(&name)?
                .ok_or_else(|| Error::NotFound(format!("no password named '{name}'")))?;
            let v = view(&cat, &p)?;
            if ctx.json {
                crate::ui::print_json(&v);
            } else {
                ctx.say(format!(
                    "password '{}'\n  description: {}\n  created: {}\n  kdf: {}\n  jobs: {}\n  escrowed: {}",
                    v.name,
                    v.description,
                    v.created,
                    v.kdf,
                    v.jobs.join(", "),
                    if v.escrowed { "yes" } else { "no" }
                ));
            }
            Ok(0)
        }
        PasswordCmd::Rotate {
            name,
            new_passphrase_file,
        } => rotate(ctx, &cat, &name, new_passphrase_file).await,
        PasswordCmd::Delete { name } => {
            if !cat.delete_password(&name)? {
                return Err(Error::NotFound(format!("no password named '{name}'")));
            }
            ctx.say(format!("deleted password '{name}'"));
            Ok(0)
        }
    }
}

fn new_passphrase(
    ctx: &Ctx,
    name: &str,
    file: Option<std::path::PathBuf>,
) -> Result<crate::crypto::Passphrase> {
    if let Ok(v) = std::env::var("ARCA_NEW_PASSPHRASE") {
        if !v.is_empty() {
            return Ok(crate::crypto::Passphrase::new(v));
        }
    }
    if file.is_none() && !ctx.creds.interactive {
        return Err(Error::Usage("the new passphrase is needed: ARCA_NEW_PASSPHRASE, --new-passphrase-file, or a terminal".into()));
    }
    // Credentials::read_passphrase prefers ARCA_PASSPHRASE, which holds the *old* one here.
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
    let a = rpassword::prompt_password(format!("New passphrase for password '{name}': "))
        .map_err(|e| Error::io("read passphrase", e))?;
    let b = rpassword::prompt_password("Repeat the new passphrase: ")
        .map_err(|e| Error::io("read passphrase", e))?;
    if a.is_empty() || a != b {
        return Err(Error::Usage(
            "the new passphrases are empty or differ; nothing was changed".into(),
        ));
    }
    Ok(crate::crypto::Passphrase::new(a))
}

async fn rotate(
    ctx: &Ctx,
    cat: &Catalog,
    name: &str,
    file: Option<std::path::PathBuf>,
) -> Result<i32> {
    use crate::keys::passphrase::PasswordHashProvider;
    use crate::keys::{unwrap_any, KeyProvider, SlotContext};
    use crate::repo::format::SlotParams;

    let (old, old_hash) = cat.password_hash(name)?.ok_or_else(|| {
        Error::NotFound(format!(
            "password '{name}' has no stored hash in this catalog; restore it first (any restore with the passphrase, or `arca catalog rebuild --repo DIR` with ARCA_PASSPHRASE)"
        ))
    })?;
    let pass = new_passphrase(ctx, name, file)?;
    let params = KdfParams::for_new_password().map_err(|e| Error::Usage(e.to_string()))?;
    let (new, new_hash) =
        passphrase::new_password(name, &pass, params).map_err(|e| Error::Other(e.to_string()))?;
    let old_p = PasswordHashProvider::new(old.clone(), old_hash);
    let new_p = PasswordHashProvider::new(new.clone(), new_hash.duplicate());
    let mut report = Vec::new();
    // Chains whose old keyslot is removed last, once the new hash is stored everywhere.
    let mut pending: Vec<(
        std::path::PathBuf,
        Id16,
        crate::crypto::SecretKey,
        String,
        Id16,
    )> = Vec::new();
    for job_name in cat.jobs_using_password(name)? {
        let h = locate_job(cat, &job_name, None)?;
        let _lock = h.repo.lock()?;
        let mut chain_ids: Vec<Id16> = h
            .repo
            .list_points(&h.job.job_id)?
            .iter()
            .map(|p| p.chain_id)
            .collect();
        chain_ids.push(h.job.chain_id);
        chain_ids.sort();
        chain_ids.dedup();
        let mut points_updated = 0;
        for chain_id in chain_ids {
            let mut chain = h.repo.read_chain(&chain_id)?;
            if !chain.keyslots.iter().any(
                |s| matches!(&s.params, SlotParams::Passphrase { kdf } if kdf.salt == old.salt),
            ) {
                continue;
            }
            let sctx = SlotContext::of_chain(&chain, &job_name);
            let key = match unwrap_any(&old_p, &chain.keyslots, &sctx).await {
                Some(Ok(k)) => k,
                Some(Err(e)) => {
                    return Err(Error::KeysUnavailable {
                        job: job_name.clone(),
                        detail: format!(
                            "the stored hash of '{name}' does not open chain {chain_id}: {e}"
                        ),
                    })
                }
                None => continue,
            };
            if chain.version >= 2 && !chain.verify(&key) {
                return Err(Error::integrity(
                    format!("chain record {chain_id}"),
                    "its MAC does not verify: its keyslots were changed by someone without the chain key",
                ));
            }
            // 1. Add the new keyslot (both passwords work if we stop here).
            let slot = new_p
                .wrap(&key, &sctx)
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
            chain.keyslots.push(slot);
            if chain.version >= 2 {
                chain.revision += 1;
                chain.seal(&key);
            }
            h.repo.write_chain(&chain)?;
            let oc = crate::engine::OpenChain::new(chain.clone(), key.duplicate(), &job_name);
            if h.row.is_some() {
                super::pin_open_chain(cat, &h.job.job_id, &oc)?;
            }
            // 2. Points record the new salt (public metadata bound to their data key, which
            //    is rewrapped; no data is touched).
            for p in crate::engine::chain_points(&h.repo, &h.job.job_id, &chain_id)? {
                if p.kdf.as_ref().is_some_and(|k| k.salt == old.salt) {
                    if p.version >= 2 {
                        crate::engine::rebind_point(&h.repo, &oc, p, |p| {
                            p.kdf = Some(new.clone())
                        })?;
                    } else {
                        let mut p = p;
                        p.kdf = Some(new.clone());
                        h.repo.write_point(&p)?;
                    }
                    points_updated += 1;
                }
            }
            pending.push((
                h.repo.root().to_path_buf(),
                chain_id,
                key,
                job_name.clone(),
                h.job.job_id,
            ));
        }
        // 3. Escrow follows the new hash (AWS KMS or KMIP, whichever is enabled): the new
        //    record replaces the old one atomically, so one always exists. Without escrow,
        //    no record of the old hash may stay behind.
        if !super::job::escrow_hash_if_enabled(
            ctx,
            cat,
            &h.repo,
            &h.job.job_id,
            &job_name,
            &new,
            &new_hash,
        )
        .await?
        {
            h.repo.delete_escrow(&h.job.job_id, name)?;
            cat.delete_escrow(&h.job.job_id, name)?;
        }
        report.push(serde_json::json!({"job": job_name, "points_updated": points_updated}));
    }
    cat.create_password(&new, "", &new_hash)?;
    // 4. Remove the old keyslots: from here on the old passphrase opens nothing.
    for (root, chain_id, key, job_name, job_id) in pending {
        let repo = Repository::open(&root)?;
        let _lock = repo.lock()?;
        let mut chain = repo.read_chain(&chain_id)?;
        chain.keyslots.retain(
            |s| !matches!(&s.params, SlotParams::Passphrase { kdf } if kdf.salt == old.salt),
        );
        if chain.version >= 2 {
            chain.revision += 1;
            chain.seal(&key);
        }
        repo.write_chain(&chain)?;
        if cat.job(&job_name)?.is_some_and(|r| r.job_id == job_id) {
            let oc = crate::engine::OpenChain::new(chain, key, &job_name);
            super::pin_open_chain(cat, &job_id, &oc)?;
        }
    }
    if ctx.json {
        crate::ui::print_json(&serde_json::json!({"password": name, "jobs": report}));
    } else {
        ctx.say(format!(
            "rotated password '{name}': {} job(s) rewrapped; no data was re-encrypted. The old passphrase opens nothing any more.",
            report.len()
        ));
    }
    Ok(0)
}

pub async fn kms(ctx: &Ctx, cmd: KmsCmd) -> Result<i32> {
    let KmsCmd::Escrow(cmd) = cmd;
    escrow(ctx, cmd, Target::Kms).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Kms,
    Kmip,
}

async fn escrow(ctx: &Ctx, cmd: EscrowCmd, target: Target) -> Result<i32> {
    let cat = ctx.catalog()?;
    let (setting, other) = match target {
        Target::Kms => (
            ESCROW_KEY_SETTING,
            crate::passwords::KMIP_ESCROW_KEY_SETTING,
        ),
        Target::Kmip => (
            crate::passwords::KMIP_ESCROW_KEY_SETTING,
            ESCROW_KEY_SETTING,
        ),
    };
    let unavailable = |e: crate::keys::KeyError| Error::KeysUnavailable {
        job: String::new(),
        detail: e.to_string(),
    };
    match cmd {
        EscrowCmd::Enable { key } => {
            if cat.setting(other)?.is_some() {
                return Err(Error::Usage(
                    "escrow to the other key manager is enabled: disable it first (one escrow target at a time)".into(),
                ));
            }
            let key_id = match target {
                Target::Kms => {
                    ctx.creds
                        .kms_client()
                        .await
                        .map_err(unavailable)?
                        .check_key(&key)
                        .await
                        .map_err(unavailable)?
                        .arn
                }
                Target::Kmip => {
                    let c = ctx.creds.kmip_client().map_err(unavailable)?;
                    let k = key.clone();
                    tokio::task::spawn_blocking(move || {
                        c.resolve(&k).and_then(|uid| c.fetch(&uid).map(|_| uid))
                    })
                    .await
                    .map_err(|e| Error::Other(e.to_string()))?
                    .map_err(unavailable)?
                }
            };
            cat.set_setting(setting, Some(&key_id))?;
            let mut n = 0;
            for p in cat.list_passwords()? {
                for j in cat.jobs_using_password(&p.name)? {
                    let h = locate_job(&cat, &j, None)?;
                    super::job::escrow_if_enabled(ctx, &cat, &h.repo, &h.job.job_id, &j, &p.name)
                        .await?;
                    n += 1;
                }
            }
            ctx.say(format!("escrow enabled with key {key_id}: {n} password hash(es) escrowed; future ones will be too"));
            Ok(0)
        }
        EscrowCmd::Disable => {
            let mut n = 0;
            for r in cat.escrow_records(None)? {
                if let Some(row) = cat.list_jobs()?.into_iter().find(|j| j.job_id == r.job_id) {
                    if let Ok(repo) = Repository::open(&row.repo_path) {
                        repo.delete_escrow(&r.job_id, &r.kdf.password)?;
                    }
                }
                cat.delete_escrow(&r.job_id, &r.kdf.password)?;
                n += 1;
            }
            cat.set_setting(setting, None)?;
            ctx.say(format!("escrow disabled; {n} escrow record(s) deleted"));
            Ok(0)
        }
        EscrowCmd::Status => {
            let key = cat.setting(setting)?;
            let recs = cat.escrow_records(None)?;
            if ctx.json {
                let r: Vec<_> = recs
                    .iter()
                    .map(|r| serde_json::json!({"password": r.kdf.password, "job": r.job, "provider": r.provider, "key": r.key_arn, "created": r.created}))
                    .collect();
                crate::ui::print_json(
                    &serde_json::json!({"enabled": key.is_some(), "key": key, "records": r}),
                );
            } else {
                match &key {
                    Some(k) => ctx.say(format!("escrow: enabled, key {k}")),
                    None => ctx.say("escrow: disabled"),
                }
                for r in recs {
                    ctx.say(format!(
                        "  password '{}' for job '{}': {} key {} ({})",
                        r.kdf.password, r.job, r.provider, r.key_arn, r.created
                    ));
                }
            }
            Ok(0)
        }
    }
}
