//! KMIP against a real PyKMIP server with mutual TLS, started by ./scripts/test.sh with
//! certificates made at test time: KMIP jobs, escrow to KMIP, a revoked key, a wrong client
//! certificate, an unreachable server, and the shared key-provider suite.

use crate::common;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use arca::crypto::SecretKey;
use arca::keys::kmip::{KmipClient, KmipProvider, KmipSettings};
use arca::keys::provider_suite;
use arca::keys::raw::RawKeyProvider;
use common::*;

const PASS: &str = "kmip fallback passphrase";

fn kmip_dir() -> PathBuf {
    PathBuf::from(std::env::var("ARCA_TEST_KMIP_DIR").unwrap_or_else(|_| {
        panic!("ARCA_TEST_KMIP_DIR is not set: the KMIP tests run against the PyKMIP server that ./scripts/test.sh starts")
    }))
}

fn port() -> String {
    std::env::var("ARCA_TEST_KMIP_PORT").expect("ARCA_TEST_KMIP_PORT")
}

/// arca's KMIP settings as environment variables (client certificate `client` or `wrong-client`).
fn kmip_env(client: &str) -> Vec<(String, String)> {
    let d = kmip_dir();
    vec![
        ("ARCA_KMIP_HOST".into(), "127.0.0.1".into()),
        ("ARCA_KMIP_PORT".into(), port()),
        (
            "ARCA_KMIP_CA".into(),
            d.join("ca.crt").display().to_string(),
        ),
        (
            "ARCA_KMIP_CERT".into(),
            d.join(format!("{client}.crt")).display().to_string(),
        ),
        (
            "ARCA_KMIP_KEY".into(),
            d.join(format!("{client}.key")).display().to_string(),
        ),
    ]
}

fn run(env: &Env, args: &[&str], extra: &[(String, String)]) -> Run {
    let refs: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.run_env(args, &refs)
}

fn with(mut e: Vec<(String, String)>, k: &str, v: &str) -> Vec<(String, String)> {
    e.push((k.into(), v.into()));
    e
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", arca::repo::format::Id16::random().short())
}

/// Revokes a key with PyKMIP's own client (as a KMIP administrator would).
fn revoke(uid: &str) {
    let d = kmip_dir();
    let py = d.parent().unwrap().join("venv-kmip/bin/python");
    let script = format!(
        "from kmip.pie.client import ProxyKmipClient\nfrom kmip import enums\n\
         c = ProxyKmipClient(hostname='127.0.0.1', port={}, cert='{}', key='{}', ca='{}', config_file='/dev/null')\n\
         c.open()\nc.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, '{uid}')\nc.close()\n",
        port(),
        d.join("client.crt").display(),
        d.join("client.key").display(),
        d.join("ca.crt").display()
    );
    let out = std::process::Command::new(py)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create_key(env: &Env, name: &str) -> String {
    run(
        env,
        &["--json", "kmip", "create-key", name],
        &kmip_env("client"),
    )
    .ok()
    .json()["unique_identifier"]
        .as_str()
        .unwrap()
        .to_string()
}

fn setup(env: &Env) -> (PathBuf, PathBuf) {
    let src = env.path("src");
    for i in 0..8 {
        write(
            &src.join(format!("f{i}")),
            &pseudo_random(40_000 + i * 3000, i as u64, i % 2 == 0),
        );
    }
    let repo = env.path("repo");
    env.run(&["init", repo.to_str().unwrap()]).ok();
    (src, repo)
}

#[test]
fn kmip_job_round_trip() {
    let env = Env::new();
    let (src, repo) = setup(&env);
    let name = unique("arca-job-key");
    let uid = create_key(&env, &name);
    let k = kmip_env("client");
    run(
        &env,
        &[
            "job",
            "create",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "kmip",
            "--kmip-key",
            &name,
        ],
        &k,
    )
    .ok();
    let slots = env.run(&["--json", "job", "keys", "list", "j"]).ok().json();
    // PyKMIP offers Encrypt/Decrypt: the chain key is encrypted by the server, and the KMIP
    // key never leaves it.
    assert_eq!(slots[0]["provider"], "kmip-encrypt");
    let desc = slots[0]["description"].as_str().unwrap();
    assert!(
        desc.contains(&uid) && desc.contains("never leaves"),
        "{desc}"
    );
    run(&env, &["backup", "j"], &k).ok();
    // A rekey re-wraps the new generation key through the KMIP server (Encrypt again).
    let r = run(&env, &["--json", "job", "rekey", "j"], &k).ok().json();
    assert_eq!(r["generation"], 2);
    fs::write(src.join("after-rekey.txt"), b"generation 2").unwrap();
    run(&env, &["backup", "j"], &k).ok();
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let t = env.path("t");
    let r = run(
        &env,
        &[
            "restore",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
            "--explain",
        ],
        &k,
    )
    .ok();
    assert!(r.stderr.contains("opened via: kmip"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&t));
    // A second key of the same name is refused; an unknown key is "not found", naming it.
    let r = run(&env, &["kmip", "create-key", &name], &k);
    assert_eq!(r.code, 12, "{}", r.stderr);
    let r = run(
        &env,
        &[
            "job",
            "create",
            "x",
            "--repo",
            repo.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "kmip",
            "--kmip-key",
            "no-such-key",
        ],
        &k,
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("no-such-key") && r.stderr.contains("127.0.0.1"),
        "{}",
        r.stderr
    );
}

#[test]
fn escrow_to_kmip_then_restore_after_catalog_loss() {
    let env = Env::new();
    let (src, repo) = setup(&env);
    let name = unique("arca-escrow-key");
    create_key(&env, &name);
    let k = kmip_env("client");
    run(
        &env,
        &[
            "job",
            "create",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "passphrase",
        ],
        &with(k.clone(), "ARCA_PASSPHRASE", PASS),
    )
    .ok();
    run(&env, &["kmip", "escrow", "enable", "--key", &name], &k).ok();
    let st = run(&env, &["--json", "kmip", "escrow", "status"], &k)
        .ok()
        .json();
    // The server encrypts the escrowed hash itself (the KMIP key never leaves it).
    assert_eq!(st["records"][0]["provider"], "kmip-encrypt");
    run(&env, &["backup", "j"], &k).ok();
    // A rotation escrows the new hash to KMIP, then removes the old record.
    let r = run(
        &env,
        &["--json", "password", "rotate", "j"],
        &with(k.clone(), "ARCA_NEW_PASSPHRASE", "the rotated passphrase"),
    )
    .ok()
    .json();
    assert_eq!(r["escrowed"], true, "{r}");
    let st = run(&env, &["--json", "kmip", "escrow", "status"], &k)
        .ok()
        .json();
    let recs = st["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{st}");
    assert_eq!(recs[0]["in_repository"], true);
    assert_eq!(recs[0]["in_catalog"], true);
    fs::write(src.join("after-rotation.txt"), b"generation 2").unwrap();
    run(&env, &["backup", "j"], &k).ok();
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let t = env.path("t");
    let r = run(
        &env,
        &[
            "restore",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
            "--explain",
        ],
        &k,
    )
    .ok();
    assert!(
        r.stderr.contains("opened via: kmip") && r.stderr.contains("escrow record of password 'j'"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(&src), snapshot(&t));
}

#[test]
fn revoked_key_is_a_clear_error_and_the_passphrase_slot_still_restores() {
    let env = Env::new();
    let (src, repo) = setup(&env);
    let name = unique("arca-revoked-key");
    let uid = create_key(&env, &name);
    let k = kmip_env("client");
    run(
        &env,
        &[
            "job",
            "create",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "kmip",
            "--kmip-key",
            &name,
        ],
        &k,
    )
    .ok();
    run(
        &env,
        &["job", "keys", "add", "j", "--password", "fallback"],
        &with(k.clone(), "ARCA_PASSPHRASE", PASS),
    )
    .ok();
    run(&env, &["backup", "j"], &k).ok();
    revoke(&uid);
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let t = env.path("t");
    let r = run(
        &env,
        &[
            "restore",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
            "--explain",
        ],
        &k,
    );
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("KMIP key {uid}")) && r.stderr.contains("revoked"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("127.0.0.1:{}", port())),
        "the message names the server: {}",
        r.stderr
    );
    assert!(!t.exists());
    let r = run(
        &env,
        &[
            "restore",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
            "--explain",
        ],
        &with(k, "ARCA_PASSPHRASE", PASS),
    )
    .ok();
    assert!(r.stderr.contains("opened via: passphrase"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&t));
}

#[test]
fn wrong_client_certificate_and_unreachable_server() {
    let env = Env::new();
    let (src, repo) = setup(&env);
    let name = unique("arca-tls-key");
    create_key(&env, &name);
    let k = kmip_env("client");
    run(
        &env,
        &[
            "job",
            "create",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "kmip",
            "--kmip-key",
            &name,
        ],
        &k,
    )
    .ok();
    run(&env, &["backup", "j"], &k).ok();
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let t = env.path("t");
    let args = [
        "restore",
        "j",
        "--repo",
        repo.to_str().unwrap(),
        "--target",
        t.to_str().unwrap(),
        "--explain",
    ];
    let r = run(&env, &args, &kmip_env("wrong-client"));
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("TLS"), "{}", r.stderr);
    assert!(!t.exists());
    // The wrong CA: arca does not trust the server's certificate.
    let mut wrong_ca = kmip_env("client");
    wrong_ca.retain(|(k, _)| k != "ARCA_KMIP_CA");
    wrong_ca.push((
        "ARCA_KMIP_CA".into(),
        kmip_dir().join("other-ca.crt").display().to_string(),
    ));
    let r = run(&env, &args, &wrong_ca);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("TLS with KMIP server") && r.stderr.contains("CA certificate"),
        "{}",
        r.stderr
    );
    assert!(!t.exists());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut unreachable = kmip_env("client");
    unreachable.retain(|(k, _)| k != "ARCA_KMIP_PORT");
    unreachable.push(("ARCA_KMIP_PORT".into(), closed));
    let r = run(&env, &args, &unreachable);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("unreachable"), "{}", r.stderr);
    assert!(!t.exists());
    // A backup that cannot reach its key manager writes nothing.
    env.run(&["catalog", "rebuild", "--repo", repo.to_str().unwrap()])
        .ok();
    let before = snapshot(&repo);
    let r = run(&env, &["backup", "j"], &unreachable);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert_eq!(snapshot(&repo), before);
}

fn settings(client: &str, port: &str) -> KmipSettings {
    let d = kmip_dir();
    KmipSettings {
        host: Some("127.0.0.1".into()),
        port: Some(port.parse().unwrap()),
        ca: Some(d.join("ca.crt")),
        cert: Some(d.join(format!("{client}.crt"))),
        key: Some(d.join(format!("{client}.key"))),
        timeout_seconds: Some(5.0),
        server_side: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_provider_suite_kmip() {
    let client = Arc::new(KmipClient::new(&settings("client", &port())).unwrap());
    let name = unique("arca-suite-key");
    let c = client.clone();
    let n = name.clone();
    tokio::task::spawn_blocking(move || c.create_key(&n))
        .await
        .unwrap()
        .unwrap();
    let good = KmipProvider::new(client, Some(name));
    // The same kind of provider, refused: its client certificate is not trusted by the server.
    let wrong = KmipProvider::new(
        Arc::new(KmipClient::new(&settings("wrong-client", &port())).unwrap()),
        None,
    );
    provider_suite::run(&good, &wrong, &RawKeyProvider::new(SecretKey::random())).await;
}

/// The KMIP TLS context trusts only the configured CA: the system store (here made to hold
/// the server's real CA through SSL_CERT_FILE) is never consulted, so a server certificate
/// signed by a CA other than the configured one is refused.
#[test]
fn tls_trusts_only_the_configured_ca() {
    let env = Env::new();
    let d = kmip_dir();
    let mut e = kmip_env("client");
    e.retain(|(k, _)| k != "ARCA_KMIP_CA");
    e.push((
        "ARCA_KMIP_CA".into(),
        d.join("other-ca.crt").display().to_string(),
    ));
    e.push((
        "SSL_CERT_FILE".into(),
        d.join("ca.crt").display().to_string(),
    ));
    e.push(("SSL_CERT_DIR".into(), d.display().to_string()));
    let r = run(&env, &["kmip", "create-key", &unique("arca-ca")], &e);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("TLS"), "{}", r.stderr);
}

/// TLS secrets are never written to SSLKEYLOGFILE (with KMIP Get, they would expose keys).
#[test]
fn sslkeylogfile_is_ignored() {
    let env = Env::new();
    let log = env.path("keys.log");
    fs::write(&log, b"").unwrap();
    let e = with(kmip_env("client"), "SSLKEYLOGFILE", log.to_str().unwrap());
    create_key(&env, &unique("arca-keylog"));
    run(&env, &["kmip", "create-key", &unique("arca-keylog2")], &e).ok();
    assert_eq!(fs::read(&log).unwrap().len(), 0, "TLS secrets were logged");
}

/// With server-side encryption switched off (`ARCA_KMIP_SERVER_SIDE=0`, for key managers
/// whose Encrypt is restricted), a KMIP job uses Get + local wrapping, and says so.
#[test]
fn get_mode_keyslot_round_trip_when_server_side_is_off() {
    let env = Env::new();
    let (src, repo) = setup(&env);
    let name = unique("arca-get-key");
    let uid = create_key(&env, &name);
    let k = with(kmip_env("client"), "ARCA_KMIP_SERVER_SIDE", "0");
    run(
        &env,
        &[
            "job",
            "create",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--encryption",
            "kmip",
            "--kmip-key",
            &name,
        ],
        &k,
    )
    .ok();
    let slots = run(&env, &["--json", "job", "keys", "list", "j"], &k)
        .ok()
        .json();
    assert_eq!(slots[0]["provider"], "kmip");
    run(&env, &["backup", "j"], &k).ok();
    // A rekey re-wraps the new generation key in Get mode (the KMIP key's material wraps it locally).
    let r = run(&env, &["--json", "job", "rekey", "j"], &k).ok().json();
    assert_eq!(r["generation"], 2);
    fs::write(src.join("after-rekey.txt"), b"generation 2").unwrap();
    run(&env, &["backup", "j"], &k).ok();
    fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    let t = env.path("t");
    let r = run(
        &env,
        &[
            "restore",
            "j",
            "--repo",
            repo.to_str().unwrap(),
            "--target",
            t.to_str().unwrap(),
        ],
        &k,
    )
    .ok();
    assert!(r.stderr.contains("opened via: kmip"), "{}", r.stderr);
    assert_eq!(snapshot(&src), snapshot(&t));
    let _ = uid;
}
