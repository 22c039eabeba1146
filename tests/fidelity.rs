//! What a backup keeps of files besides their bytes, and restores of damaged points:
//! sparse files, hard links, extended attributes and POSIX ACLs, FIFOs and device nodes,
//! sockets (listed, skipped), owners by name, files changing while read, long paths, the
//! source root's own metadata, and `restore --partial`.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::*;

struct Job {
    env: Env,
    src: PathBuf,
    repo: PathBuf,
    key: String,
}

impl Job {
    fn new() -> Job {
        let env = Env::new();
        let src = env.path("src");
        fs::create_dir_all(&src).unwrap();
        let repo = env.path("repo");
        let key = env.key_job("j", &src, &repo);
        Job {
            key: key.to_str().unwrap().to_string(),
            env,
            src,
            repo,
        }
    }

    fn arca(&self, args: &[&str]) -> Run {
        let mut a = vec!["--key-file", &self.key];
        a.extend_from_slice(args);
        self.env.run(&a)
    }

    fn backup(&self) -> serde_json::Value {
        self.arca(&["--json", "backup", "j"]).ok().json()
    }

    fn restore_to(&self, name: &str, extra: &[&str]) -> (Run, PathBuf) {
        let t = self.env.path(name);
        let mut a = vec!["restore", "j", "--target", t.to_str().unwrap()];
        a.extend_from_slice(extra);
        (self.arca(&a), t)
    }
}

#[test]
fn restore_partial_restores_what_is_intact_and_lists_the_rest() {
    let j = Job::new();
    let a = pseudo_random(300_000, 11, false);
    let b = pseudo_random(300_000, 13, false);
    write(&j.src.join("a"), &a);
    j.backup();
    write(&j.src.join("b"), &b);
    j.backup();
    // The second backup's only pack holds b's chunks first: flip a byte in them.
    let newest = packs(&j.repo)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let mut bytes = fs::read(&newest).unwrap();
    bytes[24 + 1000] ^= 0x40;
    fs::write(&newest, &bytes).unwrap();
    // Without --partial: nothing is restored, exit 13.
    let (r, t) = j.restore_to("t-all", &[]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert!(!t.join("a").exists() && !t.join("b").exists());
    // With it: a comes back, b is listed, exit 13.
    let (r, t) = j.restore_to("t-partial", &["--partial"]);
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert_eq!(fs::read(t.join("a")).unwrap(), a);
    assert!(!t.join("b").exists(), "a damaged file was put in place");
    assert!(
        r.stderr.contains("1 file(s) could not be restored"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("  b: "), "{}", r.stderr);
    let (r, _) = j.restore_to("t-json", &["--partial", "--json"]);
    assert_eq!(r.code, 13);
    let v = r.json();
    assert_eq!(v["files"], 1);
    assert_eq!(v["failed"][0]["path"], "b");
}

#[test]
fn sparse_files_come_back_sparse() {
    let j = Job::new();
    let f = j.src.join("sparse.img");
    {
        use std::os::unix::fs::FileExt;
        let file = fs::File::create(&f).unwrap();
        file.set_len(256 << 20).unwrap();
        for (i, at) in [0u64, 100 << 20, (256 << 20) - 4096].iter().enumerate() {
            file.write_all_at(&[i as u8 + 1; 4096], *at).unwrap();
        }
    }
    let m = fs::metadata(&f).unwrap();
    assert!(m.blocks() * 512 < 1 << 20, "the source is not sparse here");
    j.backup();
    let (r, t) = j.restore_to("t", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rm = fs::metadata(t.join("sparse.img")).unwrap();
    assert_eq!(rm.len(), 256 << 20);
    assert!(
        rm.blocks() * 512 < 1 << 20,
        "restored with {} bytes allocated",
        rm.blocks() * 512
    );
    assert_eq!(
        blake3::hash(&fs::read(t.join("sparse.img")).unwrap()),
        blake3::hash(&fs::read(&f).unwrap())
    );
}
