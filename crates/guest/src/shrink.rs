//! `gpuswap-guest shrink`: one process of an igt-style shrinker test
//! (after igt's `gem_shrink` / `msm_shrink`). Many of these, started
//! together, hold GPU buffers that over-commit the guest's RAM, so the
//! shrinker must evict some to let the others allocate, and each process
//! then uses its buffers again:
//!
//! - `mmap`: the CPU writes every buffer, then reads every one back
//!   through its mapping (a fault restores an evicted one);
//! - `transfer`: the CPU writes, then every buffer is transferred to the
//!   host (which restores and re-attaches an evicted one); the host's
//!   copies are checked by the caller against the printed hashes.
//!
//! With `--dontneed-share F` that share of the buffers is marked DONTNEED
//! after writing (the shrinker may purge them); at the end each is marked
//! WILLNEED again, and must either be retained with its content intact or
//! purged and refuse a touch with SIGBUS.

use serde::Serialize;

use crate::gpu::{Gpu, RegionArgs, DEFAULT_FORMAT};
use crate::pattern::Pattern;
use crate::uapi::{VIRTGPU_MADV_DONTNEED, VIRTGPU_MADV_WILLNEED};
use crate::{Error, Result};

/// How a process uses its buffers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Mmap,
    Transfer,
}

impl std::str::FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Variant> {
        match s {
            "mmap" => Ok(Variant::Mmap),
            "transfer" => Ok(Variant::Transfer),
            other => Err(Error::msg(format!(
                "unknown variant {other:?} (mmap, transfer)"
            ))),
        }
    }
}

/// One process's part.
#[derive(Debug, Clone)]
pub struct Plan {
    pub variant: Variant,
    /// Which process this is (keeps the patterns of processes apart).
    pub id: u64,
    pub bos: u32,
    /// Each buffer is a 1024-pixel-wide 2D resource of this many rows.
    pub rows: u32,
    pub rounds: u32,
    pub seed: u64,
    pub dontneed_share: f64,
}

/// What one buffer ended as.
#[derive(Debug, Serialize)]
pub struct BoResult {
    pub res_id: u32,
    /// The content hash the host's copy must have (transfer variant).
    pub hash: String,
    pub dontneed: bool,
    /// For a DONTNEED buffer: kept (content checked) or purged.
    pub retained: Option<bool>,
}

/// The process's report, one JSON line on stdout.
#[derive(Debug, Serialize)]
pub struct Report {
    pub id: u64,
    pub variant: Variant,
    /// Buffers read back (mmap) or transferred (transfer) with the right
    /// content, over all rounds.
    pub checked: u64,
    /// Buffers whose content was wrong: "res_id at offset N".
    pub mismatches: Vec<String>,
    /// DONTNEED buffers purged, and purged ones that did not refuse a touch.
    pub purged: u32,
    pub purged_but_readable: u32,
    pub bos: Vec<BoResult>,
}

const WIDTH: u32 = 1024;

/// Runs the plan, then calls `done` with the report while every buffer is
/// still open (the caller checks the host's copies meanwhile); the
/// buffers are closed when it returns.
pub fn run(plan: &Plan, done: impl FnOnce(&Report) -> Result<()>) -> Result<Report> {
    let mut gpu = Gpu::open(None)?;
    let key = |k: u32| plan.id * 1_000_000 + u64::from(k);
    let dontneed = (f64::from(plan.bos) * plan.dontneed_share).ceil() as u32;
    let mut bos = Vec::new();
    for k in 0..plan.bos {
        let bo = gpu.create_2d(WIDTH, plan.rows, DEFAULT_FORMAT)?;
        let (handle, res_id) = (bo.handle, bo.res_id);
        let hashes = gpu.write_kind(handle, Pattern::Sparse, plan.seed, key(k), 1)?;
        if k < dontneed {
            gpu.madvise(handle, VIRTGPU_MADV_DONTNEED)?;
        }
        bos.push((handle, res_id, crate::pattern::hex(hashes.hash)));
    }
    let mut report = Report {
        id: plan.id,
        variant: plan.variant,
        checked: 0,
        mismatches: Vec::new(),
        purged: 0,
        purged_but_readable: 0,
        bos: Vec::new(),
    };
    for _ in 0..plan.rounds {
        for (k, (handle, res_id, _)) in bos.iter().enumerate().skip(dontneed as usize) {
            match plan.variant {
                Variant::Mmap => {
                    match gpu.verify_kind(*handle, Pattern::Sparse, plan.seed, key(k as u32), 1)? {
                        None => report.checked += 1,
                        Some(at) => report.mismatches.push(format!("{res_id} at offset {at}")),
                    }
                }
                Variant::Transfer => {
                    gpu.transfer_to_host(*handle, RegionArgs::default(), None)?;
                    report.checked += 1;
                }
            }
        }
    }
    for (k, (handle, res_id, hash)) in bos.into_iter().enumerate() {
        let is_dontneed = (k as u32) < dontneed;
        let mut retained = None;
        if is_dontneed {
            let kept = gpu.madvise(handle, VIRTGPU_MADV_WILLNEED)?;
            retained = Some(kept);
            if kept {
                if let Some(at) =
                    gpu.verify_kind(handle, Pattern::Sparse, plan.seed, key(k as u32), 1)?
                {
                    report
                        .mismatches
                        .push(format!("{res_id} (retained) at offset {at}"));
                }
            } else {
                report.purged += 1;
                if gpu.touch(handle, 0)? != Some(nix::libc::SIGBUS) {
                    report.purged_but_readable += 1;
                }
            }
        }
        report.bos.push(BoResult {
            res_id,
            hash,
            dontneed: is_dontneed,
            retained,
        });
    }
    done(&report)?;
    Ok(report)
}
