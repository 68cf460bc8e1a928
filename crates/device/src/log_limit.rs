//! Rate limits for log lines a guest (or a frontend) can trigger at will:
//! a hostile one must not be able to fill the host's log. The counters
//! stay exact; only the lines are limited.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines of one kind logged per window before the rest are held back.
pub const BURST: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Per-kind windows. Kinds are static names (request types, warning
/// kinds), so the table stays small whatever the guest sends.
#[derive(Debug, Default)]
pub struct LogLimit {
    kinds: HashMap<&'static str, Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    held_back: u64,
}

impl LogLimit {
    /// Whether a line of `kind` may be logged now; if so, how many lines
    /// of that kind were held back since the last one logged.
    pub fn allow(&mut self, kind: &'static str) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        let window = self.kinds.entry(kind).or_insert(Window {
            start: now,
            logged: 0,
            held_back: 0,
        });
        if now.duration_since(window.start) >= WINDOW {
            window.start = now;
            window.logged = 0;
        }
        if window.logged >= BURST {
            window.held_back += 1;
            return None;
        }
        window.logged += 1;
        Some(std::mem::take(&mut window.held_back))
    }
}

/// `warn!` through a [`LogLimit`]: `limited_warn!(limit, kind, fmt, ...)`.
/// A line after held-back ones says how many were held back.
#[macro_export]
macro_rules! limited_warn {
    ($limit:expr, $kind:expr, $($arg:tt)+) => {
        if let Some(held_back) = $limit.allow($kind) {
            if held_back > 0 {
                ::log::warn!("{} ({held_back} more like it not logged)", format_args!($($arg)+));
            } else {
                ::log::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gets_a_burst_per_window_and_hears_of_the_rest() {
        let mut limit = LogLimit::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.allow_at("flush", t0), Some(0));
        }
        for _ in 0..500 {
            assert_eq!(limit.allow_at("flush", t0 + Duration::from_secs(1)), None);
        }
        // Another kind has a window of its own.
        assert_eq!(
            limit.allow_at("attach", t0 + Duration::from_secs(1)),
            Some(0)
        );
        // The next window's first line counts what was held back.
        assert_eq!(limit.allow_at("flush", t0 + WINDOW), Some(500));
        assert_eq!(limit.allow_at("flush", t0 + WINDOW), Some(0));
    }
}
