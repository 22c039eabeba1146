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
    /// Use the server's Encrypt/Decrypt when it offers them (default), so keys never leave
    /// it; `false` forces Get + local wrapping. Also `ARCA_KMIP_SERVER_SIDE=0`.
    pub server_side: Option<bool>,
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
        self.server_side = self.server_side.or_else(|| {
            var("ARCA_KMIP_SERVER_SIDE").map(|v| !matches!(v.as_str(), "0" | "false" | "no"))
        });
        self
    }
}

type TlsClient = Client<openssl::ssl::SslStream<std::net::TcpStream>>;

/// The two KMIP operations `kmip-protocol` lacks (Encrypt, Decrypt; KMIP 1.2, with the
/// authenticated-encryption fields of KMIP 1.4), encoded as TTLV by hand: tag (3 bytes),
/// type (1), length (u32 BE), value padded to 8 bytes.
mod ttlv {
    pub const STRUCT: u8 = 0x01;
    const INT: u8 = 0x02;
    const ENUM: u8 = 0x05;
    const TEXT: u8 = 0x07;
    const BYTES: u8 = 0x08;

    pub fn item(tag: u32, typ: u8, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + value.len() + 7);
        v.extend_from_slice(&tag.to_be_bytes()[1..]);
        v.push(typ);
        v.extend_from_slice(&(value.len() as u32).to_be_bytes());
        v.extend_from_slice(value);
        v.resize(v.len() + (8 - value.len() % 8) % 8, 0);
        v
    }
    pub fn structure(tag: u32, children: &[Vec<u8>]) -> Vec<u8> {
        item(tag, STRUCT, &children.concat())
    }
    pub fn int(tag: u32, v: i32) -> Vec<u8> {
        item(tag, INT, &v.to_be_bytes())
    }
    pub fn enumeration(tag: u32, v: u32) -> Vec<u8> {
        item(tag, ENUM, &v.to_be_bytes())
    }
    pub fn text(tag: u32, s: &str) -> Vec<u8> {
        item(tag, TEXT, s.as_bytes())
    }
    pub fn bytes(tag: u32, b: &[u8]) -> Vec<u8> {
        item(tag, BYTES, b)
    }

    /// The items directly inside `b` (a structure's value): (tag, type, value), bounds-checked.
    pub fn children(mut b: &[u8]) -> Option<Vec<(u32, u8, &[u8])>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            if b.len() < 8 {
                return None;
            }
            let tag = u32::from_be_bytes([0, b[0], b[1], b[2]]);
            let typ = b[3];
            let len = u32::from_be_bytes(b[4..8].try_into().ok()?) as usize;
            let padded = len.checked_add((8 - len % 8) % 8)?;
            if b.len() - 8 < padded {
                return None;
            }
            out.push((tag, typ, &b[8..8 + len]));
            b = &b[8 + padded..];
        }
        Some(out)
    }

    /// The value of the first item with `tag` directly inside `b`.
    pub fn find(b: &[u8], tag: u32) -> Option<(u8, &[u8])> {
        children(b)?
            .into_iter()
            .find(|(t, _, _)| *t == tag)
            .map(|(_, ty, v)| (ty, v))
    }

    pub const REQUEST_MESSAGE: u32 = 0x420078;
    pub const REQUEST_HEADER: u32 = 0x420077;
    pub const PROTOCOL_VERSION: u32 = 0x420069;
    pub const MAJOR: u32 = 0x42006A;
    pub const MINOR: u32 = 0x42006B;
    pub const BATCH_COUNT: u32 = 0x42000D;
    pub const BATCH_ITEM: u32 = 0x42000F;
    pub const OPERATION: u32 = 0x42005C;
    pub const REQUEST_PAYLOAD: u32 = 0x420079;
    pub const RESPONSE_MESSAGE: u32 = 0x42007B;
    pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
    pub const RESULT_STATUS: u32 = 0x42007F;
    pub const RESULT_MESSAGE: u32 = 0x42007D;
    pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
    pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
    pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
    pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
    pub const TAG_LENGTH: u32 = 0x4200CE;
    pub const DATA: u32 = 0x4200C2;
    pub const IV_COUNTER_NONCE: u32 = 0x42003D;
    pub const AE_ADDITIONAL_DATA: u32 = 0x4200FE;
    pub const AE_TAG: u32 = 0x4200FF;
    pub const OP_ENCRYPT: u32 = 0x1F;
    pub const OP_DECRYPT: u32 = 0x20;
    pub const GCM: u32 = 0x09;
    pub const AES: u32 = 0x03;

    #[cfg(test)]
    mod tests {
        use super::*;
        #[test]
        fn roundtrip_and_bounds() {
            let m = structure(
                0x420001,
                &[
                    int(0x420002, 7),
                    bytes(0x420003, b"hello"),
                    text(0x420004, "x"),
                ],
            );
            assert_eq!(m.len() % 8, 0);
            let kids = children(&m).unwrap();
            let (ty, v) = find(kids[0].2, 0x420003).unwrap();
            assert_eq!((ty, v), (0x08, &b"hello"[..]));
            assert!(children(&m[..m.len() - 1]).is_none());
            let mut bad = m.clone();
            bad[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
            assert!(children(&bad).is_none());
        }
    }
}

pub struct KmipClient {
    settings: ConnectionSettings,
    server: String,
    allow_server_side: bool,
    /// Whether the server offers Encrypt and Decrypt (asked once, with KMIP Query).
    server_side: std::sync::OnceLock<bool>,
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
            allow_server_side: s.server_side.unwrap_or(true),
            server_side: std::sync::OnceLock::new(),
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

    fn require_active(&self, uid: &str, state: State) -> Result<(), KeyError> {
        if state == State::Active {
            return Ok(());
        }
        let what = match state {
            State::PreActive => "is not active yet (activate it on the KMIP server)",
            State::Deactivated => "is deactivated (revoked)",
            State::Compromised => "is revoked as compromised",
            State::Destroyed | State::DestroyedCompromised => "is destroyed",
            _ => "is not in the Active state",
        };
        Err(KeyError::Unavailable(format!(
            "KMIP key {uid} on {} {what}",
            self.server
        )))
    }

    /// True when the server offers KMIP Encrypt and Decrypt (then keys never leave it).
    pub fn offers_encrypt(&self) -> Result<bool, KeyError> {
        if !self.allow_server_side {
            return Ok(false);
        }
        if let Some(b) = self.server_side.get() {
            return Ok(*b);
        }
        use kmip_protocol::types::common::Operation;
        use kmip_protocol::types::request::QueryFunction;
        let ops = match self.call(
            "-",
            RequestPayload::Query(vec![QueryFunction::QueryOperations]),
        )? {
            ResponsePayload::Query(q) => q.operations.unwrap_or_default(),
            _ => Vec::new(),
        };
        let yes = ops.contains(&Operation::Encrypt) && ops.contains(&Operation::Decrypt);
        Ok(*self.server_side.get_or_init(|| yes))
    }

    /// One Encrypt or Decrypt request on its own connection; returns the response payload.
    fn crypt(&self, uid: &str, op: u32, fields: Vec<Vec<u8>>) -> Result<Vec<u8>, KeyError> {
        use std::io::{Read, Write};
        use ttlv::*;
        let client = self.connect(uid)?;
        let mut payload = vec![
            text(UNIQUE_IDENTIFIER, uid),
            structure(
                CRYPTOGRAPHIC_PARAMETERS,
                &[
                    enumeration(BLOCK_CIPHER_MODE, GCM),
                    enumeration(CRYPTOGRAPHIC_ALGORITHM, AES),
                    int(TAG_LENGTH, 16),
                ],
            ),
        ];
        payload.extend(fields);
        let msg = structure(
            REQUEST_MESSAGE,
            &[
                structure(
                    REQUEST_HEADER,
                    &[
                        structure(PROTOCOL_VERSION, &[int(MAJOR, 1), int(MINOR, 4)]),
                        int(BATCH_COUNT, 1),
                    ],
                ),
                structure(
                    BATCH_ITEM,
                    &[
                        enumeration(OPERATION, op),
                        structure(REQUEST_PAYLOAD, &payload),
                    ],
                ),
            ],
        );
        let stream = client.inner();
        let mut stream = stream
            .lock()
            .map_err(|_| KeyError::Unavailable("KMIP connection poisoned".into()))?;
        let io = |e: std::io::Error| self.err(uid, KmipError::ResponseReadError(e.to_string()));
        stream.write_all(&msg).map_err(io)?;
        let mut head = [0u8; 8];
        stream.read_exact(&mut head).map_err(io)?;
        let len = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        if len > 1 << 20 || u32::from_be_bytes([0, head[0], head[1], head[2]]) != RESPONSE_MESSAGE {
            return Err(KeyError::Unavailable(format!(
                "KMIP server {} sent an answer that is not a KMIP response",
                self.server
            )));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).map_err(io)?;
        let bad = || {
            KeyError::Unavailable(format!(
                "KMIP server {} sent a malformed response",
                self.server
            ))
        };
        let (_, item) = find(&body, BATCH_ITEM).ok_or_else(bad)?;
        let (_, status) = find(item, RESULT_STATUS).ok_or_else(bad)?;
        if status != [0, 0, 0, 0] {
            // Name the usual cause the way a Get would (revoked, destroyed, ...).
            drop(stream);
            if let Ok(state) = self.state_on(&client, uid) {
                self.require_active(uid, state)?;
            }
            let msg = find(item, RESULT_MESSAGE)
                .map(|(_, m)| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            return Err(KeyError::Unavailable(format!(
                "KMIP server {} refused {} with key {uid}: {msg}",
                self.server,
                if op == OP_ENCRYPT {
                    "Encrypt"
                } else {
                    "Decrypt"
                }
            )));
        }
        let (_, payload) = find(item, RESPONSE_PAYLOAD).ok_or_else(bad)?;
        Ok(payload.to_vec())
    }

    /// KMIP Encrypt (AES-256-GCM on the server) of `plaintext` with associated data `aad`;
    /// returns the IV and `ciphertext || tag`.
    pub fn encrypt(
        &self,
        uid: &str,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
        use ttlv::*;
        let iv = crate::crypto::random_bytes::<12>().to_vec();
        let p = self.crypt(
            uid,
            OP_ENCRYPT,
            vec![
                bytes(DATA, plaintext),
                bytes(IV_COUNTER_NONCE, &iv),
                bytes(AE_ADDITIONAL_DATA, aad),
            ],
        )?;
        let bad = || {
            KeyError::Unavailable(format!(
                "KMIP server {} sent an Encrypt answer without ciphertext or tag",
                self.server
            ))
        };
        let (_, ct) = find(&p, DATA).ok_or_else(bad)?;
        let (_, tag) = find(&p, AE_TAG).ok_or_else(bad)?;
        if ct.len() != plaintext.len() || tag.len() != 16 {
            return Err(bad());
        }
        Ok((iv, [ct, tag].concat()))
    }

    /// KMIP Decrypt of [`KmipClient::encrypt`]'s output; a 32-byte key.
    pub fn decrypt(
        &self,
        uid: &str,
        iv: &[u8],
        ct_tag: &[u8],
        aad: &[u8],
    ) -> Result<SecretKey, KeyError> {
        use ttlv::*;
        if iv.len() != 12 || ct_tag.len() != 32 + 16 {
            return Err(KeyError::Malformed(
                "KMIP keyslot: IV or ciphertext of the wrong length".into(),
            ));
        }
        let (ct, tag) = ct_tag.split_at(32);
        let p = self.crypt(
            uid,
            OP_DECRYPT,
            vec![
                bytes(DATA, ct),
                bytes(IV_COUNTER_NONCE, iv),
                bytes(AE_ADDITIONAL_DATA, aad),
                bytes(AE_TAG, tag),
            ],
        )?;
        let (_, pt) = find(&p, DATA).ok_or_else(|| {
            KeyError::Unavailable(format!(
                "KMIP server {} sent a Decrypt answer without data",
                self.server
            ))
        })?;
        let mut pt = pt.to_vec();
        let k = SecretKey::from_slice(&pt)
            .map_err(|_| KeyError::Malformed("KMIP Decrypt did not return 32 bytes".into()));
        zeroize::Zeroize::zeroize(&mut pt);
        k
    }

    /// Fetches an Active AES-256 key: the state check and the `Get` run on one connection,
    /// so the key cannot change state between them from this client's point of view.
    pub fn fetch(&self, uid: &str) -> Result<SecretKey, KeyError> {
        let client = self.connect(uid)?;
        let state = self.state_on(&client, uid)?;
        self.require_active(uid, state)?;
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
        let (uid, server_side) = blocking(move || {
            let uid = c.resolve(&k2)?;
            Ok((uid, c.offers_encrypt()?))
        })
        .await?;
        if server_side {
            // The key never leaves the key manager: the server encrypts the chain key.
            let slot_id = crate::repo::format::Id16::random();
            let mut params = SlotParams::KmipEncrypt {
                server: self.client.server().to_string(),
                key_uid: uid.clone(),
                key_name: Some(key),
                iv: Vec::new(),
                ciphertext: Vec::new(),
                key_check: Vec::new(),
            };
            let aad = ctx.full(&slot_id, &params);
            let (c, pt, aad2, u) = (self.client.clone(), chain_key.duplicate(), aad.clone(), uid);
            let (iv, ct) = blocking(move || c.encrypt(&u, pt.expose(), &aad2)).await?;
            let check = super::aws_kms::key_check(chain_key, &aad).to_vec();
            if let SlotParams::KmipEncrypt {
                iv: i,
                ciphertext,
                key_check,
                ..
            } = &mut params
            {
                (*i, *ciphertext, *key_check) = (iv, ct, check);
            }
            return Ok(Keyslot {
                slot_id,
                created: crate::repo::now_rfc3339(),
                format: (ctx.version >= 2).then_some(2),
                params,
                wrapped: None,
            });
        }
        let c = self.client.clone();
        let u = uid.clone();
        let kek = blocking(move || c.fetch(&u)).await?;
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
        if let SlotParams::KmipEncrypt {
            key_uid,
            iv,
            ciphertext,
            key_check,
            ..
        } = &slot.params
        {
            let aad = ctx.for_slot(slot).full(&slot.slot_id, &slot.params);
            let (c, u, iv, ct, a) = (
                self.client.clone(),
                key_uid.clone(),
                iv.clone(),
                ciphertext.clone(),
                aad.clone(),
            );
            let k = match blocking(move || c.decrypt(&u, &iv, &ct, &a)).await {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            let want = blake3::Hash::from_slice(key_check).ok();
            if want
                != Some(blake3::Hash::from_bytes(super::aws_kms::key_check(
                    &k, &aad,
                )))
            {
                return Some(Err(KeyError::Tampered(format!(
                    "KMIP key {key_uid} returned a key that does not match the keyslot's check value"
                ))));
            }
            return Some(Ok(k));
        }
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
