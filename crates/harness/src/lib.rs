//! gpuswap's harness: the real daemon, a real guest under QEMU (via
//! `qemu-scripts/gpuswap-vm`), the typed client of the guest agent channel
//! ([`Agent`], with the requests of `gpuswap_api::agent`) and, from the
//! test-support crate, the typed control-socket client
//! ([`ControlClient`]), processes and waits; the stress runs of the `gpuswap-run` main
//! job ([`stress`]) with their QMP client, timeline, guest kernel trace and
//! trace file. The binaries `gpuswap-run`, `gpuswap-boot-loop` and
//! `gpuswap-guest-bench` are built on it, and so are the end-to-end tests
//! in `tests/` (package `gpuswap-tests`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuswap_api::agent;
use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

pub use gpuswap_api::agent::AgentRequest;
pub use gpuswap_testkit::{
    poll_every, poll_until, wait_for_path, ControlClient, ControlError, Process, ScratchDir,
};

pub mod ktrace;
pub mod qmp;
pub mod stress;
pub mod timeline;
pub mod trace_file;

pub type Result<T> = std::result::Result<T, String>;

/// The repository root (this crate is `crates/harness`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What a guest run needs. Taken from `GPUSWAP_DAEMON`, `GPUSWAP_KERNEL`
/// and `GPUSWAP_INITRD` (set by `cargo xtask test`); when they are unset,
/// built here with `cargo xtask images`, which is cached. A build failure
/// is a test failure, never a skip.
#[derive(Debug, Clone)]
pub struct Images {
    pub daemon: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Images {
    pub fn get() -> Images {
        let from_env = |name: &str| std::env::var_os(name).map(PathBuf::from);
        if let (Some(daemon), Some(kernel), Some(initrd)) = (
            from_env("GPUSWAP_DAEMON"),
            from_env("GPUSWAP_KERNEL"),
            from_env("GPUSWAP_INITRD"),
        ) {
            return Images {
                daemon,
                kernel,
                initrd,
            };
        }
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["xtask", "images"])
            .current_dir(root())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo xtask images: {e}"));
        assert!(
            out.status.success(),
            "building the guest images failed ({}); see the output above",
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("cargo xtask images printed no {name} path"))
        };
        Images {
            daemon: field("daemon"),
            kernel: field("kernel"),
            initrd: field("initrd"),
        }
    }

    /// The kernel's build variant (`debug`, `kasan`, `release`), from the
    /// `versions.txt` that images/build-kernel.sh writes next to it; None
    /// for a kernel from elsewhere.
    pub fn kernel_variant(&self) -> Option<String> {
        let versions = std::fs::read_to_string(self.kernel.parent()?.join("versions.txt")).ok()?;
        versions
            .lines()
            .find_map(|l| l.strip_prefix("variant="))
            .map(str::to_string)
    }

    /// Whether the kernel is the KASAN build, which runs reclaim several
    /// times slower and keeps memory for its shadow and quarantine: tests
    /// scale their bounds and sizes by it.
    pub fn kernel_is_kasan(&self) -> bool {
        self.kernel_variant().as_deref() == Some("kasan")
    }
}

/// The directory of one run's sockets and logs,
/// `$TMPDIR/gpuswap-{name}-{pid}`, created empty; it stays when dropped
/// (the report names it, and a failed run is read from it).
pub fn run_dir(name: &str) -> ScratchDir {
    let path = std::env::temp_dir().join(format!("gpuswap-{name}-{}", std::process::id()));
    let mut dir = ScratchDir::at(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    dir.keep();
    dir
}

/// How long the daemon may take to bind its sockets.
const DAEMON_START: Duration = Duration::from_secs(10);
/// How long a SIGTERMed daemon may take to exit.
const DAEMON_EXIT: Duration = Duration::from_secs(10);

/// A running gpuswap daemon (log `daemon.log` in its run directory),
/// killed on drop.
pub struct Daemon {
    process: Process,
    pub socket: PathBuf,
    pub control: PathBuf,
}

impl Daemon {
    pub fn start(binary: &Path, dir: &ScratchDir, extra: &[&str]) -> Result<Daemon> {
        let socket = dir.join("gpu.sock");
        let control = dir.join("control.sock");
        let mut command = Command::new(binary);
        command
            .arg("--socket-path")
            .arg(&socket)
            .arg("--control-socket")
            .arg(&control)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let process = Process::spawn(&mut command, &dir.join("daemon.log"))
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut daemon = Daemon {
            process,
            socket,
            control,
        };
        for path in [&daemon.socket, &daemon.control] {
            let process = &mut daemon.process;
            wait_for_path(path, DAEMON_START, || {
                process
                    .try_reap()
                    .map(|status| format!("the daemon exited ({status})"))
            })?;
        }
        Ok(daemon)
    }

    /// A new connection to the daemon's control socket.
    pub fn control(&self) -> Result<ControlClient> {
        Ok(ControlClient::connect(&self.control)?)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The daemon's log (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The daemon's resident memory (VmRSS), KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        Ok(ProcMemory::of(self.pid())?.rss_kib)
    }

    /// Whether the daemon is still running.
    pub fn alive(&mut self) -> bool {
        self.process.is_running()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        self.process
            .signal(Signal::SIGTERM)
            .map_err(|e| e.to_string())?;
        self.process
            .wait_exit(DAEMON_EXIT)
            .ok_or_else(|| format!("process did not exit within {DAEMON_EXIT:?}"))
    }
}

/// Options for one guest boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub memory_mib: u32,
    pub cpus: u32,
    /// Kernel command line additions, e.g. `gpuswap.cmd=agent`.
    pub append: String,
    /// QEMU binary; `None` lets the launcher choose.
    pub qemu: Option<PathBuf>,
    /// Let the guest reboot (QEMU keeps running) instead of exiting QEMU.
    pub reboot: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: 512,
            cpus: 2,
            append: "gpuswap.cmd=agent".into(),
            qemu: None,
            reboot: false,
        }
    }
}

/// A guest running under QEMU, launched by `qemu-scripts/gpuswap-vm`
/// (log `qemu.log` in its run directory), killed on drop.
pub struct Vm {
    process: Process,
    pub serial_log: PathBuf,
    pub agent_socket: PathBuf,
    /// The guest sampler's read-only channel (`gpuswap-guest sampler`).
    pub sampler_socket: PathBuf,
    pub qmp_socket: PathBuf,
}

impl Vm {
    pub fn start(
        images: &Images,
        gpu_socket: &Path,
        dir: &ScratchDir,
        config: &VmConfig,
    ) -> Result<Vm> {
        let serial_log = dir.join("serial.log");
        let agent_socket = dir.join("agent.sock");
        let sampler_socket = dir.join("sampler.sock");
        let qmp_socket = dir.join("qmp.sock");
        let mut cmd = Command::new(root().join("qemu-scripts/gpuswap-vm"));
        cmd.arg("--kernel")
            .arg(&images.kernel)
            .arg("--initrd")
            .arg(&images.initrd)
            .args(["--memory", &config.memory_mib.to_string()])
            .args(["--cpus", &config.cpus.to_string()])
            .arg("--gpu-socket")
            .arg(gpu_socket)
            .arg("--serial-log")
            .arg(&serial_log)
            .arg("--agent-socket")
            .arg(&agent_socket)
            .arg("--sampler-socket")
            .arg(&sampler_socket)
            .arg("--qmp-socket")
            .arg(&qmp_socket)
            .args(["--append", &config.append]);
        if let Some(qemu) = &config.qemu {
            cmd.arg("--qemu").arg(qemu);
        }
        if config.reboot {
            cmd.arg("--reboot");
        }
        let process = Process::spawn(&mut cmd, &dir.join("qemu.log"))
            .map_err(|e| format!("cannot start the VM launcher: {e}"))?;
        Ok(Vm {
            process,
            serial_log,
            agent_socket,
            sampler_socket,
            qmp_socket,
        })
    }

    /// Connects to the guest agent once the guest tool is up.
    pub fn agent(&mut self, timeout: Duration) -> Result<Agent> {
        self.agent_after(0, timeout)
    }

    /// The agent of the boot whose serial log starts at byte `from` (for a
    /// guest that rebooted: [`VmConfig::reboot`]).
    pub fn agent_after(&mut self, from: usize, timeout: Duration) -> Result<Agent> {
        let process = &mut self.process;
        wait_for_agent_after(&self.agent_socket, &self.serial_log, from, timeout, || {
            process
                .try_reap()
                .map(|status| format!("QEMU exited ({status})"))
        })
    }

    /// Waits for QEMU to exit (the guest reboots, QEMU runs -no-reboot).
    pub fn wait(mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process
            .wait_exit(timeout)
            .ok_or_else(|| format!("process did not exit within {timeout:?}"))
    }

    /// QEMU's process id (the launcher execs it).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills QEMU with SIGKILL, as the OOM killer or a crash would, and
    /// reaps it.
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.process.kill().map_err(|e| format!("kill QEMU: {e}"))
    }
}

/// How often a booting guest's agent is looked for.
const AGENT_RETRY: Duration = Duration::from_millis(250);

/// How much of the serial log a failed boot's error carries: room for the
/// init's port report (`GPUSWAP-PORTS` lines) and what came before it.
const BOOT_LOG_LINES: usize = 100;

/// Connects to the guest agent at `socket` once the guest tool answers,
/// for a guest whose console goes to `serial`. `gone` says why the guest
/// can no longer answer (its VMM exited), if it cannot.
pub fn wait_for_agent(
    socket: &Path,
    serial: &Path,
    timeout: Duration,
    gone: impl FnMut() -> Option<String>,
) -> Result<Agent> {
    wait_for_agent_after(socket, serial, 0, timeout, gone)
}

/// [`wait_for_agent`] for a guest that booted before in the same serial
/// log (a reboot): only the log from byte `from` on is this boot's.
pub fn wait_for_agent_after(
    socket: &Path,
    serial: &Path,
    from: usize,
    timeout: Duration,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<Agent> {
    let outcome = poll_every(AGENT_RETRY, timeout, || {
        if let Some(why) = gone() {
            return Some(Err(format!(
                "{why} before the agent answered; serial log:\n{}",
                tail(serial, BOOT_LOG_LINES)
            )));
        }
        // /init prints this when the workload ended: no agent is coming.
        let log = std::fs::read(serial).unwrap_or_default();
        let this_boot = String::from_utf8_lossy(log.get(from..).unwrap_or_default());
        if this_boot.contains("GPUSWAP-INIT-EXIT") {
            return Some(Err(format!(
                "the guest workload exited before the agent answered; serial log:\n{}",
                tail(serial, BOOT_LOG_LINES)
            )));
        }
        let mut agent = Agent::connect(socket).ok()?;
        // The chardev accepts before the guest opens its port: only a
        // hello answered proves the agent is there.
        agent.request(agent::Hello {}).ok()?;
        Some(Ok(agent))
    });
    outcome.unwrap_or_else(|| {
        Err(format!(
            "no guest agent within {timeout:?}; serial log:\n{}",
            tail(serial, BOOT_LOG_LINES)
        ))
    })
}

/// Host time in µs since the Unix epoch: the clock of the daemon's trace.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One agent request as the harness made it, for the run's trace.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Step {
    pub op: String,
    /// The request's arguments (all but `op` and `id`).
    pub args: Value,
    /// Host µs since the Unix epoch.
    pub start_us: u64,
    pub end_us: u64,
    pub ok: bool,
}

/// Requests kept by a [`StepLog`]; later ones are counted, not kept.
pub const MAX_STEPS: usize = 1 << 18;

/// The requests of one agent connection, shared with whoever writes them.
#[derive(Debug, Default)]
pub struct Steps {
    pub steps: Vec<Step>,
    pub dropped: u64,
}

pub type StepLog = Arc<Mutex<Steps>>;

/// The request an agent connection is waiting on, for a watcher on another
/// thread (the stress run's sampler).
#[derive(Debug, Clone)]
pub struct InFlight {
    pub op: String,
    pub since: Instant,
}

/// Where an [`Agent`] publishes its request in flight.
pub type InFlightSlot = Arc<Mutex<Option<InFlight>>>;

/// The typed client of the guest agent (`gpuswap-guest agent`) or the
/// guest sampler (`gpuswap-guest sampler`): it sends the requests of
/// `gpuswap_api::agent` and decodes each reply as the request's reply
/// type.
pub struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    /// A reply line read only in part when a read timed out.
    partial: String,
    in_flight: Option<InFlightSlot>,
    steps: Option<StepLog>,
}

impl Agent {
    pub fn connect(path: &Path) -> Result<Agent> {
        let stream = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(Agent {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            partial: String::new(),
            in_flight: None,
            steps: None,
        })
    }

    /// Sets how long a request may take (TCG guests are slow).
    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.reader.get_ref().set_read_timeout(Some(timeout));
    }

    /// Publishes each request in `slot` while it waits for its reply.
    pub fn watch_in_flight(&mut self, slot: InFlightSlot) {
        self.in_flight = Some(slot);
    }

    /// Keeps every request made through [`Agent::request`] and
    /// [`Agent::request_errno`] in `log`, with its times.
    pub fn log_steps(&mut self, log: StepLog) {
        self.steps = Some(log);
    }

    /// Sends `request` and returns its reply; `ok: false` is an error.
    pub fn request<R: AgentRequest>(&mut self, request: R) -> Result<R::Reply> {
        Ok(self.request_with_line(request)?.0)
    }

    /// [`Agent::request`], and the reply line as it came (`id` and `ok`
    /// included), for a record of what the guest answered.
    pub fn request_with_line<R: AgentRequest>(&mut self, request: R) -> Result<(R::Reply, Value)> {
        let request = request.into_object();
        let shown = Value::Object(request.clone()).to_string();
        let line = self.call(request)?;
        if line["ok"] != json!(true) {
            return Err(format!("agent request {shown} failed: {line}"));
        }
        let reply = reply_fields(&line)
            .map_err(|e| format!("agent request {shown}: unexpected reply {line}: {e}"))?;
        Ok((reply, line))
    }

    /// For requests expected to fail: `None` if it worked, else the errno
    /// the guest reported (-1 for a failure without one). Only a broken
    /// channel is an error.
    pub fn request_errno<R: AgentRequest>(&mut self, request: R) -> Result<Option<i64>> {
        Ok(self.request_errno_with_line(request)?.0)
    }

    /// [`Agent::request_errno`], and the reply line as it came.
    pub fn request_errno_with_line<R: AgentRequest>(
        &mut self,
        request: R,
    ) -> Result<(Option<i64>, Value)> {
        let line = self.call(request.into_object())?;
        if line["ok"] == json!(true) {
            return Ok((None, line));
        }
        let errno = line["errno"].as_i64().unwrap_or(-1);
        Ok((Some(errno), line))
    }

    /// Sends `request` without waiting; returns its id for
    /// [`Agent::poll_reply`].
    pub fn send<R: AgentRequest>(&mut self, request: R) -> Result<u64> {
        self.send_object(request.into_object())
    }

    fn send_object(&mut self, mut request: Map<String, Value>) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        request.insert("id".into(), json!(id));
        writeln!(self.writer, "{}", Value::Object(request)).map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Waits up to `timeout` for the reply to `id`: `None` if it has not
    /// come yet (ask again), replies to other ids skipped.
    pub fn poll_reply(&mut self, id: u64, timeout: Duration) -> Result<Option<Value>> {
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        loop {
            match self.reader.read_line(&mut self.partial) {
                Ok(0) => return Err("agent closed the channel".into()),
                Ok(_) => {
                    let line = std::mem::take(&mut self.partial);
                    match serde_json::from_str::<Value>(&line) {
                        Ok(value) if value["id"] == json!(id) => return Ok(Some(value)),
                        _ => continue,
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(format!("agent: {e}")),
            }
        }
    }

    /// Sends `request` and returns its reply line, whatever it says.
    fn call(&mut self, request: Map<String, Value>) -> Result<Value> {
        let op = request
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        if let Some(slot) = &self.in_flight {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(InFlight {
                op: op.clone(),
                since: Instant::now(),
            });
        }
        let start_us = unix_us();
        let args = self.steps.is_some().then(|| {
            let mut args = request.clone();
            args.remove("op");
            Value::Object(args)
        });
        let result = self.send_object(request).and_then(|id| loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| format!("agent: {e}"))?;
            if n == 0 {
                break Err("agent closed the channel".into());
            }
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value["id"] == json!(id) {
                break Ok(value);
            }
        });
        if let Some(slot) = &self.in_flight {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if let (Some(log), Some(args)) = (&self.steps, args) {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.steps.len() < MAX_STEPS {
                let ok = result.as_ref().is_ok_and(|v| v["ok"] == json!(true));
                log.steps.push(Step {
                    op,
                    args,
                    start_us,
                    end_us: unix_us(),
                    ok,
                });
            } else {
                log.dropped += 1;
            }
        }
        result
    }
}

/// The fields of a successful agent reply line (`id` and `ok` left out) as
/// `T`, one of the reply types of `gpuswap_api::agent`.
pub fn reply_fields<T: DeserializeOwned>(line: &Value) -> std::result::Result<T, String> {
    let mut fields = line.as_object().cloned().unwrap_or_default();
    fields.remove("id");
    fields.remove("ok");
    serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())
}

/// A daemon with a guest booted on it whose agent answers.
pub struct Booted {
    pub dir: ScratchDir,
    pub daemon: Daemon,
    pub vm: Vm,
    pub agent: Agent,
}

/// How long a guest may take to boot and start its agent (TCG, debug
/// kernel, a loaded CI machine).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Starts a daemon (with `daemon_args`) in a run directory `name` and boots
/// the guest on it (`config.append` must run the agent), waiting for the
/// agent. No boot is retried: a guest without its agent port fails the
/// caller, with the init's port report (`GPUSWAP-PORTS` lines) in the
/// serial log.
pub fn boot_guest(
    images: &Images,
    name: &str,
    config: &VmConfig,
    daemon_args: &[&str],
) -> Result<Booted> {
    let dir = run_dir(name);
    let daemon = Daemon::start(&images.daemon, &dir, daemon_args)?;
    let mut vm = Vm::start(images, &daemon.socket, &dir, config)?;
    let agent = vm.agent(BOOT_TIMEOUT)?;
    Ok(Booted {
        dir,
        daemon,
        vm,
        agent,
    })
}

/// Boots the guest on a daemon that is already running (a second VMM on
/// the same daemon), in run directory `name`; see [`boot_guest`].
pub fn boot_guest_on(
    images: &Images,
    daemon: &Daemon,
    name: &str,
    config: &VmConfig,
) -> Result<(ScratchDir, Vm, Agent)> {
    let dir = run_dir(name);
    let mut vm = Vm::start(images, &daemon.socket, &dir, config)?;
    let agent = vm.agent(BOOT_TIMEOUT)?;
    Ok((dir, vm, agent))
}

/// The last `lines` lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Lines of a guest kernel log that report a kernel problem: WARN, BUG,
/// Oops, panic, lockdep, KASAN, UBSAN, hung tasks, RCU stalls, and running
/// out of memory (allocation failures, OOM kills), which dump a stack too.
pub fn kernel_problems(log: &str) -> Vec<String> {
    const MARKERS: &[&str] = &[
        "WARNING:",
        "BUG:",
        "Oops",
        "Kernel panic",
        "kernel BUG",
        "possible circular locking",
        "possible recursive locking",
        "inconsistent lock state",
        "turning off the locking correctness validator",
        "KASAN:",
        "UBSAN:",
        "blocked for more than",
        "rcu_sched self-detected stall",
        "page allocation failure",
        "invoked oom-killer",
        "Call Trace:",
    ];
    log.lines()
        .filter(|line| MARKERS.iter().any(|m| line.contains(m)))
        .map(str::to_string)
        .collect()
}

/// [`kernel_problems`] but the OOM kills of the processes `expected`: an
/// OOM report whose victim is one of them (a memory hog with
/// `oom_score_adj` 1000, which is there to be killed) is the outcome a
/// test asked for. So is a report that names no victim but was invoked by
/// one of them (the kernel names none when the task it picks is exiting
/// already, e.g. a hog being released). Only the report's own lines go
/// (`invoked oom-killer` and its `Call Trace:`, up to `Killed process
/// <pid>`); anything else logged meanwhile, and a report that killed
/// another process, stays a problem.
///
/// One more report belongs to such a kill: the `page allocation failure`
/// (and its `Call Trace:`) of a page fault of the victim itself, after it
/// was killed. A dying OOM victim may dip into part of the reserves, and
/// when even those are gone the kernel fails its allocation rather than
/// loop (mm/page_alloc.c, "Avoid allocations with no watermarks from
/// looping endlessly"): the fault ends the process it was killing anyway.
/// The same report from a task not killed before is a problem.
pub fn kernel_problems_but_oom_kills_of(log: &str, expected: &[u32]) -> Vec<String> {
    /// An OOM report being read: who invoked it, its problem lines.
    struct Report {
        invoker: Option<u32>,
        lines: Vec<String>,
    }
    let is_report_line = |l: &str| l.contains("invoked oom-killer") || l.contains("Call Trace:");
    let victim = |l: &str| -> Option<u32> {
        let rest = &l[l.find("Out of memory")?..];
        let pid = rest
            .split("Killed process ")
            .nth(1)?
            .split_whitespace()
            .next()?;
        pid.parse().ok()
    };
    // printk's caller field: `[   12.3][  T483] ...` for task 483.
    let caller = |l: &str| -> Option<u32> {
        let field = l.split("][").nth(1)?.split(']').next()?.trim();
        field.strip_prefix('T')?.parse().ok()
    };
    let unnamed = |r: Report| -> Vec<String> {
        if r.invoker.is_some_and(|pid| expected.contains(&pid)) {
            Vec::new()
        } else {
            r.lines
        }
    };
    let mut problems = Vec::new();
    let mut report: Option<Report> = None;
    // Expected victims killed so far, and the one whose allocation
    // failure report is being read.
    let mut killed: Vec<u32> = Vec::new();
    let mut dying: Option<u32> = None;
    for line in log.lines() {
        if line.contains("page allocation failure") {
            dying = caller(line).filter(|pid| killed.contains(pid));
            if dying.is_some() {
                continue;
            }
        } else if line.contains("Call Trace:") && dying.is_some() && caller(line) == dying.take() {
            continue;
        }
        if line.contains("invoked oom-killer") {
            problems.extend(report.take().map(unnamed).unwrap_or_default());
            report = Some(Report {
                invoker: caller(line),
                lines: Vec::new(),
            });
        }
        if let Some(pid) = victim(line) {
            let lines = report.take().map(|r| r.lines).unwrap_or_default();
            if expected.contains(&pid) {
                killed.push(pid);
            } else {
                problems.extend(lines);
            }
            continue;
        }
        if kernel_problems(line).is_empty() {
            continue;
        }
        match report.as_mut() {
            Some(r) if is_report_line(line) => r.lines.push(line.to_string()),
            _ => problems.push(line.to_string()),
        }
    }
    problems.extend(report.map(unnamed).unwrap_or_default());
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_the_repository_root() {
        assert!(root().join("qemu-scripts/gpuswap-vm").is_file());
        assert!(root().join("crates/harness/Cargo.toml").is_file());
    }

    #[test]
    fn kernel_problems_are_found() {
        let log = "[    1.0] virtio_gpu: ok\n[    2.0] WARNING: CPU: 0 PID: 1 at mm/x.c:1\n\
                   [    3.0] ======================================================\n\
                   [    3.1] WARNING: possible circular locking dependency detected\n";
        assert_eq!(kernel_problems(log).len(), 2);
        assert!(kernel_problems("[ 1.0] all fine\n[ 2.0] gpuswap_shrinker: loaded\n").is_empty());
    }

    #[test]
    fn only_the_expected_oom_kills_are_forgiven() {
        let oom = |victim: u32| {
            format!(
                "[ 5.0] gpuswap-guest invoked oom-killer: gfp_mask=0x140dca, order=0\n\
                 [ 5.0] Call Trace:\n\
                 [ 5.1] Out of memory: Killed process {victim} (gpuswap-guest) total-vm:1kB\n"
            )
        };
        let hog = oom(77);
        assert_eq!(kernel_problems(&hog).len(), 2);
        assert!(kernel_problems_but_oom_kills_of(&hog, &[77]).is_empty());
        assert_eq!(kernel_problems_but_oom_kills_of(&hog, &[78]).len(), 2);
        // A WARN inside the report stays; so does a report without a victim.
        let warn = hog.replace(
            "[ 5.0] Call Trace:",
            "[ 5.0] WARNING: CPU: 1 at x.c:1\n[ 5.0] Call Trace:",
        );
        assert_eq!(
            kernel_problems_but_oom_kills_of(&warn, &[77]),
            ["[ 5.0] WARNING: CPU: 1 at x.c:1"]
        );
        let cut = "[ 5.0] x invoked oom-killer: gfp_mask=0\n[ 5.0] Call Trace:\n";
        assert_eq!(kernel_problems_but_oom_kills_of(cut, &[77]).len(), 2);
        // No victim named (it was exiting already), invoked by the hog.
        let by_hog = "[ 5.0][  T77] x invoked oom-killer: gfp_mask=0\n[ 5.0][  T77] Call Trace:\n";
        assert!(kernel_problems_but_oom_kills_of(by_hog, &[77]).is_empty());
        assert_eq!(kernel_problems_but_oom_kills_of(by_hog, &[78]).len(), 2);
        // Two reports: the hog's goes, the other's stays.
        let both = format!("{}{}", oom(77), oom(12));
        assert_eq!(kernel_problems_but_oom_kills_of(&both, &[77]).len(), 2);
    }

    #[test]
    fn a_killed_victims_own_allocation_failure_belongs_to_its_kill() {
        let kill = "[ 5.0][  T12] x invoked oom-killer: gfp_mask=0\n\
                    [ 5.0][  T12] Call Trace:\n\
                    [ 5.1][  T12] Out of memory: Killed process 77 (hog) total-vm:1kB\n";
        let failure = |pid: u32| {
            format!(
                "[ 5.2][  T{pid}] hog: page allocation failure: order:0, mode:0x140dca\n\
                 [ 5.2][  T{pid}] CPU: 0 UID: 0 PID: {pid} Comm: hog\n\
                 [ 5.2][  T{pid}] Call Trace:\n"
            )
        };
        let after_kill = format!("{kill}{}", failure(77));
        assert!(kernel_problems_but_oom_kills_of(&after_kill, &[77]).is_empty());
        // Before its kill, or not expected, or another task's: a problem.
        let before_kill = format!("{}{kill}", failure(77));
        assert_eq!(
            kernel_problems_but_oom_kills_of(&before_kill, &[77]).len(),
            2
        );
        assert_eq!(kernel_problems_but_oom_kills_of(&after_kill, &[]).len(), 4);
        let other = format!("{kill}{}", failure(78));
        assert_eq!(kernel_problems_but_oom_kills_of(&other, &[77]).len(), 2);
        // A WARN logged by the dying victim is still a problem.
        let warn = after_kill.replace(
            "[ 5.2][  T77] Call Trace:",
            "[ 5.2][  T77] WARNING: CPU: 0 at x.c:1\n[ 5.2][  T77] Call Trace:",
        );
        assert_eq!(kernel_problems_but_oom_kills_of(&warn, &[77]).len(), 1);
    }
}

/// A process's memory as /proc/PID/status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcMemory {
    /// VmRSS: everything resident, guest RAM the process touched included.
    pub rss_kib: u64,
    /// RssAnon: the process's own heap and stacks.
    pub anon_kib: u64,
}

impl ProcMemory {
    pub fn of(pid: u32) -> Result<ProcMemory> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| format!("no {name} in {path}"))
        };
        Ok(ProcMemory {
            rss_kib: field("VmRSS:")?,
            anon_kib: field("RssAnon:")?,
        })
    }
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    Ok(entries.count() as u64)
}
