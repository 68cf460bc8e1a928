//! Shared helpers for the daemon's integration tests: spawning the real
//! `gpuswap-daemon` binary on temp sockets, connecting the typed
//! control-socket client (`gpuswap_testkit::ControlClient`), and upload,
//! pixel and hash helpers matching the daemon's `host_hash` and
//! `backing_hash` strings. Test data comes from `gpuswap_testkit::pattern`.

// Each test file uses a different subset of these helpers; helpers only
// one file uses live in that file, and what none uses is removed (checked
// by building with this allow turned into a warning).
#![allow(dead_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use gpuswap_api::control::{Event, Resource, Status};
use gpuswap_frontend::{
    DisplayEvent, DisplayHandle, Error, FrontendConfig, GpuFrontend, Pages, Placement,
};
use gpuswap_protocol::wire::Rect;
use gpuswap_protocol::{format, ErrorCode};
use gpuswap_testkit::{poll_until, wait_for_path, ControlClient, Process, ScratchDir};

/// How long anything in these tests may take before it counts as hung.
pub const WAIT: Duration = Duration::from_secs(5);

/// The daemon binary Cargo built for these tests.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_gpuswap-daemon");

/// A running `gpuswap-daemon` on temp sockets, killed on drop; its
/// directory (sockets, log) is removed then, or kept and the log printed
/// if the test is failing.
pub struct Daemon {
    process: Process,
    dir: ScratchDir,
    pub socket: PathBuf,
    pub control: PathBuf,
}

impl Daemon {
    /// Spawns the daemon with `--socket-path`, `--control-socket` and
    /// `extra` arguments, and waits until both sockets exist.
    pub fn spawn(name: &str, extra: &[&str]) -> Daemon {
        let mut d = Daemon::start(name, None, extra);
        d.wait_for_sockets(true);
        d
    }

    /// Spawns the daemon with `--fd N` for `fd` (inherited by the daemon
    /// alone), `--control-socket` and `extra`, and waits for the control
    /// socket. `socket` is unused then.
    pub fn spawn_on_fd(name: &str, fd: OwnedFd, extra: &[&str]) -> Daemon {
        let mut d = Daemon::start(name, Some(fd), extra);
        d.wait_for_sockets(false);
        d
    }

    /// Spawns the daemon on `fd` and returns at once, for daemons that are
    /// expected to refuse their start.
    pub fn spawn_on_fd_unchecked(name: &str, fd: OwnedFd) -> Daemon {
        Daemon::start(name, Some(fd), &[])
    }

    fn start(name: &str, fd: Option<OwnedFd>, extra: &[&str]) -> Daemon {
        let dir = ScratchDir::new("gsd", name).expect("temp dir");
        let socket = dir.join("gpu.sock");
        let control = dir.join("control.sock");
        let mut cmd = match &fd {
            None => {
                let mut cmd = Command::new(DAEMON);
                cmd.arg("--socket-path").arg(&socket);
                cmd
            }
            Some(fd) => command_with_fd(Path::new(DAEMON), fd),
        };
        cmd.arg("--control-socket")
            .arg(&control)
            .args(extra)
            .env("RUST_LOG", "info")
            // The relay's private socket goes in TMPDIR: tests look there.
            .env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", dir.path());
        let process =
            Process::spawn(&mut cmd, &dir.join("daemon.log")).expect("spawn gpuswap-daemon");
        // The daemon has its copy; ours must not keep a connection open.
        drop(fd);
        Daemon {
            process,
            dir,
            socket,
            control,
        }
    }

    fn wait_for_sockets(&mut self, vhost_user: bool) {
        let sockets = [vhost_user.then_some(&self.socket), Some(&self.control)];
        for path in sockets.into_iter().flatten() {
            let process = &mut self.process;
            wait_for_path(path, WAIT, || {
                (!process.is_running()).then(|| format!("the daemon exited:\n{}", process.log()))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// The daemon's directory (its TMPDIR too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects a frontend, panicking with the daemon log on failure.
    pub fn connect(&self, config: FrontendConfig) -> GpuFrontend {
        GpuFrontend::connect(&self.socket, config)
            .unwrap_or_else(|e| panic!("connect: {e}\ndaemon log:\n{}", self.log()))
    }

    /// A new control-socket connection.
    pub fn ctl(&self) -> ControlClient {
        control_at(&self.control)
    }

    /// The daemon's stdout and stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.process.is_running()
    }

    /// Panics (with the log) unless the process is still running.
    pub fn assert_alive(&mut self) {
        assert!(self.is_alive(), "daemon died:\n{}", self.log());
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) {
        self.process.signal(signal).expect("kill");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Polls the control socket until `pred(status)` holds.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        let mut ctl = self.ctl();
        let mut last = None;
        poll_until(WAIT, || {
            let status = ctl.status().expect("status");
            let done = pred(&status).then(|| status.clone());
            last = Some(status);
            done
        })
        .unwrap_or_else(|| panic!("{what}: last status {last:?}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.process.kill();
        if std::thread::panicking() {
            self.dir.keep();
            let log = self.process.log_path().display();
            eprintln!("daemon log ({log}):\n{}", self.log());
        }
    }
}

/// A command for `binary` with `--fd=N`, N being `fd`, which the child
/// alone inherits.
pub fn command_with_fd(binary: &Path, fd: &OwnedFd) -> Command {
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(binary);
    // SAFETY: the hook runs in the forked child before exec and only calls
    // fcntl, which is async-signal-safe. Clearing close-on-exec there, not
    // here, keeps the descriptor out of every other child the test process
    // starts meanwhile.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.arg(format!("--fd={raw}"));
    cmd
}

/// A connection to the control socket at `path`, retried for up to
/// [`WAIT`]; replies must come within [`WAIT`] too.
pub fn control_at(path: &Path) -> ControlClient {
    let mut last = None;
    let mut ctl = poll_until(WAIT, || {
        ControlClient::connect(path)
            .map_err(|e| last = Some(e))
            .ok()
    })
    .unwrap_or_else(|| panic!("control socket {}: {last:?}", path.display()));
    ctl.set_timeout(WAIT).expect("timeout");
    ctl
}

/// What the tests ask of the control socket beyond the client's requests.
pub trait ControlExt {
    /// Resource `id`, which must be live.
    fn live(&mut self, id: u32) -> Resource;
    /// The sequence number of the last event recorded.
    fn last_seq(&mut self) -> u64;
}

impl ControlExt for ControlClient {
    fn live(&mut self, id: u32) -> Resource {
        self.resource(id)
            .expect("resources")
            .unwrap_or_else(|| panic!("resource {id} is not live"))
    }

    fn last_seq(&mut self) -> u64 {
        self.counters().expect("counters").last_seq
    }
}

/// The error code of a device error response; panics on anything else.
pub fn code(r: Result<impl std::fmt::Debug, Error>) -> ErrorCode {
    match r {
        Err(e) => e
            .device_error()
            .unwrap_or_else(|| panic!("not an error response: {e}")),
        Ok(v) => panic!("expected an error response, got {v:?}"),
    }
}

/// Creates a `w`x`h` XRGB 2D resource `id` on scattered pages holding
/// `pixels`, attached and transferred in full. Returns the pages.
pub fn upload_2d(gpu: &mut GpuFrontend, id: u32, (w, h): (u32, u32), pixels: &[u8]) -> Pages {
    gpu.resource_create_2d(id, format::B8G8R8X8_UNORM, w, h)
        .unwrap();
    let pages = gpu
        .ram_mut()
        .alloc(pixels.len().div_ceil(4096), Placement::Scattered)
        .unwrap();
    gpu.ram()
        .write_entries(&pages.entries(), 0, pixels)
        .unwrap();
    gpu.attach_backing(id, &pages.entries()).unwrap();
    gpu.transfer_to_host_2d(id, rect(0, 0, w, h), 0).unwrap();
    pages
}

/// xxh3-64 as the daemon prints it (`host_hash`, `backing_hash`).
pub fn hash_hex(bytes: &[u8]) -> String {
    gpuswap_api::hex(xxhash_rust::xxh3::xxh3_64(bytes))
}

/// [`hash_hex`] as a resource's hash fields hold it.
pub fn some_hash(bytes: &[u8]) -> Option<String> {
    Some(hash_hex(bytes))
}

pub fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// Waits for a display event after index `mark` matching `pred`.
pub fn wait_display(
    display: &DisplayHandle,
    mark: usize,
    what: &str,
    pred: impl FnMut(&DisplayEvent) -> bool,
) -> DisplayEvent {
    display
        .wait_for(mark, WAIT, pred)
        .unwrap_or_else(|| panic!("no {what} on the display channel"))
}

/// Waits for the next UPDATE after event index `mark`: (rect, pixels).
pub fn next_update(display: &DisplayHandle, mark: usize) -> (Rect, Vec<u8>) {
    match wait_display(display, mark, "UPDATE", |e| {
        matches!(e, DisplayEvent::Update { .. })
    }) {
        DisplayEvent::Update {
            x,
            y,
            width,
            height,
            data,
            ..
        } => (rect(x, y, width, height), data),
        _ => unreachable!(),
    }
}

/// Events of one kind (their `event` tag) from a trace.
pub fn events_of<'a>(events: &'a [Event], kind: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.name() == kind).collect()
}
