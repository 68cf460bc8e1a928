//! What a run tells its user: the live progress line, the JSON report, the
//! timeline picture and the human summary (with, on failure, each failed
//! buffer's story from the guest and from the daemon, and the command that
//! reproduces the run).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Outcome, Run};
use crate::ktrace::KernelEvent;
use crate::{timeline, trace_file};

/// Without a terminal, a progress line this often (CI logs).
const PLAIN_EVERY: Duration = Duration::from_secs(15);

pub struct Progress {
    terminal: bool,
    enabled: bool,
    last_plain: Option<Instant>,
    drawn: bool,
}

impl Progress {
    pub fn new(forced: Option<bool>) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            terminal,
            enabled: forced.unwrap_or(true),
            last_plain: None,
            drawn: false,
        }
    }

    /// Shows `line`: redrawn in place on a terminal, else now and then.
    pub(super) fn show(&mut self, line: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
        } else if self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            let _ = writeln!(err, "{line}");
            self.last_plain = Some(Instant::now());
        }
    }

    /// Ends the progress line so that what follows starts on its own line.
    pub fn clear(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

impl Run {
    /// Phase, time left, pressure, evictions/restores, GPU memory.
    pub(super) fn progress_line(&self, phase: &str) -> String {
        let left = self.o.duration.saturating_sub(self.started.elapsed());
        let (s, counts) = match &self.sampler {
            Some(sampler) => sampler.latest(),
            None => (self.timeline.samples.last().cloned(), self.last_counts),
        };
        let s = s.as_ref();
        format!(
            "[{} {phase:<8}] {:>4} s left | level {:>3.0}% | evictions {:>6} restores {:>6} | GPU resident {:>6.1} MiB evicted {:>6.1} MiB | guest free {:>5.1} MiB | checks {}",
            self.o.scenario,
            left.as_secs(),
            self.pressure.level * 100.0,
            counts.evictions,
            counts.restores,
            s.map_or(0.0, |s| s.resident_mib),
            s.map_or(0.0, |s| s.evicted_mib),
            s.map_or(0.0, |s| s.guest_free_mib),
            if self.checks.passed() { "ok" } else { "FAILING" },
        )
    }

    /// Writes the JSON report and the picture, prints the summary.
    pub(super) fn report(
        &mut self,
        guest: Value,
        status: Value,
        counters: Value,
        shrinker: Value,
        logs: PathBuf,
    ) -> crate::Result<Outcome> {
        let passed = self.checks.passed();
        let picture_path = self.o.picture_path();
        let title = format!(
            "gpuswap {} run, seed {}: {}",
            self.o.scenario,
            self.o.seed,
            if passed { "passed" } else { "FAILED" }
        );
        for path in [&self.o.report, &picture_path] {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
        }
        let picture = timeline::render_svg(&self.timeline, &title, &picture_path);
        let kernel_events = self.kernel.events();
        self.add_kernel_stories(&kernel_events);
        let reclaim = json!({
            "refaults": crate::ktrace::refaults(&kernel_events, REFAULT_WITHIN_S),
            "steps_per_s_by_phase": self.steps_per_s_by_phase(),
        });
        let kernel_trace = json!({
            "guest_kernel": self.kernel.summary(&kernel_events),
            "daemon_events": {"kept": self.daemon_events.len(), "lost": self.daemon_events_lost},
        });
        let trace = self.o.trace.as_ref().map(|path| {
            self.write_trace(&kernel_events, &kernel_trace, path)
                .map(|()| path.display().to_string())
        });
        let report = json!({
            "passed": passed,
            "scenario": self.o.scenario.to_string(),
            "seed": self.o.seed,
            "options": {
                "duration_s": self.o.duration.as_secs(),
                "cycles": self.o.cycles,
                "memory_mib": self.o.memory_mib,
                "bos": self.o.bos,
                "sizes": self.o.sizes,
                "blob_share": self.o.blob_share,
                "madvise_share": self.o.madvise_share,
                "pressure": self.o.pressure.list(),
                "squeeze_mib": self.o.squeeze_mib,
                "zram_mib": self.o.zram_mib,
                "daemon_faults": self.o.daemon_faults,
                "fail_attach_every_s": self.o.fail_attach_every.map(|d| d.as_secs()),
            },
            "qemu": self.qemu,
            "daemon_status": status,
            "guest": guest,
            "checks": self.checks.json(),
            "workload": self.totals,
            "guest_shrinker": shrinker,
            "hog_oom_kills": self.hog_oom_kills,
            "daemon_counters": counters,
            "sampling": self.sampling,
            "daemon_memory": self.daemon_memory,
            "timeline": self.timeline,
            "events": kernel_trace,
            "guest_reclaim": reclaim,
            "trace": trace,
            "picture": picture.as_ref().map(|()| picture_path.display().to_string()).map_err(|e| e.clone()),
            "reproduce": self.o.reproduce_command(),
            "logs": logs,
            "elapsed_s": self.began.elapsed().as_secs_f64(),
        });
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&self.o.report, text)
            .map_err(|e| format!("{}: {e}", self.o.report.display()))?;
        if let Some(path) = &self.o.junit {
            let elapsed = report["elapsed_s"].as_f64().unwrap_or(0.0);
            super::junit::write(path, &super::junit::for_run(&self.checks, &report, elapsed))?;
        }
        print_summary(&report, &self.checks, &self.o.report, &picture_path);
        if let Some(path) = &self.o.junit {
            println!("  junit:   {}", path.display());
        }
        match &report["trace"] {
            Value::Null => {}
            t => match t.get("Ok") {
                Some(path) => println!(
                    "  trace:   {} (open in ui.perfetto.dev)",
                    path.as_str().unwrap_or("?")
                ),
                None => println!("  trace:   not written: {}", t["Err"]),
            },
        }
        Ok(Outcome {
            passed,
            report,
            report_path: self.o.report.clone(),
            picture_path,
        })
    }
}

/// Guest kernel events kept with each failure, up to a second after it.
const STORY_KERNEL_EVENTS: usize = 32;
/// An eviction restored this soon was a refault: reclaim paid twice.
const REFAULT_WITHIN_S: f64 = 1.0;

impl Run {
    /// The workload's pace in each kind of phase (all spans of one name
    /// together): its agent requests per second, pressure held against
    /// pressure rising or gone.
    fn steps_per_s_by_phase(&self) -> Value {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_name: std::collections::BTreeMap<&str, (u64, f64)> = Default::default();
        for p in &self.timeline.phases {
            let (a, b) = (p.start_s.min(p.end_s), p.start_s.max(p.end_s));
            let (lo, hi) = (
                self.started_us as f64 + a * 1e6,
                self.started_us as f64 + b * 1e6,
            );
            let n = steps
                .steps
                .iter()
                .filter(|s| (lo..hi).contains(&(s.end_us as f64)))
                .count() as u64;
            let entry = by_name.entry(&p.name).or_default();
            entry.0 += n;
            entry.1 += b - a;
        }
        by_name
            .into_iter()
            .filter(|(_, (_, secs))| *secs > 0.0)
            .map(|(name, (n, secs))| {
                (
                    name.to_string(),
                    json!((n as f64 / secs * 10.0).round() / 10.0),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// Adds to each buffer failure the guest kernel's events for its
    /// resource (known only now: the sampler streamed them).
    fn add_kernel_stories(&mut self, events: &[KernelEvent]) {
        for f in self.checks.failures_mut() {
            let (Some(res), Some(at_us)) = (f["res_id"].as_u64(), f["time_us"].as_u64()) else {
                continue;
            };
            let until = at_us as f64 + 1e6;
            let mine: Vec<&KernelEvent> = events
                .iter()
                .filter(|e| e.res() == Some(res) && e.host_us <= until)
                .collect();
            let story: Vec<Value> = mine[mine.len().saturating_sub(STORY_KERNEL_EVENTS)..]
                .iter()
                .map(|e| {
                    json!({
                        "time_us": e.host_us.round() as u64,
                        "uncertainty_us": e.uncertainty_us.round(),
                        "event": e.name,
                        "args": e.args,
                    })
                })
                .collect();
            f["guest_kernel"] = json!(story);
        }
    }

    fn write_trace(
        &self,
        kernel: &[KernelEvent],
        losses: &Value,
        path: &std::path::Path,
    ) -> crate::Result<()> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let input = trace_file::Input {
            epoch_us: self.began_us,
            timeline_epoch_us: self.started_us,
            kernel,
            daemon: &self.daemon_events,
            steps: &steps.steps,
            timeline: &self.timeline,
            other: json!({
                "scenario": self.o.scenario.to_string(),
                "seed": self.o.seed,
                "reproduce": self.o.reproduce_command(),
                "epoch_unix_us": self.began_us,
                "events": losses,
                "workload_requests_dropped": steps.dropped,
                "clock_estimates": self.kernel.clock.samples(),
                "note": "times are µs since the run began, on the host clock; guest kernel \
                         events carry the uncertainty of their placement (args.uncertainty_us)",
            }),
        };
        trace_file::write(&input, path)
    }
}

fn mib(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0) / (1u64 << 20) as f64
}

fn print_summary(
    report: &Value,
    checks: &super::Checks,
    report_path: &std::path::Path,
    picture_path: &std::path::Path,
) {
    let passed = report["passed"] == json!(true);
    let w = &report["workload"];
    let o = &report["options"];
    println!();
    println!(
        "gpuswap run: {}  ({} scenario, {} s, {} buffers, {} MiB guest, squeeze {} MiB by {}, seed {})",
        if passed { "PASSED" } else { "FAILED" },
        report["scenario"].as_str().unwrap_or("?"),
        o["duration_s"],
        o["bos"],
        o["memory_mib"],
        o["squeeze_mib"],
        o["pressure"].as_str().unwrap_or("?"),
        report["seed"],
    );
    println!(
        "  QEMU {} ({}); blobs {}",
        report["qemu"]["version"].as_str().unwrap_or("?"),
        report["qemu"]["binary"].as_str().unwrap_or("?"),
        if report["qemu"]["blob_negotiated"] == json!(true) {
            "negotiated"
        } else {
            "not offered (2D only)"
        }
    );
    println!(
        "  workload: {} steps on {} 2D buffers and {} blobs (over the run), {} writes ({:.1} MiB), {} transfers, {} read-backs, {} DONTNEED / {} WILLNEED, {} purged seen, {} recreated, {} scanout flips",
        w["steps"], w["created_2d"], w["created_blobs"], w["writes"], mib(&w["bytes_written"]),
        w["transfers"], w["verifies"], w["dontneed"], w["willneed"], w["purged_seen"],
        w["recreated"], w["scanout_flips"],
    );
    let g = &report["guest_shrinker"];
    println!(
        "  guest shrinker: {} evictions, {} restores, {} purges; hog OOM-killed {} times",
        g["evictions"], g["restores"], g["purges"], report["hog_oom_kills"]
    );
    let refused = report["daemon_counters"]["counters"]["errors"][super::faults::ATTACH]
        .as_u64()
        .unwrap_or(0);
    if refused > 0 || g["attach_failures"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  refused attaches: {} by the daemon, {} seen by the guest kernel, {} uses failed with EIO (each attached on a later use)",
            refused, g["attach_failures"], w["refused_uses"]
        );
    }
    let r = &report["guest_reclaim"];
    let f = &r["refaults"];
    if f["evictions"].as_u64().unwrap_or(0) > 0 {
        let pace: Vec<String> = r["steps_per_s_by_phase"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "  guest reclaim: {} evictions traced, {} restored within {} s ({:.0}%), median {:.1} s to restore; workload requests/s by phase: {}",
            f["evictions"],
            f["refaults"],
            f["restored_within_s"],
            f["refault_share"].as_f64().unwrap_or(0.0) * 100.0,
            f["median_s_to_restore"].as_f64().unwrap_or(f64::NAN),
            pace.join(", ")
        );
    }
    let c = &report["daemon_counters"]["counters"];
    println!(
        "  daemon: {} attaches, {} detaches, {} transfers ({:.1} MiB), {} violations, {} faults injected",
        c["attaches"],
        c["detaches"],
        c["transfers"],
        mib(&c["bytes_transferred"]),
        c["violations"],
        c["faults_injected"],
    );
    let m = &report["daemon_memory"];
    if m.is_object() {
        println!(
            "  daemon process: own memory {} MiB by the end of warm-up, at most {} MiB after ({} MiB peak host memory); {} open fds by then, at most {} after",
            m["own_memory_mib_warmup"],
            m["own_memory_mib_after"],
            m["peak_host_memory_mib"],
            m["open_fds_warmup"],
            m["open_fds_after"],
        );
    }
    println!("  checks:");
    for (name, check) in checks.iter() {
        let mark = if check.failed == 0 { "ok  " } else { "FAIL" };
        let mut note = String::new();
        if check.skipped > 0 {
            note += &format!(", {} skipped", check.skipped);
        }
        if check.optional && check.passed + check.failed == 0 {
            note += " (not exercised this run)";
        }
        println!(
            "    {mark} {name:<32} {} passed, {} failed{note}",
            check.passed, check.failed
        );
    }
    for (name, check) in checks.iter().filter(|(_, c)| c.failed > 0) {
        for f in &check.failures {
            print_failure(name, f);
        }
    }
    println!("  report:  {}", report_path.display());
    match report["picture"].get("Ok") {
        Some(_) => println!("  picture: {}", picture_path.display()),
        None => println!("  picture: not drawn: {}", report["picture"]["Err"]),
    }
    if !passed {
        println!("  logs:    {}", report["logs"].as_str().unwrap_or("?"));
        println!(
            "  reproduce: {}",
            report["reproduce"].as_str().unwrap_or("?")
        );
    }
}

/// One failure, printed after the check table.
fn print_failure(name: &str, f: &Value) {
    println!();
    for line in failure_story(name, f) {
        println!("  {line}");
    }
}

/// One failure: what went wrong, and for a buffer, the harness's and the
/// guest's view next to the daemon's trace of its resource, by time.
pub(super) fn failure_story(name: &str, f: &Value) -> Vec<String> {
    if f.get("stall_s").is_some() {
        return stall_story(name, f);
    }
    let Some(res_id) = f["res_id"].as_u64() else {
        return vec![format!("FAIL {name}: {f}")];
    };
    let mut out = vec![
        format!(
            "FAIL {name}: resource {res_id} (buffer {}, {} {}x{}, {} pattern, version {}) at {:.1} s",
            f["buffer"],
            f["kind"].as_str().unwrap_or("?"),
            f["size"][0],
            f["size"][1],
            f["pattern"].as_str().unwrap_or("?"),
            f["version"],
            f["t_s"].as_f64().unwrap_or(0.0)
        ),
        format!("     {}", f["detail"]),
        format!("     guest now: {}", f["guest_info"]),
    ];
    let mut lines: Vec<(u64, String)> = Vec::new();
    for h in f["guest_history"].as_array().into_iter().flatten() {
        lines.push((
            h["time_us"].as_u64().unwrap_or(0),
            format!(
                "guest   {:<18} v{} {}",
                h["action"].as_str().unwrap_or("?"),
                h["version"],
                h["detail"]
            ),
        ));
    }
    for e in f["guest_kernel"].as_array().into_iter().flatten() {
        lines.push((
            e["time_us"].as_u64().unwrap_or(0),
            format!(
                "kernel  {:<18} g{} {} (±{:.0} µs)",
                e["event"].as_str().unwrap_or("?"),
                e["args"]["gen"],
                e["args"],
                e["uncertainty_us"].as_f64().unwrap_or(f64::NAN)
            ),
        ));
    }
    for e in f["daemon_trace"].as_array().into_iter().flatten() {
        let mut rest = e.clone();
        if let Some(m) = rest.as_object_mut() {
            for k in ["seq", "time_us", "resource_id", "event", "generation"] {
                m.remove(k);
            }
        }
        lines.push((
            e["time_us"].as_u64().unwrap_or(0),
            format!(
                "daemon  {:<18} g{} {}",
                e["event"].as_str().unwrap_or("?"),
                e["generation"],
                rest
            ),
        ));
    }
    lines.sort_by_key(|(t, _)| *t);
    let first = lines.first().map_or(0, |(t, _)| *t);
    out.push("     harness (guest), guest kernel and daemon, by time:".into());
    for (t, line) in lines {
        let line = if line.chars().count() > 160 {
            line.chars().take(157).chain("...".chars()).collect()
        } else {
            line
        };
        out.push(format!("     {:>9.3} s  {line}", (t - first) as f64 / 1e6));
    }
    out
}

/// A stall: when, how long, what the guest was doing, what the shrinker
/// and the daemon did meanwhile.
fn stall_story(name: &str, f: &Value) -> Vec<String> {
    let secs = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut out = vec![format!(
        "FAIL {name}: the guest did not answer the {} for {:.1} s, from {:.1} s to {:.1} s{} (bound {} s)",
        f["unanswered"].as_str().unwrap_or("?"),
        secs(&f["stall_s"]),
        secs(&f["start_s"]),
        secs(&f["end_s"]),
        if f["still_stalled_at_the_end"] == json!(true) {
            ", still stalled when the run ended"
        } else {
            ""
        },
        f["max_stall_s"]
    )];
    if let Some(r) = f["agent_request_in_flight"].as_object() {
        out.push(format!(
            "     workload request in flight: {} (sent at {:.1} s)",
            r.get("op").and_then(Value::as_str).unwrap_or("?"),
            r.get("since_s").and_then(Value::as_f64).unwrap_or(0.0)
        ));
    }
    let counts = |v: &Value| {
        format!(
            "{} evictions, {} restores, {} purges",
            v["evictions"], v["restores"], v["purges"]
        )
    };
    out.push(format!(
        "     guest shrinker before: {}; after: {}",
        counts(&f["shrinker_before"]),
        counts(&f["shrinker_after"])
    ));
    let events = f["daemon_last_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    out.push(format!(
        "     daemon: {} events in the span{}",
        f["daemon_events_in_span"],
        if events.is_empty() {
            ""
        } else {
            "; the last ones:"
        }
    ));
    for e in &events {
        let mut rest = e.clone();
        if let Some(m) = rest.as_object_mut() {
            for k in ["seq", "time_us", "event", "resource_id", "generation"] {
                m.remove(k);
            }
        }
        out.push(format!(
            "       res {:<5} {:<10} g{} {}",
            e["resource_id"].to_string(),
            e["event"].as_str().unwrap_or("?"),
            e["generation"],
            rest
        ));
    }
    if let Some(hint) = f["hint"].as_str() {
        out.push(format!("     ({hint})"));
    }
    out
}
