//! `arca backup`.

use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::*;
use crate::error::exit;
use crate::ops::backup::{BackupRun, JobSource};
use crate::repo::format::SourceError;
use crate::ui::human_bytes;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The job's name.
    pub name: String,
    /// Back up standard input (e.g. a database dump) instead of the job's source.
    #[arg(long, requires = "stdin_name")]
    pub stdin: bool,
    /// The file name the stream gets in the recovery point.
    #[arg(long, value_name = "FILE")]
    pub stdin_name: Option<String>,
    /// zstd level (1-19); higher is smaller and slower.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression: i32,
}

#[derive(Serialize)]
struct Summary<'a> {
    job: &'a str,
    point_id: String,
    chain_id: String,
    time: &'a str,
    full: bool,
    /// Why the run was a full backup (absent for an incremental).
    #[serde(skip_serializing_if = "Option::is_none")]
    full_reason: Option<&'static str>,
    keys: &'a str,
    files: u64,
    dirs: u64,
    symlinks: u64,
    files_unchanged: u64,
    bytes_total: u64,
    bytes_read: u64,
    bytes_new: u64,
    bytes_stored: u64,
    chunks_new: u64,
    seconds: f64,
    /// KMS requests this run made (retries included).
    kms_requests: u64,
    errors: &'a [SourceError],
}

pub async fn run(ctx: &Ctx, a: BackupArgs) -> Result<i32> {
    let source = if a.stdin {
        JobSource::Stream {
            name: a.stdin_name.clone().expect("clap requires it"),
            reader: Box::new(std::io::stdin()),
        }
    } else {
        JobSource::Tree
    };
    let started = Instant::now();
    let progress = crate::ui::progress(None, ctx.quiet || ctx.json, &format!("backup {}", a.name));
    let run =
        crate::ops::backup::backup_job(ctx, &a.name, source, a.compression, progress.clone()).await;
    progress.finish_and_clear();
    let BackupRun {
        outcome: out,
        tier,
        full_reason,
    } = run?;
    let s = &out.body.stats;
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        crate::ui::print_json(&Summary {
            job: &a.name,
            point_id: out.record.point_id.hex(),
            chain_id: out.record.chain_id.hex(),
            time: &out.record.time,
            full: out.full,
            full_reason,
            keys: tier,
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            files_unchanged: s.files_unchanged,
            bytes_total: s.bytes_total,
            bytes_read: s.bytes_read,
            bytes_new: s.bytes_new,
            bytes_stored: s.bytes_stored,
            chunks_new: s.chunks_new,
            seconds: secs,
            kms_requests: crate::keys::aws_kms::process_requests(),
            errors: &out.body.errors,
        });
    } else {
        ctx.say(format!(
            "recovery point {} of job '{}' ({}{})\n  {} files, {} dirs, {} symlinks, {} ({} unchanged files not re-read)\n  read {}, new after dedup {}, stored {} in {:.1}s ({}/s)",
            out.record.point_id.short(),
            a.name,
            if out.full { "full backup" } else { "incremental" },
            if tier == "none" { ", NOT encrypted" } else { "" },
            s.files,
            s.dirs,
            s.symlinks,
            human_bytes(s.bytes_total),
            s.files_unchanged,
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_new),
            human_bytes(s.bytes_stored),
            secs,
            human_bytes((s.bytes_read as f64 / secs.max(1e-3)) as u64),
        ));
    }
    if !out.body.errors.is_empty() {
        eprintln!(
            "warning: {} source file(s) could not be read and are not in the recovery point:",
            out.body.errors.len()
        );
        for e in &out.body.errors {
            eprintln!("  {}: {}", e.path, e.error);
        }
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}
