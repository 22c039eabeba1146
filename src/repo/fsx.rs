//! Filesystem access that never follows a symlink below a directory handle.
//!
//! Repositories and restore targets may contain symlinks planted by someone else. Every
//! path below a root is reached one component at a time with `openat(O_NOFOLLOW)`, files are
//! created with `O_EXCL`, and renames and deletions are relative to directory handles, so a
//! symlink where a directory or file is expected is refused (or, for a restore with
//! `--overwrite`, replaced) and never followed.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

/// An open directory, for `*at` calls. Its path is kept for messages only.
pub struct DirHandle {
    fd: OwnedFd,
    path: PathBuf,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

/// One path component: not empty, no '/', not "." or "..".
pub fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(invalid("not a single path component"));
    }
    Ok(())
}

/// The error for a symlink (or other non-directory) where a directory must be.
pub fn is_symlink_refusal(e: &io::Error) -> bool {
    let r = e.raw_os_error();
    r == Some(rustix::io::Errno::LOOP.raw_os_error())
        || r == Some(rustix::io::Errno::NOTDIR.raw_os_error())
}

impl DirHandle {
    /// Opens a root directory given by the user (symlinks in that path are the user's own
    /// choice and are followed; nothing below it is).
    pub fn open_root(path: &Path) -> io::Result<DirHandle> {
        let fd = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirHandle {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn try_clone(&self) -> io::Result<DirHandle> {
        Ok(DirHandle {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Opens a subdirectory; a symlink there is an error (ELOOP/ENOTDIR).
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> io::Result<DirHandle> {
        let name = name.as_ref();
        check_name(name)?;
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirHandle {
            fd,
            path: self.path.join(name),
        })
    }

    /// Creates a subdirectory with `mode` (if missing) and opens it.
    pub fn create_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<DirHandle> {
        let name = name.as_ref();
        check_name(name)?;
        match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => {}
            Err(e) => return Err(e.into()),
        }
        self.open_dir(name)
    }

    /// Creates a subdirectory with `mode` and opens it; an entry already there is an error.
    pub fn create_dir_excl(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<DirHandle> {
        let name = name.as_ref();
        check_name(name)?;
        rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode))?;
        self.open_dir(name)
    }

    /// Walks `rel` (relative, '/'-separated) one component at a time, creating missing
    /// directories with `mode` when `create`.
    pub fn walk(&self, rel: &Path, create: Option<u32>) -> io::Result<DirHandle> {
        let mut cur = self.try_clone()?;
        for c in rel.components() {
            let std::path::Component::Normal(n) = c else {
                return Err(invalid("path component is not a plain name"));
            };
            cur = match create {
                Some(m) => cur.create_dir(n, m)?,
                None => cur.open_dir(n)?,
            };
        }
        Ok(cur)
    }

    /// Opens `name` (never through a symlink) and refuses anything but a regular file.
    fn open_regular(&self, name: &OsStr, flags: OFlags, mode: u32) -> io::Result<File> {
        check_name(name)?;
        let fd = rfs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(mode),
        )?;
        let st = rfs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        Ok(File::from(fd))
    }

    /// Opens a regular file for reading; a symlink or anything else is refused.
    pub fn open_read(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        self.open_regular(name.as_ref(), OFlags::RDONLY, 0)
    }

    /// Reads a whole regular file, refusing one larger than `max` bytes before allocating.
    pub fn read_bounded(&self, name: impl AsRef<OsStr>, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let f = self.open_read(name)?;
        let len = f.metadata()?.len();
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes, more than the {max} this object may have"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.take(max + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file grew while read",
            ));
        }
        Ok(buf)
    }

    /// Creates a new file (`O_EXCL`, never through a symlink) with `mode`.
    pub fn create_excl(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let name = name.as_ref();
        check_name(name)?;
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// Opens (creating with `mode` if missing) a regular file for read and write, for locks.
    pub fn open_rw(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        self.open_regular(name.as_ref(), OFlags::RDWR | OFlags::CREATE, mode)
    }

    /// Renames `from` (in this directory) to `to` in `dest`, replacing what is there (a file
    /// or a symlink itself, never what a symlink points to).
    pub fn rename_to(
        &self,
        from: impl AsRef<OsStr>,
        dest: &DirHandle,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        check_name(from.as_ref())?;
        check_name(to.as_ref())?;
        rfs::renameat(&self.fd, from.as_ref(), &dest.fd, to.as_ref())?;
        Ok(())
    }

    /// Renames `from` (in this directory) to `to` in `dest`; an entry already at `to` is an
    /// error (`EEXIST`), never replaced. Where the filesystem cannot promise that
    /// (`renameat2` without `RENAME_NOREPLACE`), `to` is checked first.
    pub fn rename_noreplace(
        &self,
        from: impl AsRef<OsStr>,
        dest: &DirHandle,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        check_name(from)?;
        check_name(to)?;
        match rfs::renameat_with(&self.fd, from, &dest.fd, to, rfs::RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                if dest.entry_type(to)?.is_some() {
                    return Err(rustix::io::Errno::EXIST.into());
                }
                self.rename_to(from, dest, to)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes everything below this directory (entries themselves, never what a symlink
    /// points to), leaving it empty.
    pub fn remove_contents(&self) -> io::Result<()> {
        for (name, ft) in self.list()? {
            let ft = match ft {
                FileType::Unknown => self.entry_type(&name)?.unwrap_or(ft),
                ft => ft,
            };
            if ft == FileType::Directory {
                self.open_dir(&name)?.remove_contents()?;
                self.rmdir(&name)?;
            } else {
                self.unlink(&name)?;
            }
        }
        Ok(())
    }

    /// Removes a file or symlink entry (never what it points to).
    pub fn unlink(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        check_name(name.as_ref())?;
        rfs::unlinkat(&self.fd, name.as_ref(), AtFlags::empty())?;
        Ok(())
    }

    /// Removes an empty directory entry.
    pub fn rmdir(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        check_name(name.as_ref())?;
        rfs::unlinkat(&self.fd, name.as_ref(), AtFlags::REMOVEDIR)?;
        Ok(())
    }

    /// The type of an entry, without following a symlink; `None` if it does not exist.
    pub fn entry_type(&self, name: impl AsRef<OsStr>) -> io::Result<Option<FileType>> {
        check_name(name.as_ref())?;
        match rfs::statat(&self.fd, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Names in this directory (not "." or "..").
    pub fn list(&self) -> io::Result<Vec<(std::ffi::OsString, FileType)>> {
        let mut out = Vec::new();
        let dir = rfs::Dir::read_from(&self.fd)?;
        for e in dir {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            out.push((OsStr::from_bytes(n).to_os_string(), e.file_type()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn fsync(&self) -> io::Result<()> {
        rfs::fsync(&self.fd)?;
        Ok(())
    }

    pub fn symlink(&self, target: &[u8], name: impl AsRef<OsStr>) -> io::Result<()> {
        check_name(name.as_ref())?;
        rfs::symlinkat(OsStr::from_bytes(target), &self.fd, name.as_ref())?;
        Ok(())
    }

    /// Sets a symlink's (or any entry's) times without following it.
    pub fn set_times_nofollow(&self, name: impl AsRef<OsStr>, mtime_ns: i128) -> io::Result<()> {
        check_name(name.as_ref())?;
        let t = timespec(mtime_ns);
        rfs::utimensat(
            &self.fd,
            name.as_ref(),
            &rfs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    pub fn chown_nofollow(&self, name: impl AsRef<OsStr>, uid: u32, gid: u32) -> io::Result<()> {
        check_name(name.as_ref())?;
        rfs::chownat(
            &self.fd,
            name.as_ref(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Creates a FIFO or a device node (`kind`: Fifo, CharacterDevice, BlockDevice).
    pub fn mknod(
        &self,
        name: impl AsRef<OsStr>,
        kind: FileType,
        mode: u32,
        rdev: u64,
    ) -> io::Result<()> {
        check_name(name.as_ref())?;
        rfs::mknodat(
            &self.fd,
            name.as_ref(),
            kind,
            Mode::from_raw_mode(mode),
            rdev,
        )?;
        Ok(())
    }

    /// Makes `to` (in this directory) a hard link of `from` in `src`, never following a
    /// symlink.
    pub fn link_from(
        &self,
        src: &DirHandle,
        from: impl AsRef<OsStr>,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        check_name(from.as_ref())?;
        check_name(to.as_ref())?;
        rfs::linkat(
            &src.fd,
            from.as_ref(),
            &self.fd,
            to.as_ref(),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// An `O_PATH` descriptor of the entry `name` itself (never a symlink's target): a FIFO
    /// or device node, held without being opened, to set its attributes through
    /// [`set_xattr_located`].
    pub fn locate(&self, name: impl AsRef<OsStr>) -> io::Result<OwnedFd> {
        check_name(name.as_ref())?;
        Ok(rfs::openat(
            &self.fd,
            name.as_ref(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Sets the mode of an entry that is not a symlink (FIFOs, device nodes).
    pub fn chmod_at(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<()> {
        check_name(name.as_ref())?;
        rfs::chmodat(
            &self.fd,
            name.as_ref(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// fchmod/fchown/futimens on the directory itself.
    pub fn fd(&self) -> impl AsFd + '_ {
        &self.fd
    }
}

pub fn timespec(ns: i128) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as i64,
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

/// Sets mode on an open file or directory.
pub fn fchmod(fd: impl AsFd, mode: u32) -> io::Result<()> {
    rfs::fchmod(fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// Sets owner on an open file or directory.
pub fn fchown(fd: impl AsFd, uid: u32, gid: u32) -> io::Result<()> {
    rfs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )?;
    Ok(())
}

/// Sets access and modification time on an open file or directory.
pub fn futimens(fd: impl AsFd, mtime_ns: i128) -> io::Result<()> {
    let t = timespec(mtime_ns);
    rfs::futimens(
        fd,
        &rfs::Timestamps {
            last_access: t,
            last_modification: t,
        },
    )?;
    Ok(())
}

/// Flushes the whole filesystem holding `fd` to stable storage (one call instead of an
/// fsync per file, before renames that must not become durable before the data).
pub fn syncfs(fd: impl AsFd) -> io::Result<()> {
    rfs::syncfs(fd)?;
    Ok(())
}

/// The effective uid and gid of this process.
pub fn euid_egid() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// True if this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Extended attributes read from one entry: those kept (name, value), and names that are not
/// UTF-8 (reported, not kept).
pub type Xattrs = (Vec<(String, Vec<u8>)>, Vec<Vec<u8>>);

/// Whether arca keeps an extended attribute of this name: `user.*`, `security.*`,
/// `trusted.*` and the POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`).
pub fn xattr_kept(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"security.")
        || name.starts_with(b"trusted.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Where extended attributes are read from: an open file, or the procfs path of an `O_PATH`
/// descriptor (`/proc/self/fd/N`, which `f*xattr` calls do not take on every kernel): that
/// path is followed to the entry the descriptor holds, never further, whatever its own path
/// has become.
#[derive(Clone, Copy)]
pub enum XattrSource<'a> {
    Located(&'a Path),
    Fd(std::os::fd::BorrowedFd<'a>),
}

impl XattrSource<'_> {
    fn list_len(self) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Located(p) => rfs::listxattr_query(p),
            XattrSource::Fd(f) => rfs::flistxattr_query(f),
        }
    }
    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Located(p) => rfs::listxattr(p, buf),
            XattrSource::Fd(f) => rfs::flistxattr(f, buf),
        }
    }
    fn value_len(self, name: &[u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Located(p) => rfs::getxattr_query(p, name),
            XattrSource::Fd(f) => rfs::fgetxattr_query(f, name),
        }
    }
    fn value(self, name: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Located(p) => rfs::getxattr(p, name, buf),
            XattrSource::Fd(f) => rfs::fgetxattr(f, name, buf),
        }
    }
}

/// The extended attributes arca keeps, sorted by name. Names that are not UTF-8 are
/// returned apart (reported, not kept).
pub fn read_xattrs(src: XattrSource<'_>) -> io::Result<Xattrs> {
    let mut out = Vec::new();
    let mut odd = Vec::new();
    let n = match src.list_len() {
        Ok(n) => n,
        Err(e) if e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::NOSYS => {
            return Ok((out, odd))
        }
        Err(e) => return Err(e.into()),
    };
    if n == 0 {
        return Ok((out, odd));
    }
    let mut names = vec![0u8; n.min(1 << 20)];
    let got = src.list(&mut names[..])?;
    for name in names[..got].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !xattr_kept(name) {
            continue;
        }
        let size = match src.value_len(name) {
            Ok(s) => s,
            Err(e) if e == rustix::io::Errno::NODATA => continue,
            Err(e) => return Err(e.into()),
        };
        let mut v = vec![0u8; size.min(1 << 20)];
        let len = src.value(name, &mut v[..])?;
        v.truncate(len);
        match std::str::from_utf8(name) {
            Ok(s) => out.push((s.to_string(), v)),
            Err(_) => odd.push(name.to_vec()),
        }
    }
    out.sort();
    Ok((out, odd))
}

/// This process's file mode creation mask, read from `/proc/self/status` (reading it with
/// `umask(2)` would set it, racing other threads); `None` where the kernel does not say.
pub fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

/// Whether files created in this directory may get other permissions than their mode less
/// the umask: true when it has a default ACL (which then replaces the umask), or when that
/// cannot be told.
pub fn default_acl_may_apply(dir: &DirHandle) -> bool {
    match rfs::fgetxattr(&dir.fd, "system.posix_acl_default", &mut [0u8; 0][..]) {
        Ok(_) => true,
        Err(e) => !matches!(e, rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP),
    }
}

/// Sets an extended attribute on an open file or directory.
pub fn set_xattr(fd: impl AsFd, name: &str, value: &[u8]) -> io::Result<()> {
    rfs::fsetxattr(fd, name, value, rfs::XattrFlags::empty())?;
    Ok(())
}

/// Sets an extended attribute on the entry an `O_PATH` descriptor holds (through its procfs
/// path, followed to that entry and no further: `fsetxattr` does not take such descriptors
/// on every kernel).
pub fn set_xattr_located(fd: &OwnedFd, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rfs::setxattr(Path::new(&at), name, value, rfs::XattrFlags::empty())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_below_the_root() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("f")).unwrap();
        let root = DirHandle::open_root(d.path()).unwrap();
        let e = root.open_dir("sub").err().unwrap();
        assert!(is_symlink_refusal(&e), "{e}");
        assert!(root.open_read("f").is_err());
        assert!(root.create_excl("f", 0o600).is_err());
        assert!(root.open_dir("..").is_err());
        assert!(root.open_read("a/b").is_err());
        // Unlinking a symlink removes the link, not the target.
        root.unlink("f").unwrap();
        assert!(outside.path().join("secret").exists());
    }

    #[test]
    fn bounded_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("big"), vec![0u8; 1000]).unwrap();
        let root = DirHandle::open_root(d.path()).unwrap();
        assert!(root.read_bounded("big", 999).is_err());
        assert_eq!(root.read_bounded("big", 1000).unwrap().len(), 1000);
    }
}
