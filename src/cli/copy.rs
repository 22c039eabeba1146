//! `arca copy`: parses and prints; the work is [`crate::ops::copy`].

use std::path::PathBuf;

use clap::Args;

use super::Ctx;
use crate::error::Result;
use crate::ops::copy::{self, CopyRequest, EncryptOn};
use crate::ui::human_bytes;

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The job whose recovery points to copy.
    pub name: String,
    /// The repository to copy into: a directory or s3://BUCKET/PREFIX. With
    /// --encrypt-on source it is a replica of the job's repository (created if missing).
    #[arg(long, value_name = "REPO")]
    pub to: PathBuf,
    /// Copy from this repository (a replica, say) instead of the one the catalog names.
    #[arg(long, value_name = "REPO")]
    pub repo: Option<PathBuf>,
    /// Points to copy (ids or prefixes, comma-separated) [default: every point not
    /// forgotten]. A point comes with the earlier points of its chain.
    #[arg(long, value_delimiter = ',', value_name = "ID")]
    pub points: Vec<String>,
    /// source: copy the ciphertext as it is (the target never sees plaintext or keys);
    /// target: re-encrypt under the keys of a job of the target repository.
    #[arg(long, value_enum, default_value = "source")]
    pub encrypt_on: EncryptOn,
    /// Read back everything written: compared with the source (source), or restored and
    /// authenticated with the target job's keys (target).
    #[arg(long)]
    pub verify: bool,
    /// With --encrypt-on target: the job of the target repository to copy into (created
    /// beforehand with its own encryption).
    #[arg(long, value_name = "NAME")]
    pub to_job: Option<String>,
}

pub async fn run(ctx: &Ctx, a: CopyArgs) -> Result<i32> {
    let r = copy::copy(
        ctx,
        &CopyRequest {
            name: &a.name,
            to: &a.to,
            from: a.repo.as_deref(),
            points: &a.points,
            encrypt_on: a.encrypt_on,
            verify: a.verify,
            to_job: a.to_job.as_deref(),
        },
    )
    .await?;
    if ctx.json {
        crate::ui::print_json(&r);
    } else {
        if r.target_created {
            ctx.say(format!(
                "created {} as a replica of the job's repository",
                r.to
            ));
        }
        ctx.say(format!(
            "copied job '{}' to {}: {} point(s) there now; {} object(s) written ({}), {} already present{}",
            r.job,
            r.to,
            r.points.len(),
            r.objects_copied,
            human_bytes(r.bytes_copied),
            r.objects_present,
            if a.verify {
                format!("; {} read back and verified", r.objects_verified)
            } else {
                String::new()
            }
        ));
    }
    Ok(0)
}
