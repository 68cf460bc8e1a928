//! `daemon_bounded`: after warm-up, the daemon's memory and descriptors do
//! not grow beyond what its live resources explain.
//!
//! Host copies live in the daemon's heap (its anonymous memory), and the
//! allocator keeps freed heap for the next resource, so the heap follows
//! the *peak* of host memory in use so far, not the current value. What is
//! left after taking that peak off (code, the trace ring, request buffers,
//! allocator overhead) is the daemon's own: it may settle during warm-up,
//! and must not keep growing after it. Guest RAM the daemon maps is not
//! counted (it is the VM's, shared), so VmRSS is reported but not checked.
//!
//! Host memory is charged when a resource is created, but a host copy's
//! pages are zero pages the kernel hands out only when first written (a
//! transfer), so early in a run the heap can be well below the charge and
//! the difference negative. The daemon's own memory is never below zero:
//! the baseline is taken as at least zero, and the host copies filling in
//! later, which the peak already explains, are not counted as growth.

use serde_json::{json, Value};

use crate::timeline::DaemonSample;

/// Growth of the daemon's own memory allowed after warm-up: allocator
/// rounding and fragmentation, and the trace ring filling up (bounded by
/// its capacity of 262144 events, about 20 MiB).
pub const SLACK_MIB: f64 = 48.0;
/// Descriptors allowed above the warm-up's most: a control client or a
/// display reconnect in flight.
pub const SLACK_FDS: u64 = 8;

/// The verdict on one run's daemon samples; `Err` when there is nothing
/// after warm-up to judge.
pub fn judge(samples: &[DaemonSample], warmup_s: f64) -> Result<(bool, Value), String> {
    let mut peak_host = 0.0f64;
    let mut warm = (f64::MIN, 0u64);
    let mut after = (f64::MIN, 0u64, None::<f64>);
    let mut judged = 0;
    for s in samples {
        peak_host = peak_host.max(s.host_memory_mib);
        let (Some(anon), Some(fds)) = (s.anon_mib, s.open_fds) else {
            continue;
        };
        let own = anon - peak_host;
        if s.t_s <= warmup_s {
            warm = (warm.0.max(own), warm.1.max(fds));
        } else {
            judged += 1;
            if own > after.0 {
                after.2 = Some(s.t_s);
            }
            after = (after.0.max(own), after.1.max(fds), after.2);
        }
    }
    if judged == 0 || warm.0 == f64::MIN {
        return Err(format!(
            "no daemon memory samples on both sides of the {warmup_s:.0} s warm-up"
        ));
    }
    let warm = (warm.0.max(0.0), warm.1);
    let grown_mib = after.0 - warm.0;
    let ok = grown_mib <= SLACK_MIB && after.1 <= warm.1 + SLACK_FDS;
    Ok((
        ok,
        json!({
            "warmup_s": warmup_s,
            "own_memory_mib_warmup": round(warm.0),
            "own_memory_mib_after": round(after.0),
            "own_memory_growth_mib": round(grown_mib),
            "growth_allowed_mib": SLACK_MIB,
            "worst_at_s": after.2.map(round),
            "peak_host_memory_mib": round(peak_host),
            "open_fds_warmup": warm.1,
            "open_fds_after": after.1,
            "fds_allowed_above_warmup": SLACK_FDS,
            "samples_judged": judged,
        }),
    ))
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, host: f64, anon: f64, fds: u64) -> DaemonSample {
        DaemonSample {
            t_s,
            resources: 0,
            host_memory_mib: host,
            attaches: 0,
            detaches: 0,
            transfers: 0,
            rss_mib: Some(anon + 100.0),
            anon_mib: Some(anon),
            open_fds: Some(fds),
        }
    }

    #[test]
    fn heap_that_follows_the_peak_of_host_memory_passes() {
        // Host memory rises, falls (the heap keeps it), rises again.
        let series: Vec<DaemonSample> = (0..100)
            .map(|t| {
                let host = [10.0, 200.0, 50.0, 180.0][t / 25];
                let peak = if t < 25 { 10.0 } else { 200.0 };
                sample(t as f64, host, peak + 12.0 + (t % 3) as f64, 14)
            })
            .collect();
        let (ok, detail) = judge(&series, 25.0).unwrap();
        assert!(ok, "{detail}");
    }

    #[test]
    fn a_leak_after_warm_up_fails_and_so_do_leaked_descriptors() {
        // 1 MiB per sample on top of flat host memory: 60 MiB by the end.
        let leak: Vec<DaemonSample> = (0..100)
            .map(|t| sample(t as f64, 100.0, 110.0 + (t.max(40) - 40) as f64, 14))
            .collect();
        let (ok, detail) = judge(&leak, 25.0).unwrap();
        assert!(!ok);
        assert_eq!(detail["own_memory_growth_mib"], 59.0);
        assert_eq!(detail["worst_at_s"], 99.0);

        let fds: Vec<DaemonSample> = (0..100)
            .map(|t| sample(t as f64, 100.0, 110.0, 14 + t as u64 / 5))
            .collect();
        let (ok, detail) = judge(&fds, 25.0).unwrap();
        assert!(!ok, "{detail}");
        assert_eq!(detail["open_fds_after"], 33);
    }

    #[test]
    fn host_copies_charged_before_they_are_written_are_not_growth() {
        // 100 MiB charged at once; the heap fills in as transfers write
        // the copies, after warm-up, up to the charge plus 12 MiB its own.
        let series: Vec<DaemonSample> = (0..100)
            .map(|t| sample(t as f64, 100.0, (t as f64 * 2.0).min(112.0), 14))
            .collect();
        let (ok, detail) = judge(&series, 25.0).unwrap();
        assert!(ok, "{detail}");
        assert_eq!(detail["own_memory_mib_warmup"], 0.0);
        assert_eq!(detail["own_memory_growth_mib"], 12.0);
        // A leak on top of that still fails.
        let leak: Vec<DaemonSample> = (0..100)
            .map(|t| sample(t as f64, 100.0, t as f64 * 2.0, 14))
            .collect();
        let (ok, detail) = judge(&leak, 25.0).unwrap();
        assert!(!ok, "{detail}");
    }

    #[test]
    fn nothing_to_judge_is_an_error_not_a_pass() {
        let early: Vec<DaemonSample> = (0..10).map(|t| sample(t as f64, 1.0, 5.0, 9)).collect();
        assert!(judge(&early, 25.0).is_err());
        assert!(judge(&[], 25.0).is_err());
    }
}
