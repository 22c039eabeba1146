//! AWS KMS against a real KMS-compatible server (moto on loopback, started by
//! ./scripts/test.sh): KMS jobs, keyslots, escrow, the reinstall scenario, the resolver's
//! tiers, the recovery drill and the number of KMS requests.

use crate::common;

use std::fs;

use common::*;

const PASS: &str = "escrowed passphrase";

fn tree(env: &Env, files: usize) -> std::path::PathBuf {
    let src = env.path("src");
    for i in 0..files {
        write(
            &src.join(format!("d{}/f{i}.bin", i % 7)),
            &pseudo_random(3000 + i * 911, i as u64, i % 3 == 0),
        );
    }
    write(
        &src.join("big.bin"),
        &pseudo_random(5 * 1024 * 1024, 42, true),
    );
    src
}

fn init(env: &Env) -> std::path::PathBuf {
    let repo = env.path("repo");
    env.run(&["init", repo.to_str().unwrap()]).ok();
    repo
}

/// moto's DisableKey fails on an ARN (AWS accepts both): admin calls use the bare key id.
fn key_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap()
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn kms_job_round_trip_and_key_validation() {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let alias = format!("alias/arca-test-{}", &key[key.len() - 12..]);
    admin
        .create_alias()
        .alias_name(&alias)
        .target_key_id(&key)
        .send()
        .await
        .unwrap();
    let env = Env::new();
    let src = tree(&env, 20);
    let repo = init(&env);
    env.run(&[
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
        &alias,
    ])
    .ok();
    let chain: serde_json::Value = serde_json::from_slice(
        &fs::read(
            fs::read_dir(repo.join("chains"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .unwrap(),
    )
    .unwrap();
    let slot = &chain["keyslots"][0];
    assert_eq!(slot["provider"], "kms");
    assert_eq!(
        slot["key_arn"],
        key.as_str(),
        "the alias is resolved to the key ARN"
    );
    let b = env.run(&["--json", "backup", "k"]).ok().json();
    assert_eq!(b["tier"], "kms");
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    // After a reinstall the user names the KMS key they trust (strict mode).
    env.set_env("ARCA_TRUST_KMS_KEYS", &key);
    let t = env.path("t");
    let r = env
        .run(&[
            "restore",
            "k",
            "--repo",
            s(&repo),
            "--target",
            s(&t),
            "--explain",
        ])
        .ok();
    assert!(r.stderr.contains("opened via: kms"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&t));

    // DescribeKey at setup: a missing key and a disabled key are refused, naming the key.
    let r = env.run(&[
        "job",
        "create",
        "x",
        "--repo",
        s(&repo),
        "--source",
        s(&src),
        "--encryption",
        "kms",
        "--kms-key",
        "alias/does-not-exist",
    ]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("alias/does-not-exist") && r.stderr.contains("NotFoundException"),
        "{}",
        r.stderr
    );
    let k2 = new_kms_key(&admin).await;
    admin
        .disable_key()
        .key_id(key_id(&k2))
        .send()
        .await
        .unwrap();
    let r = env.run(&[
        "job",
        "create",
        "y",
        "--repo",
        s(&repo),
        "--source",
        s(&src),
        "--encryption",
        "kms",
        "--kms-key",
        &k2,
    ]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains(&k2) && r.stderr.contains("not enabled"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::read_dir(repo.join("jobs")).unwrap().count(),
        1,
        "a refused job was written"
    );
}

/// The reinstall scenario of the issue, step by step, with byte-for-byte comparisons. It runs
/// on a moto server that enforces IAM authentication, so "KMS denied" is a real refusal.
#[test]
fn reinstall_scenario_escrow_then_passphrase_then_corrupted() {
    let kms = AuthKms::start();
    let ok = kms.allowed();
    let env = Env::new();
    let src = tree(&env, 30);
    let repo = init(&env);
    let with = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        ok.iter()
            .chain(extra.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let run = |args: &[&str], e: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.run_env(args, &refs)
    };
    let pass = with(&[("ARCA_PASSPHRASE", PASS)]);
    let plain = with(&[]);
    run(
        &[
            "job",
            "create",
            "nightly",
            "--repo",
            s(&repo),
            "--source",
            s(&src),
            "--encryption",
            "passphrase",
        ],
        &pass,
    )
    .ok();
    run(&["kms", "escrow", "enable", "--key", &kms.key_arn], &plain).ok();
    let st = run(&["--json", "kms", "escrow", "status"], &plain)
        .ok()
        .json();
    assert_eq!(st["enabled"], true);
    assert_eq!(st["records"][0]["password"], "nightly");
    let list = run(&["--json", "password", "list"], &plain).ok();
    assert_eq!(list.json()[0]["escrowed"], true);
    assert!(
        !list.stdout.contains("hash\""),
        "the password list must never show a hash"
    );
    let b = run(&["--json", "backup", "nightly"], &plain).ok().json();
    let point = b["point_id"].as_str().unwrap().to_string();
    assert_eq!(
        repo.join("escrow").read_dir().unwrap().count(),
        1,
        "the escrow record is in the repository"
    );

    // Reinstall: no catalog. Restore with no passphrase at all: tier 2 (KMS escrow).
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    // After a reinstall the user names the KMS key they trust (strict mode).
    env.set_env("ARCA_TRUST_KMS_KEYS", &kms.key_arn);
    let t1 = env.path("t1");
    let r = run(
        &[
            "restore",
            "nightly",
            "--repo",
            s(&repo),
            "--target",
            s(&t1),
            "--explain",
        ],
        &plain,
    )
    .ok();
    assert!(r.stderr.contains("opened via: kms"), "{}", r.stderr);
    assert!(
        r.stderr.contains("escrow record of password 'nightly'"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(&src), snapshot(&t1));
    // ... and the catalog got the hash back (tier 1 next time).
    let t1b = env.path("t1b");
    let r = run(
        &[
            "restore",
            "nightly",
            "--repo",
            s(&repo),
            "--target",
            s(&t1b),
        ],
        &plain,
    )
    .ok();
    assert!(r.stderr.contains("opened via: catalog"), "{}", r.stderr);

    // KMS denied (bad credentials), fresh catalog: without a passphrase exit 12; with it, tier 3.
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    // After a reinstall the user names the KMS key they trust (strict mode).
    env.set_env("ARCA_TRUST_KMS_KEYS", &kms.key_arn);
    let t2 = env.path("t2");
    let r = env.run_env(
        &[
            "restore",
            "nightly",
            "--repo",
            s(&repo),
            "--target",
            s(&t2),
            "--explain",
        ],
        &kms.bogus(),
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("credentials were rejected") || r.stderr.contains("AccessDenied"),
        "explain names the KMS refusal: {}",
        r.stderr
    );
    assert!(!t2.exists());
    let mut bogus_pass = kms.bogus();
    bogus_pass.push(("ARCA_PASSPHRASE", PASS));
    let r = env
        .run_env(
            &[
                "restore",
                "nightly",
                "--repo",
                s(&repo),
                "--target",
                s(&t2),
                "--explain",
            ],
            &bogus_pass,
        )
        .ok();
    assert!(r.stderr.contains("opened via: passphrase"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&t2));
    // A known identity without KMS permissions is AccessDenied, also reported.
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    // After a reinstall the user names the KMS key they trust (strict mode).
    env.set_env("ARCA_TRUST_KMS_KEYS", &kms.key_arn);
    let r = env.run_env(
        &[
            "keys",
            "resolve",
            "nightly",
            "--repo",
            s(&repo),
            "--explain",
        ],
        &kms.denied(),
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("AccessDenied"), "{}", r.stderr);

    // The salt removed from the point's metadata, KMS denied: corrupted, exit 13.
    let pf = repo.join(format!("points/{point}.json"));
    let mut rec: serde_json::Value = serde_json::from_slice(&fs::read(&pf).unwrap()).unwrap();
    rec["kdf"] = serde_json::Value::Null;
    fs::write(&pf, serde_json::to_vec(&rec).unwrap()).unwrap();
    let t3 = env.path("t3");
    let r = env.run_env(
        &["restore", "nightly", "--repo", s(&repo), "--target", s(&t3)],
        &bogus_pass,
    );
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("recovery point {point}"))
            && r.stderr.contains("corrupted: no salt"),
        "{}",
        r.stderr
    );
    assert!(!t3.exists());
}

#[test]
fn two_keyslots_either_opens() {
    let kms = AuthKms::start();
    let env = Env::new();
    let src = tree(&env, 10);
    let repo = init(&env);
    let ok = kms.allowed();
    env.run_env(
        &[
            "job",
            "create",
            "j",
            "--repo",
            s(&repo),
            "--source",
            s(&src),
            "--encryption",
            "kms",
            "--kms-key",
            &kms.key_arn,
        ],
        &ok,
    )
    .ok();
    // A point made before the passphrase keyslot existed.
    let early = env.run_env(&["--json", "backup", "j"], &ok).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ok_pass = ok.clone();
    ok_pass.push(("ARCA_PASSPHRASE", PASS));
    env.run_env(&["job", "keys", "add", "j", "--password", "ops"], &ok_pass)
        .ok();
    let slots = env.run(&["--json", "job", "keys", "list", "j"]).ok().json();
    assert_eq!(slots.as_array().unwrap().len(), 2);
    env.run_env(&["backup", "j"], &ok).ok();
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    // After a reinstall the user names the KMS key they trust (strict mode).
    env.set_env("ARCA_TRUST_KMS_KEYS", &kms.key_arn);
    // KMS opens it, no passphrase needed.
    let t1 = env.path("t1");
    let r = env
        .run_env(
            &["restore", "j", "--repo", s(&repo), "--target", s(&t1)],
            &ok,
        )
        .ok();
    assert!(r.stderr.contains("opened via: kms"), "{}", r.stderr);
    // KMS refuses: the passphrase keyslot opens it.
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    // After a reinstall the user names the KMS key they trust (strict mode).
    env.set_env("ARCA_TRUST_KMS_KEYS", &kms.key_arn);
    let mut bad_pass = kms.bogus();
    bad_pass.push(("ARCA_PASSPHRASE", PASS));
    let t2 = env.path("t2");
    let r = env
        .run_env(
            &[
                "restore",
                "j",
                "--repo",
                s(&repo),
                "--target",
                s(&t2),
                "--explain",
            ],
            &bad_pass,
        )
        .ok();
    assert!(r.stderr.contains("opened via: passphrase"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&t1));
    assert_eq!(snapshot(&src), snapshot(&t2));
    // The early point got the salt when the keyslot was added: the passphrase opens it too.
    let t3 = env.path("t3");
    let r = env
        .run_env(
            &[
                "restore",
                "j",
                &early[..8],
                "--repo",
                s(&repo),
                "--target",
                s(&t3),
            ],
            &bad_pass,
        )
        .ok();
    assert!(
        r.stderr.contains("opened via: passphrase") || r.stderr.contains("opened via: catalog"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(&src), snapshot(&t3));
}

#[tokio::test]
async fn keyslot_remove_never_removes_the_last() {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let env = Env::new();
    let src = tree(&env, 3);
    let repo = init(&env);
    env.run_env(
        &[
            "job",
            "create",
            "j",
            "--repo",
            s(&repo),
            "--source",
            s(&src),
            "--encryption",
            "passphrase",
        ],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    env.run(&["job", "keys", "add", "j", "--kms-key", &key])
        .ok();
    let slots = env.run(&["--json", "job", "keys", "list", "j"]).ok().json();
    let pass_slot = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["provider"] == "passphrase")
        .unwrap()["slot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let kms_slot = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["provider"] == "kms")
        .unwrap()["slot_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.run(&["job", "keys", "remove", "j", &pass_slot[..8]])
        .ok();
    let r = env.run(&["job", "keys", "remove", "j", &kms_slot[..8]]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("last one"), "{}", r.stderr);
    // The passphrase no longer opens the chain; KMS does.
    env.run(&["backup", "j"]).ok();
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    // After a reinstall the user names the KMS key they trust (strict mode).
    env.set_env("ARCA_TRUST_KMS_KEYS", &key);
    let t = env.path("t");
    // A passphrase given explicitly is never ignored: it opens nothing now, so exit 12.
    let r = env.run_env(
        &["restore", "j", "--repo", s(&repo), "--target", s(&t)],
        &[("ARCA_PASSPHRASE", PASS)],
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("no passphrase keyslot"), "{}", r.stderr);
    assert!(is_empty_or_missing(&t));
    let r = env
        .run(&["restore", "j", "--repo", s(&repo), "--target", s(&t)])
        .ok();
    assert!(r.stderr.contains("opened via: kms"), "{}", r.stderr);
}

/// KMS is called per job and point, never per file or chunk.
#[tokio::test]
async fn kms_requests_do_not_grow_with_files_or_chunks() {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let env = Env::new();
    let src = env.path("src");
    // 10,000 small distinct files (they share bundles) and 64 files of a chunk each.
    for i in 0..10_000u32 {
        write(
            &src.join(format!("d{:03}/f{i}", i % 100)),
            format!("file {i} {}", i.wrapping_mul(2654435761)).as_bytes(),
        );
    }
    for i in 0..64u64 {
        write(
            &src.join(format!("big/b{i}")),
            &pseudo_random(160 << 10, 2 * i + 1, false),
        );
    }
    let repo = init(&env);
    env.run(&[
        "job",
        "create",
        "j",
        "--repo",
        s(&repo),
        "--source",
        s(&src),
        "--encryption",
        "kms",
        "--kms-key",
        &key,
    ])
    .ok();
    let b = env.run(&["--json", "backup", "j"]).ok().json();
    assert!(b["files"].as_u64().unwrap() >= 10_064, "{b}");
    assert!(b["chunks_new"].as_u64().unwrap() >= 64, "{b}");
    assert!(b["bundles"].as_u64().unwrap() >= 1, "{b}");
    let n = b["kms_requests"].as_u64().unwrap();
    assert!((1..=3).contains(&n), "backup made {n} KMS requests");
    let t = env.path("t");
    let r = env
        .run(&[
            "--json",
            "restore",
            "j",
            "--repo",
            s(&repo),
            "--target",
            s(&t),
        ])
        .ok()
        .json();
    assert_eq!(r["files"], 10_064);
    let n = r["kms_requests"].as_u64().unwrap();
    assert!((1..=3).contains(&n), "restore made {n} KMS requests");
}

#[tokio::test]
async fn fail_closed_when_kms_is_unreachable() {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let env = Env::new();
    let src = tree(&env, 5);
    let repo = init(&env);
    env.run(&[
        "job",
        "create",
        "j",
        "--repo",
        s(&repo),
        "--source",
        s(&src),
        "--encryption",
        "kms",
        "--kms-key",
        &key,
    ])
    .ok();
    env.run(&["backup", "j"]).ok();
    let before = du(&repo);
    let points = fs::read_dir(repo.join("points")).unwrap().count();
    // A closed port on loopback: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = env.path("cfg.toml");
    fs::write(&cfg, "[kms]\ntimeout_seconds = 3\nmax_attempts = 2\n").unwrap();
    write(&src.join("new.txt"), b"must not be written anywhere");
    let r = env.run(&[
        "--config",
        s(&cfg),
        "--kms-endpoint",
        &format!("http://127.0.0.1:{closed}"),
        "backup",
        "j",
    ]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("could not be reached"), "{}", r.stderr);
    assert_eq!(
        fs::read_dir(repo.join("points")).unwrap().count(),
        points,
        "a point was written"
    );
    assert_eq!(
        du(&repo),
        before,
        "data was written while KMS was unreachable"
    );
}

#[test]
fn drill_reports_recoverable_and_unrecoverable_points() {
    let kms = AuthKms::start();
    let env = Env::new();
    let src = tree(&env, 5);
    let repo = init(&env);
    let ok = kms.allowed();
    let mut ok_pass = ok.clone();
    ok_pass.push(("ARCA_PASSPHRASE", PASS));
    env.run_env(
        &[
            "job",
            "create",
            "j",
            "--repo",
            s(&repo),
            "--source",
            s(&src),
            "--encryption",
            "passphrase",
        ],
        &ok_pass,
    )
    .ok();
    env.run_env(&["kms", "escrow", "enable", "--key", &kms.key_arn], &ok)
        .ok();
    let p1 = env.run(&["--json", "backup", "j"]).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    write(&src.join("more.txt"), b"more");
    let p2 = env.run(&["--json", "backup", "j"]).ok().json()["point_id"]
        .as_str()
        .unwrap()
        .to_string();
    let repo_before = snapshot(&repo);
    let catalog_before = fs::read(&env.catalog).unwrap();

    // Both points recoverable through KMS and through the passphrase.
    let d = env
        .run_env(&["--json", "drill", "--repo", s(&repo)], &ok_pass)
        .ok()
        .json();
    assert_eq!(d["points"], 2);
    assert_eq!(d["unrecoverable"], 0);
    for r in d["results"].as_array().unwrap() {
        let paths: Vec<_> = r["paths"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["ok"] == true)
            .map(|p| p["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.contains(&"kms") && paths.contains(&"passphrase"),
            "{r}"
        );
    }
    assert_eq!(
        snapshot(&repo),
        repo_before,
        "the drill wrote to the repository"
    );
    assert_eq!(
        fs::read(&env.catalog).unwrap(),
        catalog_before,
        "the drill wrote to the catalog"
    );

    // KMS refuses and point 2's salt is gone: point 1 recoverable by passphrase only, point 2 not at all.
    let pf = repo.join(format!("points/{p2}.json"));
    let mut rec: serde_json::Value = serde_json::from_slice(&fs::read(&pf).unwrap()).unwrap();
    rec["kdf"] = serde_json::Value::Null;
    fs::write(&pf, serde_json::to_vec(&rec).unwrap()).unwrap();
    let mut bad_pass = kms.bogus();
    bad_pass.push(("ARCA_PASSPHRASE", PASS));
    let r = env.run_env(&["--json", "drill", "--repo", s(&repo)], &bad_pass);
    assert_eq!(r.code, 12, "{}", r.stderr);
    let d = r.json();
    assert_eq!(d["unrecoverable"], 1);
    let by_id = |id: &str| {
        d["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["point_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&p1)["recoverable"], true);
    assert_eq!(by_id(&p2)["recoverable"], false);
    let p2_paths = by_id(&p2)["paths"].to_string();
    assert!(p2_paths.contains("no salt"), "{p2_paths}");
    assert!(
        p2_paths.contains("credentials were rejected") || p2_paths.contains("AccessDenied"),
        "{p2_paths}"
    );
    // Human output names the unrecoverable point.
    let r = env.run_env(&["drill", "j"], &bad_pass);
    assert_eq!(r.code, 12);
    assert!(
        r.stdout.contains(&format!("{} ", &p2[..8])) && r.stdout.contains("UNRECOVERABLE"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn escrow_disable_removes_records_and_password_commands() {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let env = Env::new();
    let src = tree(&env, 2);
    let repo = init(&env);
    let pass = [("ARCA_PASSPHRASE", PASS)];
    env.run_env(
        &["password", "create", "ops", "--description", "ops team"],
        &pass,
    )
    .ok();
    env.run(&["kms", "escrow", "enable", "--key", &key]).ok();
    // Attached later: escrowed when attached.
    env.run(&[
        "job",
        "create",
        "j",
        "--repo",
        s(&repo),
        "--source",
        s(&src),
        "--encryption",
        "passphrase",
        "--password",
        "ops",
    ])
    .ok();
    let show = env.run(&["--json", "password", "show", "ops"]).ok().json();
    assert_eq!(show["escrowed"], true);
    assert_eq!(show["jobs"][0], "j");
    assert_eq!(show["description"], "ops team");
    let r = env.run(&["password", "delete", "ops"]);
    assert_eq!(r.code, 2, "a password in use is not deleted: {}", r.stderr);
    env.run(&["kms", "escrow", "disable"]).ok();
    assert_eq!(repo.join("escrow").read_dir().unwrap().count(), 0);
    let st = env.run(&["--json", "kms", "escrow", "status"]).ok().json();
    assert_eq!(st["enabled"], false);
    assert_eq!(
        env.run(&["--json", "password", "show", "ops"]).ok().json()["escrowed"],
        false
    );
}

/// The shared key-provider suite, for the AWS KMS provider.
#[tokio::test]
async fn shared_provider_suite_aws_kms() {
    use arca::keys::aws_kms::{KmsClient, KmsProvider, KmsSettings};
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let settings = |region: &str| KmsSettings {
        region: Some(region.into()),
        endpoint: Some(kms_endpoint()),
        profile: None,
        timeout_seconds: Some(10.0),
        max_attempts: Some(2),
        trusted_keys: Vec::new(),
    };
    // Credentials for the in-process client (children get theirs from Env::cmd).
    crate::common::in_process_aws_credentials();
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let good = KmsProvider::new(
        std::sync::Arc::new(KmsClient::new(&settings("us-east-1")).await.unwrap()),
        Some(key),
    );
    // The same kind of provider, refused: in another region the key does not exist.
    let wrong = KmsProvider::new(
        std::sync::Arc::new(KmsClient::new(&settings("eu-west-3")).await.unwrap()),
        None,
    );
    let other = arca::keys::raw::RawKeyProvider::new(arca::crypto::SecretKey::random());
    arca::keys::provider_suite::run(&good, &wrong, &other).await;
}

/// An attacker with write access redirects a KMS job to a chain whose keyslot it made with
/// its own KMS key (and a valid MAC under that chain's key). The victim's catalog refuses the
/// redirect (exit 14); without a catalog, arca never asks KMS to use the attacker's key.
#[tokio::test]
async fn kms_redirect_to_an_attackers_key_is_refused() {
    use arca::keys::aws_kms::{KmsClient, KmsProvider, KmsSettings};
    use arca::keys::{KeyProvider, SlotContext};
    use arca::repo::format::*;
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let evil_key = new_kms_key(&admin).await;
    let env = Env::new();
    let src = tree(&env, 5);
    let repo = init(&env);
    env.run(&[
        "job",
        "create",
        "j",
        "--repo",
        s(&repo),
        "--source",
        s(&src),
        "--encryption",
        "kms",
        "--kms-key",
        &key,
    ])
    .ok();
    env.run(&["backup", "j"]).ok();
    // The attacker's chain and the rewritten job record.
    let jf = fs::read_dir(repo.join("jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut job: JobRecord = serde_json::from_slice(&fs::read(&jf).unwrap()).unwrap();
    let ck = arca::crypto::SecretKey::random();
    let mut chain = ChainRecord {
        kind: ChainRecord::KIND.into(),
        version: FORMAT_VERSION,
        repo_id: job.repo_id,
        job_id: job.job_id,
        chain_id: Id16::random(),
        created: "2026-01-01T00:00:00Z".into(),
        encryption: EncryptionMode::Kms,
        keyslots: vec![],
        revision: 1,
        chunker: Some(ChainRecord::KEYED_GEAR.into()),
        generation: None,
        retired: Vec::new(),
        mac: None,
    };
    crate::common::in_process_aws_credentials();
    let client = KmsClient::new(&KmsSettings {
        region: Some("us-east-1".into()),
        endpoint: Some(kms_endpoint()),
        ..Default::default()
    })
    .await
    .unwrap();
    let slot = KmsProvider::new(std::sync::Arc::new(client), Some(evil_key.clone()))
        .wrap(&ck, &SlotContext::of_chain(&chain, "j"))
        .await
        .unwrap();
    chain.keyslots.push(slot);
    chain.seal(&ck);
    fs::write(
        repo.join(format!("chains/{}.json", chain.chain_id)),
        serde_json::to_vec(&chain).unwrap(),
    )
    .unwrap();
    job.chain_id = chain.chain_id;
    job.chains = vec![chain.chain_id];
    job.revision += 1;
    job.seal(&ck);
    fs::write(&jf, serde_json::to_vec(&job).unwrap()).unwrap();
    // And a point of its own in that chain, newer than the victim's.
    let evil_src = env.path("evil");
    write(&evil_src.join("x"), b"forged");
    arca::engine::backup::run(
        &repo,
        &job,
        &arca::engine::OpenChain::new(chain.clone(), ck, "j").unwrap(),
        arca::engine::backup::BackupOptions {
            status: Default::default(),
            source: arca::engine::backup::Source::Tree(evil_src),
            compression_level: 3,
            workers: 1,
            progress: indicatif::ProgressBar::hidden(),
            kdf: None,
            filter: arca::engine::filter::Compiled::none(),
            origin: None,
        },
    )
    .unwrap();
    let points_before = fs::read_dir(repo.join("points")).unwrap().count();
    let r = env.run(&["backup", "j"]);
    assert!(
        r.stderr.contains("the catalog trusts chain"),
        "{}",
        r.stderr
    );
    assert_eq!(r.code, 14, "{}", r.stderr);
    assert_eq!(
        fs::read_dir(repo.join("points")).unwrap().count(),
        points_before
    );
    // No catalog (a reinstall), trusting only the victim's own key: the attacker's key is
    // never used.
    let env2 = Env::new();
    env2.set_env("ARCA_TRUST_KMS_KEYS", &key);
    let t = env2.path("t");
    let r = env2.run(&["ls", "j", "--repo", s(&repo)]);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains(&evil_key) && r.stderr.contains("is not one this job trusts"),
        "{}",
        r.stderr
    );
    assert!(is_empty_or_missing(&t));
}

/// Escrow survives a reinstall: `catalog rebuild` puts back the escrow setting from the
/// repository's records once it has verified them (the escrowed hash opens the job's
/// keyslot), and only with a KMS key the user trusts.
#[tokio::test]
async fn catalog_rebuild_restores_the_escrow_setting_from_verified_records() {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let env = Env::new();
    let src = tree(&env, 4);
    let repo = init(&env);
    env.run_env(
        &[
            "job",
            "create",
            "j",
            "--repo",
            s(&repo),
            "--source",
            s(&src),
            "--encryption",
            "passphrase",
        ],
        &[("ARCA_PASSPHRASE", PASS)],
    )
    .ok();
    env.run(&["kms", "escrow", "enable", "--key", &key]).ok();
    env.run(&["backup", "j"]).ok();
    // Reinstall, without naming the key: nothing is trusted, escrow stays off.
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let r = env
        .run_env(
            &["catalog", "rebuild", "--repo", s(&repo)],
            &[("ARCA_PASSPHRASE", PASS)],
        )
        .ok();
    assert!(r.stderr.contains("--trust-kms-key"), "{}", r.stderr);
    // Status compares the catalog with the repository: the record is there, unused.
    let r = env.run(&["--json", "kms", "escrow", "status"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let st = r.json();
    assert_eq!(st["enabled"], false);
    assert_eq!(st["records"][0]["in_repository"], true);
    assert_eq!(st["records"][0]["in_catalog"], false);
    assert!(!st["problems"].as_array().unwrap().is_empty());
    // Naming the key: the record is verified through KMS and escrow is on again.
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let r = env
        .run(&[
            "--trust-kms-key",
            &key,
            "catalog",
            "rebuild",
            "--repo",
            s(&repo),
        ])
        .ok();
    assert!(r.stderr.contains("escrow: enabled again"), "{}", r.stderr);
    let st = env.run(&["--json", "kms", "escrow", "status"]).ok().json();
    assert_eq!(st["enabled"], true);
    assert_eq!(st["key"], key.as_str());
    assert_eq!(st["records"].as_array().unwrap().len(), 1);
    assert_eq!(st["records"][0]["in_repository"], true);
    assert_eq!(st["records"][0]["in_catalog"], true);
    assert!(st["problems"].as_array().unwrap().is_empty());
}
