//! Read-only views of a job: the difference between two points (`arca diff`) and sizes per
//! point and per job (`arca stats`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{job_points, locate_job, open_chain, select_point, Session};
use crate::engine::{OpenChain, OpenPoint};

use crate::error::Result;
use crate::repo::format::{EntryType, Id16, TreeEntry};

#[derive(Debug, Serialize, Clone)]
pub struct DiffEntry {
    pub path: String,
    /// "added", "removed", "changed" (content), "metadata" (mode, owner or times only) or
    /// "type" (a file became a directory, ...).
    pub change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_before_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_after_bytes: Option<u64>,
    /// For "metadata" (and "changed"): which of mode, uid, gid, mtime changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct Diff {
    pub job: String,
    pub from_point_id: String,
    pub to_point_id: String,
    /// False when the two points lie in different chains: their chunk ids are keyed apart,
    /// so content is compared by size and modification time only. (Within a chain, a
    /// small file that was read again lands in another bundle: it too is compared by size
    /// and modification time when its bundle or place in it differ.)
    pub content_compared: bool,
    pub entries: Vec<DiffEntry>,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub metadata_only: usize,
    pub added_bytes: u64,
    pub removed_bytes: u64,
}

async fn open_tree(
    s: &Session,
    cat: &crate::catalog::Catalog,
    h: &super::JobHandle,
    chains: &mut HashMap<Id16, OpenChain>,
    p: &crate::repo::format::PointRecord,
) -> Result<BTreeMap<Vec<u8>, TreeEntry>> {
    if let std::collections::hash_map::Entry::Vacant(v) = chains.entry(p.chain_id) {
        let (oc, _) = open_chain(s, cat, h, &p.chain_id, Some(p), false).await?;
        v.insert(oc);
    }
    let oc = &chains[&p.chain_id];
    let op = OpenPoint::open(&h.repo, oc, p.clone())?;
    Ok(op
        .tree(&h.repo, oc)?
        .into_iter()
        .map(|e| (e.path_bytes(), e))
        .collect())
}

/// `arca diff NAME FROM TO`: what changed between two points of a job.
pub async fn diff(
    s: &Session,
    name: &str,
    repo: Option<&std::path::Path>,
    from: &str,
    to: &str,
) -> Result<Diff> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, repo)?;
    let (recs, _) = job_points(&cat, &h)?;
    let a = select_point(&recs, Some(from), name)?.clone();
    let b = select_point(&recs, Some(to), name)?.clone();
    let mut chains = HashMap::new();
    let ta = open_tree(s, &cat, &h, &mut chains, &a).await?;
    let tb = open_tree(s, &cat, &h, &mut chains, &b).await?;
    let same_chain = a.chain_id == b.chain_id;
    let mut d = Diff {
        job: name.to_string(),
        from_point_id: a.point_id.hex(),
        to_point_id: b.point_id.hex(),
        content_compared: same_chain,
        entries: Vec::new(),
        added: 0,
        removed: 0,
        changed: 0,
        metadata_only: 0,
        added_bytes: 0,
        removed_bytes: 0,
    };
    let keys: std::collections::BTreeSet<&Vec<u8>> = ta.keys().chain(tb.keys()).collect();
    for k in keys {
        let e = match (ta.get(k), tb.get(k)) {
            (None, Some(n)) => {
                d.added += 1;
                d.added_bytes += n.size;
                DiffEntry {
                    path: n.display_path(),
                    change: "added",
                    size_before_bytes: None,
                    size_after_bytes: Some(n.size),
                    metadata: vec![],
                }
            }
            (Some(o), None) => {
                d.removed += 1;
                d.removed_bytes += o.size;
                DiffEntry {
                    path: o.display_path(),
                    change: "removed",
                    size_before_bytes: Some(o.size),
                    size_after_bytes: None,
                    metadata: vec![],
                }
            }
            (Some(o), Some(n)) => {
                let mut meta = Vec::new();
                if o.mode != n.mode {
                    meta.push("mode");
                }
                if o.uid != n.uid {
                    meta.push("uid");
                }
                if o.gid != n.gid {
                    meta.push("gid");
                }
                if o.mtime_ns != n.mtime_ns && o.kind != EntryType::Dir {
                    meta.push("mtime");
                }
                // A small file read again (its ctime changed) goes to a new bundle even
                // if its bytes did not change: bundled, its size and mtime tell.
                let bundled = o.at.is_some() || n.at.is_some();
                let change = if o.kind != n.kind {
                    "type"
                } else if o.size != n.size
                    || o.target != n.target
                    || (same_chain
                        && (o.chunks != n.chunks || o.at != n.at)
                        && (!bundled || o.mtime_ns != n.mtime_ns))
                    || (!same_chain && o.mtime_ns != n.mtime_ns && o.kind == EntryType::File)
                {
                    "changed"
                } else if !meta.is_empty() {
                    "metadata"
                } else {
                    continue;
                };
                if change == "metadata" {
                    d.metadata_only += 1;
                } else {
                    d.changed += 1;
                }
                DiffEntry {
                    path: n.display_path(),
                    change,
                    size_before_bytes: Some(o.size),
                    size_after_bytes: Some(n.size),
                    metadata: meta,
                }
            }
            (None, None) => continue,
        };
        d.entries.push(e);
    }
    Ok(d)
}

#[derive(Debug, Serialize)]
pub struct PointSizes {
    pub point_id: String,
    pub time: String,
    pub kind: Option<String>,
    pub files: u64,
    /// The source's bytes in this point.
    pub total_bytes: u64,
    /// Bytes not found in earlier points when it was written.
    pub new_bytes: u64,
    /// Bytes its new chunks take in the repository (compressed, sealed).
    pub stored_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub job: String,
    pub points: Vec<PointSizes>,
    /// Sum of `total_bytes` over the points: what a tool without deduplication would hold.
    pub total_bytes: u64,
    /// Distinct chunks the job's points reference, before compression.
    pub unique_bytes: u64,
    /// What those chunks take in the repository (compressed and sealed).
    pub stored_bytes: u64,
    pub unique_chunks: u64,
    /// total_bytes / stored_bytes.
    pub ratio: f64,
}

/// `arca stats NAME`: sizes per point and for the whole job.
pub async fn stats(s: &Session, name: &str, repo: Option<&std::path::Path>) -> Result<Stats> {
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, repo)?;
    let (recs, _) = job_points(&cat, &h)?;
    let mut by_chain: BTreeMap<Id16, Vec<crate::repo::format::PointRecord>> = BTreeMap::new();
    for p in &recs {
        by_chain.entry(p.chain_id).or_default().push(p.clone());
    }
    let mut out = Stats {
        job: name.to_string(),
        points: Vec::new(),
        total_bytes: 0,
        unique_bytes: 0,
        stored_bytes: 0,
        unique_chunks: 0,
        ratio: 0.0,
    };
    for (chain_id, pts) in by_chain {
        let (oc, _) = open_chain(s, &cat, &h, &chain_id, pts.first(), false).await?;
        let index = crate::engine::ChainIndex::load(&h.repo, &oc, &pts)?;
        let mut seen: HashSet<crate::repo::format::Id32> = HashSet::new();
        for p in &pts {
            let (_, body) = crate::engine::open_point(&oc, p)?;
            let mut reader = crate::engine::ChunkReader::new(&h.repo, &index, &oc.idk);
            for e in crate::engine::read_tree(&mut reader, &body)? {
                for c in e.chunks {
                    if seen.insert(c) {
                        if let Some(loc) = index.get(&c) {
                            out.unique_bytes += loc.raw_len as u64;
                            out.stored_bytes += loc.length as u64;
                        }
                    }
                }
            }
            for c in &body.tree {
                if seen.insert(*c) {
                    if let Some(loc) = index.get(c) {
                        out.unique_bytes += loc.raw_len as u64;
                        out.stored_bytes += loc.length as u64;
                    }
                }
            }
            out.total_bytes += body.stats.bytes_total;
            out.points.push(PointSizes {
                point_id: p.point_id.hex(),
                time: p.time.clone(),
                kind: p.source_kind.clone(),
                files: body.stats.files,
                total_bytes: body.stats.bytes_total,
                new_bytes: body.stats.bytes_new,
                stored_bytes: body.stats.bytes_stored,
            });
        }
        out.unique_chunks += seen.len() as u64;
    }
    out.points.sort_by(|a, b| a.time.cmp(&b.time));
    out.ratio = if out.stored_bytes > 0 {
        out.total_bytes as f64 / out.stored_bytes as f64
    } else {
        0.0
    };
    Ok(out)
}
