//! The guest kernel's virtio-gpu tracepoints on the host's clock.
//!
//! The guest sampler streams the events (`trace_read`, see the guest
//! tool's `ktrace`), stamped with the guest's CLOCK_MONOTONIC. Each read
//! also carries the guest's clock as the reply was made; the host notes its
//! own clock (Unix time, the daemon's trace clock) before sending and after
//! receiving, so every read is one estimate of the offset between the two
//! clocks, good to half its round trip. The two clocks may drift apart (a
//! guest's idea of its TSC rate is calibrated or told, never exact), so an
//! event is placed by interpolating the offset between the estimates
//! before and after it that bound it best; its stated uncertainty is the
//! larger of their half round trips plus [`MIN_DRIFT_PPM`] of the distance
//! to the farther one (the drift may change in between). An event outside
//! the estimates is extrapolated with the drift measured over the run.
//!
//! (A TCG guest keeps good time only with the TSC as its clocksource,
//! which `qemu-scripts/gpuswap-vm` sees to; with refined-jiffies its clock
//! lags in 4 ms steps and catches up, and no offset model holds.)

use gpuswap_api::agent::KernelEvents;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Events kept on the host; more are dropped and counted.
pub const CAPACITY: usize = 1 << 18;
/// Clock estimates kept (one per sampler period: hours of them).
const MAX_CLOCK_SAMPLES: usize = 1 << 16;
/// Estimates looked at on each side of an event's time.
const NEIGHBOURS: usize = 32;
/// How much the drift may change between two estimates, in parts per
/// million of the time between them.
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

/// The drift of the guest's clock against the host's: host µs gained per
/// guest µs, and how far off that may be.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Drift {
    rate: f64,
    error: f64,
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

    /// The drift: the median of the slopes between estimates half the run
    /// apart (robust against the odd estimate off by its long round trip),
    /// with an error from their typical round trip. None with fewer than 4
    /// estimates or under 1 s.
    fn drift(&self) -> Option<Drift> {
        let n = self.samples.len();
        if n < 4 {
            return None;
        }
        let half = n / 2;
        let pairs = || (0..n - half).map(|i| (self.samples[i], self.samples[i + half]));
        let mut slopes: Vec<f64> = pairs()
            .filter(|(a, b)| b.guest_us - a.guest_us >= 1e6)
            .map(|(a, b)| (b.offset_us() - a.offset_us()) / (b.guest_us - a.guest_us))
            .collect();
        if slopes.is_empty() {
            return None;
        }
        slopes.sort_by(f64::total_cmp);
        let mut spans: Vec<f64> = pairs().map(|(a, b)| b.guest_us - a.guest_us).collect();
        spans.sort_by(f64::total_cmp);
        let mut rtts: Vec<f64> = self.samples.iter().map(|s| s.half_rtt_us).collect();
        rtts.sort_by(f64::total_cmp);
        Some(Drift {
            rate: slopes[slopes.len() / 2],
            error: 2.0 * rtts[n / 2] / spans[spans.len() / 2],
        })
    }

    /// The drift measured over the run, in ppm.
    pub fn drift_ppm(&self) -> Option<f64> {
        self.drift().map(|d| d.rate * 1e6)
    }

    /// A guest time (ns) on the host clock (µs since the Unix epoch), with
    /// its uncertainty (µs); None without any estimate.
    pub fn to_host(&self, guest_ns: u64) -> Option<(f64, f64)> {
        self.to_host_with(guest_ns, self.drift())
    }

    fn to_host_with(&self, guest_ns: u64, drift: Option<Drift>) -> Option<(f64, f64)> {
        let g = guest_ns as f64 / 1e3;
        let change = MIN_DRIFT_PPM / 1e6;
        let at = self.samples.partition_point(|s| s.guest_us <= g);
        let bound = |s: &ClockSample| s.half_rtt_us + (g - s.guest_us).abs() * change;
        let best = |range: &[ClockSample]| {
            range
                .iter()
                .min_by(|a, b| bound(a).total_cmp(&bound(b)))
                .copied()
        };
        let before = best(&self.samples[at.saturating_sub(NEIGHBOURS)..at]);
        let after = best(&self.samples[at..(at + NEIGHBOURS).min(self.samples.len())]);
        match (before, after) {
            (Some(a), Some(b)) if b.guest_us > a.guest_us => {
                let f = (g - a.guest_us) / (b.guest_us - a.guest_us);
                let offset = a.offset_us() + (b.offset_us() - a.offset_us()) * f;
                let far = (g - a.guest_us).max(b.guest_us - g);
                Some((g + offset, a.half_rtt_us.max(b.half_rtt_us) + far * change))
            }
            (Some(s), _) | (None, Some(s)) => {
                let (rate, error) = drift.map_or((0.0, change), |d| (d.rate, d.error + change));
                let d = g - s.guest_us;
                Some((
                    g + s.offset_us() + rate * d,
                    s.half_rtt_us + d.abs() * error,
                ))
            }
            (None, None) => None,
        }
    }

    /// Every estimate, in guest time order.
    pub fn samples(&self) -> &[ClockSample] {
        &self.samples
    }

    pub fn summary(&self) -> Value {
        let mut rtts: Vec<f64> = self.samples.iter().map(|s| s.half_rtt_us).collect();
        rtts.sort_by(f64::total_cmp);
        let drift = self.drift();
        json!({
            "estimates": self.samples.len(),
            "best_half_round_trip_us": rtts.first(),
            "median_half_round_trip_us": rtts.get(rtts.len() / 2),
            "drift_ppm": drift.map(|d| d.rate * 1e6),
            "drift_error_ppm": drift.map(|d| d.error * 1e6),
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
    /// Reads whose reply did not come within the stall bound: their events
    /// are lost (the guest handed them over).
    pub abandoned_reads: u64,
}

impl KernelTrace {
    /// Takes one `trace_read` reply, sent at `sent_us` and received at
    /// `received_us` (host µs since the Unix epoch). Returns how many events
    /// the guest still holds.
    pub fn absorb(&mut self, reply: &KernelEvents, sent_us: u64, received_us: u64) -> u64 {
        self.clock.push(sent_us, received_us, reply.mono_ns);
        for e in &reply.events {
            if self.raw.len() >= CAPACITY {
                self.host_dropped += 1;
                continue;
            }
            let name = e.name.strip_prefix("virtio_gpu_").unwrap_or(&e.name);
            self.raw.push(Raw {
                guest_ns: e.t_ns,
                cpu: u64::from(e.cpu),
                name: name.to_string(),
                args: e.args.clone(),
            });
        }
        self.guest_dropped = reply.dropped;
        self.guest_unparsed = reply.unparsed;
        self.kernel_overrun = reply.kernel_overrun;
        if let Some(e) = &reply.reader_error {
            self.reader_error = Some(e.clone());
        }
        reply.pending as u64
    }

    /// Every event on the host clock, in time order (none without a clock
    /// estimate).
    pub fn events(&self) -> Vec<KernelEvent> {
        let drift = self.clock.drift();
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
    /// line up (`events`: [`KernelTrace::events`], placed once by the caller).
    pub fn summary(&self, events: &[KernelEvent]) -> Value {
        let mut by_name: std::collections::BTreeMap<&str, u64> = Default::default();
        for r in &self.raw {
            *by_name.entry(&r.name).or_default() += 1;
        }
        let mut bounds: Vec<f64> = events.iter().map(|e| e.uncertainty_us).collect();
        bounds.sort_by(f64::total_cmp);
        json!({
            "unavailable": self.unavailable,
            "events": self.raw.len(),
            "uncertainty_us": {
                "median": bounds.get(bounds.len() / 2).map(|u| u.round()),
                "max": bounds.last().map(|u| u.round()),
            },
            "by_event": by_name,
            "lost": {
                "host_buffer_full": self.host_dropped,
                "guest_buffer_full": self.guest_dropped,
                "kernel_ring_overrun": self.kernel_overrun,
                "unparsed_lines": self.guest_unparsed,
                "reads_abandoned": self.abandoned_reads,
            },
            "reader_error": self.reader_error,
            "clock": self.clock.summary(),
        })
    }
}

/// How soon evicted buffers were needed again: for each `bo_evict`, the
/// time to the same resource's next `bo_restore` (a resource id reused
/// after an UNREF would count as a restore: the harness closes buffers
/// rarely, and those evictions mostly end in a purge or a close, which the
/// `never_restored` count shows). `refault_share` is the share restored
/// within `within_s`: evictions reclaim paid for twice.
pub fn refaults(events: &[KernelEvent], within_s: f64) -> Value {
    let mut waits: Vec<f64> = Vec::new();
    let mut never = 0u64;
    for (i, e) in events.iter().enumerate() {
        if e.name != "bo_evict" {
            continue;
        }
        let next = events[i + 1..]
            .iter()
            .find(|n| n.res() == e.res() && matches!(n.name.as_str(), "bo_restore" | "bo_evict"));
        match next {
            Some(n) if n.name == "bo_restore" => waits.push((n.host_us - e.host_us) / 1e6),
            _ => never += 1,
        }
    }
    waits.sort_by(f64::total_cmp);
    let evictions = waits.len() as u64 + never;
    let soon = waits.iter().filter(|&&w| w <= within_s).count() as u64;
    json!({
        "evictions": evictions,
        "restored": waits.len(),
        "never_restored": never,
        "restored_within_s": within_s,
        "refaults": soon,
        "refault_share": (evictions > 0).then(|| soon as f64 / evictions as f64),
        "median_s_to_restore": waits.get(waits.len() / 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_between_estimates_is_interpolated() {
        let mut c = ClockSync::default();
        // Guest clock = host - 1_000_000 µs at host 2 s, 1% slow: by host
        // 3 s it lags 10 ms more. Round trips of 400 and 40 µs.
        c.push(2_000_000, 2_000_400, 1_000_200_000);
        c.push(3_000_000, 3_000_040, 1_990_218_000);
        // Halfway in guest time.
        let (host, bound) = c.to_host(1_495_209_000).unwrap();
        assert!((host - 2_500_110.0).abs() < 1e-3, "{host}");
        // The worse half round trip, plus 20 ppm of ~0.5 s.
        assert!((bound - 209.9).abs() < 0.1, "{bound}");
        assert_eq!(ClockSync::default().to_host(5), None);
    }

    #[test]
    fn drift_is_measured_and_extrapolated_with() {
        let mut c = ClockSync::default();
        // The guest clock runs 100 ppm slow over 100 s.
        for i in 0..100u64 {
            let host = 1_000_000 + i * 1_000_000;
            let guest_us = i as f64 * 1e6 * (1.0 - 100e-6);
            c.push(host, host + 10, (guest_us * 1e3) as u64);
        }
        let drift = c.drift_ppm().unwrap();
        assert!((drift - 100.0).abs() < 0.1, "{drift}");
        // 10 s after the last estimate, guest time.
        let last_guest_us = 99e6 * (1.0 - 100e-6);
        let g = last_guest_us + 10e6;
        let (host, bound) = c.to_host((g * 1e3) as u64).unwrap();
        let truth = 1_000_005.0 + g / (1.0 - 100e-6);
        assert!((host - truth).abs() < 5.0, "{host} vs {truth}");
        assert!(bound >= (host - truth).abs() && bound < 300.0, "{bound}");
        assert_eq!(c.summary()["estimates"], 100);
    }

    #[test]
    fn refaults_are_evictions_restored_soon() {
        let at = |name: &str, s: f64, res: u64| KernelEvent {
            host_us: s * 1e6,
            uncertainty_us: 1.0,
            guest_ns: 0,
            cpu: 0,
            name: name.into(),
            args: json!({"res": res}).as_object().unwrap().clone(),
        };
        let events = [
            at("bo_evict", 1.0, 1),
            at("bo_evict", 1.1, 2),
            at("bo_restore", 1.5, 1),
            at("bo_evict", 2.0, 1),
            at("bo_restore", 5.1, 2),
            at("bo_evict", 6.0, 3),
        ];
        let r = refaults(&events, 1.0);
        assert_eq!(r["evictions"], 4);
        assert_eq!(r["refaults"], 1);
        assert_eq!(r["never_restored"], 2);
        assert_eq!(r["refault_share"], 0.25);
        assert_eq!(r["median_s_to_restore"], 4.0);
    }

    #[test]
    fn reads_are_absorbed_and_losses_kept() {
        let mut t = KernelTrace::default();
        let reply: KernelEvents = serde_json::from_value(json!({
            "events": [
                {"t_ns": 5_000_000_000u64, "cpu": 1, "name": "virtio_gpu_bo_detach",
                 "args": {"res": 7, "size": 4096, "gen": 2, "purge": 0}},
                {"t_ns": 4_000_000_000u64, "cpu": 0, "name": "virtio_gpu_bo_attach",
                 "args": {"res": 7, "size": 4096, "gen": 2, "entries": 1, "use": "transfer"}},
            ],
            "pending": 3, "dropped": 2, "unparsed": 1, "kernel_overrun": 4,
            "mono_ns": 6_000_000_000u64,
        }))
        .unwrap();
        assert_eq!(t.absorb(&reply, 10_000_000, 10_000_100), 3);
        let events = t.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].name, "bo_attach");
        assert_eq!((events[1].res(), events[1].gen()), (Some(7), Some(2)));
        assert!((events[1].host_us - 9_000_050.0).abs() < 1e-6);
        let s = t.summary(&events);
        assert_eq!(s["lost"]["guest_buffer_full"], 2);
        assert_eq!(s["lost"]["kernel_ring_overrun"], 4);
        assert_eq!(s["by_event"]["bo_detach"], 1);
    }
}
