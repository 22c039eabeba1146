//! AWS KMS keyslots: the chain key (or, for escrow, a password hash) is encrypted by KMS
//! `Encrypt` under a customer key, with an encryption context naming the repository, job,
//! chain and purpose. Unwrapping is one `Decrypt` naming the same key and context.
//!
//! KMS is called per job or per recovery point, never per chunk. Throttling, 5xx answers and
//! timeouts are retried by the SDK's standard retry strategy (exponential backoff with
//! jitter) within a bounded total time; access, not-found, disabled and pending-deletion
//! answers are not retried and are reported with the key and a hint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::config::{Intercept, RuntimeComponents};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;

use super::{KeyError, KeyProvider, SlotContext};
use crate::crypto::{self, SecretKey};
use crate::repo::format::{Id16, Keyslot, SlotParams};
use crate::repo::now_rfc3339;

/// Encryption-context keys (docs/FORMAT.md, "AWS KMS").
pub mod ctx_key {
    pub const REPOSITORY: &str = "arca:repository";
    pub const JOB: &str = "arca:job";
    pub const CHAIN: &str = "arca:chain";
    pub const PURPOSE: &str = "arca:purpose";
    pub const PASSWORD: &str = "arca:password";
}
pub const PURPOSE_CHAIN_KEY: &str = "chain-key";
pub const PURPOSE_ESCROW: &str = "password-hash-escrow";

/// Where and how to reach KMS. Unset fields come from the standard AWS chain.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsSettings {
    pub region: Option<String>,
    /// Key ARNs arca may ask KMS to decrypt with besides those the catalog pins (needed to
    /// restore after a reinstall, when there is no catalog).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// e.g. http://127.0.0.1:4566 for LocalStack; also `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    /// Upper bound on one KMS operation including retries (default 30 s).
    pub timeout_seconds: Option<f64>,
    /// Attempts per operation (default 4).
    pub max_attempts: Option<u32>,
}

/// Counts HTTP attempts (retries included) sent to KMS.
#[derive(Debug, Default)]
struct Counter(Arc<AtomicU64>);

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "arca-kms-request-counter"
    }
    fn read_before_attempt(
        &self,
        _: &aws_sdk_kms::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut aws_sdk_kms::config::ConfigBag,
    ) -> Result<(), aws_sdk_kms::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Facts about a key from DescribeKey.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyInfo {
    pub arn: String,
    pub state: String,
    pub spec: String,
    pub usage: String,
}

pub struct KmsClient {
    client: aws_sdk_kms::Client,
    requests: Arc<AtomicU64>,
    endpoint: String,
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// KMS requests made by every client of this process (for `--json` summaries and tests).
pub fn process_requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

impl KmsClient {
    pub async fn new(s: &KmsSettings) -> Result<KmsClient, KeyError> {
        let total = Duration::from_secs_f64(s.timeout_seconds.unwrap_or(30.0).clamp(0.5, 600.0));
        let attempts = s.max_attempts.unwrap_or(4).clamp(1, 10);
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(attempts)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5).min(total))
                    .operation_attempt_timeout(total / attempts.max(1))
                    .operation_timeout(total)
                    .build(),
            );
        if let Some(r) = &s.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(p) = &s.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &s.endpoint {
            loader = loader.endpoint_url(e);
        }
        let shared = loader.load().await;
        if shared.region().is_none() {
            return Err(KeyError::Unavailable(
                "no AWS region configured: set AWS_REGION, a profile region, or `region` under [kms] in ~/.config/arca/config.toml".into(),
            ));
        }
        let endpoint = s
            .endpoint
            .clone()
            .or_else(|| shared.endpoint_url().map(str::to_string))
            .unwrap_or_else(|| {
                format!(
                    "AWS KMS in {}",
                    shared.region().map(|r| r.to_string()).unwrap_or_default()
                )
            });
        let requests = Arc::new(AtomicU64::new(0));
        let conf = aws_sdk_kms::config::Builder::from(&shared)
            .interceptor(Counter(requests.clone()))
            .build();
        Ok(KmsClient {
            client: aws_sdk_kms::Client::from_conf(conf),
            requests,
            endpoint,
        })
    }

    /// Requests sent by this client (retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn done(&self, before: u64) {
        REQUESTS.fetch_add(self.requests() - before, Ordering::Relaxed);
    }

    /// DescribeKey: the key must exist, be enabled, symmetric, for ENCRYPT_DECRYPT.
    pub async fn check_key(&self, key: &str) -> Result<KeyInfo, KeyError> {
        let before = self.requests();
        let r = self.client.describe_key().key_id(key).send().await;
        self.done(before);
        let md = r
            .map_err(|e| classify(e, key, &self.endpoint))?
            .key_metadata
            .ok_or_else(|| {
                KeyError::Unavailable(format!(
                    "KMS key {key}: DescribeKey returned no metadata ({})",
                    self.endpoint
                ))
            })?;
        let info = KeyInfo {
            arn: md.arn.clone().unwrap_or_else(|| key.to_string()),
            state: md
                .key_state
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            spec: md
                .key_spec
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            usage: md
                .key_usage
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        };
        let problem = if !md.enabled {
            Some(format!(
                "is not enabled (state {}): enable it with `aws kms enable-key`",
                info.state
            ))
        } else if info.spec != "SYMMETRIC_DEFAULT" {
            Some(format!("is not a symmetric encryption key (key spec {}): create one with key spec SYMMETRIC_DEFAULT", info.spec))
        } else if info.usage.is_empty()
            && !md
                .encryption_algorithms
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|a| a.as_str() == "SYMMETRIC_DEFAULT")
        {
            // Some emulators omit KeyUsage; AWS always sends it. Without it, the key must at
            // least list the symmetric encryption algorithm.
            Some("reports no key usage and no SYMMETRIC_DEFAULT encryption algorithm".to_string())
        } else if !info.usage.is_empty() && info.usage != "ENCRYPT_DECRYPT" {
            Some(format!("has key usage {}, not ENCRYPT_DECRYPT", info.usage))
        } else {
            None
        };
        match problem {
            Some(p) => Err(KeyError::Unavailable(format!("KMS key {} {p}", info.arn))),
            None => Ok(info),
        }
    }

    pub async fn encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<(String, Vec<u8>), KeyError> {
        let before = self.requests();
        let mut req = self
            .client
            .encrypt()
            .key_id(key)
            .plaintext(Blob::new(plaintext.to_vec()));
        for (k, v) in context {
            req = req.encryption_context(k, v);
        }
        let r = req.send().await;
        self.done(before);
        let out = r.map_err(|e| classify(e, key, &self.endpoint))?;
        let blob = out.ciphertext_blob.ok_or_else(|| {
            KeyError::Unavailable(format!("KMS Encrypt with {key} returned no ciphertext"))
        })?;
        Ok((
            out.key_id.unwrap_or_else(|| key.to_string()),
            blob.into_inner(),
        ))
    }

    pub async fn decrypt(
        &self,
        key: &str,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<SecretKey, KeyError> {
        let before = self.requests();
        let mut req = self
            .client
            .decrypt()
            .key_id(key)
            .ciphertext_blob(Blob::new(ciphertext.to_vec()));
        for (k, v) in context {
            req = req.encryption_context(k, v);
        }
        let r = req.send().await;
        self.done(before);
        let out = r.map_err(|e| classify(e, key, &self.endpoint))?;
        let mut pt = out
            .plaintext
            .ok_or_else(|| {
                KeyError::Unavailable(format!("KMS Decrypt with {key} returned no plaintext"))
            })?
            .into_inner();
        let k = SecretKey::from_slice(&pt).map_err(|_| {
            KeyError::Malformed(format!(
                "KMS Decrypt with {key} returned {} bytes, not a 32-byte key",
                pt.len()
            ))
        });
        zeroize::Zeroize::zeroize(&mut pt);
        k
    }
}

/// A KMS error → a message naming the key and what to do. Never retried here: the SDK's
/// retry strategy already retried what is retryable.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
    key: &str,
    endpoint: &str,
) -> KeyError {
    let (code, msg) = match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("").to_string();
            if code.is_empty() && (200..300).contains(&status) {
                return KeyError::Unavailable(format!(
                    "KMS ({endpoint}) sent an answer that is not a valid KMS response for key {key}; is the endpoint a KMS service?"
                ));
            }
            // A 403 whose body is not KMS JSON comes from the authentication layer.
            let code = if code.is_empty() && status == 403 { "AccessDeniedException".to_string() } else { code };
            let code = if code.is_empty() { format!("HTTP {status}") } else { code };
            (code, s.err().message().unwrap_or("").to_string())
        }
        SdkError::TimeoutError(_) => {
            return KeyError::Unavailable(format!("KMS ({endpoint}) did not answer in time for key {key}, even after retries; check network access to KMS"))
        }
        SdkError::DispatchFailure(_)
            if aws_sdk_kms::error::DisplayErrorContext(&e)
                .to_string()
                .to_ascii_lowercase()
                .contains("credential") =>
        {
            return KeyError::Unavailable(format!(
                "no AWS credentials were found to call KMS ({endpoint}) for key {key}; the credential chain tried \
                 the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), the profile (AWS_PROFILE, ~/.aws/config \
                 and ~/.aws/credentials, SSO, credential_process), a web identity token, and the ECS/EC2 instance \
                 metadata: configure one of them"
            ))
        }
        SdkError::DispatchFailure(d) => {
            return KeyError::Unavailable(format!(
                "KMS ({endpoint}) could not be reached for key {key}: {}; check the endpoint, network and proxy settings",
                if d.is_io() { "connection failed" } else if d.is_timeout() { "timed out" } else { "request failed" }
            ))
        }
        SdkError::ResponseError(_) => {
            return KeyError::Unavailable(format!("KMS ({endpoint}) sent an answer that is not a valid KMS response for key {key}; is the endpoint a KMS service?"))
        }
        other => return KeyError::Unavailable(format!("KMS request for key {key} failed: {}", aws_sdk_kms::error::DisplayErrorContext(other))),
    };
    let hint = match code.as_str() {
        "AccessDeniedException" => "the AWS identity may not use this key: it needs kms:Encrypt/kms:Decrypt/kms:DescribeKey on it, and any encryption-context condition must allow arca's context",
        "NotFoundException" => "no such key in this account and region: check the key id, alias and AWS_REGION",
        "DisabledException" => "the key is disabled: enable it with `aws kms enable-key`",
        "KMSInvalidStateException" => "the key is not usable in its current state (pending deletion?): cancel the deletion with `aws kms cancel-key-deletion` and enable it",
        "IncorrectKeyException" | "InvalidCiphertextException" => "the envelope does not belong to this key and context (moved, modified, or another key)",
        "UnrecognizedClientException" | "InvalidSignatureException" | "ExpiredTokenException" | "InvalidClientTokenId" => {
            "the AWS credentials were rejected: check AWS_PROFILE / AWS_ACCESS_KEY_ID or refresh the session"
        }
        "ThrottlingException" | "LimitExceededException" => "KMS kept throttling after retries: try again later or raise the KMS request quota",
        "KMSInternalException" | "DependencyTimeoutException" | "KeyUnavailableException" => "KMS kept failing after retries: try again later",
        _ => "see the AWS KMS documentation for this error",
    };
    let code = if code.is_empty() {
        "error".to_string()
    } else {
        code
    };
    let msg = if msg.is_empty() {
        String::new()
    } else {
        format!(" ({msg})")
    };
    KeyError::Unavailable(format!("KMS {code} for key {key}{msg}: {hint}"))
}

/// The encryption context of a chain-key keyslot.
pub fn chain_context(ctx: &SlotContext) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ctx_key::REPOSITORY.to_string(), ctx.repo_id.hex()),
        (ctx_key::JOB.to_string(), ctx.job_name.clone()),
        (ctx_key::CHAIN.to_string(), ctx.chain_id.hex()),
        (ctx_key::PURPOSE.to_string(), PURPOSE_CHAIN_KEY.to_string()),
    ])
}

/// The encryption context of a password-hash escrow record.
pub fn escrow_context(repo_id: &Id16, job: &str, password: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ctx_key::REPOSITORY.to_string(), repo_id.hex()),
        (ctx_key::JOB.to_string(), job.to_string()),
        (ctx_key::PURPOSE.to_string(), PURPOSE_ESCROW.to_string()),
        (ctx_key::PASSWORD.to_string(), password.to_string()),
    ])
}

/// The region of a KMS key ARN (`arn:aws:kms:<region>:<account>:key/<id>`).
pub fn arn_region(arn: &str) -> Option<&str> {
    let mut it = arn.split(':');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some("arn"), Some(_), Some("kms"), Some(r)) if !r.is_empty() => Some(r),
        _ => None,
    }
}

/// Key check value: binds a KMS keyslot to the exact key it holds, so a KMS (or an attacker
/// swapping envelopes) returning some other 32 bytes is caught.
pub fn key_check(key: &SecretKey, aad: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key.derive(crypto::context::COMMIT).expose(), aad).as_bytes()
}

pub struct KmsProvider {
    client: Arc<KmsClient>,
    /// The key new keyslots are made with (key id, ARN, alias or alias ARN).
    key: Option<String>,
    /// Strict mode: the key ARNs unwrapping may ask KMS to use (`None`: any).
    allowed: Option<Vec<String>>,
}

impl KmsProvider {
    pub fn new(client: Arc<KmsClient>, key: Option<String>) -> Self {
        KmsProvider {
            client,
            key,
            allowed: None,
        }
    }

    /// Only these key ARNs may be used to unwrap (the AWS Encryption SDK's strict mode).
    pub fn strict(mut self, allowed: Vec<String>) -> Self {
        self.allowed = Some(allowed);
        self
    }

    pub fn client(&self) -> &KmsClient {
        &self.client
    }
}

#[async_trait]
impl KeyProvider for KmsProvider {
    fn describe(&self) -> String {
        match &self.key {
            Some(k) => format!("AWS KMS key {k}"),
            None => "AWS KMS".into(),
        }
    }

    async fn wrap(&self, chain_key: &SecretKey, ctx: &SlotContext) -> Result<Keyslot, KeyError> {
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| KeyError::Unavailable("no KMS key given (--kms-key)".into()))?;
        let slot_id = Id16::random();
        let (arn, ct) = self
            .client
            .encrypt(key, chain_key.expose(), &chain_context(ctx))
            .await?;
        let mut params = SlotParams::Kms {
            key_arn: arn,
            ciphertext: ct,
            key_check: Vec::new(),
        };
        let kc = key_check(chain_key, &ctx.full(&slot_id, &params)).to_vec();
        if let SlotParams::Kms { key_check, .. } = &mut params {
            *key_check = kc;
        }
        Ok(Keyslot {
            slot_id,
            created: now_rfc3339(),
            format: (ctx.version >= 2).then_some(2),
            params,
            wrapped: None,
        })
    }

    async fn unwrap(
        &self,
        slot: &Keyslot,
        ctx: &SlotContext,
    ) -> Option<Result<SecretKey, KeyError>> {
        let SlotParams::Kms {
            key_arn,
            ciphertext,
            key_check: check,
        } = &slot.params
        else {
            return None;
        };
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|a| a == key_arn) {
                return Some(Err(KeyError::Unavailable(format!(
                    "KMS key {key_arn} is not one this job trusts (the catalog pins {}); arca only asks KMS to decrypt with keys the catalog or --trust-kms-key / [kms] trusted_keys allow",
                    if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                ))));
            }
        }
        Some(async {
            let k = self.client.decrypt(key_arn, ciphertext, &chain_context(ctx)).await?;
            let want = blake3::Hash::from_slice(check).map_err(|_| KeyError::Malformed("KMS keyslot check value is not 32 bytes".into()))?;
            if blake3::Hash::from_bytes(key_check(&k, &ctx.for_slot(slot).full(&slot.slot_id, &slot.params))) != want {
                return Err(KeyError::Tampered(format!("KMS key {key_arn} returned a key that does not match the keyslot's check value")));
            }
            Ok(k)
        }
        .await)
    }
}
