//! The backup pipeline.
//!
//! ```text
//! walker → readers (N threads)    workers (N threads)          writer (1 thread)
//! read → CDC chunk → keyed id  →  zstd → AES-256-GCM       →   pack → tmp → fsync → rename
//!        dedup against chain       (bounded queue)              (bounded queue)
//! ```
//! Queues are bounded, chunks are at most 4 MiB, chunk buffers are reused ([`BufPool`]) and
//! a local repository's packs are streamed to their temporary file (S3 holds each ~16 MiB
//! pack in memory until uploaded), so memory stays bounded whatever the size of the input. A point becomes visible only when its point file is
//! renamed into place, after all its packs and its index are durable: an interrupted backup
//! leaves unreferenced packs, never a broken recovery point.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender};
use indicatif::ProgressBar;

use super::chunker::{read_chunks, CdcParams};
use super::*;
use crate::repo::format::{chunk_compressor, encode_payload_in_place};
use crate::repo::fsx::XattrSource;
use crate::repo::now_rfc3339;
use crate::repo::pack::PackBuilder;

/// Content chunks of chains with a keyed gear table (all chains format 2 creates): FastCDC
/// skips the first `CHUNK_MIN` bytes of every chunk without looking for a cut point, so 512
/// KiB (restic's minimum) instead of 256 KiB scans a third less of a large file.
pub const CHUNK_MIN: u32 = 512 * 1024;
/// The minimum of chains migrated from format 1, which keep that format's boundaries (and so
/// deduplicate against the chunks they already hold).
pub const V1_CHUNK_MIN: u32 = 256 * 1024;
pub const CHUNK_AVG: u32 = 1024 * 1024;
pub const CHUNK_MAX: u32 = 4 * 1024 * 1024;
/// File index chunks are smaller so that small changes keep most of it deduplicated.
pub const TREE_CHUNK_MIN: u32 = 16 * 1024;
pub const TREE_CHUNK_AVG: u32 = 64 * 1024;
pub const TREE_CHUNK_MAX: u32 = 256 * 1024;
pub const PACK_TARGET: usize = 16 * 1024 * 1024;

/// How a chain cuts file contents: with its keyed gear table and [`CHUNK_MIN`], or (migrated
/// from format 1, no table) as format 1 did.
fn content_cdc(gear: Option<Arc<super::chunker::GearTables>>) -> CdcParams {
    let min = if gear.is_some() {
        CHUNK_MIN
    } else {
        V1_CHUNK_MIN
    };
    CdcParams::new(min, CHUNK_AVG, CHUNK_MAX).with_gear(gear)
}

pub enum Source {
    Tree(PathBuf),
    Stdin {
        name: String,
        reader: Box<dyn Read + Send>,
    },
}

/// Live counters of a running backup, for progress bars and `--json` status lines. The
/// totals come from a pre-scan that runs alongside (`scanned` once it finished) when
/// `totals` is set: nobody reads them otherwise (`-q`, or stderr not a terminal), and the
/// pre-scan's walk of the tree costs about 3% of a full backup's CPU.
#[derive(Default, Debug)]
pub struct Status {
    pub totals: bool,
    pub files_done: std::sync::atomic::AtomicU64,
    pub bytes_done: std::sync::atomic::AtomicU64,
    pub total_files: std::sync::atomic::AtomicU64,
    pub total_bytes: std::sync::atomic::AtomicU64,
    pub scanned: std::sync::atomic::AtomicBool,
    pub current: std::sync::Mutex<String>,
}

impl Status {
    fn add(&self, files: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.files_done.fetch_add(files, Relaxed);
        self.bytes_done.fetch_add(bytes, Relaxed);
    }

    /// Counts the regular files and their bytes below `root` (no symlink followed), updating
    /// the totals as it goes; sets `scanned` at the end.
    pub fn prescan(&self, root: &Path, filter: &super::filter::Compiled) {
        use super::filter::DirContents;
        use std::sync::atomic::Ordering::Relaxed;
        let mut stack = vec![root.to_path_buf()];
        let (mut files, mut bytes) = (0u64, 0u64);
        while let Some(p) = stack.pop() {
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p.strip_prefix(root).unwrap_or(&p).as_os_str().as_bytes();
            if !rel.is_empty() && filter.skip(rel, &m).is_some() {
                continue;
            }
            if m.is_dir() {
                if filter.dir_contents(&p, &m) == DirContents::All {
                    if let Ok(rd) = fs::read_dir(&p) {
                        stack.extend(rd.flatten().map(|e| e.path()));
                    }
                }
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
                if files % 1024 == 0 {
                    self.total_files.store(files, Relaxed);
                    self.total_bytes.store(bytes, Relaxed);
                }
            }
        }
        self.total_files.store(files, Relaxed);
        self.total_bytes.store(bytes, Relaxed);
        self.scanned.store(true, Relaxed);
    }
}

pub struct BackupOptions {
    pub source: Source,
    /// Live counters (shared with whoever reports progress).
    pub status: Arc<Status>,
    pub compression_level: i32,
    pub workers: usize,
    pub progress: ProgressBar,
    /// Salt and parameters recorded in the point (passphrase chains).
    pub kdf: Option<KdfRecord>,
    /// What a tree backup leaves out.
    pub filter: super::filter::Compiled,
    /// A copy (`arca copy --encrypt-on target`): the time, host and source of the point it
    /// copies, recorded instead of this run's.
    pub origin: Option<Origin>,
}

/// Where a copied point came from.
#[derive(Clone, Debug)]
pub struct Origin {
    pub time: String,
    pub hostname: String,
    pub source: String,
    pub point_id: Id16,
}

pub struct BackupOutcome {
    pub record: PointRecord,
    pub body: PointBody,
    /// True when nothing was deduplicated against an earlier point of the chain.
    pub full: bool,
    /// Distinct nonces used for chunks (for tests of nonce uniqueness).
    pub chunks_sealed: u64,
    /// The signal that stopped the run: the point is then a checkpoint (kind "checkpoint")
    /// holding the files finished so far, so that the next run reuses their chunks.
    pub interrupted: Option<i32>,
}

/// The kind of a point an interrupted backup wrote: only whole files, never a parent for
/// unchanged-file detection, never "latest"; its chunks deduplicate the next run.
pub const CHECKPOINT: &str = "checkpoint";

struct Work {
    id: Id32,
    /// The chunk, after a byte of room when `room` (read so by [`read_chunks`]): a chunk
    /// stored raw is then sealed where it lies, its payload type written into that byte.
    data: Vec<u8>,
    room: bool,
}

/// Chunk buffers handed back once used (a chunk's plaintext after it is sealed, a sealed
/// chunk after it is copied into its pack), so a backup does not allocate, fault in and free
/// a megabyte or more per chunk. The allocator kept freed chunk buffers of several threads
/// apart and the peak RSS grew with them; a pool of at most `cap` keeps what is reused.
///
/// The pool also keeps the budget of chunk bytes in flight between the chunkers and the
/// pack writer. The queues between them are deep, so that with many small chunks the
/// threads rarely wait on each other (on the README's generated set: a sixth of the context
/// switches, 10% less time than queues of 4), and the budget, not their depth, bounds the
/// memory they hold when chunks are large.
struct BufPool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    budget: Mutex<Budget>,
    freed: std::sync::Condvar,
    budget_cap: usize,
}

#[derive(Default)]
struct Budget {
    reserved: usize,
    waiting: usize,
    closed: bool,
}

/// Chunk bytes in flight at most (one chunk of any length always fits).
const BYTES_IN_FLIGHT: usize = 8 << 20;
/// The capacity of a pool buffer: the largest chunk, or its sealed form (zstd's bound, the
/// payload byte and the tag).
const POOL_BUF: usize = CHUNK_MAX as usize + (64 << 10);
/// Chunks in each queue at most.
const CHUNKS_QUEUED: usize = 32;

impl BufPool {
    fn new(cap: usize) -> Self {
        let (tx, rx) = bounded(cap);
        BufPool {
            tx,
            rx,
            budget: Mutex::default(),
            freed: std::sync::Condvar::new(),
            budget_cap: BYTES_IN_FLIGHT,
        }
    }

    /// Waits until `n` more chunk bytes fit in the budget and reserves them; false once the
    /// writer has ended (the pipeline stopped).
    fn reserve(&self, n: usize) -> bool {
        let mut b = self.budget.lock().expect("budget");
        while !b.closed && b.reserved > 0 && b.reserved + n > self.budget_cap {
            b.waiting += 1;
            b = self.freed.wait(b).expect("budget");
            b.waiting -= 1;
        }
        b.reserved += n;
        !b.closed
    }

    /// Returns `n` bytes to the budget (a chunk is in its pack).
    fn release(&self, n: usize) {
        let mut b = self.budget.lock().expect("budget");
        b.reserved = b.reserved.saturating_sub(n);
        if b.waiting > 0 {
            self.freed.notify_all();
        }
    }

    /// The writer has ended: nobody waits for the budget any more.
    fn close(&self) {
        self.budget.lock().expect("budget").closed = true;
        self.freed.notify_all();
    }

    /// An empty buffer with room for any chunk, plain or sealed, reused when one is free.
    /// Every buffer has the same capacity, so the allocator reuses what was freed (buffers
    /// of mixed sizes, dropped and allocated again, left the peak RSS 20 MB higher).
    fn take(&self) -> Vec<u8> {
        match self.rx.try_recv() {
            Ok(mut v) if v.capacity() >= POOL_BUF => {
                v.clear();
                v
            }
            _ => Vec::with_capacity(POOL_BUF),
        }
    }

    /// Keeps `v` for reuse, unless the pool is full or `v` is not one of its buffers.
    fn give(&self, v: Vec<u8>) {
        if v.capacity() >= POOL_BUF {
            let _ = self.tx.try_send(v);
        }
    }
}

struct SealedChunk {
    id: Id32,
    sealed: Vec<u8>,
    raw_len: u32,
}

struct WriterResult {
    /// The point's index plaintext as it is built: room for the nonce, the record count,
    /// then one record per chunk written (80 bytes each, no other list of them is kept).
    index: Vec<u8>,
    bytes_stored: u64,
}

/// The chunks the chain holds already, and those this run has sent to be stored.
struct Known<'a> {
    index: &'a ChainIndex,
    fresh: HashSet<Id32>,
}

impl Known<'_> {
    fn contains(&self, id: &Id32) -> bool {
        self.fresh.contains(id) || self.index.contains(id)
    }

    /// True the first time `id` is seen (its chunk must be stored).
    fn insert(&mut self, id: Id32) -> bool {
        !self.index.contains(&id) && self.fresh.insert(id)
    }
}

/// The parent point's file index, read along with the walk: both are in the same order
/// (depth first, names sorted bytewise), so one pass over it finds each file's earlier
/// entry and memory does not grow with the number of files. Another thread reads it
/// (decrypts, decompresses and parses it: a third of an unchanged incremental's walk) and
/// hands it over in batches through a short queue.
struct ParentCursor {
    rx: Option<Receiver<Vec<Result<ParentEntry>>>>,
    batch: std::vec::IntoIter<Result<ParentEntry>>,
    next: Option<ParentEntry>,
    error: Option<Error>,
}

/// A listed directory entry: kept to be stat'ed through its directory when its turn comes,
/// or stat'ed already (deep down, see `walk_dir`).
enum Entry {
    Listed(fs::DirEntry),
    Stat(std::io::Result<fs::Metadata>),
}

/// Directory levels whose descriptor the walk keeps open below them (see `walk_dir`).
const DIRS_HELD_OPEN: usize = 64;
/// Linux's limit on a path given to a system call, its final NUL included.
const PATH_MAX: usize = 4096;

/// Parent entries per batch, and batches queued.
const PARENT_BATCH: usize = 256;
const PARENT_BATCHES: usize = 4;

/// An entry of the parent point's file index.
struct ParentEntry {
    entry: TreeEntry,
    /// A file whose every chunk the chain's index lists (looked up on the parent reader's
    /// thread, off the walk's); false says nothing (the chunk may have been stored by this
    /// backup: the walk looks again).
    chunks_indexed: bool,
}

/// Reads `stream` into `tx` in batches until its end, its first error, or until the cursor
/// is dropped.
fn read_parent(stream: TreeStream<'_>, index: &ChainIndex, tx: Sender<Vec<Result<ParentEntry>>>) {
    let mut batch = Vec::with_capacity(PARENT_BATCH);
    let mut stream = stream.peekable();
    while stream.peek().is_some() {
        let mut failed = false;
        for r in stream.by_ref().take(PARENT_BATCH) {
            failed = r.is_err();
            batch.push(r.map(|entry| ParentEntry {
                chunks_indexed: entry.kind == EntryType::File && entry.hardlink.is_none(),
                entry,
            }));
            if failed {
                break;
            }
        }
        let files = || {
            batch
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .filter(|p| p.chunks_indexed)
        };
        // Every look-up's first cache misses at once, then the look-ups.
        let mut touched = 0u64;
        for p in files() {
            for c in &p.entry.chunks {
                touched ^= index.touch(c);
            }
        }
        std::hint::black_box(touched);
        for p in batch.iter_mut().filter_map(|r| r.as_mut().ok()) {
            p.chunks_indexed = p.chunks_indexed && p.entry.chunks.iter().all(|c| index.contains(c));
        }
        let full = std::mem::replace(&mut batch, Vec::with_capacity(PARENT_BATCH))
            .into_iter()
            .map(|r| {
                r.map_err(|e| match e {
                    Error::Integrity { object, detail } => Error::Integrity {
                        object: format!("the parent point's file index ({object})"),
                        detail,
                    },
                    other => other,
                })
            })
            .collect();
        if tx.send(full).is_err() || failed {
            return;
        }
    }
}

/// The order of the walk: path components compared one by one (so `a/x` comes before
/// `a-b`, as `a`'s contents are walked right after `a`).
fn walk_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

impl ParentCursor {
    /// The parent's entry of `rel`; `rel` must come after every path asked before.
    fn find(&mut self, rel: &[u8]) -> Option<ParentEntry> {
        loop {
            if self.next.is_none() {
                let item = match self.batch.next() {
                    Some(item) => Some(item),
                    None => match self.rx.as_ref()?.recv() {
                        Ok(b) => {
                            self.batch = b.into_iter();
                            self.batch.next()
                        }
                        Err(_) => None,
                    },
                };
                match item {
                    Some(Ok(e)) => self.next = Some(e),
                    Some(Err(e)) => {
                        self.error = Some(e);
                        self.rx = None;
                        return None;
                    }
                    None => {
                        self.rx = None;
                        return None;
                    }
                }
            }
            let p = self.next.as_ref().expect("just read");
            match walk_order(p.entry.path_raw(), rel) {
                std::cmp::Ordering::Less => self.next = None,
                std::cmp::Ordering::Equal => return self.next.take(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }
}

/// The file index being written: entries are encoded as they come and cut into chunks
/// (content-defined, as if the whole index were split at once) that join the data pipeline.
struct TreeOut {
    cdc: CdcParams,
    pending: Vec<u8>,
    ids: Vec<Id32>,
    bytes: u64,
    entries: u64,
    uids: std::collections::BTreeSet<u32>,
    gids: std::collections::BTreeSet<u32>,
}

impl TreeOut {
    /// False if the pipeline has stopped.
    fn push(&mut self, e: &TreeEntry, c: &mut Chunker<'_>) -> bool {
        self.uids.insert(e.uid);
        self.gids.insert(e.gid);
        let before = self.pending.len();
        crate::repo::tree_bin::encode_entry(e, &mut self.pending);
        self.bytes += (self.pending.len() - before) as u64;
        self.entries += 1;
        if self.pending.len() >= 4 * TREE_CHUNK_MAX as usize {
            return self.cut(c, false);
        }
        true
    }

    /// Sends the chunks no later entry can change (all that is left, when `last`).
    fn cut(&mut self, c: &mut Chunker<'_>, last: bool) -> bool {
        let ids = &mut self.ids;
        cut_ready(&self.cdc, &mut self.pending, last, |chunk| {
            Chunker::put(c.idk, c.known, &c.tx, c.pool, &mut c.stats, chunk, ids)
        })
    }
}

/// Entries handed from the walk to the thread that writes the file index, in batches.
const INDEX_BATCH: usize = 256;
const INDEX_BATCHES: usize = 4;

/// The walk's end of the file index: entries go in walk order to the `arca-index` thread
/// (encoding, cutting and hashing the index took a fifth of an unchanged incremental's walk).
struct IndexFeed {
    batch: Vec<TreeEntry>,
    tx: Option<Sender<Vec<TreeEntry>>>,
}

impl IndexFeed {
    /// False once the index thread has stopped (the pipeline failed).
    fn push(&mut self, e: TreeEntry) -> bool {
        self.batch.push(e);
        self.batch.len() < INDEX_BATCH || self.send()
    }

    fn send(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(INDEX_BATCH));
        self.tx.as_ref().is_some_and(|tx| tx.send(full).is_ok())
    }

    /// Sends what is left and lets the index thread finish.
    fn close(&mut self) -> bool {
        let ok = self.send();
        self.tx = None;
        ok
    }
}

/// The `arca-index` thread: encodes the entries into `tree` and cuts the index into chunks
/// for the data pipeline, the last ones once the walk has ended. Returns the index, the
/// chunk statistics, and false if the pipeline stopped.
fn write_index(
    rx: Receiver<Vec<TreeEntry>>,
    mut tree: TreeOut,
    mut ch: Chunker<'_>,
) -> (TreeOut, PointStats, bool) {
    let mut alive = true;
    'batches: for batch in rx.iter() {
        for e in &batch {
            if !tree.push(e, &mut ch) {
                alive = false;
                break 'batches;
            }
        }
    }
    // The walk ends by closing the channel: only then is the rest of the index cut.
    drop(rx);
    alive = alive && tree.cut(&mut ch, true);
    (tree, ch.stats, alive)
}

/// Hands `emit` the chunks of `pending` that later bytes cannot change (those that start at
/// least a maximum chunk size before its end; all of them when `last`) and removes them.
/// Cut this way as bytes arrive, a stream gets the chunks it would get split at once.
/// Returns false as soon as `emit` does.
fn cut_ready(
    cdc: &CdcParams,
    pending: &mut Vec<u8>,
    last: bool,
    mut emit: impl FnMut(&[u8]) -> bool,
) -> bool {
    let max = cdc.max_size();
    let mut at = 0;
    let mut alive = true;
    while alive && at < pending.len() && (last || pending.len() - at >= max) {
        let n = cdc.cut(&pending[at..]);
        alive = emit(&pending[at..at + n]);
        at += n;
    }
    pending.drain(..at);
    alive
}

/// Sink for chunks: dedups, and hands new ones to the workers.
struct Chunker<'a> {
    idk: &'a ChunkIdKey,
    cdc: CdcParams,
    known: &'a Mutex<Known<'a>>,
    tx: Sender<Work>,
    pool: &'a BufPool,
    stats: PointStats,
    progress: &'a ProgressBar,
    status: &'a Status,
}

/// What [`Chunker::admit`] found of a chunk.
enum Admit {
    /// Stored already (by this backup or an earlier point of the chain).
    Known,
    /// New: counted, its room reserved in the pool; the caller sends it to the workers.
    New(Id32),
    /// The pipeline has stopped (the writer failed).
    Stopped,
}

impl Chunker<'_> {
    /// Records a chunk's id in `out` and decides whether it is new (the one place that
    /// counts new chunks and reserves their room).
    fn admit(
        idk: &ChunkIdKey,
        known: &Mutex<Known<'_>>,
        pool: &BufPool,
        stats: &mut PointStats,
        data: &[u8],
        out: &mut Vec<Id32>,
    ) -> Admit {
        let id = Id32(idk.id(data));
        out.push(id);
        if !known.lock().expect("known chunks").insert(id) {
            return Admit::Known;
        }
        stats.chunks_new += 1;
        stats.bytes_new += data.len() as u64;
        if pool.reserve(data.len()) {
            Admit::New(id)
        } else {
            Admit::Stopped
        }
    }

    /// Returns false if the pipeline has stopped (the writer failed).
    fn put(
        idk: &ChunkIdKey,
        known: &Mutex<Known<'_>>,
        tx: &Sender<Work>,
        pool: &BufPool,
        stats: &mut PointStats,
        data: &[u8],
        out: &mut Vec<Id32>,
    ) -> bool {
        match Self::admit(idk, known, pool, stats, data, out) {
            Admit::Known => true,
            Admit::Stopped => false,
            Admit::New(id) => {
                let mut buf = pool.take();
                buf.reserve_exact(data.len()); // not doubled: a chunk is as large as it gets
                buf.extend_from_slice(data);
                tx.send(Work {
                    id,
                    data: buf,
                    room: false,
                })
                .is_ok()
            }
        }
    }

    /// [`Chunker::put`] of a chunk the caller owns (a bundle): a new one goes to the workers
    /// as it is, without a copy; `data` is left empty, with a pool buffer's room when it went.
    fn put_owned(&mut self, data: &mut Vec<u8>, out: &mut Vec<Id32>) -> bool {
        match Self::admit(self.idk, self.known, self.pool, &mut self.stats, data, out) {
            Admit::Known => {
                data.clear();
                true
            }
            Admit::Stopped => false,
            Admit::New(id) => {
                let full = std::mem::replace(data, self.pool.take());
                self.tx
                    .send(Work {
                        id,
                        data: full,
                        room: false,
                    })
                    .is_ok()
            }
        }
    }

    /// Reads a small file whole, for a bundle (a file grown past [`SMALL_FILE`] meanwhile is
    /// read no further: its changed size makes the caller read it again).
    #[allow(clippy::type_complexity)]
    fn read_small(
        &mut self,
        f: &fs::File,
        len: u64,
    ) -> std::result::Result<(Vec<Id32>, u64, Option<Vec<u8>>), String> {
        // Room for the length the walk saw and one byte more, not grown by doubling from
        // nothing. One read usually does: when it returns exactly that length, the read
        // that would find the end is left out (a file that grew or changed meanwhile is
        // caught by the check of its size and times after the read, and read again).
        let want = len.min(SMALL_FILE) as usize;
        let mut data = Vec::with_capacity(want + 1);
        let first = match rustix::io::read(f, rustix::buffer::spare_capacity(&mut data)) {
            Ok(n) => n,
            // Read again below, as a read interrupted by a signal always is.
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => return Err(std::io::Error::from(e).to_string()),
        };
        if first != want {
            f.take(SMALL_FILE - first as u64)
                .read_to_end(&mut data)
                .map_err(|e| e.to_string())?;
        }
        let n = data.len() as u64;
        self.stats.bytes_read += n;
        self.progress.inc(n);
        self.status.add(0, n);
        let data = (n > 0).then_some(data);
        Ok((Vec::new(), n, data))
    }

    /// Chunks a stream (of `expected` bytes, if known); returns ids and bytes read, or the
    /// read error. Each chunk is read into a pool buffer of its own, which goes to the
    /// workers as it is when the chunk is new (back to the pool when it is not).
    fn stream(
        &mut self,
        r: impl Read,
        expected: Option<u64>,
    ) -> std::result::Result<(Vec<Id32>, u64), String> {
        let mut ids = Vec::new();
        let mut alive = true;
        let Chunker {
            idk,
            cdc,
            known,
            tx,
            pool,
            stats,
            progress,
            status,
        } = self;
        let mut interrupted = false;
        let n = read_chunks(
            r,
            cdc,
            expected,
            1,
            || pool.take(),
            |v| pool.give(v),
            |c| {
                if crate::signals::requested().is_some() {
                    interrupted = true;
                    return false;
                }
                let len = c.len() as u64 - 1;
                stats.bytes_read += len;
                progress.inc(len);
                status.add(0, len);
                alive = match Self::admit(idk, known, pool, stats, &c[1..], &mut ids) {
                    Admit::Known => {
                        pool.give(std::mem::take(c));
                        true
                    }
                    Admit::Stopped => false,
                    Admit::New(id) => tx
                        .send(Work {
                            id,
                            data: std::mem::take(c),
                            room: true,
                        })
                        .is_ok(),
                };
                alive
            },
        )
        .map_err(|e| e.to_string())?;
        if interrupted {
            return Err(INTERRUPTED.into());
        }
        if !alive {
            return Err("pipeline stopped".into());
        }
        Ok((ids, n))
    }
}

const INTERRUPTED: &str = "interrupted";

fn mtime_ns(m: &fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn ctime_ns(m: &fs::Metadata) -> i128 {
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

fn path_fields(rel: &[u8]) -> (String, Option<Vec<u8>>) {
    match std::str::from_utf8(rel) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (String::new(), Some(rel.to_vec())),
    }
}

fn entry_from_meta(rel: &[u8], kind: EntryType, m: &fs::Metadata) -> TreeEntry {
    let (path, path_b64) = path_fields(rel);
    let mut e = TreeEntry::new(path, path_b64, kind);
    e.mode = m.mode() & 0o7777;
    e.uid = m.uid();
    e.gid = m.gid();
    e.mtime_ns = mtime_ns(m);
    e.inode = m.ino();
    e.ctime_ns = ctime_ns(m);
    e
}

/// Size, mtime and ctime: what must not change while a file is read.
fn stamp(m: &fs::Metadata) -> (u64, i128, i128) {
    (m.len(), mtime_ns(m), ctime_ns(m))
}

/// Opens a source entry the walk saw as `seen` without following a symlink in its place
/// (`O_NOFOLLOW`; `O_NONBLOCK`, so a FIFO swapped in does not block), and refuses it unless it
/// is that very entry (device and inode): a directory of its path replaced by a symlink
/// meanwhile leads somewhere else, and is refused too. `seen` came from a listing of the
/// parent directory, itself opened and checked so (the root is the user's own choice).
fn open_seen(abs: &Path, at: At<'_>, seen: &fs::Metadata, dir: bool) -> std::io::Result<fs::File> {
    use rustix::fs::OFlags;
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    open_checked(abs, at, seen, flags).map(fs::File::from)
}

/// Where an entry is opened from: by its name in its directory's descriptor, which the walk
/// holds open (one name looked up by the kernel, and no symlink in a directory above it can
/// lead elsewhere), or, without one (the root, entries deep down), by its absolute path.
type At<'a> = Option<(&'a std::os::fd::OwnedFd, &'a std::ffi::OsStr)>;

/// [`open_seen`] for an entry that is not read, only described (a symlink, a device, a
/// FIFO): an `O_PATH` descriptor, which opens no device and reads no data, but through which
/// a link's target and the entry's attributes are those of the entry the walk listed.
fn locate_seen(
    abs: &Path,
    at: At<'_>,
    seen: &fs::Metadata,
) -> std::io::Result<std::os::fd::OwnedFd> {
    open_checked(abs, at, seen, rustix::fs::OFlags::PATH)
}

fn open_checked(
    abs: &Path,
    at: At<'_>,
    seen: &fs::Metadata,
    flags: rustix::fs::OFlags,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match at {
        Some((dir, name)) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        None => rustix::fs::open(abs, flags, Mode::empty()),
    }
    .map_err(|e| {
        let e = std::io::Error::from(e);
        if crate::repo::fsx::is_symlink_refusal(&e) && !flags.contains(OFlags::PATH) {
            std::io::Error::other(
                "replaced by a symlink while it was backed up: not followed, not stored",
            )
        } else {
            e
        }
    })?;
    let now = rustix::fs::fstat(&fd)?;
    if (now.st_dev, now.st_ino) != (seen.dev(), seen.ino()) {
        return Err(std::io::Error::other(
            "replaced while it was backed up (not the entry the walk listed): not stored",
        ));
    }
    Ok(fd)
}

/// The target of the symlink `link` (an `O_PATH` descriptor of it).
fn link_target(link: &std::os::fd::OwnedFd) -> std::io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(link, "", Vec::new())?.into_bytes())
}

/// A path that names the open directory `f` itself (procfs), whatever happens to the path it
/// was opened by: entries listed and looked up through it are that directory's.
fn fd_path(f: &impl std::os::fd::AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// How often a file that changes while it is read is read again before it is stored as
/// read and reported.
const TORN_RETRIES: u32 = 2;

/// A file the walker hands to a reader thread.
struct FileJob {
    seq: u64,
    abs: PathBuf,
    /// Its directory's descriptor and its name there (see [`At`]).
    at: Option<(Arc<std::os::fd::OwnedFd>, std::ffi::OsString)>,
    rel: Vec<u8>,
    meta: fs::Metadata,
}

/// What a reader made of a file: its entry (none if it could not be read), and what to
/// report about it.
struct FileDone {
    seq: u64,
    entry: Option<TreeEntry>,
    /// A small file's content, for the walker to bundle (its entry has no chunks yet).
    small: Option<Vec<u8>>,
    errors: Vec<SourceError>,
    skipped: Vec<SourceError>,
    stop: Option<Stop>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The pipeline failed (the writer stopped): nothing more can be stored.
    Pipeline,
    /// A signal asked to stop.
    Interrupted,
}

/// Files being read at once, at most (their entries wait in walk order).
const FILES_IN_FLIGHT: usize = 32;

/// Files shorter than this (and not empty) are stored in bundles: chunks holding several
/// small files one after the other, in walk order. One chunk per small file compressed each
/// file alone (tens of thousands of short compressions, each with its own tables) and gave
/// restores as many decompressions; a bundle compresses like a stretch of a tar stream.
const SMALL_FILE: u64 = 128 << 10;
/// A bundle ends after a file that takes it to at least this length and whose last bytes
/// hash (keyed) to a cut, so that the same files in the same order make the same bundles
/// (and dedup) wherever they are in the walk...
const BUNDLE_MIN: usize = 512 << 10;
/// ... and before a file that would take it beyond this.
const BUNDLE_MAX: usize = 1 << 20;
/// Entries held behind an open bundle at most (entries after a bundled file wait for the
/// bundle's id to keep the file index in walk order).
const BUNDLE_HELD: usize = 4096;

/// The bundle being filled by the walker, and the entries waiting for it.
#[derive(Default)]
struct Bundle {
    data: Vec<u8>,
    /// In walk order, each with whether it is in this bundle (`at` set, no chunks yet);
    /// the others include unchanged files of earlier bundles.
    held: Vec<(TreeEntry, bool)>,
}

/// Whether a bundle ends after a small file: a keyed hash of its last bytes, one in eight.
fn bundle_cut_after(idk: &ChunkIdKey, file: &[u8]) -> bool {
    let tail = &file[file.len().saturating_sub(64)..];
    idk.id(tail)[0] & 7 == 0
}

/// An entry of the file index waiting for its turn: ready, or a file still being read.
enum Slot {
    Ready(Box<TreeEntry>),
    Reading(u64),
}

fn source_error(path: &Path, e: impl std::fmt::Display) -> SourceError {
    SourceError {
        path: path.display().to_string(),
        error: e.to_string(),
    }
}

/// Extended attributes (ACLs among them) of an entry, read from `src`: the entry opened, or
/// located by [`locate_seen`] (never by its path: it may lead elsewhere by now).
fn describe_into(
    abs: &Path,
    e: &mut TreeEntry,
    src: crate::repo::fsx::XattrSource<'_>,
    errors: &mut Vec<SourceError>,
    skipped: &mut Vec<SourceError>,
) {
    use crate::repo::fsx::read_xattrs;
    match read_xattrs(src) {
        Ok((kept, odd)) => {
            e.xattrs = kept
                .into_iter()
                .map(|(name, value)| Xattr { name, value })
                .collect();
            for n in odd {
                skipped.push(source_error(
                    abs,
                    format!(
                        "extended attribute {:?} (its name is not UTF-8) not kept",
                        String::from_utf8_lossy(&n)
                    ),
                ));
            }
        }
        Err(err) => errors.push(source_error(
            abs,
            format!("read extended attributes: {err}"),
        )),
    }
}

/// Reads, chunks and hashes one file (on a reader thread). A file that changes while it is
/// read (size, mtime or ctime differ before and after) is read again; if it keeps changing
/// it is stored as read and reported.
fn read_file(ch: &mut Chunker<'_>, job: FileJob) -> FileDone {
    let FileJob {
        seq,
        abs,
        at,
        rel,
        meta: m,
    } = job;
    let at = at.as_ref().map(|(d, n)| (&**d, n.as_os_str()));
    let mut done = FileDone {
        seq,
        entry: None,
        small: None,
        errors: Vec::new(),
        skipped: Vec::new(),
        stop: None,
    };
    if let Ok(mut c) = ch.status.current.lock() {
        c.clear();
        c.push_str(&String::from_utf8_lossy(&rel));
    }
    let mut before = stamp(&m);
    let seen = m.clone();
    let mut meta = m;
    crate::fault::pause_at(&rel);
    for attempt in 0..=TORN_RETRIES {
        let f = match open_seen(&abs, at, &seen, false) {
            Ok(f) => f,
            Err(err) => {
                done.errors.push(source_error(&abs, err));
                return done;
            }
        };
        let small = meta.len() > 0 && meta.len() < SMALL_FILE;
        let read = if small {
            ch.read_small(&f, meta.len())
        } else {
            ch.stream(&f, Some(meta.len()))
                .map(|(ids, n)| (ids, n, None))
        };
        match read {
            Ok((ids, n, content)) => {
                let after = match f.metadata() {
                    Ok(a) => a,
                    Err(err) => {
                        done.errors.push(source_error(&abs, err));
                        return done;
                    }
                };
                if stamp(&after) != before || n != after.len() {
                    if attempt < TORN_RETRIES {
                        before = stamp(&after);
                        meta = after;
                        continue;
                    }
                    done.errors.push(source_error(
                        &abs,
                        format!(
                            "changed while it was read ({} tries): stored as last read, it may be \
                             inconsistent",
                            TORN_RETRIES + 1
                        ),
                    ));
                    meta = after;
                }
                let mut e = entry_from_meta(&rel, EntryType::File, &meta);
                describe_into(
                    &abs,
                    &mut e,
                    XattrSource::Fd(f.as_fd()),
                    &mut done.errors,
                    &mut done.skipped,
                );
                ch.status.add(1, 0);
                e.size = n;
                e.chunks = ids;
                ch.stats.files += 1;
                ch.stats.bytes_total += n;
                done.entry = Some(e);
                done.small = content;
                return done;
            }
            Err(err) if err == "pipeline stopped" => done.stop = Some(Stop::Pipeline),
            Err(err) if err == INTERRUPTED => done.stop = Some(Stop::Interrupted),
            Err(err) => done.errors.push(source_error(&abs, err)),
        }
        return done;
    }
    done
}

fn add_stats(a: &mut PointStats, b: &PointStats) {
    a.files += b.files;
    a.dirs += b.dirs;
    a.symlinks += b.symlinks;
    a.bytes_total += b.bytes_total;
    a.bytes_read += b.bytes_read;
    a.chunks_new += b.chunks_new;
    a.bytes_new += b.bytes_new;
    a.bytes_stored += b.bytes_stored;
    a.files_unchanged += b.files_unchanged;
    a.excluded += b.excluded;
    a.bundles += b.bundles;
}

struct Walker<'a, 'b> {
    chunker: Chunker<'a>,
    filter: super::filter::Compiled,
    /// (device, inode) of files with more than one link → the path first recorded.
    links: HashMap<(u64, u64), Vec<u8>>,
    skipped: Vec<SourceError>,
    parent: ParentCursor,
    index: IndexFeed,
    /// Files go to the reader threads here (none: read on this thread).
    jobs: Option<Sender<FileJob>>,
    done: Receiver<FileDone>,
    /// Entries in walk order, some waiting for their file to be read.
    order: std::collections::VecDeque<Slot>,
    arrived: HashMap<u64, FileDone>,
    next_seq: u64,
    in_flight: usize,
    errors: Vec<SourceError>,
    /// The pipeline failed (the writer stopped): nothing more can be stored.
    stopped: bool,
    /// A signal asked to stop: the files finished so far become a checkpoint.
    interrupted: bool,
    bundle: Bundle,
    _p: std::marker::PhantomData<&'b ()>,
}

impl Walker<'_, '_> {
    /// Records an entry in the file index, after the files before it in walk order.
    fn push(&mut self, e: TreeEntry) {
        if self.order.is_empty() {
            self.emit(e);
        } else {
            self.order.push_back(Slot::Ready(Box::new(e)));
        }
    }

    fn emit(&mut self, e: TreeEntry) {
        self.emit_with(e, None);
    }

    /// Records an entry in walk order; a small file's content goes into the open bundle,
    /// and its entry (with those after it) waits for the bundle's id.
    fn emit_with(&mut self, mut e: TreeEntry, small: Option<Vec<u8>>) {
        // After a stop, later entries are left out: a checkpoint holds whole files, each
        // one walked before the stop.
        if self.stopped || self.interrupted {
            return;
        }
        match small {
            Some(data) => {
                if self.bundle.data.len() + data.len() > BUNDLE_MAX {
                    self.cut_bundle();
                }
                e.at = Some(self.bundle.data.len() as u64);
                // A bundle's buffer is handed on whole (no copy): room for the largest.
                let room = BUNDLE_MAX - self.bundle.data.len();
                self.bundle.data.reserve_exact(room);
                self.bundle.data.extend_from_slice(&data);
                self.bundle.held.push((e, true));
                if (self.bundle.data.len() >= BUNDLE_MIN
                    && bundle_cut_after(self.chunker.idk, &data))
                    || self.bundle.held.len() >= BUNDLE_HELD
                {
                    self.cut_bundle();
                }
            }
            None if self.bundle.held.is_empty() => {
                if !self.index.push(e) {
                    self.stopped = true;
                }
            }
            None => {
                self.bundle.held.push((e, false));
                if self.bundle.held.len() >= BUNDLE_HELD {
                    self.cut_bundle();
                }
            }
        }
    }

    /// Stores the open bundle and records the entries that waited for it.
    fn cut_bundle(&mut self) {
        let held = std::mem::take(&mut self.bundle.held);
        let mut id = None;
        if !self.bundle.data.is_empty() {
            let mut ids = Vec::with_capacity(1);
            if !self.chunker.put_owned(&mut self.bundle.data, &mut ids) {
                self.stopped = true;
            }
            self.chunker.stats.bundles += 1;
            self.bundle.data.clear();
            id = ids.pop();
        }
        if self.stopped {
            return;
        }
        for (mut e, bundled) in held {
            if bundled {
                e.chunks = id.into_iter().collect();
            }
            if !self.index.push(e) {
                self.stopped = true;
                return;
            }
        }
    }

    /// Hands a file to the readers (or reads it here when there are none).
    fn dispatch(&mut self, job: FileJob) {
        let Some(jobs) = &self.jobs else {
            let d = read_file(&mut self.chunker, job);
            return self.settle(d);
        };
        let seq = job.seq;
        if jobs.send(job).is_err() {
            self.stopped = true;
            return;
        }
        self.order.push_back(Slot::Reading(seq));
        self.in_flight += 1;
        while self.in_flight >= FILES_IN_FLIGHT {
            self.wait_one();
        }
    }

    fn wait_one(&mut self) {
        match self.done.recv() {
            Ok(d) => {
                self.in_flight -= 1;
                self.arrived.insert(d.seq, d);
                self.flush();
            }
            Err(_) => {
                // Every reader is gone (they stop only when told, or on a panic).
                self.in_flight = 0;
                self.stopped = true;
            }
        }
    }

    /// Emits the entries at the front of the walk order that are ready.
    fn flush(&mut self) {
        while let Some(front) = self.order.front() {
            match front {
                Slot::Ready(_) => {
                    let Some(Slot::Ready(e)) = self.order.pop_front() else {
                        unreachable!()
                    };
                    self.emit(*e);
                }
                Slot::Reading(seq) => {
                    let Some(d) = self.arrived.remove(seq) else {
                        return;
                    };
                    self.order.pop_front();
                    self.settle(d);
                }
            }
        }
    }

    fn settle(&mut self, d: FileDone) {
        if self.stopped || self.interrupted {
            return;
        }
        self.errors.extend(d.errors);
        self.skipped.extend(d.skipped);
        match d.stop {
            Some(Stop::Pipeline) => self.stopped = true,
            Some(Stop::Interrupted) => self.interrupted = true,
            None => {
                if let Some(e) = d.entry {
                    self.emit_with(e, d.small);
                }
            }
        }
    }

    /// Waits for every file handed out and records the rest of the entries (those held
    /// behind the last bundle too, after an interruption as well: they were walked before).
    fn finish_files(&mut self) {
        while self.in_flight > 0 {
            self.wait_one();
        }
        self.flush();
        self.jobs = None;
        self.cut_bundle();
    }

    fn error(&mut self, path: &Path, e: impl std::fmt::Display) {
        // Listed once, in the command's summary (and in the point).
        tracing::debug!("cannot read {}: {e}", path.display());
        self.errors.push(SourceError {
            path: path.display().to_string(),
            error: e.to_string(),
        });
    }

    fn describe(&mut self, abs: &Path, e: &mut TreeEntry, src: XattrSource<'_>) {
        describe_into(abs, e, src, &mut self.errors, &mut self.skipped);
    }

    fn skip(&mut self, path: &Path, why: impl Into<String>) {
        self.skipped.push(SourceError {
            path: path.display().to_string(),
            error: why.into(),
        });
    }

    /// Lists the directory `dir` (opened and checked by [`open_seen`]) and visits its entries.
    fn walk_dir(&mut self, dir: fs::File, abs: &Path, rel: &[u8]) {
        // Listed through the open directory, never by its path again.
        let rd = match fs::read_dir(fd_path(&dir)) {
            Ok(rd) => rd,
            Err(e) => return self.error(abs, e),
        };
        // Entries are stat'ed through their directory's descriptor (one name looked up, not
        // the whole path: path lookups had an eighth of an unchanged incremental's CPU),
        // which stays open while the walk goes below it; deep down, all at once while it is
        // listed, so that a deep tree does not hold a descriptor per level.
        let by_dir = rel.iter().filter(|c| **c == b'/').count() < DIRS_HELD_OPEN;
        // Its entries are opened by name in it (files by the readers, which share it).
        let held = by_dir.then(|| Arc::new(std::os::fd::OwnedFd::from(dir)));
        let mut names: Vec<(std::ffi::OsString, Entry)> = Vec::new();
        for e in rd {
            match e {
                Ok(e) if by_dir => names.push((e.file_name(), Entry::Listed(e))),
                Ok(e) => names.push((e.file_name(), Entry::Stat(e.metadata()))),
                Err(e) => self.error(abs, e),
            }
        }
        names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, entry) in names {
            if crate::signals::requested().is_some() {
                self.interrupted = true;
            }
            if self.stopped || self.interrupted {
                return;
            }
            let mut r = rel.to_vec();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.as_bytes());
            let abs = abs.join(&name);
            // A path too long for the kernel fails here, once, as everything else done by
            // path on it would.
            let m = if abs.as_os_str().len() >= PATH_MAX {
                Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::NAMETOOLONG.raw_os_error(),
                ))
            } else {
                match entry {
                    Entry::Listed(e) => e.metadata(),
                    Entry::Stat(m) => m,
                }
            };
            let at = held.as_ref().map(|d| (d, name.as_os_str()));
            self.visit_with(&abs, &r, Some(m), at);
        }
    }

    fn visit(&mut self, abs: &Path, rel: &[u8]) {
        self.visit_with(abs, rel, None, None)
    }

    /// [`Walker::visit`] with the entry's metadata when its directory gave it (`lstat`
    /// semantics either way: a symlink is not followed). Without it (the root) it is looked
    /// up by path: symlinks above the root are the user's choice.
    fn visit_with(
        &mut self,
        abs: &Path,
        rel: &[u8],
        m: Option<std::io::Result<fs::Metadata>>,
        held: Option<(&Arc<std::os::fd::OwnedFd>, &std::ffi::OsStr)>,
    ) {
        let at = held.map(|(d, n)| (&**d, n));
        let m = match m.unwrap_or_else(|| fs::symlink_metadata(abs)) {
            Ok(m) => m,
            Err(e) => return self.error(abs, e),
        };
        if self.filter.skip(rel, &m).is_some() {
            self.chunker.stats.excluded += 1;
            return;
        }
        let ft = m.file_type();
        if ft.is_dir() {
            use super::filter::DirContents;
            crate::fault::pause_at(rel);
            let dir = match open_seen(abs, at, &m, true) {
                Ok(d) => d,
                Err(e) => return self.error(abs, e),
            };
            // What the filters look for inside, through the open directory too.
            let here = fd_path(&dir);
            let contents = self.filter.dir_contents(&here, &m);
            if contents == DirContents::Nothing {
                self.chunker.stats.excluded += 1;
                return;
            }
            self.chunker.stats.dirs += 1;
            let mut e = entry_from_meta(rel, EntryType::Dir, &m);
            self.describe(abs, &mut e, XattrSource::Fd(dir.as_fd()));
            self.push(e);
            match contents {
                DirContents::All => self.walk_dir(dir, abs, rel),
                DirContents::TagOnly => {
                    let tag = super::filter::CACHEDIR_TAG;
                    let mut r = rel.to_vec();
                    r.push(b'/');
                    r.extend_from_slice(tag.as_bytes());
                    let m = fs::symlink_metadata(here.join(tag));
                    let held = Arc::new(std::os::fd::OwnedFd::from(dir));
                    let name = std::ffi::OsStr::new(tag);
                    self.visit_with(&abs.join(tag), &r, Some(m), Some((&held, name)));
                    self.chunker.stats.excluded += 1;
                }
                DirContents::Empty | DirContents::Nothing => {
                    self.chunker.stats.excluded += 1;
                }
            }
        } else if ft.is_symlink() {
            crate::fault::pause_at(rel);
            match locate_seen(abs, at, &m).and_then(|l| link_target(&l)) {
                Ok(t) => {
                    let mut e = entry_from_meta(rel, EntryType::Symlink, &m);
                    e.target = Some(t);
                    self.chunker.stats.symlinks += 1;
                    self.push(e);
                }
                Err(e) => self.error(abs, e),
            }
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = self.links.get(&(m.dev(), m.ino())) {
                    // A hard link to a file already recorded: its name only.
                    let mut e = entry_from_meta(rel, EntryType::File, &m);
                    e.hardlink = Some(first.clone());
                    e.size = m.len();
                    self.chunker.stats.files += 1;
                    self.push(e);
                    return;
                }
                self.links.insert((m.dev(), m.ino()), rel.to_vec());
            }
            self.file(abs, rel, &m, held);
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_fifo() {
                EntryType::Fifo
            } else if ft.is_char_device() {
                EntryType::Chardev
            } else if ft.is_block_device() {
                EntryType::Blockdev
            } else {
                let what = if ft.is_socket() {
                    "socket"
                } else {
                    "special file"
                };
                return self.skip(
                    abs,
                    format!("{what}: not backed up (it cannot be recreated)"),
                );
            };
            let located = match locate_seen(abs, at, &m) {
                Ok(l) => l,
                Err(e) => return self.error(abs, e),
            };
            let mut e = entry_from_meta(rel, kind, &m);
            e.rdev = m.rdev();
            self.describe(abs, &mut e, XattrSource::Located(&fd_path(&located)));
            self.push(e);
        }
    }

    fn file(
        &mut self,
        abs: &Path,
        rel: &[u8],
        m: &fs::Metadata,
        held: Option<(&Arc<std::os::fd::OwnedFd>, &std::ffi::OsStr)>,
    ) {
        let mut e = entry_from_meta(rel, EntryType::File, m);
        if let Some(ParentEntry {
            entry: p,
            chunks_indexed,
        }) = self.parent.find(rel)
        {
            let unchanged = p.kind == EntryType::File
                && p.hardlink.is_none()
                && p.size == m.size()
                && p.mtime_ns == e.mtime_ns
                && p.ctime_ns == e.ctime_ns
                && p.inode == e.inode
                && (chunks_indexed || {
                    let known = self.chunker.known.lock().expect("known chunks");
                    p.chunks.iter().all(|c| known.contains(c))
                });
            if unchanged {
                e.size = p.size;
                e.chunks = p.chunks;
                e.at = p.at;
                // Setting an attribute changes ctime: an unchanged ctime means the recorded
                // attributes still hold (no syscalls needed).
                e.xattrs = p.xattrs;
                self.chunker.stats.files += 1;
                self.chunker.stats.files_unchanged += 1;
                self.chunker.stats.bytes_total += e.size;
                self.chunker.progress.inc(e.size);
                self.chunker.status.add(1, e.size);
                self.push(e);
                return;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.dispatch(FileJob {
            seq,
            abs: abs.to_path_buf(),
            at: held.map(|(d, n)| (d.clone(), n.to_owned())),
            rel: rel.to_vec(),
            meta: m.clone(),
        });
    }
}

fn run_workers(
    n: usize,
    rx: Receiver<Work>,
    tx: Sender<SealedChunk>,
    sealer: Arc<ChunkSealer>,
    pool: Arc<BufPool>,
    place: PointPlace,
    level: i32,
) -> Vec<thread::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (rx, tx, sealer, pool) = (rx.clone(), tx.clone(), sealer.clone(), pool.clone());
            thread::Builder::new()
                .name(format!("arca-seal-{i}"))
                .spawn(move || {
                    let mut z = chunk_compressor(level);
                    let mut scratch = Vec::new();
                    for mut w in rx {
                        let raw_len = (w.data.len() - usize::from(w.room)) as u32;
                        let mut out = pool.take();
                        let in_place = if w.room {
                            encode_payload_in_place(&mut z, &mut w.data, &mut scratch, &mut out)
                        } else {
                            encode_payload_into(&mut z, &w.data, &mut scratch, &mut out);
                            false
                        };
                        // A chunk stored raw is sealed where it was read, not copied.
                        let (mut sealed, spare) = if in_place {
                            (w.data, out)
                        } else {
                            (out, w.data)
                        };
                        pool.give(spare);
                        sealer.seal_in_place(&w.id.0, &place.chunk_aad(&w.id), &mut sealed);
                        let c = SealedChunk {
                            id: w.id,
                            sealed,
                            raw_len,
                        };
                        if tx.send(c).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawn worker")
        })
        .collect()
}

fn run_writer(
    repo: Arc<RepoHandle>,
    rx: Receiver<SealedChunk>,
    header_sealer: Arc<Sealer>,
    pool: Arc<BufPool>,
    place: PointPlace,
    mut check: Option<crate::resolve::PassphraseCheck>,
) -> thread::JoinHandle<Result<WriterResult>> {
    thread::Builder::new()
        .name("arca-pack-writer".into())
        .spawn(move || {
            // However the writer ends, chunkers waiting for the budget stop waiting.
            struct Closes(Arc<BufPool>);
            impl Drop for Closes {
                fn drop(&mut self) {
                    self.0.close();
                }
            }
            let _closes = Closes(pool.clone());
            let mut res = WriterResult {
                index: vec![0; crate::crypto::NONCE_LEN + 4],
                bytes_stored: 0,
            };
            // A local repository takes each pack as a stream (a temporary file), so only
            // its header is held; S3 takes packs whole (uploaded from memory).
            let pack_err = |e| Error::io(format!("write a pack to {}", repo.0.root().display()), e);
            let new_pack = || -> Result<PackBuilder> {
                Ok(match repo.0.pack_sink()? {
                    Some(sink) => {
                        PackBuilder::streaming(&place.point_id, sink, 2).map_err(pack_err)?
                    }
                    None => PackBuilder::new(&place.point_id, PACK_TARGET + CHUNK_MAX as usize, 2),
                })
            };
            let commit =
                |mut fin: crate::repo::pack::FinishedPack, res: &mut WriterResult| -> Result<()> {
                    res.bytes_stored += fin.len;
                    match fin.sink.take() {
                        Some(sink) => repo.0.commit_pack(sink, &fin.id)?,
                        // S3 uploads it in the background (a bounded number at once); the writer
                        // waits for all of them before the index can name them.
                        None => repo
                            .0
                            .write_pack_owned(&fin.id, std::mem::take(&mut fin.bytes))?,
                    }
                    crate::fault::wrote("backup: pack written");
                    for e in &fin.entries {
                        push_index_record(
                            &mut res.index,
                            &IndexEntry {
                                chunk_id: e.chunk_id,
                                pack_id: fin.id,
                                offset: e.offset,
                                length: e.length,
                                raw_len: e.raw_len,
                            },
                        );
                    }
                    Ok(())
                };
            // A given passphrase still being checked: no pack is put in the repository
            // before it is found right. Until then finished packs wait (a few, as temporary
            // files, or in memory for S3); a wrong passphrase leaves only those temporary
            // files, removed as they are dropped.
            let mut held: Vec<crate::repo::pack::FinishedPack> = Vec::new();
            // `pack` is none at the end when the last pack was already finished (or no chunk
            // was new): the held ones still wait for the check.
            let mut flush = |pack: Option<PackBuilder>, res: &mut WriterResult, last: bool| {
                if let Some(pack) = pack {
                    held.push(pack.finish(&header_sealer, &place).map_err(pack_err)?);
                }
                if check.is_some() {
                    tracing::debug!(
                        "{} finished pack(s) held until the given passphrase is checked",
                        held.len()
                    );
                }
                if let Some(c) =
                    check.take_if(|c| last || held.len() >= HELD_PACKS || c.is_finished())
                {
                    c.wait()?;
                }
                if check.is_none() {
                    for fin in held.drain(..) {
                        commit(fin, res)?;
                    }
                }
                Ok::<(), Error>(())
            };
            // dropping rx on error stops the workers
            let mut pack: Option<PackBuilder> = None;
            for c in rx {
                let p = match &mut pack {
                    Some(p) => p,
                    None => pack.insert(new_pack()?),
                };
                p.add(c.id, &c.sealed, c.raw_len).map_err(pack_err)?;
                pool.give(c.sealed);
                pool.release(c.raw_len as usize);
                if p.len() >= PACK_TARGET {
                    flush(pack.take(), &mut res, false)?;
                }
            }
            flush(pack, &mut res, true)?;
            repo.0.flush()?;
            Ok(res)
        })
        .expect("spawn writer")
}

/// Finished packs a backup's writer holds back at most while a given passphrase is still
/// being checked (64 MiB: temporary files, or memory for S3).
const HELD_PACKS: usize = 4;

/// The repository shared with the writer thread (the repository type is not `Clone`).
struct RepoHandle(Repository);

/// Runs one backup of `job` into the chain `oc`. The caller holds the repository lock.
pub fn run(
    repo_root: &Path,
    job: &JobRecord,
    oc: &OpenChain,
    opts: BackupOptions,
) -> Result<BackupOutcome> {
    run_checked(repo_root, job, oc, opts, None)
}

/// [`run`] with a given passphrase still being checked (see
/// [`crate::ops::open_chain_deferred`]): the check overlaps the backup's start (the walk,
/// reading, chunking, compressing) and is waited for before the first pack is put in the
/// repository. A wrong passphrase is the backup's error, as if it had been checked first,
/// and leaves the repository as it was.
pub fn run_checked(
    repo_root: &Path,
    job: &JobRecord,
    oc: &OpenChain,
    opts: BackupOptions,
    check: Option<crate::resolve::PassphraseCheck>,
) -> Result<BackupOutcome> {
    let repo = Repository::open(repo_root)?;
    if repo.version() < 2 || oc.chain.version < 2 {
        return Err(Error::Usage(format!(
            "repository {} is in format version 1 (arca 0.1), whose metadata is not authenticated; \
             upgrade it with `arca migrate --repo {}` before backing up into it",
            repo_root.display(),
            repo_root.display()
        )));
    }
    if let Source::Stdin { name, .. } = &opts.source {
        super::restore::safe_rel_path(name.as_bytes()).map_err(|_| {
            Error::Usage(format!(
                "--stdin-name {name:?} is not a safe relative path (no '..', no leading '/', not empty)"
            ))
        })?;
    }
    let earlier = chain_points(&repo, &job.job_id, &oc.chain.chain_id)?;
    // Only points whose metadata authenticates under this chain count (a planted or
    // edited point file is ignored here and reported by `check`).
    let earlier: Vec<PointRecord> = earlier
        .into_iter()
        .filter(|p| match oc.verified_data_key(p) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("ignoring recovery point {}: {e}", p.point_id);
                false
            }
        })
        .collect();
    let index = ChainIndex::load(&repo, oc, &earlier)?;
    // The parent (for unchanged-file detection) is the newest complete tree point: never a
    // checkpoint, never a stream (a dump must not make the next tree backup re-read all).
    let parent_rec = earlier
        .iter()
        .rev()
        .find(|p| !p.is_forgotten() && p.source_kind.as_deref().is_none_or(|k| k == "tree"))
        .cloned();
    let parent_body = match (&parent_rec, &opts.source) {
        (Some(p), Source::Tree(_)) => Some(open_point(oc, p)?.1),
        _ => None,
    };
    let parent_stream = parent_body
        .as_ref()
        .map(|b| TreeStream::new(ChunkReader::new(&repo, &index, &oc.idk), b));
    let (parent_tx, parent_rx) = bounded(PARENT_BATCHES);
    let parent = ParentCursor {
        rx: parent_stream.is_some().then_some(parent_rx),
        batch: Vec::new().into_iter(),
        next: None,
        error: None,
    };
    let had_chunks = !index.is_empty();

    let place = PointPlace {
        repo_id: repo.id(),
        job_id: job.job_id,
        chain_id: oc.chain.chain_id,
        point_id: Id16::random(),
        data_format: 2,
    };
    let data_key = SecretKey::random();
    let sealers = PointSealers::new(PointKeys::new(&data_key, place));

    let workers = opts.workers.max(1);
    let (work_tx, work_rx) = bounded::<Work>(CHUNKS_QUEUED);
    let (sealed_tx, sealed_rx) = bounded::<SealedChunk>(CHUNKS_QUEUED);
    // As many buffers as the queues and the threads between them hold at once.
    let pool = Arc::new(BufPool::new(4 * workers + 2));
    let handles = run_workers(
        workers,
        work_rx,
        sealed_tx,
        sealers.chunks.clone(),
        pool.clone(),
        place,
        opts.compression_level,
    );
    let writer = run_writer(
        Arc::new(RepoHandle(repo.try_clone()?)),
        sealed_rx,
        sealers.pack_headers.clone(),
        pool.clone(),
        place,
        check,
    );

    let known = Mutex::new(Known {
        index: &index,
        fresh: HashSet::new(),
    });
    let cdc = content_cdc(oc.gear.clone());
    // Reader threads (one per core) read, chunk and hash files while this thread walks, so
    // that no single core does all of that.
    let readers = if matches!(opts.source, Source::Tree(_)) {
        workers
    } else {
        0
    };
    let (job_tx, job_rx) = bounded::<FileJob>(FILES_IN_FLIGHT);
    let pool_ref: &BufPool = &pool;
    let (done_tx, done_rx) = bounded::<FileDone>(FILES_IN_FLIGHT);
    thread::scope(|s| {
        if let Some(stream) = parent_stream {
            let index_ref = &index;
            thread::Builder::new()
                .name("arca-parent".into())
                .spawn_scoped(s, move || read_parent(stream, index_ref, parent_tx))
                .expect("spawn parent reader");
        }
        let reader_handles: Vec<_> = (0..readers)
            .map(|i| {
                let (job_rx, done_tx, tx) = (job_rx.clone(), done_tx.clone(), work_tx.clone());
                let (known, cdc, idk) = (&known, cdc.clone(), &oc.idk);
                let (progress, status) = (&opts.progress, &*opts.status);
                thread::Builder::new()
                    .name(format!("arca-read-{i}"))
                    .spawn_scoped(s, move || {
                        let mut ch = Chunker {
                            idk,
                            cdc,
                            known,
                            tx,
                            pool: pool_ref,
                            stats: PointStats::default(),
                            progress,
                            status,
                        };
                        for job in job_rx {
                            if done_tx.send(read_file(&mut ch, job)).is_err() {
                                break;
                            }
                        }
                        ch.stats
                    })
                    .expect("spawn reader")
            })
            .collect();
        drop((job_rx, done_tx));
        let (index_tx, index_rx) = bounded::<Vec<TreeEntry>>(INDEX_BATCHES);
        let index_writer = {
            let tree = TreeOut {
                cdc: CdcParams::new(TREE_CHUNK_MIN, TREE_CHUNK_AVG, TREE_CHUNK_MAX)
                    .with_gear(oc.gear.clone()),
                pending: Vec::new(),
                ids: Vec::new(),
                bytes: 0,
                entries: 0,
                uids: Default::default(),
                gids: Default::default(),
            };
            let ch = Chunker {
                idk: &oc.idk,
                cdc: cdc.clone(),
                known: &known,
                tx: work_tx.clone(),
                pool: pool_ref,
                stats: PointStats::default(),
                progress: &opts.progress,
                status: &opts.status,
            };
            thread::Builder::new()
                .name("arca-index".into())
                .spawn_scoped(s, move || write_index(index_rx, tree, ch))
                .expect("spawn index writer")
        };
        let chunker = Chunker {
            idk: &oc.idk,
            cdc: cdc.clone(),
            known: &known,
            tx: work_tx,
            pool: pool_ref,
            stats: PointStats::default(),
            progress: &opts.progress,
            status: &opts.status,
        };
        let mut w = Walker {
            chunker,
            filter: opts.filter.clone(),
            links: HashMap::new(),
            skipped: Vec::new(),
            parent,
            index: IndexFeed {
                batch: Vec::with_capacity(INDEX_BATCH),
                tx: Some(index_tx),
            },
            jobs: (readers > 0).then_some(job_tx),
            done: done_rx,
            order: Default::default(),
            arrived: HashMap::new(),
            next_seq: 0,
            in_flight: 0,
            errors: Vec::new(),
            stopped: false,
            interrupted: false,
            bundle: Bundle::default(),
            _p: std::marker::PhantomData,
        };
        let mut root_entry = None;
        let (kind, source_desc) = match opts.source {
            Source::Tree(ref root) => {
                let m = fs::symlink_metadata(root)
                    .map_err(|e| Error::io(format!("read backup source {}", root.display()), e))?;
                if m.is_dir() {
                    // The root's own metadata is kept in the body.
                    let dir = open_seen(root, None, &m, true).map_err(|e| {
                        Error::io(format!("read backup source {}", root.display()), e)
                    })?;
                    let mut r = entry_from_meta(b"", EntryType::Dir, &m);
                    w.describe(root, &mut r, XattrSource::Fd(dir.as_fd()));
                    root_entry = Some(r);
                    w.walk_dir(dir, root, b"");
                } else {
                    let name = root
                        .file_name()
                        .map(|n| n.as_bytes().to_vec())
                        .unwrap_or_else(|| b"file".to_vec());
                    w.visit(root, &name);
                }
                ("tree", root.display().to_string())
            }
            Source::Stdin {
                ref name,
                reader: _,
            } => ("stdin", format!("stdin as {name}")),
        };
        if let Source::Stdin { name, reader } = opts.source {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let (path, path_b64) = path_fields(name.as_bytes());
            let mut e = TreeEntry::new(path, path_b64, EntryType::File);
            e.mode = 0o600;
            e.mtime_ns = now.as_nanos() as i128;
            match w.chunker.stream(reader, None) {
                Ok((ids, n)) => {
                    e.size = n;
                    e.chunks = ids;
                    w.chunker.stats.files += 1;
                    w.chunker.stats.bytes_total += n;
                    w.push(e);
                }
                Err(err) if err == "pipeline stopped" => w.stopped = true,
                Err(err) if err == INTERRUPTED => w.interrupted = true,
                Err(err) => {
                    // A broken input stream must not become a silently truncated recovery point.
                    drop(w);
                    return Err(Error::Other(format!(
                        "reading standard input failed: {err}; no recovery point was written"
                    )));
                }
            }
        }

        w.finish_files();
        // The rest of the file index goes through the same pipeline (the entries walked
        // before a stop or an interruption, and no others).
        if !w.index.close() {
            w.stopped = true;
        }
        let (tree, index_stats, index_alive) = index_writer
            .join()
            .map_err(|_| Error::Other("the file index writer panicked".into()))?;
        if !index_alive {
            w.stopped = true;
        }
        if let Some(e) = w.parent.error.take() {
            return Err(e);
        }
        // Owner and group names, once per id.
        let (mut users, mut groups) = (
            std::collections::BTreeMap::new(),
            std::collections::BTreeMap::new(),
        );
        if tree.entries > 0 {
            let names = super::owners::Names::load();
            let root_ids = root_entry.iter().map(|r| (r.uid, r.gid));
            for uid in tree
                .uids
                .iter()
                .copied()
                .chain(root_ids.clone().map(|x| x.0))
            {
                if let Some(n) = names.user(uid) {
                    users.insert(uid, n);
                }
            }
            for gid in tree.gids.iter().copied().chain(root_ids.map(|x| x.1)) {
                if let Some(n) = names.group(gid) {
                    groups.insert(gid, n);
                }
            }
        }
        let interrupted = w
            .interrupted
            .then(|| crate::signals::requested().unwrap_or(2));
        let kind = if interrupted.is_some() {
            CHECKPOINT
        } else {
            kind
        };
        let Walker {
            chunker,
            errors,
            skipped,
            parent,
            ..
        } = w;
        drop(parent);
        let Chunker { tx, mut stats, .. } = chunker;
        drop(tx);
        add_stats(&mut stats, &index_stats);
        for h in reader_handles {
            let st = h
                .join()
                .map_err(|_| Error::Other("a backup reader panicked".into()))?;
            add_stats(&mut stats, &st);
        }
        // What only the walk needed goes before the index is sealed (millions of chunks).
        drop(std::mem::take(
            &mut known.lock().expect("known chunks").fresh,
        ));
        for h in handles {
            h.join()
                .map_err(|_| Error::Other("a backup worker panicked".into()))?;
        }
        let written = writer
            .join()
            .map_err(|_| Error::Other("the pack writer panicked".into()))??;
        stats.bytes_stored = written.bytes_stored;

        // Index, then the point file: the rename of the point file commits the backup.
        let index_sealer = Sealer::new(&sealers.keys.index);
        let mut index_pt = written.index;
        finish_index(&mut index_pt, crate::crypto::NONCE_LEN);
        repo.write_index(
            &place.point_id,
            2,
            &index_sealer.seal_in_place(&place.index_aad(), index_pt),
        )?;
        let origin = opts.origin.clone();
        let body = PointBody {
            kind: kind.into(),
            source: origin.as_ref().map_or(source_desc, |o| o.source.clone()),
            hostname: origin
                .as_ref()
                .map_or_else(hostname, |o| o.hostname.clone()),
            copied_from: origin.as_ref().map(|o| o.point_id),
            stats,
            tree: tree.ids,
            tree_bytes: tree.bytes,
            tree_format: TREE_FORMAT_BINARY,
            errors,
            skipped,
            root: root_entry,
            users,
            groups,
        };
        let body_sealer = Sealer::new(&sealers.keys.body);
        let sealed_body = body_sealer.seal(
            &place.body_aad(),
            &serde_json::to_vec(&body).expect("body serializes"),
        );
        let mut record = PointRecord {
            kind: PointRecord::KIND.into(),
            version: FORMAT_VERSION,
            repo_id: place.repo_id,
            job_id: place.job_id,
            job: job.name.clone(),
            chain_id: place.chain_id,
            point_id: place.point_id,
            time: origin.as_ref().map_or_else(now_rfc3339, |o| o.time.clone()),
            parent: parent_rec.map(|p| p.point_id),
            kdf: opts.kdf,
            source_kind: Some(kind.to_string()),
            data_format: 2,
            generation: Some(oc.chain.current_generation()),
            forgotten: None,
            data_key: WrappedKeyJson {
                nonce: Vec::new(),
                commitment: Vec::new(),
                ciphertext: Vec::new(),
            },
            body: sealed_body,
            mac: None,
        };
        let wrapped = crypto::wrap_key(&oc.chain_key, &data_key, &record.data_key_place());
        record.data_key = WrappedKeyJson::from(&wrapped);
        // The point's public fields (time, parent, kind, salt record) are authenticated.
        record.seal(&data_key);
        repo.write_point(&record)?;
        Ok(BackupOutcome {
            record,
            body,
            full: !had_chunks,
            chunks_sealed: sealers.chunks.sealed_count(),
            interrupted,
        })
    })
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keyed_chains_cut_at_512_kib_at_least_and_migrated_ones_as_format_1_did() {
        let mut data = vec![0u8; 24 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 32) as u8;
        }
        let lens = |c: CdcParams| c.split(&data).iter().map(|c| c.len()).collect::<Vec<_>>();
        // Without a gear table: exactly format 1's boundaries (fastcdc's public table, 256 KiB
        // minimum), so a migrated chain deduplicates against the chunks it holds.
        let v1 = lens(content_cdc(None));
        assert_eq!(v1, lens(CdcParams::new(256 << 10, 1 << 20, 4 << 20)));
        assert!(v1[..v1.len() - 1].iter().any(|&n| n < 512 << 10), "{v1:?}");
        let keyed = lens(content_cdc(Some(Arc::new(crate::crypto::gear_tables(
            &crate::crypto::SecretKey::from_bytes(&mut [7; 32]),
        )))));
        assert!(keyed.len() > 4, "{keyed:?}");
        assert!(
            keyed[..keyed.len() - 1].iter().all(|&n| n >= 512 << 10),
            "{keyed:?}"
        );
        assert_eq!(keyed.iter().sum::<usize>(), data.len());
    }

    use super::*;

    #[test]
    fn the_byte_budget_waits_for_room_and_lets_go_when_the_writer_ends() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let pool = Arc::new(BufPool::new(2));
        // One chunk of any length fits when nothing else is in flight.
        assert!(pool.reserve(BYTES_IN_FLIGHT + 1));
        pool.release(BYTES_IN_FLIGHT + 1);
        assert!(pool.reserve(6 << 20));
        assert!(pool.reserve(1 << 20));
        let waiter = |n: usize| {
            let (pool, (tx, rx)) = (pool.clone(), channel());
            thread::spawn(move || tx.send(pool.reserve(n)).unwrap());
            rx
        };
        // 4 MiB more does not fit until the 6 MiB chunk is in its pack.
        let rx = waiter(4 << 20);
        thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "reserved beyond the budget");
        pool.release(6 << 20);
        assert!(rx.recv_timeout(Duration::from_secs(30)).unwrap());
        // A chunker waiting when the writer ends is told the pipeline stopped.
        let rx = waiter(8 << 20);
        thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "reserved beyond the budget");
        pool.close();
        assert!(!rx.recv_timeout(Duration::from_secs(30)).unwrap());
        assert!(!pool.reserve(1));
    }

    #[test]
    fn walk_order_is_depth_first_with_sorted_names() {
        let mut paths: Vec<&[u8]> = vec![
            b"a-b", b"a/x/y", b"a", b"a/x", b"a.c/z", b"b", b"a/x-", b"a/w", b"",
        ];
        paths.sort_by(|x, y| walk_order(x, y));
        let want: Vec<&[u8]> = vec![
            b"", b"a", b"a/w", b"a/x", b"a/x/y", b"a/x-", b"a-b", b"a.c/z", b"b",
        ];
        assert_eq!(paths, want);
    }

    #[test]
    fn the_file_index_cut_as_it_is_written_equals_the_whole_split_at_once() {
        let cdc = CdcParams::new(TREE_CHUNK_MIN, TREE_CHUNK_AVG, TREE_CHUNK_MAX);
        let mut whole = Vec::new();
        let mut pending = Vec::new();
        let mut streamed: Vec<Vec<u8>> = Vec::new();
        let mut cut = |pending: &mut Vec<u8>, last: bool| {
            assert!(cut_ready(&cdc, pending, last, |c| {
                streamed.push(c.to_vec());
                true
            }));
        };
        let mut x = 1u64;
        for i in 0..60_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let line = format!("{{\"path\":\"d{}/f{i}\",\"n\":{x}}}\n", x % 97);
            whole.extend_from_slice(line.as_bytes());
            pending.extend_from_slice(line.as_bytes());
            if pending.len() >= 4 * TREE_CHUNK_MAX as usize {
                cut(&mut pending, false);
            }
        }
        cut(&mut pending, true);
        let at_once: Vec<Vec<u8>> = cdc.split(&whole).into_iter().map(|c| c.to_vec()).collect();
        assert!(at_once.len() > 10);
        assert_eq!(streamed, at_once);
    }
}
