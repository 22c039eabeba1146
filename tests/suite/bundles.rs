//! Small files share chunks (bundles): restores are byte-identical, one small file can be
//! restored alone, an incremental stores only the files that changed, and the same small
//! files in the same order make the same bundles wherever they are (they dedup).

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

use common::KeyJob as Job;

/// What this module adds to a key-file job.
trait JobExt {
    fn backup(&self) -> serde_json::Value;
    fn restore(&self, name: &str, extra: &[&str]) -> PathBuf;
    /// `restore --json` of the latest point into `name`, checked equal to the source.
    fn restore_json(&self, name: &str) -> serde_json::Value;
}

impl JobExt for Job {
    fn backup(&self) -> serde_json::Value {
        self.arca(&["--json", "backup", "j"]).ok().json()
    }

    fn restore(&self, name: &str, extra: &[&str]) -> PathBuf {
        let t = self.env.path(name);
        let mut a = vec!["restore", "j", "--target", t.to_str().unwrap()];
        a.extend_from_slice(extra);
        self.arca(&a).ok();
        t
    }

    fn restore_json(&self, name: &str) -> serde_json::Value {
        let t = self.env.path(name);
        let r = self
            .arca(&["--json", "restore", "j", "--target", t.to_str().unwrap()])
            .ok()
            .json();
        assert_eq!(snapshot(&t), snapshot(&self.src));
        r
    }
}

/// `n` small files of 1-12 KiB below `dir`, some compressible; returns their total size.
fn small_files(dir: &Path, n: usize, seed: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        let len = 1024 + (i * 7919 + seed as usize * 31) % (11 * 1024);
        let data = pseudo_random(len, seed * 100_000 + i as u64 + 1, i % 2 == 0);
        write(&dir.join(format!("d{}/f{i:04}.txt", i % 7)), &data);
        total += len as u64;
    }
    total
}

#[test]
fn small_files_share_bundles_and_restore_byte_identical() {
    let j = Job::new();
    small_files(&j.src.join("small"), 600, 1);
    write(&j.src.join("empty"), b"");
    write(&j.src.join("big.bin"), &pseudo_random(700 << 10, 9, true));
    fs::hard_link(
        j.src.join("small/d0/f0000.txt"),
        j.src.join("small/link-to-f0000"),
    )
    .unwrap();
    let b = j.backup();
    assert_eq!(b["files"].as_u64().unwrap(), 603, "{b}");
    let bundles = b["bundles"].as_u64().unwrap();
    // About 4 MiB of small files: a handful of bundles, not one chunk per file.
    assert!((2..=20).contains(&bundles), "{b}");
    assert!(b["chunks_new"].as_u64().unwrap() < 40, "{b}");

    let t = j.restore("t", &[]);
    assert_eq!(snapshot(&t), snapshot(&j.src));
    assert_eq!(
        fs::metadata(t.join("small/link-to-f0000")).unwrap().ino(),
        fs::metadata(t.join("small/d0/f0000.txt")).unwrap().ino()
    );

    // One small file from the middle of a bundle, alone.
    let one = j.restore("one", &["--include", "small/d3/f0311.txt"]);
    assert_eq!(
        fs::read(one.join("small/d3/f0311.txt")).unwrap(),
        fs::read(j.src.join("small/d3/f0311.txt")).unwrap()
    );
    assert!(!one.join("small/d3/f0304.txt").exists());
}

#[test]
fn an_incremental_stores_only_the_small_files_that_changed() {
    let j = Job::new();
    let total = small_files(&j.src, 800, 2);
    let before = snapshot(&j.src);
    let first = j.backup();
    let first_id = first["point_id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let changed = j.src.join("d4/f0403.txt");
    let len = fs::metadata(&changed).unwrap().len() as usize;
    write(&changed, &pseudo_random(len, 777, false));
    let b = j.backup();
    assert_eq!(b["files_unchanged"].as_u64().unwrap(), 799, "{b}");
    assert_eq!(b["read_bytes"].as_u64().unwrap(), len as u64, "{b}");
    // The changed file in a bundle of its own, and the file index: not the ~1 MiB
    // bundle the file was in.
    let new = b["new_bytes"].as_u64().unwrap();
    assert!(new < total / 10, "{new} new bytes of {total}: {b}");

    assert_eq!(snapshot(&j.restore("latest", &[])), snapshot(&j.src));
    assert_eq!(snapshot(&j.restore("first", &[&first_id])), before);
}

#[test]
fn the_same_small_files_make_the_same_bundles_wherever_they_are() {
    let j = Job::new();
    let total = small_files(&j.src.join("a"), 1500, 3);
    j.backup();
    // Moved below another name: no parent entry matches, every file is read again and
    // bundled anew. Past the first cut, the bundles are those stored already.
    fs::rename(j.src.join("a"), j.src.join("zz-moved")).unwrap();
    let b = j.backup();
    assert_eq!(b["read_bytes"].as_u64().unwrap(), total, "{b}");
    let new = b["new_bytes"].as_u64().unwrap();
    assert!(new < total / 2, "{new} new bytes of {total} moved: {b}");
    assert_eq!(snapshot(&j.restore("t", &[])), snapshot(&j.src));
}

#[test]
fn a_restore_decodes_each_bundle_once_when_large_files_lie_between_its_small_files() {
    let j = Job::new();
    // In walk order: small, large, small, large, ... in one directory, so every bundle's
    // small files have large files (chunks of their own) between them.
    let large = 40;
    for i in 0..large {
        write(
            &j.src.join(format!("mix/f{i:03}-a.txt")),
            &pseudo_random(9000 + i * 13, 501 + 2 * i as u64, true),
        );
        write(
            &j.src.join(format!("mix/f{i:03}-b.bin")),
            &pseudo_random(200 << 10, 901 + 2 * i as u64, false),
        );
    }
    small_files(&j.src.join("tail"), 300, 5);
    let b = j.backup();
    let bundles = b["bundles"].as_u64().unwrap();
    assert!(bundles >= 2, "{b}");
    let r = j.restore_json("t");
    // One decode per bundle and one per large file's chunk: reading a large file between
    // two small files of a bundle does not make the bundle be decoded again.
    assert_eq!(
        r["chunks_decoded"].as_u64().unwrap(),
        bundles + large as u64,
        "{r} after {b}"
    );
    assert!(r["decoded_bytes"].as_u64().unwrap() >= r["total_bytes"].as_u64().unwrap());
}

#[test]
fn a_restore_after_an_incremental_decodes_each_bundle_once_when_changed_files_are_scattered() {
    let j = Job::new();
    let n = 1400;
    small_files(&j.src.join("tree"), n, 3);
    let full = j.backup();
    // Every 47th file changes (and grows, so its size tells): the incremental puts them
    // all in a new bundle, and in walk order they lie between the unchanged files of
    // every old bundle.
    let mut changed = 0;
    for i in (0..n).step_by(47) {
        let p = j.src.join(format!("tree/d{}/f{i:04}.txt", i % 7));
        write(&p, &pseudo_random(3000 + i, 77_000 + i as u64, true));
        changed += 1;
    }
    let incr = j.backup();
    assert_eq!(
        incr["files_unchanged"].as_u64().unwrap(),
        (n - changed) as u64,
        "{incr}"
    );
    let (old, new) = (
        full["bundles"].as_u64().unwrap(),
        incr["bundles"].as_u64().unwrap(),
    );
    assert!(old >= 4 && new >= 1, "{full} {incr}");
    let r = j.restore_json("t");
    // Each old bundle keeps unchanged files, so every bundle is read, and only once: not
    // again for each changed file that interrupts its run in walk order.
    assert_eq!(
        r["chunks_decoded"].as_u64().unwrap(),
        old + new,
        "{r} after {full} and {incr}"
    );
}
