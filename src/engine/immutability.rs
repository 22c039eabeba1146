//! S3 Object Lock: what `forget` extends and what `prune` must leave alone.
//!
//! A backup writes every object with a retention date `object_lock.days` ahead (the store
//! does, see [`crate::repo::store::s3`]). `forget` extends the retention of what the kept
//! points need to `days` from now, as kopia's `--extend-object-locks` does; `prune` never
//! asks the server to remove an object still retained, and reports when it becomes
//! removable.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{ChainIndex, OpenChain};
use crate::error::{Error, Result};
use crate::repo::format::PointRecord;
use crate::repo::Repository;

/// Retention left that is close enough to the target not to be worth a request.
const SLACK: Duration = Duration::from_secs(3600);

/// What [`extend_locks`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LockExtension {
    pub objects_checked: u64,
    pub objects_extended: u64,
    /// The retention date given to the objects extended (RFC 3339).
    pub until: Option<String>,
}

/// The retention date of `key` when it is still retained now.
pub fn retained_until(repo: &Repository, key: &str) -> Result<Option<SystemTime>> {
    let t = repo
        .store()
        .retention(key)
        .map_err(|e| Error::io(format!("read the retention of {key}"), e))?;
    Ok(t.filter(|t| *t > SystemTime::now()))
}

/// Extends the retention of the objects the `kept` points of one chain need (their records,
/// their indexes, and every pack of the chain, since kept points share chunks with older
/// ones) to `object_lock.days` from now. `chain_points`: every record of the chain.
pub fn extend_locks(
    repo: &Repository,
    oc: &OpenChain,
    chain_points: &[PointRecord],
    kept: &[PointRecord],
) -> Result<LockExtension> {
    let mut out = LockExtension::default();
    let Some(lock) = repo.config.object_lock else {
        return Ok(out);
    };
    let until = SystemTime::now() + Duration::from_secs(u64::from(lock.days) * 86_400);
    let idx = ChainIndex::load(repo, oc, chain_points)?;
    let mut keys: Vec<String> = kept
        .iter()
        .flat_map(|p| {
            [
                format!("points/{}.json", p.point_id),
                format!("index/{}", p.point_id.hex()),
            ]
        })
        .collect();
    keys.extend(idx.packs.iter().map(Repository::pack_rel));
    for key in keys {
        out.objects_checked += 1;
        let now = repo
            .store()
            .retention(&key)
            .map_err(|e| Error::io(format!("read the retention of {key}"), e))?;
        if now.is_some_and(|t| t + SLACK >= until) {
            continue;
        }
        repo.store()
            .extend_retention(&key, until)
            .map_err(|e| Error::io(format!("extend the retention of {key}"), e))?;
        out.objects_extended += 1;
    }
    if out.objects_extended > 0 {
        out.until = Some(humantime::format_rfc3339_seconds(until).to_string());
    }
    Ok(out)
}
