//! Key-hierarchy properties checked on a repository written by the real binary, read back
//! through the library (docs/FORMAT.md; DESIGN properties 2, 3, 4).

use crate::common;

use std::collections::{HashMap, HashSet};
use std::fs;

use arca::engine::{ChainIndex, OpenChain};
use arca::keys::raw::RawKeyProvider;
use arca::keys::{unwrap_any, SlotContext};
use arca::repo::Repository;
use common::*;

fn setup() -> (Env, std::path::PathBuf, String) {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..30 {
        write(
            &src.join(format!("f{i}")),
            &pseudo_random(700_000 + i * 1000, i as u64, i % 2 == 0),
        );
    }
    let repo = env.path("repo");
    env.run(&["init", repo.to_str().unwrap()]).ok();
    let kf = env.path("k.key");
    env.run(&["key", "generate", "--out", kf.to_str().unwrap()])
        .ok();
    let k = kf.to_str().unwrap();
    env.run(&[
        "--key-file",
        k,
        "job",
        "create",
        "j",
        "--repo",
        repo.to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
        "--encryption",
        "key",
    ])
    .ok();
    env.run(&["backup", "j"]).ok();
    for i in 0..5 {
        write(
            &src.join(format!("new{i}")),
            &pseudo_random(900_000, 100 + i, false),
        );
        env.run(&["backup", "j"]).ok();
    }
    let text = fs::read_to_string(&kf).unwrap();
    (env, repo, text)
}

async fn open(repo: &Repository, key: &str) -> OpenChain {
    let job = repo.find_job("j").unwrap();
    let chain = repo.read_chain(&job.chain_id).unwrap();
    let ctx = SlotContext::of_chain(&chain, "j");
    let p = RawKeyProvider::from_base64(key).unwrap();
    let k = unwrap_any(&p, &chain.keyslots, &ctx)
        .await
        .unwrap()
        .unwrap();
    OpenChain::new(chain, k, "j").unwrap()
}

#[tokio::test]
async fn data_keys_single_use_and_nonces_unique() {
    let (_env, root, key) = setup();
    let repo = Repository::open(&root).unwrap();
    let oc = open(&repo, &key).await;
    let job = repo.find_job("j").unwrap();
    let points = repo.list_points(&job.job_id).unwrap();
    assert_eq!(points.len(), 6);
    let mut keys = HashSet::new();
    for p in &points {
        assert!(
            keys.insert(oc.data_key(p).unwrap().expose().to_vec()),
            "two points share a data key"
        );
    }
    let idx = ChainIndex::load(&repo, &oc, &points).unwrap();
    // Under each point's chunk key, every sealed chunk has its own nonce (format v2: derived
    // from the chunk id with the point's nonce key, never stored in the pack).
    let by_point: HashMap<u32, arca::crypto::ChunkSealer> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let k = arca::engine::PointKeys::new(&oc.data_key(p).unwrap(), p.place());
            (
                i as u32,
                arca::crypto::ChunkSealer::new(&k.chunks, &k.chunk_nonces),
            )
        })
        .collect();
    let mut nonces: HashMap<u32, HashSet<[u8; 12]>> = HashMap::new();
    let mut files = HashMap::new();
    for (id, loc) in idx.iter() {
        let nonce = by_point[&loc.point].nonce(&id.0);
        assert!(
            nonces.entry(loc.point).or_default().insert(nonce),
            "nonce reused under one key"
        );
        // The sealed chunk is exactly ciphertext and tag: no nonce, no length marker.
        let pack = idx.packs[loc.pack as usize];
        let f = files
            .entry(loc.pack)
            .or_insert_with(|| repo.open_pack(&pack).unwrap());
        let sealed = Repository::read_pack_range(f, &pack, loc.offset, loc.length).unwrap();
        let (place, opener, _) = &idx.points[loc.point as usize];
        let payload = opener.open(id, &place.chunk_aad(id), &sealed).unwrap();
        assert_eq!(sealed.len(), payload.len() + 16);
    }
    assert_eq!(nonces.values().map(|s| s.len()).sum::<usize>(), idx.len());
    assert!(nonces.len() >= 6, "every point wrote new chunks");
}

#[tokio::test]
async fn chunk_ids_are_keyed_per_chain() {
    let (_env, root, key) = setup();
    let repo = Repository::open(&root).unwrap();
    let oc = open(&repo, &key).await;
    let job = repo.find_job("j").unwrap();
    let idx = ChainIndex::load(&repo, &oc, &repo.list_points(&job.job_id).unwrap()).unwrap();
    // The plain BLAKE3 of a known file's first chunk is not its id: ids do not confirm content.
    let src = fs::read(_env.path("src/f0")).unwrap();
    use arca::engine::backup::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
    let cdc = arca::engine::chunker::CdcParams::new(CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
        .with_gear(oc.gear.clone());
    let first = cdc.split(&src)[0];
    let keyed = arca::repo::format::Id32(oc.idk.id(first));
    assert!(idx.contains(&keyed));
    let plain = arca::repo::format::Id32(*blake3::hash(first).as_bytes());
    assert!(!idx.contains(&plain));
}
