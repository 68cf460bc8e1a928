//! Pressure scenarios: how hard the host squeezes the guest over time.
//!
//! A scenario is a level in [0, 1] over the run, repeated `cycles` times;
//! the harness turns the level into a balloon target and a hog size (see
//! `pressure.rs`). Each part of a cycle has a phase name for the report and
//! the timeline.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Ramp up, hold at full pressure, release: the basic evict/restore run.
    Steady,
    /// Ramp up and drop at once, again and again: mass restores after each
    /// drop race the next ramp's evictions.
    Sawtooth,
    /// Mild pressure with short full-pressure spikes: sudden reclaim with
    /// the workload busy.
    Spike,
    /// Slow waves between mild and full pressure for a long time: leaks,
    /// drift and rare races.
    Soak,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Steady,
        Scenario::Sawtooth,
        Scenario::Spike,
        Scenario::Soak,
    ];

    /// Workload time of the bare command.
    pub fn default_duration(self) -> Duration {
        Duration::from_secs(match self {
            Scenario::Steady | Scenario::Sawtooth | Scenario::Spike => 120,
            Scenario::Soak => 30 * 60,
        })
    }

    pub fn default_cycles(self) -> u32 {
        match self {
            Scenario::Steady => 1,
            Scenario::Sawtooth => 4,
            Scenario::Spike => 3,
            Scenario::Soak => 15,
        }
    }

    /// Pressure level and phase name at `position` (0..1) within a cycle.
    pub fn level(self, position: f64) -> (f64, &'static str) {
        let u = position.clamp(0.0, 1.0);
        match self {
            Scenario::Steady => match u {
                u if u < 0.2 => (u / 0.2, "ramp"),
                u if u < 0.85 => (1.0, "hold"),
                _ => (0.0, "release"),
            },
            Scenario::Sawtooth => match u {
                u if u < 0.75 => (u / 0.75, "ramp"),
                _ => (0.0, "drop"),
            },
            Scenario::Spike => match u {
                u if u < 0.55 => (0.25, "baseline"),
                u if u < 0.7 => (1.0, "spike"),
                _ => (0.25, "recover"),
            },
            Scenario::Soak => {
                // One full wave per cycle, between 0.3 and 1.0.
                let level = 0.65 - 0.35 * (2.0 * std::f64::consts::PI * u).cos();
                (level, if u < 0.5 { "rise" } else { "fall" })
            }
        }
    }

    /// Level and phase at `elapsed` into a run of `duration` with `cycles`.
    pub fn at(self, elapsed: Duration, duration: Duration, cycles: u32) -> (f64, &'static str) {
        let cycle = duration.as_secs_f64() / f64::from(cycles.max(1));
        if cycle <= 0.0 {
            return (0.0, "done");
        }
        let position = (elapsed.as_secs_f64() / cycle).fract();
        self.level(position)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Steady => "steady",
            Scenario::Sawtooth => "sawtooth",
            Scenario::Spike => "spike",
            Scenario::Soak => "soak",
        })
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|c| c.to_string() == s)
            .ok_or_else(|| format!("unknown scenario {s:?} (steady, sawtooth, spike, soak)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.to_string().parse::<Scenario>(), Ok(s));
        }
        assert!("nope".parse::<Scenario>().is_err());
    }

    #[test]
    fn levels_stay_in_range_and_every_scenario_reaches_full_pressure() {
        for s in Scenario::ALL {
            let levels: Vec<f64> = (0..=1000)
                .map(|i| s.level(f64::from(i) / 1000.0).0)
                .collect();
            assert!(levels.iter().all(|l| (0.0..=1.0).contains(l)), "{s}");
            let max = levels.iter().cloned().fold(0.0, f64::max);
            assert!(max > 0.99, "{s} peaks at {max}");
        }
    }

    #[test]
    fn pressure_comes_back_down_in_every_cycle() {
        // Restores happen when pressure eases: each scenario must ease.
        for s in Scenario::ALL {
            let min = (0..=1000)
                .map(|i| s.level(f64::from(i) / 1000.0).0)
                .fold(1.0, f64::min);
            assert!(min < 0.35, "{s} never eases (min {min})");
        }
    }

    #[test]
    fn cycles_repeat_the_shape() {
        let d = Duration::from_secs(100);
        let s = Scenario::Sawtooth;
        let (a, b) = (
            s.at(Duration::from_secs(10), d, 4),
            s.at(Duration::from_secs(35), d, 4),
        );
        assert!((a.0 - b.0).abs() < 1e-9 && a.1 == b.1, "{a:?} {b:?}");
        assert_eq!(s.at(Duration::from_secs(20), d, 4).1, "drop");
    }
}
