//! Repeated timing: every figure is the min and the median of several
//! samples (the machine is shared, so the median says what is typical and
//! the min what the code can do), in wall time and, for the backend, in
//! CPU time.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Seconds per operation over repeated samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Fastest sample, seconds per operation.
    pub min: f64,
    /// Median sample, seconds per operation.
    pub median: f64,
    /// Number of samples.
    pub samples: usize,
    /// Operations timed in each sample.
    pub batch: usize,
    /// Every sample, seconds per operation, in the order taken.
    pub values: Vec<f64>,
}

impl Stat {
    /// From per-operation times (seconds), one per sample, kept to four
    /// significant digits (the JSON stays small; timing noise is larger).
    pub fn from_samples(values: Vec<f64>, batch: usize) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let values: Vec<f64> = values.into_iter().map(four_digits).collect();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stat {
            min: sorted[0],
            median,
            samples: n,
            batch,
            values,
        })
    }

    /// The samples of both, as one set.
    pub fn merged(&self, other: &Stat) -> Stat {
        let values = self.values.iter().chain(&other.values).copied().collect();
        Stat::from_samples(values, self.batch).unwrap_or_else(|| self.clone())
    }

    /// Every value divided by `by` (e.g. a batch of pipelined requests
    /// into seconds per request).
    pub fn per(&self, by: usize) -> Stat {
        let by = by.max(1);
        let values = self.values.iter().map(|v| v / by as f64).collect();
        let mut s = Stat::from_samples(values, self.batch * by).unwrap_or_else(|| self.clone());
        s.batch = self.batch * by;
        s
    }

    /// Operations per second at the median.
    pub fn rate(&self) -> f64 {
        1.0 / self.median
    }
}

/// `v` to four significant digits.
fn four_digits(v: f64) -> f64 {
    format!("{v:.3e}").parse().unwrap_or(v)
}

/// Wall time of an operation, and the CPU time the backend process spent
/// on it (all its threads, from `/proc/PID/task/*/schedstat`; None when
/// not measured).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Wall time, request submitted to completion received.
    pub wall: Stat,
    /// Backend CPU time.
    pub cpu: Option<Stat>,
}

impl Timing {
    /// The samples of both.
    pub fn merged(&self, other: &Timing) -> Timing {
        Timing {
            wall: self.wall.merged(&other.wall),
            cpu: match (&self.cpu, &other.cpu) {
                (Some(a), Some(b)) => Some(a.merged(b)),
                (a, b) => a.clone().or_else(|| b.clone()),
            },
        }
    }

    /// Both stats divided by `by`.
    pub fn per(&self, by: usize) -> Timing {
        Timing {
            wall: self.wall.per(by),
            cpu: self.cpu.as_ref().map(|c| c.per(by)),
        }
    }
}

/// Reads a process's cumulative CPU time in nanoseconds.
pub type CpuProbe<'a> = &'a dyn Fn() -> Option<u64>;

/// CPU time of every thread of process `pid` so far, in nanoseconds
/// (None if it cannot be read).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// How many samples to take.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Untimed batches first.
    pub warmup: usize,
    /// Timed samples wanted.
    pub samples: usize,
    /// At least this many samples, whatever the budget.
    pub min_samples: usize,
    /// Stop taking samples after this much time (past `min_samples`).
    pub budget: Duration,
}

/// How long a sample waits, untimed, before the backend's CPU time is
/// read: a thread's CPU time (schedstat) moves only when it is descheduled
/// or at a tick, and a backend polling its queue stays on the CPU for its
/// poll window (at most 1 ms, `--poll-us`) after the last request. Past
/// it, the thread sleeps and its run is on the books.
const CPU_SETTLE: Duration = Duration::from_millis(2);

/// Runs `batch` operations per sample; `op` returns an error string to
/// abort. Returns seconds per operation.
pub fn measure(
    plan: Plan,
    batch: usize,
    cpu: CpuProbe,
    mut op: impl FnMut() -> Result<(), String>,
) -> Result<Timing, String> {
    let batch = batch.max(1);
    for _ in 0..plan.warmup * batch {
        op()?;
    }
    let started = Instant::now();
    let mut wall = Vec::with_capacity(plan.samples);
    let mut used = Vec::with_capacity(plan.samples);
    // The warm-up's polling goes on the books before the first sample.
    std::thread::sleep(CPU_SETTLE);
    while wall.len() < plan.samples.max(1) {
        let c0 = cpu();
        let t = Instant::now();
        for _ in 0..batch {
            op()?;
        }
        wall.push(t.elapsed().as_secs_f64() / batch as f64);
        std::thread::sleep(CPU_SETTLE);
        if let (Some(c0), Some(c1)) = (c0, cpu()) {
            used.push(c1.saturating_sub(c0) as f64 * 1e-9 / batch as f64);
        }
        if wall.len() >= plan.min_samples.max(1) && started.elapsed() > plan.budget {
            break;
        }
    }
    let n = wall.len();
    Ok(Timing {
        wall: Stat::from_samples(wall, batch).ok_or("no samples")?,
        cpu: (used.len() == n)
            .then(|| Stat::from_samples(used, batch))
            .flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_and_median() {
        let s = Stat::from_samples(vec![3.0, 1.0, 2.0, 10.0], 5).unwrap();
        assert_eq!((s.min, s.median, s.samples, s.batch), (1.0, 2.5, 4, 5));
        assert_eq!(s.values, vec![3.0, 1.0, 2.0, 10.0]);
        let s = Stat::from_samples(vec![3.0, 1.0, 2.0], 1).unwrap();
        assert_eq!(s.median, 2.0);
        assert!(Stat::from_samples(vec![], 1).is_none());
        let m = s.merged(&Stat::from_samples(vec![0.5, 7.0], 1).unwrap());
        assert_eq!((m.min, m.median, m.samples), (0.5, 2.0, 5));
        let p = m.per(10);
        assert_eq!((p.min, p.median, p.batch), (0.05, 0.2, 10));
    }

    #[test]
    fn measure_counts_samples() {
        let mut calls = 0;
        let plan = Plan {
            warmup: 1,
            samples: 4,
            min_samples: 2,
            budget: Duration::from_secs(10),
        };
        let s = measure(plan, 3, &|| Some(0), || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 3 + 4 * 3);
        assert_eq!((s.wall.samples, s.wall.batch), (4, 3));
        assert_eq!(s.cpu.map(|c| c.median), Some(0.0));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let a = process_cpu_ns(std::process::id()).expect("schedstat");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(process_cpu_ns(std::process::id()).unwrap() > a);
    }
}
