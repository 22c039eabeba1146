//! Restore a recovery point into a target directory.
//!
//! Order: directories, then regular files (in parallel, each written to a temporary name and
//! renamed when all its chunks verified), then symlinks, then directory metadata deepest
//! first. Symlinks come last so no restored file is ever written through a restored link.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use filetime::FileTime;
use indicatif::ProgressBar;

use super::*;

pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only these paths (and what is below them).
    pub include: Vec<String>,
    /// Allow a non-empty target (existing files are replaced).
    pub overwrite: bool,
    pub workers: usize,
    pub progress: ProgressBar,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// A tree path → a relative filesystem path, refusing anything that could escape the target.
pub fn safe_rel_path(raw: &[u8]) -> Result<PathBuf> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(Error::integrity(
                    "file index",
                    format!(
                        "unsafe path {:?} in the recovery point",
                        String::from_utf8_lossy(raw)
                    ),
                ))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Error::integrity(
            "file index",
            "empty path in the recovery point",
        ));
    }
    Ok(out)
}

fn matches_include(path: &str, include: &[String]) -> bool {
    include.is_empty()
        || include.iter().any(|i| {
            let i = i.trim_matches('/');
            i.is_empty()
                || path == i
                || path.starts_with(&format!("{i}/"))
                || i.starts_with(&format!("{path}/"))
        })
}

fn target_is_empty(t: &Path) -> Result<bool> {
    match fs::read_dir(t) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(format!("read restore target {}", t.display()), e)),
    }
}

/// Refuses a non-empty target unless asked; call before anything is written.
pub fn check_target(opts: &RestoreOptions) -> Result<()> {
    if opts.target.exists() && !opts.target.is_dir() {
        return Err(Error::Usage(format!(
            "restore target {} exists and is not a directory",
            opts.target.display()
        )));
    }
    if !opts.overwrite && !target_is_empty(&opts.target)? {
        return Err(Error::Usage(format!(
            "restore target {} is not empty; choose an empty directory or pass --overwrite to replace files in it",
            opts.target.display()
        )));
    }
    Ok(())
}

fn set_times(p: &Path, e: &TreeEntry, symlink: bool) -> std::io::Result<()> {
    let secs = e.mtime_ns.div_euclid(1_000_000_000) as i64;
    let nanos = e.mtime_ns.rem_euclid(1_000_000_000) as u32;
    let t = FileTime::from_unix_time(secs, nanos);
    if symlink {
        filetime::set_symlink_file_times(p, t, t)
    } else {
        filetime::set_file_times(p, t, t)
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

pub fn run(
    repo: &Repository,
    oc: &OpenChain,
    point: &OpenPoint,
    opts: &RestoreOptions,
) -> Result<RestoreStats> {
    let tree = point.tree(repo, oc)?;
    let selected: Vec<&TreeEntry> = tree
        .iter()
        .filter(|e| matches_include(&e.display_path(), &opts.include))
        .collect();
    if !opts.include.is_empty() && selected.is_empty() {
        return Err(Error::NotFound(format!(
            "nothing in recovery point {} matches --include {:?}; `arca ls` shows its paths",
            point.record.point_id, opts.include
        )));
    }
    // Validate every path before writing anything.
    let mut planned = Vec::with_capacity(selected.len());
    for e in &selected {
        planned.push((safe_rel_path(&e.path_bytes())?, *e));
    }
    check_target(opts)?;
    fs::create_dir_all(&opts.target)
        .map_err(|e| Error::io(format!("create {}", opts.target.display()), e))?;
    let chown = is_root();
    let mut stats = RestoreStats::default();

    for (rel, e) in planned.iter().filter(|(_, e)| e.kind == EntryType::Dir) {
        let p = opts.target.join(rel);
        fs::create_dir_all(&p).map_err(|err| Error::io(format!("create {}", p.display()), err))?;
        let _ = e;
        stats.dirs += 1;
    }

    let files: Vec<&(PathBuf, &TreeEntry)> = planned
        .iter()
        .filter(|(_, e)| e.kind == EntryType::File)
        .collect();
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..opts.workers.max(1) {
            s.spawn(|| {
                let mut reader = ChunkReader::new(repo, &point.index, &oc.idk);
                loop {
                    if first_err.lock().unwrap().is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((rel, e)) = files.get(i).map(|x| (&x.0, x.1)) else {
                        return;
                    };
                    let dest = opts.target.join(rel);
                    match restore_file(&mut reader, &dest, e, chown, opts.overwrite, &opts.progress)
                    {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(err) => {
                            let err = match err {
                                Error::Integrity { object, detail } => Error::Integrity {
                                    object: format!("{object} (file {})", e.display_path()),
                                    detail,
                                },
                                other => other,
                            };
                            first_err.lock().unwrap().get_or_insert(err);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap() {
        return Err(e);
    }
    stats.files = files.len() as u64;
    stats.bytes = bytes.into_inner();

    for (rel, e) in planned.iter().filter(|(_, e)| e.kind == EntryType::Symlink) {
        let p = opts.target.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .map_err(|err| Error::io(format!("create {}", parent.display()), err))?;
        }
        if opts.overwrite && fs::symlink_metadata(&p).is_ok() {
            let _ = fs::remove_file(&p);
        }
        let target = OsStr::from_bytes(e.target.as_deref().unwrap_or_default());
        std::os::unix::fs::symlink(target, &p)
            .map_err(|err| Error::io(format!("create symlink {}", p.display()), err))?;
        if chown {
            let _ = std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid));
        }
        let _ = set_times(&p, e, true);
        stats.symlinks += 1;
    }

    // Directory metadata last, deepest first, so writing children does not change it.
    let mut dirs: Vec<&(PathBuf, &TreeEntry)> = planned
        .iter()
        .filter(|(_, e)| e.kind == EntryType::Dir)
        .collect();
    dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
    for (rel, e) in dirs {
        let p = opts.target.join(rel);
        if chown {
            let _ = std::os::unix::fs::chown(&p, Some(e.uid), Some(e.gid));
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
            .map_err(|err| Error::io(format!("set mode of {}", p.display()), err))?;
        set_times(&p, e, false)
            .map_err(|err| Error::io(format!("set times of {}", p.display()), err))?;
    }
    Ok(stats)
}

fn restore_file(
    reader: &mut ChunkReader<'_>,
    dest: &Path,
    e: &TreeEntry,
    chown: bool,
    overwrite: bool,
    progress: &ProgressBar,
) -> Result<u64> {
    let create = |p: &Path| {
        let mut o = OpenOptions::new();
        o.write(true);
        if overwrite {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        o.open(p)
    };
    // Parent directories were created before the files; only an --include of a single file
    // below unlisted directories needs this fallback.
    let mut f = match create(dest) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)
                    .map_err(|err| Error::io(format!("create {}", parent.display()), err))?;
            }
            create(dest)
        }
        r => r,
    }
    .map_err(|err| Error::io(format!("create {}", dest.display()), err))?;
    let res = (|| -> Result<u64> {
        let mut n = 0u64;
        for id in &e.chunks {
            let data = reader.read(id)?;
            f.write_all(&data)
                .map_err(|err| Error::io(format!("write {}", dest.display()), err))?;
            n += data.len() as u64;
            progress.inc(data.len() as u64);
        }
        if n != e.size {
            return Err(Error::integrity(
                format!("file {}", e.display_path()),
                "restored size differs from the index",
            ));
        }
        if chown && (e.uid != 0 || e.gid != 0) {
            let _ = std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid));
        }
        f.set_permissions(fs::Permissions::from_mode(e.mode))
            .map_err(|err| Error::io(format!("set mode of {}", dest.display()), err))?;
        let t = mtime(e);
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .map_err(|err| Error::io(format!("set times of {}", dest.display()), err))?;
        Ok(n)
    })();
    if res.is_err() {
        // Never leave a damaged file looking complete.
        drop(f);
        let _ = fs::remove_file(dest);
    }
    res
}

fn mtime(e: &TreeEntry) -> std::time::SystemTime {
    let d = std::time::Duration::new(
        e.mtime_ns.unsigned_abs().div_euclid(1_000_000_000) as u64,
        (e.mtime_ns.unsigned_abs() % 1_000_000_000) as u32,
    );
    if e.mtime_ns >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_refused() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "."] {
            assert!(safe_rel_path(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(safe_rel_path(b"a/b").unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn include_matching() {
        let inc = vec!["docs".to_string()];
        assert!(matches_include("docs", &inc));
        assert!(matches_include("docs/a.txt", &inc));
        assert!(!matches_include("docsx/a.txt", &inc));
        assert!(!matches_include("src/a.rs", &inc));
        assert!(matches_include("anything", &[]));
    }
}
