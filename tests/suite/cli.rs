//! End-to-end tests of the `arca` binary on real files, a real repository and a real catalog.

use crate::common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::*;
use filetime::FileTime;

const PASS: &str = "correct horse battery staple";

/// A tree with every kind of entry a restore must reproduce.
fn rich_tree(root: &Path, big_mib: usize) {
    write(
        &root.join("a_big.bin"),
        &pseudo_random(big_mib * 1024 * 1024, 7, true),
    );
    write(&root.join("docs/readme.txt"), b"hello arca\n");
    write(&root.join("docs/empty.txt"), b"");
    write(&root.join("bin/tool.sh"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("bin/tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&root.join("secret/key.pem"), b"not really a key");
    fs::set_permissions(
        root.join("secret/key.pem"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    write(
        &root.join("data/medium.csv"),
        &pseudo_random(3 * 1024 * 1024 + 17, 3, true),
    );
    symlink("../docs/readme.txt", root.join("bin/readme-link")).unwrap();
    symlink("does-not-exist", root.join("dangling")).unwrap();
    // A name that is not UTF-8.
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    write(&root.join(odd), b"latin-1 name");
    // Fixed, distinctive mtimes (with nanoseconds) on files, a symlink and directories.
    let t = FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("docs/readme.txt"), t).unwrap();
    filetime::set_symlink_file_times(root.join("dangling"), t, t).unwrap();
    filetime::set_file_mtime(root.join("empty-dir"), t).unwrap();
    filetime::set_file_mtime(
        root.join("docs"),
        FileTime::from_unix_time(1_500_000_000, 5),
    )
    .unwrap();
}

#[test]
fn backup_restore_is_byte_identical_with_metadata() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 110); // a file over 100 MiB
    env.passphrase_job("nightly", &src, PASS);
    let b = env
        .run_env(&["--json", "backup", "nightly"], &[])
        .ok()
        .json();
    assert_eq!(b["full"], true);
    assert_eq!(b["errors"].as_array().unwrap().len(), 0);
    assert_eq!(
        b["tier"], "catalog",
        "a scheduled backup runs on the stored password hash"
    );
    let target = env.path("restored");
    let r = env
        .run(&["restore", "nightly", "--target", target.to_str().unwrap()])
        .ok();
    assert!(r.stderr.contains("opened via: catalog"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&target));
}

#[test]
fn unchanged_tree_adds_under_one_percent_and_is_not_reread() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..400 {
        write(
            &src.join(format!("d{}/f{i}.txt", i % 20)),
            &pseudo_random(20_000 + i * 37, i as u64, true),
        );
    }
    write(
        &src.join("big.bin"),
        &pseudo_random(24 * 1024 * 1024, 99, false),
    );
    let repo = env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    let tree_size: u64 = du(&src);
    let before = du(&repo);
    let second = env.run(&["--json", "backup", "j"]).ok().json();
    let added = du(&repo) - before;
    assert!(
        added * 100 < tree_size,
        "second backup added {added} bytes for a {tree_size}-byte tree"
    );
    assert_eq!(second["full"], false);
    assert_eq!(second["read_bytes"], 0, "unchanged files were re-read");
    assert_eq!(second["files_unchanged"], 401);
    assert_eq!(second["new_bytes"], 0);
    // Touch one file: only it is read again.
    write(&src.join("d0/f0.txt"), b"changed");
    let third = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(third["read_bytes"], 7);
    assert_eq!(third["files_unchanged"], 400);
}

/// The parent's file index is read along with the walk, in walk order: names whose bytewise
/// order differs from it (`a-b` sorts before `a/x` bytewise, after it in a walk), names that
/// are not UTF-8, and an index long enough to span many chunks must all still be found.
#[test]
fn unchanged_files_are_found_in_walk_order_across_many_index_chunks() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let src = env.path("src");
    let names = ["a", "a-b", "a.c", "a0", "A", "a b", "ab"];
    let mut files = 0;
    for top in names {
        for sub in names {
            for i in 0..60 {
                write(&src.join(top).join(sub).join(format!("f{i}")), b"x");
                files += 1;
            }
        }
        write(&src.join(format!("{top}-file")), b"y");
        files += 1;
    }
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
    write(&src.join("a").join(odd), b"z");
    write(&src.join(odd).join("inner"), b"w");
    files += 2;
    env.passphrase_job("j", &src, PASS);
    let first = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(first["files"], files);
    let second = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(second["files_unchanged"], files, "{second}");
    assert_eq!(second["read_bytes"], 0);
    assert_eq!(
        second["new_bytes"], 0,
        "the file index is the same chunks again"
    );
    write(&src.join("a-b/a/f7"), b"changed");
    let third = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(third["files_unchanged"], files - 1);
    assert_eq!(third["read_bytes"], 7);
}

#[test]
fn stdin_backup_roundtrip() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.passphrase_job("db", &src, PASS);
    let dump = pseudo_random(9 * 1024 * 1024 + 3, 5, true);
    let out = env
        .run_stdin(
            &[
                "--json",
                "backup",
                "db",
                "--stdin",
                "--stdin-name",
                "db.sql",
            ],
            &[],
            &dump,
        )
        .ok()
        .json();
    assert_eq!(out["read_bytes"], dump.len() as u64);
    let ls = env.run(&["--json", "ls", "db"]).ok().json();
    assert_eq!(ls[0]["path"], "db.sql");
    let t = env.path("t");
    env.run(&["restore", "db", "--target", t.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read(t.join("db.sql")).unwrap(), dump);
}

/// With the catalog holding the password's hash, a restore opens the chain with it and
/// checks the given passphrase on another thread meanwhile: a wrong one is still exit 12,
/// and nothing reaches the target, empty or not.
#[test]
fn wrong_passphrase_checked_during_the_restore_still_exits_12_and_writes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 2);
    env.passphrase_job("nightly", &src, PASS);
    env.run(&["backup", "nightly"]).ok();
    let wrong = [
        ("ARCA_PASSPHRASE", "not the passphrase"),
        ("ARCA_LOG", "arca=debug"),
    ];
    let target = env.path("target");
    let r = env.run_env(
        &["restore", "nightly", "--target", target.to_str().unwrap()],
        &wrong,
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("checked while the work starts"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("wrong passphrase for job 'nightly'"),
        "{}",
        r.stderr
    );
    assert!(is_empty_or_missing(&target), "{}", r.stderr);
    // A non-empty target: a file changed there stays as it is, no temporary file is left.
    let full = env.path("full");
    let ok = env.run_env(
        &["restore", "nightly", "--target", full.to_str().unwrap()],
        &[("ARCA_PASSPHRASE", PASS), ("ARCA_LOG", "arca=debug")],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stderr.contains("checked while the work starts"),
        "{}",
        ok.stderr
    );
    assert_eq!(snapshot(&full), snapshot(&src));
    let mine = full.join("docs/readme.txt");
    fs::write(&mine, b"edited after the restore").unwrap();
    let before = snapshot(&full);
    let r = env.run_env(
        &[
            "restore",
            "nightly",
            "--overwrite",
            "--target",
            full.to_str().unwrap(),
        ],
        &wrong,
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert_eq!(snapshot(&full), before);
    // The right passphrase, with --json: restored, exit 0.
    let t3 = env.path("t3");
    let r = env.run_env(
        &[
            "--json",
            "restore",
            "nightly",
            "--target",
            t3.to_str().unwrap(),
        ],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(snapshot(&t3), snapshot(&src));
}

/// A backup does the same: with the catalog holding the password's hash it opens the chain
/// with it and checks the given passphrase while it reads and compresses, and the packs it
/// finishes meanwhile wait for the check. A wrong passphrase is exit 12 and leaves the
/// repository as it was (no pack, no temporary file); the right one stores them all.
#[test]
fn wrong_passphrase_checked_during_a_backup_exits_12_and_stores_nothing() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    let repo = env.passphrase_job("nightly", &src, PASS);
    env.run(&["backup", "nightly"]).ok();
    // 48 MiB that does not compress (xorshift): packs are finished while the check sleeps.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..(48usize << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    write(&src.join("big.bin"), &data);
    let before = snapshot(&repo);
    let slow = ("ARCA_FAULT_SLOW_PASSPHRASE_CHECK", "2");
    let debug = ("ARCA_LOG", "arca=debug");
    let r = env.run_env(
        &["backup", "nightly"],
        &[("ARCA_PASSPHRASE", "not the passphrase"), debug, slow],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("wrong passphrase for job 'nightly'"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("held until the given passphrase is checked"),
        "{}",
        r.stderr
    );
    // Nothing added, nothing left in tmp/ (whose own mtime moved: the packs held there
    // were removed).
    let without_tmp = |mut s: std::collections::BTreeMap<String, String>| {
        s.remove("tmp");
        s
    };
    assert_eq!(without_tmp(snapshot(&repo)), without_tmp(before));
    assert_eq!(fs::read_dir(repo.join("tmp")).unwrap().count(), 0);
    let ok = env.run_env(
        &["backup", "nightly"],
        &[("ARCA_PASSPHRASE", PASS), debug, slow],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stderr
            .contains("held until the given passphrase is checked"),
        "{}",
        ok.stderr
    );
    let t = env.path("t");
    env.run(&["restore", "nightly", "--target", t.to_str().unwrap()])
        .ok();
    assert_eq!(snapshot(&t), snapshot(&src));
}

#[test]
fn wrong_passphrase_exits_12_and_writes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    let repo = env.passphrase_job("nightly", &src, PASS);
    env.run(&["backup", "nightly"]).ok();
    // As after a reinstall: an empty catalog, so the passphrase is the only way in.
    fs::remove_file(&env.catalog).unwrap();
    let target = env.path("target");
    let r = env.run_env(
        &[
            "restore",
            "nightly",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
        &[("ARCA_PASSPHRASE", "not the passphrase")],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("wrong passphrase for job 'nightly'"),
        "{}",
        r.stderr
    );
    assert!(!target.exists(), "the restore created its target");
    // Also into an existing empty directory: it stays empty.
    fs::create_dir_all(&target).unwrap();
    let pf = env.path("pass.txt");
    fs::write(&pf, "also wrong\n").unwrap();
    let r = env.run(&[
        "--passphrase-file",
        pf.to_str().unwrap(),
        "restore",
        "nightly",
        "--repo",
        repo.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 12);
    assert!(is_empty_or_missing(&target));
    // No passphrase at all (not a terminal): keys unavailable, also 12, with a hint.
    let r = env.run(&[
        "restore",
        "nightly",
        "--repo",
        repo.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 12);
    assert!(r.stderr.contains("ARCA_PASSPHRASE"), "{}", r.stderr);
}

#[test]
fn catalog_deleted_restore_with_repo_and_passphrase() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 2);
    let repo = env.passphrase_job("nightly", &src, PASS);
    env.run(&["backup", "nightly"]).ok();
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let target = env.path("target");
    let pf = env.path("pass.txt");
    fs::write(&pf, format!("{PASS}\n")).unwrap();
    let r = env
        .run(&[
            "--passphrase-file",
            pf.to_str().unwrap(),
            "restore",
            "nightly",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
            "--explain",
        ])
        .ok();
    // A passphrase given explicitly is tried first, and must open the chain.
    assert!(r.stderr.contains("opened via: passphrase"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&target));
    // The resolver stored the hash again: the next restore needs no passphrase.
    let t2 = env.path("t2");
    let r = env
        .run(&[
            "restore",
            "nightly",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t2.to_str().unwrap(),
        ])
        .ok();
    assert!(r.stderr.contains("opened via: catalog"), "{}", r.stderr);
}

#[test]
fn flipped_byte_in_pack_is_found_and_fails_restore_with_13() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 4);
    let repo = env.passphrase_job("nightly", &src, PASS);
    env.run(&["backup", "nightly"]).ok();
    env.run(&["check", "nightly", "--read-data"]).ok();
    // A byte inside one of a_big.bin's sealed chunks. Readers and workers may store chunks
    // out of walk order and packs may share an mtime, so find the place by trying: flip a
    // byte at a few places of each pack, and keep the flip whose damage a_big.bin's restore
    // reports.
    let packs = packs(&repo);
    let probe = env.path("probe");
    let mut victim = None;
    'search: for p in &packs {
        let mut b = fs::read(p).unwrap();
        if b.len() < 24 + 5001 {
            continue;
        }
        let body = b.len() - 24;
        for at in [
            24 + 5000,
            24 + body / 2,
            24 + body / 3,
            24 + body * 2 / 3,
            24 + body / 5,
        ] {
            b[at] ^= 0x01;
            fs::write(p, &b).unwrap();
            let _ = fs::remove_dir_all(&probe);
            let r = env.run(&[
                "restore",
                "nightly",
                "--target",
                probe.to_str().unwrap(),
                "--include",
                "a_big.bin",
            ]);
            if r.code == 13 {
                victim = Some(p.clone());
                break 'search;
            }
            b[at] ^= 0x01;
            fs::write(p, &b).unwrap();
        }
    }
    let victim = victim.expect("no probed byte of any pack is in a_big.bin's chunks");
    let victim = &victim;
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();

    let r = env.run(&["check", "nightly", "--read-data"]);
    assert_eq!(r.code, 13, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains(&format!("pack {name}")), "{}", r.stderr);
    let j = env
        .run(&["--json", "check", "nightly", "--read-data"])
        .json();
    assert!(!j["problems"].as_array().unwrap().is_empty());

    let t = env.path("t");
    let r = env.run(&[
        "restore",
        "nightly",
        "--target",
        t.to_str().unwrap(),
        "--include",
        "a_big.bin",
    ]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert!(
        r.stderr.contains("a_big.bin"),
        "the error names the file: {}",
        r.stderr
    );
    assert!(
        !t.join("a_big.bin").exists(),
        "a damaged file was left looking complete"
    );
    // Files in other chunks still restore.
    let t2 = env.path("t2");
    env.run(&[
        "restore",
        "nightly",
        "--target",
        t2.to_str().unwrap(),
        "--include",
        "docs",
    ])
    .ok();
    assert_eq!(
        fs::read(t2.join("docs/readme.txt")).unwrap(),
        b"hello arca\n"
    );
}

#[test]
fn raw_key_job_and_wrong_key_file() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    let repo = env.path("repo");
    env.run(&["init", repo.to_str().unwrap()]).ok();
    let key = env.path("k1.key");
    let other = env.path("k2.key");
    env.run(&["key", "generate", "--out", key.to_str().unwrap()])
        .ok();
    env.run(&["key", "generate", "--out", other.to_str().unwrap()])
        .ok();
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    env.run(&[
        "--key-file",
        key.to_str().unwrap(),
        "job",
        "create",
        "k",
        "--repo",
        repo.to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
        "--encryption",
        "key",
    ])
    .ok();
    env.run(&["backup", "k"]).ok(); // the catalog remembers the key file's path
    let t = env.path("t");
    let r = env.run(&[
        "--key-file",
        other.to_str().unwrap(),
        "restore",
        "k",
        "--repo",
        repo.to_str().unwrap(),
        "--target",
        t.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("wrong key"), "{}", r.stderr);
    assert!(!t.exists());
    let text = fs::read_to_string(&key).unwrap();
    fs::remove_file(&env.catalog).unwrap();
    env.run_env(
        &[
            "restore",
            "k",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ],
        &[("ARCA_KEY", text.trim())],
    )
    .ok();
    assert_eq!(snapshot(&src), snapshot(&t));
}

#[test]
fn changing_encryption_starts_a_full_backup_in_a_new_chain() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 2);
    env.passphrase_job("j", &src, PASS);
    let first = env.run(&["--json", "backup", "j"]).ok().json();
    let key = env.path("k.key");
    env.run(&["key", "generate", "--out", key.to_str().unwrap()])
        .ok();
    // An active job's encryption is immutable: the attempt names deactivate/activate.
    let r = env.run(&["job", "encryption", "j", "--encryption", "none"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("arca job deactivate j") && r.stderr.contains("arca job activate j"),
        "{}",
        r.stderr
    );
    env.run(&["job", "deactivate", "j"]).ok();
    let old_packs = packs(&env.path("repo"));
    let r = env.run(&["backup", "j"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("arca job activate j"), "{}", r.stderr);
    env.run(&[
        "restore",
        "j",
        "--target",
        env.path("t-inactive").to_str().unwrap(),
    ])
    .ok();
    env.run(&[
        "--key-file",
        key.to_str().unwrap(),
        "job",
        "activate",
        "j",
        "--encryption",
        "key",
    ])
    .ok();
    let second = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(second["full"], true);
    assert!(
        second["full_reason"]
            .as_str()
            .unwrap()
            .contains("new chain"),
        "{second}"
    );
    assert_ne!(first["chain_id"], second["chain_id"]);
    assert_eq!(
        second["read_bytes"], first["read_bytes"],
        "the new chain must re-read everything"
    );
    // Nothing reused from the old chain (boundaries are keyed per chain, so duplicates
    // inside one backup may dedup slightly differently: allow 1%).
    let (a, b) = (
        first["new_bytes"].as_u64().unwrap(),
        second["new_bytes"].as_u64().unwrap(),
    );
    assert!(
        b * 100 >= a * 99,
        "the new chain reused old chunks: {b} < {a}"
    );
    // Zero reuse, strictly: with every pack of the old chain moved away, the new chain's
    // point still restores completely.
    let aside = env.path("aside");
    fs::create_dir_all(&aside).unwrap();
    for (i, p) in old_packs.iter().enumerate() {
        fs::rename(p, aside.join(i.to_string())).unwrap();
    }
    let t_new = env.path("t-new-chain");
    env.run(&["restore", "j", "--target", t_new.to_str().unwrap()])
        .ok();
    assert_eq!(snapshot(&src), snapshot(&t_new));
    for (i, p) in old_packs.iter().enumerate() {
        fs::rename(aside.join(i.to_string()), p).unwrap();
    }
    // Disabling encryption: again a new chain and a full backup.
    env.run(&["job", "deactivate", "j"]).ok();
    env.run(&["job", "activate", "j", "--encryption", "none"])
        .ok();
    let third = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(third["full"], true);
    // Every point of every chain still restores.
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    assert_eq!(pts.as_array().unwrap().len(), 3);
    for (i, p) in pts.as_array().unwrap().iter().enumerate() {
        let t = env.path(&format!("t{i}"));
        env.run(&[
            "restore",
            "j",
            p["point_id"].as_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ])
        .ok();
        assert_eq!(snapshot(&src), snapshot(&t));
    }
    env.run(&["check", "j", "--read-data"]).ok();
}

#[test]
fn restore_refuses_non_empty_target_unless_overwrite() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    let t = env.path("t");
    write(&t.join("docs/readme.txt"), b"old content");
    let r = env.run(&["restore", "j", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--overwrite"));
    assert_eq!(fs::read(t.join("docs/readme.txt")).unwrap(), b"old content");
    env.run(&[
        "restore",
        "j",
        "--target",
        t.to_str().unwrap(),
        "--overwrite",
    ])
    .ok();
    assert_eq!(snapshot(&src), snapshot(&t));
}

#[test]
fn catalog_rebuild_from_repository() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    let repo = env.passphrase_job("nightly", &src, PASS);
    env.run(&["backup", "nightly"]).ok();
    env.run(&["backup", "nightly"]).ok();
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let r = env.run(&["points", "nightly"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("catalog rebuild"), "{}", r.stderr);
    // Without the passphrase: jobs and points are registered, statistics are not.
    env.run(&["catalog", "rebuild", "--repo", repo.to_str().unwrap()])
        .ok();
    let pts = env.run(&["--json", "points", "nightly"]).ok().json();
    assert_eq!(pts.as_array().unwrap().len(), 2);
    assert!(pts[0]["stats"].is_null());
    // With it: statistics cached and the password hash stored again.
    env.run_env(
        &["catalog", "rebuild", "--repo", repo.to_str().unwrap()],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    let pts = env.run(&["--json", "points", "nightly"]).ok().json();
    assert!(pts[0]["stats"]["files"].as_u64().unwrap() > 0);
    let b = env.run(&["--json", "backup", "nightly"]).ok().json();
    assert_eq!(b["tier"], "catalog");
    assert_eq!(b["full"], false);
}

#[test]
fn unreadable_source_path_exits_3_and_keeps_the_rest() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("fine.txt"), b"fine");
    // A directory deeper than PATH_MAX cannot be opened by its path, even by root.
    let seg = "d".repeat(200);
    let deep = |action: &str| {
        let script = format!(
            "import os\nos.chdir({:?})\nfor i in range(25):\n    {action}\n    os.chdir({seg:?})\n{}",
            src.display().to_string(),
            if action.starts_with("os.mkdir") { "open('deep.txt', 'w').write('x')" } else { "os.remove('deep.txt')" }
        );
        assert!(std::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap()
            .success());
    };
    deep(&format!("os.mkdir({seg:?})"));
    env.passphrase_job("j", &src, PASS);
    let r = env.run(&["--json", "backup", "j"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let j = r.json();
    assert!(!j["errors"].as_array().unwrap().is_empty());
    assert!(r.stderr.contains("could not be read"), "{}", r.stderr);
    // Each unreadable path is reported once, and stderr captured in a file has no colour.
    let first = j["errors"][0]["path"].as_str().unwrap();
    assert_eq!(r.stderr.matches(first).count(), 1, "{}", r.stderr);
    assert!(
        !r.stderr.contains('\x1b'),
        "escape codes in captured output"
    );
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    assert!(
        pts[0]["error_count"].as_u64().unwrap() > 0,
        "the point records its errors"
    );
    let t = env.path("t");
    env.run(&[
        "restore",
        "j",
        "--target",
        t.to_str().unwrap(),
        "--include",
        "fine.txt",
    ])
    .ok();
    assert_eq!(fs::read(t.join("fine.txt")).unwrap(), b"fine");
    // The long path cannot be removed by path either: remove its file with relative steps,
    // so the temporary directory can be cleaned up.
    deep("pass");
}

#[test]
fn moved_objects_fail_to_authenticate() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    let repo = env.passphrase_job("j", &src, PASS);
    let a = env.run(&["--json", "backup", "j"]).ok().json();
    write(&src.join("new.txt"), b"new");
    let b = env.run(&["--json", "backup", "j"]).ok().json();
    let (pa, pb) = (
        a["point_id"].as_str().unwrap(),
        b["point_id"].as_str().unwrap(),
    );
    // Swap the two points' indexes: each is bound to its own point.
    let (ia, ib) = (repo.join("index").join(pa), repo.join("index").join(pb));
    let (da, db) = (fs::read(&ia).unwrap(), fs::read(&ib).unwrap());
    fs::write(&ia, &db).unwrap();
    fs::write(&ib, &da).unwrap();
    let r = env.run(&["check", "j"]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert!(r.stderr.contains("index of recovery point"), "{}", r.stderr);
    fs::write(&ia, &da).unwrap();
    fs::write(&ib, &db).unwrap();
    env.run(&["check", "j"]).ok();
    // Replay point A's sealed body into point B's record: it does not open there.
    let rec_a: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join(format!("points/{pa}.json"))).unwrap()).unwrap();
    let pb_path = repo.join(format!("points/{pb}.json"));
    let mut rec_b: serde_json::Value =
        serde_json::from_slice(&fs::read(&pb_path).unwrap()).unwrap();
    rec_b["body"] = rec_a["body"].clone();
    fs::write(&pb_path, serde_json::to_vec(&rec_b).unwrap()).unwrap();
    let t = env.path("t");
    let r = env.run(&["restore", "j", pb, "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 13, "{}", r.stderr);
}

#[test]
fn json_outputs_and_help() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    let p = &pts[0];
    for k in ["point_id", "time", "chain_id"] {
        assert!(p[k].is_string(), "{k} missing in {p}");
    }
    assert_eq!(p["stats"]["files"], 7);
    let c = env.run(&["--json", "check", "j"]).ok().json();
    assert_eq!(c["points"], 1);
    assert!(c["problems"].as_array().unwrap().is_empty());
    let jobs = env.run(&["--json", "job", "list"]).ok().json();
    assert_eq!(jobs[0]["name"], "j");
    assert!(!env.run(&["job", "show", "j"]).ok().stdout.contains(PASS));
    for cmd in [
        "init",
        "job",
        "backup",
        "points",
        "ls",
        "restore",
        "check",
        "catalog",
        "quickstart",
    ] {
        let h = env.run(&[cmd, "--help"]).ok();
        assert!(h.stdout.contains("Usage"), "{cmd} --help");
    }
    let r = env.run(&["restore", "j"]);
    assert_eq!(r.code, 2, "a missing required flag is a usage error");
}

#[test]
fn catalog_never_holds_the_passphrase() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    let dir = env.catalog.parent().unwrap();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let b = fs::read(&p).unwrap();
        assert!(
            !b.windows(PASS.len()).any(|w| w == PASS.as_bytes()),
            "passphrase in {}",
            p.display()
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o077,
            0,
            "{} is readable by others",
            p.display()
        );
    }
}

#[test]
fn quickstart_runs_on_first_use_and_again() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    let r = env
        .run(&["quickstart", "--source", src.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("recovery point"), "{}", r.stdout);
    assert!(env
        .catalog
        .parent()
        .unwrap()
        .join("default-repo/config")
        .exists());
    let r = env
        .run(&["quickstart", "--source", src.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("incremental"), "{}", r.stdout);
    let t = env.path("t");
    env.run(&["restore", "default", "--target", t.to_str().unwrap()])
        .ok();
    assert_eq!(snapshot(&src), snapshot(&t));
}

#[test]
fn password_rotation_rewraps_without_touching_data() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 2);
    let repo = env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    write(&src.join("later.txt"), b"a second point");
    env.run(&["backup", "j"]).ok();
    let packs_before = snapshot(&repo.join("packs"));
    let index_before = snapshot(&repo.join("index"));
    let new_pass = "a brand new passphrase";
    let r = env
        .run_env(
            &["--json", "password", "rotate", "j"],
            &[("ARCA_NEW_PASSPHRASE", new_pass)],
        )
        .ok()
        .json();
    assert_eq!(r["jobs"][0]["chains"][0]["points"], 2);
    assert_eq!(r["jobs"][0]["chains"][0]["generation"], 2);
    // No data re-encrypted or re-written.
    assert_eq!(snapshot(&repo.join("packs")), packs_before);
    assert_eq!(snapshot(&repo.join("index")), index_before);
    // The next run is an incremental (same chain, dedup) under a fresh data key.
    let b = env.run(&["--json", "backup", "j"]).ok().json();
    assert_eq!(b["full"], false);
    assert_eq!(b["tier"], "catalog", "the catalog holds the new hash");
    let points = env.run(&["--json", "points", "j"]).ok().json();
    // After a reinstall: the new passphrase opens every point, the old one none.
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    for (i, p) in points.as_array().unwrap().iter().enumerate() {
        let id = p["point_id"].as_str().unwrap();
        let old_t = env.path(&format!("old{i}"));
        let r = env.run_env(
            &[
                "restore",
                "j",
                id,
                "--repo",
                repo.to_str().unwrap(),
                "--target",
                old_t.to_str().unwrap(),
            ],
            &[("ARCA_PASSPHRASE", PASS)],
        );
        assert_eq!(
            r.code, 12,
            "the old passphrase opened point {id}: {}",
            r.stderr
        );
        assert!(!old_t.exists());
        fs::remove_dir_all(env.catalog.parent().unwrap()).ok();
        let t = env.path(&format!("new{i}"));
        env.run_env(
            &[
                "restore",
                "j",
                id,
                "--repo",
                repo.to_str().unwrap(),
                "--target",
                t.to_str().unwrap(),
            ],
            &[("ARCA_PASSPHRASE", new_pass)],
        )
        .ok();
        assert_eq!(
            fs::read(t.join("docs/readme.txt")).unwrap(),
            b"hello arca\n"
        );
        fs::remove_dir_all(env.catalog.parent().unwrap()).ok();
    }
}

#[test]
fn find_searches_the_encrypted_file_index() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    let repo = env.passphrase_job("j", &src, PASS);
    let p1 = env.run(&["--json", "backup", "j"]).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    write(&src.join("docs/later.txt"), b"added later");
    let p2 = env.run(&["--json", "backup", "j"]).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    let hits = env.run(&["--json", "find", "j", "docs/*.txt"]).ok().json();
    let in_point = |id: &str| {
        hits.as_array()
            .unwrap()
            .iter()
            .filter(|h| h["point_id"] == id)
            .count()
    };
    assert_eq!(in_point(&p1), 2, "{hits}"); // readme.txt, empty.txt
    assert_eq!(in_point(&p2), 3, "{hits}"); // + later.txt
    let later = env.run(&["--json", "find", "j", "later"]).ok().json();
    assert_eq!(later.as_array().unwrap().len(), 1);
    assert_eq!(later[0]["point_id"], p2.as_str());
    assert_eq!(later[0]["size"], 11);
    assert_eq!(env.run(&["find", "j", "no-such-file"]).code, 1);
    // Without the keys the index stays closed.
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let r = env.run_env(
        &["find", "j", "later", "--repo", repo.to_str().unwrap()],
        &[("ARCA_PASSPHRASE", "wrong")],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    env.run_env(
        &["find", "j", "later", "--repo", repo.to_str().unwrap()],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
}

/// A catalog written by arca 0.1 has no pins: its jobs' chains are pinned as they are first
/// opened (after the migration that adds the pin tables), older chains included.
#[test]
fn a_catalog_from_arca_0_1_pins_its_chains_on_first_use() {
    let env = Env::new();
    let src = env.path("src");
    rich_tree(&src, 1);
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
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
        &[("ARCA_PASSPHRASE", "second")],
    )
    .ok();
    env.run(&["backup", "j"]).ok();
    // What a 0.1 catalog looks like after migration 3: no pins, no revision, no latest point.
    let db = rusqlite::Connection::open(&env.catalog).unwrap();
    db.execute_batch(
        "DELETE FROM trusted_chains; UPDATE jobs SET job_revision = 0, latest_point = NULL;",
    )
    .unwrap();
    drop(db);
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    for (i, p) in pts.as_array().unwrap().iter().enumerate() {
        let t = env.path(&format!("t{i}"));
        env.run(&[
            "restore",
            "j",
            p["point_id"].as_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ])
        .ok();
        assert_eq!(snapshot(&src), snapshot(&t));
    }
    let db = rusqlite::Connection::open(&env.catalog).unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM trusted_chains", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2, "both chains pinned on first use");
}

/// `arca ls NAME | head -1`: a reader that goes away ends the command quietly (141, as for
/// SIGPIPE), never with a panic.
#[test]
fn closed_stdout_ends_listing_commands_quietly() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..3000 {
        write(&src.join(format!("d{}/file-{i:05}.txt", i % 10)), b"x");
    }
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    for args in [
        &["ls", "j"][..],
        &["--json", "ls", "j"],
        &["find", "j", "file"],
        &["points", "j"],
    ] {
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away at once
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let code = out.status.code().unwrap();
        assert!(code == 141 || code == 0, "{args:?}: exit {code}: {err}");
    }
}
