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
pub mod store;
pub mod tree_bin;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use format::*;
use store::local::LocalStore;
use store::s3::S3Store;
use store::{Location, LockGuard, LockScope, ObjectSink, RangeReader, Store};

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
    /// Where the repository is, as the user named it (a directory or `s3://bucket/prefix`).
    root: PathBuf,
    store: Arc<dyn Store>,
    pub config: RepoConfig,
}

/// Holds a lock of the repository or of one chain until dropped. Local repositories use an
/// advisory lock (flock), released by the kernel when its process dies, and write who holds
/// it beside it (`locks/<host>.<pid>.<lock>.json`); S3 repositories use lease objects.
pub struct RepoLock {
    _guard: Box<dyn LockGuard>,
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

pub(crate) fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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

/// Options of `arca init`.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub group_readable: bool,
    /// S3 only: retain every object written this long (the bucket must have Object Lock).
    pub object_lock: Option<store::ObjectLock>,
}

/// A pack opened for reading chunks out of it.
pub struct PackReader {
    r: Box<dyn RangeReader>,
}

/// The store of a location, and the same store as a local one when it is.
type Opened = (Arc<dyn Store>, Option<Arc<LocalStore>>);

fn open_store(dir: &Path) -> Result<Opened> {
    match Location::parse(dir).map_err(|e| Error::Usage(e.to_string()))? {
        Location::Local(p) => {
            let s = Arc::new(LocalStore::open(&p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound(format!(
                        "repository {} does not exist: is the backup disk mounted, or was the repository moved?",
                        dir.display()
                    ))
                } else {
                    Error::io(format!("open repository {}", dir.display()), e)
                }
            })?);
            Ok((s.clone(), Some(s)))
        }
        Location::S3 { bucket, prefix } => {
            let s = S3Store::open(&bucket, &prefix)
                .map_err(|e| Error::io(format!("connect to {}", dir.display()), e))?;
            Ok((Arc::new(s), None))
        }
    }
}

impl Repository {
    /// Creates a repository in `dir`, which must not exist or be empty.
    pub fn init(dir: &Path, group_readable: bool) -> Result<Repository> {
        Self::init_with(
            dir,
            &InitOptions {
                group_readable,
                object_lock: None,
            },
        )
    }

    /// Creates a repository: a new or empty directory, or an empty S3 prefix.
    pub fn init_with(dir: &Path, o: &InitOptions) -> Result<Repository> {
        let group_readable = o.group_readable;
        let dmode = if group_readable { 0o750 } else { 0o700 };
        let local = matches!(
            Location::parse(dir).map_err(|e| Error::Usage(e.to_string()))?,
            Location::Local(_)
        );
        if local {
            if o.object_lock.is_some() {
                return Err(Error::Usage(
                    "--object-lock-days needs an S3 repository (s3://BUCKET/PREFIX) in a bucket with Object Lock".into(),
                ));
            }
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
        }
        let (store, local) = open_store(dir)?;
        if let Some(l) = &local {
            l.set_group_readable(group_readable);
            let handle = l.dir_handle();
            fsx::fchmod(handle.fd(), dmode)
                .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
            for sub in SUBDIRS {
                handle
                    .create_dir(sub, dmode)
                    .map_err(|e| Error::io(format!("create {}/{sub}", dir.display()), e))?;
            }
        } else {
            let present = store
                .list("")
                .map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
            if !present.is_empty() {
                return Err(Error::Usage(format!(
                    "{} is not empty ({} objects): a repository needs an empty prefix",
                    dir.display(),
                    present.len()
                )));
            }
            if let Some(l) = o.object_lock {
                let on = store.object_lock_enabled().map_err(|e| {
                    Error::io(
                        format!("read the Object Lock configuration of {}", dir.display()),
                        e,
                    )
                })?;
                if !on {
                    return Err(Error::Usage(format!(
                        "the bucket of {} does not have Object Lock enabled; create it with Object Lock (it cannot be turned on for objects already written), or leave out --object-lock-days",
                        dir.display()
                    )));
                }
                store
                    .set_object_lock(l)
                    .map_err(|e| Error::io("object lock", e))?;
            }
        }
        let config = RepoConfig {
            kind: RepoConfig::KIND.into(),
            version: FORMAT_VERSION,
            repo_id: Id16::random(),
            created: now_rfc3339(),
            group_readable,
            object_lock: o.object_lock,
        };
        let repo = Repository {
            root: dir.to_path_buf(),
            store,
            config,
        };
        let mut b = serde_json::to_vec_pretty(&repo.config).expect("config serializes");
        b.push(b'\n');
        if local.is_some() {
            repo.write_atomic(&[], "config", &b)?;
        } else {
            repo.store.put_new("config", &b).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Usage(format!(
                        "{} was initialized by someone else meanwhile",
                        dir.display()
                    ))
                } else {
                    Error::io(format!("write {}/config", dir.display()), e)
                }
            })?;
        }
        Ok(repo)
    }

    /// Creates a replica of the repository whose config is `of`: the same repository id
    /// (ciphertext copied from it opens here), its own permissions and no Object Lock.
    pub fn init_replica(dir: &Path, of: &RepoConfig) -> Result<Repository> {
        let mut r = Self::init_with(dir, &InitOptions::default())?;
        r.config = RepoConfig {
            kind: RepoConfig::KIND.into(),
            version: of.version,
            repo_id: of.repo_id,
            created: now_rfc3339(),
            group_readable: false,
            object_lock: None,
        };
        let mut b = serde_json::to_vec_pretty(&r.config).expect("config serializes");
        b.push(b'\n');
        r.write_atomic(&[], "config", &b)?;
        Ok(r)
    }

    pub fn open(dir: &Path) -> Result<Repository> {
        let (store, local) = open_store(dir)?;
        let bytes = match store.get("config", limits::CONFIG) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "{} is not an arca repository (no config file); check the path (is the backup disk mounted?)",
                    dir.display()
                )))
            }
            Err(e) if local.is_none() && e.kind() != std::io::ErrorKind::InvalidData => {
                return Err(Error::io(format!("read {}/config", dir.display()), e))
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
        if let Some(l) = &local {
            l.set_group_readable(config.group_readable);
        }
        if let Some(ol) = config.object_lock {
            store.set_object_lock(ol).map_err(|e| {
                Error::integrity(
                    format!("repository config {}", p.display()),
                    format!("it asks for Object Lock: {e}"),
                )
            })?;
        }
        Ok(Repository {
            root: dir.to_path_buf(),
            store,
            config,
        })
    }

    /// A second handle on the same repository (for another thread).
    pub fn try_clone(&self) -> Result<Repository> {
        Ok(Repository {
            root: self.root.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The backend holding the objects.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn id(&self) -> Id16 {
        self.config.repo_id
    }

    /// The format version of this repository's metadata (1: arca 0.1, unauthenticated).
    pub fn version(&self) -> u32 {
        self.config.version
    }

    /// An error reading `key`: missing, not an object (integrity), or I/O.
    fn read_err(&self, what: &str, key: &str, e: std::io::Error, missing: Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::NotFound => missing,
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                Error::integrity(format!("{what} ({})", self.root.join(key).display()), e)
            }
            _ => Error::io(format!("read {}", self.root.join(key).display()), e),
        }
    }

    /// Takes the repository's exclusive lock (non-blocking). `lock` must be a regular file.
    pub fn lock(&self) -> Result<RepoLock> {
        self.try_lock(LockKind::Exclusive)
    }

    /// Takes the repository lock, shared or exclusive (non-blocking), and records the holder.
    pub fn try_lock(&self, kind: LockKind) -> Result<RepoLock> {
        self.take(LockScope::Repository, kind)
    }

    /// Takes the exclusive lock of one chain: backups of the job and changes of its keys
    /// exclude each other; other jobs are not held up.
    pub fn try_lock_chain(&self, chain: &Id16) -> Result<RepoLock> {
        self.take(LockScope::Chain(*chain), LockKind::Exclusive)
    }

    /// Who holds locks (unreadable records are skipped).
    pub fn lock_holders(&self) -> Vec<LockHolder> {
        self.store.lock_holders()
    }

    /// Removes lock records of holders known to be gone (local: this host's dead
    /// processes; S3: expired leases); returns them.
    pub fn sweep_stale_holders(&self) -> Vec<LockHolder> {
        self.store.sweep_stale()
    }

    fn take(&self, scope: LockScope, kind: LockKind) -> Result<RepoLock> {
        let what = scope.describe();
        let holder = LockHolder {
            pid: std::process::id(),
            host: this_host(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            since: now_rfc3339(),
            lock: what.clone(),
            kind: match kind {
                LockKind::Shared => "shared".into(),
                LockKind::Exclusive => "exclusive".into(),
            },
        };
        match self.store.lock(scope, kind, &holder) {
            Ok(Some(g)) => Ok(RepoLock { _guard: g }),
            Ok(None) => {
                let holders = self.lock_holders();
                Err(Error::Locked {
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
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Error::integrity(
                format!("lock of the {what} in {}", self.root.display()),
                e,
            )),
            Err(e) => Err(Error::io(
                format!("lock the {what} in {}", self.root.display()),
                e,
            )),
        }
    }

    /// Writes `path/name` atomically (local: a new file in `tmp/`, fsync, rename into place,
    /// fsync of the directory; S3: one PUT).
    pub fn write_atomic(&self, path: &[&str], name: &str, data: &[u8]) -> Result<()> {
        self.write_atomic_parts(path, name, &[data])
    }

    /// [`Repository::write_atomic`] of the concatenation of `parts`.
    pub fn write_atomic_parts(&self, path: &[&str], name: &str, parts: &[&[u8]]) -> Result<()> {
        let key = path
            .iter()
            .copied()
            .chain(std::iter::once(name))
            .collect::<Vec<_>>()
            .join("/");
        let shown = self.root.join(&key);
        self.store.put(&key, parts).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::integrity(format!("repository directory of {}", shown.display()), e)
            } else {
                Error::io(format!("write {}", shown.display()), e)
            }
        })
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        sub: &str,
        name: &str,
        what: &str,
    ) -> Result<T> {
        let key = format!("{sub}/{name}");
        let p = self.root.join(&key);
        let b = self.store.get(&key, limits::RECORD).map_err(|e| {
            let missing =
                Error::NotFound(format!("{what} not found in repository ({})", p.display()));
            self.read_err(what, &key, e, missing)
        })?;
        serde_json::from_slice(&b)
            .map_err(|e| Error::integrity(format!("{what} ({})", p.display()), e))
    }

    /// Stems of the entries of `sub` named `<stem><suffix>`, sorted; other names are ignored.
    fn list_dir_ids(&self, sub: &str, suffix: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list(sub)?
            .into_iter()
            .filter_map(|name| name.strip_suffix(suffix).map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Names of the objects directly in `sub` (deeper ones are ignored).
    fn list(&self, sub: &str) -> Result<Vec<String>> {
        let objs = self.store.list(sub).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::integrity(
                    format!("repository directory {}", self.root.join(sub).display()),
                    e,
                )
            } else {
                Error::io(format!("list {}", self.root.join(sub).display()), e)
            }
        })?;
        Ok(objs
            .into_iter()
            .filter_map(|o| {
                let rest = o.key.strip_prefix(sub)?.strip_prefix('/')?;
                (!rest.contains('/')).then(|| rest.to_string())
            })
            .collect())
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
        for (name, e) in self.scan_escrow(Some(job_id))? {
            if e.kdf.password != password || salt.is_some_and(|s| s != e.kdf.salt.as_slice()) {
                continue;
            }
            self.store
                .delete(&format!("escrow/{name}"))
                .map_err(|e| Error::io(format!("remove escrow/{name}"), e))?;
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
        self.store
            .delete(&format!("points/{id}.json"))
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
        let key = format!("index/{}", point_id.hex());
        let mut b = self.store.get(&key, limits::INDEX).map_err(|e| {
            let missing = Error::integrity(&what, "missing");
            self.read_err(&what, &key, e, missing)
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

    /// Starts writing a pack; nothing may refer to it before [`Repository::flush`].
    pub fn write_pack_owned(&self, id: &Id32, data: Vec<u8>) -> Result<()> {
        let key = Self::pack_rel(id);
        self.store
            .put_background(key, data)
            .map_err(|e| Error::io(format!("write pack {id} to {}", self.root.display()), e))
    }

    /// A sink to stream a pack into as it is built, when the store takes one (a local
    /// repository); the pack is named by [`Repository::commit_pack`].
    pub fn pack_sink(&self) -> Result<Option<Box<dyn ObjectSink>>> {
        self.store
            .put_stream()
            .map_err(|e| Error::io(format!("start a pack in {}", self.root.display()), e))
    }

    /// Puts a pack streamed into `sink` in place under its id.
    pub fn commit_pack(&self, sink: Box<dyn ObjectSink>, id: &Id32) -> Result<()> {
        sink.commit(&Self::pack_rel(id))
            .map_err(|e| Error::io(format!("write pack {id} to {}", self.root.display()), e))
    }

    /// Waits until every pack started with [`Repository::write_pack_owned`] is written.
    pub fn flush(&self) -> Result<()> {
        self.store
            .flush()
            .map_err(|e| Error::io(format!("write packs to {}", self.root.display()), e))
    }

    fn pack_err(&self, id: &Id32, e: std::io::Error) -> Error {
        let key = Self::pack_rel(id);
        let missing = Error::integrity(
            format!("pack {id}"),
            format!("missing ({})", self.pack_path(id).display()),
        );
        match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                Error::integrity(format!("pack {id}"), e)
            }
            _ => self.read_err("pack", &key, e, missing),
        }
    }

    pub fn read_pack(&self, id: &Id32) -> Result<Vec<u8>> {
        self.store
            .get(&Self::pack_rel(id), limits::PACK)
            .map_err(|e| self.pack_err(id, e))
    }

    pub fn open_pack(&self, id: &Id32) -> Result<PackReader> {
        let r = self
            .store
            .reader(&Self::pack_rel(id))
            .map_err(|e| self.pack_err(id, e))?;
        Ok(PackReader { r })
    }

    /// A pack opened to read file-index chunks out of it (a remote store caches them).
    pub fn open_pack_metadata(&self, id: &Id32) -> Result<PackReader> {
        let r = self
            .store
            .reader_cached(&Self::pack_rel(id))
            .map_err(|e| self.pack_err(id, e))?;
        Ok(PackReader { r })
    }

    /// Size of a pack, if it exists (never through a symlink).
    pub fn pack_len(&self, id: &Id32) -> Option<u64> {
        self.store.size(&Self::pack_rel(id)).ok().flatten()
    }

    pub fn read_pack_range(
        f: &mut PackReader,
        id: &Id32,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        Self::read_pack_range_into(f, id, offset, len, &mut buf)?;
        Ok(buf)
    }

    /// [`Repository::read_pack_range`] into a buffer the caller reuses.
    pub fn read_pack_range_into(
        f: &mut PackReader,
        id: &Id32,
        offset: u64,
        len: u32,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if len > limits::SEALED_CHUNK {
            return Err(Error::integrity(
                format!("pack {id}"),
                "a chunk length beyond the format's limit",
            ));
        }
        f.r.read_into(offset, u64::from(len), buf)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::integrity(
                    format!("pack {id}"),
                    "truncated: a chunk lies beyond its end",
                ),
                std::io::ErrorKind::NotFound => Error::integrity(format!("pack {id}"), "missing"),
                _ => Error::io(format!("read pack {id}"), e),
            })
    }

    /// The unauthenticated owner of a pack: the point id in its first 24 bytes and its
    /// layout version, with the pack's size. `None` when it is not a pack.
    pub fn pack_owner(&self, id: &Id32) -> Result<Option<(Id16, u32, u64)>> {
        let Some(len) = self
            .store
            .size(&Self::pack_rel(id))
            .map_err(|e| self.pack_err(id, e))?
        else {
            return Err(self.pack_err(id, std::io::ErrorKind::NotFound.into()));
        };
        if len < PACK_PREFIX_LEN as u64 + 4 {
            return Ok(None);
        }
        let mut f = self.open_pack(id)?;
        let Ok(head) = f.r.read_at(0, PACK_PREFIX_LEN as u64) else {
            return Ok(None);
        };
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
        self.store
            .delete(&Self::pack_rel(id))
            .map_err(|e| Error::io(format!("remove pack {id}"), e))
    }

    /// Ids of the index files present (names of another form are ignored).
    pub fn list_index_ids(&self) -> Result<Vec<Id16>> {
        let mut out: Vec<Id16> = self
            .list("index")?
            .iter()
            .filter_map(|n| Id16::parse(n).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes an index file. One already gone is not an error.
    pub fn delete_index(&self, id: &Id16) -> Result<()> {
        self.store
            .delete(&format!("index/{}", id.hex()))
            .map_err(|e| Error::io(format!("remove index/{id}"), e))
    }

    /// All pack ids present.
    pub fn list_packs(&self) -> Result<Vec<Id32>> {
        let objs = self
            .store
            .list("packs")
            .map_err(|e| Error::io("list packs", e))?;
        let mut out: Vec<Id32> = objs
            .iter()
            .filter_map(|o| {
                let mut it = o.key.split('/').skip(1);
                let (sub, name) = (it.next()?, it.next()?);
                if it.next().is_some() || !store::is_hex(sub, 2) {
                    return None;
                }
                Id32::parse(name).ok()
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes leftovers of interrupted writes older than `min_age` (other writers may be
    /// running: their leftovers are younger). Local: only names arca itself makes in `tmp/`
    /// (`<32 hex>.tmp`), never through a symlink (a symlinked `tmp/` is refused); S3:
    /// multipart uploads never completed.
    pub fn clean_tmp(&self, min_age: std::time::Duration) -> Result<()> {
        self.store.clean_tmp(min_age).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::integrity(format!("{}/tmp", self.root.display()), e)
            } else {
                Error::io(format!("clean {}/tmp", self.root.display()), e)
            }
        })
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
