//! The restore resolver: finds a chain's key and explains how.
//!
//! Passphrase chains: tier 1, the password hash stored in the catalog → tier 2, KMS (escrow
//! records and KMS keyslots; none exist yet in this version, and the tier says so) → tier 3,
//! a passphrase from `ARCA_PASSPHRASE`, `--passphrase-file` or the prompt, with the salt
//! stored in the recovery point → otherwise the point is reported corrupted (no salt, or no
//! keyslot for that salt). Raw-key chains use the key file or `ARCA_KEY`; "none" chains open
//! directly. After tier 3 opens a chain, the password hash is stored in the catalog again.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::catalog::Catalog;
use crate::crypto::{Passphrase, SecretKey};
use crate::engine::OpenChain;
use crate::error::{Error, Result};
use crate::keys::none::NoneProvider;
use crate::keys::passphrase::{PassphraseProvider, PasswordHashProvider};
use crate::keys::raw::RawKeyProvider;
use crate::keys::{unwrap_any, KeyError, KeyProvider, SlotContext};
use crate::repo::format::{ChainRecord, EncryptionMode, KdfRecord, Keyslot, SlotParams};

/// Where secrets may come from. Nothing is read or prompted until a tier needs it.
pub struct Credentials {
    pub passphrase_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// May prompt on the terminal.
    pub interactive: bool,
    passphrase: OnceLock<Option<Arc<PassphraseProvider>>>,
}

impl Credentials {
    pub fn new(passphrase_file: Option<PathBuf>, key_file: Option<PathBuf>) -> Self {
        Credentials {
            passphrase_file,
            key_file,
            interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
            passphrase: OnceLock::new(),
        }
    }

    /// Reads a passphrase: `ARCA_PASSPHRASE`, else `--passphrase-file`, else a no-echo prompt.
    pub fn read_passphrase(&self, prompt: &str, confirm: bool) -> Result<Option<Passphrase>> {
        if let Ok(v) = std::env::var("ARCA_PASSPHRASE") {
            if !v.is_empty() {
                return Ok(Some(Passphrase::new(v)));
            }
        }
        if let Some(f) = &self.passphrase_file {
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
            .map(|p| Arc::new(PassphraseProvider::new(p)));
        Ok(self.passphrase.get_or_init(|| p).clone())
    }

    /// The raw key: `--key-file`, else `ARCA_KEY`, else the job's recorded key file.
    pub fn raw_key(&self, job_key_file: Option<&str>) -> Result<Option<(RawKeyProvider, String)>> {
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
}

pub struct ResolveFailure {
    pub attempts: Vec<Attempt>,
    pub error: Error,
}

pub struct Request<'a> {
    pub job_name: &'a str,
    pub chain: ChainRecord,
    /// For one recovery point: the salt record it stores (`Some(None)`: it stores none).
    pub point_kdf: Option<Option<&'a KdfRecord>>,
    pub point_label: Option<String>,
    pub catalog: Option<&'a Catalog>,
    pub creds: &'a Credentials,
    pub job_key_file: Option<&'a str>,
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

/// Resolves the chain key for `req`, trying each tier in order.
pub async fn resolve(req: Request<'_>) -> std::result::Result<Resolution, ResolveFailure> {
    let mut attempts = Vec::new();
    let ctx = SlotContext::of_chain(&req.chain, req.job_name);
    let job = req.job_name.to_string();
    let fail = |attempts: Vec<Attempt>, error: Error| Err(ResolveFailure { attempts, error });
    let done = |key: SecretKey, tier: &'static str, attempts: Vec<Attempt>, chain: ChainRecord| {
        Ok(Resolution {
            chain: OpenChain::new(chain, key, &job),
            tier,
            attempts,
        })
    };

    match req.chain.encryption {
        EncryptionMode::None => match unwrap_any(&NoneProvider, &req.chain.keyslots, &ctx).await {
            Some(Ok(k)) => {
                attempts.push(Attempt {
                    tier: "none",
                    ok: true,
                    detail: "chain is not encrypted".into(),
                });
                done(k, "none", attempts, req.chain)
            }
            other => {
                let d = other
                    .map(|r| r.err().map(|e| e.to_string()).unwrap_or_default())
                    .unwrap_or("no keyslot".into());
                fail(
                    attempts,
                    Error::integrity(format!("chain {}", req.chain.chain_id), d),
                )
            }
        },
        EncryptionMode::Key => {
            let (p, from) = match req.creds.raw_key(req.job_key_file) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    attempts.push(Attempt {
                        tier: "key",
                        ok: false,
                        detail: "no key given".into(),
                    });
                    return fail(
                        attempts,
                        Error::KeysUnavailable {
                            job,
                            detail: "this job is encrypted with a raw key: pass --key-file FILE or set ARCA_KEY".into(),
                        },
                    );
                }
                Err(e) => return fail(attempts, e),
            };
            match unwrap_any(&p, &req.chain.keyslots, &ctx).await {
                Some(Ok(k)) => {
                    attempts.push(Attempt {
                        tier: "key",
                        ok: true,
                        detail: format!("{from} (key {})", p.fingerprint()),
                    });
                    done(k, "key", attempts, req.chain)
                }
                Some(Err(KeyError::WrongKey { what })) => {
                    attempts.push(Attempt {
                        tier: "key",
                        ok: false,
                        detail: format!("{from}: wrong {what}"),
                    });
                    fail(
                        attempts,
                        Error::WrongKey {
                            job,
                            detail: format!("{from} does not open it: wrong {what}"),
                        },
                    )
                }
                Some(Err(e)) => {
                    attempts.push(Attempt {
                        tier: "key",
                        ok: false,
                        detail: e.to_string(),
                    });
                    fail(
                        attempts,
                        Error::integrity(format!("keyslot of chain {}", req.chain.chain_id), e),
                    )
                }
                None => fail(
                    attempts,
                    Error::integrity(
                        format!("chain {}", req.chain.chain_id),
                        "no raw-key keyslot (corrupted)",
                    ),
                ),
            }
        }
        EncryptionMode::Passphrase => resolve_passphrase(req, ctx, attempts).await,
    }
}

async fn resolve_passphrase(
    req: Request<'_>,
    ctx: SlotContext,
    mut attempts: Vec<Attempt>,
) -> std::result::Result<Resolution, ResolveFailure> {
    let job = req.job_name.to_string();
    let slots = passphrase_slots(&req.chain);
    let what = req
        .point_label
        .clone()
        .unwrap_or_else(|| format!("chain {}", req.chain.chain_id));

    // Tier 1: the catalog's stored password hash.
    let mut tier1 = Vec::new();
    match req.catalog {
        None => tier1.push("no catalog".to_string()),
        Some(cat) => {
            for (_, kdf) in &slots {
                match cat.password_hash(&kdf.password) {
                    Ok(None) => {
                        tier1.push(format!("no stored hash for password '{}'", kdf.password))
                    }
                    Err(e) => tier1.push(e.to_string()),
                    Ok(Some((rec, hash))) => {
                        if rec.salt != kdf.salt {
                            tier1.push(format!(
                                "the stored hash of password '{}' has another salt (the password was changed)",
                                kdf.password
                            ));
                            continue;
                        }
                        let p = PasswordHashProvider::new(rec, hash);
                        match unwrap_any(&p, &req.chain.keyslots, &ctx).await {
                            Some(Ok(k)) => {
                                attempts.push(Attempt {
                                    tier: "catalog",
                                    ok: true,
                                    detail: format!("stored hash of password '{}'", kdf.password),
                                });
                                return Ok(Resolution {
                                    chain: OpenChain::new(req.chain, k, &job),
                                    tier: "catalog",
                                    attempts,
                                });
                            }
                            Some(Err(e)) => tier1
                                .push(format!("stored hash of password '{}': {e}", kdf.password)),
                            None => {
                                tier1.push(format!("no keyslot for password '{}'", kdf.password))
                            }
                        }
                    }
                }
            }
        }
    }
    if slots.is_empty() {
        tier1.push("the chain has no passphrase keyslot".into());
    }
    attempts.push(Attempt {
        tier: "catalog",
        ok: false,
        detail: tier1.join("; "),
    });

    // Tier 2: KMS.
    attempts.push(Attempt {
        tier: "kms",
        ok: false,
        detail: "no KMS keyslot or escrow record for this chain".into(),
    });

    // Tier 3: a passphrase with the salt stored in the recovery point.
    let records: Vec<&KdfRecord> = match req.point_kdf {
        Some(None) => {
            attempts.push(Attempt {
                tier: "passphrase",
                ok: false,
                detail: format!("{what} stores no salt"),
            });
            return Err(ResolveFailure {
                attempts,
                error: Error::integrity(
                    what,
                    "corrupted: no salt in its metadata, so no passphrase can open it",
                ),
            });
        }
        Some(Some(k)) => vec![k],
        None => slots.iter().map(|(_, k)| *k).collect(),
    };
    let provider = match req.creds.passphrase_provider(req.job_name) {
        Ok(Some(p)) => p,
        Ok(None) => {
            attempts.push(Attempt {
                tier: "passphrase",
                ok: false,
                detail:
                    "no passphrase given (ARCA_PASSPHRASE, --passphrase-file, or a terminal prompt)"
                        .into(),
            });
            return Err(ResolveFailure {
                attempts,
                error: Error::KeysUnavailable {
                    job,
                    detail: "no stored password hash opens it and no passphrase was given; set ARCA_PASSPHRASE, pass --passphrase-file FILE, or run on a terminal to be asked".into(),
                },
            });
        }
        Err(e) => return Err(ResolveFailure { attempts, error: e }),
    };
    let mut wrong = None;
    for rec in records {
        let Some((slot, _)) = slots.iter().find(|(_, k)| k.salt == rec.salt) else {
            attempts.push(Attempt {
                tier: "passphrase",
                ok: false,
                detail: format!(
                    "no keyslot for the salt of password '{}' stored in {what}",
                    rec.password
                ),
            });
            return Err(ResolveFailure {
                attempts,
                error: Error::integrity(
                    what,
                    format!("corrupted: no key envelope for password '{}'", rec.password),
                ),
            });
        };
        match provider.unwrap(slot, &ctx).await {
            Some(Ok(k)) => {
                attempts.push(Attempt {
                    tier: "passphrase",
                    ok: true,
                    detail: format!(
                        "passphrase for password '{}' with the stored salt",
                        rec.password
                    ),
                });
                if let (Some(cat), Ok(hash)) = (req.catalog, provider.hash_for(rec)) {
                    if cat.create_password(rec, "", &hash).is_ok() {
                        tracing::info!(
                            "stored the hash of password '{}' in the catalog again",
                            rec.password
                        );
                    }
                }
                return Ok(Resolution {
                    chain: OpenChain::new(req.chain, k, &job),
                    tier: "passphrase",
                    attempts,
                });
            }
            Some(Err(KeyError::WrongKey { .. })) => {
                attempts.push(Attempt {
                    tier: "passphrase",
                    ok: false,
                    detail: format!("wrong passphrase for password '{}'", rec.password),
                });
                wrong.get_or_insert(rec.password.clone());
            }
            Some(Err(e)) => {
                attempts.push(Attempt {
                    tier: "passphrase",
                    ok: false,
                    detail: e.to_string(),
                });
                return Err(ResolveFailure {
                    attempts,
                    error: Error::integrity(format!("keyslot of password '{}'", rec.password), e),
                });
            }
            None => {}
        }
    }
    let password = wrong.unwrap_or_default();
    Err(ResolveFailure {
        attempts,
        error: Error::WrongPassphrase { job, password },
    })
}
