//! Adaptive polling of the available ring (the technique of QEMU's
//! `poll-max-ns` and SPDK's vhost targets).
//!
//! Waking the worker through a kick eventfd costs far more than a request
//! (tens of microseconds on a busy host against a few for a FLUSH). After
//! the worker has handled what was available, it watches the available
//! index for a short window with notifications off; a driver that sends
//! its next request within the window neither kicks nor waits for a
//! wakeup. The window adapts as QEMU's does: it grows while the worker
//! keeps sleeping for less than the maximum (requests come quickly enough
//! for polling to pay), and shrinks, down to not polling at all, while the
//! sleeps are longer than the maximum (polling would only burn CPU).
//!
//! That a request arrives within the window does not mean polling made it
//! come sooner. A worker spinning on one CPU keeps the frontend's thread
//! off it, so each completion wakes that thread on another, maybe idle,
//! CPU: where such a wakeup is dear (an idle vCPU halted in the host), a
//! closed loop of requests ran 3x slower polling than sleeping (measured,
//! docs/benchmarks.md), where on another machine of the same kind polling
//! made it 1.5x faster. So polling has to show that it pays: the worker
//! starts out sleeping, and while requests keep coming, [`Judge`]
//! compares how many are handled per unit of busy time with and without
//! polling, in short epochs of one mode next to the other, and keeps the
//! faster.

use std::time::{Duration, Instant};

/// The first window once polling starts to pay.
const START: Duration = Duration::from_micros(4);
/// Windows below this are not worth a poll: they become zero.
const FLOOR: Duration = Duration::from_micros(2);

/// Busy time per epoch of the judge: hundreds of small requests.
const EPOCH: Duration = Duration::from_millis(4);
/// A gap between two drains longer than this is idleness, not load: it
/// counts in no epoch (the guest is not waiting for us, and how fast we
/// answer does not change when its next request comes).
const IDLE_GAP: Duration = Duration::from_millis(1);
/// Epochs not judged after a change of mode (see `Judge::settling`).
const SETTLE_EPOCHS: u32 = 2;
/// The other mode must be this much faster to take over (hysteresis).
const SWITCH_GAIN: f64 = 1.10;
/// Epochs between two tries of the other mode: the first gap, and the
/// longest it doubles to while the tries keep losing.
const PROBE_GAP: u32 = 4;
const PROBE_GAP_MAX: u32 = 64;

/// Whether polling pays, judged by requests handled per unit of busy time
/// (the time between drains that follow each other closely).
#[derive(Debug)]
struct Judge {
    /// The mode kept between probes.
    polling_pays: bool,
    /// This epoch tries the other mode.
    probing: bool,
    /// Epochs not to judge, after a change of mode: the threads have yet
    /// to settle (a sleeping worker lets the scheduler bring the
    /// frontend's thread onto its CPU, a polling one pushes it off; either
    /// takes a few milliseconds).
    settling: u32,
    last_drain: Option<Instant>,
    busy: Duration,
    requests: u64,
    /// Requests per busy second of the last epoch in the kept mode.
    kept_rate: Option<f64>,
    /// Epochs in the kept mode since the last probe, and how many there
    /// are to be before the next one.
    since_probe: u32,
    probe_gap: u32,
}

impl Judge {
    fn new() -> Self {
        Judge {
            polling_pays: false,
            probing: false,
            settling: 0,
            last_drain: None,
            busy: Duration::ZERO,
            requests: 0,
            kept_rate: None,
            since_probe: 0,
            probe_gap: PROBE_GAP,
        }
    }

    /// Whether to poll now.
    fn polls(&self) -> bool {
        self.polling_pays != self.probing
    }

    /// A drain handled `n` requests by `now`.
    fn handled(&mut self, now: Instant, n: u64) {
        let last = self.last_drain.replace(now);
        let Some(gap) = last.map(|last| now.saturating_duration_since(last)) else {
            return;
        };
        if gap > IDLE_GAP {
            return;
        }
        self.busy += gap;
        self.requests += n;
        if self.busy < EPOCH {
            return;
        }
        let rate = self.requests as f64 / self.busy.as_secs_f64();
        self.busy = Duration::ZERO;
        self.requests = 0;
        if self.settling > 0 {
            self.settling -= 1;
            return;
        }
        if !self.probing {
            self.kept_rate = Some(rate);
            self.since_probe += 1;
            if self.since_probe >= self.probe_gap {
                self.probing = true;
                self.settling = SETTLE_EPOCHS;
            }
            return;
        }
        // A probe compares with the kept mode's last settled epoch before
        // it, under the same load.
        self.probing = false;
        self.since_probe = 0;
        if self.kept_rate.is_some_and(|kept| rate > kept * SWITCH_GAIN) {
            self.polling_pays = !self.polling_pays;
            log::debug!(
                "polling {}: {rate:.0} requests/s against {:.0}",
                if self.polling_pays { "on" } else { "off" },
                self.kept_rate.unwrap_or_default()
            );
            self.probe_gap = PROBE_GAP;
        } else {
            // Back to the kept mode, which settles again.
            self.settling = SETTLE_EPOCHS;
            self.probe_gap = (self.probe_gap * 2).min(PROBE_GAP_MAX);
        }
        self.kept_rate = None;
    }
}

/// The window of one queue.
#[derive(Debug)]
pub struct AdaptivePoll {
    max: Duration,
    window: Duration,
    /// When the worker last went to sleep on the kick eventfd.
    slept_at: Option<Instant>,
    judge: Judge,
    /// `--poll-always`: no judge.
    always: bool,
}

impl AdaptivePoll {
    /// A poller whose window never exceeds `max` (zero disables polling).
    pub fn new(max: Duration) -> Self {
        AdaptivePoll {
            max,
            window: Duration::ZERO,
            slept_at: None,
            judge: Judge::new(),
            always: false,
        }
    }

    /// Polls within the window without asking the judge.
    pub fn always(mut self) -> Self {
        self.always = true;
        self
    }

    /// The current window: zero when polling is off, by the maximum, the
    /// request rate or the judge.
    pub fn window(&self) -> Duration {
        if self.always || self.judge.polls() {
            self.window
        } else {
            Duration::ZERO
        }
    }

    /// A drain of the queue handled `n` requests. The clock is read only
    /// when polling is possible: a worker that never polls (the default)
    /// pays nothing per wakeup for the poller.
    pub fn handled(&mut self, n: u64) {
        if !self.max.is_zero() && !self.always {
            self.judge.handled(Instant::now(), n);
        }
    }

    /// A kick woke the worker: adapt to how long it slept.
    pub fn woken(&mut self) {
        if let Some(slept_at) = self.slept_at.take() {
            self.adapt(Instant::now().saturating_duration_since(slept_at));
        }
    }

    /// The worker goes to sleep, after a poll that found nothing.
    pub fn sleeping(&mut self) {
        if !self.max.is_zero() {
            self.slept_at = Some(Instant::now());
        }
    }

    /// Adapts to one interval from going idle to the next request (`idle`).
    /// A request found while polling keeps the window as it is.
    fn adapt(&mut self, idle: Duration) {
        if self.max.is_zero() {
            return;
        }
        if idle > self.max {
            // Polling could not have caught it: give the CPU back.
            self.window /= 2;
            if self.window < FLOOR {
                self.window = Duration::ZERO;
            }
        } else if idle > self.window {
            // A slightly longer window would have caught it.
            self.window = (self.window * 2).max(START).min(self.max);
        }
    }

    /// Spins for at most the window until `ready` says there is work, and
    /// whether it did. The caller has turned notifications off.
    pub fn poll(&mut self, mut ready: impl FnMut() -> bool) -> bool {
        let window = self.window();
        if window.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            // Reading the clock costs about as much as reading the ring,
            // so check the ring a few times between clock reads.
            for _ in 0..16 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= window {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn requests_closer_than_the_maximum_grow_the_window_to_it() {
        let mut p = AdaptivePoll::new(us(50));
        assert_eq!(p.window, Duration::ZERO, "no polling before a reason to");
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.adapt(us(45));
            seen.push(p.window.as_micros());
        }
        assert_eq!(seen, [4, 8, 16, 32, 50, 50]);
    }

    #[test]
    fn long_sleeps_shrink_the_window_to_nothing() {
        let mut p = AdaptivePoll::new(us(50));
        for _ in 0..5 {
            p.adapt(us(45));
        }
        assert_eq!(p.window, us(50));
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.adapt(Duration::from_millis(5));
            seen.push(p.window.as_micros());
        }
        assert_eq!(seen, [25, 12, 6, 3, 0, 0]);
    }

    #[test]
    fn a_request_inside_the_window_keeps_it() {
        let mut p = AdaptivePoll::new(us(64));
        for _ in 0..3 {
            p.adapt(us(10));
        }
        assert_eq!(p.window, us(16));
        p.adapt(us(5));
        assert_eq!(p.window, us(16));
    }

    #[test]
    fn zero_maximum_never_polls() {
        let mut p = AdaptivePoll::new(Duration::ZERO);
        p.sleeping();
        assert_eq!(p.slept_at, None, "a disabled poller reads no clock");
        p.woken();
        assert_eq!(p.window, Duration::ZERO);
        assert!(!p.poll(|| panic!("a disabled poller looked at the ring")));
    }

    #[test]
    fn poll_stops_at_the_first_sign_of_work_or_at_the_window() {
        let mut p = AdaptivePoll::new(us(500));
        for _ in 0..8 {
            p.adapt(us(400));
        }
        assert_eq!(p.window(), Duration::ZERO, "polling has not shown it pays");
        p.judge.polling_pays = true;
        assert_eq!(p.window(), us(500));
        let mut calls = 0;
        assert!(p.poll(|| {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        let start = Instant::now();
        assert!(!p.poll(|| false));
        assert!(start.elapsed() >= us(500));
    }

    /// Drives a judge with a closed loop of requests, each taking `poll`
    /// or `sleep` depending on the mode, for `total` of simulated time;
    /// returns the share of requests handled while polling.
    fn closed_loop(poll: Duration, sleep: Duration, total: Duration) -> f64 {
        let mut judge = Judge::new();
        let start = Instant::now();
        let mut now = start;
        let (mut polled, mut all) = (0u32, 0u32);
        while now - start < total {
            let polling = judge.polls();
            now += if polling { poll } else { sleep };
            judge.handled(now, 1);
            polled += u32::from(polling);
            all += 1;
        }
        f64::from(polled) / f64::from(all)
    }

    #[test]
    fn polling_that_slows_a_closed_loop_down_stays_off() {
        // This machine: 21 us per request polling, 7 us sleeping.
        let share = closed_loop(us(21), us(7), Duration::from_secs(2));
        assert!(share < 0.05, "{share} of requests polled");
    }

    #[test]
    fn polling_that_speeds_a_closed_loop_up_takes_over() {
        // Where wakeups are dear: 14 us polling, 20 us sleeping.
        let share = closed_loop(us(14), us(20), Duration::from_secs(2));
        assert!(share > 0.9, "only {share} of requests polled");
    }

    #[test]
    fn requests_further_apart_than_an_idle_gap_are_not_judged() {
        let mut judge = Judge::new();
        let mut now = Instant::now();
        for _ in 0..10_000 {
            now += IDLE_GAP + us(1);
            judge.handled(now, 1);
        }
        assert!(!judge.polls() && !judge.probing && judge.kept_rate.is_none());
    }
}
