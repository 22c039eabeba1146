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
}

#[derive(Subcommand, Debug)]
pub enum KmsCmd {
    /// Escrow password hashes with AWS KMS, so a reinstalled product can restore without them.
    #[command(subcommand)]
    Escrow(EscrowCmd),
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
        PasswordCmd::Delete { name } => {
            if !cat.delete_password(&name)? {
                return Err(Error::NotFound(format!("no password named '{name}'")));
            }
            ctx.say(format!("deleted password '{name}'"));
            Ok(0)
        }
    }
}

pub async fn kms(ctx: &Ctx, cmd: KmsCmd) -> Result<i32> {
    let KmsCmd::Escrow(cmd) = cmd;
    let cat = ctx.catalog()?;
    match cmd {
        EscrowCmd::Enable { key } => {
            let client = ctx
                .creds
                .kms_client()
                .await
                .map_err(|e| Error::KeysUnavailable {
                    job: String::new(),
                    detail: e.to_string(),
                })?;
            let info = client
                .check_key(&key)
                .await
                .map_err(|e| Error::KeysUnavailable {
                    job: String::new(),
                    detail: e.to_string(),
                })?;
            cat.set_setting(ESCROW_KEY_SETTING, Some(&info.arn))?;
            let mut n = 0;
            for p in cat.list_passwords()? {
                for j in cat.jobs_using_password(&p.name)? {
                    let h = locate_job(&cat, &j, None)?;
                    super::job::escrow_if_enabled(ctx, &cat, &h.repo, &h.job.job_id, &j, &p.name)
                        .await?;
                    n += 1;
                }
            }
            ctx.say(format!("KMS escrow enabled with key {}: {n} password hash(es) escrowed; future ones will be too", info.arn));
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
            cat.set_setting(ESCROW_KEY_SETTING, None)?;
            ctx.say(format!("KMS escrow disabled; {n} escrow record(s) deleted"));
            Ok(0)
        }
        EscrowCmd::Status => {
            let key = cat.setting(ESCROW_KEY_SETTING)?;
            let recs = cat.escrow_records(None)?;
            if ctx.json {
                let r: Vec<_> = recs
                    .iter()
                    .map(|r| serde_json::json!({"password": r.kdf.password, "job": r.job, "key_arn": r.key_arn, "created": r.created}))
                    .collect();
                crate::ui::print_json(
                    &serde_json::json!({"enabled": key.is_some(), "key": key, "records": r}),
                );
            } else {
                match &key {
                    Some(k) => ctx.say(format!("KMS escrow: enabled, key {k}")),
                    None => ctx.say("KMS escrow: disabled"),
                }
                for r in recs {
                    ctx.say(format!(
                        "  password '{}' for job '{}': key {} ({})",
                        r.kdf.password, r.job, r.key_arn, r.created
                    ));
                }
            }
            Ok(0)
        }
    }
}
