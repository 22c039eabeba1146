//! The restore resolver: finds a chain's key and explains how.
//!
//! Tiers, in order, each tried only if the chain has keyslots it can use:
//! 1. `catalog`: the password hash stored in the catalog (passphrase keyslots);
//!    `key`: a raw key from `--key-file`, `ARCA_KEY` or the job's recorded key file;
//! 2. `kms`: AWS KMS keyslots, and escrow records of password hashes in the repository;
//! 3. `passphrase`: from `ARCA_PASSPHRASE`, `--passphrase-file` or a prompt, with the salt
//!    stored in the recovery point;
//!
//! otherwise the point is reported corrupted when it lacks what a passphrase needs (no salt,
//! no keyslot for that salt), or the keys are reported unavailable with every tier's reason.
//! After tier 2 or 3 opens a passphrase chain, the password hash is stored in the catalog again.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::catalog::Catalog;
use crate::crypto::{Passphrase, SecretKey};
use crate::engine::OpenChain;
use crate::error::{Error, Result};
use crate::keys::aws_kms::{KmsClient, KmsProvider, KmsSettings};
use crate::keys::none::NoneProvider;
use crate::keys::passphrase::{PassphraseProvider, PasswordHashProvider};
use crate::keys::raw::RawKeyProvider;
use crate::keys::{unwrap_any, KeyError, KeyProvider, SlotContext};
use crate::repo::format::{ChainRecord, EscrowRecord, KdfRecord, Keyslot, SlotParams};

/// Where secrets may come from. Nothing is read or prompted until a tier needs it.
pub struct Credentials {
    pub passphrase_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// May prompt on the terminal.
    pub interactive: bool,
    /// How to reach AWS KMS (config file and flags; the AWS environment fills the rest).
    pub kms: KmsSettings,
    /// How to reach a KMIP server.
    pub kmip: crate::keys::kmip::KmipSettings,
    /// Run Argon2 parameters above the cap (`--allow-expensive-kdf`).
    pub allow_expensive_kdf: bool,
    /// Whether a password hash recovered from a passphrase or escrow is stored in the
    /// catalog again (default true; `keys resolve --no-store` turns it off).
    pub store_hashes: std::sync::atomic::AtomicBool,
    /// `--password-command` / `ARCA_PASSWORD_COMMAND`.
    pub password_command: Option<String>,
    /// `--key-command` / `ARCA_KEY_COMMAND`.
    pub key_command: Option<String>,
    passphrase: OnceLock<Option<Arc<PassphraseProvider>>>,
    kms_client: tokio::sync::OnceCell<std::result::Result<Arc<KmsClient>, String>>,
    kms_regional: tokio::sync::Mutex<std::collections::HashMap<String, Arc<KmsClient>>>,
}

impl Credentials {
    pub fn new(passphrase_file: Option<PathBuf>, key_file: Option<PathBuf>) -> Self {
        Credentials {
            passphrase_file,
            key_file,
            interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
            kms: KmsSettings::default(),
            kmip: crate::keys::kmip::KmipSettings::default().with_env(),
            allow_expensive_kdf: false,
            store_hashes: std::sync::atomic::AtomicBool::new(true),
            password_command: None,
            key_command: None,
            passphrase: OnceLock::new(),
            kms_client: tokio::sync::OnceCell::new(),
            kms_regional: tokio::sync::Mutex::new(Default::default()),
        }
    }

    /// True when the user gave a passphrase explicitly (environment or file): it must then
    /// open the chain, whatever else could.
    pub fn explicit_passphrase(&self) -> bool {
        std::env::var_os("ARCA_PASSPHRASE").is_some_and(|v| !v.is_empty())
            || self.passphrase_file.is_some()
            || self.password_command.is_some()
    }

    /// True when the user gave a raw key explicitly (`--key-file` or `ARCA_KEY`).
    pub fn explicit_key(&self) -> bool {
        self.key_file.is_some()
            || self.key_command.is_some()
            || std::env::var_os("ARCA_KEY").is_some_and(|v| !v.is_empty())
    }

    /// A KMS client in the region of `arn` (a key is always called in its own region).
    pub async fn kms_client_for(&self, arn: &str) -> std::result::Result<Arc<KmsClient>, KeyError> {
        let Some(region) = crate::keys::aws_kms::arn_region(arn) else {
            return self.kms_client().await;
        };
        if self.kms.region.as_deref() == Some(region) {
            return self.kms_client().await;
        }
        let mut m = self.kms_regional.lock().await;
        if let Some(c) = m.get(region) {
            return Ok(c.clone());
        }
        let mut s = self.kms.clone();
        s.region = Some(region.to_string());
        let c = Arc::new(KmsClient::new(&s).await?);
        m.insert(region.to_string(), c.clone());
        Ok(c)
    }

    pub fn with_kms(mut self, kms: KmsSettings) -> Self {
        self.kms = kms;
        self
    }

    pub fn with_kmip(mut self, kmip: crate::keys::kmip::KmipSettings) -> Self {
        self.kmip = kmip.with_env();
        self
    }

    pub fn kmip_client(&self) -> std::result::Result<Arc<crate::keys::kmip::KmipClient>, KeyError> {
        crate::keys::kmip::KmipClient::new(&self.kmip).map(Arc::new)
    }

    /// The KMS client, created on first use (loading AWS credentials can take a moment).
    pub async fn kms_client(&self) -> std::result::Result<Arc<KmsClient>, KeyError> {
        self.kms_client
            .get_or_init(|| async {
                KmsClient::new(&self.kms)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
            .clone()
            .map_err(KeyError::Unavailable)
    }

    /// Reads a passphrase, as restic does: `--password-command` (or `ARCA_PASSWORD_COMMAND`)
    /// or `--passphrase-file` (both together are refused), else `ARCA_PASSPHRASE`, else a
    /// no-echo prompt on a terminal. A command runs only when a passphrase is needed.
    pub fn read_passphrase(&self, prompt: &str, confirm: bool) -> Result<Option<Passphrase>> {
        match (&self.password_command, &self.passphrase_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "--password-command (or ARCA_PASSWORD_COMMAND) and --passphrase-file are mutually exclusive: give one".into(),
                ))
            }
            (Some(cmd), None) => {
                let out = run_secret_command(cmd, "--password-command")?;
                return Ok(Some(Passphrase::new(out.to_string())));
            }
            (None, Some(f)) => {
                let s = std::fs::read_to_string(f)
                    .map_err(|e| Error::io(format!("read passphrase file {}", f.display()), e))?;
                let s = zeroize::Zeroizing::new(s);
                let s = s.trim_end_matches(['\n', '\r']);
                if s.is_empty() {
                    return Err(Error::Usage(format!(
                        "passphrase file {} is empty",
                        f.display()
                    )));
                }
                return Ok(Some(Passphrase::new(s.to_string())));
            }
            (None, None) => {}
        }
        if let Ok(v) = std::env::var("ARCA_PASSPHRASE") {
            if !v.is_empty() {
                return Ok(Some(Passphrase::new(v)));
            }
        }
        if !self.interactive {
            return Ok(None);
        }
        let a = rpassword::prompt_password(prompt)
            .map_err(|e| Error::io("read passphrase from the terminal", e))?;
        if a.is_empty() {
            return Err(Error::Usage("empty passphrase".into()));
        }
        if confirm {
            let b = rpassword::prompt_password("Repeat the passphrase: ")
                .map_err(|e| Error::io("read passphrase", e))?;
            if a != b {
                return Err(Error::Usage(
                    "the two passphrases differ; nothing was changed".into(),
                ));
            }
        }
        Ok(Some(Passphrase::new(a)))
    }

    fn passphrase_provider(&self, job: &str) -> Result<Option<Arc<PassphraseProvider>>> {
        if let Some(p) = self.passphrase.get() {
            return Ok(p.clone());
        }
        let p = self
            .read_passphrase(&format!("Passphrase for job '{job}': "), false)?
            .map(|p| {
                let mut pp = PassphraseProvider::new(p);
                pp.allow_expensive = self.allow_expensive_kdf;
                Arc::new(pp)
            });
        Ok(self.passphrase.get_or_init(|| p).clone())
    }

    /// The raw key: `--key-command` (or `ARCA_KEY_COMMAND`) or `--key-file` (not both), else
    /// `ARCA_KEY`, else the job's recorded key file.
    pub fn raw_key(&self, job_key_file: Option<&str>) -> Result<Option<(RawKeyProvider, String)>> {
        if let Some(cmd) = &self.key_command {
            if self.key_file.is_some() {
                return Err(Error::Usage(
                    "--key-command (or ARCA_KEY_COMMAND) and --key-file are mutually exclusive: give one".into(),
                ));
            }
            let out = run_secret_command(cmd, "--key-command")?;
            let p = RawKeyProvider::from_base64(&out)
                .map_err(|e| Error::Usage(format!("the output of --key-command: {e}")))?;
            return Ok(Some((p, "--key-command".into())));
        }
        let from_file = |p: &std::path::Path| -> Result<RawKeyProvider> {
            let t = zeroize::Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|e| Error::io(format!("read key file {}", p.display()), e))?,
            );
            RawKeyProvider::from_base64(&t)
                .map_err(|e| Error::Usage(format!("key file {}: {e}", p.display())))
        };
        if let Some(f) = &self.key_file {
            return Ok(Some((from_file(f)?, format!("key file {}", f.display()))));
        }
        if let Ok(v) = std::env::var("ARCA_KEY") {
            let v = zeroize::Zeroizing::new(v);
            if !v.is_empty() {
                let p = RawKeyProvider::from_base64(&v)
                    .map_err(|e| Error::Usage(format!("ARCA_KEY: {e}")))?;
                return Ok(Some((p, "ARCA_KEY".into())));
            }
        }
        if let Some(f) = job_key_file {
            let p = PathBuf::from(f);
            return Ok(Some((from_file(&p)?, format!("key file {}", p.display()))));
        }
        Ok(None)
    }
}

/// Runs `cmd` with `sh -c` and returns its standard output without the trailing newline: a
/// secret, never logged. A failure names the command and its status, never its output.
fn run_secret_command(cmd: &str, flag: &str) -> Result<zeroize::Zeroizing<String>> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::io(format!("run {flag} {cmd:?}"), e))?;
    let text = zeroize::Zeroizing::new(String::from_utf8(out.stdout).map_err(|_| {
        Error::Usage(format!(
            "{flag} {cmd:?} printed something that is not UTF-8"
        ))
    })?);
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "{flag} {cmd:?} failed ({}); no secret was read",
            out.status
        )));
    }
    let t = text.trim_end_matches(['\n', '\r']);
    if t.is_empty() {
        return Err(Error::Usage(format!("{flag} {cmd:?} printed nothing")));
    }
    Ok(zeroize::Zeroizing::new(t.to_string()))
}

#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub tier: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub struct Resolution {
    pub chain: OpenChain,
    pub tier: &'static str,
    pub attempts: Vec<Attempt>,
    /// The check of a given passphrase still running (see [`Request::defer_passphrase_check`]).
    pub pending: Option<PassphraseCheck>,
}

/// A given passphrase being checked on another thread, while the chain it must open is
/// already open with the catalog's stored hash of the same password (same salt and
/// parameters). [`PassphraseCheck::wait`] must be called before anything the command does
/// becomes visible; a wrong passphrase is then [`Error::WrongPassphrase`], exactly as if it
/// had been checked first. Dropped without `wait`, it still waits, and a wrong passphrase
/// stops the process rather than being ignored.
#[must_use = "a given passphrase must be checked before anything becomes visible"]
pub struct PassphraseCheck {
    handle: Option<std::thread::JoinHandle<std::result::Result<bool, KeyError>>>,
    job: String,
    password: String,
}

impl PassphraseCheck {
    /// Whether the check has finished (so that [`PassphraseCheck::wait`] will not block).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for the check: `Ok` if the passphrase is the password's.
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        let Some(h) = self.handle.take() else {
            return Ok(());
        };
        match h.join() {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(Error::WrongPassphrase {
                job: self.job.clone(),
                password: self.password.clone(),
            }),
            Ok(Err(e)) => Err(Error::KeysUnavailable {
                job: self.job.clone(),
                detail: format!("checking the given passphrase: {e}"),
            }),
            Err(_) => Err(Error::Other("the passphrase check failed".into())),
        }
    }
}

impl Drop for PassphraseCheck {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            // Only a caller that forgot to wait gets here: never carry on past a secret the
            // user gave that does not open the chain.
            eprintln!("arca: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

pub struct ResolveFailure {
    pub attempts: Vec<Attempt>,
    pub error: Error,
}

/// Which tiers may be tried (the recovery drill tries them one at a time).
#[derive(Clone, Copy, Debug)]
pub struct Tiers {
    pub catalog: bool,
    pub key: bool,
    pub kms: bool,
    pub passphrase: bool,
}

impl Tiers {
    pub const ALL: Tiers = Tiers {
        catalog: true,
        key: true,
        kms: true,
        passphrase: true,
    };
}

pub struct Request<'a> {
    pub job_name: &'a str,
    pub chain: ChainRecord,
    /// For one recovery point: the salt record it stores (`Some(None)`: it stores none).
    pub point_kdf: Option<Option<&'a KdfRecord>>,
    /// For one recovery point: the key generation it was written under. A point older than
    /// a rotation stores the salt of the retired password; the chain's keyslots hold the
    /// current one (authenticated by the chain record's MAC).
    pub point_generation: Option<u32>,
    pub point_label: Option<String>,
    pub catalog: Option<&'a Catalog>,
    pub creds: &'a Credentials,
    pub job_key_file: Option<&'a str>,
    /// Escrow records of this job (from its repository).
    pub escrow: &'a [EscrowRecord],
    pub tiers: Tiers,
    /// KMS key ARNs unwrapping may use (pinned in the catalog, or trusted by configuration).
    pub allowed_kms: Vec<String>,
    /// KMIP key uids unwrapping may use when the catalog pins them (`None`: any key on the
    /// configured KMIP server).
    pub allowed_kmip: Option<Vec<String>>,
    /// Whether a passphrase or key the user gave must open this chain (false only where the
    /// secret given is meant for something else, e.g. a password being added).
    pub explicit: bool,
    /// When a passphrase was given and the catalog's stored hash of that very password
    /// opens the chain: open it with the stored hash and check the passphrase (one Argon2id
    /// evaluation) on another thread, returned in [`Resolution::pending`].
    pub defer_passphrase_check: bool,
}

fn passphrase_slots(chain: &ChainRecord) -> Vec<(&Keyslot, &KdfRecord)> {
    chain
        .keyslots
        .iter()
        .filter_map(|s| match &s.params {
            SlotParams::Passphrase { kdf } => Some((s, kdf)),
            _ => None,
        })
        .collect()
}

struct State<'a> {
    req: &'a Request<'a>,
    ctx: SlotContext,
    attempts: Vec<Attempt>,
    wrong_passphrase: Option<String>,
    wrong_key: Option<String>,
    pending: Option<PassphraseCheck>,
}

impl State<'_> {
    fn fail(&mut self, tier: &'static str, detail: impl Into<String>) {
        self.attempts.push(Attempt {
            tier,
            ok: false,
            detail: detail.into(),
        });
    }
    fn ok(&mut self, tier: &'static str, detail: impl Into<String>) {
        self.attempts.push(Attempt {
            tier,
            ok: true,
            detail: detail.into(),
        });
    }
    fn restore_hash(&self, rec: &KdfRecord, hash: &SecretKey) {
        if !self
            .req
            .creds
            .store_hashes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        if let Some(cat) = self.req.catalog {
            // Already there: nothing to store, nothing to say.
            if let Ok(Some((known, _))) = cat.password_hash(&rec.password) {
                if known.salt == rec.salt {
                    return;
                }
            }
            // Never replace the hash of a password the catalog knows with another salt.
            if let Ok(Some(known)) = cat.password(&rec.password) {
                if known.kdf.salt != rec.salt {
                    tracing::warn!(
                        "not storing the hash of password '{}': the catalog holds another version of it",
                        rec.password
                    );
                    return;
                }
            }
            if cat.create_password(rec, "", hash).is_ok() {
                tracing::warn!(
                    "stored the hash of password '{}' in the catalog {} so that later runs need no passphrase \
                     (`--no-store` on `keys resolve` does not)",
                    rec.password,
                    cat.path().display()
                );
            }
        }
    }
}

/// Resolves the chain key for `req`, trying each tier in order.
pub async fn resolve(req: Request<'_>) -> std::result::Result<Resolution, ResolveFailure> {
    let ctx = SlotContext::of_chain(&req.chain, req.job_name);
    let mut st = State {
        req: &req,
        ctx,
        attempts: Vec::new(),
        wrong_passphrase: None,
        wrong_key: None,
        pending: None,
    };
    let found = match explicit_secrets(&mut st).await {
        Ok(Some(found)) => Some(found),
        Ok(None) => try_tiers(&mut st).await,
        Err(error) => {
            return Err(ResolveFailure {
                attempts: st.attempts,
                error,
            })
        }
    };
    let State {
        attempts,
        wrong_passphrase,
        wrong_key,
        pending,
        ..
    } = st;
    let job = req.job_name.to_string();
    match found {
        // v2: the chain record (mode, keyslots, KDF records, generations) must authenticate
        // under the key.
        Some((key, tier)) => match OpenChain::new(req.chain, key, &job) {
            Ok(chain) => Ok(Resolution {
                chain,
                tier,
                attempts,
                pending,
            }),
            Err(error) => Err(ResolveFailure { attempts, error }),
        },
        None => {
            let what = req
                .point_label
                .clone()
                .unwrap_or_else(|| format!("chain {}", req.chain.chain_id));
            let has_pass = !passphrase_slots(&req.chain).is_empty();
            let error = if let Some(password) = wrong_passphrase {
                Error::WrongPassphrase { job, password }
            } else if let Some(detail) = wrong_key {
                Error::WrongKey { job, detail }
            } else if req.chain.keyslots.is_empty() {
                Error::integrity(what, "corrupted: its chain has no key envelope")
            } else if has_pass && req.tiers.passphrase && matches!(req.point_kdf, Some(None)) {
                Error::integrity(what, "corrupted: no salt in its metadata, so no passphrase can open it, and no other key source did")
            } else if let Some(e) = attempts.iter().find(|a| a.detail.starts_with("corrupted:")) {
                Error::integrity(what, e.detail.clone())
            } else {
                let tried: Vec<String> = attempts
                    .iter()
                    .map(|a| format!("{}: {}", a.tier, a.detail))
                    .collect();
                Error::KeysUnavailable {
                    job,
                    detail: format!(
                        "no key source opened {what} ({}). {}",
                        tried.join("; "),
                        if has_pass {
                            "Give the passphrase (ARCA_PASSPHRASE, --passphrase-file, or a terminal prompt), or fix KMS access"
                        } else {
                            "Give the key (--key-file or ARCA_KEY), or fix access to the key manager (KMS or KMIP)"
                        }
                    ),
                }
            };
            Err(ResolveFailure { attempts, error })
        }
    }
}

/// A passphrase or key the user gave must open the chain: if it does not, that is an error
/// (exit 12) even when the catalog or KMS could have opened it.
async fn explicit_secrets(st: &mut State<'_>) -> Result<Option<(SecretKey, &'static str)>, Error> {
    let req = st.req;
    if !req.explicit {
        return Ok(None);
    }
    let job = req.job_name.to_string();
    let mode = req.chain.encryption.as_str();
    if req.tiers.passphrase && req.creds.explicit_passphrase() {
        let pslots = passphrase_slots(&req.chain);
        if pslots.is_empty() {
            st.fail(
                "passphrase",
                "a passphrase was given, but the chain has no passphrase keyslot",
            );
            return Err(Error::WrongKey {
                job,
                detail: format!(
                    "a passphrase was given (ARCA_PASSPHRASE or --passphrase-file), but chain {} (encryption {mode}) has no passphrase keyslot, so it cannot open it; unset it to use the job's own key source",
                    req.chain.chain_id
                ),
            });
        }
        let what = req
            .point_label
            .clone()
            .unwrap_or_else(|| format!("chain {}", req.chain.chain_id));
        if req.defer_passphrase_check && !(req.tiers.key && req.creds.explicit_key()) {
            if let Some(k) = deferred_passphrase(st, &pslots).await {
                return Ok(Some((k, "passphrase")));
            }
        }
        return match tier_passphrase(st, &pslots).await {
            Some(k) => {
                // A key given as well must open the chain too: no secret is ignored.
                if req.tiers.key && req.creds.explicit_key() {
                    if let Some((p, from)) = req.creds.raw_key(None)? {
                        match unwrap_any(&p, &req.chain.keyslots, &st.ctx).await {
                            Some(Ok(_)) => st.ok("key", format!("{from} (key {}) opens it too", p.fingerprint())),
                            _ => {
                                return Err(Error::WrongKey {
                                    job,
                                    detail: format!(
                                        "the passphrase opens chain {}, but {from} (key {}) given as well does not",
                                        req.chain.chain_id,
                                        p.fingerprint()
                                    ),
                                })
                            }
                        }
                    }
                }
                Ok(Some((k, "passphrase")))
            }
            None => Err(match st.wrong_passphrase.clone() {
                Some(password) => Error::WrongPassphrase { job, password },
                None if matches!(req.point_kdf, Some(None)) => Error::integrity(
                    what,
                    "corrupted: no salt in its metadata, so no passphrase can open it",
                ),
                None => {
                    let d = st
                        .attempts
                        .last()
                        .map(|a| a.detail.clone())
                        .unwrap_or_default();
                    if let Some(c) = d.strip_prefix("corrupted: ") {
                        Error::integrity(format!("chain {}", req.chain.chain_id), c)
                    } else {
                        Error::KeysUnavailable { job, detail: d }
                    }
                }
            }),
        };
    }
    if req.tiers.key && req.creds.explicit_key() {
        let (p, from) = match req.creds.raw_key(None) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e),
        };
        return match unwrap_any(&p, &req.chain.keyslots, &st.ctx).await {
            Some(Ok(k)) => {
                st.ok("key", format!("{from} (key {})", p.fingerprint()));
                Ok(Some((k, "key")))
            }
            None => Err(Error::WrongKey {
                job,
                detail: format!(
                    "{from} (key {}) was given, but chain {} (encryption {mode}) has no raw-key keyslot, so it cannot open it",
                    p.fingerprint(),
                    req.chain.chain_id
                ),
            }),
            Some(Err(KeyError::WrongKey { what })) => Err(Error::WrongKey {
                job,
                detail: format!("{from} does not open it: wrong {what}"),
            }),
            Some(Err(e)) => Err(Error::integrity(
                format!("chain {}", req.chain.chain_id),
                format!("raw-key keyslot: {e}"),
            )),
        };
    }
    Ok(None)
}

async fn try_tiers(st: &mut State<'_>) -> Option<(SecretKey, &'static str)> {
    let req = st.req;
    let slots = &req.chain.keyslots;
    if slots
        .iter()
        .any(|s| matches!(s.params, SlotParams::None { .. }))
    {
        return match unwrap_any(&NoneProvider, slots, &st.ctx).await {
            Some(Ok(k)) => {
                st.ok("none", "the chain is not encrypted");
                Some((k, "none"))
            }
            other => {
                let d = other
                    .and_then(|r| r.err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                st.fail("none", format!("corrupted: unreadable keyslot {d}"));
                None
            }
        };
    }
    let pslots = passphrase_slots(&req.chain);

    // Tier 1: the catalog's stored password hash.
    if req.tiers.catalog && !pslots.is_empty() {
        if let Some(k) = tier_catalog(st, &pslots).await {
            return Some((k, "catalog"));
        }
    }
    // A raw key, if the chain has raw keyslots.
    if req.tiers.key
        && slots
            .iter()
            .any(|s| matches!(s.params, SlotParams::Raw { .. }))
    {
        match req.creds.raw_key(req.job_key_file) {
            Ok(Some((p, from))) => match unwrap_any(&p, slots, &st.ctx).await {
                Some(Ok(k)) => {
                    st.ok("key", format!("{from} (key {})", p.fingerprint()));
                    return Some((k, "key"));
                }
                Some(Err(KeyError::WrongKey { what })) => {
                    st.fail("key", format!("{from}: wrong {what}"));
                    st.wrong_key = Some(format!("{from} does not open it: wrong {what}"));
                }
                Some(Err(e)) => st.fail("key", format!("corrupted: {e}")),
                None => {}
            },
            Ok(None) => st.fail("key", "no key given (--key-file or ARCA_KEY)"),
            Err(e) => st.fail("key", e.to_string()),
        }
    }
    // Tier 2: KMS keyslots and escrow records.
    if req.tiers.kms {
        if let Some(found) = tier_kms(st, &pslots).await {
            return Some(found);
        }
    }
    // Tier 2 too: KMIP keyslots.
    if req.tiers.kms && slots.iter().any(|s| s.params.kmip_uid().is_some()) {
        match req.creds.kmip_client() {
            Ok(c) => {
                let p = crate::keys::kmip::KmipProvider::new(c, None);
                for s in slots.iter().filter(|s| s.params.kmip_uid().is_some()) {
                    let (SlotParams::Kmip {
                        key_uid, server, ..
                    }
                    | SlotParams::KmipEncrypt {
                        key_uid, server, ..
                    }) = &s.params
                    else {
                        continue;
                    };
                    if req
                        .allowed_kmip
                        .as_ref()
                        .is_some_and(|a| !a.contains(key_uid))
                    {
                        st.fail(
                            "kmip",
                            format!("KMIP key {key_uid} is not one the catalog pins for this job; not asking the server for it"),
                        );
                        continue;
                    }
                    match p.unwrap(s, &st.ctx).await {
                        Some(Ok(k)) => {
                            st.ok("kmip", format!("KMIP keyslot, key {key_uid} on {server}"));
                            return Some((k, "kmip"));
                        }
                        Some(Err(KeyError::WrongKey { what })) => {
                            st.fail("kmip", format!("wrong {what}"))
                        }
                        Some(Err(e)) => st.fail("kmip", e.to_string()),
                        None => {}
                    }
                }
            }
            Err(e) => st.fail("kmip", e.to_string()),
        }
    }
    // Tier 3: a passphrase with the salt stored in the recovery point.
    if req.tiers.passphrase && !pslots.is_empty() {
        if let Some(k) = tier_passphrase(st, &pslots).await {
            return Some((k, "passphrase"));
        }
    }
    None
}

async fn tier_catalog(st: &mut State<'_>, pslots: &[(&Keyslot, &KdfRecord)]) -> Option<SecretKey> {
    let Some(cat) = st.req.catalog else {
        st.fail("catalog", "no catalog");
        return None;
    };
    let mut why = Vec::new();
    for (_, kdf) in pslots {
        // A rotation in progress: chains already moved open with the journal's new hash.
        let stored = match cat.password_hash(&kdf.password) {
            Ok(Some((rec, _))) if rec.salt != kdf.salt => match cat.rotation(&kdf.password) {
                Ok(Some((_, _, new, hash))) if new.salt == kdf.salt => Ok(Some((new, hash))),
                _ => Ok(Some((rec, SecretKey::random()))),
            },
            other => other,
        };
        match stored {
            Ok(None) => why.push(format!("no stored hash for password '{}'", kdf.password)),
            Err(e) => why.push(e.to_string()),
            Ok(Some((rec, _))) if rec.salt != kdf.salt => why.push(format!(
                "the stored hash of password '{}' has another salt (the password was changed)",
                kdf.password
            )),
            Ok(Some((rec, hash))) => match unwrap_any(
                &PasswordHashProvider::new(rec, hash),
                &st.req.chain.keyslots,
                &st.ctx,
            )
            .await
            {
                Some(Ok(k)) => {
                    st.ok(
                        "catalog",
                        format!("stored hash of password '{}'", kdf.password),
                    );
                    return Some(k);
                }
                Some(Err(e)) => {
                    why.push(format!("stored hash of password '{}': {e}", kdf.password))
                }
                None => why.push(format!("no keyslot for password '{}'", kdf.password)),
            },
        }
    }
    st.fail("catalog", why.join("; "));
    None
}

async fn tier_kms(
    st: &mut State<'_>,
    pslots: &[(&Keyslot, &KdfRecord)],
) -> Option<(SecretKey, &'static str)> {
    let req = st.req;
    let kms_slots: Vec<&Keyslot> = req
        .chain
        .keyslots
        .iter()
        .filter(|s| matches!(s.params, SlotParams::Kms { .. }))
        .collect();
    let escrows: Vec<&EscrowRecord> = req
        .escrow
        .iter()
        .filter(|e| e.job_id == req.chain.job_id && e.repo_id == req.chain.repo_id)
        .filter(|e| pslots.iter().any(|(_, k)| **k == e.kdf))
        .collect();
    if kms_slots.is_empty() && escrows.is_empty() {
        st.fail("kms", "no KMS keyslot or escrow record for this chain");
        return None;
    }
    for s in kms_slots {
        let SlotParams::Kms { key_arn, .. } = &s.params else {
            continue;
        };
        let client = match req.creds.kms_client_for(key_arn).await {
            Ok(c) => c,
            Err(e) => {
                st.fail("kms", e.to_string());
                continue;
            }
        };
        let provider = KmsProvider::new(client, None).strict(req.allowed_kms.clone());
        match provider.unwrap(s, &st.ctx).await {
            Some(Ok(k)) => {
                st.ok("kms", format!("KMS keyslot, key {key_arn}"));
                return Some((k, "kms"));
            }
            Some(Err(e)) => st.fail("kms", format!("KMS keyslot: {e}")),
            None => {}
        }
    }
    for e in escrows {
        let tier = if e.provider.starts_with("kmip") {
            "kmip"
        } else {
            "kms"
        };
        if e.provider.starts_with("kmip")
            && req
                .allowed_kmip
                .as_ref()
                .is_some_and(|a| !a.contains(&e.key_arn))
        {
            st.fail(
                tier,
                format!(
                    "escrow record of password '{}': KMIP key {} is not one this catalog trusts",
                    e.kdf.password, e.key_arn
                ),
            );
            continue;
        }
        if !e.provider.starts_with("kmip") && !req.allowed_kms.contains(&e.key_arn) {
            st.fail(
                tier,
                format!(
                    "escrow record of password '{}': KMS key {} is not one this job trusts; pass --trust-kms-key {} (or list it under [kms] trusted_keys) if it is yours",
                    e.kdf.password, e.key_arn, e.key_arn
                ),
            );
            continue;
        }
        match crate::passwords::open_record(req.creds, e).await {
            Ok(hash) => {
                let p = PasswordHashProvider::new(e.kdf.clone(), hash.duplicate());
                match unwrap_any(&p, &req.chain.keyslots, &st.ctx).await {
                    Some(Ok(k)) => {
                        st.ok(
                            tier,
                            format!(
                                "escrow record of password '{}', key {}",
                                e.kdf.password, e.key_arn
                            ),
                        );
                        st.restore_hash(&e.kdf, &hash);
                        return Some((k, tier));
                    }
                    Some(Err(err)) => st.fail(
                        tier,
                        format!("escrowed hash of password '{}': {err}", e.kdf.password),
                    ),
                    None => st.fail(
                        tier,
                        format!("no keyslot for escrowed password '{}'", e.kdf.password),
                    ),
                }
            }
            Err(err) => st.fail(
                tier,
                format!("escrow record of password '{}': {err}", e.kdf.password),
            ),
        }
    }
    None
}

/// The chain opened by the catalog's stored hash of the password whose salt the passphrase
/// would be tried with, and the passphrase's own check started on another thread. `None`
/// (nothing recorded) whenever that is not exactly the case: the caller then checks the
/// passphrase first, as always.
async fn deferred_passphrase(
    st: &mut State<'_>,
    pslots: &[(&Keyslot, &KdfRecord)],
) -> Option<SecretKey> {
    let req = st.req;
    let retired = req
        .point_generation
        .is_some_and(|g| g < req.chain.current_generation());
    let rec: &KdfRecord = match req.point_kdf {
        Some(Some(k)) if !retired => k,
        None if pslots.len() == 1 => pslots[0].1,
        _ => return None,
    };
    let (_, slot_kdf) = pslots.iter().find(|(_, k)| k.salt == rec.salt)?;
    if *slot_kdf != rec {
        return None;
    }
    let (stored, hash) = req.catalog?.password_hash(&rec.password).ok()??;
    if stored != *rec {
        return None;
    }
    let provider = req.creds.passphrase_provider(req.job_name).ok()??;
    let opener = PasswordHashProvider::new(stored, hash.duplicate());
    let key = match unwrap_any(&opener, &req.chain.keyslots, &st.ctx).await {
        Some(Ok(k)) => k,
        _ => return None,
    };
    let (rec_owned, expected) = (rec.clone(), hash);
    let handle = std::thread::Builder::new()
        .name("arca-passphrase".into())
        .spawn(move || {
            crate::fault::slow_passphrase_check();
            provider.hash_for(&rec_owned).map(|h| {
                // blake3::Hash compares in constant time.
                blake3::Hash::from_bytes(*h.expose())
                    == blake3::Hash::from_bytes(*expected.expose())
            })
        })
        .ok()?;
    tracing::debug!(
        "password '{}': chain opened with the catalog's stored hash; the given passphrase is checked while the work starts",
        rec.password
    );
    st.ok(
        "passphrase",
        format!(
            "passphrase for password '{}', checked against the catalog's stored hash while the work starts",
            rec.password
        ),
    );
    st.pending = Some(PassphraseCheck {
        handle: Some(handle),
        job: req.job_name.to_string(),
        password: rec.password.clone(),
    });
    Some(key)
}

async fn tier_passphrase(
    st: &mut State<'_>,
    pslots: &[(&Keyslot, &KdfRecord)],
) -> Option<SecretKey> {
    let req = st.req;
    let what = req
        .point_label
        .clone()
        .unwrap_or_else(|| format!("chain {}", req.chain.chain_id));
    let retired = req
        .point_generation
        .is_some_and(|g| g < req.chain.current_generation());
    let records: Vec<&KdfRecord> = match req.point_kdf {
        Some(None) => {
            st.fail("passphrase", format!("{what} stores no salt"));
            return None;
        }
        Some(Some(k)) if retired && !pslots.iter().any(|(_, s)| s.salt == k.salt) => {
            st.ok(
                "passphrase",
                format!(
                    "the salt of password '{}' stored in {what} was retired by a rotation: using the chain's current keyslots",
                    k.password
                ),
            );
            pslots.iter().map(|(_, k)| *k).collect()
        }
        Some(Some(k)) => vec![k],
        None => pslots.iter().map(|(_, k)| *k).collect(),
    };
    let provider = match req.creds.passphrase_provider(req.job_name) {
        Ok(Some(p)) => p,
        Ok(None) => {
            st.fail(
                "passphrase",
                "no passphrase given (ARCA_PASSPHRASE, --passphrase-file, or a terminal prompt)",
            );
            return None;
        }
        Err(e) => {
            st.fail("passphrase", e.to_string());
            return None;
        }
    };
    for rec in records {
        let Some((slot, slot_kdf)) = pslots.iter().find(|(_, k)| k.salt == rec.salt) else {
            st.fail(
                "passphrase",
                format!(
                    "corrupted: no key envelope for the salt of password '{}' stored in {what}",
                    rec.password
                ),
            );
            return None;
        };
        if *slot_kdf != rec {
            st.fail(
                "passphrase",
                format!(
                    "corrupted: the salt record of password '{}' in {what} differs from its keyslot's",
                    rec.password
                ),
            );
            return None;
        }
        match provider.unwrap(slot, &st.ctx).await {
            Some(Ok(k)) => {
                st.ok(
                    "passphrase",
                    format!(
                        "passphrase for password '{}' with the stored salt",
                        rec.password
                    ),
                );
                if let Ok(hash) = provider.hash_for(rec) {
                    st.restore_hash(rec, &hash);
                }
                return Some(k);
            }
            Some(Err(KeyError::WrongKey { .. })) => {
                st.fail(
                    "passphrase",
                    format!("wrong passphrase for password '{}'", rec.password),
                );
                st.wrong_passphrase.get_or_insert(rec.password.clone());
            }
            Some(Err(e)) => st.fail(
                "passphrase",
                format!("corrupted: keyslot of password '{}': {e}", rec.password),
            ),
            None => {}
        }
    }
    None
}
