//! `~/.config/arca/config.toml` (or `$ARCA_CONFIG`): settings that flags and the standard
//! AWS environment can override.
//!
//! ```toml
//! [kms]
//! region = "eu-west-1"
//! endpoint = "http://127.0.0.1:4566"   # LocalStack or another emulator; else AWS
//! profile = "backup"
//! timeout_seconds = 30                  # one KMS operation, retries included
//! max_attempts = 4
//!
//! [kmip]
//! host = "kmip.example.com"
//! port = 5696
//! ca = "/etc/arca/kmip-ca.pem"
//! cert = "/etc/arca/kmip-client.pem"
//! key = "/etc/arca/kmip-client.key"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::keys::aws_kms::KmsSettings;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub kms: KmsSettings,
    #[serde(default)]
    pub kmip: crate::keys::kmip::KmipSettings,
}

impl Config {
    pub fn default_path() -> Option<PathBuf> {
        dirs::config_dir().map(|d| d.join("arca").join("config.toml"))
    }

    /// Loads `path`, or `$ARCA_CONFIG`, or the default path; a missing default file is fine.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ARCA_CONFIG").map(PathBuf::from));
        let p = match (&explicit, Self::default_path()) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) if p.exists() => p,
            _ => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&p)
            .map_err(|e| Error::io(format!("read config {}", p.display()), e))?;
        toml::from_str(&text).map_err(|e| Error::Usage(format!("config {}: {e}", p.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c: Config = toml::from_str("[kms]\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:1\"\ntimeout_seconds = 2.5\n").unwrap();
        assert_eq!(c.kms.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.kms.timeout_seconds, Some(2.5));
        assert!(toml::from_str::<Config>("[kms]\nregoin = \"x\"\n").is_err());
    }
}
