//! Memory pressure from the host and the measurements that show it biting.
//!
//! The scenario's level (0..1) is split between the mechanisms: the
//! balloon takes its share by inflating (QMP `balloon` with a lower target
//! for the guest's memory), the hog by holding anonymous memory in the
//! guest agent. Both push the guest into reclaim, which calls the Rust
//! shrinker, which evicts idle GPU buffers. `drop_caches` and the driver's
//! forced scan, when enabled, run every few seconds on top.

use std::time::{Duration, Instant};

use gpuswap_api::agent::{self, ScanMode};

use super::Run;
use crate::Result;

const MIB: u64 = 1 << 20;
/// Smaller target changes are not worth a request.
const BALLOON_STEP_MIB: u64 = 4;
const HOG_STEP_MIB: u64 = 8;
/// How often the extra mechanisms run.
const DROP_CACHES_EVERY: Duration = Duration::from_secs(7);
const FORCED_SCAN_EVERY: Duration = Duration::from_secs(5);
/// Pages asked of each forced scan.
const FORCED_SCAN_PAGES: u64 = 4096;

/// What the host currently asks of the guest.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pressure {
    pub level: f64,
    /// The balloon's target for the guest's memory, MiB.
    pub balloon_target_mib: Option<u64>,
    pub hog_mib: u64,
}

/// Shrinker counters as last sampled (for event deltas).
#[derive(Debug, Default, Clone, Copy)]
pub struct ShrinkerCounts {
    pub evictions: u64,
    pub restores: u64,
    pub purges: u64,
}

impl Run {
    /// MiB the balloon and the hog take at full pressure.
    fn shares(&self) -> (u64, u64) {
        let squeeze = u64::from(self.o.squeeze_mib);
        match (self.o.pressure.balloon, self.o.pressure.hog) {
            (true, true) => (squeeze / 2, squeeze - squeeze / 2),
            (true, false) => (squeeze, 0),
            (false, true) => (0, squeeze),
            (false, false) => (0, 0),
        }
    }

    /// Moves the balloon and the hog to `level`.
    pub(super) fn apply_pressure(&mut self, level: f64) -> Result<()> {
        let level = level.clamp(0.0, 1.0);
        let (balloon_share, hog_share) = self.shares();
        self.pressure.level = level;
        if self.o.pressure.balloon {
            let target = u64::from(self.o.memory_mib) - (level * balloon_share as f64) as u64;
            let current = self.pressure.balloon_target_mib;
            if current.is_none_or(|c| {
                c.abs_diff(target) >= BALLOON_STEP_MIB || (level == 0.0 && c != target)
            }) {
                self.qmp().balloon(target * MIB)?;
                self.pressure.balloon_target_mib = Some(target);
            }
        }
        if self.o.pressure.hog {
            let target = (level * hog_share as f64) as u64;
            let current = self.pressure.hog_mib;
            if current.abs_diff(target) >= HOG_STEP_MIB || (target == 0 && current != 0) {
                let r = self.agent.request(agent::Hog { mib: target })?;
                if r.oom_killed {
                    self.hog_oom_kills += 1;
                }
                self.pressure.hog_mib = target;
            }
        }
        if let Some(sampler) = &self.sampler {
            sampler.set_pressure(self.pressure);
        }
        Ok(())
    }

    /// The extra mechanisms, when their time has come.
    pub(super) fn periodic_pressure(&mut self) -> Result<()> {
        let now = Instant::now();
        if self.o.pressure.drop_caches && now >= self.next_drop_caches {
            self.agent.request(agent::DropCaches { level: Some(3) })?;
            self.next_drop_caches = now + DROP_CACHES_EVERY;
        }
        if self.o.pressure.forced_scan && now >= self.next_forced_scan {
            self.agent.request(agent::ShrinkerScan {
                pages: FORCED_SCAN_PAGES,
                mode: Some(ScanMode::Evict),
            })?;
            self.next_forced_scan = now + FORCED_SCAN_EVERY;
        }
        Ok(())
    }
}
