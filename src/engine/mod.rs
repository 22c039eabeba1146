//! Backup, restore and check pipelines, and what they share: an opened chain, the keys of a
//! recovery point, the chain's chunk index and a chunk reader that verifies what it reads.

pub mod backup;
pub mod check;
pub mod chunker;
pub mod filter;
pub mod immutability;
pub mod owners;
pub mod prune;
pub mod restore;

use std::collections::HashMap;
use std::sync::Arc;

use crate::crypto::{
    self, context, ChunkIdKey, ChunkSealer, Opener, Sealer, SecretKey, WrappedKey,
};
use crate::error::{Error, Result};
use crate::keys::SlotContext;
use crate::repo::format::*;
use crate::repo::Repository;

/// Most key generations a chain may have (a rotation or rekey each adds one).
pub const MAX_GENERATIONS: u32 = 100_000;

/// A chain whose key has been resolved.
pub struct OpenChain {
    pub chain: ChainRecord,
    /// The current generation key: what the keyslots wrap. It wraps the data keys of new
    /// points and authenticates the chain record.
    pub chain_key: SecretKey,
    /// Generation 1's key (the chain's first key): chunk ids, chunk boundaries, the job
    /// record's MAC and the catalog's check value derive from it, so deduplication spans
    /// generations.
    pub root: SecretKey,
    /// Keys of the retired generations, generation g at index g-1.
    retired: Vec<SecretKey>,
    pub idk: ChunkIdKey,
    pub ctx: SlotContext,
    /// The chunker's keyed gear tables (v2 chains).
    pub gear: Option<Arc<chunker::GearTables>>,
}

impl OpenChain {
    /// Opens a chain with the key its keyslots wrap (the current generation key): checks
    /// the record's MAC (v2) and unwraps every retired generation.
    pub fn new(chain: ChainRecord, chain_key: SecretKey, job_name: &str) -> Result<Self> {
        let obj = || format!("chain record {}", chain.chain_id);
        if chain.version >= 2 && !chain.verify(&chain_key) {
            return Err(Error::integrity(
                obj(),
                "its MAC does not verify: its mode, keyslots or generations were changed by someone without the chain key",
            ));
        }
        let current = chain.current_generation();
        if current == 0
            || current > MAX_GENERATIONS
            || chain.retired.len() as u64 != (current - 1) as u64
        {
            return Err(Error::integrity(
                obj(),
                format!(
                    "key generation {current} with {} retired generations",
                    chain.retired.len()
                ),
            ));
        }
        let mut retired = Vec::with_capacity(chain.retired.len());
        for (i, r) in chain.retired.iter().enumerate() {
            if r.generation != i as u32 + 1 || !r.points.windows(2).all(|w| w[0] < w[1]) {
                return Err(Error::integrity(
                    obj(),
                    format!("retired generation {} is out of order", r.generation),
                ));
            }
            let w = WrappedKey::try_from(&r.wrapped).map_err(|e| Error::integrity(obj(), e))?;
            let k = crypto::unwrap_key(&chain_key, &w, &chain.generation_aad(r.generation))
                .map_err(|e| {
                    Error::integrity(obj(), format!("retired generation {}: {e}", r.generation))
                })?;
            retired.push(k);
        }
        let root = match retired.first() {
            Some(k) => k.duplicate(),
            None => chain_key.duplicate(),
        };
        let idk = ChunkIdKey::from_chain_key(&root);
        let ctx = SlotContext::of_chain(&chain, job_name);
        let gear = (chain.version >= 2
            && chain.chunker.as_deref() == Some(ChainRecord::KEYED_GEAR))
        .then(|| Arc::new(crypto::gear_tables(&root)));
        Ok(OpenChain {
            chain,
            chain_key,
            root,
            retired,
            idk,
            ctx,
            gear,
        })
    }

    /// The key of generation `g`, if the chain has it.
    pub fn generation_key(&self, g: u32) -> Option<&SecretKey> {
        let current = self.chain.current_generation();
        if g == current {
            Some(&self.chain_key)
        } else if g >= 1 && g < current {
            self.retired.get(g as usize - 1)
        } else {
            None
        }
    }

    /// Starts generation n+1: a fresh key; every earlier generation's key wrapped under it;
    /// `points` (every point of the chain, written under generation n or earlier) sealed
    /// into the retired generation's list. The caller adds keyslots wrapping the returned
    /// key, then seals the record with it. No point, index or pack changes.
    pub fn next_generation(&self, points: &[Id16]) -> (ChainRecord, SecretKey) {
        let key = SecretKey::random();
        let mut c = self.chain.clone();
        let current = c.current_generation();
        let mut listed: Vec<Id16> = points.to_vec();
        listed.sort();
        listed.dedup();
        // A point already listed by an older generation stays there only.
        for r in &c.retired {
            listed.retain(|p| r.points.binary_search(p).is_err());
        }
        c.generation = Some(current + 1);
        c.revision += 1;
        c.keyslots.clear();
        c.mac = None;
        let now = crate::repo::now_rfc3339();
        let mut retired = Vec::with_capacity(current as usize);
        for g in 1..=current {
            let old = self
                .generation_key(g)
                .expect("every generation up to the current");
            let (when, pts) = match self.chain.retired.get(g as usize - 1) {
                Some(r) => (r.retired.clone(), r.points.clone()),
                None => (now.clone(), std::mem::take(&mut listed)),
            };
            retired.push(RetiredGeneration {
                generation: g,
                retired: when,
                wrapped: WrappedKeyJson::from(&crypto::wrap_key(&key, old, &c.generation_aad(g))),
                points: pts,
            });
        }
        c.retired = retired;
        (c, key)
    }

    /// Unwraps a point's data key. A point of another chain, or a moved one, fails; so does
    /// a point claiming a retired generation that did not list it (written with an old key
    /// after a rotation). This does not check the point's public fields:
    /// [`OpenChain::verified_data_key`] does.
    pub fn data_key(&self, p: &PointRecord) -> Result<SecretKey> {
        if p.chain_id != self.chain.chain_id {
            return Err(Error::Other(format!(
                "recovery point {} belongs to chain {}, not {}",
                p.point_id, p.chain_id, self.chain.chain_id
            )));
        }
        let obj = || format!("recovery point {}", p.point_id);
        let w = WrappedKey::try_from(&p.data_key).map_err(|e| Error::integrity(obj(), e))?;
        if p.version < self.chain.version {
            return Err(Error::integrity(
                obj(),
                "a version-1 point record in a version-2 chain",
            ));
        }
        let g = p.key_generation();
        let current = self.chain.current_generation();
        if g < current
            && self
                .chain
                .retired
                .get(g.saturating_sub(1) as usize)
                .is_some_and(|r| r.points.binary_search(&p.point_id).is_err())
        {
            return Err(Error::integrity(
                obj(),
                format!(
                    "it claims key generation {g}, which was retired before this point existed: \
                     it was written with an old key after a rotation (planted?)"
                ),
            ));
        }
        let kek = self.generation_key(g).ok_or_else(|| {
            Error::integrity(
                obj(),
                format!(
                    "it names key generation {g}, which chain {} does not have",
                    self.chain.chain_id
                ),
            )
        })?;
        crypto::unwrap_key(kek, &w, &p.data_key_place()).map_err(|e| {
            Error::integrity(
                obj(),
                format!("{e} (the chain key opens the chain but not this point's data key)"),
            )
        })
    }

    /// The data key of a point whose public fields (time, parent, kind, salt record) are
    /// authentic (v2: the point's MAC under its data key).
    pub fn verified_data_key(&self, p: &PointRecord) -> Result<SecretKey> {
        let dk = self.data_key(p)?;
        if p.version >= 2 && !p.verify(&dk) {
            return Err(Error::integrity(
                format!("recovery point {}", p.point_id),
                "its time, parent, kind or salt record was modified (its MAC does not verify)",
            ));
        }
        Ok(dk)
    }
}

/// The keys of one recovery point, all derived from its single-use data key.
pub struct PointKeys {
    pub place: PointPlace,
    pub chunks: SecretKey,
    pub chunk_nonces: SecretKey,
    pub pack_headers: SecretKey,
    pub index: SecretKey,
    pub body: SecretKey,
}

impl PointKeys {
    pub fn new(data_key: &SecretKey, place: PointPlace) -> Self {
        PointKeys {
            place,
            chunks: data_key.derive(context::POINT_CHUNKS),
            chunk_nonces: data_key.derive(context::CHUNK_NONCE),
            pack_headers: data_key.derive(context::POINT_PACK_HEADERS),
            index: data_key.derive(context::POINT_INDEX),
            body: data_key.derive(context::POINT_BODY),
        }
    }
}

/// Opens a point's body.
pub fn open_point(oc: &OpenChain, p: &PointRecord) -> Result<(PointKeys, PointBody)> {
    let dk = oc.verified_data_key(p)?;
    if let Some(when) = &p.forgotten {
        return Err(Error::NotFound(format!(
            "recovery point {} was forgotten ({when}); only its key remains until `arca prune`",
            p.point_id
        )));
    }
    let keys = PointKeys::new(&dk, p.place());
    let obj = || format!("recovery point {}", p.point_id);
    let pt = crypto::open(&keys.body, &p.place().body_aad(), &p.body)
        .map_err(|e| Error::integrity(obj(), e))?;
    let body: PointBody = serde_json::from_slice(&pt).map_err(|e| Error::integrity(obj(), e))?;
    if p.version >= 2 && p.source_kind.as_deref() != Some(body.kind.as_str()) {
        return Err(Error::integrity(
            obj(),
            "its kind differs from its sealed body",
        ));
    }
    Ok((keys, body))
}

/// Opens chunks of one point: v1 chunks carry their nonce, v2 chunks derive it.
pub enum ChunkOpener {
    V1(Opener),
    V2(ChunkSealer),
}

impl ChunkOpener {
    pub fn new(keys: &PointKeys) -> Self {
        if keys.place.data_format >= 2 {
            ChunkOpener::V2(ChunkSealer::new(&keys.chunks, &keys.chunk_nonces))
        } else {
            ChunkOpener::V1(Opener::new(&keys.chunks))
        }
    }

    pub fn open(
        &self,
        id: &Id32,
        aad: &[u8],
        sealed: &[u8],
    ) -> std::result::Result<Vec<u8>, crypto::CryptoError> {
        match self {
            ChunkOpener::V1(o) => o.open(aad, sealed),
            ChunkOpener::V2(s) => s.open(&id.0, aad, sealed),
        }
    }

    /// [`ChunkOpener::open`] in the caller's buffer: `sealed` becomes the plaintext (in
    /// place in format 2; format 1 copies).
    pub fn open_in_buf(
        &self,
        id: &Id32,
        aad: &[u8],
        sealed: &mut Vec<u8>,
    ) -> std::result::Result<(), crypto::CryptoError> {
        match self {
            ChunkOpener::V1(o) => {
                *sealed = o.open(aad, sealed)?;
                Ok(())
            }
            ChunkOpener::V2(s) => s.open_in_buf(&id.0, aad, sealed),
        }
    }
}

/// Where a chunk lives, compactly.
#[derive(Clone, Copy, Debug)]
pub struct Loc {
    pub pack: u32,
    pub point: u32,
    pub offset: u64,
    pub length: u32,
    pub raw_len: u32,
}

/// The chunk index of a chain: every chunk of every (complete) recovery point in it.
///
/// Compact for chains of millions of chunks: one sorted array of fixed-size entries (56
/// bytes a chunk), beside it the next eight bytes of each id (searched instead of the
/// entries: a bucket's keys share a cache line or two), and a table of where each two-byte
/// id prefix starts; 64 bytes a chunk in all, instead of a hash map of owned keys (about 120
/// bytes a chunk at its load factor).
pub struct ChainIndex {
    /// Sorted by chunk id, one entry per id: the earliest point's.
    entries: Vec<(Id32, Loc)>,
    /// `key(id)` of each entry, in the same order.
    keys: Vec<u64>,
    /// `starts[p]..starts[p + 1]`: the entries whose id begins with the two bytes `p`.
    starts: Vec<u32>,
    pub packs: Vec<Id32>,
    /// Per point: its place and an opener for its chunks and pack headers.
    pub points: Vec<(PointPlace, ChunkOpener, Opener)>,
}

fn prefix(id: &Id32) -> usize {
    u16::from_be_bytes([id.0[0], id.0[1]]) as usize
}

/// The id's bytes after its prefix, as a number ordered as the ids are.
fn key(id: &Id32) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[2..10]);
    u64::from_be_bytes(b)
}

impl ChainIndex {
    /// An index of no chunks.
    pub fn empty() -> ChainIndex {
        ChainIndex {
            entries: Vec::new(),
            keys: Vec::new(),
            starts: vec![0; (1 << 16) + 1],
            packs: Vec::new(),
            points: Vec::new(),
        }
    }

    pub fn get(&self, id: &Id32) -> Option<&Loc> {
        let p = prefix(id);
        let (a, b) = (self.starts[p] as usize, self.starts[p + 1] as usize);
        let keys = &self.keys[a..b];
        let k = key(id);
        // Ids that share these bytes too follow each other: compared whole.
        let first = keys.partition_point(|x| *x < k);
        keys[first..]
            .iter()
            .take_while(|x| **x == k)
            .zip(&self.entries[a + first..b])
            .find(|(_, (e, _))| e == id)
            .map(|(_, (_, loc))| loc)
    }

    pub fn contains(&self, id: &Id32) -> bool {
        self.get(id).is_some()
    }

    /// Reads the memory a look-up of `id` starts with, so that look-ups of many ids can
    /// wait for memory at once when they are all touched first (each one alone waits for
    /// several cache misses in turn).
    pub fn touch(&self, id: &Id32) -> u64 {
        let a = self.starts[prefix(id)] as usize;
        let k = self.keys.get(a).copied().unwrap_or(0);
        let e = self.entries.get(a).map_or(0, |(e, _)| e.0[2]);
        k ^ e as u64
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every chunk and where it is, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&Id32, &Loc)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Sorts the entries, keeps the earliest point's entry of each id (its chunk was
    /// written first) and builds the prefix table.
    fn finish(&mut self) {
        self.entries
            .sort_unstable_by(|a, b| a.0 .0.cmp(&b.0 .0).then(a.1.point.cmp(&b.1.point)));
        self.entries.dedup_by(|later, first| later.0 == first.0);
        self.entries.shrink_to_fit();
        self.keys = self.entries.iter().map(|(id, _)| key(id)).collect();
        let mut p = 0usize;
        for (i, (id, _)) in self.entries.iter().enumerate() {
            let q = prefix(id);
            while p <= q {
                self.starts[p] = i as u32;
                p += 1;
            }
        }
        while p <= 1 << 16 {
            self.starts[p] = self.entries.len() as u32;
            p += 1;
        }
    }

    /// Loads the index files of `points` (all of one chain). A point whose metadata or index
    /// does not authenticate is left out with a warning: damage stays with what needs it (a
    /// chunk only that point's index listed is then reported missing where it is used).
    pub fn load(repo: &Repository, oc: &OpenChain, points: &[PointRecord]) -> Result<ChainIndex> {
        Self::load_reporting(repo, oc, points, &mut |e| {
            tracing::warn!("{e}");
        })
    }

    /// [`ChainIndex::load`], handing each damaged point's error to `damaged`.
    pub fn load_reporting(
        repo: &Repository,
        oc: &OpenChain,
        points: &[PointRecord],
        damaged: &mut dyn FnMut(Error),
    ) -> Result<ChainIndex> {
        let mut idx = ChainIndex::empty();
        let mut pack_no: HashMap<Id32, u32> = HashMap::new();
        for p in points.iter().filter(|p| p.chain_id == oc.chain.chain_id) {
            let loaded = (|| -> Result<(PointKeys, Vec<u8>)> {
                let dk = oc.data_key(p)?;
                let keys = PointKeys::new(&dk, p.place());
                let sealed = repo.read_index(&p.point_id, p.data_format)?;
                let obj = || format!("index of recovery point {}", p.point_id);
                // Opened where it lies: an index of millions of chunks is not copied.
                let pt = crypto::open_in_place(&keys.index, &p.place().index_aad(), sealed)
                    .map_err(|e| Error::integrity(obj(), e))?;
                index_count(&pt).map_err(|e| Error::integrity(obj(), e))?;
                Ok((keys, pt))
            })();
            let (keys, pt) = match loaded {
                Ok(x) => x,
                Err(e @ Error::Integrity { .. }) => {
                    damaged(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let point_no = idx.points.len() as u32;
            idx.points.push((
                p.place(),
                ChunkOpener::new(&keys),
                Opener::new(&keys.pack_headers),
            ));
            idx.entries
                .reserve(index_count(&pt).expect("checked above"));
            decode_index_with(&pt, |e| {
                let pack = *pack_no.entry(e.pack_id).or_insert_with(|| {
                    idx.packs.push(e.pack_id);
                    (idx.packs.len() - 1) as u32
                });
                idx.entries.push((
                    e.chunk_id,
                    Loc {
                        pack,
                        point: point_no,
                        offset: e.offset,
                        length: e.length,
                        raw_len: e.raw_len,
                    },
                ));
            })
            .expect("checked above");
        }
        idx.finish();
        Ok(idx)
    }
}

/// Reads chunks and verifies each: AEAD with its place, then its keyed id.
/// One per thread (it caches open pack files); the index and keys are shared.
pub struct ChunkReader<'a> {
    repo: &'a Repository,
    idx: &'a ChainIndex,
    idk: &'a ChunkIdKey,
    /// Recently used packs, most recent last (a few, so interleaved reads do not reopen).
    open: Vec<(u32, crate::repo::PackReader)>,
    zstd: zstd::bulk::Decompressor<'static>,
    /// The last chunk read, sealed then opened in place, and decompressed: kept to be
    /// reused (at most a chunk's length each, 4 MiB for content).
    sealed: Vec<u8>,
    plain: Vec<u8>,
    /// The chunk those buffers hold, opened and checked (the small files of a bundle are
    /// read one after the other: the bundle is decoded once).
    last: Option<Id32>,
    /// Reads file-index chunks: a remote store may keep them in its local cache.
    metadata: bool,
    /// Chunks opened and decoded so far, and their decoded bytes (a chunk read again
    /// right after itself is not decoded again and not counted).
    pub decoded: (u64, u64),
}

const OPEN_PACKS: usize = 8;

impl<'a> ChunkReader<'a> {
    pub fn new(repo: &'a Repository, idx: &'a ChainIndex, idk: &'a ChunkIdKey) -> Self {
        ChunkReader {
            repo,
            idx,
            idk,
            open: Vec::with_capacity(OPEN_PACKS),
            zstd: zstd::bulk::Decompressor::new().expect("zstd decompression context"),
            sealed: Vec::new(),
            plain: Vec::new(),
            last: None,
            metadata: false,
            decoded: (0, 0),
        }
    }

    /// A reader of the same chunks with its own open packs.
    pub fn clone_reader(&self) -> ChunkReader<'a> {
        ChunkReader::new(self.repo, self.idx, self.idk)
    }

    pub fn read(&mut self, id: &Id32) -> Result<Vec<u8>> {
        self.read_ref(id).map(<[u8]>::to_vec)
    }

    /// [`ChunkReader::read`] into the reader's own buffers, valid until the next read: no
    /// allocation per chunk once the buffers have grown.
    pub fn read_ref(&mut self, id: &Id32) -> Result<&[u8]> {
        if self.last == Some(*id) {
            // Opened and checked already: the payload is in `sealed` (raw) or `plain`.
            return Ok(match self.sealed.split_first() {
                Some((&PAYLOAD_RAW, rest)) => rest,
                _ => &self.plain,
            });
        }
        self.last = None;
        let loc = *self.idx.get(id).ok_or_else(|| {
            Error::integrity(
                format!("chunk {id}"),
                "not in the index of its chain (missing data)",
            )
        })?;
        let pack_id = self.idx.packs[loc.pack as usize];
        match self.open.iter().position(|(n, _)| *n == loc.pack) {
            Some(i) => {
                let e = self.open.remove(i);
                self.open.push(e);
            }
            None => {
                if self.open.len() == OPEN_PACKS {
                    self.open.remove(0);
                }
                let r = if self.metadata {
                    self.repo.open_pack_metadata(&pack_id)?
                } else {
                    self.repo.open_pack(&pack_id)?
                };
                self.open.push((loc.pack, r));
            }
        }
        let f = &mut self.open.last_mut().expect("just pushed").1;
        Repository::read_pack_range_into(f, &pack_id, loc.offset, loc.length, &mut self.sealed)?;
        let (place, opener, _) = &self.idx.points[loc.point as usize];
        let obj = || format!("chunk {id} in pack {pack_id}");
        opener
            .open_in_buf(id, &place.chunk_aad(id), &mut self.sealed)
            .map_err(|e| Error::integrity(obj(), e))?;
        let data = decode_payload_into(
            &mut self.zstd,
            &self.sealed,
            loc.raw_len as usize,
            &mut self.plain,
        )
        .map_err(|e| Error::integrity(obj(), e))?;
        if self.idk.id(data) != id.0 {
            return Err(Error::integrity(obj(), "content does not match its id"));
        }
        self.last = Some(*id);
        self.decoded.0 += 1;
        self.decoded.1 += data.len() as u64;
        Ok(data)
    }
}

/// Reads a point's file index.
pub fn read_tree(reader: &mut ChunkReader<'_>, body: &PointBody) -> Result<Vec<TreeEntry>> {
    TreeStream::new(reader.clone_reader(), body).collect()
}

/// A point's file index read entry by entry, a chunk at a time: memory stays bounded by a
/// chunk and an entry whatever the number of files. The recorded length is checked as it
/// goes (never more) and at the end (never less).
pub struct TreeStream<'r> {
    reader: ChunkReader<'r>,
    ids: std::vec::IntoIter<Id32>,
    format: u32,
    expected: u64,
    seen: u64,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

/// A file index entry longer than this is refused (no entry of arca's comes close); a
/// binary record may take 4 bytes more for its length.
const TREE_LINE_MAX: usize = crate::repo::tree_bin::RECORD_MAX;
const TREE_PREFIX_MAX: usize = 4;

/// Where the next entry of a file index lies in the bytes read so far.
enum Next {
    /// An entry's bytes, and where the one after it starts.
    Entry(std::ops::Range<usize>, usize),
    /// An empty line (JSON lines only), skipped.
    Skip(usize),
    /// The entry is not wholly read yet.
    More,
}

impl<'r> TreeStream<'r> {
    pub fn new(mut reader: ChunkReader<'r>, body: &PointBody) -> Self {
        reader.metadata = true;
        TreeStream {
            reader,
            ids: body.tree.clone().into_iter(),
            format: body.tree_format,
            expected: body.tree_bytes,
            seen: 0,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    fn fail(&mut self, detail: impl std::fmt::Display) -> Option<Result<TreeEntry>> {
        self.done = true;
        Some(Err(Error::integrity("file index", detail)))
    }

    fn parse(&self, entry: &[u8]) -> Result<TreeEntry> {
        if self.format == TREE_FORMAT_BINARY {
            crate::repo::tree_bin::decode_entry(entry)
                .map_err(|e| Error::integrity("file index", e.to_string()))
        } else {
            serde_json::from_slice(entry)
                .map_err(|e| Error::integrity("file index", format!("file index entry: {e}")))
        }
    }

    fn split(&self) -> Result<Next> {
        let rest = &self.buf[self.pos..];
        if self.format == TREE_FORMAT_BINARY {
            use crate::repo::tree_bin::{split_record, Split};
            match split_record(rest).map_err(|e| Error::integrity("file index", e.to_string()))? {
                Split::Record { body } => Ok(Next::Entry(
                    self.pos + body.start..self.pos + body.end,
                    self.pos + body.end,
                )),
                Split::Incomplete => Ok(Next::More),
            }
        } else {
            Ok(match memchr::memchr(b'\n', rest) {
                Some(0) => Next::Skip(self.pos + 1),
                Some(nl) => Next::Entry(self.pos..self.pos + nl, self.pos + nl + 1),
                None => Next::More,
            })
        }
    }
}

impl Iterator for TreeStream<'_> {
    type Item = Result<TreeEntry>;

    fn next(&mut self) -> Option<Result<TreeEntry>> {
        if !self.done && self.format != TREE_FORMAT_JSON && self.format != TREE_FORMAT_BINARY {
            let f = self.format;
            return self.fail(format!("unknown file index format {f}"));
        }
        loop {
            if self.done {
                return None;
            }
            match self.split() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(Next::Skip(next)) => {
                    self.pos = next;
                    continue;
                }
                Ok(Next::Entry(entry, next)) => {
                    let r = self.parse(&self.buf[entry]);
                    self.pos = next;
                    if r.is_err() {
                        self.done = true;
                    }
                    return Some(r);
                }
                Ok(Next::More) => {}
            }
            let rest = self.buf.len() - self.pos;
            if rest > TREE_LINE_MAX + TREE_PREFIX_MAX {
                return self.fail("an entry longer than 64 MiB");
            }
            match self.ids.next() {
                Some(id) => {
                    let data = match self.reader.read_ref(&id) {
                        Ok(d) => d,
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    };
                    self.seen += data.len() as u64;
                    if self.seen > self.expected {
                        return self.fail("longer than its recorded length");
                    }
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.buf.extend_from_slice(data);
                }
                None => {
                    self.done = true;
                    if self.seen != self.expected {
                        return self.fail("shorter than its recorded length");
                    }
                    if rest == 0 {
                        return None;
                    }
                    if self.format == TREE_FORMAT_BINARY {
                        return self.fail("its last entry is cut short");
                    }
                    return Some(self.parse(&self.buf[self.pos..]));
                }
            }
        }
    }
}

/// Changes public fields of a point (e.g. its salt record) and renews its MAC. Nothing is
/// re-encrypted or rewrapped.
pub fn rebind_point(
    repo: &Repository,
    oc: &OpenChain,
    mut p: PointRecord,
    change: impl FnOnce(&mut PointRecord),
) -> Result<PointRecord> {
    let dk = oc.verified_data_key(&p)?;
    change(&mut p);
    p.seal(&dk);
    repo.write_point(&p)?;
    Ok(p)
}

/// Points of `job` in chain `chain_id`, oldest first.
pub fn chain_points(repo: &Repository, job_id: &Id16, chain_id: &Id16) -> Result<Vec<PointRecord>> {
    Ok(repo
        .list_points(job_id)?
        .into_iter()
        .filter(|p| p.chain_id == *chain_id)
        .collect())
}

/// Everything needed to read one recovery point.
pub struct OpenPoint {
    pub record: PointRecord,
    pub body: PointBody,
    pub index: ChainIndex,
}

impl OpenPoint {
    pub fn open(repo: &Repository, oc: &OpenChain, record: PointRecord) -> Result<OpenPoint> {
        let (_, body) = open_point(oc, &record)?;
        let pts = chain_points(repo, &record.job_id, &record.chain_id)?;
        let index = ChainIndex::load(repo, oc, &pts)?;
        Ok(OpenPoint {
            record,
            body,
            index,
        })
    }

    pub fn tree(&self, repo: &Repository, oc: &OpenChain) -> Result<Vec<TreeEntry>> {
        self.tree_stream(repo, oc).collect()
    }

    /// The point's file index, entry by entry.
    pub fn tree_stream<'a>(&'a self, repo: &'a Repository, oc: &'a OpenChain) -> TreeStream<'a> {
        TreeStream::new(ChunkReader::new(repo, &self.index, &oc.idk), &self.body)
    }
}

/// Shared, thread-safe sealers of a point being written.
pub struct PointSealers {
    pub keys: PointKeys,
    pub chunks: Arc<ChunkSealer>,
    pub pack_headers: Arc<Sealer>,
}

impl PointSealers {
    pub fn new(keys: PointKeys) -> Self {
        let chunks = Arc::new(ChunkSealer::new(&keys.chunks, &keys.chunk_nonces));
        let pack_headers = Arc::new(Sealer::new(&keys.pack_headers));
        PointSealers {
            keys,
            chunks,
            pack_headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(point: u32, offset: u64) -> Loc {
        Loc {
            pack: 0,
            point,
            offset,
            length: 1,
            raw_len: 1,
        }
    }

    #[test]
    fn chain_index_finds_every_id_and_no_other() {
        let mut idx = ChainIndex::empty();
        let mut ids: Vec<Id32> = (0..20_000u32)
            .map(|i| Id32(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        // The edges of the prefix table.
        ids.push(Id32([0; 32]));
        ids.push(Id32([0xff; 32]));
        for (i, id) in ids.iter().enumerate() {
            idx.entries.push((*id, loc(1, i as u64)));
        }
        // The same id in an earlier point: that entry wins; and in a later one: it loses.
        idx.entries.push((ids[7], loc(0, 999_999)));
        idx.entries.push((ids[8], loc(2, 888_888)));
        idx.finish();
        assert_eq!(idx.len(), ids.len());
        for (i, id) in ids.iter().enumerate() {
            let l = idx.get(id).unwrap_or_else(|| panic!("id {i} not found"));
            let want = if i == 7 { 999_999 } else { i as u64 };
            assert_eq!(l.offset, want, "id {i}");
        }
        for i in 20_000..30_000u32 {
            let other = Id32(*blake3::hash(&i.to_le_bytes()).as_bytes());
            assert!(!idx.contains(&other));
        }
        let mut near = ids[3];
        near.0[31] ^= 1;
        assert!(!idx.contains(&near));
        assert!(ChainIndex::empty().get(&ids[0]).is_none());
    }

    #[test]
    fn chain_index_tells_apart_ids_whose_first_ten_bytes_are_the_same() {
        let mut idx = ChainIndex::empty();
        let base = Id32(*blake3::hash(b"twins").as_bytes());
        let mut twins = Vec::new();
        for i in 0..6u8 {
            let mut id = base;
            id.0[10 + i as usize] ^= 0x80;
            id.0[31] = i;
            twins.push(id);
        }
        // Every other one is in the index; the rest share its first ten bytes only.
        for (i, id) in twins.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            idx.entries.push((*id, loc(0, i as u64)));
        }
        let mut lower = base;
        lower.0[9] = lower.0[9].wrapping_sub(1);
        idx.entries.push((lower, loc(0, 100)));
        idx.finish();
        for (i, id) in twins.iter().enumerate() {
            match idx.get(id) {
                Some(l) => assert!(i % 2 == 0 && l.offset == i as u64, "twin {i}"),
                None => assert!(i % 2 == 1, "twin {i} not found"),
            }
        }
        assert_eq!(idx.get(&lower).map(|l| l.offset), Some(100));
    }
}
