//! A full disk, for real: the repository and a restore target on tiny tmpfs mounts (in a
//! private mount namespace made by `unshare`, so the test needs no privileges beyond user
//! namespaces and touches no host mount). A backup that runs out of space fails with
//! exit 1 and the OS's message, leaves nothing in the repository's `tmp/`, and the
//! repository checks clean and takes the next backup; a restore that runs out of space
//! leaves no file under a final name.

use crate::common;

use std::process::Command;

use common::*;

/// Runs `script` (sh, with `$A` the arca binary and `$1...` the arguments) inside a new
/// user and mount namespace, with the test environment's variables.
fn in_namespace(env: &Env, script: &str, args: &[&str]) -> Run {
    let base = env.cmd(&[]);
    let mut c = Command::new("unshare");
    c.args(["-rm", "sh", "-c", script, "sh"]).args(args);
    c.env_clear();
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("A", env!("CARGO_BIN_EXE_arca"))
        .env("ARCA_PASSPHRASE", "full-disk-pass");
    c.output().expect("run unshare (util-linux)").into()
}

const SCRIPT: &str = r#"
set -u
M=$1; SRC=$2; BIG=$3; OUT=$4; T=$5
mount -t tmpfs -o size=6m tmpfs "$M" || { echo MOUNT_FAILED; exit 99; }
"$A" -q init "$M/repo" >/dev/null || exit 98
"$A" -q job create j --repo "$M/repo" --source "$SRC" --encryption passphrase >/dev/null || exit 97
"$A" -q backup j >/dev/null 2>"$OUT/backup1.err"; echo "RC_FIRST=$?"
cp "$BIG" "$SRC/big.bin"
"$A" -q backup j >/dev/null 2>"$OUT/backup2.err"; echo "RC_FULL=$?"
echo "TMP_LEFT=$(ls -A "$M/repo/tmp" | wc -l)"
"$A" -q check j --read-data >/dev/null 2>"$OUT/check.err"; echo "RC_CHECK=$?"
rm "$SRC/big.bin"
"$A" -q backup j >/dev/null 2>"$OUT/backup3.err"; echo "RC_AFTER=$?"
"$A" --json points j >"$OUT/points.json" 2>/dev/null; echo "RC_POINTS=$?"
# A restore target with room for less than the files.
mount -t tmpfs -o size=48k tmpfs "$T" || { echo MOUNT_FAILED; exit 99; }
"$A" -q restore j --target "$T/out" >/dev/null 2>"$OUT/restore.err"; echo "RC_RESTORE=$?"
echo "RESTORED_FILES=$(find "$T/out" -type f 2>/dev/null | wc -l)"
"$A" -q restore j --target "$OUT/restored" >/dev/null 2>"$OUT/restore2.err"; echo "RC_RESTORE_ROOM=$?"
"#;

fn value(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in:\n{out}"))
        .to_string()
}

#[test]
fn a_full_disk_fails_cleanly_and_loses_nothing() {
    let env = Env::new();
    let (mnt, src, big, out, tgt) = (
        env.path("mnt"),
        env.path("src"),
        env.path("big.bin"),
        env.path("out"),
        env.path("tgt"),
    );
    for d in [&mnt, &src, &out, &tgt] {
        std::fs::create_dir_all(d).unwrap();
    }
    // 40 small compressible files (~160 KB) and an 8 MiB file that does not compress.
    for i in 0..40u64 {
        write(
            &src.join(format!("f{i:02}.txt")),
            &pseudo_random(4000, i, true),
        );
    }
    write(&big, &pseudo_random(8 << 20, 99, false));
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let r = in_namespace(
        &env,
        SCRIPT,
        &[&s(&mnt), &s(&src), &s(&big), &s(&out), &s(&tgt)],
    );
    let o = &r.stdout;
    assert!(!o.contains("MOUNT_FAILED"), "{o}\n{}", r.stderr);
    let err = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    assert_eq!(value(o, "RC_FIRST"), "0", "{}", err("backup1.err"));

    // The backup that does not fit: exit 1, the OS's reason, nothing half-written left.
    assert_eq!(value(o, "RC_FULL"), "1", "{o}");
    let e = err("backup2.err");
    assert!(e.contains("No space left on device"), "{e}");
    assert_eq!(value(o, "TMP_LEFT"), "0");
    assert_eq!(value(o, "RC_CHECK"), "0", "{}", err("check.err"));
    // With the big file gone the next backup fits, and the failed one is not a point.
    assert_eq!(value(o, "RC_AFTER"), "0", "{}", err("backup3.err"));
    assert_eq!(value(o, "RC_POINTS"), "0");
    let points: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("points.json")).unwrap()).unwrap();
    let n = points
        .as_array()
        .or_else(|| points["points"].as_array())
        .map(|a| a.len());
    assert_eq!(n, Some(2), "{points}");

    // The restore that does not fit: exit 1, the reason, no file under its final name.
    assert_eq!(value(o, "RC_RESTORE"), "1", "{o}");
    let e = err("restore.err");
    assert!(e.contains("No space left on device"), "{e}");
    assert_eq!(value(o, "RESTORED_FILES"), "0", "{o}");
    // With room, the same point restores whole.
    assert_eq!(value(o, "RC_RESTORE_ROOM"), "0", "{}", err("restore2.err"));
    assert_eq!(snapshot(&src), snapshot(&out.join("restored")));
}
