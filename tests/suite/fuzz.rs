//! Fuzzing on the stable toolchain (cargo-fuzz needs nightly, which cannot be installed here).
//!
//! 1. `parsers_never_panic`: a mutation loop over every parser of repository bytes, seeded
//!    with valid encodings; each call runs under `catch_unwind`.
//! 2. `mutated_repository_never_panics_or_lies`: a copy of the v2 fixture repository gets one
//!    random mutation per iteration (a flipped, inserted or deleted byte, a truncation, or a
//!    JSON field set to an extreme value), then the real binary restores and checks it. It
//!    must exit with a documented code (never a panic or a signal), and a restore that
//!    succeeds must produce exactly the files the point holds: never wrong plaintext.
//!
//! The iteration counts are fixed for the test command; for a longer run:
//! `ARCA_FUZZ_ITERS=300000 ARCA_FUZZ_REPO_ITERS=1500 ARCA_FUZZ_SEED=7 cargo test --test fuzz`
//! (a seed other than the default explores other mutations).

use crate::common;

use std::collections::BTreeMap;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

use arca::repo::format::*;
use arca::repo::pack::parse_frame;
use arca::repo::tree_bin;
use serde_json::Value;

/// xorshift64*: deterministic per seed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn iters(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    match rng.below(6) {
        0 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(b.len() + 1);
            b.insert(i, rng.next() as u8);
        }
        2 if !b.is_empty() => {
            let i = rng.below(b.len());
            b.remove(i);
        }
        3 => {
            let n = rng.below(b.len() + 1);
            b.truncate(n);
        }
        4 if b.len() >= 4 => {
            // An extreme length or count in a random place.
            let i = rng.below(b.len() - 3);
            b[i..i + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
        }
        _ => {
            let i = rng.below(b.len() + 1);
            let extra: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            b.splice(i..i, extra);
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let id = Id32([7; 32]);
    let e = IndexEntry {
        chunk_id: id,
        pack_id: id,
        offset: 24,
        length: 100,
        raw_len: 84,
    };
    let ph = PackHeaderEntry {
        chunk_id: id,
        offset: 24,
        length: 100,
        raw_len: 84,
    };
    let mut pack = PACK_MAGIC2.to_vec();
    pack.extend_from_slice(&[1; 16]);
    pack.extend_from_slice(&[0; 40]);
    pack.extend_from_slice(&40u32.to_le_bytes());
    let mut out = vec![
        encode_index(&[e, e]),
        encode_pack_header(&[ph]),
        pack,
        encode_payload(&b"hello hello hello hello hello hello hello hello hello hello hello".repeat(3), 3),
        br#"{"path":"a/b","type":"file","mode":420,"uid":1,"gid":1,"mtime_ns":5,"size":3,"chunks":["0707070707070707070707070707070707070707070707070707070707070707"]}"#.to_vec(),
        tree_bin::encode_tree(&binary_tree_seed()),
    ];
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/repo-v2/repo");
    for sub in ["config", "jobs", "chains", "points"] {
        let p = fixture.join(sub);
        if p.is_dir() {
            for f in std::fs::read_dir(p).unwrap() {
                out.push(std::fs::read(f.unwrap().path()).unwrap());
            }
        } else {
            out.push(std::fs::read(p).unwrap());
        }
    }
    out
}

/// A binary file index with every optional field of an entry in use.
fn binary_tree_seed() -> Vec<TreeEntry> {
    let mut f = TreeEntry::new("a/b".into(), None, EntryType::File);
    f.chunks = vec![Id32([7; 32])];
    f.at = Some(3);
    f.size = 3;
    f.mtime_ns = -5;
    f.xattrs = vec![Xattr {
        name: "user.x".into(),
        value: vec![1, 2],
    }];
    let mut l = TreeEntry::new(String::new(), Some(vec![0xff, b'l']), EntryType::Symlink);
    l.target = Some(b"a/b".to_vec());
    let mut d = TreeEntry::new("d".into(), None, EntryType::Blockdev);
    d.rdev = 0x801;
    let mut h = TreeEntry::new("c".into(), None, EntryType::File);
    h.hardlink = Some(b"a/b".to_vec());
    vec![f, l, d, h]
}

fn parse_all(data: &[u8]) {
    let _ = decode_index(data);
    let _ = decode_pack_header(data);
    let _ = decode_tree(data);
    // The binary file index is canonical: what decodes encodes back to the same bytes.
    if let Ok(entries) = tree_bin::decode_tree(data) {
        assert_eq!(
            tree_bin::encode_tree(&entries),
            data,
            "non-canonical file index"
        );
    }
    let _ = parse_frame(data);
    let _ = decode_payload(data, data.len());
    let _ = decode_payload(data, 1 << 20);
    if let Ok(p) = serde_json::from_slice::<PointRecord>(data) {
        let _ = (
            p.mac_input(),
            p.time_ns(),
            p.place().chunk_aad(&Id32([0; 32])),
        );
    }
    if let Ok(c) = serde_json::from_slice::<ChainRecord>(data) {
        let _ = c.mac_input();
        for s in &c.keyslots {
            let _ = s.params.bound();
            if let Some(w) = &s.wrapped {
                let _ = arca::crypto::WrappedKey::try_from(w);
            }
        }
    }
    if let Ok(j) = serde_json::from_slice::<JobRecord>(data) {
        let _ = (j.mac_input(), j.all_chains());
    }
    if let Ok(e) = serde_json::from_slice::<EscrowRecord>(data) {
        let _ = e.aad();
    }
    let _ = serde_json::from_slice::<RepoConfig>(data);
    let _ = serde_json::from_slice::<PointBody>(data);
}

#[test]
fn parsers_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(iters("ARCA_FUZZ_SEED", 0x9E37_79B9) as u64 | 1);
    let n = iters("ARCA_FUZZ_ITERS", 20_000);
    for i in 0..n {
        let mut b = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate_bytes(&mut rng, &mut b);
        }
        let r = catch_unwind(|| parse_all(&b));
        assert!(
            r.is_ok(),
            "iteration {i}: a parser panicked on {}",
            hex::encode(&b)
        );
    }
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else if p.file_name().unwrap() != "lock" {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Sets a random leaf of a JSON document to an extreme value, or removes it.
fn mutate_json(rng: &mut Rng, v: &mut Value) -> bool {
    let mut leaves: Vec<Vec<String>> = Vec::new();
    fn walk(v: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let mut p = path.clone();
                    p.push(k.clone());
                    walk(c, p, out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(i.to_string());
                    walk(c, p, out);
                }
            }
            _ => out.push(path),
        }
    }
    walk(v, Vec::new(), &mut leaves);
    if leaves.is_empty() {
        return false;
    }
    let path = leaves[rng.below(leaves.len())].clone();
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        cur = match cur {
            Value::Object(m) => m.get_mut(k).unwrap(),
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    let last = path.last().unwrap();
    let new = match rng.below(8) {
        0 => Value::from(u64::MAX),
        1 => Value::from(-1),
        2 => Value::from(0),
        3 => Value::String(String::new()),
        4 => Value::String("../../etc/passwd".into()),
        5 => Value::String(hex::encode([rng.next() as u8; 16])),
        6 => Value::Null,
        _ => {
            if let Value::Object(m) = cur {
                m.remove(last);
            }
            return true;
        }
    };
    match cur {
        Value::Object(m) => {
            m.insert(last.clone(), new);
        }
        Value::Array(a) => a[last.parse::<usize>().unwrap()] = new,
        _ => unreachable!(),
    }
    true
}

#[test]
fn mutated_repository_never_panics_or_lies() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/repo-v2");
    let want: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&std::fs::read(fixture.join("manifest.json")).unwrap()).unwrap();
    let env = common::Env::new();
    let pristine = env.path("pristine");
    common::copy_dir(&fixture.join("repo"), &pristine);
    let mut rng = Rng(iters("ARCA_FUZZ_SEED", 0xA5CA_2026) as u64 | 1);
    let n = iters("ARCA_FUZZ_REPO_ITERS", 200);
    let pass = [("ARCA_PASSPHRASE", "vector")];
    let allowed = [0, 1, 2, 12, 13, 14];
    for i in 0..n {
        let repo = env.path(&format!("r{i}"));
        common::copy_dir(&pristine, &repo);
        let files = all_files(&repo);
        let f = &files[rng.below(files.len())];
        let mut b = std::fs::read(f).unwrap();
        let mut what = format!("{} ", f.strip_prefix(&repo).unwrap().display());
        let mut json = serde_json::from_slice::<Value>(&b).ok();
        let edited = match json.as_mut() {
            Some(v) if rng.below(3) > 0 => mutate_json(&mut rng, v),
            _ => false,
        };
        if edited {
            b = serde_json::to_vec(json.as_ref().unwrap()).unwrap();
            what.push_str("json field");
        } else {
            mutate_bytes(&mut rng, &mut b);
            what.push_str("bytes");
        }
        std::fs::write(f, &b).unwrap();
        let (point, files_want) = want.iter().nth(rng.below(want.len())).unwrap();
        let t = env.path(&format!("t{i}"));
        let r = env.run_env(
            &[
                "restore",
                "fixture",
                point,
                "--repo",
                repo.to_str().unwrap(),
                "--target",
                t.to_str().unwrap(),
            ],
            &pass,
        );
        assert!(
            allowed.contains(&r.code),
            "iteration {i} ({what}): restore exited {}: {}",
            r.code,
            r.stderr
        );
        assert!(
            !r.stderr.contains("panicked"),
            "iteration {i} ({what}): {}",
            r.stderr
        );
        if r.code == 0 {
            assert_eq!(
                &common::manifest(&t),
                files_want,
                "iteration {i} ({what}): wrong plaintext restored"
            );
        }
        let r = env.run_env(
            &[
                "check",
                "fixture",
                "--read-data",
                "--repo",
                repo.to_str().unwrap(),
            ],
            &pass,
        );
        assert!(
            allowed.contains(&r.code) && !r.stderr.contains("panicked"),
            "iteration {i} ({what}): check exited {}: {}",
            r.code,
            r.stderr
        );
        std::fs::remove_dir_all(&repo).unwrap();
        let _ = std::fs::remove_dir_all(&t);
    }
}
