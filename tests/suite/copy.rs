//! Copy jobs between trust zones (`arca copy`): ciphertext copies into a replica (local to
//! S3 and back) and re-encrypting copies under another job's keys; copying again copies
//! only what is new. The S3 side is the loopback server ./scripts/test.sh starts.

use crate::common;

use std::path::Path;

use common::*;

const PASS: &str = "source zone passphrase";
const OTHER: &str = "target zone passphrase";

fn tree(src: &Path, seed: u64) {
    write(&src.join("big.bin"), &pseudo_random(3 << 20, seed, false));
    for i in 0..20 {
        write(
            &src.join(format!("d/{i}.txt")),
            format!("line {i} {seed}\n").repeat(50).as_bytes(),
        );
    }
}

fn job(env: &Env, repo: &str, name: &str, src: &Path, pass: &str) {
    env.run_env(
        &[
            "job",
            "create",
            name,
            "--repo",
            repo,
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "passphrase",
        ],
        &[("ARCA_PASSPHRASE", pass)],
    )
    .ok();
}

/// Every object of a local repository: relative path → bytes.
fn local_objects(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn s3_object(bucket: &str, key: &str) -> Vec<u8> {
    let c = s3_admin();
    s3_block(async {
        c.get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec()
    })
}

/// Restores `job` from `repo` with a fresh catalog (another machine) and `pass`.
fn restore_elsewhere(env: &Env, job: &str, repo: &str, pass: &str, target: &Path) -> Run {
    env.run_env(
        &[
            "--catalog",
            env.path(&format!(
                "other-{}.db",
                target.file_name().unwrap().to_string_lossy()
            ))
            .to_str()
            .unwrap(),
            "restore",
            job,
            "--repo",
            repo,
            "--target",
            target.to_str().unwrap(),
        ],
        &[("ARCA_PASSPHRASE", pass)],
    )
}

#[test]
fn ciphertext_copy_local_to_s3_and_back_is_identical_and_opens_with_the_same_keys() {
    let env = Env::new();
    let src = env.path("src");
    tree(&src, 1);
    let local = env.path("repo");
    env.run(&["init", local.to_str().unwrap()]).ok();
    job(&env, local.to_str().unwrap(), "web", &src, PASS);
    env.run(&["backup", "web"]).ok();
    write(&src.join("d/extra.txt"), b"second point\n");
    env.run(&["backup", "web"]).ok();

    // Local -> S3 (the untrusted zone): ciphertext as it is, read back.
    let bucket = s3_bucket(false);
    let url = format!("s3://{bucket}/replica");
    let c = env
        .run(&["--json", "copy", "web", "--to", &url, "--verify"])
        .ok()
        .json();
    validate_json("copy", &c);
    assert_eq!(c["target_created"], true, "{c}");
    assert_eq!(c["points"].as_array().unwrap().len(), 2, "{c}");
    assert!(c["objects_copied"].as_u64().unwrap() >= 6, "{c}");
    assert_eq!(c["objects_verified"], c["objects_copied"], "{c}");
    // Byte for byte what the source holds (the config aside: its own file).
    let objects = local_objects(&local);
    let mut compared = 0;
    for (k, v) in &objects {
        if k == "config" || k.starts_with("locks") || k == "lock" || k.starts_with("tmp") {
            continue;
        }
        assert_eq!(&s3_object(&bucket, &format!("replica/{k}")), v, "{k}");
        compared += 1;
    }
    assert!(compared >= 6);
    // Copying again copies nothing.
    let again = env
        .run(&["--json", "copy", "web", "--to", &url])
        .ok()
        .json();
    assert_eq!(again["objects_copied"], 0, "{again}");
    assert_eq!(again["objects_present"], c["objects_copied"], "{again}");
    // Another machine restores from the S3 copy with the same passphrase.
    let out = env.path("from-s3");
    let r = restore_elsewhere(&env, "web", &url, PASS, &out).ok();
    assert!(r.stderr.contains("opened via: passphrase"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&out));

    // S3 -> local: a replica of the S3 replica, again identical and restorable.
    let back = env.path("back");
    let c2 = env
        .run(&[
            "--json",
            "copy",
            "web",
            "--repo",
            &url,
            "--to",
            back.to_str().unwrap(),
            "--verify",
        ])
        .ok()
        .json();
    assert_eq!(c2["target_created"], true, "{c2}");
    let back_objects = local_objects(&back);
    for (k, v) in &objects {
        if k.starts_with("packs") || k.starts_with("points") || k.starts_with("index") {
            assert_eq!(back_objects.get(k), Some(v), "{k}");
        }
    }
    let out2 = env.path("from-local-copy");
    restore_elsewhere(&env, "web", back.to_str().unwrap(), PASS, &out2).ok();
    assert_eq!(snapshot(&src), snapshot(&out2));
    // The wrong passphrase does not open the copy.
    let bad = restore_elsewhere(&env, "web", &url, "not it", &env.path("bad"));
    assert_eq!(bad.code, 12, "{}", bad.stderr);
}

#[test]
fn a_ciphertext_copy_refuses_another_repository() {
    let env = Env::new();
    let src = env.path("src");
    tree(&src, 2);
    let repo = env.path("repo");
    env.run(&["init", repo.to_str().unwrap()]).ok();
    job(&env, repo.to_str().unwrap(), "db", &src, PASS);
    env.run(&["backup", "db"]).ok();
    let other = env.path("other");
    env.run(&["init", other.to_str().unwrap()]).ok();
    let r = env.run(&["copy", "db", "--to", other.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--encrypt-on target"), "{}", r.stderr);
    assert_eq!(
        local_objects(&other)
            .keys()
            .filter(|k| k.starts_with("packs"))
            .count(),
        0
    );
}

#[test]
fn reencrypting_copy_opens_with_the_target_keys_only_and_copies_only_what_is_new() {
    let env = Env::new();
    let src = env.path("src");
    tree(&src, 3);
    let repo = env.path("repo");
    env.run(&["init", repo.to_str().unwrap()]).ok();
    job(&env, repo.to_str().unwrap(), "mail", &src, PASS);
    env.run(&["backup", "mail"]).ok();
    let first = snapshot(&src);
    write(&src.join("d/new.txt"), b"later\n");
    env.run(&["backup", "mail"]).ok();

    // The target zone: an S3 repository with a job of its own passphrase.
    let bucket = s3_bucket(false);
    let url = format!("s3://{bucket}/offsite");
    env.run(&["init", &url]).ok();
    job(&env, &url, "mail-offsite", &env.path("unused"), OTHER);
    let c = env
        .run(&[
            "--json",
            "copy",
            "mail",
            "--to",
            &url,
            "--encrypt-on",
            "target",
            "--to-job",
            "mail-offsite",
            "--verify",
        ])
        .ok()
        .json();
    validate_json("copy", &c);
    assert_eq!(c["points"].as_array().unwrap().len(), 2, "{c}");
    assert_eq!(c["objects_verified"], 2, "{c}");
    // The copies keep the originals' times, and the second deduplicates against the first.
    let src_points = env.run(&["--json", "points", "mail"]).ok().json();
    let dst_points = env.run(&["--json", "points", "mail-offsite"]).ok().json();
    let times = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["time"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(times(&src_points), times(&dst_points));
    // No ciphertext of the source is in the target: the packs differ entirely.
    let src_packs: std::collections::BTreeSet<String> = local_objects(&repo)
        .keys()
        .filter(|k| k.starts_with("packs/"))
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect();
    let dst_packs: Vec<String> = s3_keys(&bucket)
        .into_iter()
        .filter(|k| k.contains("/packs/"))
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect();
    assert!(!dst_packs.is_empty());
    assert!(dst_packs.iter().all(|p| !src_packs.contains(p)));

    // The target's passphrase opens the copy (another machine, no catalog); the source's
    // does not.
    let out = env.path("restored");
    let r = restore_elsewhere(&env, "mail-offsite", &url, OTHER, &out).ok();
    assert!(r.stderr.contains("opened via: passphrase"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&out));
    let wrong = restore_elsewhere(&env, "mail-offsite", &url, PASS, &env.path("wrong"));
    assert_eq!(wrong.code, 12, "{}", wrong.stderr);
    // The older point too.
    let oldest = dst_points[0]["point_id"].as_str().unwrap().to_string();
    let out_old = env.path("restored-old");
    env.run_env(
        &[
            "restore",
            "mail-offsite",
            &oldest[..8],
            "--target",
            out_old.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    assert_eq!(first, snapshot(&out_old));

    // Copying again copies nothing; a new point is copied alone.
    let copy_again = || {
        env.run(&[
            "--json",
            "copy",
            "mail",
            "--to",
            &url,
            "--encrypt-on",
            "target",
            "--to-job",
            "mail-offsite",
        ])
        .ok()
        .json()
    };
    let again = copy_again();
    assert_eq!(again["objects_copied"], 0, "{again}");
    assert_eq!(again["objects_present"], 2, "{again}");
    write(&src.join("d/third.txt"), b"third\n");
    env.run(&["backup", "mail"]).ok();
    let third = copy_again();
    assert_eq!(third["objects_copied"], 1, "{third}");
}
