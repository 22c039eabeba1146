//! S3 repositories end to end, against the loopback S3 server (moto, with versioning and
//! Object Lock) that ./scripts/test.sh starts: backup and restore, what an incremental
//! downloads, the metadata cache, concurrent hosts, interrupted uploads, Object Lock.

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::*;

const PASS: &str = "s3 test passphrase";

fn repo_url(bucket: &str) -> String {
    format!("s3://{bucket}/backups/main")
}

/// `arca init URL` and a passphrase job `name` backing up `src`.
fn s3_job(env: &Env, url: &str, name: &str, src: &Path) {
    if !env.path("inited").exists() {
        env.run(&["init", url]).ok();
        write(&env.path("inited"), b"");
    }
    env.run_env(
        &[
            "job",
            "create",
            name,
            "--repo",
            url,
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "passphrase",
        ],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
}

fn backup_json(env: &Env, name: &str) -> serde_json::Value {
    env.run_env(&["--json", "backup", name], &[("ARCA_PASSPHRASE", PASS)])
        .ok()
        .json()
}

fn requests(v: &serde_json::Value, what: &str) -> u64 {
    v["s3_requests"][what]
        .as_u64()
        .unwrap_or_else(|| panic!("no s3_requests.{what} in {v}"))
}

fn cache_files(env: &Env) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let root = env.catalog.parent().unwrap().join("cache");
    for d in std::fs::read_dir(&root).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).unwrap() {
                out.push(f.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn s3_backup_restore_is_byte_identical_and_incrementals_download_only_what_changed() {
    let env = Env::new();
    let bucket = s3_bucket(false);
    let url = repo_url(&bucket);
    let src = env.path("src");
    write(&src.join("big.bin"), &pseudo_random(20 << 20, 1, false));
    for i in 0..40 {
        write(
            &src.join(format!("docs/{i:02}.txt")),
            format!("document {i}\n").repeat(100 + i).as_bytes(),
        );
    }
    s3_job(&env, &url, "s3job", &src);
    let full = backup_json(&env, "s3job");
    validate_json("backup", &full);
    assert_eq!(full["full"], true);
    assert!(requests(&full, "bytes_out") > 20 << 20, "{full}");

    let target = env.path("restored");
    let r = env
        .run_env(
            &[
                "--json",
                "restore",
                "s3job",
                "--target",
                target.to_str().unwrap(),
            ],
            &[("ARCA_PASSPHRASE", PASS)],
        )
        .ok()
        .json();
    validate_json("restore", &r);
    assert!(requests(&r, "bytes_in") >= 20 << 20, "{r}");
    assert_eq!(snapshot(&src), snapshot(&target));
    env.run_env(
        &["check", "s3job", "--read-data"],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    // Everything lives under the prefix; nothing is left in locks/ after the commands.
    let keys = s3_keys(&bucket);
    assert!(
        keys.iter().all(|k| k.starts_with("backups/main/")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains("/locks/")), "{keys:?}");

    // Incrementals: a few more points, then one with nothing changed.
    for i in 0..3 {
        write(&src.join(format!("docs/new-{i}.txt")), b"new file\n");
        let b = backup_json(&env, "s3job");
        assert_eq!(b["full"], false);
    }
    // The first unchanged run reads the file index the last run wrote (new to this cache).
    backup_json(&env, "s3job");
    let quiet1 = backup_json(&env, "s3job");
    let quiet2 = backup_json(&env, "s3job");
    // Seven points exist now: an unchanged incremental downloads none of their records,
    // indexes or file indexes again (the cache has them), only the repository config and
    // the lock probe, whatever the number of points.
    assert_eq!(
        requests(&quiet1, "get"),
        requests(&quiet2, "get"),
        "{quiet1}\n{quiet2}"
    );
    assert!(requests(&quiet2, "get") <= 3, "{quiet2}");
    assert!(requests(&quiet2, "bytes_in") < 4096, "{quiet2}");
    // It uploads only its index and its record (and its two lease objects).
    assert!(requests(&quiet2, "put") <= 4, "{quiet2}");
    assert!(requests(&quiet2, "bytes_out") < 8192, "{quiet2}");

    // Without the cache the same incremental fetches the metadata again: the cache, not
    // luck, saved those requests.
    std::fs::remove_dir_all(env.catalog.parent().unwrap().join("cache")).unwrap();
    let cold = backup_json(&env, "s3job");
    assert!(
        requests(&cold, "get") >= requests(&quiet2, "get") + 6,
        "{cold}\n{quiet2}"
    );
}

#[test]
fn s3_tampered_cache_entries_are_detected_and_fetched_again() {
    let env = Env::new();
    let bucket = s3_bucket(false);
    let url = repo_url(&bucket);
    let src = env.path("src");
    for i in 0..10 {
        write(
            &src.join(format!("f{i}")),
            &pseudo_random(10_000 + i, i as u64, true),
        );
    }
    s3_job(&env, &url, "cached", &src);
    backup_json(&env, "cached");
    backup_json(&env, "cached");
    let files = cache_files(&env);
    assert!(files.len() >= 4, "{files:?}");
    // Someone with write access to the cache changes a byte of every entry.
    let mut tampered = Vec::new();
    for f in &files {
        let mut b = std::fs::read(f).unwrap();
        let n = b.len() - 1;
        b[n] ^= 0x01;
        std::fs::write(f, &b).unwrap();
        tampered.push(b);
    }
    let target = env.path("restored");
    let r = env.run_env(
        &["restore", "cached", "--target", target.to_str().unwrap()],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    let r = r.ok();
    assert!(r.stderr.contains("failed authentication"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&target));
    // The forged entries were replaced by what the bucket holds.
    for (f, bad) in files.iter().zip(&tampered) {
        if let Ok(now) = std::fs::read(f) {
            assert_ne!(&now, bad, "{} still holds the forged bytes", f.display());
        }
    }
    let b = backup_json(&env, "cached");
    assert_eq!(b["full"], false);
}

#[test]
fn s3_eight_hosts_back_up_at_once_and_prune_waits_for_them() {
    let env = Env::new();
    let bucket = s3_bucket(false);
    let url = repo_url(&bucket);
    for j in 0..8 {
        let src = env.path(&format!("src{j}"));
        for i in 0..5 {
            write(
                &src.join(format!("f{i}")),
                &pseudo_random(50_000, (j * 10 + i) as u64, true),
            );
        }
        s3_job(&env, &url, &format!("host{j}"), &src);
    }
    // Eight processes stand in for eight hosts; each pauses after its first pack, holding
    // its locks, so that the prune below has to wait for all of them.
    let mut children = Vec::new();
    for j in 0..8 {
        let mut c = env.cmd(&["backup", &format!("host{j}")]);
        c.env("ARCA_PASSPHRASE", PASS)
            .env("ARCA_FAULT_PAUSE_AFTER_WRITES", "1")
            .env("ARCA_FAULT_PAUSE_SECS", "4")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(c.spawn().unwrap());
    }
    std::thread::sleep(Duration::from_secs(2));
    let prune = env.run_env(
        &["prune", "--repo", &url, "--lock-wait", "120s"],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    for (j, c) in children.into_iter().enumerate() {
        let out: Run = c.wait_with_output().unwrap().into();
        assert_eq!(out.code, 0, "host{j}: {}\n{}", out.stdout, out.stderr);
    }
    let prune = prune.ok();
    assert!(
        prune.stderr.contains("waiting for the lock"),
        "{}",
        prune.stderr
    );
    for j in 0..8 {
        let p = env
            .run(&["--json", "points", &format!("host{j}")])
            .ok()
            .json();
        assert_eq!(p.as_array().map(|a| a.len()), Some(1), "{p}");
        env.run_env(
            &["check", &format!("host{j}"), "--read-data"],
            &[("ARCA_PASSPHRASE", PASS)],
        )
        .ok();
    }
}

fn multipart_uploads(bucket: &str) -> usize {
    let c = s3_admin();
    s3_block(async {
        c.list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    })
}

fn pack_keys(bucket: &str) -> Vec<String> {
    s3_keys(bucket)
        .into_iter()
        .filter(|k| k.contains("/packs/"))
        .collect()
}

#[test]
fn s3_killed_backup_leaves_nothing_after_prune_and_its_lease_expires() {
    let env = Env::new();
    let bucket = s3_bucket(false);
    let url = repo_url(&bucket);
    env.set_env("ARCA_S3_LEASE_SECONDS", "3");
    env.set_env("ARCA_S3_PART_SIZE", "5242880");
    let src = env.path("src");
    write(&src.join("a"), &pseudo_random(100_000, 1, true));
    s3_job(&env, &url, "killed", &src);
    backup_json(&env, "killed");
    let before = pack_keys(&bucket);
    // 48 MiB of new data: three 16 MiB packs, each a multipart upload of 5 MiB parts. The
    // process is killed (SIGKILL: nothing runs after) after its second pack was handed to
    // the uploader, uploads in flight.
    write(&src.join("big"), &pseudo_random(48 << 20, 2, false));
    let k = env.run_env(
        &["backup", "killed"],
        &[
            ("ARCA_PASSPHRASE", PASS),
            ("ARCA_FAULT_AFTER_WRITES", "2"),
            ("ARCA_FAULT_SIGNAL", "KILL"),
        ],
    );
    assert_ne!(k.code, 0, "{}", k.stderr);
    // Its leases are left behind; prune waits for them to expire, then reclaims what the
    // dead backup left: packs no point names and multipart uploads never completed.
    let p = env
        .run_env(
            &["--json", "prune", "--repo", &url, "--lock-wait", "60s"],
            &[("ARCA_PASSPHRASE", PASS)],
        )
        .ok();
    let _ = p.json();
    assert_eq!(pack_keys(&bucket), before);
    assert_eq!(multipart_uploads(&bucket), 0);
    let keys = s3_keys(&bucket);
    assert!(!keys.iter().any(|k| k.contains("/locks/")), "{keys:?}");
    env.run_env(
        &["check", "killed", "--read-data"],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    // And the job backs up again.
    assert_eq!(backup_json(&env, "killed")["full"], false);
}

fn retention(bucket: &str, key: &str) -> Option<SystemTime> {
    let c = s3_admin();
    s3_block(async {
        c.head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap()
            .object_lock_retain_until_date()
            .map(|t| SystemTime::try_from(*t).unwrap())
    })
}

#[test]
fn s3_object_lock_retains_every_object_forget_extends_and_prune_skips() {
    let env = Env::new();
    let bucket = s3_bucket(true);
    let url = repo_url(&bucket);
    let r = env.run(&["init", &url, "--object-lock-days", "1"]).ok();
    assert!(
        r.stderr.is_empty() || !r.stderr.contains("error"),
        "{}",
        r.stderr
    );
    write(&env.path("inited"), b"");
    let src = env.path("src");
    write(&src.join("old"), &pseudo_random(300_000, 1, false));
    s3_job(&env, &url, "locked", &src);
    backup_json(&env, "locked");
    // The second point shares nothing with the first.
    std::fs::remove_file(src.join("old")).unwrap();
    write(&src.join("new"), &pseudo_random(300_000, 2, false));
    backup_json(&env, "locked");

    // Every object a backup wrote carries a retention date a day ahead.
    let soon = SystemTime::now() + Duration::from_secs(23 * 3600);
    let objects: Vec<String> = s3_keys(&bucket)
        .into_iter()
        .filter(|k| !k.ends_with("/config"))
        .collect();
    assert!(objects.len() >= 6, "{objects:?}");
    for k in &objects {
        let t = retention(&bucket, k).unwrap_or_else(|| panic!("{k} has no retention"));
        assert!(t > soon, "{k}");
    }

    // The server refuses to delete a retained version of a pack; check still passes.
    let c = s3_admin();
    let pack = objects
        .iter()
        .find(|k| k.contains("/packs/"))
        .unwrap()
        .clone();
    let refused = s3_block(async {
        let v = c
            .list_object_versions()
            .bucket(&bucket)
            .prefix(&pack)
            .send()
            .await
            .unwrap();
        let vid = v.versions()[0].version_id().unwrap().to_string();
        c.delete_object()
            .bucket(&bucket)
            .key(&pack)
            .version_id(vid)
            .send()
            .await
    });
    let e = refused.expect_err("a retained version must not be deletable");
    assert!(format!("{e:?}").contains("AccessDenied"), "{e:?}");
    let packs: Vec<String> = objects
        .iter()
        .filter(|k| k.contains("/packs/"))
        .cloned()
        .collect();
    env.run_env(
        &["check", "locked", "--read-data"],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();

    // An administrator shortened the retention of the packs (governance mode allows it with
    // the bypass permission); forget extends what the kept point needs again.
    let short = SystemTime::now() + Duration::from_secs(600);
    for p in &packs {
        s3_block(async {
            c.put_object_retention()
                .bucket(&bucket)
                .key(p)
                .bypass_governance_retention(true)
                .retention(
                    aws_sdk_s3::types::ObjectLockRetention::builder()
                        .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Governance)
                        .retain_until_date(aws_sdk_s3::primitives::DateTime::from(short))
                        .build(),
                )
                .send()
                .await
                .unwrap()
        });
        assert!(retention(&bucket, p).unwrap() < soon);
    }
    let f = env
        .run_env(
            &["--json", "forget", "locked", "--keep-last", "1"],
            &[("ARCA_PASSPHRASE", PASS)],
        )
        .ok()
        .json();
    assert_eq!(f["removed"].as_array().unwrap().len(), 1, "{f}");
    validate_json("forget", &f);
    let ext = &f["locks_extended"];
    assert!(
        ext["objects_extended"].as_u64().unwrap() >= packs.len() as u64,
        "{f}"
    );
    for p in &packs {
        assert!(retention(&bucket, p).unwrap() > soon, "{p} not extended");
    }

    // The forgotten point's data is retained: prune leaves it and says until when.
    let pr = env
        .run_env(&["--json", "prune", "locked"], &[("ARCA_PASSPHRASE", PASS)])
        .ok()
        .json();
    validate_json("prune", &pr);
    assert!(pr["stats"]["locked_objects"].as_u64().unwrap() >= 1, "{pr}");
    assert!(pr["stats"]["locked_until"].is_string(), "{pr}");
    assert_eq!(pr["stats"]["forgotten_points_removed"], 0, "{pr}");
    for p in &packs {
        assert!(s3_keys(&bucket).contains(p), "{p} was removed");
    }
    env.run_env(
        &["check", "locked", "--read-data"],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    // What the API does allow: an overwrite (a new version) and a plain delete (a delete
    // marker). Both leave the retained first version, which arca reads.
    assert!(packs.len() >= 2, "{packs:?}");
    s3_block(async {
        c.put_object()
            .bucket(&bucket)
            .key(&packs[0])
            .body(aws_sdk_s3::primitives::ByteStream::from(
                b"ransom note".to_vec(),
            ))
            .send()
            .await
            .unwrap();
        c.delete_object()
            .bucket(&bucket)
            .key(&packs[1])
            .send()
            .await
            .unwrap();
    });
    assert!(
        !s3_keys(&bucket).contains(&packs[1]),
        "the delete marker hides it"
    );
    env.run_env(
        &["check", "locked", "--read-data"],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    let after = env.path("after-ransom");
    env.run_env(
        &["restore", "locked", "--target", after.to_str().unwrap()],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    assert_eq!(snapshot(&src), snapshot(&after));
}

#[test]
fn s3_object_lock_needs_a_bucket_with_object_lock() {
    let env = Env::new();
    let bucket = s3_bucket(false);
    let r = env.run(&["init", &repo_url(&bucket), "--object-lock-days", "7"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("Object Lock"), "{}", r.stderr);
    assert!(s3_keys(&bucket).is_empty());
    let local = env.run(&[
        "init",
        env.path("r").to_str().unwrap(),
        "--object-lock-days",
        "7",
    ]);
    assert_eq!(local.code, 2, "{}", local.stderr);
}
