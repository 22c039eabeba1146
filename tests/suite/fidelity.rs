//! What a backup keeps of files besides their bytes, and restores of damaged points:
//! sparse files, hard links, extended attributes and POSIX ACLs, FIFOs and device nodes,
//! sockets (listed, skipped), owners by name, files changing while read, long paths, the
//! source root's own metadata, and `restore --partial`.

use crate::common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use common::*;

use common::KeyJob as Job;

/// What this module adds to a key-file job.
trait JobExt {
    fn backup(&self) -> serde_json::Value;
    fn restore_to(&self, name: &str, extra: &[&str]) -> (Run, PathBuf);
}

impl JobExt for Job {
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

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A POSIX ACL in the kernel's xattr form: owner rw, user `uid` r, group r, mask r, other -.
fn acl_with_user(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX), // USER_OBJ
        (0x02, 4, uid),            // USER
        (0x04, 4, u32::MAX),       // GROUP_OBJ
        (0x10, 4, u32::MAX),       // MASK
        (0x20, 0, u32::MAX),       // OTHER
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn xattr(p: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

#[test]
fn metadata_round_trips_links_xattrs_acls_fifos_devices_owners_and_the_root() {
    let j = Job::new();
    let src = &j.src;
    write(&src.join("data/original"), b"shared content");
    fs::hard_link(src.join("data/original"), src.join("data/second-name")).unwrap();
    fs::hard_link(src.join("data/original"), src.join("other-dir-link")).unwrap();
    write(&src.join("tagged"), b"x");
    rustix::fs::setxattr(
        src.join("tagged").as_path(),
        "user.origin",
        b"camera 7",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        src.join("tagged").as_path(),
        "system.posix_acl_access",
        &acl_with_user(4321),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        src.join("data").as_path(),
        "user.dir-note",
        b"on a directory",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("pipe").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    let listener = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    if is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("null-dev").as_path(),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        // A FIFO's attributes are read through the entry itself, never by its path.
        rustix::fs::setxattr(
            src.join("pipe").as_path(),
            "trusted.pipe-note",
            b"on a fifo",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        // An owner this machine has no name for stays numeric; "nobody" goes by name.
        rustix::fs::chown(
            src.join("tagged").as_path(),
            Some(rustix::fs::Uid::from_raw(4242)),
            None,
        )
        .unwrap();
        rustix::fs::chown(
            src.join("data/original").as_path(),
            Some(rustix::fs::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
    }
    fs::set_permissions(src, fs::Permissions::from_mode(0o751)).unwrap();
    let root_mtime = fs::metadata(src).unwrap().mtime();

    let b = j.backup();
    drop(listener);
    let skipped = b["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{b}");
    assert!(skipped[0]["path"].as_str().unwrap().ends_with("/sock"));
    assert!(skipped[0]["error"].as_str().unwrap().contains("socket"));
    let ls = j.arca(&["--json", "ls", "j"]).ok().json();
    let entry = |p: &str| {
        ls.as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == p)
            .cloned()
            .unwrap_or_else(|| panic!("{p} not listed"))
    };
    assert_eq!(entry("data/second-name")["hardlink"], "data/original");
    assert_eq!(entry("pipe")["type"], "fifo");
    if is_root() {
        assert_eq!(entry("data/original")["user"], "nobody");
        assert_eq!(entry("tagged")["user"], "4242");
        assert_eq!(entry("null-dev")["type"], "chardev");
    }

    let (r, t) = j.restore_to("t", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Hard links: one inode, three names.
    let ino = |p: &str| fs::metadata(t.join(p)).unwrap().ino();
    assert_eq!(ino("data/original"), ino("data/second-name"));
    assert_eq!(ino("data/original"), ino("other-dir-link"));
    assert_eq!(fs::metadata(t.join("data/original")).unwrap().nlink(), 3);
    assert_eq!(
        fs::read(t.join("other-dir-link")).unwrap(),
        b"shared content"
    );
    // Extended attributes and the ACL.
    assert_eq!(
        xattr(&t.join("tagged"), "user.origin").as_deref(),
        Some(&b"camera 7"[..])
    );
    assert_eq!(
        xattr(&t.join("tagged"), "system.posix_acl_access"),
        xattr(&src.join("tagged"), "system.posix_acl_access")
    );
    assert!(xattr(&t.join("tagged"), "system.posix_acl_access").is_some());
    assert_eq!(
        xattr(&t.join("data"), "user.dir-note").as_deref(),
        Some(&b"on a directory"[..])
    );
    // The FIFO, and the socket not recreated.
    let pm = fs::symlink_metadata(t.join("pipe")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&pm.file_type()));
    assert_eq!(pm.mode() & 0o7777, 0o640);
    assert!(!t.join("sock").exists());
    // The root's own mode and times.
    let rm = fs::metadata(&t).unwrap();
    assert_eq!(rm.mode() & 0o7777, 0o751);
    assert_eq!(rm.mtime(), root_mtime);
    if is_root() {
        let dm = fs::symlink_metadata(t.join("null-dev")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &dm.file_type()
        ));
        assert_eq!(
            dm.rdev(),
            fs::metadata(src.join("null-dev")).unwrap().rdev()
        );
        assert_eq!(
            xattr(&t.join("pipe"), "trusted.pipe-note").as_deref(),
            Some(&b"on a fifo"[..])
        );
        assert_eq!(fs::metadata(t.join("tagged")).unwrap().uid(), 4242);
        assert_eq!(fs::metadata(t.join("data/original")).unwrap().uid(), 65534);
    }
}

/// A default ACL in the kernel's xattr form: owner rwx, group r-x, other nothing.
fn default_acl_owner_and_group() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 0)] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

#[test]
fn restored_files_keep_their_modes_whatever_the_umask_or_a_default_acl_of_the_target() {
    use std::os::unix::process::CommandExt;
    let j = Job::new();
    // A restore into an empty target creates most files with their own mode (no chmod):
    // that must never let the umask or an inherited default ACL change a mode.
    let modes = [
        0o644, 0o755, 0o600, 0o444, 0o666, 0o777, 0o640, 0o604, 0o4755, 0o1644,
    ];
    for m in modes {
        let p = j.src.join(format!("m{m:o}"));
        write(&p, format!("mode {m:o}").as_bytes());
        fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
    }
    j.backup();
    let expect = |m: u32| if is_root() { m } else { m & !0o6000 };
    let restore = |name: &str, umask: u32| {
        let t = j.env.path(name);
        let mut c = j.env.cmd(&[
            "--key-file",
            &j.key,
            "restore",
            "j",
            "--target",
            t.to_str().unwrap(),
        ]);
        // SAFETY: umask(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(move || {
                rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
                Ok(())
            });
        }
        let r: Run = c.output().unwrap().into();
        assert_eq!(r.code, 0, "{}", r.stderr);
        t
    };
    let check = |t: &std::path::Path, how: &str| {
        for m in modes {
            let got = fs::metadata(t.join(format!("m{m:o}"))).unwrap().mode() & 0o7777;
            assert_eq!(got, expect(m), "mode {m:o} restored as {got:o} ({how})");
        }
    };
    check(&restore("umask-022", 0o022), "umask 022");
    check(&restore("umask-077", 0o077), "umask 077");
    check(&restore("umask-000", 0o000), "umask 000");
    // An empty target with a default ACL: files created in it would get the ACL's
    // permissions, not their mode less the umask.
    let t = j.env.path("acl");
    fs::create_dir(&t).unwrap();
    rustix::fs::setxattr(
        t.as_path(),
        "system.posix_acl_default",
        &default_acl_owner_and_group(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let probe = t.join("probe");
    fs::write(&probe, b"x").unwrap();
    assert_eq!(
        fs::metadata(&probe).unwrap().mode() & 0o077,
        0o040,
        "the default ACL applies to new files here"
    );
    fs::remove_file(&probe).unwrap();
    check(&restore("acl", 0o022), "default ACL on the target");
}

#[test]
fn a_file_changing_while_read_is_reported_not_stored_silently() {
    let j = Job::new();
    write(&j.src.join("steady"), b"steady");
    let busy = j.src.join("busy.log");
    write(&busy, &pseudo_random(40_000_000, 5, false));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (busy, stop) = (busy.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&busy).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"log line\n").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let r = j.arca(&["--json", "backup", "j"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(
        r.code, 3,
        "a torn file must not pass silently: {}",
        r.stderr
    );
    let v = r.json();
    let errs = v["errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1, "{v}");
    assert!(errs[0]["path"].as_str().unwrap().ends_with("busy.log"));
    assert!(errs[0]["error"]
        .as_str()
        .unwrap()
        .contains("changed while it was read"));
    assert!(r.stderr.contains("busy.log"));
}

#[test]
fn paths_longer_than_path_max_are_listed_and_the_rest_is_kept() {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    let j = Job::new();
    write(&j.src.join("short"), b"short");
    // 24 levels of 200-byte names: about 4.8 KB, beyond PATH_MAX (4096).
    let mut dir = openat(
        rustix::fs::CWD,
        j.src.as_path(),
        OFlags::DIRECTORY | OFlags::RDONLY,
        Mode::empty(),
    )
    .unwrap();
    let name = "d".repeat(200);
    for _ in 0..24 {
        mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = openat(
            &dir,
            name.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
    }
    let f = openat(
        &dir,
        "deep.txt",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"deep").unwrap();
    let r = j.arca(&["--json", "backup", "j"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let v = r.json();
    let errs = v["errors"].as_array().unwrap();
    assert!(!errs.is_empty());
    assert!(errs
        .iter()
        .all(|e| e["path"].as_str().unwrap().len() > 4000));
    let (r, t) = j.restore_to("t", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fs::read(t.join("short")).unwrap(), b"short");
    // Clean up what std::fs cannot reach by path.
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(&j.src)
        .current_dir(j.env.path(""))
        .status();
}
