//! Helpers for tests that drive the real `arca` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub catalog: PathBuf,
    /// Environment for every later command (e.g. keys trusted after a simulated reinstall).
    pub extra_env: std::sync::Mutex<Vec<(String, String)>>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    /// The JSON document on stdout; for NDJSON (status lines, then a summary), the last line.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .or_else(|_| {
                serde_json::from_str(self.stdout.trim_end().lines().last().unwrap_or_default())
            })
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog/catalog.db");
        Env {
            dir,
            catalog,
            extra_env: Default::default(),
        }
    }

    /// Sets an environment variable for every later command of this test.
    pub fn set_env(&self, k: &str, v: &str) {
        self.extra_env.lock().unwrap().push((k.into(), v.into()));
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_arca"));
        c.args(args)
            .env("ARCA_CATALOG", &self.catalog)
            .env("ARCA_INSECURE_TEST_KDF", "1")
            .env_remove("ARCA_PASSPHRASE")
            .env_remove("ARCA_KEY")
            .env_remove("ARCA_PASSWORD_COMMAND")
            .env_remove("ARCA_KEY_COMMAND")
            .env_remove("ARCA_LOG")
            .env_remove("ARCA_CONFIG")
            .env_remove("ARCA_TRUST_KMS_KEYS")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg-config"))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null());
        match std::env::var("ARCA_TEST_KMS_ENDPOINT") {
            Ok(e) => c.env("AWS_ENDPOINT_URL", e),
            Err(_) => c.env_remove("AWS_ENDPOINT_URL"),
        };
        match std::env::var("ARCA_TEST_S3_ENDPOINT") {
            Ok(e) => c.env("AWS_ENDPOINT_URL_S3", e),
            Err(_) => c.env_remove("AWS_ENDPOINT_URL_S3"),
        };
        for k in [
            "ARCA_S3_ENDPOINT",
            "ARCA_S3_PATH_STYLE",
            "ARCA_S3_REGION",
            "ARCA_S3_CACHE",
        ] {
            c.env_remove(k);
        }
        for (k, v) in self.extra_env.lock().unwrap().iter() {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().unwrap().into()
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap().into()
    }

    pub fn run_stdin(&self, args: &[&str], env: &[(&str, &str)], input: &[u8]) -> Run {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let w = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        w.join().unwrap();
        out.into()
    }

    /// init + job create with a passphrase.
    pub fn passphrase_job(&self, name: &str, source: &Path, pass: &str) -> PathBuf {
        let repo = self.path("repo");
        if !repo.join("config").exists() {
            self.run(&["init", repo.to_str().unwrap()]).ok();
        }
        self.run_env(
            &[
                "job",
                "create",
                name,
                "--repo",
                repo.to_str().unwrap(),
                "--source",
                source.to_str().unwrap(),
                "--encryption",
                "passphrase",
            ],
            &[("ARCA_PASSPHRASE", pass)],
        )
        .ok();
        repo
    }
}

impl Env {
    /// A key file (`keyfile generate`) and a job `name` encrypted with it, in repository
    /// `repo` (created if needed). Returns the key file.
    pub fn key_job(&self, name: &str, source: &Path, repo: &Path) -> PathBuf {
        if !repo.join("config").exists() {
            self.run(&["init", repo.to_str().unwrap()]).ok();
        }
        let key = self.path(&format!("{name}.key"));
        self.run(&["keyfile", "generate", "--out", key.to_str().unwrap()])
            .ok();
        self.run(&[
            "--key-file",
            key.to_str().unwrap(),
            "job",
            "create",
            name,
            "--repo",
            repo.to_str().unwrap(),
            "--source",
            source.to_str().unwrap(),
            "--encryption",
            "key",
        ])
        .ok();
        key
    }
}

/// Deterministic pseudo-random bytes (xorshift), optionally half compressible.
pub fn pseudo_random(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        if compressible && (out.len() / 4096) % 2 == 0 {
            out.extend_from_slice(b"backup! ");
        } else {
            out.extend_from_slice(&b);
        }
    }
    out.truncate(len);
    out
}

pub fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Everything a restore must reproduce, per path: type, mode, mtime, content hash or target.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            // A repository's `locks/` holds lock files and notes of who holds them, written
            // by every locking command whatever it then does: not repository data.
            if rel == "locks" && root.join("config").is_file() {
                continue;
            }
            let ft = m.file_type();
            let desc = if ft.is_symlink() {
                format!(
                    "link {:?} mtime={}.{}",
                    fs::read_link(&p).unwrap(),
                    m.mtime(),
                    m.mtime_nsec()
                )
            } else if ft.is_dir() {
                format!(
                    "dir mode={:o} mtime={}.{}",
                    m.permissions().mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec()
                )
            } else {
                let data = fs::read(&p).unwrap();
                format!(
                    "file mode={:o} mtime={}.{} size={} blake3={}",
                    m.permissions().mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec(),
                    data.len(),
                    blake3::hash(&data).to_hex()
                )
            };
            out.insert(rel, desc);
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Total bytes of all files below `p`.
pub fn du(p: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            n += du(&e.path());
        } else {
            n += m.len();
        }
    }
    n
}

pub fn is_empty_or_missing(p: &Path) -> bool {
    !p.exists() || fs::read_dir(p).unwrap().next().is_none()
}

/// All pack files of a repository.
pub fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in fs::read_dir(repo.join("packs")).unwrap() {
        for e in fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(e.unwrap().path());
        }
    }
    out.sort();
    out
}

/// The loopback KMS server (moto) that ./scripts/test.sh starts. A KMS test without it fails:
/// it must never pass by skipping.
pub fn kms_endpoint() -> String {
    std::env::var("ARCA_TEST_KMS_ENDPOINT").unwrap_or_else(|_| {
        panic!("ARCA_TEST_KMS_ENDPOINT is not set: the KMS tests run against the moto server that ./scripts/test.sh starts; run the suite with ./scripts/test.sh")
    })
}

/// An administrator's KMS client for the test server (creates, disables, deletes keys).
pub fn kms_admin() -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(kms_endpoint())
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "arca-tests",
        ))
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// A fresh symmetric key (so tests never interfere); returns its ARN.
pub async fn new_kms_key(c: &aws_sdk_kms::Client) -> String {
    let out = c
        .create_key()
        .description("arca test key")
        .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
        .key_spec(aws_sdk_kms::types::KeySpec::SymmetricDefault)
        .send()
        .await
        .expect("CreateKey");
    out.key_metadata.unwrap().arn.unwrap()
}

/// A second moto server that enforces IAM authentication, for "bad credentials" and
/// "access denied" answers from a real server. It is killed when dropped.
pub struct AuthKms {
    child: std::process::Child,
    pub endpoint: String,
    /// Credentials of a user allowed kms:*.
    pub access_key: String,
    pub secret_key: String,
    /// Credentials of a user with no permissions at all.
    pub denied_access_key: String,
    pub denied_secret_key: String,
    pub key_arn: String,
}

const AUTH_SETUP: &str = r#"
import boto3, json, sys
ep = sys.argv[1]
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="arca")
iam.put_user_policy(UserName="arca", PolicyName="kms", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}))
k = iam.create_access_key(UserName="arca")["AccessKey"]
iam.create_user(UserName="nobody")
d = iam.create_access_key(UserName="nobody")["AccessKey"]
kms = boto3.client("kms", endpoint_url=ep, region_name="us-east-1",
                   aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
arn = kms.create_key(KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT")["KeyMetadata"]["Arn"]
print(json.dumps({"ak": k["AccessKeyId"], "sk": k["SecretAccessKey"], "dak": d["AccessKeyId"], "dsk": d["SecretAccessKey"], "arn": arn}))
"#;

impl AuthKms {
    pub fn start() -> AuthKms {
        let venv = std::env::var("ARCA_TEST_MOTO_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv-moto"));
        assert!(
            venv.join("bin/moto_server").exists(),
            "moto is not installed in {}: run ./scripts/test.sh",
            venv.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The setup script's first five IAM calls run unauthenticated; everything after must be signed.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut guard = AuthKms {
            child,
            endpoint: endpoint.clone(),
            access_key: String::new(),
            secret_key: String::new(),
            denied_access_key: String::new(),
            denied_secret_key: String::new(),
            key_arn: String::new(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let out = Command::new(venv.join("bin/python"))
            .args(["-c", AUTH_SETUP, &endpoint])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "auth setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        guard.access_key = v["ak"].as_str().unwrap().into();
        guard.secret_key = v["sk"].as_str().unwrap().into();
        guard.denied_access_key = v["dak"].as_str().unwrap().into();
        guard.denied_secret_key = v["dsk"].as_str().unwrap().into();
        guard.key_arn = v["arn"].as_str().unwrap().into();
        guard
    }

    /// Environment for arca as the permitted user.
    pub fn allowed(&self) -> Vec<(&str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", &self.access_key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_key),
        ]
    }

    /// Environment for arca with credentials the server does not know.
    pub fn bogus(&self) -> Vec<(&str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", "AKIABOGUSBOGUSBOGUS1"),
            ("AWS_SECRET_ACCESS_KEY", "wrong"),
        ]
    }

    /// Environment for arca as a known user without KMS permissions.
    pub fn denied(&self) -> Vec<(&str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", &self.denied_access_key),
            ("AWS_SECRET_ACCESS_KEY", &self.denied_secret_key),
        ]
    }
}

impl Drop for AuthKms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a directory tree (regular files and directories).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// What a restored tree holds, keyed by the hex of each path's bytes (names need not be
/// UTF-8): "dir", "link <hex target>", or "file <blake3>".
pub fn manifest(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::ffi::OsStrExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = hex::encode(p.strip_prefix(root).unwrap().as_os_str().as_bytes());
            let m = fs::symlink_metadata(&p).unwrap();
            let v = if m.file_type().is_symlink() {
                format!(
                    "link {}",
                    hex::encode(fs::read_link(&p).unwrap().as_os_str().as_bytes())
                )
            } else if m.is_dir() {
                walk(root, &p, out);
                "dir".into()
            } else {
                format!("file {}", blake3::hash(&fs::read(&p).unwrap()).to_hex())
            };
            out.insert(rel, v);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The loopback S3 server (moto, with versioning and Object Lock) that ./scripts/test.sh
/// starts. An S3 test without it fails: it must never pass by skipping.
pub fn s3_endpoint() -> String {
    std::env::var("ARCA_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("ARCA_TEST_S3_ENDPOINT is not set: the S3 tests run against the moto server that ./scripts/test.sh starts; run the suite with ./scripts/test.sh")
    })
}

/// An administrator's S3 client for the test server.
pub fn s3_admin() -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(s3_endpoint())
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Runs a future of the S3 admin client to completion.
pub fn s3_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A new, empty bucket (with Object Lock, and so versioning, when asked).
pub fn s3_bucket(object_lock: bool) -> String {
    let name = format!("arca-test-{}", &hex_id()[..16]);
    let c = s3_admin();
    s3_block(async {
        c.create_bucket()
            .bucket(&name)
            .object_lock_enabled_for_bucket(object_lock)
            .send()
            .await
            .unwrap()
    });
    name
}

fn hex_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:016x}{:08x}{:08x}",
        t as u64 ^ (t >> 64) as u64,
        std::process::id(),
        n
    )
}

/// Keys of every object in a bucket (current versions).
pub fn s3_keys(bucket: &str) -> Vec<String> {
    let c = s3_admin();
    s3_block(async {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let r = c
                .list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token)
                .send()
                .await
                .unwrap();
            out.extend(
                r.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match r.next_continuation_token() {
                Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort();
        out
    })
}

/// Validates `v` against the definition `def` of docs/json-schema.json.
pub fn validate_json(def: &str, v: &serde_json::Value) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/json-schema.json");
    let s: serde_json::Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
    assert!(
        s["$defs"].get(def).is_some(),
        "docs/json-schema.json has no definition {def:?}"
    );
    let root = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": s["$defs"],
        "$ref": format!("#/$defs/{}", def.replace(' ', "%20")),
    });
    let validator = jsonschema::validator_for(&root).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{def}: {}\n{v:#}", errors.join("; "));
}

/// Credentials for AWS clients built inside the test process (children get theirs from
/// `Env::cmd`); moto accepts any. Set once per process: the suite is one multithreaded
/// binary, and `setenv` racing a C library's `getenv` in another thread is undefined.
pub fn in_process_aws_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

/// A job `j` over `src`, encrypted with a key file, in repository `repo`; `arca` runs the
/// binary with that key file. Modules add what they need through a trait of their own.
pub struct KeyJob {
    pub env: Env,
    pub src: PathBuf,
    pub repo: PathBuf,
    pub key: String,
}

impl KeyJob {
    pub fn new() -> KeyJob {
        let env = Env::new();
        let src = env.path("src");
        fs::create_dir_all(&src).unwrap();
        let repo = env.path("repo");
        let key = env.key_job("j", &src, &repo);
        KeyJob {
            key: key.to_str().unwrap().to_string(),
            env,
            src,
            repo,
        }
    }

    pub fn arca(&self, args: &[&str]) -> Run {
        self.arca_env(args, &[])
    }

    pub fn arca_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut a = vec!["--key-file", &self.key];
        a.extend_from_slice(args);
        self.env.run_env(&a, env)
    }
}
