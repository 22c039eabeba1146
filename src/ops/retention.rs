//! Retention: `arca forget` (which points to keep, by restic's policy rules) and
//! `arca prune` (reclaiming what no kept point uses).
//!
//! Forgetting a point rewrites its record as *forgotten* (FORMAT.md §5.4): the record keeps
//! only its wrapped data key, because later points may share chunks it wrote; its body (the
//! file list) is dropped. `prune` then removes forgotten points whose chunks nothing uses,
//! repacks the partly used ones, and removes leftovers of interrupted backups.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use super::{job_points, locate_job, open_chain, trusted_chains, JobHandle, Session};
use crate::catalog::Catalog;
use crate::engine::backup::CHECKPOINT;
use crate::engine::prune::{self, ChainInput, PruneLimits, PruneStats};
use crate::engine::{chain_points, open_point, OpenChain};
use crate::error::{Error, Result};
use crate::fault;
use crate::repo::format::{Id16, PointRecord};
use crate::repo::{now_rfc3339, Repository};

/// restic's `forget` policy: how many of the newest points to keep per rule, and a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep every point made within this long of the newest point of its series.
    pub within: Option<Duration>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
    }
}

/// The verdict on one point: kept (with every rule that kept it) or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Applies `policy` to the times (nanoseconds since the epoch, UTC) of one series of
/// points, as restic does: from the newest point down, each rule keeps a point when the
/// point falls into another period (hour, day, ISO week, month, year) than the last point
/// that rule kept, until the rule has kept its count. Periods are UTC. Returns one verdict
/// per input, in input order.
pub fn apply_policy(policy: &Policy, times: &[i128]) -> Vec<Verdict> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|a, b| times[*b].cmp(&times[*a]).then(b.cmp(a)));
    let newest = order.first().map(|i| times[*i]);
    type Bucket = fn(&time::OffsetDateTime, usize) -> i64;
    let rules: [(&str, u32, Bucket); 6] = [
        ("last", policy.last, |_, i| i as i64),
        ("hourly", policy.hourly, |t, _| {
            (t.unix_timestamp()).div_euclid(3600)
        }),
        ("daily", policy.daily, |t, _| {
            (t.unix_timestamp()).div_euclid(86400)
        }),
        ("weekly", policy.weekly, |t, _| {
            let (y, w, _) = t.to_iso_week_date();
            y as i64 * 100 + w as i64
        }),
        ("monthly", policy.monthly, |t, _| {
            t.year() as i64 * 100 + t.month() as i64
        }),
        ("yearly", policy.yearly, |t, _| t.year() as i64),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
    let mut out = vec![
        Verdict {
            keep: false,
            reasons: Vec::new()
        };
        times.len()
    ];
    for i in order {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(times[i])
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        for (r, (name, _, bucket)) in rules.iter().enumerate() {
            if left[r] == 0 {
                continue;
            }
            let b = bucket(&t, i);
            if last_bucket[r] != Some(b) {
                last_bucket[r] = Some(b);
                left[r] -= 1;
                out[i].keep = true;
                out[i]
                    .reasons
                    .push(format!("{name} {}", n_th(rules[r].1 - left[r])));
            }
        }
        if let (Some(w), Some(n)) = (policy.within, newest) {
            if times[i] >= n - w.as_nanos() as i128 {
                out[i].keep = true;
                out[i].reasons.push(format!(
                    "within {} of the newest",
                    humantime::format_duration(w)
                ));
            }
        }
    }
    out
}

fn n_th(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, x) if x != 11 => "st",
        (2, x) if x != 12 => "nd",
        (3, x) if x != 13 => "rd",
        _ => "th",
    };
    format!("({n}{suffix})")
}

/// What to forget.
#[derive(Clone, Debug, Default)]
pub struct ForgetRequest {
    pub policy: Policy,
    /// Points named explicitly (ids or unique prefixes), forgotten whatever the policy.
    pub points: Vec<String>,
    /// Only this stream series (`--stream NAME`), or only the tree (`--stream ''` is not
    /// allowed; None: every series).
    pub series: Option<String>,
    pub dry_run: bool,
    /// Prune right after, with these limits.
    pub prune: Option<PruneLimits>,
}

/// One point and what forget decided.
#[derive(Clone, Debug, Serialize)]
pub struct PointVerdict {
    pub point_id: String,
    pub time: String,
    /// `tree`, or `stream:NAME` for points of `backup --stdin --stdin-name NAME`.
    pub series: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ForgetReport {
    pub job: String,
    pub dry_run: bool,
    pub kept: Vec<PointVerdict>,
    pub removed: Vec<PointVerdict>,
    pub prune: Option<PruneReport>,
    /// S3 Object Lock: retention extended for what the kept points need.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locks_extended: Option<crate::engine::immutability::LockExtension>,
}

/// The series a point belongs to: `tree` (tree backups and their checkpoints) or
/// `stream:NAME`.
pub fn series_of(kind: &str, source: &str) -> String {
    if kind == "stdin" {
        format!(
            "stream:{}",
            source.strip_prefix("stdin as ").unwrap_or(source)
        )
    } else {
        "tree".into()
    }
}

/// Opens every chain in `chains` (keys resolved as for a restore).
async fn open_chains(
    s: &Session,
    cat: &Catalog,
    h: &JobHandle,
    chains: &[Id16],
) -> Result<HashMap<Id16, OpenChain>> {
    let mut out = HashMap::new();
    for c in chains {
        let (oc, _) = open_chain(s, cat, h, c, None, false).await?;
        out.insert(*c, oc);
    }
    Ok(out)
}

/// Chains of the job that hold any record (kept or forgotten).
fn chains_with_records(cat: &Catalog, h: &JobHandle) -> Result<Vec<Id16>> {
    let trusted = trusted_chains(cat, h)?;
    let mut v: Vec<Id16> = h
        .repo
        .list_points(&h.job.job_id)?
        .iter()
        .map(|p| p.chain_id)
        .filter(|c| trusted.contains(c))
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// `arca forget NAME`: decides by the policy (per series) and the named points, then marks
/// the removed points forgotten (or, with `dry_run`, only says what it would do).
pub async fn forget(s: &Session, name: &str, req: ForgetRequest) -> Result<ForgetReport> {
    if req.policy.is_empty() && req.points.is_empty() {
        return Err(Error::Usage(
            "forget needs a policy (--keep-last, --keep-daily, ..., --keep-within) or the points to \
             forget; nothing was removed"
                .into(),
        ));
    }
    let cat = s.catalog()?;
    let h = locate_job(&cat, name, None)?;
    if h.repo.version() < 2 {
        return Err(Error::Usage(format!(
            "repository {} is in format version 1; `arca migrate --repo {}` first",
            h.repo.root().display(),
            h.repo.root().display()
        )));
    }
    crate::signals::install();
    let _lock = (!req.dry_run)
        .then(|| super::lifecycle::lock_waiting(s, &h.repo))
        .transpose()?;
    let (recs, _) = job_points(&cat, &h)?;
    let chains = chains_with_records(&cat, &h)?;
    let open = open_chains(s, &cat, &h, &chains).await?;

    // Named points: any record of the job (a damaged or planted one too).
    let all = h.repo.list_points(&h.job.job_id)?;
    let mut named: Vec<Id16> = Vec::new();
    for sel in &req.points {
        let sel_l = sel.to_ascii_lowercase();
        let m: Vec<&PointRecord> = all
            .iter()
            .filter(|p| !p.is_forgotten() && p.point_id.hex().starts_with(&sel_l))
            .collect();
        match m.len() {
            0 => {
                return Err(Error::NotFound(format!(
                    "job '{name}' has no recovery point {sel}; `arca points {name}` lists them"
                )))
            }
            1 => named.push(m[0].point_id),
            n => {
                return Err(Error::Usage(format!(
                    "{n} recovery points of job '{name}' start with {sel}; give more digits"
                )))
            }
        }
    }

    // Each intact point's series; damaged points are only removed when named.
    let mut verdicts: Vec<(PointRecord, PointVerdict)> = Vec::new();
    let mut series: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for p in &recs {
        let body = open
            .get(&p.chain_id)
            .ok_or_else(|| Error::Other(format!("chain {} not opened", p.chain_id)))
            .and_then(|oc| open_point(oc, p).map(|(_, b)| b));
        let (ser, intact, kind) = match &body {
            Ok(b) => (series_of(&b.kind, &b.source), true, b.kind.clone()),
            Err(_) => ("damaged".to_string(), false, String::new()),
        };
        let i = verdicts.len();
        verdicts.push((
            p.clone(),
            PointVerdict {
                point_id: p.point_id.hex(),
                time: p.time.clone(),
                series: ser.clone(),
                keep: true,
                reasons: Vec::new(),
            },
        ));
        if !intact {
            verdicts[i].1.reasons.push(match &body {
                Err(e) => format!("damaged ({e}); name it to forget it"),
                Ok(_) => unreachable!(),
            });
            continue;
        }
        if req.series.as_deref().is_some_and(|want| {
            ser != format!("stream:{want}") && !(want == "tree" && ser == "tree")
        }) {
            verdicts[i]
                .1
                .reasons
                .push("another series than the one given".into());
            continue;
        }
        if kind == CHECKPOINT {
            verdicts[i].1.series = "tree".into();
        }
        series.entry(ser).or_default().push(i);
    }
    if !req.policy.is_empty() {
        for (ser, idxs) in &series {
            // Checkpoints are never subject to the policy: one older than a complete point of
            // its series is superseded; a newer one is kept.
            let newest_complete = idxs
                .iter()
                .filter(|i| verdicts[**i].0.source_kind.as_deref() != Some(CHECKPOINT))
                .filter_map(|i| verdicts[*i].0.time_ns())
                .max();
            let mut normal = Vec::new();
            for i in idxs {
                let v = &mut verdicts[*i];
                if v.0.source_kind.as_deref() == Some(CHECKPOINT) {
                    if newest_complete.is_some_and(|n| v.0.time_ns().unwrap_or(0) < n) {
                        v.1.keep = false;
                        v.1.reasons
                            .push("checkpoint superseded by a complete backup".into());
                    } else {
                        v.1.reasons
                            .push("checkpoint newer than any complete backup".into());
                    }
                } else {
                    normal.push(*i);
                }
            }
            let times: Vec<i128> = normal
                .iter()
                .map(|i| verdicts[*i].0.time_ns().unwrap_or(0))
                .collect();
            for (i, v) in normal.iter().zip(apply_policy(&req.policy, &times)) {
                let pv = &mut verdicts[*i].1;
                pv.keep = v.keep;
                pv.reasons = if v.keep {
                    v.reasons
                } else {
                    vec![format!("no rule of the policy keeps it ({ser})")]
                };
            }
        }
    }
    for (p, v) in verdicts.iter_mut() {
        if named.contains(&p.point_id) {
            v.keep = false;
            v.reasons = vec!["named on the command line".into()];
        }
    }
    // Named records that are not the job's points (planted, or in an untrusted chain).
    let mut extra: Vec<PointRecord> = Vec::new();
    for id in &named {
        if !verdicts.iter().any(|(p, _)| p.point_id == *id) {
            if let Some(p) = all.iter().find(|p| p.point_id == *id) {
                extra.push(p.clone());
            }
        }
    }
    let mut report = ForgetReport {
        job: name.to_string(),
        dry_run: req.dry_run,
        kept: Vec::new(),
        removed: Vec::new(),
        prune: None,
        locks_extended: None,
    };
    let mut remove: Vec<PointRecord> = Vec::new();
    let mut kept_records: Vec<PointRecord> = Vec::new();
    for (p, v) in verdicts {
        if v.keep {
            kept_records.push(p);
            report.kept.push(v);
        } else {
            remove.push(p);
            report.removed.push(v);
        }
    }
    for p in extra {
        report.removed.push(PointVerdict {
            point_id: p.point_id.hex(),
            time: p.time.clone(),
            series: "not a point of this job".into(),
            keep: false,
            reasons: vec!["named on the command line".into()],
        });
        remove.push(p);
    }
    if req.dry_run {
        if req.prune.is_some() {
            report.prune = Some(PruneReport {
                dry_run: true,
                stats: None,
                problems: vec![
                    "prune is estimated only after the points are forgotten; run `arca prune --dry-run` afterwards"
                        .into(),
                ],
            });
        }
        return Ok(report);
    }
    let when = now_rfc3339();
    let mut gone = Vec::new();
    for p in &remove {
        // A point whose data key still opens keeps its record as "forgotten" (later points
        // may share its chunks); one whose key does not open holds nothing readable.
        let dk = open.get(&p.chain_id).and_then(|oc| oc.data_key(p).ok());
        match dk {
            Some(dk) => {
                let mut f = p.clone();
                f.forgotten = Some(when.clone());
                f.body = Vec::new();
                f.seal(&dk);
                h.repo.write_point(&f)?;
            }
            None => h.repo.delete_point_file(&p.point_id)?,
        }
        fault::wrote("forget: point record");
        gone.push(p.point_id);
    }
    if h.row.is_some() {
        cat.mark_forgotten(&h.job.job_id, &gone, &when)?;
        let (left, _) = job_points(&cat, &h)?;
        let latest = left
            .iter()
            .rev()
            .find(|p| p.source_kind.as_deref() != Some(CHECKPOINT))
            .map(|p| p.point_id);
        cat.set_latest_point_opt(name, latest.as_ref())?;
    }
    if h.repo.config.object_lock.is_some() {
        let mut ext = crate::engine::immutability::LockExtension::default();
        for (chain, oc) in &open {
            let kept: Vec<PointRecord> = kept_records
                .iter()
                .filter(|p| p.chain_id == *chain)
                .cloned()
                .collect();
            if kept.is_empty() {
                continue;
            }
            let chain_points: Vec<PointRecord> = h
                .repo
                .list_points(&h.job.job_id)?
                .into_iter()
                .filter(|p| p.chain_id == *chain)
                .collect();
            let e = crate::engine::immutability::extend_locks(&h.repo, oc, &chain_points, &kept)?;
            ext.objects_checked += e.objects_checked;
            ext.objects_extended += e.objects_extended;
            ext.until = e.until.or(ext.until);
        }
        report.locks_extended = Some(ext);
    }
    drop(open);
    if let Some(limits) = req.prune {
        report.prune = Some(prune_locked(s, &cat, &[h], limits, false).await?);
    }
    Ok(report)
}

/// What `arca prune` found and did.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub stats: Option<PruneStats>,
    /// What prune left alone, and why.
    pub problems: Vec<String>,
}

/// `arca prune`: for job `name`, or (with `repo` and no name) every job of the repository
/// this catalog can open.
pub async fn prune(
    s: &Session,
    name: Option<&str>,
    repo: Option<&std::path::Path>,
    limits: PruneLimits,
    dry_run: bool,
) -> Result<PruneReport> {
    let cat = s.catalog()?;
    let handles: Vec<JobHandle> = match (name, repo) {
        (Some(n), r) => vec![locate_job(&cat, n, r)?],
        (None, Some(dir)) => {
            let r = Repository::open(dir)?;
            let mut v = Vec::new();
            for j in r.list_jobs()? {
                v.push(locate_job(&cat, &j.name, Some(dir))?);
            }
            if v.is_empty() {
                return Err(Error::NotFound(format!(
                    "repository {} has no jobs",
                    dir.display()
                )));
            }
            v
        }
        (None, None) => return Err(Error::Usage("prune needs a job name or --repo DIR".into())),
    };
    crate::signals::install();
    let _lock = (!dry_run)
        .then(|| super::lifecycle::lock_waiting(s, &handles[0].repo))
        .transpose()?;
    prune_locked(s, &cat, &handles, limits, dry_run).await
}

/// Prune with the repository lock held (or for a dry run).
async fn prune_locked(
    s: &Session,
    cat: &Catalog,
    handles: &[JobHandle],
    limits: PruneLimits,
    dry_run: bool,
) -> Result<PruneReport> {
    let repo = &handles[0].repo;
    let mut ocs: Vec<(OpenChain, Vec<PointRecord>)> = Vec::new();
    let mut problems = Vec::new();
    for h in handles {
        for c in chains_with_records(cat, h)? {
            let oc = match open_chain(s, cat, h, &c, None, false).await {
                Ok((oc, _)) => oc,
                // Repository-wide, a job whose keys are not at hand is left alone (its
                // points' packs are not leftovers); for one named job it is an error.
                Err(e) if handles.len() > 1 => {
                    problems.push(format!(
                        "job '{}': its keys did not resolve ({e}); nothing of it is pruned",
                        h.job.name
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let recs = chain_points(repo, &h.job.job_id, &c)?;
            ocs.push((oc, recs));
        }
    }
    if !dry_run {
        repo.clean_tmp(Duration::ZERO)?;
    }
    let inputs: Vec<ChainInput<'_>> = ocs
        .iter()
        .map(|(oc, recs)| ChainInput {
            oc,
            records: recs.clone(),
        })
        .collect();
    let mut plan = prune::plan(repo, &inputs, limits)?;
    plan.hold_locked(repo)?;
    problems.extend(plan.problems.iter().cloned());
    let stats = if dry_run {
        plan.estimate()
    } else {
        plan.execute(repo, &|m| s.note(m))?
    };
    Ok(PruneReport {
        dry_run,
        stats: Some(stats),
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> i128 {
        humantime::parse_rfc3339(s)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128
    }

    /// The times kept by `policy` out of `times`, as the input strings.
    fn kept<'a>(policy: &Policy, times: &[&'a str]) -> Vec<&'a str> {
        let ns: Vec<i128> = times.iter().map(|s| t(s)).collect();
        apply_policy(policy, &ns)
            .iter()
            .zip(times)
            .filter(|(v, _)| v.keep)
            .map(|(_, s)| *s)
            .collect()
    }

    const TABLE: &[&str] = &[
        "2024-12-31T23:00:00Z",
        "2025-06-30T12:00:00Z",
        "2025-12-31T22:00:00Z",
        "2026-01-01T09:00:00Z",
        "2026-01-03T10:00:00Z", // Saturday, ISO week 2026-W01
        "2026-01-04T08:00:00Z", // Sunday, W01
        "2026-01-04T20:00:00Z", // Sunday evening, W01
        "2026-01-05T01:00:00Z", // Monday, W02
        "2026-01-05T01:30:00Z", // same hour
        "2026-01-05T02:10:00Z",
        "2026-01-05T03:00:00Z",
    ];

    #[test]
    fn keep_last() {
        let p = Policy {
            last: 3,
            ..Default::default()
        };
        assert_eq!(
            kept(&p, TABLE),
            [
                "2026-01-05T01:30:00Z",
                "2026-01-05T02:10:00Z",
                "2026-01-05T03:00:00Z"
            ]
        );
    }

    #[test]
    fn keep_hourly_takes_the_newest_of_each_hour() {
        let p = Policy {
            hourly: 3,
            ..Default::default()
        };
        assert_eq!(
            kept(&p, TABLE),
            [
                "2026-01-05T01:30:00Z",
                "2026-01-05T02:10:00Z",
                "2026-01-05T03:00:00Z"
            ]
        );
        let p = Policy {
            hourly: 4,
            ..Default::default()
        };
        // The fourth hour with a point is Sunday 20:00, not 01:00 again.
        assert!(kept(&p, TABLE).contains(&"2026-01-04T20:00:00Z"));
        assert!(!kept(&p, TABLE).contains(&"2026-01-05T01:00:00Z"));
    }

    #[test]
    fn keep_daily_and_weekly_use_utc_days_and_iso_weeks() {
        let p = Policy {
            daily: 3,
            ..Default::default()
        };
        assert_eq!(
            kept(&p, TABLE),
            [
                "2026-01-03T10:00:00Z",
                "2026-01-04T20:00:00Z",
                "2026-01-05T03:00:00Z"
            ]
        );
        let p = Policy {
            weekly: 3,
            ..Default::default()
        };
        // W02 (Monday), W01 (its newest: Sunday evening), then 2025-W27 (June 30th is a
        // Monday); 2025-12-31 and 2026-01-01 lie in 2026-W01 too.
        assert_eq!(
            kept(&p, TABLE),
            [
                "2025-06-30T12:00:00Z",
                "2026-01-04T20:00:00Z",
                "2026-01-05T03:00:00Z"
            ]
        );
    }

    #[test]
    fn keep_monthly_and_yearly() {
        let p = Policy {
            monthly: 3,
            ..Default::default()
        };
        assert_eq!(
            kept(&p, TABLE),
            [
                "2025-06-30T12:00:00Z",
                "2025-12-31T22:00:00Z",
                "2026-01-05T03:00:00Z"
            ]
        );
        let p = Policy {
            yearly: 5,
            ..Default::default()
        };
        assert_eq!(
            kept(&p, TABLE),
            [
                "2024-12-31T23:00:00Z",
                "2025-12-31T22:00:00Z",
                "2026-01-05T03:00:00Z"
            ]
        );
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_point() {
        let p = Policy {
            within: Some(Duration::from_secs(26 * 3600)),
            ..Default::default()
        };
        assert_eq!(
            kept(&p, TABLE),
            [
                "2026-01-04T08:00:00Z",
                "2026-01-04T20:00:00Z",
                "2026-01-05T01:00:00Z",
                "2026-01-05T01:30:00Z",
                "2026-01-05T02:10:00Z",
                "2026-01-05T03:00:00Z"
            ]
        );
    }

    #[test]
    fn rules_combine_and_every_reason_is_given() {
        let p = Policy {
            last: 1,
            daily: 2,
            yearly: 1,
            ..Default::default()
        };
        let ns: Vec<i128> = TABLE.iter().map(|s| t(s)).collect();
        let v = apply_policy(&p, &ns);
        let newest = v.last().unwrap();
        assert!(newest.keep);
        assert_eq!(
            newest.reasons,
            ["last (1st)", "daily (1st)", "yearly (1st)"]
        );
        assert_eq!(v[6].reasons, ["daily (2nd)"]);
        assert_eq!(v.iter().filter(|v| v.keep).count(), 2);
        // Input order does not matter.
        let mut rev = ns.clone();
        rev.reverse();
        let v2 = apply_policy(&p, &rev);
        assert_eq!(v2.first().unwrap().reasons, newest.reasons);
    }

    #[test]
    fn an_empty_policy_keeps_nothing_and_says_so() {
        assert!(Policy::default().is_empty());
        let v = apply_policy(&Policy::default(), &[t(TABLE[0])]);
        assert!(!v[0].keep);
    }
}
