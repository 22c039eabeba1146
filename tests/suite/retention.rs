//! Retention and space: `forget` by policy and by id, `prune` of forgotten points and of
//! leftovers of killed backups, prune killed at seeded moments, prune against a concurrent
//! backup, and damaged points that are forgotten so the job goes on.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use common::*;

use common::KeyJob as Job;

/// What this module adds to a key-file job.
trait JobExt {
    fn backup(&self) -> String;
    fn points(&self) -> Vec<serde_json::Value>;
    fn check_clean(&self) -> serde_json::Value;
    fn restore(&self, point: &str) -> BTreeMap<String, String>;
}

impl JobExt for Job {
    fn backup(&self) -> String {
        let r = self.arca(&["--json", "backup", "j"]).ok();
        r.json()["point_id"].as_str().unwrap().to_string()
    }

    fn points(&self) -> Vec<serde_json::Value> {
        self.arca(&["--json", "points", "j"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    fn check_clean(&self) -> serde_json::Value {
        let r = self.arca(&["--json", "check", "j", "--read-data"]);
        assert_eq!(
            r.code, 0,
            "check found problems:\n{}\n{}",
            r.stdout, r.stderr
        );
        r.json()
    }

    /// Restores `point` and returns what it holds.
    fn restore(&self, point: &str) -> BTreeMap<String, String> {
        let t = self.env.path(&format!("restore-{point}-{}", rand_suffix()));
        self.arca(&["-q", "restore", "j", point, "--target", t.to_str().unwrap()])
            .ok();
        let m = manifest(&t);
        fs::remove_dir_all(&t).unwrap();
        m
    }
}

/// Pseudo-random bytes whose streams differ for every seed (`pseudo_random` sets the low
/// bit of its seed, so 2 and 3 would give the same bytes).
fn rnd(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    pseudo_random(len, 2 * seed + 1, compressible)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn pack_bytes(repo: &Path) -> u64 {
    packs(repo)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn ids(v: &[serde_json::Value]) -> Vec<String> {
    v.iter()
        .map(|p| p["point_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn forget_by_policy_then_prune_keeps_every_kept_point_byte_identical() {
    let j = Job::new();
    let mut states = Vec::new();
    write(&j.src.join("stable"), &rnd(600_000, 1, false));
    for i in 0..4u64 {
        write(&j.src.join("changing"), &rnd(400_000, 10 + i, false));
        write(
            &j.src.join(format!("added-{i}")),
            &rnd(50_000, 20 + i, true),
        );
        let id = j.backup();
        states.push((id, manifest(&j.src)));
    }
    // Dry run: nothing changes, the verdicts are given with reasons.
    let dry = j
        .arca(&["--json", "forget", "j", "--keep-last", "2", "--dry-run"])
        .ok()
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed"].as_array().unwrap().len(), 2);
    assert_eq!(j.points().len(), 4);
    let r = j
        .arca(&["--json", "forget", "j", "--keep-last", "2"])
        .ok()
        .json();
    let kept = r["kept"].as_array().unwrap();
    let removed = r["removed"].as_array().unwrap();
    assert_eq!(ids(kept), [states[2].0.clone(), states[3].0.clone()]);
    assert_eq!(ids(removed), [states[0].0.clone(), states[1].0.clone()]);
    assert_eq!(kept[1]["reasons"][0], "last (1st)");
    assert!(removed[0]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("no rule"));
    assert_eq!(ids(&j.points()), ids(kept));
    // A forgotten point cannot be restored.
    let t = j.env.path("t-forgotten");
    let r = j.arca(&[
        "restore",
        "j",
        &states[0].0,
        "--target",
        t.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    // check says what prune would reclaim; prune reclaims it.
    let c = j.check_clean();
    assert!(c["unused_bytes"].as_u64().unwrap() > 300_000, "{c}");
    let before = pack_bytes(&j.repo);
    let p = j
        .arca(&["--json", "prune", "j", "--max-unused", "0"])
        .ok()
        .json();
    let reclaimed = p["stats"]["reclaimed_bytes"].as_u64().unwrap();
    assert!(reclaimed > 700_000, "{p}");
    assert_eq!(before - pack_bytes(&j.repo), reclaimed);
    let c = j.check_clean();
    assert_eq!(c["unused_bytes"], 0);
    assert_eq!(c["unreferenced_packs"], 0);
    for (id, m) in &states[2..] {
        assert_eq!(&j.restore(id), m, "point {id} changed after prune");
    }
    // The next backup is an incremental on the newest kept point.
    let b = j.arca(&["--json", "backup", "j"]).ok().json();
    assert_eq!(b["read_bytes"], 0, "{b}");
}

/// A backup killed (SIGKILL) right after its n-th pack leaves that pack behind.
fn killed_backup(j: &Job, after_packs: u32) {
    let r = j
        .env
        .cmd(&["--key-file", &j.key, "-q", "backup", "j"])
        .env("ARCA_FAULT_AFTER_WRITES", after_packs.to_string())
        .env("ARCA_FAULT_SIGNAL", "KILL")
        .output()
        .unwrap();
    assert_eq!(
        r.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn prune_after_killed_backups_reclaims_every_leftover() {
    let j = Job::new();
    let initial = |dir: &Path| {
        write(&dir.join("base"), &rnd(3_000_000, 100, false));
    };
    initial(&j.src);
    j.backup();
    // Five killed backups of 20 MB of new data each (one 16 MiB pack each is stored).
    for k in 0..5u64 {
        write(&j.src.join("big"), &rnd(20_000_000, 200 + k, false));
        killed_backup(&j, 1);
    }
    let final_state = |dir: &Path| {
        write(&dir.join("big"), &rnd(1_000_000, 300, false));
        write(&dir.join("small"), &rnd(200_000, 301, true));
    };
    final_state(&j.src);
    j.backup();
    let leftovers = pack_bytes(&j.repo);
    let c = j.check_clean();
    assert_eq!(c["unreferenced_packs"], 5, "{c}");
    assert!(c["unreferenced_bytes"].as_u64().unwrap() > 5 * 16_000_000);
    let p = j.arca(&["--json", "prune", "j"]).ok().json();
    assert_eq!(p["stats"]["leftover_packs"], 5, "{p}");
    let after = pack_bytes(&j.repo);
    assert!(after < leftovers / 10);
    assert!(is_empty_or_missing(&j.repo.join("tmp")));
    let c = j.check_clean();
    assert_eq!(c["unreferenced_packs"], 0);
    // Within 1% of a fresh repository holding the same two points.
    let fresh = Job::new();
    initial(&fresh.src);
    fresh.backup();
    fs::remove_file(fresh.src.join("base")).ok();
    initial(&fresh.src);
    final_state(&fresh.src);
    fresh.backup();
    let want = pack_bytes(&fresh.repo);
    let diff = after.abs_diff(want) as f64 / want as f64;
    eprintln!("prune after 5 killed backups: {leftovers} -> {after} bytes of packs; fresh: {want} ({:.3}%)", diff * 100.0);
    assert!(
        diff < 0.01,
        "after prune {after} bytes, a fresh backup {want}"
    );
    assert_eq!(j.restore("latest"), manifest(&j.src));
}

#[test]
fn prune_killed_at_seeded_moments_loses_nothing() {
    let j = Job::new();
    let f = |name: &str, seed: u64, len: usize| write(&j.src.join(name), &rnd(len, seed, false));
    f("a", 1, 700_000);
    f("b", 2, 300_000);
    j.backup();
    f("b", 3, 300_000);
    j.backup();
    f("b", 4, 300_000);
    f("c", 5, 300_000);
    j.backup();
    f("d", 6, 200_000);
    killed_backup(&j, 1);
    f("d", 7, 200_000);
    killed_backup(&j, 1);
    fs::remove_file(j.src.join("b")).unwrap();
    fs::remove_file(j.src.join("d")).unwrap();
    f("e", 8, 300_000);
    j.backup();
    let want = manifest(&j.src);
    j.arca(&["forget", "j", "--keep-last", "1"]).ok();
    let pristine = j.env.path("pristine");
    copy_dir(&j.repo, &pristine);
    // The uninterrupted run: what every interrupted one must end up at.
    let full = j
        .arca(&["--json", "prune", "j", "--max-unused", "0"])
        .ok()
        .json();
    let st = &full["stats"];
    assert_eq!(st["leftover_packs"], 2, "{full}");
    assert_eq!(st["forgotten_points_removed"], 1, "{full}");
    assert_eq!(st["packs_repacked"], 2, "{full}");
    let end_bytes = pack_bytes(&j.repo);
    let mut killed = 0;
    for k in 1..=12u32 {
        fs::remove_dir_all(&j.repo).unwrap();
        copy_dir(&pristine, &j.repo);
        let out = j
            .env
            .cmd(&["--key-file", &j.key, "prune", "j", "--max-unused", "0"])
            .env("ARCA_FAULT_AFTER_WRITES", k.to_string())
            .env("ARCA_FAULT_SIGNAL", "KILL")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        if out.status.signal() == Some(9) {
            killed += 1;
        } else {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Killed anywhere: the repository checks clean and the kept point is intact.
        j.check_clean();
        assert_eq!(j.restore("latest"), want, "after a kill at write {k}");
        // The next prune finishes the work.
        j.arca(&["prune", "j", "--max-unused", "0"]).ok();
        let c = j.check_clean();
        assert_eq!(c["unreferenced_packs"], 0);
        assert_eq!(c["unused_bytes"], 0);
        assert_eq!(pack_bytes(&j.repo), end_bytes, "after a kill at write {k}");
    }
    eprintln!(
        "prune killed (SIGKILL) after each of writes 1..=12: {killed} kills, each time check clean, \
         the kept point identical, and the next prune ending at {end_bytes} bytes of packs \
         (an uninterrupted prune: {})",
        st["reclaimed_bytes"]
    );
    assert!(killed >= 10, "only {killed} moments were hit");
}

#[test]
fn a_backup_waits_for_prune_and_prune_for_a_backup() {
    let j = Job::new();
    write(&j.src.join("a"), &rnd(500_000, 1, false));
    j.backup();
    write(&j.src.join("a"), &rnd(500_000, 2, false));
    j.backup();
    j.arca(&["forget", "j", "--keep-last", "1"]).ok();
    // Prune pauses (holding the repository exclusively) after its first write; a backup
    // started meanwhile waits for it.
    let prune = j
        .env
        .cmd(&["--key-file", &j.key, "prune", "j", "--max-unused", "0"])
        .env("ARCA_FAULT_PAUSE_AFTER_WRITES", "1")
        .env("ARCA_FAULT_PAUSE_SECS", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    write(&j.src.join("new"), &rnd(100_000, 3, false));
    let backup = j
        .arca_env(&["backup", "j"], &[("ARCA_LOCK_WAIT", "60s")])
        .ok();
    assert!(
        backup.stderr.contains("prune"),
        "the wait names the holder: {}",
        backup.stderr
    );
    let p = prune.wait_with_output().unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    j.check_clean();
    assert_eq!(j.restore("latest"), manifest(&j.src));
    // A stream backup holds the repository (shared) while it reads; prune waits for it.
    let mut stream = j
        .env
        .cmd(&[
            "--key-file",
            &j.key,
            "backup",
            "j",
            "--stdin",
            "--stdin-name",
            "dump.sql",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = rnd(2_000_000, 9, true);
    let mut input = stream.stdin.take().unwrap();
    use std::io::Write;
    input.write_all(&data[..1_000_000]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let mut prune = j
        .env
        .cmd(&["--key-file", &j.key, "prune", "j"])
        .env("ARCA_LOCK_WAIT", "60s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune did not wait for the backup"
    );
    input.write_all(&data[1_000_000..]).unwrap();
    drop(input);
    let s = stream.wait_with_output().unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let p = prune.wait_with_output().unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    assert!(
        String::from_utf8_lossy(&p.stderr).contains("backup"),
        "{}",
        String::from_utf8_lossy(&p.stderr)
    );
    j.check_clean();
}

#[test]
fn a_damaged_point_is_listed_forgotten_and_pruned_and_the_job_goes_on() {
    let j = Job::new();
    write(&j.src.join("a"), &rnd(400_000, 1, false));
    let first = j.backup();
    write(&j.src.join("b"), &rnd(400_000, 2, false));
    let second = j.backup();
    // Someone edits the latest point's record: its MAC no longer verifies.
    let rec = j.repo.join(format!("points/{second}.json"));
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&rec).unwrap()).unwrap();
    v["time"] = "2030-01-01T00:00:00Z".into();
    fs::write(&rec, serde_json::to_vec(&v).unwrap()).unwrap();
    let pts = j.points();
    let damaged: Vec<_> = pts.iter().filter(|p| p["status"] == "damaged").collect();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0]["point_id"], second.as_str());
    // The next backup works, on the newest intact point.
    write(&j.src.join("c"), &rnd(100_000, 3, false));
    let third = j.backup();
    assert_ne!(third, second);
    // The damaged point is forgotten by id, then pruned; nothing else is lost.
    let r = j
        .arca(&["--json", "forget", "j", &second[..10]])
        .ok()
        .json();
    assert_eq!(ids(r["removed"].as_array().unwrap()), [second.as_str()]);
    assert_eq!(ids(&j.points()), [first.clone(), third.clone()]);
    // And the job goes on after the forget: an incremental on the newest intact point.
    write(&j.src.join("d"), &rnd(50_000, 4, false));
    let b = j.arca(&["--json", "backup", "j"]).ok().json();
    assert_eq!(b["full"], false);
    assert_eq!(b["files_unchanged"], 3, "{b}");
    j.arca(&["prune", "j", "--max-unused", "0"]).ok();
    j.check_clean();
    assert_eq!(j.restore("latest"), manifest(&j.src));
    assert_eq!(j.restore(&first).len(), 1);
}

#[test]
fn a_forgotten_point_put_back_is_refused() {
    let j = Job::new();
    write(&j.src.join("a"), &rnd(100_000, 1, false));
    let old = j.backup();
    write(&j.src.join("a"), &rnd(100_000, 2, false));
    j.backup();
    let rec = j.repo.join(format!("points/{old}.json"));
    let saved = fs::read(&rec).unwrap();
    j.arca(&["forget", "j", &old]).ok();
    // The old, valid record is put back (a rollback of that one file).
    fs::write(&rec, &saved).unwrap();
    let pts = j.points();
    let back: Vec<_> = pts
        .iter()
        .filter(|p| p["point_id"] == old.as_str())
        .collect();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["status"], "damaged");
    assert!(back[0]["damage"].as_str().unwrap().contains("forgotten"));
    let t = j.env.path("t");
    let r = j.arca(&["restore", "j", &old, "--target", t.to_str().unwrap()]);
    assert_ne!(r.code, 0, "a forgotten point was restored");
}

#[test]
fn forget_needs_a_policy_or_points() {
    let j = Job::new();
    write(&j.src.join("a"), b"x");
    j.backup();
    let r = j.arca(&["forget", "j"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("policy"));
    assert_eq!(j.points().len(), 1);
}

#[test]
fn streams_are_their_own_series() {
    let j = Job::new();
    for i in 0..20u64 {
        write(
            &j.src.join(format!("dir/f{i}")),
            &rnd(50_000, 500 + i, true),
        );
    }
    let tree1 = j.backup();
    let stream = |name: &str, data: &[u8]| -> String {
        let r = j
            .env
            .run_stdin(
                &[
                    "--key-file",
                    &j.key,
                    "--json",
                    "backup",
                    "j",
                    "--stdin",
                    "--stdin-name",
                    name,
                ],
                &[],
                data,
            )
            .ok();
        r.json()["point_id"].as_str().unwrap().to_string()
    };
    let d1 = rnd(300_000, 600, true);
    let s1 = stream("db.sql", &d1);
    let other = stream("other.sql", &rnd(100_000, 601, true));
    // The next tree backup is an incremental on the tree point: it re-reads nothing.
    let b = j.arca(&["--json", "backup", "j"]).ok().json();
    assert_eq!(b["read_bytes"], 0, "{b}");
    assert_eq!(b["files_unchanged"], 20);
    let tree2 = b["point_id"].as_str().unwrap().to_string();
    // "latest" is the tree; a stream is selected by name.
    assert_eq!(j.restore("latest"), manifest(&j.src));
    let t = j.env.path("t-stream");
    j.arca(&[
        "-q",
        "restore",
        "j",
        "--stream",
        "db.sql",
        "--target",
        t.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(fs::read(t.join("db.sql")).unwrap(), d1);
    let ls = j.arca(&["ls", "j", "--stream", "other.sql"]).ok();
    assert!(ls.stdout.contains("other.sql") && !ls.stdout.contains("dir/f1"));
    let pts = j
        .arca(&["--json", "points", "j", "--stream", "db.sql"])
        .ok()
        .json();
    assert_eq!(ids(pts.as_array().unwrap()), [s1.as_str()]);
    assert_eq!(pts[0]["series"], "stream:db.sql");
    let t0 = j.env.path("t-none");
    let r = j.arca(&[
        "restore",
        "j",
        "--stream",
        "nosuch",
        "--target",
        t0.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no stream 'nosuch'"), "{}", r.stderr);
    // Retention per series: one stream only, then every series.
    let d3 = rnd(300_000, 602, true);
    let s3 = stream("db.sql", &d3);
    let f = j
        .arca(&[
            "--json",
            "forget",
            "j",
            "--stream",
            "db.sql",
            "--keep-last",
            "1",
        ])
        .ok()
        .json();
    assert_eq!(ids(f["removed"].as_array().unwrap()), [s1.as_str()]);
    let f = j
        .arca(&["--json", "forget", "j", "--keep-last", "1"])
        .ok()
        .json();
    assert_eq!(ids(f["removed"].as_array().unwrap()), [tree1.as_str()]);
    let mut kept = ids(f["kept"].as_array().unwrap());
    kept.sort();
    let mut want = vec![other.clone(), tree2.clone(), s3.clone()];
    want.sort();
    assert_eq!(kept, want);
    j.arca(&["prune", "j", "--max-unused", "0"]).ok();
    j.check_clean();
    let t3 = j.env.path("t-stream-3");
    j.arca(&[
        "-q",
        "restore",
        "j",
        "--stream",
        "db.sql",
        "--target",
        t3.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(fs::read(t3.join("db.sql")).unwrap(), d3);
}

#[test]
fn points_of_a_retired_key_generation_keep_serving_kept_points_after_forget_and_prune() {
    // A passphrase job: one backup, a password rotation (generation 2), an incremental that
    // shares most chunks with the first point; then the first point is forgotten and pruned.
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("big"), &rnd(800_000, 700, false));
    write(&src.join("small"), &rnd(10_000, 701, false));
    env.passphrase_job("g", &src, "old passphrase");
    let first = env.run(&["--json", "backup", "g"]).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.run_env(
        &["password", "rotate", "g"],
        &[("ARCA_NEW_PASSPHRASE", "new passphrase")],
    )
    .ok();
    write(&src.join("small"), &rnd(10_000, 702, false));
    let b = env.run(&["--json", "backup", "g"]).ok().json();
    assert_eq!(b["full"], false);
    let f = env
        .run(&[
            "--json",
            "forget",
            "g",
            "--keep-last",
            "1",
            "--prune",
            "--max-unused",
            "0",
        ])
        .ok()
        .json();
    assert_eq!(ids(f["removed"].as_array().unwrap()), [first.as_str()]);
    // The first point's record stays (forgotten): its generation-1 data key opens the chunks
    // of `big`, which the kept point uses.
    assert!(env
        .path("repo")
        .join(format!("points/{first}.json"))
        .exists());
    let c = env
        .run(&["--json", "check", "g", "--read-data"])
        .ok()
        .json();
    assert_eq!(c["unused_bytes"], 0, "{c}");
    let t = env.path("t");
    env.run(&["-q", "restore", "g", "--target", t.to_str().unwrap()])
        .ok();
    assert_eq!(manifest(&t), manifest(&src));
    // Only the new passphrase is needed, also after a reinstall (no catalog).
    let fresh = env.path("fresh-catalog.db");
    let t2 = env.path("t2");
    env.run_env(
        &[
            "-q",
            "--catalog",
            fresh.to_str().unwrap(),
            "restore",
            "g",
            "--repo",
            env.path("repo").to_str().unwrap(),
            "--target",
            t2.to_str().unwrap(),
        ],
        &[("ARCA_PASSPHRASE", "new passphrase")],
    )
    .ok();
    assert_eq!(manifest(&t2), manifest(&src));
}

#[test]
fn prune_of_a_whole_repository_covers_every_job() {
    let j = Job::new();
    write(&j.src.join("a"), &rnd(300_000, 800, false));
    j.backup();
    write(&j.src.join("a"), &rnd(300_000, 801, false));
    j.backup();
    // A second job in the same repository, with a killed backup.
    let src2 = j.env.path("src2");
    write(&src2.join("x"), &rnd(200_000, 802, false));
    let key2 = j.env.key_job("other", &src2, &j.repo);
    let key2 = key2.to_str().unwrap();
    j.env.run(&["--key-file", key2, "backup", "other"]).ok();
    write(&src2.join("y"), &rnd(2_000_000, 803, false));
    let r = j
        .env
        .cmd(&["--key-file", key2, "-q", "backup", "other"])
        .env("ARCA_FAULT_AFTER_WRITES", "1")
        .env("ARCA_FAULT_SIGNAL", "KILL")
        .output()
        .unwrap();
    assert_eq!(r.status.signal(), Some(9));
    j.arca(&["forget", "j", "--keep-last", "1"]).ok();
    let dry = j
        .arca(&[
            "--json",
            "prune",
            "--repo",
            j.repo.to_str().unwrap(),
            "--dry-run",
        ])
        .ok()
        .json();
    assert_eq!(dry["stats"]["leftover_packs"], 1, "{dry}");
    assert_eq!(dry["stats"]["forgotten_points_removed"], 1, "{dry}");
    let before = pack_bytes(&j.repo);
    let p = j
        .arca(&["--json", "prune", "--repo", j.repo.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(
        before - pack_bytes(&j.repo),
        p["stats"]["reclaimed_bytes"].as_u64().unwrap()
    );
    assert_eq!(
        p["stats"]["reclaimed_bytes"], dry["stats"]["reclaimed_bytes"],
        "the dry run estimated something else"
    );
    j.check_clean();
    let c = j
        .env
        .run(&[
            "--key-file",
            key2,
            "--json",
            "check",
            "other",
            "--read-data",
        ])
        .ok()
        .json();
    assert_eq!(c["unreferenced_packs"], 0);
}
