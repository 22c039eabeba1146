//! Restore a recovery point into a target directory.
//!
//! Order: directories, then regular files (in parallel, every chunk verified; into an empty
//! target below a staging directory whose top-level entries move into place after one flush,
//! otherwise each under a temporary name renamed over its own after that flush), then
//! symlinks, hard links and special files, then directory metadata deepest first. Every path is resolved below a handle on the target without following symlinks,
//! so neither restored links nor links already in the target are ever written through.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use indicatif::ProgressBar;

use super::*;
use crate::repo::fsx::{self, DirHandle};

pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore only these paths (and what is below them).
    pub include: Vec<String>,
    /// Allow a non-empty target (existing files are replaced).
    pub overwrite: bool,
    pub workers: usize,
    pub progress: ProgressBar,
    /// Restore every file that reads back intact and list the others (damaged data) instead
    /// of stopping at the first.
    pub partial: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub total_bytes: u64,
    /// With `partial`: files not restored because their data is damaged or missing.
    pub failed: Vec<SourceError>,
    pub hardlinks: u64,
    /// FIFOs and device nodes recreated.
    pub special: u64,
    /// What was deliberately not restored, and why (device nodes without root, attributes
    /// only root may set).
    pub skipped: Vec<SourceError>,
    /// Chunks read, opened, decompressed and checked, and the bytes they decoded to (a
    /// bundle once for all its small files).
    pub chunks_decoded: u64,
    pub decoded_bytes: u64,
}

/// The owner to give an entry: its recorded names mapped to this machine's ids when they
/// exist here, else the recorded ids.
fn owner_of(names: &Owners<'_>, e: &TreeEntry) -> (u32, u32) {
    (
        names.local.uid(names.body.user(e.uid), e.uid),
        names.local.gid(names.body.group(e.gid), e.gid),
    )
}

/// The names the point recorded, and this machine's.
struct Owners<'a> {
    body: &'a PointBody,
    local: super::owners::Names,
}

/// Sets an entry's extended attributes with `set` (on its open handle, or its located entry).
/// `user.*` and the POSIX ACLs are set for anyone; `security.*` and `trusted.*` only by root.
/// What cannot be set is noted.
fn set_xattrs(
    set: impl Fn(&str, &[u8]) -> std::io::Result<()>,
    e: &TreeEntry,
    root: bool,
    notes: &Mutex<Vec<SourceError>>,
) {
    for x in &e.xattrs {
        let privileged = x.name.starts_with("security.") || x.name.starts_with("trusted.");
        let why = if privileged && !root {
            Some("needs root".to_string())
        } else {
            set(&x.name, &x.value).err().map(|err| err.to_string())
        };
        if let Some(why) = why {
            notes.lock().unwrap().push(SourceError {
                path: e.display_path(),
                error: format!("extended attribute {} not restored ({why})", x.name),
            });
        }
    }
}

/// A tree path → a relative filesystem path, refusing anything that could escape the target.
pub fn safe_rel_path(raw: &[u8]) -> Result<PathBuf> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::with_capacity(raw.len());
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

/// Whether `e` is selected by `include` (everything when it is empty).
fn included(e: &TreeEntry, include: &[String]) -> bool {
    include.is_empty() || matches_include(&String::from_utf8_lossy(e.path_raw()), include)
}

/// `path` is an include, lies below one, or is a directory above one.
fn matches_include(path: &str, include: &[String]) -> bool {
    // `a` is `b` followed by a '/' and more.
    fn below(a: &str, b: &str) -> bool {
        a.len() > b.len() && a.starts_with(b) && a.as_bytes()[b.len()] == b'/'
    }
    include.is_empty()
        || include.iter().any(|i| {
            let i = i.trim_matches('/');
            i.is_empty() || path == i || below(path, i) || below(i, path)
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
        let leftovers: Vec<String> = fs::read_dir(&opts.target)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".arca-restore-"))
                    .collect()
            })
            .unwrap_or_default();
        if !leftovers.is_empty() {
            return Err(Error::Usage(format!(
                "restore target {} holds {} left by an interrupted restore (a killed process cannot clean up; \
                 nothing under a final name there is incomplete); remove {} and run the restore again, or choose an empty directory",
                opts.target.display(),
                leftovers.join(", "),
                if leftovers.len() == 1 { "it" } else { "them" }
            )));
        }
        return Err(Error::Usage(format!(
            "restore target {} is not empty; choose an empty directory or pass --overwrite to replace files in it",
            opts.target.display()
        )));
    }
    Ok(())
}

/// Opens (creating with 0700) the directory `rel` below `root`, one component at a time and
/// never through a symlink. With `overwrite`, a symlink or file in the way is replaced by a
/// directory (the entry itself is removed, never what it points to); without, it is an error.
fn ensure_dir(root: &DirHandle, rel: &Path, overwrite: bool) -> Result<DirHandle> {
    let mut cur = root
        .try_clone()
        .map_err(|e| Error::io(format!("open {}", root.path().display()), e))?;
    for c in rel.components() {
        let Component::Normal(n) = c else {
            return Err(Error::integrity("file index", "unsafe path component"));
        };
        let shown = || cur.path().join(n).display().to_string();
        cur = match cur.open_dir(n) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => cur
                .create_dir(n, 0o700)
                .map_err(|e| Error::io(format!("create {}", shown()), e))?,
            Err(e) if fsx::is_symlink_refusal(&e) => {
                if !overwrite {
                    return Err(Error::Usage(format!(
                        "{} is a symlink or a file where the recovery point has a directory; arca never restores through a symlink (pass --overwrite to replace it)",
                        shown()
                    )));
                }
                cur.unlink(n)
                    .map_err(|e| Error::io(format!("remove {}", shown()), e))?;
                cur.create_dir(n, 0o700)
                    .map_err(|e| Error::io(format!("create {}", shown()), e))?
            }
            Err(e) => return Err(Error::io(format!("open {}", shown()), e)),
        };
    }
    Ok(cur)
}

/// A new temporary name: a random prefix per process and a counter (no syscall per file;
/// `O_EXCL` refuses any name that exists anyway).
/// Open handles of the target's directories, so each is opened once (bounded: at most
/// `DIR_CACHE` handles stay open; past that the cache starts over).
struct DirCache<'a> {
    root: &'a DirHandle,
    overwrite: bool,
    map: Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<DirHandle>>>,
}

const DIR_CACHE: usize = 4096;

impl<'a> DirCache<'a> {
    fn new(root: &'a DirHandle, overwrite: bool) -> Self {
        DirCache {
            root,
            overwrite,
            map: Mutex::new(Default::default()),
        }
    }

    /// The directory `rel`, created (0700) if missing, from its nearest open ancestor.
    fn get(&self, rel: &Path) -> Result<std::sync::Arc<DirHandle>> {
        if rel.as_os_str().is_empty() {
            return Ok(std::sync::Arc::new(self.root.try_clone().map_err(|e| {
                Error::io(format!("open {}", self.root.path().display()), e)
            })?));
        }
        if let Some(d) = self.map.lock().unwrap().get(rel) {
            return Ok(d.clone());
        }
        let parent = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => self.get(p)?,
            _ => std::sync::Arc::new(
                self.root
                    .try_clone()
                    .map_err(|e| Error::io(format!("open {}", self.root.path().display()), e))?,
            ),
        };
        let name = rel
            .file_name()
            .ok_or_else(|| Error::integrity("file index", "unsafe path"))?;
        let d = std::sync::Arc::new(ensure_dir(&parent, Path::new(name), self.overwrite)?);
        let mut m = self.map.lock().unwrap();
        if m.len() >= DIR_CACHE {
            m.clear();
        }
        m.insert(rel.to_path_buf(), d.clone());
        Ok(d)
    }
}

/// The staging directory of a restore into an empty target: `.arca-restore-<random>.stage`
/// in the target, mode 0700, created by this restore (never one that was there).
struct Stage {
    name: String,
    dir: DirHandle,
}

impl Stage {
    fn create(root: &DirHandle) -> Result<Stage> {
        let name = format!(".arca-restore-{}.stage", tmp_prefix());
        let dir = root
            .create_dir_excl(&name, 0o700)
            .map_err(|e| Error::io(format!("create {}", root.path().join(&name).display()), e))?;
        Ok(Stage { name, dir })
    }

    /// Moves every top-level entry into `root` (never over an entry there), then removes the
    /// empty stage.
    fn move_into(&self, root: &DirHandle, target: &Path) -> Result<()> {
        let shown = || root.path().join(&self.name).display().to_string();
        let names = self
            .dir
            .list()
            .map_err(|e| Error::io(format!("read {}", shown()), e))?;
        for (name, _) in names {
            self.dir.rename_noreplace(&name, root, &name).map_err(|e| {
                Error::io(
                    format!(
                        "move {} into place (the restored tree is complete in {}; what moved already is in place)",
                        target.join(&name).display(),
                        shown()
                    ),
                    e,
                )
            })?;
        }
        root.rmdir(&self.name)
            .map_err(|e| Error::io(format!("remove {}", shown()), e))
    }

    /// After a failure: removes the stage and all that was written in it.
    fn remove(&self, root: &DirHandle) {
        if let Err(e) = self
            .dir
            .remove_contents()
            .and_then(|()| root.rmdir(&self.name))
        {
            tracing::warn!(
                "could not remove {}: {e}",
                root.path().join(&self.name).display()
            );
        }
    }
}

fn nothing_matches(point: &OpenPoint, opts: &RestoreOptions) -> Error {
    Error::NotFound(format!(
        "nothing in recovery point {} matches --include {:?}; `arca ls` shows its paths",
        point.record.point_id, opts.include
    ))
}

/// A restore stopped by a signal before any file was renamed into place.
fn interrupted(signal: i32, target: &Path) -> Error {
    Error::Interrupted {
        signal,
        detail: format!(
            "restore interrupted: no file was put in place in {} (files written so far were removed; \
             existing files are untouched); run the same restore again",
            target.display()
        ),
    }
}

/// At most this many files, or this many bytes, go to a restore worker at once.
const RESTORE_BATCH_FILES: usize = 64;
const RESTORE_BATCH_BYTES: u64 = 8 << 20;

/// Files gathered for one restore worker.
#[derive(Default)]
struct RestoreBatch {
    files: Vec<(u64, PathBuf, TreeEntry)>,
    bytes: u64,
    /// The bundle of the last file added, if it is bundled.
    bundle: Option<Id32>,
}

impl RestoreBatch {
    fn full(&self) -> bool {
        self.files.len() >= RESTORE_BATCH_FILES || self.bytes >= RESTORE_BATCH_BYTES
    }

    fn take(&mut self) -> Vec<(u64, PathBuf, TreeEntry)> {
        self.bytes = 0;
        self.bundle = None;
        std::mem::take(&mut self.files)
    }
}

/// Small files the planner holds back, grouped by their bundle, so that a bundle whose
/// files are scattered over the tree is decoded once rather than once per run of its files
/// in walk order. An incremental stores the changed small files of the whole tree in a few
/// new bundles: in walk order each of them alternates with the old bundles of unchanged
/// neighbours, and without grouping both would be decoded again at every change.
const HELD_FILES: usize = 4096;

type Planned = (u64, PathBuf, TreeEntry);

#[derive(Default)]
struct BundleGroups {
    /// Bundle → (last use, files in walk order).
    groups: std::collections::HashMap<Id32, (u64, Vec<Planned>)>,
    /// Last use → bundle: the least recently used group is the first.
    lru: std::collections::BTreeMap<u64, Id32>,
    held: usize,
    clock: u64,
}

impl BundleGroups {
    fn add(&mut self, bundle: Id32, file: Planned) {
        self.clock += 1;
        let g = self.groups.entry(bundle).or_default();
        if g.0 != 0 {
            self.lru.remove(&g.0);
        }
        g.0 = self.clock;
        g.1.push(file);
        self.lru.insert(self.clock, bundle);
        self.held += 1;
    }

    /// The files of the bundle used least recently (a run of files that has ended).
    fn pop_lru(&mut self) -> Option<(Id32, Vec<Planned>)> {
        let (_, bundle) = self.lru.pop_first()?;
        let (_, files) = self.groups.remove(&bundle).expect("listed groups exist");
        self.held -= files.len();
        Some((bundle, files))
    }
}

fn tmp_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| Id16::random().hex()[..16].to_string())
}

fn tmp_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        ".arca-restore-{}-{}.tmp",
        tmp_prefix(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The temporary name of the `seq`th regular file of a restore (derived, not stored).
fn tmp_name_for(seq: u64) -> String {
    format!(".arca-restore-{}-f{seq}.tmp", tmp_prefix())
}

/// The mode to apply: setuid/setgid only when running as root and the owner was set.
fn final_mode(e: &TreeEntry, owner_set: bool) -> u32 {
    let m = e.mode & 0o7777;
    if owner_set {
        m
    } else {
        m & !0o6000
    }
}

/// Refuses to replace an entry that exists unless `overwrite`; never replaces a directory.
fn check_dest(parent: &DirHandle, name: &OsStr, overwrite: bool) -> Result<()> {
    let shown = || parent.path().join(name).display().to_string();
    match parent
        .entry_type(name)
        .map_err(|e| Error::io(format!("stat {}", shown()), e))?
    {
        None => Ok(()),
        Some(rustix::fs::FileType::Directory) => Err(Error::Usage(format!(
            "{} is a directory where the recovery point has a file or symlink; move it away first",
            shown()
        ))),
        Some(_) if overwrite => Ok(()),
        Some(_) => Err(Error::Usage(format!(
            "{} exists; pass --overwrite to replace it",
            shown()
        ))),
    }
}

pub fn run(
    repo: &Repository,
    oc: &OpenChain,
    point: &OpenPoint,
    opts: &RestoreOptions,
) -> Result<RestoreStats> {
    run_checked(repo, oc, point, opts, Vec::new())
}

/// [`run`] with a given passphrase still being checked (see
/// [`crate::ops::open_chain_deferred`]): the check overlaps the restore's start and is
/// waited for before anything reaches the target. A wrong passphrase is the restore's error
/// whatever else happened, as if it had been checked first, and leaves the target as it was.
pub fn run_checked(
    repo: &Repository,
    oc: &OpenChain,
    point: &OpenPoint,
    opts: &RestoreOptions,
    checks: Vec<crate::resolve::PassphraseCheck>,
) -> Result<RestoreStats> {
    let gate = Gate(Mutex::new(checks));
    let res = run_gated(repo, oc, point, opts, &gate);
    gate.wait()?;
    res
}

/// The passphrase checks a restore waits for before anything reaches its target.
struct Gate(Mutex<Vec<crate::resolve::PassphraseCheck>>);

impl Gate {
    fn wait(&self) -> Result<()> {
        let checks = std::mem::take(&mut *self.0.lock().unwrap());
        let mut res = Ok(());
        for c in checks {
            let r = c.wait();
            if res.is_ok() {
                res = r;
            }
        }
        res
    }

    /// Waits only if every check has finished.
    fn poll(&self) -> Result<()> {
        if self.0.lock().unwrap().iter().all(|c| c.is_finished()) {
            self.wait()
        } else {
            Ok(())
        }
    }
}

fn run_gated(
    repo: &Repository,
    oc: &OpenChain,
    point: &OpenPoint,
    opts: &RestoreOptions,
    gate: &Gate,
) -> Result<RestoreStats> {
    // The file index is read entry by entry, so memory does not grow with the number of
    // files. Into an empty target it is read once: the files go below a stage that reaches
    // the target only when everything was written, so an entry refused halfway (an unsafe
    // path) leaves nothing behind. Into a non-empty target it is read twice: first every
    // path is validated (and directories, links and special files kept: few) before
    // anything there is touched, then the files go to the workers.
    let t0 = std::time::Instant::now();
    let is_file = |e: &TreeEntry| e.kind == EntryType::File && e.hardlink.is_none();
    let mut dirs_planned: Vec<(PathBuf, TreeEntry)> = Vec::new();
    let mut others: Vec<(PathBuf, TreeEntry)> = Vec::new();
    let mut link_targets: std::collections::HashSet<Vec<u8>> = Default::default();
    let mut file_count = 0usize;
    let mut selected = 0usize;
    check_target(opts)?;
    let staged = target_is_empty(&opts.target)?;
    if !staged {
        for e in point.tree_stream(repo, oc) {
            let e = e?;
            if !included(&e, &opts.include) {
                continue;
            }
            selected += 1;
            let rel = safe_rel_path(e.path_raw())?;
            if is_file(&e) {
                file_count += 1;
            } else if e.kind == EntryType::Dir {
                dirs_planned.push((rel, e));
            } else {
                if let Some(first) = &e.hardlink {
                    link_targets.insert(first.clone());
                }
                others.push((rel, e));
            }
        }
        if !opts.include.is_empty() && selected == 0 {
            return Err(nothing_matches(point, opts));
        }
        // Nothing in a non-empty target is touched before the passphrase is known good.
        gate.wait()?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.target)
        .map_err(|e| Error::io(format!("create {}", opts.target.display()), e))?;
    let root = DirHandle::open_root(&opts.target)
        .map_err(|e| Error::io(format!("open {}", opts.target.display()), e))?;
    // An empty target: the files are written at their own names below a staging directory
    // in it, and after one flush its top-level entries move into the target (a few renames
    // instead of one per file). Otherwise each file gets a temporary name in its directory.
    let stage = if staged {
        Some(Stage::create(&root)?)
    } else {
        None
    };
    // The progress bar's count of files (the point's own count when read once).
    let files_total = if !staged {
        Some(file_count as u64)
    } else if opts.include.is_empty() {
        Some(point.body.stats.files)
    } else {
        None
    };
    let chown = fsx::is_root();
    let names = Owners {
        body: &point.body,
        local: super::owners::Names::load(),
    };
    let notes: Mutex<Vec<SourceError>> = Mutex::new(Vec::new());
    let mut stats = RestoreStats::default();

    let write_root = stage.as_ref().map_or(&root, |st| &st.dir);
    // Below the stage (0700, this restore's own) nobody else sees a file while it is
    // written: a file is created with its own mode when the umask leaves that mode whole
    // and no default ACL changes it, and needs no chmod then.
    let umask = stage
        .as_ref()
        .filter(|st| !fsx::default_acl_may_apply(&st.dir))
        .and_then(|_| fsx::process_umask());
    let dirs_cache = DirCache::new(write_root, opts.overwrite);
    for (rel, _) in &dirs_planned {
        dirs_cache.get(rel)?;
    }

    let t_plan = t0.elapsed();
    // Second pass: regular files go to the workers as they are read from the index.
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let files_done = AtomicUsize::new(0);
    // Chunks decoded by the workers, and their bytes (a debug log line at the end).
    let decoded = (
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    );
    let failed: Mutex<Vec<SourceError>> = Mutex::new(Vec::new());
    // Files written under temporary names (by sequence number), renamed once all are
    // written and durable; the path of each, as restored below the target.
    let written: Mutex<Vec<(u64, Box<[u8]>)>> = Mutex::new(Vec::new());
    let restored_targets: Mutex<std::collections::HashSet<Vec<u8>>> = Default::default();
    let owner = fsx::euid_egid();
    let workers = opts.workers.max(1);
    let set_err = |e: Error| {
        first_err.lock().unwrap().get_or_insert(e);
    };
    thread::scope(|s| {
        // Files go in batches (a channel operation per file costs more than a small file).
        let (tx, rx) = crossbeam_channel::bounded::<Vec<(u64, PathBuf, TreeEntry)>>(workers * 2);
        for _ in 0..workers {
            let rx = rx.clone();
            let (first_err, set_err, written, failed) = (&first_err, &set_err, &written, &failed);
            let (restored_targets, link_targets) = (&restored_targets, &link_targets);
            let (bytes, files_done, notes, names, dirs_cache, decoded) =
                (&bytes, &files_done, &notes, &names, &dirs_cache, &decoded);
            s.spawn(move || {
                let mut reader = ChunkReader::new(repo, &point.index, &oc.idk);
                let mut mine = Vec::new();
                for (seq, rel, e) in rx.iter().flatten() {
                    if first_err.lock().unwrap().is_some() {
                        break;
                    }
                    if let Some(signal) = crate::signals::requested() {
                        set_err(interrupted(signal, &opts.target));
                        break;
                    }
                    let res = (|| -> Result<u64> {
                        let parent = dirs_cache.get(rel.parent().unwrap_or(Path::new("")))?;
                        let name = rel.file_name().expect("a normal last component");
                        let tmp: std::borrow::Cow<'_, OsStr> = if staged {
                            name.into()
                        } else {
                            std::ffi::OsString::from(tmp_name_for(seq)).into()
                        };
                        write_file(
                            &mut reader,
                            &parent,
                            name,
                            &tmp,
                            &e,
                            Meta {
                                chown,
                                owner,
                                names,
                                notes,
                                umask,
                            },
                            opts.overwrite && !staged,
                            &opts.progress,
                        )
                    })();
                    match res {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                            let done = files_done.fetch_add(1, Ordering::Relaxed) + 1;
                            if !opts.progress.is_hidden() {
                                let of = files_total.map(|n| format!("/{n}")).unwrap_or_default();
                                opts.progress
                                    .set_message(format!("{done}{of} files {}", e.display_path()));
                            }
                            if !link_targets.is_empty() {
                                let p = e.path_raw();
                                if link_targets.contains(p) {
                                    restored_targets.lock().unwrap().insert(p.to_vec());
                                }
                            }
                            mine.push((seq, rel.into_os_string().into_vec().into_boxed_slice()));
                        }
                        Err(Error::Integrity { object, detail }) if opts.partial => {
                            // Its temporary file is gone; the others go on.
                            failed.lock().unwrap().push(SourceError {
                                path: e.display_path(),
                                error: format!("{object}: {detail}"),
                            });
                        }
                        Err(err) => {
                            let err = match err {
                                Error::Integrity { object, detail } => Error::Integrity {
                                    object: format!("{object} (file {})", e.display_path()),
                                    detail,
                                },
                                Error::Interrupted { signal, .. } => {
                                    interrupted(signal, &opts.target)
                                }
                                other => other,
                            };
                            set_err(err);
                            break;
                        }
                    }
                }
                written.lock().unwrap().extend(mine);
                decoded.0.fetch_add(reader.decoded.0, Ordering::Relaxed);
                decoded.1.fetch_add(reader.decoded.1, Ordering::Relaxed);
            });
        }
        drop(rx);
        let mut seq = 0u64;
        // Two batches fill at once: files stored whole, and the small files of bundles
        // (cut only between bundles, so that one worker decodes each bundle once, however
        // many large files lie between its small files in walk order). Small files reach
        // their batch through `held`, a bundle at a time.
        let mut batches: [RestoreBatch; 2] = Default::default();
        let mut held = BundleGroups::default();
        // Adds files (of one bundle, or one whole file) to a batch, first sending the batch
        // if it is full; false once the restore stops.
        let add_to_batch = |b: &mut RestoreBatch, bundle: Option<Id32>, files: Vec<Planned>| {
            if b.full() && (bundle.is_none() || bundle != b.bundle) {
                if tx.send(b.take()).is_err() {
                    return false; // every worker stopped (an error is recorded)
                }
                if let Err(err) = gate.poll() {
                    // A wrong passphrase is the error, whatever else failed meanwhile.
                    *first_err.lock().unwrap() = Some(err);
                    return false;
                }
            }
            b.bytes += files.iter().map(|f| f.2.size).sum::<u64>();
            b.bundle = bundle;
            b.files.extend(files);
            true
        };
        'plan: for e in point.tree_stream(repo, oc) {
            if first_err.lock().unwrap().is_some() {
                break;
            }
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    set_err(err);
                    break;
                }
            };
            if !included(&e, &opts.include) {
                continue;
            }
            if staged {
                selected += 1;
            } else if !is_file(&e) {
                continue; // kept by the first pass
            }
            let rel = match safe_rel_path(e.path_raw()) {
                Ok(r) => r,
                Err(err) => {
                    set_err(err);
                    break;
                }
            };
            if !is_file(&e) {
                // Read once (staged): directories are made now (0700, metadata at the
                // end), links and special files after the files.
                if e.kind == EntryType::Dir {
                    if let Err(err) = dirs_cache.get(&rel) {
                        set_err(err);
                        break;
                    }
                    dirs_planned.push((rel, e));
                } else {
                    others.push((rel, e));
                }
                continue;
            }
            let file = (seq, rel, e);
            seq += 1;
            match file.2.at.and(file.2.chunks.first().copied()) {
                Some(bundle) => {
                    held.add(bundle, file);
                    while held.held > HELD_FILES {
                        let (bundle, files) = held.pop_lru().expect("files are held");
                        if !add_to_batch(&mut batches[1], Some(bundle), files) {
                            break 'plan;
                        }
                    }
                }
                None => {
                    if !add_to_batch(&mut batches[0], None, vec![file]) {
                        break;
                    }
                }
            }
        }
        while let Some((bundle, files)) = held.pop_lru() {
            if first_err.lock().unwrap().is_some()
                || !add_to_batch(&mut batches[1], Some(bundle), files)
            {
                break;
            }
        }
        for b in &mut batches {
            if !b.files.is_empty() {
                let _ = tx.send(b.take());
            }
        }
        // Staged: the files go to the stage while the passphrase is checked; it must be
        // good before the stage moves into the target (after this scope).
        if let Err(err) = gate.wait() {
            *first_err.lock().unwrap() = Some(err);
        }
    });
    let mut written = written.into_inner().unwrap();
    written.sort_unstable_by_key(|w| w.0);
    let rel_of = |w: &(u64, Box<[u8]>)| PathBuf::from(OsStr::from_bytes(&w.1));
    let first_err = first_err.into_inner().unwrap().or_else(|| {
        (staged && !opts.include.is_empty() && selected == 0).then(|| nothing_matches(point, opts))
    });
    if let Some(e) = first_err {
        // Nothing was renamed yet: remove what was written; existing files are untouched.
        if let Some(st) = &stage {
            drop(dirs_cache);
            st.remove(&root);
            return Err(e);
        }
        for w in &written {
            let rel = rel_of(w);
            if let Ok(parent) = dirs_cache.get(rel.parent().unwrap_or(Path::new(""))) {
                let _ = parent.unlink(tmp_name_for(w.0));
            }
        }
        return Err(e);
    }
    // One flush makes every written file durable before any rename (instead of an fsync
    // per file), then each file replaces its final name atomically.
    // The bytes are written; what remains is not measured in bytes: say what it is.
    opts.progress.set_message(format!(
        "syncing, then putting {} file(s) in place",
        written.len()
    ));
    let t_write = t0.elapsed();
    if let Err(e) = fsx::syncfs(root.fd()) {
        if let Some(st) = &stage {
            st.remove(&root);
        }
        return Err(Error::io(format!("sync {}", opts.target.display()), e));
    }
    let t_sync = t0.elapsed();
    // Staged: the top-level entries move into the target, and the directories are reached
    // from the target from now on (the handles opened below the stage stay valid, but
    // their paths in messages would not).
    let dirs_cache = match &stage {
        Some(st) => {
            drop(dirs_cache);
            st.move_into(&root, &opts.target)?;
            written.clear();
            DirCache::new(&root, opts.overwrite)
        }
        None => dirs_cache,
    };
    let per = written.len().div_ceil(workers).max(1);
    let rename_err: Mutex<Option<Error>> = Mutex::new(None);
    thread::scope(|s| {
        for part in written.chunks(per) {
            let (cache, rename_err, rel_of) = (&dirs_cache, &rename_err, &rel_of);
            s.spawn(move || {
                for w in part {
                    let rel = rel_of(w);
                    let r = cache
                        .get(rel.parent().unwrap_or(Path::new("")))
                        .and_then(|parent| {
                            let name = rel.file_name().expect("a normal last component");
                            parent
                                .rename_to(tmp_name_for(w.0), &parent, name)
                                .map_err(|err| {
                                    Error::io(
                                        format!(
                                            "rename into place {}",
                                            parent.path().join(name).display()
                                        ),
                                        err,
                                    )
                                })
                        });
                    if let Err(e) = r {
                        rename_err.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = rename_err.into_inner().unwrap() {
        return Err(e);
    }
    tracing::debug!(
        "restore phases: plan {:.2?}, write {:.2?}, sync {:.2?}, rename {:.2?}; {} chunks \
         decoded ({} bytes)",
        t_plan,
        t_write - t_plan,
        t_sync - t_write,
        t0.elapsed() - t_sync,
        decoded.0.load(Ordering::Relaxed),
        decoded.1.load(Ordering::Relaxed),
    );
    stats.chunks_decoded = decoded.0.into_inner();
    stats.decoded_bytes = decoded.1.into_inner();
    stats.failed = failed.into_inner().unwrap();
    stats.failed.sort_by(|a, b| a.path.cmp(&b.path));
    stats.files = files_done.into_inner() as u64;
    stats.dirs = dirs_planned.len() as u64;
    stats.total_bytes = bytes.into_inner();
    drop(written);
    let planned = others;

    for (rel, e) in planned.iter().filter(|(_, e)| e.kind == EntryType::Symlink) {
        let parent = dirs_cache.get(rel.parent().unwrap_or(Path::new("")))?;
        let name = rel.file_name().expect("a normal last component");
        check_dest(&parent, name, opts.overwrite)?;
        let tmp = tmp_name();
        let shown = parent.path().join(name);
        parent
            .symlink(e.target.as_deref().unwrap_or_default(), &tmp)
            .map_err(|err| Error::io(format!("create symlink {}", shown.display()), err))?;
        if chown {
            let (uid, gid) = owner_of(&names, e);
            let _ = parent.chown_nofollow(&tmp, uid, gid);
        }
        let _ = parent.set_times_nofollow(&tmp, e.mtime_ns);
        if let Err(err) = parent.rename_to(&tmp, &parent, name) {
            let _ = parent.unlink(&tmp);
            return Err(Error::io(
                format!("create symlink {}", shown.display()),
                err,
            ));
        }
        stats.symlinks += 1;
    }

    // Hard links, to the files restored above (by their paths in the point).
    let restored = restored_targets.into_inner().unwrap();
    for (rel, e) in planned.iter().filter(|(_, e)| e.hardlink.is_some()) {
        let first = e.hardlink.as_deref().unwrap_or_default();
        // Read once, into an empty target: a regular file there is one this restore wrote.
        let restored_here = |r: &Path| {
            staged
                && r.file_name().is_some_and(|name| {
                    root.walk(r.parent().unwrap_or(Path::new("")), None)
                        .and_then(|d| d.entry_type(name))
                        .is_ok_and(|t| t == Some(rustix::fs::FileType::RegularFile))
                })
        };
        let first_rel = match safe_rel_path(first) {
            Ok(r) if restored.contains(first) || restored_here(&r) => r,
            _ => {
                stats.failed.push(SourceError {
                    path: e.display_path(),
                    error: format!(
                        "a hard link to {}, which was not restored",
                        String::from_utf8_lossy(first)
                    ),
                });
                continue;
            }
        };
        let parent = dirs_cache.get(rel.parent().unwrap_or(Path::new("")))?;
        let name = rel.file_name().expect("a normal last component");
        check_dest(&parent, name, opts.overwrite)?;
        let src_dir = dirs_cache.get(first_rel.parent().unwrap_or(Path::new("")))?;
        let tmp = tmp_name();
        let shown = parent.path().join(name);
        parent
            .link_from(
                &src_dir,
                first_rel.file_name().expect("a normal last component"),
                &tmp,
            )
            .map_err(|err| Error::io(format!("create hard link {}", shown.display()), err))?;
        if let Err(err) = parent.rename_to(&tmp, &parent, name) {
            let _ = parent.unlink(&tmp);
            return Err(Error::io(
                format!("create hard link {}", shown.display()),
                err,
            ));
        }
        stats.hardlinks += 1;
    }

    // FIFOs and device nodes (devices only as root).
    for (rel, e) in planned.iter().filter(|(_, e)| {
        matches!(
            e.kind,
            EntryType::Fifo | EntryType::Chardev | EntryType::Blockdev
        )
    }) {
        let kind = match e.kind {
            EntryType::Fifo => rustix::fs::FileType::Fifo,
            EntryType::Chardev => rustix::fs::FileType::CharacterDevice,
            _ => rustix::fs::FileType::BlockDevice,
        };
        if kind != rustix::fs::FileType::Fifo && !chown {
            notes.lock().unwrap().push(SourceError {
                path: e.display_path(),
                error: "device node not recreated (needs root)".into(),
            });
            continue;
        }
        let parent = dirs_cache.get(rel.parent().unwrap_or(Path::new("")))?;
        let name = rel.file_name().expect("a normal last component");
        check_dest(&parent, name, opts.overwrite)?;
        let tmp = tmp_name();
        let shown = parent.path().join(name);
        let res = (|| -> std::io::Result<()> {
            parent.mknod(&tmp, kind, 0o600, e.rdev)?;
            let owner_set = chown && {
                let (uid, gid) = owner_of(&names, e);
                parent.chown_nofollow(&tmp, uid, gid).is_ok()
            };
            parent.chmod_at(&tmp, final_mode(e, owner_set))?;
            if !e.xattrs.is_empty() {
                let at = parent.locate(&tmp)?;
                set_xattrs(|n, v| fsx::set_xattr_located(&at, n, v), e, chown, &notes);
            }
            parent.set_times_nofollow(&tmp, e.mtime_ns)?;
            parent.rename_to(&tmp, &parent, name)
        })();
        if let Err(err) = res {
            let _ = parent.unlink(&tmp);
            return Err(Error::io(format!("create {}", shown.display()), err));
        }
        stats.special += 1;
    }

    // Directory metadata last, deepest first, so writing children does not change it.
    let mut dirs: Vec<&(PathBuf, TreeEntry)> = dirs_planned.iter().collect();
    dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
    let set_dir = |d: &DirHandle, e: &TreeEntry, shown: &dyn Fn() -> String| -> Result<()> {
        let owner_set = chown && {
            let (uid, gid) = owner_of(&names, e);
            fsx::fchown(d.fd(), uid, gid).is_ok()
        };
        fsx::fchmod(d.fd(), final_mode(e, owner_set))
            .map_err(|err| Error::io(format!("set mode of {}", shown()), err))?;
        set_xattrs(|n, v| fsx::set_xattr(d.fd(), n, v), e, chown, &notes);
        fsx::futimens(d.fd(), e.mtime_ns)
            .map_err(|err| Error::io(format!("set times of {}", shown()), err))
    };
    for (rel, e) in dirs {
        let d = dirs_cache.get(rel)?;
        set_dir(&d, e, &|| opts.target.join(rel).display().to_string())?;
    }
    // The source root's own metadata goes to the target directory (a whole restore only).
    if let (Some(r), true) = (&point.body.root, opts.include.is_empty()) {
        set_dir(&root, r, &|| opts.target.display().to_string())?;
    }
    stats.skipped = notes.into_inner().unwrap();
    Ok(stats)
}

/// How a restored file gets its owner, and where notes go.
struct Meta<'a> {
    chown: bool,
    owner: (u32, u32),
    names: &'a Owners<'a>,
    notes: &'a Mutex<Vec<SourceError>>,
    /// The umask, when a file may be created with its final mode (see [`direct_mode`]).
    umask: Option<u32>,
}

/// The mode to create a file with when that is the mode it ends with (no chmod needed):
/// writing below the stage with `umask` known, a mode without setuid, setgid or sticky
/// bits that the umask leaves whole, and no extended attributes (an ACL changes the mode).
fn direct_mode(e: &TreeEntry, umask: Option<u32>) -> Option<u32> {
    let m = e.mode & 0o7777;
    let umask = umask?;
    (m & (0o7000 | umask) == 0 && e.xattrs.is_empty()).then_some(m)
}

/// Writes one file under a new `O_EXCL` name `tmp` in its directory (0600, or its own mode
/// when [`direct_mode`] allows), every chunk verified, then sets its owner, mode and times
/// on the handle, and returns the bytes written. `tmp` is a temporary name the caller renames over the final name once every
/// file is written and flushed, or (restoring into an empty target) the file's own name
/// below the stage that moves into the target then. A failed or killed restore never
/// truncates an existing file and leaves nothing incomplete under a final name.
#[allow(clippy::too_many_arguments)]
fn write_file(
    reader: &mut ChunkReader<'_>,
    parent: &DirHandle,
    name: &OsStr,
    tmp: &OsStr,
    e: &TreeEntry,
    meta: Meta<'_>,
    overwrite: bool,
    progress: &ProgressBar,
) -> Result<u64> {
    let Meta {
        chown,
        owner,
        names,
        notes,
        umask,
    } = meta;
    if overwrite {
        // The target was empty otherwise: nothing can be in the way but what we restore.
        check_dest(parent, name, overwrite)?;
    }
    let dest = parent.path().join(name);
    let direct = direct_mode(e, umask);
    let f = parent
        .create_excl(tmp, direct.unwrap_or(0o600))
        .map_err(|err| Error::io(format!("create {}", dest.display()), err))?;
    let res = (|| -> Result<u64> {
        let mut n = 0u64;
        // Where the last byte written ends (holes after it need the length set).
        let mut end = 0u64;
        for id in &e.chunks {
            if let Some(signal) = crate::signals::requested() {
                return Err(interrupted(signal, Path::new("the target")));
            }
            let mut data = reader.read_ref(id)?;
            if e.at.is_some() {
                data = e
                    .bundled_part(data)
                    .map_err(|err| Error::integrity(format!("file {}", e.display_path()), err))?;
            }
            end = write_sparse(&f, data, n)
                .map_err(|err| Error::io(format!("write {}", dest.display()), err))?
                .unwrap_or(end);
            n += data.len() as u64;
            progress.inc(data.len() as u64);
        }
        // Trailing holes: the length comes from the size, not from a write.
        if end < n {
            f.set_len(n)
                .map_err(|err| Error::io(format!("write {}", dest.display()), err))?;
        }
        if n != e.size {
            return Err(Error::integrity(
                format!("file {}", e.display_path()),
                "restored size differs from the index",
            ));
        }
        // New files already belong to this process: only root changes owners.
        let want = owner_of(names, e);
        let owner_set = chown && (want == owner || fsx::fchown(&f, want.0, want.1).is_ok());
        // A direct mode has no setuid or setgid bits for a chown to clear.
        if direct.is_none() {
            fsx::fchmod(&f, final_mode(e, owner_set))
                .map_err(|err| Error::io(format!("set mode of {}", dest.display()), err))?;
        }
        set_xattrs(|n, v| fsx::set_xattr(&f, n, v), e, chown, notes);
        fsx::futimens(&f, e.mtime_ns)
            .map_err(|err| Error::io(format!("set times of {}", dest.display()), err))?;
        Ok(n)
    })();
    drop(f);
    match res {
        Ok(n) => Ok(n),
        Err(err) => {
            let _ = parent.unlink(tmp);
            Err(err)
        }
    }
}

/// Holes are not written: blocks of zeros (4 KiB, aligned in the file) are skipped, so a
/// sparse file comes back sparse (GNU tar's `--sparse` detection, on restore).
fn write_sparse(f: &std::fs::File, data: &[u8], at: u64) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 4096;
    let mut i = 0usize;
    let mut written_end = None;
    while i < data.len() {
        let pos = at + i as u64;
        let end = (((pos / BLOCK) + 1) * BLOCK - at).min(data.len() as u64) as usize;
        let block = &data[i..end];
        let whole = block.len() as u64 == BLOCK;
        if !(whole && block.iter().all(|b| *b == 0)) {
            // Write runs of non-hole blocks at once.
            let mut j = end;
            while j < data.len() {
                let e = (j + BLOCK as usize).min(data.len());
                if e - j == BLOCK as usize && data[j..e].iter().all(|b| *b == 0) {
                    break;
                }
                j = e;
            }
            f.write_all_at(&data[i..j], pos)?;
            written_end = Some(at + j as u64);
            i = j;
        } else {
            i = end;
        }
    }
    Ok(written_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_small_files_leave_a_bundle_at_a_time_least_recently_used_first() {
        let (a, x, b) = (Id32([1; 32]), Id32([2; 32]), Id32([3; 32]));
        let file = |seq: u64| {
            let name = format!("f{seq}");
            (
                seq,
                PathBuf::from(&name),
                TreeEntry::new(name, None, EntryType::File),
            )
        };
        let mut g = BundleGroups::default();
        // Walk order: a a x a b x b b — x is scattered, a's run ends first.
        for (seq, bundle) in [a, a, x, a, b, x, b, b].into_iter().enumerate() {
            g.add(bundle, file(seq as u64));
        }
        assert_eq!(g.held, 8);
        let seqs = |v: Vec<Planned>| v.into_iter().map(|f| f.0).collect::<Vec<_>>();
        let (first, files) = g.pop_lru().unwrap();
        assert_eq!((first, seqs(files)), (a, vec![0, 1, 3]));
        let (second, files) = g.pop_lru().unwrap();
        assert_eq!((second, seqs(files)), (x, vec![2, 5]));
        let (third, files) = g.pop_lru().unwrap();
        assert_eq!((third, seqs(files)), (b, vec![4, 6, 7]));
        assert!(g.pop_lru().is_none());
        assert_eq!(g.held, 0);
    }

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
        assert!(matches_include("docs", &["docs/a.txt".to_string()]));
        assert!(!matches_include("doc", &["docs/a.txt".to_string()]));
        assert!(matches_include("docs/a/b", &["docs/a".to_string()]));
        assert!(matches_include("anything", &[]));
    }
}
