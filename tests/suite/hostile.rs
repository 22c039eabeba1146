//! The hostile-repository suite: an attacker who can write the repository (and has no key,
//! passphrase or catalog of the victim's) tries every attack of the "untrusted storage"
//! issue. Each test asserts the safe outcome: a refusal with the documented exit code and
//! nothing written, or the attack having no effect. Never wrong plaintext, never a file
//! outside the target.

use crate::common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use arca::crypto::SecretKey;
use arca::repo::format::*;
use common::*;
use serde_json::Value;

const PASS: &str = "correct horse battery staple";
const UNTRUSTED: i32 = 14;
const INTEGRITY: i32 = 13;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn small_tree(root: &Path) {
    write(&root.join("a.txt"), b"alpha\n");
    write(&root.join("sub/b.bin"), &pseudo_random(300_000, 1, true));
    write(&root.join("sub/c.txt"), b"gamma\n");
}

/// A passphrase job with one backup; returns (env, repo, src).
fn victim() -> (Env, PathBuf, PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    small_tree(&src);
    let repo = env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    (env, repo, src)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn write_json(p: &Path, v: &Value) {
    fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn only_file(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(v.len(), 1, "{}", dir.display());
    v.remove(0)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn point_count(repo: &Path) -> usize {
    files(&repo.join("points")).len()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The attacker writes a chain of the victim's job whose key it knows (`none` keyslot, a
/// valid MAC under its own key) and returns its id.
fn plant_none_chain(repo: &Path, job_id: &str) -> (Id16, SecretKey) {
    let cfg = read_json(&repo.join("config"));
    let key = SecretKey::random();
    let mut chain = ChainRecord {
        kind: ChainRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: Id16::parse(cfg["repo_id"].as_str().unwrap()).unwrap(),
        job_id: Id16::parse(job_id).unwrap(),
        chain_id: Id16::random(),
        created: "2026-01-01T00:00:00Z".into(),
        encryption: EncryptionMode::None,
        keyslots: vec![Keyslot {
            slot_id: Id16::random(),
            created: "2026-01-01T00:00:00Z".into(),
            format: Some(2),
            params: SlotParams::None {
                chain_key: key.expose().to_vec(),
            },
            wrapped: None,
        }],
        revision: 1,
        chunker: Some(ChainRecord::KEYED_GEAR.into()),
        generation: None,
        retired: Vec::new(),
        mac: None,
    };
    chain.seal(&key);
    let id = chain.chain_id;
    fs::write(
        repo.join(format!("chains/{id}.json")),
        serde_json::to_vec(&chain).unwrap(),
    )
    .unwrap();
    (id, key)
}

#[test]
fn downgrade_by_redirecting_the_job_to_an_unencrypted_chain_is_refused() {
    let (env, repo, _) = victim();
    let jf = only_file(&repo.join("jobs"));
    let mut job = read_json(&jf);
    let (chain, _) = plant_none_chain(&repo, job["job_id"].as_str().unwrap());
    job["chain_id"] = Value::String(chain.hex());
    write_json(&jf, &job);
    let before = point_count(&repo);
    for args in [
        &["backup", "j"][..],
        &["-q", "backup", "j"],
        &["--json", "backup", "j"],
    ] {
        let r = env.run(args);
        assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
        assert!(
            r.stderr.contains("the catalog trusts chain"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("arca job adopt"), "{}", r.stderr);
    }
    assert_eq!(point_count(&repo), before, "a point was written");
}

#[test]
fn downgrade_by_editing_the_chain_record_is_refused() {
    let (env, repo, _) = victim();
    let cf = only_file(&repo.join("chains"));
    let orig = read_json(&cf);
    // 1. Mode switched to none, with a none keyslot added.
    let mut c = orig.clone();
    c["encryption"] = "none".into();
    c["keyslots"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"slot_id": Id16::random().hex(), "created": "x", "format": 2,
                           "provider": "none", "chain_key": b64(&[7; 32])}),
    );
    write_json(&cf, &c);
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
    // 2. Same mode, a none keyslot slipped in: the chain MAC catches it.
    let mut c = orig.clone();
    c["keyslots"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"slot_id": Id16::random().hex(), "created": "x", "format": 2,
                           "provider": "none", "chain_key": b64(&[7; 32])}),
    );
    write_json(&cf, &c);
    let r = env.run(&["backup", "j"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let r = env.run(&["restore", "j", "--target", s(&env.path("t"))]);
    assert_ne!(r.code, 0);
    assert!(is_empty_or_missing(&env.path("t")));
    assert_eq!(point_count(&repo), 1);
    // 3. A v1 (unauthenticated) chain record in a v2 repository is refused.
    let mut c = orig.clone();
    c["version"] = 1.into();
    c.as_object_mut().unwrap().remove("mac");
    write_json(&cf, &c);
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert!(r.stderr.contains("version-1 record"), "{}", r.stderr);
    write_json(&cf, &orig);
    env.run(&["backup", "j"]).ok();
}

#[test]
fn a_repository_config_downgraded_to_v1_is_refused() {
    let (env, repo, _) = victim();
    let mut cfg = read_json(&repo.join("config"));
    cfg["version"] = 1.into();
    write_json(&repo.join("config"), &cfg);
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
    assert!(r.stderr.contains("downgrade"), "{}", r.stderr);
}

#[test]
fn source_redirect_is_refused() {
    let (env, repo, _) = victim();
    let elsewhere = env.path("elsewhere");
    write(&elsewhere.join("x"), b"attacker's choice");
    let jf = only_file(&repo.join("jobs"));
    let mut job = read_json(&jf);
    job["source"] = Value::String(s(&elsewhere).into());
    write_json(&jf, &job);
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
    assert!(r.stderr.contains("source"), "{}", r.stderr);
    assert_eq!(point_count(&repo), 1);
    // Without a catalog (--repo), the edited record fails its MAC instead.
    let env2 = Env::new();
    let r = env2.run_env(
        &["ls", "j", "--repo", s(&repo)],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert!(r.stderr.contains("job record"), "{}", r.stderr);
}

#[test]
fn replayed_job_record_and_chain_record_are_refused() {
    let (env, repo, src) = victim();
    let jf = only_file(&repo.join("jobs"));
    let old_job = fs::read(&jf).unwrap();
    let old_chain_file = only_file(&repo.join("chains"));
    let old_chain = fs::read(&old_chain_file).unwrap();
    // A second keyslot (a raw key): the chain record's revision goes up.
    let key = env.path("k.key");
    env.run(&["key", "generate", "--out", s(&key)]).ok();
    env.run(&[
        "--key-file",
        s(&key),
        "job",
        "keys",
        "add",
        "j",
        "--raw-key",
    ])
    .ok();
    // Replaying the older chain record (its MAC is valid: same chain key) is refused.
    let new_chain = fs::read(&old_chain_file).unwrap();
    fs::write(&old_chain_file, &old_chain).unwrap();
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
    assert!(r.stderr.contains("older than revision"), "{}", r.stderr);
    fs::write(&old_chain_file, &new_chain).unwrap();
    env.run(&["backup", "j"]).ok();
    // A new chain (encryption change); then the old job record is put back.
    env.run(&["job", "deactivate", "j"]).ok();
    env.run_env(
        &[
            "job",
            "activate",
            "j",
            "--encryption",
            "passphrase",
            "--password",
            "p2",
        ],
        &[("ARCA_PASSPHRASE", "second passphrase")],
    )
    .ok();
    fs::write(&jf, &old_job).unwrap();
    write(&src.join("new.txt"), b"new");
    let before = point_count(&repo);
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
    assert_eq!(point_count(&repo), before);
}

/// The attacker writes a complete, valid recovery point for the victim's job in a chain of
/// its own (with a setuid-root file), newer than every real point.
fn plant_forged_point(env: &Env, repo: &Path) -> Id16 {
    let jf = only_file(&repo.join("jobs"));
    let mut job: JobRecord = serde_json::from_slice(&fs::read(&jf).unwrap()).unwrap();
    let (chain_id, key) = plant_none_chain(repo, &job.job_id.hex());
    let chain: ChainRecord =
        serde_json::from_slice(&fs::read(repo.join(format!("chains/{chain_id}.json"))).unwrap())
            .unwrap();
    let evil = env.path("evil-src");
    write(&evil.join("a.txt"), b"FORGED\n");
    write(&evil.join("suid"), b"#!/bin/sh\n");
    fs::set_permissions(evil.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    job.source = s(&evil).into();
    job.chain_id = chain_id;
    let oc = arca::engine::OpenChain::new(chain, key, "j").unwrap();
    let out = arca::engine::backup::run(
        repo,
        &job,
        &oc,
        arca::engine::backup::BackupOptions {
            status: Default::default(),
            source: arca::engine::backup::Source::Tree(evil),
            compression_level: 3,
            workers: 1,
            progress: indicatif::ProgressBar::hidden(),
            kdf: None,
            filter: arca::engine::filter::Compiled::none(),
            origin: None,
        },
    )
    .unwrap();
    out.record.point_id
}

#[test]
fn forged_latest_point_in_a_foreign_chain_is_not_restored_and_check_names_it() {
    let (env, repo, src) = victim();
    let forged = plant_forged_point(&env, &repo);
    let t = env.path("t");
    env.run(&["restore", "j", "--target", s(&t)]).ok();
    assert_eq!(
        snapshot(&src),
        snapshot(&t),
        "the forged point was restored"
    );
    assert_eq!(fs::read(t.join("a.txt")).unwrap(), b"alpha\n");
    let r = env.run(&["check", "j", "--read-data"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert!(r.stderr.contains(&forged.hex()), "{}", r.stderr);
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    let damaged: Vec<&Value> = pts
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "damaged")
        .collect();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0]["point_id"], forged.hex());
    // Without a catalog (after a reinstall) the job record names the job's chains: same.
    let env2 = Env::new();
    let t2 = env2.path("t2");
    env2.run_env(
        &["restore", "j", "--repo", s(&repo), "--target", s(&t2)],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    assert_eq!(snapshot(&src), snapshot(&t2));
}

#[test]
fn a_given_passphrase_never_opens_an_unencrypted_chain() {
    let (env, repo, _) = victim();
    // The attacker plants a complete point in a chain of its own and rewrites the job record
    // (with a valid MAC under its own key) to name only that chain. On a machine with no
    // catalog (a reinstall), a restore given the passphrase must refuse it.
    let forged = plant_forged_point(&env, &repo);
    let pf = repo.join(format!("points/{forged}.json"));
    let chain = read_json(&pf)["chain_id"].as_str().unwrap().to_string();
    let jf = only_file(&repo.join("jobs"));
    let mut job: JobRecord = serde_json::from_slice(&fs::read(&jf).unwrap()).unwrap();
    let key_b64 = read_json(&repo.join(format!("chains/{chain}.json")))["keyslots"][0]["chain_key"]
        .as_str()
        .unwrap()
        .to_string();
    use base64::Engine;
    let key = SecretKey::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(key_b64)
            .unwrap(),
    )
    .unwrap();
    job.chain_id = Id16::parse(&chain).unwrap();
    job.chains = vec![job.chain_id];
    job.revision += 1;
    job.seal(&key);
    fs::write(&jf, serde_json::to_vec(&job).unwrap()).unwrap();
    let env2 = Env::new();
    let t = env2.path("t");
    let r = env2.run_env(
        &["restore", "j", "--repo", s(&repo), "--target", s(&t)],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("no passphrase keyslot"), "{}", r.stderr);
    assert!(is_empty_or_missing(&t));
    // The victim's own machine refuses the redirected job record outright.
    let r = env.run(&["restore", "j", "--target", s(&t)]);
    assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
    assert!(is_empty_or_missing(&t));
}

#[test]
fn reordered_time_is_detected_and_never_silently_changes_latest() {
    let (env, repo, src) = victim();
    write(&src.join("a.txt"), b"alpha v2\n");
    env.run(&["backup", "j"]).ok();
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    let first = pts[0]["point_id"].as_str().unwrap().to_string();
    // The attacker moves the older point to the future so that it sorts as latest.
    let pf = repo.join(format!("points/{first}.json"));
    let mut p = read_json(&pf);
    p["time"] = "2099-01-01T00:00:00Z".into();
    write_json(&pf, &p);
    let t = env.path("t");
    let r = env.run(&["restore", "j", "--target", s(&t)]).ok();
    assert!(
        r.stderr
            .contains(&format!("skipping damaged recovery point {first}")),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(t.join("a.txt")).unwrap(), b"alpha v2\n");
    assert_eq!(snapshot(&src), snapshot(&t));
    let r = env.run(&["check", "j"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert!(r.stderr.contains(&first), "{}", r.stderr);
}

#[test]
fn deleted_latest_point_is_reported_not_silently_replaced() {
    let (env, repo, src) = victim();
    write(&src.join("a.txt"), b"alpha v2\n");
    let latest = env.run(&["--json", "backup", "j"]).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::remove_file(repo.join(format!("points/{latest}.json"))).unwrap();
    let t = env.path("t");
    let r = env.run(&["restore", "j", "--target", s(&t)]);
    assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
    assert!(r.stderr.contains(&latest), "{}", r.stderr);
    assert!(is_empty_or_missing(&t));
    let r = env.run(&["check", "j"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no longer has recovery point"),
        "{}",
        r.stderr
    );
}

#[test]
fn kdf_inflation_is_capped_before_argon2_runs() {
    let (env, repo, _) = victim();
    let cf = only_file(&repo.join("chains"));
    let mut c = read_json(&cf);
    c["keyslots"][0]["kdf"]["m_kib"] = (4u64 * 1024 * 1024).into();
    c["keyslots"][0]["kdf"]["t"] = 64.into();
    write_json(&cf, &c);
    let pf = files(&repo.join("points")).remove(0);
    let mut p = read_json(&pf);
    p["kdf"]["m_kib"] = (4u64 * 1024 * 1024).into();
    p["kdf"]["t"] = 64.into();
    write_json(&pf, &p);
    let env2 = Env::new();
    let t = env2.path("t");
    let r = env2.run_env(
        &["restore", "j", "--repo", s(&repo), "--target", s(&t)],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("cap") && r.stderr.contains("--allow-expensive-kdf"),
        "{}",
        r.stderr
    );
    assert!(is_empty_or_missing(&t));
    // The catalog's stored hash does not open the edited keyslot either (it is bound).
    let r = env.run(&["backup", "j"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
}

#[test]
fn renamed_kdf_password_never_overwrites_another_passwords_hash() {
    let env = Env::new();
    let (sa, sb) = (env.path("sa"), env.path("sb"));
    small_tree(&sa);
    small_tree(&sb);
    let repo = env.passphrase_job("a", &sa, "passphrase of a");
    env.passphrase_job("b", &sb, "passphrase of b");
    env.run(&["backup", "a"]).ok();
    env.run(&["backup", "b"]).ok();
    // The attacker renames a's password to "b" in a's keyslot and in a's point.
    for dir in ["chains", "points"] {
        for f in files(&repo.join(dir)) {
            let mut v = read_json(&f);
            let is_a = |v: &Value| v.to_string().contains("\"password\":\"a\"");
            if !is_a(&v) {
                continue;
            }
            if dir == "chains" {
                v["keyslots"][0]["kdf"]["password"] = "b".into();
            } else {
                v["kdf"]["password"] = "b".into();
            }
            write_json(&f, &v);
        }
    }
    let t = env.path("t");
    let r = env.run_env(
        &["restore", "a", "--target", s(&t)],
        &[("ARCA_PASSPHRASE", "passphrase of a")],
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    // b still restores with the hash the catalog holds (no passphrase).
    let tb = env.path("tb");
    let r = env.run(&["restore", "b", "--target", s(&tb)]).ok();
    assert!(r.stderr.contains("opened via: catalog"), "{}", r.stderr);
    assert_eq!(snapshot(&sb), snapshot(&tb));
}

#[test]
fn symlinked_tmp_and_lock_are_refused_and_nothing_outside_is_touched() {
    let (env, repo, _) = victim();
    let outside = env.path("outside");
    write(
        &outside.join("0123456789abcdef0123456789abcdef.tmp"),
        b"precious",
    );
    write(&outside.join("keep"), b"precious");
    fs::remove_dir_all(repo.join("tmp")).unwrap();
    symlink(&outside, repo.join("tmp")).unwrap();
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert!(r.stderr.contains("symlink"), "{}", r.stderr);
    assert_eq!(files(&outside).len(), 2);
    fs::remove_file(repo.join("tmp")).unwrap();
    fs::create_dir(repo.join("tmp")).unwrap();
    let target = env.path("made-by-lock");
    fs::remove_file(repo.join("lock")).unwrap();
    symlink(&target, repo.join("lock")).unwrap();
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert!(!target.exists(), "the lock symlink was followed");
    // A symlinked packs subdirectory is refused too.
    fs::remove_file(repo.join("lock")).unwrap();
    let sub = files(&repo.join("packs")).remove(0);
    let moved = env.path("moved-packs");
    fs::rename(&sub, &moved).unwrap();
    symlink(&moved, &sub).unwrap();
    let r = env.run(&["check", "j", "--read-data"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
}

#[test]
fn restore_with_overwrite_never_writes_through_symlinks() {
    let env = Env::new();
    let src = env.path("src");
    let outside = env.path("outside");
    write(&outside.join("victim.txt"), b"outside file");
    write(&outside.join("dir/inner.txt"), b"outside dir");
    // Backup 1: `x` is a symlink to an outside file and `d` a symlink to an outside dir.
    fs::create_dir_all(&src).unwrap();
    symlink(outside.join("victim.txt"), src.join("x")).unwrap();
    symlink(outside.join("dir"), src.join("d")).unwrap();
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    // Backup 2: both are real.
    fs::remove_file(src.join("x")).unwrap();
    fs::remove_file(src.join("d")).unwrap();
    write(&src.join("x"), b"regular now");
    write(&src.join("d/inner.txt"), b"inside");
    write(&src.join("d/setuid"), b"#!/bin/sh\n");
    fs::set_permissions(src.join("d/setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    env.run(&["backup", "j"]).ok();
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    let t = env.path("t");
    env.run(&[
        "restore",
        "j",
        pts[0]["point_id"].as_str().unwrap(),
        "--target",
        s(&t),
    ])
    .ok();
    assert!(fs::symlink_metadata(t.join("x"))
        .unwrap()
        .file_type()
        .is_symlink());
    env.run(&["restore", "j", "--overwrite", "--target", s(&t)])
        .ok();
    assert_eq!(
        fs::read(outside.join("victim.txt")).unwrap(),
        b"outside file"
    );
    assert_eq!(
        fs::read(outside.join("dir/inner.txt")).unwrap(),
        b"outside dir"
    );
    assert_eq!(files(&outside.join("dir")).len(), 1);
    assert_eq!(fs::read(t.join("x")).unwrap(), b"regular now");
    assert!(fs::symlink_metadata(t.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(t.join("d/inner.txt")).unwrap(), b"inside");
    // Outside directories keep their modes.
    assert_eq!(
        fs::metadata(outside.join("dir"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    // setuid survives only for root (who could chown); otherwise it is dropped.
    let m = fs::metadata(t.join("d/setuid")).unwrap().mode() & 0o7777;
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        assert_eq!(m, 0o4755);
    } else {
        assert_eq!(m, 0o755);
    }
    // Without --overwrite, a symlink in the way is an error, never followed.
    let t2 = env.path("t2");
    fs::create_dir_all(&t2).unwrap();
    symlink(&outside, t2.join("d")).unwrap();
    let r = env.run(&["restore", "j", "--target", s(&t2)]);
    assert_ne!(r.code, 0);
    assert_eq!(files(&outside.join("dir")).len(), 1);
}

#[test]
fn flipped_byte_during_overwrite_keeps_the_good_file() {
    let (env, repo, src) = victim();
    let t = env.path("t");
    env.run(&["restore", "j", "--target", s(&t)]).ok();
    let good = fs::read(t.join("sub/b.bin")).unwrap();
    // A new version of b.bin, in a new pack; then one byte of that pack flips.
    let old_packs = packs(&repo);
    write(&src.join("sub/b.bin"), &pseudo_random(300_000, 99, true));
    env.run(&["backup", "j"]).ok();
    let new_pack = packs(&repo)
        .into_iter()
        .find(|p| !old_packs.contains(p))
        .unwrap();
    let mut b = fs::read(&new_pack).unwrap();
    b[100] ^= 0x40;
    fs::write(&new_pack, &b).unwrap();
    let r = env.run(&["restore", "j", "--overwrite", "--target", s(&t)]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert_eq!(
        fs::read(t.join("sub/b.bin")).unwrap(),
        good,
        "the good file was damaged"
    );
    let leftovers: Vec<_> = walk_names(&t)
        .into_iter()
        .filter(|n| n.contains(".arca-restore-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn failed_restore_into_an_empty_target_leaves_it_empty() {
    let (env, repo, _) = victim();
    for p in packs(&repo) {
        let mut b = fs::read(&p).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x40;
        fs::write(&p, &b).unwrap();
    }
    let t = env.path("t");
    let r = env.run(&["restore", "j", "--target", s(&t)]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert_eq!(walk_names(&t), Vec::<String>::new(), "{}", r.stderr);
}

/// Read once into an empty target, the index is found to select nothing only at its end:
/// what was staged by then is removed, and the error is the same as with two passes.
#[test]
fn include_matching_nothing_leaves_an_empty_target_empty() {
    let (env, _, _) = victim();
    let t = env.path("t");
    let r = env.run(&[
        "restore",
        "j",
        "--target",
        s(&t),
        "--include",
        "no/such/path",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("matches --include"), "{}", r.stderr);
    assert_eq!(walk_names(&t), Vec::<String>::new());
    // Into a non-empty target (two passes) nothing is created either.
    fs::create_dir_all(t.join("keep")).unwrap();
    let r = env.run(&[
        "restore",
        "j",
        "--target",
        s(&t),
        "--overwrite",
        "--include",
        "no/such/path",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(walk_names(&t), vec!["keep".to_string()]);
}

fn walk_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_names(&e.path()));
        }
    }
    out
}

/// Runs arca with `args` and kills it (SIGKILL) after `delay_ms`.
fn run_killed(env: &Env, args: &[&str], delay_ms: u64) {
    let mut child = env
        .cmd(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn killed_restore_never_leaves_a_truncated_file_under_its_name() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("big.bin"), &pseudo_random(48 << 20, 5, false));
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    let t = env.path("t");
    env.run(&["restore", "j", "--target", s(&t)]).ok();
    let v1 = fs::read(t.join("big.bin")).unwrap();
    write(&src.join("big.bin"), &pseudo_random(48 << 20, 6, false));
    env.run(&["backup", "j"]).ok();
    let v2 = fs::read(src.join("big.bin")).unwrap();
    for delay_ms in [5u64, 40, 150] {
        run_killed(
            &env,
            &["restore", "j", "--overwrite", "--target", s(&t)],
            delay_ms,
        );
        let now = fs::read(t.join("big.bin")).unwrap();
        assert!(
            now == v1 || now == v2,
            "a killed restore left a partial file (delay {delay_ms} ms)"
        );
    }
}

/// Into an empty target, files are written below a staging directory and moved into place
/// by their top-level entries after one flush: a kill at any moment leaves every file that
/// is under its final name complete, and at most the stage beside them.
#[test]
fn killed_restore_into_an_empty_target_leaves_only_complete_files_and_its_stage() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..4u64 {
        write(
            &src.join(format!("d{i}/big.bin")),
            &pseudo_random(12 << 20, 10 + i, false),
        );
        write(&src.join(format!("d{i}/small.txt")), b"small");
    }
    write(&src.join("top.txt"), b"top");
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    let want = snapshot(&src);
    let is_stage = |n: &str| n.starts_with(".arca-restore-") && n.ends_with(".stage");
    for (i, delay_ms) in [5u64, 30, 80, 200, 400, 800].into_iter().enumerate() {
        let t = env.path(&format!("t{i}"));
        run_killed(&env, &["restore", "j", "--target", s(&t)], delay_ms);
        if !t.exists() {
            continue; // killed before the target was created
        }
        for (path, desc) in snapshot(&t) {
            if is_stage(path.split('/').next().unwrap()) {
                continue;
            }
            // Directories get their modes and times last; files are complete when named.
            if desc.starts_with("file") {
                assert_eq!(
                    Some(&desc),
                    want.get(&path),
                    "{path} under its final name after a kill at {delay_ms} ms"
                );
            }
        }
        let left: Vec<String> = fs::read_dir(&t)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".arca-restore-"))
            .collect();
        assert!(left.iter().all(|n| is_stage(n)), "{left:?}");
        if !left.is_empty() {
            // The next restore there says what the leftover is instead of restoring over it.
            let r = env.run(&["restore", "j", "--target", s(&t)]);
            assert_eq!(r.code, 2, "{}", r.stderr);
            assert!(r.stderr.contains("interrupted restore"), "{}", r.stderr);
        }
    }
    let t = env.path("whole");
    env.run(&["restore", "j", "--target", s(&t)]).ok();
    assert_eq!(snapshot(&t), want);
}

#[test]
fn unsafe_stdin_names_are_refused_at_backup_time() {
    let (env, repo, _) = victim();
    for bad in ["../x", "/abs", "a/../../b", "", "."] {
        let r = env.run_stdin(
            &["backup", "j", "--stdin", "--stdin-name", bad],
            &[],
            b"data",
        );
        assert_eq!(r.code, 2, "{bad:?}: {}", r.stderr);
        assert!(r.stderr.contains("--stdin-name"), "{}", r.stderr);
    }
    assert_eq!(point_count(&repo), 1);
    let r = env.run_stdin(
        &["backup", "j", "--stdin", "--stdin-name", "db/dump.sql"],
        &[],
        b"data",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn malformed_foreign_files_in_every_directory_stay_local() {
    let (env, repo, src) = victim();
    let env_b = &env;
    let sb = env.path("sb");
    small_tree(&sb);
    env_b.passphrase_job("b", &sb, PASS);
    env.run(&["backup", "b"]).ok();
    let junk = b"{\"type\": \"arca-point\", \"version\": 2, garbage";
    let id = Id16::random().hex();
    fs::write(repo.join(format!("jobs/{id}.json")), junk).unwrap();
    fs::write(repo.join(format!("chains/{id}.json")), junk).unwrap();
    fs::write(repo.join(format!("escrow/{id}.x.json")), junk).unwrap();
    fs::write(repo.join(format!("points/{id}.json")), junk).unwrap();
    fs::write(repo.join(format!("index/{id}")), junk).unwrap();
    fs::write(repo.join("packs/README"), junk).unwrap();
    fs::write(repo.join("tmp/not-ours"), junk).unwrap();
    fs::write(
        repo.join(format!("points/{}.json", Id16::random().hex())),
        vec![b'x'; 5 << 20],
    )
    .unwrap();
    for job in ["j", "b"] {
        env.run(&["backup", job]).ok();
        let t = env.path(&format!("t-{job}"));
        env.run(&["restore", job, "--target", s(&t)]).ok();
    }
    assert_eq!(snapshot(&src), snapshot(&env.path("t-j")));
    assert!(
        repo.join("tmp/not-ours").exists(),
        "a file arca did not make was deleted"
    );
    let r = env.run(&["check", "j", "--read-data"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert!(r.stderr.contains(&id), "{}", r.stderr);
    // Reading straight from the repository skips the damaged job record with a warning,
    // without colour escape codes when stderr is not a terminal.
    let r = env.run_env(
        &["points", "j", "--repo", s(&repo)],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("skipping damaged"), "{}", r.stderr);
    assert!(!r.stderr.contains('\x1b'), "{:?}", r.stderr);
    // A reinstall still finds both jobs.
    let env2 = Env::new();
    let r = env2
        .run_env(
            &["--json", "catalog", "rebuild", "--repo", s(&repo)],
            &[("ARCA_PASSPHRASE", PASS)],
        )
        .ok()
        .json();
    let jobs: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["job"].as_str())
        .collect();
    assert!(jobs.contains(&"j") && jobs.contains(&"b"), "{r}");
}

#[test]
fn given_but_wrong_secrets_fail_even_when_the_catalog_could_open() {
    let (env, _repo, _) = victim();
    let t = env.path("t");
    let r = env.run_env(
        &["restore", "j", "--target", s(&t)],
        &[("ARCA_PASSPHRASE", "not the passphrase")],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("wrong passphrase for job 'j' (password 'j')"),
        "{}",
        r.stderr
    );
    assert!(is_empty_or_missing(&t));
    let r = env.run_env(
        &["backup", "j"],
        &[("ARCA_PASSPHRASE", "not the passphrase")],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    // A key file given to a passphrase job: exit 12 too.
    let key = env.path("k.key");
    env.run(&["key", "generate", "--out", s(&key)]).ok();
    let r = env.run(&["--key-file", s(&key), "restore", "j", "--target", s(&t)]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(is_empty_or_missing(&t));
    // The drill checks a given secret too.
    let r = env.run_env(
        &["drill", "j"],
        &[("ARCA_PASSPHRASE", "not the passphrase")],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
}

#[test]
fn every_repository_file_is_0600_and_directory_0700() {
    let (env, repo, _) = victim();
    env.run_stdin(&["backup", "j", "--stdin", "--stdin-name", "s"], &[], b"x")
        .ok();
    fn walk(p: &Path) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let mode = m.permissions().mode() & 0o777;
            if m.is_dir() {
                assert_eq!(mode, 0o700, "{}", e.path().display());
                walk(&e.path());
            } else {
                assert_eq!(mode, 0o600, "{}", e.path().display());
            }
        }
    }
    assert_eq!(
        fs::metadata(&repo).unwrap().permissions().mode() & 0o777,
        0o700
    );
    walk(&repo);
    // A shared repository: 0640 / 0750.
    let shared = env.path("shared");
    env.run(&["init", "--group-readable", s(&shared)]).ok();
    assert_eq!(
        fs::metadata(&shared).unwrap().permissions().mode() & 0o777,
        0o750
    );
    assert_eq!(
        fs::metadata(shared.join("config"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
}

/// Chunk plaintext lengths of the newest point of a passphrase job, read with the library.
async fn chunk_lengths(repo: &Path, pass: &str) -> Vec<u32> {
    use arca::keys::passphrase::PassphraseProvider;
    use arca::keys::{unwrap_any, SlotContext};
    let r = arca::repo::Repository::open(repo).unwrap();
    let job = r.list_jobs().unwrap().remove(0);
    let chain = r.read_chain(&job.chain_id).unwrap();
    let p = PassphraseProvider::new(arca::crypto::Passphrase::new(pass.into()));
    let key = unwrap_any(
        &p,
        &chain.keyslots,
        &SlotContext::of_chain(&chain, &job.name),
    )
    .await
    .unwrap()
    .unwrap();
    let oc = arca::engine::OpenChain::new(chain, key, &job.name).unwrap();
    let pts = r.list_points(&job.job_id).unwrap();
    let idx = arca::engine::ChainIndex::load(&r, &oc, &pts).unwrap();
    let mut locs: Vec<_> = idx
        .iter()
        .map(|(_, l)| (l.pack, l.offset, l.raw_len))
        .collect();
    locs.sort();
    locs.into_iter()
        .map(|l| l.2)
        .filter(|n| *n > 100_000)
        .collect()
}

#[tokio::test]
async fn same_data_under_different_keys_gives_different_chunk_lengths() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("big.bin"), &pseudo_random(24 << 20, 11, false));
    let r1 = env.passphrase_job("a", &src, "one");
    let env2 = Env::new();
    let r2 = env2.passphrase_job("a", &src, "two");
    env.run(&["backup", "a"]).ok();
    env2.run(&["backup", "a"]).ok();
    let mut l1 = chunk_lengths(&r1, "one").await;
    let mut l2 = chunk_lengths(&r2, "two").await;
    assert!(l1.len() > 5 && l2.len() > 5, "{l1:?} {l2:?}");
    // Both hold the whole file (chunks under 100 KB, the file index and a short tail, are
    // left out of the lists, hence at most a few hundred KB less).
    for l in [&l1, &l2] {
        let sum: u64 = l.iter().map(|n| *n as u64).sum();
        assert!(sum <= 24 << 20 && sum + (600 << 10) >= 24 << 20, "{sum}");
    }
    l1.sort();
    l2.sort();
    assert_ne!(l1, l2, "chunk boundaries do not depend on the key");
    // And nothing in a pack marks where one sealed chunk ends: the sealed sizes sum up
    // exactly, with no per-chunk nonce bytes in between.
}

#[test]
fn oversized_lengths_are_refused_before_they_allocate() {
    let (env, repo, _) = victim();
    // A config of 10 MiB, a record of 5 MiB: refused by size.
    let cfg = fs::read(repo.join("config")).unwrap();
    fs::write(repo.join("config"), vec![b' '; 10 << 20]).unwrap();
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    fs::write(repo.join("config"), cfg).unwrap();
    // Parsers given absurd counts and lengths answer with errors.
    let mut idx = vec![0xff, 0xff, 0xff, 0xff];
    idx.extend_from_slice(&[0; 80]);
    assert!(decode_index(&idx).is_err());
    assert!(decode_pack_header(&idx).is_err());
    assert!(decode_payload(&[1, 0, 0], usize::MAX).is_err());
    assert!(decode_payload(&[0; 10], 1 << 40).is_err());
}

#[test]
fn a_tree_length_of_u64_max_under_a_valid_key_is_an_error_not_a_panic() {
    use arca::crypto::{ChunkIdKey, Sealer};
    use arca::engine::{read_tree, ChainIndex, ChunkReader};
    let d = tempfile::tempdir().unwrap();
    let repo = arca::repo::Repository::init(&d.path().join("r"), false).unwrap();
    let chain_key = SecretKey::random();
    let idk = ChunkIdKey::from_chain_key(&chain_key);
    let idx = ChainIndex::empty();
    let mut reader = ChunkReader::new(&repo, &idx, &idk);
    for (tree_bytes, tree_format) in [
        (u64::MAX, TREE_FORMAT_JSON),
        (1 << 36, TREE_FORMAT_JSON),
        (u64::MAX, TREE_FORMAT_BINARY),
        (1 << 36, TREE_FORMAT_BINARY),
        (10, 3),
    ] {
        let body = PointBody {
            kind: "tree".into(),
            source: "/".into(),
            hostname: "h".into(),
            stats: Default::default(),
            tree: vec![Id32([1; 32])],
            tree_bytes,
            tree_format,
            errors: vec![],
            skipped: vec![],
            root: None,
            users: Default::default(),
            groups: Default::default(),
            copied_from: None,
        };
        assert!(read_tree(&mut reader, &body).is_err());
    }
    let _ = Sealer::new(&chain_key);
}

#[test]
fn renamed_job_record_is_refused() {
    let (env, repo, _) = victim();
    let jf = only_file(&repo.join("jobs"));
    let mut job = read_json(&jf);
    job["name"] = "other".into();
    write_json(&jf, &job);
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, UNTRUSTED, "{}", r.stderr);
    assert!(r.stderr.contains("name 'other'"), "{}", r.stderr);
    assert_eq!(point_count(&repo), 1);
}

#[test]
fn a_second_secret_given_is_checked_too() {
    let (env, _repo, _) = victim();
    let key = env.path("k.key");
    env.run(&["key", "generate", "--out", s(&key)]).ok();
    env.run(&[
        "--key-file",
        s(&key),
        "job",
        "keys",
        "add",
        "j",
        "--raw-key",
    ])
    .ok();
    let other = env.path("other.key");
    env.run(&["key", "generate", "--out", s(&other)]).ok();
    // The passphrase opens the chain, the key given with it does not: exit 12.
    let t = env.path("t");
    let r = env.run_env(
        &["--key-file", s(&other), "restore", "j", "--target", s(&t)],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(is_empty_or_missing(&t));
    // Both right: fine.
    env.run_env(
        &["--key-file", s(&key), "restore", "j", "--target", s(&t)],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
}

/// The literal attack of arca 0.1: with a catalog of their own, an attacker rebuilds it from
/// the victim's repository and switches the job to no encryption. Without the job's keys they
/// can no longer write a job record the victim accepts, and the victim's next backup is
/// encrypted as before.
#[test]
fn attackers_own_catalog_cannot_switch_the_job_to_plaintext() {
    let (env, repo, _) = victim();
    let attacker = Env::new();
    attacker
        .run(&["catalog", "rebuild", "--repo", s(&repo)])
        .ok();
    attacker.run(&["job", "deactivate", "j"]).ok();
    let r = attacker.run(&["job", "activate", "j", "--encryption", "none"]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    let r = attacker.run(&["job", "encryption", "j", "--encryption", "none"]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    let out = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(out["tier"], "catalog");
    assert_eq!(point_count(&repo), 2);
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    assert!(pts
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["status"] == "ok" && p["chain_id"] == pts[0]["chain_id"]));
}

/// An incremental reads its parent's file index (on a thread of its own, along with the
/// walk) from packs anyone may have written: damaged, it fails the backup with an integrity
/// error naming the file index; it is never taken for a parent with no files.
#[test]
fn a_damaged_parent_file_index_fails_the_incremental() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..2000 {
        write(
            &src.join(format!("d{}/f{i}", i % 7)),
            format!("file {i}\n").repeat(i % 50 + 1).as_bytes(),
        );
    }
    let repo = env.passphrase_job("j", &src, "pw");
    env.run(&["backup", "j"]).ok();
    let points_before = fs::read_dir(repo.join("points")).unwrap().count();
    // Every pack damaged every 61 bytes after its prefix: the file index's chunks too.
    let mut packs = 0;
    for d in fs::read_dir(repo.join("packs")).unwrap() {
        for p in fs::read_dir(d.unwrap().path()).unwrap() {
            let p = p.unwrap().path();
            let mut b = fs::read(&p).unwrap();
            for i in (24..b.len()).step_by(61) {
                b[i] ^= 0x5a;
            }
            fs::write(&p, b).unwrap();
            packs += 1;
        }
    }
    assert!(packs > 0);
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, INTEGRITY, "{}", r.stderr);
    assert!(r.stderr.contains("file index"), "{}", r.stderr);
    // No point was added.
    assert_eq!(
        fs::read_dir(repo.join("points")).unwrap().count(),
        points_before
    );
}

/// Runs `backup j`, pausing before it opens `at` (the walk has listed it), calls `swap` during
/// the pause, and returns the backup's exit code and stderr.
fn backup_with_swap(env: &Env, at: &str, swap: impl FnOnce()) -> (i32, String) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = env
        .cmd(&["backup", "j"])
        .env("ARCA_PASSPHRASE", PASS)
        .env("ARCA_FAULT_PAUSE_AT", at)
        .env("ARCA_FAULT_PAUSE_SECS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the backup never paused at {at}: {seen}"
        );
        seen.push_str(&line);
        if line.contains("pausing") {
            break;
        }
    }
    swap();
    err.read_to_string(&mut seen).unwrap();
    (child.wait().unwrap().code().unwrap(), seen)
}

/// Every regular file below `root`, with its bytes.
fn files_below(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(files_below(&p));
        } else if m.is_file() {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
    out
}

/// A backup never reads outside its source through a symlink swapped in while it runs: a
/// file replaced by a symlink to a file elsewhere between the walk and its read, and a
/// directory replaced by a symlink to a directory elsewhere between its listing in its
/// parent and its own, are reported and not stored; the rest of the tree is.
#[test]
fn a_source_entry_swapped_for_a_symlink_during_a_backup_is_not_followed() {
    let env = Env::new();
    let src = env.path("src");
    let outside = env.path("outside");
    let secret = b"TOP SECRET, outside the source\n";
    write(&outside.join("secret.txt"), secret);
    write(&src.join("a/victim.bin"), &pseudo_random(200_000, 5, true));
    write(&src.join("d/inner.txt"), b"inner\n");
    write(&src.join("keep.txt"), b"kept\n");
    env.passphrase_job("j", &src, PASS);
    let leaked = |into: &str| {
        let t = env.path(into);
        env.run_env(
            &["restore", "j", "latest", "--target", s(&t)],
            &[("ARCA_PASSPHRASE", PASS)],
        )
        .ok();
        let files = files_below(&t);
        assert!(
            files
                .iter()
                .any(|(p, d)| p.ends_with("keep.txt") && d == b"kept\n"),
            "the rest of the tree is stored"
        );
        files
            .into_iter()
            .filter(|(_, d)| d.windows(secret.len()).any(|w| w == secret))
            .map(|(p, _)| p)
            .collect::<Vec<_>>()
    };

    let (code, stderr) = backup_with_swap(&env, "a/victim.bin", || {
        fs::remove_file(src.join("a/victim.bin")).unwrap();
        symlink(outside.join("secret.txt"), src.join("a/victim.bin")).unwrap();
    });
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("victim.bin"), "{stderr}");
    assert_eq!(leaked("restored-1"), Vec::<PathBuf>::new());

    fs::remove_file(src.join("a/victim.bin")).unwrap();
    let (code, stderr) = backup_with_swap(&env, "d", || {
        fs::rename(src.join("d"), env.path("d-moved")).unwrap();
        symlink(&outside, src.join("d")).unwrap();
    });
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("/d"), "{stderr}");
    assert_eq!(leaked("restored-2"), Vec::<PathBuf>::new());
}

/// What a symlink points to is read from the very link its directory listed: a directory
/// swapped for a symlink to another directory between the listing of the link and the read
/// of its target does not make the backup record the target of the other directory's link
/// of that name (a target the user who swapped it may not be allowed to see). The link is
/// looked up by name in the directory the walk opened and listed, so what is recorded is
/// the listed link's own target.
#[test]
fn a_symlink_read_through_a_swapped_directory_is_not_recorded() {
    let env = Env::new();
    let src = env.path("src");
    let outside = env.path("outside");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink("innocent-target", src.join("d/link")).unwrap();
    symlink("LEAKED-TARGET", outside.join("link")).unwrap();
    write(&src.join("keep.txt"), b"kept\n");
    env.passphrase_job("j", &src, PASS);

    let (code, stderr) = backup_with_swap(&env, "d/link", || {
        fs::rename(src.join("d"), env.path("d-moved")).unwrap();
        symlink(&outside, src.join("d")).unwrap();
    });
    assert_eq!(code, 0, "{stderr}");
    let ls = env
        .run_env(&["--json", "ls", "j"], &[("ARCA_PASSPHRASE", PASS)])
        .ok()
        .stdout;
    assert!(ls.contains("keep.txt"), "{ls}");
    assert!(ls.contains("innocent-target"), "{ls}");
    assert!(!ls.contains("LEAKED-TARGET"), "{ls}");
}
