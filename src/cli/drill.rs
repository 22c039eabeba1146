//! `arca drill`: a recovery drill. As after a reinstall, it ignores the catalog's stored
//! hashes and proves, for every recovery point, which key paths still recover its keys:
//! KMS (keyslots, escrow records), a raw key, and a passphrase given to the drill.
//! It writes nothing anywhere.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::*;
use crate::engine::open_point;
use crate::error::exit;
use crate::repo::format::PointRecord;
use crate::resolve::{Request, Tiers};

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// The job (its repository is found in the catalog); every job of --repo if omitted.
    pub name: Option<String>,
    /// The repository to drill, without using the catalog at all.
    #[arg(long)]
    pub repo: Option<PathBuf>,
}

#[derive(Serialize)]
struct PathResult {
    path: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct PointResult {
    job: String,
    point_id: String,
    time: String,
    recoverable: bool,
    paths: Vec<PathResult>,
}

const PATHS: [(&str, Tiers); 3] = [
    (
        "kms",
        Tiers {
            catalog: false,
            key: false,
            kms: true,
            passphrase: false,
        },
    ),
    (
        "key",
        Tiers {
            catalog: false,
            key: true,
            kms: false,
            passphrase: false,
        },
    ),
    (
        "passphrase",
        Tiers {
            catalog: false,
            key: false,
            kms: false,
            passphrase: true,
        },
    ),
];

async fn drill_point(
    ctx: &Ctx,
    repo: &Repository,
    job: &JobRecord,
    p: &PointRecord,
    allowed_kms: &[String],
) -> Result<PointResult> {
    let chain = match repo.read_chain(&p.chain_id) {
        Ok(c) => Some(c),
        Err(e) => {
            return Ok(PointResult {
                job: job.name.clone(),
                point_id: p.point_id.hex(),
                time: p.time.clone(),
                recoverable: false,
                paths: vec![PathResult {
                    path: "chain",
                    ok: false,
                    detail: e.to_string(),
                }],
            })
        }
    };
    let chain = chain.expect("checked");
    let escrow = repo.list_escrow(Some(&job.job_id))?;
    let mut paths = Vec::new();
    for (name, tiers) in PATHS {
        let applies = match name {
            "kms" => {
                chain
                    .keyslots
                    .iter()
                    .any(|s| matches!(s.params.provider(), "kms" | "kmip" | "kmip-encrypt"))
                    || !escrow.is_empty()
            }
            "key" => chain.keyslots.iter().any(|s| s.params.provider() == "raw"),
            _ => chain
                .keyslots
                .iter()
                .any(|s| s.params.provider() == "passphrase"),
        };
        if !applies {
            continue;
        }
        let req = Request {
            job_name: &job.name,
            chain: chain.clone(),
            point_kdf: Some(p.kdf.as_ref()),
            point_generation: Some(p.key_generation()),
            point_label: Some(format!("recovery point {}", p.point_id)),
            catalog: None,
            creds: &ctx.creds,
            job_key_file: None,
            escrow: &escrow,
            tiers,
            allowed_kms: allowed_kms.to_vec(),
            allowed_kmip: None,
            explicit: true,
            defer_passphrase_check: false,
        };
        let r = match crate::resolve::resolve(req).await {
            Ok(res) => match open_point(&res.chain, p) {
                Ok(_) => PathResult {
                    path: name,
                    ok: true,
                    detail: res
                        .attempts
                        .last()
                        .map(|a| a.detail.clone())
                        .unwrap_or_default(),
                },
                Err(e) => PathResult {
                    path: name,
                    ok: false,
                    detail: e.to_string(),
                },
            },
            Err(f) => PathResult {
                path: name,
                ok: false,
                detail: f
                    .attempts
                    .iter()
                    .filter(|a| !a.ok)
                    .map(|a| a.detail.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        };
        paths.push(r);
    }
    if chain.keyslots.iter().any(|s| s.params.provider() == "none") {
        paths.push(PathResult {
            path: "none",
            ok: true,
            detail: "not encrypted".into(),
        });
    }
    Ok(PointResult {
        job: job.name.clone(),
        point_id: p.point_id.hex(),
        time: p.time.clone(),
        recoverable: paths.iter().any(|r| r.ok),
        paths,
    })
}

pub async fn run(ctx: &Ctx, a: DrillArgs) -> Result<i32> {
    let (repo, jobs) = match (&a.repo, &a.name) {
        (Some(dir), name) => {
            let repo = Repository::open(dir)?;
            let jobs: Vec<JobRecord> = repo
                .list_jobs()?
                .into_iter()
                .filter(|j| name.as_ref().is_none_or(|n| &j.name == n))
                .collect();
            if let (Some(n), true) = (name, jobs.is_empty()) {
                return Err(Error::NotFound(format!(
                    "no job named '{n}' in repository {}",
                    dir.display()
                )));
            }
            (repo, jobs)
        }
        (None, Some(name)) => {
            let h = locate_job(&ctx.catalog()?, name, None)?;
            (h.repo, vec![h.job])
        }
        (None, None) => return Err(Error::Usage("give a job name or --repo DIR".into())),
    };
    let mut results = Vec::new();
    let cat = ctx.catalog()?;
    for job in &jobs {
        // KMS keys the drill may ask to decrypt with: those this catalog pins for the job,
        // and those the configuration or --trust-kms-key trusts.
        let mut allowed = ctx.creds.kms.trusted_keys.clone();
        allowed.extend(cat.setting(crate::passwords::ESCROW_KEY_SETTING)?);
        for pin in cat.chain_pins(&job.job_id)? {
            allowed.extend(pin.kms_keys);
        }
        for p in repo.list_points(&job.job_id)? {
            if p.is_forgotten() {
                continue;
            }
            results.push(drill_point(ctx, &repo, job, &p, &allowed).await?);
        }
    }
    let bad = results.iter().filter(|r| !r.recoverable).count();
    // A secret the user gave must open every point it applies to, whatever else does.
    let given: Vec<&str> = [
        ctx.creds.explicit_passphrase().then_some("passphrase"),
        ctx.creds.explicit_key().then_some("key"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let secret_failed = results
        .iter()
        .flat_map(|r| r.paths.iter())
        .filter(|p| given.contains(&p.path) && !p.ok)
        .count();
    if ctx.json {
        crate::ui::print_json(&serde_json::json!({
            "repository": repo.root().display().to_string(),
            "points": results.len(), "unrecoverable": bad, "results": results,
            "kms_requests": crate::keys::aws_kms::process_requests(),
        }));
    } else {
        for r in &results {
            ctx.say(format!(
                "{} {} {}: {}",
                r.job,
                &r.point_id[..8],
                r.time,
                if r.recoverable {
                    "RECOVERABLE"
                } else {
                    "UNRECOVERABLE"
                }
            ));
            for p in &r.paths {
                ctx.say(format!(
                    "    {:<10} {} {}",
                    p.path,
                    if p.ok { "ok  " } else { "FAIL" },
                    p.detail
                ));
            }
        }
        ctx.say(format!(
            "drill: {} recovery point(s), {} unrecoverable (nothing was written)",
            results.len(),
            bad
        ));
    }
    if secret_failed > 0 {
        eprintln!(
            "error: the {} given does not open {secret_failed} recovery point path(s) it applies to (see above)",
            given.join(" and ")
        );
    }
    Ok(if bad == 0 && secret_failed == 0 {
        exit::OK
    } else {
        exit::KEYS
    })
}
