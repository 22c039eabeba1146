//! The repository: a self-describing directory of format objects.
//!
//! ```text
//! config                      RepoConfig (JSON, plaintext)
//! jobs/<job_id>.json          JobRecord (v2: MAC under its chain's key)
//! chains/<chain_id>.json      ChainRecord (keyslots; v2: MAC under the chain key)
//! escrow/<job_id>.<pw>.json   EscrowRecord (password hash encrypted by KMS or KMIP)
//! points/<point_id>.json      PointRecord (sealed body; v2: public fields bound to the data key)
//! index/<point_id>            sealed index of the chunks new in that point
//! packs/<xx>/<pack_id>        packs of sealed chunks, named by BLAKE3 of their bytes
//! tmp/                        in-progress writes (renamed into place when complete)
//! lock                        advisory lock file
//! ```
//! Every write goes to `tmp/` first, is fsynced, then renamed: a crash or a full disk leaves
//! at worst unreferenced files, never a half-written object. Everything below the root is
//! reached through directory handles without following symlinks ([`fsx`]), every size is
//! bounded before it allocates, and one malformed object affects only what refers to it.

pub mod format;
pub mod fsx;
pub mod pack;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use format::*;
use fsx::DirHandle;

/// Size limits for objects read from a repository (checked before anything is allocated).
pub mod limits {
    pub const CONFIG: u64 = 64 * 1024;
    pub const RECORD: u64 = 4 * 1024 * 1024;
    pub const INDEX: u64 = 1024 * 1024 * 1024;
    pub const PACK: u64 = 256 * 1024 * 1024;
    /// A sealed chunk: 16 MiB of payload at most, plus framing.
    pub const SEALED_CHUNK: u32 = 16 * 1024 * 1024 + 64;
}

pub struct Repository {
    root: PathBuf,
    dir: DirHandle,
    pub config: RepoConfig,
    /// Open handles of `packs/<hh>` directories (at most 256).
    pack_dirs: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<DirHandle>>>,
}

/// Holds an advisory lock (flock) of the repository until dropped, and the file saying who
/// holds it (`locks/<host>.<pid>.<lock>.json`, removed on drop). The kernel releases a flock
/// when its process dies, so a lock is never stale; a holder file left by a dead process is.
pub struct RepoLock {
    _file: File,
    holder: Option<(DirHandle, String)>,
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if let Some((d, name)) = &self.holder {
            let _ = d.unlink(name);
        }
    }
}

/// Shared (backups of different jobs run together) or exclusive (prune, migration, job
/// creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// Who holds a lock: written beside it while held, for "waiting for ..." messages.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub since: String,
    /// "repository" or "chain <id>".
    pub lock: String,
    pub kind: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} ({}), {} lock of the {} since {}",
            self.pid, self.host, self.command, self.kind, self.lock, self.since
        )
    }
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The `<lock>` part of a holder file's name.
fn holder_lock_name(lock: &str) -> String {
    match lock.strip_prefix("chain ") {
        Some(id) => id.to_string(),
        None => "repo".into(),
    }
}

/// Whether a process of this host is alive (EPERM: alive, someone else's).
fn pid_alive(pid: u32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(p),
        Err(rustix::io::Errno::SRCH)
    )
}

/// An object the repository holds but that could not be read (damage stays local).
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct Damaged {
    pub object: String,
    pub detail: String,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

const SUBDIRS: [&str; 7] = [
    "jobs", "chains", "escrow", "points", "index", "packs", "tmp",
];

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Repository {
    /// Creates a repository in `dir`, which must not exist or be empty.
    pub fn init(dir: &Path, group_readable: bool) -> Result<Repository> {
        let dmode = if group_readable { 0o750 } else { 0o700 };
        match std::fs::read_dir(dir) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Err(Error::Usage(format!(
                        "{} is not empty: a repository needs an empty or new directory",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(dmode)
                    .create(dir)
                    .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            }
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        }
        let handle = DirHandle::open_root(dir)
            .map_err(|e| Error::io(format!("open {}", dir.display()), e))?;
        fsx::fchmod(handle.fd(), dmode)
            .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
        for sub in SUBDIRS {
            handle
                .create_dir(sub, dmode)
                .map_err(|e| Error::io(format!("create {}/{sub}", dir.display()), e))?;
        }
        let config = RepoConfig {
            kind: RepoConfig::KIND.into(),
            version: FORMAT_VERSION,
            repo_id: Id16::random(),
            created: now_rfc3339(),
            group_readable,
        };
        let repo = Repository {
            root: dir.to_path_buf(),
            dir: handle,
            config,
            pack_dirs: Default::default(),
        };
        let mut b = serde_json::to_vec_pretty(&repo.config).expect("config serializes");
        b.push(b'\n');
        repo.write_atomic(&[], "config", &b)?;
        Ok(repo)
    }

    pub fn open(dir: &Path) -> Result<Repository> {
        let handle = match DirHandle::open_root(dir) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "repository {} does not exist: is the backup disk mounted, or was the repository moved?",
                    dir.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("open repository {}", dir.display()), e)),
        };
        let bytes = match handle.read_bounded("config", limits::CONFIG) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "{} is not an arca repository (no config file); check the path (is the backup disk mounted?)",
                    dir.display()
                )))
            }
            Err(e) => {
                return Err(Error::integrity(
                    format!("repository config {}/config", dir.display()),
                    e,
                ))
            }
        };
        let p = dir.join("config");
        let config: RepoConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::integrity(format!("repository config {}", p.display()), e))?;
        if config.kind != RepoConfig::KIND {
            return Err(Error::integrity(
                p.display().to_string(),
                "not an arca repository config",
            ));
        }
        if config.version != FORMAT_VERSION && config.version != FORMAT_V1 {
            return Err(Error::Usage(format!(
                "repository {} has format version {}, this arca reads versions 1 and {FORMAT_VERSION}; \
                 use a matching arca release",
                dir.display(),
                config.version
            )));
        }
        Ok(Repository {
            root: dir.to_path_buf(),
            dir: handle,
            config,
            pack_dirs: Default::default(),
        })
    }

    /// A second handle on the same repository (for another thread).
    pub fn try_clone(&self) -> Result<Repository> {
        Ok(Repository {
            root: self.root.clone(),
            dir: self
                .dir
                .try_clone()
                .map_err(|e| Error::io(format!("open {}", self.root.display()), e))?,
            config: self.config.clone(),
            pack_dirs: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn id(&self) -> Id16 {
        self.config.repo_id
    }

    /// The format version of this repository's metadata (1: arca 0.1, unauthenticated).
    pub fn version(&self) -> u32 {
        self.config.version
    }

    fn file_mode(&self) -> u32 {
        if self.config.group_readable {
            0o640
        } else {
            0o600
        }
    }

    fn dir_mode(&self) -> u32 {
        if self.config.group_readable {
            0o750
        } else {
            0o700
        }
    }

    fn sub(&self, path: &[&str], create: bool) -> Result<DirHandle> {
        let mut cur = self
            .dir
            .try_clone()
            .map_err(|e| Error::io(format!("open {}", self.root.display()), e))?;
        for (i, c) in path.iter().enumerate() {
            let r = if create {
                cur.create_dir(c, self.dir_mode())
            } else {
                cur.open_dir(c)
            };
            cur = r.map_err(|e| {
                let p = self.root.join(path[..=i].join("/"));
                if fsx::is_symlink_refusal(&e) {
                    Error::integrity(
                        format!("repository directory {}", p.display()),
                        "it is a symlink or not a directory; arca never follows links inside a repository",
                    )
                } else if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound(format!("{} is missing", p.display()))
                } else {
                    Error::io(format!("open {}", p.display()), e)
                }
            })?;
        }
        Ok(cur)
    }

    /// Takes the repository's exclusive lock (non-blocking). `lock` must be a regular file.
    pub fn lock(&self) -> Result<RepoLock> {
        self.try_lock(LockKind::Exclusive)
    }

    /// Takes the repository lock, shared or exclusive (non-blocking), and records the holder.
    pub fn try_lock(&self, kind: LockKind) -> Result<RepoLock> {
        let f = self.lock_file(&self.dir, "lock")?;
        self.take(f, kind, "repository", "repo")
    }

    /// Takes the exclusive lock of one chain (`locks/<chain_id>`): backups of the job and
    /// changes of its keys exclude each other; other jobs are not held up.
    pub fn try_lock_chain(&self, chain: &Id16) -> Result<RepoLock> {
        let d = self.sub(&["locks"], true)?;
        let f = self.lock_file(&d, &chain.hex())?;
        self.take(
            f,
            LockKind::Exclusive,
            &format!("chain {chain}"),
            &chain.hex(),
        )
    }

    /// Who holds locks, from the holder files (unreadable ones are skipped).
    pub fn lock_holders(&self) -> Vec<LockHolder> {
        let Ok(d) = self.sub(&["locks"], false) else {
            return Vec::new();
        };
        let Ok(names) = d.list() else {
            return Vec::new();
        };
        let me = std::process::id();
        names
            .into_iter()
            .filter(|(n, ft)| {
                n.to_string_lossy().ends_with(".json") && *ft == rustix::fs::FileType::RegularFile
            })
            .filter_map(|(n, _)| d.read_bounded(&n, 4096).ok())
            .filter_map(|b| serde_json::from_slice::<LockHolder>(&b).ok())
            .filter(|h| h.pid != me || h.host != this_host())
            .collect()
    }

    /// Removes holder files this host's dead processes left; returns them.
    pub fn sweep_stale_holders(&self) -> Vec<LockHolder> {
        let Ok(d) = self.sub(&["locks"], false) else {
            return Vec::new();
        };
        let host = this_host();
        let mut gone = Vec::new();
        for h in self.lock_holders() {
            if h.host == host && !pid_alive(h.pid) {
                let name = format!("{}.{}.{}.json", h.host, h.pid, holder_lock_name(&h.lock));
                if d.unlink(&name).is_ok() {
                    gone.push(h);
                }
            }
        }
        gone
    }

    fn take(&self, f: File, kind: LockKind, what: &str, short: &str) -> Result<RepoLock> {
        let r = match kind {
            LockKind::Exclusive => f.try_lock(),
            LockKind::Shared => f.try_lock_shared(),
        };
        match r {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holders = self.lock_holders();
                return Err(Error::Locked {
                    path: self.root.display().to_string(),
                    detail: if holders.is_empty() {
                        format!("the {what} is locked by another arca process")
                    } else {
                        format!(
                            "the {what} is held: {}",
                            holders
                                .iter()
                                .map(|h| h.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(
                    format!("lock {}", self.root.join("lock").display()),
                    e,
                ))
            }
        }
        // Who holds it, for others' messages (best effort: a read-only repository still locks).
        let holder = (|| -> Option<(DirHandle, String)> {
            let d = self.sub(&["locks"], true).ok()?;
            let h = LockHolder {
                pid: std::process::id(),
                host: this_host(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
                since: now_rfc3339(),
                lock: what.to_string(),
                kind: match kind {
                    LockKind::Shared => "shared".into(),
                    LockKind::Exclusive => "exclusive".into(),
                },
            };
            let name = format!("{}.{}.{short}.json", h.host, h.pid);
            let _ = d.unlink(&name);
            let mut w = d.create_excl(&name, self.file_mode()).ok()?;
            use std::io::Write;
            w.write_all(&serde_json::to_vec(&h).ok()?).ok()?;
            Some((d, name))
        })();
        Ok(RepoLock { _file: f, holder })
    }

    fn lock_file(&self, d: &DirHandle, name: &str) -> Result<File> {
        let p = self.root.join(name);
        d.open_rw(name, self.file_mode()).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
                || e.kind() == std::io::ErrorKind::InvalidData
            {
                Error::integrity(
                    format!("lock file {}", p.display()),
                    "it is not a regular file (a symlink?); remove it",
                )
            } else {
                Error::io(format!("open {}", p.display()), e)
            }
        })
    }

    /// Writes `path/name` atomically: a new file in `tmp/` (0600 or 0640, `O_EXCL`), fsync,
    /// rename into place, fsync of the directory.
    pub fn write_atomic(&self, path: &[&str], name: &str, data: &[u8]) -> Result<()> {
        self.write_atomic_parts(path, name, &[data])
    }

    /// [`Repository::write_atomic`] of the concatenation of `parts` (no copy made).
    pub fn write_atomic_parts(&self, path: &[&str], name: &str, parts: &[&[u8]]) -> Result<()> {
        let tmp_dir = self.sub(&["tmp"], true)?;
        let dest = self.sub(path, true)?;
        let tmp = format!("{}.tmp", Id16::random().hex());
        let shown = self.root.join(path.join("/")).join(name);
        let res = (|| -> Result<()> {
            let mut f = tmp_dir.create_excl(&tmp, self.file_mode()).map_err(|e| {
                Error::io(
                    format!("create a temporary file for {}", shown.display()),
                    e,
                )
            })?;
            parts
                .iter()
                .try_for_each(|p| f.write_all(p))
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io(format!("write {}", shown.display()), e))?;
            drop(f);
            tmp_dir
                .rename_to(&tmp, &dest, name)
                .map_err(|e| Error::io(format!("rename into place {}", shown.display()), e))?;
            dest.fsync()
                .map_err(|e| Error::io(format!("sync {}", dest.path().display()), e))?;
            Ok(())
        })();
        if res.is_err() {
            let _ = tmp_dir.unlink(&tmp);
        }
        res
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        sub: &str,
        name: &str,
        what: &str,
    ) -> Result<T> {
        let p = self.root.join(sub).join(name);
        let d = self.sub(&[sub], false)?;
        let b = match d.read_bounded(name, limits::RECORD) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "{what} not found in repository ({})",
                    p.display()
                )))
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::InvalidData || fsx::is_symlink_refusal(&e) =>
            {
                return Err(Error::integrity(format!("{what} ({})", p.display()), e))
            }
            Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
        };
        serde_json::from_slice(&b)
            .map_err(|e| Error::integrity(format!("{what} ({})", p.display()), e))
    }

    /// Stems of the entries of `sub` named `<stem><suffix>`, sorted; other names are ignored.
    fn list_dir_ids(&self, sub: &str, suffix: &str) -> Result<Vec<String>> {
        let d = match self.sub(&[sub], false) {
            Ok(d) => d,
            Err(Error::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (name, _) in d
            .list()
            .map_err(|e| Error::io(format!("list {}", d.path().display()), e))?
        {
            let name = name.to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(suffix) {
                out.push(stem.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Checks `type`, `version` and the repository of a record: a record older than the
    /// repository's format (a v1 record in a v2 repository) is refused, never trusted.
    fn check_kind(
        &self,
        kind: &str,
        want: &str,
        version: u32,
        repo_id: &Id16,
        what: &str,
    ) -> Result<()> {
        self.check_kind_min(kind, want, version, repo_id, what, self.version())
    }

    fn check_kind_min(
        &self,
        kind: &str,
        want: &str,
        version: u32,
        repo_id: &Id16,
        what: &str,
        min_version: u32,
    ) -> Result<()> {
        if kind != want {
            return Err(Error::integrity(
                what.to_string(),
                format!("type {kind:?}, expected {want:?}"),
            ));
        }
        if version != FORMAT_V1 && version != FORMAT_VERSION {
            return Err(Error::integrity(
                what.to_string(),
                format!("unknown version {version}"),
            ));
        }
        if version < min_version {
            return Err(Error::integrity(
                what.to_string(),
                format!("a version-{version} record in a version-{} repository (unauthenticated metadata is refused)", self.version()),
            ));
        }
        if *repo_id != self.id() {
            return Err(Error::integrity(
                what.to_string(),
                "it belongs to another repository",
            ));
        }
        Ok(())
    }

    // --- jobs ---

    pub fn write_job(&self, job: &JobRecord) -> Result<()> {
        self.write_record(&["jobs"], &format!("{}.json", job.job_id), job)
    }

    fn write_record<T: serde::Serialize>(&self, path: &[&str], name: &str, v: &T) -> Result<()> {
        let mut b = serde_json::to_vec_pretty(v).expect("format objects serialize");
        b.push(b'\n');
        self.write_atomic(path, name, &b)
    }

    pub fn read_job(&self, id: &Id16) -> Result<JobRecord> {
        let what = format!("job record {id}");
        let j: JobRecord = self.read_json("jobs", &format!("{id}.json"), &what)?;
        self.check_kind(&j.kind, JobRecord::KIND, j.version, &j.repo_id, &what)?;
        if j.job_id != *id {
            return Err(Error::integrity(what, "its file name names another job"));
        }
        Ok(j)
    }

    /// Every readable `<sub>/<id>.json` object, and the ones that could not be read.
    fn scan<T>(
        &self,
        sub: &str,
        read: impl Fn(&Id16) -> Result<T>,
    ) -> Result<(Vec<T>, Vec<Damaged>)> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for id in self.list_dir_ids(sub, ".json")? {
            let r = Id16::parse(&id)
                .map_err(|e| Error::integrity(format!("{sub}/{id}.json"), e))
                .and_then(|i| read(&i));
            match r {
                Ok(j) => out.push(j),
                Err(Error::Integrity { object, detail }) => bad.push(Damaged { object, detail }),
                Err(e) => return Err(e),
            }
        }
        Ok((out, bad))
    }

    /// Every readable job record, and the objects that could not be read.
    pub fn scan_jobs(&self) -> Result<(Vec<JobRecord>, Vec<Damaged>)> {
        self.scan("jobs", |i| self.read_job(i))
    }

    /// Readable job records (damaged ones are logged and skipped).
    pub fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        let (jobs, bad) = self.scan_jobs()?;
        for b in bad {
            tracing::warn!("skipping damaged {}: {}", b.object, b.detail);
        }
        Ok(jobs)
    }

    pub fn find_job(&self, name: &str) -> Result<JobRecord> {
        let mut m: Vec<JobRecord> = self
            .list_jobs()?
            .into_iter()
            .filter(|j| j.name == name)
            .collect();
        match m.len() {
            1 => Ok(m.remove(0)),
            0 => Err(Error::NotFound(format!(
                "no job named '{name}' in repository {}; `arca catalog rebuild --repo {}` lists the jobs it holds",
                self.root.display(),
                self.root.display()
            ))),
            n => Err(Error::integrity(
                format!("job records of '{name}'"),
                format!("{n} job records carry this name in {}; one of them was not written by this job's owner", self.root.display()),
            )),
        }
    }

    // --- chains ---

    pub fn write_chain(&self, chain: &ChainRecord) -> Result<()> {
        self.write_record(&["chains"], &format!("{}.json", chain.chain_id), chain)
    }

    pub fn read_chain(&self, chain_id: &Id16) -> Result<ChainRecord> {
        let what = format!("chain {chain_id}");
        let c: ChainRecord =
            self.read_json("chains", &format!("{chain_id}.json"), "chain record")?;
        self.check_kind(&c.kind, ChainRecord::KIND, c.version, &c.repo_id, &what)?;
        if c.chain_id != *chain_id {
            return Err(Error::integrity(what, "it belongs to another place"));
        }
        if c.keyslots.len() > 64 {
            return Err(Error::integrity(what, "more than 64 keyslots"));
        }
        Ok(c)
    }

    // --- escrow ---

    pub fn write_escrow(&self, e: &EscrowRecord) -> Result<()> {
        self.write_record(&["escrow"], &e.file_name(), e)
    }

    /// Readable escrow records of a job (all jobs if `None`); damaged ones are skipped.
    pub fn list_escrow(&self, job_id: Option<&Id16>) -> Result<Vec<EscrowRecord>> {
        Ok(self
            .scan_escrow(job_id)?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Readable escrow records with the file name each was found under.
    fn scan_escrow(&self, job_id: Option<&Id16>) -> Result<Vec<(String, EscrowRecord)>> {
        let mut out = Vec::new();
        for name in self.list_dir_ids("escrow", ".json")? {
            let r: Result<EscrowRecord> =
                self.read_json("escrow", &format!("{name}.json"), "escrow record");
            let e = match r {
                Ok(e) => e,
                Err(Error::Integrity { object, detail }) => {
                    tracing::warn!("skipping damaged {object}: {detail}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let what = format!("escrow record {name}");
            // Escrow records made by arca 0.1 stay usable after `arca migrate`: KMS binds them
            // to repository, job and password, and the password hash they hold must still
            // open an authenticated keyslot with the same salt record.
            let min = e.version.max(FORMAT_V1);
            if let Err(err) = self.check_kind_min(
                &e.kind,
                EscrowRecord::KIND,
                e.version,
                &e.repo_id,
                &what,
                min,
            ) {
                tracing::warn!("skipping {err}");
                continue;
            }
            let file = format!("{name}.json");
            if e.file_name() != file
                && EscrowRecord::legacy_file_name(&e.job_id, &e.kdf.password) != file
            {
                tracing::warn!(
                    "skipping {what}: its file name does not match its job, password and salt"
                );
                continue;
            }
            if job_id.is_none_or(|j| *j == e.job_id) {
                out.push((file, e));
            }
        }
        Ok(out)
    }

    /// Deletes the escrow records of a job's password: those of one salt (one version of
    /// the password), or all of them.
    pub fn delete_escrow(&self, job_id: &Id16, password: &str, salt: Option<&[u8]>) -> Result<()> {
        let d = self.sub(&["escrow"], true)?;
        for (name, e) in self.scan_escrow(Some(job_id))? {
            if e.kdf.password != password || salt.is_some_and(|s| s != e.kdf.salt.as_slice()) {
                continue;
            }
            match d.unlink(&name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("remove escrow/{name}"), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    // --- points ---

    pub fn write_point(&self, p: &PointRecord) -> Result<()> {
        self.write_record(&["points"], &format!("{}.json", p.point_id), p)
    }

    pub fn read_point(&self, id: &Id16) -> Result<PointRecord> {
        let what = format!("recovery point {id}");
        let p: PointRecord = self.read_json("points", &format!("{id}.json"), "recovery point")?;
        self.check_kind(&p.kind, PointRecord::KIND, p.version, &p.repo_id, &what)?;
        if p.point_id != *id {
            return Err(Error::integrity(what, "it belongs to another place"));
        }
        if p.data_format != 1 && p.data_format != 2 {
            return Err(Error::integrity(
                what,
                format!("unknown data format {}", p.data_format),
            ));
        }
        if p.data_format > p.version {
            return Err(Error::integrity(what, "data format newer than the record"));
        }
        if p.time_ns().is_none() {
            return Err(Error::integrity(what, "its time is not an RFC 3339 time"));
        }
        Ok(p)
    }

    /// Every readable point record, and the ones that could not be read.
    pub fn scan_points(&self) -> Result<(Vec<PointRecord>, Vec<Damaged>)> {
        self.scan("points", |i| self.read_point(i))
    }

    /// Readable recovery points of a job, oldest first (by time, then id). Whether their
    /// metadata authenticates is checked when their chain is opened.
    pub fn list_points(&self, job_id: &Id16) -> Result<Vec<PointRecord>> {
        let (all, _) = self.scan_points()?;
        let mut out: Vec<PointRecord> = all.into_iter().filter(|p| p.job_id == *job_id).collect();
        out.sort_by(|a, b| {
            a.time_ns()
                .cmp(&b.time_ns())
                .then(a.point_id.cmp(&b.point_id))
        });
        Ok(out)
    }

    /// Ids of every point record file present, readable or not.
    pub fn point_ids(&self) -> Result<Vec<Id16>> {
        Ok(self
            .list_dir_ids("points", ".json")?
            .iter()
            .filter_map(|i| Id16::parse(i).ok())
            .collect())
    }

    pub fn delete_point_file(&self, id: &Id16) -> Result<()> {
        let d = self.sub(&["points"], false)?;
        d.unlink(format!("{id}.json"))
            .map_err(|e| Error::io(format!("remove points/{id}.json"), e))
    }

    // --- index ---

    pub fn write_index(&self, point_id: &Id16, data_format: u32, sealed: &[u8]) -> Result<()> {
        let magic = if data_format >= 2 {
            INDEX_MAGIC2
        } else {
            INDEX_MAGIC
        };
        self.write_atomic_parts(&["index"], &point_id.hex(), &[magic, sealed])
    }

    /// The sealed part of an index file.
    pub fn read_index(&self, point_id: &Id16, data_format: u32) -> Result<Vec<u8>> {
        let what = format!("index of recovery point {point_id}");
        let d = self.sub(&["index"], false)?;
        let mut b = d.read_bounded(point_id.hex(), limits::INDEX).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::integrity(&what, "missing")
            } else if e.kind() == std::io::ErrorKind::InvalidData || fsx::is_symlink_refusal(&e) {
                Error::integrity(&what, e)
            } else {
                Error::io(format!("read index/{point_id}"), e)
            }
        })?;
        let magic = if data_format >= 2 {
            INDEX_MAGIC2
        } else {
            INDEX_MAGIC
        };
        if !b.starts_with(magic) {
            return Err(Error::integrity(what, "bad magic or version"));
        }
        b.drain(..magic.len());
        Ok(b)
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
        let h = id.hex();
        self.write_atomic(&["packs", &h[..2]], &h, data)
    }

    fn pack_err(&self, id: &Id32, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::integrity(
                format!("pack {id}"),
                format!("missing ({})", self.pack_path(id).display()),
            )
        } else if e.kind() == std::io::ErrorKind::InvalidData || fsx::is_symlink_refusal(&e) {
            Error::integrity(format!("pack {id}"), e)
        } else {
            Error::io(format!("read {}", self.pack_path(id).display()), e)
        }
    }

    pub fn read_pack(&self, id: &Id32) -> Result<Vec<u8>> {
        let h = id.hex();
        let d = self.sub(&["packs", &h[..2]], false).map_err(|e| match e {
            Error::NotFound(_) => Error::integrity(format!("pack {id}"), "missing"),
            e => e,
        })?;
        d.read_bounded(&h, limits::PACK)
            .map_err(|e| self.pack_err(id, e))
    }

    pub fn open_pack(&self, id: &Id32) -> Result<File> {
        let h = id.hex();
        let d = {
            let mut m = self.pack_dirs.lock().expect("not poisoned");
            match m.get(&h[..2]) {
                Some(d) => d.clone(),
                None => {
                    let d = self.sub(&["packs", &h[..2]], false).map_err(|e| match e {
                        Error::NotFound(_) => Error::integrity(format!("pack {id}"), "missing"),
                        e => e,
                    })?;
                    let d = std::sync::Arc::new(d);
                    m.insert(h[..2].to_string(), d.clone());
                    d
                }
            }
        };
        d.open_read(&h).map_err(|e| self.pack_err(id, e))
    }

    /// Size of a pack file, if it exists (never through a symlink).
    pub fn pack_len(&self, id: &Id32) -> Option<u64> {
        self.open_pack(id).ok()?.metadata().ok().map(|m| m.len())
    }

    pub fn read_pack_range(f: &mut File, id: &Id32, offset: u64, len: u32) -> Result<Vec<u8>> {
        if len > limits::SEALED_CHUNK {
            return Err(Error::integrity(
                format!("pack {id}"),
                "a chunk length beyond the format's limit",
            ));
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::integrity(
                    format!("pack {id}"),
                    "truncated: a chunk lies beyond its end",
                ),
                _ => Error::io(format!("read pack {id}"), e),
            })?;
        Ok(buf)
    }

    /// The unauthenticated owner of a pack: the point id in its first 24 bytes and its
    /// layout version, with the pack's size. `None` when it is not a pack.
    pub fn pack_owner(&self, id: &Id32) -> Result<Option<(Id16, u32, u64)>> {
        let f = self.open_pack(id)?;
        let len = f
            .metadata()
            .map_err(|e| Error::io(format!("stat pack {id}"), e))?
            .len();
        let mut head = [0u8; PACK_PREFIX_LEN];
        if len < PACK_PREFIX_LEN as u64 + 4 || f.read_exact_at(&mut head, 0).is_err() {
            return Ok(None);
        }
        let fmt = if head[..8] == *PACK_MAGIC2 {
            2
        } else if head[..8] == *PACK_MAGIC {
            1
        } else {
            return Ok(None);
        };
        let point = Id16(head[8..24].try_into().expect("16 bytes"));
        Ok(Some((point, fmt, len)))
    }

    /// Removes a pack (never through a symlink). A pack already gone is not an error.
    pub fn delete_pack(&self, id: &Id32) -> Result<()> {
        let h = id.hex();
        let d = match self.sub(&["packs", &h[..2]], false) {
            Ok(d) => d,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.pack_dirs.lock().expect("not poisoned").remove(&h[..2]);
        match d.unlink(&h) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove pack {h}"), e)),
        }
    }

    /// Ids of the index files present (names of another form are ignored).
    pub fn list_index_ids(&self) -> Result<Vec<Id16>> {
        let d = match self.sub(&["index"], false) {
            Ok(d) => d,
            Err(Error::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out: Vec<Id16> = d
            .list()
            .map_err(|e| Error::io("list index", e))?
            .into_iter()
            .filter_map(|(n, _)| Id16::parse(&n.to_string_lossy()).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes an index file. One already gone is not an error.
    pub fn delete_index(&self, id: &Id16) -> Result<()> {
        let d = self.sub(&["index"], false)?;
        match d.unlink(id.hex()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove index/{id}"), e)),
        }
    }

    /// All pack ids present on disk.
    pub fn list_packs(&self) -> Result<Vec<Id32>> {
        let d = self.sub(&["packs"], false)?;
        let mut out = Vec::new();
        for (sub, _) in d.list().map_err(|e| Error::io("list packs", e))? {
            let sub = sub.to_string_lossy().into_owned();
            if !is_hex(&sub, 2) {
                continue;
            }
            let Ok(sd) = d.open_dir(&sub) else { continue };
            for (e, _) in sd.list().map_err(|e| Error::io("list packs", e))? {
                if let Ok(id) = Id32::parse(&e.to_string_lossy()) {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes leftovers of interrupted writes: only names arca itself makes in `tmp/`
    /// (`<32 hex>.tmp`), never through a symlink. A symlinked `tmp/` is refused.
    /// Removes leftovers of interrupted writes in `tmp/` that are older than `min_age` (other
    /// writers may be running: their files are younger).
    pub fn clean_tmp(&self, min_age: std::time::Duration) -> Result<()> {
        let d = self.sub(&["tmp"], true)?;
        let now = std::time::SystemTime::now();
        for (name, ft) in d.list().map_err(|e| Error::io("list tmp", e))? {
            let n = name.to_string_lossy();
            let ours = n.strip_suffix(".tmp").is_some_and(|s| is_hex(s, 32));
            if !ours || ft != rustix::fs::FileType::RegularFile {
                continue;
            }
            let old_enough = min_age.is_zero()
                || rustix::fs::statat(
                    d.fd(),
                    name.as_os_str(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .ok()
                .and_then(|st| {
                    let m = std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(st.st_mtime.max(0) as u64);
                    now.duration_since(m).ok()
                })
                .is_some_and(|age| age >= min_age);
            if old_enough {
                let _ = d.unlink(&name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_refuses_non_empty_and_open_checks_config() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"1").unwrap();
        assert!(matches!(
            Repository::init(d.path(), false),
            Err(Error::Usage(_))
        ));
        let r = d.path().join("r");
        let repo = Repository::init(&r, false).unwrap();
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
        let repo = Repository::init(&d.path().join("r"), false).unwrap();
        let l = repo.lock().unwrap();
        assert!(matches!(repo.lock(), Err(Error::Locked { .. })));
        drop(l);
        repo.lock().unwrap();
    }

    #[test]
    fn files_0600_dirs_0700() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("r");
        let repo = Repository::init(&r, false).unwrap();
        repo.write_pack(&Id32([0xab; 32]), b"x").unwrap();
        let _l = repo.lock().unwrap();
        fn walk(p: &Path) {
            for e in std::fs::read_dir(p).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                let mode = m.permissions().mode() & 0o777;
                if m.is_dir() {
                    assert_eq!(mode, 0o700, "{}", e.path().display());
                    walk(&e.path());
                } else {
                    assert_eq!(mode, 0o600, "{}", e.path().display());
                }
            }
        }
        assert_eq!(
            std::fs::metadata(&r).unwrap().permissions().mode() & 0o777,
            0o700
        );
        walk(&r);
    }

    #[test]
    fn symlinked_tmp_and_lock_are_refused_and_nothing_outside_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("0123456789abcdef0123456789abcdef.tmp");
        std::fs::write(&victim, b"precious").unwrap();
        std::fs::write(outside.path().join("keep"), b"precious").unwrap();
        let r = d.path().join("r");
        let repo = Repository::init(&r, false).unwrap();
        std::fs::remove_dir(r.join("tmp")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("tmp")).unwrap();
        assert!(matches!(
            repo.clean_tmp(std::time::Duration::ZERO),
            Err(Error::Integrity { .. })
        ));
        assert!(repo.write_pack(&Id32([1; 32]), b"x").is_err());
        assert!(victim.exists() && outside.path().join("keep").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 2);
        let target = outside.path().join("created-by-lock");
        std::os::unix::fs::symlink(&target, r.join("lock")).unwrap();
        assert!(matches!(repo.lock(), Err(Error::Integrity { .. })));
        assert!(!target.exists());
    }
}
