//! `gpuswap-guest reclaim-bench`: what the shrinker costs the guest,
//! measured next to the kernel's own swap path for the same bytes.
//!
//! Each round creates `bos` fresh idle 4 MiB 2D BOs (written and
//! transferred to the host, so attached) and fills an anonymous region of
//! the same size with the same content, then:
//! - **eviction**: one forced evict scan of every BO (debugfs; the scan
//!   queues the DETACHes, waits for the host and gives the pages to shmem),
//!   against `MADV_PAGEOUT` of the anonymous region (reclaim of the same
//!   bytes into zram). The scan does not write to zram itself: shmem's
//!   pages go there when reclaim gets to them, at what `MADV_PAGEOUT`
//!   costs; so a whole eviction costs the scan plus a page-out;
//! - memory pressure (a growing anonymous region) then pushes the evicted
//!   pages into zram, so that restores read them back from there like the
//!   anonymous ones;
//! - **restore by CPU touch**: one byte read of each BO of the first half
//!   (the fault brings the whole BO back: its pages are one shmem object),
//!   against the first touch of each paged-out 4 MiB anonymous chunk (one
//!   page and its readahead) and the touch of all its pages (the same
//!   bytes as a BO);
//! - **restore by transfer**: the first transfer of each BO of the second
//!   half (swap-in, ATTACH, TRANSFER, and a fence barrier: until the host
//!   has it again).
//!
//! Fresh BOs each round, and one push for both halves: a page read back
//! from swap is activated (the refault was recent), and an active page is
//! out of reach of the push. Times are wall clock in the guest. Needs swap
//! (the harness's zram).

use std::time::Instant;

use serde_json::{json, Value};

use crate::anon::AnonMap;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, RegionArgs};
use crate::pattern::{self, Pattern};
use crate::shrinker::{self, ScanMode};
use crate::sysinfo;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
/// 1024 x 1024 at 4 bytes per pixel.
const BO_BYTES: usize = 4 * MIB;
const BO_SIDE: u32 = 1024;
/// B8G8R8X8_UNORM.
const FORMAT: u32 = 2;

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub bos: u32,
    pub rounds: u32,
    pub seed: u64,
}

/// Runs the plan; one JSON object with every round and the medians.
pub fn run(plan: Plan) -> Result<Value> {
    if plan.bos < 2 || plan.rounds == 0 {
        return Err(Error::msg(
            "reclaim-bench: --bos must be at least 2 (one to touch, one to transfer), \
             --rounds at least 1",
        ));
    }
    let mut gpu = Gpu::open(None)?;
    let mut anon = Anon::map(plan.bos as usize * BO_BYTES)?;
    let mut rounds = Vec::new();
    for round in 0..plan.rounds {
        let mut handles = Vec::new();
        for _ in 0..plan.bos {
            handles.push(gpu.create_2d(BO_SIDE, BO_SIDE, FORMAT)?.handle);
        }
        let result = one_round(
            &mut gpu,
            &handles,
            &mut anon,
            plan.seed,
            u64::from(round) + 1,
        );
        for h in handles {
            gpu.close(h)?;
        }
        rounds.push(result?);
    }
    let median = |key: &str| {
        let mut v: Vec<f64> = rounds.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let summary = json!({
        "evict_mib_per_s": median("evict_mib_per_s"),
        "pageout_mib_per_s": median("pageout_mib_per_s"),
        "bo_first_touch_ms_p50": median("bo_first_touch_ms_p50"),
        "bo_first_touch_ms_p99": median("bo_first_touch_ms_p99"),
        "bo_first_transfer_ms_p50": median("bo_first_transfer_ms_p50"),
        "bo_first_transfer_ms_p99": median("bo_first_transfer_ms_p99"),
        "anon_first_touch_ms_p50": median("anon_first_touch_ms_p50"),
        "anon_first_touch_ms_p99": median("anon_first_touch_ms_p99"),
        "anon_chunk_swapin_ms_p50": median("anon_chunk_swapin_ms_p50"),
        "anon_chunk_swapin_ms_p99": median("anon_chunk_swapin_ms_p99"),
    });
    Ok(json!({
        "bos": plan.bos,
        "bo_mib": BO_BYTES / MIB,
        "rounds": rounds,
        "median": summary,
    }))
}

fn one_round(
    gpu: &mut Gpu,
    handles: &[u32],
    anon: &mut Anon,
    seed: u64,
    version: u64,
) -> Result<Value> {
    let mib = (handles.len() * BO_BYTES / MIB) as f64;
    // The same content on both sides.
    for (i, &h) in handles.iter().enumerate() {
        gpu.write_kind(h, Pattern::Random, seed, i as u64, version)?;
        pattern::fill_kind(Pattern::Random, anon.chunk(i), seed, i as u64, version);
        gpu.transfer_to_host(h, RegionArgs::default(), Some(true))?;
    }

    let swap_before_evict = swap_used_mib()?;
    let (evict_s, evicted) = evict(handles.len())?;
    let swap_after_evict = swap_used_mib()?;

    let swap_before_pageout = swap_used_mib()?;
    let t = Instant::now();
    anon.pageout()?;
    let pageout_s = t.elapsed().as_secs_f64();
    let paged_out = swap_used_mib()? - swap_before_pageout;
    let chunks: Vec<usize> = (0..handles.len()).collect();
    let anon_touch = time_each(&chunks, |&i| {
        anon.touch_first(i);
        Ok(())
    })?;
    anon.pageout()?;
    let anon_chunk = time_each(&chunks, |&i| {
        anon.touch_all(i);
        Ok(())
    })?;

    // The evicted pages are shmem's now, still in memory.
    let (swapped_mib, push) = push_shmem_to_swap(mib)?;
    let (touched, transferred) = handles.split_at(handles.len() / 2);
    let bo_touch = time_each(touched, |&h| gpu.first_byte(h).map(drop))?;
    let bo_transfer = time_each(transferred, |&h| {
        gpu.transfer_to_host(h, RegionArgs::default(), Some(true))
            .map(drop)
    })?;

    Ok(json!({
        "version": version,
        "evict_s": evict_s,
        "evicted_mib": evicted as f64 * PAGE as f64 / MIB as f64,
        "evict_mib_per_s": evicted as f64 * PAGE as f64 / MIB as f64 / evict_s,
        "swap_used_by_the_scan_mib": swap_after_evict - swap_before_evict,
        "shmem_mib_pushed_to_swap": swapped_mib,
        "push": push,
        "pageout_s": pageout_s,
        "paged_out_mib": paged_out,
        "pageout_mib_per_s": paged_out / pageout_s,
        "bo_first_touch_ms_p50": percentile(&bo_touch, 0.5),
        "bo_first_touch_ms_p99": percentile(&bo_touch, 0.99),
        "bo_first_transfer_ms_p50": percentile(&bo_transfer, 0.5),
        "bo_first_transfer_ms_p99": percentile(&bo_transfer, 0.99),
        "anon_first_touch_ms_p50": percentile(&anon_touch, 0.5),
        "anon_first_touch_ms_p99": percentile(&anon_touch, 0.99),
        "anon_chunk_swapin_ms_p50": percentile(&anon_chunk, 0.5),
        "anon_chunk_swapin_ms_p99": percentile(&anon_chunk, 0.99),
    }))
}

/// One forced evict scan of `bos` BOs: its seconds and the pages freed.
fn evict(bos: usize) -> Result<(f64, u64)> {
    let pages = (bos * BO_BYTES / PAGE) as u64;
    let t = Instant::now();
    let result = shrinker::scan(ScanMode::Evict, pages)?;
    let secs = t.elapsed().as_secs_f64();
    let freed = result.get("freed").and_then(Value::as_u64).unwrap_or(0);
    if freed == 0 {
        return Err(Error::msg(format!(
            "reclaim-bench: the evict scan freed nothing ({result:?}): is there swap?"
        )));
    }
    Ok((secs, freed))
}

/// Makes reclaim write the evicted BOs' `mib` MiB of shmem to swap: an
/// anonymous region grows 4 MiB at a time, each step written, until that
/// much shmem has left memory and two more steps took no more (reclaim
/// goes from the oldest inactive pages: other shmem first, then the
/// evicted BOs, which are older than the region), or until the region
/// holds free memory plus twice `mib`, or swap is nearly full. Growing
/// slowly keeps reclaim at the watermarks, with the reserves zram needs to
/// store a page: one allocation of all free memory at once starved zram.
/// Returns how much shmem left memory, and the pressure it took with the
/// LRU lists before and after.
fn push_shmem_to_swap(mib: f64) -> Result<(f64, Value)> {
    const STEP: usize = 4 * MIB;
    const SETTLE_STEPS: usize = 2;
    let before = meminfo_mib("Shmem")?;
    let start = lru_state(0.0)?;
    let budget = (meminfo_mib("MemFree")? + 2.0 * mib) as usize * MIB;
    let mut hog = Vec::new();
    let mut gone = 0.0;
    let mut still = 0;
    while hog.len() * STEP < budget
        && meminfo_mib("SwapFree")? >= 4.0 * (STEP / MIB) as f64
        && (gone < mib * 0.95 || still < SETTLE_STEPS)
    {
        let mut step = Anon::map(STEP)?;
        for page in (0..STEP).step_by(PAGE) {
            // A different byte per page, so no page is same-filled in zram.
            step.0.as_mut_slice()[page] = (page / PAGE) as u8 | 1;
        }
        hog.push(step);
        let now = (before - meminfo_mib("Shmem")?).max(0.0);
        still = if now > gone { 0 } else { still + 1 };
        gone = now;
    }
    let pressure = json!({
        "hog_mib": hog.len() * STEP / MIB,
        "before": start,
        "after": lru_state(gone)?,
    });
    drop(hog);
    Ok((gone, pressure))
}

/// The anonymous LRU lists (where shmem's pages are), in MiB.
fn lru_state(shmem_gone_mib: f64) -> Result<Value> {
    Ok(json!({
        "shmem_gone_mib": shmem_gone_mib,
        "free_mib": meminfo_mib("MemFree")?,
        "active_anon_mib": meminfo_mib("Active(anon)")?,
        "inactive_anon_mib": meminfo_mib("Inactive(anon)")?,
        "unevictable_mib": meminfo_mib("Unevictable")?,
    }))
}

fn meminfo_mib(key: &str) -> Result<f64> {
    Ok(sysinfo::meminfo()?
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
        / 1024.0)
}

fn swap_used_mib() -> Result<f64> {
    let m = sysinfo::meminfo()?;
    let kib = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    Ok((kib("SwapTotal") - kib("SwapFree")) / 1024.0)
}

/// Milliseconds each call of `f` took, in order.
fn time_each<T>(items: &[T], mut f: impl FnMut(&T) -> Result<()>) -> Result<Vec<f64>> {
    items
        .iter()
        .map(|item| {
            let t = Instant::now();
            f(item).map(|()| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// The `q` quantile (nearest rank) of `ms`.
fn percentile(ms: &[f64], q: f64) -> Option<f64> {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied()
}

/// A private anonymous region of 4 MiB chunks.
struct Anon(AnonMap);

impl Anon {
    fn map(len: usize) -> Result<Anon> {
        AnonMap::new(len)
            .map(Anon)
            .map_err(|e| e.context("reclaim-bench"))
    }

    fn chunk(&mut self, i: usize) -> &mut [u8] {
        &mut self.0.as_mut_slice()[i * BO_BYTES..(i + 1) * BO_BYTES]
    }

    /// Where chunk `i` starts.
    fn chunk_ptr(&self, i: usize) -> *const u8 {
        assert!((i + 1) * BO_BYTES <= self.0.len());
        // SAFETY: inside the mapping (asserted).
        unsafe { self.0.as_ptr().add(i * BO_BYTES) }
    }

    fn pageout(&self) -> Result<()> {
        self.0.pageout().map_err(|e| e.context("reclaim-bench"))
    }

    fn touch_first(&self, i: usize) {
        // SAFETY: the first byte of chunk `i`, inside the mapping.
        let _ = unsafe { std::ptr::read_volatile(self.chunk_ptr(i)) };
    }

    fn touch_all(&self, i: usize) {
        let chunk = self.chunk_ptr(i);
        for page in (0..BO_BYTES).step_by(PAGE) {
            // SAFETY: one byte of each page of chunk `i`, inside the mapping.
            let _ = unsafe { std::ptr::read_volatile(chunk.add(page)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[3.0], 0.99), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
