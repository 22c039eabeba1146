//! `arca prune`: reclaims the space of data that no kept recovery point needs.
//!
//! What goes, and why it is safe (FORMAT.md §5.9):
//! - **leftovers**: packs whose header names no point record, and index files of no point
//!   (an interrupted backup writes packs and its index before its point record);
//! - **stale packs**: packs of an authenticated point that its authenticated index does not
//!   list (left by an interrupted prune);
//! - **forgotten points** whose chunks no kept point uses: their record, index and packs;
//! - **repacking**: the packs of a forgotten point that kept points still partly use are
//!   rewritten with only the used chunks, copied as sealed bytes (still sealed under that
//!   point's data key, at its place), under a pack header and an index sealed with random
//!   nonces. The new packs are written first, then the index that names them, then the old
//!   packs are removed: a crash at any moment leaves every used chunk reachable.
//!
//! Prune runs under the repository's exclusive lock (no backup is writing), so a pack with
//! no point record is not one a running backup will still commit.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::*;
use crate::fault;
use crate::repo::pack::PackBuilder;

/// One chain to prune: its opened keys and every record of the chain (kept and forgotten).
pub struct ChainInput<'a> {
    pub oc: &'a OpenChain,
    pub records: Vec<PointRecord>,
}

/// What prune found and did (the same fields for `--dry-run`, where nothing is done).
#[derive(Debug, Default, Serialize, Clone)]
pub struct PruneStats {
    pub packs_total: u64,
    pub total_bytes: u64,
    /// Packs no point record names (interrupted backups), and their bytes.
    pub leftover_packs: u64,
    pub leftover_bytes: u64,
    /// Index files of no point.
    pub leftover_indexes: u64,
    /// Packs of a point that its index does not list (an interrupted prune).
    pub stale_packs: u64,
    pub stale_bytes: u64,
    /// Forgotten points whose data nothing uses any more (removed whole).
    pub forgotten_points_removed: u64,
    pub forgotten_packs_removed: u64,
    pub forgotten_bytes_removed: u64,
    /// Packs rewritten with only their used chunks.
    pub packs_repacked: u64,
    pub repacked_bytes_before: u64,
    pub repacked_bytes_after: u64,
    /// Bytes of unused chunks left in place (below `--max-unused`, or over `--max-repack`).
    pub unused_bytes_kept: u64,
    /// Bytes removed in all.
    pub reclaimed_bytes: u64,
    /// Bytes of the repository's packs afterwards.
    pub total_bytes_after: u64,
    /// Objects prune left because S3 Object Lock still retains them, and when the last of
    /// them becomes removable.
    pub locked_objects: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
}

/// Limits on repacking.
#[derive(Debug, Clone, Copy)]
pub struct PruneLimits {
    /// Unused bytes tolerated, as a percentage of the used bytes of the chains pruned.
    pub max_unused_percent: f64,
    /// Most bytes rewritten in one run, as a percentage of the repository's pack bytes.
    pub max_repack_percent: f64,
}

impl Default for PruneLimits {
    fn default() -> Self {
        PruneLimits {
            max_unused_percent: 5.0,
            max_repack_percent: 100.0,
        }
    }
}

/// A pack of a forgotten point, partly used.
struct Candidate {
    point: Id16,
    pack: Id32,
    size: u64,
    used: u64,
}

/// What one point's authenticated index says, with its keys.
struct Indexed {
    record: PointRecord,
    keys: PointKeys,
    entries: Vec<IndexEntry>,
}

/// The plan: everything prune will remove or rewrite.
pub struct Plan {
    pub stats: PruneStats,
    /// Things prune leaves alone and why (damaged points, chains it could not read).
    pub problems: Vec<String>,
    leftover_packs: Vec<Id32>,
    leftover_indexes: Vec<Id16>,
    stale_packs: Vec<Id32>,
    drop_points: Vec<(Id16, Vec<Id32>)>,
    /// Per forgotten point: the packs to rewrite and its index.
    repack: Vec<(Indexed, HashSet<Id32>)>,
    /// Chunks in use: (pack, offset).
    used: HashSet<(Id32, u64)>,
}

fn load_index(repo: &Repository, oc: &OpenChain, p: &PointRecord) -> Result<Indexed> {
    let dk = oc.data_key(p)?;
    if p.version >= 2 && !p.verify(&dk) {
        return Err(Error::integrity(
            format!("recovery point {}", p.point_id),
            "its MAC does not verify",
        ));
    }
    let keys = PointKeys::new(&dk, p.place());
    let sealed = repo.read_index(&p.point_id, p.data_format)?;
    let obj = || format!("index of recovery point {}", p.point_id);
    let pt = crypto::open(&keys.index, &p.place().index_aad(), &sealed)
        .map_err(|e| Error::integrity(obj(), e))?;
    let entries = decode_index(&pt).map_err(|e| Error::integrity(obj(), e))?;
    Ok(Indexed {
        record: p.clone(),
        keys,
        entries,
    })
}

/// Works out what to remove and what to repack. `chains` are the chains whose keys are at
/// hand; points of other chains are left alone (their packs count as used), except that
/// leftovers (packs and indexes of no point at all) go whatever job wrote them.
pub fn plan(repo: &Repository, chains: &[ChainInput<'_>], limits: PruneLimits) -> Result<Plan> {
    let mut st = PruneStats::default();
    let mut problems = Vec::new();
    let existing: HashSet<Id16> = repo.point_ids()?.into_iter().collect();

    // Every pack, by the point its (unauthenticated) header names.
    let mut owned: HashMap<Id16, Vec<(Id32, u64)>> = HashMap::new();
    let mut sizes: HashMap<Id32, u64> = HashMap::new();
    let mut leftover_packs = Vec::new();
    for id in repo.list_packs()? {
        match repo.pack_owner(&id) {
            Ok(Some((point, _, len))) => {
                st.packs_total += 1;
                st.total_bytes += len;
                sizes.insert(id, len);
                if existing.contains(&point) {
                    owned.entry(point).or_default().push((id, len));
                } else {
                    st.leftover_packs += 1;
                    st.leftover_bytes += len;
                    leftover_packs.push(id);
                }
            }
            Ok(None) => problems.push(format!(
                "packs/{}/{id} is not a pack; left alone",
                &id.hex()[..2]
            )),
            Err(e) => problems.push(format!("pack {id}: {e}; left alone")),
        }
    }
    let leftover_indexes: Vec<Id16> = repo
        .list_index_ids()?
        .into_iter()
        .filter(|i| !existing.contains(i))
        .collect();
    st.leftover_indexes = leftover_indexes.len() as u64;

    let mut stale_packs = Vec::new();
    let mut drop_points = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut indexed_forgotten: HashMap<Id16, Indexed> = HashMap::new();
    let mut used: HashSet<(Id32, u64)> = HashSet::new();
    let mut used_bytes_total = 0u64;
    for ci in chains {
        let oc = ci.oc;
        let mut damaged = Vec::new();
        let idx = ChainIndex::load_reporting(repo, oc, &ci.records, &mut |e| damaged.push(e))?;
        for e in damaged {
            problems.push(format!("{e}; its packs are left alone"));
        }
        // What the kept points use: their file index and every file's chunks. If one of
        // them cannot be read, nothing of this chain is removed (it might be in use).
        let mut referenced: HashSet<Id32> = HashSet::new();
        let mut readable = true;
        for p in ci.records.iter().filter(|p| !p.is_forgotten()) {
            let got = open_point(oc, p).and_then(|(_, body)| {
                let mut reader = ChunkReader::new(repo, &idx, &oc.idk);
                let tree = read_tree(&mut reader, &body)?;
                Ok((body, tree))
            });
            match got {
                Ok((body, tree)) => {
                    referenced.extend(body.tree.iter().copied());
                    for e in tree {
                        referenced.extend(e.chunks);
                    }
                }
                Err(e) => {
                    readable = false;
                    problems.push(format!(
                        "chain {}: recovery point {} cannot be read ({e}); nothing of this chain is \
                         removed until it is forgotten (`arca forget {} {}`)",
                        oc.chain.chain_id,
                        p.point_id,
                        p.job,
                        p.point_id.short()
                    ));
                }
            }
        }
        if !readable {
            continue;
        }
        for c in &referenced {
            if let Some(loc) = idx.get(c) {
                used.insert((idx.packs[loc.pack as usize], loc.offset));
                used_bytes_total += loc.length as u64;
            }
        }
        for p in &ci.records {
            let ix = match load_index(repo, oc, p) {
                Ok(ix) => ix,
                Err(_) => continue, // reported above; its packs stay
            };
            let listed: HashSet<Id32> = ix.entries.iter().map(|e| e.pack_id).collect();
            let mine = owned.get(&p.point_id).cloned().unwrap_or_default();
            for (pack, len) in &mine {
                if !listed.contains(pack) {
                    st.stale_packs += 1;
                    st.stale_bytes += len;
                    stale_packs.push(*pack);
                }
            }
            if !p.is_forgotten() {
                continue;
            }
            let mut used_by_pack: BTreeMap<Id32, u64> = BTreeMap::new();
            let mut unused_by_pack: BTreeMap<Id32, u64> = BTreeMap::new();
            for e in &ix.entries {
                if used.contains(&(e.pack_id, e.offset)) {
                    *used_by_pack.entry(e.pack_id).or_default() += e.length as u64;
                } else {
                    *unused_by_pack.entry(e.pack_id).or_default() += e.length as u64;
                }
            }
            if used_by_pack.is_empty() {
                let packs: Vec<Id32> = mine
                    .iter()
                    .filter(|(id, _)| listed.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                st.forgotten_points_removed += 1;
                st.forgotten_packs_removed += packs.len() as u64;
                st.forgotten_bytes_removed += packs
                    .iter()
                    .map(|p| sizes.get(p).copied().unwrap_or(0))
                    .sum::<u64>();
                drop_points.push((p.point_id, packs));
                continue;
            }
            for pack in &listed {
                let size = sizes.get(pack).copied().unwrap_or(0);
                let unused = unused_by_pack.get(pack).copied().unwrap_or(0);
                if size > 0 && unused > 0 {
                    candidates.push(Candidate {
                        point: p.point_id,
                        pack: *pack,
                        size,
                        used: size.saturating_sub(unused),
                    });
                }
            }
            indexed_forgotten.insert(p.point_id, ix);
        }
    }

    // Repack the most wasteful packs first, until what stays unused is within the limit and
    // as long as the rewrite budget lasts.
    candidates.sort_by_key(|c| std::cmp::Reverse(c.size - c.used));
    let mut unused_left: u64 = candidates.iter().map(|c| c.size - c.used).sum();
    let tolerated = (used_bytes_total as f64 * limits.max_unused_percent / 100.0) as u64;
    let budget = (st.total_bytes as f64 * limits.max_repack_percent / 100.0) as u64;
    let mut spent = 0u64;
    let mut chosen: HashMap<Id16, HashSet<Id32>> = HashMap::new();
    for c in &candidates {
        if unused_left <= tolerated || spent + c.size > budget {
            continue;
        }
        spent += c.size;
        unused_left -= c.size - c.used;
        st.packs_repacked += 1;
        st.repacked_bytes_before += c.size;
        chosen.entry(c.point).or_default().insert(c.pack);
    }
    st.unused_bytes_kept = unused_left;
    let repack: Vec<(Indexed, HashSet<Id32>)> = chosen
        .into_iter()
        .filter_map(|(p, packs)| indexed_forgotten.remove(&p).map(|ix| (ix, packs)))
        .collect();
    Ok(Plan {
        stats: st,
        problems,
        leftover_packs,
        leftover_indexes,
        stale_packs,
        drop_points,
        repack,
        used,
    })
}

impl Plan {
    /// Bytes the plan removes outright (repacking's gain is known only after it).
    /// Object Lock: takes out of the plan everything whose removal the server would refuse
    /// (an object still retained), whole points and whole repacks at a time, and says when
    /// it becomes removable. Nothing changes for a repository without Object Lock.
    pub fn hold_locked(&mut self, repo: &Repository) -> Result<()> {
        use super::immutability::retained_until;
        if repo.config.object_lock.is_none() {
            return Ok(());
        }
        let mut latest: Option<std::time::SystemTime> = None;
        let mut held = 0u64;
        let mut locked = |key: String| -> Result<bool> {
            let t = retained_until(repo, &key)?;
            if let Some(t) = t {
                held += 1;
                latest = latest.max(Some(t));
            }
            Ok(t.is_some())
        };
        let size = |p: &Id32| repo.pack_len(p).unwrap_or(0);
        let st = &mut self.stats;
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.leftover_packs) {
            if locked(Repository::pack_rel(&p))? {
                st.leftover_packs -= 1;
                st.leftover_bytes = st.leftover_bytes.saturating_sub(size(&p));
            } else {
                keep.push(p);
            }
        }
        self.leftover_packs = keep;
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.stale_packs) {
            if locked(Repository::pack_rel(&p))? {
                st.stale_packs -= 1;
                st.stale_bytes = st.stale_bytes.saturating_sub(size(&p));
            } else {
                keep.push(p);
            }
        }
        self.stale_packs = keep;
        let mut keep = Vec::new();
        for i in std::mem::take(&mut self.leftover_indexes) {
            if locked(format!("index/{}", i.hex()))? {
                st.leftover_indexes -= 1;
            } else {
                keep.push(i);
            }
        }
        self.leftover_indexes = keep;
        let mut keep = Vec::new();
        for (point, packs) in std::mem::take(&mut self.drop_points) {
            let mut any = locked(format!("points/{point}.json"))?;
            any |= locked(format!("index/{}", point.hex()))?;
            for p in &packs {
                any |= locked(Repository::pack_rel(p))?;
            }
            if any {
                st.forgotten_points_removed -= 1;
                st.forgotten_packs_removed -= packs.len() as u64;
                let b: u64 = packs.iter().map(size).sum();
                st.forgotten_bytes_removed = st.forgotten_bytes_removed.saturating_sub(b);
            } else {
                keep.push((point, packs));
            }
        }
        self.drop_points = keep;
        let mut keep = Vec::new();
        for (ix, packs) in std::mem::take(&mut self.repack) {
            let mut any = false;
            for p in &packs {
                any |= locked(Repository::pack_rel(p))?;
            }
            if any {
                st.packs_repacked -= packs.len() as u64;
                let b: u64 = packs.iter().map(size).sum();
                st.repacked_bytes_before = st.repacked_bytes_before.saturating_sub(b);
            } else {
                keep.push((ix, packs));
            }
        }
        self.repack = keep;
        st.locked_objects = held;
        st.locked_until = latest.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        if let Some(t) = &st.locked_until {
            self.problems.push(format!(
                "{held} object(s) are retained by S3 Object Lock (the last until {t}); prune removes them once their retention has passed"
            ));
        }
        Ok(())
    }

    fn removed_bytes(&self) -> u64 {
        self.stats.leftover_bytes + self.stats.stale_bytes + self.stats.forgotten_bytes_removed
    }

    /// What the repository would hold if the plan ran (repacked packs counted at their used
    /// size), for `--dry-run`.
    pub fn estimate(&self) -> PruneStats {
        let mut st = self.stats.clone();
        let used_of_repacked: u64 = self
            .repack
            .iter()
            .flat_map(|(ix, packs)| {
                ix.entries
                    .iter()
                    .filter(|e| {
                        packs.contains(&e.pack_id) && self.used.contains(&(e.pack_id, e.offset))
                    })
                    .map(|e| e.length as u64)
            })
            .sum();
        st.repacked_bytes_after = used_of_repacked;
        st.reclaimed_bytes =
            self.removed_bytes() + st.repacked_bytes_before.saturating_sub(used_of_repacked);
        st.total_bytes_after = st.total_bytes.saturating_sub(st.reclaimed_bytes);
        st
    }

    /// Carries the plan out, in the crash-safe order described in the module docs.
    pub fn execute(self, repo: &Repository, progress: &dyn Fn(&str)) -> Result<PruneStats> {
        let mut st = self.stats.clone();
        let mut written = 0u64;
        for (ix, packs) in &self.repack {
            progress(&format!(
                "repacking {} pack(s) of forgotten point {}",
                packs.len(),
                ix.record.point_id.short()
            ));
            written += repack_point(repo, ix, packs, &self.used)?;
        }
        st.repacked_bytes_after = written;
        for (point, packs) in &self.drop_points {
            // The record first: from then on its index and packs are leftovers, which the
            // next prune removes if this one is stopped.
            repo.delete_point_file(point)?;
            fault::wrote("prune: point record removed");
            repo.delete_index(point)?;
            fault::wrote("prune: index removed");
            for p in packs {
                repo.delete_pack(p)?;
                fault::wrote("prune: pack removed");
            }
        }
        for p in self.stale_packs.iter().chain(&self.leftover_packs) {
            repo.delete_pack(p)?;
            fault::wrote("prune: unreferenced pack removed");
        }
        for i in &self.leftover_indexes {
            repo.delete_index(i)?;
            fault::wrote("prune: leftover index removed");
        }
        st.reclaimed_bytes =
            self.removed_bytes() + st.repacked_bytes_before.saturating_sub(written);
        st.total_bytes_after = repo
            .list_packs()?
            .iter()
            .filter_map(|p| repo.pack_len(p))
            .sum();
        Ok(st)
    }
}

/// Rewrites the chosen packs of one forgotten point with only their used chunks; returns
/// the bytes written.
fn repack_point(
    repo: &Repository,
    ix: &Indexed,
    packs: &HashSet<Id32>,
    used: &HashSet<(Id32, u64)>,
) -> Result<u64> {
    let place = ix.record.place();
    let opener = ChunkOpener::new(&ix.keys);
    let mut keep: Vec<IndexEntry> = ix
        .entries
        .iter()
        .filter(|e| !packs.contains(&e.pack_id))
        .cloned()
        .collect();
    let mut written = 0u64;
    let mut builder = PackBuilder::new(
        &place.point_id,
        super::backup::PACK_TARGET + 1024,
        place.data_format,
    );
    let mut flush = |b: PackBuilder, keep: &mut Vec<IndexEntry>| -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let fin = b
            .finish_random_nonce(&ix.keys.pack_headers, &place)
            .map_err(|e| Error::io("build a repacked pack", e))?;
        repo.write_pack(&fin.id, &fin.bytes)?;
        fault::wrote("prune: repacked pack written");
        written += fin.bytes.len() as u64;
        keep.extend(fin.entries.iter().map(|h| IndexEntry {
            chunk_id: h.chunk_id,
            pack_id: fin.id,
            offset: h.offset,
            length: h.length,
            raw_len: h.raw_len,
        }));
        Ok(())
    };
    let mut copied: HashSet<Id32> = HashSet::new();
    let mut by_pack: BTreeMap<Id32, Vec<&IndexEntry>> = BTreeMap::new();
    for e in ix.entries.iter().filter(|e| packs.contains(&e.pack_id)) {
        if used.contains(&(e.pack_id, e.offset)) {
            by_pack.entry(e.pack_id).or_default().push(e);
        }
    }
    for (pack, entries) in by_pack {
        let mut f = repo.open_pack(&pack)?;
        for e in entries {
            if !copied.insert(e.chunk_id) {
                continue;
            }
            let sealed = Repository::read_pack_range(&mut f, &pack, e.offset, e.length)?;
            // Only authentic chunks are carried over (a damaged one would stay damaged).
            opener
                .open(&e.chunk_id, &place.chunk_aad(&e.chunk_id), &sealed)
                .map_err(|err| {
                    Error::integrity(
                        format!("chunk {} in pack {pack}", e.chunk_id),
                        format!("{err}; prune stopped before changing anything of this point"),
                    )
                })?;
            builder
                .add(e.chunk_id, &sealed, e.raw_len)
                .map_err(|e| Error::io("build a repacked pack", e))?;
            if builder.len() >= super::backup::PACK_TARGET {
                let full = std::mem::replace(
                    &mut builder,
                    PackBuilder::new(
                        &place.point_id,
                        super::backup::PACK_TARGET + 1024,
                        place.data_format,
                    ),
                );
                flush(full, &mut keep)?;
            }
        }
    }
    flush(builder, &mut keep)?;
    // The index now names the new packs (sealed with a random nonce: the point's index key
    // already sealed its first index under counter nonce 0).
    let sealed =
        crypto::seal_random_nonce(&ix.keys.index, &place.index_aad(), &encode_index(&keep));
    repo.write_index(&place.point_id, place.data_format, &sealed)?;
    fault::wrote("prune: index rewritten");
    for p in packs {
        repo.delete_pack(p)?;
        fault::wrote("prune: repacked pack removed");
    }
    Ok(written)
}
