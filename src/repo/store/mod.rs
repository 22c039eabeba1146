//! Where a repository's objects live: one trait, two backends.
//!
//! A [`Store`] holds objects under '/'-separated keys (`config`, `points/<id>.json`,
//! `packs/ab/<id>`, ...). [`local::LocalStore`] keeps them as files below a directory,
//! reached without following symlinks; [`s3::S3Store`] keeps them in an S3 bucket (or an
//! S3-compatible store) under a prefix. Nothing a store returns is trusted: the repository
//! layer bounds sizes before it allocates and authenticates what steers it.
//!
//! Errors are `std::io::Error`s whose kind says what happened, for both backends:
//! `NotFound` (no such object), `InvalidData` (not an object: a symlink, a directory, a size
//! beyond the bound), `AlreadyExists` (a conditional write lost), `PermissionDenied`
//! (refused, e.g. by Object Lock), anything else an I/O or network failure.

pub mod local;
pub mod s3;

use std::io;
use std::time::{Duration, SystemTime};

use super::{LockHolder, LockKind};

/// What a listing says of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key (`points/<id>.json`).
    pub key: String,
    /// Size in bytes, when the listing tells it without another request.
    pub size: Option<u64>,
    /// A version tag (S3: the ETag) that changes when the object is rewritten.
    pub tag: Option<String>,
}

/// What a lock covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockScope {
    /// The repository: shared by backups, exclusive for prune, migration and job creation.
    Repository,
    /// One chain (job): exclusive for a backup of the job or a change of its keys.
    Chain(super::format::Id16),
}

impl LockScope {
    /// How holders name it ("repository", "chain <id>").
    pub fn describe(&self) -> String {
        match self {
            LockScope::Repository => "repository".into(),
            LockScope::Chain(id) => format!("chain {id}"),
        }
    }
}

/// A held lock; released when dropped.
pub trait LockGuard: Send + Sync {}

/// Requests a store made (S3: HTTP requests, retries included), for `--json` and tests.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct StoreStats {
    pub get: u64,
    pub put: u64,
    pub list: u64,
    pub head: u64,
    pub delete: u64,
    pub other: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Object Lock of a repository (S3 only): every object written is retained that long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectLock {
    pub days: u32,
    pub mode: LockMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Governance,
    Compliance,
}

impl std::str::FromStr for LockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            _ => Err(format!("object lock mode {s:?}: governance or compliance")),
        }
    }
}

/// Reads byte ranges of one object (a pack).
pub trait RangeReader: Send {
    /// `len` bytes at `offset`; `UnexpectedEof` if the object is shorter.
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>>;

    /// [`RangeReader::read_at`] into `buf` (replacing its contents), for a caller that
    /// reuses one buffer; `len` is bounded by the caller.
    fn read_into(&mut self, offset: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        *buf = self.read_at(offset, len)?;
        Ok(())
    }
}

/// An object written piece by piece and named when it is complete (a pack, named by the hash
/// of its bytes). Dropped without [`ObjectSink::commit`], it leaves nothing behind.
pub trait ObjectSink: Send {
    fn write(&mut self, data: &[u8]) -> io::Result<()>;

    /// Makes the object durable under `key` (atomically: readers never see part of it).
    fn commit(self: Box<Self>, key: &str) -> io::Result<()>;
}

pub trait Store: Send + Sync {
    /// Where the store is, for messages (`/srv/backup`, `s3://bucket/prefix`).
    fn location(&self) -> &str;

    /// The whole object, refused (`InvalidData`) before allocating if larger than `max`.
    fn get(&self, key: &str, max: u64) -> io::Result<Vec<u8>>;

    /// A reader of ranges of one object.
    fn reader(&self, key: &str) -> io::Result<Box<dyn RangeReader>>;

    /// A reader of ranges of one immutable object (a pack) whose ranges are read again
    /// later (file-index chunks): a remote store keeps them in its local cache.
    fn reader_cached(&self, key: &str) -> io::Result<Box<dyn RangeReader>> {
        self.reader(key)
    }

    /// The size of an object, `None` if it does not exist.
    fn size(&self, key: &str) -> io::Result<Option<u64>>;

    /// Writes an object whole and atomically (readers see the old object or the new one),
    /// replacing one already there.
    fn put(&self, key: &str, parts: &[&[u8]]) -> io::Result<()>;

    /// Writes an object only if none exists under `key` (`AlreadyExists` otherwise).
    fn put_new(&self, key: &str, data: &[u8]) -> io::Result<()>;

    /// Starts writing an object that nothing reads before [`Store::flush`]; the store may
    /// write several at once (bounded). The default writes it now.
    fn put_background(&self, key: String, data: Vec<u8>) -> io::Result<()> {
        self.put(&key, &[&data])
    }

    /// A sink for an object written as it is produced, when this store takes one (a local
    /// directory streams a pack to a temporary file instead of holding it in memory); `None`
    /// when objects are written whole ([`Store::put_background`]).
    fn put_stream(&self) -> io::Result<Option<Box<dyn ObjectSink>>> {
        Ok(None)
    }

    /// Waits for the writes [`Store::put_background`] started; the first error, if any.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Removes an object; one already gone is not an error.
    fn delete(&self, key: &str) -> io::Result<()>;

    /// Every object below `dir` (a key prefix ending at a '/' boundary), any depth.
    fn list(&self, dir: &str) -> io::Result<Vec<ObjectInfo>>;

    /// Takes a lock; `None` when another holder has it (non-blocking).
    fn lock(
        &self,
        scope: LockScope,
        kind: LockKind,
        holder: &LockHolder,
    ) -> io::Result<Option<Box<dyn LockGuard>>>;

    /// Who holds locks now (unreadable records are skipped).
    fn lock_holders(&self) -> Vec<LockHolder>;

    /// Removes lock records of holders known to be gone; returns them.
    fn sweep_stale(&self) -> Vec<LockHolder>;

    /// Removes leftovers of interrupted writes older than `min_age`.
    fn clean_tmp(&self, min_age: Duration) -> io::Result<()>;

    /// Object Lock for objects written from now on (stores without it refuse).
    fn set_object_lock(&self, lock: ObjectLock) -> io::Result<()> {
        let _ = lock;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "Object Lock needs an S3 repository",
        ))
    }

    /// Whether the store itself enforces Object Lock (S3: the bucket's configuration).
    fn object_lock_enabled(&self) -> io::Result<bool> {
        Ok(false)
    }

    /// The retention date of an object (`None`: not locked or no such object).
    fn retention(&self, key: &str) -> io::Result<Option<SystemTime>> {
        let _ = key;
        Ok(None)
    }

    /// Extends the retention of an object to `until` (never shortens it).
    fn extend_retention(&self, key: &str, until: SystemTime) -> io::Result<()> {
        let _ = (key, until);
        Ok(())
    }

    /// Requests made so far.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Whether this is a local directory (permissions, flock, `syncfs` apply).
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }
}

/// Splits a key into its directory part and its name, checking every component.
pub(crate) fn split_key(key: &str) -> io::Result<(Vec<&str>, &str)> {
    let mut parts: Vec<&str> = key.split('/').collect();
    let name = parts.pop().unwrap_or_default();
    for c in parts.iter().chain(std::iter::once(&name)) {
        if c.is_empty() || *c == "." || *c == ".." || c.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("object key {key:?}: empty, '.' or '..' component"),
            ));
        }
    }
    Ok((parts, name))
}

/// Whether `s` is `n` lowercase hex digits.
pub(crate) fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A repository location given by the user: a directory or `s3://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parses what `--repo` was given (kept as a path by the CLI and the catalog).
    pub fn parse(p: &std::path::Path) -> io::Result<Location> {
        let Some(s) = p.to_str().and_then(|s| s.strip_prefix("s3://")) else {
            return Ok(Location::Local(p.to_path_buf()));
        };
        let (bucket, prefix) = s.split_once('/').unwrap_or((s, ""));
        let prefix = prefix.trim_end_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "s3://{s}: {bucket:?} is not an S3 bucket name (3 to 63 of a-z, 0-9, '-', '.')"
                ),
            ));
        }
        if !prefix.is_empty() {
            split_key(prefix)?;
        }
        Ok(Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        use std::path::Path;
        assert_eq!(
            Location::parse(Path::new("/srv/r")).unwrap(),
            Location::Local("/srv/r".into())
        );
        assert_eq!(
            Location::parse(Path::new("s3://my-bucket/a/b/")).unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse(Path::new("s3://my-bucket")).unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert!(Location::parse(Path::new("s3://My_Bucket/x")).is_err());
        assert!(Location::parse(Path::new("s3://bucket/a/../b")).is_err());
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(split_key("a/b/c").unwrap(), (vec!["a", "b"], "c"));
        assert_eq!(split_key("config").unwrap(), (vec![], "config"));
        for bad in ["", "a//b", "../x", "a/./b", "a/"] {
            assert!(split_key(bad).is_err(), "{bad}");
        }
    }
}
