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

use std::time::{Duration, Instant};

/// The first window once polling starts to pay.
const START: Duration = Duration::from_micros(4);
/// Windows below this are not worth a poll: they become zero.
const FLOOR: Duration = Duration::from_micros(2);

/// The window of one queue.
#[derive(Debug)]
pub struct AdaptivePoll {
    max: Duration,
    window: Duration,
    /// When the worker last went to sleep on the kick eventfd.
    slept_at: Option<Instant>,
}

impl AdaptivePoll {
    /// A poller whose window never exceeds `max` (zero disables polling).
    pub fn new(max: Duration) -> Self {
        AdaptivePoll {
            max,
            window: Duration::ZERO,
            slept_at: None,
        }
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// A kick woke the worker at `now`: adapt to how long it slept.
    pub fn woken(&mut self, now: Instant) {
        if let Some(slept_at) = self.slept_at.take() {
            self.adapt(now.saturating_duration_since(slept_at));
        }
    }

    /// The worker goes to sleep at `now`, after a poll that found nothing.
    pub fn sleeping(&mut self, now: Instant) {
        self.slept_at = Some(now);
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
        if self.window.is_zero() {
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
            if start.elapsed() >= self.window {
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
        assert_eq!(p.window(), Duration::ZERO, "no polling before a reason to");
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.adapt(us(45));
            seen.push(p.window().as_micros());
        }
        assert_eq!(seen, [4, 8, 16, 32, 50, 50]);
    }

    #[test]
    fn long_sleeps_shrink_the_window_to_nothing() {
        let mut p = AdaptivePoll::new(us(50));
        for _ in 0..5 {
            p.adapt(us(45));
        }
        assert_eq!(p.window(), us(50));
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.adapt(Duration::from_millis(5));
            seen.push(p.window().as_micros());
        }
        assert_eq!(seen, [25, 12, 6, 3, 0, 0]);
    }

    #[test]
    fn a_request_inside_the_window_keeps_it() {
        let mut p = AdaptivePoll::new(us(64));
        for _ in 0..3 {
            p.adapt(us(10));
        }
        assert_eq!(p.window(), us(16));
        p.adapt(us(5));
        assert_eq!(p.window(), us(16));
    }

    #[test]
    fn zero_maximum_never_polls() {
        let mut p = AdaptivePoll::new(Duration::ZERO);
        let now = Instant::now();
        p.sleeping(now);
        p.woken(now + us(1));
        assert_eq!(p.window(), Duration::ZERO);
        assert!(!p.poll(|| panic!("a disabled poller looked at the ring")));
    }

    #[test]
    fn poll_stops_at_the_first_sign_of_work_or_at_the_window() {
        let mut p = AdaptivePoll::new(us(500));
        for _ in 0..8 {
            p.adapt(us(400));
        }
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
}
