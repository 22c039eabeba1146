//! The key lifecycle, driven through the real binary: rotation into a new key generation,
//! interrupted rotations, rotation under a running backup, rekey, and the attacks an old
//! passphrase holder could try after a rotation.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;

const OLD: &str = "the passphrase before rotation";
const NEW: &str = "the passphrase after rotation";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tree(env: &Env) -> PathBuf {
    let src = env.path("src");
    write(&src.join("docs/readme.txt"), b"hello arca\n");
    write(&src.join("big.bin"), &pseudo_random(3 << 20, 7, true));
    write(&src.join("other.bin"), &pseudo_random(1 << 20, 8, false));
    src
}

/// Every file of the repository under `sub`, by name, with a hash of its bytes.
fn files(repo: &Path, sub: &str) -> BTreeMap<String, String> {
    snapshot(&repo.join(sub))
}

fn point_ids(env: &Env, job: &str) -> Vec<String> {
    env.run(&["--json", "points", job])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["point_id"].as_str().unwrap().to_string())
        .collect()
}

/// Whether `pass` alone opens `point` of `job` in `repo`, asked by a fresh catalog (as after a
/// reinstall). 0: opens; 12: wrong passphrase / no key; 13: integrity.
fn opens(env: &Env, repo: &Path, job: &str, point: &str, pass: &str) -> i32 {
    let fresh = tempfile::tempdir().unwrap();
    let cat = fresh.path().join("catalog.db");
    let r = env.run_env(
        &[
            "keys",
            "resolve",
            job,
            point,
            "--repo",
            s(repo),
            "--catalog",
            s(&cat),
        ],
        &[("ARCA_PASSPHRASE", pass)],
    );
    r.code
}

fn rotate(env: &Env, extra: &[(&str, &str)]) -> Run {
    let mut e = vec![("ARCA_NEW_PASSPHRASE", NEW)];
    e.extend_from_slice(extra);
    env.run_env(&["--json", "password", "rotate", "team"], &e)
}

/// A job with a named password `team`.
fn team_job(env: &Env, name: &str, src: &Path, repo: &Path) {
    if !repo.join("config").exists() {
        env.run(&["init", s(repo)]).ok();
    }
    env.run_env(
        &[
            "job",
            "create",
            name,
            "--repo",
            s(repo),
            "--source",
            s(src),
            "--encryption",
            "passphrase",
            "--password",
            "team",
        ],
        &[("ARCA_PASSPHRASE", OLD)],
    )
    .ok();
}

#[test]
fn rotation_starts_a_new_generation_that_old_secrets_cannot_reach() {
    let env = Env::new();
    let src = tree(&env);
    let repo = env.path("repo");
    team_job(&env, "j", &src, &repo);
    env.run(&["backup", "j"]).ok();
    write(&src.join("second.txt"), b"second point");
    env.run(&["backup", "j"]).ok();
    let before = point_ids(&env, "j");
    // The attacker's copy: every repository file, before the rotation.
    let stolen = env.path("stolen");
    copy_dir(&repo, &stolen);
    let packs = files(&repo, "packs");
    let index = files(&repo, "index");
    let points = files(&repo, "points");

    let r = rotate(&env, &[]).ok().json();
    assert_eq!(r["jobs"][0]["chains"][0]["generation"], 2);
    assert_eq!(r["resumed"], false);
    // Nothing but the chain record changed: packs, indexes and points byte for byte.
    assert_eq!(files(&repo, "packs"), packs);
    assert_eq!(files(&repo, "index"), index);
    assert_eq!(files(&repo, "points"), points);

    // The next run is an incremental: only the new file's chunks are new.
    write(&src.join("third.txt"), b"third point, after the rotation");
    let b = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(b["full"], false, "{b}");
    let total = b["total_bytes"].as_u64().unwrap();
    let new = b["new_bytes"].as_u64().unwrap();
    assert!(total > 4 << 20, "{b}");
    // Dedup ratio: all but the new file's bytes are found in the older generation's chunks.
    assert!(
        new < 4096,
        "after rotation {new} of {total} bytes new: deduplication broke ({b})"
    );
    let all = point_ids(&env, "j");
    assert_eq!(all.len(), 3);
    let after = all.iter().find(|p| !before.contains(p)).unwrap().clone();

    // The new passphrase opens every point; the old one none.
    for p in &all {
        assert_eq!(
            opens(&env, &repo, "j", p, NEW),
            0,
            "new passphrase, point {p}"
        );
        assert_eq!(
            opens(&env, &repo, "j", p, OLD),
            12,
            "old passphrase, point {p}"
        );
    }

    // The old passphrase with every metadata file from before the rotation: the stolen
    // copy's records (chains, jobs, escrow) laid over today's repository. Old points open
    // (the attacker had them already); the point written after the rotation does not.
    let mixed = env.path("mixed");
    copy_dir(&repo, &mixed);
    for sub in ["chains", "jobs"] {
        fs::remove_dir_all(mixed.join(sub)).unwrap();
        copy_dir(&stolen.join(sub), &mixed.join(sub));
    }
    assert_eq!(opens(&env, &mixed, "j", &before[0], OLD), 0);
    let code = opens(&env, &mixed, "j", &after, OLD);
    assert_ne!(
        code, 0,
        "the old passphrase and old metadata opened a point written after the rotation"
    );
    // And a restore of it writes nothing.
    let fresh = tempfile::tempdir().unwrap();
    let t = env.path("t-after");
    let r = env.run_env(
        &[
            "restore",
            "j",
            &after,
            "--repo",
            s(&mixed),
            "--target",
            s(&t),
            "--catalog",
            s(&fresh.path().join("c.db")),
        ],
        &[("ARCA_PASSPHRASE", OLD)],
    );
    assert_ne!(r.code, 0);
    assert!(!t.join("third.txt").exists());
}

#[test]
fn an_old_passphrase_cannot_plant_a_point_or_roll_the_chain_back() {
    let env = Env::new();
    let src = tree(&env);
    let repo = env.path("repo");
    team_job(&env, "j", &src, &repo);
    env.run(&["backup", "j"]).ok();
    let stolen = env.path("stolen");
    copy_dir(&repo, &stolen);
    rotate(&env, &[]).ok();

    // The attacker backs up into the stolen copy with the old passphrase (their own
    // catalog), then plants the resulting point, index and packs into the real repository.
    let attacker = Env::new();
    attacker
        .run_env(
            &["job", "adopt", "j", "--repo", s(&stolen)],
            &[("ARCA_PASSPHRASE", OLD)],
        )
        .ok();
    let stolen_points = files(&stolen, "points");
    attacker
        .run_stdin(
            &["backup", "j", "--stdin", "--stdin-name", "dump.sql"],
            &[("ARCA_PASSPHRASE", OLD)],
            b"planted by the attacker\n",
        )
        .ok();
    let planted: Vec<String> = files(&stolen, "points")
        .into_keys()
        .filter(|k| !stolen_points.contains_key(k))
        .collect();
    assert_eq!(planted.len(), 1);
    for sub in ["points", "index", "packs"] {
        copy_dir(&stolen.join(sub), &repo.join(sub));
    }
    let planted_id = planted[0].trim_end_matches(".json").to_string();
    // The victim's catalog: the planted point is not restorable and is named as damaged.
    let t = env.path("t");
    let r = env.run(&["restore", "j", &planted_id, "--target", s(&t)]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert!(r.stderr.contains("retired"), "{}", r.stderr);
    assert!(is_empty_or_missing(&t));
    // Without the catalog too (after a reinstall), with the old or the new passphrase.
    assert_ne!(opens(&env, &repo, "j", &planted_id, OLD), 0);
    assert_eq!(opens(&env, &repo, "j", &planted_id, NEW), 13);
    // The victim's next backup still works and is not based on the planted point.
    env.run(&["backup", "j"]).ok();

    // Putting the pre-rotation chain record back is refused by the catalog (exit 14).
    let chains = repo.join("chains");
    fs::remove_dir_all(&chains).unwrap();
    copy_dir(&stolen.join("chains"), &chains);
    let r = env.run_env(&["backup", "j"], &[("ARCA_PASSPHRASE", OLD)]);
    assert_eq!(r.code, 14, "{}", r.stderr);
}

fn escrow_files(repo: &Path, job_prefix: &str) -> usize {
    fs::read_dir(repo.join("escrow"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(job_prefix)
            })
            .count()
        })
        .unwrap_or(0)
}

fn job_id(env: &Env, job: &str) -> String {
    env.run(&["--json", "job", "show", job]).ok().json()["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_rotation_leaves_one_password_per_point_and_finishes_when_rerun() {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let mut n = 1;
    loop {
        let env = Env::new();
        let src = tree(&env);
        let repo = env.path("repo");
        team_job(&env, "a", &src, &repo);
        team_job(&env, "b", &src, &repo);
        env.run(&["kms", "escrow", "enable", "--key", &key]).ok();
        env.run(&["backup", "a"]).ok();
        env.run(&["backup", "b"]).ok();
        let ids = [job_id(&env, "a"), job_id(&env, "b")];
        let points: Vec<(&str, String)> = ["a", "b"]
            .iter()
            .flat_map(|j| point_ids(&env, j).into_iter().map(move |p| (*j, p)))
            .collect();

        let r = rotate(&env, &[("ARCA_FAULT_AFTER_WRITES", &n.to_string())]);
        if r.code == 0 {
            assert!(n > 8, "the rotation made only {} writes", n - 1);
            break;
        }
        assert_eq!(r.code, 75, "write {n}: {}", r.stderr);
        assert!(r.stderr.contains("fault injected"), "{}", r.stderr);
        // Exactly one of the two passphrases opens each point, never neither, never both.
        for (job, p) in &points {
            let old = opens(&env, &repo, job, p, OLD);
            let new = opens(&env, &repo, job, p, NEW);
            assert!(
                (old == 0) ^ (new == 0),
                "after write {n}, point {p} of {job}: old passphrase {old}, new {new}"
            );
        }
        // An escrow record exists for each job at every moment.
        for id in &ids {
            assert!(
                escrow_files(&repo, id) >= 1,
                "after write {n}: no escrow record"
            );
        }
        // Backups keep working through the catalog meanwhile.
        env.run(&["backup", "a"]).ok();
        // Another new passphrase cannot take over the half-done rotation.
        let r = env.run_env(
            &["password", "rotate", "team"],
            &[("ARCA_NEW_PASSPHRASE", "a third passphrase")],
        );
        if r.code != 0 {
            assert_eq!(r.code, 2, "{}", r.stderr);
            assert!(r.stderr.contains("same new passphrase"), "{}", r.stderr);
        }
        // Re-running finishes it.
        rotate(&env, &[]).ok();
        let points: Vec<(&str, String)> = ["a", "b"]
            .iter()
            .flat_map(|j| point_ids(&env, j).into_iter().map(move |p| (*j, p)))
            .collect();
        for (job, p) in &points {
            assert_eq!(
                opens(&env, &repo, job, p, NEW),
                0,
                "after write {n}: new, {p}"
            );
            assert_eq!(
                opens(&env, &repo, job, p, OLD),
                12,
                "after write {n}: old, {p}"
            );
        }
        for id in &ids {
            assert_eq!(
                escrow_files(&repo, id),
                1,
                "after write {n}: old escrow record left"
            );
        }
        let st = env.run(&["--json", "kms", "escrow", "status"]).ok().json();
        assert_eq!(st["records"].as_array().unwrap().len(), 2, "{st}");
        n += 1;
    }
}

#[test]
fn rotation_waits_for_a_running_backup_and_moves_its_point_too() {
    use std::io::Write;
    use std::process::Stdio;
    let env = Env::new();
    let src = tree(&env);
    let repo = env.path("repo");
    team_job(&env, "j", &src, &repo);
    env.run(&["backup", "j"]).ok();
    // A stream backup that holds the lock until its input ends.
    let mut backup = env
        .cmd(&["backup", "j", "--stdin", "--stdin-name", "dump.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = backup.stdin.take().unwrap();
    input.write_all(&pseudo_random(1 << 20, 3, true)).unwrap();
    let lock = fs::File::open(repo.join("lock")).unwrap();
    let t0 = std::time::Instant::now();
    while lock.try_lock().is_ok() {
        lock.unlock().unwrap();
        assert!(
            t0.elapsed().as_secs() < 30,
            "the backup never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Told not to wait, the rotation refuses and changes nothing.
    let r = rotate(&env, &[("ARCA_LOCK_WAIT", "0s")]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("lock"), "{}", r.stderr);
    let first = point_ids(&env, "j")[0].clone();
    assert_eq!(opens(&env, &repo, "j", &first, OLD), 0);
    // Waiting, it runs once the backup is done.
    let rot = {
        let mut c = env.cmd(&["--json", "password", "rotate", "team"]);
        c.env("ARCA_NEW_PASSPHRASE", NEW);
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    input.write_all(b"the end of the stream").unwrap();
    drop(input);
    let b = backup.wait_with_output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let out = rot.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for the lock"));
    let all = point_ids(&env, "j");
    assert_eq!(all.len(), 2);
    for p in &all {
        assert_eq!(opens(&env, &repo, "j", p, NEW), 0);
        assert_eq!(opens(&env, &repo, "j", p, OLD), 12);
    }
}

#[test]
fn rekey_renews_keys_under_the_same_passphrase() {
    let env = Env::new();
    let src = tree(&env);
    let repo = env.path("repo");
    team_job(&env, "j", &src, &repo);
    env.run(&["backup", "j"]).ok();
    let stolen = env.path("stolen");
    copy_dir(&repo, &stolen);
    let packs = files(&repo, "packs");
    let r = env.run(&["--json", "job", "rekey", "j"]).ok().json();
    assert_eq!(r["generation"], 2);
    assert_eq!(files(&repo, "packs"), packs);
    write(&src.join("new.txt"), b"after the rekey");
    let b = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(b["full"], false);
    let ids = point_ids(&env, "j");
    for p in &ids {
        assert_eq!(opens(&env, &repo, "j", p, OLD), 0);
    }
    // The chain record from before the rekey (its passphrase is unchanged) opens the first
    // point, not the one written after.
    let mixed = env.path("mixed");
    copy_dir(&repo, &mixed);
    fs::remove_dir_all(mixed.join("chains")).unwrap();
    copy_dir(&stolen.join("chains"), &mixed.join("chains"));
    assert_eq!(opens(&env, &mixed, "j", &ids[0], OLD), 0);
    assert_eq!(opens(&env, &mixed, "j", &ids[1], OLD), 13);
    // A second rekey keeps every generation readable.
    env.run(&["job", "rekey", "j"]).ok();
    let t = env.path("t");
    env.run(&["restore", "j", &ids[0], "--target", s(&t)]).ok();
    assert_eq!(
        fs::read(t.join("docs/readme.txt")).unwrap(),
        b"hello arca\n"
    );
    assert!(!t.join("new.txt").exists());
    let t2 = env.path("t2");
    env.run(&["restore", "j", "--target", s(&t2)]).ok();
    assert_eq!(fs::read(t2.join("new.txt")).unwrap(), b"after the rekey");
}

fn bundle_env(pass: &str) -> [(&'static str, String); 1] {
    [("ARCA_BUNDLE_PASSPHRASE", pass.to_string())]
}

fn jobs_in_catalog(env: &Env) -> usize {
    env.run(&["--json", "job", "list"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn config_bundle_restores_a_fresh_install_without_retyping_passphrases() {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let env = Env::new();
    let src = tree(&env);
    let repo = env.path("repo");
    team_job(&env, "nightly", &src, &repo);
    env.run(&["kms", "escrow", "enable", "--key", &key]).ok();
    env.run(&["backup", "nightly"]).ok();
    let chains_before_rekey = env.path("chains-before");
    copy_dir(&repo.join("chains"), &chains_before_rekey);
    env.run(&["job", "rekey", "nightly"]).ok();
    let bundle = env.path("arca-config.bundle");
    let [(k, v)] = bundle_env("bundle secret");
    let r = env
        .run_env(
            &["--json", "config", "export", "--out", s(&bundle)],
            &[(k, &v)],
        )
        .ok()
        .json();
    assert_eq!(r["jobs"], 1);
    assert_eq!(r["passwords"], 1);
    // Sealed: no job name, path or KMS key in clear, and private to its owner.
    let bytes = fs::read(&bundle).unwrap();
    for needle in ["nightly", s(&repo), &key] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} in clear"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&bundle).unwrap().permissions().mode() & 0o077,
        0
    );
    // An export never overwrites a file.
    let again = env.run_env(&["config", "export", "--out", s(&bundle)], &[(k, &v)]);
    assert_ne!(again.code, 0);

    // Reinstall: the catalog and its key file are gone.
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let wrong = env.run_env(
        &["config", "import", s(&bundle)],
        &[("ARCA_BUNDLE_PASSPHRASE", "not the bundle secret")],
    );
    assert_eq!(wrong.code, 12, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("wrong bundle passphrase"),
        "{}",
        wrong.stderr
    );
    assert_eq!(
        jobs_in_catalog(&env),
        0,
        "a wrong passphrase imported something"
    );
    // A modified bundle is an integrity error, not a wrong passphrase.
    let bad = env.path("bad.bundle");
    let mut b = bytes.clone();
    let n = b.len() - 20;
    b[n] ^= 1;
    fs::write(&bad, &b).unwrap();
    let r = env.run_env(&["config", "import", s(&bad)], &[(k, &v)]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert_eq!(jobs_in_catalog(&env), 0);

    env.run_env(&["config", "import", s(&bundle)], &[(k, &v)])
        .ok();
    // Unattended: no passphrase anywhere, the stored hash does it.
    write(
        &src.join("after-reinstall.txt"),
        b"backed up after the reinstall",
    );
    let b = env.run(&["--json", "backup", "nightly"]).ok().json();
    assert_eq!(b["tier"], "catalog");
    assert_eq!(
        b["full"], false,
        "the pins and chain came back: an incremental"
    );
    let t = env.path("t");
    env.run(&["restore", "nightly", "--target", s(&t)]).ok();
    assert_eq!(snapshot(&src), snapshot(&t));
    // Escrow came back, and agrees with the repository.
    let st = env.run(&["--json", "kms", "escrow", "status"]).ok().json();
    assert_eq!(st["enabled"], true, "{st}");
    assert!(st["problems"].as_array().unwrap().is_empty(), "{st}");
    let p = env.run(&["--json", "points", "nightly"]).ok().json();
    assert_eq!(p.as_array().unwrap().len(), 2);
    // The trust pins came back: the chain record from before the rekey is refused.
    fs::remove_dir_all(repo.join("chains")).unwrap();
    copy_dir(&chains_before_rekey, &repo.join("chains"));
    let r = env.run(&["backup", "nightly"]);
    assert_eq!(r.code, 14, "{}", r.stderr);
}

#[test]
fn config_import_over_an_existing_catalog_replaces_nothing_without_replace() {
    let env = Env::new();
    let src = tree(&env);
    let repo = env.path("repo");
    team_job(&env, "j", &src, &repo);
    let bundle = env.path("b.bundle");
    let [(k, v)] = bundle_env("bundle secret");
    env.run_env(&["config", "export", "--out", s(&bundle)], &[(k, &v)])
        .ok();
    // The catalog changes after the export: the job is deactivated.
    env.run(&["job", "deactivate", "j"]).ok();
    let active = |env: &Env| env.run(&["--json", "job", "show", "j"]).ok().json()["active"].clone();
    let r = env.run_env(&["config", "import", s(&bundle)], &[(k, &v)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stdout.contains("replace") && r.stdout.contains("job"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("--replace"), "{}", r.stderr);
    assert_eq!(active(&env), false, "replaced without --replace");
    let d = env
        .run_env(
            &["--json", "config", "import", s(&bundle), "--dry-run"],
            &[(k, &v)],
        )
        .ok()
        .json();
    assert_eq!(d["applied"], false);
    assert_eq!(d["replacements"], 1, "{d}");
    assert_eq!(active(&env), false);
    env.run_env(&["config", "import", s(&bundle), "--replace"], &[(k, &v)])
        .ok();
    assert_eq!(active(&env), true);
}

#[tokio::test(flavor = "multi_thread")]
async fn rekey_rewraps_every_kind_of_keyslot() {
    let admin = kms_admin();
    let kms_key = new_kms_key(&admin).await;
    let env = Env::new();
    let src = tree(&env);
    let repo = env.path("repo");
    let key = env.key_job("k", &src, &repo);
    env.run(&["job", "keys", "add", "k", "--kms-key", &kms_key])
        .ok();
    env.run_env(
        &["job", "keys", "add", "k", "--password", "extra"],
        &[("ARCA_PASSPHRASE", OLD)],
    )
    .ok();
    env.run(&["backup", "k"]).ok();
    // Unattended: the catalog remembers the key file, KMS is reachable, the hash is stored.
    let r = env.run(&["--json", "job", "rekey", "k"]).ok().json();
    assert_eq!(r["generation"], 2);
    write(&src.join("later.txt"), b"after the rekey");
    env.run(&["backup", "k"]).ok();
    let slots = env.run(&["--json", "job", "keys", "list", "k"]).ok().json();
    assert_eq!(slots.as_array().unwrap().len(), 3, "{slots}");
    // Each secret alone, with no catalog (a fresh one each time), opens both points.
    for p in point_ids(&env, "k") {
        let run = |pre: &[&str], env_: &[(&str, &str)]| {
            let fresh = tempfile::tempdir().unwrap();
            let cat = fresh.path().join("c.db");
            let mut args: Vec<&str> = pre.to_vec();
            args.extend_from_slice(&["keys", "resolve", "k", p.as_str(), "--repo", s(&repo)]);
            args.extend_from_slice(&["--catalog", s(&cat)]);
            env.run_env(&args, env_).ok()
        };
        let r = run(&["--key-file", s(&key)], &[]);
        assert!(r.stdout.contains("resolved via key"), "{}", r.stderr);
        let r = run(&[], &[("ARCA_PASSPHRASE", OLD)]);
        assert!(r.stdout.contains("resolved via passphrase"), "{}", r.stderr);
        let r = run(&["--trust-kms-key", kms_key.as_str()], &[]);
        assert!(r.stdout.contains("resolved via kms"), "{}", r.stderr);
    }
}

#[test]
fn sigint_during_a_rotation_stops_cleanly() {
    use std::io::Write;
    use std::process::Stdio;
    let env = Env::new();
    let src = tree(&env);
    let repo = env.path("repo");
    team_job(&env, "j", &src, &repo);
    env.run(&["backup", "j"]).ok();
    let first = point_ids(&env, "j")[0].clone();
    // A running backup holds the lock, so the rotation waits; Ctrl-C then stops it.
    let mut backup = env
        .cmd(&["backup", "j", "--stdin", "--stdin-name", "dump.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = backup.stdin.take().unwrap();
    input.write_all(b"some data").unwrap();
    let lock = fs::File::open(repo.join("lock")).unwrap();
    while lock.try_lock().is_ok() {
        lock.unlock().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rot = env
        .cmd(&["password", "rotate", "team"])
        .env("ARCA_NEW_PASSPHRASE", NEW)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = rustix::process::Pid::from_raw(rot.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = rot.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    drop(input);
    assert!(backup.wait().unwrap().success());
    // Nothing changed: the old passphrase opens every point, the new one none; a later
    // rotation is a fresh one.
    for p in point_ids(&env, "j") {
        assert_eq!(opens(&env, &repo, "j", &p, OLD), 0);
        assert_eq!(opens(&env, &repo, "j", &p, NEW), 12);
    }
    let r = rotate(&env, &[]).ok().json();
    assert_eq!(r["resumed"], false);
    assert_eq!(opens(&env, &repo, "j", &first, NEW), 0);
}
