//! Throughput of each stage of the backup pipeline (and of a restore's decoding) on one
//! core, on 256 MiB of half-compressible data in memory: `cargo bench --bench pipeline`.
//! (End-to-end numbers against restic and borg: bench/compare.sh.)
//!
//! `PIPELINE_TREE=DIR cargo bench --bench pipeline` measures instead what each stage costs
//! on one core over every regular file of a real tree, reading it and (restore) writing it
//! back below `PIPELINE_OUT` (default: beside DIR): the sum of the stages, halved, is the
//! least wall time a backup or a restore of that tree can take on two cores, whatever the
//! threads do (bench/floor.sh prints it beside restic's and `tar | zstd`'s).

use std::time::Instant;

use arca::crypto::{ChunkIdKey, ChunkSealer, Sealer, SecretKey};
use arca::engine::backup::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
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

/// The place (repository, job, chain, point) the bench's chunks are sealed for.
fn bench_place() -> PointPlace {
    PointPlace {
        repo_id: Id16([1; 16]),
        job_id: Id16([2; 16]),
        chain_id: Id16([3; 16]),
        point_id: Id16([4; 16]),
        data_format: 2,
    }
}

fn main() {
    if let Some(dir) = std::env::var_os("PIPELINE_TREE") {
        return tree(std::path::Path::new(&dir));
    }
    let buf = data(256 * 1024 * 1024);
    let cdc = CdcParams::new(CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
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

    let place = bench_place();
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
    file_index();
}

/// The file index of 100,000 files (one chunk each, bundled, rustdoc-like paths): encoding
/// as a backup writes it and decoding as a restore reads it, binary records against the
/// JSON lines of points written before them.
fn file_index() {
    use arca::repo::format::{decode_tree, encode_tree, EntryType, TreeEntry};
    use arca::repo::tree_bin;
    let entries: Vec<TreeEntry> = (0..100_000u64)
        .map(|i| TreeEntry {
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime_ns: 1_700_000_000_000_000_000 + i as i128 * 1_000_003,
            size: 4000 + i % 5000,
            inode: 1_000_000 + i,
            ctime_ns: 1_700_000_000_000_000_000 + i as i128 * 999_983,
            chunks: vec![Id32([(i % 251) as u8; 32])],
            at: Some((i % 100) * 9000),
            ..TreeEntry::new(
                format!("share/doc/rust/html/std/module{}/fn.item_{i}.html", i % 300),
                None,
                EntryType::File,
            )
        })
        .collect();
    for (name, enc, dec) in [
        (
            "binary",
            tree_bin::encode_tree as fn(&[TreeEntry]) -> Vec<u8>,
            (|b: &[u8]| tree_bin::decode_tree(b).map(|v| v.len()))
                as fn(&[u8]) -> Result<usize, arca::repo::format::ParseError>,
        ),
        ("JSON lines", encode_tree, |b: &[u8]| {
            decode_tree(b).map(|v| v.len())
        }),
    ] {
        let t = Instant::now();
        let bytes = enc(&entries);
        let te = t.elapsed().as_secs_f64();
        let t = Instant::now();
        assert_eq!(dec(&bytes).unwrap(), entries.len());
        let td = t.elapsed().as_secs_f64();
        println!(
            "file index, {name:<10} {:>5.0} ns/entry encode, {:>5.0} ns/entry decode, {} bytes/entry",
            te * 1e9 / entries.len() as f64,
            td * 1e9 / entries.len() as f64,
            bytes.len() / entries.len()
        );
    }
}

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            files(&p, out);
        } else if m.is_file() {
            out.push(p);
        }
    }
}

/// One core's cost of each stage over a real tree, in seconds, and their sums. Only the
/// work a backup or a restore does is timed: the copies and allocations that keep every
/// stage's output in memory for the next one are not (arca's pipeline reuses its buffers).
fn tree(dir: &std::path::Path) {
    use std::io::Read;
    use std::time::Duration;
    let mut paths = Vec::new();
    files(dir, &mut paths);
    let mut stages: Vec<(&str, &str, f64)> = Vec::new();
    let mut record = |side: &'static str, stage: &'static str, d: Duration| {
        let s = d.as_secs_f64();
        println!("{side:<8} {stage:<40} {s:>7.3} s");
        stages.push((side, stage, s));
    };
    fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        *acc += t.elapsed();
        r
    }

    // Read as a backup does: a buffer of a chunk's maximum, reused.
    let mut d = Duration::ZERO;
    let mut buf = vec![0u8; 4 << 20];
    let mut contents: Vec<Vec<u8>> = Vec::with_capacity(paths.len());
    for p in &paths {
        let mut c = Vec::new();
        let mut f = timed(&mut d, || std::fs::File::open(p).unwrap());
        loop {
            let n = timed(&mut d, || f.read(&mut buf).unwrap());
            if n == 0 {
                break;
            }
            c.extend_from_slice(&buf[..n]);
        }
        timed(&mut d, || drop(f));
        contents.push(c);
    }
    record("backup", "read (open, read, close)", d);
    let bytes: usize = contents.iter().map(Vec::len).sum();

    let key = SecretKey::random();
    let gear = std::sync::Arc::new(arca::crypto::gear_tables(&key));
    let cdc = CdcParams::new(CHUNK_MIN, CHUNK_AVG, CHUNK_MAX).with_gear(Some(gear));
    let t = Instant::now();
    let chunks: Vec<&[u8]> = contents.iter().flat_map(|c| cdc.split(c)).collect();
    record("backup", "keyed FastCDC chunking", t.elapsed());

    let idk = ChunkIdKey::from_chain_key(&key);
    let t = Instant::now();
    let ids: Vec<Id32> = chunks.iter().map(|c| Id32(idk.id(c))).collect();
    record("backup", "keyed BLAKE3 chunk ids", t.elapsed());

    let mut z = chunk_compressor(1);
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    let mut d = Duration::ZERO;
    let mut sealed: Vec<Vec<u8>> = Vec::with_capacity(chunks.len());
    for c in &chunks {
        timed(&mut d, || {
            encode_payload_into(&mut z, c, &mut scratch, &mut out)
        });
        sealed.push(out.clone());
    }
    record("backup", "zstd level 1 (or raw)", d);

    let place = bench_place();
    let sealer = ChunkSealer::new(&SecretKey::random(), &SecretKey::random());
    let t = Instant::now();
    for (p, id) in sealed.iter_mut().zip(&ids) {
        sealer.seal_in_place(&id.0, &place.chunk_aad(id), p);
    }
    record("backup", "AES-256-GCM sealing", t.elapsed());

    let headers = Sealer::new(&SecretKey::random());
    let out_dir = std::env::var_os("PIPELINE_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.with_extension("pipeline-out"));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(out_dir.join("packs")).unwrap();
    let t = Instant::now();
    let mut pack = PackBuilder::new(&place.point_id, 20 << 20, 2);
    let mut packs = Vec::new();
    let write_pack = |pack: PackBuilder, packs: &mut Vec<std::path::PathBuf>| {
        let done = pack.finish(&headers, &place).unwrap();
        let p = out_dir.join("packs").join(done.id.hex());
        std::fs::write(&p, &done.bytes).unwrap();
        packs.push(p);
    };
    for ((s, id), c) in sealed.iter().zip(&ids).zip(&chunks) {
        pack.add(*id, s, c.len() as u32).unwrap();
        if pack.len() >= 16 << 20 {
            let full = std::mem::replace(&mut pack, PackBuilder::new(&place.point_id, 20 << 20, 2));
            write_pack(full, &mut packs);
        }
    }
    write_pack(pack, &mut packs);
    record("backup", "packs: build, hash, write", t.elapsed());
    let stored: usize = sealed.iter().map(Vec::len).sum();

    // Restore: packs read into a reused buffer.
    let t = Instant::now();
    let mut read = 0;
    let mut pbuf = Vec::new();
    for p in &packs {
        let mut f = std::fs::File::open(p).unwrap();
        pbuf.clear();
        read += f.read_to_end(&mut pbuf).unwrap();
    }
    record("restore", "read packs", t.elapsed());
    assert!(read >= stored);
    let t = Instant::now();
    for (s, id) in sealed.iter_mut().zip(&ids) {
        sealer.open_in_buf(&id.0, &place.chunk_aad(id), s).unwrap();
    }
    record("restore", "AES-256-GCM opening", t.elapsed());
    let mut dz = zstd::bulk::Decompressor::new().unwrap();
    let mut plain = Vec::new();
    let t = Instant::now();
    for (s, c) in sealed.iter().zip(&chunks) {
        std::hint::black_box(decode_payload_into(&mut dz, s, c.len(), &mut plain).unwrap());
    }
    let decode = t.elapsed();
    record("restore", "zstd decoding", decode);
    let t = Instant::now();
    for ((s, c), id) in sealed.iter().zip(&chunks).zip(&ids) {
        let d = decode_payload_into(&mut dz, s, c.len(), &mut plain).unwrap();
        assert_eq!(idk.id(d), id.0);
    }
    record(
        "restore",
        "keyed BLAKE3 check",
        t.elapsed().saturating_sub(decode),
    );
    let files_dir = out_dir.join("files");
    std::fs::create_dir_all(&files_dir).unwrap();
    let t = Instant::now();
    for (i, c) in contents.iter().enumerate() {
        std::fs::write(files_dir.join(i.to_string()), c).unwrap();
    }
    record("restore", "write files (create, write, close)", t.elapsed());
    std::fs::remove_dir_all(&out_dir).unwrap();

    println!(
        "{} files, {:.1} MB, {} chunks, {:.1} MB stored",
        contents.len(),
        bytes as f64 / 1e6,
        chunks.len(),
        stored as f64 / 1e6
    );
    for side in ["backup", "restore"] {
        let sum: f64 = stages.iter().filter(|s| s.0 == side).map(|s| s.2).sum();
        println!(
            "{side} total {sum:.3} CPU-s on one core: at least {:.3} s on two",
            sum / 2.0
        );
    }
}
