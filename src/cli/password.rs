//! `arca password create|list|show|delete` and `arca kms escrow enable|disable|status`.

use clap::Subcommand;
use serde::Serialize;

use super::*;

#[derive(Subcommand, Debug)]
pub enum PasswordCmd {
    /// Create a named password (the passphrase from ARCA_PASSPHRASE, --passphrase-file, or a prompt).
    Create {
        /// The password's name.
        name: String,
        /// A note shown by `password list` and `password show`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List passwords: name, description, created, jobs using it, escrowed. Never the hash.
    List,
    /// Show one password.
    Show {
        /// The password's name.
        name: String,
    },
    /// Delete a password no job uses (its stored hash and escrow records go with it).
    Delete {
        /// The password's name.
        name: String,
    },
    /// Change a password's passphrase. Starts a new key generation in every chain using it:
    /// no data is re-encrypted or re-uploaded. Afterwards the new passphrase opens every
    /// recovery point of every job using it, the old one opens none (not even with a copy of
    /// the repository's metadata), and the next backup is an incremental under the new keys.
    /// Interrupted, run it again with the same new passphrase to finish it. The new
    /// passphrase comes from ARCA_NEW_PASSPHRASE, --new-passphrase-file, or a prompt (twice).
    Rotate {
        /// The password's name.
        name: String,
        /// Read the new passphrase from this file (first line); else ARCA_NEW_PASSPHRASE, else a prompt asked twice.
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
    CreateKey {
        /// The key's name on the KMIP server.
        name: String,
    },
    /// Escrow password hashes with a KMIP key (name or unique identifier).
    #[command(subcommand)]
    Escrow(EscrowCmd),
}

pub async fn kmip(ctx: &Ctx, cmd: KmipCmd) -> Result<i32> {
    let name = match cmd {
        KmipCmd::CreateKey { name } => name,
        KmipCmd::Escrow(e) => return escrow(ctx, e, Target::Kmip).await,
    };
    let uid = crate::ops::lifecycle::kmip_create_key(ctx, &name).await?;
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
    /// The password's name.
    name: String,
    /// A note shown by `password list` and `password show`.
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
            let p = ctx
                .creds
                .read_passphrase(&format!("New passphrase for password '{name}': "), true)?
                .ok_or_else(|| {
                    Error::Usage(
                        "a passphrase is needed: ARCA_PASSPHRASE, --passphrase-file, or a terminal"
                            .into(),
                    )
                })?;
            crate::ops::lifecycle::create_password(ctx, &name, &description, &p)?;
            if ctx.json {
                let p = cat.password(&name)?.expect("just created");
                crate::ui::print_json(&view(&cat, &p)?);
            } else {
                ctx.say(format!("created password '{name}'; attach it with `arca job create ... --encryption passphrase --password {name}`"));
            }
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
            if ctx.json {
                crate::ui::print_json(&serde_json::json!({"password": name, "deleted": true}));
            } else {
                ctx.say(format!("deleted password '{name}'"));
            }
            Ok(0)
        }
    }
}

fn new_passphrase(
    ctx: &Ctx,
    name: &str,
    file: Option<std::path::PathBuf>,
) -> Result<crate::crypto::Passphrase> {
    // Not Credentials::read_passphrase: ARCA_PASSPHRASE holds the *old* one here.
    super::other_secret(
        ctx,
        file.as_deref(),
        "ARCA_NEW_PASSPHRASE",
        "--new-passphrase-file",
        &format!("New passphrase for password '{name}': "),
        "new passphrase",
        true,
    )
}

async fn rotate(
    ctx: &Ctx,
    _cat: &Catalog,
    name: &str,
    file: Option<std::path::PathBuf>,
) -> Result<i32> {
    let pass = new_passphrase(ctx, name, file)?;
    let r = crate::ops::lifecycle::rotate_password(ctx, name, &pass).await?;
    if ctx.json {
        crate::ui::print_json(&r);
    } else {
        for j in &r.jobs {
            for c in &j.chains {
                ctx.say(format!(
                    "job '{}': chain {} now at key generation {} ({} earlier point(s) re-wrapped, none rewritten)",
                    j.job,
                    &c.chain_id[..8],
                    c.generation,
                    c.points
                ));
            }
        }
        ctx.say(format!(
            "{} password '{name}': {} job(s); no data was re-encrypted. New recovery points use new keys; \
             the old passphrase opens nothing any more, not even with a copy of the repository's metadata.",
            if r.resumed { "finished rotating" } else { "rotated" },
            r.jobs.len()
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
    let kmip = target == Target::Kmip;
    match cmd {
        EscrowCmd::Enable { key } => {
            let (key_id, n) = crate::ops::lifecycle::escrow_enable(ctx, kmip, &key).await?;
            if ctx.json {
                crate::ui::print_json(
                    &serde_json::json!({"enabled": true, "key": key_id, "escrowed": n}),
                );
            } else {
                ctx.say(format!("escrow enabled with key {key_id}: {n} password hash(es) escrowed; future ones will be too"));
            }
            Ok(0)
        }
        EscrowCmd::Disable => {
            let n = crate::ops::lifecycle::escrow_disable(ctx, kmip)?;
            if ctx.json {
                crate::ui::print_json(&serde_json::json!({"enabled": false, "records_deleted": n}));
            } else {
                ctx.say(format!("escrow disabled; {n} escrow record(s) deleted"));
            }
            Ok(0)
        }
        EscrowCmd::Status => {
            let st = crate::ops::lifecycle::escrow_status(ctx, kmip)?;
            if ctx.json {
                crate::ui::print_json(&st);
            } else {
                match &st.key {
                    Some(k) => ctx.say(format!("escrow ({}): enabled, key {k}", st.target)),
                    None => ctx.say(format!("escrow ({}): disabled", st.target)),
                }
                for r in &st.records {
                    let place = match (r.in_catalog, r.in_repository) {
                        (true, true) => "catalog and repository",
                        (true, false) => "catalog only",
                        _ => "repository only",
                    };
                    ctx.say(format!(
                        "  password '{}' for job '{}': {} key {} ({}; {place})",
                        r.password, r.job, r.provider, r.key, r.created
                    ));
                }
                for p in &st.problems {
                    ctx.note(format!("warning: {p}"));
                }
            }
            Ok(if st.problems.is_empty() { 0 } else { 1 })
        }
    }
}
