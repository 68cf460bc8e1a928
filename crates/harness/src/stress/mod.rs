//! Boot-and-stress runs: boot the guest on the gpuswap daemon, squeeze its
//! memory from the host by a scenario while a GPU workload runs through
//! evictions and restores, and check from the guest and from the daemon
//! that no resource lost or mixed up a byte. `gpuswap-run` (the README's
//! main job) is the command line around [`run`]; the test suite runs short
//! ones, including one whose daemon corrupts a transfer on purpose.

mod checks;
mod daemon_memory;
mod faults;
pub mod junit;
mod options;
mod pressure;
mod report;
mod sampler;
mod scenario;
mod workload;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gpuswap_api::{agent, control};
use serde_json::{json, Value};

pub use checks::{Check, Checks};
pub use options::{Mechanisms, Options};
pub use scenario::Scenario;

use crate::ktrace::KernelTrace;
use crate::qmp::Qmp;
use crate::timeline::Timeline;
use crate::{
    boot_guest, kernel_problems, tail, unix_us, wait_for_agent, Agent, ControlClient, Images,
    InFlightSlot, StepLog, VmConfig,
};
use gpuswap_testkit::Rng;
use pressure::{Pressure, ShrinkerCounts};
use sampler::{Channels, Sampler};
use workload::{Bo, Totals};

/// How often the timeline is sampled (and the progress line redrawn).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long the guest sampler may take to answer its first request.
const SAMPLER_WAIT: Duration = Duration::from_secs(30);
/// Agent requests can be slow in a squeezed TCG guest.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// What a run produced.
pub struct Outcome {
    pub passed: bool,
    pub report: Value,
    pub report_path: PathBuf,
    pub picture_path: PathBuf,
}

/// A run in progress: the guest, the daemon, the workload's buffers and
/// everything measured so far.
struct Run {
    o: Options,
    agent: Agent,
    control: ControlClient,
    /// Shared with the sampler, which reads the balloon's size.
    qmp: Arc<Mutex<Qmp>>,
    /// The sampler's connections until the workload starts it.
    sampler_channels: Option<Channels>,
    /// Samples the guest and the daemon while the workload runs.
    sampler: Option<Sampler>,
    /// Which QEMU, its version, whether blobs were negotiated.
    qemu: Value,
    /// The guest negotiated blob resources (blob-capable QEMU).
    blob: bool,
    rng: Rng,
    bos: Vec<Bo>,
    next_serial: u64,
    checks: Checks,
    totals: Totals,
    timeline: Timeline,
    pressure: Pressure,
    last_counts: ShrinkerCounts,
    hog_oom_kills: u64,
    next_drop_caches: Instant,
    next_forced_scan: Instant,
    next_refused_attach: Instant,
    started: Instant,
    /// When the run began, boot included.
    began: Instant,
    /// The sampler's summary: period, bound, slowest answers, stalls.
    sampling: Value,
    /// The daemon's own memory and descriptors over the run.
    daemon_memory: Value,
    progress: report::Progress,
    /// `began` and `started` on the host clock (µs since the Unix epoch).
    began_us: u64,
    started_us: u64,
    /// The workload's agent requests.
    steps: StepLog,
    /// The guest kernel's tracepoints and the daemon's events, from the
    /// sampler once it stopped.
    kernel: KernelTrace,
    daemon_events: Vec<Value>,
    daemon_events_lost: u64,
}

/// Runs the scenario of `o` from boot to report (JSON and picture written).
/// `Err` only when the run could not start at all (no images, no boot);
/// everything after boot ends in a report.
pub fn run(o: &Options) -> crate::Result<Outcome> {
    let began = Instant::now();
    let began_us = unix_us();
    let images = Images::get();
    let config = VmConfig {
        memory_mib: o.memory_mib,
        append: format!("gpuswap.cmd=agent gpuswap.zram={}M", o.zram_mib),
        qemu: o.qemu.clone(),
        ..VmConfig::default()
    };
    let mut faults: Vec<&str> = o.daemon_faults.iter().map(String::as_str).collect();
    if o.fail_attach_every.is_some() {
        faults.push("--allow-fault-injection");
    }
    eprintln!(
        "[gpuswap-run] {} for {} s: booting a {} MiB guest on gpuswap-daemon",
        o.scenario,
        o.duration.as_secs(),
        o.memory_mib
    );
    let booted = boot_guest(&images, "stress", &config, &faults)?;
    let crate::Booted {
        dir,
        mut daemon,
        vm,
        mut agent,
    } = booted;
    agent.set_timeout(REQUEST_TIMEOUT);
    let control = daemon.control()?;
    let (hello, guest) = agent.request_with_line(agent::Hello {})?;
    let blob = hello.device.and_then(|d| d.resource_blob) == Some(true);
    let qmp = Qmp::connect(&vm.qmp_socket, Duration::from_secs(10))?;
    let workload_in_flight = InFlightSlot::default();
    agent.watch_in_flight(workload_in_flight.clone());
    let steps = StepLog::default();
    agent.log_steps(steps.clone());
    let qmp = Arc::new(Mutex::new(qmp));
    let mut sampler_agent =
        wait_for_agent(&vm.sampler_socket, &vm.serial_log, SAMPLER_WAIT, || None)
            .map_err(|e| format!("guest sampler: {e}"))?;
    // Always, and before the workload creates a buffer: failure stories
    // show what the guest kernel did to it from the start.
    let kernel_trace = sampler::start_kernel_trace(&mut sampler_agent);
    let sampler_channels = Channels {
        guest: sampler_agent,
        guest_side_control: daemon.control()?,
        host_side_control: daemon.control()?,
        qmp: o.pressure.balloon.then(|| qmp.clone()),
        workload_in_flight,
        daemon_pid: Some(daemon.pid()),
        kernel_trace: Some(kernel_trace),
    };
    // The launcher's choice when none is given: $GPUSWAP_QEMU, else PATH.
    let qemu_binary = o
        .qemu
        .clone()
        .or_else(|| std::env::var_os("GPUSWAP_QEMU").map(PathBuf::from))
        .map_or("qemu-system-x86_64 (PATH)".into(), |q| {
            q.display().to_string()
        });
    let qemu_version = qmp
        .lock()
        .map(|q| q.version().to_string())
        .unwrap_or_default();
    let qemu = json!({
        "binary": qemu_binary,
        "version": qemu_version,
        "blob_negotiated": blob,
    });
    let mut run = Run {
        o: o.clone(),
        agent,
        control,
        qmp,
        sampler_channels: Some(sampler_channels),
        sampler: None,
        qemu,
        blob,
        rng: Rng::new(o.seed),
        bos: Vec::new(),
        next_serial: 0,
        checks: Checks::default(),
        totals: Totals::default(),
        timeline: Timeline::new(),
        pressure: Pressure::default(),
        last_counts: ShrinkerCounts::default(),
        hog_oom_kills: 0,
        next_drop_caches: Instant::now(),
        next_forced_scan: Instant::now(),
        next_refused_attach: Instant::now(),
        started: Instant::now(),
        began,
        sampling: Value::Null,
        daemon_memory: Value::Null,
        progress: report::Progress::new(o.progress),
        began_us,
        started_us: began_us,
        steps,
        kernel: KernelTrace::default(),
        daemon_events: Vec::new(),
        daemon_events_lost: 0,
    };
    for name in [
        "guest_content_intact",
        "final_content_intact",
        "host_copy_matches_guest",
        "attached_backing_matches_guest",
        "scanout_stays_attached",
        "no_protocol_violation",
        "pressure_bit",
        "guest_kernel_log_clean",
        "no_resource_left",
        "qemu_exited_cleanly",
        "daemon_exited_cleanly",
        "workload_completed",
        "guest_stayed_responsive",
        "daemon_memory_bounded",
        "refused_attaches_seen_by_guest",
    ] {
        run.checks.expect(name);
    }
    // Whether a DONTNEED buffer gets purged is up to the guest's shrinker.
    if o.madvise_share > 0.0 {
        run.checks.optional("purged_buffer_refuses_use");
    }

    // The workload; an error here (the agent gone, the guest stuck) fails
    // the run but still ends in a report with what was seen.
    let workload = run.workload();
    let workload_error = workload.as_ref().err().cloned();
    run.checks.record(
        "workload_completed",
        workload.is_ok(),
        || json!({"error": workload_error, "serial_tail": tail(&vm.serial_log, 30)}),
    );
    let shrinker = run.finish_guest(workload.is_ok()).unwrap_or(Value::Null);
    run.progress.clear();

    let serial = vm.serial_log.clone();
    let qemu = vm.wait(Duration::from_secs(90));
    run.checks.record(
        "qemu_exited_cleanly",
        matches!(qemu, Ok(s) if s.success()),
        || json!({"qemu": format!("{qemu:?}"), "serial_tail": tail(&serial, 20)}),
    );
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let problems = kernel_problems(&log);
    let out_of_memory = problems
        .iter()
        .any(|l| l.contains("page allocation failure") || l.contains("oom-killer"));
    run.checks
        .record("guest_kernel_log_clean", problems.is_empty(), || {
            let hint = out_of_memory.then_some(
                "the guest ran out of memory: lower --squeeze, or raise --memory or --zram",
            );
            json!({"lines": problems, "hint": hint, "serial": serial})
        });
    run.check_refused_attaches(&shrinker);
    let violations = run.control.violations().unwrap_or_default();
    run.checks.record(
        "no_protocol_violation",
        violations.is_empty(),
        || json!({"violations": violations.iter().take(20).collect::<Vec<_>>()}),
    );
    // The replies as they came, for the report.
    let status = run
        .control
        .request(&control::Request::Status)
        .unwrap_or(Value::Null);
    let counters = run
        .control
        .request(&control::Request::Counters)
        .unwrap_or(Value::Null);
    let daemon_log = daemon.log_path().to_path_buf();
    let alive = daemon.alive();
    let exit = daemon.terminate();
    run.checks.record(
        "daemon_exited_cleanly",
        alive && matches!(exit, Ok(s) if s.success()),
        || json!({"alive": alive, "exit": format!("{exit:?}"), "daemon_log": tail(&daemon_log, 20)}),
    );
    let warmup_s = o.duration.as_secs_f64() / 4.0;
    match daemon_memory::judge(&run.timeline.daemon, warmup_s) {
        Ok((ok, detail)) => {
            run.checks
                .record("daemon_memory_bounded", ok, || detail.clone());
            run.daemon_memory = detail;
        }
        Err(e) => run
            .checks
            .record("daemon_memory_bounded", false, || json!({ "error": e })),
    }
    // Only 2D buffers have a host copy (a run of blobs alone has none).
    if run.totals.created_2d == 0 {
        run.checks.optional("host_copy_matches_guest");
    }
    run.checks.finish();
    run.report(guest, status, counters, shrinker, dir.path().to_path_buf())
}

impl Run {
    /// Buffers, then the scenario's pressure over the run's time with
    /// workload steps in between, sampled every second.
    fn workload(&mut self) -> crate::Result<()> {
        for slot in 0..self.o.bos as usize {
            let bo = self.create_bo(slot)?;
            self.bos.push(bo);
        }
        // Slot 0 stays on the scanout: pinned, never evicted.
        self.flip_scanout()?;
        self.started = Instant::now();
        self.started_us = unix_us();
        self.start_sampler()?;
        let mut next_sample = Instant::now();
        let mut phase: Option<(&'static str, f64)> = None;
        loop {
            let elapsed = self.started.elapsed();
            if elapsed >= self.o.duration {
                break;
            }
            let (level, name) = self.o.scenario.at(elapsed, self.o.duration, self.o.cycles);
            let t = elapsed.as_secs_f64();
            match phase {
                Some((current, _)) if current == name => {}
                Some((current, start)) => {
                    self.push_phase(start, t, current);
                    phase = Some((name, t));
                }
                None => phase = Some((name, t)),
            }
            self.apply_pressure(level)?;
            self.periodic_pressure()?;
            self.periodic_faults()?;
            if Instant::now() >= next_sample {
                self.check_scanout()?;
                let line = self.progress_line(name);
                self.progress.show(&line);
                next_sample = Instant::now() + SAMPLE_EVERY;
            }
            self.step()?;
        }
        if let Some((current, start)) = phase {
            self.push_phase(start, self.started.elapsed().as_secs_f64(), current);
        }
        // Release the pressure, then look at every buffer once more.
        self.apply_pressure(0.0)?;
        self.disarm_faults()?;
        self.final_pass()?;
        Ok(())
    }

    fn push_phase(&mut self, start_s: f64, end_s: f64, name: &str) {
        match &self.sampler {
            Some(sampler) => sampler.push_phase(start_s, end_s, name),
            None => self.timeline.push_phase(start_s, end_s, name),
        }
    }

    fn qmp(&self) -> MutexGuard<'_, Qmp> {
        self.qmp.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_sampler(&mut self) -> crate::Result<()> {
        let Some(channels) = self.sampler_channels.take() else {
            return Ok(());
        };
        let sampler = Sampler::start(
            channels,
            SAMPLE_EVERY,
            self.o.max_stall,
            self.started,
            std::mem::take(&mut self.timeline),
        )
        .map_err(|e| format!("cannot start the sampler: {e}"))?;
        sampler.set_pressure(self.pressure);
        self.sampler = Some(sampler);
        Ok(())
    }

    /// Stops the sampler and records `guest_stayed_responsive`: every
    /// sampler answer within `--max-stall` passes, every stall fails.
    fn stop_sampler(&mut self) {
        let Some(sampler) = self.sampler.take() else {
            return;
        };
        let sampled = sampler.finish();
        self.timeline = sampled.timeline;
        self.last_counts = sampled.counts;
        self.kernel = sampled.kernel;
        self.daemon_events = sampled.daemon_events;
        self.daemon_events_lost = sampled.daemon_events_lost;
        let max_stall_s = self.o.max_stall.as_secs_f64();
        self.checks
            .pass_n("guest_stayed_responsive", sampled.answered);
        for stall in &sampled.stalls {
            self.checks.record("guest_stayed_responsive", false, || {
                let mut f = stall.clone();
                f["max_stall_s"] = json!(max_stall_s);
                f["hint"] = json!(
                    "a run meant to stall (long fault delays) says so with a larger --max-stall"
                );
                f
            });
        }
        for e in &sampled.errors {
            self.checks.record("guest_stayed_responsive", false, || {
                json!({"sampler_error": e, "hint": "the sampler lost its channel: responsiveness is unknown"})
            });
        }
        self.sampling = json!({
            "period_s": SAMPLE_EVERY.as_secs_f64(),
            "max_stall_s": max_stall_s,
            "answered_in_time": sampled.answered,
            "slowest_sampler_answer_s": sampled.slowest_sampler_s,
            "slowest_agent_request_s": sampled.slowest_request_s,
            "stalls": sampled.stalls,
            "errors": sampled.errors,
        });
    }

    /// Ends the workload side: pressure off, buffers closed, and the checks
    /// that need the guest still up; then the agent ends the guest.
    /// Returns the guest's last shrinker counters.
    fn finish_guest(&mut self, workload_ok: bool) -> crate::Result<Value> {
        if workload_ok {
            let _ = self.agent.request(agent::ScanoutOff {});
            for bo in std::mem::take(&mut self.bos) {
                self.agent.request(agent::Close { handle: bo.handle })?;
            }
            let left = self.control.resources_left(Duration::from_secs(5))?;
            self.checks.record(
                "no_resource_left",
                left.is_empty(),
                || json!({"left": left.iter().take(10).collect::<Vec<_>>(), "count": left.len()}),
            );
        }
        let stats = self.agent.request_with_line(agent::ShrinkerStats {});
        self.stop_sampler();
        let (counters, stats) = stats?;
        self.checks.record("pressure_bit", counters.evictions > 0 && counters.restores > 0, || {
            json!({"error": "a run where nothing was evicted and restored proves nothing: raise --squeeze or lower --memory", "shrinker": stats})
        });
        let _ = self.agent.request(agent::Exit { status: Some(0) });
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run's randomness is the testkit's SplitMix64; these are the
    /// outputs of the generator the harness had before it (its own copy,
    /// recorded before that was deleted), so recorded seeds replay the same
    /// buffers, contents and workload choices.
    #[test]
    fn recorded_seeds_replay_the_same_choices() {
        /// Seed; first words; then `below(100)`; then `chance(0.25)`.
        type Recorded = (u64, [u64; 3], [u64; 4], [bool; 4]);
        let recorded: [Recorded; 6] = [
            (
                0,
                [0x6a3e4ec3840f3e73, 0xe64f19e496265c51, 0x2e5d93edf37578e5],
                [9, 55, 21, 55],
                [true, false, true, true],
            ),
            (
                1,
                [0x9c57cc14cfa2947b, 0x7f26e5161fb8cc29, 0x30d0f35e65f423dc],
                [5, 14, 18, 18],
                [false, true, true, true],
            ),
            (
                7,
                [0xd1d39493842a0ed3, 0x523d24660fb281fc, 0xe8c7d86d53d0f252],
                [23, 85, 38, 52],
                [true, false, false, false],
            ),
            (
                42,
                [0xb1fbdec0234faa18, 0x8be8c92112def182, 0x2d239af8a93c04ba],
                [90, 29, 36, 54],
                [false, false, true, false],
            ),
            (
                0x5eed,
                [0x0bb56cd4f3fcc1cd, 0xddb343f2b5bda162, 0x75557bd9933a2308],
                [40, 99, 82, 93],
                [false, false, false, false],
            ),
            (
                u64::MAX,
                [0xe4647fd6d5e1cd0e, 0xbd0b0936d9c56bfa, 0xa2713aa46b22825d],
                [56, 81, 1, 57],
                [true, true, false, true],
            ),
        ];
        for (seed, words, below, chance) in recorded {
            let mut rng = Rng::new(seed);
            assert_eq!(words.map(|_| rng.next_u64()), words, "seed {seed:#x}");
            assert_eq!(below.map(|_| rng.below(100)), below, "seed {seed:#x}");
            assert_eq!(chance.map(|_| rng.chance(0.25)), chance, "seed {seed:#x}");
        }
    }
}
