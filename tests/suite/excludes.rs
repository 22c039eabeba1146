//! Excludes: every option, stored with the job (`job create`, `job set`, `job show`) and
//! given per run, and `job set --source`.

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The paths `ls --json` lists for the latest point.
fn listed(env: &Env, key: &str, job: &str) -> Vec<String> {
    let r = env.run(&["--key-file", key, "--json", "ls", job]).ok();
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

fn tree(src: &Path) {
    write(&src.join("keep.txt"), b"keep");
    write(&src.join("build/out.o"), b"object");
    write(&src.join("notes.tmp"), b"tmp");
    write(&src.join("deep/a/b/junk.tmp"), b"tmp");
    write(&src.join("deep/a/b/real.rs"), b"fn main() {}");
    write(&src.join("private/.nobackup"), b"");
    write(&src.join("private/secret.txt"), b"secret");
    write(
        &src.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    );
    write(&src.join("cache/blob"), b"cached");
    write(&src.join("fakecache/CACHEDIR.TAG"), b"not the signature");
    write(&src.join("fakecache/blob"), b"kept");
    write(&src.join("big.iso"), &vec![7u8; 2 << 20]);
    write(&src.join("small.bin"), &[1u8; 1000]);
}

#[test]
fn every_exclude_option_stored_with_the_job_and_per_run() {
    let env = Env::new();
    let src = env.path("src");
    tree(&src);
    let repo = env.path("repo");
    env.run(&["init", s(&repo)]).ok();
    let key = env.path("k");
    env.run(&["keyfile", "generate", "--out", s(&key)]).ok();
    let key = s(&key).to_string();
    let pats = env.path("patterns");
    fs::write(&pats, "# build outputs\n\nbuild\n**/*.tmp\n").unwrap();
    let created = env
        .run(&[
            "--key-file",
            &key,
            "--json",
            "job",
            "create",
            "j",
            "--repo",
            s(&repo),
            "--source",
            s(&src),
            "--encryption",
            "key",
            "--exclude-file",
            s(&pats),
            "--exclude-if-present",
            ".nobackup",
            "--exclude-caches",
            "--exclude-larger-than",
            "1M",
        ])
        .ok()
        .json();
    assert_eq!(created["excludes"]["exclude_caches"], true);
    let show = env.run(&["job", "show", "j"]).ok();
    assert!(
        show.stdout.contains("--exclude-if-present .nobackup"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("--exclude-larger-than 1048576"));
    let b = env
        .run(&[
            "--key-file",
            &key,
            "--json",
            "backup",
            "j",
            "--exclude",
            "small.*",
        ])
        .ok()
        .json();
    let mut got = listed(&env, &key, "j");
    got.sort();
    assert_eq!(
        got,
        [
            "cache",
            "cache/CACHEDIR.TAG",
            "deep",
            "deep/a",
            "deep/a/b",
            "deep/a/b/real.rs",
            "fakecache",
            "fakecache/CACHEDIR.TAG",
            "fakecache/blob",
            "keep.txt",
        ]
    );
    // build (pattern file), two *.tmp, private (if-present), cache contents, big.iso, small.bin
    assert_eq!(b["excluded"], 7, "{b}");
    // A run's excludes are not stored; `job set` replaces the stored ones.
    env.run(&["--key-file", &key, "backup", "j"]).ok();
    assert!(listed(&env, &key, "j").contains(&"small.bin".to_string()));
    let set = env
        .run(&["--json", "job", "set", "j", "--exclude", "*.iso"])
        .ok()
        .json();
    assert_eq!(set["excludes"]["exclude"][0], "*.iso");
    assert!(set["excludes"].get("exclude_caches").is_none());
    env.run(&["--key-file", &key, "backup", "j"]).ok();
    let got = listed(&env, &key, "j");
    assert!(got.contains(&"private/secret.txt".to_string()));
    assert!(got.contains(&"cache/blob".to_string()));
    assert!(!got.contains(&"big.iso".to_string()));
    env.run(&["job", "set", "j", "--no-excludes"]).ok();
    env.run(&["--key-file", &key, "backup", "j"]).ok();
    assert!(listed(&env, &key, "j").contains(&"big.iso".to_string()));
    // Bad patterns and sizes are refused before anything runs.
    let r = env.run(&["--key-file", &key, "backup", "j", "--exclude", "[abc"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = env.run(&["job", "set", "j", "--exclude-larger-than", "12 parsecs"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn one_file_system_records_mount_points_empty() {
    // /dev/shm is its own mount (tmpfs) below /dev (devtmpfs) on Linux.
    let dev = fs::metadata("/dev").unwrap().dev();
    let shm = fs::metadata("/dev/shm").unwrap().dev();
    assert_ne!(dev, shm, "this test needs /dev/shm mounted apart from /dev");
    let marker = format!("arca-onefs-{}", std::process::id());
    let marker_path = Path::new("/dev/shm").join(&marker);
    fs::write(&marker_path, b"x").unwrap();
    let env = Env::new();
    let repo = env.path("repo");
    let key = env.key_job("dev", Path::new("/dev"), &repo);
    let key = s(&key).to_string();
    let run = |extra: &[&str]| {
        let mut a = vec!["--key-file", &key, "backup", "dev"];
        a.extend_from_slice(extra);
        let r = env.run(&a);
        assert!(r.code == 0 || r.code == 3, "{}", r.stderr);
        listed(&env, &key, "dev")
    };
    let all = run(&[]);
    let one = run(&["--one-file-system"]);
    fs::remove_file(&marker_path).unwrap();
    let m = format!("shm/{marker}");
    assert!(all.contains(&m), "without -x the other file system is read");
    assert!(
        one.contains(&"shm".to_string()),
        "the mount point itself is kept"
    );
    assert!(
        !one.contains(&m),
        "with -x nothing below the mount point is read"
    );
}

#[test]
fn job_set_source_moves_the_pin_explicitly() {
    let env = Env::new();
    let a = env.path("a");
    let b = env.path("b");
    write(&a.join("one"), b"1");
    write(&b.join("two"), b"2");
    let repo = env.path("repo");
    let key = env.key_job("j", &a, &repo);
    let key = s(&key).to_string();
    env.run(&["--key-file", &key, "backup", "j"]).ok();
    let record = fs::read_dir(repo.join("jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let old_record = fs::read(&record).unwrap();
    let set = env
        .run(&[
            "--key-file",
            &key,
            "--json",
            "job",
            "set",
            "j",
            "--source",
            s(&b),
        ])
        .ok()
        .json();
    assert_eq!(set["source"], s(&fs::canonicalize(&b).unwrap()));
    env.run(&["--key-file", &key, "backup", "j"]).ok();
    assert_eq!(listed(&env, &key, "j"), ["two"]);
    // The repository's job record moved with it: a check is clean and the old record, put
    // back, is a rollback.
    env.run(&["--key-file", &key, "check", "j"]).ok();
    fs::write(&record, old_record).unwrap();
    let r = env.run(&["--key-file", &key, "backup", "j"]);
    assert_eq!(
        r.code, 14,
        "an old job record (old source) was accepted: {}",
        r.stderr
    );
}
