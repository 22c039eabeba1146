//! Pack files: `magic || point_id || sealed chunks... || sealed header || header_len u32 LE`.
//! Version 1 chunks carry their nonce; version 2 chunks do not (it is derived from the chunk
//! id), so nothing in a v2 pack marks where one chunk ends and the next begins.

use super::format::*;
use crate::crypto::{content_hash, Opener, Sealer, SecretKey};

/// Collects sealed chunks of one recovery point into a pack.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackHeaderEntry>,
}

/// A finished pack, ready to be written under `id`.
pub struct FinishedPack {
    pub id: Id32,
    pub bytes: Vec<u8>,
    pub entries: Vec<PackHeaderEntry>,
}

impl PackBuilder {
    pub fn new(point_id: &Id16, capacity: usize, data_format: u32) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(if data_format >= 2 {
            PACK_MAGIC2
        } else {
            PACK_MAGIC
        });
        buf.extend_from_slice(&point_id.0);
        PackBuilder {
            buf,
            entries: Vec::new(),
        }
    }

    pub fn add(&mut self, chunk_id: Id32, sealed: &[u8], raw_len: u32) {
        self.entries.push(PackHeaderEntry {
            chunk_id,
            offset: self.buf.len() as u64,
            length: sealed.len() as u32,
            raw_len,
        });
        self.buf.extend_from_slice(sealed);
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals the header and names the pack by the BLAKE3 hash of all its bytes.
    pub fn finish(self, header_sealer: &Sealer, place: &PointPlace) -> FinishedPack {
        let header =
            header_sealer.seal(&place.pack_header_aad(), &encode_pack_header(&self.entries));
        self.finish_sealed(header)
    }

    /// [`PackBuilder::finish`] for a pack written after its point (by `arca prune`): the
    /// header is sealed with a random nonce, since the point's header counter is spent.
    pub fn finish_random_nonce(self, header_key: &SecretKey, place: &PointPlace) -> FinishedPack {
        let header = crate::crypto::seal_random_nonce(
            header_key,
            &place.pack_header_aad(),
            &encode_pack_header(&self.entries),
        );
        self.finish_sealed(header)
    }

    fn finish_sealed(mut self, header: Vec<u8>) -> FinishedPack {
        self.buf.extend_from_slice(&header);
        self.buf
            .extend_from_slice(&(header.len() as u32).to_le_bytes());
        FinishedPack {
            id: Id32(content_hash(&self.buf)),
            bytes: self.buf,
            entries: self.entries,
        }
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
                b.add(id, &sealed, d.len() as u32);
                plain.push((id, d));
            }
            let fin = b.finish(&hs, &pl);
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
