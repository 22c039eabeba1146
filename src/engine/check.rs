//! `arca check`: structure always; with `read_data`, every byte of every pack the job uses.

use std::collections::{BTreeMap, HashSet};

use indicatif::ProgressBar;
use serde::Serialize;

use super::*;
use crate::repo::pack;

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub points: u64,
    pub chunks_referenced: u64,
    pub packs_checked: u64,
    pub chunks_read: u64,
    pub read_bytes: u64,
    /// Packs no kept point uses (leftovers of interrupted backups, forgotten points) and
    /// their bytes, and bytes of unused chunks in partly used packs: `arca prune` reclaims
    /// them. Not problems.
    pub unreferenced_packs: u64,
    pub unreferenced_bytes: u64,
    pub unused_bytes: u64,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct Problem {
    pub object: String,
    pub detail: String,
}

impl CheckReport {
    fn problem(&mut self, object: impl Into<String>, detail: impl std::fmt::Display) {
        self.problems.push(Problem {
            object: object.into(),
            detail: detail.to_string(),
        });
    }

    fn add_error(&mut self, e: Error) {
        match e {
            Error::Integrity { object, detail } => self.problem(object, detail),
            other => self.problem("repository", other),
        }
    }
}

/// Total bytes of the packs `check --read-data` will read (for a progress bar).
pub fn pack_bytes(repo: &Repository, idx: &ChainIndex) -> u64 {
    idx.packs.iter().filter_map(|p| repo.pack_len(p)).sum()
}

/// Checks the points of one chain (`points`: every record of the chain, kept and forgotten,
/// oldest first).
pub fn check_chain(
    repo: &Repository,
    oc: &OpenChain,
    points: &[PointRecord],
    read_data: bool,
    progress: &ProgressBar,
    report: &mut CheckReport,
) -> Result<()> {
    let mut damaged = Vec::new();
    let idx = ChainIndex::load_reporting(repo, oc, points, &mut |e| damaged.push(e))?;
    for e in damaged {
        report.add_error(e);
    }
    // Every chunk referenced by every point (file contents and the file index) is indexed,
    // and lies inside an existing pack.
    let mut referenced: HashSet<Id32> = HashSet::new();
    for p in points {
        if p.is_forgotten() {
            // Only its key and index remain: they must authenticate.
            if let Err(e) = oc.verified_data_key(p) {
                report.add_error(e);
            }
            continue;
        }
        report.points += 1;
        let body = match open_point(oc, p) {
            Ok((_, b)) => b,
            Err(e) => {
                report.add_error(e);
                continue;
            }
        };
        let mut reader = ChunkReader::new(repo, &idx, &oc.idk);
        referenced.extend(body.tree.iter().copied());
        let tree = match read_tree(&mut reader, &body) {
            Ok(t) => t,
            Err(e) => {
                report.add_error(e);
                continue;
            }
        };
        for e in &tree {
            for c in &e.chunks {
                if referenced.insert(*c) && !idx.contains(c) {
                    report.problem(
                        format!("chunk {c}"),
                        format!(
                            "missing (file {} in point {})",
                            e.display_path(),
                            p.point_id
                        ),
                    );
                }
            }
        }
    }
    report.chunks_referenced += referenced.len() as u64;
    let mut sizes: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, loc) in idx.iter() {
        let end = sizes.entry(loc.pack).or_default();
        *end = (*end).max(loc.offset + loc.length as u64);
    }
    for (pack_no, end) in &sizes {
        let id = idx.packs[*pack_no as usize];
        match repo.pack_len(&id) {
            Some(len) if len < *end => report.problem(format!("pack {id}"), "truncated"),
            Some(_) => {}
            None => report.problem(format!("pack {id}"), "missing or not a regular file"),
        }
    }
    if read_data {
        read_packs(repo, oc, &idx, progress, report);
    }
    Ok(())
}

fn read_packs(
    repo: &Repository,
    oc: &OpenChain,
    idx: &ChainIndex,
    progress: &ProgressBar,
    report: &mut CheckReport,
) {
    // chunk entries by pack
    let mut by_pack: BTreeMap<u32, Vec<(Id32, Loc)>> = BTreeMap::new();
    for (id, loc) in idx.iter() {
        by_pack.entry(loc.pack).or_default().push((*id, *loc));
    }
    // One decompression context and output buffer for every chunk.
    let mut z = zstd::bulk::Decompressor::new().expect("zstd decompression context");
    let mut plain = Vec::new();
    for (pack_no, chunks) in by_pack {
        let pack_id = idx.packs[pack_no as usize];
        let obj = format!("pack {pack_id}");
        let bytes = match repo.read_pack(&pack_id) {
            Ok(b) => b,
            Err(e) => {
                report.add_error(e);
                continue;
            }
        };
        report.packs_checked += 1;
        report.read_bytes += bytes.len() as u64;
        progress.inc(bytes.len() as u64);
        if crypto::content_hash(&bytes) != pack_id.0 {
            report.problem(
                &obj,
                "content does not match its name (the file was modified)",
            );
        }
        match pack::parse_frame(&bytes) {
            Ok(frame) => {
                let point = chunks.first().map(|(_, l)| l.point).unwrap_or(0);
                let (place, _, header_opener) = &idx.points[point as usize];
                if frame.point_id != place.point_id || frame.data_format != place.data_format {
                    report.problem(
                        &obj,
                        "written by another recovery point than its index says",
                    );
                } else if let Err(e) = pack::open_header(&frame, header_opener, place) {
                    report.problem(format!("{obj} header"), e);
                }
            }
            Err(e) => report.problem(&obj, e),
        }
        for (id, loc) in chunks {
            report.chunks_read += 1;
            let (place, opener, _) = &idx.points[loc.point as usize];
            let end = loc.offset as usize + loc.length as usize;
            let Some(sealed) = bytes.get(loc.offset as usize..end) else {
                report.problem(format!("chunk {id} in {obj}"), "beyond the end of the pack");
                continue;
            };
            let ok = opener
                .open(&id, &place.chunk_aad(&id), sealed)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    let d = decode_payload_into(&mut z, &p, loc.raw_len as usize, &mut plain)
                        .map_err(|e| e.0)?;
                    if oc.idk.id(d) == id.0 {
                        Ok(())
                    } else {
                        Err("content does not match its id".into())
                    }
                });
            if let Err(e) = ok {
                report.problem(format!("chunk {id} in {obj}"), e);
            }
        }
    }
}
