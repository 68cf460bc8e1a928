//! `gpuswap-guest touch`: first-touch latency of anonymous memory.
//!
//! Maps `mib` MiB of anonymous memory and writes each 4 KiB page once,
//! timing every page: its first touch is a page fault that allocates, and
//! under memory pressure enters direct reclaim, which calls the shrinkers.
//! Several of these running side by side over-commit RAM the way igt's
//! shrinker tests do, and the slowest page says how long an allocation
//! waited in reclaim (for example behind a shrinker waiting for the host).
//!
//! A page's time runs from the end of the previous page's to the end of its
//! own: the first touch, filling it, and whatever else the process did on
//! the way (its own bookkeeping can fault too, on the heap or the stack,
//! and such a fault reclaims like any other). So no wait of the process
//! falls between two measurements.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::anon::AnonMap;
use crate::error::{Error, Result};

const PAGE: usize = 4096;

/// Touches that took at least this long are counted (and the first few
/// kept with their offsets).
const SLOW: Duration = Duration::from_millis(100);
const KEPT_SLOW: usize = 8;

/// Maps, touches and unmaps `mib` MiB; returns the latencies as JSON.
pub fn run(mib: u64) -> Result<Value> {
    let len = usize::try_from(mib)
        .ok()
        .and_then(|m| m.checked_mul(1 << 20))
        .filter(|&l| l > 0)
        .ok_or_else(|| Error::msg(format!("touch: {mib} MiB is not a size to map")))?;
    let map = AnonMap::new(len).map_err(|e| e.context("touch"))?;
    let base = map.as_ptr();
    let started = Instant::now();
    let mut page_start = started;
    let (mut slowest, mut total) = (Duration::ZERO, Duration::ZERO);
    let (mut slow, mut over_1s) = (0u64, 0u64);
    let mut kept = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for page in 0..len / PAGE {
        // Half a page of noise, half zeros: compresses about 2:1 in zram,
        // like real data, so swapping it out takes real space.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // SAFETY: `page * PAGE` is inside the mapping of `len` bytes; the
        // first write faults the page in.
        unsafe { base.add(page * PAGE).write_volatile(x as u8) };
        for i in (8..PAGE / 2).step_by(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // SAFETY: within the same page of the mapping.
            unsafe { base.add(page * PAGE + i).cast::<u64>().write_unaligned(x) };
        }
        let page_end = Instant::now();
        let took = page_end - page_start;
        page_start = page_end;
        total += took;
        slowest = slowest.max(took);
        if took >= SLOW {
            slow += 1;
            if kept.len() < KEPT_SLOW {
                kept.push(json!({"page": page, "ms": took.as_secs_f64() * 1e3}));
            }
        }
        if took >= Duration::from_secs(1) {
            over_1s += 1;
        }
    }
    let pages = (len / PAGE) as u64;
    drop(map);
    Ok(json!({
        "pid": std::process::id(),
        "pages": pages,
        "seconds": started.elapsed().as_secs_f64(),
        "max_touch_ms": slowest.as_secs_f64() * 1e3,
        "mean_touch_us": total.as_secs_f64() * 1e6 / pages as f64,
        "touches_over_100ms": slow,
        "touches_over_1s": over_1s,
        "slowest": kept,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn touches_every_page_once() {
        let v = super::run(2).unwrap();
        assert_eq!(v["pages"], 512);
        assert!(v["max_touch_ms"].as_f64().unwrap() >= 0.0);
        assert!(super::run(0).is_err());
    }
}
