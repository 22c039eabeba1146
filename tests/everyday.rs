//! Everyday use through the real binary: signals, pipes, JSON, help, completions, secrets
//! from a command, diff and stats, quickstart, error hints.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const PASS: &str = "everyday passphrase";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A job over `files` incompressible files of `mb` MiB each.
fn big_job(env: &Env, files: usize, mb: usize) -> (PathBuf, PathBuf) {
    let src = env.path("src");
    for i in 0..files {
        write(
            &src.join(format!("f{i}.bin")),
            &pseudo_random(mb << 20, i as u64 + 1, false),
        );
    }
    let repo = env.passphrase_job("j", &src, PASS);
    (src, repo)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal(child: &std::process::Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn sigint_during_backup_keeps_a_checkpoint_that_the_next_backup_reuses() {
    let env = Env::new();
    let (src, repo) = big_job(&env, 8, 24);
    let child = env
        .cmd(&["backup", "j"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first pack", || !packs(&repo).is_empty());
    signal(&child, rustix::process::Signal::INT);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("checkpoint") && stderr.contains("arca backup j"),
        "{stderr}"
    );
    let kept = packs(&repo);
    assert!(!kept.is_empty());
    // The repository checks clean.
    env.run(&["check", "j", "--read-data"]).ok();
    // The next backup reuses what the interrupted one stored: its packs stay, and less than
    // the whole source is new.
    let b = env.run(&["--json", "backup", "j"]).ok().json();
    let (total, new) = (
        b["bytes_total"].as_u64().unwrap(),
        b["bytes_new"].as_u64().unwrap(),
    );
    assert!(new < total, "nothing reused: {b}");
    for p in &kept {
        assert!(p.exists(), "a pack of the interrupted run was dropped");
    }
    // The checkpoint is listed, and "latest" is the complete point.
    let pts = env.run(&["--json", "points", "j"]).ok().json();
    let kinds: Vec<&str> = pts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["checkpoint", "tree"], "{pts}");
    let t = env.path("t");
    env.run(&["restore", "j", "--target", s(&t)]).ok();
    assert_eq!(snapshot(&src), snapshot(&t));
}

#[test]
fn sigterm_during_restore_leaves_no_partial_file() {
    let env = Env::new();
    let (src, _repo) = big_job(&env, 6, 24);
    env.run(&["backup", "j"]).ok();
    let t = env.path("t");
    let child = env
        .cmd(&["restore", "j", "--target", s(&t)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("a file being restored", || {
        fs::read_dir(&t).map(|d| d.count() > 0).unwrap_or(false)
    });
    signal(&child, rustix::process::Signal::TERM);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(0) {
        // The restore won the race; it must then be complete.
        assert_eq!(snapshot(&src), snapshot(&t));
        return;
    }
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("restore interrupted"), "{stderr}");
    // No file under its final name, no temporary file left.
    let left: Vec<_> = fs::read_dir(&t)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    env.run(&["restore", "j", "--target", s(&t)]).ok();
    assert_eq!(snapshot(&src), snapshot(&t));
}

#[test]
fn password_and_key_commands_follow_restics_precedence() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.txt"), b"from a command");
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    let fresh = |name: &str| env.path(name).join("c.db");
    let resolve = |cat: &Path, extra: &[&str], vars: &[(&str, &str)]| {
        let mut args = extra.to_vec();
        let repo = env.path("repo");
        args.extend_from_slice(&[
            "keys",
            "resolve",
            "j",
            "--repo",
            s(&repo),
            "--catalog",
            s(cat),
        ]);
        env.run_env(&args, vars)
    };
    // The command's output is the passphrase.
    let cmd = format!("printf '%s' '{PASS}'");
    let r = resolve(&fresh("c1"), &["--password-command", &cmd], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("via passphrase"), "{}", r.stdout);
    // A command (here from the environment) comes before ARCA_PASSPHRASE.
    let r = resolve(
        &fresh("c2"),
        &[],
        &[
            ("ARCA_PASSWORD_COMMAND", "echo not-the-passphrase"),
            ("ARCA_PASSPHRASE", PASS),
        ],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    // A command and a passphrase file together are refused, as restic does.
    let pf = env.path("pass.txt");
    fs::write(&pf, PASS).unwrap();
    let r = resolve(
        &fresh("c3"),
        &["--password-command", &cmd, "--passphrase-file", s(&pf)],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("mutually exclusive"), "{}", r.stderr);
    // A failing command is an error naming it (no passphrase: exit 12), never an empty one.
    let r = resolve(&fresh("c4"), &["--password-command", "exit 3"], &[]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("failed"), "{}", r.stderr);
    // The raw key from a command.
    let key = env.path("k.key");
    env.run(&["key", "generate", "--out", s(&key)]).ok();
    let repo = env.path("repo");
    env.run(&[
        "--key-file",
        s(&key),
        "job",
        "create",
        "k",
        "--repo",
        s(&repo),
        "--source",
        s(&src),
        "--encryption",
        "key",
    ])
    .ok();
    env.run(&["--key-file", s(&key), "backup", "k"]).ok();
    let kc = format!("cat {}", s(&key));
    let r = env.run(&[
        "--key-command",
        &kc,
        "keys",
        "resolve",
        "k",
        "--repo",
        s(&repo),
        "--catalog",
        s(&fresh("c5")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("via key"), "{}", r.stdout);
}
