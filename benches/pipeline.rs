//! Throughput of each stage of the backup pipeline on one core, on 256 MiB of
//! half-compressible data in memory: `cargo bench --bench pipeline`.
//! (End-to-end numbers against restic and borg: bench/compare.sh.)

use std::time::Instant;

use arca::crypto::{ChunkIdKey, ChunkSealer, SecretKey};
use arca::engine::chunker::CdcParams;
use arca::repo::format::{encode_payload_with, Id16, Id32, PointPlace};

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

    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    let t = Instant::now();
    let payloads: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| encode_payload_with(&mut z, c))
        .collect();
    report("zstd level 3 (or raw)", buf.len(), t);

    let place = PointPlace {
        repo_id: Id16([1; 16]),
        job_id: Id16([2; 16]),
        chain_id: Id16([3; 16]),
        point_id: Id16([4; 16]),
        data_format: 2,
    };
    let sealer = ChunkSealer::new(&SecretKey::random(), &SecretKey::random());
    let t = Instant::now();
    let sealed: usize = payloads
        .iter()
        .zip(&ids)
        .map(|(p, id)| sealer.seal(&id.0, &place.chunk_aad(id), p).len())
        .sum();
    report(
        "AES-256-GCM sealing (v2: nonce derived per chunk id)",
        buf.len(),
        t,
    );
    println!(
        "{} chunks, {:.1} MiB stored of {} MiB",
        chunks.len(),
        sealed as f64 / 1048576.0,
        buf.len() / 1048576
    );
}
