//! Throughput of each stage of the backup pipeline (and of a restore's decoding) on one
//! core, on 256 MiB of half-compressible data in memory: `cargo bench --bench pipeline`.
//! (End-to-end numbers against restic and borg: bench/compare.sh.)

use std::time::Instant;

use arca::crypto::{ChunkIdKey, ChunkSealer, Sealer, SecretKey};
use arca::engine::chunker::CdcParams;
use arca::repo::format::{
    chunk_compressor, decode_payload_into, encode_payload_into, Id16, Id32, PointPlace,
};
use arca::repo::pack::PackBuilder;

fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (out.len() / 65536) % 2 == 0 {
            out.extend_from_slice(b"log line: user=42 action=backup status=ok\n");
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn report(stage: &str, bytes: usize, start: Instant) {
    let s = start.elapsed().as_secs_f64();
    println!(
        "{stage:<28} {:>8.1} MB/s  ({:.3} s)",
        bytes as f64 / 1e6 / s,
        s
    );
}

fn main() {
    let buf = data(256 * 1024 * 1024);
    let cdc = CdcParams::new(256 * 1024, 1024 * 1024, 4 * 1024 * 1024);
    let t = Instant::now();
    let chunks = cdc.split(&buf);
    report("FastCDC chunking", buf.len(), t);

    let idk = ChunkIdKey::from_chain_key(&SecretKey::random());
    let t = Instant::now();
    let ids: Vec<Id32> = chunks.iter().map(|c| Id32(idk.id(c))).collect();
    report("keyed BLAKE3 chunk ids", buf.len(), t);

    // As a backup's workers do: zstd at the default level into reused buffers, then AES-GCM
    // in place.
    let mut z = chunk_compressor(1);
    let mut scratch = Vec::new();
    let t = Instant::now();
    let payloads: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| {
            let mut out = Vec::new();
            encode_payload_into(&mut z, c, &mut scratch, &mut out);
            out
        })
        .collect();
    report("zstd level 1 (or raw)", buf.len(), t);

    let place = PointPlace {
        repo_id: Id16([1; 16]),
        job_id: Id16([2; 16]),
        chain_id: Id16([3; 16]),
        point_id: Id16([4; 16]),
        data_format: 2,
    };
    let sealer = ChunkSealer::new(&SecretKey::random(), &SecretKey::random());
    let t = Instant::now();
    let sealed: Vec<Vec<u8>> = payloads
        .into_iter()
        .zip(&ids)
        .map(|(mut p, id)| {
            sealer.seal_in_place(&id.0, &place.chunk_aad(id), &mut p);
            p
        })
        .collect();
    report("AES-256-GCM sealing in place", buf.len(), t);

    // Packs of ~16 MiB: copying the sealed chunks in and hashing the pack (its name).
    let headers = Sealer::new(&SecretKey::random());
    let t = Instant::now();
    let mut packs = 0;
    let mut pack = PackBuilder::new(&place.point_id, 20 << 20, 2);
    for ((s, id), c) in sealed.iter().zip(&ids).zip(&chunks) {
        pack.add(*id, s, c.len() as u32).unwrap();
        if pack.len() >= 16 << 20 {
            let full = std::mem::replace(&mut pack, PackBuilder::new(&place.point_id, 20 << 20, 2));
            std::hint::black_box(full.finish(&headers, &place).unwrap().id);
            packs += 1;
        }
    }
    std::hint::black_box(pack.finish(&headers, &place).unwrap().id);
    report("pack building and hashing", buf.len(), t);

    // A restore's decoding: open, decompress, re-hash to check the id.
    // (One buffer for the sealed chunk read and one for its plaintext, as a restore keeps.)
    let mut dz = zstd::bulk::Decompressor::new().unwrap();
    let (mut p, mut out) = (Vec::new(), Vec::new());
    let t = Instant::now();
    for ((s, id), c) in sealed.iter().zip(&ids).zip(&chunks) {
        p.clear();
        p.extend_from_slice(s);
        sealer
            .open_in_buf(&id.0, &place.chunk_aad(id), &mut p)
            .unwrap();
        let d = decode_payload_into(&mut dz, &p, c.len(), &mut out).unwrap();
        assert_eq!(idk.id(d), id.0);
    }
    report("restore decode and verify", buf.len(), t);
    let stored: usize = sealed.iter().map(Vec::len).sum();
    println!(
        "{} chunks in {} packs, {:.1} MiB stored of {} MiB",
        chunks.len(),
        packs + 1,
        stored as f64 / 1048576.0,
        buf.len() / 1048576
    );
}
