//! Format test vectors (docs/FORMAT.md, "Test vectors"): fixed inputs must produce the bytes
//! pinned in tests/vectors/v1.json. A change here is a format change: update docs/FORMAT.md
//! and the vectors in the same commit (regenerate with ARCA_UPDATE_VECTORS=1).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use arca::crypto::{self, context, ChunkIdKey, KdfParams, Passphrase, SecretKey};
use arca::repo::format::*;
use serde_json::{json, Value};

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn key(byte: u8) -> SecretKey {
    SecretKey::from_slice(&[byte; 32]).unwrap()
}

/// Computes every vector from its fixed inputs.
fn compute() -> Value {
    let mut v = BTreeMap::new();
    // 1. Argon2id password hash.
    let pass = Passphrase::new("correct horse battery staple".into());
    let salt: Vec<u8> = (0u8..16).collect();
    let params = KdfParams {
        m_kib: 1024,
        t: 2,
        p: 1,
    };
    let ph = crypto::derive_password_hash(&pass, &salt, &params).unwrap();
    v.insert(
        "argon2id",
        json!({
            "passphrase": "correct horse battery staple", "salt": h(&salt),
            "m_kib": params.m_kib, "t": params.t, "p": params.p, "password_hash": h(ph.expose()),
        }),
    );
    // 2. Subkey derivations from a fixed key.
    let k = key(0x11);
    let mut d = BTreeMap::new();
    for c in [
        context::WRAP,
        context::COMMIT,
        context::CHUNK_ID,
        context::POINT_CHUNKS,
        context::POINT_PACK_HEADERS,
        context::POINT_INDEX,
        context::POINT_BODY,
        context::KEY_FINGERPRINT,
    ] {
        d.insert(c.to_string(), h(k.derive(c).expose()));
    }
    v.insert("derive_key", json!({"key": h(k.expose()), "subkeys": d}));
    // 3. A keyslot: the chain key wrapped by the password hash.
    let (repo_id, job_id, chain_id, slot_id, point_id) = (
        Id16([0xa1; 16]),
        Id16([0xb2; 16]),
        Id16([0xc3; 16]),
        Id16([0xd4; 16]),
        Id16([0xe5; 16]),
    );
    let chain_key = key(0x22);
    let slot_aad = crypto::aad(
        label::KEYSLOT,
        &[&repo_id.0, &job_id.0, &chain_id.0, &slot_id.0],
    );
    let w = crypto::wrap_key_with_nonce(&ph, &chain_key, &slot_aad, [7; 12]);
    v.insert("keyslot_wrap", json!({
        "kek": "argon2id.password_hash", "key": h(chain_key.expose()), "aad": h(&slot_aad), "nonce": h(&w.nonce),
        "commitment": h(&w.commitment), "ciphertext": h(&w.ciphertext),
    }));
    // 4. A data key wrapped by the chain key.
    let place = PointPlace {
        repo_id,
        job_id,
        chain_id,
        point_id,
        data_format: 1,
    };
    let data_key = key(0x33);
    let dw = crypto::wrap_key_with_nonce(&chain_key, &data_key, &place.data_key_aad_v(1), [9; 12]);
    v.insert("data_key_wrap", json!({
        "kek": h(chain_key.expose()), "key": h(data_key.expose()), "aad": h(&place.data_key_aad_v(1)),
        "nonce": h(&dw.nonce), "commitment": h(&dw.commitment), "ciphertext": h(&dw.ciphertext),
    }));
    // 5. A chunk: keyed id and sealed payload (raw and zstd), first nonce of the point.
    let plain = b"arca test vector chunk: the quick brown fox jumps over the lazy dog. ".repeat(4);
    let idk = ChunkIdKey::from_chain_key(&chain_key);
    let cid = Id32(idk.id(&plain));
    let ck = data_key.derive(context::POINT_CHUNKS);
    let mut raw_payload = vec![PAYLOAD_RAW];
    raw_payload.extend_from_slice(&plain);
    let nonce0 = [0u8; 12];
    let sealed_raw = crypto::seal_with_nonce(&ck, nonce0, &place.chunk_aad(&cid), &raw_payload);
    let z = encode_payload(&plain, 3);
    assert_eq!(z[0], PAYLOAD_ZSTD);
    let mut nonce1 = [0u8; 12];
    nonce1[11] = 1;
    let sealed_z = crypto::seal_with_nonce(&ck, nonce1, &place.chunk_aad(&cid), &z);
    v.insert("chunk", json!({
        "chain_key": h(chain_key.expose()), "data_key": h(data_key.expose()), "plaintext": h(&plain),
        "chunk_id": cid.hex(), "aad": h(&place.chunk_aad(&cid)),
        "sealed_raw": h(&sealed_raw), "sealed_zstd": h(&sealed_z),
    }));
    // 6. Index and pack-header plaintext encodings.
    let e = IndexEntry {
        chunk_id: cid,
        pack_id: Id32([0x44; 32]),
        offset: 24,
        length: 300,
        raw_len: 284,
    };
    let ph_e = PackHeaderEntry {
        chunk_id: cid,
        offset: 24,
        length: 300,
        raw_len: 284,
    };
    v.insert(
        "encodings",
        json!({
            "index": h(&encode_index(&[e])), "pack_header": h(&encode_pack_header(&[ph_e])),
        }),
    );
    serde_json::to_value(v).unwrap()
}

fn vectors_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v1.json")
}

#[test]
fn vectors_match() {
    let got = compute();
    if std::env::var_os("ARCA_UPDATE_VECTORS").is_some() {
        std::fs::write(
            vectors_path(),
            serde_json::to_string_pretty(&got).unwrap() + "\n",
        )
        .unwrap();
    }
    let want: Value = serde_json::from_slice(&std::fs::read(vectors_path()).unwrap()).unwrap();
    assert_eq!(
        got, want,
        "format drift: the code no longer produces tests/vectors/v1.json"
    );
}

/// The pinned vectors decode: the chunk opens under the pinned keys and both payloads
/// decompress to the plaintext; a wrong key is "wrong key", not garbage.
#[test]
fn vectors_decode() {
    let want: Value = serde_json::from_slice(&std::fs::read(vectors_path()).unwrap()).unwrap();
    let b = |s: &Value| hex::decode(s.as_str().unwrap()).unwrap();
    let c = &want["chunk"];
    let dk = SecretKey::from_slice(&b(&c["data_key"])).unwrap();
    let ck = dk.derive(context::POINT_CHUNKS);
    for f in ["sealed_raw", "sealed_zstd"] {
        let p = crypto::open(&ck, &b(&c["aad"]), &b(&c[f])).unwrap();
        assert_eq!(
            decode_payload(&p, b(&c["plaintext"]).len()).unwrap(),
            b(&c["plaintext"])
        );
    }
    let w = &want["data_key_wrap"];
    let wk = crypto::WrappedKey {
        nonce: b(&w["nonce"]).try_into().unwrap(),
        commitment: b(&w["commitment"]).try_into().unwrap(),
        ciphertext: b(&w["ciphertext"]),
    };
    let kek = SecretKey::from_slice(&b(&w["kek"])).unwrap();
    assert_eq!(
        crypto::unwrap_key(&kek, &wk, &b(&w["aad"]))
            .unwrap()
            .expose()
            .to_vec(),
        b(&w["key"])
    );
    assert_eq!(
        crypto::unwrap_key(&key(0x99), &wk, &b(&w["aad"])).unwrap_err(),
        crypto::CryptoError::WrongKey
    );
}

/// A whole repository written by arca 0.1 (tests/vectors/repo-v1/repo, passphrase "vector",
/// made from tests/vectors/repo-v1/expected): this version must still read it, byte for byte.
#[test]
fn fixture_repository_restores() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/repo-v1");
    let repo = fixture.join("repo");
    let env = common::Env::new();
    let t = env.path("t");
    let pass = [("ARCA_PASSPHRASE", "vector")];
    env.run_env(
        &[
            "restore",
            "fixture",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ],
        &pass,
    )
    .ok();
    for f in ["one.txt", "sub/two.bin", "sub/three.csv"] {
        assert_eq!(
            std::fs::read(t.join(f)).unwrap(),
            std::fs::read(fixture.join("expected").join(f)).unwrap(),
            "{f}"
        );
    }
    env.run_env(
        &[
            "check",
            "fixture",
            "--read-data",
            "--repo",
            repo.to_str().unwrap(),
        ],
        &pass,
    )
    .ok();
    // A fresh catalog (the one above now holds the password hash again).
    let env = common::Env::new();
    let r = env.run_env(
        &[
            "restore",
            "fixture",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            env.path("u").to_str().unwrap(),
        ],
        &[("ARCA_PASSPHRASE", "not it")],
    );
    assert_eq!(r.code, 12);
}

fn tree_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree_bytes(&p));
        } else {
            out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// `arca migrate` upgrades the v1 fixture in place: metadata becomes authenticated, no pack
/// or index byte changes, the result checks clean and restores identically, and editing a
/// migrated point's time is then detected.
#[test]
fn migrate_upgrades_the_v1_fixture_without_touching_data() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/repo-v1");
    let env = common::Env::new();
    let repo = env.path("repo");
    common::copy_dir(&fixture.join("repo"), &repo);
    let pass = [("ARCA_PASSPHRASE", "vector")];
    // Reading v1 works, with a warning that its metadata is unauthenticated.
    let r = env
        .run_env(
            &["points", "fixture", "--repo", repo.to_str().unwrap()],
            &pass,
        )
        .ok();
    assert!(r.stderr.contains("format version 1"), "{}", r.stderr);
    let packs_before = tree_bytes(&repo.join("packs"));
    let index_before = tree_bytes(&repo.join("index"));
    let r = env
        .run_env(
            &["--json", "migrate", "--repo", repo.to_str().unwrap()],
            &pass,
        )
        .ok();
    assert_eq!(r.json()["format_version"], 2);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(repo.join("config")).unwrap())
            .unwrap()["version"],
        2
    );
    assert_eq!(
        tree_bytes(&repo.join("packs")),
        packs_before,
        "a pack changed"
    );
    assert_eq!(
        tree_bytes(&repo.join("index")),
        index_before,
        "an index changed"
    );
    // Running it again is harmless.
    env.run_env(&["migrate", "--repo", repo.to_str().unwrap()], &pass)
        .ok();
    let env2 = common::Env::new();
    let r = env2
        .run_env(
            &[
                "check",
                "fixture",
                "--read-data",
                "--repo",
                repo.to_str().unwrap(),
            ],
            &pass,
        )
        .ok();
    assert!(!r.stderr.contains("format version 1"), "{}", r.stderr);
    let t = env2.path("t");
    env2.run_env(
        &[
            "restore",
            "fixture",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ],
        &pass,
    )
    .ok();
    for f in ["one.txt", "sub/two.bin", "sub/three.csv"] {
        assert_eq!(
            std::fs::read(t.join(f)).unwrap(),
            std::fs::read(fixture.join("expected").join(f)).unwrap(),
            "{f}"
        );
    }
    // Now the point's time is authenticated.
    let pf = std::fs::read_dir(repo.join("points"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut p: serde_json::Value = serde_json::from_slice(&std::fs::read(&pf).unwrap()).unwrap();
    p["time"] = "2099-01-01T00:00:00Z".into();
    std::fs::write(&pf, serde_json::to_vec(&p).unwrap()).unwrap();
    let r = common::Env::new().run_env(
        &["check", "fixture", "--repo", repo.to_str().unwrap()],
        &pass,
    );
    assert_eq!(r.code, 13, "{}", r.stderr);
}
