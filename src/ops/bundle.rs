//! The system configuration bundle (`arca config export|import`): jobs, repositories, trust
//! pins, password hashes and escrow settings in one file sealed under a bundle passphrase
//! (Argon2id + AES-256-GCM; docs/FORMAT.md §9). Imported on a fresh install, scheduled
//! backups and restores run again without anyone retyping a job's passphrase.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Session;
use crate::catalog::{Catalog, ChainPin, JobRow};
use crate::crypto::{self, KdfParams, Passphrase, SecretKey};
use crate::error::{Error, Result};
use crate::repo::format::{b64, EncryptionMode, EscrowRecord, Id16, KdfRecord};

pub const MAGIC: &[u8; 8] = b"ARCABNDL";
pub const VERSION: u32 = 1;
/// magic, version, m_kib, t, p (u32 each, big-endian), salt (16 bytes).
pub const HEADER_LEN: usize = 8 + 4 * 4 + 16;
/// Bundles larger than this are refused before anything is read into memory.
pub const MAX_BUNDLE: u64 = 64 << 20;
pub const KIND: &str = "arca-config-bundle";

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct RepoEntry {
    pub repo_id: Id16,
    pub path: PathBuf,
    pub format_version: u32,
}

/// A password with its hash: the bundle's secret content.
#[derive(Serialize, Deserialize)]
pub struct PasswordEntry {
    pub name: String,
    pub description: String,
    pub kdf: KdfRecord,
    #[serde(with = "b64")]
    pub hash: Vec<u8>,
}

impl Drop for PasswordEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.hash);
    }
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
pub struct JobEntry {
    pub name: String,
    pub job_id: Id16,
    pub repo_id: Id16,
    pub repo_path: PathBuf,
    pub source: String,
    pub encryption: EncryptionMode,
    pub password: Option<String>,
    pub key_file: Option<String>,
    pub chain_id: Id16,
    pub created: String,
    pub job_revision: u64,
    pub latest_point: Option<Id16>,
    pub active: bool,
    pub pins: Vec<ChainPin>,
    /// The job's excludes (absent: none).
    #[serde(
        default,
        skip_serializing_if = "crate::engine::filter::Filters::is_empty"
    )]
    pub excludes: crate::engine::filter::Filters,
}

impl JobEntry {
    fn row(&self) -> JobRow {
        JobRow {
            name: self.name.clone(),
            job_id: self.job_id,
            repo_id: self.repo_id,
            repo_path: self.repo_path.clone(),
            source: self.source.clone(),
            encryption: self.encryption,
            password: self.password.clone(),
            key_file: self.key_file.clone(),
            chain_id: self.chain_id,
            created: self.created.clone(),
            job_revision: self.job_revision,
            latest_point: self.latest_point,
            active: self.active,
        }
    }
}

/// The bundle's plaintext (JSON).
#[derive(Serialize, Deserialize)]
pub struct Bundle {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub created: String,
    pub hostname: String,
    pub repositories: Vec<RepoEntry>,
    pub passwords: Vec<PasswordEntry>,
    pub jobs: Vec<JobEntry>,
    pub escrow: Vec<EscrowRecord>,
    pub settings: BTreeMap<String, String>,
}

/// What an export wrote.
#[derive(Debug, Serialize)]
pub struct Exported {
    pub file: PathBuf,
    pub repositories: usize,
    pub passwords: usize,
    pub jobs: usize,
    pub escrow_records: usize,
    pub bytes: u64,
}

/// Reads the whole catalog into a bundle.
pub fn collect(cat: &Catalog) -> Result<Bundle> {
    if let Some(p) = cat.rotations()?.first() {
        return Err(Error::Usage(format!(
            "the rotation of password '{p}' is unfinished: finish it (`arca password rotate {p}` with the same new passphrase) before exporting"
        )));
    }
    let repositories = cat
        .repositories()?
        .into_iter()
        .map(|(repo_id, path, format_version)| RepoEntry {
            repo_id,
            path,
            format_version,
        })
        .collect();
    let mut passwords = Vec::new();
    for p in cat.list_passwords()? {
        // A password whose hash the catalog lacks (e.g. rebuilt without the passphrase) is
        // exported without one: its jobs will need the passphrase once after import.
        if let Some((kdf, hash)) = cat.password_hash(&p.name)? {
            passwords.push(PasswordEntry {
                name: p.name.clone(),
                description: p.description.clone(),
                kdf,
                hash: hash.expose().to_vec(),
            });
        }
    }
    let mut jobs = Vec::new();
    for r in cat.list_jobs()? {
        jobs.push(JobEntry {
            pins: cat.chain_pins(&r.job_id)?,
            excludes: cat.job_filters(&r.job_id)?,
            name: r.name,
            job_id: r.job_id,
            repo_id: r.repo_id,
            repo_path: r.repo_path,
            source: r.source,
            encryption: r.encryption,
            password: r.password,
            key_file: r.key_file,
            chain_id: r.chain_id,
            created: r.created,
            job_revision: r.job_revision,
            latest_point: r.latest_point,
            active: r.active,
        });
    }
    Ok(Bundle {
        kind: KIND.into(),
        version: VERSION,
        created: crate::repo::now_rfc3339(),
        hostname: crate::engine::backup::hostname(),
        repositories,
        passwords,
        jobs,
        escrow: cat.escrow_records(None)?,
        settings: cat.settings()?.into_iter().collect(),
    })
}

fn header(params: &KdfParams, salt: &[u8; 16]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    for v in [VERSION, params.m_kib, params.t, params.p] {
        h.extend_from_slice(&v.to_be_bytes());
    }
    h.extend_from_slice(salt);
    h
}

/// Seals a bundle's JSON: header || commitment (32) || nonce || ciphertext || tag.
pub fn seal(plaintext: &[u8], pass: &Passphrase, params: KdfParams) -> Result<Vec<u8>> {
    let salt: [u8; 16] = crypto::random_bytes();
    let hash = crypto::derive_password_hash(pass, &salt, &params)
        .map_err(|e| Error::Other(e.to_string()))?;
    let h = header(&params, &salt);
    let (commit, sealed) = crypto::seal_bundle(&hash, &h, plaintext);
    Ok([h.as_slice(), &commit, &sealed].concat())
}

/// Opens a sealed bundle. A wrong passphrase is [`Error::WrongBundlePassphrase`]; a changed
/// file is an integrity error.
pub fn open(
    bytes: &[u8],
    pass: &Passphrase,
    allow_expensive: bool,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    let bad = |d: &str| Error::integrity(format!("configuration bundle {what}"), d);
    if bytes.len() < HEADER_LEN + 32 + 12 + 16 || &bytes[..8] != MAGIC {
        return Err(bad("not an arca configuration bundle"));
    }
    let u = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    if u(8) != VERSION {
        return Err(bad(&format!("bundle version {} is not supported", u(8))));
    }
    let params = KdfParams {
        m_kib: u(12),
        t: u(16),
        p: u(20),
    };
    params
        .check_cap(allow_expensive)
        .map_err(|e| bad(&e.to_string()))?;
    let salt = &bytes[24..HEADER_LEN];
    let hash: SecretKey =
        crypto::derive_password_hash(pass, salt, &params).map_err(|e| bad(&e.to_string()))?;
    let (h, rest) = bytes.split_at(HEADER_LEN);
    let (commit, sealed) = rest.split_at(32);
    crypto::open_bundle(&hash, h, commit, sealed).map_err(|e| match e {
        crypto::CryptoError::WrongKey => Error::WrongBundlePassphrase(what.to_string()),
        other => bad(&other.to_string()),
    })
}

/// `arca config export`: writes the catalog's configuration, sealed, to `out` (0600, created
/// anew: an existing file is not overwritten).
pub fn export(s: &Session, out: &Path, pass: &Passphrase) -> Result<Exported> {
    let cat = s.catalog()?;
    let b = collect(&cat)?;
    let json = Zeroizing::new(serde_json::to_vec(&b).expect("bundle serializes"));
    let params = KdfParams::for_new_password().map_err(|e| Error::Usage(e.to_string()))?;
    let sealed = seal(&json, pass, params)?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(out)
        .map_err(|e| Error::io(format!("create {}", out.display()), e))?;
    f.write_all(&sealed)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("write {}", out.display()), e))?;
    Ok(Exported {
        file: out.to_path_buf(),
        repositories: b.repositories.len(),
        passwords: b.passwords.len(),
        jobs: b.jobs.len(),
        escrow_records: b.escrow.len(),
        bytes: sealed.len() as u64,
    })
}

/// One difference between a bundle and the catalog it is imported into.
#[derive(Debug, Serialize, Clone)]
pub struct Change {
    /// "repository", "password", "job", "pins", "escrow" or "setting".
    pub kind: &'static str,
    pub name: String,
    /// "add", "replace" or "same".
    pub action: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Imported {
    pub applied: bool,
    pub changes: Vec<Change>,
    /// Items that would replace what the catalog holds (refused without `--replace`).
    pub replacements: usize,
}

fn plan(cat: &Catalog, b: &Bundle) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let mut push = |kind, name: String, same: Option<bool>| {
        out.push(Change {
            kind,
            name,
            action: match same {
                None => "add",
                Some(true) => "same",
                Some(false) => "replace",
            },
        })
    };
    let repos = cat.repositories()?;
    for r in &b.repositories {
        let cur = repos.iter().find(|(id, _, _)| *id == r.repo_id);
        push(
            "repository",
            format!("{} ({})", r.repo_id, r.path.display()),
            cur.map(|(_, p, _)| *p == r.path),
        );
    }
    for p in &b.passwords {
        let cur = cat.password_hash(&p.name)?;
        push(
            "password",
            p.name.clone(),
            cur.map(|(k, h)| k == p.kdf && h.expose().as_slice() == p.hash.as_slice()),
        );
    }
    for j in &b.jobs {
        let cur = cat.job(&j.name)?;
        push("job", j.name.clone(), cur.as_ref().map(|r| *r == j.row()));
        if !j.pins.is_empty() {
            let same = match &cur {
                Some(r) if r.job_id == j.job_id => {
                    let pins = cat.chain_pins(&j.job_id)?;
                    (!pins.is_empty()).then(|| pins == j.pins)
                }
                Some(_) => Some(false),
                None => None,
            };
            push("pins", j.name.clone(), same);
        }
    }
    let escrow = cat.escrow_records(None)?;
    for e in &b.escrow {
        let cur = escrow.iter().find(|c| {
            c.job_id == e.job_id && c.kdf.password == e.kdf.password && c.kdf.salt == e.kdf.salt
        });
        push(
            "escrow",
            format!("password '{}' of job '{}'", e.kdf.password, e.job),
            cur.map(|c| c == e),
        );
    }
    for (k, v) in &b.settings {
        push("setting", k.clone(), cat.setting(k)?.map(|c| c == *v));
    }
    Ok(out)
}

/// `arca config import`: shows what the bundle would add or replace; applies it (in one
/// catalog transaction) unless `dry_run`, and replaces what differs only with `replace`.
pub fn import(
    s: &Session,
    file: &Path,
    pass: &Passphrase,
    replace: bool,
    dry_run: bool,
) -> Result<Imported> {
    use std::io::Read;
    let what = file.display().to_string();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nofollow()
        .open(file)
        .map_err(|e| Error::io(format!("open {what}"), e))?;
    let mut bytes = Vec::new();
    f.take(MAX_BUNDLE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("read {what}"), e))?;
    if bytes.len() as u64 > MAX_BUNDLE {
        return Err(Error::integrity(
            format!("configuration bundle {what}"),
            "larger than 64 MiB",
        ));
    }
    let json = open(&bytes, pass, s.creds.allow_expensive_kdf, &what)?;
    let b: Bundle = serde_json::from_slice(&json)
        .map_err(|e| Error::integrity(format!("configuration bundle {what}"), e))?;
    if b.kind != KIND || b.version != VERSION {
        return Err(Error::integrity(
            format!("configuration bundle {what}"),
            "not a version-1 configuration bundle",
        ));
    }
    let cat = s.catalog()?;
    let changes = plan(&cat, &b)?;
    let replacements = changes.iter().filter(|c| c.action == "replace").count();
    if dry_run || (replacements > 0 && !replace) {
        return Ok(Imported {
            applied: false,
            changes,
            replacements,
        });
    }
    cat.transaction(|| {
        for r in &b.repositories {
            cat.add_repository(&r.repo_id, &r.path)?;
            cat.set_repo_format_version(&r.repo_id, r.format_version)?;
        }
        for p in &b.passwords {
            let hash = SecretKey::from_slice(&p.hash)
                .map_err(|e| Error::integrity(format!("configuration bundle {what}"), e))?;
            cat.create_password(&p.kdf, &p.description, &hash)?;
        }
        for j in &b.jobs {
            cat.put_job(&j.row())?;
            cat.set_job_filters(&j.job_id, &j.excludes)?;
            if !j.pins.is_empty() {
                cat.clear_pins(&j.job_id)?;
                for pin in &j.pins {
                    cat.pin_chain(&j.job_id, pin)?;
                }
            }
        }
        for e in &b.escrow {
            cat.upsert_escrow(e)?;
        }
        for (k, v) in &b.settings {
            cat.set_setting(k, Some(v))?;
        }
        Ok(())
    })?;
    Ok(Imported {
        applied: true,
        changes,
        replacements,
    })
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
    }
}
