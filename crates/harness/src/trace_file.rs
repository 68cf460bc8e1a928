//! A run on one timeline, as a trace-event JSON file (the format Perfetto,
//! ui.perfetto.dev, and chrome://tracing read): one process per side —
//! the guest kernel's tracepoints (a track per resource, one for shrinker
//! scans), the daemon's events (a track per resource), the harness
//! (workload requests, pressure phases, stalls) — and counter tracks for
//! memory. Times are µs since the run began, on the host clock; guest
//! kernel events carry the uncertainty of their placement in their args.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::ktrace::KernelEvent;
use crate::timeline::Timeline;
use crate::Step;

pub const PID_GUEST_KERNEL: u64 = 1;
pub const PID_DAEMON: u64 = 2;
pub const PID_HARNESS: u64 = 3;
pub const PID_MEMORY: u64 = 4;

/// The guest kernel's track of shrinker scans (resource tracks use ids).
const TID_SCANS: u64 = 0;
const TID_WORKLOAD: u64 = 1;
const TID_PHASES: u64 = 2;
const TID_STALLS: u64 = 3;

/// What goes on the timeline.
pub struct Input<'a> {
    /// Host µs since the Unix epoch that the trace's time 0 stands for.
    pub epoch_us: u64,
    /// Host µs since the Unix epoch of the timeline's `t_s` = 0.
    pub timeline_epoch_us: u64,
    pub kernel: &'a [KernelEvent],
    /// The daemon's trace events, as its control socket gives them.
    pub daemon: &'a [Value],
    /// The workload's agent requests.
    pub steps: &'a [Step],
    pub timeline: &'a Timeline,
    /// Goes to `otherData` (run parameters, clock summary, losses).
    pub other: Value,
}

/// Builds the trace-event JSON object.
pub fn build(input: &Input<'_>) -> Value {
    let mut w = Writer {
        epoch_us: input.epoch_us as f64,
        events: Vec::new(),
    };
    w.process(PID_GUEST_KERNEL, "guest kernel (virtio-gpu tracepoints)");
    w.process(PID_DAEMON, "gpuswap-daemon");
    w.process(PID_HARNESS, "harness");
    w.process(PID_MEMORY, "memory (MiB)");
    w.thread(PID_GUEST_KERNEL, TID_SCANS, "shrinker scans");
    w.thread(PID_HARNESS, TID_WORKLOAD, "workload (agent requests)");
    w.thread(PID_HARNESS, TID_PHASES, "pressure phases");
    w.thread(PID_HARNESS, TID_STALLS, "stalls");

    let mut kernel_resources = BTreeSet::new();
    for e in input.kernel {
        let tid = match e.res() {
            Some(res) if e.name.starts_with("bo_") => {
                kernel_resources.insert(res);
                res
            }
            _ => TID_SCANS,
        };
        let mut args = e.args.clone();
        args.insert("uncertainty_us".into(), json!(e.uncertainty_us.round()));
        args.insert("guest_ns".into(), json!(e.guest_ns));
        args.insert("cpu".into(), json!(e.cpu));
        w.instant(PID_GUEST_KERNEL, tid, &e.name, "guest", e.host_us, args);
    }
    for res in kernel_resources {
        w.thread(PID_GUEST_KERNEL, res, &format!("resource {res}"));
    }

    let mut daemon_resources = BTreeSet::new();
    for e in input.daemon {
        let (Some(time_us), Some(res)) = (e["time_us"].as_u64(), e["resource_id"].as_u64()) else {
            continue;
        };
        daemon_resources.insert(res);
        let mut args = e.as_object().cloned().unwrap_or_default();
        for k in ["time_us", "resource_id", "event"] {
            args.remove(k);
        }
        let name = e["event"].as_str().unwrap_or("event");
        w.instant(PID_DAEMON, res, name, "daemon", time_us as f64, args);
    }
    for res in daemon_resources {
        w.thread(PID_DAEMON, res, &format!("resource {res}"));
    }

    for s in input.steps {
        let mut args = s.args.as_object().cloned().unwrap_or_default();
        args.insert("ok".into(), json!(s.ok));
        w.complete(
            PID_HARNESS,
            TID_WORKLOAD,
            &s.op,
            "workload",
            s.start_us as f64,
            s.end_us.saturating_sub(s.start_us) as f64,
            args,
        );
    }
    let t = input.timeline;
    let at = |t_s: f64| input.timeline_epoch_us as f64 + t_s * 1e6;
    for p in &t.phases {
        let (a, b) = (p.start_s.min(p.end_s), p.start_s.max(p.end_s));
        w.complete(
            PID_HARNESS,
            TID_PHASES,
            &p.name,
            "pressure",
            at(a),
            (b - a) * 1e6,
            Map::new(),
        );
    }
    for s in &t.stalls {
        let (a, b) = (s.start_s.min(s.end_s), s.start_s.max(s.end_s));
        let mut args = Map::new();
        args.insert("unanswered".into(), json!(s.what));
        w.complete(
            PID_HARNESS,
            TID_STALLS,
            "stall",
            "stall",
            at(a),
            (b - a) * 1e6,
            args,
        );
    }
    for s in &t.samples {
        let mut guest = Map::new();
        guest.insert("free".into(), json!(s.guest_free_mib));
        guest.insert("hog".into(), json!(s.hog_mib));
        guest.insert("swap used".into(), json!(s.swap_used_mib));
        if let Some(v) = s.balloon_target_mib {
            guest.insert("balloon target".into(), json!(v));
        }
        if let Some(v) = s.balloon_actual_mib {
            guest.insert("balloon actual".into(), json!(v));
        }
        w.counter("guest memory", at(s.t_s), guest);
        let mut gpu = Map::new();
        gpu.insert("resident".into(), json!(s.resident_mib));
        gpu.insert("evicted".into(), json!(s.evicted_mib));
        w.counter("GPU BOs", at(s.t_s), gpu);
    }
    for d in &t.daemon {
        let mut daemon = Map::new();
        daemon.insert("host copies".into(), json!(d.host_memory_mib));
        if let Some(rss) = d.rss_mib {
            daemon.insert("rss".into(), json!(rss));
        }
        w.counter("daemon", at(d.t_s), daemon);
    }
    json!({
        "traceEvents": w.events,
        "displayTimeUnit": "ms",
        "otherData": input.other,
    })
}

/// Writes the trace of `input` to `path`.
pub fn write(input: &Input<'_>, path: &Path) -> crate::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string(&build(input)).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

struct Writer {
    epoch_us: f64,
    events: Vec<Value>,
}

impl Writer {
    fn ts(&self, host_us: f64) -> f64 {
        // Whole ns: enough, and keeps the file small.
        ((host_us - self.epoch_us) * 1e3).round() / 1e3
    }

    fn process(&mut self, pid: u64, name: &str) {
        self.events.push(
            json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
            "args": {"name": name}}),
        );
        self.events.push(
            json!({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
            "args": {"sort_index": pid}}),
        );
    }

    fn thread(&mut self, pid: u64, tid: u64, name: &str) {
        self.events.push(
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
            "args": {"name": name}}),
        );
        self.events.push(
            json!({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
            "args": {"sort_index": tid}}),
        );
    }

    fn instant(
        &mut self,
        pid: u64,
        tid: u64,
        name: &str,
        cat: &str,
        host_us: f64,
        args: Map<String, Value>,
    ) {
        self.events
            .push(json!({"ph": "i", "s": "t", "name": name, "cat": cat,
            "pid": pid, "tid": tid, "ts": self.ts(host_us), "args": args}));
    }

    #[allow(clippy::too_many_arguments)]
    fn complete(
        &mut self,
        pid: u64,
        tid: u64,
        name: &str,
        cat: &str,
        host_us: f64,
        dur_us: f64,
        args: Map<String, Value>,
    ) {
        self.events.push(
            json!({"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid,
            "ts": self.ts(host_us), "dur": (dur_us.max(0.0) * 1e3).round() / 1e3, "args": args}),
        );
    }

    fn counter(&mut self, name: &str, host_us: f64, series: Map<String, Value>) {
        self.events
            .push(json!({"ph": "C", "name": name, "pid": PID_MEMORY, "tid": 0,
            "ts": self.ts(host_us), "args": series}));
    }
}

/// What [`validate`] found in a valid file.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub events: usize,
    pub instants: usize,
    pub completes: usize,
    pub counters: usize,
    pub metadata: usize,
    /// Process ids that have a `process_name`.
    pub named_processes: BTreeSet<u64>,
}

/// Checks `v` against the trace-event format as viewers read it (the
/// JSON object form): every event has a known `ph`, a name, integer
/// `pid`/`tid`, a finite `ts` (but metadata), `X` a duration >= 0, `i` a
/// scope, `C` numeric series, `M` a known name and its arg; `args` is an
/// object where present.
pub fn validate(v: &Value) -> Result<Summary, String> {
    let events = v
        .get("traceEvents")
        .and_then(Value::as_array)
        .ok_or("no traceEvents array")?;
    let mut s = Summary {
        events: events.len(),
        ..Summary::default()
    };
    for (i, e) in events.iter().enumerate() {
        let bad = |why: &str| format!("event {i} {why}: {e}");
        let ph = e["ph"].as_str().ok_or_else(|| bad("has no ph"))?;
        e["name"].as_str().ok_or_else(|| bad("has no name"))?;
        let pid = e["pid"].as_u64().ok_or_else(|| bad("has no integer pid"))?;
        e["tid"].as_u64().ok_or_else(|| bad("has no integer tid"))?;
        if e.get("args").is_some_and(|a| !a.is_object()) {
            return Err(bad("has args that are not an object"));
        }
        if ph != "M" && !e["ts"].as_f64().is_some_and(f64::is_finite) {
            return Err(bad("has no finite ts"));
        }
        match ph {
            "i" | "I" => {
                if !matches!(e["s"].as_str(), None | Some("g" | "p" | "t")) {
                    return Err(bad("has an unknown scope"));
                }
                s.instants += 1;
            }
            "X" => {
                if !e["dur"].as_f64().is_some_and(|d| d.is_finite() && d >= 0.0) {
                    return Err(bad("has no duration >= 0"));
                }
                s.completes += 1;
            }
            "C" => {
                let args = e["args"].as_object().ok_or_else(|| bad("has no series"))?;
                if args.is_empty()
                    || !args
                        .values()
                        .all(|v| v.as_f64().is_some_and(f64::is_finite))
                {
                    return Err(bad("has a series that is not a number"));
                }
                s.counters += 1;
            }
            "M" => {
                let (key, named) = match e["name"].as_str() {
                    Some("process_name") => ("name", true),
                    Some("thread_name") => ("name", false),
                    Some("process_sort_index" | "thread_sort_index") => ("sort_index", false),
                    _ => return Err(bad("is metadata of an unknown kind")),
                };
                if e["args"].get(key).is_none() {
                    return Err(bad("is metadata without its arg"));
                }
                if named {
                    s.named_processes.insert(pid);
                }
                s.metadata += 1;
            }
            _ => return Err(bad("has an unknown ph")),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Sample;

    fn kernel(name: &str, host_us: f64, res: u64, gen: u64) -> KernelEvent {
        let mut args = Map::new();
        args.insert("res".into(), json!(res));
        args.insert("gen".into(), json!(gen));
        KernelEvent {
            host_us,
            uncertainty_us: 12.4,
            guest_ns: 5,
            cpu: 1,
            name: name.into(),
            args,
        }
    }

    #[test]
    fn a_run_becomes_a_valid_trace() {
        let mut timeline = Timeline::new();
        timeline.push_phase(0.0, 1.5, "ramp");
        timeline.push_stall(0.5, 0.7, "sampler");
        timeline.push_sample(Sample {
            t_s: 1.0,
            guest_free_mib: 100.0,
            balloon_target_mib: None,
            balloon_actual_mib: Some(300.0),
            hog_mib: 50.0,
            resident_mib: 10.0,
            evicted_mib: 4.0,
            swap_used_mib: 3.0,
        });
        let kernel = [
            kernel("bo_detach", 1_000_100.0, 7, 2),
            kernel("shrinker_scan", 1_000_200.0, 0, 0),
        ];
        let daemon = [json!({"seq": 3, "time_us": 1_000_150u64, "resource_id": 7,
            "generation": 2, "event": "detach", "reason": "command"})];
        let steps = [Step {
            op: "write".into(),
            args: json!({"handle": 3}),
            start_us: 1_000_000,
            end_us: 1_000_090,
            ok: true,
        }];
        let v = build(&Input {
            epoch_us: 1_000_000,
            timeline_epoch_us: 900_000,
            kernel: &kernel,
            daemon: &daemon,
            steps: &steps,
            timeline: &timeline,
            other: json!({"seed": 1}),
        });
        let s = validate(&v).unwrap();
        assert_eq!(s.instants, 3);
        assert_eq!(s.completes, 3);
        assert_eq!(s.counters, 2);
        assert_eq!(
            s.named_processes,
            [1, 2, 3, 4].into_iter().collect::<BTreeSet<u64>>()
        );
        let events = v["traceEvents"].as_array().unwrap();
        let find = |name: &str| events.iter().find(|e| e["name"] == name).unwrap();
        let detach = find("bo_detach");
        assert_eq!(
            (detach["pid"].as_u64(), detach["tid"].as_u64()),
            (Some(1), Some(7))
        );
        assert_eq!(detach["ts"], 100.0);
        assert_eq!(detach["args"]["uncertainty_us"], 12.0);
        assert_eq!(find("shrinker_scan")["tid"], 0);
        let d = find("detach");
        assert_eq!(
            (d["pid"].as_u64(), d["ts"].as_f64()),
            (Some(2), Some(150.0))
        );
        assert_eq!(d["args"]["generation"], 2);
        assert_eq!(find("write")["dur"], 90.0);
        // Timeline times are relative to their own epoch, 0.1 s earlier.
        assert_eq!(find("ramp")["ts"], -100_000.0);
        assert_eq!(find("GPU BOs")["ts"], 900_000.0);
        assert!(events
            .iter()
            .any(|e| e["name"] == "thread_name" && e["args"]["name"] == "resource 7"));
        assert_eq!(v["otherData"]["seed"], 1);
    }

    #[test]
    fn malformed_traces_are_refused() {
        assert!(validate(&json!([])).is_err());
        for bad in [
            json!({"ph": "i", "name": "a", "pid": 1, "tid": 1}),
            json!({"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 1.0}),
            json!({"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 1.0, "dur": -1.0}),
            json!({"ph": "C", "name": "a", "pid": 1, "tid": 0, "ts": 1.0, "args": {"x": "y"}}),
            json!({"ph": "M", "name": "color", "pid": 1, "tid": 0, "args": {}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 0, "args": {}}),
            json!({"ph": "i", "name": "a", "pid": -1, "tid": 1, "ts": 1.0}),
            json!({"ph": "i", "s": "x", "name": "a", "pid": 1, "tid": 1, "ts": 1.0}),
            json!({"ph": "i", "name": "a", "pid": 1, "tid": 1, "ts": 1.0, "args": 3}),
            json!({"ph": "Q", "name": "a", "pid": 1, "tid": 1, "ts": 1.0}),
            json!({"ph": "i", "pid": 1, "tid": 1, "ts": 1.0}),
        ] {
            let v = json!({ "traceEvents": [bad] });
            assert!(validate(&v).is_err(), "accepted {v}");
        }
    }
}
