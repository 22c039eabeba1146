//! One suite, every backend: the same contract checked on a local directory and on the
//! loopback S3 server (moto) that ./scripts/test.sh starts.

use crate::common;

use std::io::ErrorKind;
use std::time::Duration;

use arca::repo::format::Id16;
use arca::repo::store::local::LocalStore;
use arca::repo::store::s3::{S3Settings, S3Store};
use arca::repo::store::{LockScope, Store};
use arca::repo::{LockHolder, LockKind};

fn holder(pid: u32) -> LockHolder {
    LockHolder {
        pid,
        host: "test-host".into(),
        command: "backend suite".into(),
        since: "2026-12-04T00:00:00Z".into(),
        lock: "repository".into(),
        kind: "exclusive".into(),
    }
}

fn s3_settings() -> S3Settings {
    S3Settings {
        endpoint: Some(common::s3_endpoint()),
        path_style: Some(true),
        region: Some("us-east-1".into()),
        part_size: Some(5 << 20),
        lease_seconds: Some(3),
        ..Default::default()
    }
}

fn s3_store() -> S3Store {
    // The SDK takes credentials from the environment; the moto server accepts any.
    crate::common::in_process_aws_credentials();
    let bucket = common::s3_bucket(false);
    S3Store::open_with(&bucket, "some/prefix", s3_settings()).unwrap()
}

fn local_store(d: &tempfile::TempDir) -> LocalStore {
    LocalStore::open(d.path()).unwrap()
}

fn objects_roundtrip(s: &dyn Store) {
    s.put("points/a.json", &[b"hello ", b"world"]).unwrap();
    assert_eq!(s.get("points/a.json", 100).unwrap(), b"hello world");
    assert_eq!(s.size("points/a.json").unwrap(), Some(11));
    s.put("points/a.json", &[b"replaced"]).unwrap();
    assert_eq!(s.get("points/a.json", 100).unwrap(), b"replaced");
    // Missing objects.
    assert_eq!(
        s.get("points/nope.json", 100).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(s.size("points/nope.json").unwrap(), None);
    // Bounded reads refuse before allocating.
    s.put("index/big", &[&[7u8; 4096]]).unwrap();
    assert_eq!(
        s.get("index/big", 4095).unwrap_err().kind(),
        ErrorKind::InvalidData
    );
    assert_eq!(s.get("index/big", 4096).unwrap().len(), 4096);
    // Keys with '..' or empty components never reach the backend.
    assert!(s.put("../escape", &[b"x"]).is_err());
    assert!(s.get("points//a.json", 10).is_err());
}

fn conditional_create(s: &dyn Store) {
    s.put_new("locks/one.json", b"first").unwrap();
    assert_eq!(
        s.put_new("locks/one.json", b"second").unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(s.get("locks/one.json", 100).unwrap(), b"first");
}

fn listing_and_delete(s: &dyn Store) {
    for k in [
        "packs/ab/ab01",
        "packs/ab/ab02",
        "packs/cd/cd01",
        "index/x1",
        "config",
    ] {
        s.put(k, &[k.as_bytes()]).unwrap();
    }
    let keys: Vec<String> = s
        .list("packs")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["packs/ab/ab01", "packs/ab/ab02", "packs/cd/cd01"]);
    assert!(s.list("nothing-here").unwrap().is_empty());
    s.delete("packs/ab/ab01").unwrap();
    s.delete("packs/ab/ab01").unwrap(); // already gone: not an error
    let keys: Vec<String> = s
        .list("packs")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["packs/ab/ab02", "packs/cd/cd01"]);
    assert_eq!(
        s.get("packs/ab/ab01", 100).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

fn ranges(s: &dyn Store) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.put("packs/ee/ee01", &[&data]).unwrap();
    for cached in [false, true] {
        let mut r = if cached {
            s.reader_cached("packs/ee/ee01").unwrap()
        } else {
            s.reader("packs/ee/ee01").unwrap()
        };
        assert_eq!(r.read_at(10, 20).unwrap(), &data[10..30]);
        assert_eq!(r.read_at(99_000, 1000).unwrap(), &data[99_000..]);
        assert_eq!(r.read_at(5, 7).unwrap(), &data[5..12]);
        assert_eq!(
            r.read_at(99_990, 20).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
    }
}

/// Reads through an object larger than several read windows in order, in pieces that cross
/// the windows' boundaries, then backwards: every byte as written.
fn sequential_and_straddling_reads(s: &dyn Store) {
    let data = common::pseudo_random((9 << 20) + 123, 11, false);
    s.put("packs/dd/dd01", &[&data]).unwrap();
    let mut r = s.reader("packs/dd/dd01").unwrap();
    let mut off = 0usize;
    for step in [700_001usize, 1 << 20, 3_333_333, 12, 2_000_000]
        .iter()
        .cycle()
    {
        if off >= data.len() {
            break;
        }
        let n = (*step).min(data.len() - off);
        assert_eq!(
            r.read_at(off as u64, n as u64).unwrap(),
            &data[off..off + n],
            "at {off}"
        );
        off += n;
    }
    for off in [8_000_000usize, 4_194_300, 10, 9_437_000] {
        let n = 1000.min(data.len() - off);
        assert_eq!(
            r.read_at(off as u64, n as u64).unwrap(),
            &data[off..off + n]
        );
    }
}

fn background_writes(s: &dyn Store) {
    let big: Vec<u8> = common::pseudo_random(12 << 20, 5, false);
    for i in 0..6u8 {
        let mut d = big[..(1 << 20) + i as usize].to_vec();
        d[0] = i;
        s.put_background(format!("packs/f{i}/f{i}00"), d).unwrap();
    }
    // Larger than the part size of the S3 suite (5 MiB): a multipart upload.
    s.put_background("packs/ff/ff00".into(), big.clone())
        .unwrap();
    s.flush().unwrap();
    assert_eq!(s.get("packs/ff/ff00", 16 << 20).unwrap(), big);
    for i in 0..6u8 {
        let got = s.get(&format!("packs/f{i}/f{i}00"), 2 << 20).unwrap();
        assert_eq!(got.len(), (1 << 20) + i as usize);
        assert_eq!(got[0], i);
    }
    // A whole object above the part size through put() too.
    s.put("index/large", &[&big[..6 << 20], &big[6 << 20..]])
        .unwrap();
    assert_eq!(s.get("index/large", 16 << 20).unwrap(), big);
}

/// A store that streams objects (a local directory) names them only on commit; one dropped
/// unfinished leaves nothing, not even in `tmp/`. A store that takes objects whole says so.
fn streamed_writes(s: &dyn Store) {
    let Some(mut sink) = s.put_stream().unwrap() else {
        assert!(s.local_root().is_none(), "a local directory streams packs");
        return;
    };
    let data = common::pseudo_random(3 << 20, 9, false);
    for piece in data.chunks(100_000) {
        sink.write(piece).unwrap();
    }
    assert!(
        s.list("packs/e0").unwrap().is_empty(),
        "nothing named before commit"
    );
    sink.commit("packs/e0/e000").unwrap();
    assert_eq!(s.get("packs/e0/e000", 4 << 20).unwrap(), data);

    let mut dropped = s.put_stream().unwrap().unwrap();
    dropped.write(&data[..1000]).unwrap();
    let tmp = s.local_root().unwrap().join("tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 1);
    drop(dropped);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "an abandoned stream is removed"
    );
    // A key that could leave the repository is refused at commit, and nothing is left.
    let mut bad = s.put_stream().unwrap().unwrap();
    bad.write(b"x").unwrap();
    assert!(bad.commit("../escape").is_err());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

fn locks(s: &dyn Store, other: &dyn Store) {
    let repo = LockScope::Repository;
    let ex = s.lock(repo, LockKind::Exclusive, &holder(11)).unwrap();
    assert!(ex.is_some());
    assert!(other
        .lock(repo, LockKind::Exclusive, &holder(12))
        .unwrap()
        .is_none());
    assert!(other
        .lock(repo, LockKind::Shared, &holder(12))
        .unwrap()
        .is_none());
    drop(ex);
    let sh1 = s.lock(repo, LockKind::Shared, &holder(11)).unwrap();
    let sh2 = other.lock(repo, LockKind::Shared, &holder(12)).unwrap();
    assert!(sh1.is_some() && sh2.is_some());
    assert!(other
        .lock(repo, LockKind::Exclusive, &holder(12))
        .unwrap()
        .is_none());
    // A chain lock is independent of the repository lock and of other chains.
    let (a, b) = (Id16([1; 16]), Id16([2; 16]));
    let ca = s
        .lock(LockScope::Chain(a), LockKind::Exclusive, &holder(11))
        .unwrap();
    assert!(ca.is_some());
    assert!(other
        .lock(LockScope::Chain(a), LockKind::Exclusive, &holder(12))
        .unwrap()
        .is_none());
    assert!(other
        .lock(LockScope::Chain(b), LockKind::Exclusive, &holder(12))
        .unwrap()
        .is_some());
    drop((sh1, sh2, ca));
    let ex = other.lock(repo, LockKind::Exclusive, &holder(12)).unwrap();
    assert!(ex.is_some(), "released locks are free again");
}

fn suite(s: &dyn Store, other: &dyn Store) {
    objects_roundtrip(s);
    conditional_create(s);
    listing_and_delete(s);
    ranges(s);
    sequential_and_straddling_reads(s);
    background_writes(s);
    streamed_writes(s);
    locks(s, other);
}

#[test]
fn local_backend_suite() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (local_store(&d), local_store(&d));
    suite(&a, &b);
}

#[test]
fn s3_backend_suite() {
    let a = s3_store();
    let bucket = a
        .location()
        .strip_prefix("s3://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let b = S3Store::open_with(&bucket, "some/prefix", s3_settings()).unwrap();
    suite(&a, &b);
    // Everything stayed below the prefix.
    for k in common::s3_keys(&bucket) {
        assert!(k.starts_with("some/prefix/"), "{k}");
    }
}

#[test]
fn s3_leases_are_renewed_while_held() {
    let a = s3_store();
    let bucket = a
        .location()
        .strip_prefix("s3://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let b = S3Store::open_with(&bucket, "some/prefix", s3_settings()).unwrap();
    let held = a
        .lock(LockScope::Repository, LockKind::Exclusive, &holder(21))
        .unwrap()
        .expect("free");
    // Three lease lengths later the holder's renewals still keep others out.
    std::thread::sleep(Duration::from_secs(9));
    assert!(b
        .lock(LockScope::Repository, LockKind::Exclusive, &holder(22))
        .unwrap()
        .is_none());
    let holders = b.lock_holders();
    assert!(holders.iter().any(|h| h.pid == 21), "{holders:?}");
    drop(held);
    assert!(b
        .lock(LockScope::Repository, LockKind::Exclusive, &holder(22))
        .unwrap()
        .is_some());
}

#[test]
fn s3_exclusive_taker_clears_the_chain_lease_of_a_holder_whose_shared_lease_ran_out() {
    // A backup holds a shared repository lease and its chain's lease, each renewed on its own
    // timer; killed, the chain lease may outlive the shared one by a renewal period. Leases
    // are written here as the dead holder left them.
    let s = s3_store();
    let bucket = s.location()["s3://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let admin = common::s3_admin();
    let put = |key: &str, expires: u64| {
        let body =
            serde_json::to_vec(&serde_json::json!({"holder": holder(31), "expires": expires}))
                .unwrap();
        common::s3_block(
            admin
                .put_object()
                .bucket(&bucket)
                .key(format!("some/prefix/locks/{key}"))
                .body(body.into())
                .send(),
        )
        .unwrap();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let shared = "repository.shared.00112233445566778899aabbccddeeff.json";
    let chain_id = Id16::parse("ffeeddccbbaa99887766554433221100").unwrap();
    let chain = &format!("chain.{}.json", chain_id.hex());
    let has = |name: &str| {
        common::s3_keys(&bucket)
            .iter()
            .any(|k| k.ends_with(&format!("/locks/{name}")))
    };

    // While its shared lease is live the holder counts as alive: the exclusive taker backs
    // off and removes nothing.
    put(shared, now + 60);
    put(chain, now + 60);
    assert!(s
        .lock(LockScope::Repository, LockKind::Exclusive, &holder(32))
        .unwrap()
        .is_none());
    assert!(has(shared) && has(chain));

    // The shared lease ran out, the chain lease not yet: the holder is gone, and taking the
    // repository clears both.
    put(shared, now - 1);
    let g = s
        .lock(LockScope::Repository, LockKind::Exclusive, &holder(32))
        .unwrap()
        .expect("no live shared lease");
    assert!(!has(shared), "{:?}", common::s3_keys(&bucket));
    assert!(!has(chain), "{:?}", common::s3_keys(&bucket));
    drop(g);
    // And the chain is free again for a live holder.
    assert!(s
        .lock(LockScope::Chain(chain_id), LockKind::Exclusive, &holder(33))
        .unwrap()
        .is_some());
}
