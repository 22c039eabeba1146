//! `arca backup`.

use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::*;
use crate::error::exit;
use crate::ops::backup::{BackupRun, JobSource};
use crate::repo::format::SourceError;
use crate::ui::human_bytes;

/// zstd level of `backup` unless `--compression` says otherwise.
pub const DEFAULT_COMPRESSION: i32 = 1;

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
    /// zstd level (1-19); higher is smaller and slower. Each level runs with zstd's own
    /// parameters for it, so the default, 1, writes what `zstd -1` writes.
    #[arg(long, default_value_t = DEFAULT_COMPRESSION, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression: i32,
    /// Excludes for this run, added to the job's (`arca job show` lists those).
    #[command(flatten)]
    pub filters: super::filters::FilterArgs,
}

/// Progress while a backup runs: on a terminal, the bar gets the pre-scan's totals (bytes
/// done/total, rate, ETA), files done/total and the current file; under `--json`, one
/// NDJSON status line per second on stdout (`message_type: "status"`, docs/json.md).
/// The reporter stops as soon as `done` is dropped (not at its next tick: a backup waited
/// for it, 50 ms on average).
fn report_progress(
    json: bool,
    bar: indicatif::ProgressBar,
    st: std::sync::Arc<crate::engine::backup::Status>,
    done: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc::RecvTimeoutError;
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut styled = false;
        let mut last_json = Instant::now();
        while let Err(RecvTimeoutError::Timeout) =
            done.recv_timeout(std::time::Duration::from_millis(100))
        {
            let (files, bytes) = (st.files_done.load(Relaxed), st.bytes_done.load(Relaxed));
            let (tf, tb) = (st.total_files.load(Relaxed), st.total_bytes.load(Relaxed));
            let scanned = st.scanned.load(Relaxed);
            let current = st.current.lock().map(|c| c.clone()).unwrap_or_default();
            if json {
                if last_json.elapsed().as_secs_f64() < 1.0 {
                    continue;
                }
                last_json = Instant::now();
                let secs = t0.elapsed().as_secs_f64();
                let remaining = (scanned && bytes > 0 && tb >= bytes)
                    .then(|| ((tb - bytes) as f64 * secs / bytes as f64).round() as u64);
                crate::ui::out(
                    &serde_json::json!({
                        "message_type": "status",
                        "seconds_elapsed": secs.round() as u64,
                        "seconds_remaining": remaining,
                        "percent_done": if scanned && tb > 0 { (bytes as f64 / tb as f64).min(1.0) } else { 0.0 },
                        "total_files": tf, "files_done": files,
                        "total_bytes": tb, "done_bytes": bytes,
                        "scan_finished": scanned,
                        "current_files": if current.is_empty() { vec![] } else { vec![current] },
                    })
                    .to_string(),
                );
            } else if !bar.is_hidden() {
                if scanned && !styled {
                    bar.set_length(tb.max(bar.position()));
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "[{bar:25}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                        )
                        .expect("template")
                        .progress_chars("=> "),
                    );
                    styled = true;
                }
                let total = if scanned {
                    tf.to_string()
                } else {
                    format!("{tf}+")
                };
                bar.set_message(format!("{files}/{total} files {current}"));
            }
        }
    })
}

#[derive(Serialize)]
struct Summary<'a> {
    /// "summary": the last line after the status lines of `--json`.
    message_type: &'static str,
    job: &'a str,
    point_id: String,
    chain_id: String,
    time: &'a str,
    full: bool,
    /// Why the run was a full backup (absent for an incremental).
    #[serde(skip_serializing_if = "Option::is_none")]
    full_reason: Option<&'static str>,
    /// How the keys were resolved (the resolver's tier): catalog, key, kms, kmip, passphrase, none.
    tier: &'a str,
    files: u64,
    dirs: u64,
    symlinks: u64,
    files_unchanged: u64,
    /// Entries the excludes left out.
    excluded: u64,
    total_bytes: u64,
    read_bytes: u64,
    new_bytes: u64,
    stored_bytes: u64,
    chunks_new: u64,
    /// Chunks holding several small files this run made, new or not.
    bundles: u64,
    seconds: f64,
    /// KMS requests this run made (retries included).
    kms_requests: u64,
    /// S3 requests this run made (S3 repositories only).
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_requests: Option<crate::repo::store::StoreStats>,
    errors: &'a [SourceError],
    /// Entries deliberately not backed up (sockets, ...), with the reason.
    skipped: &'a [SourceError],
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
    let status = std::sync::Arc::new(crate::engine::backup::Status {
        totals: ctx.json || !progress.is_hidden(),
        ..Default::default()
    });
    let (done, stop) = std::sync::mpsc::channel();
    // Nothing to report under -q without --json (or with stderr not a terminal).
    let reporter = status
        .totals
        .then(|| report_progress(ctx.json, progress.clone(), status.clone(), stop));
    let run = crate::ops::backup::backup_job(
        ctx,
        &a.name,
        source,
        a.compression,
        &a.filters.filters(),
        progress.clone(),
        status,
    )
    .await;
    drop(done);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    progress.finish_and_clear();
    let BackupRun {
        outcome: out,
        tier,
        full_reason,
    } = run?;
    let s = &out.body.stats;
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        crate::ui::out(
            &serde_json::to_string(&Summary {
                message_type: "summary",
                job: &a.name,
                point_id: out.record.point_id.hex(),
                chain_id: out.record.chain_id.hex(),
                time: &out.record.time,
                full: out.full,
                full_reason,
                tier,
                files: s.files,
                dirs: s.dirs,
                symlinks: s.symlinks,
                files_unchanged: s.files_unchanged,
                excluded: s.excluded,
                total_bytes: s.bytes_total,
                read_bytes: s.bytes_read,
                new_bytes: s.bytes_new,
                stored_bytes: s.bytes_stored,
                chunks_new: s.chunks_new,
                bundles: s.bundles,
                seconds: secs,
                kms_requests: crate::keys::aws_kms::process_requests(),
                s3_requests: crate::repo::store::s3::requests_made(),
                errors: &out.body.errors,
                skipped: &out.body.skipped,
            })
            .expect("summary serializes"),
        );
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
        if s.excluded > 0 {
            ctx.say(format!("  {} entries left out by excludes", s.excluded));
        }
    }
    if !out.body.skipped.is_empty() && !ctx.json {
        eprintln!("note: {} item(s) not backed up:", out.body.skipped.len());
        for e in &out.body.skipped {
            eprintln!("  {}: {}", e.path, e.error);
        }
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
