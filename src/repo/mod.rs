//! The repository: a self-describing directory of format objects.
//!
//! ```text
//! config                      RepoConfig (JSON, plaintext)
//! jobs/<job_id>.json          JobRecord
//! chains/<chain_id>.json      ChainRecord (keyslots)
//! escrow/<job_id>.<pw>.json   EscrowRecord (password hash encrypted by KMS)
//! points/<point_id>.json      PointRecord (sealed body)
//! index/<point_id>            sealed index of the chunks new in that point
//! packs/<xx>/<pack_id>        packs of sealed chunks, named by BLAKE3 of their bytes
//! tmp/                        in-progress writes (renamed into place when complete)
//! lock                        advisory lock file
//! ```
//! Every write goes to `tmp/` first, is fsynced, then renamed: a crash or a full disk leaves
//! at worst unreferenced files, never a half-written object.

pub mod format;
pub mod pack;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use format::*;

pub struct Repository {
    root: PathBuf,
    pub config: RepoConfig,
}

/// Holds the repository's advisory lock until dropped.
pub struct RepoLock {
    _file: File,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

impl Repository {
    /// Creates a repository in `dir`, which must not exist or be empty.
    pub fn init(dir: &Path) -> Result<Repository> {
        if dir.exists() {
            let mut it = fs::read_dir(dir).ctx("read", dir)?;
            if it.next().is_some() {
                return Err(Error::Usage(format!(
                    "{} is not empty: a repository needs an empty or new directory",
                    dir.display()
                )));
            }
        }
        fs::create_dir_all(dir).ctx("create", dir)?;
        for sub in ["jobs", "chains", "points", "index", "packs", "tmp"] {
            fs::create_dir_all(dir.join(sub)).ctx("create", &dir.join(sub))?;
        }
        let config = RepoConfig {
            kind: RepoConfig::KIND.into(),
            version: FORMAT_VERSION,
            repo_id: Id16::random(),
            created: now_rfc3339(),
        };
        let repo = Repository {
            root: dir.to_path_buf(),
            config,
        };
        repo.write_json("config", &repo.config)?;
        Ok(repo)
    }

    pub fn open(dir: &Path) -> Result<Repository> {
        let p = dir.join("config");
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "{} is not an arca repository (no config file); create one with `arca init {}`",
                    dir.display(),
                    dir.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
        };
        let config: RepoConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::integrity(format!("repository config {}", p.display()), e))?;
        if config.kind != RepoConfig::KIND {
            return Err(Error::integrity(
                p.display().to_string(),
                "not an arca repository config",
            ));
        }
        if config.version != FORMAT_VERSION {
            return Err(Error::Usage(format!(
                "repository {} has format version {}, this arca reads version {FORMAT_VERSION}; \
                 use a matching arca release",
                dir.display(),
                config.version
            )));
        }
        Ok(Repository {
            root: dir.to_path_buf(),
            config,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn id(&self) -> Id16 {
        self.config.repo_id
    }

    /// Takes the repository's exclusive lock (non-blocking).
    pub fn lock(&self) -> Result<RepoLock> {
        let p = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx("open", &p)?;
        match f.try_lock() {
            Ok(()) => Ok(RepoLock { _file: f }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: self.root.display().to_string(),
                detail: "another backup is running".into(),
            }),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(format!("lock {}", p.display()), e)),
        }
    }

    fn tmp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.tmp", Id16::random().hex()))
    }

    /// Writes `rel` atomically: tmp file, fsync, rename, fsync of the directory.
    pub fn write_atomic(&self, rel: &str, data: &[u8]) -> Result<()> {
        let dest = self.root.join(rel);
        let tmp = self.tmp_path();
        let res = (|| -> Result<()> {
            let mut f = File::create(&tmp).ctx("create", &tmp)?;
            f.write_all(data).ctx("write", &tmp)?;
            f.sync_all().ctx("sync", &tmp)?;
            drop(f);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).ctx("create", parent)?;
            }
            fs::rename(&tmp, &dest).ctx("rename into place", &dest)?;
            if let Some(parent) = dest.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .ctx("sync", parent)?;
            }
            Ok(())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn write_json<T: serde::Serialize>(&self, rel: &str, v: &T) -> Result<()> {
        let mut b = serde_json::to_vec_pretty(v).expect("format objects serialize");
        b.push(b'\n');
        self.write_atomic(rel, &b)
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, rel: &str, what: &str) -> Result<T> {
        let p = self.root.join(rel);
        let b = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "{what} not found in repository ({})",
                    p.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
        };
        serde_json::from_slice(&b)
            .map_err(|e| Error::integrity(format!("{what} ({})", p.display()), e))
    }

    fn list_dir_ids(&self, sub: &str, suffix: &str) -> Result<Vec<String>> {
        let d = self.root.join(sub);
        let mut out = Vec::new();
        for e in fs::read_dir(&d).ctx("list", &d)? {
            let e = e.ctx("list", &d)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(suffix) {
                out.push(stem.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    // --- jobs ---

    pub fn write_job(&self, job: &JobRecord) -> Result<()> {
        self.write_json(&format!("jobs/{}.json", job.job_id), job)
    }

    pub fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        let mut out = Vec::new();
        for id in self.list_dir_ids("jobs", ".json")? {
            let j: JobRecord = self.read_json(&format!("jobs/{id}.json"), "job record")?;
            if j.repo_id != self.id() || j.job_id.hex() != id {
                return Err(Error::integrity(
                    format!("job record {id}"),
                    "it belongs to another place",
                ));
            }
            out.push(j);
        }
        Ok(out)
    }

    pub fn find_job(&self, name: &str) -> Result<JobRecord> {
        self.list_jobs()?.into_iter().find(|j| j.name == name).ok_or_else(|| {
            Error::NotFound(format!(
                "no job named '{name}' in repository {}; `arca points --repo` lists nothing until a job was created there",
                self.root.display()
            ))
        })
    }

    // --- chains ---

    pub fn write_chain(&self, chain: &ChainRecord) -> Result<()> {
        self.write_json(&format!("chains/{}.json", chain.chain_id), chain)
    }

    pub fn read_chain(&self, chain_id: &Id16) -> Result<ChainRecord> {
        let c: ChainRecord = self.read_json(&format!("chains/{chain_id}.json"), "chain record")?;
        if c.kind != ChainRecord::KIND || c.version != FORMAT_VERSION {
            return Err(Error::integrity(
                format!("chain {chain_id}"),
                "unknown type or version",
            ));
        }
        if c.chain_id != *chain_id || c.repo_id != self.id() {
            return Err(Error::integrity(
                format!("chain {chain_id}"),
                "it belongs to another place",
            ));
        }
        Ok(c)
    }

    // --- escrow ---

    pub fn write_escrow(&self, e: &EscrowRecord) -> Result<()> {
        self.write_json(
            &format!(
                "escrow/{}",
                EscrowRecord::file_name(&e.job_id, &e.kdf.password)
            ),
            e,
        )
    }

    /// Escrow records of a job (all jobs if `None`).
    pub fn list_escrow(&self, job_id: Option<&Id16>) -> Result<Vec<EscrowRecord>> {
        let d = self.root.join("escrow");
        if !d.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for name in self.list_dir_ids("escrow", ".json")? {
            let e: EscrowRecord =
                self.read_json(&format!("escrow/{name}.json"), "escrow record")?;
            if e.kind != EscrowRecord::KIND || e.repo_id != self.id() {
                return Err(Error::integrity(
                    format!("escrow record {name}"),
                    "unknown type or another repository",
                ));
            }
            if job_id.is_none_or(|j| *j == e.job_id) {
                out.push(e);
            }
        }
        Ok(out)
    }

    pub fn delete_escrow(&self, job_id: &Id16, password: &str) -> Result<()> {
        let p = self
            .root
            .join("escrow")
            .join(EscrowRecord::file_name(job_id, password));
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove {}", p.display()), e))
            }
            _ => Ok(()),
        }
    }

    // --- points ---

    pub fn write_point(&self, p: &PointRecord) -> Result<()> {
        self.write_json(&format!("points/{}.json", p.point_id), p)
    }

    pub fn read_point(&self, id: &Id16) -> Result<PointRecord> {
        let p: PointRecord = self.read_json(&format!("points/{id}.json"), "recovery point")?;
        if p.kind != PointRecord::KIND || p.version != FORMAT_VERSION {
            return Err(Error::integrity(
                format!("recovery point {id}"),
                "unknown type or version",
            ));
        }
        if p.point_id != *id || p.repo_id != self.id() {
            return Err(Error::integrity(
                format!("recovery point {id}"),
                "it belongs to another place",
            ));
        }
        Ok(p)
    }

    /// All recovery points of a job, oldest first.
    pub fn list_points(&self, job_id: &Id16) -> Result<Vec<PointRecord>> {
        let mut out = Vec::new();
        for id in self.list_dir_ids("points", ".json")? {
            let id =
                Id16::parse(&id).map_err(|e| Error::integrity(format!("points/{id}.json"), e))?;
            let p = self.read_point(&id)?;
            if p.job_id == *job_id {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.point_id.cmp(&b.point_id)));
        Ok(out)
    }

    pub fn delete_point_file(&self, id: &Id16) -> Result<()> {
        let p = self.root.join(format!("points/{id}.json"));
        fs::remove_file(&p).ctx("remove", &p)
    }

    // --- index ---

    pub fn write_index(&self, point_id: &Id16, sealed: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(INDEX_MAGIC.len() + sealed.len());
        b.extend_from_slice(INDEX_MAGIC);
        b.extend_from_slice(sealed);
        self.write_atomic(&format!("index/{point_id}"), &b)
    }

    /// The sealed part of an index file.
    pub fn read_index(&self, point_id: &Id16) -> Result<Vec<u8>> {
        let p = self.root.join(format!("index/{point_id}"));
        let b = fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::integrity(format!("index of recovery point {point_id}"), "missing")
            } else {
                Error::io(format!("read {}", p.display()), e)
            }
        })?;
        if !b.starts_with(INDEX_MAGIC) {
            return Err(Error::integrity(
                format!("index {}", p.display()),
                "bad magic or version",
            ));
        }
        Ok(b[INDEX_MAGIC.len()..].to_vec())
    }

    // --- packs ---

    pub fn pack_rel(id: &Id32) -> String {
        let h = id.hex();
        format!("packs/{}/{}", &h[..2], h)
    }

    pub fn pack_path(&self, id: &Id32) -> PathBuf {
        self.root.join(Self::pack_rel(id))
    }

    pub fn write_pack(&self, id: &Id32, data: &[u8]) -> Result<()> {
        self.write_atomic(&Self::pack_rel(id), data)
    }

    pub fn read_pack(&self, id: &Id32) -> Result<Vec<u8>> {
        let p = self.pack_path(id);
        fs::read(&p).map_err(|e| pack_read_err(id, &p, e))
    }

    pub fn open_pack(&self, id: &Id32) -> Result<File> {
        let p = self.pack_path(id);
        File::open(&p).map_err(|e| pack_read_err(id, &p, e))
    }

    pub fn read_pack_range(f: &mut File, id: &Id32, offset: u64, len: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::integrity(
                    format!("pack {id}"),
                    "truncated: a chunk lies beyond its end",
                ),
                _ => Error::io(format!("read pack {id}"), e),
            })?;
        Ok(buf)
    }

    /// All pack ids present on disk.
    pub fn list_packs(&self) -> Result<Vec<Id32>> {
        let d = self.root.join("packs");
        let mut out = Vec::new();
        for sub in fs::read_dir(&d).ctx("list", &d)? {
            let sub = sub.ctx("list", &d)?.path();
            if !sub.is_dir() {
                continue;
            }
            for e in fs::read_dir(&sub).ctx("list", &sub)? {
                let e = e.ctx("list", &sub)?;
                if let Ok(id) = Id32::parse(&e.file_name().to_string_lossy()) {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes leftovers of interrupted writes.
    pub fn clean_tmp(&self) -> Result<()> {
        let d = self.root.join("tmp");
        fs::create_dir_all(&d).ctx("create", &d)?;
        for e in fs::read_dir(&d).ctx("list", &d)? {
            let _ = fs::remove_file(e.ctx("list", &d)?.path());
        }
        Ok(())
    }
}

fn pack_read_err(id: &Id32, p: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::integrity(format!("pack {id}"), format!("missing ({})", p.display()))
    } else {
        Error::io(format!("read {}", p.display()), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_refuses_non_empty_and_open_checks_config() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"1").unwrap();
        assert!(matches!(Repository::init(d.path()), Err(Error::Usage(_))));
        let r = d.path().join("r");
        let repo = Repository::init(&r).unwrap();
        let again = Repository::open(&r).unwrap();
        assert_eq!(repo.id(), again.id());
        assert!(matches!(
            Repository::open(d.path()),
            Err(Error::NotFound(_))
        ));
        std::fs::write(r.join("config"), b"{garbage").unwrap();
        assert!(matches!(Repository::open(&r), Err(Error::Integrity { .. })));
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::init(&d.path().join("r")).unwrap();
        let l = repo.lock().unwrap();
        assert!(matches!(repo.lock(), Err(Error::Locked { .. })));
        drop(l);
        repo.lock().unwrap();
    }
}
