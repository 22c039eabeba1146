//! Pack files: `magic || point_id || sealed chunks... || sealed header || header_len u32 LE`.
//! Version 1 chunks carry their nonce; version 2 chunks do not (it is derived from the chunk
//! id), so nothing in a v2 pack marks where one chunk ends and the next begins.

use super::format::*;
use crate::crypto::{content_hash, ContentHasher, Opener, Sealer, SecretKey};

/// Collects sealed chunks of one recovery point into a pack: in memory, or streamed to a
/// sink (a local repository's temporary file) so that only its header is held.
pub struct PackBuilder {
    buf: Vec<u8>,
    sink: Option<Sink>,
    entries: Vec<PackHeaderEntry>,
}

struct Sink {
    out: Box<dyn crate::repo::store::ObjectSink>,
    hash: ContentHasher,
    len: usize,
    /// Small chunks not yet hashed nor written: hashed and written a mebibyte at a time, since
    /// BLAKE3 hashes a long input many chunks at once (16 with AVX-512) but the start of
    /// each input a chunk at a time (most sealed chunks are a few KiB).
    pending: Vec<u8>,
}

/// What a streaming builder gathers before it hashes and writes.
const SINK_STAGE: usize = 1 << 20;

impl Sink {
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.write(&self.pending)?;
        self.hash.update(&self.pending);
        self.pending.clear();
        Ok(())
    }
}

/// A finished pack, ready to be written under `id`.
pub struct FinishedPack {
    pub id: Id32,
    /// The pack's bytes; empty when they went to `sink`.
    pub bytes: Vec<u8>,
    /// The pack's length, in memory or streamed.
    pub len: u64,
    pub entries: Vec<PackHeaderEntry>,
    /// Where a streamed pack was written, to be committed under `id`.
    pub sink: Option<Box<dyn crate::repo::store::ObjectSink>>,
}

fn prefix(point_id: &Id16, data_format: u32) -> [u8; PACK_PREFIX_LEN] {
    let mut p = [0u8; PACK_PREFIX_LEN];
    p[..8].copy_from_slice(if data_format >= 2 {
        PACK_MAGIC2
    } else {
        PACK_MAGIC
    });
    p[8..].copy_from_slice(&point_id.0);
    p
}

impl PackBuilder {
    pub fn new(point_id: &Id16, capacity: usize, data_format: u32) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(&prefix(point_id, data_format));
        PackBuilder {
            buf,
            sink: None,
            entries: Vec::new(),
        }
    }

    /// A builder writing each chunk to `out` as it is added.
    pub fn streaming(
        point_id: &Id16,
        out: Box<dyn crate::repo::store::ObjectSink>,
        data_format: u32,
    ) -> std::io::Result<Self> {
        let p = prefix(point_id, data_format);
        let mut pending = Vec::with_capacity(2 * SINK_STAGE);
        pending.extend_from_slice(&p);
        Ok(PackBuilder {
            buf: Vec::new(),
            sink: Some(Sink {
                out,
                hash: ContentHasher::new(),
                len: p.len(),
                pending,
            }),
            entries: Vec::new(),
        })
    }

    fn append(&mut self, b: &[u8]) -> std::io::Result<()> {
        match &mut self.sink {
            None => self.buf.extend_from_slice(b),
            Some(s) if b.len() >= SINK_STAGE / 4 => {
                // A large chunk is hashed and written where it lies (not copied first).
                if !s.pending.is_empty() {
                    s.flush()?;
                }
                s.out.write(b)?;
                s.hash.update(b);
                s.len += b.len();
            }
            Some(s) => {
                s.pending.extend_from_slice(b);
                s.len += b.len();
                if s.pending.len() >= SINK_STAGE {
                    s.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Adds a sealed chunk (an error only from a streaming builder's sink).
    pub fn add(&mut self, chunk_id: Id32, sealed: &[u8], raw_len: u32) -> std::io::Result<()> {
        self.entries.push(PackHeaderEntry {
            chunk_id,
            offset: self.len() as u64,
            length: sealed.len() as u32,
            raw_len,
        });
        self.append(sealed)
    }

    pub fn len(&self) -> usize {
        match &self.sink {
            None => self.buf.len(),
            Some(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals the header and names the pack by the BLAKE3 hash of all its bytes.
    pub fn finish(
        self,
        header_sealer: &Sealer,
        place: &PointPlace,
    ) -> std::io::Result<FinishedPack> {
        let header =
            header_sealer.seal(&place.pack_header_aad(), &encode_pack_header(&self.entries));
        self.finish_sealed(header)
    }

    /// [`PackBuilder::finish`] for a pack written after its point (by `arca prune`): the
    /// header is sealed with a random nonce, since the point's header counter is spent.
    pub fn finish_random_nonce(
        self,
        header_key: &SecretKey,
        place: &PointPlace,
    ) -> std::io::Result<FinishedPack> {
        let header = crate::crypto::seal_random_nonce(
            header_key,
            &place.pack_header_aad(),
            &encode_pack_header(&self.entries),
        );
        self.finish_sealed(header)
    }

    fn finish_sealed(mut self, header: Vec<u8>) -> std::io::Result<FinishedPack> {
        self.append(&header)?;
        self.append(&(header.len() as u32).to_le_bytes())?;
        let len = self.len() as u64;
        let (id, sink) = match self.sink {
            None => (content_hash(&self.buf), None),
            Some(mut s) => {
                s.flush()?;
                (s.hash.finalize(), Some(s.out))
            }
        };
        Ok(FinishedPack {
            id: Id32(id),
            bytes: self.buf,
            len,
            entries: self.entries,
            sink,
        })
    }
}

/// The unauthenticated frame of a pack: which point wrote it and where its header is.
pub struct PackFrame<'a> {
    pub data_format: u32,
    pub point_id: Id16,
    pub sealed_header: &'a [u8],
}

pub fn parse_frame(b: &[u8]) -> Result<PackFrame<'_>, ParseError> {
    if b.len() < PACK_PREFIX_LEN + 4 {
        return Err(ParseError("not a pack (too short)".into()));
    }
    let data_format = if &b[..8] == PACK_MAGIC2 {
        2
    } else if &b[..8] == PACK_MAGIC {
        1
    } else {
        return Err(ParseError("not a pack (bad magic or version)".into()));
    };
    let point_id = Id16(b[8..24].try_into().unwrap());
    let hlen = u32::from_le_bytes(b[b.len() - 4..].try_into().unwrap()) as usize;
    let end = b.len() - 4;
    if hlen > end - PACK_PREFIX_LEN {
        return Err(ParseError(
            "pack header length points outside the pack".into(),
        ));
    }
    Ok(PackFrame {
        data_format,
        point_id,
        sealed_header: &b[end - hlen..end],
    })
}

/// Opens a pack's header with the point's header key.
pub fn open_header(
    frame: &PackFrame<'_>,
    opener: &Opener,
    place: &PointPlace,
) -> Result<Vec<PackHeaderEntry>, String> {
    let pt = opener
        .open(&place.pack_header_aad(), frame.sealed_header)
        .map_err(|e| e.to_string())?;
    decode_pack_header(&pt).map_err(|e| e.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{ChunkIdKey, SecretKey};
    use proptest::prelude::*;

    fn place() -> PointPlace {
        PointPlace {
            repo_id: Id16([1; 16]),
            job_id: Id16([2; 16]),
            chain_id: Id16([3; 16]),
            point_id: Id16([4; 16]),
            data_format: 2,
        }
    }

    /// Collects what a streaming builder writes.
    struct MemSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl crate::repo::store::ObjectSink for MemSink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(())
        }
        fn commit(self: Box<Self>, _key: &str) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A pack streamed to a sink has the bytes, length, id and entries of the same pack
    /// built in memory.
    #[test]
    fn streamed_pack_equals_pack_in_memory() {
        let pl = place();
        let hk = SecretKey::random();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut mem = PackBuilder::new(&pl.point_id, 64, 2);
        let mut streamed =
            PackBuilder::streaming(&pl.point_id, Box::new(MemSink(got.clone())), 2).unwrap();
        // Small chunks are gathered; a large one (a quarter of the stage or more) is written
        // where it lies, after what was gathered; the stage fills past its size.
        let sizes = [
            10usize,
            0,
            70_000,
            3,
            SINK_STAGE / 4,
            5,
            SINK_STAGE + 7,
            900_000,
            200_000,
        ];
        for (i, n) in sizes.into_iter().enumerate() {
            let sealed: Vec<u8> = (0..n).map(|k| (k * 31 + i) as u8).collect();
            mem.add(Id32([i as u8; 32]), &sealed, n as u32 + 1).unwrap();
            streamed
                .add(Id32([i as u8; 32]), &sealed, n as u32 + 1)
                .unwrap();
            assert_eq!(mem.len(), streamed.len());
        }
        let hs = Sealer::new(&hk);
        let a = mem.finish(&hs, &pl).unwrap();
        // The same sealer state: a second sealer over the same key starts at the same nonce.
        let b = streamed.finish(&Sealer::new(&hk), &pl).unwrap();
        assert!(a.sink.is_none() && b.sink.is_some() && b.bytes.is_empty());
        assert_eq!(*got.lock().unwrap(), a.bytes);
        assert_eq!((a.id, a.len, &a.entries), (b.id, b.len, &b.entries));
        assert_eq!(a.len as usize, a.bytes.len());
        assert_eq!(a.id.0, content_hash(&a.bytes));
    }

    proptest! {
        /// chunk → compress → encrypt → pack → parse → decrypt → decompress → same bytes.
        #[test]
        fn chunk_pack_roundtrip(chunks in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..3000), 0usize..3), 1..12)) {
            let pl = place();
            let chain = SecretKey::random();
            let idk = ChunkIdKey::from_chain_key(&chain);
            let dk = SecretKey::random();
            let ck = dk.derive(crate::crypto::context::POINT_CHUNKS);
            let hk = dk.derive(crate::crypto::context::POINT_PACK_HEADERS);
            let cs = crate::crypto::ChunkSealer::new(&ck, &dk.derive(crate::crypto::context::CHUNK_NONCE));
            let hs = Sealer::new(&hk);
            let mut b = PackBuilder::new(&pl.point_id, 1024, 2);
            let mut plain = Vec::new();
            for (data, rep) in &chunks {
                let mut d = data.clone();
                for _ in 0..*rep { d.extend_from_slice(data); }
                let id = Id32(idk.id(&d));
                let sealed = cs.seal(&id.0, &pl.chunk_aad(&id), &encode_payload(&d, 3));
                b.add(id, &sealed, d.len() as u32).unwrap();
                plain.push((id, d));
            }
            let fin = b.finish(&hs, &pl).unwrap();
            prop_assert_eq!(fin.id.0, content_hash(&fin.bytes));
            let frame = parse_frame(&fin.bytes).unwrap();
            prop_assert_eq!(frame.point_id, pl.point_id);
            let hdr = open_header(&frame, &Opener::new(&hk), &pl).unwrap();
            prop_assert_eq!(&hdr, &fin.entries);
            let co = &cs;
            for (e, (id, d)) in hdr.iter().zip(plain.iter()) {
                prop_assert_eq!(e.chunk_id, *id);
                let s = &fin.bytes[e.offset as usize..e.offset as usize + e.length as usize];
                let p = co.open(&id.0, &pl.chunk_aad(id), s).unwrap();
                let out = decode_payload(&p, e.raw_len as usize).unwrap();
                prop_assert_eq!(&out, d);
                prop_assert_eq!(idk.id(&out), id.0);
                // The same sealed bytes under another chunk id do not authenticate.
                let other = Id32([0xee; 32]);
                prop_assert!(co.open(&other.0, &pl.chunk_aad(&other), s).is_err());
            }
        }
    }

    #[test]
    fn frame_rejects_garbage() {
        assert!(parse_frame(b"short").is_err());
        let mut b = PACK_MAGIC2.to_vec();
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&1000u32.to_le_bytes());
        assert!(parse_frame(&b).is_err());
    }
}
