//! Everyday use through the real binary: signals, pipes, JSON, help, completions, secrets
//! from a command, diff and stats, quickstart, error hints.

use crate::common;

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
        b["total_bytes"].as_u64().unwrap(),
        b["new_bytes"].as_u64().unwrap(),
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
    let repo = env.path("repo");
    let key = env.key_job("k", &src, &repo);
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

#[test]
fn quickstart_refuses_another_source_and_warns_last() {
    let env = Env::new();
    let src = env.path("docs");
    write(&src.join("a.txt"), b"first source");
    let r = env.run(&["quickstart", "--source", s(&src)]).ok();
    assert!(!r.stdout.contains("next: arca backup"), "{}", r.stdout);
    let last = r
        .stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains("IMPORTANT") && last.contains(".key"),
        "the key warning is not last: {}",
        r.stderr
    );
    assert!(r.stderr.contains("same filesystem"), "{}", r.stderr);
    let other = env.path("other");
    write(&other.join("b.txt"), b"another source");
    let r = env.run(&["quickstart", "--source", s(&other)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--job"), "{}", r.stderr);
    // The same source again: an incremental, one JSON document under --json.
    let r = env.run(&["--json", "quickstart", "--source", s(&src)]).ok();
    assert_eq!(r.json()["full"], false);
}

#[test]
fn completions_man_pages_and_examples() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let r = env.run(&["completions", shell]).ok();
        assert!(
            r.stdout.contains("arca") && r.stdout.len() > 1000,
            "{shell}"
        );
        assert!(
            r.stdout.contains("rekey"),
            "{shell} completion lacks subcommands"
        );
    }
    let r = env.run(&["man"]).ok();
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH arca"),
        "{}",
        &r.stdout[..80]
    );
    let dir = env.path("man");
    env.run(&["man", "--out", s(&dir)]).ok();
    assert!(dir.join("arca.1").exists() && dir.join("arca-backup.1").exists());
    let r = env.run(&["restore", "--help"]).ok();
    assert!(
        r.stdout.contains("Examples:\n  arca restore"),
        "{}",
        r.stdout
    );
    // Global options are listed once (arca --help), not repeated on every command's page.
    assert!(
        !r.stdout.contains("--kmip-ca") && r.stdout.contains("`arca --help` lists them"),
        "{}",
        r.stdout
    );
    let top = env.run(&["--help"]).ok();
    assert!(
        top.stdout.contains("Global options:") && top.stdout.contains("--kmip-ca"),
        "{}",
        top.stdout
    );
}

/// Reads one byte of the command's output, closes the pipe, and checks the command ended
/// quietly (0, or 141 as after SIGPIPE), never with a panic.
fn closes_quietly(env: &Env, args: &[&str]) {
    use std::io::Read;
    let mut child = env
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    let _ = out.read(&mut b);
    drop(out);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        matches!(o.status.code(), Some(0) | Some(141)),
        "{args:?}: {:?} {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn closed_pipes_end_every_listing_command_quietly() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..4000 {
        write(
            &src.join(format!("d{}/file-with-a-long-name-{i}.txt", i % 20)),
            b"x",
        );
    }
    env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    for args in [
        &["ls", "j"][..],
        &["--json", "ls", "j"],
        &["find", "j", "file"],
        &["--json", "find", "j", "*.txt"],
        &["points", "j"],
        &["--json", "points", "j"],
        &["job", "list"],
        &["job", "show", "j"],
        &["job", "keyslots", "list", "j"],
        &["password", "list"],
        &["check", "j"],
        &["completions", "bash"],
        &["man"],
        &["--help"],
    ] {
        closes_quietly(&env, args);
    }
}

#[test]
fn output_to_a_pipe_has_no_escape_codes() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("ok.txt"), b"readable");
    write(&src.join("secret.txt"), b"unreadable");
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    env.passphrase_job("j", &src, PASS);
    let r = env.run(&["-v", "backup", "j"]);
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        !r.stdout.contains('\x1b') && !r.stderr.contains('\x1b'),
        "{:?}",
        r.stderr
    );
    if r.code == 3 {
        // Not root: the unreadable file is reported once.
        assert_eq!(r.stderr.matches("secret.txt").count(), 1, "{}", r.stderr);
    }
}

#[test]
fn diff_and_stats() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.txt"), b"version one");
    write(&src.join("b.txt"), b"to be removed");
    write(&src.join("d.txt"), b"mode changes");
    write(&src.join("big.bin"), &pseudo_random(2 << 20, 9, true));
    env.passphrase_job("j", &src, PASS);
    let p1 = env.run(&["--json", "backup", "j"]).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    write(&src.join("a.txt"), b"version two, longer");
    fs::remove_file(src.join("b.txt")).unwrap();
    write(&src.join("c.txt"), b"new");
    fs::set_permissions(src.join("d.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let p2 = env.run(&["--json", "backup", "j"]).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    let d = env.run(&["--json", "diff", "j", &p1[..8], &p2]).ok().json();
    let change = |path: &str| {
        d["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .map(|e| e["change"].as_str().unwrap().to_string())
    };
    assert_eq!(change("c.txt").as_deref(), Some("added"), "{d}");
    assert_eq!(change("b.txt").as_deref(), Some("removed"));
    assert_eq!(change("a.txt").as_deref(), Some("changed"));
    assert_eq!(change("d.txt").as_deref(), Some("metadata"));
    assert_eq!(change("big.bin"), None, "an unchanged file is listed");
    assert_eq!(
        (d["added"].as_u64(), d["removed"].as_u64()),
        (Some(1), Some(1))
    );
    let human = env.run(&["diff", "j", &p1, "latest"]).ok();
    assert!(
        human.stdout.contains("+    c.txt") && human.stdout.contains("-    b.txt"),
        "{}",
        human.stdout
    );

    let st = env.run(&["--json", "stats", "j"]).ok().json();
    assert_eq!(st["points"].as_array().unwrap().len(), 2);
    let total = st["total_bytes"].as_u64().unwrap();
    let unique = st["unique_bytes"].as_u64().unwrap();
    let stored = st["stored_bytes"].as_u64().unwrap();
    // Two points of nearly the same 2 MiB: deduplication makes unique about half the total.
    assert!(total > 4 << 20 && unique < total * 6 / 10, "{st}");
    assert!(stored > 0 && stored < unique, "{st}");
    assert!(env
        .run(&["stats", "j"])
        .ok()
        .stdout
        .contains("unique after deduplication"));
}

#[test]
fn json_backup_streams_status_lines_then_one_summary() {
    use std::io::Write;
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.txt"), b"x");
    env.passphrase_job("j", &src, PASS);
    let mut child = env
        .cmd(&[
            "--json",
            "backup",
            "j",
            "--stdin",
            "--stdin-name",
            "slow.bin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    for i in 0..10 {
        input
            .write_all(&pseudo_random(256 << 10, i, false))
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (last, status) = lines.split_last().unwrap();
    assert_eq!(last["message_type"], "summary", "{stdout}");
    assert!(!status.is_empty(), "no status line in {stdout}");
    for s in status {
        assert_eq!(s["message_type"], "status");
        assert!(
            s["done_bytes"].is_u64() && s["seconds_elapsed"].is_u64(),
            "{s}"
        );
    }
    let done: Vec<u64> = status
        .iter()
        .map(|s| s["done_bytes"].as_u64().unwrap())
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    let r = env.run(&["--json", "backup", "j"]).ok();
    assert_eq!(r.json()["message_type"], "summary");
}

/// A tree backup's totals (for the progress bar's ETA and `--json` status lines) come from
/// a pre-scan of the tree, run only when someone shows them.
#[tokio::test]
async fn the_pre_scan_counts_totals_only_when_they_are_shown() {
    use arca::engine::backup::Status;
    use arca::ops::backup::{backup_job, JobSource};
    use std::sync::atomic::Ordering::Relaxed;
    let env = Env::new();
    let src = env.path("src");
    for (i, n) in [10usize, 2000, 30_000].iter().enumerate() {
        write(
            &src.join(format!("d{i}/f.bin")),
            &pseudo_random(*n, i as u64, false),
        );
    }
    env.passphrase_job("j", &src, PASS);
    // The catalog's stored hash opens the chain: no passphrase needed.
    let s = arca::ops::Session::new(
        env.catalog.clone(),
        arca::resolve::Credentials::new(None, None),
    );
    for totals in [true, false] {
        let st = std::sync::Arc::new(Status {
            totals,
            ..Default::default()
        });
        let hidden = indicatif::ProgressBar::hidden();
        backup_job(
            &s,
            "j",
            JobSource::Tree,
            1,
            &Default::default(),
            hidden,
            st.clone(),
        )
        .await
        .unwrap();
        if totals {
            // The pre-scan runs beside the backup and may finish after it.
            let t0 = Instant::now();
            while !st.scanned.load(Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(st.scanned.load(Relaxed), "pre-scan never finished");
            assert_eq!(st.total_files.load(Relaxed), 3);
            assert_eq!(st.total_bytes.load(Relaxed), 32_010);
        } else {
            assert!(!st.scanned.load(Relaxed));
            assert_eq!(st.total_files.load(Relaxed), 0);
        }
        assert_eq!(st.files_done.load(Relaxed), 3);
    }
}

/// Every `arca ...` command a message suggests (in backticks) names an existing command,
/// and each of its `--flags` exists for that command.
fn hints_exist(stderr: &str) -> usize {
    let root = arca::cli::command();
    let mut n = 0;
    for hint in stderr.split('`').skip(1).step_by(2) {
        let Some(rest) = hint.strip_prefix("arca ") else {
            continue;
        };
        // Only the arca command itself: not what a shell pipes it into or runs after it.
        let rest = rest.split(" | ").next().unwrap_or_default();
        let rest = rest.split(" && ").next().unwrap_or_default();
        let mut cmd = &root;
        let mut words = rest.split_whitespace().peekable();
        while let Some(w) = words.peek() {
            match cmd
                .get_subcommands()
                .find(|s| s.get_name() == *w || s.get_all_aliases().any(|a| a == *w))
            {
                Some(s) => {
                    cmd = s;
                    words.next();
                }
                None => break,
            }
        }
        // Alternatives (`arca config export|import`): each must exist.
        if let Some(w) = words.peek().filter(|w| w.contains('|')) {
            for alt in w.split('|') {
                assert!(
                    cmd.get_subcommands().any(|s| s.get_name() == alt),
                    "hint `{hint}`: no command {alt}"
                );
            }
            n += 1;
            continue;
        }
        // A command word filled in at run time (`arca {} escrow ...`): checked by the runs.
        if cmd.get_subcommands().next().is_some() && words.peek().is_some_and(|w| w.contains('{')) {
            continue;
        }
        assert!(
            cmd.get_subcommands().next().is_none() || cmd.get_name() == "arca",
            "hint `{hint}` stops at a command group"
        );
        for w in rest.split_whitespace().filter(|w| w.starts_with("--")) {
            let flag = w.trim_start_matches("--").split('=').next().unwrap();
            let known = cmd.get_arguments().any(|a| a.get_long() == Some(flag))
                || root.get_arguments().any(|a| a.get_long() == Some(flag));
            assert!(
                known,
                "hint `{hint}`: --{flag} is not a flag of `{}`",
                cmd.get_name()
            );
        }
        n += 1;
    }
    n
}

#[test]
fn error_hints_name_commands_and_flags_that_exist() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.txt"), b"a");
    let repo = env.passphrase_job("j", &src, PASS);
    env.run(&["backup", "j"]).ok();
    let t = env.path("t");
    write(&t.join("x"), b"occupied");
    let mut hinted = 0;
    let mut case = |args: &[&str], vars: &[(&str, &str)], code: i32| {
        let r = env.run_env(args, vars);
        assert_eq!(r.code, code, "{args:?}: {}", r.stderr);
        hinted += hints_exist(&r.stderr);
        r.stderr
    };
    case(&["backup", "nosuchjob"], &[], 1);
    case(&["restore", "j", "--target", s(&t)], &[], 2);
    case(&["job", "encryption", "j", "--encryption", "none"], &[], 2);
    case(&["job", "keyslots", "remove", "j", "zz"], &[], 1); // never a hex prefix
    case(
        &[
            "job",
            "create",
            "x",
            "--repo",
            s(&env.path("nope")),
            "--source",
            s(&src),
            "--encryption",
            "none",
        ],
        &[],
        1,
    );
    case(&["points", "nosuchjob"], &[], 1);
    // A moved (or unmounted) repository: never a suggestion to create one there.
    fs::rename(&repo, env.path("moved")).unwrap();
    let e = case(&["backup", "j"], &[], 1);
    assert!(e.contains("mounted") && !e.contains("arca init"), "{e}");
    fs::rename(env.path("moved"), &repo).unwrap();
    // Each cause is printed once.
    let e = case(&["restore", "j", "--target", s(&t)], &[], 2);
    assert_eq!(e.matches("--overwrite").count(), 1, "{e}");
    assert!(hinted >= 5, "only {hinted} hints checked");
}

#[test]
fn missing_aws_credentials_are_their_own_error() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.txt"), b"a");
    let repo = env.path("repo");
    env.run(&["init", s(&repo)]).ok();
    let out = env
        .cmd(&[
            "job",
            "create",
            "k",
            "--repo",
            s(&repo),
            "--source",
            s(&src),
            "--encryption",
            "kms",
            "--kms-key",
            "alias/x",
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", env.path("home"))
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert!(
        err.contains("no AWS credentials") && err.contains("AWS_PROFILE"),
        "{err}"
    );
    assert!(!err.contains("could not be reached"), "{err}");
}

/// The static side of the audit: every `arca ...` hint written anywhere in the sources names
/// an existing command and existing flags.
#[test]
fn every_hint_in_the_sources_names_existing_commands_and_flags() {
    fn walk(p: &Path, out: &mut String) {
        for e in fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                // Doc comments and messages alike; one string per file keeps backticks paired.
                out.push_str(&fs::read_to_string(&p).unwrap().replace("\\\n", " "));
                out.push('`');
                out.push('`');
            }
        }
    }
    let mut all = String::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut all);
    let n = hints_exist(&all);
    assert!(n > 40, "only {n} hints found: the scan is broken");
}

#[test]
fn backups_of_four_jobs_run_at_once_and_locks_say_who_holds_them() {
    use std::io::Write;
    let env = Env::new();
    let repo = env.path("repo");
    let jobs = ["a", "b", "c", "d"];
    for (i, j) in jobs.iter().enumerate() {
        let src = env.path(&format!("src-{j}"));
        for k in 0..3 {
            write(
                &src.join(format!("f{k}.bin")),
                &pseudo_random(3 << 20, (i * 10 + k) as u64, false),
            );
        }
        if i == 0 {
            env.run(&["init", s(&repo)]).ok();
        }
        env.run_env(
            &[
                "job",
                "create",
                j,
                "--repo",
                s(&repo),
                "--source",
                s(&src),
                "--encryption",
                "passphrase",
                "--password",
                "team",
            ],
            &[("ARCA_PASSPHRASE", PASS)],
        )
        .ok();
    }
    // All four at once, with no waiting allowed: a backup takes the repository lock shared.
    let children: Vec<_> = jobs
        .iter()
        .map(|j| {
            env.cmd(&["--lock-wait", "0s", "backup", j])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for j in jobs {
        env.run(&["check", j, "--read-data"]).ok();
    }
    // A backup of job a holds its chain; a rekey of a cannot wait and names the holder; a
    // note left by a process that no longer runs is removed.
    let mut hold = env
        .cmd(&["backup", "a", "--stdin", "--stdin-name", "hold.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = hold.stdin.take().unwrap();
    input.write_all(b"held").unwrap();
    wait_for("the holder note", || {
        fs::read_dir(repo.join("locks"))
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .contains(&format!(".{}.", hold.id()))
                })
            })
            .unwrap_or(false)
    });
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let stale = repo.join("locks").join(format!("{host}.4000000.repo.json"));
    fs::write(
        &stale,
        format!(r#"{{"pid":4000000,"host":"{host}","command":"arca backup x","since":"2026-01-01T00:00:00Z","lock":"repository","kind":"shared"}}"#),
    )
    .unwrap();
    let r = env.run(&["--lock-wait", "0s", "job", "rekey", "a"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&format!("pid {}", hold.id())) && r.stderr.contains("backup a --stdin"),
        "{}",
        r.stderr
    );
    assert!(
        !stale.exists(),
        "the stale note was not removed: {}",
        r.stderr
    );
    // Other jobs are not held up by it.
    env.run(&["--lock-wait", "0s", "job", "rekey", "b"]).ok();
    drop(input);
    assert!(hold.wait().unwrap().success());
}

/// The walk stats entries through their directory's descriptor for the first levels and by
/// path below (so a deep tree does not hold a descriptor per level): a tree 80 levels deep
/// comes back whole, at every depth.
#[test]
fn a_tree_deeper_than_the_open_directories_the_walk_keeps_is_backed_up_whole() {
    let env = Env::new();
    let src = env.path("src");
    let mut d = src.clone();
    for level in 0..80 {
        d = d.join(format!("l{level}"));
        write(&d.join("f.txt"), format!("level {level}\n").as_bytes());
    }
    std::os::unix::fs::symlink("../../l0", d.join("link")).unwrap();
    env.passphrase_job("j", &src, PASS);
    let r = env.run(&["--json", "backup", "j"]).ok();
    assert_eq!(r.json()["files"], 80, "{}", r.stdout);
    let t = env.path("t");
    env.run(&["restore", "j", "--target", s(&t)]).ok();
    assert_eq!(snapshot(&src), snapshot(&t));
    // And an unchanged incremental finds every file unchanged, deep ones too.
    let r = env.run(&["--json", "backup", "j"]).ok();
    assert_eq!(r.json()["files_unchanged"], 80, "{}", r.stdout);
}
