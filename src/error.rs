//! Errors of the library and their stable exit codes.
//!
//! Rules: every message says what went wrong, where, and what to do next. Crypto failures are
//! coarse ("wrong passphrase", "integrity error in <object>"), never which byte failed.
//! Secrets never appear in a message.

use std::path::Path;

/// Exit codes (documented in README.md; stable).
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PARTIAL: i32 = 3;
    pub const KEYS: i32 = 12;
    pub const INTEGRITY: i32 = 13;
    pub const UNTRUSTED: i32 = 14;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The request does not make sense as given.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "wrong passphrase for job '{job}' (password '{password}'): it does not open the job's key. \
         Check the passphrase (ARCA_PASSPHRASE, --passphrase-file or the prompt) and try again"
    )]
    WrongPassphrase { job: String, password: String },
    #[error("wrong bundle passphrase: it does not open {0}; nothing was imported")]
    WrongBundlePassphrase(String),
    #[error("wrong key for job '{job}': {detail}")]
    WrongKey { job: String, detail: String },
    /// Keys could not be resolved for a reason other than a wrong secret.
    #[error("keys for job '{job}' could not be resolved: {detail}")]
    KeysUnavailable { job: String, detail: String },
    /// Repository data is corrupted or was tampered with.
    #[error("integrity error in {object}: {detail}. Run `arca check --read-data` to find every damaged object")]
    Integrity { object: String, detail: String },
    #[error("catalog {path}: {detail}")]
    Catalog { path: String, detail: String },
    #[error(
        "repository {path} is locked by another arca process ({detail}); wait for it to finish"
    )]
    Locked { path: String, detail: String },
    /// The repository disagrees with what the catalog trusts (another chain, mode, source,
    /// key, an older record or a lost recovery point). Accepting it is an explicit act.
    #[error("{0}")]
    Untrusted(String),
    /// SIGINT or SIGTERM stopped the operation at a safe point; `detail` says what was kept
    /// and what the next run does. Exit 128 + the signal's number (130, 143).
    #[error("{detail}")]
    Interrupted { signal: i32, detail: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::WrongPassphrase { .. }
            | Error::WrongKey { .. }
            | Error::WrongBundlePassphrase(_)
            | Error::KeysUnavailable { .. } => exit::KEYS,
            Error::Integrity { .. } => exit::INTEGRITY,
            Error::Untrusted(_) => exit::UNTRUSTED,
            Error::Interrupted { signal, .. } => 128 + signal,
            _ => exit::ERROR,
        }
    }

    /// A stable name of the error's kind, for `--json` error objects.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Usage(_) => "usage",
            Error::NotFound(_) => "not_found",
            Error::WrongPassphrase { .. } => "wrong_passphrase",
            Error::WrongBundlePassphrase(_) => "wrong_bundle_passphrase",
            Error::WrongKey { .. } => "wrong_key",
            Error::KeysUnavailable { .. } => "keys_unavailable",
            Error::Integrity { .. } => "integrity",
            Error::Catalog { .. } => "catalog",
            Error::Locked { .. } => "locked",
            Error::Untrusted(_) => "untrusted",
            Error::Interrupted { .. } => "interrupted",
            Error::Other(_) => "other",
        }
    }

    /// The `--json` form of an error, printed on standard error:
    /// `{"error": {"kind": ..., "message": ..., "exit_code": N}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "kind": self.kind(),
            "message": self.to_string(),
            "exit_code": self.exit_code(),
        }})
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn integrity(object: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Integrity {
            object: object.into(),
            detail: detail.to_string(),
        }
    }

    /// True if the underlying cause is "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

/// `io::Result` → [`Error::Io`] with the path it concerned.
pub trait IoContext<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(format!("{what} {}", path.display()), e))
    }
}
