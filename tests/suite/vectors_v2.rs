//! Format v2 test vectors (docs/FORMAT.md §9): fixed inputs must produce the bytes pinned in
//! tests/vectors/v2.json, for every sealed object kind; and tests/vectors/repo-v2/, a whole
//! repository written by this version, must keep restoring byte for byte. A change here is a
//! format change: update docs/FORMAT.md and the vectors in the same commit (regenerate with
//! ARCA_UPDATE_VECTORS=1).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arca::crypto::{self, context, ChunkIdKey, ChunkSealer, KdfParams, Passphrase, SecretKey};
use arca::keys::SlotContext;
use arca::repo::format::*;
use serde_json::{json, Value};

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn key(byte: u8) -> SecretKey {
    SecretKey::from_slice(&[byte; 32]).unwrap()
}

const REPO: Id16 = Id16([0xa1; 16]);
const JOB: Id16 = Id16([0xb2; 16]);
const CHAIN: Id16 = Id16([0xc3; 16]);
const SLOT: Id16 = Id16([0xd4; 16]);
const POINT: Id16 = Id16([0xe5; 16]);
const T: &str = "2026-11-23T12:00:00Z";

fn kdf_record() -> KdfRecord {
    KdfRecord {
        password: "nightly".into(),
        algorithm: KdfRecord::ARGON2ID.into(),
        salt: (0u8..16).collect(),
        m_kib: 1024,
        t: 2,
        p: 1,
    }
}

fn slot_ctx() -> SlotContext {
    SlotContext {
        repo_id: REPO,
        job_id: JOB,
        chain_id: CHAIN,
        job_name: "nightly".into(),
        version: 2,
    }
}

fn wrapped(kek: &SecretKey, k: &SecretKey, params: &SlotParams, nonce: u8) -> (Value, Keyslot) {
    let c = slot_ctx();
    let place = c.aad(&SLOT);
    let bound = c.bound(params);
    let w = crypto::wrap_key_bound_with_nonce(kek, k, &place, &bound, [nonce; 12]);
    let slot = Keyslot {
        slot_id: SLOT,
        created: T.into(),
        format: Some(2),
        params: params.clone(),
        wrapped: Some(WrappedKeyJson::from(&w)),
    };
    (
        json!({"place": h(&place), "bound": h(&bound), "nonce": h(&w.nonce),
               "commitment": h(&w.commitment), "ciphertext": h(&w.ciphertext)}),
        slot,
    )
}

/// Computes every v2 vector from its fixed inputs.
fn compute() -> Value {
    let mut v = BTreeMap::new();
    let pass = Passphrase::new("correct horse battery staple".into());
    let kdf = kdf_record();
    let ph = crypto::derive_password_hash(&pass, &kdf.salt, &kdf.params()).unwrap();
    let chain_key = key(0x22);
    let data_key = key(0x33);
    let raw = key(0x44);
    let kmip = key(0x55);
    v.insert("inputs", json!({
        "passphrase": "correct horse battery staple", "kdf": kdf, "password_hash": h(ph.expose()),
        "chain_key": h(chain_key.expose()), "data_key": h(data_key.expose()),
        "raw_key": h(raw.expose()), "kmip_key": h(kmip.expose()),
        "repo_id": REPO.hex(), "job_id": JOB.hex(), "chain_id": CHAIN.hex(),
        "slot_id": SLOT.hex(), "point_id": POINT.hex(), "time": T,
    }));
    // Subkeys added by v2.
    let mut d = BTreeMap::new();
    for c in [
        context::CHAIN_MAC,
        context::JOB_MAC,
        context::POINT_MAC,
        context::CHAIN_CHECK,
        context::CHUNKER,
        context::CHUNK_NONCE,
    ] {
        d.insert(c.to_string(), h(chain_key.derive(c).expose()));
    }
    v.insert(
        "derive_key_v2",
        json!({"key": h(chain_key.expose()), "subkeys": d}),
    );
    v.insert(
        "chain_check_value",
        json!(h(&crypto::check_value(&chain_key))),
    );
    let (gear, gear_ls) = crypto::gear_tables(&chain_key);
    v.insert(
        "gear_table",
        json!({"first4": gear[..4].iter().map(|g| format!("{g:016x}")).collect::<Vec<_>>(),
               "last": format!("{:016x}", gear[255]), "ls_first": format!("{:016x}", gear_ls[0])}),
    );
    // Keyslots of every kind.
    let (pslot_v, pslot) = wrapped(
        &ph,
        &chain_key,
        &SlotParams::Passphrase { kdf: kdf.clone() },
        1,
    );
    let (rslot_v, rslot) = wrapped(
        &raw,
        &chain_key,
        &SlotParams::Raw {
            fingerprint: raw.fingerprint(),
        },
        2,
    );
    let (kslot_v, _) = wrapped(
        &kmip,
        &chain_key,
        &SlotParams::Kmip {
            server: "kmip.example.com:5696".into(),
            key_uid: "42".into(),
            key_name: Some("arca".into()),
        },
        3,
    );
    // A KMIP keyslot encrypted by the server: what arca sends as associated data and the
    // check value (the ciphertext itself comes from the server's key).
    let kmip_enc = SlotParams::KmipEncrypt {
        server: "kmip.example.com:5696".into(),
        key_uid: "42".into(),
        key_name: Some("arca".into()),
        iv: vec![0x0a; 12],
        ciphertext: vec![],
        key_check: vec![],
    };
    v.insert("keyslot_kmip_encrypt", json!({
        "aad": h(&slot_ctx().full(&SLOT, &kmip_enc)),
        "key_check": h(&arca::keys::aws_kms::key_check(&chain_key, &slot_ctx().full(&SLOT, &kmip_enc))),
    }));
    let kms_params = SlotParams::Kms {
        key_arn: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            .into(),
        ciphertext: vec![0x99; 8],
        key_check: vec![],
    };
    let kms_check =
        arca::keys::aws_kms::key_check(&chain_key, &slot_ctx().full(&SLOT, &kms_params));
    v.insert("keyslot_passphrase", pslot_v);
    v.insert("keyslot_raw", rslot_v);
    v.insert("keyslot_kmip", kslot_v);
    v.insert(
        "keyslot_kms_key_check",
        json!({
            "full_aad": h(&slot_ctx().full(&SLOT, &kms_params)), "key_check": h(&kms_check),
            "encryption_context": arca::keys::aws_kms::chain_context(&slot_ctx()),
        }),
    );
    // The chain record and its MAC.
    let chain = ChainRecord {
        kind: ChainRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: REPO,
        job_id: JOB,
        chain_id: CHAIN,
        created: T.into(),
        encryption: EncryptionMode::Passphrase,
        keyslots: vec![pslot, rslot],
        revision: 3,
        chunker: Some(ChainRecord::KEYED_GEAR.into()),
        generation: None,
        retired: Vec::new(),
        mac: None,
    };
    let mut sealed_chain = chain.clone();
    sealed_chain.seal(&chain_key);
    v.insert(
        "chain_record",
        json!({
            "mac_input": h(&chain.mac_input()), "mac": h(sealed_chain.mac.as_ref().unwrap()),
            "record": sealed_chain,
        }),
    );
    // The job record and its MAC.
    let mut job = JobRecord {
        kind: JobRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: REPO,
        job_id: JOB,
        name: "nightly".into(),
        source: "/srv/data".into(),
        created: T.into(),
        chain_id: CHAIN,
        chains: vec![Id16([0xc0; 16]), CHAIN],
        revision: 2,
        mac: None,
    };
    job.seal(&chain_key);
    v.insert("job_record", json!({"mac_input": h(&job.mac_input()), "mac": h(job.mac.as_ref().unwrap()), "record": job}));
    // A point: data key wrap, public-field MAC, sealed body.
    let place = PointPlace {
        repo_id: REPO,
        job_id: JOB,
        chain_id: CHAIN,
        point_id: POINT,
        data_format: 2,
    };
    let dw = crypto::wrap_key_with_nonce(&chain_key, &data_key, &place.data_key_aad_v(2), [9; 12]);
    let body = PointBody {
        kind: "tree".into(),
        source: "/srv/data".into(),
        hostname: "host".into(),
        stats: PointStats::default(),
        tree: vec![],
        tree_bytes: 0,
        tree_format: TREE_FORMAT_BINARY,
        errors: vec![],
        skipped: vec![],
        root: None,
        users: Default::default(),
        groups: Default::default(),
        copied_from: None,
    };
    let body_json = serde_json::to_vec(&body).unwrap();
    let body_key = data_key.derive(context::POINT_BODY);
    let sealed_body = crypto::seal_with_nonce(&body_key, [0; 12], &place.body_aad(), &body_json);
    let mut point = PointRecord {
        kind: PointRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: REPO,
        job_id: JOB,
        job: "nightly".into(),
        chain_id: CHAIN,
        point_id: POINT,
        time: T.into(),
        parent: Some(Id16([0xe4; 16])),
        kdf: Some(kdf.clone()),
        source_kind: Some("tree".into()),
        data_format: 2,
        generation: None,
        forgotten: None,
        data_key: WrappedKeyJson::from(&dw),
        body: sealed_body.clone(),
        mac: None,
    };
    point.seal(&data_key);
    v.insert("point_record", json!({
        "data_key_aad": h(&place.data_key_aad_v(2)), "mac_input": h(&point.mac_input()),
        "mac": h(point.mac.as_ref().unwrap()), "body_plaintext": String::from_utf8(body_json.clone()).unwrap(),
        "body_aad": h(&place.body_aad()), "record": point,
    }));
    // A chunk: sealed without a stored nonce, raw and zstd payloads.
    let plain = b"arca test vector chunk: the quick brown fox jumps over the lazy dog. ".repeat(4);
    let cid = Id32(ChunkIdKey::from_chain_key(&chain_key).id(&plain));
    let cs = ChunkSealer::new(
        &data_key.derive(context::POINT_CHUNKS),
        &data_key.derive(context::CHUNK_NONCE),
    );
    let mut raw_payload = vec![PAYLOAD_RAW];
    raw_payload.extend_from_slice(&plain);
    let z = encode_payload(&plain, 3);
    v.insert(
        "chunk",
        json!({
            "plaintext": h(&plain), "chunk_id": cid.hex(), "aad": h(&place.chunk_aad(&cid)),
            "nonce": h(&cs.nonce(&cid.0)),
            "sealed_raw": h(&cs.seal(&cid.0, &place.chunk_aad(&cid), &raw_payload)),
            "sealed_zstd": h(&cs.seal(&cid.0, &place.chunk_aad(&cid), &z)),
        }),
    );
    // A pack header and an index, sealed (counter nonce 0).
    let e = IndexEntry {
        chunk_id: cid,
        pack_id: Id32([0x66; 32]),
        offset: 24,
        length: 300,
        raw_len: 284,
    };
    let phe = PackHeaderEntry {
        chunk_id: cid,
        offset: 24,
        length: 300,
        raw_len: 284,
    };
    let hk = data_key.derive(context::POINT_PACK_HEADERS);
    let ik = data_key.derive(context::POINT_INDEX);
    v.insert("pack_header", json!({
        "plaintext": h(&encode_pack_header(&[phe])), "aad": h(&place.pack_header_aad()),
        "sealed": h(&crypto::seal_with_nonce(&hk, [0; 12], &place.pack_header_aad(), &encode_pack_header(&[phe]))),
    }));
    v.insert("index", json!({
        "plaintext": h(&encode_index(&[e])), "aad": h(&place.index_aad()),
        "file": h(&[INDEX_MAGIC2.as_slice(), &crypto::seal_with_nonce(&ik, [0; 12], &place.index_aad(), &encode_index(&[e]))].concat()),
    }));
    // Escrow: the KMIP form (local wrap) and the AWS KMS form's context and check value.
    let mut esc = EscrowRecord {
        kind: EscrowRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: REPO,
        job_id: JOB,
        job: "nightly".into(),
        kdf: kdf.clone(),
        provider: "kmip".into(),
        key_arn: "42".into(),
        context: arca::passwords::escrow_context_v(2, &REPO, &JOB, "nightly", &kdf),
        ciphertext: vec![],
        key_check: vec![],
        created: T.into(),
    };
    let ew = crypto::wrap_key_with_nonce(&kmip, &ph, &esc.aad(), [5; 12]);
    esc.ciphertext = [ew.nonce.as_slice(), &ew.commitment, &ew.ciphertext].concat();
    esc.key_check = arca::keys::aws_kms::key_check(&ph, &esc.aad()).to_vec();
    v.insert("escrow_kmip", json!({"aad": h(&esc.aad()), "record": esc}));
    // The AWS KMS form: the encryption context KMS binds, and the check value.
    let mut kms_esc = esc.clone();
    kms_esc.provider = "aws-kms".into();
    kms_esc.key_arn =
        "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab".into();
    kms_esc.ciphertext = vec![];
    v.insert("escrow_aws_kms", json!({
        "encryption_context": arca::passwords::escrow_context_v(2, &REPO, &JOB, "nightly", &kdf),
        "aad": h(&kms_esc.aad()),
        "key_check": h(&arca::keys::aws_kms::key_check(&ph, &kms_esc.aad())),
    }));
    // Key generations: the chain above after one rotation. Generation 2's key is 0x66...;
    // generation 1's (the chain key) is wrapped under it; a point of generation 2.
    let gen2 = key(0x66);
    let mut rotated = chain.clone();
    rotated.generation = Some(2);
    rotated.revision = 4;
    let gw = crypto::wrap_key_with_nonce(&gen2, &chain_key, &rotated.generation_aad(1), [0x0a; 12]);
    rotated.retired = vec![RetiredGeneration {
        generation: 1,
        retired: T.into(),
        wrapped: WrappedKeyJson::from(&gw),
        points: vec![POINT],
    }];
    let (gslot_v, gslot) = wrapped(
        &ph,
        &gen2,
        &SlotParams::Passphrase { kdf: kdf.clone() },
        0x0b,
    );
    rotated.keyslots = vec![gslot];
    rotated.seal(&gen2);
    let gpoint_id = Id16([0xe6; 16]);
    let gplace = PointPlace {
        point_id: gpoint_id,
        ..place
    };
    let gdw = crypto::wrap_key_with_nonce(&gen2, &data_key, &gplace.data_key_aad_v(2), [0x0c; 12]);
    let mut gpoint = point.clone();
    gpoint.point_id = gpoint_id;
    gpoint.parent = Some(POINT);
    gpoint.generation = Some(2);
    gpoint.data_key = WrappedKeyJson::from(&gdw);
    gpoint.body = crypto::seal_with_nonce(&body_key, [0; 12], &gplace.body_aad(), &body_json);
    gpoint.mac = None;
    gpoint.seal(&data_key);
    v.insert(
        "generations",
        json!({
            "generation_2_key": h(gen2.expose()),
            "retired_aad": h(&rotated.generation_aad(1)),
            "keyslot": gslot_v,
            "chain_mac_input": h(&rotated.mac_input()),
            "chain_record": rotated,
            "point_mac_input": h(&gpoint.mac_input()),
            "point_record": gpoint,
        }),
    );
    // A forgotten point (FORMAT.md §5.4): the same record with `forgotten` set, no body.
    let mut fpoint = point.clone();
    fpoint.forgotten = Some("2026-11-24T00:00:00Z".into());
    fpoint.body = Vec::new();
    fpoint.mac = None;
    fpoint.seal(&data_key);
    v.insert(
        "forgotten",
        json!({
            "point_mac_input": h(&fpoint.mac_input()),
            "point_record": fpoint,
        }),
    );
    // The configuration bundle (FORMAT.md §13): a fixed passphrase, salt, parameters and
    // nonce over a small JSON payload.
    let bparams = KdfParams {
        m_kib: 256,
        t: 1,
        p: 1,
    };
    let bsalt = [0x77u8; 16];
    let bhash =
        crypto::derive_password_hash(&Passphrase::new("bundle vector".into()), &bsalt, &bparams)
            .unwrap();
    let mut header = b"ARCABNDL".to_vec();
    for x in [1u32, bparams.m_kib, bparams.t, bparams.p] {
        header.extend_from_slice(&x.to_be_bytes());
    }
    header.extend_from_slice(&bsalt);
    let payload = br#"{"type":"arca-config-bundle","version":1}"#;
    let (commit, sealed) = crypto::seal_bundle_with_nonce(&bhash, &header, payload, [0x0d; 12]);
    v.insert(
        "bundle",
        json!({
            "passphrase": "bundle vector",
            "header": h(&header),
            "bundle_key_hash": h(bhash.expose()),
            "payload": String::from_utf8_lossy(payload),
            "file": h(&[header.as_slice(), &commit, &sealed].concat()),
        }),
    );
    // The binary file index (FORMAT.md §5.5): one record of each kind of entry.
    let entries = file_index_entries();
    v.insert(
        "file_index_binary",
        json!({
            "entries": entries,
            "bytes": h(&arca::repo::tree_bin::encode_tree(&entries)),
        }),
    );
    serde_json::to_value(v).unwrap()
}

/// Entries for the binary file index vector: the root, a chunked file with an xattr, a
/// bundled file, a symlink with a non-UTF-8 name, a device, a hard link, a time before 1970.
fn file_index_entries() -> Vec<TreeEntry> {
    let root = TreeEntry {
        mode: 0o755,
        mtime_ns: 1_700_000_000_000_000_000,
        ..TreeEntry::new(String::new(), None, EntryType::Dir)
    };
    let file = TreeEntry {
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_600_000_000_123_456_789,
        size: 2_000_000,
        inode: 1234,
        ctime_ns: 1_700_000_000_000_000_000,
        chunks: vec![Id32([0x11; 32]), Id32([0x22; 32])],
        xattrs: vec![Xattr {
            name: "user.origin".into(),
            value: b"vector".to_vec(),
        }],
        ..TreeEntry::new("docs/big.bin".into(), None, EntryType::File)
    };
    let bundled = TreeEntry {
        mode: 0o600,
        mtime_ns: -1_000_000_000,
        size: 11,
        chunks: vec![Id32([0x33; 32])],
        at: Some(4096),
        ..TreeEntry::new("docs/readme.txt".into(), None, EntryType::File)
    };
    let link = TreeEntry {
        mode: 0o777,
        target: Some(b"readme.txt".to_vec()),
        ..TreeEntry::new(
            String::new(),
            Some(b"docs/caf\xe9".to_vec()),
            EntryType::Symlink,
        )
    };
    let dev = TreeEntry {
        mode: 0o666,
        rdev: 0x0103,
        ..TreeEntry::new("dev/null".into(), None, EntryType::Chardev)
    };
    let hard = TreeEntry {
        mode: 0o644,
        size: 2_000_000,
        hardlink: Some(b"docs/big.bin".to_vec()),
        ..TreeEntry::new("docs/same.bin".into(), None, EntryType::File)
    };
    vec![root, file, bundled, link, dev, hard]
}

fn vectors_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v2.json")
}

#[test]
fn v2_vectors_match() {
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
        "format drift: the code no longer produces tests/vectors/v2.json"
    );
}

/// The pinned vectors open with the pinned keys, and edited public fields do not.
#[test]
fn v2_vectors_decode_and_reject_edits() {
    let want: Value = serde_json::from_slice(&std::fs::read(vectors_path()).unwrap()).unwrap();
    let b = |s: &Value| hex::decode(s.as_str().unwrap()).unwrap();
    // The pinned binary file index decodes to its pinned entries; a cut or an edited byte
    // does not decode to them.
    let fi = &want["file_index_binary"];
    let entries: Vec<TreeEntry> = serde_json::from_value(fi["entries"].clone()).unwrap();
    let bytes = b(&fi["bytes"]);
    assert_eq!(arca::repo::tree_bin::decode_tree(&bytes).unwrap(), entries);
    assert!(arca::repo::tree_bin::decode_tree(&bytes[..bytes.len() - 1]).is_err());
    for at in 0..bytes.len() {
        let mut edited = bytes.clone();
        edited[at] ^= 0x40;
        assert_ne!(
            arca::repo::tree_bin::decode_tree(&edited).ok().as_ref(),
            Some(&entries),
            "byte {at}"
        );
    }
    let i = &want["inputs"];
    let chain_key = SecretKey::from_slice(&b(&i["chain_key"])).unwrap();
    let data_key = SecretKey::from_slice(&b(&i["data_key"])).unwrap();
    let ph = SecretKey::from_slice(&b(&i["password_hash"])).unwrap();
    // The passphrase keyslot opens with the password hash; an edited bound is "tampered".
    let k = &want["keyslot_passphrase"];
    let w = crypto::WrappedKey {
        nonce: b(&k["nonce"]).try_into().unwrap(),
        commitment: b(&k["commitment"]).try_into().unwrap(),
        ciphertext: b(&k["ciphertext"]),
    };
    let got = crypto::unwrap_key_bound(&ph, &w, &b(&k["place"]), &b(&k["bound"])).unwrap();
    assert_eq!(got.expose(), chain_key.expose());
    let mut bound = b(&k["bound"]);
    *bound.last_mut().unwrap() ^= 1;
    assert_eq!(
        crypto::unwrap_key_bound(&ph, &w, &b(&k["place"]), &bound).unwrap_err(),
        crypto::CryptoError::Tampered
    );
    // Records verify, and an edit breaks their MAC.
    let chain: ChainRecord =
        serde_json::from_value(want["chain_record"]["record"].clone()).unwrap();
    assert!(chain.verify(&chain_key));
    let mut c2 = chain.clone();
    c2.encryption = EncryptionMode::None;
    assert!(!c2.verify(&chain_key));
    let job: JobRecord = serde_json::from_value(want["job_record"]["record"].clone()).unwrap();
    assert!(job.verify(&chain_key));
    let mut point: PointRecord =
        serde_json::from_value(want["point_record"]["record"].clone()).unwrap();
    assert!(point.verify(&data_key));
    point.time = "2099-01-01T00:00:00Z".into();
    assert!(!point.verify(&data_key));
    // A forgotten record verifies; the same record without `forgotten` (put back as a live
    // point) does not.
    let mut fpoint: PointRecord =
        serde_json::from_value(want["forgotten"]["point_record"].clone()).unwrap();
    assert!(fpoint.verify(&data_key) && fpoint.is_forgotten());
    fpoint.forgotten = None;
    assert!(!fpoint.verify(&data_key));
    // The chunk opens with the derived nonce.
    let c = &want["chunk"];
    let cs = ChunkSealer::new(
        &data_key.derive(context::POINT_CHUNKS),
        &data_key.derive(context::CHUNK_NONCE),
    );
    let id: [u8; 32] = b(&c["chunk_id"]).try_into().unwrap();
    for f in ["sealed_raw", "sealed_zstd"] {
        let p = cs.open(&id, &b(&c["aad"]), &b(&c[f])).unwrap();
        assert_eq!(
            decode_payload(&p, b(&c["plaintext"]).len()).unwrap(),
            b(&c["plaintext"])
        );
    }
    // A rotated chain opens with generation 2's key only, unwraps generation 1, and lets the
    // point of generation 2 open while refusing a point its retired generation did not list.
    let g = &want["generations"];
    let gen2 = SecretKey::from_slice(&b(&g["generation_2_key"])).unwrap();
    let rotated: ChainRecord = serde_json::from_value(g["chain_record"].clone()).unwrap();
    assert!(rotated.verify(&gen2));
    assert!(
        !rotated.verify(&chain_key),
        "the old key authenticates the rotated record"
    );
    let oc = arca::engine::OpenChain::new(rotated.clone(), gen2, "nightly").unwrap();
    assert_eq!(oc.root.expose(), chain_key.expose());
    let gpoint: PointRecord = serde_json::from_value(g["point_record"].clone()).unwrap();
    assert_eq!(
        oc.verified_data_key(&gpoint).unwrap().expose(),
        data_key.expose()
    );
    let mut planted: PointRecord =
        serde_json::from_value(want["point_record"]["record"].clone()).unwrap();
    planted.point_id = Id16([0xee; 16]);
    assert!(
        oc.data_key(&planted).is_err(),
        "an unlisted generation-1 point opened"
    );
    // The bundle opens with its passphrase; another reads as "wrong", an edit as "modified".
    let bv = &want["bundle"];
    let file = b(&bv["file"]);
    let pt = arca::ops::bundle::open(&file, &Passphrase::new("bundle vector".into()), false, "v")
        .unwrap();
    assert_eq!(
        String::from_utf8(pt.to_vec()).unwrap(),
        bv["payload"].as_str().unwrap()
    );
    assert!(matches!(
        arca::ops::bundle::open(&file, &Passphrase::new("other".into()), false, "v"),
        Err(arca::Error::WrongBundlePassphrase(_))
    ));
    let mut edited = file.clone();
    *edited.last_mut().unwrap() ^= 1;
    assert!(matches!(
        arca::ops::bundle::open(
            &edited,
            &Passphrase::new("bundle vector".into()),
            false,
            "v"
        ),
        Err(arca::Error::Integrity { .. })
    ));
    let _ = KdfParams::DEFAULT;
}

/// The v2 fixture: a repository written by this version (passphrase "vector", and a raw-key
/// keyslot with tests/vectors/repo-v2/raw.key), with deduplication across points, several
/// packs, a symlink, an empty file, a non-UTF-8 name and a stdin point. `manifest.json` lists
/// what each point restores to.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/repo-v2")
}

fn make_fixture(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let env = common::Env::new();
    let src = env.path("src");
    common::write(&src.join("one.txt"), b"one\n");
    common::write(&src.join("empty"), b"");
    common::write(
        &src.join("sub/data.bin"),
        &common::pseudo_random(700_000, 3, true),
    );
    common::write(
        &src.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        b"latin-1",
    );
    std::os::unix::fs::symlink("one.txt", src.join("link")).unwrap();
    let repo = dir.join("repo");
    env.run(&["init", repo.to_str().unwrap()]).ok();
    env.run_env(
        &[
            "job",
            "create",
            "fixture",
            "--repo",
            repo.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "passphrase",
        ],
        &[("ARCA_PASSPHRASE", "vector")],
    )
    .ok();
    env.run(&[
        "key",
        "generate",
        "--out",
        dir.join("raw.key").to_str().unwrap(),
    ])
    .ok();
    env.run(&[
        "--key-file",
        dir.join("raw.key").to_str().unwrap(),
        "job",
        "keys",
        "add",
        "fixture",
        "--raw-key",
    ])
    .ok();
    env.run(&["backup", "fixture"]).ok();
    common::write(&src.join("two.txt"), b"two\n");
    env.run(&["backup", "fixture"]).ok();
    env.run_stdin(
        &["backup", "fixture", "--stdin", "--stdin-name", "dump.sql"],
        &[],
        b"CREATE TABLE t (x int);\n",
    )
    .ok();
    let pts = env.run(&["--json", "points", "fixture"]).ok().json();
    let mut m = BTreeMap::new();
    for p in pts.as_array().unwrap() {
        let id = p["point_id"].as_str().unwrap();
        let t = env.path(&format!("t-{id}"));
        env.run(&["restore", "fixture", id, "--target", t.to_str().unwrap()])
            .ok();
        m.insert(id.to_string(), common::manifest(&t));
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

#[test]
fn v2_fixture_repository_restores_with_passphrase_and_raw_key() {
    let dir = fixture();
    if std::env::var_os("ARCA_UPDATE_VECTORS").is_some() && !dir.join("repo").exists() {
        make_fixture(&dir);
    }
    let want: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(want.len(), 3, "two tree points and a stdin point");
    // Copy the repository (git does not keep modes; arca never writes to it in this test).
    let env = common::Env::new();
    let repo = env.path("repo");
    common::copy_dir(&dir.join("repo"), &repo);
    let packs = common::packs(&repo);
    assert!(packs.len() >= 3, "several packs");
    for (i, (point, files)) in want.iter().enumerate() {
        let t = env.path(&format!("t{i}"));
        let (args, envs): (Vec<&str>, Vec<(&str, &str)>) = if i % 2 == 0 {
            (vec![], vec![("ARCA_PASSPHRASE", "vector")])
        } else {
            (
                vec![
                    "--key-file",
                    dir.join("raw.key").to_str().unwrap().to_string().leak(),
                ],
                vec![],
            )
        };
        let mut a = args.clone();
        a.extend([
            "restore",
            "fixture",
            point,
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ]);
        env.run_env(&a, &envs).ok();
        assert_eq!(&common::manifest(&t), files, "point {point}");
    }
    let r = common::Env::new().run_env(
        &[
            "check",
            "fixture",
            "--read-data",
            "--repo",
            repo.to_str().unwrap(),
        ],
        &[("ARCA_PASSPHRASE", "vector")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}
