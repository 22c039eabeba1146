//! A repository in a local directory.
//!
//! Every write goes to `tmp/` first, is fsynced, then renamed into place and the directory
//! fsynced: a crash or a full disk leaves at worst unreferenced files, never a half-written
//! object. Everything below the root is reached through directory handles without
//! following symlinks ([`fsx`]); a symlink where a directory or object should be is refused
//! (`InvalidData`). Locks are `flock`s, released by the kernel when their process dies; who
//! holds one is written beside it (`locks/<host>.<pid>.<lock>.json`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{is_hex, split_key, LockGuard, LockScope, ObjectInfo, ObjectSink, RangeReader, Store};
use crate::repo::format::Id16;
use crate::repo::fsx::{self, DirHandle};
use crate::repo::{LockHolder, LockKind};

pub struct LocalStore {
    root: PathBuf,
    location: String,
    dir: DirHandle,
    group_readable: AtomicBool,
    /// Open handles of directories read from (a repository has a few hundred at most).
    dirs: Mutex<HashMap<String, Arc<DirHandle>>>,
}

fn refusal(e: io::Error) -> io::Error {
    if fsx::is_symlink_refusal(&e) {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a symlink or not a directory; arca never follows links inside a repository",
        )
    } else {
        e
    }
}

struct FlockGuard {
    _file: File,
    holder: Option<(DirHandle, String)>,
}

impl LockGuard for FlockGuard {}

impl Drop for FlockGuard {
    fn drop(&mut self) {
        if let Some((d, name)) = &self.holder {
            let _ = d.unlink(name);
        }
    }
}

/// A pack being written to `tmp/`, renamed into place by [`ObjectSink::commit`].
struct LocalSink {
    tmp_dir: DirHandle,
    tmp: String,
    /// Written unbuffered: the pack builder gathers small chunks into large writes.
    file: Option<File>,
    /// The repository root and modes, to create the destination directory.
    root: DirHandle,
    dir_mode: u32,
}

impl ObjectSink for LocalSink {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("open until commit")
            .write_all(data)
    }

    fn commit(mut self: Box<Self>, key: &str) -> io::Result<()> {
        let (dirs, name) = split_key(key)?;
        let f = self.file.take().expect("open until commit");
        f.sync_all()?;
        let mut dest = self.root.try_clone()?;
        for c in dirs {
            dest = dest.create_dir(c, self.dir_mode).map_err(refusal)?;
        }
        self.tmp_dir
            .rename_to(&self.tmp, &dest, name)
            .map_err(refusal)?;
        self.tmp.clear(); // renamed: nothing to remove
        dest.fsync()
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            drop(self.file.take());
            let _ = self.tmp_dir.unlink(&self.tmp);
        }
    }
}

struct FileReader(File);

impl RangeReader for FileReader {
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(offset, len, &mut buf)?;
        Ok(buf)
    }

    fn read_into(&mut self, offset: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range beyond memory"))?;
        // Only what the buffer grows by is zeroed.
        buf.resize(len, 0);
        self.0.read_exact_at(buf, offset)
    }
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

impl LocalStore {
    /// Opens an existing directory (symlinks in its own path are the user's choice).
    pub fn open(root: &Path) -> io::Result<LocalStore> {
        let dir = DirHandle::open_root(root)?;
        Ok(LocalStore {
            root: root.to_path_buf(),
            location: root.display().to_string(),
            dir,
            group_readable: AtomicBool::new(false),
            dirs: Default::default(),
        })
    }

    /// Files 0640 and directories 0750 from now on (0600/0700 otherwise).
    pub fn set_group_readable(&self, yes: bool) {
        self.group_readable.store(yes, Ordering::Relaxed);
    }

    pub fn dir_handle(&self) -> &DirHandle {
        &self.dir
    }

    fn file_mode(&self) -> u32 {
        if self.group_readable.load(Ordering::Relaxed) {
            0o640
        } else {
            0o600
        }
    }

    fn dir_mode(&self) -> u32 {
        if self.group_readable.load(Ordering::Relaxed) {
            0o750
        } else {
            0o700
        }
    }

    fn sub(&self, path: &[&str], create: bool) -> io::Result<DirHandle> {
        let mut cur = self.dir.try_clone()?;
        for c in path {
            cur = if create {
                cur.create_dir(c, self.dir_mode())
            } else {
                cur.open_dir(c)
            }
            .map_err(refusal)?;
        }
        Ok(cur)
    }

    /// A handle of a directory read from, cached.
    fn read_dir(&self, path: &[&str]) -> io::Result<Arc<DirHandle>> {
        let k = path.join("/");
        if let Some(d) = self.dirs.lock().expect("not poisoned").get(&k) {
            return Ok(d.clone());
        }
        let d = Arc::new(self.sub(path, false)?);
        self.dirs.lock().expect("not poisoned").insert(k, d.clone());
        Ok(d)
    }

    fn lock_file(&self, d: &DirHandle, name: &str) -> io::Result<File> {
        d.open_rw(name, self.file_mode()).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
                || e.kind() == io::ErrorKind::InvalidData
            {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("lock file {name} is not a regular file (a symlink?); remove it"),
                )
            } else {
                e
            }
        })
    }
}

impl Store for LocalStore {
    fn location(&self) -> &str {
        &self.location
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn get(&self, key: &str, max: u64) -> io::Result<Vec<u8>> {
        let (dirs, name) = split_key(key)?;
        self.read_dir(&dirs)?
            .read_bounded(name, max)
            .map_err(refusal)
    }

    fn reader(&self, key: &str) -> io::Result<Box<dyn RangeReader>> {
        let (dirs, name) = split_key(key)?;
        let f = self.read_dir(&dirs)?.open_read(name).map_err(refusal)?;
        Ok(Box::new(FileReader(f)))
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let (dirs, name) = split_key(key)?;
        let d = match self.read_dir(&dirs) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match d.open_read(name) {
            Ok(f) => Ok(Some(f.metadata()?.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(refusal(e)),
        }
    }

    fn put(&self, key: &str, parts: &[&[u8]]) -> io::Result<()> {
        let (dirs, name) = split_key(key)?;
        let tmp_dir = self.sub(&["tmp"], true)?;
        let dest = self.sub(&dirs, true)?;
        let tmp = format!("{}.tmp", Id16::random().hex());
        let res = (|| -> io::Result<()> {
            let mut f = tmp_dir.create_excl(&tmp, self.file_mode())?;
            parts.iter().try_for_each(|p| f.write_all(p))?;
            f.sync_all()?;
            drop(f);
            tmp_dir.rename_to(&tmp, &dest, name)?;
            dest.fsync()
        })();
        if res.is_err() {
            let _ = tmp_dir.unlink(&tmp);
        }
        res.map_err(refusal)
    }

    fn put_stream(&self) -> io::Result<Option<Box<dyn ObjectSink>>> {
        let tmp_dir = self.sub(&["tmp"], true)?;
        let tmp = format!("{}.tmp", Id16::random().hex());
        let file = tmp_dir
            .create_excl(&tmp, self.file_mode())
            .map_err(refusal)?;
        Ok(Some(Box::new(LocalSink {
            tmp_dir,
            tmp,
            file: Some(file),
            root: self.dir.try_clone()?,
            dir_mode: self.dir_mode(),
        })))
    }

    fn put_new(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let (dirs, name) = split_key(key)?;
        let dest = self.sub(&dirs, true)?;
        let mut f = dest.create_excl(name, self.file_mode()).map_err(refusal)?;
        let r = f.write_all(data).and_then(|_| f.sync_all());
        if r.is_err() {
            let _ = dest.unlink(name);
        }
        r
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let (dirs, name) = split_key(key)?;
        let d = match self.read_dir(&dirs) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match d.unlink(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<ObjectInfo>> {
        let dir = dir.trim_end_matches('/');
        let path: Vec<&str> = if dir.is_empty() {
            Vec::new()
        } else {
            split_key(dir)?;
            dir.split('/').collect()
        };
        let d = match self.sub(&path, false) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        // Depth-first below `dir`; directories are entered without following symlinks.
        let mut stack = vec![(d, dir.to_string())];
        while let Some((d, prefix)) = stack.pop() {
            for (name, ft) in d.list()? {
                let Some(name) = name.to_str() else { continue };
                let key = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                if ft == rustix::fs::FileType::Directory {
                    if let Ok(sd) = d.open_dir(name) {
                        stack.push((sd, key));
                    }
                } else {
                    out.push(ObjectInfo {
                        key,
                        size: None,
                        tag: None,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn lock(
        &self,
        scope: LockScope,
        kind: LockKind,
        holder: &LockHolder,
    ) -> io::Result<Option<Box<dyn LockGuard>>> {
        let (f, short) = match scope {
            LockScope::Repository => (self.lock_file(&self.dir, "lock")?, "repo".to_string()),
            LockScope::Chain(id) => {
                let d = self.sub(&["locks"], true)?;
                (self.lock_file(&d, &id.hex())?, id.hex())
            }
        };
        let r = match kind {
            LockKind::Exclusive => f.try_lock(),
            LockKind::Shared => f.try_lock_shared(),
        };
        match r {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // Who holds it, for others' messages (best effort: a read-only repository still locks).
        let rec = (|| -> Option<(DirHandle, String)> {
            let d = self.sub(&["locks"], true).ok()?;
            let name = format!("{}.{}.{short}.json", holder.host, holder.pid);
            let _ = d.unlink(&name);
            let mut w = d.create_excl(&name, self.file_mode()).ok()?;
            w.write_all(&serde_json::to_vec(holder).ok()?).ok()?;
            Some((d, name))
        })();
        Ok(Some(Box::new(FlockGuard {
            _file: f,
            holder: rec,
        })))
    }

    fn lock_holders(&self) -> Vec<LockHolder> {
        let Ok(d) = self.sub(&["locks"], false) else {
            return Vec::new();
        };
        let Ok(names) = d.list() else {
            return Vec::new();
        };
        let me = std::process::id();
        let host = crate::repo::this_host();
        names
            .into_iter()
            .filter(|(n, ft)| {
                n.to_string_lossy().ends_with(".json") && *ft == rustix::fs::FileType::RegularFile
            })
            .filter_map(|(n, _)| d.read_bounded(&n, 4096).ok())
            .filter_map(|b| serde_json::from_slice::<LockHolder>(&b).ok())
            .filter(|h| h.pid != me || h.host != host)
            .collect()
    }

    fn sweep_stale(&self) -> Vec<LockHolder> {
        let Ok(d) = self.sub(&["locks"], false) else {
            return Vec::new();
        };
        let host = crate::repo::this_host();
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

    fn clean_tmp(&self, min_age: Duration) -> io::Result<()> {
        let d = self.sub(&["tmp"], true)?;
        let now = std::time::SystemTime::now();
        for (name, ft) in d.list()? {
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
                    let m = std::time::UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
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
