//! Sampling that keeps its period while the workload blocks.
//!
//! The workload talks to the guest agent one request at a time; when the
//! guest stalls, its request blocks, and a harness that sampled between
//! requests would stop looking exactly then. So the timeline comes from two
//! threads of its own instead:
//!
//! - the guest thread asks the guest's sampler (`gpuswap-guest sampler`, a
//!   small mlocked process on its own virtio-serial port) for memory,
//!   shrinker and vmstat counters every period, and measures how long each
//!   answer takes;
//! - the host thread reads the daemon's counters from the control socket,
//!   which never waits on the guest, and the balloon's size over QMP.
//!
//! Each period the guest thread also drains the guest kernel's tracepoints
//! (`trace_read`; each read is one clock estimate too, see
//! [`crate::ktrace`]) and the host thread the daemon's new trace events,
//! so a run's events are all on the host when it ends.
//!
//! A stall is a span in which the guest did not answer within the run's
//! bound (`--max-stall`): the sampler's request, or the workload's request
//! in flight (seen through [`InFlightSlot`]). Each is kept with what was
//! going on: the request in flight, the shrinker's counters before and
//! after, and the daemon's events in the span. A stall is found a bound
//! after it began, so both threads keep their last bound's worth of
//! samples ([`Recent`]) to say how things stood when it began.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::pressure::{Pressure, ShrinkerCounts};
use crate::ktrace::KernelTrace;
use crate::qmp::Qmp;
use crate::timeline::{DaemonSample, Sample, Timeline};
use crate::{reply_fields, Agent, ControlClient, InFlightSlot};
use gpuswap_api::agent::{self, GuestSample, KernelEvents};

const MIB: f64 = (1u64 << 20) as f64;
/// How often a waiting thread looks up from its read.
const POLL: Duration = Duration::from_millis(100);
/// Daemon events kept with a stall (the last ones of its span).
const STALL_EVENTS: usize = 24;
/// Daemon events kept over a run; later ones are counted as lost.
const DAEMON_EVENTS: usize = 1 << 18;
/// Kernel trace reads per period at most (each hands over up to 4096).
const TRACE_READS: usize = 8;
/// How long the last kernel trace read may take, at the end.
const LAST_READ: Duration = Duration::from_secs(5);

/// What the threads share with the workload.
#[derive(Default)]
struct Shared {
    timeline: Timeline,
    counts: ShrinkerCounts,
    /// What the host asks of the guest, set by the workload thread.
    pressure: Pressure,
    balloon_actual_mib: Option<f64>,
    /// The daemon's last event sequence number, as sampled over the last
    /// stall bound.
    daemon_seq: Recent<u64>,
    stalls: Vec<Value>,
    /// Sampler answers within the bound.
    answered: u64,
    /// The slowest answer of the sampler, and of a workload request.
    slowest_sampler_s: f64,
    slowest_request_s: f64,
    /// An error that ended a thread early.
    errors: Vec<String>,
    kernel: KernelTrace,
    daemon_events: Vec<Value>,
    /// Daemon events missed (gone from its history before they were read,
    /// or over [`DAEMON_EVENTS`]).
    daemon_events_lost: u64,
}

/// Everything the sampler saw, handed over when it stops.
pub struct Sampled {
    pub timeline: Timeline,
    pub counts: ShrinkerCounts,
    /// One JSON object per stall (for the report and the check).
    pub stalls: Vec<Value>,
    pub answered: u64,
    pub slowest_sampler_s: f64,
    pub slowest_request_s: f64,
    pub errors: Vec<String>,
    /// The guest kernel's tracepoints (empty when not streamed).
    pub kernel: KernelTrace,
    /// Every daemon trace event of the run, in order.
    pub daemon_events: Vec<Value>,
    pub daemon_events_lost: u64,
}

pub struct Sampler {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The connections the sampler uses, all its own but QMP's, which it
/// shares with the workload (who only holds it briefly).
pub struct Channels {
    pub guest: Agent,
    /// For a stall's daemon events.
    pub guest_side_control: ControlClient,
    pub host_side_control: ControlClient,
    /// For the balloon's size; `None` without a balloon.
    pub qmp: Option<Arc<Mutex<Qmp>>>,
    pub workload_in_flight: InFlightSlot,
    /// The daemon's process, for its memory and descriptors over time.
    pub daemon_pid: Option<u32>,
    /// The guest kernel's tracepoints, if they stream (see
    /// [`start_kernel_trace`]): the sampler goes on reading them.
    pub kernel_trace: Option<KernelTrace>,
}

/// Clock estimates taken right after the trace starts: the events of the
/// workload's first second (buffer creation) need them.
const FIRST_ESTIMATES: usize = 5;

/// Starts streaming the guest kernel's tracepoints on the sampler's
/// channel, before the workload creates anything. The result says why
/// not if the guest cannot (`unavailable`), and holds the first clock
/// estimates otherwise (from empty reads: quick round trips, unlike
/// `trace_start`'s).
pub fn start_kernel_trace(guest: &mut Agent) -> KernelTrace {
    let mut trace = KernelTrace::default();
    if let Err(e) = guest.request(agent::TraceStart {}) {
        trace.unavailable = Some(e);
        return trace;
    }
    for _ in 0..FIRST_ESTIMATES {
        let sent = crate::unix_us();
        match guest.request(agent::TraceRead { max: Some(0) }) {
            Ok(r) => {
                trace.absorb(&r, sent, crate::unix_us());
            }
            Err(e) => {
                trace.unavailable = Some(e);
                break;
            }
        }
    }
    trace
}

impl Sampler {
    /// Starts sampling every `period` with times relative to `epoch`.
    pub fn start(
        mut channels: Channels,
        period: Duration,
        max_stall: Duration,
        epoch: Instant,
        timeline: Timeline,
    ) -> std::io::Result<Sampler> {
        let streaming = kernel_trace_streams(&channels.kernel_trace);
        // A stall is found up to a bound after it began, or two when a
        // kernel trace read (which may take a bound) came in between.
        let look_back = 2 * max_stall + 2 * period + POLL;
        let shared = Arc::new(Mutex::new(Shared {
            timeline,
            kernel: channels.kernel_trace.take().unwrap_or_default(),
            daemon_seq: Recent::new(look_back),
            ..Shared::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let Channels {
            guest,
            guest_side_control,
            host_side_control,
            qmp,
            workload_in_flight,
            daemon_pid,
            kernel_trace: _,
        } = channels;
        let guest_thread = {
            let mut g = GuestThread {
                shared: shared.clone(),
                stop: stop.clone(),
                agent: guest,
                control: guest_side_control,
                in_flight: workload_in_flight,
                period,
                max_stall,
                epoch,
                kernel_trace: streaming,
                shrinker: Recent::new(look_back),
            };
            std::thread::Builder::new()
                .name("sampler-guest".into())
                .spawn(move || g.run())?
        };
        let host_thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            let mut control = host_side_control;
            std::thread::Builder::new()
                .name("sampler-host".into())
                .spawn(move || {
                    let host = HostSide {
                        control: &mut control,
                        qmp: qmp.as_deref(),
                        daemon_pid,
                    };
                    host_loop(&shared, &stop, host, period, epoch)
                })?
        };
        Ok(Sampler {
            shared,
            stop,
            threads: vec![guest_thread, host_thread],
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Tells the sampler what the host now asks of the guest.
    pub fn set_pressure(&self, pressure: Pressure) {
        self.lock().pressure = pressure;
    }

    pub fn push_phase(&self, start_s: f64, end_s: f64, name: &str) {
        self.lock().timeline.push_phase(start_s, end_s, name);
    }

    /// The latest guest sample and the shrinker's counters then.
    pub fn latest(&self) -> (Option<Sample>, ShrinkerCounts) {
        let s = self.lock();
        (s.timeline.samples.last().cloned(), s.counts)
    }

    /// Stops both threads (a guest that still does not answer is left to
    /// its read timeout: the stall is recorded as ongoing) and returns what
    /// they saw.
    pub fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut s = lock(&self.shared);
        let s = std::mem::take(&mut *s);
        Sampled {
            timeline: s.timeline,
            counts: s.counts,
            stalls: s.stalls,
            answered: s.answered,
            slowest_sampler_s: s.slowest_sampler_s,
            slowest_request_s: s.slowest_request_s,
            errors: s.errors,
            kernel: s.kernel,
            daemon_events: s.daemon_events,
            daemon_events_lost: s.daemon_events_lost,
        }
    }
}

fn kernel_trace_streams(trace: &Option<KernelTrace>) -> bool {
    trace.as_ref().is_some_and(|t| t.unavailable.is_none())
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Values sampled over the last `keep`, with when each was taken.
#[derive(Default)]
struct Recent<T> {
    samples: VecDeque<(Instant, T)>,
    keep: Duration,
}

impl<T: Clone> Recent<T> {
    fn new(keep: Duration) -> Self {
        Recent {
            samples: VecDeque::new(),
            keep,
        }
    }

    /// Adds the value sampled `at`; forgets the ones no longer needed to
    /// answer [`Recent::at`] for any time in the last `keep`.
    fn push(&mut self, at: Instant, value: T) {
        self.samples.push_back((at, value));
        while self
            .samples
            .get(1)
            .is_some_and(|&(next, _)| at.saturating_duration_since(next) > self.keep)
        {
            self.samples.pop_front();
        }
    }

    /// The last value sampled, if one was.
    fn latest(&self) -> Option<T> {
        self.samples.back().map(|(_, v)| v.clone())
    }

    /// The last value sampled at or before `t`, if one was.
    fn at(&self, t: Instant) -> Option<T> {
        let before = self.samples.partition_point(|&(at, _)| at <= t);
        let last = before.checked_sub(1)?;
        self.samples.get(last).map(|(_, v)| v.clone())
    }
}

/// A stall seen while it lasts, finished when the guest answers again.
struct OpenStall {
    start: Instant,
    /// A workload request, not the sampler's, went unanswered.
    workload: bool,
    what: String,
    /// The shrinker's counters and the daemon's last event when it began.
    shrinker_before: Value,
    daemon_seq: u64,
    in_flight: Option<(String, f64)>,
}

struct GuestThread {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    agent: Agent,
    control: ControlClient,
    in_flight: InFlightSlot,
    period: Duration,
    max_stall: Duration,
    epoch: Instant,
    kernel_trace: bool,
    /// The shrinker's counters as the sampler's answers brought them.
    shrinker: Recent<Value>,
}

impl GuestThread {
    fn run(&mut self) {
        let mut workload_stall: Option<OpenStall> = None;
        let mut next = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let id = match self.agent.send(agent::Sample {}) {
                Ok(id) => id,
                Err(e) => return self.fail(format!("guest sampler: {e}")),
            };
            let mut sampler_stall: Option<OpenStall> = None;
            let reply = loop {
                match self.agent.poll_reply(id, POLL) {
                    Ok(Some(reply)) => break Some(reply),
                    Ok(None) => {}
                    Err(e) => return self.fail(format!("guest sampler: {e}")),
                }
                self.watch_workload(&mut workload_stall);
                if sampler_stall.is_none() && sent.elapsed() > self.max_stall {
                    sampler_stall = Some(self.open(sent, false, "sampler".into()));
                }
                if self.stop.load(Ordering::Relaxed) {
                    break None;
                }
            };
            let latency = sent.elapsed();
            let sample = match reply.as_ref().map(reply_fields::<GuestSample>) {
                Some(Err(e)) => return self.fail(format!("guest sampler: bad sample: {e}")),
                Some(Ok(sample)) => Some(sample),
                None => None,
            };
            let shrinker = sample.as_ref().map_or(Value::Null, |s| json!(s.shrinker));
            if let Some(stall) = sampler_stall {
                self.close(stall, &shrinker, sample.is_none());
            }
            let Some(sample) = sample else {
                break;
            };
            {
                let mut s = lock(&self.shared);
                s.slowest_sampler_s = s.slowest_sampler_s.max(latency.as_secs_f64());
                if latency <= self.max_stall {
                    s.answered += 1;
                }
            }
            self.record(&sample);
            self.shrinker.push(Instant::now(), shrinker);
            if self.kernel_trace && !self.read_kernel_trace(false) {
                return;
            }
            // The next request goes out a period after this one did, or at
            // once after a slow answer: the period is kept whenever the
            // guest lets it be.
            next += self.period;
            let now = Instant::now();
            if next < now {
                next = now;
            }
            while Instant::now() < next && !self.stop.load(Ordering::Relaxed) {
                self.watch_workload(&mut workload_stall);
                std::thread::sleep(POLL.min(next.saturating_duration_since(Instant::now())));
            }
        }
        if let Some(stall) = workload_stall {
            let last = self.shrinker.latest().unwrap_or(Value::Null);
            self.close(stall, &last, true);
        }
        if self.kernel_trace {
            self.read_kernel_trace(true);
        }
    }

    /// Sends `request` and waits for its reply until `deadline` (also when
    /// the sampler stops meanwhile: a trace read's reply holds events the
    /// guest no longer has): `Ok(None)` if none came by then (a late reply
    /// is skipped by the next wait), `Err` if the channel broke.
    fn ask(
        &mut self,
        request: impl agent::AgentRequest,
        deadline: Instant,
    ) -> crate::Result<Option<Value>> {
        let id = self.agent.send(request)?;
        loop {
            if let Some(reply) = self.agent.poll_reply(id, POLL)? {
                return Ok(Some(reply));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Drains the guest's kernel trace buffer (a few reads at most; a
    /// slow guest gets until the stall bound): false when the channel broke.
    fn read_kernel_trace(&mut self, last: bool) -> bool {
        let deadline = Instant::now() + if last { LAST_READ } else { self.max_stall };
        for _ in 0..TRACE_READS {
            let sent = crate::unix_us();
            let reply = match self.ask(agent::TraceRead { max: None }, deadline) {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    // Its events left the guest's buffer and will not be seen.
                    lock(&self.shared).kernel.abandoned_reads += 1;
                    return true;
                }
                Err(e) => {
                    self.fail(format!("guest sampler: {e}"));
                    return false;
                }
            };
            let received = crate::unix_us();
            let read = if reply["ok"] == json!(true) {
                reply_fields::<KernelEvents>(&reply).map_err(|e| format!("bad reply {reply}: {e}"))
            } else {
                Err(reply["error"].to_string())
            };
            let read = match read {
                Ok(read) => read,
                Err(e) => {
                    self.fail(format!("guest kernel trace: {e}"));
                    self.kernel_trace = false;
                    return true;
                }
            };
            if lock(&self.shared).kernel.absorb(&read, sent, received) == 0 {
                break;
            }
        }
        true
    }

    /// Opens or closes a stall of the workload's request in flight.
    fn watch_workload(&mut self, open: &mut Option<OpenStall>) {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match (&open, in_flight) {
            (None, Some(r)) if r.since.elapsed() > self.max_stall => {
                *open = Some(self.open(r.since, true, format!("agent request {}", r.op)));
            }
            (Some(stall), current) => {
                // Still the same request: still stalled.
                if current.is_some_and(|r| r.since == stall.start) {
                    return;
                }
                if let Some(stall) = open.take() {
                    let after = self.shrinker.latest().unwrap_or(Value::Null);
                    self.close(stall, &after, false);
                }
            }
            _ => {}
        }
        if let Some(r) = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let mut s = lock(&self.shared);
            s.slowest_request_s = s.slowest_request_s.max(r.since.elapsed().as_secs_f64());
        }
    }

    /// A stall that began at `start` (a bound ago, or more).
    fn open(&mut self, start: Instant, workload: bool, what: String) -> OpenStall {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| (r.op.clone(), self.t(r.since)));
        OpenStall {
            start,
            workload,
            what,
            shrinker_before: self.shrinker.at(start).unwrap_or(Value::Null),
            // Not sampled yet: every event the daemon still has.
            daemon_seq: lock(&self.shared).daemon_seq.at(start).unwrap_or(0),
            in_flight,
        }
    }

    fn close(&mut self, stall: OpenStall, shrinker_after: &Value, ongoing: bool) {
        let (start_s, end_s) = (self.t(stall.start), self.t(Instant::now()));
        let events = self
            .control
            .trace(stall.daemon_seq, None)
            .unwrap_or_default();
        let tail = events[events.len().saturating_sub(STALL_EVENTS)..].to_vec();
        let mut s = lock(&self.shared);
        if stall.workload {
            s.slowest_request_s = s.slowest_request_s.max(end_s - start_s);
        }
        s.timeline.push_stall(start_s, end_s, &stall.what);
        s.stalls.push(json!({
            "stall_s": end_s - start_s,
            "start_s": start_s,
            "end_s": end_s,
            "unanswered": stall.what,
            "still_stalled_at_the_end": ongoing,
            "agent_request_in_flight": stall.in_flight.map(|(op, since_s)| json!({"op": op, "since_s": since_s})),
            "shrinker_before": stall.shrinker_before,
            "shrinker_after": shrinker_after,
            "daemon_events_in_span": events.len(),
            "daemon_last_events": tail,
        }));
    }

    /// A guest sample into the timeline.
    fn record(&mut self, sample: &GuestSample) {
        let t_s = self.t(Instant::now());
        let kib = |name: &str| sample.meminfo.get(name).map_or(0.0, |&k| k as f64);
        let stats = sample.shrinker.clone().unwrap_or_default();
        let page_mib = 4096.0 / MIB;
        let counts = ShrinkerCounts {
            evictions: stats.evictions,
            restores: stats.restores,
            purges: stats.purges,
        };
        let mut s = lock(&self.shared);
        let sample = Sample {
            t_s,
            guest_free_mib: kib("MemFree") / 1024.0,
            balloon_target_mib: s.pressure.balloon_target_mib.map(|m| m as f64),
            balloon_actual_mib: s.balloon_actual_mib,
            hog_mib: s.pressure.hog_mib as f64,
            resident_mib: (stats.evictable_pages + stats.purgeable_pages + stats.pinned_pages)
                as f64
                * page_mib,
            evicted_mib: stats.evicted_pages as f64 * page_mib,
            swap_used_mib: (kib("SwapTotal") - kib("SwapFree")) / 1024.0,
        };
        let last = s.counts;
        s.timeline.push_counts(
            t_s,
            counts.evictions.saturating_sub(last.evictions),
            counts.restores.saturating_sub(last.restores),
            counts.purges.saturating_sub(last.purges),
        );
        s.counts = counts;
        s.timeline.push_sample(sample);
    }

    fn t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }

    fn fail(&mut self, e: String) {
        lock(&self.shared).errors.push(e);
    }
}

/// What the host-side sampler reads: the daemon's control socket and
/// process, and the balloon through QMP. None of it waits on the guest.
struct HostSide<'a> {
    control: &'a mut ControlClient,
    qmp: Option<&'a Mutex<Qmp>>,
    daemon_pid: Option<u32>,
}

fn host_loop(
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
    host: HostSide<'_>,
    period: Duration,
    epoch: Instant,
) {
    let HostSide {
        control,
        qmp,
        daemon_pid,
    } = host;
    let mut next = Instant::now();
    let mut trace_seq = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = collect_daemon_events(shared, control, &mut trace_seq) {
            lock(shared).errors.push(format!("daemon sampler: {e}"));
            return;
        }
        let memory = daemon_pid.and_then(|pid| crate::ProcMemory::of(pid).ok());
        let fds = daemon_pid.and_then(|pid| crate::open_fds(pid).ok());
        let counters = match control.counters() {
            Ok(c) => c,
            Err(e) => {
                lock(shared).errors.push(format!("daemon sampler: {e}"));
                return;
            }
        };
        let actual = qmp.and_then(|qmp| {
            qmp.lock()
                .unwrap_or_else(|e| e.into_inner())
                .query_balloon()
                .ok()
                .map(|b| b as f64 / MIB)
        });
        let c = &counters.counters;
        let mut s = lock(shared);
        s.daemon_seq.push(Instant::now(), counters.last_seq);
        s.balloon_actual_mib = actual;
        s.timeline.daemon.push(DaemonSample {
            t_s: epoch.elapsed().as_secs_f64(),
            resources: counters.resources,
            host_memory_mib: counters.host_memory_used as f64 / MIB,
            attaches: c.attaches,
            detaches: c.detaches,
            transfers: c.transfers,
            rss_mib: memory.map(|m| m.rss_kib as f64 / 1024.0),
            anon_mib: memory.map(|m| m.anon_kib as f64 / 1024.0),
            open_fds: fds,
        });
        drop(s);
        next += period;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL.min(next.saturating_duration_since(Instant::now())));
        }
    }
    // What happened since the last period.
    let _ = collect_daemon_events(shared, control, &mut trace_seq);
}

/// The daemon's events after `seq` into the run's list; a gap in their
/// sequence numbers counts as lost events.
fn collect_daemon_events(
    shared: &Mutex<Shared>,
    control: &mut ControlClient,
    seq: &mut u64,
) -> crate::Result<()> {
    let events = control.trace(*seq, None)?;
    let mut s = lock(shared);
    for e in events {
        let n = e.seq;
        if n <= *seq {
            continue;
        }
        s.daemon_events_lost += n.saturating_sub(*seq + 1);
        *seq = n;
        if s.daemon_events.len() < DAEMON_EVENTS {
            s.daemon_events.push(json!(e));
        } else {
            s.daemon_events_lost += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The sampler against in-process stand-ins for the guest sampler and
    //! the daemon's control socket, so that stalls happen to order: the
    //! real-guest runs (tests/tests/stress.rs) cannot make one on demand
    //! now that the kernel no longer stalls.

    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::{InFlight, ScratchDir};

    fn temp_dir(name: &str) -> ScratchDir {
        ScratchDir::new("gpuswap-sampler", name).unwrap()
    }

    /// Answers each request line on `path` with `answer(request)`.
    fn serve(path: &Path, answer: impl Fn(&Value) -> Value + Send + Clone + 'static) {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                        let request: Value = serde_json::from_str(&line).unwrap();
                        let mut reply = answer(&request);
                        reply["id"] = request["id"].clone();
                        if writeln!(out, "{reply}").is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }

    fn fake_daemon(path: &Path) {
        use gpuswap_api::control::{Counters, DeviceCounters};
        serve(path, |r| match r["cmd"].as_str() {
            Some("counters") => {
                let mut reply = json!(Counters {
                    counters: DeviceCounters {
                        attaches: 4,
                        detaches: 2,
                        transfers: 9,
                        ..DeviceCounters::default()
                    },
                    ring_errors: 0,
                    resources: 3,
                    host_memory_used: 1 << 20,
                    last_seq: 7,
                });
                reply["ok"] = json!(true);
                reply
            }
            Some("trace") => json!({"ok": true, "events": [{"seq": 8, "time_us": 1,
                "event": "detach", "resource_id": 5, "generation": 1, "reason": "command"}]}),
            _ => json!({"ok": false, "error": "unexpected"}),
        });
    }

    /// A daemon stand-in with one event every `tick` since it started
    /// (sequence number n at n ticks), each a detach stamped with its time.
    fn ticking_daemon(path: &Path, tick: Duration) {
        use gpuswap_api::control::Counters;
        let (born, born_us) = (Instant::now(), crate::unix_us());
        let tick_us = tick.as_micros() as u64;
        serve(path, move |r| {
            let last = born.elapsed().as_micros() as u64 / tick_us;
            match r["cmd"].as_str() {
                Some("counters") => {
                    let mut reply = json!(Counters {
                        last_seq: last,
                        ..Counters::default()
                    });
                    reply["ok"] = json!(true);
                    reply
                }
                Some("trace") => {
                    let after = r["after"].as_u64().unwrap();
                    let events: Vec<Value> = (after + 1..=last)
                        .map(|seq| {
                            json!({"seq": seq, "time_us": born_us + seq * tick_us,
                            "event": "detach", "resource_id": 5, "generation": 1,
                            "reason": "command"})
                        })
                        .collect();
                    json!({"ok": true, "events": events})
                }
                _ => json!({"ok": false, "error": "unexpected"}),
            }
        });
    }

    /// The guest sampler's stand-in: answers at once, but sleeps `pause`
    /// before answering request number `slow` (1-based; 0: never).
    fn fake_guest(path: &Path, slow: u32, pause: Duration) {
        let count = Arc::new(AtomicU32::new(0));
        let reads = Arc::new(AtomicU32::new(0));
        serve(path, move |r| {
            // The kernel trace: its guest clock is the host's minus 1000 s;
            // the first read hands over one event of two, the next the other.
            let guest_ns = (crate::unix_us() - 1_000_000_000) * 1000;
            match r["op"].as_str() {
                Some("trace_start") => {
                    return json!({"ok": true, "events": ["virtio_gpu_bo_evict"], "mono_ns": guest_ns})
                }
                Some("trace_read") => {
                    let n = reads.fetch_add(1, Ordering::Relaxed);
                    let events: Vec<Value> = (n..2.min(n + 1))
                        .map(|i| {
                            json!({"t_ns": guest_ns - 1000 * (2 - u64::from(i)), "cpu": 0,
                            "name": "virtio_gpu_bo_evict", "args": {"res": 5, "gen": i}})
                        })
                        .collect();
                    return json!({"ok": true, "events": events, "pending": u32::from(n == 0),
                        "dropped": 0, "unparsed": 0, "kernel_overrun": 0, "mono_ns": guest_ns});
                }
                _ => {}
            }
            if count.fetch_add(1, Ordering::Relaxed) + 1 == slow {
                std::thread::sleep(pause);
            }
            json!({"ok": true,
                "meminfo": {"MemFree": 102_400, "SwapTotal": 0, "SwapFree": 0},
                "shrinker": {"evictions": 3, "restores": 1, "purges": 0, "evictable_pages": 256},
                "vmstat": {}})
        });
    }

    fn start(dir: &Path, slot: &InFlightSlot, period_ms: u64) -> Sampler {
        start_with(dir, slot, period_ms, false)
    }

    fn start_with(dir: &Path, slot: &InFlightSlot, period_ms: u64, kernel_trace: bool) -> Sampler {
        let daemon = dir.join("daemon.sock");
        let mut guest = Agent::connect(&dir.join("guest.sock")).unwrap();
        let kernel_trace = kernel_trace.then(|| start_kernel_trace(&mut guest));
        Sampler::start(
            Channels {
                guest,
                guest_side_control: ControlClient::connect(&daemon).unwrap(),
                host_side_control: ControlClient::connect(&daemon).unwrap(),
                qmp: None,
                workload_in_flight: slot.clone(),
                // The stand-in daemon lives in this process.
                daemon_pid: Some(std::process::id()),
                kernel_trace,
            },
            Duration::from_millis(period_ms),
            Duration::from_millis(500),
            Instant::now(),
            Timeline::new(),
        )
        .unwrap()
    }

    fn hold_request(slot: &InFlightSlot, op: &str, for_: Duration) {
        *slot.lock().unwrap() = Some(InFlight {
            op: op.into(),
            since: Instant::now(),
        });
        std::thread::sleep(for_);
        *slot.lock().unwrap() = None;
    }

    /// An answer that comes late and a workload request that hangs each
    /// count as one stall, with what the daemon did meanwhile; the host
    /// side keeps its period throughout.
    #[test]
    fn late_answers_and_hung_requests_are_stalls() {
        let dir = temp_dir("stalls");
        fake_guest(&dir.join("guest.sock"), 3, Duration::from_millis(1600));
        fake_daemon(&dir.join("daemon.sock"));
        let slot = InFlightSlot::default();
        let sampler = start(dir.path(), &slot, 100);
        std::thread::sleep(Duration::from_millis(2500));
        hold_request(&slot, "hog", Duration::from_millis(1200));
        std::thread::sleep(Duration::from_millis(400));
        let sampled = sampler.finish();

        assert!(sampled.errors.is_empty(), "{:?}", sampled.errors);
        let unanswered: Vec<&str> = sampled
            .stalls
            .iter()
            .map(|s| s["unanswered"].as_str().unwrap())
            .collect();
        assert_eq!(
            unanswered,
            ["sampler", "agent request hog"],
            "{:?}",
            sampled.stalls
        );
        let late = &sampled.stalls[0];
        assert!(late["stall_s"].as_f64().unwrap() >= 1.5, "{late}");
        assert_eq!(late["daemon_last_events"][0]["event"], "detach", "{late}");
        assert_eq!(late["shrinker_before"]["evictions"], 3, "{late}");
        let hung = &sampled.stalls[1];
        assert!(hung["stall_s"].as_f64().unwrap() >= 1.1, "{hung}");
        assert_eq!(hung["agent_request_in_flight"]["op"], "hog", "{hung}");
        assert_eq!(hung["still_stalled_at_the_end"], false, "{hung}");
        assert!(sampled.slowest_sampler_s >= 1.5);
        assert!(sampled.slowest_request_s >= 1.1);
        assert!(sampled.answered >= 15, "{}", sampled.answered);
        assert_eq!(sampled.timeline.stalls.len(), 2);
        assert_eq!(sampled.counts.evictions, 3);
        let daemon = &sampled.timeline.daemon;
        assert!(daemon.len() >= 30, "{}", daemon.len());
        assert!(daemon.windows(2).all(|w| w[1].t_s - w[0].t_s < 0.5));
    }

    /// A stall is found a bound after it began; what it reports (the
    /// daemon's events, the shrinker before) starts when it began.
    #[test]
    fn a_stall_reports_from_when_it_began() {
        let dir = temp_dir("look-back");
        fake_guest(&dir.join("guest.sock"), 0, Duration::ZERO);
        let tick = Duration::from_millis(50);
        ticking_daemon(&dir.join("daemon.sock"), tick);
        let slot = InFlightSlot::default();
        let sampler = start(dir.path(), &slot, 100);
        std::thread::sleep(Duration::from_millis(1000));
        hold_request(&slot, "transfer_to_host", Duration::from_millis(1500));
        let sampled = sampler.finish();

        assert!(sampled.errors.is_empty(), "{:?}", sampled.errors);
        assert_eq!(sampled.stalls.len(), 1, "{:?}", sampled.stalls);
        let stall = &sampled.stalls[0];
        // 30 ticks in the 1.5 s span; counted from the daemon sampler's
        // last look before it (a period, 2 ticks, at most), to the sampler
        // seeing it end (a poll, 2 ticks), with room for a busy machine's
        // late wake-ups. From when the stall was found, a bound (10 ticks)
        // later, would miss a third; from the run's start (20 ticks
        // earlier) would blame the stall for 50.
        let events = stall["daemon_events_in_span"].as_u64().unwrap();
        assert!((30..45).contains(&events), "{events} events: {stall}");
        assert_eq!(stall["shrinker_before"]["evictions"], 3, "{stall}");
    }

    /// A guest that answers in time, and requests that finish in time, make
    /// no stall: one pass per answer.
    #[test]
    fn a_responsive_guest_has_no_stall() {
        let dir = temp_dir("calm");
        fake_guest(&dir.join("guest.sock"), 0, Duration::ZERO);
        fake_daemon(&dir.join("daemon.sock"));
        let slot = InFlightSlot::default();
        let sampler = start(dir.path(), &slot, 50);
        for _ in 0..5 {
            hold_request(&slot, "write", Duration::from_millis(100));
        }
        let sampled = sampler.finish();
        assert!(sampled.stalls.is_empty(), "{:?}", sampled.stalls);
        assert!(sampled.answered >= 5);
        assert_eq!(sampled.answered as usize, sampled.timeline.samples.len());
        // The host side reads the daemon process, here this one.
        let daemon = &sampled.timeline.daemon;
        assert!(!daemon.is_empty());
        assert!(daemon.iter().all(|d| d.rss_mib.is_some_and(|m| m > 0.0)
            && d.anon_mib.is_some()
            && d.open_fds.is_some_and(|n| n > 3)));
    }

    /// The guest kernel's events and the daemon's come over with the
    /// samples: every event once, on the host clock, the clock estimated
    /// at every read.
    #[test]
    fn kernel_and_daemon_events_are_collected() {
        let dir = temp_dir("events");
        fake_guest(&dir.join("guest.sock"), 0, Duration::ZERO);
        fake_daemon(&dir.join("daemon.sock"));
        let slot = InFlightSlot::default();
        let sampler = start_with(dir.path(), &slot, 50, true);
        std::thread::sleep(Duration::from_millis(400));
        let sampled = sampler.finish();
        assert!(sampled.errors.is_empty(), "{:?}", sampled.errors);
        let k = &sampled.kernel;
        assert_eq!(k.unavailable, None);
        let events = k.events();
        assert_eq!(
            events.iter().map(|e| e.gen()).collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        // On the host clock: within the stand-in's own round trips of now.
        let now = crate::unix_us() as f64;
        for e in &events {
            assert!((now - e.host_us).abs() < 2e6, "{e:?}");
            assert!(e.uncertainty_us >= 0.0 && e.uncertainty_us < 1e5, "{e:?}");
        }
        assert!(k.clock.len() >= 3, "{}", k.clock.len());
        // The stand-in daemon has one event (seq 8): seven missed before it.
        assert_eq!(sampled.daemon_events.len(), 1);
        assert_eq!(sampled.daemon_events_lost, 7);
    }
}
