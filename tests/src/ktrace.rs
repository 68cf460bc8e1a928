//! The guest kernel's virtio-gpu tracepoints on the host's clock.
//!
//! The guest sampler streams the events (`trace_read`, see the guest
//! tool's `ktrace`), stamped with the guest's CLOCK_MONOTONIC. Each read
//! also carries the guest's clock as the reply was made; the host notes its
//! own clock (Unix time, the daemon's trace clock) before sending and after
//! receiving, so every read is one estimate of the offset between the two
//! clocks, good to half its round trip. An event is placed with the
//! estimate that bounds it best: the smallest half round trip plus a drift
//! allowance for the distance in time (twice the drift measured over the
//! run, at least [`MIN_DRIFT_PPM`]); that bound is its stated uncertainty.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// Events kept on the host; more are dropped and counted.
pub const CAPACITY: usize = 1 << 18;
/// Clock estimates kept (one per sampler period: hours of them).
const MAX_CLOCK_SAMPLES: usize = 1 << 16;
/// Estimates looked at on each side of an event's time.
const NEIGHBOURS: usize = 64;
/// The least drift between the two clocks assumed, in parts per million.
pub const MIN_DRIFT_PPM: f64 = 20.0;

/// One estimate: host time (µs since the Unix epoch) at the middle of a
/// round trip, the guest's clock then (µs), and half the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClockSample {
    pub host_us: f64,
    pub guest_us: f64,
    pub half_rtt_us: f64,
}

impl ClockSample {
    fn offset_us(&self) -> f64 {
        self.host_us - self.guest_us
    }
}

/// Guest-to-host clock estimates, in guest time order.
#[derive(Debug, Clone, Default)]
pub struct ClockSync {
    samples: Vec<ClockSample>,
}

impl ClockSync {
    /// One round trip: the host clock before and after, the guest's reading.
    pub fn push(&mut self, sent_us: u64, received_us: u64, guest_ns: u64) {
        if self.samples.len() >= MAX_CLOCK_SAMPLES || received_us < sent_us {
            return;
        }
        let sample = ClockSample {
            host_us: (sent_us as f64 + received_us as f64) / 2.0,
            guest_us: guest_ns as f64 / 1e3,
            half_rtt_us: (received_us - sent_us) as f64 / 2.0,
        };
        let at = self
            .samples
            .partition_point(|s| s.guest_us <= sample.guest_us);
        self.samples.insert(at, sample);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The drift of the guest's clock against the host's, in ppm: the
    /// offset change between the best estimates of the first and last
    /// tenth of the run (None with fewer than 20 estimates or under 10 s).
    pub fn drift_ppm(&self) -> Option<f64> {
        let n = self.samples.len();
        if n < 20 {
            return None;
        }
        let best = |s: &[ClockSample]| {
            s.iter()
                .min_by(|a, b| a.half_rtt_us.total_cmp(&b.half_rtt_us))
                .copied()
        };
        let (a, b) = (
            best(&self.samples[..n / 10])?,
            best(&self.samples[n - n / 10..])?,
        );
        let span = b.guest_us - a.guest_us;
        (span >= 10e6).then(|| (b.offset_us() - a.offset_us()) / span * 1e6)
    }

    fn drift_allowance(&self) -> f64 {
        self.drift_ppm()
            .map_or(MIN_DRIFT_PPM, |d| (2.0 * d.abs()).max(MIN_DRIFT_PPM))
            / 1e6
    }

    /// A guest time (ns) on the host clock (µs since the Unix epoch), with
    /// its uncertainty (µs); None without any estimate.
    pub fn to_host(&self, guest_ns: u64) -> Option<(f64, f64)> {
        self.to_host_with(guest_ns, self.drift_allowance())
    }

    fn to_host_with(&self, guest_ns: u64, drift: f64) -> Option<(f64, f64)> {
        let g = guest_ns as f64 / 1e3;
        let at = self.samples.partition_point(|s| s.guest_us <= g);
        let lo = at.saturating_sub(NEIGHBOURS);
        let hi = (at + NEIGHBOURS).min(self.samples.len());
        self.samples[lo..hi]
            .iter()
            .map(|s| (s, s.half_rtt_us + (g - s.guest_us).abs() * drift))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, bound)| (g + s.offset_us(), bound))
    }

    pub fn summary(&self) -> Value {
        let mut rtts: Vec<f64> = self.samples.iter().map(|s| s.half_rtt_us).collect();
        rtts.sort_by(f64::total_cmp);
        json!({
            "estimates": self.samples.len(),
            "best_half_round_trip_us": rtts.first(),
            "median_half_round_trip_us": rtts.get(rtts.len() / 2),
            "drift_ppm": self.drift_ppm(),
            "drift_allowance_ppm": self.drift_allowance() * 1e6,
        })
    }
}

/// One guest kernel event, placed on the host clock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelEvent {
    /// µs since the Unix epoch, and its uncertainty.
    pub host_us: f64,
    pub uncertainty_us: f64,
    /// The guest's CLOCK_MONOTONIC, ns.
    pub guest_ns: u64,
    pub cpu: u64,
    /// Without the `virtio_gpu_` prefix: `bo_evict`, `shrinker_scan`, ...
    pub name: String,
    pub args: Map<String, Value>,
}

impl KernelEvent {
    /// The host resource id of a BO event.
    pub fn res(&self) -> Option<u64> {
        self.args.get("res").and_then(Value::as_u64)
    }

    /// The attach generation of a BO event.
    pub fn gen(&self) -> Option<u64> {
        self.args.get("gen").and_then(Value::as_u64)
    }
}

#[derive(Debug, Clone)]
struct Raw {
    guest_ns: u64,
    cpu: u64,
    name: String,
    args: Map<String, Value>,
}

/// Everything the guest kernel's trace gave over a run.
#[derive(Debug, Clone, Default)]
pub struct KernelTrace {
    raw: Vec<Raw>,
    pub clock: ClockSync,
    /// Why there is no trace (`trace_start` failed), if so.
    pub unavailable: Option<String>,
    /// Events the host did not keep (over [`CAPACITY`]).
    pub host_dropped: u64,
    /// The guest's own counts, from its last read.
    pub guest_dropped: u64,
    pub guest_unparsed: u64,
    pub kernel_overrun: u64,
    pub reader_error: Option<String>,
}

impl KernelTrace {
    /// Takes one `trace_read` reply, sent at `sent_us` and received at
    /// `received_us` (host µs since the Unix epoch). Returns how many events
    /// the guest still holds.
    pub fn absorb(&mut self, reply: &Value, sent_us: u64, received_us: u64) -> u64 {
        if let Some(mono) = reply["mono_ns"].as_u64() {
            self.clock.push(sent_us, received_us, mono);
        }
        for e in reply["events"].as_array().into_iter().flatten() {
            let (Some(guest_ns), Some(name)) = (e["t_ns"].as_u64(), e["name"].as_str()) else {
                continue;
            };
            if self.raw.len() >= CAPACITY {
                self.host_dropped += 1;
                continue;
            }
            self.raw.push(Raw {
                guest_ns,
                cpu: e["cpu"].as_u64().unwrap_or(0),
                name: name.strip_prefix("virtio_gpu_").unwrap_or(name).to_string(),
                args: e["args"].as_object().cloned().unwrap_or_default(),
            });
        }
        let n = |k: &str| reply[k].as_u64().unwrap_or(0);
        self.guest_dropped = n("dropped");
        self.guest_unparsed = n("unparsed");
        self.kernel_overrun = n("kernel_overrun");
        if let Some(e) = reply["reader_error"].as_str() {
            self.reader_error = Some(e.to_string());
        }
        n("pending")
    }

    /// Every event on the host clock, in time order (none without a clock
    /// estimate).
    pub fn events(&self) -> Vec<KernelEvent> {
        let drift = self.clock.drift_allowance();
        let mut out: Vec<KernelEvent> = self
            .raw
            .iter()
            .filter_map(|r| {
                let (host_us, uncertainty_us) = self.clock.to_host_with(r.guest_ns, drift)?;
                Some(KernelEvent {
                    host_us,
                    uncertainty_us,
                    guest_ns: r.guest_ns,
                    cpu: r.cpu,
                    name: r.name.clone(),
                    args: r.args.clone(),
                })
            })
            .collect();
        out.sort_by_key(|e| e.guest_ns);
        out
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// For the report: what was kept and lost, and how well the clocks
    /// line up.
    pub fn summary(&self) -> Value {
        let mut by_name: std::collections::BTreeMap<&str, u64> = Default::default();
        for r in &self.raw {
            *by_name.entry(&r.name).or_default() += 1;
        }
        json!({
            "unavailable": self.unavailable,
            "events": self.raw.len(),
            "by_event": by_name,
            "lost": {
                "host_buffer_full": self.host_dropped,
                "guest_buffer_full": self.guest_dropped,
                "kernel_ring_overrun": self.kernel_overrun,
                "unparsed_lines": self.guest_unparsed,
            },
            "reader_error": self.reader_error,
            "clock": self.clock.summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_estimate_places_an_event() {
        let mut c = ClockSync::default();
        // Guest clock = host - 1_000_000 µs; round trips of 400 and 40 µs.
        c.push(2_000_000, 2_000_400, 1_000_200_000);
        c.push(3_000_000, 3_000_040, 2_000_020_000);
        let (host, bound) = c.to_host(2_000_000_000).unwrap();
        assert!((host - 3_000_000.0).abs() < 1e-6, "{host}");
        // 20 µs half round trip, plus 20 ppm of 20 µs.
        assert!((bound - 20.0004).abs() < 1e-6, "{bound}");
        // A second away, the sharp estimate still bounds it best.
        let (_, far) = c.to_host(1_000_000_000).unwrap();
        assert!((far - 40.0004).abs() < 1e-6, "{far}");
        assert_eq!(ClockSync::default().to_host(5), None);
    }

    #[test]
    fn drift_is_measured_and_widens_the_allowance() {
        let mut c = ClockSync::default();
        // The guest clock runs 100 ppm slow over 100 s.
        for i in 0..100u64 {
            let host = 1_000_000 + i * 1_000_000;
            let guest_us = i as f64 * 1e6 * (1.0 - 100e-6);
            c.push(host, host + 10, (guest_us * 1e3) as u64);
        }
        let drift = c.drift_ppm().unwrap();
        assert!((drift - 100.0).abs() < 1.0, "{drift}");
        assert!((c.summary()["drift_allowance_ppm"].as_f64().unwrap() - 2.0 * drift).abs() < 1e-6);
    }

    #[test]
    fn reads_are_absorbed_and_losses_kept() {
        let mut t = KernelTrace::default();
        let reply = json!({
            "ok": true,
            "events": [
                {"t_ns": 5_000_000_000u64, "cpu": 1, "name": "virtio_gpu_bo_detach",
                 "args": {"res": 7, "size": 4096, "gen": 2, "purge": 0}},
                {"t_ns": 4_000_000_000u64, "cpu": 0, "name": "virtio_gpu_bo_attach",
                 "args": {"res": 7, "size": 4096, "gen": 2, "entries": 1, "use": "transfer"}},
                {"cpu": 0, "name": "no time"},
            ],
            "pending": 3, "dropped": 2, "unparsed": 1, "kernel_overrun": 4,
            "mono_ns": 6_000_000_000u64,
        });
        assert_eq!(t.absorb(&reply, 10_000_000, 10_000_100), 3);
        let events = t.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].name, "bo_attach");
        assert_eq!((events[1].res(), events[1].gen()), (Some(7), Some(2)));
        assert!((events[1].host_us - 9_000_050.0).abs() < 1e-6);
        let s = t.summary();
        assert_eq!(s["lost"]["guest_buffer_full"], 2);
        assert_eq!(s["lost"]["kernel_ring_overrun"], 4);
        assert_eq!(s["by_event"]["bo_detach"], 1);
    }
}
