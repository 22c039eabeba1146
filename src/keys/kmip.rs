//! KMIP keyslots: a key kept in a KMIP key manager (Thales, Entrust, Fortanix, Vault, PyKMIP)
//! wraps the chain key.
//!
//! The `kmip-protocol` client has no Encrypt/Decrypt operations, so arca fetches the AES-256
//! key with `Get` over mutually authenticated TLS, checks that its State is Active, wraps or
//! unwraps locally with the same AES-256-GCM key wrapping (with key commitment) as every other
//! keyslot, and drops (zeroizes) the key right away. SECURITY.md discusses what that means.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kmip_protocol::client::{
    Client, ClientBuilder, ClientCertificate, ConnectionSettings, Error as KmipError,
};
use kmip_protocol::types::common::{
    AttributeName, AttributeValue, CryptographicAlgorithm, KeyMaterial, ObjectType, State,
    UniqueIdentifier,
};
use kmip_protocol::types::request::{Attribute, RequestPayload, TemplateAttribute};
use kmip_protocol::types::response::{ManagedObject, ResponsePayload};

use super::{KeyError, KeyProvider, SlotContext};
use crate::crypto::SecretKey;
use crate::repo::format::{Keyslot, SlotParams};

/// How to reach the KMIP server (config file `[kmip]`, `ARCA_KMIP_*`, or flags).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmipSettings {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// CA certificate (PEM) that signed the server's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub timeout_seconds: Option<f64>,
}

impl KmipSettings {
    /// Fills unset fields from `ARCA_KMIP_HOST`, `_PORT`, `_CA`, `_CERT`, `_KEY`.
    pub fn with_env(mut self) -> Self {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        self.host = self.host.or_else(|| var("ARCA_KMIP_HOST"));
        self.port = self
            .port
            .or_else(|| var("ARCA_KMIP_PORT").and_then(|p| p.parse().ok()));
        self.ca = self.ca.or_else(|| var("ARCA_KMIP_CA").map(PathBuf::from));
        self.cert = self
            .cert
            .or_else(|| var("ARCA_KMIP_CERT").map(PathBuf::from));
        self.key = self.key.or_else(|| var("ARCA_KMIP_KEY").map(PathBuf::from));
        self
    }
}

type TlsClient = Client<openssl::ssl::SslStream<std::net::TcpStream>>;

pub struct KmipClient {
    settings: ConnectionSettings,
    server: String,
}

fn read(p: &Option<PathBuf>, what: &str) -> Result<Vec<u8>, KeyError> {
    let p = p.as_ref().ok_or_else(|| {
        KeyError::Unavailable(format!(
            "no KMIP {what} configured (see [kmip] in the config file or ARCA_KMIP_*)"
        ))
    })?;
    std::fs::read(p).map_err(|e| {
        KeyError::Unavailable(format!("cannot read the KMIP {what} {}: {e}", p.display()))
    })
}

impl KmipClient {
    pub fn new(s: &KmipSettings) -> Result<KmipClient, KeyError> {
        let host = s.host.clone().ok_or_else(|| KeyError::Unavailable("no KMIP server configured: set host and port under [kmip], or ARCA_KMIP_HOST/ARCA_KMIP_PORT".into()))?;
        let port = s.port.unwrap_or(5696);
        let timeout = Duration::from_secs_f64(s.timeout_seconds.unwrap_or(15.0).clamp(0.5, 600.0));
        let settings = ConnectionSettings {
            host: host.clone(),
            port,
            ca_cert: Some(read(&s.ca, "CA certificate")?),
            client_cert: Some(ClientCertificate::SeparatePem {
                cert_bytes: read(&s.cert, "client certificate")?,
                key_bytes: Some(read(&s.key, "client key")?),
            }),
            connect_timeout: Some(timeout),
            read_timeout: Some(timeout),
            write_timeout: Some(timeout),
            max_response_bytes: Some(1 << 20),
            ..Default::default()
        };
        Ok(KmipClient {
            settings,
            server: format!("{host}:{port}"),
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn err(&self, key: &str, e: KmipError) -> KeyError {
        let s = match &e {
            KmipError::ConfigurationError(m) if m.contains("TLS") => format!(
                "TLS with KMIP server {} failed ({m}): check the CA certificate and the client certificate and key (mutual TLS)",
                self.server
            ),
            KmipError::ServerError(m) if m.contains("I/O error") => {
                format!("KMIP server {} is unreachable ({m}): check host, port and network", self.server)
            }
            KmipError::RequestWriteError(m) | KmipError::ResponseReadError(m) => format!(
                "KMIP server {} closed or broke the connection ({m}); a rejected client certificate looks like this",
                self.server
            ),
            KmipError::ItemNotFound(m) if m.contains("locate") || m.contains("not found") || m.contains("No object") => {
                format!("key {key} not found on KMIP server {} ({m})", self.server)
            }
            KmipError::ItemNotFound(m) | KmipError::ServerError(m) if m.contains("certificate") => format!(
                "TLS client authentication with KMIP server {} failed: the server rejected the client certificate ({m}); check the client certificate and key",
                self.server
            ),
            KmipError::ItemNotFound(m) | KmipError::ServerError(m) => {
                format!("KMIP server {} refused the request for key {key}: {m}", self.server)
            }
            other => format!("KMIP server {} refused the request for key {key}: {other:?}", self.server),
        };
        KeyError::Unavailable(s)
    }

    /// A mutually authenticated TLS connection that trusts only the configured CA (never
    /// the system store) and never writes TLS secrets to `SSLKEYLOGFILE`.
    fn connect(&self, key: &str) -> Result<TlsClient, KeyError> {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        use openssl::x509::{store::X509StoreBuilder, X509};
        let tls = |what: &str, e: &dyn std::fmt::Display| {
            KeyError::Unavailable(format!(
                "TLS with KMIP server {} failed ({what}: {e}): check the CA certificate and the client certificate and key (mutual TLS)",
                self.server
            ))
        };
        let s = &self.settings;
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls("init", &e))?;
        // A store holding only the configured CA replaces the default one (which holds the
        // system's trusted roots, SSL_CERT_FILE and SSL_CERT_DIR).
        let mut store = X509StoreBuilder::new().map_err(|e| tls("init", &e))?;
        let ca = X509::from_pem(s.ca_cert.as_deref().unwrap_or_default())
            .map_err(|e| tls("CA certificate", &e))?;
        store.add_cert(ca).map_err(|e| tls("CA certificate", &e))?;
        b.set_cert_store(store.build());
        b.set_verify(SslVerifyMode::PEER);
        if let Some(ClientCertificate::SeparatePem {
            cert_bytes,
            key_bytes,
        }) = &s.client_cert
        {
            let cert = X509::from_pem(cert_bytes).map_err(|e| tls("client certificate", &e))?;
            b.set_certificate(&cert)
                .map_err(|e| tls("client certificate", &e))?;
            let pkey =
                openssl::pkey::PKey::private_key_from_pem(key_bytes.as_deref().unwrap_or_default())
                    .map_err(|e| tls("client key", &e))?;
            b.set_private_key(&pkey)
                .map_err(|e| tls("client key", &e))?;
        }
        let connector = b.build();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(s.host.as_str(), s.port))
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                KeyError::Unavailable(format!(
                    "KMIP server {}: cannot resolve its address",
                    self.server
                ))
            })?;
        let unreachable =
            |e: std::io::Error| self.err(key, KmipError::ServerError(format!("I/O error: {e}")));
        let tcp = std::net::TcpStream::connect_timeout(
            &addr,
            s.connect_timeout.unwrap_or(Duration::from_secs(15)),
        )
        .map_err(unreachable)?;
        tcp.set_read_timeout(s.read_timeout).map_err(unreachable)?;
        tcp.set_write_timeout(s.write_timeout)
            .map_err(unreachable)?;
        let stream = connector
            .connect(&s.host, tcp)
            .map_err(|e| tls("handshake", &e))?;
        let mut reader = kmip_ttlv::Config::default().with_read_buf();
        if let Some(max) = s.max_response_bytes {
            reader = reader.with_max_bytes(max);
        }
        Ok(ClientBuilder::new(stream)
            .with_reader_config(reader)
            .build())
    }

    fn call(&self, key: &str, req: RequestPayload) -> Result<ResponsePayload, KeyError> {
        let client = self.connect(key)?;
        client.do_request(req).map_err(|e| self.err(key, e))
    }

    /// Creates and activates an AES-256 key named `name`; returns its unique identifier.
    pub fn create_key(&self, name: &str) -> Result<String, KeyError> {
        if !self.locate(name)?.is_empty() {
            return Err(KeyError::Unavailable(format!(
                "KMIP server {} already has a key named '{name}'",
                self.server
            )));
        }
        let req = RequestPayload::Create(
            ObjectType::SymmetricKey,
            // The name as a plain attribute: some servers (PyKMIP) refuse named templates.
            TemplateAttribute::unnamed(vec![
                Attribute::CryptographicAlgorithm(CryptographicAlgorithm::AES),
                Attribute::CryptographicLength(256),
                // Encrypt | Decrypt (the crate's helper takes one flag only).
                Attribute(
                    AttributeName("Cryptographic Usage Mask".into()),
                    None,
                    AttributeValue::Integer(0x4 | 0x8),
                ),
                Attribute::Name(name.to_string()),
            ]),
        );
        let uid = match self.call(name, req)? {
            ResponsePayload::Create(c) => c.unique_identifier.0,
            other => {
                return Err(KeyError::Unavailable(format!(
                    "KMIP Create returned {other:?}"
                )))
            }
        };
        let client = self.connect(name)?;
        client.activate_key(&uid).map_err(|e| self.err(name, e))?;
        Ok(uid)
    }

    pub fn locate(&self, name: &str) -> Result<Vec<String>, KeyError> {
        match self.call(
            name,
            RequestPayload::Locate(vec![Attribute::Name(name.to_string())]),
        )? {
            ResponsePayload::Locate(l) => {
                Ok(l.unique_identifiers.into_iter().map(|u| u.0).collect())
            }
            other => Err(KeyError::Unavailable(format!(
                "KMIP Locate returned {other:?}"
            ))),
        }
    }

    /// A key name (located) or a unique identifier → the unique identifier.
    pub fn resolve(&self, key: &str) -> Result<String, KeyError> {
        match self.locate(key)?.as_slice() {
            [uid] => Ok(uid.clone()),
            [] => {
                self.state(key)?;
                Ok(key.to_string())
            }
            many => Err(KeyError::Unavailable(format!(
                "{} keys are named '{key}' on KMIP server {}: give the unique identifier",
                many.len(),
                self.server
            ))),
        }
    }

    pub fn state(&self, uid: &str) -> Result<State, KeyError> {
        let client = self.connect(uid)?;
        self.state_on(&client, uid)
    }

    fn state_on(&self, client: &TlsClient, uid: &str) -> Result<State, KeyError> {
        let req = RequestPayload::GetAttributes(
            Some(UniqueIdentifier(uid.to_string())),
            Some(vec![AttributeName("State".into())]),
        );
        match client.do_request(req).map_err(|e| self.err(uid, e))? {
            ResponsePayload::GetAttributes(a) => a
                .attributes
                .unwrap_or_default()
                .into_iter()
                .find_map(|a| match a.value {
                    AttributeValue::State(s) => Some(s),
                    _ => None,
                })
                .ok_or_else(|| {
                    KeyError::Unavailable(format!(
                        "KMIP key {uid} on {} has no State attribute",
                        self.server
                    ))
                }),
            other => Err(KeyError::Unavailable(format!(
                "KMIP GetAttributes returned {other:?}"
            ))),
        }
    }

    /// Fetches an Active AES-256 key: the state check and the `Get` run on one connection,
    /// so the key cannot change state between them from this client's point of view.
    pub fn fetch(&self, uid: &str) -> Result<SecretKey, KeyError> {
        let client = self.connect(uid)?;
        let state = self.state_on(&client, uid)?;
        if state != State::Active {
            let what = match state {
                State::PreActive => "is not active yet (activate it on the KMIP server)",
                State::Deactivated => "is deactivated (revoked)",
                State::Compromised => "is revoked as compromised",
                State::Destroyed | State::DestroyedCompromised => "is destroyed",
                _ => "is not in the Active state",
            };
            return Err(KeyError::Unavailable(format!(
                "KMIP key {uid} on {} {what}",
                self.server
            )));
        }
        let got = client.get_key(uid).map_err(|e| self.err(uid, e))?;
        let ManagedObject::SymmetricKey(k) = got.cryptographic_object else {
            return Err(KeyError::Unavailable(format!(
                "KMIP object {uid} on {} is not a symmetric key",
                self.server
            )));
        };
        let mut bytes = match k.key_block.key_value.key_material {
            KeyMaterial::Bytes(b) => b,
            KeyMaterial::TransparentSymmetricKey(t) => t.key,
            _ => {
                return Err(KeyError::Unavailable(format!(
                    "KMIP key {uid}: unsupported key format"
                )))
            }
        };
        let key = SecretKey::from_slice(&bytes).map_err(|_| {
            KeyError::Unavailable(format!(
                "KMIP key {uid} on {} is not a 256-bit key ({} bytes)",
                self.server,
                bytes.len()
            ))
        });
        zeroize::Zeroize::zeroize(&mut bytes);
        key
    }
}

pub struct KmipProvider {
    client: Arc<KmipClient>,
    /// The key new keyslots are made with: a name or a unique identifier.
    key: Option<String>,
}

impl KmipProvider {
    pub fn new(client: Arc<KmipClient>, key: Option<String>) -> Self {
        KmipProvider { client, key }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, KeyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KeyError::Unavailable(format!("KMIP worker failed: {e}")))?
}

#[async_trait]
impl KeyProvider for KmipProvider {
    fn describe(&self) -> String {
        format!(
            "KMIP key {} on {}",
            self.key.as_deref().unwrap_or("?"),
            self.client.server()
        )
    }

    async fn wrap(&self, chain_key: &SecretKey, ctx: &SlotContext) -> Result<Keyslot, KeyError> {
        let key = self
            .key
            .clone()
            .ok_or_else(|| KeyError::Unavailable("no KMIP key given (--kmip-key)".into()))?;
        let c = self.client.clone();
        let k2 = key.clone();
        let (uid, kek) = blocking(move || {
            let uid = c.resolve(&k2)?;
            let kek = c.fetch(&uid)?;
            Ok((uid, kek))
        })
        .await?;
        Ok(ctx.wrap(
            &kek,
            chain_key,
            SlotParams::Kmip {
                server: self.client.server().to_string(),
                key_uid: uid,
                key_name: Some(key),
            },
        ))
    }

    async fn unwrap(
        &self,
        slot: &Keyslot,
        ctx: &SlotContext,
    ) -> Option<Result<SecretKey, KeyError>> {
        let SlotParams::Kmip { key_uid, .. } = &slot.params else {
            return None;
        };
        let c = self.client.clone();
        let uid = key_uid.clone();
        let kek = match blocking(move || c.fetch(&uid)).await {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        Some(super::unwrap_slot(
            &kek,
            slot,
            ctx,
            &format!("KMIP key (key {key_uid} does not open this keyslot)"),
        ))
    }
}
