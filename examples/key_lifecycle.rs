//! A job's key lifecycle through arca's library operations (`arca::ops`): create a job under
//! a named password, back up, rotate the password, rekey, export the configuration, lose the
//! catalog, import it, and restore every point without typing a passphrase.
//!
//!   cargo run --example key_lifecycle
//!
//! Needs nothing but a temporary directory (Argon2id runs with its default cost).

use arca::crypto::Passphrase;
use arca::engine::restore::{self, RestoreOptions};
use arca::engine::OpenPoint;
use arca::ops::backup::{backup_job, JobSource};
use arca::ops::jobs::{create_job, ChainSpec, CreateJob};
use arca::ops::{bundle, job_points, lifecycle, locate_job, open_chain, Session};
use arca::repo::format::EncryptionMode;
use arca::repo::Repository;
use arca::resolve::Credentials;
use indicatif::ProgressBar;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Res<()> {
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("ledger.csv"), "day,amount\n".repeat(20_000))?;
    Repository::init(&work.path().join("repo"), false)?;
    // The passphrase of password "ops", given once, from a file.
    let pass_file = work.path().join("pass");
    std::fs::write(&pass_file, "correct horse battery staple\n")?;
    let catalog = work.path().join("catalog/catalog.db");
    let s = Session::new(catalog.clone(), Credentials::new(Some(pass_file), None));

    let job = create_job(
        &s,
        CreateJob {
            name: "ledger",
            repo: &work.path().join("repo"),
            source: &src,
            spec: ChainSpec {
                mode: EncryptionMode::Passphrase,
                password: Some("ops"),
                kms_key: None,
                kmip_key: None,
            },
        },
    )
    .await?;
    println!(
        "job '{}' created (chain {})",
        job.name,
        job.chain_id.short()
    );
    // From here on no passphrase is at hand: the catalog's stored hash does the work (a
    // passphrase given would have to open the chain, and after the rotation it would not).
    let s = Session::new(catalog.clone(), Credentials::new(None, None));
    let b = backup_job(
        &s,
        "ledger",
        JobSource::Tree,
        3,
        &Default::default(),
        ProgressBar::hidden(),
        Default::default(),
    )
    .await?;
    println!(
        "point {} ({})",
        b.outcome.record.point_id.short(),
        b.full_reason.unwrap_or("incremental")
    );

    // Rotate: a new key generation; the old passphrase opens nothing afterwards.
    let r =
        lifecycle::rotate_password(&s, "ops", &Passphrase::new("a new passphrase".into())).await?;
    println!(
        "rotated password 'ops': generation {}",
        r.jobs[0].chains[0].generation
    );
    std::fs::write(src.join("later.txt"), "after the rotation")?;
    let b = backup_job(
        &s,
        "ledger",
        JobSource::Tree,
        3,
        &Default::default(),
        ProgressBar::hidden(),
        Default::default(),
    )
    .await?;
    println!(
        "point {} ({} new bytes)",
        b.outcome.record.point_id.short(),
        b.outcome.body.stats.bytes_new
    );
    let k = lifecycle::rekey_job(&s, "ledger").await?;
    println!("rekeyed: generation {}", k.generation);

    // Export the configuration, lose the catalog, import it.
    let bundle_file = work.path().join("arca.bundle");
    let bundle_pass = Passphrase::new("kept in the safe".into());
    bundle::export(&s, &bundle_file, &bundle_pass)?;
    std::fs::remove_dir_all(catalog.parent().ok_or("catalog dir")?)?;
    let s = Session::new(catalog, Credentials::new(None, None));
    let imported = bundle::import(&s, &bundle_file, &bundle_pass, false, false)?;
    println!(
        "imported the configuration: {} item(s)",
        imported.changes.len()
    );

    // Restore every point with no passphrase at hand: the imported hash opens them all.
    let cat = s.catalog()?;
    let h = locate_job(&cat, "ledger", None)?;
    let (points, _) = job_points(&cat, &h)?;
    for (i, p) in points.into_iter().enumerate() {
        let (oc, tier) = open_chain(&s, &cat, &h, &p.chain_id, Some(&p), false).await?;
        let target = work.path().join(format!("restore-{i}"));
        let op = OpenPoint::open(&h.repo, &oc, p)?;
        restore::run(
            &h.repo,
            &oc,
            &op,
            &RestoreOptions {
                partial: false,
                target: target.clone(),
                include: vec![],
                overwrite: false,
                workers: 2,
                progress: ProgressBar::hidden(),
            },
        )?;
        if std::fs::read(src.join("ledger.csv"))? != std::fs::read(target.join("ledger.csv"))? {
            return Err("ledger.csv differs after restore".into());
        }
        println!("restored point {i} via {tier}: identical");
    }
    Ok(())
}
