//! `arca forget` and `arca prune`: parse, call [`crate::ops::retention`], print.

use std::path::PathBuf;

use clap::Args;

use super::*;
use crate::engine::prune::{PruneLimits, PruneStats};
use crate::ops::retention::{self, ForgetReport, Policy, PruneReport};
use crate::ui::human_bytes;

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// The job's name.
    pub name: String,
    /// Recovery points to forget (ids or unique prefixes), whatever the policy; a damaged
    /// point is forgotten this way.
    pub points: Vec<String>,
    /// Keep the N newest points.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest point of each of the last N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest point of each of the last N days that have one (UTC days).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest point of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest point of each of the last N months that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest point of each of the last N years that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every point made within this long of the newest point of its series
    /// (`2d`, `1w 3d`, `36h`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Only this stream series (`--stdin-name` of its backups), or `tree`.
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// Say what would be forgotten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune right after (reclaims the space of the forgotten points).
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Args, Debug)]
pub struct LimitArgs {
    /// Unused space tolerated in partly used packs, in percent of the used space; packs
    /// with the most unused space are repacked first until the rest is within this.
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0)]
    pub max_unused: f64,
    /// Rewrite at most this percentage of the repository's pack bytes in one run.
    #[arg(long, value_name = "PERCENT", default_value_t = 100.0)]
    pub max_repack: f64,
}

impl LimitArgs {
    fn limits(&self) -> Result<PruneLimits> {
        for (n, v) in [
            ("--max-unused", self.max_unused),
            ("--max-repack", self.max_repack),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(Error::Usage(format!("{n} must be a percentage (0 to 100)")));
            }
        }
        Ok(PruneLimits {
            max_unused_percent: self.max_unused,
            max_repack_percent: self.max_repack,
        })
    }
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// The job whose forgotten data to reclaim (leftovers of interrupted backups go too,
    /// whatever job wrote them). Without it, every job of --repo.
    pub name: Option<String>,
    /// The repository (every job in it whose keys resolve).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Say what would be removed and repacked; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

pub async fn forget(ctx: &Ctx, a: ForgetArgs) -> Result<i32> {
    let req = retention::ForgetRequest {
        policy: Policy {
            last: a.keep_last,
            hourly: a.keep_hourly,
            daily: a.keep_daily,
            weekly: a.keep_weekly,
            monthly: a.keep_monthly,
            yearly: a.keep_yearly,
            within: a.keep_within,
        },
        points: a.points.clone(),
        series: a.stream.clone(),
        dry_run: a.dry_run,
        prune: if a.prune {
            Some(a.limits.limits()?)
        } else {
            None
        },
    };
    let r = retention::forget(ctx, &a.name, req).await?;
    if ctx.json {
        crate::ui::print_json(&r);
        return Ok(0);
    }
    print_forget(ctx, &r);
    if let Some(p) = &r.prune {
        print_prune(ctx, p);
    }
    Ok(0)
}

fn print_forget(ctx: &Ctx, r: &ForgetReport) {
    let verb = if r.dry_run { "would keep" } else { "kept" };
    ctx.say(format!("{verb} {} point(s):", r.kept.len()));
    for v in &r.kept {
        ctx.say(format!(
            "  {}  {}  {:<16} {}",
            &v.point_id[..8],
            v.time,
            v.series,
            v.reasons.join(", ")
        ));
    }
    let verb = if r.dry_run { "would forget" } else { "forgot" };
    ctx.say(format!("{verb} {} point(s):", r.removed.len()));
    for v in &r.removed {
        ctx.say(format!(
            "  {}  {}  {:<16} {}",
            &v.point_id[..8],
            v.time,
            v.series,
            v.reasons.join(", ")
        ));
    }
    if let Some(e) = &r.locks_extended {
        ctx.say(format!(
            "S3 Object Lock: retention extended for {} of the {} objects the kept points need{}",
            e.objects_extended,
            e.objects_checked,
            e.until
                .as_deref()
                .map(|t| format!(" (until {t})"))
                .unwrap_or_default()
        ));
    }
    if !r.dry_run && !r.removed.is_empty() && r.prune.is_none() {
        ctx.say(format!(
            "their space is reclaimed by `arca prune {}`",
            r.job
        ));
    }
}

fn print_prune(ctx: &Ctx, r: &PruneReport) {
    for p in &r.problems {
        ctx.note(format!("note: {p}"));
    }
    let Some(s) = &r.stats else { return };
    let PruneStats {
        packs_total,
        total_bytes,
        leftover_packs,
        leftover_bytes,
        leftover_indexes,
        stale_packs,
        stale_bytes,
        forgotten_points_removed,
        forgotten_packs_removed,
        forgotten_bytes_removed,
        packs_repacked,
        repacked_bytes_before,
        repacked_bytes_after,
        unused_bytes_kept,
        reclaimed_bytes,
        total_bytes_after,
        locked_objects,
        locked_until,
    } = s;
    let would = if r.dry_run { "would " } else { "" };
    ctx.say(format!(
        "repository: {packs_total} packs, {}",
        human_bytes(*total_bytes)
    ));
    ctx.say(format!(
        "  leftovers of interrupted backups: {leftover_packs} packs ({}), {leftover_indexes} index files",
        human_bytes(*leftover_bytes)
    ));
    if *stale_packs > 0 {
        ctx.say(format!(
            "  packs of an interrupted prune: {stale_packs} ({})",
            human_bytes(*stale_bytes)
        ));
    }
    ctx.say(format!(
        "  forgotten points no longer needed: {forgotten_points_removed} ({forgotten_packs_removed} packs, {})",
        human_bytes(*forgotten_bytes_removed)
    ));
    ctx.say(format!(
        "  partly used packs {}repacked: {packs_repacked} ({} -> {})",
        if r.dry_run { "to be " } else { "" },
        human_bytes(*repacked_bytes_before),
        human_bytes(*repacked_bytes_after)
    ));
    if let (true, Some(t)) = (*locked_objects > 0, locked_until) {
        ctx.say(format!(
            "  retained by S3 Object Lock, left in place: {locked_objects} objects (removable after {t})"
        ));
    }
    if *unused_bytes_kept > 0 {
        ctx.say(format!(
            "  unused space left in place (within --max-unused/--max-repack): {}",
            human_bytes(*unused_bytes_kept)
        ));
    }
    ctx.say(format!(
        "{would}reclaim {}; repository {}after: {}",
        human_bytes(*reclaimed_bytes),
        if r.dry_run { "would be " } else { "" },
        human_bytes(*total_bytes_after)
    ));
}

pub async fn prune(ctx: &Ctx, a: PruneArgs) -> Result<i32> {
    let r = retention::prune(
        ctx,
        a.name.as_deref(),
        a.repo.as_deref(),
        a.limits.limits()?,
        a.dry_run,
    )
    .await?;
    if ctx.json {
        crate::ui::print_json(&r);
    } else {
        print_prune(ctx, &r);
    }
    Ok(0)
}
