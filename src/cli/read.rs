//! Read commands: `points`, `ls`, `restore`, `check`, `keys resolve`. Each accepts
//! `--repo DIR` and then needs no catalog entry at all.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::*;
use crate::catalog::PointRow;
use crate::engine::check::{self, CheckReport};
use crate::engine::restore::{self, RestoreOptions};
use crate::engine::{open_point, OpenPoint};
use crate::error::exit;
use crate::repo::format::{EntryType, PointStats};
use crate::ui::human_bytes;

#[derive(Args, Debug)]
pub struct PointsArgs {
    /// The job's name.
    pub name: String,
    /// Only this series: `tree`, or a stream's name (`backup --stdin --stdin-name NAME`).
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// Read the job from this repository instead of the catalog.
    #[arg(long)]
    pub repo: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// The job's name.
    pub name: String,
    /// Recovery point id or id prefix [default: the latest].
    pub point: Option<String>,
    /// The newest point of this stream series (`backup --stdin --stdin-name NAME`) instead
    /// of the newest tree backup.
    #[arg(long, value_name = "NAME", conflicts_with = "point")]
    pub stream: Option<String>,
    /// Read the job from this repository instead of the catalog (after a reinstall, or a repository this catalog does not know).
    #[arg(long)]
    pub repo: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// The job's name.
    pub name: String,
    /// A glob over the whole path (`*` and `?`; `docs/*.txt`), or a plain substring.
    pub pattern: String,
    /// Read the job from this repository instead of the catalog (after a reinstall, or a repository this catalog does not know).
    #[arg(long)]
    pub repo: Option<PathBuf>,
}

/// `*` matches any run of characters (including '/'), `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[derive(Serialize)]
struct Found {
    point_id: String,
    time: String,
    path: String,
    #[serde(rename = "type")]
    kind: EntryType,
    size: u64,
    mtime: String,
}

pub async fn find(ctx: &Ctx, a: FindArgs) -> Result<i32> {
    let cat = ctx.catalog()?;
    let h = locate_job(&cat, &a.name, a.repo.as_deref())?;
    let is_glob = a.pattern.contains(['*', '?']);
    let mut chains: HashMap<Id16, OpenChain> = HashMap::new();
    let mut found = Vec::new();
    for p in job_points(&cat, &h)?.0 {
        if let std::collections::hash_map::Entry::Vacant(v) = chains.entry(p.chain_id) {
            let (oc, _) = open_chain(ctx, &cat, &h, &p.chain_id, None, false).await?;
            v.insert(oc);
        }
        let oc = &chains[&p.chain_id];
        let op = OpenPoint::open(&h.repo, oc, p)?;
        for e in op.tree(&h.repo, oc)? {
            let path = e.display_path();
            let hit = if is_glob {
                glob_match(&a.pattern, &path)
            } else {
                path.contains(&a.pattern)
            };
            if hit {
                found.push(Found {
                    point_id: op.record.point_id.hex(),
                    time: op.record.time.clone(),
                    path,
                    kind: e.kind,
                    size: e.size,
                    mtime: fmt_mtime(e.mtime_ns),
                });
            }
        }
    }
    if ctx.json {
        crate::ui::print_json(&found);
    } else {
        for f in &found {
            ctx.say(format!(
                "{} {} {:>12} {} {}",
                &f.point_id[..8],
                f.time,
                f.size,
                f.mtime,
                f.path
            ));
        }
        ctx.note(format!("{} match(es)", found.len()));
    }
    Ok(if found.is_empty() {
        exit::ERROR
    } else {
        exit::OK
    })
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The job's name.
    pub name: String,
    /// Recovery point id or id prefix [default: the latest].
    pub point: Option<String>,
    /// The newest point of this stream series (`backup --stdin --stdin-name NAME`) instead
    /// of the newest tree backup.
    #[arg(long, value_name = "NAME", conflicts_with = "point")]
    pub stream: Option<String>,
    /// Where to restore (must be empty unless --overwrite).
    #[arg(long)]
    pub target: PathBuf,
    /// Restore only this path (and what is below it); repeatable.
    #[arg(long, value_name = "PATH")]
    pub include: Vec<String>,
    /// Restore into a non-empty target, replacing files that exist there.
    #[arg(long)]
    pub overwrite: bool,
    /// Read the job from this repository instead of the catalog (after a reinstall, or a repository this catalog does not know).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Print every key-resolution tier tried and why it failed.
    #[arg(long)]
    pub explain: bool,
    /// Restore every file whose data reads back intact and list the damaged ones (exit 13)
    /// instead of stopping at the first.
    #[arg(long)]
    pub partial: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The job's name.
    pub name: String,
    /// Also read every pack and authenticate every chunk.
    #[arg(long)]
    pub read_data: bool,
    /// Read the job from this repository instead of the catalog (after a reinstall, or a repository this catalog does not know).
    #[arg(long)]
    pub repo: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Resolve the keys of a recovery point without restoring anything.
    Resolve {
        /// The job's name.
        name: String,
        /// Recovery point id or id prefix [default: the latest complete point].
        point: Option<String>,
        /// Read the job from this repository instead of the catalog (after a reinstall, or a repository this catalog does not know).
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Print every tier tried.
        #[arg(long)]
        explain: bool,
        /// Do not store a password hash recovered from the passphrase or escrow in the catalog.
        #[arg(long)]
        no_store: bool,
    },
}

#[derive(Serialize)]
struct PointView {
    /// "ok", or "damaged" (its metadata does not authenticate, or it is not in this job's chains).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    damage: Option<String>,
    point_id: String,
    chain_id: String,
    time: String,
    parent: Option<String>,
    kind: Option<String>,
    /// `tree`, or `stream:NAME` (null when the keys did not resolve).
    series: Option<String>,
    stats: Option<StatsView>,
    /// How many source files could not be read into the point.
    error_count: Option<u64>,
}

/// A point's statistics in the `--json` naming scheme (sizes in bytes, `*_bytes`).
#[derive(Serialize)]
struct StatsView {
    files: u64,
    dirs: u64,
    symlinks: u64,
    files_unchanged: u64,
    chunks_new: u64,
    total_bytes: u64,
    read_bytes: u64,
    new_bytes: u64,
    stored_bytes: u64,
}

impl From<&PointStats> for StatsView {
    fn from(s: &PointStats) -> Self {
        StatsView {
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            files_unchanged: s.files_unchanged,
            chunks_new: s.chunks_new,
            total_bytes: s.bytes_total,
            read_bytes: s.bytes_read,
            new_bytes: s.bytes_new,
            stored_bytes: s.bytes_stored,
        }
    }
}

pub async fn points(ctx: &Ctx, a: PointsArgs) -> Result<i32> {
    let cat = ctx.catalog()?;
    let h = locate_job(&cat, &a.name, a.repo.as_deref())?;
    let (recs, foreign) = job_points(&cat, &h)?;
    let cached: HashMap<Id16, PointRow> = cat
        .points(&h.job.job_id)?
        .into_iter()
        .map(|r| (r.point_id, r))
        .collect();
    // Points the catalog has no stats for (a reinstall, another machine): open them if the
    // keys resolve, and cache what they say.
    let mut opened: HashMap<Id16, Option<OpenChain>> = HashMap::new();
    let mut damage: HashMap<Id16, String> = HashMap::new();
    let mut views = Vec::new();
    let mut unopened = 0;
    for p in &recs {
        let mut row = cached.get(&p.point_id).cloned();
        // Every point is authenticated when its chain's keys resolve (an edited record shows
        // as damaged even if the catalog has its statistics).
        if let std::collections::hash_map::Entry::Vacant(v) = opened.entry(p.chain_id) {
            let oc = open_chain(ctx, &cat, &h, &p.chain_id, None, false)
                .await
                .ok()
                .map(|x| x.0);
            v.insert(oc);
        }
        let mut series = None;
        if let Some(Some(oc)) = opened.get(&p.chain_id) {
            match open_point(oc, p) {
                Err(e) => {
                    damage.insert(p.point_id, e.to_string());
                }
                Ok((_, b)) => series = Some(crate::ops::retention::series_of(&b.kind, &b.source)),
            }
        }
        if let Some(want) = &a.stream {
            let want = if want == "tree" {
                want.clone()
            } else {
                format!("stream:{want}")
            };
            if series.as_ref() != Some(&want) {
                continue;
            }
        }
        if row.as_ref().and_then(|r| r.stats.as_ref()).is_none()
            && !damage.contains_key(&p.point_id)
        {
            if let Some(Some(oc)) = opened.get(&p.chain_id) {
                if let Ok((_, body)) = open_point(oc, p) {
                    let r = PointRow {
                        point_id: p.point_id,
                        job_id: p.job_id,
                        chain_id: p.chain_id,
                        time: p.time.clone(),
                        kind: Some(body.kind.clone()),
                        stats: Some(body.stats.clone()),
                        errors: body.errors.len() as u64,
                    };
                    cat.upsert_point(&r)?;
                    row = Some(r);
                }
            }
        }
        if row.as_ref().and_then(|r| r.stats.as_ref()).is_none()
            && !damage.contains_key(&p.point_id)
        {
            unopened += 1;
        }
        views.push(PointView {
            status: if damage.contains_key(&p.point_id) {
                "damaged"
            } else {
                "ok"
            },
            damage: damage.get(&p.point_id).cloned(),
            point_id: p.point_id.hex(),
            chain_id: p.chain_id.hex(),
            time: p.time.clone(),
            parent: p.parent.map(|x| x.hex()),
            kind: row
                .as_ref()
                .and_then(|r| r.kind.clone())
                .or_else(|| p.source_kind.clone()),
            series,
            error_count: row.as_ref().map(|r| r.errors),
            stats: row
                .as_ref()
                .and_then(|r| r.stats.as_ref())
                .map(StatsView::from),
        });
    }
    for d in foreign {
        views.push(PointView {
            status: "damaged",
            damage: Some(d.detail.clone()),
            point_id: d.object.trim_start_matches("recovery point ").to_string(),
            chain_id: String::new(),
            time: String::new(),
            parent: None,
            kind: None,
            series: None,
            stats: None,
            error_count: None,
        });
    }
    if ctx.json {
        crate::ui::print_json(&views);
        return Ok(0);
    }
    if views.is_empty() {
        ctx.say(format!(
            "job '{}' has no recovery points yet; run `arca backup {}`",
            a.name, a.name
        ));
        return Ok(0);
    }
    ctx.say(format!(
        "{:<10} {:<28} {:<8} {:<10} {:>8} {:>11} {:>11} {:>11}",
        "POINT", "TIME", "CHAIN", "KIND", "FILES", "SIZE", "READ", "NEW"
    ));
    for v in &views {
        if let Some(d) = &v.damage {
            ctx.say(format!(
                "{:<10} DAMAGED: {d}",
                &v.point_id[..8.min(v.point_id.len())]
            ));
            continue;
        }
        let (files, size, read, new) = match &v.stats {
            Some(s) => (
                s.files.to_string(),
                human_bytes(s.total_bytes),
                human_bytes(s.read_bytes),
                human_bytes(s.new_bytes),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        ctx.say(format!(
            "{:<10} {:<28} {:<8} {:<10} {:>8} {:>11} {:>11} {:>11}",
            &v.point_id[..8],
            v.time,
            &v.chain_id[..8],
            match (&v.series, &v.kind) {
                (Some(s), _) if s.starts_with("stream:") => s.as_str(),
                (_, k) => k.as_deref().unwrap_or("-"),
            },
            files,
            size,
            read,
            new
        ));
    }
    if unopened > 0 {
        ctx.note(format!("{unopened} point(s) show no statistics: their keys did not resolve (give the passphrase or key to see them)"));
    }
    Ok(0)
}

/// Opens a job's recovery point (resolving its keys). "Latest" is the newest point, by the
/// time its data key authenticates, in a chain this job trusts; a damaged newer point is
/// skipped with a warning, and a latest point the catalog knew but the repository lost is
/// an error, never silently replaced by an older one.
async fn open_selected(
    ctx: &Ctx,
    cat: &Catalog,
    h: &JobHandle,
    sel: Option<&str>,
    stream: Option<&str>,
    explain: bool,
    defer: bool,
) -> Result<(
    OpenChain,
    OpenPoint,
    &'static str,
    Vec<crate::resolve::PassphraseCheck>,
)> {
    let mut checks = Vec::new();
    let mut open =
        async |p: &crate::repo::format::PointRecord| -> Result<(OpenChain, &'static str)> {
            if !defer {
                return open_chain(ctx, cat, h, &p.chain_id, Some(p), explain).await;
            }
            let (oc, tier, check) =
                crate::ops::open_chain_deferred(ctx, cat, h, &p.chain_id, Some(p), explain).await?;
            checks.extend(check);
            Ok((oc, tier))
        };
    let (recs, _) = job_points(cat, h)?;
    if matches!(sel, None | Some("latest")) {
        check_latest(h, &recs)?;
        let candidates: Vec<&crate::repo::format::PointRecord> = match stream {
            None => {
                select_point(&recs, None, &h.job.name)?;
                crate::ops::latest_candidates(&recs)
            }
            Some(_) => recs
                .iter()
                .rev()
                .filter(|p| p.source_kind.as_deref() == Some("stdin"))
                .collect(),
        };
        let mut chains: HashMap<Id16, (OpenChain, &'static str)> = HashMap::new();
        let mut last_err = None;
        for p in candidates {
            if let std::collections::hash_map::Entry::Vacant(v) = chains.entry(p.chain_id) {
                v.insert(open(p).await?);
            }
            let (oc, tier) = &chains[&p.chain_id];
            let verified = oc.verified_data_key(p).and_then(|_| match stream {
                // A stream series is named inside the sealed body.
                Some(name) => open_point(oc, p).map(|(_, b)| {
                    crate::ops::retention::series_of(&b.kind, &b.source) == format!("stream:{name}")
                }),
                None => Ok(true),
            });
            match verified {
                Ok(false) => continue,
                Ok(true) => {
                    let (oc, tier) = chains.remove(&p.chain_id).expect("present");
                    let _ = tier;
                    let op = OpenPoint::open(&h.repo, &oc, p.clone())?;
                    return Ok((oc, op, tier, checks));
                }
                Err(e) => {
                    let _ = tier;
                    ctx.note(format!(
                        "warning: skipping damaged recovery point {}: {e}",
                        p.point_id
                    ));
                    last_err = Some(e);
                }
            }
        }
        return Err(last_err.unwrap_or_else(|| {
            Error::NotFound(match stream {
                Some(n) => format!(
                    "job '{}' has no stream '{n}' (backups with --stdin-name {n}); `arca points {}` lists the series",
                    h.job.name, h.job.name
                ),
                None => format!("job '{}' has no recovery points yet", h.job.name),
            })
        }));
    }
    let p = select_point(&recs, sel, &h.job.name)?.clone();
    let (oc, tier) = open(&p).await?;
    let op = OpenPoint::open(&h.repo, &oc, p)?;
    Ok((oc, op, tier, checks))
}

#[derive(Serialize)]
struct LsEntry {
    path: String,
    #[serde(rename = "type")]
    kind: EntryType,
    mode: String,
    size: u64,
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// Owner and group names (numbers when the name was not known).
    user: String,
    group: String,
    /// For a hard link: the path it links to.
    #[serde(skip_serializing_if = "Option::is_none")]
    hardlink: Option<String>,
    /// Names of its extended attributes (POSIX ACLs are `system.posix_acl_*`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<String>,
}

fn fmt_mtime(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    if secs < 0 {
        return secs.to_string();
    }
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64),
    )
    .to_string()
}

pub async fn ls(ctx: &Ctx, a: LsArgs) -> Result<i32> {
    let cat = ctx.catalog()?;
    let h = locate_job(&cat, &a.name, a.repo.as_deref())?;
    let (oc, op, _, _) = open_selected(
        ctx,
        &cat,
        &h,
        a.point.as_deref(),
        a.stream.as_deref(),
        false,
        false,
    )
    .await?;
    let tree = op.tree(&h.repo, &oc)?;
    let entries: Vec<LsEntry> = tree
        .iter()
        .map(|e| LsEntry {
            path: e.display_path(),
            kind: e.kind,
            mode: format!("{:04o}", e.mode),
            size: e.size,
            mtime: fmt_mtime(e.mtime_ns),
            target: e
                .target
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            user: op
                .body
                .user(e.uid)
                .map_or_else(|| e.uid.to_string(), str::to_string),
            group: op
                .body
                .group(e.gid)
                .map_or_else(|| e.gid.to_string(), str::to_string),
            hardlink: e
                .hardlink
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            xattrs: e.xattrs.iter().map(|x| x.name.clone()).collect(),
        })
        .collect();
    if ctx.json {
        crate::ui::print_json(&entries);
    } else {
        for e in entries {
            let t = match e.kind {
                EntryType::Dir => 'd',
                EntryType::Symlink => 'l',
                EntryType::File => '-',
                EntryType::Fifo => 'p',
                EntryType::Chardev => 'c',
                EntryType::Blockdev => 'b',
            };
            let link = match (&e.target, &e.hardlink) {
                (Some(t), _) => format!(" -> {t}"),
                (None, Some(h)) => format!(" link to {h}"),
                _ => String::new(),
            };
            ctx.say(format!(
                "{t} {} {:<8} {:<8} {:>12} {} {}{link}",
                e.mode, e.user, e.group, e.size, e.mtime, e.path
            ));
        }
    }
    Ok(0)
}

pub async fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<i32> {
    let cat = ctx.catalog()?;
    let h = locate_job(&cat, &a.name, a.repo.as_deref())?;
    let mut opts = RestoreOptions {
        target: a.target.clone(),
        include: a.include.clone(),
        overwrite: a.overwrite,
        workers: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        progress: indicatif::ProgressBar::hidden(),
        partial: a.partial,
    };
    // Refuse a non-empty target before asking for any passphrase.
    restore::check_target(&opts)?;
    // A given passphrase is checked while the restore starts (before anything reaches the
    // target), when the catalog's stored hash of its password opens the chain.
    let (oc, op, tier, checks) = open_selected(
        ctx,
        &cat,
        &h,
        a.point.as_deref(),
        a.stream.as_deref(),
        a.explain,
        true,
    )
    .await?;
    ctx.note(format!(
        "keys of recovery point {} opened via: {tier}",
        op.record.point_id.short()
    ));
    opts.progress = crate::ui::progress(
        Some(op.body.stats.bytes_total),
        ctx.quiet || ctx.json,
        "restore",
    );
    crate::signals::install();
    let stats = restore::run_checked(&h.repo, &oc, &op, &opts, checks)?;
    opts.progress.finish_and_clear();
    if ctx.json {
        #[derive(Serialize)]
        struct Out<'a> {
            point_id: String,
            tier: &'a str,
            target: String,
            kms_requests: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            s3_requests: Option<crate::repo::store::StoreStats>,
            #[serde(flatten)]
            stats: &'a restore::RestoreStats,
        }
        crate::ui::print_json(&Out {
            point_id: op.record.point_id.hex(),
            tier,
            target: a.target.display().to_string(),
            kms_requests: crate::keys::aws_kms::process_requests(),
            s3_requests: crate::repo::store::s3::requests_made(),
            stats: &stats,
        });
    } else {
        ctx.say(format!(
            "restored recovery point {} into {}: {} files, {} dirs, {} symlinks, {}",
            op.record.point_id.short(),
            a.target.display(),
            stats.files,
            stats.dirs,
            stats.symlinks,
            human_bytes(stats.total_bytes)
        ));
    }
    if !stats.skipped.is_empty() && !ctx.json {
        eprintln!(
            "note: {} item(s) not restored as recorded:",
            stats.skipped.len()
        );
        for f in &stats.skipped {
            eprintln!("  {}: {}", f.path, f.error);
        }
    }
    if !stats.failed.is_empty() {
        eprintln!(
            "{} file(s) could not be restored: their data is damaged or missing (`arca check {} --read-data` says more):",
            stats.failed.len(),
            a.name
        );
        for f in &stats.failed {
            eprintln!("  {}: {}", f.path, f.error);
        }
        return Ok(exit::INTEGRITY);
    }
    Ok(0)
}

pub async fn check(ctx: &Ctx, a: CheckArgs) -> Result<i32> {
    let cat = ctx.catalog()?;
    let h = locate_job(&cat, &a.name, a.repo.as_deref())?;
    let (recs, foreign) = job_points(&cat, &h)?;
    let mut chains: Vec<Id16> = recs.iter().map(|p| p.chain_id).collect();
    chains.sort();
    chains.dedup();
    let mut report = CheckReport::default();
    for d in foreign {
        report.problems.push(check::Problem {
            object: d.object,
            detail: d.detail,
        });
    }
    let (_, unreadable) = h.repo.scan_points()?;
    for d in unreadable {
        report.problems.push(check::Problem {
            object: d.object,
            detail: d.detail,
        });
    }
    // Every point this catalog knows must still be in the repository.
    if h.row.is_some() {
        let present: std::collections::HashSet<Id16> = h
            .repo
            .list_points(&h.job.job_id)?
            .iter()
            .map(|p| p.point_id)
            .collect();
        for known in cat.points(&h.job.job_id)? {
            if !present.contains(&known.point_id) {
                report.problems.push(check::Problem {
                    object: format!("recovery point {}", known.point_id),
                    detail: format!(
                        "missing: this catalog knew it (made {}), the repository no longer has it",
                        known.time
                    ),
                });
            }
        }
    }
    if let Err(e) = check_latest(&h, &recs) {
        report.problems.push(check::Problem {
            object: "repository".into(),
            detail: e.to_string(),
        });
    }
    let mut opened = Vec::new();
    for chain_id in chains {
        let (oc, _) = open_chain(ctx, &cat, &h, &chain_id, None, false).await?;
        // The chain's kept points, and its forgotten ones (whose indexes kept points use).
        let pts: Vec<_> = crate::engine::chain_points(&h.repo, &h.job.job_id, &chain_id)?
            .into_iter()
            .filter(|p| p.is_forgotten() || recs.iter().any(|r| r.point_id == p.point_id))
            .collect();
        let total = if a.read_data {
            let idx = crate::engine::ChainIndex::load(&h.repo, &oc, &pts).ok();
            idx.map(|i| check::pack_bytes(&h.repo, &i))
        } else {
            None
        };
        let pb = crate::ui::progress(total, ctx.quiet || ctx.json || !a.read_data, "check");
        check::check_chain(&h.repo, &oc, &pts, a.read_data, &pb, &mut report)?;
        pb.finish_and_clear();
        opened.push((oc, pts));
    }
    // Space prune would reclaim (not a problem).
    let inputs: Vec<_> = opened
        .iter()
        .map(|(oc, pts)| crate::engine::prune::ChainInput {
            oc,
            records: pts.clone(),
        })
        .collect();
    let limits = crate::engine::prune::PruneLimits {
        max_unused_percent: 0.0,
        max_repack_percent: 100.0,
    };
    if let Ok(plan) = crate::engine::prune::plan(&h.repo, &inputs, limits) {
        let est = plan.estimate();
        report.unreferenced_packs =
            est.leftover_packs + est.stale_packs + est.forgotten_packs_removed;
        report.unreferenced_bytes =
            est.leftover_bytes + est.stale_bytes + est.forgotten_bytes_removed;
        report.unused_bytes =
            est.repacked_bytes_before - est.repacked_bytes_after.min(est.repacked_bytes_before);
    }
    if ctx.json {
        crate::ui::print_json(&report);
    } else {
        ctx.say(format!(
            "checked {} recovery point(s), {} chunks referenced{}",
            report.points,
            report.chunks_referenced,
            if a.read_data {
                format!(
                    "; read {} packs ({}), {} chunks authenticated",
                    report.packs_checked,
                    human_bytes(report.read_bytes),
                    report.chunks_read
                )
            } else {
                " (structure only; --read-data reads every chunk)".into()
            }
        ));
    }
    if report.unreferenced_packs > 0 || report.unused_bytes > 0 {
        ctx.say(format!(
            "{} unreferenced pack(s) ({}) and {} unused in partly used packs: `arca prune {}` reclaims them",
            report.unreferenced_packs,
            human_bytes(report.unreferenced_bytes),
            human_bytes(report.unused_bytes),
            a.name
        ));
    }
    if report.problems.is_empty() {
        ctx.say("no problems found");
        Ok(exit::OK)
    } else {
        eprintln!("{} problem(s) found:", report.problems.len());
        for p in &report.problems {
            eprintln!("  {}: {}", p.object, p.detail);
        }
        Ok(exit::INTEGRITY)
    }
}

pub async fn keys(ctx: &Ctx, cmd: KeysCmd) -> Result<i32> {
    let KeysCmd::Resolve {
        name,
        point,
        repo,
        explain,
        no_store,
    } = cmd;
    if no_store {
        ctx.creds
            .store_hashes
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
    let cat = ctx.catalog()?;
    let h = locate_job(&cat, &name, repo.as_deref())?;
    let (recs, _) = job_points(&cat, &h)?;
    let p = select_point(&recs, point.as_deref(), &name)?.clone();
    let (oc, tier) = open_chain(ctx, &cat, &h, &p.chain_id, Some(&p), explain || !ctx.json).await?;
    open_point(&oc, &p)?;
    if ctx.json {
        crate::ui::print_json(
            &serde_json::json!({"point_id": p.point_id.hex(), "chain_id": p.chain_id.hex(), "tier": tier}),
        );
    } else {
        ctx.say(format!(
            "recovery point {}: keys resolved via {tier}",
            p.point_id.short()
        ));
    }
    Ok(0)
}

pub async fn diff(
    ctx: &Ctx,
    name: &str,
    repo: Option<&std::path::Path>,
    from: &str,
    to: &str,
) -> Result<i32> {
    let d = crate::ops::inspect::diff(ctx, name, repo, from, to).await?;
    if ctx.json {
        crate::ui::print_json(&d);
        return Ok(0);
    }
    for e in &d.entries {
        let mark = match e.change {
            "added" => "+",
            "removed" => "-",
            "changed" => "M",
            "type" => "T",
            _ => "U",
        };
        let detail = match (e.size_before_bytes, e.size_after_bytes) {
            (Some(a), Some(b)) if a != b => format!("  ({} → {})", human_bytes(a), human_bytes(b)),
            _ if !e.metadata.is_empty() => format!("  ({})", e.metadata.join(", ")),
            _ => String::new(),
        };
        ctx.say(format!("{mark}    {}{detail}", e.path));
    }
    ctx.say(format!(
        "{} → {}: {} added ({}), {} removed ({}), {} changed, {} metadata only{}",
        &d.from_point_id[..8],
        &d.to_point_id[..8],
        d.added,
        human_bytes(d.added_bytes),
        d.removed,
        human_bytes(d.removed_bytes),
        d.changed,
        d.metadata_only,
        if d.content_compared {
            ""
        } else {
            " (different chains: content compared by size and modification time)"
        }
    ));
    Ok(0)
}

pub async fn stats(ctx: &Ctx, name: &str, repo: Option<&std::path::Path>) -> Result<i32> {
    let st = crate::ops::inspect::stats(ctx, name, repo).await?;
    if ctx.json {
        crate::ui::print_json(&st);
        return Ok(0);
    }
    ctx.say(format!(
        "{:<10} {:<28} {:<10} {:>8} {:>11} {:>11} {:>11}",
        "POINT", "TIME", "KIND", "FILES", "SIZE", "NEW", "STORED"
    ));
    for p in &st.points {
        ctx.say(format!(
            "{:<10} {:<28} {:<10} {:>8} {:>11} {:>11} {:>11}",
            &p.point_id[..8],
            p.time,
            p.kind.as_deref().unwrap_or("-"),
            p.files,
            human_bytes(p.total_bytes),
            human_bytes(p.new_bytes),
            human_bytes(p.stored_bytes)
        ));
    }
    ctx.say(format!(
        "job '{name}': {} point(s) hold {} of source data; {} unique after deduplication ({} chunks), {} stored: {:.1}x",
        st.points.len(),
        human_bytes(st.total_bytes),
        human_bytes(st.unique_bytes),
        st.unique_chunks,
        human_bytes(st.stored_bytes),
        st.ratio
    ));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("docs/*.txt", "docs/readme.txt"));
        assert!(glob_match("*.txt", "a/b/c.txt"));
        assert!(glob_match("f?le", "file"));
        assert!(!glob_match("*.txt", "a/b/c.txt.bak"));
        assert!(!glob_match("docs/*", "src/docs/x"));
        assert!(glob_match("*", ""));
    }
}
