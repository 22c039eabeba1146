//! A repository in an S3 bucket (AWS S3 or an S3-compatible store) under a key prefix.
//!
//! * Requests run on a small runtime of their own, so the synchronous engine can call the
//!   store from any thread. Throttling, 5xx answers and timeouts are retried by the SDK's
//!   standard strategy (exponential backoff with jitter, bounded attempts).
//! * Large objects go up in parts (multipart upload, parts of `part_size`); packs go up in
//!   the background, a bounded number at once ([`Store::put_background`]), and a point's
//!   index and record are written only after [`Store::flush`] saw every pack land.
//! * Reads of packs fetch windows of a few MiB, so a restore reading chunks in order makes
//!   one request per window, not one per chunk.
//! * Locks are lease objects under `locks/` written with conditional requests
//!   (`If-None-Match: *` to take, `If-Match: <etag>` to renew, take over an expired lease,
//!   or release), renewed while held; a host that dies holding one blocks others until
//!   its lease expires (`lease_seconds`, 120 by default). No local lock file is involved.
//! * With Object Lock, every object but a lease is written with a retention date.
//! * Metadata read before (point records, chains, jobs, indexes) is kept in a local cache,
//!   each entry authenticated with a key that never leaves this machine; an entry is used
//!   only if its ETag still matches the bucket's (from a listing, or a conditional GET that
//!   answers 304), and a tampered entry is dropped and fetched again.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectLockEnabled, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode,
};

use super::{
    LockGuard, LockMode, LockScope, ObjectInfo, ObjectLock, RangeReader, Store, StoreStats,
};
use crate::repo::{LockHolder, LockKind};

/// How to reach S3. Unset fields come from the environment and the AWS chain.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    /// An S3-compatible endpoint (`--s3-endpoint`, `AWS_ENDPOINT_URL_S3`).
    pub endpoint: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`); the default with an endpoint.
    pub path_style: Option<bool>,
    pub region: Option<String>,
    /// Where the authenticated metadata cache lives (beside the catalog); none: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Objects larger than this go up in parts of this size (`ARCA_S3_PART_SIZE`, 32 MiB).
    pub part_size: Option<usize>,
    /// How long a lock lease lasts unless renewed (`ARCA_S3_LEASE_SECONDS`, 120).
    pub lease_seconds: Option<u64>,
    /// Pack uploads in flight at once (`ARCA_S3_UPLOADS`, 4).
    pub uploads: Option<usize>,
    /// Attempts per request, retries included (`ARCA_S3_MAX_ATTEMPTS`, 5).
    pub max_attempts: Option<u32>,
    /// Upper bound on one attempt (`ARCA_S3_TIMEOUT_SECONDS`, 120).
    pub timeout_seconds: Option<u64>,
}

static SETTINGS: OnceLock<S3Settings> = OnceLock::new();

/// Sets this process's S3 settings (the CLI does, once, from its flags).
pub fn configure(s: S3Settings) {
    let _ = SETTINGS.set(s);
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn settings() -> S3Settings {
    let mut s = SETTINGS.get().cloned().unwrap_or_default();
    if s.endpoint.is_none() {
        s.endpoint =
            env_nonempty("AWS_ENDPOINT_URL_S3").or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
    }
    if s.path_style.is_none() {
        s.path_style = env_nonempty("ARCA_S3_PATH_STYLE").map(|v| v != "0" && v != "false");
    }
    if s.cache_dir.is_none() {
        s.cache_dir = env_nonempty("ARCA_S3_CACHE").map(PathBuf::from);
    }
    s.part_size = s.part_size.or(Some(
        env_u64("ARCA_S3_PART_SIZE", 32 << 20, 5 << 20, 1 << 30) as usize,
    ));
    s.lease_seconds = s
        .lease_seconds
        .or(Some(env_u64("ARCA_S3_LEASE_SECONDS", 120, 2, 86_400)));
    s.uploads = s
        .uploads
        .or(Some(env_u64("ARCA_S3_UPLOADS", 4, 1, 64) as usize));
    s.max_attempts = s
        .max_attempts
        .or(Some(env_u64("ARCA_S3_MAX_ATTEMPTS", 5, 1, 10) as u32));
    s.timeout_seconds =
        s.timeout_seconds
            .or(Some(env_u64("ARCA_S3_TIMEOUT_SECONDS", 120, 1, 3600)));
    s
}

fn env_u64(k: &str, default: u64, min: u64, max: u64) -> u64 {
    env_nonempty(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(min, max)
}

/// The runtime S3 requests run on (two workers: requests mostly wait).
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("arca-s3")
            .enable_all()
            .build()
            .expect("tokio runtime for S3")
    })
}

/// Runs `f` on the S3 runtime and waits for it (callable from any thread, async or not).
fn block<F>(f: F) -> io::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| io::Error::other("an S3 request task ended without an answer"))
}

/// Requests every S3 store of this process made (for `--json` summaries and tests).
static COUNTERS: Counters = Counters {
    get: AtomicU64::new(0),
    put: AtomicU64::new(0),
    list: AtomicU64::new(0),
    head: AtomicU64::new(0),
    delete: AtomicU64::new(0),
    other: AtomicU64::new(0),
    bytes_in: AtomicU64::new(0),
    bytes_out: AtomicU64::new(0),
};

/// What [`COUNTERS`] holds now.
pub fn process_stats() -> StoreStats {
    let c = &COUNTERS;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    StoreStats {
        get: l(&c.get),
        put: l(&c.put),
        list: l(&c.list),
        head: l(&c.head),
        delete: l(&c.delete),
        other: l(&c.other),
        bytes_in: l(&c.bytes_in),
        bytes_out: l(&c.bytes_out),
    }
}

/// [`process_stats`] if this process made any S3 request.
pub fn requests_made() -> Option<StoreStats> {
    let s = process_stats();
    (s != StoreStats::default()).then_some(s)
}

struct Counters {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// An S3 error as an `io::Error` of the kind the store contract names.
fn s3_err<E>(op: &str, key: &str, e: SdkError<E, HttpResponse>) -> io::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().map(str::to_string);
    let kind = match (status, code.as_deref()) {
        (_, Some("NoSuchKey" | "NotFound" | "NoSuchUpload")) | (Some(404), _) => {
            io::ErrorKind::NotFound
        }
        (_, Some("PreconditionFailed" | "ConditionalRequestConflict")) | (Some(412), _) => {
            io::ErrorKind::AlreadyExists
        }
        (_, Some("AccessDenied")) | (Some(403), _) => io::ErrorKind::PermissionDenied,
        (_, Some("InvalidRange")) | (Some(416), _) => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::Other,
    };
    let what = match code.as_deref() {
        Some("NoSuchBucket") => "the bucket does not exist".to_string(),
        _ => DisplayErrorContext(&e).to_string(),
    };
    io::Error::new(kind, format!("S3 {op} {key}: {what}"))
}

fn not_modified<E>(e: &SdkError<E, HttpResponse>) -> bool {
    e.raw_response().map(|r| r.status().as_u16()) == Some(304)
}

/// Reads a response body of at most `max` bytes (refused, `InvalidData`, as soon as more
/// arrives, whatever the server announced); `expect` sizes the buffer.
async fn read_body(
    mut body: ByteStream,
    key: &str,
    expect: u64,
    max: u64,
    too_long: &str,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(expect.min(max) as usize);
    while let Some(b) = body.next().await {
        let b = b.map_err(|e| io::Error::other(format!("S3 GET {key}: {e}")))?;
        if (buf.len() + b.len()) as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("S3 GET {key}: {too_long} ({max})"),
            ));
        }
        buf.extend_from_slice(&b);
    }
    Counters::add(&COUNTERS.bytes_in, buf.len() as u64);
    Ok(buf)
}

/// A lease record (`locks/*.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Lease {
    holder: LockHolder,
    /// Seconds since the epoch after which others may take the lock over.
    expires: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Inner {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// "" or "some/prefix/".
    prefix: String,
    lock: Mutex<Option<ObjectLock>>,
    part_size: usize,
    lease: Duration,
    cache: Option<Cache>,
    /// ETags seen in the latest listings, by key.
    seen: Mutex<HashMap<String, String>>,
    /// Directories listed (or about to be) by this store.
    listed: Mutex<std::collections::HashSet<String>>,
    /// Object Lock: the first version of each pack read (its id and size).
    pinned: Mutex<HashMap<String, Option<(String, u64)>>>,
}

impl Inner {
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn retention_for(&self, key: &str) -> Option<(ObjectLockMode, DateTime)> {
        if key.starts_with("locks/") {
            return None;
        }
        let l = (*self.lock.lock().expect("not poisoned"))?;
        let until = SystemTime::now() + Duration::from_secs(u64::from(l.days) * 86_400);
        let mode = match l.mode {
            LockMode::Governance => ObjectLockMode::Governance,
            LockMode::Compliance => ObjectLockMode::Compliance,
        };
        Some((mode, DateTime::from(until)))
    }

    async fn put(
        &self,
        key: &str,
        data: Vec<u8>,
        if_none_match: bool,
        if_match: Option<String>,
    ) -> io::Result<String> {
        let len = data.len() as u64;
        if data.len() > self.part_size && !if_none_match && if_match.is_none() {
            return self.put_multipart(key, data).await;
        }
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .body(ByteStream::from(data));
        if if_none_match {
            req = req.if_none_match("*");
        }
        if let Some(t) = if_match {
            req = req.if_match(t);
        }
        if let Some((mode, until)) = self.retention_for(key) {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        Counters::add(&COUNTERS.put, 1);
        tracing::debug!("S3 PUT {key} ({len} bytes)");
        let out = req.send().await.map_err(|e| s3_err("PUT", key, e))?;
        Counters::add(&COUNTERS.bytes_out, len);
        Ok(out.e_tag.unwrap_or_default())
    }

    async fn put_multipart(&self, key: &str, data: Vec<u8>) -> io::Result<String> {
        let full = self.full(key);
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full);
        if let Some((mode, until)) = self.retention_for(key) {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        Counters::add(&COUNTERS.other, 1);
        let up = req
            .send()
            .await
            .map_err(|e| s3_err("CreateMultipartUpload", key, e))?;
        let id = up.upload_id.ok_or_else(|| {
            io::Error::other(format!("S3 multipart upload of {key}: no upload id"))
        })?;
        let res: io::Result<String> = async {
            let mut parts = Vec::new();
            for (i, part) in data.chunks(self.part_size).enumerate() {
                let n = i as i32 + 1;
                Counters::add(&COUNTERS.put, 1);
                let r = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&id)
                    .part_number(n)
                    .body(ByteStream::from(part.to_vec()))
                    .send()
                    .await
                    .map_err(|e| s3_err("UploadPart", key, e))?;
                Counters::add(&COUNTERS.bytes_out, part.len() as u64);
                parts.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(r.e_tag)
                        .build(),
                );
            }
            Counters::add(&COUNTERS.other, 1);
            let done = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| s3_err("CompleteMultipartUpload", key, e))?;
            Ok(done.e_tag.unwrap_or_default())
        }
        .await;
        if res.is_err() {
            Counters::add(&COUNTERS.other, 1);
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&id)
                .send()
                .await;
        }
        res
    }

    /// With Object Lock, packs are read at their first version: a pack is written once, so
    /// a later version (an overwrite) or a delete marker is someone else's, and the retained
    /// first version is what the backup wrote.
    fn pins(&self, key: &str) -> bool {
        key.starts_with("packs/") && self.lock.lock().expect("not poisoned").is_some()
    }

    /// The first version of `key` still there (id and size); `None`: none.
    async fn first_version(&self, key: &str) -> io::Result<Option<(String, u64)>> {
        if let Some(v) = self.pinned.lock().expect("not poisoned").get(key) {
            return Ok(v.clone());
        }
        let full = self.full(key);
        Counters::add(&COUNTERS.list, 1);
        tracing::debug!("S3 LIST versions of {key}");
        let out = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&full)
            .send()
            .await
            .map_err(|e| s3_err("ListObjectVersions", key, e))?;
        let versions: Vec<_> = out
            .versions()
            .iter()
            .filter(|v| v.key() == Some(full.as_str()))
            .filter_map(|v| {
                Some((
                    v.last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                    v.version_id()?.to_string(),
                    v.size().unwrap_or(0).max(0) as u64,
                ))
            })
            .collect();
        // A listing gives a key's versions newest first, and times are in whole seconds:
        // the oldest time, and among equal times the last listed, is the first written.
        let first = versions
            .into_iter()
            .rev()
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, id, size)| (id, size));
        self.pinned
            .lock()
            .expect("not poisoned")
            .insert(key.to_string(), first.clone());
        Ok(first)
    }

    /// The version to read `key` at (`None`: the current one).
    async fn version_for(&self, key: &str) -> io::Result<Option<String>> {
        if !self.pins(key) {
            return Ok(None);
        }
        match self.first_version(key).await? {
            Some((v, _)) => Ok(Some(v)),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("S3 GET {key}: no version of it exists"),
            )),
        }
    }

    /// The object and its ETag; `None` if `etag` still matches (304).
    async fn get(
        &self,
        key: &str,
        max: u64,
        if_none_match: Option<String>,
    ) -> io::Result<Option<(Vec<u8>, String)>> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .set_version_id(self.version_for(key).await?);
        if let Some(t) = if_none_match {
            req = req.if_none_match(t);
        }
        Counters::add(&COUNTERS.get, 1);
        tracing::debug!("S3 GET {key}");
        let out = match req.send().await {
            Ok(o) => o,
            Err(e) if not_modified(&e) => return Ok(None),
            Err(e) => return Err(s3_err("GET", key, e)),
        };
        let len = out.content_length.unwrap_or(0).max(0) as u64;
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes, more than the {max} this object may have"),
            ));
        }
        let etag = out.e_tag.clone().unwrap_or_default();
        let buf = read_body(
            out.body,
            key,
            len,
            max,
            "more than the bytes this object may have",
        )
        .await?;
        Ok(Some((buf, etag)))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        Counters::add(&COUNTERS.get, 1);
        tracing::debug!("S3 GET {key} bytes {offset}+{len}");
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .set_version_id(self.version_for(key).await?)
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await
            .map_err(|e| s3_err("GET", key, e))?;
        read_body(
            out.body,
            key,
            len,
            len,
            "more bytes than the range asked for",
        )
        .await
    }

    async fn head(
        &self,
        key: &str,
    ) -> io::Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
        Counters::add(&COUNTERS.head, 1);
        tracing::debug!("S3 HEAD {key}");
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .set_version_id(match self.version_for(key).await {
                Ok(v) => v,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            })
            .send()
            .await
        {
            Ok(o) => Ok(Some(o)),
            Err(e) => {
                let e = s3_err("HEAD", key, e);
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn delete(&self, key: &str, if_match: Option<String>) -> io::Result<()> {
        Counters::add(&COUNTERS.delete, 1);
        tracing::debug!("S3 DELETE {key}");
        let mut req = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key));
        if let Some(t) = if_match {
            req = req.if_match(t);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = s3_err("DELETE", key, e);
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Removes every version of `key` (a bucket with Object Lock keeps versions): the
    /// server refuses versions still retained (`PermissionDenied`).
    async fn delete_versions(&self, key: &str) -> io::Result<()> {
        let full = self.full(key);
        let mut marker: Option<String> = None;
        let mut vmarker: Option<String> = None;
        loop {
            Counters::add(&COUNTERS.list, 1);
            let out = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_key_marker(marker.take())
                .set_version_id_marker(vmarker.take())
                .send()
                .await
                .map_err(|e| s3_err("ListObjectVersions", key, e))?;
            let mut ids: Vec<String> = out
                .versions()
                .iter()
                .filter(|v| v.key() == Some(full.as_str()))
                .filter_map(|v| v.version_id().map(str::to_string))
                .collect();
            ids.extend(
                out.delete_markers()
                    .iter()
                    .filter(|v| v.key() == Some(full.as_str()))
                    .filter_map(|v| v.version_id().map(str::to_string)),
            );
            for v in ids {
                Counters::add(&COUNTERS.delete, 1);
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .version_id(v)
                    .send()
                    .await
                    .map_err(|e| s3_err("DELETE", key, e))?;
            }
            if out.is_truncated() != Some(true) {
                return Ok(());
            }
            marker = out.next_key_marker().map(str::to_string);
            vmarker = out.next_version_id_marker().map(str::to_string);
        }
    }

    async fn list(&self, dir: &str) -> io::Result<Vec<ObjectInfo>> {
        let dir = dir.trim_end_matches('/');
        let prefix = if dir.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{dir}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            Counters::add(&COUNTERS.list, 1);
            tracing::debug!("S3 LIST {prefix}");
            let r = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_err("LIST", dir, e))?;
            for o in r.contents() {
                let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                if super::split_key(k).is_err() {
                    continue;
                }
                out.push(ObjectInfo {
                    key: k.to_string(),
                    size: o.size().map(|s| s.max(0) as u64),
                    tag: o.e_tag().map(str::to_string),
                });
            }
            match (r.is_truncated(), r.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        let mut seen = self.seen.lock().expect("not poisoned");
        for o in &out {
            if let Some(t) = &o.tag {
                seen.insert(o.key.clone(), t.clone());
            }
        }
        Ok(out)
    }
}

/// The authenticated metadata cache: one file per key, `MAC(32) || etag-len(2) || etag ||
/// body`, the MAC a keyed BLAKE3 of key, ETag and body under `cache.key` (0600).
struct Cache {
    dir: PathBuf,
    key: [u8; 32],
}

impl Cache {
    fn open(root: &std::path::Path, location: &str) -> io::Result<Cache> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        let kp = root.join("cache.key");
        let key = match std::fs::read(&kp) {
            Ok(k) if k.len() == 32 => k.try_into().expect("32 bytes"),
            _ => {
                let k: [u8; 32] = crate::crypto::random_bytes();
                let tmp = root.join(format!("cache.key.{}", std::process::id()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                use std::io::Write;
                f.write_all(&k)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &kp)?;
                k
            }
        };
        let dir = root.join(&blake3::hash(location.as_bytes()).to_hex().as_str()[..32]);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Cache { dir, key })
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(key.replace('/', "_"))
    }

    fn mac(&self, key: &str, etag: &str, body: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key.as_bytes());
        h.update(&(etag.len() as u64).to_le_bytes());
        h.update(etag.as_bytes());
        h.update(body);
        *h.finalize().as_bytes()
    }

    /// The cached body and its ETag, if present and authentic (a forged entry is removed).
    fn load(&self, key: &str, max: u64) -> Option<(Vec<u8>, String)> {
        let p = self.file(key);
        let b = std::fs::read(&p).ok()?;
        let parsed = (|| {
            let mac: [u8; 32] = b.get(..32)?.try_into().ok()?;
            let n = u16::from_le_bytes(b.get(32..34)?.try_into().ok()?) as usize;
            let etag = std::str::from_utf8(b.get(34..34 + n)?).ok()?.to_string();
            let body = b.get(34 + n..)?;
            Some((mac, etag, body))
        })();
        match parsed {
            Some((mac, etag, body))
                if body.len() as u64 <= max && subtle_eq(&mac, &self.mac(key, &etag, body)) =>
            {
                Some((body.to_vec(), etag))
            }
            _ => {
                tracing::warn!(
                    "metadata cache entry {} failed authentication; fetching it again",
                    p.display()
                );
                let _ = std::fs::remove_file(&p);
                None
            }
        }
    }

    fn store(&self, key: &str, etag: &str, body: &[u8]) {
        if etag.is_empty() || etag.len() > 1024 {
            return;
        }
        let mut b = Vec::with_capacity(34 + etag.len() + body.len());
        b.extend_from_slice(&self.mac(key, etag, body));
        b.extend_from_slice(&(etag.len() as u16).to_le_bytes());
        b.extend_from_slice(etag.as_bytes());
        b.extend_from_slice(body);
        let p = self.file(key);
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &b).is_ok() {
            let _ = std::fs::rename(&tmp, &p);
        }
    }

    fn forget(&self, key: &str) {
        let _ = std::fs::remove_file(self.file(key));
    }
}

/// Constant-time equality of two MACs.
fn subtle_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Keys whose objects the cache keeps (small metadata and indexes; never packs or locks).
fn cacheable(key: &str) -> bool {
    ["points/", "chains/", "jobs/", "index/", "escrow/"]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Background uploads in flight and the first error one met, with a condition to wait on.
type Inflight = (Mutex<(usize, Option<io::Error>)>, Condvar);

pub struct S3Store {
    inner: Arc<Inner>,
    location: String,
    /// Background uploads in flight, and the first error one of them met.
    inflight: Arc<Inflight>,
    max_inflight: usize,
}

/// Objects at most this far from their start are fetched in one request when a pack is read.
const READ_WINDOW: u64 = 4 * 1024 * 1024;

struct S3Reader {
    inner: Arc<Inner>,
    key: String,
    buf_off: u64,
    buf: Vec<u8>,
    next: Option<Prefetch>,
}

/// Reads exact ranges of an immutable object through the metadata cache (packs are named
/// by the hash of their bytes: a range of one never changes).
struct CachedReader {
    inner: Arc<Inner>,
    key: String,
}

impl RangeReader for CachedReader {
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let ck = format!("{}@{offset}+{len}", self.key);
        let cache = self.inner.cache.as_ref().expect("only with a cache");
        if let Some((b, _)) = cache.load(&ck, len) {
            if b.len() as u64 == len {
                return Ok(b);
            }
        }
        let inner = self.inner.clone();
        let key = self.key.clone();
        let got = block(async move { inner.get_range(&key, offset, len).await })??;
        if got.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the object ends before the range",
            ));
        }
        cache.store(&ck, "immutable", &got);
        Ok(got)
    }
}

/// A window being fetched ahead: its offset, and where its bytes arrive.
type Prefetch = (u64, std::sync::mpsc::Receiver<io::Result<Vec<u8>>>);

impl S3Reader {
    /// Starts fetching the window that follows the buffer (a reader going through a pack
    /// in order then waits for the network at most once).
    fn prefetch_next(&mut self) {
        let next = self.buf_off + self.buf.len() as u64;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let inner = self.inner.clone();
        let key = self.key.clone();
        rt().spawn(async move {
            let _ = tx.send(inner.get_range(&key, next, READ_WINDOW).await);
        });
        self.next = Some((next, rx));
    }
}

impl RangeReader for S3Reader {
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range beyond u64"))?;
        let have = self.buf_off..self.buf_off + self.buf.len() as u64;
        if !(offset >= have.start && end <= have.end) {
            // (offset of the new buffer, its bytes, whether the object may go on after it)
            let mut fetched: Option<(u64, Vec<u8>, bool)> = None;
            if let Some((noff, rx)) = self.next.take() {
                // The window fetched ahead serves a read inside it, or one that starts in the
                // buffer and runs into it (a chunk across the windows' boundary).
                let straddles = noff == have.end && offset >= have.start && offset < have.end;
                if (offset >= noff || straddles) && end <= noff + READ_WINDOW {
                    let b = rx.recv().map_err(|_| {
                        io::Error::other("an S3 read-ahead task ended without an answer")
                    })??;
                    let more = b.len() as u64 == READ_WINDOW;
                    if offset >= noff {
                        fetched = Some((noff, b, more));
                    } else {
                        let mut nb = self.buf[(offset - have.start) as usize..].to_vec();
                        nb.extend_from_slice(&b);
                        fetched = Some((offset, nb, more));
                    }
                }
            }
            let from_ahead = fetched.is_some();
            let (off, b, more) = match fetched {
                Some(x) => x,
                None => {
                    let want = len.max(READ_WINDOW);
                    let inner = self.inner.clone();
                    let key = self.key.clone();
                    let b = block(async move { inner.get_range(&key, offset, want).await })??;
                    let more = b.len() as u64 == want;
                    (offset, b, more)
                }
            };
            // Moving forward through the object: fetch the next window ahead.
            let forward = from_ahead || (!self.buf.is_empty() && offset > have.start);
            self.buf_off = off;
            self.buf = b;
            if more && forward {
                self.prefetch_next();
            }
        }
        let s = (offset - self.buf_off) as usize;
        match self.buf.get(s..s + len as usize) {
            Some(b) => Ok(b.to_vec()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the object ends before the range",
            )),
        }
    }
}

struct LeaseGuard {
    inner: Arc<Inner>,
    key: String,
    etag: Arc<Mutex<String>>,
    renew: tokio::task::JoinHandle<()>,
}

impl LockGuard for LeaseGuard {}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renew.abort();
        let inner = self.inner.clone();
        let key = self.key.clone();
        let etag = self.etag.lock().expect("not poisoned").clone();
        let _ = block(async move { inner.delete(&key, Some(etag)).await });
    }
}

impl S3Store {
    /// Opens a store with this process's settings ([`configure`], then the environment).
    pub fn open(bucket: &str, prefix: &str) -> io::Result<S3Store> {
        Self::open_with(bucket, prefix, settings())
    }

    /// Opens a store with `s` (unset tunables take their defaults).
    pub fn open_with(bucket: &str, prefix: &str, s: S3Settings) -> io::Result<S3Store> {
        let location = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let cache = match &s.cache_dir {
            Some(d) => match Cache::open(d, &location) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("no metadata cache ({}): {e}", d.display());
                    None
                }
            },
            None => None,
        };
        let attempts = s.max_attempts.unwrap_or(5).clamp(1, 10);
        let timeout = Duration::from_secs(s.timeout_seconds.unwrap_or(120).clamp(1, 3600));
        let part_size = s.part_size.unwrap_or(32 << 20).max(5 << 20);
        let lease = Duration::from_secs(s.lease_seconds.unwrap_or(120).max(2));
        let uploads = s.uploads.unwrap_or(4).clamp(1, 64);
        let client = block(async move {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .retry_config(
                    aws_config::retry::RetryConfig::standard()
                        .with_max_attempts(attempts)
                        .with_initial_backoff(Duration::from_millis(200))
                        .with_max_backoff(Duration::from_secs(10)),
                )
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .operation_attempt_timeout(timeout)
                        .build(),
                );
            if let Some(r) = &s.region {
                loader = loader.region(aws_config::Region::new(r.clone()));
            }
            let conf = loader.load().await;
            let mut b = aws_sdk_s3::config::Builder::from(&conf);
            if conf.region().is_none() {
                b = b.region(aws_config::Region::new("us-east-1"));
            }
            if let Some(e) = &s.endpoint {
                b = b.endpoint_url(e);
            }
            b = b.force_path_style(s.path_style.unwrap_or(s.endpoint.is_some()));
            aws_sdk_s3::Client::from_conf(b.build())
        })?;
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(S3Store {
            inner: Arc::new(Inner {
                client,
                bucket: bucket.to_string(),
                prefix,
                lock: Mutex::new(None),
                part_size,
                lease,
                cache,
                seen: Default::default(),
                listed: Default::default(),
                pinned: Default::default(),
            }),
            location,
            inflight: Default::default(),
            max_inflight: uploads,
        })
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(
            Arc<Inner>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<T>> + Send>>,
    ) -> io::Result<T> {
        block(f(self.inner.clone()))?
    }

    fn lease_body(&self, holder: &LockHolder) -> Vec<u8> {
        serde_json::to_vec(&Lease {
            holder: holder.clone(),
            expires: unix_now() + self.inner.lease.as_secs(),
        })
        .expect("lease serializes")
    }

    /// Reads a lease: its record and ETag (`None`: gone or not a lease).
    fn read_lease(&self, key: &str) -> io::Result<Option<(Lease, String)>> {
        let k = key.to_string();
        match self.run(move |i| Box::pin(async move { i.get(&k, 4096, None).await })) {
            Ok(Some((b, etag))) => Ok(serde_json::from_slice(&b).ok().map(|l| (l, etag))),
            Ok(None) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the single lease `key` (or an expired one over); its ETag, `None` if held.
    fn take_lease(&self, key: &str, holder: &LockHolder) -> io::Result<Option<String>> {
        for _ in 0..3 {
            let body = self.lease_body(holder);
            let k = key.to_string();
            match self.run(move |i| Box::pin(async move { i.put(&k, body, true, None).await })) {
                Ok(etag) => return Ok(Some(etag)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let Some((lease, etag)) = self.read_lease(key)? else {
                continue; // released meanwhile, or unreadable: try again
            };
            if lease.expires >= unix_now() {
                return Ok(None);
            }
            tracing::warn!(
                "taking over the expired lease of {} ({})",
                lease.holder,
                key
            );
            let body = self.lease_body(holder);
            let k = key.to_string();
            match self
                .run(move |i| Box::pin(async move { i.put(&k, body, false, Some(etag)).await }))
            {
                Ok(etag) => return Ok(Some(etag)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn guard(
        &self,
        key: String,
        etag: String,
        holder: &LockHolder,
        exclusive: bool,
    ) -> Box<dyn LockGuard> {
        let etag = Arc::new(Mutex::new(etag));
        let inner = self.inner.clone();
        let every = inner.lease / 3;
        let (k, e, h) = (key.clone(), etag.clone(), holder.clone());
        let lost = Arc::new(AtomicBool::new(false));
        let renew = rt().spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let body = serde_json::to_vec(&Lease {
                    holder: h.clone(),
                    expires: unix_now() + inner.lease.as_secs(),
                })
                .expect("lease serializes");
                let cond = exclusive.then(|| e.lock().expect("not poisoned").clone());
                match inner.put(&k, body, false, cond).await {
                    Ok(t) => *e.lock().expect("not poisoned") = t,
                    Err(err) => {
                        if !lost.swap(true, Ordering::Relaxed) {
                            tracing::warn!("could not renew the lease {k}: {err}");
                        }
                    }
                }
            }
        });
        Box::new(LeaseGuard {
            inner: self.inner.clone(),
            key,
            etag,
            renew,
        })
    }
}

const EXCLUSIVE_REPO: &str = "locks/repository.exclusive.json";

impl Store for S3Store {
    fn location(&self) -> &str {
        &self.location
    }

    fn get(&self, key: &str, max: u64) -> io::Result<Vec<u8>> {
        super::split_key(key)?;
        let k = key.to_string();
        let cache = self.inner.cache.as_ref().filter(|_| cacheable(key));
        let cached = cache.and_then(|c| c.load(key, max));
        if let Some((_, etag)) = &cached {
            // One listing of the directory tells the ETags of all its objects: cheaper than
            // a conditional GET of each.
            let dir = key
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_default();
            let first = self
                .inner
                .listed
                .lock()
                .expect("not poisoned")
                .insert(dir.clone());
            let known = self
                .inner
                .seen
                .lock()
                .expect("not poisoned")
                .get(key)
                .is_some_and(|t| t == etag);
            if first && !known {
                let _ = self.list(&dir);
            }
        }
        if let Some((body, etag)) = &cached {
            let listed = self
                .inner
                .seen
                .lock()
                .expect("not poisoned")
                .get(key)
                .cloned();
            if listed.as_deref() == Some(etag.as_str()) {
                return Ok(body.clone());
            }
        }
        let cond = cached.as_ref().map(|(_, t)| t.clone());
        let got = self.run(move |i| Box::pin(async move { i.get(&k, max, cond).await }));
        match got {
            // A 304 answers a conditional GET; one to a plain GET is a broken server.
            Ok(None) => cached.map(|(b, _)| b).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("S3 GET {key}: 304 Not Modified to a request that was not conditional"),
                )
            }),
            Ok(Some((body, etag))) => {
                if let Some(c) = cache {
                    c.store(key, &etag, &body);
                }
                Ok(body)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    if let Some(c) = cache {
                        c.forget(key);
                    }
                }
                Err(e)
            }
        }
    }

    fn reader(&self, key: &str) -> io::Result<Box<dyn RangeReader>> {
        super::split_key(key)?;
        Ok(Box::new(S3Reader {
            inner: self.inner.clone(),
            key: key.to_string(),
            buf_off: 0,
            buf: Vec::new(),
            next: None,
        }))
    }

    fn reader_cached(&self, key: &str) -> io::Result<Box<dyn RangeReader>> {
        super::split_key(key)?;
        if self.inner.cache.is_none() {
            return self.reader(key);
        }
        Ok(Box::new(CachedReader {
            inner: self.inner.clone(),
            key: key.to_string(),
        }))
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        super::split_key(key)?;
        let k = key.to_string();
        self.run(move |i| {
            Box::pin(async move {
                if i.pins(&k) {
                    return Ok(i.first_version(&k).await?.map(|(_, size)| size));
                }
                Ok(i.head(&k)
                    .await?
                    .map(|h| h.content_length.unwrap_or(0).max(0) as u64))
            })
        })
    }

    fn put(&self, key: &str, parts: &[&[u8]]) -> io::Result<()> {
        super::split_key(key)?;
        let data = parts.concat();
        let k = key.to_string();
        let cache = self.inner.cache.as_ref().filter(|_| cacheable(key));
        let keep = cache.map(|_| data.clone());
        let etag =
            self.run(move |i| Box::pin(async move { i.put(&k, data, false, None).await }))?;
        // Write-through: what this host wrote is not downloaded again.
        if let (Some(c), Some(d)) = (cache, keep) {
            c.store(key, &etag, &d);
            self.inner
                .seen
                .lock()
                .expect("not poisoned")
                .insert(key.to_string(), etag);
        }
        Ok(())
    }

    fn put_new(&self, key: &str, data: &[u8]) -> io::Result<()> {
        super::split_key(key)?;
        let data = data.to_vec();
        let k = key.to_string();
        self.run(move |i| Box::pin(async move { i.put(&k, data, true, None).await.map(|_| ()) }))
    }

    fn put_background(&self, key: String, data: Vec<u8>) -> io::Result<()> {
        super::split_key(&key)?;
        let (m, cv) = &*self.inflight;
        {
            let mut g = m.lock().expect("not poisoned");
            while g.0 >= self.max_inflight {
                g = cv.wait(g).expect("not poisoned");
            }
            if let Some(e) = g.1.take() {
                return Err(e);
            }
            g.0 += 1;
        }
        let inner = self.inner.clone();
        let state = self.inflight.clone();
        rt().spawn(async move {
            let r = inner.put(&key, data, false, None).await;
            let (m, cv) = &*state;
            let mut g = m.lock().expect("not poisoned");
            g.0 -= 1;
            if let Err(e) = r {
                g.1.get_or_insert(e);
            }
            cv.notify_all();
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let (m, cv) = &*self.inflight;
        let mut g = m.lock().expect("not poisoned");
        while g.0 > 0 {
            g = cv.wait(g).expect("not poisoned");
        }
        match g.1.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        super::split_key(key)?;
        let k = key.to_string();
        if let Some(c) = &self.inner.cache {
            c.forget(key);
        }
        self.inner.pinned.lock().expect("not poisoned").remove(key);
        let versioned = self.inner.lock.lock().expect("not poisoned").is_some();
        self.run(move |i| {
            Box::pin(async move {
                if versioned {
                    i.delete_versions(&k).await
                } else {
                    i.delete(&k, None).await
                }
            })
        })
    }

    fn list(&self, dir: &str) -> io::Result<Vec<ObjectInfo>> {
        let d = dir.to_string();
        self.run(move |i| Box::pin(async move { i.list(&d).await }))
    }

    fn lock(
        &self,
        scope: LockScope,
        kind: LockKind,
        holder: &LockHolder,
    ) -> io::Result<Option<Box<dyn LockGuard>>> {
        let key = match (scope, kind) {
            (LockScope::Chain(id), _) => format!("locks/chain.{}.json", id.hex()),
            (LockScope::Repository, LockKind::Exclusive) => EXCLUSIVE_REPO.to_string(),
            (LockScope::Repository, LockKind::Shared) => format!(
                "locks/repository.shared.{}.json",
                crate::repo::format::Id16::random().hex()
            ),
        };
        match (scope, kind) {
            (LockScope::Repository, LockKind::Shared) => {
                // Announce first, then look for an exclusive holder: of a shared and an
                // exclusive taker racing, at least one sees the other and backs off.
                let body = self.lease_body(holder);
                let k = key.clone();
                let etag =
                    self.run(move |i| Box::pin(async move { i.put(&k, body, false, None).await }))?;
                let g = self.guard(key, etag, holder, false);
                match self.read_lease(EXCLUSIVE_REPO)? {
                    Some((l, _)) if l.expires >= unix_now() => Ok(None), // g dropped: released
                    _ => Ok(Some(g)),
                }
            }
            (LockScope::Repository, LockKind::Exclusive) => {
                let Some(etag) = self.take_lease(&key, holder)? else {
                    return Ok(None);
                };
                let g = self.guard(key, etag, holder, true);
                let now = unix_now();
                let mut dead = Vec::new();
                for o in self.list("locks")? {
                    if o.key == EXCLUSIVE_REPO {
                        continue;
                    }
                    if let Some((l, etag)) = self.read_lease(&o.key)? {
                        let shared = o.key.starts_with("locks/repository.shared.");
                        if shared && l.expires >= now {
                            return Ok(None);
                        }
                        // Every chain lease is taken under a shared repository lease
                        // (`ops::lifecycle::lock_chain`, copy): with none of those live, a
                        // chain lease is the leftover of a holder that died, even if its own
                        // timer (renewed apart from the shared one) has not run out yet.
                        if !shared || l.expires < now {
                            dead.push((o.key, etag));
                        }
                    }
                }
                // Holding the repository alone, tidy up the leases of holders that died
                // (unless one was renewed meanwhile: the delete is conditional).
                for (k, etag) in dead {
                    let _ =
                        self.run(move |i| Box::pin(async move { i.delete(&k, Some(etag)).await }));
                }
                Ok(Some(g))
            }
            (LockScope::Chain(_), _) => Ok(self
                .take_lease(&key, holder)?
                .map(|etag| self.guard(key, etag, holder, true))),
        }
    }

    fn lock_holders(&self) -> Vec<LockHolder> {
        let now = unix_now();
        let me = (std::process::id(), crate::repo::this_host());
        self.list("locks")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| self.read_lease(&o.key).ok().flatten())
            .filter(|(l, _)| l.expires >= now && (l.holder.pid, l.holder.host.clone()) != me)
            .map(|(l, _)| l.holder)
            .collect()
    }

    fn sweep_stale(&self) -> Vec<LockHolder> {
        let now = unix_now();
        let mut gone = Vec::new();
        for o in self.list("locks").unwrap_or_default() {
            if let Ok(Some((l, etag))) = self.read_lease(&o.key) {
                if l.expires < now {
                    let k = o.key.clone();
                    let r =
                        self.run(move |i| Box::pin(async move { i.delete(&k, Some(etag)).await }));
                    if r.is_ok() {
                        gone.push(l.holder);
                    }
                }
            }
        }
        gone
    }

    /// Aborts multipart uploads older than `min_age` (what an interrupted upload leaves).
    fn clean_tmp(&self, min_age: Duration) -> io::Result<()> {
        self.run(move |i| {
            Box::pin(async move {
                let now = SystemTime::now();
                Counters::add(&COUNTERS.list, 1);
                let out = i
                    .client
                    .list_multipart_uploads()
                    .bucket(&i.bucket)
                    .prefix(&i.prefix)
                    .send()
                    .await
                    .map_err(|e| s3_err("ListMultipartUploads", "", e))?;
                for u in out.uploads() {
                    let old = u
                        .initiated()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .and_then(|t| now.duration_since(t).ok())
                        .is_none_or(|age| age >= min_age);
                    if let (true, Some(k), Some(id)) = (old, u.key(), u.upload_id()) {
                        Counters::add(&COUNTERS.other, 1);
                        i.client
                            .abort_multipart_upload()
                            .bucket(&i.bucket)
                            .key(k)
                            .upload_id(id)
                            .send()
                            .await
                            .map_err(|e| s3_err("AbortMultipartUpload", k, e))?;
                    }
                }
                Ok(())
            })
        })
    }

    fn set_object_lock(&self, lock: ObjectLock) -> io::Result<()> {
        *self.inner.lock.lock().expect("not poisoned") = Some(lock);
        Ok(())
    }

    fn object_lock_enabled(&self) -> io::Result<bool> {
        self.run(|i| {
            Box::pin(async move {
                Counters::add(&COUNTERS.other, 1);
                match i
                    .client
                    .get_object_lock_configuration()
                    .bucket(&i.bucket)
                    .send()
                    .await
                {
                    Ok(o) => Ok(o
                        .object_lock_configuration()
                        .and_then(|c| c.object_lock_enabled())
                        == Some(&ObjectLockEnabled::Enabled)),
                    Err(e) => {
                        let code = e.code().map(str::to_string);
                        if code.as_deref() == Some("ObjectLockConfigurationNotFoundError") {
                            Ok(false)
                        } else {
                            Err(s3_err("GetObjectLockConfiguration", "", e))
                        }
                    }
                }
            })
        })
    }

    fn retention(&self, key: &str) -> io::Result<Option<SystemTime>> {
        let k = key.to_string();
        self.run(move |i| {
            Box::pin(async move {
                Ok(i.head(&k).await?.and_then(|h| {
                    h.object_lock_retain_until_date()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                }))
            })
        })
    }

    fn extend_retention(&self, key: &str, until: SystemTime) -> io::Result<()> {
        let Some(l) = *self.inner.lock.lock().expect("not poisoned") else {
            return Ok(());
        };
        if self.retention(key)?.is_some_and(|t| t >= until) {
            return Ok(());
        }
        let k = key.to_string();
        let mode = match l.mode {
            LockMode::Governance => ObjectLockRetentionMode::Governance,
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
        };
        self.run(move |i| {
            Box::pin(async move {
                Counters::add(&COUNTERS.other, 1);
                i.client
                    .put_object_retention()
                    .bucket(&i.bucket)
                    .key(i.full(&k))
                    .set_version_id(i.version_for(&k).await?)
                    .retention(
                        ObjectLockRetention::builder()
                            .mode(mode)
                            .retain_until_date(DateTime::from(until))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| s3_err("PutObjectRetention", &k, e))?;
                Ok(())
            })
        })
    }

    fn stats(&self) -> StoreStats {
        process_stats()
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Background uploads nobody waited for are abandoned objects prune reclaims; wait
        // for them anyway so a process exiting normally leaves none half-sent.
        let _ = self.flush();
    }
}
