//! Every command's `--json` output (and error object) validated against the JSON Schema in
//! docs/json-schema.json: one document per command, the same names for the same things.

use crate::common;

use common::*;
use serde_json::Value;

use common::validate_json as validate;

const PASS: &str = "json schema passphrase";

/// Runs a command with --json; its stdout must be exactly one JSON document that matches
/// the schema's definition `def`.
fn ok(env: &Env, def: &str, args: &[&str], vars: &[(&str, &str)]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let r = env.run_env(&a, vars).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not exactly one JSON document ({e}): {}",
            r.stdout
        )
    });
    validate(def, &v);
    v
}

/// A failing command with --json: one error object on stderr, its exit code inside.
fn err(env: &Env, args: &[&str], vars: &[(&str, &str)], code: i32) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let r = env.run_env(&a, vars);
    assert_eq!(r.code, code, "{args:?}: {}", r.stderr);
    let line = r.stderr.trim_end().lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{args:?}: the error is not JSON ({e}): {}", r.stderr));
    validate("error", &v);
    assert_eq!(v["error"]["exit_code"], code);
}

#[test]
fn every_command_matches_the_json_schema() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.txt"), b"first");
    write(&src.join("d/b.txt"), b"second");
    let repo = env.path("repo");
    let r = repo.to_str().unwrap();
    let sdir = src.to_str().unwrap();
    let pass = [("ARCA_PASSPHRASE", PASS)];
    ok(&env, "init", &["init", r], &[]);
    ok(
        &env,
        "password create",
        &["password", "create", "ops"],
        &pass,
    );
    ok(
        &env,
        "job create",
        &[
            "job",
            "create",
            "j",
            "--repo",
            r,
            "--source",
            sdir,
            "--encryption",
            "passphrase",
            "--password",
            "ops",
        ],
        &[],
    );
    ok(&env, "job list", &["job", "list"], &[]);
    ok(&env, "job show", &["job", "show", "j"], &[]);
    let b1 = ok(&env, "backup", &["backup", "j"], &[]);
    write(&src.join("c.txt"), b"third");
    let b2 = ok(&env, "backup", &["backup", "j"], &[]);
    ok(&env, "points", &["points", "j"], &[]);
    ok(&env, "ls", &["ls", "j"], &[]);
    ok(&env, "find", &["find", "j", "*.txt"], &[]);
    let t = env.path("t");
    ok(
        &env,
        "restore",
        &["restore", "j", "--target", t.to_str().unwrap()],
        &[],
    );
    ok(&env, "check", &["check", "j", "--read-data"], &[]);
    ok(&env, "keys resolve", &["keys", "resolve", "j"], &[]);
    ok(
        &env,
        "diff",
        &[
            "diff",
            "j",
            b1["point_id"].as_str().unwrap(),
            b2["point_id"].as_str().unwrap(),
        ],
        &[],
    );
    ok(&env, "stats", &["stats", "j"], &[]);
    let f = ok(
        &env,
        "forget",
        &["forget", "j", "--keep-last", "1", "--dry-run"],
        &[],
    );
    assert_eq!(f["removed"].as_array().unwrap().len(), 1);
    let f = ok(
        &env,
        "forget",
        &["forget", "j", "--keep-last", "1", "--prune"],
        &[],
    );
    assert!(f["prune"]["stats"].is_object());
    ok(&env, "prune", &["prune", "j", "--dry-run"], &[]);
    ok(&env, "prune", &["prune", "j"], &[]);
    ok(
        &env,
        "job keyslots list",
        &["job", "keyslots", "list", "j"],
        &[],
    );
    ok(
        &env,
        "keyfile generate",
        &[
            "keyfile",
            "generate",
            "--out",
            env.path("k.key").to_str().unwrap(),
        ],
        &[],
    );
    ok(&env, "password list", &["password", "list"], &[]);
    ok(&env, "password show", &["password", "show", "ops"], &[]);
    ok(&env, "job rekey", &["job", "rekey", "j"], &[]);
    ok(&env, "job deactivate", &["job", "deactivate", "j"], &[]);
    ok(&env, "job activate", &["job", "activate", "j"], &[]);
    ok(
        &env,
        "catalog rebuild",
        &["catalog", "rebuild", "--repo", r],
        &[],
    );
    ok(&env, "job adopt", &["job", "adopt", "j", "--repo", r], &[]);
    ok(&env, "drill", &["drill", "j"], &pass);
    let bundle = env.path("b.bundle");
    let bp = [("ARCA_BUNDLE_PASSPHRASE", "bundle")];
    ok(
        &env,
        "config export",
        &["config", "export", "--out", bundle.to_str().unwrap()],
        &bp,
    );
    ok(
        &env,
        "config import",
        &["config", "import", bundle.to_str().unwrap()],
        &bp,
    );
    ok(
        &env,
        "password rotate",
        &["password", "rotate", "ops"],
        &[("ARCA_NEW_PASSPHRASE", "rotated")],
    );
    ok(&env, "kms escrow status", &["kms", "escrow", "status"], &[]);
    ok(
        &env,
        "kms escrow disable",
        &["kms", "escrow", "disable"],
        &[],
    );
    ok(
        &env,
        "password create",
        &["password", "create", "spare"],
        &pass,
    );
    ok(
        &env,
        "password delete",
        &["password", "delete", "spare"],
        &[],
    );
    ok(&env, "migrate", &["migrate", "--repo", r], &[]);
    let q = env.path("q");
    write(&q.join("x.txt"), b"quick");
    ok(
        &env,
        "quickstart",
        &["quickstart", "--source", q.to_str().unwrap(), "--job", "q"],
        &[],
    );

    // Errors: one JSON object on stderr, with the documented exit code.
    err(&env, &["backup", "nosuchjob"], &[], 1);
    err(
        &env,
        &["restore", "j", "--target", t.to_str().unwrap()],
        &[],
        2,
    );
    err(
        &env,
        &[
            "keys",
            "resolve",
            "j",
            "--repo",
            r,
            "--catalog",
            env.path("fresh.db").to_str().unwrap(),
        ],
        &[("ARCA_PASSPHRASE", "wrong")],
        12,
    );
    err(
        &env,
        &["config", "import", bundle.to_str().unwrap()],
        &[("ARCA_BUNDLE_PASSPHRASE", "wrong")],
        12,
    );
}
