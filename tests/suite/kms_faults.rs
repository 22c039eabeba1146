//! KMS faults a real server will not produce on demand, served by wiremock: throttling then
//! success, 500s, a hanging server, DisabledException, KMSInvalidStateException,
//! AccessDeniedException and a malformed answer. The job and its KMS keyslot are made
//! against the real moto server; only the restore's (or backup's) KMS traffic goes to the mock.
//! Each test checks the message, the exit code, and that nothing was written.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Fixture {
    env: Arc<Env>,
    repo: std::path::PathBuf,
    src: std::path::PathBuf,
    key_arn: String,
    chain_key_b64: String,
    config: std::path::PathBuf,
}

async fn setup() -> Fixture {
    let admin = kms_admin();
    let key = new_kms_key(&admin).await;
    let env = Arc::new(Env::new());
    let src = env.path("src");
    for i in 0..12 {
        write(
            &src.join(format!("f{i}")),
            &pseudo_random(20_000 + i * 500, i as u64, true),
        );
    }
    let repo = env.path("repo");
    env.run(&["init", repo.to_str().unwrap()]).ok();
    env.run(&[
        "job",
        "create",
        "j",
        "--repo",
        repo.to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
        "--encryption",
        "kms",
        "--kms-key",
        &key,
    ])
    .ok();
    env.run(&["backup", "j"]).ok();
    // What KMS would answer: decrypt the keyslot with the real server and its exact context.
    let chain_file = std::fs::read_dir(repo.join("chains"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let chain: serde_json::Value =
        serde_json::from_slice(&std::fs::read(chain_file).unwrap()).unwrap();
    let slot = &chain["keyslots"][0];
    let ct = base64::engine::general_purpose::STANDARD
        .decode(slot["ciphertext"].as_str().unwrap())
        .unwrap();
    let out = admin
        .decrypt()
        .key_id(&key)
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(ct))
        .encryption_context("arca:repository", chain["repo_id"].as_str().unwrap())
        .encryption_context("arca:job", "j")
        .encryption_context("arca:chain", chain["chain_id"].as_str().unwrap())
        .encryption_context("arca:purpose", "chain-key")
        .send()
        .await
        .expect("the real server decrypts the keyslot with arca's documented context");
    let chain_key_b64 =
        base64::engine::general_purpose::STANDARD.encode(out.plaintext.unwrap().into_inner());
    let config = env.path("arca.toml");
    // After a reinstall the user names the KMS key they trust (strict mode).
    std::fs::write(
        &config,
        format!("[kms]\ntimeout_seconds = 6\nmax_attempts = 3\ntrusted_keys = [\"{key}\"]\n"),
    )
    .unwrap();
    // As after a reinstall: no catalog, so KMS is the only way in.
    std::fs::remove_dir_all(env.catalog.parent().unwrap()).unwrap();
    Fixture {
        env,
        repo,
        src,
        key_arn: key,
        chain_key_b64,
        config,
    }
}

impl Fixture {
    async fn arca(&self, server: &MockServer, args: &[&str]) -> Run {
        let env = self.env.clone();
        let mut all: Vec<String> = vec![
            "--config".into(),
            self.config.to_str().unwrap().into(),
            "--kms-endpoint".into(),
            server.uri(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            env.run(&refs)
        })
        .await
        .unwrap()
    }

    async fn restore(&self, server: &MockServer, target: &str) -> Run {
        let t = self.env.path(target);
        self.arca(
            server,
            &[
                "restore",
                "j",
                "--repo",
                self.repo.to_str().unwrap(),
                "--target",
                t.to_str().unwrap(),
                "--explain",
            ],
        )
        .await
    }

    fn decrypt_ok(&self) -> ResponseTemplate {
        ResponseTemplate::new(200).insert_header("content-type", "application/x-amz-json-1.1").set_body_string(
            serde_json::json!({"KeyId": self.key_arn, "Plaintext": self.chain_key_b64, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
                .to_string(),
        )
    }
}

fn kms_error(status: u16, kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("content-type", "application/x-amz-json-1.1")
        .set_body_string(serde_json::json!({"__type": kind, "message": message}).to_string())
}

fn decrypt() -> wiremock::MockBuilder {
    Mock::given(method("POST")).and(header("x-amz-target", "TrentService.Decrypt"))
}

#[tokio::test(flavor = "multi_thread")]
async fn throttled_twice_then_success() {
    let f = setup().await;
    let server = MockServer::start().await;
    decrypt()
        .respond_with(kms_error(400, "ThrottlingException", "Rate exceeded"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    decrypt()
        .respond_with(f.decrypt_ok())
        .with_priority(2)
        .mount(&server)
        .await;
    let r = f.restore(&server, "t").await.ok();
    assert!(r.stderr.contains("opened via: kms"), "{}", r.stderr);
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        3,
        "two throttled attempts and one success"
    );
    assert_eq!(snapshot(&f.src), snapshot(&f.env.path("t")));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_then_reported() {
    let f = setup().await;
    let server = MockServer::start().await;
    decrypt()
        .respond_with(kms_error(500, "KMSInternalException", "internal failure"))
        .mount(&server)
        .await;
    let r = f.restore(&server, "t").await;
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("KMSInternalException")
            && r.stderr.contains("kept failing after retries"),
        "{}",
        r.stderr
    );
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        3,
        "max_attempts = 3"
    );
    assert!(!f.env.path("t").exists(), "the restore wrote to its target");
}

#[tokio::test(flavor = "multi_thread")]
async fn hanging_server_times_out_within_the_bound() {
    let f = setup().await;
    std::fs::write(
        &f.config,
        format!(
            "[kms]\ntimeout_seconds = 2\nmax_attempts = 2\ntrusted_keys = [\"{}\"]\n",
            f.key_arn
        ),
    )
    .unwrap();
    let server = MockServer::start().await;
    decrypt()
        .respond_with(f.decrypt_ok().set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let started = Instant::now();
    let r = f.restore(&server, "t").await;
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("did not answer in time"), "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(!f.env.path("t").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_key_is_not_retried() {
    let f = setup().await;
    let server = MockServer::start().await;
    decrypt()
        .respond_with(kms_error(400, "DisabledException", "key is disabled"))
        .mount(&server)
        .await;
    let r = f.restore(&server, "t").await;
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains(&f.key_arn) && r.stderr.contains("aws kms enable-key"),
        "{}",
        r.stderr
    );
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "not retried"
    );
    assert!(!f.env.path("t").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_deletion_is_not_retried() {
    let f = setup().await;
    let server = MockServer::start().await;
    decrypt()
        .respond_with(kms_error(
            400,
            "KMSInvalidStateException",
            "key is pending deletion",
        ))
        .mount(&server)
        .await;
    let r = f.restore(&server, "t").await;
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains(&f.key_arn)
            && r.stderr.contains("pending deletion")
            && r.stderr.contains("cancel-key-deletion"),
        "{}",
        r.stderr
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert!(!f.env.path("t").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_is_not_retried_and_backup_fails_closed() {
    let f = setup().await;
    let server = MockServer::start().await;
    decrypt()
        .respond_with(kms_error(
            400,
            "AccessDeniedException",
            "not authorized to perform kms:Decrypt",
        ))
        .mount(&server)
        .await;
    let r = f.restore(&server, "t").await;
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains(&f.key_arn) && r.stderr.contains("kms:Decrypt"),
        "{}",
        r.stderr
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert!(!f.env.path("t").exists());
    // A backup that cannot open its keys writes nothing at all.
    let before = snapshot(&f.repo);
    f.env
        .run(&["catalog", "rebuild", "--repo", f.repo.to_str().unwrap()])
        .ok();
    write(&f.src.join("new"), b"new data");
    let r = f.arca(&server, &["backup", "j"]).await;
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert_eq!(
        snapshot(&f.repo),
        before,
        "a backup without keys changed the repository"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_answer_is_reported() {
    let f = setup().await;
    let server = MockServer::start().await;
    decrypt()
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_string("{not json"),
        )
        .mount(&server)
        .await;
    let r = f.restore(&server, "t").await;
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(
        r.stderr.contains("not a valid KMS response"),
        "{}",
        r.stderr
    );
    assert!(!f.env.path("t").exists());
}
