//! Back up with KMS escrow, delete the catalog, restore: the disaster-recovery path, through
//! arca's library API.
//!
//! Needs a KMS: real AWS credentials, or an emulator through AWS_ENDPOINT_URL, e.g.
//!   localstack/run-without-docker.sh &           # LocalStack with alias/arca-backup
//!   AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_REGION=us-east-1 \
//!   AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
//!   cargo run --example kms_escrow -- alias/arca-backup

use arca::catalog::{Catalog, JobRow};
use arca::crypto::{KdfParams, Passphrase, SecretKey};
use arca::engine::backup::{self, BackupOptions, Source};
use arca::engine::restore::{self, RestoreOptions};
use arca::engine::{OpenChain, OpenPoint};
use arca::keys::aws_kms::{KmsClient, KmsSettings};
use arca::keys::passphrase::{new_password, PasswordHashProvider};
use arca::keys::{KeyProvider, SlotContext};
use arca::repo::format::*;
use arca::repo::{now_rfc3339, Repository};
use arca::resolve::{self, Credentials, Request, Tiers};
use indicatif::ProgressBar;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Res<()> {
    let kms_key = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "alias/arca-backup".into());
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("db"))?;
    std::fs::write(
        src.join("db/dump.sql"),
        "CREATE TABLE t (x int);\n".repeat(10_000),
    )?;
    std::fs::write(src.join("notes.txt"), b"keys are never the weak link\n")?;

    // A repository, a catalog, a password, and a job whose chain key the password wraps.
    let repo = Repository::init(&work.path().join("repo"), false)?;
    let catalog_path = work.path().join("catalog.db");
    let catalog = Catalog::open(&catalog_path)?;
    let (kdf, hash) = new_password(
        "example",
        &Passphrase::new("a passphrase nobody will type".into()),
        KdfParams::DEFAULT,
    )?;
    catalog.create_password(&kdf, "example password", &hash)?;
    let job_id = Id16::random();
    let mut chain = ChainRecord {
        kind: ChainRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: repo.id(),
        job_id,
        chain_id: Id16::random(),
        created: now_rfc3339(),
        encryption: EncryptionMode::Passphrase,
        keyslots: Vec::new(),
        revision: 1,
        chunker: Some(ChainRecord::KEYED_GEAR.into()),
        generation: None,
        retired: Vec::new(),
        mac: None,
    };
    let chain_key = SecretKey::random();
    let slot = PasswordHashProvider::new(kdf.clone(), hash.duplicate())
        .wrap(&chain_key, &SlotContext::of_chain(&chain, "nightly"))
        .await?;
    chain.keyslots.push(slot);
    // Format v2: the chain record and the job record are authenticated by the chain key.
    chain.seal(&chain_key);
    let mut job = JobRecord {
        kind: JobRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: repo.id(),
        job_id,
        name: "nightly".into(),
        source: src.display().to_string(),
        created: now_rfc3339(),
        chain_id: chain.chain_id,
        chains: Vec::new(),
        revision: 1,
        mac: None,
    };
    job.seal(&chain_key);
    repo.write_chain(&chain)?;
    repo.write_job(&job)?;
    catalog.create_job(&JobRow {
        name: job.name.clone(),
        job_id,
        repo_id: repo.id(),
        repo_path: repo.root().to_path_buf(),
        source: job.source.clone(),
        encryption: EncryptionMode::Passphrase,
        password: Some("example".into()),
        key_file: None,
        chain_id: chain.chain_id,
        created: job.created.clone(),
        job_revision: job.revision,
        latest_point: None,
        active: true,
    })?;

    // Escrow the password hash with KMS, into the repository.
    let kms = KmsClient::new(&KmsSettings::default()).await?;
    let info = kms.check_key(&kms_key).await?;
    let record =
        arca::passwords::escrow(&kms, &info.arn, &repo.id(), &job_id, &job.name, &kdf, &hash)
            .await?;
    repo.write_escrow(&record)?;
    println!("escrowed password 'example' with {}", info.arn);

    // Back up.
    let oc = OpenChain::new(chain, chain_key, &job.name)?;
    let out = backup::run(
        repo.root(),
        &job,
        &oc,
        BackupOptions {
            status: Default::default(),
            source: Source::Tree(src.clone()),
            compression_level: 3,
            workers: 2,
            progress: ProgressBar::hidden(),
            kdf: Some(kdf),
            filter: arca::engine::filter::Compiled::none(),
            origin: None,
        },
    )?;
    println!(
        "recovery point {} ({} files)",
        out.record.point_id, out.body.stats.files
    );

    // Disaster: the product is reinstalled; the catalog, and with it the stored hash, is gone.
    drop((catalog, oc, hash));
    std::fs::remove_file(&catalog_path)?;
    std::fs::remove_file(Catalog::key_path(&catalog_path))?;

    // Restore with only the repository and KMS: no catalog, no passphrase.
    let repo = Repository::open(repo.root())?;
    let job = repo.find_job("nightly")?;
    let point = repo
        .list_points(&job.job_id)?
        .pop()
        .ok_or("no recovery point")?;
    let escrow = repo.list_escrow(Some(&job.job_id))?;
    let creds = Credentials::new(None, None);
    let resolved = resolve::resolve(Request {
        job_name: &job.name,
        chain: repo.read_chain(&point.chain_id)?,
        point_kdf: Some(point.kdf.as_ref()),
        point_generation: Some(point.key_generation()),
        point_label: Some(format!("recovery point {}", point.point_id)),
        catalog: None,
        creds: &creds,
        job_key_file: None,
        escrow: &escrow,
        tiers: Tiers::ALL,
        // Strict mode: KMS is only asked to decrypt with keys the caller trusts (here the
        // escrow key, as `--trust-kms-key` would after a reinstall).
        allowed_kms: vec![info.arn.clone()],
        allowed_kmip: None,
        explicit: true,
        defer_passphrase_check: false,
    })
    .await
    .map_err(|f| f.error)?;
    for a in &resolved.attempts {
        println!(
            "  tier {:<10} {} {}",
            a.tier,
            if a.ok { "opened:" } else { "failed:" },
            a.detail
        );
    }
    let target = work.path().join("restored");
    let op = OpenPoint::open(&repo, &resolved.chain, point)?;
    restore::run(
        &repo,
        &resolved.chain,
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
    for f in ["db/dump.sql", "notes.txt"] {
        if std::fs::read(src.join(f))? != std::fs::read(target.join(f))? {
            return Err(format!("{f} differs after restore").into());
        }
    }
    println!(
        "restored through tier '{}' after losing the catalog: every file identical",
        resolved.tier
    );
    Ok(())
}
