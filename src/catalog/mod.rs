//! The catalog: the local SQLite product database.
//!
//! It holds repositories, jobs, passwords (with their password hashes), and a cache of
//! recovery points. It is a convenience, never the only copy of anything: every job and point
//! is also described in its repository, and `arca catalog rebuild` recreates the catalog.
//!
//! Password hashes are keys, so they are never stored in clear: each is sealed with
//! AES-256-GCM under a catalog key kept in `<catalog>.key` (0600, beside the database),
//! bound to the password's name. Both files are created with mode 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::crypto::{self, SecretKey};
use crate::error::{Error, Result};
use crate::repo::format::{EncryptionMode, EscrowRecord, Id16, KdfRecord, PointStats};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE repositories (
        repo_id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        added TEXT NOT NULL
     );
     CREATE TABLE passwords (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        created TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        salt BLOB NOT NULL,
        m_kib INTEGER NOT NULL,
        t_cost INTEGER NOT NULL,
        p_cost INTEGER NOT NULL,
        sealed_hash BLOB NOT NULL
     );
     CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        job_id TEXT NOT NULL UNIQUE,
        repo_id TEXT NOT NULL REFERENCES repositories(repo_id),
        source TEXT NOT NULL,
        encryption TEXT NOT NULL,
        password TEXT REFERENCES passwords(name),
        key_file TEXT,
        chain_id TEXT NOT NULL,
        created TEXT NOT NULL
     );
     CREATE TABLE points (
        point_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        chain_id TEXT NOT NULL,
        time TEXT NOT NULL,
        kind TEXT,
        stats TEXT,
        errors INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX points_by_job ON points(job_id, time);",
    // 2: KMS escrow
    "CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );
     CREATE TABLE escrow (
        job_id TEXT NOT NULL,
        password TEXT NOT NULL,
        repo_id TEXT NOT NULL,
        key_arn TEXT NOT NULL,
        created TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (job_id, password)
     );",
    // 3: trust pins (format v2): what the catalog trusts about each job's repository.
    "ALTER TABLE jobs ADD COLUMN job_revision INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN latest_point TEXT;
     ALTER TABLE repositories ADD COLUMN format_version INTEGER NOT NULL DEFAULT 1;
     CREATE TABLE trusted_chains (
        job_id TEXT NOT NULL,
        chain_id TEXT NOT NULL,
        mode TEXT NOT NULL,
        check_value TEXT NOT NULL,
        revision INTEGER NOT NULL,
        kms_keys TEXT NOT NULL DEFAULT '[]',
        pinned TEXT NOT NULL,
        PRIMARY KEY (job_id, chain_id)
     );",
    // 4: activation (an active job's encryption settings are immutable)
    "ALTER TABLE jobs ADD COLUMN active INTEGER NOT NULL DEFAULT 1;",
    // 5: key generations (pinned per chain), escrow records per password version, and the
    //    journal of password rotations (so an interrupted one can be finished).
    "ALTER TABLE trusted_chains ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE trusted_chains ADD COLUMN generation_check TEXT NOT NULL DEFAULT '';
     CREATE TABLE escrow5 (
        job_id TEXT NOT NULL,
        password TEXT NOT NULL,
        salt TEXT NOT NULL,
        repo_id TEXT NOT NULL,
        key_arn TEXT NOT NULL,
        created TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (job_id, password, salt)
     );
     INSERT INTO escrow5 SELECT job_id, password, COALESCE(json_extract(record, '$.kdf.salt'), ''),
        repo_id, key_arn, created, record FROM escrow;
     DROP TABLE escrow;
     ALTER TABLE escrow5 RENAME TO escrow;
     CREATE TABLE rotations (
        password TEXT PRIMARY KEY,
        started TEXT NOT NULL,
        old_kdf TEXT NOT NULL,
        new_kdf TEXT NOT NULL,
        new_hash BLOB NOT NULL
     );",
    // 6: points `arca forget` removed: a record of one that reappears is a rollback
    "CREATE TABLE forgotten (
        point_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        forgotten TEXT NOT NULL
     );",
    // 7: a job's excludes (JSON of engine::filter::Filters)
    "CREATE TABLE job_filters (
        job_id TEXT PRIMARY KEY,
        filters TEXT NOT NULL
     );",
];

/// What the catalog trusts about one chain of a job: its mode, the check value of its key,
/// the newest revision of its record seen, and the KMS/KMIP keys its keyslots may use.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainPin {
    pub chain_id: Id16,
    pub mode: EncryptionMode,
    pub check_value: String,
    pub revision: u64,
    pub kms_keys: Vec<String>,
    /// The newest key generation seen, and the check value of its key ("" if not known).
    pub generation: u32,
    pub generation_check: String,
}

pub struct Catalog {
    conn: Connection,
    path: PathBuf,
    seal_key: SecretKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    pub name: String,
    pub job_id: Id16,
    pub repo_id: Id16,
    pub repo_path: PathBuf,
    pub source: String,
    pub encryption: EncryptionMode,
    pub password: Option<String>,
    pub key_file: Option<String>,
    pub chain_id: Id16,
    pub created: String,
    /// The newest job-record revision seen (v2).
    pub job_revision: u64,
    /// The newest recovery point this catalog knows of.
    pub latest_point: Option<Id16>,
    /// Backups run only while a job is active; its encryption changes only while it is not.
    pub active: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointRow {
    pub point_id: Id16,
    pub job_id: Id16,
    pub chain_id: Id16,
    pub time: String,
    pub kind: Option<String>,
    pub stats: Option<PointStats>,
    pub errors: u64,
}

#[derive(Clone, Debug)]
pub struct PasswordRow {
    pub name: String,
    pub description: String,
    pub created: String,
    pub kdf: KdfRecord,
}

fn cat_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Catalog {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Creates `path` with mode 0600 if missing; tightens it if it exists.
fn ensure_private_file(path: &Path) -> Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| cat_err(path, e))
        }
        Err(e) => Err(cat_err(path, e)),
    }
}

fn load_or_create_seal_key(path: &Path) -> Result<SecretKey> {
    match std::fs::read(path) {
        Ok(mut b) => {
            let k = SecretKey::from_slice(&b)
                .map_err(|_| cat_err(path, "catalog key file is not 32 bytes"));
            zeroize::Zeroize::zeroize(&mut b);
            k
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = SecretKey::random();
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| cat_err(path, e))?;
            f.write_all(k.expose())
                .and_then(|_| f.sync_all())
                .map_err(|e| cat_err(path, e))?;
            Ok(k)
        }
        Err(e) => Err(cat_err(path, e)),
    }
}

impl Catalog {
    /// The default location: `$XDG_DATA_HOME/arca/catalog.db` (or the platform equivalent).
    pub fn default_path() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("arca")
            .join("catalog.db")
    }

    /// Opens (creating if needed) the catalog and applies pending migrations.
    pub fn open(path: &Path) -> Result<Catalog> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| cat_err(path, e))?;
            }
        }
        ensure_private_file(path)?;
        let key_path = Self::key_path(path);
        let seal_key = load_or_create_seal_key(&key_path)?;
        let conn = Connection::open(path).map_err(|e| cat_err(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| cat_err(path, e))?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
            .map_err(|e| cat_err(path, e))?;
        let cat = Catalog {
            conn,
            path: path.to_path_buf(),
            seal_key,
        };
        cat.migrate()?;
        // WAL side files must not be world-readable either.
        for ext in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(ext);
            let p = PathBuf::from(p);
            if p.exists() {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
        Ok(cat)
    }

    pub fn key_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".key");
        PathBuf::from(p)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        cat_err(&self.path, e)
    }

    pub fn schema_version(&self) -> Result<usize> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(v as usize)
    }

    fn migrate(&self) -> Result<()> {
        let current = self.schema_version()?;
        if current > MIGRATIONS.len() {
            return Err(self.err(format!(
                "schema version {current} is newer than this arca knows ({}); use a newer arca",
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(current) {
            let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
            tx.execute_batch(m).map_err(|e| self.err(e))?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    // --- repositories ---

    pub fn add_repository(&self, repo_id: &Id16, path: &Path) -> Result<()> {
        // A directory is kept absolute; an s3:// location as given.
        let abs = match crate::repo::store::Location::parse(path) {
            Ok(crate::repo::store::Location::S3 { .. }) => path.to_path_buf(),
            _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        };
        self.conn
            .execute(
                "INSERT INTO repositories (repo_id, path, added) VALUES (?1, ?2, ?3)
                 ON CONFLICT(repo_id) DO UPDATE SET path = excluded.path",
                params![
                    repo_id.hex(),
                    abs.to_string_lossy(),
                    crate::repo::now_rfc3339()
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    // --- passwords ---

    fn password_aad(name: &str) -> Vec<u8> {
        crypto::aad("arca-catalog-password-hash-v1", &[name.as_bytes()])
    }

    pub fn create_password(
        &self,
        rec: &KdfRecord,
        description: &str,
        hash: &SecretKey,
    ) -> Result<()> {
        let sealed = crypto::seal_random_nonce(
            &self.seal_key.derive(crypto::context::CATALOG_SEAL),
            &Self::password_aad(&rec.password),
            hash.expose(),
        );
        self.conn
            .execute(
                "INSERT INTO passwords (name, description, created, algorithm, salt, m_kib, t_cost, p_cost, sealed_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(name) DO UPDATE SET algorithm = excluded.algorithm, salt = excluded.salt,
                   m_kib = excluded.m_kib, t_cost = excluded.t_cost, p_cost = excluded.p_cost,
                   sealed_hash = excluded.sealed_hash",
                params![
                    rec.password,
                    description,
                    crate::repo::now_rfc3339(),
                    rec.algorithm,
                    rec.salt,
                    rec.m_kib,
                    rec.t,
                    rec.p,
                    sealed
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn row_to_password(r: &rusqlite::Row<'_>) -> rusqlite::Result<PasswordRow> {
        Ok(PasswordRow {
            name: r.get(0)?,
            description: r.get(1)?,
            created: r.get(2)?,
            kdf: KdfRecord {
                password: r.get(0)?,
                algorithm: r.get(3)?,
                salt: r.get(4)?,
                m_kib: r.get(5)?,
                t: r.get(6)?,
                p: r.get(7)?,
            },
        })
    }

    pub fn password(&self, name: &str) -> Result<Option<PasswordRow>> {
        self.conn
            .query_row(
                "SELECT name, description, created, algorithm, salt, m_kib, t_cost, p_cost FROM passwords WHERE name = ?1",
                [name],
                Self::row_to_password,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn list_passwords(&self) -> Result<Vec<PasswordRow>> {
        let mut st = self
            .conn
            .prepare("SELECT name, description, created, algorithm, salt, m_kib, t_cost, p_cost FROM passwords ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], Self::row_to_password)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// The stored password hash (tier 1 of the resolver), if the catalog has one and its
    /// sealing key still opens it.
    pub fn password_hash(&self, name: &str) -> Result<Option<(KdfRecord, SecretKey)>> {
        let row: Option<(Vec<u8>,)> = self
            .conn
            .query_row(
                "SELECT sealed_hash FROM passwords WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?,)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((sealed,)) = row else {
            return Ok(None);
        };
        let pw = self.password(name)?.expect("row exists");
        let mut pt = crypto::open(
            &self.seal_key.derive(crypto::context::CATALOG_SEAL),
            &Self::password_aad(name),
            &sealed,
        )
        .map_err(|_| {
            self.err(format!(
                "the stored hash of password '{name}' does not open with this catalog's key file \
                 ({}); restore with the passphrase instead",
                Self::key_path(&self.path).display()
            ))
        })?;
        let k = SecretKey::from_slice(&pt).map_err(|e| self.err(e));
        zeroize::Zeroize::zeroize(&mut pt);
        Ok(Some((pw.kdf, k?)))
    }

    fn rotation_aad(name: &str) -> Vec<u8> {
        crypto::aad("arca-catalog-rotation-hash-v1", &[name.as_bytes()])
    }

    /// Journals the start of a rotation of password `name`: the old version's salt record,
    /// and the new version's record and hash (sealed like stored hashes), so that an
    /// interrupted rotation can be finished, and chains already moved to the new password
    /// still open meanwhile.
    pub fn begin_rotation(&self, old: &KdfRecord, new: &KdfRecord, hash: &SecretKey) -> Result<()> {
        let sealed = crypto::seal_random_nonce(
            &self.seal_key.derive(crypto::context::CATALOG_SEAL),
            &Self::rotation_aad(&new.password),
            hash.expose(),
        );
        self.conn
            .execute(
                "INSERT INTO rotations (password, started, old_kdf, new_kdf, new_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    new.password,
                    crate::repo::now_rfc3339(),
                    serde_json::to_string(old).expect("serializes"),
                    serde_json::to_string(new).expect("serializes"),
                    sealed
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The unfinished rotation of password `name`: (when it started, the old version's
    /// record, the new version's record and hash).
    #[allow(clippy::type_complexity)]
    pub fn rotation(
        &self,
        name: &str,
    ) -> Result<Option<(String, KdfRecord, KdfRecord, SecretKey)>> {
        let row: Option<(String, String, String, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT started, old_kdf, new_kdf, new_hash FROM rotations WHERE password = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((started, old, new, sealed)) = row else {
            return Ok(None);
        };
        let old: KdfRecord = serde_json::from_str(&old).map_err(|e| self.err(e))?;
        let new: KdfRecord = serde_json::from_str(&new).map_err(|e| self.err(e))?;
        let mut pt = crypto::open(
            &self.seal_key.derive(crypto::context::CATALOG_SEAL),
            &Self::rotation_aad(name),
            &sealed,
        )
        .map_err(|_| self.err(format!("the journal of the rotation of password '{name}' does not open with this catalog's key file")))?;
        let k = SecretKey::from_slice(&pt).map_err(|e| self.err(e));
        zeroize::Zeroize::zeroize(&mut pt);
        Ok(Some((started, old, new, k?)))
    }

    /// Ends a rotation: the password row holds the new version by now.
    pub fn end_rotation(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM rotations WHERE password = ?1", [name])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn delete_password(&self, name: &str) -> Result<bool> {
        let jobs = self.jobs_using_password(name)?;
        if !jobs.is_empty() {
            return Err(Error::Usage(format!(
                "password '{name}' is used by job(s) {}; change their encryption first (`arca job deactivate NAME`, then `arca job activate NAME --encryption MODE`)",
                jobs.join(", ")
            )));
        }
        self.conn
            .execute("DELETE FROM escrow WHERE password = ?1", [name])
            .map_err(|e| self.err(e))?;
        let n = self
            .conn
            .execute("DELETE FROM passwords WHERE name = ?1", [name])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    // --- settings ---

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, v],
            ),
            None => self.conn.execute("DELETE FROM settings WHERE key = ?1", [key]),
        }
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    // --- escrow ---

    pub fn upsert_escrow(&self, e: &EscrowRecord) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO escrow (job_id, password, salt, repo_id, key_arn, created, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(job_id, password, salt) DO UPDATE SET key_arn = excluded.key_arn, created = excluded.created, record = excluded.record",
                params![e.job_id.hex(), e.kdf.password, crate::repo::format::b64::encode(&e.kdf.salt), e.repo_id.hex(), e.key_arn, e.created, serde_json::to_string(e).expect("serializes")],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn escrow_records(&self, password: Option<&str>) -> Result<Vec<EscrowRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT record FROM escrow WHERE ?1 IS NULL OR password = ?1 ORDER BY password, job_id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([password], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let r = r.map_err(|e| self.err(e))?;
            out.push(serde_json::from_str(&r).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// Deletes a job's escrow records of a password: of one salt, or all of them.
    pub fn delete_escrow(&self, job_id: &Id16, password: &str, salt: Option<&[u8]>) -> Result<()> {
        let salt = salt.map(crate::repo::format::b64::encode);
        self.conn
            .execute(
                "DELETE FROM escrow WHERE job_id = ?1 AND password = ?2 AND (?3 IS NULL OR salt = ?3)",
                params![job_id.hex(), password, salt],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    // --- jobs ---

    /// Writes every field of a job (configuration import): creates it or replaces it.
    pub fn put_job(&self, j: &JobRow) -> Result<()> {
        self.add_repository(&j.repo_id, &j.repo_path)?;
        self.conn
            .execute(
                "INSERT INTO jobs (name, job_id, repo_id, source, encryption, password, key_file, chain_id, created,
                                   job_revision, latest_point, active)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(name) DO UPDATE SET job_id = excluded.job_id, repo_id = excluded.repo_id,
                   source = excluded.source, encryption = excluded.encryption, password = excluded.password,
                   key_file = excluded.key_file, chain_id = excluded.chain_id, created = excluded.created,
                   job_revision = excluded.job_revision, latest_point = excluded.latest_point, active = excluded.active",
                params![
                    j.name,
                    j.job_id.hex(),
                    j.repo_id.hex(),
                    j.source,
                    j.encryption.as_str(),
                    j.password,
                    j.key_file,
                    j.chain_id.hex(),
                    j.created,
                    j.job_revision as i64,
                    j.latest_point.map(|p| p.hex()),
                    j.active as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every setting (configuration export).
    pub fn settings(&self) -> Result<Vec<(String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT key, value FROM settings ORDER BY key")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Every repository: id, path, the newest format version seen.
    pub fn repositories(&self) -> Result<Vec<(Id16, PathBuf, u32)>> {
        let mut st = self
            .conn
            .prepare("SELECT repo_id, path, format_version FROM repositories ORDER BY repo_id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, path, v) = row.map_err(|e| self.err(e))?;
            out.push((
                Id16::parse(&id).map_err(|e| self.err(e))?,
                PathBuf::from(path),
                v as u32,
            ));
        }
        Ok(out)
    }

    /// Runs `f` in one transaction: everything it writes, or nothing.
    pub fn transaction<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))?;
        match f() {
            Ok(v) => {
                self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Every unfinished rotation's password name.
    pub fn rotations(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT password FROM rotations ORDER BY password")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(|e| self.err(e))
    }

    pub fn create_job(&self, j: &JobRow) -> Result<()> {
        self.add_repository(&j.repo_id, &j.repo_path)?;
        self.conn
            .execute(
                "INSERT INTO jobs (name, job_id, repo_id, source, encryption, password, key_file, chain_id, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    j.name,
                    j.job_id.hex(),
                    j.repo_id.hex(),
                    j.source,
                    j.encryption.as_str(),
                    j.password,
                    j.key_file,
                    j.chain_id.hex(),
                    j.created
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Error::Usage(format!("a job named '{}' already exists in the catalog", j.name))
                }
                e => self.err(e),
            })?;
        Ok(())
    }

    pub fn update_job_encryption(
        &self,
        name: &str,
        enc: EncryptionMode,
        password: Option<&str>,
        key_file: Option<&str>,
        chain_id: &Id16,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET encryption = ?2, password = COALESCE(?3, password), key_file = COALESCE(?4, key_file), chain_id = ?5 WHERE name = ?1",
                params![name, enc.as_str(), password, key_file, chain_id.hex()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
        let id = |i: usize| -> rusqlite::Result<Id16> {
            let s: String = r.get(i)?;
            Id16::parse(&s).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    i,
                    rusqlite::types::Type::Text,
                    e.0.into(),
                )
            })
        };
        let enc: String = r.get(4)?;
        let latest: Option<String> = r.get(11)?;
        Ok(JobRow {
            active: r.get::<_, i64>(12)? != 0,
            job_revision: r.get::<_, i64>(10)? as u64,
            latest_point: latest.and_then(|l| Id16::parse(&l).ok()),
            name: r.get(0)?,
            job_id: id(1)?,
            repo_id: id(2)?,
            repo_path: PathBuf::from(r.get::<_, String>(9)?),
            source: r.get(3)?,
            encryption: EncryptionMode::parse(&enc).unwrap_or(EncryptionMode::Passphrase),
            password: r.get(5)?,
            key_file: r.get(6)?,
            chain_id: id(7)?,
            created: r.get(8)?,
        })
    }

    const JOB_COLS: &'static str = "j.name, j.job_id, j.repo_id, j.source, j.encryption, j.password, j.key_file, j.chain_id, j.created, r.path, j.job_revision, j.latest_point, j.active";

    pub fn job(&self, name: &str) -> Result<Option<JobRow>> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM jobs j JOIN repositories r ON r.repo_id = j.repo_id WHERE j.name = ?1", Self::JOB_COLS),
                [name],
                Self::row_to_job,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn list_jobs(&self) -> Result<Vec<JobRow>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {} FROM jobs j JOIN repositories r ON r.repo_id = j.repo_id ORDER BY j.name", Self::JOB_COLS))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], Self::row_to_job)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    pub fn jobs_using_password(&self, name: &str) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT name FROM jobs WHERE password = ?1 ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([name], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(|e| self.err(e))
    }

    /// Registers a job found in a repository (catalog rebuild); keeps an existing row.
    pub fn upsert_job(&self, j: &JobRow) -> Result<()> {
        self.add_repository(&j.repo_id, &j.repo_path)?;
        self.conn
            .execute(
                "INSERT INTO jobs (name, job_id, repo_id, source, encryption, password, key_file, chain_id, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(name) DO UPDATE SET job_id = excluded.job_id, repo_id = excluded.repo_id,
                   source = excluded.source, encryption = excluded.encryption, chain_id = excluded.chain_id,
                   password = COALESCE(excluded.password, jobs.password), job_revision = 0",
                params![
                    j.name,
                    j.job_id.hex(),
                    j.repo_id.hex(),
                    j.source,
                    j.encryption.as_str(),
                    j.password,
                    j.key_file,
                    j.chain_id.hex(),
                    j.created
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    // --- trust pins ---

    pub fn chain_pins(&self, job_id: &Id16) -> Result<Vec<ChainPin>> {
        let mut st = self
            .conn
            .prepare("SELECT chain_id, mode, check_value, revision, kms_keys, generation, generation_check FROM trusted_chains WHERE job_id = ?1 ORDER BY pinned")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([job_id.hex()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (c, m, v, rev, keys, generation, generation_check) =
                row.map_err(|e| self.err(e))?;
            out.push(ChainPin {
                chain_id: Id16::parse(&c).map_err(|e| self.err(e))?,
                mode: EncryptionMode::parse(&m).ok_or_else(|| self.err(format!("bad mode {m}")))?,
                check_value: v,
                revision: rev as u64,
                kms_keys: serde_json::from_str(&keys).map_err(|e| self.err(e))?,
                generation: generation as u32,
                generation_check,
            });
        }
        Ok(out)
    }

    /// Records (or raises) the pin of one chain of a job.
    pub fn pin_chain(&self, job_id: &Id16, p: &ChainPin) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO trusted_chains (job_id, chain_id, mode, check_value, revision, kms_keys, pinned, generation, generation_check)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(job_id, chain_id) DO UPDATE SET mode = excluded.mode, check_value = excluded.check_value,
                   revision = excluded.revision, kms_keys = excluded.kms_keys, generation = excluded.generation,
                   generation_check = excluded.generation_check",
                params![
                    job_id.hex(),
                    p.chain_id.hex(),
                    p.mode.as_str(),
                    p.check_value,
                    p.revision as i64,
                    serde_json::to_string(&p.kms_keys).expect("serializes"),
                    crate::repo::now_rfc3339(),
                    p.generation as i64,
                    p.generation_check
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn set_job_revision(&self, name: &str, revision: u64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET job_revision = MAX(job_revision, ?2) WHERE name = ?1",
                params![name, revision as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A job's source after `arca job set --source` (the pin moves with it).
    pub fn set_job_source(&self, name: &str, source: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET source = ?2 WHERE name = ?1",
                params![name, source],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn set_active(&self, name: &str, active: bool) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET active = ?2 WHERE name = ?1",
                params![name, active as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn set_latest_point(&self, name: &str, point: &Id16) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET latest_point = ?2 WHERE name = ?1",
                params![name, point.hex()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A job's stored excludes (none: the default).
    pub fn job_filters(&self, job_id: &Id16) -> Result<crate::engine::filter::Filters> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT filters FROM job_filters WHERE job_id = ?1",
                [job_id.hex()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match v {
            None => Ok(Default::default()),
            Some(j) => serde_json::from_str(&j).map_err(|e| Error::Catalog {
                path: self.path.display().to_string(),
                detail: format!("stored excludes of job {job_id}: {e}"),
            }),
        }
    }

    /// Replaces a job's stored excludes.
    pub fn set_job_filters(&self, job_id: &Id16, f: &crate::engine::filter::Filters) -> Result<()> {
        if f.is_empty() {
            self.conn
                .execute("DELETE FROM job_filters WHERE job_id = ?1", [job_id.hex()])
                .map_err(|e| self.err(e))?;
        } else {
            self.conn
                .execute(
                    "INSERT INTO job_filters (job_id, filters) VALUES (?1, ?2)
                     ON CONFLICT(job_id) DO UPDATE SET filters = excluded.filters",
                    params![
                        job_id.hex(),
                        serde_json::to_string(f).expect("filters serialize")
                    ],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Sets (or clears) the pinned latest point of a job.
    pub fn set_latest_point_opt(&self, name: &str, point: Option<&Id16>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET latest_point = ?2 WHERE name = ?1",
                params![name, point.map(|p| p.hex())],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records that `points` of a job were forgotten (at `when`), and drops their rows.
    pub fn mark_forgotten(&self, job_id: &Id16, points: &[Id16], when: &str) -> Result<()> {
        for p in points {
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO forgotten (point_id, job_id, forgotten) VALUES (?1, ?2, ?3)",
                    params![p.hex(), job_id.hex(), when],
                )
                .map_err(|e| self.err(e))?;
            self.conn
                .execute("DELETE FROM points WHERE point_id = ?1", [p.hex()])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// The points of a job this catalog saw forgotten.
    pub fn forgotten_points(&self, job_id: &Id16) -> Result<std::collections::HashSet<Id16>> {
        let mut st = self
            .conn
            .prepare("SELECT point_id FROM forgotten WHERE job_id = ?1")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([job_id.hex()], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = std::collections::HashSet::new();
        for r in rows {
            if let Ok(id) = Id16::parse(&r.map_err(|e| self.err(e))?) {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// The repository format version the catalog has seen (a downgrade is refused).
    pub fn repo_format_version(&self, repo_id: &Id16) -> Result<u32> {
        self.conn
            .query_row(
                "SELECT format_version FROM repositories WHERE repo_id = ?1",
                [repo_id.hex()],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(|e| self.err(e))
            .map(|v| v.unwrap_or(1) as u32)
    }

    pub fn set_repo_format_version(&self, repo_id: &Id16, v: u32) -> Result<()> {
        self.conn
            .execute(
                "UPDATE repositories SET format_version = MAX(format_version, ?2) WHERE repo_id = ?1",
                params![repo_id.hex(), v as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets what the catalog trusted about a job's chains (before re-adopting it).
    pub fn clear_pins(&self, job_id: &Id16) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM trusted_chains WHERE job_id = ?1",
                [job_id.hex()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    // --- points ---

    pub fn upsert_point(&self, p: &PointRow) -> Result<()> {
        let stats = p
            .stats
            .as_ref()
            .map(|s| serde_json::to_string(s).expect("stats serialize"));
        self.conn
            .execute(
                "INSERT INTO points (point_id, job_id, chain_id, time, kind, stats, errors) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(point_id) DO UPDATE SET kind = COALESCE(excluded.kind, points.kind),
                   stats = COALESCE(excluded.stats, points.stats), errors = excluded.errors",
                params![p.point_id.hex(), p.job_id.hex(), p.chain_id.hex(), p.time, p.kind, stats, p.errors as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn points(&self, job_id: &Id16) -> Result<Vec<PointRow>> {
        let mut st = self
            .conn
            .prepare("SELECT point_id, job_id, chain_id, time, kind, stats, errors FROM points WHERE job_id = ?1 ORDER BY time, point_id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([job_id.hex()], |r| {
                let conv = |i: usize, s: String| {
                    Id16::parse(&s).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            i,
                            rusqlite::types::Type::Text,
                            e.0.into(),
                        )
                    })
                };
                let stats: Option<String> = r.get(5)?;
                Ok(PointRow {
                    point_id: conv(0, r.get(0)?)?,
                    job_id: conv(1, r.get(1)?)?,
                    chain_id: conv(2, r.get(2)?)?,
                    time: r.get(3)?,
                    kind: r.get(4)?,
                    stats: stats.and_then(|s| serde_json::from_str(&s).ok()),
                    errors: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_and_migrated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/catalog.db");
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len());
        for f in [p.clone(), Catalog::key_path(&p)] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        drop(c);
        // Re-opening applies nothing twice.
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), MIGRATIONS.len());
    }

    #[test]
    fn password_hash_is_sealed_not_clear() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("catalog.db");
        let c = Catalog::open(&p).unwrap();
        let hash = SecretKey::from_slice(&[0x5a; 32]).unwrap();
        let rec = KdfRecord {
            password: "ops".into(),
            algorithm: KdfRecord::ARGON2ID.into(),
            salt: vec![7; 16],
            m_kib: 256,
            t: 1,
            p: 1,
        };
        c.create_password(&rec, "test", &hash).unwrap();
        let (r, h) = c.password_hash("ops").unwrap().unwrap();
        assert_eq!(h.expose(), hash.expose());
        assert_eq!(r, rec);
        drop(c);
        let mut all = std::fs::read(&p).unwrap();
        {
            let mut w = p.as_os_str().to_owned();
            w.push("-wal");
            if let Ok(b) = std::fs::read(PathBuf::from(w)) {
                all.extend(b);
            }
        }
        assert!(
            !all.windows(32).any(|w| w == [0x5a; 32]),
            "password hash stored in clear"
        );
        // Another catalog key does not open it.
        std::fs::remove_file(Catalog::key_path(&p)).unwrap();
        let c = Catalog::open(&p).unwrap();
        assert!(c.password_hash("ops").is_err());
    }
}
