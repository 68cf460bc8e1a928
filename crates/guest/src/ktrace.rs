//! The guest kernel's virtio-gpu BO tracepoints, streamed from tracefs.
//!
//! [`KernelTrace::start`] enables the `virtio_gpu_bo_*` and
//! `virtio_gpu_shrinker_scan` events with the `mono` trace clock (the
//! clock `CLOCK_MONOTONIC` reads, so the host can align the events with
//! its own clock through the `mono_ns` of each read) and starts a thread
//! that reads `trace_pipe` into a bounded buffer; [`KernelTrace::drain`]
//! hands over what it holds. Nothing is lost silently: events that found
//! the buffer full are counted (`dropped`), and so are those the kernel's
//! ring overwrote before they were read (`kernel_overrun`, from the
//! per-CPU stats files).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use gpuswap_api::agent::{KernelEvent, KernelEvents};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The events streamed, under `events/virtio_gpu/`.
pub const EVENTS: &[&str] = &[
    "virtio_gpu_bo_attach",
    "virtio_gpu_bo_detach",
    "virtio_gpu_bo_evict",
    "virtio_gpu_bo_purge",
    "virtio_gpu_bo_restore",
    "virtio_gpu_shrinker_scan",
];

/// Events held between two drains; more are dropped (and counted).
pub const CAPACITY: usize = 1 << 16;
/// Events one drain hands over at most (one reply line stays small).
pub const MAX_DRAIN: usize = 4096;
/// The kernel's ring, per CPU: some seconds of a busy shrinker.
const RING_KB: u32 = 1024;
/// The longest a read of the pipe blocks before looking at the stop flag.
const POLL_MS: u16 = 100;
/// A pipe line longer than this is not one of ours (it is skipped).
const MAX_LINE: usize = 4096;

#[derive(Debug, Default)]
struct Buffer {
    events: VecDeque<KernelEvent>,
    dropped: u64,
    /// Lines that did not parse as an event (counted, not kept).
    unparsed: u64,
    /// The reader's error, if it stopped on one.
    error: Option<String>,
}

#[derive(Debug)]
pub struct KernelTrace {
    tracefs: PathBuf,
    buffer: Arc<Mutex<Buffer>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

/// Where tracefs is, mounting it if the kernel has it but nobody did.
fn tracefs() -> Result<PathBuf> {
    let primary = Path::new("/sys/kernel/tracing");
    for dir in [primary, Path::new("/sys/kernel/debug/tracing")] {
        if dir.join("trace_pipe").exists() {
            return Ok(dir.to_path_buf());
        }
    }
    nix::mount::mount(
        Some("tracefs"),
        primary,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::sys("mount tracefs on /sys/kernel/tracing", e))?;
    Ok(primary.to_path_buf())
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|e| Error::io(format!("write {}", path.display()), &e))
}

impl KernelTrace {
    /// Clears the kernel's trace, enables [`EVENTS`] and starts reading.
    /// Fails, changing nothing, on a kernel without the tracepoints.
    pub fn start() -> Result<KernelTrace> {
        let dir = tracefs()?;
        let events = dir.join("events/virtio_gpu");
        if let Some(missing) = EVENTS.iter().find(|e| !events.join(e).exists()) {
            return Err(Error::msg(format!(
                "the kernel has no {missing} tracepoint (patch 0014 of the guest series)"
            )));
        }
        write(&dir, "tracing_on", "0")?;
        write(&dir, "trace_clock", "mono")?;
        write(&dir, "buffer_size_kb", &RING_KB.to_string())?;
        // Truncating `trace` clears every CPU's ring (and its overrun count).
        write(&dir, "trace", "")?;
        for e in EVENTS {
            write(&events, &format!("{e}/enable"), "1")?;
        }
        write(&dir, "tracing_on", "1")?;

        let pipe = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(dir.join("trace_pipe"))
            .map_err(|e| Error::io("open trace_pipe", &e))?;
        let buffer = Arc::new(Mutex::new(Buffer::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (buffer, stop) = (buffer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ktrace".into())
                .spawn(move || read_pipe(pipe, &buffer, &stop))
                .map_err(|e| Error::io("spawn the trace reader", &e))?
        };
        Ok(KernelTrace {
            tracefs: dir,
            buffer,
            stop,
            reader: Some(reader),
        })
    }

    /// Hands over up to `max` held events, oldest first.
    pub fn drain(&self, max: usize) -> KernelEvents {
        let mut b = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(MAX_DRAIN).min(b.events.len());
        let events: Vec<KernelEvent> = b.events.drain(..n).collect();
        KernelEvents {
            events,
            pending: b.events.len(),
            dropped: b.dropped,
            unparsed: b.unparsed,
            kernel_overrun: kernel_overrun(&self.tracefs),
            reader_error: b.error.clone(),
            mono_ns: mono_ns(),
        }
    }
}

impl Drop for KernelTrace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let events = self.tracefs.join("events/virtio_gpu");
        for e in EVENTS {
            let _ = write(&events, &format!("{e}/enable"), "0");
        }
    }
}

/// The reader thread: whole lines from the pipe into the buffer.
fn read_pipe(mut pipe: File, buffer: &Mutex<Buffer>, stop: &AtomicBool) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(POLL_MS)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return fail(buffer, format!("poll trace_pipe: {e}")),
        }
        let n = match pipe.read(&mut chunk) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                continue
            }
            Err(e) => return fail(buffer, format!("read trace_pipe: {e}")),
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut b = buffer.lock().unwrap_or_else(|e| e.into_inner());
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&c| c == b'\n') {
            let line = &pending[start..start + nl];
            start += nl + 1;
            match std::str::from_utf8(line).ok().and_then(parse_line) {
                Some(_) if b.events.len() >= CAPACITY => b.dropped += 1,
                Some(event) => b.events.push_back(event),
                None => b.unparsed += 1,
            }
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE {
            pending.clear();
            b.unparsed += 1;
        }
    }
}

fn fail(buffer: &Mutex<Buffer>, error: String) {
    buffer.lock().unwrap_or_else(|e| e.into_inner()).error = Some(error);
}

/// The sum of the per-CPU `overrun` counts.
fn kernel_overrun(dir: &Path) -> u64 {
    let Ok(cpus) = std::fs::read_dir(dir.join("per_cpu")) else {
        return 0;
    };
    cpus.filter_map(|cpu| std::fs::read_to_string(cpu.ok()?.path().join("stats")).ok())
        .filter_map(|stats| {
            stats
                .lines()
                .find_map(|l| l.strip_prefix("overrun:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// One `trace_pipe` line:
/// `<comm>-<pid> [<cpu>] <flags> <secs>.<usecs>: <event>: <k>=<v> ...`.
/// The task name may hold spaces and dashes, so the line is read from the
/// CPU field on.
pub fn parse_line(line: &str) -> Option<KernelEvent> {
    let open = line.find(" [")?;
    let rest = &line[open + 2..];
    let close = rest.find(']')?;
    let cpu = rest[..close].trim().parse().ok()?;
    let mut words = rest[close + 1..].split_whitespace();
    // The flags column is optional (`irq-info` off).
    let mut ts = words.next()?;
    if !ts.ends_with(':') {
        ts = words.next()?;
    }
    let t_ns = parse_timestamp(ts.strip_suffix(':')?)?;
    let name = words.next()?.strip_suffix(':')?.to_string();
    let mut args = Map::new();
    for word in words {
        let (k, v) = word.split_once('=')?;
        let value = v
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(v));
        args.insert(k.to_string(), value);
    }
    Some(KernelEvent {
        t_ns,
        cpu,
        name,
        args,
    })
}

/// `<secs>.<fraction>` (microseconds for the mono clock) in nanoseconds.
fn parse_timestamp(ts: &str) -> Option<u64> {
    let (secs, frac) = ts.split_once('.')?;
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let scale = 10u64.pow(9 - frac.len() as u32);
    secs.parse::<u64>()
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(frac.parse::<u64>().ok()?.checked_mul(scale)?)
}

/// CLOCK_MONOTONIC now, in nanoseconds: the trace clock's reading.
pub fn mono_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipe_lines() {
        let e = parse_line(
            "   kworker/u8:1-42      [001] d..1.  123.456789: virtio_gpu_bo_detach: res=7 size=4194304 gen=2 purge=0",
        )
        .unwrap();
        assert_eq!(e.t_ns, 123_456_789_000);
        assert_eq!(e.cpu, 1);
        assert_eq!(e.name, "virtio_gpu_bo_detach");
        assert_eq!(e.args["res"], 7);
        assert_eq!(e.args["gen"], 2);
        assert_eq!(e.args["purge"], 0);

        // A task name with spaces and dashes; no flags column; strings.
        let e = parse_line(
            "gpu swap-guest-3-17 [000] 5.000001: virtio_gpu_bo_restore: res=3 size=4096 gen=1 pages=1 use=fault",
        )
        .unwrap();
        assert_eq!((e.t_ns, e.cpu), (5_000_001_000, 0));
        assert_eq!(e.args["use"], "fault");
        assert_eq!(
            parse_line(" <idle>-0 [003] ..s2. 9.5: virtio_gpu_shrinker_scan: waited_us=-1")
                .unwrap()
                .args["waited_us"],
            -1
        );
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        for line in [
            "",
            "CPU:1 [LOST 12 EVENTS]",
            "x-1 [001] ..... 1.2 virtio_gpu_bo_evict: res=1",
            "x-1 [001] ..... 1.2: virtio_gpu_bo_evict res=1",
            "x-1 [001] ..... 1.2: virtio_gpu_bo_evict: res",
            "x-1 [zz] ..... 1.2: virtio_gpu_bo_evict: res=1",
            "x-1 [001] ..... 1.x: virtio_gpu_bo_evict: res=1",
            "x-1 [001] ..... 99999999999999999999.1: e: a=1",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn timestamps_keep_their_precision() {
        assert_eq!(parse_timestamp("0.000001"), Some(1_000));
        assert_eq!(parse_timestamp("2.5"), Some(2_500_000_000));
        assert_eq!(parse_timestamp("1.123456789"), Some(1_123_456_789));
        assert_eq!(parse_timestamp("1.1234567890"), None);
        assert_eq!(parse_timestamp("1."), None);
    }
}
